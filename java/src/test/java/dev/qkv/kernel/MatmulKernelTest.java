package dev.qkv.kernel;

import dev.qkv.attention.Allocations;
import dev.qkv.blas.Transpose;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * Every {@link MatmulKernel} against a naive double-precision loop, over all transpose combinations, tail
 * sizes, leading dimensions wider than the rows, non-zero offsets and alpha/beta; and every bad argument
 * rejected before the kernel runs.
 */
class MatmulKernelTest {

    static final long SEED = Long.getLong("qkv.test.seed", 20261125L);
    static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;
    static final int[] SIZES = {1, 3, 7, 17, 63, 64, 65, 129};

    static List<MatmulKernel> kernels() {
        return List.of(MatmulKernel.openBlas(), MatmulKernel.javaScalar());
    }

    static Stream<Named<MatmulKernel>> namedKernels() {
        return kernels().stream().map(k -> Named.of(k.name(), k));
    }

    /** One product; {@code toString} is what a failure prints. */
    record Case(long seed, Transpose ta, Transpose tb, int m, int n, int k, int padA, int padB, int padC,
                long offA, long offB, long offC, float alpha, float beta) {
    }

    static Stream<Arguments> cases() {
        Random r = new Random(SEED);
        float[][] alphaBeta = {{1, 0}, {0.5f, -2}, {-1, 1}, {2, 0.25f}, {0, 3}};
        List<Arguments> out = new ArrayList<>();
        for (MatmulKernel kernel : kernels()) {
            int i = 0;
            for (Transpose ta : Transpose.values()) {
                for (Transpose tb : Transpose.values()) {
                    for (int rep = 0; rep < 8; rep++, i++) {
                        float[] ab = alphaBeta[i % alphaBeta.length];
                        Case c = new Case(r.nextLong(), ta, tb, SIZES[r.nextInt(SIZES.length)],
                                SIZES[r.nextInt(SIZES.length)], rep == 0 ? 0 : SIZES[r.nextInt(SIZES.length)],
                                r.nextInt(3) * 5, r.nextInt(3) * 3, r.nextInt(2) * 7,
                                r.nextInt(3) * 11, r.nextInt(3) * 13, r.nextInt(3) * 17, ab[0], ab[1]);
                        out.add(Arguments.of(Named.of(kernel.name(), kernel), c));
                    }
                }
            }
        }
        return out.stream();
    }

    /** A case's operands: random A, B and C with their leading dimensions and offsets. */
    record Operands(MemorySegment a, int lda, MemorySegment b, int ldb, MemorySegment c, int ldc) {
    }

    static Operands operands(Arena arena, Case c) {
        Random r = new Random(c.seed());
        // stored shapes: A [m, k] or [k, m]; B [k, n] or [n, k]; C [m, n]
        int aRows = c.ta() == Transpose.NO ? c.m() : c.k();
        int aCols = c.ta() == Transpose.NO ? c.k() : c.m();
        int bRows = c.tb() == Transpose.NO ? c.k() : c.n();
        int bCols = c.tb() == Transpose.NO ? c.n() : c.k();
        int lda = Math.max(1, aCols + c.padA());
        int ldb = Math.max(1, bCols + c.padB());
        int ldc = c.n() + c.padC();
        MemorySegment a = random(arena, r, c.offA() + (long) aRows * lda);
        MemorySegment b = random(arena, r, c.offB() + (long) bRows * ldb);
        MemorySegment cs = random(arena, r, c.offC() + (long) c.m() * ldc);
        return new Operands(a, lda, b, ldb, cs, ldc);
    }

