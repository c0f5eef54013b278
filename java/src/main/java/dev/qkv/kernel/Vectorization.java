package dev.qkv.kernel;

import dev.qkv.config.Settings;

import java.lang.System.Logger.Level;

/**
 * Chooses, once per JVM, between the Vector API kernels and the scalar ones, and says why.
 *
 * <p>The Vector API classes are loaded only when the module {@code jdk.incubator.vector} is in the boot layer
 * (the JVM was started with {@code --add-modules jdk.incubator.vector}), the system property
 * {@code qkv.vector} is not {@code false}, and the preferred vector shape holds at least 8 floats. Otherwise
 * the scalar kernels run and {@link #reason()} tells why (also logged once: INFO when the module is absent,
 * WARNING when the Vector API classes fail to load, DEBUG otherwise).
 */
public final class Vectorization {
    /** System property that turns the Vector API kernels off when set to {@code false}. */
    public static final String PROPERTY = "qkv.vector";
    /**
     * System property choosing the products' register blocks: {@code true} for 6 × 2 vectors (12 accumulators,
     * for 16 vector registers), {@code false} for 6 × 4 (24, for 32). Unset: 6 × 2 on x86 without AVX-512, else
     * 6 × 4. Both give the same bits; only the speed differs.
     */
    public static final String SMALL_BLOCKS = "qkv.vector.smallBlocks";

    private static final RowKernels ROWS;
    private static final PackedKernels PACKED;
    private static final String REASON;
    private static final int LANES;

    static {
        RowKernels rows = ScalarRowKernels.INSTANCE;
        PackedKernels packed = null;
        int lanes = 0;
        String reason;
        Level level = Level.DEBUG;
        // true or false, or refused when this class loads (Settings): off, 0 or no once ran the Vector API kernels
        Boolean smallBlocks = Settings.booleanSetting(SMALL_BLOCKS);
        if (Settings.booleanSetting(PROPERTY) == Boolean.FALSE) {
            reason = "scalar kernels: Vector API turned off by -D" + PROPERTY + "=false";
        } else if (ModuleLayer.boot().findModule("jdk.incubator.vector").isEmpty()) {
            reason = "scalar kernels: module jdk.incubator.vector is absent (start the JVM with"
                    + " --add-modules jdk.incubator.vector)";
            level = Level.INFO;
        } else {
            try {
                // by name, so that this class never links against jdk.incubator.vector when it is absent
                Class<?> c = Class.forName("dev.qkv.kernel.VectorKernels");
                Object k = c.getDeclaredConstructor().newInstance();
                VectorKernels vk = (VectorKernels) k;
                if (vk.lanes() < 8) {
                    reason = "scalar kernels: the preferred vector holds " + vk.lanes() + " floats (< 8)";
                } else {
                    rows = vk.rows();
                    packed = vk.packed(smallBlocks);
                    lanes = vk.lanes();
                    reason = "Vector API kernels, " + lanes + " floats per vector, " + packed.registerBlock()
                            + " register blocks";
                }
            } catch (ReflectiveOperationException | LinkageError e) {
                reason = "scalar kernels: the Vector API kernels failed to load: " + e;
                level = Level.WARNING;
            }
        }
        ROWS = rows;
        PACKED = packed;
        LANES = lanes;
        REASON = reason;
        // a fallback the user did not ask for is worth a line on the console; the normal case is not
        System.getLogger("dev.qkv.kernel").log(level, "qkv: " + REASON);
    }

    private Vectorization() {
    }

    /** True when the Vector API kernels run. */
    public static boolean enabled() {
        return PACKED != null;
    }

    /** Floats per vector of the Vector API kernels; 0 when they do not run. */
    public static int lanes() {
        return LANES;
    }

    /** Which kernels run, and why the Vector API ones do not when they do not. */
    public static String reason() {
        return REASON;
    }

    /** The row kernels: Vector API when {@link #enabled()}, else scalar. */
    public static RowKernels rows() {
        return ROWS;
    }

    /** The scalar row kernels, always available (for tests that compare the two). */
    public static RowKernels scalarRows() {
        return ScalarRowKernels.INSTANCE;
    }

    /** The packed-operand product kernels, or null when the Vector API is not {@link #enabled()}. */
    public static PackedKernels packed() {
        return PACKED;
    }
}
