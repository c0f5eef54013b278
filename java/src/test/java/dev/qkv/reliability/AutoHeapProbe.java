package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;

/**
 * Child JVM of {@link HeapSegmentTest}: AUTO on off-heap q, k, v and a heap {@code out}, at head size 256 (where
 * AUTO runs OpenBLAS on an AVX-512 core, or whenever the Vector API is absent). Prints
 * {@code ok <max |auto - reference|>} or {@code rejected <elements of out written> <message>}.
 */
public final class AutoHeapProbe {
    private AutoHeapProbe() {
    }

    public static void main(String[] args) {
        Random r = new Random(7);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Fuzz.random(arena, r, 1, 2, 96, 256);
            Tensor k = Fuzz.random(arena, r, 1, 2, 40, 256);
            Tensor v = Fuzz.random(arena, r, 1, 2, 40, 256);
            Tensor ref = Tensor.allocate(arena, 1, 2, 96, 256);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            Tensor out = Tensor.wrap(MemorySegment.ofArray(new float[2 * 96 * 256]), 1, 2, 96, 256).fill(7f);
            try {
                Attention.create(Backend.AUTO, 2).sdpa(q, k, v, out, SdpaOptions.CAUSAL);
            } catch (IllegalArgumentException e) {
                int written = 0;
                for (float x : out.toArray()) {
                    written += x != 7f ? 1 : 0;
                }
                System.out.println("rejected " + written + " " + e.getMessage());
                return;
            }
            float[] got = out.toArray();
            float[] want = ref.toArray();
            double worst = 0;
            for (int i = 0; i < got.length; i++) {
                worst = Math.max(worst, Math.abs(got[i] - want[i]));
            }
            System.out.println("ok " + worst);
        }
    }
}
