package dev.qkv.attention;

import dev.qkv.kernel.TierProbe;
import org.junit.jupiter.api.Assumptions;

import java.lang.management.ManagementFactory;

import static org.junit.jupiter.api.Assertions.fail;

/**
 * Measures Java heap allocation of a call on the calling thread ({@code com.sun.management.ThreadMXBean}), for
 * the "steady-state calls allocate nothing" tests.
 *
 * <p>A call is measured in rounds of {@link #CALLS} calls, after at least {@link #WARMUP} calls. The claim
 * checked is that some round allocates exactly 0 bytes within {@link #BUDGET_NANOS}: an allocation made by the
 * call itself happens in every round, so no round reads 0 and the check fails with the smallest per-call
 * figure seen; an allocation made once by the JVM (the interpreter or C1 code that runs before C2 has compiled
 * the call with escape analysis, a deoptimization and recompilation, a thread-local buffer created on first
 * use) happens in some rounds only, and would make a single-round check flaky.
 *
 * <p>A test class first runs all its cases interleaved ({@link #warmUpTogether}): C2 then compiles the shared
 * engine with a profile that has seen every case's branches. Warmed up one case after another, the first case to
 * reach a branch the earlier ones never took (more keys than one vector, say) deoptimizes code compiled for
 * them, and the recompiled code can keep a kernel at C1, which boxes its vectors (measured: 1152 B per decode
 * step after forward calls with fewer than 16 keys; see bench/RESULTS.md). That is a property of the engine
 * under a changing workload, reported there, not of the steady state of one call. Exact 0 is reachable: the
 * counter counts only this thread's TLAB and outside-TLAB allocation, and reading it allocates nothing
 * (checked by {@link #requireCounter} on an empty round).
 */
public final class Allocations {
    /** Calls before the first measured round: enough for C2 to compile small shapes' hot paths. */
    public static final int WARMUP = 3000;
    /** Calls per measured round: a steady allocation of even 1 byte per call would show as >= this many. */
    public static final int CALLS = 1000;
    /** Time to reach a zero round before failing. */
    public static final long BUDGET_NANOS = 4_000_000_000L;

    /** Queries below this many rows run the Java engine's few-query path (Attention.AUTO_JAVA_QUERIES). */
    public static final int FEW_QUERIES = Attention.AUTO_JAVA_QUERIES;

    private static final com.sun.management.ThreadMXBean MX = bean();

    private Allocations() {
    }

    private static com.sun.management.ThreadMXBean bean() {
        return ManagementFactory.getThreadMXBean() instanceof com.sun.management.ThreadMXBean t ? t : null;
    }

    /** Skips the calling test when this JVM cannot count a thread's allocation. */
    public static void requireCounter() {
        Assumptions.assumeTrue(MX != null, "no com.sun.management.ThreadMXBean");
        Assumptions.assumeTrue(MX.isThreadAllocatedMemorySupported(), "thread allocation counting unsupported");
        if (!MX.isThreadAllocatedMemoryEnabled()) {
            MX.setThreadAllocatedMemoryEnabled(true);
        }
        // the counter's own read must allocate nothing, or no round could read 0
        long least = Long.MAX_VALUE;
        for (int i = 0; i < 100 && least != 0; i++) {
            long before = MX.getCurrentThreadAllocatedBytes();
            least = Math.min(least, MX.getCurrentThreadAllocatedBytes() - before);
        }
        Assumptions.assumeTrue(least == 0, "reading the allocation counter allocates " + least + " bytes");
    }

    /**
     * Runs every call in turn, {@code rounds} times: the shared warm-up of a test class. Before that the Java
     * kernels run ragged shapes ({@link TierProbe}: heads of 17 and 19, 37 columns, masked tails), as in a service
     * that serves varied shapes, so that the JIT's profiles are not only those of the cases measured. In such a
     * JVM C2 once compiled the matrix-vector kernel with its last lane sum out of line, and a Java decode step of
     * the layer boxed 18 KB per call; a JVM warmed on the measured cases alone never showed it.
     */
    public static void warmUpTogether(Iterable<Runnable> calls, int rounds) {
        TierProbe.checksum(rounds);
        for (int i = 0; i < rounds; i++) {
            for (Runnable c : calls) {
                c.run();
            }
        }
    }

    /**
     * Runs {@code call} {@link #WARMUP} times, then in rounds of {@link #CALLS} until one round allocates 0 bytes
     * on this thread; fails, naming {@code what} and the least bytes per call seen, if none does within
     * {@link #BUDGET_NANOS}. Returns the rounds measured.
     */
    public static int assertSteadyStateAllocatesNothing(String what, Runnable call) {
        requireCounter();
        for (int i = 0; i < WARMUP; i++) {
            call.run();
        }
        long start = System.nanoTime();
        long least = Long.MAX_VALUE;
        int rounds = 0;
        do {
            long before = MX.getCurrentThreadAllocatedBytes();
            for (int i = 0; i < CALLS; i++) {
                call.run();
            }
            long bytes = MX.getCurrentThreadAllocatedBytes() - before;
            rounds++;
            if (bytes == 0) {
                return rounds;
            }
            least = Math.min(least, bytes);
        } while (System.nanoTime() - start < BUDGET_NANOS);
        fail(what + ": every one of " + rounds + " rounds of " + CALLS + " calls allocated; least " + least
                + " bytes = " + (double) least / CALLS + " bytes per call");
        return rounds;
    }
}
