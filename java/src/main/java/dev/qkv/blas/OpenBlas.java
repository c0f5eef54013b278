package dev.qkv.blas;

import dev.qkv.bindings.openblas.cblas_h;
import dev.qkv.config.Settings;
import dev.qkv.tensor.Tensor;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.net.JarURLConnection;
import java.net.URL;
import java.net.URLConnection;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;
import java.util.jar.JarEntry;
import java.util.zip.CRC32;

/**
 * OpenBLAS through the Foreign Function &amp; Memory API: finds and loads the library once, and offers a
 * checked single-precision matrix product and matrix-vector product over off-heap memory.
 *
 * <p>This class is the only code that touches the jextract bindings. The library is resolved in this order,
 * and the first step that applies decides:
 * <ol>
 *   <li>a path in the system property {@code qkv.blas.library}, else in the environment variable
 *       {@code QKV_BLAS_LIBRARY}: if it is given and cannot be loaded, loading fails; there is no fallback, neither
 *       to another library nor, through {@link #optional}, to running without one ({@code Backend.AUTO});</li>
 *   <li>the OpenBLAS inside {@code org.bytedeco:openblas:0.3.31-1.5.13:linux-x86_64} on the class path,
 *       extracted to {@code $XDG_CACHE_HOME/qkv} (or {@code ~/.cache/qkv}, or the system property
 *       {@code qkv.cache.dir}) in a folder named after the SHA-256 of its files;</li>
 *   <li>the system's {@code libopenblas.so.0}.</li>
 * </ol>
 *
 * <p>Every argument of {@link #sgemm} and {@link #sgemv} is checked in Java against the segments' real sizes before the downcall,
 * so a wrong dimension, leading dimension or offset is an {@link IllegalArgumentException}, never a crash.
 *
 * <p><b>Threads.</b> A direct {@link #sgemm} or {@link #sgemv} runs on its caller and, for products OpenBLAS finds
 * large enough, on up to {@link #threads()} − 1 threads of OpenBLAS's own: 1 in all (the caller alone) unless
 * raised by {@code -Dqkv.blas.threads} or {@link #setThreads}; {@code OPENBLAS_NUM_THREADS} and
 * {@code OMP_NUM_THREADS} do not raise it (see {@link #THREADS_PROPERTY}). Direct products are the caller's own
 * work: qkv's worker pool does not count them as cores taken, so a parallel attention call made meanwhile on
 * another thread still takes its pool threads beside them.
 */
public final class OpenBlas {

    /** System property naming an OpenBLAS shared object to load instead of the bundled one. */
    public static final String LIBRARY_PROPERTY = "qkv.blas.library";
    /** Environment variable naming an OpenBLAS shared object; the system property wins over it. */
    public static final String LIBRARY_ENV = "QKV_BLAS_LIBRARY";
    /** System property naming the folder the bundled library is extracted to. */
    public static final String CACHE_PROPERTY = "qkv.cache.dir";
    /**
     * System property: OpenBLAS threads per product right after loading (default 1). qkv parallelises attention
     * over its own workers; OpenBLAS threads inside them would oversubscribe the cores, and a product's result
     * should not depend on whether it ran before or after the first attention call. {@code OPENBLAS_NUM_THREADS},
     * {@code GOTO_NUM_THREADS} and {@code OMP_NUM_THREADS} do not set this count: OpenBLAS reads them when it loads,
     * to start its own threads (at most the cores), and the count is set to this property's value right after.
     */
    public static final String THREADS_PROPERTY = "qkv.blas.threads";

    private static final String BUNDLE = "org/bytedeco/openblas/linux-x86_64/";
    /** The bundled files, dependencies first: each is loaded before the one that needs it. */
    private static final List<String> BUNDLED_FILES =
            List.of("libgcc_s.so.1", "libquadmath.so.0", "libgfortran.so.5", "libopenblas.so.0");
    private static final List<String> SYSTEM_PATHS = List.of(
            "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
            "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
            "/usr/lib64/libopenblas.so.0",
            "/usr/lib/libopenblas.so.0",
            "/usr/local/lib/libopenblas.so.0");
    private static final List<String> REQUIRED_SYMBOLS = List.of("cblas_sgemm", "cblas_sgemv", "openblas_set_num_threads",
            "openblas_get_num_threads", "openblas_get_config", "openblas_get_corename");

    private static final int ROW_MAJOR = 101;
    private static final int NO_TRANS = 111;
    private static final int TRANS = 112;

    private static volatile OpenBlas instance;
    private static BlasUnavailableException failure;

    private final BlasLibrary library;
    /** Whether small products run as critical downcalls ({@link #CRITICAL_PROPERTY}). */
    private final boolean critical;
    /** An OpenMP build: the thread count is each thread's own (see {@link #requested}). */
    private final boolean perThreadCount;

    private OpenBlas(BlasLibrary library) {
        this.library = library;
        this.critical = criticalDowncalls();
        this.perThreadCount = symbols.parallel() == 2;
        if (cblas_h.CblasRowMajor() != ROW_MAJOR || cblas_h.CblasNoTrans() != NO_TRANS || cblas_h.CblasTrans() != TRANS) {
            throw new BlasUnavailableException("cblas.h enum values differ from the CBLAS standard");
        }
    }

    /**
     * The process-wide OpenBLAS, loaded on first use.
     *
     * @throws BlasUnavailableException if no library could be loaded; the message lists what was tried
     */
    public static OpenBlas get() {
        OpenBlas i = instance;
        if (i != null) {
            return i;
        }
        synchronized (OpenBlas.class) {
            if (instance == null) {
                if (failure != null) {
                    throw new BlasUnavailableException(failure.getMessage(), failure, failure.refusedSetting());
                }
                try {
                    BlasLibrary lib = load();
                    OpenBlas blas = new OpenBlas(lib);
                    blas.setThreads(initialThreads());
                    instance = blas;
                } catch (BlasUnavailableException e) {
                    failure = e;
                    throw e;
                } catch (RuntimeException | LinkageError e) {
                    // a library the user chose that loads but cannot be set up is still the user's choice: refused,
                    // never one that Backend.AUTO runs without
                    failure = new BlasUnavailableException("OpenBLAS could not be initialised: " + e, e,
                            set(System.getProperty(LIBRARY_PROPERTY)) || set(System.getenv(LIBRARY_ENV)));
                    throw failure;
                }
            }
            return instance;
        }
    }

    /**
     * {@link #THREADS_PROPERTY}, read as strictly as the engine's {@code -Dqkv.*} settings: a decimal integer in ASCII
     * (spaces around it allowed) from 1 to 1024, by {@link Settings#parse}; anything else, an empty value included, is
     * refused (as a {@link BlasUnavailableException}, which the CLI reports), never taken as unset.
     */
    static int initialThreads() {
        String v = System.getProperty(THREADS_PROPERTY);
        if (v == null) {
            return 1;
        }
        try {
            long n = Settings.parse(v);
            if (n >= 1 && n <= 1024) {
                return (int) n;
            }
        } catch (NumberFormatException e) {
            // not an ASCII decimal integer, or past a long: reported below
        }
        throw new BlasUnavailableException("-D" + THREADS_PROPERTY + "=" + v + ": expected a thread count in 1..1024",
                null, true);
    }

    /**
     * {@link #CRITICAL_PROPERTY}: {@code true} (the default) or {@code false}, in any case, spaces around it allowed
     * ({@link Settings#booleanSetting}); anything else is refused as a {@link BlasUnavailableException}, as
     * {@link #THREADS_PROPERTY} is. It read every value but {@code false} as true ({@code off}, {@code 0}, {@code no}
     * measured critical downcalls while the user meant to turn them off).
     */
    static boolean criticalDowncalls() {
        try {
            return Settings.booleanSetting(CRITICAL_PROPERTY) != Boolean.FALSE;
        } catch (IllegalStateException e) {
            throw new BlasUnavailableException(e.getMessage(), null, true);
        }
    }

