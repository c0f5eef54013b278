package dev.qkv.kernel;

import dev.qkv.blas.Transpose;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * The pure-Java matrix product with float accumulation, for JVMs without the Vector API. {@code op(B)} is copied
 * row-major to per-thread heap arrays once per call (k·n floats, against the product's m·n·k; in blocks of
 * columns when large), and four rows of C at a time are accumulated in heap rows by
 * {@code row[j] += a_ip · b[p][j]}: unit-stride loops over arrays, which C2 compiles to vector instructions
 * itself. The additions are those of the plain triple loop, in the same order ({@code beta · c}, then one product
 * per p), so the bits are too.
 */
final class ScalarMatmul extends MatmulKernel {
    static final ScalarMatmul INSTANCE = new ScalarMatmul();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /**
     * Most floats of op(B) copied to the heap at once (4 MiB per thread, kept for the thread's life): wider
     * products take their columns in blocks of that size; a reduction longer than this runs the plain loops over
     * the segments.
     */
    private static final int MAX_COPY = 1 << 20;

    /** Rows of C accumulated together. */
    private static final int ROWS = 4;

    /**
     * Per-thread heap copies, grown on first use: op(B) one array per row (so that the inner loops index every
     * array by the same {@code j}, which C2 vectorizes; with {@code x[off + j]} it cannot rule out that two arrays
     * overlap and keeps the loop scalar), {@link #ROWS} rows of C and of alpha · op(A), and a row of B.
     */
    private static final class Scratch {
        float[][] b = new float[0][];
        final float[][] rows = new float[ROWS][0];
        final float[][] a = new float[ROWS][0];
        float[] tmp = new float[0];

        void ensure(int k, int n) {
            if (b.length < k) {
                b = java.util.Arrays.copyOf(b, k);
            }
            for (int p = 0; p < k; p++) {
                if (b[p] == null || b[p].length < n) {
                    b[p] = new float[n];
                }
            }
            for (int r = 0; r < ROWS; r++) {
                if (rows[r].length < n) {
                    rows[r] = new float[n];
                }
                if (a[r].length < k) {
                    a[r] = new float[k];
                }
            }
            if (tmp.length < k) {
                tmp = new float[k];
            }
        }
    }

    private static final PerThread<Scratch> SCRATCH = PerThread.withInitial(Scratch::new);

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
        if (k > MAX_COPY) {
            plain(ta, tb, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
            return;
        }
        // columns of C in blocks whose op(B) fits the copy; every element of C is still one chain of sums
        final int nc = (int) Math.min(n, MAX_COPY / Math.max(k, 1));
        final Scratch s = SCRATCH.get();
        s.ensure(k, nc);
        // a long counter: an int one would wrap past Integer.MAX_VALUE - nc (n near it) and never end
        for (long jl = 0; jl < n; jl += nc) {
            int j0 = (int) jl;
            columns(s, ta, tb, m, j0, Math.min(nc, n - j0), k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
        }
    }

    /** Columns {@code [j0, j0 + w)} of C, with op(B)'s columns copied to {@code s.b}. */
    private static void columns(Scratch s, Transpose ta, Transpose tb, int m, int j0, int w, int k, float alpha,
                                MemorySegment a, long aOff, int lda, MemorySegment b, long bOff, int ldb,
                                float beta, MemorySegment c, long cOff, int ldc) {
        final float[][] bh = s.b;
        // op(B) [k, w] row-major
        if (tb == Transpose.NO) {
            for (int p = 0; p < k; p++) {
                MemorySegment.copy(b, F, (bOff + (long) p * ldb + j0) * Float.BYTES, bh[p], 0, w);
            }
        } else if (k > 0) {
            // (with k = 0 the rows of B are empty, and their offsets may lie past the segment)
            final float[] t = s.tmp;
            for (int j = 0; j < w; j++) {
                MemorySegment.copy(b, F, (bOff + (long) (j0 + j) * ldb) * Float.BYTES, t, 0, k);
                for (int p = 0; p < k; p++) {
                    bh[p][j] = t[p];
                }
            }
        }
        // ROWS rows of C at a time, each B row read once for all of them
        final float[][] cr = s.rows;
        final float[][] ar = s.a;
        for (int i0 = 0; i0 < m; i0 += ROWS) {
            final int rows = Math.min(ROWS, m - i0);
            for (int r = 0; r < rows; r++) {
                final float[] row = cr[r];
                final long ci = cOff + (long) (i0 + r) * ldc + j0;
                if (beta == 0f) {
                    java.util.Arrays.fill(row, 0, w, 0f);
                } else {
                    MemorySegment.copy(c, F, ci * Float.BYTES, row, 0, w);
                    for (int j = 0; j < w; j++) {
                        row[j] = beta * row[j];
                    }
                }
                // alpha · op(A) row i0 + r
                final float[] ai = ar[r];
                for (int p = 0; p < k; p++) {
                    ai[p] = alpha * (ta == Transpose.NO ? a.getAtIndex(F, aOff + (long) (i0 + r) * lda + p)
                            : a.getAtIndex(F, aOff + (long) p * lda + i0 + r));
                }
            }
            if (rows == ROWS) {
                final float[] a0 = ar[0];
                final float[] a1 = ar[1];
                final float[] a2 = ar[2];
                final float[] a3 = ar[3];
                for (int p = 0; p < k; p++) {
                    axpy4(cr[0], cr[1], cr[2], cr[3], bh[p], w, a0[p], a1[p], a2[p], a3[p]);
                }
            } else {
                for (int r = 0; r < rows; r++) {
                    final float[] ai = ar[r];
                    for (int p = 0; p < k; p++) {
                        axpy(cr[r], bh[p], w, ai[p]);
                    }
                }
            }
            for (int r = 0; r < rows; r++) {
                MemorySegment.copy(cr[r], 0, c, F, (cOff + (long) (i0 + r) * ldc + j0) * Float.BYTES, w);
            }
        }
    }

    /** {@code y[j] += a · x[j]} for {@code j < n}. */
    private static void axpy(float[] y, float[] x, int n, float a) {
        for (int j = 0; j < n; j++) {
            y[j] += a * x[j];
        }
    }

    /** {@link #axpy} into four rows from one row of B. */
    private static void axpy4(float[] y0, float[] y1, float[] y2, float[] y3, float[] x, int n, float a0, float a1,
                              float a2, float a3) {
        for (int j = 0; j < n; j++) {
            float xj = x[j];
            y0[j] += a0 * xj;
            y1[j] += a1 * xj;
            y2[j] += a2 * xj;
            y3[j] += a3 * xj;
        }
    }

    /** The same sums over the segments in place, for an op(B) too large to copy. */
    private static void plain(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
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
