package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import static dev.qkv.mha.MhaTestSupport.assertClose;
import static dev.qkv.mha.MhaTestSupport.assertWithinFloat32;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class MultiHeadAttentionTest {

    enum MaskKind { NONE, KEY_PADDING, ADDITIVE_2D, BOOL_B1LK }

    /** One randomized layer case; printed in the test name so a failure can be replayed from it. */
    record Case(long seed, int b, int l, int lkv, int e, int h, int hkv, boolean bias, boolean packed,
                boolean cross, MaskKind mask, boolean causal) {
        @Override
        public String toString() {
            return "seed=" + seed + " B=" + b + " L=" + l + " Lkv=" + lkv + " E=" + e + " H=" + h + " Hkv=" + hkv
                    + (bias ? " bias" : "") + (packed ? " packed" : " separate") + (cross ? " cross" : " self")
                    + " mask=" + mask + (causal ? " causal" : "");
        }
    }

    private static final int[] LENGTHS = {1, 3, 7, 17, 65};
    private static final int[] EMBED = {4, 8, 12, 24, 64};

    static List<Case> cases() {
        List<Case> out = new ArrayList<>();
        for (int i = 0; i < 24; i++) {
            long seed = 0x5eed0000L + i;
            Random r = new Random(seed);
            int e = EMBED[r.nextInt(EMBED.length)];
            List<Integer> hs = divisors(e);
            int h = hs.get(r.nextInt(hs.size()));
            List<Integer> kvs = divisors(h);
            int hkv = kvs.get(r.nextInt(kvs.size()));
            boolean cross = r.nextBoolean();
            int l = LENGTHS[r.nextInt(LENGTHS.length)];
            int lkv = cross ? LENGTHS[r.nextInt(LENGTHS.length)] : l;
            out.add(new Case(seed, r.nextBoolean() ? 1 : 3, l, lkv, e, h, hkv, r.nextBoolean(), r.nextBoolean(),
                    cross, MaskKind.values()[r.nextInt(4)], r.nextBoolean()));
        }
        return out;
    }

    private static List<Integer> divisors(int n) {
        List<Integer> d = new ArrayList<>();
        for (int i = 1; i <= n; i++) {
            if (n % i == 0) {
                d.add(i);
            }
        }
        return d;
    }

    static Stream<Arguments> backendsAndCases() {
        return Stream.of(Backend.NATIVE, Backend.JAVA).flatMap(b ->
                cases().stream().map(c -> Arguments.of(Named.of(b.cliName(), b), c)));
    }

    /** Weights with entries of size 1/√E so that activations stay of order one whatever E is. */
    static MhaWeights weights(Arena a, Random r, int e, int h, int hkv, boolean bias, boolean packed) {
        int kvd = e / h * hkv;
        float s = (float) (1 / Math.sqrt(e));
        Tensor wo = rand(a, r, s, e, e);
        Tensor bo = bias ? rand(a, r, 0.5f, e) : null;
        if (packed) {
            return MhaWeights.packed(h, rand(a, r, s, e + 2L * kvd, e), bias ? rand(a, r, 0.5f, e + 2L * kvd) : null,
                    wo, bo);
        }
        return MhaWeights.of(h, rand(a, r, s, e, e), bias ? rand(a, r, 0.5f, e) : null,
                rand(a, r, s, kvd, e), bias ? rand(a, r, 0.5f, kvd) : null,
                rand(a, r, s, kvd, e), bias ? rand(a, r, 0.5f, kvd) : null, wo, bo);
    }

    static SdpaOptions options(Arena a, Random r, Case c) {
        Mask m = switch (c.mask()) {
            case NONE -> null;
            case KEY_PADDING -> Mask.allowed(bools(a, r, c.b(), 1, 1, c.lkv()));
            case BOOL_B1LK -> Mask.allowed(bools(a, r, c.b(), 1, c.l(), c.lkv()));
            case ADDITIVE_2D -> Mask.additive(rand(a, r, 2f, c.l(), c.lkv()));
        };
        return new SdpaOptions(c.causal(), m, Float.NaN);
    }

    /** 0/1 values, 80 % allowed. */
    static Tensor bools(Arena a, Random r, long... shape) {
        Tensor t = Tensor.allocate(a, shape);
        float[] x = new float[(int) t.elementCount()];
        for (int i = 0; i < x.length; i++) {
            x[i] = r.nextInt(5) == 0 ? 0f : 1f;
        }
        return t.copyFrom(x);
    }


    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndCases")
    void matchesReference(Backend backend, Case c) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(c.seed());
            MhaWeights w = weights(a, r, c.e(), c.h(), c.hkv(), c.bias(), c.packed());
            Tensor x = rand(a, r, 1f, c.b(), c.l(), c.e());
            Tensor kv = c.cross() ? rand(a, r, 1f, c.b(), c.lkv(), c.e()) : null;
            SdpaOptions o = options(a, r, c);
            Tensor ref = Tensor.allocate(a, c.b(), c.l(), c.e());
            MhaTestSupport.referenceForward(w, x, kv, ref, o);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            Tensor out = Tensor.allocate(a, c.b(), c.l(), c.e()).fill(Float.NaN);
            MhaWorkspace ws = layer.newWorkspace(a, c.b(), c.l(), c.lkv());
            layer.forward(x, kv, out, o, ws);
            assertWithinFloat32(ref.toArray(), out.toArray(), c.e(), c.lkv(), backend + " " + c);
        }
    }

    /**
     * A layer on two threads, at a size the attention splits across workers (over 8 MFLOP): the workspace from
     * newWorkspace holds a score tile per worker (it once held one, and such calls and a prefill of this length
     * were refused as "workspace too small"), and forward and a prefill decode match the reference.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void workspaceFitsEveryWorkerOfAMultiThreadedLayer(Backend backend) {
        long seed = 77;
        int e = 64;
        int l = 256;
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(seed);
            MhaWeights w = weights(a, r, e, 4, 2, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend, 2);
            Tensor x = rand(a, r, 1f, 1, l, e);
            Tensor out = Tensor.allocate(a, 1, l, e);
            layer.forward(x, out, SdpaOptions.CAUSAL, layer.newWorkspace(a, 1, l, l));
            Tensor ref = Tensor.allocate(a, 1, l, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            String what = backend + " seed=" + seed + " E=" + e + " H=4 Hkv=2 L=" + l + " threads=2";
            assertWithinFloat32(ref.toArray(), out.toArray(), e, l, what);

            KvCache cache = layer.newCache(a, l);
            Tensor dec = Tensor.allocate(a, 1, l, e);
            layer.decode(x, cache, dec, layer.newWorkspace(a, 1, l, cache.capacity()));
            assertWithinFloat32(ref.toArray(), dec.toArray(), e, l, what + " prefill");
        }
    }

    /**
     * An empty batch runs no attention, so its workspace holds no score tile: the command line's {@code mha} on an
     * {@code x [0, 10^6, E]} file (128 bytes) zero-filled 570 MB for one, and {@code kv [0, 2^31 - 2^21, E]}
     * 17 GB. With no rows at all it needs nothing; forward on it writes nothing and throws nothing.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void anEmptyBatchNeedsNoWorkspace(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(5);
            int e = 16;
            MhaWeights w = weights(a, r, e, 4, 2, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend, 2);
            assertEquals(0, layer.workspaceBytes(0, 1_000_000, 1_000_000));
            assertEquals(0, layer.workspaceBytes(0, 0, 50_000_000));
            assertEquals(0, layer.workspaceBytes(3, 0, 50_000_000));
            // a batch of one still needs its tiles: the bound above is not a workspace that is always empty
            assertTrue(layer.workspaceBytes(1, 1000, 1000) > 0);
            MhaWorkspace ws = layer.newWorkspace(a, 0, 1_000_000, 1_000_000);
            assertTrue(ws.byteSize() <= 128, "an empty batch's workspace: " + ws.byteSize() + " bytes");
            Tensor x = Tensor.allocate(a, 0, 1_000_000, e);
            layer.forward(x, Tensor.allocate(a, 0, 1_000_000, e), SdpaOptions.CAUSAL, ws);
            Tensor kv = Tensor.allocate(a, 0, 7, e);
            layer.forward(x, kv, Tensor.allocate(a, 0, 1_000_000, e), SdpaOptions.DEFAULT, ws);
        }
    }

    /**
     * The failure contract: a tensor with a dimension of 0 is accepted whatever its strides, zero strides and heap
     * memory on the native backend included, since nothing of it is read, written or handed to OpenBLAS. The
     * layer refused such x, kv and out: heap memory on NATIVE ("a heap segment"), and on every backend strides
     * that are not 1 along E ("rows must have unit stride along E"), which an empty view does not need. With an
     * empty kv and query rows, no row has a key to attend: the heads' output is zeros, so out is b_O in every
     * row (checked against that closed form); an empty batch or decode chunk writes nothing.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void emptyTensorsAreAcceptedWhateverTheirMemoryAndStrides(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(19);
            int e = 16;
            MhaWeights w = weights(a, r, e, 4, 2, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            MhaWorkspace ws = layer.newWorkspace(a, 2, 3, 3);
            java.util.function.Function<long[], Tensor> heap =
                    s -> Tensor.view(MemorySegment.ofArray(new float[1]), 0, s, new long[s.length]);
            java.util.function.Function<long[], Tensor> zero =
                    s -> Tensor.view(a.allocate(64, 64), 0, s, new long[s.length]);
            for (var empty : List.of(heap, zero)) {
                layer.forward(empty.apply(new long[] {0, 3, e}), empty.apply(new long[] {0, 3, e}),
                        SdpaOptions.CAUSAL, ws);
                layer.forward(empty.apply(new long[] {2, 0, e}), rand(a, r, 1f, 2, 5, e),
                        empty.apply(new long[] {2, 0, e}), SdpaOptions.DEFAULT, ws);
                Tensor x = rand(a, r, 1f, 2, 3, e);
                Tensor out = Tensor.allocate(a, 2, 3, e).fill(Float.NaN);
                layer.forward(x, empty.apply(new long[] {2, 0, e}), out, SdpaOptions.DEFAULT, ws);
                float[] bo = w.bo().toArray();
                float[] got = out.toArray();
                for (int i = 0; i < got.length; i++) {
                    assertEquals(bo[i % e], got[i], 1e-6, backend + ": no key to attend, out row = b_O, at " + i);
                }
                KvCache cache = layer.newCache(a, 4);
                layer.decode(empty.apply(new long[] {1, 0, e}), cache, empty.apply(new long[] {1, 0, e}), ws);
                assertEquals(0, cache.length());
            }
        }
    }

    /**
     * The projections take x and kv rows through a leading dimension, so each must have unit stride along E and
     * rows at least E apart: a transposed x and an x whose rows overlap (a broadcast token) are refused by name on
     * every backend, before anything is written.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void inputRowsNeedUnitStrideAlongEAndMustNotOverlap(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            int e = 16;
            MhaWeights w = weights(a, new Random(23), e, 4, 2, false, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 4, 4);
            Tensor token = rand(a, new Random(1), 1f, 1, 1, e);
            Tensor transposed = rand(a, new Random(2), 1f, 1, e, 4).transpose(1, 2);
            Tensor broadcast = token.broadcastTo(1, 4, e);
            for (Tensor x : new Tensor[] {transposed, broadcast}) {
                Tensor out = Tensor.allocate(a, 1, 4, e).fill(Float.NaN);
                IllegalArgumentException ex = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(x, out, SdpaOptions.DEFAULT, ws));
                assertTrue(ex.getMessage().startsWith("x [1, 4, 16] with strides"), ex.getMessage());
                IllegalArgumentException cross = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(rand(a, new Random(3), 1f, 1, 4, e), x, out, SdpaOptions.DEFAULT, ws));
                assertTrue(cross.getMessage().startsWith("kv [1, 4, 16] with strides"), cross.getMessage());
                for (float f : out.toArray()) {
                    assertTrue(Float.isNaN(f), "a refused call wrote out");
                }
            }
        }
    }

    @Test
    void nonContiguousInputsAndOutputsUseTheirStrides() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(7);
            int b = 3;
            int l = 5;
            int e = 16;
            MhaWeights w = weights(a, r, e, 4, 2, true, true);
            // x rows padded to 2E (one product, ld 2E); kv and out with a gap between batches (one per batch)
            Tensor x = rand(a, r, 1f, b, l, 2L * e).slice(2, 0, e);
            Tensor kv = rand(a, r, 1f, b, l + 2, e).slice(1, 1, l + 1);
            SdpaOptions o = SdpaOptions.CAUSAL;
            for (Tensor keys : new Tensor[] {null, kv}) {
                Tensor ref = Tensor.allocate(a, b, l, e);
                MhaTestSupport.referenceForward(w, x, keys, ref, o);
                for (Backend be : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
                    MultiHeadAttention layer = MultiHeadAttention.create(w, be);
                    Tensor out = Tensor.allocate(a, b, l + 1, e).fill(Float.NaN).slice(1, 0, l);
                    layer.forward(x, keys, out, o, layer.newWorkspace(a, b, l, l));
                    assertWithinFloat32(ref.toArray(), out.toArray(), e, l, be + (keys == null ? " self" : " cross"));
                }
            }
        }
    }

    /**
     * An output whose rows are padded and whose batches start right after the last row of the one before (no
     * padding after it) has disjoint rows: the batch stride is the rows' whole extent, {@code (L - 1)·P + E}, as
     * the layer's rule says ("the other at least its whole extent"). The check wanted {@code L·P} instead and
     * refused it as "two rows share memory". Compared with the reference into a contiguous output.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void anOutputWhoseBatchesFollowTheirLastRowIsAccepted(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(13);
            int b = 2;
            int l = 3;
            int e = 16;
            long pad = e + 3;
            long batch = (l - 1) * pad + e;
            MhaWeights w = weights(a, r, e, 4, 2, true, true);
            Tensor x = rand(a, r, 1f, b, l, e);
            Tensor ref = Tensor.allocate(a, b, l, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            MemorySegment seg = a.allocate((b * batch) * Float.BYTES, 64);
            Tensor out = Tensor.view(seg, 0, new long[] {b, l, e}, new long[] {batch, pad, 1}).fill(Float.NaN);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            layer.forward(x, out, SdpaOptions.CAUSAL, layer.newWorkspace(a, b, l, l));
            assertWithinFloat32(ref.toArray(), out.toArray(), e, l, backend + " out strides " + batch + ", " + pad);
        }
    }

    @Test
    void oneWorkspaceServesSmallerCallsAndRepeatsAreBitIdentical() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(11);
            MhaWeights w = weights(a, r, 32, 8, 4, true, false);
            MultiHeadAttention layer = MultiHeadAttention.create(w, Backend.NATIVE);
            MhaWorkspace ws = layer.newWorkspace(a, 2, 40, 40);
            assertEquals(layer.workspaceBytes(2, 40, 40), ws.byteSize(), 64.0);
            for (int l : new int[] {40, 9, 1}) {
                Tensor x = rand(a, r, 1f, 2, l, 32);
                Tensor first = Tensor.allocate(a, 2, l, 32);
                Tensor second = Tensor.allocate(a, 2, l, 32);
                layer.forward(x, first, SdpaOptions.CAUSAL, ws);
                layer.forward(x, second, SdpaOptions.CAUSAL, ws);
                assertArrayEquals(first.toArray(), second.toArray());
            }
        }
    }

    /** The workspace caches head views per layer and call kind: interleaving them must never reuse wrong ones. */
    @Test
    void aSharedWorkspaceInterleavesLayersAndCallKinds() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(13);
            MultiHeadAttention four = MultiHeadAttention.create(weights(a, r, 16, 4, 4, true, true), Backend.NATIVE);
            MultiHeadAttention two = MultiHeadAttention.create(weights(a, r, 16, 2, 1, true, false), Backend.NATIVE);
            Tensor x = rand(a, r, 1f, 1, 6, 16);
            Tensor kv = rand(a, r, 1f, 1, 6, 16);
            MhaWorkspace shared = four.newWorkspace(a, 1, 6, 6);
            for (int round = 0; round < 2; round++) {
                for (MultiHeadAttention m : new MultiHeadAttention[] {four, two}) {
                    for (Tensor keys : new Tensor[] {null, kv}) {
                        Tensor want = Tensor.allocate(a, 1, 6, 16);
                        m.forward(x, keys, want, SdpaOptions.DEFAULT, m.newWorkspace(a, 1, 6, 6));
                        Tensor got = Tensor.allocate(a, 1, 6, 16);
                        m.forward(x, keys, got, SdpaOptions.DEFAULT, shared);
                        assertArrayEquals(want.toArray(), got.toArray(), m + (keys == null ? " self" : " cross"));
                    }
                    KvCache cache = m.newCache(a, 6);
                    Tensor want = Tensor.allocate(a, 1, 6, 16);
                    m.decode(x, cache, want, m.newWorkspace(a, 1, 6, 6));
                    cache.reset();
                    Tensor got = Tensor.allocate(a, 1, 6, 16);
                    m.decode(x, cache, got, shared);
                    assertArrayEquals(want.toArray(), got.toArray(), m + " decode");
                }
            }
        }
    }

    /** Under the causal rule, changing later tokens must leave every earlier output row bit-identical. */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(Backend.class)
    void causalOutputsIgnoreLaterTokens(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(17);
            int l = 12;
            int keep = 5;
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 24, 6, 3, true, true), backend);
            Tensor x = rand(a, r, 1f, 2, l, 24);
            Tensor changed = Tensor.allocate(a, 2, l, 24).copyFrom(x);
            changed.slice(1, keep, l).copyFrom(rand(a, r, 3f, 2, l - keep, 24));
            MhaWorkspace ws = layer.newWorkspace(a, 2, l, l);
            Tensor y1 = Tensor.allocate(a, 2, l, 24);
            Tensor y2 = Tensor.allocate(a, 2, l, 24);
            layer.forward(x, y1, SdpaOptions.CAUSAL, ws);
            layer.forward(changed, y2, SdpaOptions.CAUSAL, ws);
            assertArrayEquals(y1.slice(1, 0, keep).toArray(), y2.slice(1, 0, keep).toArray(), backend + " seed=17");
        }
    }

    /** One layer, several threads, a workspace each: every thread gets the single-threaded result. */
    @Test
    void oneLayerServesThreadsWithTheirOwnWorkspaces() throws Exception {
        // a shared arena: the weights and inputs are read from every thread
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(19);
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 32, 4, 2, true, true), Backend.NATIVE);
            Tensor x = rand(a, r, 1f, 2, 33, 32);
            Tensor want = Tensor.allocate(a, 2, 33, 32);
            layer.forward(x, want, SdpaOptions.CAUSAL, layer.newWorkspace(a, 2, 33, 33));
            float[] expected = want.toArray();
            int threads = 4;
            java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newFixedThreadPool(threads);
            try {
                List<java.util.concurrent.Future<float[]>> results = new ArrayList<>();
                for (int t = 0; t < threads; t++) {
                    MhaWorkspace ws = layer.newWorkspace(a, 2, 33, 33);
                    Tensor out = Tensor.allocate(a, 2, 33, 32);
                    results.add(pool.submit(() -> {
                        for (int i = 0; i < 20; i++) {
                            layer.forward(x, out, SdpaOptions.CAUSAL, ws);
                        }
                        return out.toArray();
                    }));
                }
                for (java.util.concurrent.Future<float[]> f : results) {
                    assertArrayEquals(expected, f.get());
                }
            } finally {
                pool.shutdown();
            }
        }
    }

    @Test
    void badArgumentsNameTheTensor() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(3);
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 8, 2, 2, false, true), Backend.NATIVE);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 4, 4);
            Tensor out = Tensor.allocate(a, 1, 4, 8);
            IllegalArgumentException e1 = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(Tensor.allocate(a, 1, 4, 6), out, SdpaOptions.DEFAULT, ws));
            assertTrue(e1.getMessage().startsWith("x [1, 4, 6]: expected [B, L, 8]"), e1.getMessage());
            IllegalArgumentException e2 = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(Tensor.allocate(a, 1, 4, 8), Tensor.allocate(a, 2, 4, 8), out,
                            SdpaOptions.DEFAULT, ws));
            assertTrue(e2.getMessage().startsWith("kv [2, 4, 8]: expected [1, Lkv, 8]"), e2.getMessage());
            IllegalArgumentException e3 = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(Tensor.allocate(a, 1, 9, 8), Tensor.allocate(a, 1, 9, 8), SdpaOptions.DEFAULT,
                            ws));
            assertTrue(e3.getMessage().contains("workspace") && e3.getMessage().contains("x [1, 9, 8]"),
                    e3.getMessage());
            IllegalArgumentException e4 = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(Tensor.allocate(a, 1, 4, 8), out,
                            SdpaOptions.DEFAULT.withMask(Mask.allowed(Tensor.allocate(a, 1, 1, 1, 5))), ws));
            assertTrue(e4.getMessage().startsWith("mask [1, 1, 1, 5]"), e4.getMessage());
            IllegalArgumentException e5 = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(Tensor.allocate(a, 1, 4, 8), Tensor.allocate(a, 1, 8, 4).transpose(1, 2),
                            SdpaOptions.DEFAULT, ws));
            assertTrue(e5.getMessage().contains("unit stride"), e5.getMessage());
        }
    }

    /**
     * A workspace whose projection scratch fits the call (the same B·L) but whose score tiles do not (made for
     * shorter sequences) is refused naming the caller's x and the sizes to make it with, before anything is
     * projected. It was refused by the attention, after the projections, naming the layer's own internal q and k
     * ('q [1, 2, 600, 4], k [1, 1, 600, 4]'), tensors the caller never passed (a review).
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void aWorkspaceWithTooFewScoreTilesNamesTheCallersTensors(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(4);
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 8, 2, 1, true, false), backend);
            MhaWorkspace ws = layer.newWorkspace(a, 300, 2, 2);
            Tensor x = rand(a, r, 1f, 1, 600, 8);
            Tensor out = Tensor.allocate(a, 1, 600, 8).fill(7f);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, out, SdpaOptions.CAUSAL, ws));
            assertTrue(e.getMessage().contains("x [1, 600, 8]") && e.getMessage().contains("newWorkspace(arena, 1,"
                    + " 600, 600)"), e.getMessage());
            Tensor kv = rand(a, r, 1f, 1, 600, 8);
            IllegalArgumentException c = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x.slice(1, 0, 2), kv, out.slice(1, 0, 2), SdpaOptions.DEFAULT, ws));
            assertTrue(c.getMessage().contains("x [1, 2, 8], kv [1, 600, 8]") && c.getMessage().contains(
                    "newWorkspace(arena, 1, 2, 600)"), c.getMessage());
            for (float f : out.toArray()) {
                assertEquals(7f, f);
            }
        }
    }

    @Test
    void decodeRefusesAnOutputInsideTheCacheAndKeepsTheCache() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(5);
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 8, 2, 2, false, true), Backend.JAVA);
            KvCache cache = KvCache.allocate(a, 2, 6, 4);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 1, cache.capacity());
            Tensor x = Tensor.allocate(a, 1, 1, 8).fill(0.5f);
            layer.decode(x, cache, Tensor.allocate(a, 1, 1, 8), ws);
            float[] keys = cache.keys().toArray();
            // out over the cached keys' memory: writing it would change what every later step attends to
            Tensor out = Tensor.wrap(cache.keys().segment(), 1, 1, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(x, cache, out, ws));
            assertTrue(e.getMessage().startsWith("out [1, 1, 8] shares memory with"), e.getMessage());
            assertEquals(1, cache.length(), "nothing appended");
            assertArrayEquals(keys, cache.keys().toArray(), "the cache is unchanged");
        }
    }

    /**
     * An arena of one's own that hands out slices of {@code all} from {@code next[0]} on (aligned), as a bump
     * allocator reset between requests does: setting {@code next[0]} back hands the same memory out again.
     */
    static Arena bump(MemorySegment all, long[] next) {
        return new Arena() {
            @Override
            public MemorySegment allocate(long byteSize, long byteAlignment) {
                long at = (next[0] + byteAlignment - 1) / byteAlignment * byteAlignment;
                next[0] = at + byteSize;
                return all.asSlice(at, byteSize);
            }

            @Override
            public MemorySegment.Scope scope() {
                return all.scope();
            }

            @Override
            public void close() {
            }
        };
    }

    /**
     * A workspace or KV cache handed out over the layer's own weights (which the layer reads in place) is refused
     * when it is made: the projections and the attention write the workspace, and decode writes the cache, so
     * every later call, on every thread, would run on overwritten weights. Made past the weights, both run and
     * match the reference.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void aWorkspaceOrCacheOverTheWeightsIsRefused(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(10);
            int e = 32;
            MemorySegment all = a.allocate(1 << 20, 64);
            long[] next = {0};
            Arena bump = bump(all, next);
            MhaWeights w = weights(bump, r, e, 4, 2, true, false);
            long end = next[0];
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            float[] wq = w.wq().toArray();
            // the first weight made, and one in the middle of them
            for (long at : new long[] {0, end / 2 / 64 * 64}) {
                next[0] = at;
                IllegalArgumentException ew = assertThrows(IllegalArgumentException.class,
                        () -> layer.newWorkspace(bump, 1, 8, 8));
                assertTrue(ew.getMessage().contains("shares memory with the layer's weight"), ew.getMessage());
                next[0] = at;
                IllegalArgumentException ec = assertThrows(IllegalArgumentException.class,
                        () -> layer.newCache(bump, 8));
                assertTrue(ec.getMessage().contains("shares memory with the layer's weight"), ec.getMessage());
            }
            assertArrayEquals(wq, w.wq().toArray(), "the weights are unchanged");
            next[0] = end;
            MhaWorkspace ws = layer.newWorkspace(bump, 1, 8, 8);
            KvCache cache = layer.newCache(bump, 8);
            Tensor x = rand(a, r, 1f, 1, 8, e);
            Tensor ref = Tensor.allocate(a, 1, 8, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            Tensor out = Tensor.allocate(a, 1, 8, e);
            layer.decode(x, cache, out, ws);
            assertWithinFloat32(ref.toArray(), out.toArray(), e, 8, backend + " decode past the weights");
        }
    }

    /**
     * The weights must also be safe from a KV cache or workspace the layer did not make: a cache from
     * {@link KvCache#allocate} over the weights (decode stores its rows there), and another layer's workspace
     * (workspaces serve several layers) over this layer's weights. Both ran and silently overwrote W_O, the first
     * weight allocated, for every later call; now each call is refused, naming the weight, with the weights, the
     * cache and out unchanged.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "REFERENCE"})
    void aCacheOrWorkspaceMadeElsewhereOverTheWeightsIsRefusedByTheCall(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(11);
            int e = 32;
            MemorySegment all = a.allocate(1 << 20, 64);
            long[] next = {0};
            Arena bump = bump(all, next);
            MhaWeights w = weights(bump, r, e, 4, 2, true, false);
            long end = next[0];
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            float[] wo = w.wo().toArray();
            Tensor x = rand(a, r, 1f, 1, 8, e);
            Tensor out = Tensor.allocate(a, 1, 8, e).fill(7f);

            // a cache of the right shape from KvCache.allocate, handed out over the weights
            next[0] = end;
            MhaWorkspace ws = layer.newWorkspace(bump, 1, 8, 8);
            next[0] = 0;
            KvCache cache = KvCache.allocate(bump, 2, 8, 8);
            IllegalArgumentException ec = assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(x, cache, out, ws));
            assertTrue(ec.getMessage().contains("shares memory with the layer's weight W_O [32, 32]"), ec.getMessage());
            assertArrayEquals(wo, w.wo().toArray(), backend + ": decode wrote the cache over W_O");
            assertEquals(0, cache.length(), "nothing appended");
            assertTrue(java.util.Arrays.equals(out.toArray(), Tensor.allocate(a, 1, 8, e).fill(7f).toArray()),
                    "out untouched");

            if (backend == Backend.REFERENCE) {
                return; // forward on the reference ignores the workspace
            }
            // another layer's workspace (made past that layer's own weights) over this layer's weights
            MultiHeadAttention other = MultiHeadAttention.create(weights(a, r, e, 4, 2, true, false), backend);
            next[0] = 0;
            MhaWorkspace foreign = other.newWorkspace(bump, 1, 8, 8);
            IllegalArgumentException ew = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, out, SdpaOptions.CAUSAL, foreign));
            assertTrue(ew.getMessage().startsWith("the workspace shares memory with the layer's weight W_"), ew.getMessage());
            assertArrayEquals(wo, w.wo().toArray(), backend + ": forward wrote the workspace over W_O");

            // the same calls with cache and workspace past the weights run and match the reference
            next[0] = end;
            MhaWorkspace ok = other.newWorkspace(bump, 1, 8, 8);
            KvCache good = KvCache.allocate(bump, 2, 8, 8);
            Tensor ref = Tensor.allocate(a, 1, 8, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            layer.forward(x, out, SdpaOptions.CAUSAL, ok);
            assertWithinFloat32(ref.toArray(), out.toArray(), e, 8, backend + " forward");
            layer.decode(x, good, out, ok);
            assertWithinFloat32(ref.toArray(), out.toArray(), e, 8, backend + " decode");
        }
    }

    /**
     * An arena of the caller's own (a bump allocator reset between requests, say) can hand out the workspace's
     * memory again: x, kv, out or a KV cache inside the projection scratch or the attention's workspace is refused
     * before anything is written, naming it. out over the heads' output was written by the attention and then refused by sgemm's own check as
     * "sgemm: output c [8, 32] overlaps input a"; x over the projection output likewise, by name of an sgemm
     * operand. The same calls with the tensors elsewhere in the segment match the reference.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void tensorsInsideTheWorkspaceAreRefusedByName(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(8);
            int e = 32;
            MhaWeights w = weights(a, r, e, 4, 2, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            MemorySegment all = a.allocate(1 << 20, 64);
            long[] next = {0};
            Arena bump = bump(all, next);
            MhaWorkspace ws = layer.newWorkspace(bump, 1, 8, 8);
            long end = next[0];
            Tensor x = rand(a, r, 1f, 1, 8, e);
            Tensor ref = Tensor.allocate(a, 1, 8, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            // byte offsets into the workspace: its start (the projections [Q | K | V], 8 rows of E + 2·Hkv·Dh =
            // 64 floats) and the heads' output after them, which the output projection reads
            long headsOut = 8L * (e + 2 * 16) * Float.BYTES;
            // and the attention's own workspace, allocated last: its score tiles overwrote an x placed there
            // (the result still right, the caller's input not) and an out written before them
            long attention = end - ws.attention().byteSize();
            for (long at : new long[] {0, headsOut, attention}) {
                next[0] = at;
                Tensor out = Tensor.allocate(bump, 1, 8, e).fill(-7f);
                IllegalArgumentException eo = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(x, out, SdpaOptions.CAUSAL, ws));
                assertEquals("out [1, 8, 32] shares memory with the workspace", eo.getMessage());
                for (float v : out.toArray()) {
                    assertEquals(-7f, v, "a refused call wrote out");
                }
                next[0] = at;
                Tensor xin = Tensor.allocate(bump, 1, 8, e).copyFrom(x);
                Tensor out2 = Tensor.allocate(a, 1, 8, e);
                IllegalArgumentException ex = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(xin, out2, SdpaOptions.CAUSAL, ws));
                assertEquals("x [1, 8, 32] shares memory with the workspace", ex.getMessage());
                next[0] = at;
                Tensor kv = Tensor.allocate(bump, 1, 8, e).copyFrom(x);
                IllegalArgumentException ek = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(x, kv, out2, SdpaOptions.CAUSAL, ws));
                assertEquals("kv [1, 8, 32] shares memory with the workspace", ek.getMessage());
                next[0] = at;
                KvCache cache = layer.newCache(bump, 8);
                IllegalArgumentException ec = assertThrows(IllegalArgumentException.class,
                        () -> layer.decode(x.slice(1, 0, 1), cache, out2.slice(1, 0, 1), ws));
                assertTrue(ec.getMessage().endsWith("shares memory with the workspace"), ec.getMessage());
                assertEquals(0, cache.length(), "nothing appended");
            }
            // past the workspace: the same calls run and match the reference
            next[0] = end;
            Tensor out = Tensor.allocate(bump, 1, 8, e);
            layer.forward(x, out, SdpaOptions.CAUSAL, ws);
            assertWithinFloat32(ref.toArray(), out.toArray(), e, 8, backend + " out after the workspace");
            KvCache cache = layer.newCache(bump, 8);
            Tensor step = Tensor.allocate(bump, 1, 8, e);
            layer.decode(x, cache, step, ws);
            assertWithinFloat32(ref.toArray(), step.toArray(), e, 8, backend + " decode after the workspace");
        }
    }

    /**
     * The mask is a tensor of the call too: one inside the projection scratch was overwritten by the projections
     * before the attention read it, and the call returned a wrong result without a word (inside the heads' output
     * it was refused only by the attention's own check, as "out ... overlaps mask", after the projections ran).
     * Refused by name before anything is written, like x, kv and out; the same mask past the workspace gives the
     * reference's result.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void aMaskInsideTheWorkspaceIsRefusedByName(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(9);
            int e = 32;
            int l = 8;
            MhaWeights w = weights(a, r, e, 4, 2, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            MemorySegment all = a.allocate(1 << 20, 64);
            long[] next = {0};
            Arena bump = bump(all, next);
            MhaWorkspace ws = layer.newWorkspace(bump, 1, l, l);
            long end = next[0];
            Tensor x = rand(a, r, 1f, 1, l, e);
            // an additive [L, L] mask that hides every other key: a mask overwritten by projections changes the result
            float[] bias = new float[l * l];
            for (int i = 0; i < bias.length; i++) {
                bias[i] = i % 2 == 0 ? 0f : -1e4f;
            }
            Tensor ref = Tensor.allocate(a, 1, l, e);
            MhaTestSupport.referenceForward(w, x, null, ref,
                    SdpaOptions.DEFAULT.withMask(Mask.additive(Tensor.allocate(a, l, l).copyFrom(bias))));
            long headsOut = (long) l * (e + 2 * 16) * Float.BYTES;
            long attention = end - ws.attention().byteSize();
            for (long at : new long[] {0, headsOut, attention}) {
                next[0] = at;
                Tensor m = Tensor.allocate(bump, l, l).copyFrom(bias);
                Tensor out = Tensor.allocate(a, 1, l, e).fill(-7f);
                IllegalArgumentException ex = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(x, out, SdpaOptions.DEFAULT.withMask(Mask.additive(m)), ws),
                        "mask at byte " + at + " of the workspace");
                assertEquals("mask [8, 8] shares memory with the workspace", ex.getMessage());
                for (float v : out.toArray()) {
                    assertEquals(-7f, v, "a refused call wrote out");
                }
            }
            next[0] = end;
            Tensor m = Tensor.allocate(bump, l, l).copyFrom(bias);
            Tensor out = Tensor.allocate(a, 1, l, e);
            layer.forward(x, out, SdpaOptions.DEFAULT.withMask(Mask.additive(m)), ws);
            assertWithinFloat32(ref.toArray(), out.toArray(), e, l, backend + " mask after the workspace");
        }
    }

    @Test
    void sizesBeyondALongAreArgumentErrors() {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, new Random(6), 8, 2, 2, false, true),
                    Backend.JAVA);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.workspaceBytes(Long.MAX_VALUE / 2, 4, 4));
            assertTrue(e.getMessage().startsWith("workspace for batch=" + Long.MAX_VALUE / 2), e.getMessage());
            IllegalArgumentException c = assertThrows(IllegalArgumentException.class,
                    () -> KvCache.allocate(a, Integer.MAX_VALUE, Integer.MAX_VALUE, Integer.MAX_VALUE));
            assertTrue(c.getMessage().startsWith("KV cache [2147483647, 2147483647, 2147483647]"), c.getMessage());
        }
    }

    /**
     * A mask refused by forward speaks the layer's names: its scores are [B, H, L, Lkv] (x [B, L, E], kv [B, Lkv, E]).
     * The layer's check used sdpa's message, '[B, Hq, Lq, Lk]', names the layer's caller never meets (review).
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"JAVA", "REFERENCE"})
    void aMaskRefusedByForwardIsNamedInTheLayersTerms(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, new Random(8), 8, 2, 1, false, true),
                    backend);
            Tensor x = rand(a, new Random(9), 1f, 2, 3, 8);
            Tensor kv = rand(a, new Random(10), 1f, 2, 5, 8);
            Tensor out = Tensor.allocate(a, 2, 3, 8);
            MhaWorkspace ws = layer.newWorkspace(a, 2, 3, 5);
            SdpaOptions o = SdpaOptions.DEFAULT.withMask(Mask.allowed(Tensor.allocate(a, 3, 4).fill(1f)));
            IllegalArgumentException self = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, out, o, ws));
            assertEquals("mask [3, 4]: not broadcastable to [2, 2, 3, 3] = [B, H, L, Lkv] (aligned from the right,"
                    + " as in [Lkv], [L, Lkv], [H, L, Lkv] or [B, H, L, Lkv]; any size may be 1)",
                    self.getMessage());
            IllegalArgumentException cross = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, kv, out, o, ws));
            assertEquals("mask [3, 4]: not broadcastable to [2, 2, 3, 5] = [B, H, L, Lkv] (aligned from the right,"
                    + " as in [Lkv], [L, Lkv], [H, L, Lkv] or [B, H, L, Lkv]; any size may be 1)",
                    cross.getMessage());
            // nn.MultiheadAttention's 3-D attn_mask [B·H, L, Lkv]: the hint in the layer's terms
            Tensor torch = Tensor.allocate(a, 4, 3, 5);
            IllegalArgumentException t = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, kv, out, SdpaOptions.DEFAULT.withMask(Mask.additive(torch)), ws));
            assertTrue(t.getMessage().endsWith("; a [B·H, L, Lkv] mask (nn.MultiheadAttention's 3-D attn_mask) reads"
                    + " here as [H, L, Lkv]: reshape it to [2, 2, 3, 5] (Tensor.reshape)"), t.getMessage());
            layer.forward(x, kv, out, SdpaOptions.DEFAULT.withMask(Mask.additive(torch.reshape(2, 2, 3, 5))), ws);
            SdpaOptions rank5 = SdpaOptions.DEFAULT.withMask(Mask.additive(Tensor.allocate(a, 1, 2, 2, 3, 5)));
            IllegalArgumentException r = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, kv, out, rank5, ws));
            assertTrue(r.getMessage().startsWith("mask [1, 2, 2, 3, 5]: rank 5 is not broadcastable to [2, 2, 3, 5]"
                    + " = [B, H, L, Lkv]"), r.getMessage());
        }
    }

    /**
     * A call whose projection scratch needs more bytes than a long holds: the layer threw the JDK's bare
     * ArithmeticException ("long overflow", from Math.multiplyExact) naming nothing. Reached with views of
     * segments made large by reinterpret at addresses no arena hands out (never touched: the call is refused
     * before it reads or writes anything) and, for x and kv, a zero batch stride (one sequence broadcast).
     */
    @Test
    void scratchBeyondALongIsAnArgumentErrorNamingTheTensors() {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, new Random(7), 4, 1, 1, false, true),
                    Backend.JAVA);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 1, 1);
            long b = 1L << 29;
            long l = 1L << 29;
            // x [2^29, 2^29, 4]: one sequence for every batch entry; out [2^29, 2^29, 4] contiguous, 2^62 bytes.
            // The scratch B·L·(2E + 2·Hkv·Dh) = 2^62 floats fits a long, its bytes do not
            Tensor x = Tensor.view(MemorySegment.ofAddress(1L << 50).reinterpret(1L << 40), 0,
                    new long[] {b, l, 4}, new long[] {0, 4, 1});
            Tensor out = Tensor.view(MemorySegment.ofAddress(1L << 56).reinterpret(1L << 62), 0,
                    new long[] {b, l, 4}, new long[] {l * 4, 4, 1});
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, out, SdpaOptions.DEFAULT, ws));
            assertTrue(e.getMessage().startsWith("x [536870912, 536870912, 4] = [B, L, E]"), e.getMessage());
            assertTrue(e.getMessage().contains("more bytes than a long holds"), e.getMessage());
            // cross-attention: x [2^29, 1, 4], kv [2^29, 2^31 - 1, 4] (zero batch stride): B·Lkv·2·Hkv·Dh floats
            // overflow a long themselves
            Tensor xs = Tensor.view(MemorySegment.ofAddress(1L << 50).reinterpret(1L << 40), 0,
                    new long[] {b, 1, 4}, new long[] {4, 4, 1});
            Tensor kv = Tensor.view(MemorySegment.ofAddress(1L << 51).reinterpret(1L << 40), 0,
                    new long[] {b, Integer.MAX_VALUE, 4}, new long[] {0, 4, 1});
            Tensor outs = Tensor.view(MemorySegment.ofAddress(1L << 52).reinterpret(1L << 40), 0,
                    new long[] {b, 1, 4}, new long[] {4, 4, 1});
            IllegalArgumentException c = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(xs, kv, outs, SdpaOptions.DEFAULT, ws));
            assertTrue(c.getMessage().startsWith("x [536870912, 1, 4] = [B, L, E], kv [536870912, 2147483647, 4]"
                    + " = [B, Lkv, E]"), c.getMessage());
            assertTrue(c.getMessage().contains("more bytes than a long holds"), c.getMessage());
        }
    }

    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void oneRowViewsWithAnyStrideOnTheirSizeOneDimensions(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(11);
            MhaWeights w = weights(a, r, 8, 2, 2, true, true);
            float[] xv = new float[8];
            for (int i = 0; i < 8; i++) {
                xv[i] = r.nextFloat() - 0.5f;
            }
            Tensor x = Tensor.of(a, xv, 1, 1, 8);
            // the same row through strides no BLAS leading dimension can hold: they are never used
            long far = 1L << 40;
            Tensor xFar = Tensor.view(x.segment(), 0, new long[] {1, 1, 8}, new long[] {far, far, 1});
            Tensor outFar = Tensor.view(Tensor.allocate(a, 8).segment(), 0, new long[] {1, 1, 8},
                    new long[] {far, far, 1});
            Tensor want = Tensor.allocate(a, 1, 1, 8);
            MultiHeadAttention ref = MultiHeadAttention.create(w, Backend.REFERENCE);
            ref.forward(x, want, SdpaOptions.DEFAULT, ref.newWorkspace(a, 1, 1, 1));
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            layer.forward(xFar, outFar, SdpaOptions.DEFAULT, layer.newWorkspace(a, 1, 1, 1));
            MhaTestSupport.assertClose(want.toArray(), outFar.toArray(), 1e-5, 1e-5, backend.toString());
        }
    }

    /** {@code t}'s values in a new tensor one byte past a float boundary (same shape, dense). */
    private static Tensor odd(Arena a, Tensor t) {
        java.lang.foreign.MemorySegment raw = a.allocate(t.elementCount() * Float.BYTES + 8, 64);
        return Tensor.wrap(raw.asSlice(1, t.elementCount() * Float.BYTES), t.shape()).copyFrom(t.toArray());
    }

    /**
     * Floats at an address that is not a multiple of 4 (a mapped safetensors file may hold weights there; OpenBLAS
     * loads them aligned): the native layer refuses such an input or weight by name, before any product; AUTO
     * runs them on the Java kernels and matches the reference. They reached OpenBLAS's own check mid-call, with
     * a message naming an sgemm operand (a review).
     */
    @Test
    void floatsAtAnOddAddressAreRefusedByNameOrRunOnJava() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(17);
            int e = 32;
            MhaWeights w = weights(a, r, e, 4, 2, true, false);
            Tensor x = MhaTestSupport.rand(a, r, 1f, 1, 9, e);
            Tensor ref = Tensor.allocate(a, 1, 9, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);

            MultiHeadAttention nat = MultiHeadAttention.create(w, Backend.NATIVE);
            Tensor out = Tensor.allocate(a, 1, 9, e).fill(Float.NaN);
            IllegalArgumentException ex = assertThrows(IllegalArgumentException.class,
                    () -> nat.forward(odd(a, x), out, SdpaOptions.CAUSAL, nat.newWorkspace(a, 1, 9, 9)));
            assertTrue(ex.getMessage().startsWith("x [1, 9, 32]") && ex.getMessage().contains("multiple of 4"),
                    ex.getMessage());
            assertTrue(Float.isNaN(out.toArray()[0]), "a refused call wrote out");
            MhaWeights oddW = MhaWeights.of(4, odd(a, w.wq()), w.bq(), w.wk(), w.bk(), w.wv(), w.bv(), w.wo(),
                    w.bo());
            IllegalArgumentException weight = assertThrows(IllegalArgumentException.class,
                    () -> MultiHeadAttention.create(oddW, Backend.NATIVE));
            assertTrue(weight.getMessage().startsWith("W_Q [32, 32]") && weight.getMessage().contains("multiple of 4"),
                    weight.getMessage());

            MultiHeadAttention auto = MultiHeadAttention.create(oddW, Backend.AUTO);
            auto.forward(odd(a, x), out, SdpaOptions.CAUSAL, auto.newWorkspace(a, 1, 9, 9));
            assertWithinFloat32(ref.toArray(), out.toArray(), e, 9, "AUTO, odd x and wq");
        }
    }

    static Stream<Named<Backend>> projectingBackends() {
        return Stream.of(Backend.NATIVE, Backend.JAVA).map(b -> Named.of(b.cliName(), b));
    }

    /**
     * Biases may be any rank-1 views, e.g. a column of a {@code [n, 2]} tensor (stride 2): MhaWeights accepts them,
     * and the reference reads them by coordinates. Every other test gave contiguous biases, so adding
     * {@code bias[c]} at element {@code c} instead of {@code c · stride} passed them (mutation testing). Self-,
     * cross-attention and a decode step, separate and packed projections.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("projectingBackends")
    void biasesGivenAsStridedViews(Backend backend) {
        int e = 8;
        int h = 2;
        Random r = new Random(77);
        try (Arena a = Arena.ofConfined()) {
            Tensor x = rand(a, r, 1f, 1, 3, e);
            Tensor kv = rand(a, r, 1f, 1, 5, e);
            float s = (float) (1 / Math.sqrt(e));
            Tensor wo = rand(a, r, s, e, e);
            Tensor bo = rand(a, r, 0.5f, e, 2).select(1, 0);
            MhaWeights separate = MhaWeights.of(h, rand(a, r, s, e, e), rand(a, r, 0.5f, e, 2).select(1, 1),
                    rand(a, r, s, e, e), rand(a, r, 0.5f, e, 2).select(1, 0),
                    rand(a, r, s, e, e), rand(a, r, 0.5f, e, 3).select(1, 2), wo, bo);
            MhaWeights packed = MhaWeights.packed(h, rand(a, r, s, 3 * e, e),
                    rand(a, r, 0.5f, 3 * e, 2).select(1, 1), wo, bo);
            for (MhaWeights w : new MhaWeights[] {separate, packed}) {
                String what = backend + (w == packed ? " packed" : " separate");
                assertEquals(2, w.bq().stride(0), what);
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
                for (Tensor keys : new Tensor[] {null, kv}) {
                    Tensor out = Tensor.allocate(a, 1, 3, e);
                    Tensor ref = Tensor.allocate(a, 1, 3, e);
                    long lkv = keys == null ? 3 : 5;
                    layer.forward(x, keys, out, SdpaOptions.DEFAULT, layer.newWorkspace(a, 1, 3, lkv));
                    MhaTestSupport.referenceForward(w, x, keys, ref, SdpaOptions.DEFAULT);
                    assertClose(ref.toArray(), out.toArray(), 1e-5, 1e-5, what + (keys == null ? " self" : " cross"));
                }
                // decode: three tokens one at a time equal the last rows of a causal forward
                Tensor ref = Tensor.allocate(a, 1, 3, e);
                MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
                KvCache cache = layer.newCache(a, 3);
                MhaWorkspace ws = layer.newWorkspace(a, 1, 1, 3);
                for (int t = 0; t < 3; t++) {
                    Tensor out = Tensor.allocate(a, 1, 1, e);
                    layer.decode(x.slice(1, t, t + 1), cache, out, ws);
                    assertClose(ref.select(1, t).toArray(), out.toArray(), 1e-5, 1e-5, what + " decode step " + t);
                }
            }
        }
    }

    /**
     * One workspace serves cross-attention calls of one B and L but different key lengths: the cached head views
     * depend on Lkv too. A workspace that took only B and L into account attended the second call over the first
     * call's key count (mutation testing; no test changed Lkv alone on one workspace).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("projectingBackends")
    void crossAttentionWithAnotherKeyLengthOnOneWorkspace(Backend backend) {
        int e = 8;
        Random r = new Random(78);
        try (Arena a = Arena.ofConfined()) {
            MhaWeights w = weights(a, r, e, 2, 1, true, false);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            MhaWorkspace ws = layer.newWorkspace(a, 2, 3, 6);
            Tensor x = rand(a, r, 1f, 2, 3, e);
            for (int lkv : new int[] {6, 3, 5, 6}) {
                Tensor kv = rand(a, r, 1f, 2, lkv, e);
                Tensor out = Tensor.allocate(a, 2, 3, e);
                Tensor ref = Tensor.allocate(a, 2, 3, e);
                layer.forward(x, kv, out, SdpaOptions.DEFAULT, ws);
                MhaTestSupport.referenceForward(w, x, kv, ref, SdpaOptions.DEFAULT);
                assertClose(ref.toArray(), out.toArray(), 1e-5, 1e-5, backend + " Lkv=" + lkv);
            }
        }
    }

    /**
     * Rows of x that overlap (row stride E - 1) are refused naming x: the products take a leading dimension of at
     * least E, so they would read other rows than x's view. A bound one short ({@code stride < E - 1}) passed every
     * other test (mutation testing).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("projectingBackends")
    void inputRowsThatOverlapAreRefused(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(79);
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 8, 2, 2, false, false), backend);
            Tensor x = Tensor.view(rand(a, r, 1f, 24).segment(), 0, new long[] {1, 3, 8}, new long[] {24, 7, 1});
            Tensor out = Tensor.allocate(a, 1, 3, 8).fill(Float.NaN);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, out, SdpaOptions.DEFAULT, layer.newWorkspace(a, 1, 3, 3)));
            assertTrue(e.getMessage().startsWith("x [1, 3, 8] with strides [24, 7, 1]"), e.getMessage());
            for (float v : out.toArray()) {
                assertTrue(Float.isNaN(v), "out written before x was refused");
            }
        }
    }

    /**
     * A cache of another head dimension is refused naming the cache, before anything is projected or stored: a
     * check of Hkv alone let the step store rows of the layer's Dh into a cache laid out for another, and the
     * attention refused it after that, naming the layer's internal views (mutation testing).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("projectingBackends")
    void aCacheOfAnotherHeadDimensionIsRefused(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(80);
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 8, 2, 2, true, false), backend);
            KvCache cache = KvCache.allocate(a, 2, 4, 8);
            Tensor out = Tensor.allocate(a, 1, 1, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(rand(a, r, 1f, 1, 1, 8), cache, out, layer.newWorkspace(a, 1, 1, 4)));
            assertTrue(e.getMessage().startsWith("KV cache [2, 4, 8] holding 0 does not fit this layer"),
                    e.getMessage());
            assertEquals(0, cache.length());
        }
    }

    /**
     * An output whose batches overlap ({@code [2, 3, 8]} with strides {@code [8, 8, 1]}: batch 1 starts at row 1
     * of batch 0) is refused naming out before anything is written: two rows share memory, and only the last
     * write of each would remain. Only its row stride was checked by the tests (mutation testing dropped the
     * nesting check of the other dimension, unnoticed).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("projectingBackends")
    void anOutputWhoseBatchesOverlapIsRefused(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(81);
            MultiHeadAttention layer = MultiHeadAttention.create(weights(a, r, 8, 2, 2, false, false), backend);
            Tensor flat = Tensor.allocate(a, 32).fill(Float.NaN);
            Tensor out = Tensor.view(flat.segment(), 0, new long[] {2, 3, 8}, new long[] {8, 8, 1});
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(rand(a, r, 1f, 2, 3, 8), out, SdpaOptions.DEFAULT,
                            layer.newWorkspace(a, 2, 3, 3)));
            assertTrue(e.getMessage().startsWith("out [2, 3, 8] with strides [8, 8, 1]: two rows share memory"),
                    e.getMessage());
            for (float v : flat.toArray()) {
                assertTrue(Float.isNaN(v), "out written before it was refused");
            }
        }
    }

    /**
     * An out over one of the layer's weights or biases is refused naming both, by forward and by decode, and the
     * weight is left as it was: writing there would change the layer for every later call and every thread. No
     * test gave such an out (mutation testing: with the check removed nothing failed; the Java and native
     * products then refused it naming an internal operand, "sgemm: output c [4, 16] overlaps input b", and the
     * reference backend ran and wrote over W_O).
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void anOutputOverAWeightIsRefusedNamingIt(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(21);
            MhaWeights w = weights(a, r, 16, 4, 2, true, false);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            float[] wo = w.wo().toArray();
            float[] bo = w.bo().toArray();
            Tensor overWo = Tensor.wrap(w.wo().segment(), 1, 4, 16);
            IllegalArgumentException f = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(rand(a, r, 1f, 1, 4, 16), overWo, SdpaOptions.DEFAULT,
                            layer.newWorkspace(a, 1, 4, 4)));
            assertEquals("out [1, 4, 16] shares memory with W_O [16, 16]", f.getMessage());
            KvCache cache = layer.newCache(a, 4);
            Tensor overBo = Tensor.wrap(w.bo().segment(), 1, 1, 16);
            IllegalArgumentException d = assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(rand(a, r, 1f, 1, 1, 16), cache, overBo, layer.newWorkspace(a, 1, 1, 4)));
            assertEquals("out [1, 1, 16] shares memory with b_O [16]", d.getMessage());
            assertEquals(0, cache.length(), "nothing appended");
            assertArrayEquals(wo, w.wo().toArray(), backend + ": W_O changed");
            assertArrayEquals(bo, w.bo().toArray(), backend + ": b_O changed");
        }
    }
}
