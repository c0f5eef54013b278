package dev.qkv.io;

import java.io.IOException;

/** A {@code .safetensors} file that cannot be used: malformed header, bad offsets, missing or unfit tensor. */
public final class SafetensorsException extends IOException {
    /** An error whose message already names the file and, where there is one, the tensor. */
    public SafetensorsException(String message) {
        super(message);
    }

    /** As {@link #SafetensorsException(String)}, for an I/O failure underneath. */
    public SafetensorsException(String message, Throwable cause) {
        super(message, cause);
    }
}
