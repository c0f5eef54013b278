package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.Mask;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.io.Safetensors;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.net.URISyntaxException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static dev.qkv.mha.MhaTestSupport.assertClose;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The layer against outputs of PyTorch's {@code torch.nn.MultiheadAttention} (an implementation nobody here
 * wrote), made by {@code src/test/resources/mha/make_fixtures.py} with torch 1.13 and computed in float64.
 * Tolerance: {@code atol = 2e-5}, {@code rtol = 1e-4} (float32 sums over E ≤ 24 and L ≤ 7 terms).
 */
class TorchFixturesTest {
    private static final double ATOL = 2e-5;
    private static final double RTOL = 1e-4;

    private static Path resource(String name) {
        try {
            return Path.of(TorchFixturesTest.class.getResource("/mha/" + name).toURI());
        } catch (URISyntaxException | NullPointerException e) {
            throw new IllegalStateException("missing test resource mha/" + name, e);
        }
    }

    /** A minimal .npy reader for the fixtures only: C order, little-endian float32 or bool, as numpy.save writes. */
    static Tensor npy(Arena a, String name) throws IOException {
        byte[] bytes = Files.readAllBytes(resource(name));
        ByteBuffer b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        int major = bytes[6];
        int headerLen = major == 1 ? Short.toUnsignedInt(b.getShort(8)) : b.getInt(8);
        int start = major == 1 ? 10 : 12;
        String header = new String(bytes, start, headerLen, StandardCharsets.ISO_8859_1);
        Matcher descr = Pattern.compile("'descr': *'([^']*)'").matcher(header);
        Matcher shape = Pattern.compile("'shape': *\\(([^)]*)\\)").matcher(header);
        if (!descr.find() || !shape.find() || !header.contains("'fortran_order': False")) {
            throw new IOException(name + ": unexpected header " + header);
        }
        String[] dims = shape.group(1).split(",");
        long[] s = java.util.Arrays.stream(dims).map(String::trim).filter(d -> !d.isEmpty())
                .mapToLong(Long::parseLong).toArray();
        Tensor t = Tensor.allocate(a, s);
        int n = (int) t.elementCount();
        float[] v = new float[n];
        int data = start + headerLen;
        switch (descr.group(1)) {
            case "<f4" -> {
                for (int i = 0; i < n; i++) {
                    v[i] = b.getFloat(data + 4 * i);
                }
            }
            case "|b1" -> {
                for (int i = 0; i < n; i++) {
                    v[i] = bytes[data + i] != 0 ? 1f : 0f;
                }
            }
            default -> throw new IOException(name + ": dtype " + descr.group(1) + " not used by the fixtures");
        }
        return t.copyFrom(v);
    }

    private static MultiHeadAttention layer(Arena a, String file, String prefix, int heads, Backend backend)
            throws IOException {
        return MultiHeadAttention.create(MhaWeights.load(Safetensors.open(resource(file), a), prefix, heads, 0, a),
                backend);
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void selfAttention(Backend backend) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention mha = layer(a, "self.safetensors", "", 4, backend);
            Tensor x = npy(a, "self_x.npy");
            Tensor want = npy(a, "self_out.npy");
            Tensor out = Tensor.allocate(a, want.shape());
            mha.forward(x, out, SdpaOptions.DEFAULT, mha.newWorkspace(a, 2, 5, 5));
            assertClose(want.toArray(), out.toArray(), ATOL, RTOL, "self " + backend);
        }
    }

    /** Causal as a flag, as the fixture's boolean mask, and by decoding token by token through a KV cache. */
    @ParameterizedTest
    @EnumSource(Backend.class)
    void causalSelfAttentionFromBfloat16Weights(Backend backend) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention mha = layer(a, "causal.safetensors", "", 2, backend);
            Tensor x = npy(a, "causal_x.npy");
            Tensor want = npy(a, "causal_out.npy");
            int l = (int) x.size(1);
            MhaWorkspace ws = mha.newWorkspace(a, 1, l, l);
            Tensor out = Tensor.allocate(a, want.shape());
            mha.forward(x, out, SdpaOptions.CAUSAL, ws);
            assertClose(want.toArray(), out.toArray(), ATOL, RTOL, "causal flag " + backend);
            Tensor masked = Tensor.allocate(a, want.shape());
            mha.forward(x, masked, SdpaOptions.DEFAULT.withMask(Mask.allowed(npy(a, "causal_mask.npy"))), ws);
            assertClose(want.toArray(), masked.toArray(), ATOL, RTOL, "causal mask " + backend);
            KvCache cache = mha.newCache(a, l);
            Tensor decoded = Tensor.allocate(a, want.shape());
            for (int i = 0; i < l; i++) {
                mha.decode(x.slice(1, i, i + 1), cache, decoded.slice(1, i, i + 1), ws);
            }
            assertEquals(l, cache.length());
            assertClose(want.toArray(), decoded.toArray(), ATOL, RTOL, "causal decode " + backend);
        }
    }

    @ParameterizedTest
    @EnumSource(Backend.class)
    void crossAttentionWithKeyPaddingUnderHuggingFaceNames(Backend backend) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            MultiHeadAttention mha = layer(a, "cross.safetensors", "decoder.cross_attn", 3, backend);
            Tensor x = npy(a, "cross_x.npy");
            Tensor kv = npy(a, "cross_kv.npy");
            Tensor want = npy(a, "cross_out.npy");
            Tensor out = Tensor.allocate(a, want.shape());
            SdpaOptions o = SdpaOptions.DEFAULT.withMask(Mask.allowed(npy(a, "cross_mask.npy")));
            mha.forward(x, kv, out, o, mha.newWorkspace(a, x.size(0), x.size(1), kv.size(1)));
            assertClose(want.toArray(), out.toArray(), ATOL, RTOL, "cross " + backend);
        }
    }
}
