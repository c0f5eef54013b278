package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.io.Npy;
import dev.qkv.mha.KvCache;
import dev.qkv.mha.MhaWeights;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A service cancels work by interrupting its threads ({@code Future.cancel(true)}, an executor's shutdownNow). A
 * call made by an interrupted thread must either complete exactly as it would have, or fail with an exception
 * that says what happened and names the file; in both cases the interrupt must be kept for the caller's own
 * cancellation logic, and nothing may be left behind for the next call.
 */
class InterruptTest {

    /** The calls complete, bit for bit as on a thread that is not interrupted, and the interrupt is kept. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void callsOnAnInterruptedThreadCompleteAndKeepTheInterrupt(Backend backend) throws Exception {
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(9);
            Tensor q = Fuzz.random(a, r, 1, 4, 256, 64);
            Tensor k = Fuzz.random(a, r, 1, 2, 256, 64);
            Tensor v = Fuzz.random(a, r, 1, 2, 256, 64);
            MhaWeights w = MhaLayers.weights(a, r, 4, 2, 32, true, false);
            Tensor x = MhaLayers.rand(a, r, 1f, 1, 64, 128);
            Attention att = Attention.create(backend);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            float[][] plain = run(a, att, layer, q, k, v, x, false);
            for (boolean virtual : new boolean[] {false, true}) {
                float[][][] got = new float[1][][];
                Throwable[] thrown = new Throwable[1];
                Runnable body = () -> {
                    try {
                        got[0] = run(a, att, layer, q, k, v, x, true);
                    } catch (Throwable e) {
                        thrown[0] = e;
                    }
                };
                Thread t = virtual ? Thread.ofVirtual().start(body) : Thread.ofPlatform().start(body);
                t.join();
                if (thrown[0] != null) {
                    throw new AssertionError(backend + (virtual ? " virtual" : " platform") + ": " + thrown[0],
                            thrown[0]);
                }
                for (int i = 0; i < plain.length; i++) {
                    assertArrayEquals(plain[i], got[0][i], backend + " call " + i + (virtual ? " virtual" : ""));
                }
            }
        }
    }

    /**
     * sdpa, forward and decode with fresh outputs; {@code interrupted}: each made with the thread's interrupt
     * set, which must still be set after it.
     */
    private static float[][] run(Arena a, Attention att, MultiHeadAttention layer, Tensor q, Tensor k, Tensor v,
                                 Tensor x, boolean interrupted) {
        float[][] res = new float[3][];
        Tensor out = Tensor.allocate(a, q.shape());
        interruptIf(interrupted);
        att.sdpa(q, k, v, out, SdpaOptions.CAUSAL);
        keptIf(interrupted, "sdpa");
        res[0] = out.toArray();
        Tensor y = Tensor.allocate(a, x.shape());
        MhaWorkspace ws = layer.newWorkspace(a, 1, x.size(1), 2 * x.size(1));
        interruptIf(interrupted);
        layer.forward(x, y, SdpaOptions.CAUSAL, ws);
        keptIf(interrupted, "forward");
        res[1] = y.toArray();
        KvCache cache = layer.newCache(a, (int) (2 * x.size(1)));
        Tensor z = Tensor.allocate(a, x.shape());
        interruptIf(interrupted);
        layer.decode(x, cache, z, ws);
        keptIf(interrupted, "decode");
        res[2] = z.toArray();
        return res;
    }

    private static void interruptIf(boolean on) {
        if (on) {
            Thread.currentThread().interrupt();
        }
    }

    private static void keptIf(boolean on, String call) {
        if (on) {
            assertTrue(Thread.interrupted(), call + " cleared the thread's interrupt");
        }
    }

    /**
     * As Npy's javadoc says: an {@link java.io.InterruptedIOException}, caused by the channel's
     * {@link java.nio.channels.ClosedByInterruptException} (mutation testing: the cause dropped, nothing failed).
     */
    private static void assertInterruptedBy(IOException e) {
        assertTrue(e instanceof java.io.InterruptedIOException, e.getClass().getName());
        assertTrue(e.getCause() instanceof java.nio.channels.ClosedByInterruptException, String.valueOf(e.getCause()));
    }

    /**
     * Reading a .npy file on an interrupted thread: the JDK's channel refuses, as a bare
     * ClosedByInterruptException, which said neither which file nor what happened. It must name both, keep the
     * interrupt, and leave the file readable once the thread is no longer interrupted.
     */
    @Test
    void anInterruptedNpyReadNamesTheFileAndKeepsTheInterrupt(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("x.npy");
        try (Arena a = Arena.ofConfined()) {
            Tensor t = Fuzz.random(a, new Random(4), 16, 16);
            Npy.write(file, t);
            Thread.currentThread().interrupt();
            IOException e;
            try {
                e = assertThrows(IOException.class, () -> Npy.read(file, a));
            } finally {
                assertTrue(Thread.interrupted(), "the read cleared the thread's interrupt");
            }
            assertTrue(String.valueOf(e.getMessage()).contains(file.toString())
                    && e.getMessage().contains("interrupted"), String.valueOf(e.getMessage()));
            assertInterruptedBy(e);
            assertArrayEquals(t.toArray(), Npy.read(file, a).tensor().toArray());
        }
    }

    /**
     * Writing a .npy file on an interrupted thread: the message read "{@code <file>: null}". It must say the write
     * was interrupted, keep the interrupt, leave an existing file as it was and no temporary file behind.
     */
    @Test
    void anInterruptedNpyWriteSaysSoAndLeavesTheOldFile(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("y.npy");
        try (Arena a = Arena.ofConfined()) {
            Tensor old = Fuzz.random(a, new Random(5), 8, 8);
            Npy.write(file, old);
            Tensor t = Fuzz.random(a, new Random(6), 32, 32);
            Thread.currentThread().interrupt();
            IOException e;
            try {
                e = assertThrows(IOException.class, () -> Npy.write(file, t));
            } finally {
                assertTrue(Thread.interrupted(), "the write cleared the thread's interrupt");
            }
            assertTrue(String.valueOf(e.getMessage()).contains(file.toString())
                    && e.getMessage().contains("interrupted"), String.valueOf(e.getMessage()));
            assertInterruptedBy(e);
            assertArrayEquals(old.toArray(), Npy.read(file, a).tensor().toArray());
            try (Stream<Path> files = Files.list(dir)) {
                assertEquals(1, files.count(), "a temporary file was left in " + dir);
            }
        }
    }
}
