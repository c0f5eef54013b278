package dev.qkv.attention;

import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.config.Settings;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.kernel.PackBuffer;
import dev.qkv.kernel.PackedKernels;
import dev.qkv.kernel.PerThread;
import dev.qkv.kernel.RowKernels;
import dev.qkv.kernel.Vectorization;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;

/**
 * Scaled dot-product attention: {@code out [B, Hq, Lq, Dv] = softmax(scale · q·kᵀ + mask) · v} for
 * {@code q [B, Hq, Lq, Dk]}, {@code k [B, Hkv, Lk, Dk]}, {@code v [B, Hkv, Lk, Dv]}.
 *
 * <p>{@code Hq} is a multiple of {@code Hkv} (grouped-query and multi-query attention): query head {@code h}
 * uses key/value head {@code h / (Hq / Hkv)}. {@code scale} defaults to {@code 1/√Dk}. Causal masking is
 * aligned bottom-right (see {@link SdpaOptions}) and combines with an optional {@link Mask}.
 *
 * <p>The softmax is numerically stable (the row maximum is subtracted before {@code exp}), so scores in the
 * thousands do not overflow. A row in which no key may be attended gives zeros, never NaN (as PyTorch's
 * {@code F.scaled_dot_product_attention} since 2.5; earlier versions, and {@code nn.MultiheadAttention} computing
 * its weights, give NaN). A row masked only by finite values (Hugging Face's {@code finfo(float32).min}) is not
 * such a row: its equal scores average v, as in PyTorch. A NaN in an input
 * row makes that output row NaN. A key whose weight is exactly zero for a row (masked, past the causal limit,
 * or {@code exp} underflowed to 0 in float) never contributes to that row, not even as {@code 0 · NaN}; a NaN or
 * Inf of v at a key with a non-zero weight propagates as IEEE arithmetic says. The blocked products would
 * multiply such zeros by v for every row of a block, so a row that comes out NaN is computed again, exactly,
 * one key at a time (slow, and only for such rows); so is a row that comes out infinite, which a finite v near
 * float's largest values can give in the unnormalized sums of the products.
 *
 * <p><b>Algorithm.</b> The {@link Backend#NATIVE} and {@link Backend#JAVA} backends share one blocked
 * algorithm. The work is cut into tasks, one per (batch, head, block of query rows: {@link #BLOCK_ROWS} for the
 * Java kernels, up to {@link #NATIVE_BLOCK_ROWS} for OpenBLAS, whose sgemm repacks its operands per call). A task
 * computes the scores of its block as one product {@code q_block · kᵀ} into a score tile of the workspace
 * (keys a causal block can never see are neither multiplied nor exponentiated, and a block that sees no key is
 * only zeroed), turns each row into unnormalized weights {@code exp(s - max)} (vectorized, see
 * {@link RowKernels}), multiplies {@code p · v} straight into {@code out} and scales each output row by
 * {@code 1 / Σ exp}. Native products are OpenBLAS {@code sgemm} on the tensors' own memory through leading
 * dimensions. The Java products use the Vector API micro-kernel of {@link PackedKernels}: each worker packs
 * {@code kᵀ} and {@code v} of a head once into its own panels and reuses them for every query block of that head;
 * queries of fewer than 8 rows (decoding) use dot products and row updates straight from memory instead, and on
 * the native backend OpenBLAS {@code sgemv} per query row (sgemm would pack k and v on every call). Without
 * the Vector API module the Java backend runs the same blocked algorithm on scalar kernels.
 * {@link Backend#REFERENCE} is a direct scalar reading of the definition, accumulating in double.
 *
 * <p><b>Threads.</b> Tasks run on the caller plus a process-wide pool of (cores − 1) daemon threads, at most
 * {@link #threads()} at once, claimed one at a time (largest causal blocks first) so uneven work balances; on
 * the Java kernels with at least 4 heads per worker and an even share, a task is a whole head, so that each
 * head's {@code kᵀ} and {@code v} are packed once. Problems under about 8 MFLOP run on the caller alone (waking a
 * thread costs more). OpenBLAS is kept at one
 * thread while qkv runs attention (each native call sets it; a count a user raises during a call, process-wide,
 * is not undone until the next), so threads × OpenBLAS threads never exceeds {@code threads()} ≤ cores. When
 * the pool is busy with another call, a call runs on its own thread. Every call's thread ({@link Backend#REFERENCE}
 * included) counts as a core taken while it computes: a concurrent call gets only the pool threads the callers
 * leave. Each worker has its own score tile and packing buffers, so no scratch is shared.
 *
 * <p><b>Memory.</b> Per worker the off-heap workspace holds a score tile of {@code rows × min(Lk, keyBlock)}
 * floats (at most {@code KEY_BLOCK}, fewer for wide heads; {@code NATIVE_KEY_BLOCK}, rows padded, for OpenBLAS;
 * no {@code Lq × Lk} matrix: a block that sees more
 * keys than that takes them a key block at a time with an online softmax, running max and sum per row) plus
 * packed copies of views without a unit stride; the Java backend also keeps its packed {@code kᵀ} and {@code v}
 * panels on the Java heap. {@link #plan} reports both.
 * A {@linkplain Builder#workspaceBudget budget} lowers the block rows, then the workers, to fit.
 *
 * <p>An {@code Attention} is immutable and thread-safe. Calls without a {@link Workspace} use scratch kept per
 * thread (grown on demand, then reused), so steady-state calls allocate nothing on the Java heap.
 *
 * <p><b>Null arguments.</b> One rule for this package and {@code dev.qkv.mha}: an argument is required unless its
 * javadoc says what null means (here only the mask of {@link SdpaOptions}); a null required argument throws
 * {@link NullPointerException} whose message starts with the parameter's name ({@code "q is null"},
 * {@code "workspace is null"}), on every backend, before anything is read or written. Other bad arguments throw
 * {@link IllegalArgumentException} (or {@link IllegalStateException} for memory whose arena is closed, and
 * {@link WrongThreadException} for memory of an arena confined to another thread) naming the tensor and its shape.
 */
public final class Attention {

    /** Query rows per block: the score tile is {@code BLOCK_ROWS × Lk} floats. */
    public static final int BLOCK_ROWS = 64;

    /**
     * Below this many query rows (decoding) {@link Backend#AUTO} runs the Java kernels whatever the core. Both
     * backends now read k and v in place (Java: dot products and row updates; native: sgemv, see
     * {@link #GEMV_QUERIES}); on the decode benchmark (32 heads, 4096 keys, D = 128) they tie in loaded runs and
     * native led by 9-27% in the one quiet run (bench/RESULTS.md round 3). Java keeps the choice on that mixed
     * evidence: it makes no downcall per head, which matters at small cached lengths.
     */
    static final int AUTO_JAVA_QUERIES = 8;

    /** Below this many query rows the native backend multiplies by k and v with sgemv, one query row at a time. */
    static final int GEMV_QUERIES = 8;

    /**
     * OpenBLAS cores whose sgemm uses AVX-512. Measured (bench/RESULTS.md): with one of these OpenBLAS is as fast
     * as or faster than the Java Vector API kernels at every benchmarked shape (44 vs 54 µs at [1, 1, 128, 64]),
     * so {@link Backend#AUTO} runs native; with an AVX2 core (e.g. {@code OPENBLAS_CORETYPE=Haswell}) the Java
     * kernels are faster at every shape (54 vs 68 µs tiny, 90 vs 64 GFLOP/s at [1, 8, 2048, 64]), so AUTO runs
     * Java. The crossover is therefore the core, not the size.
     *
     * <p>Round 3 (faster softmax for both engines, larger native blocks) moved the crossover within the AVX-512
     * cores: native still won the tiny shape (43 vs 46 µs at [1, 1, 128, 64]) and head size 128, the Java kernels
     * larger problems of head size 64.
     *
     * <p>Round 4 (the Java kernels' panels on cache lines, stores from registers, vector row tails) moved it again:
     * on SkylakeX, one thread, the Java kernels win every benchmarked shape up to head size 128 ([1, 1, 128, 64]
     * 40 vs 44 µs, causal 35 vs 37; [1, 12, 512, 64] 6.4 vs 7.3 ms; [1, 4, 512, 128] 3.8 vs 4.2 ms;
     * [1, 1, 4096, 128] 66.5 vs 69.7 ms; [1, 8, 2048, 64] 70 vs 81 ms), and native wins head size 256
     * ([1, 1, 2048, 256] 30 vs 40 ms; 16 vs 21 ms on two threads). See {@link #AUTO_NATIVE_MIN_DK}.
     *
     * <p>Round 6 (smaller Java key blocks for wide heads, weights straight into the p·v kernel) brought head size
     * 256 to a tie: [1, 1, 2048, 256] 26.2 vs 28.8 ms, [1, 2, 1024, 256] 13.2 vs 13.6, [1, 1, 4096, 256] 113 vs
     * 109, [1, 4, 512, 256] 7.0 vs 6.1 (native vs Java, one thread); the rule stays (bench/RESULTS.md, round 6).
     */
    private static final java.util.Set<String> AVX512_CORES =
            java.util.Set.of("skylakex", "cooperlake", "sapphirerapids");

    /**
     * OpenBLAS cores whose sgemm uses AVX2 and FMA. Against Java kernels of 8-float vectors (x86 without AVX-512,
     * where they run 6 × 2 register blocks) OpenBLAS on such a core is the faster at every prefill shape measured
     * (AMD EPYC Zen 3, core Zen, one thread, medians of three alternating runs each, bench/RESULTS.md round 25:
     * [1, 12, 512, 64] 17.0 vs 23.5 ms, [1, 8, 2048, 64] 164 vs 242, [1, 1, 4096, 128] 150 vs 232; [1, 1, 128, 64]
     * a tie, 0.12 vs 0.11), so {@link Backend#AUTO} runs native there from head size 1 ({@link #autoNativeMinDk}).
     * The rounds above compared AVX2 OpenBLAS with Java kernels of 16-float vectors, which win.
     */
    private static final java.util.Set<String> AVX2_CORES = java.util.Set.of("haswell", "zen");

    /** With an AVX-512 core, {@link Backend#AUTO} runs native at this head size (Dk) and above (see AVX512_CORES). */
    static final int AUTO_NATIVE_MIN_DK = 256;

    /**
     * The head size from which {@link Backend#AUTO} runs OpenBLAS (for 8 query rows or more), given its core and the
     * Java kernels' vector width, or 0 for never: {@link #AUTO_NATIVE_MIN_DK} with an AVX-512 core and Java vectors
     * of 16 floats or more, 1 (every head size) with an AVX2 or AVX-512 core and Java vectors of 8 (see
     * {@link #AVX2_CORES}), else 0 (an AVX2 core against 16-float Java vectors, or a core without FMA kernels).
     */
    static int autoNativeMinDk(String core, int javaLanes) {
        String c = core.toLowerCase(java.util.Locale.ROOT);
        boolean avx512 = AVX512_CORES.contains(c);
        if (javaLanes <= 8 && (avx512 || AVX2_CORES.contains(c))) {
            return 1;
        }
        return avx512 ? AUTO_NATIVE_MIN_DK : 0;
    }

    /**
     * Most keys per block of the Java engine's online softmax: a query block that sees more keys takes them at
     * most this many at a time (running max and sum per row, the output rescaled), so its score tile stays in L2
     * (64 × 2048 floats = 512 KiB). Measured at L = 32768, D = 64 (1024, 2048, 4096: 2048 fastest): see
     * bench/RESULTS.md, round 2. Wider heads take fewer keys per block (see {@link #javaKeyBlock}). The system
     * property {@code qkv.keyBlock} sets the block for every head size, to run tests through the online path.
     */
    static final int KEY_BLOCK = blockProperty("qkv.keyBlock", 2048, 64);

    /**
     * The integer system property {@code name}, or {@code fallback} when unset. A block of keys must be a positive
     * multiple of {@code multiple} (the Java kernels' panels hold 64 keys): anything else is a configuration
     * error, reported when the class loads rather than as wrong results (keys skipped) or a loop that never ends.
     */
    static int blockProperty(String name, int fallback, int multiple) {
        String s = System.getProperty(name);
        if (s == null) {
            return fallback;
        }
        long v;
        try {
            v = Settings.parse(s);
        } catch (NumberFormatException e) {
            v = -1; // not an integer: refused below, never taken as unset
        }
        if (v <= 0 || v % multiple != 0 || v > MAX_BLOCK_PROPERTY) {
            // any positive size (multiple 1) is "a positive integer": "a multiple of 1" read as a riddle
            throw new IllegalStateException("-D" + name + "=" + s + ": must be a positive "
                    + (multiple == 1 ? "integer" : "multiple of " + multiple)
                    + (v > MAX_BLOCK_PROPERTY ? " up to " + MAX_BLOCK_PROPERTY : ""));
        }
        return (int) v;
    }

    /**
     * Largest block of rows or keys a property may set: blocks step through lengths of up to
     * {@link SdpaArgs#MAX_SIZE} without passing 2^31 - 1, and a block's arrays stay allocatable.
     */
    static final int MAX_BLOCK_PROPERTY = 1 << 20;

    /** The block is {@code qkv.keyBlock} for every head size, not {@link #javaKeyBlock}'s choice. */
    private static final boolean KEY_BLOCK_SET = Settings.isSet("qkv.keyBlock");

    /**
     * Bytes of a core's L2 that one key block's working set of the Java engine may fill: the block's packed kᵀ
     * ({@code Dk × keys}) and v ({@code keys × Dv}) and its score tile ({@code BLOCK_ROWS × keys}). Three
     * quarters of this machine's 2 MiB L2; D = 64 at 2048 keys fills it exactly.
     */
    static final long KEY_BLOCK_L2_BYTES = 3L << 19;

