package dev.qkv.bench;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
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
        // a machine without AVX-512 caps -XX:MaxVectorSize=64 at its 32 bytes (the JVM warns and runs 8 floats)
        int lanes = Math.min(maxVectorBytes / Float.BYTES,
                jdk.incubator.vector.FloatVector.SPECIES_PREFERRED.length());
        assertTrue(out.contains("lanes=" + lanes + " "), out);
        // what JMH divides by (@OperationsPerInvocation): 100 000 steps of 16 chains of 16-float FMAs, 2 FLOPs each
        assertTrue(out.contains(" flops=" + 100_000L * 16 * 16 * 2 + " "), out);
        assertEquals(100_000L * 16 * 16 * 2, PeakBench.FLOPS);
        // the chains' result at that width against their scalar reading (PeakBench.check)
        assertTrue(out.contains(" checked"), out);
    }

    /**
     * The setup compares the chains' result with the same recurrences run one scalar {@code Math.fma} at a time:
     * a kernel that skipped steps (and reported a peak it did not reach) is refused. The recurrences
     * {@code x ← x·m + c} from {@code seed + j} are worked out here in closed form, in double: after s steps
     * {@code x = m^s·(x₀ − c/(1 − m)) + c/(1 − m)}; the float steps drift from it by a few 1e-4 (a step's
     * increment is near an ulp of x), while a kernel that did half the steps is off by about 5e-3.
     */
    @Test
    void theSetupChecksTheChainsAgainstTheirClosedForm() {
        PeakBench bench = new PeakBench();
        bench.setup();
        float got = bench.fma();
        int lanes = jdk.incubator.vector.FloatVector.SPECIES_PREFERRED.length();
        int steps = PeakBench.steps(lanes);
        double m = 0.9999999f;
        double c = 1e-7f;
        double fixed = c / (1 - m);
        double want = 0;
        for (int j = 0; j < 16; j++) {
            want += lanes * (Math.pow(m, steps) * (1f + j - fixed) + fixed);
        }
        assertEquals(want, got, 1e-3 * want);
        assertDoesNotThrow(() -> bench.check(got));
        assertThrows(IllegalStateException.class, () -> bench.check(got * 1.001f));
    }
}
