package dev.qkv.kernel;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Packed products on {@code FloatVector.SPECIES_PREFERRED}. The micro-kernel keeps a 6-row × 4-vector block
 * of C in 24 registers and, per step of the reduction, loads four vectors of the packed B panel and broadcasts
 * one element of each A row: 24 FMAs for 4 loads and 6 broadcasts. A broadcast from a register competes with
 * the FMAs for a port, so fewer broadcasts per FMA than the former 8 × 2 block (8 per 16) leave the FMA units
 * busier.
 *
 * <p>That block needs 29 vector registers. x86 without AVX-512 has 16 (AVX2: 8 floats per vector), and there the
 * 6 × 4 block ran at a third of the core's peak: C2 spilled the accumulators and left some vector operations as
 * calls (measured on an AMD EPYC Zen 3, 2026-11-27, one thread, medians of three runs: [1, 1, 128, 64] 0.225 ms,
 * [1, 12, 512, 64] 32.0 ms, against 0.106 and 23.5 ms with the blocks below; bench/RESULTS.md, round 25). With
 * {@link #smallBlocks} each panel is multiplied in two halves of two vectors: 6 × 2 blocks (12 accumulators,
 * 2 panel loads and 6 broadcasts per 12 FMAs, the shape of the AVX2 kernels of BLIS and OpenBLAS), and 8 × 1
 * for narrow panels. The panels' layout is the same for both.
 */
final class VectorPackedKernels implements PackedKernels {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;
    private static final int L = SP.length();
    /** Columns of a panel: four vectors, or two when the whole operand is at most two vectors wide. */
    private static final int NR = 4 * L;
    private static final int NARROW = 2 * L;
    /** Bytes of one vector. */
    private static final long VB = (long) L * Float.BYTES;
    private static final ByteOrder O = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /**
     * Per-thread 8 × NR accumulator tile between the micro-kernel and the store, used from a cache-line-aligned
     * index (see {@link HeapAlignment}).
     */
    private static final PerThread<PackBuffer> TILE = PerThread.withInitial(() -> {
        PackBuffer b = new PackBuffer();
        b.ensure(8 * NR + HeapAlignment.SLACK);
        return b;
    });

    /**
     * Whether the register blocks are 6 × 2 vectors (and 8 × 1 on narrow panels) instead of 6 × 4 (and 8 × 2):
     * for machines with 16 vector registers (see the class comment).
     */
    private final boolean smallBlocks;

    VectorPackedKernels(boolean smallBlocks) {
        this.smallBlocks = smallBlocks;
    }

    /**
     * Whether this JVM's vectors live in 16 registers rather than 32, so that the 6 × 4 block does not fit: x86
     * (amd64) with vectors under 512 bits (AVX2; AVX-512 doubles the registers to 32). AArch64 has 32 (NEON,
     * SVE).
     */
    static boolean sixteenRegisters() {
        String arch = System.getProperty("os.arch", "");
        return (arch.equals("amd64") || arch.equals("x86_64")) && L < 16;
    }

    @Override
    public String registerBlock() {
        return smallBlocks ? "6x2" : "6x4";
    }

    @Override
    public int panel() {
        return NR;
    }

    /**
     * The panel width for an operand {@code n} columns wide: a head dimension of 32 in 64-column panels would
     * double the work of {@code p · v}, so operands of at most two vectors use the 8 × 2-vector kernel.
     */
    private static int width(int n) {
        return n <= NARROW ? NARROW : NR;
    }

    @Override
    public int packedSize(int k, int n) {
        int p = width(n);
        return Math.addExact(Math.multiplyExact((n + p - 1) / p * p, k), HeapAlignment.SLACK);
    }

    @Override
    public int packB(boolean transposed, MemorySegment b, long bOff, int ldb, int k, int n, boolean flushSubnormals,
                     PackBuffer buffer) {
        final int nr = width(n);
        final float[] dst = buffer.array();
        // panels from a cache-line boundary: their vector loads then never straddle two lines
        final int at = buffer.alignedStart();
        for (int j0 = 0, jp = 0; j0 < n; j0 += nr, jp++) {
            final int nb = Math.min(nr, n - j0);
            final int base = at + jp * k * nr;
            if (!transposed) {
                // B [k, n]: each panel row is a contiguous run of nb floats (masked loads zero past n)
                for (int p = 0; p < k; p++) {
                    long src = (bOff + (long) p * ldb + j0) * Float.BYTES;
                    int d = base + p * nr;
                    for (int q = 0; q < nr; q += L) {
                        long o = src + (long) q * Float.BYTES;
                        FloatVector x = q + L <= nb ? FloatVector.fromMemorySegment(SP, b, o, O)
                                : FloatVector.fromMemorySegment(SP, b, o, O, SP.indexInRange(q, nb));
                        if (flushSubnormals) {
                            x = x.blend(0f, x.abs().compare(VectorOperators.LT, Float.MIN_NORMAL));
                        }
                        x.intoArray(dst, d + q);
                    }
                }
            } else {
                packTransposed(b, bOff, ldb, k, j0, nb, nr, flushSubnormals, dst, base);
            }
        }
        return at;
    }

    /** Reduction steps per pass of {@link #packTransposed}: its scratch holds at most {@code NR × KC} floats. */
    private static final int KC = 256;

    /** Per-thread scratch of {@link #packTransposed}: storage rows, and the gather's offsets for a step. */
    private static final class TransposeScratch {
        final float[] rows = new float[NR * KC];
        final int[] map = new int[L];
        int mapStep = -1;
    }

    private static final PerThread<TransposeScratch> TRANSPOSE = PerThread.withInitial(TransposeScratch::new);

    /**
     * One panel of {@code op(B) = storageᵀ}, storage {@code [n, k]}: column {@code j} of the panel is storage row
     * {@code j0 + j}. Up to {@link #KC} steps at a time, the panel's {@code nb} storage rows are copied whole into
     * a row-major scratch ({@code [nr, kc]}, zeros past {@code nb}), and each panel row {@code p} is then gathered
     * column-wise, {@code L} floats {@code kc} apart per vector. Element by element, this transpose took about a
     * quarter of a [1, 1, 128, 64] call.
     */
    private static void packTransposed(MemorySegment b, long bOff, int ldb, int k, int j0, int nb, int nr,
                                       boolean flushSubnormals, float[] dst, int base) {
        if (L == 16 && nb % 16 == 0 && k % 16 == 0) {
            // whole 16 × 16 blocks: in-register transposes, no gathers
            final long st = (long) ldb * Float.BYTES;
            for (int g = 0; g < nb; g += 16) {
                for (int c = 0; c < k; c += 16) {
                    final long src = (bOff + (long) (j0 + g) * ldb + c) * Float.BYTES;
                    final int d = base + c * nr + g;
                    transposeHalf(b, src, st, dst, d, nr);
                    transposeHalf(b, src + 8 * st, st, dst, d + 8 * nr, nr);
                    transposeMerge(dst, d, nr, flushSubnormals);
                }
            }
            if (nb < nr) {
                for (int p = 0; p < k; p++) {
                    java.util.Arrays.fill(dst, base + p * nr + nb, base + (p + 1) * nr, 0f);
                }
            }
            return;
        }
        final TransposeScratch t = TRANSPOSE.get();
        final float[] rows = t.rows;
        for (int p0 = 0; p0 < k; p0 += KC) {
            final int kc = Math.min(KC, k - p0);
            if (t.mapStep != kc) {
                for (int i = 0; i < L; i++) {
                    t.map[i] = i * kc;
                }
                t.mapStep = kc;
            }
            for (int jj = 0; jj < nb; jj++) {
                MemorySegment.copy(b, F, (bOff + (long) (j0 + jj) * ldb + p0) * Float.BYTES, rows, jj * kc, kc);
            }
            if (nb < nr) {
                java.util.Arrays.fill(rows, nb * kc, nr * kc, 0f);
            }
            for (int p = 0; p < kc; p++) {
                final int d = base + (p0 + p) * nr;
                for (int q = 0; q < nr; q += L) {
                    FloatVector x = FloatVector.fromArray(SP, rows, q * kc + p, t.map, 0);
                    if (flushSubnormals) {
                        x = x.blend(0f, x.abs().compare(VectorOperators.LT, Float.MIN_NORMAL));
                    }
                    x.intoArray(dst, d + q);
                }
            }
        }
    }

    /**
     * Two-source lane selections for the 16 × 16 transpose of {@link #transposeHalf} and {@link #transposeMerge}
     * (null unless {@code L == 16}). At distance {@code d}, the pair {@code (x_i, x_{i+d})} becomes
     * {@code (LOd.selectFrom(x_i, x_{i+d}), HId.selectFrom(x_i, x_{i+d}))}, which swaps the pair's off-diagonal
     * {@code d × d} sub-blocks; distances 1, 2, 4 and 8 transpose 16 × 16.
     */
    private static final FloatVector LO1 = selection(1, false);
    private static final FloatVector HI1 = selection(1, true);
    private static final FloatVector LO2 = selection(2, false);
    private static final FloatVector HI2 = selection(2, true);
    private static final FloatVector LO4 = selection(4, false);
    private static final FloatVector HI4 = selection(4, true);
    private static final FloatVector LO8 = selection(8, false);
    private static final FloatVector HI8 = selection(8, true);

    private static FloatVector selection(int d, boolean high) {
        if (L != 16) {
            return null;
        }
        float[] ix = new float[L];
        for (int i = 0; i < L; i++) {
            boolean first = (i & d) == 0;
            ix[i] = high ? (first ? i + d : L + i) : (first ? i : L + i - d);
        }
        return FloatVector.fromArray(SP, ix, 0);
    }

