package dev.qkv.reliability;

import dev.qkv.cli.Main;
import dev.qkv.io.Npy;
import dev.qkv.io.NpyBytes;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.net.URISyntaxException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * {@code qkv sdpa} and {@code qkv mha} over random mutations of valid flag lists and input files: every run
 * exits 0 (one stdout line, the output a valid {@code .npy} of the shape the inputs imply) or 2 (exactly one
 * stderr line {@code error: ...} with no stack trace or exception name, no new output, an earlier output left
 * byte for byte, and no temporary file left in the output folder). Exit 1 or a thrown exception fails the test.
 */
class CliFuzzTest {
    @TempDir
    Path root;
    private Path in;
    private Path outDir;
    /** Broken inputs: truncated and bit-flipped copies of the valid ones, a directory, a missing file. */
    private final List<Path> bad = new ArrayList<>();

    private record Result(int code, String out, String err) {
    }

    private static Result run(List<String> args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code;
        try (PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8);
             PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = Main.run(args.toArray(String[]::new), o, e);
        }
        return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    private static Path fixture(String name) throws URISyntaxException {
        return Path.of(CliFuzzTest.class.getResource("/mha/" + name).toURI());
    }

    @BeforeEach
    void inputs() throws Exception {
        in = Files.createDirectories(root.resolve("in"));
        outDir = Files.createDirectories(root.resolve("out"));
        Random r = new Random(7);
        try (Arena a = Arena.ofConfined()) {
            Npy.write(in.resolve("q.npy"), Fuzz.random(a, r, 1, 2, 5, 8));
            Npy.write(in.resolve("k.npy"), Fuzz.random(a, r, 1, 1, 6, 8));
            Npy.write(in.resolve("v.npy"), Fuzz.random(a, r, 1, 1, 6, 4));
            Npy.write(in.resolve("bias.npy"), Fuzz.random(a, r, 1, 1, 5, 6));
        }
        boolean[] allowed = new boolean[30];
        for (int i = 0; i < allowed.length; i++) {
            allowed[i] = r.nextInt(4) != 0;
        }
        NpyBytes.write(in, "allowed.npy", NpyBytes.file("|b1", "(5, 6)", NpyBytes.b1(allowed)));
        for (String f : List.of("self_x.npy", "self.safetensors", "causal_x.npy", "causal.safetensors",
                "causal_mask.npy", "cross_x.npy", "cross_kv.npy", "cross_mask.npy", "cross.safetensors")) {
            Files.copy(fixture(f), in.resolve(f));
        }
        // a pool of broken inputs: truncated, bit-flipped, wrong kind
        int n = 0;
        try (Stream<Path> files = Files.list(in)) {
            for (Path p : files.sorted().toList()) {
                byte[] b = Files.readAllBytes(p);
                String ext = p.toString().endsWith(".npy") ? ".npy" : ".safetensors";
                bad.add(Files.write(in.resolve("cut" + n + ext), Arrays.copyOf(b, r.nextInt(b.length))));
                byte[] flipped = b.clone();
                for (int k = 0; k < 3; k++) {
                    int pos = r.nextInt(Math.min(b.length, 160));
                    flipped[pos] ^= (byte) (1 << r.nextInt(8));
                }
                bad.add(Files.write(in.resolve("flip" + n + ext), flipped));
                n++;
            }
        }
        bad.add(in);
        bad.add(in.resolve("absent.npy"));
    }

