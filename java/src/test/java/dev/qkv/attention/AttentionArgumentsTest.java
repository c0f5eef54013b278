package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import java.util.function.Function;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Bad arguments throw a Java exception that names the tensor and its shape, on every backend, before any
 * kernel runs: the NaN sentinel in {@code out} must survive every rejected call.
 */
class AttentionArgumentsTest {

    static Stream<Named<Backend>> backends() {
        return Stream.of(Backend.values()).map(b -> Named.of(b.cliName(), b));
    }

    /** Expects {@code type} with a message containing every fragment, and {@code out} untouched. */
    private static <T extends Throwable> void rejects(Class<T> type, Tensor out, Runnable call, String... fragments) {
        T e = assertThrows(type, call::run);
        for (String f : fragments) {
            assertTrue(e.getMessage() != null && e.getMessage().contains(f),
                    "message \"" + e.getMessage() + "\" should contain \"" + f + "\"");
        }
        if (out != null && out.isAlive()) {
            for (float x : out.toArray()) {
                assertTrue(Float.isNaN(x), "out was written before the arguments were rejected");
            }
        }
    }

    private static Tensor nan(Arena arena, long... shape) {
        return Tensor.allocate(arena, shape).fill(Float.NaN);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void hqNotAMultipleOfHkv(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 4, 8, 16);
            Tensor k = Tensor.allocate(arena, 1, 3, 8, 16);
            Tensor v = Tensor.allocate(arena, 1, 3, 8, 16);
            Tensor out = nan(arena, 1, 4, 8, 16);
            rejects(IllegalArgumentException.class, out,
                    () -> Attention.create(backend).sdpa(q, k, v, out, SdpaOptions.DEFAULT),
                    // both shapes, with their dimensions' names: the message named k alone, and the user had to
                    // find Hq in a q shown nowhere
                    "q [1, 4, 8, 16] = [B, Hq, Lq, Dk], k [1, 3, 8, 16] = [B, Hkv, Lk, Dk]: Hq=4 is not a multiple"
                            + " of Hkv=3");
        }
    }

    /** sdpa names its scores' dimensions in a mask's refusal, as the layer names its own. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void aMaskThatDoesNotBroadcastIsNamedInSdpasTerms(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 2, 4, 3, 8);
            Tensor k = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor v = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor out = nan(arena, 2, 4, 3, 8);
            Tensor m = Tensor.allocate(arena, 3, 4);
            rejects(IllegalArgumentException.class, out,
                    () -> Attention.create(backend).sdpa(q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.additive(m))),
                    "mask [3, 4]: not broadcastable to [2, 4, 3, 5] = [B, Hq, Lq, Lk] (aligned from the right, as in"
                            + " [Lk], [Lq, Lk], [Hq, Lq, Lk] or [B, Hq, Lq, Lk]; any size may be 1)");
        }
    }

    /**
     * nn.MultiheadAttention's 3-D attn_mask is [B·num_heads, L, S]; here a rank-3 mask is [Hq, Lq, Lk] (NumPy's
     * broadcast), so with B > 1 it is refused: the refusal says how to pass it (reshape to [B, Hq, Lq, Lk]), and
     * only when its first size is B·Hq. Before, the generic broadcast error left the user to find out why.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void aTorchStyleBatchTimesHeadsMaskIsRefusedWithAReshapeHint(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 2, 4, 3, 8);
            Tensor k = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor v = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor out = nan(arena, 2, 4, 3, 8);
            Tensor torch = Tensor.allocate(arena, 8, 3, 5);
            Attention a = Attention.create(backend);
            rejects(IllegalArgumentException.class, out,
                    () -> a.sdpa(q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.additive(torch))),
                    "mask [8, 3, 5]: not broadcastable to [2, 4, 3, 5] = [B, Hq, Lq, Lk]",
                    "; a [B·Hq, Lq, Lk] mask (nn.MultiheadAttention's 3-D attn_mask) reads here as [Hq, Lq, Lk]:"
                            + " reshape it to [2, 4, 3, 5] (Tensor.reshape)");
            // a first size other than B·Hq gets no hint
            IllegalArgumentException other = assertThrows(IllegalArgumentException.class, () -> a.sdpa(q, k, v, out,
                    SdpaOptions.DEFAULT.withMask(Mask.additive(Tensor.allocate(arena, 6, 3, 5)))));
            assertFalse(other.getMessage().contains("reshape"), other.getMessage());
            // and the hint is right: the reshaped mask is accepted
            assertDoesNotThrow(() -> a.sdpa(q, k, v, out,
                    SdpaOptions.DEFAULT.withMask(Mask.additive(torch.reshape(2, 4, 3, 5)))));
        }
    }

    /**
     * The reshape hint since a mask's last dimension may be 1: a torch-style {@code [B·Hq, Lq, 1]} mask must be told
     * to become {@code [B, Hq, Lq, 1]} (its own last size; the hint said {@code [.., Lk]}, which no reshape of it can
     * give), and a {@code [B·Hq, Lq, X]} mask whose X is neither Lk nor 1 gets no hint (it named a reshape of 8·3·7
     * elements to 2·4·3·5). Found in review. The property: whatever shape the hint names, the mask reshaped to it is
     * accepted.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void theReshapeHintKeepsTheMasksOwnLastSize(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 2, 4, 3, 8);
            Tensor k = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor v = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor out = nan(arena, 2, 4, 3, 8);
            Tensor perRow = Tensor.allocate(arena, 8, 3, 1);
            Attention a = Attention.create(backend);
            rejects(IllegalArgumentException.class, out,
                    () -> a.sdpa(q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.additive(perRow))),
                    "mask [8, 3, 1]: not broadcastable to [2, 4, 3, 5] = [B, Hq, Lq, Lk]",
                    "reshape it to [2, 4, 3, 1] (Tensor.reshape)");
            assertDoesNotThrow(() -> a.sdpa(q, k, v, out,
                    SdpaOptions.DEFAULT.withMask(Mask.additive(perRow.reshape(2, 4, 3, 1)))));
            IllegalArgumentException wrongKeys = assertThrows(IllegalArgumentException.class, () -> a.sdpa(q, k, v,
                    out, SdpaOptions.DEFAULT.withMask(Mask.additive(Tensor.allocate(arena, 8, 3, 7)))));
            assertTrue(wrongKeys.getMessage().startsWith("mask [8, 3, 7]: not broadcastable"), wrongKeys.getMessage());
            assertFalse(wrongKeys.getMessage().contains("reshape"), wrongKeys.getMessage());
        }
    }

    /**
     * The reshape hint as a property over rank-3 masks {@code [n0, n1, n2]} refused for scores
     * {@code [2, 4, 3, 5]}: it is given exactly when the mask is a torch {@code [B·Hq, Lq|1, Lk|1]} one
     * ({@code n0 = 8}), and the shape it names is {@code [B, Hq, n1, n2]}: the mask's own elements, which reshaped
     * so are accepted. Mutation testing (round 24) found two mutants of {@link Mask#requireBroadcastsTo} that no
     * test caught: without {@code n0 % B == 0} a {@code [9, 3, 5]} mask (9 / 2 = 4 = Hq) was told to become
     * {@code [2, 4, 3, 5]}, 120 elements from 45; naming {@code Lq} for the mask's second size told a
     * {@code [8, 1, 5]} one to become {@code [2, 4, 3, 5]} too.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void theReshapeHintNamesTheMasksOwnElements(Backend backend) {
        java.util.regex.Pattern hint = java.util.regex.Pattern.compile(
                "reshape it to \\[(\\d+), (\\d+), (\\d+), (\\d+)\\] \\(Tensor\\.reshape\\)$");
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 2, 4, 3, 8);
            Tensor k = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor v = Tensor.allocate(arena, 2, 2, 5, 8);
            Tensor out = nan(arena, 2, 4, 3, 8);
            Attention a = Attention.create(backend);
            long[][] shapes = {{8, 3, 5}, {8, 1, 5}, {8, 3, 1}, {8, 1, 1}, {9, 3, 5}, {9, 1, 1}, {7, 3, 5},
                    {6, 3, 5}, {16, 3, 5}, {17, 1, 5}, {8, 2, 5}, {8, 3, 7}};
            for (long[] s : shapes) {
                Tensor m = Tensor.allocate(arena, s);
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> a.sdpa(q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.additive(m))));
                String msg = e.getMessage();
                boolean torch = s[0] == 2 * 4 && (s[1] == 1 || s[1] == 3) && (s[2] == 1 || s[2] == 5);
                java.util.regex.Matcher h = hint.matcher(msg);
                assertTrue(h.find() == torch, java.util.Arrays.toString(s) + ": hint expected " + torch + ": " + msg);
                if (torch) {
                    long[] to = {Long.parseLong(h.group(1)), Long.parseLong(h.group(2)), Long.parseLong(h.group(3)),
                            Long.parseLong(h.group(4))};
                    assertArrayEquals(new long[] {2, 4, s[1], s[2]}, to, msg);
                    assertDoesNotThrow(() -> a.sdpa(q, k, v, out,
                            SdpaOptions.DEFAULT.withMask(Mask.additive(m.reshape(to)))), msg);
                }
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void shapeMismatches(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 2, 4, 8, 16);
            Tensor k = Tensor.allocate(arena, 2, 2, 10, 16);
            Tensor v = Tensor.allocate(arena, 2, 2, 10, 5);
            Tensor out = nan(arena, 2, 4, 8, 5);
            SdpaOptions o = SdpaOptions.DEFAULT;
            // Dk of k differs from q
            Tensor k15 = Tensor.allocate(arena, 2, 2, 10, 15);
            rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, k15, v, out, o), "k [2, 2, 10, 15]", "Dk");
            // batch of k differs
            Tensor k1 = Tensor.allocate(arena, 1, 2, 10, 16);
            rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, k1, v, out, o), "k [1, 2, 10, 16]", "batch");
            // v has another Lk, Hkv or batch than k
            for (long[] s : new long[][] {{2, 2, 9, 5}, {2, 1, 10, 5}, {1, 2, 10, 5}}) {
                Tensor bad = Tensor.allocate(arena, s);
                rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, k, bad, out, o), bad.describe("v"));
            }
            // out of the wrong shape: Dv, Lq, Hq, B, rank
            for (long[] s : new long[][] {{2, 4, 8, 4}, {2, 4, 7, 5}, {2, 2, 8, 5}, {1, 4, 8, 5}}) {
                Tensor bad = nan(arena, s);
                rejects(IllegalArgumentException.class, bad, () -> a.sdpa(q, k, v, bad, o), bad.describe("out"),
                        "[2, 4, 8, 5]");
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void wrongRank(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 2, 8, 16);
            Tensor k = Tensor.allocate(arena, 1, 2, 8, 16);
            Tensor v = Tensor.allocate(arena, 1, 2, 8, 16);
            Tensor out = nan(arena, 1, 2, 8, 16);
            Tensor r3 = Tensor.allocate(arena, 2, 8, 16);
            Tensor r5 = Tensor.allocate(arena, 1, 1, 2, 8, 16);
            SdpaOptions o = SdpaOptions.DEFAULT;
            rejects(IllegalArgumentException.class, out, () -> a.sdpa(r3, k, v, out, o), "q [2, 8, 16]", "rank 4");
            rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, r5, v, out, o), "k [1, 1, 2, 8, 16]", "rank 4");
            rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, k, r3, out, o), "v [2, 8, 16]", "rank 4");
            Tensor out3 = nan(arena, 2, 8, 16);
            rejects(IllegalArgumentException.class, out3, () -> a.sdpa(q, k, v, out3, o), "out [2, 8, 16]", "rank 4");
            // null arguments: NullPointerException naming the parameter (the rule of Attention's class comment)
            rejects(NullPointerException.class, out, () -> a.sdpa(null, k, v, out, o), "q is null");
            rejects(NullPointerException.class, out, () -> a.sdpa(q, k, v, out, null), "options is null");
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void maskThatDoesNotBroadcast(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 2, 4, 8, 16);
            Tensor k = Tensor.allocate(arena, 2, 2, 10, 16);
            Tensor v = Tensor.allocate(arena, 2, 2, 10, 16);
            Tensor out = nan(arena, 2, 4, 8, 16);
            // (a last dimension of 1 broadcasts over the keys, as in torch: {2, 4, 8, 1} is no longer here)
            long[][] bad = {{8, 11}, {3, 10}, {8}, {2, 8, 10}, {2, 2, 8, 10}, {3, 1, 8, 10}, {2, 4, 8, 2},
                    {8, 9}, {2, 1, 2, 10}, {1, 1, 1, 2, 8, 10}};
            for (long[] s : bad) {
                Tensor m = Tensor.allocate(arena, s);
                for (Function<Tensor, Mask> kind : java.util.List.<Function<Tensor, Mask>>of(Mask::allowed, Mask::additive)) {
                    SdpaOptions o = SdpaOptions.DEFAULT.withMask(kind.apply(m));
                    rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, k, v, out, o), m.describe("mask"),
                            "[2, 4, 8, 10]");
                }
            }
        }
    }

    @Test
    void nonFiniteScale() {
        for (float s : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
            rejects(IllegalArgumentException.class, null, () -> SdpaOptions.DEFAULT.withScale(s), "scale", "finite");
        }
        rejects(IllegalArgumentException.class, null, () -> new SdpaOptions(true, null, Float.POSITIVE_INFINITY),
                "scale");
        assertDoesNotThrow(() -> SdpaOptions.DEFAULT.withScale(-0.5f));
    }

    /**
     * scoreTileBytes sizes a workspace for calls of up to lq query rows and lk keys: a negative length is no call,
     * and is refused as MultiHeadAttention.workspaceBytes refuses one. It returned the size for one row or key.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void scoreTileBytesRefusesNegativeLengths(Backend backend) {
        Attention a = Attention.create(backend);
        rejects(IllegalArgumentException.class, null, () -> a.scoreTileBytes(-1, 10), "lq=-1");
        rejects(IllegalArgumentException.class, null, () -> a.scoreTileBytes(10, -1), "lk=-1");
        assertTrue(a.scoreTileBytes(0, 0) >= 0);
    }

    /** Fewer than one thread, or a budget of no bytes, is refused by create and the builder alike. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void threadsAndBudgetBelowOneAreRefused(Backend backend) {
        for (int n : new int[] {0, -3}) {
            rejects(IllegalArgumentException.class, null, () -> Attention.create(backend, n), "threads must be >= 1");
            rejects(IllegalArgumentException.class, null, () -> Attention.builder().backend(backend).threads(n),
                    "threads must be >= 1");
        }
        rejects(IllegalArgumentException.class, null, () -> Attention.builder().workspaceBudget(0), "budget");
        assertTrue(Attention.create(backend, 1).threads() == 1);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void defaultScaleNeedsPositiveDk(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 1, 2, 0);
            Tensor k = Tensor.allocate(arena, 1, 1, 2, 0);
            Tensor v = Tensor.allocate(arena, 1, 1, 2, 3);
            Tensor out = nan(arena, 1, 1, 2, 3);
            rejects(IllegalArgumentException.class, out,
                    () -> Attention.create(backend).sdpa(q, k, v, out, SdpaOptions.DEFAULT), "q [1, 1, 2, 0]", "Dk=0");
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void closedArena(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena live = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(live, 1, 2, 4, 8);
            Tensor k = Tensor.allocate(live, 1, 2, 4, 8);
            Tensor v = Tensor.allocate(live, 1, 2, 4, 8);
            Tensor out = nan(live, 1, 2, 4, 8);
            Arena dead = Arena.ofConfined();
            Tensor dq = Tensor.allocate(dead, 1, 2, 4, 8);
            Tensor dout = Tensor.allocate(dead, 1, 2, 4, 8);
            Tensor dmask = Tensor.allocate(dead, 4, 4);
            dead.close();
            SdpaOptions o = SdpaOptions.DEFAULT;
            rejects(IllegalStateException.class, out, () -> a.sdpa(dq, k, v, out, o), "q [1, 2, 4, 8]", "closed");
            rejects(IllegalStateException.class, out, () -> a.sdpa(q, dq, v, out, o), "k [1, 2, 4, 8]", "closed");
            rejects(IllegalStateException.class, out, () -> a.sdpa(q, k, dq, out, o), "v [1, 2, 4, 8]", "closed");
            rejects(IllegalStateException.class, null, () -> a.sdpa(q, k, v, dout, o), "out [1, 2, 4, 8]", "closed");
            rejects(IllegalStateException.class, out, () -> a.sdpa(q, k, v, out, o.withMask(Mask.allowed(dmask))),
                    "mask [4, 4]", "closed");
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void outputOverlappingAnInput(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            Tensor big = Tensor.allocate(arena, 2, 1, 2, 8, 8);
            Tensor q = big.select(0, 0);
            Tensor k = Tensor.allocate(arena, 1, 2, 8, 8);
            Tensor v = Tensor.allocate(arena, 1, 2, 8, 8);
            SdpaOptions o = SdpaOptions.DEFAULT;
            rejects(IllegalArgumentException.class, null, () -> a.sdpa(q, k, v, q, o), "out [1, 2, 8, 8]", "overlaps q");
            rejects(IllegalArgumentException.class, null, () -> a.sdpa(q, k, v, k, o), "overlaps k");
            rejects(IllegalArgumentException.class, null, () -> a.sdpa(q, k, v, v, o), "overlaps v");
            // a partial overlap: out starts in the last row of q
            Tensor flat = big.reshape(2 * 2 * 8 * 8);
            Tensor shifted = Tensor.view(flat.segment(), 2 * 8 * 8 - 8, new long[] {1, 2, 8, 8},
                    new long[] {128, 64, 8, 1});
            rejects(IllegalArgumentException.class, null, () -> a.sdpa(q, k, v, shifted, o), "overlaps q");
            // out overlapping the mask
            Tensor m = Tensor.allocate(arena, 1, 2, 8, 8);
            rejects(IllegalArgumentException.class, null, () -> a.sdpa(q, k, v, m, o.withMask(Mask.additive(m))),
                    "overlaps mask");
            // out mapping several elements to one address (a broadcast view)
            Tensor row = Tensor.allocate(arena, 1, 1, 1, 8).fill(Float.NaN);
            Tensor broadcast = row.broadcastTo(1, 2, 8, 8);
            rejects(IllegalArgumentException.class, row, () -> a.sdpa(q, k, v, broadcast, o), "out [1, 2, 8, 8]",
                    "one address");
            // the adjacent half of the same allocation is not an overlap
            assertDoesNotThrow(() -> a.sdpa(q, k, v, big.select(0, 1), o));
        }
    }

    /**
     * Inputs given as read-only views of the output's heap array are refused as writable ones are.
     * {@link MemorySegment#heapBase} is empty for a read-only segment, and the overlap check compared heap bases:
     * such inputs passed for another array, and the Java backend computed into its own inputs (max error 4.37 at
     * {@code [1, 2, 64, 8]}). The native backend, which refuses heap memory, checks overlaps first and says so.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void readOnlyHeapInputsAliasingTheOutput(Backend backend) {
        Attention a = Attention.create(backend);
        final int head = 8 * 8;
        float[] arr = randomArray(3 * head, 11);
        float[] before = arr.clone();
        MemorySegment rw = MemorySegment.ofArray(arr);
        MemorySegment ro = rw.asReadOnly();
        Tensor in = Tensor.wrap(ro, 1, 2, 8, 8);
        // heads 1-2 of the array: out's head 0 is in's head 1
        Tensor out = Tensor.wrap(rw.asSlice((long) head * Float.BYTES), 1, 2, 8, 8);
        Tensor other = Tensor.wrap(MemorySegment.ofArray(randomArray(2 * head, 12)), 1, 2, 8, 8);
        Tensor mask = Tensor.wrap(ro.asSlice((long) head * Float.BYTES), 8, 8);
        SdpaOptions o = SdpaOptions.DEFAULT;
        rejects(IllegalArgumentException.class, null, () -> a.sdpa(in, in, in, out, o), "out [1, 2, 8, 8]",
                "overlaps q [1, 2, 8, 8]");
        rejects(IllegalArgumentException.class, null, () -> a.sdpa(other, in, other, out, o), "overlaps k");
        rejects(IllegalArgumentException.class, null, () -> a.sdpa(other, other, in, out, o), "overlaps v");
        rejects(IllegalArgumentException.class, null,
                () -> a.sdpa(other, other, other, out, o.withMask(Mask.additive(mask))), "overlaps mask");
        assertArrayEquals(before, arr, "a refused call wrote into the array");
    }

    /**
     * Read-only heap views that share no float with the output are not overlaps: views of other arrays (each at
     * offset 0 of its own, as the output is), and views of the output's own array beside it. Each call gives
     * what the same backend gives on writable copies.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void readOnlyHeapInputsBesideTheOutput(Backend backend) {
        if (backend == Backend.NATIVE) {
            return;  // heap memory: refused whatever it overlaps (readOnlyHeapInputsAliasingTheOutput)
        }
        Attention a = Attention.create(backend);
        final int n = 2 * 8 * 8;
        float[] q = randomArray(n, 21);
        float[] k = randomArray(n, 22);
        float[] v = randomArray(n, 23);
        float[] m = randomArray(8 * 8, 24);
        SdpaOptions o = SdpaOptions.CAUSAL.withMask(Mask.additive(heap(m.clone(), 8, 8)));
        Tensor want = heap(new float[n], 1, 2, 8, 8);
        a.sdpa(heap(q.clone(), 1, 2, 8, 8), heap(k.clone(), 1, 2, 8, 8), heap(v.clone(), 1, 2, 8, 8), want, o);

        // other arrays, read-only
        Tensor out = heap(new float[n], 1, 2, 8, 8);
        a.sdpa(readOnly(q, 1, 2, 8, 8), readOnly(k, 1, 2, 8, 8), readOnly(v, 1, 2, 8, 8), out,
                SdpaOptions.CAUSAL.withMask(Mask.additive(readOnly(m, 8, 8))));
        assertArrayEquals(want.toArray(), out.toArray(), 1e-6f);

        // one array [q | k | v | mask | out], the inputs through a read-only view of it
        float[] all = new float[4 * n + 8 * 8];
        System.arraycopy(q, 0, all, 0, n);
        System.arraycopy(k, 0, all, n, n);
        System.arraycopy(v, 0, all, 2 * n, n);
        System.arraycopy(m, 0, all, 3 * n, 8 * 8);
        MemorySegment rw = MemorySegment.ofArray(all);
        MemorySegment ro = rw.asReadOnly();
        long[] shape = {1, 2, 8, 8};
        long[] strides = {n, 8 * 8, 8, 1};
        Tensor shared = Tensor.view(rw, 3 * n + 8 * 8, shape, strides);
        a.sdpa(Tensor.view(ro, 0, shape, strides), Tensor.view(ro, n, shape, strides),
                Tensor.view(ro, 2 * n, shape, strides), shared,
                SdpaOptions.CAUSAL.withMask(Mask.additive(Tensor.view(ro, 3 * n, new long[] {8, 8},
                        new long[] {8, 1}))));
        assertArrayEquals(want.toArray(), shared.toArray(), 1e-6f);
    }

    private static float[] randomArray(int n, long seed) {
        Random r = new Random(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) r.nextGaussian();
        }
        return x;
    }

    private static Tensor heap(float[] x, long... shape) {
        return Tensor.wrap(MemorySegment.ofArray(x), shape);
    }

    private static Tensor readOnly(float[] x, long... shape) {
        return Tensor.wrap(MemorySegment.ofArray(x).asReadOnly(), shape);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void workspaceTooSmallOrClosed(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 2, 70, 8);
            Tensor k = Tensor.allocate(arena, 1, 2, 90, 8);
            Tensor v = Tensor.allocate(arena, 1, 2, 90, 8);
            Tensor out = nan(arena, 1, 2, 70, 8);
            SdpaOptions o = SdpaOptions.DEFAULT;
            long need = a.workspaceBytes(q, k, v, out, o);
            if (backend == Backend.REFERENCE) {
                return;
            }
            assertTrue(need >= 64L * 90 * Float.BYTES, "a 64-row score tile needs " + 64 * 90 * 4 + " bytes, got " + need);
            Workspace small = Workspace.allocate(arena, need - 4);
            rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, k, v, out, o, small), "workspace",
                    String.valueOf(need));
            Arena dead = Arena.ofConfined();
            Workspace closed = Workspace.allocate(dead, need);
            dead.close();
            rejects(IllegalStateException.class, out, () -> a.sdpa(q, k, v, out, o, closed), "workspace", "closed");
            rejects(IllegalArgumentException.class, null, () -> Workspace.allocate(arena, -1), "workspace");
            assertDoesNotThrow(() -> a.sdpa(q, k, v, out, o, Workspace.allocate(arena, need)));
        }
    }

    /**
     * Tensors over heap arrays: OpenBLAS cannot read them, so the native backend rejects each by name; the Java
     * backends read them like any other memory and agree with the reference on off-heap copies.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void heapTensors(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            java.util.Random r = new java.util.Random(3);
            long[] qs = {1, 2, 3, 4};
            long[] ks = {1, 1, 5, 4};
            Tensor q = Fixtures.random(arena, r, qs);
            Tensor k = Fixtures.random(arena, r, ks);
            Tensor v = Fixtures.random(arena, r, ks);
            Tensor out = nan(arena, qs);
            Tensor hq = Tensor.wrap(java.lang.foreign.MemorySegment.ofArray(q.toArray()), qs);
            Tensor hk = Tensor.wrap(java.lang.foreign.MemorySegment.ofArray(k.toArray()), ks);
            Tensor hv = Tensor.wrap(java.lang.foreign.MemorySegment.ofArray(v.toArray()), ks);
            Tensor hout = Tensor.wrap(java.lang.foreign.MemorySegment.ofArray(new float[24]), qs).fill(Float.NaN);
            SdpaOptions o = SdpaOptions.CAUSAL;
            if (backend == Backend.NATIVE) {
                rejects(IllegalArgumentException.class, out, () -> a.sdpa(hq, k, v, out, o), "q [1, 2, 3, 4]", "heap");
                rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, hk, v, out, o), "k [1, 1, 5, 4]", "heap");
                rejects(IllegalArgumentException.class, out, () -> a.sdpa(q, k, hv, out, o), "v [1, 1, 5, 4]", "heap");
                rejects(IllegalArgumentException.class, hout, () -> a.sdpa(q, k, v, hout, o), "out [1, 2, 3, 4]", "heap");
                return;
            }
            a.sdpa(hq, hk, hv, hout, o);
            Fixtures.run(Backend.REFERENCE, q, k, v, out, o);
            double tol = Fixtures.tol(4, 5, 1);
            Fixtures.assertClose(backend + " heap tensors", qs, hout.toArray(), out.toArray(), tol, tol);
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void moreQueryRowsThanAnIntCountsAreRefused(Backend backend) {
        try (Arena arena = Arena.ofConfined()) {
            // zero strides: 2^16 · 2^16 query rows over one float (before the fix: 0 tasks, nothing computed, no error)
            MemorySegment one = arena.allocate(4 * Float.BYTES, 64);
            long[] zeros = {0, 0, 0, 0};
            Tensor q = Tensor.view(one, 0, new long[] {1L << 16, 1L << 16, 1, 1}, zeros);
            Tensor k = Tensor.view(one, 1, new long[] {1L << 16, 1L << 16, 1, 1}, zeros);
            Tensor v = Tensor.view(one, 2, new long[] {1L << 16, 1L << 16, 1, 1}, zeros);
            // an output of one float repeated: the count is checked before the output's rows, so the message
            // says which limit the call passes
            Tensor out = Tensor.allocate(arena, 1, 1, 1, 1).broadcastTo(1L << 16, 1L << 16, 1, 1);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Attention.create(backend).sdpa(q, k, v, out, SdpaOptions.DEFAULT));
            assertTrue(e.getMessage().startsWith("q [65536, 65536, 1, 1]: B·Hq·Lq = 65536·65536·1 query rows exceed"),
                    e.getMessage());
        }
    }

    /**
     * {@code plan} ("how a call with these tensors would run") and {@code workspaceBytes} refuse what the call
     * refuses: on the native backend, heap tensors. They reported {@code kernel=native}, workers and a workspace
     * size for a call that {@code sdpa} then refused, naming q.
     */
    @Test
    void planAndWorkspaceBytesRefuseWhatTheNativeCallRefuses() {
        Attention at = Attention.create(Backend.NATIVE);
        Tensor q = heap(new float[2 * 8 * 16], 1, 2, 8, 16);
        Tensor k = heap(new float[2 * 8 * 16], 1, 2, 8, 16);
        Tensor v = heap(new float[2 * 8 * 16], 1, 2, 8, 16);
        Tensor out = heap(new float[2 * 8 * 16], 1, 2, 8, 16).fill(Float.NaN);
        String why = "q [1, 2, 8, 16]: a heap segment";
        rejects(IllegalArgumentException.class, out, () -> at.sdpa(q, k, v, out, SdpaOptions.DEFAULT), why);
        rejects(IllegalArgumentException.class, out, () -> at.plan(q, k, v, out, SdpaOptions.DEFAULT), why);
        rejects(IllegalArgumentException.class, out, () -> at.workspaceBytes(q, k, v, out, SdpaOptions.DEFAULT), why);
        try (Arena arena = Arena.ofConfined()) {
            Workspace ws = Workspace.allocate(arena, 1 << 16);
            rejects(IllegalArgumentException.class, out,
                    () -> at.workspaceBytes(q, k, v, out, SdpaOptions.DEFAULT, ws), why);
        }
        // the other backends run such tensors, and plan them
        for (Backend b : new Backend[] {Backend.JAVA, Backend.REFERENCE}) {
            assertDoesNotThrow(() -> Attention.create(b).plan(q, k, v, out, SdpaOptions.DEFAULT));
        }
    }

    /**
     * An output whose rows interleave ({@code [1, 2, 8, 8]} with strides {@code [128, 64, 4, 1]}: each row starts
     * in the middle of the one before) maps several elements to one address without a zero stride. The check
     * must hold each stride against the whole extent of the dimensions below it, not against their stride alone:
     * that mutant of SdpaArgs.noInternalOverlap passed every other test.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("backends")
    void outputWhoseRowsInterleave(Backend backend) {
        Attention a = Attention.create(backend);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, 1, 2, 8, 8);
            Tensor k = Tensor.allocate(arena, 1, 2, 8, 8);
            Tensor v = Tensor.allocate(arena, 1, 2, 8, 8);
            Tensor flat = nan(arena, 128);
            Tensor out = Tensor.view(flat.segment(), 0, new long[] {1, 2, 8, 8}, new long[] {128, 64, 4, 1});
            // independent of the check under test: Tensor compares the addresses themselves
            assertFalse(out.hasDistinctAddresses());
            rejects(IllegalArgumentException.class, flat, () -> a.sdpa(q, k, v, out, SdpaOptions.DEFAULT),
                    "out [1, 2, 8, 8]", "one address");
        }
    }
}
