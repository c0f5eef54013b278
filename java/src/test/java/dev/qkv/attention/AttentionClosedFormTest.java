package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.Random;
import java.util.stream.Stream;

/** Cases small enough to work out by hand, on every backend; expected values come from the formula, in double. */
class AttentionClosedFormTest {

    static Stream<Named<Backend>> backends() {
        return Stream.of(Backend.values()).map(b -> Named.of(b.cliName(), b));
    }

    /** A handful of roundings of O(1) values. */
    private static final double TOL = 8 * Fixtures.U;

    /** One key: its weight is exp(0)/exp(0) = 1 exactly, so every query returns that value row, bit for bit. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void singleKeyReturnsItsValueRow(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(11);
            Tensor q = Tensor.of(arena, Fixtures.uniform(r, 2 * 3 * 5 * 4, -30, 30), 2, 3, 5, 4);
            Tensor k = Tensor.of(arena, Fixtures.uniform(r, 2 * 4, -30, 30), 2, 1, 1, 4);
            Tensor v = Fixtures.random(arena, r, 2, 1, 1, 6);
            Tensor out = Tensor.allocate(arena, 2, 3, 5, 6);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT);
            float[] expected = new float[2 * 3 * 5 * 6];
            for (int i = 0; i < expected.length; i++) {
                int x = i / (3 * 5 * 6);
                expected[i] = v.get(x, 0, 0, i % 6);
            }
            Fixtures.assertBitIdentical(backend + " Lk=1", out.shape(), out.toArray(), expected);
        }
    }

    /**
     * Dk = 1, scale 1, q = 0.5, keys 2 and -1: scores 1 and -0.5, so the weights are e/(e + e^-0.5) and
     * e^-0.5/(e + e^-0.5); with values 3 and -5 the output is their weighted sum. A second query q = -2 gives
     * scores -4 and 2.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void twoKeysWeighByExponentialOfScores(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.of(arena, new float[] {0.5f, -2f}, 1, 1, 2, 1);
            Tensor k = Tensor.of(arena, new float[] {2f, -1f}, 1, 1, 2, 1);
            Tensor v = Tensor.of(arena, new float[] {3f, -5f}, 1, 1, 2, 1);
            Tensor out = Tensor.allocate(arena, 1, 1, 2, 1);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT.withScale(1f));
            float[] expected = {twoKeys(1, -0.5, 3, -5), twoKeys(-4, 2, 3, -5)};
            Fixtures.assertClose(backend + " two keys", out.shape(), out.toArray(), expected, TOL * 5, TOL);
        }
    }

    private static float twoKeys(double a, double b, double va, double vb) {
        double wa = Math.exp(a) / (Math.exp(a) + Math.exp(b));
        double wb = Math.exp(b) / (Math.exp(a) + Math.exp(b));
        return (float) (wa * va + wb * vb);
    }

    /** The default scale is 1/√Dk: Dk = 4, q = (1,1,1,1), keys (1,0,0,0) and (0,0,0,0) score 1/2 and 0. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void defaultScaleIsOneOverRootDk(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.of(arena, new float[] {1, 1, 1, 1}, 1, 1, 1, 4);
            Tensor k = Tensor.of(arena, new float[] {1, 0, 0, 0, 0, 0, 0, 0}, 1, 1, 2, 4);
            Tensor v = Tensor.of(arena, new float[] {1, 0}, 1, 1, 2, 1);
            Tensor out = Tensor.allocate(arena, 1, 1, 1, 1);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT);
            float[] expected = {twoKeys(0.5, 0, 1, 0)};
            Fixtures.assertClose(backend + " default scale", out.shape(), out.toArray(), expected, TOL, TOL);
        }
    }

    /** q = 0 scores every key 0: uniform weights, the mean of v (of the visible prefix when causal). */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void zeroQueryGivesMeanOfValues(Backend backend) {
        int lq = 4, lk = 6, dv = 3;
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(12);
            Tensor q = Tensor.allocate(arena, 1, 1, lq, 5);
            Tensor k = Fixtures.random(arena, r, 1, 1, lk, 5);
            Tensor v = Fixtures.random(arena, r, 1, 1, lk, dv);
            for (boolean causal : new boolean[] {false, true}) {
                Tensor out = Tensor.allocate(arena, 1, 1, lq, dv);
                Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT.withCausal(causal));
                float[] expected = new float[lq * dv];
                for (int i = 0; i < lq; i++) {
                    // bottom-right causal: query i sees keys 0 .. i + (Lk - Lq)
                    int visible = causal ? i + 1 + (lk - lq) : lk;
                    for (int d = 0; d < dv; d++) {
                        double sum = 0;
                        for (int j = 0; j < visible; j++) {
                            sum += v.get(0, 0, j, d);
                        }
                        expected[i * dv + d] = (float) (sum / visible);
                    }
                }
                Fixtures.assertClose(backend + " q=0 causal=" + causal, out.shape(), out.toArray(), expected,
                        Fixtures.tol(0, lk, 1), Fixtures.tol(0, lk, 1));
            }
        }
    }

    /**
     * With q = 0 an additive mask alone sets the weights: bias log(w_j) gives weights w_j / Σ w, and -inf gives 0.
     * Weights 1, 2, 0, 5 over values 10, 20, 30, 40 give (10 + 40 + 200) / 8.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void additiveMaskOfLogWeights(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 1, 1, 2);
            Tensor k = Tensor.of(arena, new float[] {1, 2, 3, 4, 5, 6, 7, 8}, 1, 1, 4, 2);
            Tensor v = Tensor.of(arena, new float[] {10, 20, 30, 40}, 1, 1, 4, 1);
            Tensor bias = Tensor.of(arena, new float[] {0f, (float) Math.log(2), Float.NEGATIVE_INFINITY,
                    (float) Math.log(5)}, 1, 4);
            Tensor out = Tensor.allocate(arena, 1, 1, 1, 1);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.additive(bias)));
            float[] expected = {(10f + 40f + 200f) / 8f};
            Fixtures.assertClose(backend + " log-weight mask", out.shape(), out.toArray(), expected, 0, TOL * 4);
        }
    }

    /** A boolean mask with q = 0 averages exactly the allowed keys; any non-zero value allows, 0 and -0 forbid. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void booleanMaskAveragesAllowedKeys(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 1, 1, 2);
            Tensor k = Tensor.of(arena, new float[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 1, 1, 5, 2);
            Tensor v = Tensor.of(arena, new float[] {1, 2, 4, 8, 16}, 1, 1, 5, 1);
            Tensor allow = Tensor.of(arena, new float[] {1f, 0f, -0f, 0.25f, -7f}, 1, 1, 1, 5);
            Tensor out = Tensor.allocate(arena, 1, 1, 1, 1);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.allowed(allow)));
            float[] expected = {(1f + 8f + 16f) / 3f};
            Fixtures.assertClose(backend + " boolean mask", out.shape(), out.toArray(), expected, 0, TOL);
        }
    }

    /**
     * Mask's rule for a boolean mask: 0 forbids, "anything else" allows. -0.0 equals 0 and forbids; NaN, -inf and
     * the smallest subnormal are not 0 and allow. With q = [1, 0], k_j = v_j = [j, 10j] and scale 1 the scores are
     * j, so the output is the softmax-weighted mean of j over the allowed keys 0, 3, 4 and 5 (and ten times it).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void booleanMaskAllowsEveryNonZeroValueNaNIncluded(Backend backend) {
        float[] m = {Float.NaN, -0f, 0f, 2f, Float.NEGATIVE_INFINITY, Float.MIN_VALUE};
        int lk = m.length;
        try (Arena arena = Arena.ofConfined()) {
            float[] kv = new float[2 * lk];
            for (int j = 0; j < lk; j++) {
                kv[2 * j] = j;
                kv[2 * j + 1] = 10 * j;
            }
            Tensor q = Tensor.of(arena, new float[] {1, 0}, 1, 1, 1, 2);
            Tensor k = Tensor.of(arena, kv, 1, 1, lk, 2);
            Tensor out = Tensor.allocate(arena, 1, 1, 1, 2);
            Fixtures.run(backend, q, k, k, out, SdpaOptions.DEFAULT.withScale(1f)
                    .withMask(Mask.allowed(Tensor.of(arena, m, lk))));
            double sum = 0;
            double mean = 0;
            for (int j : new int[] {0, 3, 4, 5}) {
                sum += Math.exp(j);
                mean += j * Math.exp(j);
            }
            mean /= sum;
            Fixtures.assertClose(backend + " boolean mask " + java.util.Arrays.toString(m), out.shape(), out.toArray(),
                    new float[] {(float) mean, (float) (10 * mean)}, TOL, TOL);
        }
    }

    /** Dk = 0 with an explicit scale: every score is an empty sum, 0, so the output is the mean of v. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void emptyHeadDimensionGivesMeanOfValues(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 2, 3, 0);
            Tensor k = Tensor.allocate(arena, 1, 1, 4, 0);
            Tensor v = Tensor.of(arena, new float[] {1, 2, 3, 4, 5, 6, 7, 8}, 1, 1, 4, 2);
            Tensor out = Tensor.allocate(arena, 1, 2, 3, 2);
            Fixtures.run(backend, q, k, v, out, SdpaOptions.DEFAULT.withScale(1f));
            float[] expected = new float[12];
            for (int i = 0; i < 12; i += 2) {
                expected[i] = 4f;
                expected[i + 1] = 5f;
            }
            Fixtures.assertClose(backend + " Dk=0", out.shape(), out.toArray(), expected, 0, TOL);
        }
    }
}
