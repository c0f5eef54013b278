package dev.qkv.attention;

import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicIntegerArray;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.abort;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The pool's policy for concurrent callers: helpers take only the cores that the threads inside {@code run} leave
 * free. No timing is asserted: which worker ran each task is recorded, and the counts are the property.
 */
class WorkerPoolTest {

    private static final WorkerPool POOL = WorkerPool.SHARED;
    private static final long WAIT_S = 20;

    /** Callers parked inside {@code run} (each in its one task) until {@link #close}: they hold the cores. */
    private static final class Blockers implements AutoCloseable {
        private final CountDownLatch inside;
        private final CountDownLatch release = new CountDownLatch(1);
        private final List<Thread> threads = new ArrayList<>();

        Blockers(int n) throws InterruptedException {
            this(POOL, n);
        }

        Blockers(WorkerPool pool, int n) throws InterruptedException {
            inside = new CountDownLatch(n);
            for (int i = 0; i < n; i++) {
                Thread t = new Thread(() -> pool.run((task, worker) -> {
                    inside.countDown();
                    await(release);
                }, 1, 0), "blocker-" + i);
                t.setDaemon(true);
                t.start();
                threads.add(t);
            }
            assertTrue(inside.await(WAIT_S, TimeUnit.SECONDS), "blockers did not enter the pool");
        }

        @Override
        public void close() throws InterruptedException {
            release.countDown();
            for (Thread t : threads) {
                t.join(TimeUnit.SECONDS.toMillis(WAIT_S));
            }
        }
    }

