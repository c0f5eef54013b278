package dev.qkv.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** Row kernels in plain Java with {@link Math#exp}: the fallback when the Vector API module is absent. */
final class ScalarRowKernels extends RowKernels {
    static final ScalarRowKernels INSTANCE = new ScalarRowKernels();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    @Override
    public String name() {
        return "java-scalar";
    }

    @Override
    public float maskedMax(MemorySegment s, long at, int n, int limit, MemorySegment mask, long mAt, long mStride,
                           boolean maskBool) {
        float max = Float.NEGATIVE_INFINITY;
        for (int j = 0; j < limit; j++) {
            float x = s.getAtIndex(F, at + j);
            if (mask != null) {
                float m = mask.getAtIndex(F, mAt + j * mStride);
                x = maskBool ? (m == 0f ? Float.NEGATIVE_INFINITY : x) : x + m;
                s.setAtIndex(F, at + j, x);
            }
            max = Math.max(max, x);
        }
        return max;
    }

    @Override
    public float expFrom(MemorySegment s, long at, int n, int limit, float max) {
        if (max == Float.NEGATIVE_INFINITY) {
            // no key may be attended: zeros, never NaN
            limit = 0;
        }
        double sum = 0;
        for (int j = 0; j < limit; j++) {
            float e = (float) Math.exp(s.getAtIndex(F, at + j) - max);
            s.setAtIndex(F, at + j, e);
            sum += e;
        }
        for (int j = limit; j < n; j++) {
            s.setAtIndex(F, at + j, 0f);
        }
        return (float) sum;
    }

    @Override
    public boolean anySubnormal(MemorySegment s, long at, int n) {
        for (int j = 0; j < n; j++) {
            float x = s.getAtIndex(F, at + j);
            if (x != 0f && Math.abs(x) < Float.MIN_NORMAL) {
                return true;
            }
        }
        return false;
    }

    @Override
    public boolean anyNonFinite(MemorySegment s, long at, int n) {
        for (int j = 0; j < n; j++) {
            if (!Float.isFinite(s.getAtIndex(F, at + j))) {
                return true;
            }
        }
        return false;
    }

    @Override
    public void scaleRow(MemorySegment s, long at, int n, float f) {
        for (int j = 0; j < n; j++) {
            s.setAtIndex(F, at + j, s.getAtIndex(F, at + j) * f);
        }
    }

    @Override
    public void exp(float[] src, float[] dst, int n) {
        for (int i = 0; i < n; i++) {
            dst[i] = (float) Math.exp(src[i]);
        }
    }
}
