package dev.qkv.cli;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.io.Npy;
import dev.qkv.io.NpyArray;
import dev.qkv.tensor.Shapes;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/** {@code sdpa}: scaled dot-product attention over {@code .npy} files, written atomically to another. */
final class SdpaCommand implements Command {

    @Override
    public String name() {
        return "sdpa";
    }

    @Override
    public String usage() {
        return "sdpa --q Q.npy --k K.npy --v V.npy [--mask M.npy] [--causal] [--scale S] [--backend native|java]"
                + " --out O.npy";
    }

    @Override
    public String summary() {
        return "out = softmax(scale * q k^T + mask) v for q [B, Hq, Lq, Dk], k [B, Hkv, Lk, Dk], v [B, Hkv, Lk, Dv];"
                + " bool masks allow, float masks add, integer masks (int64 as a Hugging Face attention_mask, int32, uint8, ...)"
                + " are bool: non-zero may attend; causal is aligned bottom-right. Default backend native"
                + " (auto and reference also accepted).";
    }

    @Override
    public int run(List<String> args, PrintStream out, PrintStream err) throws UsageException, IOException {
        Flags f = Flags.parse(name(), args, Set.of("q", "k", "v", "mask", "scale", "backend", "out"), Set.of("causal"));
        Path qPath = f.requirePath("q");
        Path kPath = f.requirePath("k");
        Path vPath = f.requirePath("v");
        Path outPath = f.requirePath("out");
        Path maskPath = f.path("mask");
        Backend backend = backend(f.get("backend", "native"));
        float scale = f.has("scale") ? scale(f.get("scale", null)) : Float.NaN;
        boolean causal = f.has("causal");
        // before any work, so that a long run does not end in vain
        Npy.checkTarget(outPath);
        Inputs.requireOutputIsNoInput(name(), "--out", outPath, "--q", qPath, "--k", kPath, "--v", vPath, "--mask",
                maskPath);

        Attention attention = Backends.create(backend);
        // shared: the engine's pool threads may only touch memory of a shared (or global/auto) arena
        try (Arena arena = Arena.ofShared()) {
            Tensor q = Inputs.floats("q", Npy.read(qPath, arena), qPath);
            Tensor k = Inputs.floats("k", Npy.read(kPath, arena), kPath);
            Tensor v = Inputs.floats("v", Npy.read(vPath, arena), vPath);
            NpyArray m = null;
            if (maskPath != null) {
                // integers too ('<i8' is a Hugging Face attention_mask as np.save writes it), read as booleans
                m = Npy.readMask(maskPath, arena);
            }
            rank4(q, "q", "[B, Hq, Lq, Dk]", qPath);
            rank4(v, "v", "[B, Hkv, Lk, Dv]", vPath);
            Mask mask = m == null ? null : mask(m);
            SdpaOptions options = new SdpaOptions(causal, mask, scale);
            Tensor o;
            long nanos;
            long[] outShape = {q.size(0), q.size(1), q.size(2), v.size(3)};
            try {
                // small files can ask for a large output: q [.., .., Lq, 1] and v [.., .., .., Dv] give Lq·Dv
                Inputs.requireFits("out [B, Hq, Lq, Dv] = " + Shapes.format(outShape),
                        Math.multiplyExact(Math.multiplyExact(Math.multiplyExact(Math.multiplyExact(outShape[0],
                                outShape[1]), outShape[2]), outShape[3]), (long) Float.BYTES));
            } catch (ArithmeticException e) {
                throw new UsageException("out [B, Hq, Lq, Dv] = " + Shapes.format(outShape)
                        + ": more bytes than a long holds");
            }
            try {
                o = Tensor.allocate(arena, outShape);
                // checks every argument first, so errors name the real tensors rather than the warm-up's slices
                attention.workspaceBytes(q, k, v, o, options);
                warmUp(attention, q, k, v, options, arena);
                long t0 = System.nanoTime();
                attention.sdpa(q, k, v, o, options);
                nanos = System.nanoTime() - t0;
            } catch (IllegalArgumentException e) {
                throw new UsageException(refusal(e, mask, q.size(0), q.size(1), k.rank() == 4 ? k.size(2) : -1,
                        "Lk"));
            } catch (OutOfMemoryError e) {
                throw new UsageException(outOfMemory("out [B, Hq, Lq, Dv] = " + Shapes.format(
                        new long[] {q.size(0), q.size(1), q.size(2), v.size(3)}), e));
            }
            String summary = String.format(Locale.ROOT,
                    "sdpa backend=%s q=%s k=%s v=%s mask=%s out=%s causal=%s ms=%.3f",
                    backend.cliName(), q.shapeString(), k.shapeString(), v.shapeString(),
                    maskSummary(mask), o.shapeString(), causal, nanos / 1e6);
            // printed before the file replaces anything: a lost summary (> /dev/full) fails the run with no output
            Main.writeWithSummary(outPath, o, out, summary);
        }
        return 0;
    }

    /**
     * One query row against the first head's keys, at a cost of Lk·Dk: it links the downcalls and loads the
     * classes of the call's entry, so the time printed leaves out that start-up work. It is still a cold call: one
     * query row takes the few-query path, so the block kernels of a longer call are compiled (and its memory first
     * touched) inside the time; README says so, and {@code bench} times steady calls.
     */
    private static void warmUp(Attention attention, Tensor q, Tensor k, Tensor v, SdpaOptions options, Arena arena) {
        if (q.elementCount() == 0 || k.elementCount() == 0 || v.elementCount() == 0) {
            return;
        }
        Tensor q1 = q.slice(0, 0, 1).slice(1, 0, 1).slice(2, 0, 1);
        Tensor k1 = k.slice(0, 0, 1).slice(1, 0, 1);
        Tensor v1 = v.slice(0, 0, 1).slice(1, 0, 1);
        attention.sdpa(q1, k1, v1, Tensor.allocate(arena, 1, 1, 1, v.size(3)), new SdpaOptions(false, null,
                options.scale()));
    }