    private static void await(CountDownLatch latch) {
        try {
            latch.await(WAIT_S, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static int cores() {
        return POOL.helpers() + 1;
    }

    @Test
    void everyTaskRunsOnceWhateverTheHelpers() {
        int n = 200;
        AtomicIntegerArray runs = new AtomicIntegerArray(n);
        POOL.run((task, worker) -> runs.incrementAndGet(task), n, POOL.helpers());
        for (int t = 0; t < n; t++) {
            assertEquals(1, runs.get(t), "task " + t);
        }
    }

    @Test
    void negativeCountsAreRefusedBeforeAnyTaskRuns() {
        java.util.concurrent.atomic.AtomicInteger runs = new java.util.concurrent.atomic.AtomicInteger();
        IllegalArgumentException c = assertThrows(IllegalArgumentException.class,
                () -> POOL.run((task, worker) -> runs.incrementAndGet(), -1, 1));
        assertTrue(c.getMessage().contains("count -1"), c.getMessage());
        IllegalArgumentException w = assertThrows(IllegalArgumentException.class,
                () -> POOL.run((task, worker) -> runs.incrementAndGet(), 4, -2));
        assertTrue(w.getMessage().contains("wanted -2"), w.getMessage());
        assertEquals(0, runs.get());
        POOL.run((task, worker) -> runs.incrementAndGet(), 0, 1); // no task: nothing runs, nothing refused
        assertEquals(0, runs.get());
    }

    @Test
    void aCallerGetsNoHelperWhileOtherCallersHoldTheOtherCores() throws Exception {
        assumeTrue(POOL.helpers() >= 1, "one core: the pool has no helpers");
        int n = 64;
        AtomicIntegerArray runs = new AtomicIntegerArray(n);
        AtomicIntegerArray byWorker = new AtomicIntegerArray(cores());
        try (Blockers held = new Blockers(cores() - 1)) {
            POOL.run((task, worker) -> {
                runs.incrementAndGet(task);
                byWorker.incrementAndGet(worker);
                // long enough that a woken helper would get some of the tasks
                LockSupport.parkNanos(200_000);
            }, n, POOL.helpers());
        }
        for (int t = 0; t < n; t++) {
            assertEquals(1, runs.get(t), "task " + t);
        }
        assertEquals(n, byWorker.get(0), "every task on the calling thread");
    }

    @Test
    void aHelperStepsAsideWhenAnotherCallerComesIn() throws Exception {
        assumeTrue(POOL.helpers() >= 1, "one core: the pool has no helpers");
        int n = 64;
        AtomicIntegerArray runs = new AtomicIntegerArray(n);
        AtomicIntegerArray byWorker = new AtomicIntegerArray(cores());
        CountDownLatch helperIn = new CountDownLatch(1);
        CountDownLatch othersIn = new CountDownLatch(1);
        AtomicReference<Throwable> failed = new AtomicReference<>();
        // the call: its first tasks on the caller and on helper 1 both wait until the other callers are inside
        // the pool (the caller's also until the helper has started), so that when they go on the cores are taken
        Thread call = new Thread(() -> {
            try {
                POOL.run((task, worker) -> {
                    runs.incrementAndGet(task);
                    if (byWorker.getAndIncrement(worker) == 0 && worker <= 1) {
                        if (worker == 1) {
                            helperIn.countDown();
                        } else {
                            await(helperIn);
                        }
                        await(othersIn);
                    } else {
                        // long enough that a helper still claiming would get some of the tasks left
                        LockSupport.parkNanos(200_000);
                    }
                }, n, POOL.helpers());
            } catch (Throwable e) {
                failed.set(e);
            }
        }, "call");
        call.start();
        if (!helperIn.await(WAIT_S, TimeUnit.SECONDS)) {
            call.join();
            abort("no pool thread was scheduled within " + WAIT_S + " s: nothing to observe");
        }
        try (Blockers others = new Blockers(cores() - 1)) {
            othersIn.countDown();
            call.join(TimeUnit.SECONDS.toMillis(WAIT_S));
        }
        assertEquals(null, failed.get());
        for (int t = 0; t < n; t++) {
            assertEquals(1, runs.get(t), "task " + t);
        }
        // helper 1 finished the task it was running, then claimed nothing more: the cores were the callers'
        assertEquals(1, byWorker.get(1), "tasks run by helper 1");
        assertEquals(n - 1, byWorker.get(0) + (cores() > 2 ? sumFrom(byWorker, 2) : 0), "tasks run by the rest");
    }

    /** Polls {@code condition} every millisecond until it holds, failing after {@link #WAIT_S}. */
    private static void waitUntil(java.util.function.BooleanSupplier condition, java.util.function.Supplier<String> what) {
        waitUntil(condition, TimeUnit.SECONDS.toNanos(WAIT_S), what);
    }

    /** Polls {@code condition} every millisecond until it holds, failing after {@code nanos}. */
    private static void waitUntil(java.util.function.BooleanSupplier condition, long nanos,
                                  java.util.function.Supplier<String> what) {
        long end = System.nanoTime() + nanos;
        while (!condition.getAsBoolean()) {
            assertTrue(System.nanoTime() - end < 0, what);
            LockSupport.parkNanos(1_000_000);
        }
    }

    /**
     * A pool of the test's own with spinning on (the shared pool spins only with {@code -Dqkv.pool.spinMicros};
     * `make fuzz` runs the concurrency tests so): one thread per core but one, as the shared pool. Its own, so that
     * no test finds the pool quiet after another.
     */
    private static WorkerPool spinningPool() {
        return new WorkerPool(Math.max(1, cores() - 1), 50_000);
    }

    /** Back-to-back calls shared with the pool: between them its threads spin, unless the pool is quiet. */
    private static void backToBackCalls(WorkerPool pool, int n) {
        for (int i = 0; i < n; i++) {
            pool.spins();
            pool.run((task, worker) -> { }, 2, 1);
        }
    }

    /** The shared pool spins only when asked to: by default small calls are never shared. */
    @Test
    void theSharedPoolSpinsOnlyWhenAskedTo() {
        assertEquals(Long.getLong("qkv.pool.spinMicros", 0) > 0 && POOL.helpers() > 0, POOL.canSpin());
        if (!POOL.canSpin()) {
            backToBackCalls(POOL, 1000);
            assertEquals(0, POOL.spinningNow(), "a pool thread spins with spinMicros 0");
            assertTrue(!POOL.spins(), "a small call would be shared with spinMicros 0");
        }
    }

    /** An idle pool uses no CPU: after back-to-back calls set its threads spinning, they park once calls stop. */
    @Test
    void poolThreadsParkWhenCallsStop() {
        WorkerPool SPINNING = spinningPool();
        assumeTrue(SPINNING.canSpin(), "no thread CPU clock here: pool threads never spin");
        boolean sawSpin = false;
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(WAIT_S);
        while (!sawSpin && System.nanoTime() - end < 0) {
            backToBackCalls(SPINNING, 100);
            sawSpin = SPINNING.spinningNow() > 0;
        }
        if (!sawSpin) {
            abort("the pool never spun in " + WAIT_S + " s (quiet: " + SPINNING.quiet() + "): other threads hold the cores");
        }
        waitUntil(SPINNING::parked, () -> "pool threads still running after the calls stopped: "
                + SPINNING.describe());
        assertEquals(0, SPINNING.spinningNow());
    }

    /**
     * A pool thread that ends a call's task while the callers hold every core starts no spin, not even for the
     * moment until its next look at the callers: the spin was announced first (spinningNow, and spins() for thread
     * 0), so a small call in that moment was shared with a thread that had no core (seen as 84 of 385 337 calls
     * in noPoolThreadSpinsWhileCallersHoldEveryCore under load). Deterministic: the pool thread's task is held
     * until blockers fill the cores, then released, and the spins begun are counted.
     */
    @Test
    void aPoolThreadEndingATaskStartsNoSpinWhileCallersHoldEveryCore() throws Exception {
        WorkerPool SPINNING = spinningPool();
        assumeTrue(SPINNING.canSpin(), "no thread CPU clock here: pool threads never spin");
        int cores = SPINNING.helpers() + 1;
        CountDownLatch inTask = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        AtomicReference<Throwable> failed = new AtomicReference<>();
        Thread caller = new Thread(() -> {
            try {
                SPINNING.run((task, worker) -> {
                    if (worker > 0) {
                        inTask.countDown();
                        await(release);
                    } else {
                        await(inTask); // the caller's task waits until a pool thread holds the other
                    }
                }, 2, 1);
            } catch (Throwable t) {
                failed.set(t);
            }
        }, "caller");
        caller.start();
        try {
            if (!inTask.await(WAIT_S, TimeUnit.SECONDS)) {
                abort("no pool thread took a task in " + WAIT_S + " s");
            }
            try (Blockers held = new Blockers(SPINNING, cores)) {
                long before = SPINNING.spinsBegun();
                release.countDown();
                caller.join(TimeUnit.SECONDS.toMillis(WAIT_S));
                waitUntil(SPINNING::parked, () -> "the pool thread did not park: " + SPINNING.describe());
                assertEquals(before, SPINNING.spinsBegun(), "spins begun while " + cores + " callers held every core");
            }
        } finally {
            release.countDown();
            caller.join();
        }
        if (failed.get() != null) {
            throw new AssertionError(failed.get());
        }
    }

    /** A pool thread spins only while the callers inside the pool leave it a core. */
    @Test
    void noPoolThreadSpinsWhileCallersHoldEveryCore() throws Exception {
        WorkerPool SPINNING = spinningPool();
        assumeTrue(SPINNING.canSpin(), "no thread CPU clock here: pool threads never spin");
        int cores = SPINNING.helpers() + 1;
        backToBackCalls(SPINNING, 1000);
        try (Blockers held = new Blockers(SPINNING, cores)) {
            // a spin under way ends; calls that come back to back now get none: for 200 ms of them (more than a
            // woken pool thread needs to be running) no call may be shared
            waitUntil(() -> SPINNING.spinningNow() == 0, () -> "a pool thread spins beside " + cores + " callers");
            int shared = 0;
            int calls = 0;
            for (long end = System.nanoTime() + 200_000_000L; System.nanoTime() - end < 0; calls++) {
                SPINNING.run((task, worker) -> { }, 2, 1);
                if (SPINNING.spins()) {
                    shared++;
                }
            }
            assertEquals(0, shared, "calls of " + calls + " that found a pool thread spinning beside " + cores
                    + " callers");
        }
    }

    /**
     * A thread decoding with the multi-head layer computes on its core all through the step, projections included:
     * those of a decode step are under {@code MIN_PARALLEL_FLOPS} and run on the caller, and they too must count it
     * as a core taken, or a concurrent call gets a pool thread beside request threads that already fill the cores
     * (measured before: a decode loop beside a large call left the pool thread 10% of the machine). Sampled while
     * one thread decodes and nothing else runs: the step, its projections included, counts its thread nearly all
     * the time (the gaps are the few scalar steps between products; before, it was counted in the attention only).
     */
    @Test
    void aDecodeStepCountsItsThreadAsACallerThroughItsProjections() throws Exception {
        java.util.Random r = new java.util.Random(3);
        int e = 1024;
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofShared()) {
            dev.qkv.tensor.Tensor[] ws4 = new dev.qkv.tensor.Tensor[4];
            for (int i = 0; i < 4; i++) {
                float[] f = new float[e * e];
                for (int j = 0; j < f.length; j++) {
                    f[j] = (float) r.nextGaussian() * 0.03f;
                }
                ws4[i] = dev.qkv.tensor.Tensor.of(arena, f, e, e);
            }
            dev.qkv.mha.MultiHeadAttention mha = dev.qkv.mha.MultiHeadAttention.create(dev.qkv.mha.MhaWeights.of(8,
                    ws4[0], null, ws4[1], null, ws4[2], null, ws4[3], null), Backend.JAVA);
            dev.qkv.mha.MhaWorkspace ws = mha.newWorkspace(arena, 1, 1, 16);
            dev.qkv.mha.KvCache cache = mha.newCache(arena, 16);
            dev.qkv.tensor.Tensor x = dev.qkv.tensor.Tensor.allocate(arena, 1, 1, e).fill(0.5f);
            dev.qkv.tensor.Tensor y = dev.qkv.tensor.Tensor.allocate(arena, 1, 1, e);
            // warm up for 2000 steps, until they come quickly, then sample
            double share = callerShare(() -> {
                if (cache.length() == cache.capacity()) {
                    cache.reset();
                }
                mha.decode(x, cache, y, ws);
            }, 2000);
            assertTrue(share > 0.6, "the decoding thread counted as a caller in " + share + " of the samples");
        }
    }

    /**
     * The share of 500 ms of samples in which {@link WorkerPool#callersNow} counts a caller while one thread (and
     * nothing else) repeats {@code call}, after {@code warm} calls.
     */
    private static double callerShare(Runnable call, long warm) throws Exception {
        java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
        AtomicLong calls = new AtomicLong();
        AtomicReference<Throwable> failed = new AtomicReference<>();
        Thread caller = new Thread(() -> {
            try {
                while (!stop.get()) {
                    call.run();
                    calls.incrementAndGet();
                }
            } catch (Throwable t) {
                failed.set(t);
            }
        }, "caller");
        caller.start();
        try {
            while (calls.get() < warm && failed.get() == null) {
                Thread.sleep(10);
            }
            long counted = 0;
            long samples = 0;
            for (long end = System.nanoTime() + 500_000_000L; System.nanoTime() - end < 0; samples++) {
                if (POOL.callersNow() > 0) {
                    counted++;
                }
                Thread.onSpinWait();
            }
            return (double) counted / samples;
        } finally {
            stop.set(true);
            caller.join();
            if (failed.get() != null) {
                throw new AssertionError("the call failed", failed.get());
            }
        }
    }

    /**
     * The reference backend computes on its caller's core all through a call (scalar loops in double, seconds for
     * shapes the other backends take milliseconds for), so it counts as a core taken like any other call: it did
     * not, running outside the pool, and a parallel call beside it got a pool thread, three threads computing on
     * two cores for as long as the reference ran (found with a /proc/self/task probe: a native caller beside a
     * reference caller had 3 threads runnable in 175 of 176 samples; beside a JAVA threads(1) caller, never).
     * Sampled as for the decode step above, for attention and for the multi-head layer's reference forward.
     */
    @Test
    void aReferenceCallCountsItsThreadAsACaller() throws Exception {
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofShared()) {
            dev.qkv.tensor.Tensor q = dev.qkv.tensor.Tensor.allocate(arena, 1, 2, 64, 32).fill(0.25f);
            dev.qkv.tensor.Tensor out = dev.qkv.tensor.Tensor.allocate(arena, 1, 2, 64, 32);
            Attention ref = Attention.create(Backend.REFERENCE);
            double share = callerShare(() -> ref.sdpa(q, q, q, out, SdpaOptions.CAUSAL), 50);
            assertTrue(share > 0.6, "a reference sdpa counted its thread as a caller in " + share + " of the samples");

            int e = 64;
            dev.qkv.tensor.Tensor w = dev.qkv.tensor.Tensor.allocate(arena, e, e).fill(0.01f);
            dev.qkv.mha.MultiHeadAttention mha = dev.qkv.mha.MultiHeadAttention.create(
                    dev.qkv.mha.MhaWeights.of(4, w, null, w, null, w, null, w, null), Backend.REFERENCE);
            dev.qkv.mha.MhaWorkspace ws = mha.newWorkspace(arena, 1, 32, 32);
            dev.qkv.tensor.Tensor x = dev.qkv.tensor.Tensor.allocate(arena, 1, 32, e).fill(0.5f);
            dev.qkv.tensor.Tensor y = dev.qkv.tensor.Tensor.allocate(arena, 1, 32, e);
            share = callerShare(() -> mha.forward(x, y, SdpaOptions.CAUSAL, ws), 50);
            assertTrue(share > 0.6, "a reference layer forward counted its thread as a caller in " + share
                    + " of the samples");
        }
    }

    /**
     * Threads outside the pool that take the cores (here one busy thread per core; in production another process)
     * are no callers the pool can count: its threads see them in their own CPU time, and the pool stops spinning.
     */
    @Test
    void thePoolStopsSpinningWhenOtherThreadsTakeTheCores() throws Exception {
        WorkerPool SPINNING = spinningPool();
        assumeTrue(SPINNING.canSpin(), "no thread CPU clock here: pool threads never spin");
        int cores = SPINNING.helpers() + 1;
        java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
        List<Thread> hogs = new ArrayList<>();
        for (int i = 0; i < cores; i++) {
            Thread t = new Thread(() -> {
                while (!stop.get()) {
                    Thread.onSpinWait();
                }
            }, "hog-" + i);
            t.setDaemon(true);
            t.start();
            hogs.add(t);
        }
        try {
            waitUntil(() -> {
                backToBackCalls(SPINNING, 100);
                return SPINNING.quiet();
            }, () -> "the pool still spins beside " + cores + " busy threads: " + SPINNING.describe());
            // quiet: none under way once the current one ends
            waitUntil(() -> SPINNING.spinningNow() == 0, () -> "a pool thread spins while the pool is quiet");
        } finally {
            stop.set(true);
            for (Thread t : hogs) {
                t.join();
            }
        }
    }

    /** A long spin under way ends as soon as callers take every core, long before its time is up. */
    @Test
    void aSpinUnderWayEndsWhenCallersTakeEveryCore() throws Exception {
        WorkerPool pool = new WorkerPool(Math.max(1, cores() - 1), 60_000_000_000L);
        int all = pool.helpers() + 1;
        try {
            pool.run((task, worker) -> { }, 2, 1);
            long until = System.nanoTime() + 1_000_000_000L;
            while (pool.spinningNow() == 0 && System.nanoTime() - until < 0) {
                Thread.onSpinWait();
            }
            if (pool.spinningNow() == 0) {
                abort("no pool thread spun within 1 s after a call (quiet: " + pool.quiet() + ")");
            }
            try (Blockers held = new Blockers(pool, all)) {
                // the spin has 60 s left; 5 s bounds how long the pool thread may take to be scheduled and see them
                waitUntil(() -> pool.spinningNow() == 0, 5_000_000_000L,
                        () -> "a 60 s spin goes on beside " + all + " callers");
            }
        } finally {
            // whatever happened, no 60 s spin outlives the test
            pool.quietFor(Long.MAX_VALUE / 4);
        }
    }

    /** A quiet pool's threads do not spin after work, however long their spin. */
    @Test
    void aQuietPoolDoesNotSpinAfterWork() {
        WorkerPool pool = new WorkerPool(Math.max(1, cores() - 1), 5_000_000_000L);
        pool.quietFor(60_000_000_000L);
        assertTrue(pool.quiet());
        for (int i = 0; i < 100; i++) {
            pool.run((task, worker) -> { }, 2, pool.helpers());
            assertTrue(!pool.spins(), "a quiet pool shares a small call");
        }
        pause(50_000_000L);
        assertEquals(0, pool.spinningNow(), "a quiet pool's thread spins after work");
        waitUntil(pool::parked, () -> "a quiet pool's threads do not park: " + pool.describe());
    }

    /**
     * A pool thread that loses its core in the middle of a small call's task (here: its task parks 50 ms, while the
     * caller's own took no time) makes the caller wait; the pool goes quiet at once, without waiting for a window of
     * its CPU-time check.
     */
    @Test
    void aSmallCallLeftWaitingForAPoolThreadQuietsThePool() {
        WorkerPool pool = spinningPool();
        assumeTrue(pool.canSpin(), "no thread CPU clock here: pool threads never spin");
        if (!callLeftWaiting(pool, true)) {
            abort("no pool thread took a task within " + WAIT_S + " s: nothing to observe");
        }
        assertTrue(pool.quiet(), "a small call waited 50 ms for a pool thread, and the pool is not quiet");
        // a call that is not small (a large call's tasks can be uneven) never quiets the pool this way
        WorkerPool other = spinningPool();
        callLeftWaiting(other, false);
        assertTrue(!other.quiet(), "a large call with uneven tasks quieted the pool");
    }

    /**
     * A call of two tasks whose caller's own takes no time and whose pool thread's takes 50 ms; true when the pool
     * thread took its task (the caller waited for it).
     */
    private static boolean callLeftWaiting(WorkerPool pool, boolean small) {
        CountDownLatch helperIn = new CountDownLatch(1);
        AtomicIntegerArray byWorker = new AtomicIntegerArray(cores());
        pool.run((task, worker) -> {
            byWorker.incrementAndGet(worker);
            if (worker == 0) {
                await(helperIn);
            } else {
                helperIn.countDown();
                pause(50_000_000L);
            }
        }, 2, 1, small);
        return byWorker.get(0) == 1;
    }

    /** Waits {@code nanos} (parkNanos alone returns at once when the thread holds an unpark permit). */
    private static void pause(long nanos) {
        long end = System.nanoTime() + nanos;
        for (long left = nanos; left > 0; left = end - System.nanoTime()) {
            LockSupport.parkNanos(left);
        }
    }

    private static int sumFrom(AtomicIntegerArray a, int from) {
        int s = 0;
        for (int i = from; i < a.length(); i++) {
            s += a.get(i);
        }
        return s;
    }

    @Test
    void aTaskThatCallsRunAgainOnTheCallersThreadLosesNoTask() {
        int n = 64;
        int inner = 16;
        AtomicIntegerArray outerRuns = new AtomicIntegerArray(n);
        AtomicIntegerArray innerRuns = new AtomicIntegerArray(inner);
        Thread callerThread = Thread.currentThread();
        java.util.concurrent.atomic.AtomicBoolean nested = new java.util.concurrent.atomic.AtomicBoolean();
        POOL.run((task, worker) -> {
            if (Thread.currentThread() == callerThread && nested.compareAndSet(false, true)) {
                // e.g. a task that runs attention: a call inside a call, on the thread holding the pool
                POOL.run((t, w) -> innerRuns.incrementAndGet(t), inner, POOL.helpers());
            }
            outerRuns.incrementAndGet(task);
            LockSupport.parkNanos(50_000);
        }, n, POOL.helpers());
        assertTrue(nested.get());
        for (int t = 0; t < n; t++) {
            assertEquals(1, outerRuns.get(t), "outer task " + t);
        }
        for (int t = 0; t < inner; t++) {
            assertEquals(1, innerRuns.get(t), "inner task " + t);
        }
    }

    /**
     * A call made inside a task of another call on the same thread (the multi-head layer's reference forward runs
     * its reference attention so: one task through the pool, whose attention goes through the pool again) counts
     * that thread once: it computes on one core, not two. Counted twice, a concurrent call got one helper fewer
     * than the cores left it (found by reading the layer's reference path).
     */
    @Test
    void aCallInsideACallOnTheSameThreadCountsItsThreadOnce() {
        WorkerPool pool = new WorkerPool(2, 0);
        AtomicIntegerArray seen = new AtomicIntegerArray(4);
        // on the caller alone (no helper wanted: the pool's lock is not taken), as the reference paths run
        pool.run((task, worker) -> {
            seen.set(0, pool.callersNow());
            pool.run((t, w) -> {
                seen.set(1, pool.callersNow());
                pool.run((t2, w2) -> seen.set(2, pool.callersNow()), 1, 0);
            }, 1, 0);
        }, 1, 0);
        assertEquals(1, seen.get(0), "the outer call");
        assertEquals(1, seen.get(1), "a call inside it");
        assertEquals(1, seen.get(2), "a call inside that");
        // with a helper (the caller holds the pool's lock), from the caller's task: a helper holds its one task
        // until the caller has run the other, so that the caller runs one
        CountDownLatch callerRan = new CountDownLatch(1);
        pool.run((task, worker) -> {
            if (worker == 0) {
                pool.run((t, w) -> seen.set(3, pool.callersNow()), 1, 0);
                callerRan.countDown();
            } else {
                await(callerRan);
            }
        }, 2, 1);
        assertEquals(1, seen.get(3), "a call inside a task of a shared call");
        assertEquals(0, pool.callersNow(), "every caller counted out");
    }

    /**
     * While one thread is inside a call inside a call, a call from another thread gets the helpers the two
     * threads leave: one of the two pool threads of a three-core pool (none, when the nested thread counted twice).
     */
    @Test
    void aConcurrentCallGetsTheHelperANestedCallLeaves() throws Exception {
        WorkerPool pool = new WorkerPool(2, 0);
        CountDownLatch nestedIn = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        Thread nested = new Thread(() -> pool.run((task, worker) -> pool.run((t, w) -> {
            nestedIn.countDown();
            await(release);
        }, 1, 0), 1, 0), "nested");
        nested.setDaemon(true);
        nested.start();
        try {
            assertTrue(nestedIn.await(WAIT_S, TimeUnit.SECONDS), "the nested call did not start");
            int n = 8;
            AtomicIntegerArray byWorker = new AtomicIntegerArray(pool.helpers() + 1);
            CountDownLatch helped = new CountDownLatch(1);
            pool.run((task, worker) -> {
                byWorker.incrementAndGet(worker);
                if (worker > 0) {
                    helped.countDown();
                } else {
                    // the caller waits for a helper to take a task; with none granted it waits out the time, once
                    // (the latch is then open for its other tasks)
                    await(helped);
                    helped.countDown();
                }
            }, n, pool.helpers());
            assertTrue(sumFrom(byWorker, 1) > 0, "no helper beside one thread in a nested call: "
                    + byWorker + " " + pool.describe());
            assertEquals(0, byWorker.get(2), "a second helper, with two threads computing on three cores");
        } finally {
            release.countDown();
            nested.join(TimeUnit.SECONDS.toMillis(WAIT_S));
        }
        assertEquals(0, pool.callersNow());
    }

    /**
     * A nested call that throws leaves its thread counted once, by the enclosing call, and that call, throwing too,
     * counts it out once: the next call on the thread is counted again.
     */
    @Test
    void aNestedCallThatThrowsCountsItsThreadOutOnce() {
        WorkerPool pool = new WorkerPool(2, 0);
        AtomicIntegerArray seen = new AtomicIntegerArray(3);
        IllegalStateException outer = assertThrows(IllegalStateException.class, () -> pool.run((task, worker) -> {
            IllegalArgumentException inner = assertThrows(IllegalArgumentException.class, () -> pool.run((t, w) -> {
                seen.set(0, pool.callersNow());
                throw new IllegalArgumentException("inner");
            }, 1, 0));
            assertEquals("inner", inner.getMessage());
            seen.set(1, pool.callersNow());
            throw new IllegalStateException("outer");
        }, 1, 0));
        assertEquals("outer", outer.getMessage());
        assertEquals(1, seen.get(0), "inside the nested call");
        assertEquals(1, seen.get(1), "after the nested call threw");
        assertEquals(0, pool.callersNow(), "after the outer call threw");
        pool.run((task, worker) -> seen.set(2, pool.callersNow()), 1, 0);
        assertEquals(1, seen.get(2), "the next call on the thread");
        assertEquals(0, pool.callersNow());
    }

    /**
     * A pool thread already computes on a core for the call whose task it runs: a call made from that task runs
     * there (the pool is held by the enclosing call, so it cannot deadlock waiting for it) and does not count the
     * pool thread again, as a caller that would take the core of the call's next helper.
     */
    @Test
    void aCallFromAPoolThreadsTaskRunsThereAndCountsNoCaller() {
        WorkerPool pool = new WorkerPool(2, 0);
        AtomicIntegerArray seen = new AtomicIntegerArray(2);
        CountDownLatch helperDone = new CountDownLatch(1);
        int inner = 8;
        AtomicIntegerArray innerRuns = new AtomicIntegerArray(inner);
        org.junit.jupiter.api.Assertions.assertTimeoutPreemptively(java.time.Duration.ofSeconds(WAIT_S), () ->
                pool.run((task, worker) -> {
                    if (worker == 0) {
                        await(helperDone);
                        return;
                    }
                    Thread self = Thread.currentThread();
                    pool.run((t, w) -> {
                        innerRuns.incrementAndGet(t);
                        if (Thread.currentThread() != self) {
                            seen.set(1, 1);
                        }
                        seen.set(0, pool.callersNow());
                    }, inner, pool.helpers());
                    helperDone.countDown();
                }, 2, 1));
        assertEquals(0, helperDone.getCount(), "no pool thread ran a task");
        for (int t = 0; t < inner; t++) {
            assertEquals(1, innerRuns.get(t), "inner task " + t);
        }
        assertEquals(0, seen.get(1), "an inner task ran off the pool thread that made the call");
        assertEquals(1, seen.get(0), "callers inside a pool thread's nested call (only the enclosing call's)");
        assertEquals(0, pool.callersNow());
    }

    /**
     * The multi-head layer's reference forward, on one thread: its thread counts as one caller all through the
     * call, its inner reference attention included (sampled from another thread until the calls end).
     */
    @Test
    void aReferenceLayerForwardCountsItsThreadOnce() throws Exception {
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofShared()) {
            int e = 16;
            int l = 192;
            dev.qkv.tensor.Tensor w = dev.qkv.tensor.Tensor.allocate(arena, e, e).fill(0.01f);
            dev.qkv.mha.MultiHeadAttention mha = dev.qkv.mha.MultiHeadAttention.create(
                    dev.qkv.mha.MhaWeights.of(2, w, null, w, null, w, null, w, null), Backend.REFERENCE);
            dev.qkv.mha.MhaWorkspace ws = mha.newWorkspace(arena, 1, l, l);
            dev.qkv.tensor.Tensor x = dev.qkv.tensor.Tensor.allocate(arena, 1, l, e).fill(0.5f);
            dev.qkv.tensor.Tensor y = dev.qkv.tensor.Tensor.allocate(arena, 1, l, e);
            AtomicReference<Throwable> failed = new AtomicReference<>();
            Thread caller = new Thread(() -> {
                try {
                    for (int i = 0; i < 3; i++) {
                        mha.forward(x, y, SdpaOptions.DEFAULT, ws);
                    }
                } catch (Throwable t) {
                    failed.set(t);
                }
            }, "reference-forward");
            caller.start();
            int most = 0;
            long samples = 0;
            while (caller.isAlive()) {
                most = Math.max(most, POOL.callersNow());
                samples++;
                Thread.onSpinWait();
            }
            caller.join();
            if (failed.get() != null) {
                throw new AssertionError("the forward failed", failed.get());
            }
            assertEquals(1, most, "most callers counted while one thread ran a reference layer forward ("
                    + samples + " samples)");
        }
    }

