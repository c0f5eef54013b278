package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A mask that cannot fit the layer's scores, or whose arena is closed, is refused by {@code forward} before the
 * projections run, as every other argument is: not by the attention after the layer has projected x (work thrown
 * away, found by the failure-atomicity review). Observed through the workspace's memory, which an arena of the
 * test's own records: a call that projected anything wrote it.
 */
class EarlyMaskCheckTest {
    private static final int H = 2;
    private static final int DH = 8;
    private static final int E = H * DH;
    private static final float SENTINEL = -12345.5f;

    /** An arena that hands out its delegate's memory and keeps every segment it gave. */
    private static final class Recording implements Arena {
        final Arena delegate = Arena.ofConfined();
        final List<MemorySegment> given = new ArrayList<>();

        @Override
        public MemorySegment allocate(long byteSize, long byteAlignment) {
            MemorySegment s = delegate.allocate(byteSize, byteAlignment);
            given.add(s);
            return s;
        }

        @Override
        public MemorySegment.Scope scope() {
            return delegate.scope();
        }

        @Override
        public void close() {
            delegate.close();
        }
    }

    private static void fill(List<MemorySegment> segments) {
        for (MemorySegment s : segments) {
            for (long i = 0; i + Float.BYTES <= s.byteSize(); i += Float.BYTES) {
                s.set(ValueLayout.JAVA_FLOAT, i, SENTINEL);
            }
        }
    }

    private static long written(List<MemorySegment> segments) {
        long n = 0;
        for (MemorySegment s : segments) {
            for (long i = 0; i + Float.BYTES <= s.byteSize(); i += Float.BYTES) {
                n += s.get(ValueLayout.JAVA_FLOAT, i) != SENTINEL ? 1 : 0;
            }
        }
        return n;
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void aMaskThatCannotFitIsRefusedBeforeTheProjections(Backend backend) {
        try (Arena a = Arena.ofConfined(); Recording rec = new Recording()) {
            Random r = new Random(5);
            float s = (float) (1 / Math.sqrt(E));
            MhaWeights w = MhaWeights.of(H, MhaTestSupport.rand(a, r, s, E, E), null,
                    MhaTestSupport.rand(a, r, s, E, E), null, MhaTestSupport.rand(a, r, s, E, E), null,
                    MhaTestSupport.rand(a, r, s, E, E), null);
            MultiHeadAttention layer = MultiHeadAttention.create(w, backend);
            Tensor x = MhaTestSupport.rand(a, r, 1f, 2, 6, E);
            Tensor out = Tensor.allocate(a, 2, 6, E).fill(Float.NaN);
            MhaWorkspace ws = layer.newWorkspace(rec, 2, 6, 6);
            // Lk 5 where the scores have Lkv = 6; a batch of 3 where x has 2; and a right mask in a closed arena
            Arena closed = Arena.ofConfined();
            Tensor closedMask = Tensor.allocate(closed, 6).fill(1f);
            closed.close();
            Object[][] cases = {
                    {Mask.allowed(Tensor.allocate(a, 5).fill(1f)), "mask [5]"},
                    {Mask.additive(Tensor.allocate(a, 3, 1, 1, 6)), "mask [3, 1, 1, 6]"},
                    {Mask.allowed(closedMask), "mask [6]"},
            };
            for (Object[] c : cases) {
                fill(rec.given);
                SdpaOptions o = SdpaOptions.DEFAULT.withMask((Mask) c[0]);
                RuntimeException e = assertThrows(RuntimeException.class, () -> layer.forward(x, null, out, o, ws),
                        (String) c[1]);
                assertTrue(e.getMessage().contains((String) c[1]), e.getMessage());
                assertEquals(0, written(rec.given), c[1] + ": " + backend + " projected x before refusing the mask");
                for (float v : out.toArray()) {
                    assertTrue(Float.isNaN(v), "out written");
                }
            }
            // and a mask that fits runs (the workspace is free again)
            layer.forward(x, null, out, SdpaOptions.DEFAULT.withMask(Mask.allowed(Tensor.allocate(a, 6).fill(1f))), ws);
            if (backend != Backend.REFERENCE) { // which computes in its own double arrays
                assertTrue(written(rec.given) > 0, "the accepted call used the workspace");
            }
        }
    }
}