    /**
     * Refuses a {@code -Dqkv.blas.*} setting outside its values ({@link #THREADS_PROPERTY}, {@link #CRITICAL_PROPERTY})
     * with the {@link BlasUnavailableException} {@link #get} would throw, whose message starts with {@code -D} and
     * names it; loads nothing. For callers that go on without OpenBLAS when it is missing (the CLI's report of the
     * core; {@link #optional} checks them too): {@link #isAvailable} alone would take a refused setting for a
     * missing library.
     */
    public static void checkSettings() {
        initialThreads();
        criticalDowncalls();
    }

    /**
     * OpenBLAS, or null when none could be loaded for a reason that is not the user's (no library found, the bundled
     * one not loading): for callers that go on without it ({@code Backend.AUTO}, the CLI's report). A setting the
     * user made is never dropped that way: a {@code -Dqkv.blas.*} value outside its values ({@link #checkSettings},
     * checked even when no library loads), a library the user chose that does not load and a {@code -Dqkv.cache.dir}
     * the bundled library cannot be extracted to are thrown, as {@link #get} throws them
     * ({@link BlasUnavailableException#refusedSetting} true).
     */
    public static OpenBlas optional() {
        checkSettings();
        try {
            return get();
        } catch (BlasUnavailableException e) {
            if (e.refusedSetting()) {
                throw e;
            }
            return null;
        }
    }

    /**
     * True when {@link #get()} succeeds; never throws. It is false, too, for a library the user chose that does not
     * load: callers that go on without OpenBLAS use {@link #optional}, which refuses that.
     */
    public static boolean isAvailable() {
        try {
            get();
            return true;
        } catch (BlasUnavailableException e) {
            return false;
        }
    }

    /** What was loaded: source, path, {@code openblas_get_config} and {@code openblas_get_corename}. */
    public BlasLibrary library() {
        return library;
    }

    /**
     * How the library runs its threads, as {@code openblas_get_parallel} says: 0 sequential (no threads of its
     * own), 1 pthreads (the bundled build), 2 OpenMP; 1 when the library does not say.
     */
    public int parallel() {
        return symbols.parallel();
    }

    /**
     * The number of threads OpenBLAS uses for one product ({@code openblas_get_num_threads}; for an OpenMP build,
     * whose count is each thread's own, the count last set, which every product through this class runs at).
     */
    public int threads() {
        if (perThreadCount) {
            return requested;
        }
        try {
            return (int) Calls.GET_NUM_THREADS.invokeExact();
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new AssertionError("openblas_get_num_threads", t);
        }
    }

    /**
     * Sets the number of threads OpenBLAS uses for one product. This setting is process-wide; callers that run
     * products from several Java threads at once should set it to 1 so that threads × OpenBLAS threads does not
     * exceed the cores. qkv's native attention and layers set it back to 1 on every call, and a count raised while
     * one runs reaches its products too, beside its own workers: raise it only while no qkv call runs. OpenBLAS takes at most the {@code MAX_THREADS} it was built with (64 for the bundled
     * library; {@code openblas_get_config} names it) and silently caps a larger count there: {@link #threads()}
     * reads what it took. An OpenMP build keeps the count per thread ({@code omp_get_max_threads}); every
     * {@link #sgemm} and {@link #sgemv} then first sets its calling thread's count to this one, so that it is
     * process-wide there too.
     */
    public void setThreads(int threads) {
        if (threads < 1 || threads > 1024) {
            throw new IllegalArgumentException("OpenBLAS threads must be in 1..1024, got " + threads);
        }
        requested = threads;
        try {
            Calls.SET_NUM_THREADS.invokeExact(threads);
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new AssertionError("openblas_set_num_threads", t);
        }
    }

    /**
     * The addresses of {@link #REQUIRED_SYMBOLS} in the library that loaded, found in it (and the libraries it
     * needs) alone, by {@link SymbolLookup#libraryLookup}; set once, under the lock of {@link #get}, before
     * {@link #instance}, whose volatile write publishes it to {@link Calls} and {@link Critical}. Every downcall
     * goes to these: jextract's bindings look a name up in every library loaded through this class loader, in no
     * defined order (a hash map's), and bound another library's function when the application had loaded one
     * exporting the same names (an OpenBLAS of its own): the chosen library was reported, another one ran.
     */
    private static Symbols symbols;

    /** {@code ompGetMaxThreads}: the OpenMP runtime's {@code omp_get_max_threads} for an OpenMP build, else null. */
    private record Symbols(MemorySegment sgemm, MemorySegment sgemv, MemorySegment setNumThreads,
                           MemorySegment getNumThreads, int parallel, MemorySegment ompGetMaxThreads) {
    }

    /**
     * The count last set ({@link #setThreads}, or {@link #THREADS_PROPERTY} at loading): an OpenMP build runs each
     * product at its calling thread's own count, which {@link #sgemm} and {@link #sgemv} first make this one.
     */
    private static volatile int requested = 1;

    /**
     * The C signatures of the downcalls, as jextract wrote them in the bindings. Not taken from the bindings'
     * {@code cblas_h.<function>$descriptor()}: each of those initialises a holder class that also looks its
     * function up in the libraries this class loader loaded, and throws when it finds none there, which is the
     * case for every copy of qkv after the first in a JVM (see {@link #loadLibrary}; found by ClassLoaderTest).
     * DescriptorsTest checks that each equals the generated one, so regenerated bindings that change a signature
     * fail the build rather than go unnoticed.
     */
    static final class Descriptors {
        static final FunctionDescriptor OPENBLAS_SET_NUM_THREADS = FunctionDescriptor.ofVoid(cblas_h.C_INT);
        static final FunctionDescriptor OPENBLAS_GET_NUM_THREADS = FunctionDescriptor.of(cblas_h.C_INT);
        static final FunctionDescriptor OPENBLAS_GET_CONFIG = FunctionDescriptor.of(cblas_h.C_POINTER);
        static final FunctionDescriptor OPENBLAS_GET_CORENAME = FunctionDescriptor.of(cblas_h.C_POINTER);
        /** order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy. */
        static final FunctionDescriptor CBLAS_SGEMV = FunctionDescriptor.ofVoid(cblas_h.C_INT, cblas_h.C_INT,
                cblas_h.C_INT, cblas_h.C_INT, cblas_h.C_FLOAT, cblas_h.C_POINTER, cblas_h.C_INT, cblas_h.C_POINTER,
                cblas_h.C_INT, cblas_h.C_FLOAT, cblas_h.C_POINTER, cblas_h.C_INT);
        /** order, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc. */
        static final FunctionDescriptor CBLAS_SGEMM = FunctionDescriptor.ofVoid(cblas_h.C_INT, cblas_h.C_INT,
                cblas_h.C_INT, cblas_h.C_INT, cblas_h.C_INT, cblas_h.C_INT, cblas_h.C_FLOAT, cblas_h.C_POINTER,
                cblas_h.C_INT, cblas_h.C_POINTER, cblas_h.C_INT, cblas_h.C_FLOAT, cblas_h.C_POINTER, cblas_h.C_INT);
    }

    /** The thread-count downcalls, bound to {@link #symbols} when first used (after loading). */
    private static final class Calls {
        /** omp_get_max_threads, () -> int as openblas_get_num_threads; null but for an OpenMP build. */
        static final MethodHandle OMP_GET_MAX_THREADS = symbols.ompGetMaxThreads() == null ? null
                : Linker.nativeLinker().downcallHandle(symbols.ompGetMaxThreads(),
                        Descriptors.OPENBLAS_GET_NUM_THREADS, Linker.Option.critical(false));
        static final MethodHandle SET_NUM_THREADS = Linker.nativeLinker().downcallHandle(symbols.setNumThreads(),
                Descriptors.OPENBLAS_SET_NUM_THREADS);
        static final MethodHandle GET_NUM_THREADS = Linker.nativeLinker().downcallHandle(symbols.getNumThreads(),
                Descriptors.OPENBLAS_GET_NUM_THREADS);
    }

    /** One line for logs and {@code info}: path, config, core and threads. */
    public String describe() {
        return library.path() + " (" + library.source().name().toLowerCase(Locale.ROOT) + "), config \""
                + library.config() + "\", core " + library.coreName() + ", threads " + threads();
    }

