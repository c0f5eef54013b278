package dev.qkv.cli;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.BlasLibrary;
import dev.qkv.blas.BlasUnavailableException;
import dev.qkv.blas.OpenBlas;
import dev.qkv.tensor.Tensor;

import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.SplittableRandom;

/**
 * The demo ({@code qkv} with no command): causal attention on {@code [1, 8, 1024, 64]} by the native and Java
 * backends, their difference, the difference of each from the double-precision reference on one head, and the
 * speed of each.
 */
final class DemoCommand implements Command {

    static final String NAME = "demo";
    private static final long SEED = 42;
    private static final int B = 1;
    private static final int H = 8;
    private static final int L = 1024;
    private static final int D = 64;
    private static final int NATIVE_ITERS = 7;
    private static final int JAVA_ITERS = 3;

    @Override
    public String name() {
        return NAME;
    }

    @Override
    public String usage() {
        return NAME;
    }

    @Override
    public String summary() {
        return "What 'qkv' runs without a command: causal attention on [" + B + ", " + H + ", " + L + ", " + D
                + "] by the native and java backends, checked against each other and the reference, and timed.";
    }

    @Override
    public int run(List<String> args, PrintStream out, PrintStream err) throws UsageException {
        Flags.parse(NAME, args, Set.of(), Set.of());
        double flops = Timing.denseFlops(B, H, L, L, D);
        // OpenBLAS first, the header after it: a setting refused on the way is one error line with nothing before
        // it, as for every command
        Attention nativeAttention = null;
        String openblas;
        // judged whether or not a library loads: without one, get() fails on the library before it reads them
        OpenBlas.checkSettings();
        try {
            nativeAttention = Backends.create(Backend.NATIVE);
            BlasLibrary lib = OpenBlas.get().library();
            openblas = "openblas: " + lib.path() + " (" + lib.source().name().toLowerCase(Locale.ROOT) + "), core "
                    + lib.coreName() + " (OpenBLAS runs 1 thread per task; attention runs "
                    + nativeAttention.threads() + " tasks at once)";
        } catch (BlasUnavailableException e) {
            if (Main.refusedSetting(e)) {
                // a -Dqkv.blas.* setting it refuses, or a library the user chose that does not load, is the
                // user's to fix (Main: exit 2), not a missing library
                throw e;
            }
            openblas = "openblas: unavailable, native backend skipped: " + e.getMessage();
        }
        out.println(String.format(Locale.ROOT, "qkv demo: causal attention, q, k, v [%d, %d, %d, %d] float32,"
                + " uniform in [-1, 1), seed %d", B, H, L, D, SEED));
        out.println(openblas);
        Attention javaAttention = Attention.create(Backend.JAVA);

        // shared: the engine's pool threads may only touch memory of a shared (or global/auto) arena
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom random = new SplittableRandom(SEED);
            Tensor q = Inputs.uniform(arena, random, B, H, L, D);
            Tensor k = Inputs.uniform(arena, random, B, H, L, D);
            Tensor v = Inputs.uniform(arena, random, B, H, L, D);
            Tensor nativeOut = Tensor.allocate(arena, B, H, L, D);
            Tensor javaOut = Tensor.allocate(arena, B, H, L, D);
            SdpaOptions causal = SdpaOptions.CAUSAL;

            if (nativeAttention != null) {
                Attention a = nativeAttention;
                time(out, "native", () -> a.sdpa(q, k, v, nativeOut, causal), NATIVE_ITERS, flops);
            }
            time(out, "java", () -> javaAttention.sdpa(q, k, v, javaOut, causal), JAVA_ITERS, flops);

            // the reference is a scalar double loop (about 5·10^8 operations per head): one head keeps it brief
            Tensor refOut = Tensor.allocate(arena, B, 1, L, D);
            Attention.create(Backend.REFERENCE).sdpa(q.slice(1, 0, 1), k.slice(1, 0, 1), v.slice(1, 0, 1), refOut,
                    causal);
            double javaVsRef = Inputs.maxAbsDiff(javaOut.slice(1, 0, 1), refOut);
            if (nativeAttention != null) {
                out.println(String.format(Locale.ROOT, "max |native - java| = %.2e over all %d heads",
                        Inputs.maxAbsDiff(nativeOut, javaOut), H));
                out.println(String.format(Locale.ROOT, "max |x - reference| on head 0 (double-precision reference):"
                        + " native %.2e, java %.2e", Inputs.maxAbsDiff(nativeOut.slice(1, 0, 1), refOut), javaVsRef));
            } else {
                out.println(String.format(Locale.ROOT, "max |java - reference| on head 0 (double-precision reference):"
                        + " %.2e", javaVsRef));
            }
        }
        out.println(String.format(Locale.ROOT, "GFLOP/s count the dense 4*B*H*L*L*D = %.2f GFLOP per call; the causal"
                + " mask lets both backends skip about half of it", flops / 1e9));
        return 0;
    }

    private static void time(PrintStream out, String label, Runnable call, int iters, double flops) {
        Timing.warmUp(call);
        double ms = Timing.medianMillis(call, iters);
        out.println(String.format(Locale.ROOT, "%-7s %9.2f ms %8.2f GFLOP/s  (median of %d after a warm-up)", label,
                ms, Timing.gflops(flops, ms), iters));
    }
}
