package dev.qkv.io;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.nio.file.Path;

/**
 * Writes a 64 MB tensor to {@code args[0]/out.npy} again and again until the process is stopped: the child of
 * {@code NpyTest.aStoppedWriteLeavesNoTemporaryFile}.
 */
public final class NpyWriteLoop {
    private NpyWriteLoop() {
    }

    public static void main(String[] args) throws Exception {
        Path out = Path.of(args[0], "out.npy");
        try (Arena arena = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(arena, 16, 1024, 1024).fill(1.5f);
            while (true) {
                Npy.write(out, t);
            }
        }
    }
}
