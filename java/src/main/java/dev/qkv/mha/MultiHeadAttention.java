package dev.qkv.mha;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.WorkerPool;
import dev.qkv.attention.Workspace;
import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.SgemmArgs;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.kernel.PerThread;
import dev.qkv.kernel.Vectorization;
import dev.qkv.tensor.Shapes;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;

/**
 * A multi-head attention layer, batch first: for {@code x [B, L, E]} and keys/values from {@code kv [B, Lkv, E]}
 * ({@code kv = x} for self-attention),
 * {@code out [B, L, E] = concat_h(sdpa(x·W_Qᵀ + b_Q, kv·W_Kᵀ + b_K, kv·W_Vᵀ + b_V)_h) · W_Oᵀ + b_O} with
 * {@code H} query heads and {@code Hkv} key/value heads (query head {@code h} uses kv head
 * {@code h / (H / Hkv)}), scale {@code 1/√Dh} unless the options say otherwise, and the causal rule and masks of
 * {@link SdpaOptions} ({@code [B, 1, 1, Lkv]} key-padding masks are the common case).
 *
 * <p>Batch first is {@code nn.MultiheadAttention(batch_first=True)}; its default, {@code batch_first=False},
 * holds {@code [L, B, E]}: pass {@code x.transpose(0, 1)} (and so {@code kv} and {@code out}), which the layer
 * reads and writes in place. A boolean mask is true where a query may attend, as
 * {@code F.scaled_dot_product_attention}'s {@code attn_mask}, the opposite of {@code nn.MultiheadAttention}'s
 * {@code attn_mask} and {@code key_padding_mask}; {@link dev.qkv.attention.Mask#keyPadding} takes the
 * {@code 1 = keep} form of Hugging Face's {@code attention_mask}.
 *
 * <p>On {@link Backend#NATIVE} (OpenBLAS) and {@link Backend#JAVA} each projection is one matrix product over all
 * {@code B·L} rows; with a packed {@code [W_Q; W_K; W_V]} (see {@link MhaWeights#packedQkv()}) self-attention
 * gets Q, K and V from a single product. The heads are strided views of the projection output (q of row
 * {@code (b, i)} and head {@code h} at column {@code h·Dh}), the attention writes each head straight into its
 * columns of one {@code [B·L, E]} buffer, and {@code W_O} is one more product over that buffer: no copy splits
 * or concatenates heads. Biases are added in Java. {@link Backend#REFERENCE} computes the same function
 * independently (scalar double sums into contiguous per-head tensors, reference attention).
 *
 * <p><b>Threads.</b> A projection of at least {@link WorkerPool#MIN_PARALLEL_FLOPS} is cut into slabs of
 * {@link #SLAB_COLS} output columns (rows of the weight), one product each, run on the caller and the attention's
 * pool ({@link WorkerPool}), at most the layer's threads at once: OpenBLAS itself stays at one thread, and the
 * Java product runs on its caller. The cut depends on the shape only, so a layer's results are the same bits on
 * one thread or two; a call whose memory a pool thread cannot touch (a confined arena), or that finds the pool
 * busy, runs the same slabs on the caller. {@link Backend#REFERENCE} runs every call on its caller alone, its
 * projections included (its attention's {@link Attention#threads()} is 1 whatever was asked), counted by the pool
 * as a core taken, as every call's thread is.
 *
 * <p>A layer is immutable and thread-safe; each call takes the caller's output and a {@link MhaWorkspace}
 * (one per thread) and allocates no off-heap memory. The workspace keeps the head views of the last shape, so
 * repeated calls of one shape create no objects here; the cache keeps its views of each length it reached, so a
 * cache reused after {@link KvCache#reset} or {@link KvCache#truncate} decodes without creating objects.
 * {@link #decode} runs incremental decoding against a {@link KvCache}.
 *
 * <p><b>Null arguments</b> follow one rule here and in {@link Attention}: an argument is required unless its
 * javadoc says what null means (only {@code kv} of {@link #forward(Tensor, Tensor, Tensor, SdpaOptions,
 * MhaWorkspace)}, the biases of {@link MhaWeights}, the prefix of {@link MhaWeights#load} and the mask of
 * {@link SdpaOptions}); a null required argument throws {@link NullPointerException} whose message starts with the
 * parameter's name ({@code "ws is null ..."}), on every backend, before anything is read, written or taken.
 */
public final class MultiHeadAttention {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /** Kinds of call whose head views a workspace caches. */
    private static final int SELF = 0;
    private static final int CROSS = 1;
    private static final int DECODE = 2;
    /**
     * Projections of at most this many rows run as matrix-vector products (one per row) rather than one matrix
     * product that packs the weight: see {@link #productNt} and bench/RESULTS.md, round 3.
     */
    static final int GEMV_ROWS = 2;
    /**
     * Output columns (weight rows) per product when a projection is cut for the pool. Fixed, never derived from
     * the threads: sgemm's bits depend on how a product is cut. Columns rather than rows of {@code x}: every
     * product packs its whole B operand, and a slab of rows repacks the whole weight (3 MB for {@code [1536, 512]};
     * the Java packing is the slow one), while a slab of columns packs only its own weight rows and repacks the
     * much smaller {@code x}. Measured (bench/RESULTS.md, round 3: parallel projections): 64-row slabs made the
     * one-thread Java forward 35-50% slower, 128-column slabs 0-10%; 128 rather than 256 or 512 so that
     * {@code W_O [512, 512]} and the packed {@code [768, 512]} of grouped-query heads still split evenly.
     */
    static final int SLAB_COLS = 128;

    private final MhaWeights w;
    /** The weights in {@link #WEIGHT_NAMES} order, built once: the per-call checks must not allocate. */
    private final Tensor[] weightList;
    private static final String[] WEIGHT_NAMES = {"W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"};
    /** The layer's names of its scores' dimensions, in a mask's refusal: x is [B, L, E], kv [B, Lkv, E]. */
    private static final Mask.DimNames SCORE_DIMS = new Mask.DimNames("B", "H", "L", "Lkv");
    private final Backend backend;
    private final MatmulKernel matmul;
    /**
     * OpenBLAS when the projections are native, else null: products then call {@link OpenBlas#sgemm} directly,
     * as the attention engine does. Through {@link MatmulKernel#matmul} the call is virtual (megamorphic once a
     * process has used several kernels) and one level deeper, and C2 stopped inlining the downcall, so its three
     * argument slices escaped (JFR: {@code NativeMemorySegmentImpl} allocated in {@code criticalSgemm}).
     */
    private final OpenBlas blas;
    /**
     * AUTO's kernel for products with heap memory (arrays wrapped as segments) when its projections run on
     * OpenBLAS, which needs addresses: the Java kernels (scalar without the Vector API), as AUTO's attention uses
     * for heap tensors. Null otherwise.
     */
    private final MatmulKernel heapKernel;
    private final Attention attention;
    /** Projections of at most {@link #GEMV_ROWS} rows run as matrix-vector products. */
    private final boolean gemvRows;
    private final int e;
    private final int h;
    private final int hkv;
    private final int dh;
    private final int kvd;
    /** Row width of the packed self-attention projection {@code [Q | K | V]}. */
    private final int qkvWidth;
    /**
     * What a workspace's cached head views are made for: they depend on the layer's shape (H, Hkv, Dh) and the
     * workspace only, so every layer of one shape shares one key. Keyed by the layer object, one workspace serving
     * a model's layers in turn (as it may) made its views again at every call of another layer than the last:
     * 448 bytes of heap per layer and token (found embedding qkv; {@code SharedWorkspaceTest}).
     */
    private final Geometry viewKey;

