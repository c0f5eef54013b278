package dev.qkv.cli;

import org.junit.jupiter.api.Test;

import java.util.function.IntPredicate;
import java.util.function.IntToLongFunction;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The CLI's warm-up on a simulated clock and compiler: each call advances the clock by a cost that depends on
 * the call's index, and the compiler's total time while the JIT is busy with it.
 */
class TimingTest {

    /** A clock and a compilation counter that only the task moves. */
    private static final class Simulated {
        long now;
        long compiled;
        int calls;

        int warmUp(IntToLongFunction costNanos, IntPredicate compiling) {
            return warmUp(costNanos, compiling, i -> false);
        }

        /**
         * {@code compiling}: a compilation ends during call i (the total time moves); {@code running}: one is
         * still running or queued when call i is next.
         */
        int warmUp(IntToLongFunction costNanos, IntPredicate compiling, IntPredicate running) {
            int n = Timing.warmUp(() -> {
                now += costNanos.applyAsLong(calls);
                compiled += compiling.test(calls) ? 1 : 0;
                calls++;
            }, () -> now, () -> compiled, () -> !running.test(calls));
            assertEquals(calls, n, "the count returned is the calls made");
            return n;
        }
    }

    /** Nothing compiling: the 2 s minimum, then one window of ~200 ms that shows it. */
    @Test
    void withTheJitIdleWarmUpEndsAfterTheMinimumAndOneWindow() {
        assertEquals(2000 + 200, new Simulated().warmUp(i -> 1_000_000L, i -> false));
    }

    /**
     * The JIT busy until 3 s in (calls of 10 ms, then 1 ms once compiled; as steady before as after, so call
     * times alone could not tell): warm-up runs past the minimum until a window passes without compilation.
     */
    @Test
    void aLateCompilationIsWaitedFor() {
        int n = new Simulated().warmUp(i -> i < 300 ? 10_000_000L : 1_000_000L, i -> i < 300);
        // 200 slow calls in the first 2 s, 100 more in windows of 20, then one window of 200 fast calls
        assertEquals(300 + 200, n);
    }

    /**
     * One long compilation running until call 300, during which none ends (C2 starved beside other work): the
     * total compilation time stands still, but the queue is not empty, so warm-up waits. With the total time alone
     * it stopped after the minimum and one window (220 calls), the kernels not yet compiled.
     */
    @Test
    void aCompilationStillRunningIsWaitedFor() {
        int n = new Simulated().warmUp(i -> i < 300 ? 10_000_000L : 1_000_000L, i -> false, i -> i < 300);
        // 200 slow calls in the first 2 s, then windows of 20 slow calls until the compilation is done at 300
        assertEquals(300, n);
    }

    /** A compiler that never settles: warm-up stops by its bound. */
    @Test
    void warmUpEndsByItsBound() {
        Simulated s = new Simulated();
        s.warmUp(i -> 1_000_000L, i -> true);
        assertTrue(s.now >= Timing.MAX_WARMUP_NANOS && s.now <= Timing.MAX_WARMUP_NANOS + Timing.WINDOW_NANOS,
                "warm-up took " + s.now / 1e9 + " s");
    }

    /** A call slower than a window: the minimum of two calls, then windows of one call. */
    @Test
    void slowCallsMakeWindowsOfOneCall() {
        assertEquals(Timing.MIN_WARMUP + 1, new Simulated().warmUp(i -> 3_000_000_000L, i -> false));
        // compiling during the first three calls: windows until a call passes without
        assertEquals(4, new Simulated().warmUp(i -> 3_000_000_000L, i -> i < 3));
    }
}
