/* avx512_vec.c - f32 vector primitives for AVX-512F. Compiled with -mavx512f -mavx512bw
 * -mavx512vl -mavx512dq (plus the AVX2 flags); only called after run-time detection. */
#include "kernels/cpu/vec.h"

#include <immintrin.h>

float kern_dot_f32_avx512(const float *x, const float *y, size_t n)
{
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), acc1);
    }
    if (i + 16 <= n) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
        i += 16;
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        acc1 =
            _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void kern_axpy_f32_avx512(float *y, float a, const float *x, size_t n)
{
    __m512 va = _mm512_set1_ps(a);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i,
                         _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 r =
            _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

/* kern_gemm_f32_avx2's tiles at 32 columns (4 rows x 2 registers); the columns below a
 * multiple of 32 go to the AVX2 kernel (AVX-512 implies AVX2 + FMA). */
void kern_gemm_f32_avx512(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                          size_t ldb, size_t m, size_t n, size_t k)
{
    const size_t n32 = n & ~(size_t)31;
    size_t i = 0;
    for (; i + 4 <= m && n32 > 0; i += 4) {
        const float *a0 = a + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = c + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        for (size_t j = 0; j < n32; j += 32) {
            __m512 x00 = _mm512_loadu_ps(c0 + j), x01 = _mm512_loadu_ps(c0 + j + 16);
            __m512 x10 = _mm512_loadu_ps(c1 + j), x11 = _mm512_loadu_ps(c1 + j + 16);
            __m512 x20 = _mm512_loadu_ps(c2 + j), x21 = _mm512_loadu_ps(c2 + j + 16);
            __m512 x30 = _mm512_loadu_ps(c3 + j), x31 = _mm512_loadu_ps(c3 + j + 16);
            for (size_t p = 0; p < k; p++) {
                const float *bp = b + p * ldb + j;
                const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
                __m512 v = _mm512_set1_ps(a0[p]);
                x00 = _mm512_fmadd_ps(v, b0, x00);
                x01 = _mm512_fmadd_ps(v, b1, x01);
                v = _mm512_set1_ps(a1[p]);
                x10 = _mm512_fmadd_ps(v, b0, x10);
                x11 = _mm512_fmadd_ps(v, b1, x11);
                v = _mm512_set1_ps(a2[p]);
                x20 = _mm512_fmadd_ps(v, b0, x20);
                x21 = _mm512_fmadd_ps(v, b1, x21);
                v = _mm512_set1_ps(a3[p]);
                x30 = _mm512_fmadd_ps(v, b0, x30);
                x31 = _mm512_fmadd_ps(v, b1, x31);
            }
            _mm512_storeu_ps(c0 + j, x00);
            _mm512_storeu_ps(c0 + j + 16, x01);
            _mm512_storeu_ps(c1 + j, x10);
            _mm512_storeu_ps(c1 + j + 16, x11);
            _mm512_storeu_ps(c2 + j, x20);
            _mm512_storeu_ps(c2 + j + 16, x21);
            _mm512_storeu_ps(c3 + j, x30);
            _mm512_storeu_ps(c3 + j + 16, x31);
        }
    }
    const size_t m4 = n32 > 0 ? i : 0;
    if (n32 < n && m4 > 0) { /* the columns past the last 32 of the tiled rows */
        kern_gemm_f32_avx2(c + n32, ldc, a, lda, b + n32, ldb, m4, n - n32, k);
    }
    if (m4 < m) { /* the rows below a multiple of 4, every column */
        kern_gemm_f32_avx2(c + m4 * ldc, ldc, a + m4 * lda, lda, b, ldb, m - m4, n, k);
    }
}
