package dev.qkv.blas;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * The argument checks of a row-major single-precision matrix-vector product, shared by the native and the Java
 * kernels so that every implementation rejects exactly the same inputs before touching memory.
 */
public final class SgemvArgs {
    private SgemvArgs() {
    }

    /**
     * Checks {@code y = alpha · op(A) · x + beta · y} with {@code A} stored row-major {@code [m, n]} (leading
     * dimension {@code lda}), {@code op(A) = A} ({@code x} has {@code n} elements, {@code y} has {@code m}) or
     * {@code Aᵀ} ({@code x} has {@code m}, {@code y} has {@code n}); offsets, leading dimension and increments in
     * elements. Sizes non-negative, {@code lda ≥ max(1, n)}, increments at least 1 (qkv does not use BLAS's
     * backward walk of negative increments), every reachable element inside its segment, segments alive (and
     * native when {@code requireNative}), {@code y} writable and overlapping neither {@code A} nor {@code x}.
     *
     * @throws NullPointerException     when {@code ta}, {@code a}, {@code x} or {@code y} is null, the message
     *                                  starting with its name ({@code "x is null (sgemv)"}), before any other check
     * @throws IllegalArgumentException for a bad size, leading dimension, increment, offset or overlap
     * @throws IllegalStateException    when a segment's arena is closed
     */
    public static void validate(boolean requireNative, Transpose ta, int m, int n,
                                MemorySegment a, long aOffset, int lda, MemorySegment x, long xOffset, int incx,
                                MemorySegment y, long yOffset, int incy) {
        SgemmArgs.requireNonNull(ta, "ta", "sgemv");
        SgemmArgs.requireNonNull(a, "a", "sgemv");
        SgemmArgs.requireNonNull(x, "x", "sgemv");
        SgemmArgs.requireNonNull(y, "y", "sgemv");
        if (m < 0 || n < 0) {
            throw new IllegalArgumentException("sgemv: negative size m=" + m + " n=" + n);
        }
        int xLen = ta == Transpose.NO ? n : m;
        int yLen = ta == Transpose.NO ? m : n;
        long aEnd = SgemmArgs.checkOperand("sgemv", requireNative, "a", a, aOffset, m, n, lda);
        long xEnd = vector(requireNative, "x", x, xOffset, xLen, incx);
        long yEnd = vector(requireNative, "y", y, yOffset, yLen, incy);
        if (y.isReadOnly() && yLen > 0) {
            // e.g. a view of a read-only file mapping: OpenBLAS writing into it would crash the JVM (SIGSEGV)
            throw new IllegalArgumentException("sgemv: output y [" + yLen + "] is a read-only segment");
        }
        if (Tensor.overlaps(y, yOffset, yEnd, a, aOffset, aEnd)) {
            throw new IllegalArgumentException("sgemv: output y [" + yLen + "] overlaps input a [" + m + ", " + n + "]");
        }
        if (Tensor.overlaps(y, yOffset, yEnd, x, xOffset, xEnd)) {
            throw new IllegalArgumentException("sgemv: output y [" + yLen + "] overlaps input x [" + xLen + "]");
        }
    }

    /** Checks one strided vector and returns one past its last element index, or the offset if it is empty. */
    private static long vector(boolean requireNative, String name, MemorySegment s, long offset, int len, int inc) {
        if (requireNative) {
            SgemmArgs.requireBlasReady("sgemv", name, s, len, -1);
        }
        if (!Tensor.usable(s)) {
            Tensor.requireUsable(s, "sgemv: " + name + " [" + len + "]");
        }
        if (inc < 1) {
            throw new IllegalArgumentException("sgemv: " + name + " [" + len + "]: increment " + inc + " < 1");
        }
        if (offset < 0) {
            throw new IllegalArgumentException("sgemv: " + name + " [" + len + "]: negative offset " + offset);
        }
        if (len == 0) {
            return offset;
        }
        long end = offset + (long) (len - 1) * inc + 1;
        long floats = s.byteSize() / Float.BYTES;
        if (end > floats || offset > floats) {
            throw new IllegalArgumentException("sgemv: " + name + " [" + len + "] with increment " + inc
                    + " at offset " + offset + " needs " + end + " floats, segment holds " + floats);
        }
        return end;
    }

    /**
     * {@code y = beta · y} over {@code len} elements {@code inc} apart, the old values ignored (even NaN) when
     * {@code beta == 0}: what a product that reads neither {@code A} nor {@code x} computes (an empty reduction, or
     * {@code alpha == 0} as in BLAS), on every kernel.
     */
    public static void betaTimesY(float beta, MemorySegment y, long yOffset, int len, int inc) {
        java.util.Objects.requireNonNull(y, "y is null");
        final ValueLayout.OfFloat f = ValueLayout.JAVA_FLOAT_UNALIGNED;
        for (int i = 0; i < len; i++) {
            long at = yOffset + (long) i * inc;
            y.setAtIndex(f, at, beta == 0f ? 0f : beta * y.getAtIndex(f, at));
        }
    }
}
