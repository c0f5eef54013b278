package dev.qkv.cli;

import com.sun.management.HotSpotDiagnosticMXBean;
import dev.qkv.attention.Attention;
import dev.qkv.attention.Backend;
import dev.qkv.blas.BlasUnavailableException;
import dev.qkv.blas.OpenBlas;
import dev.qkv.kernel.Vectorization;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.stream.Stream;

/** {@code info}: the JDK, the OpenBLAS that was loaded, the CPU's vector features and the usable backends. */
final class InfoCommand implements Command {

    private static final String VECTOR_MODULE = "jdk.incubator.vector";

    @Override
    public String name() {
        return "info";
    }

    @Override
    public String usage() {
        return "info";
    }

    @Override
    public String summary() {
        return "JDK, OpenBLAS path/config/core/threads, CPU vector features the JVM sees, backends available.";
    }

    @Override
    public int run(List<String> args, PrintStream out, PrintStream err) throws UsageException {
        Flags.parse(name(), args, Set.of(), Set.of());
        // printed whole at the end: a setting refused on the way (the engine's when Attention loads) is one error
        // line with nothing before it, as for every command
        List<String> report = new ArrayList<>();
        report.add("jdk: " + System.getProperty("java.version") + ", " + System.getProperty("java.vm.name") + " "
                + System.getProperty("java.vm.version") + " (" + System.getProperty("java.vm.vendor") + "), "
                + System.getProperty("java.home"));
        report.add("os: " + System.getProperty("os.name") + " " + System.getProperty("os.version") + " "
                + System.getProperty("os.arch") + ", " + Runtime.getRuntime().availableProcessors() + " processors");
        report.add("cpu: " + cpu());
        report.add("vector: " + vector());

        String nativeStatus;
        // judged whether or not a library loads (as bench and the auto backend judge them): without one, get() fails
        // on the library before it reads them, and a refused value went unreported
        OpenBlas.checkSettings();
        try {
            OpenBlas blas = OpenBlas.get();
            report.add("openblas: " + blas.describe());
            nativeStatus = "yes (" + blas.library().source().name().toLowerCase(java.util.Locale.ROOT)
                    + " OpenBLAS, core " + blas.library().coreName() + ")";
        } catch (BlasUnavailableException e) {
            if (Main.refusedSetting(e)) {
                // a -Dqkv.blas.* setting it refuses, or a library the user chose that does not load, is the
                // user's to fix (Main: exit 2), not a missing library
                throw e;
            }
            report.add("openblas: unavailable: " + e.getMessage() + unapplied());
            nativeStatus = "no (" + e.getMessage() + ")";
        }
        String env = openBlasEnvironment();
        if (!env.isEmpty()) {
            report.add("openblas environment: " + env);
        }
        String blocks = Vectorization.enabled()
                ? ", " + Vectorization.packed().registerBlock() + " register blocks" : "";
        report.add("backends: native " + nativeStatus + "; java yes (" + Attention.create(Backend.JAVA).kernelName()
                + " products" + blocks + "); reference yes (scalar, double accumulation)");
        report.forEach(out::println);
        return 0;
    }

    /**
     * The {@code -Dqkv.blas.*} settings made that OpenBLAS would have taken when it loaded (threads, critical
     * downcalls), as {@code "; not applied, without a library: -D..."}, or "" when none is set: without a library they
     * have no effect, which the report says rather than leave the user to think them applied.
     */
    private static String unapplied() {
        List<String> set = new ArrayList<>();
        for (String p : List.of(OpenBlas.THREADS_PROPERTY, OpenBlas.CRITICAL_PROPERTY)) {
            String v = System.getProperty(p);
            if (v != null) {
                set.add("-D" + p + "=" + v);
            }
        }
        return set.isEmpty() ? "" : "; not applied, without a library: " + String.join(" ", set);
    }

    /** Model name and the x86 features that matter to the kernels, as the kernel reports them. */
    private static String cpu() {
        Path cpuinfo = Path.of("/proc/cpuinfo");
        if (!Files.isReadable(cpuinfo)) {
            return "unknown (no /proc/cpuinfo)";
        }
        String model = "unknown model";
        Set<String> flags = Set.of();
        try (Stream<String> lines = Files.lines(cpuinfo)) {
            for (String line : (Iterable<String>) lines::iterator) {
                int colon = line.indexOf(':');
                if (colon < 0) {
                    continue;
                }
                String key = line.substring(0, colon).strip();
                String value = line.substring(colon + 1).strip();
                if (key.equals("model name") && model.equals("unknown model")) {
                    model = value;
                } else if (key.equals("flags") && flags.isEmpty()) {
                    flags = Set.of(value.split("\\s+"));
                }
            }
        } catch (IOException | java.io.UncheckedIOException e) {
            return "unknown (" + e.getMessage() + ")";
        }
        List<String> parts = new ArrayList<>();
        for (String f : List.of("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile")) {
            parts.add(f + " " + (flags.contains(f) ? "yes" : "no"));
        }
        return model + "; " + String.join(", ", parts) + " (/proc/cpuinfo)";
    }

    /** What the JVM itself will use: the Vector API's preferred species and HotSpot's UseAVX level. */
    private static String vector() {
        String species;
        if (ModuleLayer.boot().findModule(VECTOR_MODULE).isPresent()) {
            // VectorInfo names FloatVector, so it is loaded only once the module is known to be there
            species = VectorInfo.describe();
        } else {
            species = VECTOR_MODULE + " absent (run with --add-modules " + VECTOR_MODULE + ")";
        }
        String avx;
        try {
            String level = ManagementFactory.getPlatformMXBean(HotSpotDiagnosticMXBean.class).getVMOption("UseAVX")
                    .getValue();
            avx = "; HotSpot UseAVX=" + level + (level.equals("3") ? " (AVX-512 in use)" : " (no AVX-512 code)");
        } catch (RuntimeException | LinkageError e) {
            avx = "";
        }
        return species + avx;
    }

    private static String openBlasEnvironment() {
        List<String> set = new ArrayList<>();
        for (String v : List.of("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_L2_SIZE",
                OpenBlas.LIBRARY_ENV)) {
            String value = System.getenv(v);
            if (value != null) {
                set.add(v + "=" + value);
            }
        }
        String prop = System.getProperty(OpenBlas.LIBRARY_PROPERTY);
        if (prop != null) {
            set.add("-D" + OpenBlas.LIBRARY_PROPERTY + "=" + prop);
        }
        return String.join(" ", set);
    }
}
