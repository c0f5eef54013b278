package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.tensor.Tensor;

import javax.management.ObjectName;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.management.BufferPoolMXBean;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A long run of mixed calls (every backend, matmul, valid and rejected arguments, per-call and long-lived arenas,
 * caller and per-thread workspaces, short-lived platform threads and a fresh virtual thread per call) that fails
 * when memory grows.
 *
 * <p>It samples, after a full GC, the heap in use, the resident set ({@code VmRSS}), the JVM's native memory
 * (NMT total and its {@code Other} category, where FFM arenas allocate; needs
 * {@code -XX:NativeMemoryTracking=summary}) and the direct buffer pool, first after a warm-up of a tenth of the
 * calls and then at every further tenth, prints them as a table, and exits with status 1 when growth from the
 * warm-up sample to the end exceeds the stated bounds. It also measures how much subnormal inputs slow the
 * kernels down (reported, not judged). Properties: {@code qkv.soak.calls} (default 100000), {@code qkv.soak.seed}.
 */
public final class Soak {
    /** Allowed growth after warm-up, in MiB: the heap after GC, the resident set, and NMT's Other category. */
    private static final double HEAP_BOUND_MB = 16;
    private static final double RSS_BOUND_MB = 48;
    private static final double NATIVE_BOUND_MB = 16;

    private Soak() {
    }

    /** Runs the soak; exit status 0 when memory stayed within bounds, 1 otherwise. */
    public static void main(String[] args) throws Exception {
        int calls = Integer.getInteger("qkv.soak.calls", 100_000);
        long seed = Long.getLong("qkv.soak.seed", 20261125L);
        OpenBlas blas = OpenBlas.get();
        System.out.println("soak: " + calls + " mixed calls, seed " + seed + ", OpenBLAS " + blas.describe());
        denormalReport();

        Random r = new Random(seed);
        Attention[] backends = {Attention.create(Backend.NATIVE), Attention.create(Backend.JAVA),
            Attention.create(Backend.REFERENCE)};
        List<Sample> samples = new ArrayList<>();
        int warmup = Math.max(1, calls / 10);
        long rejected = 0;
        long t0 = System.nanoTime();
        try (Arena longLived = Arena.ofShared()) {
            // inputs kept for the whole run, reused by a quarter of the calls
            Tensor q = Fuzz.random(longLived, r, 2, 4, 96, 64);
            Tensor k = Fuzz.random(longLived, r, 2, 2, 96, 64);
            Tensor v = Fuzz.random(longLived, r, 2, 2, 96, 32);
            Tensor out = Tensor.allocate(longLived, 2, 4, 96, 32);
            Workspace ws = Workspace.allocate(longLived, 1 << 20);
            for (int i = 1; i <= calls; i++) {
                int kind = r.nextInt(20);
                if (kind < 5) {
                    Attention att = backends[r.nextInt(2)];
                    if (r.nextBoolean()) {
                        att.sdpa(q, k, v, out, SdpaOptions.CAUSAL, ws);
                    } else {
                        att.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
                    }
                } else if (kind < 14) {
                    rejected += freshCall(r, backends);
                } else if (kind < 17) {
                    rejected += matmulCall(r);
                } else if (kind < 19) {
                    rejected += invalidCall(r, backends);
                } else if (i % 50 == 0) {
                    // a short-lived thread: its per-thread workspace must be freed once the thread is gone
                    Thread t = new Thread(() -> freshCall(new Random(seed ^ 77), backends));
                    t.start();
                    t.join();
                } else if (i % 5 == 0) {
                    // a fresh virtual thread per call, as a request server runs them: its scratch is leased
                    // (dev.qkv.kernel.PerThread), so neither heap nor native memory may grow with their number
                    Attention att = backends[r.nextInt(2)];
                    long s = r.nextLong();
                    Thread.ofVirtual().start(() -> {
                        att.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
                        freshCall(new Random(s), backends);
                    }).join();
                }
                boolean tenth = i > warmup && (i - warmup) % Math.max(1, (calls - warmup) / 9) == 0;
                if (i == warmup || tenth || i == calls) {
                    samples.add(Sample.take(i, (System.nanoTime() - t0) / 1e9));
                }
            }
        }
        samples.add(Sample.take(calls, (System.nanoTime() - t0) / 1e9));
        System.out.printf("%d calls in %.1f s (%d rejected as designed)%n", calls, (System.nanoTime() - t0) / 1e9,
                rejected);
        System.out.println(Sample.HEADER);
        for (Sample s : samples) {
            System.out.println(s);
        }
        Sample first = samples.getFirst();
        Sample last = samples.get(samples.size() - 2);
        double heap = last.heapMb - first.heapMb;
        double rss = last.rssMb - first.rssMb;
        double other = last.nmtOtherMb - first.nmtOtherMb;
        System.out.printf("growth after warm-up: heap %+.1f MiB (bound %.0f), RSS %+.1f MiB (bound %.0f),"
                + " NMT Other %+.1f MiB (bound %.0f)%n", heap, HEAP_BOUND_MB, rss, RSS_BOUND_MB, other,
                NATIVE_BOUND_MB);
        boolean ok = heap <= HEAP_BOUND_MB && rss <= RSS_BOUND_MB && (Double.isNaN(other) || other <= NATIVE_BOUND_MB);
        System.out.println(ok ? "soak: OK" : "soak: FAILED (memory grew past a bound)");
        System.exit(ok ? 0 : 1);
    }

