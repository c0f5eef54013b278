package dev.qkv.io;

import dev.qkv.tensor.Shapes;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.io.InterruptedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.PosixFilePermission;
import java.security.SecureRandom;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Reads and writes NumPy {@code .npy} files as float32 {@link Tensor}s.
 *
 * <p>Reading accepts format versions 1.0, 2.0 and 3.0 with dtype {@code '<f4'} (taken as is), {@code '<f8'}
 * (rounded to float32) or {@code '|b1'} (booleans become 0 and 1, and {@link NpyArray#isBool} says so), in C
 * order. {@link #readMask} also reads integer dtypes (a Hugging Face {@code attention_mask} is {@code '<i8'}) as
 * booleans. Every other file is a {@link NpyFormatException} whose message is {@code <file>: <what is wrong>}:
 * bad magic, another version, a header that is not a Python dict literal with exactly the keys {@code descr},
 * {@code fortran_order} and {@code shape} (a repeated key keeps its last value, as numpy reads it), another dtype, Fortran order, a dimension that is negative or not an
 * integer, a shape whose element count or byte size overflows a {@code long}, and a data section whose length is
 * not exactly what the shape needs. Trailing bytes after the data are an error too: a file that is longer than
 * its header says is more likely a wrong header than a valid array. Sizes are checked against the file's length
 * before anything is allocated, and headers over {@link #MAX_HEADER_BYTES} are refused unread.
 *
 * <p>The data is copied into memory from the caller's arena, not mapped: a mapped file that is truncated while
 * OpenBLAS reads it would crash the JVM, and a copy lets the output overwrite an input safely.
 *
 * <p>Writing produces version 1.0, {@code '<f4'}, C order, with the header padded so the data starts at a
 * multiple of 64 bytes. The file appears atomically: the bytes go to a temporary file in the same folder, which
 * is then renamed over the target; on any failure the temporary file is deleted and the target is untouched.
 *
 * <p>Float data is little-endian in the file and in memory; qkv supports only little-endian machines.
 */
public final class Npy {

    /** The element type a {@code .npy} file stores. */
    public enum Dtype {
        /** {@code '<f4'}: little-endian float32. */
        FLOAT32("<f4", 4),
        /** {@code '<f8'}: little-endian float64, rounded to float32 on reading. */
        FLOAT64("<f8", 8),
        /** {@code '|b1'}: one byte per boolean, read as 0 or 1. */
        BOOL("|b1", 1),
        /** {@code '|i1'}: int8, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        INT8("|i1", 1),
        /** {@code '|u1'}: uint8, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        UINT8("|u1", 1),
        /** {@code '<i2'}: little-endian int16, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        INT16("<i2", 2),
        /** {@code '<u2'}: little-endian uint16, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        UINT16("<u2", 2),
        /** {@code '<i4'}: little-endian int32, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        INT32("<i4", 4),
        /** {@code '<u4'}: little-endian uint32, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        UINT32("<u4", 4),
        /** {@code '<i8'}: little-endian int64, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        INT64("<i8", 8),
        /** {@code '<u8'}: little-endian uint64, read by {@link #readMask} only, as a boolean (non-zero is 1). */
        UINT64("<u8", 8);

        private final String descr;
        private final int itemSize;

        Dtype(String descr, int itemSize) {
            this.descr = descr;
            this.itemSize = itemSize;
        }

        /** True for the integer dtypes, which only {@link #readMask} reads (as booleans). */
        public boolean isInteger() {
            return ordinal() >= INT8.ordinal();
        }

        /** The numpy {@code descr} string, e.g. {@code <f4}. */
        public String descr() {
            return descr;
        }

        /** Bytes per element in the file. */
        public int itemSize() {
            return itemSize;
        }
    }

    /** Headers longer than this are refused before reading them; numpy's own writers stay far below. */
    public static final int MAX_HEADER_BYTES = 1 << 20;

    private static final byte[] MAGIC = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y'};
    private static final Set<String> KEYS = Set.of("descr", "fortran_order", "shape");
    private static final ValueLayout.OfDouble F8 = ValueLayout.JAVA_DOUBLE_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfFloat F4 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /** Bytes moved per channel call: large enough to amortize the call, small enough for a staging buffer. */
    private static final int CHUNK = 1 << 20;
    private static final int HEADER_ALIGN = 64;

    private Npy() {
    }

    /**
     * Reads {@code file} into a contiguous float32 tensor allocated from {@code arena}.
     *
     * @throws NpyFormatException when the file is not a {@code .npy} file qkv supports (see the class comment)
     * @throws IOException        when the file cannot be opened or read; an {@link InterruptedIOException}
     *                            naming the file when the thread is interrupted (its interrupt is kept)
     * @throws IllegalStateException when {@code arena} is closed, and {@link WrongThreadException} when it is
     *                               confined to another thread, naming the file and the shape
     */
    public static NpyArray read(Path file, Arena arena) throws IOException {
        return read(file, arena, false);
    }

    /**
     * {@link #read}, for a mask: integer dtypes are accepted too ({@code '|i1'}, {@code '|u1'} and the
     * little-endian {@code '<i2'}, {@code '<u2'}, {@code '<i4'}, {@code '<u4'}, {@code '<i8'}, {@code '<u8'}) and
     * read as booleans, as PyTorch and Hugging Face mean an integer {@code attention_mask}: non-zero becomes 1 (may
     * attend), zero 0, and {@link NpyArray#isBool} is true. Float and bool files read as {@link #read} reads
     * them. Big-endian integers are refused. The data is converted through a fixed staging buffer, as booleans
     * are: no copy of the whole file.
     *
     * @throws NpyFormatException when the file is not a {@code .npy} file qkv supports as a mask
     * @throws IOException        when the file cannot be opened or read, as {@link #read}
     */
    public static NpyArray readMask(Path file, Arena arena) throws IOException {
        return read(file, arena, true);
    }

    private static NpyArray read(Path file, Arena arena, boolean integers) throws IOException {
        // the library's rule for null (see Attention): named, before the file is touched
        Objects.requireNonNull(file, "file is null");
        Objects.requireNonNull(arena, "arena is null");
        String name = file.toString();
        if (Files.isDirectory(file)) {
            throw new NpyFormatException(name, "is a directory, not a .npy file");
        }
        if (Files.exists(file) && !Files.isRegularFile(file)) {
            // a pipe or a device reports size 0, which would read as "an empty file"
            throw new NpyFormatException(name, "is not a regular file (a pipe or a device); give the path of a"
                    + " .npy file");
        }
        try {
            return readOpen(file, name, arena, integers);
        } catch (java.nio.channels.ClosedByInterruptException e) {
            // the JDK's own exception has no message: neither the file nor what happened
            throw interrupted(name + ": not read, the thread was interrupted (its interrupt is kept)", e);
        }
    }

    /**
     * An {@link InterruptedIOException} with {@code message}, caused by {@code e}: a channel closed by the thread's
     * interrupt (the interrupt stays set).
     */
    private static InterruptedIOException interrupted(String message, IOException e) {
        InterruptedIOException named = new InterruptedIOException(message);
        named.initCause(e);
        return named;
    }

    private static NpyArray readOpen(Path file, String name, Arena arena, boolean integers) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            long size = ch.size();
            Header h = readHeader(name, ch, size, integers);
            String tooBig = PhysicalMemory.exceeded(h.count * Float.BYTES);
            if (tooBig != null) {
                // a sparse file is cheap, and a |b1 one's copy 4 times its size: Linux would grant the memory and
                // kill the JVM while zeroing it
                throw new NpyFormatException(name, "shape " + Shapes.format(h.shape) + " needs "
                        + h.count * Float.BYTES + " bytes of memory as float32, " + tooBig);
            }
            Tensor t;
            try {
                t = Tensor.allocate(arena, h.shape);
            } catch (OutOfMemoryError e) {
                throw new NpyFormatException(name, "shape " + Shapes.format(h.shape) + " needs "
                        + h.count * Float.BYTES + " bytes of memory as float32, which cannot be allocated");
            } catch (WrongThreadException e) {
                WrongThreadException named = new WrongThreadException(name + ": " + e.getMessage());
                named.initCause(e);
                throw named;
            } catch (IllegalStateException e) {
                // the arena is closed: Tensor.allocate names the shape, this the file
                throw new IllegalStateException(name + ": " + e.getMessage(), e);
            }
            readData(name, ch, h, t.segment());
            return new NpyArray(t, h.dtype);
        }
    }

    private record Header(Dtype dtype, long[] shape, long count, long dataOffset) {
    }

    private static Header readHeader(String name, FileChannel ch, long size, boolean integers) throws IOException {
        ByteBuffer prefix = ByteBuffer.allocate(12).order(ByteOrder.LITTLE_ENDIAN);
        readFully(name, ch, prefix, 0, (int) Math.min(size, 12));
        if (size < MAGIC.length || !startsWithMagic(prefix)) {
            throw new NpyFormatException(name, "not a .npy file (bad magic: expected \\x93NUMPY, found "
                    + hex(prefix, Math.min(size, MAGIC.length)) + ")");
        }
        if (size < 8) {
            throw new NpyFormatException(name, "truncated header: " + size + " bytes, no format version");
        }
        int major = prefix.get(6) & 0xff;
        int minor = prefix.get(7) & 0xff;
        if (minor != 0 || major < 1 || major > 3) {
            throw new NpyFormatException(name, "unsupported .npy format version " + major + "." + minor
                    + " (expected 1.0, 2.0 or 3.0)");
        }
        int prefixLen = major == 1 ? 10 : 12;
        if (size < prefixLen) {
            throw new NpyFormatException(name, "truncated header: " + size + " bytes, no header length");
        }
        long headerLen = major == 1 ? prefix.getShort(8) & 0xffffL : prefix.getInt(8) & 0xffffffffL;
        if (headerLen > MAX_HEADER_BYTES) {
            throw new NpyFormatException(name, "header length " + headerLen + " exceeds the limit of "
                    + MAX_HEADER_BYTES + " bytes");
        }
        if (prefixLen + headerLen > size) {
            throw new NpyFormatException(name, "truncated header: it declares " + headerLen + " bytes, the file has "
                    + (size - prefixLen) + " after the prefix");
        }
        ByteBuffer hb = ByteBuffer.allocate((int) headerLen);
        readFully(name, ch, hb, prefixLen, (int) headerLen);
        String text;
        try {
            // v1 and v2 headers are latin-1; v3 is UTF-8 (numpy's own rule)
            text = (major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1).newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT).onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(hb.flip()).toString();
        } catch (CharacterCodingException e) {
            throw new NpyFormatException(name, "header is not valid UTF-8");
        }
        Object parsed;
        try {
            parsed = PyLiteral.parse(text);
        } catch (PyLiteral.SyntaxException e) {
            throw new NpyFormatException(name, "header is not a valid Python dict literal: " + e.getMessage());
        }
        if (!(parsed instanceof Map<?, ?> dict)) {
            throw new NpyFormatException(name, "header is not a Python dict: " + clip(PyLiteral.repr(parsed)));
        }
        for (String key : List.of("descr", "fortran_order", "shape")) {
            if (!dict.containsKey(key)) {
                throw new NpyFormatException(name, "header lacks the key '" + key + "'");
            }
        }
        for (Object key : dict.keySet()) {
            if (!KEYS.contains(key)) {
                throw new NpyFormatException(name, "header has the unexpected key " + clip(PyLiteral.repr(key))
                        + " (expected descr, fortran_order, shape)");
            }
        }
        Dtype dtype = dtype(name, dict.get("descr"), integers);
        Object fortran = dict.get("fortran_order");
        if (!(fortran instanceof Boolean f)) {
            throw new NpyFormatException(name, "fortran_order is " + clip(PyLiteral.repr(fortran))
                    + ", expected True or False");
        }
        if (f) {
            throw new NpyFormatException(name, "fortran_order is True; only C order is supported");
        }
        long[] shape = shape(name, dict.get("shape"));
        // a zero dimension makes the array empty whatever the others are (numpy agrees), so it is checked
        // before a product of the others can overflow
        long count = Arrays.stream(shape).anyMatch(d -> d == 0) ? 0 : 1;
        for (long d : count == 0 ? new long[0] : shape) {
            try {
                count = Math.multiplyExact(count, d);
            } catch (ArithmeticException e) {
                throw new NpyFormatException(name, "shape " + Shapes.format(shape) + " has more elements than fit in a long");
            }
        }
        long bytes;
        try {
            // both the file's bytes and the float32 copy in memory must be addressable
            bytes = Math.multiplyExact(count, (long) dtype.itemSize);
            Math.multiplyExact(count, (long) Float.BYTES);
        } catch (ArithmeticException e) {
            throw new NpyFormatException(name, "shape " + Shapes.format(shape) + " of " + dtype.descr
                    + " has more bytes than fit in a long");
        }
        long dataOffset = prefixLen + headerLen;
        long available = size - dataOffset;
        if (bytes > available) {
            throw new NpyFormatException(name, "truncated data: shape " + Shapes.format(shape) + " of '"
                    + dtype.descr + "' needs " + bytes + " bytes, the file has " + available + " after the header");
        }
        if (bytes < available) {
            throw new NpyFormatException(name, (available - bytes) + " bytes of trailing data: shape "
                    + Shapes.format(shape) + " of '" + dtype.descr + "' needs " + bytes + " bytes, the file has "
                    + available + " after the header");
        }
        return new Header(dtype, shape, count, dataOffset);
    }

    private static Dtype dtype(String name, Object descr, boolean integers) throws NpyFormatException {
        String expected = integers ? "; expected '<f4' (float32), '<f8' (float64), '|b1' (bool) or a little-endian"
                + " integer ('<i8', '<i4', '<i2', '|i1' or unsigned)"
                : "; expected '<f4' (float32), '<f8' (float64) or '|b1' (bool)";
        if (!(descr instanceof String s)) {
            throw new NpyFormatException(name, "unsupported dtype " + clip(PyLiteral.repr(descr))
                    + " (structured arrays are not supported)" + expected);
        }
        Dtype found = null;
        for (Dtype d : Dtype.values()) {
            if (d.descr.equals(s)) {
                found = d;
            }
        }
        // one byte has no byte order: numpy writes '|', a hand-made header may say '<', '>', '=' or nothing
        String oneByte = s.length() == 3 && "<>=|".indexOf(s.charAt(0)) >= 0 ? s.substring(1) : s;
        switch (oneByte) {
            case "b1" -> found = Dtype.BOOL;
            case "i1" -> found = Dtype.INT8;
            case "u1" -> found = Dtype.UINT8;
            default -> {
            }
        }
        if (found != null && (!found.isInteger() || integers)) {
            return found;
        }
        // a one-byte type's '>' says nothing (it has no byte order): '>u1' is refused as an integer, not as big-endian
        boolean bigEndian = s.startsWith(">") && s.length() > 1 && !oneByte.matches("[biu]1");
        String why = bigEndian ? " (big-endian" + (integers && s.matches(">[iu][248]")
                ? "; save it little-endian: m.astype('<" + s.substring(1) + "')" : "") + ")" : "";
        boolean integer = found != null || s.matches("[<>=|]?[iu][1248]");
        throw new NpyFormatException(name, "unsupported dtype '" + clip(s) + "'" + why + expected
                + (integer && !integers ? "; integer arrays are read only as masks" : ""));
    }

    /** Most dimensions a shape may have: numpy's {@code NPY_MAXDIMS} (64 since numpy 2.0, 32 before). */
    static final int MAX_RANK = 64;

    private static long[] shape(String name, Object value) throws NpyFormatException {
        if (!(value instanceof PyLiteral.Tuple(List<Object> items))) {
            throw new NpyFormatException(name, "shape " + clip(PyLiteral.repr(value)) + " is not a tuple");
        }
        if (items.size() > MAX_RANK) {
            throw new NpyFormatException(name, "shape has " + items.size() + " dimensions; at most " + MAX_RANK
                    + " are supported (numpy's own limit)");
        }
        long[] shape = new long[items.size()];
        for (int i = 0; i < shape.length; i++) {
            Object d = items.get(i);
            if (!(d instanceof BigInteger n)) {
                throw new NpyFormatException(name, "shape " + clip(PyLiteral.repr(value)) + ": dimension "
                        + clip(PyLiteral.repr(d)) + " is not an integer");
            }
            if (n.signum() < 0) {
                throw new NpyFormatException(name, "shape " + clip(PyLiteral.repr(value)) + ": dimension "
                        + clip(n.toString()) + " is negative");
            }
            if (n.bitLength() > 63) {
                throw new NpyFormatException(name, "shape " + clip(PyLiteral.repr(value)) + ": dimension "
                        + clip(n.toString()) + " does not fit in a long");
            }
            shape[i] = n.longValue();
        }
        return shape;
    }

    private static void readData(String name, FileChannel ch, Header h, MemorySegment dst) throws IOException {
        long count = h.count;
        if (count == 0) {
            return;
        }
        if (h.dtype == Dtype.FLOAT32) {
            // the file's little-endian floats are the tensor's native layout: read straight into the tensor
            truncatedAt(name, FileRanges.read(ch, dst.asSlice(0, count * Float.BYTES), h.dataOffset));
            return;
        }
        int item = h.dtype.itemSize;
        try (Arena staging = Arena.ofConfined()) {
            MemorySegment buf = staging.allocate(CHUNK, 64);
            long perChunk = CHUNK / item;
            for (long first = 0; first < count; first += perChunk) {
                long n = Math.min(perChunk, count - first);
                readFully(name, ch, buf.asSlice(0, n * item).asByteBuffer(), h.dataOffset + first * item,
                        (int) (n * item));
                if (h.dtype == Dtype.FLOAT64) {
                    for (long i = 0; i < n; i++) {
                        dst.setAtIndex(F4, first + i, (float) buf.getAtIndex(F8, i));
                    }
                } else if (item == 8) {
                    // an integer mask: whether the element is 0 does not depend on its byte order
                    for (long i = 0; i < n; i++) {
                        dst.setAtIndex(F4, first + i, buf.getAtIndex(ValueLayout.JAVA_LONG, i) != 0 ? 1f : 0f);
                    }
                } else if (item == 4) {
                    for (long i = 0; i < n; i++) {
                        dst.setAtIndex(F4, first + i, buf.getAtIndex(ValueLayout.JAVA_INT, i) != 0 ? 1f : 0f);
                    }
                } else if (item == 2) {
                    for (long i = 0; i < n; i++) {
                        dst.setAtIndex(F4, first + i, buf.getAtIndex(ValueLayout.JAVA_SHORT, i) != 0 ? 1f : 0f);
                    }
                } else {
                    for (long i = 0; i < n; i++) {
                        dst.setAtIndex(F4, first + i, buf.get(ValueLayout.JAVA_BYTE, i) != 0 ? 1f : 0f);
                    }
                }
            }
        }
    }

    /** Reads exactly {@code n} bytes at {@code position}; a file that shrank meanwhile is a truncation. */
    private static void readFully(String name, FileChannel ch, ByteBuffer dst, long position, int n)
            throws IOException {
        dst.limit(dst.position() + n);
        truncatedAt(name, FileRanges.read(ch, dst, position));
    }

    /** {@code end} from {@link FileRanges#read}: -1, or the byte at which the file ended too early. */
    private static void truncatedAt(String name, long end) throws NpyFormatException {
        if (end >= 0) {
            throw new NpyFormatException(name, "truncated: the file ended at byte " + end + " while reading");
        }
    }

    private static boolean startsWithMagic(ByteBuffer b) {
        if (b.position() < MAGIC.length) {
            return false;
        }
        for (int i = 0; i < MAGIC.length; i++) {
            if (b.get(i) != MAGIC[i]) {
                return false;
            }
        }
        return true;
    }

    private static String hex(ByteBuffer b, long n) {
        StringBuilder s = new StringBuilder();
        for (int i = 0; i < n; i++) {
            int c = b.get(i) & 0xff;
            s.append(c >= 0x20 && c < 0x7f && c != '\\' ? String.valueOf((char) c) : String.format("\\x%02x", c));
        }
        return s.isEmpty() ? "an empty file" : "'" + s + "'";
    }

    private static String clip(String s) {
        return s.length() <= 80 ? s : s.substring(0, 77) + "...";
    }

    // ---------------------------------------------------------------- writing

    /**
     * Writes {@code tensor} to {@code file} as a version 1.0 {@code '<f4'} C-order {@code .npy} file, atomically:
     * either the complete file appears under {@code file}, or nothing changes. The folder must exist. A symbolic
     * link to an existing file is followed (the file it names is replaced, the link stays), and a file replaced keeps its POSIX
     * permission bits; a path that exists as
     * anything but a regular file (a folder, a device, a pipe) is refused, since the new file would replace it.
     *
     * @throws IllegalStateException when the tensor's arena is closed
     * @throws WrongThreadException  when the tensor's arena is confined to another thread
     * @throws NoSuchFileException when the folder of {@code file} does not exist
     * @throws IOException         when writing or renaming fails (the temporary file is removed); an
     *                             {@link InterruptedIOException} naming the file when the thread is interrupted
     *                             (its interrupt is kept, the file is as it was)
     * @throws IllegalArgumentException for a tensor of more than 64 dimensions (numpy's limit, and
     *                             {@link #read}'s), before any file exists
     */
    public static void write(Path file, Tensor tensor) throws IOException {
        write(file, tensor, null);
    }

    /**
     * A last check before {@link #write(Path, Tensor, BeforeReplace)} puts its file in place; an
     * {@link IOException} it throws cancels the write.
     */
    @FunctionalInterface
    public interface BeforeReplace {
        /** Runs once the data is complete and on disk, before the file replaces anything. */
        void check() throws IOException;
    }

    /**
     * {@link #write(Path, Tensor)}, with {@code beforeReplace} (may be null) run once the data is written and forced
     * to disk, before the rename: when it throws, the temporary file is removed, {@code file} is left as it was and
     * its {@link IOException} is thrown as it is. The command line prints its summary there, so that a run whose
     * standard output cannot be written ({@code > /dev/full}) fails without an output file.
     */
    public static void write(Path file, Tensor tensor, BeforeReplace beforeReplace) throws IOException {
        Objects.requireNonNull(file, "file is null");
        Objects.requireNonNull(tensor, "tensor is null");
        // closed (IllegalStateException) or confined to another thread (WrongThreadException), named with the
        // shape and before any file exists: the JDK's own refusal would come mid-write, naming neither
        tensor.requireUsable("tensor");
        if (tensor.shape().length > MAX_RANK) {
            // a file that read (and numpy) would refuse
            throw new IllegalArgumentException(file + ": tensor of " + tensor.shape().length + " dimensions: a .npy"
                    + " file holds at most " + MAX_RANK);
        }
        Path target = checkTarget(file);
        Path dir = target.getParent();
        byte[] header = header(tensor.shape());
        byte[] random = new byte[6];
        new SecureRandom().nextBytes(random);
        // own name instead of createTempFile, whose 0600 permissions the renamed output would keep; not built
        // from the output's name, which may already be as long as the file system allows
        Path tmp = dir.resolve(".qkv-" + HexFormat.of().formatHex(random) + ".tmp");
        // a file replaced keeps its permission bits, as one written in place would (a private 0600 output must not
        // come back as the umask's 0644)
        Set<PosixFilePermission> keep = null;
        try {
            keep = Files.isRegularFile(target) ? Files.getPosixFilePermissions(target) : null;
        } catch (UnsupportedOperationException | NoSuchFileException e) {
            // not a POSIX file system, or the file went away meanwhile: the new file's default permissions
        }
        boolean done = false;
        IOException vetoed = null;
        try {
            PendingFiles.add(tmp);
        } catch (IOException e) {
            throw new IOException(file + ": " + e.getMessage());
        }
        try {
            FileChannel opened;
            try {
                opened = FileChannel.open(tmp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
            } catch (AccessDeniedException e) {
                // name the file the caller asked for, not our temporary name
                throw new AccessDeniedException(file.toString(), null, "cannot create files in folder " + dir);
            }
            if (PendingFiles.exiting()) {
                // the clean-up hook may have passed this file before it existed: removed below, in finally
                opened.close();
                throw new IOException(file + ": not written, the JVM is exiting");
            }
            try (FileChannel ch = opened) {
                writeFully(ch, ByteBuffer.wrap(header));
                writeData(ch, tensor);
                // on disk before the rename: after a power loss the target is the old file or the whole new one,
                // never an empty file that the rename's metadata reached first
                ch.force(true);
            }
            if (keep != null) {
                Files.setPosixFilePermissions(tmp, keep);
            }
            if (beforeReplace != null) {
                try {
                    beforeReplace.check();
                } catch (IOException e) {
                    // the caller's own refusal: thrown as it is, once the temporary file is gone (finally)
                    vetoed = e;
                }
            }
            if (vetoed == null) {
                Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
                done = true;
            }
        } catch (FileSystemException e) {
            if (file.toString().equals(e.getFile())) {
                throw e;
            }
            // name the file the caller asked for, not our temporary name
            throw new FileSystemException(file.toString(), null, e.getReason() != null ? e.getReason()
                    : e instanceof NoSuchFileException ? "cannot create files in folder " + dir
                    : e.getClass().getSimpleName());
        } catch (java.nio.channels.ClosedByInterruptException e) {
            // no message of its own: the write read "<file>: null"
            throw interrupted(file + ": not written, the thread was interrupted (its interrupt is kept; the file is"
                    + " as it was)", e);
        } catch (IOException e) {
            throw new IOException(file + ": " + (e.getMessage() != null ? e.getMessage() : e.getClass().getSimpleName()),
                    e);
        } finally {
            try {
                if (!done) {
                    Files.deleteIfExists(tmp);
                }
            } finally {
                PendingFiles.remove(tmp);
            }
        }
        if (vetoed != null) {
            throw vetoed;
        }
    }

    /**
     * Temporary files of writes under way, removed by a shutdown hook if the JVM exits during a write (SIGTERM,
     * Ctrl-C, {@code System.exit} from another thread), where {@code write}'s own clean-up never runs: a stopped
     * run left a partial {@code .qkv-*.tmp} of tens of MB beside its output. The hook is registered with the
     * first write. A writer still running when the hook deletes its file fails its rename; the target is left as
     * it was.
     *
     * <p>Other threads run on while the hooks do, so a write may create its file after the hook has passed the
     * set (a stream of writes left one file in most exits). The hook therefore first marks the JVM as exiting, then
     * removes the files of the set until the set is empty (for a bounded time). A write that finds the mark before
     * it creates its file creates none; one that finds it after removes its file itself and fails, its name still
     * in the set, so the hook waits for it. A write that finds no mark either time was in the set before the mark
     * was set (the set is added to before the first look), so the hook goes through its file.
     */
    private static final class PendingFiles {
        private static final Set<Path> FILES = ConcurrentHashMap.newKeySet();
        private static volatile boolean exiting;
        /** How long the hook waits for writers that are removing their own files (or failing their rename). */
        private static final long WAIT_NANOS = 500_000_000L;

        static {
            try {
                Runtime.getRuntime().addShutdownHook(new Thread(PendingFiles::removeAll, "qkv-npy-cleanup"));
            } catch (IllegalStateException e) {
                // the JVM is already shutting down: write's own finally is all there is
            }
        }

        private static void removeAll() {
            exiting = true;
            long deadline = System.nanoTime() + WAIT_NANOS;
            do {
                for (Path p : FILES) {
                    try {
                        Files.deleteIfExists(p);
                    } catch (IOException | RuntimeException e) {
                        // nothing more can be done while the JVM exits
                    }
                }
                if (FILES.isEmpty()) {
                    return;
                }
                try {
                    Thread.sleep(5);
                } catch (InterruptedException e) {
                    return;
                }
            } while (System.nanoTime() < deadline);
        }

        static boolean exiting() {
            return exiting;
        }

        /** Records {@code p} before it is created; refused once the JVM is exiting (no file is created then). */
        static void add(Path p) throws IOException {
            FILES.add(p);
            if (exiting) {
                FILES.remove(p);
                throw new IOException("not written, the JVM is exiting");
            }
        }

        static void remove(Path p) {
            FILES.remove(p);
        }
    }

    /**
     * The checks {@link #write} makes of {@code file} before writing, for callers that want them before long work
     * (the command line checks its output first): the folder exists, and the path is a regular file or nothing
     * yet, and one the file system can look up (not a name longer than it takes). Returns the absolute path the
     * data would replace, a symbolic link to an existing file resolved.
     *
     * @throws NoSuchFileException when {@code file} names no file in an existing folder
     * @throws FileSystemException when {@code file} exists as something other than a regular file, or cannot be
     *                             looked up (e.g. "File name too long")
     */
    public static Path checkTarget(Path file) throws IOException {
        Objects.requireNonNull(file, "file is null");
        Path target = file.toAbsolutePath();
        if (Files.isSymbolicLink(target) && Files.exists(target)) {
            target = target.toRealPath();
        }
        Path dir = target.getParent();
        if (dir == null || target.getFileName() == null) {
            throw new NoSuchFileException(file.toString(), null, "not a file path");
        }
        if (!Files.isDirectory(dir)) {
            throw new NoSuchFileException(file.toString(), null, "folder " + dir
                    + (Files.exists(dir) ? " is a file, not a folder" : " does not exist"));
        }
        BasicFileAttributes attributes;
        try {
            attributes = Files.readAttributes(target, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
        } catch (NoSuchFileException e) {
            attributes = null;
        } catch (FileSystemException e) {
            // what Files.exists takes for "no file" although the name cannot be written either: a name longer than
            // the file system takes (ENAMETOOLONG), found only at the rename, after all the work
            throw new FileSystemException(file.toString(), null, e.getReason() != null ? e.getReason()
                    : "cannot be written");
        }
        if (attributes != null && !attributes.isRegularFile() && !attributes.isSymbolicLink()) {
            throw new FileSystemException(file.toString(), null, "exists and is not a regular file (a folder, a"
                    + " device or another special file), which the output would replace");
        }
        return target;
    }

    /** The version 1.0 prefix and header for a float32 C-order array, padded to a multiple of 64 bytes. */
    static byte[] header(long[] shape) {
        StringBuilder dims = new StringBuilder("(");
        for (int i = 0; i < shape.length; i++) {
            dims.append(i == 0 ? "" : ", ").append(shape[i]);
        }
        dims.append(shape.length == 1 ? ",)" : ")");
        String dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + dims + ", }";
        int unpadded = 10 + dict.length() + 1;
        int total = (unpadded + HEADER_ALIGN - 1) / HEADER_ALIGN * HEADER_ALIGN;
        int headerLen = total - 10;
        if (headerLen > 0xffff) {
            throw new IllegalArgumentException("shape " + Shapes.format(shape) + " needs a header longer than .npy 1.0 allows");
        }
        String text = dict + " ".repeat(headerLen - dict.length() - 1) + "\n";
        ByteBuffer b = ByteBuffer.allocate(total).order(ByteOrder.LITTLE_ENDIAN);
        b.put(MAGIC).put((byte) 1).put((byte) 0).putShort((short) headerLen);
        b.put(text.getBytes(StandardCharsets.ISO_8859_1));
        return b.array();
    }

    private static void writeData(FileChannel ch, Tensor tensor) throws IOException {
        long bytes = tensor.elementCount() * Float.BYTES;
        if (bytes == 0) {
            return;
        }
        if (tensor.isContiguous()) {
            MemorySegment src = tensor.segment().asSlice(tensor.offset() * Float.BYTES, bytes);
            if (src.isNative()) {
                for (long at = 0; at < bytes; at += CHUNK) {
                    writeFully(ch, src.asSlice(at, Math.min(CHUNK, bytes - at)).asByteBuffer());
                }
                return;
            }
            // a heap segment over a float[] (not a byte[]) has no ByteBuffer view: stage it off-heap by chunks
            try (Arena staging = Arena.ofConfined()) {
                MemorySegment buf = staging.allocate(Math.min(CHUNK, bytes));
                for (long at = 0; at < bytes; at += CHUNK) {
                    long n = Math.min(CHUNK, bytes - at);
                    MemorySegment.copy(src, at, buf, 0, n);
                    writeFully(ch, buf.asSlice(0, n).asByteBuffer());
                }
            }
            return;
        }
        // a view (transposed, sliced, broadcast): gathered in row-major order into one chunk at a time, never a
        // copy of the whole tensor (a broadcast view of 4 bytes may stand for gigabytes of output)
        long[] shape = tensor.shape();
        long[] strides = tensor.strides();
        int rank = shape.length;
        long[] c = new long[rank];
        MemorySegment seg = tensor.segment();
        long at = tensor.offset();
        try (Arena staging = Arena.ofConfined()) {
            MemorySegment buf = staging.allocate(Math.min(CHUNK, bytes), Float.BYTES);
            long cap = buf.byteSize() / Float.BYTES;
            long filled = 0;
            for (long i = 0, n = tensor.elementCount(); i < n; i++) {
                buf.setAtIndex(ValueLayout.JAVA_FLOAT, filled++, seg.getAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, at));
                if (filled == cap) {
                    writeFully(ch, buf.asByteBuffer());
                    filled = 0;
                }
                for (int d = rank - 1; d >= 0; d--) {
                    at += strides[d];
                    if (++c[d] < shape[d]) {
                        break;
                    }
                    at -= strides[d] * shape[d];
                    c[d] = 0;
                }
            }
            if (filled > 0) {
                writeFully(ch, buf.asSlice(0, filled * Float.BYTES).asByteBuffer());
            }
        }
    }

    private static void writeFully(FileChannel ch, ByteBuffer src) throws IOException {
        while (src.hasRemaining()) {
            ch.write(src);
        }
    }
}
