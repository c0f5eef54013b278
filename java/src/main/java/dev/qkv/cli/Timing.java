package dev.qkv.cli;

import java.util.Arrays;
import java.util.function.BooleanSupplier;
import java.util.function.LongSupplier;

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
    /**
     * At most this many warm-up calls in all, however fast one call is: {@code [1, 1, 128, 64]} makes ~60000 in
     * the 2 s, but a call under ~2 µs ({@code --shape 1,1,1,1}) reaches the cap within them, and warm-up then
     * ends there, without the windows that wait for a quiet JIT (a million calls have long been compiled).
     */
    static final int MAX_WARMUP = 1_000_000;
    /**
     * After {@link #WARMUP_NANOS}, warm-up goes on in windows of about this long until one passes in which the
     * JIT compiled nothing: on a loaded machine C2 finished the vector kernels at ~2.6 s, after timing had
     * begun, and the Java backend read 10x slow. Call times cannot tell: the calls before C2 are as steady as
     * after it, only slower. A window must also end with no compilation running or queued ({@link Jit#idle}):
     * one that C2 was still working on, starved beside other work, once passed for quiet.
     */
    static final long WINDOW_NANOS = 200_000_000L;
    /** Warm-up ends by this time whatever the compiler does. */
    static final long MAX_WARMUP_NANOS = 10_000_000_000L;

    private Timing() {
    }

    /**
     * Calls {@code task} until both {@link #MIN_WARMUP} calls and {@link #WARMUP_NANOS} have passed, then in
     * windows until one passes without compilation (see {@link #WINDOW_NANOS}); returns the calls.
     */
    static int warmUp(Runnable task) {
        return warmUp(task, System::nanoTime, Jit::compiledMillis, Jit::idle);
    }

    /**
     * {@link #warmUp(Runnable)} on the given clock (ns), total JIT compilation time (ms, or a constant) and test of
     * an idle compiler (nothing running or queued, see {@link Jit#idle}).
     */
    static int warmUp(Runnable task, LongSupplier clock, LongSupplier compiledMillis, BooleanSupplier jitIdle) {
        long start = clock.getAsLong();
        int calls = 0;
        while (calls < MIN_WARMUP || calls < MAX_WARMUP && clock.getAsLong() - start < WARMUP_NANOS) {
            task.run();
            calls++;
        }
        long compiled = compiledMillis.getAsLong();
        while (calls < MAX_WARMUP && clock.getAsLong() - start < MAX_WARMUP_NANOS) {
            long windowStart = clock.getAsLong();
            do {
                task.run();
                calls++;
            } while (calls < MAX_WARMUP && clock.getAsLong() - windowStart < WINDOW_NANOS);
            long now = compiledMillis.getAsLong();
            if (now == compiled && jitIdle.getAsBoolean()) {
                break; // a window without compilation, and none running or queued: the JIT is done with these calls
            }
            compiled = now;
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
