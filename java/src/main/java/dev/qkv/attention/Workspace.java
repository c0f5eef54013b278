package dev.qkv.attention;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Scratch memory for attention calls: score tiles and packed copies of operands that lack a unit stride.
 * A workspace is used by one call at a time; give each thread its own. A call that finds it in use by another
 * throws {@link IllegalStateException} rather than share it (both results would be wrong), and a call whose
 * tensors share memory with it is refused before it starts.
 */
public final class Workspace {
    private final MemorySegment segment;
    /** All of the workspace as one flat view, for overlap checks that must not allocate. */
    private final Tensor whole;
    /** Set while a call uses the workspace. */
    private final AtomicBoolean inUse = new AtomicBoolean();

    private Workspace(MemorySegment segment) {
        this.segment = segment;
        this.whole = Tensor.wrap(segment, segment.byteSize() / Float.BYTES);
    }

    /**
     * A workspace of {@code bytes} bytes (at least 64: {@link #byteSize} says how many), 64-byte aligned, from the
     * caller's arena, which must give writable off-heap memory of that size (an {@link Arena} of one's own may not).
     */
    public static Workspace allocate(Arena arena, long bytes) {
        Objects.requireNonNull(arena, "arena is null");
        if (bytes < 0) {
            throw new IllegalArgumentException("workspace size must be >= 0, got " + bytes);
        }
        long size = Math.max(bytes, 64);
        MemorySegment s = arena.allocate(size, 64);
        if (!s.isNative() || s.isReadOnly() || s.byteSize() < size || s.address() % 64 != 0) {
            throw new IllegalArgumentException("workspace of " + size + " bytes: the arena gave " + s
                    + "; a workspace needs writable off-heap memory of that size, 64-byte aligned");
        }
        return new Workspace(s);
    }

    /** Size in bytes. */
    public long byteSize() {
        return segment.byteSize();
    }

    MemorySegment segment() {
        return segment;
    }

    /** Refuses a workspace whose arena is closed, or confined to another thread. */
    void requireAlive() {
        Tensor.requireUsable(segment, "workspace");
    }

    /** The whole workspace as a flat tensor (for overlap checks). */
    Tensor whole() {
        return whole;
    }

    /**
     * Whether {@code t} shares memory with this workspace (without allocating): for layers that hand the workspace
     * to {@link Attention} and must refuse their own tensors inside it first, since the call writes all of it.
     */
    public boolean overlaps(Tensor t) {
        Objects.requireNonNull(t, "t is null");
        return t.overlaps(whole);
    }

    /** Takes the workspace for a call; false when another call holds it. */
    boolean acquire() {
        return inUse.compareAndSet(false, true);
    }

    /** Gives the workspace back after a call. */
    void release() {
        inUse.set(false);
    }
}
