package dev.qkv.mha;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * The keys and values of one sequence seen so far, for incremental decoding: {@code K} and {@code V}
 * {@code [Hkv, capacity, Dh]} off-heap, appended in place by {@link MultiHeadAttention#decode}. A cache belongs
 * to one sequence and one thread at a time; {@link #reset} empties it for the next sequence.
 */
public final class KvCache {
    private final int kvHeads;
    private final int capacity;
    private final int headDim;
    private final MemorySegment k;
    private final MemorySegment v;
    private int length;

    private KvCache(int kvHeads, int capacity, int headDim, MemorySegment k, MemorySegment v) {
        this.kvHeads = kvHeads;
        this.capacity = capacity;
        this.headDim = headDim;
        this.k = k;
        this.v = v;
    }

    /** An empty cache for {@code capacity} positions of {@code kvHeads} heads of {@code headDim}, from {@code arena}. */
    public static KvCache allocate(Arena arena, int kvHeads, int capacity, int headDim) {
        Objects.requireNonNull(arena, "arena");
        if (kvHeads <= 0 || capacity <= 0 || headDim <= 0) {
            throw new IllegalArgumentException("KV cache [" + kvHeads + ", " + capacity + ", " + headDim
                    + "]: every dimension must be positive");
        }
        long bytes = Math.multiplyExact(Math.multiplyExact((long) kvHeads * capacity, headDim), (long) Float.BYTES);
        return new KvCache(kvHeads, capacity, headDim, arena.allocate(bytes, Tensor.ALIGNMENT),
                arena.allocate(bytes, Tensor.ALIGNMENT));
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

    /** Forgets every cached position (the memory is reused, not cleared). */
    public void reset() {
        length = 0;
    }

    /** The cached keys as a view {@code [1, Hkv, length, Dh]}. */
    public Tensor keys() {
        return view(k, length);
    }

    /** The cached values as a view {@code [1, Hkv, length, Dh]}. */
    public Tensor values() {
        return view(v, length);
    }

    /** {@code [1, Hkv, n, Dh]} over the first {@code n} positions: heads lie {@code capacity·Dh} apart. */
    Tensor view(MemorySegment s, int n) {
        return Tensor.view(s, 0, new long[] {1, kvHeads, n, headDim},
                new long[] {(long) kvHeads * capacity * headDim, (long) capacity * headDim, headDim, 1});
    }

    MemorySegment k() {
        return k;
    }

    MemorySegment v() {
        return v;
    }

    void advance(int n) {
        length += n;
    }

    /** A one-line description for messages. */
    String describe() {
        return "KV cache [" + kvHeads + ", " + capacity + ", " + headDim + "] holding " + length;
    }
}
