package dev.qkv.bench;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.blas.OpenBlas;

/** What every benchmark does in its setup: builds the attention and prints which kernels and library ran. */
final class BenchSupport {
    private BenchSupport() {
    }

    static Attention attention(String backend, int threads) {
        return Attention.create(Backend.parse(backend));
    }

    static void report(Attention a, String what, double flops) {
        String core = OpenBlas.isAvailable() ? OpenBlas.get().library().coreName() : "unavailable";
        System.out.println("# qkv " + what + ": kernel=" + a.kernelName() + " openblas.core=" + core
                + " OPENBLAS_CORETYPE=" + System.getenv("OPENBLAS_CORETYPE") + " flops=" + (long) flops);
    }

    static void close(Attention a) {
    }
}
