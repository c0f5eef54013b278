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
 * An open {@code .safetensors} file: an 8-byte little-endian header length, a JSON header mapping tensor names
 * to {@code dtype}, {@code shape} and {@code data_offsets} (plus an optional {@code __metadata__} object of
 * strings, which may be {@code null} as in the reference implementation), then the raw little-endian tensor bytes.
 *
 * <p>The header is untrusted: {@link #open} validates all of it before reading any tensor (header length within
 * the file, strict JSON, known dtypes, byte counts equal to {@code numel · sizeof(dtype)}, and, as the reference
 * implementation requires, tensors that tile the data exactly: sorted by offset, each begins where the previous
 * one ends and the last ends at the end of the file, so no gap, overlap or trailing byte) and every error names
 * the file and the tensor.
 *
 * <p>By default ({@link Load#COPY}) {@link #tensor} reads a tensor into new, 64-byte aligned memory of the
 * caller's arena: once loaded, nothing depends on the file, which may then be truncated, replaced or deleted.
 * {@link Load#MAPPED} maps the file instead and returns {@code F32} tensors as zero-copy views of the mapping
 * (copies, for F32 data at an address that is not a multiple of 4); see there for the risk. {@code F16} and {@code BF16} are converted to float32 into the caller's arena in
 * both modes, and {@code F64} is rounded to the nearest float32 (beyond float's range to ±Inf), as a {@code '<f8'}
 * {@code .npy} file is.
 */
public final class Safetensors {

    /** Largest header accepted (the reference implementation's limit): a bigger one is not a weights file. */
    public static final long MAX_HEADER_BYTES = 100L << 20;

    private static final ValueLayout.OfShort LE_SHORT =
            ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfDouble LE_DOUBLE =
            ValueLayout.JAVA_DOUBLE_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** How {@link #open} gives access to the tensors' bytes. */
    public enum Load {
        /**
         * The default: the file is read, never mapped, and every tensor is copied into memory of the arena given
         * to {@link #tensor} (64-byte aligned, see {@link Tensor#allocate}). The open file is closed with the
         * arena given to {@link #open}; close that arena once the weights are loaded. A file truncated between
         * {@code open} and {@code tensor} is a {@link SafetensorsException}; after {@code tensor} it does not
         * matter.
         */
        COPY,
        /**
         * {@code F32} tensors are zero-copy views of a read-only mapping of the file, which lives until the arena
         * given to {@link #open} is closed; F32 data at an address that is not a multiple of 4 (the format does not
         * pad) is copied, aligned, into the arena given to {@link #tensor}, as OpenBLAS loads floats aligned. <b>Risk:</b> if another process truncates the file while it is mapped,
         * the next read of a lost page raises {@code SIGBUS}; inside OpenBLAS (the native backend) that kills the
         * JVM, which no Java check can prevent. Use it only for files nothing writes while they are mapped (a
         * read-only model store), when the copy's memory or load time matters.
         */
        MAPPED
    }

    /**
     * Element types of the safetensors format (all that the reference implementation knows, so that a file with
     * tensors qkv never reads, such as microscaling scales or complex tables, still opens), with their sizes in
     * bits: {@code F4}, {@code F6_E2M3} and {@code F6_E3M2} elements are smaller than a byte.
     */
    public enum Dtype {
        F4(4), F6_E2M3(6), F6_E3M2(6),
        BOOL(8), U8(8), I8(8), F8_E5M2(8), F8_E4M3(8), F8_E8M0(8), I16(16), U16(16), F16(16), BF16(16),
        I32(32), U32(32), F32(32), C64(64), F64(64), I64(64), U64(64);

        private final int bits;

        Dtype(int bits) {
            this.bits = bits;
        }

        /** Size of one element in bytes, rounded down: 0 for the types of fewer than 8 bits (see {@link #bitSize}). */
        public int byteSize() {
            return bits / 8;
        }

        /** Size of one element in bits. */
        public int bitSize() {
            return bits;
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

    /** Bytes of the staging buffer through which F16, BF16 and F64 tensors are read and converted. */
    private static final int CHUNK = 1 << 24;

    private final Path file;
    private final Load load;
    /** The data section: a slice of the mapping ({@link Load#MAPPED}), or an empty segment of the open arena. */
    private final MemorySegment data;
    /** The open file ({@link Load#COPY}), closed with the arena; null when mapped. */
    private final Source source;
    private final long dataStart;
    private final Map<String, Entry> entries;
    private final Map<String, String> metadata;

    private Safetensors(Path file, Load load, MemorySegment data, Source source, long dataStart,
                        Map<String, Entry> entries, Map<String, String> metadata) {
        this.file = file;
        this.load = load;
        this.data = data;
        this.source = source;
        this.dataStart = dataStart;
        this.entries = entries;
        this.metadata = metadata;
    }

    /**
     * Validates the header of {@code file} and keeps it open for {@link #tensor} ({@link Load#COPY}, the safe
     * default) until {@code arena} is closed.
     *
     * @throws SafetensorsException for a malformed header, naming the file and the tensor at fault, or an
     *                              {@code arena} closed or confined to another thread (as
     *                              {@link #open(Path, Arena, Load)})
     * @throws IOException          when the file cannot be read
     */
    public static Safetensors open(Path file, Arena arena) throws IOException {
        return open(file, arena, Load.COPY);
    }

    /**
     * Validates the header of {@code file}; {@link Load#COPY} keeps the file open and {@link Load#MAPPED} maps it
     * read-only, in both cases until {@code arena} is closed.
     *
     * @throws SafetensorsException for a malformed header, naming the file and the tensor at fault, an
     *                              {@code arena} closed or confined to another thread, or (MAPPED) a file the
     *                              address space cannot map
     * @throws IOException          when the file cannot be read
     */
    public static Safetensors open(Path file, Arena arena, Load load) throws IOException {
        Objects.requireNonNull(file, "file is null");
        Objects.requireNonNull(arena, "arena is null");
        Objects.requireNonNull(load, "load is null");
        if (!arena.scope().isAlive()) {
            // the JDK's own refusal ("Already closed", from map or reinterpret) would not name the file
            throw fail(file, "the arena given to open is closed");
        }
        if (Files.isDirectory(file)) {
            // Linux opens a directory for reading and fails only at the first read, with no file name
            throw fail(file, "is a directory, not a .safetensors file");
        }
        if (Files.exists(file) && !Files.isRegularFile(file)) {
            // a pipe or a device reports size 0, which would read as a file too short for its header
            throw fail(file, "is not a regular file (a pipe or a device); give the path of a .safetensors file");
        }
        FileChannel ch = FileChannel.open(file, StandardOpenOption.READ);
        boolean keep = false;
        try {
            long size = ch.size();
            if (size < 8) {
                throw fail(file, "file of " + size + " bytes is too short for the 8-byte header length");
            }
            ByteBuffer lenBuf = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
            readFully(file, ch, lenBuf, 0);
            long n = lenBuf.getLong(0);
            if (n < 0 || n > size - 8 || n > MAX_HEADER_BYTES) {
                String other = otherFormat(lenBuf);
                if (other != null) {
                    throw fail(file, "not a .safetensors file: " + other);
                }
            }
            if (n < 0 || n > size - 8) {
                throw fail(file, "header length " + Long.toUnsignedString(n) + " exceeds the " + (size - 8)
                        + " bytes after the length field");
            }
            if (n > MAX_HEADER_BYTES) {
                throw fail(file, "header length " + n + " exceeds the limit of " + MAX_HEADER_BYTES + " bytes");
            }
            ByteBuffer headerBuf = ByteBuffer.allocate((int) n);
            readFully(file, ch, headerBuf, 8);
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
            Map<String, Entry> entries = Collections.unmodifiableMap(parseHeader(file, header, dataSize, meta));
            if (load == Load.MAPPED) {
                MemorySegment mapped;
                try {
                    mapped = ch.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
                } catch (WrongThreadException e) {
                    throw fail(file, "the arena given to open is confined to another thread");
                } catch (IOException e) {
                    // the JDK says only "Map failed" (mmap refused: ulimit -v, vm.max_map_count, address space)
                    throw new SafetensorsException(file + ": cannot map its " + size + " bytes into memory ("
                            + e.getMessage() + "); Load.COPY reads each tensor instead", e);
                }
                return new Safetensors(file, load, mapped.asSlice(dataStart, dataSize), null, dataStart, entries,
                        Collections.unmodifiableMap(meta));
            }
            // the channel closes with the arena, as a mapping would be unmapped with it
            Source source = new Source(file, ch);
            MemorySegment token;
            try {
                token = MemorySegment.NULL.reinterpret(arena, s -> source.close());
            } catch (WrongThreadException e) {
                throw fail(file, "the arena given to open is confined to another thread");
            }
            keep = true;
            return new Safetensors(file, load, token, source, dataStart, entries, Collections.unmodifiableMap(meta));
        } finally {
            if (!keep) {
                ch.close();
            }
        }
    }

    /**
     * What a file whose first 8 bytes are no plausible header length is, when it is one of the formats a user most
     * likely gives by mistake, else null. Each magic read as a little-endian length is far past
     * {@link #MAX_HEADER_BYTES}, so no .safetensors file is taken for one. Found embedding qkv: {@code --weights}
     * naming a .npy file said only "header length 379676406402707 exceeds the 18552 bytes after the length field".
     */
    private static String otherFormat(ByteBuffer first8) {
        int b0 = first8.get(0) & 0xff;
        int b1 = first8.get(1) & 0xff;
        if (b0 == 0x93 && b1 == 'N' && first8.get(2) == 'U' && first8.get(3) == 'M' && first8.get(4) == 'P'
                && first8.get(5) == 'Y') {
            return "a .npy file (give it as an input array, not as weights)";
        }
        if (b0 == 'P' && b1 == 'K' && first8.get(2) == 3 && first8.get(3) == 4) {
            return "a zip archive (PyTorch's torch.save format of .bin/.pt/.pth files): convert it with"
                    + " safetensors.torch.save_file(model.state_dict(), path)";
        }
        if (b0 == 0x80 && b1 >= 2 && b1 <= 5) {
            return "a pickle (PyTorch's legacy torch.save format of .bin/.pt files): convert it with"
                    + " safetensors.torch.save_file(model.state_dict(), path)";
        }
        if (b0 == 'G' && b1 == 'G' && first8.get(2) == 'U' && first8.get(3) == 'F') {
            return "a GGUF file (llama.cpp's format), which qkv does not read";
        }
        return null;
    }

    /**
     * The open file of a {@link Load#COPY} instance. A FileChannel is interruptible: a thread interrupted during a
     * read (a cancelled request loading weights) closes it for every thread, and every later {@link #tensor} failed
     * while the arena was open. Such a channel is opened again, only onto the same file (its file key, where the
     * file system has one, must be the one seen at {@link #open}: a file replaced since is not read as this one),
     * and never once the arena is closed.
     */
    private static final class Source {
        private final Path file;
        private final Object key;
        private FileChannel ch;
        private boolean closed;

        Source(Path file, FileChannel ch) throws IOException {
            this.file = file;
            this.ch = ch;
            this.key = Files.readAttributes(file, java.nio.file.attribute.BasicFileAttributes.class).fileKey();
        }

        synchronized FileChannel channel() throws IOException {
            if (closed) {
                throw new java.nio.channels.ClosedChannelException();
            }
            if (!ch.isOpen()) {
                FileChannel again = FileChannel.open(file, StandardOpenOption.READ);
                Object now;
                try {
                    now = Files.readAttributes(file, java.nio.file.attribute.BasicFileAttributes.class).fileKey();
                } catch (IOException | RuntimeException e) {
                    // the file went away between the open and this look: the channel just opened is not kept
                    closeQuietly(again);
                    throw e;
                }
                if (key == null || !key.equals(now)) {
                    closeQuietly(again);
                    throw new IOException("the file was closed by an interrupted read and cannot be opened again as"
                            + " the same file (replaced since it was opened, or no file key to tell)");
                }
                ch = again;
            }
            return ch;
        }

        synchronized void close() {
            closed = true;
            closeQuietly(ch);
        }
    }

    private static void closeQuietly(FileChannel ch) {
        try {
            ch.close();
        } catch (IOException e) {
            // a read-only file: nothing was written that a failed close could lose
        }
    }

    /** Fills {@code buf} from byte {@code at}; a file that ends first (it shrank since its size was read) is an error. */
    private static void readFully(Path file, FileChannel ch, ByteBuffer buf, long at) throws IOException {
        long end = FileRanges.read(ch, buf, at);
        if (end >= 0) {
            throw fail(file, "the file ended at byte " + end + " while reading its header (of " + ch.size()
                    + " bytes by its size: it shrank while being read, or is not a regular file's data)");
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
                if (e.getValue() == null) {
                    // the reference implementation's field is an Option<HashMap<String, String>>: null is None
                    continue;
                }
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
        tiles(file, entries, dataSize);
        return entries;
    }

    /**
     * The reference implementation's rule (huggingface/safetensors, {@code Metadata::validate} and
     * {@code MetadataIncompleteBuffer}): sorted by {@code (begin, end)}, each tensor begins exactly where the
     * previous one ends, from byte 0, and the last ends at the end of the data. A gap or trailing bytes belong to
     * no tensor: more likely a lying header than a valid file, and a polyglot file could hide content there.
     */
    private static void tiles(Path file, Map<String, Entry> entries, long dataSize) throws SafetensorsException {
        List<Entry> sorted = new ArrayList<>(entries.values());
        sorted.sort(Comparator.comparingLong(Entry::begin).thenComparingLong(Entry::end));
        long at = 0;
        Entry prev = null;
        for (Entry e : sorted) {
            if (e.begin() < at) {
                throw fail(file, "tensor '" + e.name() + "' bytes [" + e.begin() + ", " + e.end()
                        + ") overlap tensor '" + prev.name() + "' bytes [" + prev.begin() + ", " + prev.end() + ")");
            }
            if (e.begin() > at) {
                throw fail(file, "tensor '" + e.name() + "' bytes [" + e.begin() + ", " + e.end() + "): bytes ["
                        + at + ", " + e.begin() + ") before it belong to no tensor"
                        + (prev == null ? "" : " (the previous tensor, '" + prev.name() + "', ends at " + at + ")"));
            }
            at = e.end();
            prev = e;
        }
        if (at != dataSize && prev == null) {
            throw fail(file, "the header lists no tensor, but " + dataSize + " data bytes follow it");
        }
        if (at != dataSize) {
            throw fail(file, "after tensor '" + prev.name() + "' (bytes [" + prev.begin() + ", " + prev.end()
                    + ")), the last " + (dataSize - at) + " of the " + dataSize + " data bytes belong to no tensor");
        }
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
            // numel · bits / 8 without overflowing the bits: whole groups of 8 elements, then the rest
            long restBits = numel % 8 * dtype.bitSize();
            if (restBits % 8 != 0) {
                // the reference implementation's MisalignedSlice: a tensor ends inside a byte
                throw fail(file, where + ": " + dtype + " " + Shapes.format(shape) + " is " + numel + " elements of "
                        + dtype.bitSize() + " bits, which do not fill whole bytes");
            }
            bytes = Math.addExact(Math.multiplyExact(numel / 8, (long) dtype.bitSize()), restBits / 8);
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
        if (list.size() > Npy.MAX_RANK) {
            throw fail(file, where + ": \"" + field + "\" has " + list.size() + " dimensions; at most "
                    + Npy.MAX_RANK + " are supported");
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
        Objects.requireNonNull(name, "name is null");
        return entries.containsKey(name);
    }

    /** The header entry of {@code name}. */
    public Entry entry(String name) throws SafetensorsException {
        Objects.requireNonNull(name, "name is null");
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

    /** How this file was opened. */
    public Load load() {
        return load;
    }

    /**
     * Tensor {@code name} as float32 in a new tensor from {@code arena}: F32 copied ({@link Load#COPY}; with
     * {@link Load#MAPPED} a read-only view of the mapping, no copy, and {@code arena} unused, unless the floats
     * sit at an address that is not a multiple of 4, which are copied aligned), F16 and BF16 converted, F64 rounded to
     * the nearest float32 (beyond float's range to ±Inf). Other
     * dtypes are rejected. Neither argument may be null ({@link NullPointerException} naming it), whatever the
     * tensor: whether {@code arena} is needed depends on the file.
     *
     * @throws SafetensorsException naming the file and tensor: no such tensor, not a float dtype, the arena of
     *                              {@link #open} or {@code arena} closed or confined to another thread (for
     *                              the arena of {@code open}: with {@link Load#MAPPED}), the file shorter than at {@code open},
     *                              or a read interrupted by this thread's interrupt
     */
    public Tensor tensor(String name, Arena arena) throws SafetensorsException {
        Objects.requireNonNull(name, "name is null");
        Objects.requireNonNull(arena, "arena is null");
        Entry e = entry(name);
        if (!data.scope().isAlive()) {
            throw fail(file, "tensor '" + name + "': the arena " + (load == Load.MAPPED ? "holding the mapping"
                    : "the file was opened with") + " is closed");
        }
        if (load == Load.MAPPED && !data.isAccessibleBy(Thread.currentThread())) {
            // the JDK's refusal would come mid-copy, naming nothing, or not at all (a view this thread cannot read)
            throw fail(file, "tensor '" + name + "': the arena holding the mapping is confined to another thread");
        }
        if (e.dtype() != Dtype.F32 && e.dtype() != Dtype.F64 && e.dtype() != Dtype.F16 && e.dtype() != Dtype.BF16) {
            // F8_*, F6_*, F4 and C64 are float types too, just not ones qkv reads
            throw fail(file, "tensor '" + name + "' " + e.shapeString() + ": dtype " + e.dtype()
                    + (e.dtype().name().startsWith("F") || e.dtype() == Dtype.C64 ? " is not supported"
                    : " is not a float type")
                    + " (F32, F64, F16 or BF16)");
        }
        long[] shape = e.shape();
        long bytes = e.end() - e.begin();
        if (load == Load.MAPPED && e.dtype() == Dtype.F32 && (data.address() + e.begin()) % Float.BYTES == 0) {
            return Tensor.wrap(data.asSlice(e.begin(), bytes), shape);
        }
        if (!arena.scope().isAlive()) {
            // the JDK's own refusal ("Already closed") would name neither the file nor the tensor
            throw fail(file, "tensor '" + name + "' " + e.shapeString() + ": the arena given for its copy is closed");
        }
        long floatBytes = bytes / e.dtype().byteSize() * Float.BYTES;
        String tooBig = PhysicalMemory.exceeded(floatBytes);
        if (tooBig != null) {
            // a sparse file is cheap, and an F16 copy twice its size: Linux would grant the memory and kill the
            // JVM while zeroing it
            throw fail(file, "tensor '" + name + "' " + e.shapeString() + " needs " + floatBytes
                    + " bytes of memory as float32, " + tooBig);
        }
        Tensor t;
        try {
            t = Tensor.allocate(arena, shape);
        } catch (OutOfMemoryError oom) {
            throw fail(file, "tensor '" + name + "' " + e.shapeString() + " needs "
                    + (bytes / e.dtype().byteSize() * Float.BYTES) + " bytes of memory as float32, which cannot be allocated");
        } catch (WrongThreadException wrong) {
            throw fail(file, "tensor '" + name + "' " + e.shapeString() + ": the arena given for its copy is confined"
                    + " to another thread");
        }
        Dtype dtype = e.dtype();
        long n = t.elementCount();
        if (load == Load.MAPPED) {
            // from the mapping: F32 at an address that is not a multiple of 4 (the format does not pad; older
            // writers did not) copied aligned, since OpenBLAS loads floats aligned; F16, BF16 and F64 converted
            try {
                if (e.dtype() == Dtype.F32) {
                    MemorySegment.copy(data, e.begin(), t.segment(), 0, bytes);
                } else {
                    convert(data, e.begin(), t, 0, n, dtype);
                }
            } catch (InternalError fault) {
                // a lost page of the mapping (the file truncated since open): the JDK's fault, as an error here
                throw fail(file, "tensor '" + name + "': the file is shorter than at open (truncated since?)");
            }
            return t;
        }
        if (e.dtype() == Dtype.F32) {
            // the file's little-endian floats are the tensor's native layout: read straight into it
            read(name, t.segment().asSlice(0, bytes), e.begin());
            return t;
        }
        int item = dtype.byteSize();
        try (Arena staging = Arena.ofConfined()) {
            MemorySegment buf = staging.allocate(Math.min(CHUNK, Math.max(bytes, 1)));
            long per = buf.byteSize() / item;
            for (long first = 0; first < n; first += per) {
                long m = Math.min(per, n - first);
                read(name, buf.asSlice(0, m * item), e.begin() + first * item);
                convert(buf, 0, t, first, m, dtype);
            }
        }
        return t;
    }

    /**
     * Halves, bfloat16s or doubles ({@code dtype}) at byte {@code from} of {@code src} into elements
     * {@code [first, first + n)} of t; a double is rounded to the nearest float.
     */
    private static void convert(MemorySegment src, long from, Tensor t, long first, long n, Dtype dtype) {
        if (dtype == Dtype.F64) {
            for (long i = 0; i < n; i++) {
                t.setAt(first + i, (float) src.get(LE_DOUBLE, from + 8 * i));
            }
            return;
        }
        boolean half = dtype == Dtype.F16;
        for (long i = 0; i < n; i++) {
            short raw = src.get(LE_SHORT, from + 2 * i);
            t.setAt(first + i, half ? Float.float16ToFloat(raw) : Float.intBitsToFloat((raw & 0xffff) << 16));
        }
    }

    /** Fills {@code dst} from data byte {@code at}; a file that shrank since {@link #open} is an error. */
    private void read(String name, MemorySegment dst, long at) throws SafetensorsException {
        long end;
        for (int attempt = 1; ; attempt++) {
            try {
                end = FileRanges.read(source.channel(), dst, dataStart + at);
                break;
            } catch (java.nio.channels.ClosedByInterruptException ex) {
                // this thread's interrupt closed the channel: this read fails, later ones open the file again
                throw new SafetensorsException(file + ": tensor '" + name + "': reading was interrupted (the"
                        + " thread's interrupt is kept; a later call reads the file again)", ex);
            } catch (java.nio.channels.ClosedChannelException ex) {
                // another thread's interrupt closed it under this read (AsynchronousCloseException) or before it:
                // read again on the reopened channel, a few times at most
                if (attempt == 3) {
                    throw new SafetensorsException(file + ": tensor '" + name + "': reading failed: " + ex, ex);
                }
            } catch (IOException ex) {
                throw new SafetensorsException(file + ": tensor '" + name + "': reading failed: " + ex, ex);
            }
        }
        if (end >= 0) {
            throw fail(file, "tensor '" + name + "': the file ends at byte " + end + ", before the tensor's"
                    + " data does: it was truncated after it was opened");
        }
    }
}
