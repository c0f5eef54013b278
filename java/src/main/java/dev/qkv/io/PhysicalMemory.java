package dev.qkv.io;

/**
 * The bound qkv's readers (and its command line) hold a request for memory to: this machine's physical memory. A
 * file's length bounds what it can ask for only loosely: a sparse file costs no disk, and its copy may be larger
 * than the file ({@code |b1} 4 times, {@code F16} twice). Linux lets an off-heap allocation past the free memory
 * succeed (it overcommits) and then kills the JVM while the memory is zeroed, so a copy that cannot fit in RAM at
 * all is refused before anything is allocated.
 */
public final class PhysicalMemory {
    private PhysicalMemory() {
    }

    /** Bytes of physical memory (of the container, where there is one), or Long.MAX_VALUE when the JVM cannot say. */
    public static long bytes() {
        try {
            if (java.lang.management.ManagementFactory.getOperatingSystemMXBean()
                    instanceof com.sun.management.OperatingSystemMXBean os) {
                long total = os.getTotalMemorySize();
                return total > 0 ? total : Long.MAX_VALUE;
            }
        } catch (LinkageError e) {
            // a runtime image without jdk.management: no bound
        }
        return Long.MAX_VALUE;
    }

    /** Null when {@code bytes} fit in physical memory, else the end of the message: "more than this machine's ...". */
    static String exceeded(long bytes) {
        long physical = bytes();
        return bytes <= physical ? null : "more than this machine's " + physical + " bytes of physical memory";
    }
}
