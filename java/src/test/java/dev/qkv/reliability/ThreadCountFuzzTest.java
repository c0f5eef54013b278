package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Two workers must never write into each other's part of a workspace: random shapes around the engines' block
 * boundaries (64, 128, 256 query rows; 1024 and 2048 keys; padded tile rows at multiples of 64 keys), causal or
 * masked, run with one and with two threads, with a caller's workspace sized by {@link Attention#scoreTileBytes}
 * and with the per-thread scratch. Block sizes never depend on the thread count, so the two runs must agree to
 * the bit, and the one-thread run must match the double-precision reference. An overlap of two workers' score
 * tiles (a causal block's padded tile once ran into the next worker's) shows up here as a difference between the
 * runs or against the reference.
 */
class ThreadCountFuzzTest {

    /** Sizes just around the block and tile boundaries of both engines. */
    private static int boundarySize(Random r) {
        int base = Fuzz.pick(r, 1, 7, 64, 128, 192, 256, 320, 512);
        return Math.max(1, base + r.nextInt(5) - 2);
    }

    @ParameterizedTest(name = "{0}")
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void oneAndTwoThreadsGiveTheSameBitsAndMatchTheReference(Backend backend) {
        long seed = Fuzz.seed("thread-count-" + backend);
        Random r = new Random(seed);
        // each case runs three full attentions: `make fuzz` (20 000 iterations) gets 400 of them
        int cases = Math.max(40, Fuzz.iterations(40) / 50);
        Attention one = Attention.create(backend, 1);
        Attention two = Attention.create(backend, 2);
        for (int c = 0; c < cases; c++) {
            int batch = 1 + r.nextInt(2);
            int hkv = 1 + r.nextInt(2);
            int hq = hkv * Fuzz.pick(r, 1, 2, 4); // up to 16 (batch, head) pairs: the native engine's large blocks
            int lq = boundarySize(r);
            int lk = r.nextBoolean() ? lq : boundarySize(r);
            int dk = Fuzz.pick(r, 8, 16, 48, 64, 65);
            int dv = r.nextBoolean() ? dk : Fuzz.pick(r, 8, 32, 64);
            boolean causal = r.nextBoolean();
            boolean masked = !causal && r.nextInt(3) == 0;
            boolean callerWorkspace = r.nextBoolean();
            String what = "seed=" + seed + " case " + c + " " + backend + " q [" + batch + ", " + hq + ", " + lq
                    + ", " + dk + "] k [" + batch + ", " + hkv + ", " + lk + ", " + dk + "] dv=" + dv
                    + (causal ? " causal" : "") + (masked ? " mask" : "")
                    + (callerWorkspace ? " caller workspace" : " per-thread scratch");
            try (Arena a = Arena.ofShared()) {
                Tensor q = Fuzz.random(a, r, batch, hq, lq, dk);
                Tensor k = Fuzz.random(a, r, batch, hkv, lk, dk);
                Tensor v = Fuzz.random(a, r, batch, hkv, lk, dv);
                SdpaOptions opts = causal ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT;
                if (masked) {
                    float[] allowed = new float[lq * lk];
                    for (int i = 0; i < allowed.length; i++) {
                        allowed[i] = r.nextInt(4) == 0 ? 0f : 1f;
                    }
                    opts = opts.withMask(Mask.allowed(Tensor.allocate(a, lq, lk).copyFrom(allowed)));
                }
                Tensor ref = Tensor.allocate(a, batch, hq, lq, dv);
                Attention.create(Backend.REFERENCE, 1).sdpa(q, k, v, ref, opts);
                float[][] got = new float[2][];
                Attention[] ats = {one, two};
                for (int t = 0; t < 2; t++) {
                    Tensor out = Tensor.allocate(a, batch, hq, lq, dv).fill(Float.NaN);
                    if (callerWorkspace) {
                        // scoreTileBytes covers every worker the instance may use
                        ats[t].sdpa(q, k, v, out, opts, Workspace.allocate(a, ats[t].scoreTileBytes(lq, lk)));
                    } else {
                        ats[t].sdpa(q, k, v, out, opts);
                    }
                    got[t] = out.toArray();
                }
                float[] want = ref.toArray();
                // as SdpaFuzzTest: rounding of the dk-term dot products (scaled) and of the lk-term weighted sums
                double atol = 8 * Fuzz.EPS * (dk / Math.sqrt(dk) + lk + 16);
                double rtol = 8 * Fuzz.EPS;
                for (int i = 0; i < want.length; i++) {
                    int at = i;
                    assertEquals(Float.floatToRawIntBits(got[0][i]), Float.floatToRawIntBits(got[1][i]),
                            () -> what + ": element " + at + " one thread " + got[0][at] + ", two " + got[1][at]);
                    double diff = Math.abs((double) got[0][i] - want[i]);
                    assertTrue(diff <= atol + rtol * Math.abs(want[i]),
                            () -> what + ": element " + at + " ref " + want[at] + " got " + got[0][at]);
                }
            }
        }
    }
}
