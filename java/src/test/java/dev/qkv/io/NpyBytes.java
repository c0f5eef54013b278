package dev.qkv.io;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Hand-built {@code .npy} bytes for tests, written here from the format description rather than by {@link Npy},
 * so that reader tests do not trust the writer.
 */
public final class NpyBytes {
    private NpyBytes() {
    }

    /** Magic, version {@code major.0}, header length and {@code header} (not padded), then {@code data}. */
    public static byte[] file(int major, String header, byte[] data) {
        byte[] h = header.getBytes(major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1);
        int prefix = major == 1 ? 10 : 12;
        ByteBuffer b = ByteBuffer.allocate(prefix + h.length + data.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', (byte) major, 0});
        if (major == 1) {
            b.putShort((short) h.length);
        } else {
            b.putInt(h.length);
        }
        return b.put(h).put(data).array();
    }

    /** A version 1.0 file with the usual header for {@code descr} and {@code shape} (a Python tuple literal). */
    public static byte[] file(String descr, String shape, byte[] data) {
        return file(1, "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }\n", data);
    }

    /** Little-endian float32 bytes. */
    public static byte[] f4(float... xs) {
        ByteBuffer b = ByteBuffer.allocate(xs.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : xs) {
            b.putFloat(x);
        }
        return b.array();
    }

    /** Little-endian float64 bytes. */
    public static byte[] f8(double... xs) {
        ByteBuffer b = ByteBuffer.allocate(xs.length * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (double x : xs) {
            b.putDouble(x);
        }
        return b.array();
    }

    /**
     * Little-endian integers of {@code size} bytes (1, 2, 4 or 8), each value truncated to its low bytes, as numpy's
     * {@code astype} would store it.
     */
    public static byte[] ints(int size, long... xs) {
        ByteBuffer b = ByteBuffer.allocate(xs.length * size);
        for (long x : xs) {
            for (int j = 0; j < size; j++) {
                b.put((byte) (x >>> (8 * j)));
            }
        }
        return b.array();
    }

    /** One byte per boolean: 1 for true, 0 for false. */
    public static byte[] b1(boolean... xs) {
        byte[] b = new byte[xs.length];
        for (int i = 0; i < xs.length; i++) {
            b[i] = (byte) (xs[i] ? 1 : 0);
        }
        return b;
    }

    /** Writes a file of float32 values with the given shape into {@code dir} and returns its path. */
    public static Path writeF4(Path dir, String name, float[] values, long... shape) throws IOException {
        return write(dir, name, file("<f4", tuple(shape), f4(values)));
    }

    /** Writes {@code bytes} to {@code dir/name} and returns the path. */
    public static Path write(Path dir, String name, byte[] bytes) throws IOException {
        Path p = dir.resolve(name);
        Files.write(p, bytes);
        return p;
    }

    /** The Python tuple literal of {@code shape}: {@code ()}, {@code (3,)}, {@code (2, 3)}. */
    public static String tuple(long... shape) {
        StringBuilder s = new StringBuilder("(");
        for (int i = 0; i < shape.length; i++) {
            s.append(i == 0 ? "" : ", ").append(shape[i]);
        }
        return s.append(shape.length == 1 ? ",)" : ")").toString();
    }
}
