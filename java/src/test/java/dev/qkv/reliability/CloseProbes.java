package dev.qkv.reliability;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Runs a close-race probe ({@link ConcurrentCloseTest}, {@link MhaConcurrentCloseTest}) in a child JVM, so that a
 * crash (SIGSEGV inside OpenBLAS on freed memory) shows as an exit code and an hs_err file in {@code dir}, not as
 * a dead test runner, and checks what every probe must: it returned within {@code seconds}, left no hs_err file,
 * exited 0, printed {@code close probe: done}, and printed no line starting {@code MISNAMED} or {@code UNEXPECTED}.
 */
final class CloseProbes {
    private CloseProbes() {
    }

    static void runChild(Class<?> child, Path dir, int seconds) throws IOException, InterruptedException {
        String javaCmd = ProcessHandle.current().info().command().orElse("java");
        Process p = new ProcessBuilder(javaCmd, "--enable-native-access=ALL-UNNAMED", "--add-modules",
                "jdk.incubator.vector", "-XX:ErrorFile=" + dir.resolve("hs_err_%p.log"), "-cp",
                System.getProperty("java.class.path"), child.getName()).redirectErrorStream(true).start();
        boolean done = p.waitFor(seconds, TimeUnit.SECONDS);
        if (!done) {
            p.destroyForcibly();
        }
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(done, "the child JVM did not return in " + seconds + " s (a hang?): " + output);
        try (Stream<Path> files = Files.list(dir)) {
            List<Path> crashes = files.filter(f -> f.getFileName().toString().startsWith("hs_err")).toList();
            assertTrue(crashes.isEmpty(), "the child JVM crashed: " + crashes + "\n" + output);
        }
        assertEquals(0, p.exitValue(), output);
        assertTrue(output.contains("close probe: done"), output);
        System.out.println(output);
        for (String line : output.lines().toList()) {
            assertTrue(!line.startsWith("MISNAMED") && !line.startsWith("UNEXPECTED"), output);
        }
    }

    /** Closes {@code doomed} after spinning {@code delayMicros}, again and again while a downcall holds it. */
    static void closeAfter(java.lang.foreign.Arena doomed, long delayMicros) {
        long until = System.nanoTime() + delayMicros * 1000L;
        while (System.nanoTime() < until) {
            Thread.onSpinWait();
        }
        while (true) {
            try {
                doomed.close();
                return;
            } catch (IllegalStateException busy) {
                // a downcall holds the arena until it returns: close again
                Thread.onSpinWait();
            }
        }
    }
}
