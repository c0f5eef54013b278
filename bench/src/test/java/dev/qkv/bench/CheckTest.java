package dev.qkv.bench;

import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.lang.foreign.Arena;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * {@link BenchSupport#check}, the benchmarks' check of their own output, on inputs whose attention is worked out by
 * hand: with scores 0 and ln 3 the softmax weights are 1/4 and 3/4, so values 2 and 4 give 0.5 + 3 = 3.5; equal
 * scores give their mean, 3; a causal first row sees its first key only, 2.
 */
class CheckTest {
    private static final float LN3 = (float) Math.log(3);
    private final Arena arena = Arena.ofConfined();

    @AfterEach
    void close() {
        arena.close();
    }

    private Tensor t(float[] values, long... shape) {
        return Tensor.of(arena, values, shape);
    }

    @Test
    void acceptsTheRightAnswerAndRefusesAWrongOne() {
        Tensor q = t(new float[] {0, LN3}, 1, 1, 2, 1);
        Tensor k = t(new float[] {0, 1}, 1, 1, 2, 1);
        Tensor v = t(new float[] {2, 4}, 1, 1, 2, 1);
        assertDoesNotThrow(() -> BenchSupport.check(q, k, v, t(new float[] {3, 3.5f}, 1, 1, 2, 1), false));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(q, k, v, t(new float[] {3, 3.6f}, 1, 1, 2, 1), false));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(q, k, v, t(new float[] {3, Float.NaN}, 1, 1, 2, 1), false));
    }

    @Test
    void causalRowsSeeOnlyTheKeysUpToTheirOwn() {
        Tensor q = t(new float[] {0, LN3}, 1, 1, 2, 1);
        Tensor k = t(new float[] {0, 1}, 1, 1, 2, 1);
        Tensor v = t(new float[] {2, 4}, 1, 1, 2, 1);
        assertDoesNotThrow(() -> BenchSupport.check(q, k, v, t(new float[] {2, 3.5f}, 1, 1, 2, 1), true));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(q, k, v, t(new float[] {3, 3.5f}, 1, 1, 2, 1), true));
    }

    @Test
    void scoresAreScaledByOneOverRootD() {
        // D = 4: q·k1 = 4 · ln3/2 = 2 ln3, scaled by 1/2 = ln3, so 3.5 in every column (unscaled: weights 1/10
        // and 9/10, 3.8)
        float x = LN3 / 2;
        Tensor q = t(new float[] {1, 1, 1, 1}, 1, 1, 1, 4);
        Tensor k = t(new float[] {0, 0, 0, 0, x, x, x, x}, 1, 1, 2, 4);
        Tensor v = t(new float[] {2, 2, 2, 2, 4, 4, 4, 4}, 1, 1, 2, 4);
        assertDoesNotThrow(() -> BenchSupport.check(q, k, v, t(new float[] {3.5f, 3.5f, 3.5f, 3.5f}, 1, 1, 1, 4),
                false));
        assertThrows(IllegalStateException.class, () -> BenchSupport.check(q, k, v,
                t(new float[] {3.8f, 3.8f, 3.8f, 3.8f}, 1, 1, 1, 4), false));
    }

    @Test
    void groupedQueryHeadsShareTheirKvHead() {
        // two query heads, one kv head: head 0 (q = 0) gives 3, head 1 (q = ln3) 3.5
        Tensor q = t(new float[] {0, LN3}, 1, 2, 1, 1);
        Tensor k = t(new float[] {0, 1}, 1, 1, 2, 1);
        Tensor v = t(new float[] {2, 4}, 1, 1, 2, 1);
        assertDoesNotThrow(() -> BenchSupport.check(q, k, v, t(new float[] {3, 3.5f}, 1, 2, 1, 1), false));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(q, k, v, t(new float[] {3.5f, 3}, 1, 2, 1, 1), false));
    }

    @Test
    void aWrongValueInTheLastRowIsFoundAmongManyRows() {
        // 40 rows of one key: each output row is that key's value, 7; only the last is wrong
        int rows = 40;
        float[] out = new float[rows];
        java.util.Arrays.fill(out, 7);
        out[rows - 1] = 8;
        Tensor q = t(new float[rows], 1, 1, rows, 1);
        Tensor k = t(new float[] {1}, 1, 1, 1, 1);
        Tensor v = t(new float[] {7}, 1, 1, 1, 1);
        assertThrows(IllegalStateException.class, () -> BenchSupport.check(q, k, v, t(out, 1, 1, rows, 1), false));
    }
    @Test
    void aWrongFirstRowOfACausalCallIsFound() {
        // 32 causal rows, q = 0: row i is the mean of v[0..i], 2 everywhere; only row 0 (one key, the causal
        // edge) is wrong. Rows picked as rows-1, rows-1-step, ... never reached row 0 when step > 1.
        int rows = 32;
        float[] out = new float[rows];
        java.util.Arrays.fill(out, 2);
        out[0] = 3;
        float[] v = new float[rows];
        java.util.Arrays.fill(v, 2);
        Tensor q = t(new float[rows], 1, 1, rows, 1);
        Tensor k = t(new float[rows], 1, 1, rows, 1);
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(q, k, t(v, 1, 1, rows, 1), t(out, 1, 1, rows, 1), true));
    }

    @Test
    void aWrongHeadOfADecodeStepIsFoundWhicheverHeadItIs() {
        // the decode step's layout, 32 heads of one query row, one key of value 7: one head alone is wrong. A
        // stride of 2 from the last row checked the odd heads only.
        int heads = 32;
        Tensor q = t(new float[heads], 1, heads, 1, 1);
        Tensor k = t(new float[] {1}, 1, 1, 1, 1);
        Tensor v = t(new float[] {7}, 1, 1, 1, 1);
        for (int wrong = 0; wrong < heads; wrong++) {
            float[] out = new float[heads];
            java.util.Arrays.fill(out, 7);
            out[wrong] = 8;
            Tensor o = t(out, 1, heads, 1, 1);
            assertThrows(IllegalStateException.class, () -> BenchSupport.check(q, k, v, o, false), "head " + wrong);
        }
    }

    @Test
    void subnormalValuesAreHeldToTheirOwnScale() {
        // v = {2, 4} · 1e-40 (subnormal, as DecodeBench -p values=subnormal makes v): the outputs are 3e-40 and
        // 3.5e-40, far below any absolute tolerance of ~1e-4. All zeros, what a path that flushed v to zero would
        // give, must be refused, and so must a value 3% off; the right answer passes
        float s = 1e-40f;
        Tensor q = t(new float[] {0, LN3}, 1, 1, 2, 1);
        Tensor k = t(new float[] {0, 1}, 1, 1, 2, 1);
        Tensor v = t(new float[] {2 * s, 4 * s}, 1, 1, 2, 1);
        assertDoesNotThrow(() -> BenchSupport.check(q, k, v, t(new float[] {3 * s, 3.5f * s}, 1, 1, 2, 1), false));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(q, k, v, t(new float[] {0, 0}, 1, 1, 2, 1), false));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(q, k, v, t(new float[] {3 * s, 3.6f * s}, 1, 1, 2, 1), false));
    }

    @ParameterizedTest(name = "{0}, {1} threads")
    @CsvSource({"java, 1", "java, 2", "native, 1", "native, 2"})
    void theSubnormalDecodeStepPassesAsComputedAndFailsFlushed(String backend, int threads) {
        // DecodeBench's own step with -p values=subnormal (kvHeads 8 to keep it to 32 MiB): each backend's output,
        // rounded to the subnormal grid key by key, passes; the same output flushed to zero does not
        DecodeBench.Step step = DecodeBench.Step.allocate(arena, 8);
        DecodeBench.scaleToSubnormal(step.v());
        BenchSupport.attention(backend, threads).sdpa(step.q(), step.k(), step.v(), step.out(), SdpaOptions.DEFAULT);
        assertDoesNotThrow(() -> BenchSupport.check(step.q(), step.k(), step.v(), step.out(), false));
        step.out().fill(0);
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.check(step.q(), step.k(), step.v(), step.out(), false));
    }

    @Test
    void aLayerOutputIsHeldToTheToleranceOfItsLongestSum() {
        // reduction 1000: atol = 2e-6 · 1000 + 1e-6 = 2.001e-3, plus 1e-4 · |reference| (1e-3 at 10)
        float[] want = {0, 10};
        assertDoesNotThrow(() -> BenchSupport.checkLayer("layer", want, new float[] {0.0019f, 10.0029f}, 1000));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.checkLayer("layer", want, new float[] {0.0021f, 10}, 1000));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.checkLayer("layer", want, new float[] {0, 10.0031f}, 1000));
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.checkLayer("layer", want, new float[] {Float.NaN, 10}, 1000));
        // a shorter sum is held closer: 0.0019 is out of bounds at reduction 100 (atol 2.01e-4)
        assertThrows(IllegalStateException.class,
                () -> BenchSupport.checkLayer("layer", want, new float[] {0.0019f, 10}, 100));
    }
}
