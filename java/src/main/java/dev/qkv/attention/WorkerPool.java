package dev.qkv.attention;

import dev.qkv.config.Settings;

import java.lang.foreign.MemorySegment;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.locks.ReentrantLock;

/**
 * The process-wide pool behind parallel attention: one daemon thread per core but one (the caller is the
 * other worker), shared by every {@link Attention}, so that no number of instances can oversubscribe the
 * cores. A thread is started by the first call that wants it and ends after {@link #IDLE_NANOS} without a call;
 * one the JVM cannot start (the process's thread limit) leaves that call's tasks to its caller, and a later call
 * tries again. A call hands its tasks to the pool only when the pool is idle; a call that finds it busy runs its
 * tasks on the calling thread. Tasks are claimed one at a time from a shared counter, which balances uneven (causal)
 * work, and a call returns when its tasks are done, whether or not every helper got to run. Nothing is
 * allocated per call: workers are woken by {@link LockSupport#unpark}.
 *
 * <p><b>Concurrent callers.</b> Every thread inside {@link #run} computes on its own core, so helpers take only
 * the cores that callers leave: a call gets at most (cores - callers) helpers, and a helper stops claiming a call's
 * tasks (after the one it is running) as soon as another caller comes in, leaving the rest to the call's own
 * thread. Two request threads on two cores then run one thread each, not three threads on two cores. A thread
 * counts once however deep its calls nest: a call made from a task, on the thread of a call already inside
 * {@link #run} (the multi-head layer's reference forward runs its reference attention so) or on a pool thread
 * running a call's task, takes no core that thread has not taken already, and is not counted again.
 *
 * <p><b>Spin policy.</b> Waking a parked thread costs about as much as the half of a small call (tens of
 * microseconds) it would take over, so calls under {@link #MIN_PARALLEL_FLOPS} are shared only with a pool thread
 * that is spinning ({@link Thread#onSpinWait}) for the next call. Pool threads spin only when
 * {@code qkv.pool.spinMicros} gives them a time ({@link #SPIN_NANOS}; 0 by default: they park at once), for at
 * most that long, and only:
 * <ul>
 *   <li>after work: after a call's tasks, or when asked by a call that came less than a spin after the last one
 *       ended (back-to-back calls; the asking call runs alone, the next finds the thread running). An idle pool
 *       is parked and uses no CPU;</li>
 *   <li>while the callers inside {@link #run} leave it a core;</li>
 *   <li>while it gets its core. A pool thread reads its own CPU time when a spin starts and ends: if over
 *       {@link #SHARE_WINDOW_NANOS} of spinning and helping it ran less than {@link #RUN_SHARE_MIN} of the time,
 *       other threads or processes want the cores, and the pool spins no more for {@link #QUIET_MIN_NANOS},
 *       twice as long each time in a row, up to {@link #QUIET_MAX_NANOS}. A small call whose caller waits for
 *       a pool thread's task longer than it took for its own (and over {@link #SMALL_WAIT_NANOS}) quiets the
 *       pool at once: that thread lost its core during the call.</li>
 * </ul>
 * Spinning stays off by default: on this project's shared 2-core machine a second core that looks free can
 * still run slower than the first (other tenants of the host, which the CPU-time check does not always see), and
 * a small call then waits for its half on the slower core (bench/RESULTS.md, rounds 3 and 15).
 */
public final class WorkerPool {

    /** A batch of numbered tasks; {@code worker} is 0 for the caller, 1.. for pool threads. */
    public interface Tasks {
        void run(int task, int worker);
    }

    /**
     * Below this many FLOPs work stays on the calling thread: waking a parked pool thread costs about as much as
     * such a task (measured for attention, bench/RESULTS.md). Shared by every user of the pool.
     */
    public static final double MIN_PARALLEL_FLOPS = 8e6;

    /** How long a pool thread spins for the next call (see the class comment); 0: it parks at once. */
    static final long SPIN_NANOS = Settings.longSetting("qkv.pool.spinMicros", 0, 0, 10_000_000) * 1000;

