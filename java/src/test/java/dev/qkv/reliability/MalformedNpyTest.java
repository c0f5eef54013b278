package dev.qkv.reliability;

import dev.qkv.io.Npy;
import dev.qkv.io.NpyArray;
import dev.qkv.io.NpyBytes;
import dev.qkv.io.NpyFormatException;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.math.BigInteger;
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
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * {@code .npy} files that are truncated, bit-flipped or lie in their header: every read either succeeds, and then
 * agrees with a decoding written here from the format description, or throws a {@link NpyFormatException} whose
 * message starts with the file's name. Any other exception or error (OutOfMemoryError included) fails the test.
 */
class MalformedNpyTest {
    @TempDir
    Path dir;

    private enum Outcome { READ, REJECTED }

    /** The test's own reading of a file: what a correct reader must return when it accepts the file. */
    private record Decoded(String descr, long[] shape, float[] values) {
    }

    private static final Pattern DESCR = Pattern.compile("['\"]descr['\"]\\s*:\\s*['\"]([^'\"]*)['\"]");
    private static final Pattern SHAPE = Pattern.compile("['\"]shape['\"]\\s*:\\s*\\(([^)]*)\\)");

    /**
     * Decodes by the format description: magic, version, header length, then descr and shape found by pattern
     * in the header (so it trusts no part of the reader's parser), and the data as little-endian numbers.
     * Returns null when the file cannot be a valid array: unsupported dtype, non-ASCII digits, wrong data length.
     */
    private static Decoded decode(byte[] f) {
        if (f.length < 10 || (f[0] & 0xff) != 0x93
                || !new String(f, 1, 5, StandardCharsets.ISO_8859_1).equals("NUMPY")) {
            return null;
        }
        int major = f[6];
        ByteBuffer b = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
        int prefix = major == 1 ? 10 : 12;
        if (f.length < prefix) {
            return null;
        }
        long hlen = major == 1 ? b.getShort(8) & 0xffff : b.getInt(8) & 0xffffffffL;
        if (prefix + hlen > f.length) {
            return null;
        }
        String header = new String(f, prefix, (int) hlen,
                major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1);
        Matcher d = DESCR.matcher(header);
        Matcher s = SHAPE.matcher(header);
        if (!d.find() || !s.find()) {
            return null;
        }
        String descr = d.group(1);
        int item = switch (descr) {
            case "<f4" -> 4;
            case "<f8" -> 8;
            case "|b1", "b1", "<b1", ">b1", "=b1" -> 1;
            default -> -1;
        };
        if (item < 0) {
            return null;
        }
        List<Long> dims = new ArrayList<>();
        for (String part : s.group(1).split(",", -1)) {
            String p = part.strip();
            if (p.endsWith("L") || p.endsWith("l")) {
                p = p.substring(0, p.length() - 1);
            }
            if (p.isEmpty()) {
                continue;
            }
            if (!p.matches("\\+?[0-9]+")) {
                return null;
            }
            BigInteger n = new BigInteger(p);
            if (n.bitLength() > 63) {
                return null;
            }
            dims.add(n.longValue());
        }
        long[] shape = dims.stream().mapToLong(Long::longValue).toArray();
        BigInteger count = BigInteger.ONE;
        for (long x : shape) {
            count = count.multiply(BigInteger.valueOf(x));
        }
        if (!count.multiply(BigInteger.valueOf(item)).equals(BigInteger.valueOf(f.length - prefix - hlen))) {
            return null;
        }
        float[] v = new float[count.intValueExact()];
        int at = (int) (prefix + hlen);
        for (int i = 0; i < v.length; i++) {
            v[i] = switch (item) {
                case 4 -> b.getFloat(at + 4 * i);
                case 8 -> (float) b.getDouble(at + 8 * i);
                default -> f[at + i] != 0 ? 1f : 0f;
            };
        }
        return new Decoded(descr, shape, v);
    }

    /** Writes {@code bytes}, reads them back and checks the outcome against {@link #decode}. */
    private Outcome check(byte[] bytes, String what) throws IOException {
        Path file = dir.resolve("case.npy");
        Files.write(file, bytes);
        try (Arena arena = Arena.ofConfined()) {
            NpyArray got;
            try {
                got = Npy.read(file, arena);
            } catch (NpyFormatException e) {
                assertTrue(e.getMessage().startsWith(file + ": "), what + ": message does not name the file: "
                        + e.getMessage());
                assertTrue(e.getMessage().length() < 600, what + ": message of " + e.getMessage().length() + " chars");
                return Outcome.REJECTED;
            } catch (Throwable t) {
                throw new AssertionError(what + ": " + t + "\nheader: " + headerText(bytes), t);
            }
            Decoded want = decode(bytes);
            if (want == null) {
                fail(what + ": the reader accepted a file the format does not allow, as "
                        + got.tensor().shapeString() + " " + got.dtype() + "\nheader: " + headerText(bytes));
            }
            Tensor t = got.tensor();
            assertTrue(Arrays.equals(want.shape, t.shape()), what + ": shape " + t.shapeString() + ", the file says "
                    + Arrays.toString(want.shape) + "\nheader: " + headerText(bytes));
            assertEquals(want.descr.endsWith("b1"), got.isBool(), what + ": dtype " + got.dtype());
            float[] values = t.toArray();
            for (int i = 0; i < values.length; i++) {
                if (Float.floatToRawIntBits(values[i]) != Float.floatToRawIntBits(want.values[i])) {
                    fail(what + ": element " + i + " is " + values[i] + ", the file holds " + want.values[i]);
                }
            }
            return Outcome.READ;
        }
    }

