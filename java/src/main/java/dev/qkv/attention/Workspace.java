package dev.qkv.attention;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * Scratch memory for attention calls: score tiles and packed copies of operands that lack a unit stride.
 * A workspace is used by one call at a time; give each thread its own.
 */
public final class Workspace {
    private final MemorySegment segment;

    private Workspace(MemorySegment segment) {
        this.segment = segment;
    }

    /** A workspace of {@code bytes} bytes, 64-byte aligned, from the caller's arena. */
    public static Workspace allocate(Arena arena, long bytes) {
        Objects.requireNonNull(arena, "arena");
        if (bytes < 0) {
            throw new IllegalArgumentException("workspace size must be >= 0, got " + bytes);
        }
        return new Workspace(arena.allocate(Math.max(bytes, 64), 64));
    }

    /** Size in bytes. */
    public long byteSize() {
        return segment.byteSize();
    }

    MemorySegment segment() {
        return segment;
    }
}
