package dev.qkv.mha;

import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Shapes;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.fail;

/** Random tensors, tolerance checks and a tiny safetensors writer for the layer tests. */
final class MhaTestSupport {
    private MhaTestSupport() {
    }

    /**
     * {@code out} of {@link Backend#REFERENCE} over these weights (kv null: self-attention), with a workspace of
     * the call's sizes: every backend requires one.
     */
    static void referenceForward(MhaWeights w, Tensor x, Tensor kv, Tensor out, SdpaOptions options) {
        MultiHeadAttention ref = MultiHeadAttention.create(w, Backend.REFERENCE);
        try (Arena a = Arena.ofConfined()) {
            ref.forward(x, kv, out, options, ref.newWorkspace(a, x.size(0), x.size(1),
                    kv == null ? x.size(1) : kv.size(1)));
        }
    }

    /** Uniform in [-scale, scale). */
    static Tensor rand(Arena a, Random r, float scale, long... shape) {
        Tensor t = Tensor.allocate(a, shape);
        float[] x = new float[(int) t.elementCount()];
        for (int i = 0; i < x.length; i++) {
            x[i] = (r.nextFloat() * 2 - 1) * scale;
        }
        return t.copyFrom(x);
    }

    /**
     * Asserts {@code |got - ref| <= atol + rtol·|ref|} elementwise, reporting the first mismatches by flat
     * index together with {@code what} (seed and shape).
     */
    static void assertClose(float[] ref, float[] got, double atol, double rtol, String what) {
        if (ref.length != got.length) {
            fail(what + ": " + got.length + " values, expected " + ref.length);
        }
        StringBuilder sb = new StringBuilder();
        int bad = 0;
        double worst = 0;
        for (int i = 0; i < ref.length; i++) {
            double d = Math.abs((double) got[i] - ref[i]);
            double tol = atol + rtol * Math.abs(ref[i]);
            worst = Math.max(worst, d);
            if (!(d <= tol)) {
                if (bad++ < 5) {
                    sb.append("\n  [").append(i).append("] ref=").append(ref[i]).append(" got=").append(got[i]);
                }
            }
        }
        if (bad > 0) {
            fail(what + ": " + bad + " of " + ref.length + " elements outside atol=" + atol + " rtol=" + rtol
                    + " (max |diff| " + worst + ")" + sb);
        }
    }

    /** Writes F32 tensors (name → shape and values) as a safetensors file, in map order. */
    static void writeF32(Path file, Map<String, Tensor> tensors) throws IOException {
        Map<String, byte[]> raw = new LinkedHashMap<>();
        Map<String, long[]> shapes = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> en : tensors.entrySet()) {
            float[] v = en.getValue().toArray();
            ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
            for (float f : v) {
                b.putFloat(f);
            }
            raw.put(en.getKey(), b.array());
            shapes.put(en.getKey(), en.getValue().shape());
        }
        write(file, raw, shapes, "F32");
    }

    /** Writes the tensors as BF16 (rounded to nearest even) or F16; returns nothing, the reader converts back. */
    static void writeHalf(Path file, Map<String, Tensor> tensors, boolean bf16) throws IOException {
        Map<String, byte[]> raw = new LinkedHashMap<>();
        Map<String, long[]> shapes = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> en : tensors.entrySet()) {
            float[] v = en.getValue().toArray();
            ByteBuffer b = ByteBuffer.allocate(v.length * 2).order(ByteOrder.LITTLE_ENDIAN);
            for (float f : v) {
                b.putShort(bf16 ? toBf16(f) : Float.floatToFloat16(f));
            }
            raw.put(en.getKey(), b.array());
            shapes.put(en.getKey(), en.getValue().shape());
        }
        write(file, raw, shapes, bf16 ? "BF16" : "F16");
    }

    static short toBf16(float f) {
        int bits = Float.floatToRawIntBits(f);
        int rounded = bits + 0x7fff + ((bits >>> 16) & 1);
        return (short) (rounded >>> 16);
    }

    static float fromBf16(short s) {
        return Float.intBitsToFloat((s & 0xffff) << 16);
    }

    private static void write(Path file, Map<String, byte[]> raw, Map<String, long[]> shapes, String dtype)
            throws IOException {
        StringBuilder h = new StringBuilder("{\"__metadata__\":{\"format\":\"pt\"}");
        long off = 0;
        for (Map.Entry<String, byte[]> en : raw.entrySet()) {
            long end = off + en.getValue().length;
            String shape = Shapes.format(shapes.get(en.getKey())).replace(" ", "");
            h.append(",\"").append(en.getKey()).append("\":{\"dtype\":\"").append(dtype).append("\",\"shape\":")
                    .append(shape).append(",\"data_offsets\":[").append(off).append(',').append(end).append("]}");
            off = end;
        }
        h.append('}');
        byte[] hb = h.toString().getBytes(StandardCharsets.UTF_8);
        ByteBuffer out = ByteBuffer.allocate((int) (8 + hb.length + off)).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(hb.length).put(hb);
        for (byte[] r : raw.values()) {
            out.put(r);
        }
        Files.write(file, out.array());
    }
}
