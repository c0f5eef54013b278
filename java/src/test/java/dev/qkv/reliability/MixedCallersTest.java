package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A service's request threads, platform and virtual, on instances of every backend at once, some of them making
 * a call that is refused (k with a head count that does not divide q's) between good ones: every good call gives
 * exactly what the same instance gives on one thread alone, and every bad one is an IllegalArgumentException
 * naming k with its shape.
 */
class MixedCallersTest {

    @Test
    void mixedBackendsAndRefusedCallsLeaveTheGoodCallsExact() throws Exception {
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(17);
            Tensor q = Fuzz.random(a, r, 1, 4, 192, 32);
            Tensor k = Fuzz.random(a, r, 1, 2, 192, 32);
            Tensor v = Fuzz.random(a, r, 1, 2, 192, 32);
            Tensor badK = Fuzz.random(a, r, 1, 3, 192, 32);
            Backend[] backends = Backend.values();
            Attention[] atts = new Attention[backends.length];
            float[][] want = new float[backends.length][];
            for (int b = 0; b < backends.length; b++) {
                atts[b] = Attention.create(backends[b]);
                Tensor out = Tensor.allocate(a, q.shape());
                atts[b].sdpa(q, k, v, out, SdpaOptions.CAUSAL);
                want[b] = out.toArray();
            }
            int n = 8;
            CyclicBarrier start = new CyclicBarrier(n);
            AtomicReference<Throwable> failure = new AtomicReference<>();
            List<Thread> threads = new ArrayList<>();
            for (int t = 0; t < n; t++) {
                final int me = t;
                Runnable body = () -> {
                    try {
                        start.await();
                        Tensor out = Tensor.allocate(a, q.shape());
                        for (int i = 0; i < 6; i++) {
                            int b = (me + i) % backends.length;
                            if ((me + i) % 3 == 0) {
                                IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(
                                        IllegalArgumentException.class,
                                        () -> atts[b].sdpa(q, badK, v, out, SdpaOptions.CAUSAL));
                                assertTrue(e.getMessage().contains("k [1, 3, 192, 32]"), e.getMessage());
                            }
                            atts[b].sdpa(q, k, v, out, SdpaOptions.CAUSAL);
                            assertArrayEquals(want[b], out.toArray(), backends[b] + " on thread " + me);
                        }
                    } catch (Throwable e) {
                        failure.compareAndSet(null, e);
                    }
                };
                threads.add(me % 2 == 0 ? Thread.ofPlatform().start(body) : Thread.ofVirtual().start(body));
            }
            for (Thread t : threads) {
                t.join(TimeUnit.MINUTES.toMillis(3));
                assertTrue(!t.isAlive(), "a caller did not finish in 3 minutes");
            }
            if (failure.get() != null) {
                throw new AssertionError(failure.get());
            }
            assertTrue(Arrays.stream(want).allMatch(w -> w.length == q.elementCount()));
        }
    }
}
