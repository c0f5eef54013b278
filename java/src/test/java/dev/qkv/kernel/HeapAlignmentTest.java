package dev.qkv.kernel;

import org.junit.jupiter.api.Test;

import java.lang.foreign.MemorySegment;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The alignment hint against arithmetic it must obey: a view that starts {@code j} floats into an array sits
 * {@code j · 4} bytes further on, so its aligned start is the array's minus {@code j}, modulo 16 floats.
 */
class HeapAlignmentTest {

    @Test
    void offsetsAgreeWithSlicesOfTheSameArray() {
        float[] a = new float[4096];
        MemorySegment whole = MemorySegment.ofArray(a);
        for (int j = 0; j < 40; j++) {
            MemorySegment slice = whole.asSlice((long) j * Float.BYTES);
            // a collection between the two questions may move the array; ask again until both agree on a place
            boolean agreed = false;
            for (int attempt = 0; attempt < 5 && !agreed; attempt++) {
                int w0 = HeapAlignment.floatOffset(whole);
                int s = HeapAlignment.floatOffset(slice);
                int w1 = HeapAlignment.floatOffset(whole);
                if (w0 != w1) {
                    continue;
                }
                assertTrue(w0 >= 0 && w0 <= HeapAlignment.SLACK, "offset " + w0);
                assertEquals(Math.floorMod(w0 - j, 16), s, "slice at " + j);
                agreed = true;
            }
            assertTrue(agreed, "the array kept moving");
        }
    }

    @Test
    void packBufferStartIsWithinItsSlack() {
        PackBuffer b = new PackBuffer();
        b.ensure(100);
        int at = b.alignedStart();
        assertTrue(at >= 0 && at <= HeapAlignment.SLACK, "start " + at);
        assertTrue(b.array().length >= 100);
    }
}