    /**
     * Keys per block of the Java engine for these head sizes: {@link #KEY_BLOCK}, halved (not under 256) while
     * the block's kᵀ, v and score tile exceed {@link #KEY_BLOCK_L2_BYTES}. At D = 128, 2048 keys make 2.5 MiB,
     * more than the L2, and the products then read their panels from L3 (measured at [1, 1, 4096, 128], one
     * thread, interleaved runs: 1024 keys 0.93-1.00× the time of 2048, median 0.97; bench/RESULTS.md, round 6).
     */
    static int javaKeyBlock(int dk, int dv) {
        int kb = KEY_BLOCK;
        if (!KEY_BLOCK_SET) {
            while (kb > 256 && (long) kb * ((long) dk + dv + BLOCK_ROWS) * Float.BYTES > KEY_BLOCK_L2_BYTES) {
                kb /= 2;
            }
        }
        return kb;
    }

    /**
     * Most query blocks that one task of the Java engine's online path runs together, key block by key block
     * (see {@link Job#runOnline}): each key block's packed kᵀ and v then come from the L2 for every block of the
     * span after the first, instead of from memory for every block. Property {@code qkv.spanBlocks} (1: a
     * block at a time, as before; tests set it to vary the spans).
     */
    static final int SPAN_BLOCKS = Settings.intSetting("qkv.spanBlocks", 16, 1, 1 << 20);

    /**
     * Bytes of k (and then of v) per key block of a grouped few-query call ({@link Job#runGroup}): the block is read
     * from memory for a group's first query head and from the L2 (2 MiB per core here) for the others, with room
     * for the other operand's block and the scores. Property {@code qkv.groupKeyBlockBytes} (at least 64): tests set
     * it small, so that calls of a few hundred keys take the grouped path in many blocks.
     */
    static final long GROUP_KEY_BLOCK_BYTES = Settings.longSetting("qkv.groupKeyBlockBytes", 256L << 10, 64, 1L << 40);

    /** Keys per block of a grouped few-query call: {@link #GROUP_KEY_BLOCK_BYTES} of the wider of k and v rows. */
    static int groupKeyBlock(int dk, int dv) {
        // at most MAX_BLOCK_PROPERTY keys: a cast of more wrapped to 0 or below, and the key loop never ended
        return (int) Math.max(1, Math.min(MAX_BLOCK_PROPERTY,
                GROUP_KEY_BLOCK_BYTES / ((long) Math.max(1, Math.max(dk, dv)) * Float.BYTES)));
    }

    /**
     * Query rows per block of the OpenBLAS engine. sgemm packs both operands on every call, so a 64-row block
     * repacks all of kᵀ and v for 64 rows only; 256 rows amortize that packing (measured at [1, 8, 2048, 64],
     * SkylakeX, per head: q · kᵀ 4.9 → 3.6 ms, p · v 5.5 → 4.0 ms; see bench/RESULTS.md, round 3). Lowered (not
     * under {@link #BLOCK_ROWS}) while a call would have fewer than 4 tasks per core, and by the budget.
     * The system property {@code qkv.nativeBlockRows} overrides it (for measurements and tests).
     */
    static final int NATIVE_BLOCK_ROWS = blockProperty("qkv.nativeBlockRows", 256, 1);

    /**
     * Keys per block of the OpenBLAS engine's online softmax: a 256 × 1024 score tile is 1 MiB, half of a core's
     * L2, which leaves room for OpenBLAS's packed panels (2048 keys: a 2 MiB tile, measured no faster). The
     * system property {@code qkv.nativeKeyBlock} overrides it.
     */
    static final int NATIVE_KEY_BLOCK = blockProperty("qkv.nativeKeyBlock", 1024, 1);

    /**
     * OpenBLAS ({@code SMALL_MATRIX_OPT}, in the bundled 0.3.31) multiplies a product of {@code m·n·k ≤ 10^6}
     * without packing its operands, on cores that have such kernels: SkylakeX and its successors for column-major
     * NN, NT and TT (row-major NN, TN, TT), not for the row-major NT of {@code q · kᵀ} in place (its permit then
     * wants {@code m·n ≤ 1200}). On these cores the OpenBLAS engine cuts both products of a block into calls of at
     * most this size, with each query block copied as qᵀ so that {@code q · kᵀ} is {@code (qᵀ)ᵀ · kᵀ}, TT (see
     * {@code Job.transQ}). Measured per call over a head of 2048 queries and keys, D = 64, SkylakeX, one thread
     * (GFLOP/s): {@code q · kᵀ} in TT form, 32-64 rows × 240-480 keys, 165-193, against 147-165 for one
     * 256 × 1024 call; {@code p · v} 32 rows × 480 keys 199-225, against 138-155 (bench/RESULTS.md, round 12).
     * Haswell has no such kernels: small calls there measured slower (73-77 against 101-104), so it keeps whole
     * blocks. The system property {@code qkv.nativeSmallMnk} lowers the bound, so that tests cut small calls too
     * (make fuzz).
     */
    static final long SMALL_MNK = Settings.longSetting("qkv.nativeSmallMnk", 1_000_000, 1, 1L << 40);

    /**
     * Query rows per small call (see {@link #SMALL_MNK}); the system property {@code qkv.nativeSmallRows}.
     * Measured (whole calls, SkylakeX, one thread; bench/RESULTS.md, round 12): 16 rows 60-69 ms at [1, 8, 2048,
     * 64], 32 rows 53-56, 64 rows 51-56; at [1, 12, 512, 64] 32 rows 5.2-6.0 ms, 64 rows 4.9-5.8.
     */
    static final int SMALL_ROWS = Settings.intSetting("qkv.nativeSmallRows", 64, 1, 1 << 20);

    /**
     * Block rows of the OpenBLAS engine in small calls: no operand is packed per call, so large blocks amortize
     * nothing, and a 128 × 1024 tile (512 KiB) leaves more of the L2 to k and v. Measured against 256 (same runs
     * as {@link #SMALL_ROWS}): [1, 8, 2048, 64] 51-53 against 54-56 ms, [1, 12, 512, 64] 5.0-5.1 against 5.8 ms,
     * [1, 1, 4096, 128] the same. {@code qkv.nativeBlockRows} sets this one too.
     */
    static final int SMALL_BLOCK_ROWS = blockProperty("qkv.nativeBlockRows", 128, 1);

    /**
     * {@code qkv.nativeSmallCalls}: {@code true} or {@code false} forces small calls on or off for every core;
     * unset, they are on for the AVX-512 cores (see {@link #SMALL_MNK}).
     */
    private static final Boolean SMALL_CALLS_SET = Settings.booleanSetting("qkv.nativeSmallCalls");

    /**
     * A small call's chunk of keys is at least this wide: heads too wide for it keep whole calls (see
     * {@code Job.smallCalls}).
     */
    private static final int SMALL_MIN_KEYS = 64;

    /**
     * Floats added to a native score-tile row whose length is a multiple of 64 (see {@code Job.tileLd}); every
     * bound on a tile's size adds it, whatever the keys of a block.
     */
    private static final int TILE_PAD = 16;

    /** The larger of the two engines' block rows: the size of the per-row scratch arrays. */
    private static final int MAX_BLOCK_ROWS = Math.max(BLOCK_ROWS, Math.max(NATIVE_BLOCK_ROWS, SMALL_BLOCK_ROWS));

    /** Cores of the machine: the native engine's block rows depend on it, never on a call's threads. */
    private static final int CORES = Runtime.getRuntime().availableProcessors();

    /**
     * Calls from here to {@link WorkerPool#MIN_PARALLEL_FLOPS} are shared only with a pool thread spinning for the
     * next call ({@link WorkerPool#spins}): it starts without a wake-up, so the two 64-row tasks of [1, 1, 128, 64]
     * (4 MFLOP) can run in parallel: native 21-25 µs when the second core is free (bench/RESULTS.md, round 3), and
     * since round 4 the Java engine too, 23 µs, although each of its workers packs kᵀ and v of the head again.
     */
    static final double SPIN_PARALLEL_MIN_FLOPS = 2e6;

    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final PerThread<Scratch> SCRATCH = PerThread.withInitial(Scratch::new);

    private final Backend backend;
    /** Products of the generic engine (native, or Java without the Vector API); null otherwise. */
    private final MatmulKernel matmul;
    /**
     * AUTO on OpenBLAS with the Vector API present: the Java products, for tensors OpenBLAS may not be handed (heap
     * memory, floats at an address not a multiple of 4) in layouts the packed Java engine does not read in place;
     * else null.
     */
    private final MatmulKernel javaMatmul;
    /** Products of the Java packed engine; null when not used. */
    private final PackedKernels packed;
    private final RowKernels rows;
    private final int threads;
    private final long budget;
    private final ThreadLocal<Job> jobs;
    /** Jobs for virtual threads (see {@link #takeJob}). */
    private final PerThread.Spares<Job> spareJobs = new PerThread.Spares<>(PerThread.LEASES);
    /** OpenBLAS when the generic engine's products are native, else null. */
    private final OpenBlas blas;
    /**
     * AUTO with both engines runs OpenBLAS from this head size (see {@link #autoNativeMinDk}) except for
     * decoding-sized queries; 0: never, and for every other backend.
     */
    private final int autoMinDk;
    /** The OpenBLAS engine cuts its products into calls OpenBLAS's small-matrix kernels take (see SMALL_MNK). */
    private final boolean smallCalls;

    private Attention(Backend backend, int threads, long budget, Boolean smallCalls) {
        int minDk = 0;
        this.backend = backend;
        // the reference is one scalar loop on its caller (ReferenceAttention, no pool): report what runs, as plan()
        // does (workers=1); it reported the cores
        this.threads = backend == Backend.REFERENCE ? 1 : threads;
        this.budget = budget;
        this.rows = Vectorization.rows();
        switch (backend) {
            case NATIVE -> {
                this.matmul = MatmulKernel.openBlas();
                this.packed = null;
            }
            case JAVA -> {
                this.packed = Vectorization.packed();
                this.matmul = packed == null ? MatmulKernel.javaScalar() : MatmulKernel.javaVector();
            }
            case AUTO -> {
                // a refused -Dqkv.blas.* setting, or a library the user chose that does not load, is the user's
                // mistake, not a missing library to run without: optional() throws them
                OpenBlas lib = OpenBlas.optional();
                boolean blas = lib != null;
                this.packed = Vectorization.packed();
                // a choice per call only with both engines; without the Vector API every call runs OpenBLAS
                minDk = blas && packed != null ? autoNativeMinDk(lib.library().coreName(), Vectorization.lanes()) : 0;
                this.matmul = blas && (minDk > 0 || packed == null) ? MatmulKernel.openBlas() : MatmulKernel.java();
            }
            default -> {
                this.matmul = null;
                this.packed = null;
            }
        }
        this.autoMinDk = minDk;
        this.blas = matmul != null && "native".equals(matmul.name()) ? OpenBlas.get() : null;
        this.javaMatmul = backend == Backend.AUTO && packed != null && blas != null ? MatmulKernel.java() : null;
        this.smallCalls = blas != null && (smallCalls != null ? smallCalls : SMALL_CALLS_SET != null
                ? SMALL_CALLS_SET : AVX512_CORES.contains(
                        blas.library().coreName().toLowerCase(java.util.Locale.ROOT)));
        this.jobs = ThreadLocal.withInitial(() -> new Job(this));
    }

    /**
     * Attention on the given backend, using every core.
     *
     * @throws dev.qkv.blas.BlasUnavailableException for {@link Backend#NATIVE} when OpenBLAS cannot be loaded, and
     *         for {@link Backend#AUTO} too when a {@code -Dqkv.blas.*} setting is refused, the library the user
     *         chose does not load, or the bundled one cannot be extracted to the {@code -Dqkv.cache.dir} given
     */
    public static Attention create(Backend backend) {
        return builder().backend(backend).build();
    }

    /**
     * Attention on the given backend with at most {@code threads} threads per call.
     *
     * @throws IllegalArgumentException when {@code threads < 1}
     * @throws dev.qkv.blas.BlasUnavailableException as {@link #create(Backend)}
     */
    public static Attention create(Backend backend, int threads) {
        return builder().backend(backend).threads(threads).build();
    }

    /** A builder: backend (default native), threads (default: the cores), workspace budget (default none). */
    public static Builder builder() {
        return new Builder();
    }

    /** Configures an {@link Attention}. */
    public static final class Builder {
        private Backend backend = Backend.NATIVE;
        private int threads = Runtime.getRuntime().availableProcessors();
        private long budget = Long.MAX_VALUE;
        private Boolean smallCalls;

        private Builder() {
        }

        /** The kernels to use. */
        public Builder backend(Backend backend) {
            this.backend = Objects.requireNonNull(backend, "backend is null");
            return this;
        }

        /**
         * At most this many threads per call (the caller included); capped at the cores. {@link Backend#REFERENCE}
         * runs on its caller alone (see {@link Attention#threads()}).
         *
         * @throws IllegalArgumentException when {@code n < 1}
         */
        public Builder threads(int n) {
            if (n < 1) {
                throw new IllegalArgumentException("threads must be >= 1, got " + n);
            }
            this.threads = Math.min(n, Runtime.getRuntime().availableProcessors());
            return this;
        }

        /**
         * At most this many bytes of scratch (off-heap workspace plus the Java backend's heap panels) per call;
         * block rows, then workers, are lowered to fit, and a call that cannot fit even one worker with 8-row
         * blocks is rejected.
         *
         * @throws IllegalArgumentException when {@code bytes < 1}
         */
        public Builder workspaceBudget(long bytes) {
            if (bytes < 1) {
                throw new IllegalArgumentException("workspace budget must be >= 1 byte, got " + bytes);
            }
            this.budget = bytes;
            return this;
        }

        /**
         * The configured attention.
         *
         * @throws dev.qkv.blas.BlasUnavailableException for {@link Backend#NATIVE} when OpenBLAS cannot be loaded,
         *         and for {@link Backend#AUTO} too when a {@code -Dqkv.blas.*} setting is refused, the library the
         *         user chose does not load, or the bundled one cannot be extracted to the {@code -Dqkv.cache.dir}
         *         given
         */
        public Attention build() {
            return new Attention(backend, threads, budget, smallCalls);
        }

        /**
         * Forces the OpenBLAS engine's products into small calls (true) or whole blocks (false) whatever the core,
         * so that tests run both on any machine; null (the default) decides by the core (see {@code SMALL_MNK}).
         */
        Builder smallCalls(Boolean on) {
            this.smallCalls = on;
            return this;
        }
    }

