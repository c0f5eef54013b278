package dev.qkv.bench;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;

import java.util.concurrent.TimeUnit;

/**
 * The machine's fp32 FMA peak, measured rather than assumed: 16 independent chains of vector FMAs (enough to
 * cover the FMA latency on two ports), nothing loaded or stored. The score is GFLOP/s (one operation = one
 * FLOP, per nanosecond); with {@code -t 2} JMH sums both threads. RESULTS.md's "% of peak" columns divide by
 * the nominal 216 GFLOP/s per thread (432 for two); this is what the cores sustain.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: the setup asks OpenBLAS for its core (BenchSupport.report)
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class PeakBench {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final int CHAINS = 16;
    /** Each chain's step: {@code x ← x·M + C}. */
    private static final float M = 0.9999999f;
    private static final float C = 1e-7f;
    /**
     * FLOPs of one {@link #fma} call at every vector width: 100 000 steps of 16-float vectors; a narrower vector
     * takes proportionally more steps ({@link #steps}). With a fixed 100 000 steps the count held only at 16 floats,
     * and the benchmark threw on any other width (an AVX2 JVM: 8).
     */
    static final int FLOPS = 100_000 * CHAINS * 2 * 16;
    /** Steps of the chains per call, so that a call does {@link #FLOPS} whatever the width. */
    private static final int STEPS = steps(S.length());

    private float seed;

    @Setup
    public void setup() {
        seed = 1f;
        // the OpenBLAS core and the JDK beside the figure, as every benchmark records them (RESULTS.md reads the
        // peak against the core OpenBLAS picks on the host); JMH's -t is the thread count
        BenchSupport.report("peak", S.length() + " floats per vector, " + CHAINS + " FMA chains of " + STEPS
                + " steps, thread " + Thread.currentThread().getName());
        // the FMA chains in C2's code before JMH's warm-up, as every qkv benchmark (BenchSupport.warmUp)
        BenchSupport.warmUp("peak", this::fma);
        System.out.println("# qkv peak: FMA chains checked against their scalar reading, |difference| "
                + check(fma()));
    }

    /**
     * Compares a result of {@link #fma} with the same 16 recurrences {@code x ← fma(x, m, c)} from
     * {@code seed + j} run on scalars ({@code Math.fma}, which each vector lane computes
     * to the bit), summed over the lanes in double; throws when they differ by more than 1e-5 relative (the order of
     * the final sum). A kernel that skipped steps reported a peak the cores never reached. Returns the difference.
     */
    double check(float got) {
        int lanes = S.length();
        double want = 0;
        for (int j = 0; j < CHAINS; j++) {
            float x = seed + j;
            for (int i = 0; i < STEPS; i++) {
                x = Math.fma(x, M, C);
            }
            want += (double) lanes * x;
        }
        double diff = Math.abs(got - want);
        if (!(diff <= 1e-5 * want)) {
            throw new IllegalStateException("the FMA chains summed to " + got + ", their scalar reading to " + want
                    + ": the kernel did not do the " + FLOPS + " FLOPs it is credited with");
        }
        return diff;
    }

    /** Steps that make {@link #FLOPS} with vectors of {@code lanes} floats (each step: CHAINS FMAs, 2 FLOPs a lane). */
    static int steps(int lanes) {
        if (lanes < 1 || FLOPS % (CHAINS * 2 * lanes) != 0) {
            throw new IllegalStateException("no whole number of steps makes " + FLOPS + " FLOPs with " + lanes
                    + " floats per vector");
        }
        return FLOPS / (CHAINS * 2 * lanes);
    }

    @Benchmark
    @OperationsPerInvocation(FLOPS)
    public float fma() {
        FloatVector m = FloatVector.broadcast(S, M);
        FloatVector c = FloatVector.broadcast(S, C);
        FloatVector a0 = FloatVector.broadcast(S, seed);
        FloatVector a1 = a0.add(1f);
        FloatVector a2 = a0.add(2f);
        FloatVector a3 = a0.add(3f);
        FloatVector a4 = a0.add(4f);
        FloatVector a5 = a0.add(5f);
        FloatVector a6 = a0.add(6f);
        FloatVector a7 = a0.add(7f);
        FloatVector a8 = a0.add(8f);
        FloatVector a9 = a0.add(9f);
        FloatVector a10 = a0.add(10f);
        FloatVector a11 = a0.add(11f);
        FloatVector a12 = a0.add(12f);
        FloatVector a13 = a0.add(13f);
        FloatVector a14 = a0.add(14f);
        FloatVector a15 = a0.add(15f);
        for (int i = 0; i < STEPS; i++) {
            a0 = a0.fma(m, c);
            a1 = a1.fma(m, c);
            a2 = a2.fma(m, c);
            a3 = a3.fma(m, c);
            a4 = a4.fma(m, c);
            a5 = a5.fma(m, c);
            a6 = a6.fma(m, c);
            a7 = a7.fma(m, c);
            a8 = a8.fma(m, c);
            a9 = a9.fma(m, c);
            a10 = a10.fma(m, c);
            a11 = a11.fma(m, c);
            a12 = a12.fma(m, c);
            a13 = a13.fma(m, c);
            a14 = a14.fma(m, c);
            a15 = a15.fma(m, c);
        }
        return a0.add(a1).add(a2).add(a3).add(a4).add(a5).add(a6).add(a7).add(a8).add(a9).add(a10).add(a11)
                .add(a12).add(a13).add(a14).add(a15).reduceLanes(VectorOperators.ADD);
    }
}
