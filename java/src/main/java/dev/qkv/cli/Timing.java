package dev.qkv.cli;

import java.util.Arrays;

/** Timing helpers shared by {@code bench} and the demo: warm-up, then the median of timed runs. */
final class Timing {
    /** Warm-up lasts at least this long, so that the JIT has compiled the Java loops before timing starts. */
    static final long WARMUP_NANOS = 300_000_000L;
    /** At least this many warm-up calls, however slow one call is. */
    static final int MIN_WARMUP = 2;
    /** At most this many warm-up calls, however fast one call is. */
    static final int MAX_WARMUP = 1000;

    private Timing() {
    }

    /** Calls {@code task} until both {@link #MIN_WARMUP} calls and {@link #WARMUP_NANOS} have passed; returns the calls. */
    static int warmUp(Runnable task) {
        long start = System.nanoTime();
        int calls = 0;
        while (calls < MIN_WARMUP || calls < MAX_WARMUP && System.nanoTime() - start < WARMUP_NANOS) {
            task.run();
            calls++;
        }
        return calls;
    }

    /** Runs {@code task} {@code iters} times and returns the median wall time of one call in milliseconds. */
    static double medianMillis(Runnable task, int iters) {
        double[] ms = new double[iters];
        for (int i = 0; i < iters; i++) {
            long t0 = System.nanoTime();
            task.run();
            ms[i] = (System.nanoTime() - t0) / 1e6;
        }
        return median(ms);
    }

    /** The median of {@code xs} (the mean of the two middle values for an even count). */
    static double median(double[] xs) {
        double[] s = xs.clone();
        Arrays.sort(s);
        int n = s.length;
        return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    }

    /** The dense attention FLOP count {@code 4·B·H·Lq·Lk·D} (two products of 2·Lq·Lk·D each), causal or not. */
    static double denseFlops(long b, long h, long lq, long lk, long d) {
        return 4.0 * b * h * lq * lk * d;
    }

    /** GFLOP/s of {@code flops} done in {@code millis}. */
    static double gflops(double flops, double millis) {
        return flops / (millis * 1e6);
    }
}