    /** The backend this instance runs. */
    public Backend backend() {
        return backend;
    }

    /**
     * At most this many threads run one call: the count asked for (capped at the cores), and 1 for
     * {@link Backend#REFERENCE}, which runs every call on its caller alone, whatever was asked.
     */
    public int threads() {
        return threads;
    }

    /**
     * The matrix-product kernel behind this instance: {@code native}, {@code java-vector}, {@code java-scalar},
     * or {@code reference} for the scalar oracle. For {@link Backend#AUTO} when it runs OpenBLAS for some calls
     * (see {@link #autoNativeMinDk}), which it chooses per call, the rule instead: {@code auto(native from Dk = 256
     * and 8 query rows; java-vector otherwise)}, or {@code auto(native from 8 query rows; java-vector otherwise)}
     * where native runs every head size (heap tensors, and off-heap ones in layouts the Java engine cannot read
     * in place, are exceptions); {@link #plan} names the kernel of a given call.
     */
    public String kernelName() {
        if (backend == Backend.AUTO) {
            if (autoMinDk > 0) {
                return "auto(native from " + (autoMinDk > 1 ? "Dk = " + autoMinDk + " and " : "") + AUTO_JAVA_QUERIES
                        + " query rows; java-vector otherwise)";
            }
            return packed != null ? "java-vector" : matmul.name();
        }
        return matmul == null ? "reference" : matmul.name();
    }

    /**
     * The matrix-product kernel of the blocked engine (for {@link Backend#AUTO}, the one it chose for large
     * products), or {@code null} for {@link Backend#REFERENCE}. The multi-head layer under AUTO uses it for its
     * projections when the Vector API is absent or {@link #autoNativeAtEverySize} (it measured the Java kernels
     * faster otherwise).
     */
    public MatmulKernel matmulKernel() {
        return matmul;
    }

    /**
     * True when this is {@link Backend#AUTO} with both engines and OpenBLAS measured faster than the Java kernels at
     * every head size here ({@link #autoNativeMinDk} 1: an AVX2 or AVX-512 core against Java vectors of 8 floats),
     * so that products of any shape are best run on it; false otherwise. The multi-head layer under AUTO runs its
     * projections on OpenBLAS then.
     */
    public boolean autoNativeAtEverySize() {
        return autoMinDk == 1;
    }

    /**
     * Computes attention into {@code out} with scratch kept for each thread that runs it (grown on demand,
     * then reused, so steady-state calls allocate nothing).
     *
     * @throws IllegalStateException naming the tensor and its shape ({@code k [1, 2, 70, 16]: its arena is closed})
     *                               when a tensor's arena is closed, before the call or by another thread during it
     */
    public void sdpa(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        validate(q, k, v, out, options);
        try {
            if (matmul == null) {
                reference(q, k, v, out, options);
                return;
            }
            // each thing taken is given back by its own finally, so that an error while taking the next (a stack
            // overflow or an OutOfMemoryError in enter or takeJob) leaves nothing taken
            PerThread.Lease lease = PerThread.enter();
            try {
                Job job = takeJob();
                try {
                    job.prepare(q, k, v, out, options, null, true);
                    job.execute();
                } finally {
                    // whatever stopped the call: the job, kept by the thread, must not keep its tensors
                    job.release();
                    giveBack(job);
                }
            } finally {
                PerThread.exit(lease);
            }
        } catch (IllegalStateException e) {
            throw closedDuringCall(e, q, k, v, out, options, null);
        }
    }

    /**
     * The reference computation, on the caller alone but through the pool, as one task with no helper: its thread
     * computes on a core for the whole call and must count as a core taken (see {@link WorkerPool}), or a parallel
     * call made meanwhile gets a pool thread beside it, and three threads compute on two cores. The lambda is one
     * object per call, which the reference, allocating its scratch per call, never avoided.
     */
    private static void reference(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        WorkerPool.SHARED.run((task, worker) -> ReferenceAttention.compute(q, k, v, out, options), 1, 0);
    }

    /**
     * The exception for {@code e}, thrown inside a call: when another thread closed the shared arena of one of
     * the call's tensors (or of its workspace) meanwhile, one that names it with its shape, as the checks before
     * the call do ({@code q [1, 2, 70, 16]: its arena is closed}), with {@code e} as its cause; else {@code e}.
     * Such a close surfaces deep inside a kernel, as the JDK's bare "Already closed" or as an internal product's
     * operand ({@code sgemm: c [128, 64]}, a score tile), which said nothing about which tensor it was (found by
     * ConcurrentCloseTest). Error path only: a call that succeeds never comes here.
     */
    private static IllegalStateException closedDuringCall(IllegalStateException e, Tensor q, Tensor k, Tensor v,
                                                          Tensor out, SdpaOptions options, Workspace workspace) {
        Mask mask = options.mask();
        String what = !q.isAlive() ? q.describe("q")
                : !k.isAlive() ? k.describe("k")
                : !v.isAlive() ? v.describe("v")
                : !out.isAlive() ? out.describe("out")
                : mask != null && !mask.values().isAlive() ? mask.values().describe("mask")
                : workspace != null && !workspace.segment().scope().isAlive() ? "workspace"
                : null;
        if (what == null) {
            return e;
        }
        return new IllegalStateException(what + ": its arena is closed (by another thread, during the call)", e);
    }

    /**
     * Computes attention into {@code out} using the caller's workspace, which must hold {@link #workspaceBytes}.
     * {@link Backend#REFERENCE} computes without it, but refuses the same workspaces (closed, sharing memory with
     * a tensor of the call, or in use by another call) as the other backends.
     *
     * @throws IllegalStateException when the workspace is in use by another call; or, naming the tensor (or
     *                               {@code workspace}), when an arena is closed, before the call or by another
     *                               thread during it
     */
    public void sdpa(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, Workspace workspace) {
        validate(q, k, v, out, options);
        Objects.requireNonNull(workspace, "workspace is null");
        // checked on REFERENCE too, which computes without it: the backends refuse the same calls
        workspace.requireAlive();
        SdpaArgs.noOverlapWithWorkspace(workspace.whole(), q, k, v, out, options);
        // taken on REFERENCE too, which computes without it: a workspace shared by two threads at once was refused
        // on the other backends only, so the mistake showed only once a service changed backend
        if (!workspace.acquire()) {
            throw new IllegalStateException("workspace of " + workspace.byteSize() + " bytes: in use by another"
                    + " call (a workspace serves one call at a time; give each thread its own)");
        }
        // as above, and the workspace too: one left taken would refuse every later call as "in use"
        try {
            if (matmul == null) {
                // the reference uses no workspace (the arguments are checked above)
                reference(q, k, v, out, options);
                return;
            }
            sdpaIn(q, k, v, out, options, workspace);
        } catch (IllegalStateException e) {
            throw closedDuringCall(e, q, k, v, out, options, workspace);
        } finally {
            workspace.release();
        }
    }

    /** The call of {@link #sdpa(Tensor, Tensor, Tensor, Tensor, SdpaOptions, Workspace)} once its workspace is taken. */
    private void sdpaIn(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, Workspace workspace) {
        PerThread.Lease lease = PerThread.enter();
        try {
            Job job = takeJob();
            try {
                job.prepare(q, k, v, out, options, workspace.segment(), true);
                long need = job.workspaceBytes();
                if (workspace.byteSize() < need) {
                    throw new IllegalArgumentException("workspace of " + workspace.byteSize() + " bytes is too"
                            + " small for " + q.describe("q") + ", " + k.describe("k") + ": needs " + need);
                }
                job.execute();
            } finally {
                // on every way out, not only the refusals foreseen: an exception between prepare and execute (the
                // "long overflow" of workspaceBytes, ScratchOverflowTest) left this thread's job holding the call's
                // tensors, and so their memory, until the thread's next call
                job.release();
                giveBack(job);
            }
        } finally {
            PerThread.exit(lease);
        }
    }

    /**
     * Bytes of off-heap workspace a call with these tensors needs (all workers together). Refuses what
     * {@link #sdpa} refuses, so that no size is reported for a call that cannot run.
     */
    public long workspaceBytes(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        validate(q, k, v, out, options);
        if (matmul == null) {
            return 0;
        }
        return plannedBytes(q, k, v, out, options, null);
    }

    /**
     * The checks of {@link #sdpa} before any work: the arguments, and on {@link Backend#NATIVE} off-heap tensors.
     * {@link #plan} and {@link #workspaceBytes} run them too: they reported a plan (kernel=native) and a size for
     * heap tensors that the call then refused.
     */
    private void validate(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        SdpaArgs.validate(q, k, v, out, options);
        if (backend == Backend.NATIVE) {
            SdpaArgs.requireNative(q, k, v, out);
        }
    }

    /** The workspace a call plans for with {@code shared} (null: a workspace of any size). */
    private long plannedBytes(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, MemorySegment shared) {
        Job job = takeJob();
        try {
            job.prepare(q, k, v, out, options, shared, false);
            return job.workspaceBytes();
        } finally {
            job.release();
            giveBack(job);
        }
    }

    /**
     * Bytes of {@code workspace} that this call would use: what {@link #sdpa(Tensor, Tensor, Tensor, Tensor,
     * SdpaOptions, Workspace)} checks before it runs. It can be less than {@link #workspaceBytes(Tensor, Tensor,
     * Tensor, Tensor, SdpaOptions)}, which plans for a workspace of any size: a workspace too small for the
     * grouped layout of grouped kv heads runs one head per task instead.
     */
    public long workspaceBytes(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, Workspace workspace) {
        validate(q, k, v, out, options);
        Objects.requireNonNull(workspace, "workspace is null");
        workspace.requireAlive();
        if (matmul == null) {
            return 0;
        }
        return plannedBytes(q, k, v, out, options, workspace.segment());
    }

    /**
     * Bytes of workspace that the score tiles of a call with {@code lq} query rows and {@code lk} keys can need,
     * all workers together, when no operand has to be packed (unit inner strides): an upper bound over the
     * engines this instance may run, for callers that size one workspace for many calls. It covers one query
     * head's rows per worker: a few-query call with grouped kv heads plans every head of a group together
     * ({@link #workspaceBytes(Tensor, Tensor, Tensor, Tensor, SdpaOptions)} can then exceed this bound), and given
     * a workspace of this size runs one head per task instead.
     *
     * @throws IllegalArgumentException when {@code lq} or {@code lk} is negative, or the bytes overflow a long
     */
    public long scoreTileBytes(long lq, long lk) {
        if (lq < 0 || lk < 0) {
            // no call has a negative length: the size for one row or key was returned for it
            throw new IllegalArgumentException("score tiles for lq=" + lq + ", lk=" + lk + ": lengths must be >= 0");
        }
        if (matmul == null) {
            return 0;
        }
        long q = Math.max(lq, 1);
        long k = Math.max(lk, 1);
        // Java engine and few-query path: up to BLOCK_ROWS rows of all keys; native: larger blocks, one
        // padded key block
        try {
            long javaTile = Math.multiplyExact(Math.min(BLOCK_ROWS, q), k);
            long nativeTile = Math.min(MAX_BLOCK_ROWS, q) * (Math.min(k, NATIVE_KEY_BLOCK) + TILE_PAD);
            return Math.multiplyExact(Math.multiplyExact(Math.max(javaTile, nativeTile), (long) Float.BYTES),
                    (long) threads);
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("score tiles for lq=" + lq + ", lk=" + lk + " on " + threads
                    + " threads: more bytes than a long holds");
        }
    }

    /**
     * How a call with these tensors would run, one line: kernel, workers, block rows, tasks, off-heap workspace
     * and heap scratch in bytes, for the OpenBLAS engine in small calls the per-thread copies of qᵀ
     * ({@code qTransposedBytes}, off-heap and heap together, all workers), and the budget. Refuses what
     * {@link #sdpa} refuses.
     */
    public String plan(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        validate(q, k, v, out, options);
        if (matmul == null) {
            return "kernel=reference workers=1";
        }
        Job job = takeJob();
        try {
            job.prepare(q, k, v, out, options, null, false);
            return describe(job);
        } finally {
            job.release();
            giveBack(job);
        }
    }

    private String describe(Job job) {
        return "kernel=" + job.kernelName() + " rows=" + Vectorization.rows().name() + " workers="
                + job.workers + " blockRows=" + job.tileRows + " tasks=" + job.tasks
                + (job.headTasks ? " (whole heads)" : "")
                + (job.spanBlocks > 1 ? " spanBlocks=" + job.spanBlocks : "")
                + " workspaceBytes=" + job.workspaceBytes()
                + " heapScratchBytes=" + job.heapBytes()
                + (job.transQ ? " qTransposedBytes=" + job.qTransposedFloats(job.tileRows) * Float.BYTES * job.workers
                        : "")
                + (budget == Long.MAX_VALUE ? "" : " budget=" + budget);
    }

    /**
     * This thread's job; on a virtual thread a spare one (see {@link PerThread}), which {@link #giveBack}
     * returns: a job kept per virtual thread would be made again for nearly every call. The job refers to this
     * instance only until {@link #giveBack}.
     */
    private Job takeJob() {
        Job job;
        if (!Thread.currentThread().isVirtual()) {
            job = jobs.get();
        } else {
            job = spareJobs.take();
            if (job == null) {
                job = new Job(this);
            }
        }
        job.owner = this;
        return job;
    }

    /**
     * Ends the use of a job from {@link #takeJob} (which released its tensors). A thread keeps its job between
     * calls in {@link #jobs}, whose key is weak: a job that still referred to this instance would keep the key
     * reachable, so an instance dropped by its user stayed on the heap, with its job, for the thread's life.
     */
    private void giveBack(Job job) {
        job.owner = null;
        if (Thread.currentThread().isVirtual()) {
            spareJobs.give(job);
        }
    }

    // ------------------------------------------------------------------------------------------ engine

    /** A head matrix as a product operand: offset of element [0, 0], leading dimension, storage order. */
    static final class Operand {
        MemorySegment seg;
        long offset;
        int ld;
        boolean transposed;
        long rowStep;
    }