    /**
     * A pool thread the JVM cannot start (Thread.start throws OutOfMemoryError "unable to create native thread"
     * when the process meets its thread limit) costs the call its helper, not its result: the tasks run on the
     * caller, and a later call starts the thread. Before, the call threw the OutOfMemoryError, and the
     * never-started thread stayed in its slot for good, so that no later call had a helper.
     */
    @Test
    void aPoolThreadThatCannotStartLeavesTheCallToItsCallerAndIsStartedLater() {
        AtomicInteger refusals = new AtomicInteger(1);
        WorkerPool pool = new WorkerPool(1, 0, WorkerPool.IDLE_NANOS, t -> {
            if (refusals.getAndDecrement() > 0) {
                throw new OutOfMemoryError("unable to create native thread: possibly out of memory or process/resource"
                        + " limits reached");
            }
            t.start();
        });
        AtomicIntegerArray byWorker = new AtomicIntegerArray(2);
        pool.run((task, worker) -> byWorker.incrementAndGet(worker), 4, 1);
        assertEquals(4, byWorker.get(0) + byWorker.get(1), "every task ran once");
        assertEquals(0, byWorker.get(1), "no pool thread ran: it could not start");
        // the next call starts it, and it takes part
        AtomicIntegerArray again = new AtomicIntegerArray(2);
        CountDownLatch both = new CountDownLatch(2);
        pool.run((task, worker) -> {
            again.incrementAndGet(worker);
            both.countDown();
            await(both);
        }, 2, 1);
        assertEquals(1, again.get(1), "tasks run by the pool thread started later");
    }

