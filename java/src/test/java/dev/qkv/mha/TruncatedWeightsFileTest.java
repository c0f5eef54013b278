package dev.qkv.mha;

import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.io.Safetensors;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.net.URISyntaxException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Random;

import static dev.qkv.mha.MhaTestSupport.assertClose;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Weights loaded with the default {@link Safetensors.Load#COPY} do not depend on their file: another process
 * truncating it after loading (while the file is still open, or after) cannot reach the native backend, which
 * would die of {@code SIGBUS} on a truncated mapping. The mapped mode's crash is, by its nature, not tested.
 */
class TruncatedWeightsFileTest {
    @TempDir
    Path dir;

    private static void truncate(Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.WRITE)) {
            ch.truncate(0);
        }
        assertEquals(0, Files.size(file));
    }

    /** The torch fixture's layer, its file truncated to nothing after loading: native output matches torch's. */
    @Test
    void nativeMhaRunsOnWeightsWhoseFileWasTruncated() throws IOException, URISyntaxException {
        Path file = dir.resolve("self.safetensors");
        Files.copy(Path.of(TruncatedWeightsFileTest.class.getResource("/mha/self.safetensors").toURI()), file);
        try (Arena a = Arena.ofShared()) {
            // the file stays open in this arena while the file shrinks under it
            MhaWeights w = MhaWeights.load(Safetensors.open(file, a), "", 4, 0, a);
            truncate(file);
            MultiHeadAttention mha = MultiHeadAttention.create(w, Backend.NATIVE);
            Tensor x = TorchFixturesTest.npy(a, "self_x.npy");
            Tensor want = TorchFixturesTest.npy(a, "self_out.npy");
            Tensor out = Tensor.allocate(a, want.shape());
            mha.forward(x, out, SdpaOptions.DEFAULT, mha.newWorkspace(a, x.size(0), x.size(1), x.size(1)));
            assertClose(want.toArray(), out.toArray(), 2e-5, 1e-4, "native mha after truncation");
        }
    }

    /** q, k, v read from a file that is then truncated: native sdpa equals the reference on the same tensors. */
    @Test
    void nativeSdpaRunsOnTensorsWhoseFileWasTruncated() throws IOException {
        long seed = 20261125L;
        long[] qs = {1, 2, 70, 16};
        long[] kvs = {1, 1, 70, 16};
        Random r = new Random(seed);
        float[][] data = new float[3][];
        for (int t = 0; t < 3; t++) {
            data[t] = new float[(int) (t == 0 ? 2 * 70 * 16 : 70 * 16)];
            for (int i = 0; i < data[t].length; i++) {
                data[t][i] = (float) r.nextGaussian();
            }
        }
        Path file = dir.resolve("qkv.safetensors");
        Files.write(file, qkvFile(data));
        try (Arena a = Arena.ofShared()) {
            Tensor q;
            Tensor k;
            Tensor v;
            try (Arena fileArena = Arena.ofConfined()) {
                Safetensors st = Safetensors.open(file, fileArena);
                q = st.tensor("q", a);
                k = st.tensor("k", a);
                v = st.tensor("v", a);
            }
            truncate(file);
            Tensor out = Tensor.allocate(a, qs);
            Tensor ref = Tensor.allocate(a, qs);
            Attention.create(Backend.NATIVE).sdpa(q, k, v, out, SdpaOptions.CAUSAL);
            Attention.create(Backend.REFERENCE).sdpa(q, k, v, ref, SdpaOptions.CAUSAL);
            assertEquals(java.util.Arrays.toString(kvs), java.util.Arrays.toString(v.shape()));
            assertClose(ref.toArray(), out.toArray(), 1e-5, 1e-4, "seed=" + seed + " q "
                    + java.util.Arrays.toString(qs) + " native sdpa after truncation");
        }
    }

    /**
     * Opened MAPPED, then truncated before the tensors are read: tensors that read copy from the mapping (F32
     * that is not 4-byte aligned, F16) fail with a SafetensorsException naming the file and tensor, not the
     * JDK's InternalError of a lost page.
     */
    @Test
    void mappedTensorsCopiedFromATruncatedFileAreAClearError() throws IOException {
        int n = 8192;
        String header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[" + n + "],\"data_offsets\":[0," + 4 * n + "]},"
                + "\"h\":{\"dtype\":\"F16\",\"shape\":[" + n + "],\"data_offsets\":[" + 4 * n + "," + 6 * n + "]}}";
        while ((8 + header.length()) % 4 != 2) {
            header += " ";
        }
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + 6 * n).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h);
        Path file = dir.resolve("mapped.safetensors");
        Files.write(file, b.array());
        try (Arena a = Arena.ofShared()) {
            Safetensors st = Safetensors.open(file, a, Safetensors.Load.MAPPED);
            truncate(file);
            for (String name : new String[] {"a", "h"}) {
                dev.qkv.io.SafetensorsException e = org.junit.jupiter.api.Assertions.assertThrows(
                        dev.qkv.io.SafetensorsException.class, () -> st.tensor(name, a));
                org.junit.jupiter.api.Assertions.assertTrue(e.getMessage().startsWith(file + ": tensor '" + name + "'")
                        && e.getMessage().contains("shorter than at open"), e.getMessage());
            }
        }
    }

    /** A safetensors file with F32 q [1, 2, 70, 16], k and v [1, 1, 70, 16]. */
    private static byte[] qkvFile(float[][] data) {
        String header = "{\"q\":{\"dtype\":\"F32\",\"shape\":[1,2,70,16],\"data_offsets\":[0,8960]},"
                + "\"k\":{\"dtype\":\"F32\",\"shape\":[1,1,70,16],\"data_offsets\":[8960,13440]},"
                + "\"v\":{\"dtype\":\"F32\",\"shape\":[1,1,70,16],\"data_offsets\":[13440,17920]}}";
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + 17920).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h);
        for (float[] t : data) {
            for (float x : t) {
                b.putFloat(x);
            }
        }
        return b.array();
    }
}
