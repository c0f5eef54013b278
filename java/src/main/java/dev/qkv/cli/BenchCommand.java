package dev.qkv.cli;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.OpenBlas;
import dev.qkv.kernel.Vectorization;
import dev.qkv.tensor.Tensor;

import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.SplittableRandom;

/** {@code bench}: times attention on seeded random inputs; the last line is {@code median_ms=<x> gflops=<y>}. */
final class BenchCommand implements Command {

    private static final long SEED = 42;
    /**
     * Output rows checked against the scalar reference before a figure is printed (every row of a smaller call),
     * and the largest difference accepted, in units of the largest |v| a row attends to (inputs uniform in
     * [-1, 1)): the JMH benchmarks' check (bench/, BenchSupport).
     */
    static final int CHECKED_ROWS = 64;
    static final double TOLERANCE = 1e-4;

    @Override
    public String name() {
        return "bench";
    }

    @Override
    public String usage() {
        return "bench --shape B,H,L,D [--kv-heads N] [--causal] [--backend native|java|auto] [--threads N] [--iters N]";
    }

    @Override
    public String summary() {
        return "Median time of q [B, H, L, D] attending k, v [B, N, L, D] (seed " + SEED + ") after a warm-up;"
                + " gflops counts the dense 4*B*H*L*L*D. auto = the faster kernels here"
                + " (README, Backends); the header's plan names them. Default 20 iters. B,H,L,D: four positive"
                + " decimal integers separated by commas (spaces around them are ignored).";
    }