    /** A layer's shape as the head views see it (compared by value: layers of one shape are equal). */
    private record Geometry(int heads, int kvHeads, int headDim) {
    }

    private MultiHeadAttention(MhaWeights w, Backend backend, MatmulKernel matmul, Attention attention) {
        this.w = w;
        this.weightList = new Tensor[] {w.wq(), w.wk(), w.wv(), w.wo(), w.bq(), w.bk(), w.bv(), w.bo()};
        this.backend = backend;
        this.matmul = matmul;
        this.blas = "native".equals(matmul.name()) ? OpenBlas.get() : null;
        // the reference backend keeps its double-accumulating product; the scalar kernel has no faster matvec
        this.gemvRows = blas != null || "java-vector".equals(matmul.name());
        this.heapKernel = backend == Backend.AUTO && blas != null ? MatmulKernel.java() : null;
        this.attention = attention;
        this.e = w.embedDim();
        this.h = w.heads();
        this.hkv = w.kvHeads();
        this.dh = w.headDim();
        this.kvd = w.kvDim();
        this.qkvWidth = e + 2 * kvd;
        this.viewKey = new Geometry(h, hkv, dh);
    }

    /**
     * A layer over {@code weights} on the given backend.
     *
     * @throws IllegalArgumentException for {@link Backend#NATIVE} when a weight lies in heap memory or at an
     *                                  address that is not a multiple of 4
     * @throws IllegalStateException    when a weight's arena is closed, naming it ({@code W_Q [64, 64]})
     * @throws dev.qkv.blas.BlasUnavailableException for {@link Backend#NATIVE} when OpenBLAS cannot be loaded, and
     *         for {@link Backend#AUTO} too when a setting of the user's is refused (as {@link Attention#create})
     */
    public static MultiHeadAttention create(MhaWeights weights, Backend backend) {
        return create(weights, backend, Runtime.getRuntime().availableProcessors());
    }

    /**
     * A layer over {@code weights} on the given backend whose attention and projections run on at most
     * {@code threads} threads per call (the caller included; see {@link Attention.Builder#threads}).
     *
     * @throws IllegalArgumentException when {@code threads < 1}, or as {@link #create(MhaWeights, Backend)}
     * @throws dev.qkv.blas.BlasUnavailableException for {@link Backend#NATIVE} when OpenBLAS cannot be loaded, and
     *         for {@link Backend#AUTO} too when a setting of the user's is refused (as {@link Attention#create})
     */
    public static MultiHeadAttention create(MhaWeights weights, Backend backend, int threads) {
        Objects.requireNonNull(weights, "weights is null");
        Objects.requireNonNull(backend, "backend is null");
        Attention attention = Attention.create(backend, threads);
        MatmulKernel mm = switch (backend) {
            case NATIVE -> MatmulKernel.openBlas();
            case JAVA -> MatmulKernel.java();
            case REFERENCE -> DoubleMatmul.INSTANCE;
            // the projections: the Java Vector API kernels when present, which ran the layer's products faster
            // than OpenBLAS's SkylakeX sgemm (E = 512, bench/RESULTS.md, round 11), unless OpenBLAS is faster at
            // every size here (8-float Java vectors against an AVX2 core: 1.18-1.6x at projection shapes, round
            // 26); else what AUTO chose for the attention (OpenBLAS when it loads)
            case AUTO -> Vectorization.enabled() && !attention.autoNativeAtEverySize() ? MatmulKernel.java()
                    : attention.matmulKernel();
        };
        MultiHeadAttention layer = new MultiHeadAttention(weights, backend, mm, attention);
        for (int i = 0; i < layer.weightList.length; i++) {
            Tensor t = layer.weightList[i];
            if (t == null) {
                continue;
            }
            // a layer over freed weights could never run: refused here rather than at its first call (a confined
            // arena of another thread is not refused: the layer may be used on that thread)
            if (!t.isAlive()) {
                throw new IllegalStateException(t.describe(WEIGHT_NAMES[i]) + ": its arena is closed");
            }
            if (backend == Backend.NATIVE && !SgemmArgs.blasReady(t.segment())) {
                throw new IllegalArgumentException(t.describe(WEIGHT_NAMES[i]) + notForBlas(t.segment()));
            }
        }
        return layer;
    }

    /** The weights. */
    public MhaWeights weights() {
        return w;
    }

    /** The backend this layer runs on. */
    public Backend backend() {
        return backend;
    }

    /**
     * Floats of projection scratch for self-attention over {@code [batch, lq]}: {@code [Q | K | V]} and the heads'
     * output; -1 when they overflow a long.
     */
    private long selfFloats(long batch, long lq) {
        return times(times(batch, lq), (long) qkvWidth + e);
    }

    /**
     * Floats of projection scratch for cross-attention: Q, {@code [K | V]} of the kv rows, and the heads' output;
     * -1 when they overflow a long.
     */
    private long crossFloats(long batch, long lq, long lkv) {
        if (batch == 0 || lq == 0) {
            return 0; // forward returns before it projects anything: no query rows, nothing to attend for
        }
        return plus(times(times(batch, lq), 2L * e), times(times(batch, lkv), 2L * kvd));
    }

    /**
     * {@code a·b} for sizes {@code a, b >= 0}, or -1 when either is -1 or the product overflows a long: checked by
     * division, as {@link Attention}'s budget checks are. {@code Math.multiplyExact} threw the JDK's bare
     * ArithmeticException ("long overflow") out of forward, naming nothing (found by review).
     */
    private static long times(long a, long b) {
        return a < 0 || b < 0 || b != 0 && a > Long.MAX_VALUE / b ? -1 : a * b;
    }

    /** {@code a + b} for sizes {@code a, b >= 0}, or -1 when either is -1 or the sum overflows a long. */
    private static long plus(long a, long b) {
        return a < 0 || b < 0 || a > Long.MAX_VALUE - b ? -1 : a + b;
    }

    /**
     * Bytes of the attention's score tiles; -1 when a decode group's rows overflow a long, and
     * {@link IllegalArgumentException} from {@link Attention#scoreTileBytes} when the bytes do.
     */
    private long attentionBytes(long batch, long lq, long lk) {
        if (backend == Backend.REFERENCE || batch == 0 || lq == 0) {
            // no attention call runs (an empty batch or no query rows), so no score tile: an empty batch of a
            // million positions asked for 512 MB
            return 0;
        }
        // our head views are always usable in place (unit inner stride), so the score tiles are all it needs. A
        // decode step's query heads share their kv head's reads when a worker holds the whole group's score rows
        // (Attention's grouped few-query tasks), hence the rows of a group.
        long rows = times(lq, (long) h / Math.max(1, hkv));
        return rows < 0 ? -1 : attention.scoreTileBytes(rows, lk);
    }

