package dev.qkv.blas;

/**
 * OpenBLAS could not be found or loaded; the message says where qkv looked and what failed. When the user's own
 * setting is at fault ({@link #refusedSetting}), the message starts with or names that setting.
 */
public final class BlasUnavailableException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** Whether a setting of the user's is at fault (see {@link #refusedSetting}). */
    private final boolean refusedSetting;

    /** An exception with a message that says what was tried. */
    public BlasUnavailableException(String message) {
        this(message, null, false);
    }

    /** An exception with a message that says what was tried, and the failure beneath it. */
    public BlasUnavailableException(String message, Throwable cause) {
        this(message, cause, false);
    }

    /**
     * An exception with a message that says what was tried, the failure beneath it (or null), and whether a setting
     * of the user's is at fault.
     */
    public BlasUnavailableException(String message, Throwable cause, boolean refusedSetting) {
        super(message, cause);
        this.refusedSetting = refusedSetting;
    }

    /**
     * Whether the user's own setting is at fault, and the message names it: a {@code -Dqkv.blas.*} value outside its
     * values, a library the user chose ({@code -Dqkv.blas.library} or {@code QKV_BLAS_LIBRARY}) that does not
     * load or is not a usable OpenBLAS, or a {@code -Dqkv.cache.dir} the bundled library cannot be extracted to. False when no library was chosen and none was found or the bundled one did
     * not load: that is not the user's doing, and callers that can go on without OpenBLAS ({@code Backend.AUTO})
     * do; a setting the user made is never dropped that way.
     */
    public boolean refusedSetting() {
        return refusedSetting;
    }
}