    /**
     * A pool thread whose interrupt status is set (by a task that restores an interrupt it caught, as library code
     * does, or by anyone holding the thread) goes back to parking once the call is done: before the fix,
     * {@code LockSupport.park} returned at once for the rest of the process, and the idle thread spun a core.
     */
    @Test
    void aPoolThreadLeftInterruptedByATaskParksAgain() {
        WorkerPool pool = new WorkerPool(1, 0);
        AtomicReference<Thread> helper = new AtomicReference<>();
        CountDownLatch both = new CountDownLatch(2);
        pool.run((task, worker) -> {
            // each task waits for the other, so that the pool thread runs one
            both.countDown();
            await(both);
            if (worker > 0) {
                helper.set(Thread.currentThread());
                Thread.currentThread().interrupt();
            }
        }, 2, 1);
        Thread t = helper.get();
        assertTrue(t != null, "no pool thread ran a task");
        // parked: until the next call, or (TIMED_WAITING) at most the pool's idle time
        waitUntil(() -> (t.getState() == Thread.State.WAITING || t.getState() == Thread.State.TIMED_WAITING)
                        && !t.isInterrupted(),
                () -> "the pool thread never parked again: " + t.getState() + ", interrupted " + t.isInterrupted());
        // and it still takes part in calls
        AtomicIntegerArray byWorker = new AtomicIntegerArray(2);
        CountDownLatch again = new CountDownLatch(2);
        pool.run((task, worker) -> {
            byWorker.incrementAndGet(worker);
            again.countDown();
            await(again);
        }, 2, 1);
        assertEquals(1, byWorker.get(1), "tasks run by the pool thread");
    }

