package dev.qkv.bench;

import dev.qkv.blas.OpenBlas;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;

import java.util.concurrent.TimeUnit;

/**
 * The cost of an FFM downcall that does nothing ({@code openblas_get_num_threads}), with {@link DowncallBench}'s
 * settings. A class of its own because it reads none of DowncallBench's sizes, under which JMH ran it 4 times; its
 * name still ends in {@code DowncallBench}, so {@code DowncallBench} (and {@code DowncallBench.emptyDowncall})
 * select it.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the setup line's vector= as elsewhere.
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class EmptyDowncallBench {
    private OpenBlas blas;

    @Setup(Level.Trial)
    public void setup() {
        blas = OpenBlas.get();
        blas.setThreads(1);
        BenchSupport.report("empty downcall", blas.describe() + " critical="
                + System.getProperty(OpenBlas.CRITICAL_PROPERTY, "true"));
        // compiled before JMH's warm-up (BenchSupport.warmUp)
        BenchSupport.warmUp("empty downcall", this::emptyDowncall);
        // what the call must return (set above): a downcall that returned anything else did not reach OpenBLAS
        if (emptyDowncall() != 1) {
            throw new IllegalStateException("openblas_get_num_threads returned " + emptyDowncall() + " after "
                    + "openblas_set_num_threads(1)");
        }
    }

    @Benchmark
    public int emptyDowncall() {
        return blas.threads();
    }
}
