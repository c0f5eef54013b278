package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.OpenBlas;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * With an explicit OpenBLAS path that does not exist, every native entry point throws
 * {@link dev.qkv.blas.BlasUnavailableException} on the first and on every later call, {@code AUTO} too (the user
 * chose that library: it ran the Java kernels without a word), and the Java backends keep working. Runs in a child JVM, because the library is loaded once per process.
 */
class BlasUnavailableTest {

    @Test
    void everyNativeEntryPointThrowsBlasUnavailableAndJavaStillWorks() throws IOException, InterruptedException {
        String java = ProcessHandle.current().info().command().orElse("java");
        List<String> cmd = new ArrayList<>(List.of(java, "--enable-native-access=ALL-UNNAMED",
                "-D" + OpenBlas.LIBRARY_PROPERTY + "=/nonexistent/libopenblas.so.0",
                "-cp", System.getProperty("java.class.path"), Probe.class.getName()));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "probe JVM timed out");
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.exitValue(), output);
        List<String> lines = output.lines().filter(l -> l.startsWith("probe ")).toList();
        assertEquals(9, lines.size(), output);
        for (String line : lines.subList(0, 8)) {
            assertTrue(line.contains(": dev.qkv.blas.BlasUnavailableException: ") && line.contains("/nonexistent"),
                    line);
        }
        assertEquals("probe java backend: ok", lines.get(8));
    }

    /** The child JVM: each native entry point and AUTO twice, then one call on the Java backend. */
    static final class Probe {
        private Probe() {
        }

        public static void main(String[] args) {
            for (int round = 0; round < 2; round++) {
                report("OpenBlas.get", OpenBlas::get);
                report("MatmulKernel.openBlas", MatmulKernel::openBlas);
                report("Attention.create(NATIVE)", () -> Attention.create(Backend.NATIVE));
                report("Attention.create(AUTO)", () -> Attention.create(Backend.AUTO));
            }
            try (Arena arena = Arena.ofConfined()) {
                Tensor x = Tensor.allocate(arena, 1, 1, 4, 4).fill(1f);
                Tensor out = Tensor.allocate(arena, 1, 1, 4, 4);
                Attention.create(Backend.JAVA).sdpa(x, x, x, out, SdpaOptions.CAUSAL);
                System.out.println("probe java backend: " + (out.get(0, 0, 3, 3) == 1f ? "ok" : "wrong"));
            }
        }

        private static void report(String what, java.util.function.Supplier<?> call) {
            try {
                call.get();
                System.out.println("probe " + what + ": loaded");
            } catch (Throwable e) {
                System.out.println("probe " + what + ": " + e);
            }
        }
    }
}
