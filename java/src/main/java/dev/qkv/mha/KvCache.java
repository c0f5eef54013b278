package dev.qkv.mha;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * The keys and values of one sequence seen so far, for incremental decoding: {@code K} and {@code V}
 * {@code [Hkv, capacity, Dh]} off-heap, appended in place by {@link MultiHeadAttention#decode}. A cache belongs
 * to one sequence and one thread at a time; {@link #reset} empties it for the next sequence. A decode step that
 * finds the cache in use by another step throws {@link IllegalStateException}: both would append at the same
 * positions; so do {@link #reset} and {@link #truncate} during a step, and {@link #keys} and {@link #values}
 * (they fill the table of views the step reads).
 *
 * <p>Subnormal keys and values (non-zero, below {@link Float#MIN_NORMAL} in magnitude) are stored as zeros of
 * their sign, as the processor's flush-to-zero mode would store them; -0.0 stays -0.0. A
 * product with a subnormal operand takes a microcode assist on x86, and the JVM cannot set the flush-to-zero
 * mode: a cache holding subnormal values made every later decode step orders of magnitude slower. Flushing
 * changes a score or an output by less than {@code 2^-126} times the other factor, far below float rounding
 * of any normal result; the blocked attention paths flush their packed copies too. NaN and infinities
 * are kept.
 */
public final class KvCache {
    private final int kvHeads;
    private final int capacity;
    private final int headDim;
    private final MemorySegment k;
    private final MemorySegment v;
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /**
     * Views {@code [1, Hkv, n, Dh]} of the first {@code n} positions, made the first time the cache reaches
     * length {@code n} and kept: a decode step attends through them, so a cache reused after {@link #reset} or
     * {@link #truncate} decodes without creating objects (two small views per length reached, at most
     * {@code 2·capacity}, against {@code 2·Hkv·Dh·4} off-heap bytes per position).
     */
    private Tensor[] keyViews = new Tensor[0];
    private Tensor[] valueViews = new Tensor[0];
    private int length;
    /**
     * Set while a decode step uses the cache: a second step that finds it taken is refused (see
     * {@link MultiHeadAttention#decode}), rather than read the same length and append at the same positions.
     */
    private final AtomicBoolean inUse = new AtomicBoolean();

    /** All of k's and v's memory as flat views, for overlap checks that must not allocate. */
    private final Tensor allKeys;
    private final Tensor allValues;

    private KvCache(int kvHeads, int capacity, int headDim, MemorySegment k, MemorySegment v) {
        this.kvHeads = kvHeads;
        this.capacity = capacity;
        this.headDim = headDim;
        this.k = k;
        this.v = v;
        this.allKeys = Tensor.wrap(k, k.byteSize() / Float.BYTES);
        this.allValues = Tensor.wrap(v, v.byteSize() / Float.BYTES);
    }

    /** False once the arena of the keys or of the values is closed (names the cache in a call's error). */
    boolean isAlive() {
        return k.scope().isAlive() && v.scope().isAlive();
    }

    /** True when {@code t} shares memory with the cached keys or values. */
    boolean overlaps(Tensor t) {
        return t.overlaps(allKeys) || t.overlaps(allValues);
    }

    /** All of the keys' memory as one flat tensor (for overlap checks that must not allocate). */
    Tensor allKeys() {
        return allKeys;
    }

    /** All of the values' memory as one flat tensor. */
    Tensor allValues() {
        return allValues;
    }

    /**
     * An empty cache for {@code capacity} positions of {@code kvHeads} heads of {@code headDim}, from {@code arena}.
     *
     * @throws IllegalArgumentException naming the shape ({@code KV cache [Hkv, capacity, Dh]}) when a size is not
     *                                  positive or its bytes overflow a long, or when the arena (one of one's own)
     *                                  gives memory that is not writable, off-heap and of that size, or the same
     *                                  memory for K and V
     */
    public static KvCache allocate(Arena arena, int kvHeads, int capacity, int headDim) {
        Objects.requireNonNull(arena, "arena is null");
        if (kvHeads <= 0 || capacity <= 0 || headDim <= 0) {
            throw new IllegalArgumentException("KV cache [" + kvHeads + ", " + capacity + ", " + headDim
                    + "]: every dimension must be positive");
        }
        long bytes;
        try {
            bytes = Math.multiplyExact(Math.multiplyExact((long) kvHeads * capacity, headDim), (long) Float.BYTES);
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("KV cache [" + kvHeads + ", " + capacity + ", " + headDim
                    + "]: more bytes than a long holds");
        }
        MemorySegment k = checked(arena.allocate(bytes, Tensor.ALIGNMENT), kvHeads, capacity, headDim, bytes);
        MemorySegment v = checked(arena.allocate(bytes, Tensor.ALIGNMENT), kvHeads, capacity, headDim, bytes);
        long floats = bytes / Float.BYTES;
        if (Tensor.overlaps(k, 0, floats, v, 0, floats)) {
            // an arena of one's own that hands out the same memory twice: each step's values overwrote its keys,
            // and decoding went on with wrong outputs and no error
            throw new IllegalArgumentException("KV cache [" + kvHeads + ", " + capacity + ", " + headDim + "]: the"
                    + " arena gave K and V that share memory (" + k + ", " + v + "); they need memory of their own");
        }
        return new KvCache(kvHeads, capacity, headDim, k, v);
    }

    /**
     * An arena of one's own may give less than asked: decode steps store rows into the cache in Java and hand it to
     * OpenBLAS, so it must be writable off-heap memory of the whole size, aligned (as {@code Workspace.allocate}
     * requires of its memory); else a step stopped half way with the JDK's own exceptions.
     */
    private static MemorySegment checked(MemorySegment s, int kvHeads, int capacity, int headDim, long bytes) {
        if (!s.isNative() || s.isReadOnly() || s.byteSize() < bytes || s.address() % Tensor.ALIGNMENT != 0) {
            throw new IllegalArgumentException("KV cache [" + kvHeads + ", " + capacity + ", " + headDim + "] of "
                    + bytes + " bytes per K and V: the arena gave " + s + "; a cache needs writable off-heap memory"
                    + " of that size, " + Tensor.ALIGNMENT + "-byte aligned");
        }
        return s;
    }

    /** Number of key/value heads {@code Hkv}. */
    public int kvHeads() {
        return kvHeads;
    }

    /** Positions the cache can hold. */
    public int capacity() {
        return capacity;
    }

    /** Head dimension {@code Dh}. */
    public int headDim() {
        return headDim;
    }

    /** Positions cached so far. */
    public int length() {
        return length;
    }

    /**
     * Forgets every cached position (the memory is reused, not cleared).
     *
     * @throws IllegalStateException when a decode step is using the cache (it would store its rows after the old
     *                               length and then count them from the new one)
     */
    public void reset() {
        hold("reset");
        length = 0;
        release();
    }

    /**
     * Keeps the first {@code length} positions and forgets the rest (the memory is reused, not cleared): e.g.
     * to drop rejected speculative tokens, or to rerun a step from the same prefix.
     *
     * @throws IllegalArgumentException when {@code length} is negative or more than the positions cached
     * @throws IllegalStateException    when a decode step is using the cache (as {@link #reset})
     */
    public void truncate(int length) {
        hold("truncate");
        try {
            if (length < 0 || length > this.length) {
                throw new IllegalArgumentException(describe() + ": cannot truncate to " + length
                        + " positions (must be 0.." + this.length + ")");
            }
            this.length = length;
        } finally {
            release();
        }
    }

    /**
     * Takes the cache for {@code what}, which changes its length: a decode step reads the length, stores after it
     * and advances it, so a change in between would count rows it never stored where it stored none.
     */
    private void hold(String what) {
        if (!acquire()) {
            throw new IllegalStateException(describe() + ": cannot " + what + " while in use by another call (a"
                    + " decode step)");
        }
    }

    /**
     * The cached keys as a view {@code [1, Hkv, length, Dh]}: key {@code (g, t)} is row {@code t} of
     * {@code x·W_Kᵀ + b_K}, columns {@code g·Dh ..}, subnormals as zeros (see the class comment). A view of the
     * cache's memory, not a copy: it keeps the length it was taken at, and later steps write through it, so after
     * {@link #truncate} or {@link #reset} its positions past the new length show forgotten rows, then the rows
     * later steps store there. Valid while the cache's arena is open.
     *
     * @throws IllegalStateException when a decode step is using the cache (the step looks up its views in the
     *                               same tables, which this call may grow)
     */
    public Tensor keys() {
        hold("read its keys");
        try {
            return keysAt(length);
        } finally {
            release();
        }
    }

    /**
     * The cached values as a view {@code [1, Hkv, length, Dh]} ({@code x·W_Vᵀ + b_V}), as {@link #keys}.
     *
     * @throws IllegalStateException when a decode step is using the cache (as {@link #keys})
     */
    public Tensor values() {
        hold("read its values");
        try {
            return valuesAt(length);
        } finally {
            release();
        }
    }

    /** Keys of the first {@code n} positions, {@code n <= capacity}. */
    Tensor keysAt(int n) {
        growViews(n);
        Tensor t = keyViews[n];
        if (t == null) {
            t = view(k, n);
            keyViews[n] = t;
        }
        return t;
    }

    /** Values of the first {@code n} positions, {@code n <= capacity}. */
    Tensor valuesAt(int n) {
        growViews(n);
        Tensor t = valueViews[n];
        if (t == null) {
            t = view(v, n);
            valueViews[n] = t;
        }
        return t;
    }

    /** Room in the view tables for length {@code n}: grown by doubling, so tables fit the lengths reached. */
    private void growViews(int n) {
        if (n >= keyViews.length) {
            int size = (int) Math.min((long) capacity + 1, Math.max(16L, 2L * n));
            keyViews = java.util.Arrays.copyOf(keyViews, size);
            valueViews = java.util.Arrays.copyOf(valueViews, size);
        }
    }

    /** {@code [1, Hkv, n, Dh]} over the first {@code n} positions: heads lie {@code capacity·Dh} apart. */
    private Tensor view(MemorySegment s, int n) {
        return Tensor.view(s, 0, new long[] {1, kvHeads, n, headDim},
                new long[] {(long) kvHeads * capacity * headDim, (long) capacity * headDim, headDim, 1});
    }

    MemorySegment k() {
        return k;
    }

    MemorySegment v() {
        return v;
    }

    /** Takes the cache for a decode step; false when another step holds it. */
    boolean acquire() {
        return inUse.compareAndSet(false, true);
    }

    /** Gives the cache back after a decode step. */
    void release() {
        inUse.set(false);
    }

    void advance(int n) {
        length += n;
    }

    /**
     * Stores {@code n} floats of {@code src} from float index {@code from} at position {@code pos} of kv head
     * {@code g} of the keys ({@code keys}) or the values, subnormals as zeros (see the class comment).
     */
    void store(boolean keys, int g, int pos, MemorySegment src, long from, int n) {
        MemorySegment dst = keys ? k : v;
        long to = ((long) g * capacity + pos) * headDim;
        for (int i = 0; i < n; i++) {
            float x = src.getAtIndex(F, from + i);
            dst.setAtIndex(F, to + i, Math.abs(x) < Float.MIN_NORMAL ? Math.copySign(0f, x) : x);
        }
    }

    /** A one-line description for messages. */
    String describe() {
        return "KV cache [" + kvHeads + ", " + capacity + ", " + headDim + "] holding " + length;
    }
}
