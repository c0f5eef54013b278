package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Properties of attention that hold on every backend whatever the inputs: the weights form a distribution,
 * causally hidden keys cannot influence an output, equal keys average the values, a row with nothing to attend
 * is zero, large logits stay finite, and grouped-query heads are ordinary attention on their shared kv head.
 */
class AttentionPropertiesTest {

    static final long SEED = Long.getLong("qkv.test.seed", 20261125L);

    static Stream<Named<Backend>> backends() {
        return Stream.of(Backend.values()).map(b -> Named.of(b.cliName(), b));
    }

    /** Every backend × a few shapes {@code (B, Hq, Hkv, Lq, Lk, Dk)}, straddling tails and the block edge. */
    static Stream<Arguments> backendsAndShapes() {
        int[][] shapes = {{1, 1, 1, 1, 1, 1}, {1, 2, 1, 7, 17, 3}, {3, 4, 2, 65, 63, 17}, {1, 3, 3, 129, 64, 64},
                {3, 2, 1, 17, 129, 65}, {1, 1, 1, 63, 7, 129}};
        List<Arguments> out = new ArrayList<>();
        for (Backend b : Backend.values()) {
            for (int[] s : shapes) {
                out.add(Arguments.of(Named.of(b.cliName(), b), s));
            }
        }
        return out.stream();
    }

    private static String shape(int[] s) {
        return "B=" + s[0] + " Hq=" + s[1] + " Hkv=" + s[2] + " Lq=" + s[3] + " Lk=" + s[4] + " Dk=" + s[5]
                + " seed=" + SEED;
    }

