package dev.qkv.reliability;

import dev.qkv.mha.MhaWeights;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.Random;

/** Random multi-head attention weights and inputs for the reliability tests of the layer and its KV cache. */
final class MhaLayers {
    private MhaLayers() {
    }

    /** Uniform values in [-scale, scale). */
    static Tensor rand(Arena a, Random r, float scale, long... shape) {
        Tensor t = Tensor.allocate(a, shape);
        float[] x = Fuzz.uniform(r, (int) t.elementCount());
        for (int i = 0; i < x.length; i++) {
            x[i] *= scale;
        }
        return t.copyFrom(x);
    }

    /** Weights of {@code E = h·dh}, {@code hkv} kv heads, scaled by 1/√E so activations stay near 1. */
    static MhaWeights weights(Arena a, Random r, int h, int hkv, int dh, boolean bias, boolean packed) {
        int e = h * dh;
        int kvd = hkv * dh;
        float s = (float) (1 / Math.sqrt(e));
        Tensor wo = rand(a, r, s, e, e);
        Tensor bo = bias ? rand(a, r, 0.5f, e) : null;
        if (packed) {
            return MhaWeights.packed(h, rand(a, r, s, e + 2L * kvd, e), bias ? rand(a, r, 0.5f, e + 2L * kvd) : null,
                    wo, bo);
        }
        return MhaWeights.of(h, rand(a, r, s, e, e), bias ? rand(a, r, 0.5f, e) : null,
                rand(a, r, s, kvd, e), bias ? rand(a, r, 0.5f, kvd) : null,
                rand(a, r, s, kvd, e), bias ? rand(a, r, 0.5f, kvd) : null, wo, bo);
    }

    /** Float sums over E (projections) and Lkv (attention): the bound grows with both. */
    static double atol(long e, long lkv) {
        return 4 * Fuzz.EPS * (4 * e + lkv + 16);
    }

    /** Relative part of the bound. */
    static final double RTOL = 64 * Fuzz.EPS;
}
