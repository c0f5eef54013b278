package dev.qkv.io;

import java.lang.foreign.Arena;
import java.nio.file.Path;

/**
 * Child JVM of {@link SafetensorsMapFailureTest}: opens {@code args[0]} with {@link Safetensors.Load#MAPPED} and
 * prints {@code opened} or the exception's class and message on one line.
 */
final class MapFailureProbe {
    private MapFailureProbe() {
    }

    public static void main(String[] args) {
        try (Arena arena = Arena.ofConfined()) {
            Safetensors.open(Path.of(args[0]), arena, Safetensors.Load.MAPPED);
            System.out.println("opened");
        } catch (Exception e) {
            System.out.println("threw " + e.getClass().getName() + ": " + e.getMessage());
        }
    }
}
