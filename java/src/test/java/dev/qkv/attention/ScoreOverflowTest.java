package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.Random;
import java.util.stream.Stream;

import static dev.qkv.attention.Fixtures.assertClose;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Rows whose scores all overflow float to -inf ({@code scale · q·k} below -3.4e38: a finite scale of 1e38, or
 * |q|, |k| near 1e19) may still attend their keys, and the reference, which scores in double, attends their
 * largest. They came out as zeros on every fast path, taken for rows that may attend no key (a review); they now
 * go to the exact recomputation, as rows that overflow to +inf (NaN) did. Rows that may truly attend no key
 * (causal limit, mask) still give zeros. Over the engine's paths: few queries (Lq = 3), one block, a key count
 * beyond one key block (online softmax); grouped heads; no mask, an additive and a boolean mask.
 */
class ScoreOverflowTest {

    /**
     * More keys than the grouped few-query path's key block (256 KiB of 8-float rows: 8192 keys), so that Lq = 3
     * with two query heads per kv head takes that path, a task per kv head. Without this case a mutant that left
     * out the path's handling of rows with no score above -inf ({@code Job.runGroup}'s {@code zeroMaskedRows})
     * gave such rows zeros and passed this class (mutation testing, round 21).
     */
    private static final int GROUPED_LK = 8300;

