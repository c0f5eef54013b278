package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The blocked engine against the double-precision reference on shared-arena tensors, so that the parallel
 * path (pool threads) runs too: 1 and 2 threads, the packed Java engine and its few-query path, native, tails
 * of every block size, causal with Lq &lt; Lk and Lq &gt; Lk, more keys than one key block, masks, grouped-query heads, transposed views, a
 * workspace budget. Tolerance per element: {@code atol = rtol = 4 · (Dk + Lk) · 2^-24} (one rounding per term of
 * the two reductions, with slack for exp, scale and normalization).
 */
class EngineTest {

    record Case(long seed, int b, int hq, int hkv, int lq, int lk, int dk, int dv, boolean causal, String mask,
                boolean kTransposed) {
        @Override
        public String toString() {
            return "seed=" + seed + " B=" + b + " Hq=" + hq + " Hkv=" + hkv + " Lq=" + lq + " Lk=" + lk + " Dk=" + dk
                    + " Dv=" + dv + (causal ? " causal" : "") + " mask=" + mask + (kTransposed ? " kT-view" : "");
        }
    }

    static Stream<Named<Case>> cases() {
        List<Case> out = new ArrayList<>();
        SplittableRandom r = new SplittableRandom(20261125);
        int[] lens = {1, 3, 7, 8, 17, 63, 64, 65, 129, 200};
        int[] dims = {1, 3, 16, 17, 33, 64, 65};
        String[] masks = {"none", "bool2d", "additive4d", "keypad"};
        for (int i = 0; i < 40; i++) {
            int hkv = 1 + r.nextInt(2);
            int hq = hkv * (1 + r.nextInt(3));
            out.add(new Case(r.nextLong(), 1 + r.nextInt(2), hq, hkv, lens[r.nextInt(lens.length)],
                    lens[r.nextInt(lens.length)], dims[r.nextInt(dims.length)], dims[r.nextInt(dims.length)],
                    r.nextBoolean(), masks[r.nextInt(masks.length)], r.nextInt(4) == 0));
        }
        // big enough to go parallel (> 8 MFLOP), with a causal block that sees no key (Lq > Lk)
        out.add(new Case(7, 1, 4, 2, 256, 300, 64, 64, false, "none", false));
        out.add(new Case(8, 1, 4, 4, 300, 256, 64, 48, true, "none", false));
        out.add(new Case(9, 2, 2, 1, 200, 333, 64, 64, true, "bool2d", true));
        out.add(new Case(10, 1, 8, 8, 4, 3000, 128, 128, false, "keypad", false));
        // more keys than Attention.KEY_BLOCK: the online softmax over key blocks, with a partial last block
        out.add(new Case(11, 1, 2, 1, 70, 4500, 32, 32, true, "bool2d", false));
        out.add(new Case(12, 1, 1, 1, 65, 2300, 17, 33, false, "additive4d", true));
        out.add(new Case(13, 1, 2, 2, 40, 2 * Attention.KEY_BLOCK + 1, 64, 64, false, "keypad", false));
        // grouped heads with more than one kv head on the online path: h / (Hq / Hkv) and h % Hkv differ here
        // (the cases above have one kv head or one query head per kv head, where they agree)
        out.add(new Case(16, 1, 4, 2, 70, Attention.KEY_BLOCK + 250, 32, 24, true, "additive4d", false));
        // wide heads take fewer keys per block (Attention.javaKeyBlock): 1024 at D = 128, 512 at Dk + Dv = 456
        out.add(new Case(14, 1, 2, 1, 70, 1500, 128, 128, true, "additive4d", false));
        out.add(new Case(15, 1, 1, 1, 40, 700, 256, 200, false, "bool2d", true));
        return out.stream().map(c -> Named.of(c.toString(), c));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void matchesReference(Case c) {
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(c.seed());
            Tensor q = random(arena, r, c.b(), c.hq(), c.lq(), c.dk());
            Tensor k;
            if (c.kTransposed()) {
                // storage [B, Hkv, Dk, Lk], viewed as [B, Hkv, Lk, Dk] with unit stride along Lk
                k = random(arena, r, c.b(), c.hkv(), c.dk(), c.lk()).transpose(2, 3);
            } else {
                k = random(arena, r, c.b(), c.hkv(), c.lk(), c.dk());
            }
            Tensor v = random(arena, r, c.b(), c.hkv(), c.lk(), c.dv());
            Mask mask = switch (c.mask()) {
                case "bool2d" -> Mask.allowed(bernoulli(arena, r, 0.7, c.lq(), c.lk()));
                case "additive4d" -> Mask.additive(uniform(arena, r, -3, 1, c.b(), c.hq(), c.lq(), c.lk()));
                case "keypad" -> Mask.allowed(bernoulli(arena, r, 0.8, c.b(), 1, 1, c.lk()));
                default -> null;
            };
            SdpaOptions o = SdpaOptions.DEFAULT.withCausal(c.causal()).withMask(mask);
            Tensor ref = Tensor.allocate(arena, c.b(), c.hq(), c.lq(), c.dv());
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
            float[] want = ref.toArray();
            double tol = 4.0 * (c.dk() + c.lk()) * 0x1p-24;
            for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
                for (int threads : new int[] {1, 2}) {
                    Attention a = Attention.create(backend, threads);
                    Tensor got = Tensor.allocate(arena, c.b(), c.hq(), c.lq(), c.dv()).fill(Float.NaN);
                    a.sdpa(q, k, v, got, o);
                    check(c + " " + backend + " threads=" + threads + " " + a.plan(q, k, v, got, o),
                            got.toArray(), want, c.dv(), tol);
                    Tensor viaWs = Tensor.allocate(arena, c.b(), c.hq(), c.lq(), c.dv()).fill(Float.NaN);
                    a.sdpa(q, k, v, viaWs, o, Workspace.allocate(arena, a.workspaceBytes(q, k, v, viaWs, o)));
                    check(c + " " + backend + " threads=" + threads + " workspace", viaWs.toArray(), want, c.dv(), tol);
                }
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void budgetLowersBlockRowsAndStaysExact(Backend backend) {
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(5);
            int lq = 150;
            int lk = 1000;
            Tensor q = random(arena, r, 1, 2, lq, 32);
            Tensor k = random(arena, r, 1, 2, lk, 32);
            Tensor v = random(arena, r, 1, 2, lk, 32);
            Tensor ref = Tensor.allocate(arena, 1, 2, lq, 32);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            Attention unbounded = Attention.create(backend, 2);
            long full = scratch(unbounded.plan(q, k, v, ref, SdpaOptions.CAUSAL));
            Attention bounded = Attention.builder().backend(backend).threads(2).workspaceBudget(full / 3).build();
            String plan = bounded.plan(q, k, v, ref, SdpaOptions.CAUSAL);
            assertTrue(scratch(plan) <= full / 3, plan + " exceeds " + full / 3);
            Tensor got = Tensor.allocate(arena, 1, 2, lq, 32);
            bounded.sdpa(q, k, v, got, SdpaOptions.CAUSAL);
            check(backend + " " + plan, got.toArray(), ref.toArray(), 32, 4.0 * (32 + lk) * 0x1p-24);
            Attention tiny = Attention.builder().backend(backend).workspaceBudget(64).build();
            IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                    () -> tiny.sdpa(q, k, v, got, SdpaOptions.CAUSAL));
            assertTrue(e.getMessage().contains("budget") && e.getMessage().contains("q [1, 2, 150, 32]"), e.getMessage());
        }
    }

