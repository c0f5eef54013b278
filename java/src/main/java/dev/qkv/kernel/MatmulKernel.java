package dev.qkv.kernel;

import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.SgemmArgs;
import dev.qkv.blas.SgemvArgs;
import dev.qkv.blas.Transpose;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * A row-major single-precision matrix product {@code C = alpha · op(A) · op(B) + beta · C}, implemented
 * natively (OpenBLAS) or in Java. The checks live here, once, and run before any kernel: the kernels trust
 * their inputs.
 */
public abstract class MatmulKernel {

    /** Short name for reports: {@code native}, {@code java-vector}, {@code java-scalar}. */
    public abstract String name();

    /**
     * {@code C [m, n] = alpha · op(A) [m, k] · op(B) [k, n] + beta · C}; offsets and leading dimensions in
     * elements, checked by {@link SgemmArgs#validate}. With {@code beta == 0} the old contents of C are ignored
     * (even NaN), as in BLAS; with {@code alpha == 0} (or {@code k == 0}) A and B are not read, as in BLAS:
     * {@code C = beta · C} on every kernel, whatever A and B hold.
     *
     * @throws NullPointerException when {@code ta}, {@code tb}, {@code a}, {@code b} or {@code c} is null, the
     *                              message starting with its name ({@code "a is null (sgemm)"}), before any other
     *                              check
     */
    public final void matmul(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                             MemorySegment a, long aOffset, int lda, MemorySegment b, long bOffset, int ldb,
                             float beta, MemorySegment c, long cOffset, int ldc) {
        SgemmArgs.validate(requiresNative(), ta, tb, m, n, k, a, aOffset, lda, b, bOffset, ldb, c, cOffset, ldc);
        if (m == 0 || n == 0) {
            return;
        }
        if (alpha == 0f || k == 0) {
            SgemmArgs.betaTimesC(beta, c, cOffset, m, n, ldc);
            return;
        }
        // the Java kernels' scratch is kept per thread; a virtual thread borrows it for the call (see PerThread)
        PerThread.Lease lease = requiresNative() ? null : PerThread.enter();
        try {
            kernel(ta, tb, m, n, k, alpha, a, aOffset, lda, b, bOffset, ldb, beta, c, cOffset, ldc);
        } finally {
            PerThread.exit(lease);
        }
    }

    /**
     * {@code y = alpha · op(A) · x + beta · y} with {@code A} stored row-major {@code [m, n]} and
     * {@code op(A) = A} ({@code x [n]}, {@code y [m]}) or {@code Aᵀ} ({@code x [m]}, {@code y [n]}); offsets,
     * leading dimension and increments in elements, checked by {@link SgemvArgs#validate}. A product of one row
     * without packing: {@code A} is read once, in place. With {@code beta == 0} the old {@code y} is ignored;
     * with {@code alpha == 0} (or an empty reduction) A and x are not read: {@code y = beta · y}, as in BLAS.
     *
     * @throws NullPointerException when {@code ta}, {@code a}, {@code x} or {@code y} is null, the message starting
     *                              with its name ({@code "x is null (sgemv)"}), before any other check
     */
    public final void matvec(Transpose ta, int m, int n, float alpha, MemorySegment a, long aOffset, int lda,
                             MemorySegment x, long xOffset, int incx, float beta, MemorySegment y, long yOffset,
                             int incy) {
        SgemvArgs.validate(requiresNative(), ta, m, n, a, aOffset, lda, x, xOffset, incx, y, yOffset, incy);
        int yLen = ta == Transpose.NO ? m : n;
        if (yLen == 0) {
            return;
        }
        if (alpha == 0f || m == 0 || n == 0) {
            SgemvArgs.betaTimesY(beta, y, yOffset, yLen, incy);
            return;
        }
        matvecKernel(ta, m, n, alpha, a, aOffset, lda, x, xOffset, incx, beta, y, yOffset, incy);
    }

