/* vec_ops.c - the per-ISA tables of f32 vector primitives. */
#include "kernels/cpu/vec.h"

static const kern_vec_ops_t vec_ops[KERN_ISA_COUNT] = {
    [KERN_ISA_SCALAR] = {KERN_ISA_SCALAR, kern_dot_f32_ref, kern_axpy_f32_ref, kern_gemm_f32_ref},
#if defined(__x86_64__)
    [KERN_ISA_AVX2] = {KERN_ISA_AVX2, kern_dot_f32_avx2, kern_axpy_f32_avx2, kern_gemm_f32_avx2},
    [KERN_ISA_AVX512] = {KERN_ISA_AVX512, kern_dot_f32_avx512, kern_axpy_f32_avx512,
                         kern_gemm_f32_avx512},
#endif
#if defined(__aarch64__)
    [KERN_ISA_NEON] = {KERN_ISA_NEON, kern_dot_f32_neon, kern_axpy_f32_neon, kern_gemm_f32_neon},
    [KERN_ISA_NEON_DOT] = {KERN_ISA_NEON_DOT, kern_dot_f32_neon, kern_axpy_f32_neon,
                           kern_gemm_f32_neon},
#endif
};

const kern_vec_ops_t *kern_vec_ops_get(kern_isa_t isa)
{
    if ((unsigned)isa >= KERN_ISA_COUNT || vec_ops[isa].dot_f32 == NULL) {
        return NULL;
    }
    return &vec_ops[isa];
}
