package dev.qkv.mha;

import dev.qkv.io.Safetensors;
import dev.qkv.io.SafetensorsException;
import dev.qkv.tensor.Shapes;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.List;
import java.util.Objects;

/**
 * The learned parameters of one multi-head attention layer: {@code W_Q [E, E]}, {@code W_K [Hkv·Dh, E]},
 * {@code W_V [Hkv·Dh, E]}, {@code W_O [E, E]} and their optional biases, with {@code H} query heads of
 * {@code Dh = E / H} and {@code Hkv} key/value heads ({@code H} a multiple of {@code Hkv}).
 *
 * <p>Weights are row-major {@code [out, in]} as PyTorch stores them, so a projection is {@code y = x·Wᵀ + b}.
 * When {@code W_Q}, {@code W_K}, {@code W_V} are rows of one packed tensor (PyTorch's {@code in_proj_weight}),
 * {@link #packedQkv()} is that tensor and self-attention projects Q, K and V with one matrix product.
 * The tensors are the caller's (copies in its arena when {@link #load loaded}); the caller keeps their arena
 * open.
 */
public final class MhaWeights {
    private final int embedDim;
    private final int heads;
    private final int kvHeads;
    private final int headDim;
    private final Tensor wq;
    private final Tensor wk;
    private final Tensor wv;
    private final Tensor wo;
    private final Tensor bq;
    private final Tensor bk;
    private final Tensor bv;
    private final Tensor bo;
    private final Tensor wqkv;
    private final Tensor wkv;

    private MhaWeights(int heads, int kvHeads, int embedDim, Tensor wq, Tensor bq, Tensor wk, Tensor bk,
                       Tensor wv, Tensor bv, Tensor wo, Tensor bo, Tensor wqkv, Tensor wkv) {
        this.embedDim = embedDim;
        this.heads = heads;
        this.kvHeads = kvHeads;
        this.headDim = embedDim / heads;
        this.wq = wq;
        this.wk = wk;
        this.wv = wv;
        this.wo = wo;
        this.bq = bq;
        this.bk = bk;
        this.bv = bv;
        this.bo = bo;
        this.wqkv = wqkv;
        this.wkv = wkv;
    }

    /**
     * Separate projections: {@code wq [E, E]}, {@code wk [Hkv·Dh, E]}, {@code wv [Hkv·Dh, E]},
     * {@code wo [E, E]}, each bias {@code null} or a vector of the weight's row count. Each weight needs unit
     * stride along its rows; {@code Hkv} is taken from {@code wk}.
     *
     * @throws IllegalArgumentException naming the tensor and its shape when a shape does not fit {@code E} and
     *                                  {@code H}
     */
    public static MhaWeights of(int heads, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv,
                                Tensor wo, Tensor bo) {
        return of(heads, wq, bq, wk, bk, wv, bv, wo, bo, new String[] {"wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"});
    }

    /** {@link #of} with the names errors use for the eight tensors (file names when loading). */
    private static MhaWeights of(int heads, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv,
                                 Tensor wo, Tensor bo, String[] n) {
        Objects.requireNonNull(wq, "wq is null");
        Objects.requireNonNull(wk, "wk is null");
        Objects.requireNonNull(wv, "wv is null");
        Objects.requireNonNull(wo, "wo is null");
        int e = embed(heads, wq, n[0], true);
        int dh = e / heads;
        int kvd = rows(wk, n[2], e);
        int hkv = kvHeads(heads, dh, kvd, wk, n[2]);
        matrix(wv, n[4], kvd, e);
        matrix(wo, n[6], e, e);
        vector(bq, n[1], e);
        vector(bk, n[3], kvd);
        vector(bv, n[5], kvd);
        vector(bo, n[7], e);
        return new MhaWeights(heads, hkv, e, wq, bq, wk, bk, wv, bv, wo, bo, null, null);
    }

    /**
     * Packed input projection as in {@code nn.MultiheadAttention}: {@code inProj [E + 2·Hkv·Dh, E]} holds
     * W_Q, W_K, W_V as consecutive row blocks, {@code inBias} (or {@code null}) the matching biases;
     * {@code wo [E, E]}, {@code bo [E]} or {@code null}.
     *
     * @throws IllegalArgumentException naming the tensor and its shape when a shape does not fit {@code E} and
     *                                  {@code H}
     */
    public static MhaWeights packed(int heads, Tensor inProj, Tensor inBias, Tensor wo, Tensor bo) {
        return packed(heads, inProj, inBias, wo, bo, "");
    }

