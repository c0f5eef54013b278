package dev.qkv.cli;

import java.nio.file.InvalidPathException;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The flags of one command, parsed strictly: {@code --name value} (or {@code --name=value}) for value flags and
 * {@code --name} for switches. An unknown flag, a flag given twice, a value flag without a value and a bare word
 * are {@link UsageException}s.
 */
final class Flags {
    private final String command;
    private final Map<String, String> values = new HashMap<>();
    private final Set<String> switches = new HashSet<>();

    private Flags(String command) {
        this.command = command;
    }

    /**
     * Parses {@code args} for {@code command}, which takes the value flags {@code valueFlags} and the switches
     * {@code switchFlags} (names without the leading {@code --}).
     */
    static Flags parse(String command, List<String> args, Set<String> valueFlags, Set<String> switchFlags)
            throws UsageException {
        if (helpRequested(args, valueFlags)) {
            throw new HelpRequest(command);
        }
        Flags f = new Flags(command);
        for (int i = 0; i < args.size(); i++) {
            String a = args.get(i);
            if (!a.startsWith("--") || a.length() == 2) {
                throw new UsageException(command + ": unexpected argument '" + a + "' (flags start with --)");
            }
            int eq = a.indexOf('=');
            String name = a.substring(2, eq < 0 ? a.length() : eq);
            if (switchFlags.contains(name)) {
                if (eq >= 0) {
                    throw new UsageException(command + ": --" + name + " takes no value");
                }
                if (!f.switches.add(name)) {
                    throw new UsageException(command + ": --" + name + " given twice");
                }
            } else if (valueFlags.contains(name)) {
                String value;
                if (eq >= 0) {
                    value = a.substring(eq + 1);
                } else if (i + 1 < args.size() && !args.get(i + 1).startsWith("--")) {
                    value = args.get(++i);
                } else {
                    throw new UsageException(command + ": --" + name + " needs a value");
                }
                if (value.isEmpty()) {
                    throw new UsageException(command + ": --" + name + " needs a value");
                }
                if (f.values.putIfAbsent(name, value) != null) {
                    throw new UsageException(command + ": --" + name + " given twice");
                }
            } else {
                throw new UsageException(command + ": unknown flag --" + name + " (see 'qkv help')");
            }
        }
        return f;
    }

    /**
     * True when {@code --help} or {@code -h} stands where a flag does, anywhere on the line (so help wins over
     * the other mistakes on it); a word that {@link #parse} takes as a value flag's value, such as
     * {@code --out -h}, is not a help request.
     */
    private static boolean helpRequested(List<String> args, Set<String> valueFlags) {
        for (int i = 0; i < args.size(); i++) {
            String a = args.get(i);
            if (a.equals("--help") || a.equals("-h")) {
                return true;
            }
            if (a.startsWith("--") && a.indexOf('=') < 0 && valueFlags.contains(a.substring(2))
                    && i + 1 < args.size() && !args.get(i + 1).startsWith("--")) {
                i++;
            }
        }
        return false;
    }

    /** The value of {@code name}, or {@code fallback} when it was not given. */
    String get(String name, String fallback) {
        return values.getOrDefault(name, fallback);
    }

    /** The value of {@code name}, which must have been given. */
    String require(String name) throws UsageException {
        String v = values.get(name);
        if (v == null) {
            throw new UsageException(command + ": missing required flag --" + name);
        }
        return v;
    }

    /**
     * The value of {@code name} as a path, which must have been given. A name this system cannot encode (bytes
     * outside the locale's charset: {@code LC_ALL=C} and a non-ASCII name) is the user's to fix, not an internal
     * failure.
     */
    Path requirePath(String name) throws UsageException {
        return path(name, require(name));
    }

    /** {@link #requirePath}, or null when {@code name} was not given. */
    Path path(String name) throws UsageException {
        String v = values.get(name);
        return v == null ? null : path(name, v);
    }

    private Path path(String name, String value) throws UsageException {
        if (value.endsWith("/")) {
            // Path.of drops the slash: `--out results/` would write a file named results
            throw new UsageException(command + ": --" + name + " '" + value + "' ends with '/', so it names a folder;"
                    + " give a file name");
        }
        try {
            return Path.of(value);
        } catch (InvalidPathException e) {
            throw new UsageException(command + ": --" + name + " '" + value + "' is not a file name this JVM can use ("
                    + e.getReason() + "; it encodes file names as " + System.getProperty("sun.jnu.encoding")
                    + ": set a UTF-8 locale, e.g. LC_ALL=C.UTF-8)");
        }
    }

    /** True when the switch or value flag {@code name} was given. */
    boolean has(String name) {
        return switches.contains(name) || values.containsKey(name);
    }

    /** The integer value of {@code name} in {@code [min, max]}, or {@code fallback} when it was not given. */
    int intValue(String name, int fallback, int min, int max) throws UsageException {
        String v = values.get(name);
        if (v == null) {
            return fallback;
        }
        return parseInt("--" + name, v, min, max);
    }

    /** Parses {@code text} as an integer in {@code [min, max]}; {@code what} names it in the message. */
    static int parseInt(String what, String text, int min, int max) throws UsageException {
        String t = text.strip();
        if (!t.matches("[+-]?[0-9]+")) {
            // ASCII digits only: Integer.parseInt takes any Unicode digit (--heads ٤ as 4)
            throw new UsageException(what + " expects an integer, got '" + text + "'");
        }
        int n;
        try {
            n = Integer.parseInt(t);
        } catch (NumberFormatException e) {
            // an integer, just not an int
            throw new UsageException(what + " must be in " + min + ".." + max + ", got " + t);
        }
        if (n < min || n > max) {
            throw new UsageException(what + " must be in " + min + ".." + max + ", got " + n);
        }
        return n;
    }
}
