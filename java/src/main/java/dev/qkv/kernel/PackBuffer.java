package dev.qkv.kernel;

import java.lang.foreign.MemorySegment;

/**
 * A growable {@code float[]} that the packed kernels write panels into, with the view they ask for its place in
 * memory (see {@link HeapAlignment}). The view is made once per array, so that asking allocates nothing. One
 * thread uses a buffer at a time.
 */
public final class PackBuffer {
    private float[] array = new float[0];
    private MemorySegment view = MemorySegment.ofArray(array);

    /** Grows the buffer to at least {@code floats} floats; its contents are then undefined. */
    public void ensure(int floats) {
        if (array.length < floats) {
            array = new float[floats];
            view = MemorySegment.ofArray(array);
        }
    }

    /** The array itself (replaced by {@link #ensure} when it grows). */
    public float[] array() {
        return array;
    }

    /** The index of the first element that starts a 64-byte cache line now, 0 when that cannot be told. */
    int alignedStart() {
        return HeapAlignment.floatOffset(view);
    }
}
