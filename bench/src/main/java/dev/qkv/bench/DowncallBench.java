package dev.qkv.bench;

import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;

/**
 * FFM costs: small {@code sgemm}s (n × n × n), which run as critical downcalls unless the JVM has
 * {@code -Dqkv.blas.critical=false}; run {@code DowncallBench} (this class and {@link EmptyDowncallBench}, a
 * downcall that does nothing) twice, with and without that flag, to see what {@code Linker.Option.critical} saves.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the setup line's vector= as elsewhere.
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class DowncallBench {
    @Param({"1", "8", "32", "64"})
    public int n;

    private Arena arena;
    private OpenBlas blas;
    MemorySegment a;
    MemorySegment b;
    MemorySegment c;

    @Setup(Level.Trial)
    public void setup() {
        blas = OpenBlas.get();
        blas.setThreads(1);
        arena = Arena.ofShared();
        // uniform in [-1, 1), as every benchmark's inputs: with zeros (the memory as allocated) any kernel, a wrong
        // one included, gave the right answer
        SplittableRandom r = new SplittableRandom(5);
        a = arena.allocate((long) n * n * 4, 64).copyFrom(MemorySegment.ofArray(SdpaBench.uniform(r, n * n)));
        b = arena.allocate((long) n * n * 4, 64).copyFrom(MemorySegment.ofArray(SdpaBench.uniform(r, n * n)));
        c = arena.allocate((long) n * n * 4, 64);
        BenchSupport.report("downcall n=" + n, blas.describe() + " critical="
                + System.getProperty(OpenBlas.CRITICAL_PROPERTY, "true"));
        // compiled before JMH's warm-up (BenchSupport.warmUp)
        BenchSupport.warmUp("downcall n=" + n, this::sgemm);
        System.out.println("# qkv downcall n=" + n + ": product checked, max |difference| " + check());
    }

    /**
     * Compares {@code c} with {@code a · bᵀ} summed in double and throws when a value differs by more than
     * {@code 1e-5·n} (the inputs are in [-1, 1), so a float sum of n products is within n²·2⁻²⁴ of it, under
     * 1e-5·n for every n of the parameter);
     * returns the largest difference.
     */
    double check() {
        double max = 0;
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                double want = 0;
                for (int p = 0; p < n; p++) {
                    want += (double) a.getAtIndex(ValueLayout.JAVA_FLOAT, (long) i * n + p)
                            * b.getAtIndex(ValueLayout.JAVA_FLOAT, (long) j * n + p);
                }
                double diff = Math.abs(want - c.getAtIndex(ValueLayout.JAVA_FLOAT, (long) i * n + j));
                if (!(diff <= 1e-5 * n)) {
                    throw new IllegalStateException("sgemm n=" + n + ": c[" + i + ", " + j + "] differs from a·bᵀ by "
                            + diff + ", more than " + 1e-5 * n);
                }
                max = Math.max(max, diff);
            }
        }
        return max;
    }

    @Benchmark
    public MemorySegment sgemm() {
        blas.sgemm(Transpose.NO, Transpose.YES, n, n, n, 1f, a, 0, n, b, 0, n, 0f, c, 0, n);
        return c;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }
}
