package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.management.ManagementFactory;
import java.util.Random;

/**
 * A service's decode loop in a JVM of its own ({@link AllocationTest} starts it): a layer with 8-float heads on
 * the Java backend decodes sequences of {@link #TOKENS} tokens one at a time, resetting its cache between them,
 * so that a cache of one to three keys is a rare case. After {@link #WARM} sequences (a service's first few; the
 * JIT has compiled the long steps' code by then, not yet code that only the first steps run) it prints, for each of
 * {@link #MEASURED} more, the bytes the first three steps allocated on this thread, and the number of sequences
 * whose three steps allocated nothing: {@code zero=N of M bytes=[...]}.
 */
public final class FreshSequenceProbe {
    static final int WARM = 5;
    static final int MEASURED = 20;
    static final int TOKENS = 200;

    private FreshSequenceProbe() {
    }

    public static void main(String[] args) {
        com.sun.management.ThreadMXBean mx = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        mx.setThreadAllocatedMemoryEnabled(true);
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(7);
            // E = 256, H = 32, Hkv = 8: Dh = 8, neither of the head sizes with code of their own (64, 128)
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, 256, 32, 8, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, Backend.JAVA, 1);
            KvCache cache = layer.newCache(a, TOKENS);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 1, TOKENS);
            Tensor token = MhaTestSupport.rand(a, r, 1f, 1, 1, 256);
            Tensor out = Tensor.allocate(a, 1, 1, 256);
            long[] bytes = new long[MEASURED];
            int zero = 0;
            for (int s = 0; s < WARM + MEASURED; s++) {
                cache.reset();
                long before = mx.getCurrentThreadAllocatedBytes();
                for (int t = 0; t < 3; t++) {
                    layer.decode(token, cache, out, ws);
                }
                long used = mx.getCurrentThreadAllocatedBytes() - before;
                for (int t = 3; t < TOKENS; t++) {
                    layer.decode(token, cache, out, ws);
                }
                if (s >= WARM) {
                    bytes[s - WARM] = used;
                    zero += used == 0 ? 1 : 0;
                }
            }
            System.out.println("zero=" + zero + " of " + MEASURED + " bytes=" + java.util.Arrays.toString(bytes));
        }
    }
}
