package dev.qkv.bench;

import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.cli.Jit;
import dev.qkv.tensor.Tensor;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;

/**
 * qkv against ONNX Runtime in one JVM, in alternating rounds: the ratios of issue 4, measured so that a change of
 * the machine's speed moves both sides alike. {@link OrtBench} and {@link SdpaBench} measure each contender in a
 * fork of its own, minutes apart; on a VM whose cores change speed by 20% from minute to minute (bench/RESULTS.md,
 * round 15) that puts the noise above the differences measured. Here every round times each contender (qkv per
 * backend, ORT per form) for a block of calls, in an order that rotates from round to round, and each ratio is
 * taken within a round.
 *
 * <pre>java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp bench/target/ort/benchmarks.jar \
 *     dev.qkv.bench.OrtRatio [--shapes S,...] [--threads N,...] [--rounds N] [--block-ms N] [--causal]
 *     [--backends native,java] [--graphs mha,attention,matmul] [--spin true|false]</pre>
 *
 * Shapes are {@code BxHxLxD} or {@code BxHxLqxLkxD} as in {@link OrtBench} (default: issue 4's five, the decode
 * step included). Per shape and thread count: the plan of each qkv backend (kernel, OpenBLAS core), every output
 * checked against qkv's Java backend (max |difference| ≤ 1e-4, inputs uniform in [-1, 1)), whose output is
 * checked against the scalar reference ({@link BenchSupport#check}), warm-up (one call
 * each to size the blocks, then blocks of 0.5 s per contender, alternating, at least 2 s each and then until a
 * cycle passes without JIT compilation, at most 60 s), then {@code --rounds} rounds. A block is
 * one untimed call and then enough calls for {@code --block-ms} (at least 3); its time is the median call, and a
 * contender's time is the median of its blocks. Before each block the caller sleeps 10 ms, so that ORT's workers
 * (which spin after a call, as ORT's default has them, unless {@code --spin false}) have stopped spinning when
 * the next contender starts. The ratio is ORT's fastest form's time over qkv's, round by round (above 1: qkv
 * faster): its median, its range, and the rounds in which qkv was faster.
 *
 * <p>qkv runs on {@code threads} workers of its own (OpenBLAS at one thread inside them), ORT on an intra-op pool
 * of {@code threads}; a count above the cores is refused (qkv would run fewer, see {@link BenchSupport#threads}).
 */
public final class OrtRatio {
    /** A warm-up block of one contender. */
    private static final double WARM_BLOCK_NANOS = 500e6;
    /** Warm-up ends by this time whatever the JIT does. */
    private static final long MAX_WARM_NANOS = 60_000_000_000L;

    private OrtRatio() {
    }

    /** One contender: a name and a call. */
    private record Contender(String name, Call call) {
    }

    @FunctionalInterface
    private interface Call {
        void run() throws OrtException;
    }

