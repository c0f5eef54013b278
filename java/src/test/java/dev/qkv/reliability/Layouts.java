package dev.qkv.reliability;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;

/** Rank-4 tensors {@code [B, H, L, D]} in the memory layouts callers really hand to attention. */
enum Layouts {
    /** Dense row-major. */
    CONTIGUOUS,
    /** Stored {@code [B, L, H, D]} (a projection's output) and viewed with heads and rows swapped. */
    INTERLEAVED,
    /** Rows padded past {@code D} and the whole view at an element offset inside a larger segment. */
    PADDED,
    /** Stored {@code [B, H, D, L]} and viewed transposed: the last two dimensions are column-major. */
    TRANSPOSED,
    /** Every other element of the last dimension: no unit stride at all, so kernels must pack. */
    STRIDED,
    /** One stored head repeated over {@code H} with stride 0 (read-only inputs only). */
    BROADCAST_HEADS,
    /** One stored row repeated over {@code L} with stride 0 (read-only inputs only). */
    BROADCAST_ROWS;

    /** Layouts valid for an output: anything that maps distinct elements to distinct addresses. */
    static final Layouts[] OUTPUT = {CONTIGUOUS, INTERLEAVED, PADDED, TRANSPOSED, STRIDED};

    /** A tensor of the given shape in this layout, filled with {@code values} in row-major order of the shape. */
    Tensor make(Arena arena, Random r, long[] s, float[] values) {
        Tensor t = switch (this) {
            case CONTIGUOUS -> Tensor.allocate(arena, s);
            case INTERLEAVED -> Tensor.allocate(arena, s[0], s[2], s[1], s[3]).transpose(1, 2);
            case PADDED -> {
                long pad = 1 + r.nextInt(3);
                long offset = r.nextInt(5);
                long[] st = {s[1] * s[2] * (s[3] + pad), s[2] * (s[3] + pad), s[3] + pad, 1};
                long floats = offset + s[0] * st[0] + r.nextInt(3);
                MemorySegment seg = arena.allocate(Math.max(floats, 1) * Float.BYTES, 64);
                yield Tensor.view(seg, offset, s, st);
            }
            case TRANSPOSED -> Tensor.allocate(arena, s[0], s[1], s[3], s[2]).transpose();
            case STRIDED -> {
                long[] st = {s[1] * s[2] * s[3] * 2, s[2] * s[3] * 2, s[3] * 2, 2};
                MemorySegment seg = arena.allocate(Math.max(s[0] * st[0], 1) * Float.BYTES, 64);
                yield Tensor.view(seg, 0, s, st);
            }
            case BROADCAST_HEADS -> Tensor.allocate(arena, s[0], 1, s[2], s[3]).broadcastTo(s);
            case BROADCAST_ROWS -> Tensor.allocate(arena, s[0], s[1], 1, s[3]).broadcastTo(s);
        };
        if (this == BROADCAST_HEADS || this == BROADCAST_ROWS) {
            // fill the stored part; the view then repeats it, and the values the test uses are read back
            Tensor stored = this == BROADCAST_HEADS ? t.slice(1, 0, Math.min(1, s[1]))
                    : t.slice(2, 0, Math.min(1, s[2]));
            stored.copyFrom(Fuzz.uniform(r, (int) stored.elementCount()));
            return t;
        }
        return t.copyFrom(values);
    }
}
