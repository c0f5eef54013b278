package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * "Cores" in the thread policy are {@link Runtime#availableProcessors()} when the pool loads, so a process held to
 * fewer CPUs (affinity, a container's CPU limit, {@code -XX:ActiveProcessorCount}) never gets more threads than
 * it may run: in a child JVM with {@code -XX:ActiveProcessorCount=N}, the pool holds N - 1 threads, an
 * {@link Attention} asked for 64 threads (or made with the default) runs at most N, and a large parallel call
 * starts at most N - 1 pool threads (counted by name among the JVM's live threads). Passed before; pins what the
 * README says of the cores.
 */
class PoolSizeTest {

    @Test
    void thePoolFollowsTheProcessorsTheJvmMayUse() throws Exception {
        for (int n : new int[] {1, 3}) {
            String java = ProcessHandle.current().info().command().orElse("java");
            Process p = new ProcessBuilder(java, "-XX:ActiveProcessorCount=" + n, "--enable-native-access=ALL-UNNAMED",
                    "--add-modules", "jdk.incubator.vector", "-cp", System.getProperty("java.class.path"),
                    Child.class.getName()).redirectErrorStream(true).start();
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            boolean done = p.waitFor(120, TimeUnit.SECONDS);
            if (!done) {
                p.destroyForcibly();
            }
            assertTrue(done, "the child JVM did not finish: " + out);
            assertEquals(0, p.exitValue(), out);
            Matcher m = Pattern.compile("cores=(\\d+) helpers=(\\d+) threads64=(\\d+) threadsDefault=(\\d+)"
                    + " poolThreads=(\\d+)").matcher(out);
            assertTrue(m.find(), out);
            assertEquals(n, Integer.parseInt(m.group(1)), out);
            assertEquals(n - 1, Integer.parseInt(m.group(2)), "pool threads for " + n + " processors: " + out);
            assertEquals(n, Integer.parseInt(m.group(3)), "threads(64) on " + n + " processors: " + out);
            assertEquals(n, Integer.parseInt(m.group(4)), "default threads on " + n + " processors: " + out);
            assertTrue(Integer.parseInt(m.group(5)) <= n - 1, "pool threads alive after a parallel call: " + out);
        }
    }

    /** The child JVM: the pool's size, the threads of two instances, and the pool threads a large call started. */
    public static final class Child {
        private Child() {
        }

        public static void main(String[] args) {
            Attention wide = Attention.create(Backend.JAVA, 64);
            Attention dflt = Attention.create(Backend.JAVA);
            try (Arena arena = Arena.ofShared()) {
                // 2 GFLOP: far above the size from which a call takes pool threads
                Tensor q = Tensor.allocate(arena, 1, 8, 1024, 64).fill(0.25f);
                Tensor out = Tensor.allocate(arena, 1, 8, 1024, 64);
                wide.sdpa(q, q, q, out, SdpaOptions.DEFAULT);
            }
            long pool = Thread.getAllStackTraces().keySet().stream()
                    .filter(t -> t.getName().startsWith("qkv-attention-")).count();
            System.out.println("cores=" + Runtime.getRuntime().availableProcessors() + " helpers="
                    + WorkerPool.SHARED.helpers() + " threads64=" + wide.threads() + " threadsDefault=" + dflt.threads()
                    + " poolThreads=" + pool);
        }
    }
}
