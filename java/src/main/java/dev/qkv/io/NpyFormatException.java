package dev.qkv.io;

import java.io.IOException;

/** A {@code .npy} file that qkv cannot read; the message is {@code <file>: <what is wrong>}. */
public final class NpyFormatException extends IOException {
    private static final long serialVersionUID = 1L;

    /** An exception whose message names the file and the problem. */
    public NpyFormatException(String file, String problem) {
        super(file + ": " + problem);
    }
}