    /**
     * {@code C = alpha · op(A) · op(B) + beta · C} in row-major storage, with {@code op(A) [m, k]},
     * {@code op(B) [k, n]} and {@code C [m, n]}.
     *
     * <p>Offsets and leading dimensions are in elements. Row-major {@code A} is stored {@code [m, k]} when
     * {@code ta == NO} and {@code [k, m]} when {@code ta == YES}, rows {@code lda} elements apart; likewise
     * {@code B} and {@code C}. Every argument is checked before the native call: sizes non-negative, leading
     * dimensions at least the stored row length, every element reachable inside its segment, segments native
     * and alive, and {@code C} overlapping neither {@code A} nor {@code B}.
     *
     * @throws NullPointerException when {@code ta}, {@code tb}, {@code a}, {@code b} or {@code c} is null, the
     *                              message starting with its name ({@code "a is null (sgemm)"}), before any other
     *                              check (see {@link SgemmArgs#validate})
     */
    public void sgemm(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
                      MemorySegment a, long aOffset, int lda,
                      MemorySegment b, long bOffset, int ldb,
                      float beta, MemorySegment c, long cOffset, int ldc) {
        SgemmArgs.validate(true, ta, tb, m, n, k, a, aOffset, lda, b, bOffset, ldb, c, cOffset, ldc);
        if (m == 0 || n == 0) {
            return;
        }
        if (k == 0 || alpha == 0f) {
            // no element of a or b is read (with k = 0 their offsets may lie past their segments): C = beta · C.
            // With alpha = 0 BLAS does not read A and B either, but OpenBLAS's small-matrix kernels do, so NaN in
            // them reached C at some sizes and not others: the same answer at every size, BLAS's
            SgemmArgs.betaTimesC(beta, c, cOffset, m, n, ldc);
            return;
        }
        if (perThreadCount) {
            matchThreadCount();
        }
        int tA = ta == Transpose.NO ? NO_TRANS : TRANS;
        int tB = tb == Transpose.NO ? NO_TRANS : TRANS;
        // one wrapper per kind of downcall, each compiled on its own (see Entry); a wrapper's checked
        // Throwable cannot happen (the downcall declares none), and becomes an AssertionError here
        try {
            if (critical && smallProduct(m, n, k)) {
                Entry.criticalSgemm.invokeExact(tA, tB, m, n, k, alpha, a, aOffset, lda, b, bOffset, ldb, beta, c,
                        cOffset, ldc);
            } else {
                Entry.plainSgemm.invokeExact(tA, tB, m, n, k, alpha, a, aOffset, lda, b, bOffset, ldb, beta, c,
                        cOffset, ldc);
            }
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new AssertionError("cblas_sgemm", t);
        }
    }

    /**
     * For an OpenMP build: makes the calling thread's own count ({@code omp_get_max_threads}) the one last set,
     * before a product, so that it runs at that count whichever thread calls it. No blocking call comes between
     * this and the product, so a virtual thread makes both on the same carrier, whose count this is.
     */
    private static void matchThreadCount() {
        int want = requested;
        try {
            if ((int) Calls.OMP_GET_MAX_THREADS.invokeExact() != want) {
                Calls.SET_NUM_THREADS.invokeExact(want);
            }
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new AssertionError("omp_get_max_threads", t);
        }
    }

    /**
     * The four downcall wrappers, each reached through a method handle in a field the JIT may not treat as a
     * constant (deliberately not final), so that C2 never inlines a wrapper into its caller. Each wrapper then is
     * compiled on its own, small, with the linker's adapter inlined, and the three argument slices it makes never
     * leave it. Inlined into a large caller (the attention engine's block loop), the adapter could fall outside
     * the caller's inlining budget, and then the slices escaped: 120 B per product, in some JVMs and not others
     * (bench/RESULTS.md, rounds 3 and 5). The indirect call costs a few nanoseconds per product.
     */
    private static final class Entry {
        private static final MethodType SGEMM = MethodType.methodType(void.class, int.class, int.class, int.class,
                int.class, int.class, float.class, MemorySegment.class, long.class, int.class, MemorySegment.class,
                long.class, int.class, float.class, MemorySegment.class, long.class, int.class);
        private static final MethodType SGEMV = MethodType.methodType(void.class, int.class, int.class, int.class,
                float.class, MemorySegment.class, long.class, int.class, MemorySegment.class, long.class, int.class,
                float.class, MemorySegment.class, long.class, int.class);
        // not final: see the class comment
        static MethodHandle criticalSgemm = find("criticalSgemm", SGEMM);
        static MethodHandle plainSgemm = find("plainSgemm", SGEMM);
        static MethodHandle criticalSgemv = find("criticalSgemv", SGEMV);
        static MethodHandle plainSgemv = find("plainSgemv", SGEMV);

        private static MethodHandle find(String name, MethodType type) {
            try {
                return MethodHandles.lookup().findStatic(OpenBlas.class, name, type);
            } catch (ReflectiveOperationException e) {
                throw new AssertionError(name, e);
            }
        }
    }

    private static void criticalSgemm(int tA, int tB, int m, int n, int k, float alpha,
                                      MemorySegment a, long aOffset, int lda, MemorySegment b, long bOffset, int ldb,
                                      float beta, MemorySegment c, long cOffset, int ldc) throws Throwable {
        Critical.SGEMM.invokeExact(ROW_MAJOR, tA, tB, m, n, k, alpha, a.asSlice(aOffset * Float.BYTES), lda,
                b.asSlice(bOffset * Float.BYTES), ldb, beta, c.asSlice(cOffset * Float.BYTES), ldc);
    }

    private static void plainSgemm(int tA, int tB, int m, int n, int k, float alpha,
                                   MemorySegment a, long aOffset, int lda, MemorySegment b, long bOffset, int ldb,
                                   float beta, MemorySegment c, long cOffset, int ldc) throws Throwable {
        Critical.PLAIN.invokeExact(ROW_MAJOR, tA, tB, m, n, k, alpha, a.asSlice(aOffset * Float.BYTES), lda,
                b.asSlice(bOffset * Float.BYTES), ldb, beta, c.asSlice(cOffset * Float.BYTES), ldc);
    }

    /**
     * {@code y = alpha · op(A) · x + beta · y} with {@code A} stored row-major {@code [m, n]} (leading dimension
     * {@code lda}) and {@code op(A) = A} ({@code x [n]}, {@code y [m]}) or {@code Aᵀ} ({@code x [m]},
     * {@code y [n]}); {@code x} and {@code y} are strided vectors (increments {@code incx}, {@code incy} ≥ 1).
     *
     * <p>Offsets, leading dimension and increments are in elements. Every argument is checked before the native
     * call (see {@link SgemvArgs#validate}): sizes non-negative, {@code lda ≥ max(1, n)}, every element reachable
     * inside its segment, segments native and alive, {@code y} writable and overlapping neither input. With
     * {@code beta == 0} the old {@code y} is ignored (NaN there does not propagate); with an empty reduction
     * ({@code x} of length 0) {@code y = beta · y}.
     *
     * @throws NullPointerException when {@code ta}, {@code a}, {@code x} or {@code y} is null, the message starting
     *                              with its name ({@code "x is null (sgemv)"}), before any other check
     */
    public void sgemv(Transpose ta, int m, int n, float alpha, MemorySegment a, long aOffset, int lda,
                      MemorySegment x, long xOffset, int incx, float beta, MemorySegment y, long yOffset, int incy) {
        SgemvArgs.validate(true, ta, m, n, a, aOffset, lda, x, xOffset, incx, y, yOffset, incy);
        int yLen = ta == Transpose.NO ? m : n;
        if (yLen == 0) {
            return;
        }
        if (m == 0 || n == 0 || alpha == 0f) {
            // no element of a or x is read (with an empty reduction BLAS would return without scaling y; with
            // alpha = 0 it reads neither): y = beta · y
            SgemvArgs.betaTimesY(beta, y, yOffset, yLen, incy);
            return;
        }
        if (perThreadCount) {
            matchThreadCount();
        }
        int tA = ta == Transpose.NO ? NO_TRANS : TRANS;
        try {
            if (critical && (long) m * n <= CRITICAL_FLOPS) {
                Entry.criticalSgemv.invokeExact(tA, m, n, alpha, a, aOffset, lda, x, xOffset, incx, beta, y, yOffset,
                        incy);
            } else {
                Entry.plainSgemv.invokeExact(tA, m, n, alpha, a, aOffset, lda, x, xOffset, incx, beta, y, yOffset,
                        incy);
            }
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new AssertionError("cblas_sgemv", t);
        }
    }

