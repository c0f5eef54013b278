package dev.qkv.mha;

import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * OpenBLAS's thread count is process-wide, and the user may raise it for their own products
 * ({@code -Dqkv.blas.threads}, {@code OpenBlas.setThreads}); qkv's products run on its own workers and must run at
 * one OpenBLAS thread whatever it was left at. The layer set it only for projections of at least
 * {@code MIN_PARALLEL_FLOPS}: the smaller ones, every projection of a decode step among them, ran on OpenBLAS's
 * threads beside qkv's (measured: the OpenBLAS server thread took 82 ticks of CPU over 1500 steps of 0.93 s, 281
 * in the first, colder, run), i.e. two threads per request thread. Counted in a child JVM
 * ({@link OpenBlasThreadsProbe}), where OpenBLAS's server threads can be named: no CPU time, not timing.
 */
class OpenBlasThreadsTest {

    @Test
    void aLayersSmallProductsRunOnNoOpenBlasThread() throws Exception {
        assumeTrue(Runtime.getRuntime().availableProcessors() > 1, "one core: OpenBLAS starts no server thread");
        assumeTrue(java.nio.file.Files.isDirectory(java.nio.file.Path.of("/proc/self/task")), "no /proc");
        List<String> cmd = List.of(ProcessHandle.current().info().command().orElseThrow(),
                "--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector",
                "-cp", System.getProperty("java.class.path"), OpenBlasThreadsProbe.class.getName(), "500");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "child timed out");
        assertEquals(0, p.exitValue(), out);
        Matcher m = Pattern.compile("ticks=(\\d+) steps=(\\d+)").matcher(out);
        assertTrue(m.find(), out);
        // setThreads(2) alone costs the server thread 0-1 ticks over 1500 calls
        assertTrue(Long.parseLong(m.group(1)) <= 2, "OpenBLAS's own threads ran inside the layer's decode steps: "
                + out.strip());
    }
}
