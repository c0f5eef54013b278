package dev.qkv.cli;

import dev.qkv.io.NpyArray;
import dev.qkv.io.PhysicalMemory;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;

/** Seeded random tensors for the demo and {@code bench}; the checks of the tensors the commands read. */
final class Inputs {
    private Inputs() {
    }

    /**
     * Refuses, before anything is allocated, {@code bytes} of tensors that this machine's physical memory cannot
     * hold. Linux lets such an off-heap allocation succeed (it overcommits) and then kills the JVM while the
     * tensors are filled; a size the shapes make absurd is the user's mistake, to be said in one line.
     */
    static void requireFits(String what, long bytes) throws UsageException {
        long physical = PhysicalMemory.bytes();
        if (bytes > physical) {
            throw new UsageException(String.format(java.util.Locale.ROOT, "%s needs %.1f GiB of memory; this machine"
                    + " has %.1f GiB", what, bytes / 1073741824.0, physical / 1073741824.0));
        }
    }

    /**
     * Refuses an output that is one of the inputs, however it is spelt ({@code ./q.npy}, a symbolic link, a hard
     * link): the atomic write would replace that input with the result. {@code inputs} alternates flag names and
     * paths ({@code "--q", qPath, ...}); a null path (a flag not given) is skipped, and a path that cannot be compared
     * (one that does not exist yet) is left to the reader or writer to report.
     */
    static void requireOutputIsNoInput(String command, String outFlag, Path out, Object... inputs)
            throws UsageException {
        if (!Files.exists(out)) {
            return;
        }
        for (int i = 0; i + 1 < inputs.length; i += 2) {
            if (inputs[i + 1] instanceof Path in) {
                boolean same;
                try {
                    same = Files.isSameFile(out, in);
                } catch (IOException | SecurityException e) {
                    continue;
                }
                if (same) {
                    throw new UsageException(command + ": " + outFlag + " '" + out + "' is the input " + inputs[i]
                            + " '" + in + "': writing it would replace that input; give the output another name");
                }
            }
        }
    }

    /**
     * The float tensor of an input file, refusing a bool one (a mask's dtype, where values are expected) with the
     * file, the tensor's name and its shape: {@code q.npy: q [1, 1, 1, 8] has dtype '|b1' (bool); ...}.
     */
    static Tensor floats(String name, NpyArray a, Path file) throws UsageException {
        if (a.isBool()) {
            throw new UsageException(file + ": " + a.tensor().describe(name) + " has dtype '|b1' (bool); expected"
                    + " '<f4' or '<f8'");
        }
        return a.tensor();
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