    /** Per-thread scratch, shared by every instance: a thread runs one task at a time. */
    static final class Scratch {
        MemorySegment own;
        final Operand qo = new Operand();
        final Operand ko = new Operand();
        final Operand vo = new Operand();
        final float[] rowScale = new float[MAX_BLOCK_ROWS];
        final float[] qScale = new float[MAX_BLOCK_ROWS];
        /** Running max and sum of a span's rows ({@link Job#runOnline}); grown on first use. */
        float[] spanMax = new float[0];
        float[] spanSum = new float[0];
        final PackBuffer kPack = new PackBuffer();
        final PackBuffer vPack = new PackBuffer();
        /** Where the packed operands start in {@link #kPack} and {@link #vPack} (see {@code PackedKernels.packB}). */
        int kAt;
        int vAt;
        float[] aBuf = new float[0];
        float[] qBuf = new float[0];
        /** The normalizers of a group's heads ({@link Job#runGroup}); grown on first use. */
        float[] groupScale = new float[0];
        /** Scores of {@link Job#exactRow}; grown on first use, which only NaN outputs reach. */
        double[] exactScores = new double[0];
        /** Which (call, batch, kv head) the packs hold. */
        long packedCall = -1;
        long packedHead = -1;
        long packedQHead = -1;
        /**
         * qᵀ [Dk, rows] of one query block, for the OpenBLAS engine's small calls ({@link Job#transQ}), and the heap
         * rows it is transposed through; grown on first use and kept, like {@link #own}.
         */
        MemorySegment qT;
        float[] qRows = new float[0];
        float[] qColumn = new float[0];
        /** Which (call, batch and head, first row) {@link #qT} holds. */
        long qTCall = -1;
        long qTHead = -1;
        int qTRow = -1;

        /**
         * Drops the operands' references to the task's memory (the caller's tensors, or its workspace): the scratch
         * lives as long as its thread, a pool thread's as long as the process, and kept the last call's segments
         * reachable, so memory of an {@link Arena#ofAuto} arena that the caller had dropped was never freed (found
         * by RetentionTest). Every task sets its operands again before use.
         */
        void forget() {
            qo.seg = null;
            ko.seg = null;
            vo.seg = null;
        }

        MemorySegment ensure(long bytes) {
            if (own == null || own.byteSize() < bytes) {
                // Arena.ofAuto: the tile lives as long as its thread keeps it, and is freed by the GC after.
                own = Arena.ofAuto().allocate(Math.max(bytes, 1 << 16), 64);
            }
            return own;
        }
    }

    private static long nextCall;

    private static synchronized long nextCallId() {
        return ++nextCall;
    }

    /** One call's plan and arguments; reused by its thread, so a call allocates nothing. */
    static final class Job implements WorkerPool.Tasks {
        /** The instance whose call this is; null between calls (see {@link Attention#giveBack}). */
        private Attention owner;
        Tensor q;
        Tensor k;
        Tensor v;
        Tensor out;
        /** The call's options, for {@link #exactRow}. */
        SdpaOptions options;
        MemorySegment shared;
        int batch;
        int hq;
        int lq;
        int dk;
        int hkv;
        int lk;
        int dv;
        int group;
        float scale;
        /**
         * The alpha of the score products: the scale, or 1 when the scale is 0, whose products are then multiplied
         * by 0 afterwards ({@link #timesZero}). BLAS skips A and B when alpha is 0 (OpenBLAS at some sizes only),
         * where the reference computes 0 · (q·k): NaN for a non-finite product, as the Java kernels do.
         */
        float alpha;
        boolean causal;
        MemorySegment mSeg;
        boolean maskBool;
        long mOff;
        long ms0;
        long ms1;
        long ms2;
        long ms3;
        boolean packQ;
        boolean packK;
        boolean packV;
        boolean packOut;
        boolean usePacked;
        boolean small;
        /** Few queries on OpenBLAS: matrix-vector products per query row (see {@link #gemvRows}). */
        boolean gemv;
        /** The OpenBLAS engine's products in small calls ({@link #SMALL_MNK}, {@link #smallProducts}). */
        boolean smallCalls;
        /**
         * With {@link #smallCalls}, q and k both stored row-major: each query block is copied as qᵀ [Dk, rows]
         * ({@link Scratch#qT}, per thread, outside the workspace), so that {@code q · kᵀ} is {@code (qᵀ)ᵀ · kᵀ}, a
         * form OpenBLAS's small kernels take (see {@link #SMALL_MNK}).
         */
        boolean transQ;
        /** Keys per block of the online softmax ({@link #javaKeyBlock} or {@link #NATIVE_KEY_BLOCK}). */
        int keyBlock;
        /** OpenBLAS runs the products (the generic engine on native sgemm). */
        boolean nativeEngine;
        /**
         * AUTO's generic engine on the Java products ({@link Attention#javaMatmul}): tensors OpenBLAS may not be
         * handed, in a layout that needs a copy.
         */
        boolean genericJava;
        int tileRows;
        int blocks;
        int tasks;
        /** A task is a whole (batch, head), all its blocks, instead of one block (see {@link #plan}). */
        boolean headTasks;
        /**
         * Query blocks per span: the online path runs a span's blocks together (see {@link #runOnline}); a task
         * is a span (or, with {@link #headTasks}, every span of a head). 1 when no block of the call is online.
         */
        int spanBlocks;
        /** Spans per head: {@code ceil(blocks / spanBlocks)}. */
        int spans;
        /**
         * Few queries with grouped kv heads: a task is a (batch, kv head) and runs the query heads of its group
         * together, key block by key block, so that k and v are read from memory once per group, not once per
         * query head (see {@link #runGroup}).
         */
        boolean groupTasks;
        /** Workers planned for (each with its share of the workspace); a small call may run on fewer. */
        int workers;
        /** Under {@link WorkerPool#MIN_PARALLEL_FLOPS}: shared only with a pool thread spinning for it. */
        boolean smallShare;
        long perWorker;
        long qPackAt;
        long kPackAt;
        long vPackAt;
        long outPackAt;
        long callId;

        Job(Attention owner) {
            this.owner = owner;
        }

        String kernelName() {
            return usePacked ? "java-vector" : gemv ? "native-gemv" : matmul().name();
        }

        /** The generic engine's products: OpenBLAS, or the Java kernels (see {@link #genericJava}). */
        MatmulKernel matmul() {
            return genericJava ? owner.javaMatmul : owner.matmul;
        }

        long workspaceBytes() {
            return Math.multiplyExact(perWorker, (long) workers * Float.BYTES);
        }

        long heapBytes() {
            if (!usePacked) {
                return 0;
            }
            return (long) workers * Float.BYTES * heapFloats(tileRows);
        }

        private long heapFloats(int rows) {
            if (small) {
                return (long) rows * dk * (groupTasks ? group : 1);
            }
            PackedKernels p = owner.packed;
            // with the online path's running max and sum of a span's rows
            long span = lk > keyBlock ? 2L * SPAN_BLOCKS * rows : 0;
            return (long) packedFloats(p, dk, lk, "kᵀ") + packedFloats(p, lk, dv, "v") + 8L * Math.max(dk, lk) + span;
        }

        /**
         * {@link PackedKernels#packedSize}: the panels of a head's {@code kᵀ} or {@code v} are one Java array, so
         * they hold at most 2^31 - 1 floats, padding to the panel width included (v [Lk, 4] is padded to 32 or
         * more columns). Past that the call is refused as such, not as scratch past a long.
         */
        private int packedFloats(PackedKernels p, int rows, int cols, String what) {
            try {
                return p.packedSize(rows, cols);
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException(q.describe("q") + ", " + k.describe("k") + ", " + v.describe("v")
                        + ": the Java kernels pack " + what + " [" + rows + ", " + cols + "] of a head, its columns"
                        + " padded to whole panels, into one Java array, which holds at most 2^31 - 1 floats");
            }
        }

        /**
         * Floats of one thread's copy of qᵀ for blocks of {@code rows} ({@link #transposedQ}): the off-heap copy and
         * the heap rows it goes through (rows × Dk each, and a column); 0 without {@link #transQ}.
         */
        long qTransposedFloats(int rows) {
            return transQ ? 3L * rows * dk : 0;
        }

        void release() {
            q = null;
            k = null;
            v = null;
            out = null;
            options = null;
            shared = null;
            mSeg = null;
        }

        /**
         * Plans a call. {@code call}: the call itself, which may pack a v that holds subnormals (see
         * {@link #packSubnormalV}); else a plan for {@code workspaceBytes} or {@code plan()}, which must not depend on
         * the values.
         */
        void prepare(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, MemorySegment shared,
                     boolean call) {
            try {
                prepareFields(q, k, v, out, options, shared, call);
            } catch (ArithmeticException e) {
                release();
                throw new IllegalArgumentException(q.describe("q") + ", " + k.describe("k") + ", " + v.describe("v")
                        + ": the scratch memory this call needs has more bytes than a long holds");
            } catch (RuntimeException | Error e) {
                // a refused call (e.g. the budget) leaves no reference to its tensors in this thread's job
                release();
                throw e;
            }
        }

        private void prepareFields(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options,
                                   MemorySegment shared, boolean call) {
            this.q = q;
            this.k = k;
            this.v = v;
            this.out = out;
            this.options = options;
            this.shared = shared;
            batch = (int) q.size(0);
            hq = (int) q.size(1);
            lq = (int) q.size(2);
            dk = (int) q.size(3);
            hkv = (int) k.size(1);
            lk = (int) k.size(2);
            dv = (int) v.size(3);
            group = hkv == 0 ? 1 : Math.max(1, hq / hkv);
            scale = options.scaleFor(dk);
            alpha = scale == 0f ? 1f : scale;
            causal = options.causal();
            Mask mask = options.mask();
            mSeg = mask == null ? null : mask.values().segment();
            maskBool = mask != null && mask.kind() == Mask.Kind.BOOLEAN;
            mOff = ms0 = ms1 = ms2 = ms3 = 0;
            if (mask != null) {
                // mask strides broadcast to [B, Hq, Lq, Lk]
                Tensor m = mask.values();
                mOff = m.offset();
                // one stride at a time, no array: a call allocates nothing (a long[4] here was 48 B per masked call)
                ms0 = ReferenceAttention.maskStride(m, 0);
                ms1 = ReferenceAttention.maskStride(m, 1);
                ms2 = ReferenceAttention.maskStride(m, 2);
                ms3 = ReferenceAttention.maskStride(m, 3);
            }
            packQ = !matrixOk(q);
            packK = !matrixOk(k);
            packV = !matrixOk(v);
            packOut = !rowMajorOk(out);
            // the packed Java engine reads q, k, v in place (any unit-stride layout) and writes out row-major
            double flops = 4.0 * batch * hq * lq * lk * Math.max(dk, dv);
            // AUTO keeps heap tensors (arrays wrapped as segments) on the Java kernels: OpenBLAS needs addresses
            boolean heap = owner.autoMinDk > 0 && !(SdpaArgs.offHeap(q) && SdpaArgs.offHeap(k) && SdpaArgs.offHeap(v)
                    && SdpaArgs.offHeap(out));
            usePacked = owner.packed != null && !packQ && !packK && !packV && !packOut
                    && (owner.autoMinDk == 0 || heap || lq < AUTO_JAVA_QUERIES || dk < owner.autoMinDk);
            small = usePacked && lq < 8 && rowMajorOk(q) && rowMajorOk(k) && rowMajorOk(v);
            // AUTO with tensors OpenBLAS may not be handed, which the packed Java engine cannot read in place: the
            // generic engine on the Java products, as the README's contract has it, not a refusal
            genericJava = heap && !usePacked && owner.javaMatmul != null;
            gemv = !usePacked && !genericJava && owner.blas != null && lq < GEMV_QUERIES;
            // OpenBLAS multiplies subnormal v through microcode assists (measured 35x slower); a packed copy
            // flushes them (as packB's flushSubnormals does). The scan reads v once, against Lq/8 and more reads by
            // the products; decoding-sized calls (fewer than 8 queries) skip it. Decided after the plan, which
            // does not depend on it (packSubnormalV).
            boolean subnormalV = call && !usePacked && !genericJava && !packV && owner.blas != null
                    && lq >= AUTO_JAVA_QUERIES && hasSubnormal(v, owner.rows);
            nativeEngine = !usePacked && !genericJava && owner.blas != null;
            // only where both products can be cut into chunks of SMALL_MIN_KEYS or more: wider heads (D = 256)
            // measured 1.14-1.16x the time of whole 256-row blocks in 128-row blocks of single calls
            smallCalls = nativeEngine && owner.smallCalls
                    && (long) SMALL_ROWS * Math.max(dk, dv) * SMALL_MIN_KEYS <= SMALL_MNK;
            if (nativeEngine && owner.backend == Backend.AUTO) {
                // AUTO chose OpenBLAS (no Java kernels for this layout, or no Vector API): the same check as the
                // native backend's, before any work
                SdpaArgs.requireNative(q, k, v, out);
            }
            // A small call is planned for the instance's threads when pool threads may spin, so that its workspace
            // does not depend on the moment, and shared only if one spins when it runs (execute)
            double parallelMin = WorkerPool.SHARED.canSpin() ? SPIN_PARALLEL_MIN_FLOPS : WorkerPool.MIN_PARALLEL_FLOPS;
            int want = flops < parallelMin || owner.threads == 1 || !shareable() ? 1 : owner.threads;
            smallShare = flops < WorkerPool.MIN_PARALLEL_FLOPS;
            keyBlock = nativeEngine ? NATIVE_KEY_BLOCK : javaKeyBlock(dk, dv);
            int rows0 = BLOCK_ROWS;
            if (nativeEngine) {
                // Larger blocks while each core could still get 4 tasks (uneven causal blocks balance). From the
                // shape and the machine only, never from this call's threads: sgemm's bits depend on how the rows
                // are cut (measured), and results must not change with the thread count.
                rows0 = Math.max(BLOCK_ROWS, smallCalls ? SMALL_BLOCK_ROWS : NATIVE_BLOCK_ROWS);
                while (rows0 > BLOCK_ROWS
                        && (long) batch * hq * ((lq + rows0 - 1) / rows0) < 4L * CORES) {
                    rows0 /= 2;
                }
            }
            tileRows = Math.max(1, Math.min(rows0, lq));
            plan(want);
            if (subnormalV) {
                packSubnormalV();
            }
            callId = 0;
        }

