package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertClose;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class KvCacheTest {

    /**
     * Prefill of a prompt, then tokens one by one, then a chunk: every output row equals the same row of one
     * causal pass over the whole sequence (computed by the reference backend, so this also checks the cache
     * layout against an independent implementation).
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void prefillThenDecodeEqualsOneCausalPass(Backend backend) {
        long seed = 21;
        int e = 32;
        int h = 8;
        int hkv = 2;
        int total = 23;
        int[] steps = {7, 1, 1, 1, 1, 4, 1, 5, 2};
        assertEquals(total, Arrays.stream(steps).sum());
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, h, hkv, true, backend != Backend.JAVA);
            Tensor x = rand(a, r, 1f, 1, total, e);
            Tensor full = Tensor.allocate(a, 1, total, e);
            MultiHeadAttention.create(w, Backend.REFERENCE).forward(x, full, SdpaOptions.CAUSAL, null);

            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            KvCache cache = layer.newCache(a, 32);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 7, cache.capacity());
            Tensor out = Tensor.allocate(a, 1, total, e).fill(Float.NaN);
            int at = 0;
            for (int n : steps) {
                layer.decode(x.slice(1, at, at + n), cache, out.slice(1, at, at + n), ws);
                at += n;
                assertEquals(at, cache.length());
            }
            assertClose(full.toArray(), out.toArray(), MultiHeadAttentionTest.atol(e, total), 1e-4,
                    backend + " seed=" + seed + " E=" + e + " H=" + h + " Hkv=" + hkv + " steps=" + Arrays.toString(steps));
            assertArrayEquals(new long[] {1, hkv, total, e / h}, cache.keys().shape());
        }
    }

    @Test
    void capacityIsEnforcedAndResetStartsOver() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(5);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, 16, 4, 4, false, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, Backend.NATIVE);
            KvCache cache = layer.newCache(a, 6);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 4, 6);
            Tensor x = rand(a, r, 1f, 1, 4, 16);
            Tensor first = Tensor.allocate(a, 1, 4, 16);
            layer.decode(x, cache, first, ws);
            Tensor again = Tensor.allocate(a, 1, 4, 16);
            IllegalStateException full = assertThrows(IllegalStateException.class,
                    () -> layer.decode(x, cache, again, ws));
            assertTrue(full.getMessage().contains("needs 8 positions, capacity is 6"), full.getMessage());
            assertEquals(4, cache.length(), "a refused append must leave the cache as it was");
            cache.reset();
            assertEquals(0, cache.length());
            layer.decode(x, cache, again, ws);
            assertArrayEquals(first.toArray(), again.toArray(), "same sequence after reset, same outputs");
        }
    }

    @Test
    void aCacheOfAnotherShapeIsRejected() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(6);
            MultiHeadAttention layer = MultiHeadAttention.create(
                    MultiHeadAttentionTest.weights(a, r, 16, 4, 2, false, true), Backend.NATIVE);
            KvCache other = KvCache.allocate(a, 4, 8, 4);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 1, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(Tensor.allocate(a, 1, 1, 16), other, Tensor.allocate(a, 1, 1, 16), ws));
            assertTrue(e.getMessage().contains("KV cache [4, 8, 4]") && e.getMessage().contains("Hkv=2"),
                    e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> KvCache.allocate(a, 2, 0, 4));
        }
    }
}