    private static String headerText(byte[] bytes) {
        int n = Math.min(bytes.length, 200);
        return new String(bytes, 0, n, StandardCharsets.ISO_8859_1).replaceAll("[^\\x20-\\x7e]", "?");
    }

    /** Valid files of every supported kind: written by {@link Npy#write}, hand-built f8/b1/v2/v3, PyTorch's. */
    private List<byte[]> validFiles(Random r) throws IOException, URISyntaxException {
        List<byte[]> out = new ArrayList<>();
        try (Arena arena = Arena.ofConfined()) {
            for (int i = 0; i < 8; i++) {
                long[] shape = new long[r.nextInt(5)];
                for (int d = 0; d < shape.length; d++) {
                    shape[d] = r.nextInt(i == 0 ? 1 : 5);
                }
                Tensor t = Fuzz.random(arena, r, shape);
                Path p = dir.resolve("w" + i + ".npy");
                Npy.write(p, t);
                out.add(Files.readAllBytes(p));
            }
        }
        out.add(NpyBytes.file("<f8", "(2, 3)", NpyBytes.f8(1, -2, 3.5, Double.NaN, 1e300, -0.0)));
        out.add(NpyBytes.file("|b1", "(5,)", NpyBytes.b1(true, false, true, true, false)));
        out.add(NpyBytes.file(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)}\n", NpyBytes.f4(1, 2, 3)));
        out.add(NpyBytes.file(3, "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1, 2), }",
                NpyBytes.f4(7, 8)));
        for (String name : List.of("causal_x.npy", "causal_mask.npy", "cross_mask.npy", "self_out.npy")) {
            out.add(Files.readAllBytes(Path.of(MalformedNpyTest.class.getResource("/mha/" + name).toURI())));
        }
        return out;
    }

    @Test
    void validFilesReadAsTheirIndependentDecoding() throws Exception {
        Random r = new Random(Fuzz.seed("npy-valid"));
        List<byte[]> files = validFiles(r);
        for (int i = 0; i < files.size(); i++) {
            assertEquals(Outcome.READ, check(files.get(i), "valid file " + i));
        }
    }

    @Test
    void everyTruncationAndEveryExtensionIsRejected() throws Exception {
        long seed = Fuzz.seed("npy-truncate");
        Random r = new Random(seed);
        List<byte[]> files = validFiles(r);
        for (int i = 0; i < files.size(); i++) {
            byte[] f = files.get(i);
            for (int len = 0; len < f.length; len++) {
                assertEquals(Outcome.REJECTED, check(Arrays.copyOf(f, len), "file " + i + " cut to " + len + " of "
                        + f.length + " bytes"));
            }
            for (int extra = 1; extra <= 9; extra += 4) {
                assertEquals(Outcome.REJECTED, check(Arrays.copyOf(f, f.length + extra), "file " + i + " + "
                        + extra + " zero bytes"));
            }
        }
    }

    @Test
    void randomBitFlipsAreReadCorrectlyOrRejected() throws Exception {
        long seed = Fuzz.seed("npy-flip");
        Random r = new Random(seed);
        List<byte[]> files = validFiles(r);
        int iterations = Fuzz.iterations(3000);
        int[] counts = new int[2];
        for (int it = 0; it < iterations; it++) {
            int which = r.nextInt(files.size());
            byte[] f = files.get(which).clone();
            int flips = 1 + (r.nextInt(4) == 0 ? r.nextInt(3) : 0);
            StringBuilder where = new StringBuilder();
            for (int k = 0; k < flips; k++) {
                // most flips land in the 128 bytes of prefix and header, where they change meaning
                int pos = r.nextBoolean() ? r.nextInt(Math.min(f.length, 128)) : r.nextInt(f.length);
                int bit = r.nextInt(8);
                f[pos] ^= (byte) (1 << bit);
                where.append(' ').append(pos).append(':').append(bit);
            }
            String what = "seed " + seed + " case " + it + ": file " + which + " bits flipped at" + where;
            counts[check(f, what).ordinal()]++;
        }
        assertTrue(counts[0] > 0 && counts[1] > 0, "read/rejected " + Arrays.toString(counts));
    }

