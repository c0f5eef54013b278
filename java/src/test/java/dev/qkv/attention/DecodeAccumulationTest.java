package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.fail;

/**
 * The few-query Java path (fewer than 8 query rows: a decode step) sums p · v for each output element over the
 * keys. It used to keep one running float sum over every key of the row, so its rounding drifted linearly with
 * the key count (a review, against numpy float64): with weights alternating 1 and 0.3 and v all ones, whose
 * output is 1, it gave 1 ± 3.3e-4 (5 500 ulps) at 65 536 keys and 1 ± 5e-3 (88 000) at 2^20, where OpenBLAS's
 * sgemv stays within a few ulps and the blocked engine (8 or more rows) within ~160. The keys are now summed in
 * runs of {@code SUM_KEYS}, each from zero, and the runs' sums added: ~20 ulps at 65 536 keys, ~430 at 2^20. The
 * softmax's denominator had the same drift in the vector lanes of its sum, twice as far with 8-float vectors
 * (AVX2) as with 16: 329 ulps here on an AMD EPYC; its lanes now sum runs of 256 keys, added in double (3-9 ulps).
 * Over one head (a task per head) and grouped heads on two threads (a task per kv head), v rows of 16 (one
 * vector), 40 (a masked tail) and 128 (eight vectors).
 */
class DecodeAccumulationTest {

    static Stream<Arguments> cases() {
        Stream.Builder<Arguments> b = Stream.builder();
        for (Backend backend : new Backend[] {Backend.JAVA, Backend.AUTO}) {
            for (int[] heads : new int[][] {{1, 1, 1}, {4, 1, 2}}) {
                for (int dv : new int[] {16, 40, 128}) {
                    for (int lq : new int[] {1, 3}) {
                        b.add(Arguments.of(backend, heads[0], heads[1], heads[2], lq, dv));
                    }
                }
            }
        }
        return b.build();
    }

    @ParameterizedTest(name = "{0} Hq={1} Hkv={2} threads={3} Lq={4} Dv={5}")
    @MethodSource("cases")
    void aConstantVGivesThatConstantAtManyKeys(Backend backend, int hq, int hkv, int threads, int lq, int dv) {
        final int lk = 65536;
        try (Arena arena = Arena.ofShared()) {
            // q = 1, k alternating 0 and ln 0.3: weights 1 and 0.3 (not a float), so an unblocked sum drifts
            float[] qa = new float[hq * lq];
            java.util.Arrays.fill(qa, 1f);
            float[] ka = new float[hkv * lk];
            for (int j = 0; j < ka.length; j++) {
                ka[j] = j % 2 == 0 ? 0f : (float) Math.log(0.3);
            }
            float[] va = new float[hkv * lk * dv];
            java.util.Arrays.fill(va, 1f);
            Tensor q = Tensor.of(arena, qa, 1, hq, lq, 1);
            Tensor k = Tensor.of(arena, ka, 1, hkv, lk, 1);
            Tensor v = Tensor.of(arena, va, 1, hkv, lk, dv);
            Tensor out = Tensor.allocate(arena, 1, hq, lq, dv).fill(Float.NaN);
            Attention.create(backend, threads).sdpa(q, k, v, out, SdpaOptions.DEFAULT.withScale(1f));
            float[] got = out.toArray();
            double worst = 0;
            for (float x : got) {
                worst = Math.max(worst, Math.abs(x - 1.0));
            }
            // the one running sum gave ~5 500 ulps here; runs of keys summed apart give ~20 (the blocked engine, 8
            // query rows, ~70; sgemv ~1)
            if (!(worst <= 256 * Fixtures.U)) {
                fail(backend + " Hq=" + hq + " Lq=" + lq + " Dv=" + dv + ": |out - 1| up to " + worst + " ("
                        + Math.round(worst / Fixtures.U) + " ulps of 1)");
            }
        }
    }
}
