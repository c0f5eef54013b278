package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * An output in a read-only file mapping (a weight of a {@code .safetensors} file is one): before the checks,
 * OpenBLAS wrote into it and the JVM died of SIGSEGV. Every entry point must refuse it by name instead.
 */
class ReadOnlyOutputTest {
    @TempDir
    Path dir;

    /** A zero-filled read-only mapping of {@code floats} floats. */
    private MemorySegment readOnlyMapping(Arena arena, int floats) throws IOException {
        Path f = dir.resolve("ro-" + System.nanoTime() + ".bin");
        Files.write(f, new byte[floats * Float.BYTES]);
        try (FileChannel ch = FileChannel.open(f)) {
            return ch.map(FileChannel.MapMode.READ_ONLY, 0, (long) floats * Float.BYTES, arena);
        }
    }

    private static boolean allZero(MemorySegment s) {
        for (long i = 0; i < s.byteSize(); i++) {
            if (s.get(java.lang.foreign.ValueLayout.JAVA_BYTE, i) != 0) {
                return false;
            }
        }
        return true;
    }

    @Test
    void sgemmRefusesAReadOnlyOutput() throws IOException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment x = Fuzz.random(a, new Random(1), 64, 64).segment();
            MemorySegment c = readOnlyMapping(a, 64 * 64);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> OpenBlas.get().sgemm(
                    Transpose.NO, Transpose.NO, 64, 64, 64, 1f, x, 0, 64, x, 0, 64, 0f, c, 0, 64));
            assertTrue(e.getMessage().contains("read-only"), e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> MatmulKernel.openBlas().matmul(
                    Transpose.NO, Transpose.NO, 64, 64, 64, 1f, x, 0, 64, x, 0, 64, 0f, c, 0, 64));
            assertTrue(allZero(c));
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void sdpaRefusesAReadOnlyOutputByName(Backend backend) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Tensor q = Fuzz.random(a, new Random(2), 1, 2, 130, 16);
            Tensor out = Tensor.wrap(readOnlyMapping(a, 2 * 130 * 16), 1, 2, 130, 16);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Attention.create(backend).sdpa(q, q, q, out, SdpaOptions.CAUSAL));
            assertTrue(e.getMessage().startsWith("out [1, 2, 130, 16]") && e.getMessage().contains("read-only"),
                    e.getMessage());
            assertTrue(allZero(out.segment()));
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void mhaRefusesAReadOnlyOutputByName(Backend backend) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(3);
            MultiHeadAttention layer = MultiHeadAttention.create(MhaLayers.weights(a, r, 4, 2, 8, true, true), backend);
            Tensor x = MhaLayers.rand(a, r, 1f, 2, 70, 32);
            Tensor out = Tensor.wrap(readOnlyMapping(a, 2 * 70 * 32), 2, 70, 32);
            MhaWorkspace ws = layer.newWorkspace(a, 2, 70, 70);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(x, out, SdpaOptions.DEFAULT, ws));
            assertTrue(e.getMessage().startsWith("out [2, 70, 32]") && e.getMessage().contains("read-only"),
                    e.getMessage());
            Tensor one = Tensor.wrap(readOnlyMapping(a, 32), 1, 1, 32);
            assertThrows(IllegalArgumentException.class,
                    () -> layer.decode(x.slice(0, 0, 1).slice(1, 0, 1), layer.newCache(a, 4), one, ws));
            assertTrue(allZero(out.segment()) && allZero(one.segment()));
        }
    }
}
