package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.mha.KvCache;
import dev.qkv.mha.MhaWeights;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.ref.WeakReference;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Memory a service hands to a call and then drops (tensors, workspaces and caches from {@link Arena#ofAuto}, freed
 * by the collector once unreachable) must not stay reachable from qkv after the call: not from the calling
 * thread's scratch, nor from the pool threads', which live as long as the process. Property: after the call and
 * once the caller drops its references, every segment it passed is collected (weak references cleared).
 */
class RetentionTest {

    /** Large enough that the pool's threads take tasks (over WorkerPool.MIN_PARALLEL_FLOPS), on every engine. */
    private static final long[] Q = {1, 4, 256, 64};

    @ParameterizedTest
    @EnumSource(Backend.class)
    void segmentsOfADroppedSdpaCallAreCollected(Backend backend) throws Exception {
        Attention att = Attention.create(backend);
        List<WeakReference<MemorySegment>> refs = new ArrayList<>();
        for (boolean withWorkspace : new boolean[] {false, true}) {
            sdpaAndDrop(att, withWorkspace, refs);
        }
        awaitCollected(backend + " sdpa", refs);
        // the instance is still in use: the dropped memory was the call's, not the instance's
        assertTrue(att.threads() >= 1);
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void segmentsOfADroppedLayerCallAreCollected(Backend backend) throws Exception {
        try (Arena weights = Arena.ofShared()) {
            Random r = new Random(5);
            MhaWeights w = MhaLayers.weights(weights, r, 4, 2, 32, true, false);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            List<WeakReference<MemorySegment>> refs = new ArrayList<>();
            forwardAndDrop(layer, r, refs);
            decodeAndDrop(layer, r, refs);
            awaitCollected(backend + " layer", refs);
        }
    }

    private static void sdpaAndDrop(Attention att, boolean withWorkspace, List<WeakReference<MemorySegment>> refs) {
        Arena auto = Arena.ofAuto();
        Random r = new Random(3);
        Tensor q = Fuzz.random(auto, r, Q);
        Tensor k = Fuzz.random(auto, r, 1, 2, 256, 64);
        Tensor v = Fuzz.random(auto, r, 1, 2, 256, 64);
        Tensor out = Tensor.allocate(auto, Q);
        for (Tensor t : new Tensor[] {q, k, v, out}) {
            refs.add(new WeakReference<>(t.segment()));
        }
        if (withWorkspace) {
            Workspace ws = Workspace.allocate(auto, att.workspaceBytes(q, k, v, out, SdpaOptions.CAUSAL));
            att.sdpa(q, k, v, out, SdpaOptions.CAUSAL, ws);
        } else {
            att.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
        }
    }

    private static void forwardAndDrop(MultiHeadAttention layer, Random r, List<WeakReference<MemorySegment>> refs) {
        Arena auto = Arena.ofAuto();
        Tensor x = MhaLayers.rand(auto, r, 1f, 2, 96, 128);
        Tensor out = Tensor.allocate(auto, 2, 96, 128);
        MhaWorkspace ws = layer.newWorkspace(auto, 2, 96, 96);
        refs.add(new WeakReference<>(x.segment()));
        refs.add(new WeakReference<>(out.segment()));
        layer.forward(x, out, SdpaOptions.CAUSAL, ws);
    }

    private static void decodeAndDrop(MultiHeadAttention layer, Random r, List<WeakReference<MemorySegment>> refs) {
        Arena auto = Arena.ofAuto();
        KvCache cache = layer.newCache(auto, 256);
        MhaWorkspace ws = layer.newWorkspace(auto, 1, 96, 256);
        Tensor x = MhaLayers.rand(auto, r, 1f, 1, 96, 128);
        Tensor out = Tensor.allocate(auto, 1, 96, 128);
        refs.add(new WeakReference<>(x.segment()));
        refs.add(new WeakReference<>(out.segment()));
        layer.decode(x, cache, out, ws);
        refs.add(new WeakReference<>(cache.keys().segment()));
    }

    private static void awaitCollected(String what, List<WeakReference<MemorySegment>> refs) throws Exception {
        long end = System.nanoTime() + 20_000_000_000L;
        while (refs.stream().anyMatch(r -> r.get() != null)) {
            assertTrue(System.nanoTime() - end < 0, what + ": " + refs.stream().filter(r -> r.get() != null).count()
                    + " of " + refs.size() + " dropped segments still reachable after 20 s of collections");
            System.gc();
            Thread.sleep(10);
        }
    }
}
