package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;

/**
 * The online softmax rescales what earlier key blocks put in the output whenever a later block raises a row's
 * max, by however little. Here every key block raises it by a few thousandths: q = 1 and k_j = j·4e-6 (Dk = 1,
 * scale 1), so the scores rise steadily over 4160 keys, more than two key blocks of either engine (1024 native,
 * 2048 Java at this head size). v is +1 on the first 1024 keys and -1 after, so the output is the difference of
 * the two groups' weights. A rescale skipped for a small change of the max (found by a tolerance audit: a
 * mutant that kept the factor at 1 when the max grew by less than 0.01 passed every attention test) over-weights
 * the first keys by up to 1.7% and moves the output by 2e-3 (Java) to 3e-3 (native); the tolerance is the attention
 * tests' {@code 4·(Dk + Lk)·2^-24} per unit of {@code 1 + |ref|} (see {@link Fixtures#C}), 1.5e-3 here.
 */
class OnlineRescaleTest {

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aMaxThatGrowsALittleInEveryKeyBlockStillRescales(Backend backend) {
        int lq = 64;
        int lk = 4160;
        float[] q = new float[lq];
        java.util.Arrays.fill(q, 1f);
        float[] k = new float[lk];
        float[] v = new float[lk];
        for (int j = 0; j < lk; j++) {
            k[j] = j * 4e-6f;
            v[j] = j < 1024 ? 1f : -1f;
        }
        try (Arena arena = Arena.ofConfined()) {
            Tensor qt = Tensor.of(arena, q, 1, 1, lq, 1);
            Tensor kt = Tensor.of(arena, k, 1, 1, lk, 1);
            Tensor vt = Tensor.of(arena, v, 1, 1, lk, 1);
            SdpaOptions o = SdpaOptions.DEFAULT.withScale(1f);
            Tensor ref = Tensor.allocate(arena, 1, 1, lq, 1);
            Fixtures.run(Backend.REFERENCE, qt, kt, vt, ref, o);
            for (int threads = 1; threads <= 2; threads++) {
                Tensor out = Tensor.allocate(arena, 1, 1, lq, 1).fill(Float.NaN);
                Attention.create(backend, threads).sdpa(qt, kt, vt, out, o);
                double tol = Fixtures.tol(1, lk, 1);
                Fixtures.assertClose(backend + " threads=" + threads, out.shape(), out.toArray(), ref.toArray(), tol,
                        tol);
            }
        }
    }
}
