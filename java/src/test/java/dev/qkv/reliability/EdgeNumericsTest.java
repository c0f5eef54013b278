package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.ScoreErrorBound;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * NaN, ±Inf, huge logits, fully masked rows and subnormal inputs: the behaviour the failure contract documents,
 * on every backend. Shapes span two query blocks so that both "hidden inside a computed block" and "skipped
 * with its block" occur.
 *
 * <p>A non-finite value of v reaches exactly the rows that give its key a non-zero weight, on every path:
 * {@link NonFiniteValuesTest} checks that over threads, block sizes and masks.
 */
class EdgeNumericsTest {
    private static final long B = 1;
    private static final long HQ = 2;
    private static final long HKV = 1;
    private static final long L = 100;
    private static final long DK = 16;
    private static final long DV = 8;
    /**
     * Float32 kernels against the double reference, sums of at most L = 100 terms of magnitude 1: per unit of
     * {@code 1 + |ref|}, the attention tests' {@code 4·(Dk + Lk)·2^-24} (justified in the attention package's
     * {@code Fixtures.C}). It was {@code 8·(L + DK + 16)·2^-24}, 2.3 times that, which let softmax weights rounded
     * to half precision before p·v pass every test of this class.
     */
    private static final double TOL = 4 * Fuzz.EPS * (L + DK);

    /** Inputs [B, H, L, D] of the edge tests, as arrays so single elements are easy to poison. */
    private static float[][] inputs(long seed) {
        Random r = new Random(seed);
        return new float[][] {Fuzz.uniform(r, (int) (B * HQ * L * DK)), Fuzz.uniform(r, (int) (B * HKV * L * DK)),
            Fuzz.uniform(r, (int) (B * HKV * L * DV))};
    }

    private static float[] run(Backend backend, float[][] in, SdpaOptions options, Arena arena) {
        Tensor q = Tensor.of(arena, in[0], B, HQ, L, DK);
        Tensor k = Tensor.of(arena, in[1], B, HKV, L, DK);
        Tensor v = Tensor.of(arena, in[2], B, HKV, L, DV);
        Tensor out = Tensor.allocate(arena, B, HQ, L, DV);
        Attention.create(backend).sdpa(q, k, v, out, options);
        return out.toArray();
    }

    private static float[][] copy(float[][] x) {
        return new float[][] {x[0].clone(), x[1].clone(), x[2].clone()};
    }

    private static int outAt(long h, long i, long d) {
        return (int) ((h * L + i) * DV + d);
    }

