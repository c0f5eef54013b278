package dev.qkv.blas;

/** Whether a matrix operand of {@link OpenBlas#sgemm} is used as stored or transposed. */
public enum Transpose {
    /** Use the operand as stored: {@code op(A) = A}. */
    NO,
    /** Use the operand transposed: {@code op(A) = Aᵀ}. */
    YES;

    /** The other flag. */
    public Transpose flip() {
        return this == NO ? YES : NO;
    }

    /** The other flag when {@code flip} is true, else this one. */
    public Transpose flipIf(boolean flip) {
        return flip ? flip() : this;
    }
}
