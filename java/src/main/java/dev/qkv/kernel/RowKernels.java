package dev.qkv.kernel;

import java.lang.foreign.MemorySegment;

/**
 * The row operations of blocked attention (masked exponentials of a score row, scaling a row) in a scalar
 * and a Vector API flavour, chosen once by {@link Vectorization}.
 */
public abstract class RowKernels {

    /** Short name for reports: {@code java-vector} or {@code java-scalar}. */
    public abstract String name();

    /**
     * Turns scores {@code s[at .. at+n)} (float indices) into unnormalized attention weights and returns the
     * factor that normalizes them: entries at or past {@code limit} and entries the mask forbids become 0, the
     * rest {@code exp(s - max)}; the result is {@code 1 / Σ exp(s - max)}, or 0 when no entry is allowed (the
     * row then holds zeros, never NaN). A NaN score makes the factor NaN. {@code mask} (may be null) is read
     * at {@code mAt + j * mStride}: a boolean mask forbids where the value is 0, an additive one is added.
     * It is {@link #maskedMax} then {@link #expFrom}; a caller with many rows runs the first pass over all of
     * them before the second, so that no row waits on its own maximum.
     */
    public final float expRow(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt,
                              long mStride, boolean maskBool) {
        return normalizer(expFrom(s, at, n, limit, maskedMax(s, at, n, limit, mask, mAt, mStride, maskBool)));
    }

    /**
     * The first pass of {@link #expRow}: applies the mask to {@code s[at .. at+limit)} in place (nothing when
     * {@code mask} is null) and returns the maximum of those entries; -inf when none is above -inf (or
     * {@code limit} is 0). A row holding a NaN returns NaN or the maximum of its other entries: either way the
     * NaN reaches the row's sum through {@link #expFrom}. {@code s[limit, n)} belongs to the row and may be read.
     */
    public abstract float maskedMax(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt,
                                    long mStride, boolean maskBool);

    /**
     * The second pass of {@link #expRow}: {@code s[j] = exp(s[j] - max)} for {@code j < limit} and 0 for
     * {@code limit <= j < n}; returns the sum of the row. When {@code max} is -inf or {@code limit} is 0 the
     * whole row becomes 0 and the sum is 0.
     */
    public abstract float expFrom(MemorySegment s, long at, int n, int limit, float max);

    /**
     * {@link #expFrom} with the weights written to {@code dst[dOff .. dOff + n)}, the same bits and sum, for a
     * caller that multiplies them straight from {@code dst}. The row {@code s} may or may not receive them too
     * (the vector kernels leave it as it is; this default computes in place and copies).
     */
    public float expInto(MemorySegment s, long at, int n, int limit, float max, float[] dst, int dOff) {
        float sum = expFrom(s, at, n, limit, max);
        MemorySegment.copy(s, java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, at * Float.BYTES, dst, dOff, n);
        return sum;
    }

    /** The factor that normalizes a row whose weights sum to {@code sum}: 0 for a row with no allowed key. */
    public static float normalizer(float sum) {
        return sum == 0f ? 0f : 1f / sum;
    }

    /** True when some {@code s[at .. at+n)} (float indices) is subnormal: non-zero and below {@code 2^-126}. */
    public abstract boolean anySubnormal(MemorySegment s, long at, int n);

    /**
     * True when some {@code s[at .. at+n)} (float indices) is NaN or infinite: an output row the blocked products
     * must compute again exactly (see {@code Attention}).
     */
    public abstract boolean anyNonFinite(MemorySegment s, long at, int n);

    /**
     * True when some row {@code s[at + r·ld .. at + r·ld + n)}, {@code r < rows} (float indices), holds a NaN or an
     * infinity: what {@link #anyNonFinite(MemorySegment, long, int)} says of any of the rows.
     */
    public boolean anyNonFinite(MemorySegment s, long at, long ld, int rows, int n) {
        for (int r = 0; r < rows; r++) {
            if (anyNonFinite(s, at + r * ld, n)) {
                return true;
            }
        }
        return false;
    }

    /** {@code s[at .. at+n) *= f} (float indices). */
    public abstract void scaleRow(MemorySegment s, long at, int n, float f);

    /**
     * The online softmax's rescale factor {@code exp(d)} for {@code d = m_old - m_new <= 0} (or NaN), with this
     * flavour's underflow: 0 wherever {@link #expFrom} would give a key at {@code d} below the row max the weight
     * 0, so that a key of an earlier key block counts exactly as it would in one pass over the row. Computed with
     * {@link StrictMath#exp} (the same bits in every JIT tier); called once per row and key block. Here: float's
     * own underflow (subnormal down to about -103.97), as {@link Math#exp} gives the scalar kernels.
     */
    public float rescale(float d) {
        return (float) StrictMath.exp(d);
    }

    /** {@code dst[i] = exp(src[i])} for {@code i < n}, with this flavour's exponential (exposed for tests). */
    public abstract void exp(float[] src, float[] dst, int n);
}