    /** Parses a backend name: {@code native}, {@code java} or {@code reference}. */
    static Backend backend(String name) throws UsageException {
        try {
            return Backend.parse(name);
        } catch (IllegalArgumentException e) {
            throw new UsageException("--backend: " + e.getMessage());
        }
    }

    /**
     * The error line for a call refused with {@code e}: its message, with how to save the mask file when the mask is
     * one PyTorch users save in another shape. A {@code [B, Lk]} mask gets {@link #batchByKeysHint}; the hint for
     * {@code nn.MultiheadAttention}'s {@code [B·Hq, Lq, Lk]}, which names {@code Tensor.reshape} (a Java method, of
     * no use here), says NumPy's reshape instead: {@code np.save(path, m.reshape(B, Hq, Lq, Lk))}.
     */
    static String refusal(IllegalArgumentException e, Mask mask, long b, long hq, long lk, String keys) {
        String msg = String.valueOf(e.getMessage());
        if (mask == null || !msg.startsWith(mask.values().describe("mask") + ":")) {
            return msg; // not a refusal of the mask: no hint about how it was saved
        }
        Tensor m = mask.values();
        String java = " (Tensor.reshape)";
        if (m.rank() == 3 && msg.endsWith(java)) {
            return msg.substring(0, msg.length() - java.length()) + ": np.save(path, m.reshape(" + b + ", " + hq
                    + ", " + m.size(1) + ", " + m.size(2) + "))";
        }
        return msg + batchByKeysHint(m, b, lk, keys);
    }

    /**
     * For a refused mask {@code [B, Lk]} (a Hugging Face attention_mask saved as it is, which NumPy's broadcast
     * aligns with the scores' {@code [Lq, Lk]}): how to save it so it means what it says, naming the keys
     * {@code keys} as the rest of the error line does ({@code Lk} for sdpa, {@code Lkv} for the layer). Empty for
     * any other shape (the caller gives it only refusals of the mask); nothing is guessed, the mask is refused
     * either way.
     */
    private static String batchByKeysHint(Tensor m, long b, long lk, String keys) {
        if (m.rank() != 2 || b < 2 || m.size(0) != b || m.size(1) != lk) {
            return "";
        }
        return "; a [B, " + keys + "] key-padding mask (Hugging Face's attention_mask) must be saved as [B, 1, 1, "
                + keys + "]: np.save(path, m[:, None, None, :])";
    }

    /**
     * The mask of file {@code m}: bool (and integer) files allow, float ones add. A 0-d one is taken as it is:
     * {@link Mask} broadcasts it to every score, as PyTorch does.
     */
    static Mask mask(NpyArray m) {
        return m.isBool() ? Mask.allowed(m.tensor()) : Mask.additive(m.tensor());
    }

    /**
     * The summary line's {@code mask=}: {@code none}, or the kind and shape, e.g. {@code bool[1, 1, 1, 8]},
     * {@code float[]} for a 0-d one.
     */
    static String maskSummary(Mask mask) {
        return mask == null ? "none" : (mask.kind() == Mask.Kind.BOOLEAN ? "bool" : "float")
                + mask.values().shapeString();
    }

    /**
     * A decimal number such as {@code 0.125}, {@code -2} or {@code 1e-3}: not Java's float syntax ({@code 1f},
     * {@code 0x1p3}, {@code NaN}), and not a non-zero value that float32 rounds to 0 (which would silently make
     * the attention uniform) or to infinity.
     */
    static float scale(String text) throws UsageException {
        String t = text.strip();
        // possessive quantifiers: nothing to backtrack into, so a long argument is judged in linear time (with
        // greedy ones the digits before and after the point could split a run of digits every way: quadratic)
        if (!t.matches("[+-]?+([0-9]++\\.?+[0-9]*+|\\.[0-9]++)([eE][+-]?+[0-9]++)?+")) {
            throw new UsageException("--scale expects a number, got '" + text + "'");
        }
        float s = Float.parseFloat(t);
        if (!Float.isFinite(s)) {
            throw new UsageException("--scale must be finite, got '" + text + "' (beyond float32's range)");
        }
        if (s == 0 && t.split("[eE]")[0].matches(".*[1-9].*")) {
            throw new UsageException("--scale " + t + " is too small for float32: it rounds to 0, which makes every"
                    + " weight equal (give 0 if that is meant)");
        }
        return s;
    }

    /**
     * The message for memory the inputs' shapes ask for and the JVM cannot give: a user's mistake (or a machine
     * too small for the inputs), not an internal failure.
     */
    static String outOfMemory(String what, OutOfMemoryError e) {
        return what + ": not enough memory (" + e.getMessage() + "); the inputs' shapes ask for more than this JVM"
                + " can allocate";
    }

    private static void rank4(Tensor t, String name, String dims, Path file) throws UsageException {
        if (t.rank() != 4) {
            throw new UsageException(file + ": " + t.describe(name) + ": expected rank 4 " + dims);
        }
    }
}
