package dev.qkv.io;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;
import static org.junit.jupiter.api.Named.named;
import static org.junit.jupiter.params.provider.Arguments.arguments;

class SafetensorsTest {

    @TempDir
    Path dir;

    /** The file bytes: little-endian header length, the header text as given, then {@code data}. */
    static byte[] file(String header, byte[] data) {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + data.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h).put(data);
        return b.array();
    }

    static byte[] floats(float... xs) {
        ByteBuffer b = ByteBuffer.allocate(xs.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : xs) {
            b.putFloat(x);
        }
        return b.array();
    }

    static byte[] shorts(int... xs) {
        ByteBuffer b = ByteBuffer.allocate(xs.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (int x : xs) {
            b.putShort((short) x);
        }
        return b.array();
    }

    Path write(String name, byte[] bytes) throws IOException {
        Path p = dir.resolve(name);
        Files.write(p, bytes);
        return p;
    }

    @Test
    void f32AtAnUnalignedOffsetReadsBackExactlyCopiedOrMapped() throws IOException {
        // a 7-byte pad after the JSON makes the data start at an odd offset: copies and views must read right
        String header = "{\"__metadata__\":{\"format\":\"pt\"},"
                + "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[24,28]}}       ";
        assertTrue((8 + header.length()) % 4 != 0);
        float[] a = {1f, -2f, 3.5f, 0f, -0f, Float.MIN_VALUE};
        byte[] data = new byte[28];
        System.arraycopy(floats(a), 0, data, 0, 24);
        System.arraycopy(floats(42f), 0, data, 24, 4);
        Path p = write("ok.safetensors", file(header, data));
        for (Safetensors.Load load : Safetensors.Load.values()) {
            try (Arena arena = Arena.ofConfined()) {
                Safetensors st = Safetensors.open(p, arena, load);
                assertEquals("pt", st.metadata().get("format"));
                assertEquals(2, st.entries().size());
                Tensor ta = st.tensor("a", arena);
                assertArrayEquals(new long[] {2, 3}, ta.shape());
                assertArrayEquals(a, ta.toArray(), load.toString());
                assertEquals(42f, st.tensor("b", arena).toArray()[0]);
                assertFalse(st.contains("c"));
            }
        }
    }

    /**
     * entries() is in header order (its javadoc), not by name nor by data offset; metadata() is empty when the
     * header has none, or null as the reference implementation allows; both are read-only views.
     */
    @Test
    void entriesKeepHeaderOrderAndMetadataMayBeAbsent() throws IOException {
        for (String meta : new String[] {"", "\"__metadata__\":null,"}) {
            String header = "{" + meta + "\"z\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
                    + "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                    + "\"m\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
            Path p = write("order.safetensors", file(header, floats(1f, 2f, 3f)));
            try (Arena arena = Arena.ofConfined()) {
                Safetensors st = Safetensors.open(p, arena);
                assertEquals(List.of("z", "a", "m"), List.copyOf(st.entries().keySet()), header);
                assertEquals(3f, st.tensor("z", arena).get(0));
                assertEquals(1f, st.tensor("m", arena).get(0));
                assertTrue(st.metadata().isEmpty(), header);
                assertThrows(UnsupportedOperationException.class, () -> st.entries().clear());
                assertThrows(UnsupportedOperationException.class, () -> st.metadata().put("k", "v"));
            }
        }
    }

    @Test
    void aTensorTooLargeForMemoryIsAnErrorNamingItNotAnOutOfMemoryError() throws IOException {
        // 2 TB of F32 declared, the file sparse: copying it needs memory that cannot be had
        assumeTrue(!"1".equals(Files.readString(Path.of("/proc/sys/vm/overcommit_memory")).trim()),
                "with overcommit always on, the allocation could succeed and then be touched");
        long rows = 1L << 20;
        long cols = 1L << 19;
        long bytes = rows * cols * Float.BYTES;
        byte[] head = file("{\"w\":{\"dtype\":\"F32\",\"shape\":[" + rows + "," + cols + "],\"data_offsets\":[0,"
                + bytes + "]}}", new byte[0]);
        Path p = write("huge.safetensors", head);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(head.length + bytes);
        }
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena);
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor("w", arena));
            // refused before allocating when it exceeds physical memory, else when the allocation fails
            assertTrue(e.getMessage().contains("tensor 'w' [" + rows + ", " + cols + "] needs " + bytes
                    + " bytes of memory as float32, "), e.getMessage());
        } finally {
            Files.delete(p);
        }
    }

    /**
     * F16 doubles in memory as float32: a sparse file whose tensor's copy needs more than the machine's physical
     * memory was handed to the allocator, which under Linux's overcommit may grant it and then kill the JVM while
     * the memory is zeroed. It is refused, in both load modes, before anything is allocated.
     */
    @Test
    void aSparseTensorWhoseCopyExceedsPhysicalMemoryIsRefusedBeforeAllocating() throws IOException {
        assumeTrue(!"1".equals(Files.readString(Path.of("/proc/sys/vm/overcommit_memory")).trim()),
                "with overcommit always on, the unchanged reader would zero the memory");
        long physical = ((com.sun.management.OperatingSystemMXBean)
                java.lang.management.ManagementFactory.getOperatingSystemMXBean()).getTotalMemorySize();
        long count = physical / Float.BYTES + 1;
        byte[] head = file("{\"w\":{\"dtype\":\"F16\",\"shape\":[" + count + "],\"data_offsets\":[0,"
                + 2 * count + "]}}", new byte[0]);
        Path p = write("sparse.safetensors", head);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(head.length + 2 * count);
        }
        try {
            for (Safetensors.Load load : Safetensors.Load.values()) {
                try (Arena arena = Arena.ofConfined()) {
                    Safetensors st = Safetensors.open(p, arena, load);
                    SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor("w", arena));
                    assertTrue(e.getMessage().contains("tensor 'w' [" + count + "] needs " + count * Float.BYTES
                            + " bytes of memory as float32, more than this machine's " + physical), e.getMessage());
                }
            }
        } finally {
            Files.delete(p);
        }
    }

    /**
     * A read interrupted by its thread's interrupt (a cancelled request loading weights) fails for that call
     * only: the JDK closes an interruptible FileChannel on interrupt, and every later {@code tensor()}, on any
     * thread, failed with "ClosedChannelException" while the arena was open. F16 1.5 = 0x3E00 and -2.25 = 0xC080.
     */
    @Test
    void anInterruptedReadDoesNotBreakTheFileForLaterReads() throws Exception {
        String header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
        Path p = write("interrupted.safetensors", file(header, shorts(0x3E00, 0xC080)));
        try (Arena arena = Arena.ofShared()) {
            Safetensors st = Safetensors.open(p, arena);
            Thread.currentThread().interrupt();
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor("h", arena));
            assertTrue(Thread.interrupted(), "the caller's interrupt is kept");
            assertTrue(e.getMessage().contains("interrupted"), e.getMessage());
            assertArrayEquals(new float[] {1.5f, -2.25f}, st.tensor("h", arena).toArray());
            float[][] other = new float[1][];
            Thread t = new Thread(() -> {
                try {
                    other[0] = st.tensor("h", arena).toArray();
                } catch (SafetensorsException ex) {
                    throw new AssertionError(ex);
                }
            });
            t.start();
            t.join();
            assertArrayEquals(new float[] {1.5f, -2.25f}, other[0], "read from another thread");
        }
    }

    /** A closed arena given for the copy is refused naming the file and the tensor, not as the JDK's bare "Already closed". */
    @Test
    void aClosedArenaForTheCopyIsRefusedNamingTheTensor() throws Exception {
        String header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
        Path p = write("closed-copy.safetensors", file(header, shorts(0x3E00, 0xC080)));
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena);
            Arena gone = Arena.ofConfined();
            gone.close();
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor("h", gone));
            assertTrue(e.getMessage().contains(p.toString()) && e.getMessage().contains("tensor 'h' [2]")
                    && e.getMessage().contains("closed"), e.getMessage());
        }
    }

    /** Runs {@code call} on a new thread and returns what it threw (null if nothing). */
    private static Throwable onAnotherThread(org.junit.jupiter.api.function.Executable call) throws InterruptedException {
        Throwable[] seen = new Throwable[1];
        Thread t = new Thread(() -> {
            try {
                call.execute();
            } catch (Throwable e) {
                seen[0] = e;
            }
        });
        t.start();
        t.join();
        return seen[0];
    }

    /** A closed arena given to open was the JDK's bare "Already closed" in both modes. */
    @Test
    void aClosedArenaForOpenIsRefusedNamingTheFile() throws Exception {
        String header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
        Path p = write("closed-open.safetensors", file(header, shorts(0x3E00, 0xC080)));
        Arena gone = Arena.ofConfined();
        gone.close();
        Arena[] foreign = new Arena[1];
        assertNull(onAnotherThread(() -> foreign[0] = Arena.ofConfined()));
        for (Safetensors.Load load : Safetensors.Load.values()) {
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(p, gone, load));
            assertTrue(e.getMessage().startsWith(p + ": ") && e.getMessage().contains("closed"), e.getMessage());
            SafetensorsException w = assertThrows(SafetensorsException.class,
                    () -> Safetensors.open(p, foreign[0], load));
            assertTrue(w.getMessage().startsWith(p + ": ") && w.getMessage().contains("another thread"),
                    w.getMessage());
        }
        // foreign[0] holds nothing, and only its ended owner thread could close it
    }

    /**
     * A mapping lives in the arena given to open; when that arena is confined, another thread's tensor() failed
     * with the JDK's bare "Attempted access outside owning thread" (or, for aligned F32, returned a view that
     * thread cannot read). A copy arena confined to another thread named only the shape. Both now name the file
     * and the tensor, before anything is read.
     */
    @Test
    void arenasConfinedToAnotherThreadAreRefusedNamingTheTensor() throws Exception {
        String header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                + "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
        // pad the header so that the data, and "f", start at a multiple of 4 (the zero-copy view case)
        header = header + " ".repeat((4 - (8 + header.length()) % 4) % 4);
        byte[] data = new byte[8];
        System.arraycopy(shorts(0x3E00, 0xC080), 0, data, 0, 4);
        System.arraycopy(floats(2f), 0, data, 4, 4);
        Path p = write("confined.safetensors", file(header, data));
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena, Safetensors.Load.MAPPED);
            for (String name : new String[] {"h", "f"}) {
                Throwable e = onAnotherThread(() -> {
                    try (Arena mine = Arena.ofConfined()) {
                        st.tensor(name, mine).toArray();
                    }
                });
                assertInstanceOf(SafetensorsException.class, e);
                assertTrue(e.getMessage().startsWith(p + ": tensor '" + name + "'")
                        && e.getMessage().contains("another thread"), e.getMessage());
            }
            assertArrayEquals(new float[] {2f}, st.tensor("f", arena).toArray(), "the owner thread still reads");
        }
        Arena[] foreign = new Arena[1];
        assertNull(onAnotherThread(() -> foreign[0] = Arena.ofConfined()));
        try (Arena arena = Arena.ofConfined()) {
            for (Safetensors.Load load : Safetensors.Load.values()) {
                Safetensors st = Safetensors.open(p, arena, load);
                SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor("h", foreign[0]));
                assertTrue(e.getMessage().startsWith(p + ": tensor 'h' [2]")
                        && e.getMessage().contains("another thread"), e.getMessage());
            }
        }
        // foreign[0] holds nothing, and only its ended owner thread could close it
    }

    @Test
    void halfAndBfloat16AreConvertedExactly() throws IOException {
        // F16 bit patterns by hand: 1.5 = 0x3E00, -2.25 = 0xC080, 65504 = 0x7BFF, 2^-24 = 0x0001 (subnormal)
        // BF16 is the top half of the float32 bits: 1.5 = 0x3FC0, -2.25 = 0xC010, +inf = 0x7F80, 1e-40ish = 0x0001
        String header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                + "\"g\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[8,16]}}";
        byte[] data = new byte[16];
        System.arraycopy(shorts(0x3E00, 0xC080, 0x7BFF, 0x0001), 0, data, 0, 8);
        System.arraycopy(shorts(0x3FC0, 0xC010, 0x7F80, 0x0001), 0, data, 8, 8);
        Path p = write("half.safetensors", file(header, data));
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena);
            assertArrayEquals(new float[] {1.5f, -2.25f, 65504f, (float) Math.pow(2, -24)},
                    st.tensor("h", arena).toArray());
            assertArrayEquals(new float[] {1.5f, -2.25f, Float.POSITIVE_INFINITY, Float.intBitsToFloat(0x00010000)},
                    st.tensor("g", arena).toArray());
        }
    }

    static Stream<org.junit.jupiter.params.provider.Arguments> malformed() {
        byte[] d8 = new byte[8];
        String okT = "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
        return Stream.of(
                bad("too short", new byte[5], "too short"),
                bad("length beyond file", lengthOnly(1000, "{}"), "header length 1000 exceeds"),
                bad("negative (huge unsigned) length", lengthOnly(-1, "{}"), "exceeds"),
                bad("not JSON", file("{\"t\":", d8), "invalid JSON"),
                bad("trailing garbage", file("{" + okT + "}x", d8), "after the JSON value"),
                bad("root not object", file("[1,2]", d8), "not a JSON object"),
                bad("trailing comma", file("{" + okT + ",}", d8), "invalid JSON"),
                bad("duplicate key", file("{" + okT + "," + okT + "}", d8), "duplicate key \"t\""),
                bad("not UTF-8", fileRaw(new byte[] {'{', '"', (byte) 0xff, '"', ':', '1', '}'}, d8), "UTF-8"),
                bad("unknown dtype", file("{\"t\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", d8),
                        "tensor 't': unknown dtype \"F17\""),
                bad("shape/bytes mismatch", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", d8),
                        "tensor 't': F32 [3] needs 12 bytes"),
                bad("dtype/bytes mismatch", file("{\"t\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", d8),
                        "tensor 't': F64 [2] needs 16 bytes"),
                bad("offsets outside data", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", d8),
                        "tensor 't': data_offsets [0, 16] outside the 8 bytes"),
                bad("begin after end", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", d8),
                        "tensor 't': data_offsets [8, 4] begin after end"),
                bad("overlap", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        + "\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", d8), "overlap tensor"),
                bad("gap", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        + "\"u\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8]}}", d8),
                        "tensor 'u' bytes [6, 8): bytes [4, 6) before it belong to no tensor"),
                bad("trailing bytes", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", d8),
                        "after tensor 't' (bytes [0, 4)), the last 4 of the 8 data bytes belong to no tensor"),
                // no tensor at all: it read "no tensor holds the last 8 of the 8 data bytes belong to no tensor"
                bad("data but no tensor", file("{}", d8), "the header lists no tensor, but 8 data bytes follow it"),
                bad("negative dim", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", d8),
                        "tensor 't': \"shape\" element -2"),
                bad("fractional dim", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", d8),
                        "tensor 't': \"shape\" element 2.0"),
                bad("huge dims", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                        + "\"data_offsets\":[0,8]}}", d8), "tensor 't': shape"),
                bad("three offsets", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", d8),
                        "tensor 't': \"data_offsets\" has 3 elements"),
                bad("missing shape", file("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", d8),
                        "tensor 't': missing or non-array \"shape\""),
                bad("extra field", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", d8),
                        "tensor 't': unexpected field \"x\""),
                bad("entry not object", file("{\"t\":3}", d8), "tensor 't': entry is not an object"),
                bad("metadata not strings", file("{\"__metadata__\":{\"a\":1}," + okT + "}", d8),
                        "__metadata__ value of \"a\""),
                bad("integer overflow", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],"
                        + "\"data_offsets\":[0,99999999999999999999]}}", d8), "does not fit in 64 bits"),
                bad("deep nesting", file("{\"__metadata__\":" + "[".repeat(100) + "]".repeat(100) + "}", d8),
                        "nesting deeper"),
                bad("control char in string", file("{\"t\u0001\":1}", d8), "control character"),
                // RFC 8259 forbids leading zeros; serde_json (the reference reader) refuses them
                bad("leading zero in an offset", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],"
                        + "\"data_offsets\":[0,008]}}", d8), "leading zero"),
                bad("leading zero in a dimension", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[02],"
                        + "\"data_offsets\":[0,8]}}", d8), "leading zero"),
                // -0 is valid JSON but no offset or size: serde_json reads it as the float -0.0, which a usize
                // refuses; it read as the offset 0
                bad("negative zero offset", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],"
                        + "\"data_offsets\":[-0,8]}}", d8), "\"data_offsets\" element -0"),
                bad("negative zero dimension", file("{\"t\":{\"dtype\":\"F32\",\"shape\":[-0],"
                        + "\"data_offsets\":[0,0]}}", new byte[0]), "\"shape\" element -0"));
    }

    private static org.junit.jupiter.params.provider.Arguments bad(String name, byte[] bytes, String expect) {
        return arguments(named(name, bytes), expect);
    }

    private static byte[] lengthOnly(long declared, String header) {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        return ByteBuffer.allocate(8 + h.length).order(ByteOrder.LITTLE_ENDIAN).putLong(declared).put(h).array();
    }

    private static byte[] fileRaw(byte[] h, byte[] data) {
        return ByteBuffer.allocate(8 + h.length + data.length).order(ByteOrder.LITTLE_ENDIAN)
                .putLong(h.length).put(h).put(data).array();
    }

    @ParameterizedTest
    @MethodSource("malformed")
    void malformedHeadersAreRejectedNamingFileAndTensor(byte[] bytes, String expect) throws IOException {
        Path p = write("bad.safetensors", bytes);
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(p, arena));
            assertTrue(e.getMessage().startsWith(p.toString() + ": "), e.getMessage());
            assertTrue(e.getMessage().contains(expect), () -> "expected '" + expect + "' in: " + e.getMessage());
        }
    }

    /**
     * Another model format given where a {@code .safetensors} file belongs (found embedding qkv: {@code mha
     * --weights x.npy} said only "header length 379676406402707 exceeds the 18552 bytes after the length field"):
     * the message says the file is not a .safetensors file and, for the formats a user most likely holds (a
     * {@code .npy} array, PyTorch's zip or pickle {@code .bin}/{@code .pt}, GGUF), which one it is.
     */
    static Stream<org.junit.jupiter.params.provider.Arguments> otherFormats() {
        byte[] npy = new byte[200];
        System.arraycopy(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 118, 0, '{'}, 0, npy, 0, 11);
        byte[] zip = new byte[200];
        System.arraycopy(new byte[] {'P', 'K', 3, 4, 0, 0, 0, 0, 8, 0}, 0, zip, 0, 10);
        byte[] pickle = new byte[200];
        System.arraycopy(new byte[] {(byte) 0x80, 2, (byte) 0x8a, 10, 0x6c, (byte) 0xfc, (byte) 0x9c, 0x46,
                (byte) 0xf9, 0x20}, 0, pickle, 0, 10);
        byte[] gguf = new byte[200];
        System.arraycopy(new byte[] {'G', 'G', 'U', 'F', 3, 0, 0, 0, 1, 0}, 0, gguf, 0, 10);
        return Stream.of(arguments(named(".npy", npy), "a .npy file"),
                arguments(named("zip", zip), "a zip archive (PyTorch's torch.save format"),
                arguments(named("pickle", pickle), "a pickle (PyTorch's legacy torch.save format"),
                arguments(named("gguf", gguf), "a GGUF file"));
    }

    @ParameterizedTest
    @MethodSource("otherFormats")
    void anotherFormatIsNamedNotReadAsAHeaderLength(byte[] bytes, String expect) throws IOException {
        Path p = write("model.bin", bytes);
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(p, arena));
            assertTrue(e.getMessage().startsWith(p + ": not a .safetensors file: " + expect), e.getMessage());
        }
    }

    /**
     * {@code "__metadata__": null} is what the reference implementation reads as "no metadata" (its field is an
     * {@code Option<HashMap<String, String>>}, and serde reads JSON null as {@code None}); it was refused.
     */
    @Test
    void nullMetadataIsNoMetadata() throws IOException {
        String header = "{\"__metadata__\":null,\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        Path p = write("nullmeta.safetensors", file(header, floats(1.5f, -3f)));
        for (Safetensors.Load load : Safetensors.Load.values()) {
            try (Arena arena = Arena.ofConfined()) {
                Safetensors st = Safetensors.open(p, arena, load);
                assertTrue(st.metadata().isEmpty());
                assertEquals(java.util.Set.of("t"), st.entries().keySet());
                assertArrayEquals(new float[] {1.5f, -3f}, st.tensor("t", arena).toArray());
            }
        }
        // only null: another non-object is still refused
        Path q = write("falsemeta.safetensors", file("{\"__metadata__\":false}", new byte[0]));
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(q, arena));
            assertTrue(e.getMessage().contains("__metadata__ is not an object"), e.getMessage());
        }
    }

    /**
     * A file that ends before its header does although its size said otherwise (a file that shrank after its size
     * was read, as a sysfs file always does: size 4096, a few bytes of content) was an IOException naming no file.
     */
    @Test
    void aHeaderCutShortWhileReadingNamesTheFile() throws IOException {
        Path sys = Path.of("/sys/devices/system/cpu/online");
        assumeTrue(Files.isRegularFile(sys) && Files.size(sys) >= 8 && Files.readAllBytes(sys).length < 8,
                "needs a sysfs file whose size exceeds its content");
        try (Arena arena = Arena.ofConfined()) {
            IOException e = assertThrows(IOException.class, () -> Safetensors.open(sys, arena));
            assertTrue(e.getMessage().startsWith(sys + ": "), e.getMessage());
            assertTrue(e.getMessage().contains("ended"), e.getMessage());
        }
    }

    @Test
    void missingTensorAndNonFloatDtypeAreClearErrors() throws IOException {
        String header = "{\"ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}";
        Path p = write("ids.safetensors", file(header, new byte[8]));
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena);
            SafetensorsException missing = assertThrows(SafetensorsException.class, () -> st.tensor("w", arena));
            assertTrue(missing.getMessage().contains("tensor 'w' not found (the file has 'ids')"), missing.getMessage());
            SafetensorsException dtype = assertThrows(SafetensorsException.class, () -> st.tensor("ids", arena));
            assertTrue(dtype.getMessage().contains("tensor 'ids' [1]: dtype I64 is not a float type"),
                    dtype.getMessage());
        }
        // F8_E4M3 is a float type, just not one qkv reads
        Path f8 = write("f8.safetensors", file("{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                new byte[1]));
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(f8, arena);
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor("w", arena));
            assertTrue(e.getMessage().contains("tensor 'w' [1]: dtype F8_E4M3 is not supported (F32, F64, F16 or"
                    + " BF16)"), e.getMessage());
        }
    }

    /**
     * A float64 torch model saved with safetensors has F64 weights, which were refused ("dtype F64 is not
     * supported") while a '<f8' .npy is read, rounded to float32. F64 is now read the same way, copied and mapped,
     * at an odd data offset (after a 1-byte tensor) and across more than one staging chunk: each value rounded to
     * the nearest float32 (the float literals below are the compiler's nearest floats), beyond float's range to
     * ±Inf, below its smallest subnormal to ±0.
     */
    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(Safetensors.Load.class)
    void float64IsRoundedToFloat32(Safetensors.Load load) throws IOException {
        // Float.MAX_VALUE is 0x1.fffffep127; 0x1.ffffffp127 is halfway to 2^128: ties to even, which is 2^128, so
        // +Inf; 0x1.fffffefp127 is below halfway: MAX_VALUE
        double[] d = {1.5, -0.1, 1.0 / 3, 1e300, -1e300, 1e-50, -1e-50, 0x1.ffffffp127, 0x1.fffffefp127, 65504.0};
        float[] want = {1.5f, -0.1f, 0.33333334f, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, 0f, -0f,
                Float.POSITIVE_INFINITY, Float.MAX_VALUE, 65504f};
        int n = (1 << 21) + d.length; // 16 MiB of F64 and more: two staging chunks
        ByteBuffer data = ByteBuffer.allocate(1 + n * 8).order(ByteOrder.LITTLE_ENDIAN);
        data.put((byte) 7);
        float[] all = new float[n];
        for (int i = 0; i < n; i++) {
            if (i < d.length) {
                data.putDouble(d[i]);
                all[i] = want[i];
            } else {
                data.putDouble(i + 0.25); // exact in float32 below 2^22
                all[i] = i + 0.25f;
            }
        }
        String header = "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                + "\"w\":{\"dtype\":\"F64\",\"shape\":[" + n + "],\"data_offsets\":[1," + (1 + n * 8) + "]}}";
        Path p = write("f64.safetensors", file(header, data.array()));
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena, load);
            Tensor w = st.tensor("w", arena);
            assertArrayEquals(new long[] {n}, w.shape());
            float[] got = w.toArray();
            for (int i = 0; i < n; i++) {
                if (Float.floatToRawIntBits(all[i]) != Float.floatToRawIntBits(got[i])) {
                    org.junit.jupiter.api.Assertions.fail(load + " [" + i + "]: want " + all[i] + " got " + got[i]);
                }
            }
        }
    }

    /**
     * The format's newer dtypes (microscaling F8_E8M0 scales, packed F4 and F6 values, C64) in tensors a caller never
     * reads: the file opens and the F32 tensor reads back. They used to be "unknown dtype", refusing the whole file.
     * Sizes follow the format's bit widths: 6 F4 values fill 3 bytes, 4 F6 values 3 bytes, a C64 8 bytes; 3 F4
     * values end inside a byte, which the reference implementation refuses (MisalignedSlice).
     */
    @Test
    void newerDtypesInTensorsNeverReadDoNotRefuseTheFile() throws IOException {
        String header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"scale\":{\"dtype\":\"F8_E8M0\",\"shape\":[2],\"data_offsets\":[8,10]},"
                + "\"fp4\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[10,13]},"
                + "\"a\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[13,16]},"
                + "\"b\":{\"dtype\":\"F6_E3M2\",\"shape\":[4],\"data_offsets\":[16,19]},"
                + "\"c\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[19,27]}}";
        byte[] data = new byte[27];
        System.arraycopy(floats(1.5f, -2f), 0, data, 0, 8);
        Path p = write("mx.safetensors", file(header, data));
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena);
            assertEquals(6, st.entries().size());
            assertArrayEquals(new float[] {1.5f, -2f}, st.tensor("w", arena).toArray());
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor("fp4", arena));
            assertTrue(e.getMessage().contains("tensor 'fp4' [2, 3]: dtype F4 is not supported"), e.getMessage());
        }
        Path odd = write("odd.safetensors", file("{\"t\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}",
                new byte[2]));
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(odd, arena));
            assertTrue(e.getMessage().contains("tensor 't': F4 [3] is 3 elements of 4 bits, which do not fill whole"
                    + " bytes"), e.getMessage());
        }
    }

    @Test
    void emptyTensorsMayShareAnOffsetAtATensorBoundary() throws IOException {
        String header = "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[8,8]},"
                + "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"z\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[0,0]}}";
        Path p = write("empty.safetensors", file(header, floats(1f, 2f)));
        try (Arena arena = Arena.ofConfined()) {
            for (Safetensors.Load load : Safetensors.Load.values()) {
                Safetensors st = Safetensors.open(p, arena, load);
                assertEquals(0, st.tensor("e", arena).elementCount());
                assertEquals(0, st.tensor("z", arena).elementCount());
                assertArrayEquals(new float[] {1f, 2f}, st.tensor("t", arena).toArray());
            }
        }
    }

    /**
     * The default copies into 64-byte aligned memory of the caller's arena; MAPPED gives read-only views of F32
     * data at addresses that are multiples of 4, and aligned copies of F32 data elsewhere (the format does not
     * pad; OpenBLAS loads floats aligned, and the native backend refuses them otherwise).
     */
    @Test
    void copyIsTheDefaultAndMappedIsAnOptIn() throws IOException {
        String header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
        // pads of 1 to 4 spaces put the data at each offset mod 4; the mapping itself starts page-aligned
        for (int pad = 1; pad <= 4; pad++) {
            String h = header + " ".repeat(pad);
            boolean aligned = (8 + h.length()) % 4 == 0;
            Path p = write("modes" + pad + ".safetensors", file(h, floats(1f, -2f, 3f)));
            try (Arena arena = Arena.ofConfined()) {
                Safetensors copied = Safetensors.open(p, arena);
                assertEquals(Safetensors.Load.COPY, copied.load());
                Tensor c = copied.tensor("a", arena);
                assertFalse(c.segment().isMapped());
                assertFalse(c.segment().isReadOnly());
                assertEquals(0, c.segment().address() % Tensor.ALIGNMENT);
                assertArrayEquals(new float[] {1f, -2f, 3f}, c.toArray());
                Safetensors mapped = Safetensors.open(p, arena, Safetensors.Load.MAPPED);
                Tensor m = mapped.tensor("a", arena);
                assertEquals(aligned, m.segment().isMapped(), "pad " + pad);
                assertEquals(aligned, m.segment().isReadOnly(), "pad " + pad);
                assertEquals(0, m.segment().address() % Float.BYTES, "pad " + pad);
                assertArrayEquals(new float[] {1f, -2f, 3f}, m.toArray());
            }
        }
    }

    /** A copy outlives the arena the file was opened with; reading after that arena closed is a clear error. */
    @Test
    void copiesOutliveTheFileAndItsArena() throws IOException {
        String header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]}}";
        byte[] data = new byte[12];
        System.arraycopy(floats(5f, 6f), 0, data, 0, 8);
        System.arraycopy(shorts(0x3E00, 0xC080), 0, data, 8, 4);
        Path p = write("outlive.safetensors", file(header, data));
        try (Arena keep = Arena.ofConfined()) {
            Safetensors st;
            Tensor a;
            Tensor h;
            try (Arena fileArena = Arena.ofConfined()) {
                st = Safetensors.open(p, fileArena);
                a = st.tensor("a", keep);
                h = st.tensor("h", keep);
            }
            Files.delete(p);
            assertArrayEquals(new float[] {5f, 6f}, a.toArray());
            assertArrayEquals(new float[] {1.5f, -2.25f}, h.toArray());
            SafetensorsException closed = assertThrows(SafetensorsException.class, () -> st.tensor("a", keep));
            assertTrue(closed.getMessage().startsWith(p + ": tensor 'a': the arena"), closed.getMessage());
        }
    }

    /** A file truncated between open and tensor: an exception naming the file and tensor, not a short tensor. */
    @Test
    void aFileTruncatedAfterOpenIsAnErrorNamingTheTensor() throws IOException {
        String header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"h\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}";
        byte[] bytes = file(header, new byte[12]);
        Path p = write("shrinks.safetensors", bytes);
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(p, arena);
            try (java.nio.channels.FileChannel ch = java.nio.channels.FileChannel.open(p,
                    java.nio.file.StandardOpenOption.WRITE)) {
                ch.truncate(bytes.length - 6);
            }
            for (String name : new String[] {"a", "h"}) {
                SafetensorsException e = assertThrows(SafetensorsException.class, () -> st.tensor(name, arena));
                assertTrue(e.getMessage().startsWith(p + ": tensor '" + name + "': the file ends at byte"),
                        e.getMessage());
            }
        }
    }

    @Test
    void jsonStringEscapesDecode() {
        Object v = SafetensorsJson.parse(" {\"a\\u00e9\\ud83d\\ude00\\n\": [1, -0, 2.5e1, true, null]} ");
        // -0 is a float, as serde_json reads it (so that no offset or dimension takes it)
        assertEquals("{aé\uD83D\uDE00\n=[1, -0.0, 25.0, true, null]}", v.toString());
        assertThrows(SafetensorsJson.JsonException.class, () -> SafetensorsJson.parse("{\"a\":\"\\ud83d\"}"));
        assertThrows(SafetensorsJson.JsonException.class, () -> SafetensorsJson.parse("01"));
        assertThrows(SafetensorsJson.JsonException.class, () -> SafetensorsJson.parse("{\"a\":tru}"));
        assertThrows(SafetensorsJson.JsonException.class, () -> SafetensorsJson.parse(""));
    }

    /**
     * RFC 8259's {@code \\u} escape takes four ASCII hex digits (HEXDIG). {@code Character.digit} also takes
     * fullwidth digits and letters (U+FF10.., U+FF21.., U+FF41..) and other Unicode decimal digits, so
     * {@code "\\u\uFF10\uFF10\uFF14\uFF11"} decoded to the name {@code "A"}: a header the reference implementation
     * refuses opened here with a tensor name it never spelled.
     */
    @Test
    void unicodeEscapesTakeAsciiHexDigitsOnly() throws IOException {
        assertEquals("{A=1}", SafetensorsJson.parse("{\"\\u0041\":1}").toString());
        assertEquals("{\u00ff=1}", SafetensorsJson.parse("{\"\\u00fF\":1}").toString());
        for (String digits : new String[] {"\uFF10\uFF10\uFF14\uFF11", "00\uFF14\uFF21", "00\uFF14\uFF41",
                "00\u0664\u0661"}) {
            String header = "{\"\\u" + digits + "\":1}";
            assertThrows(SafetensorsJson.JsonException.class, () -> SafetensorsJson.parse(header), header);
        }
        Path p = dir.resolve("fullwidth.safetensors");
        Files.write(p, file("{\"\\u\uFF10\uFF10\uFF14\uFF11\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                floats(1f)));
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(p, arena));
            assertTrue(e.getMessage().startsWith(p + ": header: invalid JSON"), e.getMessage());
        }
    }
}
