package dev.qkv.attention;

/**
 * A per-element error bound for attention whose scores are large, computed in double from the inputs
 * themselves (independent of every backend, the reference included).
 *
 * <p>Why: a float score {@code s_j = scale · q·k_j} carries an absolute error {@code δ_j} up to about
 * {@code Dk · 2^-24 · S_j}, with {@code S_j = |scale| · Σ_e |q_e k_je|} (the forward error of a dot product of
 * length Dk). To first order an error {@code δ_j} in the scores moves the output by
 * {@code Σ_j p_j δ_j (v_j − out)} (the softmax's derivative), so
 * {@code |Δout_d| ≤ Σ_j p_j |δ_j| |v_jd − out_d|}. That is the bound used here, with
 * {@code |δ_j| ≤ 2 (Dk + 2) 2^-24 S_j} (the Dk roundings of the dot product, the scale multiply, the
 * subtraction of the row max, and a factor 2 of margin), plus {@link Fixtures#tol}{@code (Dk, Lk, 1)} per unit
 * of {@code 1 + |out|} for the roundings of O(1) quantities (the exponentials, the row sum, {@code p · v}).
 * Unlike a tolerance proportional to the largest score it stays small where it should: a row whose weights are
 * one-hot has {@code v_j − out = 0} at its only weighted key, so large scores cost nothing there, while a row
 * with two keys of close large scores gets the full sensitivity (where float scores cannot tell a weight rounded
 * to bfloat16 from a right one, and the bound says so).
 */
public final class ScoreErrorBound {
    private ScoreErrorBound() {
    }

    /**
     * The bound for every element of {@code out [B, Hq, Lq, Dv]}, contiguous arrays of q, k, v in
     * {@code [B, H, L, D]} order, causal aligned bottom-right as {@link Attention} has it.
     */
    public static double[] of(float[] q, float[] k, float[] v, int b, int hq, int hkv, int lq, int lk, int dk,
                              int dv, double scale, boolean causal) {
        double[] bound = new double[b * hq * lq * dv];
        double[] s = new double[lk];
        double[] mag = new double[lk];
        double[] out = new double[dv];
        double base = Fixtures.tol(dk, lk, 1);
        for (int bb = 0; bb < b; bb++) {
            for (int h = 0; h < hq; h++) {
                int g = h / (hq / hkv);
                for (int i = 0; i < lq; i++) {
                    int qAt = ((bb * hq + h) * lq + i) * dk;
                    int keys = causal ? Math.max(0, Math.min(lk, i + (lk - lq) + 1)) : lk;
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < keys; j++) {
                        int kAt = ((bb * hkv + g) * lk + j) * dk;
                        double dot = 0;
                        double abs = 0;
                        for (int e = 0; e < dk; e++) {
                            double x = (double) q[qAt + e] * k[kAt + e];
                            dot += x;
                            abs += Math.abs(x);
                        }
                        s[j] = scale * dot;
                        mag[j] = Math.abs(scale) * abs;
                        max = Math.max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < keys; j++) {
                        s[j] = Math.exp(s[j] - max);
                        sum += s[j];
                    }
                    java.util.Arrays.fill(out, 0);
                    for (int j = 0; j < keys; j++) {
                        s[j] /= sum;
                        int vAt = ((bb * hkv + g) * lk + j) * dv;
                        for (int d = 0; d < dv; d++) {
                            out[d] += s[j] * v[vAt + d];
                        }
                    }
                    int oAt = ((bb * hq + h) * lq + i) * dv;
                    for (int d = 0; d < dv; d++) {
                        double sens = 0;
                        for (int j = 0; j < keys; j++) {
                            int vAt = ((bb * hkv + g) * lk + j) * dv;
                            sens += s[j] * mag[j] * Math.abs(v[vAt + d] - out[d]);
                        }
                        bound[oAt + d] = 2 * (dk + 2) * Fixtures.U * sens + base * (1 + Math.abs(out[d]));
                    }
                }
            }
        }
        return bound;
    }
}
