package dev.qkv.mha;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;

/**
 * The multi-head layer read straight off its definition, as the oracle of the tests: every projection a scalar
 * sum in double into plain contiguous {@code [B, H, L, Dh]} tensors, then {@link Backend#REFERENCE} attention,
 * then the output projection in double. It shares no layout or product code with the blocked path and
 * allocates its scratch per call.
 */
final class MhaReference {
    private static final Attention SDPA = Attention.create(Backend.REFERENCE);

    private MhaReference() {
    }

    /** {@code out [B, L, E] = concat_h(attention(x·W_Qᵀ + b_Q, kv·W_Kᵀ + b_K, kv·W_Vᵀ + b_V)) · W_Oᵀ + b_O}. */
    static void forward(MhaWeights w, Tensor x, Tensor kv, Tensor out, SdpaOptions options) {
        int b = (int) x.size(0);
        int l = (int) x.size(1);
        int lkv = (int) kv.size(1);
        int h = w.heads();
        int hkv = w.kvHeads();
        int dh = w.headDim();
        int e = w.embedDim();
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, b, h, l, dh);
            Tensor k = Tensor.allocate(arena, b, hkv, lkv, dh);
            Tensor v = Tensor.allocate(arena, b, hkv, lkv, dh);
            Tensor o = Tensor.allocate(arena, b, h, l, dh);
            project(x, w.wq(), w.bq(), q);
            project(kv, w.wk(), w.bk(), k);
            project(kv, w.wv(), w.bv(), v);
            SDPA.sdpa(q, k, v, o, options);
            for (int bi = 0; bi < b; bi++) {
                for (int i = 0; i < l; i++) {
                    for (int r = 0; r < e; r++) {
                        double acc = w.bo() == null ? 0 : get(w.bo(), r);
                        for (int hi = 0; hi < h; hi++) {
                            for (int d = 0; d < dh; d++) {
                                acc += (double) o.get(bi, hi, i, d) * get(w.wo(), r, (long) hi * dh + d);
                            }
                        }
                        out.set((float) acc, bi, i, r);
                    }
                }
            }
        }
    }

    /** {@code dst[b, head, i, d] = bias[head·Dh + d] + Σ_e src[b, i, e] · w[head·Dh + d, e]}. */
    private static void project(Tensor src, Tensor w, Tensor bias, Tensor dst) {
        long heads = dst.size(1);
        long len = dst.size(2);
        long dh = dst.size(3);
        long e = src.size(2);
        for (long b = 0; b < dst.size(0); b++) {
            for (long hd = 0; hd < heads; hd++) {
                for (long i = 0; i < len; i++) {
                    for (long d = 0; d < dh; d++) {
                        long row = hd * dh + d;
                        double acc = bias == null ? 0 : get(bias, row);
                        for (long c = 0; c < e; c++) {
                            acc += (double) src.get(b, i, c) * get(w, row, c);
                        }
                        dst.set((float) acc, b, hd, i, d);
                    }
                }
            }
        }
    }

    private static double get(Tensor t, long i) {
        return t.getAt(t.offset() + i * t.stride(0));
    }

    private static double get(Tensor t, long i, long j) {
        return t.getAt(t.offset() + i * t.stride(0) + j * t.stride(1));
    }
}
