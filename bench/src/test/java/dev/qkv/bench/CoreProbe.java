package dev.qkv.bench;

/**
 * The main class {@link BenchSupportTest} starts in a child JVM (OpenBLAS loads once per JVM): prints
 * {@code core=<BenchSupport.core()>}, or {@code error=<message>} and exits with status 3 when it throws.
 */
public final class CoreProbe {
    private CoreProbe() {
    }

    /** Prints what the benchmarks' setup line would say of the OpenBLAS core. */
    public static void main(String[] args) {
        try {
            System.out.println("core=" + BenchSupport.core());
        } catch (RuntimeException e) {
            System.out.println("error=" + e.getMessage());
            System.exit(3);
        }
    }
}
