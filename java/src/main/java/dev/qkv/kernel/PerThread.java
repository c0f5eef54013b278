package dev.qkv.kernel;

import java.util.Arrays;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReferenceArray;
import java.util.function.Supplier;

/**
 * Scratch kept per thread, and bounded under virtual threads.
 *
 * <p>On a platform thread {@link #get} is a {@link ThreadLocal}: grown on first use, then reused, so steady-state
 * calls allocate nothing. A virtual thread usually serves one request and ends, so scratch kept per virtual
 * thread would be made again for every call: measured on [1, 1, 128, 64], 76 KB of heap and a fresh off-heap
 * tile per call, and 43-80 µs beyond starting the thread against 27-30 µs on a reused one (bench/RESULTS.md,
 * round 14). So on a virtual thread the scratch belongs to a {@link Lease}
 * that a public entry point takes for the duration of its call ({@link #enter}, {@link #exit}) from a pool
 * shared by all virtual threads: at most {@link #LEASES} leases stay pooled (each with the scratch its calls
 * grew, as large as the largest call it served), however many virtual threads come and go. A virtual thread
 * outside an entry point (a lower-level API such as {@code PackedKernels}) keeps scratch per thread, as before.
 *
 * <p>Meant for {@code static final} instances: each takes a slot of every lease that uses it, for good.
 */
public final class PerThread<T> {

    /** Leases kept for reuse; more concurrent virtual callers get fresh ones, dropped on return. */
    public static final int LEASES = Math.max(8, 4 * Runtime.getRuntime().availableProcessors());

    private static final AtomicInteger NEXT_SLOT = new AtomicInteger();
    /**
     * The lease of a virtual thread inside an entry point; null outside. The first {@code enter} of a virtual
     * thread makes its ThreadLocal map and entry (~140 B); later ones on the same thread allocate nothing.
     */
    private static final ThreadLocal<Lease> CURRENT = new ThreadLocal<>();
    private static final Spares<Lease> POOL = new Spares<>(LEASES);

    private final ThreadLocal<T> platform;
    private final Supplier<? extends T> factory;
    private final int slot;

    private PerThread(Supplier<? extends T> factory) {
        this.factory = factory;
        this.platform = ThreadLocal.withInitial(factory);
        this.slot = NEXT_SLOT.getAndIncrement();
    }

    /** Scratch made by {@code factory} on first use in a thread (or lease). */
    public static <T> PerThread<T> withInitial(Supplier<? extends T> factory) {
        return new PerThread<>(factory);
    }

    /** This thread's scratch: on a virtual thread inside an entry point, its lease's. */
    @SuppressWarnings("unchecked")
    public T get() {
        if (!Thread.currentThread().isVirtual()) {
            return platform.get();
        }
        Lease l = CURRENT.get();
        if (l == null) {
            return platform.get();
        }
        if (slot >= l.values.length) {
            l.values = Arrays.copyOf(l.values, Math.max(slot + 1, 2 * l.values.length));
        }
        Object v = l.values[slot];
        if (v == null) {
            v = factory.get();
            l.values[slot] = v;
        }
        return (T) v;
    }

    /**
     * Starts a call that uses scratch: on a virtual thread not already inside one, takes a lease and returns it
     * (give it to {@link #exit} in a {@code finally}); else returns null, which {@link #exit} ignores.
     */
    public static Lease enter() {
        if (!Thread.currentThread().isVirtual() || CURRENT.get() != null) {
            return null;
        }
        Lease l = POOL.take();
        if (l == null) {
            l = new Lease();
        }
        CURRENT.set(l);
        return l;
    }

    /**
     * Ends the call {@link #enter} started, returning its lease to the pool.
     *
     * @throws IllegalStateException when {@code lease} is not this thread's current lease (ended twice, or
     *                               another thread's): it must never reach the pool twice
     */
    public static void exit(Lease lease) {
        if (lease != null) {
            if (CURRENT.get() != lease) {
                throw new IllegalStateException("not this thread's current scratch lease");
            }
            CURRENT.set(null);
            POOL.give(lease);
        }
    }

    /** True when this thread is virtual and inside an entry point: its scratch is then its lease's. */
    public static boolean leased() {
        return Thread.currentThread().isVirtual() && CURRENT.get() != null;
    }

    /** The scratch of one virtual-thread call at a time: one object per {@link PerThread} slot. */
    public static final class Lease {
        /** By slot; the library's own instances fit the first size, later ones grow it once per lease. */
        private Object[] values = new Object[8];

        private Lease() {
        }
    }

    /**
     * A fixed number of spare objects for reuse, taken and given back with one compare-and-set each, allocating
     * nothing.
     */
    public static final class Spares<E> {
        private final AtomicReferenceArray<E> slots;

        public Spares(int size) {
            this.slots = new AtomicReferenceArray<>(size);
        }

        /** A spare, or null when none is left. */
        public E take() {
            for (int i = 0; i < slots.length(); i++) {
                E e = slots.get(i);
                if (e != null && slots.compareAndSet(i, e, null)) {
                    return e;
                }
            }
            return null;
        }

        /** Keeps {@code e} for reuse if a slot is free; else drops it. */
        public void give(E e) {
            for (int i = 0; i < slots.length(); i++) {
                if (slots.get(i) == null && slots.compareAndSet(i, null, e)) {
                    return;
                }
            }
        }
    }
}
