package dev.qkv.attention;

import dev.qkv.attention.Fixtures.Layout;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

/**
 * The blocked backends against the double-precision reference over seeded random cases: shapes that hit loop
 * tails and the 64-row block edge, grouped and multi-query heads, every mask kind and broadcast shape, causal
 * masking with {@code Lq} on either side of {@code Lk}, explicit scales and non-contiguous views.
 *
 * <p>The cases are a seeded sample of the cross product (it is far too large to run in seconds), drawn so that
 * every mask and every layout of every operand occurs several times. {@code -Dqkv.test.seed=N} draws another
 * sample; a failure prints the case (with its own seed), which {@link #namedCases} can pin.
 */
class AttentionVsReferenceTest {

    static final long SEED = Long.getLong("qkv.test.seed", 20261125L);
    static final int[] SIZES = {1, 3, 7, 17, 63, 64, 65, 129};
    /** Upper bound on B·Hq·Lq·Lk·(Dk+Dv) per case, so the scalar reference keeps the class within seconds. */
    static final long MAX_WORK = 3_000_000;

    /** Which mask a case uses: none, or a kind with the shape of its tensor before broadcasting. */
    enum MaskShape {
        /** {@code [Lq, Lk]}. */
        LQ_LK,
        /** {@code [1, Lk]}: one row for every query. */
        ONE_LK,
        /** {@code [B, 1, Lq, Lk]}: one mask per batch, shared by the heads. */
        B_1_LQ_LK,
        /** {@code [B, Hq, Lq, Lk]}: the full score shape. */
        B_HQ_LQ_LK,
        /** {@code [B, 1, 1, Lk]}: a key-padding mask. */
        B_1_1_LK,
        /** {@code [B, 1, 1, Lk]} broadcast to {@code [B, Hq, Lq, Lk]} as a view with zero strides. */
        ZERO_STRIDE_VIEW,
        /** {@code [B, 1, Lq, Lk]} sliced out of a wider {@code [B, 2, Lq, Lk + 3]}: offset and padded rows. */
        SLICED_VIEW,
        /** {@code [Lq, Lk]} as the transpose of a dense {@code [Lk, Lq]}: the key stride is Lq, not 1. */
        TRANSPOSED_VIEW,
        /** {@code [Lk]}: one row for every batch, head and query (rank 1, aligned from the right). */
        LK,
        /** {@code [Hq, Lq, Lk]}: one mask per head, shared by the batches (rank 3). */
        HQ_LQ_LK,
        /** {@code [Hq, 1, Lk]}: a per-head key mask (rank 3, the queries broadcast). */
        HQ_1_LK;

        long[] shape(int b, int hq, int lq, int lk) {
            return switch (this) {
                case LQ_LK, TRANSPOSED_VIEW -> new long[] {lq, lk};
                case ONE_LK -> new long[] {1, lk};
                case B_1_LQ_LK, SLICED_VIEW -> new long[] {b, 1, lq, lk};
                case B_HQ_LQ_LK, ZERO_STRIDE_VIEW -> new long[] {b, hq, lq, lk};
                case B_1_1_LK -> new long[] {b, 1, 1, lk};
                case LK -> new long[] {lk};
                case HQ_LQ_LK -> new long[] {hq, lq, lk};
                case HQ_1_LK -> new long[] {hq, 1, lk};
            };
        }
    }

    /** One printable attention case; the tensors are drawn from {@code seed}. */
    record Case(long seed, int b, int hq, int hkv, int lq, int lk, int dk, int dv, boolean causal,
                Mask.Kind maskKind, MaskShape maskShape, float scale, Layout q, Layout k, Layout v, Layout out) {

        long work() {
            return (long) b * hq * lq * lk * (dk + dv);
        }

        @Override
        public String toString() {
            return "seed=" + seed + " q[" + b + "," + hq + "," + lq + "," + dk + "] k[" + b + "," + hkv + "," + lk
                    + "," + dk + "] v[.., " + dv + "]" + (causal ? " causal" : "")
                    + (maskKind == null ? "" : " mask=" + maskKind + maskShape)
                    + (Float.isNaN(scale) ? "" : " scale=" + scale)
                    + " layouts q=" + q + " k=" + k + " v=" + v + " out=" + out;
        }
    }

