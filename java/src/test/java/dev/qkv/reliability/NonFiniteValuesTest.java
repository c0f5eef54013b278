package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * NaN and ±Inf in v: a key whose weight is exactly zero (masked, past the causal limit, or underflowed) never
 * contributes, and one with a non-zero weight propagates as IEEE arithmetic says. Checked on every backend, with
 * one and two threads and every block size the engine can be pushed to (a workspace budget lowers the 64 block
 * rows to 32, 16, 8), so the result cannot depend on which rows share a block.
 *
 * <p>The expectation is independent of the code under test: the reference on the clean inputs, plus the closed
 * form of IEEE propagation: a column that sees a NaN, or both +Inf and -Inf, is NaN; one that sees only +Inf
 * (or only -Inf) is that infinity; the rest equals the clean result.
 */
class NonFiniteValuesTest {
    private static final Pattern BLOCK_ROWS = Pattern.compile("blockRows=(\\d+)");

    /** One call's inputs as arrays, its options, and which (key, column) of v holds which poison. */
    private record Case(long b, long hq, long hkv, long lq, long lk, long dk, long dv, float[] q, float[] k,
                        float[] v, float[] mask, boolean boolMask, boolean causal, Map<long[], Float> poison,
                        String name) {
        SdpaOptions options(Arena arena) {
            Mask m = mask == null ? null : boolMask ? Mask.allowed(Tensor.of(arena, mask, b, hq, lq, lk))
                    : Mask.additive(Tensor.of(arena, mask, b, hq, lq, lk));
            return new SdpaOptions(causal, m, Float.NaN);
        }

        /**
         * Whether row (b, h, i) gives key j a non-zero weight: allowed, and not pushed out of float range. Scores
         * here stay within ±2, so an additive -1000 leaves a weight of exp(-1000), 0 in float, unless every key the
         * row may see has -1000 (or -inf): then those are the row's maximum and weigh normally.
         */
        boolean weighs(long bb, long h, long i, long j) {
            if (!visible(i, j)) {
                return false;
            }
            if (mask == null) {
                return true;
            }
            long row = ((bb * hq + h) * lq + i) * lk;
            float m = mask[(int) (row + j)];
            if (boolMask) {
                return m != 0f;
            }
            return m != Float.NEGATIVE_INFINITY && (m > -150f || !anyNear(row, i));
        }

        private boolean visible(long i, long j) {
            return !causal || j <= i + (lk - lq);
        }

        private boolean anyNear(long row, long i) {
            for (long j = 0; j < lk; j++) {
                if (visible(i, j) && mask[(int) (row + j)] > -150f) {
                    return true;
                }
            }
            return false;
        }
    }

    private static Tensor tensor(Arena arena, float[] x, long... shape) {
        return Tensor.of(arena, x, shape);
    }

    private static float[] run(Attention att, Case c, float[] v, Arena arena) {
        return run(att, c, v, arena, OutLayout.CONTIGUOUS);
    }

    /** How the output tensor lies in memory: dense, or a view without unit-stride rows. */
    private enum OutLayout {
        CONTIGUOUS,
        /** Every other float of a dense {@code [B, Hq, Lq, Dv, 2]}: last stride 2. */
        STRIDED,
        /** The transpose of a dense {@code [B, Hq, Dv, Lq]}: last stride Lq. */
        TRANSPOSED;

        Tensor allocate(Arena arena, Case c) {
            return switch (this) {
                case CONTIGUOUS -> Tensor.allocate(arena, c.b, c.hq, c.lq, c.dv);
                case STRIDED -> Tensor.allocate(arena, c.b, c.hq, c.lq, c.dv, 2).select(4, 1);
                case TRANSPOSED -> Tensor.allocate(arena, c.b, c.hq, c.dv, c.lq).transpose(2, 3);
            };
        }
    }

    private static float[] run(Attention att, Case c, float[] v, Arena arena, OutLayout layout) {
        Tensor out = layout.allocate(arena, c).fill(-7f);
        att.sdpa(tensor(arena, c.q, c.b, c.hq, c.lq, c.dk), tensor(arena, c.k, c.b, c.hkv, c.lk, c.dk),
                tensor(arena, v, c.b, c.hkv, c.lk, c.dv), out, c.options(arena));
        return out.toArray();
    }

