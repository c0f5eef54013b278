package dev.qkv.blas;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * An OpenMP build of OpenBLAS (Debian's {@code libopenblas0-openmp}, loaded with {@code -Dqkv.blas.library} or as
 * the system's {@code libopenblas.so.0}) takes its thread count per thread: each product runs on
 * {@code omp_get_max_threads()} of the thread that calls it, which {@code openblas_set_num_threads} sets for the
 * calling thread only. qkv set the count once, on the thread that loaded OpenBLAS, and on whichever thread ran a
 * native call: every other thread (qkv's pool threads, other request threads, a user's thread) ran its products
 * on an OpenMP team of {@code OMP_NUM_THREADS} (else one per core) threads, beside qkv's own workers. Found with a
 * /proc/self/task probe: native attention at threads=2 had 3-5 threads runnable on 2 cores, and a direct sgemm at
 * the default count of 1 ran on 4 threads under {@code OMP_NUM_THREADS=4}.
 *
 * <p>Property, in a child JVM: the threads each product made ran on. OpenMP's worker threads inherit the name of
 * the thread that starts them, so a thread named uniquely counts as its own team: after direct products at the
 * default count on a fresh thread, and after parallel native attention calls, no thread but the caller (and the
 * pool's own threads) bears its name. Runs where that library is found: {@code QKV_TEST_OPENMP_BLAS} names one,
 * else Debian's path.
 */
class OpenMpThreadsTest {

    static Path library() {
        String env = System.getenv("QKV_TEST_OPENMP_BLAS");
        return Path.of(env != null ? env : "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0");
    }

    @Test
    void anOpenMpOpenBlasRunsEveryProductAtTheCountSet() throws Exception {
        Path lib = library();
        assumeTrue(Files.isRegularFile(lib), "no OpenMP OpenBLAS at " + lib + " (set QKV_TEST_OPENMP_BLAS)");
        assumeTrue(Runtime.getRuntime().availableProcessors() > 1, "one core: OpenMP makes no team");
        for (String omp : new String[] {null, "4"}) {
            List<String> cmd = List.of(ProcessHandle.current().info().command().orElseThrow(),
                    "--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector",
                    "-D" + OpenBlas.LIBRARY_PROPERTY + "=" + lib, "-cp", System.getProperty("java.class.path"),
                    Child.class.getName());
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
            pb.environment().keySet().removeAll(List.of("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                    "GOTO_NUM_THREADS"));
            if (omp != null) {
                pb.environment().put("OMP_NUM_THREADS", omp);
            }
            // where the library's own dependencies were unpacked beside it rather than installed (.ci/run fetches
            // libgfortran5 on machines without it): the child's loader looks there first
            String deps = System.getenv("QKV_TEST_OPENMP_LIBRARY_PATH");
            if (deps != null && !deps.isBlank()) {
                String old = pb.environment().get("LD_LIBRARY_PATH");
                pb.environment().put("LD_LIBRARY_PATH", old == null || old.isEmpty() ? deps : deps + ":" + old);
            }
            Process p = pb.start();
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertTrue(p.waitFor(180, TimeUnit.SECONDS), "child timed out");
            // a library this machine cannot load for want of its own dependencies is not a finding about qkv
            assumeTrue(p.exitValue() == 0 || !out.contains("cannot open shared object file"),
                    "the OpenMP OpenBLAS's dependencies are missing here (.ci/run unpacks them): " + out);
            assertEquals(0, p.exitValue(), out);
            Matcher m = Pattern.compile("parallel=(\\d+) direct=(\\d+) attention=(\\d+)").matcher(out);
            assertTrue(m.find(), out);
            assumeTrue(m.group(1).equals("2"), "not an OpenMP build: " + out);
            String what = "OMP_NUM_THREADS=" + omp + ": ";
            assertEquals(0, Integer.parseInt(m.group(2)), what + "threads a direct sgemm at count 1 started: " + out);
            assertEquals(0, Integer.parseInt(m.group(3)), what + "threads native attention's workers started: " + out);
        }
    }

    /** The child JVM: OpenMP threads started by a direct product, and by parallel native attention. */
    public static final class Child {
        private Child() {
        }

        /** Threads named {@code name} but the caller (tid {@code self}): the OpenMP workers it started. */
        static int others(String name, long self) throws IOException {
            int n = 0;
            try (var tasks = Files.list(Path.of("/proc/self/task"))) {
                for (Path t : tasks.toList()) {
                    try {
                        if (Files.readString(t.resolve("comm")).strip().startsWith(name)
                                && Long.parseLong(t.getFileName().toString()) != self) {
                            n++;
                        }
                    } catch (NoSuchFileException gone) {
                        // ended meanwhile
                    }
                }
            }
            return n;
        }

        static long tid() throws IOException {
            return Long.parseLong(Files.readSymbolicLink(Path.of("/proc/thread-self")).getFileName().toString());
        }

        public static void main(String[] args) throws Exception {
            OpenBlas blas = OpenBlas.get();
            int[] direct = new int[1];
            Exception[] failed = new Exception[1];
            Thread t = new Thread(() -> {
                try (Arena arena = Arena.ofConfined()) {
                    int n = 256;
                    Tensor a = Tensor.allocate(arena, n, n).fill(0.5f);
                    Tensor c = Tensor.allocate(arena, n, n);
                    for (int i = 0; i < 20; i++) {
                        blas.sgemm(Transpose.NO, Transpose.NO, n, n, n, 1f, a.segment(), 0, n, a.segment(), 0, n, 0f,
                                c.segment(), 0, n);
                    }
                    direct[0] = others("qkvomp-direct", tid());
                } catch (Exception e) {
                    failed[0] = e;
                }
            }, "qkvomp-direct");
            t.start();
            t.join();
            if (failed[0] != null) {
                throw failed[0];
            }
            int[] attention = new int[1];
            Thread u = new Thread(() -> {
                try (Arena arena = Arena.ofShared()) {
                    Tensor q = Tensor.allocate(arena, 1, 8, 512, 64).fill(0.25f);
                    Tensor out = Tensor.allocate(arena, 1, 8, 512, 64);
                    Attention att = Attention.create(Backend.NATIVE, 2);
                    for (int i = 0; i < 5; i++) {
                        att.sdpa(q, q, q, out, SdpaOptions.DEFAULT);
                    }
                    // the caller's team, and the pool threads' (named qkv-attention-N, each one thread alone)
                    int n = others("qkvomp-attn", tid());
                    List<String> pool = new ArrayList<>();
                    try (var tasks = Files.list(Path.of("/proc/self/task"))) {
                        for (Path p : tasks.toList()) {
                            try {
                                String comm = Files.readString(p.resolve("comm")).strip();
                                if (comm.startsWith("qkv-attention")) {
                                    pool.add(comm);
                                }
                            } catch (NoSuchFileException gone) {
                                // ended meanwhile
                            }
                        }
                    }
                    // one thread per pool slot at most: more with a name are OpenMP teams of pool threads
                    attention[0] = n + pool.size() - (int) pool.stream().distinct().count();
                } catch (Exception e) {
                    failed[0] = e;
                }
            }, "qkvomp-attn");
            u.start();
            u.join();
            if (failed[0] != null) {
                throw failed[0];
            }
            System.out.println("parallel=" + blas.parallel() + " direct=" + direct[0] + " attention=" + attention[0]);
        }
    }
}
