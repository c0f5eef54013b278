package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Random attention calls, valid and deliberately invalid, on every backend.
 *
 * <p>Valid calls (random shapes with loop tails, GQA ratios, every mask kind and broadcast shape, causal with
 * {@code Lq} below and above {@code Lk}, scales, non-contiguous and broadcast views, with and without a caller
 * workspace of exactly {@link Attention#workspaceBytes} bytes) must match {@link Backend#REFERENCE} within
 * {@code atol + rtol·|ref|}, and leave every element of the output's segment outside the view untouched.
 * Invalid calls must throw {@link IllegalArgumentException} or {@link IllegalStateException}
 * ({@link NullPointerException} naming the argument for a null one) and leave the output's memory untouched.
 */
class SdpaFuzzTest {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /** A value no kernel produces, written over the output's whole segment before each call. */
    private static final float SENTINEL = Float.intBitsToFloat(0x7fa5a5a5);

    private static final Attention REFERENCE = Attention.create(Backend.REFERENCE);
    private static final Attention[] FAST = {Attention.create(Backend.NATIVE), Attention.create(Backend.JAVA)};

    /** One generated call. */
    static final class Case {
        long b;
        long hq;
        long hkv;
        long lq;
        long lk;
        long dk;
        long dv;
        Tensor q;
        Tensor k;
        Tensor v;
        Tensor out;
        SdpaOptions options;
        String layouts;
        String mask = "none";
        String mutation = "none";
        boolean useWorkspace;

        @Override
        public String toString() {
            return "B=" + b + " Hq=" + hq + " Hkv=" + hkv + " Lq=" + lq + " Lk=" + lk + " Dk=" + dk + " Dv=" + dv
                    + " causal=" + (options == null ? "?" : options.causal()) + " scale="
                    + (options == null ? "?" : options.scale()) + " mask=" + mask + " layouts=" + layouts
                    + " workspace=" + useWorkspace + " mutation=" + mutation + " q=" + q + " k=" + k + " v=" + v
                    + " out=" + out;
        }
    }

    @Test
    void randomCallsMatchTheReferenceOrAreRejectedCleanly() {
        long seed = Fuzz.seed("sdpa");
        Random r = new Random(seed);
        int cases = Fuzz.iterations(700);
        int valid = 0;
        int rejected = 0;
        List<String> rejections = new ArrayList<>();
        for (int it = 0; it < cases; it++) {
            try (Arena arena = Arena.ofConfined()) {
                Case c = generate(arena, r, r.nextInt(10) < 6);
                String what = "seed=" + seed + " case " + it + ": " + c;
                boolean expectValid = c.mutation.equals("none");
                if (expectValid) {
                    Tensor ref = Tensor.allocate(arena, c.out.shape());
                    REFERENCE.sdpa(c.q, c.k, c.v, ref, c.options);
                    for (Attention att : FAST) {
                        runValid(arena, att, c, ref, what + " backend=" + att.backend());
                    }
                    valid++;
                } else {
                    for (Attention att : new Attention[] {FAST[0], FAST[1], REFERENCE}) {
                        if (att == REFERENCE && c.mutation.equals("workspace too small")) {
                            continue; // the reference computes without the workspace, so any size will do
                        }
                        String msg = runInvalid(arena, att, c, what + " backend=" + att.backend());
                        if (att == REFERENCE && rejections.size() < 12 && r.nextInt(8) == 0) {
                            rejections.add(c.mutation + " -> " + msg);
                        }
                    }
                    rejected++;
                }
            }
        }
        System.out.printf("sdpa fuzz seed=%d: %d valid, %d invalid cases, e.g.:%n  %s%n", seed, valid, rejected,
                String.join("\n  ", rejections));
        assertTrue(valid > cases / 3 && rejected > cases / 5, valid + " valid, " + rejected + " invalid");
    }

    private static void runValid(Arena arena, Attention att, Case c, Tensor ref, String what) {
        fillSentinel(c.out);
        float[] before = c.out.segment().toArray(ValueLayout.JAVA_FLOAT);
        try {
            if (c.useWorkspace) {
                long bytes = att.workspaceBytes(c.q, c.k, c.v, c.out, c.options);
                att.sdpa(c.q, c.k, c.v, c.out, c.options, Workspace.allocate(arena, bytes));
            } else {
                att.sdpa(c.q, c.k, c.v, c.out, c.options);
            }
        } catch (RuntimeException | Error e) {
            fail(what + ": valid call threw " + e, e);
        }
        double scale = Math.abs(c.options.scaleFor(c.dk));
        // score error ~ |scale|·Dk·u, weighted-sum error ~ Lk·u (|q|, |k|, |v| <= 1)
        double atol = 8 * Fuzz.EPS * (scale * c.dk + c.lk + 16);
        double rtol = 8 * Fuzz.EPS;
        float[] got = c.out.toArray();
        float[] want = ref.toArray();
        List<String> bad = new ArrayList<>();
        for (int i = 0; i < got.length && bad.size() < 5; i++) {
            double err = Math.abs(got[i] - want[i]);
            if (!(err <= atol + rtol * Math.abs(want[i])) && !(Float.isNaN(got[i]) && Float.isNaN(want[i]))) {
                bad.add("out" + Arrays.toString(coords(c.out.shape(), i)) + "=" + got[i] + " ref=" + want[i]);
            }
        }
        assertEquals(List.of(), bad, what + " (atol=" + atol + ", rtol=" + rtol + ")");
        // nothing outside the view may change: padding, the gaps of a strided view, the slack after it
        boolean[] inView = new boolean[before.length];
        long[] shape = c.out.shape();
        for (int i = 0; i < got.length; i++) {
            inView[(int) c.out.index(coords(shape, i))] = true;
        }
        float[] after = c.out.segment().toArray(ValueLayout.JAVA_FLOAT);
        for (int e = 0; e < after.length; e++) {
            if (!inView[e] && Float.floatToRawIntBits(after[e]) != Float.floatToRawIntBits(before[e])) {
                fail(what + ": element " + e + " of out's segment, outside the view, changed to " + after[e]);
            }
        }
    }

    private static String runInvalid(Arena arena, Attention att, Case c, String what) {
        boolean outAlive = c.out == null || c.out.isAlive();
        if (c.out != null && outAlive) {
            fillSentinel(c.out);
        }
        float[] before = c.out != null && outAlive ? c.out.segment().toArray(ValueLayout.JAVA_FLOAT) : null;
        String message = null;
        try {
            if (c.useWorkspace) {
                att.sdpa(c.q, c.k, c.v, c.out, c.options, workspaceFor(arena, c));
            } else {
                att.sdpa(c.q, c.k, c.v, c.out, c.options);
            }
        } catch (IllegalArgumentException | IllegalStateException e) {
            if (c.mutation.startsWith("null ")) {
                fail(what + ": a null argument threw " + e + ", not NullPointerException", e);
            }
            message = e.getMessage();
        } catch (NullPointerException e) {
            // the API's rule: a null argument is a NullPointerException whose message starts with its name
            if (!c.mutation.startsWith("null ") || e.getMessage() == null
                    || !e.getMessage().startsWith(c.mutation.substring("null ".length()) + " is null")) {
                fail(what + ": threw " + e, e);
            }
            message = e.getMessage();
        } catch (RuntimeException | Error e) {
            fail(what + ": threw an undocumented " + e, e);
        }
        if (message == null) {
            fail(what + ": invalid call was accepted");
        }
        if (before != null) {
            float[] after = c.out.segment().toArray(ValueLayout.JAVA_FLOAT);
            assertTrue(Arrays.equals(before, after), what + ": a rejected call wrote into out");
        }
        return message;
    }

    private static Workspace workspaceFor(Arena arena, Case c) {
        return switch (c.mutation) {
            case "workspace too small" -> Workspace.allocate(arena, 0);
            case "workspace closed" -> {
                Arena gone = Arena.ofConfined();
                Workspace w = Workspace.allocate(gone, 1 << 20);
                gone.close();
                yield w;
            }
            default -> Workspace.allocate(arena, 1 << 20);
        };
    }

    private static void fillSentinel(Tensor out) {
        MemorySegment s = out.segment();
        for (long i = 0; i < s.byteSize() / Float.BYTES; i++) {
            s.setAtIndex(F, i, SENTINEL);
        }
    }

    static long[] coords(long[] shape, int flat) {
        long[] c = new long[shape.length];
        long rest = flat;
        for (int d = shape.length - 1; d >= 0; d--) {
            c[d] = rest % shape[d];
            rest /= shape[d];
        }
        return c;
    }

    private static long dim(Random r, boolean positive) {
        return !positive && r.nextInt(30) == 0 ? 0 : Fuzz.pick(r, 1, 2, 3, 7, 17, 63, 64, 65, 70);
    }

    /** A random call; unless {@code valid}, one argument is then broken in one documented way. */
    static Case generate(Arena arena, Random r, boolean valid) {
        Case c = new Case();
        boolean positive = !valid;
        do {
            c.b = r.nextInt(30) == 0 && !positive ? 0 : 1 + r.nextInt(3);
            c.hkv = 1 + r.nextInt(3);
            c.hq = c.hkv * Fuzz.pick(r, 1, 1, 2, 3, 4);
            c.lq = dim(r, positive);
            c.lk = dim(r, positive);
            c.dk = r.nextInt(30) == 0 && !positive ? 0 : Fuzz.pick(r, 1, 3, 7, 16, 17, 64, 65);
            c.dv = r.nextInt(30) == 0 && !positive ? 0 : Fuzz.pick(r, 1, 3, 7, 16, 17, 64, 65);
        } while (c.b * c.hq * c.lq * c.lk * (c.dk + c.dv) > 200_000);
        Layouts lq = pickInput(r);
        Layouts lk = pickInput(r);
        Layouts lv = pickInput(r);
        Layouts lo = Layouts.OUTPUT[r.nextInt(Layouts.OUTPUT.length)];
        c.layouts = "q:" + lq + " k:" + lk + " v:" + lv + " out:" + lo;
        c.q = make(arena, r, lq, c.b, c.hq, c.lq, c.dk);
        c.k = make(arena, r, lk, c.b, c.hkv, c.lk, c.dk);
        c.v = make(arena, r, lv, c.b, c.hkv, c.lk, c.dv);
        c.out = lo.make(arena, r, new long[] {c.b, c.hq, c.lq, c.dv}, new float[(int) (c.b * c.hq * c.lq * c.dv)]);
        float scale = switch (r.nextInt(6)) {
            case 0 -> 1.7f;
            case 1 -> -0.5f;
            case 2 -> 0f;
            default -> Float.NaN;
        };
        if (c.dk == 0 && Float.isNaN(scale)) {
            scale = 1f;
        }
        Mask mask = r.nextInt(3) == 0 ? null : mask(arena, r, c);
        c.options = new SdpaOptions(r.nextBoolean(), mask, scale);
        c.useWorkspace = r.nextInt(4) == 0;
        if (!valid) {
            breakOne(arena, r, c);
        }
        return c;
    }

    private static Layouts pickInput(Random r) {
        return Layouts.values()[r.nextInt(Layouts.values().length)];
    }

    private static Tensor make(Arena arena, Random r, Layouts layout, long... shape) {
        long n = shape[0] * shape[1] * shape[2] * shape[3];
        return layout.make(arena, r, shape, Fuzz.uniform(r, (int) n));
    }

    /** A boolean or additive mask in one of the documented broadcast shapes (rank 1 to 4), sometimes stored transposed. */
    private static Mask mask(Arena arena, Random r, Case c) {
        long[][] shapes = {
            {c.lq, c.lk}, {1, c.lk}, {c.b, 1, c.lq, c.lk}, {c.b, c.hq, c.lq, c.lk}, {c.b, 1, 1, c.lk},
            {1, 1, 1, c.lk}, {1, c.hq, 1, c.lk}, {c.lk}, {c.hq, c.lq, c.lk}, {c.hq, 1, c.lk}, {1, c.lq, c.lk},
            // one value per query row, for every key (a last dimension of 1, as torch broadcasts it)
            {c.lq, 1}, {c.b, 1, c.lq, 1}, {c.b, c.hq, c.lq, 1}, {1}};
        long[] s = shapes[r.nextInt(shapes.length)];
        boolean bool = r.nextBoolean();
        int n = (int) Arrays.stream(s).reduce(1, (x, y) -> x * y);
        float[] values = new float[n];
        long rowLen = s[s.length - 1];
        boolean killRows = r.nextInt(3) == 0;
        for (int i = 0; i < n; i++) {
            boolean deadRow = killRows && rowLen > 0 && (i / rowLen) % 3 == 0;
            if (bool) {
                values[i] = deadRow || r.nextInt(10) < 3 ? 0f : 1f;
            } else {
                values[i] = deadRow || r.nextInt(10) < 2 ? Float.NEGATIVE_INFINITY : r.nextFloat() * 4 - 2;
            }
        }
        Tensor t;
        if (r.nextInt(4) == 0 && s.length >= 2) {
            long[] swapped = s.clone();
            swapped[s.length - 1] = s[s.length - 2];
            swapped[s.length - 2] = s[s.length - 1];
            t = Tensor.allocate(arena, swapped).transpose().copyFrom(values);
        } else {
            t = Tensor.of(arena, values, s);
        }
        c.mask = (bool ? "bool " : "additive ") + t.shapeString() + (t.isContiguous() ? "" : " transposed")
                + (killRows ? " with dead rows" : "");
        return bool ? Mask.allowed(t) : Mask.additive(t);
    }

    /** Breaks exactly one argument of an otherwise valid call (all dimensions are positive here). */
    private static void breakOne(Arena arena, Random r, Case c) {
        int which = r.nextInt(17);
        switch (which) {
            case 0 -> {
                c.q = Tensor.allocate(arena, c.b * c.hq, c.lq, c.dk);
                c.mutation = "q rank 3";
            }
            case 1 -> {
                c.out = Tensor.allocate(arena, 1, c.b, c.hq, c.lq, c.dv);
                c.mutation = "out rank 5";
            }
            case 2 -> {
                c.k = Tensor.allocate(arena, c.b + 1, c.hkv, c.lk, c.dk);
                c.mutation = "k batch differs";
            }
            case 3 -> {
                c.k = Tensor.allocate(arena, c.b, c.hkv, c.lk, c.dk + 1);
                c.mutation = "k Dk differs";
            }
            case 4 -> {
                c.v = Tensor.allocate(arena, c.b, c.hkv, c.lk + 1, c.dv);
                c.mutation = "v Lk differs";
            }
            case 5 -> {
                long h = c.hq + 1;
                c.k = Tensor.allocate(arena, c.b, h, c.lk, c.dk);
                c.v = Tensor.allocate(arena, c.b, h, c.lk, c.dv);
                c.mutation = "Hq % Hkv != 0";
            }
            case 6 -> {
                c.out = Tensor.allocate(arena, c.b, c.hq, c.lq, c.dv + 1);
                c.mutation = "out Dv differs";
            }
            case 7 -> {
                // aligned from the right, each size the scores' or 1, rank 1 to 4: each breaks that
                long[][] bad = {{c.lq, c.lk + 1}, {c.lq + 1, c.lk}, {c.hq + 1, c.lq, c.lk}, {c.b, c.hq + 1, c.lq, c.lk},
                    {c.b + 1, 1, c.lq, c.lk}, {c.lk + 1}, {1, c.b, c.hq, c.lq, c.lk}};
                long[] s = bad[r.nextInt(bad.length)];
                if (s.length == 2 && s[0] == c.lq + 1 && c.lq + 1 == 1) {
                    s = new long[] {c.lq, c.lk + 1};
                }
                Tensor m = Tensor.allocate(arena, s);
                c.options = c.options.withMask(r.nextBoolean() ? Mask.allowed(m) : Mask.additive(m));
                c.mask = "bad " + m.shapeString();
                c.mutation = "mask does not broadcast";
            }
            case 8 -> {
                // out and one input are views of one segment whose element ranges intersect
                Tensor in = r.nextBoolean() ? c.q : r.nextBoolean() ? c.k : c.v;
                long[] shape = {c.b, c.hq, c.lq, c.dv};
                long n = c.b * c.hq * c.lq * c.dv;
                long inEnd = in.endElement();
                long floats = Math.max(inEnd, n) + inEnd;
                MemorySegment seg = arena.allocate(floats * Float.BYTES, 64);
                // the raw floats under `in`, so that a broadcast `in` (several elements at one address) is copied too
                MemorySegment.copy(in.segment(), 0, seg, 0, inEnd * Float.BYTES);
                Tensor shared = Tensor.view(seg, in.offset(), in.shape(), in.strides());
                long start = in.offset() + r.nextInt((int) Math.max(1, inEnd - in.offset()));
                c.out = Tensor.view(seg, start, shape, contiguous(shape));
                c.mutation = "out overlaps " + (in == c.q ? "q" : in == c.k ? "k" : "v");
                if (in == c.q) {
                    c.q = shared;
                } else if (in == c.k) {
                    c.k = shared;
                } else {
                    c.v = shared;
                }
            }
            case 9 -> {
                if (c.hq > 1) {
                    c.out = Tensor.allocate(arena, c.b, 1, c.lq, c.dv).broadcastTo(c.b, c.hq, c.lq, c.dv);
                } else {
                    c.out = Tensor.allocate(arena, c.b, c.hq, 1, c.dv).broadcastTo(c.b, c.hq, c.lq, c.dv);
                }
                c.mutation = c.hq > 1 || c.lq > 1 ? "out broadcast (stride 0)" : "none";
                if (c.mutation.equals("none")) {
                    c.out = Tensor.allocate(arena, c.b, c.hq, c.lq, c.dv + 2);
                    c.mutation = "out Dv differs";
                }
            }
            case 10, 11 -> {
                Arena gone = Arena.ofConfined();
                String name = new String[] {"q", "k", "v", "out", "mask"}[r.nextInt(5)];
                switch (name) {
                    case "q" -> c.q = Tensor.allocate(gone, c.q.shape());
                    case "k" -> c.k = Tensor.allocate(gone, c.k.shape());
                    case "v" -> c.v = Tensor.allocate(gone, c.v.shape());
                    case "out" -> c.out = Tensor.allocate(gone, c.out.shape());
                    default -> c.options = c.options.withMask(Mask.allowed(Tensor.allocate(gone, c.lq, c.lk)));
                }
                gone.close();
                c.mutation = "closed arena of " + name;
            }
            case 12 -> {
                c.q = Tensor.allocate(arena, c.b, c.hq, c.lq, 0);
                c.k = Tensor.allocate(arena, c.b, c.hkv, c.lk, 0);
                c.options = new SdpaOptions(c.options.causal(), c.options.mask(), Float.NaN);
                c.mutation = "Dk=0 with the default scale";
            }
            case 13 -> {
                if (r.nextBoolean()) {
                    c.options = null;
                    c.mutation = "null options";
                } else {
                    c.v = null;
                    c.mutation = "null v";
                }
            }
            case 14 -> {
                c.useWorkspace = true;
                c.mutation = r.nextBoolean() ? "workspace too small" : "workspace closed";
                // 200 keys make the score tile alone larger than the smallest workspace (64 bytes)
                c.lk = 200;
                c.k = Tensor.allocate(arena, c.b, c.hkv, c.lk, c.dk);
                c.v = Tensor.allocate(arena, c.b, c.hkv, c.lk, c.dv);
                c.options = c.options.withMask(null);
            }
            case 15 -> {
                // out overlapping the mask
                long[] shape = {c.b, c.hq, c.lq, c.dv};
                long n = c.b * c.hq * c.lq * c.dv;
                MemorySegment seg = arena.allocate((n + c.lq * c.lk) * Float.BYTES, 64);
                Tensor m = Tensor.view(seg, n / 2, new long[] {c.lq, c.lk}, new long[] {c.lk, 1}).fill(1f);
                c.out = Tensor.view(seg, 0, shape, contiguous(shape));
                c.options = c.options.withMask(Mask.allowed(m));
                c.mask = "bool " + m.shapeString() + " inside out";
                c.mutation = n / 2 < n ? "out overlaps mask" : "none";
            }
            default -> {
                c.out = Tensor.allocate(arena, c.b, c.hq, c.lq + 1, c.dv);
                c.mutation = "out Lq differs";
            }
        }
    }

    private static long[] contiguous(long[] shape) {
        long[] st = new long[shape.length];
        long s = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            st[i] = s;
            s *= shape[i];
        }
        return st;
    }
}
