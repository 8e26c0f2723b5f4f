/* avx2_vec.c - f32 vector primitives for AVX2 + FMA. Compiled with -mavx2 -mfma -mf16c;
 * only called after run-time detection (kern_isa_supported). */
#include "kernels/cpu/vec.h"

#include <immintrin.h>

static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

float kern_dot_f32_avx2(const float *x, const float *y, size_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
    }
    float sum = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += x[i] * y[i];
    }
    return sum;
}

void kern_axpy_f32_avx2(float *y, float a, const float *x, size_t n)
{
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) {
        y[i] += a * x[i];
    }
}

/* One row of c (the rows left below a multiple of 4): 8 columns per vector. */
static void gemm_row_avx2(float *c, const float *a, const float *b, size_t ldb, size_t n, size_t k)
{
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 acc = _mm256_loadu_ps(c + j);
        for (size_t p = 0; p < k; p++) {
            acc =
                _mm256_fmadd_ps(_mm256_broadcast_ss(a + p), _mm256_loadu_ps(b + p * ldb + j), acc);
        }
        _mm256_storeu_ps(c + j, acc);
    }
    for (; j < n; j++) {
        float acc = c[j];
        for (size_t p = 0; p < k; p++) {
            acc += a[p] * b[p * ldb + j];
        }
        c[j] = acc;
    }
}

/* Tiles of 4 rows x 16 columns held in 8 registers while p runs over k: each b row segment
 * is loaded once per 4 rows of a, each c element once per product. */
void kern_gemm_f32_avx2(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                        size_t ldb, size_t m, size_t n, size_t k)
{
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a0 = a + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = c + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        size_t j = 0;
        for (; j + 16 <= n; j += 16) {
            __m256 x00 = _mm256_loadu_ps(c0 + j), x01 = _mm256_loadu_ps(c0 + j + 8);
            __m256 x10 = _mm256_loadu_ps(c1 + j), x11 = _mm256_loadu_ps(c1 + j + 8);
            __m256 x20 = _mm256_loadu_ps(c2 + j), x21 = _mm256_loadu_ps(c2 + j + 8);
            __m256 x30 = _mm256_loadu_ps(c3 + j), x31 = _mm256_loadu_ps(c3 + j + 8);
            for (size_t p = 0; p < k; p++) {
                const float *bp = b + p * ldb + j;
                const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
                __m256 v = _mm256_broadcast_ss(a0 + p);
                x00 = _mm256_fmadd_ps(v, b0, x00);
                x01 = _mm256_fmadd_ps(v, b1, x01);
                v = _mm256_broadcast_ss(a1 + p);
                x10 = _mm256_fmadd_ps(v, b0, x10);
                x11 = _mm256_fmadd_ps(v, b1, x11);
                v = _mm256_broadcast_ss(a2 + p);
                x20 = _mm256_fmadd_ps(v, b0, x20);
                x21 = _mm256_fmadd_ps(v, b1, x21);
                v = _mm256_broadcast_ss(a3 + p);
                x30 = _mm256_fmadd_ps(v, b0, x30);
                x31 = _mm256_fmadd_ps(v, b1, x31);
            }
            _mm256_storeu_ps(c0 + j, x00);
            _mm256_storeu_ps(c0 + j + 8, x01);
            _mm256_storeu_ps(c1 + j, x10);
            _mm256_storeu_ps(c1 + j + 8, x11);
            _mm256_storeu_ps(c2 + j, x20);
            _mm256_storeu_ps(c2 + j + 8, x21);
            _mm256_storeu_ps(c3 + j, x30);
            _mm256_storeu_ps(c3 + j + 8, x31);
        }
        if (j < n) { /* the last columns, row by row */
            gemm_row_avx2(c0 + j, a0, b + j, ldb, n - j, k);
            gemm_row_avx2(c1 + j, a1, b + j, ldb, n - j, k);
            gemm_row_avx2(c2 + j, a2, b + j, ldb, n - j, k);
            gemm_row_avx2(c3 + j, a3, b + j, ldb, n - j, k);
        }
    }
    for (; i < m; i++) {
        gemm_row_avx2(c + i * ldc, a + i * lda, b, ldb, n, k);
    }
}
