package dev.qkv.tensor;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Tensor views against index arithmetic written out by hand: a dense {@code [A, B, C, D]} holding
 * {@code value(a, b, c, d) = 1000a + 100b + 10c + d} lets every view be checked element by element.
 */
class TensorTest {

    private static final long A = 2, B = 3, C = 4, D = 5;

    private static float value(long a, long b, long c, long d) {
        return 1000 * a + 100 * b + 10 * c + d;
    }

    private static Tensor numbered(Arena arena) {
        float[] x = new float[(int) (A * B * C * D)];
        int i = 0;
        for (long a = 0; a < A; a++) {
            for (long b = 0; b < B; b++) {
                for (long c = 0; c < C; c++) {
                    for (long d = 0; d < D; d++) {
                        x[i++] = value(a, b, c, d);
                    }
                }
            }
        }
        return Tensor.of(arena, x, A, B, C, D);
    }

    @Test
    void allocateIsZeroedContiguousAndAligned() {
        try (Arena arena = Arena.ofConfined()) {
            for (long[] shape : new long[][] {{1}, {3, 7}, {2, 3, 5, 17}, {0, 4}, {}}) {
                Arena.ofAuto().allocate(3); // a stray small allocation must not disturb alignment
                Tensor t = Tensor.allocate(arena, shape);
                assertEquals(0, t.segment().address() % Tensor.ALIGNMENT, Arrays.toString(shape));
                assertEquals(0, t.segment().address() % 64);
                assertTrue(t.isContiguous());
                assertEquals(0, t.offset());
                for (float x : t.toArray()) {
                    assertEquals(0f, x);
                }
                assertTrue(t.segment().byteSize() >= t.elementCount() * Float.BYTES);
            }
            Tensor t = Tensor.allocate(arena, 2, 3, 4);
            assertArrayEquals(new long[] {12, 4, 1}, t.strides());
            assertEquals(24, t.elementCount());
            assertEquals("[2, 3, 4]", t.shapeString());
            assertEquals("k [2, 3, 4]", t.describe("k"));
        }
    }

