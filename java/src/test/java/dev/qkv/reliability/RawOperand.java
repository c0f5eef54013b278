package dev.qkv.reliability;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;

/**
 * A matrix or a strided vector (rows × 1 with ld = inc) as the raw-argument fuzzers lay it out, with what a
 * naive product would reach, so that each case's verdict is computed independently of the code under test.
 */
final class RawOperand {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    MemorySegment seg;
    long off;
    int ld;
    int rows;
    int cols;
    boolean closed;

    /** A random valid placement with the given leading dimension: an offset, sometimes slack after the last row. */
    static RawOperand place(Arena arena, Random r, int rows, int cols, int ld) {
        RawOperand o = new RawOperand();
        o.rows = rows;
        o.cols = cols;
        o.ld = ld;
        o.off = r.nextInt(3) == 0 ? r.nextInt(9) : 0;
        long floats = Math.max(o.reach(), o.off) + (r.nextBoolean() ? 0 : r.nextInt(4));
        o.seg = arena.allocate(Math.max(floats, 0) * Float.BYTES, 4);
        fillRandom(r, o.seg);
        return o;
    }

    /** Ways to break one operand on its own, shared by the raw-argument fuzzers. */
    enum Break { OFFSET_PAST_END, ONE_FLOAT_SHORT, NEGATIVE_OFFSET, CLOSED_ARENA, HEAP, NULL_SEGMENT, OFFSET_NEAR_MAX }

    /** Breaks this operand as {@code how} says and names what it did. */
    String breakAs(Break how, Arena arena, Random r, boolean nativeOnly) {
        switch (how) {
            case OFFSET_PAST_END -> {
                off = floats() - Math.max(reach() - off, 0) + 1 + r.nextInt(3);
                return "offset past end";
            }
            case ONE_FLOAT_SHORT -> {
                long need = Math.max(reach(), 1);
                seg = arena.allocate((need - 1) * Float.BYTES, 4);
                return "segment 1 float short";
            }
            case NEGATIVE_OFFSET -> {
                off = -1 - r.nextInt(1000);
                return "negative offset";
            }
            case CLOSED_ARENA -> {
                Arena gone = Arena.ofConfined();
                MemorySegment s = gone.allocate(Math.max(floats(), 1) * Float.BYTES, 4);
                gone.close();
                seg = s;
                closed = true;
                return "closed arena";
            }
            case HEAP -> {
                seg = MemorySegment.ofArray(new float[(int) floats()]);
                return nativeOnly ? "heap segment" : "heap segment (allowed)";
            }
            case NULL_SEGMENT -> {
                seg = null;
                return "null segment";
            }
            default -> {
                off = Long.MAX_VALUE - r.nextInt(4);
                return "offset near Long.MAX_VALUE";
            }
        }
    }

    static void fillRandom(Random r, MemorySegment s) {
        for (long i = 0; i < s.byteSize() / Float.BYTES; i++) {
            s.setAtIndex(F, i, r.nextFloat() * 2 - 1);
        }
    }

    /** One past the last element a naive product would touch, in elements from the segment start. */
    long reach() {
        return rows <= 0 || cols <= 0 ? off : off + (long) (rows - 1) * ld + cols;
    }

    /** Whether a naive product would touch memory outside the segment. */
    boolean escapes() {
        return seg != null && rows > 0 && cols > 0 && (off < 0 || reach() > floats());
    }

    long floats() {
        return seg == null ? 0 : seg.byteSize() / Float.BYTES;
    }

    long address(long element) {
        return seg.address() + element * Float.BYTES;
    }

    /** Element {@code i} of a vector (rows × 1, stride ld). */
    float at(long i) {
        return seg.getAtIndex(F, off + i * ld);
    }

    @Override
    public String toString() {
        return "[" + rows + " x " + cols + "] ld=" + ld + " off=" + off + " seg=" + floats() + " floats"
                + (seg != null && !seg.isNative() ? " heap" : "") + (closed ? " closed" : "");
    }
}
