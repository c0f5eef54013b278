package dev.qkv.blas;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The OpenBLAS layer in this JVM: the typed {@link OpenBlas#matmul} over tensor views (row-major, transposed,
 * sliced) against a naive loop, its argument checks, {@link OpenBlas#sgemm} refusing heap memory, and the
 * thread setting. Loading itself is tested in child JVMs by {@link LoaderTest}.
 */
class OpenBlasTest {

    private static final OpenBlas BLAS = OpenBlas.get();

    private static Tensor random(Arena arena, Random r, long... shape) {
        float[] x = new float[(int) (shape[0] * shape[1])];
        for (int i = 0; i < x.length; i++) {
            x[i] = 2 * r.nextFloat() - 1;
        }
        return Tensor.of(arena, x, shape);
    }

    /** {@code alpha · op(a) · op(b) + beta · c0} in double, and the bound of its float evaluation. */
    private static void check(String ctx, Transpose ta, Tensor a, Transpose tb, Tensor b, float alpha, float beta,
                              float[] c0, Tensor c) {
        Tensor oa = ta == Transpose.NO ? a : a.transpose();
        Tensor ob = tb == Transpose.NO ? b : b.transpose();
        long m = oa.size(0), k = oa.size(1), n = ob.size(1);
        List<String> bad = new ArrayList<>();
        for (long i = 0; i < m; i++) {
            for (long j = 0; j < n; j++) {
                double dot = 0, abs = 0;
                for (long p = 0; p < k; p++) {
                    double x = (double) oa.get(i, p) * ob.get(p, j);
                    dot += x;
                    abs += Math.abs(x);
                }
                double old = beta * (double) c0[(int) (i * n + j)];
                double want = alpha * dot + old;
                double tol = 2 * (k + 3) * 0x1p-24 * (Math.abs(alpha) * abs + Math.abs(old));
                float got = c.get(i, j);
                if (!(Math.abs(got - want) <= tol) && bad.size() < 6) {
                    bad.add("[" + i + ", " + j + "] got " + got + " want " + want);
                }
            }
        }
        if (!bad.isEmpty()) {
            fail(ctx + ": " + String.join("; ", bad));
        }
    }

    @Test
    void matmulOverViews() {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(5);
            int m = 17, k = 65, n = 7;
            for (Transpose ta : Transpose.values()) {
                for (Transpose tb : Transpose.values()) {
                    // a as stored [m, k] or [k, m], in four forms: dense, a slice of a wider matrix, the transpose
                    // of a dense matrix stored the other way round, and a head selected from a rank-3 tensor
                    long ar = ta == Transpose.NO ? m : k, ac = ta == Transpose.NO ? k : m;
                    long br = tb == Transpose.NO ? k : n, bc = tb == Transpose.NO ? n : k;
                    List<Tensor> as = List.of(random(arena, r, ar, ac),
                            random(arena, r, ar + 3, ac + 5).slice(0, 2, ar + 2).slice(1, 3, ac + 3),
                            random(arena, r, ac, ar).transpose());
                    List<Tensor> bs = List.of(random(arena, r, br, bc),
                            random(arena, r, bc, br).transpose(),
                            random(arena, r, br, bc + 4).slice(1, 4, bc + 4));
                    for (Tensor a : as) {
                        for (Tensor b : bs) {
                            Tensor cBig = random(arena, r, m, n + 9);
                            Tensor c = cBig.slice(1, 2, n + 2);
                            float[] c0 = c.toArray();
                            BLAS.matmul(ta, a, tb, b, 0.75f, -0.5f, c);
                            check("ta=" + ta + " a=" + a + " tb=" + tb + " b=" + b, ta, a, tb, b, 0.75f, -0.5f, c0, c);
                        }
                    }
                }
            }
        }
    }

    @Test
    void matmulRejectsBadTensors() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor a = Tensor.allocate(arena, 4, 5);
            Tensor b = Tensor.allocate(arena, 5, 6);
            Tensor c = Tensor.allocate(arena, 4, 6);
            Transpose no = Transpose.NO;
            assertMessage(() -> BLAS.matmul(no, a, no, Tensor.allocate(arena, 4, 6), 1f, 0f, c), "does not give");
            assertMessage(() -> BLAS.matmul(no, a, no, b, 1f, 0f, Tensor.allocate(arena, 4, 7)), "c [4, 7]");
            assertMessage(() -> BLAS.matmul(no, Tensor.allocate(arena, 1, 4, 5), no, b, 1f, 0f, c), "rank 2");
            // no unit stride in either dimension: a strided view of a [4, 10]
            Tensor strided = Tensor.allocate(arena, 4, 5, 2).select(2, 0);
            assertMessage(() -> BLAS.matmul(no, strided, no, b, 1f, 0f, c), "no unit stride");
            // an output whose last stride is not 1
            Tensor cT = Tensor.allocate(arena, 6, 4).transpose();
            assertMessage(() -> BLAS.matmul(no, a, no, b, 1f, 0f, cT), "unit stride");
            // rows that overlap: a broadcast view
            Tensor row = Tensor.allocate(arena, 1, 5).broadcastTo(4, 5);
            assertMessage(() -> BLAS.matmul(no, row, no, b, 1f, 0f, c), "overlap");
            // output overlapping an input
            Tensor sq = Tensor.allocate(arena, 5, 5);
            assertMessage(() -> BLAS.matmul(no, sq, no, sq, 1f, 0f, sq), "overlaps");
            // null arguments follow the API's one rule (README, exception table): NullPointerException naming the
            // parameter, whatever the layout (with a transposed view, flipped to the other flag, a null flag was
            // once a bare NullPointerException); see NullArgumentsTest
            Tensor aT = Tensor.allocate(arena, 5, 4).transpose();
            assertNull(() -> BLAS.matmul(null, a, no, b, 1f, 0f, c), "ta is null");
            assertNull(() -> BLAS.matmul(null, aT, no, b, 1f, 0f, c), "ta is null");
            assertNull(() -> BLAS.matmul(no, a, null, Tensor.allocate(arena, 6, 5).transpose(), 1f, 0f, c),
                    "tb is null");
            assertNull(() -> BLAS.matmul(no, null, no, b, 1f, 0f, c), "a is null");
            assertNull(() -> BLAS.matmul(no, a, no, null, 1f, 0f, c), "b is null");
            assertNull(() -> BLAS.matmul(no, a, no, b, 1f, 0f, null), "c is null");
        }
    }

    /**
     * Every refusal of {@code matmul} names the caller's tensor as the caller passed it, with its shape, and says
     * {@code matmul}: heap or misaligned memory, a read-only or closed tensor, an output over an input. These were
     * left to sgemm, whose messages name its raw operands: "sgemm: a is a heap segment" (no shape), "sgemm: a
     * [4, 3]: its arena is closed" for a transposed view a [3, 4] (the stored operand's shape), "sgemm: output c
     * [4, 4] overlaps input a" (no shape of a). Found by an audit of the error messages.
     */
    @Test
    void matmulRefusalsNameTheCallersTensorAndItsShape() {
        Transpose no = Transpose.NO;
        try (Arena arena = Arena.ofShared()) {
            Tensor a = Tensor.allocate(arena, 3, 4);
            Tensor b = Tensor.allocate(arena, 4, 5);
            Tensor c = Tensor.allocate(arena, 3, 5);
            Tensor heapA = Tensor.wrap(MemorySegment.ofArray(new float[12]), 3, 4);
            assertStarts(IllegalArgumentException.class, () -> BLAS.matmul(no, heapA, no, b, 1f, 0f, c),
                    "matmul: a [3, 4]", "heap");
            Tensor heapB = Tensor.wrap(MemorySegment.ofArray(new float[20]), 5, 4).transpose();
            assertStarts(IllegalArgumentException.class, () -> BLAS.matmul(no, a, no, heapB, 1f, 0f, c),
                    "matmul: b [4, 5]", "heap");
            Tensor odd = Tensor.view(arena.allocate(15 * 4 + 64, 64).asSlice(2), 0, new long[] {3, 5},
                    new long[] {5, 1});
            assertStarts(IllegalArgumentException.class, () -> BLAS.matmul(no, a, no, b, 1f, 0f, odd),
                    "matmul: c [3, 5]", "multiple");
            Tensor readOnly = Tensor.view(c.segment().asReadOnly(), 0, new long[] {3, 5}, new long[] {5, 1});
            assertStarts(IllegalArgumentException.class, () -> BLAS.matmul(no, a, no, b, 1f, 0f, readOnly),
                    "matmul: c [3, 5]", "read-only");
            Tensor sq = Tensor.allocate(arena, 4, 4);
            Tensor sq2 = Tensor.allocate(arena, 4, 4);
            assertStarts(IllegalArgumentException.class, () -> BLAS.matmul(no, sq, no, sq2, 1f, 0f, sq),
                    "matmul: c [4, 4]", "overlaps a [4, 4]");
            assertStarts(IllegalArgumentException.class, () -> BLAS.matmul(no, sq2, no, sq, 1f, 0f, sq),
                    "matmul: c [4, 4]", "overlaps b [4, 4]");
            Tensor gone;
            try (Arena closed = Arena.ofConfined()) {
                gone = Tensor.allocate(closed, 4, 3);
            }
            // a transposed view: the caller's a is [3, 4], though its memory holds rows of [4, 3]
            Tensor goneT = gone.transpose();
            assertStarts(IllegalStateException.class, () -> BLAS.matmul(no, goneT, no, b, 1f, 0f, c),
                    "matmul: a [3, 4]", "closed");
        }
    }

    /**
     * The raw routines' refusals of heap or misaligned memory and of an output over an input give the operand's
     * shape, as their other refusals do ({@code sgemm: a [2, 3]: leading dimension 2 < 3}): they said "sgemm: a
     * is a heap segment" and "sgemm: output c [2, 2] overlaps input a", with no shape of a. Found by an audit of
     * the error messages.
     */
    @Test
    void rawRoutinesNameTheOperandWithItsShape() {
        Transpose no = Transpose.NO;
        Transpose yes = Transpose.YES;
        MemorySegment heap = MemorySegment.ofArray(new float[64]);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment off = arena.allocate(256, 64);
            MemorySegment c = arena.allocate(256, 64);
            // op(a) [2, 3] stored transposed: a [3, 2]; b [3, 4]; c [2, 4]
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemm(yes, no, 2, 4, 3, 1f, heap, 0, 2, off, 0, 4, 0f, c, 0, 4), "sgemm: a [3, 2]",
                    "heap segment");
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemm(no, no, 2, 4, 3, 1f, off, 0, 3, off.asSlice(1), 0, 4, 0f, c, 0, 4),
                    "sgemm: b [3, 4]", "multiples of 4");
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemm(no, no, 2, 4, 3, 1f, off, 0, 3, off, 0, 4, 0f, heap, 0, 4), "sgemm: c [2, 4]",
                    "heap segment");
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemm(no, no, 2, 4, 3, 1f, c, 0, 3, off, 0, 4, 0f, c, 0, 4), "sgemm: output c [2, 4]",
                    "overlaps input a [2, 3]");
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemm(no, yes, 2, 4, 3, 1f, off, 0, 3, c, 0, 3, 0f, c, 0, 4), "sgemm: output c [2, 4]",
                    "overlaps input b [4, 3]");
            // a [5, 3]: x [3], y [5]
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemv(no, 5, 3, 1f, off, 0, 3, heap, 0, 1, 0f, c, 0, 1), "sgemv: x [3]",
                    "heap segment");
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemv(no, 5, 3, 1f, heap, 0, 3, off, 0, 1, 0f, c, 0, 1), "sgemv: a [5, 3]",
                    "heap segment");
            assertStarts(IllegalArgumentException.class,
                    () -> BLAS.sgemv(no, 5, 3, 1f, off, 0, 3, c, 0, 1, 0f, heap, 0, 1), "sgemv: y [5]",
                    "heap segment");
        }
    }

    /** {@code call} throws {@code type} whose message starts with {@code start} and contains {@code fragment}. */
    private static void assertStarts(Class<? extends RuntimeException> type, Runnable call, String start,
                                     String fragment) {
        RuntimeException e = assertThrows(type, call::run);
        assertTrue(e.getMessage().startsWith(start) && e.getMessage().contains(fragment),
                "message \"" + e.getMessage() + "\" should start with \"" + start + "\" and contain \"" + fragment
                        + "\"");
    }

    /**
     * A dimension of size 1 may have any stride (a view reaches only its index 0, as {@code Tensor.view} allows):
     * the row of a {@code [1, k]} a or of a {@code [1, n]} c, the column stride of a {@code [k, 1]} b. The stride
     * of such a dimension was taken as the leading dimension all the same, and a legal one-row product refused as
     * {@code lda=1099511627776 exceeds the 32-bit BLAS interface}. It must compute what the loop computes.
     */
    @Test
    void matmulIgnoresTheStrideOfADimensionOfSizeOne() {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(9);
            int k = 5, n = 3;
            long huge = 1L << 40;
            Tensor aDense = random(arena, r, 1, k);
            Tensor a = Tensor.view(aDense.segment(), aDense.offset(), new long[] {1, k}, new long[] {huge, 1});
            Tensor b = random(arena, r, k, n);
            Tensor cDense = random(arena, r, 1, n);
            Tensor c = Tensor.view(cDense.segment(), cDense.offset(), new long[] {1, n}, new long[] {huge, 1});
            float[] c0 = c.toArray();
            BLAS.matmul(Transpose.NO, a, Transpose.NO, b, 0.75f, -0.5f, c);
            check("a [1, k] and c [1, n] with row stride 2^40", Transpose.NO, a, Transpose.NO, b, 0.75f, -0.5f, c0, c);
            // a stored [k, 1] (ta = YES) and b [1, n] (k = 1) with a row stride of 2^40
            Tensor bDense = random(arena, r, 1, n);
            Tensor b1 = Tensor.view(bDense.segment(), bDense.offset(), new long[] {1, n}, new long[] {huge, 1});
            Tensor a1 = random(arena, r, 1, 1);
            Tensor c1 = random(arena, r, 1, n);
            float[] c10 = c1.toArray();
            BLAS.matmul(Transpose.YES, a1, Transpose.NO, b1, 1f, 0f, c1);
            check("b [1, n] with row stride 2^40", Transpose.YES, a1, Transpose.NO, b1, 1f, 0f, c10, c1);
        }
    }

    @Test
    void matmulRefusesARowStridePastTheBlasInterface() throws IOException {
        // c [2, 8] with rows 2^32 + 8 floats apart, over a sparse 16 GiB file mapping: cast to an int, the stride
        // would put row 1 at element 8 (measured before the check), outside c
        Path file = Files.createTempFile("qkv-ldc", ".bin");
        try (Arena arena = Arena.ofConfined();
             FileChannel ch = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            long floats = (1L << 32) + 16;
            MemorySegment big = ch.map(FileChannel.MapMode.READ_WRITE, 0, floats * Float.BYTES, arena);
            Tensor wide = Tensor.view(big, 0, new long[] {2, 8}, new long[] {(1L << 32) + 8, 1});
            assertMessage(() -> BLAS.matmul(Transpose.NO, Tensor.allocate(arena, 2, 1).fill(1f), Transpose.NO,
                    Tensor.allocate(arena, 1, 8).fill(1f), 1f, 0f, wide),
                    "c [2, 8]: row stride 4294967304 exceeds the 32-bit BLAS interface");
            assertEquals(0f, big.getAtIndex(ValueLayout.JAVA_FLOAT, 8), "nothing written");
        } finally {
            Files.delete(file);
        }
    }

    private static void assertNull(Runnable call, String start) {
        NullPointerException e = assertThrows(NullPointerException.class, call::run);
        assertTrue(e.getMessage().startsWith(start), "message \"" + e.getMessage() + "\" should start with \"" + start + "\"");
    }

    private static void assertMessage(Runnable call, String fragment) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call::run);
        assertTrue(e.getMessage().contains(fragment), "message \"" + e.getMessage() + "\" should contain \"" + fragment + "\"");
    }

    /**
     * An empty tensor is valid whatever its strides (README, Failure contract): it reaches no element, so neither
     * its strides nor its memory matter, and nothing is handed to OpenBLAS. {@code matmul} read an empty c's
     * strides all the same and refused {@code c [0, 5]} with strides {@code [0, 0]} ("needs unit stride"), and
     * took an empty a's row stride past 2^31 as a leading dimension ("exceeds the 32-bit BLAS interface"). With
     * k = 0 the definition gives {@code C = beta · C}: 2 · 5 = 10 here. (Empty operands must still be alive and, for
     * OpenBLAS, off-heap, as {@code sgemm} has it.)
     */
    @Test
    void matmulTakesEmptyTensorsWhateverTheirStrides() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment seg = arena.allocate(4096, 64);
            Transpose no = Transpose.NO;
            Tensor b = Tensor.allocate(arena, 3, 5).fill(1f);
            // m = 0: c [0, 5] with zero strides, or with a column stride of 3
            for (long[] cs : new long[][] {{0, 0}, {1, 3}, {1L << 40, 1L << 40}}) {
                for (long[] as : new long[][] {{0, 0}, {7, 2}, {1L << 40, 1}}) {
                    BLAS.matmul(no, Tensor.view(seg, 0, new long[] {0, 3}, as), no, b, 1f, 0f,
                            Tensor.view(seg, 100, new long[] {0, 5}, cs));
                }
            }
            // n = 0: b [3, 0] and c [4, 0] with row strides past the 32-bit interface
            Tensor a = Tensor.allocate(arena, 4, 3).fill(1f);
            BLAS.matmul(no, a, no, Tensor.view(seg, 0, new long[] {3, 0}, new long[] {1L << 40, 1}), 1f, 0f,
                    Tensor.view(seg, 100, new long[] {4, 0}, new long[] {1L << 40, 1}));
            // k = 0: a [4, 0] and b [0, 5] with any strides, c = beta · c
            for (long[] st : new long[][] {{0, 0}, {1L << 40, 1}, {1, 1L << 40}}) {
                Tensor c = Tensor.allocate(arena, 4, 5).fill(5f);
                BLAS.matmul(no, Tensor.view(seg, 0, new long[] {4, 0}, st), no,
                        Tensor.view(seg, 0, new long[] {0, 5}, st), 1f, 2f, c);
                for (float x : c.toArray()) {
                    assertEquals(10f, x);
                }
            }
        }
    }

    @Test
    void sgemmRefusesHeapSegments() {
        float[] out = {9, 9, 9, 9};
        MemorySegment heap = MemorySegment.ofArray(new float[] {1, 2, 3, 4});
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment off = arena.allocate(16, 64);
            for (int which = 0; which < 3; which++) {
                MemorySegment a = which == 0 ? heap : off;
                MemorySegment b = which == 1 ? heap : off;
                MemorySegment c = which == 2 ? MemorySegment.ofArray(out) : arena.allocate(16, 64);
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> BLAS.sgemm(Transpose.NO, Transpose.NO, 2, 2, 2, 1f, a, 0, 2, b, 0, 2, 0f, c, 0, 2));
                assertTrue(e.getMessage().contains("heap segment"), e.getMessage());
            }
            assertEquals(9f, out[0]);
        }
    }

    @Test
    void sgemvMatchesTheLoopBothWaysAndRefusesBadOutputs() {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(11);
            int m = 67, n = 33;
            // a [m, n] with padded rows, x and y strided
            Tensor a = random(arena, r, m, n + 3);
            MemorySegment x = random(arena, r, 1, 3 * m).segment();
            MemorySegment y = random(arena, r, 1, 2 * m).segment();
            for (Transpose t : Transpose.values()) {
                int xLen = t == Transpose.NO ? n : m;
                int yLen = t == Transpose.NO ? m : n;
                float[] y0 = y.toArray(java.lang.foreign.ValueLayout.JAVA_FLOAT);
                BLAS.sgemv(t, m, n, 0.5f, a.segment(), 0, n + 3, x, 1, 3, -1f, y, 0, 2);
                for (int i = 0; i < yLen; i++) {
                    double dot = 0, abs = 0;
                    for (int p = 0; p < xLen; p++) {
                        double av = t == Transpose.NO ? a.get(i, p) : a.get(p, i);
                        double term = av * x.getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, 1 + 3L * p);
                        dot += term;
                        abs += Math.abs(term);
                    }
                    double want = 0.5 * dot - y0[2 * i];
                    double tol = 2 * (xLen + 3) * 0x1p-24 * (0.5 * abs + Math.abs(y0[2 * i]));
                    float got = y.getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, 2L * i);
                    assertTrue(Math.abs(got - want) <= tol, t + " y[" + i + "] got " + got + " want " + want);
                }
            }
            MemorySegment heap = MemorySegment.ofArray(new float[2 * m]);
            assertMessage(() -> BLAS.sgemv(Transpose.NO, m, n, 1f, a.segment(), 0, n + 3, x, 0, 1, 0f, heap, 0, 1),
                    "heap segment");
            assertMessage(() -> BLAS.sgemv(Transpose.NO, m, n, 1f, a.segment(), 0, n + 3, x, 0, 1, 0f,
                    y.asReadOnly(), 0, 1), "read-only");
            assertMessage(() -> BLAS.sgemv(Transpose.NO, m, n, 1f, a.segment(), 0, n + 3, x, 0, 0, 0f, y, 0, 1),
                    "increment 0 < 1");
            assertMessage(() -> BLAS.sgemv(Transpose.NO, m, n, 1f, a.segment(), 0, n + 4, x, 0, 1, 0f, y, 0, 1),
                    "needs");
            assertMessage(() -> BLAS.sgemv(Transpose.YES, m, n, 1f, a.segment(), 0, n + 3, x, 0, 1, 0f,
                    a.segment(), 5, 1), "overlaps input a");
        }
    }

    @Test
    void threadsCanBeSetAndRead() {
        int before = BLAS.threads();
        assertTrue(before >= 1, "threads " + before);
        try {
            BLAS.setThreads(1);
            assertEquals(1, BLAS.threads());
            assertThrows(IllegalArgumentException.class, () -> BLAS.setThreads(0));
            assertThrows(IllegalArgumentException.class, () -> BLAS.setThreads(-3));
            assertEquals(1, BLAS.threads());
            // above the MAX_THREADS the library was built with (its config names it), OpenBLAS caps the count,
            // as setThreads says
            java.util.regex.Matcher m = java.util.regex.Pattern.compile("MAX_THREADS=(\\d+)")
                    .matcher(BLAS.library().config());
            if (m.find()) {
                int max = Integer.parseInt(m.group(1));
                for (int n : new int[] {2, max, max + 1, 1024}) {
                    if (n <= 1024) {
                        BLAS.setThreads(n);
                        assertEquals(Math.min(n, max), BLAS.threads(), "setThreads(" + n + ")");
                    }
                }
            }
        } finally {
            BLAS.setThreads(before);
        }
    }

    @Test
    void describesWhatWasLoaded() {
        BlasLibrary lib = BLAS.library();
        assertTrue(lib.config().contains("OpenBLAS"), lib.config());
        assertTrue(!lib.coreName().isBlank(), "core name is blank");
        String d = BLAS.describe();
        assertTrue(d.contains(lib.path().toString()) && d.contains(lib.coreName()) && d.contains("threads"), d);
        assertTrue(OpenBlas.isAvailable());
    }

    /**
     * {@code -Dqkv.blas.critical} is {@code true} or {@code false} or refused, as {@code -Dqkv.vector} is: before, any
     * value but {@code false} (say {@code off} or {@code 0}, meant to turn critical downcalls off) left them on.
     */
    @Test
    void theCriticalSettingIsTrueOrFalseOrRefused() {
        String before = System.getProperty(OpenBlas.CRITICAL_PROPERTY);
        try {
            System.clearProperty(OpenBlas.CRITICAL_PROPERTY);
            assertTrue(OpenBlas.criticalDowncalls());
            for (String good : new String[] {"true", " TRUE ", "false", "False"}) {
                System.setProperty(OpenBlas.CRITICAL_PROPERTY, good);
                assertEquals(Boolean.parseBoolean(good.strip()), OpenBlas.criticalDowncalls(), good);
            }
            for (String bad : new String[] {"", "off", "0", "no", "yes", "1"}) {
                System.setProperty(OpenBlas.CRITICAL_PROPERTY, bad);
                BlasUnavailableException e = assertThrows(BlasUnavailableException.class,
                        OpenBlas::criticalDowncalls, bad);
                assertEquals("-D" + OpenBlas.CRITICAL_PROPERTY + "=" + bad + ": must be true or false",
                        e.getMessage());
            }
        } finally {
            if (before == null) {
                System.clearProperty(OpenBlas.CRITICAL_PROPERTY);
            } else {
                System.setProperty(OpenBlas.CRITICAL_PROPERTY, before);
            }
        }
    }

    /**
     * {@code -Dqkv.blas.threads} is read as strictly as the engine's settings ({@code Settings}): a decimal integer
     * in ASCII from 1 to 1024, spaces around it allowed. Before the fix an empty or blank value was taken as unset
     * (one thread, without a word) and {@code Integer.parseInt} took any Unicode digits ({@code ٣} as 3), where
     * {@code -Dqkv.pool.spinMicros} and the others refuse both.
     */
    @Test
    void theBlasThreadsSettingIsReadAsStrictlyAsTheOthers() {
        String before = System.getProperty(OpenBlas.THREADS_PROPERTY);
        try {
            System.clearProperty(OpenBlas.THREADS_PROPERTY);
            assertEquals(1, OpenBlas.initialThreads());
            for (String good : new String[] {"1", " 4 ", "+2", "1024"}) {
                System.setProperty(OpenBlas.THREADS_PROPERTY, good);
                assertEquals(Integer.parseInt(good.strip()), OpenBlas.initialThreads(), good);
            }
            for (String bad : new String[] {"", " ", "0", "1025", "-1", "abc", "1e3", "2k", "\u0663", "\u0661\u0660",
                    "99999999999"}) {
                System.setProperty(OpenBlas.THREADS_PROPERTY, bad);
                BlasUnavailableException e = assertThrows(BlasUnavailableException.class, OpenBlas::initialThreads,
                        bad);
                assertEquals("-D" + OpenBlas.THREADS_PROPERTY + "=" + bad + ": expected a thread count in 1..1024",
                        e.getMessage());
            }
        } finally {
            if (before == null) {
                System.clearProperty(OpenBlas.THREADS_PROPERTY);
            } else {
                System.setProperty(OpenBlas.THREADS_PROPERTY, before);
            }
        }
    }

    /**
     * Which products run as critical downcalls (no thread transition, so no safepoint while they run): exactly those
     * of at most 2^18 multiply-adds, as {@code m·n·k} in exact arithmetic says. {@code (long) m * n * k} wrapped
     * past 2^63 (m = n = k = 2^21, say) to a negative count, and a product of 2^63 multiply-adds would have held off
     * every garbage collection for its whole run.
     */
    @Test
    void onlySmallProductsRunAsCriticalDowncalls() {
        int[] sizes = {0, 1, 2, 63, 64, 65, 512, 4096, 1 << 18, (1 << 18) + 1, 1 << 21, 1 << 22, 1 << 30,
                Integer.MAX_VALUE - 1, Integer.MAX_VALUE};
        java.math.BigInteger limit = java.math.BigInteger.ONE.shiftLeft(18);
        for (int m : sizes) {
            for (int n : sizes) {
                for (int k : sizes) {
                    boolean want = java.math.BigInteger.valueOf(m).multiply(java.math.BigInteger.valueOf(n))
                            .multiply(java.math.BigInteger.valueOf(k)).compareTo(limit) <= 0;
                    assertEquals(want, OpenBlas.smallProduct(m, n, k), "m=" + m + " n=" + n + " k=" + k);
                }
            }
        }
    }
}