    private static void criticalSgemv(int tA, int m, int n, float alpha, MemorySegment a, long aOffset, int lda,
                                      MemorySegment x, long xOffset, int incx, float beta,
                                      MemorySegment y, long yOffset, int incy) throws Throwable {
        Critical.SGEMV.invokeExact(ROW_MAJOR, tA, m, n, alpha, a.asSlice(aOffset * Float.BYTES), lda,
                x.asSlice(xOffset * Float.BYTES), incx, beta, y.asSlice(yOffset * Float.BYTES), incy);
    }

    private static void plainSgemv(int tA, int m, int n, float alpha, MemorySegment a, long aOffset, int lda,
                                   MemorySegment x, long xOffset, int incx, float beta,
                                   MemorySegment y, long yOffset, int incy) throws Throwable {
        Critical.PLAIN_SGEMV.invokeExact(ROW_MAJOR, tA, m, n, alpha, a.asSlice(aOffset * Float.BYTES), lda,
                x.asSlice(xOffset * Float.BYTES), incx, beta, y.asSlice(yOffset * Float.BYTES), incy);
    }

    /**
     * The sgemm downcall handles; cblas_sgemm without the thread-state transition (see {@link #sgemm}) and the
     * ordinary one. In static final fields of a holder
     * class (initialised after the library is loaded) so that the JIT treats the handle as a constant and
     * inlines the call: through an instance field the handle is opaque, every argument segment escapes, and the
     * call costs 120 B and 250 ns more than an ordinary downcall (measured by DowncallBench).
     */
    private static final class Critical {
        // Linker.Option.critical skips the Java-to-native thread transition, which is a large share of the cost
        // of the small products attention makes (decode steps, tiny heads). Safe here: sgemm does not call back
        // into Java. OpenBLAS threads can run long for large products, so it is only used where GC latency
        // from a long critical call does not matter: below a size threshold (see sgemm).
        static final MethodHandle SGEMM = Linker.nativeLinker().downcallHandle(symbols.sgemm(),
                Descriptors.CBLAS_SGEMM, Linker.Option.critical(false));
        /**
         * The ordinary downcall, also held here rather than called through the jextract wrapper: once the
         * wrapper is compiled on its own it is too big to inline, and the slices passed to it escape (120 B
         * per product, measured at [1, 1, 4096, 128]).
         */
        static final MethodHandle PLAIN = Linker.nativeLinker().downcallHandle(symbols.sgemm(),
                Descriptors.CBLAS_SGEMM);
        /** cblas_sgemv, critical (small products) and ordinary, for the same reasons as sgemm's. */
        static final MethodHandle SGEMV = Linker.nativeLinker().downcallHandle(symbols.sgemv(),
                Descriptors.CBLAS_SGEMV, Linker.Option.critical(false));
        static final MethodHandle PLAIN_SGEMV = Linker.nativeLinker().downcallHandle(symbols.sgemv(),
                Descriptors.CBLAS_SGEMV);
    }

    /**
     * Whether sgemm's {@code m·n·k} multiply-adds (sizes non-negative) are at most {@link #CRITICAL_FLOPS}, without
     * overflow: {@code (long) m * n * k} wrapped past 2^63 to a negative count, which took a product of 2^63
     * multiply-adds for a small one (reachable only with segments of tens of terabytes: reinterpreted or sparse).
     */
    static boolean smallProduct(int m, int n, int k) {
        long mn = (long) m * n;
        // mn ≤ 2^18 and k < 2^31: the product stays below 2^49
        return k == 0 || (mn <= CRITICAL_FLOPS && mn * k <= CRITICAL_FLOPS);
    }

    /** Products (sgemm and sgemv) up to this many multiply-adds (a few microseconds) run as critical downcalls. */
    private static final long CRITICAL_FLOPS = 1L << 18;
    /**
     * System property {@code qkv.blas.critical=false} turns critical downcalls off (to measure what they save,
     * see bench/RESULTS.md); read once, when OpenBLAS loads ({@link #criticalDowncalls}).
     */
    public static final String CRITICAL_PROPERTY = "qkv.blas.critical";

    /**
     * {@code C = alpha · op(A) · op(B) + beta · C} over rank-2 tensor views. Each tensor must have unit stride
     * in one of its two dimensions: a row-major view uses its row stride as leading dimension, and a transposed
     * view (unit stride in the first dimension) is passed as the transposed operand, so {@code k.transpose()}
     * costs nothing. {@code a [m, k]}, {@code b [k, n]}, {@code c [m, n]} are the shapes after {@code ta}/{@code tb}.
     *
     * @throws NullPointerException     when an argument is null, the message starting with its name
     *                                  ({@code "c is null (matmul)"}), before any other check
     * @throws IllegalArgumentException for shapes that do not multiply, strides OpenBLAS cannot take, heap or
     *                                  misaligned memory, a read-only {@code c} or one over an input; the message
     *                                  names the tensor as passed, with its shape
     *                                  ({@code "matmul: a [3, 4]: a heap segment; ..."})
     * @throws IllegalStateException    when a tensor's arena is closed ({@code "matmul: a [3, 4]: its arena is
     *                                  closed"})
     */
    public void matmul(Transpose ta, Tensor a, Transpose tb, Tensor b, float alpha, float beta, Tensor c) {
        // the API's rule for null (README, exception table), before any other check, as sgemm's: a null flag read
        // as YES below, or flipped, gave a shape error; a null tensor was an IllegalArgumentException
        SgemmArgs.requireNonNull(ta, "ta", "matmul");
        SgemmArgs.requireNonNull(a, "a", "matmul");
        SgemmArgs.requireNonNull(tb, "tb", "matmul");
        SgemmArgs.requireNonNull(b, "b", "matmul");
        SgemmArgs.requireNonNull(c, "c", "matmul");
        rank2("a", a);
        rank2("b", b);
        rank2("c", c);
        long m = ta == Transpose.NO ? a.size(0) : a.size(1);
        long ka = ta == Transpose.NO ? a.size(1) : a.size(0);
        long kb = tb == Transpose.NO ? b.size(0) : b.size(1);
        long n = tb == Transpose.NO ? b.size(1) : b.size(0);
        if (ka != kb || c.size(0) != m || c.size(1) != n) {
            throw new IllegalArgumentException("matmul: op(a) [" + m + ", " + ka + "] · op(b) [" + kb + ", " + n
                    + "] does not give " + c.describe("c"));
        }
        // an empty c reaches no element: its strides may be anything (README, Failure contract)
        boolean cEmpty = m == 0 || n == 0;
        if (!cEmpty && c.stride(1) != 1 && !(c.size(1) <= 1)) {
            throw new IllegalArgumentException("matmul: " + c.describe("c") + " needs unit stride in its last dimension");
        }
        Operand oa = operand("a", a, ta);
        Operand ob = operand("b", b, tb);
        if (!cEmpty && c.size(0) > 1 && c.stride(0) < n) {
            throw new IllegalArgumentException("matmul: " + c.describe("c") + " rows overlap (stride " + c.stride(0) + ")");
        }
        // one row: its stride is never used, and may be anything (a view of a dimension of size 1)
        long ldcLong = m > 1 && !cEmpty ? Math.max(c.stride(0), Math.max(1, n)) : Math.max(1, n);
        if (ldcLong > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("matmul: " + c.describe("c") + ": row stride " + c.stride(0)
                    + " exceeds the 32-bit BLAS interface");
        }
        int ldc = (int) ldcLong;
        // sgemm checks these too, but names its raw operands ("sgemm: a is a heap segment", a transposed view by
        // its stored shape): here they name the caller's tensors, as passed, with their shapes
        blasOperand("a", a);
        blasOperand("b", b);
        blasOperand("c", c);
        if (!cEmpty) {
            if (c.segment().isReadOnly()) {
                throw new IllegalArgumentException("matmul: " + c.describe("c") + ": a read-only segment");
            }
            if (c.overlaps(a)) {
                throw new IllegalArgumentException("matmul: " + c.describe("c") + " overlaps " + a.describe("a"));
            }
            if (c.overlaps(b)) {
                throw new IllegalArgumentException("matmul: " + c.describe("c") + " overlaps " + b.describe("b"));
            }
        }
        sgemm(oa.t, ob.t, toInt("m", m), toInt("n", n), toInt("k", ka), alpha, a.segment(), a.offset(), oa.ld,
                b.segment(), b.offset(), ob.ld, beta, c.segment(), c.offset(), ldc);
    }