    /** Engines for one backend: 1 and 2 threads, and workspace budgets that give each reachable block size. */
    private static List<Attention> engines(Backend backend, Case c, Arena arena) {
        List<Attention> out = new ArrayList<>();
        Tensor q = Tensor.allocate(arena, c.b, c.hq, c.lq, c.dk);
        Tensor k = Tensor.allocate(arena, c.b, c.hkv, c.lk, c.dk);
        Tensor v = Tensor.allocate(arena, c.b, c.hkv, c.lk, c.dv);
        Tensor o = Tensor.allocate(arena, c.b, c.hq, c.lq, c.dv);
        SdpaOptions opt = c.options(arena);
        for (int threads : new int[] {1, 2}) {
            Attention full = Attention.create(backend, threads);
            out.add(full);
            if (backend == Backend.REFERENCE) {
                continue;
            }
            // halve the budget until the plan no longer fits; keep one engine per distinct block size
            long budget = full.workspaceBytes(q, k, v, o, opt) + (64L << 20);
            java.util.Set<String> seen = new java.util.HashSet<>();
            for (int n = 0; n < 40; n++) {
                Attention a = Attention.builder().backend(backend).threads(threads).workspaceBudget(budget).build();
                String plan;
                try {
                    plan = a.plan(q, k, v, o, opt);
                } catch (IllegalArgumentException tooSmall) {
                    break;
                }
                Matcher m = BLOCK_ROWS.matcher(plan);
                assertTrue(m.find(), plan);
                if (seen.add(m.group(1)) && !m.group(1).equals("64")) {
                    out.add(a);
                }
                budget = budget * 3 / 4;
            }
        }
        return out;
    }

    private static void check(Backend backend, Case c) {
        check(backend, c, OutLayout.CONTIGUOUS);
    }

    private static void check(Backend backend, Case c, OutLayout layout) {
        try (Arena arena = Arena.ofShared()) {
            float[] ref = run(Attention.create(Backend.REFERENCE), c, c.v, arena);
            float[] poisoned = c.v.clone();
            for (Map.Entry<long[], Float> p : c.poison.entrySet()) {
                long[] at = p.getKey(); // {b, g, j, d}
                poisoned[(int) (((at[0] * c.hkv + at[1]) * c.lk + at[2]) * c.dv + at[3])] = p.getValue();
            }
            // 4·(Dk + Lk)·2^-24 per unit of 1 + |ref|, the attention tests' bound (see EdgeNumericsTest.TOL); it was
            // 8·(Lk + Dk + 16)·2^-24, which let softmax weights rounded to half precision pass
            double tol = 4 * Fuzz.EPS * (c.lk + c.dk);
            // budgets are sized for a dense out (a view's packed rows need more): views run the full engines only
            List<Attention> engines = layout == OutLayout.CONTIGUOUS ? engines(backend, c, arena)
                    : List.of(Attention.create(backend, 1), Attention.create(backend, 2));
            List<String> plans = new ArrayList<>();
            for (Attention att : engines) {
                float[] got = run(att, c, poisoned, arena, layout);
                String who = c.name + " out " + layout + " " + backend + " threads=" + att.threads() + " plan: "
                        + (backend == Backend.REFERENCE ? "reference" : att.plan(
                        Tensor.allocate(arena, c.b, c.hq, c.lq, c.dk), Tensor.allocate(arena, c.b, c.hkv, c.lk, c.dk),
                        Tensor.allocate(arena, c.b, c.hkv, c.lk, c.dv), Tensor.allocate(arena, c.b, c.hq, c.lq, c.dv),
                        c.options(arena)));
                plans.add(who);
                int group = (int) (c.hq / c.hkv);
                for (long b = 0; b < c.b; b++) {
                    for (long h = 0; h < c.hq; h++) {
                        for (long i = 0; i < c.lq; i++) {
                            for (long d = 0; d < c.dv; d++) {
                                boolean nan = false;
                                boolean pos = false;
                                boolean neg = false;
                                for (Map.Entry<long[], Float> p : c.poison.entrySet()) {
                                    long[] at = p.getKey();
                                    if (at[0] == b && at[1] == h / group && at[3] == d && c.weighs(b, h, i, at[2])) {
                                        float x = p.getValue();
                                        nan |= Float.isNaN(x);
                                        pos |= x == Float.POSITIVE_INFINITY;
                                        neg |= x == Float.NEGATIVE_INFINITY;
                                    }
                                }
                                int e = (int) (((b * c.hq + h) * c.lq + i) * c.dv + d);
                                String what = who + ": out[" + b + "," + h + "," + i + "," + d + "]=" + got[e];
                                if (nan || pos && neg) {
                                    assertTrue(Float.isNaN(got[e]), what + ", expected NaN");
                                } else if (pos || neg) {
                                    assertEquals(pos ? Float.POSITIVE_INFINITY : Float.NEGATIVE_INFINITY, got[e],
                                            what);
                                } else {
                                    assertEquals(ref[e], got[e], tol * (1 + Math.abs(ref[e])),
                                            what + ", the clean reference gives " + ref[e]);
                                }
                            }
                        }
                    }
                }
            }
            System.out.println(c.name + " " + backend + ": " + engines.size() + " engines, e.g. " + plans.getLast());
        }
    }

