package dev.qkv.attention;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

/** Shared helpers of the attention tests: seeded inputs, tensor layouts, and the elementwise comparison. */
final class Fixtures {
    private Fixtures() {
    }

    /** Unit roundoff of float32. */
    static final double U = 0x1p-24;

    /**
     * Safety factor of the attention tolerance {@code atol = rtol = C · (Dk + Lk) · 2^-24}.
     *
     * <p>Why this bound: with inputs uniform in [-1, 1] and the default scale, every scaled score is O(1)
     * (standard deviation 1/3), every |v| ≤ 1 and the weights sum to 1, so |out| ≤ 1 and every quantity a float
     * rounding touches is O(1). The float kernels round Dk times in each score (a dot product of length Dk;
     * an error δ in a score moves its weight by about δ relative), then about Lk times in the softmax sum and Lk
     * times in each output sum {@code Σ p_j v_j}. Counting each rounding as at most 2^-24 of an O(1) quantity
     * gives (Dk + Lk) · 2^-24 to first order; C = 4 covers the handful of extra roundings per element (the scale
     * multiply, exp, the normalising multiply, the additive mask) and the constants hidden in "O(1)". Scores
     * that are larger by a factor S (explicit scale, big inputs) enter through {@link #tol}'s magnitude argument.
     */
    static final double C = 4;

    /** {@code C · (Dk + Lk) · 2^-24 · max(1, scoreMagnitude)}: the atol and rtol of one comparison. */
    static double tol(long dk, long lk, double scoreMagnitude) {
        return C * (dk + lk) * U * Math.max(1, scoreMagnitude);
    }

