package dev.qkv.attention;

import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.locks.ReentrantLock;

/**
 * The process-wide pool behind parallel attention: one daemon thread per core but one (the caller is the
 * other worker), shared by every {@link Attention}, so that no number of instances can oversubscribe the
 * cores. A call hands its tasks to the pool only when the pool is idle; a call that finds it busy runs its tasks
 * on the calling thread. Tasks are claimed one at a time from a shared counter, which balances uneven (causal)
 * work. Nothing is allocated per call: workers are woken by {@link LockSupport#unpark}.
 */
final class WorkerPool {

    /** A batch of numbered tasks; {@code worker} is 0 for the caller, 1.. for pool threads. */
    interface Tasks {
        void run(int task, int worker);
    }

    static final WorkerPool SHARED = new WorkerPool(Math.max(0, Runtime.getRuntime().availableProcessors() - 1));

    private final ReentrantLock busy = new ReentrantLock();
    private final Thread[] threads;
    private final AtomicInteger next = new AtomicInteger();
    private final AtomicInteger running = new AtomicInteger();
    private final AtomicReference<Throwable> failure = new AtomicReference<>();
    private volatile long generation;
    private volatile int helpers;
    private volatile int taskCount;
    private volatile Tasks tasks;
    private volatile Thread caller;

    private WorkerPool(int size) {
        this.threads = new Thread[size];
    }

    /** Pool threads available to one call (cores - 1). */
    int helpers() {
        return threads.length;
    }

    /** True when the pool's threads may access {@code s} (false for memory of a confined arena). */
    boolean accessible(MemorySegment s) {
        if (threads.length == 0) {
            return false;
        }
        if (threads[0] == null) {
            synchronized (this) {
                start(1);
            }
        }
        return s.isAccessibleBy(threads[0]);
    }

    /**
     * Runs tasks {@code 0 .. count-1} on the caller and up to {@code wanted} pool threads, and returns when all
     * are done. A failure in any task is rethrown here (the remaining tasks are skipped).
     */
    void run(Tasks job, int count, int wanted) {
        int h = Math.min(Math.min(wanted, threads.length), count - 1);
        if (h <= 0 || !busy.tryLock()) {
            for (int t = 0; t < count; t++) {
                job.run(t, 0);
            }
            return;
        }
        try {
            start(h);
            tasks = job;
            taskCount = count;
            helpers = h;
            next.set(0);
            failure.set(null);
            running.set(h);
            caller = Thread.currentThread();
            generation++;
            for (int i = 0; i < h; i++) {
                LockSupport.unpark(threads[i]);
            }
            drain(job, count, 0);
            int spins = 0;
            while (running.get() > 0) {
                if (++spins < 2000) {
                    Thread.onSpinWait();
                } else {
                    LockSupport.park(this);
                }
            }
            tasks = null;
            Throwable f = failure.get();
            if (f != null) {
                failure.set(null);
                if (f instanceof RuntimeException re) {
                    throw re;
                }
                if (f instanceof Error e) {
                    throw e;
                }
                throw new IllegalStateException(f);
            }
        } finally {
            busy.unlock();
        }
    }

    private void drain(Tasks job, int count, int worker) {
        try {
            for (int t; (t = next.getAndIncrement()) < count; ) {
                job.run(t, worker);
            }
        } catch (Throwable e) {
            failure.compareAndSet(null, e);
            next.set(count);
        }
    }

    private synchronized void start(int h) {
        for (int i = 0; i < h; i++) {
            if (threads[i] == null) {
                final int index = i;
                Thread t = new Thread(() -> loop(index), "qkv-attention-" + (i + 1));
                t.setDaemon(true);
                threads[i] = t;
                t.start();
            }
        }
    }

    private void loop(int index) {
        long seen = 0;
        for (;;) {
            long g = generation;
            if (g == seen) {
                LockSupport.park(this);
                continue;
            }
            seen = g;
            if (index >= helpers) {
                continue;
            }
            drain(tasks, taskCount, index + 1);
            if (running.decrementAndGet() == 0) {
                LockSupport.unpark(caller);
            }
        }
    }
}
