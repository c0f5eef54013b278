package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.stream.Stream;

/**
 * Steady-state {@code sdpa} calls allocate nothing on the Java heap (issue 4), on the native and Java backends,
 * causal or not, with boolean and additive masks, with the per-thread scratch or a caller's workspace, for a
 * block of queries and for a decoding-sized query. One thread ({@code threads(1)}), so every allocation of a
 * call happens on the measured thread. All cases are warmed up together first (see {@link Allocations}); each
 * then checks its output against the reference once, so that "allocates nothing" is not "does nothing".
 *
 * <p>The head dimension is 64 (as in the benchmarks) for most cases; decoding-sized queries also run at 128 (the
 * few-query kernel written out for it), 16 and 8 (under four vectors: masked vector tails). Rounds 3-6 left the
 * small heads out, because C2 had compiled their tails with boxing (60-130 KB per call) in some runs. With the
 * lane sums before any scalar call ({@code VectorPackedKernels.matvec4}) and the ragged warm-up of
 * {@link Allocations#warmUpTogether}, they passed in every run since (three of three when added).
 */
class AllocationTest {

    enum Opts { PLAIN, CAUSAL, KEY_PADDING, CAUSAL_ADDITIVE }

    private static final int B = 1;
    private static final int HQ = 4;
    private static final int HKV = 2;
    private static final int LK = 24;
    /**
     * Keys of the long-row cases: past both engines' key blocks (2048 Java, 1024 native), so the online softmax
     * runs, and past the row max's unrolled loop. At [1, 1, 4096, 128] a lane-max helper was once left out of
     * line there and boxed ~7 MB per call (JMH -prof gc); on the native backend these cases allocated 1920 B
     * per call (downcall slices escaping) until OpenBlas called its wrappers through non-constant handles.
     * Rows of 24 keys reach neither.
     */
    private static final int LONG_LK = 2100;
    // four 16-float vectors, no masked tail: see the class comment
    private static final int D = 64;

    /** One case: its tensors, options, attention and the call to measure. */
    private record Case(String what, Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, Runnable call) {
    }

    private static Arena arena;
    private static final Map<String, Case> CASES = new LinkedHashMap<>();

    static Stream<Arguments> cases() {
        List<Arguments> all = new ArrayList<>();
        for (Backend b : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
            for (Opts o : Opts.values()) {
                for (int lq : new int[] {16, 1}) {
                    for (boolean ws : new boolean[] {false, true}) {
                        all.add(Arguments.of(b, o, lq, ws, LK, D));
                    }
                }
                if (o == Opts.PLAIN || o == Opts.CAUSAL) {
                    all.add(Arguments.of(b, o, 16, false, LONG_LK, D));
                }
            }
            // decode-sized queries at other head sizes: 128 (the few-query kernel written out for it, as 64 is),
            // 16 and 8 (under four vectors: the masked vector tails of axpyRows, scalar tails of dotRows)
            all.add(Arguments.of(b, Opts.PLAIN, 1, false, LK, 128));
            all.add(Arguments.of(b, Opts.PLAIN, 1, false, LONG_LK, 128));
            all.add(Arguments.of(b, Opts.CAUSAL, 1, false, LK, 16));
            all.add(Arguments.of(b, Opts.KEY_PADDING, 1, true, LK, 8));
            if (b == Backend.JAVA) {
                // two query blocks past the key block: the Java engine runs them as one span (Attention.runOnline)
                all.add(Arguments.of(b, Opts.CAUSAL, 66, false, LONG_LK, 16));
            }
        }
        return all.stream();
    }

