package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.ref.WeakReference;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A call whose scratch per worker fits a long, but not times the workers (views with zero strides: a packed copy
 * of q [2^30, 2^30] is 2^62 bytes): the plan takes fewer workers, as it does for any scratch over the budget
 * (the default budget is a long's largest value), rather than multiply past a long. The workspace it asks for is
 * then a long, and a call given a smaller workspace is refused naming q; none of plan, workspaceBytes or sdpa
 * throws the JDK's bare "long overflow". The arguments are refused or run, and the refused call keeps no
 * reference to them (the calling thread's job is reused by its next call, for the thread's life).
 */
class ScratchOverflowTest {
    private static final long N = 1L << 30;

    private static Tensor[] tensors(MemorySegment s) {
        long[] z = {0, 0, 0, 0};
        return new Tensor[] {
            Tensor.view(s, 0, new long[] {1, 1, N, N}, z),
            Tensor.view(s, 0, new long[] {1, 1, 1, N}, z),
            Tensor.view(s, 0, new long[] {1, 1, 1, 0}, z),
            // Dv = 0: nothing to compute or write, so that the call itself may run
            Tensor.view(s, 0, new long[] {1, 1, N, 0}, z),
        };
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void scratchPastALongAcrossWorkersIsPlannedOnFewerWorkers(Backend backend) {
        try (Arena a = Arena.ofShared()) {
            Tensor[] t = tensors(a.allocate(256, 64));
            Tensor q = t[0];
            Tensor k = t[1];
            Tensor v = t[2];
            Tensor out = t[3];
            // every core: two on the machine these tests run on, where the workers then doubled past a long
            Attention att = Attention.create(backend, Runtime.getRuntime().availableProcessors());
            String plan = att.plan(q, k, v, out, SdpaOptions.DEFAULT);
            long bytes = att.workspaceBytes(q, k, v, out, SdpaOptions.DEFAULT);
            if (backend != Backend.REFERENCE) {
                // a packed copy of q alone is N·N floats
                assertTrue(bytes >= N * N * Float.BYTES, plan + ": " + bytes + " bytes");
                assertTrue(plan.contains("workspaceBytes=" + bytes), plan);
            }
            att.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
            Workspace ws = Workspace.allocate(a, 1 << 16);
            if (backend != Backend.REFERENCE) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> att.sdpa(q, k, v, out, SdpaOptions.DEFAULT, ws));
                assertTrue(e.getMessage().contains("q [1, 1, 1073741824, 1073741824]")
                        && e.getMessage().contains("too small"), e.getMessage());
            } else {
                att.sdpa(q, k, v, out, SdpaOptions.DEFAULT, ws);
            }
            // the workspace is free for the next call
            assertTrue(ws.acquire());
            ws.release();
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aRefusedCallWithAWorkspaceKeepsNoReferenceToItsTensors(Backend backend) throws Exception {
        Attention att = Attention.create(backend, Runtime.getRuntime().availableProcessors());
        WeakReference<MemorySegment> ref = callAndDrop(att);
        long end = System.nanoTime() + 10_000_000_000L;
        while (ref.get() != null) {
            assertTrue(System.nanoTime() - end < 0, backend + ": the refused call's tensors are still reachable");
            System.gc();
            Thread.sleep(10);
        }
        assertEquals(null, ref.get());
    }

    /** The call, in a frame of its own: a local of the test's frame would keep the segment reachable itself. */
    private static WeakReference<MemorySegment> callAndDrop(Attention att) {
        try (Arena a = Arena.ofShared()) {
            Workspace ws = Workspace.allocate(a, 1 << 16);
            MemorySegment s = Arena.ofAuto().allocate(256, 64);
            Tensor[] t = tensors(s);
            try {
                att.sdpa(t[0], t[1], t[2], t[3], SdpaOptions.DEFAULT, ws);
            } catch (RuntimeException e) {
                // refused (the workspace is too small): what it keeps is the question here
            }
            return new WeakReference<>(s);
        }
    }
}