    /**
     * Bytes of a workspace for calls with up to {@code batch} sequences of {@code lq} query rows and {@code lkv}
     * key rows (for self-attention {@code lkv} may be anything up to {@code lq}; for {@link #decode} use
     * {@code batch = 1}, the chunk length and the cache capacity).
     *
     * @throws IllegalArgumentException when a size is negative, or the bytes overflow a long
     */
    public long workspaceBytes(long batch, long lq, long lkv) {
        if (batch < 0 || lq < 0 || lkv < 0) {
            throw new IllegalArgumentException("workspace for batch=" + batch + ", lq=" + lq + ", lkv=" + lkv
                    + ": sizes must be >= 0");
        }
        long self = selfFloats(batch, lq);
        long cross = crossFloats(batch, lq, lkv);
        long bytes = self < 0 || cross < 0 ? -1 : times(Math.max(self, cross), Float.BYTES);
        if (bytes >= 0) {
            long tiles;
            try {
                tiles = attentionBytes(batch, lq, Math.max(lq, lkv));
            } catch (IllegalArgumentException e) {
                tiles = -1; // the score tiles' bytes overflow a long
            }
            bytes = plus(bytes, tiles);
        }
        if (bytes < 0) {
            throw new IllegalArgumentException("workspace for batch=" + batch + ", lq=" + lq + ", lkv=" + lkv
                    + ": more bytes than a long holds");
        }
        return bytes;
    }

    /**
     * A workspace of {@link #workspaceBytes} from the caller's arena, in two allocations: the projection scratch
     * and the attention's score tiles.
     *
     * @throws IllegalArgumentException when a size is negative (as {@link #workspaceBytes}), or when the arena
     *                                  (one of the caller's own) hands out memory that is not
     *                                  writable off-heap memory of the size asked, at an address that is a
     *                                  multiple of 4, or hands out the two parts over the same memory, or over
     *                                  the layer's weights
     */
    public MhaWorkspace newWorkspace(Arena arena, long batch, long lq, long lkv) {
        Objects.requireNonNull(arena, "arena is null");
        workspaceBytes(batch, lq, lkv);
        long floats = Math.max(selfFloats(batch, lq), crossFloats(batch, lq, lkv));
        long size = Math.max(floats * Float.BYTES, 64);
        MemorySegment seg = arena.allocate(size, Tensor.ALIGNMENT);
        if (!seg.isNative() || seg.isReadOnly() || seg.byteSize() < size || seg.address() % Float.BYTES != 0) {
            // as Workspace.allocate refuses its part: else the first call failed inside a product, naming it
            throw new IllegalArgumentException("workspace of " + size + " projection bytes: the arena gave " + seg
                    + "; a workspace needs writable off-heap memory of that size, at an address that is a"
                    + " multiple of 4");
        }
        Workspace tiles = Workspace.allocate(arena, attentionBytes(batch, lq, Math.max(lq, lkv)));
        MhaWorkspace ws = new MhaWorkspace(seg, tiles, arena.scope());
        if (tiles.overlaps(Tensor.wrap(seg, seg.byteSize() / Float.BYTES))) {
            // an arena of one's own that handed out memory twice: the projections would overwrite the score tiles
            // and the tiles the heads. Refused before only by the first call, naming the layer's own head view
            // ("q [..] shares memory with the workspace"), and on the reference backend not at all
            throw new IllegalArgumentException("workspace: the arena gave its projection scratch (" + seg.byteSize()
                    + " bytes) and its attention tiles (" + tiles.byteSize() + " bytes) over the same memory; the"
                    + " parts of a workspace must not share memory");
        }
        requireClearOfWeights(ws, null);
        return ws;
    }

    /**
     * An empty KV cache for one sequence of up to {@code capacity} positions, shaped for this layer.
     *
     * @throws IllegalArgumentException when {@code capacity < 1}, or the arena's memory is refused, as by
     *                                  {@link KvCache#allocate}; or when the arena gives it over the layer's weights
     */
    public KvCache newCache(Arena arena, int capacity) {
        KvCache cache = KvCache.allocate(arena, hkv, capacity, dh);
        requireClearOfWeights(null, cache);
        return cache;
    }

    /**
     * The layer reads its weights in place, and calls write their workspace and cache: memory handed out twice by
     * an arena of the caller's own would change the layer for every later call, on every thread. Checked when
     * the workspace or cache is made (the weights cannot move), and again by each call, for a cache from
     * {@link KvCache#allocate} or a workspace of another layer (workspaces serve several), which the layer first
     * sees there. {@code ws} or {@code cache} may be null (not checked). Weights whose arena is closed are skipped:
     * their memory is free and may be handed out again at the same addresses, which is no overlap (every call on
     * the layer is refused anyway). No allocation.
     */
    private void requireClearOfWeights(MhaWorkspace ws, KvCache cache) {
        final Tensor[] ts = weightList;
        for (int i = 0; i < ts.length; i++) {
            Tensor t = ts[i];
            if (t == null || !t.segment().scope().isAlive()) {
                continue;
            }
            if (ws != null && ws.overlaps(t)) {
                throw new IllegalArgumentException("the workspace shares memory with the layer's weight "
                        + t.describe(WEIGHT_NAMES[i]) + ": calls would overwrite it");
            }
            if (cache != null && cache.overlaps(t)) {
                throw new IllegalArgumentException(cache.describe() + " shares memory with the layer's weight "
                        + t.describe(WEIGHT_NAMES[i]) + ": calls would overwrite it");
            }
        }
    }

    /** Self-attention: {@link #forward(Tensor, Tensor, Tensor, SdpaOptions, MhaWorkspace)} with {@code kv = x}. */
    public void forward(Tensor x, Tensor out, SdpaOptions options, MhaWorkspace ws) {
        forward(x, null, out, options, ws);
    }

    /**
     * {@code out [B, L, E]} from queries {@code x [B, L, E]} and keys/values {@code kv [B, Lkv, E]}
     * ({@code null} for self-attention). Inputs and output need unit stride along {@code E} and rows that do not
     * overlap (at least {@code E} apart: a broadcast token is refused; an empty tensor may have any strides).
     * The options' mask broadcasts to {@code [B, H, L, Lkv]}; causal is aligned bottom-right. {@code ws} must come from
     * {@link #newWorkspace} with sizes at least these, on every backend ({@link Backend#REFERENCE} computes in
     * scratch of its own, but takes and checks the workspace as the others do, so that a call one backend
     * accepts the others accept too).
     *
     * @throws NullPointerException when {@code x}, {@code out}, {@code options} or {@code ws} is null (the
     *                              message names it), before anything is written
     * @throws IllegalStateException when the workspace is in use by another call; or, naming the caller's object
     *                               ({@code x}, {@code kv}, {@code out}, {@code mask}, a weight such as
     *                               {@code W_O [E, E]}, or {@code workspace}) with its shape, when its arena is
     *                               closed, before the call or by another thread during it
     */
    public void forward(Tensor x, Tensor kv, Tensor out, SdpaOptions options, MhaWorkspace ws) {
        // the API's rule for null (see the class comment); kv alone may be null
        Objects.requireNonNull(x, "x is null");
        Objects.requireNonNull(out, "out is null");
        Objects.requireNonNull(options, "options is null (use SdpaOptions.DEFAULT)");
        Objects.requireNonNull(ws, "ws is null (make one with newWorkspace)");
        take(ws);
        try {
            // entered inside the try: an error in enter (a stack overflow) must not leave the workspace taken, which
            // would refuse every later call as "in use"
            PerThread.Lease lease = PerThread.enter();
            try {
                forwardIn(x, kv, out, options, ws);
            } catch (IllegalStateException e) {
                throw closedDuringCall(e, x, kv, out, options, ws, null);
            } finally {
                PerThread.exit(lease);
            }
        } finally {
            ws.release();
        }
    }

