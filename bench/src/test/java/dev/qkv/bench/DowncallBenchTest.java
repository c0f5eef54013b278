package dev.qkv.bench;

import org.junit.jupiter.api.Test;

import java.lang.foreign.ValueLayout;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link DowncallBench} times a product it has checked: its inputs were all zeros, so any kernel, a wrong one
 * included, gave the right answer (zero), and nothing compared the answer with anything.
 */
class DowncallBenchTest {

    @Test
    void theTimedProductHasNonZeroInputsAndIsCheckedAgainstADoubleProduct() {
        DowncallBench bench = new DowncallBench();
        bench.n = 8;
        int n = bench.n;
        bench.setup();
        try {
            float[] a = bench.a.toArray(ValueLayout.JAVA_FLOAT);
            float[] b = bench.b.toArray(ValueLayout.JAVA_FLOAT);
            float[] c = bench.c.toArray(ValueLayout.JAVA_FLOAT);
            assertTrue(BenchSupport.maxAbs(a) > 0 && BenchSupport.maxAbs(b) > 0, "inputs of zeros check nothing");
            // C = A · Bᵀ (sgemm NO, YES), every array row-major n × n
            for (int i = 0; i < n; i++) {
                for (int j = 0; j < n; j++) {
                    double want = 0;
                    for (int p = 0; p < n; p++) {
                        want += (double) a[i * n + p] * b[j * n + p];
                    }
                    assertEquals(want, c[i * n + j], 1e-5 * n, "c[" + i + ", " + j + "]");
                }
            }
            assertDoesNotThrow(bench::check);
            bench.c.setAtIndex(ValueLayout.JAVA_FLOAT, 3, c[3] + 0.01f);
            assertThrows(IllegalStateException.class, bench::check);
        } finally {
            bench.tearDown();
        }
    }
}
