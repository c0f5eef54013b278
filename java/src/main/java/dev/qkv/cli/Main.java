package dev.qkv.cli;

import dev.qkv.blas.BlasUnavailableException;
import dev.qkv.io.Npy;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.AccessDeniedException;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The {@code qkv} command line: {@code qkv [command] [flags]}, one {@link Command} per word.
 *
 * <p>Exit codes: 0 on success, 2 for a mistake of the user (bad flags, input files that are missing, unreadable or
 * malformed, an output that cannot be written, shapes that do not fit together, a {@code -Dqkv.*} setting refused,
 * an OpenBLAS the user chose that does not load, a {@code -Dqkv.cache.dir} the bundled one cannot be extracted to)
 * with exactly one line {@code error: ...} on stderr, 1 for everything
 * else (no OpenBLAS found or the bundled one not loading, internal failures). Set the environment variable {@code QKV_TRACE=1} to see the stack trace
 * of an internal failure.
 */
public final class Main {

    /** Every subcommand; to add one, write a {@link Command} and list it here. */
    private static final List<Command> COMMANDS = List.of(
            new SdpaCommand(),
            new MhaCommand(),
            new InfoCommand(),
            new BenchCommand(),
            new DemoCommand());

    /** What runs when no command is given. */
    private static final String DEFAULT_COMMAND = DemoCommand.NAME;

    private static final Map<String, Command> BY_NAME = new LinkedHashMap<>();

    static {
        for (Command c : COMMANDS) {
            if (BY_NAME.put(c.name(), c) != null) {
                throw new ExceptionInInitializerError("two commands named " + c.name());
            }
        }
    }

    private Main() {
    }

    /** Runs the command line and exits the JVM with its exit code. */
    public static void main(String[] args) {
        int code = run(args, System.out, System.err);
        System.out.flush();
        System.err.flush();
        System.exit(code);
    }

    /**
     * Runs the command line {@code args}, printing to {@code out} and {@code err}, and returns the exit code. A run
     * that succeeded but could not write {@code out} ({@code > /dev/full}, a closed pipe: a {@link PrintStream}
     * swallows those errors) lost what it printed, and fails with exit 2, as an output file that cannot be written
     * does; {@code sdpa} and {@code mha} print their summary before their output file replaces anything
     * ({@link #printSummary}), so such a run leaves no output file and any earlier one unchanged.
     */
    public static int run(String[] args, PrintStream out, PrintStream err) {
        int code = runCommand(args, out, err);
        if (code == 0 && out.checkError()) {
            return fail(err, 2, STDOUT_LOST);
        }
        return code;
    }

    private static final String STDOUT_LOST = "standard output cannot be written: what the command printed was lost";

    /**
     * Prints a command's summary {@code line} and fails when standard output cannot take it: given to
     * {@link dev.qkv.io.Npy#write(java.nio.file.Path, dev.qkv.tensor.Tensor, dev.qkv.io.Npy.BeforeReplace)}, so
     * that a run whose summary is lost ({@code > /dev/full}) writes no output file and replaces no earlier one.
     */
    static void printSummary(PrintStream out, String line) throws IOException {
        out.println(line);
        if (out.checkError()) {
            throw new IOException(STDOUT_LOST + ", so the output file was not written");
        }
    }

    private static int runCommand(String[] args, PrintStream out, PrintStream err) {
        try {
            if (args.length == 0) {
                return BY_NAME.get(DEFAULT_COMMAND).run(List.of(), out, err);
            }
            String word = args[0];
            if (word.equals("help") || word.equals("--help") || word.equals("-h")) {
                if (args.length == 1) {
                    printUsage(out);
                    return 0;
                }
                // `qkv help sdpa`: that command's usage, as `qkv sdpa --help` prints it; anything else is a mistake
                Command named = args.length == 2 ? BY_NAME.get(args[1]) : null;
                if (named == null) {
                    throw new UsageException(word + " takes at most one command name (" + String.join(", ",
                            BY_NAME.keySet()) + "), got '" + String.join(" ", Arrays.asList(args).subList(1,
                            args.length)) + "'");
                }
                printCommandUsage(out, named);
                return 0;
            }
            Command c = BY_NAME.get(word);
            if (c == null) {
                throw new UsageException((word.startsWith("-") ? "unknown flag " + word + " (flags follow a command)"
                        : "unknown command '" + word + "'") + "; commands: " + String.join(", ", BY_NAME.keySet())
                        + " (see 'qkv help')");
            }
            List<String> rest = Arrays.asList(args).subList(1, args.length);
            try {
                // every command parses its flags before it does anything (Flags.parse finds --help and -h)
                return c.run(rest, out, err);
            } catch (HelpRequest h) {
                printCommandUsage(out, c);
                return 0;
            }
        } catch (UsageException e) {
            return fail(err, 2, e.getMessage());
        } catch (IOException e) {
            return fail(err, 2, ioMessage(e));
        } catch (BlasUnavailableException e) {
            // a -Dqkv.blas.* setting it refuses, or a library the user chose that does not load, is the user's to
            // fix; the bundled or system library not loading is not
            // a refused -Dqkv.blas.threads or .critical value names itself: OpenBLAS may load fine
            String m = String.valueOf(e.getMessage());
            return fail(err, refusedSetting(e) ? 2 : 1, m.startsWith("-D") ? m : "OpenBLAS is unavailable: " + m);
        } catch (OutOfMemoryError e) {
            // memory the inputs' shapes ask for (the commands name the tensor where they can)
            return fail(err, 2, "not enough memory (" + e.getMessage() + "): the inputs ask for more than this JVM"
                    + " can allocate");
        } catch (ExceptionInInitializerError e) {
            if (e.getCause() instanceof IllegalStateException bad && refusedSetting(bad)) {
                // a -Dqkv.* setting the library refuses when its class loads: the user's to fix
                return fail(err, 2, bad.getMessage());
            }
            return internal(err, e);
        } catch (RuntimeException | Error e) {
            return internal(err, e);
        }
    }

