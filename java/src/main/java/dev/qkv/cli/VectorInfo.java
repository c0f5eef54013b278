package dev.qkv.cli;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

/** The Vector API's view of the CPU; only loaded when {@code jdk.incubator.vector} is in the boot layer. */
final class VectorInfo {
    private VectorInfo() {
    }

    static String describe() {
        VectorSpecies<Float> s = FloatVector.SPECIES_PREFERRED;
        return "FloatVector.SPECIES_PREFERRED " + s.vectorBitSize() + " bits (" + s.length() + " floats)";
    }
}
