package dev.qkv.blas;

import dev.qkv.kernel.MatmulKernel;
import dev.qkv.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The API's one rule for null arguments (README, exception table) holds for blas/ and kernel/ too: a null
 * required argument of {@link OpenBlas#sgemm}, {@link OpenBlas#sgemv}, {@link OpenBlas#matmul},
 * {@link SgemmArgs#validate}, {@link SgemvArgs#validate} and {@link MatmulKernel#matmul} /
 * {@link MatmulKernel#matvec} throws {@link NullPointerException} whose message starts with the parameter's name
 * ({@code "a is null ..."}), before the output is written, whatever else is wrong with the call. They threw
 * {@link IllegalArgumentException} "sgemm: a is null" (and "transpose flag is null", which names no parameter),
 * while attention/ and mha/ throw NullPointerException "q is null": one rule, two exceptions.
 */
class NullArgumentsTest {

    private static void expectNull(String param, MemorySegment out, Executable call) {
        byte[] before = out.toArray(ValueLayout.JAVA_BYTE);
        NullPointerException e = assertThrows(NullPointerException.class, call, param);
        assertTrue(e.getMessage() != null && e.getMessage().startsWith(param + " is null"),
                "message \"" + e.getMessage() + "\" should start with \"" + param + " is null\"");
        assertArrayEquals(before, out.toArray(ValueLayout.JAVA_BYTE), "the output was written: " + param);
    }

    private static List<MatmulKernel> kernels() {
        List<MatmulKernel> ks = new ArrayList<>(List.of(MatmulKernel.javaScalar(), MatmulKernel.java()));
        if (OpenBlas.isAvailable()) {
            ks.add(MatmulKernel.openBlas());
        }
        return ks;
    }

    @Test
    void sgemmAndItsChecksThrowNullPointerExceptionNamingTheParameter() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocate(20 * 4, 64).fill((byte) 1);
            MemorySegment b = arena.allocate(30 * 4, 64).fill((byte) 1);
            MemorySegment c = arena.allocate(24 * 4, 64).fill((byte) 7);
            Transpose no = Transpose.NO;
            for (int m : new int[] {4, -4}) {
                // a negative size as well: the null is what the caller must hear about first
                expectNull("ta", c, () -> SgemmArgs.validate(false, null, no, m, 6, 5, a, 0, 5, b, 0, 6, c, 0, 6));
                expectNull("tb", c, () -> SgemmArgs.validate(false, no, null, m, 6, 5, a, 0, 5, b, 0, 6, c, 0, 6));
                expectNull("a", c, () -> SgemmArgs.validate(false, no, no, m, 6, 5, null, 0, 5, b, 0, 6, c, 0, 6));
                expectNull("b", c, () -> SgemmArgs.validate(false, no, no, m, 6, 5, a, 0, 5, null, 0, 6, c, 0, 6));
                expectNull("c", a, () -> SgemmArgs.validate(false, no, no, m, 6, 5, a, 0, 5, b, 0, 6, null, 0, 6));
                for (MatmulKernel k : kernels()) {
                    expectNull("ta", c, () -> k.matmul(null, no, m, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
                    expectNull("tb", c, () -> k.matmul(no, null, m, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
                    expectNull("a", c, () -> k.matmul(no, no, m, 6, 5, 1f, null, 0, 5, b, 0, 6, 0f, c, 0, 6));
                    expectNull("b", c, () -> k.matmul(no, no, m, 6, 5, 1f, a, 0, 5, null, 0, 6, 0f, c, 0, 6));
                    expectNull("c", a, () -> k.matmul(no, no, m, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, null, 0, 6));
                }
                if (OpenBlas.isAvailable()) {
                    OpenBlas blas = OpenBlas.get();
                    expectNull("ta", c, () -> blas.sgemm(null, no, m, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
                    expectNull("tb", c, () -> blas.sgemm(no, null, m, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, c, 0, 6));
                    expectNull("a", c, () -> blas.sgemm(no, no, m, 6, 5, 1f, null, 0, 5, b, 0, 6, 0f, c, 0, 6));
                    expectNull("b", c, () -> blas.sgemm(no, no, m, 6, 5, 1f, a, 0, 5, null, 0, 6, 0f, c, 0, 6));
                    expectNull("c", a, () -> blas.sgemm(no, no, m, 6, 5, 1f, a, 0, 5, b, 0, 6, 0f, null, 0, 6));
                }
            }
        }
    }

    @Test
    void sgemvAndItsChecksThrowNullPointerExceptionNamingTheParameter() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocate(20 * 4, 64).fill((byte) 1);
            MemorySegment x = arena.allocate(5 * 4, 64).fill((byte) 1);
            MemorySegment y = arena.allocate(4 * 4, 64).fill((byte) 7);
            Transpose no = Transpose.NO;
            for (int m : new int[] {4, -4}) {
                expectNull("ta", y, () -> SgemvArgs.validate(false, null, m, 5, a, 0, 5, x, 0, 1, y, 0, 1));
                expectNull("a", y, () -> SgemvArgs.validate(false, no, m, 5, null, 0, 5, x, 0, 1, y, 0, 1));
                expectNull("x", y, () -> SgemvArgs.validate(false, no, m, 5, a, 0, 5, null, 0, 1, y, 0, 1));
                expectNull("y", a, () -> SgemvArgs.validate(false, no, m, 5, a, 0, 5, x, 0, 1, null, 0, 1));
                for (MatmulKernel k : kernels()) {
                    expectNull("ta", y, () -> k.matvec(null, m, 5, 1f, a, 0, 5, x, 0, 1, 0f, y, 0, 1));
                    expectNull("a", y, () -> k.matvec(no, m, 5, 1f, null, 0, 5, x, 0, 1, 0f, y, 0, 1));
                    expectNull("x", y, () -> k.matvec(no, m, 5, 1f, a, 0, 5, null, 0, 1, 0f, y, 0, 1));
                    expectNull("y", a, () -> k.matvec(no, m, 5, 1f, a, 0, 5, x, 0, 1, 0f, null, 0, 1));
                }
                if (OpenBlas.isAvailable()) {
                    OpenBlas blas = OpenBlas.get();
                    expectNull("ta", y, () -> blas.sgemv(null, m, 5, 1f, a, 0, 5, x, 0, 1, 0f, y, 0, 1));
                    expectNull("a", y, () -> blas.sgemv(no, m, 5, 1f, null, 0, 5, x, 0, 1, 0f, y, 0, 1));
                    expectNull("x", y, () -> blas.sgemv(no, m, 5, 1f, a, 0, 5, null, 0, 1, 0f, y, 0, 1));
                    expectNull("y", a, () -> blas.sgemv(no, m, 5, 1f, a, 0, 5, x, 0, 1, 0f, null, 0, 1));
                }
            }
        }
    }

    /**
     * The public helpers of {@link SgemmArgs} and {@link SgemvArgs} fall under the same rule (the README lists both
     * classes): they threw the JVM's own "Cannot invoke ... because "s" is null", or nothing at all for an empty
     * range, instead of naming the parameter.
     */
    @Test
    void argumentHelpersNameTheirNullParameter() {
        MemorySegment none = MemorySegment.ofArray(new byte[4]);
        expectNull("s", none, () -> SgemmArgs.blasReady(null));
        for (int rows : new int[] {0, 2}) {
            expectNull("c", none, () -> SgemmArgs.betaTimesC(0.5f, null, 0, rows, 3, 3));
            expectNull("y", none, () -> SgemvArgs.betaTimesY(0.5f, null, 0, rows, 1));
        }
    }

    @Test
    void matmulThrowsNullPointerExceptionNamingTheParameter() {
        if (!OpenBlas.isAvailable()) {
            return;
        }
        OpenBlas blas = OpenBlas.get();
        try (Arena arena = Arena.ofConfined()) {
            Tensor a = Tensor.allocate(arena, 4, 5).fill(1f);
            Tensor aT = Tensor.allocate(arena, 5, 4).transpose();
            Tensor b = Tensor.allocate(arena, 5, 6).fill(1f);
            Tensor c = Tensor.allocate(arena, 4, 6).fill(7f);
            // a c of the wrong shape as well: the null comes first
            Tensor wrong = Tensor.allocate(arena, 3, 3);
            Transpose no = Transpose.NO;
            for (Tensor out : Arrays.asList(c, wrong)) {
                expectNull("ta", c.segment(), () -> blas.matmul(null, a, no, b, 1f, 0f, out));
                expectNull("ta", c.segment(), () -> blas.matmul(null, aT, no, b, 1f, 0f, out));
                expectNull("tb", c.segment(), () -> blas.matmul(no, a, null, b, 1f, 0f, out));
                expectNull("a", c.segment(), () -> blas.matmul(no, null, no, b, 1f, 0f, out));
                expectNull("b", c.segment(), () -> blas.matmul(no, a, no, null, 1f, 0f, out));
            }
            expectNull("c", a.segment(), () -> blas.matmul(no, a, no, b, 1f, 0f, null));
            expectNull("c", a.segment(), () -> blas.matmul(no, wrong, no, b, 1f, 0f, null));
        }
    }
}
