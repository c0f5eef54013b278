package dev.qkv.mha;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.BlasUnavailableException;
import dev.qkv.blas.OpenBlas;
import dev.qkv.kernel.Vectorization;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertWithinFloat32;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Where the layer's projections run under {@link Backend#AUTO}: on OpenBLAS where AUTO's attention finds it faster
 * at every size ({@link Attention#autoNativeAtEverySize}: an AVX2 or AVX-512 core against 8-float Java vectors),
 * on the Java kernels otherwise when the Vector API is present, and on what AUTO's attention runs without it. The
 * layer names the kernel, and that kernel is what runs: an AUTO forward over enough rows that its attention runs
 * the same engine gives the bits of the layer of that backend.
 */
class AutoProjectionsTest {

    @Test
    void autoProjectsOnTheKernelItsRuleNamesAndThatKernelRuns() {
        boolean blas;
        try {
            OpenBlas.get();
            blas = true;
        } catch (BlasUnavailableException e) {
            blas = false;
        }
        Attention attention = Attention.create(Backend.AUTO, 1);
        String want = Vectorization.enabled() && !attention.autoNativeAtEverySize() ? "java-vector"
                : blas ? "native" : "java-scalar";
        int b = 1, l = 16, e = 64, h = 4, hkv = 2;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(0x6175L);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, h, hkv, true, false);
            MultiHeadAttention auto = MultiHeadAttention.create(w, Backend.AUTO, 1);
            String name = auto.toString();
            assertTrue(name.contains(", projections " + want + ","), name + ": want " + want);
            Tensor x = rand(a, r, 1f, b, l, e);
            Tensor got = Tensor.allocate(a, b, l, e).fill(Float.NaN);
            auto.forward(x, got, SdpaOptions.CAUSAL, auto.newWorkspace(a, b, l, l));
            Tensor ref = Tensor.allocate(a, b, l, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            assertWithinFloat32(ref.toArray(), got.toArray(), e, l, name);
            // the layer of the backend named, when AUTO's attention runs that backend's engine for these 16 rows
            // of head size 16: native where OpenBLAS runs everything, java where AUTO's attention is java below
            // head size 256 (or without OpenBLAS: java-scalar, as AUTO itself)
            Backend same = want.equals("native") ? Backend.NATIVE : Backend.JAVA;
            String attentionPlan = attention.plan(Tensor.allocate(a, b, h, l, e / h), Tensor.allocate(a, b, hkv, l,
                    e / h), Tensor.allocate(a, b, hkv, l, e / h), Tensor.allocate(a, b, h, l, e / h),
                    SdpaOptions.CAUSAL);
            if (attentionPlan.contains("kernel=" + (same == Backend.NATIVE ? "native" : "java"))) {
                MultiHeadAttention other = MultiHeadAttention.create(w, same, 1);
                Tensor out = Tensor.allocate(a, b, l, e).fill(Float.NaN);
                other.forward(x, out, SdpaOptions.CAUSAL, other.newWorkspace(a, b, l, l));
                assertEquals(Arrays.toString(out.toArray()), Arrays.toString(got.toArray()),
                        name + " against " + other + " (attention " + attentionPlan + ")");
            }
        }
    }

    @Test
    void onlyAutoWithBothEnginesCanFindOpenBlasFasterEverywhere() {
        for (Backend backend : new Backend[] {Backend.JAVA, Backend.REFERENCE}) {
            assertEquals(false, Attention.create(backend, 1).autoNativeAtEverySize(), backend.toString());
        }
    }
}