    private void forwardIn(Tensor x, Tensor kv, Tensor out, SdpaOptions options, MhaWorkspace ws) {
        check3("x", x, -1, -1);
        long b = x.size(0);
        long l = x.size(1);
        if (kv != null) {
            check3("kv", kv, b, -1);
        }
        check3("out", out, b, l);
        long lkv = kv == null ? l : kv.size(1);
        if (options.mask() != null) {
            // before the projections: the attention refuses it too, but only once they have run (work thrown away)
            // in the layer's terms: sdpa's [B, Hq, Lq, Lk] named dimensions this API never shows its caller
            options.mask().requireBroadcastsTo(b, h, l, lkv, SCORE_DIMS);
            options.mask().values().requireUsable("mask");
        }
        checkWeights(out);
        long need = kv == null ? selfFloats(b, l) : crossFloats(b, l, lkv);
        if (times(need, Float.BYTES) < 0) {
            throw scratchOverflow(x, kv);
        }
        MemorySegment seg = checkWorkspace(ws, need, x);
        requireClearOfWeights(ws, null);
        workspaceOverlap(ws, x, "x");
        if (kv != null) {
            workspaceOverlap(ws, kv, "kv");
        }
        workspaceOverlap(ws, out, "out");
        if (options.mask() != null) {
            // read by the attention after the projections have written the scratch
            workspaceOverlap(ws, options.mask().values(), "mask");
        }
        if (backend == Backend.REFERENCE) {
            // on the caller alone, but through the pool as one task with no helper: the thread computes all
            // through the call and counts as a core taken, so that no parallel call made meanwhile gets a pool
            // thread beside it (a decode step's products and attention go through the pool already). Its reference
            // attention goes through the pool again, inside this call on the same thread: not counted again
            Tensor src = kv == null ? x : kv;
            WorkerPool.shared().run((task, worker) -> MhaReference.forward(w, x, src, out, options), 1, 0);
            return;
        }
        if (b == 0 || l == 0) {
            checkEmptyCall(seg, b, l, lkv, options);
            return;
        }
        int bi = toInt("B*L", b * l) / (int) l;
        int li = (int) l;
        long aOff;
        if (kv == null) {
            // P [B·L, E + 2·Hkv·Dh] = x · [W_Q; W_K; W_V]ᵀ, then heads as views with row stride W
            aOff = b * l * qkvWidth;
            if (!ws.viewsFor(viewKey, SELF, b, l, l)) {
                long wd = qkvWidth;
                long[] st = {l * wd, dh, wd, 1};
                ws.cacheViews(viewKey, SELF, b, l, l,
                        Tensor.view(seg, 0, new long[] {b, h, l, dh}, st),
                        Tensor.view(seg, e, new long[] {b, hkv, l, dh}, st),
                        Tensor.view(seg, e + kvd, new long[] {b, hkv, l, dh}, st),
                        headsOutput(seg, aOff, b, l));
            }
            checkAttentionWorkspace(ws, x, null, b, l, l, options);
            projectQkv(ws, x, seg, 0, qkvWidth);
        } else {
            int lk = toInt("Lkv", lkv);
            // Q [B·L, E] = x·W_Qᵀ; P_kv [B·Lkv, 2·Hkv·Dh] = kv · [W_K; W_V]ᵀ
            long kvOff = b * l * e;
            aOff = kvOff + b * lkv * 2 * kvd;
            if (!ws.viewsFor(viewKey, CROSS, b, l, lkv)) {
                long[] st = {lkv * 2 * kvd, dh, 2L * kvd, 1};
                ws.cacheViews(viewKey, CROSS, b, l, lkv,
                        Tensor.view(seg, 0, new long[] {b, h, l, dh}, new long[] {l * e, dh, e, 1}),
                        Tensor.view(seg, kvOff, new long[] {b, hkv, lkv, dh}, st),
                        Tensor.view(seg, kvOff + kvd, new long[] {b, hkv, lkv, dh}, st),
                        headsOutput(seg, aOff, b, l));
            }
            checkAttentionWorkspace(ws, x, kv, b, l, lkv, options);
            project(ws, x, w.wq(), w.bq(), seg, 0, e, 0);
            if (w.packedKv() != null) {
                project(ws, kv, w.packedKv(), null, seg, kvOff, 2 * kvd, 0);
                addBias(w.bk(), seg, kvOff, bi, (long) lk * 2 * kvd, lk, 2L * kvd);
                addBias(w.bv(), seg, kvOff + kvd, bi, (long) lk * 2 * kvd, lk, 2L * kvd);
            } else {
                project(ws, kv, w.wk(), w.bk(), seg, kvOff, 2 * kvd, 0);
                project(ws, kv, w.wv(), w.bv(), seg, kvOff, 2 * kvd, kvd);
            }
        }
        attention.sdpa(ws.q(), ws.k(), ws.v(), ws.a(), options, ws.attention());
        outputProjection(ws, seg, aOff, bi, li, out);
    }

    /**
     * Incremental decoding of one sequence: appends the keys and values of {@code x [1, n, E]} (one token or a
     * chunk) to {@code cache}, then attends the {@code n} new query rows to everything cached, causal
     * bottom-right, writing {@code out [1, n, E]}. Equal to the last {@code n} rows of a causal
     * {@link #forward} over the whole sequence so far. {@code ws} must come from {@link #newWorkspace}
     * {@code (arena, 1, n, cache.capacity())} or larger. The scores are scaled by {@code 1/√Dh}; see
     * {@link #decode(Tensor, KvCache, Tensor, SdpaOptions, MhaWorkspace)} for another scale.
     *
     * @throws IllegalStateException when the cache has no room for {@code n} more positions (nothing is appended), or
     *                               when another decode step is using the cache; or, naming the caller's object
     *                               ({@code x}, {@code out}, a weight, {@code workspace}, or the cache as
     *                               {@code KV cache [Hkv, capacity, Dh] holding n}), when its arena is closed,
     *                               before the step or by another thread during it
     * @throws NullPointerException  when an argument is null (the message names it), before the cache is taken
     */
    public void decode(Tensor x, KvCache cache, Tensor out, MhaWorkspace ws) {
        decode(x, cache, out, SdpaOptions.CAUSAL, ws);
    }

