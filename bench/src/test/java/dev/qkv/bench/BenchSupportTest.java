package dev.qkv.bench;

import dev.qkv.blas.OpenBlas;
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

    /**
     * Every figure records its thread counts, qkv's and OpenBLAS's (issue 4's thread policy: qkv's workers times
     * OpenBLAS's threads per product must not exceed the cores). The lines named qkv's workers only.
     */
    @Test
    void theReportLineNamesOpenBlassThreadCount() {
        OpenBlas blas = OpenBlas.get();
        try {
            blas.setThreads(2);
            assertTrue(printed(() -> BenchSupport.report("what", "plan")).contains(" openblas.threads=2 "));
            blas.setThreads(1);
            assertTrue(printed(() -> BenchSupport.report("what", "plan")).contains(" openblas.threads=1 "));
        } finally {
            blas.setThreads(1);
        }
    }

    /**
     * The count recorded is the one the timed calls ran with: a native call sets OpenBLAS to one thread (qkv's
     * workers are the threads), so a line printed before the first call, with OpenBLAS still at the count it was
     * given when it loaded ({@code -Dqkv.blas.threads}), would record another count than the figure's.
     */
    @Test
    void sdpaBenchRecordsTheOpenBlasThreadsItsCallsRanWith() {
        OpenBlas blas = OpenBlas.get();
        SdpaBench bench = new SdpaBench();
        bench.shape = "1x2x16x8";
        bench.backend = "native";
        bench.causal = false;
        bench.threads = 1;
        try {
            blas.setThreads(2);
            String out = printed(bench::setup);
            String report = out.lines().filter(l -> l.startsWith("# qkv 1x2x16x8 ")).findFirst().orElseThrow();
            assertTrue(report.contains(" openblas.threads=1 "), out);
        } finally {
            bench.tearDown();
            blas.setThreads(1);
        }
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
