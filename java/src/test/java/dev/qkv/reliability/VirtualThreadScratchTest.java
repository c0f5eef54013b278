package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.OpenBlas;
import dev.qkv.kernel.PerThread;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.lang.management.BufferPoolMXBean;
import java.lang.management.ManagementFactory;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A request server that runs each call on a fresh virtual thread must not pay for new scratch on every call.
 * Before {@link PerThread}, each such call made its own: 37 KB (native) to 285 KB (Java) of heap at
 * [1, 8, 512, 64], and a new off-heap tile that only a collection freed (578 MB of native memory after 2000
 * calls with no collection). Measured here with the JDK's own accounting: the heap bytes the virtual thread
 * allocated (beyond the same call on one platform thread; a virtual thread itself costs about 0.5 KB) and the count
 * of off-heap segments ({@code direct} pool). The JDK counts no virtual thread alone, so its bytes are those of
 * all threads less those of the platform threads alive (carriers excepted: a mounted virtual thread's bytes are
 * counted on its carrier), and the call on a platform thread is this thread's own bytes. Before either is
 * measured, both kinds of call run until this thread's bytes per call hold steady (the JIT done with them): on a
 * slow host 300 platform calls were not enough, and the two sides, each ~12 MB per call, differed by 68 KB.
 */
class VirtualThreadScratchTest {
    private static final int CALLS = 200;

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void freshVirtualThreadsReuseScratch(Backend backend) throws Exception {
        Assumptions.assumeTrue(backend != Backend.NATIVE || OpenBlas.isAvailable());
        var threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        Assumptions.assumeTrue(threads.isThreadAllocatedMemorySupported() && threads.isThreadAllocatedMemoryEnabled());
        BufferPoolMXBean direct = ManagementFactory.getPlatformMXBeans(BufferPoolMXBean.class).stream()
                .filter(b -> b.getName().equals("direct")).findFirst().orElseThrow();
        Attention att = Attention.create(backend, 1);
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(Fuzz.seed("virtual-scratch-" + backend));
            Tensor q = Fuzz.random(arena, r, 1, 4, 256, 64);
            Tensor k = Fuzz.random(arena, r, 1, 4, 256, 64);
            Tensor v = Fuzz.random(arena, r, 1, 4, 256, 64);
            Tensor out = Tensor.allocate(arena, 1, 4, 256, 64);
            Runnable call = () -> att.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
            // the JIT first: interpreted vector code allocates on its own, on any thread. Both kinds of call, until
            // the platform call's bytes are the same 100 times in a row (a steady allocation, which the comparison
            // below cancels), or for at most 60 s
            long warm = System.nanoTime() + 60_000_000_000L;
            long last = -1;
            for (int same = 0; same < 100 && System.nanoTime() - warm < 0; ) {
                Thread.ofVirtual().start(call).join();
                long c0 = threads.getCurrentThreadAllocatedBytes();
                call.run();
                long bytes = threads.getCurrentThreadAllocatedBytes() - c0;
                same = bytes == last ? same + 1 : 0;
                last = bytes;
            }
            long segments = direct.getCount();
            // platform threads but carriers, whose bytes include those of the virtual threads they run
            long[] platform = Thread.getAllStackTraces().keySet().stream()
                    .filter(t -> !t.getClass().getName().equals("jdk.internal.misc.CarrierThread"))
                    .mapToLong(Thread::threadId).toArray();
            long onVirtual = 0;
            long onPlatform = 0;
            // alternating, so that whatever the JIT still changes weighs on both
            for (int i = 0; i < CALLS; i++) {
                // p1 read before t1: its array, made on this thread, then falls in both windows and cancels
                long[] p0 = threads.getThreadAllocatedBytes(platform);
                long t0 = threads.getTotalThreadAllocatedBytes();
                Thread.ofVirtual().start(call).join();
                long[] p1 = threads.getThreadAllocatedBytes(platform);
                long t1 = threads.getTotalThreadAllocatedBytes();
                onVirtual += t1 - t0 - platformBytes(p0, p1);
                long c0 = threads.getCurrentThreadAllocatedBytes();
                call.run();
                onPlatform += threads.getCurrentThreadAllocatedBytes() - c0;
            }
            long extra = (onVirtual - onPlatform) / CALLS;
            long newSegments = direct.getCount() - segments;
            System.out.println(backend + ": a fresh virtual thread per call allocated " + extra
                    + " B of heap per call more than the same call on one platform thread (" + onPlatform / CALLS
                    + " B), and " + newSegments + " off-heap segments in " + CALLS + " calls");
            assertTrue(extra < 16 << 10, backend + ": " + extra + " B of heap per call");
            assertTrue(newSegments <= PerThread.LEASES, backend + ": " + newSegments + " new off-heap segments");
        }
    }

    /** Bytes the platform threads allocated between two readings (each -1 for a thread that was not alive). */
    private static long platformBytes(long[] before, long[] after) {
        long sum = 0;
        for (int i = 0; i < before.length; i++) {
            if (before[i] >= 0 && after[i] >= 0) {
                sum += after[i] - before[i];
            }
        }
        return sum;
    }
}
