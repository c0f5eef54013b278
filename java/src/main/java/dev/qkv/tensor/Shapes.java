package dev.qkv.tensor;

/** Formatting of shapes for messages: {@code [B, H, L, D]} style, as in {@code k [1, 8, 128, 64]}. */
public final class Shapes {
    private Shapes() {
    }

    /** The shape in brackets, e.g. {@code [1, 8, 128, 64]}. */
    public static String format(long... shape) {
        StringBuilder sb = new StringBuilder("[");
        for (int i = 0; i < shape.length; i++) {
            if (i > 0) {
                sb.append(", ");
            }
            sb.append(shape[i]);
        }
        return sb.append(']').toString();
    }
}