        /**
         * Packs (and so flushes) a v that holds subnormals where the copy fits what was planned without it: the
         * budget, and the caller's workspace. The plan itself (blocks, workers, the workspace a call asks for)
         * depends on the shapes only: a workspace sized by {@code workspaceBytes} before a subnormal appeared in v
         * was refused as too small once one did, and a budget that fit dropped to 8-row blocks. Where the copy does
         * not fit, OpenBLAS reads v as it is, slowly, and its subnormals (each under 1.2e-38) stay in the sums.
         */
        private void packSubnormalV() {
            packV = true;
            boolean fits;
            long pw = 0;
            try {
                pw = layout(tileRows);
                long per = Math.multiplyExact(Math.addExact(pw, qTransposedFloats(tileRows)), (long) Float.BYTES);
                fits = !over(per, workers, owner.budget)
                        && (shared == null || !over(pw, (long) workers * Float.BYTES, shared.byteSize()));
            } catch (ArithmeticException e) {
                // a copy past a long's bytes fits nothing: v is read as it is, as when the copy exceeds the budget
                fits = false;
            }
            if (fits) {
                perWorker = pw;
            } else {
                packV = false;
                layout(tileRows);
            }
        }

        /** Pool threads may touch every segment of the call (not so for a confined arena's memory). */
        private boolean shareable() {
            WorkerPool pool = WorkerPool.SHARED;
            return pool.accessible(q.segment()) && pool.accessible(k.segment()) && pool.accessible(v.segment())
                    && pool.accessible(out.segment()) && (mSeg == null || pool.accessible(mSeg))
                    && (shared == null || pool.accessible(shared));
        }

        /**
         * {@code each · count > limit}, for positive {@code each} and {@code count}, without the product: scratch per
         * worker that fits a long can pass it times the workers (q [2^30, 2^30] packed is 2^62 bytes), and the
         * wrapped product then read as within the budget, planned two workers and threw the JDK's "long overflow"
         * from workspaceBytes, plan and sdpa (ScratchOverflowTest).
         */
        private static boolean over(long each, long count, long limit) {
            return each > limit / count;
        }

        /** Block rows and workers under the budget, and the workspace layout of one worker. */
        private void plan(int want) {
            int rowsNow = tileRows;
            headTasks = false;
            // Few queries with grouped kv heads, more than one key block of them: a task per (batch, kv head), whose
            // worker holds the group's score rows (at most MAX_BLOCK_ROWS, as any block). Within one key block a
            // head's k and v stay in the L2 for the next head of its group anyway (the layer's decode step at 1023
            // cached keys, Dh = 64, read 1.06 and 0.99 of the time grouped, one and two threads).
            groupTasks = small && group > 1 && (long) group * lq <= MAX_BLOCK_ROWS && lk > groupKeyBlock(dk, dv);
            for (;;) {
                blocks = lq == 0 ? 0 : (lq + rowsNow - 1) / rowsNow;
                tasks = groupTasks ? batch * hkv * blocks : batch * hq * blocks;
                int w = Math.max(1, Math.min(want, tasks));
                long pw = layout(rowsNow);
                // small calls with q and k both stored row-major (in place or packed so): each block's qᵀ, off
                // heap, and the heap rows it goes through; the few-query sgemv path reads q in place
                transQ = smallCalls && !gemv && dk > 0 && (packQ || rowMajorOk(q)) && (packK || rowMajorOk(k));
                long heap = usePacked ? heapFloats(rowsNow) : qTransposedFloats(rowsNow);
                long per = Math.multiplyExact(Math.addExact(pw, heap), (long) Float.BYTES);
                while (w > 1 && over(per, w, owner.budget)) {
                    w--;
                }
                // true only at one worker (the loop above took workers away until the rest fit): even one is too big
                boolean overBudget = over(per, w, owner.budget);
                if (groupTasks && (overBudget
                        || shared != null && over(pw, (long) w * Float.BYTES, shared.byteSize()))) {
                    // the group's rows do not fit the budget, or a caller's workspace sized for one head's rows
                    // per worker (as scoreTileBytes promises): a task per head, which needs one head's rows only
                    groupTasks = false;
                    continue;
                }
                if (overBudget && rowsNow <= 8 && gemv) {
                    // the sgemv path's tile holds every key; the blocked path's only a key block
                    gemv = false;
                    continue;
                }
                if (overBudget && rowsNow <= 8 && transQ) {
                    // the copy of qᵀ does not fit even 8-row blocks: whole calls on q and k in place, as before
                    // small calls (their bits, too: a budget this small changes the native engine's bits anyway)
                    smallCalls = false;
                    continue;
                }
                if (!overBudget || rowsNow <= 8) {
                    if (overBudget) {
                        throw new IllegalArgumentException("workspace budget of " + owner.budget + " bytes is too"
                                + " small for " + q.describe("q") + ", " + k.describe("k") + ": one worker needs "
                                + per);
                    }
                    tileRows = rowsNow;
                    workers = w;
                    perWorker = pw;
                    // The Java engine packs kᵀ and v per head and worker: with block tasks, the workers take blocks
                    // of the same head in turn and each packs every head (JFR, causal [1, 8, 2048, 64] on 2
                    // threads: packing 5.7% of the samples). With at least 4 heads per worker and an even share,
                    // a task is a whole head: each head is packed once and the shares stay equal. The blocks and
                    // their bits are the same either way.
                    int heads = batch * hq;
                    headTasks = !groupTasks && usePacked && w > 1 && blocks > 1 && heads >= 4 * w && heads % w == 0;
                    // Spans: with more keys than a key block, the blocks of a span share each key block's packed kᵀ
                    // and v while they are in the L2. Enough spans that each worker gets 4 (causal spans are
                    // uneven); one worker, or whole heads per task, take spans of SPAN_BLOCKS. The blocks and
                    // their bits are the same whatever the spans.
                    spanBlocks = 1;
                    // The packed Java engine only: sgemm packs its operands from k and v on every call, and the
                    // native engine measured no faster in spans ([1, 8, 2048, 64], [1, 1, 4096, 128],
                    // [1, 1, 8192, 64]: 0.93-1.03 of the time, within the noise).
                    if (usePacked && !small && lk > keyBlock && blocks > 1) {
                        long even = w == 1 || headTasks ? SPAN_BLOCKS : (long) heads * blocks / (4L * w);
                        spanBlocks = (int) Math.max(1, Math.min(Math.min(SPAN_BLOCKS, blocks), even));
                    }
                    spans = (blocks + spanBlocks - 1) / spanBlocks;
                    if (headTasks) {
                        tasks = heads;
                    } else if (!groupTasks) {
                        tasks = heads * spans;
                    }
                    return;
                }
                rowsNow = Math.max(8, rowsNow / 2);
            }
        }

        /** Floats of off-heap workspace per worker, setting the pack offsets. */
        private long layout(int rowsNow) {
            // the score tile holds one key block (see javaKeyBlock); the few-query path takes all keys at once. A
            // causal block sees fewer keys, and tileLd pads a multiple of 64 (native): bound every block
            int cols = small || gemv ? lk : Math.min(lk, keyBlock) + (nativeEngine ? TILE_PAD : 0);
            // exact: packed copies of sizes near 2^31 each can pass a long together (caught in prepare)
            long cursor = Math.multiplyExact((long) rowsNow * Math.max(cols, 1), (long) (groupTasks ? group : 1));
            qPackAt = cursor;
            cursor = Math.addExact(cursor, packQ ? (long) lq * dk : 0);
            kPackAt = cursor;
            cursor = Math.addExact(cursor, packK ? (long) lk * dk : 0);
            vPackAt = cursor;
            cursor = Math.addExact(cursor, packV ? (long) lk * dv : 0);
            outPackAt = cursor;
            cursor = Math.addExact(cursor, packOut ? (long) rowsNow * dv : 0);
            return cursor;
        }

        void execute() {
            try {
                if (tasks == 0 || dv == 0) {
                    return;
                }
                if (nativeEngine || gemv) {
                    OpenBlas blas = OpenBlas.get();
                    if (blas.threads() != 1) {
                        // qkv parallelises over tasks itself; OpenBLAS threads inside would oversubscribe
                        blas.setThreads(1);
                    }
                }
                callId = nextCallId();
                // a small call: pool thread 0 only, and only if it spins for it now (else it asks it to, for the
                // next call)
                boolean small = workers > 1 && smallShare;
                int helpers = !small ? workers - 1 : WorkerPool.SHARED.spins() ? 1 : 0;
                WorkerPool.SHARED.run(this, tasks, helpers, small && helpers > 0);
            } finally {
                release();
            }
        }

        @Override
        public void run(int task, int worker) {
            Scratch s = SCRATCH.get();
            MemorySegment ws;
            long base;
            if (shared != null) {
                ws = shared;
                base = (long) worker * perWorker;
            } else {
                ws = s.ensure(perWorker * Float.BYTES);
                base = 0;
            }
            try {
                if (groupTasks) {
                    runGroup(s, ws, base, task / hkv, task % hkv);
                } else if (headTasks) {
                    for (int sp = spans - 1; sp >= 0; sp--) {
                        runSpan(s, ws, base, task, sp);
                    }
                } else {
                    // (batch, head, span), the largest causal spans first
                    runSpan(s, ws, base, task / spans, spans - 1 - task % spans);
                }
            } finally {
                s.forget();
            }
        }

        /**
         * The blocks of span {@code sp} of head {@code bh}: a block whose keys fit one key block by itself
         * ({@link #runBlock}), the others together by {@link #runOnline}.
         */
        private void runSpan(Scratch s, MemorySegment ws, long base, int bh, int sp) {
            final int lo = sp * spanBlocks;
            final int hi = Math.min(blocks, lo + spanBlocks);
            if (hi - lo == 1) {
                runBlock(s, ws, base, bh, lo);
                return;
            }
            boolean online = false;
            for (int blk = hi - 1; blk >= lo; blk--) {
                if (keysOf(blk) > keyBlock) {
                    online = true;
                } else {
                    runBlock(s, ws, base, bh, blk);
                }
            }
            if (online) {
                int b = bh / hq;
                int h = bh % hq;
                runOnline(s, ws, base, b, h, lo, hi);
                for (int blk = lo; blk < hi; blk++) {
                    if (keysOf(blk) > keyBlock) {
                        redoNaNRows(s, b, h, blk * tileRows, rowsOf(blk));
                    }
                }
            }
        }

        private void runBlock(Scratch s, MemorySegment ws, long base, int bh, int blk) {
            int b = bh / hq;
            int h = bh % hq;
            if (usePacked) {
                runPacked(s, ws, base, b, h, blk);
            } else {
                runGeneric(s, ws, base, b, h, blk);
            }
            redoNaNRows(s, b, h, blk * tileRows, rowsOf(blk));
        }

        /**
         * Rows of this block whose output holds a NaN are computed again, one at a time, by {@link #exactRow}. In
         * the blocked products a key a row may not attend (masked, past its causal limit, or with a weight that
         * underflowed to 0) still enters as {@code 0 · v}, which is NaN where v holds NaN or ±Inf: without this a
         * non-finite value of v would reach rows that cannot see it, depending on which rows share a block. Every
         * such row holds a NaN, and a row without one was not reached, so finite rows keep the fast path's bits.
         * Rows holding ±Inf are computed again too: the products sum unnormalized weights (up to Lk in all) times v
         * and normalize afterwards, so a finite v above about 3.4e38 / Lk overflows there, where the weighted mean
         * itself is finite (an Inf that v itself puts in a row comes out of the exact path as it would here). The
         * check is one vectorized pass over rows the task has just written (measured about 10 ns per row of
         * 64 floats even from memory: 0.3% of a causal [1, 8, 2048, 64] call; a scan of v instead would cost a
         * decoding step as much as its product with v).
         */
        private void redoNaNRows(Scratch s, int b, int h, int i0, int rows) {
            final Tensor o = out;
            final MemorySegment os = o.segment();
            final long row0 = headAt(o, b, h);
            final long cs = o.stride(3);
            if (cs == 1 && !owner.rows.anyNonFinite(os, row0 + (long) i0 * o.stride(2), o.stride(2), rows, dv)) {
                // the usual case, in one pass over the block
                return;
            }
            for (int r = 0; r < rows; r++) {
                long at = row0 + (long) (i0 + r) * o.stride(2);
                boolean nonFinite = false;
                if (cs == 1) {
                    nonFinite = owner.rows.anyNonFinite(os, at, dv);
                } else {
                    for (int d = 0; d < dv && !nonFinite; d++) {
                        nonFinite = !Float.isFinite(os.getAtIndex(F, at + d * cs));
                    }
                }
                if (nonFinite) {
                    exactRow(s, b, h, i0 + r);
                }
            }
        }

        /**
         * Output row {@code i} of head {@code (b, h)} read off the definition by {@link ReferenceAttention#row}:
         * scores in double and every key whose weight is 0 in float (masked, past the causal limit, or
         * underflowed) skipped, so a NaN or Inf of v reaches exactly the rows that give it a weight. Slow
         * (scalar), and only run for rows that came out NaN.
         */
        private void exactRow(Scratch s, int b, int h, int i) {
            if (s.exactScores.length < lk) {
                s.exactScores = new double[lk];
            }
            ReferenceAttention.row(q, k, v, out, options, b, h, i, s.exactScores);
        }

        /** Query rows of block {@code blk}: {@link #tileRows}, fewer in the last. */
        private int rowsOf(int blk) {
            return Math.min(tileRows, lq - blk * tileRows);
        }

        /** Float offset of the mask's rows for head {@code h} of batch {@code b} (its broadcast dims stride 0). */
        private long maskAt(int b, int h) {
            return mOff + b * ms0 + h * ms1;
        }

        /** Keys that some row of block {@code blk} may see ({@link #keysFor}). */
        private int keysOf(int blk) {
            return keysFor(blk * tileRows, rowsOf(blk));
        }

        private int keysFor(int i0, int rows) {
            // keys any row of this block may see: causal rows end at i + (Lk - Lq)
            return causal ? clamp((long) i0 + rows + (lk - lq), 0, lk) : lk;
        }

