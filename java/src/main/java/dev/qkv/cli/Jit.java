package dev.qkv.cli;

import java.lang.management.CompilationMXBean;
import java.lang.management.ManagementFactory;

/**
 * Whether the JIT is still at work, for warm-ups that must end only once the code they time is compiled: the
 * command line's {@code bench} and demo ({@link Timing}) and the benchmarks in {@code bench/} (public for them).
 *
 * <p>The JVM's total compilation time alone said "quiet" too early beside other work on two cores: it moves only
 * when a compilation ends, and C2's compilation of the vector kernels, its threads starved, outlasted a 250 ms
 * window. {@code make bench} then timed the tiny shape's Java kernels on two threads in the lower tiers after
 * 122 warm-up calls (303-584 µs and 177-553 KB a call, against ~50 µs and 0 B compiled). So quiet also means no
 * compilation running or queued, which HotSpot's {@code Compiler.queue} diagnostic command tells.
 */
public final class Jit {
    private Jit() {
    }

    /** The JVM's total JIT compilation time in ms, or -1 (never changing) where it is not monitored. */
    public static long compiledMillis() {
        CompilationMXBean c = ManagementFactory.getCompilationMXBean();
        return c != null && c.isCompilationTimeMonitoringSupported() ? c.getTotalCompilationTime() : -1;
    }

    /**
     * True when no compilation is running or queued (HotSpot's {@code Compiler.queue}), or when the JVM cannot
     * say (then only {@link #compiledMillis} tells).
     */
    public static boolean idle() {
        try {
            Object text = ManagementFactory.getPlatformMBeanServer().invoke(
                    new javax.management.ObjectName("com.sun.management:type=DiagnosticCommand"), "compilerQueue",
                    new Object[] {null}, new String[] {String[].class.getName()});
            return idle(String.valueOf(text));
        } catch (javax.management.JMException | RuntimeException | LinkageError e) {
            return true;
        }
    }

    /**
     * Whether {@code Compiler.queue}'s text lists no compilation: every line is blank, a section's title
     * ({@code Current compiles:}, {@code C1 compile queue:}, ...) or {@code Empty}.
     */
    static boolean idle(String queue) {
        for (String line : queue.split("\n")) {
            String l = line.strip();
            if (!l.isEmpty() && !l.equals("Empty") && !l.endsWith(":")) {
                return false;
            }
        }
        return true;
    }
}
