package dev.qkv.reliability;

import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.kernel.Vectorization;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Random raw matrix-vector arguments ({@code sgemv}), valid and deliberately invalid, thrown at every entry point:
 * {@link OpenBlas#sgemv} and {@link MatmulKernel#matvec} of the native, scalar and Vector API kernels.
 *
 * <p>Each case decides on its own, from the arguments alone, whether it is valid and whether a naive native call
 * would have touched memory outside a segment. Valid cases must match a double-precision product and leave every
 * element of y other than its {@code len} strided elements untouched; invalid cases must throw
 * {@link IllegalArgumentException} or {@link IllegalStateException} and leave y untouched.
 */
class MatvecFuzzTest {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    /** A raw matrix-vector entry point. */
    interface Gemv {
        void call(Transpose ta, int m, int n, float alpha, MemorySegment a, long aOff, int lda, MemorySegment x,
                  long xOff, int incx, float beta, MemorySegment y, long yOff, int incy);
    }

    static Stream<Named<Object[]>> entryPoints() {
        List<Named<Object[]>> list = new ArrayList<>();
        list.add(Named.of("OpenBlas.sgemv", new Object[] {(Gemv) (t, m, n, al, a, ao, lda, x, xo, ix, be, y, yo, iy) ->
                OpenBlas.get().sgemv(t, m, n, al, a, ao, lda, x, xo, ix, be, y, yo, iy), true, "sgemv"}));
        list.add(Named.of("MatmulKernel.openBlas.matvec", new Object[] {kernel(MatmulKernel.openBlas()), true, "openBlas"}));
        list.add(Named.of("MatmulKernel.javaScalar.matvec", new Object[] {kernel(MatmulKernel.javaScalar()), false, "javaScalar"}));
        if (Vectorization.enabled()) {
            list.add(Named.of("MatmulKernel.javaVector.matvec", new Object[] {kernel(MatmulKernel.javaVector()), false, "javaVector"}));
        }
        return list.stream();
    }

    private static Gemv kernel(MatmulKernel k) {
        return (t, m, n, al, a, ao, lda, x, xo, ix, be, y, yo, iy) -> k.matvec(t, m, n, al, a, ao, lda, x, xo, ix, be, y, yo, iy);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("entryPoints")
    void randomArgumentsNeverCrashAndValidOnesMatchTheReference(Object[] entry) {
        Gemv gemv = (Gemv) entry[0];
        boolean nativeOnly = (Boolean) entry[1];
        long seed = Fuzz.seed("matvec-raw-" + entry[2]);
        Random r = new Random(seed);
        int cases = Fuzz.iterations(2000);
        int valid = 0;
        int rejected = 0;
        int wouldHaveEscaped = 0;
        for (int it = 0; it < cases; it++) {
            try (Arena arena = Arena.ofConfined()) {
                Transpose ta = r.nextBoolean() ? Transpose.NO : Transpose.YES;
                int m = Fuzz.tailSize(r);
                int n = Fuzz.tailSize(r);
                float alpha = new float[] {1f, -0.5f, 2f, 0f}[r.nextInt(4)];
                float beta = new float[] {0f, 0f, 1f, -2f}[r.nextInt(4)];
                int xLen = ta == Transpose.NO ? n : m;
                int yLen = ta == Transpose.NO ? m : n;
                RawOperand a = RawOperand.place(arena, r, m, n, Math.max(1, n) + (r.nextInt(3) == 0 ? r.nextInt(5) : 0));
                RawOperand x = RawOperand.place(arena, r, xLen, 1, r.nextInt(3) == 0 ? 1 + r.nextInt(4) : 1);
                RawOperand y = RawOperand.place(arena, r, yLen, 1, r.nextInt(3) == 0 ? 1 + r.nextInt(4) : 1);
                if (beta == 0f && r.nextBoolean() && y.seg != null) {
                    // with beta = 0 the old y must be ignored, even NaN
                    for (long i = 0; i < yLen; i++) {
                        y.seg.setAtIndex(F, y.off + i * y.ld, Float.NaN);
                    }
                }
                String mutation = mutate(arena, r, a, x, y, nativeOnly);
                int mm = mutation.equals("negative m") ? -1 - r.nextInt(3) : m;
                int nn = mutation.equals("negative n") ? Integer.MIN_VALUE : n;
                boolean nullFlag = mutation.equals("null transpose");
                String verdict = independentVerdict(mm, nn, a, x, y, nativeOnly, nullFlag);
                boolean escapes = a.escapes() || x.escapes() || y.escapes();
                String what = "seed=" + seed + " case " + it + " (" + mutation + ") ta=" + ta + " m=" + mm + " n=" + nn
                        + " alpha=" + alpha + " beta=" + beta + " a=" + a + " x=" + x + " y=" + y + " expected "
                        + (verdict == null ? "valid" : "rejection: " + verdict);
                float[] before = y.closed || y.seg == null ? null : y.seg.toArray(ValueLayout.JAVA_FLOAT);
                double[] expect = null;
                double[] bound = null;
                if (verdict == null) {
                    expect = new double[yLen];
                    bound = new double[yLen];
                    for (int i = 0; i < yLen; i++) {
                        double s = 0;
                        double abs = 0;
                        for (int p = 0; p < xLen; p++) {
                            float av = ta == Transpose.NO ? a.seg.getAtIndex(F, a.off + (long) i * a.ld + p)
                                    : a.seg.getAtIndex(F, a.off + (long) p * a.ld + i);
                            double t = (double) av * x.at(p);
                            s += t;
                            abs += Math.abs(t);
                        }
                        double old = beta == 0 ? 0 : (double) beta * y.at(i);
                        expect[i] = alpha * s + old;
                        bound[i] = 2 * (xLen + 2) * Fuzz.EPS * (Math.abs(alpha) * abs + Math.abs(old)) + 1e-30;
                    }
                }
                try {
                    gemv.call(nullFlag ? null : ta, mm, nn, alpha, a.seg, a.off, a.ld, x.seg, x.off, x.ld, beta,
                            y.seg, y.off, y.ld);
                } catch (IllegalArgumentException | IllegalStateException | NullPointerException e) {
                    if (verdict == null) {
                        fail(what + ": valid call threw " + e, e);
                    }
                    if (verdict.startsWith("null") != e instanceof NullPointerException) {
                        fail(what + ": threw " + e, e);
                    }
                    rejected++;
                    if (escapes) {
                        wouldHaveEscaped++;
                    }
                    if (before != null) {
                        assertTrue(java.util.Arrays.equals(before, y.seg.toArray(ValueLayout.JAVA_FLOAT)),
                                what + ": rejected call wrote y");
                    }
                    continue;
                } catch (RuntimeException | Error e) {
                    fail(what + ": threw an undocumented " + e, e);
                }
                if (verdict != null) {
                    fail(what + ": invalid call was accepted");
                }
                valid++;
                checkResult(what, yLen, y, before, expect, bound);
            }
        }
        System.out.printf("matvec fuzz seed=%d: %d valid, %d rejected (%d of them would have touched memory outside"
                + " a segment)%n", seed, valid, rejected, wouldHaveEscaped);
        assertTrue(valid > cases / 4 && rejected > cases / 10 && wouldHaveEscaped > cases / 50,
                "the generator must produce all kinds of cases: " + valid + " " + rejected + " " + wouldHaveEscaped);
    }

    /** Breaks the case in one way (or not at all) and names what it did. */
    private static String mutate(Arena arena, Random r, RawOperand a, RawOperand x, RawOperand y, boolean nativeOnly) {
        if (r.nextInt(10) < 4) {
            return "none";
        }
        RawOperand o = switch (r.nextInt(3)) {
            case 0 -> a;
            case 1 -> x;
            default -> y;
        };
        switch (r.nextInt(13)) {
            case 0 -> {
                // a leading dimension below the row length, or an increment of 0 or below
                o.ld = o == a ? Math.max(1, o.cols) - 1 - r.nextInt(2) : -r.nextInt(3);
                return o == a ? "lda too small" : "increment < 1";
            }
            case 1 -> {
                return o.breakAs(RawOperand.Break.OFFSET_PAST_END, arena, r, nativeOnly);
            }
            case 2 -> {
                return o.breakAs(RawOperand.Break.ONE_FLOAT_SHORT, arena, r, nativeOnly);
            }
            case 3 -> {
                return o.breakAs(RawOperand.Break.NEGATIVE_OFFSET, arena, r, nativeOnly);
            }
            case 4 -> {
                return r.nextBoolean() ? "negative m" : "negative n";
            }
            case 5, 6 -> {
                // y inside an input's memory: a different segment object over the same bytes, or the same segment
                RawOperand in = r.nextBoolean() ? a : x;
                long span = Math.max(y.reach() - y.off, 0);
                long floats = Math.max(in.floats(), span + 8);
                MemorySegment shared = arena.allocate(floats * Float.BYTES, 4);
                in.seg = shared;
                y.seg = r.nextBoolean() ? shared : shared.asSlice(0);
                y.off = r.nextInt((int) Math.max(1, floats - span));
                return "y shares memory with " + (in == a ? "a" : "x");
            }
            case 7 -> {
                return o.breakAs(RawOperand.Break.CLOSED_ARENA, arena, r, nativeOnly);
            }
            case 8 -> {
                return o.breakAs(RawOperand.Break.HEAP, arena, r, nativeOnly);
            }
            case 9 -> {
                return o.breakAs(RawOperand.Break.NULL_SEGMENT, arena, r, nativeOnly);
            }
            case 10 -> {
                return "null transpose";
            }
            case 11 -> {
                y.seg = y.seg.asReadOnly();
                return "read-only y";
            }
            default -> {
                return o.breakAs(RawOperand.Break.OFFSET_NEAR_MAX, arena, r, nativeOnly);
            }
        }
    }

    /** The documented contract, restated from the arguments (no code shared with {@code SgemvArgs}). */
    private static String independentVerdict(int m, int n, RawOperand a, RawOperand x, RawOperand y, boolean nativeOnly,
                                             boolean nullFlag) {
        // the API's rule for null (README, exception table): a NullPointerException, before any other check
        if (nullFlag) {
            return "null flag";
        }
        for (RawOperand o : new RawOperand[] {a, x, y}) {
            if (o.seg == null) {
                return "null segment";
            }
        }
        if (m < 0 || n < 0) {
            return "negative size";
        }
        for (RawOperand o : new RawOperand[] {a, x, y}) {
            if (o.closed) {
                return "closed";
            }
            if (nativeOnly && !o.seg.isNative()) {
                return "heap";
            }
            if (o.ld < Math.max(1, o.cols)) {
                return o == a ? "lda" : "increment";
            }
            boolean empty = o.rows == 0 || o.cols == 0;
            if (o.off < 0 || !empty && o.off > o.floats()) {
                return "offset";
            }
            if (!empty && o.reach() > o.floats()) {
                return "reach";
            }
        }
        if (y.seg.isReadOnly() && y.rows > 0) {
            return "read-only";
        }
        for (RawOperand in : new RawOperand[] {a, x}) {
            if (y.seg.isNative() && in.seg.isNative() && y.reach() > y.off && in.reach() > in.off
                    && y.address(y.off) < in.address(in.reach()) && in.address(in.off) < y.address(y.reach())) {
                return "overlap";
            }
        }
        return null;
    }

    private static void checkResult(String what, int len, RawOperand y, float[] before, double[] expect, double[] bound) {
        float[] after = y.seg.toArray(ValueLayout.JAVA_FLOAT);
        boolean[] touched = new boolean[after.length];
        List<String> bad = new ArrayList<>();
        for (int i = 0; i < len; i++) {
            int e = (int) (y.off + (long) i * y.ld);
            touched[e] = true;
            double err = Math.abs(after[e] - expect[i]);
            if (!(err <= bound[i]) && bad.size() < 5) {
                bad.add("y[" + i + "]=" + after[e] + " ref=" + expect[i] + " tol=" + bound[i]);
            }
        }
        for (int e = 0; e < after.length; e++) {
            boolean changed = Float.floatToRawIntBits(after[e]) != Float.floatToRawIntBits(before[e]);
            if (!touched[e] && changed && bad.size() < 5) {
                bad.add("element " + e + " outside y's " + len + " elements changed from " + before[e] + " to " + after[e]);
            }
        }
        assertEquals(List.of(), bad, what);
    }

    /** Every tail of the Vector API kernel (rows not a multiple of 4, columns not of the vector length) vs the scalar one. */
    @Test
    void vectorKernelMatchesTheScalarOneOverTailSizes() {
        if (!Vectorization.enabled()) {
            return;
        }
        long seed = Fuzz.seed("matvec-tails");
        Random r = new Random(seed);
        int[] sizes = {1, 3, 4, 7, 15, 16, 17, 63, 64, 65, 113, 129};
        try (Arena arena = Arena.ofConfined()) {
            for (int m : sizes) {
                for (int n : sizes) {
                    RawOperand a = RawOperand.place(arena, r, m, n, n + (m % 3));
                    RawOperand x = RawOperand.place(arena, r, n, 1, 1);
                    RawOperand y = RawOperand.place(arena, r, m, 1, 1);
                    RawOperand y2 = RawOperand.place(arena, r, m, 1, 1);
                    MatmulKernel.javaVector().matvec(Transpose.NO, m, n, 0.5f, a.seg, a.off, a.ld, x.seg, x.off, 1, 0f,
                            y.seg, y.off, 1);
                    MatmulKernel.javaScalar().matvec(Transpose.NO, m, n, 0.5f, a.seg, a.off, a.ld, x.seg, x.off, 1, 0f,
                            y2.seg, y2.off, 1);
                    for (int i = 0; i < m; i++) {
                        double abs = 0;
                        for (int p = 0; p < n; p++) {
                            abs += Math.abs((double) a.seg.getAtIndex(F, a.off + (long) i * a.ld + p) * x.at(p));
                        }
                        double tol = 4 * (n + 2) * Fuzz.EPS * 0.5 * abs + 1e-30;
                        float got = y.at(i);
                        float want = y2.at(i);
                        assertTrue(Math.abs(got - want) <= tol, "seed=" + seed + " m=" + m + " n=" + n + " row " + i
                                + ": vector " + got + " scalar " + want + " tol " + tol);
                    }
                }
            }
        }
    }
}
