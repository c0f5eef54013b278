package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.stream.Stream;

import static dev.qkv.mha.MhaTestSupport.assertWithinFloat32;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/**
 * Projections cut into column slabs ({@link MultiHeadAttention#SLAB_COLS}) and shared with the pool: a layer on
 * two threads gives the same bits as on one (the cut depends on the shape only) and matches the reference, on
 * shapes whose projection widths are not a multiple of the slab, self and cross attention, grouped-query heads,
 * biases, packed and separate weights, padded batches (one product per batch), a prefill and a two-token step
 * (matrix-vector products per slab) through {@code decode}, a confined arena (the caller alone) and several
 * callers sharing one layer (the pool busy).
 */
class ParallelProjectionTest {

    /** One layer case, printed in the test name; every projection of it is above the parallel threshold. */
    record Case(long seed, int b, int l, int lkv, int e, int h, int hkv, boolean packed, boolean cross,
                boolean paddedBatches) {
        @Override
        public String toString() {
            return "seed=" + seed + " B=" + b + " L=" + l + " Lkv=" + lkv + " E=" + e + " H=" + h + " Hkv=" + hkv
                    + (packed ? " packed" : " separate") + (cross ? " cross" : " self")
                    + (paddedBatches ? " padded-batches" : "");
        }
    }

    static Stream<Arguments> cases() {
        List<Case> cs = List.of(
                // [Q | K | V] 320 wide: slabs of 128, 128, 64 columns; W_O 160: 128 and 32; GQA
                new Case(61, 2, 150, 150, 160, 4, 2, true, false, false),
                // separate weights, each 192 wide: 128 and 64
                new Case(62, 1, 130, 130, 192, 4, 4, false, false, false),
                // queries and keys of different lengths, packed [W_K; W_V]
                new Case(63, 1, 150, 170, 192, 4, 2, true, true, false),
                new Case(64, 2, 100, 77, 192, 8, 2, false, true, false),
                // batches 5 rows apart: one 150-row matrix per batch, each cut alone (192 wide: 128 and 64)
                new Case(65, 2, 150, 150, 128, 4, 1, true, false, true));
        List<Arguments> out = new ArrayList<>();
        for (Backend be : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
            for (Case c : cs) {
                out.add(Arguments.of(Named.of(be.cliName(), be), c));
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("cases")
    void twoThreadsGiveTheBitsOfOneAndMatchTheReference(Backend backend, Case c) {
        // a shared arena, so that pool threads may run slabs
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(c.seed());
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, c.e(), c.h(), c.hkv(), true, c.packed());
            Tensor x = input(a, r, c, c.l());
            Tensor kv = c.cross() ? input(a, r, c, c.lkv()) : null;
            SdpaOptions o = c.cross() ? SdpaOptions.DEFAULT : SdpaOptions.CAUSAL;
            Tensor ref = Tensor.allocate(a, c.b(), c.l(), c.e());
            MhaTestSupport.referenceForward(w, x, kv, ref, o);
            float[][] got = new float[2][];
            for (int threads = 1; threads <= 2; threads++) {
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend, threads);
                Tensor out = output(a, c);
                layer.forward(x, kv, out, o, layer.newWorkspace(a, c.b(), c.l(), c.lkv()));
                got[threads - 1] = out.toArray();
            }
            String what = backend + " " + c;
            assertWithinFloat32(ref.toArray(), got[0], c.e(), c.lkv(), what);
            assertArrayEquals(got[0], got[1], what + ": threads 1 vs 2");
        }
    }