    private static float[] uniform(Random r, long n) {
        return Fuzz.uniform(r, (int) n);
    }

    /** Poison around the 64-row block boundaries and at the last key; the map keeps insertion order. */
    private static Map<long[], Float> poison(long hkv, long... keysAndColumns) {
        Map<long[], Float> p = new LinkedHashMap<>();
        float[] kinds = {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY};
        for (int n = 0; n < keysAndColumns.length; n += 2) {
            p.put(new long[] {0, n / 2 % hkv, keysAndColumns[n], keysAndColumns[n + 1]}, kinds[n / 2 % 3]);
        }
        return p;
    }

    private static Case causal(long seed, long dv) {
        Random r = new Random(seed);
        long b = 1;
        long hq = 4;
        long hkv = 2;
        long l = 300;
        long dk = 16;
        // +Inf and -Inf meet in column 3 at keys 65 and 128 of kv head 0 ... as the helper assigns them
        Map<long[], Float> p = poison(hkv, 63, 1, 64, 2, 65, 3, 127, 3, 128, 3, 129, 5, 200, 6, 299, 7, 10, 0);
        p.put(new long[] {0, 0, 130, 3}, Float.POSITIVE_INFINITY);
        p.put(new long[] {0, 0, 131, 3}, Float.NEGATIVE_INFINITY);
        return new Case(b, hq, hkv, l, l, dk, dv, uniform(r, b * hq * l * dk), uniform(r, b * hkv * l * dk),
                uniform(r, b * hkv * l * dv), null, false, true, p, "causal dv=" + dv + " seed=" + seed);
    }