    private record Operand(Transpose t, int ld) {
    }

    private static Operand operand(String name, Tensor x, Transpose t) {
        long rows = x.size(0);
        long cols = x.size(1);
        if (rows == 0 || cols == 0) {
            // an empty operand reaches no element, whatever its strides: row-major with the least leading dimension
            return new Operand(t, toInt("ld" + name, Math.max(1, cols)));
        }
        if (x.stride(1) == 1 || cols <= 1) {
            // a single row's stride is never used (see ldc)
            long ld = rows > 1 ? Math.max(x.stride(0), Math.max(1, cols)) : Math.max(1, cols);
            if (rows > 1 && x.stride(0) < cols) {
                throw new IllegalArgumentException("matmul: " + x.describe(name) + " rows overlap (stride "
                        + x.stride(0) + ")");
            }
            return new Operand(t, toInt("ld" + name, ld));
        }
        if (x.stride(0) == 1 || rows <= 1) {
            long ld = Math.max(x.stride(1), Math.max(1, rows));
            if (x.stride(1) < rows) {
                throw new IllegalArgumentException("matmul: " + x.describe(name) + " columns overlap (stride "
                        + x.stride(1) + ")");
            }
            return new Operand(t.flip(), toInt("ld" + name, ld));
        }
        throw new IllegalArgumentException("matmul: " + x.describe(name) + " with strides "
                + java.util.Arrays.toString(x.strides()) + " has no unit stride");
    }

    /**
     * Refuses, naming {@code t} as {@code name} with its shape, memory OpenBLAS cannot be handed (heap, or floats at
     * an address that is not a multiple of 4) and memory this thread cannot use: what {@link SgemmArgs#validate}
     * refuses for every operand, empty or not. Builds a string only when it throws.
     */
    private static void blasOperand(String name, Tensor t) {
        MemorySegment s = t.segment();
        if (!SgemmArgs.blasReady(s)) {
            throw new IllegalArgumentException("matmul: " + t.describe(name) + (s.isNative()
                    ? ": floats at address " + s.address() + ", not a multiple of 4; OpenBLAS needs them aligned"
                    : ": a heap segment; OpenBLAS needs off-heap memory"));
        }
        if (!Tensor.usable(s)) {
            Tensor.requireUsable(s, "matmul: " + t.describe(name));
        }
    }

    private static void rank2(String name, Tensor t) {
        if (t.rank() != 2) {
            throw new IllegalArgumentException("matmul: " + t.describe(name) + " must have rank 2");
        }
    }

    private static int toInt(String what, long v) {
        if (v > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("matmul: " + what + "=" + v + " exceeds the 32-bit BLAS interface");
        }
        return (int) v;
    }

    // ---------------------------------------------------------------- loading

    /** Whether a setting's value is given (not absent or blank, which leave it unset). */
    private static boolean set(String value) {
        return value != null && !value.isBlank();
    }

    private static BlasLibrary load() {
        String prop = System.getProperty(LIBRARY_PROPERTY);
        if (set(prop)) {
            return loadExplicit(BlasLibrary.Source.PROPERTY, "system property " + LIBRARY_PROPERTY, prop);
        }
        String env = System.getenv(LIBRARY_ENV);
        if (set(env)) {
            return loadExplicit(BlasLibrary.Source.ENVIRONMENT, "environment variable " + LIBRARY_ENV, env);
        }
        List<String> tried = new ArrayList<>();
        ClassLoader cl = OpenBlas.class.getClassLoader();
        if (isLinuxX64() && cl.getResource(BUNDLE + "libopenblas.so.0") != null) {
            Path dir;
            try {
                dir = extractBundle(cl);
            } catch (IOException | UncheckedIOException e) {
                // into a folder the user chose (-Dqkv.cache.dir): that setting's fault, never one to run without
                String chosen = System.getProperty(CACHE_PROPERTY);
                boolean user = set(chosen);
                throw new BlasUnavailableException("bundled OpenBLAS (org.bytedeco:openblas) could not be extracted"
                        + (user ? " to -D" + CACHE_PROPERTY + "=" + chosen : "") + ": " + reason(e) + " (set -D"
                        + CACHE_PROPERTY + " or XDG_CACHE_HOME to a writable folder, or -D" + LIBRARY_PROPERTY + " / "
                        + LIBRARY_ENV + " to an OpenBLAS)", e, user);
            }
            Path so = dir.resolve("libopenblas.so.0");
            for (String f : BUNDLED_FILES) {
                Path file = dir.resolve(f);
                try {
                    loadLibrary(file);
                } catch (UnsatisfiedLinkError e) {
                    // from a folder the user chose, e.g. on a file system mounted noexec: that setting's fault too
                    String chosen = System.getProperty(CACHE_PROPERTY);
                    boolean user = set(chosen);
                    throw new BlasUnavailableException("bundled OpenBLAS " + file + ": cannot be loaded: "
                            + loaderReason(file, e) + (user ? " (extracted to -D" + CACHE_PROPERTY + "=" + chosen
                            + "; choose a folder libraries may be loaded from)" : ""), e, user);
                }
            }
            return describeLoaded(BlasLibrary.Source.BUNDLED, so, "bundled OpenBLAS " + so);
        }
        tried.add(isLinuxX64() ? "bundled org.bytedeco:openblas (not on the class path)"
                : "bundled org.bytedeco:openblas (only for linux x86-64, this is " + System.getProperty("os.name")
                + " " + System.getProperty("os.arch") + ")");
        for (String p : SYSTEM_PATHS) {
            Path path = Path.of(p);
            if (!Files.isRegularFile(path)) {
                tried.add(p + " (absent)");
                continue;
            }
            try {
                loadLibrary(path);
                return describeLoaded(BlasLibrary.Source.SYSTEM, path, "system OpenBLAS " + p);
            } catch (UnsatisfiedLinkError e) {
                tried.add(p + " (cannot be loaded: " + loaderReason(path, e) + ")");
            }
        }
        throw new BlasUnavailableException("no OpenBLAS found; tried: " + String.join("; ", tried)
                + ". Set -D" + LIBRARY_PROPERTY + "=/path/to/libopenblas.so.0 or " + LIBRARY_ENV + ".");
    }

    /**
     * Loads the shared object {@code file} into the process, as {@link System#load}. That refuses a file another
     * class loader of this JVM loaded ("already loaded in another classloader"): a second copy of qkv (an
     * application server that redeploys, two applications that each bundle qkv) then had no OpenBLAS, NATIVE
     * failed and AUTO ran the Java kernels (found by ClassLoaderTest). Such a file is in the process already,
     * so it is taken as loaded: {@link #describeLoaded} opens it through the dynamic loader
     * ({@link SymbolLookup#libraryLookup}, a reference of its own that is never released), which hands back the
     * same library, and finds its symbols there as for the first copy.
     *
     * @throws UnsatisfiedLinkError as {@link System#load}, when the dynamic loader refuses the file
     */
    private static void loadLibrary(Path file) {
        try {
            System.load(file.toString());
        } catch (UnsatisfiedLinkError e) {
            if (!String.valueOf(e.getMessage()).contains("already loaded in another classloader")) {
                throw e;
            }
        }
    }

