package dev.qkv.reliability;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.mha.KvCache;
import dev.qkv.mha.MhaWeights;
import dev.qkv.mha.MhaWorkspace;
import dev.qkv.mha.MultiHeadAttention;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;


/**
 * {@link ConcurrentCloseTest} for the layer: another thread closes the shared arena of exactly one of the caller's
 * objects of {@link MultiHeadAttention#forward} (x, kv, out, the weights, W_O alone, the workspace) or
 * {@link MultiHeadAttention#decode} (x, out, W_O, the workspace, the KV cache) while calls run, after a random
 * delay, so that the close lands before, between and inside the projections and the attention, on the caller and
 * on pool threads. Every backend must stop with an {@link IllegalStateException} that names the caller's object
 * ({@code out [1, 96, 64]: ...}, {@code W_O [64, 64]: ...}, {@code workspace: ...}, {@code KV cache [2, 4096, 16]
 * ...}), as the checks before a call do: before the fix a close inside a call named the layer's internal head
 * views ({@code q [1, 4, 96, 16]: its arena is closed} when it was the workspace), an internal product's operand,
 * or was the JDK's bare "Already closed". Run in a child JVM, so that a crash shows as an exit code and an hs_err
 * file.
 */
class MhaConcurrentCloseTest {
    private static final String[] FORWARD_VICTIMS = {"x", "kv", "out", "weights", "W_O", "workspace"};
    private static final String[] DECODE_VICTIMS = {"x", "out", "W_O", "workspace", "cache"};
    private static final int ROUNDS = 8;

    @Test
    void closingAnArenaDuringLayerCallsNamesTheCallersObject(@TempDir Path dir) throws IOException,
            InterruptedException {
        CloseProbes.runChild(Child.class, dir, 50);
    }

    /** The child JVM: the races, one line per failure that does not name the caller's object, then a summary. */
    static final class Child {
        private static final int E = 64;
        private static final int H = 4;
        private static final int HKV = 2;
        private static final int CAPACITY = 4096;

        private Child() {
        }

        public static void main(String[] args) throws Exception {
            Map<String, Integer> stopped = new TreeMap<>();
            Random delays = new Random(21);
            for (Backend backend : Backend.values()) {
                long l = backend == Backend.REFERENCE ? 24 : 96;
                for (int decode = 0; decode < 2; decode++) {
                    String[] victims = decode == 1 ? DECODE_VICTIMS : FORWARD_VICTIMS;
                    for (String victim : victims) {
                        for (int round = 0; round < ROUNDS; round++) {
                            race(backend, l, decode == 1, victim, round, delays.nextInt(1500), stopped);
                        }
                    }
                }
            }
            stopped.forEach((k, n) -> System.out.println(k + ": " + n + " of " + ROUNDS
                    + " calls stopped, naming the caller's object"));
            for (Backend backend : Backend.values()) {
                for (String mode : new String[] {"forward", "decode"}) {
                    for (String victim : mode.equals("decode") ? DECODE_VICTIMS : FORWARD_VICTIMS) {
                        if (stopped.getOrDefault(backend + " " + mode + " " + victim, 0) == 0) {
                            System.out.println("UNEXPECTED: no " + mode + " on " + backend + " was stopped by closing "
                                    + victim);
                        }
                    }
                }
            }
            System.out.println("close probe: done");
        }

        private static Tensor weight(Arena arena, Random r, long... shape) {
            Tensor t = Fuzz.random(arena, r, shape);
            float s = (float) (1 / Math.sqrt(E));
            float[] v = t.toArray();
            for (int i = 0; i < v.length; i++) {
                v[i] *= s;
            }
            return t.copyFrom(v);
        }

