package dev.qkv.attention;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A caller's workspace is checked the same way on every backend, {@link Backend#REFERENCE} included (which computes
 * without it): one whose arena is closed, or that shares memory with a tensor of the call, is refused before out
 * is written, so that a call the reference accepts is one the other backends accept too.
 */
class ReferenceWorkspaceTest {

    private static void untouched(Tensor out) {
        for (float v : out.toArray()) {
            assertTrue(Float.isNaN(v), "out was written by a refused call");
        }
    }

    @Test
    void everyBackendRefusesTheSameWorkspaces() {
        for (Backend backend : Backend.values()) {
            Attention a = Attention.create(backend);
            try (Arena arena = Arena.ofConfined()) {
                Tensor q = Tensor.allocate(arena, 1, 2, 4, 8);
                Tensor out = Tensor.allocate(arena, 1, 2, 4, 8).fill(Float.NaN);
                SdpaOptions o = SdpaOptions.DEFAULT;
                Arena doomed = Arena.ofConfined();
                Workspace closed = Workspace.allocate(doomed, 1 << 16);
                doomed.close();
                IllegalStateException e = assertThrows(IllegalStateException.class,
                        () -> a.sdpa(q, q, q, out, o, closed), backend.cliName());
                assertTrue(e.getMessage().contains("workspace"), backend + ": " + e.getMessage());
                assertThrows(IllegalStateException.class, () -> a.workspaceBytes(q, q, q, out, o, closed),
                        backend.cliName());
                untouched(out);
            }
        }
    }
}
