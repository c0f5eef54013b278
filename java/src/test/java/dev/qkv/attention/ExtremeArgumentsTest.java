package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Arguments at the edges a review reached: sizes whose int or long arithmetic would wrap, workspaces that share
 * memory with the call's tensors or with another call, arenas of one's own, a NULL segment. Each is refused
 * before anything is written, or runs correctly; none may compute silently wrong or never return.
 */
class ExtremeArgumentsTest {

    /** A view of {@code shape} with every stride 0: any size over a few floats. */
    private static Tensor repeated(MemorySegment seg, long... shape) {
        return Tensor.view(seg, 0, shape, new long[shape.length]);
    }

    /**
     * Lengths past {@link SdpaArgs#MAX_SIZE} are refused: at Lq = 2^31 - 1 the block count wrapped and every
     * blocked backend returned at once, having computed nothing. At the bound itself the size check passes
     * (the call is then refused for its output, which repeats one float).
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void lengthsPastTheBoundAreRefused(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment one = a.allocate(64, 64);
            Tensor kv = Tensor.allocate(a, 1, 1, 4, 1);
            Attention att = Attention.create(backend);
            long past = SdpaArgs.MAX_SIZE + 1;
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> att.sdpa(
                    repeated(one, 1, 1, past, 1), kv, kv, repeated(one, 1, 1, past, 1), SdpaOptions.DEFAULT));
            assertTrue(e.getMessage().contains("at most 2^31 - 2^21 - 1"), e.getMessage());
            IllegalArgumentException keys = assertThrows(IllegalArgumentException.class, () -> att.sdpa(
                    Tensor.allocate(a, 1, 1, 2, 1), repeated(one, 1, 1, past, 1), repeated(one, 1, 1, past, 1),
                    Tensor.allocate(a, 1, 1, 2, 1), SdpaOptions.DEFAULT));
            assertTrue(keys.getMessage().contains("at most 2^31 - 2^21 - 1"), keys.getMessage());
            long at = SdpaArgs.MAX_SIZE;
            MemorySegment other = a.allocate(64, 64);
            IllegalArgumentException out = assertThrows(IllegalArgumentException.class, () -> att.sdpa(
                    repeated(one, 1, 1, at, 1), kv, kv, repeated(other, 1, 1, at, 1), SdpaOptions.DEFAULT));
            assertTrue(out.getMessage().contains("maps several elements to one address"), out.getMessage());
        }
    }

    /**
     * Scratch of more bytes than a long holds (k of 2^62 floats repeated from one, to be packed) is an
     * IllegalArgumentException naming the tensors, from plan, workspaceBytes and sdpa alike; it was an
     * ArithmeticException, or an IndexOutOfBoundsException after a wrapped size.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void scratchPastALongIsAnIllegalArgument(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment one = a.allocate(64, 64);
            long m = SdpaArgs.MAX_SIZE;
            Tensor q = repeated(one, 1, 1, 1, m);
            Tensor k = repeated(one, 1, 1, m, m);
            Tensor v = repeated(one, 1, 1, m, 1);
            Tensor out = Tensor.allocate(a, 1, 1, 1, 1).fill(Float.NaN);
            Attention att = Attention.create(backend);
            for (Runnable call : List.<Runnable>of(() -> att.plan(q, k, v, out, SdpaOptions.DEFAULT),
                    () -> att.workspaceBytes(q, k, v, out, SdpaOptions.DEFAULT),
                    () -> att.sdpa(q, k, v, out, SdpaOptions.DEFAULT))) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call::run);
                assertTrue(e.getMessage().contains("k [1, 1, " + m + ", " + m + "]"), e.getMessage());
            }
            assertTrue(Float.isNaN(out.get(0, 0, 0, 0)), "a refused call wrote out");
        }
    }

    /** An empty call of 2^32 heads returns at once on every backend (the reference's int counters looped forever). */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void emptyCallsOfHugeHeadCountsReturn(Backend backend) {
        try (Arena a = Arena.ofShared()) {
            MemorySegment few = a.allocate(64 * Float.BYTES, 64);
            long h = 1L << 32;
            Tensor q = Tensor.view(few, 0, new long[] {1, h, 0, 8}, new long[] {0, 0, 8, 1});
            Tensor kv = Tensor.view(few, 0, new long[] {1, h, 4, 8}, new long[] {0, 0, 8, 1});
            Tensor out = Tensor.view(few, 0, new long[] {1, h, 0, 8}, new long[] {0, 0, 8, 1});
            assertTimeoutPreemptively(Duration.ofSeconds(30),
                    () -> Attention.create(backend).sdpa(q, kv, kv, out, SdpaOptions.DEFAULT));
        }
    }

    /** MemorySegment.NULL made large by reinterpret: any access would crash the JVM, so no tensor views it. */
    @Test
    void aNullSegmentIsRefused() {
        MemorySegment nul = MemorySegment.NULL.reinterpret(1024);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Tensor.view(nul, 0, new long[] {4, 4}, new long[] {4, 1}));
        assertTrue(e.getMessage().contains("address 0"), e.getMessage());
        // an empty view reads nothing, so it stays valid
        assertEquals(0, Tensor.view(nul, 0, new long[] {0, 4}, new long[] {4, 1}).elementCount());
    }

    /**
     * -Dqkv.groupKeyBlockBytes of 2^40 made the grouped few-query path's key block wrap to 0 as an int, and its
     * key loop never ended. A child JVM (the property is read once): a grouped decode-sized call returns and
     * matches the reference.
     */
    @Test
    void aHugeGroupKeyBlockPropertyStillReturns() throws IOException, InterruptedException {
        String javaCmd = ProcessHandle.current().info().command().orElse("java");
        Process p = new ProcessBuilder(javaCmd, "--enable-native-access=ALL-UNNAMED", "--add-modules",
                "jdk.incubator.vector", "-Dqkv.groupKeyBlockBytes=" + (1L << 40), "-cp",
                System.getProperty("java.class.path"), GroupProbe.class.getName()).redirectErrorStream(true).start();
        boolean done = p.waitFor(60, TimeUnit.SECONDS);
        if (!done) {
            p.destroyForcibly();
        }
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(done, "the child JVM did not return in 60 s: " + output);
        assertEquals(0, p.exitValue(), output);
        assertTrue(output.contains("group probe: ok"), output);
    }

    /** The child JVM of {@link #aHugeGroupKeyBlockPropertyStillReturns}. */
    static final class GroupProbe {
        private GroupProbe() {
        }

        public static void main(String[] args) {
            try (Arena a = Arena.ofShared()) {
                Random r = new Random(3);
                Tensor q = Fixtures.random(a, r, 1, 4, 1, 64);
                Tensor k = Fixtures.random(a, r, 1, 2, 40, 64);
                Tensor v = Fixtures.random(a, r, 1, 2, 40, 64);
                Tensor ref = Tensor.allocate(a, 1, 4, 1, 64);
                Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.DEFAULT);
                for (Backend b : new Backend[] {Backend.JAVA, Backend.NATIVE}) {
                    Tensor out = Tensor.allocate(a, 1, 4, 1, 64);
                    Attention.create(b).sdpa(q, k, v, out, SdpaOptions.DEFAULT);
                    Fixtures.assertClose(b + " grouped", new long[] {1, 4, 1, 64}, out.toArray(), ref.toArray(),
                            Fixtures.tol(64, 40, 1), Fixtures.tol(64, 40, 1));
                }
            }
            System.out.println("group probe: ok");
        }
    }
}
