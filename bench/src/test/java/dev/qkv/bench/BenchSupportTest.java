package dev.qkv.bench;

import dev.qkv.kernel.Vectorization;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

import static org.junit.jupiter.api.Assertions.assertTrue;

/** What {@link BenchSupport#report} records beside every figure. */
class BenchSupportTest {

    @Test
    void theReportLineNamesTheOpenBlasCoreAndTheJdk() {
        String line = printed(() -> BenchSupport.report("what", "plan"));
        assertTrue(line.startsWith("# qkv what: plan openblas.core="), line);
        // OrtRatio and DecodeRatio print no JMH header: this line is the only record of the JDK beside their
        // figures, and the Vector API kernels' speed depends on it
        assertTrue(line.contains(" jdk=" + System.getProperty("java.runtime.version")), line);
        assertTrue(line.contains(System.getProperty("java.vm.vendor")), line);
        assertTrue(line.contains(" vector=\"" + Vectorization.reason() + "\""), line);
    }

    @Test
    void theDowncallBenchmarksRecordTheCoreTheJdkAndTheVectorKernels() {
        // their setup lines printed the library and core only, no jdk= and no vector=, unlike every other benchmark
        DowncallBench sgemm = new DowncallBench();
        sgemm.n = 1;
        String line = printed(() -> {
            sgemm.setup();
            sgemm.tearDown();
        });
        assertTrue(line.contains("# qkv downcall n=1: "), line);
        assertTrue(line.contains(" jdk=" + BenchSupport.jdk() + " vector=\"" + Vectorization.reason() + "\""), line);
        line = printed(new EmptyDowncallBench()::setup);
        assertTrue(line.contains("# qkv empty downcall: "), line);
        assertTrue(line.contains(" jdk=" + BenchSupport.jdk() + " vector=\"" + Vectorization.reason() + "\""), line);
    }

    /**
     * A library the user chose ({@code -Dqkv.blas.library}) that does not load stops the benchmark, as the CLI
     * refuses it (exit 2): the setup line read {@code openblas.core=unavailable} and the figures were measured on
     * without the library the user asked for. Run in a child JVM, since OpenBLAS loads once per JVM.
     */
    @Test
    void aChosenLibraryThatDoesNotLoadStopsTheBenchmark() throws Exception {
        String missing = "/nonexistent/libopenblas.so.0";
        java.util.List<String> cmd = new java.util.ArrayList<>(java.util.List.of(
                ProcessHandle.current().info().command().orElseThrow(), "--enable-native-access=ALL-UNNAMED",
                "--add-modules", "jdk.incubator.vector", "-Dqkv.blas.library=" + missing,
                "-cp", System.getProperty("java.class.path"), CoreProbe.class.getName()));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        pb.environment().remove("QKV_BLAS_LIBRARY");
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, java.util.concurrent.TimeUnit.SECONDS), out);
        assertTrue(p.exitValue() == 3, "exit " + p.exitValue() + ": " + out);
        assertTrue(out.contains("error=system property qkv.blas.library = " + missing), out);
        assertTrue(!out.contains("core="), out);
    }

    /** What {@code run} prints on System.out. */
    private static String printed(Runnable run) {
        PrintStream saved = System.out;
        ByteArrayOutputStream buffer = new ByteArrayOutputStream();
        try {
            System.setOut(new PrintStream(buffer, true, StandardCharsets.UTF_8));
            run.run();
        } finally {
            System.setOut(saved);
        }
        return buffer.toString(StandardCharsets.UTF_8);
    }
}
