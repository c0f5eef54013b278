package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertWithinFloat32;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The layer's {@code forward} takes masks whose last dimension is 1 (one value per query row, for every key: torch's
 * broadcast, e.g. padded query rows masked out): the same bits as the mask written out in full,
 * {@code [B, H, L, Lkv]}, and the reference layer's output on that full mask. GQA heads, self- and
 * cross-attention, causal on and off, boolean and additive.
 */
class KeyBroadcastMaskForwardTest {

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aMaskWithOneValuePerQueryRowMatchesItsFullForm(Backend backend) {
        int b = 2, l = 9, e = 16, h = 4, hkv = 2;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(0x6b62L);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, h, hkv, true, false);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            Tensor x = rand(a, r, 1f, b, l, e);
            for (int lkv : new int[] {l, 13}) {
                Tensor kv = lkv == l ? null : rand(a, r, 1f, b, lkv, e);
                MhaWorkspace ws = layer.newWorkspace(a, b, l, lkv);
                long[] scores = {b, h, l, lkv};
                for (long[] form : new long[][] {{l, 1}, {b, 1, l, 1}, {1}, {b, h, l, 1}}) {
                    for (boolean bool : new boolean[] {true, false}) {
                        int n = (int) Arrays.stream(form).reduce(1, (p, q) -> p * q);
                        float[] v = new float[n];
                        for (int i = 0; i < n; i++) {
                            v[i] = bool ? (r.nextInt(3) == 0 ? 0f : 1f)
                                    : r.nextInt(3) == 0 ? Float.NEGATIVE_INFINITY : 2 * r.nextFloat() - 1;
                        }
                        float[] full = new float[b * h * l * lkv];
                        for (int f = 0; f < full.length; f++) {
                            int[] at = {f / (h * l * lkv), f / (l * lkv) % h, f / lkv % l, f % lkv};
                            int src = 0;
                            for (int d = 0; d < form.length; d++) {
                                src = src * (int) form[d] + (form[d] == 1 ? 0 : at[4 - form.length + d]);
                            }
                            full[f] = v[src];
                        }
                        Tensor m = Tensor.of(a, v, form);
                        Tensor mFull = Tensor.of(a, full, scores);
                        for (boolean causal : new boolean[] {false, true}) {
                            String ctx = backend + " Lkv=" + lkv + " mask " + Arrays.toString(form)
                                    + (bool ? " bool" : " float") + (causal ? " causal" : "");
                            SdpaOptions oFull = new SdpaOptions(causal, bool ? Mask.allowed(mFull)
                                    : Mask.additive(mFull), Float.NaN);
                            SdpaOptions o = new SdpaOptions(causal, bool ? Mask.allowed(m) : Mask.additive(m),
                                    Float.NaN);
                            Tensor ref = Tensor.allocate(a, b, l, e);
                            MhaTestSupport.referenceForward(w, x, kv, ref, oFull);
                            Tensor want = Tensor.allocate(a, b, l, e).fill(Float.NaN);
                            layer.forward(x, kv, want, oFull, ws);
                            Tensor got = Tensor.allocate(a, b, l, e).fill(Float.NaN);
                            layer.forward(x, kv, got, o, ws);
                            assertEquals(Arrays.toString(want.toArray()), Arrays.toString(got.toArray()),
                                    ctx + ": not the bits of the full mask");
                            assertWithinFloat32(ref.toArray(), got.toArray(), e, lkv, ctx);
                        }
                    }
                }
            }
        }
    }
}
