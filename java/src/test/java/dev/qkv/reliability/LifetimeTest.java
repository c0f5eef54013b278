package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.ref.WeakReference;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Memory whose lifetime has ended, or that belongs to another thread: every entry point must answer with an
 * exception, never touch the memory (no segfault), and never write a partial result.
 */
class LifetimeTest {

    private static Tensor[] qkvo(Arena arena, Random r) {
        return new Tensor[] {
            Fuzz.random(arena, r, 1, 2, 70, 16), Fuzz.random(arena, r, 1, 1, 70, 16),
            Fuzz.random(arena, r, 1, 1, 70, 8), Tensor.allocate(arena, 1, 2, 70, 8)};
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void sdpaOnAClosedArenaThrowsIllegalStateNamingTheTensor(Backend backend) {
        Attention att = Attention.create(backend);
        String[] names = {"q", "k", "v", "out", "mask"};
        for (int victim = 0; victim < names.length; victim++) {
            try (Arena live = Arena.ofConfined()) {
                Arena doomed = Arena.ofConfined();
                Random r = new Random(victim);
                Tensor[] t = qkvo(live, r);
                Tensor mask = Tensor.allocate(live, 70, 70).fill(1f);
                Tensor[] dead = qkvo(doomed, r);
                Tensor deadMask = Tensor.allocate(doomed, 70, 70);
                doomed.close();
                if (victim < 4) {
                    t[victim] = dead[victim];
                } else {
                    mask = deadMask;
                }
                Tensor[] args = t;
                SdpaOptions options = SdpaOptions.CAUSAL.withMask(Mask.allowed(mask));
                IllegalStateException e = assertThrows(IllegalStateException.class,
                        () -> att.sdpa(args[0], args[1], args[2], args[3], options));
                assertTrue(e.getMessage().startsWith(names[victim] + " ["), e.getMessage());
                if (victim != 3) {
                    assertTrue(allZero(t[3]), "a rejected call wrote into out");
                }
            }
        }
    }

    @Test
    void sdpaWithAClosedWorkspaceThrowsIllegalState() {
        Workspace ws;
        try (Arena scratch = Arena.ofConfined()) {
            ws = Workspace.allocate(scratch, 1 << 20);
        }
        Workspace gone = ws;
        try (Arena arena = Arena.ofConfined()) {
            Tensor[] t = qkvo(arena, new Random(3));
            for (Backend b : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
                assertThrows(IllegalStateException.class,
                        () -> Attention.create(b).sdpa(t[0], t[1], t[2], t[3], SdpaOptions.DEFAULT, gone));
            }
            assertTrue(allZero(t[3]));
        }
    }

    @Test
    void matmulOnAClosedArenaThrowsIllegalState() {
        Arena doomed = Arena.ofConfined();
        Tensor deadA = Tensor.allocate(doomed, 8, 8);
        MemorySegment deadSeg = deadA.segment();
        doomed.close();
        try (Arena arena = Arena.ofConfined()) {
            Tensor b = Fuzz.random(arena, new Random(1), 8, 8);
            Tensor c = Tensor.allocate(arena, 8, 8);
            assertThrows(IllegalStateException.class,
                    () -> OpenBlas.get().matmul(Transpose.NO, deadA, Transpose.NO, b, 1f, 0f, c));
            assertThrows(IllegalStateException.class,
                    () -> OpenBlas.get().matmul(Transpose.NO, b, Transpose.NO, b.transpose(), 1f, 0f, deadA));
            for (MatmulKernel k : new MatmulKernel[] {MatmulKernel.openBlas(), MatmulKernel.javaScalar()}) {
                assertThrows(IllegalStateException.class, () -> k.matmul(Transpose.NO, Transpose.NO, 8, 8, 8, 1f,
                        deadSeg, 0, 8, b.segment(), 0, 8, 0f, c.segment(), 0, 8));
                assertThrows(IllegalStateException.class, () -> k.matmul(Transpose.NO, Transpose.NO, 8, 8, 8, 1f,
                        b.segment(), 0, 8, b.segment(), 0, 8, 0f, deadSeg, 0, 8));
            }
            assertTrue(allZero(c));
        }
    }

    /**
     * A confined arena's memory used from another thread: the JDK refuses with {@link WrongThreadException} (a
     * {@link RuntimeException}, not an {@link IllegalStateException}), on every backend, from the Java accessors
     * and from the downcall alike, before anything is written.
     */
    @Test
    void confinedMemoryFromAnotherThreadThrowsWrongThreadException() throws Exception {
        List<String> seen = new ArrayList<>();
        try (Arena confined = Arena.ofConfined(); ExecutorService other = Executors.newSingleThreadExecutor()) {
            Random r = new Random(5);
            Tensor[] owned = qkvo(confined, r);
            for (Backend b : Backend.values()) {
                for (int victim = 0; victim < 4; victim++) {
                    try (Arena shared = Arena.ofShared()) {
                        Tensor[] t = qkvo(shared, new Random(victim));
                        t[victim] = owned[victim];
                        Attention att = Attention.create(b);
                        Future<Throwable> f = other.submit(() -> {
                            try {
                                att.sdpa(t[0], t[1], t[2], t[3], SdpaOptions.CAUSAL);
                                return null;
                            } catch (Throwable e) {
                                return e;
                            }
                        });
                        Throwable e = f.get();
                        assertInstanceOf(WrongThreadException.class, e, b + " victim " + victim);
                        seen.add(b + "/" + victim + ": " + e.getClass().getSimpleName());
                        if (victim != 3) {
                            assertTrue(allZero(t[3]), b + ": a refused call wrote into out");
                        }
                    }
                }
            }
            Tensor ownedA = Fuzz.random(confined, r, 8, 8);
            try (Arena shared = Arena.ofShared()) {
                Tensor b = Fuzz.random(shared, r, 8, 8);
                Tensor c = Tensor.allocate(shared, 8, 8);
                for (MatmulKernel k : new MatmulKernel[] {MatmulKernel.openBlas(), MatmulKernel.javaScalar()}) {
                    Future<Throwable> f = other.submit(() -> {
                        try {
                            k.matmul(Transpose.NO, Transpose.NO, 8, 8, 8, 1f, ownedA.segment(), 0, 8, b.segment(), 0, 8,
                                    0f, c.segment(), 0, 8);
                            return null;
                        } catch (Throwable e) {
                            return e;
                        }
                    });
                    Throwable e = f.get();
                    assertInstanceOf(WrongThreadException.class, e, k.name());
                    seen.add(k.name() + ": " + e.getClass().getSimpleName());
                    assertTrue(allZero(c));
                }
            }
        }
        System.out.println("wrong-thread use: " + seen);
    }

    /**
     * A shared arena closed by one thread while another runs attention in a loop: the worker either finishes a
     * call or stops with {@link IllegalStateException}; {@code close} either succeeds or throws
     * {@link IllegalStateException} while a native call holds the memory. No crash, nothing else.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void closingASharedArenaDuringCallsFailsCleanly(Backend backend) throws Exception {
        Attention att = Attention.create(backend);
        int closedWhileBusy = 0;
        int stopped = 0;
        for (int round = 0; round < 20; round++) {
            Arena shared = Arena.ofShared();
            Tensor[] t = qkvo(shared, new Random(round));
            CountDownLatch started = new CountDownLatch(1);
            AtomicReference<Throwable> failure = new AtomicReference<>();
            Thread worker = new Thread(() -> {
                started.countDown();
                try {
                    for (int i = 0; i < 100_000; i++) {
                        att.sdpa(t[0], t[1], t[2], t[3], SdpaOptions.CAUSAL);
                    }
                } catch (Throwable e) {
                    failure.set(e);
                }
            });
            worker.start();
            started.await();
            Thread.sleep(1 + round % 3);
            while (true) {
                try {
                    shared.close();
                    break;
                } catch (IllegalStateException busy) {
                    closedWhileBusy++;
                    Thread.onSpinWait();
                }
            }
            worker.join();
            Throwable e = failure.get();
            if (e != null) {
                assertInstanceOf(IllegalStateException.class, e, "worker stopped by " + e);
                stopped++;
            }
        }
        System.out.println(backend + ": " + stopped + " of 20 workers stopped by IllegalStateException; close()"
                + " refused " + closedWhileBusy + " times while a native call held the memory");
        assertTrue(stopped > 10, "the arena should close under most running workers");
    }

    /**
     * While {@code cblas_sgemm} runs, the downcall holds its segments' arenas: a shared arena's {@code close} is
     * refused with {@link IllegalStateException}, so OpenBLAS never reads freed memory. Sizes on both sides of
     * the critical-downcall threshold.
     */
    @Test
    void aRunningProductKeepsItsSharedArenaOpen() throws Exception {
        for (int n : new int[] {48, 384}) {
            int refused = 0;
            for (int round = 0; round < 5; round++) {
                Arena shared = Arena.ofShared();
                Tensor a = Fuzz.random(shared, new Random(round), n, n);
                Tensor c = Tensor.allocate(shared, n, n);
                AtomicReference<Throwable> failure = new AtomicReference<>();
                CountDownLatch started = new CountDownLatch(1);
                Thread worker = new Thread(() -> {
                    started.countDown();
                    try {
                        while (true) {
                            OpenBlas.get().matmul(Transpose.NO, a, Transpose.YES, a, 1f, 0f, c);
                        }
                    } catch (Throwable e) {
                        failure.set(e);
                    }
                });
                worker.start();
                started.await();
                Thread.sleep(5);
                while (true) {
                    try {
                        shared.close();
                        break;
                    } catch (IllegalStateException busy) {
                        refused++;
                    }
                }
                worker.join();
                assertInstanceOf(IllegalStateException.class, failure.get());
            }
            System.out.println("sgemm " + n + "^3: close() refused " + refused + " times while the product ran");
            if (n > 64) {
                assertTrue(refused > 0, "a long product must hold its arena");
            }
        }
    }

    /**
     * An {@code Attention} that is no longer referenced is collected, although threads ran calls with it: a
     * thread's reused job must not keep its instance alive. Before the fix each thread's job referred to its
     * instance, whose {@code ThreadLocal} was the job's own key, so the weak key was never cleared: every
     * instance created and dropped by a long-lived thread (one per request, or one per layer built) stayed on
     * the heap with its job for the thread's life (about 460 B each, without bound).
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void aDroppedAttentionIsCollectedAfterItsCalls(Backend backend) throws Exception {
        List<WeakReference<Attention>> dropped = new ArrayList<>();
        try (Arena arena = Arena.ofShared()) {
            Tensor[] t = qkvo(arena, new Random(11));
            for (int i = 0; i < 4; i++) {
                dropped.add(callAndDrop(backend, t, arena));
            }
        }
        long end = System.nanoTime() + 20_000_000_000L;
        while (dropped.stream().anyMatch(r -> r.get() != null)) {
            assertTrue(System.nanoTime() - end < 0, backend + ": dropped instances still reachable after 20 s of"
                    + " collections: " + dropped.stream().filter(r -> r.get() != null).count() + " of 4");
            System.gc();
            Thread.sleep(10);
        }
    }

    /** A fresh instance, every kind of call made with it on this thread, and only a weak reference kept. */
    private static WeakReference<Attention> callAndDrop(Backend backend, Tensor[] t, Arena arena) {
        Attention att = Attention.create(backend);
        att.sdpa(t[0], t[1], t[2], t[3], SdpaOptions.CAUSAL);
        Workspace ws = Workspace.allocate(arena, att.workspaceBytes(t[0], t[1], t[2], t[3], SdpaOptions.CAUSAL));
        att.sdpa(t[0], t[1], t[2], t[3], SdpaOptions.CAUSAL, ws);
        att.plan(t[0], t[1], t[2], t[3], SdpaOptions.CAUSAL);
        return new WeakReference<>(att);
    }

    private static boolean allZero(Tensor t) {
        for (float x : t.toArray()) {
            if (Float.floatToRawIntBits(x) != 0) {
                return false;
            }
        }
        return true;
    }
}
