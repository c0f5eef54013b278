package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.blas.OpenBlas;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Random;

/**
 * Child JVM of {@link OpenBlasThreadsTest}: loads OpenBLAS on a thread named {@link #LOADER}, so that OpenBLAS's
 * own server threads, which it starts then and which inherit their creator's name, can be told apart in
 * {@code /proc/self/task}. Then runs native decode steps of a layer, each after {@code setThreads(2)} (a user's
 * own direct products between steps, as {@code -Dqkv.blas.threads} is documented for), and prints the CPU ticks
 * the OpenBLAS server threads took during the steps: {@code ticks=N steps=S}. With a second argument
 * {@code env}, no step raises the count: it prints the count OpenBLAS took when it loaded ({@code loaded=N}), under
 * the environment the test gave the child ({@code OPENBLAS_NUM_THREADS}, {@code OMP_NUM_THREADS}).
 */
public final class OpenBlasThreadsProbe {

    static final String LOADER = "qkv-blas-probe";

    private OpenBlasThreadsProbe() {
    }

    /** utime + stime of the OpenBLAS server threads (those named as the loader was), in clock ticks. */
    static long serverTicks() throws IOException {
        long sum = 0;
        try (var tasks = Files.list(Path.of("/proc/self/task"))) {
            for (Path t : tasks.toList()) {
                try {
                    if (!Files.readString(t.resolve("comm")).strip().equals(LOADER)) {
                        continue;
                    }
                    String stat = Files.readString(t.resolve("stat"));
                    String[] f = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
                    sum += Long.parseLong(f[11]) + Long.parseLong(f[12]);
                } catch (NoSuchFileException gone) {
                    // a thread that ended meanwhile
                }
            }
        }
        return sum;
    }

    public static void main(String[] args) throws Exception {
        Thread loader = new Thread(OpenBlas::get, LOADER);
        loader.start();
        loader.join();
        OpenBlas blas = OpenBlas.get();
        boolean env = args.length > 1 && args[1].equals("env");
        if (env) {
            System.out.println("loaded=" + blas.threads());
        }
        Random r = new Random(1);
        int e = 1024;
        int steps = Integer.parseInt(args[0]);
        try (Arena arena = Arena.ofShared()) {
            Tensor[] w = new Tensor[4];
            for (int i = 0; i < 4; i++) {
                float[] f = new float[e * e];
                for (int j = 0; j < f.length; j++) {
                    f[j] = (float) r.nextGaussian() * 0.03f;
                }
                w[i] = Tensor.of(arena, f, e, e);
            }
            MultiHeadAttention mha = MultiHeadAttention.create(MhaWeights.of(8, w[0], null, w[1], null, w[2], null,
                    w[3], null), Backend.NATIVE);
            MhaWorkspace ws = mha.newWorkspace(arena, 1, 1, 64);
            KvCache cache = mha.newCache(arena, 64);
            Tensor x = Tensor.allocate(arena, 1, 1, e).fill(0.5f);
            Tensor y = Tensor.allocate(arena, 1, 1, e);
            long before = serverTicks();
            for (int i = 0; i < steps; i++) {
                if (cache.length() == cache.capacity()) {
                    cache.reset();
                }
                if (!env) {
                    blas.setThreads(2);
                }
                mha.decode(x, cache, y, ws);
            }
            System.out.println("ticks=" + (serverTicks() - before) + " steps=" + steps);
        }
    }
}
