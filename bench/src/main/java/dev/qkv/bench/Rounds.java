package dev.qkv.bench;

import java.util.Arrays;

/**
 * Times of contenders measured in alternation, one time per contender and round, and the ratios between them
 * round by round: what {@link OrtRatio} reports. A ratio taken within a round compares calls made seconds apart,
 * so a change of the machine's speed between rounds (this VM's cores move by 20% from minute to minute) moves
 * both sides of it alike.
 */
final class Rounds {
    private final double[][] times;
    private int rounds;

    /** Room for {@code capacity} rounds of {@code contenders} times. */
    Rounds(int contenders, int capacity) {
        if (contenders < 1 || capacity < 1) {
            throw new IllegalArgumentException("contenders and capacity must be positive: " + contenders + ", "
                    + capacity);
        }
        times = new double[contenders][capacity];
    }

    /** One round: a time per contender, in the order of the constructor's contenders. */
    void add(double... roundTimes) {
        if (roundTimes.length != times.length) {
            throw new IllegalArgumentException("a round has " + times.length + " times, not " + roundTimes.length);
        }
        if (rounds == times[0].length) {
            throw new IllegalStateException("all " + rounds + " rounds are in");
        }
        for (int c = 0; c < times.length; c++) {
            times[c][rounds] = roundTimes[c];
        }
        rounds++;
    }

    int rounds() {
        return rounds;
    }

    /** Contender {@code c}'s median time over the rounds. */
    double median(int c) {
        return median(Arrays.copyOf(times[c], rounds));
    }

    double min(int c) {
        return Arrays.stream(times[c], 0, rounds).min().orElse(Double.NaN);
    }

    double max(int c) {
        return Arrays.stream(times[c], 0, rounds).max().orElse(Double.NaN);
    }

    /**
     * {@code time(num) / time(den)} round by round: its median, least and greatest value, and the rounds in which
     * it exceeds 1.
     */
    Ratio ratio(int num, int den) {
        double[] r = new double[rounds];
        int above = 0;
        for (int i = 0; i < rounds; i++) {
            r[i] = times[num][i] / times[den][i];
            if (r[i] > 1) {
                above++;
            }
        }
        double[] sorted = r.clone();
        Arrays.sort(sorted);
        return new Ratio(median(r), rounds == 0 ? Double.NaN : sorted[0],
                rounds == 0 ? Double.NaN : sorted[rounds - 1], above, rounds);
    }

    /** A ratio over rounds: the median, the range, and how many of the rounds put it above 1. */
    record Ratio(double median, double min, double max, int above, int rounds) {
    }

    /** The median of {@code x} (the mean of the middle two for an even count); NaN when empty. Sorts {@code x}. */
    static double median(double[] x) {
        if (x.length == 0) {
            return Double.NaN;
        }
        Arrays.sort(x);
        int m = x.length / 2;
        return x.length % 2 == 1 ? x[m] : (x[m - 1] + x[m]) / 2;
    }
}
