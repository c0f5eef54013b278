package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertWithinFloat32;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertSame;

/**
 * One workspace per thread serving every layer of a model, as its javadoc allows (workspaces serve several
 * layers): a decoder steps each of its layers in turn for every token, each with its own weights and KV cache.
 * Each layer's steps must equal the reference's, and the workspace's head views, which depend on the layers'
 * shape only, must be made once: they were kept per layer object, so each step of a layer after another one's
 * built them again, 448 bytes of heap per layer and token in the steady state (found embedding qkv: a four-layer
 * decode loop over one workspace, ThreadMXBean).
 */
class SharedWorkspaceTest {
    private static final int E = 64;
    private static final int H = 8;
    private static final int HKV = 2;
    private static final int LAYERS = 3;
    private static final int PROMPT = 5;
    private static final int TOKENS = 6;

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void layersOfOneShapeShareAWorkspaceAndItsViews(Backend backend) {
        Random r = new Random(77);
        try (Arena a = Arena.ofShared()) {
            MhaWeights[] w = new MhaWeights[LAYERS];
            MultiHeadAttention[] layer = new MultiHeadAttention[LAYERS];
            KvCache[] cache = new KvCache[LAYERS];
            for (int i = 0; i < LAYERS; i++) {
                w[i] = MultiHeadAttentionTest.weights(a, r, E, H, HKV, true, i % 2 == 0);
                layer[i] = MultiHeadAttention.create(w[i], backend, 1);
                cache[i] = layer[i].newCache(a, PROMPT + TOKENS);
            }
            int len = PROMPT + TOKENS;
            Tensor seq = rand(a, r, 1f, 1, len, E);
            Tensor[] out = new Tensor[LAYERS];
            MhaWorkspace ws = layer[0].newWorkspace(a, 1, PROMPT, len);
            for (int i = 0; i < LAYERS; i++) {
                out[i] = Tensor.allocate(a, 1, len, E);
                layer[i].decode(seq.slice(1, 0, PROMPT), cache[i], out[i].slice(1, 0, PROMPT), ws);
            }
            Tensor q = null;
            Tensor heads = null;
            for (int t = PROMPT; t < len; t++) {
                for (int i = 0; i < LAYERS; i++) {
                    layer[i].decode(seq.slice(1, t, t + 1), cache[i], out[i].slice(1, t, t + 1), ws);
                    if (q == null) {
                        q = ws.q();
                        heads = ws.a();
                    }
                    assertSame(q, ws.q(), backend + ": layer " + i + " step " + t + " made the head views again");
                    assertSame(heads, ws.a(), backend + ": layer " + i + " step " + t + " made the head views again");
                }
            }
            MultiHeadAttention[] ref = new MultiHeadAttention[LAYERS];
            for (int i = 0; i < LAYERS; i++) {
                ref[i] = MultiHeadAttention.create(w[i], Backend.REFERENCE);
                Tensor expected = Tensor.allocate(a, 1, len, E);
                ref[i].forward(seq, expected, SdpaOptions.CAUSAL, ref[i].newWorkspace(a, 1, len, len));
                assertWithinFloat32(expected.toArray(), out[i].toArray(), E, len, backend + " layer " + i);
            }
        }
    }
}
