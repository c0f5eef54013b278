package dev.qkv.reliability;

import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.tensor.Tensor;
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
 * Random raw {@code sgemm} arguments, valid and deliberately invalid, thrown at every matrix-product entry point.
 *
 * <p>Each case decides on its own, from the arguments alone, whether it is valid and whether a naive native call
 * would have touched memory outside a segment. Valid cases must match a double-precision product and leave every
 * element of C outside the {@code [m, n]} window untouched; invalid cases must throw
 * {@link IllegalArgumentException} or {@link IllegalStateException} and leave C untouched.
 */
class MatmulFuzzTest {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    /** A raw product entry point: both kernels and the BLAS layer itself. */
    interface Gemm {
        void call(Transpose ta, Transpose tb, int m, int n, int k, float alpha, MemorySegment a, long aOff, int lda,
                  MemorySegment b, long bOff, int ldb, float beta, MemorySegment c, long cOff, int ldc);
    }

    static Stream<Named<Object[]>> entryPoints() {
        Gemm openBlas = (ta, tb, m, n, k, al, a, ao, lda, b, bo, ldb, be, c, co, ldc) ->
                MatmulKernel.openBlas().matmul(ta, tb, m, n, k, al, a, ao, lda, b, bo, ldb, be, c, co, ldc);
        Gemm scalar = (ta, tb, m, n, k, al, a, ao, lda, b, bo, ldb, be, c, co, ldc) ->
                MatmulKernel.javaScalar().matmul(ta, tb, m, n, k, al, a, ao, lda, b, bo, ldb, be, c, co, ldc);
        Gemm sgemm = (ta, tb, m, n, k, al, a, ao, lda, b, bo, ldb, be, c, co, ldc) ->
                OpenBlas.get().sgemm(ta, tb, m, n, k, al, a, ao, lda, b, bo, ldb, be, c, co, ldc);
        return Stream.of(
                Named.of("MatmulKernel.openBlas", new Object[] {openBlas, true, "openBlas"}),
                Named.of("MatmulKernel.javaScalar", new Object[] {scalar, false, "javaScalar"}),
                Named.of("OpenBlas.sgemm", new Object[] {sgemm, true, "sgemm"}));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("entryPoints")
    void randomArgumentsNeverCrashAndValidOnesMatchTheReference(Object[] entry) {
        Gemm gemm = (Gemm) entry[0];
        boolean nativeOnly = (Boolean) entry[1];
        long seed = Fuzz.seed("matmul-raw-" + entry[2]);
        Random r = new Random(seed);
        int cases = Fuzz.iterations(1500);
        int valid = 0;
        int rejected = 0;
        int wouldHaveEscaped = 0;
        for (int it = 0; it < cases; it++) {
            try (Arena arena = Arena.ofConfined()) {
                Transpose ta = r.nextBoolean() ? Transpose.NO : Transpose.YES;
                Transpose tb = r.nextBoolean() ? Transpose.NO : Transpose.YES;
                int m = Fuzz.tailSize(r);
                int n = Fuzz.tailSize(r);
                int k = Fuzz.tailSize(r);
                float alpha = new float[] {1f, -0.5f, 2f, 0f}[r.nextInt(4)];
                float beta = new float[] {0f, 0f, 1f, -2f}[r.nextInt(4)];
                RawOperand a = place(arena, r, ta == Transpose.NO ? m : k, ta == Transpose.NO ? k : m);
                RawOperand b = place(arena, r, tb == Transpose.NO ? k : n, tb == Transpose.NO ? n : k);
                RawOperand c = place(arena, r, m, n);
                String mutation = mutate(arena, r, a, b, c, nativeOnly);
                int mm = mutation.equals("negative m") ? -1 - r.nextInt(3) : m;
                int nn = mutation.equals("negative n") ? -1 : n;
                int kk = mutation.equals("negative k") ? Integer.MIN_VALUE : k;
                boolean nullFlag = mutation.equals("null transpose");
                String verdict = independentVerdict(mm, nn, kk, a, b, c, nativeOnly, nullFlag);
                boolean escapes = a.escapes() || b.escapes() || c.escapes();
                String what = "seed=" + seed + " case " + it + " (" + mutation + ") ta=" + ta + " tb=" + tb + " m=" + mm
                        + " n=" + nn + " k=" + kk + " alpha=" + alpha + " beta=" + beta + " a=" + a + " b=" + b
                        + " c=" + c + " expected " + (verdict == null ? "valid" : "rejection: " + verdict);
                float[] before = c.closed ? null : snapshot(c.seg);
                double[] expect = verdict == null ? reference(ta, tb, m, n, k, alpha, a, b, beta, c) : null;
                double[] bound = verdict == null ? bound(ta, tb, m, n, k, alpha, a, b, beta, c) : null;
                try {
                    gemm.call(nullFlag ? null : ta, tb, mm, nn, kk, alpha, a.seg, a.off, a.ld, b.seg, b.off, b.ld,
                            beta, c.seg, c.off, c.ld);
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
                        assertTrue(java.util.Arrays.equals(before, snapshot(c.seg)), what + ": rejected call wrote c");
                    }
                    continue;
                } catch (RuntimeException | Error e) {
                    fail(what + ": threw an undocumented " + e, e);
                }
                if (verdict != null) {
                    fail(what + ": invalid call was accepted");
                }
                valid++;
                checkResult(what, m, n, c, before, expect, bound);
            }
        }
        System.out.printf("matmul fuzz seed=%d: %d valid, %d rejected (%d of them would have touched memory outside"
                + " a segment)%n", seed, valid, rejected, wouldHaveEscaped);
        assertTrue(valid > cases / 4 && rejected > cases / 10 && wouldHaveEscaped > cases / 50,
                "the generator must produce all kinds of cases: " + valid + " " + rejected + " " + wouldHaveEscaped);
    }

