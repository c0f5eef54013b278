package dev.qkv.blas;

import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/**
 * qkv loaded by more than one class loader in one JVM (an application server that redeploys, two applications
 * that each bundle qkv, a plugin system): each copy must get OpenBLAS. {@link System#load} refuses a library that
 * another class loader loaded ("already loaded in another classloader"), so every copy after the first got a
 * {@link BlasUnavailableException}: {@code Backend.NATIVE} failed, and {@code Backend.AUTO} quietly ran the Java
 * kernels. Property: in three fresh class loaders over qkv's class path, OpenBLAS loads and computes
 * {@code [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]}.
 */
class ClassLoaderTest {

    @Test
    void everyClassLoaderOfQkvGetsOpenBlas() throws Exception {
        // this JVM's own copy first, as an application's would be: the copies below are the later ones. (Loaded
        // by a copy below first, the test class loader's would be a later copy too, and the generated bindings'
        // own lookups, which DescriptorsTest calls, find nothing in it.)
        assertArrayEquals(new float[] {19, 22, 43, 50}, product(getClass().getClassLoader(), OpenBlas.class,
                OpenBlas.get()), "this class loader");
        List<URL> urls = new ArrayList<>();
        for (String s : System.getProperty("java.class.path").split(java.io.File.pathSeparator)) {
            urls.add(Path.of(s).toUri().toURL());
        }
        for (int i = 0; i < 3; i++) {
            try (URLClassLoader cl = new URLClassLoader(urls.toArray(new URL[0]),
                    ClassLoader.getPlatformClassLoader())) {
                Class<?> blasClass = cl.loadClass(OpenBlas.class.getName());
                Object blas;
                try {
                    blas = blasClass.getMethod("get").invoke(null);
                } catch (InvocationTargetException e) {
                    throw new AssertionError("class loader " + i + ": " + e.getCause(), e.getCause());
                }
                assertArrayEquals(new float[] {19, 22, 43, 50}, product(cl, blasClass, blas), "class loader " + i);
            }
        }
    }

    /** The 2 × 2 product through the OpenBlas of {@code cl}. */
    @SuppressWarnings({"unchecked", "rawtypes"})
    private static float[] product(ClassLoader cl, Class<?> blasClass, Object blas) throws Exception {
        Class<?> transpose = cl.loadClass(Transpose.class.getName());
        Object no = Enum.valueOf((Class) transpose, "NO");
        Method sgemm = blasClass.getMethod("sgemm", transpose, transpose, int.class, int.class, int.class,
                float.class, MemorySegment.class, long.class, int.class, MemorySegment.class, long.class, int.class,
                float.class, MemorySegment.class, long.class, int.class);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 1, 2, 3, 4);
            MemorySegment b = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 5, 6, 7, 8);
            MemorySegment c = arena.allocate(16, 64);
            sgemm.invoke(blas, no, no, 2, 2, 2, 1f, a, 0L, 2, b, 0L, 2, 0f, c, 0L, 2);
            return c.toArray(ValueLayout.JAVA_FLOAT);
        }
    }
}
