package dev.qkv.attention;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * The scalar reference: scaled dot-product attention read straight off its definition, every sum in double.
 * The blocked kernels share none of it, so it can judge them; only their exact path for output rows that came
 * out NaN calls {@link #row}, so that those rows are the definition itself. A key whose weight is 0 in float (masked,
 * past the causal limit, or underflowed) does not enter the weighted sum of v at all, so a NaN or Inf of v
 * reaches exactly the rows that give its key a weight.
 */
final class ReferenceAttention {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private ReferenceAttention() {
    }

    /** {@code out = softmax(scale · q·kᵀ + mask) · v} on validated arguments. */
    static void compute(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        if (k.size(1) == 0 || out.elementCount() == 0) {
            // nothing to write; and the int counters below may not reach sizes an empty call allows (B·Hq of 2^32
            // with Lq = 0 looped forever)
            return;
        }
        double[] s = new double[(int) k.size(2)];
        for (int b = 0; b < q.size(0); b++) {
            for (int h = 0; h < q.size(1); h++) {
                for (int i = 0; i < q.size(2); i++) {
                    row(q, k, v, out, options, b, h, i, s);
                }
            }
        }
    }

    /**
     * Output row {@code i} of head {@code (b, h)}, on validated arguments with {@code Hkv > 0}; {@code s} is
     * scratch of at least {@code Lk} doubles. Also the blocked engines' exact path for rows that came out NaN
     * (see {@link Attention}), so that such a row is the definition itself.
     */
    static void row(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, int b, int h, int i, double[] s) {
        int lq = (int) q.size(2);
        int dk = (int) q.size(3);
        int lk = (int) k.size(2);
        int dv = (int) v.size(3);
        int g = h / ((int) q.size(1) / (int) k.size(1));
        double scale = options.scaleFor(dk);
        Mask mask = options.mask();
        Tensor m = mask == null ? null : mask.values();
        long[] ms = m == null ? null : maskStrides(m);
        MemorySegment qs = q.segment();
        MemorySegment ks = k.segment();
        MemorySegment vs = v.segment();
        MemorySegment os = out.segment();
        double max = Double.NEGATIVE_INFINITY;
        boolean any = false;
        for (int j = 0; j < lk; j++) {
            boolean allowed = !options.causal() || j <= (long) i + (lk - lq);
            double x = 0;
            for (int d = 0; d < dk; d++) {
                x += (double) qs.getAtIndex(F, at(q, b, h, i, d)) * ks.getAtIndex(F, at(k, b, g, j, d));
            }
            x *= scale;
            if (m != null) {
                float mv = m.segment().getAtIndex(F, m.offset() + b * ms[0] + h * ms[1] + i * ms[2] + j * ms[3]);
                if (mask.kind() == Mask.Kind.BOOLEAN) {
                    allowed &= mv != 0f;
                } else {
                    x += mv;
                }
            }
            if (!allowed || x == Double.NEGATIVE_INFINITY) {
                s[j] = Double.NEGATIVE_INFINITY;
            } else {
                s[j] = x;
                any = true;
                max = Double.isNaN(x) || Double.isNaN(max) ? Double.NaN : Math.max(max, x);
            }
        }
        double sum = 0;
        for (int j = 0; j < lk; j++) {
            // StrictMath: the same bits in every JIT tier (the engines' exact path must not depend on it)
            s[j] = any && s[j] != Double.NEGATIVE_INFINITY ? StrictMath.exp(s[j] - max) : 0;
            // a weight that is 0 in float is 0: the key then never contributes, not even 0 · NaN
            s[j] = (float) s[j] == 0f ? 0 : s[j];
            sum += s[j];
        }
        for (int d = 0; d < dv; d++) {
            double acc = 0;
            if (any) {
                for (int j = 0; j < lk; j++) {
                    if (s[j] != 0) {
                        acc += s[j] * vs.getAtIndex(F, at(v, b, g, j, d));
                    }
                }
                acc /= sum;
            }
            os.setAtIndex(F, at(out, b, h, i, d), (float) acc);
        }
    }

    /**
     * A mask's strides over {@code [B, Hq, Lq, Lk]}: its dimensions align from the right, and one it lacks or of
     * size 1 broadcasts (stride 0), the last (keys) too: a mask {@code [.., 1]} has one value per query row, for
     * every key.
     */
    static long[] maskStrides(Tensor m) {
        return new long[] {maskStride(m, 0), maskStride(m, 1), maskStride(m, 2), maskStride(m, 3)};
    }

    /**
     * The stride of mask {@code m} along dimension {@code s} of the scores {@code [B, Hq, Lq, Lk]}, as
     * {@link #maskStrides}: 0 where it lacks that dimension or has size 1 there (the last included: a size-1
     * stride may be anything, and the keys past the first must read that one value). No allocation, for the
     * engines' per-call setup.
     */
    static long maskStride(Tensor m, int s) {
        int r = m.rank();
        int d = s - (4 - r);
        if (d < 0) {
            return 0;
        }
        return m.size(d) == 1 ? 0 : m.stride(d);
    }

    /** Element index of [b, h, i, j] in a rank-4 tensor; dimensions of size 1 broadcast. */
    private static long at(Tensor t, int b, int h, int i, int j) {
        return t.offset() + (t.size(0) == 1 ? 0 : b * t.stride(0)) + (t.size(1) == 1 ? 0 : h * t.stride(1))
                + (t.size(2) == 1 ? 0 : i * t.stride(2)) + (t.size(3) == 1 ? 0 : j * t.stride(3));
    }
}
