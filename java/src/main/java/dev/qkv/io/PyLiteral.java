package dev.qkv.io;

import java.math.BigInteger;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A parser for the Python literals a {@code .npy} header is written in: dicts with string keys, strings, integers,
 * floats, {@code True}/{@code False}/{@code None}, tuples and lists. It accepts what numpy's writers produce (and
 * Python 2's {@code 3L} integers), nothing that needs evaluation. As in Python, a key repeated in a dict keeps its
 * last value, and an integer has no leading zeros ({@code 0} and {@code 00} aside).
 */
final class PyLiteral {

    /** A Python tuple, kept apart from a list because numpy requires the shape to be a tuple. */
    record Tuple(List<Object> items) {
    }

    /** Python's {@code None}. */
    enum None { NONE }

    /** Why a header is not a literal, with the character offset where parsing stopped. */
    static final class SyntaxException extends Exception {
        private static final long serialVersionUID = 1L;

        SyntaxException(String message, int at) {
            super(message + " at offset " + at);
        }
    }

    /**
     * Longest integer literal accepted: Python's own default limit for converting digits to an int. Parsing a
     * megabyte of digits into a {@link BigInteger} takes about 20 s, so a 1 MiB header could stall the reader.
     */
    private static final int MAX_INT_DIGITS = 4300;

    /** Deeper nesting than this is no header numpy writes; the limit keeps recursion off the stack's edge. */
    private static final int MAX_DEPTH = 32;

    private final String s;
    private int pos;

    private PyLiteral(String s) {
        this.s = s;
    }

    /** Parses {@code text}, which must hold exactly one literal surrounded by optional whitespace. */
    static Object parse(String text) throws SyntaxException {
        PyLiteral p = new PyLiteral(text);
        Object v = p.value(0);
        p.skipSpace();
        if (p.pos != text.length()) {
            throw new SyntaxException("unexpected " + p.describeHere() + " after the literal", p.pos);
        }
        return v;
    }

    private Object value(int depth) throws SyntaxException {
        if (depth > MAX_DEPTH) {
            throw new SyntaxException("nesting deeper than " + MAX_DEPTH, pos);
        }
        skipSpace();
        if (pos >= s.length()) {
            throw new SyntaxException("unexpected end of header", pos);
        }
        char c = s.charAt(pos);
        return switch (c) {
            case '{' -> dict(depth);
            case '(' -> new Tuple(sequence(')', depth, true));
            case '[' -> sequence(']', depth, false);
            case '\'', '"' -> string();
            default -> {
                if (c == '-' || c == '+' || c == '.' || isAsciiDigit(c)) {
                    yield number();
                }
                if (Character.isLetter(c)) {
                    yield name();
                }
                throw new SyntaxException("unexpected " + describeHere(), pos);
            }
        };
    }

    private Map<String, Object> dict(int depth) throws SyntaxException {
        pos++;
        Map<String, Object> map = new LinkedHashMap<>();
        while (true) {
            skipSpace();
            if (peek() == '}') {
                pos++;
                return map;
            }
            int keyAt = pos;
            Object key = value(depth + 1);
            if (!(key instanceof String k)) {
                throw new SyntaxException("dict key is not a string", keyAt);
            }
            skipSpace();
            expect(':');
            Object v = value(depth + 1);
            // a repeated key keeps its last value, as in Python (ast.literal_eval), so as numpy reads the header
            map.put(k, v);
            skipSpace();
            if (peek() == ',') {
                pos++;
            } else if (peek() != '}') {
                throw new SyntaxException("expected ',' or '}' but found " + describeHere(), pos);
            }
        }
    }

    private List<Object> sequence(char close, int depth, boolean tuple) throws SyntaxException {
        pos++;
        List<Object> items = new ArrayList<>();
        boolean trailingComma = false;
        while (true) {
            skipSpace();
            if (peek() == close) {
                pos++;
                // (x) is a parenthesized value in Python, not a tuple; numpy always writes (x,)
                if (tuple && items.size() == 1 && !trailingComma) {
                    throw new SyntaxException("(x) is not a tuple; a one-element tuple is written (x,)", pos - 1);
                }
                return items;
            }
            items.add(value(depth + 1));
            skipSpace();
            if (peek() == ',') {
                pos++;
                trailingComma = true;
            } else if (peek() != close) {
                throw new SyntaxException("expected ',' or '" + close + "' but found " + describeHere(), pos);
            } else {
                trailingComma = false;
            }
        }
    }

    private String string() throws SyntaxException {
        int start = pos;
        char quote = s.charAt(pos++);
        StringBuilder b = new StringBuilder();
        while (pos < s.length()) {
            char c = s.charAt(pos++);
            if (c == quote) {
                return b.toString();
            }
            if (c == '\n') {
                break;
            }
            if (c == '\\' && pos < s.length()) {
                char e = s.charAt(pos++);
                switch (e) {
                    case 'n' -> b.append('\n');
                    case 't' -> b.append('\t');
                    case 'r' -> b.append('\r');
                    case '0' -> b.append('\0');
                    case '\\', '\'', '"' -> b.append(e);
                    default -> b.append('\\').append(e);
                }
            } else {
                b.append(c);
            }
        }
        throw new SyntaxException("unterminated string", start);
    }

