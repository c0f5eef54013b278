package dev.qkv.bench;

import dev.qkv.attention.Attention;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;
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
import java.nio.ByteOrder;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/**
 * One decoding step: 32 heads, 1 query, 4096 cached keys, D = 128 (k and v together 128 MiB, far past the
 * caches), and its floor {@link #readKvCacheOnce}: the time to read every cached key and value once with the
 * same number of threads.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the Vector API kernels.
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class DecodeBench {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;

    @Param({"native", "java"})
    public String backend;

    @Param({"1", "2"})
    public int threads;

    private Arena arena;
    private Attention attention;
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private Tensor out;
    private ExecutorService readers;

    @Setup(Level.Trial)
    public void setup() {
        arena = Arena.ofShared();
        SplittableRandom r = new SplittableRandom(7);
        q = SdpaBench.random(arena, r, 1, 32, 1, 128);
        k = SdpaBench.random(arena, r, 1, 32, 4096, 128);
        v = SdpaBench.random(arena, r, 1, 32, 4096, 128);
        out = Tensor.allocate(arena, 1, 32, 1, 128);
        attention = BenchSupport.attention(backend, threads);
        readers = Executors.newFixedThreadPool(threads);
        BenchSupport.report("decode 32x1x4096x128 threads=" + threads + " kvBytes="
                + 2 * k.elementCount() * Float.BYTES, attention.plan(q, k, v, out, SdpaOptions.DEFAULT));
    }

    @Benchmark
    public Tensor decodeStep() {
        attention.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
        return out;
    }

    /** The floor: every float of k and v read once (vector loads, summed so the reads cannot be dropped). */
    @Benchmark
    public float readKvCacheOnce() throws Exception {
        long n = k.elementCount();
        long share = (n / threads + SP.length() - 1) / SP.length() * SP.length();
        Future<?>[] parts = new Future<?>[threads];
        float[] sums = new float[threads];
        for (int t = 0; t < threads; t++) {
            final int id = t;
            final long from = Math.min(n, t * share);
            final long to = Math.min(n, from + share);
            parts[t] = readers.submit(() -> sums[id] = sum(k, from, to) + sum(v, from, to));
        }
        float total = 0;
        for (int t = 0; t < threads; t++) {
            parts[t].get();
            total += sums[t];
        }
        return total;
    }

    private static float sum(Tensor t, long from, long to) {
        FloatVector acc = FloatVector.zero(SP);
        FloatVector acc2 = FloatVector.zero(SP);
        long i = from;
        long step = 2L * SP.length();
        for (; i + step <= to; i += step) {
            acc = acc.add(FloatVector.fromMemorySegment(SP, t.segment(), i * Float.BYTES, ByteOrder.nativeOrder()));
            acc2 = acc2.add(FloatVector.fromMemorySegment(SP, t.segment(), (i + SP.length()) * Float.BYTES,
                    ByteOrder.nativeOrder()));
        }
        float s = acc.add(acc2).reduceLanes(VectorOperators.ADD);
        for (; i < to; i++) {
            s += t.getAt(i);
        }
        return s;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        readers.shutdownNow();
        arena.close();
    }
}
