package dev.qkv.kernel;

import jdk.incubator.vector.FloatVector;

/**
 * The entry point of the Vector API kernels; loaded by name from {@link Vectorization} only when the module
 * {@code jdk.incubator.vector} is present, so no other class links against it.
 */
final class VectorKernels {

    int lanes() {
        return FloatVector.SPECIES_PREFERRED.length();
    }

    RowKernels rows() {
        return new VectorRowKernels();
    }

    /**
     * The product kernels, with 6 × 2-vector register blocks when {@code smallBlocks} is true, 6 × 4 when false,
     * and when null the blocks that fit this machine's vector registers ({@link VectorPackedKernels#sixteenRegisters}).
     */
    PackedKernels packed(Boolean smallBlocks) {
        return new VectorPackedKernels(smallBlocks != null ? smallBlocks : VectorPackedKernels.sixteenRegisters());
    }
}
