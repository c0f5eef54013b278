package dev.qkv.kernel;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Row kernels on {@code FloatVector.SPECIES_PREFERRED}: mask and maximum in one pass, exponentials and sum in
 * a second, with the vectorized {@link #exp(FloatVector)}.
 */
final class VectorRowKernels extends RowKernels {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;
    private static final int L = SP.length();
    private static final ByteOrder O = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private static final float LOG2E = 1.44269504088896341f;
    /** 1.5 · 2^23: adding it rounds a float of magnitude below 2^22 to an integer kept in the low mantissa bits. */
    private static final float MAGIC = 12582912f;
    private static final int MAGIC_BITS = 0x4B400000;
    /** ln 2 split so that n · C1 is exact for |n| < 2^9 (Cody and Waite). */
    private static final float C1 = 0.693359375f;
    private static final float C2 = -2.12194440e-4f;
    /** Cephes expf polynomial: exp(r) ≈ 1 + r + r² · P(r) on [-ln2/2, ln2/2]. */
    private static final float P0 = 1.9875691500e-4f;
    private static final float P1 = 1.3981999507e-3f;
    private static final float P2 = 8.3334519073e-3f;
    private static final float P3 = 4.1665795894e-2f;
    private static final float P4 = 1.6666665459e-1f;
    private static final float P5 = 5.0000001201e-1f;
    /** Below this exp(x) is subnormal; it returns 0 there (and for -inf). */
    static final float EXP_LO = -87.0f;
    /** Above this 2^n would overflow the exponent field; inputs are clamped to it. */
    static final float EXP_HI = 88.0f;

    @Override
    public String name() {
        return "java-vector";
    }

    /**
     * {@code exp(x)} lane by lane: {@code x = n·ln2 + r} with {@code n} rounded to nearest, {@code exp(r)} by a
     * degree-7 polynomial, {@code 2^n} by building the exponent bits. Measured relative error below 3e-7 (about
     * 2.5 ulp) on {@code [EXP_LO, EXP_HI]} (see the kernels' test); 0 below {@code EXP_LO}; NaN stays NaN.
     */
    static FloatVector exp(FloatVector x) {
        VectorMask<Float> tiny = x.compare(VectorOperators.LT, EXP_LO);
        FloatVector xc = x.max(EXP_LO).min(EXP_HI);
        FloatVector j = xc.fma(LOG2E, MAGIC);
        FloatVector n = j.sub(MAGIC);
        FloatVector r = n.fma(bc(-C1), xc);
        r = n.fma(bc(-C2), r);
        FloatVector p = r.fma(P0, P1);
        p = p.fma(r, bc(P2));
        p = p.fma(r, bc(P3));
        p = p.fma(r, bc(P4));
        p = p.fma(r, bc(P5));
        FloatVector y = p.fma(r.mul(r), r.add(1f));
        FloatVector twoN = j.reinterpretAsInts().sub(MAGIC_BITS - 127).lanewise(VectorOperators.LSHL, 23)
                .reinterpretAsFloats();
        return y.mul(twoN).blend(0f, tiny);
    }

    private static FloatVector bc(float x) {
        return FloatVector.broadcast(SP, x);
    }

    @Override
    public float expRow(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt, long mStride,
                        boolean maskBool) {
        // each pass is its own small method: one large method defeats C1 (register allocation) and then C2
        // never compiles it, leaving every vector boxed
        final long base = at * Float.BYTES;
        float max;
        if (mask == null) {
            max = max(s, base, limit);
        } else if (mStride == 1) {
            max = maskAndMax(s, base, limit, mask, mAt * Float.BYTES, maskBool);
        } else {
            applyMaskScalar(s, at, limit, mask, mAt, mStride, maskBool);
            max = max(s, base, limit);
        }
        if (max == Float.NEGATIVE_INFINITY || limit == 0) {
            // no key may be attended: zeros, never NaN
            zero(s, base, 0, n);
            return 0f;
        }
        float sum = expAndSum(s, base, limit, max);
        zero(s, base, limit, n);
        return 1f / sum;
    }

    /** Row max of {@code s[0, limit)} (NaN if any is NaN). */
    private static float max(MemorySegment s, long base, int limit) {
        FloatVector vmax = FloatVector.broadcast(SP, Float.NEGATIVE_INFINITY);
        int j = 0;
        for (; j <= limit - L; j += L) {
            vmax = vmax.max(FloatVector.fromMemorySegment(SP, s, base + (long) j * Float.BYTES, O));
        }
        if (j < limit) {
            VectorMask<Float> m = SP.indexInRange(j, limit);
            vmax = vmax.lanewise(VectorOperators.MAX,
                    FloatVector.fromMemorySegment(SP, s, base + (long) j * Float.BYTES, O, m), m);
        }
        return vmax.reduceLanes(VectorOperators.MAX);
    }

    /** Applies a unit-stride mask to {@code s[0, limit)} in place and returns the row max. */
    private static float maskAndMax(MemorySegment s, long base, int limit, MemorySegment mask, long mBase,
                                    boolean maskBool) {
        FloatVector vmax = FloatVector.broadcast(SP, Float.NEGATIVE_INFINITY);
        for (int j = 0; j < limit; j += L) {
            VectorMask<Float> m = SP.indexInRange(j, limit);
            long off = base + (long) j * Float.BYTES;
            FloatVector x = masked(FloatVector.fromMemorySegment(SP, s, off, O, m),
                    FloatVector.fromMemorySegment(SP, mask, mBase + (long) j * Float.BYTES, O, m), maskBool);
            x.intoMemorySegment(s, off, O, m);
            vmax = vmax.lanewise(VectorOperators.MAX, x, m);
        }
        return vmax.reduceLanes(VectorOperators.MAX);
    }

    /** {@code s[j] = exp(s[j] - max)} for {@code j < limit}; returns the sum. */
    private static float expAndSum(MemorySegment s, long base, int limit, float max) {
        FloatVector vsum = FloatVector.zero(SP);
        int j = 0;
        for (; j <= limit - L; j += L) {
            long off = base + (long) j * Float.BYTES;
            FloatVector e = exp(FloatVector.fromMemorySegment(SP, s, off, O).sub(max));
            e.intoMemorySegment(s, off, O);
            vsum = vsum.add(e);
        }
        if (j < limit) {
            VectorMask<Float> m = SP.indexInRange(j, limit);
            long off = base + (long) j * Float.BYTES;
            FloatVector e = exp(FloatVector.fromMemorySegment(SP, s, off, O, m).sub(max));
            e.intoMemorySegment(s, off, O, m);
            vsum = vsum.add(e, m);
        }
        return vsum.reduceLanes(VectorOperators.ADD);
    }

    private static FloatVector masked(FloatVector x, FloatVector m, boolean maskBool) {
        if (maskBool) {
            return x.blend(Float.NEGATIVE_INFINITY, m.compare(VectorOperators.EQ, 0f));
        }
        return x.add(m);
    }

    private static void applyMaskScalar(MemorySegment s, long at, int limit, MemorySegment mask, long mAt,
                                        long mStride, boolean maskBool) {
        for (int j = 0; j < limit; j++) {
            float m = mask.getAtIndex(F, mAt + j * mStride);
            float x = s.getAtIndex(F, at + j);
            s.setAtIndex(F, at + j, maskBool ? (m == 0f ? Float.NEGATIVE_INFINITY : x) : x + m);
        }
    }

    private static void zero(MemorySegment s, long base, int from, int to) {
        FloatVector z = FloatVector.zero(SP);
        int j = from;
        for (; j <= to - L; j += L) {
            z.intoMemorySegment(s, base + (long) j * Float.BYTES, O);
        }
        if (j < to) {
            z.intoMemorySegment(s, base + (long) j * Float.BYTES, O, SP.indexInRange(j, to));
        }
    }

    @Override
    public void scaleRow(MemorySegment s, long at, int n, float f) {
        long base = at * Float.BYTES;
        int j = 0;
        for (; j <= n - L; j += L) {
            long off = base + (long) j * Float.BYTES;
            FloatVector.fromMemorySegment(SP, s, off, O).mul(f).intoMemorySegment(s, off, O);
        }
        if (j < n) {
            VectorMask<Float> m = SP.indexInRange(j, n);
            long off = base + (long) j * Float.BYTES;
            FloatVector.fromMemorySegment(SP, s, off, O, m).mul(f).intoMemorySegment(s, off, O, m);
        }
    }

    @Override
    public void exp(float[] src, float[] dst, int n) {
        int i = 0;
        for (; i < n; i += L) {
            VectorMask<Float> m = SP.indexInRange(i, n);
            exp(FloatVector.fromArray(SP, src, i, m)).intoArray(dst, i, m);
        }
    }
}
