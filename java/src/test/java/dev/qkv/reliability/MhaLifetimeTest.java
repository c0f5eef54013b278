package dev.qkv.reliability;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.OpenBlas;
import dev.qkv.mha.KvCache;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicBoolean;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The layer's memory ending while it is used: weights whose shared arena another thread closes mid-run, a KV
 * cache whose arena is closed, a cache reused after {@link KvCache#reset}. Clear exceptions, never a crash.
 */
class MhaLifetimeTest {
    private static int blasThreads;

    @BeforeAll
    static void oneBlasThread() {
        blasThreads = OpenBlas.get().threads();
        OpenBlas.get().setThreads(1);
    }

    @AfterAll
    static void restoreBlasThreads() {
        OpenBlas.get().setThreads(blasThreads);
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void closingTheWeightsWhileThreadsRunStopsThemWithIllegalState(Backend backend) throws Exception {
        int threads = 3;
        for (int round = 0; round < 4; round++) {
            Arena shared = Arena.ofShared();
            MultiHeadAttention layer = MultiHeadAttention.create(
                    MhaLayers.weights(shared, new Random(round), 8, 2, 16, true, round % 2 == 0), backend);
            ExecutorService pool = Executors.newFixedThreadPool(threads);
            CountDownLatch running = new CountDownLatch(threads);
            AtomicBoolean closed = new AtomicBoolean();
            List<Future<String>> results = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                int id = t;
                results.add(pool.submit(() -> {
                    try (Arena own = Arena.ofConfined()) {
                        Random r = new Random(100 + id);
                        Tensor x = MhaLayers.rand(own, r, 1f, 2, 70, 128);
                        Tensor out = Tensor.allocate(own, 2, 70, 128);
                        MhaWorkspace ws = layer.newWorkspace(own, 2, 70, 70);
                        running.countDown();
                        int afterClose = 0;
                        while (true) {
                            boolean wasClosed = closed.get();
                            try {
                                layer.forward(x, out, SdpaOptions.CAUSAL, ws);
                            } catch (IllegalStateException e) {
                                return "stopped: " + e.getMessage();
                            }
                            if (wasClosed && ++afterClose > 0) {
                                return "a call after close returned normally";
                            }
                        }
                    }
                }));
            }
            running.await();
            Thread.sleep(20);
            int refused = 0;
            while (true) {
                try {
                    shared.close();
                    break;
                } catch (IllegalStateException inFlight) {
                    // a native product holds the arena open; the contract says close() refuses then
                    refused++;
                    Thread.onSpinWait();
                }
            }
            closed.set(true);
            for (Future<String> f : results) {
                String outcome = f.get();
                assertTrue(outcome.startsWith("stopped: "), backend + " round " + round + ": " + outcome
                        + " (close refused " + refused + " times)");
            }
            pool.shutdown();
            try (Arena own = Arena.ofConfined()) {
                Tensor x = Tensor.allocate(own, 1, 2, 128);
                Tensor out = Tensor.allocate(own, 1, 2, 128).fill(Float.NaN);
                MhaWorkspace ws = layer.newWorkspace(own, 1, 2, 4);
                IllegalStateException e = assertThrows(IllegalStateException.class,
                        () -> layer.forward(x, out, SdpaOptions.DEFAULT, ws));
                assertTrue(e.getMessage().startsWith("W_Q [128, 128]: its arena is closed"), e.getMessage());
                assertThrows(IllegalStateException.class, () -> layer.decode(x, layer.newCache(own, 4), out, ws));
                for (float f : out.toArray()) {
                    assertTrue(Float.isNaN(f), "a call on closed weights wrote into out");
                }
            }
        }
    }

    /** A layer over weights whose arena is closed is refused when it is made, naming the first such weight. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void aLayerOverClosedWeightsIsRefusedWhenMade(Backend backend) {
        Arena gone = Arena.ofShared();
        var w = MhaLayers.weights(gone, new Random(6), 4, 2, 8, true, false);
        gone.close();
        IllegalStateException e = assertThrows(IllegalStateException.class,
                () -> MultiHeadAttention.create(w, backend));
        assertEquals("W_Q [32, 32]: its arena is closed", e.getMessage());
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aCacheWhoseArenaIsClosedIsAnIllegalStateAndOutStaysUntouched(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(5);
            MultiHeadAttention layer = MultiHeadAttention.create(MhaLayers.weights(a, r, 4, 2, 8, true, false),
                    backend);
            Arena cacheArena = Arena.ofConfined();
            KvCache cache = layer.newCache(cacheArena, 16);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 4, 16);
            Tensor x = MhaLayers.rand(a, r, 1f, 1, 4, 32);
            Tensor out = Tensor.allocate(a, 1, 4, 32).fill(Float.NaN);
            layer.decode(x, cache, out, ws);
            out.fill(Float.NaN);
            cacheArena.close();
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> layer.decode(x, cache, out, ws));
            assertTrue(e.getMessage().contains("KV cache"), e.getMessage());
            for (float f : out.toArray()) {
                assertTrue(Float.isNaN(f), "a rejected decode wrote into out");
            }
            assertEquals(4, cache.length());
            assertThrows(IllegalStateException.class, () -> cache.keys().toArray());
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aCacheAfterResetBehavesAsAFreshOneBitForBit(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(6);
            MultiHeadAttention layer = MultiHeadAttention.create(MhaLayers.weights(a, r, 4, 1, 8, true, true), backend);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 9, 40);
            Tensor prefill = MhaLayers.rand(a, r, 1f, 1, 9, 32);
            Tensor other = MhaLayers.rand(a, r, 1f, 1, 7, 32);
            List<Tensor> steps = new ArrayList<>();
            for (int i = 0; i < 5; i++) {
                steps.add(MhaLayers.rand(a, r, 1f, 1, 1 + i % 2, 32));
            }
            KvCache used = layer.newCache(a, 40);
            // fill the reused cache with another sequence first, to the brim of what reset must forget
            Tensor scratch = Tensor.allocate(a, 1, 7, 32);
            for (int i = 0; i < 4; i++) {
                layer.decode(other, used, scratch, ws);
            }
            used.reset();
            assertEquals(0, used.length());
            assertArrayEquals(new long[] {1, 1, 0, 8}, used.keys().shape());
            KvCache fresh = layer.newCache(a, 40);
            for (int i = -1; i < steps.size(); i++) {
                Tensor x = i < 0 ? prefill : steps.get(i);
                Tensor o1 = Tensor.allocate(a, x.shape());
                Tensor o2 = Tensor.allocate(a, x.shape());
                layer.decode(x, used, o1, ws);
                layer.decode(x, fresh, o2, ws);
                float[] v1 = o1.toArray();
                float[] v2 = o2.toArray();
                for (int k = 0; k < v1.length; k++) {
                    assertEquals(Float.floatToRawIntBits(v2[k]), Float.floatToRawIntBits(v1[k]),
                            backend + " step " + i + " element " + k);
                }
            }
            assertEquals(fresh.length(), used.length());
        }
    }
}
