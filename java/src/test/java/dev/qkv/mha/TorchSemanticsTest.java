package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.io.Safetensors;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import static dev.qkv.mha.MhaTestSupport.writeF32;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The layer against PyTorch's and Hugging Face's definitions, written here in double from their documentation and
 * sharing nothing with the library (not {@link MhaReference}, not the reference attention):
 * {@code nn.MultiheadAttention(batch_first=True)} with {@code in_proj_weight}/{@code in_proj_bias} split in row
 * blocks Q, K, V, {@code out_proj}, {@code key_padding_mask} (True = ignore), {@code attn_mask} bool (True =
 * ignore) or float (added), and a causal mask; Hugging Face {@code q_proj}/{@code k_proj}/{@code v_proj}/
 * {@code o_proj} with grouped-query heads ({@code repeat_kv}: query head h reads kv head h / (H / Hkv)), through
 * forward and through decode with a KV cache (bottom-right causal).
 */
class TorchSemanticsTest {

    /** The additive mask of score (b, h, i, j): 0, a float, or -inf. */
    interface MaskFn {
        double at(int b, int h, int i, int j);
    }

    /**
     * {@code out [B, L, E]} by the definition, in double: q = x·Wqᵀ + bq, k = kv·Wkᵀ + bk, v = kv·Wvᵀ + bv, heads of
     * Dh = E / H columns, query head h on kv head h / (H / Hkv), softmax(q·kᵀ/√Dh + mask)·v, concatenated, ·Woᵀ + bo.
     * Weights are row-major [out, in]; a null bias is zero.
     */
    static double[] definition(int bsz, int l, int s, int e, int h, int hkv, float[] x, float[] kv, float[] wq,
                               float[] bq, float[] wk, float[] bk, float[] wv, float[] bv, float[] wo, float[] bo,
                               MaskFn mask) {
        int dh = e / h;
        int kvd = hkv * dh;
        double[] out = new double[bsz * l * e];
        for (int b = 0; b < bsz; b++) {
            double[][] q = linear(x, b * l * e, l, e, wq, bq, e);
            double[][] k = linear(kv, b * s * e, s, e, wk, bk, kvd);
            double[][] v = linear(kv, b * s * e, s, e, wv, bv, kvd);
            double[][] cat = new double[l][e];
            for (int hh = 0; hh < h; hh++) {
                int g = hh / (h / hkv);
                for (int i = 0; i < l; i++) {
                    double[] sc = new double[s];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < s; j++) {
                        double dot = 0;
                        for (int d = 0; d < dh; d++) {
                            dot += q[i][hh * dh + d] * k[j][g * dh + d];
                        }
                        sc[j] = dot / Math.sqrt(dh) + mask.at(b, hh, i, j);
                        max = Math.max(max, sc[j]);
                    }
                    if (max == Double.NEGATIVE_INFINITY) {
                        throw new AssertionError("test error: a fully masked row");
                    }
                    double sum = 0;
                    for (int j = 0; j < s; j++) {
                        sc[j] = Math.exp(sc[j] - max);
                        sum += sc[j];
                    }
                    for (int d = 0; d < dh; d++) {
                        double acc = 0;
                        for (int j = 0; j < s; j++) {
                            acc += sc[j] / sum * v[j][g * dh + d];
                        }
                        cat[i][hh * dh + d] = acc;
                    }
                }
            }
            double[][] o = new double[l][];
            for (int i = 0; i < l; i++) {
                o[i] = new double[e];
                for (int r = 0; r < e; r++) {
                    double acc = bo == null ? 0 : bo[r];
                    for (int c = 0; c < e; c++) {
                        acc += cat[i][c] * wo[r * e + c];
                    }
                    out[(b * l + i) * e + r] = acc;
                }
            }
        }
        return out;
    }

    /** {@code rows [n, in] · w[out, in]ᵀ + bias} for rows from float index {@code off}. */
    private static double[][] linear(float[] src, int off, int n, int in, float[] w, float[] bias, int outDim) {
        double[][] y = new double[n][outDim];
        for (int i = 0; i < n; i++) {
            for (int r = 0; r < outDim; r++) {
                double acc = bias == null ? 0 : bias[r];
                for (int c = 0; c < in; c++) {
                    acc += (double) src[off + i * in + c] * w[r * in + c];
                }
                y[i][r] = acc;
            }
        }
        return y;
    }

    static float[] uniform(Random r, float scale, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (r.nextFloat() * 2 - 1) * scale;
        }
        return v;
    }

    static Tensor tensor(Arena a, float[] v, long... shape) {
        return Tensor.allocate(a, shape).copyFrom(v);
    }

    static void assertNear(double[] want, float[] got, double atol, String what) {
        assertEquals(want.length, got.length, what);
        for (int i = 0; i < want.length; i++) {
            if (!(Math.abs(got[i] - want[i]) <= atol + 1e-4 * Math.abs(want[i]))) {
                fail(what + ": [" + i + "] = " + got[i] + ", the definition gives " + want[i]);
            }
        }
    }

    static double[] rows(double[] all, int e, int from, int to) {
        return Arrays.copyOfRange(all, from * e, to * e);
    }

    /** A packed nn.MultiheadAttention layer: in_proj_weight [3E, E] (or [E + 2·kvd, E]), in_proj_bias, out_proj. */
    record Torch(int e, int h, int hkv, float[] inW, float[] inB, float[] wo, float[] bo) {
        int kvd() {
            return hkv * (e / h);
        }

        float[] wq() {
            return Arrays.copyOfRange(inW, 0, e * e);
        }

        float[] wk() {
            return Arrays.copyOfRange(inW, e * e, (e + kvd()) * e);
        }

        float[] wv() {
            return Arrays.copyOfRange(inW, (e + kvd()) * e, (e + 2 * kvd()) * e);
        }

        float[] bq() {
            return inB == null ? null : Arrays.copyOfRange(inB, 0, e);
        }

        float[] bk() {
            return inB == null ? null : Arrays.copyOfRange(inB, e, e + kvd());
        }

        float[] bv() {
            return inB == null ? null : Arrays.copyOfRange(inB, e + kvd(), e + 2 * kvd());
        }

        static Torch random(Random r, int e, int h, int hkv, boolean bias) {
            int kvd = hkv * (e / h);
            float s = (float) (1 / Math.sqrt(e));
            return new Torch(e, h, hkv, uniform(r, s, (e + 2 * kvd) * e), bias ? uniform(r, 0.5f, e + 2 * kvd) : null,
                    uniform(r, s, e * e), bias ? uniform(r, 0.5f, e) : null);
        }

        MhaWeights packed(Arena a) {
            return MhaWeights.packed(h, tensor(a, inW, e + 2L * kvd(), e),
                    inB == null ? null : tensor(a, inB, e + 2L * kvd()), tensor(a, wo, e, e),
                    bo == null ? null : tensor(a, bo, e));
        }

        double[] definition(int b, int l, int s, float[] x, float[] kv, MaskFn mask) {
            return TorchSemanticsTest.definition(b, l, s, e, h, hkv, x, kv, wq(), bq(), wk(), bk(), wv(), bv(), wo,
                    bo, mask);
        }
    }

    /**
     * nn.MultiheadAttention(batch_first=True) with a key_padding_mask that differs per batch element (True =
     * ignore), a bool attn_mask [L, S] (True = ignore) and the causal rule, given to the layer as one allowed-mask
     * [B, 1, L, S] plus causal; and with a float attn_mask [B·H, L, S] (torch's per-batch-and-head form) added to
     * the scores, key padding as -inf, given as one additive mask [B, H, L, S]. Self- and cross-attention.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void multiheadAttentionWithPerBatchMasks(Backend backend) {
        int bsz = 3;
        int l = 5;
        int e = 16;
        int h = 4;
        for (boolean cross : new boolean[] {false, true}) {
            int s = cross ? 7 : l;
            try (Arena a = Arena.ofConfined()) {
                Random r = new Random(cross ? 11 : 12);
                Torch t = Torch.random(r, e, h, h, true);
                MhaWeights w = t.packed(a);
                float[] x = uniform(r, 1f, bsz * l * e);
                float[] kv = cross ? uniform(r, 1f, bsz * s * e) : x;
                // key j of batch b ignored: batch 0 none, batch 1 the last key, batch 2 every odd key
                boolean[][] kpm = new boolean[bsz][s];
                kpm[1][s - 1] = true;
                for (int j = 1; j < s; j += 2) {
                    kpm[2][j] = true;
                }
                boolean[][] am = new boolean[l][s];
                for (int i = 0; i < l; i++) {
                    for (int j = 1; j < s; j++) {
                        am[i][j] = r.nextInt(4) == 0;
                    }
                }
                float[] fm = uniform(r, 2f, bsz * h * l * s);
                int off = s - l; // bottom-right causal: query i sees keys j <= i + (S - L)
                MaskFn boolTorch = (b, hh, i, j) -> kpm[b][j] || am[i][j] || j > i + off
                        ? Double.NEGATIVE_INFINITY : 0;
                MaskFn floatTorch = (b, hh, i, j) -> (kpm[b][j] ? Double.NEGATIVE_INFINITY : 0)
                        + fm[((b * h + hh) * l + i) * s + j];

                float[] allowed = new float[bsz * l * s];
                float[] additive = new float[bsz * h * l * s];
                for (int b = 0; b < bsz; b++) {
                    for (int i = 0; i < l; i++) {
                        for (int j = 0; j < s; j++) {
                            allowed[(b * l + i) * s + j] = kpm[b][j] || am[i][j] ? 0 : 1;
                            for (int hh = 0; hh < h; hh++) {
                                int at = ((b * h + hh) * l + i) * s + j;
                                additive[at] = kpm[b][j] ? Float.NEGATIVE_INFINITY : fm[at];
                            }
                        }
                    }
                }
                SdpaOptions boolOpts = SdpaOptions.CAUSAL.withMask(Mask.allowed(tensor(a, allowed, bsz, 1, l, s)));
                SdpaOptions floatOpts = SdpaOptions.DEFAULT.withMask(Mask.additive(tensor(a, additive, bsz, h, l, s)));

                MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
                MhaWorkspace ws = layer.newWorkspace(a, bsz, l, s);
                Tensor xt = tensor(a, x, bsz, l, e);
                Tensor kvt = cross ? tensor(a, kv, bsz, s, e) : null;
                Tensor out = Tensor.allocate(a, bsz, l, e);
                layer.forward(xt, kvt, out.fill(Float.NaN), boolOpts, ws);
                assertNear(t.definition(bsz, l, s, x, kv, boolTorch), out.toArray(), 1e-4,
                        backend + (cross ? " cross" : " self") + " bool masks");
                layer.forward(xt, kvt, out.fill(Float.NaN), floatOpts, ws);
                assertNear(t.definition(bsz, l, s, x, kv, floatTorch), out.toArray(), 1e-4,
                        backend + (cross ? " cross" : " self") + " float mask");
            }
        }
    }

    /**
     * nn.MultiheadAttention's default layout, batch_first=False: query [L, B, E], key/value [S, B, E], output
     * [L, B, E], with a key_padding_mask [B, S] (True = ignore) turned into Hugging Face form (1 = keep) for
     * {@link Mask#keyPadding}. The layer is batch first; the port hands it {@code transpose(0, 1)} views, which it
     * reads and writes in place. Self-attention (the packed single product over strided rows) and cross-attention.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void sequenceFirstLayoutThroughTransposedViews(Backend backend) {
        int bsz = 3;
        int l = 6;
        int e = 16;
        int h = 4;
        for (boolean cross : new boolean[] {false, true}) {
            int s = cross ? 9 : l;
            try (Arena a = Arena.ofConfined()) {
                Random r = new Random(cross ? 21 : 22);
                Torch t = Torch.random(r, e, h, h, true);
                float[] xSeq = uniform(r, 1f, l * bsz * e);                 // [L, B, E]
                float[] kvSeq = cross ? uniform(r, 1f, s * bsz * e) : xSeq; // [S, B, E]
                boolean[][] kpm = new boolean[bsz][s];
                for (int b = 0; b < bsz; b++) {
                    for (int j = 1; j < s; j++) {
                        kpm[b][j] = r.nextInt(3) == 0;
                    }
                }
                float[] keep = new float[bsz * s];
                for (int b = 0; b < bsz; b++) {
                    for (int j = 0; j < s; j++) {
                        keep[b * s + j] = kpm[b][j] ? 0 : 1;
                    }
                }
                // the definition in batch-first order: element (b, i) of [B, L, E] is (i, b) of [L, B, E]
                float[] x = new float[bsz * l * e];
                float[] kv = new float[bsz * s * e];
                for (int b = 0; b < bsz; b++) {
                    for (int i = 0; i < l; i++) {
                        System.arraycopy(xSeq, (i * bsz + b) * e, x, (b * l + i) * e, e);
                    }
                    for (int j = 0; j < s; j++) {
                        System.arraycopy(kvSeq, (j * bsz + b) * e, kv, (b * s + j) * e, e);
                    }
                }
                double[] want = t.definition(bsz, l, s, x, kv,
                        (b, hh, i, j) -> kpm[b][j] ? Double.NEGATIVE_INFINITY : 0);

                MultiHeadAttention layer = MultiHeadAttention.create(t.packed(a), backend);
                MhaWorkspace ws = layer.newWorkspace(a, bsz, l, s);
                Tensor query = tensor(a, xSeq, l, bsz, e);
                Tensor key = cross ? tensor(a, kvSeq, s, bsz, e) : null;
                Tensor outSeq = Tensor.allocate(a, l, bsz, e).fill(Float.NaN);
                layer.forward(query.transpose(0, 1), key == null ? null : key.transpose(0, 1), outSeq.transpose(0, 1),
                        SdpaOptions.DEFAULT.withMask(Mask.keyPadding(tensor(a, keep, bsz, s))), ws);
                float[] got = new float[bsz * l * e];
                float[] seq = outSeq.toArray();
                for (int b = 0; b < bsz; b++) {
                    for (int i = 0; i < l; i++) {
                        System.arraycopy(seq, (i * bsz + b) * e, got, (b * l + i) * e, e);
                    }
                }
                assertNear(want, got, 1e-4, backend + (cross ? " cross" : " self") + " sequence first");
            }
        }
    }

    /**
     * README: a left-padded batch of prompts runs "through forward with a key-padding mask
     * (SdpaOptions.CAUSAL.withMask(Mask.keyPadding(allowed)) for Hugging Face's attention_mask [B, L])". Each
     * sequence's real rows must equal the definition over that sequence alone (causal, no padding; the layer has
     * no positions), and the padding rows, which may attend no key, give b_O (zeros before W_O, as torch's SDPA
     * since 2.5); and decoding each sequence alone through a KV cache gives the same rows.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void leftPaddedBatchWithAttentionMaskEqualsEachSequenceAlone(Backend backend, @TempDir Path dir) throws Exception {
        int e = 16;
        int h = 4;
        int hkv = 2;
        int l = 7;
        int[] lengths = {7, 4, 1};
        int bsz = lengths.length;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(31);
            float[][] parts = new float[8][];
            MhaWeights w = hfLayer(dir, a, r, e, h, hkv, parts);
            float[] x = uniform(r, 1f, bsz * l * e);
            float[] attentionMask = new float[bsz * l];   // HF: 1 = token, 0 = padding, padded on the left
            for (int b = 0; b < bsz; b++) {
                for (int i = l - lengths[b]; i < l; i++) {
                    attentionMask[b * l + i] = 1;
                }
            }
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            MhaWorkspace ws = layer.newWorkspace(a, bsz, l, l);
            Tensor out = Tensor.allocate(a, bsz, l, e).fill(Float.NaN);
            layer.forward(tensor(a, x, bsz, l, e), out,
                    SdpaOptions.CAUSAL.withMask(Mask.keyPadding(tensor(a, attentionMask, bsz, l))), ws);
            float[] got = out.toArray();
            KvCache cache = layer.newCache(a, l);
            for (int b = 0; b < bsz; b++) {
                int n = lengths[b];
                int pad = l - n;
                float[] alone = Arrays.copyOfRange(x, (b * l + pad) * e, (b + 1) * l * e);
                double[] want = definition(1, n, n, e, h, hkv, alone, alone, parts[0], parts[1], parts[2], parts[3],
                        parts[4], parts[5], parts[6], parts[7], CAUSAL);
                assertNear(want, Arrays.copyOfRange(got, (b * l + pad) * e, (b + 1) * l * e), 1e-4,
                        backend + " sequence " + b + " of the left-padded batch");
                for (int i = 0; i < pad * e; i++) {
                    assertTrue(got[b * l * e + i] == 0f, backend + " padding row of sequence " + b
                            + " (no key to attend; o_proj has no bias): " + got[b * l * e + i]);
                }
                cache.reset();
                Tensor decoded = Tensor.allocate(a, 1, n, e).fill(Float.NaN);
                layer.decode(tensor(a, alone, 1, n, e), cache, decoded, ws);
                assertNear(want, decoded.toArray(), 1e-4, backend + " sequence " + b + " decoded alone");
            }
        }
    }

    /** Hugging Face names, q/k/v biases (Qwen2-style), no o_proj bias, for Hkv = 1 (multi-query) and Hkv = 2. */
    private static MhaWeights hfLayer(Path dir, Arena a, Random r, int e, int h, int hkv, float[][] parts)
            throws Exception {
        int kvd = hkv * (e / h);
        float s = (float) (1 / Math.sqrt(e));
        parts[0] = uniform(r, s, e * e);
        parts[1] = uniform(r, 0.5f, e);
        parts[2] = uniform(r, s, kvd * e);
        parts[3] = uniform(r, 0.5f, kvd);
        parts[4] = uniform(r, s, kvd * e);
        parts[5] = uniform(r, 0.5f, kvd);
        parts[6] = uniform(r, s, e * e);
        parts[7] = null;
        Map<String, Tensor> m = new LinkedHashMap<>();
        String p = "model.layers.0.self_attn.";
        m.put(p + "q_proj.weight", tensor(a, parts[0], e, e));
        m.put(p + "q_proj.bias", tensor(a, parts[1], e));
        m.put(p + "k_proj.weight", tensor(a, parts[2], kvd, e));
        m.put(p + "k_proj.bias", tensor(a, parts[3], kvd));
        m.put(p + "v_proj.weight", tensor(a, parts[4], kvd, e));
        m.put(p + "v_proj.bias", tensor(a, parts[5], kvd));
        m.put(p + "o_proj.weight", tensor(a, parts[6], e, e));
        Path f = dir.resolve("hf-" + hkv + ".safetensors");
        writeF32(f, m);
        MhaWeights w = MhaWeights.load(Safetensors.open(f, a), "model.layers.0.self_attn", h, 0, a);
        assertEquals(hkv, w.kvHeads());
        return w;
    }

    private static final MaskFn CAUSAL = (b, hh, i, j) -> j > i ? Double.NEGATIVE_INFINITY : 0;

    /**
     * A Hugging Face grouped-query layer (Hkv = 1 and 2 of H = 4): a causal forward over the sequence, and a decode
     * of a prefill of n tokens then single tokens then a chunk, each equal to the definition's causal rows; then
     * truncate back to a prefix and decode other tokens (equal to the definition over the new sequence), then
     * reset and decode a third sequence from scratch.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void huggingFaceGroupedQueryForwardAndDecode(Backend backend, @TempDir Path dir) throws Exception {
        int e = 16;
        int h = 4;
        int total = 11;
        for (int hkv : new int[] {1, 2}) {
            try (Arena a = Arena.ofShared()) {
                Random r = new Random(40 + hkv);
                float[][] p = new float[8][];
                MhaWeights w = hfLayer(dir, a, r, e, h, hkv, p);
                float[] x = uniform(r, 1f, total * e);
                double[] want = definition(1, total, total, e, h, hkv, x, x, p[0], p[1], p[2], p[3], p[4], p[5],
                        p[6], p[7], CAUSAL);
                String what = backend + " Hkv=" + hkv;

                MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
                MhaWorkspace ws = layer.newWorkspace(a, 1, total, total);
                Tensor xt = tensor(a, x, 1, total, e);
                Tensor out = Tensor.allocate(a, 1, total, e).fill(Float.NaN);
                layer.forward(xt, out, SdpaOptions.CAUSAL, ws);
                assertNear(want, out.toArray(), 1e-4, what + " forward");

                KvCache cache = layer.newCache(a, total);
                out.fill(Float.NaN);
                int[] steps = {4, 1, 1, 3, 1, 1};
                int at = 0;
                for (int n : steps) {
                    layer.decode(xt.slice(1, at, at + n), cache, out.slice(1, at, at + n), ws);
                    at += n;
                }
                assertEquals(total, at);
                assertEquals(total, cache.length());
                assertNear(want, out.toArray(), 1e-4, what + " decode " + Arrays.toString(steps));

                // truncate to 6 and decode 5 other tokens: the sequence x[0..6) ++ y
                cache.truncate(6);
                float[] y = uniform(r, 1f, 5 * e);
                float[] xy = Arrays.copyOf(x, total * e);
                System.arraycopy(y, 0, xy, 6 * e, 5 * e);
                double[] want2 = definition(1, total, total, e, h, hkv, xy, xy, p[0], p[1], p[2], p[3], p[4], p[5],
                        p[6], p[7], CAUSAL);
                Tensor yt = tensor(a, y, 1, 5, e);
                Tensor out2 = Tensor.allocate(a, 1, 5, e).fill(Float.NaN);
                layer.decode(yt.slice(1, 0, 1), cache, out2.slice(1, 0, 1), ws);
                layer.decode(yt.slice(1, 1, 5), cache, out2.slice(1, 1, 5), ws);
                assertNear(rows(want2, e, 6, total), out2.toArray(), 1e-4, what + " after truncate(6)");

                // reset: a fresh sequence y of 5 tokens, prefill 2 then 3 singles
                cache.reset();
                double[] want3 = definition(1, 5, 5, e, h, hkv, y, y, p[0], p[1], p[2], p[3], p[4], p[5], p[6],
                        p[7], CAUSAL);
                Tensor out3 = Tensor.allocate(a, 1, 5, e).fill(Float.NaN);
                layer.decode(yt.slice(1, 0, 2), cache, out3.slice(1, 0, 2), ws);
                for (int i = 2; i < 5; i++) {
                    layer.decode(yt.slice(1, i, i + 1), cache, out3.slice(1, i, i + 1), ws);
                }
                assertNear(want3, out3.toArray(), 1e-4, what + " after reset");
            }
        }
    }

    /**
     * A full cache: a step that does not fit throws IllegalStateException naming the cache, appends nothing and
     * writes nothing; a step that fits exactly still runs, and its rows are the definition's.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void capacityExhaustion(Backend backend) {
        int e = 8;
        int h = 2;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(5);
            Torch t = Torch.random(r, e, h, 1, true);
            MultiHeadAttention layer = MultiHeadAttention.create(t.packed(a), backend);
            int cap = 4;
            float[] x = uniform(r, 1f, 6 * e);
            Tensor xt = tensor(a, x, 1, 6, e);
            KvCache cache = layer.newCache(a, cap);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 3, cap);
            Tensor out = Tensor.allocate(a, 1, 6, e).fill(Float.NaN);
            layer.decode(xt.slice(1, 0, 2), cache, out.slice(1, 0, 2), ws);
            IllegalStateException ex = assertThrows(IllegalStateException.class,
                    () -> layer.decode(xt.slice(1, 2, 5), cache, out.slice(1, 2, 5), ws));
            assertTrue(ex.getMessage().contains("KV cache [1, 4, 4]") && ex.getMessage().contains("capacity is 4"),
                    ex.getMessage());
            assertEquals(2, cache.length());
            for (float v : out.slice(1, 2, 6).toArray()) {
                assertTrue(Float.isNaN(v), "a refused step wrote out");
            }
            layer.decode(xt.slice(1, 2, 4), cache, out.slice(1, 2, 4), ws);
            assertEquals(cap, cache.length());
            assertThrows(IllegalStateException.class,
                    () -> layer.decode(xt.slice(1, 4, 5), cache, out.slice(1, 4, 5), ws));
            assertEquals(cap, cache.length());
            double[] want = t.definition(1, cap, cap, Arrays.copyOf(x, cap * e), Arrays.copyOf(x, cap * e), CAUSAL);
            assertNear(want, out.slice(1, 0, cap).toArray(), 1e-4, backend + " up to capacity");
        }
    }

    /**
     * One cache, two threads decoding the same token into it, each with its own workspace, many times: a step
     * either runs or is refused with IllegalStateException (in use), never both append at one position. Every
     * cached key is the projection of that token, the cache holds exactly the steps that ran, and every output
     * is the closed form for keys that are all equal: softmax is uniform, so out = (x·Wvᵀ + bv)·Woᵀ + bo per head.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void oneCacheTwoThreads(Backend backend) throws Exception {
        int e = 8;
        int h = 2;
        int steps = 200;
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(9);
            Torch t = Torch.random(r, e, h, 2, true);
            MultiHeadAttention layer = MultiHeadAttention.create(t.packed(a), backend);
            float[] x = uniform(r, 1f, e);
            Tensor xt = tensor(a, x, 1, 1, e);
            KvCache cache = layer.newCache(a, 2 * steps);
            double[] one = t.definition(1, 1, 1, x, x, CAUSAL);
            AtomicInteger ran = new AtomicInteger();
            AtomicReference<Throwable> bad = new AtomicReference<>();
            CyclicBarrier start = new CyclicBarrier(2);
            Runnable body = () -> {
                MhaWorkspace ws = layer.newWorkspace(a, 1, 1, 2 * steps);
                Tensor out = Tensor.allocate(a, 1, 1, e);
                try {
                    start.await();
                    for (int i = 0; i < steps; i++) {
                        out.fill(Float.NaN);
                        try {
                            layer.decode(xt, cache, out, ws);
                        } catch (IllegalStateException busy) {
                            if (!busy.getMessage().contains("in use")) {
                                throw busy;
                            }
                            continue;
                        }
                        ran.incrementAndGet();
                        assertNear(one, out.toArray(), 1e-4, backend + " step output");
                    }
                } catch (Throwable ex) {
                    bad.compareAndSet(null, ex);
                }
            };
            Thread t1 = new Thread(body);
            Thread t2 = new Thread(body);
            t1.start();
            t2.start();
            t1.join();
            t2.join();
            if (bad.get() != null) {
                throw new AssertionError(bad.get());
            }
            assertEquals(ran.get(), cache.length());
            // every cached key row is k = x·Wkᵀ + bk
            double[][] k = linear(x, 0, 1, e, t.wk(), t.bk(), t.kvd());
            Tensor keys = cache.keys();
            int dh = e / h;
            for (int g = 0; g < 2; g++) {
                for (int p = 0; p < ran.get(); p++) {
                    for (int d = 0; d < dh; d++) {
                        assertEquals(k[0][g * dh + d], keys.get(0, g, p, d), 1e-5, "key " + p);
                    }
                }
            }
        }
    }

    /**
     * Weights whose arena is closed: forward and decode refuse the call with IllegalStateException naming the
     * weight, the JVM survives, and the cache keeps its length.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void decodeAfterTheWeightsArenaIsClosed(Backend backend) {
        int e = 8;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(3);
            Arena weights = Arena.ofConfined();
            Torch t = Torch.random(r, e, 2, 2, true);
            MultiHeadAttention layer = MultiHeadAttention.create(t.packed(weights), backend);
            KvCache cache = layer.newCache(a, 4);
            MhaWorkspace ws = layer.newWorkspace(a, 1, 2, 4);
            Tensor x = tensor(a, uniform(r, 1f, 2 * e), 1, 2, e);
            Tensor out = Tensor.allocate(a, 1, 2, e);
            layer.decode(x.slice(1, 0, 1), cache, out.slice(1, 0, 1), ws);
            weights.close();
            out.fill(Float.NaN);
            IllegalStateException ex = assertThrows(IllegalStateException.class,
                    () -> layer.decode(x.slice(1, 1, 2), cache, out.slice(1, 1, 2), ws));
            assertTrue(ex.getMessage().contains("W_Q"), ex.getMessage());
            assertEquals(1, cache.length());
            ex = assertThrows(IllegalStateException.class, () -> layer.forward(x, out, SdpaOptions.CAUSAL, ws));
            assertTrue(ex.getMessage().contains("W_Q"), ex.getMessage());
            for (float v : out.toArray()) {
                assertTrue(Float.isNaN(v), "a refused call wrote out");
            }
            // the cache and workspace still serve a layer whose weights are alive
            MultiHeadAttention other = MultiHeadAttention.create(t.packed(a), backend);
            other.decode(x.slice(1, 1, 2), cache, out.slice(1, 1, 2), ws);
            assertEquals(2, cache.length());
            double[] want = t.definition(1, 2, 2, x.toArray(), x.toArray(), CAUSAL);
            assertNear(rows(want, e, 1, 2), out.slice(1, 1, 2).toArray(), 1e-4, backend + " after the refusal");
        }
    }

    /** The packed split: in_proj_weight rows [0, E) are W_Q, [E, 2E) W_K, [2E, 3E) W_V; biases likewise. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void inProjSplitsIntoQkvRowBlocks(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Torch t = Torch.random(new Random(77), 8, 2, 2, true);
            MhaWeights w = t.packed(a);
            assertArrayEquals(t.wq(), w.wq().toArray());
            assertArrayEquals(t.wk(), w.wk().toArray());
            assertArrayEquals(t.wv(), w.wv().toArray());
            assertArrayEquals(t.bq(), w.bq().toArray());
            assertArrayEquals(t.bk(), w.bk().toArray());
            assertArrayEquals(t.bv(), w.bv().toArray());
        }
    }
}
