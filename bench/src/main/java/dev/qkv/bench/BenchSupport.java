package dev.qkv.bench;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.blas.OpenBlas;
import dev.qkv.kernel.Vectorization;

/** What every benchmark does in its setup: builds the attention and prints which kernels and library ran. */
final class BenchSupport {
    private BenchSupport() {
    }

    static Attention attention(String backend, int threads) {
        return Attention.create(Backend.parse(backend), threads);
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

    /** One line per trial: the plan (kernel, workers, scratch), the OpenBLAS core, the vector kernels. */
    static void report(String what, String plan) {
        String core = OpenBlas.isAvailable() ? OpenBlas.get().library().coreName() : "unavailable";
        System.out.println("# qkv " + what + ": " + plan + " openblas.core=" + core + " OPENBLAS_CORETYPE="
                + System.getenv("OPENBLAS_CORETYPE") + " vector=\"" + Vectorization.reason() + "\"");
    }
}