    /** {@link #packed} with the prefix of the file names errors use. */
    private static MhaWeights packed(int heads, Tensor inProj, Tensor inBias, Tensor wo, Tensor bo, String p) {
        Objects.requireNonNull(inProj, "inProj is null");
        Objects.requireNonNull(wo, "wo is null");
        int e = embed(heads, inProj, p + "in_proj_weight", false);
        int dh = e / heads;
        long r = inProj.size(0);
        if (r <= e || (r - e) % (2L * dh) != 0) {
            throw new IllegalArgumentException(inProj.describe(p + "in_proj_weight") + ": expected [E + 2*Hkv*Dh, E] with E="
                    + e + ", Dh=" + dh + " (for Hkv=H: " + Shapes.format(3L * e, e) + ")");
        }
        int kvd = (int) ((r - e) / 2);
        int hkv = kvHeads(heads, dh, kvd, inProj, p + "in_proj_weight");
        matrix(wo, p + "out_proj.weight", e, e);
        vector(inBias, p + "in_proj_bias", r);
        vector(bo, p + "out_proj.bias", e);
        Tensor wq = inProj.slice(0, 0, e);
        Tensor wk = inProj.slice(0, e, e + kvd);
        Tensor wv = inProj.slice(0, e + kvd, e + 2L * kvd);
        Tensor bq = inBias == null ? null : inBias.slice(0, 0, e);
        Tensor bk = inBias == null ? null : inBias.slice(0, e, e + kvd);
        Tensor bv = inBias == null ? null : inBias.slice(0, e + kvd, e + 2L * kvd);
        return new MhaWeights(heads, hkv, e, wq, bq, wk, bk, wv, bv, wo, bo, inProj, inProj.slice(0, e, r));
    }

