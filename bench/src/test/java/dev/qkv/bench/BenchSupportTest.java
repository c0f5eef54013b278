package dev.qkv.bench;

import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

import static org.junit.jupiter.api.Assertions.assertTrue;

/** What {@link BenchSupport#report} records beside every figure. */
class BenchSupportTest {

    @Test
    void theReportLineNamesTheOpenBlasCoreAndTheJdk() {
        PrintStream saved = System.out;
        ByteArrayOutputStream buffer = new ByteArrayOutputStream();
        String line;
        try {
            System.setOut(new PrintStream(buffer, true, StandardCharsets.UTF_8));
            BenchSupport.report("what", "plan");
        } finally {
            System.setOut(saved);
        }
        line = buffer.toString(StandardCharsets.UTF_8);
        assertTrue(line.startsWith("# qkv what: plan openblas.core="), line);
        // OrtRatio and DecodeRatio print no JMH header: this line is the only record of the JDK beside their
        // figures, and the Vector API kernels' speed depends on it
        assertTrue(line.contains(" jdk=" + System.getProperty("java.runtime.version")), line);
        assertTrue(line.contains(System.getProperty("java.vm.vendor")), line);
    }
}
