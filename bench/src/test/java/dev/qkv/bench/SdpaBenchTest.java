package dev.qkv.bench;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/** {@link SdpaBench}'s shape parameter reaches the tensors it times, in both of its forms. */
class SdpaBenchTest {

    @Test
    void aShapeWithLqAndLkTimesQOfLqRowsAgainstLkKeys() {
        // 1x2x1x5x3: q [1, 2, 1, 3] against k, v [1, 2, 5, 3] (a decode-like call); read as BxHxLxD it would be
        // L = 1, D = 5, and the bench would time another call than OrtBench does at the same shape string
        SdpaBench bench = bench("1x2x1x5x3", false);
        try {
            bench.setup();
            assertArrayEquals(new long[] {1, 2, 1, 3}, bench.sdpa().shape());
        } finally {
            bench.tearDown();
        }
    }

    @Test
    void aShapeWithOneLengthIsStillSelfAttention() {
        SdpaBench bench = bench("1x2x4x8", true);
        try {
            bench.setup();
            assertArrayEquals(new long[] {1, 2, 4, 8}, bench.sdpa().shape());
        } finally {
            bench.tearDown();
        }
    }

    @Test
    void refusesCausalWhereLqDiffersFromLk() {
        SdpaBench bench = bench("1x1x2x3x4", true);
        assertThrows(IllegalArgumentException.class, bench::setup);
    }

    private static SdpaBench bench(String shape, boolean causal) {
        SdpaBench b = new SdpaBench();
        b.shape = shape;
        b.backend = "java";
        b.causal = causal;
        b.threads = 1;
        return b;
    }
}