    /**
     * Loads one layer from a safetensors file, under {@code prefix} ({@code ""} or e.g.
     * {@code "model.layers.0.self_attn"}; a trailing dot is optional). Recognizes PyTorch
     * {@code nn.MultiheadAttention} names ({@code in_proj_weight}, {@code in_proj_bias}, {@code out_proj.weight},
     * {@code out_proj.bias}) and Hugging Face names ({@code q_proj}, {@code k_proj}, {@code v_proj},
     * {@code o_proj} or {@code out_proj}, each {@code .weight} with optional {@code .bias}). Every tensor is
     * copied (F16/BF16 converted, F64 rounded to float32) into {@code arena}, so the file may be closed and even truncated afterwards;
     * only a file opened with {@link Safetensors.Load#MAPPED} leaves F32 tensors as views of its mapping (those at
     * an address that is a multiple of 4; others are copied, aligned).
     *
     * <p>The layer applies no positional encoding. Decoder layers that rotate q and k by position (rotary
     * embeddings, RoPE: Llama, Mistral, Qwen2 and most Hugging Face decoders) load, since the rotation has no
     * weights, but compute another function than the model's; a file that saved the rotation's frequencies
     * ({@code rotary_emb.inv_freq}) under the prefix is refused.
     *
     * @param prefix  the names' prefix; {@code null} is the empty one
     * @param kvHeads the number of key/value heads, or 0 to infer it from the shapes
     * @param arena   where the tensors are copied; required even when a mapping leaves every tensor in place
     * @throws SafetensorsException naming the file and tensor when a tensor is missing or its shape does not fit
     * @throws IllegalArgumentException when {@code heads < 1} or {@code kvHeads < 0}
     */
    public static MhaWeights load(Safetensors st, String prefix, int heads, int kvHeads, Arena arena)
            throws SafetensorsException {
        Objects.requireNonNull(st, "st is null");
        Objects.requireNonNull(arena, "arena is null");
        String p = prefix == null || prefix.isEmpty() || prefix.endsWith(".") ? (prefix == null ? "" : prefix)
                : prefix + ".";
        if (heads <= 0) {
            throw new IllegalArgumentException("heads must be positive, got " + heads);
        }
        if (kvHeads < 0) {
            throw new IllegalArgumentException("kv heads must be positive (or 0 to infer), got " + kvHeads);
        }
        try {
            MhaWeights w;
            refuseUnsupported(st, p);
            if (st.contains(p + "in_proj_weight")) {
                refuseUnused(st, p, PACKED_NAMES);
                w = packed(heads, st.tensor(p + "in_proj_weight", arena), optional(st, p + "in_proj_bias", arena),
                        st.tensor(p + "out_proj.weight", arena), optional(st, p + "out_proj.bias", arena), p);
            } else if (st.contains(p + "q_proj.weight")) {
                String o = st.contains(p + "o_proj.weight") ? p + "o_proj." : p + "out_proj.";
                String other = o.equals(p + "o_proj.") ? p + "out_proj." : p + "o_proj.";
                if (!st.contains(o + "weight")) {
                    throw new SafetensorsException(st.file() + ": tensor '" + p + "o_proj.weight' (or '" + p
                            + "out_proj.weight') not found");
                }
                if (st.contains(other + "bias") && !st.contains(o + "bias") && !st.contains(other + "weight")) {
                    // a bias under the other family's name would otherwise be dropped without a word
                    throw new SafetensorsException(st.file() + ": tensor '" + other + "bias' belongs to no weight: the"
                            + " output projection is '" + o + "weight'");
                }
                refuseUnused(st, p, o.equals(p + "o_proj.") ? HF_NAMES : HF_OUT_PROJ_NAMES);
                String[] n = {p + "q_proj.weight", p + "q_proj.bias", p + "k_proj.weight", p + "k_proj.bias",
                        p + "v_proj.weight", p + "v_proj.bias", o + "weight", o + "bias"};
                w = of(heads, st.tensor(n[0], arena), optional(st, n[1], arena), st.tensor(n[2], arena),
                        optional(st, n[3], arena), st.tensor(n[4], arena), optional(st, n[5], arena),
                        st.tensor(n[6], arena), optional(st, n[7], arena), n);
            } else {
                throw new SafetensorsException(st.file() + ": no attention weights under prefix '" + p
                        + "': expected tensor '" + p + "in_proj_weight' (nn.MultiheadAttention) or '" + p
                        + "q_proj.weight' (Hugging Face)" + names(st));
            }
            if (kvHeads != 0 && w.kvHeads != kvHeads) {
                // the file's own tensor and shape (for in_proj_weight, w.wk is only its rows of K)
                String name = st.contains(p + "in_proj_weight") ? p + "in_proj_weight" : p + "k_proj.weight";
                throw new SafetensorsException(st.file() + ": tensor '" + name + "' " + st.entry(name).shapeString()
                        + ", its rows of K: " + w.kvHeads + " kv heads of Dh=" + w.headDim + ", not the " + kvHeads
                        + " requested");
            }
            return w;
        } catch (IllegalArgumentException e) {
            // shape errors from of()/packed() already name the tensor as the file does; add the file
            throw new SafetensorsException(st.file() + ": tensor " + e.getMessage());
        }
    }

    /** The tensors of a packed (nn.MultiheadAttention) layer, after the prefix. */
    private static final List<String> PACKED_NAMES = List.of("in_proj_weight", "in_proj_bias", "out_proj.weight",
            "out_proj.bias");
    /** The tensors of a Hugging Face layer with o_proj, after the prefix. */
    private static final List<String> HF_NAMES = List.of("q_proj.weight", "q_proj.bias", "k_proj.weight",
            "k_proj.bias", "v_proj.weight", "v_proj.bias", "o_proj.weight", "o_proj.bias");
    /** The same with the output projection named out_proj (some conversions). */
    private static final List<String> HF_OUT_PROJ_NAMES = List.of("q_proj.weight", "q_proj.bias", "k_proj.weight",
            "k_proj.bias", "v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias");
    /** Every attention tensor name either family uses: one the chosen family does not use would be ignored. */
    private static final List<String> ALL_NAMES = List.of("in_proj_weight", "in_proj_bias", "out_proj.weight",
            "out_proj.bias", "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
            "v_proj.bias", "o_proj.weight", "o_proj.bias");

