package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * Tensors over Java arrays ({@code MemorySegment.ofArray}): the Java backends compute with them, the native one
 * refuses them with {@link IllegalArgumentException} (OpenBLAS needs off-heap memory), never a crash.
 */
class HeapSegmentTest {

    @Test
    void javaBackendsComputeOnHeapTensorsAndNativeRefusesThem() {
        Random r = new Random(Fuzz.seed("heap-segments"));
        try (Arena arena = Arena.ofConfined()) {
            // causal with Lq far above Lk: the first query blocks see no key at all
            long lq = 300;
            long lk = 10;
            Tensor q = Tensor.wrap(MemorySegment.ofArray(Fuzz.uniform(r, (int) (2 * lq * 8))), 1, 2, lq, 8);
            Tensor k = Fuzz.random(arena, r, 1, 1, lk, 8);
            Tensor v = Tensor.wrap(MemorySegment.ofArray(Fuzz.uniform(r, (int) (lk * 4))), 1, 1, lk, 4);
            Tensor ref = Tensor.allocate(arena, 1, 2, lq, 4);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            Tensor out = Tensor.wrap(MemorySegment.ofArray(new float[(int) (2 * lq * 4)]), 1, 2, lq, 4);
            Attention.create(Backend.JAVA).sdpa(q, k, v, out, SdpaOptions.CAUSAL);
            float[] got = out.toArray();
            float[] want = ref.toArray();
            for (int i = 0; i < got.length; i++) {
                assertEquals(want[i], got[i], 1e-5 + 1e-5 * Math.abs(want[i]), "element " + i);
            }
            Tensor nativeOut = Tensor.allocate(arena, 1, 2, lq, 4).fill(7f);
            assertThrows(IllegalArgumentException.class,
                    () -> Attention.create(Backend.NATIVE).sdpa(q, k, v, nativeOut, SdpaOptions.CAUSAL));
            int written = 0;
            for (float x : nativeOut.toArray()) {
                written += x != 7f ? 1 : 0;
            }
            // the heap segment is refused before any block runs, so not even the rows that see no key are zeroed
            assertEquals(0, written, "NATIVE with a heap q wrote " + written + " of " + nativeOut.elementCount()
                    + " output elements before rejecting it");
        }
    }
}