    /**
     * Why the dynamic loader refused {@code file}, without the path: each load error names the library once, before
     * it, and the JDK's message starts with {@code "<path>: "}, which the loader's own reason often repeats
     * ({@code "/x/lib.so: /x/lib.so: failed to map segment from shared object"}): the path stood two or three times
     * in one line.
     */
    static String loaderReason(Path file, UnsatisfiedLinkError e) {
        String m = String.valueOf(e.getMessage());
        String prefix = file + ": ";
        while (m.startsWith(prefix) && m.length() > prefix.length()) {
            m = m.substring(prefix.length());
        }
        return m;
    }

    /**
     * {@code e}'s message with the reason it failed: the JDK's {@link java.nio.file.AccessDeniedException} and
     * {@link java.nio.file.FileAlreadyExistsException} carry the path alone, and a read-only cache folder read
     * "could not be extracted: /path/to/cache", without saying why.
     */
    static String reason(Exception e) {
        Throwable t = e instanceof UncheckedIOException u && u.getCause() != null ? u.getCause() : e;
        if (t instanceof java.nio.file.FileSystemException f && f.getReason() == null) {
            String why = switch (f) {
                case java.nio.file.AccessDeniedException x -> "permission denied";
                case java.nio.file.NoSuchFileException x -> "no such file";
                case java.nio.file.FileAlreadyExistsException x -> "exists, and is not what is expected there";
                case java.nio.file.NotDirectoryException x -> "not a folder";
                case java.nio.file.DirectoryNotEmptyException x -> "a folder that is not empty";
                default -> f.getClass().getSimpleName();
            };
            return f.getMessage() + ": " + why;
        }
        return t.getMessage() != null ? t.getMessage() : t.toString();
    }

    /**
     * The library the user chose ({@code origin} names the setting, {@code value} is its path); any failure is a
     * {@link BlasUnavailableException#refusedSetting refused setting}: the user named a library that is not one qkv
     * can use, which no caller may take for a missing OpenBLAS to go on without.
     */
    private static BlasLibrary loadExplicit(BlasLibrary.Source source, String origin, String value) {
        try {
            return loadExplicitPath(source, origin, value);
        } catch (BlasUnavailableException e) {
            throw new BlasUnavailableException(e.getMessage(), e.getCause(), true);
        }
    }

    private static BlasLibrary loadExplicitPath(BlasLibrary.Source source, String origin, String value) {
        String what = origin + " = " + value;
        Path path = path(origin, value, "", " (an explicit library path never falls back)").toAbsolutePath();
        if (!Files.exists(path)) {
            throw new BlasUnavailableException(what + ": no such file (an explicit library path never falls back)");
        }
        if (!Files.isRegularFile(path) || !Files.isReadable(path)) {
            throw new BlasUnavailableException(what + ": not a readable file (an explicit library path never falls back)");
        }
        String notShared = notASharedObject(path);
        if (notShared != null) {
            throw new BlasUnavailableException(what + ": not a shared library this JVM can load (" + notShared
                    + "; an explicit library path never falls back)");
        }
        try {
            loadLibrary(path);
        } catch (UnsatisfiedLinkError e) {
            throw new BlasUnavailableException(what + ": cannot be loaded: " + loaderReason(path, e), e);
        }
        return describeLoaded(source, path, what);
    }

    /**
     * On Linux, why {@code file} is not an ELF shared object for this JVM (its word size, byte order and machine)
     * whose program headers lie inside it and name a dynamic section, or null when it is one (or this is not
     * Linux). HotSpot looks for the stack's no-exec marker in a file before it asks the dynamic
     * loader to open it; in a file that is not a whole ELF object it finds none, prints two lines of its own on
     * stderr ("You have loaded library ... which might have disabled stack guard. The VM will try to fix the stack
     * guard now.") and changes the protection of the threads' stacks, for a file the loader then refuses anyway.
     */
    static String notASharedObject(Path file) {
        if (!System.getProperty("os.name", "").toLowerCase(Locale.ROOT).contains("linux")) {
            return null;
        }
        // one channel for the header and, further down, the program headers it points to
        try (java.nio.channels.FileChannel ch = java.nio.channels.FileChannel.open(file)) {
            return notASharedObject(ch);
        } catch (IOException e) {
            return "unreadable: " + reason(e);
        }
    }

    private static String notASharedObject(java.nio.channels.FileChannel ch) throws IOException {
        long size = ch.size();
        ByteBuffer head = ByteBuffer.allocate(64);
        while (head.hasRemaining() && ch.read(head, head.position()) > 0) {
            // a short read: the rest of the header, or the end of a shorter file
        }
        byte[] h = head.array();
        int n = head.position();
        if (n < 4 || h[0] != 0x7f || h[1] != 'E' || h[2] != 'L' || h[3] != 'F') {
            return "no ELF header";
        }
        boolean is64 = h[4] == 2;
        if ((h[4] != 1 && !is64) || (h[5] != 1 && h[5] != 2) || n < (is64 ? 64 : 52)) {
            return "a truncated or malformed ELF header";
        }
        ByteBuffer b = ByteBuffer.wrap(h, 0, n).order(h[5] == 1 ? java.nio.ByteOrder.LITTLE_ENDIAN
                : java.nio.ByteOrder.BIG_ENDIAN);
        int type = Short.toUnsignedInt(b.getShort(16));
        if (type != 3) {
            return "an ELF file of type " + type + ", not a shared object (type 3)";
        }
        // a shared object of another word size, byte order or machine passed the checks above, and HotSpot, whose
        // own reading of the program headers assumes this JVM's, warned of the stack guard before the loader
        // refused it ("wrong ELF class: ELFCLASS32")
        boolean jvm64 = !"32".equals(System.getProperty("sun.arch.data.model"));
        if (is64 != jvm64) {
            return "a " + (is64 ? 64 : 32) + "-bit ELF file, this JVM is " + (jvm64 ? 64 : 32) + "-bit";
        }
        boolean little = h[5] == 1;
        if (little != (java.nio.ByteOrder.nativeOrder() == java.nio.ByteOrder.LITTLE_ENDIAN)) {
            return "a " + (little ? "little" : "big") + "-endian ELF file, this machine is not";
        }
        int machine = Short.toUnsignedInt(b.getShort(18));
        int want = elfMachine(System.getProperty("os.arch", ""));
        if (want >= 0 && machine != want) {
            return "an ELF file for machine " + machine + ", not this JVM's " + System.getProperty("os.arch")
                    + " (" + want + ")";
        }
        long phoff = is64 ? b.getLong(32) : Integer.toUnsignedLong(b.getInt(28));
        long phentsize = Short.toUnsignedInt(b.getShort(is64 ? 54 : 42));
        long phnum = Short.toUnsignedInt(b.getShort(is64 ? 56 : 44));
        if (phoff < 0 || phnum == 0 || phoff > size || phentsize * phnum > size - phoff) {
            return "a truncated ELF file: its program headers are not inside it";
        }
        int entry = is64 ? 56 : 32;
        if (phentsize != entry) {
            return "a malformed ELF file: program header entries of " + phentsize + " bytes, not " + entry;
        }
        // the dynamic loader opens no shared object without a dynamic section; HotSpot, which looks for its stack
        // marker first, warned of the stack guard for such a file too ("object file has no dynamic section")
        ByteBuffer ph = ByteBuffer.allocate((int) (phentsize * phnum)).order(b.order());
        while (ph.hasRemaining()) {
            if (ch.read(ph, phoff + ph.position()) < 0) {
                return "a truncated ELF file: its program headers are not inside it";
            }
        }
        for (int i = 0; i < phnum; i++) {
            if (ph.getInt(i * entry) == 2) { // PT_DYNAMIC
                return null;
            }
        }
        return "an ELF file without a dynamic section (PT_DYNAMIC), which no dynamic loader opens";
    }

