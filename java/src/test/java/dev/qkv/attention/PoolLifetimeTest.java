package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.ref.WeakReference;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The pool's threads must not outlive their use for good. They kept the class loader that loaded qkv (their code,
 * their context class loader) for the life of the process, so every copy of qkv that an application server
 * redeployed, or a plugin system unloaded, after one parallel call stayed in memory with (cores - 1) threads and
 * their scratch. Property, in a child JVM with {@code -Dqkv.pool.idleMillis=200}: after three class loaders each
 * made a parallel call (each on a thread that then ended) and were dropped, and the pool's idle time has passed,
 * no loader is reachable and no pool thread is alive.
 */
class PoolLifetimeTest {

    @Test
    void anIdlePoolLetsItsClassLoaderGo() throws Exception {
        String java = ProcessHandle.current().info().command().orElse("java");
        Process p = new ProcessBuilder(java, "--enable-native-access=ALL-UNNAMED", "--add-modules",
                "jdk.incubator.vector", "-Dqkv.pool.idleMillis=200", "-cp", System.getProperty("java.class.path"),
                Child.class.getName()).redirectErrorStream(true).start();
        boolean done = p.waitFor(120, TimeUnit.SECONDS);
        if (!done) {
            p.destroyForcibly();
        }
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(done, "the child JVM did not finish: " + out);
        assertEquals(0, p.exitValue(), out);
        assertTrue(out.contains("helped=3 of 3"), "the calls must have used pool threads for the check to mean"
                + " anything: " + out);
        assertTrue(out.contains("reachable=0 poolThreads=0"), out);
    }

    /** The child JVM: three class loaders, one parallel call in each, then the property. */
    public static final class Child {
        private Child() {
        }

        public static void main(String[] args) throws Exception {
            if (Runtime.getRuntime().availableProcessors() < 2) {
                // no pool threads at all: nothing to let go
                System.out.println("helped=3 of 3");
                System.out.println("reachable=0 poolThreads=0");
                return;
            }
            List<URL> urls = new ArrayList<>();
            for (String s : System.getProperty("java.class.path").split(java.io.File.pathSeparator)) {
                urls.add(Path.of(s).toUri().toURL());
            }
            List<WeakReference<ClassLoader>> loaders = new ArrayList<>();
            int helped = 0;
            for (int i = 0; i < 3; i++) {
                URLClassLoader cl = new URLClassLoader(urls.toArray(new URL[0]),
                        ClassLoader.getPlatformClassLoader());
                if (callIn(cl)) {
                    helped++;
                }
                loaders.add(new WeakReference<>(cl));
                cl.close();
            }
            System.out.println("helped=" + helped + " of 3");
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            long reachable;
            long pool;
            do {
                System.gc();
                Thread.sleep(50);
                reachable = loaders.stream().filter(r -> r.get() != null).count();
                pool = Thread.getAllStackTraces().keySet().stream()
                        .filter(t -> t.getName().startsWith("qkv-attention")).count();
            } while ((reachable > 0 || pool > 0) && System.nanoTime() < end);
            System.out.println("reachable=" + reachable + " poolThreads=" + pool);
        }
    }

    /**
     * {@link Call} of {@code cl}'s qkv on a thread that then ends, as a server's request threads are renewed after
     * an undeploy: a caller's thread keeps its scratch (thread-locals whose classes are the loader's) while it
     * lives. In a method of its own, so that no local of main refers to the call once it returns.
     */
    private static boolean callIn(ClassLoader cl) throws Exception {
        Object call = cl.loadClass(Call.class.getName()).getConstructor().newInstance();
        boolean[] got = new boolean[1];
        Thread t = Thread.ofPlatform().start(() -> got[0] = ((java.util.function.BooleanSupplier) call).getAsBoolean());
        t.join();
        return got[0];
    }

    /** One parallel call of this class loader's qkv; true when a pool thread ran one of its tasks. */
    public static final class Call implements java.util.function.BooleanSupplier {
        @Override
        public boolean getAsBoolean() {
            java.util.concurrent.atomic.AtomicBoolean helped = new java.util.concurrent.atomic.AtomicBoolean();
            // tasks that wait a little, so that the woken pool thread finds some left to take
            WorkerPool.shared().run((task, worker) -> {
                if (worker > 0) {
                    helped.set(true);
                }
                long until = System.nanoTime() + 2_000_000;
                while (System.nanoTime() < until) {
                    Thread.onSpinWait();
                }
            }, 64, 1);
            try (Arena a = Arena.ofShared()) {
                Tensor q = Tensor.allocate(a, 1, 4, 256, 64);
                Tensor o = Tensor.allocate(a, 1, 4, 256, 64);
                Attention.create(Backend.JAVA).sdpa(q, q, q, o, SdpaOptions.CAUSAL);
            }
            return helped.get();
        }
    }
}
