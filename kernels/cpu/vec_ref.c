/* vec_ref.c - scalar references for the f32 vector primitives (the oracle). */
#include "kernels/cpu/vec.h"

#include <math.h>

float kern_dot_f32_ref(const float *x, const float *y, size_t n)
{
    /* Accumulate in double so the reference is more exact than any SIMD order. */
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        sum += (double)x[i] * (double)y[i];
    }
    return (float)sum;
}

void kern_axpy_f32_ref(float *y, float a, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        y[i] += a * x[i];
    }
}

void kern_rms_norm_f32_ref(float *y, const float *x, const float *w, int rows, int cols, float eps)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        float *yr = y + (size_t)r * cols;
        double ss = 0.0;
        for (int c = 0; c < cols; c++) {
            ss += (double)xr[c] * xr[c];
        }
        float scale = 1.0f / sqrtf((float)(ss / cols) + eps);
        for (int c = 0; c < cols; c++) {
            yr[c] = xr[c] * scale * w[c];
        }
    }
}

void kern_gemm_f32_ref(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb,
                       size_t m, size_t n, size_t k)
{
    for (size_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        for (size_t p = 0; p < k; p++) {
            const float aip = a[i * lda + p];
            const float *bp = b + p * ldb;
            for (size_t j = 0; j < n; j++) {
                ci[j] += aip * bp[j];
            }
        }
    }
}