    /**
     * The first three stages (distances 1, 2, 4) of a 16 × 16 transpose, on eight storage rows ({@code st} bytes
     * apart from byte {@code src}), stored as panel rows {@code d + i·nr}, {@code i < 8}. Stages 1-3 keep rows
     * 0-7 and 8-15 apart, so each half is one call; {@link #transposeMerge} does the fourth. Cut in three methods:
     * the whole transpose in one body is too big for C1's profiling tier ("out of virtual registers"), stays in
     * the tier below, and then every vector op allocates (measured: a [1, 1, 128, 64] call 2.8x slower).
     */
    private static void transposeHalf(MemorySegment b, long src, long st, float[] dst, int d, int nr) {
        FloatVector x0 = FloatVector.fromMemorySegment(SP, b, src, O);
        FloatVector x1 = FloatVector.fromMemorySegment(SP, b, src + st, O);
        FloatVector x2 = FloatVector.fromMemorySegment(SP, b, src + 2 * st, O);
        FloatVector x3 = FloatVector.fromMemorySegment(SP, b, src + 3 * st, O);
        FloatVector x4 = FloatVector.fromMemorySegment(SP, b, src + 4 * st, O);
        FloatVector x5 = FloatVector.fromMemorySegment(SP, b, src + 5 * st, O);
        FloatVector x6 = FloatVector.fromMemorySegment(SP, b, src + 6 * st, O);
        FloatVector x7 = FloatVector.fromMemorySegment(SP, b, src + 7 * st, O);
        final FloatVector lo1 = LO1;
        final FloatVector hi1 = HI1;
        final FloatVector lo2 = LO2;
        final FloatVector hi2 = HI2;
        final FloatVector lo4 = LO4;
        final FloatVector hi4 = HI4;
        FloatVector t;
        // distance 1: (0, 1), (2, 3), ...
        t = lo1.selectFrom(x0, x1); x1 = hi1.selectFrom(x0, x1); x0 = t;
        t = lo1.selectFrom(x2, x3); x3 = hi1.selectFrom(x2, x3); x2 = t;
        t = lo1.selectFrom(x4, x5); x5 = hi1.selectFrom(x4, x5); x4 = t;
        t = lo1.selectFrom(x6, x7); x7 = hi1.selectFrom(x6, x7); x6 = t;
        // distance 2: (0, 2), (1, 3), (4, 6), (5, 7)
        t = lo2.selectFrom(x0, x2); x2 = hi2.selectFrom(x0, x2); x0 = t;
        t = lo2.selectFrom(x1, x3); x3 = hi2.selectFrom(x1, x3); x1 = t;
        t = lo2.selectFrom(x4, x6); x6 = hi2.selectFrom(x4, x6); x4 = t;
        t = lo2.selectFrom(x5, x7); x7 = hi2.selectFrom(x5, x7); x5 = t;
        // distance 4: (0, 4), (1, 5), (2, 6), (3, 7)
        t = lo4.selectFrom(x0, x4); x4 = hi4.selectFrom(x0, x4); x0 = t;
        t = lo4.selectFrom(x1, x5); x5 = hi4.selectFrom(x1, x5); x1 = t;
        t = lo4.selectFrom(x2, x6); x6 = hi4.selectFrom(x2, x6); x2 = t;
        t = lo4.selectFrom(x3, x7); x7 = hi4.selectFrom(x3, x7); x3 = t;
        x0.intoArray(dst, d);
        x1.intoArray(dst, d + nr);
        x2.intoArray(dst, d + 2 * nr);
        x3.intoArray(dst, d + 3 * nr);
        x4.intoArray(dst, d + 4 * nr);
        x5.intoArray(dst, d + 5 * nr);
        x6.intoArray(dst, d + 6 * nr);
        x7.intoArray(dst, d + 7 * nr);
    }

    /**
     * The fourth stage (distance 8) of the transpose {@link #transposeHalf} began at panel rows {@code d + i·nr}:
     * rows {@code i} and {@code i + 8} in place, subnormals flushed to zeros when {@code flush} is set.
     */
    private static void transposeMerge(float[] dst, int d, int nr, boolean flush) {
        final FloatVector lo8 = LO8;
        final FloatVector hi8 = HI8;
        for (int i = 0; i < 8; i++) {
            final int at = d + i * nr;
            final int at8 = at + 8 * nr;
            FloatVector x = FloatVector.fromArray(SP, dst, at);
            FloatVector y = FloatVector.fromArray(SP, dst, at8);
            FloatVector u = lo8.selectFrom(x, y);
            FloatVector w = hi8.selectFrom(x, y);
            if (flush) {
                u = u.blend(0f, u.abs().compare(VectorOperators.LT, Float.MIN_NORMAL));
                w = w.blend(0f, w.abs().compare(VectorOperators.LT, Float.MIN_NORMAL));
            }
            u.intoArray(dst, at);
            w.intoArray(dst, at8);
        }
    }

    @Override
    public void gemm(boolean aTransposed, MemorySegment a, long aOff, int lda, int m, int n, int k, float[] abuf,
                     float[] bp, int bAt, int packedK, int packedN, int bRow0, int bCol0, float[] rowScale, float beta,
                     MemorySegment c, long cOff, int ldc) {
        if (width(packedN) == NARROW) {
            // narrow panels: the 8 × 2-vector kernel over row-major rows
            for (int i = 0; i < m; ) {
                final int mr = sliverRows(packedN, m - i);
                copyRows(aTransposed, a, aOff, lda, i, mr, k, abuf, 0);
                gemmRows(abuf, i, mr, n, k, bp, bAt, packedK, packedN, bRow0, bCol0, rowScale, beta, c,
                        cOff + (long) i * ldc, ldc);
                i += mr;
            }
            return;
        }
        final PackBuffer tb = TILE.get();
        final float[] tile = tb.array();
        final int t = tb.alignedStart();
        // A step by step (kernel6i, kernel4i) saves ~250 cycles per block and panel, which matters at short
        // reductions (q · kᵀ, K = Dk); at K = 512 (the projections) it measured no faster, some runs slower
        final boolean stepMajor = k <= STEP_MAJOR_MAX_K;
        if ((long) m * k <= abuf.length) {
            // all of A fits the buffer (q · kᵀ: 64 rows × Dk): panel by panel, so each panel of B comes from L2
            // once and then from L1 for every 6 rows, instead of all of B from L2 for every 6 rows
            for (int i = 0; i < m; ) {
                final int mr = blockRows(m - i);
                copyBlock(aTransposed, a, aOff, lda, i, mr, k, stepMajor, abuf, i * k);
                i += mr;
            }
            for (int j0 = 0, jp = 0; j0 < n; j0 += NR, jp++) {
                final int nb = Math.min(NR, n - j0);
                final int bBase = panelStart(bAt, bCol0, jp, packedK, bRow0);
                for (int i = 0; i < m; ) {
                    final int mr = blockRows(m - i);
                    block(abuf, i * k, k, mr, stepMajor, bp, bBase, tile, t, rowScale, i, beta, c,
                            cOff + (long) i * ldc + j0, ldc, nb);
                    i += mr;
                }
            }
            return;
        }
        // a register block of rows at a time: copied, then times every panel
        for (int i = 0; i < m; ) {
            final int mr = blockRows(m - i);
            copyBlock(aTransposed, a, aOff, lda, i, mr, k, stepMajor, abuf, 0);
            for (int j0 = 0, jp = 0; j0 < n; j0 += NR, jp++) {
                block(abuf, 0, k, mr, stepMajor, bp, panelStart(bAt, bCol0, jp, packedK, bRow0), tile, t, rowScale,
                        i, beta, c, cOff + (long) i * ldc + j0, ldc, Math.min(NR, n - j0));
            }
            i += mr;
        }
    }

    @Override
    public int sliverRows(int packedN, int left) {
        return width(packedN) == NARROW ? Math.min(8, left) : blockRows(left);
    }

    @Override
    public void gemmRows(float[] a, int i, int m, int n, int k, float[] bp, int bAt, int packedK, int packedN,
                         int bRow0, int bCol0, float[] rowScale, float beta, MemorySegment c, long cOff, int ldc) {
        final boolean narrow = width(packedN) == NARROW;
        // When every block stores straight to C (see block), the tile is not touched: then no tile, and so no
        // downcall for its cache-line start (HeapAlignment, ~4 ns per register block of rows: ~0.7 µs of a
        // [1, 1, 128, 64] call, 2% in JFR).
        final boolean direct = !narrow && beta == 0f && n % NR == 0 && (m == 6 || m == 4) && c.isNative();
        final PackBuffer tb = direct ? null : TILE.get();
        final float[] tile = direct ? null : tb.array();
        final int t = direct ? 0 : tb.alignedStart();
        if (narrow) {
            if (m == 8 && smallBlocks) {
                kernel8h(a, 0, k, k, bp, bAt + bRow0 * NARROW, tile, t);
                kernel8h(a, 0, k, k, bp, bAt + bRow0 * NARROW + L, tile, t + L);
            } else if (m == 8) {
                kernel8(a, 0, k, k, bp, bAt + bRow0 * NARROW, tile, t);
            } else {
                for (int r = 0; r < m; r++) {
                    kernel1Narrow(a, r * k, k, bp, bAt + bRow0 * NARROW, tile, t + r * NARROW);
                }
            }
            flush(tile, t, NARROW, m, rowScale, i, beta, c, cOff, ldc, n);
            return;
        }
        for (int j0 = 0, jp = 0; j0 < n; j0 += NR, jp++) {
            block(a, 0, k, m, false, bp, panelStart(bAt, bCol0, jp, packedK, bRow0), tile, t, rowScale, i, beta, c,
                    cOff + j0, ldc, Math.min(NR, n - j0));
        }
    }

    /** Rows of the next register block, {@code left} rows to go: 6s, then one of 4 (64 = 10 · 6 + 4), then 1s. */
    private static int blockRows(int left) {
        return left >= 6 && left != 8 ? 6 : Math.min(4, left);
    }

    /** Index in the packed operand of panel {@code jp} past column {@code bCol0}, at its row {@code bRow0}. */
    private static int panelStart(int bAt, int bCol0, int jp, int packedK, int bRow0) {
        return bAt + (bCol0 / NR + jp) * packedK * NR + bRow0 * NR;
    }

    /**
     * The {@code mr × NR} block of A rows {@code a[a0 + r·k ...]} (with {@code stepMajor}, a block of 6 or 4 rows
     * as {@link #copyBlock} lays it out: {@code a[a0 + p·mr + r]}) times one panel into rows {@code [i, i + mr)}
     * of C ({@code nb} columns from float offset {@code cOff}), as {@link #flush} states. A full panel with
     * {@code beta == 0} (every product of a single-pass call) is stored by the 6- and 4-row kernels from their
     * registers; the others go through {@code tile} and {@link #flush}.
     */
    private void block(float[] a, int a0, int k, int mr, boolean stepMajor, float[] bp, int bBase,
                              float[] tile, int t, float[] rowScale, int i, float beta, MemorySegment c, long cOff,
                              int ldc, int nb) {
        final boolean direct = beta == 0f && nb == NR && c.isNative();
        final MemorySegment to = direct ? c : null;
        final long cAt = cOff * Float.BYTES;
        final long ldcBytes = (long) ldc * Float.BYTES;
        if (smallBlocks && (mr == 6 || mr == 4)) {
            for (int h = 0; h < NR; h += NARROW) {
                long ch = cAt + (long) h * Float.BYTES;
                if (mr == 6 && stepMajor) {
                    kernel6ih(a, a0, k, bp, bBase + h, tile, t + h, to, ch, ldcBytes, rowScale, i);
                } else if (mr == 6) {
                    kernel6h(a, a0, k, k, bp, bBase + h, tile, t + h, to, ch, ldcBytes, rowScale, i);
                } else if (stepMajor) {
                    kernel4ih(a, a0, k, bp, bBase + h, tile, t + h, to, ch, ldcBytes, rowScale, i);
                } else {
                    kernel4h(a, a0, k, k, bp, bBase + h, tile, t + h, to, ch, ldcBytes, rowScale, i);
                }
            }
        } else if (mr == 6 && stepMajor) {
            kernel6i(a, a0, k, bp, bBase, tile, t, to, cAt, ldcBytes, rowScale, i);
        } else if (mr == 6) {
            kernel6(a, a0, k, k, bp, bBase, tile, t, to, cAt, ldcBytes, rowScale, i);
        } else if (mr == 4 && stepMajor) {
            kernel4i(a, a0, k, bp, bBase, tile, t, to, cAt, ldcBytes, rowScale, i);
        } else if (mr == 4) {
            kernel4(a, a0, k, k, bp, bBase, tile, t, to, cAt, ldcBytes, rowScale, i);
        } else {
            for (int r = 0; r < mr; r++) {
                kernel1(a, a0 + r * k, k, bp, bBase, tile, t + r * NR);
            }
        }
        if (!direct || (mr != 6 && mr != 4)) {
            flush(tile, t, NR, mr, rowScale, i, beta, c, cOff, ldc, nb);
        }
    }