    /**
     * With at least 4 heads per worker the Java engine's task is a whole head (each head packed once): on 2 threads
     * the plan says so, the output matches the reference, and it is bit-identical to the one-thread run, whose
     * tasks are single blocks. Causal and dense, with GQA (two query heads per kv head) and a partial last block.
     */
    @Test
    void wholeHeadTasksMatchBlockTasksBitForBit() {
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(11);
            int lq = 150;
            Tensor q = random(arena, r, 1, 8, lq, 64);
            Tensor k = random(arena, r, 1, 4, lq, 64);
            Tensor v = random(arena, r, 1, 4, lq, 64);
            for (SdpaOptions o : List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL)) {
                Tensor ref = Tensor.allocate(arena, 1, 8, lq, 64);
                Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
                Attention one = Attention.create(Backend.JAVA, 1);
                Attention two = Attention.create(Backend.JAVA, 2);
                String plan = two.plan(q, k, v, ref, o);
                assertTrue(plan.contains("workers=2") && plan.contains("(whole heads)"), plan);
                assertTrue(!one.plan(q, k, v, ref, o).contains("whole heads"), one.plan(q, k, v, ref, o));
                Tensor a = Tensor.allocate(arena, 1, 8, lq, 64);
                Tensor b = Tensor.allocate(arena, 1, 8, lq, 64);
                one.sdpa(q, k, v, a, o);
                two.sdpa(q, k, v, b, o);
                float[] y = b.toArray();
                Fixtures.assertBitIdentical(plan + ", 1 and 2 threads", b.shape(), a.toArray(), y);
                check(plan, y, ref.toArray(), 64, 4.0 * (64 + lq) * 0x1p-24);
            }
        }
    }

    /**
     * The Java engine runs query blocks that see more than one key block together, key block by key block, in
     * spans ({@code Attention.SPAN_BLOCKS}); a row's bits must not depend on which blocks share its span. One thread
     * takes the five blocks as one span; two threads, with fewer than 4 spans per worker otherwise, a block per
     * task. The two are compared bit for bit, dense, causal (Lq &lt; Lk, so the first blocks see fewer keys than
     * the last) and masked, over three key blocks with a partial last one, and against the reference. A causal
     * Lq = Lk call then mixes, within a span, blocks of one key block (run alone) and blocks of two (spans of 16
     * blocks on one thread, of 4 on two). The native engine's online path (the same method, a block at a time)
     * is compared the same way.
     */
    @Test
    void spansOfBlocksMatchSingleBlocksBitForBit() {
        int kb = Attention.javaKeyBlock(32, 32);
        spansMatch(300, 2 * kb + 404, true);
        // at least 1200 (two-thread work) when qkv.keyBlock makes the key block small
        spansMatch(Math.max(kb + 150, 1200), Math.max(kb + 150, 1200), false);
    }

    private static void spansMatch(int lq, int lk, boolean all) {
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(21);
            Tensor q = random(arena, r, 1, 1, lq, 32);
            Tensor k = random(arena, r, 1, 1, lk, 32);
            Tensor v = random(arena, r, 1, 1, lk, 32);
            Mask mask = Mask.allowed(bernoulli(arena, r, 0.6, lq, lk));
            List<SdpaOptions> options = all
                    ? List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL, SdpaOptions.CAUSAL.withMask(mask))
                    : List.of(SdpaOptions.CAUSAL);
            for (SdpaOptions o : options) {
                Tensor ref = Tensor.allocate(arena, 1, 1, lq, 32);
                Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
                for (Backend backend : new Backend[] {Backend.JAVA, Backend.NATIVE}) {
                    spansMatch(arena, q, k, v, o, ref.toArray(), backend);
                }
            }
        }
    }

    private static void spansMatch(Arena arena, Tensor q, Tensor k, Tensor v, SdpaOptions o, float[] want,
                                   Backend backend) {
        Tensor a = Tensor.allocate(arena, q.size(0), q.size(1), q.size(2), v.size(3)).fill(Float.NaN);
        Tensor b = Tensor.allocate(arena, q.size(0), q.size(1), q.size(2), v.size(3)).fill(Float.NaN);
        Attention one = Attention.create(backend, 1);
        Attention two = Attention.create(backend, 2);
        String plan1 = one.plan(q, k, v, a, o);
        String plan2 = two.plan(q, k, v, b, o);
        // the Java engine: spans of SPAN_BLOCKS on one thread; on two, enough spans for 4 per worker. The native
        // engine runs a block at a time (its bits must not depend on the threads either)
        int rows = (int) planField(plan1, "blockRows");
        int blocks = (int) ((q.size(2) + rows - 1) / rows);
        int span1 = backend == Backend.JAVA ? Math.min(blocks, Attention.SPAN_BLOCKS) : 1;
        int span2 = Math.max(1, Math.min(span1, blocks / 8));
        assertTrue(span1 == 1 ? !plan1.contains("spanBlocks") : plan1.contains("spanBlocks=" + span1), plan1);
        assertTrue(plan2.contains("workers=2")
                && (span2 == 1 ? !plan2.contains("spanBlocks") : plan2.contains("spanBlocks=" + span2)), plan2);
        one.sdpa(q, k, v, a, o);
        two.sdpa(q, k, v, b, o);
        float[] x = a.toArray();
        Fixtures.assertBitIdentical(plan1 + " / " + plan2, a.shape(), x, b.toArray());
        check(plan1, x, want, (int) v.size(3), 4.0 * (q.size(3) + k.size(2)) * 0x1p-24);
    }

    /**
     * A decode-sized native call whose all-keys score tile (the sgemv path) exceeds the budget runs the blocked
     * path, whose tile holds one key block, and stays exact.
     */
    @Test
    void nativeFewQueriesFallBackToKeyBlocksUnderATightBudget() {
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(6);
            int lk = 3 * Attention.KEY_BLOCK + 5;
            Tensor q = random(arena, r, 1, 2, 3, 16);
            Tensor k = random(arena, r, 1, 2, lk, 16);
            Tensor v = random(arena, r, 1, 2, lk, 16);
            Tensor ref = Tensor.allocate(arena, 1, 2, 3, 16);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            Attention free = Attention.create(Backend.NATIVE, 1);
            assertTrue(free.plan(q, k, v, ref, SdpaOptions.CAUSAL).startsWith("kernel=native-gemv"));
            long budget = 3L * lk * Float.BYTES - 1;
            Attention bounded = Attention.builder().backend(Backend.NATIVE).threads(1).workspaceBudget(budget).build();
            String plan = bounded.plan(q, k, v, ref, SdpaOptions.CAUSAL);
            assertTrue(plan.startsWith("kernel=native ") && scratch(plan) <= budget, plan);
            for (Attention a : new Attention[] {free, bounded}) {
                Tensor got = Tensor.allocate(arena, 1, 2, 3, 16);
                a.sdpa(q, k, v, got, SdpaOptions.CAUSAL);
                check(a.plan(q, k, v, ref, SdpaOptions.CAUSAL), got.toArray(), ref.toArray(), 16,
                        4.0 * (16 + lk) * 0x1p-24);
            }
        }
    }

    /**
     * The Java engine's key block keeps one block's packed kᵀ, v and score tile within the L2 budget, and is the
     * largest such halving of KEY_BLOCK: D = 64 keeps 2048 keys, D = 128 takes 1024.
     */
    @Test
    void javaKeyBlockFitsTheL2Budget() {
        // -Dqkv.keyBlock sets the block for every head size (to run the suites through the online path)
        Assumptions.assumeTrue(System.getProperty("qkv.keyBlock") == null, "qkv.keyBlock overrides the rule");
        for (int dk : new int[] {1, 16, 64, 65, 128, 200, 256, 512, 1024}) {
            for (int dv : new int[] {1, 32, 64, 128, 256, 1024}) {
                int kb = Attention.javaKeyBlock(dk, dv);
                long set = (long) kb * (dk + dv + Attention.BLOCK_ROWS) * Float.BYTES;
                String at = "Dk=" + dk + " Dv=" + dv + " keyBlock=" + kb;
                assertTrue(kb >= 256 && kb <= Attention.KEY_BLOCK && Integer.bitCount(kb) == 1, at);
                assertTrue(set <= Attention.KEY_BLOCK_L2_BYTES || kb == 256, at);
                assertTrue(kb == Attention.KEY_BLOCK || 2 * set > Attention.KEY_BLOCK_L2_BYTES, at);
            }
        }
        assertEquals(2048, Attention.javaKeyBlock(64, 64));
        assertEquals(1024, Attention.javaKeyBlock(128, 128));
    }

    static Stream<Named<Backend>> backends() {
        return Stream.of(Backend.NATIVE, Backend.JAVA).map(b -> Named.of(b.cliName(), b));
    }

    /** The value of {@code name=...} in a plan line. */
    static long planField(String plan, String name) {
        for (String part : plan.split(" ")) {
            if (part.startsWith(name + "=")) {
                return Long.parseLong(part.substring(name.length() + 1));
            }
        }
        throw new AssertionError(name + " not in " + plan);
    }

    /** workspaceBytes + heapScratchBytes of a plan line. */
    private static long scratch(String plan) {
        long sum = 0;
        for (String part : plan.split(" ")) {
            if (part.startsWith("workspaceBytes=") || part.startsWith("heapScratchBytes=")) {
                sum += Long.parseLong(part.substring(part.indexOf('=') + 1));
            }
        }
        assertTrue(sum > 0, plan);
        return sum;
    }

    /**
     * A span of query blocks whose first block sees fewer key blocks than its last: causal, Lk - Lq not a multiple
     * of the key block, and enough rows that a span of {@code Attention.SPAN_BLOCKS} blocks crosses a key-block
     * boundary (its first block sees 2 key blocks, its last 3). The online loop must run to the last block's keys;
     * found by a mutant bounding it by the first block's keys, which no other case here noticed (their spans never
     * cross such a boundary). One thread, so that one task takes the whole span.
     */
    @Test
    void spanWhoseLastBlockSeesMoreKeyBlocksThanItsFirst() {
        int kb = Attention.javaKeyBlock(32, 32);
        int rowsPerSpan = Attention.SPAN_BLOCKS * 64;
        int lq = 2 * kb + rowsPerSpan / 2 + 64;
        int lk = lq + kb / 2 + 52;
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(33);
            Tensor q = random(arena, r, 1, 1, lq, 32);
            Tensor k = random(arena, r, 1, 1, lk, 32);
            Tensor v = random(arena, r, 1, 1, lk, 32);
            Tensor ref = Tensor.allocate(arena, 1, 1, lq, 32);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            Attention a = Attention.create(Backend.JAVA, 1);
            Tensor got = Tensor.allocate(arena, 1, 1, lq, 32).fill(Float.NaN);
            a.sdpa(q, k, v, got, SdpaOptions.CAUSAL);
            check("Lq=" + lq + " Lk=" + lk + " " + a.plan(q, k, v, got, SdpaOptions.CAUSAL), got.toArray(),
                    ref.toArray(), 32, 4.0 * (32 + lk) * 0x1p-24);
        }
    }

    private static void check(String context, float[] got, float[] want, int dv, double tol) {
        assertEquals(want.length, got.length, context);
        int bad = 0;
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < got.length; i++) {
            double err = Math.abs((double) got[i] - want[i]);
            if (!(err <= tol + tol * Math.abs(want[i]))) {
                if (bad++ < 5) {
                    sb.append("\n  row ").append(i / Math.max(dv, 1)).append(" col ").append(i % Math.max(dv, 1))
                            .append(": got ").append(got[i]).append(" want ").append(want[i]);
                }
            }
        }
        if (bad > 0) {
            fail(context + ": " + bad + " elements beyond atol=rtol=" + tol + sb);
        }
    }

    static Tensor random(Arena arena, SplittableRandom r, long... shape) {
        return uniform(arena, r, -1, 1, shape);
    }

    static Tensor uniform(Arena arena, SplittableRandom r, double lo, double hi, long... shape) {
        Tensor t = Tensor.allocate(arena, shape);
        float[] x = new float[(int) t.elementCount()];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) (lo + (hi - lo) * r.nextDouble());
        }
        return t.copyFrom(x);
    }

    static Tensor bernoulli(Arena arena, SplittableRandom r, double p, long... shape) {
        Tensor t = Tensor.allocate(arena, shape);
        float[] x = new float[(int) t.elementCount()];
        for (int i = 0; i < x.length; i++) {
            x[i] = r.nextDouble() < p ? 1f : 0f;
        }
        return t.copyFrom(x);
    }

    /**
     * Few queries with grouped kv heads run a task per (batch, kv head), the group's query heads together, key
     * block by key block (and p·v's partial sums kept in the output between blocks). Each head's arithmetic is that
     * of a task per head, so the output must equal, bit for bit, attention on k and v expanded to Hq heads (which
     * runs a task per head), and match the reference. Cases: several key blocks (2100 keys of 64 floats: blocks of
     * 1024; a call within one block keeps a task per head), a v row of 20 (masked vector tail), causal and masked
     * rows, one and two threads, and a caller's workspace or a budget sized for one head's rows per worker, which
     * keep a task per head (the same bits again).
     */
    @Test
    void groupedDecodeEqualsExpandedHeadsBitForBit() {
        Assumptions.assumeTrue(dev.qkv.kernel.Vectorization.enabled(), "Vector API module absent");
        // {B, Hq, Hkv, Lq, Lk, Dk, Dv}
        int[][] shapes = {{2, 8, 2, 3, 2100, 64, 64}, {1, 4, 1, 1, 1100, 128, 20}, {1, 6, 3, 7, 4100, 32, 33}};
        try (Arena arena = Arena.ofShared()) {
            for (int[] sh : shapes) {
                int b = sh[0], hq = sh[1], hkv = sh[2], lq = sh[3], lk = sh[4], dk = sh[5], dv = sh[6];
                java.util.Random r = new java.util.Random(31 + lk);
                Tensor q = Fixtures.random(arena, r, b, hq, lq, dk);
                Tensor k = Fixtures.random(arena, r, b, hkv, lk, dk);
                Tensor v = Fixtures.random(arena, r, b, hkv, lk, dv);
                Tensor kx = Fixtures.expandHeads(arena, k, hq);
                Tensor vx = Fixtures.expandHeads(arena, v, hq);
                Tensor mask = bernoulli(arena, new SplittableRandom(31 + lk), 0.75, lq, lk);
                List<SdpaOptions> options = List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL,
                        SdpaOptions.DEFAULT.withMask(Mask.allowed(mask)));
                for (SdpaOptions o : options) {
                    Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                    ReferenceAttention.compute(q, k, v, ref, o);
                    for (int threads : new int[] {1, 2}) {
                        Attention at = Attention.builder().backend(Backend.JAVA).threads(threads).build();
                        Tensor grouped = Tensor.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                        Tensor expanded = Tensor.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                        Tensor small = Tensor.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                        String what = "B=" + b + " Hq=" + hq + " Hkv=" + hkv + " Lq=" + lq + " Lk=" + lk + " Dk=" + dk
                                + " Dv=" + dv + " causal=" + o.causal() + " mask=" + (o.mask() != null)
                                + " threads=" + threads;
                        assertTrue(at.plan(q, k, v, grouped, o).contains(" tasks=" + (b * hkv) + " "),
                                what + ": a task per kv head expected, plan " + at.plan(q, k, v, grouped, o));
                        at.sdpa(q, k, v, grouped, o);
                        at.sdpa(q, kx, vx, expanded, o);
                        Workspace one = Workspace.allocate(arena, at.scoreTileBytes(lq, lk));
                        at.sdpa(q, k, v, small, o, one);
                        // a budget for one head's rows (scores and scaled q) per worker: a task per head, no error
                        Attention tight = Attention.builder().backend(Backend.JAVA).threads(threads)
                                .workspaceBudget(((long) lq * lk + (long) lq * dk) * Float.BYTES).build();
                        Tensor budgeted = Tensor.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                        assertTrue(tight.plan(q, k, v, budgeted, o).contains(" tasks=" + (b * hq) + " "),
                                what + ": a task per head expected, plan " + tight.plan(q, k, v, budgeted, o));
                        tight.sdpa(q, k, v, budgeted, o);
                        Fixtures.assertBitIdentical(what + " grouped vs a budget for one head", grouped.shape(),
                                grouped.toArray(), budgeted.toArray());
                        Fixtures.assertBitIdentical(what + " grouped vs expanded", grouped.shape(),
                                grouped.toArray(), expanded.toArray());
                        Fixtures.assertBitIdentical(what + " grouped vs a task per head", grouped.shape(),
                                grouped.toArray(), small.toArray());
                        double tol = Fixtures.tol(dk, lk, 2);
                        Fixtures.assertClose(what, grouped.shape(), grouped.toArray(), ref.toArray(), tol, tol);
                    }
                }
            }
        }
    }

    /**
     * The grouped few-query path ({@code runGroup}: few queries, grouped kv heads, more keys than one of its key
     * blocks) masks each query head with that head's own rows of the mask. The grouped test above broadcasts one
     * mask to every head, so a mutant that masked every head of a group with its first head's mask survived it
     * (mutation testing, round 21). Per-head masks of rank 4 ({@code [B, Hq, Lq, Lk]}, boolean) and rank 3
     * ({@code [Hq, 1, Lk]}, additive), alone and with causal, against the reference; 1100 keys of 64 floats
     * take two key blocks (1024 and a tail of 76), Dv = 40 a vector tail.
     */
    @Test
    void groupedDecodeAppliesEachHeadsOwnMask() {
        Assumptions.assumeTrue(dev.qkv.kernel.Vectorization.enabled(), "Vector API module absent");
        int b = 2, hq = 4, hkv = 2, lq = 3, lk = 1100, dk = 64, dv = 40;
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(77);
            Tensor q = random(arena, r, b, hq, lq, dk);
            Tensor k = random(arena, r, b, hkv, lk, dk);
            Tensor v = random(arena, r, b, hkv, lk, dv);
            Mask perHead = Mask.allowed(bernoulli(arena, r, 0.5, b, hq, lq, lk));
            Mask perHeadKeys = Mask.additive(uniform(arena, r, -4, 2, hq, 1, lk));
            List<SdpaOptions> options = List.of(SdpaOptions.DEFAULT.withMask(perHead),
                    SdpaOptions.CAUSAL.withMask(perHead), SdpaOptions.DEFAULT.withMask(perHeadKeys));
            for (SdpaOptions o : options) {
                Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                ReferenceAttention.compute(q, k, v, ref, o);
                Attention at = Attention.create(Backend.JAVA, 1);
                Tensor got = Tensor.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                String plan = at.plan(q, k, v, got, o);
                // the grouped path: a task per (batch, kv head)
                assertTrue(plan.contains(" tasks=" + (b * hkv) + " "), "a task per kv head expected, plan " + plan);
                at.sdpa(q, k, v, got, o);
                double tol = Fixtures.tol(dk, lk, 4);
                Fixtures.assertClose(plan + " options #" + options.indexOf(o), got.shape(),
                        got.toArray(), ref.toArray(), tol, tol);
            }
        }
    }

    /**
     * An output view without unit-stride rows (strided, or transposed) makes the generic engine compute each
     * block's rows in a packed copy and unpack them afterwards; on the online path (more keys than a key block)
     * the final 1/sum must be applied to that copy. No test wrote such a view past one key block, and a mutant
     * that applied it to {@code out}'s offsets instead ({@code Job.runOnline}'s {@code onlineFinish} call) passed
     * every attention suite (mutation testing, round 21). Both backends, dense, causal and masked, against the
     * reference.
     */
    @Test
    void onlinePathWritesOutputViewsWithoutUnitStrideRows() {
        int b = 1, hq = 2, hkv = 1, lq = 70, lk = 2 * Attention.KEY_BLOCK + 300, dk = 24, dv = 20;
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(91);
            Tensor q = random(arena, r, b, hq, lq, dk);
            Tensor k = random(arena, r, b, hkv, lk, dk);
            Tensor v = random(arena, r, b, hkv, lk, dv);
            Mask mask = Mask.allowed(bernoulli(arena, r, 0.7, lq, lk));
            for (SdpaOptions o : List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL.withMask(mask))) {
                Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                ReferenceAttention.compute(q, k, v, ref, o);
                for (Fixtures.Layout layout : new Fixtures.Layout[] {Fixtures.Layout.STRIDED,
                        Fixtures.Layout.TRANSPOSED}) {
                    for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
                        Attention a = Attention.create(backend, 1);
                        Tensor got = layout.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                        a.sdpa(q, k, v, got, o);
                        check(backend + " out " + layout + " causal=" + o.causal() + " " + a.plan(q, k, v, got, o),
                                got.toArray(), ref.toArray(), dv, 4.0 * (dk + lk) * 0x1p-24);
                    }
                }
            }
        }
    }

    /**
     * A mask view whose keys are not adjacent (the transpose of a dense {@code [Lk, Lq]}: key stride Lq) on the
     * online path: each key block must read its mask columns at {@code j0 · stride}. The suites' online cases use
     * dense masks (key stride 1) and their transposed masks stay within one key block, so a mutant that offset the
     * key blocks' mask by {@code j0} elements ({@code Job.rowMaxes}) passed EngineTest, AttentionVsReferenceTest,
     * NativeSmallCallsTest and SdpaFuzzTest (mutation testing, round 21). Both backends, boolean and additive,
     * causal or not, against the reference.
     */
    @Test
    void onlinePathReadsMaskViewsByTheirKeyStride() {
        int b = 1, hq = 2, hkv = 2, lq = 70, lk = 2 * Attention.KEY_BLOCK + 300, dk = 24, dv = 20;
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(92);
            Tensor q = random(arena, r, b, hq, lq, dk);
            Tensor k = random(arena, r, b, hkv, lk, dk);
            Tensor v = random(arena, r, b, hkv, lk, dv);
            // [Lq, Lk] views of dense [Lk, Lq] storage
            Mask allowed = Mask.allowed(bernoulli(arena, r, 0.6, lk, lq).transpose(0, 1));
            Mask additive = Mask.additive(uniform(arena, r, -4, 2, lk, lq).transpose(0, 1));
            for (SdpaOptions o : List.of(SdpaOptions.DEFAULT.withMask(allowed), SdpaOptions.CAUSAL.withMask(allowed),
                    SdpaOptions.DEFAULT.withMask(additive))) {
                Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                ReferenceAttention.compute(q, k, v, ref, o);
                for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
                    Attention a = Attention.create(backend, 1);
                    Tensor got = Tensor.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                    a.sdpa(q, k, v, got, o);
                    check(backend + " causal=" + o.causal() + " " + o.mask().kind() + " " + a.plan(q, k, v, got, o),
                            got.toArray(), ref.toArray(), dv, 4.0 * (dk + lk) * 0x1p-24);
                }
            }
        }
    }

    /**
     * q, k and v in every layout of {@link Fixtures.Layout} (heads interleaved, padded slices, transposed views
     * read in place, strided views packed) on the online path, where each key block's operands start
     * {@code j0} rows in: {@code j0 · rowStep} floats, which is not {@code j0 · ld} for a transposed view. The
     * suites' online cases transpose k only, so a mutant that stepped v by {@code j0 · ld}
     * ({@code Job.genericOnlineStep}) passed EngineTest, AttentionVsReferenceTest, NativeSmallCallsTest,
     * SdpaFuzzTest and TensorViewFuzzTest (mutation testing, round 21). Both backends, dense and causal, against
     * the reference on contiguous copies.
     */
    @Test
    void onlinePathReadsOperandViewsInEveryLayout() {
        int b = 1, hq = 2, hkv = 1, lq = 70, lk = 2 * Attention.KEY_BLOCK + 300, dk = 24, dv = 20;
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(93);
            Tensor q = random(arena, r, b, hq, lq, dk);
            Tensor k = random(arena, r, b, hkv, lk, dk);
            Tensor v = random(arena, r, b, hkv, lk, dv);
            for (SdpaOptions o : List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL)) {
                Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                ReferenceAttention.compute(q, k, v, ref, o);
                for (Fixtures.Layout layout : Fixtures.Layout.values()) {
                    Tensor qv = layout.of(arena, q.toArray(), b, hq, lq, dk);
                    Tensor kv = layout.of(arena, k.toArray(), b, hkv, lk, dk);
                    Tensor vv = layout.of(arena, v.toArray(), b, hkv, lk, dv);
                    for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
                        Attention a = Attention.create(backend, 1);
                        Tensor got = Tensor.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                        a.sdpa(qv, kv, vv, got, o);
                        check(backend + " q, k, v " + layout + " causal=" + o.causal() + " "
                                + a.plan(qv, kv, vv, got, o), got.toArray(), ref.toArray(), dv,
                                4.0 * (dk + lk) * 0x1p-24);
                    }
                }
            }
        }
    }

    /**
     * The grouped few-query path reads q, k and v and writes out through their row strides: views whose rows are
     * not adjacent ({@link Fixtures.Layout#HEADS_INNER}, as the projections of a layer give, and
     * {@link Fixtures.Layout#PADDED}) still take it. Its grouped test above uses contiguous tensors only, so a
     * mutant that took k's row stride as Dk ({@code Job.runGroup}) passed EngineTest, AttentionVsReferenceTest,
     * TensorViewFuzzTest, SdpaFuzzTest, MultiHeadAttentionTest and KvCacheTest (mutation testing, round 21).
     * Every layout, the row-major ones checked to take the grouped path, against the reference.
     */
    @Test
    void groupedDecodeReadsAndWritesViews() {
        Assumptions.assumeTrue(dev.qkv.kernel.Vectorization.enabled(), "Vector API module absent");
        int b = 2, hq = 4, hkv = 2, lq = 3, lk = 1100, dk = 64, dv = 40;
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(94);
            Tensor q = random(arena, r, b, hq, lq, dk);
            Tensor k = random(arena, r, b, hkv, lk, dk);
            Tensor v = random(arena, r, b, hkv, lk, dv);
            for (SdpaOptions o : List.of(SdpaOptions.DEFAULT, SdpaOptions.CAUSAL)) {
                Tensor ref = Tensor.allocate(arena, b, hq, lq, dv);
                ReferenceAttention.compute(q, k, v, ref, o);
                for (Fixtures.Layout layout : Fixtures.Layout.values()) {
                    Tensor qv = layout.of(arena, q.toArray(), b, hq, lq, dk);
                    Tensor kv = layout.of(arena, k.toArray(), b, hkv, lk, dk);
                    Tensor vv = layout.of(arena, v.toArray(), b, hkv, lk, dv);
                    Tensor got = layout.allocate(arena, b, hq, lq, dv).fill(Float.NaN);
                    Attention a = Attention.create(Backend.JAVA, 1);
                    String plan = a.plan(qv, kv, vv, got, o);
                    if (layout == Fixtures.Layout.HEADS_INNER || layout == Fixtures.Layout.PADDED) {
                        assertTrue(plan.contains(" tasks=" + (b * hkv) + " "), layout + ": grouped path expected, "
                                + plan);
                    }
                    a.sdpa(qv, kv, vv, got, o);
                    check("q, k, v, out " + layout + " causal=" + o.causal() + " " + plan, got.toArray(),
                            ref.toArray(), dv, 4.0 * (dk + lk) * 0x1p-24);
                }
            }
        }
    }
    /**
     * The README's "views are free": {@code x.transpose(1, 2)} of a dense {@code [B, L, H, D]} is read in place, so
     * a call on such views plans the same off-heap workspace and heap scratch as on dense {@code [B, H, L, D]}
     * tensors (a packed copy of an operand would add its size to both), for prefill and decode sizes, grouped kv
     * heads included. The outputs agree with the dense call's.
     */
    @Test
    void transposedHeadViewsAreReadInPlace() {
        try (Arena arena = Arena.ofConfined()) {
            SplittableRandom r = new SplittableRandom(95);
            for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA, Backend.AUTO}) {
                Attention a = Attention.create(backend, 1);
                for (long lq : new long[] {1, 5, 130}) {
                    long b = 2, hq = 8, hkv = 2, lk = 140, d = 32;
                    Tensor q = random(arena, r, b, hq, lq, d);
                    Tensor k = random(arena, r, b, hkv, lk, d);
                    Tensor v = random(arena, r, b, hkv, lk, d);
                    Tensor qt = Tensor.allocate(arena, b, lq, hq, d).transpose(1, 2).copyFrom(q);
                    Tensor kt = Tensor.allocate(arena, b, lk, hkv, d).transpose(1, 2).copyFrom(k);
                    Tensor vt = Tensor.allocate(arena, b, lk, hkv, d).transpose(1, 2).copyFrom(v);
                    Tensor out = Tensor.allocate(arena, b, hq, lq, d);
                    Tensor outT = Tensor.allocate(arena, b, lq, hq, d).transpose(1, 2);
                    String what = backend + " Lq=" + lq;
                    assertEquals(a.plan(q, k, v, out, SdpaOptions.CAUSAL), a.plan(qt, kt, vt, outT, SdpaOptions.CAUSAL),
                            what + ": a transposed view needs no copy");
                    a.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
                    a.sdpa(qt, kt, vt, outT, SdpaOptions.CAUSAL);
                    check(what, outT.toArray(), out.toArray(), (int) d, 4.0 * (d + lk) * 0x1p-24);
                }
            }
        }
    }
}
