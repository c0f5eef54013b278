package dev.qkv.io;

import dev.qkv.tensor.Shapes;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A memory-mapped {@code .safetensors} file: an 8-byte little-endian header length, a JSON header mapping
 * tensor names to {@code dtype}, {@code shape} and {@code data_offsets} (plus an optional {@code __metadata__}
 * object of strings), then the raw little-endian tensor bytes.
 *
 * <p>The header is untrusted: {@link #open} validates all of it before mapping anything (header length within
 * the file, strict JSON, known dtypes, byte counts equal to {@code numel · sizeof(dtype)}, offsets inside the
 * data, no two tensors overlapping) and every error names the file and the tensor. {@code F32} tensors are
 * returned as views of the mapping (no copy; the data may be only byte-aligned, and {@link Tensor} reads
 * unaligned); {@code F16} and {@code BF16} are converted to float32 into a caller's arena.
 */
public final class Safetensors {

    /** Largest header accepted (the reference implementation's limit): a bigger one is not a weights file. */
    public static final long MAX_HEADER_BYTES = 100L << 20;

    private static final ValueLayout.OfShort LE_SHORT =
            ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** Element types of the safetensors format, with their sizes in bytes. */
    public enum Dtype {
        BOOL(1), U8(1), I8(1), F8_E5M2(1), F8_E4M3(1), I16(2), U16(2), F16(2), BF16(2),
        I32(4), U32(4), F32(4), F64(8), I64(8), U64(8);

        private final int bytes;

        Dtype(int bytes) {
            this.bytes = bytes;
        }

        /** Size of one element in bytes. */
        public int byteSize() {
            return bytes;
        }
    }

    /**
     * One tensor's header entry; {@code begin} and {@code end} are byte offsets into the data section.
     *
     * @param name  the tensor's name
     * @param dtype its element type
     * @param shape its shape (a copy is kept)
     * @param begin first byte, relative to the start of the data section
     * @param end   one past the last byte
     */
    public record Entry(String name, Dtype dtype, long[] shape, long begin, long end) {
        /** Copies the shape so the entry stays immutable. */
        public Entry {
            shape = shape.clone();
        }

        /** A copy of the shape. */
        @Override
        public long[] shape() {
            return shape.clone();
        }

        /** The shape in brackets, e.g. {@code [768, 768]}. */
        public String shapeString() {
            return Shapes.format(shape);
        }
    }

    private final Path file;
    private final MemorySegment data;
    private final Map<String, Entry> entries;
    private final Map<String, String> metadata;

    private Safetensors(Path file, MemorySegment data, Map<String, Entry> entries, Map<String, String> metadata) {
        this.file = file;
        this.data = data;
        this.entries = entries;
        this.metadata = metadata;
    }

