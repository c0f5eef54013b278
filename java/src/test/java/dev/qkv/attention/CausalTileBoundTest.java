package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.lang.foreign.Arena;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/**
 * Native causal attention whose 128-row first block sees 128 keys of Lk = 129 or 130: OpenBLAS's score tile
 * then has a padded leading dimension (128 + 16), which the per-worker workspace layout once sized for the 130
 * keys of the whole call, so worker 0's tile ran into worker 1's and two threads gave other values than one.
 * Threads 1 and 2 must give the same bits, and both match the reference.
 */
class CausalTileBoundTest {

    @ParameterizedTest(name = "L={0} D={1}")
    @CsvSource({"129, 48", "130, 48", "129, 64", "130, 64", "193, 64"})
    void twoWorkersKeepToTheirTiles(int l, int d) {
        long seed = 1000L + l * 100L + d;
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(seed);
            Tensor q = rand(a, r, 1, 4, l, d);
            Tensor k = rand(a, r, 1, 4, l, d);
            Tensor v = rand(a, r, 1, 4, l, d);
            Tensor ref = Tensor.allocate(a, 1, 4, l, d);
            ReferenceAttention.compute(q, k, v, ref, SdpaOptions.CAUSAL);
            float[][] got = new float[2][];
            for (int t = 1; t <= 2; t++) {
                Attention at = Attention.create(Backend.NATIVE, t);
                Tensor out = Tensor.allocate(a, 1, 4, l, d).fill(Float.NaN);
                at.sdpa(q, k, v, out, SdpaOptions.CAUSAL, Workspace.allocate(a, at.scoreTileBytes(l, l)));
                got[t - 1] = out.toArray();
            }
            String what = "seed=" + seed + " [1, 4, " + l + ", " + d + "] causal native";
            float[] want = ref.toArray();
            // the attention tolerance of the other tests (see Fixtures.C): it grows with Dk and Lk; it was
            // 2e-6·L + 1e-6 plus 1e-4 relative, ~1700 ulps of an output of 1, whatever the lengths
            double tol = Fixtures.tol(d, l, 1);
            Fixtures.assertClose(what, ref.shape(), got[0], want, tol, tol);
            assertArrayEquals(got[0], got[1], what + ": threads 1 vs 2");
        }
    }

    private static Tensor rand(Arena a, Random r, long... shape) {
        Tensor t = Tensor.allocate(a, shape);
        float[] x = new float[(int) t.elementCount()];
        for (int i = 0; i < x.length; i++) {
            x[i] = r.nextFloat() * 2 - 1;
        }
        return t.copyFrom(x);
    }
}
