package dev.qkv.cli;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** bench's last line, {@code median_ms=<x> gflops=<y>}, for values a clock on this machine may not give. */
class BenchCommandTest {

    private static final Pattern LINE = Pattern.compile("median_ms=(\\d+\\.\\d+) gflops=(\\d+\\.\\d+)");

    /**
     * Whatever the size of the median, the line holds it to 2 significant digits (within 5%), and the gflops it
     * prints is 4·B·H·L·L·D / (median_ms·1e6) within that rounding. A reference call on [1, 1, 1, 1] takes ~0.4 µs:
     * it printed {@code median_ms=0.000 gflops=0.01}, a time of 0 beside a finite speed.
     */
    @ParameterizedTest
    @ValueSource(doubles = {0.000412, 0.00095, 0.0031, 0.056, 0.5, 4.1234, 12_345.678, 9.87e7})
    void theLineHoldsTheMedianAndAConsistentSpeed(double ms) {
        double flops = Timing.denseFlops(1, 1, 1, 1, 1);
        double gflops = Timing.gflops(flops, ms);
        Matcher m = LINE.matcher(BenchCommand.resultLine(ms, gflops));
        assertTrue(m.matches(), BenchCommand.resultLine(ms, gflops));
        double printedMs = Double.parseDouble(m.group(1));
        double printedGflops = Double.parseDouble(m.group(2));
        assertEquals(ms, printedMs, ms * 0.05, m.group());
        assertEquals(4 / (printedMs * 1e6), printedGflops, printedGflops * 0.1, m.group());
    }

    /** Values of 1 or more keep the decimals the line always had; a locale with a decimal comma changes nothing. */
    @Test
    void usualValuesReadAsBeforeInAnyLocale() {
        Locale saved = Locale.getDefault();
        try {
            Locale.setDefault(Locale.GERMANY);
            assertEquals("median_ms=4.123 gflops=12.35", BenchCommand.resultLine(4.1234, 12.3456));
            assertEquals("median_ms=1234567.000 gflops=123456789.00", BenchCommand.resultLine(1234567, 123456789));
        } finally {
            Locale.setDefault(saved);
        }
    }

    /** A median of 0 (a clock coarser than the call) makes the speed infinite: never printed as a figure. */
    @Test
    void anInfiniteOrUndefinedFigureIsNeverPrinted() {
        assertThrows(IllegalStateException.class, () -> BenchCommand.resultLine(0, Double.POSITIVE_INFINITY));
        assertThrows(IllegalStateException.class, () -> BenchCommand.resultLine(Double.NaN, Double.NaN));
    }

    /**
     * The figure's header records what the speed of the Java kernels depends on, as every benchmark's setup line
     * does (bench/RESULTS.md quotes this command's figures): the JDK and the vector kernels beside the OpenBLAS
     * core and the threads. It named neither the JDK nor the vector width.
     */
    /**
     * The header records both thread counts of the figure, qkv's workers and OpenBLAS's threads per product, the
     * latter as the timed calls ran it: a native call sets OpenBLAS to one thread whatever it was given before. The
     * header named qkv's threads only.
     */
    @Test
    void theHeaderNamesOpenBlassThreadsAsTheCallsRanThem() throws Exception {
        dev.qkv.blas.OpenBlas blas = dev.qkv.blas.OpenBlas.get();
        try {
            blas.setThreads(2);
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            int code = new BenchCommand().run(List.of("--shape", "1,2,16,8", "--backend", "native", "--threads", "1",
                    "--iters", "1"), new PrintStream(out, true, StandardCharsets.UTF_8),
                    new PrintStream(new ByteArrayOutputStream(), true, StandardCharsets.UTF_8));
            String text = out.toString(StandardCharsets.UTF_8);
            assertEquals(0, code, text);
            String header = text.lines().findFirst().orElseThrow();
            assertTrue(header.contains(" threads=1 openblas.threads=1 "), header);
        } finally {
            blas.setThreads(1);
        }
    }

    /**
     * The figure belongs to a checked answer: before it reports, bench recomputes rows of its output with the
     * scalar reference (up to 64, the first and the last included; every row of a smaller call) and the header
     * says how many and the largest difference. bench timed whatever the kernels returned, so a fast wrong kernel
     * printed a figure.
     */
    @ParameterizedTest
    @ValueSource(strings = {"native", "java", "auto"})
    void theHeaderSaysTheOutputWasCheckedAgainstTheReference(String backend) throws Exception {
        for (List<String> shape : List.of(List.of("--shape", "1,4,16,8", "--kv-heads", "2", "--causal"),
                List.of("--shape", "2,3,40,16"))) {
            List<String> args = new java.util.ArrayList<>(shape);
            args.addAll(List.of("--backend", backend, "--threads", "1", "--iters", "1"));
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            int code = new BenchCommand().run(args, new PrintStream(out, true, StandardCharsets.UTF_8),
                    new PrintStream(new ByteArrayOutputStream(), true, StandardCharsets.UTF_8));
            String text = out.toString(StandardCharsets.UTF_8);
            assertEquals(0, code, text);
            String header = text.lines().findFirst().orElseThrow();
            // 1·4·16 = 64 rows: all; 2·3·40 = 240 rows: 64 of them
            Matcher m = Pattern.compile(" checked_rows=64 max_diff=(\\S+) ").matcher(header);
            assertTrue(m.find(), header);
            assertTrue(Double.parseDouble(m.group(1)) <= 1e-4, header);
        }
    }

    @Test
    void theHeaderNamesTheJdkAndTheVectorKernels() throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code = new BenchCommand().run(List.of("--shape", "1,1,1,1", "--backend", "java", "--threads", "1",
                "--iters", "1"), new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
        String text = out.toString(StandardCharsets.UTF_8);
        assertEquals(0, code, text + err);
        String header = text.lines().findFirst().orElseThrow();
        assertTrue(header.contains(" jdk=" + Runtime.version() + " "), header);
        assertTrue(header.contains(" vector=\"" + dev.qkv.kernel.Vectorization.reason() + "\" "), header);
        assertTrue(header.contains(" threads=1 "), header);
        assertTrue(header.contains(" openblas.core="), header);
    }
}
