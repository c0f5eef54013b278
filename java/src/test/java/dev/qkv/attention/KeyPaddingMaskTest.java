package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link Mask#keyPadding}: a {@code [B, Lk]} mask (Hugging Face's attention_mask) keeps, for every query of batch
 * {@code b}, exactly the keys allowed in row {@code b}. Property: each batch's output equals attention, without a
 * mask, over only its kept keys (gathered into tensors of their own), on the reference backend; the padding mask
 * is given as a strided view (a column slice of a wider array) to show no copy is assumed.
 */
class KeyPaddingMaskTest {

    @ParameterizedTest
    @EnumSource(Backend.class)
    void eachBatchAttendsOnlyItsKeptKeys(Backend backend) {
        int b = 3;
        int h = 2;
        int lq = 5;
        int lk = 9;
        int d = 8;
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(71);
            Tensor q = Fixtures.random(a, r, b, h, lq, d);
            Tensor k = Fixtures.random(a, r, b, 1, lk, d);
            Tensor v = Fixtures.random(a, r, b, 1, lk, d);
            // [B, Lk + 2] with the mask in columns 1 .. Lk: a strided view
            Tensor wide = Tensor.allocate(a, b, lk + 2).fill(0f);
            Tensor allowed = wide.slice(1, 1, lk + 1);
            boolean[][] keep = new boolean[b][lk];
            for (int i = 0; i < b; i++) {
                for (int j = 0; j < lk; j++) {
                    keep[i][j] = j == i || r.nextBoolean();
                    allowed.set(keep[i][j] ? 1f : 0f, i, j);
                }
            }
            Tensor out = Tensor.allocate(a, b, h, lq, d);
            Attention.create(backend).sdpa(q, k, v, out, SdpaOptions.DEFAULT.withMask(Mask.keyPadding(allowed)));

            Attention reference = Attention.create(Backend.REFERENCE);
            for (int i = 0; i < b; i++) {
                int kept = 0;
                for (boolean x : keep[i]) {
                    kept += x ? 1 : 0;
                }
                Tensor ki = Tensor.allocate(a, 1, 1, kept, d);
                Tensor vi = Tensor.allocate(a, 1, 1, kept, d);
                for (int j = 0, at = 0; j < lk; j++) {
                    if (keep[i][j]) {
                        ki.select(0, 0).select(0, 0).select(0, at).copyFrom(k.select(0, i).select(0, 0).select(0, j));
                        vi.select(0, 0).select(0, 0).select(0, at).copyFrom(v.select(0, i).select(0, 0).select(0, j));
                        at++;
                    }
                }
                Tensor qi = Fixtures.contiguousCopy(a, q.slice(0, i, i + 1));
                Tensor want = Tensor.allocate(a, 1, h, lq, d);
                reference.sdpa(qi, ki, vi, want, SdpaOptions.DEFAULT.withScale((float) (1 / Math.sqrt(d))));
                double tol = Fixtures.tol(d, lk, 1);
                Fixtures.assertClose(backend + " batch " + i, want.shape(), out.slice(0, i, i + 1).toArray(),
                        want.toArray(), tol, tol);
            }
        }
    }

    @Test
    void keyPaddingIsTheSameMaskAsAllowedOverB11Lk() {
        try (Arena a = Arena.ofConfined()) {
            Tensor allowed = Tensor.of(a, new float[] {1, 0, 1, 0, 1, 1}, 2, 3);
            Mask m = Mask.keyPadding(allowed);
            assertTrue(m.kind() == Mask.Kind.BOOLEAN);
            assertArrayEquals(new long[] {2, 1, 1, 3}, m.values().shape());
            assertArrayEquals(allowed.toArray(), m.values().toArray());
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Mask.keyPadding(Tensor.allocate(a, 2, 1, 1, 3)));
            assertTrue(e.getMessage().equals("allowed [2, 1, 1, 3]: a key-padding mask is [B, Lk]"), e.getMessage());
            assertThrows(NullPointerException.class, () -> Mask.keyPadding(null));
        }
    }
}
