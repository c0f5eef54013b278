package dev.qkv.attention;

import dev.qkv.blas.BlasUnavailableException;
import dev.qkv.blas.OpenBlas;
import dev.qkv.kernel.Vectorization;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Which products {@link Backend#AUTO} runs for a prefill call: OpenBLAS when its core's vectors are at least as
 * wide as the Java kernels' (measured: an AVX-512 core from head size 256 against 16-float Java vectors, an AVX2
 * or AVX-512 core at every head size against 8-float ones; bench/RESULTS.md rounds 4 and 25), the Java kernels
 * otherwise, and the Java kernels for decoding-sized queries in every case.
 */
class AutoChoiceTest {

    @Test
    void theRuleFollowsTheCoreAndTheJavaVectorWidth() {
        // AVX-512 core: native from head size 256 against AVX-512 Java kernels, everywhere against AVX2 ones
        assertEquals(256, Attention.autoNativeMinDk("SkylakeX", 16));
        assertEquals(256, Attention.autoNativeMinDk("Cooperlake", 16));
        assertEquals(1, Attention.autoNativeMinDk("SkylakeX", 8));
        // AVX2 core: everywhere against AVX2 Java kernels, never against AVX-512 ones
        assertEquals(1, Attention.autoNativeMinDk("Zen", 8));
        assertEquals(1, Attention.autoNativeMinDk("Haswell", 8));
        assertEquals(0, Attention.autoNativeMinDk("Haswell", 16));
        assertEquals(0, Attention.autoNativeMinDk("Zen", 16));
        // cores without FMA kernels (what Debian's 0.3.21 picks on some machines) never
        assertEquals(0, Attention.autoNativeMinDk("Prescott", 8));
        assertEquals(0, Attention.autoNativeMinDk("Sandybridge", 8));
    }

    /** This machine's AUTO plans what the rule says for its OpenBLAS core and Java vectors, and says so. */
    @Test
    void autoPlansWhatTheRuleSaysOnThisMachine() {
        Assumptions.assumeTrue(Vectorization.enabled(), Vectorization.reason());
        String core;
        try {
            core = OpenBlas.get().library().coreName();
        } catch (BlasUnavailableException e) {
            Assumptions.abort("no OpenBLAS: " + e.getMessage());
            return;
        }
        int minDk = Attention.autoNativeMinDk(core, Vectorization.lanes());
        Attention auto = Attention.create(Backend.AUTO, 1);
        try (Arena arena = Arena.ofConfined()) {
            for (int d : new int[] {16, 64, 128, 256}) {
                for (int lq : new int[] {1, 7, 8, 64}) {
                    Tensor q = Tensor.allocate(arena, 1, 2, lq, d);
                    Tensor k = Tensor.allocate(arena, 1, 2, 64, d);
                    Tensor v = Tensor.allocate(arena, 1, 2, 64, d);
                    Tensor out = Tensor.allocate(arena, 1, 2, lq, d);
                    String plan = auto.plan(q, k, v, out, SdpaOptions.DEFAULT);
                    boolean wantNative = minDk > 0 && d >= minDk && lq >= 8;
                    String at = "core " + core + ", " + Vectorization.lanes() + " floats per vector, D " + d
                            + ", " + lq + " queries: " + plan;
                    assertEquals(wantNative, plan.contains("kernel=native"), at);
                    if (!wantNative) {
                        assertTrue(plan.contains("kernel=java-vector"), at);
                    }
                }
            }
        }
        assertEquals(minDk == 1, auto.autoNativeAtEverySize(), "core " + core);
        String name = auto.kernelName();
        if (minDk == 0) {
            assertEquals("java-vector", name);
        } else {
            assertTrue(name.startsWith("auto(native from "), name);
            assertEquals(minDk > 1, name.contains("Dk = " + minDk), name);
        }
    }
}