    /** A random valid placement: padded leading dimension, offset, and sometimes slack after the last row. */
    private static RawOperand place(Arena arena, Random r, int rows, int cols) {
        return RawOperand.place(arena, r, rows, cols, Math.max(1, cols) + (r.nextInt(3) == 0 ? r.nextInt(5) : 0));
    }

    /** Breaks the case in one way (or not at all) and names what it did. */
    private static String mutate(Arena arena, Random r, RawOperand a, RawOperand b, RawOperand c, boolean nativeOnly) {
        if (r.nextInt(10) < 4) {
            return "none";
        }
        RawOperand o = switch (r.nextInt(3)) {
            case 0 -> a;
            case 1 -> b;
            default -> c;
        };
        switch (r.nextInt(12)) {
            case 0 -> {
                o.ld = Math.max(1, o.cols) - 1 - r.nextInt(2);
                return "ld too small";
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
                return new String[] {"negative m", "negative n", "negative k"}[r.nextInt(3)];
            }
            case 5, 6 -> {
                // C inside an input's memory: a different segment object over the same bytes, or the same segment
                RawOperand in = r.nextBoolean() ? a : b;
                long span = Math.max(c.reach() - c.off, 0);
                long floats = Math.max(in.floats(), span + 8);
                MemorySegment shared = arena.allocate(floats * Float.BYTES, 4);
                RawOperand.fillRandom(r, shared);
                in.seg = shared;
                long cOff = r.nextInt((int) Math.max(1, floats - span));
                c.seg = r.nextBoolean() ? shared : shared.asSlice(0);
                c.off = cOff;
                return "c shares memory with " + (in == a ? "a" : "b");
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
            default -> {
                return o.breakAs(RawOperand.Break.OFFSET_NEAR_MAX, arena, r, nativeOnly);
            }
        }
    }

    /**
     * The documented contract, restated from the arguments: null (valid) or why the call must be rejected.
     * This deliberately shares no code with {@code SgemmArgs}.
     */
    private static String independentVerdict(int m, int n, int k, RawOperand a, RawOperand b, RawOperand c,
                                             boolean nativeOnly, boolean nullFlag) {
        // the API's rule for null (README, exception table): a NullPointerException, before any other check
        if (nullFlag) {
            return "null flag";
        }
        for (RawOperand o : new RawOperand[] {a, b, c}) {
            if (o.seg == null) {
                return "null segment";
            }
        }
        if (m < 0 || n < 0 || k < 0) {
            return "negative size";
        }
        for (RawOperand o : new RawOperand[] {a, b, c}) {
            if (o.closed) {
                return "closed";
            }
            if (nativeOnly && !o.seg.isNative()) {
                return "heap";
            }
            if (o.ld < Math.max(1, o.cols)) {
                return "ld";
            }
            // an empty operand reaches no element: any non-negative offset is fine (views of empty tensors)
            boolean empty = o.rows == 0 || o.cols == 0;
            if (o.off < 0 || !empty && o.off > o.floats()) {
                return "offset";
            }
            if (!empty && o.reach() > o.floats()) {
                return "reach";
            }
        }
        for (RawOperand in : new RawOperand[] {a, b}) {
            if (comparableAddresses(c, in) && c.reach() > c.off && in.reach() > in.off
                    && c.address(c.off) < in.address(in.reach()) && in.address(in.off) < c.address(c.reach())) {
                return "overlap";
            }
        }
        return null;
    }

    /** Native segments share one address space; the generator never makes heap segments share an array. */
    private static boolean comparableAddresses(RawOperand x, RawOperand y) {
        return x.seg.isNative() && y.seg.isNative();
    }

    private static float[] snapshot(MemorySegment s) {
        return s == null ? new float[0] : s.toArray(ValueLayout.JAVA_FLOAT);
    }

    private static float opA(Transpose t, RawOperand o, int i, int p) {
        return o.seg.getAtIndex(F, o.off + (t == Transpose.NO ? (long) i * o.ld + p : (long) p * o.ld + i));
    }

    /** C [m, n] = alpha · op(A) · op(B) + beta · C in double, C's old values ignored when beta is 0. */
    private static double[] reference(Transpose ta, Transpose tb, int m, int n, int k, float alpha, RawOperand a,
                                      RawOperand b, float beta, RawOperand c) {
        double[] out = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int p = 0; p < k; p++) {
                    s += (double) opA(ta, a, i, p) * opA(tb.flip(), b, j, p);
                }
                double old = beta == 0 ? 0 : (double) beta * c.seg.getAtIndex(F, c.off + (long) i * c.ld + j);
                out[i * n + j] = alpha * s + old;
            }
        }
        return out;
    }

    /** The forward error bound of a float sum of k products: about 2(k+2)u · Σ|terms|, plus a denormal floor. */
    private static double[] bound(Transpose ta, Transpose tb, int m, int n, int k, float alpha, RawOperand a,
                                  RawOperand b, float beta, RawOperand c) {
        double[] out = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int p = 0; p < k; p++) {
                    s += Math.abs((double) opA(ta, a, i, p) * opA(tb.flip(), b, j, p));
                }
                double old = beta == 0 ? 0 : Math.abs((double) beta * c.seg.getAtIndex(F, c.off + (long) i * c.ld + j));
                out[i * n + j] = 2 * (k + 2) * Fuzz.EPS * (Math.abs(alpha) * s + old) + 1e-30;
            }
        }
        return out;
    }

    private static void checkResult(String what, int m, int n, RawOperand c, float[] before, double[] expect,
                                    double[] bound) {
        float[] after = snapshot(c.seg);
        boolean[] window = new boolean[after.length];
        List<String> bad = new ArrayList<>();
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                int e = (int) (c.off + (long) i * c.ld + j);
                window[e] = true;
                double err = Math.abs(after[e] - expect[i * n + j]);
                if (!(err <= bound[i * n + j]) && bad.size() < 5) {
                    bad.add("c[" + i + "," + j + "]=" + after[e] + " ref=" + expect[i * n + j] + " tol="
                            + bound[i * n + j]);
                }
            }
        }
        for (int e = 0; e < after.length; e++) {
            boolean changed = Float.floatToRawIntBits(after[e]) != Float.floatToRawIntBits(before[e]);
            if (!window[e] && changed && bad.size() < 5) {
                bad.add("element " + e + " outside the [m, n] window changed from " + before[e] + " to " + after[e]);
            }
        }
        assertEquals(List.of(), bad, what);
    }

    /** Tensor layouts the typed matmul must accept (row- or column-major, padded, unit dims with odd strides). */
    @Test
    void tensorMatmulOverRandomViewsMatchesTheReferenceOrRejects() {
        long seed = Fuzz.seed("matmul-tensor");
        Random r = new Random(seed);
        OpenBlas blas = OpenBlas.get();
        int cases = Fuzz.iterations(1500);
        int valid = 0;
        int rejected = 0;
        for (int it = 0; it < cases; it++) {
            try (Arena arena = Arena.ofConfined()) {
                int m = Fuzz.tailSize(r);
                int n = Fuzz.tailSize(r);
                int k = Fuzz.tailSize(r);
                Transpose ta = r.nextBoolean() ? Transpose.NO : Transpose.YES;
                Transpose tb = r.nextBoolean() ? Transpose.NO : Transpose.YES;
                String[] how = new String[3];
                Tensor a = view(arena, r, ta == Transpose.NO ? m : k, ta == Transpose.NO ? k : m, how, 0, false);
                Tensor b = view(arena, r, tb == Transpose.NO ? k : n, tb == Transpose.NO ? n : k, how, 1, false);
                Tensor c = view(arena, r, m, n, how, 2, true);
                String mutation = "none";
                if (r.nextInt(6) == 0) {
                    switch (r.nextInt(4)) {
                        case 0 -> {
                            c = Tensor.allocate(arena, m + 1, n);
                            mutation = "c shape";
                        }
                        case 1 -> {
                            a = Tensor.allocate(arena, 1, a.size(0), a.size(1));
                            mutation = "rank 3 a";
                        }
                        case 2 -> {
                            if (m > 0 && n > 0 && k > 0) {
                                long cols = Math.max(n, m) + Math.max(k, n) + 1;
                                Tensor whole = Tensor.allocate(arena, Math.max(m, k) + 1, cols);
                                a = ta == Transpose.NO ? whole.slice(0, 0, m).slice(1, 0, k)
                                        : whole.slice(0, 0, k).slice(1, 0, m);
                                c = whole.slice(0, 0, m).slice(1, 0, n);
                                mutation = "c overlaps a";
                            }
                        }
                        default -> {
                            Arena gone = Arena.ofConfined();
                            b = Tensor.allocate(gone, b.shape());
                            gone.close();
                            mutation = "closed b";
                        }
                    }
                }
                boolean expectValid = mutation.equals("none") && how[0].endsWith("ok") && how[1].endsWith("ok")
                        && how[2].endsWith("ok");
                float alpha = r.nextBoolean() ? 1f : -1.5f;
                float beta = r.nextBoolean() ? 0f : 0.5f;
                String what = "seed=" + seed + " case " + it + " m=" + m + " n=" + n + " k=" + k + " ta=" + ta
                        + " tb=" + tb + " a=" + a + " (" + how[0] + ") b=" + b + " (" + how[1] + ") c=" + c + " ("
                        + how[2] + ") mutation=" + mutation + " alpha=" + alpha + " beta=" + beta;
                double[] ref = null;
                double[] tol = null;
                if (expectValid) {
                    ref = new double[m * n];
                    tol = new double[m * n];
                    for (int i = 0; i < m; i++) {
                        for (int j = 0; j < n; j++) {
                            double s = 0;
                            double abs = 0;
                            for (int p = 0; p < k; p++) {
                                double x = (double) (ta == Transpose.NO ? a.get(i, p) : a.get(p, i))
                                        * (tb == Transpose.NO ? b.get(p, j) : b.get(j, p));
                                s += x;
                                abs += Math.abs(x);
                            }
                            double old = beta == 0 ? 0 : beta * (double) c.get(i, j);
                            ref[i * n + j] = alpha * s + old;
                            tol[i * n + j] = 2 * (k + 2) * Fuzz.EPS * (Math.abs(alpha) * abs + Math.abs(old)) + 1e-30;
                        }
                    }
                }
                try {
                    blas.matmul(ta, a, tb, b, alpha, beta, c);
                } catch (IllegalArgumentException | IllegalStateException e) {
                    if (expectValid) {
                        fail(what + ": valid call threw " + e, e);
                    }
                    rejected++;
                    continue;
                } catch (RuntimeException | Error e) {
                    fail(what + ": undocumented " + e, e);
                }
                if (!expectValid) {
                    fail(what + ": invalid call accepted");
                }
                valid++;
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        double err = Math.abs(c.get(i, j) - ref[i * n + j]);
                        assertTrue(err <= tol[i * n + j], what + ": c[" + i + "," + j + "]=" + c.get(i, j) + " ref="
                                + ref[i * n + j]);
                    }
                }
            }
        }
        System.out.printf("tensor matmul fuzz seed=%d: %d valid, %d rejected%n", seed, valid, rejected);
        assertTrue(valid > cases / 3 && rejected > cases / 20, valid + " valid, " + rejected + " rejected");
    }

    /**
     * A random {@code [rows, cols]} view, its kind recorded in {@code how[slot]} with the suffix {@code ok} when the
     * typed matmul must accept it: a product input needs a unit stride in one dimension and the other stride at least
     * the extent of the first; the output needs a unit last stride. An empty view is accepted whatever its strides.
     */
    private static Tensor view(Arena arena, Random r, int rows, int cols, String[] how, int slot, boolean output) {
        int kind = r.nextInt(10);
        Tensor t;
        String name;
        boolean ok;
        if (kind < 4) {
            t = Fuzz.random(arena, r, rows, cols);
            name = "contiguous";
            ok = true;
        } else if (kind < 6) {
            int pad = 1 + r.nextInt(4);
            t = Fuzz.random(arena, r, rows, cols + pad).slice(1, 0, cols);
            name = "padded rows";
            ok = true;
        } else if (kind < 8) {
            t = Fuzz.random(arena, r, cols, rows + r.nextInt(3)).slice(1, 0, rows).transpose();
            name = "column-major";
            ok = !output || cols <= 1 || t.stride(1) == 1;
        } else if (kind == 8) {
            // every other column: no unit stride in either dimension once both dimensions exceed 1
            MemorySegment s = arena.allocate(Math.max(1L, (long) rows * cols * 2) * Float.BYTES, 64);
            t = Tensor.view(s, 0, new long[] {rows, cols}, new long[] {2L * cols, 2});
            name = "stride-2 columns";
            ok = cols <= 1 || (!output && rows <= 1);
        } else {
            t = Fuzz.random(arena, r, 1, cols).broadcastTo(rows, cols);
            name = "broadcast rows";
            ok = rows <= 1 || cols == 0;
        }
        if (rows == 0 || cols == 0) {
            // an empty view reaches no element: any strides are fine (README, Failure contract)
            ok = true;
        }
        how[slot] = name + (ok ? " ok" : " rejected");
        return t;
    }
}
