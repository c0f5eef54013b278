package dev.qkv.attention;

import java.util.ArrayList;
import java.util.List;

/**
 * {@link ExtremeLogitsTest}'s cases in a JVM of its own, run by {@link ExtremeLogitsTest#scalarKernels} with
 * {@code -Dqkv.vector=false}: the Java backend's scalar kernels and the native backend's scalar row kernels.
 * Prints {@code ok} or the failures.
 */
public final class ExtremeLogitsScalarProbe {
    private ExtremeLogitsScalarProbe() {
    }

    public static void main(String[] args) {
        List<String> bad = new ArrayList<>();
        System.out.println(dev.qkv.kernel.Vectorization.reason());
        ExtremeLogitsTest t = new ExtremeLogitsTest();
        for (Backend b : new Backend[] {Backend.JAVA, Backend.NATIVE}) {
            bad.addAll(ExtremeLogitsTest.allCases(b));
            try {
                t.aKeyBelowTheExponentialsRangeInAnEarlierKeyBlockDoesNotContribute(b);
                t.nonFiniteValuesAtKeysBetweenTheTwoUnderflowsMatchTheReference(b);
            } catch (AssertionError e) {
                bad.add(e.getMessage());
            }
        }
        System.out.println(bad.isEmpty() ? "ok" : String.join("\n", bad));
    }
}
