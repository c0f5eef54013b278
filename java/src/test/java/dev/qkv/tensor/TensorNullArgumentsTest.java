package dev.qkv.tensor;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The null rule of dev.qkv.attention and dev.qkv.mha (see mha's NullArgumentsTest), for {@link Tensor}: every
 * reference parameter of its public methods is required, and a null one throws {@link NullPointerException}
 * whose message starts with the parameter's name and "is null", before anything is read or written.
 */
class TensorNullArgumentsTest {

    private static void isNull(String name, Executable call) {
        NullPointerException e = assertThrows(NullPointerException.class, call, name);
        assertTrue(e.getMessage() != null && e.getMessage().startsWith(name + " is null"),
                "expected a message naming '" + name + "', got: " + e.getMessage());
    }

    @Test
    void everyReferenceParameterIsNamed() {
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 2, 3).fill(7f);
            MemorySegment s = t.segment();
            isNull("arena", () -> Tensor.allocate(null, 2, 3));
            isNull("shape", () -> Tensor.allocate(arena, (long[]) null));
            isNull("arena", () -> Tensor.of(null, new float[6], 2, 3));
            isNull("values", () -> Tensor.of(arena, null, 2, 3));
            isNull("shape", () -> Tensor.of(arena, new float[6], (long[]) null));
            isNull("segment", () -> Tensor.wrap(null, 2, 3));
            isNull("shape", () -> Tensor.wrap(s, (long[]) null));
            isNull("segment", () -> Tensor.view(null, 0, new long[] {2, 3}, new long[] {3, 1}));
            isNull("shape", () -> Tensor.view(s, 0, null, new long[] {3, 1}));
            isNull("strides", () -> Tensor.view(s, 0, new long[] {2, 3}, null));
            isNull("other", () -> t.overlaps(null));
            isNull("x", () -> Tensor.overlaps(null, 0, 1, s, 0, 1));
            isNull("y", () -> Tensor.overlaps(s, 0, 1, null, 0, 1));
            isNull("s", () -> Tensor.usable(null));
            isNull("s", () -> Tensor.requireUsable(null, "w"));
            // the README lists requireUsable among the methods whose null arguments are refused: a null name was
            // taken while the tensor was usable, and printed as "null [2, 3]: its arena is closed" once it was not
            isNull("what", () -> Tensor.requireUsable(s, null));
            isNull("name", () -> t.requireUsable(null));
            isNull("name", () -> t.describe(null)); // it returned "null [2, 3]"
            isNull("newShape", () -> t.reshape((long[]) null));
            isNull("target", () -> t.broadcastTo((long[]) null));
            isNull("coords", () -> t.index((long[]) null));
            isNull("coords", () -> t.get((long[]) null));
            isNull("coords", () -> t.set(1f, (long[]) null));
            isNull("values", () -> t.copyFrom((float[]) null));
            isNull("values", () -> t.copyFrom(null, 0));
            isNull("dst", () -> t.copyTo(null, 0));
            isNull("src", () -> t.copyFrom((Tensor) null));
            for (float v : t.toArray()) {
                assertTrue(v == 7f, "a refused call wrote the tensor");
            }
        }
    }
}
