package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The layer's forward and decode against a float64 oracle written here from the definition, sharing nothing with
 * the library (not {@link MhaReference}, not the reference attention), with a tolerance that the oracle derives
 * per output element: a first-order bound on the error of any float32 evaluation of the definition, whatever the
 * order of its sums. With {@code u = 2^-24} and {@code γ(n) = n·u}:
 * <ul>
 * <li>a projection {@code y = b + Σ_E x·W} (the sum of E products, then the bias): {@code γ(E + 1)·(|b| + Σ|x|·|W|)};
 * <li>a score {@code t = scale·Σ_Dh q·k + mask}: the projections' errors carried through the dot product, plus
 *     {@code γ(Dh + 2)·scale·Σ|q|·|k|} for its own sum and the scale, plus {@code u·|t|} for adding the mask
 *     (an additive mask of -1e4 costs the score 1e4·u ≈ 6e-4 whatever the kernel does);
 * <li>a softmax weight {@code p_j}: relative error {@code ρ_j + Σ_k p_k·ρ_k + γ(Lkv + 1)}, where
 *     {@code ρ_j} is the score's error plus {@code u·|t_j - max|} (the subtraction) plus {@code 4u} (the
 *     exponential: the Java kernels' is within 2 ulp of {@code Math.exp});
 * <li>a head output {@code o = Σ_Lkv p·v}: {@code Σ|δp|·|v| + Σ p·|δv| + γ(Lkv)·Σ p·|v|}, then the output
 *     projection as a projection of width E whose input carries that error.
 * </ul>
 * The bound grows with E, Dh and the number of keys, and with the magnitudes actually summed (so activations of
 * 1e4 get a bound 1e4 times larger, not a looser constant). Second-order terms are covered by asserting the error
 * within {@link #SAFETY} times the bound. Being a worst case, the bound sits about 100 times above the errors
 * measured: it catches what is structurally wrong (a head, a bias, a key too many or too few, a mask value
 * misapplied, an overflow) wherever the magnitudes go, and a KV cache kept in bfloat16 (4 times the bound), while
 * the tighter {@link MhaTestSupport#float32Bound} of the other tests pins the precision at ordinary magnitudes (a
 * cache kept in half precision passes here, not there).
 *
 * <p>Query rows that may attend no key give zeros before {@code W_O}: a row of out whose every head is fully
 * masked is exactly {@code b_O} (0 times the weights, plus the bias), checked bit for bit.
 */
class MhaFloat64OracleTest {
    private static final double U = 0x1p-24;
    /** Margin over the first-order bound (second-order terms; the bound is already a worst case). */
    private static final double SAFETY = 2;
    /** The exponential's relative error allowed for, in units of u. */
    private static final double EXP_U = 4;

    /** A layer as plain arrays (biases may be null), row-major {@code [out, in]}. */
    record Layer(int e, int h, int hkv, float[] wq, float[] bq, float[] wk, float[] bk, float[] wv, float[] bv,
                 float[] wo, float[] bo) {
        int dh() {
            return e / h;
        }

        int kvd() {
            return hkv * dh();
        }

        static Layer random(Random r, int e, int h, int hkv, float scale, boolean bias) {
            int kvd = hkv * (e / h);
            return new Layer(e, h, hkv, uniform(r, scale, e * e), bias ? uniform(r, 1, e) : null,
                    uniform(r, scale, kvd * e), bias ? uniform(r, 1, kvd) : null,
                    uniform(r, scale, kvd * e), bias ? uniform(r, 1, kvd) : null,
                    uniform(r, scale, e * e), bias ? uniform(r, 1, e) : null);
        }

        MhaWeights weights(Arena a, boolean packed) {
            if (!packed) {
                return MhaWeights.of(h, t(a, wq, e, e), t(a, bq, e), t(a, wk, kvd(), e), t(a, bk, kvd()),
                        t(a, wv, kvd(), e), t(a, bv, kvd()), t(a, wo, e, e), t(a, bo, e));
            }
            int rows = e + 2 * kvd();
            float[] in = new float[rows * e];
            System.arraycopy(wq, 0, in, 0, e * e);
            System.arraycopy(wk, 0, in, e * e, kvd() * e);
            System.arraycopy(wv, 0, in, (e + kvd()) * e, kvd() * e);
            float[] ib = null;
            if (bq != null) {
                ib = new float[rows];
                System.arraycopy(bq, 0, ib, 0, e);
                System.arraycopy(bk, 0, ib, e, kvd());
                System.arraycopy(bv, 0, ib, e + kvd(), kvd());
            }
            return MhaWeights.packed(h, t(a, in, rows, e), t(a, ib, rows), t(a, wo, e, e), t(a, bo, e));
        }
    }

    /** The additive mask of score (b, h, i, j) as float32 values: 0, a finite float, or -inf (forbidden). */
    interface MaskFn {
        float at(int b, int h, int i, int j);
    }

    /** Oracle values and error bounds of {@code out [B, L, E]}. */
    record Oracle(double[] out, double[] bound) {
    }

    /**
     * {@code out [B, L, E]} in double from the definition, queries from {@code x [B, L, E]}, keys and values from
     * {@code kv [B, S, E]}, causal bottom-right when asked (query i sees keys j ≤ i + S - L), the mask added to the
     * scaled scores (-inf forbids); a row with no key left gives zeros. Beside each value, the bound described in
     * the class comment.
     */
    static Oracle oracle(Layer w, int bsz, int l, int s, float[] x, float[] kv, MaskFn mask, boolean causal) {
        int e = w.e();
        int h = w.h();
        int dh = w.dh();
        int kvd = w.kvd();
        double scale = 1 / Math.sqrt(dh);
        double[] out = new double[bsz * l * e];
        double[] bound = new double[bsz * l * e];
        for (int b = 0; b < bsz; b++) {
            double[][][] q = linear(x, b * l * e, l, e, w.wq(), w.bq(), e);
            double[][][] k = linear(kv, b * s * e, s, e, w.wk(), w.bk(), kvd);
            double[][][] v = linear(kv, b * s * e, s, e, w.wv(), w.bv(), kvd);
            double[][] o = new double[l][e];
            double[][] dO = new double[l][e];
            for (int hh = 0; hh < h; hh++) {
                int g = hh / (h / w.hkv());
                for (int i = 0; i < l; i++) {
                    double[] t = new double[s];
                    double[] rho = new double[s];
                    boolean[] ok = new boolean[s];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < s; j++) {
                        float m = mask == null ? 0f : mask.at(b, hh, i, j);
                        if (causal && j > i + s - l || m == Float.NEGATIVE_INFINITY) {
                            continue;
                        }
                        double dot = 0;
                        double abs = 0;
                        double carried = 0;
                        for (int d = 0; d < dh; d++) {
                            int qc = hh * dh + d;
                            int kc = g * dh + d;
                            dot += q[0][i][qc] * k[0][j][kc];
                            abs += Math.abs(q[0][i][qc] * k[0][j][kc]);
                            carried += q[1][i][qc] * Math.abs(k[0][j][kc]) + Math.abs(q[0][i][qc]) * k[1][j][kc];
                        }
                        ok[j] = true;
                        t[j] = scale * dot + m;
                        rho[j] = scale * (carried + (dh + 2) * U * abs) + U * Math.abs(t[j]);
                        max = Math.max(max, t[j]);
                    }
                    if (max == Double.NEGATIVE_INFINITY) {
                        continue; // no key: zeros, exactly
                    }
                    double sum = 0;
                    double[] p = new double[s];
                    for (int j = 0; j < s; j++) {
                        if (ok[j]) {
                            p[j] = Math.exp(t[j] - max);
                            sum += p[j];
                            rho[j] += U * Math.abs(t[j] - max) + EXP_U * U;
                        }
                    }
                    double avg = 0;
                    for (int j = 0; j < s; j++) {
                        p[j] /= sum;
                        avg += p[j] * rho[j];
                    }
                    for (int d = 0; d < dh; d++) {
                        int vc = g * dh + d;
                        double val = 0;
                        double err = 0;
                        for (int j = 0; j < s; j++) {
                            if (p[j] != 0) {
                                double av = Math.abs(v[0][j][vc]);
                                val += p[j] * v[0][j][vc];
                                err += p[j] * ((rho[j] + avg + (s + 1) * U) * av + v[1][j][vc] + s * U * av);
                            }
                        }
                        o[i][hh * dh + d] = val;
                        dO[i][hh * dh + d] = err + U * Math.abs(val);
                    }
                }
            }
            for (int i = 0; i < l; i++) {
                for (int r = 0; r < e; r++) {
                    double acc = w.bo() == null ? 0 : w.bo()[r];
                    double abs = Math.abs(acc);
                    double carried = 0;
                    for (int c = 0; c < e; c++) {
                        acc += o[i][c] * w.wo()[r * e + c];
                        abs += Math.abs(o[i][c] * w.wo()[r * e + c]);
                        carried += dO[i][c] * Math.abs(w.wo()[r * e + c]);
                    }
                    out[(b * l + i) * e + r] = acc;
                    bound[(b * l + i) * e + r] = carried + (e + 1) * U * abs + U * Math.abs(acc);
                }
            }
        }
        return new Oracle(out, bound);
    }

    /**
     * {@code {y, δy}} for {@code y = rows [n, in] · w[out, in]ᵀ + bias} from float index {@code off}: values in
     * double, and the bound {@code γ(in + 1)·(|bias| + Σ|x·w|)} of a float32 evaluation (plus its final rounding).
     */
    private static double[][][] linear(float[] src, int off, int n, int in, float[] w, float[] bias, int outDim) {
        double[][][] y = new double[2][n][outDim];
        for (int i = 0; i < n; i++) {
            for (int r = 0; r < outDim; r++) {
                double acc = bias == null ? 0 : bias[r];
                double abs = Math.abs(acc);
                for (int c = 0; c < in; c++) {
                    double p = (double) src[off + i * in + c] * w[r * in + c];
                    acc += p;
                    abs += Math.abs(p);
                }
                y[0][i][r] = acc;
                y[1][i][r] = (in + 1) * U * abs + U * Math.abs(acc);
            }
        }
        return y;
    }

    /**
     * Asserts {@code |got - want| <= SAFETY · bound} for rows {@code [from, to)} of {@code [*, L, E]} values; rows
     * whose oracle is exactly {@code b_O} (every head saw no key) must be {@code b_O} bit for bit.
     */
    private static void check(Oracle want, int rowFrom, float[] got, int gotRowFrom, int rows, int e, String what) {
        int bad = 0;
        StringBuilder sb = new StringBuilder();
        double worst = 0;
        for (int i = 0; i < rows * e; i++) {
            double ref = want.out()[rowFrom * e + i];
            double tol = SAFETY * want.bound()[rowFrom * e + i];
            double d = Math.abs(got[gotRowFrom * e + i] - ref);
            worst = Math.max(worst, tol > 0 ? d / tol : d == 0 ? 0 : Double.POSITIVE_INFINITY);
            if (!(d <= tol)) {
                if (bad++ < 5) {
                    sb.append("\n  row ").append(rowFrom + i / e).append(" col ").append(i % e).append(": oracle ")
                            .append(ref).append(", got ").append(got[gotRowFrom * e + i]).append(", bound ")
                            .append(tol);
                }
            }
        }
        if (bad > 0) {
            fail(what + ": " + bad + " of " + rows * e + " elements beyond the float32 error bound (worst at "
                    + worst + " of it)" + sb);
        }
    }

    private static void check(Oracle want, float[] got, int e, String what) {
        check(want, 0, got, 0, got.length / e, e, what);
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO", "REFERENCE"})
    void selfAndCrossWithAndWithoutBiasesGroupedHeads(Backend backend) {
        int[][] shapes = { // E, H, Hkv, B, L, Lkv (-1: self)
                {32, 4, 2, 2, 7, -1}, {32, 4, 1, 2, 5, 11}, {48, 6, 6, 1, 9, -1}, {64, 8, 2, 3, 1, 37},
                {16, 16, 4, 2, 3, 4}, {128, 2, 1, 1, 40, 70}};
        for (int c = 0; c < shapes.length * 4; c++) {
            int[] sh = shapes[c % shapes.length];
            boolean bias = (c & 4) == 0;
            boolean packed = (c / shapes.length) % 2 == 1;
            boolean causal = c % 3 == 0;
            Random r = new Random(100 + c);
            int e = sh[0];
            Layer w = Layer.random(r, e, sh[1], sh[2], (float) (1 / Math.sqrt(e)), bias);
            int b = sh[3];
            int l = sh[4];
            int s = sh[5] < 0 ? l : sh[5];
            float[] x = uniform(r, 1, b * l * e);
            float[] kv = sh[5] < 0 ? x : uniform(r, 1, b * s * e);
            String what = backend + " case " + c + " E=" + e + " H=" + sh[1] + " Hkv=" + sh[2] + " B=" + b + " L=" + l
                    + " Lkv=" + s + (bias ? " bias" : "") + (packed ? " packed" : "") + (causal ? " causal" : "");
            try (Arena a = Arena.ofConfined()) {
                float[] got = forward(a, w, packed, backend, b, l, s, x, sh[5] < 0 ? null : kv,
                        causal ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT);
                check(oracle(w, b, l, s, x, kv, null, causal), got, e, what);
            }
        }
    }

    /**
     * Per-head masks {@code [B, H, L, Lkv]}, boolean and additive: -inf, the most negative float, -1e30, -1e4 and
     * moderate values; a row fully masked for one head, and a query row fully masked for every head (its output
     * is b_O exactly); a row of -FLT_MAX only (the scores vanish against it: uniform weights on every path).
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO", "REFERENCE"})
    void perHeadMasksWithExtremeValuesAndFullyMaskedRows(Backend backend) {
        int e = 32;
        int h = 4;
        int b = 2;
        int l = 6;
        float[] specials = {Float.NEGATIVE_INFINITY, -Float.MAX_VALUE, -1e30f, -1e4f, -2.5f, 0f, 0f, 3f};
        for (int c = 0; c < 4; c++) {
            boolean additive = c % 2 == 1;
            boolean cross = c >= 2;
            int s = cross ? 9 : l;
            Random r = new Random(200 + c);
            Layer w = Layer.random(r, e, h, 2, 0.3f, true);
            float[] x = uniform(r, 1, b * l * e);
            float[] kv = cross ? uniform(r, 1, b * s * e) : x;
            float[] m = new float[b * h * l * s];
            for (int i = 0; i < m.length; i++) {
                m[i] = additive ? specials[r.nextInt(specials.length)] : r.nextInt(3) == 0 ? 0f : 1f;
            }
            float none = additive ? Float.NEGATIVE_INFINITY : 0f;
            for (int j = 0; j < s; j++) {
                m[((0 * h + 1) * l + 2) * s + j] = none;             // b 0, head 1, row 2: no key
                for (int hh = 0; hh < h; hh++) {
                    m[((1 * h + hh) * l + 4) * s + j] = none;        // b 1, row 4: no key for any head
                }
                if (additive) {
                    m[((0 * h + 0) * l + 1) * s + j] = -Float.MAX_VALUE;  // uniform weights
                    // one key left, at -FLT_MAX: weight 1
                    m[((1 * h + 3) * l + 5) * s + j] = j == s - 1 ? -Float.MAX_VALUE : Float.NEGATIVE_INFINITY;
                }
            }
            String what = backend + (additive ? " additive" : " boolean") + (cross ? " cross" : " self");
            try (Arena a = Arena.ofConfined()) {
                Tensor mt = t(a, m, b, h, l, s);
                SdpaOptions o = SdpaOptions.DEFAULT.withMask(additive ? Mask.additive(mt) : Mask.allowed(mt));
                float[] got = forward(a, w, false, backend, b, l, s, x, cross ? kv : null, o);
                MaskFn fn = (bb, hh, i, j) -> {
                    float v = m[((bb * h + hh) * l + i) * s + j];
                    return additive ? v : v == 0f ? Float.NEGATIVE_INFINITY : 0f;
                };
                check(oracle(w, b, l, s, x, kv, fn, false), got, e, what);
                for (int col = 0; col < e; col++) {
                    assertEquals(w.bo()[col], got[(1 * l + 4) * e + col], 0f, what + ": a row no head may attend is b_O");
                }
            }
        }
    }

    /**
     * Activations up to 1e4 (scores far beyond where float's exp overflows, 1e6 and more): the softmax subtracts the
     * row maximum, so outputs are finite and within the bound, which scales with the magnitudes summed.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO", "REFERENCE"})
    void largeActivationsDoNotOverflow(Backend backend) {
        int e = 64;
        for (int c = 0; c < 2; c++) {
            Random r = new Random(300 + c);
            Layer w = Layer.random(r, e, 4, 2, 0.1f, true);
            int b = 2;
            int l = 9;
            int s = c == 0 ? l : 5;
            float[] x = uniform(r, 1e4f, b * l * e);
            float[] kv = c == 0 ? x : uniform(r, 1e4f, b * s * e);
            try (Arena a = Arena.ofConfined()) {
                float[] got = forward(a, w, c == 0, backend, b, l, s, x, c == 0 ? null : kv, SdpaOptions.CAUSAL);
                for (float v : got) {
                    assertTrue(Float.isFinite(v), backend + ": " + v);
                }
                check(oracle(w, b, l, s, x, kv, null, true), got, e, backend + " |x| <= 1e4 case " + c);
            }
        }
    }

    /**
     * A prompt of 40 tokens in one step, then 300 single-token steps, each row against the oracle's causal rows
     * (the bound grows with the keys cached, not with the steps taken: no drift); then truncate to 20 and decode 60
     * other tokens, and reset and decode a new sequence (chunks of 3, 1 and 2 rows), each against the oracle
     * over the sequence the cache then holds.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO", "REFERENCE"})
    void longDecodeTruncateAndResetStayWithinTheBound(Backend backend) {
        int e = 64;
        int h = 8;
        int hkv = 2;
        int prompt = 40;
        int steps = 300;
        int n = prompt + steps;
        Random r = new Random(400);
        Layer w = Layer.random(r, e, h, hkv, 0.2f, true);
        float[] seq = uniform(r, 1, n * e);
        float[] other = uniform(r, 1, 100 * e);
        Oracle full = oracle(w, 1, n, n, seq, seq, null, true);
        float[] cut = new float[80 * e];
        System.arraycopy(seq, 0, cut, 0, 20 * e);
        System.arraycopy(other, 0, cut, 20 * e, 60 * e);
        Oracle afterTruncate = oracle(w, 1, 80, 80, cut, cut, null, true);
        Oracle afterReset = oracle(w, 1, 100, 100, other, other, null, true);
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention layer = MultiHeadAttention.create(w.weights(a, true), backend);
            KvCache cache = layer.newCache(a, n);
            MhaWorkspace ws = layer.newWorkspace(a, 1, prompt, n);
            Tensor xs = t(a, seq, 1, n, e);
            Tensor out = Tensor.allocate(a, 1, prompt, e);
            layer.decode(xs.slice(1, 0, prompt), cache, out, ws);
            check(full, 0, out.toArray(), 0, prompt, e, backend + " prompt");
            Tensor one = Tensor.allocate(a, 1, 1, e);
            for (int t = prompt; t < n; t++) {
                layer.decode(xs.slice(1, t, t + 1), cache, one, ws);
                check(full, t, one.toArray(), 0, 1, e, backend + " step " + t);
            }
            cache.truncate(20);
            Tensor ys = t(a, other, 1, 100, e);
            for (int t = 0; t < 60; t++) {
                layer.decode(ys.slice(1, t, t + 1), cache, one, ws);
                check(afterTruncate, 20 + t, one.toArray(), 0, 1, e, backend + " step " + t + " after truncate(20)");
            }
            cache.reset();
            int[] chunks = {3, 1, 2, 1, 1, 2, 3};
            int t = 0;
            for (int i = 0; t < 100; i++) {
                int m = Math.min(chunks[i % chunks.length], 100 - t);
                Tensor o = Tensor.allocate(a, 1, m, e);
                layer.decode(ys.slice(1, t, t + m), cache, o, ws);
                check(afterReset, t, o.toArray(), 0, m, e, backend + " rows " + t + ".." + (t + m) + " after reset");
                t += m;
            }
        }
    }

    private static float[] forward(Arena a, Layer w, boolean packed, Backend backend, int b, int l, int s, float[] x,
                                   float[] kv, SdpaOptions o) {
        int e = w.e();
        MultiHeadAttention layer = MultiHeadAttention.create(w.weights(a, packed), backend);
        Tensor out = Tensor.allocate(a, b, l, e).fill(Float.NaN);
        layer.forward(t(a, x, b, l, e), kv == null ? null : t(a, kv, b, s, e), out, o, layer.newWorkspace(a, b, l, s));
        return out.toArray();
    }

    private static Tensor t(Arena a, float[] v, long... shape) {
        return v == null ? null : Tensor.allocate(a, shape).copyFrom(v);
    }

    private static float[] uniform(Random r, float scale, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (r.nextFloat() * 2 - 1) * scale;
        }
        return v;
    }
}