    static Stream<Arguments> cases() {
        List<Case> all = new ArrayList<>(namedCases());
        all.addAll(randomCases(SEED, 68));
        List<Arguments> args = new ArrayList<>();
        for (Backend backend : List.of(Backend.NATIVE, Backend.JAVA)) {
            for (Case c : all) {
                args.add(Arguments.of(Named.of(backend.cliName(), backend), c));
            }
        }
        return args.stream();
    }

    /** Cases the random sample could miss, written out. */
    static List<Case> namedCases() {
        Layout c = Layout.CONTIGUOUS;
        float d = Float.NaN;
        return List.of(
                // causal, fewer queries than keys (decoding with a cache), across the 64-row block edge
                new Case(1, 1, 4, 2, 17, 129, 64, 64, true, null, null, d, c, c, c, c),
                new Case(2, 3, 3, 1, 65, 129, 17, 7, true, null, null, d, c, c, c, c),
                // causal, more queries than keys: the first Lq - Lk rows see nothing
                new Case(3, 1, 2, 2, 129, 17, 7, 17, true, null, null, d, c, c, c, c),
                new Case(4, 3, 4, 1, 65, 3, 3, 1, true, null, null, d, c, c, c, c),
                // causal combined with each mask kind
                new Case(5, 3, 4, 2, 63, 65, 17, 3, true, Mask.Kind.BOOLEAN, MaskShape.B_1_LQ_LK, d, c, c, c, c),
                new Case(6, 1, 2, 1, 65, 63, 7, 64, true, Mask.Kind.ADDITIVE, MaskShape.B_HQ_LQ_LK, d, c, c, c, c),
                // multi-query (Hkv = 1) with every view at once
                new Case(7, 3, 3, 1, 17, 64, 65, 7, false, Mask.Kind.ADDITIVE, MaskShape.LQ_LK, d,
                        Layout.HEADS_INNER, Layout.TRANSPOSED, Layout.STRIDED, Layout.PADDED),
                // explicit scales, including one far from 1/√Dk
                new Case(8, 1, 4, 4, 64, 64, 64, 64, false, null, null, 1f, c, c, c, c),
                new Case(9, 1, 2, 1, 7, 129, 129, 3, true, Mask.Kind.BOOLEAN, MaskShape.B_1_1_LK, 0.01f,
                        Layout.PADDED, Layout.PADDED, Layout.HEADS_INNER, Layout.TRANSPOSED),
                // single query and single key
                new Case(10, 3, 2, 2, 1, 1, 1, 1, false, null, null, d, c, c, c, c),
                // few queries with a wide v (the row updates of 8, then 4 vectors, then a tail: 200 = 128 + 64 + 8)
                new Case(12, 1, 4, 2, 3, 300, 128, 200, true, null, null, d, c, c, c, c),
                new Case(11, 1, 4, 2, 1, 129, 63, 65, true, Mask.Kind.ADDITIVE, MaskShape.ONE_LK, d,
                        Layout.STRIDED, Layout.STRIDED, Layout.TRANSPOSED, Layout.STRIDED));
    }

