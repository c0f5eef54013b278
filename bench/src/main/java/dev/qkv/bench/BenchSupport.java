package dev.qkv.bench;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.blas.OpenBlas;
import dev.qkv.cli.Jit;
import dev.qkv.cli.ReferenceCheck;
import dev.qkv.kernel.Vectorization;
import dev.qkv.tensor.Tensor;

/** What every benchmark does in its setup: builds the attention and prints which kernels and library ran. */
final class BenchSupport {
    private BenchSupport() {
    }

    /** Attention on {@code backend} with exactly {@code threads} threads (see {@link #threads}). */
    static Attention attention(String backend, int threads) {
        return Attention.create(Backend.parse(backend), threads(threads));
    }

    /**
     * {@code threads}, the count a figure is labelled with, when the cores allow it; else throws. qkv caps its
     * workers at the cores ({@code Attention.Builder.threads}): {@code -p threads=4} on 2 cores timed 2 threads
     * under the label 4, beside ORT's intra-op pool of 4 (OrtRatio) or a decode floor read by 4 (DecodeRatio).
     */
    static int threads(int threads) {
        int cores = Runtime.getRuntime().availableProcessors();
        if (threads < 1 || threads > cores) {
            throw new IllegalArgumentException("threads=" + threads + ": expected 1.." + cores + " (the " + cores
                    + " cores; qkv caps its workers at the cores, so the figure would run "
                    + Math.max(1, Math.min(threads, cores)) + " threads under this label)");
        }
        return threads;
    }

    /**
     * {@code BxHxLxD} (Lq = Lk = L) or {@code BxHxLqxLkxD}, as {@code {B, H, Lq, Lk, D}}: the shape parameter of the
     * benchmarks that take either form.
     */
    static long[] shape(String shape) {
        String[] p = shape.split("x");
        if (p.length != 4 && p.length != 5) {
            throw new IllegalArgumentException("shape must be BxHxLxD or BxHxLqxLkxD: " + shape);
        }
        return new long[] {Long.parseLong(p[0]), Long.parseLong(p[1]), Long.parseLong(p[2]),
                Long.parseLong(p[p.length - 2]), Long.parseLong(p[p.length - 1])};
    }

    /**
     * Output rows {@link #check} recomputes (at most; every row of a smaller call): evenly spaced from the first
     * row to the last, so spread over the batches, heads and query positions, the first (a causal row of one key)
     * and the last included; every head of the decode step (32 rows). A row costs one scalar pass over its keys.
     */
    static final int CHECKED_ROWS = 64;
    /**
     * Largest |difference| {@link #check} accepts, in units of the largest |v| the row attends to: 1e-4 for inputs
     * uniform in [-1, 1), as OrtBench's check.
     */
    static final double TOLERANCE = 1e-4;

    /**
     * Recomputes {@link #CHECKED_ROWS} rows of {@code out = softmax(q·kᵀ/√D [causal]) · v} with qkv's scalar
     * reference ({@link Backend#REFERENCE}, double sums), from q {@code [B, H, Lq, D]} and k, v {@code [B, Hkv, Lk,
     * D]} (query head {@code h} reads kv head {@code h / (H / Hkv)}; causal: query {@code i} sees keys
     * {@code 0..i}, Lq = Lk), and throws when a value of {@code out} differs by more than
     * {@code TOLERANCE·max|v| + keys·MIN_VALUE/2} (or is NaN), so that no figure belongs to a wrong answer.
     * {@code max|v|} is over the keys the row sees: an output row is a convex combination of them, so its error
     * scales with them, and {@code DecodeBench -p values=subnormal} (v of ~1e-39, outputs of ~1e-41) is held to its
     * own scale; an absolute 1e-4 passed an output flushed to zero. {@code keys·MIN_VALUE/2} allows each of the
     * row's products {@code p·v} to round once to the subnormal grid ({@link Float#MIN_VALUE}; 2.9e-42 at 4096
     * keys, a tenth of the subnormal decode step's largest output, nothing at normal scales). The first and the
     * last row are always among them (a stride of rows / 16 from the last row alone never reached row 0, checked
     * only the odd heads of the decode step, and at 1x8x2048x64 only query positions 1023 and 2047). Each row is
     * its own reference call on views: that query row against the keys it may see, so a causal row needs no mask.
     * Returns the largest difference. The code is {@link ReferenceCheck#rows}, which the CLI's {@code bench} runs
     * with the same rows and tolerance.
     */
    static double check(Tensor q, Tensor k, Tensor v, Tensor out, boolean causal) {
        return ReferenceCheck.rows(q, k, v, out, causal, CHECKED_ROWS, TOLERANCE);
    }

    /** max |a[i]| (NaN when any value is NaN). */
    static double maxAbs(float[] a) {
        return ReferenceCheck.maxAbs(a);
    }

