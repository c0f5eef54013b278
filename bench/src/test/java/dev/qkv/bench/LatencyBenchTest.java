package dev.qkv.bench;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * {@link LatencyBench} checks the outputs its timed calls wrote, each request thread's own ({@link
 * LatencyBench.Output}), against the scalar reference at the end of the trial: its setup checked only a warm-up
 * call into an output of its own, so a wrong answer of {@code twoCallers} (two threads sharing one
 * {@code Attention} and the pool) or of a call on a fresh virtual thread still made a figure.
 */
class LatencyBenchTest {

    @Test
    void aCallersRightOutputPasses() {
        LatencyBench b = bench();
        b.setup();
        LatencyBench.Output one = new LatencyBench.Output();
        LatencyBench.Output two = new LatencyBench.Output();
        one.setup(b);
        two.setup(b);
        b.oneCaller(one);
        b.twoCallers(two);
        assertDoesNotThrow(b::tearDown);
    }

    @Test
    void aCallersWrongOutputStopsTheTrial() {
        LatencyBench b = bench();
        b.setup();
        LatencyBench.Output right = new LatencyBench.Output();
        LatencyBench.Output wrong = new LatencyBench.Output();
        right.setup(b);
        wrong.setup(b);
        b.twoCallers(right);
        b.twoCallers(wrong);
        // what a race between the two callers could leave: one value of one caller's output off by 0.5
        wrong.out.setAt(wrong.out.offset() + 5, wrong.out.getAt(wrong.out.offset() + 5) + 0.5f);
        assertThrows(IllegalStateException.class, b::tearDown);
    }

    /**
     * A call that fails on the fresh virtual thread fails the benchmark: the exception ended that thread only (the
     * default handler printed it), {@code join} returned, and the time of a thread that threw counted as a call.
     */
    @Test
    void aCallThatThrowsOnTheVirtualThreadIsNotTimedAsACall() {
        LatencyBench b = bench();
        b.setup();
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofShared()) {
            LatencyBench.Output o = new LatencyBench.Output();
            // an output of the wrong shape: sdpa refuses it
            o.out = dev.qkv.tensor.Tensor.allocate(arena, 1, 2, 4, 7);
            assertThrows(IllegalStateException.class, () -> b.freshVirtualThread(o));
        } finally {
            b.tearDown();
        }
    }

    private static LatencyBench bench() {
        LatencyBench b = new LatencyBench();
        b.shape = "1x2x4x8x8";
        b.backend = "java";
        b.threads = 1;
        return b;
    }
}
