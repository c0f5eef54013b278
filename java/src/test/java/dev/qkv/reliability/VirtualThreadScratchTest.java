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
 * calls with no collection). Measured here with the JDK's own accounting: the heap bytes all threads allocated
 * (beyond the same call on one platform thread; a virtual thread itself costs about 0.5 KB) and the count of
 * off-heap segments ({@code direct} pool).
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
            // the JIT first: interpreted vector code allocates on its own, on any thread
            for (int i = 0; i < 300; i++) {
                call.run();
            }
            long segments = direct.getCount();
            long onVirtual = 0;
            long onPlatform = 0;
            // alternating, so that whatever the JIT still changes weighs on both
            for (int i = 0; i < CALLS; i++) {
                long t0 = threads.getTotalThreadAllocatedBytes();
                Thread.ofVirtual().start(call).join();
                long t1 = threads.getTotalThreadAllocatedBytes();
                call.run();
                long t2 = threads.getTotalThreadAllocatedBytes();
                onVirtual += t1 - t0;
                onPlatform += t2 - t1;
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
}
