package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.blas.OpenBlas;
import dev.qkv.blas.Transpose;
import dev.qkv.kernel.MatmulKernel;
import dev.qkv.mha.KvCache;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;
import java.util.concurrent.CountDownLatch;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Memory of a confined arena that another thread owns is refused before any work, naming the tensor. The JDK
 * refuses it too, but mid-call: after part of the output was written, and only where a kernel first touches it.
 * The output must be untouched.
 */
class ConfinedArenaTest {
    private static final long[] QKV = {1, 2, 16, 8};
    private static final CountDownLatch DONE = new CountDownLatch(1);
    private static Arena shared;
    private static MultiHeadAttention layer;
    private static Thread owner;
    // made by the owner thread, in its confined arena
    private static Tensor fq;
    private static Tensor fMask;
    private static Tensor fOut;
    private static Workspace fWs;
    private static Tensor fX;
    private static KvCache fCache;
    private static MhaWorkspace fMhaWs;

    @BeforeAll
    static void startOwner() throws Exception {
        shared = Arena.ofShared();
        layer = MultiHeadAttention.create(MhaLayers.weights(shared, new Random(5), 2, 2, 16, true, false),
                Backend.JAVA);
        CountDownLatch ready = new CountDownLatch(1);
        Throwable[] failed = new Throwable[1];
        owner = Thread.ofPlatform().daemon().start(() -> {
            try (Arena a = Arena.ofConfined()) {
                Random r = new Random(1);
                fq = Fuzz.random(a, r, QKV);
                fMask = Tensor.allocate(a, 16, 16).fill(1f);
                fOut = Tensor.allocate(a, QKV);
                fWs = Workspace.allocate(a, 1 << 20);
                fX = MhaLayers.rand(a, r, 1f, 1, 16, 32);
                fCache = layer.newCache(a, 64);
                fMhaWs = layer.newWorkspace(a, 1, 16, 64);
                ready.countDown();
                DONE.await();
            } catch (Throwable e) {
                failed[0] = e;
                ready.countDown();
            }
        });
        ready.await();
        if (failed[0] != null) {
            throw new AssertionError(failed[0]);
        }
    }

    @AfterAll
    static void stopOwner() throws Exception {
        DONE.countDown();
        owner.join();
        shared.close();
    }

    private static void assertRefused(Executable call, String name) {
        WrongThreadException e = assertThrows(WrongThreadException.class, call);
        assertTrue(e.getMessage().startsWith(name), e.getMessage());
        assertTrue(e.getMessage().endsWith("its arena is confined to another thread"), e.getMessage());
    }

    private static void assertAllNaN(Tensor t) {
        for (float f : t.toArray()) {
            assertTrue(Float.isNaN(f), "the output was written before the refusal");
        }
    }

    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO", "REFERENCE"})
    void sdpaRefusesEachForeignTensorByName(Backend backend) {
        Attention att = Attention.create(backend);
        Random r = new Random(2);
        Tensor q = Fuzz.random(shared, r, QKV);
        Tensor k = Fuzz.random(shared, r, QKV);
        Tensor v = Fuzz.random(shared, r, QKV);
        Tensor out = Tensor.allocate(shared, QKV).fill(Float.NaN);
        assertRefused(() -> att.sdpa(fq, k, v, out, SdpaOptions.DEFAULT), "q [1, 2, 16, 8]");
        assertRefused(() -> att.sdpa(q, fq, v, out, SdpaOptions.DEFAULT), "k [1, 2, 16, 8]");
        assertRefused(() -> att.sdpa(q, k, fq, out, SdpaOptions.DEFAULT), "v [1, 2, 16, 8]");
        assertRefused(() -> att.sdpa(q, k, v, out, new SdpaOptions(false, Mask.allowed(fMask), Float.NaN)),
                "mask [16, 16]");
        assertAllNaN(out);
        assertRefused(() -> att.sdpa(q, k, v, fOut, SdpaOptions.DEFAULT), "out [1, 2, 16, 8]");
        if (backend != Backend.REFERENCE) {
            assertRefused(() -> att.sdpa(q, k, v, out, SdpaOptions.DEFAULT, fWs), "workspace");
        }
        assertAllNaN(out);
        // and the same call with memory of its own runs
        att.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
        assertTrue(Float.isFinite(out.toArray()[0]));
    }

    @Test
    void theLayerRefusesEachForeignTensorByName() {
        Random r = new Random(3);
        Tensor x = MhaLayers.rand(shared, r, 1f, 1, 16, 32);
        Tensor out = Tensor.allocate(shared, 1, 16, 32).fill(Float.NaN);
        MhaWorkspace ws = layer.newWorkspace(shared, 1, 16, 64);
        KvCache cache = layer.newCache(shared, 64);
        assertRefused(() -> layer.forward(fX, out, SdpaOptions.CAUSAL, ws), "x [1, 16, 32]");
        assertRefused(() -> layer.forward(x, fX, out, SdpaOptions.DEFAULT, ws), "kv [1, 16, 32]");
        assertRefused(() -> layer.forward(x, out, SdpaOptions.CAUSAL, fMhaWs), "workspace");
        assertRefused(() -> layer.decode(x, fCache, out, ws), "KV cache");
        assertEquals(0, fCache.length());
        assertRefused(() -> layer.decode(fX, cache, out, ws), "x [1, 16, 32]");
        assertEquals(0, cache.length(), "nothing appended");
        assertAllNaN(out);
    }

    @Test
    void matrixProductsRefuseForeignOperandsByName() {
        Tensor a = Tensor.allocate(shared, 16, 8).fill(1f);
        Tensor c = Tensor.allocate(shared, 16, 16).fill(Float.NaN);
        for (MatmulKernel kernel : new MatmulKernel[] {MatmulKernel.javaScalar(), MatmulKernel.java()}) {
            assertRefused(() -> kernel.matmul(Transpose.NO, Transpose.YES, 16, 16, 8, 1f, fX.segment(), 0, 8,
                    a.segment(), 0, 8, 0f, c.segment(), 0, 16), "sgemm: a [16, 8]");
            assertRefused(() -> kernel.matmul(Transpose.NO, Transpose.YES, 16, 16, 8, 1f, a.segment(), 0, 8,
                    a.segment(), 0, 8, 0f, fMask.segment(), 0, 16), "sgemm: c [16, 16]");
        }
        if (OpenBlas.isAvailable()) {
            Tensor sq = Tensor.allocate(shared, 16, 16).fill(1f);
            assertRefused(() -> OpenBlas.get().matmul(Transpose.NO, sq, Transpose.YES, fq.reshape(16, 16), 1f, 0f,
                    c), "matmul: b [16, 16]");
        }
        assertAllNaN(c);
    }
}
