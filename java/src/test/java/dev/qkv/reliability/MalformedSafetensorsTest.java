package dev.qkv.reliability;

import dev.qkv.io.Safetensors;
import dev.qkv.io.SafetensorsException;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.net.URISyntaxException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * {@code .safetensors} files that are truncated, bit-flipped or lie in their header: {@link Safetensors#open}
 * and {@link Safetensors#tensor} either succeed, and then every entry is consistent with the file and every
 * float tensor equals the file's bytes decoded here, or throw a {@link SafetensorsException} naming the file.
 */
class MalformedSafetensorsTest {
    @TempDir
    Path dir;

    private enum Outcome { READ, REJECTED }

    private static final List<String> FIXTURES = List.of("self.safetensors", "cross.safetensors", "causal.safetensors");

    private static byte[] fixture(String name) throws IOException, URISyntaxException {
        return Files.readAllBytes(Path.of(MalformedSafetensorsTest.class.getResource("/mha/" + name).toURI()));
    }

    /** A safetensors file from a literal header (padded with spaces to 8 bytes, as the format allows) and data. */
    private static byte[] file(String header, byte[] data) {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        int pad = (8 - h.length % 8) % 8;
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + pad + data.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length + pad).put(h);
        for (int i = 0; i < pad; i++) {
            b.put((byte) ' ');
        }
        return b.put(data).array();
    }

    /** A random valid file: tensors of several dtypes, shapes (some empty), in shuffled data order. */
    private static byte[] randomFile(Random r) {
        String[] dtypes = {"F32", "F16", "BF16", "I32", "U8", "F64"};
        int[] sizes = {4, 2, 2, 4, 1, 8};
        int n = 1 + r.nextInt(4);
        StringBuilder h = new StringBuilder("{");
        if (r.nextBoolean()) {
            h.append("\"__metadata__\":{\"format\":\"pt\"},");
        }
        long off = 0;
        for (int i = 0; i < n; i++) {
            int d = r.nextInt(dtypes.length);
            long[] shape = new long[r.nextInt(4)];
            long numel = 1;
            for (int k = 0; k < shape.length; k++) {
                shape[k] = r.nextInt(r.nextInt(8) == 0 ? 1 : 5);
                numel *= shape[k];
            }
            long end = off + numel * sizes[d];
            h.append(i == 0 ? "" : ",").append("\"t").append(i).append("\":{\"dtype\":\"").append(dtypes[d])
                    .append("\",\"shape\":").append(Arrays.toString(shape).replace(" ", ""))
                    .append(",\"data_offsets\":[").append(off).append(',').append(end).append("]}");
            off = end;
        }
        h.append('}');
        byte[] data = new byte[(int) off];
        r.nextBytes(data);
        return file(h.toString(), data);
    }

    /** Opens {@code bytes} as a file and checks every entry and tensor; returns whether it was read. */
    private Outcome check(byte[] bytes, String what) throws IOException {
        Path file = dir.resolve("case.safetensors");
        Files.write(file, bytes);
        Outcome first = null;
        for (Safetensors.Load load : Safetensors.Load.values()) {
            Outcome o = check(file, bytes, load, what + " (" + load + ")");
            assertTrue(first == null || o == first, what + ": " + first + " when copied, " + o + " when mapped");
            first = o;
        }
        return first;
    }

    private Outcome check(Path file, byte[] bytes, Safetensors.Load load, String what) {
        try (Arena arena = Arena.ofConfined()) {
            Safetensors st;
            try {
                st = Safetensors.open(file, arena, load);
            } catch (SafetensorsException e) {
                assertTrue(e.getMessage().startsWith(file + ": "), what + ": message does not name the file: "
                        + e.getMessage());
                assertTrue(e.getMessage().length() < 1000, what + ": message of " + e.getMessage().length()
                        + " chars");
                return Outcome.REJECTED;
            } catch (Throwable t) {
                throw new AssertionError(what + ": " + t + "\nheader: " + headerText(bytes), t);
            }
            try {
                verify(st, bytes, arena, what);
            } catch (Throwable t) {
                if (t instanceof AssertionError a) {
                    throw a;
                }
                throw new AssertionError(what + ": reading an accepted file: " + t + "\nheader: "
                        + headerText(bytes), t);
            }
            return Outcome.READ;
        }
    }

    /**
     * The entries tile the data (sorted, each begins where the previous ends, the last ends with the file), each
     * holds exactly its bytes, and floats decode from the bytes.
     */
    private static void verify(Safetensors st, byte[] bytes, Arena arena, String what) throws SafetensorsException {
        long n = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        long dataStart = 8 + n;
        long dataSize = bytes.length - dataStart;
        List<Safetensors.Entry> all = new ArrayList<>(st.entries().values());
        List<Safetensors.Entry> sorted = new ArrayList<>(all);
        sorted.sort(java.util.Comparator.comparingLong(Safetensors.Entry::begin)
                .thenComparingLong(Safetensors.Entry::end));
        long tiled = 0;
        for (Safetensors.Entry e : sorted) {
            assertEquals(tiled, e.begin(), what + ": " + e.name() + " does not begin where the previous tensor ends");
            tiled = e.end();
        }
        assertEquals(dataSize, tiled, what + ": the tensors do not end with the data");
        for (Safetensors.Entry e : all) {
            long numel = 1;
            for (long d : e.shape()) {
                numel = Math.multiplyExact(numel, d);
            }
            assertTrue(0 <= e.begin() && e.begin() <= e.end() && e.end() <= dataSize, what + ": " + e);
            assertEquals(numel * e.dtype().byteSize(), e.end() - e.begin(), what + ": " + e.name());

            boolean isFloat = switch (e.dtype()) {
                case F32, F64, F16, BF16 -> true;
                default -> false;
            };
            if (!isFloat) {
                SafetensorsException x = assertThrows(SafetensorsException.class, () -> st.tensor(e.name(), arena));
                assertTrue(x.getMessage().startsWith(st.file() + ": "), x.getMessage());
                continue;
            }
            Tensor t = st.tensor(e.name(), arena);
            assertTrue(Arrays.equals(e.shape(), t.shape()), what + ": " + e.name() + " shape " + t.shapeString());
            float[] got = t.toArray();
            ByteBuffer b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
            int at = (int) (dataStart + e.begin());
            for (int i = 0; i < got.length; i++) {
                float want = switch (e.dtype()) {
                    case F32 -> b.getFloat(at + 4 * i);
                    case F64 -> (float) b.getDouble(at + 8 * i);
                    case F16 -> Float.float16ToFloat(b.getShort(at + 2 * i));
                    default -> Float.intBitsToFloat((b.getShort(at + 2 * i) & 0xffff) << 16);
                };
                if (Float.floatToRawIntBits(want) != Float.floatToRawIntBits(got[i])
                        && !(Float.isNaN(want) && Float.isNaN(got[i]))) {
                    fail(what + ": " + e.name() + "[" + i + "] = " + got[i] + ", the file holds " + want);
                }
            }
        }
    }

    private static String headerText(byte[] bytes) {
        int n = Math.min(bytes.length, 300);
        return new String(bytes, 0, n, StandardCharsets.ISO_8859_1).replaceAll("[^\\x20-\\x7e]", "?");
    }

    private static List<byte[]> validFiles(Random r) throws Exception {
        List<byte[]> out = new ArrayList<>();
        for (String f : FIXTURES) {
            out.add(fixture(f));
        }
        for (int i = 0; i < 6; i++) {
            out.add(randomFile(r));
        }
        return out;
    }

    @Test
    void validFilesReadAsTheirBytes() throws Exception {
        List<byte[]> files = validFiles(new Random(Fuzz.seed("st-valid")));
        for (int i = 0; i < files.size(); i++) {
            assertEquals(Outcome.READ, check(files.get(i), "valid file " + i));
        }
    }

    @Test
    void everyTruncationIsReadConsistentlyOrRejected() throws Exception {
        List<byte[]> files = validFiles(new Random(Fuzz.seed("st-truncate")));
        for (int i = 0; i < files.size(); i++) {
            byte[] f = files.get(i);
            // the fixtures end with a tensor, so every cut of them loses bytes some tensor needs
            int step = Math.max(1, f.length / Fuzz.iterations(600));
            for (int len = 0; len < f.length; len += (len < 600 ? 1 : step)) {
                Outcome o = check(Arrays.copyOf(f, len), "file " + i + " cut to " + len + " of " + f.length);
                if (i < FIXTURES.size()) {
                    assertEquals(Outcome.REJECTED, o, "fixture " + i + " cut to " + len);
                }
            }
        }
    }

    @Test
    void randomBitFlipsAreReadConsistentlyOrRejected() throws Exception {
        long seed = Fuzz.seed("st-flip");
        Random r = new Random(seed);
        List<byte[]> files = validFiles(r);
        int iterations = Fuzz.iterations(2000);
        int[] counts = new int[2];
        for (int it = 0; it < iterations; it++) {
            int which = r.nextInt(files.size());
            byte[] f = files.get(which).clone();
            long hlen = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
            int flips = 1 + (r.nextInt(4) == 0 ? r.nextInt(3) : 0);
            StringBuilder where = new StringBuilder();
            for (int k = 0; k < flips; k++) {
                // mostly the length field and the header, where a flip changes meaning; sometimes the data
                int pos = r.nextInt(5) == 0 ? r.nextInt(f.length) : r.nextInt((int) Math.min(f.length, 8 + hlen));
                int bit = r.nextInt(8);
                f[pos] ^= (byte) (1 << bit);
                where.append(' ').append(pos).append(':').append(bit);
            }
            counts[check(f, "seed " + seed + " case " + it + ": file " + which + " bits flipped at" + where)
                    .ordinal()]++;
        }
        assertTrue(counts[0] > 0 && counts[1] > 0, "read/rejected " + Arrays.toString(counts));
    }

    private static String entry(String name, String dtype, String shape, String offsets) {
        return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets
                + "}";
    }

    @Test
    void lyingHeadersAreRejected() throws Exception {
        byte[] d16 = new byte[16];
        List<byte[]> cases = new ArrayList<>();
        String[][] headers = {
            {entry("a", "F32", "[5]", "[0,20]")},
            {entry("a", "F32", "[4611686018427387904,4]", "[0,16]")},
            {entry("a", "F32", "[4294967296,4294967296]", "[0,16]")},
            {entry("a", "F64", "[2305843009213693952]", "[0,16]")},
            {entry("a", "F32", "[9223372036854775808]", "[0,16]")},
            {entry("a", "F32", "[-4]", "[0,16]")},
            {entry("a", "F32", "[4.0]", "[0,16]")},
            {entry("a", "F32", "[\"4\"]", "[0,16]")},
            {entry("a", "F32", "4", "[0,16]")},
            {entry("a", "F32", "[4]", "[-16,0]")},
            {entry("a", "F32", "[4]", "[16,0]")},
            {entry("a", "F32", "[4]", "[4,20]")},
            {entry("a", "F32", "[4]", "[0,16,32]")},
            {entry("a", "F32", "[4]", "[0]")},
            {entry("a", "F32", "[4]", "[9223372036854775807,9223372036854775807]")},
            {entry("a", "F32", "[0]", "[9223372036854775807,9223372036854775807]")},
            {entry("a", "F32", "[4]", "[0,1.6e1]")},
            {entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[2]", "[4,12]")},
            {entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[2]", "[0,8]")},
            {entry("a", "F32", "[4]", "[0,16]"), entry("b", "F32", "[1]", "[8,12]")},
            {entry("a", "F32", "[2]", "[0,8]"), entry("a", "F32", "[2]", "[8,16]")},
            {entry("a", "F32", "[2]", "[0,8]")},
            {entry("a", "F32", "[2]", "[8,16]")},
            {entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[1]", "[12,16]")},
            {entry("a", "F32", "[4]", "[0,16]"), entry("e", "F32", "[0]", "[8,8]")},
            {entry("a", "F32", "[3]", "[0,12]"), entry("e", "F32", "[0,2]", "[16,16]")},
            {"\"__metadata__\":{\"format\":\"pt\"}"},
            {},
            {"\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}"},
            {entry("a", "F31", "[4]", "[0,16]")},
            {entry("a", "f32", "[4]", "[0,16]")},
            {entry("a", "F32", "[4]", "[0,16]").replace("}", ",\"extra\":1}")},
            {"\"a\":{\"dtype\":\"F32\",\"shape\":[4]}"},
            {"\"a\":[1,2]"},
            {"\"__metadata__\":{\"k\":1}", entry("a", "F32", "[4]", "[0,16]")},
            {"\"__metadata__\":[]", entry("a", "F32", "[4]", "[0,16]")},
            {entry("\\ud800", "F32", "[4]", "[0,16]")},
            {entry("\\udc00x", "F32", "[4]", "[0,16]")},
            {entry("a\u0001", "F32", "[4]", "[0,16]")},
        };
        for (String[] parts : headers) {
            cases.add(file("{" + String.join(",", parts) + "}", d16));
        }
        for (String raw : new String[] {
            "", "{", "}", "[]", "null", "{}}", "{},", "{\"a\":1,}", "{'a':1}", "{\"a\":NaN}", "{/*c*/}",
            "\ufeff{}", "{\"a\":" + "[".repeat(100_000) + "]".repeat(100_000) + "}",
            "{\"a\":" + "9".repeat(100_000) + "}", "{\"a\":\"\\x41\"}", "{\"a\":\"\\u12\"}", "{\"a\":tru}"}) {
            cases.add(file(raw, d16));
        }
        // header lengths beyond the file, negative as a signed long, absurd
        for (long len : new long[] {-1L, Long.MIN_VALUE, 1L << 62, 1L << 40, Integer.MAX_VALUE + 1L, 200L << 20}) {
            byte[] f = file("{}", d16);
            ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN).putLong(0, len);
            cases.add(f);
        }
        byte[] shortFile = file("{}", new byte[0]);
        ByteBuffer.wrap(shortFile).order(ByteOrder.LITTLE_ENDIAN).putLong(0, shortFile.length - 7);
        cases.add(shortFile);
        // invalid UTF-8 in the header: an overlong '"' and a lone continuation byte
        byte[][] invalid = {{(byte) 0xc0, (byte) 0xa2}, {(byte) 0x80}, {(byte) 0xed, (byte) 0xa0, (byte) 0x80}};
        for (byte[] bad : invalid) {
            byte[] f = file("{\"" + "x".repeat(bad.length) + "\":1}", d16);
            System.arraycopy(bad, 0, f, 10, bad.length);
            cases.add(f);
        }
        for (int i = 0; i < cases.size(); i++) {
            assertEquals(Outcome.REJECTED, check(cases.get(i), "lying header " + i),
                    "lying header " + i + ": " + headerText(cases.get(i)));
        }
    }

    /**
     * The reference implementation's tiling rule: sorted by offset, the tensors cover the data exactly. A gap, a
     * leading or trailing byte, or an empty tensor inside another's bytes is rejected in both load modes, and the
     * message names the file and the tensor next to the stray bytes.
     */
    @Test
    void gapsAndStrayBytesAreRejectedNamingTheTensor() throws Exception {
        String[][] cases = {
            {"{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}", "12",
                "tensor 'b' bytes [8, 12): bytes [4, 8) before it belong to no tensor"
                    + " (the previous tensor, 'a', ends at 4)"},
            {"{" + entry("b", "F32", "[1]", "[4,8]") + "}", "8", "tensor 'b' bytes [4, 8): bytes [0, 4) before it"},
            {"{" + entry("a", "F32", "[1]", "[0,4]") + "}", "5",
                "after tensor 'a' (bytes [0, 4)), the last 1 of the 5 data bytes belong to no tensor"},
            {"{\"__metadata__\":{\"k\":\"v\"}}", "3", "the header lists no tensor, but 3 data bytes follow it"},
            {"{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("e", "F32", "[0]", "[4,4]") + "}", "8",
                "tensor 'e' bytes [4, 4) overlap tensor 'a' bytes [0, 8)"},
        };
        for (String[] c : cases) {
            Path file = dir.resolve("gap.safetensors");
            Files.write(file, file(c[0], new byte[Integer.parseInt(c[1])]));
            for (Safetensors.Load load : Safetensors.Load.values()) {
                try (Arena arena = Arena.ofConfined()) {
                    SafetensorsException e = assertThrows(SafetensorsException.class,
                            () -> Safetensors.open(file, arena, load), c[0]);
                    assertTrue(e.getMessage().startsWith(file + ": ") && e.getMessage().contains(c[2]),
                            load + " " + c[0] + ": " + e.getMessage());
                }
            }
        }
    }

    @Test
    void oddButValidHeadersRead() throws Exception {
        byte[] d16 = new byte[16];
        new Random(1).nextBytes(d16);
        // each header with exactly the data bytes its tensors tile
        Object[][] valid = {
            {"{}", 0},
            {"{\"__metadata__\":{}}", 0},
            {"{" + entry("\\ud83d\\ude00 \u00e9\u4e2d", "F32", "[4]", "[0,16]") + "}", 16},
            {"{" + entry("a", "F32", "[0,4611686018427387904,4611686018427387904]", "[0,0]") + "}", 0},
            {"{" + entry("a", "F32", "[]", "[4,8]") + "," + entry("b", "BF16", "[2]", "[0,4]") + "}", 8},
            {" \t\n{ " + entry("a", "F16", "[2,4]", "[0,16]") + " }\r\n", 16},
            {"{" + entry("z", "F32", "[0]", "[0,0]") + "," + entry("a", "U8", "[4]", "[0,4]") + ","
                    + entry("y", "F32", "[2,0]", "[4,4]") + "," + entry("b", "F32", "[3]", "[4,16]") + ","
                    + entry("x", "BF16", "[0]", "[16,16]") + "}", 16},
        };
        for (int i = 0; i < valid.length; i++) {
            byte[] data = Arrays.copyOf(d16, (Integer) valid[i][1]);
            assertEquals(Outcome.READ, check(file((String) valid[i][0], data), "odd header " + i + ": " + valid[i][0]));
        }
    }

    /** 64 dimensions read; 65, or 100 000 (a 300 KB message before), are refused in a short message. */
    @Test
    void shapesOfMoreThan64DimensionsAreRejectedBriefly() throws Exception {
        String ones64 = "[" + "1,".repeat(63) + "1]";
        assertEquals(Outcome.READ, check(file("{" + entry("a", "F32", ones64, "[0,4]") + "}", new byte[4]),
                "64 dimensions"));
        for (int rank : new int[] {65, 100_000}) {
            String shape = "[" + "1,".repeat(rank - 1) + "1]";
            assertEquals(Outcome.REJECTED, check(file("{" + entry("a", "F32", shape, "[0,4]") + "}", new byte[4]),
                    rank + " dimensions"));
        }
    }

    @Test
    void aDeviceIsNotARegularFile() {
        Path device = Path.of("/dev/zero");
        org.junit.jupiter.api.Assumptions.assumeTrue(Files.exists(device), "no /dev/zero here");
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(device, arena));
            assertTrue(e.getMessage().startsWith(device + ": is not a regular file"), e.getMessage());
        }
    }

    @Test
    void aDirectoryOrAMissingFileIsAnIOExceptionNamingIt() {
        try (Arena arena = Arena.ofConfined()) {
            IOException e = assertThrows(IOException.class, () -> Safetensors.open(dir, arena));
            assertTrue(e.getMessage().contains(dir.toString()), e.getMessage());
            IOException missing = assertThrows(IOException.class,
                    () -> Safetensors.open(dir.resolve("absent.safetensors"), arena));
            assertTrue(missing.getMessage().contains("absent.safetensors"), missing.getMessage());
        }
    }
}
