package dev.qkv.cli;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.blas.OpenBlas;
import dev.qkv.io.Npy;
import dev.qkv.io.NpyArray;
import dev.qkv.io.NpyBytes;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.abort;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

class MainTest {

    // q [2, 4, 5, 8], k [2, 2, 7, 8], v [2, 2, 7, 6]: grouped-query, Lq < Lk, Dv != Dk
    private static final long[] Q = {2, 4, 5, 8};
    private static final long[] K = {2, 2, 7, 8};
    private static final long[] V = {2, 2, 7, 6};
    private static final long[] OUT = {2, 4, 5, 6};
    private static final long SEED = 2024;
    /** Float32 products over at most 8 terms against a double reference: a few ulps of values of size ~1. */
    private static final double ATOL = 1e-5;
    private static final double RTOL = 1e-4;

    @TempDir
    Path dir;

    record Result(int code, String out, String err) {
        List<String> errLines() {
            // \R: every line break a reader may see (\r, form feed, NEL, U+2028, ...), not only \n
            return err.isEmpty() ? List.of() : List.of(err.split("\\R"));
        }
    }

    static Result run(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code;
        try (PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8);
             PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = Main.run(args, o, e);
        }
        return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    /**
     * A standard output that cannot be written (`qkv info > /dev/full`, a closed pipe) lost the report, or the
     * summary and median lines, and the command still exited 0: PrintStream swallows write errors. Now such a run
     * ends with one {@code error:} line on stderr and exit 2, as an unwritable output file does.
     */
    @ParameterizedTest
    @ValueSource(strings = {"info", "help"})
    void anUnwritableStandardOutputIsAnError(String command) {
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream full = new PrintStream(new java.io.OutputStream() {
            @Override
            public void write(int b) throws IOException {
                throw new IOException("No space left on device");
            }
        }, true, StandardCharsets.UTF_8);
        int code;
        try (PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = Main.run(new String[] {command}, full, e);
        }
        String text = err.toString(StandardCharsets.UTF_8);
        assertEquals(2, code, text);
        assertEquals(1, text.lines().count(), text);
        assertTrue(text.startsWith("error: ") && text.contains("standard output"), text);
    }

    /** A standard output whose every write fails, as {@code > /dev/full} or a closed pipe does. */
    static PrintStream unwritableStdout() {
        return new PrintStream(new java.io.OutputStream() {
            @Override
            public void write(int b) throws IOException {
                throw new IOException("No space left on device");
            }
        }, true, StandardCharsets.UTF_8);
    }

    /** {@code args} run with {@link #unwritableStdout()}: the exit code and stderr (stdout was lost). */
    static Result runWithUnwritableStdout(String... args) {
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code;
        try (PrintStream full = unwritableStdout(); PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = Main.run(args, full, e);
        }
        return new Result(code, "", err.toString(StandardCharsets.UTF_8));
    }

