/* ops_elementwise.c - scalar element-wise f32 ops: SwiGLU (and gpt-oss's clamped one), add,
 * bias, scale, axpy (kern_ops.h). */
#include "kernels/kern_ops.h"

#include <math.h>

void kern_op_silu_mul_f32(float *out, const float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void kern_op_add_f32(float *y, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        y[i] = a[i] + b[i];
    }
}

void kern_op_scale_f32(float *x, float s, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        x[i] *= s;
    }
}

void kern_op_axpy_f32(float *y, float s, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        y[i] += s * x[i];
    }
}

void kern_op_add_bias_f32(float *y, int64_t ldy, const float *bias, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        float *yr = y + r * ldy;
        for (int64_t c = 0; c < cols; c++) {
            yr[c] += bias[c];
        }
    }
}

void kern_op_swiglu_oai_f32(float *out, const float *gate, const float *up, int64_t n, float alpha,
                            float limit)
{
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i] < limit ? gate[i] : limit;
        const float u = up[i] < -limit ? -limit : (up[i] > limit ? limit : up[i]);
        out[i] = g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
    }
}