    /** A v1 file with a literal header (padded with a newline) and the given data. */
    private static byte[] v1(String header, byte[] data) {
        return NpyBytes.file(1, header + "\n", data);
    }

    private static String dict(String shape) {
        return "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
    }

    @Test
    void lyingHeadersAreRejected() throws Exception {
        byte[] four = NpyBytes.f4(1, 2, 3, 4);
        List<byte[]> cases = new ArrayList<>(List.of(
                v1(dict("(1000,)"), four),
                v1(dict("(5,)"), four),
                v1(dict("(3,)"), four),
                v1(dict("(4611686018427387904, 4)"), four),
                v1(dict("(9223372036854775807,)"), four),
                v1(dict("(9223372036854775808,)"), four),
                v1(dict("(18446744073709551616,)"), four),
                v1(dict("(3037000500, 3037000500)"), four),
                v1(dict("(2305843009213693952,)"), four),
                v1(dict("(-1,)"), four),
                v1(dict("(-4, -1)"), four),
                v1(dict("(2, -2)"), four),
                v1(dict("(4.0,)"), four),
                v1(dict("(1e1,)"), four),
                v1(dict("('4',)"), four),
                v1(dict("(True,)"), four),
                v1(dict("(None,)"), four),
                v1(dict("[4]"), four),
                v1(dict("(4)"), four),
                v1(dict("4"), four),
                v1(dict("(0x4,)"), four),
                v1(dict("(" + "9".repeat(2000) + ",)"), four),
                v1(dict("(" + "(".repeat(5000) + ")".repeat(5000) + ",)"), four),
                // a repeated key is no lie: numpy keeps its last value, and so does qkv (NpyTest); leading zeros are
                // a SyntaxError in Python 3, and octal in Python 2
                v1(dict("(04,)"), four),
                v1("{'descr': '<f4', 'fortran_order': False}", four),
                v1("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'extra': 1}", four),
                v1("{'descr': '<f4', 'fortran_order': True, 'shape': (4,)}", four),
                v1("{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}", four),
                v1("{'descr': '>f4', 'fortran_order': False, 'shape': (4,)}", four),
                v1("{'descr': '<i4', 'fortran_order': False, 'shape': (4,)}", four),
                v1("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,)}", four),
                v1("{'descr': '<f4', 'fortran_order': False, 'shape': (4,)", four),
                v1("{'descr': '<f4' 'fortran_order': False, 'shape': (4,)}", four),
                v1("{'descr': '<f4', 'fortran_order': False, 'shape': (4,)}}", four),
                v1("{'descr': '<f4', 'fortran_order': False, 'shape': (4,)} # comment", four),
                v1("{'descr: '<f4', 'fortran_order': False, 'shape': (4,)}", four),
                v1("{descr: '<f4', fortran_order: False, shape: (4,)}", four),
                v1("{'descr': '<f4', 'fortran_order': false, 'shape': (4,)}", four),
                v1("dict(descr='<f4', fortran_order=False, shape=(4,))", four),
                v1("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 1: 2}", four),
                v1("", four),
                v1("\0".repeat(40), four),
                v1("{'descr': '<f4', 'fortran_order': False, 'shape': (4,)}\0", four),
                v1("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), '\u00ff': 1}", four),
                v1("{'descr': '<f4\u00e9', 'fortran_order': False, 'shape': (4,)}", four),
                NpyBytes.file(3, "{'descr': '<f4', 'fortran_order': False, 'shape': (\u0664,)}", four),
                NpyBytes.file(3, "{'descr': '<f4', 'fortran_order': False, 'shape': (\uff14,)}", four),
                NpyBytes.file(3, "\ufeff{'descr': '<f4', 'fortran_order': False, 'shape': (4,)}", four),
                NpyBytes.file(3, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), '\ud83d\ude00': 1}", four),
                NpyBytes.file(3, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), '\u0000': 1}", four)));
        // a megabyte of digits: parsing it into a BigInteger took about 20 s before the reader capped the length
        cases.add(NpyBytes.file(2, dict("(" + "9".repeat(Npy.MAX_HEADER_BYTES - 100) + ",)"), four));
        // invalid UTF-8 in a v3 header: an overlong NUL and a lone continuation byte
        byte[] bad = NpyBytes.file(3, dict("(4,)") + "XX", four);
        bad[12 + dict("(4,)").length()] = (byte) 0xc0;
        bad[13 + dict("(4,)").length()] = (byte) 0x80;
        cases.add(bad);
        // header lengths larger than the file, up to the largest each version can state
        for (long len : new long[] {0xffffL, 0x10000L, 0x7fffffffL, 0xffffffffL, 1L << 20, (1L << 20) + 1}) {
            for (int major = 1; major <= 3; major++) {
                if (major == 1 && len > 0xffff) {
                    continue;
                }
                byte[] f = NpyBytes.file(major, dict("(4,)"), four);
                ByteBuffer b = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
                if (major == 1) {
                    b.putShort(8, (short) len);
                } else {
                    b.putInt(8, (int) len);
                }
                cases.add(f);
            }
        }
        // other versions and magic
        for (int[] v : new int[][] {{0, 0}, {4, 0}, {1, 1}, {255, 255}}) {
            byte[] f = NpyBytes.file(1, dict("(4,)"), four);
            f[6] = (byte) v[0];
            f[7] = (byte) v[1];
            cases.add(f);
        }
        for (int i = 0; i < cases.size(); i++) {
            assertEquals(Outcome.REJECTED, check(cases.get(i), "lying header " + i), "lying header " + i + ": "
                    + headerText(cases.get(i)));
        }
    }

