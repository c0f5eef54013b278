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
 * a second, with a vectorized exponential (see {@link #expAndSum}).
 */
final class VectorRowKernels extends RowKernels {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;
    private static final int L = SP.length();
    /** Bytes of one vector. */
    private static final long VB = (long) L * Float.BYTES;
    private static final ByteOrder O = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private static final float LOG2E = 1.44269504088896341f;
    /**
     * 1.5 · 2^23 + 127: adding it rounds a float of magnitude below 2^22 to an integer {@code n} kept in the low
     * mantissa bits, biased by 127, so that those bits shifted left by 23 are the float 2^n (for -126 <= n <= 127,
     * which EXP_LO and EXP_HI keep it in).
     */
    private static final float MAGIC = Float.intBitsToFloat(0x4B40007F);
    /** ln 2 split so that n · C1 is exact for |n| < 2^9 (Cody and Waite). */
    private static final float C1 = 0.693359375f;
    private static final float C2 = -2.12194440e-4f;
    /**
     * exp(t) ≈ 1 + t · (Q1 + Q2 t + Q3 t² + Q4 t³ + Q5 t⁴) on [-ln2/2, ln2/2], a degree-5 minimax fit (the
     * coefficients of XNNPACK's rr2-p5 exponential). With 2^n folded in as {@code s + (t·s)·p} it takes 12
     * vector operations to Cephes' degree-7 form's 16 (measured, 2048-key rows: 2.70 → 2.14 ns per vector).
     */
    private static final float Q1 = 0x1.FFFFF6p-1f;
    private static final float Q2 = 0x1.FFFDC6p-2f;
    private static final float Q3 = 0x1.555A80p-3f;
    private static final float Q4 = 0x1.573A1Ap-5f;
    private static final float Q5 = 0x1.0F9F9Cp-7f;
    /**
     * Below this the exponential returns 0 (and for -inf): 2^n of the reduction would leave the normal range
     * (exp(x) itself is subnormal only below -87.34). A weight below e^-87 ≈ 1.6e-38 of the row's largest is
     * therefore 0, where the scalar reference keeps it down to float's smallest subnormal: an output differs by at
     * most ~1.6e-38 · max|v| per such key.
     */
    static final float EXP_LO = -87.0f;
    /** Above this 2^n would overflow the exponent field; inputs are clamped to it. */
    static final float EXP_HI = 88.0f;

    @Override
    public String name() {
        return "java-vector";
    }

    private static FloatVector bc(float x) {
        return FloatVector.broadcast(SP, x);
    }

    @Override
    public float expFrom(MemorySegment s, long at, int n, int limit, float max) {
        // each pass is its own small method: one large method defeats C1 (register allocation) and then C2
        // never compiles it, leaving every vector boxed
        final long base = at * Float.BYTES;
        if (max == Float.NEGATIVE_INFINITY || limit == 0) {
            // no key may be attended: zeros, never NaN
            fill(s, base, 0, n, 0f);
            return 0f;
        }
        float sum = expAndSumRuns(s, base, limit, n, max, null, 0);
        fill(s, base, limit, n, 0f);
        return sum;
    }

    @Override
    public float expInto(MemorySegment s, long at, int n, int limit, float max, float[] dst, int dOff) {
        if (max == Float.NEGATIVE_INFINITY || limit == 0) {
            java.util.Arrays.fill(dst, dOff, dOff + n, 0f);
            return 0f;
        }
        float sum = expAndSumRuns(s, at * Float.BYTES, limit, n, max, dst, dOff);
        java.util.Arrays.fill(dst, dOff + limit, dOff + n, 0f);
        return sum;
    }

    /** The row max as {@link #max} defines it, after the mask. */
    @Override
    public float maskedMax(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt,
                                   long mStride, boolean maskBool) {
        final long base = at * Float.BYTES;
        if (mask == null) {
            return max(s, base, limit, n);
        }
        if (mStride == 1) {
            return maskAndMax(s, base, limit, mask, mAt * Float.BYTES, maskBool);
        }
        if (mStride == 0 && limit > 0) {
            // one value for every key of the row (a mask whose last dimension is 1, or one broadcast along the
            // keys): read once, not per key through the scalar loop below
            float m = mask.getAtIndex(F, mAt);
            if (!maskBool) {
                return addAndMax(s, base, limit, m);
            }
            if (m != 0f) {
                return max(s, base, limit, n);
            }
            fill(s, base, 0, limit, Float.NEGATIVE_INFINITY);
            return Float.NEGATIVE_INFINITY;
        }
        applyMaskScalar(s, at, limit, mask, mAt, mStride, maskBool);
        return max(s, base, limit, n);
    }

    /**
     * Row max of {@code s[0, limit)} over its non-NaN entries, or NaN when the row holds a NaN and nothing above
     * -inf. The vector max is a compare and blend: {@code FloatVector.max} has {@link Math#max} semantics (NaN
     * and -0.0 first), which C2 emits as several instructions per vector (measured: the softmax of a 2048-key row
     * 0.55 ns per score with it and the exp clamps, 0.31 without). Skipping NaN here loses nothing: a NaN score
     * still makes its exponential, the row's sum and so its factor NaN; only a row whose other entries are all
     * -inf would then look fully masked, hence the rescan there. {@code s[limit, width)} is part of the row (read,
     * not used).
     */
    private static float max(MemorySegment s, long base, int limit, int width) {
        final FloatVector minusInf = FloatVector.broadcast(SP, Float.NEGATIVE_INFINITY);
        FloatVector vmax = minusInf;
        int j = 0;
        // four independent maxima: one compare-and-blend chain waits ~4 cycles per vector on its own result
        // (measured, 2048-key rows: 0.97 ns per vector with one chain)
        if (limit >= 4 * L) {
            FloatVector m1 = minusInf;
            FloatVector m2 = minusInf;
            FloatVector m3 = minusInf;
            for (; j <= limit - 4 * L; j += 4 * L) {
                long off = base + (long) j * Float.BYTES;
                FloatVector x0 = FloatVector.fromMemorySegment(SP, s, off, O);
                FloatVector x1 = FloatVector.fromMemorySegment(SP, s, off + VB, O);
                FloatVector x2 = FloatVector.fromMemorySegment(SP, s, off + 2 * VB, O);
                FloatVector x3 = FloatVector.fromMemorySegment(SP, s, off + 3 * VB, O);
                vmax = vmax.blend(x0, vmax.compare(VectorOperators.LT, x0));
                m1 = m1.blend(x1, m1.compare(VectorOperators.LT, x1));
                m2 = m2.blend(x2, m2.compare(VectorOperators.LT, x2));
                m3 = m3.blend(x3, m3.compare(VectorOperators.LT, x3));
            }
            vmax = vmax.blend(m1, vmax.compare(VectorOperators.LT, m1));
            m2 = m2.blend(m3, m2.compare(VectorOperators.LT, m3));
            vmax = vmax.blend(m2, vmax.compare(VectorOperators.LT, m2));
        }
        // a row's last partial vector too, when the row is wide enough to load it whole: lanes past the limit
        // count as -inf (a scalar tail at every causal row cost more than the vector body at small shapes)
        for (; j < limit && j <= width - L; j += L) {
            FloatVector x = FloatVector.fromMemorySegment(SP, s, base + (long) j * Float.BYTES, O);
            if (j > limit - L) {
                x = minusInf.blend(x, SP.indexInRange(j, limit));
            }
            vmax = vmax.blend(x, vmax.compare(VectorOperators.LT, x));
        }
        // the lanes folded by compare and blend, rotations of 8, 4, 2, 1 (reduceLanes(MAX) has Math.max semantics,
        // a longer sequence per step). Written out: a helper taking the vector was once left out of line and
        // boxed its vectors (JMH -prof gc: 7 MB per call at [1, 1, 4096, 128] on one thread).
        // Lanes.sum's rotations and guards; wider vectors (no NaN lane here) use reduceLanes.
        float max;
        if (L <= 16) {
            FloatVector u;
            if (L > 8) {
                u = vmax.rearrange(Lanes.ROT8);
                vmax = vmax.blend(u, vmax.compare(VectorOperators.LT, u));
            }
            if (L > 4) {
                u = vmax.rearrange(Lanes.ROT4);
                vmax = vmax.blend(u, vmax.compare(VectorOperators.LT, u));
            }
            if (L > 2) {
                u = vmax.rearrange(Lanes.ROT2);
                vmax = vmax.blend(u, vmax.compare(VectorOperators.LT, u));
            }
            if (L > 1) {
                u = vmax.rearrange(Lanes.ROT1);
                vmax = vmax.blend(u, vmax.compare(VectorOperators.LT, u));
            }
            max = vmax.lane(0);
        } else {
            max = vmax.reduceLanes(VectorOperators.MAX);
        }
        for (; j < limit; j++) {
            max = Math.max(max, s.get(F, base + (long) j * Float.BYTES));
        }
        return max == Float.NEGATIVE_INFINITY ? nanOrMinusInf(s, base, limit) : max;
    }

    /** NaN when {@code s[0, limit)} holds a NaN, else -inf (the row max when no entry is above -inf). */
    private static float nanOrMinusInf(MemorySegment s, long base, int limit) {
        for (int j = 0; j < limit; j++) {
            if (Float.isNaN(s.get(F, base + (long) j * Float.BYTES))) {
                return Float.NaN;
            }
        }
        return Float.NEGATIVE_INFINITY;
    }

    /** Applies a unit-stride mask to {@code s[0, limit)} in place and returns the row max. */
    private static float maskAndMax(MemorySegment s, long base, int limit, MemorySegment mask, long mBase,
                                    boolean maskBool) {
        FloatVector vmax = FloatVector.broadcast(SP, Float.NEGATIVE_INFINITY);
        int j = 0;
        // one loop per kind of mask, each written out: with the mask applied by a helper taking and returning
        // vectors, `make alloc` saw the masked cases allocate 2-36 KB per call in one JVM of two
        if (maskBool) {
            for (; j <= limit - L; j += L) {
                long off = base + (long) j * Float.BYTES;
                FloatVector x = FloatVector.fromMemorySegment(SP, s, off, O);
                FloatVector m = FloatVector.fromMemorySegment(SP, mask, mBase + (long) j * Float.BYTES, O);
                x = x.blend(Float.NEGATIVE_INFINITY, m.compare(VectorOperators.EQ, 0f));
                x.intoMemorySegment(s, off, O);
                vmax = vmax.blend(x, vmax.compare(VectorOperators.LT, x));
            }
        } else {
            for (; j <= limit - L; j += L) {
                long off = base + (long) j * Float.BYTES;
                FloatVector x = FloatVector.fromMemorySegment(SP, s, off, O);
                FloatVector m = FloatVector.fromMemorySegment(SP, mask, mBase + (long) j * Float.BYTES, O);
                x = x.add(m);
                x.intoMemorySegment(s, off, O);
                vmax = vmax.blend(x, vmax.compare(VectorOperators.LT, x));
            }
        }
        float max = vmax.reduceLanes(VectorOperators.MAX);
        for (; j < limit; j++) {
            long off = base + (long) j * Float.BYTES;
            float m = mask.get(F, mBase + (long) j * Float.BYTES);
            float x = s.get(F, off);
            x = maskBool ? (m == 0f ? Float.NEGATIVE_INFINITY : x) : x + m;
            s.set(F, off, x);
            max = Math.max(max, x);
        }
        // NaN skipped by the blend as in max(); the masked values are in s now
        return max == Float.NEGATIVE_INFINITY ? nanOrMinusInf(s, base, limit) : max;
    }

    /**
     * Adds {@code m} to {@code s[0, limit)} in place and returns the row max: {@link #maskAndMax}'s additive loop
     * with one mask value for the whole row, so the same bits as that value written out per key.
     */
    private static float addAndMax(MemorySegment s, long base, int limit, float m) {
        FloatVector vmax = FloatVector.broadcast(SP, Float.NEGATIVE_INFINITY);
        int j = 0;
        for (; j <= limit - L; j += L) {
            long off = base + (long) j * Float.BYTES;
            FloatVector x = FloatVector.fromMemorySegment(SP, s, off, O).add(m);
            x.intoMemorySegment(s, off, O);
            vmax = vmax.blend(x, vmax.compare(VectorOperators.LT, x));
        }
        float max = vmax.reduceLanes(VectorOperators.MAX);
        for (; j < limit; j++) {
            long off = base + (long) j * Float.BYTES;
            float x = s.get(F, off) + m;
            s.set(F, off, x);
            max = Math.max(max, x);
        }
        // NaN skipped by the blend as in max(); the masked values are in s now
        return max == Float.NEGATIVE_INFINITY ? nanOrMinusInf(s, base, limit) : max;
    }

    /**
     * Keys per run of {@link #expAndSumRuns}: a multiple of every vector length. One running sum per lane over a
     * whole row drifted with the row's length per lane, so with 8-float vectors (AVX2) twice as far as with 16: 329
     * ulps for weights alternating 1 and 0.3 over 65 536 keys (DecodeAccumulationTest, AMD EPYC, 2026-11-27), past
     * the few-query path's bound of 256. Runs of this many keys, their sums added in double: 3-9 ulps.
     */
    private static final int SUM_RUN = 256;

    /**
     * {@link #expAndSum} over runs of {@link #SUM_RUN} keys, each run's sum added in double: a row of at most one
     * run is one call, as before. The runs are calls, not a fold inside expAndSum's loop: that fold (a lane sum
     * and a reset of the vector sum per run) made C2 box vectors once {@code make alloc}'s mixed warm-up had run
     * (hundreds of bytes per call on this AVX2 machine; it was allocation-free as calls).
     */
    private static float expAndSumRuns(MemorySegment s, long base, int limit, int width, float max, float[] dst,
                                       int dOff) {
        if (limit <= SUM_RUN) {
            return expAndSum(s, base, limit, width, max, dst, dOff);
        }
        double sum = 0;
        for (int j0 = 0; j0 < limit; j0 += SUM_RUN) {
            final boolean lastRun = j0 + SUM_RUN >= limit;
            // a run before the last holds whole vectors (SUM_RUN is a multiple of L); the last keeps the row's
            // width, so that its partial vector is handled as the row's was
            sum += expAndSum(s, base + (long) j0 * Float.BYTES, lastRun ? limit - j0 : SUM_RUN,
                    lastRun ? width - j0 : SUM_RUN, max, dst, dOff + j0);
        }
        return (float) sum;
    }

    /**
     * {@code s[j] = exp(s[j] - max)} for {@code j < limit} (and possibly 0 for some {@code j} in
     * {@code [limit, width)}, part of the row); returns the sum. The arguments are at most 0 (max is
     * the row max) or NaN, so the exponential needs no upper clamp, and below {@code EXP_LO} the result is
     * replaced by 0 whatever the intermediate values were, so it needs no lower clamp either: without the two
     * clamps ({@code FloatVector.max/min}, several instructions each) the same bits come out for every argument
     * in {@code [EXP_LO, EXP_HI]}, faster (see {@link #max}).
     */
    private static float expAndSum(MemorySegment s, long base, int limit, int width, float max, float[] dst,
                                   int dOff) {
        final FloatVector zero = FloatVector.zero(SP);
        FloatVector vsum = zero;
        int j = 0;
        // as in max: the last partial vector too when the row (width floats) holds it; its lanes past the limit
        // become 0, which is what the caller's zeroing writes there anyway
        for (; j < limit && j <= width - L; j += L) {
            long off = base + (long) j * Float.BYTES;
            FloatVector x = FloatVector.fromMemorySegment(SP, s, off, O).sub(max);
            // exp(x): x = n·ln2 + t with n rounded to nearest (the MAGIC addition), exp(t) by the polynomial,
            // 2^n from the shifted bits of that sum. Written out here, not in a helper: one C2 does not inline
            // (it can be compiled on its own first) boxes its vector argument and result on every call.
            VectorMask<Float> tiny = x.compare(VectorOperators.LT, EXP_LO);
            FloatVector jv = x.fma(LOG2E, MAGIC);
            FloatVector twoN = jv.reinterpretAsInts().lanewise(VectorOperators.LSHL, 23).reinterpretAsFloats();
            FloatVector n = jv.sub(MAGIC);
            FloatVector t = n.fma(bc(-C1), x);
            t = n.fma(bc(-C2), t);
            FloatVector p = t.fma(Q5, Q4);
            p = p.fma(t, bc(Q3));
            p = p.fma(t, bc(Q2));
            p = p.fma(t, bc(Q1));
            FloatVector e = t.mul(twoN).fma(p, twoN).blend(0f, tiny);
            if (j > limit - L) {
                e = zero.blend(e, SP.indexInRange(j, limit));
            }
            if (dst == null) {
                e.intoMemorySegment(s, off, O);
            } else {
                e.intoArray(dst, dOff + j);
            }
            vsum = vsum.add(e);
        }
        float sum = Lanes.sum(vsum);
        for (; j < limit; j++) {
            long off = base + (long) j * Float.BYTES;
            float e = expScalar(s.get(F, off) - max);
            if (dst == null) {
                s.set(F, off, e);
            } else {
                dst[dOff + j] = e;
            }
            sum += e;
        }
        return sum;
    }

    /**
     * The same exponential as the vector body of {@link #expAndSum} on one float, for row tails: masked vector tails are
     * not always intrinsified and then box a vector per row.
     */
    static float expScalar(float x) {
        if (x < EXP_LO) {
            return 0f;
        }
        float xc = Math.min(Math.max(x, EXP_LO), EXP_HI);
        float j = Math.fma(xc, LOG2E, MAGIC);
        float twoN = Float.intBitsToFloat(Float.floatToRawIntBits(j) << 23);
        float n = j - MAGIC;
        float t = Math.fma(n, -C1, xc);
        t = Math.fma(n, -C2, t);
        float p = Math.fma(t, Q5, Q4);
        p = Math.fma(p, t, Q3);
        p = Math.fma(p, t, Q2);
        p = Math.fma(p, t, Q1);
        return Math.fma(t * twoN, p, twoN);
    }

    private static void applyMaskScalar(MemorySegment s, long at, int limit, MemorySegment mask, long mAt,
                                        long mStride, boolean maskBool) {
        for (int j = 0; j < limit; j++) {
            float m = mask.getAtIndex(F, mAt + j * mStride);
            float x = s.getAtIndex(F, at + j);
            s.setAtIndex(F, at + j, maskBool ? (m == 0f ? Float.NEGATIVE_INFINITY : x) : x + m);
        }
    }

    /** {@code s[from, to) = x} (float indices from {@code base}, in bytes). */
    private static void fill(MemorySegment s, long base, int from, int to, float x) {
        FloatVector v = FloatVector.broadcast(SP, x);
        int j = from;
        for (; j <= to - L; j += L) {
            v.intoMemorySegment(s, base + (long) j * Float.BYTES, O);
        }
        for (; j < to; j++) {
            s.set(F, base + (long) j * Float.BYTES, x);
        }
    }

    @Override
    public boolean anySubnormal(MemorySegment s, long at, int n) {
        long base = at * Float.BYTES;
        int j = 0;
        for (; j <= n - L; j += L) {
            FloatVector x = FloatVector.fromMemorySegment(SP, s, base + (long) j * Float.BYTES, O).abs();
            if (x.compare(VectorOperators.LT, Float.MIN_NORMAL).and(x.compare(VectorOperators.NE, 0f)).anyTrue()) {
                return true;
            }
        }
        for (; j < n; j++) {
            float x = s.get(F, base + (long) j * Float.BYTES);
            if (x != 0f && Math.abs(x) < Float.MIN_NORMAL) {
                return true;
            }
        }
        return false;
    }

    /** A test per vector: {@code x - x} is 0 for a finite x and NaN for NaN or ±Inf. */
    @Override
    public boolean anyNonFinite(MemorySegment s, long at, int n) {
        long base = at * Float.BYTES;
        int j = 0;
        for (; j <= n - L; j += L) {
            FloatVector x = FloatVector.fromMemorySegment(SP, s, base + (long) j * Float.BYTES, O);
            FloatVector d = x.sub(x);
            if (d.compare(VectorOperators.NE, d).anyTrue()) {
                return true;
            }
        }
        for (; j < n; j++) {
            if (!Float.isFinite(s.get(F, base + (long) j * Float.BYTES))) {
                return true;
            }
        }
        return false;
    }

    /**
     * One pass over the rows without a branch per vector: {@code x - x} is 0 for a finite x and NaN for NaN or
     * ±Inf, and a sum of them is NaN when any is. A [64, 64] block: 195-211 ns, against 357-374 row by row with a
     * test per vector (own harness, round 6, when it looked for NaN only and checked the rows one by one after).
     */
    @Override
    public boolean anyNonFinite(MemorySegment s, long at, long ld, int rows, int n) {
        if (n < L) {
            return super.anyNonFinite(s, at, ld, rows, n);
        }
        return anyNonFiniteProbe(s, at, ld, rows, n);
    }

    /** Whether some element of the rows is NaN or ±Inf: the sum of every {@code x - x} is then NaN. */
    private static boolean anyNonFiniteProbe(MemorySegment s, long at, long ld, int rows, int n) {
        FloatVector acc = FloatVector.zero(SP);
        FloatVector acc1 = acc;
        FloatVector acc2 = acc;
        FloatVector acc3 = acc;
        float tail = 0f;
        for (int r = 0; r < rows; r++) {
            long base = (at + r * ld) * Float.BYTES;
            int j = 0;
            // four sums, so that the additions do not wait on each other
            for (; j <= n - 4 * L; j += 4 * L) {
                long o = base + (long) j * Float.BYTES;
                FloatVector x0 = FloatVector.fromMemorySegment(SP, s, o, O);
                FloatVector x1 = FloatVector.fromMemorySegment(SP, s, o + VB, O);
                FloatVector x2 = FloatVector.fromMemorySegment(SP, s, o + 2 * VB, O);
                FloatVector x3 = FloatVector.fromMemorySegment(SP, s, o + 3 * VB, O);
                acc = acc.add(x0.sub(x0));
                acc1 = acc1.add(x1.sub(x1));
                acc2 = acc2.add(x2.sub(x2));
                acc3 = acc3.add(x3.sub(x3));
            }
            for (; j <= n - L; j += L) {
                FloatVector x = FloatVector.fromMemorySegment(SP, s, base + (long) j * Float.BYTES, O);
                acc = acc.add(x.sub(x));
            }
            for (; j < n; j++) {
                float x = s.get(F, base + (long) j * Float.BYTES);
                tail += x - x;
            }
        }
        float probe = Lanes.sum(acc.add(acc1).add(acc2.add(acc3))) + tail;
        return probe != probe;
    }

    @Override
    public void scaleRow(MemorySegment s, long at, int n, float f) {
        long base = at * Float.BYTES;
        int j = 0;
        for (; j <= n - L; j += L) {
            long off = base + (long) j * Float.BYTES;
            FloatVector.fromMemorySegment(SP, s, off, O).mul(f).intoMemorySegment(s, off, O);
        }
        for (; j < n; j++) {
            long off = base + (long) j * Float.BYTES;
            s.set(F, off, s.get(F, off) * f);
        }
    }

    /**
     * 0 below {@link #EXP_LO}, as this exponential: without it a rescale by exp(-87.5..-103.97), a subnormal
     * float, kept a key of an earlier key block that one pass over the row gives weight 0 (with v = 3.4e38 it
     * moved the output by 3.4, ExtremeLogitsTest).
     */
    @Override
    public float rescale(float d) {
        return d < EXP_LO ? 0f : (float) StrictMath.exp(d);
    }

    /**
     * The exponential of the softmax (vector body and scalar tail), on an array. Measured relative error at most
     * 1.7e-7 (about 2 ulp) against {@link Math#exp} over every float in {@code [EXP_LO, EXP_HI]}; 0 below
     * {@code EXP_LO}; above {@code EXP_HI} (never a softmax's argument, which is at most 0) {@link Math#exp}
     * itself, so up to about 88.72 a finite value and past it +Infinity, as the scalar kernels give; NaN stays NaN.
     */
    @Override
    public void exp(float[] src, float[] dst, int n) {
        for (int i = 0; i < n; i++) {
            // expAndSum has no upper clamp (the softmax's arguments are at most 0): clamp here, fix up below
            dst[i] = Math.min(src[i], EXP_HI);
        }
        expAndSum(MemorySegment.ofArray(dst), 0, n, n, 0f, null, 0);
        for (int i = 0; i < n; i++) {
            if (src[i] > EXP_HI) {
                // the clamp made every such value exp(88): the exact one instead (Infinity past ~88.72)
                dst[i] = (float) Math.exp(src[i]);
            }
        }
    }
}