    /** Rows {@code [i, i + mr)} of {@code op(A)} into {@code dst} row-major {@code [mr, k]} from {@code d0}. */
    private static void copyRows(boolean aTransposed, MemorySegment a, long aOff, int lda, int i, int mr, int k,
                                 float[] dst, int d0) {
        if (k == 0) {
            // empty rows (Dk = 0): nothing to copy, and their offsets may lie past the segment
            return;
        }
        if (!aTransposed) {
            for (int r = 0; r < mr; r++) {
                MemorySegment.copy(a, F, (aOff + (long) (i + r) * lda) * Float.BYTES, dst, d0 + r * k, k);
            }
        } else {
            gather(a, aOff + i, 1, lda, mr, 0, k, dst, d0, k, 1);
        }
    }

    /**
     * {@code dst[d0 + r·dr + p·dp] = a[src + r·sr + p·sp]} (float offsets) for {@code r < mr} and
     * {@code p0 <= p < k}, step by step: the scalar copies of A, where no bulk or vector copy fits the layout.
     */
    private static void gather(MemorySegment a, long src, long sr, long sp, int mr, int p0, int k, float[] dst,
                               int d0, int dr, int dp) {
        for (int p = p0; p < k; p++) {
            for (int r = 0; r < mr; r++) {
                dst[d0 + r * dr + p * dp] = a.getAtIndex(F, src + r * sr + p * sp);
            }
        }
    }

    /**
     * Rows {@code [i, i + mr)} of {@code op(A)} into {@code dst} from {@code d0}, as {@link #block} reads them:
     * with {@code stepMajor} a block of 6 or 4 rows step by step ({@code dst[d0 + p·mr + r]}), else row-major.
     */
    private static void copyBlock(boolean aTransposed, MemorySegment a, long aOff, int lda, int i, int mr, int k,
                                  boolean stepMajor, float[] dst, int d0) {
        if (!stepMajor || (mr != 6 && mr != 4)) {
            copyRows(aTransposed, a, aOff, lda, i, mr, k, dst, d0);
        } else if (!aTransposed) {
            copyStepMajor(a, aOff + (long) i * lda, lda, mr, k, dst, d0);
        } else {
            // A stored [k, m]: each step's mr values lie side by side
            gather(a, aOff + i, 1, lda, mr, 0, k, dst, d0, 1, mr);
        }
    }

    /** The longest reduction for which {@link #gemm} copies A step by step (see there). */
    private static final int STEP_MAJOR_MAX_K = 128;

    /**
     * Lane selections of {@link #copyStepMajor}, per output vector {@code j} of a block of {@code L} steps: lane
     * {@code l} is step {@code p = e / mr} of row {@code r = e % mr}, {@code e = j·L + l}. {@code STEP_IX} picks
     * lane {@code p} of the first or second row of a pair ({@code p + L·(r % 2)}); {@code STEP_PAIR1} and
     * {@code STEP_PAIR2} mark the lanes whose row is in the second pair (rows 2, 3) and the third (rows 4, 5).
     */
    private static final float[] STEP_IX6 = stepIndex(6);
    private static final float[] STEP_IX4 = stepIndex(4);
    private static final long[] STEP_PAIR1_6 = stepPair(6, 1);
    private static final long[] STEP_PAIR2_6 = stepPair(6, 2);
    private static final long[] STEP_PAIR1_4 = stepPair(4, 1);

    private static float[] stepIndex(int mr) {
        float[] ix = new float[mr * L];
        for (int e = 0; e < ix.length; e++) {
            ix[e] = e / mr + L * (e % mr % 2);
        }
        return ix;
    }

    private static long[] stepPair(int mr, int pair) {
        long[] m = new long[mr];
        for (int e = 0; e < mr * L; e++) {
            if (e % mr / 2 == pair) {
                m[e / L] |= 1L << (e % L);
            }
        }
        return m;
    }

    /**
     * {@code dst[d0 + p·mr + r] = A[r][p]} for the {@code mr} (6 or 4) rows of {@code k} floats at float offset
     * {@code row0 + r·lda}: {@code L} steps at a time, the rows' vectors merged by two-source lane selections (one
     * per pair of rows) and blends, a few vector operations per output vector (three selections and two blends for
     * 6 rows) rather than a scalar load and store per float (which took a third of q · kᵀ's time at
     * [1, 1, 128, 64]); the steps past the last whole vector go through {@link #gather}.
     */
    private static void copyStepMajor(MemorySegment a, long row0, int lda, int mr, int k, float[] dst, int d0) {
        final long ldaBytes = (long) lda * Float.BYTES;
        int p = 0;
        for (; p + L <= k; p += L) {
            final long o = (row0 + p) * Float.BYTES;
            final int d = d0 + p * mr;
            FloatVector x0 = FloatVector.fromMemorySegment(SP, a, o, O);
            FloatVector x1 = FloatVector.fromMemorySegment(SP, a, o + ldaBytes, O);
            FloatVector x2 = FloatVector.fromMemorySegment(SP, a, o + 2 * ldaBytes, O);
            FloatVector x3 = FloatVector.fromMemorySegment(SP, a, o + 3 * ldaBytes, O);
            if (mr == 6) {
                FloatVector x4 = FloatVector.fromMemorySegment(SP, a, o + 4 * ldaBytes, O);
                FloatVector x5 = FloatVector.fromMemorySegment(SP, a, o + 5 * ldaBytes, O);
                for (int j = 0; j < 6; j++) {
                    FloatVector ix = FloatVector.fromArray(SP, STEP_IX6, j * L);
                    ix.selectFrom(x0, x1)
                            .blend(ix.selectFrom(x2, x3), VectorMask.fromLong(SP, STEP_PAIR1_6[j]))
                            .blend(ix.selectFrom(x4, x5), VectorMask.fromLong(SP, STEP_PAIR2_6[j]))
                            .intoArray(dst, d + j * L);
                }
            } else {
                for (int j = 0; j < 4; j++) {
                    FloatVector ix = FloatVector.fromArray(SP, STEP_IX4, j * L);
                    ix.selectFrom(x0, x1)
                            .blend(ix.selectFrom(x2, x3), VectorMask.fromLong(SP, STEP_PAIR1_4[j]))
                            .intoArray(dst, d + j * L);
                }
            }
        }
        gather(a, row0, lda, 1, mr, p, k, dst, d0, 1, mr);
    }

