package dev.qkv.cli;

import dev.qkv.io.Npy;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Set;

import static dev.qkv.cli.MainTest.assertUserError;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@code qkv mha} end to end on the PyTorch fixtures of {@code src/test/resources/mha} (made by
 * {@code make_fixtures.py} with {@code torch.nn.MultiheadAttention}); tolerance {@code 2e-5 + 1e-4·|want|}.
 */
class MhaCommandTest {
    @TempDir
    Path dir;

    private static String fixture(String name) {
        try {
            return Path.of(MhaCommandTest.class.getResource("/mha/" + name).toURI()).toString();
        } catch (URISyntaxException e) {
            throw new IllegalStateException(e);
        }
    }

    private void assertMatches(String wantFile, Path got) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            Tensor want = Npy.read(Path.of(fixture(wantFile)), a).tensor();
            Tensor y = Npy.read(got, a).tensor();
            assertArrayEquals(want.shape(), y.shape());
            float[] w = want.toArray();
            float[] g = y.toArray();
            for (int i = 0; i < w.length; i++) {
                assertTrue(Math.abs(g[i] - w[i]) <= 2e-5 + 1e-4 * Math.abs(w[i]),
                        wantFile + " [" + i + "]: want " + w[i] + ", got " + g[i]);
            }
        }
    }

    private static MainTest.Result mha(String... args) {
        List<String> all = new ArrayList<>(List.of("mha"));
        all.addAll(Arrays.asList(args));
        return MainTest.run(all.toArray(String[]::new));
    }

    @ParameterizedTest
    @ValueSource(strings = {"native", "java", "reference"})
    void selfCausalAndCrossMatchPyTorch(String backend) throws IOException {
        Path y = dir.resolve("y.npy");
        MainTest.Result self = mha("--x", fixture("self_x.npy"), "--weights", fixture("self.safetensors"),
                "--heads", "4", "--backend", backend, "--out", y.toString());
        assertEquals(0, self.code(), self.toString());
        assertEquals(1, self.out().lines().count(), self.out());
        assertTrue(self.out().startsWith("mha backend=" + backend + " x=[2, 5, 16] kv=x E=16 H=4 Hkv=4 mask=none"),
                self.out());
        assertEquals("", self.err());
        assertMatches("self_out.npy", y);

        MainTest.Result causal = mha("--x", fixture("causal_x.npy"), "--weights", fixture("causal.safetensors"),
                "--heads", "2", "--causal", "--backend", backend, "--out", y.toString());
        assertEquals(0, causal.code(), causal.toString());
        assertMatches("causal_out.npy", y);

        MainTest.Result cross = mha("--x", fixture("cross_x.npy"), "--kv", fixture("cross_kv.npy"),
                "--mask", fixture("cross_mask.npy"), "--weights", fixture("cross.safetensors"),
                "--prefix", "decoder.cross_attn", "--heads", "3", "--kv-heads", "3", "--backend", backend,
                "--out", y.toString());
        assertEquals(0, cross.code(), cross.toString());
        assertTrue(cross.out().contains("mask=bool[2, 1, 1, 6]"), cross.out());
        assertMatches("cross_out.npy", y);
    }

    /**
     * A {@code --mask} with one value per query row ({@code [B, 1, L, 1]}, {@code [L, 1]}: torch's broadcast over
     * the keys) applies it to every key: all-true rows, or one finite float added to every score of a row (softmax
     * does not move when a row's scores shift alike), leave PyTorch's unmasked output unchanged.
     */
    @ParameterizedTest
    @ValueSource(strings = {"native", "java", "reference", "auto"})
    void aMaskWithOneValuePerQueryRowMatchesPyTorch(String backend) throws IOException {
        Path y = dir.resolve("y.npy");
        // self_x is [2, 5, 16]
        Path allTrue = dir.resolve("rows_bool.npy");
        java.nio.file.Files.write(allTrue, dev.qkv.io.NpyBytes.file("|b1", dev.qkv.io.NpyBytes.tuple(2, 1, 5, 1),
                dev.qkv.io.NpyBytes.b1(true, true, true, true, true, true, true, true, true, true)));
        Path shift = dir.resolve("rows_float.npy");
        java.nio.file.Files.write(shift, dev.qkv.io.NpyBytes.file("<f4", dev.qkv.io.NpyBytes.tuple(5, 1),
                dev.qkv.io.NpyBytes.f4(-3f, 0.5f, 7f, -0.25f, 2f)));
        for (Path mask : new Path[] {allTrue, shift}) {
            MainTest.Result r = mha("--x", fixture("self_x.npy"), "--weights", fixture("self.safetensors"),
                    "--heads", "4", "--mask", mask.toString(), "--backend", backend, "--out", y.toString());
            assertEquals(0, r.code(), r.toString());
            assertEquals("", r.err());
            assertMatches("self_out.npy", y);
        }
    }

    /**
     * {@code --scale}: 0.5 is the default for these heads (E/H = 4), so it matches PyTorch's output; 1.3 matches the
     * reference backend called through the API with that scale; a scale that is no number is a user error.
     */
    @ParameterizedTest
    @ValueSource(strings = {"native", "java", "reference"})
    void scaleIsTheLayersScale(String backend) throws IOException {
        Path y = dir.resolve("y.npy");
        MainTest.Result half = mha("--x", fixture("self_x.npy"), "--weights", fixture("self.safetensors"),
                "--heads", "4", "--scale", "0.5", "--backend", backend, "--out", y.toString());
        assertEquals(0, half.code(), half.toString());
        assertMatches("self_out.npy", y);

        MainTest.Result other = mha("--x", fixture("self_x.npy"), "--weights", fixture("self.safetensors"),
                "--heads", "4", "--scale", "1.3", "--backend", backend, "--out", y.toString());
        assertEquals(0, other.code(), other.toString());
        try (Arena a = Arena.ofConfined()) {
            Tensor x = Npy.read(Path.of(fixture("self_x.npy")), a).tensor();
            dev.qkv.mha.MhaWeights w = dev.qkv.mha.MhaWeights.load(
                    dev.qkv.io.Safetensors.open(Path.of(fixture("self.safetensors")), a), "", 4, 0, a);
            dev.qkv.mha.MultiHeadAttention ref = dev.qkv.mha.MultiHeadAttention.create(w,
                    dev.qkv.attention.Backend.REFERENCE);
            Tensor want = Tensor.allocate(a, x.shape());
            ref.forward(x, want, dev.qkv.attention.SdpaOptions.DEFAULT.withScale(1.3f),
                    ref.newWorkspace(a, x.size(0), x.size(1), x.size(1)));
            float[] wv = want.toArray();
            float[] g = Npy.read(y, a).tensor().toArray();
            Tensor plain = Npy.read(Path.of(fixture("self_out.npy")), a).tensor();
            assertFalse(Arrays.equals(plain.toArray(), g), "--scale 1.3 changed nothing");
            for (int i = 0; i < wv.length; i++) {
                assertTrue(Math.abs(g[i] - wv[i]) <= 2e-5 + 1e-4 * Math.abs(wv[i]),
                        "[" + i + "]: want " + wv[i] + ", got " + g[i]);
            }
        }
        Files.delete(y);
        assertUserError(mha("--x", fixture("self_x.npy"), "--weights", fixture("self.safetensors"), "--heads", "4",
                "--scale", "abc", "--backend", backend, "--out", y.toString()), "--scale expects a number, got 'abc'");
        assertFalse(Files.exists(y), "no output after an error");
    }

    /**
     * {@code mha --mask} with the fixture's bool key-padding mask saved as int64 ({@code '<i8'}, as a Hugging Face
     * attention_mask is) or uint8 was refused; as a boolean mask it gives PyTorch's output for the bool mask.
     */
    @ParameterizedTest
    @ValueSource(strings = {"<i8", "|u1"})
    void anIntegerMaskIsTheBoolMask(String descr) throws IOException {
        Path y = dir.resolve("y.npy");
        Path m;
        try (Arena a = Arena.ofConfined()) {
            Tensor bool = Npy.read(Path.of(fixture("cross_mask.npy")), a).tensor();
            float[] b = bool.toArray();
            long[] values = new long[b.length];
            for (int i = 0; i < b.length; i++) {
                values[i] = b[i] != 0 ? 1 : 0;
            }
            int size = descr.equals("<i8") ? 8 : 1;
            m = dev.qkv.io.NpyBytes.write(dir, "m.npy", dev.qkv.io.NpyBytes.file(descr,
                    dev.qkv.io.NpyBytes.tuple(bool.shape()), dev.qkv.io.NpyBytes.ints(size, values)));
        }
        MainTest.Result r = mha("--x", fixture("cross_x.npy"), "--kv", fixture("cross_kv.npy"), "--mask", m.toString(),
                "--weights", fixture("cross.safetensors"), "--prefix", "decoder.cross_attn", "--heads", "3",
                "--out", y.toString());
        assertEquals(0, r.code(), r.toString());
        assertTrue(r.out().contains("mask=bool[2, 1, 1, 6]"), r.out());
        assertMatches("cross_out.npy", y);
    }

    /**
     * The fixture's key-padding mask saved as a Hugging Face attention_mask is, {@code [B, Lkv]}, aligns with
     * {@code [Lq, Lkv]} and is refused; the error line says to save it as {@code [B, 1, 1, Lkv]}, in the layer's
     * names as the rest of the line ({@code = [B, H, L, Lkv]}): it said {@code [B, Lk]} and {@code [B, 1, 1, Lk]},
     * sdpa's (found in review; this test looked for {@code [B, 1, 1, Lk]}, a prefix of either).
     */
    @Test
    void aBatchByKeysMaskIsRefusedWithHowToSaveIt() throws IOException {
        Path y = dir.resolve("y.npy");
        Path m = dev.qkv.io.NpyBytes.write(dir, "m.npy", dev.qkv.io.NpyBytes.file("|b1", "(2, 6)", new byte[12]));
        MainTest.Result r = mha("--x", fixture("cross_x.npy"), "--kv", fixture("cross_kv.npy"), "--mask", m.toString(),
                "--weights", fixture("cross.safetensors"), "--prefix", "decoder.cross_attn", "--heads", "3",
                "--out", y.toString());
        assertUserError(r, "mask [2, 6]");
        assertUserError(r, "= [B, H, L, Lkv]");
        assertUserError(r, "a [B, Lkv] key-padding mask");
        assertUserError(r, "[B, 1, 1, Lkv]");
        assertUserError(r, "m[:, None, None, :]");
        assertFalse(Files.exists(y));
    }

    /**
     * nn.MultiheadAttention's own 3-D attn_mask, {@code [B·H, L, Lkv]}, saved as it is: refused, the error line saying
     * how to save it with NumPy ({@code Tensor.reshape}, which it named, is no help on the command line).
     */
    @Test
    void aTorchStyleMaskIsRefusedWithHowToSaveIt() throws IOException {
        Path y = dir.resolve("y.npy");
        Path m = dev.qkv.io.NpyBytes.write(dir, "m.npy", dev.qkv.io.NpyBytes.file("|b1", "(6, 4, 6)", new byte[144]));
        MainTest.Result r = mha("--x", fixture("cross_x.npy"), "--kv", fixture("cross_kv.npy"), "--mask", m.toString(),
                "--weights", fixture("cross.safetensors"), "--prefix", "decoder.cross_attn", "--heads", "3",
                "--out", y.toString());
        assertUserError(r, "mask [6, 4, 6]: not broadcastable to [2, 3, 4, 6] = [B, H, L, Lkv]");
        assertUserError(r, "np.save(path, m.reshape(2, 3, 4, 6))");
        assertFalse(r.err().contains("Tensor.reshape"), r.toString());
        assertFalse(Files.exists(y));
    }

    /**
     * A 0-d float mask adds one constant to every score, which changes no softmax: the output is PyTorch's unmasked
     * one. mha refused it ("rank 0 is not broadcastable").
     */
    @Test
    void aRankZeroFloatMaskChangesNothing() throws IOException {
        Path y = dir.resolve("y.npy");
        Path m = dev.qkv.io.NpyBytes.write(dir, "m.npy", dev.qkv.io.NpyBytes.file("<f8", "()",
                dev.qkv.io.NpyBytes.f8(-1.0)));
        MainTest.Result r = mha("--x", fixture("self_x.npy"), "--weights", fixture("self.safetensors"),
                "--heads", "4", "--mask", m.toString(), "--out", y.toString());
        assertEquals(0, r.code(), r.toString());
        assertTrue(r.out().contains("mask=float[] "), r.out());
        assertMatches("self_out.npy", y);
    }

    /**
     * Weights saved from a float64 torch model are F64; mha refused them ("dtype F64 is not supported") while it
     * read float64 .npy inputs. The fixture's F32 weights written as F64 (exactly: every float is a double) must
     * give PyTorch's output.
     */
    @Test
    void float64WeightsAreRead() throws IOException {
        Path w64 = dir.resolve("w64.safetensors");
        try (Arena a = Arena.ofConfined()) {
            dev.qkv.io.Safetensors st = dev.qkv.io.Safetensors.open(Path.of(fixture("self.safetensors")), a);
            StringBuilder header = new StringBuilder("{");
            java.io.ByteArrayOutputStream data = new java.io.ByteArrayOutputStream();
            for (String name : st.entries().keySet()) {
                Tensor t = st.tensor(name, a);
                float[] v = t.toArray();
                java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(v.length * 8)
                        .order(java.nio.ByteOrder.LITTLE_ENDIAN);
                for (float f : v) {
                    b.putDouble(f);
                }
                header.append(header.length() > 1 ? "," : "").append('"').append(name).append("\":{\"dtype\":\"F64\","
                        + "\"shape\":").append(Arrays.toString(t.shape()).replace(" ", "")).append(",\"data_offsets\":[")
                        .append(data.size()).append(',').append(data.size() + b.capacity()).append("]}");
                data.write(b.array());
            }
            byte[] h = header.append('}').toString().getBytes(java.nio.charset.StandardCharsets.UTF_8);
            java.nio.ByteBuffer file = java.nio.ByteBuffer.allocate(8 + h.length + data.size())
                    .order(java.nio.ByteOrder.LITTLE_ENDIAN);
            file.putLong(h.length).put(h).put(data.toByteArray());
            Files.write(w64, file.array());
        }
        Path y = dir.resolve("y.npy");
        MainTest.Result r = mha("--x", fixture("self_x.npy"), "--weights", w64.toString(), "--heads", "4",
                "--out", y.toString());
        assertEquals(0, r.code(), r.toString());
        assertMatches("self_out.npy", y);
    }

    /**
     * {@code qkv mha ... --out y.npy > /dev/full} exited 2 but wrote y.npy (or replaced an earlier one): a failed
     * run leaves no output and any earlier file unchanged.
     */
    @Test
    void anUnwritableStandardOutputLeavesNoOutputFile() throws IOException {
        Path y = dir.resolve("y.npy");
        String[] args = {"mha", "--x", fixture("self_x.npy"), "--weights", fixture("self.safetensors"), "--heads", "4",
                "--out", y.toString()};
        assertUserError(MainTest.runWithUnwritableStdout(args), "standard output");
        assertFalse(Files.exists(y), "a failed run wrote " + y);
        byte[] earlier = {1, 2, 3};
        Files.write(y, earlier);
        assertUserError(MainTest.runWithUnwritableStdout(args), "standard output");
        assertArrayEquals(earlier, Files.readAllBytes(y), "a failed run replaced " + y);
    }

    @Test
    void userErrorsAreOneLineAndWriteNothing() throws IOException {
        Path y = dir.resolve("y.npy");
        String x = fixture("self_x.npy");
        String w = fixture("self.safetensors");
        assertUserError(mha("--x", x, "--weights", w, "--out", y.toString()), "missing required flag --heads");
        assertUserError(mha("--x", x, "--weights", w, "--heads", "0", "--out", y.toString()), "--heads must be in");
        assertUserError(mha("--x", x, "--weights", w, "--heads", "3", "--out", y.toString()),
                "in_proj_weight [48, 16]: E=16 is not divisible by H=3");
        assertUserError(mha("--x", x, "--weights", w, "--heads", "4", "--kv-heads", "2", "--out", y.toString()),
                "not the 2 requested");
        assertUserError(mha("--x", x, "--weights", w, "--heads", "4", "--prefix", "enc", "--out", y.toString()),
                "no attention weights under prefix 'enc.'");
        assertUserError(mha("--x", fixture("cross_x.npy"), "--weights", w, "--heads", "4", "--out", y.toString()),
                "x [2, 4, 24]: expected [B, L, 16]");
        assertUserError(mha("--x", x, "--kv", fixture("cross_kv.npy"), "--weights", w, "--heads", "4",
                "--out", y.toString()), "kv [2, 6, 24]: expected [2, Lkv, 16]");
        assertUserError(mha("--x", x, "--weights", w, "--heads", "4", "--mask", fixture("cross_mask.npy"),
                "--out", y.toString()), "mask [2, 1, 1, 6]");
        assertUserError(mha("--x", fixture("cross_mask.npy"), "--weights", w, "--heads", "4", "--out", y.toString()),
                "x [2, 1, 1, 6] has dtype '|b1'");
        assertUserError(mha("--x", x, "--weights", dir.resolve("missing.safetensors").toString(), "--heads", "4",
                "--out", y.toString()), "missing.safetensors");
        Path bad = dir.resolve("bad.safetensors");
        Files.write(bad, new byte[] {(byte) 200, 0, 0, 0, 0, 0, 0, 0, '{', '}'});
        assertUserError(mha("--x", x, "--weights", bad.toString(), "--heads", "4", "--out", y.toString()),
                bad + ": header length 200 exceeds");
        assertUserError(mha("--x", x, "--weights", x, "--heads", "4", "--out", y.toString()),
                "self_x.npy: not a .safetensors file: a .npy file");
        assertUserError(mha("--x", x, "--weights", w, "--heads", "4", "--backend", "gpu", "--out", y.toString()),
                "unknown backend 'gpu'");
        // --out naming an input replaced it with the result, exit 0: refused, the input left as it was
        Path xCopy = Files.copy(Path.of(x), dir.resolve("x.npy"));
        Path wCopy = Files.copy(Path.of(w), dir.resolve("w.safetensors"));
        Path mCopy = Files.copy(Path.of(fixture("cross_mask.npy")), dir.resolve("m.npy"));
        Path kvCopy = Files.copy(Path.of(fixture("cross_kv.npy")), dir.resolve("kv.npy"));
        for (Path same : List.of(xCopy, wCopy, mCopy, kvCopy)) {
            byte[] before = Files.readAllBytes(same);
            assertUserError(mha("--x", xCopy.toString(), "--kv", kvCopy.toString(), "--weights", wCopy.toString(),
                    "--heads", "4", "--mask", mCopy.toString(), "--out", same.toString()),
                    "--out '" + same + "' is the input --");
            assertArrayEquals(before, Files.readAllBytes(same), same.toString());
        }
        assertFalse(Files.exists(y), "no output after an error");
        try (var files = Files.list(dir)) {
            assertEquals(Set.of(bad, xCopy, wCopy, mCopy, kvCopy), Set.copyOf(files.toList()),
                    "no temporary files left behind");
        }
    }
}
