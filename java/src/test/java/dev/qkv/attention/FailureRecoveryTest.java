package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.BiConsumer;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Failure atomicity of {@link Attention#sdpa}: after every refused call, on every backend, with and without a
 * workspace, on platform and virtual threads, out is untouched, the workspace is free again, and the next call
 * gives the reference's result.
 */
class FailureRecoveryTest {

    private static Tensor nan(Arena a, long... shape) {
        return Tensor.allocate(a, shape).fill(Float.NaN);
    }

    private static void refused(Runnable call, String what) {
        try {
            call.run();
        } catch (RuntimeException | Error e) {
            return;
        }
        fail(what + ": not refused");
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aRefusedCallLeavesEverythingAsItWas(Backend backend) throws Exception {
        for (boolean virtual : new boolean[] {false, true}) {
            Throwable[] thrown = new Throwable[1];
            Runnable body = () -> {
                try {
                    run(backend, virtual);
                } catch (Throwable e) {
                    thrown[0] = e;
                }
            };
            Thread t = virtual ? Thread.ofVirtual().start(body) : Thread.ofPlatform().start(body);
            t.join();
            if (thrown[0] != null) {
                throw new AssertionError(backend + (virtual ? " (virtual)" : ""), thrown[0]);
            }
        }
    }

    private static void run(Backend backend, boolean virtual) {
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(5);
            Tensor q = Fixtures.random(a, r, 1, 4, 80, 16);
            Tensor k = Fixtures.random(a, r, 1, 2, 96, 16);
            Tensor v = Fixtures.random(a, r, 1, 2, 96, 16);
            Tensor ref = Tensor.allocate(a, 1, 4, 80, 16);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            float[] want = ref.toArray();
            Attention att = Attention.create(backend);
            Workspace ws = Workspace.allocate(a, att.workspaceBytes(q, k, v, ref, SdpaOptions.CAUSAL));
            Workspace small = Workspace.allocate(a, 64);
            Arena gone = Arena.ofShared();
            Tensor closedK = Tensor.allocate(gone, 1, 2, 96, 16);
            gone.close();
            Attention tight = Attention.builder().backend(backend).workspaceBudget(100).build();
            Tensor badMask = Tensor.allocate(a, 3, 96).fill(1f);
            List<String> names = new ArrayList<>();
            List<BiConsumer<Tensor, Workspace>> calls = new ArrayList<>();
            names.add("k of another Dk");
            calls.add((out, w) -> call(att, q, Tensor.allocate(a, 1, 2, 96, 8), v, out, SdpaOptions.CAUSAL, w));
            names.add("a mask that does not broadcast");
            calls.add((out, w) -> call(att, q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.allowed(badMask)), w));
            names.add("k of a closed arena");
            calls.add((out, w) -> call(att, q, closedK, v, out, SdpaOptions.CAUSAL, w));
            names.add("a budget too small");
            calls.add((out, w) -> call(tight, q, k, v, out, SdpaOptions.CAUSAL, w));
            names.add("a workspace too small");
            calls.add((out, w) -> call(att, q, k, v, out, SdpaOptions.CAUSAL, small));
            names.add("a workspace in use");
            calls.add((out, w) -> {
                assertTrue(ws.acquire());
                try {
                    call(att, q, k, v, out, SdpaOptions.CAUSAL, ws);
                } finally {
                    ws.release();
                }
            });
            names.add("out over q");
            calls.add((out, w) -> call(att, q, k, v, q, SdpaOptions.CAUSAL, w));
            for (int i = 0; i < names.size(); i++) {
                for (Workspace w : new Workspace[] {null, ws}) {
                    String what = backend + (virtual ? " (virtual)" : "") + ", " + names.get(i)
                            + (w == null ? "" : ", with a workspace");
                    if (names.get(i).contains("workspace") && w == null
                            || (names.get(i).contains("budget") || names.get(i).contains("too small"))
                            && backend == Backend.REFERENCE) {
                        // the reference keeps no scratch: neither a budget nor the workspace's size bounds it
                        continue;
                    }
                    Tensor out = nan(a, 1, 4, 80, 16);
                    BiConsumer<Tensor, Workspace> c = calls.get(i);
                    refused(() -> c.accept(out, w), what);
                    for (float x : out.toArray()) {
                        assertTrue(Float.isNaN(x), what + ": out was written by a refused call");
                    }
                    assertTrue(ws.acquire(), what + ": the workspace stayed in use");
                    ws.release();
                    for (Workspace w2 : new Workspace[] {null, ws}) {
                        Tensor good = nan(a, 1, 4, 80, 16);
                        call(att, q, k, v, good, SdpaOptions.CAUSAL, w2);
                        Fixtures.assertClose(what + ", the next call", good.shape(), good.toArray(), want, 1e-5, 1e-4);
                    }
                }
            }
        }
    }

    private static void call(Attention att, Tensor q, Tensor k, Tensor v, Tensor out, SdpaOptions o, Workspace w) {
        if (w == null) {
            att.sdpa(q, k, v, out, o);
        } else {
            att.sdpa(q, k, v, out, o, w);
        }
    }
}
