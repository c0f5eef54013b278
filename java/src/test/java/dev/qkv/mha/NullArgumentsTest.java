package dev.qkv.mha;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.WorkerPool;
import dev.qkv.attention.Workspace;
import dev.qkv.io.Safetensors;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The one rule for null arguments of the public API of dev.qkv.attention and dev.qkv.mha: an argument that the
 * javadoc does not say may be null is required, on every backend, and a null one throws
 * {@link NullPointerException} whose message starts with the parameter's name and "is null", before anything
 * is written (out keeps its NaN sentinel, a cache its length). Arguments documented as nullable (forward's
 * {@code kv}, the biases, {@link SdpaOptions}' mask) are accepted.
 */
class NullArgumentsTest {

    private static void isNull(String name, Executable call) {
        NullPointerException e = assertThrows(NullPointerException.class, call, name);
        assertTrue(e.getMessage() != null && e.getMessage().startsWith(name + " is null"),
                "expected a message naming '" + name + "', got: " + e.getMessage());
    }

    private static void untouched(Tensor out) {
        for (float v : out.toArray()) {
            assertTrue(Float.isNaN(v), "out was written by a refused call");
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void attention(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 2, 4, 8);
            Tensor k = Tensor.allocate(arena, 1, 2, 4, 8);
            Tensor v = Tensor.allocate(arena, 1, 2, 4, 8);
            Tensor out = Tensor.allocate(arena, 1, 2, 4, 8).fill(Float.NaN);
            SdpaOptions o = SdpaOptions.DEFAULT;
            Workspace ws = Workspace.allocate(arena, a.workspaceBytes(q, k, v, out, o));
            isNull("q", () -> a.sdpa(null, k, v, out, o));
            isNull("k", () -> a.sdpa(q, null, v, out, o));
            isNull("v", () -> a.sdpa(q, k, null, out, o));
            isNull("out", () -> a.sdpa(q, k, v, null, o));
            isNull("options", () -> a.sdpa(q, k, v, out, null));
            isNull("q", () -> a.sdpa(null, k, v, out, o, ws));
            isNull("k", () -> a.sdpa(q, null, v, out, o, ws));
            isNull("v", () -> a.sdpa(q, k, null, out, o, ws));
            isNull("out", () -> a.sdpa(q, k, v, null, o, ws));
            isNull("options", () -> a.sdpa(q, k, v, out, null, ws));
            isNull("workspace", () -> a.sdpa(q, k, v, out, o, null));
            untouched(out);
            isNull("q", () -> a.workspaceBytes(null, k, v, out, o));
            isNull("out", () -> a.workspaceBytes(q, k, v, null, o));
            isNull("options", () -> a.workspaceBytes(q, k, v, out, null));
            isNull("v", () -> a.workspaceBytes(q, k, null, out, o, ws));
            isNull("workspace", () -> a.workspaceBytes(q, k, v, out, o, null));
            isNull("q", () -> a.plan(null, k, v, out, o));
            isNull("options", () -> a.plan(q, k, v, out, null));
            // the nullable ones
            a.sdpa(q, k, v, out, new SdpaOptions(false, null, Float.NaN).withMask(null), ws);
        }
    }

    @Test
    void attentionFactoriesAndValues() {
        isNull("backend", () -> Attention.create(null));
        isNull("backend", () -> Attention.create(null, 1));
        isNull("backend", () -> Attention.builder().backend(null));
        isNull("arena", () -> Workspace.allocate(null, 64));
        isNull("kind", () -> new Mask(null, null));
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 4);
            isNull("values", () -> new Mask(Mask.Kind.BOOLEAN, null));
            isNull("allowed", () -> Mask.allowed(null));
            isNull("bias", () -> Mask.additive(null));
            Workspace ws = Workspace.allocate(arena, 64);
            isNull("t", () -> ws.overlaps(null));
            assertEquals(false, ws.overlaps(t));
        }
        isNull("name", () -> Backend.parse(null));
        isNull("segment", () -> WorkerPool.shared().accessible(null));
        isNull("job", () -> WorkerPool.shared().run(null, 1, 0));
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void layer(Backend backend) {
        int e = 8;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(1);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, e, 2, 1, true, true);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 3, 8);
            KvCache cache = layer.newCache(a, 8);
            Tensor x = rand(a, r, 1f, 1, 3, e);
            Tensor out = Tensor.allocate(a, 1, 3, e).fill(Float.NaN);
            SdpaOptions o = SdpaOptions.CAUSAL;
            isNull("x", () -> layer.forward(null, out, o, ws));
            isNull("out", () -> layer.forward(x, null, o, ws));
            isNull("options", () -> layer.forward(x, out, null, ws));
            isNull("ws", () -> layer.forward(x, out, o, null));
            isNull("x", () -> layer.forward(null, x, out, o, ws));
            isNull("out", () -> layer.forward(x, x, null, o, ws));
            isNull("options", () -> layer.forward(x, x, out, null, ws));
            isNull("ws", () -> layer.forward(x, x, out, o, null));
            untouched(out);
            isNull("x", () -> layer.decode(null, cache, out, ws));
            isNull("cache", () -> layer.decode(x, null, out, ws));
            isNull("out", () -> layer.decode(x, cache, null, ws));
            isNull("ws", () -> layer.decode(x, cache, out, null));
            isNull("x", () -> layer.decode(null, cache, out, o, ws));
            isNull("cache", () -> layer.decode(x, null, out, o, ws));
            isNull("out", () -> layer.decode(x, cache, null, o, ws));
            isNull("options", () -> layer.decode(x, cache, out, null, ws));
            isNull("ws", () -> layer.decode(x, cache, out, o, null));
            untouched(out);
            assertEquals(0, cache.length());
            isNull("arena", () -> layer.newWorkspace(null, 1, 1, 1));
            isNull("arena", () -> layer.newCache(null, 4));
            // kv is documented as nullable (self-attention), and the refused calls left ws and cache usable
            layer.forward(x, null, out, o, ws);
            layer.decode(x, cache, out, ws);
            assertEquals(3, cache.length());
        }
    }

    @Test
    void layerFactoriesAndWeights(@TempDir Path dir) throws Exception {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(2);
            MhaWeights w = MultiHeadAttentionTest.weights(a, r, 8, 2, 2, false, false);
            isNull("weights", () -> MultiHeadAttention.create(null, Backend.JAVA));
            isNull("backend", () -> MultiHeadAttention.create(w, null));
            isNull("weights", () -> MultiHeadAttention.create(null, Backend.JAVA, 1));
            isNull("backend", () -> MultiHeadAttention.create(w, null, 1));
            isNull("arena", () -> KvCache.allocate(null, 1, 1, 1));
            Tensor m = rand(a, r, 1f, 8, 8);
            Tensor p = rand(a, r, 1f, 24, 8);
            isNull("wq", () -> MhaWeights.of(2, null, null, m, null, m, null, m, null));
            isNull("wk", () -> MhaWeights.of(2, m, null, null, null, m, null, m, null));
            isNull("wv", () -> MhaWeights.of(2, m, null, m, null, null, null, m, null));
            isNull("wo", () -> MhaWeights.of(2, m, null, m, null, m, null, null, null));
            isNull("inProj", () -> MhaWeights.packed(2, null, null, m, null));
            isNull("wo", () -> MhaWeights.packed(2, p, null, null, null));
            // biases may be null
            MhaWeights.of(2, m, null, m, null, m, null, m, null);
            MhaWeights.packed(2, p, null, m, null);
            Path f = dir.resolve("w.safetensors");
            Map<String, Tensor> t = new LinkedHashMap<>();
            t.put("in_proj_weight", p);
            t.put("out_proj.weight", m);
            MhaTestSupport.writeF32(f, t);
            Safetensors st = Safetensors.open(f, a);
            isNull("st", () -> MhaWeights.load(null, "", 2, 0, a));
            isNull("arena", () -> MhaWeights.load(st, "", 2, 0, null));
            // a null prefix is documented as the empty one
            assertEquals(8, MhaWeights.load(st, null, 2, 0, a).embedDim());
        }
    }
}