    @Override
    public int run(List<String> args, PrintStream out, PrintStream err) throws UsageException {
        Flags f = Flags.parse(name(), args, Set.of("shape", "kv-heads", "backend", "threads", "iters"), Set.of("causal"));
        long[] shape = shape(f.require("shape"));
        long b = shape[0];
        long h = shape[1];
        long l = shape[2];
        long d = shape[3];
        int hkv = f.intValue("kv-heads", (int) h, 1, Integer.MAX_VALUE);
        if (h % hkv != 0) {
            throw new UsageException("--kv-heads " + hkv + " does not divide H=" + h);
        }
        int iters = f.intValue("iters", 20, 1, 1_000_000);
        int threads = f.intValue("threads", 0, 1, 1024);
        boolean causal = f.has("causal");
        String backendName = f.get("backend", "auto");
        Backend backend = backendName.equals("auto") ? Backend.AUTO : SdpaCommand.backend(backendName);
        try {
            long qo = Math.multiplyExact(Math.multiplyExact(Math.multiplyExact(b, h), l), d);
            long kv = Math.multiplyExact(Math.multiplyExact(Math.multiplyExact(b, (long) hkv), l), d);
            Inputs.requireFits("--shape " + f.require("shape") + " (q, k, v and out)",
                    Math.multiplyExact(Math.addExact(qo, kv), 2L * Float.BYTES));
        } catch (ArithmeticException e) {
            throw new UsageException("--shape " + f.require("shape") + ": more bytes than a long holds");
        }
        // the header reports the OpenBLAS core whatever the backend: a refused -Dqkv.blas.* setting, or a library
        // the user chose that does not load, is the user's mistake (exit 2), not "openblas.core=unavailable"
        // (isAvailable() alone took a -Dqkv.blas.library that does not load for no library, on java and reference)
        OpenBlas blas = OpenBlas.optional();
        Attention attention = Backends.create(backend, threads);
        // shared: the engine's pool threads may only touch memory of a shared (or global/auto) arena
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom random = new SplittableRandom(SEED);
            Tensor q;
            Tensor k;
            Tensor v;
            Tensor o;
            try {
                q = Inputs.uniform(arena, random, b, h, l, d);
                k = Inputs.uniform(arena, random, b, hkv, l, d);
                v = Inputs.uniform(arena, random, b, hkv, l, d);
                o = Tensor.allocate(arena, b, h, l, d);
            } catch (OutOfMemoryError | IllegalArgumentException e) {
                throw new UsageException("--shape " + f.require("shape") + ": the tensors do not fit in memory ("
                        + e.getMessage() + ")");
            }
            SdpaOptions options = causal ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT;
            Runnable call = () -> attention.sdpa(q, k, v, o, options);
            try {
                call.run();
            } catch (IllegalArgumentException e) {
                throw new UsageException(e.getMessage());
            }
            int warm = 1 + Timing.warmUp(call);
            // no figure for a wrong answer: rows of the last warm-up call's output against the scalar reference
            // (throws, exit 1, before anything is printed)
            long checkedRows = Math.min(b * h * l, CHECKED_ROWS);
            double maxDiff = ReferenceCheck.rows(q, k, v, o, causal, CHECKED_ROWS, TOLERANCE);
            // the OpenBLAS core beside every figure (what ran native products, or would have), and the JDK and the
            // vector kernels (what the Java kernels' speed depends on), as the benchmarks' setup lines record them;
            // before the plan, so that the line still ends in openblas.core=
            String core = blas != null ? blas.library().coreName() : "unavailable";
            // both thread counts of the figure: qkv's workers and OpenBLAS's threads per product, read after the
            // warm-up calls, as the timed calls run it (a native call sets it to one)
            String blasThreads = blas != null ? String.valueOf(blas.threads()) : "unavailable";
            out.println(String.format(Locale.ROOT,
                    "bench backend=%s q=%s k=%s causal=%s threads=%d openblas.threads=%s warmup=%d iters=%d jdk=%s"
                            + " vector=\"%s\" checked_rows=%d max_diff=%.1e plan: %s openblas.core=%s",
                    backend.cliName(), q.shapeString(), k.shapeString(), causal,
                    attention.threads(), blasThreads, warm, iters, Runtime.version(), Vectorization.reason(),
                    checkedRows, maxDiff, attention.plan(q, k, v, o, options), core));
            double ms = Timing.medianMillis(call, iters);
            double gflops = Timing.gflops(Timing.denseFlops(b, h, l, l, d), ms);
            out.println(resultLine(ms, gflops));
        }
        return 0;
    }

    /**
     * The last line, {@code median_ms=<x> gflops=<y>}: plain decimals (no exponent, a point in every locale) with
     * at least 3 and 2 decimals, more below 1 so that two significant digits show. With 3 and 2 only, a reference
     * call on [1, 1, 1, 1] (~0.4 µs) printed {@code median_ms=0.000 gflops=0.01}: a time of 0 beside a finite speed.
     * A figure that is not finite (a median of 0 on a clock coarser than the call) is refused, never printed.
     */
    static String resultLine(double ms, double gflops) {
        return "median_ms=" + decimal("median_ms", ms, 3) + " gflops=" + decimal("gflops", gflops, 2);
    }

    private static String decimal(String what, double x, int minDecimals) {
        if (!Double.isFinite(x) || x < 0) {
            throw new IllegalStateException(what + " is " + x + " (median_ms could not be measured on this clock)");
        }
        int decimals = x > 0 && x < 1 ? Math.max(minDecimals, 1 - (int) Math.floor(Math.log10(x))) : minDecimals;
        return String.format(Locale.ROOT, "%." + decimals + "f", x);
    }

    /** B, H, L, D of a --shape value; package-private for HelpTextTest. */
    static long[] shape(String text) throws UsageException {
        String[] parts = text.split(",", -1);
        if (parts.length != 4) {
            throw new UsageException("--shape expects B,H,L,D (four positive integers), got '" + text + "'");
        }
        long[] s = new long[4];
        for (int i = 0; i < 4; i++) {
            s[i] = Flags.parseInt("--shape " + "BHLD".charAt(i), parts[i], 1, Integer.MAX_VALUE);
        }
        return s;
    }
}
