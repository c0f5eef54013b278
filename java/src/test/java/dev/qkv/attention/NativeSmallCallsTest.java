package dev.qkv.attention;

import dev.qkv.attention.Fixtures.Layout;
import dev.qkv.blas.OpenBlas;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The OpenBLAS engine with its products cut into small calls ({@link Attention#SMALL_MNK}), forced on whatever
 * the core, against the double-precision reference: rows in runs and keys in chunks (the columns of q · kᵀ, the
 * reduction of p · v), with q copied as qᵀ when q and k are both row-major, and every other layout of q and k
 * left in place. Shapes put a block over several runs of rows and chunks of keys, past one key block (the online
 * softmax), causal with its diagonal blocks, masks, and head sizes where a chunk would be too narrow (one call).
 * Tolerance per element as {@link EngineTest}: {@code atol = rtol = 4 · (Dk + Lk) · 2^-24}.
 */
class NativeSmallCallsTest {

    record Case(long seed, int b, int hq, int hkv, int lq, int lk, int dk, int dv, boolean causal, Layout qLayout,
                Layout kLayout, boolean mask) {
        @Override
        public String toString() {
            return "seed=" + seed + " [" + b + ", " + hq + "/" + hkv + ", " + lq + "x" + lk + ", " + dk + "/" + dv
                    + "]" + (causal ? " causal" : "") + " q " + qLayout + " k " + kLayout + (mask ? " mask" : "");
        }
    }

    @BeforeAll
    static void needsOpenBlas() {
        Assumptions.assumeTrue(OpenBlas.isAvailable(), "OpenBLAS not available");
    }

    static Stream<Named<Case>> cases() {
        Layout c = Layout.CONTIGUOUS;
        return Stream.of(
                // 1024 keys: several chunks of keys per product (64-row blocks on 2 cores, 128 on more)
                new Case(1, 1, 2, 2, 300, 1024, 64, 64, false, c, c, false),
                // past one key block: the online softmax's steps, each in small calls
                new Case(2, 1, 1, 1, 260, 2500, 64, 64, false, c, c, false),
                new Case(3, 1, 2, 1, 513, 1500, 64, 48, true, c, c, true),
                // wide heads: narrower chunks; Dk = 512 would need chunks under 64 keys, so whole blocks
                new Case(4, 1, 1, 1, 200, 900, 128, 128, false, c, c, false),
                new Case(5, 1, 1, 1, 100, 700, 512, 96, true, c, c, false),
                // q and k in other layouts: in place (transposed views) or packed (strided)
                new Case(6, 2, 2, 2, 150, 1100, 64, 64, false, Layout.HEADS_INNER, Layout.PADDED, false),
                new Case(7, 1, 2, 1, 160, 1300, 48, 64, true, Layout.TRANSPOSED, c, true),
                new Case(8, 1, 1, 1, 140, 1200, 64, 64, false, c, Layout.TRANSPOSED, false),
                new Case(9, 1, 2, 2, 130, 1050, 40, 40, false, Layout.STRIDED, Layout.STRIDED, true))
                .map(x -> Named.of(x.toString(), x));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void matchesReference(Case c) {
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(c.seed());
            Tensor q = c.qLayout().of(arena, Fixtures.uniform(r, c.b() * c.hq() * c.lq() * c.dk(), -1, 1),
                    c.b(), c.hq(), c.lq(), c.dk());
            Tensor k = c.kLayout().of(arena, Fixtures.uniform(r, c.b() * c.hkv() * c.lk() * c.dk(), -1, 1),
                    c.b(), c.hkv(), c.lk(), c.dk());
            Tensor v = Fixtures.random(arena, r, c.b(), c.hkv(), c.lk(), c.dv());
            Mask mask = c.mask() ? Mask.allowed(EngineTest.bernoulli(arena, new java.util.SplittableRandom(c.seed()),
                    0.8, c.lq(), c.lk())) : null;
            SdpaOptions o = SdpaOptions.DEFAULT.withCausal(c.causal()).withMask(mask);
            float[] want = reference(arena, Fixtures.contiguousCopy(arena, q), Fixtures.contiguousCopy(arena, k), v, o);
            double tol = 4.0 * (c.dk() + c.lk()) * 0x1p-24;
            long[] shape = {c.b(), c.hq(), c.lq(), c.dv()};
            float[] one = null;
            for (int threads : new int[] {1, 2}) {
                Attention a = Attention.builder().backend(Backend.NATIVE).threads(threads).smallCalls(true).build();
                Tensor got = Tensor.allocate(arena, shape).fill(Float.NaN);
                a.sdpa(q, k, v, got, o);
                String plan = a.plan(q, k, v, got, o);
                Fixtures.assertClose(c + " threads=" + threads + " " + plan, shape, got.toArray(), want, tol, tol);
                // qᵀ is copied exactly when q and k are both stored row-major (in place or packed), and the head
                // is narrow enough for chunks of 64 keys
                boolean cut = (long) Attention.SMALL_ROWS * Math.max(c.dk(), c.dv()) * 64 <= Attention.SMALL_MNK;
                boolean rowMajor = c.qLayout() != Layout.TRANSPOSED && c.kLayout() != Layout.TRANSPOSED;
                assertTrue(plan.contains("qTransposedBytes=") == (rowMajor && cut), plan);
                // the cut depends on the shapes only: the same bits on 1 and 2 threads
                if (one == null) {
                    one = got.toArray();
                } else {
                    Fixtures.assertBitIdentical(c + " 1 vs 2 threads", shape, got.toArray(), one);
                }
            }
        }
    }

    /** The reference's output for contiguous q, k, v. */
    private static float[] reference(Arena arena, Tensor q, Tensor k, Tensor v, SdpaOptions o) {
        Tensor ref = Tensor.allocate(arena, q.size(0), q.size(1), q.size(2), v.size(3));
        Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
        return ref.toArray();
    }

    @Test
    void wholeBlockCallsStayAvailable() {
        // forced off, the engine issues one call per product and copies nothing, on any core; on, it copies qᵀ
        assertBothMatch(11, 300, 1100, SdpaOptions.CAUSAL, 2, Long.MAX_VALUE, true);
    }

    @Test
    void aBudgetTooSmallForTheCopyRunsWithoutIt() {
        // 8-row blocks fit 2560 bytes with q and k in place, not with the copy of qᵀ as well: the call runs as
        // whole calls on q in place (as with small calls off), where it used to be refused
        assertBothMatch(13, 64, 64, SdpaOptions.DEFAULT, 1, 2560, false);
    }

    /**
     * Native attention over q [1, 2, lq, 64] and k, v [1, 2, lk, 64] with small calls forced off, then on, against
     * the reference; {@code plan()} shows the copy of qᵀ only when on and {@code copyWhenOn}.
     */
    private static void assertBothMatch(long seed, int lq, int lk, SdpaOptions o, int threads, long budget,
                                        boolean copyWhenOn) {
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(seed);
            Tensor q = Fixtures.random(arena, r, 1, 2, lq, 64);
            Tensor k = Fixtures.random(arena, r, 1, 2, lk, 64);
            Tensor v = Fixtures.random(arena, r, 1, 2, lk, 64);
            float[] want = reference(arena, q, k, v, o);
            long[] shape = {1, 2, lq, 64};
            double tol = 4.0 * (64 + lk) * 0x1p-24;
            for (boolean on : new boolean[] {false, true}) {
                Attention a = Attention.builder().backend(Backend.NATIVE).threads(threads).smallCalls(on)
                        .workspaceBudget(budget).build();
                Tensor got = Tensor.allocate(arena, shape).fill(Float.NaN);
                a.sdpa(q, k, v, got, o);
                String plan = a.plan(q, k, v, got, o);
                Fixtures.assertClose("smallCalls=" + on + " " + plan, shape, got.toArray(), want, tol, tol);
                assertTrue(plan.contains("qTransposedBytes=") == (on && copyWhenOn), plan);
            }
        }
    }

    @Test
    void budgetCountsTheCopyOfQ() {
        // the copy of qᵀ and its heap rows are part of the budget: a budget that fits the tile but not the copy
        // lowers the block rows, and the call still matches the reference
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(12);
            Tensor q = Fixtures.random(arena, r, 1, 1, 256, 64);
            Tensor k = Fixtures.random(arena, r, 1, 1, 512, 64);
            Tensor v = Fixtures.random(arena, r, 1, 1, 512, 64);
            float[] want = reference(arena, q, k, v, SdpaOptions.DEFAULT);
            Attention free = Attention.builder().backend(Backend.NATIVE).threads(1).smallCalls(true).build();
            Tensor out = Tensor.allocate(arena, 1, 1, 256, 64).fill(Float.NaN);
            String plan = free.plan(q, k, v, out, SdpaOptions.DEFAULT);
            long tile = EngineTest.planField(plan, "workspaceBytes");
            long copy = EngineTest.planField(plan, "qTransposedBytes");
            assertTrue(copy > 0, plan);
            Attention tight = Attention.builder().backend(Backend.NATIVE).threads(1).smallCalls(true)
                    .workspaceBudget(tile + copy - 1).build();
            tight.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
            String tightPlan = tight.plan(q, k, v, out, SdpaOptions.DEFAULT);
            assertTrue(EngineTest.planField(tightPlan, "workspaceBytes")
                    + EngineTest.planField(tightPlan, "qTransposedBytes") <= tile + copy - 1, tightPlan);
            double tol = 4.0 * (64 + 512) * 0x1p-24;
            Fixtures.assertClose(tightPlan, new long[] {1, 1, 256, 64}, out.toArray(), want, tol, tol);
        }
    }
}
