package dev.qkv.kernel;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * Where a {@code float[]}'s elements sit relative to a 64-byte cache line, so that the packed kernels can start
 * their panels on a line.
 *
 * <p>Why: a 512-bit load that straddles two cache lines costs two. The JVM places arrays on 8-byte boundaries
 * (16 bytes of header), so a panel packed from index 0 straddles on every vector load. Measured on the 6 × 4-vector
 * micro-kernel (AVX-512, one core): 158-166 GFLOP/s with the panel at a straddling offset, 178-197 GFLOP/s at the
 * one offset of the 16 that starts on a line.
 *
 * <p>How: Java does not expose an array's address, but a critical downcall with heap access
 * ({@link Linker.Option#critical(boolean) critical(true)}) hands the native side a pointer to the elements;
 * {@code memmove(p, p, 0)} returns it unchanged and touches no memory. The answer is a hint: a garbage collection
 * may move the array later, which changes the speed of the kernels, never their results (every index stays
 * relative to the array). Without native access granted to this module ({@code --enable-native-access}) or
 * without a C library, every offset is 0: the kernels are then slower, never wrong.
 */
final class HeapAlignment {
    /** Floats of slack an array needs so that a run of {@code n} floats fits from any aligned start. */
    static final int SLACK = 64 / Float.BYTES - 1;

    private static final MethodHandle MEMMOVE = memmove();

    private HeapAlignment() {
    }

    private static MethodHandle memmove() {
        // only where native access was granted: a pure-Java user who did not grant it gets no warning for this
        if (!HeapAlignment.class.getModule().isNativeAccessEnabled()) {
            return null;
        }
        try {
            Linker linker = Linker.nativeLinker();
            MemorySegment fn = linker.defaultLookup().find("memmove").orElse(null);
            if (fn == null) {
                return null;
            }
            // the result as a 64-bit integer (the same register as a pointer on the 64-bit ABIs), so that no
            // segment is allocated for it
            if (ValueLayout.ADDRESS.byteSize() != Long.BYTES) {
                return null;
            }
            return linker.downcallHandle(fn, FunctionDescriptor.of(ValueLayout.JAVA_LONG, ValueLayout.ADDRESS,
                    ValueLayout.ADDRESS, ValueLayout.JAVA_LONG), Linker.Option.critical(true));
        } catch (RuntimeException | LinkageError e) {
            return null;
        }
    }

    /**
     * The index in the {@code float[]} viewed by {@code array} ({@code MemorySegment.ofArray}), in
     * {@code [0, SLACK]}, whose element starts a 64-byte cache line at the time of the call; 0 when that cannot be
     * told. The caller keeps the view: making one per call would allocate it each time.
     */
    static int floatOffset(MemorySegment array) {
        if (MEMMOVE == null || array.byteSize() == 0) {
            return 0;
        }
        long address;
        try {
            address = (long) MEMMOVE.invokeExact(array, array, 0L);
        } catch (Throwable e) {
            return 0;
        }
        if ((address & (Float.BYTES - 1)) != 0) {
            return 0;
        }
        return (int) (((64 - (address & 63)) & 63) / Float.BYTES);
    }
}