    /**
     * {@link #decode(Tensor, KvCache, Tensor, MhaWorkspace)} with the scale of {@code options}: a layer whose
     * {@link #forward} runs with {@code SdpaOptions.CAUSAL.withScale(s)} decodes with the same options, and each
     * step's rows then equal the last rows of that forward over the whole sequence so far. A step is causal,
     * aligned bottom-right, and takes no mask, so {@code options} must be causal and carry no mask.
     *
     * @throws IllegalArgumentException when {@code options} are not causal or carry a mask (nothing is appended)
     * @throws IllegalStateException    as {@link #decode(Tensor, KvCache, Tensor, MhaWorkspace)}
     * @throws NullPointerException     when an argument is null (the message names it), before the cache is taken
     */
    public void decode(Tensor x, KvCache cache, Tensor out, SdpaOptions options, MhaWorkspace ws) {
        // the API's rule for null (see the class comment), on every backend
        Objects.requireNonNull(x, "x is null");
        Objects.requireNonNull(cache, "cache is null");
        Objects.requireNonNull(out, "out is null");
        Objects.requireNonNull(options, "options is null");
        Objects.requireNonNull(ws, "ws is null (make one with newWorkspace)");
        if (!options.causal() || options.mask() != null) {
            throw new IllegalArgumentException("options: a decode step is causal, aligned bottom-right, and takes no"
                    + " mask; only their scale may differ from SdpaOptions.CAUSAL (got "
                    + (options.causal() ? "a mask" : options.mask() == null ? "not causal" : "not causal, a mask")
                    + ")");
        }
        // a step reads the cache's length, appends after it and advances it: two steps at once on one cache
        // would append at the same positions, and count both
        if (!cache.acquire()) {
            throw new IllegalStateException(cache.describe() + ": in use by another call (a KV cache serves one"
                    + " decode step at a time)");
        }
        try {
            take(ws);
            try {
                PerThread.Lease lease = PerThread.enter();
                try {
                    decodeIn(x, cache, out, options, ws);
                } catch (IllegalStateException e) {
                    throw closedDuringCall(e, x, null, out, null, ws, cache);
                } finally {
                    PerThread.exit(lease);
                }
            } finally {
                ws.release();
            }
        } finally {
            cache.release();
        }
    }

    /**
     * The exception for {@code e}, thrown inside a call: when the arena of one of the caller's objects (x, kv, out,
     * the mask, a weight, the workspace, the cache) is closed, one that names it ({@code out [1, 96, 64]},
     * {@code W_O [64, 64]}, {@code workspace}, {@code KV cache [2, 4096, 16] holding 7}), with {@code e} as its
     * cause, as the checks before the call do; else {@code e}. A close by another thread during the call surfaced
     * inside a product or the attention, as the JDK's bare "Already closed", an internal operand
     * ({@code sgemm: c [96, 64]}) or the layer's own head views ({@code q [1, 4, 1, 16]} when it was the
     * workspace), none of which the caller made (found by MhaConcurrentCloseTest). An exception that already
     * starts with that name (a check before the work, or the attention naming the workspace) is kept. Error path
     * only: a call that succeeds never comes here.
     */
    private IllegalStateException closedDuringCall(IllegalStateException e, Tensor x, Tensor kv, Tensor out,
                                                   SdpaOptions options, MhaWorkspace ws, KvCache cache) {
        String what = null;
        if (!x.isAlive()) {
            what = x.describe("x");
        } else if (kv != null && !kv.isAlive()) {
            what = kv.describe("kv");
        } else if (!out.isAlive()) {
            what = out.describe("out");
        } else if (options != null && options.mask() != null && !options.mask().values().isAlive()) {
            what = options.mask().values().describe("mask");
        } else {
            for (int i = 0; i < weightList.length && what == null; i++) {
                if (weightList[i] != null && !weightList[i].isAlive()) {
                    what = weightList[i].describe(WEIGHT_NAMES[i]);
                }
            }
            if (what == null && !ws.isAlive()) {
                what = "workspace";
            } else if (what == null && cache != null && !cache.isAlive()) {
                what = cache.describe();
            }
        }
        String message = e.getMessage();
        if (what == null || message != null && message.startsWith(what + ":")) {
            return e;
        }
        return new IllegalStateException(what + ": its arena is closed (by another thread, during the call)", e);
    }

    /**
     * A workspace serves one call at a time: a second call that finds it taken is refused, rather than share its
     * projections, cached views and score tiles (both results would be wrong).
     */
    private static void take(MhaWorkspace ws) {
        if (!ws.acquire()) {
            throw new IllegalStateException("workspace: in use by another call (a workspace serves one call at a"
                    + " time; give each thread its own)");
        }
    }

    private void decodeIn(Tensor x, KvCache cache, Tensor out, SdpaOptions options, MhaWorkspace ws) {
        check3("x", x, 1, -1);
        long n = x.size(1);
        check3("out", out, 1, n);
        if (cache.kvHeads() != hkv || cache.headDim() != dh) {
            throw new IllegalArgumentException(cache.describe() + " does not fit this layer: Hkv=" + hkv
                    + ", Dh=" + dh);
        }
        if (!Tensor.usable(cache.k())) {
            Tensor.requireUsable(cache.k(), cache.describe());
        }
        checkWeights(out);
        if (cache.overlaps(out)) {
            // the step writes out after reading the cache: every later step would attend to the overwrite
            throw new IllegalArgumentException(out.describe("out") + " shares memory with " + cache.describe());
        }
        int before = cache.length();
        if (n > cache.capacity() - before) {
            throw new IllegalStateException(cache.describe() + ": appending " + x.describe("x") + " needs "
                    + (before + n) + " positions, capacity is " + cache.capacity());
        }
        long need = selfFloats(1, n);
        if (times(need, Float.BYTES) < 0) {
            throw scratchOverflow(x, null);
        }
        MemorySegment seg = checkWorkspace(ws, need, x);
        requireClearOfWeights(ws, cache);
        workspaceOverlap(ws, x, "x");
        workspaceOverlap(ws, out, "out");
        if (ws.overlaps(cache.allKeys()) || ws.overlaps(cache.allValues())) {
            // the step stores projected rows from the workspace into the cache
            throw new IllegalArgumentException(cache.describe() + " shares memory with the workspace");
        }
        if (n == 0) {
            return;
        }
        int ni = (int) n;
        int len = before + ni;
        long aOff = n * qkvWidth;
        if (!ws.viewsFor(viewKey, DECODE, 1, n, 0)) {
            ws.cacheViews(viewKey, DECODE, 1, n, 0,
                    Tensor.view(seg, 0, new long[] {1, h, n, dh}, new long[] {n * qkvWidth, dh, qkvWidth, 1}),
                    null, null, headsOutput(seg, aOff, 1, n));
        }
        checkAttentionWorkspace(ws, cache, len);
        // P [n, E + 2·Hkv·Dh] = x · [W_Q; W_K; W_V]ᵀ
        projectQkv(ws, x, seg, 0, qkvWidth);
        // append K and V rows of every kv head at positions before .. before + n - 1 (subnormals as zeros)
        for (int g = 0; g < hkv; g++) {
            for (int t = 0; t < ni; t++) {
                long src = (long) t * qkvWidth + e + (long) g * dh;
                cache.store(true, g, before + t, seg, src, dh);
                cache.store(false, g, before + t, seg, src + kvd, dh);
            }
        }
        attention.sdpa(ws.q(), cache.keysAt(len), cache.valuesAt(len), ws.a(), options, ws.attention());
        outputProjection(ws, seg, aOff, 1, ni, out);
        cache.advance(ni);
    }

