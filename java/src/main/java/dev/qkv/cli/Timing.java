package dev.qkv.cli;

import java.util.Arrays;

/** Timing helpers shared by {@code bench} and the demo: warm-up, then the median of timed runs. */
final class Timing {
    /**
     * Warm-up lasts at least this long, so that C2 has compiled the vector kernels before timing starts. With
     * 300 ms, `bench --shape 1,1,128,64` read 5.0 ms (24 warm-up calls, the kernels still in the lower tiers)
     * where JMH reads 0.033, and the demo read its Java and native calls 2-7x slow; JMH's runs are steady after
     * about 2 seconds of calls.
     */
    static final long WARMUP_NANOS = 2_000_000_000L;
    /** At least this many warm-up calls, however slow one call is. */
    static final int MIN_WARMUP = 2;
    /** At most this many warm-up calls, however fast one call is (a tiny call makes ~60000 in the 2 s). */
    static final int MAX_WARMUP = 1_000_000;

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
