package dev.qkv.mha;

import dev.qkv.attention.Workspace;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Scratch memory for {@link MultiHeadAttention} calls up to a batch size and sequence lengths: the projection
 * outputs (heads are views into them), the concatenated head outputs, and the attention kernel's tiles.
 * A workspace serves one call at a time (a second call that finds it in use throws
 * {@link IllegalStateException}); give each thread its own. Made by
 * {@link MultiHeadAttention#newWorkspace}.
 *
 * <p>It also remembers the head views of the last call's shape, so that repeated calls of one shape (the
 * steady state of a server or a benchmark) build no new view objects.
 */
public final class MhaWorkspace {
    private final MemorySegment floats;
    private final Workspace attention;
    /** The slabs of a projection shared with the pool: one per workspace, as a workspace serves one call. */
    private final MultiHeadAttention.Slabs slabs = new MultiHeadAttention.Slabs();

    /**
     * What the cached views were made for: a layer shape (views depend on its H, Hkv and Dh only, so layers of one
     * shape share them), a call kind, sizes.
     */
    private Object viewOwner;
    private int viewKind = -1;
    private long viewB;
    private long viewL;
    private long viewLkv;
    /** Cached views: q, k, v, and the heads' output a (k and v unused for decode). */
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private Tensor a;

    /** Set while a call uses the workspace (see {@link MultiHeadAttention}'s take). */
    private final AtomicBoolean inUse = new AtomicBoolean();

    /** All of {@link #floats} as one flat view, for overlap checks that must not allocate. */
    private final Tensor wholeFloats;

    /**
     * The scope of the arena the workspace came from, which also holds the attention's tiles (an
     * {@link Workspace} does not show its segment outside its package): for naming the workspace when a call
     * finds its arena closed.
     */
    private final MemorySegment.Scope arenaScope;

    MhaWorkspace(MemorySegment floats, Workspace attention, MemorySegment.Scope arenaScope) {
        this.floats = floats;
        this.attention = attention;
        this.arenaScope = arenaScope;
        this.wholeFloats = Tensor.wrap(floats, floats.byteSize() / Float.BYTES);
    }

    /** Whether {@code t} shares memory with the projection scratch or the attention's workspace (no allocation). */
    boolean overlaps(Tensor t) {
        return t.overlaps(wholeFloats) || attention.overlaps(t);
    }

    /** False once the arena of the projection scratch, or the arena the workspace came from, is closed. */
    boolean isAlive() {
        return floats.scope().isAlive() && arenaScope.isAlive();
    }

    boolean acquire() {
        return inUse.compareAndSet(false, true);
    }

    void release() {
        inUse.set(false);
    }

    MemorySegment floats() {
        return floats;
    }

    Workspace attention() {
        return attention;
    }

    MultiHeadAttention.Slabs slabs() {
        return slabs;
    }

    /** True when the cached views were made for this kind of call and these sizes. */
    boolean viewsFor(Object owner, int kind, long b, long l, long lkv) {
        return owner.equals(viewOwner) && viewKind == kind && viewB == b && viewL == l && viewLkv == lkv;
    }

    void cacheViews(Object owner, int kind, long b, long l, long lkv, Tensor q, Tensor k, Tensor v, Tensor a) {
        this.viewOwner = owner;
        this.viewKind = kind;
        this.viewB = b;
        this.viewL = l;
        this.viewLkv = lkv;
        this.q = q;
        this.k = k;
        this.v = v;
        this.a = a;
    }

    Tensor q() {
        return q;
    }

    Tensor k() {
        return k;
    }

    Tensor v() {
        return v;
    }

    Tensor a() {
        return a;
    }

    /** Total bytes held. */
    public long byteSize() {
        return floats.byteSize() + attention.byteSize();
    }
}