    /**
     * A call with no query rows computes nothing, but its options must still fit the shapes, as they must on
     * {@link Backend#REFERENCE}, which runs them through the attention's checks. Empty q and out, and k and v
     * that repeat one float, let the attention check the mask without reading the workspace.
     */
    private void checkEmptyCall(MemorySegment seg, long b, long l, long lkv, SdpaOptions options) {
        long[] none = {0, 0, 0, 0};
        Tensor q = Tensor.view(seg, 0, new long[] {b, h, l, dh}, none);
        Tensor kv = Tensor.view(seg, 0, new long[] {b, hkv, lkv, dh}, none);
        // distinct strides even when L = 0: the attention refuses an output that maps two elements to one address
        long rows = Math.max(l, 1);
        Tensor a = Tensor.view(seg, 0, new long[] {b, h, l, dh}, new long[] {h * rows * dh, rows * dh, dh, 1});
        attention.workspaceBytes(q, kv, kv, a, options);
    }

    /** {@code A [B·L, E]} seen as {@code [B, H, L, Dh]}: each head writes its own columns, so concatenation is free. */
    private Tensor headsOutput(MemorySegment seg, long aOff, long b, long l) {
        return Tensor.view(seg, aOff, new long[] {b, h, l, dh}, new long[] {l * e, dh, e, 1});
    }

    /** {@code out [B, L, E] = A [B·L, E] · W_Oᵀ + b_O}. */
    private void outputProjection(MhaWorkspace ws, MemorySegment seg, long aOff, int b, int l, Tensor out) {
        product(ws, seg, aOff, (long) l * e, e, out.segment(), out.offset(), out.stride(0), out.stride(1), b, l, w.wo());
        addBias(w.bo(), out.segment(), out.offset(), b, out.stride(0), l, out.stride(1));
    }

    /** {@code P[:, 0 : E + 2·Hkv·Dh] = src · [W_Q; W_K; W_V]ᵀ + [b_Q, b_K, b_V]}, one product when packed. */
    private void projectQkv(MhaWorkspace ws, Tensor src, MemorySegment seg, long off, int ld) {
        int b = (int) src.size(0);
        int l = (int) src.size(1);
        if (w.packedQkv() != null) {
            project(ws, src, w.packedQkv(), null, seg, off, ld, 0);
            addBias(w.bq(), seg, off, b, (long) l * ld, l, ld);
            addBias(w.bk(), seg, off + e, b, (long) l * ld, l, ld);
            addBias(w.bv(), seg, off + e + kvd, b, (long) l * ld, l, ld);
        } else {
            project(ws, src, w.wq(), w.bq(), seg, off, ld, 0);
            project(ws, src, w.wk(), w.bk(), seg, off, ld, e);
            project(ws, src, w.wv(), w.bv(), seg, off, ld, e + kvd);
        }
    }

    /** Columns {@code col ..} of the contiguous rows {@code [B·L, ld]} at {@code off} = {@code src · wᵀ + bias}. */
    private void project(MhaWorkspace ws, Tensor src, Tensor wt, Tensor bias, MemorySegment seg, long off, int ld,
                         int col) {
        int b = (int) src.size(0);
        int l = (int) src.size(1);
        product(ws, src.segment(), src.offset(), src.stride(0), src.stride(1), seg, off + col, (long) l * ld, ld, b, l, wt);
        addBias(bias, seg, off + col, b, (long) l * ld, l, ld);
    }

    /**
     * {@code C[b, i, :] = A[b, i, :] · wᵀ} for {@code batches × rows} rows given by batch and row strides: one
     * matrix when the rows are evenly spaced across batches, else one per batch; each matrix one product, or
     * slabs of {@link #SLAB_COLS} columns (from {@link WorkerPool#MIN_PARALLEL_FLOPS} on) shared with the pool.
     */
    private void product(MhaWorkspace ws, MemorySegment a, long aOff, long aBs, long aRs, MemorySegment c, long cOff,
                         long cBs, long cRs, int batches, int rows, Tensor wt) {
        int n = (int) wt.size(0);
        int k = (int) wt.size(1);
        int ldw = (int) Math.max(wt.stride(0), Math.max(k, 1));
        int mats;
        int m;
        int lda;
        int ldc;
        if (batches == 1 || rows > 1 && aBs == rows * aRs && cBs == rows * cRs) {
            mats = 1;
            m = toInt("B*L", (long) batches * rows);
            lda = ld(m, aRs, k);
            ldc = ld(m, cRs, n);
        } else if (rows == 1 && aBs >= k && cBs >= n) {
            mats = 1;
            m = batches;
            lda = ld(aBs, k);
            ldc = ld(cBs, n);
        } else {
            mats = batches;
            m = rows;
            lda = ld(m, aRs, k);
            ldc = ld(m, cRs, n);
        }
        WorkerPool pool = WorkerPool.shared();
        // the cut comes from the shape alone (see SLAB_COLS): the same slabs on one thread or many. Below
        // MIN_PARALLEL_FLOPS each matrix is one task on the caller, still through the pool: a thread inside a
        // product counts as a core taken, so that a concurrent call gets no pool thread beside request threads
        // that fill the cores (a decode step's projections are all of this size)
        int slabs = 1;
        int slabCols = Math.max(n, 1);
        int wanted = 0;
        OpenBlas nat = blas;
        if (nat != null && nat.threads() != 1) {
            // every product runs on qkv's threads, small ones too (a decode step's are all small, and run on request
            // threads that may fill the cores): OpenBLAS threads inside them would oversubscribe. The count is
            // process-wide and the user may have raised it for their own products since the last call
            nat.setThreads(1);
        }
        if (2.0 * mats * m * n * k >= WorkerPool.MIN_PARALLEL_FLOPS) {
            slabs = (n + SLAB_COLS - 1) / SLAB_COLS;
            slabCols = SLAB_COLS;
            int threads = attention.threads();
            if (threads > 1 && pool.accessible(a) && pool.accessible(c) && pool.accessible(wt.segment())) {
                wanted = threads - 1;
            }
        }
        Slabs job = ws.slabs();
        job.set(this, a, aOff, aBs, lda, c, cOff, cBs, ldc, m, n, k, wt, ldw, slabs, slabCols);
        try {
            // wanted 0: the pool runs every task on the caller, in the same slabs
            pool.run(job, Math.multiplyExact(mats, slabs), wanted);
        } finally {
            job.release();
        }
    }