    /**
     * Heap tensors (arrays wrapped as segments; the Java kernels, also under AUTO) with self-attention shapes.
     * [1, 2, 16, 64] causal allocated 12288 B per call (24 and 48 queries too; 8, 32, 64 not): the register
     * kernels' vector stores straight into the heap out were left calls by C2, each boxing its vector, once the
     * JDK's shared profile of segment stores had seen a byte[] segment (the Vector API's own reinterpret
     * fallback) besides the float[] one (see VectorPackedKernels.flush).
     */
    static Stream<Arguments> heapCases() {
        return Stream.of(
                Arguments.of(Backend.JAVA, Opts.CAUSAL, 16, 64),
                Arguments.of(Backend.AUTO, Opts.CAUSAL, 16, 64),
                Arguments.of(Backend.JAVA, Opts.PLAIN, 24, 64),
                Arguments.of(Backend.JAVA, Opts.CAUSAL, 48, 32),
                Arguments.of(Backend.JAVA, Opts.PLAIN, 1, 64));
    }

    /** Where AUTO's tensors live, for the layouts it must copy (see {@link #copiedLayoutCases}). */
    enum Memory { HEAP, MISALIGNED }

    /**
     * AUTO with tensors OpenBLAS may not be handed (heap arrays, or off-heap floats at an address that is not a
     * multiple of 4) in a layout the packed Java engine cannot take in place (a transposed out): the generic
     * engine on the Java products (Attention.Job.genericJava on AVX-512 cores; the Java products anyway on
     * others). Measured once by hand at 0 B per call; these keep it so.
     */
    static Stream<Arguments> copiedLayoutCases() {
        return Stream.of(
                Arguments.of(Memory.HEAP, Opts.PLAIN, 16, 64),
                Arguments.of(Memory.MISALIGNED, Opts.CAUSAL, 16, 64),
                Arguments.of(Memory.MISALIGNED, Opts.PLAIN, LONG_LK, 64));
    }

    @BeforeAll
    static void buildAndWarmUpTogether() {
        arena = Arena.ofShared();
        cases().forEach(a -> {
            Object[] p = a.get();
            Case c = build((Backend) p[0], (Opts) p[1], (int) p[2], (boolean) p[3], (int) p[4], (int) p[5]);
            CASES.put(c.what(), c);
        });
        heapCases().forEach(a -> {
            Object[] p = a.get();
            Case c = buildHeap((Backend) p[0], (Opts) p[1], (int) p[2], (int) p[3]);
            CASES.put(c.what(), c);
        });
        copiedLayoutCases().forEach(a -> {
            Object[] p = a.get();
            Case c = buildCopiedLayout((Memory) p[0], (Opts) p[1], (int) p[2], (int) p[3]);
            CASES.put(c.what(), c);
        });
        Allocations.warmUpTogether(CASES.values().stream().map(Case::call).toList(), Allocations.WARMUP);
    }

    @AfterAll
    static void close() {
        CASES.clear();
        arena.close();
    }

    private static String name(Backend backend, Opts opts, int lq, boolean withWorkspace, int lk, int d) {
        return backend + " " + opts + " q [" + B + ", " + HQ + ", " + lq + ", " + d + "] k [" + B + ", " + HKV
                + ", " + lk + ", " + d + "] workspace=" + withWorkspace + " seed=" + seed(opts, lq);
    }

    private static long seed(Opts opts, int lq) {
        return 1000L * opts.ordinal() + lq;
    }

    private static Case build(Backend backend, Opts opts, int lq, boolean withWorkspace, int lk, int d) {
        Random r = new Random(seed(opts, lq));
        Tensor q = Fixtures.random(arena, r, B, HQ, lq, d);
        Tensor k = Fixtures.random(arena, r, B, HKV, lk, d);
        Tensor v = Fixtures.random(arena, r, B, HKV, lk, d);
        Tensor out = Tensor.allocate(arena, B, HQ, lq, d);
        SdpaOptions options = switch (opts) {
            case PLAIN -> SdpaOptions.DEFAULT;
            case CAUSAL -> SdpaOptions.CAUSAL;
            case KEY_PADDING -> SdpaOptions.DEFAULT.withMask(Mask.allowed(keyPadding(r, lk)));
            case CAUSAL_ADDITIVE -> SdpaOptions.CAUSAL.withMask(
                    Mask.additive(Tensor.of(arena, Fixtures.uniform(r, lq * lk, -2, 2), lq, lk)));
        };
        Attention attention = Attention.builder().backend(backend).threads(1).build();
        Workspace ws = withWorkspace
                ? Workspace.allocate(arena, attention.workspaceBytes(q, k, v, out, options)) : null;
        Runnable call = withWorkspace
                ? () -> attention.sdpa(q, k, v, out, options, ws)
                : () -> attention.sdpa(q, k, v, out, options);
        return new Case(name(backend, opts, lq, withWorkspace, lk, d), q, k, v, out, options, call);
    }

