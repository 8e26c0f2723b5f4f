/* neon_vec.c - f32 vector primitives for arm64 Advanced SIMD (baseline on arm64). */
#include "kernels/cpu/vec.h"

#include <arm_neon.h>

float kern_dot_f32_neon(const float *x, const float *y, size_t n)
{
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(x + i), vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += x[i] * y[i];
    }
    return sum;
}

void kern_axpy_f32_neon(float *y, float a, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    }
    for (; i < n; i++) {
        y[i] += a * x[i];
    }
}

/* One row of c (the rows left below a multiple of 4): 4 columns per vector. */
static void gemm_row_neon(float *c, const float *a, const float *b, size_t ldb, size_t n, size_t k)
{
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        float32x4_t acc = vld1q_f32(c + j);
        for (size_t p = 0; p < k; p++) {
            acc = vfmaq_n_f32(acc, vld1q_f32(b + p * ldb + j), a[p]);
        }
        vst1q_f32(c + j, acc);
    }
    for (; j < n; j++) {
        float acc = c[j];
        for (size_t p = 0; p < k; p++) {
            acc += a[p] * b[p * ldb + j];
        }
        c[j] = acc;
    }
}

/* Tiles of 4 rows x 8 columns held in 8 registers while p runs over k (as the AVX2
 * kernel): each b row segment is loaded once per 4 rows of a. */
void kern_gemm_f32_neon(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                        size_t ldb, size_t m, size_t n, size_t k)
{
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a0 = a + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = c + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        size_t j = 0;
        for (; j + 8 <= n; j += 8) {
            float32x4_t x00 = vld1q_f32(c0 + j), x01 = vld1q_f32(c0 + j + 4);
            float32x4_t x10 = vld1q_f32(c1 + j), x11 = vld1q_f32(c1 + j + 4);
            float32x4_t x20 = vld1q_f32(c2 + j), x21 = vld1q_f32(c2 + j + 4);
            float32x4_t x30 = vld1q_f32(c3 + j), x31 = vld1q_f32(c3 + j + 4);
            for (size_t p = 0; p < k; p++) {
                const float *bp = b + p * ldb + j;
                const float32x4_t b0 = vld1q_f32(bp), b1 = vld1q_f32(bp + 4);
                x00 = vfmaq_n_f32(x00, b0, a0[p]);
                x01 = vfmaq_n_f32(x01, b1, a0[p]);
                x10 = vfmaq_n_f32(x10, b0, a1[p]);
                x11 = vfmaq_n_f32(x11, b1, a1[p]);
                x20 = vfmaq_n_f32(x20, b0, a2[p]);
                x21 = vfmaq_n_f32(x21, b1, a2[p]);
                x30 = vfmaq_n_f32(x30, b0, a3[p]);
                x31 = vfmaq_n_f32(x31, b1, a3[p]);
            }
            vst1q_f32(c0 + j, x00);
            vst1q_f32(c0 + j + 4, x01);
            vst1q_f32(c1 + j, x10);
            vst1q_f32(c1 + j + 4, x11);
            vst1q_f32(c2 + j, x20);
            vst1q_f32(c2 + j + 4, x21);
            vst1q_f32(c3 + j, x30);
            vst1q_f32(c3 + j + 4, x31);
        }
        if (j < n) {
            gemm_row_neon(c0 + j, a0, b + j, ldb, n - j, k);
            gemm_row_neon(c1 + j, a1, b + j, ldb, n - j, k);
            gemm_row_neon(c2 + j, a2, b + j, ldb, n - j, k);
            gemm_row_neon(c3 + j, a3, b + j, ldb, n - j, k);
        }
    }
    for (; i < m; i++) {
        gemm_row_neon(c + i * ldc, a + i * lda, b, ldb, n, k);
    }
}
