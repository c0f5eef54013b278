package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;

import static dev.qkv.attention.Fixtures.assertClose;
import static dev.qkv.attention.Fixtures.random;
import static dev.qkv.attention.Fixtures.tol;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

/**
 * What a call asks for depends on its tensors' shapes and memory, not on their values, and AUTO takes every
 * tensor its contract says it takes. Both from a review: a subnormal in v made the OpenBLAS engine pack v into
 * the workspace, so a workspace sized by {@code workspaceBytes} a moment before was refused as too small, and a
 * budget that fit dropped the call to 8-row blocks; and AUTO on an AVX-512 core refused heap or misaligned
 * tensors in layouts that need a copy, which it runs on the Java kernels by the README. Every result is compared
 * with the reference backend.
 */
class PlanIndependenceTest {

    private static final long[] Q = {1, 2, 64, 16};
    private static final long[] KV = {1, 2, 96, 16};

    @Test
    void aSubnormalInVChangesNeitherTheWorkspaceNorThePlan() {
        try (Arena arena = Arena.ofShared()) {
            Random r = new Random(3);
            Tensor q = random(arena, r, Q);
            Tensor k = random(arena, r, KV);
            Tensor v = random(arena, r, KV);
            Tensor out = Tensor.allocate(arena, Q);
            Attention native1 = Attention.create(Backend.NATIVE, 1);
            SdpaOptions o = SdpaOptions.CAUSAL;
            long need = native1.workspaceBytes(q, k, v, out, o);
            String plan = native1.plan(q, k, v, out, o);
            Workspace sized = Workspace.allocate(arena, need);
            native1.sdpa(q, k, v, out, o, sized);

            v.set(1e-40f, 0, 1, 5, 3);
            v.set(-3e-39f, 0, 0, 90, 15);
            assertEquals(need, native1.workspaceBytes(q, k, v, out, o));
            assertEquals(plan, native1.plan(q, k, v, out, o));
            Tensor ref = Tensor.allocate(arena, Q);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
            double t = tol(Q[3], KV[2], 1);
            // the workspace sized before, a workspace of scoreTileBytes, and none: each runs, and matches
            native1.sdpa(q, k, v, out, o, sized);
            assertClose("sized before the subnormal", Q, out.toArray(), ref.toArray(), t, t);
            out.fill(Float.NaN);
            native1.sdpa(q, k, v, out, o, Workspace.allocate(arena, native1.scoreTileBytes(Q[2], KV[2])));
            assertClose("scoreTileBytes", Q, out.toArray(), ref.toArray(), t, t);
            out.fill(Float.NaN);
            native1.sdpa(q, k, v, out, o);
            assertClose("no workspace", Q, out.toArray(), ref.toArray(), t, t);

            // a budget that fits the call without the copy of v: still the same plan, and it runs
            long budget = Long.parseLong(plan.replaceAll(".*workspaceBytes=(\\d+).*", "$1"))
                    + (plan.contains("qTransposedBytes=")
                    ? Long.parseLong(plan.replaceAll(".*qTransposedBytes=(\\d+).*", "$1")) : 0);
            Attention tight = Attention.builder().backend(Backend.NATIVE).threads(1).workspaceBudget(budget).build();
            out.fill(Float.NaN);
            tight.sdpa(q, k, v, out, o);
            assertClose("budget " + budget, Q, out.toArray(), ref.toArray(), t, t);
            assertEquals(plan.replaceAll(" budget=\\d+", ""), tight.plan(q, k, v, out, o).replaceAll(" budget=\\d+", ""));
        }
    }

    @Test
    void autoRunsHeapAndMisalignedTensorsInLayoutsThatNeedACopy() {
        Random r = new Random(4);
        int n = Fixtures.count(Q);
        int m = Fixtures.count(KV);
        float[] qa = Fixtures.uniform(r, n, -1, 1);
        float[] ka = Fixtures.uniform(r, m, -1, 1);
        float[] va = Fixtures.uniform(r, m, -1, 1);
        Tensor q = Tensor.wrap(MemorySegment.ofArray(qa), Q);
        Tensor k = Tensor.wrap(MemorySegment.ofArray(ka), KV);
        Tensor v = Tensor.wrap(MemorySegment.ofArray(va), KV);
        Attention auto = Attention.create(Backend.AUTO, 2);
        for (SdpaOptions o : new SdpaOptions[] {SdpaOptions.DEFAULT, SdpaOptions.CAUSAL}) {
            Tensor ref = Tensor.wrap(MemorySegment.ofArray(new float[n]), Q);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
            double t = tol(Q[3], KV[2], 1);

            // out [B, H, L, D] as a transposed view of a heap [B, H, D, L]
            Tensor outT = Tensor.wrap(MemorySegment.ofArray(new float[n]), Q[0], Q[1], Q[3], Q[2]).transpose();
            assertFalse(auto.plan(q, k, v, outT, o).contains("kernel=native"), auto.plan(q, k, v, outT, o));
            auto.sdpa(q, k, v, outT, o);
            assertClose(o + " heap, transposed out", Q, outT.toArray(), ref.toArray(), t, t);

            // v every other float of a heap array
            float[] wide = new float[2 * m];
            Tensor vEven = Tensor.view(MemorySegment.ofArray(wide), 0, KV,
                    new long[] {KV[1] * KV[2] * KV[3] * 2, KV[2] * KV[3] * 2, KV[3] * 2, 2}).copyFrom(v);
            Tensor out = Tensor.wrap(MemorySegment.ofArray(new float[n]), Q);
            auto.sdpa(q, k, vEven, out, o);
            assertClose(o + " heap, strided v", Q, out.toArray(), ref.toArray(), t, t);

            // off-heap floats 2 bytes off a multiple of 4, out transposed
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment odd = arena.allocate(4L * (n + 2L * m + n) + 64, 64).asSlice(2);
                Tensor qo = Tensor.view(odd, 0, Q, contiguous(Q)).copyFrom(q);
                Tensor ko = Tensor.view(odd, n, KV, contiguous(KV)).copyFrom(k);
                Tensor vo = Tensor.view(odd, n + m, KV, contiguous(KV)).copyFrom(v);
                Tensor oo = Tensor.view(odd, n + 2L * m, Q, new long[] {Q[1] * Q[2] * Q[3], Q[2] * Q[3], 1, Q[2]});
                auto.sdpa(qo, ko, vo, oo, o);
                assertClose(o + " misaligned, transposed out", Q, oo.toArray(), ref.toArray(), t, t);
            }
        }
    }

    private static long[] contiguous(long[] shape) {
        return new long[] {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1};
    }
}
