package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Empty tensors (some dimension 0) are valid no-op arguments whatever their strides, zero included: every shape
 * relation is still checked, nothing outside the view is read or written, and no native call is made. An empty
 * k or v with {@code Lq > 0} leaves every row without a key, so, as documented, the output rows are zeros.
 */
class EmptySdpaTest {
    private static final float SENTINEL = Float.intBitsToFloat(0x7fa5a5a5);

    static Stream<Named<Attention>> engines() {
        List<Named<Attention>> out = new ArrayList<>();
        for (Backend b : Backend.values()) {
            for (int threads : new int[] {1, 2}) {
                out.add(Named.of(b + "/" + threads, Attention.create(b, threads)));
            }
        }
        return out.stream();
    }

    /** A view of shape {@code s} with stride 0 on every dimension: legal only because it reaches nothing. */
    private static Tensor zeroStrides(Arena arena, long... s) {
        return Tensor.view(arena.allocate(16, 64), 3, s, new long[s.length]);
    }

    private static Tensor heapZeroStrides(long... s) {
        return Tensor.view(MemorySegment.ofArray(new float[1]), 0, s, new long[s.length]);
    }

    private static Tensor rand(Arena arena, Random r, long... s) {
        return Fuzz.random(arena, r, s);
    }

    /** Calls sdpa with a sentinel-filled output segment and returns the segment afterwards. */
    private static float[] call(Attention att, Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions o,
                                boolean workspace, Arena arena) {
        if (out.segment().byteSize() > 0 && !out.segment().isReadOnly()) {
            out.segment().fill((byte) 0xa5);
            for (long i = 0; i < out.segment().byteSize() / 4; i++) {
                out.segment().setAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, i, SENTINEL);
            }
        }
        if (workspace) {
            att.sdpa(q, k, v, out, o, Workspace.allocate(arena, att.workspaceBytes(q, k, v, out, o)));
        } else {
            att.sdpa(q, k, v, out, o);
        }
        return out.segment().toArray(ValueLayout.JAVA_FLOAT);
    }

    private static void untouched(float[] seg, String what) {
        for (int i = 0; i < seg.length; i++) {
            assertEquals(Float.floatToRawIntBits(SENTINEL), Float.floatToRawIntBits(seg[i]),
                    what + ": element " + i + " of out's segment was written");
        }
    }

    @ParameterizedTest
    @MethodSource("engines")
    void emptyOutputsWithZeroStridesAreNoOps(Attention att) {
        Random r = new Random(11);
        long[][] qkvo = {
            // {B, Hq, Hkv, Lq, Lk, Dk, Dv}: one zero at a time, and several
            {0, 2, 1, 5, 7, 8, 4}, {3, 0, 0, 5, 7, 8, 4}, {2, 2, 1, 0, 7, 8, 4}, {2, 2, 1, 5, 7, 8, 0},
            {0, 4, 2, 0, 0, 8, 4}, {1, 2, 2, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0},
        };
        try (Arena arena = Arena.ofShared()) {
            for (long[] d : qkvo) {
                for (boolean ws : new boolean[] {false, true}) {
                    String what = att.backend() + " [B, Hq, Hkv, Lq, Lk, Dk, Dv]=" + java.util.Arrays.toString(d)
                            + " workspace=" + ws;
                    long b = d[0];
                    long hq = d[1];
                    long hkv = d[2];
                    long lq = d[3];
                    long lk = d[4];
                    long dk = d[5];
                    long dv = d[6];
                    // inputs: zero strides where they are empty, dense random data where they are not
                    Tensor q = b * hq * lq * dk == 0 ? zeroStrides(arena, b, hq, lq, dk) : rand(arena, r, b, hq, lq, dk);
                    Tensor k = b * hkv * lk * dk == 0 ? zeroStrides(arena, b, hkv, lk, dk)
                            : rand(arena, r, b, hkv, lk, dk);
                    Tensor v = b * hkv * lk * dv == 0 ? zeroStrides(arena, b, hkv, lk, dv)
                            : rand(arena, r, b, hkv, lk, dv);
                    Tensor out = zeroStrides(arena, b, hq, lq, dv);
                    Tensor bias = zeroStrides(arena, b, hq, lq, lk);
                    for (SdpaOptions o : new SdpaOptions[] {SdpaOptions.DEFAULT.withScale(0.5f),
                        SdpaOptions.CAUSAL.withScale(0.5f).withMask(Mask.additive(bias))}) {
                        untouched(call(att, q, k, v, out, o, ws, arena), what);
                    }
                }
            }
        }
    }

    /** Empty heap tensors are accepted by the native backend too: nothing reaches OpenBLAS. */
    @ParameterizedTest
    @MethodSource("engines")
    void emptyHeapTensorsAreNoOpsOnEveryBackend(Attention att) {
        Tensor q = heapZeroStrides(2, 3, 0, 8);
        Tensor k = heapZeroStrides(2, 3, 0, 8);
        Tensor v = heapZeroStrides(2, 3, 0, 4);
        Tensor out = heapZeroStrides(2, 3, 0, 4);
        att.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
        assertEquals(0f, out.segment().getAtIndex(ValueLayout.JAVA_FLOAT, 0), 0f);
    }

    /**
     * An empty k and v ({@code Lk = 0}, any strides) with {@code Lq > 0}: no row has a key to attend, so every
     * output row is zeros (never NaN), and nothing outside the output view is written.
     */
    @ParameterizedTest
    @MethodSource("engines")
    void noKeysGiveZeroRows(Attention att) {
        Random r = new Random(12);
        try (Arena arena = Arena.ofShared()) {
            for (long lq : new long[] {1, 7, 64, 65, 130}) {
                for (boolean causal : new boolean[] {false, true}) {
                    Tensor q = rand(arena, r, 2, 4, lq, 8);
                    Tensor k = zeroStrides(arena, 2, 2, 0, 8);
                    Tensor v = zeroStrides(arena, 2, 2, 0, 5);
                    // out: a strided view with padding, filled with a sentinel that must survive outside it
                    MemorySegment seg = arena.allocate(2 * 4 * lq * 7 * 4L + 40, 64);
                    Tensor out = Tensor.view(seg, 3, new long[] {2, 4, lq, 5}, new long[] {4 * lq * 7, lq * 7, 7, 1});
                    Tensor mask = zeroStrides(arena, 1, 1, lq, 0);
                    for (SdpaOptions o : new SdpaOptions[] {new SdpaOptions(causal, null, Float.NaN),
                        new SdpaOptions(causal, Mask.allowed(mask), 2f)}) {
                        String what = att.backend() + " Lq=" + lq + " " + o;
                        float[] after = call(att, q, k, v, out, o, false, arena);
                        boolean[] inView = new boolean[after.length];
                        for (long b = 0; b < 2; b++) {
                            for (long h = 0; h < 4; h++) {
                                for (long i = 0; i < lq; i++) {
                                    for (long d = 0; d < 5; d++) {
                                        int e = (int) out.index(b, h, i, d);
                                        inView[e] = true;
                                        assertEquals(0f, after[e], 0f, what + " out[" + b + "," + h + "," + i + ","
                                                + d + "]");
                                        assertEquals(0, Float.floatToRawIntBits(after[e]), what + ": +0, not -0");
                                    }
                                }
                            }
                        }
                        for (int e = 0; e < after.length; e++) {
                            assertTrue(inView[e] || Float.floatToRawIntBits(after[e])
                                    == Float.floatToRawIntBits(SENTINEL), what + ": element " + e + " outside out");
                        }
                    }
                }
            }
        }
    }

    /** Shapes are still checked when a tensor is empty: a mismatch names the tensor. */
    @ParameterizedTest
    @MethodSource("engines")
    void emptyTensorsStillHaveTheirShapesChecked(Attention att) {
        try (Arena arena = Arena.ofShared()) {
            Tensor q = zeroStrides(arena, 0, 2, 5, 8);
            Tensor k = zeroStrides(arena, 0, 1, 7, 8);
            Tensor v = zeroStrides(arena, 0, 1, 7, 4);
            String[][] bad = {{"k", "batch"}, {"v", "expected"}, {"out", "expected"}, {"k", "Dk"}};
            Tensor[][] args = {
                {q, zeroStrides(arena, 1, 1, 7, 8), v, zeroStrides(arena, 0, 2, 5, 4)},
                {q, k, zeroStrides(arena, 0, 1, 6, 4), zeroStrides(arena, 0, 2, 5, 4)},
                {q, k, v, zeroStrides(arena, 0, 2, 5, 3)},
                {q, zeroStrides(arena, 0, 1, 7, 0), v, zeroStrides(arena, 0, 2, 5, 4)},
            };
            for (int i = 0; i < args.length; i++) {
                Tensor[] a = args[i];
                IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(
                        IllegalArgumentException.class, () -> att.sdpa(a[0], a[1], a[2], a[3], SdpaOptions.DEFAULT));
                assertTrue(e.getMessage().startsWith(bad[i][0] + " [") && e.getMessage().contains(bad[i][1]),
                        att.backend() + " case " + i + ": " + e.getMessage());
            }
        }
    }
}