    /**
     * Tensors under the prefix that ask for what this layer does not compute: nn.MultiheadAttention's
     * add_bias_kv (bias_k, bias_v), its kdim/vdim (q_proj_weight, k_proj_weight, v_proj_weight), the saved
     * frequencies of rotary position embeddings (rotary_emb.inv_freq and its cos/sin caches) and the
     * normalization of queries and keys some models apply (q_norm, k_norm, q_layernorm, k_layernorm). Loading
     * without them would compute another layer than the file's.
     */
    private static void refuseUnsupported(Safetensors st, String p) throws SafetensorsException {
        for (String extra : new String[] {"bias_k", "bias_v"}) {
            if (st.contains(p + extra)) {
                throw new SafetensorsException(st.file() + ": tensor '" + p + extra
                        + "': nn.MultiheadAttention(add_bias_kv=True) is not supported");
            }
        }
        // nn.MultiheadAttention(kdim=.., vdim=..) other than embed_dim writes these instead of in_proj_weight: keys
        // and values of kdim and vdim features, which this layer (kv [B, Lkv, E]) does not take
        StringBuilder separate = new StringBuilder();
        for (String n : new String[] {"q_proj_weight", "k_proj_weight", "v_proj_weight"}) {
            if (st.contains(p + n)) {
                separate.append(separate.isEmpty() ? "" : ", ").append('\'').append(p).append(n).append("' ")
                        .append(st.entry(p + n).shapeString());
            }
        }
        if (!separate.isEmpty()) {
            throw new SafetensorsException(st.file() + ": tensor " + separate + ": nn.MultiheadAttention with kdim"
                    + " or vdim other than embed_dim (separate q/k/v_proj_weight) is not supported: keys and values"
                    + " must have E features, as in_proj_weight [3E, E] gives them");
        }
        // rotary position embeddings rotate q and k after the projections: a computation with no weights, so a file
        // shows it only where a checkpoint saved the buffer of frequencies (older Hugging Face Llama-family files,
        // GPT-NeoX). Loading it would compute attention without the rotation, silently another function.
        for (String rope : new String[] {"rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached"}) {
            if (st.contains(p + rope)) {
                throw new SafetensorsException(st.file() + ": tensor '" + p + rope + "' " + st.entry(p + rope)
                        .shapeString() + ": rotary position embeddings (RoPE) are not supported (this layer"
                        + " applies no positional encoding and would compute without them)");
            }
        }
        for (String norm : new String[] {"q_norm.", "k_norm.", "q_layernorm.", "k_layernorm."}) {
            for (String part : new String[] {"weight", "bias"}) {
                if (st.contains(p + norm + part)) {
                    throw new SafetensorsException(st.file() + ": tensor '" + p + norm + part + "': normalization of"
                            + " queries and keys is not supported (this layer would compute without it)");
                }
            }
        }
    }

    /**
     * Refuses an attention tensor under the prefix that the chosen family does not use: both families in one
     * file, a bias under the other family's name, or two names for the output projection. It would be dropped
     * without a word, and the layer would differ from the file's.
     */
    private static void refuseUnused(Safetensors st, String p, List<String> used) throws SafetensorsException {
        for (String n : ALL_NAMES) {
            if (!used.contains(n) && st.contains(p + n)) {
                throw new SafetensorsException(st.file() + ": tensor '" + p + n + "' would be ignored: this layer's"
                        + " weights are " + (used == PACKED_NAMES ? "'" + p + "in_proj_weight' and '" + p
                        + "out_proj.weight'" : "'" + p + "q_proj.weight' ... '" + p + used.get(6) + "'")
                        + " (one naming per layer)");
            }
        }
    }

    private static String names(Safetensors st) {
        StringBuilder sb = new StringBuilder(" (the file has ");
        int i = 0;
        for (String n : st.entries().keySet()) {
            if (i == 8) {
                sb.append(", ...");
                break;
            }
            sb.append(i++ == 0 ? "'" : ", '").append(n).append('\'');
        }
        return i == 0 ? " (the file has no tensors)" : sb.append(')').toString();
    }

    private static Tensor optional(Safetensors st, String name, Arena arena) throws SafetensorsException {
        return st.contains(name) ? st.tensor(name, arena) : null;
    }

