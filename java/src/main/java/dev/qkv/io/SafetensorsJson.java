package dev.qkv.io;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A strict JSON (RFC 8259) parser for safetensors headers: objects become {@link Map}s with insertion order,
 * arrays {@link List}s, strings {@link String}s, integers {@link Long}s, other numbers (and {@code -0}, as
 * serde_json reads it) {@link Double}s, and
 * {@code true}/{@code false}/{@code null} themselves. Duplicate keys, trailing garbage, control characters in
 * strings, lone surrogates and nesting deeper than {@link #MAX_DEPTH} are errors: the header is untrusted.
 */
final class SafetensorsJson {
    /** Deepest nesting accepted; a safetensors header needs three levels. */
    static final int MAX_DEPTH = 64;

    private final String s;
    private int pos;

    private SafetensorsJson(String s) {
        this.s = s;
    }

    /** Parses one JSON value filling the whole text, surrounding whitespace aside. */
    static Object parse(String text) {
        SafetensorsJson p = new SafetensorsJson(text);
        p.skipWs();
        Object v = p.value(0);
        p.skipWs();
        if (p.pos != p.s.length()) {
            throw p.error("unexpected text after the JSON value");
        }
        return v;
    }

    /** A syntax error at a character offset. */
    static final class JsonException extends RuntimeException {
        JsonException(String message) {
            super(message);
        }
    }

    private JsonException error(String what) {
        return new JsonException("invalid JSON at character " + pos + ": " + what);
    }

    private void skipWs() {
        while (pos < s.length()) {
            char c = s.charAt(pos);
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                return;
            }
            pos++;
        }
    }

    private Object value(int depth) {
        if (depth > MAX_DEPTH) {
            throw error("nesting deeper than " + MAX_DEPTH);
        }
        if (pos >= s.length()) {
            throw error("unexpected end");
        }
        char c = s.charAt(pos);
        return switch (c) {
            case '{' -> object(depth);
            case '[' -> array(depth);
            case '"' -> string();
            case 't' -> literal("true", Boolean.TRUE);
            case 'f' -> literal("false", Boolean.FALSE);
            case 'n' -> literal("null", null);
            default -> {
                if (c == '-' || (c >= '0' && c <= '9')) {
                    yield number();
                }
                throw error("unexpected character '" + printable(c) + "'");
            }
        };
    }

    private Object literal(String word, Object v) {
        if (!s.startsWith(word, pos)) {
            throw error("expected " + word);
        }
        pos += word.length();
        return v;
    }

    private Map<String, Object> object(int depth) {
        pos++;
        Map<String, Object> m = new LinkedHashMap<>();
        skipWs();
        if (pos < s.length() && s.charAt(pos) == '}') {
            pos++;
            return m;
        }
        while (true) {
            skipWs();
            if (pos >= s.length() || s.charAt(pos) != '"') {
                throw error("expected a string key");
            }
            int keyAt = pos;
            String key = string();
            skipWs();
            expect(':');
            skipWs();
            Object v = value(depth + 1);
            if (m.containsKey(key)) {
                pos = keyAt;
                throw error("duplicate key \"" + key + "\"");
            }
            m.put(key, v);
            skipWs();
            if (pos < s.length() && s.charAt(pos) == ',') {
                pos++;
                continue;
            }
            expect('}');
            return m;
        }
    }

    private List<Object> array(int depth) {
        pos++;
        List<Object> list = new ArrayList<>();
        skipWs();
        if (pos < s.length() && s.charAt(pos) == ']') {
            pos++;
            return Collections.unmodifiableList(list);
        }
        while (true) {
            skipWs();
            list.add(value(depth + 1));
            skipWs();
            if (pos < s.length() && s.charAt(pos) == ',') {
                pos++;
                continue;
            }
            expect(']');
            return Collections.unmodifiableList(list);
        }
    }

    private void expect(char c) {
        if (pos >= s.length()) {
            throw error("unexpected end, expected '" + c + "'");
        }
        if (s.charAt(pos) != c) {
            throw error("expected '" + c + "', found '" + printable(s.charAt(pos)) + "'");
        }
        pos++;
    }

    private String string() {
        pos++;
        StringBuilder sb = new StringBuilder();
        while (true) {
            if (pos >= s.length()) {
                throw error("unterminated string");
            }
            char c = s.charAt(pos++);
            if (c == '"') {
                return sb.toString();
            }
            if (c < 0x20) {
                pos--;
                throw error("control character in string");
            }
            if (Character.isSurrogate(c)) {
                // the header was decoded from UTF-8 with malformed input rejected, so surrogates here come in pairs
                sb.append(c);
                continue;
            }
            if (c != '\\') {
                sb.append(c);
                continue;
            }
            if (pos >= s.length()) {
                throw error("unterminated escape");
            }
            char e = s.charAt(pos++);
            switch (e) {
                case '"' -> sb.append('"');
                case '\\' -> sb.append('\\');
                case '/' -> sb.append('/');
                case 'b' -> sb.append('\b');
                case 'f' -> sb.append('\f');
                case 'n' -> sb.append('\n');
                case 'r' -> sb.append('\r');
                case 't' -> sb.append('\t');
                case 'u' -> {
                    char u = hex4();
                    if (Character.isHighSurrogate(u)) {
                        if (!s.startsWith("\\u", pos)) {
                            throw error("lone high surrogate in \\u escape");
                        }
                        pos += 2;
                        char low = hex4();
                        if (!Character.isLowSurrogate(low)) {
                            throw error("high surrogate not followed by a low surrogate");
                        }
                        sb.append(u).append(low);
                    } else if (Character.isLowSurrogate(u)) {
                        throw error("lone low surrogate in \\u escape");
                    } else {
                        sb.append(u);
                    }
                }
                default -> {
                    pos--;
                    throw error("invalid escape '\\" + printable(e) + "'");
                }
            }
        }
    }

    private char hex4() {
        if (pos + 4 > s.length()) {
            throw error("truncated \\u escape");
        }
        int v = 0;
        for (int i = 0; i < 4; i++) {
            char c = s.charAt(pos + i);
            // ASCII only (RFC 8259's HEXDIG): Character.digit also takes fullwidth and other Unicode digits
            int d = c < 0x80 ? Character.digit(c, 16) : -1;
            if (d < 0) {
                throw error("invalid hex digit in \\u escape");
            }
            v = v * 16 + d;
        }
        pos += 4;
        return (char) v;
    }

    private Object number() {
        int start = pos;
        if (s.charAt(pos) == '-') {
            pos++;
        }
        if (pos >= s.length()) {
            throw error("truncated number");
        }
        if (s.charAt(pos) == '0') {
            pos++;
            if (pos < s.length() && s.charAt(pos) >= '0' && s.charAt(pos) <= '9') {
                pos = start;
                throw error("leading zeros are not allowed in a JSON number");
            }
        } else if (s.charAt(pos) >= '1' && s.charAt(pos) <= '9') {
            digits();
        } else {
            throw error("invalid number");
        }
        boolean integral = true;
        if (pos < s.length() && s.charAt(pos) == '.') {
            pos++;
            integral = false;
            if (digits() == 0) {
                throw error("digits expected after '.'");
            }
        }
        if (pos < s.length() && (s.charAt(pos) == 'e' || s.charAt(pos) == 'E')) {
            pos++;
            integral = false;
            if (pos < s.length() && (s.charAt(pos) == '+' || s.charAt(pos) == '-')) {
                pos++;
            }
            if (digits() == 0) {
                throw error("digits expected in exponent");
            }
        }
        String text = s.substring(start, pos);
        if (integral && text.equals("-0")) {
            // as serde_json reads it: the float -0.0, which no offset or dimension (a usize there) accepts
            return -0.0;
        }
        if (integral) {
            try {
                return Long.parseLong(text);
            } catch (NumberFormatException ex) {
                pos = start;
                // clipped: the header may hold a number of any length, and the message is one line
                throw error("integer " + (text.length() <= 40 ? text : text.substring(0, 37) + "...")
                        + " does not fit in 64 bits");
            }
        }
        return Double.parseDouble(text);
    }

    private int digits() {
        int n = 0;
        while (pos < s.length() && s.charAt(pos) >= '0' && s.charAt(pos) <= '9') {
            pos++;
            n++;
        }
        return n;
    }

    private static String printable(char c) {
        return c < 0x20 || c > 0x7e ? String.format("\\u%04x", (int) c) : String.valueOf(c);
    }
}
