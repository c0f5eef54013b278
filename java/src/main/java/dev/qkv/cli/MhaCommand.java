package dev.qkv.cli;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.OpenBlas;
import dev.qkv.io.Npy;
import dev.qkv.io.Safetensors;
import dev.qkv.mha.MhaWeights;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/** {@code mha}: a multi-head attention layer with weights from a {@code .safetensors} file, over {@code .npy} inputs. */
final class MhaCommand implements Command {

    @Override
    public String name() {
        return "mha";
    }

    @Override
    public String usage() {
        return "mha --x X.npy [--kv KV.npy] --weights W.safetensors --heads H [--kv-heads N] [--prefix P] [--causal]"
                + " [--mask M.npy] [--scale S] [--backend native|java] --out Y.npy";
    }

    @Override
    public String summary() {
        return "Y [B, L, E] = multi-head attention of x [B, L, E] (keys and values from kv [B, Lkv, E], default x;"
                + " batch first: nn.MultiheadAttention's default, batch_first=False, is [L, B, E]);"
                + " weights as torch nn.MultiheadAttention (in_proj_weight, out_proj.*) or Hugging Face"
                + " (q_proj/k_proj/v_proj/o_proj) names under an optional prefix; F32, F16, BF16 or F64 (rounded to float32)."
                + " A bool --mask"
                + " is true where a query MAY attend, as F.scaled_dot_product_attention's attn_mask (the opposite of"
                + " nn.MultiheadAttention's attn_mask and key_padding_mask, which are true where it may not); a float"
                + " mask is added to the scaled scores; an integer mask (int64 as a Hugging Face attention_mask, uint8, ...) is"
                + " bool, non-zero = may attend. The scores are scaled by --scale, default"
                + " 1/sqrt(E/H). Default backend native"
                + " (auto and reference also accepted).";
    }

