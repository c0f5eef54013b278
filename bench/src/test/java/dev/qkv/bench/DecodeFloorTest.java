package dev.qkv.bench;

import dev.qkv.tensor.Tensor;
import jdk.incubator.vector.FloatVector;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** {@link DecodeBench#readOnce}, the decode step's floor, reads every float of k and v once. */
class DecodeFloorTest {

    @Test
    void readsEveryFloatOnceWhateverTheCount() throws Exception {
        // all ones: the sum is the count of floats read, 2n, exactly (n < 2^24). n / 64 a multiple of four
        // vectors and n not a multiple of 64: shares rounded from n / 64 covered 64 · share < n floats
        int l = FloatVector.SPECIES_PREFERRED.length();
        ExecutorService readers = Executors.newFixedThreadPool(1);
        try (Arena arena = Arena.ofShared()) {
            for (int n : new int[] {64 * 4 * l + 63, 64 * 4 * l, 4 * l * 64 * 2 + 1, 1, 63, 1000}) {
                float[] ones = new float[n];
                Arrays.fill(ones, 1f);
                Tensor k = Tensor.allocate(arena, n).copyFrom(ones);
                Tensor v = Tensor.allocate(arena, n).copyFrom(ones);
                for (int threads = 1; threads <= 2; threads++) {
                    assertEquals(2f * n, DecodeBench.readOnce(k, v, threads, readers), "n=" + n + " threads="
                            + threads);
                }
            }
        } finally {
            readers.shutdownNow();
        }
    }
}
