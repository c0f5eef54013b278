package dev.qkv.kernel;

import java.lang.foreign.MemorySegment;

/**
 * Matrix products for the Java attention engine over operands packed once and reused: the right-hand operand
 * is packed into column panels of {@link #panel()} floats, so that the register-blocked micro-kernel reads it
 * with aligned unit-stride vector loads whatever its original layout, and the left-hand operand is a row-major
 * {@code float[]}. The caller (one thread) owns every buffer; nothing is allocated.
 */
public interface PackedKernels {

    /** Columns per packed panel of a wide operand (an operand at most half as wide may use narrower panels). */
    int panel();

    /** The products' register block, rows x vectors ({@code 6x4} or {@code 6x2}), as reports name it. */
    String registerBlock();

    /** Floats a {@link #packB} destination needs for {@code op(B) [k, n]}, slack for its alignment included. */
    int packedSize(int k, int n);

    /**
     * Packs {@code op(B) [k, n]} from {@code b} (row-major, float offset {@code bOff}, leading dimension
     * {@code ldb}; stored {@code [n, k]} when {@code transposed}) into {@code dst}'s array (at least
     * {@link #packedSize} floats): panel {@code jp} of width {@code w} ({@link #panel()}, or less for a narrow operand)
     * holds {@code dst[at + (jp·k + p)·w + j] = op(B)[p][jp·w + j]}, zero past column {@code n}, and returns
     * {@code at}: the start the kernels chose (a cache-line boundary when they can tell), to pass to {@link #gemm}.
     * With {@code flushSubnormals}, subnormal values are packed as zeros (NaN and infinities stay).
     */
    int packB(boolean transposed, MemorySegment b, long bOff, int ldb, int k, int n, boolean flushSubnormals,
              PackBuffer dst);

    /**
     * {@code C [m, n] = rowScale[r] · (op(A) [m, k] · B) + beta · C} with {@code A} in {@code a} (float offset
     * {@code aOff}, leading dimension {@code lda}; stored {@code [k, m]} when {@code aTransposed}), {@code B}
     * the first {@code k} rows and {@code n} columns of an operand packed by {@link #packB} as
     * {@code [packedK, packedN]} from index {@code bAt} of {@code bp} (what {@code packB} returned), starting at
     * its row {@code bRow0} and column {@code bCol0} (a multiple of
     * {@link #panel()}; {@code bRow0 + k <= packedK}, {@code bCol0 + n <= packedN}), {@code C} row-major in {@code c} (float offset {@code cOff}, leading dimension
     * {@code ldc}). Rows of A are copied, eight at a time, into {@code abuf} (at least {@code 8·k} floats).
     * {@code rowScale} null means 1; with {@code beta == 0} the old C is ignored.
     */
    void gemm(boolean aTransposed, MemorySegment a, long aOff, int lda, int m, int n, int k, float[] abuf,
              float[] bp, int bAt, int packedK, int packedN, int bRow0, int bCol0, float[] rowScale, float beta,
              MemorySegment c, long cOff, int ldc);

    /**
     * Rows of A the next {@link #gemmRows} call takes, {@code left} rows to go, for a B operand {@code packedN}
     * columns wide: one register block.
     */
    int sliverRows(int packedN, int left);

    /**
     * {@link #gemm} for rows {@code [i, i + m)} of a product whose A rows are already in {@code a} (row-major
     * {@code [m, k]} from index 0), {@code m} at most {@link #sliverRows}: {@code C} row {@code r} at
     * {@code cOff + r·ldc} gets {@code rowScale[i + r] · (A_r · B) + beta · C}.
     */
    void gemmRows(float[] a, int i, int m, int n, int k, float[] bp, int bAt, int packedK, int packedN, int bRow0,
                  int bCol0, float[] rowScale, float beta, MemorySegment c, long cOff, int ldc);

    /**
     * Few-query products straight from memory (no packing): {@code s[sOff + r·lds + j] = a_r · b_j} for
     * {@code r < m}, {@code j < n}, where {@code a_r} is row {@code r} of the row-major {@code a [m, k]} and
     * {@code b_j} row {@code j} of the row-major {@code b [n, k]} (unit stride, leading dimension {@code ldb}).
     */
    void dotRows(float[] a, int aOff, int lda, int m, MemorySegment b, long bOff, int ldb, int n, int k,
                 MemorySegment s, long sOff, int lds);

    /**
     * {@code y[yOff + i] = alpha · A_i · x + beta · y[yOff + i]} for {@code i < m}, where {@code A_i} is row
     * {@code i} of the row-major {@code a [m, n]} (float offset {@code aOff}, leading dimension {@code lda}) and
     * {@code x} the unit-stride vector of {@code n} floats at {@code xOff}: a matrix-vector product read straight
     * from memory, nothing packed. With {@code beta == 0} the old {@code y} is ignored.
     */
    void matvec(MemorySegment a, long aOff, int lda, int m, int n, MemorySegment x, long xOff, float alpha, float beta,
                MemorySegment y, long yOff);

    /**
     * {@code c_r = rowScale[r] · Σ_j p[pOff + r·ldp + j] · v_j} for {@code r < m}, where {@code v_j} is row {@code j}
     * of the row-major {@code v [n, d]} (unit stride) and {@code c_r} row {@code r} of {@code c} (leading
     * dimension {@code ldc}); {@code rowScale} null means 1. The keys are summed {@code block} at a time (see
     * {@link #axpyRowsBlock}), with the bits of {@link #axpyRowsBlock} called on those blocks in order.
     */
    void axpyRows(MemorySegment p, long pOff, int ldp, int m, MemorySegment v, long vOff, int ldv, int n, int d,
                  int block, float[] rowScale, MemorySegment c, long cOff, int ldc);

    /**
     * One key block of {@link #axpyRows}: keys {@code [0, n)} of {@code p} and {@code v} as given (offsets at the
     * block's first key), summed from zero and that block sum added to the partial sums that C holds unless
     * {@code first}, then multiplied by {@code rowScale[rsOff + r]} only when {@code last}. Blocks taken in order
     * give the bits of {@code axpyRows} with that block size; between them C holds raw partial sums. (A running
     * sum carried through every key instead drifted linearly with the key count.)
     */
    void axpyRowsBlock(MemorySegment p, long pOff, int ldp, int m, MemorySegment v, long vOff, int ldv, int n, int d,
                       boolean first, boolean last, float[] rowScale, int rsOff, MemorySegment c, long cOff, int ldc);
}