    private static String heapName(Backend backend, Opts opts, int l, int d) {
        return backend + " " + opts + " heap q, k, v, out [" + B + ", " + HKV + ", " + l + ", " + d + "]";
    }

    private static Tensor heapRandom(Random r, long... shape) {
        return Tensor.wrap(MemorySegment.ofArray(Fixtures.uniform(r, Fixtures.count(shape), -1, 1)), shape);
    }

    private static Case buildHeap(Backend backend, Opts opts, int l, int d) {
        Random r = new Random(seed(opts, l) + d);
        Tensor q = heapRandom(r, B, HKV, l, d);
        Tensor k = heapRandom(r, B, HKV, l, d);
        Tensor v = heapRandom(r, B, HKV, l, d);
        Tensor out = Tensor.wrap(MemorySegment.ofArray(new float[B * HKV * l * d]), B, HKV, l, d);
        SdpaOptions options = opts == Opts.CAUSAL ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT;
        Attention attention = Attention.builder().backend(backend).threads(1).build();
        return new Case(heapName(backend, opts, l, d), q, k, v, out, options,
                () -> attention.sdpa(q, k, v, out, options));
    }

    private static String copiedLayoutName(Memory memory, Opts opts, int l, int d) {
        return "AUTO " + opts + " " + memory + " q, k, v [" + B + ", " + HKV + ", " + l + ", " + d
                + "], out transposed";
    }

    /** {@code shape} over floats from byte 1 of an off-heap segment: valid for Java, not for OpenBLAS. */
    private static Tensor misaligned(long... shape) {
        long bytes = (long) Fixtures.count(shape) * Float.BYTES;
        return Tensor.wrap(arena.allocate(bytes + 1, 64).asSlice(1, bytes), shape);
    }

    private static Case buildCopiedLayout(Memory memory, Opts opts, int l, int d) {
        Random r = new Random(seed(opts, l) + 7 * d + memory.ordinal());
        Tensor[] qkv = new Tensor[3];
        for (int i = 0; i < 3; i++) {
            qkv[i] = memory == Memory.HEAP ? heapRandom(r, B, HKV, l, d)
                    : misaligned(B, HKV, l, d).copyFrom(Fixtures.uniform(r, B * HKV * l * d, -1, 1));
        }
        // out [B, HKV, L, D] stored as [B, HKV, D, L]: a layout the engines write through a copy
        Tensor stored = memory == Memory.HEAP
                ? Tensor.wrap(MemorySegment.ofArray(new float[B * HKV * l * d]), B, HKV, d, l)
                : misaligned(B, HKV, d, l);
        Tensor out = stored.transpose(2, 3);
        SdpaOptions options = opts == Opts.CAUSAL ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT;
        Attention attention = Attention.builder().backend(Backend.AUTO).threads(1).build();
        return new Case(copiedLayoutName(memory, opts, l, d), qkv[0], qkv[1], qkv[2], out, options,
                () -> attention.sdpa(qkv[0], qkv[1], qkv[2], out, options));
    }

    @ParameterizedTest(name = "AUTO {1} {0} tensors L={2} D={3}, out transposed")
    @MethodSource("copiedLayoutCases")
    void steadyStateAutoInCopiedLayoutsAllocatesNothing(Memory memory, Opts opts, int l, int d) {
        checkedThenMeasured(CASES.get(copiedLayoutName(memory, opts, l, d)), l, d);
    }

