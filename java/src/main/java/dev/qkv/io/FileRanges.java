package dev.qkv.io;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;

/**
 * Positional reads of exact byte ranges, shared by the {@code .npy} and {@code .safetensors} readers: each
 * reports where a file that is shorter than expected ended, and the reader words the error.
 */
final class FileRanges {
    /** Bytes per {@code FileChannel} call on a segment: a {@code ByteBuffer} view holds at most 2^31 - 1. */
    private static final int CHUNK = 1 << 24;

    private FileRanges() {
    }

    /**
     * Fills the remaining bytes of {@code buf} from byte {@code position} of {@code ch}; returns -1, or the byte
     * position at which the file ended first.
     */
    static long read(FileChannel ch, ByteBuffer buf, long position) throws IOException {
        long pos = position;
        while (buf.hasRemaining()) {
            int got = ch.read(buf, pos);
            if (got < 0) {
                return pos;
            }
            pos += got;
        }
        return -1;
    }

    /** Fills {@code dst} from byte {@code position} of {@code ch}; returns -1, or where the file ended first. */
    static long read(FileChannel ch, MemorySegment dst, long position) throws IOException {
        long size = dst.byteSize();
        for (long at = 0; at < size; at += CHUNK) {
            long end = read(ch, dst.asSlice(at, Math.min(CHUNK, size - at)).asByteBuffer(), position + at);
            if (end >= 0) {
                return end;
            }
        }
        return -1;
    }
}
