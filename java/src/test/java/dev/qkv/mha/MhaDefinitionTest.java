package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertClose;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The layer (every backend, {@link Backend#REFERENCE} included, so that the oracle of the other tests is itself
 * checked) against values worked out by hand from the definition of {@code torch.nn.MultiheadAttention} /
 * {@code F.scaled_dot_product_attention}, against a naive double implementation written here from that
 * definition (grouped heads as Hugging Face's {@code repeat_kv}: query head h reads kv head h / (H / Hkv)), and
 * against properties that hold whatever the weights are.
 */
class MhaDefinitionTest {
    private static final double ATOL = 2e-6;
    private static final double RTOL = 1e-5;

    private static float[] forward(Arena a, MhaWeights w, Backend backend, Tensor x, Tensor kv, SdpaOptions o) {
        MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
        Tensor out = Tensor.allocate(a, x.size(0), x.size(1), x.size(2)).fill(Float.NaN);
        long lkv = kv == null ? x.size(1) : kv.size(1);
        layer.forward(x, kv, out, o, layer.newWorkspace(a, x.size(0), x.size(1), lkv));
        return out.toArray();
    }

    private static Tensor eye(Arena a, int rows, int cols, int shift) {
        Tensor t = Tensor.allocate(a, rows, cols);
        for (int r = 0; r < rows; r++) {
            t.set(1f, r, r + shift);
        }
        return t;
    }

    /**
     * One head, E = 2, identity projections, no biases: q = x, k = v = kv. For q = (1, 0) and keys (1, 0),
     * (0, 1) the scores are 1/√2 and 0, the weights p = 1 / (1 + e^(-1/√2)) and 1 - p, the output (p, 1 - p).
     * With b_Q = (0, 1) both scores are 1/√2 (weights one half each); b_O is added to the output.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void oneHeadTwoKeysByHand(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Tensor x = Tensor.of(a, new float[] {1, 0}, 1, 1, 2);
            Tensor kv = Tensor.of(a, new float[] {1, 0, 0, 1}, 1, 2, 2);
            MhaWeights plain = MhaWeights.of(1, eye(a, 2, 2, 0), null, eye(a, 2, 2, 0), null, eye(a, 2, 2, 0), null,
                    eye(a, 2, 2, 0), null);
            double p = 1 / (1 + Math.exp(-1 / Math.sqrt(2)));
            assertClose(new float[] {(float) p, (float) (1 - p)}, forward(a, plain, backend, x, kv, SdpaOptions.DEFAULT),
                    ATOL, RTOL, "no biases " + backend);

            Tensor bq = Tensor.of(a, new float[] {0, 1}, 2);
            Tensor bo = Tensor.of(a, new float[] {0.25f, -0.5f}, 2);
            MhaWeights biased = MhaWeights.of(1, eye(a, 2, 2, 0), bq, eye(a, 2, 2, 0), null, eye(a, 2, 2, 0), null,
                    eye(a, 2, 2, 0), bo);
            assertClose(new float[] {0.75f, 0f}, forward(a, biased, backend, x, kv, SdpaOptions.DEFAULT),
                    ATOL, RTOL, "b_Q, b_O " + backend);

            // explicit scale 0: uniform weights whatever the scores; a bool mask that forbids key 0: all on key 1
            assertClose(new float[] {0.5f, 0.5f}, forward(a, plain, backend, x, kv, new SdpaOptions(false, null, 0f)),
                    ATOL, RTOL, "scale 0 " + backend);
            Tensor allowed = Tensor.of(a, new float[] {0, 1}, 1, 2);
            assertClose(new float[] {0f, 1f}, forward(a, plain, backend, x, kv,
                    SdpaOptions.DEFAULT.withMask(Mask.allowed(allowed))), ATOL, RTOL, "bool mask " + backend);
            // an additive mask of (ln 3 - 1/√2, 0) makes the weights 3/4 and 1/4
            Tensor add = Tensor.of(a, new float[] {(float) (Math.log(3) - 1 / Math.sqrt(2)), 0}, 1, 2);
            assertClose(new float[] {0.75f, 0.25f}, forward(a, plain, backend, x, kv,
                    SdpaOptions.DEFAULT.withMask(Mask.additive(add))), ATOL, RTOL, "additive mask " + backend);
        }
    }

    /**
     * Grouped query heads from the packed {@code [W_Q; W_K; W_V]} of a layer with E = 4, H = 2, Hkv = 1, Dh = 2:
     * W_Q = I, W_K picks x's columns 0, 1, W_V its columns 2, 3, W_O = I. Both query heads read the one kv head.
     * Self-attention over x = [(1, 0, 0, 2), (0, 1, 4, 0)]: head 0's queries are (1, 0), (0, 1), head 1's are
     * (0, 2), (4, 0); keys (1, 0), (0, 1); values (0, 2), (4, 0).
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void groupedHeadsByHand(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            float[] in = new float[8 * 4];
            int[][] ones = {{0, 0}, {1, 1}, {2, 2}, {3, 3}, {4, 0}, {5, 1}, {6, 2}, {7, 3}};
            for (int[] rc : ones) {
                in[rc[0] * 4 + rc[1]] = 1;
            }
            MhaWeights w = MhaWeights.packed(2, Tensor.of(a, in, 8, 4), null, eye(a, 4, 4, 0), null);
            assertEquals(1, w.kvHeads());
            Tensor x = Tensor.of(a, new float[] {1, 0, 0, 2, 0, 1, 4, 0}, 1, 2, 4);
            double s = 1 / Math.sqrt(2);
            float[] want = new float[8];
            double[][] queries = {{1, 0}, {0, 2}, {0, 1}, {4, 0}}; // row 0 heads 0, 1; row 1 heads 0, 1
            for (int i = 0; i < 4; i++) {
                // scores against keys (1, 0) and (0, 1) are q0·s and q1·s; values (0, 2) and (4, 0)
                double e0 = Math.exp(queries[i][0] * s);
                double e1 = Math.exp(queries[i][1] * s);
                double p0 = e0 / (e0 + e1);
                want[2 * i] = (float) (4 * (1 - p0));
                want[2 * i + 1] = (float) (2 * p0);
            }
            assertClose(want, forward(a, w, backend, x, null, SdpaOptions.DEFAULT), ATOL, RTOL, "grouped " + backend);
            // causal: row 0 sees key 0 only, so its heads' outputs are value 0 = (0, 2)
            float[] causal = want.clone();
            causal[0] = 0;
            causal[1] = 2;
            causal[2] = 0;
            causal[3] = 2;
            assertClose(causal, forward(a, w, backend, x, null, SdpaOptions.CAUSAL), ATOL, RTOL,
                    "grouped causal " + backend);
        }
    }

    /** {@code out = concat_h(softmax(q_h·k_gᵀ/√Dh + mask)·v_g)·W_Oᵀ + b_O}, g = h / (H / Hkv), in double. */
    private static float[] naive(MhaWeights w, Tensor x, Tensor kv, boolean[][] allowed, boolean causal) {
        int b = (int) x.size(0);
        int l = (int) x.size(1);
        int lk = (int) kv.size(1);
        int e = w.embedDim();
        int h = w.heads();
        int dh = w.headDim();
        int group = h / w.kvHeads();
        float[] out = new float[b * l * e];
        for (int bi = 0; bi < b; bi++) {
            double[][] q = proj(x, bi, w.wq(), w.bq());
            double[][] k = proj(kv, bi, w.wk(), w.bk());
            double[][] v = proj(kv, bi, w.wv(), w.bv());
            for (int i = 0; i < l; i++) {
                double[] cat = new double[e];
                for (int hi = 0; hi < h; hi++) {
                    int g = hi / group;
                    double[] sc = new double[lk];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < lk; j++) {
                        boolean ok = (allowed == null || allowed[i][j]) && (!causal || j <= i + lk - l);
                        double d = 0;
                        for (int c = 0; c < dh; c++) {
                            d += q[i][hi * dh + c] * k[j][g * dh + c];
                        }
                        sc[j] = ok ? d / Math.sqrt(dh) : Double.NEGATIVE_INFINITY;
                        max = Math.max(max, sc[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < lk; j++) {
                        sc[j] = sc[j] == Double.NEGATIVE_INFINITY ? 0 : Math.exp(sc[j] - max);
                        sum += sc[j];
                    }
                    for (int c = 0; c < dh; c++) {
                        double acc = 0;
                        for (int j = 0; j < lk; j++) {
                            acc += sc[j] / sum * v[j][g * dh + c];
                        }
                        cat[hi * dh + c] = acc;
                    }
                }
                for (int r = 0; r < e; r++) {
                    double acc = w.bo() == null ? 0 : w.bo().get(r);
                    for (int c = 0; c < e; c++) {
                        acc += cat[c] * w.wo().get(r, c);
                    }
                    out[(bi * l + i) * e + r] = (float) acc;
                }
            }
        }
        return out;
    }

    private static double[][] proj(Tensor x, int bi, Tensor wt, Tensor bias) {
        int l = (int) x.size(1);
        int n = (int) wt.size(0);
        int e = (int) wt.size(1);
        double[][] y = new double[l][n];
        for (int i = 0; i < l; i++) {
            for (int r = 0; r < n; r++) {
                double acc = bias == null ? 0 : bias.get(r);
                for (int c = 0; c < e; c++) {
                    acc += (double) x.get(bi, i, c) * wt.get(r, c);
                }
                y[i][r] = acc;
            }
        }
        return y;
    }

    /**
     * Random layers of every kind (packed or separate, biases on or off, grouped heads, cross-attention with
     * Lq != Lk, a [Lq, Lk] bool mask, causal bottom-right) against the naive definition above.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void randomLayersMatchTheDefinition(Backend backend) {
        int[][] shapes = { // e, h, hkv, l, lk
                {8, 4, 2, 3, 5}, {12, 6, 3, 4, 4}, {16, 4, 1, 6, 3}, {6, 3, 3, 5, 2}, {24, 8, 2, 2, 7}};
        for (int c = 0; c < shapes.length * 4; c++) {
            int[] s = shapes[c % shapes.length];
            boolean packed = (c & 4) != 0;
            boolean bias = (c & 8) == 0;
            boolean cross = s[3] != s[4] || (c & 1) != 0;
            boolean causal = (c & 2) != 0;
            try (Arena a = Arena.ofConfined()) {
                Random r = new Random(c);
                MhaWeights w = MultiHeadAttentionTest.weights(a, r, s[0], s[1], s[2], bias, packed);
                Tensor x = rand(a, r, 1f, 2, s[3], s[0]);
                Tensor kv = cross ? rand(a, r, 1f, 2, s[4], s[0]) : x;
                int lk = (int) kv.size(1);
                boolean[][] allowed = new boolean[s[3]][lk];
                Tensor m = Tensor.allocate(a, s[3], lk);
                for (int i = 0; i < s[3]; i++) {
                    for (int j = 0; j < lk; j++) {
                        allowed[i][j] = j == 0 || r.nextInt(4) != 0;
                        m.set(allowed[i][j] ? 1f : 0f, i, j);
                    }
                }
                // key 0 is always allowed, but causal bottom-right may forbid it when Lq > Lk: the definition
                // then has no key, and qkv's zeros (documented) are the output before W_O, so the row is b_O
                SdpaOptions o = new SdpaOptions(causal, Mask.allowed(m), Float.NaN);
                float[] want = naive(w, x, kv, allowed, causal);
                for (int i = 0; i < s[3]; i++) {
                    if (causal && i + lk - s[3] < 0) {
                        for (int col = 0; col < s[0]; col++) {
                            float bo = w.bo() == null ? 0f : w.bo().get(col);
                            want[i * s[0] + col] = bo;
                            want[(s[3] + i) * s[0] + col] = bo;
                        }
                    }
                }
                float[] got = forward(a, w, backend, x, cross ? kv : null, o);
                assertClose(want, got, 1e-5, 1e-4, backend + " case " + c + " E=" + s[0] + " H=" + s[1] + " Hkv="
                        + s[2] + " L=" + s[3] + " Lkv=" + lk + (packed ? " packed" : "") + (bias ? " bias" : "")
                        + (cross ? " cross" : "") + (causal ? " causal" : ""));
            }
        }
    }

    /** Permuting the keys and values together (and a key-padding mask with them) leaves the output unchanged. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void permutingKeysAndValuesTogetherChangesNothing(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(7);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, 12, 4, 2, true, true);
            Tensor x = rand(a, r, 1f, 1, 3, 12);
            Tensor kv = rand(a, r, 1f, 1, 5, 12);
            int[] perm = {3, 0, 4, 1, 2};
            Tensor kvp = Tensor.allocate(a, 1, 5, 12);
            float[] pad = {1, 0, 1, 1, 1};
            Tensor m = Tensor.of(a, pad, 1, 1, 1, 5);
            Tensor mp = Tensor.allocate(a, 1, 1, 1, 5);
            for (int j = 0; j < 5; j++) {
                kvp.select(1, j).copyFrom(kv.select(1, perm[j]));
                mp.set(pad[perm[j]], 0, 0, 0, j);
            }
            assertClose(forward(a, w, backend, x, kv, SdpaOptions.DEFAULT.withMask(Mask.allowed(m))),
                    forward(a, w, backend, x, kvp, SdpaOptions.DEFAULT.withMask(Mask.allowed(mp))), ATOL, RTOL,
                    "permuted " + backend);
        }
    }

    /**
     * Heads are independent: with W_O = I and no output bias the output is the concatenation of the heads, and
     * changing head 2's rows of W_Q changes only head 2's columns.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void changingOneHeadsQueryWeightsChangesOnlyThatHead(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(11);
            int e = 16;
            int h = 4;
            int dh = 4;
            Tensor wq = rand(a, r, 0.5f, e, e);
            Tensor wk = rand(a, r, 0.5f, 8, e);
            Tensor wv = rand(a, r, 0.5f, 8, e);
            Tensor x = rand(a, r, 1f, 2, 5, e);
            float[] before = forward(a, MhaWeights.of(h, wq, null, wk, null, wv, null, eye(a, e, e, 0), null), backend,
                    x, null, SdpaOptions.DEFAULT);
            Tensor wq2 = Tensor.allocate(a, e, e).copyFrom(wq);
            for (int row = 2 * dh; row < 3 * dh; row++) {
                for (int c = 0; c < e; c++) {
                    wq2.set(wq.get(row, c) * -3f + 0.25f, row, c);
                }
            }
            float[] after = forward(a, MhaWeights.of(h, wq2, null, wk, null, wv, null, eye(a, e, e, 0), null), backend,
                    x, null, SdpaOptions.DEFAULT);
            boolean changed = false;
            for (int i = 0; i < before.length; i++) {
                int head = i % e / dh;
                if (head == 2) {
                    changed |= Math.abs(before[i] - after[i]) > 1e-3;
                } else {
                    assertEquals(before[i], after[i], 1e-6, backend + " element " + i + " of head " + head);
                }
            }
            assertEquals(true, changed, backend + ": head 2 did not change");
        }
    }

    /**
     * Causal cross-attention is aligned bottom-right (documented in SdpaOptions): row i of Lq = 3 queries over
     * Lk = 5 keys equals the non-causal result of that row over keys 0 .. i + 2; in self-attention row i is
     * the non-causal result over keys 0 .. i.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void aCausalRowIsTheNonCausalRowOverItsVisibleKeys(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(13);
            int e = 8;
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 2, 1, true, false);
            Tensor x = rand(a, r, 1f, 1, 3, e);
            Tensor kv = rand(a, r, 1f, 1, 5, e);
            float[] causal = forward(a, w, backend, x, kv, SdpaOptions.CAUSAL);
            float[] selfCausal = forward(a, w, backend, kv, null, SdpaOptions.CAUSAL);
            for (int i = 0; i < 3; i++) {
                Tensor xi = x.slice(1, i, i + 1);
                float[] row = forward(a, w, backend, xi, kv.slice(1, 0, i + 3), SdpaOptions.DEFAULT);
                float[] got = java.util.Arrays.copyOfRange(causal, i * e, (i + 1) * e);
                assertClose(row, got, ATOL, RTOL, "cross row " + i + " " + backend);
            }
            for (int i = 0; i < 5; i++) {
                float[] row = forward(a, w, backend, kv.slice(1, i, i + 1), kv.slice(1, 0, i + 1), SdpaOptions.DEFAULT);
                float[] got = java.util.Arrays.copyOfRange(selfCausal, i * e, (i + 1) * e);
                assertClose(row, got, ATOL, RTOL, "self row " + i + " " + backend);
            }
        }
    }
}
