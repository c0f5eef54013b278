package dev.qkv.cli;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;

/**
 * Rows of an attention output recomputed with the scalar reference ({@link Backend#REFERENCE}, double sums), so
 * that a timing never belongs to a wrong answer: what {@code bench} and the JMH benchmarks (bench/, through
 * {@code BenchSupport.check}) check before they report a figure.
 */
public final class ReferenceCheck {
    private ReferenceCheck() {
    }

    /**
     * Recomputes up to {@code maxRows} rows of {@code out = softmax(q·kᵀ/√D [causal]) · v} from q {@code [B, H, Lq,
     * D]} and k, v {@code [B, Hkv, Lk, D]} (query head {@code h} reads kv head {@code h / (H / Hkv)}; causal: query
     * {@code i} sees keys {@code 0..i}, Lq = Lk), evenly spaced from the first row to the last (both included), and
     * throws an {@link IllegalStateException} when a value differs by more than
     * {@code tolerance·max|v| + keys·MIN_VALUE/2} (or is NaN). {@code max|v|} is over the keys the row sees: an
     * output row is a convex combination of them, so its error scales with them; {@code keys·MIN_VALUE/2} lets each
     * of the row's products {@code p·v} round once to the subnormal grid. Each row is its own reference call on
     * views: that query row against the keys it may see, so a causal row needs no mask. Returns the largest
     * difference.
     */
    public static double rows(Tensor q, Tensor k, Tensor v, Tensor out, boolean causal, int maxRows,
                              double tolerance) {
        long[] qs = q.shape();
        long h = qs[1];
        long lq = qs[2];
        long hkv = k.size(1);
        long lk = k.size(2);
        long rows = qs[0] * h * lq;
        long checked = Math.min(rows, maxRows);
        Attention reference = Attention.create(Backend.REFERENCE, 1);
        double max = 0;
        try (Arena arena = Arena.ofConfined()) {
            Tensor want = Tensor.allocate(arena, 1, 1, 1, v.size(3));
            for (long j = 0; j < checked; j++) {
                // evenly spaced, rows 0 and rows - 1 included (distinct: rows >= checked)
                long row = checked == 1 ? 0 : j * (rows - 1) / (checked - 1);
                long bi = row / (h * lq);
                long hi = row / lq % h;
                long i = row % lq;
                long hk = hi / (h / hkv);
                long keys = causal ? i + 1 : lk;
                Tensor got = out.slice(0, bi, bi + 1).slice(1, hi, hi + 1).slice(2, i, i + 1);
                Tensor seen = v.slice(0, bi, bi + 1).slice(1, hk, hk + 1).slice(2, 0, keys);
                reference.sdpa(q.slice(0, bi, bi + 1).slice(1, hi, hi + 1).slice(2, i, i + 1),
                        k.slice(0, bi, bi + 1).slice(1, hk, hk + 1).slice(2, 0, keys), seen, want,
                        SdpaOptions.DEFAULT);
                double scale = maxAbs(seen.toArray());
                double bound = tolerance * scale + keys * (double) Float.MIN_VALUE / 2;
                double diff = maxDiff(want.toArray(), got.toArray());
                if (!(diff <= bound)) {
                    throw new IllegalStateException("the output differs from softmax(q·kᵀ/√D)·v by " + diff
                            + " at row " + row + ", more than " + bound + " (" + tolerance + " · max|v| "
                            + scale + " + " + keys + " keys · MIN_VALUE/2; q " + q.shapeString() + ", k "
                            + k.shapeString() + (causal ? ", causal" : "") + ")");
                }
                max = Math.max(max, diff);
            }
        }
        return max;
    }

    /** max |a[i]| (NaN when any value is NaN). */
    public static double maxAbs(float[] a) {
        double max = 0;
        for (float x : a) {
            max = Math.max(max, Math.abs(x));
        }
        return max;
    }

    /** max |a[i] - b[i]| over equally long arrays (NaN when any difference is NaN). */
    public static double maxDiff(float[] a, float[] b) {
        double max = 0;
        for (int i = 0; i < a.length; i++) {
            max = Math.max(max, Math.abs((double) a[i] - b[i]));
        }
        return max;
    }
}
