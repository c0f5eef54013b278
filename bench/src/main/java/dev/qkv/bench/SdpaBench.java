package dev.qkv.bench;

import dev.qkv.attention.Attention;
import dev.qkv.attention.SdpaOptions;
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
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;

/** Scaled dot-product attention over the shapes of issue 4, per backend, causal or not, on 1 or 2 threads. */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the Vector API kernels.
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class SdpaBench {

    /**
     * {@code BxHxLxD} (q, k, v all {@code [B, H, L, D]}) or {@code BxHxLqxLkxD} (q {@code [B, H, Lq, D]}, k and v
     * {@code [B, H, Lk, D]}), as {@link OrtBench} takes it, so that the two measure the same call at any shape.
     */
    @Param({"1x1x128x64", "1x12x512x64", "1x8x2048x64", "1x1x4096x128"})
    public String shape;

    /** {@code native}, {@code java}, {@code auto}; {@code reference} is cheap only at the smallest shape. */
    @Param({"native", "java"})
    public String backend;

    @Param({"false", "true"})
    public boolean causal;

    @Param({"1", "2"})
    public int threads;

    private Arena arena;
    private Attention attention;
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private Tensor out;
    private SdpaOptions options;

    @Setup(Level.Trial)
    public void setup() {
        long[] s = BenchSupport.shape(shape);
        long b = s[0];
        long h = s[1];
        long lq = s[2];
        long lk = s[3];
        long d = s[4];
        if (causal && lq != lk) {
            throw new IllegalArgumentException("causal is measured only where Lq = Lk (as OrtBench): " + shape);
        }
        arena = Arena.ofShared();
        SplittableRandom r = new SplittableRandom(42);
        q = random(arena, r, b, h, lq, d);
        k = random(arena, r, b, h, lk, d);
        v = random(arena, r, b, h, lk, d);
        out = Tensor.allocate(arena, b, h, lq, d);
        options = causal ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT;
        attention = BenchSupport.attention(backend, threads);
        BenchSupport.warmUp("sdpa " + shape, this::sdpa);
        BenchSupport.report(shape + (causal ? " causal" : "") + " threads=" + threads + " flops="
                + (long) (4.0 * b * h * lq * lk * d), attention.plan(q, k, v, out, options));
        System.out.println("# qkv sdpa " + shape + ": output checked, max |difference| "
                + BenchSupport.check(q, k, v, out, causal));
    }

    @Benchmark
    public Tensor sdpa() {
        attention.sdpa(q, k, v, out, options);
        return out;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }

    static Tensor random(Arena arena, SplittableRandom r, long... shape) {
        Tensor t = Tensor.allocate(arena, shape);
        return t.copyFrom(uniform(r, (int) t.elementCount()));
    }

    /** {@code n} floats uniform in [-1, 1): the benchmarks' inputs. */
    static float[] uniform(SplittableRandom r, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return x;
    }
}
