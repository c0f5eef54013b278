package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link Backend#REFERENCE} runs every call on its caller alone (a scalar loop, no pool): what {@link
 * Attention#threads()} reports must be what {@link Attention#plan} says runs, whatever thread count was asked for.
 */
class ReferenceThreadsTest {

    private static int workers(String plan) {
        Matcher m = Pattern.compile("workers=(\\d+)").matcher(plan);
        assertTrue(m.find(), plan);
        return Integer.parseInt(m.group(1));
    }

    @Test
    void threadsAndPlanAgree() {
        int cores = Runtime.getRuntime().availableProcessors();
        try (Arena arena = Arena.ofConfined()) {
            // large enough that the blocked engines would use every worker they may
            Tensor q = Tensor.allocate(arena, 1, 8, 256, 64);
            Tensor out = Tensor.allocate(arena, 1, 8, 256, 64);
            for (Attention a : new Attention[] {Attention.create(Backend.REFERENCE),
                    Attention.create(Backend.REFERENCE, 1), Attention.create(Backend.REFERENCE, cores + 3),
                    Attention.builder().backend(Backend.REFERENCE).threads(2).build()}) {
                String plan = a.plan(q, q, q, out, SdpaOptions.DEFAULT);
                assertEquals(workers(plan), a.threads(), "threads() against " + plan);
                assertEquals(1, a.threads(), plan);
            }
            // the count asked for is still checked
            assertThrows(IllegalArgumentException.class, () -> Attention.create(Backend.REFERENCE, 0));
            // the other backends report what they plan at most
            Attention j = Attention.create(Backend.JAVA, cores);
            assertTrue(workers(j.plan(q, q, q, out, SdpaOptions.DEFAULT)) <= j.threads());
        }
    }
}
