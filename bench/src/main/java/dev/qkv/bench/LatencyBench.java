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
import org.openjdk.jmh.annotations.Threads;
import org.openjdk.jmh.annotations.Warmup;

import java.lang.foreign.Arena;
import java.util.Queue;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;

/**
 * Latency of single calls, as a service sees them: JMH's sample mode times every call and reports percentiles
 * (p50 to p99.99 and the worst), so a pause, a wake-up or a recompilation shows in the tail instead of being
 * averaged away. {@link #oneCaller} is one request thread; {@link #twoCallers} is two request threads sharing
 * one {@link Attention} (it is thread-safe) and the process-wide pool, each with its own output, which is where
 * a pool that oversubscribed the cores, or a lock, would show. {@link #freshVirtualThread} is a call on a new
 * virtual thread, as servers with a virtual thread per request make them (the bare thread, which reads none of this
 * class's parameters, is {@link VirtualThreadLatencyBench}). With {@code -prof gc} the run also shows
 * that no collection happens (the calls allocate nothing; a virtual thread itself allocates about 0.5 KB).
 *
 * <pre>
 * $J LatencyBench -f 1 -wi 2 -w 2s -i 3 -r 3s -prof gc
 * </pre>
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.SampleTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 2, time = 2)
@Measurement(iterations = 3, time = 3)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the Vector API kernels.
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class LatencyBench {

    /**
     * {@code BxHxLxD} (q, k and v {@code [B, H, L, D]}) or {@code BxHxLqxLkxD} (q {@code [B, H, Lq, D]}, k and v
     * {@code [B, H, Lk, D]}): the tiny shape of issue 4, a 512-token prefill of 8 heads, and a decode step of 32
     * heads over 2048 cached keys.
     */
    @Param({"1x1x128x64", "1x8x512x64", "1x32x1x2048x128"})
    public String shape;

    @Param({"java", "native"})
    public String backend;

    /** Threads of the {@link Attention}: its workers, the caller being one. */
    @Param({"1", "2"})
    public int threads;

    private Arena arena;
    private Attention attention;
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private long[] outShape;
    private SdpaOptions options;

    /** The outputs of the request threads ({@link Output}), checked when the trial ends ({@link #tearDown}). */
    private final Queue<Tensor> outputs = new ConcurrentLinkedQueue<>();

    /**
     * Each request thread's own output, in the benchmark's arena: the benchmark's trial teardown, which JMH runs
     * once on whichever thread gets there first, checks every output against the scalar reference before it closes
     * that arena (an output checked in its own thread's teardown could meet q, k and v already closed by the
     * other thread's).
     */
    @State(Scope.Thread)
    public static class Output {
        Tensor out;
        /** What a call on a fresh virtual thread threw ({@link #freshVirtualThread}); read after its join. */
        Throwable failure;

        @Setup(Level.Trial)
        public void setup(LatencyBench b) {
            out = Tensor.allocate(b.arena, b.outShape);
            b.outputs.add(out);
        }
    }

    @Setup(Level.Trial)
    public void setup() {
        long[] s = BenchSupport.shape(shape);
        long b = s[0];
        long h = s[1];
        long lq = s[2];
        long lk = s[3];
        long d = s[4];
        arena = Arena.ofShared();
        SplittableRandom r = new SplittableRandom(42);
        q = SdpaBench.random(arena, r, b, h, lq, d);
        k = SdpaBench.random(arena, r, b, h, lk, d);
        v = SdpaBench.random(arena, r, b, h, lk, d);
        outShape = new long[] {b, h, lq, d};
        // causal where it means one thing (Lq = Lk, a prefill); a decode step's one query sees every cached key
        options = lq == lk ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT;
        attention = BenchSupport.attention(backend, threads);
        // the plan of a call into shared memory, as the request threads' outputs are
        Tensor warmOut = Tensor.allocate(arena, outShape);
        // JMH's 2 x 2 s warm-up is not enough for C2 beside other work (bench/RESULTS.md, round 17): without this
        // the percentiles could time the kernels in the lower tiers
        BenchSupport.warmUp("latency " + shape, () -> attention.sdpa(q, k, v, warmOut, options));
        BenchSupport.report("latency " + shape + (lq == lk ? " causal" : "") + " threads=" + threads + " flops="
                + (long) (4.0 * b * h * lq * lk * d), attention.plan(q, k, v, warmOut, options));
        System.out.println("# qkv latency " + shape + ": output checked, max |difference| "
                + BenchSupport.check(q, k, v, warmOut, lq == lk));
    }

    @Benchmark
    @Threads(1)
    public Tensor oneCaller(Output o) {
        attention.sdpa(q, k, v, o.out, options);
        return o.out;
    }

    @Benchmark
    @Threads(2)
    public Tensor twoCallers(Output o) {
        attention.sdpa(q, k, v, o.out, options);
        return o.out;
    }

    /**
     * One call on a fresh virtual thread, started and joined, as a server with a virtual thread per request runs
     * it: the call's scratch is leased ({@code dev.qkv.kernel.PerThread}), not made for the new thread. Compare
     * with {@link VirtualThreadLatencyBench#freshVirtualThreadAlone}, the same thread without the call.
     */
    @Benchmark
    @Threads(1)
    public Tensor freshVirtualThread(Output o) throws InterruptedException {
        Thread.ofVirtual().start(() -> {
            try {
                attention.sdpa(q, k, v, o.out, options);
            } catch (Throwable t) {
                o.failure = t;
            }
        }).join();
        if (o.failure != null) {
            // a call that threw ended its virtual thread only: not a call to time
            throw new IllegalStateException("the call on the virtual thread failed", o.failure);
        }
        return o.out;
    }

    /**
     * Checks what the timed calls wrote, each request thread's output (the last call of each: two callers sharing
     * one {@link Attention}, or a fresh virtual thread), against the scalar reference, then closes the memory.
     * The setup's check covers only its own warm-up output, on the setup's thread.
     */
    @TearDown(Level.Trial)
    public void tearDown() {
        try {
            for (Tensor out : outputs) {
                BenchSupport.check(q, k, v, out, options == SdpaOptions.CAUSAL);
            }
            System.out.println("# qkv latency " + shape + ": the " + outputs.size()
                    + " request threads' outputs checked");
        } finally {
            outputs.clear();
            arena.close();
        }
    }
}