    /** The cases of {@link #cases} for the scalar kernel. */
    static Stream<Arguments> scalarCases() {
        return cases().filter(a -> ((Named<?>) a.get()[0]).getPayload() == MatmulKernel.javaScalar());
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("cases")
    void matchesNaiveLoop(MatmulKernel kernel, Case c) {
        try (Arena arena = Arena.ofConfined()) {
            Operands o = operands(arena, c);
            MemorySegment a = o.a();
            MemorySegment b = o.b();
            MemorySegment cs = o.c();
            int lda = o.lda();
            int ldb = o.ldb();
            int ldc = o.ldc();
            float[] before = cs.toArray(ValueLayout.JAVA_FLOAT);
            if (c.beta() == 0) {
                // with beta = 0 the old C is ignored, even NaN
                for (int i = 0; i < c.m(); i++) {
                    for (int j = 0; j < c.n(); j++) {
                        cs.setAtIndex(F, c.offC() + (long) i * ldc + j, Float.NaN);
                    }
                }
            }
            kernel.matmul(c.ta(), c.tb(), c.m(), c.n(), c.k(), c.alpha(), a, c.offA(), lda, b, c.offB(), ldb,
                    c.beta(), cs, c.offC(), ldc);
            List<String> bad = new ArrayList<>();
            for (int i = 0; i < c.m(); i++) {
                for (int j = 0; j < c.n(); j++) {
                    double dot = 0;
                    double abs = 0;
                    for (int p = 0; p < c.k(); p++) {
                        double x = a.getAtIndex(F, c.offA() + (c.ta() == Transpose.NO ? (long) i * lda + p : (long) p * lda + i));
                        double y = b.getAtIndex(F, c.offB() + (c.tb() == Transpose.NO ? (long) p * ldb + j : (long) j * ldb + p));
                        dot += x * y;
                        abs += Math.abs(x * y);
                    }
                    long at = c.offC() + (long) i * ldc + j;
                    double old = c.beta() == 0 ? 0 : c.beta() * (double) before[(int) at];
                    double want = c.alpha() * dot + old;
                    // the classic bound for a float dot product of length k plus the alpha/beta roundings
                    double tol = 2 * (c.k() + 3) * 0x1p-24 * (Math.abs(c.alpha()) * abs + Math.abs(old));
                    float got = cs.getAtIndex(F, at);
                    if (!(Math.abs(got - want) <= tol) && bad.size() < 6) {
                        bad.add("[" + i + ", " + j + "] got " + got + " want " + want + " tol " + tol);
                    }
                }
            }
            // padding of C and the area before its offset are untouched
            for (int idx = 0; idx < before.length; idx++) {
                long rel = idx - c.offC();
                boolean inside = rel >= 0 && rel / ldc < c.m() && rel % ldc < c.n();
                if (!inside && Float.floatToRawIntBits(cs.getAtIndex(F, idx)) != Float.floatToRawIntBits(before[idx])) {
                    bad.add("element " + idx + " outside C changed");
                    break;
                }
            }
            if (!bad.isEmpty()) {
                fail(kernel.name() + " " + c + ": " + String.join("; ", bad));
            }
        }
    }

    /**
     * The scalar kernel copies op(B) to the heap and accumulates four rows of C at a time; its sums must still be
     * the plain float loop's, bit for bit: {@code beta · c}, then {@code + (alpha · a_ip) · b_pj} for p in order.
     * Every case of {@link #cases} (all transposes, row counts that are and are not multiples of four, k = 0).
     */
    @ParameterizedTest(name = "{1}")
    @MethodSource("scalarCases")
    void javaScalarHasThePlainFloatLoopsBits(MatmulKernel kernel, Case c) {
        assertPlainLoopBits(kernel, c);
    }

    /**
     * The same for products past the scalar kernel's 4 MiB copy of op(B): columns in two blocks (k·n over 2^20
     * floats), and a reduction longer than 2^20 (the plain loops), both B layouts.
     */
    @Test
    void javaScalarWideAndLongProductsHaveThePlainFloatLoopsBits() {
        for (Transpose tb : Transpose.values()) {
            assertPlainLoopBits(MatmulKernel.javaScalar(),
                    new Case(31, Transpose.NO, tb, 5, 16411, 70, 0, 3, 0, 0, 0, 5, 0.5f, 1f));
            assertPlainLoopBits(MatmulKernel.javaScalar(),
                    new Case(32, Transpose.YES, tb, 2, 3, (1 << 20) + 7, 0, 0, 0, 0, 0, 0, 1f, 0f));
        }
    }

    /** Runs case {@code c} and compares every element of C with the plain float loop, bit for bit. */
    private static void assertPlainLoopBits(MatmulKernel kernel, Case c) {
        try (Arena arena = Arena.ofConfined()) {
            Operands o = operands(arena, c);
            float[] before = o.c().toArray(ValueLayout.JAVA_FLOAT);
            kernel.matmul(c.ta(), c.tb(), c.m(), c.n(), c.k(), c.alpha(), o.a(), c.offA(), o.lda(), o.b(), c.offB(),
                    o.ldb(), c.beta(), o.c(), c.offC(), o.ldc());
            for (int i = 0; i < c.m(); i++) {
                for (int j = 0; j < c.n(); j++) {
                    long at = c.offC() + (long) i * o.ldc() + j;
                    float want = c.beta() == 0 ? 0f : c.beta() * before[(int) at];
                    for (int p = 0; p < c.k(); p++) {
                        long x = c.offA() + (c.ta() == Transpose.NO ? (long) i * o.lda() + p : (long) p * o.lda() + i);
                        long y = c.offB() + (c.tb() == Transpose.NO ? (long) p * o.ldb() + j : (long) j * o.ldb() + p);
                        want = want + (c.alpha() * o.a().getAtIndex(F, x)) * o.b().getAtIndex(F, y);
                    }
                    float got = o.c().getAtIndex(F, at);
                    if (Float.floatToRawIntBits(got) != Float.floatToRawIntBits(want)) {
                        fail(c + ": [" + i + ", " + j + "] got " + got + ", the plain loop " + want);
                    }
                }
            }
        }
    }

    /**
     * The scalar kernel's heap copies are per thread and grown once: in steady state its calls allocate nothing
     * (both B layouts, a row count that is not a multiple of four, beta 0 and 1).
     */
    @Test
    void javaScalarSteadyStateAllocatesNothing() {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(7);
            MemorySegment a = random(arena, r, 37 * 64);
            MemorySegment b = random(arena, r, 70 * 64);
            MemorySegment c = random(arena, r, 37 * 70);
            MatmulKernel k = MatmulKernel.javaScalar();
            Allocations.assertSteadyStateAllocatesNothing("javaScalar matmul", () -> {
                k.matmul(Transpose.NO, Transpose.YES, 37, 70, 64, 0.5f, a, 0, 64, b, 0, 64, 0f, c, 0, 70);
                k.matmul(Transpose.NO, Transpose.NO, 37, 64, 70, 0.01f, c, 0, 70, b, 0, 64, 1f, a, 0, 64);
            });
        }
    }

