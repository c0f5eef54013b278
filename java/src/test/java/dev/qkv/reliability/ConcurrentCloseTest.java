package dev.qkv.reliability;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.attention.Workspace;
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
 * Another thread closes the shared arena of exactly one of a call's tensors (q, k, v, out, the mask, the caller's
 * workspace) while calls on it run, after a random delay, so that the close lands before, between and inside the
 * products, on the caller and on pool threads. Every backend must stop with an {@link IllegalStateException} that
 * names the tensor whose arena closed, with its shape, as the checks before a call do
 * ({@code out [1, 4, 256, 64]: its arena is closed}): before the fix a close that landed inside a call surfaced as
 * the JDK's bare "Already closed", or named an internal product's operand ({@code sgemm: c [128, 64]}, a score
 * tile), which says nothing about which of the caller's tensors it was. Run in a child JVM, so that a crash
 * (SIGSEGV inside OpenBLAS on freed memory) shows as an exit code and an hs_err file, not as a dead test runner.
 */
class ConcurrentCloseTest {
    private static final String[] VICTIMS = {"q", "k", "v", "out", "mask", "workspace"};

    @Test
    void closingAnArenaDuringCallsNamesItsTensorAndNeverCrashes(@TempDir Path dir) throws IOException,
            InterruptedException {
        CloseProbes.runChild(Child.class, dir, 240);
    }

    /** The child JVM: the races, one line per failure that does not name its tensor, then a summary. */
    static final class Child {
        private Child() {
        }

        public static void main(String[] args) throws Exception {
            Map<String, Integer> stopped = new TreeMap<>();
            Random delays = new Random(21);
            for (Backend backend : Backend.values()) {
                // the reference is a double loop per element: a smaller call, still long enough to be closed inside
                long l = backend == Backend.REFERENCE ? 96 : 256;
                for (int victim = 0; victim < VICTIMS.length; victim++) {
                    if (backend == Backend.REFERENCE && victim == 5) {
                        continue; // the reference uses no workspace: closing it stops nothing
                    }
                    for (int round = 0; round < 25; round++) {
                        race(backend, l, victim, round, delays.nextInt(2000), stopped);
                    }
                }
            }
            stopped.forEach((k, n) -> System.out.println(k + ": " + n + " of 25 calls stopped, naming the tensor"));
            for (Backend backend : Backend.values()) {
                for (String victim : VICTIMS) {
                    if (backend == Backend.REFERENCE && victim.equals("workspace")) {
                        continue;
                    }
                    if (stopped.getOrDefault(backend + " " + victim, 0) == 0) {
                        // the race must have happened for the check to mean anything
                        System.out.println("UNEXPECTED: no call on " + backend + " was stopped by closing " + victim);
                    }
                }
            }
            System.out.println("close probe: done");
        }

        private static void race(Backend backend, long l, int victim, int round, int delayMicros,
                                 Map<String, Integer> stopped) throws InterruptedException {
            Arena doomed = Arena.ofShared();
            AtomicReference<Throwable> failure = new AtomicReference<>();
            AtomicReference<String> name = new AtomicReference<>();
            CountDownLatch ready = new CountDownLatch(1);
            Thread worker = new Thread(() -> {
                try (Arena live = Arena.ofShared()) {
                    Random r = new Random(round);
                    Tensor q = Fuzz.random(victim == 0 ? doomed : live, r, 1, 4, l, 64);
                    Tensor k = Fuzz.random(victim == 1 ? doomed : live, r, 1, 2, l, 64);
                    Tensor v = Fuzz.random(victim == 2 ? doomed : live, r, 1, 2, l, 64);
                    Tensor out = Tensor.allocate(victim == 3 ? doomed : live, 1, 4, l, 64);
                    Tensor mask = Tensor.allocate(victim == 4 ? doomed : live, l, l).fill(0.5f);
                    SdpaOptions options = SdpaOptions.CAUSAL.withMask(Mask.additive(mask));
                    Attention att = Attention.create(backend);
                    Workspace ws = Workspace.allocate(victim == 5 ? doomed : live,
                            att.workspaceBytes(q, k, v, out, options));
                    String[] names = {q.describe("q"), k.describe("k"), v.describe("v"), out.describe("out"),
                        mask.describe("mask"), "workspace"};
                    name.set(names[victim]);
                    ready.countDown();
                    for (int i = 0; i < 1_000_000; i++) {
                        if (victim == 5 || i % 2 == 0) {
                            att.sdpa(q, k, v, out, options, ws);
                        } else {
                            att.sdpa(q, k, v, out, options);
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
            worker.join(60_000);
            String what = backend + " " + VICTIMS[victim];
            if (worker.isAlive()) {
                System.out.println("UNEXPECTED: " + what + " round " + round + ": the call did not return in 60 s");
                Runtime.getRuntime().halt(3);
            }
            Throwable e = failure.get();
            if (e == null || name.get() == null) {
                System.out.println("UNEXPECTED: " + what + " round " + round + ": " + e);
                return;
            }
            String message = String.valueOf(e.getMessage());
            if (!(e instanceof IllegalStateException)) {
                System.out.println("UNEXPECTED: " + what + " round " + round + ": " + e);
            } else if (!message.startsWith(name.get() + ":")) {
                System.out.println("MISNAMED " + what + ": expected \"" + name.get() + ": ...\", got \"" + message + "\"");
            } else {
                stopped.merge(what, 1, Integer::sum);
            }
        }
    }
}
