package dev.qkv.blas;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * The main class {@link LoaderTest} starts in a child JVM (a library loads once per JVM): loads OpenBLAS,
 * prints {@code source=}, {@code path=} and {@code describe=} lines and runs one small product, or prints
 * {@code error=<message>} and {@code refused=<whether the user's setting is at fault>} and exits with status 3.
 * The system property {@code probe.preload} (paths separated by {@link java.io.File#pathSeparator}) names shared
 * objects it {@link System#load}s first, through the same class loader as qkv's: another library the application
 * loaded before OpenBLAS.
 */
public final class LoaderProbe {
    private LoaderProbe() {
    }

    /** Loads OpenBLAS as configured by the JVM's properties and environment, and reports. */
    public static void main(String[] args) {
        String preload = System.getProperty("probe.preload");
        if (preload != null) {
            for (String lib : preload.split(java.io.File.pathSeparator)) {
                System.load(lib);
            }
        }
        OpenBlas blas;
        try {
            blas = OpenBlas.get();
        } catch (BlasUnavailableException e) {
            System.out.println("error=" + e.getMessage());
            System.out.println("refused=" + e.refusedSetting());
            System.exit(3);
            return;
        }
        System.out.println("source=" + blas.library().source());
        System.out.println("path=" + blas.library().path());
        System.out.println("describe=" + blas.describe());
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]: the symbols are not just present but callable
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 1, 2, 3, 4);
            MemorySegment b = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 5, 6, 7, 8);
            MemorySegment c = arena.allocate(16, 64);
            blas.sgemm(Transpose.NO, Transpose.NO, 2, 2, 2, 1f, a, 0, 2, b, 0, 2, 0f, c, 0, 2);
            float[] x = c.toArray(ValueLayout.JAVA_FLOAT);
            System.out.println("product=" + x[0] + "," + x[1] + "," + x[2] + "," + x[3]);
        }
    }
}
