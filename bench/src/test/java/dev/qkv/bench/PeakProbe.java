package dev.qkv.bench;

import jdk.incubator.vector.FloatVector;

/**
 * The main class {@link PeakBenchTest} starts in a child JVM (the preferred vector size is fixed per JVM): one
 * {@link PeakBench#fma} call, then {@code lanes=<floats per vector> flops=<steps · 16 chains · 2 · lanes> sum=<its
 * result>}; exit 3 when it throws.
 */
public final class PeakProbe {
    private PeakProbe() {
    }

    public static void main(String[] args) {
        try {
            PeakBench bench = new PeakBench();
            float sum = bench.fma();
            int lanes = FloatVector.SPECIES_PREFERRED.length();
            System.out.println("lanes=" + lanes + " flops=" + (long) PeakBench.steps(lanes) * 16 * 2 * lanes
                    + " sum=" + sum + " checked" + bench.check(sum));
        } catch (RuntimeException e) {
            System.out.println("error=" + e);
            System.exit(3);
        }
    }
}
