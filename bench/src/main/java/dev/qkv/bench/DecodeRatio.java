package dev.qkv.bench;

import dev.qkv.attention.Attention;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The decode step against its floor in one JVM: rounds of (read the KV cache once, one step per backend, in an
 * order that rotates from round to round), so that
 * every backend and the floor share the JVM's memory placement. {@link DecodeBench} measures each in its own JMH
 * fork, and there the floor alone moved by ±20% between forks (6.2-8.5 ms on one thread), more than the
 * differences being measured.
 *
 * <pre>java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp bench/target/benchmarks.jar \
 *     dev.qkv.bench.DecodeRatio [threads] [rounds] [backends] [kvHeads]</pre>
 *
 * Positional, each optional: threads (default 1, at most the cores), rounds (80), backends (native,java), kvHeads
 * (32), e.g.
 * {@code DecodeRatio 2 80 native,java}.
 *
 * With {@code kvHeads} under 32 the 32 query heads share kv heads (grouped-query attention), and the floor reads
 * the smaller cache. Before the rounds the floor and every backend run in turn until the JIT is quiet
 * ({@link BenchSupport#warmUp}), and each backend's output is checked ({@link BenchSupport#check}). Prints per
 * backend the mean and best time over the last three quarters of the rounds, the ratio of the means
 * to the floor's and that of the bests. On two threads the floor's mean carries the hand-off to the reader
 * threads (its best is the steadier figure there).
 */
public final class DecodeRatio {
    private DecodeRatio() {
    }

    public static void main(String[] args) throws Exception {
        int threads = args.length > 0 ? Integer.parseInt(args[0]) : 1;
        int rounds = args.length > 1 ? Integer.parseInt(args[1]) : 80;
        String[] backends = (args.length > 2 ? args[2] : "native,java").split(",");
        int kvHeads = args.length > 3 ? Integer.parseInt(args[3]) : 32;
        if (threads < 1 || rounds < 4) {
            throw new IllegalArgumentException("threads >= 1 and rounds >= 4 expected");
        }
        // the floor reads with as many threads as the step runs: qkv caps those at the cores
        BenchSupport.threads(threads);
        ExecutorService readers = Executors.newFixedThreadPool(threads);
        try (Arena arena = Arena.ofShared()) {
            DecodeBench.Step step = DecodeBench.Step.allocate(arena, kvHeads);
            Tensor q = step.q();
            Tensor k = step.k();
            Tensor v = step.v();
            Tensor out = step.out();
            Attention[] attention = new Attention[backends.length];
            for (int b = 0; b < backends.length; b++) {
                attention[b] = BenchSupport.attention(backends[b], threads);
            }
            float[] warmSink = new float[1];
            BenchSupport.warmUp("decode-ratio floor and " + String.join(",", backends), () -> {
                try {
                    warmSink[0] += DecodeBench.readOnce(k, v, threads, readers);
                } catch (Exception e) {
                    throw new IllegalStateException(e);
                }
                for (Attention a : attention) {
                    a.sdpa(q, k, v, out, SdpaOptions.DEFAULT);
                }
            });
            for (int b = 0; b < backends.length; b++) {
                attention[b].sdpa(q, k, v, out, SdpaOptions.DEFAULT);
                // after the calls: OpenBLAS's threads as the timed calls run it (a native call sets one)
                BenchSupport.report("decode-ratio 32x1x4096x128 kvHeads=" + kvHeads + " threads=" + threads
                        + " backend=" + backends[b],
                        attention[b].plan(q, k, v, out, SdpaOptions.DEFAULT));
                System.out.println("# qkv decode-ratio " + backends[b] + ": output checked, max |difference| "
                        + BenchSupport.check(q, k, v, out, false));
            }
            int n = backends.length + 1;
            double[] total = new double[n];
            double[] best = new double[n];
            Arrays.fill(best, Double.MAX_VALUE);
            float sink = 0;
            for (int round = 0; round < rounds; round++) {
                long[] t = new long[n];
                // the order rotates each round (floor, backends...; then starting one later), so that whatever
                // the previous read leaves in the caches favours no one of them
                for (int j = 0; j < n; j++) {
                    int i = (j + round) % n;
                    long s = System.nanoTime();
                    if (i == 0) {
                        sink += DecodeBench.readOnce(k, v, threads, readers);
                    } else {
                        attention[i - 1].sdpa(q, k, v, out, SdpaOptions.DEFAULT);
                    }
                    t[i] = System.nanoTime() - s;
                }
                if (round >= rounds / 4) {
                    for (int i = 0; i < n; i++) {
                        total[i] += t[i];
                        best[i] = Math.min(best[i], t[i]);
                    }
                }
            }
            int counted = rounds - rounds / 4;
            StringBuilder line = new StringBuilder(String.format(Locale.ROOT,
                    "threads=%d kvHeads=%d floor_ms=%.2f (best %.2f)", threads, kvHeads, total[0] / counted / 1e6,
                    best[0] / 1e6));
            for (int b = 0; b < backends.length; b++) {
                line.append(String.format(Locale.ROOT, " | %s_ms=%.2f (best %.2f) ratio=%.2f (best/best %.2f)",
                        backends[b], total[b + 1] / counted / 1e6, best[b + 1] / 1e6, total[b + 1] / total[0],
                        best[b + 1] / best[0]));
            }
            System.out.println(line + (sink + warmSink[0] == 42f ? " " : ""));
        } finally {
            readers.shutdownNow();
        }
    }
}