    /** A prefill of 130 tokens through decode: projections cut into slabs, the same bits on one and two threads. */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void prefillThroughDecodeIsBitIdenticalAcrossThreads(Backend backend) {
        long seed = 66;
        int e = 192;
        int n = 130;
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 4, 2, true, true);
            Tensor x = rand(a, r, 1f, 1, n, e);
            Tensor ref = Tensor.allocate(a, 1, n, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            float[][] got = new float[2][];
            for (int threads = 1; threads <= 2; threads++) {
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend, threads);
                KvCache cache = layer.newCache(a, n + 1);
                Tensor out = Tensor.allocate(a, 1, n, e).fill(Float.NaN);
                layer.decode(x, cache, out, layer.newWorkspace(a, 1, n, cache.capacity()));
                got[threads - 1] = out.toArray();
            }
            String what = backend + " seed=" + seed + " E=" + e + " H=4 Hkv=2 n=" + n + " decode";
            assertWithinFloat32(ref.toArray(), got[0], e, n, what);
            assertArrayEquals(got[0], got[1], what + ": threads 1 vs 2");
        }
    }

    /**
     * A two-token decode step at E = 1024 (12.6 MFLOP for [W_Q; W_K; W_V]: over the threshold): each column slab
     * is two matrix-vector products. The same bits on one and two threads, and the last rows of the reference.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void fewTokenStepIsCutIntoMatrixVectorSlabs(Backend backend) {
        long seed = 69;
        int e = 1024;
        int prefix = 3;
        int n = prefix + 2;
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 8, 8, true, true);
            Tensor x = rand(a, r, 1f, 1, n, e);
            Tensor ref = Tensor.allocate(a, 1, n, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            float[][] got = new float[2][];
            for (int threads = 1; threads <= 2; threads++) {
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend, threads);
                KvCache cache = layer.newCache(a, n);
                MhaWorkspace ws = layer.newWorkspace(a, 1, prefix, cache.capacity());
                layer.decode(x.slice(1, 0, prefix), cache, Tensor.allocate(a, 1, prefix, e), ws);
                Tensor out = Tensor.allocate(a, 1, 2, e).fill(Float.NaN);
                layer.decode(x.slice(1, prefix, n), cache, out, ws);
                got[threads - 1] = out.toArray();
            }
            String what = backend + " seed=" + seed + " E=" + e + " H=8 Hkv=8 step of 2 after " + prefix;
            assertWithinFloat32(ref.slice(1, prefix, n).toArray(), got[0], e, n, what);
            assertArrayEquals(got[0], got[1], what + ": threads 1 vs 2");
        }
    }

    /**
     * Memory of a confined arena cannot be touched by pool threads: a two-thread layer runs every slab on the
     * caller, with the same bits as the same call in a shared arena (same seed, same values).
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void confinedArenaRunsOnTheCallerWithTheSameBits(Backend backend) {
        Case c = new Case(67, 2, 150, 150, 160, 4, 2, true, false, false);
        float[][] got = new float[2][];
        int i = 0;
        for (Arena a : new Arena[] {Arena.ofConfined(), Arena.ofShared()}) {
            try (a) {
                Random r = new Random(c.seed());
                MhaWeights w = MultiHeadAttentionTest.weights(a, r, c.e(), c.h(), c.hkv(), true, c.packed());
                Tensor x = input(a, r, c, c.l());
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend, 2);
                Tensor out = output(a, c);
                layer.forward(x, out, SdpaOptions.CAUSAL, layer.newWorkspace(a, c.b(), c.l(), c.l()));
                got[i++] = out.toArray();
            }
        }
        assertArrayEquals(got[1], got[0], backend + " " + c + ": confined vs shared arena");
    }

    /** Callers sharing one two-thread layer (each its own workspace) find the pool busy or free: same bits. */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void callersSharingALayerGetTheSingleThreadedBits(Backend backend) throws Exception {
        Case c = new Case(68, 1, 150, 150, 160, 4, 2, true, false, false);
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(c.seed());
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, c.e(), c.h(), c.hkv(), true, c.packed());
            Tensor x = input(a, r, c, c.l());
            Tensor want = output(a, c);
            MultiHeadAttention single = MultiHeadAttention.create(w, backend, 1);
            single.forward(x, want, SdpaOptions.CAUSAL, single.newWorkspace(a, c.b(), c.l(), c.l()));
            float[] expected = want.toArray();
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend, 2);
            int callers = 3;
            ExecutorService pool = Executors.newFixedThreadPool(callers);
            try {
                List<Future<float[]>> results = new ArrayList<>();
                for (int t = 0; t < callers; t++) {
                    MhaWorkspace ws = layer.newWorkspace(a, c.b(), c.l(), c.l());
                    Tensor out = output(a, c);
                    results.add(pool.submit(() -> {
                        for (int i = 0; i < 5; i++) {
                            layer.forward(x, out, SdpaOptions.CAUSAL, ws);
                        }
                        return out.toArray();
                    }));
                }
                for (Future<float[]> f : results) {
                    assertArrayEquals(expected, f.get(), backend + " " + c);
                }
            } finally {
                pool.shutdown();
            }
        }
    }

    /** {@code [B, rows, E]}: contiguous, or for padded batches a view with 5 unused rows after each batch. */
    private static Tensor input(Arena a, Random r, Case c, int rows) {
        if (!c.paddedBatches()) {
            return rand(a, r, 1f, c.b(), rows, c.e());
        }
        return rand(a, r, 1f, c.b(), rows + 5, c.e()).slice(1, 0, rows);
    }

    private static Tensor output(Arena a, Case c) {
        return c.paddedBatches()
                ? Tensor.allocate(a, c.b(), c.l() + 5, c.e()).fill(Float.NaN).slice(1, 0, c.l())
                : Tensor.allocate(a, c.b(), c.l(), c.e()).fill(Float.NaN);
    }
}
