package dev.qkv.kernel;

import dev.qkv.blas.Transpose;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * The Java product on {@link PackedKernels}: B is packed in panels of at most {@link #COLS} columns and A is
 * copied eight rows at a time, into buffers kept per thread (grown on demand, then reused, so steady-state
 * calls allocate nothing).
 */
final class PackedMatmul extends MatmulKernel {
    private static final int COLS = 512;
    /**
     * Most reduction steps per packed panel: B's panels are one Java array of {@code packedSize(k, COLS)}
     * floats, which for a longer reduction would pass 2^31 - 1 (a valid product then threw an
     * ArithmeticException). Longer reductions run in chunks of this many steps, each added to C; a product of
     * at most this many steps runs as one chunk, as before.
     */
    static final int KC = 1 << 16;

    private final PackedKernels kernels;
    /** Static: one slot of {@link PerThread} for all instances (there is one: {@code MatmulKernel.javaVector()}). */
    private static final PerThread<Buffers> BUFFERS = PerThread.withInitial(Buffers::new);

    PackedMatmul(PackedKernels kernels) {
        this.kernels = kernels;
    }

    /** Per-thread scratch: packed B panels, a block of A rows, the alpha of each row. */
    private static final class Buffers {
        final PackBuffer b = new PackBuffer();
        float[] a = new float[0];
        float[] alpha = new float[64];
    }

    @Override
    public String name() {
        return "java-vector";
    }

    @Override
    protected boolean requiresNative() {
        return false;
    }

    @Override
    protected void kernel(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                          MemorySegment a, long aOff, int lda, MemorySegment b, long bOff, int ldb,
                          float beta, MemorySegment c, long cOff, int ldc) {
        Buffers buf = BUFFERS.get();
        int kMax = Math.min(k, KC);
        int bNeed = kernels.packedSize(kMax, Math.min(n, COLS));
        buf.b.ensure(bNeed);
        int aNeed = 8 * Math.max(kMax, 1);
        if (buf.a.length < aNeed) {
            buf.a = new float[aNeed];
        }
        if (buf.alpha.length < m) {
            buf.alpha = new float[m];
        }
        Arrays.fill(buf.alpha, 0, m, alpha);
        // long counters: int ones wrap past Integer.MAX_VALUE - COLS (n, or k below, near it) and never end
        for (long jl = 0; jl < n; jl += COLS) {
            int j0 = (int) jl;
            int nb = Math.min(COLS, n - j0);
            for (long p = 0; p < k; p += KC) {
                int p0 = (int) p;
                int kc = Math.min(KC, k - p0);
                // op(A) [m, kc] from column p0, op(B) [kc, nb] from row p0; later chunks add to C
                long aAt = ta == Transpose.NO ? aOff + p0 : aOff + (long) p0 * lda;
                long bAt = tb == Transpose.NO ? bOff + (long) p0 * ldb + j0 : bOff + (long) j0 * ldb + p0;
                int at = kernels.packB(tb == Transpose.YES, b, bAt, ldb, kc, nb, false, buf.b);
                kernels.gemm(ta == Transpose.YES, a, aAt, lda, m, nb, kc, buf.a, buf.b.array(), at, kc, nb, 0, 0,
                        buf.alpha, p0 == 0 ? beta : 1f, c, cOff + j0, ldc);
            }
        }
    }

    @Override
    protected void matvecKernel(Transpose ta, int m, int n, float alpha, MemorySegment a, long aOffset, int lda,
                                MemorySegment x, long xOffset, int incx, float beta, MemorySegment y, long yOffset,
                                int incy) {
        if (ta == Transpose.NO && incx == 1 && incy == 1) {
            kernels.matvec(a, aOffset, lda, m, n, x, xOffset, alpha, beta, y, yOffset);
        } else {
            super.matvecKernel(ta, m, n, alpha, a, aOffset, lda, x, xOffset, incx, beta, y, yOffset, incy);
        }
    }
}
