package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.PerThread;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
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
 * Threads sharing one {@link Attention} (and, in one test, the same read-only q, k, v) must get results that are
 * bit-identical to the same calls made one at a time: no shared scratch, no race. Shapes differ between calls so
 * that the per-thread workspaces grow while other threads run.
 */
class ConcurrencyTest {
    private static final int THREADS = 4;
    private static int blasThreads;

    /** The documented policy for callers that bring their own threads: one OpenBLAS thread per product. */
    @BeforeAll
    static void oneBlasThread() {
        blasThreads = OpenBlas.get().threads();
        OpenBlas.get().setThreads(1);
    }

    @AfterAll
    static void restoreBlasThreads() {
        OpenBlas.get().setThreads(blasThreads);
    }
    private static final int ROUNDS = Integer.getInteger("qkv.fuzz.iterations", 0) > 0 ? 40 : 4;

    /** One call and the bits it gave when made alone. */
    record Call(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, int[] expected) {
    }

    private static List<Call> calls(Arena arena, Random r, int count, Tensor[] shared) {
        List<Call> list = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            long b = 1 + r.nextInt(2);
            long hkv = 1 + r.nextInt(2);
            long hq = hkv * (1 + r.nextInt(3));
            long lq = Fuzz.pick(r, 1, 7, 64, 65, 70);
            long lk = Fuzz.pick(r, 1, 17, 65, 130);
            long dk = Fuzz.pick(r, 16, 17, 64);
            long dv = Fuzz.pick(r, 8, 64);
            Tensor q;
            Tensor k;
            Tensor v;
            if (shared != null) {
                q = shared[0];
                k = shared[1];
                v = shared[2];
            } else {
                q = Fuzz.random(arena, r, b, hq, lq, dk);
                k = Fuzz.random(arena, r, b, hkv, lk, dk);
                v = Fuzz.random(arena, r, b, hkv, lk, dv);
            }
            Tensor out = Tensor.allocate(arena, q.size(0), q.size(1), q.size(2), v.size(3));
            Mask mask = null;
            if (r.nextBoolean()) {
                float[] allowed = new float[(int) (q.size(2) * k.size(2))];
                for (int j = 0; j < allowed.length; j++) {
                    allowed[j] = r.nextInt(4) == 0 ? 0f : 1f;
                }
                mask = Mask.allowed(Tensor.of(arena, allowed, q.size(2), k.size(2)));
            }
            list.add(new Call(q, k, v, out, new SdpaOptions(r.nextBoolean(), mask, Float.NaN), null));
        }
        return list;
    }

    private static int[] bits(Tensor t) {
        float[] x = t.toArray();
        int[] b = new int[x.length];
        for (int i = 0; i < x.length; i++) {
            b[i] = Float.floatToRawIntBits(x[i]);
        }
        return b;
    }

    private static List<Call> withExpected(Attention att, List<Call> calls) {
        List<Call> done = new ArrayList<>();
        for (Call c : calls) {
            att.sdpa(c.q, c.k, c.v, c.out, c.options);
            done.add(new Call(c.q, c.k, c.v, c.out, c.options, bits(c.out)));
        }
        return done;
    }

    /** Runs each thread's calls ROUNDS times, all threads at once, and returns the first mismatch (or "none"). */
    private static String race(Attention att, List<List<Call>> perThread, boolean ownWorkspace, Arena arena)
            throws Exception {
        CyclicBarrier start = new CyclicBarrier(perThread.size());
        List<Future<String>> results = new ArrayList<>();
        try (ExecutorService pool = Executors.newFixedThreadPool(perThread.size())) {
            for (int t = 0; t < perThread.size(); t++) {
                List<Call> mine = perThread.get(t);
                Workspace ws = ownWorkspace ? Workspace.allocate(arena, 8 << 20) : null;
                int thread = t;
                Callable<String> job = () -> {
                    start.await();
                    for (int round = 0; round < ROUNDS; round++) {
                        for (int i = 0; i < mine.size(); i++) {
                            Call c = mine.get(i);
                            c.out.fill(Float.NaN);
                            if (ws != null) {
                                att.sdpa(c.q, c.k, c.v, c.out, c.options, ws);
                            } else {
                                att.sdpa(c.q, c.k, c.v, c.out, c.options);
                            }
                            int[] got = bits(c.out);
                            for (int e = 0; e < got.length; e++) {
                                if (got[e] != c.expected[e]) {
                                    return "thread " + thread + " round " + round + " call " + i + " q=" + c.q
                                            + " k=" + c.k + " element " + e + ": " + Float.intBitsToFloat(got[e])
                                            + " instead of " + Float.intBitsToFloat(c.expected[e]);
                                }
                            }
                        }
                    }
                    return "none";
                };
                results.add(pool.submit(job));
            }
            for (Future<String> f : results) {
                String s = f.get();
                if (!s.equals("none")) {
                    return s;
                }
            }
        }
        return "none";
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void threadsWithTheirOwnInputsMatchSerialCallsBitForBit(Backend backend) throws Exception {
        long seed = Fuzz.seed("concurrency-own-" + backend);
        Attention att = Attention.create(backend);
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(seed);
            List<List<Call>> perThread = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                perThread.add(withExpected(att, calls(arena, r, 5, null)));
            }
            assertEquals("none", race(att, perThread, false, arena), "seed=" + seed + " per-thread workspace");
            assertEquals("none", race(att, perThread, true, arena), "seed=" + seed + " caller workspaces");
        }
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void threadsSharingReadOnlyInputsMatchSerialCallsBitForBit(Backend backend) throws Exception {
        long seed = Fuzz.seed("concurrency-shared-" + backend);
        Attention att = Attention.create(backend);
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(seed);
            Tensor[] qkv = {Fuzz.random(arena, r, 2, 4, 70, 64), Fuzz.random(arena, r, 2, 2, 130, 64),
                Fuzz.random(arena, r, 2, 2, 130, 32)};
            List<List<Call>> perThread = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                perThread.add(withExpected(att, calls(arena, r, 3, qkv)));
            }
            assertEquals("none", race(att, perThread, false, arena), "seed=" + seed);
        }
    }

    /**
     * Virtual threads, one per call as a request server runs them, more at once than {@link PerThread#LEASES}:
     * their scratch comes from the pool of leases (see {@link PerThread}), which calls in flight never share, so
     * every result has the bits of the same call made alone on a platform thread.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void aVirtualThreadPerCallMatchesSerialCallsBitForBit(Backend backend) throws Exception {
        long seed = Fuzz.seed("concurrency-virtual-" + backend);
        Attention att = Attention.create(backend);
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(seed);
            List<Call> calls = withExpected(att, calls(arena, r, 12, null));
            int n = Math.max(3 * PerThread.LEASES, 4 * calls.size());
            List<Future<String>> results = new ArrayList<>();
            try (ExecutorService pool = Executors.newVirtualThreadPerTaskExecutor()) {
                for (int i = 0; i < n; i++) {
                    Call c = calls.get(i % calls.size());
                    Tensor out = Tensor.allocate(arena, c.out.shape()).fill(Float.NaN);
                    boolean ownWorkspace = i % 3 == 0;
                    Workspace ws = ownWorkspace ? Workspace.allocate(arena, 8 << 20) : null;
                    int task = i;
                    results.add(pool.submit(() -> {
                        if (ws != null) {
                            att.sdpa(c.q, c.k, c.v, out, c.options, ws);
                        } else {
                            att.sdpa(c.q, c.k, c.v, out, c.options);
                        }
                        int[] got = bits(out);
                        for (int e = 0; e < got.length; e++) {
                            if (got[e] != c.expected[e]) {
                                return "task " + task + " q=" + c.q + " k=" + c.k + " element " + e + ": "
                                        + Float.intBitsToFloat(got[e]) + " instead of "
                                        + Float.intBitsToFloat(c.expected[e]);
                            }
                        }
                        return "none";
                    }));
                }
                for (Future<String> f : results) {
                    assertEquals("none", f.get(), "seed=" + seed);
                }
            }
        }
    }

    /**
     * Results must not depend on the OpenBLAS thread count either (OpenBLAS splits a product over rows and
     * columns, never over the reduction), so serial results with several OpenBLAS threads match racing calls
     * with one.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE"})
    void resultsDoNotDependOnTheOpenBlasThreadCount(Backend backend) throws Exception {
        OpenBlas blas = OpenBlas.get();
        int before = blas.threads();
        Attention att = Attention.create(backend);
        try (Arena arena = Arena.ofShared()) {
            blas.setThreads(Math.max(2, before));
            List<List<Call>> perThread = new ArrayList<>();
            Random r = new Random(Fuzz.seed("concurrency-blas-threads"));
            for (int t = 0; t < THREADS; t++) {
                perThread.add(withExpected(att, calls(arena, r, 3, null)));
            }
            blas.setThreads(1);
            assertEquals("none", race(att, perThread, false, arena));
        } finally {
            blas.setThreads(before);
        }
    }

    /**
     * Changing the OpenBLAS thread count while other threads are inside {@code cblas_sgemm} (a process-wide
     * setting that callers with their own pools may touch at any time) neither crashes nor changes results:
     * 0.5 · 0.5 summed 256 times is exactly 64.
     */
    @Test
    void changingOpenBlasThreadsDuringProductsIsSafe() throws Exception {
        OpenBlas blas = OpenBlas.get();
        AtomicBoolean stop = new AtomicBoolean();
        List<Future<String>> workers = new ArrayList<>();
        int toggles = 0;
        try (ExecutorService pool = Executors.newFixedThreadPool(3)) {
            for (int t = 0; t < 3; t++) {
                workers.add(pool.submit(() -> {
                    try (Arena arena = Arena.ofConfined()) {
                        Tensor x = Tensor.allocate(arena, 256, 256).fill(0.5f);
                        Tensor c = Tensor.allocate(arena, 256, 256);
                        long products = 0;
                        while (!stop.get()) {
                            blas.matmul(Transpose.NO, x, Transpose.YES, x, 1f, 0f, c);
                            products++;
                            for (float e : c.toArray()) {
                                if (e != 64f) {
                                    return "product " + products + " gave " + e;
                                }
                            }
                        }
                        return "none";
                    }
                }));
            }
            long end = System.nanoTime() + 1_500_000_000L;
            while (System.nanoTime() < end) {
                blas.setThreads(1 + toggles++ % 2);
                Thread.sleep(0, 200_000);
            }
            stop.set(true);
            for (Future<String> f : workers) {
                assertEquals("none", f.get());
            }
        } finally {
            blas.setThreads(1);
        }
        System.out.println("OpenBLAS thread count changed " + toggles + " times during products");
    }
}