    /** A valid command line of one of four kinds, with its output at {@code out}. */
    private List<String> validArgs(Random r, Path out) {
        String backend = r.nextInt(6) == 0 ? "native" : (r.nextBoolean() ? "java" : "reference");
        List<String> a = switch (r.nextInt(5)) {
            case 0 -> new ArrayList<>(List.of("sdpa", "--q", p("q.npy"), "--k", p("k.npy"), "--v", p("v.npy")));
            case 1 -> new ArrayList<>(List.of("sdpa", "--q", p("q.npy"), "--k", p("k.npy"), "--v", p("v.npy"),
                    "--mask", p(r.nextBoolean() ? "allowed.npy" : "bias.npy"), "--causal", "--scale", "0.3"));
            case 2 -> new ArrayList<>(List.of("mha", "--x", p("self_x.npy"), "--weights", p("self.safetensors"),
                    "--heads", "4"));
            case 3 -> new ArrayList<>(List.of("mha", "--x", p("causal_x.npy"), "--weights",
                    p("causal.safetensors"), "--heads", "2", "--causal", "--mask", p("causal_mask.npy")));
            default -> new ArrayList<>(List.of("mha", "--x", p("cross_x.npy"), "--kv", p("cross_kv.npy"),
                    "--mask", p("cross_mask.npy"), "--weights", p("cross.safetensors"), "--prefix",
                    "decoder.cross_attn", "--heads", "3", "--kv-heads", "3"));
        };
        a.addAll(List.of("--backend", backend, "--out", out.toString()));
        return a;
    }

    private String p(String name) {
        return in.resolve(name).toString();
    }

    private static final String[] JUNK = {"", "-1", "0", "3", "abc", "1e40", "NaN", "Infinity", "-0",
        "99999999999999999999", "--", "-", " ", "\u0664", "java", "native", "x=1", "/"};

    /** One random change to a command line. */
    private String mutate(Random r, List<String> a) {
        int i = 1 + r.nextInt(a.size() - 1);
        switch (r.nextInt(8)) {
            case 0 -> {
                String gone = a.remove(i);
                return "removed " + gone;
            }
            case 1 -> {
                a.add(1 + r.nextInt(a.size()), a.get(i));
                return "duplicated " + a.get(i);
            }
            case 2 -> {
                String v = JUNK[r.nextInt(JUNK.length)];
                String old = a.set(i, v);
                return "replaced " + old + " by '" + v + "'";
            }
            case 3 -> {
                Path b = bad.get(r.nextInt(bad.size()));
                List<Integer> files = new ArrayList<>();
                for (int k = 0; k < a.size(); k++) {
                    if (a.get(k).startsWith(in.toString())) {
                        files.add(k);
                    }
                }
                if (files.isEmpty()) {
                    return "no input left to break";
                }
                int k = files.get(r.nextInt(files.size()));
                String old = a.set(k, b.toString());
                return "input " + old + " -> " + b.getFileName();
            }
            case 4 -> {
                String f = Fuzz.pick(r, 0, 1, 2) == 0 ? "--bogus" : (r.nextBoolean() ? "--causal=1" : "word");
                a.add(1 + r.nextInt(a.size()), f);
                return "inserted " + f;
            }
            case 5 -> {
                int j = 1 + r.nextInt(a.size() - 1);
                String x = a.get(i);
                a.set(i, a.get(j));
                a.set(j, x);
                return "swapped " + a.get(j) + " and " + a.get(i);
            }
            case 6 -> {
                // another valid input of the same kind in the wrong place (shapes that do not fit)
                String[] other = {"q.npy", "k.npy", "v.npy", "self_x.npy", "cross_kv.npy", "allowed.npy", "bias.npy",
                    "cross.safetensors", "causal.safetensors"};
                List<Integer> files = new ArrayList<>();
                for (int k = 0; k < a.size(); k++) {
                    if (a.get(k).startsWith(in.toString())) {
                        files.add(k);
                    }
                }
                if (files.isEmpty()) {
                    return "no input left to swap";
                }
                int k = files.get(r.nextInt(files.size()));
                String o = other[r.nextInt(other.length)];
                a.set(k, p(o));
                return "input " + k + " -> " + o;
            }
            default -> {
                String v = Fuzz.pick(r, 0, 1) == 0 ? "--heads" : "--kv-heads";
                a.add(1 + r.nextInt(a.size()), v);
                a.add(1 + a.indexOf(v), Integer.toString(Fuzz.pick(r, 1, 2, 3, 4, 5, 6, 8, 16)));
                return "added " + v;
            }
        }
    }

