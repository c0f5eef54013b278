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

    /** One line per trial: the plan (kernel, workers, scratch), the OpenBLAS core, the vector kernels. */
    static void report(String what, String plan) {
        String core = OpenBlas.isAvailable() ? OpenBlas.get().library().coreName() : "unavailable";
        System.out.println("# qkv " + what + ": " + plan + " openblas.core=" + core + " OPENBLAS_CORETYPE="
                + System.getenv("OPENBLAS_CORETYPE") + " vector=\"" + Vectorization.reason() + "\"");
    }
}
