package dev.qkv.attention;

import dev.qkv.tensor.Tensor;

import java.util.Objects;

/**
 * An attention mask over scores {@code [B, Hq, Lq, Lk]}, given as a tensor of rank 1 to 4 that broadcasts to that
 * shape as in NumPy and PyTorch: its dimensions align with the scores' from the right, and each is the scores'
 * size or 1 (repeated), e.g. {@code [Lk]}, {@code [Lq, Lk]}, {@code [Hq, Lq, Lk]}, {@code [B, 1, Lq, Lk]},
 * {@code [B, 1, 1, Lk]} (a key-padding mask) or {@code [B, Hq, Lq, Lk]}. The last dimension is always {@code Lk}:
 * a mask has one value per key.
 *
 * <p>A boolean mask ({@link #allowed}) follows PyTorch: a non-zero element means the query may attend the key,
 * zero means it may not. An additive mask ({@link #additive}) is added to the scaled scores; {@code -inf}
 * forbids a key.
 *
 * @param kind   how the tensor's values are read
 * @param values the mask values (for a boolean mask, 0 = forbidden, anything else = allowed)
 */
public record Mask(Kind kind, Tensor values) {

    /** How a mask's values are applied to the scores. */
    public enum Kind {
        /** Non-zero: may attend; zero: may not. */
        BOOLEAN,
        /** Added to the scaled score; {@code -inf} forbids. */
        ADDITIVE
    }

    /** Validates that both parts are present. */
    public Mask {
        Objects.requireNonNull(kind, "kind is null");
        Objects.requireNonNull(values, "values is null");
    }

    /** A boolean mask: non-zero elements of {@code allowed} may be attended. */
    public static Mask allowed(Tensor allowed) {
        Objects.requireNonNull(allowed, "allowed is null");
        return new Mask(Kind.BOOLEAN, allowed);
    }

    /**
     * A key-padding mask from {@code allowed [B, Lk]} (Hugging Face's {@code attention_mask}, as floats: non-zero =
     * a real token, 0 = padding): a boolean mask viewing it as {@code [B, 1, 1, Lk]}, no copy. A {@code [B, Lk]}
     * tensor given to {@link #allowed} itself reads as {@code [Lq, Lk]} (NumPy's broadcast), which is refused when
     * {@code B != Lq} and wrong when they are equal.
     *
     * @throws IllegalArgumentException when {@code allowed} is not of rank 2, naming it and its shape
     */
    public static Mask keyPadding(Tensor allowed) {
        Objects.requireNonNull(allowed, "allowed is null");
        if (allowed.rank() != 2) {
            throw new IllegalArgumentException(allowed.describe("allowed") + ": a key-padding mask is [B, Lk]");
        }
        return new Mask(Kind.BOOLEAN, Tensor.view(allowed.segment(), allowed.offset(),
                new long[] {allowed.size(0), 1, 1, allowed.size(1)},
                new long[] {allowed.stride(0), 0, 0, allowed.stride(1)}));
    }

    /** An additive mask: {@code bias} is added to the scaled scores before the softmax. */
    public static Mask additive(Tensor bias) {
        Objects.requireNonNull(bias, "bias is null");
        return new Mask(Kind.ADDITIVE, bias);
    }
}
