package dev.qkv.bench;

import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link PeakBench} measures the FMA peak at any vector width, not only at 16 floats: on an AVX2 JVM (8 floats
 * per vector, here {@code -XX:MaxVectorSize=32}) it threw "OperationsPerInvocation assumes 16 floats per vector",
 * and {@code make bench} had no peak there.
 */
class PeakBenchTest {

    @ParameterizedTest
    @ValueSource(ints = {64, 32, 16})
    void runsAtEveryVectorWidth(int maxVectorBytes) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(ProcessHandle.current().info().command().orElseThrow(),
                "--add-modules", "jdk.incubator.vector", "-XX:MaxVectorSize=" + maxVectorBytes,
                "-cp", System.getProperty("java.class.path"), PeakProbe.class.getName()));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), out);
        assertEquals(0, p.exitValue(), out);
        int lanes = maxVectorBytes / Float.BYTES;
        assertTrue(out.contains("lanes=" + lanes + " "), out);
        // what JMH divides by (@OperationsPerInvocation): 100 000 steps of 16 chains of 16-float FMAs, 2 FLOPs each
        assertTrue(out.contains(" flops=" + 100_000L * 16 * 16 * 2 + " "), out);
        assertEquals(100_000L * 16 * 16 * 2, PeakBench.FLOPS);
    }
}
