package dev.qkv.blas;

/** OpenBLAS could not be found or loaded; the message says where qkv looked and what failed. */
public final class BlasUnavailableException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** An exception with a message that says what was tried. */
    public BlasUnavailableException(String message) {
        super(message);
    }

    /** An exception with a message that says what was tried, and the failure beneath it. */
    public BlasUnavailableException(String message, Throwable cause) {
        super(message, cause);
    }
}
