package dev.qkv.reliability;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
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
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicBoolean;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Threads sharing one {@link MultiHeadAttention} and its weights, each with its own inputs, output and workspace
 * (and, for decoding, its own KV cache), get results bit-identical to the same calls made one at a time.
 */
class MhaConcurrencyTest {
    private static final int THREADS = 4;
    private static final int ROUNDS = Integer.getInteger("qkv.fuzz.iterations", 0) > 0 ? 30 : 3;
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

    /** Runs every task once per round, all threads released together; returns each task's results per round. */
    private static List<List<int[]>> race(List<Callable<int[]>> tasks) throws Exception {
        return race(tasks, false);
    }

    /**
     * {@link #race(List)} on platform threads, or on a fresh virtual thread per task and round (a request server's
     * threads, whose scratch comes from {@link dev.qkv.kernel.PerThread}'s leases).
     */
    private static List<List<int[]>> race(List<Callable<int[]>> tasks, boolean virtual) throws Exception {
        ExecutorService pool = virtual ? Executors.newVirtualThreadPerTaskExecutor()
                : Executors.newFixedThreadPool(tasks.size());
        try {
            List<List<int[]>> all = new ArrayList<>();
            for (int round = 0; round < ROUNDS; round++) {
                CyclicBarrier start = new CyclicBarrier(tasks.size());
                List<Future<int[]>> fs = new ArrayList<>();
                for (Callable<int[]> t : tasks) {
                    fs.add(pool.submit(() -> {
                        start.await();
                        return t.call();
                    }));
                }
                List<int[]> got = new ArrayList<>();
                for (Future<int[]> f : fs) {
                    got.add(f.get());
                }
                all.add(got);
            }
            return all;
        } finally {
            pool.shutdown();
        }
    }

    private static int[] bits(Tensor t) {
        float[] v = t.toArray();
        int[] b = new int[v.length];
        for (int i = 0; i < v.length; i++) {
            b[i] = Float.floatToRawIntBits(v[i]);
        }
        return b;
    }

