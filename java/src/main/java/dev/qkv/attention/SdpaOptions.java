package dev.qkv.attention;

/**
 * The options of one scaled dot-product attention call: causal masking, an optional {@link Mask}, and the
 * scale of the scores.
 *
 * <p>Causal masking is aligned bottom-right: query {@code i} may attend key {@code j} iff
 * {@code j <= i + (Lk - Lq)}. This is the rule for queries that are the last {@code Lq} positions of a sequence
 * of {@code Lk} keys (decoding with a KV cache); for {@code Lq == Lk} it is the ordinary lower triangle. When
 * {@code Lq > Lk} the first {@code Lq - Lk} queries see no key and their outputs are zeros.
 *
 * @param causal whether the causal rule applies
 * @param mask   an extra mask combined with the causal rule, or {@code null}
 * @param scale  the factor applied to {@code q·kᵀ}; {@code NaN} means the default {@code 1/√Dk}, which a call with
 *               {@code Dk = 0} refuses ({@link IllegalArgumentException}: give a scale)
 */
public record SdpaOptions(boolean causal, Mask mask, float scale) {

    /** No mask, not causal, scale {@code 1/√Dk}. */
    public static final SdpaOptions DEFAULT = new SdpaOptions(false, null, Float.NaN);
    /** Causal, no extra mask, scale {@code 1/√Dk}. */
    public static final SdpaOptions CAUSAL = new SdpaOptions(true, null, Float.NaN);

    /** Rejects an infinite scale ({@code NaN} stands for the default). */
    public SdpaOptions {
        if (Float.isInfinite(scale)) {
            throw new IllegalArgumentException("scale must be finite, got " + scale);
        }
    }

    /** These options with causal masking on or off. */
    public SdpaOptions withCausal(boolean on) {
        return new SdpaOptions(on, mask, scale);
    }

    /** These options with the given mask ({@code null} for none). */
    public SdpaOptions withMask(Mask m) {
        return new SdpaOptions(causal, m, scale);
    }

    /** These options with an explicit, finite scale. */
    public SdpaOptions withScale(float s) {
        if (!Float.isFinite(s)) {
            throw new IllegalArgumentException("scale must be finite, got " + s);
        }
        return new SdpaOptions(causal, mask, s);
    }

    /** The scale to use for head dimension {@code dk}. */
    public float scaleFor(long dk) {
        return Float.isNaN(scale) ? (float) (1.0 / Math.sqrt(dk)) : scale;
    }
}
