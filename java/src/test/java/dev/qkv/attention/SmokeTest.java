package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertTrue;

class SmokeTest {
    @Test
    void nativeMatchesReference() {
        try (Arena arena = Arena.ofConfined()) {
            Random r = new Random(1);
            Tensor q = rand(arena, r, 2, 4, 65, 17);
            Tensor k = rand(arena, r, 2, 2, 70, 17);
            Tensor v = rand(arena, r, 2, 2, 70, 9);
            for (SdpaOptions o : new SdpaOptions[] {SdpaOptions.DEFAULT, SdpaOptions.CAUSAL}) {
                Tensor ref = Tensor.allocate(arena, 2, 4, 65, 9);
                Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, o);
                for (Backend b : new Backend[] {Backend.NATIVE, Backend.JAVA}) {
                    Tensor out = Tensor.allocate(arena, 2, 4, 65, 9);
                    Attention.create(b).sdpa(q, k, v, out, o);
                    float[] x = out.toArray();
                    float[] y = ref.toArray();
                    double max = 0;
                    for (int i = 0; i < x.length; i++) {
                        max = Math.max(max, Math.abs(x[i] - y[i]));
                    }
                    System.out.println(b + " " + o.causal() + " maxdiff " + max);
                    assertTrue(max < 1e-4);
                }
            }
        }
    }

    static Tensor rand(Arena a, Random r, long... shape) {
        Tensor t = Tensor.allocate(a, shape);
        float[] x = new float[(int) t.elementCount()];
        for (int i = 0; i < x.length; i++) {
            x[i] = r.nextFloat() * 2 - 1;
        }
        return t.copyFrom(x);
    }
}
