package dev.qkv.attention;

import dev.qkv.blas.SgemmArgs;
import dev.qkv.tensor.Shapes;
import dev.qkv.tensor.Tensor;

import java.util.Objects;

/**
 * The checks of one attention call, shared by every backend and run before any kernel touches memory.
 * Messages name the tensor and its shape: {@code q [1, 4, 8, 16] = [B, Hq, Lq, Dk], k [1, 3, 8, 16] =
 * [B, Hkv, Lk, Dk]: Hq=4 is not a multiple of Hkv=3}.
 */
final class SdpaArgs {
    /**
     * Largest Lq, Lk, Dk and Dv: the engines step through them in int blocks of up to 2^20 (rows, keys, the
     * block properties' bounds), and a step past 2^31 - 1 would wrap (a call that computed nothing, or a loop
     * that never ended). Only views with zero strides come near it.
     */
    static final long MAX_SIZE = Integer.MAX_VALUE - (1L << 21);

    private SdpaArgs() {
    }

    /**
     * Checks {@code q [B, Hq, Lq, Dk]}, {@code k [B, Hkv, Lk, Dk]}, {@code v [B, Hkv, Lk, Dv]},
     * {@code out [B, Hq, Lq, Dv]} and the options' mask.
     */
    static void validate(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        // the API's rule for null (see Attention): NullPointerException naming the parameter, in parameter order
        Objects.requireNonNull(q, "q is null");
        Objects.requireNonNull(k, "k is null");
        Objects.requireNonNull(v, "v is null");
        Objects.requireNonNull(out, "out is null");
        Objects.requireNonNull(options, "options is null (use SdpaOptions.DEFAULT)");
        rank4("q", q, "[B, Hq, Lq, Dk]");
        rank4("k", k, "[B, Hkv, Lk, Dk]");
        rank4("v", v, "[B, Hkv, Lk, Dv]");
        rank4("out", out, "[B, Hq, Lq, Dv]");
        if (out.segment().isReadOnly() && out.elementCount() > 0) {
            // a read-only file mapping, say: native code writing into it would crash the JVM
            throw new IllegalArgumentException(out.describe("out") + ": a read-only segment");
        }
        long b = q.size(0);
        long hq = q.size(1);
        long lq = q.size(2);
        long dk = q.size(3);
        long hkv = k.size(1);
        long lk = k.size(2);
        long dv = v.size(3);
        if (k.size(0) != b) {
            throw new IllegalArgumentException(k.describe("k") + ": batch " + k.size(0) + " differs from "
                    + q.describe("q"));
        }
        if (k.size(3) != dk) {
            throw new IllegalArgumentException(k.describe("k") + ": head dimension Dk=" + k.size(3) + " differs from "
                    + q.describe("q") + " Dk=" + dk);
        }
        if (v.size(0) != b || v.size(1) != hkv || v.size(2) != lk) {
            throw new IllegalArgumentException(v.describe("v") + ": expected [" + b + ", " + hkv + ", " + lk
                    + ", Dv] to match " + k.describe("k"));
        }
        if (hkv == 0 && hq != 0 || hkv != 0 && hq % hkv != 0) {
            // both shapes with their dimensions' names: naming k alone left Hq to be found in a q shown nowhere
            throw new IllegalArgumentException(q.describe("q") + " = [B, Hq, Lq, Dk], " + k.describe("k")
                    + " = [B, Hkv, Lk, Dk]: Hq=" + hq + " is not a multiple of Hkv=" + hkv);
        }
        if (dk == 0 && Float.isNaN(options.scale())) {
            throw new IllegalArgumentException(q.describe("q") + ": Dk=0 has no default scale 1/sqrt(Dk)");
        }
        // element by element, not through arrays: this runs on every call and must not allocate
        if (out.size(0) != b || out.size(1) != hq || out.size(2) != lq || out.size(3) != dv) {
            throw new IllegalArgumentException(out.describe("out") + ": expected "
                    + Shapes.format(new long[] {b, hq, lq, dv}) + " = [B, Hq, Lq, Dv]");
        }
        if (Math.max(Math.max(lq, lk), Math.max(dk, dv)) > MAX_SIZE) {
            throw new IllegalArgumentException(q.describe("q") + ", " + k.describe("k") + ", " + v.describe("v")
                    + ": sequence lengths and head dimensions must be at most 2^31 - 2^21 - 1 = " + MAX_SIZE);
        }
        // the engines count (batch, head, row) tasks in an int: B·Hq·Lq query rows at most (only views with
        // zero strides reach this without holding gigabytes)
        if (b != 0 && hq != 0 && lq != 0 && (b > Integer.MAX_VALUE / hq || b * hq > Integer.MAX_VALUE / lq)) {
            throw new IllegalArgumentException(q.describe("q") + ": B·Hq·Lq = " + b + "·" + hq + "·" + lq
                    + " query rows exceed 2^31 - 1");
        }
        Mask mask = options.mask();
        if (mask != null) {
            mask.requireBroadcastsTo(b, hq, lq, lk);
        }
        q.requireUsable("q");
        k.requireUsable("k");
        v.requireUsable("v");
        out.requireUsable("out");
        if (mask != null) {
            mask.values().requireUsable("mask");
        }
        noOverlap(out, q, "q");
        noOverlap(out, k, "k");
        noOverlap(out, v, "v");
        if (mask != null) {
            noOverlap(out, mask.values(), "mask");
        }
        noInternalOverlap(out);
    }

