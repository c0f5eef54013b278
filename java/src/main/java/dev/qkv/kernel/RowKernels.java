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
     */
    public abstract float expRow(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt,
                                 long mStride, boolean maskBool);

    /**
     * One key block of an online softmax: masks {@code s[at .. at+n)} as {@link #expRow} does, raises the running
     * maximum {@code max[r]} to the block's maximum, writes {@code exp(s - max[r])} (0 at or past {@code limit}
     * and where masked) and returns their sum. A row with no allowed key so far keeps {@code max[r] = -inf}
     * and gets zeros (sum 0); a NaN score makes {@code max[r]} NaN.
     */
    public abstract float expRowOnline(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt,
                                       long mStride, boolean maskBool, float[] max, int r);

    /** True when some {@code s[at .. at+n)} (float indices) is subnormal: non-zero and below {@code 2^-126}. */
    public abstract boolean anySubnormal(MemorySegment s, long at, int n);

    /** True when some {@code s[at .. at+n)} (float indices) is NaN. */
    public abstract boolean anyNaN(MemorySegment s, long at, int n);

    /** {@code s[at .. at+n) *= f} (float indices). */
    public abstract void scaleRow(MemorySegment s, long at, int n, float f);

    /** {@code dst[i] = exp(src[i])} for {@code i < n}, with this flavour's exponential (exposed for tests). */
    public abstract void exp(float[] src, float[] dst, int n);
}