    @Test
    void selectSliceTransposeMatchIndexMath() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = numbered(arena);
            for (long a = 0; a < A; a++) {
                for (long b = 0; b < B; b++) {
                    for (long c = 0; c < C; c++) {
                        for (long d = 0; d < D; d++) {
                            float want = value(a, b, c, d);
                            assertEquals(want, t.get(a, b, c, d));
                            assertEquals(want, t.select(0, a).get(b, c, d));
                            assertEquals(want, t.select(1, b).get(a, c, d));
                            assertEquals(want, t.select(-1, d).get(a, b, c));
                            assertEquals(want, t.transpose().get(a, b, d, c));
                            assertEquals(want, t.transpose(0, 2).get(c, b, a, d));
                            assertEquals(want, t.transpose(1, 2).select(0, a).select(0, c).get(b, d));
                            if (c >= 1) {
                                assertEquals(want, t.slice(2, 1, 4).get(a, b, c - 1, d));
                            }
                            if (d >= 2 && d < 4 && b >= 1) {
                                assertEquals(want, t.slice(3, 2, 4).slice(1, 1, 3).get(a, b - 1, c, d - 2));
                            }
                        }
                    }
                }
            }
            Tensor s = t.select(1, 2).slice(1, 1, 3).transpose();
            assertArrayEquals(new long[] {A, D, 2}, s.shape());
            assertArrayEquals(new long[] {B * C * D, 1, D}, s.strides());
            assertEquals(2 * C * D + D, s.offset());
            assertSame(t.segment(), s.segment());
            // an empty slice keeps the offset in range
            assertEquals(0, t.slice(2, 4, 4).elementCount());
            assertEquals(0, t.slice(2, 4, 4).toArray().length);
        }
    }

    @Test
    void viewsShareMemory() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = numbered(arena);
            t.transpose().select(0, 1).slice(1, 2, 3).set(-1f, 2, 0, 3);
            assertEquals(-1f, t.get(1, 2, 3, 2));
        }
    }

    @Test
    void broadcastToRepeatsSizeOneDimensions() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor row = Tensor.of(arena, new float[] {1, 2, 3}, 1, 3);
            Tensor b = row.broadcastTo(4, 2, 3);
            assertArrayEquals(new long[] {4, 2, 3}, b.shape());
            assertArrayEquals(new long[] {0, 0, 1}, b.strides());
            for (long i = 0; i < 4; i++) {
                for (long j = 0; j < 2; j++) {
                    for (long k = 0; k < 3; k++) {
                        assertEquals(k + 1, b.get(i, j, k));
                    }
                }
            }
            assertFalse(b.isContiguous());
            float[] expected = new float[24];
            for (int i = 0; i < 24; i++) {
                expected[i] = i % 3 + 1;
            }
            assertArrayEquals(expected, b.toArray());
            assertThrows(IllegalArgumentException.class, () -> row.broadcastTo(2, 4));
            assertThrows(IllegalArgumentException.class, () -> row.broadcastTo(3));
        }
    }

    @Test
    void reshapeKeepsRowMajorOrder() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = numbered(arena);
            Tensor r = t.reshape(A * B, C * D);
            for (long i = 0; i < A * B * C * D; i++) {
                long a = i / (B * C * D), b = i / (C * D) % B, c = i / D % C, d = i % D;
                assertEquals(value(a, b, c, d), r.get(i / (C * D), i % (C * D)));
            }
            assertThrows(IllegalArgumentException.class, () -> t.reshape(7, 3));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> t.transpose().reshape(120));
            assertTrue(e.getMessage().contains("non-contiguous"), e.getMessage());
            assertArrayEquals(t.select(0, 1).toArray(), t.select(0, 1).reshape(B * C * D).toArray());
        }
    }

    @Test
    void isContiguous() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = numbered(arena);
            assertTrue(t.isContiguous());
            assertTrue(t.select(0, 1).isContiguous());
            assertTrue(t.slice(0, 1, 2).isContiguous());
            assertTrue(t.select(0, 1).select(0, 2).isContiguous());
            assertFalse(t.select(1, 1).isContiguous());
            assertFalse(t.transpose().isContiguous());
            assertFalse(t.slice(3, 0, 4).isContiguous());
            assertFalse(t.select(2, 0).isContiguous());
            // size-1 dimensions do not count, whatever their stride
            assertTrue(t.slice(0, 1, 2).slice(1, 2, 3).slice(2, 3, 4).isContiguous());
            assertFalse(t.slice(2, 1, 2).slice(1, 0, 1).isContiguous());
            assertTrue(Tensor.allocate(arena, 3, 1).transpose().isContiguous());
        }
    }

    /** copyFrom(float[]) then toArray() returns the same values for dense and strided views alike. */
    @ParameterizedTest(name = "view {0}")
    @ValueSource(ints = {0, 1, 2, 3, 4})
    void copyRoundTrip(int which) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor base = Tensor.allocate(arena, 3, 4, 6, 5);
            Tensor view = switch (which) {
                case 0 -> base;
                case 1 -> base.transpose();
                case 2 -> base.slice(2, 1, 5).slice(3, 2, 5);
                case 3 -> base.transpose(0, 2).select(1, 3);
                default -> base.select(3, 4).transpose();
            };
            float[] x = new float[(int) view.elementCount()];
            Random r = new Random(which);
            for (int i = 0; i < x.length; i++) {
                x[i] = r.nextFloat();
            }
            view.copyFrom(x);
            assertArrayEquals(x, view.toArray(), view.toString());
            // and copyFrom(Tensor) into a dense tensor gives the same row-major order
            Tensor dense = Tensor.allocate(arena, view.shape()).copyFrom(view);
            assertArrayEquals(x, dense.toArray());
            // the elements of base the view does not cover stay zero
            int nonZero = 0;
            for (float f : base.toArray()) {
                nonZero += f != 0 ? 1 : 0;
            }
            assertTrue(nonZero <= x.length);
            assertThrows(IllegalArgumentException.class, () -> view.copyFrom(new float[x.length + 1]));
            assertThrows(IllegalArgumentException.class, () -> view.copyFrom(Tensor.allocate(arena, 1, x.length)));
        }
    }

    @Test
    void fillReachesOnlyTheView() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 4, 6);
            t.slice(1, 2, 4).fill(7f);
            for (long i = 0; i < 4; i++) {
                for (long j = 0; j < 6; j++) {
                    assertEquals(j >= 2 && j < 4 ? 7f : 0f, t.get(i, j));
                }
            }
        }
    }

    @Test
    void viewChecksSegmentSizeOffsetAndStrides() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment seg = arena.allocate(100 * Float.BYTES, 64);
            // [4, 5] with row stride 20 reaches element 3·20 + 4 = 64 from offset 30: index 94 < 100 fits
            Tensor ok = Tensor.view(seg, 30, new long[] {4, 5}, new long[] {20, 1});
            assertEquals(95, ok.endElement());
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Tensor.view(seg, 36, new long[] {4, 5}, new long[] {20, 1}));
            assertTrue(e.getMessage().contains("[4, 5]") && e.getMessage().contains("100"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class,
                    () -> Tensor.view(seg, 0, new long[] {4, 5}, new long[] {-5, 1}));
            assertTrue(e.getMessage().contains("negative stride"), e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> Tensor.view(seg, -1, new long[] {2}, new long[] {1}));
            assertThrows(IllegalArgumentException.class, () -> Tensor.view(seg, 0, new long[] {2, 2}, new long[] {1}));
            assertThrows(IllegalArgumentException.class, () -> Tensor.view(seg, 0, new long[] {-2}, new long[] {1}));
            assertThrows(IllegalArgumentException.class,
                    () -> Tensor.view(seg, 0, new long[] {2, Long.MAX_VALUE / 2}, new long[] {Long.MAX_VALUE / 2, 1}));
            assertThrows(IllegalArgumentException.class, () -> Tensor.wrap(seg, 10, 11));
            assertThrows(IllegalArgumentException.class, () -> Tensor.allocate(arena, 3, -1));
            assertThrows(IllegalArgumentException.class,
                    () -> Tensor.allocate(arena, Long.MAX_VALUE, Long.MAX_VALUE));
            // a wrapped segment reads what was written through the raw segment
            seg.setAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, 7, 3.5f);
            assertEquals(3.5f, Tensor.wrap(seg, 10, 10).get(0, 7));
            // an empty view may sit anywhere, even past the segment's end
            assertEquals(0, Tensor.view(seg, 0, new long[] {0, 1000}, new long[] {1000, 1}).elementCount());
        }
    }

    @Test
    void indexChecksEveryCoordinate() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = numbered(arena);
            assertThrows(IndexOutOfBoundsException.class, () -> t.get(2, 0, 0, 0));
            assertThrows(IndexOutOfBoundsException.class, () -> t.get(0, 0, 0, -1));
            assertThrows(IllegalArgumentException.class, () -> t.get(0, 0, 0));
            assertThrows(IndexOutOfBoundsException.class, () -> t.select(4, 0));
            assertThrows(IndexOutOfBoundsException.class, () -> t.select(0, 2));
            assertThrows(IndexOutOfBoundsException.class, () -> t.slice(2, 3, 5));
            assertThrows(IndexOutOfBoundsException.class, () -> t.slice(2, 3, 2));
            assertThrows(IllegalArgumentException.class, () -> Tensor.allocate(arena, 3).transpose());
        }
    }

    /** Out-of-range coordinates and ranges said only "Index 4 out of bounds for length 4": which tensor, which dimension? */
    @Test
    void outOfBoundsNamesTheTensorAndTheDimension() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = numbered(arena);
            String name = "tensor [2, 3, 4, 5]: ";
            List<Executable> calls = List.of(() -> t.select(1, 3), () -> t.select(-3, -1), () -> t.slice(2, 3, 5),
                    () -> t.slice(2, 3, 2), () -> t.slice(-1, -1, 2), () -> t.get(0, 0, 4, 0), () -> t.set(1f, 0, -1, 0, 0),
                    () -> t.index(2, 0, 0, 0));
            List<String> want = List.of(
                    "index 3 out of bounds for dimension 1 of size 3",
                    "index -1 out of bounds for dimension 1 of size 3",
                    "range [3, 5) out of bounds for dimension 2 of size 4",
                    "range [3, 2) out of bounds for dimension 2 of size 4",
                    "range [-1, 2) out of bounds for dimension 3 of size 5",
                    "index 4 out of bounds for dimension 2 of size 4",
                    "index -1 out of bounds for dimension 1 of size 3",
                    "index 2 out of bounds for dimension 0 of size 2");
            for (int i = 0; i < calls.size(); i++) {
                IndexOutOfBoundsException e = assertThrows(IndexOutOfBoundsException.class, calls.get(i));
                assertEquals(name + want.get(i), e.getMessage());
            }
            assertEquals(value(1, 2, 3, 4), t.get(1, 2, 3, 4), "in-range access unchanged");
        }
    }

    @Test
    void closedArenaIsDetected() {
        Arena arena = Arena.ofConfined();
        Tensor t = Tensor.allocate(arena, 2, 2);
        assertTrue(t.isAlive());
        arena.close();
        assertFalse(t.isAlive());
        // every element method names the tensor and its shape, not the JDK's "Already closed"
        List<Executable> calls = List.of(t::toArray, () -> t.fill(1f), () -> t.copyFrom(new float[4]),
                () -> t.transpose().toArray(), () -> t.transpose().fill(1f));
        for (Executable call : calls) {
            IllegalStateException e = assertThrows(IllegalStateException.class, call);
            assertEquals("tensor [2, 2]: its arena is closed", e.getMessage());
        }
        try (Arena live = Arena.ofConfined()) {
            Tensor dst = Tensor.allocate(live, 2, 2);
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> dst.copyFrom(t));
            assertEquals("source [2, 2]: its arena is closed", e.getMessage());
            IllegalStateException e2 = assertThrows(IllegalStateException.class, () -> t.copyFrom(dst));
            assertEquals("tensor [2, 2]: its arena is closed", e2.getMessage());
        }
    }

    @Test
    void aTensorConfinedToAnotherThreadIsRefusedByName() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 3, 1);
            List<Throwable> seen = new java.util.ArrayList<>();
            Thread other = new Thread(() -> {
                for (Runnable call : List.<Runnable>of(t::toArray, () -> t.fill(2f), () -> t.copyFrom(new float[3]))) {
                    try {
                        call.run();
                    } catch (Throwable e) {
                        seen.add(e);
                    }
                }
            });
            other.start();
            other.join();
            assertEquals(3, seen.size(), seen.toString());
            for (Throwable e : seen) {
                assertInstanceOf(WrongThreadException.class, e);
                assertEquals("tensor [3, 1]: its arena is confined to another thread", e.getMessage());
            }
            assertEquals(0f, t.get(2, 0), "the other thread wrote nothing");
        }
    }

    @Test
    void elementAccessorsOnAClosedArenaNameTheTensor() {
        Arena arena = Arena.ofConfined();
        Tensor t = Tensor.allocate(arena, 2, 2);
        Tensor v = t.transpose().slice(0, 1, 2);
        arena.close();
        // the same message toArray/fill/copyFrom give, not the JDK's bare "Already closed"
        List<Executable> calls = List.of(() -> t.get(1, 1), () -> t.set(1f, 0, 1), () -> t.getAt(3),
                () -> t.setAt(0, 1f));
        for (Executable call : calls) {
            IllegalStateException e = assertThrows(IllegalStateException.class, call);
            assertEquals("tensor [2, 2]: its arena is closed", e.getMessage());
        }
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> v.get(0, 1));
        assertEquals("tensor [1, 2]: its arena is closed", e.getMessage());
        // a bad coordinate is still a bad coordinate, closed arena or not
        assertThrows(IndexOutOfBoundsException.class, () -> t.get(2, 0));
    }

    @Test
    void elementAccessorsFromAnotherThreadNameTheTensor() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 3, 1);
            List<Throwable> seen = new java.util.ArrayList<>();
            Thread other = new Thread(() -> {
                for (Runnable call : List.<Runnable>of(() -> t.get(0, 0), () -> t.set(5f, 2, 0), () -> t.getAt(1),
                        () -> t.setAt(1, 5f))) {
                    try {
                        call.run();
                    } catch (Throwable e) {
                        seen.add(e);
                    }
                }
            });
            other.start();
            other.join();
            assertEquals(4, seen.size(), seen.toString());
            for (Throwable e : seen) {
                assertInstanceOf(WrongThreadException.class, e);
                assertEquals("tensor [3, 1]: its arena is confined to another thread", e.getMessage());
            }
            assertArrayEquals(new float[3], t.toArray(), "the other thread wrote nothing");
        }
    }

    /**
     * Writes into read-only memory (a {@code Safetensors.Load.MAPPED} F32 tensor is a view of a read-only mapping)
     * threw the JDK's "IllegalArgumentException: Attempt to write a read-only segment", naming no tensor.
     */
    @Test
    void writesIntoReadOnlyMemoryNameTheTensor() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor w = Tensor.of(arena, new float[] {1, 2, 3, 4}, 2, 2);
            Tensor ro = Tensor.wrap(w.segment().asReadOnly(), 2, 2);
            List<Executable> calls = List.of(() -> ro.set(9f, 0, 0), () -> ro.setAt(3, 9f), () -> ro.fill(9f),
                    () -> ro.fill(0f), () -> ro.copyFrom(new float[4]), () -> ro.copyFrom(Tensor.allocate(arena, 2, 2)),
                    () -> ro.transpose().copyFrom(new float[4]));
            for (Executable call : calls) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
                assertEquals("tensor [2, 2]: a read-only segment", e.getMessage());
            }
            assertArrayEquals(new float[] {1, 2, 3, 4}, w.toArray(), "nothing was written");
            // reading stays allowed, and an empty read-only view has nothing to write
            assertEquals(4f, ro.get(1, 1));
            Tensor empty = ro.slice(0, 1, 1);
            empty.fill(9f);
            empty.copyFrom(new float[0]);
        }
    }

    @Test
    void allocateBeyondMemoryNamesTheShape() {
        try (Arena arena = Arena.ofConfined()) {
            // 2^56 floats, 2^58 bytes: more than any x86-64 or AArch64 address space, so no OS gives it (whatever
            // its overcommit policy); a resource failure, so still an OutOfMemoryError, now naming the tensor
            OutOfMemoryError e = assertThrows(OutOfMemoryError.class, () -> Tensor.allocate(arena, 1L << 28, 1L << 28));
            assertTrue(e.getMessage() != null && e.getMessage().startsWith("tensor [268435456, 268435456]: "
                    + (1L << 58) + " bytes"), String.valueOf(e.getMessage()));
        }
    }

    @Test
    void allocateOfSizesNoAddressSpaceHoldsIsAnArgumentError() {
        try (Arena arena = Arena.ofConfined()) {
            // 2^63 - 4 bytes: it fits a long, but with the 64-byte alignment's slack it does not (the JDK threw an
            // OutOfMemoryError with no message at all)
            for (long[] shape : new long[][] {{(1L << 61) - 1}, {(1L << 61) - 16}, {1L << 61}, {3, 768614336404564651L}}) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> Tensor.allocate(arena, shape));
                assertTrue(e.getMessage().startsWith("tensor " + Shapes.format(shape) + ": "), e.getMessage());
            }
            // a product past 2^63 never wraps to something small
            for (long[] shape : new long[][] {{1L << 32, 1L << 32}, {3037000500L, 3037000500L},
                    {1L << 62, 4, 1}, {-1L >>> 1, 2}}) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> Tensor.allocate(arena, shape));
                assertTrue(e.getMessage().contains(Arrays.toString(shape)), e.getMessage());
            }
        }
    }

    @Test
    void allocateFromAClosedOrForeignArenaNamesTheShape() throws Exception {
        Arena closed = Arena.ofConfined();
        closed.close();
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> Tensor.allocate(closed, 2, 3));
        assertEquals("tensor [2, 3]: the arena is closed", e.getMessage());
        try (Arena mine = Arena.ofConfined()) {
            Throwable[] seen = new Throwable[1];
            Thread other = new Thread(() -> {
                try {
                    Tensor.allocate(mine, 4);
                } catch (Throwable t) {
                    seen[0] = t;
                }
            });
            other.start();
            other.join();
            assertInstanceOf(WrongThreadException.class, seen[0]);
            assertEquals("tensor [4]: the arena is confined to another thread", seen[0].getMessage());
        }
    }

    @Test
    void broadcastToANegativeSizeIsRefused() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 1, 4);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> t.broadcastTo(-3, 4));
            assertTrue(e.getMessage().contains("negative dimension"), e.getMessage());
        }
    }

    @Test
    void copyFromAnOverlappingViewCopiesTheValuesBeforeTheCall() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.of(arena, new float[] {1, 2, 3, 4, 5, 6, 7, 8, 9}, 3, 3);
            t.copyFrom(t.transpose());
            assertArrayEquals(new float[] {1, 4, 7, 2, 5, 8, 3, 6, 9}, t.toArray());
            // a shifted view of the same row: each element from its neighbour as it was
            Tensor r = Tensor.of(arena, new float[] {1, 2, 3, 4, 5}, 5);
            r.slice(0, 1, 5).copyFrom(r.slice(0, 0, 4));
            assertArrayEquals(new float[] {1, 1, 2, 3, 4}, r.toArray());
        }
    }

    /**
     * Read-only heap views are the memory they view. {@link MemorySegment#heapBase} is empty for them, and the
     * overlap check compared heap bases: it took a read-only view of an array for another array than a writable
     * view of it (here), and read-only views of two different arrays for one array (the next test).
     */
    @Test
    void readOnlyHeapViewsOverlapTheArrayTheyView() {
        MemorySegment xs = MemorySegment.ofArray(new float[16]);
        Tensor xw = Tensor.wrap(xs, 16);
        Tensor xr = Tensor.wrap(xs.asReadOnly(), 16);
        assertTrue(xw.overlaps(xr));
        assertTrue(xr.overlaps(xw));
        assertTrue(Tensor.wrap(xs.asSlice(4 * Float.BYTES), 4).overlaps(xr));
        assertTrue(xr.overlaps(Tensor.wrap(xs.asSlice(12 * Float.BYTES).asReadOnly(), 4)));
        // halves of one array, one read-only: disjoint, until they share an element
        Tensor low = Tensor.view(xs, 0, new long[] {8}, new long[] {1});
        Tensor high = Tensor.view(xs.asReadOnly(), 8, new long[] {8}, new long[] {1});
        assertFalse(low.overlaps(high));
        assertFalse(high.overlaps(low));
        assertTrue(Tensor.view(xs, 7, new long[] {2}, new long[] {1}).overlaps(high));
    }

    @Test
    void readOnlyHeapViewsOfDifferentArraysDoNotOverlap() {
        MemorySegment xs = MemorySegment.ofArray(new float[16]);
        MemorySegment ys = MemorySegment.ofArray(new float[16]);
        // both at offset 0 of their arrays
        Tensor xr = Tensor.wrap(xs.asReadOnly(), 16);
        Tensor yr = Tensor.wrap(ys.asReadOnly(), 16);
        assertFalse(xr.overlaps(yr));
        assertFalse(yr.overlaps(xr));
        assertFalse(Tensor.wrap(xs, 16).overlaps(yr));
        assertFalse(yr.overlaps(Tensor.wrap(xs, 16)));
        // heap and off-heap never overlap; a read-only off-heap view overlaps what it views, as before
        try (Arena arena = Arena.ofConfined()) {
            Tensor n = Tensor.allocate(arena, 16);
            assertFalse(n.overlaps(xr));
            assertFalse(xr.overlaps(Tensor.wrap(n.segment().asReadOnly(), 16)));
            assertTrue(n.overlaps(Tensor.wrap(n.segment().asReadOnly(), 16)));
        }
    }

    /** copyFrom a read-only view of its own array: the overlap is seen, so the values before the call are copied. */
    @Test
    void copyFromAReadOnlyViewOfTheSameArrayCopiesTheValuesBeforeTheCall() {
        float[] m = {1, 2, 3, 4, 5, 6, 7, 8, 9};
        MemorySegment s = MemorySegment.ofArray(m);
        Tensor t = Tensor.wrap(s, 3, 3);
        t.copyFrom(Tensor.wrap(s.asReadOnly(), 3, 3).transpose());
        assertArrayEquals(new float[] {1, 4, 7, 2, 5, 8, 3, 6, 9}, m);
    }

    /**
     * A destination that maps two elements to one address (a broadcast view) is refused by both copyFrom forms,
     * and left as it was: before, each address silently kept the last value written to it.
     */
    @Test
    void copyIntoABroadcastViewIsRefused() {
        try (Arena a = Arena.ofConfined()) {
            Tensor row = Tensor.allocate(a, 1, 3).copyFrom(new float[] {7, 8, 9});
            Tensor wide = row.broadcastTo(2, 3);
            assertFalse(wide.hasDistinctAddresses());
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> wide.copyFrom(new float[] {1, 2, 3, 4, 5, 6}));
            assertTrue(e.getMessage().contains("[2, 3]") && e.getMessage().contains("one address"), e.getMessage());
            Tensor src = Tensor.of(a, new float[] {1, 2, 3, 4, 5, 6}, 2, 3);
            assertThrows(IllegalArgumentException.class, () -> wide.copyFrom(src));
            assertArrayEquals(new float[] {7, 8, 9}, row.toArray(), "a refused copy writes nothing");
            // a broadcast source is fine: every destination element has its own address
            Tensor dst = Tensor.allocate(a, 2, 3).copyFrom(wide);
            assertArrayEquals(new float[] {7, 8, 9, 7, 8, 9}, dst.toArray());
        }
    }

    /** Views whose strides interleave: distinct addresses copy element by element, colliding ones are refused. */
    @Test
    void interleavedStridesAreJudgedByTheirAddresses() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment seg = a.allocate(6 * Float.BYTES, 64);
            // [2, 2] with strides [3, 2]: addresses 0, 2, 3, 5, distinct though 3 < 2 * 2
            Tensor t = Tensor.view(seg, 0, new long[] {2, 2}, new long[] {3, 2});
            assertTrue(t.hasDistinctAddresses());
            t.copyFrom(new float[] {1, 2, 3, 4});
            assertArrayEquals(new float[] {1, 0, 2, 3, 0, 4}, seg.toArray(ValueLayout.JAVA_FLOAT));
            // [2, 2] with strides [1, 1]: addresses 0, 1, 1, 2
            Tensor collide = Tensor.view(seg, 0, new long[] {2, 2}, new long[] {1, 1});
            assertFalse(collide.hasDistinctAddresses());
            assertThrows(IllegalArgumentException.class, () -> collide.copyFrom(new float[] {9, 9, 9, 9}));
        }
    }

    /**
     * Interleaved strides are enumerated up to 2^20 elements: at the bound a distinct view copies; past it the
     * answer is a conservative false, and copyFrom says it could not check, rather than allocating addresses
     * for every element (an OutOfMemoryError for views of billions).
     */
    @Test
    void largeInterleavedViewsAreCheckedWithinABound() {
        try (Arena a = Arena.ofConfined()) {
            long cols = 1 << 19;
            MemorySegment seg = a.allocate((2 * cols + 6) * Float.BYTES, 64);
            // rows at even and odd addresses: distinct, but stride 2 < the row's extent 2 * cols
            Tensor atBound = Tensor.view(seg, 0, new long[] {2, cols}, new long[] {3, 2});
            assertTrue(atBound.hasDistinctAddresses());
            float[] values = new float[(int) (2 * cols)];
            for (int i = 0; i < values.length; i++) {
                values[i] = i;
            }
            atBound.copyFrom(values);
            assertEquals(values[(int) cols + 5], seg.getAtIndex(ValueLayout.JAVA_FLOAT, 3 + 2 * 5));
            // one more column: as distinct, but past the bound
            Tensor past = Tensor.view(seg, 0, new long[] {2, cols + 1}, new long[] {3, 2});
            assertFalse(past.hasDistinctAddresses());
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> past.copyFrom(new float[(int) (2 * cols + 2)]));
            assertTrue(e.getMessage().contains("too many elements to check"), e.getMessage());
        }
    }

    /**
     * The javadoc's rule: strides that nest (each at least the extent of the dimensions below it, gaps counted
     * as they fall) give distinct addresses without enumeration, however many elements. Strides 1, 3, 5 over sizes
     * of 2 reach 0..9 with gaps (extents 2, 5, 10), so a fourth stride of 10 nests; the check measured each
     * extent as stride times size (2, 6, 10), found 5 &lt; 6, and past 2^20 elements answered a conservative false,
     * so copyFrom refused a view whose addresses are distinct.
     */
    @Test
    void nestedStridesWithGapsAreDistinctPastTheEnumerationBound() {
        try (Arena a = Arena.ofConfined()) {
            long outer = 1 << 18; // 2^21 elements in all: past the 2^20 the check enumerates
            long[] shape = {outer, 2, 2, 2};
            long[] strides = {10, 5, 3, 1};
            MemorySegment seg = a.allocate((10 * outer) * Float.BYTES, 64);
            Tensor t = Tensor.view(seg, 0, shape, strides);
            assertTrue(t.hasDistinctAddresses(), t.toString());
            float[] values = new float[(int) t.elementCount()];
            for (int i = 0; i < values.length; i++) {
                values[i] = i;
            }
            t.copyFrom(values);
            // element [i, b, c, d] at 10i + 5b + 3c + d holds its row-major index 8i + 4b + 2c + d
            for (long i : new long[] {0, 1, outer - 1}) {
                for (int b = 0; b < 2; b++) {
                    for (int c = 0; c < 2; c++) {
                        for (int d = 0; d < 2; d++) {
                            assertEquals(8 * i + 4 * b + 2 * c + d,
                                    seg.getAtIndex(ValueLayout.JAVA_FLOAT, 10 * i + 5 * b + 3 * c + d));
                        }
                    }
                }
            }
        }
    }

    /**
     * toArray of more elements than a float[] holds (a view repeating one float) is an IllegalStateException naming
     * the shape, before any allocation.
     */
    @Test
    void toArrayOfMoreElementsThanAnArrayHoldsIsRefused() {
        try (Arena a = Arena.ofConfined()) {
            Tensor big = Tensor.view(a.allocate(64, 64), 0, new long[] {2, 1L << 30}, new long[] {0, 0});
            IllegalStateException e = assertThrows(IllegalStateException.class, big::toArray);
            assertTrue(e.getMessage().contains("[2, 1073741824]") && e.getMessage().contains("float[]"),
                    e.getMessage());
        }
    }

    /** hasDistinctAddresses against the set of addresses, enumerated here, over random small views. */
    @Test
    void distinctAddressesMatchEnumeration() {
        Random r = new Random(41);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment seg = a.allocate(4096 * Float.BYTES, 64);
            for (int it = 0; it < 2000; it++) {
                int rank = 1 + r.nextInt(4);
                long[] shape = new long[rank];
                long[] strides = new long[rank];
                for (int d = 0; d < rank; d++) {
                    shape[d] = r.nextInt(5);
                    strides[d] = r.nextInt(3) == 0 ? r.nextInt(3) : r.nextInt(40);
                }
                Tensor t = Tensor.view(seg, r.nextInt(8), shape, strides);
                java.util.Set<Long> seen = new java.util.HashSet<>();
                boolean distinct = true;
                long[] c = new long[rank];
                long n = Arrays.stream(shape).reduce(1, (x, y) -> x * y);
                for (long i = 0; i < n && distinct; i++) {
                    long at = 0;
                    for (int d = 0; d < rank; d++) {
                        at += c[d] * strides[d];
                    }
                    distinct = seen.add(at);
                    for (int d = rank - 1; d >= 0 && ++c[d] == shape[d]; d--) {
                        c[d] = 0;
                    }
                }
                assertEquals(distinct, t.hasDistinctAddresses(), t.toString());
            }
        }
    }

    /**
     * An empty shape whose other sizes multiply past 2^63 (element count 0) is legal, but its row-major strides
     * wrapped negative: allocate gave strides {@link Tensor#view} itself refuses, wrap refused the shape as having
     * a "negative stride", and selecting from such a view gave a negative offset. Property: every view these
     * methods make can be rebuilt through the checked {@code view} from its own offset, shape and strides.
     */
    @Test
    void emptyShapesWithHugeSizesGetViewsThatViewAccepts() {
        long big = 1L << 62;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment seg = a.allocate(64);
            for (long[] shape : new long[][] {{0, big, 2}, {0, 3, big}, {2, 0, Long.MAX_VALUE, 3}, {0, big / 2, 2}}) {
                List<Tensor> views = new java.util.ArrayList<>();
                Tensor t = Tensor.allocate(a, shape);
                views.add(t);
                views.add(Tensor.wrap(seg, shape));
                views.add(Tensor.allocate(a, 0).reshape(shape));
                for (int d = 0; d < shape.length; d++) {
                    if (shape[d] > 0) {
                        views.add(t.select(d, shape[d] - 1));
                        views.add(t.slice(d, shape[d] - 1, shape[d]));
                    }
                    views.add(t.transpose(0, d));
                }
                for (Tensor v : views) {
                    assertEquals(0, v.elementCount(), v.toString());
                    Tensor again = Tensor.view(v.segment(), v.offset(), v.shape(), v.strides());
                    assertArrayEquals(v.strides(), again.strides(), v.toString());
                    assertEquals(0, v.toArray().length);
                }
            }
            // shapes whose products fit keep the closed form: each stride the product of the later sizes, 0 as 1
            assertArrayEquals(new long[] {big, 2, 1}, Tensor.allocate(a, 0, big / 2, 2).strides());
            assertArrayEquals(new long[] {2, 1, 1}, Tensor.wrap(seg, 0, 2, 0).strides());
        }
    }

    /**
     * Tensor.of with a wrong number of values is refused before it takes memory from the arena: an arena frees
     * nothing until it closes, so a long-lived one grew by the whole shape on every refused call.
     */
    @Test
    void ofWithTheWrongLengthTakesNothingFromTheArena() {
        try (Arena real = Arena.ofConfined()) {
            long[] taken = {0};
            Arena counting = new Arena() {
                @Override
                public MemorySegment allocate(long byteSize, long byteAlignment) {
                    taken[0] += byteSize;
                    return real.allocate(byteSize, byteAlignment);
                }

                @Override
                public MemorySegment.Scope scope() {
                    return real.scope();
                }

                @Override
                public void close() {
                    throw new UnsupportedOperationException();
                }
            };
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Tensor.of(counting, new float[5], 1000, 1000));
            assertTrue(e.getMessage().contains("[1000, 1000]"), e.getMessage());
            assertEquals(0, taken[0]);
            assertThrows(NullPointerException.class, () -> Tensor.of(counting, null, 2));
            assertEquals(0, taken[0]);
            assertArrayEquals(new float[] {1, 2, 3, 4}, Tensor.of(counting, new float[] {1, 2, 3, 4}, 2, 2).toArray());
            assertEquals(16, taken[0]);
        }
    }

    /** A tensor with no elements is contiguous wherever its zero is, so it reshapes like any other. */
    @Test
    void emptyTensorsAreContiguousAndReshape() {
        try (Arena a = Arena.ofConfined()) {
            for (long[] shape : new long[][] {{2, 0}, {0, 4}, {3, 0, 5}}) {
                Tensor t = Tensor.allocate(a, shape);
                assertTrue(t.isContiguous(), Arrays.toString(shape));
                assertArrayEquals(new long[] {0, 2}, t.reshape(0, 2).shape());
                assertEquals(0, t.reshape(0).elementCount());
            }
        }
    }

    /**
     * copyTo is toArray into part of a caller's array, for contiguous tensors and strided views alike, leaving the
     * rest of the array untouched; copyFrom(values, at) is copyFrom of that part (property: both against toArray
     * and copyFrom(float[]) of Arrays.copyOfRange).
     */
    @Test
    void copyToAndCopyFromAnOffsetAgreeWithToArrayAndCopyFrom() {
        try (Arena a = Arena.ofConfined()) {
            float[] values = new float[24];
            for (int i = 0; i < values.length; i++) {
                values[i] = i + 0.5f;
            }
            Tensor t = Tensor.allocate(a, 2, 3, 4).copyFrom(values);
            for (Tensor view : List.of(t, t.transpose(0, 2), t.slice(1, 1, 3), t.select(0, 1))) {
                int n = (int) view.elementCount();
                float[] dst = new float[n + 7];
                Arrays.fill(dst, -1f);
                view.copyTo(dst, 3);
                float[] want = new float[n + 7];
                Arrays.fill(want, -1f);
                System.arraycopy(view.toArray(), 0, want, 3, n);
                assertArrayEquals(want, dst, "copyTo of " + view);

                Tensor target = Tensor.allocate(a, view.shape());
                float[] src = new float[n + 5];
                for (int i = 0; i < src.length; i++) {
                    src[i] = 100 + i;
                }
                target.copyFrom(src, 5);
                Tensor expected = Tensor.allocate(a, view.shape()).copyFrom(Arrays.copyOfRange(src, 5, 5 + n));
                assertArrayEquals(expected.toArray(), target.toArray(), "copyFrom at 5 into " + view.shapeString());
            }
            // into a strided view (the transpose of a fresh tensor), element by element
            Tensor strided = Tensor.allocate(a, 4, 3, 2).transpose(0, 2);
            float[] src = new float[30];
            for (int i = 0; i < src.length; i++) {
                src[i] = 200 + i;
            }
            strided.copyFrom(src, 2);
            assertArrayEquals(Arrays.copyOfRange(src, 2, 26), strided.toArray(), "copyFrom at 2 into a transpose");
        }
    }

    @Test
    void copyToAndCopyFromRefuseARangeThatCannotHoldTheTensorAndWriteNothing() {
        try (Arena a = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(a, 2, 3).fill(7f);
            float[] dst = new float[8];
            Arrays.fill(dst, -1f);
            for (int at : new int[] {-1, 3, 9, Integer.MAX_VALUE}) {
                IndexOutOfBoundsException e = assertThrows(IndexOutOfBoundsException.class, () -> t.copyTo(dst, at));
                assertTrue(e.getMessage().startsWith("dst of 8 floats from index " + at + " cannot hold tensor [2, 3]"),
                        e.getMessage());
                IndexOutOfBoundsException f = assertThrows(IndexOutOfBoundsException.class,
                        () -> t.copyFrom(dst, at));
                assertTrue(f.getMessage().startsWith("values of 8 floats from index " + at), f.getMessage());
            }
            float[] untouched = new float[8];
            Arrays.fill(untouched, -1f);
            assertArrayEquals(untouched, dst);
            assertArrayEquals(new float[] {7, 7, 7, 7, 7, 7}, t.toArray());
            t.copyTo(dst, 2);
            assertArrayEquals(new float[] {-1, -1, 7, 7, 7, 7, 7, 7}, dst, "the last range that fits");
            assertThrows(NullPointerException.class, () -> t.copyTo(null, 0));
            assertThrows(NullPointerException.class, () -> t.copyFrom(null, 0));
            // an empty tensor fits anywhere in the array, its end included
            Tensor empty = Tensor.allocate(a, 0, 3);
            empty.copyTo(dst, 8);
            empty.copyFrom(dst, 8);
        }
    }
}