    private static String value(List<String> a, String flag) {
        for (int i = 0; i < a.size(); i++) {
            if (a.get(i).equals(flag) && i + 1 < a.size()) {
                return a.get(i + 1);
            }
            if (a.get(i).startsWith(flag + "=")) {
                return a.get(i).substring(flag.length() + 1);
            }
        }
        return null;
    }

    /** The shape a successful run must write: [B, Hq, Lq, Dv] for sdpa, the shape of x for mha. */
    private static long[] expectedShape(List<String> a) throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            if (a.getFirst().equals("sdpa")) {
                long[] q = Npy.read(Path.of(value(a, "--q")), arena).tensor().shape();
                long[] v = Npy.read(Path.of(value(a, "--v")), arena).tensor().shape();
                return new long[] {q[0], q[1], q[2], v[3]};
            }
            return Npy.read(Path.of(value(a, "--x")), arena).tensor().shape();
        }
    }

    private List<String> outFolder() throws IOException {
        try (Stream<Path> s = Files.list(outDir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    /** Runs {@code args} and checks the contract; {@code existing} is the earlier output's bytes, or null. */
    private int check(List<String> args, Path out, byte[] existing, String what) throws IOException {
        Result res;
        try {
            res = run(args);
        } catch (Throwable t) {
            throw new AssertionError(what + ": Main.run threw " + t, t);
        }
        String ctx = what + "\nargs: " + args + "\nexit " + res.code + "\nstdout: " + res.out + "\nstderr: " + res.err;
        if (res.code == 0) {
            assertEquals(1, res.out.lines().count(), ctx);
            assertEquals("", res.err, ctx);
            String target = value(args, "--out");
            Path written = Path.of(target);
            assertTrue(Files.isRegularFile(written), ctx);
            try (Arena a = Arena.ofConfined()) {
                Tensor y = Npy.read(written, a).tensor();
                assertArrayEquals(expectedShape(args), y.shape(), ctx);
            }
            if (written.toAbsolutePath().getParent().equals(outDir)) {
                assertEquals(List.of(written.getFileName().toString()), outFolder(), ctx);
            }
            Files.delete(written);
        } else {
            assertEquals(2, res.code, ctx);
            assertEquals("", res.out, ctx);
            List<String> lines = res.err.lines().toList();
            assertEquals(1, lines.size(), ctx);
            assertTrue(lines.getFirst().startsWith("error: "), ctx);
            assertTrue(!lines.getFirst().contains("Exception") && !lines.getFirst().contains("Error:")
                    && !lines.getFirst().contains("\tat "), ctx);
            assertTrue(lines.getFirst().length() < 1000, ctx);
            if (existing != null) {
                assertArrayEquals(existing, Files.readAllBytes(out), ctx);
                assertEquals(List.of(out.getFileName().toString()), outFolder(), ctx);
            } else {
                assertEquals(List.of(), outFolder(), ctx);
            }
        }
        if (existing != null && Files.exists(out)) {
            Files.delete(out);
        }
        return res.code;
    }

    @Test
    void mutatedCommandLinesExitZeroWithAValidOutputOrTwoWithOneErrorLine() throws Exception {
        long seed = Fuzz.seed("cli");
        Random r = new Random(seed);
        int iterations = Fuzz.iterations(400);
        int[] codes = new int[3];
        for (int it = 0; it < iterations; it++) {
            Path out = outDir.resolve("y.npy");
            byte[] existing = null;
            if (r.nextInt(3) == 0) {
                existing = ("earlier output " + it).getBytes(StandardCharsets.UTF_8);
                Files.write(out, existing);
            }
            List<String> args = validArgs(r, out);
            int mutations = r.nextInt(4) == 0 ? 0 : 1 + r.nextInt(3);
            StringBuilder what = new StringBuilder("seed " + seed + " case " + it + ":");
            for (int m = 0; m < mutations; m++) {
                what.append(' ').append(mutate(r, args)).append(';');
            }
            if (!outFolder().equals(existing == null ? List.of() : List.of("y.npy"))) {
                fail(what + " left " + outFolder());
            }
            String target = value(args, "--out");
            if (target != null && !target.startsWith(root.toString())) {
                // a mutation made --out a word like 'abc' or ' ': it would be written in the working directory
                if (existing != null) {
                    Files.delete(out);
                }
                continue;
            }
            if (target != null && !Path.of(target).toAbsolutePath().startsWith(outDir) && !target.isBlank()) {
                // a mutation moved --out onto an input or elsewhere; the run must still obey the contract there
                byte[] before = Files.isRegularFile(Path.of(target)) ? Files.readAllBytes(Path.of(target)) : null;
                Result res = run(args);
                assertTrue(res.code == 0 || res.code == 2 && res.err.lines().count() == 1
                        && res.err.startsWith("error: ") && !res.err.contains("Exception"),
                        what + "\nargs: " + args + "\n" + res);
                if (res.code == 2 && before != null) {
                    assertArrayEquals(before, Files.readAllBytes(Path.of(target)), what.toString());
                }
                if (res.code == 0) {
                    // it overwrote an input: put the inputs back for the next cases
                    inputsRestore();
                }
                codes[res.code]++;
                if (existing != null) {
                    Files.deleteIfExists(out);
                }
                continue;
            }
            codes[check(args, out, existing, what.toString())]++;
        }
        assertTrue(codes[0] > 0 && codes[2] > 0, "exit codes 0/1/2: " + Arrays.toString(codes));
    }

    private void inputsRestore() throws Exception {
        try (Stream<Path> s = Files.walk(root)) {
            for (Path p : s.sorted(java.util.Comparator.reverseOrder()).toList()) {
                if (!p.equals(root)) {
                    Files.delete(p);
                }
            }
        }
        bad.clear();
        inputs();
    }

    @Test
    void outputInAMissingFolderOrOnADirectoryIsOneErrorLine() throws IOException {
        Random r = new Random(Fuzz.seed("cli-out"));
        for (int i = 0; i < 8; i++) {
            for (Path out : List.of(outDir.resolve("missing").resolve("y.npy"), outDir, outDir.resolve("sub/"),
                    root.resolve("no/such/dir/y.npy"))) {
                if (out.equals(outDir.resolve("sub/")) && !Files.isDirectory(out)) {
                    Files.createDirectory(out);
                }
                List<String> args = validArgs(r, out);
                Result res = run(args);
                String ctx = args + "\n" + res;
                assertEquals(2, res.code, ctx);
                assertEquals(1, res.err.lines().count(), ctx);
                assertTrue(res.err.startsWith("error: ") && !res.err.contains("Exception"), ctx);
                assertTrue(!Files.exists(outDir.resolve("missing")), ctx);
            }
        }
        assertEquals(List.of("sub"), outFolder());
    }

    @Test
    void aFailingRunLeavesAnExistingOutputUnchanged() throws IOException {
        Path out = outDir.resolve("y.npy");
        byte[] before = "not even a .npy file".getBytes(StandardCharsets.UTF_8);
        Random r = new Random(Fuzz.seed("cli-existing"));
        for (int i = 0; i < 20; i++) {
            Files.write(out, before);
            List<String> args = validArgs(r, out);
            // a broken input, read after the output path was checked
            Path b = bad.get(r.nextInt(bad.size() - 2));
            int k = args.indexOf(p(args.getFirst().equals("sdpa") ? "v.npy" : "cross_x.npy"));
            if (k < 0) {
                k = args.indexOf("--weights") + 1;
            }
            args.set(k, b.toString());
            if (check(args, out, before, "broken input " + b.getFileName()) == 2) {
                Files.write(out, before);
                String err = run(args).err;
                assertTrue(err.contains(b.toString()), "the error does not name the broken file: " + err);
            }
        }
    }
}
