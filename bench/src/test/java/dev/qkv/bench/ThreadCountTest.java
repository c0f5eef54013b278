package dev.qkv.bench;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A benchmark's {@code threads} is the count its figure is labelled with: qkv caps its workers at the cores
 * ({@code Attention.Builder.threads}), so a count above them would run fewer threads than the label says (and
 * the decode floor, which is not capped, more than the step it is the floor of).
 */
class ThreadCountTest {
    private static final int CORES = Runtime.getRuntime().availableProcessors();

    @Test
    void aCountTheCoresAllowRunsThatManyThreads() {
        for (int t = 1; t <= CORES; t++) {
            assertEquals(t, BenchSupport.attention("java", t).threads());
        }
    }

    @Test
    void aCountAboveTheCoresIsRefusedNotSilentlyCapped() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> BenchSupport.attention("java", CORES + 1));
        assertTrue(e.getMessage().contains("threads=" + (CORES + 1)), e.getMessage());
        assertTrue(e.getMessage().contains(CORES + " cores"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> BenchSupport.attention("java", 0));
    }

    /** The floor would read with CORES + 1 threads beside a step capped at CORES: refused before any reading. */
    @Test
    void theDecodeFloorRefusesACountAboveTheCores() {
        DecodeFloorBench floor = new DecodeFloorBench();
        floor.threads = CORES + 1;
        floor.kvHeads = 32;
        try {
            assertThrows(IllegalArgumentException.class, floor::setup);
        } finally {
            try {
                floor.tearDown();
            } catch (RuntimeException ignored) {
                // nothing was allocated
            }
        }
    }

    @Test
    void decodeRatioRefusesACountAboveTheCores() {
        assertThrows(IllegalArgumentException.class,
                () -> DecodeRatio.main(new String[] {String.valueOf(CORES + 1), "4", "java"}));
    }
}