    private static boolean sameBits(float a, float b) {
        return Float.floatToRawIntBits(a) == Float.floatToRawIntBits(b);
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void nanInAQueryRowMakesExactlyThatRowNaN(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] clean = inputs(1);
            float[] base = run(backend, clean, SdpaOptions.CAUSAL, arena);
            for (long row : new long[] {0, 63, 64, 99}) {
                float[][] bad = copy(clean);
                bad[0][(int) ((1 * L + row) * DK + 5)] = Float.NaN;
                float[] got = run(backend, bad, SdpaOptions.CAUSAL, arena);
                for (long h = 0; h < HQ; h++) {
                    for (long i = 0; i < L; i++) {
                        for (long d = 0; d < DV; d++) {
                            int e = outAt(h, i, d);
                            if (h == 1 && i == row) {
                                assertTrue(Float.isNaN(got[e]), backend + " row " + row + " must be NaN");
                            } else {
                                assertTrue(sameBits(got[e], base[e]), backend + " out[" + h + "," + i + "," + d
                                        + "] changed with a NaN in q row " + row);
                            }
                        }
                    }
                }
            }
        }
    }

    /**
     * A NaN in k at key j: every row that may attend j becomes NaN; a row that may not (causally, or by a boolean
     * mask) is bit-identical to the clean result. An additive {@code -inf} does not hide it: NaN + (-inf) is NaN.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void nanInAKeyReachesExactlyTheRowsThatMayAttendIt(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] clean = inputs(2);
            long j = 70;
            float[][] bad = copy(clean);
            bad[1][(int) (j * DK + 3)] = Float.NaN;
            // causal: rows i >= j see key j
            float[] base = run(backend, clean, SdpaOptions.CAUSAL, arena);
            float[] got = run(backend, bad, SdpaOptions.CAUSAL, arena);
            for (long h = 0; h < HQ; h++) {
                for (long i = 0; i < L; i++) {
                    for (long d = 0; d < DV; d++) {
                        int e = outAt(h, i, d);
                        if (i >= j) {
                            assertTrue(Float.isNaN(got[e]), backend + " row " + i + " sees key " + j);
                        } else {
                            assertTrue(sameBits(got[e], base[e]), backend + " row " + i + " cannot see key " + j);
                        }
                    }
                }
            }
            // a boolean mask that forbids key j everywhere hides it completely
            float[] allowed = new float[(int) (L * L)];
            java.util.Arrays.fill(allowed, 1f);
            for (int i = 0; i < L; i++) {
                allowed[(int) (i * L + j)] = 0f;
            }
            SdpaOptions boolMask = SdpaOptions.DEFAULT.withMask(Mask.allowed(Tensor.of(arena, allowed, L, L)));
            float[] maskedClean = run(backend, clean, boolMask, arena);
            float[] maskedBad = run(backend, bad, boolMask, arena);
            for (int e = 0; e < maskedBad.length; e++) {
                assertTrue(sameBits(maskedBad[e], maskedClean[e]), backend + " boolean-masked NaN key leaked");
            }
            // an additive -inf at key j does not: the score is NaN + (-inf) = NaN
            float[] bias = new float[(int) (L * L)];
            for (int i = 0; i < L; i++) {
                bias[(int) (i * L + j)] = Float.NEGATIVE_INFINITY;
            }
            SdpaOptions additive = SdpaOptions.DEFAULT.withMask(Mask.additive(Tensor.of(arena, bias, L, L)));
            for (float x : run(backend, bad, additive, arena)) {
                assertTrue(Float.isNaN(x), backend + " additive -inf does not hide a NaN score");
            }
        }
    }

    /**
     * A NaN or Inf in v at (key j, column d): rows that may attend j get it in column d (NaN, or the Inf itself);
     * rows that may not are exactly the clean result on every backend, whatever rows share their block. Their
     * other columns are unchanged too.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void nonFiniteValueAtAHiddenKeyReachesOnlyTheRowsThatSeeIt(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] clean = inputs(3);
            long j = 70;
            long col = 4;
            float[] ref = run(Backend.REFERENCE, clean, SdpaOptions.CAUSAL, arena);
            for (float poison : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
                float[][] bad = copy(clean);
                bad[2][(int) (j * DV + col)] = poison;
                float[] base = run(backend, clean, SdpaOptions.CAUSAL, arena);
                float[] got = run(backend, bad, SdpaOptions.CAUSAL, arena);
                for (long h = 0; h < HQ; h++) {
                    for (long i = 0; i < L; i++) {
                        boolean sees = i >= j;
                        for (long d = 0; d < DV; d++) {
                            int e = outAt(h, i, d);
                            String at = backend + " v=" + poison + " out[" + h + "," + i + "," + d + "]=" + got[e];
                            if (sees && d == col) {
                                assertTrue(Float.isNaN(poison) ? Float.isNaN(got[e]) : got[e] == poison, at);
                            } else if (!sees && (i < 64 || backend == Backend.REFERENCE)) {
                                // a block the key is not in: the fast path's own bits
                                assertTrue(sameBits(got[e], base[e]), at + " changed");
                            } else {
                                assertEquals(ref[e], got[e], TOL * (1 + Math.abs(ref[e])), at + " vs the reference");
                            }
                        }
                    }
                }
            }
        }
    }

    /** A row with no key to attend, by boolean mask, additive -inf, causal Lq > Lk, or all three: exact zeros. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void fullyMaskedRowsAreZeroOnEveryPath(Backend backend) {
        long seed = Fuzz.seed("fully-masked-" + backend);
        Random r = new Random(seed);
        Attention att = Attention.create(backend);
        for (int it = 0; it < 40; it++) {
            try (Arena arena = Arena.ofConfined()) {
                long b = 1 + r.nextInt(2);
                long hkv = 1 + r.nextInt(2);
                long hq = hkv * (1 + r.nextInt(2));
                long lq = Fuzz.pick(r, 1, 3, 64, 65, 130);
                long lk = Fuzz.pick(r, 1, 3, 64, 65);
                Tensor q = Fuzz.random(arena, r, b, hq, lq, 8);
                Tensor k = Fuzz.random(arena, r, b, hkv, lk, 8);
                Tensor v = Fuzz.random(arena, r, b, hkv, lk, 5);
                boolean bool = r.nextBoolean();
                float[] m = new float[(int) (b * hq * lq * lk)];
                boolean[] dead = new boolean[(int) (b * hq * lq)];
                for (int row = 0; row < dead.length; row++) {
                    dead[row] = r.nextInt(3) == 0;
                    for (int j = 0; j < lk; j++) {
                        boolean forbid = dead[row] || r.nextInt(4) == 0;
                        float additive = forbid ? Float.NEGATIVE_INFINITY : 0.25f;
                        m[(int) (row * lk + j)] = bool ? (forbid ? 0f : 1f) : additive;
                    }
                }
                Tensor mt = Tensor.of(arena, m, b, hq, lq, lk);
                boolean causal = r.nextBoolean();
                SdpaOptions options = new SdpaOptions(causal, bool ? Mask.allowed(mt) : Mask.additive(mt), Float.NaN);
                Tensor out = Tensor.allocate(arena, b, hq, lq, 5).fill(Float.NaN);
                att.sdpa(q, k, v, out, options);
                float[] o = out.toArray();
                for (int row = 0; row < dead.length; row++) {
                    long i = row % lq;
                    boolean causallyEmpty = causal && i + (lk - lq) < 0;
                    for (int d = 0; d < 5; d++) {
                        float x = o[row * 5 + d];
                        String what = "seed=" + seed + " case " + it + " " + backend + " row " + row + " lq=" + lq
                                + " lk=" + lk + " causal=" + causal + " mask=" + (bool ? "bool" : "additive");
                        if (dead[row] || causallyEmpty) {
                            assertEquals(0f, x, 0f, what + " is fully masked");
                        } else {
                            assertTrue(!Float.isNaN(x), what);
                        }
                    }
                }
            }
        }
    }

    /** A fully masked row, and a NaN in v at a key nobody may attend: zeros there, the clean result elsewhere. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void fullyMaskedRowNextToANaNValue(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] in = inputs(7);
            long col = 2;
            float[] allowed = new float[(int) (L * L)];
            java.util.Arrays.fill(allowed, 1f);
            long deadRow = 30;
            java.util.Arrays.fill(allowed, (int) (deadRow * L), (int) ((deadRow + 1) * L), 0f);
            for (int i = 0; i < L; i++) {
                allowed[(int) (i * L + 10)] = 0f; // nobody may attend the poisoned key
            }
            SdpaOptions o = SdpaOptions.DEFAULT.withMask(Mask.allowed(Tensor.of(arena, allowed, L, L)));
            float[] ref = run(Backend.REFERENCE, in, o, arena);
            in[2][(int) (10 * DV + col)] = Float.NaN;
            float[] got = run(backend, in, o, arena);
            for (long h = 0; h < HQ; h++) {
                for (long i = 0; i < L; i++) {
                    for (long d = 0; d < DV; d++) {
                        int e = outAt(h, i, d);
                        String at = backend + " out[" + h + "," + i + "," + d + "]=" + got[e];
                        if (i == deadRow) {
                            assertEquals(0f, got[e], 0f, at + " is fully masked");
                        } else {
                            assertEquals(ref[e], got[e], TOL * (1 + Math.abs(ref[e])), at + " vs the clean reference");
                        }
                    }
                }
            }
        }
    }

    /**
     * Scores in the tens of thousands, and a scale of 1e30, do not overflow: finite results matching the reference
     * within {@link ScoreErrorBound}, the error that float scores of that size may carry: score gaps here are in
     * the thousands, every row's weights are one-hot, and the bound is the usual one. The tolerance was 2e-2 on
     * outputs of order 1, which let outputs rounded to bfloat16 (about 2e-3 off) pass.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void hugeLogitsStayFiniteAndMatchTheReference(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] in = inputs(4);
            for (int i = 0; i < in[0].length; i++) {
                in[0][i] *= 100;
            }
            for (int i = 0; i < in[1].length; i++) {
                in[1][i] *= 100;
            }
            for (float scale : new float[] {1f, 1e30f}) {
                SdpaOptions o = SdpaOptions.CAUSAL.withScale(scale);
                float[] ref = run(Backend.REFERENCE, in, o, arena);
                float[] got = run(backend, in, o, arena);
                double[] bound = ScoreErrorBound.of(in[0], in[1], in[2], (int) B, (int) HQ, (int) HKV, (int) L,
                        (int) L, (int) DK, (int) DV, o.scaleFor(DK), true);
                for (int e = 0; e < got.length; e++) {
                    assertTrue(Float.isFinite(got[e]), backend + " scale " + scale + " element " + e + " = " + got[e]);
                    assertEquals(ref[e], got[e], bound[e], backend + " scale " + scale + " element " + e);
                }
            }
        }
    }

    /**
     * A +Inf in a query row makes its scores ±Inf (or NaN where a key component is 0): the row is NaN on every
     * path, unless every score is -Inf, which counts as "no key to attend" and gives zeros.
     */
    @Test
    void infiniteScoresGiveNaNOrZerosConsistently() {
        try (Arena arena = Arena.ofConfined()) {
            float[][] in = inputs(5);
            float[][] allNegative = copy(in);
            for (int j = 0; j < L; j++) {
                allNegative[1][(int) (j * DK)] = -0.5f;
            }
            for (float[][] x : new float[][][] {in, allNegative}) {
                x[0][(int) ((0 * L + 80) * DK)] = Float.POSITIVE_INFINITY;
            }
            for (Backend b : Backend.values()) {
                float[] mixed = run(b, in, SdpaOptions.CAUSAL, arena);
                float[] negative = run(b, allNegative, SdpaOptions.CAUSAL, arena);
                for (long d = 0; d < DV; d++) {
                    assertTrue(Float.isNaN(mixed[outAt(0, 80, d)]), b + " row with +Inf and -Inf scores");
                    assertEquals(0f, negative[outAt(0, 80, d)], 0f, b + " row whose scores are all -Inf");
                }
            }
        }
    }

    /**
     * Subnormal inputs. q and k are computed, not flushed: with normal v the results match the reference. Subnormal
     * v is flushed to zero by the blocked paths (a product with a subnormal operand is ~30x slower on x86 and the
     * JVM cannot set flush-to-zero), so an output may differ from the reference by less than 2^-126: the weights
     * sum to 1 and each flushed value is below 2^-126.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void subnormalInputsStayWithinTheirOwnMagnitude(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] qk = inputs(6);
            for (int t = 0; t < 2; t++) {
                for (int i = 0; i < qk[t].length; i++) {
                    qk[t][i] *= 1e-39f;
                }
            }
            float[] ref = run(Backend.REFERENCE, qk, SdpaOptions.CAUSAL, arena);
            float[] got = run(backend, qk, SdpaOptions.CAUSAL, arena);
            for (int e = 0; e < got.length; e++) {
                // scale · q·k is below 1e-77: 0 in float, as good as 0 in the reference's doubles; every weight is
                // the same, and the output a mean of v with the usual error (it was 1e-5·(L + 2), 1e-3 absolute)
                assertEquals(ref[e], got[e], TOL * (1 + Math.abs(ref[e])), backend + " subnormal q, k: element " + e);
            }
            float[][] all = inputs(6);
            for (float[] x : all) {
                for (int i = 0; i < x.length; i++) {
                    x[i] *= 1e-39f;
                }
            }
            float[] ref2 = run(Backend.REFERENCE, all, SdpaOptions.CAUSAL, arena);
            float[] got2 = run(backend, all, SdpaOptions.CAUSAL, arena);
            for (int e = 0; e < got2.length; e++) {
                assertEquals(ref2[e], got2[e], Float.MIN_NORMAL, backend + " subnormal q, k, v: element " + e);
            }
        }
    }

    /**
     * Subnormal q or k in a layout without a unit stride, which the blocked engines copy before the products: the
     * copy must keep them, as the in-place products do. With a scale near float's largest, scale · q·k of
     * subnormal q (or k) is of order 1, so a flushed operand turns every score into 0 and the softmax into a plain
     * mean of v (from a review: the copy flushed every packed operand to zero, meant for v only).
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void subnormalQAndKInPackedLayoutsAreComputedAsTheyAre(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] in = inputs(7);
            SdpaOptions big = SdpaOptions.DEFAULT.withScale(3e38f);
            for (int which = 0; which < 2; which++) {
                float[][] x = copy(in);
                for (int i = 0; i < x[which].length; i++) {
                    x[which][i] *= 1e-39f;
                }
                long[] qs = {B, HQ, L, DK};
                long[] ks = {B, HKV, L, DK};
                long[] vs = {B, HKV, L, DV};
                Random r = new Random(8);
                Tensor q = (which == 0 ? Layouts.STRIDED : Layouts.CONTIGUOUS).make(arena, r, qs, x[0]);
                Tensor k = (which == 1 ? Layouts.STRIDED : Layouts.CONTIGUOUS).make(arena, r, ks, x[1]);
                Tensor v = Layouts.CONTIGUOUS.make(arena, r, vs, x[2]);
                Tensor ref = Tensor.allocate(arena, B, HQ, L, DV);
                Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, big);
                Tensor out = Tensor.allocate(arena, B, HQ, L, DV);
                Attention.create(backend).sdpa(q, k, v, out, big);
                float[] want = ref.toArray();
                float[] got = out.toArray();
                // the scores are of order 1 (|scale · q·k| <= 3e38 · 1e-39 · DK): the usual tolerance
                for (int e = 0; e < got.length; e++) {
                    assertEquals(want[e], got[e], TOL * (1 + Math.abs(want[e])),
                            backend + " subnormal " + (which == 0 ? "q" : "k") + ", strided: element " + e);
                }
            }
        }
    }

    /**
     * Large finite v: each output is a convex combination of v's values, so it is at most max |v| and finite. The
     * blocked kernels multiply the unnormalized weights (each up to 1, their sum up to Lk) by v and normalize
     * afterwards, so Σ p·v passes float's range when |v| is above about 3.4e38 / Lk; such a row must still come
     * out as the reference has it, not as +Inf (from a review: 100 equal keys with v near 1e37 gave +Inf).
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void largeFiniteVNeverOverflowsTheOutput(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            float[][] in = inputs(9);
            for (int i = 0; i < in[2].length; i++) {
                // positive, so that the partial sums only grow: 1e37 · (0.5 .. 1)
                in[2][i] = 1e37f * (0.75f + 0.25f * in[2][i]);
            }
            // small scores: weights near 1 each, so every sum over the keys passes 3.4e38
            for (int i = 0; i < in[0].length; i++) {
                in[0][i] *= 1e-3f;
            }
            for (SdpaOptions o : new SdpaOptions[] {SdpaOptions.DEFAULT, SdpaOptions.CAUSAL}) {
                float[] want = run(Backend.REFERENCE, in, o, arena);
                float[] got = run(backend, in, o, arena);
                for (int e = 0; e < got.length; e++) {
                    assertTrue(Float.isFinite(want[e]), "reference element " + e);
                    assertEquals(want[e], got[e], TOL * Math.abs(want[e]),
                            backend + (o.causal() ? " causal" : "") + " v near 1e37: element " + e);
                }
            }
            // one query row (the few-query paths)
            float[][] one = {java.util.Arrays.copyOf(in[0], (int) DK), in[1], in[2]};
            Tensor q = Tensor.of(arena, one[0], 1, 1, 1, DK);
            Tensor k = Tensor.of(arena, one[1], B, HKV, L, DK);
            Tensor v = Tensor.of(arena, one[2], B, HKV, L, DV);
            Tensor ref = Tensor.allocate(arena, 1, 1, 1, DV);
            Tensor out = Tensor.allocate(arena, 1, 1, 1, DV);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.DEFAULT);
            Attention.create(backend).sdpa(q, k, v, out, SdpaOptions.DEFAULT);
            for (int d = 0; d < DV; d++) {
                assertEquals(ref.get(0, 0, 0, d), out.get(0, 0, 0, d), TOL * Math.abs(ref.get(0, 0, 0, d)),
                        backend + " one query row, v near 1e37: column " + d);
            }
        }
    }
}