        private static void race(Backend backend, long l, boolean decode, String victim, int round, int delayMicros,
                                 Map<String, Integer> stopped) throws InterruptedException {
            Arena doomed = Arena.ofShared();
            AtomicReference<Throwable> failure = new AtomicReference<>();
            AtomicReference<String> name = new AtomicReference<>();
            CountDownLatch ready = new CountDownLatch(1);
            Thread worker = new Thread(() -> {
                try (Arena live = Arena.ofShared()) {
                    Random r = new Random(round);
                    Arena w = victim.equals("weights") ? doomed : live;
                    int kvd = E / H * HKV;
                    Tensor wo = weight(victim.equals("W_O") ? doomed : live, r, E, E);
                    MhaWeights weights = MhaWeights.of(H, weight(w, r, E, E), Fuzz.random(w, r, E),
                            weight(w, r, kvd, E), Fuzz.random(w, r, kvd), weight(w, r, kvd, E), Fuzz.random(w, r, kvd),
                            wo, Fuzz.random(w, r, E));
                    MultiHeadAttention layer = MultiHeadAttention.create(weights, backend, 2);
                    long n = decode ? 1 : l;
                    Tensor x = Fuzz.random(victim.equals("x") ? doomed : live, r, 1, n, E);
                    Tensor kv = Fuzz.random(victim.equals("kv") ? doomed : live, r, 1, l, E);
                    Tensor out = Tensor.allocate(victim.equals("out") ? doomed : live, 1, n, E);
                    Arena wsArena = victim.equals("workspace") ? doomed : live;
                    MhaWorkspace ws = decode ? layer.newWorkspace(wsArena, 1, 1, CAPACITY)
                            : layer.newWorkspace(wsArena, 1, l, l);
                    KvCache cache = decode ? layer.newCache(victim.equals("cache") ? doomed : live, CAPACITY) : null;
                    String expected = switch (victim) {
                        case "x" -> x.describe("x");
                        case "kv" -> kv.describe("kv");
                        case "out" -> out.describe("out");
                        case "weights" -> weights.wq().describe("W_Q");
                        case "W_O" -> wo.describe("W_O");
                        case "workspace" -> "workspace";
                        default -> "KV cache [" + HKV + ", " + CAPACITY + ", " + E / H + "]";
                    };
                    name.set(expected);
                    ready.countDown();
                    for (int i = 0; i < 1_000_000; i++) {
                        if (decode) {
                            if (cache.length() == CAPACITY) {
                                cache.reset();
                            }
                            layer.decode(x, cache, out, ws);
                        } else if (i % 2 == 0 || victim.equals("kv")) {
                            layer.forward(x, kv, out, SdpaOptions.DEFAULT, ws);
                        } else {
                            layer.forward(x, out, SdpaOptions.CAUSAL, ws);
                        }
                    }
                } catch (Throwable e) {
                    failure.set(e);
                } finally {
                    ready.countDown();
                }
            });
            worker.start();
            ready.await();
            CloseProbes.closeAfter(doomed, delayMicros);
            worker.join(20_000);
            String what = backend + " " + (decode ? "decode" : "forward") + " " + victim;
            if (worker.isAlive()) {
                System.out.println("UNEXPECTED: " + what + " round " + round + ": the call did not return in 20 s");
                Runtime.getRuntime().halt(3);
            }
            Throwable e = failure.get();
            if (e == null || name.get() == null) {
                System.out.println("UNEXPECTED: " + what + " round " + round + ": " + e);
                if (e != null) {
                    e.printStackTrace(System.out);
                }
                return;
            }
            String message = String.valueOf(e.getMessage());
            if (!(e instanceof IllegalStateException)) {
                System.out.println("UNEXPECTED: " + what + " round " + round + ": " + e);
                e.printStackTrace(System.out);
            } else if (!message.startsWith(name.get()) || !message.contains("closed")) {
                System.out.println("MISNAMED " + what + ": expected \"" + name.get() + ": ...\", got \"" + message
                        + "\"");
            } else {
                stopped.merge(what, 1, Integer::sum);
            }
        }
    }
}