    /** Wall time of spinning and helping over which a pool thread judges whether it had its core. */
    static final long SHARE_WINDOW_NANOS = 10_000_000L;

    /** The share of that time it must have run; less means other threads want the cores. */
    static final double RUN_SHARE_MIN = 0.8;

    /**
     * How long the pool spins no more after a window short of its core; doubled when such a window ends less than
     * {@link #QUIET_AGAIN_NANOS} after the last quiet period, up to the maximum.
     */
    static final long QUIET_MIN_NANOS = 100_000_000L;
    static final long QUIET_MAX_NANOS = 1_600_000_000L;
    static final long QUIET_AGAIN_NANOS = 1_000_000_000L;

    /** A small call's wait for a pool thread's task beyond which that thread lost its core (see run). */
    static final long SMALL_WAIT_NANOS = 100_000L;

    /**
     * How long a pool thread waits for a call before it ends ({@code qkv.pool.idleMillis}, default a minute); the next
     * call that wants it starts it again. A thread that never ended kept the class loader that loaded qkv (its code,
     * its context class loader) and its scratch for the life of the process: every copy of qkv that an application
     * server redeployed, or a plugin system unloaded, stayed in memory with (cores - 1) threads (found by
     * PoolLifetimeTest). Steady calls never wait that long, so they start no thread.
     */
    static final long IDLE_NANOS = Settings.longSetting("qkv.pool.idleMillis", 60_000, 1, 86_400_000) * 1_000_000;

    /** Low 32 bits of {@link #state} while a call's fields are being set or after it ended. */
    private static final long CLOSED = 0xFFFF_FFFFL;

    static final WorkerPool SHARED = new WorkerPool(Math.max(0, Runtime.getRuntime().availableProcessors() - 1),
            SPIN_NANOS);

    private final ReentrantLock busy = new ReentrantLock();
    private final Thread[] threads;
    /** (generation of the open call) << 32 | (its next unclaimed task), or CLOSED in the low bits. */
    private final AtomicLong state = new AtomicLong(CLOSED);
    /** Tasks of the open call not yet finished (run, or skipped after a failure). */
    private final AtomicInteger pending = new AtomicInteger();
    private final AtomicReference<Throwable> failure = new AtomicReference<>();
    /**
     * Threads inside {@link #run} now, each computing on its own core (see "Concurrent callers" above), each
     * counted once: not again by a call nested in one of its tasks.
     */
    private final AtomicInteger callers = new AtomicInteger();
    /**
     * Per thread: whether it is counted already, as a caller inside {@link #run} or as one of this pool's threads,
     * so that a call nested in one of its tasks counts it no more (see "Concurrent callers" above). Read once per
     * call (a thread-local lookup, a few ns); made once per thread, so that steady calls allocate nothing. Element
     * 0, read and written by its own thread only. A {@code boolean[]}, not a class of qkv's: a request thread that
     * outlives an undeploy keeps the value, which must not keep qkv's class loader.
     */
    private final ThreadLocal<boolean[]> counted = ThreadLocal.withInitial(() -> new boolean[1]);

    /** Pool threads inside {@link #drain} now: a caller that leaves abnormally waits for them (see run). */
    private final AtomicInteger helping = new AtomicInteger();
    private volatile long generation;
    /** Pool threads spinning for the next call now. */
    private final AtomicInteger spinning = new AtomicInteger();
    /** Spins begun since the pool was made (tests: none may begin while the callers hold every core). */
    private final AtomicLong spinsBegun = new AtomicLong();
    /** Pool thread 0 spins for the next call now: a small call is shared only with it (see spins). */
    private volatile boolean zeroSpins;
    /** Set by {@link #spins} to ask pool thread 0 to spin before a call comes. */
    private volatile boolean spinWanted;
    /** Set by pool thread 0 when the JVM cannot give it its CPU time: it never spins, so is never asked to. */
    private volatile boolean noCpuClock;
    /** System.nanoTime() at which the last call through {@link #run} ended. */
    private volatile long lastEnd = System.nanoTime() - (1L << 40);
    /** No spinning until this System.nanoTime() (see the class comment). */
    private volatile long quietUntil = System.nanoTime() - (1L << 40);
    /** The next quiet period; guarded by {@code this}. */
    private long quietNanos = QUIET_MIN_NANOS;
    private volatile int helpers;
    private volatile int taskCount;
    private volatile Tasks tasks;
    private volatile Thread caller;