    @ParameterizedTest(name = "{0} {1} heap tensors L={2} D={3}")
    @MethodSource("heapCases")
    void steadyStateSdpaOnHeapTensorsAllocatesNothing(Backend backend, Opts opts, int l, int d) {
        checkedThenMeasured(CASES.get(heapName(backend, opts, l, d)), l, d);
    }

    /** A self-attention case [B, HKV, l, d]: once against the reference, then its steady state measured. */
    private static void checkedThenMeasured(Case c, int l, int d) {
        Allocations.requireCounter();
        c.out().fill(Float.NaN);
        c.call().run();
        Tensor ref = Tensor.allocate(arena, B, HKV, l, d);
        ReferenceAttention.compute(c.q(), c.k(), c.v(), ref, c.options());
        double tol = Fixtures.tol(d, l, 2);
        Fixtures.assertClose(c.what(), ref.shape(), c.out().toArray(), ref.toArray(), tol, tol);

        Allocations.assertSteadyStateAllocatesNothing(c.what(), c.call());
    }

    /**
     * A heap output in a JVM whose only calls are heap calls ({@link HeapOutProbe}): there the vector stores into
     * it were left uncompiled and boxed every vector (12288 bytes a call at [1, 2, 16, 64]); the cases above,
     * warmed up together with the off-heap ones, never showed it. Up to 64 bytes over 1000 calls are the JVM's
     * own (a measurement's rounding, not a per-call allocation).
     */
    @org.junit.jupiter.api.Test
    void aHeapOutputInAFreshJvmAllocatesNothing() throws Exception {
        Allocations.requireCounter();
        String javaCmd = ProcessHandle.current().info().command().orElse("java");
        Process p = new ProcessBuilder(javaCmd, "--enable-native-access=ALL-UNNAMED", "--add-modules",
                "jdk.incubator.vector", "-cp", System.getProperty("java.class.path"), HeapOutProbe.class.getName())
                .redirectErrorStream(true).start();
        String output = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
        org.junit.jupiter.api.Assertions.assertTrue(p.waitFor(300, java.util.concurrent.TimeUnit.SECONDS), output);
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("bytes=(\\d+)").matcher(output);
        org.junit.jupiter.api.Assertions.assertTrue(m.find(), output);
        long bytes = Long.parseLong(m.group(1));
        org.junit.jupiter.api.Assertions.assertTrue(bytes <= 64, "1000 heap calls allocated " + bytes + " bytes");
    }

    @ParameterizedTest(name = "{0} {1} Lq={2} workspace={3} Lk={4} D={5}")
    @MethodSource("cases")
    void steadyStateSdpaAllocatesNothing(Backend backend, Opts opts, int lq, boolean withWorkspace, int lk, int d) {
        Allocations.requireCounter();
        Case c = CASES.get(name(backend, opts, lq, withWorkspace, lk, d));
        c.out().fill(Float.NaN);
        c.call().run();
        Tensor ref = Tensor.allocate(arena, B, HQ, lq, d);
        ReferenceAttention.compute(c.q(), c.k(), c.v(), ref, c.options());
        double tol = Fixtures.tol(d, lk, 2);
        Fixtures.assertClose(c.what(), ref.shape(), c.out().toArray(), ref.toArray(), tol, tol);

        Allocations.assertSteadyStateAllocatesNothing(c.what(), c.call());
    }

    /** {@code [B, 1, 1, Lk]}, 0/1 with the first key always allowed (no fully masked row). */
    private static Tensor keyPadding(Random r, int lk) {
        float[] m = new float[B * lk];
        for (int i = 0; i < m.length; i++) {
            m[i] = i % lk == 0 || r.nextInt(4) != 0 ? 1f : 0f;
        }
        return Tensor.of(arena, m, B, 1, 1, lk);
    }
}