    /** The ELF {@code e_machine} of the JVM's {@code os.arch}, or -1 when not known here (then not checked). */
    private static int elfMachine(String arch) {
        return switch (arch) {
            case "amd64", "x86_64" -> 62;
            case "aarch64" -> 183;
            case "x86", "i386", "i486", "i586", "i686" -> 3;
            case "riscv64" -> 243;
            case "ppc64le", "ppc64" -> 21;
            case "s390x" -> 22;
            default -> -1;
        };
    }

    /**
     * Checks that {@code path}, just loaded, exports every one of {@link #REQUIRED_SYMBOLS} itself and is an LP64
     * OpenBLAS, reads what it is, and sets {@link #symbols} to its functions. The symbols are looked up in that file
     * (and the libraries it needs) alone: the class loader's lookup, which this used, found them in any library
     * loaded through it before, and a chosen shared object without {@code cblas_sgemm} was accepted when the
     * application had loaded an OpenBLAS of its own.
     */
    private static BlasLibrary describeLoaded(BlasLibrary.Source source, Path path, String what) {
        SymbolLookup lookup;
        try {
            // the file System.load just loaded: the dynamic loader hands back the same handle, never unloaded
            lookup = SymbolLookup.libraryLookup(path, java.lang.foreign.Arena.global());
        } catch (IllegalArgumentException e) {
            throw new BlasUnavailableException(what + ": loaded, but its symbols cannot be looked up: "
                    + e.getMessage(), e);
        }
        List<String> missing = new ArrayList<>();
        MemorySegment[] found = new MemorySegment[REQUIRED_SYMBOLS.size()];
        for (int i = 0; i < found.length; i++) {
            String sym = REQUIRED_SYMBOLS.get(i);
            found[i] = lookup.find(sym).orElse(null);
            if (found[i] == null) {
                missing.add(sym);
            }
        }
        if (!missing.isEmpty()) {
            throw new BlasUnavailableException(what + ": loaded, but it lacks " + String.join(", ", missing)
                    + " (is it OpenBLAS?)");
        }
        Linker linker = Linker.nativeLinker();
        // openblas_get_config takes no arguments, so it is safe to call on any build; every other call passes ints
        String config = cString(call(linker.downcallHandle(found[REQUIRED_SYMBOLS.indexOf("openblas_get_config")],
                Descriptors.OPENBLAS_GET_CONFIG), "openblas_get_config"));
        if (config.contains("USE64BITINT")) {
            // an ILP64 build (Debian's libopenblas64-0, say) exports the same names with 64-bit integer arguments:
            // it read qkv's 32-bit sizes with garbage upper halves, and its first product aborted the JVM
            throw new BlasUnavailableException(what + ": an OpenBLAS with 64-bit integers (config \"" + config
                    + "\"); qkv calls the 32-bit integer (LP64) interface, which this library would misread: use an"
                    + " LP64 build (libopenblas.so.0, not libopenblas64)");
        }
        String core = cString(call(linker.downcallHandle(found[REQUIRED_SYMBOLS.indexOf("openblas_get_corename")],
                Descriptors.OPENBLAS_GET_CORENAME), "openblas_get_corename"));
        // openblas_get_parallel (0: sequential, 1: pthreads, 2: OpenMP), in every OpenBLAS since 0.2.x; takes no
        // arguments. Without it, taken for pthreads, as the bundled build is
        int parallel = lookup.find("openblas_get_parallel")
                .map(f -> call(linker.downcallHandle(f, Descriptors.OPENBLAS_GET_NUM_THREADS)))
                .orElse(1);
        // an OpenMP build takes each product's thread count from omp_get_max_threads() of the thread that calls
        // it, which openblas_set_num_threads sets for the calling thread only: the count set once, on one thread,
        // left every other thread's products on a team of OMP_NUM_THREADS (else one per core) threads, beside
        // qkv's own workers (OpenMpThreadsTest). Each product first matches its thread's count to the one set
        // (see sgemm), reading it from the OpenMP runtime the library links (libgomp, libomp)
        MemorySegment ompMax = null;
        if (parallel == 2) {
            ompMax = lookup.find("omp_get_max_threads").orElseThrow(() -> new BlasUnavailableException(what
                    + ": an OpenMP build of OpenBLAS whose OpenMP runtime exports no omp_get_max_threads: qkv"
                    + " cannot keep its products at the thread count set; use a pthreads or serial build"));
        }
        symbols = new Symbols(found[REQUIRED_SYMBOLS.indexOf("cblas_sgemm")],
                found[REQUIRED_SYMBOLS.indexOf("cblas_sgemv")],
                found[REQUIRED_SYMBOLS.indexOf("openblas_set_num_threads")],
                found[REQUIRED_SYMBOLS.indexOf("openblas_get_num_threads")], parallel, ompMax);
        return new BlasLibrary(source, path, config, core);
    }

    /** Calls a downcall {@code () -> int} (openblas_get_parallel). */
    private static int call(MethodHandle handle) {
        try {
            return (int) handle.invokeExact();
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new AssertionError(t);
        }
    }

    /** Calls a downcall {@code () -> char *} (openblas_get_config, openblas_get_corename). */
    private static MemorySegment call(MethodHandle handle, String name) {
        try {
            return (MemorySegment) handle.invokeExact();
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new AssertionError(name, t);
        }
    }

    private static String cString(MemorySegment p) {
        return MemorySegment.NULL.equals(p) ? "" : p.reinterpret(4096).getString(0).trim();
    }

    private static boolean isLinuxX64() {
        String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
        String arch = System.getProperty("os.arch", "");
        return os.contains("linux") && (arch.equals("amd64") || arch.equals("x86_64"));
    }

