/*
 * vec.h - f32 vector primitives, one table per ISA.
 *
 * kern_vec_ops_get(isa) returns the table for a level that kern_isa_supported()
 * accepted; every entry of every table computes the same function as the scalar
 * reference within float rounding (tests/unit/test_kernels_vec.c checks each).
 */
#ifndef KERN_CPU_VEC_H
#define KERN_CPU_VEC_H

#include "kernels/kern_isa.h"
#include "kernels/kern_ops.h"

#include <stddef.h>
#include <stdint.h>

typedef struct kern_vec_ops {
    kern_isa_t isa;
    /* sum_i x[i] * y[i] */
    float (*dot_f32)(const float *x, const float *y, size_t n);
    /* y[i] += a * x[i] */
    void (*axpy_f32)(float *y, float a, const float *x, size_t n);
    /* c[i][j] += sum_p a[i][p] * b[p][j] for i < m, j < n, p < k: row-major with leading
     * dimensions lda, ldb, ldc (floats). Small products (the Gated DeltaNet chunk, m, n, k
     * up to a few hundred): register tiles that read each b row once per few rows of a,
     * no packing. */
    void (*gemm_f32)(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb,
                     size_t m, size_t n, size_t k);
} kern_vec_ops_t;

/* The table for isa; NULL if isa is not compiled into this binary. */
const kern_vec_ops_t *kern_vec_ops_get(kern_isa_t isa);

/* Scalar references (the oracle). */
float kern_dot_f32_ref(const float *x, const float *y, size_t n);
void kern_axpy_f32_ref(float *y, float a, const float *x, size_t n);
void kern_gemm_f32_ref(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb,
                       size_t m, size_t n, size_t k);

/* y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w[:], rows x cols, row-major. */
void kern_rms_norm_f32_ref(float *y, const float *x, const float *w, int rows, int cols, float eps);

/* Per-ISA entry points (defined only where compiled). */
float kern_dot_f32_avx2(const float *x, const float *y, size_t n);
void kern_axpy_f32_avx2(float *y, float a, const float *x, size_t n);
void kern_gemm_f32_avx2(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                        size_t ldb, size_t m, size_t n, size_t k);
float kern_dot_f32_avx512(const float *x, const float *y, size_t n);
void kern_axpy_f32_avx512(float *y, float a, const float *x, size_t n);
void kern_gemm_f32_avx512(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                          size_t ldb, size_t m, size_t n, size_t k);
float kern_dot_f32_neon(const float *x, const float *y, size_t n);
void kern_axpy_f32_neon(float *y, float a, const float *x, size_t n);
void kern_gemm_f32_neon(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                        size_t ldb, size_t m, size_t n, size_t k);

/* AVX2 row ops behind kern_op_attn_head_f32 / kern_op_silu_mul_f32_isa (x86/avx2_ops.c);
 * the attention kernels need head_dim % 8 == 0 and <= KERN_ATTN_AVX2_MAX_HD. */
#define KERN_ATTN_AVX2_MAX_HD 512
void kern_attn_head_f32_avx2(float *out, const float *q, const float *k, const float *v,
                             const int32_t *blocks, size_t block_stride, int block_tokens,
                             int head_dim, const kern_attn_span_t *sp, float *scores);
/* kern_op_attn_tile for an f32 cache (head_dim % 8 == 0): each row bit-identical to
 * kern_attn_head_f32_avx2 on it alone. */
void kern_attn_tile_f32_avx2(const kern_attn_row_t *rows, int n_rows, const float *k,
                             const float *v, const int32_t *blocks, size_t block_stride,
                             int block_tokens, int head_dim, float *scores, size_t ld_scores,
                             float *acc);
/* kern_op_attn_tile for an F16 or Q8_0 cache, any ISA (ops_kv.c). */
void kern_attn_tile_kv(kern_isa_t isa, tdm_type_t type, const kern_attn_row_t *rows, int n_rows,
                       const void *k, const void *v, const int32_t *blocks, size_t block_bytes,
                       int block_tokens, size_t row_bytes, int head_dim, float *scores,
                       size_t ld_scores, float *acc, float *conv);
/* n (a multiple of 8) f16 values to f32 with F16C (x86/avx2_ops.c): exact. */
void kern_f16_to_f32_avx2(const void *src, float *dst, int n);
void kern_silu_mul_f32_avx2(float *out, const float *gate, const float *up, int64_t n);

#endif
