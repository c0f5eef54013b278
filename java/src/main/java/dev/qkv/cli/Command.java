package dev.qkv.cli;

import java.io.IOException;
import java.io.PrintStream;
import java.util.List;

/** One subcommand of the {@code qkv} command line; {@link Main} holds the table of them. */
interface Command {

    /** The word that selects this command, e.g. {@code sdpa}. */
    String name();

    /** The synopsis, e.g. {@code sdpa --q Q.npy ...}; one line, or several joined by newlines. */
    String usage();

    /** One line saying what the command does. */
    String summary();

    /**
     * Runs the command on its arguments (the words after its name) and returns the exit code.
     *
     * @throws UsageException for mistakes of the user: Main prints one {@code error:} line and exits with 2
     * @throws IOException    for files that cannot be read or written: Main prints one {@code error:} line
     */
    int run(List<String> args, PrintStream out, PrintStream err) throws UsageException, IOException;
}