    /** {@code n} floats uniform in [lo, hi). */
    static float[] uniform(Random r, int n, float lo, float hi) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = lo + (hi - lo) * r.nextFloat();
        }
        return x;
    }

    static int count(long... shape) {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return Math.toIntExact(n);
    }

    /**
     * The values {@code x} of a mask of shape {@code form} written out in full over {@code scores} (rank 4), element
     * by element as NumPy broadcasts: each of the form's dimensions aligns with the scores' from the right, and one
     * of size 1 repeats. The independent form of a broadcast mask that the tests compare the engines' reading with.
     */
    static float[] expandMask(float[] x, long[] form, long[] scores) {
        float[] full = new float[count(scores)];
        int[] at = new int[4];
        for (int e = 0; e < full.length; e++) {
            int rest = e;
            for (int d = 3; d >= 0; d--) {
                at[d] = rest % (int) scores[d];
                rest /= (int) scores[d];
            }
            int src = 0;
            for (int d = 0; d < form.length; d++) {
                src = src * (int) form[d] + (form[d] == 1 ? 0 : at[4 - form.length + d]);
            }
            full[e] = x[src];
        }
        return full;
    }

    /** A contiguous tensor with values uniform in [-1, 1). */
    static Tensor random(Arena arena, Random r, long... shape) {
        return Tensor.of(arena, uniform(r, count(shape), -1, 1), shape);
    }

    /**
     * {@code t [B, Hkv, L, D]} expanded to {@code hq} heads, head {@code h} a copy of kv head {@code h / (hq / Hkv)}
     * (independent copies, not a broadcast view): grouped-query attention on {@code t} must equal ordinary
     * attention on this.
     */
    static Tensor expandHeads(Arena arena, Tensor t, int hq) {
        long b = t.size(0);
        int hkv = (int) t.size(1);
        Tensor x = Tensor.allocate(arena, b, hq, t.size(2), t.size(3));
        for (int i = 0; i < b; i++) {
            for (int h = 0; h < hq; h++) {
                x.select(0, i).select(0, h).copyFrom(t.select(0, i).select(0, h / (hq / hkv)));
            }
        }
        return x;
    }

    /** A contiguous copy of any view: what the reference is given, so that it never sees our strides. */
    static Tensor contiguousCopy(Arena arena, Tensor t) {
        return Tensor.of(arena, t.toArray(), t.shape());
    }

    /**
     * How a rank-4 tensor {@code [B, H, L, D]} lies in memory. The kernels must handle each: in place through
     * leading dimensions, or by packing when the last stride is not 1.
     */
    enum Layout {
        /** Dense row-major. */
        CONTIGUOUS,
        /** {@code transpose(1, 2)} of a dense {@code [B, L, H, D]}: heads interleaved, row stride H·D. */
        HEADS_INNER,
        /** A slice of a larger {@code [B+1, H+1, L+2, D+3]}: non-zero offset, padded rows. */
        PADDED,
        /** The last two dimensions transposed from a dense {@code [B, H, D, L]}: unit stride down columns. */
        TRANSPOSED,
        /** Every other float of a dense {@code [B, H, L, D, 2]}: last stride 2, so kernels must pack. */
        STRIDED;

        /** A zero-filled view of {@code shape} laid out this way. */
        Tensor allocate(Arena arena, long... shape) {
            long b = shape[0];
            long h = shape[1];
            long l = shape[2];
            long d = shape[3];
            return switch (this) {
                case CONTIGUOUS -> Tensor.allocate(arena, b, h, l, d);
                case HEADS_INNER -> Tensor.allocate(arena, b, l, h, d).transpose(1, 2);
                case PADDED -> Tensor.allocate(arena, b + 1, h + 1, l + 2, d + 3)
                        .slice(0, 1, b + 1).slice(1, 1, h + 1).slice(2, 2, l + 2).slice(3, 1, d + 1);
                case TRANSPOSED -> Tensor.allocate(arena, b, h, d, l).transpose();
                case STRIDED -> Tensor.allocate(arena, b, h, l, d, 2).select(4, 1);
            };
        }

        /** A view of {@code shape} laid out this way, holding {@code values} in row-major order. */
        Tensor of(Arena arena, float[] values, long... shape) {
            return allocate(arena, shape).copyFrom(values);
        }
    }

    /**
     * Fails unless every {@code |got - ref| <= atol + rtol·|ref|} (NaN never passes), printing the context,
     * the number of mismatches, the largest error and the first few mismatches by coordinate.
     */
    static void assertClose(String context, long[] shape, float[] got, float[] ref, double atol, double rtol) {
        if (got.length != ref.length) {
            fail(context + ": " + got.length + " values, reference has " + ref.length);
        }
        List<String> first = new ArrayList<>();
        int bad = 0;
        double worst = 0;
        for (int i = 0; i < got.length; i++) {
            double err = Math.abs((double) got[i] - ref[i]);
            boolean ok = err <= atol + rtol * Math.abs(ref[i]) || Float.compare(got[i], ref[i]) == 0;
            if (!ok) {
                bad++;
                worst = Double.isNaN(err) ? Double.NaN : Math.max(worst, err);
                if (first.size() < 6) {
                    first.add(coords(shape, i) + " got " + got[i] + " ref " + ref[i] + " |diff| " + (float) err);
                }
            }
        }
        if (bad > 0) {
            fail(context + ": " + bad + " of " + got.length + " elements exceed atol " + (float) atol + " + rtol "
                    + (float) rtol + "·|ref| (largest error " + (float) worst + "); first: " + String.join("; ", first));
        }
    }

    /** Fails unless {@code got} and {@code ref} are identical bit for bit, reporting the first differences. */
    static void assertBitIdentical(String context, long[] shape, float[] got, float[] ref) {
        assertEquals(ref.length, got.length, context + ": element count");
        List<String> first = new ArrayList<>();
        int bad = 0;
        for (int i = 0; i < got.length; i++) {
            if (Float.floatToRawIntBits(got[i]) != Float.floatToRawIntBits(ref[i])) {
                bad++;
                if (first.size() < 6) {
                    first.add(coords(shape, i) + " got " + got[i] + " expected " + ref[i]);
                }
            }
        }
        if (bad > 0) {
            fail(context + ": " + bad + " of " + got.length + " elements differ; first: " + String.join("; ", first));
        }
    }

    /** Row-major coordinates of flat index {@code i} in {@code shape}, as {@code [b, h, i, d]}. */
    static String coords(long[] shape, long i) {
        long[] c = new long[shape.length];
        for (int d = shape.length - 1; d >= 0; d--) {
            c[d] = i % shape[d];
            i /= shape[d];
        }
        return java.util.Arrays.toString(c);
    }

    /** Runs attention on {@code backend} into a NaN-filled {@code out}, so that an unwritten element shows. */
    static void run(Backend backend, Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        out.fill(Float.NaN);
        Attention.create(backend).sdpa(q, k, v, out, options);
    }
}