    @Override
    public int run(List<String> args, PrintStream out, PrintStream err) throws UsageException, IOException {
        Flags f = Flags.parse(name(), args,
                Set.of("x", "kv", "weights", "heads", "kv-heads", "prefix", "mask", "scale", "backend", "out"),
                Set.of("causal"));
        Path xPath = f.requirePath("x");
        Path kvPath = f.path("kv");
        Path wPath = f.requirePath("weights");
        int heads = Flags.parseInt("--heads", f.require("heads"), 1, Integer.MAX_VALUE);
        int kvHeads = f.intValue("kv-heads", 0, 1, Integer.MAX_VALUE);
        String prefix = f.get("prefix", "");
        Path maskPath = f.path("mask");
        Backend backend = SdpaCommand.backend(f.get("backend", "native"));
        boolean causal = f.has("causal");
        float scale = f.has("scale") ? SdpaCommand.scale(f.get("scale", null)) : Float.NaN;
        Path outPath = f.requirePath("out");
        Npy.checkTarget(outPath);
        Inputs.requireOutputIsNoInput(name(), "--out", outPath, "--x", xPath, "--kv", kvPath, "--weights", wPath,
                "--mask", maskPath);
        if (backend == Backend.NATIVE) {
            // a missing library becomes one error line here, before any class that needs it is initialised
            OpenBlas.get();
        }

        // shared: the engine's pool threads may only touch memory of a shared (or global/auto) arena
        try (Arena arena = Arena.ofShared()) {
            MhaWeights weights;
            // the default Load.COPY: the weights are copied into the arena and the file closes right here, so a
            // file truncated by another process during the run cannot fault inside OpenBLAS
            try (Arena file = Arena.ofConfined()) {
                weights = MhaWeights.load(Safetensors.open(wPath, file), prefix, heads, kvHeads, arena);
            }
            MultiHeadAttention layer;
            try {
                layer = MultiHeadAttention.create(weights, backend);
            } catch (IllegalArgumentException e) {
                throw new UsageException(wPath + ": " + e.getMessage());
            }
            int e = weights.embedDim();
            Tensor x = Inputs.floats("x", Npy.read(xPath, arena), xPath);
            rank3(x, "x", "[B, L, " + e + "]", xPath, e, -1);
            Tensor kv = null;
            if (kvPath != null) {
                kv = Inputs.floats("kv", Npy.read(kvPath, arena), kvPath);
                rank3(kv, "kv", "[" + x.size(0) + ", Lkv, " + e + "]", kvPath, e, x.size(0));
            }
            long lkv = kv == null ? x.size(1) : kv.size(1);
            Mask mask = null;
            if (maskPath != null) {
                // integers too ('<i8' is a Hugging Face attention_mask as np.save writes it), read as booleans
                mask = SdpaCommand.mask(Npy.readMask(maskPath, arena));
            }
            SdpaOptions options = new SdpaOptions(causal, mask, scale);
            Tensor y;
            long nanos;
            try {
                // physical memory first: Linux overcommits, and the JVM would be killed while the memory is zeroed
                Inputs.requireFits("out [B, L, E] = [" + x.size(0) + ", " + x.size(1) + ", " + e + "] and the"
                        + " layer's workspace", Math.addExact(Math.multiplyExact(Math.multiplyExact(x.size(0),
                        x.size(1)), (long) e * Float.BYTES), layer.workspaceBytes(x.size(0), x.size(1), lkv)));
                y = Tensor.allocate(arena, x.size(0), x.size(1), e);
                MhaWorkspace ws = layer.newWorkspace(arena, x.size(0), x.size(1), lkv);
                warmUp(layer, x, kv, arena, ws);
                long t0 = System.nanoTime();
                layer.forward(x, kv, y, options, ws);
                nanos = System.nanoTime() - t0;
            } catch (IllegalArgumentException ex) {
                throw new UsageException(SdpaCommand.refusal(ex, mask, x.size(0), weights.heads(), lkv, "Lkv"));
            } catch (ArithmeticException ex) {
                throw new UsageException(ex.getMessage());
            } catch (OutOfMemoryError ex) {
                throw new UsageException(SdpaCommand.outOfMemory("out [B, L, E] = [" + x.size(0) + ", " + x.size(1)
                        + ", " + e + "] and the layer's workspace", ex));
            }
            String summary = String.format(Locale.ROOT,
                    "mha backend=%s x=%s kv=%s E=%d H=%d Hkv=%d mask=%s causal=%s out=%s ms=%.3f",
                    backend.cliName(), x.shapeString(), kv == null ? "x" : kv.shapeString(), e, weights.heads(),
                    weights.kvHeads(), SdpaCommand.maskSummary(mask), causal, y.shapeString(), nanos / 1e6);
            // printed before the file replaces anything: a lost summary (> /dev/full) fails the run with no output
            Main.writeWithSummary(outPath, y, out, summary);
        }
        return 0;
    }

    /**
     * One query row against one key row: links the downcalls and loads the classes of the layer's entry, so the
     * time printed leaves out that start-up work. It is still a cold call: the kernels of a longer call are compiled
     * (and its memory first touched) inside the time, as README says.
     */
    private static void warmUp(MultiHeadAttention layer, Tensor x, Tensor kv, Arena arena, MhaWorkspace ws) {
        if (x.size(0) == 0 || x.size(1) == 0 || kv != null && kv.size(1) == 0) {
            return;
        }
        Tensor x1 = x.slice(0, 0, 1).slice(1, 0, 1);
        Tensor kv1 = kv == null ? null : kv.slice(0, 0, 1).slice(1, 0, 1);
        layer.forward(x1, kv1, Tensor.allocate(arena, 1, 1, x.size(2)), SdpaOptions.DEFAULT, ws);
    }

    private static void rank3(Tensor t, String name, String dims, Path file, long e, long batch)
            throws UsageException {
        if (t.rank() != 3 || t.size(2) != e || batch >= 0 && t.size(0) != batch) {
            throw new UsageException(file + ": " + t.describe(name) + ": expected " + dims
                    + " (E from the weights)");
        }
    }
}
