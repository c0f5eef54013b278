package dev.qkv.cli;

import org.junit.jupiter.api.Test;

import java.lang.management.ManagementFactory;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** {@link Jit#idle}: the text of HotSpot's {@code Compiler.queue}, as JDK 25 prints it, read both ways. */
class JitTest {

    @Test
    void emptyQueuesAndNothingRunningIsIdle() {
        assertTrue(Jit.idle("Current compiles: \n\nC1 compile queue:\nEmpty\n\nC2 compile queue:\nEmpty\n\n"));
    }

    @Test
    void aRunningOrQueuedCompilationIsNotIdle() {
        // running, nothing queued
        assertFalse(Jit.idle("Current compiles: \nC2 CompilerThread0   624       4       java.lang.StringBuilder::append"
                + " (8 bytes)\n\nC1 compile queue:\nEmpty\n\nC2 compile queue:\nEmpty\n"));
        // nothing running, one queued for C1
        assertFalse(Jit.idle("Current compiles: \n\nC1 compile queue:\n 657 %     3       Q::lambda$main$0 @ 4 (35 bytes)"
                + "\n\nC2 compile queue:\nEmpty\n"));
    }

    /**
     * The diagnostic command exists under the name {@link Jit#idle} asks for: were it renamed, {@code idle()} would
     * say true for good (its fallback) and warm-ups would again end on the total compilation time alone.
     */
    @Test
    void thisJvmAnswersTheQueueCommand() throws Exception {
        Object text = ManagementFactory.getPlatformMBeanServer().invoke(
                new javax.management.ObjectName("com.sun.management:type=DiagnosticCommand"), "compilerQueue",
                new Object[] {null}, new String[] {String[].class.getName()});
        assertTrue(String.valueOf(text).contains("compile queue:"), String.valueOf(text));
    }
}
