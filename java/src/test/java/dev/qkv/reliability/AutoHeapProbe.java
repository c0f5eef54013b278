package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.mha.MhaWeights;
import dev.qkv.mha.MultiHeadAttention;
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
        if (args.length > 0 && args[0].startsWith("mha")) {
            mha(args[0].equals("mha-odd"));
            return;
        }
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
            System.out.println("ok " + maxAbsDiff(out, ref));
        }
    }

    /**
     * The layer under AUTO with heap weights, input and output (or, {@code odd}, off-heap ones one byte past a
     * float boundary, which OpenBLAS cannot take either), against the reference layer on aligned copies.
     */
    private static void mha(boolean odd) {
        Random r = new Random(8);
        int e = 16;
        try (Arena arena = Arena.ofConfined()) {
            Tensor[] off = new Tensor[4];
            Tensor[] heap = new Tensor[4];
            long[][] shapes = {{3 * e, e}, {3 * e}, {e, e}, {e}};
            for (int i = 0; i < 4; i++) {
                off[i] = Fuzz.random(arena, r, shapes[i]);
                heap[i] = odd ? oddCopy(arena, off[i]) : Tensor.wrap(MemorySegment.ofArray(off[i].toArray()), shapes[i]);
            }
            Tensor x = Fuzz.random(arena, r, 2, 5, e);
            Tensor want = Tensor.allocate(arena, 2, 5, e);
            MultiHeadAttention ref = MultiHeadAttention.create(MhaWeights.packed(4, off[0], off[1], off[2], off[3]),
                    Backend.REFERENCE);
            ref.forward(x, want, SdpaOptions.CAUSAL, ref.newWorkspace(arena, 2, 5, 5));
            Tensor heapX = odd ? oddCopy(arena, x) : Tensor.wrap(MemorySegment.ofArray(x.toArray()), 2, 5, e);
            Tensor out = odd ? oddCopy(arena, Tensor.allocate(arena, 2, 5, e))
                    : Tensor.wrap(MemorySegment.ofArray(new float[2 * 5 * e]), 2, 5, e);
            MultiHeadAttention layer;
            try {
                layer = MultiHeadAttention.create(MhaWeights.packed(4, heap[0], heap[1], heap[2], heap[3]),
                        Backend.AUTO);
                layer.forward(heapX, out, SdpaOptions.CAUSAL, layer.newWorkspace(arena, 2, 5, 5));
            } catch (IllegalArgumentException ex) {
                System.out.println("rejected " + ex.getMessage());
                return;
            }
            System.out.println("ok " + maxAbsDiff(out, want) + " products=" + Attention.create(Backend.AUTO).matmulKernel().name());
        }
    }

    private static double maxAbsDiff(Tensor a, Tensor b) {
        float[] x = a.toArray();
        float[] y = b.toArray();
        double worst = 0;
        for (int i = 0; i < x.length; i++) {
            worst = Math.max(worst, Math.abs(x[i] - y[i]));
        }
        return worst;
    }

    /** {@code t}'s values off-heap at an address one byte past a float boundary. */
    private static Tensor oddCopy(Arena arena, Tensor t) {
        MemorySegment raw = arena.allocate(t.elementCount() * Float.BYTES + 8, 64);
        return Tensor.wrap(raw.asSlice(1, t.elementCount() * Float.BYTES), t.shape()).copyFrom(t.toArray());
    }
}
