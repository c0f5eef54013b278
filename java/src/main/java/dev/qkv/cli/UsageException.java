package dev.qkv.cli;

/** A mistake in how the command line was used; {@link Main} prints {@code error: <message>} and exits with 2. */
final class UsageException extends Exception {
    private static final long serialVersionUID = 1L;

    UsageException(String message) {
        super(message);
    }
}