    /** {@code v [B, Hkv, Lk, Lk]} holding the identity in every head: then {@code out = P}, the weights. */
    private static Tensor identityValues(Arena arena, int b, int hkv, int lk) {
        Tensor v = Tensor.allocate(arena, b, hkv, lk, lk);
        for (int x = 0; x < b; x++) {
            for (int g = 0; g < hkv; g++) {
                for (int j = 0; j < lk; j++) {
                    v.set(1f, x, g, j, j);
                }
            }
        }
        return v;
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndShapes")
    void weightsAreNonNegativeAndRowsSumToOne(Backend backend, int[] s) {
        for (boolean causal : new boolean[] {false, true}) {
            try (Arena arena = Arena.ofConfined()) {
                Random r = new Random(SEED);
                int b = s[0], hq = s[1], hkv = s[2], lq = s[3], lk = s[4], dk = s[5];
                Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
                Tensor k = Fixtures.random(arena, r, b, hkv, lk, dk);
                // an additive mask that leaves key 0 open, so that every row (causal or not) has a key
                float[] bias = Fixtures.uniform(r, lq * lk, -3, 3);
                Tensor mask = Tensor.of(arena, bias, lq, lk);
                Tensor out = Tensor.allocate(arena, b, hq, lq, lk);
                SdpaOptions options = new SdpaOptions(causal && lq <= lk, Mask.additive(mask), Float.NaN);
                Fixtures.run(backend, q, k, identityValues(arena, b, hkv, lk), out, options);
                float[] p = out.toArray();
                for (int row = 0; row < b * hq * lq; row++) {
                    double sum = 0;
                    for (int j = 0; j < lk; j++) {
                        float w = p[row * lk + j];
                        if (!(w >= 0)) {
                            fail(backend + " " + shape(s) + " causal=" + causal + ": weight "
                                    + Fixtures.coords(out.shape(), (long) row * lk + j) + " = " + w);
                        }
                        sum += w;
                    }
                    // Lk weights, each within a few roundings of exact
                    double tol = Fixtures.tol(0, lk, 1);
                    if (!(Math.abs(sum - 1) <= tol)) { // a NaN sum fails too
                        fail(backend + " " + shape(s) + " causal=" + causal + ": row "
                                + Fixtures.coords(new long[] {b, hq, lq}, row) + " sums to " + sum + ", tolerance " + tol);
                    }
                }
            }
        }
    }

    /**
     * Bottom-right causal masking: query i sees keys {@code j <= i + (Lk - Lq)}. Changing every key and value
     * from position {@code t} on must leave queries {@code i < t - (Lk - Lq)} bit for bit unchanged, and (as a
     * check that the test bites) change some later query.
     */
    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndShapes")
    void hiddenKeysDoNotChangeEarlierOutputs(Backend backend, int[] s) {
        int b = s[0], hq = s[1], hkv = s[2], lq = s[3], lk = s[4], dk = s[5];
        int dv = 7;
        if (lk < 2) {
            return;
        }
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED + lk);
            Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
            Tensor k = Fixtures.random(arena, r, b, hkv, lk, dk);
            Tensor v = Fixtures.random(arena, r, b, hkv, lk, dv);
            Tensor before = Tensor.allocate(arena, b, hq, lq, dv);
            Fixtures.run(backend, q, k, v, before, SdpaOptions.CAUSAL);

            int t = 1 + r.nextInt(lk - 1);
            int shift = lk - lq;
            Tensor k2 = Fixtures.contiguousCopy(arena, k);
            Tensor v2 = Fixtures.contiguousCopy(arena, v);
            // new keys and values, larger than the old ones, at positions t..Lk-1
            k2.slice(2, t, lk).copyFrom(Fixtures.uniform(r, b * hkv * (lk - t) * dk, -4, 4));
            v2.slice(2, t, lk).copyFrom(Fixtures.uniform(r, b * hkv * (lk - t) * dv, -4, 4));
            Tensor after = Tensor.allocate(arena, b, hq, lq, dv);
            Fixtures.run(backend, q, k2, v2, after, SdpaOptions.CAUSAL);

            int unaffected = Math.max(0, Math.min(lq, t - shift));
            String ctx = backend + " " + shape(s) + " keys changed from t=" + t;
            Fixtures.assertBitIdentical(ctx, new long[] {b, hq, unaffected, dv},
                    before.slice(2, 0, unaffected).toArray(), after.slice(2, 0, unaffected).toArray());
            if (unaffected < lq) {
                float[] x = before.slice(2, unaffected, lq).toArray();
                float[] y = after.slice(2, unaffected, lq).toArray();
                assertTrue(!java.util.Arrays.equals(x, y), ctx + ": no later output changed");
            }
        }
    }

    /** Equal keys give equal scores, hence uniform weights over the visible keys: the mean of their values. */
    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndShapes")
    void identicalKeysGiveTheMeanOfTheValues(Backend backend, int[] s) {
        int b = s[0], hq = s[1], hkv = s[2], lq = s[3], lk = s[4], dk = s[5];
        int dv = 5;
        for (boolean causal : new boolean[] {false, true}) {
            try (Arena arena = Arena.ofConfined()) {
                Random r = new Random(SEED);
                Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
                Tensor k = Tensor.allocate(arena, b, hkv, lk, dk);
                for (int x = 0; x < b; x++) {
                    for (int g = 0; g < hkv; g++) {
                        float[] key = Fixtures.uniform(r, dk, -1, 1);
                        for (int j = 0; j < lk; j++) {
                            k.select(0, x).select(0, g).select(0, j).copyFrom(key);
                        }
                    }
                }
                Tensor v = Fixtures.random(arena, r, b, hkv, lk, dv);
                Tensor out = Tensor.allocate(arena, b, hq, lq, dv);
                Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT.withCausal(causal));
                // prefix[x][g][j][d] = sum of v[x, g, 0..j-1, d], in double
                float[] vv = v.toArray();
                double[] prefix = new double[b * hkv * (lk + 1) * dv];
                for (int xg = 0; xg < b * hkv; xg++) {
                    for (int j = 0; j < lk; j++) {
                        for (int d = 0; d < dv; d++) {
                            prefix[(xg * (lk + 1) + j + 1) * dv + d] = prefix[(xg * (lk + 1) + j) * dv + d]
                                    + vv[(xg * lk + j) * dv + d];
                        }
                    }
                }
                float[] expected = new float[b * hq * lq * dv];
                int group = hq / hkv;
                for (int x = 0; x < b; x++) {
                    for (int h = 0; h < hq; h++) {
                        int xg = x * hkv + h / group;
                        for (int i = 0; i < lq; i++) {
                            int visible = causal ? Math.max(0, Math.min(lk, i + 1 + lk - lq)) : lk;
                            for (int d = 0; d < dv; d++) {
                                double sum = prefix[(xg * (lk + 1) + visible) * dv + d];
                                expected[((x * hq + h) * lq + i) * dv + d] = visible == 0 ? 0f : (float) (sum / visible);
                            }
                        }
                    }
                }
                double tol = Fixtures.tol(0, lk, 1);
                Fixtures.assertClose(backend + " " + shape(s) + " causal=" + causal, out.shape(), out.toArray(),
                        expected, tol, tol);
            }
        }
    }

    /**
     * A row in which no key may be attended is exactly zero, not NaN: a boolean mask row of all false, an
     * additive row of all -inf, the first {@code Lq - Lk} causal rows when {@code Lq > Lk}, and causal plus a mask
     * that forbids exactly the keys causality leaves. Other rows still match the reference.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void fullyMaskedRowsAreZero(Backend backend) {
        int b = 3, hq = 4, hkv = 2, lq = 70, lk = 33, dk = 17, dv = 9;
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED);
            Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
            Tensor k = Fixtures.random(arena, r, b, hkv, lk, dk);
            Tensor v = Fixtures.random(arena, r, b, hkv, lk, dv);
            // rows 0, 5 and 64 (first row of the second block) of every batch and head are fully masked
            int[] dead = {0, 5, 64};
            float[] allow = new float[b * lq * lk];
            float[] bias = new float[b * lq * lk];
            for (int i = 0; i < allow.length; i++) {
                allow[i] = r.nextInt(4) == 0 ? 0f : 1f;
                bias[i] = r.nextInt(4) == 0 ? Float.NEGATIVE_INFINITY : 2 * r.nextFloat() - 1;
            }
            for (int x = 0; x < b; x++) {
                for (int i : dead) {
                    for (int j = 0; j < lk; j++) {
                        allow[(x * lq + i) * lk + j] = 0f;
                        bias[(x * lq + i) * lk + j] = Float.NEGATIVE_INFINITY;
                    }
                }
            }
            List<SdpaOptions> options = List.of(
                    SdpaOptions.DEFAULT.withMask(Mask.allowed(Tensor.of(arena, allow, b, 1, lq, lk))),
                    SdpaOptions.DEFAULT.withMask(Mask.additive(Tensor.of(arena, bias, b, 1, lq, lk))));
            for (SdpaOptions o : options) {
                Tensor out = Tensor.allocate(arena, b, hq, lq, dv);
                Fixtures.run(backend, q, k, v, out, o);
                for (int x = 0; x < b; x++) {
                    for (int h = 0; h < hq; h++) {
                        for (int i : dead) {
                            assertZeroRow(backend + " mask " + o.mask().kind(), out, x, h, i);
                        }
                    }
                }
                compareWithReference(arena, backend, q, k, v, out, o);
            }

            // causal with Lq > Lk: query i sees keys j <= i - (Lq - Lk), so rows 0 .. Lq-Lk-1 see none
            Tensor out = Tensor.allocate(arena, b, hq, lq, dv);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.CAUSAL);
            for (int x = 0; x < b; x++) {
                for (int h = 0; h < hq; h++) {
                    for (int i = 0; i < lq - lk; i++) {
                        assertZeroRow(backend + " causal Lq > Lk", out, x, h, i);
                    }
                }
            }
            compareWithReference(arena, backend, q, k, v, out, SdpaOptions.CAUSAL);

            // causal plus a [1, Lk] boolean mask that forbids the only keys row Lq-Lk+2 could see (0..2)
            float[] keyMask = new float[lk];
            java.util.Arrays.fill(keyMask, 3, lk, 1f);
            SdpaOptions both = SdpaOptions.CAUSAL.withMask(Mask.allowed(Tensor.of(arena, keyMask, 1, lk)));
            Fixtures.run(backend, q, k, v, out, both);
            for (int x = 0; x < b; x++) {
                for (int h = 0; h < hq; h++) {
                    for (int i = 0; i <= lq - lk + 2; i++) {
                        assertZeroRow(backend + " causal + mask", out, x, h, i);
                    }
                }
            }
            compareWithReference(arena, backend, q, k, v, out, both);
        }
    }

    /** With no keys at all (Lk = 0) every row is fully masked. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void noKeysGiveZeros(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED);
            Tensor q = Fixtures.random(arena, r, 1, 2, 5, 3);
            Tensor k = Tensor.allocate(arena, 1, 1, 0, 3);
            Tensor v = Tensor.allocate(arena, 1, 1, 0, 4);
            Tensor out = Tensor.allocate(arena, 1, 2, 5, 4);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT);
            Fixtures.assertBitIdentical(backend + " Lk=0", out.shape(), out.toArray(), new float[2 * 5 * 4]);
        }
    }

    private static void assertZeroRow(String ctx, Tensor out, int x, int h, int i) {
        for (int d = 0; d < out.size(3); d++) {
            float got = out.get(x, h, i, d);
            if (Float.floatToRawIntBits(got) != 0) {
                fail(ctx + ": fully masked row [" + x + ", " + h + ", " + i + "] has out[.., " + d + "] = " + got);
            }
        }
    }

    private static void compareWithReference(Arena arena, Backend backend, Tensor q, Tensor k, Tensor v, Tensor out,
                                             SdpaOptions o) {
        Tensor ref = Tensor.allocate(arena, out.shape());
        Fixtures.run(Backend.REFERENCE, q, k, v, ref, o);
        double tol = Fixtures.tol(q.size(3), k.size(2), 1);
        Fixtures.assertClose(backend + " vs reference, causal=" + o.causal() + " mask="
                + (o.mask() == null ? "none" : o.mask().kind()), out.shape(), out.toArray(), ref.toArray(), tol, tol);
    }

    /**
     * Scores near ±10^4: q and k uniform in [-100, 100] with Dk = 16 and scale 1/4 give scores with a standard
     * deviation of about 3300. The outputs must be finite and match the reference within {@link ScoreErrorBound}:
     * a float score of magnitude S carries an error of about Dk·2^-24·S, which moves the output by that much times
     * the spread of v under the weights, and not at all in a row whose weights are one-hot. (The tolerance was the
     * usual one times the largest S, about 0.08 on outputs of order 1: outputs rounded to bfloat16 passed it.)
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void largeLogitsStayFinite(Backend backend) {
        int b = 1, hq = 2, lq = 65, lk = 17, dk = 16, dv = 8;
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED);
            Tensor q = Tensor.of(arena, Fixtures.uniform(r, b * hq * lq * dk, -100, 100), b, hq, lq, dk);
            Tensor k = Tensor.of(arena, Fixtures.uniform(r, b * hq * lk * dk, -100, 100), b, hq, lk, dk);
            Tensor v = Fixtures.random(arena, r, b, hq, lk, dv);
            double maxScore = 0;
            for (int h = 0; h < hq; h++) {
                for (int i = 0; i < lq; i++) {
                    for (int j = 0; j < lk; j++) {
                        double dot = 0;
                        for (int d = 0; d < dk; d++) {
                            dot += (double) q.get(0, h, i, d) * k.get(0, h, j, d);
                        }
                        maxScore = Math.max(maxScore, Math.abs(dot / Math.sqrt(dk)));
                    }
                }
            }
            assertTrue(maxScore > 5000, "scores should reach the thousands, max " + maxScore);
            for (SdpaOptions o : List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL)) {
                Tensor out = Tensor.allocate(arena, b, hq, lq, dv);
                Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                Fixtures.run(backend, q, k, v, out, o);
                Fixtures.run(Backend.REFERENCE, q, k, v, ref, o);
                float[] x = out.toArray();
                for (int i = 0; i < x.length; i++) {
                    assertTrue(Float.isFinite(x[i]), backend + " causal=" + o.causal() + ": out"
                            + Fixtures.coords(out.shape(), i) + " = " + x[i]);
                }
                double[] bound = ScoreErrorBound.of(q.toArray(), k.toArray(), v.toArray(), b, hq, hq, lq, lk, dk, dv,
                        o.scaleFor(dk), o.causal());
                float[] want = ref.toArray();
                for (int i = 0; i < x.length; i++) {
                    if (!(Math.abs(x[i] - want[i]) <= bound[i])) {
                        fail(backend + " large logits causal=" + o.causal() + " max |score| " + maxScore + ": out"
                                + Fixtures.coords(out.shape(), i) + " = " + x[i] + ", reference " + want[i]
                                + ", bound " + bound[i]);
                    }
                }
            }
        }
    }

    /**
     * Grouped-query attention: query head h uses kv head {@code h / (Hq / Hkv)}, so it must equal attention on
     * k and v expanded to Hq heads by copying each kv head (independent copies, not a broadcast view).
     */
    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndShapes")
    void groupedQueryHeadsUseTheirSharedKvHead(Backend backend, int[] s) {
        int b = s[0], hq = s[1], hkv = s[2], lq = s[3], lk = s[4], dk = s[5];
        int dv = 6;
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED);
            Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
            Tensor k = Fixtures.random(arena, r, b, hkv, lk, dk);
            Tensor v = Fixtures.random(arena, r, b, hkv, lk, dv);
            Tensor kx = Fixtures.expandHeads(arena, k, hq);
            Tensor vx = Fixtures.expandHeads(arena, v, hq);
            for (SdpaOptions o : List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL)) {
                Tensor grouped = Tensor.allocate(arena, b, hq, lq, dv);
                Tensor expanded = Tensor.allocate(arena, b, hq, lq, dv);
                Fixtures.run(backend, q, k, v, grouped, o);
                Fixtures.run(backend, q, kx, vx, expanded, o);
                // the same arithmetic on the same numbers, only found through a different head index
                Fixtures.assertBitIdentical(backend + " " + shape(s) + " causal=" + o.causal(), grouped.shape(),
                        grouped.toArray(), expanded.toArray());
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void outputIsOverwrittenNotAccumulated(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED);
            Tensor q = Fixtures.random(arena, r, 1, 2, 9, 4);
            Tensor k = Fixtures.random(arena, r, 1, 2, 11, 4);
            Tensor v = Fixtures.random(arena, r, 1, 2, 11, 3);
            Tensor a = Tensor.allocate(arena, 1, 2, 9, 3);
            Tensor c = Tensor.allocate(arena, 1, 2, 9, 3).fill(1e30f);
            Attention.create(backend).sdpa(q, k, v, a, SdpaOptions.CAUSAL);
            Attention.create(backend).sdpa(q, k, v, c, SdpaOptions.CAUSAL);
            assertEquals(java.util.Arrays.toString(a.toArray()), java.util.Arrays.toString(c.toArray()));
        }
    }

    /**
     * A mask of any rank broadcasts as NumPy and PyTorch broadcast (its dimensions aligned with the scores' from the
     * right, a missing or size-1 one repeated): each form gives the same bits as its values written out in full,
     * {@code [B, Hq, Lq, Lk]}, by indexing here. The causal rule is on too, so that the mask meets the blocks.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void masksOfEveryRankBroadcastFromTheRight(Backend backend) {
        int b = 2, hq = 4, hkv = 2, lq = 70, lk = 67, dk = 16, dv = 8;
        long[][] forms = {{lk}, {1, lk}, {lq, lk}, {hq, lq, lk}, {1, lq, lk}, {hq, 1, lk}, {b, 1, 1, lk},
                {1, hq, 1, lk}, {b, hq, lq, lk}};
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED);
            Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
            Tensor k = Fixtures.random(arena, r, b, hkv, lk, dk);
            Tensor v = Fixtures.random(arena, r, b, hkv, lk, dv);
            long[] scores = {b, hq, lq, lk};
            for (long[] form : forms) {
                int n = 1;
                for (long d : form) {
                    n *= (int) d;
                }
                for (boolean bool : new boolean[] {true, false}) {
                    float[] x = new float[n];
                    for (int i = 0; i < n; i++) {
                        x[i] = bool ? (r.nextInt(3) == 0 ? 0f : 1f) : 2 * r.nextFloat() - 1;
                    }
                    float[] full = Fixtures.expandMask(x, form, scores);
                    Tensor m = Tensor.of(arena, x, form);
                    Tensor mFull = Tensor.of(arena, full, scores);
                    SdpaOptions o = SdpaOptions.CAUSAL.withMask(bool ? Mask.allowed(m) : Mask.additive(m));
                    SdpaOptions oFull = SdpaOptions.CAUSAL.withMask(bool ? Mask.allowed(mFull) : Mask.additive(mFull));
                    Tensor out = Tensor.allocate(arena, b, hq, lq, dv);
                    Tensor want = Tensor.allocate(arena, b, hq, lq, dv);
                    Fixtures.run(backend, q, k, v, out, o);
                    Fixtures.run(backend, q, k, v, want, oFull);
                    assertEquals(java.util.Arrays.toString(want.toArray()), java.util.Arrays.toString(out.toArray()),
                            backend + " mask " + java.util.Arrays.toString(form) + (bool ? " bool" : " float"));
                    compareWithReference(arena, backend, q, k, v, out, oFull);
                }
            }
        }
    }
}
