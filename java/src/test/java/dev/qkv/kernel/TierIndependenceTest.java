package dev.qkv.kernel;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The Java backend gives bit-identical results whichever JIT tier runs it: a child JVM that only interprets,
 * one that stops at C1, and this JVM after a warm-up long enough for C2 all print the same checksum. (The
 * Vector API's {@code reduceLanes(ADD)} once broke this: its order differs between the interpreter and C2, so
 * a call gave different last bits early and late in a JVM's life.)
 */
class TierIndependenceTest {

    @Test
    void interpreterC1AndC2AgreeBitForBit() throws Exception {
        long compiled = TierProbe.checksum(3000);
        long interpreted = child("-Xint");
        long c1 = child("-XX:TieredStopAtLevel=1");
        assertEquals(compiled, interpreted, "interpreter vs C2 checksum");
        assertEquals(compiled, c1, "C1 vs C2 checksum");
    }

    private static long child(String tierFlag) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>();
        cmd.add(ProcessHandle.current().info().command().orElseThrow());
        cmd.add(tierFlag);
        cmd.add("--enable-native-access=ALL-UNNAMED");
        cmd.add("--add-modules");
        cmd.add("jdk.incubator.vector");
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(TierProbe.class.getName());
        cmd.add("0");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(false).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), tierFlag + " child timed out");
        assertEquals(0, p.exitValue(), tierFlag + " child failed: " + err);
        return Long.parseLong(out);
    }
}
