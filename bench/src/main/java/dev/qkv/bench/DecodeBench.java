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
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/**
 * One decoding step: 32 heads, 1 query, 4096 cached keys, D = 128 (k and v together 128 MiB, far past the
 * L2; {@code kvHeads} under 32 shares them, grouped-query). Its floor, the time to read every cached key and value
 * once with the same number of threads, is {@link DecodeFloorBench} (no backend parameter: one floor per thread
 * count); {@link DecodeRatio} measures step and floor in one JVM, which is what a ratio of the two needs.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the Vector API kernels.
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class DecodeBench {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;

    @Param({"native", "java"})
    public String backend;

    @Param({"1", "2"})
    public int threads;

    /**
     * {@code normal}: v uniform in [-1, 1]; {@code subnormal}: the same times 1e-39, so every value of v is
     * subnormal (or zero), to measure what subnormal operands cost each path (not in the default run).
     */
    @Param({"normal"})
    public String values;

    /**
     * kv heads for the 32 query heads: 32 is the multi-head step; 8 or 4 is grouped-query attention (each
     * kv head read once for its query heads; not in the default run: {@code -p kvHeads=8}).
     */
    @Param({"32"})
    public int kvHeads;

    private Arena arena;
    private Attention attention;
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private Tensor out;

    @Setup(Level.Trial)
    public void setup() {
        arena = Arena.ofShared();
        Step step = Step.allocate(arena, kvHeads);
        q = step.q();
        k = step.k();
        v = step.v();
        out = step.out();
        if (values.equals("subnormal")) {
            scaleToSubnormal(v);
        } else if (!values.equals("normal")) {
            throw new IllegalArgumentException("values=" + values + ": expected normal or subnormal");
        }
        attention = BenchSupport.attention(backend, threads);
        BenchSupport.warmUp("decode step", this::decodeStep);
        BenchSupport.report("decode 32x1x4096x128 kvHeads=" + kvHeads + " threads=" + threads + " kvBytes="
                + 2 * k.elementCount() * Float.BYTES, attention.plan(q, k, v, out, SdpaOptions.DEFAULT));
        System.out.println("# qkv decode step: output checked, max |difference| "
                + BenchSupport.check(q, k, v, out, false));
    }

    /** The step's tensors: q [1, 32, 1, 128], k and v [1, kvHeads, 4096, 128] (uniform, seed 7), out like q. */
    record Step(Tensor q, Tensor k, Tensor v, Tensor out) {
        static Step allocate(Arena arena, int kvHeads) {
            if (kvHeads < 1 || 32 % kvHeads != 0) {
                throw new IllegalArgumentException("kvHeads=" + kvHeads + ": expected a divisor of 32");
            }
            SplittableRandom r = new SplittableRandom(7);
            Tensor q = SdpaBench.random(arena, r, 1, 32, 1, 128);
            Tensor k = SdpaBench.random(arena, r, 1, kvHeads, 4096, 128);
            Tensor v = SdpaBench.random(arena, r, 1, kvHeads, 4096, 128);
            return new Step(q, k, v, Tensor.allocate(arena, 1, 32, 1, 128));
        }
    }

    /** Multiplies every value of the contiguous {@code v} by 1e-39: from [-1, 1] to subnormal (or zero). */
    static void scaleToSubnormal(Tensor v) {
        for (long i = 0; i < v.elementCount(); i++) {
            v.setAt(v.offset() + i, v.getAt(v.offset() + i) * 1e-39f);
        }
    }

    @Benchmark
    public Tensor decodeStep() {
        attention.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
        return out;
    }

    /**
     * Every float of {@code k} and {@code v} (same element count) read once, in 64 chunks spread over
     * {@code threads} tasks of {@code readers}: the decode step's floor.
     */
    static float readOnce(Tensor k, Tensor v, int threads, ExecutorService readers) throws Exception {
        long n = k.elementCount();
        int chunks = 64;
        // ceil(n / chunks) rounded up to whole blocks of four vectors, so that the chunks cover all n floats (the
        // floor of n / chunks left up to chunks - 1 floats unread where it was a multiple of four vectors)
        long block = 4L * SP.length();
        long share = ((n + chunks - 1) / chunks + block - 1) / block * block;
        // the calling thread reads share 0 and hands the others to threads - 1 readers, as a step runs on its
        // caller plus threads - 1 helpers (a floor that woke a reader for every share paid a hand-off the step
        // does not)
        Future<?>[] parts = new Future<?>[threads];
        float[] sums = new float[threads];
        for (int t = 1; t < threads; t++) {
            final int id = t;
            parts[t] = readers.submit(() -> {
                sums[id] = readShare(k, v, n, share, chunks, id, threads);
            });
        }
        sums[0] = readShare(k, v, n, share, chunks, 0, threads);
        float total = sums[0];
        for (int t = 1; t < threads; t++) {
            parts[t].get();
            total += sums[t];
        }
        return total;
    }

    private static float readShare(Tensor k, Tensor v, long n, long share, int chunks, int id, int threads) {
        float s = 0;
        for (int c = id; c < chunks; c += threads) {
            long from = Math.min(n, c * share);
            long to = Math.min(n, from + share);
            s += sum(k, from, to) + sum(v, from, to);
        }
        return s;
    }

    private static float sum(Tensor t, long from, long to) {
        java.lang.foreign.MemorySegment seg = t.segment();
        FloatVector a0 = FloatVector.zero(SP);
        FloatVector a1 = a0;
        FloatVector a2 = a0;
        FloatVector a3 = a0;
        long l = SP.length();
        long i = from;
        for (; i + 4 * l <= to; i += 4 * l) {
            a0 = a0.add(FloatVector.fromMemorySegment(SP, seg, i * Float.BYTES, ByteOrder.nativeOrder()));
            a1 = a1.add(FloatVector.fromMemorySegment(SP, seg, (i + l) * Float.BYTES, ByteOrder.nativeOrder()));
            a2 = a2.add(FloatVector.fromMemorySegment(SP, seg, (i + 2 * l) * Float.BYTES, ByteOrder.nativeOrder()));
            a3 = a3.add(FloatVector.fromMemorySegment(SP, seg, (i + 3 * l) * Float.BYTES, ByteOrder.nativeOrder()));
        }
        float s = a0.add(a1).add(a2.add(a3)).reduceLanes(VectorOperators.ADD);
        for (; i < to; i++) {
            s += t.getAt(i);
        }
        return s;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }
}