    private Object number() throws SyntaxException {
        int start = pos;
        if (peek() == '-' || peek() == '+') {
            pos++;
        }
        boolean fraction = false;
        while (pos < s.length()) {
            char c = s.charAt(pos);
            if (isAsciiDigit(c)) {
                pos++;
            } else if (c == '.' || c == 'e' || c == 'E') {
                fraction = true;
                pos++;
                if ((c == 'e' || c == 'E') && pos < s.length() && (s.charAt(pos) == '-' || s.charAt(pos) == '+')) {
                    pos++;
                }
            } else {
                break;
            }
        }
        String text = s.substring(start, pos);
        try {
            if (fraction) {
                return Double.parseDouble(text);
            }
            String digits = text.startsWith("-") || text.startsWith("+") ? text.substring(1) : text;
            if (digits.length() > 1 && digits.charAt(0) == '0' && !digits.chars().allMatch(c -> c == '0')) {
                // Python 3 refuses 007 (a SyntaxError in numpy too), and Python 2 read 010 as octal 8
                throw new SyntaxException("leading zeros in the integer '" + text + "' (Python 3 refuses them)",
                        start);
            }
            if (text.length() > MAX_INT_DIGITS + 1) {
                throw new SyntaxException("integer of " + text.length() + " characters exceeds the limit of "
                        + MAX_INT_DIGITS + " digits", start);
            }
            BigInteger v = new BigInteger(text);
            if (pos < s.length() && (s.charAt(pos) == 'L' || s.charAt(pos) == 'l')) {
                pos++;
            }
            return v;
        } catch (NumberFormatException e) {
            throw new SyntaxException("malformed number '" + text + "'", start);
        }
    }

    /**
     * Python number literals use the digits 0-9 only; {@link Character#isDigit} (and {@link BigInteger}) would
     * also take e.g. Arabic-Indic digits, so a UTF-8 header could state a shape numpy itself refuses to read.
     */
    private static boolean isAsciiDigit(char c) {
        return c >= '0' && c <= '9';
    }

    private Object name() throws SyntaxException {
        int start = pos;
        while (pos < s.length() && (Character.isLetterOrDigit(s.charAt(pos)) || s.charAt(pos) == '_')) {
            pos++;
        }
        String word = s.substring(start, pos);
        return switch (word) {
            case "True" -> Boolean.TRUE;
            case "False" -> Boolean.FALSE;
            case "None" -> None.NONE;
            default -> throw new SyntaxException("unexpected name '" + word + "'", start);
        };
    }

    private void expect(char c) throws SyntaxException {
        if (peek() != c) {
            throw new SyntaxException("expected '" + c + "' but found " + describeHere(), pos);
        }
        pos++;
    }

    private char peek() {
        return pos < s.length() ? s.charAt(pos) : '\uffff';
    }

    private void skipSpace() {
        while (pos < s.length() && (s.charAt(pos) == ' ' || s.charAt(pos) == '\t' || s.charAt(pos) == '\n'
                || s.charAt(pos) == '\r')) {
            pos++;
        }
    }

    private String describeHere() {
        if (pos >= s.length()) {
            return "end of header";
        }
        char c = s.charAt(pos);
        return c >= 0x20 && c < 0x7f ? "'" + c + "'" : String.format("character U+%04X", (int) c);
    }

    /** Python's repr-like text of a parsed value, for error messages. */
    static String repr(Object v) {
        if (v instanceof String str) {
            return "'" + str + "'";
        }
        if (v instanceof Boolean b) {
            return b ? "True" : "False";
        }
        if (v instanceof None) {
            return "None";
        }
        if (v instanceof Tuple t) {
            StringBuilder b = new StringBuilder("(");
            for (int i = 0; i < t.items().size(); i++) {
                b.append(i == 0 ? "" : ", ").append(repr(t.items().get(i)));
            }
            return b.append(t.items().size() == 1 ? ",)" : ")").toString();
        }
        if (v instanceof List<?> l) {
            StringBuilder b = new StringBuilder("[");
            for (int i = 0; i < l.size(); i++) {
                b.append(i == 0 ? "" : ", ").append(repr(l.get(i)));
            }
            return b.append(']').toString();
        }
        if (v instanceof Map<?, ?> m) {
            StringBuilder b = new StringBuilder("{");
            boolean first = true;
            for (Map.Entry<?, ?> e : m.entrySet()) {
                b.append(first ? "" : ", ").append(repr(e.getKey())).append(": ").append(repr(e.getValue()));
                first = false;
            }
            return b.append('}').toString();
        }
        return String.valueOf(v);
    }
}
