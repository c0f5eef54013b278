package dev.qkv.io;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A mapping the address space cannot hold ({@code ulimit -v} below the file's size) is refused naming the file,
 * not with the JDK's bare "Map failed". The file is sparse: it costs no disk.
 */
class SafetensorsMapFailureTest {
    @Test
    void aMappingThatDoesNotFitNamesTheFile(@TempDir Path dir) throws IOException, InterruptedException {
        Path file = dir.resolve("big.safetensors");
        long dataBytes = 4L << 30;
        byte[] header = ("{\"x\":{\"dtype\":\"F32\",\"shape\":[" + (dataBytes / 4) + "],\"data_offsets\":[0,"
                + dataBytes + "]}}").getBytes(StandardCharsets.UTF_8);
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.write(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(header.length).array());
            f.write(header);
            f.setLength(8 + header.length + dataBytes);
        }
        String javaCmd = ProcessHandle.current().info().command().orElse("java");
        // 3 GB of address space: enough for a small JVM, not for the 4 GB mapping besides it
        String cmd = "ulimit -v 3000000 && exec '" + javaCmd + "' -Xmx64m -Xss512k -XX:ReservedCodeCacheSize=32m"
                + " -XX:CompressedClassSpaceSize=32m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp '"
                + System.getProperty("java.class.path") + "' " + MapFailureProbe.class.getName() + " '" + file + "'";
        Process p = new ProcessBuilder("bash", "-c", cmd).redirectErrorStream(true).start();
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "the child JVM did not return in 60 s");
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).strip();
        assertTrue(out.startsWith("threw " + SafetensorsException.class.getName() + ": " + file + ": "), out);
        assertTrue(out.contains("map"), out);
    }
}