    /**
     * A caller's workspace must share memory with no tensor of the call: the engine writes score tiles and packed
     * copies there while it reads the inputs and writes out. (An arena of the caller's own can hand out memory
     * it also gave to tensors.) One check per tensor, no allocation.
     */
    static void noOverlapWithWorkspace(Tensor ws, Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        workspaceOverlap(ws, q, "q");
        workspaceOverlap(ws, k, "k");
        workspaceOverlap(ws, v, "v");
        workspaceOverlap(ws, out, "out");
        if (options.mask() != null) {
            workspaceOverlap(ws, options.mask().values(), "mask");
        }
    }

    private static void workspaceOverlap(Tensor ws, Tensor t, String name) {
        if (t.overlaps(ws)) {
            throw new IllegalArgumentException(t.describe(name) + " shares memory with the workspace");
        }
    }

    /**
     * The native backend hands q, k, v and out to OpenBLAS, which reads raw addresses: they must be off-heap.
     * Checked here so that the error names the tensor, not an sgemm operand.
     */
    static void requireNative(Tensor q, Tensor k, Tensor v, Tensor out) {
        // one call per tensor, not a loop over an array: C2 did not scalar-replace the Tensor[4] (32 B per call,
        // JFR jdk.ObjectAllocationSample at this method)
        requireNative("q", q);
        requireNative("k", k);
        requireNative("v", v);
        requireNative("out", out);
    }

    /**
     * True when OpenBLAS may be handed {@code t}: off-heap at a multiple of 4 bytes (its SSE kernels load
     * floats aligned), or empty (an empty tensor is never handed to it: no
     * rows, no keys or no columns, nothing to multiply).
     */
    static boolean offHeap(Tensor t) {
        return t.elementCount() == 0 || SgemmArgs.blasReady(t.segment());
    }

    private static void requireNative(String name, Tensor t) {
        if (!offHeap(t)) {
            throw new IllegalArgumentException(t.describe(name) + (t.segment().isNative()
                    ? ": a segment at an address that is not a multiple of 4; OpenBLAS needs aligned floats"
                    : ": a heap segment; the native backend needs off-heap memory (allocate it from an Arena)"));
        }
    }

    private static void rank4(String name, Tensor t, String dims) {
        if (t.rank() != 4) {
            throw new IllegalArgumentException(t.describe(name) + ": expected rank 4 " + dims);
        }
    }

    /** The output must not share memory with an input: a kernel would read what it has already written. */
    private static void noOverlap(Tensor out, Tensor in, String name) {
        if (out.overlaps(in)) {
            throw new IllegalArgumentException(out.describe("out") + " overlaps " + in.describe(name));
        }
    }

    /**
     * Two output elements at one address (a zero or too small stride) would race and lose results. An empty
     * output has no elements, so any strides are fine.
     */
    private static void noInternalOverlap(Tensor out) {
        if (out.elementCount() == 0) {
            return;
        }
        // dimensions by increasing stride (ties by index), picked one at a time from a bit set: no allocation
        int used = 0;
        long span = 1;
        for (int n = 0; n < 4; n++) {
            int best = -1;
            for (int d = 0; d < 4; d++) {
                if ((used & (1 << d)) == 0 && (best < 0 || out.stride(d) < out.stride(best))) {
                    best = d;
                }
            }
            used |= 1 << best;
            if (out.size(best) <= 1) {
                continue;
            }
            if (out.stride(best) < span) {
                throw new IllegalArgumentException(out.describe("out") + " with strides "
                        + java.util.Arrays.toString(out.strides()) + " maps several elements to one address");
            }
            // the extent so far, gaps included as they fall: stride · size overstated it, and refused outputs
            // whose rows or heads start right where the last element before them ends
            span += out.stride(best) * (out.size(best) - 1);
        }
    }
}
