package dev.qkv.mha;

import dev.qkv.attention.Workspace;

import java.lang.foreign.MemorySegment;

/**
 * Scratch memory for {@link MultiHeadAttention} calls up to a batch size and sequence lengths: the projection
 * outputs (heads are views into them), the concatenated head outputs, and the attention kernel's tiles.
 * A workspace serves one call at a time; give each thread its own. Made by
 * {@link MultiHeadAttention#newWorkspace}.
 */
public final class MhaWorkspace {
    private final MemorySegment floats;
    private final Workspace attention;

    MhaWorkspace(MemorySegment floats, Workspace attention) {
        this.floats = floats;
        this.attention = attention;
    }

    MemorySegment floats() {
        return floats;
    }

    Workspace attention() {
        return attention;
    }

    /** Total bytes held. */
    public long byteSize() {
        return floats.byteSize() + attention.byteSize();
    }
}
