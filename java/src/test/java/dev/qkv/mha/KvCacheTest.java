package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertClose;
import static dev.qkv.mha.MhaTestSupport.assertWithinFloat32;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class KvCacheTest {

    /**
     * Prefill of a prompt, then tokens one by one, then a chunk: every output row equals the same row of one
     * causal pass over the whole sequence (computed by the reference backend, so this also checks the cache
     * layout against an independent implementation).
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void prefillThenDecodeEqualsOneCausalPass(Backend backend) {
        long seed = 21;
        int e = 32;
        int h = 8;
        int hkv = 2;
        int total = 23;
        int[] steps = {7, 1, 1, 1, 1, 4, 1, 5, 2};
        assertEquals(total, Arrays.stream(steps).sum());
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, h, hkv, true, backend != Backend.JAVA);
            Tensor x = rand(a, r, 1f, 1, total, e);
            Tensor full = Tensor.allocate(a, 1, total, e);
            MhaTestSupport.referenceForward(w, x, null, full, SdpaOptions.CAUSAL);

            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            KvCache cache = layer.newCache(a, 32);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 7, cache.capacity());
            Tensor out = Tensor.allocate(a, 1, total, e).fill(Float.NaN);
            int at = 0;
            for (int n : steps) {
                layer.decode(x.slice(1, at, at + n), cache, out.slice(1, at, at + n), ws);
                at += n;
                assertEquals(at, cache.length());
            }
            assertWithinFloat32(full.toArray(), out.toArray(), e, total,
                    backend + " seed=" + seed + " E=" + e + " H=" + h + " Hkv=" + hkv + " steps=" + Arrays.toString(steps));
            assertArrayEquals(new long[] {1, hkv, total, e / h}, cache.keys().shape());
        }
    }

    /**
     * Decode steps with a scale other than 1/√Dh (including 0, where every visible key weighs the same) equal one
     * causal pass of the reference backend with that scale; a step's options may differ from CAUSAL only there.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void decodeWithAScaleEqualsOneCausalPassWithThatScale(Backend backend) {
        int e = 32;
        int total = 12;
        int[] steps = {5, 1, 3, 1, 2};
        for (float scale : new float[] {1.7f, 0f, -0.3f}) {
            try (Arena a = Arena.ofConfined()) {
                Random r = new Random(22);
                MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 4, 2, true, backend == Backend.NATIVE);
                Tensor x = rand(a, r, 1f, 1, total, e);
                SdpaOptions options = SdpaOptions.CAUSAL.withScale(scale);
                Tensor full = Tensor.allocate(a, 1, total, e);
                MhaTestSupport.referenceForward(w, x, null, full, options);
                Tensor plain = Tensor.allocate(a, 1, total, e);
                MhaTestSupport.referenceForward(w, x, null, plain, SdpaOptions.CAUSAL);
                // the scale changes the result (else this test could not tell it was ignored)
                assertTrue(maxDiff(full.toArray(), plain.toArray()) > 1e-3, "scale " + scale + " changes nothing");

                MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
                KvCache cache = layer.newCache(a, 16);
                MhaWorkspace ws = layer.newWorkspace(a, 1, 5, cache.capacity());
                Tensor out = Tensor.allocate(a, 1, total, e).fill(Float.NaN);
                int at = 0;
                for (int n : steps) {
                    layer.decode(x.slice(1, at, at + n), cache, out.slice(1, at, at + n), options, ws);
                    at += n;
                }
                MhaTestSupport.assertWithinFloat32(full.toArray(), out.toArray(), e, total, backend + " scale=" + scale);
            }
        }
    }

    @Test
    void decodeRefusesOptionsThatAreNotCausalOrCarryAMaskBeforeAppending() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(23);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, 16, 2, 2, false, false);
            MultiHeadAttention layer = MultiHeadAttention.create(w, Backend.JAVA);
            KvCache cache = layer.newCache(a, 8);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 2, cache.capacity());
            Tensor x = rand(a, r, 1f, 1, 2, 16);
            Tensor out = Tensor.allocate(a, 1, 2, 16).fill(Float.NaN);
            Mask mask = Mask.allowed(Tensor.allocate(a, 2, 2).fill(1f));
            for (SdpaOptions bad : new SdpaOptions[] {SdpaOptions.DEFAULT, SdpaOptions.DEFAULT.withScale(0.5f),
                    SdpaOptions.CAUSAL.withMask(mask), SdpaOptions.DEFAULT.withMask(mask)}) {
                IllegalArgumentException ex = assertThrows(IllegalArgumentException.class,
                        () -> layer.decode(x, cache, out, bad, ws), bad.toString());
                assertTrue(ex.getMessage().startsWith("options: a decode step is causal"), ex.getMessage());
                assertEquals(0, cache.length(), "nothing appended");
                assertTrue(Float.isNaN(out.toArray()[0]), "out untouched");
            }
            layer.decode(x, cache, out, SdpaOptions.CAUSAL.withScale(0.5f), ws);
            assertEquals(2, cache.length());
        }
    }

    private static double maxDiff(float[] a, float[] b) {
        double m = 0;
        for (int i = 0; i < a.length; i++) {
            m = Math.max(m, Math.abs((double) a[i] - b[i]));
        }
        return m;
    }

    @Test
    void storeFlushesSubnormalsAndKeepsEverythingElse() {
        float[] xs = {Float.MIN_VALUE, -Float.MIN_VALUE, 1e-40f, -3e-39f, Math.nextDown(Float.MIN_NORMAL),
                Float.MIN_NORMAL, -Float.MIN_NORMAL, 0f, -0f, 1f, -2.5f, Float.MAX_VALUE, Float.NaN,
                Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, 7e-30f};
        try (Arena a = Arena.ofConfined()) {
            KvCache cache = KvCache.allocate(a, 2, 3, xs.length);
            Tensor src = Tensor.of(a, xs, xs.length);
            for (boolean keys : new boolean[] {true, false}) {
                cache.store(keys, 1, 2, src.segment(), src.offset(), xs.length);
            }
            cache.truncate(0);
            cache.advance(3);
            for (Tensor t : new Tensor[] {cache.keys(), cache.values()}) {
                for (int i = 0; i < xs.length; i++) {
                    float x = xs[i];
                    boolean subnormal = x != 0f && Math.abs(x) < Float.MIN_NORMAL;
                    // bit for bit: a flushed subnormal keeps its sign, and -0.0 stays -0.0
                    float want = subnormal ? Math.copySign(0f, x) : x;
                    float got = t.get(0, 1, 2, i);
                    assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(got),
                            "element " + i + ": stored " + x + ", read " + got);
                }
            }
        }
    }

    /** Values the projection makes subnormal reach the cache as zeros, and the step still matches the reference. */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void subnormalProjectionsAreCachedAsZeros(Backend backend) {
        long seed = 23;
        int e = 32;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 4, 2, false, true);
            // subnormal inputs (|x| < 1e-40, no bias): every projected key and value is subnormal or zero
            Tensor x = rand(a, r, 1e-40f, 1, 5, e);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            KvCache cache = layer.newCache(a, 8);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 5, cache.capacity());
            Tensor out = Tensor.allocate(a, 1, 5, e);
            layer.decode(x, cache, out, ws);
            for (float v : cache.values().toArray()) {
                assertEquals(0f, Math.abs(v), backend + " seed=" + seed + ": a subnormal value was cached");
            }
            Tensor ref = Tensor.allocate(a, 1, 5, e);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            // the exact outputs are below 1e-37: flushed or not, they agree far below any normal magnitude
            assertClose(ref.toArray(), out.toArray(), 1e-36, 0, backend + " seed=" + seed);
        }
    }

    /** A cache of no positions, heads or head size is refused, naming its shape (KvCache.allocate, newCache). */
    @Test
    void aCacheNeedsPositiveSizes() {
        try (Arena a = Arena.ofConfined()) {
            for (int[] s : new int[][] {{0, 4, 8}, {2, 0, 8}, {2, 4, 0}, {-1, 4, 8}}) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> KvCache.allocate(a, s[0], s[1], s[2]));
                assertTrue(e.getMessage().startsWith("KV cache [" + s[0] + ", " + s[1] + ", " + s[2] + "]"),
                        e.getMessage());
            }
            MultiHeadAttention layer = MultiHeadAttention.create(
                    MultiHeadAttentionTest.weights(a, new Random(3), 16, 4, 2, false, true), Backend.JAVA);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> layer.newCache(a, 0));
            assertTrue(e.getMessage().startsWith("KV cache [2, 0, 4]"), e.getMessage());
        }
    }

    @Test
    void capacityIsEnforcedAndResetStartsOver() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(5);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, 16, 4, 4, false, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, Backend.NATIVE);
            KvCache cache = layer.newCache(a, 6);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 4, 6);
            Tensor x = rand(a, r, 1f, 1, 4, 16);
            Tensor first = Tensor.allocate(a, 1, 4, 16);
            layer.decode(x, cache, first, ws);
            Tensor again = Tensor.allocate(a, 1, 4, 16);
            IllegalStateException full = assertThrows(IllegalStateException.class,
                    () -> layer.decode(x, cache, again, ws));
            assertTrue(full.getMessage().contains("needs 8 positions, capacity is 6"), full.getMessage());
            assertEquals(4, cache.length(), "a refused append must leave the cache as it was");
            cache.reset();
            assertEquals(0, cache.length());
            layer.decode(x, cache, again, ws);
            assertArrayEquals(first.toArray(), again.toArray(), "same sequence after reset, same outputs");
        }
    }

    @Test
    void aCacheOfAnotherShapeIsRejected() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(6);
            MultiHeadAttention layer = MultiHeadAttention.create(
                    MultiHeadAttentionTest.weights(a, r, 16, 4, 2, false, true), Backend.NATIVE);
            KvCache other = KvCache.allocate(a, 4, 8, 4);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 1, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(Tensor.allocate(a, 1, 1, 16), other, Tensor.allocate(a, 1, 1, 16), ws));
            assertTrue(e.getMessage().contains("KV cache [4, 8, 4]") && e.getMessage().contains("Hkv=2"),
                    e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> KvCache.allocate(a, 2, 0, 4));
        }
    }

    /**
     * An arena of one's own may hand out memory a cache cannot be: shorter than asked, read-only, or on the heap.
     * Such a cache was accepted, and a decode step then stopped half way with the JDK's own exceptions (an
     * {@code IndexOutOfBoundsException} while storing a row past the end of a short segment, after projecting and
     * storing the rows before it). It is refused when made, with {@link IllegalArgumentException}, as
     * {@code Workspace.allocate} refuses such memory.
     */
    @Test
    void aCacheNeedsWritableOffHeapMemoryOfItsSize() {
        try (Arena a = Arena.ofConfined()) {
            for (String kind : new String[] {"short", "read-only", "heap"}) {
                Arena own = ownArena(a, (byteSize, byteAlignment) -> {
                    java.lang.foreign.MemorySegment s = a.allocate(byteSize, byteAlignment);
                    return switch (kind) {
                        case "short" -> s.asSlice(0, byteSize / 2);
                        case "read-only" -> s.asReadOnly();
                        default -> java.lang.foreign.MemorySegment.ofArray(new float[(int) (byteSize / 4)]);
                    };
                });
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> KvCache.allocate(own, 2, 8, 4), kind);
                assertTrue(e.getMessage().startsWith("KV cache [2, 8, 4]"), kind + ": " + e.getMessage());
            }
        }
    }

    /** What an arena of one's own hands out, given the size and alignment asked for. */
    private interface Allocator {
        java.lang.foreign.MemorySegment allocate(long byteSize, long byteAlignment);
    }

    /** An arena of one's own: its memory from {@code allocate}, its scope {@code backing}'s, nothing to close. */
    private static Arena ownArena(Arena backing, Allocator allocate) {
        return new Arena() {
            @Override
            public java.lang.foreign.MemorySegment allocate(long byteSize, long byteAlignment) {
                return allocate.allocate(byteSize, byteAlignment);
            }

            @Override
            public java.lang.foreign.MemorySegment.Scope scope() {
                return backing.scope();
            }

            @Override
            public void close() {
            }
        };
    }

    /**
     * An arena of one's own that hands out the same memory twice gave a cache whose K and V were one buffer: it was
     * accepted on every backend, each step's values overwrote its keys, and decoding went on with wrong outputs and
     * no error (found by an adversarial review). It is refused when made, as memory of the wrong kind is.
     */
    @Test
    void aCacheWhoseKeysAndValuesShareMemoryIsRefused() {
        try (Arena a = Arena.ofConfined()) {
            java.lang.foreign.MemorySegment block = a.allocate(1 << 12, Tensor.ALIGNMENT);
            for (long shift : new long[] {0, 64}) {
                int[] calls = {0};
                // the second allocation starts inside the first (at it, or one cache line on)
                Arena own = ownArena(a, (byteSize, byteAlignment) -> block.asSlice(calls[0]++ == 0 ? 0 : shift,
                        byteSize));
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> KvCache.allocate(own, 2, 8, 4), "shift " + shift);
                assertTrue(e.getMessage().startsWith("KV cache [2, 8, 4]"), e.getMessage());
                assertTrue(e.getMessage().contains("share memory"), e.getMessage());
            }
        }
    }

    /**
     * A workspace made for a short cache, met by a long one, is refused before the step projects anything or
     * writes to the cache: the position it would have appended stays as it was (zeros), the length too, and the
     * same step with a workspace for the cache's capacity then matches the reference's causal pass.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void aWorkspaceForAShorterCacheIsRefusedBeforeAnythingIsAppended(Backend backend) {
        long seed = 37;
        int e = 64;
        int prefix = 2000;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 4, 4, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            KvCache cache = layer.newCache(a, prefix + 8);
            MhaWorkspace big = layer.newWorkspace(a, 1, prefix, cache.capacity());
            Tensor seq = rand(a, r, 1f, 1, prefix + 1, e);
            layer.decode(seq.slice(1, 0, prefix), cache, Tensor.allocate(a, 1, prefix, e), big);

            MhaWorkspace small = layer.newWorkspace(a, 1, 1, 16);
            Tensor out = Tensor.allocate(a, 1, 1, e);
            IllegalArgumentException refused = assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(seq.slice(1, prefix, prefix + 1), cache, out, small));
            assertEquals(prefix, cache.length(), "a refused step leaves the length");
            for (Tensor t : new Tensor[] {cache.keysAt(prefix + 1), cache.valuesAt(prefix + 1)}) {
                for (float x : t.slice(2, prefix, prefix + 1).toArray()) {
                    assertEquals(0, Float.floatToRawIntBits(x), backend + ": a refused step wrote to the cache");
                }
            }
            assertTrue(refused.getMessage().contains("workspace of ") && refused.getMessage().contains("holding "
                    + prefix), refused.getMessage());

            layer.decode(seq.slice(1, prefix, prefix + 1), cache, out, layer.newWorkspace(a, 1, 1, cache.capacity()));
            Tensor full = Tensor.allocate(a, 1, prefix + 1, e);
            MhaTestSupport.referenceForward(w, seq, null, full, SdpaOptions.CAUSAL);
            assertWithinFloat32(full.slice(1, prefix, prefix + 1).toArray(), out.toArray(), e, prefix + 1, backend + " seed=" + seed);
        }
    }

    /**
     * With grouped kv heads a workspace smaller than newWorkspace's bound can still do: the attention then runs
     * one head per task instead of a group's rows together. Such a step runs (it was refused by a check that
     * planned for the grouped layout), and equals the same step with a workspace for the whole cache.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void aSmallerWorkspaceThatSufficesStillRuns(Backend backend) {
        long seed = 43;
        int e = 512;
        int prefix = 2047;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 8, 2, true, true);
            for (int threads = 1; threads <= 2; threads++) {
                MultiHeadAttention layer = MultiHeadAttention.create(w, backend, threads);
                KvCache cache = layer.newCache(a, prefix + 1);
                MhaWorkspace full = layer.newWorkspace(a, 1, 1, cache.capacity());
                Tensor seq = rand(a, r, 1f, 1, prefix + 1, e);
                layer.decode(seq.slice(1, 0, prefix), cache, Tensor.allocate(a, 1, prefix, e),
                        layer.newWorkspace(a, 1, prefix, cache.capacity()));
                Tensor want = Tensor.allocate(a, 1, 1, e);
                layer.decode(seq.slice(1, prefix, prefix + 1), cache, want, full);
                cache.truncate(prefix);

                MhaWorkspace small = layer.newWorkspace(a, 1, 1, 1100);
                assertTrue(small.attention().byteSize() < full.attention().byteSize());
                Tensor got = Tensor.allocate(a, 1, 1, e);
                layer.decode(seq.slice(1, prefix, prefix + 1), cache, got, small);
                assertEquals(prefix + 1, cache.length());
                assertWithinFloat32(want.toArray(), got.toArray(), e, prefix + 1,
                        backend + " threads=" + threads + " seed=" + seed);
            }
        }
    }

    /**
     * Truncating to a prefix and decoding the next token again gives the same output as the first time (the
     * step depends only on the prefix), and equals the reference's causal pass; truncate refuses lengths outside
     * 0..length and leaves the cache as it was.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void truncateRerunsAStepFromTheSamePrefix(Backend backend) {
        long seed = 31;
        int e = 16;
        int prefix = 9;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(seed);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 4, 2, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            KvCache cache = layer.newCache(a, 12);
            MhaWorkspace ws = layer.newWorkspace(a, 1, prefix, 12);
            Tensor seq = rand(a, r, 1f, 1, prefix + 2, e);
            layer.decode(seq.slice(1, 0, prefix), cache, Tensor.allocate(a, 1, prefix, e), ws);
            Tensor first = Tensor.allocate(a, 1, 1, e);
            layer.decode(seq.slice(1, prefix, prefix + 1), cache, first, ws);
            // a different token at position `prefix`, then back to the prefix and the original token
            layer.decode(seq.slice(1, prefix + 1, prefix + 2), cache, Tensor.allocate(a, 1, 1, e), ws);
            cache.truncate(prefix);
            assertEquals(prefix, cache.length());
            assertArrayEquals(new long[] {1, 2, prefix, e / 4}, cache.keys().shape());
            Tensor again = Tensor.allocate(a, 1, 1, e);
            layer.decode(seq.slice(1, prefix, prefix + 1), cache, again, ws);
            assertArrayEquals(first.toArray(), again.toArray(), backend + " seed=" + seed + ": same prefix, same step");

            Tensor full = Tensor.allocate(a, 1, prefix + 1, e);
            MhaTestSupport.referenceForward(w, seq.slice(1, 0, prefix + 1), null, full, SdpaOptions.CAUSAL);
            assertWithinFloat32(full.slice(1, prefix, prefix + 1).toArray(), again.toArray(), e, prefix + 1, backend + " seed=" + seed);

            IllegalArgumentException tooLong = assertThrows(IllegalArgumentException.class,
                    () -> cache.truncate(prefix + 2));
            assertTrue(tooLong.getMessage().contains("cannot truncate to " + (prefix + 2)), tooLong.getMessage());
            assertThrows(IllegalArgumentException.class, () -> cache.truncate(-1));
            assertEquals(prefix + 1, cache.length(), "a refused truncate leaves the cache as it was");
            cache.truncate(0);
            assertEquals(0, cache.length());
        }
    }

    /**
     * A decode step holds the cache from before it reads the length until after it advances it; a reset or
     * truncate from another thread in between made the step store its rows after the old length and then count
     * them from the new one (a chunk decoded after one token, reset meanwhile: length 256, position 0 the token's
     * row). Held here as decode holds it; reset and truncate must be refused and change nothing.
     */
    @Test
    void resetAndTruncateAreRefusedWhileADecodeStepHoldsTheCache() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(5);
            MultiHeadAttention layer = MultiHeadAttention.create(
                    MultiHeadAttentionTest.weights(a, r, 16, 4, 2, false, false), Backend.JAVA);
            KvCache cache = layer.newCache(a, 8);
            layer.decode(rand(a, r, 1f, 1, 3, 16), cache, Tensor.allocate(a, 1, 3, 16),
                    layer.newWorkspace(a, 1, 3, 8));
            assertTrue(cache.acquire(), "no step holds the cache");
            try {
                IllegalStateException reset = assertThrows(IllegalStateException.class, cache::reset);
                assertTrue(reset.getMessage().contains("in use by another call"), reset.getMessage());
                IllegalStateException truncate = assertThrows(IllegalStateException.class, () -> cache.truncate(1));
                assertTrue(truncate.getMessage().contains("in use by another call"), truncate.getMessage());
                assertEquals(3, cache.length(), "a refused reset or truncate changes nothing");
            } finally {
                cache.release();
            }
            cache.truncate(1);
            assertEquals(1, cache.length());
            cache.reset();
            assertEquals(0, cache.length());
            assertTrue(cache.acquire(), "reset and truncate give the cache back");
            cache.release();
        }
    }

    /**
     * keys() and values() fill the cache's table of views (grown by copying two arrays) that a decode step reads
     * too: called from another thread during a step, they raced the step's own lookups, and the step failed with
     * the JDK's {@code ArrayIndexOutOfBoundsException} ("Index 1 out of bounds for length 0": the step saw the
     * other thread's grown key table and the old value table) after storing its rows (a reviewer's harness: 4 of
     * 1646 caches of 256 one-token steps, a second thread calling keys() and values() in a loop). Held as decode
     * holds it, they must be refused, as reset and truncate are, and give the views once it is released.
     */
    @Test
    void keysAndValuesAreRefusedWhileADecodeStepHoldsTheCache() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(6);
            MultiHeadAttention layer = MultiHeadAttention.create(
                    MultiHeadAttentionTest.weights(a, r, 16, 4, 2, false, false), Backend.JAVA);
            KvCache cache = layer.newCache(a, 8);
            layer.decode(rand(a, r, 1f, 1, 3, 16), cache, Tensor.allocate(a, 1, 3, 16),
                    layer.newWorkspace(a, 1, 3, 8));
            assertTrue(cache.acquire(), "no step holds the cache");
            try {
                IllegalStateException keys = assertThrows(IllegalStateException.class, cache::keys);
                assertTrue(keys.getMessage().contains("KV cache [2, 8, 4] holding 3")
                        && keys.getMessage().contains("in use by another call"), keys.getMessage());
                IllegalStateException values = assertThrows(IllegalStateException.class, cache::values);
                assertTrue(values.getMessage().contains("in use by another call"), values.getMessage());
            } finally {
                cache.release();
            }
            assertArrayEquals(new long[] {1, 2, 3, 4}, cache.keys().shape());
            assertArrayEquals(new long[] {1, 2, 3, 4}, cache.values().shape());
            assertTrue(cache.acquire(), "keys and values give the cache back");
            cache.release();
        }
    }

    /**
     * keys() and values() as their javadoc defines them: row t of x·W_Kᵀ + b_K (x·W_Vᵀ + b_V) for kv head g at
     * columns g·Dh, computed here in double; views of the cache's memory that keep their length and show what
     * later steps store, also past a truncate.
     */
    @Test
    void keysAndValuesAreLiveViewsOfTheProjectedRows() {
        int e = 16;
        int h = 4;
        int hkv = 2;
        int dh = e / h;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(21);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, h, hkv, true, false);
            MultiHeadAttention layer = MultiHeadAttention.create(w, Backend.JAVA);
            KvCache cache = layer.newCache(a, 8);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 3, 8);
            Tensor x = rand(a, r, 1f, 1, 3, e);
            layer.decode(x, cache, Tensor.allocate(a, 1, 3, e), ws);
            Tensor k = cache.keys();
            Tensor v = cache.values();
            assertArrayEquals(new long[] {1, hkv, 3, dh}, k.shape());
            assertArrayEquals(new long[] {1, hkv, 3, dh}, v.shape());
            for (int g = 0; g < hkv; g++) {
                for (int t = 0; t < 3; t++) {
                    for (int d = 0; d < dh; d++) {
                        int row = g * dh + d;
                        double sk = w.bk().get(row);
                        double sv = w.bv().get(row);
                        for (int i = 0; i < e; i++) {
                            sk += (double) x.get(0, t, i) * w.wk().get(row, i);
                            sv += (double) x.get(0, t, i) * w.wv().get(row, i);
                        }
                        assertEquals(sk, k.get(0, g, t, d), 1e-5, "k g=" + g + " t=" + t + " d=" + d);
                        assertEquals(sv, v.get(0, g, t, d), 1e-5, "v g=" + g + " t=" + t + " d=" + d);
                    }
                }
            }
            // truncate to 1 and store another token at position 1: the old view keeps length 3 and shows it
            cache.truncate(1);
            assertArrayEquals(new long[] {1, hkv, 1, dh}, cache.keys().shape());
            Tensor y = rand(a, r, 1f, 1, 1, e);
            layer.decode(y, cache, Tensor.allocate(a, 1, 1, e), ws);
            assertArrayEquals(new long[] {1, hkv, 3, dh}, k.shape());
            for (int g = 0; g < hkv; g++) {
                for (int d = 0; d < dh; d++) {
                    assertEquals(cache.keys().get(0, g, 1, d), k.get(0, g, 1, d));
                    assertEquals(cache.values().get(0, g, 1, d), v.get(0, g, 1, d));
                }
            }
        }
    }
}