    /** How long this pool's threads spin for the next call: {@link #SPIN_NANOS} for the shared pool. */
    private final long spinNanos;

    /** How long this pool's threads wait for a call before they end: {@link #IDLE_NANOS} for the shared pool. */
    private final long idleNanos;

    /** Starts a pool thread: {@link Thread#start} but in tests. */
    private final java.util.function.Consumer<Thread> starter;

    /** A pool of {@code size} threads; tests make their own with spinning on. */
    WorkerPool(int size, long spinNanos) {
        this(size, spinNanos, IDLE_NANOS);
    }

    WorkerPool(int size, long spinNanos, long idleNanos) {
        this(size, spinNanos, idleNanos, Thread::start);
    }

    /** As above, with how a pool thread is started: {@link Thread#start}, or a test's that can refuse. */
    WorkerPool(int size, long spinNanos, long idleNanos, java.util.function.Consumer<Thread> starter) {
        this.threads = new Thread[size];
        this.spinNanos = spinNanos;
        this.idleNanos = idleNanos;
        this.starter = starter;
    }

    /**
     * The process-wide pool: public for the multi-head layer's projections (dev.qkv.mha), which must share
     * attention's threads rather than bring their own, so that nothing oversubscribes the cores.
     */
    public static WorkerPool shared() {
        return SHARED;
    }

    /** Pool threads available to one call (cores - 1). */
    int helpers() {
        return threads.length;
    }

    /** True when the pool's threads may access {@code s} (false for memory of a confined arena). */
    public boolean accessible(MemorySegment segment) {
        Objects.requireNonNull(segment, "segment is null");
        if (threads.length == 0) {
            return false;
        }
        Thread t = threadZero();
        // null: it could not start, and this call runs on its caller
        return t != null && segment.isAccessibleBy(t);
    }

    /**
     * Pool thread 0, started first if it is not running (never started, or ended idle), or null when the JVM
     * cannot start it. Read once: it may end idle again right after.
     */
    private Thread threadZero() {
        Thread t = threads[0];
        if (t == null) {
            synchronized (this) {
                start(1);
                t = threads[0];
            }
        }
        return t;
    }

    /**
     * Runs tasks {@code 0 .. count-1} on the caller and up to {@code wanted} pool threads, and returns when all
     * are done. A failure in any task is rethrown here (the remaining tasks are skipped). The call waits for
     * its tasks, not for its helpers: a helper the scheduler has not run yet (the cores busy with other
     * processes) finds nothing left to claim, and the caller has run every task itself.
     *
     * @throws IllegalArgumentException when {@code count} or {@code wanted} is negative (before any task runs)
     */
    public void run(Tasks job, int count, int wanted) {
        Objects.requireNonNull(job, "job is null");
        if (count < 0 || wanted < 0) {
            throw new IllegalArgumentException("WorkerPool.run: count " + count + " and wanted " + wanted
                    + " must not be negative");
        }
        run(job, count, wanted, false);
    }

