package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.Consumer;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Failure atomicity of the layer: after every refused forward or decode, on every backend, the output is untouched,
 * the workspace and cache are free again, the cache keeps its length and its cached rows, and the next call gives
 * the reference's result.
 */
class FailureRecoveryTest {
    private static final int H = 4;
    private static final int HKV = 2;
    private static final int DH = 8;
    private static final int E = H * DH;
    private static final int CAP = 12;

    private static Tensor nan(Arena a, long... shape) {
        return Tensor.allocate(a, shape).fill(Float.NaN);
    }

    private static void allNaN(Tensor out, String what) {
        for (float x : out.toArray()) {
            assertTrue(Float.isNaN(x), what + ": out was written by a refused call");
        }
    }

    /** Runs {@code call}, which must throw; returns what it threw. */
    private static Throwable refused(Runnable call, String what) {
        try {
            call.run();
        } catch (RuntimeException | Error e) {
            return e;
        }
        fail(what + ": not refused");
        return null;
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aRefusedForwardLeavesEverythingAsItWas(Backend backend) {
        try (Arena a = Arena.ofShared()) {
            Arena closed = Arena.ofShared();
            Random r = new Random(11);
            MhaWeights w = weights(a, r);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            Tensor x = MhaTestSupport.rand(a, r, 1f, 2, 6, E);
            Tensor kv = MhaTestSupport.rand(a, r, 1f, 2, 5, E);
            MhaWorkspace ws = layer.newWorkspace(a, 2, 6, 6);
            float[] want;
            Tensor ref = Tensor.allocate(a, 2, 6, E);
            MhaTestSupport.referenceForward(w, x, null, ref, SdpaOptions.CAUSAL);
            want = ref.toArray();
            Tensor refCross = Tensor.allocate(a, 2, 6, E);
            MhaTestSupport.referenceForward(w, x, kv, refCross, SdpaOptions.DEFAULT);
            float[] wantCross = refCross.toArray();

            Tensor closedX = Tensor.allocate(closed, 2, 6, E);
            closed.close();
            MhaWorkspace small = layer.newWorkspace(a, 1, 6, 6);
            Tensor badMask = Tensor.allocate(a, 3, 6).fill(1f);
            Tensor ro = Tensor.wrap(Tensor.allocate(a, 2, 6, E).segment().asReadOnly(), 2, 6, E);
            List<String> names = new ArrayList<>();
            List<Consumer<Tensor>> calls = new ArrayList<>();
            names.add("x of another E");
            calls.add(out -> layer.forward(Tensor.allocate(a, 2, 6, E + 1), out, SdpaOptions.CAUSAL, ws));
            names.add("kv of another batch");
            calls.add(out -> layer.forward(x, Tensor.allocate(a, 1, 5, E), out, SdpaOptions.DEFAULT, ws));
            names.add("a mask that does not broadcast");
            calls.add(out -> layer.forward(x, out, SdpaOptions.DEFAULT.withMask(Mask.allowed(badMask)), ws));
            names.add("a mask that does not broadcast, cross");
            calls.add(out -> layer.forward(x, kv, out, SdpaOptions.DEFAULT.withMask(Mask.additive(badMask)), ws));
            names.add("x of a closed arena");
            calls.add(out -> layer.forward(closedX, out, SdpaOptions.CAUSAL, ws));
            names.add("a workspace too small");
            calls.add(out -> layer.forward(x, out, SdpaOptions.CAUSAL, small));
            names.add("a workspace in use");
            calls.add(out -> {
                assertTrue(ws.acquire());
                try {
                    layer.forward(x, out, SdpaOptions.CAUSAL, ws);
                } finally {
                    ws.release();
                }
            });
            names.add("null options");
            calls.add(out -> layer.forward(x, out, null, ws));
            names.add("out over a weight");
            calls.add(out -> layer.forward(x, w.wo().reshape(2, (E * E) / (2 * E), E).slice(1, 0, 6), SdpaOptions.CAUSAL, ws));
            names.add("read-only out");
            calls.add(out -> layer.forward(x, ro, SdpaOptions.CAUSAL, ws));
            for (int i = 0; i < names.size(); i++) {
                String what = backend + ", " + names.get(i);
                Tensor out = nan(a, 2, 6, E);
                float[] wo = w.wo().toArray();
                Consumer<Tensor> call = calls.get(i);
                refused(() -> call.accept(out), what);
                allNaN(out, what);
                assertArrayEquals(wo, w.wo().toArray(), what + ": a weight changed");
                // the workspace is free, and the next call is right
                assertTrue(ws.acquire(), what + ": the workspace stayed in use");
                ws.release();
                Tensor good = nan(a, 2, 6, E);
                layer.forward(x, good, SdpaOptions.CAUSAL, ws);
                MhaTestSupport.assertClose(want, good.toArray(), 1e-4, 1e-4, what + ", the next call");
                Tensor cross = nan(a, 2, 6, E);
                layer.forward(x, kv, cross, SdpaOptions.DEFAULT, ws);
                MhaTestSupport.assertClose(wantCross, cross.toArray(), 1e-4, 1e-4, what + ", the next cross call");
            }
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aRefusedDecodeLeavesEverythingAsItWas(Backend backend) {
        try (Arena a = Arena.ofShared()) {
            Arena closed = Arena.ofShared();
            Random r = new Random(12);
            MhaWeights w = weights(a, r);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            Tensor seq = MhaTestSupport.rand(a, r, 1f, 1, 8, E);
            Tensor ref = Tensor.allocate(a, 1, 8, E);
            MhaTestSupport.referenceForward(w, seq, null, ref, SdpaOptions.CAUSAL);
            float[] want = ref.toArray();
            KvCache cache = layer.newCache(a, CAP);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 4, CAP);
            Tensor prefillOut = nan(a, 1, 4, E);
            layer.decode(seq.slice(1, 0, 4), cache, prefillOut, ws);
            float[] keys = cache.keys().toArray();
            float[] values = cache.values().toArray();
            Tensor x = seq.slice(1, 4, 5);
            Tensor closedX = Tensor.allocate(closed, 1, 1, E);
            closed.close();
            MhaWorkspace small = layer.newWorkspace(a, 1, 1, 1);
            KvCache other = KvCache.allocate(a, HKV + 1, CAP, DH);
            List<String> names = new ArrayList<>();
            List<Consumer<Tensor>> calls = new ArrayList<>();
            names.add("not causal");
            calls.add(out -> layer.decode(x, cache, out, SdpaOptions.DEFAULT, ws));
            names.add("past the capacity");
            calls.add(out -> layer.decode(Tensor.allocate(a, 1, CAP, E), cache, nan(a, 1, CAP, E), ws));
            names.add("x of another E");
            calls.add(out -> layer.decode(Tensor.allocate(a, 1, 1, E + 1), cache, out, ws));
            names.add("x of a closed arena");
            calls.add(out -> layer.decode(closedX, cache, out, ws));
            names.add("a workspace too small");
            calls.add(out -> layer.decode(seq.slice(1, 4, 6), cache, nan(a, 1, 2, E), small));
            names.add("a cache of another shape");
            calls.add(out -> layer.decode(x, other, out, ws));
            names.add("out inside the cache");
            calls.add(out -> layer.decode(x, cache, Tensor.view(cache.k(), 0, new long[] {1, 1, E}, new long[] {E, E, 1}), ws));
            names.add("a workspace in use");
            calls.add(out -> {
                assertTrue(ws.acquire());
                try {
                    layer.decode(x, cache, out, ws);
                } finally {
                    ws.release();
                }
            });
            names.add("a cache in use");
            calls.add(out -> {
                assertTrue(cache.acquire());
                try {
                    layer.decode(x, cache, out, ws);
                } finally {
                    cache.release();
                }
            });
            for (int i = 0; i < names.size(); i++) {
                String what = backend + ", " + names.get(i);
                Tensor out = nan(a, 1, 1, E);
                Consumer<Tensor> call = calls.get(i);
                refused(() -> call.accept(out), what);
                allNaN(out, what);
                assertEquals(4, cache.length(), what + ": the cache's length changed");
                assertArrayEquals(keys, cache.keys().toArray(), what + ": cached keys changed");
                assertArrayEquals(values, cache.values().toArray(), what + ": cached values changed");
                assertTrue(ws.acquire(), what + ": the workspace stayed in use");
                ws.release();
                assertTrue(cache.acquire(), what + ": the cache stayed in use");
                cache.release();
                Tensor good = nan(a, 1, 1, E);
                layer.decode(x, cache, good, ws);
                float[] wantRow = java.util.Arrays.copyOfRange(want, 4 * E, 5 * E);
                MhaTestSupport.assertClose(wantRow, good.toArray(), 1e-4, 1e-4, what + ", the next step");
                cache.truncate(4);
            }
        }
    }

    private static MhaWeights weights(Arena a, Random r) {
        float s = (float) (1 / Math.sqrt(E));
        int kvd = HKV * DH;
        return MhaWeights.of(H, MhaTestSupport.rand(a, r, s, E, E), MhaTestSupport.rand(a, r, 0.5f, E),
                MhaTestSupport.rand(a, r, s, kvd, E), MhaTestSupport.rand(a, r, 0.5f, kvd),
                MhaTestSupport.rand(a, r, s, kvd, E), MhaTestSupport.rand(a, r, 0.5f, kvd),
                MhaTestSupport.rand(a, r, s, E, E), MhaTestSupport.rand(a, r, 0.5f, E));
    }
}