    /**
     * Copies the bundled shared objects into {@code <cache>/openblas-<hash>/}, unless a previous run already
     * did. Each file is written to a temporary name in the same folder and renamed into place atomically, so
     * JVMs extracting at the same time never see (or load) a partial file.
     *
     * <p>The folder's hash covers every file's name, size and content checksum. Inside a jar the content
     * checksum is the CRC-32 the jar records for the entry, so a JVM start inflates no library bytes once the
     * cache is filled (inflating and hashing 40 MB took most of a second per start); outside a jar the bytes
     * are hashed. A cached file is used only when its own CRC-32 (read from the cache, tens of milliseconds)
     * matches: one damaged at the same size would crash the dynamic linker, so it is extracted again.
     */
    private static Path extractBundle(ClassLoader cl) throws IOException {
        MessageDigest sha;
        try {
            sha = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
        long[] sizes = new long[BUNDLED_FILES.size()];
        long[] crcs = new long[BUNDLED_FILES.size()];
        for (int i = 0; i < sizes.length; i++) {
            String f = BUNDLED_FILES.get(i);
            URL url = cl.getResource(BUNDLE + f);
            if (url == null) {
                throw new IOException(BUNDLE + f + " is missing from the class path");
            }
            sha.update(f.getBytes(StandardCharsets.UTF_8));
            URLConnection conn = url.openConnection();
            JarEntry entry = conn instanceof JarURLConnection jar ? jar.getJarEntry() : null;
            if (entry != null && entry.getSize() >= 0 && entry.getCrc() != -1) {
                sizes[i] = entry.getSize();
                crcs[i] = entry.getCrc();
                sha.update(ByteBuffer.allocate(17).putLong(entry.getSize()).putLong(entry.getCrc()).put((byte) 1).flip());
            } else {
                try (InputStream in = url.openStream()) {
                    byte[] bytes = in.readAllBytes();
                    sizes[i] = bytes.length;
                    CRC32 crc = new CRC32();
                    crc.update(bytes);
                    crcs[i] = crc.getValue();
                    sha.update(ByteBuffer.allocate(9).putLong(bytes.length).put((byte) 2).flip());
                    sha.update(bytes);
                }
            }
        }
        String hash = HexFormat.of().formatHex(sha.digest()).substring(0, 24);
        Path dir = cacheRoot().resolve("openblas-" + hash);
        Files.createDirectories(dir);
        removeStaleTemporaryFiles(dir);
        for (int i = 0; i < sizes.length; i++) {
            String f = BUNDLED_FILES.get(i);
            Path target = dir.resolve(f);
            // the cached file is used when its size and CRC-32 are the bundle's: a file corrupted at the same size
            // (a disk error, a stray write) crashed the dynamic linker; it is now extracted again
            if (Files.isRegularFile(target) && Files.size(target) == sizes[i] && crc32(target) == crcs[i]) {
                continue;
            }
            // named after this process, so that a later JVM can tell a killed extraction's file from a live one's
            Path tmp = Files.createTempFile(dir, f + "." + ProcessHandle.current().pid() + "-", ".tmp");
            try {
                try (InputStream in = cl.getResourceAsStream(BUNDLE + f)) {
                    if (in == null) {
                        throw new IOException(BUNDLE + f + " is missing from the class path");
                    }
                    Files.copy(in, tmp, StandardCopyOption.REPLACE_EXISTING);
                }
                if (Files.size(tmp) != sizes[i]) {
                    throw new IOException(BUNDLE + f + ": extracted " + Files.size(tmp) + " bytes, expected " + sizes[i]);
                }
                try {
                    Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
                } catch (AtomicMoveNotSupportedException e) {
                    Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
                }
            } finally {
                Files.deleteIfExists(tmp);
            }
        }
        return dir;
    }

    /** How old a temporary file of the cache must be (last written) before a later JVM may remove it. */
    static final long STALE_TEMPORARY_MILLIS = 10 * 60_000L;

    /**
     * Removes from {@code dir} the temporary files of extractions that will never finish: a JVM killed while it
     * extracted left its {@code <file>.<pid>-<n>.tmp} (or, from earlier versions, {@code <file>.<n>.tmp}) there for
     * good, up to 40 MB each. A file is removed only when it is one of those names, was last written more than
     * {@link #STALE_TEMPORARY_MILLIS} ago (a live extraction writes its file within seconds and renames it at
     * once), and the process its name gives is not running on this machine (a stopped JVM that is still alive
     * keeps its file; a pid reused by another process only keeps a file longer). Either test alone is not safe: the
     * age alone would take a live but stopped JVM's file, and the pid alone a file of another machine or PID
     * namespace sharing the folder. Best effort: a file that cannot be read or removed is left.
     */
    static void removeStaleTemporaryFiles(Path dir) {
        long now = System.currentTimeMillis();
        try (java.util.stream.Stream<Path> files = Files.list(dir)) {
            for (Path p : (Iterable<Path>) files::iterator) {
                String name = p.getFileName().toString();
                long pid = temporaryFilePid(name);
                if (pid == NOT_TEMPORARY || (pid >= 0 && ProcessHandle.of(pid).isPresent())) {
                    continue;
                }
                try {
                    if (now - Files.getLastModifiedTime(p).toMillis() > STALE_TEMPORARY_MILLIS
                            && Files.isRegularFile(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
                        Files.deleteIfExists(p);
                    }
                } catch (IOException e) {
                    // gone already (another JVM removed it), or not ours to remove: left
                }
            }
        } catch (IOException | UncheckedIOException e) {
            // the folder cannot be listed: extraction reports what is wrong with it
        }
    }

    private static final long NOT_TEMPORARY = -2;

    /**
     * For a name {@code <bundled file>.<pid>-<digits>.tmp}, the pid; for {@code <bundled file>.<digits>.tmp} (the
     * names of earlier versions, which name no process) -1; for any other name {@link #NOT_TEMPORARY}.
     */
    static long temporaryFilePid(String name) {
        for (String f : BUNDLED_FILES) {
            if (!name.startsWith(f + ".") || !name.endsWith(".tmp")) {
                continue;
            }
            String mid = name.substring(f.length() + 1, name.length() - ".tmp".length());
            int dash = mid.indexOf('-');
            String pid = dash < 0 ? "" : mid.substring(0, dash);
            String rest = dash < 0 ? mid : mid.substring(dash + 1);
            if (!digits(rest) || (dash >= 0 && !digits(pid))) {
                continue;
            }
            if (dash < 0) {
                return -1;
            }
            try {
                return Long.parseLong(pid);
            } catch (NumberFormatException e) {
                return NOT_TEMPORARY;
            }
        }
        return NOT_TEMPORARY;
    }

    private static boolean digits(String s) {
        if (s.isEmpty() || s.length() > 20) {
            return false;
        }
        for (int i = 0; i < s.length(); i++) {
            if (s.charAt(i) < '0' || s.charAt(i) > '9') {
                return false;
            }
        }
        return true;
    }

    /** The CRC-32 of {@code file}'s bytes (tens of milliseconds for the bundle's 40 MB). */
    private static long crc32(Path file) throws IOException {
        CRC32 crc = new CRC32();
        byte[] buf = new byte[1 << 16];
        try (InputStream in = Files.newInputStream(file)) {
            for (int n; (n = in.read(buf)) > 0; ) {
                crc.update(buf, 0, n);
            }
        }
        return crc.getValue();
    }

    /**
     * The folder the bundled library is extracted under: {@link #CACHE_PROPERTY}, else an absolute
     * {@code XDG_CACHE_HOME} + {@code /qkv}, else {@code user.home} + {@code /.cache/qkv}.
     *
     * @throws BlasUnavailableException naming the setting, when it is not a path this JVM can form (a non-ASCII name
     *         in the C locale), or when there is no absolute home folder to fall back on: a JVM whose user has no
     *         passwd entry and no {@code HOME} has {@code user.home = ?}, and the cache went to {@code ./?/.cache/qkv}
     *         in the working directory, 40 MB extracted there and then refused by {@code System.load}, which takes
     *         absolute paths only
     */
    private static Path cacheRoot() {
        String explicit = System.getProperty(CACHE_PROPERTY);
        if (set(explicit)) {
            // absolute: System.load takes absolute paths only (a relative folder extracted, then never loaded)
            try {
                return path("system property " + CACHE_PROPERTY, explicit, CACHE_ROLE, "").toAbsolutePath();
            } catch (BlasUnavailableException e) {
                // the user's setting: refused, never a missing library to run without
                throw new BlasUnavailableException(e.getMessage(), e.getCause(), true);
            }
        }
        String xdg = System.getenv("XDG_CACHE_HOME");
        if (set(xdg)) {
            Path p = path("environment variable XDG_CACHE_HOME", xdg, CACHE_ROLE, "");
            if (p.isAbsolute()) {
                // the XDG spec: a relative value is invalid and is ignored
                return p.resolve("qkv");
            }
        }
        String home = System.getProperty("user.home");
        Path h = !set(home) ? null : path("system property user.home", home, CACHE_ROLE, "");
        if (h == null || !h.isAbsolute()) {
            throw new BlasUnavailableException("bundled OpenBLAS (org.bytedeco:openblas) has no cache folder to be"
                    + " extracted to: " + CACHE_PROPERTY + " and XDG_CACHE_HOME are unset (or relative) and the home"
                    + " folder (user.home = " + home + ") is not an absolute path; set -D" + CACHE_PROPERTY
                    + "=/a/writable/folder or XDG_CACHE_HOME, or -D" + LIBRARY_PROPERTY + " / " + LIBRARY_ENV);
        }
        return h.resolve(".cache").resolve("qkv");
    }

    private static final String CACHE_ROLE = " for the bundled OpenBLAS's cache folder";

    /**
     * {@code value} as a path, or a refusal naming the setting it came from ({@code origin}): a name this JVM
     * cannot form (a NUL, or a character its file-name encoding lacks) is the setting's fault, said as such, not an
     * initialisation failure naming neither the property nor the variable. {@code role} follows "not a valid path"
     * in the message, {@code note} ends it.
     */
    private static Path path(String origin, String value, String role, String note) {
        try {
            return Path.of(value);
        } catch (java.nio.file.InvalidPathException e) {
            throw new BlasUnavailableException(origin + " = " + value + ": not a valid path" + role + " ("
                    + e.getReason() + "; this JVM encodes file names as " + System.getProperty("sun.jnu.encoding")
                    + ")" + note, e);
        }
    }
}
