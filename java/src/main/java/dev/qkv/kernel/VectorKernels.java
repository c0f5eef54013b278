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

    PackedKernels packed() {
        return new VectorPackedKernels();
    }
}
