package dev.qkv.cli;

import dev.qkv.attention.Backend;
import dev.qkv.blas.OpenBlas;

/**
 * How many threads a timed run uses; the one place the command line decides it. The native backend's products
 * run on OpenBLAS's threads; the Java backends run on the calling thread.
 */
final class ThreadPolicy {
    private ThreadPolicy() {
    }

    /**
     * Applies {@code requested} threads (0 = leave OpenBLAS's own choice) for {@code backend} and returns the
     * number of threads the run will use.
     */
    static int apply(Backend backend, int requested) {
        if (backend != Backend.NATIVE) {
            return 1;
        }
        OpenBlas blas = OpenBlas.get();
        if (requested > 0) {
            blas.setThreads(requested);
        }
        return blas.threads();
    }
}