    /**
     * A caller whose interrupt flag is set when it calls parks while it waits for the pool thread, and still has
     * its interrupt afterwards: {@code LockSupport.park} returns at once while the flag is set, so the wait spun a
     * core for as long as the pool thread's task ran. The pool thread's task reads the caller's CPU time across
     * 400 ms of its own sleep: a parked caller uses next to none, a spinning one up to all of it (the bound, half
     * of it, can only be passed by a spin, which a loaded machine might starve below it).
     */
    @Test
    void anInterruptedCallerParksWhileItWaitsAndKeepsItsInterrupt() {
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        org.junit.jupiter.api.Assumptions.assumeTrue(mx.isCurrentThreadCpuTimeSupported() && mx.isThreadCpuTimeEnabled());
        WorkerPool pool = new WorkerPool(1, 0);
        Thread caller = Thread.currentThread();
        AtomicInteger arrived = new AtomicInteger();
        AtomicLong callerCpu = new AtomicLong(-1);
        caller.interrupt();
        pool.run((task, worker) -> {
            // each thread takes one task (no latch: an interrupted caller's await would throw)
            arrived.incrementAndGet();
            while (arrived.get() < 2) {
                Thread.onSpinWait();
            }
            if (worker > 0) {
                pause(50_000_000L);
                long before = mx.getThreadCpuTime(caller.threadId());
                pause(400_000_000L);
                callerCpu.set(mx.getThreadCpuTime(caller.threadId()) - before);
            }
        }, 2, 1);
        boolean stillInterrupted = Thread.interrupted();
        assertTrue(callerCpu.get() >= 0, "the pool thread did not run the watching task");
        assertTrue(callerCpu.get() < 200_000_000L, "the interrupted caller used " + callerCpu.get() / 1e6
                + " ms of CPU in 400 ms of waiting: it spun");
        assertTrue(stillInterrupted, "the caller's interrupt was lost");
    }

