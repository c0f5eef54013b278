package dev.qkv.cli;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.blas.OpenBlas;

/** Creates attention backends for the commands, so that a missing OpenBLAS is reported the same way everywhere. */
final class Backends {
    private Backends() {
    }

    /**
     * Attention on {@code backend}. For {@link Backend#NATIVE} OpenBLAS is loaded first through {@link OpenBlas#get},
     * which reports a missing library as a {@link dev.qkv.blas.BlasUnavailableException} with its reason, before
     * any class whose static initialisation depends on the library is touched.
     */
    static Attention create(Backend backend) {
        return create(backend, 0);
    }

    /**
     * Attention on {@code backend} with at most {@code threads} workers (0: all cores). The engine owns the thread
     * policy: it parallelises over (batch, head, query block) and keeps OpenBLAS at one thread meanwhile.
     */
    static Attention create(Backend backend, int threads) {
        if (backend == Backend.NATIVE) {
            OpenBlas.get();
        }
        return threads > 0 ? Attention.create(backend, threads) : Attention.create(backend);
    }
}
