package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Masks whose last dimension is 1 ({@code [1]}, {@code [Lq, 1]}, {@code [B, 1, Lq, 1]}, ...) broadcast over the
 * keys as in NumPy and {@code F.scaled_dot_product_attention}: one value per query row, applied to every key. Each
 * form must give the same bits as the same values written out in full, {@code [B, Hq, Lq, Lk]} (an independent
 * tensor built here by indexing), on the same backend, and agree with the scalar reference on that full mask; the
 * same for the form broadcast to the full shape by {@link Tensor#broadcastTo} (stride 0 along keys). Rows a
 * boolean 0 or an additive -inf forbids entirely come out as zeros. Shapes reach the few-query paths (Lq &lt; 8),
 * the blocked ones, GQA (Hkv &lt; Hq), and the online key blocks of both engines (Lk past their key block).
 */
class KeyBroadcastMaskTest {

    static final long SEED = Long.getLong("qkv.test.seed", 20261127L);

    /** Every backend × shapes {@code (B, Hq, Hkv, Lq, Lk, Dk, Dv)}. */
    static Stream<Arguments> backendsAndShapes() {
        // past both engines' key blocks: the online softmax in blocks of keys
        int online = Math.max(Attention.javaKeyBlock(16, 8), Attention.NATIVE_KEY_BLOCK) + 100;
        int[][] shapes = {{2, 4, 2, 3, 19, 16, 8}, {2, 4, 2, 70, 67, 16, 8}, {1, 2, 1, 20, online, 16, 8}};
        List<Arguments> out = new ArrayList<>();
        for (Backend b : Backend.values()) {
            for (int[] s : shapes) {
                out.add(Arguments.of(Named.of(b.cliName(), b), s));
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndShapes")
    void aMaskWithOneValuePerRowAppliesItToEveryKey(Backend backend, int[] shape) {
        int b = shape[0], hq = shape[1], lq = shape[3];
        check(backend, shape, new long[][] {{1}, {lq, 1}, {1, 1}, {hq, lq, 1}, {1, lq, 1}, {b, 1, lq, 1},
                {b, hq, lq, 1}, {b, 1, 1, 1}, {1, hq, 1, 1}});
    }

    /**
     * A 0-d mask (a rank-0 tensor, as {@code np.save} writes {@code np.float32(-1)}; a 0-d {@code attn_mask} in
     * PyTorch) broadcasts to every score as in NumPy and PyTorch: one value for all of them. The CLI took one (by a
     * view of its own) while the Java API refused it ("rank 0 is not broadcastable"), for the layer too. Found in
     * review. Same checks as above: the bits of the value written out in full, which agrees with the reference.
     */
    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndShapes")
    void aRankZeroMaskAppliesItsValueToEveryScore(Backend backend, int[] shape) {
        // twice: the value drawn first forbids every key (0, -inf), then allows them (1, a finite shift)
        check(backend, shape, new long[][] {{}, {}});
    }

    private static void check(Backend backend, int[] shape, long[][] forms) {
        int b = shape[0], hq = shape[1], hkv = shape[2], lq = shape[3], lk = shape[4], dk = shape[5], dv = shape[6];
        long[] scores = {b, hq, lq, lk};
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(SEED);
            Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
            Tensor k = Fixtures.random(arena, r, b, hkv, lk, dk);
            Tensor v = Fixtures.random(arena, r, b, hkv, lk, dv);
            for (int f = 0; f < forms.length; f++) {
                long[] form = forms[f];
                int n = Fixtures.count(form);
                for (boolean bool : new boolean[] {true, false}) {
                    float[] x = new float[n];
                    for (int i = 0; i < n; i++) {
                        // a third of the rows forbidden outright (0 or -inf), the rest allowed or shifted
                        x[i] = bool ? (r.nextInt(3) == 0 ? 0f : 1f)
                                : r.nextInt(3) == 0 ? Float.NEGATIVE_INFINITY : 4 * r.nextFloat() - 2;
                    }
                    if (form.length == 0) {
                        // one value for every score: forbidding in the first form, allowing in the next
                        x[0] = f == 0 ? (bool ? 0f : Float.NEGATIVE_INFINITY) : (bool ? 1f : -1.5f);
                    }
                    float[] full = Fixtures.expandMask(x, form, scores);
                    Tensor m = Tensor.of(arena, x, form);
                    Tensor mFull = Tensor.of(arena, full, scores);
                    Tensor mStride0 = m.broadcastTo(scores);
                    for (boolean causal : new boolean[] {false, true}) {
                        String ctx = backend + " mask " + Arrays.toString(form) + (bool ? " bool" : " float")
                                + (causal ? " causal" : "") + " Lq=" + lq + " Lk=" + lk + " seed=" + SEED;
                        SdpaOptions oFull = new SdpaOptions(causal, kind(bool, mFull), Float.NaN);
                        Tensor want = Tensor.allocate(arena, b, hq, lq, dv);
                        Fixtures.run(backend, q, k, v, want, oFull);
                        Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                        Fixtures.run(Backend.REFERENCE, q, k, v, ref, oFull);
                        double tol = Fixtures.tol(dk, lk, 1);
                        Fixtures.assertClose(ctx + ": full mask vs reference", want.shape(), want.toArray(),
                                ref.toArray(), tol, tol);
                        for (Tensor mask : new Tensor[] {m, mStride0}) {
                            Tensor out = Tensor.allocate(arena, b, hq, lq, dv);
                            Fixtures.run(backend, q, k, v, out, new SdpaOptions(causal, kind(bool, mask), Float.NaN));
                            String c = ctx + " as " + mask.shapeString() + " strides "
                                    + Arrays.toString(mask.strides());
                            assertEquals(Arrays.toString(want.toArray()), Arrays.toString(out.toArray()),
                                    c + ": not the bits of the mask written out in full");
                            assertForbiddenRowsAreZero(c, out, x, form, bool);
                        }
                    }
                }
            }
        }
    }

    private static Mask kind(boolean bool, Tensor t) {
        return bool ? Mask.allowed(t) : Mask.additive(t);
    }

    /** Every output row whose mask value forbids all keys (0, or -inf) is exactly zero: the contract, not NaN. */
    private static void assertForbiddenRowsAreZero(String ctx, Tensor out, float[] x, long[] form, boolean bool) {
        long[] s = out.shape();
        for (int b = 0; b < s[0]; b++) {
            for (int h = 0; h < s[1]; h++) {
                for (int i = 0; i < s[2]; i++) {
                    int[] at = {b, h, i, 0};
                    int src = 0;
                    for (int d = 0; d < form.length; d++) {
                        src = src * (int) form[d] + (form[d] == 1 ? 0 : at[4 - form.length + d]);
                    }
                    boolean forbidden = bool ? x[src] == 0f : x[src] == Float.NEGATIVE_INFINITY;
                    if (!forbidden) {
                        continue;
                    }
                    for (int d = 0; d < s[3]; d++) {
                        float got = out.get(b, h, i, d);
                        if (Float.floatToRawIntBits(got) != 0) {
                            fail(ctx + ": forbidden row [" + b + ", " + h + ", " + i + "] has out[.., " + d + "] = "
                                    + got);
                        }
                    }
                }
            }
        }
    }
}
