package dev.qkv.attention;

import dev.qkv.kernel.Vectorization;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

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
     * An output whose elements have distinct addresses is accepted, whatever the spacing of its strides: heads 5
     * floats apart, rows 3 apart, Dv = 2 (addresses 0, 1, 3, 4 and 5, 6, 8, 9). The check measured each
     * dimension's extent as stride times size (rows: 6 &gt; 5) and refused it as "maps several elements to one
     * address", which it does not. Compared with the reference into a contiguous output.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void anOutputWithGapsBetweenItsRowsAndHeadsIsAccepted(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(17);
            Tensor q = Fixtures.random(a, r, 1, 2, 2, 3);
            Tensor k = Fixtures.random(a, r, 1, 2, 4, 3);
            Tensor v = Fixtures.random(a, r, 1, 2, 4, 2);
            MemorySegment seg = a.allocate(10 * Float.BYTES, 64);
            Tensor out = Tensor.view(seg, 0, new long[] {1, 2, 2, 2}, new long[] {16, 5, 3, 1}).fill(Float.NaN);
            Tensor want = Tensor.allocate(a, 1, 2, 2, 2);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, want, SdpaOptions.CAUSAL);
            Attention.create(backend).sdpa(q, k, v, out, SdpaOptions.CAUSAL);
            Fixtures.assertClose(backend + " out strides [16, 5, 3, 1]", out.shape(), out.toArray(), want.toArray(),
                    Fixtures.tol(3, 4, 1), Fixtures.tol(3, 4, 1));
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

    /**
     * The Java kernels pack a head's v into one Java array, its columns padded to a whole panel (8 or more floats):
     * v [Lk, 1] with Lk just over 2^28 needs more than 2^31 - 1 floats of it, while v itself is 1 GiB (here a
     * sparse file, never read). The call is refused as that, naming the tensors; it was refused as "scratch of
     * more bytes than a long holds", which no size of this call comes near.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"JAVA", "AUTO"})
    void aPackedHeadPastAJavaArrayIsRefusedAsSuch(Backend backend, @TempDir Path dir) throws IOException {
        assumeTrue(Vectorization.packed() != null, "the packed Java kernels need the Vector API");
        // AUTO packs only where it runs the Java kernels for 8 query rows of head size 1: not where OpenBLAS runs
        // every head size (x86 without AVX-512; see AutoChoiceTest)
        assumeTrue(backend != Backend.AUTO || javaAtHeadSizeOne(), "AUTO runs OpenBLAS for this call here");
        long lk = (1L << 28) + 64;
        Path file = dir.resolve("v.bin");
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.setLength(lk * Float.BYTES);
        }
        try (Arena a = Arena.ofConfined(); FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            MemorySegment seg = ch.map(FileChannel.MapMode.READ_ONLY, 0, lk * Float.BYTES, a);
            Tensor kv = Tensor.view(seg, 0, new long[] {1, 1, lk, 1}, new long[] {lk, lk, 1, 1});
            Tensor q = Tensor.allocate(a, 1, 1, 8, 1);
            Tensor out = Tensor.allocate(a, 1, 1, 8, 1).fill(Float.NaN);
            Attention att = Attention.create(backend);
            for (Runnable call : List.<Runnable>of(() -> att.plan(q, kv, kv, out, SdpaOptions.DEFAULT),
                    () -> att.workspaceBytes(q, kv, kv, out, SdpaOptions.DEFAULT),
                    () -> att.sdpa(q, kv, kv, out, SdpaOptions.DEFAULT))) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call::run);
                assertTrue(e.getMessage().contains("v [1, 1, " + lk + ", 1]")
                        && e.getMessage().contains("2^31 - 1") && !e.getMessage().contains("long"), e.getMessage());
            }
            assertTrue(Float.isNaN(out.get(0, 0, 0, 0)), "a refused call wrote out");
        }
    }

    /** Whether AUTO plans the Java kernels for 8 query rows of head size 1 on this machine. */
    private static boolean javaAtHeadSizeOne() {
        try (Arena a = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(a, 1, 1, 8, 1);
            Tensor kv = Tensor.allocate(a, 1, 1, 64, 1);
            Tensor out = Tensor.allocate(a, 1, 1, 8, 1);
            return Attention.create(Backend.AUTO).plan(q, kv, kv, out, SdpaOptions.DEFAULT)
                    .contains("kernel=java-vector");
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

    /** An arena of one's own that hands out slices of one segment: the tensors can sit in the workspace. */
    private static Arena slicing(MemorySegment all, long at) {
        return new Arena() {
            @Override
            public MemorySegment allocate(long byteSize, long byteAlignment) {
                return all.asSlice(at, byteSize);
            }

            @Override
            public MemorySegment.Scope scope() {
                return all.scope();
            }

            @Override
            public void close() {
            }
        };
    }

    /**
     * A workspace that shares memory with q, k, v, the mask or out is refused before the call writes anything,
     * naming the tensor; the same workspace elsewhere in the segment gives the reference's result. (The engines
     * wrote score tiles over the inputs, or over out: wrong results without a word.)
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void aWorkspaceSharingMemoryWithATensorIsRefused(Backend backend) {
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(5);
            long[] qs = {1, 2, 40, 16};
            long[] kvs = {1, 2, 48, 16};
            int block = 64 << 10; // bytes per tensor's place in the segment, 64-byte aligned
            MemorySegment all = a.allocate(6L * block, 64);
            String[] names = {"q", "k", "v", "mask", "out"};
            Tensor q = Tensor.view(all, 0, qs, new long[] {40 * 16 * 2, 40 * 16, 16, 1})
                    .copyFrom(Fixtures.uniform(r, Fixtures.count(qs), -1, 1));
            Tensor k = Tensor.view(all, block / 4, kvs, new long[] {48 * 16 * 2, 48 * 16, 16, 1})
                    .copyFrom(Fixtures.uniform(r, Fixtures.count(kvs), -1, 1));
            Tensor v = Tensor.view(all, 2 * block / 4, kvs, new long[] {48 * 16 * 2, 48 * 16, 16, 1})
                    .copyFrom(Fixtures.uniform(r, Fixtures.count(kvs), -1, 1));
            Tensor m = Tensor.view(all, 3 * block / 4, new long[] {40, 48}, new long[] {48, 1})
                    .copyFrom(Fixtures.uniform(r, 40 * 48, -1, 1));
            Tensor out = Tensor.view(all, 4 * block / 4, qs, new long[] {40 * 16 * 2, 40 * 16, 16, 1});
            SdpaOptions options = SdpaOptions.DEFAULT.withMask(Mask.additive(m));
            Attention att = Attention.create(backend);
            long need = att.workspaceBytes(q, k, v, out, options);
            assertTrue(need <= block, "workspace of " + need + " bytes");
            for (int i = 0; i < names.length; i++) {
                out.fill(Float.NaN);
                Workspace ws = Workspace.allocate(slicing(all, (long) i * block + 64), need);
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> att.sdpa(q, k, v, out, options, ws));
                assertTrue(e.getMessage().startsWith(names[i] + " [") && e.getMessage().endsWith(
                        "shares memory with the workspace"), e.getMessage());
                for (float x : out.toArray()) {
                    assertTrue(Float.isNaN(x), names[i] + ": a refused call wrote out");
                }
            }
            Workspace apart = Workspace.allocate(slicing(all, 5L * block), need);
            att.sdpa(q, k, v, out, options, apart);
            Tensor ref = Tensor.allocate(a, qs);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, options);
            Fixtures.assertClose(backend + " workspace apart", qs, out.toArray(), ref.toArray(),
                    Fixtures.tol(16, 48, 1), Fixtures.tol(16, 48, 1));
        }
    }

    /** A workspace must be writable off-heap memory: an arena of one's own that gives anything else is refused. */
    @Test
    void anArenaGivingHeapOrReadOnlyMemoryMakesNoWorkspace() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment ro = a.allocate(4096, 64).asReadOnly();
            MemorySegment heap = MemorySegment.ofArray(new byte[4096]);
            for (MemorySegment given : new MemorySegment[] {ro, heap}) {
                Arena odd = new Arena() {
                    @Override
                    public MemorySegment allocate(long byteSize, long byteAlignment) {
                        return given.asSlice(0, byteSize);
                    }

                    @Override
                    public MemorySegment.Scope scope() {
                        return a.scope();
                    }

                    @Override
                    public void close() {
                    }
                };
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> Workspace.allocate(odd, 1024));
                assertTrue(e.getMessage().contains("writable off-heap memory"), e.getMessage());
            }
        }
    }

    /**
     * A workspace another call holds is refused on every backend, {@link Backend#REFERENCE} too (which computes
     * without it, but takes it as the others do, as the multi-head layer's reference does): it ran regardless, so a
     * service that shared one workspace between threads by mistake saw no error until it changed backend. The
     * workspace is held through its own flag, so the overlap is certain rather than a race's luck.
     */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void aWorkspaceHeldByAnotherCallIsRefusedOnEveryBackend(Backend backend) {
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(10);
            long[] shape = {1, 2, 40, 16};
            Attention att = Attention.create(backend);
            Tensor q = Fixtures.random(a, r, shape);
            Tensor k = Fixtures.random(a, r, shape);
            Tensor v = Fixtures.random(a, r, shape);
            Tensor out = Tensor.allocate(a, shape);
            Workspace ws = Workspace.allocate(a, Attention.create(Backend.JAVA).workspaceBytes(q, k, v, out,
                    SdpaOptions.CAUSAL) + att.workspaceBytes(q, k, v, out, SdpaOptions.CAUSAL));
            assertTrue(ws.acquire());
            try {
                IllegalStateException e = assertThrows(IllegalStateException.class,
                        () -> att.sdpa(q, k, v, out, SdpaOptions.CAUSAL, ws));
                assertTrue(e.getMessage().contains("in use by another call"), e.getMessage());
                for (float x : out.toArray()) {
                    assertEquals(0, Float.floatToRawIntBits(x), backend + ": a refused call wrote out");
                }
            } finally {
                ws.release();
            }
            // given back by the refused call's holder, it serves the next call, and was not taken by the refused one
            att.sdpa(q, k, v, out, SdpaOptions.CAUSAL, ws);
            assertTrue(ws.acquire(), backend + ": the workspace was left taken");
            ws.release();
        }
    }

    /**
     * One workspace, two threads calling at once: each call either gives exactly the serial result or is
     * refused as in use; never a result that differs (12 to 121 of 400 did, before).
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA"})
    void aWorkspaceInUseIsRefusedNotShared(Backend backend) throws InterruptedException {
        try (Arena a = Arena.ofShared()) {
            Random r = new Random(9);
            long[] shape = {1, 4, 96, 32};
            Attention att = Attention.create(backend, 1);
            Tensor[] qs = new Tensor[2];
            Tensor[] want = new Tensor[2];
            Tensor k = Fixtures.random(a, r, shape);
            Tensor v = Fixtures.random(a, r, shape);
            for (int t = 0; t < 2; t++) {
                qs[t] = Fixtures.random(a, r, shape);
                want[t] = Tensor.allocate(a, shape);
            }
            Workspace ws = Workspace.allocate(a, att.workspaceBytes(qs[0], k, v, want[0], SdpaOptions.CAUSAL));
            for (int t = 0; t < 2; t++) {
                att.sdpa(qs[t], k, v, want[t], SdpaOptions.CAUSAL, ws);
            }
            AtomicInteger differ = new AtomicInteger();
            AtomicInteger refused = new AtomicInteger();
            AtomicReference<Throwable> other = new AtomicReference<>();
            CountDownLatch go = new CountDownLatch(1);
            List<Thread> threads = new ArrayList<>();
            for (int t = 0; t < 2; t++) {
                final int me = t;
                threads.add(Thread.ofPlatform().start(() -> {
                    Tensor got = Tensor.allocate(a, shape);
                    try {
                        go.await();
                        for (int i = 0; i < 300; i++) {
                            try {
                                att.sdpa(qs[me], k, v, got, SdpaOptions.CAUSAL, ws);
                            } catch (IllegalStateException e) {
                                assertTrue(e.getMessage().contains("in use by another call"), e.getMessage());
                                refused.incrementAndGet();
                                continue;
                            }
                            if (!java.util.Arrays.equals(got.toArray(), want[me].toArray())) {
                                differ.incrementAndGet();
                            }
                        }
                    } catch (Throwable e) {
                        other.compareAndSet(null, e);
                    }
                }));
            }
            go.countDown();
            for (Thread t : threads) {
                t.join(TimeUnit.MINUTES.toMillis(2));
            }
            if (other.get() != null) {
                throw new AssertionError(other.get());
            }
            assertEquals(0, differ.get(), backend + ": results that differ from the serial ones (" + refused.get()
                    + " calls refused as in use)");
        }
    }

    /**
     * Floats at an address that is not a multiple of 4 (a slice one byte in): OpenBLAS's SSE kernels load them
     * aligned, and the Sandybridge core's sscal crashed the JVM on such an sgemv output (beta 0, a one-query
     * call). NATIVE refuses them before any work, naming the tensor; AUTO runs them on the Java kernels, which
     * take any address, and matches the reference.
     */
    @Test
    void floatsAtAnOddAddressAreRefusedByNativeAndRunElsewhere() {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(8);
            Tensor q = Fixtures.random(a, r, 1, 1, 1, 64);
            Tensor k = Fixtures.random(a, r, 1, 1, 32, 64);
            Tensor v = Fixtures.random(a, r, 1, 1, 32, 64);
            MemorySegment raw = a.allocate(64 * Float.BYTES + 8, 64);
            Tensor odd = Tensor.wrap(raw.asSlice(1, 64 * Float.BYTES), 1, 1, 1, 64).fill(Float.NaN);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Attention.create(Backend.NATIVE).sdpa(q, k, v, odd, SdpaOptions.DEFAULT));
            assertTrue(e.getMessage().startsWith("out [1, 1, 1, 64]") && e.getMessage().contains("multiple of 4"),
                    e.getMessage());
            assertTrue(Float.isNaN(odd.get(0, 0, 0, 0)), "a refused call wrote out");
            Attention.create(Backend.AUTO).sdpa(q, k, v, odd, SdpaOptions.DEFAULT);
            Tensor ref = Tensor.allocate(a, 1, 1, 1, 64);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.DEFAULT);
            Fixtures.assertClose("AUTO, out at an odd address", new long[] {1, 1, 1, 64}, odd.toArray(),
                    ref.toArray(), Fixtures.tol(64, 32, 1), Fixtures.tol(64, 32, 1));
            // and OpenBLAS called directly
            dev.qkv.blas.OpenBlas blas = dev.qkv.blas.OpenBlas.get();
            IllegalArgumentException direct = assertThrows(IllegalArgumentException.class,
                    () -> blas.sgemv(dev.qkv.blas.Transpose.NO, 1, 64, 1f, k.segment(), 0, 64, q.segment(), 0, 1, 0f,
                            raw.asSlice(1, 16), 0, 1));
            assertTrue(direct.getMessage().contains("multiples of 4"), direct.getMessage());
        }
    }

    /**
     * A scale of 0 gives scores 0 · (q·k): zero where q·k is finite, so uniform weights and out = the mean of v,
     * and NaN where it is not (the reference's rule), on every backend and path: blocks of rows, one query row
     * (sgemv), and more keys than a key block (online). BLAS skips its operands when alpha is 0 (OpenBLAS at
     * some sizes), which made NaN in q vanish on the native backend.
     */
    @ParameterizedTest
    @EnumSource(value = Backend.class, names = {"NATIVE", "JAVA", "AUTO"})
    void aZeroScaleMultipliesTheProductsByZero(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            Random r = new Random(12);
            for (long[] qk : new long[][] {{70, 300}, {1, 300}, {40, 1100}}) {
                long lq = qk[0];
                long lk = qk[1];
                Tensor q = Fixtures.random(a, r, 1, 2, lq, 16);
                Tensor k = Fixtures.random(a, r, 1, 2, lk, 16);
                Tensor v = Fixtures.random(a, r, 1, 2, lk, 16);
                q.set(Float.NaN, 0, 1, lq - 1, 3);
                SdpaOptions zero = new SdpaOptions(false, null, 0f);
                Tensor out = Tensor.allocate(a, 1, 2, lq, 16);
                Attention.create(backend).sdpa(q, k, v, out, zero);
                Tensor ref = Tensor.allocate(a, 1, 2, lq, 16);
                Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, zero);
                for (int h = 0; h < 2; h++) {
                    for (long i = 0; i < lq; i++) {
                        for (int d = 0; d < 16; d++) {
                            float want = ref.get(0, h, i, d);
                            float got = out.get(0, h, i, d);
                            String at = backend + " " + lq + "x" + lk + " [" + h + ", " + i + ", " + d + "]";
                            if (Float.isNaN(want)) {
                                assertTrue(Float.isNaN(got), at + ": " + got + ", the reference NaN");
                            } else {
                                assertEquals(want, got, Fixtures.tol(16, lk, 1), at);
                            }
                        }
                    }
                }
                assertTrue(Float.isNaN(ref.get(0, 1, lq - 1, 0)), "the NaN row is NaN in the reference");
            }
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