    /**
     * One projection cut into slabs of {@link #SLAB_COLS} columns, slab {@code s} of matrix {@code i} being task
     * {@code i · slabs + s}; each task writes only its columns of C. A workspace holds one and every call reuses
     * it, so a call allocates nothing.
     */
    static final class Slabs implements WorkerPool.Tasks {
        private MultiHeadAttention layer;
        private MemorySegment a;
        private MemorySegment c;
        private Tensor wt;
        private long aOff;
        private long aStep;
        private long cOff;
        private long cStep;
        private int lda;
        private int ldc;
        private int ldw;
        private int m;
        private int n;
        private int k;
        private int slabs;
        /** Columns per slab: {@link #SLAB_COLS}, or all of them for a product run whole on its caller. */
        private int slabCols;

        void set(MultiHeadAttention layer, MemorySegment a, long aOff, long aStep, int lda, MemorySegment c,
                 long cOff, long cStep, int ldc, int m, int n, int k, Tensor wt, int ldw, int slabs, int slabCols) {
            this.slabCols = slabCols;
            this.layer = layer;
            this.a = a;
            this.aOff = aOff;
            this.aStep = aStep;
            this.lda = lda;
            this.c = c;
            this.cOff = cOff;
            this.cStep = cStep;
            this.ldc = ldc;
            this.m = m;
            this.n = n;
            this.k = k;
            this.wt = wt;
            this.ldw = ldw;
            this.slabs = slabs;
        }

        /** Drops the call's memory, which the workspace must not keep reachable. */
        void release() {
            layer = null;
            a = null;
            c = null;
            wt = null;
        }

        @Override
        public void run(int task, int worker) {
            int mat = task / slabs;
            int j0 = task % slabs * slabCols;
            int cols = Math.min(slabCols, n - j0);
            // C[:, j0 .. j0 + cols) = A · w[j0 .. j0 + cols, :]ᵀ
            layer.productNt(m, cols, k, a, aOff + mat * aStep, lda, wt.segment(), wt.offset() + (long) j0 * ldw,
                    ldw, c, cOff + mat * cStep + j0, ldc);
        }
    }

    /**
     * {@code C [m, n] = A [m, k] · wᵀ}: OpenBLAS directly (see {@link #blas}), else the layer's kernel. Up to
     * {@link #GEMV_ROWS} rows (a decode step) are matrix-vector products, {@code w [n, k]} read in place: a
     * matrix product packs the whole weight on every call, which made a Java decode step 3-7x slower than native.
     */
    private void productNt(int m, int n, int k, MemorySegment a, long aOff, int lda, MemorySegment wSeg, long wOff,
                           int ldw, MemorySegment c, long cOff, int ldc) {
        OpenBlas nat = blas;
        MatmulKernel mm = matmul;
        if (heapKernel != null && !(SgemmArgs.blasReady(a) && SgemmArgs.blasReady(wSeg) && SgemmArgs.blasReady(c))) {
            nat = null;
            mm = heapKernel;
        }
        // the heap kernel is the scalar one, which has no faster matrix-vector product
        if (m <= GEMV_ROWS && mm == matmul && gemvRows) {
            for (int i = 0; i < m; i++) {
                long ai = aOff + (long) i * lda;
                long ci = cOff + (long) i * ldc;
                if (nat != null) {
                    nat.sgemv(Transpose.NO, n, k, 1f, wSeg, wOff, ldw, a, ai, 1, 0f, c, ci, 1);
                } else {
                    mm.matvec(Transpose.NO, n, k, 1f, wSeg, wOff, ldw, a, ai, 1, 0f, c, ci, 1);
                }
            }
        } else if (nat != null) {
            nat.sgemm(Transpose.NO, Transpose.YES, m, n, k, 1f, a, aOff, lda, wSeg, wOff, ldw, 0f, c, cOff, ldc);
        } else {
            mm.matmul(Transpose.NO, Transpose.YES, m, n, k, 1f, a, aOff, lda, wSeg, wOff, ldw, 0f, c, cOff, ldc);
        }
    }

    private static int ld(long stride, int min) {
        return toInt("leading dimension", Math.max(stride, Math.max(min, 1)));
    }

    /** {@link #ld(long, int)} of {@code m} rows: one row's stride is never used, whatever the view says. */
    private static int ld(int m, long stride, int min) {
        return m == 1 ? Math.max(min, 1) : ld(stride, min);
    }

    /** Adds {@code bias [n]} to {@code batches × rows} rows of {@code n} floats; nothing when bias is null. */
    private static void addBias(Tensor bias, MemorySegment seg, long off, int batches, long bs, int rows, long rs) {
        if (bias == null) {
            return;
        }
        MemorySegment bseg = bias.segment();
        long bOff = bias.offset();
        long bStride = bias.stride(0);
        int n = (int) bias.size(0);
        for (int b = 0; b < batches; b++) {
            for (int r = 0; r < rows; r++) {
                long row = off + b * bs + r * rs;
                for (int c = 0; c < n; c++) {
                    seg.setAtIndex(F, row + c, seg.getAtIndex(F, row + c) + bseg.getAtIndex(F, bOff + c * bStride));
                }
            }
        }
    }

    /** Checks a {@code [B, L, E]} tensor: rank, E, expected B and L (-1: any), unit stride along E, liveness. */
    private void check3(String name, Tensor t, long b, long l) {
        if (t.rank() != 3 || t.size(2) != e || b >= 0 && t.size(0) != b || l >= 0 && t.size(1) != l) {
            // built only here: this check runs on every call, which must not allocate
            String want = "[" + (b < 0 ? "B" : b) + ", " + (l < 0 ? (name.equals("kv") ? "Lkv" : "L") : l) + ", "
                    + e + "]";
            throw new IllegalArgumentException(t.describe(name) + ": expected " + want + " (E=" + e + ", H=" + h + ")");
        }
        // an empty tensor reaches no element: any strides and any memory (README, failure contract)
        boolean empty = t.size(0) == 0 || t.size(1) == 0;
        if (!empty && (e > 1 && t.stride(2) != 1 || t.size(1) > 1 && t.stride(1) < e)) {
            throw new IllegalArgumentException(t.describe(name) + " with strides " + java.util.Arrays.toString(t.strides())
                    + ": rows must have unit stride along E and must not overlap");
        }
        if (t.size(0) > Integer.MAX_VALUE || t.size(1) > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(t.describe(name) + ": dimensions must fit in an int");
        }
        t.requireUsable(name);
        if (name.equals("out") && t.elementCount() > 0) {
            if (t.segment().isReadOnly()) {
                // e.g. a weight of a read-only safetensors mapping: OpenBLAS writing into it would crash the JVM
                throw new IllegalArgumentException(t.describe(name) + ": a read-only segment");
            }
            if (rowsOverlap(t)) {
                throw new IllegalArgumentException(t.describe(name) + " with strides "
                        + java.util.Arrays.toString(t.strides()) + ": two rows share memory");
            }
        }
        if (backend == Backend.NATIVE && !empty && !SgemmArgs.blasReady(t.segment())) {
            throw new IllegalArgumentException(t.describe(name) + notForBlas(t.segment()));
        }
    }

    private static String notForBlas(MemorySegment s) {
        return s.isNative() ? ": floats at an address that is not a multiple of 4; the native backend needs them"
                + " aligned (AUTO runs them on the Java kernels)"
                : ": a heap segment; the native backend needs off-heap memory";
    }

