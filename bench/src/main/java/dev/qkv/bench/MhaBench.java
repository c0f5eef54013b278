package dev.qkv.bench;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.mha.KvCache;
import dev.qkv.mha.MhaWeights;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
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

/**
 * The multi-head attention layer (E = 512, H = 8, batch 1): a causal self-attention forward pass over L tokens
 * (projections, attention, output projection), and one decoding step: one token against a KV cache of
 * {@link DecodeState#CACHED} positions, the cache truncated back before every step so that each measured call
 * is the same step at the same length. {@code kvHeads} 8 is ordinary multi-head attention, 2 grouped-query.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// --enable-native-access: FFM downcalls without warnings; --add-modules: the Vector API kernels.
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class MhaBench {
    static final int E = 512;
    static final int H = 8;

    /** A causal self-attention forward pass over {@code [1, seqLen, E]}. */
    @State(Scope.Benchmark)
    public static class ForwardState {
        @Param({"native", "java"})
        public String backend;

        @Param({"1", "2"})
        public int threads;

        @Param({"8", "2"})
        public int kvHeads;

        @Param({"128", "512"})
        public int seqLen;

        Arena arena;
        MultiHeadAttention layer;
        MhaWorkspace ws;
        Tensor x;
        Tensor out;

        @Setup(Level.Trial)
        public void setup() {
            arena = Arena.ofShared();
            SplittableRandom r = new SplittableRandom(11);
            MhaWeights w = weights(arena, r, kvHeads);
            layer = MultiHeadAttention.create(w, Backend.parse(backend), BenchSupport.threads(threads));
            x = SdpaBench.random(arena, r, 1, seqLen, E);
            out = Tensor.allocate(arena, 1, seqLen, E);
            ws = layer.newWorkspace(arena, 1, seqLen, seqLen);
            BenchSupport.warmUp("mha forward", () -> layer.forward(x, out, SdpaOptions.CAUSAL, ws));
            BenchSupport.report("mha forward causal L=" + seqLen + " threads=" + threads + " flops="
                    + (long) flops(seqLen, seqLen, kvHeads), layer.toString());
            // the output the trial times, against the same layer in double: no figure for a wrong answer
            Tensor want = Tensor.allocate(arena, 1, seqLen, E);
            MultiHeadAttention reference = MultiHeadAttention.create(w, Backend.REFERENCE);
            reference.forward(x, want, SdpaOptions.CAUSAL, reference.newWorkspace(arena, 1, seqLen, seqLen));
            System.out.println("# qkv mha forward: output checked against the REFERENCE layer, max |difference| "
                    + BenchSupport.checkLayer("mha forward", want.toArray(), out.toArray(), E + seqLen));
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            arena.close();
        }
    }

    /** One token decoded against {@link #CACHED} cached positions. */
    @State(Scope.Benchmark)
    public static class DecodeState {
        /** Positions in the cache before the measured step; the step attends to CACHED + 1 keys. */
        static final int CACHED = 1023;

        @Param({"native", "java"})
        public String backend;

        @Param({"1", "2"})
        public int threads;

        @Param({"8", "2"})
        public int kvHeads;

        Arena arena;
        MultiHeadAttention layer;
        MhaWorkspace ws;
        KvCache cache;
        Tensor token;
        Tensor out;

        @Setup(Level.Trial)
        public void setup() {
            arena = Arena.ofShared();
            SplittableRandom r = new SplittableRandom(12);
            MhaWeights w = weights(arena, r, kvHeads);
            layer = MultiHeadAttention.create(w, Backend.parse(backend), BenchSupport.threads(threads));
            Tensor prompt = SdpaBench.random(arena, r, 1, CACHED, E);
            token = SdpaBench.random(arena, r, 1, 1, E);
            out = Tensor.allocate(arena, 1, 1, E);
            cache = layer.newCache(arena, CACHED + 1);
            ws = layer.newWorkspace(arena, 1, CACHED, cache.capacity());
            layer.decode(prompt, cache, Tensor.allocate(arena, 1, CACHED, E), ws);
            BenchSupport.warmUp("mha decode step", () -> {
                cache.truncate(CACHED);
                layer.decode(token, cache, out, ws);
            });
            BenchSupport.report("mha decode cached=" + CACHED + " threads=" + threads + " flops="
                    + (long) flops(1, CACHED + 1, kvHeads), layer.toString());
            // the step the trial times (the last warm-up call), against the same prompt and step in double
            MultiHeadAttention ref = MultiHeadAttention.create(w, Backend.REFERENCE);
            KvCache refCache = ref.newCache(arena, CACHED + 1);
            MhaWorkspace refWs = ref.newWorkspace(arena, 1, CACHED, refCache.capacity());
            ref.decode(prompt, refCache, Tensor.allocate(arena, 1, CACHED, E), refWs);
            Tensor want = Tensor.allocate(arena, 1, 1, E);
            ref.decode(token, refCache, want, refWs);
            System.out.println("# qkv mha decode step: output checked against the REFERENCE layer, max |difference| "
                    + BenchSupport.checkLayer("mha decode step", want.toArray(), out.toArray(), E + CACHED + 1));
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            arena.close();
        }
    }

    @Benchmark
    public Tensor forward(ForwardState s) {
        s.layer.forward(s.x, s.out, SdpaOptions.CAUSAL, s.ws);
        return s.out;
    }

    @Benchmark
    public Tensor decodeStep(DecodeState s) {
        // back to CACHED positions (an int store), so every call appends the same token at the same length
        s.cache.truncate(DecodeState.CACHED);
        s.layer.decode(s.token, s.cache, s.out, s.ws);
        return s.out;
    }

    /**
     * FLOPs of one call with {@code lq} new tokens and {@code lk} keys: the Q, K, V and output projections
     * ({@code 2·lq·E·(2E + 2·kvd)}) plus attention at the dense count {@code 4·H·lq·lk·Dh}, as in SdpaBench.
     */
    static double flops(int lq, int lk, int kvHeads) {
        int kvd = E / H * kvHeads;
        return 2.0 * lq * E * (2.0 * E + 2.0 * kvd) + 4.0 * H * lq * lk * (E / H);
    }

    /** Packed {@code [W_Q; W_K; W_V]} and {@code W_O} with biases, scaled like a trained layer (1/√E). */
    static MhaWeights weights(Arena arena, SplittableRandom r, int kvHeads) {
        int kvd = E / H * kvHeads;
        Tensor inProj = scaled(SdpaBench.random(arena, r, E + 2L * kvd, E));
        Tensor inBias = SdpaBench.random(arena, r, E + 2L * kvd);
        Tensor wo = scaled(SdpaBench.random(arena, r, E, E));
        Tensor bo = SdpaBench.random(arena, r, E);
        return MhaWeights.packed(H, inProj, inBias, wo, bo);
    }

    private static Tensor scaled(Tensor t) {
        float s = (float) (1 / Math.sqrt(E));
        float[] v = t.toArray();
        for (int i = 0; i < v.length; i++) {
            v[i] *= s;
        }
        return t.copyFrom(v);
    }
}
