package dev.qkv.kernel;

import dev.qkv.blas.Transpose;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** The pure-Java matrix product with float accumulation; the loop order keeps the inner loop unit-stride. */
final class ScalarMatmul extends MatmulKernel {
    static final ScalarMatmul INSTANCE = new ScalarMatmul();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    @Override
    public String name() {
        return "java-scalar";
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
            long ci = cOff + (long) i * ldc;
            for (int j = 0; j < n; j++) {
                float old = beta == 0f ? 0f : beta * c.getAtIndex(F, ci + j);
                c.setAtIndex(F, ci + j, old);
            }
            for (int p = 0; p < k; p++) {
                float aip = alpha * (ta == Transpose.NO ? a.getAtIndex(F, aOff + (long) i * lda + p)
                        : a.getAtIndex(F, aOff + (long) p * lda + i));
                if (tb == Transpose.NO) {
                    long bp = bOff + (long) p * ldb;
                    for (int j = 0; j < n; j++) {
                        c.setAtIndex(F, ci + j, c.getAtIndex(F, ci + j) + aip * b.getAtIndex(F, bp + j));
                    }
                } else {
                    for (int j = 0; j < n; j++) {
                        long bj = bOff + (long) j * ldb + p;
                        c.setAtIndex(F, ci + j, c.getAtIndex(F, ci + j) + aip * b.getAtIndex(F, bj));
                    }
                }
            }
        }
    }
}