    /**
     * Validates the header of {@code file} and maps its data read-only; the mapping lives until {@code arena}
     * is closed.
     *
     * @throws SafetensorsException for a malformed header, naming the file and the tensor at fault
     * @throws IOException          when the file cannot be read
     */
    public static Safetensors open(Path file, Arena arena) throws IOException {
        Objects.requireNonNull(file, "file");
        Objects.requireNonNull(arena, "arena");
        if (Files.isDirectory(file)) {
            // Linux opens a directory for reading and fails only at the first read, with no file name
            throw fail(file, "is a directory, not a .safetensors file");
        }
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            long size = ch.size();
            if (size < 8) {
                throw fail(file, "file of " + size + " bytes is too short for the 8-byte header length");
            }
            ByteBuffer lenBuf = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
            readFully(ch, lenBuf, 0);
            long n = lenBuf.getLong(0);
            if (n < 0 || n > size - 8) {
                throw fail(file, "header length " + Long.toUnsignedString(n) + " exceeds the " + (size - 8)
                        + " bytes after the length field");
            }
            if (n > MAX_HEADER_BYTES) {
                throw fail(file, "header length " + n + " exceeds the limit of " + MAX_HEADER_BYTES + " bytes");
            }
            ByteBuffer headerBuf = ByteBuffer.allocate((int) n);
            readFully(ch, headerBuf, 8);
            String header;
            try {
                header = StandardCharsets.UTF_8.newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT)
                        .decode(headerBuf.flip()).toString();
            } catch (CharacterCodingException e) {
                throw fail(file, "header is not valid UTF-8");
            }
            long dataStart = 8 + n;
            long dataSize = size - dataStart;
            Map<String, String> meta = new LinkedHashMap<>();
            Map<String, Entry> entries = parseHeader(file, header, dataSize, meta);
            MemorySegment mapped = ch.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
            return new Safetensors(file, mapped.asSlice(dataStart, dataSize), Collections.unmodifiableMap(entries),
                    Collections.unmodifiableMap(meta));
        }
    }

    private static void readFully(FileChannel ch, ByteBuffer buf, long at) throws IOException {
        long p = at;
        while (buf.hasRemaining()) {
            int r = ch.read(buf, p);
            if (r < 0) {
                throw new IOException("unexpected end of file while reading the header");
            }
            p += r;
        }
    }

    private static Map<String, Entry> parseHeader(Path file, String header, long dataSize, Map<String, String> meta)
            throws SafetensorsException {
        Object root;
        try {
            root = SafetensorsJson.parse(header);
        } catch (SafetensorsJson.JsonException e) {
            throw fail(file, "header: " + e.getMessage());
        }
        if (!(root instanceof Map<?, ?> top)) {
            throw fail(file, "header is not a JSON object");
        }
        Map<String, Entry> entries = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : top.entrySet()) {
            String name = (String) e.getKey();
            if (name.equals("__metadata__")) {
                if (!(e.getValue() instanceof Map<?, ?> m)) {
                    throw fail(file, "__metadata__ is not an object");
                }
                for (Map.Entry<?, ?> me : m.entrySet()) {
                    if (!(me.getValue() instanceof String str)) {
                        throw fail(file, "__metadata__ value of \"" + me.getKey() + "\" is not a string");
                    }
                    meta.put((String) me.getKey(), str);
                }
                continue;
            }
            entries.put(name, entry(file, name, e.getValue(), dataSize));
        }
        // overlap: sort by start; each non-empty tensor must begin at or after the previous one's end
        List<Entry> sorted = new ArrayList<>();
        for (Entry en : entries.values()) {
            if (en.end() > en.begin()) {
                sorted.add(en);
            }
        }
        sorted.sort(Comparator.comparingLong(Entry::begin));
        for (int i = 1; i < sorted.size(); i++) {
            Entry a = sorted.get(i - 1);
            Entry b = sorted.get(i);
            if (b.begin() < a.end()) {
                throw fail(file, "tensor '" + b.name() + "' bytes [" + b.begin() + ", " + b.end()
                        + ") overlap tensor '" + a.name() + "' bytes [" + a.begin() + ", " + a.end() + ")");
            }
        }
        return entries;
    }

    private static Entry entry(Path file, String name, Object value, long dataSize) throws SafetensorsException {
        String where = "tensor '" + name + "'";
        if (!(value instanceof Map<?, ?> m)) {
            throw fail(file, where + ": entry is not an object");
        }
        for (Object k : m.keySet()) {
            if (!k.equals("dtype") && !k.equals("shape") && !k.equals("data_offsets")) {
                throw fail(file, where + ": unexpected field \"" + k + "\"");
            }
        }
        if (!(m.get("dtype") instanceof String ds)) {
            throw fail(file, where + ": missing or non-string \"dtype\"");
        }
        Dtype dtype;
        try {
            dtype = Dtype.valueOf(ds);
        } catch (IllegalArgumentException ex) {
            throw fail(file, where + ": unknown dtype \"" + ds + "\"");
        }
        long[] shape = longs(file, where, "shape", m.get("shape"), -1);
        long[] offsets = longs(file, where, "data_offsets", m.get("data_offsets"), 2);
        long numel = 1;
        for (long d : shape) {
            try {
                numel = Math.multiplyExact(numel, d);
            } catch (ArithmeticException ex) {
                throw fail(file, where + ": shape " + Shapes.format(shape) + " has more than 2^63 elements");
            }
        }
        long bytes;
        try {
            bytes = Math.multiplyExact(numel, dtype.byteSize());
        } catch (ArithmeticException ex) {
            throw fail(file, where + ": shape " + Shapes.format(shape) + " of " + dtype + " exceeds 2^63 bytes");
        }
        long begin = offsets[0];
        long end = offsets[1];
        if (begin > end) {
            throw fail(file, where + ": data_offsets [" + begin + ", " + end + "] begin after end");
        }
        if (end > dataSize) {
            throw fail(file, where + ": data_offsets [" + begin + ", " + end + "] outside the " + dataSize
                    + " bytes of data");
        }
        if (end - begin != bytes) {
            throw fail(file, where + ": " + dtype + " " + Shapes.format(shape) + " needs " + bytes
                    + " bytes, data_offsets [" + begin + ", " + end + "] hold " + (end - begin));
        }
        return new Entry(name, dtype, shape, begin, end);
    }

    private static long[] longs(Path file, String where, String field, Object v, int count)
            throws SafetensorsException {
        if (!(v instanceof List<?> list)) {
            throw fail(file, where + ": missing or non-array \"" + field + "\"");
        }
        if (count >= 0 && list.size() != count) {
            throw fail(file, where + ": \"" + field + "\" has " + list.size() + " elements, expected " + count);
        }
        long[] out = new long[list.size()];
        for (int i = 0; i < out.length; i++) {
            if (!(list.get(i) instanceof Long x) || x < 0) {
                throw fail(file, where + ": \"" + field + "\" element " + list.get(i)
                        + " is not a non-negative integer");
            }
            out[i] = x;
        }
        return out;
    }

    private static SafetensorsException fail(Path file, String what) {
        return new SafetensorsException(file + ": " + what);
    }

    /** The file this was opened from. */
    public Path file() {
        return file;
    }

    /** The {@code __metadata__} strings (empty when the header has none). */
    public Map<String, String> metadata() {
        return metadata;
    }

    /** Header entries by name, in header order. */
    public Map<String, Entry> entries() {
        return entries;
    }

    /** True when the header has a tensor of this name. */
    public boolean contains(String name) {
        return entries.containsKey(name);
    }

    /** The header entry of {@code name}. */
    public Entry entry(String name) throws SafetensorsException {
        Entry e = entries.get(name);
        if (e == null) {
            throw fail(file, "tensor '" + name + "' not found" + available());
        }
        return e;
    }

    private String available() {
        if (entries.isEmpty()) {
            return " (the file has no tensors)";
        }
        StringBuilder sb = new StringBuilder(" (the file has ");
        int i = 0;
        for (String n : entries.keySet()) {
            if (i == 8) {
                sb.append(", ... ").append(entries.size() - 8).append(" more");
                break;
            }
            sb.append(i++ == 0 ? "'" : ", '").append(n).append('\'');
        }
        return sb.append(')').toString();
    }

    /**
     * Tensor {@code name} as float32: an F32 tensor is a view of the mapping (no copy, read-only); F16 and
     * BF16 are converted into a new tensor from {@code arena}. Other dtypes are rejected.
     */
    public Tensor tensor(String name, Arena arena) throws SafetensorsException {
        Entry e = entry(name);
        if (!data.scope().isAlive()) {
            throw fail(file, "tensor '" + name + "': the arena holding the mapping is closed");
        }
        MemorySegment bytes = data.asSlice(e.begin(), e.end() - e.begin());
        long[] shape = e.shape();
        return switch (e.dtype()) {
            case F32 -> Tensor.wrap(bytes, shape);
            case F16, BF16 -> {
                Tensor t = Tensor.allocate(Objects.requireNonNull(arena, "arena"), shape);
                long n = t.elementCount();
                boolean half = e.dtype() == Dtype.F16;
                for (long i = 0; i < n; i++) {
                    short raw = bytes.getAtIndex(LE_SHORT, i);
                    t.setAt(i, half ? Float.float16ToFloat(raw) : Float.intBitsToFloat((raw & 0xffff) << 16));
                }
                yield t;
            }
            default -> throw fail(file, "tensor '" + name + "' " + e.shapeString() + ": dtype " + e.dtype()
                    + " is not a float type (F32, F16 or BF16)");
        };
    }
}
