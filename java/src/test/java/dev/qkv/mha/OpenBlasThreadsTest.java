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

    /**
     * Runs {@link OpenBlasThreadsProbe} with {@code args} in a child JVM, with {@code env} for OpenBLAS's thread
     * variables; its output.
     */
    private static String probe(java.util.Map<String, String> env, String... args) throws Exception {
        List<String> cmd = new java.util.ArrayList<>(List.of(ProcessHandle.current().info().command().orElseThrow(),
                "--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector",
                "-cp", System.getProperty("java.class.path"), OpenBlasThreadsProbe.class.getName()));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        // OpenBLAS's own thread variables as the test sets them, none inherited
        pb.environment().keySet().removeAll(List.of("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS"));
        pb.environment().putAll(env);
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "child timed out");
        assertEquals(0, p.exitValue(), out);
        return out;
    }

    @Test
    void aLayersSmallProductsRunOnNoOpenBlasThread() throws Exception {
        assumeTrue(Runtime.getRuntime().availableProcessors() > 1, "one core: OpenBLAS starts no server thread");
        assumeTrue(java.nio.file.Files.isDirectory(java.nio.file.Path.of("/proc/self/task")), "no /proc");
        String out = probe(java.util.Map.of(), "500");
        Matcher m = Pattern.compile("ticks=(\\d+) steps=(\\d+)").matcher(out);
        assertTrue(m.find(), out);
        // setThreads(2) alone costs the server thread 0-1 ticks over 1500 calls
        assertTrue(Long.parseLong(m.group(1)) <= 2, "OpenBLAS's own threads ran inside the layer's decode steps: "
                + out.strip());
    }

    /**
     * {@code OPENBLAS_NUM_THREADS} and {@code OMP_NUM_THREADS} size OpenBLAS's own server threads when it loads
     * (capped by OpenBLAS at the cores), but qkv sets its per-product count to {@code -Dqkv.blas.threads} (1)
     * right after, so that an environment made for another program (say one exported for NumPy) does not put
     * OpenBLAS threads inside qkv's workers: the count read back is 1, and the server threads take no CPU time
     * through the layer's decode steps. Passed before; pins what the README now says of these variables.
     */
    @Test
    void theEnvironmentsOpenBlasThreadCountIsNotTaken() throws Exception {
        assumeTrue(Runtime.getRuntime().availableProcessors() > 1, "one core: OpenBLAS starts no server thread");
        assumeTrue(java.nio.file.Files.isDirectory(java.nio.file.Path.of("/proc/self/task")), "no /proc");
        for (String var : List.of("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")) {
            String out = probe(java.util.Map.of(var, "4"), "300", "env");
            Matcher loaded = Pattern.compile("loaded=(\\d+)").matcher(out);
            assertTrue(loaded.find(), out);
            assertEquals(1, Integer.parseInt(loaded.group(1)), var + "=4: OpenBLAS's count after loading: " + out);
            Matcher m = Pattern.compile("ticks=(\\d+) steps=(\\d+)").matcher(out);
            assertTrue(m.find(), out);
            assertTrue(Long.parseLong(m.group(1)) <= 2, var + "=4: OpenBLAS's own threads ran inside the layer's"
                    + " decode steps: " + out.strip());
        }
    }
}
