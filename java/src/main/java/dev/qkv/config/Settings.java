package dev.qkv.config;

/**
 * The {@code -Dqkv.*} settings of the engine, its pool, OpenBLAS's thread count and the vector kernels, read
 * strictly (one rule for every package that reads one): a setting that is present but is
 * not a decimal integer in its range (or {@code true}/{@code false}) is a configuration error, thrown as an
 * {@link IllegalStateException} whose message starts with {@code -D} and names the setting, when the class that
 * reads it loads. {@code Integer.getInteger} would take {@code -Dqkv.keyBlock=2k} or {@code =1e3} as unset and run
 * the default without a word.
 */
public final class Settings {
    private Settings() {
    }

    /** The setting {@code name} in {@code [min, max]}, or {@code fallback} when it is not set. */
    public static long longSetting(String name, long fallback, long min, long max) {
        String s = System.getProperty(name);
        if (s == null) {
            return fallback;
        }
        long v;
        try {
            v = parse(s);
        } catch (NumberFormatException e) {
            throw refused(name, s, "an integer from " + min + " to " + max);
        }
        if (v < min || v > max) {
            throw refused(name, s, "an integer from " + min + " to " + max);
        }
        return v;
    }

    /**
     * A decimal integer in ASCII, spaces around it allowed: {@code Long.parseLong} alone would take any Unicode
     * digits ({@code ٣} as 3).
     */
    public static long parse(String s) {
        String t = s.strip();
        if (!t.matches("[+-]?[0-9]+")) {
            throw new NumberFormatException(s);
        }
        return Long.parseLong(t);
    }

    /** {@link #longSetting} for an int range. */
    public static int intSetting(String name, int fallback, int min, int max) {
        return (int) longSetting(name, fallback, min, max);
    }

    /** {@code true} or {@code false} (any case), or null when the setting is not set. */
    public static Boolean booleanSetting(String name) {
        String s = System.getProperty(name);
        if (s == null) {
            return null;
        }
        if (s.strip().equalsIgnoreCase("true")) {
            return Boolean.TRUE;
        }
        if (s.strip().equalsIgnoreCase("false")) {
            return Boolean.FALSE;
        }
        throw refused(name, s, "true or false");
    }

    /** Whether the setting is present at all. */
    public static boolean isSet(String name) {
        return System.getProperty(name) != null;
    }

    private static IllegalStateException refused(String name, String value, String expected) {
        return new IllegalStateException("-D" + name + "=" + value + ": must be " + expected);
    }
}