    /**
     * {@link #run(Tasks, int, int)}; {@code small}: the call is shared only because a pool thread spun for it. If
     * its caller then waits for the pool's tasks longer than it took for its own (and more than
     * {@link #SMALL_WAIT_NANOS}), a pool thread lost its core during the call, and the pool goes quiet at once.
     */
    void run(Tasks job, int count, int wanted, boolean small) {
        // Stack first. A task that overflows the stack is caught in drain, and the error rethrown here; but a call
        // made near the end of the stack can overflow again in that handler, or in the finally blocks that count
        // the caller out, close the call and unlock, since each is a call made at nearly the depth at which one
        // just failed. One left undone disables the pool for the process (a lock never released: every later
        // call runs on its caller alone). Going STACK_PROBE_FRAMES large frames deeper first, and back, throws
        // here, before any state changes, unless the stack holds that much more than the bookkeeping needs. Drain's
        // handler can still overflow the first time it runs (interpreted, linking its VarHandle call): the caller
        // then gets that error instead of the task's, and the finally below still closes the call.
        probeStack(STACK_PROBE_FRAMES, 1.0);
        boolean[] self = counted.get();
        if (self[0]) {
            // a call inside a task, on a thread counted already: by the call that ran the task on this thread
            // (which also counts it out, once, however either call ends), or as a pool thread helping a call. It
            // computes on the core it has: counted twice, it took a helper's core from a concurrent call. On a pool
            // thread the enclosing call holds the lock until its tasks are done, so this call runs here
            run(job, count, wanted, callers.get(), small);
            return;
        }
        int active = callers.incrementAndGet();
        self[0] = true;
        try {
            run(job, count, wanted, active, small);
        } finally {
            self[0] = false;
            callers.decrementAndGet();
            if (spinNanos > 0) {
                lastEnd = System.nanoTime();
            }
        }
    }

    /**
     * Frames of {@link #probeStack}: ~100 B each compiled (more interpreted), so some 2 KB of headroom, for
     * ~125 ns a call (0.5% of the tiny shape's). 24 made WorkerPoolTest's overflow sweep leave the pool working in
     * every run; without the probe, half the runs left its lock held.
     */
    static final int STACK_PROBE_FRAMES = 24;

    /** Recursion with eight doubles live across each call (so each frame holds them); returns a number. */
    static double probeStack(int n, double x) {
        if (n == 0) {
            return x;
        }
        double a = x * 1.5;
        double b = x * 2.5;
        double c = x * 3.5;
        double d = x * 4.5;
        double e = x * 5.5;
        double f = x * 6.5;
        double g = x * 7.5;
        double h = x * 8.5;
        return probeStack(n - 1, a) + a + b + c + d + e + f + g + h;
    }

