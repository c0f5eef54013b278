package dev.qkv.attention;

import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;

/**
 * Scaled dot-product attention: {@code out [B, Hq, Lq, Dv] = softmax(scale · q·kᵀ + mask) · v} for
 * {@code q [B, Hq, Lq, Dk]}, {@code k [B, Hkv, Lk, Dk]}, {@code v [B, Hkv, Lk, Dv]}.
 *
 * <p>{@code Hq} is a multiple of {@code Hkv} (grouped-query and multi-query attention): query head {@code h}
 * uses key/value head {@code h / (Hq / Hkv)}. {@code scale} defaults to {@code 1/√Dk}. Causal masking is
 * aligned bottom-right (see {@link SdpaOptions}) and combines with an optional {@link Mask}.
 *
 * <p>The softmax is numerically stable (the row maximum is subtracted before {@code exp}), so scores in the
 * thousands do not overflow. A row in which no key may be attended gives zeros, never NaN. A NaN in an input
 * row makes that output row NaN.
 *
 * <p>The {@link Backend#NATIVE} and {@link Backend#JAVA} backends share one blocked algorithm: for each
 * (batch, head) and each block of query rows, the scores of the block are one matrix product
 * {@code q_block · kᵀ} into a workspace tile (keys a causal block can never see are skipped), the softmax runs
 * in place, and one more product {@code p · v} writes the block's output rows straight into {@code out}. The
 * products read {@code q}, {@code k}, {@code v} where they lie, through leading dimensions; nothing is copied
 * unless a view has no unit stride in its last two dimensions. {@link Backend#REFERENCE} is a direct scalar
 * reading of the definition, accumulating in double.
 *
 * <p>An {@code Attention} is immutable and thread-safe. Calls without a {@link Workspace} use one kept per
 * thread, so that steady-state calls allocate nothing on the Java heap.
 */
public final class Attention {

    /** Query rows per block: the score tile is {@code BLOCK_ROWS × Lk} floats. */
    public static final int BLOCK_ROWS = 64;

    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private final Backend backend;
    private final MatmulKernel matmul;
    private final ThreadLocal<MemorySegment[]> scratch = ThreadLocal.withInitial(() -> new MemorySegment[1]);

    private Attention(Backend backend, MatmulKernel matmul) {
        this.backend = backend;
        this.matmul = matmul;
    }

    /**
     * Attention on the given backend.
     *
     * @throws dev.qkv.blas.BlasUnavailableException for {@link Backend#NATIVE} when OpenBLAS cannot be loaded
     */
    public static Attention create(Backend backend) {
        Objects.requireNonNull(backend, "backend");
        return switch (backend) {
            case NATIVE -> new Attention(backend, MatmulKernel.openBlas());
            case JAVA -> new Attention(backend, MatmulKernel.javaScalar());
            case REFERENCE -> new Attention(backend, null);
        };
    }

    /** The backend this instance runs. */
    public Backend backend() {
        return backend;
    }

    /** The matrix-product kernel behind this instance ({@code reference} for the scalar oracle). */
    public String kernelName() {
        return matmul == null ? "reference" : matmul.name();
    }

    /**
     * Computes attention into {@code out} with a workspace kept for the calling thread (grown on demand, then
     * reused, so steady-state calls allocate nothing).
     */
    public void sdpa(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        SdpaArgs.validate(q, k, v, out, options);
        if (backend == Backend.NATIVE) {
            SdpaArgs.requireNative(q, k, v, out);
        }
        if (matmul == null) {
            ReferenceAttention.compute(q, k, v, out, options);
            return;
        }
        long need = workspaceBytesChecked(q, k, v, out);
        MemorySegment[] holder = scratch.get();
        MemorySegment ws = holder[0];
        if (ws == null || ws.byteSize() < need) {
            // Arena.ofAuto: the per-thread tile lives as long as its thread uses it, and is freed by the GC after.
            ws = Arena.ofAuto().allocate(Math.max(need, 1 << 16), 64);
            holder[0] = ws;
        }
        run(q, k, v, out, options, ws);
    }

    /** Computes attention into {@code out} using the caller's workspace, which must hold {@link #workspaceBytes}. */
    public void sdpa(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, Workspace workspace) {
        SdpaArgs.validate(q, k, v, out, options);
        if (backend == Backend.NATIVE) {
            SdpaArgs.requireNative(q, k, v, out);
        }
        Objects.requireNonNull(workspace, "workspace");
        if (matmul == null) {
            ReferenceAttention.compute(q, k, v, out, options);
            return;
        }
        long need = workspaceBytesChecked(q, k, v, out);
        if (!workspace.segment().scope().isAlive()) {
            throw new IllegalStateException("workspace: its arena is closed");
        }
        if (workspace.byteSize() < need) {
            throw new IllegalArgumentException("workspace of " + workspace.byteSize() + " bytes is too small for "
                    + q.describe("q") + ", " + k.describe("k") + ": needs " + need);
        }
        run(q, k, v, out, options, workspace.segment());
    }

