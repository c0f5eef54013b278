package dev.qkv.attention;

import dev.qkv.tensor.Tensor;

import java.util.Objects;

/**
 * An attention mask over scores {@code [B, Hq, Lq, Lk]}, given as a tensor of rank 0 to 4 that broadcasts to that
 * shape as in NumPy and PyTorch: its dimensions align with the scores' from the right, and each is the scores'
 * size or 1 (repeated), e.g. {@code [Lk]}, {@code [Lq, Lk]}, {@code [Hq, Lq, Lk]}, {@code [B, 1, Lq, Lk]},
 * {@code [B, 1, 1, Lk]} (a key-padding mask) or {@code [B, Hq, Lq, Lk]}. The last dimension too may be 1, as in
 * PyTorch's {@code F.scaled_dot_product_attention}: {@code [Lq, 1]}, {@code [B, 1, Lq, 1]} or {@code [1]} hold one
 * value per query row, applied to every key (e.g. padded query rows masked out whole; such a row, like any row
 * with no key allowed, gives zeros). A tensor broadcast along the keys with a stride of 0
 * ({@link Tensor#broadcastTo}) reads the same. A rank-0 mask (NumPy's 0-d array, {@code np.float32(-1)}) holds one
 * value for every score.
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

    /**
     * The names a caller gives the scores' four dimensions, used in the messages of
     * {@link #requireBroadcastsTo(long, long, long, long, DimNames)}: {@link #SDPA} for {@link Attention#sdpa}, the
     * multi-head layer's {@code [B, H, L, Lkv]} for its own calls.
     *
     * @param batch   the batch dimension ({@code B})
     * @param heads   the query heads ({@code Hq})
     * @param queries the query rows ({@code Lq})
     * @param keys    the keys ({@code Lk})
     */
    public record DimNames(String batch, String heads, String queries, String keys) {
        /** sdpa's names: {@code [B, Hq, Lq, Lk]}. */
        public static final DimNames SDPA = new DimNames("B", "Hq", "Lq", "Lk");

        /** Validates that every name is present. */
        public DimNames {
            Objects.requireNonNull(batch, "batch is null");
            Objects.requireNonNull(heads, "heads is null");
            Objects.requireNonNull(queries, "queries is null");
            Objects.requireNonNull(keys, "keys is null");
        }
    }

    /**
     * Refuses this mask unless it broadcasts to scores {@code [b, hq, lq, lk]} as NumPy and PyTorch broadcast: its
     * dimensions align with the scores' from the right, and each, the last ({@code lk}) included, is the scores'
     * size or 1 (a rank-0 mask, one value, broadcasts to every score). The check {@link Attention} makes of every
     * call's mask; it allocates nothing. A rank-3
     * mask is {@code [Hq, Lq, Lk]}: PyTorch's {@code nn.MultiheadAttention} 3-D {@code attn_mask},
     * {@code [B·Hq, Lq, Lk]}, is refused when {@code B > 1}, with a hint to {@link Tensor#reshape} it to
     * {@code [B, Hq, Lq, Lk]} ({@code [B, Hq, Lq, 1]} for one of {@code [B·Hq, Lq, 1]}).
     *
     * @throws IllegalArgumentException naming the mask and its shape, and the shape it must broadcast to
     *                                  ({@code [2, 4, 3, 5] = [B, Hq, Lq, Lk]})
     */
    public void requireBroadcastsTo(long b, long hq, long lq, long lk) {
        requireBroadcastsTo(b, hq, lq, lk, DimNames.SDPA);
    }

    /**
     * {@link #requireBroadcastsTo(long, long, long, long)} whose message names the scores' dimensions as the
     * caller does: the multi-head layer checks its options' mask with this before its projections, against its
     * scores {@code [B, H, L, Lkv]}. Allocates nothing unless it throws.
     *
     * @throws IllegalArgumentException naming the mask and its shape, and the shape it must broadcast to in
     *                                  {@code names}' terms
     */
    public void requireBroadcastsTo(long b, long hq, long lq, long lk, DimNames names) {
        Objects.requireNonNull(names, "names is null");
        Tensor m = values;
        int r = m.rank();
        if (r > 4) {
            throw new IllegalArgumentException(m.describe("mask") + ": rank " + r + " is not "
                    + broadcastable(b, hq, lq, lk, names));
        }
        // no array of the scores' sizes: this runs on every call and must not allocate (a long[4] here was 48 B
        // per masked call, AllocationTest)
        boolean ok = true;
        for (int d = 0; d < r; d++) {
            int s = 4 - r + d; // the scores' dimension this one aligns with: 0 (B), 1 (Hq), 2 (Lq) or 3 (Lk)
            ok &= fits(m.size(d), s == 0 ? b : s == 1 ? hq : s == 2 ? lq : lk);
        }
        if (!ok) {
            String hint = "";
            if (r == 3 && b > 1 && hq > 0 && m.size(0) / b == hq && m.size(0) % b == 0 && fits(m.size(1), lq)
                    && fits(m.size(2), lk)) {
                // PyTorch's nn.MultiheadAttention takes a 3-D attn_mask as [B·num_heads, L, S]; NumPy's broadcast
                // (ours) reads a rank-3 mask as [Hq, Lq, Lk]: say how to pass it rather than leave the user with
                // the rule alone (found in review). Its own last size, Lk or 1 (one value per row), and none for
                // another: "[.., Lk]" named a reshape to a count of elements the mask does not have
                String k = names.keys();
                String q = names.queries();
                hint = "; a [" + names.batch() + "·" + names.heads() + ", " + q + ", " + k + "] mask"
                        + " (nn.MultiheadAttention's 3-D attn_mask) reads here as [" + names.heads() + ", " + q
                        + ", " + k + "]: reshape it to [" + b + ", " + hq + ", " + m.size(1) + ", " + m.size(2) + "]"
                        + " (Tensor.reshape)";
            }
            throw new IllegalArgumentException(m.describe("mask") + ": not " + broadcastable(b, hq, lq, lk, names)
                    + hint);
        }
    }

    private static String broadcastable(long b, long hq, long lq, long lk, DimNames n) {
        String k = n.keys();
        String qk = n.queries() + ", " + k;
        String hqk = n.heads() + ", " + qk;
        String all = "[" + n.batch() + ", " + hqk + "]";
        return "broadcastable to [" + b + ", " + hq + ", " + lq + ", " + lk + "] = " + all
                + " (aligned from the right, as in [" + k + "], [" + qk + "], [" + hqk + "] or " + all
                + "; any size may be 1)";
    }

    private static boolean fits(long have, long want) {
        return have == want || have == 1;
    }

    /** An additive mask: {@code bias} is added to the scaled scores before the softmax. */
    public static Mask additive(Tensor bias) {
        Objects.requireNonNull(bias, "bias is null");
        return new Mask(Kind.ADDITIVE, bias);
    }
}