    /**
     * Compares a whole layer output with the same layer on {@link Backend#REFERENCE} (double sums) and throws when
     * a value differs by more than {@code 2e-6·reduction + 1e-6 + 1e-4·|want|} (or is NaN): the tolerance of the
     * layer's own tests, growing with the longest sum behind an output value ({@code reduction}: the model width
     * plus the keys attended). Returns the largest difference.
     */
    static double checkLayer(String what, float[] want, float[] got, long reduction) {
        double atol = 2e-6 * reduction + 1e-6;
        double max = maxDiff(want, got);
        for (int i = 0; i < want.length; i++) {
            if (!(Math.abs((double) want[i] - got[i]) <= atol + 1e-4 * Math.abs(want[i]))) {
                throw new IllegalStateException(what + ": output " + i + " is " + got[i] + ", the reference "
                        + want[i] + " (tolerance " + atol + " + 1e-4·|reference|)");
            }
        }
        return max;
    }

    /** max |a[i] - b[i]| over equally long arrays (NaN when any difference is NaN). */
    static double maxDiff(float[] a, float[] b) {
        return ReferenceCheck.maxDiff(a, b);
    }

    /** Least time of {@link #warmUp}, then windows of {@link #QUIET_WINDOW_NANOS} until one compiles nothing. */
    static final long MIN_WARM_NANOS = 1_000_000_000L;
    static final long QUIET_WINDOW_NANOS = 250_000_000L;
    /** {@link #warmUp} ends by this time whatever the compiler does (and says so). */
    static final long MAX_WARM_NANOS = 60_000_000_000L;

    /**
     * Calls {@code call} before JMH's own warm-up until the JIT has compiled what it runs: at least
     * {@link #MIN_WARM_NANOS}, then windows of {@link #QUIET_WINDOW_NANOS} until one passes without compilation
     * and ends with none running or queued ({@link Jit}), at most {@link #MAX_WARM_NANOS}; prints one line saying
     * how long it took. JMH's fixed warm-up alone was not enough beside other work on two cores: C2's threads fell
     * behind, and {@code make bench} (2 warm-up seconds) timed the tiny shape's Java kernels still in the lower
     * tiers, 9 ms a call and 13 MB allocated each, against ~50 µs and 0 B compiled.
     */
    static void warmUp(String what, Runnable call) {
        long start = System.nanoTime();
        long calls = 0;
        while (System.nanoTime() - start < MIN_WARM_NANOS) {
            call.run();
            calls++;
        }
        boolean quiet = false;
        long compiled = Jit.compiledMillis();
        while (!quiet && System.nanoTime() - start < MAX_WARM_NANOS) {
            long window = System.nanoTime();
            do {
                call.run();
                calls++;
            } while (System.nanoTime() - window < QUIET_WINDOW_NANOS);
            long now = Jit.compiledMillis();
            quiet = now == compiled && Jit.idle();
            compiled = now;
        }
        System.out.printf(java.util.Locale.ROOT, "# qkv %s: warmed up until the JIT was %s: %d calls, %.1f s%n",
                what, quiet ? "quiet" : "still compiling (stopped at the limit)", calls,
                (System.nanoTime() - start) / 1e9);
    }

    /**
     * One line per trial: the plan (kernel, workers, scratch), the OpenBLAS core and threads, the JDK, the vector
     * kernels. JMH prints the JDK in its own header, but {@link OrtRatio} and {@link DecodeRatio} have no other line
     * that does. Called after the calls have run ({@link #warmUp}), so that OpenBLAS's threads are those the timed
     * calls run with: a native call sets them to one, whatever {@code -Dqkv.blas.threads} gave OpenBLAS when it
     * loaded.
     */
    static void report(String what, String plan) {
        System.out.println("# qkv " + what + ": " + plan + " " + environment());
    }

    /**
     * {@code openblas.core=... OPENBLAS_CORETYPE=... jdk=... vector="..."}: what {@link #report} prints after the
     * plan, for the lines that print their own start (OrtBench).
     */
    static String environment() {
        return core() + " jdk=" + jdk() + " vector=\"" + Vectorization.reason() + "\"";
    }

    /**
     * {@code openblas.core=<the core OpenBLAS picked, or unavailable> openblas.threads=<its threads per product now>
     * OPENBLAS_CORETYPE=<the environment's>}: with qkv's workers in the plan, both thread counts of a figure (a
     * native call sets OpenBLAS to one thread, so a benchmark reports after its warm-up calls, see
     * {@link #report}).
     * {@code unavailable} only when no OpenBLAS was found ({@link OpenBlas#optional}): a {@code -Dqkv.blas.*} setting
     * outside its values, a library the user chose ({@code -Dqkv.blas.library}, {@code QKV_BLAS_LIBRARY}) that does
     * not load and a {@code -Dqkv.cache.dir} the bundle cannot be extracted to throw its
     * {@link dev.qkv.blas.BlasUnavailableException}, which stops the benchmark, as the CLI refuses them (exit 2).
     * {@link OpenBlas#isAvailable} took them for a missing library, and the figures were measured without the
     * library the user asked for.
     */
    static String core() {
        OpenBlas blas = OpenBlas.optional();
        String core = blas != null ? blas.library().coreName() : "unavailable";
        return "openblas.core=" + core + " openblas.threads=" + (blas != null ? blas.threads() : "unavailable")
                + " OPENBLAS_CORETYPE=" + System.getenv("OPENBLAS_CORETYPE");
    }

    /** The running JDK: its full version and vendor, e.g. {@code 25.0.3+9-LTS (Eclipse Adoptium)}. */
    static String jdk() {
        return Runtime.version() + " (" + System.getProperty("java.vm.vendor") + ")";
    }
}