    /**
     * True unless the {@code B·L} rows of {@code t [B, L, E]} (unit stride along E) are disjoint by nesting: the
     * dimension of smaller stride steps at least E, the other at least its whole extent. That covers batch-first
     * and sequence-first layouts, padded or not; an output whose rows alias would keep only the last write.
     */
    private boolean rowsOverlap(Tensor t) {
        long n0 = t.size(0);
        long n1 = t.size(1);
        long s0 = t.stride(0);
        long s1 = t.stride(1);
        if (n0 <= 1 || n1 <= 1) {
            long n = Math.max(n0, n1);
            long s = n0 > 1 ? s0 : s1;
            return n > 1 && s < e;
        }
        boolean rowsInner = s1 <= s0;
        long inner = rowsInner ? s1 : s0;
        long innerCount = rowsInner ? n1 : n0;
        long outer = rowsInner ? s0 : s1;
        // the outer step must clear the inner rows' extent, (count - 1)·inner + E: innerCount·inner (as it was)
        // refused batches that start where the last row before them ends
        return inner < e || outer < (innerCount - 1) * inner + e;
    }

    /**
     * Names the weight whose arena is closed. Another thread may still close it after this check; the call then
     * stops with the JDK's own {@link IllegalStateException} at the next access, or the close is refused while
     * a native product runs.
     */
    private void checkWeights(Tensor out) {
        final String[] names = WEIGHT_NAMES;
        final Tensor[] ts = weightList;
        for (int i = 0; i < ts.length; i++) {
            if (ts[i] != null) {
                ts[i].requireUsable(names[i]);
            }
        }
        for (int i = 0; i < ts.length; i++) {
            // writing there would change the layer for every later call and every other thread
            if (ts[i] != null && out.overlaps(ts[i])) {
                throw new IllegalArgumentException(out.describe("out") + " shares memory with "
                        + ts[i].describe(names[i]));
            }
        }
    }

    /**
     * Refuses a decode step whose workspace cannot hold the attention's score tiles over {@code len} keys
     * before anything is projected or written to the cache: a workspace made for a shorter cache than the one
     * it meets. At or above the bound {@link #newWorkspace} sizes nothing is asked; below it the attention
     * says exactly what this step needs, so a smaller workspace that suffices still runs.
     */
    private void checkAttentionWorkspace(MhaWorkspace ws, KvCache cache, int len) {
        long have = ws.attention().byteSize();
        if (backend == Backend.REFERENCE || have >= attentionBytes(1, ws.q().size(2), len)) {
            return;
        }
        // planned with this workspace, as sdpa will: grouped kv heads fall back to a head per task when it is small
        long need = attention.workspaceBytes(ws.q(), cache.keysAt(len), cache.valuesAt(len), ws.a(),
                SdpaOptions.CAUSAL, ws.attention());
        if (have < need) {
            long n = ws.q().size(2);
            throw new IllegalArgumentException("workspace of " + have + " attention bytes is too small for a decode"
                    + " step of " + n + (n == 1 ? " row" : " rows") + " after " + cache.describe() + ": needs " + need
                    + " (make it with newWorkspace(arena, 1, n, cache.capacity()))");
        }
    }

    /**
     * Refuses a forward whose workspace cannot hold the attention's score tiles for these sizes (one made for
     * shorter sequences: the projection scratch depends on B·L only) before anything is projected, naming the
     * caller's tensors, as {@link #checkAttentionWorkspace(MhaWorkspace, KvCache, int)} does for a decode step;
     * the attention would refuse it after the projections, naming the layer's own head views. At or above what
     * {@link #newWorkspace} sizes for the call nothing is asked (no allocation in the steady state); below it the
     * attention says exactly what the call needs, so a smaller workspace that suffices still runs.
     */
    private void checkAttentionWorkspace(MhaWorkspace ws, Tensor x, Tensor kv, long b, long l, long lkv,
                                         SdpaOptions options) {
        long have = ws.attention().byteSize();
        if (have >= attentionBytes(b, l, Math.max(l, lkv))) {
            return;
        }
        long need = attention.workspaceBytes(ws.q(), ws.k(), ws.v(), ws.a(), options, ws.attention());
        if (have < need) {
            throw new IllegalArgumentException("workspace of " + have + " attention bytes is too small for "
                    + x.describe("x") + (kv == null ? "" : ", " + kv.describe("kv")) + ": needs " + need
                    + " (make it with newWorkspace(arena, " + b + ", " + l + ", " + lkv + "))");
        }
    }

    /**
     * The error for a call whose projection scratch is more bytes than a long holds (only views with zero strides,
     * or of segments made large by reinterpret, get there), naming the caller's tensors. Error path only.
     */
    private IllegalArgumentException scratchOverflow(Tensor x, Tensor kv) {
        return new IllegalArgumentException(x.describe("x") + " = [B, L, E]"
                + (kv == null ? "" : ", " + kv.describe("kv") + " = [B, Lkv, E]") + ": the layer's projection scratch, "
                + (kv == null ? "B·L·(2·E + 2·Hkv·Dh)" : "B·L·2·E + B·Lkv·2·Hkv·Dh") + " floats with E=" + e
                + ", Hkv=" + hkv + ", Dh=" + dh + ", needs more bytes than a long holds");
    }

    /** {@code needFloats} is at most {@code Long.MAX_VALUE / 4} (the callers check it). */
    private static MemorySegment checkWorkspace(MhaWorkspace ws, long needFloats, Tensor x) {
        MemorySegment seg = ws.floats();
        Tensor.requireUsable(seg, "workspace");
        long need = needFloats * Float.BYTES;
        if (seg.byteSize() < need) {
            throw new IllegalArgumentException("workspace of " + seg.byteSize() + " projection bytes is too small for "
                    + x.describe("x") + ": needs " + need + " (make it with newWorkspace for these sizes)");
        }
        return seg;
    }

    /**
     * A tensor of the call must not share memory with the workspace (an arena of the caller's own can hand out
     * memory it also gave to tensors): the projections write their scratch while x and kv are read and before the
     * attention reads the mask, the attention's score tiles would overwrite x or an out written before them, and
     * the output projection reads the heads' output there while it writes out. Refused before anything is written,
     * naming the tensor, as {@link Attention#sdpa} refuses its own workspace's overlaps; without it the call wrote
     * out and was then refused by sgemm's check, as 'output c overlaps input a'.
     */
    private static void workspaceOverlap(MhaWorkspace ws, Tensor t, String name) {
        if (ws.overlaps(t)) {
            throw new IllegalArgumentException(t.describe(name) + " shares memory with the workspace");
        }
    }

    private static int toInt(String what, long v) {
        if (v > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(what + "=" + v + " exceeds the 32-bit BLAS interface");
        }
        return (int) v;
    }

    @Override
    public String toString() {
        return "MultiHeadAttention[E=" + e + ", H=" + h + ", Hkv=" + hkv + ", Dh=" + dh + ", " + backend.cliName()
                + ", projections " + matmul.name() + ", W_Q " + Shapes.format(w.wq().shape())
                + (w.packedQkv() != null ? " packed" : "") + "]";
    }
}
