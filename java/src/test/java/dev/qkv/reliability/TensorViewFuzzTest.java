package dev.qkv.reliability;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.math.BigInteger;
import java.util.Arrays;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Random offsets, shapes and strides for {@link Tensor#view}, and random chains of views over the result.
 *
 * <p>Every tensor that exists must keep every element it can reach inside its segment (the invariant that lets
 * the kernels trust a tensor), recomputed here in {@link BigInteger} so that overflow cannot hide a violation.
 * A view that cannot exist must be an {@link IllegalArgumentException} (bad offset, shape, strides, reach) or an
 * {@link IndexOutOfBoundsException} (a bad index or dimension passed to {@code select}, {@code slice},
 * {@code size}), never anything else.
 */
class TensorViewFuzzTest {
    private static final long HUGE = 1L << 40;

    @Test
    void viewsThatExistStayInsideTheirSegment() {
        long seed = Fuzz.seed("tensor-view");
        Random r = new Random(seed);
        int cases = Fuzz.iterations(20000);
        int made = 0;
        int refused = 0;
        for (int it = 0; it < cases; it++) {
            try (Arena arena = Arena.ofConfined()) {
                long floats = r.nextInt(80);
                MemorySegment seg = arena.allocate(floats * Float.BYTES + (r.nextInt(4) == 0 ? r.nextInt(4) : 0), 4);
                int rank = r.nextInt(5);
                long[] shape = new long[rank];
                long[] strides = new long[r.nextInt(20) == 0 ? rank + 1 : rank];
                for (int d = 0; d < rank; d++) {
                    shape[d] = switch (r.nextInt(40)) {
                        case 0 -> -1;
                        case 1 -> HUGE;
                        case 2, 3, 4 -> 0;
                        default -> 1 + r.nextInt(4);
                    };
                }
                for (int d = 0; d < strides.length; d++) {
                    strides[d] = switch (r.nextInt(40)) {
                        case 0 -> -1;
                        case 1 -> Long.MAX_VALUE / 2;
                        case 2, 3, 4 -> 0;
                        default -> 1 + r.nextInt(12);
                    };
                }
                long offset = switch (r.nextInt(10)) {
                    case 0 -> -1;
                    case 1 -> floats;
                    case 2 -> Long.MAX_VALUE - 1;
                    default -> r.nextInt((int) floats + 1);
                };
                String what = "seed=" + seed + " case " + it + ": segment of " + seg.byteSize() + " bytes, offset "
                        + offset + ", shape " + Arrays.toString(shape) + ", strides " + Arrays.toString(strides);
                Verdict expect = verdict(seg, offset, shape, strides);
                Tensor t;
                try {
                    t = Tensor.view(seg, offset, shape, strides);
                } catch (IllegalArgumentException e) {
                    if (expect == Verdict.VALID) {
                        fail(what + ": valid view refused: " + e);
                    }
                    refused++;
                    continue;
                } catch (RuntimeException | Error e) {
                    fail(what + ": undocumented " + e, e);
                    return;
                }
                if (expect == Verdict.INVALID) {
                    fail(what + ": invalid view accepted: " + t);
                }
                made++;
                walk(r, t, what);
            }
        }
        System.out.printf("tensor view fuzz seed=%d: %d views made, %d refused%n", seed, made, refused);
        assertTrue(made > cases / 4 && refused > cases / 10, made + " made, " + refused + " refused");
    }

    /** Shapes whose byte count overflows a long are an argument error, not an ArithmeticException. */
    @Test
    void allocateRefusesShapesBeyondTheAddressSpace() {
        try (Arena arena = Arena.ofConfined()) {
            for (long[] shape : new long[][] {{1L << 61}, {1L << 62}, {1L << 31, 1L << 31}, {3, 1L << 61}, {-1}}) {
                assertThrows(IllegalArgumentException.class, () -> Tensor.allocate(arena, shape),
                        Arrays.toString(shape));
            }
        }
    }

    /** Whether a view must be made or refused. */
    enum Verdict { VALID, INVALID }

    /**
     * The contract of {@code Tensor.view}, restated: no negative size, stride or offset, one stride per dimension,
     * an element count that fits a long, and every reachable element inside the segment (an empty view reaches
     * none, so any offset and strides are fine).
     */
    private static Verdict verdict(MemorySegment seg, long offset, long[] shape, long[] strides) {
        if (strides.length != shape.length || offset < 0) {
            return Verdict.INVALID;
        }
        BigInteger count = BigInteger.ONE;
        for (int d = 0; d < shape.length; d++) {
            if (shape[d] < 0 || strides[d] < 0) {
                return Verdict.INVALID;
            }
            count = count.multiply(BigInteger.valueOf(shape[d]));
        }
        if (count.bitLength() > 63) {
            return Verdict.INVALID;
        }
        if (count.signum() == 0) {
            return Verdict.VALID; // an empty view reaches nothing, whatever its other sizes, strides and offset
        }
        BigInteger reach = reach(offset, shape, strides);
        return reach.compareTo(BigInteger.valueOf(seg.byteSize() / Float.BYTES)) <= 0 ? Verdict.VALID : Verdict.INVALID;
    }

    /** One past the highest element index the view reaches. */
    static BigInteger reach(long offset, long[] shape, long[] strides) {
        BigInteger last = BigInteger.valueOf(offset);
        for (int d = 0; d < shape.length; d++) {
            last = last.add(BigInteger.valueOf(shape[d] - 1).multiply(BigInteger.valueOf(strides[d])));
        }
        return last.add(BigInteger.ONE);
    }

    /** Random views of a valid tensor: each one that exists must stay inside the segment and be readable. */
    private static void walk(Random r, Tensor t, String what) {
        for (int step = 0; step < 6; step++) {
            checkInside(t, what);
            Tensor next;
            try {
                next = switch (r.nextInt(6)) {
                    case 0 -> t.select(r.nextInt(t.rank() + 2) - 1, r.nextInt(5) - 1);
                    case 1 -> {
                        int d = r.nextInt(t.rank() + 2) - 1;
                        long from = r.nextInt(5) - 1;
                        yield t.slice(d, from, from + r.nextInt(5) - 1);
                    }
                    case 2 -> t.transpose();
                    case 3 -> t.transpose(r.nextInt(t.rank() + 1), r.nextInt(t.rank() + 1));
                    case 4 -> {
                        long[] target = new long[t.rank() + r.nextInt(2)];
                        for (int d = 0; d < target.length; d++) {
                            target[d] = 1 + r.nextInt(3);
                        }
                        yield t.broadcastTo(target);
                    }
                    default -> t.reshape(t.elementCount());
                };
            } catch (IllegalArgumentException | IndexOutOfBoundsException e) {
                continue;
            } catch (RuntimeException | Error e) {
                fail(what + ": view of " + t + " threw an undocumented " + e, e);
                return;
            }
            t = next;
        }
        checkInside(t, what);
    }

    private static void checkInside(Tensor t, String what) {
        long floats = t.segment().byteSize() / Float.BYTES;
        if (t.elementCount() > 0) {
            BigInteger reach = reach(t.offset(), t.shape(), t.strides());
            assertTrue(reach.compareTo(BigInteger.valueOf(floats)) <= 0 && t.offset() >= 0,
                    what + ": " + t + " reaches element " + reach.subtract(BigInteger.ONE) + " of " + floats);
        }
        if (t.elementCount() > 1 << 16) {
            return; // broadcast views of 2^40 elements exist legitimately but are too many to read here
        }
        try {
            t.toArray();
            t.fill(0.5f);
        } catch (RuntimeException | Error e) {
            fail(what + ": reading " + t + " threw " + e, e);
        }
        // a copy needs an address per element (TensorTest checks hasDistinctAddresses against enumeration)
        float[] zeros = new float[(int) t.elementCount()];
        if (t.hasDistinctAddresses()) {
            try {
                t.copyFrom(zeros);
            } catch (RuntimeException | Error e) {
                fail(what + ": copying into " + t + " threw " + e, e);
            }
        } else {
            assertThrows(IllegalArgumentException.class, () -> t.copyFrom(zeros), what + ": " + t);
        }
    }
}
