package dev.qkv.cli;

/** A mistake in how the command line was used; {@link Main} prints {@code error: <message>} and exits with 2. */
class UsageException extends Exception {
    private static final long serialVersionUID = 1L;

    UsageException(String message) {
        super(message);
    }
}

/**
 * {@code --help} or {@code -h} where a flag stands (not as a flag's value): {@link Main} prints the command's usage
 * and exits with 0.
 */
final class HelpRequest extends UsageException {
    private static final long serialVersionUID = 1L;

    HelpRequest(String command) {
        super(command + ": help requested");
    }
}