    /** A valid call on tensors from an arena opened and closed around it. Returns 0 (nothing rejected). */
    private static int freshCall(Random r, Attention[] backends) {
        try (Arena arena = Arena.ofConfined()) {
            Attention att = backends[r.nextInt(10) == 0 ? 2 : r.nextInt(2)];
            boolean tiny = att.backend() == Backend.REFERENCE;
            long b = 1 + r.nextInt(2);
            long hkv = 1 + r.nextInt(2);
            long hq = hkv * (1 + r.nextInt(2));
            long lq = tiny ? 1 + r.nextInt(8) : Fuzz.pick(r, 1, 7, 33, 64, 65);
            long lk = tiny ? 1 + r.nextInt(16) : Fuzz.pick(r, 1, 17, 64, 100);
            long dk = Fuzz.pick(r, 8, 16, 64);
            long dv = Fuzz.pick(r, 8, 32);
            Tensor q = Fuzz.random(arena, r, b, hq, lq, dk);
            Tensor k = r.nextBoolean() ? Fuzz.random(arena, r, b, hkv, lk, dk)
                    : Fuzz.random(arena, r, b, hkv, dk, lk).transpose();
            Tensor v = Fuzz.random(arena, r, b, hkv, lk, dv);
            Tensor out = Tensor.allocate(arena, b, hq, lq, dv);
            Mask mask = r.nextBoolean() ? null : Mask.allowed(Tensor.allocate(arena, 1, 1, 1, lk).fill(1f));
            SdpaOptions o = new SdpaOptions(r.nextBoolean(), mask, Float.NaN);
            if (r.nextInt(4) == 0 && att.backend() != Backend.REFERENCE) {
                att.sdpa(q, k, v, out, o, Workspace.allocate(arena, att.workspaceBytes(q, k, v, out, o)));
            } else {
                att.sdpa(q, k, v, out, o);
            }
        }
        return 0;
    }

    /** A product through the typed matmul or a raw kernel; a tenth are rejected on purpose. */
    private static int matmulCall(Random r) {
        try (Arena arena = Arena.ofConfined()) {
            int m = Fuzz.pick(r, 1, 7, 64, 65);
            int n = Fuzz.pick(r, 1, 17, 64);
            int kk = Fuzz.pick(r, 1, 16, 65);
            Tensor a = Fuzz.random(arena, r, m, kk);
            Tensor b = Fuzz.random(arena, r, n, kk);
            Tensor c = Tensor.allocate(arena, m, r.nextInt(10) == 0 ? n + 1 : n);
            try {
                if (r.nextBoolean()) {
                    OpenBlas.get().matmul(Transpose.NO, a, Transpose.YES, b, 1f, 0f, c);
                } else {
                    MatmulKernel kernel = r.nextBoolean() ? MatmulKernel.openBlas() : MatmulKernel.javaScalar();
                    kernel.matmul(Transpose.NO, Transpose.YES, m, (int) c.size(1), kk, 1f, a.segment(), 0, kk,
                            b.segment(), 0, kk, 0f, c.segment(), 0, (int) c.size(1));
                }
                return 0;
            } catch (IllegalArgumentException e) {
                return 1;
            }
        }
    }

