package dev.qkv.cli;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.SplittableRandom;

/** Seeded random tensors for the demo and {@code bench}. */
final class Inputs {
    private Inputs() {
    }

    /** A contiguous tensor of {@code shape} filled with uniform values in [-1, 1) drawn from {@code random}. */
    static Tensor uniform(Arena arena, SplittableRandom random, long... shape) {
        Tensor t = Tensor.allocate(arena, shape);
        long n = t.elementCount();
        for (long i = 0; i < n; i++) {
            t.setAt(i, (float) (random.nextDouble() * 2 - 1));
        }
        return t;
    }

    /** The largest |a - b| over two tensors of the same shape, read in row-major order; NaN if any pair differs by NaN. */
    static double maxAbsDiff(Tensor a, Tensor b) {
        float[] x = a.toArray();
        float[] y = b.toArray();
        double max = 0;
        for (int i = 0; i < x.length; i++) {
            double d = Math.abs((double) x[i] - y[i]);
            if (Double.isNaN(d)) {
                return d;
            }
            max = Math.max(max, d);
        }
        return max;
    }
}
