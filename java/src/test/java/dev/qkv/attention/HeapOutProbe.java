package dev.qkv.attention;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.management.ManagementFactory;
import java.util.Random;

/**
 * The child JVM of {@code AllocationTest.aHeapOutputInAFreshJvmAllocatesNothing}: only heap calls at
 * [1, 2, 16, 64] (Java kernels, causal, one thread) from the start, then prints {@code bytes=N}, the bytes the
 * calling thread allocated over 1000 calls. Warmed up alone, these calls left the JDK's shared type profile of
 * vector stores holding both {@code float[]} and {@code byte[]} heap segments, and every vector stored into the
 * heap output was boxed (12288 bytes a call); warmed up with other cases, as AllocationTest's own are, they did
 * not.
 */
public final class HeapOutProbe {
    private HeapOutProbe() {
    }

    public static void main(String[] args) {
        int n = 2 * 16 * 64;
        Random r = new Random(16);
        Tensor q = heap(r, n);
        Tensor k = heap(r, n);
        Tensor v = heap(r, n);
        Tensor out = Tensor.wrap(MemorySegment.ofArray(new float[n]), 1, 2, 16, 64);
        Attention attention = Attention.builder().backend(Backend.JAVA).threads(1).build();
        for (int i = 0; i < 20_000; i++) {
            attention.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
        }
        // then on until the JIT is quiet (at most a minute), as the benchmarks' warm-ups: with three JVMs on two
        // cores, C2 was still compiling after 20 000 calls in 1 run of 18, and the late switch to its code
        // allocated 3184 bytes once inside the measured calls (make alloc failed so once, 2026-11-27)
        long quietBy = System.nanoTime() + 60_000_000_000L;
        for (long compiled = -2; System.nanoTime() - quietBy < 0; ) {
            for (int i = 0; i < 1000; i++) {
                attention.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
            }
            long now = dev.qkv.cli.Jit.compiledMillis();
            if (now == compiled && dev.qkv.cli.Jit.idle()) {
                break;
            }
            compiled = now;
        }
        com.sun.management.ThreadMXBean mx = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        long id = Thread.currentThread().threadId();
        long before = mx.getThreadAllocatedBytes(id);
        for (int i = 0; i < 1000; i++) {
            attention.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
        }
        long after = mx.getThreadAllocatedBytes(id);
        System.out.println("bytes=" + (after - before));
    }

    private static Tensor heap(Random r, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = r.nextFloat() * 2 - 1;
        }
        return Tensor.wrap(MemorySegment.ofArray(x), 1, 2, 16, 64);
    }
}
