package dev.qkv.cli;

import dev.qkv.attention.Backend;
import dev.qkv.blas.OpenBlas;

/**
 * How many threads a timed run uses; the one place the command line decides it. The native backend's products
 * run on OpenBLAS's threads; the Java backends run on the calling thread.
 */
final class ThreadPolicy implements AutoCloseable {
    private final int threads;
    private final int restore;

    private ThreadPolicy(int threads, int restore) {
        this.threads = threads;
        this.restore = restore;
    }

    /**
     * Applies {@code requested} threads (0 = keep OpenBLAS's own choice) for {@code backend} until {@link #close},
     * which puts back the previous OpenBLAS setting (it is process-wide, and tests run many commands in one JVM).
     */
    static ThreadPolicy apply(Backend backend, int requested) {
        if (backend != Backend.NATIVE) {
            return new ThreadPolicy(1, 0);
        }
        OpenBlas blas = OpenBlas.get();
        int before = blas.threads();
        if (requested > 0) {
            blas.setThreads(requested);
            return new ThreadPolicy(blas.threads(), before);
        }
        return new ThreadPolicy(before, 0);
    }

    /** The number of threads the run uses. */
    int threads() {
        return threads;
    }

    @Override
    public void close() {
        if (restore > 0) {
            OpenBlas.get().setThreads(restore);
        }
    }
}
