package dev.qkv.mha;

import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** A scalar matrix product accumulating in double: the projections of the reference backend. */
final class DoubleMatmul extends MatmulKernel {
    static final DoubleMatmul INSTANCE = new DoubleMatmul();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    @Override
    public String name() {
        return "reference";
    }

    @Override
    protected boolean requiresNative() {
        return false;
    }

    @Override
    protected void kernel(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                          MemorySegment a, long aOff, int lda, MemorySegment b, long bOff, int ldb,
                          float beta, MemorySegment c, long cOff, int ldc) {
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double acc = 0;
                for (int p = 0; p < k; p++) {
                    float x = ta == Transpose.NO ? a.getAtIndex(F, aOff + (long) i * lda + p)
                            : a.getAtIndex(F, aOff + (long) p * lda + i);
                    float y = tb == Transpose.NO ? b.getAtIndex(F, bOff + (long) p * ldb + j)
                            : b.getAtIndex(F, bOff + (long) j * ldb + p);
                    acc += (double) x * y;
                }
                long at = cOff + (long) i * ldc + j;
                double old = beta == 0f ? 0 : (double) beta * c.getAtIndex(F, at);
                c.setAtIndex(F, at, (float) (alpha * acc + old));
            }
        }
    }
}