    /** The error line's text for a problem with a file the user named. */
    static String ioMessage(IOException e) {
        if (e instanceof NoSuchFileException n) {
            return n.getFile() + ": " + (n.getReason() != null ? n.getReason() : "no such file");
        }
        if (e instanceof AccessDeniedException a) {
            return a.getFile() + ": " + (a.getReason() != null ? a.getReason() : "permission denied");
        }
        // NpyFormatException, FileSystemException and other problems with the files the user named (some of the
        // JDK's carry no message, e.g. ClosedByInterruptException: their name then)
        return e.getMessage() != null ? e.getMessage() : e.toString();
    }

    /**
     * Writes {@code tensor} to {@code file} ({@link Npy#write(Path, Tensor, Npy.BeforeReplace)}), printing the
     * command's {@code summary} once the data is on disk and before the file replaces anything, so that a lost
     * summary ({@code > /dev/full}) cancels the write.
     *
     * <p>Residual case: the rename can still fail after the summary is out (another process made the path a
     * folder, removed the folder or its permissions meanwhile). The summary cannot be taken back; the error line
     * then says it stands for no output, and no file is written (exit 2). The other order, the rename first, would
     * instead leave an output file without a summary when standard output fails, which is worse: a script that
     * checks the file would take the run for a success.
     */
    static void writeWithSummary(Path file, Tensor tensor, PrintStream out, String summary) throws IOException,
            UsageException {
        boolean[] printed = {false};
        try {
            Npy.write(file, tensor, () -> {
                printSummary(out, summary);
                printed[0] = true;
            });
        } catch (IOException e) {
            if (!printed[0]) {
                throw e;
            }
            throw new UsageException(ioMessage(e) + "; the summary line printed above stands for no output: " + file
                    + " was not written");
        }
    }

    private static void printCommandUsage(PrintStream out, Command c) {
        out.println("usage: qkv " + c.usage().replace("\n", "\n       qkv "));
        out.println("  " + c.summary());
    }

    private static int internal(PrintStream err, Throwable e) {
        err.println("error: internal failure: " + oneLine(String.valueOf(e))
                + (trace() ? "" : " (set QKV_TRACE=1 for the stack trace)"));
        if (trace()) {
            e.printStackTrace(err);
        }
        return 1;
    }

    private static int fail(PrintStream err, int code, String message) {
        err.println("error: " + oneLine(message));
        return code;
    }

    /**
     * {@code message} as one line for any reader: a newline becomes a space (messages that list things), and every
     * other character a reader may take for a line break or that a terminal acts on ({@code \r}, form feed, NEL,
     * U+2028, other controls; a path or a tensor name in a file may hold them) is written as {@code \}{@code uXXXX}.
     * A tab stays. {@code null} (an exception without a message) reads "(no message)".
     */
    static String oneLine(String message) {
        if (message == null) {
            return "(no message)";
        }
        StringBuilder b = new StringBuilder(message.length());
        for (int i = 0; i < message.length(); i++) {
            char c = message.charAt(i);
            if (c == '\n') {
                b.append(' ');
            } else if (c != '\t' && (Character.isISOControl(c) || c == '\u2028' || c == '\u2029')) {
                b.append(String.format("\\u%04X", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.toString();
    }

    private static boolean trace() {
        return "1".equals(System.getenv("QKV_TRACE"));
    }

    private static void printUsage(PrintStream out) {
        out.println("usage: qkv [command] [flags]   (no command: the demo)");
        out.println();
        for (Command c : COMMANDS) {
            out.println("  qkv " + c.usage().replace("\n", "\n  qkv "));
            out.println("      " + c.summary());
        }
        out.println("  qkv help [command]");
        out.println("      This text, or one command's ('qkv <command> --help' shows it too).");
        out.println();
        out.println("Exit codes: 0 ok, 2 usage or input error (one 'error:' line on stderr), 1 other failures.");
    }

    /**
     * Whether {@code e} refuses a setting of the user's: a {@code -Dqkv.*} value (its message starts with the setting,
     * as the library's settings write it), or what {@code OpenBlas} flags as
     * {@link BlasUnavailableException#refusedSetting} (a library chosen by {@code -Dqkv.blas.library} or
     * {@code QKV_BLAS_LIBRARY} that does not load). The user's to fix, exit 2; commands that go on without OpenBLAS
     * pass such a refusal on rather than report a missing library.
     */
    static boolean refusedSetting(RuntimeException e) {
        return e instanceof BlasUnavailableException b && b.refusedSetting()
                || String.valueOf(e.getMessage()).startsWith("-D");
    }
}
