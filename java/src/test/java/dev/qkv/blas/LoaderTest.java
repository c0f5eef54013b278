package dev.qkv.blas;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * How {@link OpenBlas} finds its library, each case in a fresh child JVM running {@link LoaderProbe} (a
 * library loads once per JVM, so this JVM's own choice cannot be undone): an explicit path that is unusable
 * fails with a message naming it and never falls back; the default extracts and loads the bundled OpenBLAS,
 * also with two JVMs racing on one empty cache folder; the system property wins over the environment.
 */
class LoaderTest {

    private static final String MISSING = "/nonexistent/libopenblas.so.0";

    @TempDir
    Path tmp;

    /** The stdout and stderr files of each running child. */
    private final Map<Process, Path[]> outputs = new java.util.HashMap<>();

    /** What a child JVM did. */
    record Run(int exit, String out, String err) {
        String line(String key) {
            return out.lines().filter(l -> l.startsWith(key + "=")).map(l -> l.substring(key.length() + 1))
                    .findFirst().orElse(null);
        }

        @Override
        public String toString() {
            return "exit " + exit + "\n--- stdout\n" + out + "--- stderr\n" + err;
        }
    }

    /** Starts {@link LoaderProbe} in a child JVM with the given system properties and environment. */
    private Process start(Map<String, String> properties, Map<String, String> env) throws IOException {
        return start(properties, env, null);
    }

    /** As {@link #start(Map, Map)}, in the working directory {@code dir} (null: this JVM's). */
    private Process start(Map<String, String> properties, Map<String, String> env, Path dir) throws IOException {
        List<String> cmd = new ArrayList<>();
        cmd.add(ProcessHandle.current().info().command().orElseThrow());
        // the flag every qkv JVM needs for FFM downcalls
        cmd.add("--enable-native-access=ALL-UNNAMED");
        properties.forEach((k, v) -> cmd.add("-D" + k + "=" + v));
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(LoaderProbe.class.getName());
        ProcessBuilder pb = new ProcessBuilder(cmd);
        if (dir != null) {
            pb.directory(dir.toFile());
        }
        pb.environment().remove(OpenBlas.LIBRARY_ENV);
        pb.environment().putAll(env);
        Path errFile = Files.createTempFile(tmp, "err-", ".txt");
        Path outFile = Files.createTempFile(tmp, "out-", ".txt");
        pb.redirectOutput(outFile.toFile());
        pb.redirectError(errFile.toFile());
        Process p = pb.start();
        outputs.put(p, new Path[] {outFile, errFile});
        return p;
    }

    private Run finish(Process p) throws IOException, InterruptedException {
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("child JVM did not finish in 120 s");
        }
        Path[] files = outputs.remove(p);
        return new Run(p.exitValue(), Files.readString(files[0], StandardCharsets.UTF_8),
                Files.readString(files[1], StandardCharsets.UTF_8));
    }

    private Run run(Map<String, String> properties, Map<String, String> env) throws IOException, InterruptedException {
        return finish(start(properties, env));
    }

    /** A failed load: status 3 from the probe, no crash or stack trace, and no library reported. */
    private static String assertFailed(Run r) {
        assertEquals(3, r.exit(), r.toString());
        assertTrue(r.line("error") != null, r.toString());
        assertEquals(null, r.line("source"), r.toString());
        assertFalse(r.err().contains("Exception") || r.err().contains("fatal error"), r.toString());
        return r.line("error");
    }

    /**
     * A failed load, as {@link #assertFailed}, that is ({@code user}) or is not the user's own setting's fault: a
     * library the user chose that does not load is a refused setting (the CLI: exit 2, and {@code Backend.AUTO} does
     * not run without it); the bundled library not loading is not.
     */
    private static String assertFailed(Run r, boolean user) {
        String msg = assertFailed(r);
        assertEquals(String.valueOf(user), r.line("refused"), r.toString());
        return msg;
    }

    private static void assertLoaded(Run r, String source) {
        assertEquals(0, r.exit(), r.toString());
        assertEquals(source, r.line("source"), r.toString());
        assertEquals("19.0,22.0,43.0,50.0", r.line("product"), r.toString());
        assertTrue(r.line("describe").contains("OpenBLAS"), r.toString());
    }

    private static boolean isEmptyDir(Path dir) {
        if (!Files.exists(dir)) {
            return true;
        }
        try (Stream<Path> s = Files.list(dir)) {
            return s.findAny().isEmpty();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Test
    void missingPropertyPathFailsWithoutFallback() throws Exception {
        Path cache = tmp.resolve("cache-a");
        Run r = run(Map.of(OpenBlas.LIBRARY_PROPERTY, MISSING, OpenBlas.CACHE_PROPERTY, cache.toString()), Map.of());
        String msg = assertFailed(r, true);
        assertTrue(msg.contains(OpenBlas.LIBRARY_PROPERTY) && msg.contains(MISSING) && msg.contains("no such file"),
                msg);
        // no fallback: the bundled library was never extracted
        assertTrue(isEmptyDir(cache), "the bundled library was extracted after an explicit path failed");
    }

    @Test
    void environmentPathToATextFileFailsClearly() throws Exception {
        Path text = Files.writeString(tmp.resolve("libopenblas.so.0"), "not a shared object\n");
        Path cache = tmp.resolve("cache-b");
        Run r = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString()), Map.of(OpenBlas.LIBRARY_ENV, text.toString()));
        String msg = assertFailed(r, true);
        assertTrue(msg.contains(OpenBlas.LIBRARY_ENV) && msg.contains(text.toString())
                && msg.contains("not a shared library"), msg);
        // refused before the JVM's dynamic loader sees it: it warned on stderr of a "disabled stack guard" it would
        // fix, for any file that is not a shared object (header checked in this JVM's byte order as well)
        assertFalse(r.err().contains("stack guard"), r.toString());
        Path elfish = Files.write(tmp.resolve("elfish.so"), new byte[] {0x7f, 'E', 'L', 'F', 2, 1, 1, 0});
        Run truncated = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString()), Map.of(OpenBlas.LIBRARY_ENV,
                elfish.toString()));
        String truncatedMsg = assertFailed(truncated, true);
        assertTrue(truncatedMsg.contains("not a shared library"), truncatedMsg);
        assertFalse(truncated.err().contains("stack guard"), truncated.toString());
        assertTrue(isEmptyDir(cache), "the bundled library was extracted after an explicit path failed");

        // a folder is not a library either
        Run dir = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString()), Map.of(OpenBlas.LIBRARY_ENV, tmp.toString()));
        String dirMsg = assertFailed(dir, true);
        assertTrue(dirMsg.contains(tmp.toString()) && dirMsg.contains("not a readable file"), dirMsg);
    }

    /**
     * A whole ELF shared object that this JVM cannot load (32-bit, another machine's, or without a dynamic section)
     * is refused by the header check as well, with one line: each passed it, and HotSpot, which reads the program
     * headers for the stack's no-exec marker as this JVM's own kind of ELF, printed its two "disabled stack guard"
     * lines on stderr and changed the threads' stacks before the loader refused the file ("wrong ELF class:
     * ELFCLASS32", "object file has no dynamic section").
     */
    @Test
    void anElfSharedObjectThisJvmCannotLoadIsRefusedBeforeTheJvmWarns() throws Exception {
        Path cache = tmp.resolve("cache-elf");
        Map<String, Path> files = new java.util.LinkedHashMap<>();
        // ELF32 i386 shared object: one PT_LOAD, inside the file
        files.put("32-bit ELF file", Files.write(tmp.resolve("elf32.so"), elf(false, 3, 1)));
        // ELF64 aarch64 shared object (this JVM: x86-64): one PT_LOAD
        files.put("for machine 183", Files.write(tmp.resolve("aarch64.so"), elf(true, 183, 1)));
        // ELF64 x86-64 shared object with one PT_LOAD and no PT_DYNAMIC
        files.put("without a dynamic section", Files.write(tmp.resolve("nodynamic.so"), elf(true, 62, 1)));
        org.junit.jupiter.api.Assumptions.assumeTrue("amd64".equals(System.getProperty("os.arch")),
                "the files are foreign to an x86-64 JVM");
        Map<String, Process> started = new java.util.LinkedHashMap<>();
        files.forEach((why, f) -> {
            try {
                started.put(why, start(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString(),
                        OpenBlas.LIBRARY_PROPERTY, f.toString()), Map.of()));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        });
        for (Map.Entry<String, Process> e : started.entrySet()) {
            Run r = finish(e.getValue());
            String msg = assertFailed(r, true);
            assertTrue(msg.contains("not a shared library") && msg.contains(e.getKey()), msg);
            assertFalse(r.err().contains("stack guard"), r.toString());
        }
        assertTrue(isEmptyDir(cache), "the bundled library was extracted after an explicit path failed");
    }

    /**
     * A minimal little-endian ELF shared object header ({@code e_type} 3) for {@code machine}, 64- or 32-bit, with
     * one program header of type {@code phType} (1 PT_LOAD, 2 PT_DYNAMIC) right after it, spanning the file.
     */
    private static byte[] elf(boolean is64, int machine, int phType) {
        int ehsize = is64 ? 64 : 52;
        int phentsize = is64 ? 56 : 32;
        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(ehsize + phentsize)
                .order(java.nio.ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {0x7f, 'E', 'L', 'F', (byte) (is64 ? 2 : 1), 1, 1, 0});
        b.position(16);
        b.putShort((short) 3).putShort((short) machine).putInt(1);
        if (is64) {
            b.putLong(0).putLong(ehsize).putLong(0);
        } else {
            b.putInt(0).putInt(ehsize).putInt(0);
        }
        b.putInt(0).putShort((short) ehsize).putShort((short) phentsize).putShort((short) 1)
                .putShort((short) 0).putShort((short) 0).putShort((short) 0);
        int total = ehsize + phentsize;
        if (is64) {
            b.putInt(phType).putInt(5).putLong(0).putLong(0).putLong(0).putLong(total).putLong(total).putLong(4096);
        } else {
            b.putInt(phType).putInt(0).putInt(0).putInt(0).putInt(total).putInt(total).putInt(5).putInt(4096);
        }
        return b.array();
    }

    @Test
    void defaultLoadsTheBundledLibraryIntoAFreshCacheEvenWhenTwoJvmsRace() throws Exception {
        Path cache = tmp.resolve("fresh-cache");
        Map<String, String> props = Map.of(OpenBlas.CACHE_PROPERTY, cache.toString());
        Process p1 = start(props, Map.of());
        Process p2 = start(props, Map.of());
        Run r1 = finish(p1);
        Run r2 = finish(p2);
        for (Run r : List.of(r1, r2)) {
            assertLoaded(r, "BUNDLED");
            assertTrue(Path.of(r.line("path")).startsWith(cache), "loaded from outside the cache folder: " + r);
            assertTrue(r.line("describe").contains("bundled"), r.toString());
            // qkv's thread policy: OpenBLAS starts at one thread per product
            assertTrue(r.line("describe").endsWith("threads 1"), r.toString());
        }
        assertEquals(r1.line("path"), r2.line("path"));
        Path dir = Path.of(r1.line("path")).getParent();
        assertTrue(dir.getFileName().toString().matches("openblas-[0-9a-f]{24}"), dir.toString());
        try (Stream<Path> files = Files.list(dir)) {
            List<String> names = files.map(f -> f.getFileName().toString()).sorted().toList();
            assertEquals(List.of("libgcc_s.so.1", "libgfortran.so.5", "libopenblas.so.0", "libquadmath.so.0"), names,
                    "temporary files left behind or files missing");
        }

        // a second run reuses the extracted files
        long modified = Files.getLastModifiedTime(Path.of(r1.line("path"))).toMillis();
        Run again = run(props, Map.of());
        assertLoaded(again, "BUNDLED");
        assertEquals(r1.line("path"), again.line("path"));
        assertEquals(modified, Files.getLastModifiedTime(Path.of(r1.line("path"))).toMillis());

        // (d) the property wins over the environment, in both directions
        String lib = r1.line("path");
        Run propGood = run(Map.of(OpenBlas.LIBRARY_PROPERTY, lib), Map.of(OpenBlas.LIBRARY_ENV, MISSING));
        assertLoaded(propGood, "PROPERTY");
        assertEquals(lib, propGood.line("path"));
        Run propBad = run(Map.of(OpenBlas.LIBRARY_PROPERTY, MISSING), Map.of(OpenBlas.LIBRARY_ENV, lib));
        String msg = assertFailed(propBad, true);
        assertTrue(msg.contains(OpenBlas.LIBRARY_PROPERTY) && msg.contains(MISSING) && !msg.contains(OpenBlas.LIBRARY_ENV),
                msg);
        Run envGood = run(Map.of(), Map.of(OpenBlas.LIBRARY_ENV, lib));
        assertLoaded(envGood, "ENVIRONMENT");

        // a real shared object that is not OpenBLAS is refused by name
        Run notBlas = run(Map.of(OpenBlas.LIBRARY_PROPERTY, dir.resolve("libquadmath.so.0").toString()), Map.of());
        String notBlasMsg = assertFailed(notBlas, true);
        assertTrue(notBlasMsg.contains("cblas_sgemm") && notBlasMsg.contains("libquadmath.so.0"), notBlasMsg);
    }

    /**
     * A cached library damaged at its own size (a disk error, a stray write) is extracted again rather than
     * handed to the dynamic linker, which crashed on it; and a relative cache folder (resolved against the
     * working directory) loads, where it used to extract and then fail, System.load taking absolute paths only.
     */
    @Test
    void aDamagedCacheIsExtractedAgainAndARelativeCacheLoads() throws Exception {
        Path cache = tmp.resolve("damaged-cache");
        Map<String, String> props = Map.of(OpenBlas.CACHE_PROPERTY, cache.toString());
        Run first = run(props, Map.of());
        assertLoaded(first, "BUNDLED");
        Path lib = Path.of(first.line("path"));
        long size = Files.size(lib);
        byte[] original = Files.readAllBytes(lib);
        try (java.nio.channels.FileChannel ch = java.nio.channels.FileChannel.open(lib,
                java.nio.file.StandardOpenOption.WRITE)) {
            ch.write(java.nio.ByteBuffer.allocate((int) Math.min(size - 4096, 1 << 20)), 4096);
        }
        assertEquals(size, Files.size(lib));
        assertFalse(java.util.Arrays.equals(original, Files.readAllBytes(lib)), "the damage took");
        Run again = run(props, Map.of());
        assertLoaded(again, "BUNDLED");
        assertTrue(java.util.Arrays.equals(original, Files.readAllBytes(lib)), "the damaged file was not replaced");

        Path work = Files.createDirectories(tmp.resolve("work"));
        Run relative = finish(start(Map.of(OpenBlas.CACHE_PROPERTY, "rel-cache"), Map.of(), work));
        assertLoaded(relative, "BUNDLED");
        assertTrue(Path.of(relative.line("path")).startsWith(work.resolve("rel-cache")), relative.toString());
    }

    /**
     * An explicit path the JVM cannot even form (here a non-ASCII name in the C locale, whose file names are ASCII)
     * fails as every other unusable explicit path does: naming the setting, with no fallback. Before the fix the
     * InvalidPathException escaped the loader as "OpenBLAS could not be initialised: java.nio.file.Invalid
     * PathException: ...", naming neither the property nor the variable.
     */
    @Test
    void anExplicitPathTheJvmCannotFormFailsNamingTheSetting() throws Exception {
        Path cache = tmp.resolve("cache-c");
        String name = "/nonexistent/biblioth\u00e8que/libopenblas.so.0";
        Map<String, String> c = Map.of("LC_ALL", "C", "LANG", "C");
        Run env = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString()),
                Map.of("LC_ALL", "C", "LANG", "C", OpenBlas.LIBRARY_ENV, name));
        String msg = assertFailed(env, true);
        assertTrue(msg.startsWith("environment variable " + OpenBlas.LIBRARY_ENV + " = ")
                && msg.contains("not a valid path"), msg);
        Run prop = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString(), OpenBlas.LIBRARY_PROPERTY, name), c);
        String propMsg = assertFailed(prop, true);
        assertTrue(propMsg.startsWith("system property " + OpenBlas.LIBRARY_PROPERTY + " = ")
                && propMsg.contains("not a valid path"), propMsg);
        assertTrue(isEmptyDir(cache), "the bundled library was extracted after an explicit path failed");
    }

    /**
     * A JVM with no home folder ({@code user.home = ?}: a user without a passwd entry and no {@code HOME}, as in a
     * container run with {@code --user 12345}) and no cache setting fails naming the settings that would fix it, and
     * writes nothing. It used to extract 40 MB to {@code ./?/.cache/qkv} in the working directory and then fail with
     * "Expecting an absolute path of the library".
     */
    @Test
    void noHomeFolderFailsNamingTheCacheSettingsAndWritesNothing() throws Exception {
        Path work = Files.createDirectories(tmp.resolve("homeless"));
        Run r = finish(start(Map.of("user.home", "?"), Map.of("XDG_CACHE_HOME", ""), work));
        String msg = assertFailed(r, false);
        assertTrue(msg.contains("user.home = ?") && msg.contains(OpenBlas.CACHE_PROPERTY)
                && msg.contains("XDG_CACHE_HOME"), msg);
        assertTrue(isEmptyDir(work), "files were written to the working directory");
    }

    /**
     * A cache folder the JVM cannot form (a non-ASCII name in the C locale) fails naming the setting it came from,
     * as an explicit library path does; it escaped as "OpenBLAS could not be initialised: java.nio.file.Invalid
     * PathException", naming neither {@code qkv.cache.dir} nor {@code XDG_CACHE_HOME}.
     */
    @Test
    void aCacheFolderTheJvmCannotFormFailsNamingTheSetting() throws Exception {
        String name = tmp.resolve("biblioth\u00e8que").toString();
        Run prop = run(Map.of(OpenBlas.CACHE_PROPERTY, name), Map.of("LC_ALL", "C", "LANG", "C"));
        String propMsg = assertFailed(prop);
        assertTrue(propMsg.startsWith("system property " + OpenBlas.CACHE_PROPERTY + " = ")
                && propMsg.contains("not a valid path"), propMsg);
        Run env = run(Map.of(), Map.of("LC_ALL", "C", "LANG", "C", "XDG_CACHE_HOME", name));
        String envMsg = assertFailed(env);
        assertTrue(envMsg.startsWith("environment variable XDG_CACHE_HOME = ") && envMsg.contains("not a valid path"),
                envMsg);
    }

    /**
     * A cache folder the bundle cannot be extracted into says why, not only where: the JDK's exceptions for a path
     * that exists as something else (here the library's folder is a file) or that may not be written (a read-only
     * cache) carry the path alone, and the message read "could not be extracted: /path/openblas-...".
     */
    @Test
    void anUnusableCacheFolderSaysWhy() throws Exception {
        Run first = run(Map.of(OpenBlas.CACHE_PROPERTY, tmp.resolve("cache-d").toString()), Map.of());
        assertLoaded(first, "BUNDLED");
        String folder = Path.of(first.line("path")).getParent().getFileName().toString();
        Path cache = Files.createDirectories(tmp.resolve("cache-e"));
        Path blocker = Files.writeString(cache.resolve(folder), "a file where the library's folder goes\n");
        Run r = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString()), Map.of());
        String msg = assertFailed(r);
        assertTrue(msg.contains(blocker + ": exists") && msg.contains(OpenBlas.CACHE_PROPERTY), msg);
    }

    /**
     * An OpenBLAS built with 64-bit integers (ILP64: Debian's {@code libopenblas64-0} exports {@code cblas_sgemm}
     * under its plain name) is refused when it loads, before any call that passes integers: it passed the symbol
     * check, then read qkv's 32-bit sizes with garbage upper halves, and its first product aborted the JVM. Here a
     * stand-in built with the C compiler, whose {@code openblas_get_config} says {@code USE64BITINT} as such builds'
     * does, and whose every other entry point aborts: skipped where there is no {@code cc}.
     */
    @Test
    void anOpenBlasWith64BitIntegersIsRefusedBeforeAnyCall() throws Exception {
        Path c = Files.writeString(tmp.resolve("ilp64.c"), """
                #include <stdlib.h>
                const char *openblas_get_config(void) { return "OpenBLAS 0.3.21  USE64BITINT DYNAMIC_ARCH Haswell"; }
                char *openblas_get_corename(void) { abort(); }
                int openblas_get_num_threads(void) { abort(); }
                void openblas_set_num_threads(long n) { abort(); }
                void cblas_sgemm(void) { abort(); }
                void cblas_sgemv(void) { abort(); }
                """);
        Path so = tmp.resolve("libopenblas64.so.0");
        Process cc;
        try {
            cc = new ProcessBuilder("cc", "-shared", "-fPIC", "-o", so.toString(), c.toString())
                    .redirectErrorStream(true).start();
        } catch (IOException e) {
            org.junit.jupiter.api.Assumptions.abort("no C compiler: " + e.getMessage());
            return;
        }
        String ccOut = new String(cc.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        org.junit.jupiter.api.Assumptions.assumeTrue(cc.waitFor() == 0, "cc failed: " + ccOut);
        Run r = run(Map.of(OpenBlas.LIBRARY_PROPERTY, so.toString()), Map.of());
        String msg = assertFailed(r, true);
        assertTrue(msg.contains(so.toString()) && msg.contains("64-bit integers"), msg);
    }

    /**
     * A shared object built by {@code cc -shared} from {@code source}, named {@code name} in the test's folder; the
     * test is skipped where there is no C compiler.
     */
    private Path compile(String name, String source) throws IOException, InterruptedException {
        Path c = Files.writeString(tmp.resolve(name + ".c"), source);
        Path so = tmp.resolve(name);
        Process cc;
        try {
            cc = new ProcessBuilder("cc", "-shared", "-fPIC", "-o", so.toString(), c.toString())
                    .redirectErrorStream(true).start();
        } catch (IOException e) {
            org.junit.jupiter.api.Assumptions.abort("no C compiler: " + e.getMessage());
            return null;
        }
        String ccOut = new String(cc.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        org.junit.jupiter.api.Assumptions.assumeTrue(cc.waitFor() == 0, "cc failed: " + ccOut);
        return so;
    }

    /** The bundled library's folder, extracted by a first child JVM into {@code cache}. */
    private Path bundledFolder(Path cache) throws IOException, InterruptedException {
        Run first = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString()), Map.of());
        assertLoaded(first, "BUNDLED");
        return Path.of(first.line("path")).getParent();
    }

    /**
     * A library the user chose must export every symbol qkv calls itself: the symbol check looked in every library
     * loaded through qkv's class loader, so after the application had loaded an OpenBLAS of its own (here the bundled
     * one, loaded by the probe before qkv), a chosen shared object without {@code cblas_sgemm} (libquadmath) was
     * accepted, reported as the library in use, and its products ran in the other one.
     */
    @Test
    void aChosenLibraryWithoutTheSymbolsIsRefusedEvenWhenAnotherLoadedOneHasThem() throws Exception {
        Path dir = bundledFolder(tmp.resolve("cache-f"));
        String preload = String.join(java.io.File.pathSeparator, Stream.of("libgcc_s.so.1", "libquadmath.so.0",
                "libgfortran.so.5", "libopenblas.so.0").map(f -> dir.resolve(f).toString()).toList());
        Path notBlas = dir.resolve("libquadmath.so.0");
        Run r = run(Map.of("probe.preload", preload, OpenBlas.LIBRARY_PROPERTY, notBlas.toString()), Map.of());
        String msg = assertFailed(r, true);
        assertTrue(msg.contains(notBlas.toString()) && msg.contains("lacks cblas_sgemm"), msg);
    }

    /**
     * The products, the thread count and the description come from the library that was chosen, not from another
     * exporting the same names that the application loaded before it: jextract's bindings look a name up in every
     * library of the class loader, in no defined order (a hash map's of their paths), and bound a stand-in's: the
     * description read {@code config "decoy", core decoy, threads 7} and the product came out 0, 0, 0, 0, silently.
     * Here 64 copies of a stand-in whose functions do nothing (built with {@code cc}: skipped without one) are loaded
     * first, so that the old lookup picks the chosen library only when its path happens to come first (about one
     * run in 65).
     */
    @Test
    void theChosenLibraryIsTheOneCalledWhenOthersLoadedBeforeExportTheSameNames() throws Exception {
        Path dir = bundledFolder(tmp.resolve("cache-g"));
        Path decoy = compile("libdecoy.so", """
                const char *openblas_get_config(void) { return "decoy"; }
                char *openblas_get_corename(void) { return "decoy"; }
                int openblas_get_num_threads(void) { return 7; }
                void openblas_set_num_threads(int n) { (void) n; }
                void cblas_sgemm(void) { }
                void cblas_sgemv(void) { }
                """);
        List<String> copies = new ArrayList<>();
        for (int i = 0; i < 64; i++) {
            copies.add(Files.copy(decoy, tmp.resolve("libdecoy" + i + ".so")).toString());
        }
        String lib = dir.resolve("libopenblas.so.0").toString();
        Run r = run(Map.of("probe.preload", String.join(java.io.File.pathSeparator, copies),
                OpenBlas.LIBRARY_PROPERTY, lib), Map.of());
        assertLoaded(r, "PROPERTY");
        assertEquals(lib, r.line("path"), r.toString());
        assertFalse(r.line("describe").contains("decoy"), r.toString());
        assertTrue(r.line("describe").endsWith("threads 1"), r.toString());
    }

    /**
     * Temporary files that a JVM killed while extracting left in the cache folder are removed by a later JVM that
     * loads the bundle, and only those: a file is stale when it is older than a few minutes and the process named in
     * it (or, in the names of earlier versions, any process) is gone; a live JVM's file, a young file and files that
     * are not the loader's are kept. They stayed there for good, 40 MB a killed extraction.
     */
    @Test
    void staleTemporaryFilesOfKilledExtractionsAreRemovedAndLiveOnesKept() throws Exception {
        Path cache = tmp.resolve("cache-h");
        Path dir = bundledFolder(cache);
        Process gone = new ProcessBuilder("true").start();
        gone.waitFor();
        long dead = gone.pid();
        org.junit.jupiter.api.Assumptions.assumeTrue(ProcessHandle.of(dead).isEmpty(), "pid " + dead + " reused");
        long live = ProcessHandle.current().pid();
        java.nio.file.attribute.FileTime hourAgo = java.nio.file.attribute.FileTime.fromMillis(
                System.currentTimeMillis() - 3_600_000L);
        Path staleDead = dir.resolve("libopenblas.so.0." + dead + "-1.tmp");
        Path staleOldName = dir.resolve("libgfortran.so.5.1234567890123.tmp");
        Path oldButLive = dir.resolve("libopenblas.so.0." + live + "-2.tmp");
        Path youngDead = dir.resolve("libquadmath.so.0." + dead + "-3.tmp");
        Path notOurs = dir.resolve("notes.tmp");
        for (Path p : List.of(staleDead, staleOldName, oldButLive, youngDead, notOurs)) {
            Files.writeString(p, "partial\n");
            if (p != youngDead) {
                Files.setLastModifiedTime(p, hourAgo);
            }
        }
        Run again = run(Map.of(OpenBlas.CACHE_PROPERTY, cache.toString()), Map.of());
        assertLoaded(again, "BUNDLED");
        assertFalse(Files.exists(staleDead), "a dead extraction's file was left");
        assertFalse(Files.exists(staleOldName), "an old-named stale file was left");
        assertTrue(Files.exists(oldButLive), "a live process's file was removed");
        assertTrue(Files.exists(youngDead), "a young file was removed");
        assertTrue(Files.exists(notOurs), "a file that is not the loader's was removed");
    }

    /**
     * A chosen library the dynamic loader refuses (here one whose dependency is missing) is named once, as every
     * other load error names it: the message carried the JDK's own "path: " before the loader's reason, and read
     * "... = /x/libneeds.so: cannot be loaded: /x/libneeds.so: libfoo.so: cannot open shared object file" (for a
     * file in a noexec folder the loader's reason repeats it once more: three times in one line).
     */
    @Test
    void aLibraryTheLoaderRefusesIsNamedOnce() throws Exception {
        Path dep = compile("libfoo.so", "int foo(void) { return 1; }\n");
        Path c = Files.writeString(tmp.resolve("needs.c"), "int foo(void);\nint bar(void) { return foo(); }\n");
        Path so = tmp.resolve("libneeds.so");
        Process cc = new ProcessBuilder("cc", "-shared", "-fPIC", "-o", so.toString(), c.toString(),
                "-L" + tmp, "-lfoo").redirectErrorStream(true).start();
        String ccOut = new String(cc.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        org.junit.jupiter.api.Assumptions.assumeTrue(cc.waitFor() == 0, "cc failed: " + ccOut);
        Files.delete(dep);
        Run r = run(Map.of(OpenBlas.LIBRARY_PROPERTY, so.toString()), Map.of());
        String msg = assertFailed(r, true);
        assertTrue(msg.startsWith("system property " + OpenBlas.LIBRARY_PROPERTY + " = " + so + ": cannot be loaded: ")
                && msg.contains("libfoo.so"), msg);
        assertEquals(1, msg.split(java.util.regex.Pattern.quote(so.toString()), -1).length - 1,
                "the path appears more than once: " + msg);
    }
}
