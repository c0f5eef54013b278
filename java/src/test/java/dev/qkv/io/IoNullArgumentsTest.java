package dev.qkv.io;

import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.api.io.TempDir;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The library's rule for null arguments (README, exception table; attention/, mha/ and blas/ follow it) in
 * tensor/ and io/ too: a {@link NullPointerException} whose message starts with the parameter's name, before any
 * file is touched. Before, several messages were the bare name ("arena"), others the JDK's helpful text naming a
 * local variable, and {@code Npy.read(file, null)} read the file first (an empty file: "bad magic", not the null).
 */
class IoNullArgumentsTest {
    @TempDir
    Path dir;

    private static void named(String parameter, Executable call) {
        NullPointerException e = assertThrows(NullPointerException.class, call, parameter);
        assertTrue(e.getMessage() != null && e.getMessage().startsWith(parameter + " is null"),
                parameter + ": " + e.getMessage());
    }

    @Test
    void tensorMethodsNameTheNullParameter() {
        try (Arena a = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(a, 2, 3);
            MemorySegment seg = a.allocate(64);
            named("arena", () -> Tensor.allocate(null, 2, 3));
            named("shape", () -> Tensor.allocate(a, (long[]) null));
            named("arena", () -> Tensor.of(null, new float[6], 2, 3));
            named("values", () -> Tensor.of(a, null, 2, 3));
            named("segment", () -> Tensor.wrap(null, 2, 3));
            named("segment", () -> Tensor.view(null, 0, new long[] {2}, new long[] {1}));
            named("strides", () -> Tensor.view(seg, 0, new long[] {2}, null));
            named("values", () -> t.copyFrom((float[]) null));
            named("src", () -> t.copyFrom((Tensor) null));
            named("other", () -> t.overlaps(null));
        }
    }

    @Test
    void npyNamesTheNullParameterBeforeTouchingTheFile() throws Exception {
        Path empty = Files.createFile(dir.resolve("empty.npy"));
        try (Arena a = Arena.ofConfined()) {
            Tensor t = Tensor.allocate(a, 2);
            named("file", () -> Npy.read(null, a));
            named("arena", () -> Npy.read(empty, null));
            Path out = dir.resolve("out.npy");
            named("file", () -> Npy.write(null, t));
            named("tensor", () -> Npy.write(out, null));
            named("file", () -> Npy.write(null, t, () -> { }));
            named("tensor", () -> Npy.write(out, null, () -> { }));
            // public too (the command line's check of --out before any work): it threw the JDK's "Cannot invoke
            // \"java.nio.file.Path.toAbsolutePath()\" because \"file\" is null"
            named("file", () -> Npy.checkTarget(null));
            assertFalse(Files.exists(out));
        }
        assertEquals(0, Files.size(empty));
    }

    @Test
    void safetensorsNamesTheNullParameter() throws Exception {
        Path file = dir.resolve("x.safetensors");
        byte[] header = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}".getBytes(
                java.nio.charset.StandardCharsets.UTF_8);
        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(8 + header.length + 4)
                .order(java.nio.ByteOrder.LITTLE_ENDIAN);
        b.putLong(header.length).put(header).putFloat(1.5f);
        Files.write(file, b.array());
        try (Arena a = Arena.ofConfined()) {
            named("file", () -> Safetensors.open(null, a, Safetensors.Load.COPY));
            named("arena", () -> Safetensors.open(file, null, Safetensors.Load.COPY));
            named("load", () -> Safetensors.open(file, a, null));
            for (Safetensors.Load load : Safetensors.Load.values()) {
                Safetensors st = Safetensors.open(file, a, load);
                named("name", () -> st.tensor(null, a));
                named("name", () -> st.entry(null));
                named("name", () -> st.contains(null));
                // a mapped, aligned F32 tensor needs no arena, but null is refused there too: the rule does not
                // depend on the file's layout
                named("arena", () -> st.tensor("x", null));
                assertEquals(1.5f, st.tensor("x", a).get(0));
            }
        }
    }
}