    /** A mask of forbidden keys (a quarter, more at poisoned keys), a few fully masked rows, and causal or not. */
    private static Case masked(long seed, boolean bool, boolean causal) {
        Random r = new Random(seed);
        long b = 2;
        long hq = 2;
        long hkv = 1;
        long lq = 130;
        long lk = 150;
        long dk = 8;
        long dv = 6;
        Map<long[], Float> p = poison(hkv, 0, 0, 63, 1, 64, 2, 65, 3, 100, 4, 149, 5, 149, 0);
        p.put(new long[] {1, 0, 64, 2}, Float.NaN);
        float[] m = new float[(int) (b * hq * lq * lk)];
        for (int row = 0; row < b * hq * lq; row++) {
            boolean dead = r.nextInt(20) == 0;
            for (int j = 0; j < lk; j++) {
                boolean poisonKey = j == 0 || j == 63 || j == 64 || j == 65 || j == 100 || j == 149;
                boolean forbid = dead || r.nextInt(poisonKey ? 2 : 4) == 0;
                // additive: -inf forbids; -1000 leaves a weight exp(-1000 + O(1)), which is 0 in float
                float additive = forbid ? (r.nextBoolean() ? Float.NEGATIVE_INFINITY : -1000f) : 0.25f * r.nextFloat();
                m[(int) (row * lk + j)] = bool ? (forbid ? 0f : 1f) : additive;
            }
        }
        return new Case(b, hq, hkv, lq, lk, dk, dv, uniform(r, b * hq * lq * dk), uniform(r, b * hkv * lk * dk),
                uniform(r, b * hkv * lk * dv), m, bool, causal, p,
                (bool ? "boolean" : "additive") + " mask causal=" + causal + " seed=" + seed);
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void causalRowsNeverSeeLaterNonFiniteValues(Backend backend) {
        check(backend, causal(Fuzz.seed("nonfinite-causal"), 8));
    }

    /**
     * Output rows of at least one vector (Dv = 20: a whole vector and a tail), where the check for NaN rows scans
     * a block's rows in one vectorized pass before it looks at rows one by one.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void causalRowsNeverSeeLaterNonFiniteValuesInWideRows(Backend backend) {
        check(backend, causal(Fuzz.seed("nonfinite-causal-wide"), 20));
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void maskedKeysNeverContribute(Backend backend) {
        long seed = Fuzz.seed("nonfinite-mask");
        check(backend, masked(seed, true, false));
        check(backend, masked(seed + 1, false, true));
    }

    /**
     * More keys than one key block (2048): the engine takes them with an online softmax, whose rescaling of earlier
     * blocks must not turn a hidden Inf into NaN either.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void longSequencesOnTheOnlinePath(Backend backend) {
        Random r = new Random(Fuzz.seed("nonfinite-online"));
        long lq = 70;
        long lk = 2100;
        long dk = 8;
        long dv = 4;
        // causal bottom-right: row i sees keys up to i + 2030
        Map<long[], Float> p = poison(1, 2060, 0, 2099, 1, 2031, 2, 5, 3);
        check(backend, new Case(1, 1, 1, lq, lk, dk, dv, uniform(r, lq * dk), uniform(r, lk * dk), uniform(r, lk * dv),
                null, false, true, p, "online L=" + lk));
    }

    /**
     * Few queries with grouped kv heads and more keys than the grouped path's key block (256 KiB of 64-float rows:
     * 1024 keys) take the Java engine's grouped few-query path, a task per kv head, whose p·v sums every key's
     * row of v into every query row: its rows that came out NaN must be computed again there too. A mutant
     * without that recomputation ({@code Job.runGroup}) passed this class, whose other cases never reach the path
     * (mutation testing, round 21). Causal bottom-right: row i sees keys up to i + 1097, so the poison at keys
     * 1098 and 1099 reaches only the last rows, and a per-head mask hides some poisoned keys from some heads.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void groupedFewQueriesPath(Backend backend) {
        Random r = new Random(Fuzz.seed("nonfinite-grouped"));
        long b = 1;
        long hq = 4;
        long hkv = 2;
        long lq = 3;
        long lk = 1100;
        long dk = 64;
        long dv = 6;
        Map<long[], Float> p = poison(hkv, 1099, 0, 1098, 1, 1098, 2, 5, 3, 1030, 4, 700, 5);
        float[] m = new float[(int) (b * hq * lq * lk)];
        for (int row = 0; row < b * hq * lq; row++) {
            for (int j = 0; j < lk; j++) {
                // heads 1 and 3 (the second of each group) forbid the poisoned keys 5, 700 and 1030
                boolean forbid = (row / lq) % 2 == 1 && (j == 5 || j == 700 || j == 1030) || r.nextInt(5) == 0;
                m[(int) (row * lk + j)] = forbid ? 0f : 1f;
            }
        }
        Case c = new Case(b, hq, hkv, lq, lk, dk, dv, uniform(r, b * hq * lq * dk), uniform(r, b * hkv * lk * dk),
                uniform(r, b * hkv * lk * dv), m, true, true, p, "grouped few queries L=" + lk);
        if (backend == Backend.JAVA && dev.qkv.kernel.Vectorization.enabled()) {
            try (Arena arena = Arena.ofConfined()) {
                String plan = Attention.create(Backend.JAVA, 1).plan(Tensor.allocate(arena, b, hq, lq, dk),
                        Tensor.allocate(arena, b, hkv, lk, dk), Tensor.allocate(arena, b, hkv, lk, dv),
                        Tensor.allocate(arena, b, hq, lq, dv), c.options(arena));
                // the grouped path: a task per (batch, kv head)
                assertTrue(plan.contains(" tasks=" + b * hkv + " "), "grouped path expected, plan " + plan);
            }
        }
        check(backend, c);
    }

    /**
     * An output view without unit-stride rows (strided, transposed): the engine looks for rows that came out NaN
     * or infinite element by element there, not by its vectorized pass over dense rows. Every other case writes a
     * dense out, so a mutant whose element-wise check skipped the last column ({@code Job.redoNaNRows}) passed
     * this class, EngineTest, AttentionVsReferenceTest, TensorViewFuzzTest and EdgeNumericsTest (mutation
     * testing, round 21). The causal case, and one whose only poison is a NaN in the last column of the last
     * key, which every other row of the last block multiplies by a weight of 0: those rows are non-finite in that
     * column alone.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void outputViewsWithoutUnitStrideRows(Backend backend) {
        Case c = causal(Fuzz.seed("nonfinite-out-views"), 8);
        Map<long[], Float> last = new LinkedHashMap<>();
        last.put(new long[] {0, 0, c.lk - 1, c.dv - 1}, Float.NaN);
        Case lastColumn = new Case(c.b, c.hq, c.hkv, c.lq, c.lk, c.dk, c.dv, c.q, c.k, c.v, null, false, true, last,
                "causal, NaN at the last key's last column");
        for (OutLayout layout : new OutLayout[] {OutLayout.STRIDED, OutLayout.TRANSPOSED}) {
            check(backend, c, layout);
            check(backend, lastColumn, layout);
        }
    }

    /**
     * Without any mask: a key whose score is far below the row's maximum has weight exp(-400), 0 in float, so
     * its NaN does not reach that row (other rows, which weigh it, do get NaN).
     */
    @Test
    void underflowedWeightsNeverContribute() {
        Random r = new Random(Fuzz.seed("nonfinite-underflow"));
        long l = 100;
        long dk = 16;
        long dv = 4;
        float[] q = uniform(r, l * dk);
        float[] k = uniform(r, l * dk);
        // row 70 all ones, key 80 all -100: score -100 · 16 / 4 = -400 for row 70; other rows, anything
        java.util.Arrays.fill(q, (int) (70 * dk), (int) (71 * dk), 1f);
        java.util.Arrays.fill(k, (int) (80 * dk), (int) (81 * dk), -100f);
        for (Backend backend : Backend.values()) {
            for (int threads : new int[] {1, 2}) {
                try (Arena arena = Arena.ofConfined()) {
                    float[] v = uniform(new Random(5), l * dv);
                    Tensor qt = tensor(arena, q, 1, 1, l, dk);
                    Tensor kt = tensor(arena, k, 1, 1, l, dk);
                    Tensor ref = Tensor.allocate(arena, 1, 1, l, dv);
                    Attention.create(Backend.REFERENCE).sdpa(qt, kt, tensor(arena, v, 1, 1, l, dv), ref,
                            SdpaOptions.DEFAULT);
                    v[(int) (80 * dv + 1)] = Float.NaN;
                    Tensor out = Tensor.allocate(arena, 1, 1, l, dv);
                    Attention.create(backend, threads).sdpa(qt, kt, tensor(arena, v, 1, 1, l, dv), out,
                            SdpaOptions.DEFAULT);
                    for (long d = 0; d < dv; d++) {
                        float want = ref.get(0, 0, 70, d);
                        assertEquals(want, out.get(0, 0, 70, d), 8 * Fuzz.EPS * (l + dk + 16) * (1 + Math.abs(want)),
                                backend + "/" + threads + " row 70 column " + d);
                    }
                }
            }
        }
    }
}
