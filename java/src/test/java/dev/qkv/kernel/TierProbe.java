package dev.qkv.kernel;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.Random;
import java.util.zip.CRC32;

/**
 * Computes a few attention calls on the Java backend and prints the CRC-32 of the output bits, so that
 * {@link TierIndependenceTest} can compare runs of the same code in different JIT tiers.
 */
public final class TierProbe {
    private TierProbe() {
    }

    /** Prints the checksum after {@code args[0]} repetitions of the calls (0 = one cold run). */
    public static void main(String[] args) {
        System.out.println(checksum(Integer.parseInt(args[0])));
    }

    /** CRC-32 of the raw bits of every output, computed on the last of {@code warmups + 1} repetitions. */
    public static long checksum(int warmups) {
        Attention attention = Attention.create(Backend.JAVA, 1);
        CRC32 crc = new CRC32();
        try (Arena arena = Arena.ofConfined()) {
            // a multi-row block (packed kernels) and decoding-sized blocks (dot-product kernels: the four-key one,
            // and the straight-line ones of D = 128 and 64), with a mask
            int[][] shapes = {{1, 2, 70, 33, 19}, {1, 4, 3, 70, 17}, {1, 2, 1, 41, 128}, {1, 3, 2, 23, 64}};
            for (int[] sh : shapes) {
                Random r = new Random(7);
                Tensor q = fill(Tensor.allocate(arena, sh[0], sh[1], sh[2], sh[4]), r);
                Tensor k = fill(Tensor.allocate(arena, sh[0], sh[1], sh[3], sh[4]), r);
                Tensor v = fill(Tensor.allocate(arena, sh[0], sh[1], sh[3], sh[4]), r);
                Tensor m = fill(Tensor.allocate(arena, sh[2], sh[3]), r);
                Tensor out = Tensor.allocate(arena, sh[0], sh[1], sh[2], sh[4]);
                SdpaOptions o = SdpaOptions.CAUSAL.withMask(Mask.additive(m));
                for (int i = 0; i <= warmups; i++) {
                    attention.sdpa(q, k, v, out, o);
                }
                update(crc, out);
            }
            // the matrix-vector kernel of one-row projections: 7 rows (a block of 4 and 3 single rows) of 37
            // columns (two whole vectors and a tail)
            Random r = new Random(9);
            Tensor w = fill(Tensor.allocate(arena, 7, 37), r);
            Tensor x = fill(Tensor.allocate(arena, 37), r);
            Tensor y = Tensor.allocate(arena, 7);
            for (int i = 0; i <= warmups; i++) {
                MatmulKernel.java().matvec(dev.qkv.blas.Transpose.NO, 7, 37, 0.75f, w.segment(), w.offset(), 37,
                        x.segment(), x.offset(), 1, 0f, y.segment(), y.offset(), 1);
            }
            update(crc, y);
        }
        return crc.getValue();
    }

    private static void update(CRC32 crc, Tensor t) {
        for (float x : t.toArray()) {
            int bits = Float.floatToRawIntBits(x);
            crc.update(new byte[] {(byte) bits, (byte) (bits >> 8), (byte) (bits >> 16), (byte) (bits >> 24)});
        }
    }

    private static Tensor fill(Tensor t, Random r) {
        float[] x = new float[(int) t.elementCount()];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) (r.nextGaussian() * Math.exp(r.nextGaussian()));
        }
        return t.copyFrom(x);
    }
}