    @Test
    void aBlockPropertyMustBeAPositiveMultiple() {
        String name = "qkv.test.blockProperty";
        try {
            System.clearProperty(name);
            assertEquals(2048, Attention.blockProperty(name, 2048, 64));
            System.setProperty(name, "128");
            assertEquals(128, Attention.blockProperty(name, 2048, 64));
            // not an integer at all: refused too, never taken as unset (Integer.getInteger did)
            for (String bad : new String[] {"0", "-64", "16", "100", "abc", "1e3", "2k", ""}) {
                System.setProperty(name, bad);
                IllegalStateException e = assertThrows(IllegalStateException.class,
                        () -> Attention.blockProperty(name, 2048, 64));
                assertEquals("-D" + name + "=" + bad + ": must be a positive multiple of 64", e.getMessage());
            }
            // a block past 2^20 would step lengths past 2^31 - 1, or allocate arrays the JVM refuses
            System.setProperty(name, String.valueOf(Attention.MAX_BLOCK_PROPERTY));
            assertEquals(Attention.MAX_BLOCK_PROPERTY, Attention.blockProperty(name, 2048, 64));
            System.setProperty(name, String.valueOf(Attention.MAX_BLOCK_PROPERTY + 64));
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> Attention.blockProperty(name, 2048, 64));
            assertTrue(e.getMessage().endsWith("must be a positive multiple of 64 up to 1048576"), e.getMessage());
        } finally {
            System.clearProperty(name);
        }
    }

    /**
     * A block of any positive size (the native engine's rows and keys, multiple 1) is refused as "a positive
     * integer": "a positive multiple of 1" read as if some multiples were wrong.
     */
    @Test
    void aBlockPropertyOfAnySizeMustBeAPositiveInteger() {
        String name = "qkv.test.blockProperty";
        try {
            System.setProperty(name, "7");
            assertEquals(7, Attention.blockProperty(name, 256, 1));
            for (String bad : new String[] {"0", "-1", "abc", "1e3", ""}) {
                System.setProperty(name, bad);
                IllegalStateException e = assertThrows(IllegalStateException.class,
                        () -> Attention.blockProperty(name, 256, 1));
                assertEquals("-D" + name + "=" + bad + ": must be a positive integer", e.getMessage());
            }
            System.setProperty(name, String.valueOf(Attention.MAX_BLOCK_PROPERTY + 1));
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> Attention.blockProperty(name, 256, 1));
            assertEquals("-D" + name + "=" + (Attention.MAX_BLOCK_PROPERTY + 1) + ": must be a positive integer up to "
                    + Attention.MAX_BLOCK_PROPERTY, e.getMessage());
        } finally {
            System.clearProperty(name);
        }
    }

    /**
     * A call whose caller runs out of stack inside the pool must not leave the call open: once {@code run} has
     * returned or thrown, no task of the call may start or still run on a pool thread (before the fix, a helper
     * went on with the call's tasks, and could count down or fail the next call). {@link PoolOverflowProbe} sweeps
     * the caller's depth across the overflow point, here and in a JVM that keeps the pool interpreted, as in a
     * process's first calls: there the pool's own handler of the task's error overflows, which compiled code,
     * with that handler inlined, does less often (the old pool failed both: 3207-3380 tasks ran late). Afterwards
     * a pool thread must still take part in calls: an overflow in the pool's finally blocks had left its lock
     * held, for the rest of the process.
     */
    @Test
    void noTaskRunsAfterACallerThatOverflowedItsStackLeaves() throws Exception {
        assumeTrue(POOL.helpers() > 0, "one core: no pool threads");
        int[] here = PoolOverflowProbe.sweep();
        assertTrue(here[0] > 0, "the sweep never reached the pool");
        assertEquals(0, here[1], "tasks ran on a pool thread after their caller left (" + here[0] + " calls threw)");
        List<String> cmd = new ArrayList<>(List.of(ProcessHandle.current().info().command().orElseThrow(),
                "-XX:CompileCommand=quiet", "-XX:CompileCommand=exclude,dev.qkv.attention.WorkerPool::*",
                "--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector",
                "-cp", System.getProperty("java.class.path"), PoolOverflowProbe.class.getName()));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
        assertTrue(p.waitFor(WAIT_S * 6, TimeUnit.SECONDS), "child timed out");
        assertEquals(0, p.exitValue(), out);
        String last = out.strip().lines().reduce((a, b) -> b).orElse("");
        assertTrue(last.matches("escaped=[1-9][0-9]* late=0 helper=yes"), "interpreted pool: " + out.strip());
        // and the pool still works: unlocked, counting no caller that left
        assertTrue(PoolOverflowProbe.helperTakesPart(), "no pool thread takes part in calls any more");
    }

    /** An inheritable value of the caller's (a request's context, say), the kind a thread it starts copies. */
    private static final InheritableThreadLocal<Object> CONTEXT = new InheritableThreadLocal<>();

    /**
     * Pool threads live as long as the process, and are started by whichever caller first needs them: they must not
     * take that caller's context with them. Before the fix each pool thread copied the starting thread's inheritable
     * thread-local values and kept its context class loader, for good: a request's context (an MDC map, a user
     * object) and an application's class loader stayed reachable after their owner dropped them (a redeployed web
     * application's classes, say, never unloaded).
     */
    @Test
    void poolThreadsKeepNothingOfTheCallerThatStartedThem() throws Exception {
        List<java.lang.ref.WeakReference<Object>> dropped = new ArrayList<>();
        Thread starter = new Thread(() -> {
            Object value = new Object();
            ClassLoader loader = new java.net.URLClassLoader(new java.net.URL[0], null);
            dropped.add(new java.lang.ref.WeakReference<>(value));
            dropped.add(new java.lang.ref.WeakReference<>(loader));
            CONTEXT.set(value);
            Thread.currentThread().setContextClassLoader(loader);
            // a fresh pool: its thread starts here, in this thread's context
            WorkerPool pool = new WorkerPool(1, 0);
            CountDownLatch both = new CountDownLatch(2);
            AtomicIntegerArray byWorker = new AtomicIntegerArray(2);
            pool.run((task, worker) -> {
                byWorker.incrementAndGet(worker);
                both.countDown();
                await(both);
            }, 2, 1);
            assertEquals(1, byWorker.get(1), "the pool thread ran no task");
            POOLS.add(pool);
            CONTEXT.remove();
            Thread.currentThread().setContextClassLoader(null);
        }, "starter");
        starter.start();
        starter.join(TimeUnit.SECONDS.toMillis(WAIT_S));
        assertEquals(2, dropped.size());
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(WAIT_S);
        while (dropped.stream().anyMatch(r -> r.get() != null)) {
            assertTrue(System.nanoTime() - end < 0, "still reachable after " + WAIT_S + " s of collections: "
                    + (dropped.get(0).get() != null ? "the starter's inheritable value " : "")
                    + (dropped.get(1).get() != null ? "the starter's context class loader" : ""));
            System.gc();
            Thread.sleep(10);
        }
    }

    /** Pools kept alive (with their threads) while the test looks at what they hold. */
    private static final List<WorkerPool> POOLS = java.util.Collections.synchronizedList(new ArrayList<>());

    /**
     * A pool thread that ended after its idle time is started again by the next call that wants a helper: when
     * it ends, its slot must be emptied, or the pool keeps the ended thread there, never starts another, and every
     * later call runs all its tasks on its caller (found by mutation testing: retire() kept the thread in its
     * slot, and no test failed). Which worker ran each task is the property; each call's two tasks wait for each
     * other, so the second can only run on a pool thread.
     */
    @Test
    void aPoolThreadThatEndedIdleIsStartedAgainByTheNextCall() throws Exception {
        WorkerPool pool = new WorkerPool(1, 0, TimeUnit.MILLISECONDS.toNanos(20));
        for (int round = 0; round < 3; round++) {
            CountDownLatch both = new CountDownLatch(2);
            AtomicIntegerArray byWorker = new AtomicIntegerArray(2);
            AtomicReference<Thread> helper = new AtomicReference<>();
            pool.run((task, worker) -> {
                byWorker.incrementAndGet(worker);
                if (worker == 1) {
                    helper.set(Thread.currentThread());
                }
                both.countDown();
                await(both);
            }, 2, 1);
            assertEquals(1, byWorker.get(1), "round " + round + ": no pool thread ran a task");
            // idle for 20 ms, the thread ends
            Thread ended = helper.get();
            ended.join(TimeUnit.SECONDS.toMillis(WAIT_S));
            assertTrue(!ended.isAlive(), "round " + round + ": the pool thread did not end idle: " + pool.describe());
        }
    }
}