    private static void assertSame(List<int[]> serial, List<List<int[]>> raced, String what) {
        for (int round = 0; round < raced.size(); round++) {
            for (int t = 0; t < serial.size(); t++) {
                int[] want = serial.get(t);
                int[] got = raced.get(round).get(t);
                int first = Arrays.mismatch(want, got);
                assertEquals(-1, first, what + ": thread " + t + " round " + round + " differs at element " + first);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void threadsSharingOneLayerMatchSerialCallsBitForBit(Backend backend) throws Exception {
        try (Arena shared = Arena.ofShared()) {
            Random r = new Random(Fuzz.seed("mha-threads"));
            MultiHeadAttention layer = MultiHeadAttention.create(MhaLayers.weights(shared, r, 8, 2, 16, true, true),
                    backend);
            List<Callable<int[]>> tasks = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                // a mix of self, causal, masked and cross calls of different lengths, one kind per thread
                long b = 1 + t % 2;
                long l = Fuzz.pick(r, 17, 65, 70);
                boolean cross = t % 2 == 1;
                long lkv = cross ? 33 + t : l;
                Tensor x = MhaLayers.rand(shared, r, 1f, b, l, 128);
                Tensor kv = cross ? MhaLayers.rand(shared, r, 1f, b, lkv, 128) : null;
                SdpaOptions options = t == 2 ? new SdpaOptions(true, Mask.additive(
                        MhaLayers.rand(shared, r, 2f, b, 1, l, lkv)), Float.NaN) : (t == 0 ? SdpaOptions.CAUSAL
                        : SdpaOptions.DEFAULT);
                Tensor out = Tensor.allocate(shared, b, l, 128);
                MhaWorkspace ws = layer.newWorkspace(shared, b, l, lkv);
                tasks.add(() -> {
                    layer.forward(x, kv, out, options, ws);
                    return bits(out);
                });
            }
            List<int[]> serial = new ArrayList<>();
            for (Callable<int[]> t : tasks) {
                serial.add(t.call());
            }
            assertSame(serial, race(tasks), backend + " forward");
            assertSame(serial, race(tasks, true), backend + " forward, virtual threads");
        }
    }

    /**
     * Misuse: two threads sharing one workspace. Each call either gives exactly the serial result or is refused
     * as the workspace is in use; never a result that differs (the two calls' projections and views mixed).
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void threadsSharingOneWorkspaceAreRefusedNotMixed(Backend backend) throws Exception {
        try (Arena shared = Arena.ofShared()) {
            Random r = new Random(Fuzz.seed("mha-shared-workspace"));
            MultiHeadAttention layer = MultiHeadAttention.create(MhaLayers.weights(shared, r, 8, 2, 16, true, true),
                    backend, 1);
            MhaWorkspace ws = layer.newWorkspace(shared, 1, 64, 64);
            List<Callable<int[]>> tasks = new ArrayList<>();
            int[] refused = new int[1];
            for (int t = 0; t < 2; t++) {
                Tensor x = MhaLayers.rand(shared, r, 1f, 1, 64, 128);
                Tensor out = Tensor.allocate(shared, 1, 64, 128);
                tasks.add(() -> {
                    for (;;) {
                        try {
                            layer.forward(x, out, SdpaOptions.CAUSAL, ws);
                            return bits(out);
                        } catch (IllegalStateException e) {
                            org.junit.jupiter.api.Assertions.assertTrue(e.getMessage().contains("in use by another"
                                    + " call"), e.getMessage());
                            synchronized (refused) {
                                refused[0]++;
                            }
                        }
                    }
                });
            }
            List<int[]> serial = new ArrayList<>();
            for (Callable<int[]> t : tasks) {
                serial.add(t.call());
            }
            for (int i = 0; i < 20; i++) {
                assertSame(serial, race(tasks), backend + " one workspace, " + refused[0] + " calls refused");
            }
        }
    }

    /**
     * Misuse: two threads decoding into one KV cache, each with its own workspace. A decode either appends its
     * rows after every row appended before it or is refused as the cache is in use; never two steps appending at
     * the same position. One thread decodes a chunk of 256 tokens once while the other decodes one token again and
     * again until the chunk is in; afterwards the cache must hold the chunk's rows together and the single token's
     * rows everywhere else, each as decoding it alone into a fresh cache stores it, and its length must count
     * every decode that returned. Before the fix both steps read the same length, wrote the same positions and
     * both advanced it: the chunk's first rows were overwritten and the cache counted positions nobody wrote.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void twoDecodesIntoOneCacheAreRefusedNotMixed(Backend backend) throws Exception {
        try (Arena shared = Arena.ofShared()) {
            Random r = new Random(Fuzz.seed("mha-shared-cache"));
            MultiHeadAttention layer = MultiHeadAttention.create(MhaLayers.weights(shared, r, 8, 2, 16, true, false),
                    backend, 1);
            int chunk = 256;
            int capacity = chunk + 512;
            Tensor xa = MhaLayers.rand(shared, r, 1f, 1, chunk, 128);
            Tensor xb = MhaLayers.rand(shared, r, 1f, 1, 1, 128);
            MhaWorkspace wa = layer.newWorkspace(shared, 1, chunk, capacity);
            MhaWorkspace wb = layer.newWorkspace(shared, 1, 1, capacity);
            Tensor oa = Tensor.allocate(shared, 1, chunk, 128);
            Tensor ob = Tensor.allocate(shared, 1, 1, 128);
            // what each step stores, decoded alone
            KvCache alone = layer.newCache(shared, capacity);
            layer.decode(xa, alone, oa, wa);
            float[][] rowsA = {alone.keys().toArray(), alone.values().toArray()};
            alone.reset();
            layer.decode(xb, alone, ob, wb);
            float[][] rowsB = {alone.keys().toArray(), alone.values().toArray()};
            int heads = 2;
            int dh = 16;
            ExecutorService pool = Executors.newFixedThreadPool(2);
            try {
                for (int round = 0; round < 5; round++) {
                    KvCache cache = layer.newCache(shared, capacity);
                    AtomicBoolean chunkIn = new AtomicBoolean();
                    CyclicBarrier start = new CyclicBarrier(2);
                    Future<Integer> a = pool.submit(() -> {
                        start.await();
                        for (;;) {
                            try {
                                layer.decode(xa, cache, oa, wa);
                                chunkIn.set(true);
                                return 1;
                            } catch (IllegalStateException e) {
                                org.junit.jupiter.api.Assertions.assertTrue(e.getMessage().contains("in use by"
                                        + " another call"), e.getMessage());
                            }
                        }
                    });
                    Future<Integer> b = pool.submit(() -> {
                        start.await();
                        int appended = 0;
                        while (!chunkIn.get() && appended < capacity - chunk) {
                            try {
                                layer.decode(xb, cache, ob, wb);
                                appended++;
                            } catch (IllegalStateException e) {
                                org.junit.jupiter.api.Assertions.assertTrue(e.getMessage().contains("in use by"
                                        + " another call"), e.getMessage());
                            }
                        }
                        return appended;
                    });
                    a.get();
                    int singles = b.get();
                    int length = cache.length();
                    assertEquals(chunk + singles, length, backend + " round " + round + ": positions cached, after"
                            + " one chunk of " + chunk + " and " + singles + " single tokens");
                    float[][] got = {cache.keys().toArray(), cache.values().toArray()};
                    // the chunk's rows lie together, at the position of the first row that is not the token's
                    int at = 0;
                    while (at < singles && sameRow(got[0], length, 0, at, rowsB[0], 1, 0, 0, dh)) {
                        at++;
                    }
                    for (int kv = 0; kv < 2; kv++) {
                        for (int g = 0; g < heads; g++) {
                            for (int p = 0; p < length; p++) {
                                boolean ok = p >= at && p < at + chunk
                                        ? sameRow(got[kv], length, g, p, rowsA[kv], chunk, g, p - at, dh)
                                        : sameRow(got[kv], length, g, p, rowsB[kv], 1, g, 0, dh);
                                org.junit.jupiter.api.Assertions.assertTrue(ok, backend + " round " + round + ": "
                                        + (kv == 0 ? "key" : "value") + " row " + p + " of kv head " + g
                                        + " is neither the chunk's nor the token's (chunk at " + at + ", "
                                        + singles + " tokens)");
                            }
                        }
                    }
                }
            } finally {
                pool.shutdownNow();
            }
        }
    }

    /** Row {@code p} of head {@code g} of a flat {@code [Hkv, len, dh]} equals row {@code q} of head {@code h}. */
    private static boolean sameRow(float[] x, int len, int g, int p, float[] y, int yLen, int h, int q, int dh) {
        return Arrays.equals(x, (g * len + p) * dh, (g * len + p + 1) * dh, y, (h * yLen + q) * dh,
                (h * yLen + q + 1) * dh);
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void decodingSeparateCachesInParallelMatchesSerialDecoding(Backend backend) throws Exception {
        try (Arena shared = Arena.ofShared()) {
            Random r = new Random(Fuzz.seed("mha-decode-threads"));
            MultiHeadAttention layer = MultiHeadAttention.create(MhaLayers.weights(shared, r, 4, 2, 16, true, false),
                    backend);
            List<Callable<int[]>> tasks = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                int chunks = 6;
                List<Tensor> xs = new ArrayList<>();
                int total = 0;
                for (int c = 0; c < chunks; c++) {
                    int n = c == 0 ? 20 + t : 1 + r.nextInt(3);
                    xs.add(MhaLayers.rand(shared, r, 1f, 1, n, 64));
                    total += n;
                }
                KvCache cache = layer.newCache(shared, total);
                MhaWorkspace ws = layer.newWorkspace(shared, 1, 23, total);
                Tensor all = Tensor.allocate(shared, 1, total, 64);
                tasks.add(() -> {
                    cache.reset();
                    long at = 0;
                    for (Tensor x : xs) {
                        Tensor o = all.slice(1, at, at + x.size(1));
                        layer.decode(x, cache, o, ws);
                        at += x.size(1);
                    }
                    return bits(all);
                });
            }
            List<int[]> serial = new ArrayList<>();
            for (Callable<int[]> t : tasks) {
                serial.add(t.call());
            }
            assertSame(serial, race(tasks), backend + " decode");
            assertSame(serial, race(tasks, true), backend + " decode, virtual threads");
        }
    }
}
