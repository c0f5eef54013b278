package dev.qkv.bench;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** {@link Rounds} on times whose medians and ratios are worked out by hand. */
class RoundsTest {

    @Test
    void medianOfOddAndEvenCounts() {
        assertEquals(3.0, Rounds.median(new double[] {5, 1, 3}));
        assertEquals(2.5, Rounds.median(new double[] {4, 1, 3, 2}));
        assertTrue(Double.isNaN(Rounds.median(new double[0])));
    }

    @Test
    void ratioIsTakenWithinEachRoundNotBetweenMedians() {
        // the machine's speed changes from round to round; within a round contender 0 takes 1.1-1.3x contender 1
        Rounds r = new Rounds(2, 4);
        r.add(12, 10);
        r.add(24, 20);
        r.add(13, 10);
        r.add(44, 40);
        Rounds.Ratio ratio = r.ratio(0, 1);
        // per round 1.2, 1.2, 1.3, 1.1: median 1.2, where the ratio of the medians would be 18.5 / 15 = 1.233
        assertEquals(1.2, ratio.median(), 1e-12);
        assertEquals(1.1, ratio.min(), 1e-12);
        assertEquals(1.3, ratio.max(), 1e-12);
        assertEquals(4, ratio.above());
        assertEquals(4, ratio.rounds());
        assertEquals(18.5, r.median(0), 1e-12);
        assertEquals(15, r.median(1), 1e-12);
        assertEquals(10, r.min(1));
        assertEquals(40, r.max(1));
    }

    @Test
    void ratioCountsTheRoundsAboveOne() {
        Rounds r = new Rounds(2, 3);
        r.add(9, 10);
        r.add(11, 10);
        r.add(10, 10);
        Rounds.Ratio ratio = r.ratio(0, 1);
        assertEquals(1, ratio.above());
        assertEquals(1.0, ratio.median(), 1e-12);
        assertEquals(0.9, ratio.min(), 1e-12);
        assertEquals(1.1, ratio.max(), 1e-12);
    }

    @Test
    void refusesARoundOfTheWrongSizeOrBeyondItsCapacity() {
        Rounds r = new Rounds(2, 1);
        assertThrows(IllegalArgumentException.class, () -> r.add(1));
        r.add(1, 2);
        assertThrows(IllegalStateException.class, () -> r.add(1, 2));
    }
}
