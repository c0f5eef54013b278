package dev.qkv.attention;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Calls the shared {@link WorkerPool} at caller depths swept across the stack's overflow point, with tasks whose
 * caller part overflows at its entry (a large frame), and counts the tasks a pool thread ran after their caller
 * had left {@code run}. {@link WorkerPoolTest} runs it in-process and in a JVM that keeps the pool interpreted.
 * Prints {@code escaped=<calls that threw> late=<tasks run after their caller left> helper=<yes|no>}, the last
 * whether a pool thread still takes part in a call afterwards.
 */
public final class PoolOverflowProbe {
    private static final WorkerPool POOL = WorkerPool.SHARED;

    private PoolOverflowProbe() {
    }

    public static void main(String[] args) throws Exception {
        int[] r = sweep();
        boolean helper = helperTakesPart();
        if (!helper) {
            System.out.println("pool: " + POOL.describe());
        }
        System.out.println("escaped=" + r[0] + " late=" + r[1] + " helper=" + (helper ? "yes" : "no"));
    }

    /**
     * True when a pool thread still takes part in a call: the caller's task waits (up to 20 s) for the other task
     * to run on a helper; run on the caller alone, each task waits in vain. A pool left locked, or counting a caller that left, runs both on the caller.
     */
    static boolean helperTakesPart() throws InterruptedException {
        CountDownLatch helped = new CountDownLatch(1);
        // whichever task the caller claims waits for a helper to run the other (a helper may also run both)
        POOL.run((task, worker) -> {
            if (worker > 0) {
                helped.countDown();
            } else {
                try {
                    helped.await(20, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        }, 2, 1);
        return helped.getCount() == 0;
    }

    /** {calls that threw, tasks run on a pool thread after their caller left}. */
    static int[] sweep() throws InterruptedException {
        AtomicBoolean left = new AtomicBoolean();
        AtomicInteger late = new AtomicInteger();
        int[] escaped = new int[1];
        WorkerPool.Tasks tasks = (task, worker) -> {
            if (worker == 0) {
                bigFrame(task);
            }
            if (left.get()) {
                late.incrementAndGet();
            }
            long end = System.nanoTime() + 200_000;
            while (System.nanoTime() < end) {
                Thread.onSpinWait();
            }
            if (left.get()) {
                late.incrementAndGet();
            }
        };
        WorkerPool.Tasks none = (task, worker) -> { };
        Thread t = new Thread(null, () -> {
            // the recursion compiled first, so that its frames keep one size during the search and the sweep
            for (int i = 0; i < 3000; i++) {
                runAtDepth(200, none, 2);
            }
            // the least depth at which a call with empty tasks overflows
            int lo = 0;
            int hi = 1 << 16;
            while (hi - lo > 1) {
                int mid = (lo + hi) >>> 1;
                if (runAtDepth(mid, none, 2) instanceof StackOverflowError) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            for (int depth = hi + 5; depth >= Math.max(0, hi - 120); depth--) {
                left.set(false);
                Throwable e = runAtDepth(depth, tasks, 16);
                left.set(true);
                if (e != null) {
                    escaped[0]++;
                }
                // a late helper would go on with up to 16 tasks of 0.2 ms
                long end = System.nanoTime() + 5_000_000;
                while (System.nanoTime() < end) {
                    Thread.onSpinWait();
                }
            }
        }, "deep-caller", 256 << 10);
        t.start();
        t.join(TimeUnit.MINUTES.toMillis(2));
        return new int[] {escaped[0], late.get()};
    }

    /** Calls {@code POOL.run} {@code depth} frames deep; returns what escaped it (or the way down), or null. */
    private static Throwable runAtDepth(int depth, WorkerPool.Tasks tasks, int count) {
        try {
            return down(depth, tasks, count);
        } catch (StackOverflowError e) {
            return e;
        }
    }

    private static Throwable down(int depth, WorkerPool.Tasks tasks, int count) {
        if (depth > 0) {
            return down(depth - 1, tasks, count);
        }
        try {
            POOL.run(tasks, count, 1);
            return null;
        } catch (Throwable e) {
            return e;
        }
    }

    /**
     * A task with a large frame (24 doubles kept live), so that sweeping the caller's depth makes the overflow
     * happen at its entry, from the pool's own frames, rather than deep inside it.
     */
    private static double bigFrame(int task) {
        double x = task + 0.25;
        double d0 = x * 1.5;
        double d1 = x * 2.5;
        double d2 = x * 3.5;
        double d3 = x * 4.5;
        double d4 = x * 5.5;
        double d5 = x * 6.5;
        double d6 = x * 7.5;
        double d7 = x * 8.5;
        double d8 = x * 9.5;
        double d9 = x * 10.5;
        double d10 = x * 11.5;
        double d11 = x * 12.5;
        double d12 = x * 13.5;
        double d13 = x * 14.5;
        double d14 = x * 15.5;
        double d15 = x * 16.5;
        double d16 = x * 17.5;
        double d17 = x * 18.5;
        double d18 = x * 19.5;
        double d19 = x * 20.5;
        double d20 = x * 21.5;
        double d21 = x * 22.5;
        double d22 = x * 23.5;
        double d23 = x * 24.5;
        double s = d0 + d1 + d2 + d3 + d4 + d5 + d6 + d7 + d8 + d9 + d10 + d11 + d12 + d13 + d14 + d15 + d16 + d17
                + d18 + d19 + d20 + d21 + d22 + d23;
        return s + overflowDeep(s);
    }

    private static double overflowDeep(double s) {
        return s > 1e300 ? s : overflowDeep(s + 1) + 1;
    }
}