    @Test
    void emptyShapesWithHugeDimsReadAsEmpty() throws Exception {
        // zero elements are valid whatever the other dimensions; the product of the rest must not overflow first
        assertEquals(Outcome.READ, check(v1(dict("(0, 4611686018427387904, 4611686018427387904)"), new byte[0]),
                "zero first"));
        assertEquals(Outcome.READ, check(v1(dict("(4611686018427387904, 4611686018427387904, 0)"), new byte[0]),
                "zero last"));
        // and the tensor read is one the checked view accepts: its strides had wrapped negative
        try (Arena arena = Arena.ofConfined()) {
            Path f = dir.resolve("huge-empty.npy");
            Files.write(f, v1(dict("(0, 4611686018427387904, 2)"), new byte[0]));
            Tensor t = Npy.read(f, arena).tensor();
            for (long s : t.strides()) {
                assertTrue(s >= 0, t.toString());
            }
            Tensor.view(t.segment(), t.offset(), t.shape(), t.strides());
        }
    }

    /**
     * numpy's own limit, 64 dimensions, is the reader's: one more is refused, and a header of 100 000 dimensions
     * gives a short message rather than one listing them all (it was 300 KB).
     */
    @Test
    void shapesOfMoreThan64DimensionsAreRejectedBriefly() throws Exception {
        assertEquals(Outcome.READ, check(v1(dict("(" + "1, ".repeat(64) + ")"), NpyBytes.f4(7)), "64 dimensions"));
        assertEquals(Outcome.REJECTED, check(v1(dict("(" + "1, ".repeat(65) + ")"), NpyBytes.f4(7)),
                "65 dimensions"));
        assertEquals(Outcome.REJECTED, check(NpyBytes.file(2, dict("(" + "2, ".repeat(100_000) + ")") + "\n",
                NpyBytes.f4(7)), "100000 dimensions"));
    }

    /** The writer keeps to the reader's limit: a tensor of 65 dimensions is refused, and no file appears. */
    @Test
    void theWriterRefusesWhatTheReaderWould() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            long[] shape = new long[65];
            Arrays.fill(shape, 1);
            Path file = dir.resolve("rank65.npy");
            IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                    () -> Npy.write(file, Tensor.allocate(arena, shape)));
            assertTrue(e.getMessage().contains("at most 64"), e.getMessage());
            assertTrue(Files.notExists(file));
            Path ok = dir.resolve("rank64.npy");
            Npy.write(ok, Tensor.allocate(arena, Arrays.copyOf(shape, 64)).fill(3f));
            assertEquals(64, Npy.read(ok, arena).tensor().shape().length);
        }
    }

    /** A character device (a pipe alike) has no size to read a header against: named as such, not "empty". */
    @Test
    void aDeviceIsNotARegularFile() {
        Path device = Path.of("/dev/zero");
        org.junit.jupiter.api.Assumptions.assumeTrue(Files.exists(device), "no /dev/zero here");
        try (Arena arena = Arena.ofConfined()) {
            NpyFormatException e = org.junit.jupiter.api.Assertions.assertThrows(NpyFormatException.class,
                    () -> Npy.read(device, arena));
            assertTrue(e.getMessage().startsWith(device + ": is not a regular file"), e.getMessage());
        }
    }

    @Test
    void aDirectoryOrAMissingFileIsAnIOExceptionNamingIt() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            NpyFormatException e = org.junit.jupiter.api.Assertions.assertThrows(NpyFormatException.class,
                    () -> Npy.read(dir, arena));
            assertTrue(e.getMessage().startsWith(dir + ": "), e.getMessage());
            IOException missing = org.junit.jupiter.api.Assertions.assertThrows(IOException.class,
                    () -> Npy.read(dir.resolve("absent.npy"), arena));
            assertTrue(missing.getMessage().contains("absent.npy"), missing.getMessage());
        }
    }
}
