package dev.qkv.bench;

import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
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
 * The multi-head layer's projection product, {@code C [m, n] = X [m, k] · Wᵀ} with W {@code [n, k]} row-major (as
 * {@code MultiHeadAttention} calls it), on one thread: OpenBLAS ({@code native}) against the Java kernels
 * ({@code java}: the Vector API's when present). What AUTO's projections choose between
 * ({@code Attention.autoNativeAtEverySize}). Shapes {@code mxnxk}: a forward's Q projection (512 tokens, E = 768),
 * its packed Q|K|V (n = 3E), E = 512, and a wide layer.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the Vector API kernels.
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class ProjectionBench {
    @Param({"native", "java"})
    public String kernel;

    @Param({"512x768x768", "512x2304x768", "512x512x512", "2048x1024x1024"})
    public String shape;

    private Arena arena;
    private MatmulKernel mm;
    private int m;
    private int n;
    private int k;
    MemorySegment x;
    MemorySegment w;
    MemorySegment c;

    @Setup(Level.Trial)
    public void setup() {
        String[] p = shape.split("x");
        m = Integer.parseInt(p[0]);
        n = Integer.parseInt(p[1]);
        k = Integer.parseInt(p[2]);
        mm = switch (kernel) {
            case "native" -> MatmulKernel.openBlas();
            case "java" -> MatmulKernel.java();
            default -> throw new IllegalArgumentException("kernel must be native or java: " + kernel);
        };
        arena = Arena.ofShared();
        SplittableRandom r = new SplittableRandom(7);
        x = arena.allocate((long) m * k * 4, 64).copyFrom(MemorySegment.ofArray(SdpaBench.uniform(r, m * k)));
        w = arena.allocate((long) n * k * 4, 64).copyFrom(MemorySegment.ofArray(SdpaBench.uniform(r, n * k)));
        c = arena.allocate((long) m * n * 4, 64);
        BenchSupport.warmUp("projection " + shape + " " + kernel, this::product);
        BenchSupport.report("projection " + shape + " flops=" + 2L * m * n * k, "kernel=" + mm.name());
        // 64 entries of C against a double sum: no figure for a wrong product
        double worst = 0;
        for (int t = 0; t < 64; t++) {
            int i = r.nextInt(m);
            int j = r.nextInt(n);
            double want = 0;
            for (int q = 0; q < k; q++) {
                want += (double) x.getAtIndex(ValueLayout.JAVA_FLOAT, (long) i * k + q)
                        * w.getAtIndex(ValueLayout.JAVA_FLOAT, (long) j * k + q);
            }
            worst = Math.max(worst, Math.abs(want - c.getAtIndex(ValueLayout.JAVA_FLOAT, (long) i * n + j)));
        }
        // inputs in [-1, 1): a float32 sum of k products is within k · 2^-24 · k of the double one
        if (!(worst <= (double) k * k * 0x1p-24)) {
            throw new IllegalStateException("projection " + shape + " " + kernel + ": |difference| " + worst);
        }
        System.out.println("# qkv projection " + shape + " " + kernel + ": 64 entries checked, max |difference| "
                + worst);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public MemorySegment product() {
        mm.matmul(Transpose.NO, Transpose.YES, m, n, k, 1f, x, 0, k, w, 0, k, 0f, c, 0, n);
        return c;
    }
}
