package dev.qkv.tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.Objects;

/**
 * A float32 view over a {@link MemorySegment}: an element offset, a shape and element strides.
 *
 * <p>A tensor never owns memory. {@link #allocate} takes it from the caller's {@link Arena}, and the caller
 * closes that arena. Views ({@link #select}, {@link #slice}, {@link #transpose}) share the segment and differ
 * only in offset, shape and strides; nothing is copied. Strides may be zero (broadcast) but never negative.
 * Elements are read and written in the platform's native byte order, which is little-endian on every
 * machine qkv supports.
 */
public final class Tensor {

    /** Byte alignment of every tensor {@link #allocate} returns: one AVX-512 register, one cache line. */
    public static final long ALIGNMENT = 64;

    /** Element layout; unaligned so that views of memory-mapped files at any 4-byte offset stay legal. */
    static final ValueLayout.OfFloat FLOAT = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private final MemorySegment segment;
    private final long offset;
    private final long[] shape;
    private final long[] strides;

    private Tensor(MemorySegment segment, long offset, long[] shape, long[] strides) {
        this.segment = segment;
        this.offset = offset;
        this.shape = shape;
        this.strides = strides;
    }

    /**
     * A zero-filled, contiguous, 64-byte aligned tensor of the given shape, taken from {@code arena}.
     *
     * <p>Errors name the shape: {@link IllegalArgumentException} for a negative dimension, an element count past
     * 2^63 (never wrapped to a small size) or a byte size that, with the alignment's slack, no 64-bit address
     * space holds; {@link OutOfMemoryError} when the memory is refused (the arena's limit, the OS), kept as that
     * type because it is the machine's limit, not a wrong argument, and callers report it as such;
     * {@link IllegalStateException} when the arena is closed and {@link WrongThreadException} when it is confined
     * to another thread.
     */
    public static Tensor allocate(Arena arena, long... shape) {
        Objects.requireNonNull(arena, "arena is null");
        long[] s = checkShape(shape);
        long n = elementCount(s);
        if (n > MAX_ALLOCATION_BYTES / Float.BYTES) {
            throw new IllegalArgumentException("tensor " + Shapes.format(s) + ": " + n
                    + " floats exceed the 2^63-byte address space");
        }
        long bytes = Math.max(n, 1) * Float.BYTES;
        MemorySegment seg;
        try {
            seg = arena.allocate(bytes, ALIGNMENT);
        } catch (OutOfMemoryError e) {
            // the JDK's message names a byte count (for the largest sizes, nothing at all): name the tensor too
            OutOfMemoryError named = new OutOfMemoryError("tensor " + Shapes.format(s) + ": " + bytes
                    + " bytes cannot be allocated" + (e.getMessage() == null ? "" : " (" + e.getMessage() + ")"));
            named.initCause(e);
            throw named;
        } catch (IllegalStateException | WrongThreadException e) {
            if (!arena.scope().isAlive()) {
                throw new IllegalStateException("tensor " + Shapes.format(s) + ": the arena is closed", e);
            }
            if (e instanceof WrongThreadException) {
                WrongThreadException named = new WrongThreadException("tensor " + Shapes.format(s)
                        + ": the arena is confined to another thread");
                named.initCause(e);
                throw named;
            }
            throw e;
        }
        return new Tensor(seg, 0, s, contiguousStrides(s));
    }

    /**
     * Largest byte size {@link #allocate} asks an arena for: past it, the size plus the alignment's slack (which the
     * JDK adds) overflows a long, and the JDK failed with an {@link OutOfMemoryError} without a message.
     */
    private static final long MAX_ALLOCATION_BYTES = Long.MAX_VALUE - 2 * ALIGNMENT;

