package dev.qkv.io;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Every F16 and BF16 bit pattern read through {@link Safetensors} (copied and mapped, at an odd data offset),
 * against decoders written here from the IEEE 754 binary16 and bfloat16 definitions, not from the reader; and
 * {@code .npy} float64 rounded to float32 against bit patterns worked out by hand (ties to even, overflow to
 * infinity, subnormal results).
 */
class ConversionExactnessTest {

    @TempDir
    Path dir;

    /** binary16 by definition: sign, 5-bit exponent (bias 15), 10-bit fraction; subnormals are m · 2^-24. */
    static int halfBits(int h) {
        int sign = (h >>> 15) & 1;
        int exp = (h >>> 10) & 0x1f;
        int frac = h & 0x3ff;
        if (exp == 0x1f) {
            // infinity, or NaN with its fraction as the top 10 fraction bits of the float (payload kept)
            return (sign << 31) | 0x7f80_0000 | (frac << 13);
        }
        double magnitude = exp == 0 ? Math.scalb((double) frac, -24) : Math.scalb(1024.0 + frac, exp - 25);
        // every binary16 value is a float32 exactly: the double -> float cast below loses nothing
        float v = (float) magnitude;
        assertEquals(magnitude, (double) v, "binary16 value not exact in float32?");
        return (sign << 31) | Float.floatToRawIntBits(v);
    }

    private Path file(String dtype, int count, int pad) throws IOException {
        // the header padded with spaces so that the data starts at an odd byte of the file
        String json = "{\"t\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + count + "],\"data_offsets\":[0,"
                + 2 * count + "]}}";
        byte[] h = (json + " ".repeat(pad)).getBytes(StandardCharsets.US_ASCII);
        assertTrue((8 + h.length) % 2 == 1, "data must start at an odd offset");
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + 2 * count).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h);
        for (int i = 0; i < count; i++) {
            b.putShort((short) i);
        }
        Path p = dir.resolve(dtype + ".safetensors");
        Files.write(p, b.array());
        return p;
    }

    private static int pad(String dtype) {
        int len = ("{\"t\":{\"dtype\":\"" + dtype + "\",\"shape\":[65536],\"data_offsets\":[0,131072]}}").length();
        return (8 + len) % 2 == 1 ? 0 : 1;
    }

    @Test
    void everyHalfConvertsExactlyCopiedAndMapped() throws IOException {
        Path p = file("F16", 1 << 16, pad("F16"));
        for (Safetensors.Load load : Safetensors.Load.values()) {
            try (Arena arena = Arena.ofConfined()) {
                Tensor t = Safetensors.open(p, arena, load).tensor("t", arena);
                float[] got = t.toArray();
                assertEquals(1 << 16, got.length);
                for (int h = 0; h < 1 << 16; h++) {
                    int want = halfBits(h);
                    int bits = Float.floatToRawIntBits(got[h]);
                    boolean nan = ((h >>> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0;
                    if (nan) {
                        // NaN stays NaN of the same sign; the payload bits below the quiet bit are kept
                        if (!Float.isNaN(got[h]) || (bits >>> 31) != (want >>> 31)
                                || (bits & 0x003f_e000) != (want & 0x003f_e000)) {
                            fail(load + ": half 0x" + Integer.toHexString(h) + " gave 0x"
                                    + Integer.toHexString(bits) + ", want NaN like 0x" + Integer.toHexString(want));
                        }
                    } else if (bits != want) {
                        fail(load + ": half 0x" + Integer.toHexString(h) + " gave 0x" + Integer.toHexString(bits)
                                + " (" + got[h] + "), want 0x" + Integer.toHexString(want) + " ("
                                + Float.intBitsToFloat(want) + ")");
                    }
                }
            }
        }
    }

    @Test
    void everyBfloat16ConvertsExactlyCopiedAndMapped() throws IOException {
        Path p = file("BF16", 1 << 16, pad("BF16"));
        for (Safetensors.Load load : Safetensors.Load.values()) {
            try (Arena arena = Arena.ofConfined()) {
                float[] got = Safetensors.open(p, arena, load).tensor("t", arena).toArray();
                assertEquals(1 << 16, got.length);
                for (int b = 0; b < 1 << 16; b++) {
                    // bfloat16 is the top half of a float32: its 16 bits, then 16 zero bits
                    int want = b << 16;
                    int bits = Float.floatToRawIntBits(got[b]);
                    boolean nan = (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0;
                    boolean ok = nan ? Float.isNaN(got[b]) && (bits >>> 31) == (want >>> 31)
                            && (bits & 0x003f_ffff) == (want & 0x003f_ffff) : bits == want;
                    if (!ok) {
                        fail(load + ": bfloat16 0x" + Integer.toHexString(b) + " gave 0x" + Integer.toHexString(bits)
                                + ", want 0x" + Integer.toHexString(want));
                    }
                }
            }
        }
    }

    @Test
    void float64RoundsToNearestEvenFloat32ByHandWorkedBits() throws IOException {
        double[] xs = {
            1 + 0x1p-24,                 // halfway between 1 and 1 + 2^-23: to even, 1
            1 + 3 * 0x1p-24,             // halfway between 1 + 2^-23 (odd) and 1 + 2^-22 (even)
            1 + 0x1p-24 + 0x1p-52,       // just above halfway: up
            1 + 0x1p-24 - 0x1p-52,       // just below halfway: down
            0x1p128 - 0x1p104,           // the largest float
            0x1p128 - 0x1p103,           // halfway between it (odd significand) and 2^128: to infinity
            0x1p128 - 0x1p103 - 0x1p75,  // just below that halfway: the largest float
            1e300, -1e300,               // beyond float range: infinities
            0x1p-149,                    // the smallest subnormal float
            0x1p-150, -0x1p-150,         // halfway between 0 (even) and 2^-149: signed zeros
            0x1p-150 + 0x1p-200,         // just above: 2^-149
            3 * 0x1p-150,                // halfway between 2^-149 (odd) and 2^-148 (even)
            0x1p-126 - 0x1p-150,         // halfway between the largest subnormal (odd) and 2^-126
            Double.MIN_VALUE, -0.0, 0.1, Double.POSITIVE_INFINITY, Double.NEGATIVE_INFINITY,
        };
        int[] want = {
            0x3f800000, 0x3f800002, 0x3f800001, 0x3f800000,
            0x7f7fffff, 0x7f800000, 0x7f7fffff,
            0x7f800000, 0xff800000,
            0x00000001,
            0x00000000, 0x80000000,
            0x00000001,
            0x00000002,
            0x00800000,
            0x00000000, 0x80000000, 0x3dcccccd, 0x7f800000, 0xff800000,
        };
        double[] withNan = java.util.Arrays.copyOf(xs, xs.length + 1);
        withNan[xs.length] = Double.NaN;
        Path p = NpyBytes.write(dir, "d.npy", NpyBytes.file("<f8", "(" + withNan.length + ",)",
                NpyBytes.f8(withNan)));
        try (Arena arena = Arena.ofConfined()) {
            float[] got = Npy.read(p, arena).tensor().toArray();
            for (int i = 0; i < xs.length; i++) {
                assertEquals(Integer.toHexString(want[i]), Integer.toHexString(Float.floatToRawIntBits(got[i])),
                        "float64 " + xs[i] + " (" + Double.toHexString(xs[i]) + ")");
            }
            assertTrue(Float.isNaN(got[xs.length]), "NaN stays NaN");
        }
    }
}
