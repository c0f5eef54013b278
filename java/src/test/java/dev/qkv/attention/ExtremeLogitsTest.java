package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Extreme logits across the key blocks of the online softmax: the row max jumps by 50 to 1e30 between key blocks
 * (up and down), whole key blocks masked, rows masked in every block, scores near and past Float.MAX_VALUE, and
 * the decode (few-query) path with the same scores. Every case is compared with {@link Backend#REFERENCE} (the
 * scalar double definition) at the attention tests' tolerance {@code 4·(Dk + Lk)·2^-24} (see {@link Fixtures#C}).
 *
 * <p>The scores are exact in float: Dk = 2, q_i = (1, c_i) and k_j = (off_j, u_j) with c_i = 1 + i/16, u_j a
 * multiple of 1/32 in [-1, 1] and off_j the offset of j's segment, so that {@code q_i·k_j = off_j + c_i·u_j} has
 * at most 24 significant bits (up to |off| = 2e4) or rounds to off_j in float and double alike (1e30). The float
 * engines and the reference therefore see the same scores, and the only differences are the softmax's and
 * products' roundings of O(1) quantities: the tolerance need not grow with the scores. The segments are 1024 keys
 * (the native engine's key block; two per Java key block at this head size), Lk = 4·1024 + 300 with a partial
 * last block. c_i spreads the rows' gaps between segments over a few units, so that rows fall on both sides of
 * float exp's thresholds (-87, -87.34, -103.97) when the jump is near them.
 */
class ExtremeLogitsTest {
    static final int SEG = 1024;
    static final int LK = 4 * SEG + 300;
    static final int LQ = 16;
    static final int DK = 2;
    static final int DV = 4;
    static final double TOL = Fixtures.tol(DK, LK, 1);

    /** Offsets of the 5 segments of keys for a jump of {@code jump}. */
    static float[][] patterns(float jump) {
        return new float[][] {
            {0, 0, jump, jump, jump}, // up at the Java block boundary (2048)
            {0, jump, jump, jump, jump}, // up inside the first Java block, at the first native one
            {jump, jump, 0, 0, 0}, // huge first, then small
            {jump, 0, 0, 0, 0},
            {0, 0, 0, 0, jump}, // the last (partial) block raises the max
            {-2 * jump, -jump, 0, jump, 2 * jump}, // a staircase: every block raises it
            {-jump, 0, -jump, 0, -jump},
        };
    }

    static final float[] JUMPS = {50f, 87f, 87.3f, 88f, 100f, 103.9f, 104f, 200f, 1e4f, 1e30f};

    static float[] keys(float[] offsets, Random r) {
        float[] k = new float[LK * DK];
        for (int j = 0; j < LK; j++) {
            k[j * DK] = offsets[j / SEG];
            k[j * DK + 1] = (r.nextInt(65) - 32) / 32f;
        }
        return k;
    }

    static float[] queries() {
        float[] q = new float[LQ * DK];
        for (int i = 0; i < LQ; i++) {
            q[i * DK] = 1f;
            q[i * DK + 1] = 1f + i / 16f;
        }
        return q;
    }

    /**
     * Runs one case on {@code backend} with 1 and 2 threads and compares with the reference; returns a failure
     * message or null. Also checks that no NaN appears where the reference has none (the comparison's rule).
     */
    static String check(Backend backend, String what, float[] qa, float[] ka, float[] va, int lq, SdpaOptions o) {
        try (Arena arena = Arena.ofShared()) {
            long[] qs = {1, 1, lq, DK};
            long[] ks = {1, 1, LK, DK};
            long[] vs = {1, 1, LK, DV};
            long[] os = {1, 1, lq, DV};
            Tensor q = Tensor.of(arena, java.util.Arrays.copyOf(qa, lq * DK), qs);
            Tensor k = Tensor.of(arena, ka, ks);
            Tensor v = Tensor.of(arena, va, vs);
            Tensor ref = Tensor.allocate(arena, os);
            Fixtures.run(Backend.REFERENCE, q, k, v, ref, o);
            float[] want = ref.toArray();
            for (int threads = 1; threads <= 2; threads++) {
                Tensor out = Tensor.allocate(arena, os).fill(Float.NaN);
                Attention.create(backend, threads).sdpa(q, k, v, out, o);
                try {
                    Fixtures.assertClose(backend + " threads=" + threads + " " + what, os, out.toArray(), want, TOL,
                            TOL);
                } catch (AssertionError e) {
                    return e.getMessage();
                }
            }
            return null;
        }
    }

    static float[] values(Random r) {
        return Fixtures.uniform(r, LK * DV, -1f, 1f);
    }

    /** Every case of this class on {@code backend}; the failures, one line each. */
    static List<String> allCases(Backend backend) {
        List<String> bad = new ArrayList<>();
        Random r = new Random(7);
        float[] q = queries();
        float[] v = values(r);
        for (float jump : JUMPS) {
            float[][] ps = patterns(jump);
            for (int p = 0; p < ps.length; p++) {
                float[] k = keys(ps[p], r);
                String what = "jump=" + jump + " pattern=" + java.util.Arrays.toString(ps[p]);
                for (int lq : new int[] {LQ, 3, 1}) {
                    // Lq = 3 and 1: the few-query (decode) path, one pass over all keys
                    add(bad, check(backend, what + " Lq=" + lq, q, k, v, lq, SdpaOptions.DEFAULT.withScale(1f)));
                }
                add(bad, check(backend, what + " causal", q, k, v, LQ, SdpaOptions.CAUSAL.withScale(1f)));
            }
        }
        maskedBlocks(backend, bad);
        nearFloatMax(backend, bad);
        return bad;
    }

    private static void add(List<String> bad, String failure) {
        if (failure != null) {
            bad.add(failure);
        }
    }

    /**
     * A whole key block masked (additive -inf or boolean) and the next not, in both orders, with NaN in v under
     * the masked keys (which must not reach the row) and the masked keys' scores the largest of the row; and row 5
     * masked in every block (zeros).
     */
    static void maskedBlocks(Backend backend, List<String> bad) {
        Random r = new Random(11);
        float[] q = queries();
        for (float jump : new float[] {0f, 100f, 1e30f}) {
            for (int maskedSeg : new int[] {0, 1, 2, 4}) {
                float[] off = new float[5];
                off[maskedSeg] = jump; // the masked segment holds the largest scores
                float[] k = keys(off, r);
                float[] v = values(r);
                for (int j = maskedSeg * SEG; j < Math.min(LK, (maskedSeg + 1) * SEG); j += 7) {
                    v[j * DV] = Float.NaN;
                    v[j * DV + 1] = Float.POSITIVE_INFINITY;
                }
                for (boolean bool : new boolean[] {false, true}) {
                    float[] m = new float[LQ * LK];
                    for (int i = 0; i < LQ; i++) {
                        for (int j = 0; j < LK; j++) {
                            boolean allowed = j / SEG != maskedSeg && i != 5;
                            m[i * LK + j] = bool ? (allowed ? 1f : 0f) : (allowed ? 0f : Float.NEGATIVE_INFINITY);
                        }
                    }
                    try (Arena arena = Arena.ofShared()) {
                        Tensor mt = Tensor.of(arena, m, LQ, LK);
                        Mask mask = bool ? Mask.allowed(mt) : Mask.additive(mt);
                        String what = "masked segment " + maskedSeg + " jump=" + jump + (bool ? " bool" : " additive");
                        String f = check(backend, what, q, k, v, LQ, new SdpaOptions(false, mask, 1f));
                        add(bad, f);
                        if (f == null) {
                            add(bad, zeroRow(backend, what, q, k, v, new SdpaOptions(false, mask, 1f)));
                        }
                    }
                }
            }
        }
    }

    /** Row 5, masked in every block, is exact zeros (the reference comparison allows |x| ≤ TOL). */
    private static String zeroRow(Backend backend, String what, float[] qa, float[] ka, float[] va, SdpaOptions o) {
        try (Arena arena = Arena.ofShared()) {
            Tensor q = Tensor.of(arena, qa, 1, 1, LQ, DK);
            Tensor k = Tensor.of(arena, ka, 1, 1, LK, DK);
            Tensor v = Tensor.of(arena, va, 1, 1, LK, DV);
            Tensor out = Tensor.allocate(arena, 1, 1, LQ, DV).fill(Float.NaN);
            Attention.create(backend, 1).sdpa(q, k, v, out, o);
            for (int d = 0; d < DV; d++) {
                if (Float.floatToRawIntBits(out.get(0, 0, 5, d)) != 0) {
                    return backend + " " + what + ": fully masked row 5 has " + out.get(0, 0, 5, d) + " at " + d;
                }
            }
            return null;
        }
    }

    /**
     * Scales that put scores near Float.MAX_VALUE and past it: q·k up to 4 · 1e2 times 1e36, so that some segments
     * overflow float to +inf or -inf while the reference, scoring in double, stays finite. The documented contract
     * (README, Numerics): a key scored -inf gets weight 0; a row with any +inf score (or only -inf) is computed
     * again exactly and matches the reference. Here the scores differ by at least 1e36/512 between distinct keys,
     * so the reference's weights are one-hot on the largest score (shared by ties), which float also ranks first.
     */
    static void nearFloatMax(Backend backend, List<String> bad) {
        Random r = new Random(13);
        float[] q = queries();
        float[] v = values(r);
        for (float[] off : new float[][] {{0, 300, 0, 300, 0}, {300, 0, 0, 0, 0}, {0, 0, 0, 0, 300}, {400, 0, 0, 0, 0},
            {0, 0, 400, 0, 0}, {-400, -400, 0, -400, -400}, {-400, -400, -400, -400, -400}, {0, -400, 400, 0, 0}}) {
            float[] k = keys(off, r);
            for (float scale : new float[] {1e36f, Float.MAX_VALUE / 400f}) {
                String what = "scale=" + scale + " offsets=" + java.util.Arrays.toString(off);
                add(bad, check(backend, what, q, k, v, LQ, SdpaOptions.DEFAULT.withScale(scale)));
                add(bad, check(backend, what + " Lq=1", q, k, v, 1, SdpaOptions.DEFAULT.withScale(scale)));
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void extremeLogitsAcrossKeyBlocksMatchTheReference(Backend backend) {
        List<String> bad = allCases(backend);
        assertTrue(bad.isEmpty(), bad.size() + " failures:\n" + String.join("\n", bad));
    }

    /**
     * The online softmax's rescale follows the row kernels' own underflow. The Vector API exponential returns 0
     * below -87 (README, Numerics: a weight below e^-87 of the row's largest is 0 on native and java, and the
     * key never contributes, whatever the block size). Key 0, in the first key block, has score 0 and
     * v = Float.MAX_VALUE; one key of the next block scores {@code gap} (87 < gap < 103.97, where float's
     * exp(-gap) is subnormal, not 0) with v = 1; every other key scores -1000 (weight 0 everywhere). With the rule,
     * every row is exactly 1. The rescale of the first block's output by exp(0 - gap) computed that factor as a
     * subnormal float instead of 0, so key 0 added up to 3.4e38 · e^-88 ≈ 2 to the row, which a single pass over
     * the same keys (fewer of them, one block) gives as 0 (found by this class, reading onlineWeights). The
     * scalar kernels' exponential keeps subnormal weights as the reference does: there the reference is the
     * expectation.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void aKeyBelowTheExponentialsRangeInAnEarlierKeyBlockDoesNotContribute(Backend backend) {
        int lk = 2 * 2048 + 100;
        int lq = 16;
        for (float gap : new float[] {87.5f, 88f, 90f, 93f}) {
            float[] q = new float[lq];
            java.util.Arrays.fill(q, 1f);
            float[] k = new float[lk];
            float[] v = new float[lk];
            for (int j = 0; j < lk; j++) {
                k[j] = j == 0 ? 0f : j == 2048 ? gap : -1000f;
                v[j] = j == 0 ? Float.MAX_VALUE : 1f;
            }
            try (Arena arena = Arena.ofShared()) {
                Tensor qt = Tensor.of(arena, q, 1, 1, lq, 1);
                Tensor kt = Tensor.of(arena, k, 1, 1, lk, 1);
                Tensor vt = Tensor.of(arena, v, 1, 1, lk, 1);
                SdpaOptions o = SdpaOptions.DEFAULT.withScale(1f);
                float[] want = new float[lq];
                if (dev.qkv.kernel.Vectorization.enabled()) {
                    java.util.Arrays.fill(want, 1f);
                } else {
                    Tensor ref = Tensor.allocate(arena, 1, 1, lq, 1);
                    Fixtures.run(Backend.REFERENCE, qt, kt, vt, ref, o);
                    want = ref.toArray();
                    assertTrue(want[0] > 1.0001f, "the reference keeps key 0's subnormal weight: " + want[0]);
                }
                double tol = Fixtures.tol(1, lk, 1);
                for (int threads = 1; threads <= 2; threads++) {
                    Tensor out = Tensor.allocate(arena, 1, 1, lq, 1).fill(Float.NaN);
                    Attention.create(backend, threads).sdpa(qt, kt, vt, out, o);
                    Fixtures.assertClose(backend + " gap=" + gap + " threads=" + threads + " ("
                            + dev.qkv.kernel.Vectorization.reason() + ")", out.shape(), out.toArray(), want, tol, tol);
                }
            }
        }
    }

    /**
     * NaN or Inf in v at a key whose weight the vector exponential makes 0 (below e^-87 of the row's largest) but
     * float's exp does not (above e^-103.97): the blocked product's 0 · Inf is NaN, the row is computed again
     * exactly, and the exact row (the reference's definition) gives the key its subnormal weight. So the value
     * reaches the row on every backend, one pass (Lk = 1500) or across key blocks (Lk = 4200, the key in the
     * first block): what README says of such keys. Below e^-103.97 it never reaches it.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void nonFiniteValuesAtKeysBetweenTheTwoUnderflowsMatchTheReference(Backend backend) {
        int lq = 16;
        for (int lk : new int[] {1500, 2 * 2048 + 100}) {
            for (float bad : new float[] {Float.POSITIVE_INFINITY, Float.NaN}) {
                for (float gap : new float[] {88f, 95f, 103f, 105f, 200f}) {
                    float[] q = new float[lq];
                    java.util.Arrays.fill(q, 1f);
                    float[] k = new float[lk];
                    float[] v = new float[lk];
                    for (int j = 0; j < lk; j++) {
                        // key 0 (first block) gap below the row max, which the keys from 1000 on hold
                        k[j] = j == 0 ? -gap : j >= 1000 ? 0f : -1000f;
                        v[j] = j == 0 ? bad : (j % 5) / 5f;
                    }
                    try (Arena arena = Arena.ofShared()) {
                        Tensor qt = Tensor.of(arena, q, 1, 1, lq, 1);
                        Tensor kt = Tensor.of(arena, k, 1, 1, lk, 1);
                        Tensor vt = Tensor.of(arena, v, 1, 1, lk, 1);
                        SdpaOptions o = SdpaOptions.DEFAULT.withScale(1f);
                        Tensor ref = Tensor.allocate(arena, 1, 1, lq, 1);
                        Fixtures.run(Backend.REFERENCE, qt, kt, vt, ref, o);
                        float r0 = ref.get(0, 0, 0, 0);
                        assertEquals(gap < 103.97f, !Float.isFinite(r0), "reference at gap " + gap + ": " + r0);
                        double tol = Fixtures.tol(1, lk, 1);
                        Tensor out = Tensor.allocate(arena, 1, 1, lq, 1).fill(Float.NaN);
                        Attention.create(backend, 1).sdpa(qt, kt, vt, out, o);
                        Fixtures.assertClose(backend + " Lk=" + lk + " v0=" + bad + " gap=" + gap, out.shape(),
                                out.toArray(), ref.toArray(), tol, tol);
                    }
                }
            }
        }
    }

    /** The cases above on the scalar kernels (no Vector API), in a JVM of their own. */
    @Test
    void scalarKernels() throws Exception {
        List<String> cmd = new ArrayList<>(List.of(ProcessHandle.current().info().command().orElseThrow(),
                "--enable-native-access=ALL-UNNAMED", "-Dqkv.vector=false", "-cp",
                System.getProperty("java.class.path"), ExtremeLogitsScalarProbe.class.getName()));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8).trim();
        assertTrue(p.waitFor(300, java.util.concurrent.TimeUnit.SECONDS), "child timed out");
        assertEquals(0, p.exitValue(), out);
        assertTrue(out.startsWith("scalar kernels"), out);
        assertTrue(out.endsWith("ok"), out);
    }

    /** The key blocks of the engines at this head size: the cases above cross them. */
    @Test
    void theSegmentsCrossKeyBlocks() {
        org.junit.jupiter.api.Assumptions.assumeTrue(System.getProperty("qkv.keyBlock") == null);
        assertEquals(2 * SEG, Attention.javaKeyBlock(DK, DV));
        assertEquals(SEG, Attention.NATIVE_KEY_BLOCK);
    }
}