        private int limitFor(int i, int keys) {
            return causal ? clamp((long) i + 1 + (lk - lq), 0, keys) : keys;
        }

        /**
         * q [Lq, Dk], k [Lk, Dk], v [Lk, Dv] of this (batch, head) into {@code s}, in place or packed (once per
         * head).
         */
        private void genericOperands(Scratch s, MemorySegment ws, long base, int b, int h) {
            final int g = h / group;
            long head = ((long) b * hq + h);
            long kvHead = ((long) b * hkv + g);
            boolean fresh = s.packedCall != callId;
            // only v's copy flushes subnormals (see operand): q and k are computed as they are
            operand(s.qo, q, b, h, packQ && (fresh || s.packedQHead != head), ws, base + qPackAt, packQ, false);
            operand(s.ko, k, b, g, packK && (fresh || s.packedHead != kvHead), ws, base + kPackAt, packK, false);
            operand(s.vo, v, b, g, packV && (fresh || s.packedHead != kvHead), ws, base + vPackAt, packV, true);
            s.packedCall = callId;
            s.packedHead = kvHead;
            s.packedQHead = head;
        }

        /**
         * Rows {@code [i0, i0 + rows)} of {@code s.qo} (row-major) copied to {@link Scratch#qT} as qᵀ [Dk, rows],
         * once per call, head and block; {@code s.qo} is left as it was. Through heap arrays: the rows in by bulk
         * copies, each column gathered and out by one.
         */
        private MemorySegment transposedQ(Scratch s, long head, int i0, int rows) {
            final int n = rows * dk;
            if (s.qT == null || s.qT.byteSize() < (long) n * Float.BYTES) {
                // exactly what the budget counts (plan): no minimum size
                s.qT = Arena.ofAuto().allocate((long) n * Float.BYTES, 64);
                s.qTCall = -1;
            }
            if (s.qRows.length < n) {
                s.qRows = new float[n];
            }
            if (s.qColumn.length < rows) {
                s.qColumn = new float[rows];
            }
            if (s.qTCall != callId || s.qTHead != head || s.qTRow != i0) {
                final Operand qo = s.qo;
                final float[] in = s.qRows;
                final float[] col = s.qColumn;
                for (int r = 0; r < rows; r++) {
                    MemorySegment.copy(qo.seg, F, (qo.offset + (i0 + r) * qo.rowStep) * Float.BYTES, in, r * dk, dk);
                }
                for (int c = 0; c < dk; c++) {
                    for (int r = 0; r < rows; r++) {
                        col[r] = in[r * dk + c];
                    }
                    MemorySegment.copy(col, 0, s.qT, F, (long) c * rows * Float.BYTES, rows);
                }
                s.qTCall = callId;
                s.qTHead = head;
                s.qTRow = i0;
            }
            return s.qT;
        }

        private void runGeneric(Scratch s, MemorySegment ws, long base, int b, int h, int blk) {
            final int i0 = blk * tileRows;
            final int rows = rowsOf(blk);
            final MatmulKernel mm = matmul();
            genericOperands(s, ws, base, b, h);
            final Operand vo = s.vo;
            final long outHead = headAt(out, b, h);
            final long maskHead = maskAt(b, h);
            final int keys = keysFor(i0, rows);
            final long outRows = packOut ? base + outPackAt : outHead + i0 * out.stride(2);
            final MemorySegment outSeg = packOut ? ws : out.segment();
            final int ldo = packOut ? dv : (int) ld(out.stride(2), dv);
            if (keys == 0) {
                zeroRows(outSeg, outRows, rows, dv, ldo);
            } else if (gemv) {
                gemvRows(s, ws, base, i0, rows, keys, maskHead, outSeg, outRows, ldo);
            } else if (keys > keyBlock) {
                runOnline(s, ws, base, b, h, blk, blk + 1);
            } else {
                final int lds = tileLd(keys);
                scores(s, mm, ws, base, lds, (long) b * hq + h, i0, rows, 0, keys);
                // mask, row max, exp and sum; the 1/sum is applied to the output rows
                softmaxRows(ws, base, lds, i0, rows, keys, maskHead, s.rowScale);
                // out_block [rows, Dv] = p · v, then each row times its 1/sum
                product(mm, Transpose.NO, Transpose.NO.flipIf(vo.transposed), rows, dv, keys, 1f,
                        ws, base, lds, vo.seg, vo.offset, vo.ld, outSeg, outRows, ldo);
                for (int r = 0; r < rows; r++) {
                    if (s.rowScale[r] == 0f) {
                        // no score above -inf: zeros, even where v holds NaN or Inf (0 · NaN would be NaN), or
                        // the exact recomputation where the scores overflowed (emptyRow)
                        emptyRow(outSeg, outRows + (long) r * ldo, i0 + r, keys, maskHead);
                    } else {
                        owner.rows.scaleRow(outSeg, outRows + (long) r * ldo, dv, s.rowScale[r]);
                    }
                }
            }
            if (packOut) {
                unpackRows(ws, base + outPackAt, out, b, h, i0, rows, dv);
            }
        }

        /**
         * {@code scores [rows, cols] = scale · q[i0, i0 + rows) · kᵀ[:, j0, j0 + cols)} into the tile at {@code base}
         * (leading dimension {@code lds}), all zero when Dk = 0: from the block's qᵀ copy ({@link #transQ}) or q in
         * place, then {@link #timesZero}. The score product of a block of keys, for the whole-block and the online
         * paths alike.
         */
        private void scores(Scratch s, MatmulKernel mm, MemorySegment ws, long base, int lds, long head, int i0,
                            int rows, int j0, int cols) {
            final Operand qo = s.qo;
            final Operand ko = s.ko;
            if (dk == 0) {
                zeroRows(ws, base, rows, cols, lds);
                return;
            }
            if (transQ) {
                product(mm, Transpose.YES, Transpose.YES, rows, cols, dk, alpha, transposedQ(s, head, i0, rows), 0,
                        rows, ko.seg, ko.offset + j0 * ko.rowStep, ko.ld, ws, base, lds);
            } else {
                product(mm, Transpose.NO.flipIf(qo.transposed), Transpose.YES.flipIf(ko.transposed), rows, cols, dk,
                        alpha, qo.seg, qo.offset + i0 * qo.rowStep, qo.ld, ko.seg, ko.offset + j0 * ko.rowStep,
                        ko.ld, ws, base, lds);
            }
            timesZero(ws, base, rows, cols, lds);
        }

        /**
         * With a scale of 0 the score products ran with alpha 1: multiplies the scores {@code [rows, cols]} by 0,
         * which keeps NaN and turns ±Inf into NaN, as the reference's 0 · (q·k) does. Nothing otherwise.
         */
        private void timesZero(MemorySegment ws, long base, int rows, int cols, int ld) {
            if (scale != 0f) {
                return;
            }
            for (int r = 0; r < rows; r++) {
                for (int j = 0; j < cols; j++) {
                    long at = base + (long) r * ld + j;
                    ws.setAtIndex(F, at, ws.getAtIndex(F, at) * scale);
                }
            }
        }

        /**
         * {@code C = alpha · op(A) · op(B)}: OpenBLAS straight through {@link OpenBlas#sgemm} (which checks every
         * argument), else the kernel. Not through {@link MatmulKernel#matmul} for native: that checks the
         * arguments a second time, and the deeper call chain kept C2 from inlining the downcall, so its argument
         * slices escaped (120 B per product at [1, 1, 4096, 128]).
         */
        private void product(MatmulKernel mm, Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                             MemorySegment a, long aOff, int lda, MemorySegment b, long bOff, int ldb,
                             MemorySegment c, long cOff, int ldc) {
            product(mm, ta, tb, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, 0f, c, cOff, ldc);
        }