    /**
     * A contiguous tensor holding a copy of {@code values}, taken from {@code arena}. A length that does not match
     * the shape is refused before anything is taken from the arena (memory an arena gave stays until it closes).
     */
    public static Tensor of(Arena arena, float[] values, long... shape) {
        Objects.requireNonNull(arena, "arena is null");
        Objects.requireNonNull(values, "values is null");
        long[] s = checkShape(shape);
        if (values.length != elementCount(s)) {
            throw new IllegalArgumentException(values.length + " values for tensor " + Shapes.format(s));
        }
        Tensor t = allocate(arena, s);
        t.copyFrom(values);
        return t;
    }

    /** A contiguous row-major view of {@code segment} from its first byte; the segment must be large enough. */
    public static Tensor wrap(MemorySegment segment, long... shape) {
        Objects.requireNonNull(segment, "segment is null");
        long[] s = checkShape(shape);
        return view(segment, 0, s, contiguousStrides(s));
    }

    /**
     * A view of {@code segment} with an element offset, shape and element strides, checked against the
     * segment's size: every element the view can reach must lie inside the segment.
     */
    public static Tensor view(MemorySegment segment, long offset, long[] shape, long[] strides) {
        Objects.requireNonNull(segment, "segment is null");
        long[] s = checkShape(shape);
        Objects.requireNonNull(strides, "strides is null");
        if (strides.length != s.length) {
            throw new IllegalArgumentException("tensor " + Shapes.format(s) + ": " + strides.length
                    + " strides for " + s.length + " dimensions");
        }
        long[] st = strides.clone();
        for (long x : st) {
            if (x < 0) {
                throw new IllegalArgumentException("tensor " + Shapes.format(s) + ": negative stride in "
                        + Arrays.toString(st));
            }
        }
        if (offset < 0) {
            throw new IllegalArgumentException("tensor " + Shapes.format(s) + ": negative offset " + offset);
        }
        Tensor t = new Tensor(segment, offset, s, st);
        long need = t.endElement();
        if (need > 0 && segment.isNative() && segment.address() == 0) {
            // MemorySegment.NULL made large with reinterpret: any access would crash the JVM
            throw new IllegalArgumentException("tensor " + Shapes.format(s) + ": a segment at address 0 (NULL)");
        }
        if (need > segment.byteSize() / Float.BYTES) {
            throw new IllegalArgumentException("tensor " + Shapes.format(s) + " with strides " + Arrays.toString(st)
                    + " and offset " + offset + " reaches element " + (need - 1) + ", segment holds "
                    + segment.byteSize() / Float.BYTES + " floats (" + segment.byteSize() + " bytes)");
        }
        return t;
    }

    private static long[] checkShape(long[] shape) {
        return checkShape(shape, "shape");
    }