    /**
     * The 6 × 4-vector block of {@code A · B} into {@code tile [6, NR]}: 24 accumulators, 4 panel loads and 6
     * broadcasts per 24 FMAs (29 of the 32 vector registers). Its accumulators go to an array, not to a store
     * helper: passing vectors to a method C2 does not inline (node count cutoff) boxes every one of them.
     */
    private static void kernel6(float[] a, int a0, int lda, int k, float[] bp, int bBase, float[] tile, int t,
                                MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        final int a1 = a0 + lda;
        final int a2 = a1 + lda;
        final int a3 = a2 + lda;
        final int a4 = a3 + lda;
        final int a5 = a4 + lda;
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c02 = c00;
        FloatVector c03 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c12 = c00;
        FloatVector c13 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c22 = c00;
        FloatVector c23 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        FloatVector c32 = c00;
        FloatVector c33 = c00;
        FloatVector c40 = c00;
        FloatVector c41 = c00;
        FloatVector c42 = c00;
        FloatVector c43 = c00;
        FloatVector c50 = c00;
        FloatVector c51 = c00;
        FloatVector c52 = c00;
        FloatVector c53 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector b2 = FloatVector.fromArray(SP, bp, bo + 2 * L);
            FloatVector b3 = FloatVector.fromArray(SP, bp, bo + 3 * L);
            FloatVector x = FloatVector.broadcast(SP, a[a0 + p]);
            c00 = x.fma(b0, c00);
            c01 = x.fma(b1, c01);
            c02 = x.fma(b2, c02);
            c03 = x.fma(b3, c03);
            x = FloatVector.broadcast(SP, a[a1 + p]);
            c10 = x.fma(b0, c10);
            c11 = x.fma(b1, c11);
            c12 = x.fma(b2, c12);
            c13 = x.fma(b3, c13);
            x = FloatVector.broadcast(SP, a[a2 + p]);
            c20 = x.fma(b0, c20);
            c21 = x.fma(b1, c21);
            c22 = x.fma(b2, c22);
            c23 = x.fma(b3, c23);
            x = FloatVector.broadcast(SP, a[a3 + p]);
            c30 = x.fma(b0, c30);
            c31 = x.fma(b1, c31);
            c32 = x.fma(b2, c32);
            c33 = x.fma(b3, c33);
            x = FloatVector.broadcast(SP, a[a4 + p]);
            c40 = x.fma(b0, c40);
            c41 = x.fma(b1, c41);
            c42 = x.fma(b2, c42);
            c43 = x.fma(b3, c43);
            x = FloatVector.broadcast(SP, a[a5 + p]);
            c50 = x.fma(b0, c50);
            c51 = x.fma(b1, c51);
            c52 = x.fma(b2, c52);
            c53 = x.fma(b3, c53);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c02.intoArray(tile, t + 2 * L);
            c03.intoArray(tile, t + 3 * L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c12.intoArray(tile, t + NR + 2 * L);
            c13.intoArray(tile, t + NR + 3 * L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c22.intoArray(tile, t + 2 * NR + 2 * L);
            c23.intoArray(tile, t + 2 * NR + 3 * L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            c32.intoArray(tile, t + 3 * NR + 2 * L);
            c33.intoArray(tile, t + 3 * NR + 3 * L);
            c40.intoArray(tile, t + 4 * NR);
            c41.intoArray(tile, t + 4 * NR + L);
            c42.intoArray(tile, t + 4 * NR + 2 * L);
            c43.intoArray(tile, t + 4 * NR + 3 * L);
            c50.intoArray(tile, t + 5 * NR);
            c51.intoArray(tile, t + 5 * NR + L);
            c52.intoArray(tile, t + 5 * NR + 2 * L);
            c53.intoArray(tile, t + 5 * NR + 3 * L);
            return;
        }
        // straight to C (beta = 0, a full panel): no round trip through the tile
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        c02.mul(s0).intoMemorySegment(c, o0 + 2 * VB, O);
        c03.mul(s0).intoMemorySegment(c, o0 + 3 * VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        c12.mul(s1).intoMemorySegment(c, o1 + 2 * VB, O);
        c13.mul(s1).intoMemorySegment(c, o1 + 3 * VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        c22.mul(s2).intoMemorySegment(c, o2 + 2 * VB, O);
        c23.mul(s2).intoMemorySegment(c, o2 + 3 * VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
        c32.mul(s3).intoMemorySegment(c, o3 + 2 * VB, O);
        c33.mul(s3).intoMemorySegment(c, o3 + 3 * VB, O);
        float s4 = rowScale == null ? 1f : rowScale[i + 4];
        long o4 = cAt + 4 * ldcBytes;
        c40.mul(s4).intoMemorySegment(c, o4, O);
        c41.mul(s4).intoMemorySegment(c, o4 + VB, O);
        c42.mul(s4).intoMemorySegment(c, o4 + 2 * VB, O);
        c43.mul(s4).intoMemorySegment(c, o4 + 3 * VB, O);
        float s5 = rowScale == null ? 1f : rowScale[i + 5];
        long o5 = cAt + 5 * ldcBytes;
        c50.mul(s5).intoMemorySegment(c, o5, O);
        c51.mul(s5).intoMemorySegment(c, o5 + VB, O);
        c52.mul(s5).intoMemorySegment(c, o5 + 2 * VB, O);
        c53.mul(s5).intoMemorySegment(c, o5 + 3 * VB, O);
    }

    /** The 4 × 4-vector block (the rows a block of 6 leaves over), as {@link #kernel6}. */
    private static void kernel4(float[] a, int a0, int lda, int k, float[] bp, int bBase, float[] tile, int t,
                                MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        final int a1 = a0 + lda;
        final int a2 = a1 + lda;
        final int a3 = a2 + lda;
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c02 = c00;
        FloatVector c03 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c12 = c00;
        FloatVector c13 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c22 = c00;
        FloatVector c23 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        FloatVector c32 = c00;
        FloatVector c33 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector b2 = FloatVector.fromArray(SP, bp, bo + 2 * L);
            FloatVector b3 = FloatVector.fromArray(SP, bp, bo + 3 * L);
            FloatVector x = FloatVector.broadcast(SP, a[a0 + p]);
            c00 = x.fma(b0, c00);
            c01 = x.fma(b1, c01);
            c02 = x.fma(b2, c02);
            c03 = x.fma(b3, c03);
            x = FloatVector.broadcast(SP, a[a1 + p]);
            c10 = x.fma(b0, c10);
            c11 = x.fma(b1, c11);
            c12 = x.fma(b2, c12);
            c13 = x.fma(b3, c13);
            x = FloatVector.broadcast(SP, a[a2 + p]);
            c20 = x.fma(b0, c20);
            c21 = x.fma(b1, c21);
            c22 = x.fma(b2, c22);
            c23 = x.fma(b3, c23);
            x = FloatVector.broadcast(SP, a[a3 + p]);
            c30 = x.fma(b0, c30);
            c31 = x.fma(b1, c31);
            c32 = x.fma(b2, c32);
            c33 = x.fma(b3, c33);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c02.intoArray(tile, t + 2 * L);
            c03.intoArray(tile, t + 3 * L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c12.intoArray(tile, t + NR + 2 * L);
            c13.intoArray(tile, t + NR + 3 * L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c22.intoArray(tile, t + 2 * NR + 2 * L);
            c23.intoArray(tile, t + 2 * NR + 3 * L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            c32.intoArray(tile, t + 3 * NR + 2 * L);
            c33.intoArray(tile, t + 3 * NR + 3 * L);
            return;
        }
        // straight to C (beta = 0, a full panel): no round trip through the tile
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        c02.mul(s0).intoMemorySegment(c, o0 + 2 * VB, O);
        c03.mul(s0).intoMemorySegment(c, o0 + 3 * VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        c12.mul(s1).intoMemorySegment(c, o1 + 2 * VB, O);
        c13.mul(s1).intoMemorySegment(c, o1 + 3 * VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        c22.mul(s2).intoMemorySegment(c, o2 + 2 * VB, O);
        c23.mul(s2).intoMemorySegment(c, o2 + 3 * VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
        c32.mul(s3).intoMemorySegment(c, o3 + 2 * VB, O);
        c33.mul(s3).intoMemorySegment(c, o3 + 3 * VB, O);
    }

    /**
     * {@link #kernel6} over A packed step by step: {@code a[a0 + p·6 + r]} is row {@code r}, step {@code p}.
     * The 6 broadcasts then share one index with constant offsets; the 6 row indices of the row-major form
     * leave C2 one general register short in the loop (it parks one in a vector register, two extra
     * vector-port moves per step), which cost q · kᵀ a sixth of its speed at Dk = 64. The body repeats
     * {@link #kernel6}'s on purpose: one method holding both loops ran both at the slow speed (measured), and a
     * store step shared as a method would box the 24 accumulators.
     */
    private static void kernel6i(float[] a, int a0, int k, float[] bp, int bBase, float[] tile, int t,
                                 MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c02 = c00;
        FloatVector c03 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c12 = c00;
        FloatVector c13 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c22 = c00;
        FloatVector c23 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        FloatVector c32 = c00;
        FloatVector c33 = c00;
        FloatVector c40 = c00;
        FloatVector c41 = c00;
        FloatVector c42 = c00;
        FloatVector c43 = c00;
        FloatVector c50 = c00;
        FloatVector c51 = c00;
        FloatVector c52 = c00;
        FloatVector c53 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            final int ao = a0 + p * 6;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector b2 = FloatVector.fromArray(SP, bp, bo + 2 * L);
            FloatVector b3 = FloatVector.fromArray(SP, bp, bo + 3 * L);
            FloatVector x = FloatVector.broadcast(SP, a[ao]);
            c00 = x.fma(b0, c00);
            c01 = x.fma(b1, c01);
            c02 = x.fma(b2, c02);
            c03 = x.fma(b3, c03);
            x = FloatVector.broadcast(SP, a[ao + 1]);
            c10 = x.fma(b0, c10);
            c11 = x.fma(b1, c11);
            c12 = x.fma(b2, c12);
            c13 = x.fma(b3, c13);
            x = FloatVector.broadcast(SP, a[ao + 2]);
            c20 = x.fma(b0, c20);
            c21 = x.fma(b1, c21);
            c22 = x.fma(b2, c22);
            c23 = x.fma(b3, c23);
            x = FloatVector.broadcast(SP, a[ao + 3]);
            c30 = x.fma(b0, c30);
            c31 = x.fma(b1, c31);
            c32 = x.fma(b2, c32);
            c33 = x.fma(b3, c33);
            x = FloatVector.broadcast(SP, a[ao + 4]);
            c40 = x.fma(b0, c40);
            c41 = x.fma(b1, c41);
            c42 = x.fma(b2, c42);
            c43 = x.fma(b3, c43);
            x = FloatVector.broadcast(SP, a[ao + 5]);
            c50 = x.fma(b0, c50);
            c51 = x.fma(b1, c51);
            c52 = x.fma(b2, c52);
            c53 = x.fma(b3, c53);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c02.intoArray(tile, t + 2 * L);
            c03.intoArray(tile, t + 3 * L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c12.intoArray(tile, t + NR + 2 * L);
            c13.intoArray(tile, t + NR + 3 * L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c22.intoArray(tile, t + 2 * NR + 2 * L);
            c23.intoArray(tile, t + 2 * NR + 3 * L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            c32.intoArray(tile, t + 3 * NR + 2 * L);
            c33.intoArray(tile, t + 3 * NR + 3 * L);
            c40.intoArray(tile, t + 4 * NR);
            c41.intoArray(tile, t + 4 * NR + L);
            c42.intoArray(tile, t + 4 * NR + 2 * L);
            c43.intoArray(tile, t + 4 * NR + 3 * L);
            c50.intoArray(tile, t + 5 * NR);
            c51.intoArray(tile, t + 5 * NR + L);
            c52.intoArray(tile, t + 5 * NR + 2 * L);
            c53.intoArray(tile, t + 5 * NR + 3 * L);
            return;
        }
        // straight to C (beta = 0, a full panel): no round trip through the tile
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        c02.mul(s0).intoMemorySegment(c, o0 + 2 * VB, O);
        c03.mul(s0).intoMemorySegment(c, o0 + 3 * VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        c12.mul(s1).intoMemorySegment(c, o1 + 2 * VB, O);
        c13.mul(s1).intoMemorySegment(c, o1 + 3 * VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        c22.mul(s2).intoMemorySegment(c, o2 + 2 * VB, O);
        c23.mul(s2).intoMemorySegment(c, o2 + 3 * VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
        c32.mul(s3).intoMemorySegment(c, o3 + 2 * VB, O);
        c33.mul(s3).intoMemorySegment(c, o3 + 3 * VB, O);
        float s4 = rowScale == null ? 1f : rowScale[i + 4];
        long o4 = cAt + 4 * ldcBytes;
        c40.mul(s4).intoMemorySegment(c, o4, O);
        c41.mul(s4).intoMemorySegment(c, o4 + VB, O);
        c42.mul(s4).intoMemorySegment(c, o4 + 2 * VB, O);
        c43.mul(s4).intoMemorySegment(c, o4 + 3 * VB, O);
        float s5 = rowScale == null ? 1f : rowScale[i + 5];
        long o5 = cAt + 5 * ldcBytes;
        c50.mul(s5).intoMemorySegment(c, o5, O);
        c51.mul(s5).intoMemorySegment(c, o5 + VB, O);
        c52.mul(s5).intoMemorySegment(c, o5 + 2 * VB, O);
        c53.mul(s5).intoMemorySegment(c, o5 + 3 * VB, O);
    }

    /**
     * {@link #kernel4} over A packed step by step ({@code a[a0 + p·4 + r]}), for the 4 rows a step-major copy
     * leaves after its blocks of 6 ({@link #kernel6i}).
     */
    private static void kernel4i(float[] a, int a0, int k, float[] bp, int bBase, float[] tile, int t,
                                 MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c02 = c00;
        FloatVector c03 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c12 = c00;
        FloatVector c13 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c22 = c00;
        FloatVector c23 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        FloatVector c32 = c00;
        FloatVector c33 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            final int ao = a0 + p * 4;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector b2 = FloatVector.fromArray(SP, bp, bo + 2 * L);
            FloatVector b3 = FloatVector.fromArray(SP, bp, bo + 3 * L);
            FloatVector x = FloatVector.broadcast(SP, a[ao]);
            c00 = x.fma(b0, c00);
            c01 = x.fma(b1, c01);
            c02 = x.fma(b2, c02);
            c03 = x.fma(b3, c03);
            x = FloatVector.broadcast(SP, a[ao + 1]);
            c10 = x.fma(b0, c10);
            c11 = x.fma(b1, c11);
            c12 = x.fma(b2, c12);
            c13 = x.fma(b3, c13);
            x = FloatVector.broadcast(SP, a[ao + 2]);
            c20 = x.fma(b0, c20);
            c21 = x.fma(b1, c21);
            c22 = x.fma(b2, c22);
            c23 = x.fma(b3, c23);
            x = FloatVector.broadcast(SP, a[ao + 3]);
            c30 = x.fma(b0, c30);
            c31 = x.fma(b1, c31);
            c32 = x.fma(b2, c32);
            c33 = x.fma(b3, c33);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c02.intoArray(tile, t + 2 * L);
            c03.intoArray(tile, t + 3 * L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c12.intoArray(tile, t + NR + 2 * L);
            c13.intoArray(tile, t + NR + 3 * L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c22.intoArray(tile, t + 2 * NR + 2 * L);
            c23.intoArray(tile, t + 2 * NR + 3 * L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            c32.intoArray(tile, t + 3 * NR + 2 * L);
            c33.intoArray(tile, t + 3 * NR + 3 * L);
            return;
        }
        // straight to C (beta = 0, a full panel): no round trip through the tile
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        c02.mul(s0).intoMemorySegment(c, o0 + 2 * VB, O);
        c03.mul(s0).intoMemorySegment(c, o0 + 3 * VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        c12.mul(s1).intoMemorySegment(c, o1 + 2 * VB, O);
        c13.mul(s1).intoMemorySegment(c, o1 + 3 * VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        c22.mul(s2).intoMemorySegment(c, o2 + 2 * VB, O);
        c23.mul(s2).intoMemorySegment(c, o2 + 3 * VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
        c32.mul(s3).intoMemorySegment(c, o3 + 2 * VB, O);
        c33.mul(s3).intoMemorySegment(c, o3 + 3 * VB, O);
    }

    /**
     * {@link #kernel6} on two of the panel's four vectors, for {@link #smallBlocks}: {@code bBase}, {@code t} and
     * {@code cAt} point at the half (the panel's and the tile's rows stay {@code NR} floats apart); 12
     * accumulators, 2 panel loads and 6 broadcasts per 12 FMAs. The halves kernels below are written out alike.
     */
    private static void kernel6h(float[] a, int a0, int lda, int k, float[] bp, int bBase, float[] tile, int t,
                                 MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        final int a1 = a0 + lda;
        final int a2 = a1 + lda;
        final int a3 = a2 + lda;
        final int a4 = a3 + lda;
        final int a5 = a4 + lda;
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        FloatVector c40 = c00;
        FloatVector c41 = c00;
        FloatVector c50 = c00;
        FloatVector c51 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector x0 = FloatVector.broadcast(SP, a[a0 + p]);
            c00 = x0.fma(b0, c00);
            c01 = x0.fma(b1, c01);
            FloatVector x1 = FloatVector.broadcast(SP, a[a1 + p]);
            c10 = x1.fma(b0, c10);
            c11 = x1.fma(b1, c11);
            FloatVector x2 = FloatVector.broadcast(SP, a[a2 + p]);
            c20 = x2.fma(b0, c20);
            c21 = x2.fma(b1, c21);
            FloatVector x3 = FloatVector.broadcast(SP, a[a3 + p]);
            c30 = x3.fma(b0, c30);
            c31 = x3.fma(b1, c31);
            FloatVector x4 = FloatVector.broadcast(SP, a[a4 + p]);
            c40 = x4.fma(b0, c40);
            c41 = x4.fma(b1, c41);
            FloatVector x5 = FloatVector.broadcast(SP, a[a5 + p]);
            c50 = x5.fma(b0, c50);
            c51 = x5.fma(b1, c51);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            c40.intoArray(tile, t + 4 * NR);
            c41.intoArray(tile, t + 4 * NR + L);
            c50.intoArray(tile, t + 5 * NR);
            c51.intoArray(tile, t + 5 * NR + L);
            return;
        }
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
        float s4 = rowScale == null ? 1f : rowScale[i + 4];
        long o4 = cAt + 4 * ldcBytes;
        c40.mul(s4).intoMemorySegment(c, o4, O);
        c41.mul(s4).intoMemorySegment(c, o4 + VB, O);
        float s5 = rowScale == null ? 1f : rowScale[i + 5];
        long o5 = cAt + 5 * ldcBytes;
        c50.mul(s5).intoMemorySegment(c, o5, O);
        c51.mul(s5).intoMemorySegment(c, o5 + VB, O);
    }

    /** {@link #kernel6i} on half a panel, as {@link #kernel6h}. */
    private static void kernel6ih(float[] a, int a0, int k, float[] bp, int bBase, float[] tile, int t,
                                 MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        FloatVector c40 = c00;
        FloatVector c41 = c00;
        FloatVector c50 = c00;
        FloatVector c51 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            final int ao = a0 + p * 6;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector x0 = FloatVector.broadcast(SP, a[ao]);
            c00 = x0.fma(b0, c00);
            c01 = x0.fma(b1, c01);
            FloatVector x1 = FloatVector.broadcast(SP, a[ao + 1]);
            c10 = x1.fma(b0, c10);
            c11 = x1.fma(b1, c11);
            FloatVector x2 = FloatVector.broadcast(SP, a[ao + 2]);
            c20 = x2.fma(b0, c20);
            c21 = x2.fma(b1, c21);
            FloatVector x3 = FloatVector.broadcast(SP, a[ao + 3]);
            c30 = x3.fma(b0, c30);
            c31 = x3.fma(b1, c31);
            FloatVector x4 = FloatVector.broadcast(SP, a[ao + 4]);
            c40 = x4.fma(b0, c40);
            c41 = x4.fma(b1, c41);
            FloatVector x5 = FloatVector.broadcast(SP, a[ao + 5]);
            c50 = x5.fma(b0, c50);
            c51 = x5.fma(b1, c51);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            c40.intoArray(tile, t + 4 * NR);
            c41.intoArray(tile, t + 4 * NR + L);
            c50.intoArray(tile, t + 5 * NR);
            c51.intoArray(tile, t + 5 * NR + L);
            return;
        }
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
        float s4 = rowScale == null ? 1f : rowScale[i + 4];
        long o4 = cAt + 4 * ldcBytes;
        c40.mul(s4).intoMemorySegment(c, o4, O);
        c41.mul(s4).intoMemorySegment(c, o4 + VB, O);
        float s5 = rowScale == null ? 1f : rowScale[i + 5];
        long o5 = cAt + 5 * ldcBytes;
        c50.mul(s5).intoMemorySegment(c, o5, O);
        c51.mul(s5).intoMemorySegment(c, o5 + VB, O);
    }

    /** {@link #kernel4} on half a panel, as {@link #kernel6h}. */
    private static void kernel4h(float[] a, int a0, int lda, int k, float[] bp, int bBase, float[] tile, int t,
                                 MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        final int a1 = a0 + lda;
        final int a2 = a1 + lda;
        final int a3 = a2 + lda;
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector x0 = FloatVector.broadcast(SP, a[a0 + p]);
            c00 = x0.fma(b0, c00);
            c01 = x0.fma(b1, c01);
            FloatVector x1 = FloatVector.broadcast(SP, a[a1 + p]);
            c10 = x1.fma(b0, c10);
            c11 = x1.fma(b1, c11);
            FloatVector x2 = FloatVector.broadcast(SP, a[a2 + p]);
            c20 = x2.fma(b0, c20);
            c21 = x2.fma(b1, c21);
            FloatVector x3 = FloatVector.broadcast(SP, a[a3 + p]);
            c30 = x3.fma(b0, c30);
            c31 = x3.fma(b1, c31);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            return;
        }
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
    }

    /** {@link #kernel4i} on half a panel, as {@link #kernel6h}. */
    private static void kernel4ih(float[] a, int a0, int k, float[] bp, int bBase, float[] tile, int t,
                                 MemorySegment c, long cAt, long ldcBytes, float[] rowScale, int i) {
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            final int ao = a0 + p * 4;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector x0 = FloatVector.broadcast(SP, a[ao]);
            c00 = x0.fma(b0, c00);
            c01 = x0.fma(b1, c01);
            FloatVector x1 = FloatVector.broadcast(SP, a[ao + 1]);
            c10 = x1.fma(b0, c10);
            c11 = x1.fma(b1, c11);
            FloatVector x2 = FloatVector.broadcast(SP, a[ao + 2]);
            c20 = x2.fma(b0, c20);
            c21 = x2.fma(b1, c21);
            FloatVector x3 = FloatVector.broadcast(SP, a[ao + 3]);
            c30 = x3.fma(b0, c30);
            c31 = x3.fma(b1, c31);
        }
        if (c == null) {
            c00.intoArray(tile, t);
            c01.intoArray(tile, t + L);
            c10.intoArray(tile, t + NR);
            c11.intoArray(tile, t + NR + L);
            c20.intoArray(tile, t + 2 * NR);
            c21.intoArray(tile, t + 2 * NR + L);
            c30.intoArray(tile, t + 3 * NR);
            c31.intoArray(tile, t + 3 * NR + L);
            return;
        }
        float s0 = rowScale == null ? 1f : rowScale[i];
        long o0 = cAt;
        c00.mul(s0).intoMemorySegment(c, o0, O);
        c01.mul(s0).intoMemorySegment(c, o0 + VB, O);
        float s1 = rowScale == null ? 1f : rowScale[i + 1];
        long o1 = cAt + ldcBytes;
        c10.mul(s1).intoMemorySegment(c, o1, O);
        c11.mul(s1).intoMemorySegment(c, o1 + VB, O);
        float s2 = rowScale == null ? 1f : rowScale[i + 2];
        long o2 = cAt + 2 * ldcBytes;
        c20.mul(s2).intoMemorySegment(c, o2, O);
        c21.mul(s2).intoMemorySegment(c, o2 + VB, O);
        float s3 = rowScale == null ? 1f : rowScale[i + 3];
        long o3 = cAt + 3 * ldcBytes;
        c30.mul(s3).intoMemorySegment(c, o3, O);
        c31.mul(s3).intoMemorySegment(c, o3 + VB, O);
    }


    private static void kernel1(float[] a, int a0, int k, float[] bp, int bBase, float[] tile, int at) {
        FloatVector c0 = FloatVector.zero(SP);
        FloatVector c1 = c0;
        FloatVector c2 = c0;
        FloatVector c3 = c0;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NR;
            FloatVector x = FloatVector.broadcast(SP, a[a0 + p]);
            c0 = x.fma(FloatVector.fromArray(SP, bp, bo), c0);
            c1 = x.fma(FloatVector.fromArray(SP, bp, bo + L), c1);
            c2 = x.fma(FloatVector.fromArray(SP, bp, bo + 2 * L), c2);
            c3 = x.fma(FloatVector.fromArray(SP, bp, bo + 3 * L), c3);
        }
        c0.intoArray(tile, at);
        c1.intoArray(tile, at + L);
        c2.intoArray(tile, at + 2 * L);
        c3.intoArray(tile, at + 3 * L);
    }

    /**
     * The 8 × 2-vector block of {@code A · B} into {@code tile [8, NARROW]}, for narrow panels. Its accumulators go to an array, not to
     * a store helper: passing vectors to a method C2 does not inline (node count cutoff) boxes every one of them.
     */
    private static void kernel8(float[] a, int a0, int lda, int k, float[] bp, int bBase, float[] tile, int t) {
        final int a1 = a0 + lda;
        final int a2 = a1 + lda;
        final int a3 = a2 + lda;
        final int a4 = a3 + lda;
        final int a5 = a4 + lda;
        final int a6 = a5 + lda;
        final int a7 = a6 + lda;
        FloatVector c00 = FloatVector.zero(SP);
        FloatVector c01 = c00;
        FloatVector c10 = c00;
        FloatVector c11 = c00;
        FloatVector c20 = c00;
        FloatVector c21 = c00;
        FloatVector c30 = c00;
        FloatVector c31 = c00;
        FloatVector c40 = c00;
        FloatVector c41 = c00;
        FloatVector c50 = c00;
        FloatVector c51 = c00;
        FloatVector c60 = c00;
        FloatVector c61 = c00;
        FloatVector c70 = c00;
        FloatVector c71 = c00;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NARROW;
            FloatVector b0 = FloatVector.fromArray(SP, bp, bo);
            FloatVector b1 = FloatVector.fromArray(SP, bp, bo + L);
            FloatVector x = FloatVector.broadcast(SP, a[a0 + p]);
            c00 = x.fma(b0, c00);
            c01 = x.fma(b1, c01);
            x = FloatVector.broadcast(SP, a[a1 + p]);
            c10 = x.fma(b0, c10);
            c11 = x.fma(b1, c11);
            x = FloatVector.broadcast(SP, a[a2 + p]);
            c20 = x.fma(b0, c20);
            c21 = x.fma(b1, c21);
            x = FloatVector.broadcast(SP, a[a3 + p]);
            c30 = x.fma(b0, c30);
            c31 = x.fma(b1, c31);
            x = FloatVector.broadcast(SP, a[a4 + p]);
            c40 = x.fma(b0, c40);
            c41 = x.fma(b1, c41);
            x = FloatVector.broadcast(SP, a[a5 + p]);
            c50 = x.fma(b0, c50);
            c51 = x.fma(b1, c51);
            x = FloatVector.broadcast(SP, a[a6 + p]);
            c60 = x.fma(b0, c60);
            c61 = x.fma(b1, c61);
            x = FloatVector.broadcast(SP, a[a7 + p]);
            c70 = x.fma(b0, c70);
            c71 = x.fma(b1, c71);
        }
        c00.intoArray(tile, t + 0);
        c01.intoArray(tile, t + L);
        c10.intoArray(tile, t + NARROW);
        c11.intoArray(tile, t + NARROW + L);
        c20.intoArray(tile, t + 2 * NARROW);
        c21.intoArray(tile, t + 2 * NARROW + L);
        c30.intoArray(tile, t + 3 * NARROW);
        c31.intoArray(tile, t + 3 * NARROW + L);
        c40.intoArray(tile, t + 4 * NARROW);
        c41.intoArray(tile, t + 4 * NARROW + L);
        c50.intoArray(tile, t + 5 * NARROW);
        c51.intoArray(tile, t + 5 * NARROW + L);
        c60.intoArray(tile, t + 6 * NARROW);
        c61.intoArray(tile, t + 6 * NARROW + L);
        c70.intoArray(tile, t + 7 * NARROW);
        c71.intoArray(tile, t + 7 * NARROW + L);
    }

    /**
     * Half of {@link #kernel8} for {@link #smallBlocks}: the 8 rows times one vector of a narrow panel (from
     * {@code bBase}, rows {@code NARROW} apart) into {@code tile [8, NARROW]} from {@code t}; 8 accumulators.
     */
    private static void kernel8h(float[] a, int a0, int lda, int k, float[] bp, int bBase, float[] tile, int t) {
        final int a1 = a0 + lda;
        final int a2 = a1 + lda;
        final int a3 = a2 + lda;
        final int a4 = a3 + lda;
        final int a5 = a4 + lda;
        final int a6 = a5 + lda;
        final int a7 = a6 + lda;
        FloatVector c0 = FloatVector.zero(SP);
        FloatVector c1 = c0;
        FloatVector c2 = c0;
        FloatVector c3 = c0;
        FloatVector c4 = c0;
        FloatVector c5 = c0;
        FloatVector c6 = c0;
        FloatVector c7 = c0;
        for (int p = 0; p < k; p++) {
            FloatVector b = FloatVector.fromArray(SP, bp, bBase + p * NARROW);
            c0 = FloatVector.broadcast(SP, a[a0 + p]).fma(b, c0);
            c1 = FloatVector.broadcast(SP, a[a1 + p]).fma(b, c1);
            c2 = FloatVector.broadcast(SP, a[a2 + p]).fma(b, c2);
            c3 = FloatVector.broadcast(SP, a[a3 + p]).fma(b, c3);
            c4 = FloatVector.broadcast(SP, a[a4 + p]).fma(b, c4);
            c5 = FloatVector.broadcast(SP, a[a5 + p]).fma(b, c5);
            c6 = FloatVector.broadcast(SP, a[a6 + p]).fma(b, c6);
            c7 = FloatVector.broadcast(SP, a[a7 + p]).fma(b, c7);
        }
        c0.intoArray(tile, t);
        c1.intoArray(tile, t + NARROW);
        c2.intoArray(tile, t + 2 * NARROW);
        c3.intoArray(tile, t + 3 * NARROW);
        c4.intoArray(tile, t + 4 * NARROW);
        c5.intoArray(tile, t + 5 * NARROW);
        c6.intoArray(tile, t + 6 * NARROW);
        c7.intoArray(tile, t + 7 * NARROW);
    }


    private static void kernel1Narrow(float[] a, int a0, int k, float[] bp, int bBase, float[] tile, int at) {
        FloatVector c0 = FloatVector.zero(SP);
        FloatVector c1 = c0;
        for (int p = 0; p < k; p++) {
            final int bo = bBase + p * NARROW;
            FloatVector x = FloatVector.broadcast(SP, a[a0 + p]);
            c0 = x.fma(FloatVector.fromArray(SP, bp, bo), c0);
            c1 = x.fma(FloatVector.fromArray(SP, bp, bo + L), c1);
        }
        c0.intoArray(tile, at);
        c1.intoArray(tile, at + L);
    }

    /**
     * {@code C row r [0, nb) = rowScale[i + r] · tile row r (of nr floats) + beta · C} for {@code r < mr}. A heap C
     * (an array wrapped as a segment) gets its rows back through the tile and a bulk copy, never a vector store: a
     * vector store into a heap segment is intrinsified only while the JDK's shared type profile of such stores
     * (in {@code ScopedMemoryAccess}) has not seen heap segments over two array types. The Vector API's own
     * fallback for {@code reinterpretAsInts} (as {@link VectorRowKernels} runs it before C2) stores into a
     * {@code byte[]} segment; once that and a {@code float[]} C share the profile, C2 leaves every such store a
     * call and boxes its vector (measured: 12288 bytes per [1, 2, 16, 64] call). The register kernels store
     * straight to C only when C is off-heap, for the same reason.
     */
    private static void flush(float[] tile, int t, int nr, int mr, float[] rowScale, int i, float beta, MemorySegment c,
                              long cOff, int ldc, int nb) {
        final boolean heap = !c.isNative();
        for (int r = 0; r < mr; r++) {
            float scale = rowScale == null ? 1f : rowScale[i + r];
            long off = (cOff + (long) r * ldc) * Float.BYTES;
            if (nb == nr) {
                for (int q = 0; q < nr; q += L) {
                    long o = off + (long) q * Float.BYTES;
                    FloatVector x = FloatVector.fromArray(SP, tile, t + r * nr + q).mul(scale);
                    if (beta != 0f) {
                        x = FloatVector.fromMemorySegment(SP, c, o, O).mul(beta).add(x);
                    }
                    if (heap) {
                        x.intoArray(tile, t + r * nr + q);
                    } else {
                        x.intoMemorySegment(c, o, O);
                    }
                }
                if (heap) {
                    MemorySegment.copy(tile, t + r * nr, c, F, off, nr);
                }
            } else {
                // a partial panel, element by element (masked vector stores may not be intrinsified)
                for (int j = 0; j < nb; j++) {
                    long o = off + (long) j * Float.BYTES;
                    float x = scale * tile[t + r * nr + j];
                    c.set(F, o, beta != 0f ? Math.fma(beta, c.get(F, o), x) : x);
                }
            }
        }
    }

    // The few-query kernels below are cut into methods that each hold one register block: a method with all the
    // loops in one body is too big for C1's profiling tier ("out of virtual registers"), never reaches C2 at small
    // shapes, and then every vector op allocates. No vector crosses a call, so a helper C2 declines to inline
    // still boxes nothing.

    @Override
    public void dotRows(float[] a, int aOff, int lda, int m, MemorySegment b, long bOff, int ldb, int n, int k,
                        MemorySegment s, long sOff, int lds) {
        for (int r = 0; r < m; r++) {
            final int ar = aOff + r * lda;
            final long so = sOff + (long) r * lds;
            if ((L == 16 && k == 128) || (L == 8 && k == 64)) {
                dots8(a, ar, b, bOff, ldb, n, s, so);
                continue;
            }
            if (L == 16 && k == 64) {
                dots4(a, ar, b, bOff, ldb, n, s, so);
                continue;
            }
            if (L == 8 && k == 128) {
                dots16(a, ar, b, bOff, ldb, n, s, so);
                continue;
            }
            if (n < 4) {
                // one to three keys (a KV cache's first steps): dot4 on those rows alone. A method of their own
                // (dot1, until 2026-11-27) ran too rarely to leave C1 soon where caches grow long: every vector op
                // boxed, 18 KB per new sequence of a layer with 8-float heads (3 steps x 32 heads), for its first
                // ~26 sequences, until C2's invocation threshold (FreshSequenceProbe)
                if (n > 0) {
                    dot4(a, ar, b, bOff, ldb, k, s, so, n);
                }
                continue;
            }
            int j = 0;
            for (; j + 4 <= n; j += 4) {
                dot4(a, ar, b, bOff + (long) j * ldb, ldb, k, s, so + j, 4);
            }
            if (j < n) {
                // the last 1-3 keys by one more dot4 over the last four (each key's sum is the same bits
                // whichever call computes it), not by a rarely run method: see above
                j = n - 4;
                dot4(a, ar, b, bOff + (long) j * ldb, ldb, k, s, so + j, 4);
            }
        }
    }

    /**
     * {@code s[so + i] = a[ar ..] · b_i} for the first {@code rows} (1 to 4) of the four rows {@code b_i} of
     * {@code b} at {@code b0 + i·ldb}: whole vectors here, the last {@code k mod L} products in {@link #tail}.
     * With fewer than four rows the missing ones read the last row again and store nothing, so that no row past
     * {@code b}'s is read. Each row's sum is computed alike whatever {@code rows} is: the same bits. (With a masked
     * vector step as well the method is too big for C1: "out of virtual registers in linear scan".)
     */
    private static void dot4(float[] a, int ar, MemorySegment b, long b0, int ldb, int k, MemorySegment s, long so,
                             int rows) {
        final long r0 = b0 * Float.BYTES;
        final long r1 = rows > 1 ? r0 + (long) ldb * Float.BYTES : r0;
        final long r2 = rows > 2 ? r1 + (long) ldb * Float.BYTES : r1;
        final long r3 = rows > 3 ? r2 + (long) ldb * Float.BYTES : r2;
        FloatVector s0 = FloatVector.zero(SP);
        FloatVector s1 = s0;
        FloatVector s2 = s0;
        FloatVector s3 = s0;
        int p = 0;
        for (; p <= k - L; p += L) {
            FloatVector x = FloatVector.fromArray(SP, a, ar + p);
            long o = (long) p * Float.BYTES;
            s0 = x.fma(FloatVector.fromMemorySegment(SP, b, r0 + o, O), s0);
            s1 = x.fma(FloatVector.fromMemorySegment(SP, b, r1 + o, O), s1);
            s2 = x.fma(FloatVector.fromMemorySegment(SP, b, r2 + o, O), s2);
            s3 = x.fma(FloatVector.fromMemorySegment(SP, b, r3 + o, O), s3);
        }
        // the four lane sums before any scalar call: see matvec4
        final float t0 = Lanes.sum(s0);
        final float t1 = Lanes.sum(s1);
        final float t2 = Lanes.sum(s2);
        final float t3 = Lanes.sum(s3);
        final long bl = ldb;
        s.setAtIndex(F, so, t0 + tail(a, ar, b, b0, p, k));
        if (rows > 1) {
            s.setAtIndex(F, so + 1, t1 + tail(a, ar, b, b0 + bl, p, k));
        }
        if (rows > 2) {
            s.setAtIndex(F, so + 2, t2 + tail(a, ar, b, b0 + 2 * bl, p, k));
        }
        if (rows > 3) {
            s.setAtIndex(F, so + 3, t3 + tail(a, ar, b, b0 + 3 * bl, p, k));
        }
    }

    // dots8 and dots4 (eight and four vectors: D = 128 and 64 at 16 floats per vector; dots8 is also D = 64 at 8): the
    // common head sizes, key by key in straight-line code with the query row held in registers. Each key's products are
    // dot4's, in its order, so the scores are the same bits. Reading k from memory (a decode step), q·kᵀ took
    // 1.13-1.16x the time of a plain read of k at D = 128, against dot4's 1.51x (D = 64: 1.40x against 1.91x; each
    // variant in its own JVM against the same read, 128 MiB). Written as a loop over k, the same one-key order read
    // 1.8-2.2x. Likely causes, not pinned down: C2 can check a key's constant-offset reads together where a loop checks
    // each, and each key's lines are read in order where dot4 reads four lines 512 bytes apart. (Sixteen keys at once,
    // summed by a transposing reduction that keeps the bits, read 1.05-1.19x: no steadier, not kept.) With 8-float
    // vectors (AVX2) dots8 takes D = 64 and dots16 D = 128 (dots64e and dots128e in bench/RESULTS.md, round 26). On an
    // AVX2 machine (AMD EPYC, 2026-11-27) q·kᵀ from memory took 1.22-1.30x the time of a plain read of the same bytes
    // at D = 64, against dot4's 2.18-2.26x, and a whole decode step (32 heads x 4096 keys, D = 128) went from
    // 1.50-1.58x to 1.12-1.22x the time of reading its cache once on one thread, and from 1.21-1.36x to 1.03-1.06x on
    // two (DecodeRatio, bench/RESULTS.md round 26; 1.28-1.45x on one while dots16 still boxed, see there). With two
    // keys per pass, interleaved, the step took 1.72x: not kept.

    /** {@code s[so + j] = a[ar .. ar + 8L) · b_j} for the {@code n} rows {@code b_j} at {@code bOff + j·ldb}. */
    private static void dots8(float[] a, int ar, MemorySegment b, long bOff, int ldb, int n, MemorySegment s,
                              long so) {
        final FloatVector q0 = FloatVector.fromArray(SP, a, ar);
        final FloatVector q1 = FloatVector.fromArray(SP, a, ar + L);
        final FloatVector q2 = FloatVector.fromArray(SP, a, ar + 2 * L);
        final FloatVector q3 = FloatVector.fromArray(SP, a, ar + 3 * L);
        final FloatVector q4 = FloatVector.fromArray(SP, a, ar + 4 * L);
        final FloatVector q5 = FloatVector.fromArray(SP, a, ar + 5 * L);
        final FloatVector q6 = FloatVector.fromArray(SP, a, ar + 6 * L);
        final FloatVector q7 = FloatVector.fromArray(SP, a, ar + 7 * L);
        for (int j = 0; j < n; j++) {
            long bb = (bOff + (long) j * ldb) * Float.BYTES;
            FloatVector t = q0.fma(FloatVector.fromMemorySegment(SP, b, bb, O), FloatVector.zero(SP));
            t = q1.fma(FloatVector.fromMemorySegment(SP, b, bb + VB, O), t);
            t = q2.fma(FloatVector.fromMemorySegment(SP, b, bb + 2 * VB, O), t);
            t = q3.fma(FloatVector.fromMemorySegment(SP, b, bb + 3 * VB, O), t);
            t = q4.fma(FloatVector.fromMemorySegment(SP, b, bb + 4 * VB, O), t);
            t = q5.fma(FloatVector.fromMemorySegment(SP, b, bb + 5 * VB, O), t);
            t = q6.fma(FloatVector.fromMemorySegment(SP, b, bb + 6 * VB, O), t);
            t = q7.fma(FloatVector.fromMemorySegment(SP, b, bb + 7 * VB, O), t);
            s.setAtIndex(F, so + j, Lanes.sum(t));
        }
    }

    /** {@code s[so + j] = a[ar .. ar + 4L) · b_j} for the {@code n} rows {@code b_j} at {@code bOff + j·ldb}. */
    private static void dots4(float[] a, int ar, MemorySegment b, long bOff, int ldb, int n, MemorySegment s,
                              long so) {
        final FloatVector q0 = FloatVector.fromArray(SP, a, ar);
        final FloatVector q1 = FloatVector.fromArray(SP, a, ar + L);
        final FloatVector q2 = FloatVector.fromArray(SP, a, ar + 2 * L);
        final FloatVector q3 = FloatVector.fromArray(SP, a, ar + 3 * L);
        for (int j = 0; j < n; j++) {
            long bb = (bOff + (long) j * ldb) * Float.BYTES;
            FloatVector t = q0.fma(FloatVector.fromMemorySegment(SP, b, bb, O), FloatVector.zero(SP));
            t = q1.fma(FloatVector.fromMemorySegment(SP, b, bb + VB, O), t);
            t = q2.fma(FloatVector.fromMemorySegment(SP, b, bb + 2 * VB, O), t);
            t = q3.fma(FloatVector.fromMemorySegment(SP, b, bb + 3 * VB, O), t);
            s.setAtIndex(F, so + j, Lanes.sum(t));
        }
    }

    /**
     * {@link #dots8} over sixteen vectors (D = 128 with 8-float vectors): the query's sixteen vectors hoisted (C2 keeps
     * what AVX2's registers do not hold on the stack, in L1). Each key's lanes are summed at the top of the next pass,
     * and one pass more than keys stores the last: C2 inlines in bytecode order up to a node budget
     * (NodeCountInliningCutoff), and with the sum after sixteen segment loads it left {@code Lanes.sum} out of line,
     * boxing every key's vector (64 bytes per key, {@code make alloc}'s Java decode cases at D = 128;
     * {@code -XX:+PrintInlining}).
     */
    private static void dots16(float[] a, int ar, MemorySegment b, long bOff, int ldb, int n, MemorySegment s,
                               long so) {
        final FloatVector q0 = FloatVector.fromArray(SP, a, ar);
        final FloatVector q1 = FloatVector.fromArray(SP, a, ar + L);
        final FloatVector q2 = FloatVector.fromArray(SP, a, ar + 2 * L);
        final FloatVector q3 = FloatVector.fromArray(SP, a, ar + 3 * L);
        final FloatVector q4 = FloatVector.fromArray(SP, a, ar + 4 * L);
        final FloatVector q5 = FloatVector.fromArray(SP, a, ar + 5 * L);
        final FloatVector q6 = FloatVector.fromArray(SP, a, ar + 6 * L);
        final FloatVector q7 = FloatVector.fromArray(SP, a, ar + 7 * L);
        final FloatVector q8 = FloatVector.fromArray(SP, a, ar + 8 * L);
        final FloatVector q9 = FloatVector.fromArray(SP, a, ar + 9 * L);
        final FloatVector q10 = FloatVector.fromArray(SP, a, ar + 10 * L);
        final FloatVector q11 = FloatVector.fromArray(SP, a, ar + 11 * L);
        final FloatVector q12 = FloatVector.fromArray(SP, a, ar + 12 * L);
        final FloatVector q13 = FloatVector.fromArray(SP, a, ar + 13 * L);
        final FloatVector q14 = FloatVector.fromArray(SP, a, ar + 14 * L);
        final FloatVector q15 = FloatVector.fromArray(SP, a, ar + 15 * L);
        FloatVector t = FloatVector.zero(SP);
        for (int j = 0; j <= n; j++) {
            if (j > 0) {
                s.setAtIndex(F, so + j - 1, Lanes.sum(t));
            }
            if (j == n) {
                break;
            }
            long bb = (bOff + (long) j * ldb) * Float.BYTES;
            t = q0.fma(FloatVector.fromMemorySegment(SP, b, bb, O), FloatVector.zero(SP));
            t = q1.fma(FloatVector.fromMemorySegment(SP, b, bb + VB, O), t);
            t = q2.fma(FloatVector.fromMemorySegment(SP, b, bb + 2 * VB, O), t);
            t = q3.fma(FloatVector.fromMemorySegment(SP, b, bb + 3 * VB, O), t);
            t = q4.fma(FloatVector.fromMemorySegment(SP, b, bb + 4 * VB, O), t);
            t = q5.fma(FloatVector.fromMemorySegment(SP, b, bb + 5 * VB, O), t);
            t = q6.fma(FloatVector.fromMemorySegment(SP, b, bb + 6 * VB, O), t);
            t = q7.fma(FloatVector.fromMemorySegment(SP, b, bb + 7 * VB, O), t);
            t = q8.fma(FloatVector.fromMemorySegment(SP, b, bb + 8 * VB, O), t);
            t = q9.fma(FloatVector.fromMemorySegment(SP, b, bb + 9 * VB, O), t);
            t = q10.fma(FloatVector.fromMemorySegment(SP, b, bb + 10 * VB, O), t);
            t = q11.fma(FloatVector.fromMemorySegment(SP, b, bb + 11 * VB, O), t);
            t = q12.fma(FloatVector.fromMemorySegment(SP, b, bb + 12 * VB, O), t);
            t = q13.fma(FloatVector.fromMemorySegment(SP, b, bb + 13 * VB, O), t);
            t = q14.fma(FloatVector.fromMemorySegment(SP, b, bb + 14 * VB, O), t);
            t = q15.fma(FloatVector.fromMemorySegment(SP, b, bb + 15 * VB, O), t);
        }
    }

    /** {@code Σ_{p0 ≤ p < k} a[ar + p] · b[b0 + p]}, in order: the tail of a dot product after its whole vectors. */
    private static float tail(float[] a, int ar, MemorySegment b, long b0, int p0, int k) {
        float t = 0f;
        for (int p = p0; p < k; p++) {
            t = Math.fma(a[ar + p], b.getAtIndex(F, b0 + p), t);
        }
        return t;
    }

    @Override
    public void matvec(MemorySegment a, long aOff, int lda, int m, int n, MemorySegment x, long xOff, float alpha,
                       float beta, MemorySegment y, long yOff) {
        int i = 0;
        for (; i + 4 <= m; i += 4) {
            matvec4(a, aOff + (long) i * lda, lda, n, x, xOff, alpha, beta, y, yOff + i);
        }
        for (; i < m; i++) {
            float d = alpha * segDot1(a, aOff + (long) i * lda, n, x, xOff);
            long at = yOff + i;
            y.setAtIndex(F, at, beta == 0f ? d : Math.fma(beta, y.getAtIndex(F, at), d));
        }
    }

    /**
     * Four rows of {@link #matvec}: {@code y[yo + i] = alpha · A_i · x (+ beta · y)} for rows at {@code a0 + i·lda};
     * whole vectors here, the rest in {@link #segTail} (as in {@link #dot4}, to stay small enough for C1).
     */
    private static void matvec4(MemorySegment a, long a0, int lda, int n, MemorySegment x, long xOff, float alpha,
                                float beta, MemorySegment y, long yo) {
        final long r0 = a0 * Float.BYTES;
        final long r1 = r0 + (long) lda * Float.BYTES;
        final long r2 = r1 + (long) lda * Float.BYTES;
        final long r3 = r2 + (long) lda * Float.BYTES;
        final long xb = xOff * Float.BYTES;
        FloatVector s0 = FloatVector.zero(SP);
        FloatVector s1 = s0;
        FloatVector s2 = s0;
        FloatVector s3 = s0;
        int p = 0;
        for (; p <= n - L; p += L) {
            long o = (long) p * Float.BYTES;
            FloatVector xv = FloatVector.fromMemorySegment(SP, x, xb + o, O);
            s0 = xv.fma(FloatVector.fromMemorySegment(SP, a, r0 + o, O), s0);
            s1 = xv.fma(FloatVector.fromMemorySegment(SP, a, r1 + o, O), s1);
            s2 = xv.fma(FloatVector.fromMemorySegment(SP, a, r2 + o, O), s2);
            s3 = xv.fma(FloatVector.fromMemorySegment(SP, a, r3 + o, O), s3);
        }
        // The four lane sums come first. C2 inlines in bytecode order and stops at a node budget
        // (NodeCountInliningCutoff): with each sum after the previous row's tail and store, a compile of this
        // method whose profile included tails left the last Lanes.sum out of line, and its vector was boxed on
        // every call (18 KB per Java decode step of the layer, E = 256; PrintInlining and JFR). Scalar calls
        // left out of line cost a call, not an allocation.
        final float t0 = Lanes.sum(s0);
        final float t1 = Lanes.sum(s1);
        final float t2 = Lanes.sum(s2);
        final float t3 = Lanes.sum(s3);
        final long al = lda;
        store(y, yo, alpha * (t0 + segTail(a, a0, x, xOff, p, n)), beta);
        store(y, yo + 1, alpha * (t1 + segTail(a, a0 + al, x, xOff, p, n)), beta);
        store(y, yo + 2, alpha * (t2 + segTail(a, a0 + 2 * al, x, xOff, p, n)), beta);
        store(y, yo + 3, alpha * (t3 + segTail(a, a0 + 3 * al, x, xOff, p, n)), beta);
    }

    private static void store(MemorySegment y, long at, float d, float beta) {
        y.setAtIndex(F, at, beta == 0f ? d : Math.fma(beta, y.getAtIndex(F, at), d));
    }

    /** {@code Σ_{p0 ≤ p < n} a[a0 + p] · x[xOff + p]}, in order. */
    private static float segTail(MemorySegment a, long a0, MemorySegment x, long xOff, int p0, int n) {
        float t = 0f;
        for (int p = p0; p < n; p++) {
            t = Math.fma(a.getAtIndex(F, a0 + p), x.getAtIndex(F, xOff + p), t);
        }
        return t;
    }

    /** {@code A_0 · x} for the row of {@code a} at {@code a0} and the unit-stride {@code x} at {@code xOff}. */
    private static float segDot1(MemorySegment a, long a0, int n, MemorySegment x, long xOff) {
        final long r0 = a0 * Float.BYTES;
        final long xb = xOff * Float.BYTES;
        FloatVector s0 = FloatVector.zero(SP);
        int p = 0;
        for (; p <= n - L; p += L) {
            long o = (long) p * Float.BYTES;
            s0 = FloatVector.fromMemorySegment(SP, x, xb + o, O).fma(FloatVector.fromMemorySegment(SP, a, r0 + o, O), s0);
        }
        return Lanes.sum(s0) + segTail(a, a0, x, xOff, p, n);
    }

    @Override
    public void axpyRows(MemorySegment p, long pOff, int ldp, int m, MemorySegment v, long vOff, int ldv, int n, int d,
                         int block, float[] rowScale, MemorySegment c, long cOff, int ldc) {
        final int kb = Math.max(1, block);
        for (int j0 = 0; j0 < n || j0 == 0; j0 += kb) {
            final int nk = Math.min(kb, n - j0);
            axpyRowsBlock(p, pOff + j0, ldp, m, v, vOff + (long) j0 * ldv, ldv, nk, d, j0 == 0, j0 + nk >= n,
                    rowScale, 0, c, cOff, ldc);
        }
    }

    @Override
    public void axpyRowsBlock(MemorySegment p, long pOff, int ldp, int m, MemorySegment v, long vOff, int ldv, int n,
                              int d, boolean first, boolean last, float[] rowScale, int rsOff, MemorySegment c,
                              long cOff, int ldc) {
        for (int r = 0; r < m; r++) {
            final long pr = pOff + (long) r * ldp;
            final float scale = rowScale == null ? 1f : rowScale[rsOff + r];
            final long cr = cOff + (long) r * ldc;
            // eight (then four) vectors of the output row at a time stay in registers while every key adds its
            // row of v: a 128-float head reads v once, not in two passes of four vectors (a decode step, 32 heads
            // x 4096 keys x D = 128, went from 1.25-1.32x to 1.20-1.25x the time of reading the cache once,
            // measured in the same JVM)
            // in runs of SUM_KEYS keys, every run summed from zero and added to C (see axpy8)
            for (int j0 = 0; j0 < n || j0 == 0; j0 += SUM_KEYS) {
                final int nk = Math.min(SUM_KEYS, n - j0);
                final boolean runFirst = first && j0 == 0;
                final boolean runLast = last && j0 + nk >= n;
                final long pj = pr + j0;
                final long vj = vOff + (long) j0 * ldv;
                int d0 = 0;
                for (; d0 + 8 * L <= d; d0 += 8 * L) {
                    axpy8(p, pj, v, vj + d0, ldv, nk, runFirst, runLast, scale, c, cr + d0);
                }
                for (; d0 + 4 * L <= d; d0 += 4 * L) {
                    axpy4(p, pj, v, vj + d0, ldv, nk, runFirst, runLast, scale, c, cr + d0);
                }
                for (; d0 < d; d0 += L) {
                    axpy1(p, pj, v, vj + d0, ldv, nk, Math.min(L, d - d0), runFirst, runLast, scale, c, cr + d0);
                }
            }
        }
    }

    /**
     * Keys per run of {@link #axpyRowsBlock}'s sums: each run is summed from zero and then added to C, so no fma
     * rounds its term to the ulp of a sum over more than this many keys (the cost: one load and add of C per run).
     */
    static final int SUM_KEYS = 256;

    // axpy8, axpy4 and axpy1 sum their run of keys from zero and, when not first, add that sum to the raw partial
    // sums C holds (read back as they were stored); they scale only when last. One running sum over every key
    // drifted linearly with the key count (each fma rounds its term to the ulp of a sum far larger than it:
    // 1 ± 5e-3 for a constant v at 2^20 keys); runs of SUM_KEYS bound that drift by the run, and the runs added
    // by their count.

    /** {@code c[co .. co + 8L) = scale · Σ_j p[pr + j] · v[v0 + j·ldv ..]}: eight full vectors of an output row. */
    private static void axpy8(MemorySegment p, long pr, MemorySegment v, long v0, int ldv, int n, boolean first,
                              boolean last, float scale, MemorySegment c, long co) {
        final long cb = co * Float.BYTES;
        FloatVector x0;
        FloatVector x1;
        FloatVector x2;
        FloatVector x3;
        FloatVector x4;
        FloatVector x5;
        FloatVector x6;
        FloatVector x7;
        x0 = FloatVector.zero(SP);
        x1 = x0;
        x2 = x0;
        x3 = x0;
        x4 = x0;
        x5 = x0;
        x6 = x0;
        x7 = x0;
        for (int j = 0; j < n; j++) {
            FloatVector wv = FloatVector.broadcast(SP, p.getAtIndex(F, pr + j));
            long o = (v0 + (long) j * ldv) * Float.BYTES;
            x0 = wv.fma(FloatVector.fromMemorySegment(SP, v, o, O), x0);
            x1 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + VB, O), x1);
            x2 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 2 * VB, O), x2);
            x3 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 3 * VB, O), x3);
            x4 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 4 * VB, O), x4);
            x5 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 5 * VB, O), x5);
            x6 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 6 * VB, O), x6);
            x7 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 7 * VB, O), x7);
        }
        if (!first) {
            x0 = x0.add(FloatVector.fromMemorySegment(SP, c, cb, O));
            x1 = x1.add(FloatVector.fromMemorySegment(SP, c, cb + VB, O));
            x2 = x2.add(FloatVector.fromMemorySegment(SP, c, cb + 2 * VB, O));
            x3 = x3.add(FloatVector.fromMemorySegment(SP, c, cb + 3 * VB, O));
            x4 = x4.add(FloatVector.fromMemorySegment(SP, c, cb + 4 * VB, O));
            x5 = x5.add(FloatVector.fromMemorySegment(SP, c, cb + 5 * VB, O));
            x6 = x6.add(FloatVector.fromMemorySegment(SP, c, cb + 6 * VB, O));
            x7 = x7.add(FloatVector.fromMemorySegment(SP, c, cb + 7 * VB, O));
        }
        if (last) {
            x0 = x0.mul(scale);
            x1 = x1.mul(scale);
            x2 = x2.mul(scale);
            x3 = x3.mul(scale);
            x4 = x4.mul(scale);
            x5 = x5.mul(scale);
            x6 = x6.mul(scale);
            x7 = x7.mul(scale);
        }
        x0.intoMemorySegment(c, cb, O);
        x1.intoMemorySegment(c, cb + VB, O);
        x2.intoMemorySegment(c, cb + 2 * VB, O);
        x3.intoMemorySegment(c, cb + 3 * VB, O);
        x4.intoMemorySegment(c, cb + 4 * VB, O);
        x5.intoMemorySegment(c, cb + 5 * VB, O);
        x6.intoMemorySegment(c, cb + 6 * VB, O);
        x7.intoMemorySegment(c, cb + 7 * VB, O);
    }