    /** {@code n} seeded random cases; masks and layouts cycle so that each occurs about equally often. */
    static List<Case> randomCases(long seed, int n) {
        Random r = new Random(seed);
        Layout[] layouts = Layout.values();
        MaskShape[] shapes = MaskShape.values();
        int[][] heads = {{1, 1}, {2, 1}, {3, 1}, {2, 2}, {4, 2}, {4, 4}};
        List<Case> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            Case c;
            do {
                int[] h = heads[r.nextInt(heads.length)];
                int maskIndex = i % (2 * shapes.length + 1);
                Mask.Kind kind = maskIndex == 2 * shapes.length ? null : Mask.Kind.values()[maskIndex % 2];
                MaskShape shape = kind == null ? null : shapes[maskIndex / 2];
                float scale = r.nextInt(4) == 0 ? 0.05f + r.nextFloat() : Float.NaN;
                c = new Case(r.nextLong(), r.nextBoolean() ? 1 : 3, h[0], h[1], pick(r), pick(r), pick(r), pick(r),
                        r.nextBoolean(), kind, shape, scale,
                        layouts[i % layouts.length], layouts[(i / 2 + 1) % layouts.length],
                        layouts[(i / 3 + 2) % layouts.length], layouts[(i * 3 + 3) % layouts.length]);
            } while (c.work() > MAX_WORK);
            out.add(c);
        }
        return out;
    }

    private static int pick(Random r) {
        return SIZES[r.nextInt(SIZES.length)];
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("cases")
    void matchesReference(Backend backend, Case c) {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(c.seed());
            long[] qs = {c.b(), c.hq(), c.lq(), c.dk()};
            long[] ks = {c.b(), c.hkv(), c.lk(), c.dk()};
            long[] vs = {c.b(), c.hkv(), c.lk(), c.dv()};
            long[] os = {c.b(), c.hq(), c.lq(), c.dv()};
            Tensor q = c.q().of(arena, Fixtures.uniform(r, Fixtures.count(qs), -1, 1), qs);
            Tensor k = c.k().of(arena, Fixtures.uniform(r, Fixtures.count(ks), -1, 1), ks);
            Tensor v = c.v().of(arena, Fixtures.uniform(r, Fixtures.count(vs), -1, 1), vs);
            Tensor out = c.out().allocate(arena, os);
            Mask mask = null;
            Mask refMask = null;
            if (c.maskKind() != null) {
                Tensor m = maskValues(arena, r, c);
                mask = new Mask(c.maskKind(), m);
                refMask = new Mask(c.maskKind(), Fixtures.contiguousCopy(arena, m));
            }
            SdpaOptions options = new SdpaOptions(c.causal(), mask, c.scale());
            SdpaOptions refOptions = new SdpaOptions(c.causal(), refMask, c.scale());

            Tensor ref = Tensor.allocate(arena, os);
            Fixtures.run(Backend.REFERENCE, Fixtures.contiguousCopy(arena, q), Fixtures.contiguousCopy(arena, k),
                    Fixtures.contiguousCopy(arena, v), ref, refOptions);
            Fixtures.run(backend, q, k, v, out, options);

            // scores are O(1) at the default scale; an explicit scale s multiplies them by s·√Dk
            double magnitude = Float.isNaN(c.scale()) ? 1 : c.scale() * Math.sqrt(c.dk());
            double tol = Fixtures.tol(c.dk(), c.lk(), magnitude);
            Fixtures.assertClose(backend + " " + c + " (master seed " + SEED + ")", os, out.toArray(), ref.toArray(),
                    tol, tol);
        }
    }

    /**
     * Mask values: boolean masks mostly allow (1, and other non-zero values such as 0.5 and -2, which also allow)
     * and sometimes forbid (0 and -0); additive masks are uniform in [-2, 2] with about one entry in five -inf.
     */
    static Tensor maskValues(Arena arena, Random r, Case c) {
        long[] shape = switch (c.maskShape()) {
            case ZERO_STRIDE_VIEW -> new long[] {c.b(), 1, 1, c.lk()};
            case SLICED_VIEW -> new long[] {c.b(), 2, c.lq(), c.lk() + 3};
            case TRANSPOSED_VIEW -> new long[] {c.lk(), c.lq()};
            default -> c.maskShape().shape(c.b(), c.hq(), c.lq(), c.lk());
        };
        float[] x = new float[Fixtures.count(shape)];
        float[] allow = {1f, 1f, 1f, 1f, 0.5f, -2f, 0f, -0f};
        for (int i = 0; i < x.length; i++) {
            if (c.maskKind() == Mask.Kind.BOOLEAN) {
                x[i] = allow[r.nextInt(allow.length)];
            } else {
                x[i] = r.nextInt(5) == 0 ? Float.NEGATIVE_INFINITY : 4 * r.nextFloat() - 2;
            }
        }
        Tensor m = Tensor.of(arena, x, shape);
        return switch (c.maskShape()) {
            case ZERO_STRIDE_VIEW -> m.broadcastTo(c.b(), c.hq(), c.lq(), c.lk());
            case SLICED_VIEW -> m.slice(1, 1, 2).slice(3, 2, c.lk() + 2);
            case TRANSPOSED_VIEW -> m.transpose();
            default -> m;
        };
    }
}