    private static int embed(int heads, Tensor w, String name, boolean square) {
        if (heads <= 0) {
            throw new IllegalArgumentException("heads must be positive, got " + heads);
        }
        if (w.rank() != 2) {
            throw new IllegalArgumentException(w.describe(name) + ": expected a matrix [rows, E]");
        }
        long e = w.size(1);
        if (e == 0 || e > Integer.MAX_VALUE / 4) {
            throw new IllegalArgumentException(w.describe(name) + ": embedding dimension E=" + e + " out of range");
        }
        if (e % heads != 0) {
            throw new IllegalArgumentException(w.describe(name) + ": E=" + e + " is not divisible by H=" + heads);
        }
        if (square && w.size(0) != e) {
            throw new IllegalArgumentException(w.describe(name) + ": expected [E, E] = " + Shapes.format(e, e));
        }
        unitRows(w, name);
        return (int) e;
    }

    private static int rows(Tensor w, String name, int e) {
        if (w.rank() != 2 || w.size(1) != e || w.size(0) == 0 || w.size(0) > Integer.MAX_VALUE / 4) {
            throw new IllegalArgumentException(w.describe(name) + ": expected [Hkv*Dh, E] with E=" + e);
        }
        unitRows(w, name);
        return (int) w.size(0);
    }

    private static int kvHeads(int heads, int dh, int kvd, Tensor w, String name) {
        if (kvd % dh != 0) {
            throw new IllegalArgumentException(w.describe(name) + ": K/V width " + kvd
                    + " is not a multiple of Dh=" + dh);
        }
        int hkv = kvd / dh;
        if (heads % hkv != 0) {
            throw new IllegalArgumentException(w.describe(name) + ": H=" + heads + " is not a multiple of Hkv=" + hkv);
        }
        return hkv;
    }

    private static void matrix(Tensor w, String name, long r, long c) {
        if (w.rank() != 2 || w.size(0) != r || w.size(1) != c) {
            throw new IllegalArgumentException(w.describe(name) + ": expected " + Shapes.format(r, c));
        }
        unitRows(w, name);
    }

    private static void unitRows(Tensor w, String name) {
        if (w.size(1) > 1 && w.stride(1) != 1 || w.size(0) > 1 && w.stride(0) < w.size(1)
                || w.stride(0) > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(w.describe(name) + " with strides "
                    + java.util.Arrays.toString(w.strides()) + ": rows must be unit-stride and not overlap");
        }
    }

    private static void vector(Tensor b, String name, long n) {
        if (b == null) {
            return;
        }
        if (b.rank() != 1 || b.size(0) != n) {
            throw new IllegalArgumentException(b.describe(name) + ": expected [" + n + "]");
        }
    }

    /** Embedding dimension {@code E}. */
    public int embedDim() {
        return embedDim;
    }

    /** Number of query heads {@code H}. */
    public int heads() {
        return heads;
    }

    /** Number of key/value heads {@code Hkv}; {@code H} is a multiple of it. */
    public int kvHeads() {
        return kvHeads;
    }

    /** Head dimension {@code Dh = E / H}. */
    public int headDim() {
        return headDim;
    }

    /** Width of the K (and of the V) projection, {@code Hkv·Dh}. */
    public int kvDim() {
        return kvHeads * headDim;
    }

    /** {@code W_Q [E, E]}. */
    public Tensor wq() {
        return wq;
    }

    /** {@code W_K [Hkv·Dh, E]}. */
    public Tensor wk() {
        return wk;
    }

    /** {@code W_V [Hkv·Dh, E]}. */
    public Tensor wv() {
        return wv;
    }

    /** {@code W_O [E, E]}. */
    public Tensor wo() {
        return wo;
    }

    /** Bias of Q {@code [E]}, or {@code null}. */
    public Tensor bq() {
        return bq;
    }

    /** Bias of K {@code [Hkv·Dh]}, or {@code null}. */
    public Tensor bk() {
        return bk;
    }

    /** Bias of V {@code [Hkv·Dh]}, or {@code null}. */
    public Tensor bv() {
        return bv;
    }

    /** Bias of the output projection {@code [E]}, or {@code null}. */
    public Tensor bo() {
        return bo;
    }

    /** {@code [W_Q; W_K; W_V] [E + 2·Hkv·Dh, E]} when the three are one packed tensor, else {@code null}. */
    public Tensor packedQkv() {
        return wqkv;
    }

    /** {@code [W_K; W_V] [2·Hkv·Dh, E]} when the two are one packed tensor, else {@code null}. */
    public Tensor packedKv() {
        return wkv;
    }
}