    /** Bytes of workspace a call with these tensors needs. */
    public long workspaceBytes(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options) {
        SdpaArgs.validate(q, k, v, out, options);
        return matmul == null ? 0 : workspaceBytesChecked(q, k, v, out);
    }

    private static long workspaceBytesChecked(Tensor q, Tensor k, Tensor v, Tensor out) {
        long lq = q.size(2);
        long lk = k.size(2);
        long floats = (long) Math.min(BLOCK_ROWS, Math.max(lq, 1)) * Math.max(lk, 1);
        if (!matrixOk(q)) {
            floats += lq * q.size(3);
        }
        if (!matrixOk(k)) {
            floats += lk * k.size(3);
        }
        if (!matrixOk(v)) {
            floats += lk * v.size(3);
        }
        if (!rowMajorOk(out)) {
            floats += (long) BLOCK_ROWS * out.size(3);
        }
        return Math.multiplyExact(floats, Float.BYTES);
    }

    /** A head matrix {@code [rows, cols]} (the last two dimensions) usable by a product in place. */
    private static boolean matrixOk(Tensor t) {
        return rowMajorOk(t) || colMajorOk(t);
    }

    private static boolean rowMajorOk(Tensor t) {
        long rows = t.size(2);
        long cols = t.size(3);
        return (t.stride(3) == 1 || cols <= 1) && (rows <= 1 || t.stride(2) >= Math.max(cols, 1))
                && ld(t.stride(2), cols) <= Integer.MAX_VALUE;
    }

    private static boolean colMajorOk(Tensor t) {
        long rows = t.size(2);
        long cols = t.size(3);
        return (t.stride(2) == 1 || rows <= 1) && (cols <= 1 || t.stride(3) >= Math.max(rows, 1))
                && ld(t.stride(3), rows) <= Integer.MAX_VALUE;
    }

    private static long ld(long stride, long n) {
        return Math.max(stride, Math.max(n, 1));
    }

