package dev.qkv.blas;

import dev.qkv.bindings.openblas.cblas_h;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The C signatures {@link OpenBlas} binds its downcalls with are the ones jextract generated from
 * {@code native/cblas.h}: the bindings stay the source of truth. OpenBlas writes them out (see
 * {@code OpenBlas.Descriptors}) because the generated accessors look each function up in their class loader's
 * libraries when first used, which fails in every copy of qkv after the first in a JVM; in the first copy, as
 * here, they load, and must agree.
 */
class DescriptorsTest {
    @Test
    void everyDowncallSignatureIsJextracts() {
        OpenBlas.get(); // loads the library into this class loader, where the generated lookups find it
        assertEquals(cblas_h.cblas_sgemm$descriptor(), OpenBlas.Descriptors.CBLAS_SGEMM);
        assertEquals(cblas_h.cblas_sgemv$descriptor(), OpenBlas.Descriptors.CBLAS_SGEMV);
        assertEquals(cblas_h.openblas_set_num_threads$descriptor(), OpenBlas.Descriptors.OPENBLAS_SET_NUM_THREADS);
        assertEquals(cblas_h.openblas_get_num_threads$descriptor(), OpenBlas.Descriptors.OPENBLAS_GET_NUM_THREADS);
        assertEquals(cblas_h.openblas_get_config$descriptor(), OpenBlas.Descriptors.OPENBLAS_GET_CONFIG);
        assertEquals(cblas_h.openblas_get_corename$descriptor(), OpenBlas.Descriptors.OPENBLAS_GET_CORENAME);
    }
}
