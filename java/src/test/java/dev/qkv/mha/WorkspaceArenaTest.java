package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import java.util.function.LongFunction;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link MultiHeadAttention#newWorkspace} takes two allocations from the caller's arena: the projection scratch and
 * the attention's score tiles. An arena of one's own may hand out memory it already gave (a bump allocator reset
 * too early), or memory of the wrong kind; the workspace is refused when it is made, naming it, as
 * {@link KvCache#allocate} refuses K and V that share memory. Before, overlapping parts were accepted and refused
 * only by the first forward, as the attention's check on the layer's internal view ("q [2, 4, 3, 8] shares memory
 * with the workspace", a tensor the caller never made), and not at all on {@link Backend#REFERENCE}; a heap or
 * read-only projection part surfaced inside the first call as an internal product's error.
 */
class WorkspaceArenaTest {

    /** An arena over {@code block} whose first allocation is {@code first}, its later ones {@code later}. */
    private static Arena own(Arena owner, LongFunction<MemorySegment> first, LongFunction<MemorySegment> later) {
        return new Arena() {
            private int calls;

            @Override
            public MemorySegment allocate(long byteSize, long byteAlignment) {
                return calls++ == 0 ? first.apply(byteSize) : later.apply(byteSize);
            }

            @Override
            public MemorySegment.Scope scope() {
                return owner.scope();
            }

            @Override
            public void close() {
            }
        };
    }

    private static MultiHeadAttention layer(Arena a, Backend backend) {
        return MultiHeadAttention.create(MultiHeadAttentionTest.weights(a, new Random(3), 32, 4, 2, true, false),
                backend, 1);
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void partsThatShareMemoryAreRefusedWhenMade(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention layer = layer(a, backend);
            MemorySegment block = a.allocate(1 << 20, Tensor.ALIGNMENT);
            for (long shift : new long[] {0, 64, 256}) {
                // the second allocation starts inside the first (at it, or some cache lines on)
                Arena arena = own(a, n -> block.asSlice(0, n), n -> block.asSlice(shift, n));
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> layer.newWorkspace(arena, 2, 3, 3), backend + " shift " + shift);
                assertTrue(e.getMessage().startsWith("workspace"), e.getMessage());
                assertTrue(e.getMessage().contains("share memory"), e.getMessage());
            }
            // disjoint parts from the same arena of one's own are fine
            long[] next = {0};
            layer.newWorkspace(MultiHeadAttentionTest.bump(block, next), 2, 3, 3);
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void projectionScratchOfTheWrongKindIsRefusedWhenMade(Backend backend) {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention layer = layer(a, backend);
            long need = layer.workspaceBytes(2, 3, 3);
            LongFunction<MemorySegment> fresh = n -> a.allocate(n, 64);
            String[] what = {"heap", "read-only", "too small", "misaligned"};
            @SuppressWarnings("unchecked")
            LongFunction<MemorySegment>[] firsts = new LongFunction[] {
                n -> MemorySegment.ofArray(new float[(int) (n / 4) + 16]),
                n -> a.allocate(n, 64).asReadOnly(),
                n -> a.allocate(n, 64).asSlice(0, 16),
                n -> a.allocate(n + 64, 64).asSlice(2, n),
            };
            for (int i = 0; i < firsts.length; i++) {
                Arena arena = own(a, firsts[i], fresh);
                String ctx = backend + " " + what[i] + " (needs " + need + ")";
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> layer.newWorkspace(arena, 2, 3, 3), ctx);
                assertTrue(e.getMessage().startsWith("workspace"), e.getMessage());
            }
        }
    }
}
