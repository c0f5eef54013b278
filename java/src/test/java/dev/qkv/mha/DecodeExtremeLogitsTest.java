package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;

/**
 * A decoding layer (prefill chunk, then one token at a time through {@link KvCache}) under extreme logits: the
 * cached keys' scores jump by 88 to 1e30 between segments of 1024 positions (the key blocks of the engines'
 * online softmax at this head size cross them), up and down, against {@link Backend#REFERENCE}'s causal forward
 * over the whole sequence. The weights make the scores exact in float (token x = (a, u, p, r): q = (1, r),
 * k = (a, u), v = (p), every weight 0 or 1), so the engines see the reference's scores and the tolerance is the
 * attention tests' {@code 4·(Dh + L)·2^-24} per unit of {@code 1 + |ref|}.
 */
class DecodeExtremeLogitsTest {
    static final int E = 4;
    static final int SEG = 1024;
    static final int L = 4 * SEG + 300;
    static final int STEPS = 12;
    /** The reference's outputs by case, computed once for the three backends (the slow part). */
    private static final java.util.Map<String, float[]> REFERENCE = new java.util.concurrent.ConcurrentHashMap<>();

    static Tensor weight(Arena a, int[][] ones) {
        float[] w = new float[E * E];
        for (int[] oi : ones) {
            w[oi[0] * E + oi[1]] = 1f;
        }
        return Tensor.of(a, w, E, E);
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void decodeStepsUnderJumpingScoresMatchTheReference(Backend backend) {
        for (float jump : new float[] {88f, 100f, 1e4f, 1e30f}) {
            for (float[] off : new float[][] {{0, 0, jump, jump, jump}, {jump, jump, 0, 0, 0}, {0, 0, 0, 0, jump},
                {jump, 0, 0, 0, 0}}) {
                try (Arena a = Arena.ofConfined()) {
                    Tensor wq = weight(a, new int[][] {{1, 3}});
                    Tensor bq = Tensor.of(a, new float[] {1, 0, 0, 0}, E);
                    Tensor wk = weight(a, new int[][] {{0, 0}, {1, 1}});
                    Tensor wv = weight(a, new int[][] {{0, 2}});
                    Tensor wo = weight(a, new int[][] {{0, 0}, {1, 1}, {2, 2}, {3, 3}});
                    MhaWeights w = MhaWeights.of(1, wq, bq, wk, null, wv, null, wo, null);
                    Random r = new Random(5);
                    float[] xs = new float[L * E];
                    for (int t = 0; t < L; t++) {
                        xs[t * E] = off[t / SEG];
                        xs[t * E + 1] = (r.nextInt(65) - 32) / 32f;
                        xs[t * E + 2] = 2 * r.nextFloat() - 1;
                        xs[t * E + 3] = 1 + (t % 16) / 16f;
                    }
                    Tensor x = Tensor.of(a, xs, 1, L, E);
                    SdpaOptions o = SdpaOptions.CAUSAL.withScale(1f);
                    float[] want = REFERENCE.computeIfAbsent(jump + " " + java.util.Arrays.toString(off), key -> {
                        Tensor full = Tensor.allocate(a, 1, L, E);
                        MhaTestSupport.referenceForward(w, x, null, full, o);
                        return full.toArray();
                    });

                    MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
                    KvCache cache = layer.newCache(a, L);
                    int prefill = L - STEPS;
                    MhaWorkspace ws = layer.newWorkspace(a, 1, prefill, L);
                    Tensor out = Tensor.allocate(a, 1, L, E).fill(Float.NaN);
                    layer.decode(x.slice(1, 0, prefill), cache, out.slice(1, 0, prefill), o, ws);
                    for (int t = prefill; t < L; t++) {
                        layer.decode(x.slice(1, t, t + 1), cache, out.slice(1, t, t + 1), o, ws);
                    }
                    double tol = 4 * (E + L) * 0x1p-24;
                    MhaTestSupport.assertClose(want, out.toArray(), tol, tol,
                            backend + " jump=" + jump + " offsets=" + java.util.Arrays.toString(off));
                }
            }
        }
    }
}
