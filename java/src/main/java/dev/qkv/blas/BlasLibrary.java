package dev.qkv.blas;

import java.nio.file.Path;

/**
 * What {@link OpenBlas} loaded: where the library came from, its build configuration and the core it chose.
 *
 * @param source   how it was found (explicit path, bundled artifact, or the system's library)
 * @param path     the shared object that was loaded
 * @param config   {@code openblas_get_config()}, e.g. {@code OpenBLAS 0.3.31 DYNAMIC_ARCH NO_AFFINITY SkylakeX}
 * @param coreName {@code openblas_get_corename()}, the kernel family in use, e.g. {@code Haswell}
 */
public record BlasLibrary(Source source, Path path, String config, String coreName) {

    /** Where a library was found, in the order {@link OpenBlas} tries them. */
    public enum Source {
        /** The system property {@code qkv.blas.library}. */
        PROPERTY,
        /** The environment variable {@code QKV_BLAS_LIBRARY}. */
        ENVIRONMENT,
        /** The OpenBLAS inside {@code org.bytedeco:openblas} on the class path, extracted to a cache folder. */
        BUNDLED,
        /** The system's {@code libopenblas.so.0}. */
        SYSTEM
    }
}