    /**
     * The matrix-vector product on checked arguments with a non-empty {@code y}: plain loops with float
     * accumulation, one output element at a time; kernels override it with a faster one.
     */
    protected void matvecKernel(Transpose ta, int m, int n, float alpha, MemorySegment a, long aOffset, int lda,
                                MemorySegment x, long xOffset, int incx, float beta, MemorySegment y, long yOffset,
                                int incy) {
        final ValueLayout.OfFloat f = ValueLayout.JAVA_FLOAT_UNALIGNED;
        int yLen = ta == Transpose.NO ? m : n;
        int xLen = ta == Transpose.NO ? n : m;
        for (int i = 0; i < yLen; i++) {
            float s = 0f;
            for (int p = 0; p < xLen; p++) {
                long at = ta == Transpose.NO ? aOffset + (long) i * lda + p : aOffset + (long) p * lda + i;
                s += a.getAtIndex(f, at) * x.getAtIndex(f, xOffset + (long) p * incx);
            }
            long yi = yOffset + (long) i * incy;
            y.setAtIndex(f, yi, beta == 0f ? alpha * s : alpha * s + beta * y.getAtIndex(f, yi));
        }
    }

    /** True when the kernel needs off-heap segments. */
    protected abstract boolean requiresNative();

    /** The product on checked arguments with {@code m, n > 0}. */
    protected abstract void kernel(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                                   MemorySegment a, long aOffset, int lda, MemorySegment b, long bOffset, int ldb,
                                   float beta, MemorySegment c, long cOffset, int ldc);

    /**
     * OpenBLAS {@code cblas_sgemm}; loads the library on first use.
     *
     * @throws dev.qkv.blas.BlasUnavailableException when OpenBLAS cannot be loaded, on this and every later call
     */
    public static MatmulKernel openBlas() {
        // load first, outside the holder's initializer: a failure there would surface as
        // ExceptionInInitializerError, then as NoClassDefFoundError on every later call
        OpenBlas.get();
        return NativeHolder.INSTANCE;
    }

    /** The pure-Java product: plain loops with float accumulation, the JIT's auto-vectorization aside. */
    public static MatmulKernel javaScalar() {
        return ScalarMatmul.INSTANCE;
    }

    /**
     * The pure-Java product on the Vector API (register-blocked micro-kernel over packed panels).
     *
     * @throws UnsupportedOperationException when the Vector API kernels are not enabled; the message says why
     */
    public static MatmulKernel javaVector() {
        if (!Vectorization.enabled()) {
            throw new UnsupportedOperationException(Vectorization.reason());
        }
        return VectorHolder.INSTANCE;
    }

    /** The fastest pure-Java product available: {@link #javaVector()} when enabled, else {@link #javaScalar()}. */
    public static MatmulKernel java() {
        return Vectorization.enabled() ? VectorHolder.INSTANCE : ScalarMatmul.INSTANCE;
    }

    private static final class VectorHolder {
        static final MatmulKernel INSTANCE = new PackedMatmul(Vectorization.packed());
    }

    private static final class NativeHolder {
        static final MatmulKernel INSTANCE = new MatmulKernel() {
            private final OpenBlas blas = OpenBlas.get();

            @Override
            public String name() {
                return "native";
            }

            @Override
            protected boolean requiresNative() {
                return true;
            }

            @Override
            protected void kernel(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                                  MemorySegment a, long aOffset, int lda, MemorySegment b, long bOffset, int ldb,
                                  float beta, MemorySegment c, long cOffset, int ldc) {
                blas.sgemm(ta, tb, m, n, k, alpha, a, aOffset, lda, b, bOffset, ldb, beta, c, cOffset, ldc);
            }

            @Override
            protected void matvecKernel(Transpose ta, int m, int n, float alpha, MemorySegment a, long aOffset,
                                        int lda, MemorySegment x, long xOffset, int incx, float beta,
                                        MemorySegment y, long yOffset, int incy) {
                blas.sgemv(ta, m, n, alpha, a, aOffset, lda, x, xOffset, incx, beta, y, yOffset, incy);
            }
        };
    }
}
