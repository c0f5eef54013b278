package dev.qkv.attention;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** The row softmax of the blocked attention, in place over a score tile. */
final class Softmax {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private Softmax() {
    }

    /**
     * Turns scores {@code s[at .. at+n)} into attention weights: entries at or past {@code limit} (causally
     * hidden) and entries the mask forbids get weight 0; the rest get {@code exp(s - max) / Σ exp(s - max)}.
     * A row with no allowed entry becomes all zeros. {@code mask} (may be null) is read at
     * {@code mAt + j * mStride}; boolean masks forbid where the value is 0, additive masks are added.
     */
    static void maskedRow(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt, long mStride,
                          boolean maskBool) {
        // mask and row max
        float max = Float.NEGATIVE_INFINITY;
        for (int j = 0; j < limit; j++) {
            float x = s.getAtIndex(F, at + j);
            if (mask != null) {
                float m = mask.getAtIndex(F, mAt + j * mStride);
                if (maskBool) {
                    if (m == 0f) {
                        x = Float.NEGATIVE_INFINITY;
                    }
                } else {
                    x += m;
                }
                s.setAtIndex(F, at + j, x);
            }
            max = Math.max(max, x);
        }
        if (max == Float.NEGATIVE_INFINITY) {
            // no key may be attended: zeros, never NaN
            for (int j = 0; j < n; j++) {
                s.setAtIndex(F, at + j, 0f);
            }
            return;
        }
        // exp and sum
        double sum = 0;
        for (int j = 0; j < limit; j++) {
            float e = (float) Math.exp(s.getAtIndex(F, at + j) - max);
            s.setAtIndex(F, at + j, e);
            sum += e;
        }
        // normalize
        float inv = (float) (1.0 / sum);
        for (int j = 0; j < limit; j++) {
            s.setAtIndex(F, at + j, s.getAtIndex(F, at + j) * inv);
        }
        for (int j = limit; j < n; j++) {
            s.setAtIndex(F, at + j, 0f);
        }
    }
}
