package dev.qkv.kernel;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorShuffle;
import jdk.incubator.vector.VectorSpecies;

/**
 * A sum of the lanes of a vector in one fixed order, the same in every JIT tier.
 *
 * <p>{@code reduceLanes(ADD)} on floats leaves the order of the additions to the implementation, and the
 * interpreter's and C2's orders differ (measured: 1273 of 2000 random vectors summed differently before and
 * after compilation). The same call then gave different last bits early and late in a JVM's life, so results
 * were not reproducible call to call. Here the lanes are folded by rotations of L/2, L/4, ..., 1 lanes: every
 * step is an element-wise IEEE addition, identical in every tier.
 */
final class Lanes {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;
    private static final int L = SP.length();
    /**
     * Rotations by 8, 4, 2 and 1 lanes (null where the vector is not wider): the folds of {@link #sum} and of
     * {@code VectorRowKernels}' row max, which writes its fold out in place (a helper taking vectors boxed them).
     */
    static final VectorShuffle<Float> ROT8 = L > 8 ? VectorShuffle.iota(SP, 8, 1, true) : null;
    static final VectorShuffle<Float> ROT4 = L > 4 ? VectorShuffle.iota(SP, 4, 1, true) : null;
    static final VectorShuffle<Float> ROT2 = L > 2 ? VectorShuffle.iota(SP, 2, 1, true) : null;
    static final VectorShuffle<Float> ROT1 = L > 1 ? VectorShuffle.iota(SP, 1, 1, true) : null;

    private Lanes() {
    }

    /** The sum of the lanes of {@code v} (a vector of {@code SPECIES_PREFERRED}) in a fixed tree order. */
    static float sum(FloatVector v) {
        if (L > 16) {
            float s = 0f;
            for (int i = 0; i < L; i++) {
                s += v.lane(i);
            }
            return s;
        }
        FloatVector t = v;
        if (L > 8) {
            t = t.add(t.rearrange(ROT8));
        }
        if (L > 4) {
            t = t.add(t.rearrange(ROT4));
        }
        if (L > 2) {
            t = t.add(t.rearrange(ROT2));
        }
        if (L > 1) {
            t = t.add(t.rearrange(ROT1));
        }
        return t.lane(0);
    }
}