    /** The blocked algorithm on validated arguments; {@code ws} holds at least workspaceBytes. */
    private void run(Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions options, MemorySegment ws) {
        final int batch = (int) q.size(0);
        final int hq = (int) q.size(1);
        final int lq = (int) q.size(2);
        final int dk = (int) q.size(3);
        final int hkv = (int) k.size(1);
        final int lk = (int) k.size(2);
        final int dv = (int) v.size(3);
        if (batch == 0 || hq == 0 || lq == 0) {
            return;
        }
        if (dv == 0) {
            return;
        }
        final int group = hq / hkv;
        final float scale = options.scaleFor(dk);
        final boolean causal = options.causal();
        final Mask mask = options.mask();

        // workspace layout: scores tile [BLOCK_ROWS, Lk], then packed operands when a view needs packing
        final int tileRows = Math.min(BLOCK_ROWS, lq);
        long cursor = (long) tileRows * Math.max(lk, 1);
        final boolean packQ = !matrixOk(q);
        final boolean packK = !matrixOk(k);
        final boolean packV = !matrixOk(v);
        final boolean packOut = !rowMajorOk(out);
        final long qPackAt = cursor;
        cursor += packQ ? (long) lq * dk : 0;
        final long kPackAt = cursor;
        cursor += packK ? (long) lk * dk : 0;
        final long vPackAt = cursor;
        cursor += packV ? (long) lk * dv : 0;
        final long outPackAt = cursor;

        // mask strides broadcast to [B, Hq, Lq, Lk]
        final MemorySegment mSeg = mask == null ? null : mask.values().segment();
        final boolean maskBool = mask != null && mask.kind() == Mask.Kind.BOOLEAN;
        long mOff = 0;
        long ms0 = 0;
        long ms1 = 0;
        long ms2 = 0;
        long ms3 = 0;
        if (mask != null) {
            Tensor m = mask.values();
            mOff = m.offset();
            if (m.rank() == 2) {
                ms2 = m.size(0) == 1 ? 0 : m.stride(0);
                ms3 = m.stride(1);
            } else {
                ms0 = m.size(0) == 1 ? 0 : m.stride(0);
                ms1 = m.size(1) == 1 ? 0 : m.stride(1);
                ms2 = m.size(2) == 1 ? 0 : m.stride(2);
                ms3 = m.stride(3);
            }
        }

        for (int b = 0; b < batch; b++) {
            for (int h = 0; h < hq; h++) {
                final int g = h / group;
                // q [Lq, Dk], k [Lk, Dk], v [Lk, Dv] of this (batch, head), in place or packed
                Operand qo = operand(q, b, h, packQ, ws, qPackAt);
                Operand ko = operand(k, b, g, packK, ws, kPackAt);
                Operand vo = operand(v, b, g, packV, ws, vPackAt);
                final long outHead = out.offset() + b * out.stride(0) + h * out.stride(1);
                final long maskHead = mOff + b * ms0 + h * ms1;
                for (int i0 = 0; i0 < lq; i0 += tileRows) {
                    final int rows = Math.min(tileRows, lq - i0);
                    // keys any row of this block may see: causal rows end at i + (Lk - Lq)
                    final int keys = causal ? clamp((long) i0 + rows + (lk - lq), 0, lk) : lk;
                    final long outRows = packOut ? outPackAt : outHead + i0 * out.stride(2);
                    final MemorySegment outSeg = packOut ? ws : out.segment();
                    final int ldo = packOut ? dv : (int) ld(out.stride(2), dv);
                    if (keys == 0) {
                        zeroRows(outSeg, outRows, rows, dv, ldo);
                    } else {
                        // scores [rows, keys] = scale · q_block · kᵀ
                        matmul.matmul(Transpose.NO.flipIf(qo.transposed), Transpose.YES.flipIf(ko.transposed),
                                rows, keys, dk, scale,
                                qo.seg, qo.rowOffset(i0), qo.ld, ko.seg, ko.offset, ko.ld,
                                0f, ws, 0, keys);
                        // mask, row max, exp and sum, normalize
                        for (int r = 0; r < rows; r++) {
                            int i = i0 + r;
                            int limit = causal ? clamp((long) i + 1 + (lk - lq), 0, keys) : keys;
                            long sRow = (long) r * keys;
                            long mRow = maskHead + (long) i * ms2;
                            Softmax.maskedRow(ws, sRow, keys, limit, mSeg, mRow, ms3, maskBool);
                        }
                        // out_block [rows, Dv] = p · v
                        matmul.matmul(Transpose.NO, Transpose.NO.flipIf(vo.transposed), rows, dv, keys, 1f,
                                ws, 0, keys, vo.seg, vo.offset, vo.ld, 0f, outSeg, outRows, ldo);
                    }
                    if (packOut) {
                        unpackRows(ws, outPackAt, out, b, h, i0, rows, dv);
                    }
                }
            }
        }
    }

    private static int clamp(long x, int lo, int hi) {
        return (int) Math.max(lo, Math.min(hi, x));
    }

    private static void zeroRows(MemorySegment seg, long at, int rows, int cols, int ld) {
        for (int r = 0; r < rows; r++) {
            seg.asSlice((at + (long) r * ld) * Float.BYTES, (long) cols * Float.BYTES).fill((byte) 0);
        }
    }

    private static void unpackRows(MemorySegment ws, long at, Tensor out, int b, int h, int i0, int rows, int dv) {
        MemorySegment seg = out.segment();
        long base = out.offset() + b * out.stride(0) + h * out.stride(1);
        for (int r = 0; r < rows; r++) {
            for (int d = 0; d < dv; d++) {
                seg.setAtIndex(F, base + (long) (i0 + r) * out.stride(2) + d * out.stride(3),
                        ws.getAtIndex(F, at + (long) r * dv + d));
            }
        }
    }

    /** One head matrix as a product operand: segment, offset of row 0, leading dimension, storage order. */
    private record Operand(MemorySegment seg, long offset, int ld, boolean transposed, long rowStep) {
        long rowOffset(int row) {
            return offset + row * rowStep;
        }
    }

    private static Operand operand(Tensor t, int b, int h, boolean pack, MemorySegment ws, long packAt) {
        long base = t.offset() + b * t.stride(0) + h * t.stride(1);
        long rows = t.size(2);
        long cols = t.size(3);
        if (pack) {
            MemorySegment seg = t.segment();
            for (long r = 0; r < rows; r++) {
                for (long c = 0; c < cols; c++) {
                    ws.setAtIndex(F, packAt + r * cols + c, seg.getAtIndex(F, base + r * t.stride(2) + c * t.stride(3)));
                }
            }
            return new Operand(ws, packAt, (int) Math.max(cols, 1), false, cols);
        }
        if (rowMajorOk(t)) {
            return new Operand(t.segment(), base, (int) ld(t.stride(2), cols), false, t.stride(2));
        }
        return new Operand(t.segment(), base, (int) ld(t.stride(3), rows), true, 1);
    }
}
