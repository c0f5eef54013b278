package dev.qkv.bench;

import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Threads;
import org.openjdk.jmh.annotations.Warmup;

import java.util.concurrent.TimeUnit;

/**
 * Starting and joining a virtual thread that does nothing: the part of {@link LatencyBench#freshVirtualThread}
 * that is not qkv's, with {@link LatencyBench}'s settings. A class of its own because it reads none of
 * LatencyBench's parameters (shape, backend, threads), under which JMH ran it 12 times; its name still ends in
 * {@code LatencyBench}, so {@code LatencyBench} and {@code LatencyBench.freshVirtualThreadAlone} select it.
 */
@BenchmarkMode(Mode.SampleTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 2, time = 2)
@Measurement(iterations = 3, time = 3)
// as LatencyBench's, so that both run in the same JVM configuration
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class VirtualThreadLatencyBench {

    @Benchmark
    @Threads(1)
    public Thread freshVirtualThreadAlone() throws InterruptedException {
        Thread t = Thread.ofVirtual().start(() -> { });
        t.join();
        return t;
    }
}
