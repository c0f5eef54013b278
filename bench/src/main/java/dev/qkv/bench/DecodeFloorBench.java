package dev.qkv.bench;

import dev.qkv.tensor.Tensor;
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
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

/**
 * The floor of {@link DecodeBench}'s step: every float of its k and v (the same tensors, seed 7) read once with
 * {@code threads} threads, the caller one of them. Its own class, so that it runs once per thread count and not
 * once per backend. Forks differ by up to ±20% here: for a ratio of step to floor use {@link DecodeRatio}, which
 * measures both in one JVM.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// prepended: a command line's -jvmArgsAppend adds to these flags rather than replacing them
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class DecodeFloorBench {
    @Param({"1", "2"})
    public int threads;

    /** kv heads of the step (see {@link DecodeBench#kvHeads}): the floor reads that many heads' keys and values. */
    @Param({"32"})
    public int kvHeads;

    private Arena arena;
    private Tensor k;
    private Tensor v;
    private ExecutorService readers;

    @Setup(Level.Trial)
    public void setup() {
        // as many readers as the step has threads: qkv caps those at the cores
        BenchSupport.threads(threads);
        arena = Arena.ofShared();
        DecodeBench.Step step = DecodeBench.Step.allocate(arena, kvHeads);
        k = step.k();
        v = step.v();
        readers = Executors.newFixedThreadPool(Math.max(1, threads - 1));
        BenchSupport.report("decode floor kvHeads=" + kvHeads + " threads=" + threads + " kvBytes="
                + 2 * k.elementCount() * Float.BYTES, "reads k and v once");
        BenchSupport.warmUp("decode floor", () -> {
            try {
                readKvCacheOnce();
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        });
    }

    @Benchmark
    public float readKvCacheOnce() throws Exception {
        return DecodeBench.readOnce(k, v, threads, readers);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        if (readers != null) {
            readers.shutdownNow();
        }
        if (arena != null) {
            arena.close();
        }
    }
}
