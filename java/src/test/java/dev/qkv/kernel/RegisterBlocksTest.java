package dev.qkv.kernel;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The two register blocks of the Vector API products (6 × 4 vectors for 32 vector registers, 6 × 2 for 16; see
 * {@link VectorPackedKernels}) give the same bits: each output element is one fused multiply-add chain over the
 * steps in order in both, so whichever block the machine runs, every result of the engine is the same. Both are
 * also within a stated bound of a double-precision triple loop. Whatever the machine, both blocks run here, so an
 * AVX-512 machine tests the AVX2 block too and the other way round.
 */
class RegisterBlocksTest {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    @BeforeAll
    static void vectorApi() {
        Assumptions.assumeTrue(Vectorization.enabled(), Vectorization.reason());
    }

    @Test
    void theBlocksAreNamedAndOneFitsThisMachine() {
        assertEquals("6x2", new VectorPackedKernels(true).registerBlock());
        assertEquals("6x4", new VectorPackedKernels(false).registerBlock());
        String want = VectorPackedKernels.sixteenRegisters() ? "6x2" : "6x4";
        if (System.getProperty(Vectorization.SMALL_BLOCKS) == null) {
            assertEquals(want, Vectorization.packed().registerBlock(), Vectorization.reason());
        }
    }

    /**
     * {@code gemm} over row counts that leave every block size (6s, a 4, 1s), reductions short enough for the
     * step-major copy of A and longer, A stored either way, panels whole, partial and narrow (at most two vectors
     * wide: the 8-row kernel), beta 0 (straight to an off-heap C) and not, C off-heap and on the heap (through
     * the tile), with and without row scales.
     */
    @Test
    void gemmGivesTheSameBitsWithEitherBlock() {
        PackedKernels wide = new VectorPackedKernels(false);
        PackedKernels small = new VectorPackedKernels(true);
        int lanes = jdk.incubator.vector.FloatVector.SPECIES_PREFERRED.length();
        SplittableRandom r = new SplittableRandom(25);
        int[] ms = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 16, 64, 65};
        int[] ks = {1, 7, 16, 17, 64, 65, 128, 129, 300};
        int[] ns = {1, lanes, 2 * lanes - 1, 2 * lanes, 2 * lanes + 1, 4 * lanes, 4 * lanes + 3, 64, 128, 200};
        try (Arena arena = Arena.ofConfined()) {
            for (int trial = 0; trial < 150; trial++) {
                int m = ms[trial % ms.length];
                int k = ks[r.nextInt(ks.length)];
                int n = ns[r.nextInt(ns.length)];
                boolean aTransposed = r.nextInt(4) == 0;
                boolean allOfA = r.nextBoolean();
                boolean heapC = r.nextInt(4) == 0;
                float beta = r.nextInt(3) == 0 ? 0.5f : 0f;
                float[] scale = r.nextBoolean() ? null : randomScale(r, m);
                int lda = (aTransposed ? m : k) + r.nextInt(3);
                int ldc = n + r.nextInt(4);
                MemorySegment a = fill(arena, r, (long) (aTransposed ? k : m) * lda);
                MemorySegment b = fill(arena, r, (long) n * k);
                MemorySegment c0 = fill(arena, r, (long) m * ldc);
                String at = "m=" + m + " n=" + n + " k=" + k + " transposed=" + aTransposed + " allOfA=" + allOfA
                        + " beta=" + beta + " scaled=" + (scale != null) + " heapC=" + heapC;
                MemorySegment[] got = new MemorySegment[2];
                PackedKernels[] kernels = {wide, small};
                for (int v = 0; v < 2; v++) {
                    PackedKernels pk = kernels[v];
                    PackBuffer packed = new PackBuffer();
                    packed.ensure(pk.packedSize(k, n));
                    int bAt = pk.packB(true, b, 0, k, k, n, false, packed);
                    MemorySegment c = heapC ? MemorySegment.ofArray(new float[(int) (c0.byteSize() / 4)])
                            : arena.allocate(c0.byteSize(), 64);
                    c.copyFrom(c0);
                    float[] abuf = new float[allOfA ? Math.max(m * k, 8 * k) : 8 * k];
                    pk.gemm(aTransposed, a, 0, lda, m, n, k, abuf, packed.array(), bAt, k, n, 0, 0, scale, beta, c,
                            0, ldc);
                    got[v] = c;
                }
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        long e = (long) i * ldc + j;
                        float x = got[0].getAtIndex(F, e);
                        float y = got[1].getAtIndex(F, e);
                        if (Float.floatToRawIntBits(x) != Float.floatToRawIntBits(y)) {
                            fail(at + " at (" + i + ", " + j + "): 6x4 gives " + x + ", 6x2 " + y);
                        }
                        double sum = 0;
                        for (int p = 0; p < k; p++) {
                            sum += (double) a.getAtIndex(F, aTransposed ? (long) p * lda + i : (long) i * lda + p)
                                    * b.getAtIndex(F, (long) j * k + p);
                        }
                        double want = (scale == null ? 1 : scale[i]) * sum + beta * c0.getAtIndex(F, e);
                        // k fused steps, each within half an ulp of its partial sum (|terms| < 1), then a scale
                        // and the beta term
                        double tol = (k + 4) * 0x1p-24 * (k + 2);
                        if (!(Math.abs(x - want) <= tol)) {
                            fail(at + " at (" + i + ", " + j + "): " + x + " vs double " + want);
                        }
                    }
                }
            }
        }
    }

    /**
     * {@code gemmRows}, the rows of a block the Java engine multiplies straight from its weights (p · v): 1 to 8
     * rows (8 take the narrow 8-row kernel, in two halves with the small blocks), panels narrow and wide, packed
     * columns past a panel start ({@code bCol0}) and past a row of the packed operand ({@code bRow0}).
     */
    @Test
    void gemmRowsGivesTheSameBitsWithEitherBlock() {
        PackedKernels wide = new VectorPackedKernels(false);
        PackedKernels small = new VectorPackedKernels(true);
        int lanes = jdk.incubator.vector.FloatVector.SPECIES_PREFERRED.length();
        SplittableRandom r = new SplittableRandom(26);
        try (Arena arena = Arena.ofConfined()) {
            for (int trial = 0; trial < 120; trial++) {
                int packedN = new int[] {lanes, 2 * lanes, 4 * lanes, 8 * lanes, 64, 128}[r.nextInt(6)];
                // as many rows as the engine hands gemmRows: one register block (8 rows for narrow panels)
                int m = wide.sliverRows(packedN, 1 + trial % 8);
                int packedK = new int[] {16, 64, 65, 200}[r.nextInt(4)];
                int panel = packedN <= 2 * lanes ? 2 * lanes : 4 * lanes;
                int bRow0 = r.nextInt(3) == 0 ? r.nextInt(packedK) : 0;
                int k = 1 + r.nextInt(packedK - bRow0);
                int bCol0 = packedN > panel && r.nextBoolean() ? panel : 0;
                int n = Math.min(packedN - bCol0, r.nextBoolean() ? panel : packedN - bCol0);
                float beta = r.nextInt(3) == 0 ? 0.25f : 0f;
                float[] scale = r.nextBoolean() ? null : randomScale(r, 9);
                int i = r.nextInt(2);
                MemorySegment b = fill(arena, r, (long) packedK * packedN);
                float[] a = new float[m * k];
                for (int e = 0; e < a.length; e++) {
                    a[e] = (float) (r.nextDouble() * 2 - 1);
                }
                int ldc = n + r.nextInt(3);
                MemorySegment c0 = fill(arena, r, (long) m * ldc);
                String at = "m=" + m + " n=" + n + " k=" + k + " packed [" + packedK + ", " + packedN + "] from ("
                        + bRow0 + ", " + bCol0 + ") beta=" + beta + " scaled=" + (scale != null);
                MemorySegment[] got = new MemorySegment[2];
                PackedKernels[] kernels = {wide, small};
                for (int v = 0; v < 2; v++) {
                    PackedKernels pk = kernels[v];
                    PackBuffer packed = new PackBuffer();
                    packed.ensure(pk.packedSize(packedK, packedN));
                    int bAt = pk.packB(false, b, 0, packedN, packedK, packedN, false, packed);
                    MemorySegment c = arena.allocate(c0.byteSize(), 64).copyFrom(c0);
                    pk.gemmRows(a, i, m, n, k, packed.array(), bAt, packedK, packedN, bRow0, bCol0, scale, beta,
                            c, 0, ldc);
                    got[v] = c;
                }
                for (int row = 0; row < m; row++) {
                    for (int j = 0; j < n; j++) {
                        long e = (long) row * ldc + j;
                        float x = got[0].getAtIndex(F, e);
                        float y = got[1].getAtIndex(F, e);
                        if (Float.floatToRawIntBits(x) != Float.floatToRawIntBits(y)) {
                            fail(at + " at (" + row + ", " + j + "): 6x4 gives " + x + ", 6x2 " + y);
                        }
                        double sum = 0;
                        for (int p = 0; p < k; p++) {
                            sum += (double) a[row * k + p] * b.getAtIndex(F, (long) (bRow0 + p) * packedN + bCol0 + j);
                        }
                        double want = (scale == null ? 1 : scale[i + row]) * sum + beta * c0.getAtIndex(F, e);
                        double tol = (k + 4) * 0x1p-24 * (k + 2);
                        if (!(Math.abs(x - want) <= tol)) {
                            fail(at + " at (" + row + ", " + j + "): " + x + " vs double " + want);
                        }
                    }
                }
            }
        }
    }

    private static float[] randomScale(SplittableRandom r, int m) {
        float[] s = new float[m];
        for (int i = 0; i < m; i++) {
            s[i] = (float) (r.nextDouble() + 0.5);
        }
        return s;
    }

    private static MemorySegment fill(Arena arena, SplittableRandom r, long n) {
        MemorySegment s = arena.allocate(Math.max(n, 1) * 4, 64);
        for (long i = 0; i < n; i++) {
            s.setAtIndex(F, i, (float) (r.nextDouble() * 2 - 1));
        }
        return s;
    }
}