    private static long[] checkShape(long[] shape, String name) {
        Objects.requireNonNull(shape, name + " is null");
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
        }
        elementCount(shape);
        return shape.clone();
    }

    private static long elementCount(long[] shape) {
        for (long d : shape) {
            if (d == 0) {
                return 0; // whatever the other sizes: a transpose of a valid empty view must not overflow here
            }
        }
        long n = 1;
        for (long d : shape) {
            try {
                n = Math.multiplyExact(n, d);
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " has more than 2^63 elements");
            }
        }
        return n;
    }

    /**
     * Row-major strides of {@code shape}, a dimension of 0 counting as 1 so that every stride is the extent of the
     * dimensions after it. Only an empty shape can have such products past 2^63 (e.g. {@code [0, 2^62, 2]}, whose
     * element count is 0); its strides stop at {@link Long#MAX_VALUE}, never wrapping negative, as it reaches no
     * element through them.
     */
    static long[] contiguousStrides(long[] shape) {
        long[] st = new long[shape.length];
        long s = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            st[i] = s;
            long d = Math.max(shape[i], 1);
            s = s > Long.MAX_VALUE / d ? Long.MAX_VALUE : s * d;
        }
        return st;
    }

    /** One past the highest element index (relative to the segment's start) this view can reach; 0 if empty. */
    public long endElement() {
        for (long d : shape) {
            if (d == 0) {
                return 0; // before any arithmetic: an empty view reaches nothing, whatever its strides
            }
        }
        long last = offset;
        for (int i = 0; i < shape.length; i++) {
            try {
                last = Math.addExact(last, Math.multiplyExact(shape[i] - 1, strides[i]));
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException("tensor " + Shapes.format(shape) + " with strides "
                        + Arrays.toString(strides) + " reaches past 2^63 elements");
            }
        }
        // the last element itself may sit at 2^63 - 1, where one past it overflows (and would pass any size check)
        if (last == Long.MAX_VALUE) {
            throw new IllegalArgumentException("tensor " + Shapes.format(shape) + " at offset " + offset
                    + " reaches past 2^63 elements");
        }
        return last + 1;
    }

    /**
     * True when the byte ranges this view and {@code other} can reach share a byte: coarse but safe, since gaps
     * of strided views count. Views of different heap arrays, or of heap and off-heap memory, never overlap;
     * read-only views count as the memory they view (see {@link #overlaps(MemorySegment, long, long,
     * MemorySegment, long, long)}). Allocates nothing for off-heap views, nor for heap views it finds disjoint,
     * so per-call argument checks may use it.
     */
    public boolean overlaps(Tensor other) {
        Objects.requireNonNull(other, "other is null");
        return overlaps(segment, offset, endElement(), other.segment, other.offset, other.endElement());
    }

    /**
     * True when floats {@code [xFrom, xTo)} of {@code x} and {@code [yFrom, yTo)} of {@code y} share a byte; each
     * range must lie inside its segment. The one overlap rule of every argument check (tensors, sgemm, sgemv).
     *
     * <p>Heap segments of one array are told from those of different arrays by
     * {@link MemorySegment#asOverlappingSlice}, which compares the arrays themselves. Comparing
     * {@link MemorySegment#heapBase} does not work: it is empty for a read-only segment, so a read-only view of an
     * array passed for a different array than a writable view of it (an output aliasing its inputs went through),
     * and two read-only views of different arrays for one array. The offsets are compared first: ranges at
     * disjoint offsets never overlap, whatever the arrays; at overlapping offsets they overlap exactly when the
     * whole segments view one array, and then the whole segments overlap too. So the only allocation (the slice
     * {@code asOverlappingSlice} returns) comes with a {@code true}, which every caller answers with an exception
     * or a copy; off-heap segments and non-overlapping heap ones allocate nothing.
     */
    public static boolean overlaps(MemorySegment x, long xFrom, long xTo, MemorySegment y, long yFrom, long yTo) {
        Objects.requireNonNull(x, "x is null");
        Objects.requireNonNull(y, "y is null");
        if (xTo <= xFrom || yTo <= yFrom || x.isNative() != y.isNative()) {
            return false;
        }
        // for heap segments address() is the offset into the array
        long x0 = x.address() + xFrom * Float.BYTES;
        long x1 = x.address() + xTo * Float.BYTES;
        long y0 = y.address() + yFrom * Float.BYTES;
        long y1 = y.address() + yTo * Float.BYTES;
        if (x0 >= y1 || y0 >= x1) {
            return false;
        }
        return x.isNative() || x.asOverlappingSlice(y).isPresent();
    }

    /** The segment this tensor views. */
    public MemorySegment segment() {
        return segment;
    }

    /** Offset of element [0, ..., 0] in elements from the segment's start. */
    public long offset() {
        return offset;
    }

    /** Number of dimensions. */
    public int rank() {
        return shape.length;
    }

    /** Size of dimension {@code d}; negative {@code d} counts from the end. */
    public long size(int d) {
        return shape[dim(d)];
    }

    /** Stride of dimension {@code d} in elements; negative {@code d} counts from the end. */
    public long stride(int d) {
        return strides[dim(d)];
    }

    /** A copy of the shape. */
    public long[] shape() {
        return shape.clone();
    }

    /** A copy of the strides, in elements. */
    public long[] strides() {
        return strides.clone();
    }

    /** Number of elements, the product of the shape. */
    public long elementCount() {
        return elementCount(shape);
    }

    /** True while the memory behind this tensor may be accessed (its arena is open). */
    public boolean isAlive() {
        return segment.scope().isAlive();
    }

    /**
     * Refuses this tensor, named {@code name} in the message with its shape, when this thread cannot use its
     * memory (see {@link #requireUsable(MemorySegment, String)}).
     */
    public void requireUsable(String name) {
        Objects.requireNonNull(name, "name is null");
        if (!usable(segment)) {
            requireUsable(segment, describe(name));
        }
    }

    /** True when this thread may use {@code s}: its arena is open and, if confined, confined to this thread. */
    public static boolean usable(MemorySegment s) {
        Objects.requireNonNull(s, "s is null");
        return s.scope().isAlive() && s.isAccessibleBy(Thread.currentThread());
    }

    /**
     * Refuses {@code s} when this thread cannot use it, before any work: {@link IllegalStateException} when its
     * arena is closed, {@link WrongThreadException} when it is confined to another thread (the JDK's own check
     * would come mid-call, after part of an output was written). The message is {@code what} and the reason;
     * callers whose {@code what} costs a string build test {@link #usable} first.
     */
    public static void requireUsable(MemorySegment s, String what) {
        Objects.requireNonNull(s, "s is null");
        Objects.requireNonNull(what, "what is null");
        if (!s.scope().isAlive()) {
            throw new IllegalStateException(what + ": its arena is closed");
        }
        if (!s.isAccessibleBy(Thread.currentThread())) {
            throw new WrongThreadException(what + ": its arena is confined to another thread");
        }
    }

    /** True when the elements are laid out densely in row-major order (an empty tensor always is). */
    public boolean isContiguous() {
        if (elementCount() == 0) {
            // no element has an address; strides of a view of an empty dimension are whatever it was cut from
            return true;
        }
        long s = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            if (shape[i] != 1 && strides[i] != s) {
                return false;
            }
            s *= shape[i];
        }
        return true;
    }

    /** The shape in brackets, e.g. {@code [1, 8, 128, 64]}. */
    public String shapeString() {
        return Shapes.format(shape);
    }

    /** Name and shape for error messages, e.g. {@code k [1, 8, 128, 64]}. */
    public String describe(String name) {
        Objects.requireNonNull(name, "name is null");
        return name + " " + Shapes.format(shape);
    }

    private int dim(int d) {
        int r = d < 0 ? d + shape.length : d;
        if (r < 0 || r >= shape.length) {
            throw new IndexOutOfBoundsException("dimension " + d + " of tensor " + shapeString());
        }
        return r;
    }

    /** The view with dimension {@code d} fixed at {@code index}; its rank is one less. */
    public Tensor select(int d, long index) {
        int r = dim(d);
        if (index < 0 || index >= shape[r]) {
            throw outOfBounds("index " + index, r);
        }
        long[] s = new long[shape.length - 1];
        long[] st = new long[shape.length - 1];
        for (int i = 0, j = 0; i < shape.length; i++) {
            if (i != r) {
                s[j] = shape[i];
                st[j++] = strides[i];
            }
        }
        // an empty result reaches nothing: its offset stays, where index * stride of an empty view's huge
        // dimension could pass 2^63 and wrap negative
        return new Tensor(segment, elementCount(s) == 0 ? offset : offset + index * strides[r], s, st);
    }

    /** The view of elements {@code from} (inclusive) to {@code to} (exclusive) along dimension {@code d}. */
    public Tensor slice(int d, long from, long to) {
        int r = dim(d);
        if (from < 0 || from > to || to > shape[r]) {
            throw outOfBounds("range [" + from + ", " + to + ")", r);
        }
        long[] s = shape.clone();
        s[r] = to - from;
        // an empty result (this slice or another dimension of 0) reaches nothing: its offset stays (see select)
        return new Tensor(segment, elementCount(s) == 0 ? offset : offset + from * strides[r], s, strides.clone());
    }

    /** The view with the last two dimensions swapped: {@code [..., m, n]} becomes {@code [..., n, m]}. */
    public Tensor transpose() {
        if (shape.length < 2) {
            throw new IllegalArgumentException("transpose needs rank >= 2, tensor is " + shapeString());
        }
        return transpose(shape.length - 2, shape.length - 1);
    }

    /** The view with dimensions {@code a} and {@code b} swapped. */
    public Tensor transpose(int a, int b) {
        int x = dim(a);
        int y = dim(b);
        long[] s = shape.clone();
        long[] st = strides.clone();
        s[x] = shape[y];
        s[y] = shape[x];
        st[x] = strides[y];
        st[y] = strides[x];
        return new Tensor(segment, offset, s, st);
    }

    /** A view with a new shape over the same elements; the tensor must be contiguous. */
    public Tensor reshape(long... newShape) {
        long[] s = checkShape(newShape, "newShape");
        if (elementCount(s) != elementCount()) {
            throw new IllegalArgumentException("cannot reshape " + shapeString() + " to " + Shapes.format(s));
        }
        if (!isContiguous()) {
            throw new IllegalArgumentException("cannot reshape non-contiguous tensor " + shapeString());
        }
        return new Tensor(segment, offset, s, contiguousStrides(s));
    }

    /** A view that repeats this tensor along dimensions of size 1 (stride 0) to reach {@code target}. */
    public Tensor broadcastTo(long... target) {
        Objects.requireNonNull(target, "target is null");
        if (target.length < shape.length) {
            throw new IllegalArgumentException("cannot broadcast " + shapeString() + " to " + Shapes.format(target));
        }
        long[] s = checkShape(target);
        long[] st = new long[target.length];
        int lead = target.length - shape.length;
        for (int i = 0; i < target.length; i++) {
            int j = i - lead;
            long have = j < 0 ? 1 : shape[j];
            if (have == target[i]) {
                st[i] = j < 0 ? 0 : strides[j];
            } else if (have == 1) {
                st[i] = 0;
            } else {
                throw new IllegalArgumentException("cannot broadcast " + shapeString() + " to " + Shapes.format(target));
            }
        }
        return new Tensor(segment, offset, s, st);
    }

    /** Element index (from the segment's start) of the given coordinates, bounds-checked. */
    public long index(long... coords) {
        Objects.requireNonNull(coords, "coords is null");
        if (coords.length != shape.length) {
            throw new IllegalArgumentException(coords.length + " coordinates for tensor " + shapeString());
        }
        long e = offset;
        for (int i = 0; i < coords.length; i++) {
            if (coords[i] < 0 || coords[i] >= shape[i]) {
                throw outOfBounds("index " + coords[i], i);
            }
            e += coords[i] * strides[i];
        }
        return e;
    }

    /** {@code tensor [2, 3]: index 3 out of bounds for dimension 1 of size 3}. */
    private IndexOutOfBoundsException outOfBounds(String what, int d) {
        return new IndexOutOfBoundsException(describe("tensor") + ": " + what + " out of bounds for dimension " + d
                + " of size " + shape[d]);
    }

    /**
     * The element at the given coordinates.
     *
     * @throws IllegalStateException when the tensor's arena is closed, and {@link WrongThreadException} when it is
     *                               confined to another thread, both naming the tensor and its shape
     */
    public float get(long... coords) {
        long i = index(coords);
        try {
            return segment.getAtIndex(FLOAT, i);
        } catch (IllegalStateException | WrongThreadException e) {
            throw unusable(e);
        }
    }

    /**
     * Sets the element at the given coordinates; errors as for {@link #get}, and {@link IllegalArgumentException}
     * for read-only memory (a view of a read-only file mapping).
     */
    public void set(float value, long... coords) {
        long i = index(coords);
        try {
            segment.setAtIndex(FLOAT, i, value);
        } catch (IllegalStateException | WrongThreadException | IllegalArgumentException e) {
            throw unusable(e);
        }
    }

    /** The element at a raw element index from the segment's start (no coordinate checks); errors as for {@link #get}. */
    public float getAt(long elementIndex) {
        try {
            return segment.getAtIndex(FLOAT, elementIndex);
        } catch (IllegalStateException | WrongThreadException e) {
            throw unusable(e);
        }
    }

    /** Sets the element at a raw element index from the segment's start (no coordinate checks); errors as for {@link #set}. */
    public void setAt(long elementIndex, float value) {
        try {
            segment.setAtIndex(FLOAT, elementIndex, value);
        } catch (IllegalStateException | WrongThreadException | IllegalArgumentException e) {
            throw unusable(e);
        }
    }

    /**
     * The JDK's refusal of an access ("Already closed", "Attempted access outside owning thread", "Attempt to write
     * a read-only segment") as the message {@link #requireUsable(String)} and {@link #requireWritable} give,
     * naming this tensor; caught after the fact, so that the accessors cost no check when they succeed. Any other
     * cause is returned unchanged.
     */
    private RuntimeException unusable(RuntimeException e) {
        try {
            requireUsable("tensor");
            if (e instanceof IllegalArgumentException) {
                requireWritable(); // throws only for read-only memory
            }
        } catch (IllegalStateException | WrongThreadException | IllegalArgumentException named) {
            named.initCause(e);
            return named;
        }
        return e;
    }

    /** Refuses a write into read-only memory (a view of a read-only file mapping) before any element is written. */
    private void requireWritable() {
        if (segment.isReadOnly()) {
            throw new IllegalArgumentException(describe("tensor") + ": a read-only segment");
        }
    }

    /** Views whose strides interleave are checked address by address up to this many elements. */
    private static final long ENUMERATED_ELEMENTS = 1 << 20;

    /**
     * True when no two elements of this view share an address. A broadcast view (stride 0 along a dimension of
     * size 2 or more) and views whose strides interleave onto each other do not; every tensor that
     * {@link #allocate} makes, and every view whose strides nest (each at least the extent of the smaller ones,
     * as slices, transposes and padded rows have), does. A view whose strides interleave is checked address by
     * address when it has at most 2^20 elements; a larger one is reported as not distinct, conservatively.
     */
    public boolean hasDistinctAddresses() {
        long n = elementCount();
        if (n <= 1) {
            return true;
        }
        // dimensions of size 2+ by increasing stride: distinct when each stride reaches past the span of the
        // dimensions below it (the usual case, decided without looking at elements)
        Integer[] dims = new Integer[shape.length];
        int m = 0;
        for (int d = 0; d < shape.length; d++) {
            if (shape[d] > 1) {
                dims[m++] = d;
            }
        }
        Arrays.sort(dims, 0, m, (x, y) -> Long.compare(strides[x], strides[y]));
        long span = 1;
        boolean nested = true;
        for (int i = 0; i < m; i++) {
            long st = strides[dims[i]];
            if (st == 0) {
                return false;
            }
            if (st < span) {
                nested = false;
                break;
            }
            // the extent so far: one past the farthest address of the dimensions taken (st · size overstated it,
            // and a nested view past the enumeration bound was reported as not distinct)
            span += st * (shape[dims[i]] - 1);
        }
        if (nested) {
            return true;
        }
        // strides that interleave (e.g. [2, 2] with strides [3, 2]): compare the addresses themselves, within a
        // bound on the heap this takes
        if (n > ENUMERATED_ELEMENTS) {
            return false;
        }
        long[] at = new long[(int) n];
        long[] c = new long[shape.length];
        for (int i = 0; i < at.length; i++) {
            at[i] = indexOf(c);
            advance(c);
        }
        Arrays.sort(at);
        for (int i = 1; i < at.length; i++) {
            if (at[i] == at[i - 1]) {
                return false;
            }
        }
        return true;
    }

    private void requireDistinctAddresses() {
        if (!hasDistinctAddresses()) {
            throw new IllegalArgumentException("cannot copy into tensor " + shapeString() + " with strides "
                    + Arrays.toString(strides) + (elementCount() > ENUMERATED_ELEMENTS && !hasZeroStride()
                    ? ": its strides interleave and it has too many elements to check that no two share an address"
                    : ": it maps several elements to one address (a broadcast view?), so only the last value"
                    + " written to each would remain"));
        }
    }

    private boolean hasZeroStride() {
        for (int d = 0; d < shape.length; d++) {
            if (shape[d] > 1 && strides[d] == 0) {
                return true;
            }
        }
        return false;
    }

    /**
     * Copies {@code values}, in row-major order of this tensor's shape, into the tensor, which must map each
     * element to its own address (see {@link #hasDistinctAddresses}).
     *
     * @throws IllegalArgumentException when the length is not the element count, the memory is read-only, or two
     *                                  elements share an address; {@link IllegalStateException} (arena closed) and
     *                                  {@link WrongThreadException} as for {@link #get}
     */
    public Tensor copyFrom(float[] values) {
        Objects.requireNonNull(values, "values is null");
        requireUsable("tensor");
        if (values.length != elementCount()) {
            throw new IllegalArgumentException(values.length + " values for tensor " + shapeString());
        }
        return copyIn(values, 0);
    }

    /**
     * Copies {@code values[at, at + elementCount())}, in row-major order of this tensor's shape, into the tensor:
     * {@link #copyFrom(float[])} from part of a larger array (a service's reused input buffer), with the same
     * rules. Nothing is allocated for a contiguous tensor.
     *
     * @throws IndexOutOfBoundsException when {@code at} is negative or the array holds fewer than
     *                                   {@code elementCount()} values from {@code at} (nothing is written)
     * @throws IllegalArgumentException  as {@link #copyFrom(float[])}, for the memory
     */
    public Tensor copyFrom(float[] values, int at) {
        Objects.requireNonNull(values, "values is null");
        requireUsable("tensor");
        requireRange(values.length, at, "values");
        return copyIn(values, at);
    }

    /**
     * Copies the elements, in row-major order of this tensor's shape, into {@code dst[at, at + elementCount())}:
     * {@link #toArray()} into the caller's array, so that copying each call's output to the heap allocates nothing
     * (for a contiguous tensor; a strided view takes one small index array). The rest of {@code dst} is untouched.
     *
     * @throws IndexOutOfBoundsException when {@code at} is negative or {@code dst} holds fewer than
     *                                   {@code elementCount()} floats from {@code at} (nothing is written)
     * @throws IllegalStateException     when the arena is closed ({@link WrongThreadException} when it is confined
     *                                   to another thread)
     */
    public void copyTo(float[] dst, int at) {
        Objects.requireNonNull(dst, "dst is null");
        requireUsable("tensor");
        requireRange(dst.length, at, "dst");
        copyOut(dst, at);
    }

    /** The copy of {@link #copyTo} and {@link #toArray} into {@code dst[at, at + elementCount())}, checked. */
    private void copyOut(float[] dst, int at) {
        int n = (int) elementCount();
        if (n == 0) {
            return; // an empty view may sit at any offset (a select next to an empty dimension)
        }
        if (isContiguous()) {
            MemorySegment.copy(segment, FLOAT, offset * Float.BYTES, dst, at, n);
            return;
        }
        long[] c = new long[shape.length];
        for (int i = 0; i < n; i++) {
            dst[at + i] = segment.getAtIndex(FLOAT, indexOf(c));
            advance(c);
        }
    }

    /** Refuses a range of an array of {@code length} from {@code at} that cannot hold this tensor's elements. */
    private void requireRange(int length, int at, String name) {
        long n = elementCount();
        if (at < 0 || at > length || n > length - at) {
            throw new IndexOutOfBoundsException(name + " of " + length + " floats from index " + at
                    + " cannot hold tensor " + shapeString() + " (" + n + " elements)");
        }
    }

    /** copyFrom's copy of {@code values[at, at + elementCount())}, the range checked. */
    private Tensor copyIn(float[] values, int at) {
        int n = (int) elementCount();
        if (n == 0) {
            return this; // an empty view may sit at any offset (a select next to an empty dimension)
        }
        requireWritable();
        if (!isContiguous()) {
            requireDistinctAddresses();
        }
        if (isContiguous()) {
            MemorySegment.copy(values, at, segment, FLOAT, offset * Float.BYTES, n);
            return this;
        }
        long[] c = new long[shape.length];
        for (int i = 0; i < n; i++) {
            segment.setAtIndex(FLOAT, indexOf(c), values[at + i]);
            advance(c);
        }
        return this;
    }

    /**
     * Copies the elements of {@code src}, which must have the same shape, into this tensor. When the two share
     * memory (e.g. {@code t.copyFrom(t.transpose())}), {@code src} is read in full first, as if copied to a
     * temporary array: the result is always {@code src}'s values before the call. This tensor must map each
     * element to its own address (see {@link #hasDistinctAddresses}); {@code src} may be a broadcast view.
     */
    public Tensor copyFrom(Tensor src) {
        Objects.requireNonNull(src, "src is null");
        if (!Arrays.equals(src.shape, shape)) {
            throw new IllegalArgumentException("cannot copy " + src.shapeString() + " into " + shapeString());
        }
        requireUsable("tensor");
        src.requireUsable("source");
        if (elementCount() > 0) {
            requireWritable();
        }
        if (!isContiguous()) {
            requireDistinctAddresses();
        }
        if (overlaps(src)) {
            return copyFrom(src.toArray());
        }
        long n = elementCount();
        long[] c = new long[shape.length];
        for (long i = 0; i < n; i++) {
            segment.setAtIndex(FLOAT, indexOf(c), src.segment.getAtIndex(FLOAT, src.indexOf(c)));
            advance(c);
        }
        return this;
    }

    /**
     * The elements in row-major order of this tensor's shape, as a new array.
     *
     * @throws IllegalStateException when the tensor has more elements than a {@code float[]} holds, or its arena is
     *                               closed ({@link WrongThreadException} when it is confined to another thread)
     */
    public float[] toArray() {
        requireUsable("tensor");
        long n = elementCount();
        if (n > Integer.MAX_VALUE - 8) {
            throw new IllegalStateException("tensor " + shapeString() + " has too many elements for a float[]");
        }
        float[] out = new float[(int) n];
        copyOut(out, 0);
        return out;
    }

    /**
     * Sets every element to {@code value}.
     *
     * @throws IllegalArgumentException for read-only memory of a non-empty tensor; {@link IllegalStateException}
     *                                  (arena closed) and {@link WrongThreadException} as for {@link #get}
     */
    public Tensor fill(float value) {
        requireUsable("tensor");
        long n = elementCount();
        if (n == 0) {
            return this; // an empty view may sit at any offset (a select next to an empty dimension)
        }
        requireWritable();
        if (isContiguous()) {
            if (value == 0f && Float.floatToRawIntBits(value) == 0) {
                segment.asSlice(offset * Float.BYTES, n * Float.BYTES).fill((byte) 0);
            } else {
                for (long i = 0; i < n; i++) {
                    segment.setAtIndex(FLOAT, offset + i, value);
                }
            }
            return this;
        }
        long[] c = new long[shape.length];
        for (long i = 0; i < n; i++) {
            segment.setAtIndex(FLOAT, indexOf(c), value);
            advance(c);
        }
        return this;
    }

    private long indexOf(long[] c) {
        long e = offset;
        for (int i = 0; i < c.length; i++) {
            e += c[i] * strides[i];
        }
        return e;
    }

    private void advance(long[] c) {
        for (int i = c.length - 1; i >= 0; i--) {
            if (++c[i] < shape[i]) {
                return;
            }
            c[i] = 0;
        }
    }

    @Override
    public String toString() {
        return "Tensor" + shapeString() + " strides=" + Arrays.toString(strides) + " offset=" + offset;
    }
}
