package dev.qkv.kernel;

import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Both exponentials of the softmax over the arguments it can get, [-200, 0] and beyond (-1e30, -Float.MAX_VALUE,
 * -inf, NaN), every float near float exp's thresholds (-87, -87.34 where exp turns subnormal, -88, -103.28,
 * -103.97 where it underflows to 0, -104), against {@link Math#exp} in double:
 * <ul>
 * <li>vector ({@link VectorRowKernels}, stated in its javadoc): relative error below 2e-7 from -87 up, exactly 0
 * below -87 (never a subnormal), NaN for NaN;</li>
 * <li>scalar ({@link ScalarRowKernels}, {@code (float) Math.exp}): within one float ulp where normal, within
 * {@code Float.MIN_VALUE} where subnormal, 0 where exp is below half of {@code Float.MIN_VALUE}, NaN for NaN.</li>
 * </ul>
 * Through {@code exp} (the exposed array form), the row path {@code expFrom} (vector body and scalar tails, of
 * rows of every length up to 3 vectors) and the online rescale factor {@link RowKernels#rescale}, which must
 * give 0 exactly where {@code expFrom} does.
 */
class ExpRangeTest {

    /** The arguments: a grid over [-200, 0], every float within 3000 ulps of each threshold, and specials. */
    static float[] arguments() {
        java.util.List<Float> xs = new java.util.ArrayList<>();
        int n = 400_001;
        for (int i = 0; i < n; i++) {
            xs.add(-200f * i / (n - 1));
        }
        for (float t : new float[] {-87f, -87.33654f, -88f, -88.72284f, -103.27893f, -103.97208f, -104f}) {
            for (int d = -3000; d <= 3000; d++) {
                xs.add(Float.intBitsToFloat(Float.floatToRawIntBits(t) + d));
            }
        }
        for (float s : new float[] {-0f, 0f, -Float.MIN_VALUE, -1e-30f, -1e30f, -Float.MAX_VALUE,
            Float.NEGATIVE_INFINITY, Float.NaN, -1000f, -126f * (float) Math.log(2)}) {
            xs.add(s);
        }
        float[] x = new float[xs.size()];
        for (int i = 0; i < x.length; i++) {
            x[i] = xs.get(i);
        }
        return x;
    }

    static void checkVector(float x, float y, String how) {
        if (Float.isNaN(x)) {
            assertTrue(Float.isNaN(y), how + ": exp(NaN) = " + y);
            return;
        }
        if (x < VectorRowKernels.EXP_LO) {
            if (Float.floatToRawIntBits(y) != 0) {
                fail(how + ": exp(" + x + ") = " + y + ", 0 expected below " + VectorRowKernels.EXP_LO);
            }
            return;
        }
        double e = Math.exp(x);
        double rel = Math.abs(y - e) / e;
        if (!(rel < 2e-7) || y < Float.MIN_NORMAL) {
            fail(how + ": exp(" + x + ") = " + y + ", Math.exp " + e + ", relative error " + rel);
        }
    }

    static void checkScalar(float x, float y, String how) {
        if (Float.isNaN(x)) {
            assertTrue(Float.isNaN(y), how + ": exp(NaN) = " + y);
            return;
        }
        double e = Math.exp(x);
        double err = Math.abs(y - e);
        boolean ok;
        if (e >= Float.MIN_NORMAL) {
            ok = err <= Math.ulp(y);
        } else if (e < Float.MIN_VALUE / 2.0 * (1 - 1e-9)) {
            ok = Float.floatToRawIntBits(y) == 0;
        } else {
            ok = err <= Float.MIN_VALUE;
        }
        if (!ok) {
            fail(how + ": exp(" + x + ") = " + y + ", Math.exp " + e);
        }
    }

    interface Check {
        void check(float x, float y, String how);
    }

    private static void run(RowKernels k, Check c) {
        float[] x = arguments();
        float[] y = new float[x.length];
        k.exp(x, y, x.length);
        for (int i = 0; i < x.length; i++) {
            c.check(x[i], y[i], k.name() + " exp");
        }
        // the online rescale: 0 exactly where the row's exponential gives 0, else the flavour's exp
        for (int i = 0; i < x.length; i++) {
            float r = k.rescale(x[i]);
            c.check(x[i], r, k.name() + " rescale");
            assertEquals(y[i] == 0f, r == 0f, k.name() + " rescale(" + x[i] + ") = " + r + " but exp gives " + y[i]);
        }
        // the row path: rows of every length to 3 vectors, max 0 (s - max = s) and max 1e30 (s - 1e30)
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment s = arena.allocate((long) x.length * Float.BYTES + 64, 64);
            for (float max : new float[] {0f, 1e30f}) {
                int at = 0;
                for (int len = 1; at + len <= x.length; len = len % 48 + 1) {
                    for (int j = 0; j < len; j++) {
                        s.setAtIndex(ValueLayout.JAVA_FLOAT, at + j, max == 0f ? x[at + j] : x[at + j] + max);
                    }
                    k.expFrom(s, at, len, len, max);
                    for (int j = 0; j < len; j++) {
                        float arg = max == 0f ? x[at + j] : (x[at + j] + max) - max;
                        c.check(arg, s.getAtIndex(ValueLayout.JAVA_FLOAT, at + j), k.name() + " expFrom len=" + len);
                    }
                    at += len;
                    if (max != 0f && at > 200_000) {
                        break;
                    }
                }
            }
        }
    }

    @Test
    void vectorExponentialOverTheSoftmaxsArguments() {
        org.junit.jupiter.api.Assumptions.assumeTrue(Vectorization.enabled(), Vectorization.reason());
        run(Vectorization.rows(), ExpRangeTest::checkVector);
        // the scalar tails' exponential on its own
        for (float x : arguments()) {
            checkVector(x, VectorRowKernels.expScalar(x), "expScalar");
        }
    }

    @Test
    void scalarExponentialOverTheSoftmaxsArguments() {
        run(Vectorization.scalarRows(), ExpRangeTest::checkScalar);
    }
}
