package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Tensors over Java arrays ({@code MemorySegment.ofArray}): the Java backends compute with them, the native one
 * refuses them with {@link IllegalArgumentException} (OpenBLAS needs off-heap memory), never a crash.
 */
class HeapSegmentTest {

    @Test
    void javaBackendsComputeOnHeapTensorsAndNativeRefusesThem() {
        Random r = new Random(Fuzz.seed("heap-segments"));
        try (Arena arena = Arena.ofConfined()) {
            // causal with Lq far above Lk: the first query blocks see no key at all
            long lq = 300;
            long lk = 10;
            Tensor q = Tensor.wrap(MemorySegment.ofArray(Fuzz.uniform(r, (int) (2 * lq * 8))), 1, 2, lq, 8);
            Tensor k = Fuzz.random(arena, r, 1, 1, lk, 8);
            Tensor v = Tensor.wrap(MemorySegment.ofArray(Fuzz.uniform(r, (int) (lk * 4))), 1, 1, lk, 4);
            Tensor ref = Tensor.allocate(arena, 1, 2, lq, 4);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            Tensor out = Tensor.wrap(MemorySegment.ofArray(new float[(int) (2 * lq * 4)]), 1, 2, lq, 4);
            Attention.create(Backend.JAVA).sdpa(q, k, v, out, SdpaOptions.CAUSAL);
            float[] got = out.toArray();
            float[] want = ref.toArray();
            // the attention tests' standard bound (dev.qkv.attention.Fixtures): 4 (Dk + Lk) 2^-24, atol and rtol
            double tol = 4 * (8 + lk) * 0x1p-24;
            for (int i = 0; i < got.length; i++) {
                assertEquals(want[i], got[i], tol + tol * Math.abs(want[i]), "element " + i);
            }
            Tensor nativeOut = Tensor.allocate(arena, 1, 2, lq, 4).fill(7f);
            assertThrows(IllegalArgumentException.class,
                    () -> Attention.create(Backend.NATIVE).sdpa(q, k, v, nativeOut, SdpaOptions.CAUSAL));
            int written = 0;
            for (float x : nativeOut.toArray()) {
                written += x != 7f ? 1 : 0;
            }
            // the heap segment is refused before any block runs, so not even the rows that see no key are zeroed
            assertEquals(0, written, "NATIVE with a heap q wrote " + written + " of " + nativeOut.elementCount()
                    + " output elements before rejecting it");
        }
    }

    /**
     * AUTO with a heap output at head size 256, where it would run OpenBLAS: in this JVM (Vector API present) the
     * Java kernels take the call, whatever core OpenBLAS runs; without the Vector API (a child JVM) AUTO has
     * only OpenBLAS and refuses the heap tensor by name before writing anything.
     */
    @Test
    void autoKeepsHeapTensorsOffOpenBlasOrRefusesThemFirst() throws Exception {
        String here = probe(true);
        assertTrue(here.startsWith("ok "), here);
        assertTrue(Double.parseDouble(here.substring(3)) < 1e-5, here);
        String scalar = probe(false);
        assertTrue(scalar.startsWith("rejected 0 out [1, 2, 96, 256]"), scalar);
        assertTrue(scalar.contains("heap segment"), scalar);
    }

    /**
     * The layer under AUTO with heap weights, input and output: without the Vector API its products run on
     * OpenBLAS, and the heap operands go to the Java kernels instead of being refused.
     */
    @Test
    void autoLayerRunsHeapTensorsWhenItsProductsAreNative() throws Exception {
        // and off-heap tensors at an odd address, which OpenBLAS cannot take either (they reached its check)
        for (String mode : new String[] {"mha", "mha-odd"}) {
            for (boolean vector : new boolean[] {true, false}) {
                String got = probe(vector, mode);
                assertTrue(got.startsWith("ok "), mode + ": " + got);
                assertTrue(Double.parseDouble(got.split(" ")[1]) < 1e-5, mode + ": " + got);
                if (!vector) {
                    assertTrue(got.endsWith("products=native"), "the probe should run OpenBLAS products: " + got);
                }
            }
        }
    }

    private static String probe(boolean vector, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(ProcessHandle.current().info().command().orElseThrow(),
                "--enable-native-access=ALL-UNNAMED"));
        if (vector) {
            cmd.addAll(List.of("--add-modules", "jdk.incubator.vector"));
        } else {
            cmd.add("-Dqkv.vector=false");
        }
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), AutoHeapProbe.class.getName()));
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "child timed out");
        assertEquals(0, p.exitValue(), "child failed: " + err);
        return out;
    }
}
