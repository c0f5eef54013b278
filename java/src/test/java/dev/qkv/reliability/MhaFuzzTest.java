package dev.qkv.reliability;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.mha.KvCache;
import dev.qkv.mha.MhaWeights;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Random valid and invalid calls of {@link MultiHeadAttention#forward} and {@link MultiHeadAttention#decode}:
 * valid ones match {@link Backend#REFERENCE} within a bound that grows with E and Lkv and never write the
 * padding around {@code out}; invalid ones throw {@link IllegalArgumentException} or {@link IllegalStateException}
 * ({@link NullPointerException} for a null argument) before {@code out} is written, and leave the cache as it was.
 */
class MhaFuzzTest {

    /** What is wrong with a forward call; NONE is a valid call. */
    private enum Defect {
        NONE, X_WIDTH, X_RANK, OUT_LENGTH, OUT_BATCH, KV_BATCH, KV_WIDTH, WORKSPACE_SMALL, MASK_SHAPE, X_CLOSED,
        OUT_CLOSED, WORKSPACE_CLOSED, OUT_TRANSPOSED, OUT_ROWS_OVERLAP, OUT_BATCHES_ALIASED, OUT_READ_ONLY, X_HEAP,
        NULL_WORKSPACE,
        NULL_OPTIONS
    }

    /** A tensor with NaN in every element of its segment: padding included, so stray writes show. */
    private static Tensor nanView(Arena a, long[] shape, long[] strides, long spare) {
        long end = 0;
        for (int d = 0; d < shape.length; d++) {
            end += (shape[d] - 1) * strides[d];
        }
        long floats = Arrays.stream(shape).anyMatch(s -> s == 0) ? 1 : end + 1 + spare;
        MemorySegment seg = a.allocate(floats * Float.BYTES, 64);
        Tensor whole = Tensor.wrap(seg, floats).fill(Float.NaN);
        return Tensor.view(whole.segment(), spare, shape, strides);
    }

    /** [b, l, e] with rows padded by {@code pad} floats, filled with NaN. */
    private static Tensor paddedOut(Arena a, long b, long l, long e, long pad) {
        return nanView(a, new long[] {b, l, e}, new long[] {l * (e + pad), e + pad, 1}, pad);
    }

    private static boolean allNaN(Tensor t) {
        MemorySegment s = t.segment();
        for (long i = 0; i < s.byteSize() / 4; i++) {
            if (!Float.isNaN(s.getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, i))) {
                return false;
            }
        }
        return true;
    }

    /** Elements of the segment that lie outside the view are still NaN. */
    private static boolean paddingUntouched(Tensor t) {
        MemorySegment s = t.segment();
        boolean[] inView = new boolean[(int) (s.byteSize() / 4)];
        long[] shape = t.shape();
        for (long b = 0; b < shape[0]; b++) {
            for (long i = 0; i < shape[1]; i++) {
                for (long c = 0; c < shape[2]; c++) {
                    inView[(int) t.index(b, i, c)] = true;
                }
            }
        }
        for (int i = 0; i < inView.length; i++) {
            if (!inView[i] && !Float.isNaN(s.getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, i))) {
                return false;
            }
        }
        return true;
    }

    private static float[] values(Tensor t) {
        return t.toArray();
    }

    private static void assertClose(float[] ref, float[] got, double atol, String what) {
        for (int i = 0; i < ref.length; i++) {
            double d = Math.abs((double) got[i] - ref[i]);
            if (!(d <= atol + MhaLayers.RTOL * Math.abs(ref[i]))) {
                fail(what + ": element " + i + " is " + got[i] + ", reference " + ref[i] + " (atol " + atol + ")");
            }
        }
    }

    private static SdpaOptions randomOptions(Arena a, Random r, long b, int h, long l, long lkv) {
        Mask mask = null;
        if (r.nextInt(3) == 0) {
            long[] shape = {r.nextBoolean() ? b : 1, r.nextBoolean() ? h : 1, r.nextBoolean() ? l : 1, lkv};
            if (r.nextBoolean()) {
                Tensor m = Tensor.allocate(a, shape);
                float[] v = new float[(int) m.elementCount()];
                for (int i = 0; i < v.length; i++) {
                    v[i] = r.nextInt(5) == 0 ? 0f : 1f;
                }
                mask = Mask.allowed(m.copyFrom(v));
            } else {
                mask = Mask.additive(MhaLayers.rand(a, r, 2f, shape));
            }
        }
        return new SdpaOptions(r.nextBoolean(), mask, Float.NaN);
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void forwardCallsMatchTheReferenceOrFailBeforeWriting(Backend backend) {
        long seed = Fuzz.seed("mha-forward-" + backend);
        Random r = new Random(seed);
        int iterations = Fuzz.iterations(400);
        Defect[] defects = Defect.values();
        int valid = 0;
        for (int it = 0; it < iterations; it++) {
            int h = Fuzz.pick(r, 1, 2, 3, 4);
            int hkv = h % 2 == 0 && r.nextBoolean() ? h / 2 : (r.nextInt(3) == 0 ? 1 : h);
            int dh = Fuzz.pick(r, 1, 2, 3, 5, 8, 16);
            int e = h * dh;
            long b = r.nextInt(6) == 0 ? 0 : 1 + r.nextInt(3);
            long l = r.nextInt(8) == 0 ? 0 : Fuzz.pick(r, 1, 2, 3, 7, 17, 65);
            boolean cross = r.nextBoolean();
            long lkv = cross ? Fuzz.pick(r, 0, 1, 3, 17, 70) : l;
            Defect defect = r.nextBoolean() ? Defect.NONE : defects[1 + r.nextInt(defects.length - 1)];
            String what = "seed " + seed + " case " + it + ": " + backend + " E=" + e + " H=" + h + " Hkv=" + hkv
                    + " B=" + b + " L=" + l + (cross ? " Lkv=" + lkv : " self") + " defect=" + defect;
            Arena doomed = Arena.ofConfined();
            try (Arena a = Arena.ofConfined()) {
                MhaWeights w = MhaLayers.weights(a, r, h, hkv, dh, r.nextBoolean(), r.nextBoolean());
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
                MultiHeadAttention reference = MultiHeadAttention.create(w, Backend.REFERENCE);
                long xPad = r.nextInt(3) == 0 ? 3 : 0;
                Tensor x = nanView(a, new long[] {b, l, e}, new long[] {l * (e + xPad), e + xPad, 1}, 0);
                Tensor xValues = MhaLayers.rand(a, r, 1f, b, l, e);
                if (x.elementCount() > 0) {
                    x.copyFrom(xValues);
                }
                Tensor kv = cross ? MhaLayers.rand(a, r, 1f, b, lkv, e) : null;
                SdpaOptions options = randomOptions(a, r, b, h, l, lkv);
                MhaWorkspace ws = layer.newWorkspace(a, b + r.nextInt(2), l, lkv);
                // batch-first rows, padded or not, or sequence-first ([L, B, E] memory seen as [B, L, E])
                Tensor out = r.nextInt(4) == 0 ? nanView(a, new long[] {b, l, e}, new long[] {e, b * e, 1}, 0)
                        : paddedOut(a, b, l, e, r.nextInt(3) == 0 ? 2 : 0);
                Class<? extends RuntimeException> expected = IllegalArgumentException.class;
                boolean applies = true;
                switch (defect) {
                    case NONE -> applies = true;
                    case X_WIDTH -> x = MhaLayers.rand(a, r, 1f, b, l, e + 1);
                    case X_RANK -> x = MhaLayers.rand(a, r, 1f, b * l, e);
                    case OUT_LENGTH -> out = paddedOut(a, b, l + 1, e, 0);
                    case OUT_BATCH -> out = paddedOut(a, b + 1, l, e, 0);
                    case KV_BATCH -> kv = MhaLayers.rand(a, r, 1f, b + 1, lkv, e);
                    case KV_WIDTH -> kv = MhaLayers.rand(a, r, 1f, b, lkv, e + 2);
                    case WORKSPACE_SMALL -> {
                        ws = layer.newWorkspace(a, 1, 1, 1);
                        // a workspace holds at least 64 bytes; the projections of B·L rows must need more
                        long kvd = (long) hkv * dh;
                        // a call without query rows projects nothing and needs no workspace (not even kv's rows)
                        long need = b * l == 0 ? 0 : cross ? b * l * 2 * e + b * lkv * 2 * kvd
                                : b * l * (2L * e + 2 * kvd);
                        applies = need > Math.max(2L * e + 2 * kvd, 16);
                    }
                    // lkv + 2: neither Lkv nor 1 (a last dimension of 1 broadcasts over the keys, even when Lkv = 0)
                    case MASK_SHAPE -> options = options.withMask(Mask.allowed(Tensor.allocate(a, 1, 1, 1, lkv + 2)
                            .fill(1f)));
                    case X_CLOSED -> {
                        x = MhaLayers.rand(doomed, r, 1f, b, l, e);
                        expected = IllegalStateException.class;
                    }
                    case OUT_CLOSED -> {
                        out = paddedOut(doomed, b, l, e, 0);
                        expected = IllegalStateException.class;
                    }
                    case WORKSPACE_CLOSED -> {
                        ws = layer.newWorkspace(doomed, b, l, lkv);
                        expected = IllegalStateException.class;
                    }
                    case OUT_TRANSPOSED -> {
                        out = nanView(a, new long[] {b, l, e}, new long[] {l * e, 1, l}, 0);
                        // an empty out (B = 0) reaches nothing: any strides (README, failure contract)
                        applies = b > 0 && e > 1 && l > 1;
                    }
                    case OUT_ROWS_OVERLAP -> {
                        out = nanView(a, new long[] {b, l, e}, new long[] {l * e, e - 1, 1}, 0);
                        applies = b > 0 && l > 1;
                    }
                    case OUT_BATCHES_ALIASED -> {
                        out = nanView(a, new long[] {b, l, e}, new long[] {0, e, 1}, 0);
                        applies = b > 1 && l > 0;
                    }
                    case OUT_READ_ONLY -> {
                        Tensor o = paddedOut(a, b, l, e, 0);
                        out = Tensor.view(o.segment().asReadOnly(), o.offset(), o.shape(), o.strides());
                        applies = b * l > 0;
                    }
                    case X_HEAP -> {
                        x = Tensor.wrap(MemorySegment.ofArray(new float[(int) (b * l * e)]), b, l, e);
                        // an empty x is never handed to OpenBLAS: heap memory is fine (README, failure contract)
                        applies = backend == Backend.NATIVE && b * l > 0;
                    }
                    case NULL_WORKSPACE -> {
                        ws = null;
                        expected = NullPointerException.class;
                    }
                    case NULL_OPTIONS -> {
                        options = null;
                        expected = NullPointerException.class;
                    }
                }
                if (defect == Defect.KV_BATCH || defect == Defect.KV_WIDTH) {
                    applies = cross;
                }
                if (defect == Defect.MASK_SHAPE) {
                    applies = true;
                }
                doomed.close();
                if (defect != Defect.NONE && !applies) {
                    continue;
                }
                Tensor fx = x;
                Tensor fkv = kv;
                Tensor fout = out;
                SdpaOptions fo = options;
                MhaWorkspace fws = ws;
                if (defect == Defect.NONE) {
                    valid++;
                    try {
                        layer.forward(fx, fkv, fout, fo, fws);
                    } catch (RuntimeException ex) {
                        throw new AssertionError(what + ": a valid call threw " + ex, ex);
                    }
                    Tensor ref = Tensor.allocate(a, b, l, e);
                    reference.forward(fx, fkv, ref, fo, reference.newWorkspace(a, b, l, lkv));
                    assertClose(values(ref), values(fout), MhaLayers.atol(e, lkv), what);
                    assertTrue(paddingUntouched(fout), what + ": wrote outside out");
                    continue;
                }
                RuntimeException thrown = null;
                try {
                    layer.forward(fx, fkv, fout, fo, fws);
                } catch (RuntimeException ex) {
                    thrown = ex;
                }
                if (thrown == null) {
                    fail(what + ": an invalid call returned normally");
                }
                if (!expected.isInstance(thrown)) {
                    throw new AssertionError(what + ": threw " + thrown + ", expected " + expected.getSimpleName(),
                            thrown);
                }
                if (fout.segment().scope().isAlive()) {
                    assertTrue(allNaN(fout), what + ": a rejected call wrote into out");
                }
            }
        }
        assertTrue(valid > iterations / 4, "only " + valid + " valid cases");
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void anOutputThatSharesMemoryWithAWeightIsRefusedAndTheWeightsStayIntact(Backend backend) {
        int h = 2;
        int dh = 4;
        int e = h * dh;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(11);
            // every weight and the output carved from one segment, as a model loaded into one buffer would be
            Tensor all = MhaLayers.rand(a, r, 0.3f, 8L * e * e);
            MemorySegment s = all.segment();
            long[] mat = {e, e};
            long[] st = {e, 1};
            Tensor[] m = new Tensor[4];
            for (int i = 0; i < 4; i++) {
                m[i] = Tensor.view(s, (long) i * e * e, mat, st);
            }
            Tensor bias = Tensor.view(s, 4L * e * e, new long[] {e}, new long[] {1});
            MhaWeights w = MhaWeights.of(h, m[0], null, m[1], null, m[2], null, m[3], bias);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            Tensor x = MhaLayers.rand(a, r, 1f, 1, 3, e);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 3, 3);
            float[] before = all.toArray();
            String[] names = {"W_Q", "W_K", "W_V", "W_O", "b_O"};
            long[] at = {0, e * e + 5, 2L * e * e + e, 4L * e * e - 2 * e, 4L * e * e + 2};
            for (int i = 0; i < at.length; i++) {
                Tensor out = Tensor.view(s, at[i], new long[] {1, 3, e}, new long[] {3L * e, e, 1});
                IllegalArgumentException ex = org.junit.jupiter.api.Assertions.assertThrows(
                        IllegalArgumentException.class, () -> layer.forward(x, out, SdpaOptions.DEFAULT, ws));
                assertTrue(ex.getMessage().startsWith("out [1, 3, " + e + "]") && ex.getMessage().contains(names[i]),
                        backend + ": " + ex.getMessage());
                org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                        () -> layer.decode(x, layer.newCache(a, 4), out, ws));
            }
            org.junit.jupiter.api.Assertions.assertArrayEquals(before, all.toArray(), "the weights changed");
            // the same segment beyond the weights is a valid output
            Tensor out = Tensor.view(s, 5L * e * e, new long[] {1, 3, e}, new long[] {3L * e, e, 1});
            layer.forward(x, out, SdpaOptions.DEFAULT, ws);
            org.junit.jupiter.api.Assertions.assertArrayEquals(java.util.Arrays.copyOf(before, 5 * e * e),
                    java.util.Arrays.copyOf(all.toArray(), 5 * e * e));
        }
    }

    /** What is wrong with a decode call; NONE is a valid call. */
    private enum DecodeDefect { NONE, OVER_CAPACITY, FOREIGN_CACHE, X_BATCH, OUT_LENGTH, WORKSPACE_SMALL, RESET }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void decodeStepsMatchTheReferenceOrFailWithoutTouchingTheCache(Backend backend) {
        long seed = Fuzz.seed("mha-decode-" + backend);
        Random r = new Random(seed);
        int sequences = Math.max(4, Fuzz.iterations(400) / 10);
        for (int sq = 0; sq < sequences; sq++) {
            int h = Fuzz.pick(r, 1, 2, 4);
            int hkv = h > 1 && r.nextBoolean() ? h / 2 : h;
            int dh = Fuzz.pick(r, 1, 3, 8);
            int e = h * dh;
            int capacity = 1 + r.nextInt(40);
            try (Arena a = Arena.ofConfined()) {
                MhaWeights w = MhaLayers.weights(a, r, h, hkv, dh, r.nextBoolean(), r.nextBoolean());
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
                MultiHeadAttention reference = MultiHeadAttention.create(w, Backend.REFERENCE);
                KvCache cache = layer.newCache(a, capacity);
                MhaWorkspace ws = layer.newWorkspace(a, 1, 8, capacity);
                List<float[]> seen = new ArrayList<>();
                DecodeDefect[] defects = DecodeDefect.values();
                for (int step = 0; step < 12; step++) {
                    DecodeDefect defect = r.nextBoolean() ? DecodeDefect.NONE
                            : defects[1 + r.nextInt(defects.length - 1)];
                    int room = capacity - cache.length();
                    int n = defect == DecodeDefect.OVER_CAPACITY ? room + 1 + r.nextInt(3)
                            : r.nextInt(Math.min(room, 5) + 1);
                    String what = "seed " + seed + " sequence " + sq + " step " + step + ": " + backend + " E=" + e
                            + " H=" + h + " Hkv=" + hkv + " capacity=" + capacity + " length=" + cache.length()
                            + " n=" + n + " defect=" + defect;
                    if (defect == DecodeDefect.RESET) {
                        cache.reset();
                        seen.clear();
                        assertEquals(0, cache.length(), what);
                        continue;
                    }
                    Tensor x = MhaLayers.rand(a, r, 1f, 1, n, e);
                    Tensor out = paddedOut(a, 1, n, e, 1);
                    KvCache c = cache;
                    MhaWorkspace wsp = ws;
                    Class<? extends RuntimeException> expected = IllegalArgumentException.class;
                    switch (defect) {
                        case OVER_CAPACITY -> {
                            expected = IllegalStateException.class;
                            wsp = layer.newWorkspace(a, 1, n, capacity);
                        }
                        case FOREIGN_CACHE -> c = r.nextBoolean() ? KvCache.allocate(a, hkv + 1, capacity, dh)
                                : KvCache.allocate(a, hkv, capacity, dh + 1);
                        case X_BATCH -> x = MhaLayers.rand(a, r, 1f, 2, n, e);
                        case OUT_LENGTH -> out = paddedOut(a, 1, n + 1, e, 0);
                        case WORKSPACE_SMALL -> {
                            wsp = layer.newWorkspace(a, 1, 1, 1);
                            // a workspace holds at least 64 bytes; n rows of [Q | K | V | heads] must need more
                            if ((long) n * (2 * e + 2 * hkv * dh) <= Math.max(2 * e + 2 * hkv * dh, 16)) {
                                continue;
                            }
                        }
                        default -> {
                        }
                    }
                    int before = cache.length();
                    if (defect != DecodeDefect.NONE) {
                        RuntimeException thrown = null;
                        try {
                            layer.decode(x, c, out, wsp);
                        } catch (RuntimeException ex) {
                            thrown = ex;
                        }
                        if (thrown == null || !expected.isInstance(thrown)) {
                            throw new AssertionError(what + ": threw " + thrown + ", expected "
                                    + expected.getSimpleName(), thrown);
                        }
                        assertTrue(allNaN(out), what + ": a rejected call wrote into out");
                        assertEquals(before, cache.length(), what + ": a rejected call changed the cache length");
                        continue;
                    }
                    try {
                        layer.decode(x, cache, out, ws);
                    } catch (RuntimeException ex) {
                        throw new AssertionError(what + ": a valid call threw " + ex, ex);
                    }
                    assertEquals(before + n, cache.length(), what);
                    float[] xs = x.toArray();
                    for (int t = 0; t < n; t++) {
                        seen.add(Arrays.copyOfRange(xs, t * e, (t + 1) * e));
                    }
                    // the reference: a causal forward over the whole sequence so far; its last n rows
                    int len = seen.size();
                    Tensor all = Tensor.allocate(a, 1, len, e);
                    for (int t = 0; t < len; t++) {
                        for (int c2 = 0; c2 < e; c2++) {
                            all.set(seen.get(t)[c2], 0, t, c2);
                        }
                    }
                    Tensor ref = Tensor.allocate(a, 1, len, e);
                    reference.forward(all, null, ref, SdpaOptions.CAUSAL, reference.newWorkspace(a, 1, len, len));
                    Tensor last = ref.slice(1, len - n, len);
                    assertClose(values(last), values(out), MhaLayers.atol(e, len), what);
                    assertTrue(paddingUntouched(out), what + ": wrote outside out");
                }
            }
        }
    }
}
