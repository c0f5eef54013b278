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
        int bNeed = kernels.packedSize(k, Math.min(n, COLS));
        buf.b.ensure(bNeed);
        int aNeed = Math.multiplyExact(8, Math.max(k, 1));
        if (buf.a.length < aNeed) {
            buf.a = new float[aNeed];
        }
        if (buf.alpha.length < m) {
            buf.alpha = new float[m];
        }
        Arrays.fill(buf.alpha, 0, m, alpha);
        for (int j0 = 0; j0 < n; j0 += COLS) {
            int nb = Math.min(COLS, n - j0);
            long bAt = tb == Transpose.NO ? bOff + j0 : bOff + (long) j0 * ldb;
            int at = kernels.packB(tb == Transpose.YES, b, bAt, ldb, k, nb, false, buf.b);
            kernels.gemm(ta == Transpose.YES, a, aOff, lda, m, nb, k, buf.a, buf.b.array(), at, k, nb, 0, 0, buf.alpha,
                    beta, c, cOff + j0, ldc);
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
