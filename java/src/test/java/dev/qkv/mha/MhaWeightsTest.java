package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.io.Safetensors;
import dev.qkv.io.SafetensorsException;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertClose;
import static dev.qkv.mha.MhaTestSupport.rand;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class MhaWeightsTest {
    private static final int E = 16;
    private static final int H = 4;

    @TempDir
    Path dir;

    /** Output of the reference layer over {@code w} for a fixed input, to compare loaded layers with. */
    private static float[] run(Arena a, MhaWeights w, Backend backend) {
        Tensor x = rand(a, new Random(99), 1f, 2, 5, w.embedDim());
        Tensor out = Tensor.allocate(a, 2, 5, w.embedDim());
        MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
        layer.forward(x, out, SdpaOptions.CAUSAL, layer.newWorkspace(a, 2, 5, 5));
        return out.toArray();
    }

    private Map<String, Tensor> torchNames(Arena a, Random r, String p) {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put(p + "in_proj_weight", rand(a, r, 0.25f, 3 * E, E));
        m.put(p + "in_proj_bias", rand(a, r, 0.5f, 3 * E));
        m.put(p + "out_proj.weight", rand(a, r, 0.25f, E, E));
        m.put(p + "out_proj.bias", rand(a, r, 0.5f, E));
        return m;
    }

    @ParameterizedTest
    @ValueSource(strings = {"", "encoder.layers.3.self_attn", "encoder.layers.3.self_attn."})
    void torchNamesUnderAPrefixLoadAsViews(String prefix) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            String p = prefix.isEmpty() || prefix.endsWith(".") ? prefix : prefix + ".";
            Map<String, Tensor> t = torchNames(a, new Random(1), p);
            // a decoy layer in the same file must not be picked up
            t.putAll(torchNames(a, new Random(2), "decoy."));
            Path f = dir.resolve("torch.safetensors");
            MhaTestSupport.writeF32(f, t);
            Safetensors st = Safetensors.open(f, a);
            MhaWeights w = MhaWeights.load(st, prefix, H, 0, a);
            assertEquals(E, w.embedDim());
            assertEquals(H, w.kvHeads());
            assertNotNull(w.packedQkv());
            MhaWeights direct = MhaWeights.packed(H, t.get(p + "in_proj_weight"), t.get(p + "in_proj_bias"),
                    t.get(p + "out_proj.weight"), t.get(p + "out_proj.bias"));
            assertClose(run(a, direct, Backend.REFERENCE), run(a, w, Backend.NATIVE), 1e-5, 1e-5, "prefix=" + prefix);
        }
    }

    @Test
    void huggingFaceNamesWithGroupedQueryHeadsAndPartialBiases() throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(3);
            int kvd = E / H * 2;
            Map<String, Tensor> t = new LinkedHashMap<>();
            t.put("model.layers.0.self_attn.q_proj.weight", rand(a, r, 0.25f, E, E));
            t.put("model.layers.0.self_attn.q_proj.bias", rand(a, r, 0.5f, E));
            t.put("model.layers.0.self_attn.k_proj.weight", rand(a, r, 0.25f, kvd, E));
            t.put("model.layers.0.self_attn.k_proj.bias", rand(a, r, 0.5f, kvd));
            t.put("model.layers.0.self_attn.v_proj.weight", rand(a, r, 0.25f, kvd, E));
            t.put("model.layers.0.self_attn.v_proj.bias", rand(a, r, 0.5f, kvd));
            t.put("model.layers.0.self_attn.o_proj.weight", rand(a, r, 0.25f, E, E));
            Path f = dir.resolve("hf.safetensors");
            MhaTestSupport.writeF32(f, t);
            MhaWeights w = MhaWeights.load(Safetensors.open(f, a), "model.layers.0.self_attn", H, 0, a);
            assertEquals(2, w.kvHeads());
            assertNull(w.bo());
            assertNull(w.packedQkv());
            String p = "model.layers.0.self_attn.";
            MhaWeights direct = MhaWeights.of(H, t.get(p + "q_proj.weight"), t.get(p + "q_proj.bias"),
                    t.get(p + "k_proj.weight"), t.get(p + "k_proj.bias"), t.get(p + "v_proj.weight"),
                    t.get(p + "v_proj.bias"), t.get(p + "o_proj.weight"), null);
            assertClose(run(a, direct, Backend.REFERENCE), run(a, w, Backend.NATIVE), 1e-5, 1e-5, "hf gqa");
            assertEquals(2, MhaWeights.load(Safetensors.open(f, a), p, H, 2, a).kvHeads());
        }
    }

    @ParameterizedTest
    @ValueSource(booleans = {true, false})
    void halfPrecisionFilesAreConvertedOnLoad(boolean bf16) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Map<String, Tensor> t = new LinkedHashMap<>();
            Random r = new Random(4);
            t.put("q_proj.weight", rand(a, r, 0.25f, E, E));
            t.put("k_proj.weight", rand(a, r, 0.25f, E, E));
            t.put("v_proj.weight", rand(a, r, 0.25f, E, E));
            t.put("out_proj.weight", rand(a, r, 0.25f, E, E));
            t.put("out_proj.bias", rand(a, r, 0.5f, E));
            Path f = dir.resolve("half.safetensors");
            MhaTestSupport.writeHalf(f, t, bf16);
            MhaWeights w = MhaWeights.load(Safetensors.open(f, a), null, H, H, a);
            // the expected weights: the same values rounded to the file's precision in Java, independently
            Map<String, Tensor> rounded = new LinkedHashMap<>();
            for (Map.Entry<String, Tensor> en : t.entrySet()) {
                float[] v = en.getValue().toArray();
                for (int i = 0; i < v.length; i++) {
                    v[i] = bf16 ? MhaTestSupport.fromBf16(MhaTestSupport.toBf16(v[i]))
                            : Float.float16ToFloat(Float.floatToFloat16(v[i]));
                }
                rounded.put(en.getKey(), Tensor.of(a, v, en.getValue().shape()));
            }
            MhaWeights direct = MhaWeights.of(H, rounded.get("q_proj.weight"), null, rounded.get("k_proj.weight"),
                    null, rounded.get("v_proj.weight"), null, rounded.get("out_proj.weight"),
                    rounded.get("out_proj.bias"));
            assertClose(run(a, direct, Backend.REFERENCE), run(a, w, Backend.NATIVE), 1e-5, 1e-5,
                    bf16 ? "bf16" : "f16");
        }
    }

    /** Writes {@code t}, loads it with H heads and {@code kvHeads}, and returns the error message. */
    private String loadError(Map<String, Tensor> t, String prefix, int heads, int kvHeads) throws IOException {
        Path f = dir.resolve("bad.safetensors");
        MhaTestSupport.writeF32(f, t);
        try (Arena a = Arena.ofConfined()) {
            Safetensors st = Safetensors.open(f, a);
            SafetensorsException e = assertThrows(SafetensorsException.class,
                    () -> MhaWeights.load(st, prefix, heads, kvHeads, a));
            assertTrue(e.getMessage().startsWith(f + ": "), e.getMessage());
            return e.getMessage();
        }
    }

    private static void assertContains(String msg, String... parts) {
        for (String p : parts) {
            assertTrue(msg.contains(p), () -> "expected '" + p + "' in: " + msg);
        }
    }

    /** Head counts outside their range are a wrong argument (IllegalArgumentException), not a file's fault. */
    @Test
    void headCountsOutOfRangeAreIllegalArguments() throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Path f = dir.resolve("heads.safetensors");
            MhaTestSupport.writeF32(f, torchNames(a, new Random(9), ""));
            Safetensors st = Safetensors.open(f, a);
            IllegalArgumentException none = assertThrows(IllegalArgumentException.class,
                    () -> MhaWeights.load(st, "", 0, 0, a));
            assertContains(none.getMessage(), "heads must be positive, got 0");
            IllegalArgumentException negative = assertThrows(IllegalArgumentException.class,
                    () -> MhaWeights.load(st, "", H, -1, a));
            assertContains(negative.getMessage(), "got -1");
            assertEquals(H, MhaWeights.load(st, "", H, 0, a).heads(), "the file itself loads");
        }
    }

    @Test
    void shapesThatDoNotFitAreRejectedNamingFileAndTensor() throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(8);
            Map<String, Tensor> t = torchNames(a, r, "");
            assertContains(loadError(t, "", 3, 0), "tensor in_proj_weight [48, 16]", "E=16 is not divisible by H=3");
            // the file's tensor and shape, not the slice of it that holds K
            assertContains(loadError(t, "", H, 2), "tensor 'in_proj_weight' [48, 16], its rows of K: 4 kv heads",
                    "not the 2 requested");
            assertContains(loadError(t, "enc", H, 0), "no attention weights under prefix 'enc.'",
                    "'enc.in_proj_weight'", "'enc.q_proj.weight'", "the file has 'in_proj_weight'");

            Map<String, Tensor> rows = torchNames(a, r, "");
            rows.put("in_proj_weight", rand(a, r, 1f, 3 * E + 1, E));
            assertContains(loadError(rows, "", H, 0), "in_proj_weight [49, 16]", "expected [E + 2*Hkv*Dh, E]");

            Map<String, Tensor> noOut = torchNames(a, r, "");
            noOut.remove("out_proj.weight");
            assertContains(loadError(noOut, "", H, 0), "tensor 'out_proj.weight' not found");

            Map<String, Tensor> bias = torchNames(a, r, "");
            bias.put("out_proj.bias", rand(a, r, 1f, E + 1));
            assertContains(loadError(bias, "", H, 0), "tensor out_proj.bias [17]", "expected [16]");

            Map<String, Tensor> kv = torchNames(a, r, "");
            kv.put("bias_k", rand(a, r, 1f, 1, 1, E));
            assertContains(loadError(kv, "", H, 0), "tensor 'bias_k'", "add_bias_kv");

            Map<String, Tensor> hf = new LinkedHashMap<>();
            hf.put("q_proj.weight", rand(a, r, 1f, E, E));
            hf.put("k_proj.weight", rand(a, r, 1f, 6, E));
            hf.put("v_proj.weight", rand(a, r, 1f, 6, E));
            hf.put("o_proj.weight", rand(a, r, 1f, E, E));
            assertContains(loadError(hf, "", H, 0), "tensor k_proj.weight [6, 16]", "not a multiple of Dh=4");
            hf.put("k_proj.weight", rand(a, r, 1f, 8, E));
            assertContains(loadError(hf, "", H, 0), "tensor v_proj.weight [6, 16]", "expected [8, 16]");
            hf.put("v_proj.weight", rand(a, r, 1f, 8, E));
            hf.remove("o_proj.weight");
            assertContains(loadError(hf, "", H, 0), "'o_proj.weight' (or 'out_proj.weight') not found");
            hf.put("o_proj.weight", rand(a, r, 1f, E, E + 1));
            assertContains(loadError(hf, "", H, 0), "tensor o_proj.weight [16, 17]", "expected [16, 16]");
            // a bias under the other naming family would be dropped without a word
            hf.put("o_proj.weight", rand(a, r, 1f, E, E));
            hf.put("out_proj.bias", rand(a, r, 1f, E));
            assertContains(loadError(hf, "", H, 0), "tensor 'out_proj.bias' belongs to no weight",
                    "the output projection is 'o_proj.weight'");
        }
    }

    /**
     * {@code nn.MultiheadAttention(E, H, kdim=.., vdim=..)} with kdim or vdim other than E keeps its input
     * projections apart, as {@code q_proj_weight [E, E]}, {@code k_proj_weight [E, kdim]},
     * {@code v_proj_weight [E, vdim]} (and {@code in_proj_bias}, {@code out_proj.*}). The layer cannot compute it
     * (its keys and values have E features); such a file was refused as having "no attention weights", which
     * named neither the tensors PyTorch wrote nor why. It must name them with their shapes.
     */
    @ParameterizedTest
    @ValueSource(strings = {"", "decoder.cross_attn."})
    void torchSeparateProjectionsOfOtherKdimOrVdimAreRefusedByName(String p) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(10);
            Map<String, Tensor> t = new LinkedHashMap<>();
            t.put(p + "q_proj_weight", rand(a, r, 0.25f, E, E));
            t.put(p + "k_proj_weight", rand(a, r, 0.25f, E, 8));
            t.put(p + "v_proj_weight", rand(a, r, 0.25f, E, 12));
            t.put(p + "in_proj_bias", rand(a, r, 0.5f, 3 * E));
            t.put(p + "out_proj.weight", rand(a, r, 0.25f, E, E));
            t.put(p + "out_proj.bias", rand(a, r, 0.5f, E));
            assertContains(loadError(t, p, H, 0), "'" + p + "k_proj_weight' [16, 8]",
                    "'" + p + "v_proj_weight' [16, 12]", "kdim", "vdim", "not supported");
        }
    }

    /** Hugging Face names, E = 16, H = 4, under {@code prefix}. */
    private static Map<String, Tensor> hfNames(Arena a, Random r, String prefix) {
        Map<String, Tensor> t = new LinkedHashMap<>();
        for (String n : new String[] {"q_proj", "k_proj", "v_proj", "o_proj"}) {
            t.put(prefix + n + ".weight", rand(a, r, 0.25f, E, E));
        }
        return t;
    }

    /**
     * An attention tensor the loaded layer would not use is refused, naming it: both naming families in one file,
     * a bias under the other family's name, two names for the output projection, and what this layer cannot
     * compute (add_bias_kv, normalized queries and keys). Each of these loaded before, the tensor dropped without a
     * word (a review). Tensors that are not attention weights, or lie outside the prefix, still load.
     */
    @Test
    void attentionTensorsTheLayerWouldIgnoreAreRefused() throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(9);
            Object[][] cases = {
                {hfNames(a, r, ""), "out_proj.weight", new long[] {E, E}, "'out_proj.weight' would be ignored"},
                {hfNames(a, r, ""), "in_proj_bias", new long[] {3 * E}, "'in_proj_bias' would be ignored"},
                {hfNames(a, r, ""), "in_proj_weight", new long[] {3 * E, E}, "'q_proj.weight' would be ignored"},
                {torchNames(a, r, ""), "q_proj.bias", new long[] {E}, "'q_proj.bias' would be ignored"},
                {torchNames(a, r, ""), "o_proj.bias", new long[] {E}, "'o_proj.bias' would be ignored"},
                {torchNames(a, r, ""), "q_proj.weight", new long[] {E, E}, "'q_proj.weight' would be ignored"},
                {hfNames(a, r, ""), "q_norm.weight", new long[] {E / H}, "normalization of queries and keys"},
                {hfNames(a, r, ""), "k_layernorm.weight", new long[] {E / H}, "normalization of queries and keys"},
                {hfNames(a, r, ""), "bias_k", new long[] {1, 1, E}, "add_bias_kv"},
            };
            for (Object[] c : cases) {
                @SuppressWarnings("unchecked")
                Map<String, Tensor> t = (Map<String, Tensor>) c[0];
                t.put((String) c[1], rand(a, r, 1f, (long[]) c[2]));
                assertContains(loadError(t, "", H, 0), (String) c[3]);
            }
            // both biases of the output projection under two names
            Map<String, Tensor> two = hfNames(a, r, "");
            two.put("o_proj.bias", rand(a, r, 1f, E));
            two.put("out_proj.bias", rand(a, r, 1f, E));
            assertContains(loadError(two, "", H, 0), "'out_proj.bias' would be ignored");

            // other modules' tensors under the prefix, and attention tensors of another layer, are not this layer's
            Map<String, Tensor> block = hfNames(a, r, "layers.0.");
            block.put("layers.0.mlp.fc1.weight", rand(a, r, 1f, 2 * E, E));
            block.put("layers.1.q_norm.weight", rand(a, r, 1f, E / H));
            block.putAll(hfNames(a, r, "layers.1."));
            Path f = dir.resolve("block.safetensors");
            MhaTestSupport.writeF32(f, block);
            MhaWeights w = MhaWeights.load(Safetensors.open(f, a), "layers.0", H, 0, a);
            MhaWeights direct = MhaWeights.of(H, block.get("layers.0.q_proj.weight"), null,
                    block.get("layers.0.k_proj.weight"), null, block.get("layers.0.v_proj.weight"), null,
                    block.get("layers.0.o_proj.weight"), null);
            assertClose(run(a, direct, Backend.REFERENCE), run(a, w, Backend.REFERENCE), 0, 0, "layers.0");
        }
    }

    /**
     * A checkpoint that saved the frequencies of rotary position embeddings under the prefix (older Hugging Face
     * Llama-family files: {@code self_attn.rotary_emb.inv_freq}) belongs to a layer that rotates q and k, which this
     * one does not: it loaded without a word and computed another function than the model's (a review).
     */
    @Test
    void rotaryPositionEmbeddingsAreRefusedByName() throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(11);
            for (String rope : new String[] {"rotary_emb.inv_freq", "rotary_emb.cos_cached"}) {
                Map<String, Tensor> t = hfNames(a, r, "model.layers.0.self_attn.");
                t.put("model.layers.0.self_attn." + rope, rand(a, r, 1f, E / H / 2));
                assertContains(loadError(t, "model.layers.0.self_attn", H, 0),
                        "'model.layers.0.self_attn." + rope + "' [" + E / H / 2 + "]", "rotary position embeddings");
            }
            // another layer's rotation is not this layer's
            Map<String, Tensor> t = hfNames(a, r, "layers.0.");
            t.put("layers.1.rotary_emb.inv_freq", rand(a, r, 1f, E / H / 2));
            Path f = dir.resolve("other.safetensors");
            MhaTestSupport.writeF32(f, t);
            assertEquals(H, MhaWeights.load(Safetensors.open(f, a), "layers.0", H, 0, a).heads());
        }
    }

    /**
     * Weights whose rows overlap ({@code [8, 8]} with row stride 4) are refused naming the tensor: the products
     * take a leading dimension of at least the row length, so the layer would read other rows than the view's
     * and compute another function without a word. No test gave such a view (mutation testing).
     */
    @Test
    void weightsWhoseRowsOverlapAreRefused() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(12);
            Tensor overlapping = Tensor.view(rand(a, r, 1f, 64).segment(), 0, new long[] {8, 8}, new long[] {4, 1});
            Tensor w = rand(a, r, 1f, 8, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> MhaWeights.of(2, overlapping, null, w, null, w, null, w, null));
            assertContains(e.getMessage(), "wq [8, 8] with strides [4, 1]", "not overlap");
            IllegalArgumentException p = assertThrows(IllegalArgumentException.class,
                    () -> MhaWeights.packed(2, rand(a, r, 1f, 24, 8), null, overlapping, null));
            assertContains(p.getMessage(), "out_proj.weight [8, 8] with strides [4, 1]");
        }
    }

    /**
     * An in_proj_weight of only E rows has no rows for K and V (Hkv = 0): refused naming it, as an
     * IllegalArgumentException, where a bound of {@code r < E} let it through to a division by zero
     * (ArithmeticException) in the count of kv heads (mutation testing).
     */
    @Test
    void packedProjectionWithoutKeyAndValueRowsIsRefused() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(13);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> MhaWeights.packed(2, rand(a, r, 1f, 8, 8), null, rand(a, r, 1f, 8, 8), null));
            assertContains(e.getMessage(), "in_proj_weight [8, 8]: expected [E + 2*Hkv*Dh, E]");
        }
    }

    /**
     * K/V rows for a number of kv heads that does not divide H (H=4, Dh=4, 12 rows: Hkv=3) are refused when the
     * weights are made, naming the tensor, for both layouts: query heads are grouped onto kv heads h / (H / Hkv),
     * which needs H a multiple of Hkv. No test gave such weights (mutation testing: the check removed, nothing
     * failed).
     */
    @Test
    void kvHeadsThatDoNotDivideTheHeadsAreRefused() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(14);
            Tensor wq = rand(a, r, 1f, 16, 16);
            Tensor kv = rand(a, r, 1f, 12, 16);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> MhaWeights.of(4, wq, null, kv, null, kv, null, wq, null));
            assertContains(e.getMessage(), "wk [12, 16]", "H=4 is not a multiple of Hkv=3");
            IllegalArgumentException p = assertThrows(IllegalArgumentException.class,
                    () -> MhaWeights.packed(4, rand(a, r, 1f, 16 + 2 * 12, 16), null, wq, null));
            assertContains(p.getMessage(), "in_proj_weight [40, 16]", "H=4 is not a multiple of Hkv=3");
        }
    }
}