    static Stream<Arguments> cases() {
        Stream.Builder<Arguments> b = Stream.builder();
        for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA, Backend.AUTO}) {
            // Lq = 3 at Lk = GROUPED_LK: the Java engine's grouped few-query path (runGroup)
            for (int[] lqLk : new int[][] {{3, 40}, {24, 40}, {24, 2500}, {3, GROUPED_LK}}) {
                for (String mask : new String[] {"none", "additive", "bool"}) {
                    for (boolean causal : new boolean[] {false, true}) {
                        b.add(Arguments.of(backend, lqLk[0], lqLk[1], mask, causal));
                    }
                }
            }
        }
        return b.build();
    }

    @ParameterizedTest(name = "{0} Lq={1} Lk={2} mask={3} causal={4}")
    @MethodSource("cases")
    void rowsWhoseScoresOverflowToMinusInfinityMatchTheReference(Backend backend, int lq, int lk, String maskKind,
                                                                  boolean causal) {
        long[] qs = {1, 4, lq, 8};
        long[] ks = {1, 2, lk, 8};
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(lq * 31L + lk);
            // q > 0 and k < 0 everywhere: every q·k is at most -8 · 0.25, times 1e38 far below -Float.MAX_VALUE
            Tensor q = Tensor.of(arena, Fixtures.uniform(r, Fixtures.count(qs), 0.5f, 1f), qs);
            Tensor k = Tensor.of(arena, Fixtures.uniform(r, Fixtures.count(ks), -1f, -0.5f), ks);
            Tensor v = Tensor.of(arena, Fixtures.uniform(r, Fixtures.count(ks), -1f, 1f), ks);
            Mask mask = null;
            if (!maskKind.equals("none")) {
                float[] m = new float[lq * lk];
                for (int i = 0; i < lq; i++) {
                    for (int j = 0; j < lk; j++) {
                        // row 1 may attend nothing; the others every key but each third
                        boolean allowed = i != 1 && j % 3 != 1;
                        m[i * lk + j] = maskKind.equals("bool") ? (allowed ? 1f : 0f)
                                : allowed ? 0f : Float.NEGATIVE_INFINITY;
                    }
                }
                Tensor mt = Tensor.of(arena, m, lq, lk);
                mask = maskKind.equals("bool") ? Mask.allowed(mt) : Mask.additive(mt);
            }
            SdpaOptions o = new SdpaOptions(causal, mask, Float.NaN).withScale(1e38f);
            Tensor ref = Tensor.allocate(arena, qs);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
            Tensor out = Tensor.allocate(arena, qs).fill(Float.NaN);
            Attention engine = Attention.create(backend, 2);
            if (lk == GROUPED_LK && backend == Backend.JAVA && dev.qkv.kernel.Vectorization.enabled()) {
                String plan = engine.plan(q, k, v, out, o);
                assertTrue(plan.contains(" tasks=2 "), "the grouped path (a task per kv head) expected: " + plan);
            }
            engine.sdpa(q, k, v, out, o);
            String what = backend + " Lq=" + lq + " Lk=" + lk + " mask=" + maskKind + " causal=" + causal;
            assertClose(what, qs, out.toArray(), ref.toArray(), 1e-6, 1e-6);
            if (mask != null) {
                for (int h = 0; h < qs[1]; h++) {
                    for (int d = 0; d < qs[3]; d++) {
                        assertEquals(0f, out.get(0, h, 1, d), what + ": a row that may attend nothing");
                    }
                }
            }
        }
    }

    static Stream<Arguments> perRowCases() {
        Stream.Builder<Arguments> b = Stream.builder();
        for (Backend backend : new Backend[] {Backend.NATIVE, Backend.JAVA, Backend.AUTO}) {
            for (int[] lqLk : new int[][] {{3, 40}, {24, 2500}, {3, GROUPED_LK}}) {
                for (boolean bool : new boolean[] {false, true}) {
                    for (boolean stride0 : new boolean[] {false, true}) {
                        b.add(Arguments.of(backend, lqLk[0], lqLk[1], bool, stride0));
                    }
                }
            }
        }
        return b.build();
    }

    /**
     * The same rows under a mask with one value per query row ({@code [Lq, 1]}, or that broadcast to
     * {@code [Lq, Lk]} with stride 0 along the keys): a row it allows whose scores all overflow to -inf still
     * matches the reference, and only the row it forbids is zeros. The check of whether such a row may attend reads
     * the row's one value (stride 0); a mutant that read none ({@code ms3 == 0 ? 0 : lim} in
     * {@code Attention.mayAttend}) gave the allowed rows zeros and passed every test (mutation testing, round 24).
     */
    @ParameterizedTest(name = "{0} Lq={1} Lk={2} bool={3} stride0={4}")
    @MethodSource("perRowCases")
    void rowsWhoseScoresOverflowUnderAPerRowMaskMatchTheReference(Backend backend, int lq, int lk, boolean bool,
                                                                   boolean stride0) {
        long[] qs = {1, 4, lq, 8};
        long[] ks = {1, 2, lk, 8};
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(lq * 37L + lk);
            Tensor q = Tensor.of(arena, Fixtures.uniform(r, Fixtures.count(qs), 0.5f, 1f), qs);
            Tensor k = Tensor.of(arena, Fixtures.uniform(r, Fixtures.count(ks), -1f, -0.5f), ks);
            Tensor v = Tensor.of(arena, Fixtures.uniform(r, Fixtures.count(ks), -1f, 1f), ks);
            float[] m = new float[lq];
            for (int i = 0; i < lq; i++) {
                // row 1 may attend nothing; the others every key
                m[i] = bool ? (i != 1 ? 1f : 0f) : i != 1 ? 0f : Float.NEGATIVE_INFINITY;
            }
            Tensor mt = Tensor.of(arena, m, lq, 1);
            if (stride0) {
                mt = mt.broadcastTo(lq, lk);
            }
            Mask mask = bool ? Mask.allowed(mt) : Mask.additive(mt);
            SdpaOptions o = new SdpaOptions(false, mask, Float.NaN).withScale(1e38f);
            Tensor ref = Tensor.allocate(arena, qs);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
            Tensor out = Tensor.allocate(arena, qs).fill(Float.NaN);
            Attention.create(backend, 2).sdpa(q, k, v, out, o);
            String what = backend + " Lq=" + lq + " Lk=" + lk + " mask " + mt.shapeString() + " strides "
                    + java.util.Arrays.toString(mt.strides()) + (bool ? " bool" : " additive");
            assertClose(what, qs, out.toArray(), ref.toArray(), 1e-6, 1e-6);
            for (int h = 0; h < qs[1]; h++) {
                for (int d = 0; d < qs[3]; d++) {
                    assertEquals(0f, out.get(0, h, 1, d), what + ": a row that may attend nothing");
                }
            }
        }
    }
}
