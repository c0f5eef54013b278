package dev.qkv.kernel;

import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link PerThread}: one object per platform thread; on virtual threads, one per lease, and at most
 * {@link PerThread#LEASES} leases kept however many virtual threads come and go.
 */
class PerThreadTest {
    /** This test's instance (each takes a slot of every lease that uses it). */
    private static final AtomicInteger MADE = new AtomicInteger();
    private static final PerThread<Object> SCRATCH = PerThread.withInitial(() -> {
        MADE.incrementAndGet();
        return new Object();
    });

    private static Object inVirtual(Runnable before) throws InterruptedException {
        Object[] got = new Object[1];
        Thread t = Thread.ofVirtual().start(() -> {
            before.run();
            PerThread.Lease lease = PerThread.enter();
            try {
                got[0] = SCRATCH.get();
                assertSame(got[0], SCRATCH.get(), "one object for the whole call");
            } finally {
                PerThread.exit(lease);
            }
        });
        t.join();
        return got[0];
    }

    @Test
    void aPlatformThreadKeepsItsObject() throws Exception {
        Object mine = SCRATCH.get();
        assertSame(mine, SCRATCH.get());
        PerThread.Lease lease = PerThread.enter();
        assertNull(lease, "platform threads take no lease");
        assertSame(mine, SCRATCH.get());
        PerThread.exit(lease);
        Object[] other = new Object[1];
        Thread t = Thread.ofPlatform().start(() -> other[0] = SCRATCH.get());
        t.join();
        assertNotSame(mine, other[0], "each platform thread has its own");
    }

    @Test
    void freshVirtualThreadsOneAfterAnotherShareOneLease() throws Exception {
        Set<Object> seen = Collections.newSetFromMap(new IdentityHashMap<>());
        for (int i = 0; i < 200; i++) {
            seen.add(inVirtual(() -> { }));
        }
        // other tests of this class may hold a lease of the pool meanwhile; never more than the pool keeps
        assertTrue(seen.size() <= 2, "200 virtual threads in turn used " + seen.size() + " scratch objects");
    }

    @Test
    void concurrentVirtualThreadsGetDistinctScratchAndThePoolStaysBounded() throws Exception {
        int n = PerThread.LEASES * 3;
        for (int round = 0; round < 2; round++) {
            CountDownLatch inside = new CountDownLatch(n);
            CountDownLatch go = new CountDownLatch(1);
            Object[] got = new Object[n];
            List<Thread> threads = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                int at = i;
                threads.add(Thread.ofVirtual().start(() -> {
                    PerThread.Lease lease = PerThread.enter();
                    try {
                        got[at] = SCRATCH.get();
                        inside.countDown();
                        go.await();
                        assertSame(got[at], SCRATCH.get());
                    } catch (InterruptedException e) {
                        throw new AssertionError(e);
                    } finally {
                        PerThread.exit(lease);
                    }
                }));
            }
            inside.await();
            Set<Object> distinct = Collections.newSetFromMap(new IdentityHashMap<>());
            Collections.addAll(distinct, got);
            assertEquals(n, distinct.size(), "calls in flight at once never share scratch");
            go.countDown();
            for (Thread t : threads) {
                t.join();
            }
        }
        // the second round found at most LEASES objects pooled from the first: the rest were made again
        int before = MADE.get();
        for (int i = 0; i < 50; i++) {
            inVirtual(() -> { });
        }
        assertEquals(before, MADE.get(), "calls in turn after the burst reuse pooled scratch");
    }

    @Test
    void nestedEntriesUseTheOuterLease() throws Exception {
        Object[] got = new Object[2];
        PerThread.Lease[] inner = new PerThread.Lease[1];
        Thread t = Thread.ofVirtual().start(() -> {
            PerThread.Lease outer = PerThread.enter();
            try {
                got[0] = SCRATCH.get();
                inner[0] = PerThread.enter();
                got[1] = SCRATCH.get();
                PerThread.exit(inner[0]);
                assertTrue(PerThread.leased(), "the inner exit must not end the outer call");
            } finally {
                PerThread.exit(outer);
            }
            assertTrue(!PerThread.leased());
        });
        t.join();
        assertNull(inner[0]);
        assertNotNull(got[0]);
        assertSame(got[0], got[1]);
    }

    @Test
    void aVirtualThreadOutsideAnyCallKeepsOneObjectLikeAPlatformThread() throws Exception {
        Object[] got = new Object[3];
        Thread t = Thread.ofVirtual().start(() -> {
            got[0] = SCRATCH.get();
            got[1] = SCRATCH.get();
            PerThread.Lease lease = PerThread.enter();
            try {
                got[2] = SCRATCH.get();
            } finally {
                PerThread.exit(lease);
            }
        });
        t.join();
        assertSame(got[0], got[1], "a lower-level API called on a virtual thread must not allocate per call");
        assertNotSame(got[0], got[2], "inside a call the lease's");
    }

    @Test
    void endingALeaseTwiceIsRefusedSoItNeverReachesThePoolTwice() throws Exception {
        Throwable[] thrown = new Throwable[1];
        Thread t = Thread.ofVirtual().start(() -> {
            PerThread.Lease lease = PerThread.enter();
            PerThread.exit(lease);
            try {
                PerThread.exit(lease);
            } catch (IllegalStateException e) {
                thrown[0] = e;
            }
        });
        t.join();
        assertNotNull(thrown[0]);
    }

    @Test
    void moreInstancesThanALeaseFirstHoldsStillWork() throws Exception {
        List<PerThread<int[]>> many = new ArrayList<>();
        for (int i = 0; i < 12; i++) {
            int id = i;
            many.add(PerThread.withInitial(() -> new int[] {id}));
        }
        int[] seen = new int[12];
        Thread t = Thread.ofVirtual().start(() -> {
            PerThread.Lease lease = PerThread.enter();
            try {
                for (int i = 0; i < many.size(); i++) {
                    seen[i] = many.get(i).get()[0];
                }
            } finally {
                PerThread.exit(lease);
            }
        });
        t.join();
        for (int i = 0; i < seen.length; i++) {
            assertEquals(i, seen[i]);
        }
    }

    @Test
    void sparesKeepAtMostTheirSizeAndHandOutEachOnce() {
        PerThread.Spares<Object> spares = new PerThread.Spares<>(2);
        assertNull(spares.take());
        Object a = new Object();
        Object b = new Object();
        Object c = new Object();
        spares.give(a);
        spares.give(b);
        spares.give(c);
        Set<Object> out = Collections.newSetFromMap(new IdentityHashMap<>());
        out.add(spares.take());
        out.add(spares.take());
        assertNull(spares.take(), "a third was dropped");
        assertEquals(Set.of(a, b), out);
    }
}