        private void product(MatmulKernel mm, Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                             MemorySegment a, long aOff, int lda, MemorySegment b, long bOff, int ldb, float beta,
                             MemorySegment c, long cOff, int ldc) {
            OpenBlas blas = nativeEngine ? owner.blas : null;
            if (blas != null && smallCalls && (long) m * n * k > SMALL_MNK) {
                smallProducts(blas, ta, tb, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
            } else if (blas != null) {
                blas.sgemm(ta, tb, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
            } else {
                mm.matmul(ta, tb, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
            }
        }

        /**
         * {@code C = alpha · op(A) · op(B) + beta · C} as OpenBLAS calls of at most {@link #SMALL_MNK}
         * multiply-adds each, which its small-matrix kernels take without packing: rows in runs of
         * {@link #SMALL_ROWS}, and the longer of {@code n} and {@code k} (the keys: q · kᵀ's columns, p · v's
         * reduction) in equal chunks of a multiple of 16; the chunks of a reduction after the first add to C.
         * The cut depends on the shapes only, so the bits do not change with the threads. Chunks are at least
         * {@link #SMALL_MIN_KEYS} wide: {@link #smallCalls} is on only where {@code SMALL_ROWS · max(Dk, Dv)} times
         * that fits the bound, and the rows times the shorter of {@code n} and {@code k} never exceed it.
         */
        private void smallProducts(OpenBlas blas, Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                                   MemorySegment a, long aOff, int lda, MemorySegment b, long bOff, int ldb,
                                   float beta, MemorySegment c, long cOff, int ldc) {
            final int rs = Math.min(m, SMALL_ROWS);
            final boolean alongN = n >= k;
            final int len = alongN ? n : k;
            final long other = (long) rs * (alongN ? k : n);
            int chunks = 1;
            int chunk = len;
            if (other * len > SMALL_MNK) {
                final long most = SMALL_MNK / other / 16 * 16;
                chunks = (int) ((len + most - 1) / most);
                chunk = (len + chunks - 1) / chunks;
                chunk = Math.min(len, (chunk + 15) / 16 * 16);
            }
            for (int i = 0; i < m; i += rs) {
                final int mi = Math.min(rs, m - i);
                // op(A) [m, k]: row i starts at i·lda (stored [m, k]) or at column i (stored [k, m])
                final long aRow = aOff + (ta == Transpose.NO ? (long) i * lda : i);
                final long cRow = cOff + (long) i * ldc;
                for (int j = 0; j < len; j += chunk) {
                    final int nj = Math.min(chunk, len - j);
                    if (alongN) {
                        // op(B) [k, n]: column j at j (stored [k, n]) or row j·ldb (stored [n, k])
                        final long bCol = bOff + (tb == Transpose.NO ? j : (long) j * ldb);
                        blas.sgemm(ta, tb, mi, nj, k, alpha, a, aRow, lda, b, bCol, ldb, beta, c, cRow + j, ldc);
                    } else {
                        // reduction steps [j, j + nj): op(A)'s columns, op(B)'s rows
                        final long aStep = aRow + (ta == Transpose.NO ? j : (long) j * lda);
                        final long bStep = bOff + (tb == Transpose.NO ? (long) j * ldb : j);
                        blas.sgemm(ta, tb, mi, n, nj, alpha, a, aStep, lda, b, bStep, ldb, j == 0 ? beta : 1f, c,
                                cRow, ldc);
                    }
                }
            }
        }

        /**
         * The few-query native path: per query row, {@code scores = scale · K · q_r} and
         * {@code out_r = Vᵀ · p_r / Σ p_r} as OpenBLAS matrix-vector products on k and v in place. sgemm with one
         * row packs kᵀ and v on every call (2.7-4.4x the time of reading them, bench/RESULTS.md, round 1, table 3); sgemv
         * reads them once. All keys at once: the score tile holds {@code rows × Lk} floats (rows < 8).
         */
        private void gemvRows(Scratch s, MemorySegment ws, long base, int i0, int rows, int keys, long maskHead,
                              MemorySegment outSeg, long outRows, int ldo) {
            final OpenBlas blas = owner.blas;
            final Operand qo = s.qo;
            final Operand ko = s.ko;
            final Operand vo = s.vo;
            // q row i: a row of [Lq, Dk] (unit stride), or a column of the stored [Dk, Lq] (stride ld)
            final int incq = qo.transposed ? qo.ld : 1;
            for (int r = 0; r < rows; r++) {
                final long qAt = qo.offset + (i0 + r) * qo.rowStep;
                final long sAt = base + (long) r * keys;
                // scores [keys] = scale · K [keys, Dk] · q_r (all zero when Dk = 0)
                if (dk == 0) {
                    zeroRows(ws, sAt, 1, keys, keys);
                } else if (ko.transposed) {
                    blas.sgemv(Transpose.YES, dk, keys, alpha, ko.seg, ko.offset, ko.ld, qo.seg, qAt, incq, 0f,
                            ws, sAt, 1);
                    timesZero(ws, sAt, 1, keys, keys);
                } else {
                    blas.sgemv(Transpose.NO, keys, dk, alpha, ko.seg, ko.offset, ko.ld, qo.seg, qAt, incq, 0f,
                            ws, sAt, 1);
                    timesZero(ws, sAt, 1, keys, keys);
                }
            }
            // mask, row max, exp and sum
            softmaxRows(ws, base, keys, i0, rows, keys, maskHead, s.rowScale);
            for (int r = 0; r < rows; r++) {
                final float inv = s.rowScale[r];
                final long oAt = outRows + (long) r * ldo;
                if (inv == 0f) {
                    // no score above -inf: zeros, even where v holds NaN or Inf (0 · NaN would be NaN), or the
                    // exact recomputation where the scores overflowed (emptyRow)
                    emptyRow(outSeg, oAt, i0 + r, keys, maskHead);
                } else if (vo.transposed) {
                    // out_r [Dv] = V [Dv, keys] · p_r / sum
                    blas.sgemv(Transpose.NO, dv, keys, inv, vo.seg, vo.offset, vo.ld, ws, base + (long) r * keys, 1,
                            0f, outSeg, oAt, 1);
                } else {
                    // out_r [Dv] = V [keys, Dv]ᵀ · p_r / sum
                    blas.sgemv(Transpose.YES, keys, dv, inv, vo.seg, vo.offset, vo.ld, ws, base + (long) r * keys, 1,
                            0f, outSeg, oAt, 1);
                }
            }
        }

        /**
         * Leading dimension of a score tile of {@code keys} columns: for the native engine a row of a multiple of
         * 64 floats (256 B) is padded by one cache line, so that consecutive tile rows do not fall into the same
         * few L1 sets when sgemm writes a column of them (measured q · kᵀ per head at 256 × 2048: 3.84 → 3.62
         * ms).
         */
        private int tileLd(int keys) {
            return nativeEngine && keys % 64 == 0 ? keys + TILE_PAD : keys;
        }

        private void softmaxRows(MemorySegment ws, long base, int lds, int i0, int rows, int keys, long maskHead,
                                 float[] inv) {
            // every row's max first, then the exponentials: a row's exponentials wait on its max (a reduction
            // over the row), and with the passes apart that wait overlaps other rows' work. Measured on a
            // [64, 2048] tile (its own harness, best of 4 JVMs): 3.7 ns per 16 scores this way, 4.3 one row
            // ahead, 4.35 row by row; on [64, 128] 5.9, 5.8 and 6.3.
            rowMaxes(ws, base, lds, i0, rows, keys, 0, keys, maskHead, inv);
            rowWeights(ws, base, lds, i0, 0, rows, keys, inv, null);
        }

        /**
         * The second pass of {@link #softmaxRows} ({@link #rowMaxes} is the first) for rows {@code [r0, r1)}: the
         * weights from the max in {@code inv[r]}, which becomes the row's normalizer; the weights go back into the
         * tile, or, with {@code dst}, to {@code dst[(r - r0)·keys ...]}.
         */
        private void rowWeights(MemorySegment ws, long base, int lds, int i0, int r0, int r1, int keys, float[] inv,
                                float[] dst) {
            final RowKernels rk = owner.rows;
            for (int r = r0; r < r1; r++) {
                long at = base + (long) r * lds;
                int lim = limitFor(i0 + r, keys);
                inv[r] = RowKernels.normalizer(dst == null ? rk.expFrom(ws, at, keys, lim, inv[r])
                        : rk.expInto(ws, at, keys, lim, inv[r], dst, (r - r0) * keys));
            }
        }

        /**
         * The few-query path ({@link #runPacked}'s {@code small} branch) for the {@code group} query heads of kv head
         * {@code g}, all rows (one block): per key block of {@link #GROUP_KEY_BLOCK_BYTES}, every head's scores,
         * so that the block of k comes from memory for the first head and from the L2 for the others; every head's
         * softmax; then per key block every head's p·v, the partial sums kept in the output rows
         * ({@code PackedKernels.axpyRowsBlock}). Each head's operations and their order are those of
         * {@code runPacked}, so the bits are the same.
         */
        private void runGroup(Scratch s, MemorySegment ws, long base, int b, int g) {
            final PackedKernels pk = owner.packed;
            final int rows = lq;
            final int keys = keysFor(0, rows);
            final int ldo = (int) ld(out.stride(2), dv);
            final MemorySegment outSeg = out.segment();
            final int h0 = g * group;
            if (keys == 0) {
                for (int hh = 0; hh < group; hh++) {
                    zeroRows(outSeg, headAt(out, b, h0 + hh), rows, dv, ldo);
                }
                return;
            }
            if (s.groupScale.length < group * rows) {
                s.groupScale = new float[group * rows];
            }
            final float[] inv = s.groupScale;
            for (int hh = 0; hh < group; hh++) {
                scaledQRows(s, hh * rows, headAt(q, b, h0 + hh), rows);
            }
            final long kBase = headAt(k, b, g);
            final long vBase = headAt(v, b, g);
            final int ldk = (int) ld(k.stride(2), dk);
            final int ldv = (int) ld(v.stride(2), dv);
            final int kb = groupKeyBlock(dk, dv);
            final long headFloats = (long) rows * keys;
            for (int j0 = 0; j0 < keys; j0 += kb) {
                int nk = Math.min(kb, keys - j0);
                for (int hh = 0; hh < group; hh++) {
                    pk.dotRows(s.qBuf, hh * rows * dk, dk, rows, k.segment(), kBase + (long) j0 * ldk, ldk, nk, dk,
                            ws, base + hh * headFloats + j0, keys);
                }
            }
            for (int hh = 0; hh < group; hh++) {
                softmaxRows(ws, base + hh * headFloats, keys, 0, rows, keys, maskAt(b, h0 + hh), s.rowScale);
                System.arraycopy(s.rowScale, 0, inv, hh * rows, rows);
            }
            for (int j0 = 0; j0 < keys; j0 += kb) {
                int nk = Math.min(kb, keys - j0);
                for (int hh = 0; hh < group; hh++) {
                    long outRows = headAt(out, b, h0 + hh);
                    pk.axpyRowsBlock(ws, base + hh * headFloats + j0, keys, rows, v.segment(),
                            vBase + (long) j0 * ldv, ldv, nk, dv, j0 == 0, j0 + nk >= keys, inv, hh * rows, outSeg,
                            outRows, ldo);
                }
            }
            for (int hh = 0; hh < group; hh++) {
                int h = h0 + hh;
                System.arraycopy(inv, hh * rows, s.rowScale, 0, rows);
                zeroMaskedRows(s.rowScale, rows, outSeg, headAt(out, b, h), dv, ldo, 0, keys, maskAt(b, h));
                redoNaNRows(s, b, h, 0, rows);
            }
        }

        /**
         * {@code rows} query rows from float offset {@code qRow0} (row stride {@code q.stride(2)}), times
         * {@code scale}, into {@code s.qBuf} row-major {@code [·, Dk]} from row {@code at}; the buffer grows to fit.
         */
        private void scaledQRows(Scratch s, int at, long qRow0, int rows) {
            int qn = (at + rows) * dk;
            if (s.qBuf.length < qn) {
                s.qBuf = java.util.Arrays.copyOf(s.qBuf, qn);
            }
            for (int r = 0; r < rows; r++) {
                long qr = qRow0 + r * q.stride(2);
                int to = (at + r) * dk;
                for (int p = 0; p < dk; p++) {
                    s.qBuf[to + p] = scale * q.segment().getAtIndex(F, qr + p * q.stride(3));
                }
            }
        }

        private void runPacked(Scratch s, MemorySegment ws, long base, int b, int h, int blk) {
            final PackedKernels pk = owner.packed;
            final int g = h / group;
            final int i0 = blk * tileRows;
            final int rows = rowsOf(blk);
            final long outHead = headAt(out, b, h);
            final int ldo = (int) ld(out.stride(2), dv);
            final long outRows = outHead + i0 * out.stride(2);
            final MemorySegment outSeg = out.segment();
            final long maskHead = maskAt(b, h);
            final int keys = keysFor(i0, rows);
            if (keys == 0) {
                zeroRows(outSeg, outRows, rows, dv, ldo);
                return;
            }
            final long qBase = headAt(q, b, h);
            final float[] inv = s.rowScale;
            if (small) {
                // few queries: dot products and row updates straight from memory, nothing to pack
                final long kBase = headAt(k, b, g);
                final long vBase = headAt(v, b, g);
                scaledQRows(s, 0, qBase + i0 * q.stride(2), rows);
                pk.dotRows(s.qBuf, 0, dk, rows, k.segment(), kBase, (int) ld(k.stride(2), dk), keys, dk,
                        ws, base, keys);
                softmaxRows(ws, base, keys, i0, rows, keys, maskHead, inv);
                // p·v in key blocks of runGroup's size, so that a task per head gives runGroup's bits
                pk.axpyRows(ws, base, keys, rows, v.segment(), vBase, (int) ld(v.stride(2), dv), keys, dv,
                        groupKeyBlock(dk, dv), inv, outSeg, outRows, ldo);
                zeroMaskedRows(inv, rows, outSeg, outRows, dv, ldo, i0, keys, maskHead);
                return;
            }
            if (keys > keyBlock) {
                runOnline(s, ws, base, b, h, blk, blk + 1);
                return;
            }
            packHead(s, b, g);
            boolean qRow = rowMajorOk(q);
            int ldq = qRow ? (int) ld(q.stride(2), dk) : (int) ld(q.stride(3), lq);
            long qAt = qRow ? qBase + i0 * q.stride(2) : qBase + i0;
            java.util.Arrays.fill(inv, 0, rows, scale);
            // scores [rows, keys] = scale · q_block · kᵀ
            pk.gemm(!qRow, q.segment(), qAt, ldq, rows, keys, dk, s.aBuf, s.kPack.array(), s.kAt, dk, lk, 0, 0, inv,
                    0f, ws, base, keys);
            // mask and row max, every row first (see softmaxRows)
            rowMaxes(ws, base, keys, i0, rows, keys, 0, keys, maskHead, inv);
            // then per register block of rows: their weights straight into the kernel's A buffer (no copy of
            // the tile's rows, and A is in L1), and out_block [mr, Dv] = p · v / sum
            for (int i = 0; i < rows; ) {
                final int mr = pk.sliverRows(dv, rows - i);
                rowWeights(ws, base, keys, i0, i, i + mr, keys, inv, s.aBuf);
                pk.gemmRows(s.aBuf, i, mr, dv, keys, s.vPack.array(), s.vAt, lk, dv, 0, 0, inv, 0f, outSeg,
                        outRows + (long) i * ldo, ldo);
                i += mr;
            }
            zeroMaskedRows(inv, rows, outSeg, outRows, dv, ldo, i0, keys, maskHead);
        }

        /** kᵀ [Dk, Lk] and v [Lk, Dv] of kv head {@code g} into panels, once per head and worker, and A's buffer. */
        private void packHead(Scratch s, int b, int g) {
            final PackedKernels pk = owner.packed;
            long kvHead = ((long) b * hkv + g);
            if (s.packedCall != callId || s.packedHead != kvHead) {
                final long kBase = headAt(k, b, g);
                final long vBase = headAt(v, b, g);
                s.kPack.ensure(pk.packedSize(dk, lk));
                s.vPack.ensure(pk.packedSize(lk, dv));
                boolean kRow = rowMajorOk(k);
                s.kAt = pk.packB(kRow, k.segment(), kBase,
                        kRow ? (int) ld(k.stride(2), dk) : (int) ld(k.stride(3), lk), dk, lk, false, s.kPack);
                boolean vRow = rowMajorOk(v);
                s.vAt = pk.packB(!vRow, v.segment(), vBase,
                        vRow ? (int) ld(v.stride(2), dv) : (int) ld(v.stride(3), lk), lk, dv, true, s.vPack);
                s.packedCall = callId;
                s.packedHead = kvHead;
            }
            int an = 8 * Math.max(dk, lk);
            if (s.aBuf.length < an) {
                s.aBuf = new float[an];
            }
        }

        /**
         * The product over keys in blocks of {@code keyBlock} ({@link #javaKeyBlock}; {@link #NATIVE_KEY_BLOCK} on
         * the generic engine) with an online softmax: per row a running max {@code m} and sum {@code l}; each
         * block's weights are {@code exp(s - m_new)}, and what earlier blocks put in {@code out} and {@code l} is
         * rescaled by {@code exp(m_old - m_new)} ({@link RowKernels#rescale}: 0 where the kernels' exponential gives
         * a key that far below the max weight 0, so a key counts as in one pass) before the block's {@code p · v} is
         * added. The score tile then holds
         * {@code rows × keyBlock} floats (L2-sized) however long the sequence. Masks and causal limits apply per
         * block; a row no key may see stays at zeros.
         * <p>
         * It runs the query blocks {@code [lo, hi)} of head {@code h} that see more than one key block, key block
         * by key block: every block's step for keys {@code [j0, j0 + keyBlock)} before any block's next, so that
         * the key block's packed kᵀ and v come from the L2 for all blocks but the first (measured at [1, 1, 4096,
         * 128]: see bench/RESULTS.md, round 8). Each row's operations and their order are those of running its
         * block alone, so the bits do not depend on the span. The generic engine runs one block at a time (see
         * {@link #plan}).
         */
        private void runOnline(Scratch s, MemorySegment ws, long base, int b, int h, int lo, int hi) {
            if (usePacked) {
                packHead(s, b, h / group);
            } else {
                genericOperands(s, ws, base, b, h);
            }
            final int n = (hi - lo) * tileRows;
            if (s.spanMax.length < n) {
                s.spanMax = new float[n];
                s.spanSum = new float[n];
            }
            final float[] max = s.spanMax;
            final float[] sum = s.spanSum;
            java.util.Arrays.fill(max, 0, n, Float.NEGATIVE_INFINITY);
            java.util.Arrays.fill(sum, 0, n, 0f);
            java.util.Arrays.fill(s.qScale, 0, tileRows, scale);
            final long outHead = headAt(out, b, h);
            // the generic engine packs a block's output rows when out has no unit stride (a span is then one block)
            final MemorySegment outSeg = packOut ? ws : out.segment();
            final int ldo = packOut ? dv : (int) ld(out.stride(2), dv);
            final long maskHead = maskAt(b, h);
            // the span's last block sees the most keys (causal rows see more keys further down)
            final int spanKeys = keysOf(hi - 1);
            for (int j0 = 0; j0 < spanKeys; j0 += keyBlock) {
                for (int blk = lo; blk < hi; blk++) {
                    final int i0 = blk * tileRows;
                    final int rows = rowsOf(blk);
                    final int keys = keysOf(blk);
                    if (keys <= keyBlock || j0 >= keys) {
                        // one key block: runBlock's single pass; or no keys left for this block
                        continue;
                    }
                    final long outRows = packOut ? base + outPackAt : outHead + i0 * out.stride(2);
                    if (usePacked) {
                        packedOnlineStep(s, ws, base, b, h, i0, rows, keys, j0, maskHead, outSeg, outRows, ldo, max,
                                sum, (blk - lo) * tileRows);
                    } else {
                        genericOnlineStep(s, matmul(), ws, base, (long) b * hq + h, i0, rows, keys, j0,
                                maskHead, outSeg, outRows, ldo, max, sum, (blk - lo) * tileRows);
                    }
                }
            }
            for (int blk = lo; blk < hi; blk++) {
                if (keysOf(blk) > keyBlock) {
                    onlineFinish(rowsOf(blk), sum, (blk - lo) * tileRows, s.rowScale, outSeg,
                            packOut ? base + outPackAt : outHead + (long) blk * tileRows * out.stride(2), ldo,
                            blk * tileRows, keysOf(blk), maskHead);
                }
            }
        }

        /**
         * One key block {@code [j0, j0 + keyBlock)} of {@link #runOnline} on the packed Java engine: the scores,
         * then per register block of rows their weights into the kernel's A buffer (running max and sum
         * {@code max[so + r]}, {@code sum[so + r]} updated, the output rows rescaled) and the block's {@code p · v}
         * added to them.
         */
        private void packedOnlineStep(Scratch s, MemorySegment ws, long base, int b, int h, int i0, int rows,
                                      int keys, int j0, long maskHead, MemorySegment outSeg, long outRows, int ldo,
                                      float[] max, float[] sum, int so) {
            final PackedKernels pk = owner.packed;
            final int nk = Math.min(keyBlock, keys - j0);
            final boolean qRow = rowMajorOk(q);
            final int ldq = qRow ? (int) ld(q.stride(2), dk) : (int) ld(q.stride(3), lq);
            final long qBase = headAt(q, b, h);
            final long qAt = qRow ? qBase + i0 * q.stride(2) : qBase + i0;
            // scores [rows, nk] = scale · q_block · kᵀ[:, j0, j0 + nk)
            pk.gemm(!qRow, q.segment(), qAt, ldq, rows, nk, dk, s.aBuf, s.kPack.array(), s.kAt, dk, lk, 0, j0,
                    s.qScale, 0f, ws, base, nk);
            rowMaxes(ws, base, nk, i0, rows, keys, j0, nk, maskHead, s.rowScale);
            for (int i = 0; i < rows; ) {
                final int mr = pk.sliverRows(dv, rows - i);
                onlineWeights(ws, base, nk, i0, i, i + mr, keys, j0, nk, max, sum, so, s.rowScale, outSeg, outRows,
                        ldo, s.aBuf);
                pk.gemmRows(s.aBuf, i, mr, dv, nk, s.vPack.array(), s.vAt, lk, dv, j0, 0, null,
                        j0 == 0 ? 0f : 1f, outSeg, outRows + (long) i * ldo, ldo);
                i += mr;
            }
        }

        /**
         * One key block {@code [j0, j0 + keyBlock)} of {@link #runOnline} on the generic engine (sgemm or the
         * generic Java kernel), on the operands of {@code s}: the scores, their weights with the
         * running max and sum {@code max[so + r]}, {@code sum[so + r]} updated, and the block's {@code p · v} added
         * to the output rows.
         */
        private void genericOnlineStep(Scratch s, MatmulKernel mm, MemorySegment ws, long base, long head, int i0,
                                       int rows, int keys, int j0, long maskHead, MemorySegment outSeg, long outRows,
                                       int ldo, float[] max, float[] sum, int so) {
            final Operand vo = s.vo;
            final int nk = Math.min(keyBlock, keys - j0);
            final int lds = tileLd(nk);
            scores(s, mm, ws, base, lds, head, i0, rows, j0, nk);
            rowMaxes(ws, base, lds, i0, rows, keys, j0, nk, maskHead, s.rowScale);
            onlineWeights(ws, base, lds, i0, 0, rows, keys, j0, nk, max, sum, so, s.rowScale, outSeg, outRows,
                    ldo, null);
            // out_block [rows, Dv] (+)= p · v[j0, j0 + nk)
            product(mm, Transpose.NO, Transpose.NO.flipIf(vo.transposed), rows, dv, nk, 1f,
                    ws, base, lds, vo.seg, vo.offset + j0 * vo.rowStep, vo.ld, j0 == 0 ? 0f : 1f,
                    outSeg, outRows, ldo);
        }

        /**
         * The first pass of a softmax over keys {@code [j0, j0 + nk)} (all of them: {@code j0 = 0, nk = keys}; one
         * key block of an online pass otherwise): each row masked, and its max there into {@code blockMax[r]},
         * every row's before any exponential (see {@link #softmaxRows}).
         */
        private void rowMaxes(MemorySegment ws, long base, int lds, int i0, int rows, int keys, int j0, int nk,
                              long maskHead, float[] blockMax) {
            final RowKernels rk = owner.rows;
            for (int r = 0; r < rows; r++) {
                final int i = i0 + r;
                final int lim = clamp((long) limitFor(i, keys) - j0, 0, nk);
                blockMax[r] = rk.maskedMax(ws, base + (long) r * lds, nk, lim, mSeg,
                        maskHead + (long) i * ms2 + (long) j0 * ms3, ms3, maskBool);
            }
        }

        /**
         * The second pass for rows {@code [r0, r1)}: weights into the tile (or, with {@code dst}, to
         * {@code dst[(r - r0)·nk ...]}), the running max and sum ({@code max[so + r]}, {@code sum[so + r]})
         * updated, and each output row rescaled by {@code exp(m_old - m_new)} when the max grew.
         */
        private void onlineWeights(MemorySegment ws, long base, int lds, int i0, int r0, int r1, int keys, int j0,
                                   int nk, float[] max, float[] sum, int so, float[] blockMax, MemorySegment outSeg,
                                   long outRows, int ldo, float[] dst) {
            final RowKernels rk = owner.rows;
            for (int r = r0; r < r1; r++) {
                final int lim = clamp((long) limitFor(i0 + r, keys) - j0, 0, nk);
                final float old = max[so + r];
                // a row with no allowed key so far keeps -inf and gets zeros; a NaN score makes the max NaN
                final float m = Math.max(old, blockMax[r]);
                max[so + r] = m;
                final long at = base + (long) r * lds;
                final float blockSum = dst == null ? rk.expFrom(ws, at, nk, lim, m)
                        : rk.expInto(ws, at, nk, lim, m, dst, (r - r0) * nk);
                // the kernels' own underflow (0 where their exp gives 0), in StrictMath: the same bits in every
                // JIT tier; once per row and block, so its cost is nil
                final float alpha = j0 == 0 || old == m ? 1f
                        : old == Float.NEGATIVE_INFINITY ? 0f : rk.rescale(old - m);
                sum[so + r] = sum[so + r] * alpha + blockSum;
                if (alpha != 1f) {
                    rk.scaleRow(outSeg, outRows + (long) r * ldo, dv, alpha);
                }
            }
        }

        /**
         * Each output row times {@code 1 / sum[so + r]}; rows no key could see become zeros (see
         * {@link #zeroMaskedRows}).
         */
        private void onlineFinish(int rows, float[] sum, int so, float[] inv, MemorySegment outSeg, long outRows,
                                  int ldo, int i0, int keys, long maskHead) {
            for (int r = 0; r < rows; r++) {
                inv[r] = sum[so + r] == 0f ? 0f : 1f / sum[so + r];
                if (inv[r] != 0f) {
                    owner.rows.scaleRow(outSeg, outRows + (long) r * ldo, dv, inv[r]);
                }
            }
            zeroMaskedRows(inv, rows, outSeg, outRows, dv, ldo, i0, keys, maskHead);
        }

        /**
         * Rows whose softmax allowed no key (normalizer 0) become zeros: the product computed 0 · v, which is NaN
         * where v holds NaN or Inf, and a fully masked row must give zeros whatever v holds (see
         * {@link #emptyRow}). Rows {@code i0 ...} of the call, which may see {@code keys} keys.
         */
        private void zeroMaskedRows(float[] inv, int rows, MemorySegment outSeg, long outRows, int dv, int ldo,
                                    int i0, int keys, long maskHead) {
            for (int r = 0; r < rows; r++) {
                if (inv[r] == 0f) {
                    emptyRow(outSeg, outRows + (long) r * ldo, i0 + r, keys, maskHead);
                }
            }
        }

        /**
         * Output row {@code i} (at {@code at}, unit stride) of a softmax that found no score above -inf: zeros when
         * the row may attend no key (its causal limit, its mask), as the contract says. Otherwise its scores
         * overflowed to -inf (|scale · q·k| past float's range: a scale of 1e38, or |q|, |k| near 1e19), where the
         * reference attends its largest score; the row is marked NaN, and {@link #redoNaNRows} computes it again in
         * double. Only such rows reach this; the check reads the row's mask once.
         */
        private void emptyRow(MemorySegment outSeg, long at, int i, int keys, long maskHead) {
            float fill = mayAttend(i, keys, maskHead) ? Float.NaN : 0f;
            for (int c = 0; c < dv; c++) {
                outSeg.set(F, (at + c) * Float.BYTES, fill);
            }
        }

        /** Whether row {@code i} may attend one of the first {@code keys} keys: its causal limit and mask allow it. */
        private boolean mayAttend(int i, int keys, long maskHead) {
            final int lim = limitFor(i, keys);
            if (lim == 0 || mSeg == null) {
                return lim > 0;
            }
            final long at = maskHead + (long) i * ms2;
            // one value for every key when the mask's keys broadcast (stride 0): read it once
            final int n = ms3 == 0 ? 1 : lim;
            for (int j = 0; j < n; j++) {
                float m = mSeg.getAtIndex(F, at + j * ms3);
                if (maskBool ? m != 0f : m != Float.NEGATIVE_INFINITY) {
                    return true;
                }
            }
            return false;
        }
    }

    /** A head matrix {@code [rows, cols]} (the last two dimensions) usable by a product in place. */
    private static boolean matrixOk(Tensor t) {
        return rowMajorOk(t) || colMajorOk(t);
    }

    private static boolean rowMajorOk(Tensor t) {
        long rows = t.size(2);
        long cols = t.size(3);
        return (t.stride(3) == 1 || cols <= 1) && (rows <= 1 || t.stride(2) >= Math.max(cols, 1))
                && ld(t.stride(2), cols) <= Integer.MAX_VALUE;
    }

    private static boolean colMajorOk(Tensor t) {
        long rows = t.size(2);
        long cols = t.size(3);
        return (t.stride(2) == 1 || rows <= 1) && (cols <= 1 || t.stride(3) >= Math.max(rows, 1))
                && ld(t.stride(3), rows) <= Integer.MAX_VALUE;
    }

    /** Float offset of head {@code h} of batch {@code b} in {@code t} (element [b, h, 0, 0]). */
    private static long headAt(Tensor t, long b, long h) {
        return t.offset() + b * t.stride(0) + h * t.stride(1);
    }

    private static long ld(long stride, long n) {
        return Math.max(stride, Math.max(n, 1));
    }

    private static int clamp(long x, int lo, int hi) {
        return (int) Math.max(lo, Math.min(hi, x));
    }

    private static void zeroRows(MemorySegment seg, long at, int rows, int cols, int ld) {
        for (int r = 0; r < rows; r++) {
            long from = (at + (long) r * ld) * Float.BYTES;
            for (int c = 0; c < cols; c++) {
                seg.set(F, from + (long) c * Float.BYTES, 0f);
            }
        }
    }

    private static void unpackRows(MemorySegment ws, long at, Tensor out, int b, int h, int i0, int rows, int dv) {
        MemorySegment seg = out.segment();
        long base = headAt(out, b, h);
        for (int r = 0; r < rows; r++) {
            for (int d = 0; d < dv; d++) {
                seg.setAtIndex(F, base + (long) (i0 + r) * out.stride(2) + d * out.stride(3),
                        ws.getAtIndex(F, at + (long) r * dv + d));
            }
        }
    }

    /** True when some element of {@code t} is subnormal (non-zero and below {@link Float#MIN_NORMAL}). */
    private static boolean hasSubnormal(Tensor t, RowKernels rows) {
        MemorySegment seg = t.segment();
        boolean unit = t.stride(3) == 1;
        for (long i0 = 0; i0 < t.size(0); i0++) {
            for (long i1 = 0; i1 < t.size(1); i1++) {
                for (long i2 = 0; i2 < t.size(2); i2++) {
                    long row = t.offset() + i0 * t.stride(0) + i1 * t.stride(1) + i2 * t.stride(2);
                    if (unit) {
                        if (rows.anySubnormal(seg, row, (int) t.size(3))) {
                            return true;
                        }
                        continue;
                    }
                    for (long i3 = 0; i3 < t.size(3); i3++) {
                        float x = seg.getAtIndex(F, row + i3 * t.stride(3));
                        if (x != 0f && Math.abs(x) < Float.MIN_NORMAL) {
                            return true;
                        }
                    }
                }
            }
        }
        return false;
    }

    /**
     * Points {@code o} at one head matrix of {@code t}: in place when it has a unit stride, else packed
     * row-major into {@code ws} at {@code packAt} (copied only when {@code copy}; subnormals flushed to zero only
     * when {@code flush}, for v: a subnormal q or k times a large scale can make a score of order 1).
     */
    private static void operand(Operand o, Tensor t, int b, int h, boolean copy, MemorySegment ws, long packAt,
                                boolean pack, boolean flush) {
        long base = headAt(t, b, h);
        long rows = t.size(2);
        long cols = t.size(3);
        if (pack) {
            if (copy) {
                MemorySegment seg = t.segment();
                for (long r = 0; r < rows; r++) {
                    for (long c = 0; c < cols; c++) {
                        float x = seg.getAtIndex(F, base + r * t.stride(2) + c * t.stride(3));
                        // subnormals become zeros in a packed copy, as in the Java engine's packed v: a product
                        // with a subnormal operand takes a microcode assist on x86 (measured: subnormal v made
                        // attention 31x slower), and the JVM cannot set flush-to-zero; a subnormal changes an
                        // output by less than 2^-126 times its weight
                        ws.setAtIndex(F, packAt + r * cols + c, flush && Math.abs(x) < Float.MIN_NORMAL ? 0f : x);
                    }
                }
            }
            o.seg = ws;
            o.offset = packAt;
            o.ld = (int) Math.max(cols, 1);
            o.transposed = false;
            o.rowStep = cols;
        } else if (rowMajorOk(t)) {
            o.seg = t.segment();
            o.offset = base;
            o.ld = (int) ld(t.stride(2), cols);
            o.transposed = false;
            o.rowStep = t.stride(2);
        } else {
            o.seg = t.segment();
            o.offset = base;
            o.ld = (int) ld(t.stride(3), rows);
            o.transposed = true;
            o.rowStep = 1;
        }
    }
}