    /** {@code c[co .. co + 4L) = scale · Σ_j p[pr + j] · v[v0 + j·ldv ..]}: four full vectors of an output row. */
    private static void axpy4(MemorySegment p, long pr, MemorySegment v, long v0, int ldv, int n, boolean first,
                              boolean last, float scale, MemorySegment c, long co) {
        final long cb = co * Float.BYTES;
        FloatVector x0;
        FloatVector x1;
        FloatVector x2;
        FloatVector x3;
        x0 = FloatVector.zero(SP);
        x1 = x0;
        x2 = x0;
        x3 = x0;
        for (int j = 0; j < n; j++) {
            FloatVector wv = FloatVector.broadcast(SP, p.getAtIndex(F, pr + j));
            long o = (v0 + (long) j * ldv) * Float.BYTES;
            x0 = wv.fma(FloatVector.fromMemorySegment(SP, v, o, O), x0);
            x1 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + VB, O), x1);
            x2 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 2 * VB, O), x2);
            x3 = wv.fma(FloatVector.fromMemorySegment(SP, v, o + 3 * VB, O), x3);
        }
        if (!first) {
            x0 = x0.add(FloatVector.fromMemorySegment(SP, c, cb, O));
            x1 = x1.add(FloatVector.fromMemorySegment(SP, c, cb + VB, O));
            x2 = x2.add(FloatVector.fromMemorySegment(SP, c, cb + 2 * VB, O));
            x3 = x3.add(FloatVector.fromMemorySegment(SP, c, cb + 3 * VB, O));
        }
        if (last) {
            x0 = x0.mul(scale);
            x1 = x1.mul(scale);
            x2 = x2.mul(scale);
            x3 = x3.mul(scale);
        }
        x0.intoMemorySegment(c, cb, O);
        x1.intoMemorySegment(c, cb + VB, O);
        x2.intoMemorySegment(c, cb + 2 * VB, O);
        x3.intoMemorySegment(c, cb + 3 * VB, O);
    }

    /** One vector of {@link #axpy4}, its first {@code w} lanes (all when {@code w ≥ L}). */
    private static void axpy1(MemorySegment p, long pr, MemorySegment v, long v0, int ldv, int n, int w,
                              boolean first, boolean last, float scale, MemorySegment c, long co) {
        VectorMask<Float> mk = SP.indexInRange(0, w);
        final long cb = co * Float.BYTES;
        FloatVector x0 = FloatVector.zero(SP);
        for (int j = 0; j < n; j++) {
            FloatVector wv = FloatVector.broadcast(SP, p.getAtIndex(F, pr + j));
            x0 = wv.fma(FloatVector.fromMemorySegment(SP, v, (v0 + (long) j * ldv) * Float.BYTES, O, mk), x0);
        }
        if (!first) {
            x0 = x0.add(FloatVector.fromMemorySegment(SP, c, cb, O, mk));
        }
        if (last) {
            x0 = x0.mul(scale);
        }
        x0.intoMemorySegment(c, cb, O, mk);
    }
}
