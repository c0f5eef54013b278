package dev.qkv.blas;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.MemorySegment;

/**
 * The argument checks of a row-major single-precision matrix product, shared by the native and the Java
 * kernels so that every implementation rejects exactly the same inputs before touching memory.
 */
public final class SgemmArgs {
    private SgemmArgs() {
    }

    /**
     * Checks {@code C [m, n] = op(A) [m, k] · op(B) [k, n]} (row-major, offsets and leading dimensions in
     * elements): sizes non-negative, leading dimensions at least the stored row length, every reachable element
     * inside its segment, segments alive (and native when {@code requireNative}), {@code C} overlapping neither
     * input.
     *
     * @throws NullPointerException     when {@code ta}, {@code tb}, {@code a}, {@code b} or {@code c} is null, the
     *                                  message starting with its name ({@code "a is null (sgemm)"}), before any
     *                                  other check: the API's one rule for null arguments (README, exception table)
     * @throws IllegalArgumentException for a bad size, leading dimension, offset or overlap
     * @throws IllegalStateException    when a segment's arena is closed
     */
    public static void validate(boolean requireNative, Transpose ta, Transpose tb, int m, int n, int k,
                                MemorySegment a, long aOffset, int lda, MemorySegment b, long bOffset, int ldb,
                                MemorySegment c, long cOffset, int ldc) {
        requireNonNull(ta, "ta", "sgemm");
        requireNonNull(tb, "tb", "sgemm");
        requireNonNull(a, "a", "sgemm");
        requireNonNull(b, "b", "sgemm");
        requireNonNull(c, "c", "sgemm");
        if (m < 0 || n < 0 || k < 0) {
            throw new IllegalArgumentException("sgemm: negative size m=" + m + " n=" + n + " k=" + k);
        }
        long aEnd = checkOperand("sgemm", requireNative, "a", a, aOffset, ta == Transpose.NO ? m : k, ta == Transpose.NO ? k : m, lda);
        long bEnd = checkOperand("sgemm", requireNative, "b", b, bOffset, tb == Transpose.NO ? k : n, tb == Transpose.NO ? n : k, ldb);
        long cEnd = checkOperand("sgemm", requireNative, "c", c, cOffset, m, n, ldc);
        if (c.isReadOnly() && m > 0 && n > 0) {
            // e.g. a view of a read-only file mapping: OpenBLAS writing into it would crash the JVM (SIGSEGV)
            throw new IllegalArgumentException("sgemm: output c [" + m + ", " + n + "] is a read-only segment");
        }
        if (Tensor.overlaps(c, cOffset, cEnd, a, aOffset, aEnd)) {
            throw new IllegalArgumentException("sgemm: output c [" + m + ", " + n + "] overlaps input a ["
                    + (ta == Transpose.NO ? m + ", " + k : k + ", " + m) + "]");
        }
        if (Tensor.overlaps(c, cOffset, cEnd, b, bOffset, bEnd)) {
            throw new IllegalArgumentException("sgemm: output c [" + m + ", " + n + "] overlaps input b ["
                    + (tb == Transpose.NO ? k + ", " + n : n + ", " + k) + "]");
        }
    }

    /**
     * The API's rule for a null argument (README, exception table; as {@code Attention}'s "q is null"):
     * {@link NullPointerException} whose message starts with the parameter's name, then names the routine. They
     * were {@link IllegalArgumentException} "sgemm: a is null", and a null flag "transpose flag is null", which
     * named no parameter. No allocation unless {@code o} is null.
     */
    static void requireNonNull(Object o, String name, String fn) {
        if (o == null) {
            throw new NullPointerException(name + " is null (" + fn + ")");
        }
    }

    /**
     * Checks one row-major operand {@code [rows, cols]} of the routine {@code fn} and returns one past its last
     * element index, or the offset if it is empty.
     */
    static long checkOperand(String fn, boolean requireNative, String name, MemorySegment s, long offset, int rows,
                             int cols, int ld) {
        if (requireNative) {
            requireBlasReady(fn, name, s, rows, cols);
        }
        if (!Tensor.usable(s)) {
            Tensor.requireUsable(s, fn + ": " + name + " [" + rows + ", " + cols + "]");
        }
        if (ld < Math.max(1, cols)) {
            throw new IllegalArgumentException(fn + ": " + name + " [" + rows + ", " + cols + "]: leading dimension "
                    + ld + " < " + Math.max(1, cols));
        }
        if (offset < 0) {
            throw new IllegalArgumentException(fn + ": " + name + " [" + rows + ", " + cols + "]: negative offset "
                    + offset);
        }
        if (rows == 0 || cols == 0) {
            // an empty operand reaches no element, so its offset may lie past the segment, as views of empty
            // tensors do (e.g. head 1 of q [1, 2, 3, 0])
            return offset;
        }
        long end = offset + (long) (rows - 1) * ld + cols;
        if (end > s.byteSize() / Float.BYTES || offset > s.byteSize() / Float.BYTES) {
            throw new IllegalArgumentException(fn + ": " + name + " [" + rows + ", " + cols + "] with leading dimension "
                    + ld + " at offset " + offset + " needs " + end + " floats, segment holds "
                    + s.byteSize() / Float.BYTES);
        }
        return end;
    }

    /**
     * True when OpenBLAS may be handed {@code s}: off-heap, at an address that is a multiple of 4. Its SSE kernels
     * load floats aligned (the Sandybridge core's sscal crashed the JVM on an output 1-3 bytes off); the one rule
     * for every caller that decides between OpenBLAS and the Java kernels.
     */
    public static boolean blasReady(MemorySegment s) {
        java.util.Objects.requireNonNull(s, "s is null");
        return s.isNative() && s.address() % Float.BYTES == 0;
    }

    /**
     * Refuses an operand {@code name [rows, cols]} (a vector {@code [rows]} when {@code cols < 0}) of routine
     * {@code fn} that {@link #blasReady} refuses, naming it with its shape as the other checks do. No allocation
     * unless it throws (it runs on every product).
     */
    static void requireBlasReady(String fn, String name, MemorySegment s, int rows, int cols) {
        if (blasReady(s)) {
            return;
        }
        String what = fn + ": " + name + " [" + rows + (cols < 0 ? "" : ", " + cols) + "]";
        if (!s.isNative()) {
            throw new IllegalArgumentException(what + " is a heap segment; OpenBLAS needs off-heap memory");
        }
        throw new IllegalArgumentException(what + " at address " + s.address() + ": OpenBLAS needs floats at"
                + " addresses that are multiples of 4");
    }

    /**
     * {@code C [m, n] = beta · C}, the old contents ignored (even NaN) when {@code beta == 0}: what a product that
     * reads neither operand computes ({@code k == 0}, or {@code alpha == 0} as in BLAS), on every kernel.
     */
    public static void betaTimesC(float beta, MemorySegment c, long cOffset, int m, int n, int ldc) {
        java.util.Objects.requireNonNull(c, "c is null");
        for (int i = 0; i < m; i++) {
            SgemvArgs.betaTimesY(beta, c, cOffset + (long) i * ldc, n, 1);
        }
    }

}
