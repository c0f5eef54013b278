package dev.qkv.io;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static dev.qkv.io.NpyBytes.b1;
import static dev.qkv.io.NpyBytes.f4;
import static dev.qkv.io.NpyBytes.f8;
import static dev.qkv.io.NpyBytes.file;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

class NpyTest {

    @TempDir
    Path dir;

    static Stream<long[]> shapes() {
        return Stream.of(new long[] {}, new long[] {0}, new long[] {1}, new long[] {7}, new long[] {2, 0, 5},
                new long[] {3, 17}, new long[] {1, 8, 7, 5}, new long[] {2, 3, 65, 3});
    }

    @ParameterizedTest
    @MethodSource("shapes")
    void roundTripKeepsShapeAndEveryBit(long[] shape) throws IOException {
        long seed = 11 + Arrays.hashCode(shape);
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, shape);
            SplittableRandom r = new SplittableRandom(seed);
            for (long i = 0; i < t.elementCount(); i++) {
                t.setAt(i, (float) r.nextGaussian());
            }
            Path p = dir.resolve("t.npy");
            Npy.write(p, t);
            NpyArray back = Npy.read(p, arena);
            String what = "seed " + seed + " shape " + Arrays.toString(shape);
            assertEquals(Npy.Dtype.FLOAT32, back.dtype(), what);
            assertFalse(back.isBool(), what);
            assertArrayEquals(shape, back.tensor().shape(), what);
            assertArrayEquals(t.toArray(), back.tensor().toArray(), what);
        }
    }

    @Test
    void writerFollowsTheFormatByteForByte() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.of(arena, new float[] {1.5f, -2f, 3.25f, Float.NEGATIVE_INFINITY, 0f, 7f}, 2, 3);
            Path p = dir.resolve("t.npy");
            Npy.write(p, t);
            byte[] bytes = Files.readAllBytes(p);
            ByteBuffer b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
            assertEquals((byte) 0x93, b.get(0));
            assertEquals("NUMPY", new String(bytes, 1, 5, StandardCharsets.ISO_8859_1));
            assertEquals(1, b.get(6));
            assertEquals(0, b.get(7));
            int headerLen = b.getShort(8) & 0xffff;
            assertEquals(0, (10 + headerLen) % 64, "data starts on a 64-byte boundary");
            String header = new String(bytes, 10, headerLen, StandardCharsets.ISO_8859_1);
            assertTrue(header.endsWith("\n"));
            assertEquals("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", header.strip());
            assertEquals(10 + headerLen + 6 * 4, bytes.length);
            assertArrayEquals(f4(1.5f, -2f, 3.25f, Float.NEGATIVE_INFINITY, 0f, 7f),
                    Arrays.copyOfRange(bytes, 10 + headerLen, bytes.length));
        }
    }

    @Test
    void writerTakesNonContiguousViewsInRowMajorOrder() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.of(arena, new float[] {1, 2, 3, 4, 5, 6}, 2, 3).transpose();
            Path p = dir.resolve("t.npy");
            Npy.write(p, t);
            NpyArray back = Npy.read(p, arena);
            assertArrayEquals(new long[] {3, 2}, back.tensor().shape());
            assertArrayEquals(new float[] {1, 4, 2, 5, 3, 6}, back.tensor().toArray());
        }
    }

    /**
     * Views larger than one 1 MiB write chunk (a transpose, a broadcast, a strided slice at an offset) are written in
     * row-major order across the chunk boundaries: each file reads back as the view's own {@code toArray}. They
     * are gathered a chunk at a time; before, each was first copied whole (a broadcast view of 4 bytes standing
     * for gigabytes of output took that much memory).
     */
    @Test
    void writerTakesViewsLargerThanAChunk() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            Tensor base = Tensor.allocate(arena, 700, 503);
            for (long i = 0; i < base.elementCount(); i++) {
                base.setAt(i, i * 0.25f - 3f);
            }
            Tensor one = Tensor.of(arena, new float[] {2.5f}, 1, 1);
            List<Tensor> views = List.of(base.transpose(), one.broadcastTo(640, 500),
                    base.slice(0, 3, 690).slice(1, 2, 501), base.slice(1, 7, 8).broadcastTo(700, 400));
            for (Tensor view : views) {
                Path p = dir.resolve("v.npy");
                Npy.write(p, view);
                NpyArray back = Npy.read(p, arena);
                assertArrayEquals(view.shape(), back.tensor().shape());
                assertArrayEquals(view.toArray(), back.tensor().toArray(), view.toString());
            }
        }
    }

    /**
     * A tensor over a Java {@code float[]} (README: heap memory is valid) is written like an off-heap one. The
     * contiguous path wrapped the segment as a {@code ByteBuffer}, which a heap segment of a {@code float[]}
     * cannot give: the write failed with {@code UnsupportedOperationException} and left no file. The view starts
     * 3 floats in, and holds more floats than one 1 MiB write chunk.
     */
    @Test
    void writerTakesTensorsOverJavaArrays() throws IOException {
        int n = 300_001;
        float[] backing = new float[n + 3];
        for (int i = 0; i < backing.length; i++) {
            backing[i] = i * 0.5f - 7f;
        }
        Tensor t = Tensor.view(MemorySegment.ofArray(backing), 3, new long[] {n}, new long[] {1});
        Path p = dir.resolve("t.npy");
        Npy.write(p, t);
        byte[] bytes = Files.readAllBytes(p);
        int headerLen = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).getShort(8) & 0xffff;
        assertArrayEquals(f4(Arrays.copyOfRange(backing, 3, n + 3)),
                Arrays.copyOfRange(bytes, 10 + headerLen, bytes.length));
        try (Arena arena = Arena.ofConfined()) {
            Tensor small = Tensor.wrap(MemorySegment.ofArray(new float[] {1, 2, 3, 4, 5, 6}), 2, 3);
            Npy.write(p, small);
            NpyArray back = Npy.read(p, arena);
            assertArrayEquals(new long[] {2, 3}, back.tensor().shape());
            assertArrayEquals(new float[] {1, 2, 3, 4, 5, 6}, back.tensor().toArray());
        }
        assertEquals(List.of(p), listDir());
    }

    @Test
    void writeReplacesAnExistingFile() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            Path p = dir.resolve("t.npy");
            Files.writeString(p, "old");
            Npy.write(p, Tensor.of(arena, new float[] {4, 5}, 2));
            assertArrayEquals(new float[] {4, 5}, Npy.read(p, arena).tensor().toArray());
            assertEquals(List.of(p), listDir());
        }
    }

    /**
     * The check given to write runs on complete data, before the rename; when it throws, its exception comes out
     * as it is, the earlier file stays and no temporary file is left (the command line prints its summary there).
     */
    @Test
    void aRefusingBeforeReplaceCancelsTheWrite() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            Path p = dir.resolve("t.npy");
            Files.writeString(p, "old");
            IOException refusal = new IOException("stdout lost");
            IOException thrown = assertThrows(IOException.class, () -> Npy.write(p, Tensor.of(arena,
                    new float[] {4, 5}, 2), () -> {
                        // the data is complete and on disk in a temporary file beside p
                        List<Path> tmp = listDir().stream().filter(f -> !f.equals(p)).toList();
                        assertEquals(1, tmp.size(), tmp.toString());
                        assertEquals(Npy.header(new long[] {2}).length + 8L, Files.size(tmp.get(0)));
                        throw refusal;
                    }));
            assertTrue(thrown == refusal, thrown.toString());
            assertEquals("old", Files.readString(p));
            assertEquals(List.of(p), listDir());
            Npy.write(p, Tensor.of(arena, new float[] {4, 5}, 2), () -> { });
            assertArrayEquals(new float[] {4, 5}, Npy.read(p, arena).tensor().toArray());
            assertEquals(List.of(p), listDir());
        }
    }

    /**
     * Replacing a file keeps its permission bits, as writing it in place (numpy's {@code np.save}, a shell's
     * {@code >}) would: the renamed temporary file used to get the umask's {@code rw-r--r--}, so a private
     * {@code rw-------} output became readable by everyone and a group-writable one lost its group's write.
     */
    @Test
    void replacingAFileKeepsItsPermissions() throws IOException {
        assumeTrue(dir.getFileSystem().supportedFileAttributeViews().contains("posix"), "POSIX permissions");
        try (Arena arena = Arena.ofConfined()) {
            for (String mode : List.of("rw-------", "rw-rw----", "r--r--r--")) {
                Path p = dir.resolve("t.npy");
                Files.writeString(p, "old");
                Files.setPosixFilePermissions(p, PosixFilePermissions.fromString(mode));
                Npy.write(p, Tensor.of(arena, new float[] {4, 5}, 2));
                assertEquals(mode, PosixFilePermissions.toString(Files.getPosixFilePermissions(p)));
                assertArrayEquals(new float[] {4, 5}, Npy.read(p, arena).tensor().toArray());
                assertEquals(List.of(p), listDir());
                Files.delete(p);
            }
        }
    }

    @Test
    void oneDimensionalAndScalarTuplesAreRead() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.read(NpyBytes.write(dir, "a.npy", file("<f4", "(3,)", f4(1, 2, 3))), arena);
            assertArrayEquals(new long[] {3}, a.tensor().shape());
            NpyArray s = Npy.read(NpyBytes.write(dir, "s.npy", file("<f4", "()", f4(42))), arena);
            assertEquals(0, s.tensor().rank());
            assertEquals(42f, s.tensor().get());
        }
    }

    @Test
    void float64IsRoundedToNearestFloat32() throws IOException {
        double[] xs = {1.0 / 3, -2.5, 1e-50, 3.4e39, Math.PI, Double.NEGATIVE_INFINITY, -0.0};
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.read(NpyBytes.write(dir, "d.npy", file("<f8", "(7,)", f8(xs))), arena);
            assertEquals(Npy.Dtype.FLOAT64, a.dtype());
            float[] want = new float[xs.length];
            for (int i = 0; i < xs.length; i++) {
                want[i] = (float) xs[i];
            }
            assertArrayEquals(want, a.tensor().toArray());
        }
    }

    @Test
    void boolBecomesZeroOneAndIsReported() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.read(NpyBytes.write(dir, "b.npy",
                    file("|b1", "(2, 3)", b1(true, false, true, false, false, true))), arena);
            assertTrue(a.isBool());
            assertEquals(Npy.Dtype.BOOL, a.dtype());
            assertArrayEquals(new long[] {2, 3}, a.tensor().shape());
            assertArrayEquals(new float[] {1, 0, 1, 0, 0, 1}, a.tensor().toArray());
        }
    }

    @Test
    void largeConvertedArraysCrossChunkBoundaries() throws IOException {
        int n = (1 << 20) / 8 * 3 + 5; // three staging chunks of float64 and a tail
        double[] xs = new double[n];
        SplittableRandom r = new SplittableRandom(5);
        for (int i = 0; i < n; i++) {
            xs[i] = r.nextDouble() - 0.5;
        }
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.read(NpyBytes.write(dir, "d.npy", file("<f8", "(" + n + ",)", f8(xs))), arena);
            float[] got = a.tensor().toArray();
            for (int i = 0; i < n; i++) {
                assertEquals((float) xs[i], got[i], "seed 5 element " + i);
            }
        }
    }

    @Test
    void versionsTwoAndThreeAndLooseHeadersAreRead() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            String v2 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
            assertArrayEquals(new float[] {1, 2}, Npy.read(NpyBytes.write(dir, "v2.npy", file(2, v2, f4(1, 2))), arena)
                    .tensor().toArray());
            String v3 = "{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<f4\"}   \n";
            assertArrayEquals(new float[] {3, 4}, Npy.read(NpyBytes.write(dir, "v3.npy", file(3, v3, f4(3, 4))), arena)
                    .tensor().toArray());
            String py2 = "{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 2L), }";
            assertArrayEquals(new long[] {1, 2}, Npy.read(NpyBytes.write(dir, "py2.npy", file(1, py2, f4(5, 6))), arena)
                    .tensor().shape());
        }
    }

    static Stream<Arguments> malformed() {
        byte[] two = f4(1, 2);
        String ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        byte[] good = file(1, ok, two);
        byte[] badMagic = good.clone();
        badMagic[1] = 'X';
        byte[] v11 = good.clone();
        v11[7] = 1;
        ByteBuffer hugeHeader = ByteBuffer.allocate(12 + 8).order(ByteOrder.LITTLE_ENDIAN);
        hugeHeader.put(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0}).putInt(Integer.MAX_VALUE);
        return Stream.of(
                Arguments.of("empty file", new byte[0], "bad magic"),
                Arguments.of("bad magic", badMagic, "bad magic"),
                Arguments.of("text file", "hello, world\n".getBytes(StandardCharsets.US_ASCII), "bad magic"),
                Arguments.of("only magic", Arrays.copyOf(good, 6), "no format version"),
                Arguments.of("no header length", Arrays.copyOf(good, 9), "no header length"),
                Arguments.of("version 4.0", file(4, ok, two), "version 4.0"),
                Arguments.of("version 1.1", v11, "version 1.1"),
                Arguments.of("header longer than file", Arrays.copyOf(good, 30), "truncated header"),
                Arguments.of("multi-GB header length", hugeHeader.array(), "exceeds the limit"),
                Arguments.of("not a literal", file(1, "descr = '<f4'", two), "not a valid Python dict literal"),
                Arguments.of("call", file(1, "dict(descr='<f4')", two), "not a valid Python dict literal"),
                Arguments.of("unterminated string", file(1, "{'descr: '<f4'}", two), "not a valid Python dict literal"),
                Arguments.of("unclosed dict", file(1, "{'descr': '<f4', 'shape': (2,)", two), "not a valid Python"),
                Arguments.of("text after dict", file(1, ok + " x", two), "not a valid Python dict literal"),
                Arguments.of("deep nesting", file(1, "(".repeat(5000), two), "nesting"),
                Arguments.of("a list", file(1, "['<f4', False, (2,)]", two), "not a Python dict"),
                Arguments.of("missing shape", file(1, "{'descr': '<f4', 'fortran_order': False}", two),
                        "lacks the key 'shape'"),
                Arguments.of("missing descr", file(1, "{'fortran_order': False, 'shape': (2,)}", two),
                        "lacks the key 'descr'"),
                Arguments.of("missing fortran_order", file(1, "{'descr': '<f4', 'shape': (2,)}", two),
                        "lacks the key 'fortran_order'"),
                Arguments.of("extra key", file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
                        two), "unexpected key 'x'"),
                // Python 3 refuses 007 (SyntaxError), so numpy does; Python 2 read 010 as octal 8: it read as 10
                Arguments.of("leading zeros", file("<f4", "(002,)", two), "leading zeros"),
                Arguments.of("octal-looking", file("<f4", "(1, 010)", two), "leading zeros"),
                Arguments.of("repeated key, wrong keys", file(1, "{'descr': '<f4', 'descr': '<f4', 'shape': (2,)}",
                        two), "lacks the key 'fortran_order'"),
                Arguments.of("big-endian", file(">f4", "(2,)", two), "'>f4' (big-endian)"),
                Arguments.of("int32", file("<i4", "(2,)", two), "unsupported dtype '<i4'"),
                Arguments.of("int64", file("<i8", "(1,)", f8(1)), "unsupported dtype '<i8'"),
                Arguments.of("float16", file("<f2", "(4,)", two), "unsupported dtype '<f2'"),
                Arguments.of("uint8", file("|u1", "(8,)", two), "unsupported dtype '|u1'"),
                // one byte has no byte order: '>u1' is an integer refused as such, not as big-endian
                Arguments.of("uint8, '>' mark", file(">u1", "(8,)", two), "unsupported dtype '>u1'; expected"),
                Arguments.of("structured", file(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}",
                        two), "structured"),
                Arguments.of("fortran order", file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2,)}", two),
                        "fortran_order is True"),
                Arguments.of("fortran order not bool", file(1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
                        two), "expected True or False"),
                Arguments.of("negative dim", file("<f4", "(2, -1)", two), "dimension -1 is negative"),
                Arguments.of("float dim", file("<f4", "(2.5,)", two), "dimension 2.5 is not an integer"),
                Arguments.of("string dim", file("<f4", "('2',)", two), "dimension '2' is not an integer"),
                Arguments.of("shape is a list", file("<f4", "[2]", two), "is not a tuple"),
                Arguments.of("shape is an int", file("<f4", "2", two), "is not a tuple"),
                Arguments.of("dim beyond long", file("<f4", "(9223372036854775808,)", two), "does not fit in a long"),
                Arguments.of("element count overflows", file("<f4", "(4294967296, 4294967296)", two),
                        "more elements than fit in a long"),
                Arguments.of("byte size overflows", file("<f8", "(2305843009213693952,)", two),
                        "more bytes than fit in a long"),
                Arguments.of("lying shape", file("<f4", "(1000000, 1000000, 1000)", two), "truncated data"),
                Arguments.of("truncated data", file("<f4", "(3,)", two), "needs 12 bytes, the file has 8"),
                Arguments.of("truncated f8", file("<f8", "(2,)", f8(1)), "truncated data"),
                Arguments.of("trailing data", file("<f4", "(1,)", two), "4 bytes of trailing data"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("malformed")
    void malformedFilesAreNamedFormatErrors(String label, byte[] bytes, String expected) throws IOException {
        Path p = NpyBytes.write(dir, "bad.npy", bytes);
        try (Arena arena = Arena.ofConfined()) {
            NpyFormatException e = assertThrows(NpyFormatException.class, () -> Npy.read(p, arena), label);
            assertTrue(e.getMessage().startsWith(p + ": "), e.getMessage());
            assertTrue(e.getMessage().contains(expected), "expected '" + expected + "' in: " + e.getMessage());
            assertFalse(e.getMessage().contains("\n"), e.getMessage());
        }
    }

    /**
     * numpy reads the header with {@code ast.literal_eval}, where a repeated key keeps its last value, and then
     * checks only the set of keys: numpy 2.4 loads these files as float32 {@code (2,)}. qkv refused them as a
     * "duplicate key"; it now reads what numpy reads.
     */
    @Test
    void aRepeatedKeyKeepsItsLastValueAsInNumpy() throws IOException {
        byte[] two = NpyBytes.f4(1.5f, -2.5f);
        for (String header : new String[] {
                "{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
                "{'descr': '<f4', 'fortran_order': True, 'shape': (3,), 'fortran_order': False, 'shape': (2,)}"}) {
            Path p = NpyBytes.write(dir, "repeated.npy", NpyBytes.file(1, header, two));
            try (Arena arena = Arena.ofConfined()) {
                NpyArray a = Npy.read(p, arena);
                assertEquals(Npy.Dtype.FLOAT32, a.dtype(), header);
                assertArrayEquals(new long[] {2}, a.tensor().shape(), header);
                assertArrayEquals(new float[] {1.5f, -2.5f}, a.tensor().toArray(), header);
            }
        }
    }

    /** Python 3 takes {@code 0} and {@code 00} (zeros only) as integers, so numpy does. */
    @Test
    void zerosOnlyAreAnInteger() throws IOException {
        Path p = NpyBytes.write(dir, "zeros.npy", NpyBytes.file("<f4", "(3, 00)", new byte[0]));
        try (Arena arena = Arena.ofConfined()) {
            assertArrayEquals(new long[] {3, 0}, Npy.read(p, arena).tensor().shape());
        }
    }

    /** A closed arena, or one confined to another thread, named the shape but not the file being read. */
    @Test
    void anUnusableArenaIsRefusedNamingTheFile() throws Exception {
        Path p = NpyBytes.write(dir, "two.npy", NpyBytes.file("<f4", "(2,)", NpyBytes.f4(1f, 2f)));
        Arena gone = Arena.ofConfined();
        gone.close();
        IllegalStateException closed = assertThrows(IllegalStateException.class, () -> Npy.read(p, gone));
        assertEquals(p + ": tensor [2]: the arena is closed", closed.getMessage());
        Arena[] foreign = new Arena[1];
        Thread t = new Thread(() -> foreign[0] = Arena.ofConfined());
        t.start();
        t.join();
        WrongThreadException wrong = assertThrows(WrongThreadException.class, () -> Npy.read(p, foreign[0]));
        assertEquals(p + ": tensor [2]: the arena is confined to another thread", wrong.getMessage());
    }

    /**
     * A sparse {@code |b1} file costs no disk, and its float32 copy is 4 times its apparent size: a file whose copy
     * needs more than the machine's physical memory was handed to the allocator, which under Linux's overcommit
     * may grant it and then kill the JVM while the memory is zeroed. It is refused before anything is allocated.
     */
    @Test
    void aSparseFileWhoseCopyExceedsPhysicalMemoryIsRefusedBeforeAllocating() throws IOException {
        assumeTrue(!"1".equals(Files.readString(Path.of("/proc/sys/vm/overcommit_memory")).trim()),
                "with overcommit always on, the unchanged reader would zero the memory");
        long physical = ((com.sun.management.OperatingSystemMXBean)
                java.lang.management.ManagementFactory.getOperatingSystemMXBean()).getTotalMemorySize();
        long count = physical / Float.BYTES + 1;
        byte[] head = NpyBytes.file("|b1", "(" + count + ",)", new byte[0]);
        Path p = NpyBytes.write(dir, "sparse.npy", head);
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(head.length + count);
        }
        try (Arena arena = Arena.ofConfined()) {
            NpyFormatException e = assertThrows(NpyFormatException.class, () -> Npy.read(p, arena));
            assertTrue(e.getMessage().startsWith(p + ": shape [" + count + "] needs " + count * Float.BYTES
                    + " bytes of memory as float32, more than this machine's " + physical), e.getMessage());
        } finally {
            Files.delete(p);
        }
    }

    @Test
    void missingFileIsNoSuchFile() {
        try (Arena arena = Arena.ofConfined()) {
            assertThrows(NoSuchFileException.class, () -> Npy.read(dir.resolve("absent.npy"), arena));
        }
    }

    @Test
    void directoryIsAFormatError() {
        try (Arena arena = Arena.ofConfined()) {
            NpyFormatException e = assertThrows(NpyFormatException.class, () -> Npy.read(dir, arena));
            assertTrue(e.getMessage().contains("is a directory"), e.getMessage());
        }
    }

    /** A tensor of more dimensions than numpy (and read) take is refused before any file exists. */
    @Test
    void writeOfMoreThan64DimensionsIsRefusedBeforeTouchingDisk() throws IOException {
        Path p = dir.resolve("deep.npy");
        try (Arena arena = Arena.ofConfined()) {
            long[] shape = new long[65];
            Arrays.fill(shape, 1);
            Tensor t = Tensor.allocate(arena, shape);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Npy.write(p, t));
            assertTrue(e.getMessage().contains("65 dimensions") && e.getMessage().contains("at most 64"),
                    e.getMessage());
            // the file it was for, as every other refusal of write names it
            assertTrue(e.getMessage().startsWith(p.toString() + ": "), e.getMessage());
            assertFalse(Files.exists(p));
            try (var files = Files.list(dir)) {
                assertEquals(0, files.count(), "no temporary file either");
            }
            // 64 is numpy's limit and still written
            Npy.write(p, Tensor.allocate(arena, Arrays.copyOf(shape, 64)));
            assertEquals(64, Npy.read(p, arena).tensor().rank());
        }
    }

    @Test
    void writeIntoMissingFolderFailsAndCreatesNothing() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            Path p = dir.resolve("missing").resolve("o.npy");
            NoSuchFileException e = assertThrows(NoSuchFileException.class,
                    () -> Npy.write(p, Tensor.of(arena, new float[] {1}, 1)));
            assertTrue(e.getMessage().contains("does not exist"), e.getMessage());
            assertEquals(List.of(), listDir());
        }
    }

    @Test
    void failedRenameLeavesNoFileBehindAndNamesTheOutput() throws IOException {
        // a name longer than the file system allows (255 bytes): the data is written under the temporary name,
        // then the rename must fail
        Path target = dir.resolve("a".repeat(300) + ".npy");
        try (Arena arena = Arena.ofConfined()) {
            IOException e = assertThrows(IOException.class,
                    () -> Npy.write(target, Tensor.of(arena, new float[] {1, 2}, 2)));
            assertTrue(e.getMessage().startsWith(target.toString()), e.getMessage());
            assertFalse(e.getMessage().contains(".qkv-"), "the temporary name leaked: " + e.getMessage());
        }
        assertEquals(List.of(), listDir(), "no temporary file may remain");
    }

    @Test
    void theLongestNameTheFolderAllowsCanBeWritten() throws IOException {
        // 255 bytes: the temporary name must not be longer than the output's
        Path target = dir.resolve("b".repeat(251) + ".npy");
        try (Arena arena = Arena.ofConfined()) {
            Npy.write(target, Tensor.of(arena, new float[] {1, 2, 3}, 3));
            assertArrayEquals(new float[] {1, 2, 3}, Npy.read(target, arena).tensor().toArray());
        }
        assertEquals(List.of(target), listDir());
    }

    @Test
    void aPathThatIsNotARegularFileIsRefusedAndKept() throws IOException {
        // a non-empty folder under the target name: renaming over it would fail or replace it
        Path target = dir.resolve("o.npy");
        Files.createDirectory(target);
        Files.writeString(target.resolve("keep"), "x");
        try (Arena arena = Arena.ofConfined()) {
            IOException e = assertThrows(IOException.class,
                    () -> Npy.write(target, Tensor.of(arena, new float[] {1, 2}, 2)));
            assertTrue(e.getMessage().contains("not a regular file"), e.getMessage());
        }
        assertEquals(List.of(target), listDir(), "no temporary file may remain");
        assertTrue(Files.isDirectory(target));
    }

    @Test
    void aSymbolicLinkIsFollowedAndKept() throws IOException {
        Path real = Files.createDirectory(dir.resolve("real")).resolve("o.npy");
        Files.writeString(real, "old");
        Path link = Files.createSymbolicLink(dir.resolve("link.npy"), real);
        try (Arena arena = Arena.ofConfined()) {
            Npy.write(link, Tensor.of(arena, new float[] {4, 5}, 2));
            assertTrue(Files.isSymbolicLink(link), "the link was replaced by a file");
            assertArrayEquals(new float[] {4, 5}, Npy.read(real, arena).tensor().toArray());
        }
        try (Stream<Path> s = Files.list(real.getParent())) {
            assertEquals(List.of(real), s.toList(), "no temporary file may remain");
        }
    }

    @Test
    void writeOfTensorFromClosedArenaFailsBeforeTouchingDisk() throws IOException {
        Tensor t;
        try (Arena arena = Arena.ofConfined()) {
            t = Tensor.of(arena, new float[] {1}, 1);
        }
        Tensor dead = t;
        assertThrows(IllegalStateException.class, () -> Npy.write(dir.resolve("o.npy"), dead));
        assertEquals(List.of(), listDir());
    }

    /**
     * A tensor of a confined arena written from another thread is refused by name and shape before any file is
     * made; before, the JDK's "Attempted access outside owning thread" came from the middle of the write.
     */
    @Test
    void writeOfTensorConfinedToAnotherThreadIsRefusedByName() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 3, 5);
            Throwable[] thrown = new Throwable[1];
            Thread other = new Thread(() -> {
                try {
                    Npy.write(dir.resolve("o.npy"), t);
                } catch (Throwable e) {
                    thrown[0] = e;
                }
            });
            other.start();
            other.join();
            assertTrue(thrown[0] instanceof WrongThreadException, String.valueOf(thrown[0]));
            assertTrue(thrown[0].getMessage().contains("tensor [3, 5]"), thrown[0].getMessage());
        }
        assertEquals(List.of(), listDir());
    }

    private List<Path> listDir() throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.sorted().toList();
        }
    }

    /**
     * A process stopped (SIGTERM) while it writes leaves no temporary file: write's own clean-up never runs then,
     * and a shutdown hook removes it. Before the hook a stopped {@code qkv sdpa} left a partial
     * {@code .qkv-*.tmp} of tens of MB beside its output for good. The child writes 64 MB again and again; it is
     * stopped as soon as a temporary file is seen. The output itself, when there is one, is whole.
     */
    @Test
    @org.junit.jupiter.api.Timeout(300)
    void aStoppedWriteLeavesNoTemporaryFile() throws Exception {
        String javaCmd = ProcessHandle.current().info().command().orElse("java");
        Process p = new ProcessBuilder(javaCmd, "-cp", System.getProperty("java.class.path"),
                NpyWriteLoop.class.getName(), dir.toString()).redirectErrorStream(true).start();
        try {
            long deadline = System.nanoTime() + 60_000_000_000L;
            boolean seen = false;
            while (!seen && System.nanoTime() < deadline && p.isAlive()) {
                seen = temporaryFiles().findAny().isPresent();
                if (!seen) {
                    Thread.sleep(1);
                }
            }
            if (!seen) {
                // only now, and only from a child that ended: reading a live child's output would wait for it
                p.destroyForcibly().waitFor(60, java.util.concurrent.TimeUnit.SECONDS);
                fail("the child never wrote a temporary file: " + new String(p.getInputStream().readNBytes(4000),
                        StandardCharsets.UTF_8));
            }
            p.destroy(); // SIGTERM: shutdown hooks run
            assertTrue(p.waitFor(60, java.util.concurrent.TimeUnit.SECONDS), "the child did not stop");
        } finally {
            p.destroyForcibly();
        }
        assertEquals(List.of(), temporaryFiles().toList());
        Path out = dir.resolve("out.npy");
        if (Files.exists(out)) {
            assertEquals(128 + 64L * 1024 * 1024, Files.size(out));
        }
    }

    /**
     * The shutdown hook removes the temporary files of writes under way, but other threads run on while hooks do:
     * a write that began after the hook had looked left its file for good (seen in `make test` as a stray file of
     * {@link #aStoppedWriteLeavesNoTemporaryFile}). Twenty exits, each in the middle of a stream of small writes.
     */
    @Test
    void writesDuringExitLeaveNoTemporaryFile() throws Exception {
        String javaCmd = ProcessHandle.current().info().command().orElse("java");
        for (int run = 0; run < 20; run++) {
            Process p = new ProcessBuilder(javaCmd, "-cp", System.getProperty("java.class.path"),
                    NpyExitDuringWrites.class.getName(), dir.toString(), String.valueOf(3 * run))
                    .redirectErrorStream(true).start();
            try {
                assertTrue(p.waitFor(60, java.util.concurrent.TimeUnit.SECONDS), "the child did not exit");
                String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
                assertEquals(0, p.exitValue(), output);
            } finally {
                p.destroyForcibly();
            }
            assertEquals(List.of(), temporaryFiles().toList(), "run " + run);
            assertTrue(Files.exists(dir.resolve("out.npy")), "run " + run + ": the child wrote nothing");
        }
    }

    private Stream<Path> temporaryFiles() throws IOException {
        try (Stream<Path> files = Files.list(dir)) {
            return files.filter(f -> f.getFileName().toString().startsWith(".qkv-")).toList().stream();
        }
    }

    /**
     * numpy reads any non-zero byte of a {@code |b1} array as True ({@code np.frombuffer(b'\x00\x01\x02\xff',
     * bool).astype(np.float32)} is {@code [0, 1, 1, 1]}), as the class comment says ("booleans become 0 and 1").
     * Only a random bit flip of MalformedNpyTest (one fixed seed) caught reading {@code == 1} as true
     * (mutation testing); this says it directly.
     */
    @Test
    void boolBytesOtherThanOneAreTrue() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.read(NpyBytes.write(dir, "b.npy",
                    file("|b1", "(5,)", new byte[] {0, 1, 2, (byte) 0x80, (byte) 0xff})), arena);
            assertArrayEquals(new float[] {0, 1, 1, 1, 1}, a.tensor().toArray());
        }
    }

    /**
     * float32 data is read straight into the tensor in chunks of 2^24 bytes (FileRanges): an array of more than one
     * chunk must come back whole, each chunk from its own place in the file. Values are their own indices (exact
     * in float32 below 2^24), so a chunk read from the wrong offset shows.
     */
    @Test
    void float32ArraysLongerThanOneReadChunk() throws IOException {
        int n = (1 << 22) + 3; // 2^24 + 12 bytes
        float[] xs = new float[n];
        for (int i = 0; i < n; i++) {
            xs[i] = i;
        }
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.read(NpyBytes.write(dir, "big.npy", file("<f4", "(" + n + ",)", f4(xs))), arena);
            assertArrayEquals(xs, a.tensor().toArray());
        }
    }

    /**
     * A Hugging Face tokenizer's {@code attention_mask} saved with {@code np.save} is {@code '<i8'}; other integer
     * masks come as {@code '<i4'}, {@code '|u1'}, ... {@link Npy#read} refused them all, so a mask had to be
     * converted by hand. {@link Npy#readMask} reads every little-endian integer dtype as a boolean mask: non-zero
     * is 1 (may attend), zero is 0. The values include ones whose low bytes are all zero ({@code 256},
     * {@code 1 << 40}), so a reader that looks at the first byte only shows; the expected value is the encoded
     * integer compared with 0.
     */
    @ParameterizedTest(name = "{0}")
    // one byte has no byte order: a hand-made header's 'i1', '<i1', '=i1' or '>u1' is the same dtype (mutation
    // testing, round 24: without the case for 'i1' the bare and '<' forms were refused and no test saw it)
    @org.junit.jupiter.params.provider.ValueSource(strings = {"|u1", "|i1", "u1", "i1", "<i1", "=i1", ">u1", "<i2",
            "<u2", "<i4", "<u4", "<i8", "<u8"})
    void readMaskReadsIntegersAsBooleans(String descr) throws IOException {
        int size = Integer.parseInt(descr.substring(descr.length() - 1));
        long[] values = {0, 1, -1, 2, 255, 256, 1L << 16, 1L << 31, 1L << 40, Long.MIN_VALUE, 0};
        ByteBuffer b = ByteBuffer.allocate(values.length * size).order(ByteOrder.LITTLE_ENDIAN);
        float[] want = new float[values.length];
        for (int i = 0; i < values.length; i++) {
            long truncated = size == 8 ? values[i] : values[i] & ((1L << (8 * size)) - 1);
            want[i] = truncated != 0 ? 1 : 0;
            for (int j = 0; j < size; j++) {
                b.put((byte) (values[i] >>> (8 * j)));
            }
        }
        Path p = NpyBytes.write(dir, "m.npy", file(descr, "(" + values.length + ",)", b.array()));
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.readMask(p, arena);
            assertTrue(a.isBool(), descr);
            assertArrayEquals(new long[] {values.length}, a.tensor().shape());
            assertArrayEquals(want, a.tensor().toArray(), descr);
            // q, k, v and x stay floats: an integer file there is refused, saying what is accepted
            NpyFormatException e = assertThrows(NpyFormatException.class, () -> Npy.read(p, arena));
            assertTrue(e.getMessage().contains("unsupported dtype '" + descr + "'")
                    && e.getMessage().contains("'<f4'") && e.getMessage().contains("masks"), e.getMessage());
        }
    }

    /** Floats and booleans read by {@link Npy#readMask} are what {@link Npy#read} gives: a float mask stays additive. */
    @Test
    void readMaskKeepsFloatsAndBooleans() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            NpyArray f = Npy.readMask(NpyBytes.write(dir, "f.npy", file("<f4", "(3,)", f4(-1.5f, 0, 2))), arena);
            assertFalse(f.isBool());
            assertArrayEquals(new float[] {-1.5f, 0, 2}, f.tensor().toArray());
            NpyArray d = Npy.readMask(NpyBytes.write(dir, "d.npy", file("<f8", "(2,)", f8(-0.25, 3))), arena);
            assertFalse(d.isBool());
            assertArrayEquals(new float[] {-0.25f, 3}, d.tensor().toArray());
            NpyArray m = Npy.readMask(NpyBytes.write(dir, "b.npy", file("|b1", "(3,)", b1(true, false, true))), arena);
            assertTrue(m.isBool());
            assertArrayEquals(new float[] {1, 0, 1}, m.tensor().toArray());
        }
    }

    /** A big-endian integer mask is refused by name, saying how to save it; nothing is guessed. */
    @Test
    void readMaskRefusesBigEndianIntegers() throws IOException {
        Path p = NpyBytes.write(dir, "m.npy", file(">i8", "(2,)", new byte[16]));
        try (Arena arena = Arena.ofConfined()) {
            NpyFormatException e = assertThrows(NpyFormatException.class, () -> Npy.readMask(p, arena));
            assertTrue(e.getMessage().startsWith(p + ": unsupported dtype '>i8' (big-endian")
                    && e.getMessage().contains("astype('<i8')"), e.getMessage());
        }
    }

    /**
     * Integer masks are converted through the staging buffer as booleans are: an {@code '<i8'} array of more than
     * one chunk (2^20 bytes) comes back whole. Non-zero values have their low 32 bits zero.
     */
    @Test
    void integerMasksLongerThanOneChunk() throws IOException {
        int n = (1 << 17) + 5;
        ByteBuffer b = ByteBuffer.allocate(n * 8).order(ByteOrder.LITTLE_ENDIAN);
        float[] want = new float[n];
        for (int i = 0; i < n; i++) {
            boolean on = i % 3 != 0;
            b.putLong(on ? (long) i << 32 : 0);
            want[i] = on ? 1 : 0;
        }
        try (Arena arena = Arena.ofConfined()) {
            NpyArray a = Npy.readMask(NpyBytes.write(dir, "big.npy", file("<i8", "(" + n + ",)", b.array())), arena);
            assertArrayEquals(want, a.tensor().toArray());
        }
    }
}
