package dev.qkv.bench;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.attention.SdpaOptions;
import dev.qkv.tensor.Tensor;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

import java.io.ByteArrayOutputStream;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;

/**
 * The peer issue 4 measures qkv against: ONNX Runtime for Java (CPU, MLAS kernels) running the same attention,
 * so that both are measured on the same machine in the same period. Built only with {@code -Port} (the
 * {@code ort} profile of bench/pom.xml, {@code make bench-ort}): ORT's jar is 75 MB, and the library never
 * depends on it.
 *
 * <p>{@code graph} picks how ORT is asked for attention, since no single form is its fastest at every shape:
 * <ul>
 *   <li>{@code mha}: the {@code com.microsoft.MultiHeadAttention} contrib operator (ORT's own fused CPU
 *       attention; inputs {@code [B, L, H·D]}, causal through {@code unidirectional});
 *   <li>{@code attention}: the ONNX {@code Attention} operator of opset 23 ({@code [B, H, L, D]},
 *       {@code is_causal});
 *   <li>{@code matmul}: {@code MatMul(q, kᵀ)·scale (+ causal mask) → Softmax → MatMul(·, v)}, the unfused
 *       graph (ORT folds the transpose and the scale into one {@code FusedMatMul}).
 * </ul>
 * The setup checks ORT's output against qkv's Java backend on the same inputs (max |difference| ≤ 1e-4, the
 * inputs are uniform in [-1, 1)), whose output is held to the scalar reference ({@link BenchSupport#check}), and
 * prints the difference, so a figure always belongs to a correct run.
 * ORT's intra-op pool has {@code threads} threads, its workers spinning between calls as ORT's default has them
 * unless {@code spin} is false, and ORT's defaults otherwise. The output is pinned, so a call allocates no output
 * tensor. Before JMH's warm-up ORT gets the one {@link SdpaBench} gives qkv ({@link BenchSupport#warmUp}).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsPrepend = {"--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector"})
public class OrtBench {

    /** {@code BxHxLxD} as in {@link SdpaBench}, or {@code BxHxLqxLkxD} (the decode step: {@code 1x32x1x4096x128}). */
    @Param({"1x1x128x64", "1x12x512x64", "1x8x2048x64", "1x1x4096x128", "1x32x1x4096x128"})
    public String shape;

    @Param({"mha", "attention", "matmul"})
    public String graph;

    /**
     * {@code true} only at shapes with Lq = Lk (the setup refuses the others), hence not in the default list, which
     * includes the decode step: {@code -p causal=true -p shape=1x8x2048x64} for the causal comparison.
     */
    @Param({"false"})
    public boolean causal;

    @Param({"1", "2"})
    public int threads;

    /**
     * Whether ORT's intra-op workers spin between calls ({@code session.intra_op.allow_spinning}; on by default in
     * ORT). qkv's pool parks at once unless {@code -Dqkv.pool.spinMicros} says otherwise, so {@code false} is the
     * like-for-like setting for qkv's default and {@code true} for qkv with its spin on.
     */
    @Param({"true"})
    public boolean spin;

    private Session session;

    @Setup(Level.Trial)
    public void setup() throws OrtException {
        long[] s = BenchSupport.shape(shape);
        int b = Math.toIntExact(s[0]);
        int h = Math.toIntExact(s[1]);
        int lq = Math.toIntExact(s[2]);
        int lk = Math.toIntExact(s[3]);
        int d = Math.toIntExact(s[4]);
        SplittableRandom r = new SplittableRandom(42);
        float[] q = SdpaBench.uniform(r, b * h * lq * d);
        float[] k = SdpaBench.uniform(r, b * h * lk * d);
        float[] v = SdpaBench.uniform(r, b * h * lk * d);
        session = new Session(graph, b, h, lq, lk, d, causal, threads, spin, q, k, v);
        double maxDiff = session.check(qkvJava(q, k, v, b, h, lq, lk, d));
        // the warm-up SdpaBench gives qkv before JMH's own (BenchSupport.warmUp): ORT's calls run Java too (the
        // session's run, its inputs' map, the result), compiled by the same JIT; without it ORT's figures had
        // 3 s of warm-up beside qkv's 4 s or more
        BenchSupport.warmUp("ort " + graph + " " + shape, () -> {
            try {
                session.run();
            } catch (OrtException e) {
                throw new IllegalStateException(e);
            }
        });
        System.out.println("# ort " + OrtEnvironment.getEnvironment().getVersion() + " graph=" + graph + " shape="
                + shape + (causal ? " causal" : "") + " intra_op_threads=" + threads + " spin=" + spin + " flops="
                + (long) (4.0 * b * h * lq * lk * d) + " max|ort - qkv java|=" + maxDiff + " "
                + BenchSupport.environment());
    }

    @Benchmark
    public Object ort() throws OrtException {
        return session.run();
    }

    @TearDown(Level.Trial)
    public void tearDown() throws OrtException {
        session.close();
    }

    /**
     * One ORT session running attention in one {@code graph} (see {@link OrtBench}) on fixed inputs, into a pinned
     * output: what {@link OrtBench} and {@link OrtRatio} time.
     */
    static final class Session implements AutoCloseable {
        private final String graph;
        private final int b;
        private final int h;
        private final int lq;
        private final int d;
        private final OrtSession session;
        private final Map<String, OnnxTensor> inputs = new LinkedHashMap<>();
        private final Map<String, OnnxTensor> pinned;
        private final OnnxTensor out;

        /**
         * ORT's intra-op pool of {@code threads}, spinning between calls when {@code spin}; inputs {@code q [B, H,
         * Lq, D]}, {@code k} and {@code v [B, H, Lk, D]} in row-major order.
         */
        Session(String graph, int b, int h, int lq, int lk, int d, boolean causal, int threads, boolean spin,
                float[] q, float[] k, float[] v) throws OrtException {
            if (causal && lq != lk) {
                throw new IllegalArgumentException("causal is measured only where Lq = Lk, where every definition "
                        + "of a causal mask agrees: " + b + "x" + h + "x" + lq + "x" + lk + "x" + d);
            }
            this.graph = graph;
            this.b = b;
            this.h = h;
            this.lq = lq;
            this.d = d;
            boolean bsnh = graph.equals("mha");
            long[] qShape = ioShape(graph, b, h, lq, d);
            long[] kShape = ioShape(graph, b, h, lk, d);
            OrtEnvironment env = OrtEnvironment.getEnvironment();
            inputs.put("q", tensor(env, bsnh ? bsnh(q, b, h, lq, d, false) : q, qShape));
            inputs.put("k", tensor(env, bsnh ? bsnh(k, b, h, lk, d, false) : k, kShape));
            inputs.put("v", tensor(env, bsnh ? bsnh(v, b, h, lk, d, false) : v, kShape));
            if (takesMask(graph, causal)) {
                float[] mask = new float[lq * lk];
                for (int i = 0; i < lq; i++) {
                    for (int j = i + 1; j < lk; j++) {
                        mask[i * lk + j] = Float.NEGATIVE_INFINITY;
                    }
                }
                inputs.put("mask", tensor(env, mask, new long[] {lq, lk}));
            }
            out = tensor(env, new float[b * h * lq * d], qShape);
            pinned = Map.of("o", out);

            OrtSession.SessionOptions options = new OrtSession.SessionOptions();
            options.setIntraOpNumThreads(threads);
            options.addConfigEntry("session.intra_op.allow_spinning", spin ? "1" : "0");
            options.setInterOpNumThreads(1);
            options.setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL);
            options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
            session = env.createSession(model(graph, b, h, lq, lk, d, causal), options);
        }

        /** One call. */
        Object run() throws OrtException {
            session.run(inputs, pinned).close();
            return pinned;
        }

        /**
         * Runs once and returns max |ORT − expected| over the output {@code [B, H, Lq, D]}; throws when it exceeds
         * 1e-4 (the inputs are uniform in [-1, 1)), so that a figure always belongs to a correct run.
         */
        double check(float[] expected) throws OrtException {
            run();
            float[] theirs = new float[expected.length];
            out.getFloatBuffer().get(theirs);
            if (graph.equals("mha")) {
                theirs = bsnh(theirs, b, h, lq, d, true);
            }
            double maxDiff = BenchSupport.maxDiff(expected, theirs);
            if (!(maxDiff <= 1e-4)) {
                throw new IllegalStateException("ORT's output differs from qkv's by " + maxDiff + " (graph " + graph
                        + ", shape " + b + "x" + h + "x" + lq + "x" + d + ")");
            }
            return maxDiff;
        }

        @Override
        public void close() throws OrtException {
            session.close();
            inputs.values().forEach(OnnxTensor::close);
            out.close();
        }
    }

    private float[] qkvJava(float[] q, float[] k, float[] v, int b, int h, int lq, int lk, int d) {
        Attention attention = Attention.create(Backend.JAVA, threads);
        try (Arena arena = Arena.ofConfined()) {
            Tensor tq = Tensor.allocate(arena, b, h, lq, d).copyFrom(q);
            Tensor tk = Tensor.allocate(arena, b, h, lk, d).copyFrom(k);
            Tensor tv = Tensor.allocate(arena, b, h, lk, d).copyFrom(v);
            Tensor to = Tensor.allocate(arena, b, h, lq, d);
            attention.sdpa(tq, tk, tv, to, causal ? SdpaOptions.CAUSAL : SdpaOptions.DEFAULT);
            // ORT's yardstick, itself held to the scalar reference (throws when it is wrong)
            BenchSupport.check(tq, tk, tv, to, causal);
            return to.toArray();
        }
    }

    /** A direct buffer, which ORT reads and writes in place. */
    private static OnnxTensor tensor(OrtEnvironment env, float[] data, long[] shape) throws OrtException {
        FloatBuffer buffer = ByteBuffer.allocateDirect(data.length * Float.BYTES).order(ByteOrder.nativeOrder())
                .asFloatBuffer();
        buffer.put(data).rewind();
        return OnnxTensor.createTensor(env, buffer, shape);
    }

    /** {@code [B, H, L, D]} to {@code [B, L, H·D]}, or back when {@code back}. */
    private static float[] bsnh(float[] x, int b, int h, int l, int d, boolean back) {
        float[] y = new float[x.length];
        for (int bi = 0; bi < b; bi++) {
            for (int hi = 0; hi < h; hi++) {
                for (int li = 0; li < l; li++) {
                    int bhld = ((bi * h + hi) * l + li) * d;
                    int blhd = ((bi * l + li) * h + hi) * d;
                    System.arraycopy(x, back ? blhd : bhld, y, back ? bhld : blhd, d);
                }
            }
        }
        return y;
    }

    /** The ONNX model (a serialized {@code ModelProto}) of one attention call in the chosen graph. */
    static byte[] model(String graph, int b, int h, int lq, int lk, int d, boolean causal) {
        float scale = (float) (1 / Math.sqrt(d));
        Proto g = new Proto();
        switch (graph) {
            case "mha" -> g.message(1, node("MultiHeadAttention", "com.microsoft", new String[] {"q", "k", "v"}, "o",
                    intAttribute("num_heads", h), floatAttribute("scale", scale),
                    intAttribute("unidirectional", causal ? 1 : 0)));
            case "attention" -> g.message(1, node("Attention", null, new String[] {"q", "k", "v"}, "o",
                    floatAttribute("scale", scale), intAttribute("is_causal", causal ? 1 : 0)));
            case "matmul" -> {
                Proto perm = new Proto().string(1, "perm").int64(8, 0).int64(8, 1).int64(8, 3).int64(8, 2)
                        .int64(20, 7);
                g.message(1, node("Transpose", null, new String[] {"k"}, "kt", perm));
                g.message(1, node("MatMul", null, new String[] {"q", "kt"}, "s"));
                g.message(1, node("Mul", null, new String[] {"s", "scale"}, "scaled"));
                String logits = "scaled";
                if (causal) {
                    g.message(1, node("Add", null, new String[] {"scaled", "mask"}, "masked"));
                    logits = "masked";
                }
                g.message(1, node("Softmax", null, new String[] {logits}, "p", intAttribute("axis", -1)));
                g.message(1, node("MatMul", null, new String[] {"p", "v"}, "o"));
                g.message(5, new Proto().int64(2, 1).float32(4, scale).string(8, "scale"));
            }
            default -> throw new IllegalArgumentException("graph must be mha, attention or matmul: " + graph);
        }
        g.string(2, "qkv-ort-bench");
        long[] qShape = ioShape(graph, b, h, lq, d);
        long[] kShape = ioShape(graph, b, h, lk, d);
        g.message(11, valueInfo("q", qShape)).message(11, valueInfo("k", kShape)).message(11, valueInfo("v", kShape));
        if (takesMask(graph, causal)) {
            g.message(11, valueInfo("mask", lq, lk));
        }
        g.message(12, valueInfo("o", qShape));
        return new Proto()
                .int64(1, 10) // ir_version
                .message(8, new Proto().string(1, "").int64(2, 23)) // opset_import: ai.onnx 23
                .message(8, new Proto().string(1, "com.microsoft").int64(2, 1))
                .message(7, g) // graph
                .bytes();
    }

    /** The shape of q, k, v or the output in {@code graph}: {@code [B, L, H·D]} for mha, else {@code [B, H, L, D]}. */
    private static long[] ioShape(String graph, int b, int h, int l, int d) {
        return graph.equals("mha") ? new long[] {b, l, (long) h * d} : new long[] {b, h, l, d};
    }

    /** Whether {@code graph} takes the causal mask as an input (the others have a causal attribute). */
    private static boolean takesMask(String graph, boolean causal) {
        return causal && graph.equals("matmul");
    }

    private static Proto node(String op, String domain, String[] in, String out, Proto... attributes) {
        Proto n = new Proto();
        for (String s : in) {
            n.string(1, s);
        }
        n.string(2, out).string(4, op);
        if (domain != null) {
            n.string(7, domain);
        }
        for (Proto a : attributes) {
            n.message(5, a);
        }
        return n;
    }

    private static Proto floatAttribute(String name, float value) {
        return new Proto().string(1, name).float32(2, value).int64(20, 1); // AttributeProto.FLOAT
    }

    private static Proto intAttribute(String name, long value) {
        return new Proto().string(1, name).int64(3, value).int64(20, 2); // AttributeProto.INT
    }

    /** A float tensor's {@code ValueInfoProto} with fixed dimensions. */
    private static Proto valueInfo(String name, long... dims) {
        Proto shape = new Proto();
        for (long dim : dims) {
            shape.message(1, new Proto().int64(1, dim));
        }
        Proto tensor = new Proto().int64(1, 1).message(2, shape); // elem_type FLOAT
        return new Proto().string(1, name).message(2, new Proto().message(1, tensor));
    }

    /** Just enough of the protobuf wire format to write an ONNX model: varints, fixed32 floats, nested messages. */
    private static final class Proto {
        private final ByteArrayOutputStream out = new ByteArrayOutputStream();

        private void varint(long v) {
            while ((v & ~0x7FL) != 0) {
                out.write((int) ((v & 0x7F) | 0x80));
                v >>>= 7;
            }
            out.write((int) v);
        }

        private void tag(int field, int wireType) {
            varint(((long) field << 3) | wireType);
        }

        Proto int64(int field, long v) {
            tag(field, 0);
            varint(v);
            return this;
        }

        Proto float32(int field, float v) {
            tag(field, 5);
            int bits = Float.floatToIntBits(v);
            for (int i = 0; i < 4; i++) {
                out.write((bits >>> (8 * i)) & 0xFF);
            }
            return this;
        }

        Proto string(int field, String s) {
            return bytes(field, s.getBytes(StandardCharsets.UTF_8));
        }

        Proto message(int field, Proto m) {
            return bytes(field, m.bytes());
        }

        private Proto bytes(int field, byte[] b) {
            tag(field, 2);
            varint(b.length);
            out.writeBytes(b);
            return this;
        }

        byte[] bytes() {
            return out.toByteArray();
        }
    }
}
