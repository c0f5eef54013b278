package dev.qkv.io;

import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.nio.file.Path;

/**
 * Writes a small tensor to {@code args[0]/out.npy} again and again on another thread while {@code main} calls
 * {@link System#exit} {@code args[1]} milliseconds after the first write ended: the shutdown hooks run while the writer goes on, so a
 * write may start after the clean-up hook has looked at the pending files. The child of
 * {@code NpyTest.writesDuringExitLeaveNoTemporaryFile}.
 */
public final class NpyExitDuringWrites {
    private NpyExitDuringWrites() {
    }

    public static void main(String[] args) throws Exception {
        Path out = Path.of(args[0], "out.npy");
        Arena arena = Arena.ofShared(); // never closed: the writer runs until the JVM halts
        Tensor t = Tensor.allocate(arena, 4, 4).fill(0.5f);
        java.util.concurrent.CountDownLatch first = new java.util.concurrent.CountDownLatch(1);
        Thread writer = new Thread(() -> {
            while (true) {
                try {
                    Npy.write(out, t);
                    first.countDown();
                } catch (Exception e) {
                    // refused while the JVM exits: try again, as a busy service's threads would
                }
            }
        });
        writer.setDaemon(true);
        writer.start();
        first.await();
        Thread.sleep(Long.parseLong(args[1]));
        System.exit(0);
    }
}
