package dev.qkv.attention;

import java.util.Locale;
import java.util.Objects;

/** Which kernels compute attention. */
public enum Backend {
    /** Q·Kᵀ and P·V by OpenBLAS {@code cblas_sgemm} through FFM; softmax in Java. */
    NATIVE,
    /** The same blocked algorithm with pure-Java products (float accumulation). */
    JAVA,
    /** The scalar reference: a direct reading of the definition, accumulating in double. The tests' oracle. */
    REFERENCE,
    /**
     * The faster of {@link #NATIVE} and {@link #JAVA} on this machine, from a crossover measured with the JMH
     * benchmarks (bench/RESULTS.md): when OpenBLAS runs an AVX-512 core, native from head size 256 with 8 query
     * rows or more, the Java Vector API kernels below that and for decoding; with any other core, the Java
     * Vector API kernels. Without the Vector API ({@code jdk.incubator.vector} absent), native when OpenBLAS
     * loads, else the scalar Java kernels. {@code Attention.plan} and {@code kernelName} say which runs.
     */
    AUTO;

    /** The lower-case name used on the command line. */
    public String cliName() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** Parses {@code native}, {@code java}, {@code reference} or {@code auto}. */
    public static Backend parse(String name) {
        Objects.requireNonNull(name, "name is null");
        for (Backend b : values()) {
            if (b.cliName().equals(name)) {
                return b;
            }
        }
        throw new IllegalArgumentException("unknown backend '" + name + "' (expected native, java, reference or auto)");
    }
}