    public static void main(String[] args) throws Exception {
        List<String> shapes = List.of("1x1x128x64", "1x12x512x64", "1x8x2048x64", "1x1x4096x128", "1x32x1x4096x128");
        List<Integer> threadCounts = List.of(1, 2);
        int rounds = 20;
        long blockMs = 100;
        boolean causal = false;
        List<String> backends = List.of("native", "java");
        List<String> graphs = List.of("mha", "attention", "matmul");
        boolean spin = true;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--causal")) {
                causal = true;
                continue;
            }
            if (i + 1 == args.length) {
                throw new IllegalArgumentException(a + " needs a value (or is unknown)");
            }
            String value = args[++i];
            switch (a) {
                case "--shapes" -> shapes = List.of(value.split(","));
                case "--threads" -> threadCounts = Arrays.stream(value.split(",")).map(Integer::valueOf).toList();
                case "--rounds" -> rounds = Integer.parseInt(value);
                case "--block-ms" -> blockMs = Long.parseLong(value);
                case "--backends" -> backends = List.of(value.split(","));
                case "--graphs" -> graphs = List.of(value.split(","));
                case "--spin" -> spin = Boolean.parseBoolean(value);
                default -> throw new IllegalArgumentException("unknown option " + a);
            }
        }
        if (rounds < 1 || blockMs < 1 || threadCounts.stream().anyMatch(t -> t < 1)) {
            throw new IllegalArgumentException("rounds, block-ms and threads must be positive");
        }
        // before any measuring: qkv caps its workers at the cores, ORT's intra-op pool is not capped, so a count
        // above the cores would compare ORT on that many threads with qkv on fewer, under one label
        threadCounts.forEach(BenchSupport::threads);
        for (String shape : shapes) {
            long[] s = BenchSupport.shape(shape);
            // before any measuring: OrtBench.Session refuses causal where Lq != Lk, which with the default shapes
            // (the decode step last) ended the run after minutes, before its summary
            if (causal && s[2] != s[3]) {
                throw new IllegalArgumentException("--causal needs Lq = Lk in every shape: " + shape
                        + " (name the shapes with --shapes)");
            }
        }
        List<String> summary = new ArrayList<>();
        for (String shape : shapes) {
            for (int threads : threadCounts) {
                summary.add(measure(shape, threads, causal, rounds, blockMs, backends, graphs, spin));
            }
        }
        System.out.println();
        System.out.println("# summary: ratio = time of ORT's fastest form / qkv's, within each round (above 1: qkv "
                + "faster); median [min-max] (rounds qkv faster / rounds)");
        summary.forEach(System.out::println);
    }

    private static String measure(String shape, int threads, boolean causal, int rounds, long blockMs,
                                  List<String> backends, List<String> graphs, boolean spin) throws Exception {
        long[] s = BenchSupport.shape(shape);
        int b = Math.toIntExact(s[0]);
        int h = Math.toIntExact(s[1]);
        int lq = Math.toIntExact(s[2]);
        int lk = Math.toIntExact(s[3]);
        int d = Math.toIntExact(s[4]);
        SdpaOptions options = causal ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT;
        String what = shape + (causal ? " causal" : "") + " threads=" + threads;
        SplittableRandom r = new SplittableRandom(42);
        float[] qf = SdpaBench.uniform(r, b * h * lq * d);
        float[] kf = SdpaBench.uniform(r, b * h * lk * d);
        float[] vf = SdpaBench.uniform(r, b * h * lk * d);
        List<OrtBench.Session> sessions = new ArrayList<>();
        try (Arena arena = Arena.ofShared()) {
            Tensor q = Tensor.allocate(arena, b, h, lq, d).copyFrom(qf);
            Tensor k = Tensor.allocate(arena, b, h, lk, d).copyFrom(kf);
            Tensor v = Tensor.allocate(arena, b, h, lk, d).copyFrom(vf);
            Tensor expected = Tensor.allocate(arena, b, h, lq, d);
            Attention.create(Backend.JAVA, threads).sdpa(q, k, v, expected, options);
            // the yardstick of every check below, itself checked against the scalar reference: without this the
            // Java contender was compared with the same Java kernels only
            System.out.println("# " + what + ": qkv java (the yardstick) checked against the reference, max "
                    + "|difference| " + BenchSupport.check(q, k, v, expected, causal));
            float[] want = expected.toArray();

            List<Contender> contenders = new ArrayList<>();
            for (String backend : backends) {
                Attention attention = BenchSupport.attention(backend, threads);
                Tensor out = Tensor.allocate(arena, b, h, lq, d);
                attention.sdpa(q, k, v, out, options);
                // after a call: OpenBLAS's threads as the timed calls run it (a native call sets one)
                BenchSupport.report(what + " flops=" + (long) (4.0 * b * h * lq * lk * d) + " backend=" + backend,
                        attention.plan(q, k, v, out, options));
                check("qkv " + backend, want, out.toArray());
                contenders.add(new Contender(backend, () -> attention.sdpa(q, k, v, out, options)));
            }
            int ortFirst = contenders.size();
            for (String graph : graphs) {
                OrtBench.Session session = new OrtBench.Session(graph, b, h, lq, lk, d, causal, threads, spin, qf, kf,
                        vf);
                sessions.add(session);
                double diff = session.check(want);
                System.out.println("# ort " + OrtEnvironment.getEnvironment().getVersion() + " graph=" + graph + " "
                        + what + " intra_op_threads=" + threads + " spin=" + spin + " max|ort - qkv java|=" + diff);
                contenders.add(new Contender("ort:" + graph, session::run));
            }
            int n = contenders.size();

            // warm-up: a first cycle of one call each that sizes the blocks, then blocks of ~0.5 s per contender,
            // alternating, for at least 4 cycles (2 s each) and then until a
            // cycle passes in which the JIT compiled nothing and ends with nothing running or queued (as the command
            // line's bench does, Timing.warmUp, with Jit): in
            // one JVM with ORT, the Java kernels still ran in the lower tiers after 2 s (7.9 ms a tiny call)
            int[] calls = new int[n];
            Arrays.fill(calls, 1);
            long warmStart = System.nanoTime();
            long compiled = Jit.compiledMillis();
            int cycles = 0;
            while (true) {
                for (int c = 0; c < n; c++) {
                    double median = block(contenders.get(c).call(), calls[c]);
                    calls[c] = (int) Math.max(3, Math.min(100_000, Math.ceil(WARM_BLOCK_NANOS / median)));
                }
                cycles++;
                long now = Jit.compiledMillis();
                // cycle 1 timed one call per contender: 4 cycles of 0.5 s blocks are cycles 2-5
                if (cycles >= 5 && now == compiled && Jit.idle() || System.nanoTime() - warmStart > MAX_WARM_NANOS) {
                    break;
                }
                compiled = now;
            }
            System.out.printf(Locale.ROOT, "# %s: warmed up in %d cycles, %.1f s%s%n", what, cycles,
                    (System.nanoTime() - warmStart) / 1e9, System.nanoTime() - warmStart > MAX_WARM_NANOS
                            ? " (the JIT was still compiling: figures may include lower tiers)" : "");
            for (int c = 0; c < n; c++) {
                calls[c] = (int) Math.max(3, Math.ceil(calls[c] * blockMs * 1e6 / WARM_BLOCK_NANOS));
            }

            Rounds times = new Rounds(n, rounds);
            for (int round = 0; round < rounds; round++) {
                double[] t = new double[n];
                for (int j = 0; j < n; j++) {
                    int c = (j + round) % n;
                    t[c] = block(contenders.get(c).call(), calls[c]);
                }
                times.add(t);
            }

            StringBuilder line = new StringBuilder();
            line.append(String.format(Locale.ROOT, "%-20s", shape + (causal ? " causal" : "")))
                    .append(String.format(Locale.ROOT, " threads=%d", threads));
            int bestOrt = ortFirst;
            for (int c = ortFirst; c < n; c++) {
                if (times.median(c) < times.median(bestOrt)) {
                    bestOrt = c;
                }
            }
            System.out.println("# " + what + ": " + rounds + " rounds; per contender the median, least and greatest"
                    + " of its blocks' median calls (ms), calls per block");
            for (int c = 0; c < n; c++) {
                System.out.printf(Locale.ROOT, "#   %-14s %10.4f %10.4f %10.4f  %d%n", contenders.get(c).name(),
                        times.median(c) / 1e6, times.min(c) / 1e6, times.max(c) / 1e6, calls[c]);
            }
            for (int c = 0; c < ortFirst; c++) {
                Rounds.Ratio ratio = times.ratio(bestOrt, c);
                line.append(String.format(Locale.ROOT, " | %s %.3f ms vs %s %.3f ms: %.2f [%.2f-%.2f] (%d/%d)",
                        contenders.get(c).name(), times.median(c) / 1e6, contenders.get(bestOrt).name(),
                        times.median(bestOrt) / 1e6, ratio.median(), ratio.min(), ratio.max(), ratio.above(),
                        ratio.rounds()));
            }
            System.out.println(line);
            return line.toString();
        } finally {
            for (OrtBench.Session session : sessions) {
                session.close();
            }
        }
    }

    /** Sleeps 10 ms, makes one untimed call, then times {@code calls} calls; returns the median call in ns. */
    private static double block(Call call, int calls) throws Exception {
        Thread.sleep(10);
        call.run();
        double[] ns = new double[calls];
        for (int i = 0; i < calls; i++) {
            long start = System.nanoTime();
            call.run();
            ns[i] = System.nanoTime() - start;
        }
        return Rounds.median(ns);
    }

    private static void check(String what, float[] want, float[] got) {
        double maxDiff = BenchSupport.maxDiff(want, got);
        if (!(maxDiff <= 1e-4)) {
            throw new IllegalStateException(what + " differs from qkv's Java backend by " + maxDiff);
        }
    }
}
