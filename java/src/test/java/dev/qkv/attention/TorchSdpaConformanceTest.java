package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * {@link Attention#sdpa} against an independent float64 transcription of PyTorch's documented reference for
 * {@code torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask, scale=..., enable_gqa=True)} with
 * {@code torch.nn.attention.bias.causal_lower_right} for the causal rule (qkv documents bottom-right), and the
 * {@code _safe_softmax} of torch >= 2.5 (a row all {@code -inf} gives zeros):
 * <pre>
 *   scale   = 1/sqrt(E) if None
 *   bias    = 0; causal: bias[i, j] = -inf unless j <= i + S - L
 *   bool mask: bias.masked_fill(mask.logical_not(), -inf); float mask: bias += mask
 *   k, v    = k.repeat_interleave(Hq // Hkv, dim=-3), likewise v      (query head h reads kv head h // (Hq/Hkv))
 *   out     = safe_softmax(q @ k^T * scale + bias) @ v, the mask broadcast to [B, Hq, L, S] from the right
 * </pre>
 * The oracle does not call qkv's reference backend; it runs over every mask rank and every broadcast pattern
 * (each leading dimension full or 1; the last always {@code Lk}), boolean and additive, with and without the causal
 * rule, {@code Lq} below, equal to and above {@code Lk}, grouped heads, default and explicit scales.
 */
class TorchSdpaConformanceTest {

    /** The oracle: out [B, Hq, Lq, Dv] in double. mask is null or a dense [B, Hq, Lq, Lk] after broadcasting. */
    static double[] oracle(float[] q, float[] k, float[] v, int b, int hq, int hkv, int lq, int lk, int dk, int dv,
                           boolean causal, Boolean boolMask, double[] mask, double scale) {
        int group = hq / hkv;
        double[] out = new double[b * hq * lq * dv];
        double[] s = new double[lk];
        for (int bb = 0; bb < b; bb++) {
            for (int h = 0; h < hq; h++) {
                int g = h / group;   // repeat_interleave
                for (int i = 0; i < lq; i++) {
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < lk; j++) {
                        double bias = 0;
                        if (causal && j > i + lk - lq) {
                            bias = Double.NEGATIVE_INFINITY;
                        }
                        if (mask != null) {
                            double m = mask[((bb * hq + h) * lq + i) * lk + j];
                            if (boolMask) {
                                if (m == 0) {
                                    bias = Double.NEGATIVE_INFINITY;
                                }
                            } else {
                                bias += m;
                            }
                        }
                        double dot = 0;
                        for (int d = 0; d < dk; d++) {
                            dot += (double) q[((bb * hq + h) * lq + i) * dk + d] * k[((bb * hkv + g) * lk + j) * dk + d];
                        }
                        s[j] = dot * scale + bias;
                        max = Math.max(max, s[j]);
                    }
                    if (max == Double.NEGATIVE_INFINITY) {
                        continue;   // _safe_softmax: a fully masked row is zeros
                    }
                    double sum = 0;
                    for (int j = 0; j < lk; j++) {
                        s[j] = Math.exp(s[j] - max);
                        sum += s[j];
                    }
                    for (int j = 0; j < lk; j++) {
                        for (int d = 0; d < dv; d++) {
                            out[((bb * hq + h) * lq + i) * dv + d] += s[j] / sum * v[((bb * hkv + g) * lk + j) * dv + d];
                        }
                    }
                }
            }
        }
        return out;
    }

    /** The mask values broadcast from {@code shape} (aligned right) to dense [B, Hq, Lq, Lk], as NumPy does. */
    static double[] broadcast(float[] m, long[] shape, int b, int hq, int lq, int lk) {
        int[] full = {b, hq, lq, lk};
        int rank = shape.length;
        long[] strides = new long[4];
        long st = 1;
        for (int d = rank - 1; d >= 0; d--) {
            int fd = 4 - rank + d;
            strides[fd] = shape[d] == 1 ? 0 : st;
            st *= shape[d];
        }
        double[] out = new double[b * hq * lq * lk];
        int at = 0;
        for (int i0 = 0; i0 < full[0]; i0++) {
            for (int i1 = 0; i1 < full[1]; i1++) {
                for (int i2 = 0; i2 < full[2]; i2++) {
                    for (int i3 = 0; i3 < full[3]; i3++) {
                        out[at++] = m[(int) (i0 * strides[0] + i1 * strides[1] + i2 * strides[2] + i3 * strides[3])];
                    }
                }
            }
        }
        return out;
    }

    /** Every mask shape of rank 1..4 that broadcasts: each leading dimension full or 1, the last Lk. */
    static List<long[]> maskShapes(int b, int hq, int lq, int lk) {
        List<long[]> shapes = new ArrayList<>();
        int[] full = {b, hq, lq};
        for (int rank = 1; rank <= 4; rank++) {
            int lead = rank - 1;
            for (int bits = 0; bits < (1 << lead); bits++) {
                long[] s = new long[rank];
                for (int d = 0; d < lead; d++) {
                    s[d] = (bits >> d & 1) == 1 ? full[3 - lead + d] : 1;
                }
                s[rank - 1] = lk;
                shapes.add(s);
            }
        }
        return shapes;
    }

    private static void check(Backend backend, Arena a, Random r, int b, int hq, int hkv, int lq, int lk, int dk,
                              int dv, boolean causal, long[] maskShape, boolean bool, float scale) {
        float[] qa = Fixtures.uniform(r, b * hq * lq * dk, -1, 1);
        float[] ka = Fixtures.uniform(r, b * hkv * lk * dk, -1, 1);
        float[] va = Fixtures.uniform(r, b * hkv * lk * dv, -1, 1);
        Tensor q = Tensor.of(a, qa, b, hq, lq, dk);
        Tensor k = Tensor.of(a, ka, b, hkv, lk, dk);
        Tensor v = Tensor.of(a, va, b, hkv, lk, dv);
        SdpaOptions options = new SdpaOptions(causal, null, scale);
        double[] dense = null;
        String maskText = "none";
        if (maskShape != null) {
            float[] m = new float[Fixtures.count(maskShape)];
            for (int i = 0; i < m.length; i++) {
                if (bool) {
                    m[i] = r.nextInt(4) == 0 ? 0f : (r.nextBoolean() ? 1f : -2.5f);   // any non-zero allows
                } else {
                    int pick = r.nextInt(5);
                    m[i] = pick == 0 ? Float.NEGATIVE_INFINITY : pick == 1 ? 0f : -3 + 6 * r.nextFloat();
                }
            }
            Tensor mt = Tensor.of(a, m, maskShape);
            options = options.withMask(bool ? Mask.allowed(mt) : Mask.additive(mt));
            dense = broadcast(m, maskShape, b, hq, lq, lk);
            maskText = (bool ? "bool " : "additive ") + java.util.Arrays.toString(maskShape);
        }
        double s = Float.isNaN(scale) ? 1 / Math.sqrt(dk) : scale;
        double[] want = oracle(qa, ka, va, b, hq, hkv, lq, lk, dk, dv, causal, bool, dense, s);
        Tensor out = Tensor.allocate(a, b, hq, lq, dv);
        Fixtures.run(backend, q, k, v, out, options);
        float[] wantF = new float[want.length];
        for (int i = 0; i < want.length; i++) {
            wantF[i] = (float) want[i];
        }
        double tol = Fixtures.tol(dk, lk, Math.abs(s) * Math.sqrt(dk) + 3);
        Fixtures.assertClose(backend + " B=" + b + " Hq=" + hq + " Hkv=" + hkv + " Lq=" + lq + " Lk=" + lk
                        + " causal=" + causal + " mask " + maskText + " scale=" + scale,
                out.shape(), out.toArray(), wantF, tol, tol);
    }

    /** Every broadcastable mask shape, bool and additive, causal or not, over Lq < Lk, = Lk and > Lk. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void everyBroadcastMaskShapeMatchesTorch(Backend backend) {
        Random r = new Random(2301);
        int[][] lengths = {{3, 7}, {6, 6}, {9, 5}, {1, 11}};
        try (Arena a = Arena.ofConfined()) {
            for (int[] l : lengths) {
                int b = 2;
                int hq = 4;
                int hkv = 2;
                for (long[] shape : maskShapes(b, hq, l[0], l[1])) {
                    for (boolean bool : new boolean[] {true, false}) {
                        for (boolean causal : new boolean[] {false, true}) {
                            check(backend, a, r, b, hq, hkv, l[0], l[1], 8, 5, causal, shape, bool, Float.NaN);
                        }
                    }
                }
            }
        }
    }

    /** Grouped heads (multi-query and grouped), explicit scales including negative ones, blocked lengths. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void groupedHeadsScalesAndLongerRowsMatchTorch(Backend backend) {
        Random r = new Random(2302);
        try (Arena a = Arena.ofConfined()) {
            int[][] heads = {{6, 1}, {6, 2}, {6, 3}, {6, 6}};
            for (int[] h : heads) {
                check(backend, a, r, 1, h[0], h[1], 2, 19, 16, 16, true, null, false, Float.NaN);
                check(backend, a, r, 2, h[0], h[1], 13, 19, 16, 8, false, null, false, 0.3f);
                check(backend, a, r, 1, h[0], h[1], 17, 9, 16, 16, true, null, false, -0.5f);
            }
            // several query and key blocks of the blocked kernels, with a padding mask and the causal rule
            check(backend, a, r, 2, 4, 2, 150, 300, 32, 32, true, new long[] {2, 1, 1, 300}, true, Float.NaN);
            check(backend, a, r, 1, 4, 1, 300, 150, 32, 32, true, new long[] {300, 150}, false, 0.2f);
            check(backend, a, r, 1, 2, 2, 70, 2300, 16, 16, false, new long[] {2300}, false, Float.NaN);
            // few queries over grouped heads and several key blocks of k (the decode paths), per-head masks
            check(backend, a, r, 1, 8, 2, 2, 3000, 64, 64, true, new long[] {8, 2, 3000}, false, Float.NaN);
            check(backend, a, r, 2, 8, 2, 5, 3000, 64, 32, true, new long[] {2, 8, 1, 3000}, true, 0.1f);
        }
    }

    /**
     * Hugging Face's additive masks use {@code torch.finfo(float32).min} rather than -inf: a key so masked gets
     * weight exp(-3.4e38) = 0 beside any unmasked key, and a row masked entirely gets equal (finite) scores, so
     * torch's softmax spreads it uniformly over the keys (not zeros: no score is -inf). Also given as an
     * expanded view ({@code mask.expand(B, Hq, Lq, Lk)}, zero strides), as a port passes it.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void finfoMinMasksAndExpandedViewsMatchTorch(Backend backend) {
        Random r = new Random(2303);
        int b = 2;
        int hq = 4;
        int hkv = 2;
        int dk = 8;
        try (Arena a = Arena.ofConfined()) {
            for (int[] l : new int[][] {{3, 7}, {12, 40}}) {
                int lq = l[0];
                int lk = l[1];
                float[] m = new float[lq * lk];
                for (int i = 0; i < lq; i++) {
                    for (int j = 0; j < lk; j++) {
                        // row 0 masked entirely; other rows keep about half their keys, key 0 always
                        boolean keep = i != 0 && (j == 0 || r.nextBoolean());
                        m[i * lk + j] = keep ? 0f : -Float.MAX_VALUE;
                    }
                }
                float[] qa = Fixtures.uniform(r, b * hq * lq * dk, -1, 1);
                float[] ka = Fixtures.uniform(r, b * hkv * lk * dk, -1, 1);
                float[] va = Fixtures.uniform(r, b * hkv * lk * dk, -1, 1);
                Tensor q = Tensor.of(a, qa, b, hq, lq, dk);
                Tensor k = Tensor.of(a, ka, b, hkv, lk, dk);
                Tensor v = Tensor.of(a, va, b, hkv, lk, dk);
                Tensor mask = Tensor.of(a, m, lq, lk).broadcastTo(b, hq, lq, lk);
                double[] want = oracle(qa, ka, va, b, hq, hkv, lq, lk, dk, dk, false, false,
                        broadcast(m, new long[] {lq, lk}, b, hq, lq, lk), 1 / Math.sqrt(dk));
                // the oracle's own check of the claim above: row 0 is the plain mean of v
                for (int d = 0; d < dk; d++) {
                    double mean = 0;
                    for (int j = 0; j < lk; j++) {
                        mean += va[j * dk + d];
                    }
                    org.junit.jupiter.api.Assertions.assertEquals(mean / lk, want[d], 1e-12);
                }
                float[] wantF = new float[want.length];
                for (int i = 0; i < want.length; i++) {
                    wantF[i] = (float) want[i];
                }
                Tensor out = Tensor.allocate(a, b, hq, lq, dk);
                Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.additive(mask)));
                double tol = Fixtures.tol(dk, lk, 3);
                Fixtures.assertClose(backend + " finfo.min mask Lq=" + lq + " Lk=" + lk, out.shape(), out.toArray(),
                        wantF, tol, tol);
            }
        }
    }

    /**
     * torch takes a mask of any strides: a port may hand over {@code mask.T} of a [Lk, Lq] array (last-dimension
     * stride Lq) or a slice of a wider one. Both as bool and additive, against the oracle on the dense values.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void stridedMaskViewsMatchTorch(Backend backend) {
        Random r = new Random(2304);
        int b = 2;
        int hq = 2;
        int hkv = 1;
        int dk = 8;
        try (Arena a = Arena.ofConfined()) {
            for (int[] l : new int[][] {{5, 9}, {20, 70}}) {
                int lq = l[0];
                int lk = l[1];
                float[] qa = Fixtures.uniform(r, b * hq * lq * dk, -1, 1);
                float[] ka = Fixtures.uniform(r, b * hkv * lk * dk, -1, 1);
                float[] va = Fixtures.uniform(r, b * hkv * lk * dk, -1, 1);
                Tensor q = Tensor.of(a, qa, b, hq, lq, dk);
                Tensor k = Tensor.of(a, ka, b, hkv, lk, dk);
                Tensor v = Tensor.of(a, va, b, hkv, lk, dk);
                for (boolean bool : new boolean[] {true, false}) {
                    float[] dense = new float[lq * lk];   // the [Lq, Lk] values the oracle applies
                    for (int i = 0; i < dense.length; i++) {
                        dense[i] = bool ? (r.nextInt(3) == 0 ? 0f : 1f) : (r.nextInt(4) == 0 ? Float.NEGATIVE_INFINITY
                                : -2 + 4 * r.nextFloat());
                    }
                    // [Lk, Lq] storage, viewed transposed
                    Tensor stored = Tensor.allocate(a, lk, lq);
                    // [Lq, Lk + 3] storage, sliced
                    Tensor wide = Tensor.allocate(a, lq, lk + 3).fill(7f);
                    for (int i = 0; i < lq; i++) {
                        for (int j = 0; j < lk; j++) {
                            stored.set(dense[i * lk + j], j, i);
                            wide.set(dense[i * lk + j], i, j + 2);
                        }
                    }
                    double[] want = oracle(qa, ka, va, b, hq, hkv, lq, lk, dk, dk, false, bool,
                            broadcast(dense, new long[] {lq, lk}, b, hq, lq, lk), 1 / Math.sqrt(dk));
                    float[] wantF = new float[want.length];
                    for (int i = 0; i < want.length; i++) {
                        wantF[i] = (float) want[i];
                    }
                    for (Tensor m : new Tensor[] {stored.transpose(0, 1), wide.slice(1, 2, lk + 2)}) {
                        Tensor out = Tensor.allocate(a, b, hq, lq, dk);
                        Fixtures.run(backend, q, k, v, out,
                                SdpaOptions.DEFAULT.withMask(bool ? Mask.allowed(m) : Mask.additive(m)));
                        double tol = Fixtures.tol(dk, lk, 3);
                        Fixtures.assertClose(backend + (bool ? " bool" : " additive") + " mask strides "
                                + java.util.Arrays.toString(m.strides()) + " Lq=" + lq + " Lk=" + lk, out.shape(),
                                out.toArray(), wantF, tol, tol);
                    }
                }
            }
        }
    }

    /**
     * An additive mask holding +inf: torch's softmax computes inf - inf = NaN at that key, so the row is NaN
     * (its _safe_softmax zeroes only rows that are all -inf); a NaN in the mask likewise. Other rows are unaffected.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void positiveInfinityInAnAdditiveMaskMakesItsRowNaN(Backend backend) {
        Random r = new Random(2305);
        try (Arena a = Arena.ofConfined()) {
            for (int[] l : new int[][] {{2, 9}, {20, 70}}) {
                int lq = l[0];
                int lk = l[1];
                float[] m = new float[lq * lk];
                m[1] = Float.POSITIVE_INFINITY;                       // row 0, key 1
                m[(lq - 1) * lk + lk - 1] = Float.POSITIVE_INFINITY;  // last row, last key
                m[(lq - 1) * lk] = Float.NEGATIVE_INFINITY;
                if (lq > 2) {
                    m[2 * lk + 3] = Float.NaN;                        // row 2: NaN + score is NaN in torch too
                }
                float[] qa = Fixtures.uniform(r, 2 * lq * 8, -1, 1);
                float[] ka = Fixtures.uniform(r, lk * 8, -1, 1);
                float[] va = Fixtures.uniform(r, lk * 8, -1, 1);
                double[] want = oracle(qa, ka, va, 1, 2, 1, lq, lk, 8, 8, false, false,
                        broadcast(m, new long[] {lq, lk}, 1, 2, lq, lk), 1 / Math.sqrt(8));
                float[] wantF = new float[want.length];
                for (int i = 0; i < want.length; i++) {
                    wantF[i] = (float) want[i];
                }
                org.junit.jupiter.api.Assertions.assertTrue(Float.isNaN(wantF[0]) && Float.isNaN(wantF[(lq - 1) * 8])
                        && (lq == 2 || !Float.isNaN(wantF[8])), "the oracle: rows with +inf NaN, others finite");
                Tensor out = Tensor.allocate(a, 1, 2, lq, 8);
                Fixtures.run(backend, Tensor.of(a, qa, 1, 2, lq, 8), Tensor.of(a, ka, 1, 1, lk, 8),
                        Tensor.of(a, va, 1, 1, lk, 8), out,
                        SdpaOptions.DEFAULT.withMask(Mask.additive(Tensor.of(a, m, lq, lk))));
                double tol = Fixtures.tol(8, lk, 3);
                Fixtures.assertClose(backend + " +inf mask Lq=" + lq + " Lk=" + lk, out.shape(), out.toArray(), wantF,
                        tol, tol);
            }
        }
    }
}
