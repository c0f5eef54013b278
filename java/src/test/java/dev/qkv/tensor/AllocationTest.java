package dev.qkv.tensor;

import dev.qkv.attention.Allocations;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/**
 * Copying a contiguous tensor to or from part of a caller's array allocates nothing (the way a service moves each
 * call's input and output between its heap buffers and qkv's off-heap tensors): {@link Tensor#copyTo} and
 * {@link Tensor#copyFrom(float[], int)}, measured as the layer and attention calls are ({@link Allocations},
 * {@code make alloc}); each also checks what it copied.
 */
class AllocationTest {
    @Test
    void copyToAndCopyFromAnOffsetAllocateNothing() {
        Allocations.requireCounter();
        try (Arena a = Arena.ofShared()) {
            Tensor t = Tensor.allocate(a, 1, 4, 64);
            float[] in = new float[1000];
            for (int i = 0; i < in.length; i++) {
                in[i] = i;
            }
            float[] out = new float[1000];
            Runnable copyIn = () -> t.copyFrom(in, 100);
            Runnable copyOut = () -> t.copyTo(out, 500);
            Allocations.warmUpTogether(List.of(copyIn, copyOut), Allocations.WARMUP);
            copyIn.run();
            copyOut.run();
            assertArrayEquals(Arrays.copyOfRange(in, 100, 356), Arrays.copyOfRange(out, 500, 756));
            Allocations.assertSteadyStateAllocatesNothing("copyFrom(values, 100) of [1, 4, 64]", copyIn);
            Allocations.assertSteadyStateAllocatesNothing("copyTo(dst, 500) of [1, 4, 64]", copyOut);
        }
    }
}