    private static MemorySegment random(Arena arena, Random r, long floats) {
        MemorySegment s = arena.allocate(Math.max(1, floats) * Float.BYTES, 64);
        for (long i = 0; i < floats; i++) {
            s.setAtIndex(F, i, 2 * r.nextFloat() - 1);
        }
        return s;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("namedKernels")
    void emptyProductsScaleOrLeaveC(MatmulKernel kernel) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocate(4);
            MemorySegment c = arena.allocate(6 * 4);
            c.fill((byte) 0);
            c.setAtIndex(F, 0, 5f);
            // k = 0: C = beta · C, and no element of a or b is read even at an offset past their ends
            kernel.matmul(Transpose.NO, Transpose.NO, 2, 3, 0, 1f, a, 9, 1, a, 9, 3, 0.5f, c, 0, 3);
            assertEquals(2.5f, c.getAtIndex(F, 0));
            // m = 0 or n = 0: nothing to do
            MemorySegment b = arena.allocate(6 * 4);
            kernel.matmul(Transpose.NO, Transpose.NO, 0, 3, 2, 1f, a, 9, 2, b, 0, 3, 0f, c, 0, 3);
            kernel.matmul(Transpose.NO, Transpose.NO, 2, 0, 3, 1f, b, 0, 3, a, 9, 1, 0f, c, 0, 1);
            assertEquals(2.5f, c.getAtIndex(F, 0));
        }
    }

    /**
     * alpha = 0: A and B (A and x) are not read, as in BLAS, so NaN and Inf there do not reach C: C = beta · C on
     * every kernel and at every size (OpenBLAS's small-matrix kernels read them, so its sgemm gave NaN at 8 and
     * 0 at 200; the Java kernels gave NaN). Also the Java vector kernel.
     */
    @Test
    void alphaZeroReadsNeitherOperand() {
        List<MatmulKernel> all = new ArrayList<>(kernels());
        all.add(MatmulKernel.javaVector());
        try (Arena arena = Arena.ofConfined()) {
            for (MatmulKernel kernel : all) {
                for (int s : new int[] {8, 200}) {
                    MemorySegment a = arena.allocate((long) s * s * 4, 64);
                    MemorySegment b = arena.allocate((long) s * s * 4, 64);
                    for (long i = 0; i < (long) s * s; i++) {
                        a.setAtIndex(F, i, i % 3 == 0 ? Float.NaN : Float.POSITIVE_INFINITY);
                        b.setAtIndex(F, i, 1f);
                    }
                    for (float beta : new float[] {0f, 1f, 0.5f}) {
                        MemorySegment c = arena.allocate((long) s * s * 4, 64);
                        for (long i = 0; i < (long) s * s; i++) {
                            c.setAtIndex(F, i, 5f);
                        }
                        kernel.matmul(Transpose.NO, Transpose.NO, s, s, s, 0f, a, 0, s, b, 0, s, beta, c, 0, s);
                        for (long i = 0; i < (long) s * s; i++) {
                            assertEquals(beta * 5f, c.getAtIndex(F, i), kernel.name() + " sgemm s=" + s + " beta=" + beta);
                        }
                        MemorySegment y = arena.allocate((long) s * 4, 64);
                        for (long i = 0; i < s; i++) {
                            y.setAtIndex(F, i, 5f);
                        }
                        kernel.matvec(Transpose.NO, s, s, 0f, a, 0, s, b, 0, 1, beta, y, 0, 1);
                        for (long i = 0; i < s; i++) {
                            assertEquals(beta * 5f, y.getAtIndex(F, i), kernel.name() + " sgemv s=" + s + " beta=" + beta);
                        }
                    }
                }
            }
        }
    }

    /**
     * A reduction just longer than a float[] of packed one-column panels holds (2^31 / panel width steps: 2^26 on
     * AVX-512): the Java vector product packed all of op(B) into one array and threw an ArithmeticException from
     * {@code packedSize}, where OpenBLAS and the scalar kernel compute the product. a and b are one sparse file,
     * zero but for four steps on both sides of a chunk bound and at the ends, so C = alpha · Σ a_p² + beta · C
     * in closed form, for every storage order of A and B.
     */
    @Test
    void javaVectorTakesReductionsLongerThanAPackedArray(@TempDir Path dir) throws IOException {
        PackedKernels pk = Vectorization.packed();
        assumeTrue(pk != null, "the Java vector kernels need the Vector API");
        // floats per reduction step of a one-column panel (its width)
        int width = pk.packedSize(2, 1) - pk.packedSize(1, 1);
        int k = Integer.MAX_VALUE / width + 64;
        long[] at = {0, PackedMatmul.KC - 1, PackedMatmul.KC, k - 1L};
        Path file = dir.resolve("ab.bin");
        // the last write, at step k - 1, makes the file k floats long; the rest is a hole
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE, StandardOpenOption.WRITE)) {
            for (int i = 0; i < at.length; i++) {
                ch.write(ByteBuffer.allocate(4).order(ByteOrder.nativeOrder()).putFloat(0, i + 1f), at[i] * 4);
            }
        }
        try (Arena arena = Arena.ofConfined(); FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            MemorySegment ab = ch.map(FileChannel.MapMode.READ_ONLY, 0, (long) k * 4, arena);
            MemorySegment c = arena.allocate(4, 64);
            for (Transpose ta : Transpose.values()) {
                for (Transpose tb : Transpose.values()) {
                    // a [1, k] stored [1, k] (lda k) or [k, 1] (lda 1); b [k, 1] likewise
                    int lda = ta == Transpose.NO ? k : 1;
                    int ldb = tb == Transpose.NO ? 1 : k;
                    c.setAtIndex(F, 0, 8f);
                    MatmulKernel.javaVector().matmul(ta, tb, 1, 1, k, 0.5f, ab, 0, lda, ab, 0, ldb, 0.25f, c, 0, 1);
                    // 0.5 · (1 + 4 + 9 + 16) + 0.25 · 8, exact in float
                    assertEquals(17f, c.getAtIndex(F, 0), "k=" + k + " " + ta + " " + tb);
                }
            }
        }
    }

    /** Every bad argument is an exception, and C keeps its sentinel: the kernel never ran. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("namedKernels")
    void badArgumentsAreRejectedBeforeTheCall(MatmulKernel kernel) {
        Transpose no = Transpose.NO;
        Transpose yes = Transpose.YES;
        try (Arena arena = Arena.ofConfined()) {
            // A [4, 5], B [5, 6], C [4, 6], dense
            MemorySegment a = arena.allocate(20 * 4, 64);
            MemorySegment b = arena.allocate(30 * 4, 64);
            MemorySegment c = arena.allocate(24 * 4, 64);
            c.fill((byte) 0x7f);
            MemorySegment big = arena.allocate(200 * 4, 64);
            expect(IllegalArgumentException.class, c, "leading dimension",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, 0, 4, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "leading dimension",
                    () -> kernel.matmul(yes, no, 4, 6, 5, 1f, a, 0, 3, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "leading dimension",
                    () -> kernel.matmul(no, yes, 4, 6, 5, 1f, a, 0, 5, b, 0, 4, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "leading dimension",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 5));
            expect(IllegalArgumentException.class, c, "segment holds 20",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, 1, 5, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "segment holds 20",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, 0, 6, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "segment holds 30",
                    () -> kernel.matmul(no, no, 4, 7, 5, 1f, a, 0, 5, b, 0, 7, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "segment holds 24",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 7));
            expect(IllegalArgumentException.class, c, "negative offset",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, -1, 5, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "segment holds",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, Long.MAX_VALUE - 3, 5, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "negative size",
                    () -> kernel.matmul(no, no, -4, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "negative size",
                    () -> kernel.matmul(no, no, 4, -6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalArgumentException.class, c, "negative size",
                    () -> kernel.matmul(no, no, 4, 6, -5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
            // the API's rule for null (README, exception table): NullPointerException naming the parameter
            expect(NullPointerException.class, c, "ta is null",
                    () -> kernel.matmul(null, no, 4, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
            expect(NullPointerException.class, c, "a is null",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, null, 0, 5, b, 0, 6, 0f, c, 0, 6));
            // C overlapping A or B, in the same segment or through another slice of it
            big.fill((byte) 0x7f);
            expect(IllegalArgumentException.class, big, "overlaps input a",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, big, 0, 5, b, 0, 6, 0f, big, 19, 6));
            expect(IllegalArgumentException.class, big, "overlaps input b",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, 0, 5, big.asSlice(40), 0, 6, 0f, big, 0, 6));
            kernel.matmul(no, no, 4, 6, 5, 1f, big, 0, 5, b, 0, 6, 0f, big, 20, 6);
            // a closed arena
            Arena dead = Arena.ofConfined();
            MemorySegment gone = dead.allocate(20 * 4, 64);
            dead.close();
            expect(IllegalStateException.class, c, "closed",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, gone, 0, 5, b, 0, 6, 0f, c, 0, 6));
            expect(IllegalStateException.class, null, "closed",
                    () -> kernel.matmul(no, no, 4, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, gone, 0, 5));
        }
    }

    /** OpenBLAS reads raw addresses, so the native kernel refuses heap segments; the Java kernel takes them. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("namedKernels")
    void heapSegments(MatmulKernel kernel) {
        MemorySegment a = MemorySegment.ofArray(new float[] {1, 2, 3, 4});
        MemorySegment b = MemorySegment.ofArray(new float[] {5, 6, 7, 8});
        float[] out = new float[4];
        MemorySegment c = MemorySegment.ofArray(out);
        if (kernel.name().equals("native")) {
            expect(IllegalArgumentException.class, c, "heap segment",
                    () -> kernel.matmul(Transpose.NO, Transpose.NO, 2, 2, 2, 1f, a, 0, 2, b, 0, 2, 0f, c, 0, 2));
        } else {
            kernel.matmul(Transpose.NO, Transpose.NO, 2, 2, 2, 1f, a, 0, 2, b, 0, 2, 0f, c, 0, 2);
            assertEquals(List.of(19f, 22f, 43f, 50f), List.of(out[0], out[1], out[2], out[3]));
            // the same heap array as both input and output is an overlap
            expect(IllegalArgumentException.class, null, "overlaps",
                    () -> kernel.matmul(Transpose.NO, Transpose.NO, 2, 2, 2, 1f, c, 0, 2, b, 0, 2, 0f, c, 0, 2));
        }
    }

    /**
     * A and B (or A and x) given as read-only views of C's heap array are refused as writable ones are: the
     * overlap check compared {@link MemorySegment#heapBase}, empty for a read-only segment, and took them for
     * another array. Read-only views of other arrays, and of C's array beside C, are no overlap and give what
     * writable copies give. (The native kernel refuses heap segments: {@link #heapSegments}.)
     */
    @Test
    void readOnlyHeapViewsOfTheOutputsArray() {
        Transpose no = Transpose.NO;
        for (MatmulKernel kernel : List.of(MatmulKernel.javaScalar(), MatmulKernel.java())) {
            String what = kernel.name();
            // [A 4x4 | B 4x4 | C 4x4]
            float[] arr = new float[48];
            for (int i = 0; i < arr.length; i++) {
                arr[i] = i % 7 - 3;
            }
            float[] copy = arr.clone();
            MemorySegment rw = MemorySegment.ofArray(arr);
            MemorySegment ro = rw.asReadOnly();
            // C at [12, 28): A's last row, B's first three rows; C at [28, 44): B's last row
            expect(IllegalArgumentException.class, rw, "overlaps input a",
                    () -> kernel.matmul(no, no, 4, 4, 4, 1f, ro, 0, 4, ro, 16, 4, 0f, rw, 12, 4));
            expect(IllegalArgumentException.class, rw, "overlaps input b",
                    () -> kernel.matmul(no, no, 4, 4, 4, 1f, ro, 0, 4, ro, 16, 4, 0f, rw, 28, 4));
            // y [4] over x's last element, and over A's last row
            expect(IllegalArgumentException.class, rw, "overlaps input x",
                    () -> kernel.matvec(no, 4, 4, 1f, ro, 0, 4, ro, 16, 1, 0f, rw, 19, 1));
            expect(IllegalArgumentException.class, rw, "overlaps input a",
                    () -> kernel.matvec(no, 4, 4, 1f, ro, 0, 4, ro, 16, 1, 0f, rw, 12, 1));

            // beside C in its own array, and in other arrays (all at offset 0, as C is)
            float[] want = new float[16];
            kernel.matmul(no, no, 4, 4, 4, 1f, MemorySegment.ofArray(copy), 0, 4, MemorySegment.ofArray(copy), 16,
                    4, 0f, MemorySegment.ofArray(want), 0, 4);
            kernel.matmul(no, no, 4, 4, 4, 1f, ro, 0, 4, ro, 16, 4, 0f, rw, 32, 4);
            assertArrayEquals(want, Arrays.copyOfRange(arr, 32, 48), what);
            float[] c = new float[16];
            kernel.matmul(no, no, 4, 4, 4, 1f, MemorySegment.ofArray(copy.clone()).asReadOnly(), 0, 4,
                    MemorySegment.ofArray(copy.clone()).asReadOnly(), 16, 4, 0f, MemorySegment.ofArray(c), 0, 4);
            assertArrayEquals(want, c, what);
            float[] yWant = new float[4];
            kernel.matvec(no, 4, 4, 1f, MemorySegment.ofArray(copy), 0, 4, MemorySegment.ofArray(copy), 16, 1, 0f,
                    MemorySegment.ofArray(yWant), 0, 1);
            kernel.matvec(no, 4, 4, 1f, ro, 0, 4, ro, 16, 1, 0f, rw, 32, 1);
            assertArrayEquals(yWant, Arrays.copyOfRange(arr, 32, 36), what);
            float[] y = new float[4];
            kernel.matvec(no, 4, 4, 1f, MemorySegment.ofArray(copy.clone()).asReadOnly(), 0, 4,
                    MemorySegment.ofArray(copy.clone()).asReadOnly(), 16, 1, 0f, MemorySegment.ofArray(y), 0, 1);
            assertArrayEquals(yWant, y, what);
        }
    }

    private static <T extends Throwable> void expect(Class<T> type, MemorySegment untouched, String fragment,
                                                     Runnable call) {
        byte[] before = untouched == null ? null : untouched.toArray(ValueLayout.JAVA_BYTE);
        T e = assertThrows(type, call::run);
        assertTrue(e.getMessage() != null && e.getMessage().contains(fragment),
                "message \"" + e.getMessage() + "\" should contain \"" + fragment + "\"");
        if (untouched != null) {
            assertTrue(java.util.Arrays.equals(before, untouched.toArray(ValueLayout.JAVA_BYTE)),
                    "C was written before the call was rejected");
        }
    }
}