    private void run(Tasks job, int count, int wanted, int active, boolean small) {
        // the cores that the callers (this one included) leave free
        int h = Math.min(Math.min(Math.min(wanted, threads.length), count - 1), threads.length + 1 - active);
        // a task that calls run again on the caller's thread runs its tasks there: the lock is reentrant, and
        // taking it again would overwrite the open call's fields
        if (h <= 0 || busy.isHeldByCurrentThread() || !busy.tryLock()) {
            for (int t = 0; t < count; t++) {
                job.run(t, 0);
            }
            return;
        }
        try {
            start(h);
            long g = generation + 1;
            // closed while the fields change: a late claim for an earlier call cannot succeed from here on
            state.set(g << 32 | CLOSED);
            tasks = job;
            taskCount = count;
            helpers = h;
            failure.set(null);
            pending.set(count);
            caller = Thread.currentThread();
            state.set(g << 32);
            generation = g;
            boolean finished = false;
            try {
                for (int i = 0; i < h; i++) {
                    LockSupport.unpark(threads[i]);
                }
                long start = small ? System.nanoTime() : 0;
                drain(job, g, count, 0);
                long own = small ? System.nanoTime() : 0;
                int spins = 0;
                boolean interrupted = false;
                while (pending.get() > 0) {
                    if (++spins < 2000) {
                        Thread.onSpinWait();
                    } else {
                        LockSupport.park(this);
                        // park returns at once while the flag is set: an interrupted caller spun a core until the
                        // helpers finished. The call does not answer interrupts; the flag is set again below
                        interrupted |= Thread.interrupted();
                    }
                }
                if (interrupted) {
                    Thread.currentThread().interrupt();
                }
                finished = true;
                if (small) {
                    long now = System.nanoTime();
                    if (now - own > Math.max(SMALL_WAIT_NANOS, own - start)) {
                        judged(now, false);
                    }
                }
            } finally {
                state.set(g << 32 | CLOSED);
                if (!finished) {
                    // the caller's own part threw outside a task (a StackOverflowError in drain's handler, say):
                    // no helper may still run a task of this call, or count it down in the next call, once it
                    // leaves. The call is closed, so they claim nothing more; wait for the tasks they hold. Only
                    // intrinsics here: the stack may be nearly full.
                    while (helping.get() != 0) {
                        Thread.onSpinWait();
                    }
                }
                tasks = null;
            }
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

    /**
     * The next task of call {@code g}, or -1 when none is left or {@code g} is no longer the open call. One
     * compare-and-set on (generation, next task) together: a helper that read the fields of another call cannot
     * claim a task with them.
     */
    private int claim(long g, int count) {
        for (;;) {
            long st = state.get();
            int t = (int) st;
            if (st >>> 32 != (g & CLOSED) || t < 0 || t >= count) {
                return -1;
            }
            if (state.compareAndSet(st, st + 1)) {
                return t;
            }
        }
    }

    /**
     * Whether the callers inside {@link #run} now leave a core to helper {@code worker} (pool thread
     * {@code worker - 1}): callers and helpers 1..worker together no more than the cores. Read where a helper claims a
     * task, begins a spin and keeps spinning.
     */
    private boolean coreLeftFor(int worker) {
        return callers.get() + worker <= threads.length + 1;
    }

    private void drain(Tasks job, long g, int count, int worker) {
        // a helper (worker > 0) claims while the callers leave it a core; the caller claims until none is left
        for (int t; (worker == 0 || coreLeftFor(worker)) && (t = claim(g, count)) >= 0; ) {
            try {
                if (failure.get() == null) {
                    job.run(t, worker);
                }
            } catch (Throwable e) {
                failure.compareAndSet(null, e);
            } finally {
                if (pending.decrementAndGet() == 0 && worker != 0) {
                    LockSupport.unpark(caller);
                }
            }
        }
    }

    private synchronized void start(int h) {
        for (int i = 0; i < h; i++) {
            if (threads[i] == null) {
                final int index = i;
                // started by whichever caller first needs it, and kept until it is idle for idleNanos (see
                // IDLE_NANOS): it must keep nothing of that caller's (its inheritable thread-local values, its context
                // class loader), or they live as long as it
                Thread t = Thread.ofPlatform().name("qkv-attention-" + (i + 1)).daemon(true)
                        .inheritInheritableThreadLocals(false).unstarted(() -> loop(index));
                t.setContextClassLoader(WorkerPool.class.getClassLoader());
                threads[i] = t;
                try {
                    starter.accept(t);
                } catch (OutOfMemoryError e) {
                    // "unable to create native thread": the process met its thread limit. The call runs without
                    // this helper (its tasks run on the caller, as when a helper is not scheduled), and a later
                    // call tries again; thrown, it failed a call that needs no second thread, and the thread
                    // never started stayed in its slot for good
                    threads[i] = null;
                    return;
                }
            }
        }
    }

    /** The pool's state in words, for diagnostics: its threads, callers, lock, open call. */
    String describe() {
        StringBuilder sb = new StringBuilder();
        for (Thread t : threads) {
            sb.append(t == null ? "not started" : t.getName() + " " + t.getState()).append(", ");
        }
        return sb.append("callers=").append(callers.get()).append(" helping=").append(helping.get())
                .append(" lock=").append(busy).append(" generation=").append(generation)
                .append(" state=").append(Long.toHexString(state.get())).toString();
    }

    /**
     * True when pool thread 0 spins for the next call now: a small call is worth sharing with it (with it alone:
     * the others spin only after large calls, and may be parked by the time the call is shared). When it does not,
     * a call that comes less than a spin after the last one ended, while the pool is not quiet and other callers
     * leave a core, asks it to start spinning, for the calls that follow.
     */
    boolean spins() {
        if (zeroSpins) {
            return true;
        }
        if (spinNanos > 0 && threads.length > 0 && !spinWanted && !noCpuClock) {
            long now = System.nanoTime();
            if (now - lastEnd < spinNanos && now - quietUntil >= 0 && callers.get() < threads.length) {
                Thread zero = threadZero();
                spinWanted = true;
                LockSupport.unpark(zero);
            }
        }
        return false;
    }

    /** Threads inside {@link #run} now: the callers that count as cores taken. */
    int callersNow() {
        return callers.get();
    }

    /** Spins begun so far, by any pool thread. */
    long spinsBegun() {
        return spinsBegun.get();
    }

    /** Pool threads spinning for the next call now. */
    int spinningNow() {
        return spinning.get();
    }

    /** True when every pool thread started so far is parked (or has ended idle): the pool uses no CPU. */
    boolean parked() {
        for (Thread t : threads) {
            Thread.State st = t == null ? Thread.State.TERMINATED : t.getState();
            if (st != Thread.State.WAITING && st != Thread.State.TIMED_WAITING && st != Thread.State.TERMINATED) {
                return false;
            }
        }
        return true;
    }

    /**
     * True when pool threads may spin for calls (a spin time is set, and there are pool threads): small calls are
     * then planned for the instance's threads. From the settings alone, so that plans never depend on the moment;
     * a JVM without a thread CPU clock plans so too, and its pool threads never spin (see loop).
     */
    boolean canSpin() {
        return spinNanos > 0 && threads.length > 0;
    }

    /** Makes the pool quiet (no spinning) for {@code nanos} from now: for tests. */
    void quietFor(long nanos) {
        synchronized (this) {
            quietUntil = System.nanoTime() + nanos;
        }
    }

    /** True while the pool spins no more because its threads lately did not get their cores. */
    boolean quiet() {
        return System.nanoTime() - quietUntil < 0;
    }

    /** A window's verdict: whether the pool thread ran at least RUN_SHARE_MIN of it. */
    private synchronized void judged(long now, boolean hadCore) {
        if (hadCore) {
            quietNanos = QUIET_MIN_NANOS;
            return;
        }
        quietNanos = now - quietUntil < QUIET_AGAIN_NANOS ? Math.min(QUIET_MAX_NANOS, 2 * quietNanos) : QUIET_MIN_NANOS;
        quietUntil = now + quietNanos;
    }

    /**
     * The thread CPU clock (java.management, optional), loaded by a pool thread when it starts (in a pool that
     * spins), never on a caller's thread (its first use loads java.management: milliseconds, and a deep caller's
     * stack).
     */
    private static final class CpuClock {
        static final java.lang.management.ThreadMXBean BEAN = bean();
        static final boolean SUPPORTED = BEAN != null;

        private static java.lang.management.ThreadMXBean bean() {
            try {
                java.lang.management.ThreadMXBean b = java.lang.management.ManagementFactory.getThreadMXBean();
                return b.isCurrentThreadCpuTimeSupported() && b.isThreadCpuTimeEnabled() ? b : null;
            } catch (Throwable e) {
                // no java.management, or a security manager: no spinning, which is always correct
                return null;
            }
        }

        static long now() {
            return BEAN.getCurrentThreadCpuTime();
        }
    }

    /**
     * One pool thread's spin: whether it spins and until when, and its account of spinning and helping (wall and
     * CPU time from the start of a spin to the start of the next, or to its end when the thread parks), judged
     * every {@link #SHARE_WINDOW_NANOS}.
     */
    private final class Spin {
        private final int index;
        boolean on;
        long until;
        private boolean marked;
        private long markWall;
        private long markCpu;
        private long wall;
        private long cpu;

        Spin(int index) {
            this.index = index;
        }

        /**
         * Starts a spin if this thread may spin now (see maySpin), announced before the CPU clock is read (~0.3
         * µs), so that a caller right behind finds it; else its account stops until the next spin.
         */
        void begin(long now) {
            // and only while the callers leave this thread a core, as the spin loop checks: announced first, a spin
            // begun beside callers that hold every core was read as on (spins(), spinningNow) until the loop's
            // next look ended it, and a small call in that moment was shared with a thread that had no core
            if (maySpin(now) && coreLeftFor(index + 1)) {
                on = true;
                until = now + spinNanos;
                spinsBegun.incrementAndGet();
                spinning(index, +1);
                add(now, true);
            } else {
                add(now, false);
            }
        }

        /** Leaves the spin for a call's tasks: the time until the next spin still counts. */
        void leave() {
            on = false;
            spinning(index, -1);
        }

        /** Ends the spin before parking: the spin counts, then nothing until the next spin starts. */
        void end(long now) {
            leave();
            add(now, false);
        }

        private void add(long now, boolean keep) {
            if (!marked && !keep) {
                // nothing under way: no clock to read (and none there when the JVM has no thread CPU clock)
                return;
            }
            long c = CpuClock.now();
            if (marked) {
                wall += now - markWall;
                cpu += c - markCpu;
                if (wall >= SHARE_WINDOW_NANOS) {
                    judged(now, cpu >= RUN_SHARE_MIN * wall);
                    wall = 0;
                    cpu = 0;
                }
            }
            marked = keep;
            markWall = now;
            markCpu = c;
        }
    }

    /**
     * True when this thread may spin now: spinning set, the thread CPU clock there (without it, loop has set
     * {@link #noCpuClock} when the thread started), the pool not quiet.
     */
    private boolean maySpin(long now) {
        return spinNanos > 0 && CpuClock.SUPPORTED && now - quietUntil >= 0;
    }

    private void loop(int index) {
        if (spinNanos > 0 && !CpuClock.SUPPORTED && index == 0) {
            // the clock loads here, when the thread starts, rather than at its first spin
            noCpuClock = true;
        }
        // a pool thread computes only for a call that counted it as a helper: a call made from a task it runs
        // counts it no more (see run)
        counted.get()[0] = true;
        long seen = 0;
        Spin spin = new Spin(index);
        for (;;) {
            long g = generation;
            if (g == seen) {
                if (!spin.on && index == 0 && spinWanted) {
                    // asked by spins(): calls come back to back
                    spinWanted = false;
                    spin.begin(System.nanoTime());
                }
                if (spin.on) {
                    // while the time lasts, the callers leave this thread a core, and the pool is not quiet
                    long now = System.nanoTime();
                    if (now - spin.until < 0 && coreLeftFor(index + 1)
                            && now - quietUntil >= 0) {
                        Thread.onSpinWait();
                        continue;
                    }
                    spin.end(now);
                }
                // an interrupt left set (by a task that restores one it caught, or by anyone holding this thread)
                // would make every park return at once: the idle thread would spin a core for good. Nothing here
                // waits for an interrupt
                Thread.interrupted();
                long parkedAt = System.nanoTime();
                LockSupport.parkNanos(this, idleNanos);
                if (System.nanoTime() - parkedAt >= idleNanos && retire(index, seen)) {
                    return;
                }
                continue;
            }
            seen = g;
            if (index >= helpers) {
                // not in this call: a spin under way goes on to its old end, none starts (only work starts one)
                continue;
            }
            if (spin.on) {
                spin.leave();
            }
            Tasks job = tasks;
            int count = taskCount;
            if (job != null) {
                helping.incrementAndGet();
                try {
                    drain(job, g, count, index + 1);
                } finally {
                    helping.decrementAndGet();
                }
            }
            if (spinNanos == 0) {
                continue;
            }
            if (index == 0) {
                // a spin asked for meanwhile is this one, or none while the pool is quiet (spins asks again later)
                spinWanted = false;
            }
            spin.begin(System.nanoTime());
        }
    }

    /**
     * Ends pool thread {@code index} after it waited {@link #idleNanos} for a call, unless a call came meanwhile
     * ({@code seen} is no longer the last generation) or thread 0 was asked to spin: its slot is emptied, and
     * {@link #start} makes a new thread when a call wants one. A call that set its fields after this looked at the
     * generation finds the slot empty or the thread ending, unparks nothing, and runs its tasks on its caller
     * (a call waits for its tasks, not for its helpers).
     */
    private synchronized boolean retire(int index, long seen) {
        if (generation != seen || (index == 0 && spinWanted) || threads[index] != Thread.currentThread()) {
            return false;
        }
        threads[index] = null;
        return true;
    }

    /** Counts pool thread {@code index} in (+1) or out (-1) of the spinning ones. */
    private void spinning(int index, int delta) {
        spinning.addAndGet(delta);
        if (index == 0) {
            zeroSpins = delta > 0;
        }
    }
}