    /**
     * {@code qkv sdpa ... --out o.npy > /dev/full} exited 2 with "standard output cannot be written" but wrote
     * (or replaced) o.npy: a failed run must leave no output and an earlier file unchanged (README, failure
     * contract). Found by running the CLI from outside with stdout on /dev/full.
     */
    @Test
    void anUnwritableStandardOutputLeavesNoOutputFile() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--out", out.toString()));
        Result fresh = runWithUnwritableStdout(args.toArray(String[]::new));
        assertUserError(fresh, "standard output");
        assertFalse(Files.exists(out), "a failed run wrote " + out);
        byte[] earlier = "an earlier file".getBytes(StandardCharsets.UTF_8);
        Files.write(out, earlier);
        Result replacing = runWithUnwritableStdout(args.toArray(String[]::new));
        assertUserError(replacing, "standard output");
        assertArrayEquals(earlier, Files.readAllBytes(out), "a failed run replaced " + out);
        try (Stream<Path> left = Files.list(dir)) {
            assertEquals(List.of(), left.filter(p -> p.getFileName().toString().endsWith(".tmp")).toList());
        }
    }

    /**
     * The summary is printed before the rename (an unwritable stdout must cancel the write), so a rename that fails
     * after it (another process made the output path a folder meanwhile, removed the folder, ...) left the summary
     * on stdout and then an error line that did not say that summary stands for nothing. Here the summary's own
     * write makes the path a non-empty folder. The run must fail (exit 2, one error line that says the summary
     * above is void), write no file there and leave no temporary file.
     */
    @Test
    void aRenameThatFailsAfterTheSummarySaysTheSummaryIsVoid() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--out", out.toString()));
        ByteArrayOutputStream seen = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream racing = new PrintStream(new java.io.OutputStream() {
            @Override
            public void write(int b) throws IOException {
                if (!Files.exists(out)) {
                    Files.createDirectories(out.resolve("sub"));
                }
                seen.write(b);
            }
        }, true, StandardCharsets.UTF_8);
        int code;
        try (PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = Main.run(args.toArray(String[]::new), racing, e);
        }
        Result r = new Result(code, seen.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
        assertEquals(2, r.code(), r.toString());
        assertEquals(1, r.errLines().size(), r.toString());
        assertTrue(r.err().startsWith("error: " + out), r.toString());
        assertTrue(r.out().startsWith("sdpa backend="), r.toString());
        assertTrue(r.err().contains("the summary line printed above stands for no output"), r.toString());
        assertTrue(Files.isDirectory(out), "the folder made meanwhile is left as it is");
        try (Stream<Path> left = Files.list(dir)) {
            assertEquals(List.of(), left.filter(p -> p.getFileName().toString().endsWith(".tmp")).toList());
        }
    }

    /** Asserts a user error: exit 2, nothing on stdout, exactly one {@code error:} line containing {@code text}. */
    static void assertUserError(Result r, String text) {
        assertEquals(2, r.code(), r.toString());
        assertEquals("", r.out(), r.toString());
        assertEquals(1, r.errLines().size(), r.toString());
        assertTrue(r.err().startsWith("error: "), r.toString());
        assertTrue(r.err().contains(text), "expected '" + text + "' in " + r);
    }

    private Path randomNpy(String name, SplittableRandom random, long... shape) throws IOException {
        long n = Arrays.stream(shape).reduce(1, Math::multiplyExact);
        float[] x = new float[(int) n];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return NpyBytes.writeF4(dir, name, x, shape);
    }

    private List<String> inputs(SplittableRandom random) throws IOException {
        return List.of("--q", randomNpy("q.npy", random, Q).toString(), "--k", randomNpy("k.npy", random, K).toString(),
                "--v", randomNpy("v.npy", random, V).toString());
    }

    static Stream<Arguments> sdpaCases() {
        List<Arguments> cases = new ArrayList<>();
        for (String backend : List.of("native", "java", "reference")) {
            for (String mask : List.of("none", "bool [Lq, Lk]", "bool [B, 1, 1, Lk]", "float [B, 1, Lq, Lk]",
                    "float64 [B, Hq, Lq, Lk]", "bool [Lq, 1]", "float [B, 1, Lq, 1]", "bool [1]")) {
                for (boolean causal : List.of(false, true)) {
                    cases.add(Arguments.of(backend, mask, causal));
                }
            }
        }
        return cases.stream();
    }

    @ParameterizedTest(name = "{0} mask={1} causal={2}")
    @MethodSource("sdpaCases")
    void sdpaMatchesTheReferenceBackend(String backend, String mask, boolean causal) throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path maskPath = switch (mask) {
            case "none" -> null;
            case "bool [Lq, Lk]" -> boolMask(random, 5, 7);
            case "bool [B, 1, 1, Lk]" -> boolMask(random, 2, 1, 1, 7);
            case "float [B, 1, Lq, Lk]" -> floatMask(random, false, 2, 1, 5, 7);
            // one value per query row, for every key (torch and NumPy broadcast a last dimension of 1 too)
            case "bool [Lq, 1]" -> boolMask(random, 5, 1);
            case "float [B, 1, Lq, 1]" -> floatMask(random, false, 2, 1, 5, 1);
            case "bool [1]" -> NpyBytes.write(dir, "m.npy", NpyBytes.file("|b1", NpyBytes.tuple(1),
                    NpyBytes.b1(new boolean[] {true})));
            default -> floatMask(random, true, 2, 4, 5, 7);
        };
        if (maskPath != null) {
            args.addAll(List.of("--mask", maskPath.toString()));
        }
        if (causal) {
            args.add("--causal");
        }
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--backend", backend, "--scale", "0.3", "--out", out.toString()));

        Result r = run(args.toArray(String[]::new));
        assertEquals(0, r.code(), r.toString());
        assertEquals("", r.err());
        String line = r.out().strip();
        assertFalse(line.contains("\n"), "one summary line: " + r.out());
        assertTrue(line.matches("sdpa backend=" + backend + " q=\\[2, 4, 5, 8\\] k=\\[2, 2, 7, 8\\] v=\\[2, 2, 7, 6\\]"
                + " mask=\\S.* out=\\[2, 4, 5, 6\\] causal=" + causal + " ms=\\d+\\.\\d{3}"), line);

        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Npy.read(dir.resolve("q.npy"), arena).tensor();
            Tensor k = Npy.read(dir.resolve("k.npy"), arena).tensor();
            Tensor v = Npy.read(dir.resolve("v.npy"), arena).tensor();
            Mask m = null;
            if (maskPath != null) {
                NpyArray a = Npy.read(maskPath, arena);
                Tensor full = expandedMask(arena, a.tensor());
                m = a.isBool() ? Mask.allowed(full) : Mask.additive(full);
            }
            Tensor want = Tensor.allocate(arena, OUT);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, want, new SdpaOptions(causal, m, 0.3f));
            NpyArray got = Npy.read(out, arena);
            assertEquals(Npy.Dtype.FLOAT32, got.dtype());
            assertArrayEquals(OUT, got.tensor().shape());
            assertClose(want.toArray(), got.tensor().toArray(), "seed " + SEED + " " + backend + " mask " + mask
                    + " causal " + causal);
        }
    }

    /**
     * The mask file's values written out in full over the scores {@code [2, 4, 5, 7]}, element by element (each
     * dimension aligned from the right, a size-1 one repeated): the reference reads an independent tensor, not the
     * broadcast under test.
     */
    private static Tensor expandedMask(Arena arena, Tensor m) {
        long[] scores = {OUT[0], OUT[1], OUT[2], K[2]};
        Tensor full = Tensor.allocate(arena, scores);
        int r = m.rank();
        long[] at = new long[r];
        for (long b = 0; b < scores[0]; b++) {
            for (long h = 0; h < scores[1]; h++) {
                for (long i = 0; i < scores[2]; i++) {
                    for (long j = 0; j < scores[3]; j++) {
                        long[] x = {b, h, i, j};
                        for (int d = 0; d < r; d++) {
                            at[d] = m.size(d) == 1 ? 0 : x[4 - r + d];
                        }
                        full.set(m.get(at), b, h, i, j);
                    }
                }
            }
        }
        return full;
    }

    private Path boolMask(SplittableRandom random, long... shape) throws IOException {
        int n = (int) Arrays.stream(shape).reduce(1, Math::multiplyExact);
        boolean[] b = new boolean[n];
        for (int i = 0; i < n; i++) {
            b[i] = random.nextInt(4) != 0;
        }
        b[0] = false;
        b[1] = false; // with causal, some row sees no key at all and must come out as zeros
        return NpyBytes.write(dir, "m.npy", NpyBytes.file("|b1", NpyBytes.tuple(shape), NpyBytes.b1(b)));
    }

    private Path floatMask(SplittableRandom random, boolean f8, long... shape) throws IOException {
        int n = (int) Arrays.stream(shape).reduce(1, Math::multiplyExact);
        double[] x = new double[n];
        for (int i = 0; i < n; i++) {
            x[i] = random.nextInt(5) == 0 ? Double.NEGATIVE_INFINITY : random.nextDouble() * 4 - 2;
        }
        if (f8) {
            return NpyBytes.write(dir, "m.npy", NpyBytes.file("<f8", NpyBytes.tuple(shape), NpyBytes.f8(x)));
        }
        float[] f = new float[n];
        for (int i = 0; i < n; i++) {
            f[i] = (float) x[i];
        }
        return NpyBytes.writeF4(dir, "m.npy", f, shape);
    }

    private static void assertClose(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length, what);
        List<String> bad = new ArrayList<>();
        for (int i = 0; i < want.length; i++) {
            double tol = ATOL + RTOL * Math.abs(want[i]);
            if (!(Math.abs(want[i] - got[i]) <= tol) && bad.size() < 5) {
                bad.add("[" + i + "] want " + want[i] + " got " + got[i]);
            }
        }
        if (!bad.isEmpty()) {
            fail(what + " (atol " + ATOL + ", rtol " + RTOL + "): " + bad);
        }
    }

    @Test
    void boolInputIsRejectedWithoutOutput() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path q = NpyBytes.write(dir, "q.npy", NpyBytes.file("|b1", "(1, 1, 1, 8)", new byte[8]));
        args.set(2, q.toString());
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--out", out.toString()));
        assertUserError(run(args.toArray(String[]::new)), q + ": q [1, 1, 1, 8] has dtype '|b1'");
        assertFalse(Files.exists(out));
    }

    static Stream<Arguments> badFiles() {
        return Stream.of(
                Arguments.of("int32", NpyBytes.file("<i4", "(2, 4, 5, 8)", new byte[320 * 4]), "unsupported dtype '<i4'"),
                Arguments.of("big-endian", NpyBytes.file(">f4", "(2, 4, 5, 8)", new byte[320 * 4]), "big-endian"),
                Arguments.of("fortran", NpyBytes.file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 4, 5, 8)}",
                        new byte[320 * 4]), "fortran_order is True"),
                Arguments.of("truncated", NpyBytes.file("<f4", "(2, 4, 5, 8)", new byte[100]), "truncated data"),
                Arguments.of("lying shape", NpyBytes.file("<f4", "(100000, 100000, 100000, 8)", new byte[100]),
                        "truncated data"),
                Arguments.of("bad magic", "not numpy".getBytes(StandardCharsets.US_ASCII), "bad magic"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("badFiles")
    void malformedInputIsOneErrorLineAndNoOutput(String label, byte[] bytes) throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path k = NpyBytes.write(dir, "k.npy", bytes);
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--out", out.toString()));
        Result r = run(args.toArray(String[]::new));
        assertUserError(r, "error: " + k + ": ");
        assertFalse(Files.exists(out), label);
    }

    /** A path may hold characters that break or rewrite a line; the error stays one line and shows them escaped. */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"missing", "malformed"})
    void controlCharactersInAPathStayOnTheErrorLine(String kind) throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        // ASCII only: a JVM under the C locale cannot form a path of other characters
        String name = "k\r\u000b\f\u001b[2Kx.npy";
        Path k = dir.resolve(name);
        if (kind.equals("malformed")) {
            Files.write(k, NpyBytes.file("<i4", "(2, 4, 5, 8)", new byte[320 * 4]));
        }
        args.set(args.indexOf("--k") + 1, k.toString());
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--out", out.toString()));
        Result r = run(args.toArray(String[]::new));
        assertUserError(r, "k\\u000D\\u000B\\u000C\\u001B[2Kx.npy");
        assertFalse(Files.exists(out));
    }

    @Test
    void anErrorLineBreaksNowhereAndNeverSaysNull() {
        assertEquals("(no message)", Main.oneLine(null));
        assertEquals("a b\tc", Main.oneLine("a\nb\tc"));
        // the line breaks of Unicode beyond ASCII: NEL, line and paragraph separators
        assertEquals("x\\u0085y\\u2028z\\u2029", Main.oneLine("x\u0085y\u2028z\u2029"));
    }

    @Test
    void shapeMismatchIsAUserErrorFromAttention() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        Path q = randomNpy("q.npy", random, 1, 4, 5, 8);
        Path k = randomNpy("k.npy", random, 1, 3, 7, 8);
        Path v = randomNpy("v.npy", random, 1, 3, 7, 8);
        Path out = dir.resolve("o.npy");
        for (String backend : List.of("native", "java")) {
            assertUserError(run("sdpa", "--q", q.toString(), "--k", k.toString(), "--v", v.toString(), "--backend",
                    backend, "--out", out.toString()), "q [1, 4, 5, 8] = [B, Hq, Lq, Dk], k [1, 3, 7, 8] = [B, Hkv, Lk, Dk]: Hq=4 is not a multiple of Hkv=3");
            assertFalse(Files.exists(out));
        }
    }

    /**
     * A Hugging Face tokenizer's {@code attention_mask} is int64: {@code np.save('m.npy', enc['attention_mask']
     * .numpy()[:, None, None, :])} gives {@code '<i8'}, which sdpa refused ("unsupported dtype '<i8'"). Found by
     * saving one as a user would. An integer mask is a boolean mask (non-zero may attend, as the attention_mask
     * means): the output must equal the reference backend's with the bool mask of the same values.
     */
    @ParameterizedTest
    @ValueSource(strings = {"<i8", "<i4", "|u1", "|i1", "<u2"})
    void anIntegerMaskIsABooleanMask(String descr) throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        long[] shape = {2, 1, 1, 7};
        long[] values = new long[14];
        float[] allowed = new float[14];
        for (int i = 0; i < values.length; i++) {
            // 0 and 1 as attention_mask holds, and other non-zero values (256 has a zero low byte)
            values[i] = i % 4 == 0 ? 0 : i % 4 == 1 ? 1 : i % 4 == 2 ? 3 : 1 + (descr.endsWith("1") ? 0 : 256);
            allowed[i] = values[i] != 0 ? 1 : 0;
        }
        int size = Integer.parseInt(descr.substring(descr.length() - 1));
        Path maskPath = NpyBytes.write(dir, "m.npy", NpyBytes.file(descr, NpyBytes.tuple(shape),
                NpyBytes.ints(size, values)));
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--mask", maskPath.toString(), "--scale", "0.3", "--out", out.toString()));
        Result r = run(args.toArray(String[]::new));
        assertEquals(0, r.code(), r.toString());
        assertTrue(r.out().contains(" mask=bool[2, 1, 1, 7] "), r.out());
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Npy.read(dir.resolve("q.npy"), arena).tensor();
            Tensor k = Npy.read(dir.resolve("k.npy"), arena).tensor();
            Tensor v = Npy.read(dir.resolve("v.npy"), arena).tensor();
            Tensor m = Tensor.allocate(arena, shape);
            for (int i = 0; i < allowed.length; i++) {
                m.setAt(i, allowed[i]);
            }
            Tensor want = Tensor.allocate(arena, OUT);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, want, new SdpaOptions(false, Mask.allowed(m), 0.3f));
            assertClose(want.toArray(), Npy.read(out, arena).tensor().toArray(), descr + " mask");
        }
    }

    /** q, k and v stay floats: an integer q is refused naming the file, saying what is accepted, and no output. */
    @Test
    void anIntegerQueryIsRefused() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path q = NpyBytes.write(dir, "qi.npy", NpyBytes.file("<i8", NpyBytes.tuple(Q), new byte[320 * 8]));
        args.set(2, q.toString());
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--out", out.toString()));
        assertUserError(run(args.toArray(String[]::new)), q + ": unsupported dtype '<i8'");
        assertUserError(run(args.toArray(String[]::new)), "expected '<f4' (float32), '<f8' (float64)");
        assertFalse(Files.exists(out));
    }

    /**
     * A Hugging Face attention_mask saved as it is, {@code [B, Lk]}, aligns with the scores' {@code [Lq, Lk]} (NumPy's
     * broadcast) and is refused; the one error line now says how to save it ({@code [B, 1, 1, Lk]},
     * {@code m[:, None, None, :]}). A mask of another shape gets no such hint: nothing is guessed.
     */
    @Test
    void aBatchByKeysMaskIsRefusedWithHowToSaveIt() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--mask", boolMask(random, 2, 7).toString(), "--out", out.toString()));
        Result r = run(args.toArray(String[]::new));
        assertUserError(r, "mask [2, 7]: not broadcastable to [2, 4, 5, 7]");
        assertUserError(r, "[B, 1, 1, Lk]");
        assertUserError(r, "m[:, None, None, :]");
        assertFalse(Files.exists(out));
        args.set(args.indexOf("--mask") + 1, boolMask(random, 3, 7).toString());
        Result other = run(args.toArray(String[]::new));
        assertUserError(other, "mask [3, 7]");
        assertFalse(other.err().contains("None"), other.toString());
        // [B, X] with X not Lk: not a key-padding mask of these keys, so no hint either (mutation testing, round
        // 24: without the check of its last size, SdpaCommand.batchByKeysHint gave it one and no test saw it)
        args.set(args.indexOf("--mask") + 1, boolMask(random, 2, 9).toString());
        Result wrongKeys = run(args.toArray(String[]::new));
        assertUserError(wrongKeys, "mask [2, 9]: not broadcastable to [2, 4, 5, 7]");
        assertFalse(wrongKeys.err().contains("None"), wrongKeys.toString());
        assertFalse(Files.exists(out));
    }

    /**
     * A {@code [B, Lk]} mask that broadcasts (here {@code B = Lq}, so it reads as {@code [Lq, Lk]}) gets no
     * key-padding hint when the call is refused for something else (Hq = 3 not a multiple of Hkv = 2): the error
     * line is that refusal alone. Mutation testing (round 24): {@code SdpaCommand.batchByKeysHint} without its
     * check that the refusal is the mask's appended the hint to this error, and no test saw it.
     */
    @Test
    void aBatchByKeysShapedMaskGetsNoHintWhenTheRefusalIsAboutSomethingElse() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        Path out = dir.resolve("o.npy");
        Result r = run("sdpa", "--q", randomNpy("q.npy", random, 2, 3, 2, 8).toString(),
                "--k", randomNpy("k.npy", random, 2, 2, 7, 8).toString(),
                "--v", randomNpy("v.npy", random, 2, 2, 7, 6).toString(),
                "--mask", boolMask(random, 2, 7).toString(), "--out", out.toString());
        assertUserError(r, "Hq=3 is not a multiple of Hkv=2");
        assertFalse(r.err().contains("None"), r.toString());
        assertFalse(r.err().contains("key-padding"), r.toString());
        assertFalse(Files.exists(out));
    }

    /**
     * nn.MultiheadAttention's 3-D attn_mask saved as it is, {@code [B·Hq, Lq, Lk]}, is refused (a rank-3 mask is
     * {@code [Hq, Lq, Lk]}); the error line told a command-line user to use {@code Tensor.reshape}, a Java method
     * they have no way to call. It now says how to save the file, with NumPy, as {@code [B, Hq, Lq, Lk]}; and that
     * file is accepted. Found in review.
     */
    @Test
    void aTorchStyleMaskIsRefusedWithHowToSaveIt() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--mask", boolMask(random, 8, 5, 7).toString(), "--out", out.toString()));
        Result r = run(args.toArray(String[]::new));
        assertUserError(r, "mask [8, 5, 7]: not broadcastable to [2, 4, 5, 7]");
        assertUserError(r, "np.save(path, m.reshape(2, 4, 5, 7))");
        assertFalse(r.err().contains("Tensor.reshape"), r.toString());
        assertFalse(Files.exists(out));
        // rank-3 masks that are not [B·Hq, Lq, Lk] ([6, 5, 7]: 6 is not B·Hq; [8, 5, 9]: 9 is neither Lk nor 1)
        // get no reshape hint, and the library's message whole (mutation testing, round 24: SdpaCommand.refusal
        // without its check that the message ends with the Java hint cut the last characters of any rank-3 mask's
        // refusal and appended a reshape no file can have, and no test saw it)
        for (long[] shape : new long[][] {{6, 5, 7}, {8, 5, 9}}) {
            args.set(args.indexOf("--mask") + 1, boolMask(random, shape).toString());
            Result other = run(args.toArray(String[]::new));
            assertUserError(other, "mask " + Arrays.toString(shape) + ": not broadcastable to [2, 4, 5, 7]");
            assertFalse(other.err().contains("reshape"), other.toString());
            assertTrue(other.err().strip().endsWith("any size may be 1)"), other.toString());
            assertFalse(Files.exists(out));
        }
        args.set(args.indexOf("--mask") + 1, boolMask(random, 2, 4, 5, 7).toString());
        assertEquals(0, run(args.toArray(String[]::new)).code());
        // a torch mask with a size-1 dimension keeps it in the NumPy reshape, which then saves a file that is
        // accepted (mutation testing, round 24: naming Lk for the mask's last size, [8, 5, 1] was told to become
        // [2, 4, 5, 7], and no test saw it)
        Files.delete(out);
        for (long[] shape : new long[][] {{8, 5, 1}, {8, 1, 7}}) {
            args.set(args.indexOf("--mask") + 1, boolMask(random, shape).toString());
            Result perRow = run(args.toArray(String[]::new));
            assertUserError(perRow, "np.save(path, m.reshape(2, 4, " + shape[1] + ", " + shape[2] + "))");
            assertFalse(Files.exists(out));
            args.set(args.indexOf("--mask") + 1, boolMask(random, 2, 4, shape[1], shape[2]).toString());
            assertEquals(0, run(args.toArray(String[]::new)).code());
            Files.delete(out);
        }
    }

    /**
     * A 0-d mask ({@code np.save('m.npy', np.float32(-1.5))}, {@code np.bool_(True)}) broadcasts to every score in
     * PyTorch; sdpa refused it ("rank 0 is not broadcastable"). Found by saving one. Properties, on every backend: a
     * constant added to every score changes no softmax, so a float one gives the unmasked output; bool true allows
     * every key (the unmasked output); bool false allows none, and a row that may attend no key is zeros.
     */
    @ParameterizedTest
    @CsvSource({"native,float", "native,true", "native,false", "java,float", "java,true", "java,false",
            "reference,float", "reference,true", "reference,false"})
    void aRankZeroMaskBroadcastsToEveryScore(String backend, String value) throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path maskPath = value.equals("float") ? NpyBytes.write(dir, "m.npy", NpyBytes.file("<f4", "()",
                NpyBytes.f4(-1.5f))) : NpyBytes.write(dir, "m.npy", NpyBytes.file("|b1", "()",
                NpyBytes.b1(Boolean.parseBoolean(value))));
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--mask", maskPath.toString(), "--backend", backend, "--scale", "0.3", "--out",
                out.toString()));
        Result r = run(args.toArray(String[]::new));
        assertEquals(0, r.code(), r.toString());
        assertTrue(r.out().contains(" mask=" + (value.equals("float") ? "float" : "bool") + "[] "), r.out());
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Npy.read(dir.resolve("q.npy"), arena).tensor();
            Tensor k = Npy.read(dir.resolve("k.npy"), arena).tensor();
            Tensor v = Npy.read(dir.resolve("v.npy"), arena).tensor();
            Tensor want = Tensor.allocate(arena, OUT);
            if (!value.equals("false")) {
                Attention.create(Backend.REFERENCE).sdpa(q, k, v, want, new SdpaOptions(false, null, 0.3f));
            }
            assertClose(want.toArray(), Npy.read(out, arena).tensor().toArray(), backend + " 0-d mask " + value);
        }
    }

    @Test
    void maskThatDoesNotBroadcastIsAUserError() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path out = dir.resolve("o.npy");
        args.addAll(List.of("--mask", boolMask(random, 3, 7).toString(), "--out", out.toString()));
        assertUserError(run(args.toArray(String[]::new)), "mask [3, 7]");
        assertFalse(Files.exists(out));
    }

    @Test
    void negativeScaleInBothFlagForms() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> base = new ArrayList<>(List.of("sdpa"));
        base.addAll(inputs(random));
        List<String> spaced = new ArrayList<>(base);
        spaced.addAll(List.of("--scale", "-0.5", "--out", dir.resolve("a.npy").toString()));
        List<String> joined = new ArrayList<>(base);
        joined.addAll(List.of("--scale=-0.5", "--out=" + dir.resolve("b.npy")));
        assertEquals(0, run(spaced.toArray(String[]::new)).code());
        assertEquals(0, run(joined.toArray(String[]::new)).code());
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Npy.read(dir.resolve("q.npy"), arena).tensor();
            Tensor k = Npy.read(dir.resolve("k.npy"), arena).tensor();
            Tensor v = Npy.read(dir.resolve("v.npy"), arena).tensor();
            Tensor want = Tensor.allocate(arena, OUT);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, want, SdpaOptions.DEFAULT.withScale(-0.5f));
            assertClose(want.toArray(), Npy.read(dir.resolve("a.npy"), arena).tensor().toArray(), "scale -0.5");
            assertArrayEquals(Npy.read(dir.resolve("a.npy"), arena).tensor().toArray(),
                    Npy.read(dir.resolve("b.npy"), arena).tensor().toArray());
        }
    }

    @Test
    void benchThreadsBoundTheAttentionWorkersAndAutoSaysWhatRan() {
        for (String backend : new String[] {"native", "java", "auto"}) {
            Result r = run("bench", "--shape", "1,2,70,8", "--backend", backend, "--threads", "1", "--iters", "1");
            assertEquals(0, r.code(), r.toString());
            assertTrue(r.out().contains("threads=1 "), r.out());
            assertTrue(r.out().contains("plan: kernel="), r.out());
            assertTrue(r.out().contains("workers=1"), r.out());
            // every figure beside the OpenBLAS core (the library the tests load, independently)
            assertTrue(r.out().contains(" openblas.core=" + OpenBlas.get().library().coreName() + "\n"), r.out());
            assertTrue(r.out().strip().lines().reduce((a, b) -> b).orElseThrow().matches(
                    "median_ms=[0-9.]+ gflops=[0-9.]+"), r.out());
        }
    }

    @Test
    void headDimensionMismatchNamesTheRealShapes() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        Path q = randomNpy("q.npy", random, 2, 4, 5, 8);
        Path k = randomNpy("k.npy", random, 2, 2, 7, 9);
        Path v = randomNpy("v.npy", random, 2, 2, 7, 6);
        assertUserError(run("sdpa", "--q", q.toString(), "--k", k.toString(), "--v", v.toString(), "--out",
                dir.resolve("o.npy").toString()), "k [2, 2, 7, 9]: head dimension Dk=9 differs from q [2, 4, 5, 8]");
    }

    @Test
    void wrongRankNamesTheFile() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path q = randomNpy("q3.npy", random, 4, 5, 8);
        args.set(2, q.toString());
        args.addAll(List.of("--out", dir.resolve("o.npy").toString()));
        assertUserError(run(args.toArray(String[]::new)), q + ": q [4, 5, 8]: expected rank 4");
    }

    @Test
    void missingInputFile() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path absent = dir.resolve("absent.npy");
        args.set(6, absent.toString());
        args.addAll(List.of("--out", dir.resolve("o.npy").toString()));
        assertUserError(run(args.toArray(String[]::new)), absent + ": no such file");
        assertFalse(Files.exists(dir.resolve("o.npy")));
    }

    @Test
    void outputIntoMissingFolder() throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        Path out = dir.resolve("nope").resolve("o.npy");
        args.addAll(List.of("--out", out.toString()));
        assertUserError(run(args.toArray(String[]::new)), "does not exist");
        assertFalse(Files.exists(out.getParent()));
        // a "folder" that is a file (the q input): said as such, and the file is left as it was
        Path q = Path.of(args.get(2));
        byte[] before = Files.readAllBytes(q);
        args.set(args.size() - 1, q.resolve("o.npy").toString());
        assertUserError(run(args.toArray(String[]::new)), "folder " + q.toAbsolutePath() + " is a file, not a folder");
        assertArrayEquals(before, Files.readAllBytes(q));
    }

    /**
     * {@code --out} naming one of the inputs replaced that input with the result, exit 0 (found probing the CLI from
     * outside: {@code sdpa --q q.npy --k k.npy --v v.npy --out q.npy} destroyed q.npy). It is a user error before
     * any work, whatever spelling reaches the file ({@code ./k.npy}, a symbolic link), and the input is unchanged.
     */
    @Test
    void anOutputThatIsAnInputIsRefusedAndTheInputKept() throws IOException {
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(new SplittableRandom(SEED)));
        Path mask = NpyBytes.writeF4(dir, "mask.npy", new float[(int) (Q[2] * K[2])], Q[2], K[2]);
        args.addAll(List.of("--mask", mask.toString()));
        Path q = Path.of(args.get(2));
        Path k = Path.of(args.get(4));
        Path v = Path.of(args.get(6));
        Path link = dir.resolve("link.npy");
        Files.createSymbolicLink(link, v);
        Map<String, Path> cases = Map.of("--q", q, "--k", dir.resolve(".").resolve(k.getFileName()), "--v", link,
                "--mask", mask);
        for (Map.Entry<String, Path> c : cases.entrySet()) {
            Path same = c.getValue();
            byte[] before = Files.readAllBytes(same);
            List<String> line = new ArrayList<>(args);
            line.addAll(List.of("--out", same.toString()));
            assertUserError(run(line.toArray(String[]::new)), "--out '" + same + "' is the input " + c.getKey());
            assertArrayEquals(before, Files.readAllBytes(same), c.getKey());
        }
        assertTrue(Files.isSymbolicLink(link));
    }

    /**
     * {@code --out results/} names a folder, as it does for every POSIX tool (open(2) fails with EISDIR or ENOENT):
     * Path.of drops the slash, and a missing folder {@code results} used to become a regular file of that name,
     * exit 0. The slash is now a user error, and nothing is written.
     */
    @Test
    void anOutputEndingInASlashIsAFolderNotAFile() throws IOException {
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(new SplittableRandom(SEED)));
        Path folder = dir.resolve("results");
        args.addAll(List.of("--out", folder + "/"));
        assertUserError(run(args.toArray(String[]::new)), "--out '" + folder + "/' ends with '/'");
        assertFalse(Files.exists(folder), "a file named after the folder");
    }

    /**
     * {@code --out} with a file name longer than the file system takes (300 bytes; Linux's NAME_MAX is 255) was found
     * only at the rename, after the inputs were read and the attention computed; since the summary is printed
     * before the rename (so that a lost stdout writes no file), the run printed its summary and then failed. The
     * name is now refused with the other output checks, before any input is read (the inputs here do not exist).
     */
    @ParameterizedTest
    @ValueSource(strings = {"sdpa", "mha"})
    void anOutputNameTooLongIsRefusedBeforeAnyWork(String command) {
        Path out = dir.resolve("o".repeat(300) + ".npy");
        String missing = dir.resolve("missing.npy").toString();
        String[] args = command.equals("sdpa")
                ? new String[] {"sdpa", "--q", missing, "--k", missing, "--v", missing, "--out", out.toString()}
                : new String[] {"mha", "--x", missing, "--weights", missing, "--heads", "1", "--out", out.toString()};
        Result r = run(args);
        assertUserError(r, out.toString());
        assertFalse(r.err().contains("missing.npy"), r.toString());
    }

    /**
     * {@code --scale} is matched against a pattern whose digits before and after an optional point could split a
     * run of digits in every way: a long non-number took time quadratic in its length (100 000 digits and an
     * {@code x}, well under Linux's 128 KiB per argument, ran about 80 s before being refused). It is refused at
     * once, and a long valid number is still taken.
     */
    @Test
    void aLongScaleIsJudgedInLinearTime() {
        String digits = "1".repeat(100_000);
        assertTimeoutPreemptively(java.time.Duration.ofSeconds(10), () -> {
            assertUserError(run("sdpa", "--q", "a", "--k", "b", "--v", "c", "--out", "o", "--scale", digits + "x"),
                    "--scale expects a number");
            // a valid number of as many digits passes the parse (and then fails on the missing input file)
            Result r = run("sdpa", "--q", dir.resolve("missing.npy").toString(), "--k", "b", "--v", "c", "--out",
                    "o", "--scale", "0." + digits);
            assertFalse(r.err().contains("--scale"), r.toString());
        });
    }

    @Test
    void anOutputTooLargeForMemoryIsAUserErrorNamingIt() throws IOException {
        // small inputs, an output of 10^12 floats: 1000 query heads sharing one kv head of 10^6 values (refused
        // as larger than the machine, or where the JVM cannot say its size, as memory it cannot allocate)
        SplittableRandom random = new SplittableRandom(SEED);
        Path q = randomNpy("q.npy", random, 1, 1000, 1000, 1);
        Path k = randomNpy("k.npy", random, 1, 1, 1, 1);
        Path v = randomNpy("v.npy", random, 1, 1, 1, 1_000_000);
        Path out = dir.resolve("o.npy");
        assertUserError(run("sdpa", "--q", q.toString(), "--k", k.toString(), "--v", v.toString(), "--backend", "java",
                "--out", out.toString()), "out [B, Hq, Lq, Dv] = [1, 1000, 1000, 1000000]");
        assertFalse(Files.exists(out));
    }

    @Test
    void anOutputPathThatIsNotARegularFileIsRefusedBeforeAnyWork() throws Exception {
        Path fifo = dir.resolve("pipe.npy");
        Process p;
        try {
            p = new ProcessBuilder("mkfifo", fifo.toString()).start();
        } catch (IOException e) {
            abort("no mkfifo here: " + e.getMessage());
            return;
        }
        assumeTrue(p.waitFor() == 0 && Files.exists(fifo), "mkfifo failed");
        SplittableRandom random = new SplittableRandom(SEED);
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(random));
        args.addAll(List.of("--out", fifo.toString()));
        assertUserError(run(args.toArray(String[]::new)), "not a regular file");
        assertTrue(Files.exists(fifo) && !Files.isRegularFile(fifo), "the pipe was replaced");
    }

    static Stream<Arguments> badCommandLines() {
        return Stream.of(
                Arguments.of(List.of("sdpa", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy"), "missing required flag --out"),
                Arguments.of(List.of("sdpa", "--k", "k.npy", "--v", "v.npy", "--out", "o.npy"), "missing required flag --q"),
                Arguments.of(List.of("sdpa", "--q", "q.npy", "--kk", "k.npy"), "unknown flag --kk"),
                Arguments.of(List.of("sdpa", "--q"), "--q needs a value"),
                Arguments.of(List.of("sdpa", "--q", "--k", "k.npy"), "--q needs a value"),
                Arguments.of(List.of("sdpa", "--q", "a", "--q", "b"), "--q given twice"),
                Arguments.of(List.of("sdpa", "q.npy"), "unexpected argument 'q.npy'"),
                Arguments.of(List.of("sdpa", "--causal=yes"), "--causal takes no value"),
                Arguments.of(List.of("sdpa", "--q", "a", "--k", "b", "--v", "c", "--out", "o", "--backend", "gpu"),
                        "unknown backend 'gpu'"),
                Arguments.of(List.of("sdpa", "--q", "a", "--k", "b", "--v", "c", "--out", "o", "--scale", "x"),
                        "--scale expects a number"),
                Arguments.of(List.of("sdpa", "--q", "a", "--k", "b", "--v", "c", "--out", "o", "--scale", "1e39"),
                        "--scale must be finite"),
                // a decimal that float32 rounds to 0 used to run with scale 0 (uniform weights), silently
                Arguments.of(List.of("sdpa", "--q", "a", "--k", "b", "--v", "c", "--out", "o", "--scale", "1e-50"),
                        "--scale 1e-50 is too small for float32"),
                // Java's float syntax is no decimal number: 1f, 2d and 0x1p3 used to be taken as 1, 2 and 8
                Arguments.of(List.of("sdpa", "--q", "a", "--k", "b", "--v", "c", "--out", "o", "--scale", "1f"),
                        "--scale expects a number, got '1f'"),
                Arguments.of(List.of("sdpa", "--q", "a", "--k", "b", "--v", "c", "--out", "o", "--scale", "0x1p3"),
                        "--scale expects a number, got '0x1p3'"),
                Arguments.of(List.of("frobnicate"), "unknown command 'frobnicate'"),
                Arguments.of(List.of("--verbose"), "unknown flag --verbose"),
                Arguments.of(List.of("info", "--x"), "unknown flag --x"),
                Arguments.of(List.of("bench"), "missing required flag --shape"),
                Arguments.of(List.of("bench", "--shape", "1,2,3"), "--shape expects B,H,L,D"),
                Arguments.of(List.of("bench", "--shape", "1,2,x,4"), "--shape L expects an integer"),
                Arguments.of(List.of("bench", "--shape", "1,0,3,4"), "--shape H must be in 1.."),
                Arguments.of(List.of("bench", "--shape", "1,4,3,4", "--kv-heads", "3"), "--kv-heads 3 does not divide H=4"),
                Arguments.of(List.of("bench", "--shape", "1,4,3,4", "--iters", "0"), "--iters must be in 1.."),
                Arguments.of(List.of("bench", "--shape", "1,4,3,4", "--iters", "99999999999"),
                        "--iters must be in 1..1000000, got 99999999999"),
                Arguments.of(List.of("bench", "--shape", "1,4,3,99999999999"), "--shape D must be in 1.."),
                // malformed --shape values: an empty item, a trailing comma, a space inside a number, a sign
                // other than a leading '+', a decimal point, another separator
                Arguments.of(List.of("bench", "--shape", "1,,3,4"), "--shape H expects an integer, got ''"),
                Arguments.of(List.of("bench", "--shape", "1,2, ,4"), "--shape L expects an integer, got ' '"),
                Arguments.of(List.of("bench", "--shape", "1,2,3,4,"), "--shape expects B,H,L,D (four positive"
                        + " integers), got '1,2,3,4,'"),
                Arguments.of(List.of("bench", "--shape", "1 2,3,4,5"), "--shape B expects an integer, got '1 2'"),
                Arguments.of(List.of("bench", "--shape", "1,2,3,-4"), "--shape D must be in 1..2147483647, got -4"),
                Arguments.of(List.of("bench", "--shape", "1,2,+-3,4"), "--shape L expects an integer, got '+-3'"),
                Arguments.of(List.of("bench", "--shape", "1,2,3,4.0"), "--shape D expects an integer, got '4.0'"),
                Arguments.of(List.of("bench", "--shape", "1;2;3;4"), "--shape expects B,H,L,D"),
                Arguments.of(List.of("bench", "--shape", "1,2,3,2147483648"),
                        "--shape D must be in 1..2147483647, got 2147483648"),
                Arguments.of(List.of("bench", "--shape", "1,4,3,4", "--backend", "fast"), "unknown backend 'fast'"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("badCommandLines")
    void badCommandLinesAreOneErrorLineAndExitTwo(List<String> args, String text) {
        assertUserError(run(args.toArray(String[]::new)), text);
    }

    @Test
    void helpGoesToStdoutWithExitZero() {
        for (String h : List.of("help", "--help", "-h")) {
            Result r = run(h);
            assertEquals(0, r.code(), h);
            assertEquals("", r.err());
            for (String cmd : List.of("sdpa --q Q.npy", "info", "bench --shape B,H,L,D")) {
                assertTrue(r.out().contains("qkv " + cmd), cmd + " in " + r.out());
            }
        }
        Result one = run("sdpa", "--help");
        assertEquals(0, one.code());
        assertTrue(one.out().startsWith("usage: qkv sdpa --q Q.npy --k K.npy --v V.npy [--mask M.npy] [--causal]"
                + " [--scale S] [--backend native|java] --out O.npy"), one.out());
    }

    /**
     * {@code qkv help sdpa} prints what {@code qkv sdpa --help} does; an unknown name or more words after help is
     * a mistake (it used to be ignored, printing the general usage with exit 0).
     */
    @Test
    void helpWithACommandNamePrintsThatCommandsUsage() {
        for (String cmd : List.of("sdpa", "mha", "bench", "info")) {
            Result named = run("help", cmd);
            assertEquals(0, named.code(), named.toString());
            assertEquals("", named.err());
            assertEquals(run(cmd, "--help").out(), named.out());
            assertTrue(named.out().startsWith("usage: qkv " + cmd), named.out());
        }
        assertUserError(run("help", "extra"), "help takes at most one command name");
        assertUserError(run("--help", "sdpa", "mha"), "got 'sdpa mha'");
    }

    /**
     * {@code -h} that a value flag takes as its value is that value, not a help request: the command runs and
     * fails on it (exit 2, one line, no output file) instead of printing usage and exiting 0 with nothing done.
     * Where a flag stands, help wins over the rest of the line.
     */
    @Test
    void dashHAsAFlagsValueIsNotAHelpRequest() throws IOException {
        List<String> in = inputs(new SplittableRandom(SEED));
        Path out = dir.resolve("o.npy");
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(in);
        args.addAll(List.of("--mask", "-h", "--out", out.toString()));
        assertUserError(run(args.toArray(String[]::new)), "-h");
        assertFalse(Files.exists(out), "no output for a refused call");
        assertUserError(run("bench", "--shape", "1,1,8,8", "--iters", "-h"), "--iters expects an integer, got '-h'");

        for (List<String> help : List.of(List.of("sdpa", "--causal", "-h"), List.of("sdpa", "--bogus", "--help"),
                List.of("bench", "--iters", "3", "-h"), List.of("mha", "--out=-x", "--help"))) {
            Result r = run(help.toArray(String[]::new));
            assertEquals(0, r.code(), help + ": " + r);
            assertTrue(r.out().startsWith("usage: qkv " + help.get(0)), help + ": " + r);
            assertEquals("", r.err(), help.toString());
        }
    }

    /**
     * A folder that exists but where no file can be created (Linux's /proc/self) fails at the write: the line says
     * so in words, where it used to end in the bare class name "NoSuchFileException".
     */
    @Test
    void anOutputFolderThatTakesNoFilesIsNamed() throws IOException {
        Path proc = Path.of("/proc/self");
        assumeTrue(Files.isDirectory(proc), "no /proc here");
        List<String> args = new ArrayList<>(List.of("sdpa"));
        args.addAll(inputs(new SplittableRandom(SEED)));
        args.addAll(List.of("--out", proc.resolve("o.npy").toString()));
        assertUserError(run(args.toArray(String[]::new)), "cannot create files in folder /proc/self");
    }

    /**
     * Shapes whose tensors need more than the machine's physical memory are refused before anything is
     * allocated: Linux would let the allocation succeed and kill the JVM while filling it. For bench, 1.5× the
     * memory over q, k, v and out; for sdpa, two files under a megabyte whose output would need 1.5× it.
     */
    @Test
    void tensorsLargerThanTheMachineAreRefusedBeforeAllocation() throws IOException {
        long physical = dev.qkv.io.PhysicalMemory.bytes();
        assumeTrue(physical < 1L << 44, "physical memory unknown or over 16 TiB");
        long d = 1 << 20;
        long l = (long) Math.ceil(1.5 * physical / (4.0 * Float.BYTES * d));
        assertUserError(run("bench", "--shape", "1,1," + l + "," + d, "--iters", "1"), "this machine has");

        long lq = 1 << 17;
        long dv = (long) Math.ceil(1.5 * physical / ((double) Float.BYTES * lq));
        assumeTrue(dv < 1 << 20, "too much memory for small files to ask for more");
        SplittableRandom random = new SplittableRandom(SEED);
        Path out = dir.resolve("big.npy");
        Result r = run("sdpa", "--q", randomNpy("q1.npy", random, 1, 1, lq, 1).toString(),
                "--k", randomNpy("k1.npy", random, 1, 1, 1, 1).toString(),
                "--v", randomNpy("v1.npy", random, 1, 1, 1, dv).toString(), "--out", out.toString());
        assertUserError(r, "out [B, Hq, Lq, Dv] = [1, 1, " + lq + ", " + dv + "] needs");
        assertFalse(Files.exists(out));
    }

    /**
     * A -Dqkv.* setting the library refuses when Attention (or its pool, or OpenBLAS) loads is the user's mistake:
     * one line with the setting and exit 2, not "internal failure: ExceptionInInitializerError" and exit 1. A value
     * that is no integer at all ({@code abc}, {@code 1e3}, beyond a long) is refused as well, never taken as unset
     * (Integer.getInteger did, and the defaults ran). A child JVM, since the classes load once per process.
     */
    @ParameterizedTest
    @CsvSource(delimiter = '|', value = {
        "qkv.keyBlock=100      | -Dqkv.keyBlock=100: must be a positive multiple of 64",
        "qkv.keyBlock=abc      | -Dqkv.keyBlock=abc: must be a positive multiple of 64",
        "qkv.keyBlock=1e3      | -Dqkv.keyBlock=1e3: must be",
        "qkv.keyBlock=2147483648 | -Dqkv.keyBlock=2147483648: must be",
        "qkv.nativeBlockRows=abc | -Dqkv.nativeBlockRows=abc: must be",
        "qkv.nativeKeyBlock=-5x | -Dqkv.nativeKeyBlock=-5x: must be",
        "qkv.spanBlocks=0      | -Dqkv.spanBlocks=0: must be an integer from 1 to",
        "qkv.nativeSmallRows=x | -Dqkv.nativeSmallRows=x: must be an integer",
        "qkv.nativeSmallMnk=0  | -Dqkv.nativeSmallMnk=0: must be an integer",
        "qkv.groupKeyBlockBytes=1k | -Dqkv.groupKeyBlockBytes=1k: must be an integer",
        "qkv.nativeSmallCalls=yes | -Dqkv.nativeSmallCalls=yes: must be true or false",
        "qkv.pool.spinMicros=-1 | -Dqkv.pool.spinMicros=-1: must be an integer from 0 to",
        "qkv.pool.idleMillis=0 | -Dqkv.pool.idleMillis=0: must be an integer from 1 to",
        "qkv.blas.threads=abc  | -Dqkv.blas.threads=abc: expected a thread count in 1..1024",
        "qkv.blas.critical=off | -Dqkv.blas.critical=off: must be true or false",
        "qkv.vector=off        | -Dqkv.vector=off: must be true or false",
        "qkv.vector=0          | -Dqkv.vector=0: must be true or false",
    })
    void aRefusedSettingIsAUserErrorNamingIt(String setting, String message) throws IOException,
            InterruptedException {
        assertUserError(child(setting, "bench", "--shape", "1,1,8,8", "--iters", "1", "--backend", "native"), message);
    }

    /**
     * {@code qkv} in a child JVM with {@code -D<setting>} (the library's classes read their settings once per
     * process), its JDK's WARNING lines left out of stderr.
     */
    private static Result child(String setting, String... args) throws IOException, InterruptedException {
        return child(List.of(setting), Map.of(), args);
    }

    /**
     * {@code qkv} in a child JVM with {@code -D<setting>} for each of {@code settings} and the environment variables
     * {@code env} ({@code QKV_BLAS_LIBRARY} is left out unless {@code env} sets it: the test's own must not choose
     * the child's library), its JDK's WARNING lines left out of stderr.
     */
    private static Result child(List<String> settings, Map<String, String> env, String... args)
            throws IOException, InterruptedException {
        String javaCmd = ProcessHandle.current().info().command().orElse("java");
        List<String> cmd = new ArrayList<>(List.of(javaCmd, "--enable-native-access=ALL-UNNAMED", "--add-modules",
                "jdk.incubator.vector"));
        settings.forEach(s -> cmd.add("-D" + s));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), Main.class.getName()));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.environment().remove(OpenBlas.LIBRARY_ENV);
        pb.environment().putAll(env);
        Process p = pb.start();
        assertTrue(p.waitFor(120, java.util.concurrent.TimeUnit.SECONDS), "child JVM timed out");
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8)
                .lines().filter(l -> !l.startsWith("WARNING")).collect(java.util.stream.Collectors.joining("\n"));
        return new Result(p.exitValue(), out, err);
    }

    /**
     * {@code auto} (bench's default backend) with a refused {@code -Dqkv.blas.*} setting: one error line and exit 2,
     * as for {@code native}. Attention.create(AUTO) took the refusal for a missing OpenBLAS and ran the Java kernels
     * without a word (exit 0), so the setting was neither applied nor refused; {@code bench --backend java} printed
     * {@code openblas.core=unavailable} the same way.
     */
    @ParameterizedTest
    @CsvSource(delimiter = '|', value = {
        "qkv.blas.threads=abc  | auto | -Dqkv.blas.threads=abc: expected a thread count in 1..1024",
        "qkv.blas.critical=off | auto | -Dqkv.blas.critical=off: must be true or false",
        "qkv.blas.threads=0    | java | -Dqkv.blas.threads=0: expected a thread count in 1..1024",
    })
    void aRefusedBlasSettingIsRefusedUnderAutoToo(String setting, String backend, String message)
            throws IOException, InterruptedException {
        Result r = child(setting, "bench", "--shape", "1,1,8,8", "--iters", "1", "--backend", backend);
        assertUserError(r, message);
        // the setting names itself: "OpenBLAS is unavailable" before it misled, the library may load fine
        assertTrue(r.err().startsWith("error: -D"), r.toString());
    }

    /**
     * A {@code -Dqkv.cache.dir} the bundled library cannot be extracted to (here a file) is the user's setting at
     * fault: one error line naming it, exit 2, under {@code auto} too. It exited 1 as a missing library, and
     * {@code auto} silently ran the Java kernels, so the setting was neither used nor refused.
     */
    @ParameterizedTest
    @ValueSource(strings = {"native", "auto"})
    void aCacheFolderThatCannotHoldTheLibraryIsAUserError(String backend) throws IOException, InterruptedException {
        Path file = Files.writeString(dir.resolve("cache-is-a-file"), "x");
        Result r = child(List.of(OpenBlas.CACHE_PROPERTY + "=" + file), Map.of(), "bench", "--shape", "1,1,8,8",
                "--iters", "1", "--backend", backend);
        assertUserError(r, "could not be extracted to -D" + OpenBlas.CACHE_PROPERTY + "=" + file);
    }

    /**
     * {@code info} with a refused setting: one error line and exit 2, and no report on stdout. It printed the JDK,
     * CPU and OpenBLAS lines before the engine refused {@code -Dqkv.keyBlock}, and took a refused
     * {@code -Dqkv.blas.threads} for a missing OpenBLAS ("native no", exit 0).
     */
    @ParameterizedTest
    @CsvSource(delimiter = '|', value = {
        "qkv.keyBlock=100      | -Dqkv.keyBlock=100: must be a positive multiple of 64",
        "qkv.blas.threads=abc  | -Dqkv.blas.threads=abc: expected a thread count in 1..1024",
    })
    void infoWithARefusedSettingPrintsNoReport(String setting, String message) throws IOException,
            InterruptedException {
        assertUserError(child(setting, "info"), message);
    }

    /**
     * The demo (what {@code make run} runs) treats a refused {@code -Dqkv.blas.threads} as the user's mistake too,
     * as README says of the CLI: it took it for a missing OpenBLAS, printed "native backend skipped" and went on
     * to exit 0 with the Java backend alone, so a typo in the setting silently dropped half the demo.
     */
    @Test
    void theDemoRefusesABadBlasThreadsSetting() throws IOException, InterruptedException {
        Result r = child("qkv.blas.threads=abc", "demo");
        assertEquals(2, r.code(), r.toString());
        assertEquals(1, r.errLines().size(), r.toString());
        assertTrue(r.err().startsWith("error: ") && r.err().contains("-Dqkv.blas.threads=abc: expected a thread count"
                + " in 1..1024"), r.toString());
        assertFalse(r.out().contains("GFLOP/s"), "nothing timed: " + r);
    }

    /** A shared object that is not OpenBLAS, which no JVM loads on its own: the JDK's java.util.prefs library. */
    private static final Path NOT_BLAS = Path.of(System.getProperty("java.home"), "lib", "libprefs.so");

    /**
     * An OpenBLAS the user chose ({@code -Dqkv.blas.library}) that does not load is the user's to fix: one error
     * line naming the setting and the path, exit 2, on every command that would use OpenBLAS. It exited 1 as a
     * missing bundled library does; and under {@code auto} (bench's default) it was dropped without a word but
     * {@code openblas.core=unavailable}: the Java kernels ran, exit 0, and the user who named a library never
     * learnt it was not used. {@code info} and the demo went on without it (exit 0) the same way.
     */
    @ParameterizedTest
    @CsvSource(delimiter = '|', value = {
        "missing | no such file    | bench --shape 1,1,8,8 --iters 1 --backend native",
        "notBlas | lacks cblas_sgemm | bench --shape 1,1,8,8 --iters 1 --backend native",
        "text    | not a shared library | bench --shape 1,1,8,8 --iters 1 --backend native",
        "text    | not a shared library | bench --shape 1,1,8,8 --iters 1 --backend auto",
        "missing | no such file    | bench --shape 1,1,8,8 --iters 1 --backend auto",
        "notBlas | lacks cblas_sgemm | bench --shape 1,1,8,8 --iters 1",
        "missing | no such file    | info",
        "missing | no such file    | demo",
    })
    void anExplicitLibraryThatDoesNotLoadIsAUserError(String kind, String why, String command)
            throws IOException, InterruptedException {
        assumeTrue(kind.equals("missing") || Files.isRegularFile(NOT_BLAS), NOT_BLAS + " is not in this JDK");
        String path = switch (kind) {
            case "missing" -> dir.resolve("no-such-libopenblas.so.0").toString();
            // a text file: the JVM's dynamic loader printed two warning lines of its own (that it had "disabled
            // stack guard" and would fix it) before the one error line; the header is now checked first
            case "text" -> Files.writeString(dir.resolve("libopenblas.so.0"), "not a library\n").toString();
            default -> NOT_BLAS.toString();
        };
        Result r = child(List.of(OpenBlas.LIBRARY_PROPERTY + "=" + path), Map.of(), command.split(" "));
        assertUserError(r, OpenBlas.LIBRARY_PROPERTY + " = " + path + ": ");
        assertTrue(r.err().contains(why), r.toString());
    }

    /**
     * {@code bench} reports the OpenBLAS core in its header on every backend, and refuses a {@code -Dqkv.blas.threads}
     * outside its values on {@code java} and {@code reference} too: a library the user chose that does not load is
     * refused there the same way (exit 2, one line naming the setting). It printed {@code openblas.core=unavailable}
     * and exited 0, as if no library had been named, where {@code info} and the demo refuse it.
     */
    @ParameterizedTest
    @ValueSource(strings = {"java", "reference"})
    void benchOnTheJavaBackendsRefusesAnExplicitLibraryThatDoesNotLoad(String backend) throws IOException,
            InterruptedException {
        String missing = dir.resolve("no-such-libopenblas.so.0").toString();
        Result r = child(List.of(OpenBlas.LIBRARY_PROPERTY + "=" + missing), Map.of(), "bench", "--shape", "1,1,8,8",
                "--iters", "1", "--backend", backend);
        assertUserError(r, OpenBlas.LIBRARY_PROPERTY + " = " + missing + ": no such file");
    }

    /**
     * {@code QKV_BLAS_LIBRARY} chooses the library as {@code -Dqkv.blas.library} does, so a value that does not
     * load is the user's mistake too (exit 2, naming the variable), under {@code auto} as well; while the bundled
     * library failing to load, which the user did not choose, stays a failure (exit 1) that {@code auto} runs
     * without. An absolute XDG_CACHE_HOME that is a file leaves the bundled library no folder to be extracted to.
     */
    @Test
    void anExplicitLibraryFromTheEnvironmentIsAUserErrorButTheBundledOneFailingIsNot() throws IOException,
            InterruptedException {
        String missing = dir.resolve("no-such-libopenblas.so.0").toString();
        for (String backend : List.of("native", "auto")) {
            Result r = child(List.of(), Map.of(OpenBlas.LIBRARY_ENV, missing), "bench", "--shape", "1,1,8,8",
                    "--iters", "1", "--backend", backend);
            assertUserError(r, OpenBlas.LIBRARY_ENV + " = " + missing + ": no such file");
        }
        Path notAFolder = Files.writeString(dir.resolve("cache-is-a-file"), "x");
        Map<String, String> noCache = Map.of("XDG_CACHE_HOME", notAFolder.toString());
        Result bundled = child(List.of(), noCache, "bench", "--shape", "1,1,8,8", "--iters", "1", "--backend",
                "native");
        assertEquals(1, bundled.code(), bundled.toString());
        assertEquals(1, bundled.errLines().size(), bundled.toString());
        assertTrue(bundled.err().startsWith("error: OpenBLAS is unavailable: bundled OpenBLAS"), bundled.toString());
        Result auto = child(List.of(), noCache, "bench", "--shape", "1,1,8,8", "--iters", "1", "--backend", "auto");
        assertEquals(0, auto.code(), auto.toString());
        assertTrue(auto.out().contains("openblas.core=unavailable"), auto.toString());
    }

    /**
     * {@code info} (and the demo) without OpenBLAS (not the user's doing: here the bundled library has no folder to be
     * extracted to) still judges the {@code -Dqkv.blas.*} settings: one it refuses is a user error (exit 2), as {@code bench}
     * refuses it on any backend; one it takes is named as having had no effect. It reported "native no" and exited 0
     * either way, saying nothing of {@code -Dqkv.blas.threads=0} or of a thread count it never applied.
     */
    @Test
    void infoAndTheDemoWithoutOpenBlasStillJudgeTheBlasSettings() throws IOException, InterruptedException {
        Path notAFolder = Files.writeString(dir.resolve("cache-is-a-file"), "x");
        Map<String, String> noCache = Map.of("XDG_CACHE_HOME", notAFolder.toString());
        assertUserError(child(List.of(OpenBlas.THREADS_PROPERTY + "=0"), noCache, "info"),
                "-D" + OpenBlas.THREADS_PROPERTY + "=0: expected a thread count in 1..1024");

        Result r = child(List.of(OpenBlas.THREADS_PROPERTY + "=4", "qkv.blas.critical=false"), noCache, "info");
        assertEquals(0, r.code(), r.toString());
        assertEquals("", r.err(), r.toString());
        String line = r.out().lines().filter(l -> l.startsWith("openblas: ")).findFirst().orElseThrow();
        assertTrue(line.startsWith("openblas: unavailable: bundled OpenBLAS"), line);
        assertTrue(line.endsWith("; not applied, without a library: -D" + OpenBlas.THREADS_PROPERTY
                + "=4 -Dqkv.blas.critical=false"), line);
        assertTrue(r.out().contains("backends: native no ("), r.out());

        // the demo, which also goes on without OpenBLAS, ran the Java half and exited 0 with threads=0
        assertUserError(child(List.of(OpenBlas.THREADS_PROPERTY + "=0"), noCache, "demo"),
                "-D" + OpenBlas.THREADS_PROPERTY + "=0: expected a thread count in 1..1024");
    }

    /**
     * A file name the JVM cannot encode is the user's to fix: one line, exit 2. With {@code LC_ALL=C} a non-ASCII
     * name failed this way as "internal failure: InvalidPathException", exit 1; a NUL, which no Linux name holds,
     * fails the same way in any locale.
     */
    @ParameterizedTest
    @ValueSource(strings = {"q", "k", "v", "out"})
    void anUnencodableFileNameIsAUserError(String flag) throws IOException {
        SplittableRandom random = new SplittableRandom(SEED);
        String q = randomNpy("q.npy", random, Q).toString();
        String k = randomNpy("k.npy", random, K).toString();
        String v = randomNpy("v.npy", random, V).toString();
        String out = dir.resolve("out.npy").toString();
        String bad = dir + "/a\u0000b.npy"; // built as a string: Path itself refuses it
        Result r = run("sdpa", "--q", flag.equals("q") ? bad : q, "--k", flag.equals("k") ? bad : k,
                "--v", flag.equals("v") ? bad : v, "--out", flag.equals("out") ? bad : out);
        assertUserError(r, "--" + flag + " '");
        assertTrue(r.err().contains("is not a file name this JVM can use"), r.toString());
        assertFalse(Files.exists(dir.resolve("out.npy")));
    }

    /** Flags are ASCII: Integer.parseInt took {@code --iters ٣} (Arabic-Indic three) as 3. */
    @Test
    void nonAsciiDigitsAreNotANumber() {
        assertUserError(run("bench", "--shape", "1,1,8,8", "--iters", "\u0663"), "--iters expects an integer");
    }

    @Test
    void infoNamesTheLoadedLibrary() {
        Result r = run("info");
        assertEquals(0, r.code(), r.toString());
        assertEquals("", r.err());
        String path = OpenBlas.get().library().path().toString();
        assertTrue(r.out().contains("openblas: " + path), r.out());
        assertTrue(r.out().contains("core " + OpenBlas.get().library().coreName()), r.out());
        assertTrue(r.out().contains("jdk: " + System.getProperty("java.version")), r.out());
        assertTrue(r.out().contains("backends: native yes"), r.out());
        assertTrue(r.out().contains("FloatVector.SPECIES_PREFERRED"), r.out());
        if (dev.qkv.kernel.Vectorization.enabled()) {
            // the register blocks the Java products run (6x2 for AVX2's 16 vector registers, 6x4 for AVX-512's 32)
            String blocks = dev.qkv.kernel.Vectorization.packed().registerBlock() + " register blocks";
            assertTrue(r.out().contains("java yes (java-vector products, " + blocks + ")"), r.out());
        }
    }

    @ParameterizedTest
    @MethodSource("benchBackends")
    void benchEndsWithTheMedianLine(String backend) {
        Result r = run("bench", "--shape", "1,4,33,16", "--kv-heads", "2", "--causal", "--backend", backend,
                "--threads", "1", "--iters", "2");
        assertEquals(0, r.code(), r.toString());
        assertEquals("", r.err());
        String[] lines = r.out().split("\n");
        assertTrue(lines[lines.length - 1].matches("median_ms=\\d+\\.\\d+ gflops=\\d+\\.\\d+"), r.out());
        assertTrue(lines[0].contains("q=[1, 4, 33, 16] k=[1, 2, 33, 16] causal=true"), r.out());
    }

    static Stream<String> benchBackends() {
        return Stream.of("native", "java", "auto");
    }
}