    /** A call rejected by the argument checks: exceptions must not leak memory either. */
    private static int invalidCall(Random r, Attention[] backends) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Fuzz.random(arena, r, 1, 3, 8, 16);
            Tensor k = Fuzz.random(arena, r, 1, 2, 8, 16);
            Tensor v = Fuzz.random(arena, r, 1, 2, 8, 16);
            Tensor out = Tensor.allocate(arena, 1, 3, 8, 16);
            backends[r.nextInt(3)].sdpa(q, k, v, out, SdpaOptions.DEFAULT);
            throw new AssertionError("Hq=3, Hkv=2 was accepted");
        } catch (IllegalArgumentException expected) {
            return 1;
        }
    }

    /**
     * Times each fast backend, and one raw product, on normal inputs and with subnormal q and k (products that
     * underflow), subnormal v (sums of subnormals), or all three, and prints the slowdowns. Variants are timed in
     * interleaved rounds after a warm-up, keeping each one's best round, so JIT warm-up and a busy machine do not
     * masquerade as a denormal penalty.
     */
    private static void denormalReport() {
        long[] shape = {1, 8, 256, 64};
        String[] variants = {"normal", "q,k subnormal", "v subnormal", "all subnormal"};
        for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
            Attention att = Attention.create(backend);
            try (Arena arena = Arena.ofConfined()) {
                Runnable[] calls = new Runnable[variants.length];
                for (int variant = 0; variant < variants.length; variant++) {
                    Random r = new Random(1);
                    float qk = variant == 1 || variant == 3 ? 1e-39f : 1f;
                    float vv = variant >= 2 ? 1e-39f : 1f;
                    Tensor q = scaled(arena, r, qk, shape);
                    Tensor k = scaled(arena, r, qk, shape);
                    Tensor v = scaled(arena, r, vv, shape);
                    Tensor out = Tensor.allocate(arena, shape);
                    calls[variant] = () -> att.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
                }
                int reps = backend == Backend.NATIVE ? 10 : 2;
                report(backend + " sdpa [1, 8, 256, 64] causal", variants, best(calls, reps));
            }
        }
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(2);
            Tensor a = scaled(arena, r, 1f, 1, 1, 512, 512).reshape(512, 512);
            Tensor sub = scaled(arena, r, 1e-39f, 1, 1, 512, 512).reshape(512, 512);
            Tensor b = scaled(arena, r, 1f, 1, 1, 512, 512).reshape(512, 512);
            Tensor c = Tensor.allocate(arena, 512, 512);
            Runnable[] calls = {() -> OpenBlas.get().matmul(Transpose.NO, a, Transpose.NO, b, 1f, 0f, c),
                () -> OpenBlas.get().matmul(Transpose.NO, sub, Transpose.NO, b, 1f, 0f, c)};
            report("OpenBLAS matmul 512^3", new String[] {"normal", "a subnormal"}, best(calls, 3));
        }
    }

    /** Milliseconds per call of each variant: the best of 5 interleaved rounds of {@code reps} calls, after warm-up. */
    private static double[] best(Runnable[] calls, int reps) {
        double[] ms = new double[calls.length];
        java.util.Arrays.fill(ms, Double.MAX_VALUE);
        for (int round = -1; round < 5; round++) {
            for (int v = 0; v < calls.length; v++) {
                long t = System.nanoTime();
                for (int i = 0; i < reps; i++) {
                    calls[v].run();
                }
                if (round >= 0) {
                    ms[v] = Math.min(ms[v], (System.nanoTime() - t) / 1e6 / reps);
                }
            }
        }
        return ms;
    }

    private static void report(String what, String[] variants, double[] ms) {
        StringBuilder sb = new StringBuilder("denormals: " + what + ":");
        for (int i = 0; i < ms.length; i++) {
            sb.append(String.format(Locale.ROOT, " %s %.2f ms (x%.1f)%s", variants[i], ms[i], ms[i] / ms[0],
                    i + 1 < ms.length ? "," : ""));
        }
        System.out.println(sb);
    }

    private static Tensor scaled(Arena arena, Random r, float factor, long... shape) {
        float[] x = Fuzz.uniform(r, (int) (shape[0] * shape[1] * shape[2] * shape[3]));
        for (int i = 0; i < x.length; i++) {
            x[i] *= factor;
        }
        return Tensor.of(arena, x, shape);
    }

    /** Memory in use at one point of the run. */
    record Sample(int calls, double seconds, double heapMb, double rssMb, double nmtCommittedMb, double nmtOtherMb,
                  double directMb) {
        static final String HEADER = String.format(Locale.ROOT, "%8s %8s %10s %10s %12s %12s %10s", "calls", "seconds",
                "heap MiB", "RSS MiB", "NMT total", "NMT Other", "direct");

        static Sample take(int calls, double seconds) throws IOException {
            for (int i = 0; i < 3; i++) {
                System.gc();
            }
            double heap = ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed() / 1048576.0;
            double direct = 0;
            for (BufferPoolMXBean pool : ManagementFactory.getPlatformMXBeans(BufferPoolMXBean.class)) {
                direct += pool.getMemoryUsed() / 1048576.0;
            }
            String nmt = nativeMemorySummary();
            return new Sample(calls, seconds, heap, readRssMb(), kb(nmt, "Total: reserved=\\d+KB, committed=(\\d+)KB"),
                    kb(nmt, "-\\s+Other \\(reserved=\\d+KB, committed=(\\d+)KB"), direct);
        }

        private static double readRssMb() throws IOException {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith("VmRSS:")) {
                    return Long.parseLong(line.replaceAll("\\D", "")) / 1024.0;
                }
            }
            return Double.NaN;
        }

        /** NMT's summary through the DiagnosticCommand MBean (what jcmd would print), or "" when NMT is off. */
        private static String nativeMemorySummary() {
            try {
                Object s = ManagementFactory.getPlatformMBeanServer().invoke(
                        new ObjectName("com.sun.management:type=DiagnosticCommand"), "vmNativeMemory",
                        new Object[] {new String[] {"summary", "scale=KB"}}, new String[] {String[].class.getName()});
                return String.valueOf(s);
            } catch (Exception e) {
                return "";
            }
        }

        private static double kb(String text, String regex) {
            Matcher m = Pattern.compile(regex).matcher(text);
            return m.find() ? Long.parseLong(m.group(1)) / 1024.0 : Double.NaN;
        }

        @Override
        public String toString() {
            return String.format(Locale.ROOT, "%8d %8.1f %10.1f %10.1f %12.1f %12.1f %10.1f", calls, seconds, heapMb,
                    rssMb, nmtCommittedMb, nmtOtherMb, directMb);
        }
    }
}
