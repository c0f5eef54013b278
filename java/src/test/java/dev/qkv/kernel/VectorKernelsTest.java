package dev.qkv.kernel;

import dev.qkv.blas.Transpose;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The Vector API kernels against independent ones: the vectorized exp against {@link Math#exp} in double, the
 * vector row kernels against the scalar ones, the packed product against a double-precision triple loop.
 */
class VectorKernelsTest {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    @BeforeEach
    void vectorApiPresent() {
        Assumptions.assumeTrue(Vectorization.enabled(), Vectorization.reason());
    }

    /**
     * java/pom.xml's eight-float-vectors run passes {@code -XX:MaxVectorSize=32} so that AVX-512 machines test the
     * 8-float kernels too: where it does, the vectors must be at most 8 floats, and at 8 on x86 the products must
     * take the 6 x 2 register blocks of 16 vector registers.
     */
    @Test
    void thirtyTwoByteVectorsGiveTheEightFloatKernels() {
        boolean asked = java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
                .contains("-XX:MaxVectorSize=32");
        Assumptions.assumeTrue(asked, "only in the run given -XX:MaxVectorSize=32");
        int lanes = jdk.incubator.vector.FloatVector.SPECIES_PREFERRED.length();
        assertTrue(lanes <= 8, lanes + " floats per vector");
        if (lanes == 8 && System.getProperty("os.arch").equals("amd64")) {
            assertEquals("6x2", Vectorization.packed().registerBlock());
        }
    }

    /**
     * The stated accuracy of the vectorized exp: relative error below 2e-7 on [-87, 88] (1.65e-7 at most over
     * every float there, measured once against Math.exp), 0 below, NaN kept.
     */
    @Test
    void expRelativeErrorOverItsRange() {
        int n = 2_000_001;
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = -87f + 175f * i / (n - 1);
        }
        float[] y = new float[n];
        Vectorization.rows().exp(x, y, n);
        double worst = 0;
        float at = 0;
        for (int i = 0; i < n; i++) {
            double e = Math.exp(x[i]);
            double rel = Math.abs(y[i] - e) / e;
            if (rel > worst) {
                worst = rel;
                at = x[i];
            }
        }
        System.out.println("vector exp: max relative error " + worst + " at x=" + at + " over [-87, 88]");
        assertTrue(worst < 2e-7, "max relative error " + worst + " at x=" + at);
        float[] special = {Float.NEGATIVE_INFINITY, -1000f, -87.5f, Float.NaN, 0f};
        float[] out = new float[special.length];
        Vectorization.rows().exp(special, out, special.length);
        assertEquals(0f, out[0]);
        assertEquals(0f, out[1]);
        assertEquals(0f, out[2]);
        assertTrue(Float.isNaN(out[3]));
        assertEquals(1f, out[4]);
        // past the range: Math.exp's own value, finite to ~88.72 and then +Infinity, as the scalar kernels give
        // (a clamp at 88 gave exp(88) = 1.65e38 for all of them)
        float[] high = {88.5f, 88.7f, 89f, 100f, Float.POSITIVE_INFINITY};
        float[] got = new float[high.length];
        Vectorization.rows().exp(high, got, high.length);
        for (int i = 0; i < high.length; i++) {
            assertEquals((float) Math.exp(high[i]), got[i], "exp(" + high[i] + ")");
        }
    }

    @Test
    void expRowMatchesScalar() {
        SplittableRandom r = new SplittableRandom(11);
        try (Arena arena = Arena.ofConfined()) {
            for (int n : new int[] {1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 65, 129, 1000}) {
                for (int variant = 0; variant < 5; variant++) {
                    int limit = variant == 1 ? r.nextInt(n + 1) : n;
                    boolean maskBool = variant == 2;
                    boolean additive = variant == 3;
                    long mStride = variant == 4 ? 2 : 1;
                    MemorySegment a = arena.allocate((long) n * 4);
                    MemorySegment b = arena.allocate((long) n * 4);
                    MemorySegment m = arena.allocate((long) n * 8);
                    for (int j = 0; j < n; j++) {
                        float s = (float) (r.nextDouble() * 2000 - 1000);
                        a.setAtIndex(F, j, s);
                        b.setAtIndex(F, j, s);
                    }
                    for (int j = 0; j < 2 * n; j++) {
                        m.setAtIndex(F, j, maskBool ? (r.nextDouble() < 0.8 ? 1f : 0f)
                                : (float) (r.nextDouble() * 4 - 2));
                    }
                    MemorySegment mask = maskBool || additive || variant == 4 ? m : null;
                    float fa = Vectorization.scalarRows().expRow(a, 0, n, limit, mask, 0, mStride, maskBool);
                    float fb = Vectorization.rows().expRow(b, 0, n, limit, mask, 0, mStride, maskBool);
                    String ctx = "n=" + n + " limit=" + limit + " variant=" + variant;
                    assertEquals(fa, fb, Math.abs(fa) * 1e-5, ctx + " 1/sum");
                    for (int j = 0; j < n; j++) {
                        float x = a.getAtIndex(F, j);
                        float y = b.getAtIndex(F, j);
                        // written so that a NaN on one side only fails (a NaN compares false with any bound)
                        if (!(Math.abs(x - y) <= 1e-6 + 1e-6 * Math.abs(x)) && Float.compare(x, y) != 0) {
                            fail(ctx + " j=" + j + ": scalar " + x + " vector " + y);
                        }
                    }
                }
            }
        }
    }

    /**
     * The row max finds the largest entry wherever it sits: in each of the four interleaved maxima of long rows,
     * in the folded lanes, in the partial last vector, in a scalar tail; an entry past the limit never counts.
     */
    @Test
    void maskedMaxFindsTheLargestEntryAtEveryPosition() {
        SplittableRandom r = new SplittableRandom(5);
        try (Arena arena = Arena.ofConfined()) {
            for (int n : new int[] {1, 15, 16, 17, 63, 64, 65, 100, 128, 129, 200}) {
                MemorySegment s = arena.allocate((long) n * 4);
                for (int limit : new int[] {n, Math.max(0, n - 1), n / 2}) {
                    for (int p = 0; p < n; p++) {
                        for (int j = 0; j < n; j++) {
                            s.setAtIndex(F, j, (float) (-10 * r.nextDouble()));
                        }
                        s.setAtIndex(F, p, 5f);
                        float want = p < limit ? 5f : Float.NEGATIVE_INFINITY;
                        if (p >= limit) {
                            for (int j = 0; j < limit; j++) {
                                want = Math.max(want, s.getAtIndex(F, j));
                            }
                        }
                        for (RowKernels k : new RowKernels[] {Vectorization.scalarRows(), Vectorization.rows()}) {
                            assertEquals(want, k.maskedMax(s, 0, n, limit, null, 0, 0, false),
                                    k.name() + " n=" + n + " limit=" + limit + " max at " + p);
                        }
                    }
                }
                // every entry -inf: the row max is -inf (a fully masked row), not NaN
                for (int j = 0; j < n; j++) {
                    s.setAtIndex(F, j, Float.NEGATIVE_INFINITY);
                }
                assertEquals(Float.NEGATIVE_INFINITY, Vectorization.rows().maskedMax(s, 0, n, n, null, 0, 0, false));
            }
        }
    }

    /**
     * A mask read with stride 0 (one value for the whole row: a mask whose last dimension is 1) masks the row as that
     * value written out once per key and read with stride 1: the same masked scores in place, the same max, the
     * same weights, in each flavour; boolean 0 and 1, additive finite, -inf and 0, partial limits, NaN scores.
     */
    @Test
    void aStrideZeroMaskIsItsValueWrittenOutPerKey() {
        SplittableRandom r = new SplittableRandom(27);
        float[] values = {0f, 1f, -3f, 0.75f, Float.NEGATIVE_INFINITY, 2.5f};
        try (Arena arena = Arena.ofConfined()) {
            for (int n : new int[] {1, 7, 16, 17, 33, 64, 100, 129}) {
                for (int limit : new int[] {n, n / 2, 0}) {
                    for (float value : values) {
                        for (boolean maskBool : new boolean[] {true, false}) {
                            for (boolean nan : new boolean[] {false, true}) {
                                MemorySegment a = arena.allocate((long) n * 4);
                                MemorySegment b = arena.allocate((long) n * 4);
                                MemorySegment one = arena.allocate(8);
                                one.setAtIndex(F, 1, value);
                                MemorySegment row = arena.allocate((long) n * 4);
                                for (int j = 0; j < n; j++) {
                                    float x = (float) (r.nextDouble() * 20 - 10);
                                    x = nan && j == n / 3 ? Float.NaN : x;
                                    a.setAtIndex(F, j, x);
                                    b.setAtIndex(F, j, x);
                                    row.setAtIndex(F, j, value);
                                }
                                for (RowKernels k : new RowKernels[] {Vectorization.scalarRows(), Vectorization.rows()}) {
                                    MemorySegment.copy(b, 0, a, 0, (long) n * 4);
                                    MemorySegment c = arena.allocate((long) n * 4);
                                    MemorySegment.copy(b, 0, c, 0, (long) n * 4);
                                    String ctx = k.name() + " n=" + n + " limit=" + limit + " value=" + value
                                            + (maskBool ? " bool" : " additive") + (nan ? " NaN score" : "");
                                    float mz = k.maskedMax(a, 0, n, limit, one, 1, 0, maskBool);
                                    float mf = k.maskedMax(c, 0, n, limit, row, 0, 1, maskBool);
                                    for (int j = 0; j < limit; j++) {
                                        assertEquals(Float.floatToIntBits(c.getAtIndex(F, j)),
                                                Float.floatToIntBits(a.getAtIndex(F, j)), ctx + " masked s[" + j + "]");
                                    }
                                    float sz = k.expFrom(a, 0, n, limit, mz);
                                    float sf = k.expFrom(c, 0, n, limit, mf);
                                    // a row holding a NaN may report NaN or the max of the rest (RowKernels): both
                                    // make its sum NaN, all that is promised then; otherwise the very max
                                    if (Float.isNaN(mz) != Float.isNaN(mf)) {
                                        assertTrue(nan && Float.isNaN(sz) && Float.isNaN(sf), ctx + " NaN max");
                                        continue;
                                    }
                                    assertEquals(mf, mz, ctx + " max");
                                    assertEquals(sf, sz, ctx + " sum");
                                    for (int j = 0; j < n; j++) {
                                        assertEquals(Float.floatToIntBits(c.getAtIndex(F, j)),
                                                Float.floatToIntBits(a.getAtIndex(F, j)), ctx + " weight " + j);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /**
     * Weights written to an array (expInto) are the bits expFrom writes back into the row, with the same sum:
     * full and partial vectors, limits inside the row, a row with no allowed key (limit 0 or max -inf).
     */
    @Test
    void expIntoWritesTheBitsOfExpFrom() {
        SplittableRandom r = new SplittableRandom(17);
        try (Arena arena = Arena.ofConfined()) {
            for (int n : new int[] {1, 7, 16, 17, 33, 128, 129}) {
                for (int trial = 0; trial < 6; trial++) {
                    int limit = trial == 0 ? 0 : trial == 1 ? n : 1 + r.nextInt(n);
                    MemorySegment a = fill(arena, r, n);
                    for (int j = 0; j < n; j++) {
                        a.setAtIndex(F, j, a.getAtIndex(F, j) * 40f);
                    }
                    MemorySegment b = arena.allocate(4L * n, 64);
                    b.copyFrom(a);
                    for (RowKernels k : new RowKernels[] {Vectorization.scalarRows(), Vectorization.rows()}) {
                        a.copyFrom(b);
                        float max = trial == 2 ? Float.NEGATIVE_INFINITY : 40f;
                        float[] dst = new float[n + 3];
                        java.util.Arrays.fill(dst, Float.NaN);
                        float got = k.expInto(a, 0, n, limit, max, dst, 3);
                        MemorySegment c = arena.allocate(4L * n, 64);
                        c.copyFrom(b);
                        float want = k.expFrom(c, 0, n, limit, max);
                        String at = k.name() + " n=" + n + " limit=" + limit + " max=" + max;
                        assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(got), at + ": sum");
                        for (int j = 0; j < n; j++) {
                            assertEquals(Float.floatToRawIntBits(c.getAtIndex(F, j)),
                                    Float.floatToRawIntBits(dst[3 + j]), at + ": weight " + j);
                        }
                    }
                }
            }
        }
    }

    /** Values that are not finite: NaNs of several payloads and signs, and both infinities. */
    private static final float[] NON_FINITE = {Float.NaN, Float.intBitsToFloat(0x7f800001),
        Float.intBitsToFloat(0xffc00000), Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY};

    /**
     * The scan of several rows (ld apart, gaps between them) finds a NaN or an infinity at every position of every
     * row, and nothing else: not the largest finite values, subnormals or -0, not a hit in a gap or past the last
     * row.
     */
    @Test
    void anyNonFiniteOverRowsFindsEveryNaNOrInfinityAndNothingElse() {
        float[] others = {1f, -0f, Float.MAX_VALUE, -Float.MAX_VALUE, Float.MIN_VALUE, -Float.MIN_NORMAL};
        try (Arena arena = Arena.ofConfined()) {
            for (int n : new int[] {0, 1, 15, 16, 17, 64, 65, 128}) {
                for (int rows : new int[] {1, 3, 6}) {
                    long ld = n + 5;
                    MemorySegment s = arena.allocate((rows * ld + 1) * 4);
                    for (long j = 0; j < rows * ld + 1; j++) {
                        s.setAtIndex(F, j, others[(int) (j % others.length)]);
                    }
                    for (RowKernels k : new RowKernels[] {Vectorization.scalarRows(), Vectorization.rows()}) {
                        String at = k.name() + " n=" + n + " rows=" + rows;
                        assertTrue(!k.anyNonFinite(s, 0, ld, rows, n), at + ": all finite");
                        for (long j = 0; j < rows * ld + 1; j++) {
                            float keep = s.getAtIndex(F, j);
                            float bad = NON_FINITE[(int) (j % NON_FINITE.length)];
                            s.setAtIndex(F, j, bad);
                            boolean inRow = j < rows * ld && j % ld < n;
                            assertEquals(inRow, k.anyNonFinite(s, 0, ld, rows, n), at + ": " + bad + " at " + j);
                            s.setAtIndex(F, j, keep);
                        }
                    }
                }
            }
        }
    }

    /** The scan of one row finds a NaN or an infinity at every position of tail-sized rows, and nothing else. */
    @Test
    void anyNonFiniteFindsEveryNaNOrInfinityAndNothingElse() {
        float[] others = {0f, -0f, Float.MAX_VALUE, -Float.MAX_VALUE, Float.MIN_VALUE, Float.MIN_NORMAL};
        try (Arena arena = Arena.ofConfined()) {
            for (int n : new int[] {0, 1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 65, 129}) {
                MemorySegment s = arena.allocate((long) (n + 2) * 4);
                for (int j = 0; j < n + 2; j++) {
                    s.setAtIndex(F, j, others[j % others.length]);
                }
                for (RowKernels k : new RowKernels[] {Vectorization.scalarRows(), Vectorization.rows()}) {
                    assertTrue(!k.anyNonFinite(s, 1, n), k.name() + " n=" + n + ": all finite");
                    for (int j = 0; j < n; j++) {
                        float keep = s.getAtIndex(F, 1 + j);
                        s.setAtIndex(F, 1 + j, NON_FINITE[j % NON_FINITE.length]);
                        assertTrue(k.anyNonFinite(s, 1, n), k.name() + " n=" + n + ": not finite at " + j);
                        s.setAtIndex(F, 1 + j, keep);
                    }
                    // a NaN or an infinity just outside the row is not in it
                    s.setAtIndex(F, 0, Float.NaN);
                    s.setAtIndex(F, n + 1, Float.POSITIVE_INFINITY);
                    assertTrue(!k.anyNonFinite(s, 1, n), k.name() + " n=" + n + ": not finite outside the row");
                    s.setAtIndex(F, 0, 0f);
                    s.setAtIndex(F, n + 1, 0f);
                }
            }
        }
    }

    @Test
    void allMaskedRowGivesZeros() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment s = arena.allocate(40 * 4);
            MemorySegment m = arena.allocate(40 * 4);
            s.fill((byte) 1);
            assertEquals(0f, Vectorization.rows().expRow(s, 0, 40, 40, m, 0, 1, true));
            for (int j = 0; j < 40; j++) {
                assertEquals(0f, s.getAtIndex(F, j));
            }
        }
    }

    @Test
    void packedMatmulMatchesDoubleLoop() {
        SplittableRandom r = new SplittableRandom(3);
        MatmulKernel mm = MatmulKernel.javaVector();
        int[] sizes = {1, 3, 7, 8, 9, 17, 31, 32, 33, 64, 65, 129};
        try (Arena arena = Arena.ofConfined()) {
            for (int trial = 0; trial < 60; trial++) {
                int m = sizes[r.nextInt(sizes.length)];
                int n = sizes[r.nextInt(sizes.length)];
                // every sixth trial a reduction past one pass of the transposed packing (256 steps)
                int k = trial == 0 ? 0 : trial % 6 == 5 ? 250 + r.nextInt(320) : sizes[r.nextInt(sizes.length)];
                Transpose ta = r.nextBoolean() ? Transpose.NO : Transpose.YES;
                Transpose tb = r.nextBoolean() ? Transpose.NO : Transpose.YES;
                float alpha = (float) (r.nextDouble() * 2 - 1);
                float beta = r.nextInt(3) == 0 ? 0f : (float) r.nextDouble();
                int lda = (ta == Transpose.NO ? k : m) + r.nextInt(3);
                int ldb = (tb == Transpose.NO ? n : k) + r.nextInt(3);
                int ldc = n + r.nextInt(3);
                int aRows = ta == Transpose.NO ? m : k;
                int bRows = tb == Transpose.NO ? k : n;
                MemorySegment a = fill(arena, r, (long) Math.max(aRows, 1) * Math.max(lda, 1));
                MemorySegment b = fill(arena, r, (long) Math.max(bRows, 1) * Math.max(ldb, 1));
                MemorySegment c = fill(arena, r, (long) m * ldc);
                double[] want = new double[m * n];
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        double sum = 0;
                        for (int p = 0; p < k; p++) {
                            float x = ta == Transpose.NO ? a.getAtIndex(F, (long) i * lda + p) : a.getAtIndex(F, (long) p * lda + i);
                            float y = tb == Transpose.NO ? b.getAtIndex(F, (long) p * ldb + j) : b.getAtIndex(F, (long) j * ldb + p);
                            sum += (double) x * y;
                        }
                        want[i * n + j] = alpha * sum + beta * c.getAtIndex(F, (long) i * ldc + j);
                    }
                }
                if (beta == 0f) {
                    // with beta = 0 the old C is ignored (MatmulKernel's contract), even NaN or Inf: in full
                    // panels and in the partial last one alike
                    for (int i = 0; i < m; i++) {
                        for (int j = 0; j < n; j++) {
                            c.setAtIndex(F, (long) i * ldc + j, j % 2 == 0 ? Float.NaN : Float.POSITIVE_INFINITY);
                        }
                    }
                }
                mm.matmul(ta, tb, m, n, k, alpha, a, 0, Math.max(lda, 1), b, 0, Math.max(ldb, 1), beta, c, 0, ldc);
                double tol = 4.0 * (k + 2) * 0x1p-24;
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        double got = c.getAtIndex(F, (long) i * ldc + j);
                        double w = want[i * n + j];
                        // written so that NaN fails too
                        if (!(Math.abs(got - w) <= tol + tol * Math.abs(w))) {
                            fail("seed 3 trial " + trial + " m=" + m + " n=" + n + " k=" + k + " " + ta + tb + " at ("
                                    + i + ", " + j + "): got " + got + " want " + w);
                        }
                    }
                }
            }
        }
    }

    /**
     * The few-query dot products ({@code dotRows}, a decode step's q·kᵀ) give, for every key, the bits of one
     * fixed order, modelled here in scalars: lane {@code i} accumulates {@code q[c·L + i] · k[c·L + i]} by fused
     * multiply-adds over the whole vectors {@code c} in order, the lanes are summed by rotations of L/2, ..., 1,
     * and the last {@code k mod L} products follow as a serial fused chain from 0. That covers the straight-line
     * kernels of Dk = 64 and 128 and the four-key kernel of the others alike, so a key's score does not depend on
     * which kernel or which position in a block computed it. Also within a stated bound of a double sum.
     */
    @Test
    void dotRowsGiveTheBitsOfOneFixedOrder() {
        SplittableRandom r = new SplittableRandom(17);
        PackedKernels pk = Vectorization.packed();
        int lanes = jdk.incubator.vector.FloatVector.SPECIES_PREFERRED.length();
        Assumptions.assumeTrue(lanes <= 16, "the model follows Lanes.sum's rotations up to 16 lanes");
        try (Arena arena = Arena.ofConfined()) {
            for (int k : new int[] {64, 128, 1, 15, 17, 48, 100, 256}) {
                for (int n : new int[] {1, 3, 4, 5, 37}) {
                    int m = 1 + r.nextInt(2);
                    int ldb = k + (r.nextBoolean() ? 0 : 1 + r.nextInt(20));
                    int lds = n + r.nextInt(3);
                    int aOff = r.nextInt(4);
                    float[] a = new float[aOff + m * k];
                    for (int i = 0; i < a.length; i++) {
                        a[i] = (float) (r.nextDouble() * 2 - 1);
                    }
                    long bOff = r.nextInt(5);
                    MemorySegment b = fill(arena, r, bOff + (long) n * ldb);
                    MemorySegment out = arena.allocate((long) m * lds * Float.BYTES);
                    pk.dotRows(a, aOff, k, m, b, bOff, ldb, n, k, out, 0, lds);
                    for (int row = 0; row < m; row++) {
                        for (int j = 0; j < n; j++) {
                            float[] lane = new float[lanes];
                            int whole = k / lanes * lanes;
                            double exact = 0;
                            for (int p = 0; p < k; p++) {
                                float x = a[aOff + row * k + p];
                                float y = b.getAtIndex(F, bOff + (long) j * ldb + p);
                                exact += (double) x * y;
                                if (p < whole) {
                                    lane[p % lanes] = Math.fma(x, y, lane[p % lanes]);
                                }
                            }
                            for (int h = lanes / 2; h >= 1; h /= 2) {
                                float[] next = new float[lanes];
                                for (int i = 0; i < lanes; i++) {
                                    next[i] = lane[i] + lane[(i + h) % lanes];
                                }
                                lane = next;
                            }
                            float tail = 0f;
                            for (int p = whole; p < k; p++) {
                                tail = Math.fma(a[aOff + row * k + p], b.getAtIndex(F, bOff + (long) j * ldb + p), tail);
                            }
                            float want = lane[0] + tail;
                            float got = out.getAtIndex(F, (long) row * lds + j);
                            String at = "k=" + k + " n=" + n + " row " + row + " key " + j;
                            assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(got),
                                    at + ": got " + got + " want " + want);
                            double tol = 2.0 * (k + 2) * 0x1p-24 * k;
                            assertTrue(Math.abs(got - exact) <= tol, at + ": " + got + " vs double " + exact);
                        }
                    }
                }
            }
        }
    }

    /**
     * Packing a transposed operand (storage [n, k], the in-register 16 × 16 transposes where whole blocks allow,
     * gathers elsewhere) gives the same panels, bit for bit, as packing an explicitly transposed copy [k, n]
     * row by row: whole, partial and ragged panels, reductions past one gather pass, subnormals flushed or kept.
     */
    @Test
    void transposedPackingMatchesPackingAnExplicitTranspose() {
        PackedKernels pk = Vectorization.packed();
        SplittableRandom r = new SplittableRandom(11);
        int[][] shapes = {{16, 16}, {64, 64}, {128, 64}, {48, 32}, {32, 128}, {80, 16}, {17, 16}, {64, 17},
            {130, 300}, {256, 512}, {1, 1}, {96, 48}};
        try (Arena arena = Arena.ofConfined()) {
            for (int[] shape : shapes) {
                for (boolean flush : new boolean[] {false, true}) {
                    int n = shape[0];
                    int k = shape[1];
                    int ldb = k + 3;
                    MemorySegment b = fill(arena, r, (long) n * ldb);
                    MemorySegment bt = arena.allocate((long) k * n * 4, 64);
                    for (int j = 0; j < n; j++) {
                        for (int p = 0; p < k; p++) {
                            float x = b.getAtIndex(F, (long) j * ldb + p);
                            if (r.nextInt(7) == 0) {
                                // a subnormal, of either sign
                                x = Math.copySign(Float.MIN_VALUE * (1 + r.nextInt(1000)), x);
                                b.setAtIndex(F, (long) j * ldb + p, x);
                            }
                            bt.setAtIndex(F, (long) p * n + j, x);
                        }
                    }
                    PackBuffer viaT = new PackBuffer();
                    PackBuffer viaRows = new PackBuffer();
                    viaT.ensure(pk.packedSize(k, n));
                    viaRows.ensure(pk.packedSize(k, n));
                    java.util.Arrays.fill(viaT.array(), Float.NaN);
                    int at = pk.packB(true, b, 0, ldb, k, n, flush, viaT);
                    int at2 = pk.packB(false, bt, 0, n, k, n, flush, viaRows);
                    int len = pk.packedSize(k, n) - HeapAlignment.SLACK;
                    for (int i = 0; i < len; i++) {
                        int got = Float.floatToRawIntBits(viaT.array()[at + i]);
                        int want = Float.floatToRawIntBits(viaRows.array()[at2 + i]);
                        if (got != want) {
                            fail("n=" + n + " k=" + k + " flush=" + flush + " at " + i + ": got "
                                    + viaT.array()[at + i] + " want " + viaRows.array()[at2 + i]);
                        }
                    }
                }
            }
        }
    }

    /**
     * {@code gemm} copies blocks of 6 and 4 rows of A step by step for its kernels (short reductions only) and
     * other rows as they are; each output element is still one fused multiply-add chain over the steps in order,
     * so it has the bits of the same row multiplied alone ({@code gemmRows} on one row-major row). Over row counts
     * that leave every block size, reductions with and without a partial vector of steps (and past the step-major
     * limit), A stored either way, and both of gemm's orders (all of A in its buffer, or a block at a time).
     */
    @Test
    void gemmGivesTheBitsOfEachRowAlone() {
        PackedKernels pk = Vectorization.packed();
        SplittableRandom r = new SplittableRandom(17);
        int[] ms = {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 13, 64, 65};
        int[] ks = {1, 7, 15, 16, 17, 33, 64, 65, 130};
        int[] ns = {64, 65, 128, 200};
        try (Arena arena = Arena.ofConfined()) {
            for (int trial = 0; trial < 80; trial++) {
                int m = ms[trial % ms.length];
                int k = ks[r.nextInt(ks.length)];
                int n = ns[r.nextInt(ns.length)];
                boolean aTransposed = r.nextInt(4) == 0;
                boolean allOfA = r.nextBoolean();
                float beta = r.nextInt(3) == 0 ? 0.5f : 0f;
                int lda = (aTransposed ? m : k) + r.nextInt(3);
                MemorySegment a = fill(arena, r, (long) (aTransposed ? k : m) * lda);
                MemorySegment b = fill(arena, r, (long) n * k);
                PackBuffer packed = new PackBuffer();
                packed.ensure(pk.packedSize(k, n));
                int at = pk.packB(true, b, 0, k, k, n, false, packed);
                float[] scale = new float[m];
                for (int i = 0; i < m; i++) {
                    scale[i] = (float) (r.nextDouble() + 0.5);
                }
                int ldc = n + 3;
                MemorySegment c0 = fill(arena, r, (long) m * ldc);
                MemorySegment c = arena.allocate(c0.byteSize(), 64).copyFrom(c0);
                MemorySegment want = arena.allocate(c0.byteSize(), 64).copyFrom(c0);
                float[] abuf = new float[allOfA ? Math.max(m * k, 8 * k) : 8 * k];
                pk.gemm(aTransposed, a, 0, lda, m, n, k, abuf, packed.array(), at, k, n, 0, 0, scale, beta, c, 0, ldc);
                float[] row = new float[8 * k];
                for (int i = 0; i < m; i++) {
                    for (int p = 0; p < k; p++) {
                        row[p] = a.getAtIndex(F, aTransposed ? (long) p * lda + i : (long) i * lda + p);
                    }
                    pk.gemmRows(row, i, 1, n, k, packed.array(), at, k, n, 0, 0, scale, beta, want, (long) i * ldc,
                            ldc);
                }
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        float got = c.getAtIndex(F, (long) i * ldc + j);
                        float w = want.getAtIndex(F, (long) i * ldc + j);
                        if (Float.floatToRawIntBits(got) != Float.floatToRawIntBits(w)) {
                            fail("m=" + m + " n=" + n + " k=" + k + " transposed=" + aTransposed + " allOfA=" + allOfA
                                    + " beta=" + beta + " at (" + i + ", " + j + "): got " + got + " want " + w);
                        }
                    }
                }
            }
        }
    }

    /**
     * The few-query row updates ({@code axpyRows}, a decode step's p·v) give, for every output element, the bits of
     * one fixed order, modelled here in scalars: per block of {@code block} keys and per run of
     * {@code SUM_KEYS} keys within it, a fused chain over the run's keys in order from 0, added to the sum of the
     * runs before it, times the row's scale at the very end. Whatever group of output vectors a kernel holds at
     * once (eight, four, one, a masked tail), each column is one such chain, so this covers them all.
     */
    @Test
    void axpyRowsGiveTheBitsOfOneFixedOrder() {
        SplittableRandom r = new SplittableRandom(23);
        PackedKernels pk = Vectorization.packed();
        int run = VectorPackedKernels.SUM_KEYS;
        try (Arena arena = Arena.ofConfined()) {
            for (int d : new int[] {128, 256, 136, 64, 20, 8, 3}) {
                for (int n : new int[] {1, run - 1, run + 1, 2 * run + 37}) {
                    for (int block : new int[] {n, 100}) {
                        int m = 2;
                        int ldp = n + r.nextInt(3);
                        int ldv = d + (r.nextBoolean() ? 0 : 1 + r.nextInt(9));
                        int ldc = d + r.nextInt(5);
                        MemorySegment p = fill(arena, r, (long) m * ldp);
                        MemorySegment v = fill(arena, r, (long) n * ldv);
                        MemorySegment c = arena.allocate((long) m * ldc * Float.BYTES);
                        float[] scale = {(float) r.nextDouble(), (float) r.nextDouble()};
                        pk.axpyRows(p, 0, ldp, m, v, 0, ldv, n, d, block, scale, c, 0, ldc);
                        for (int row = 0; row < m; row++) {
                            for (int col = 0; col < d; col++) {
                                float acc = 0f;
                                boolean any = false;
                                for (int b0 = 0; b0 < n; b0 += block) {
                                    int bEnd = Math.min(n, b0 + block);
                                    for (int r0 = b0; r0 < bEnd; r0 += run) {
                                        float sum = 0f;
                                        for (int j = r0; j < Math.min(bEnd, r0 + run); j++) {
                                            sum = Math.fma(p.getAtIndex(F, (long) row * ldp + j),
                                                    v.getAtIndex(F, (long) j * ldv + col), sum);
                                        }
                                        acc = any ? sum + acc : sum;
                                        any = true;
                                    }
                                }
                                float want = acc * scale[row];
                                float got = c.getAtIndex(F, (long) row * ldc + col);
                                assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(got),
                                        "d=" + d + " n=" + n + " block=" + block + " row " + row + " column " + col
                                                + ": got " + got + " want " + want);
                            }
                        }
                    }
                }
            }
        }
    }

    private static MemorySegment fill(Arena arena, SplittableRandom r, long n) {
        MemorySegment s = arena.allocate(Math.max(n, 1) * 4, 64);
        for (long i = 0; i < n; i++) {
            s.setAtIndex(F, i, (float) (r.nextDouble() * 2 - 1));
        }
        return s;
    }
}
