package dev.qkv.io;

import dev.qkv.tensor.Tensor;

import java.util.Objects;

/**
 * An array read from a {@code .npy} file: its values as float32 and the dtype the file stored them in.
 *
 * @param tensor the values, contiguous, in the caller's arena (booleans, and the integers of
 *               {@link Npy#readMask}, become 0 and 1)
 * @param dtype  the element type of the file
 */
public record NpyArray(Tensor tensor, Npy.Dtype dtype) {

    /** Validates that both parts are present. */
    public NpyArray {
        Objects.requireNonNull(tensor, "tensor");
        Objects.requireNonNull(dtype, "dtype");
    }

    /**
     * True when the values are a 0/1 mask rather than numbers: the file held booleans, or integers read by
     * {@link Npy#readMask} (non-zero became 1).
     */
    public boolean isBool() {
        return dtype == Npy.Dtype.BOOL || dtype.isInteger();
    }
}
