package dev.qkv.reliability;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.Random;

/**
 * Seeds, iteration counts and random tensors shared by the reliability tests.
 *
 * <p>Every test draws from a {@link Random} seeded by {@link #seed}: {@code -Dqkv.fuzz.seed=N} replays one run,
 * and {@code -Dqkv.fuzz.iterations=N} replaces each test's default case count (the {@code fuzz} make target
 * raises it). Failures print the seed and the case, so a report is enough to reproduce them.
 */
final class Fuzz {
    private Fuzz() {
    }

    /** The seed of one test: the system property when set, else a fixed per-test value so CI runs repeat. */
    static long seed(String test) {
        Long explicit = Long.getLong("qkv.fuzz.seed");
        return explicit != null ? explicit : test.hashCode() * 0x9E3779B97F4A7C15L;
    }

    /** The number of cases: {@code -Dqkv.fuzz.iterations} when set, else {@code quick}. */
    static int iterations(int quick) {
        return Integer.getInteger("qkv.fuzz.iterations", quick);
    }

    /** One of the given values. */
    static int pick(Random r, int... values) {
        return values[r.nextInt(values.length)];
    }

    /** Sizes that hit loop tails of blocked kernels (and the empty case, rarely). */
    static int tailSize(Random r) {
        return r.nextInt(40) == 0 ? 0 : pick(r, 1, 2, 3, 7, 16, 17, 31, 63, 64, 65);
    }

    /** Uniform values in [-1, 1). */
    static float[] uniform(Random r, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = r.nextFloat() * 2 - 1;
        }
        return x;
    }

    /** A contiguous tensor of uniform values in [-1, 1). */
    static Tensor random(Arena arena, Random r, long... shape) {
        Tensor t = Tensor.allocate(arena, shape);
        return t.copyFrom(uniform(r, (int) t.elementCount()));
    }

    /** Unit roundoff of float32. */
    static final double EPS = Math.ulp(1f) / 2;
}
