/* ops_norm.c - scalar RMSNorm, softmax, top-k and MoE routing of a token (kern_ops.h). */
#include "kernels/kern_ops.h"

#include <math.h>

void kern_op_rms_norm_f32(float *y, int64_t ldy, const float *x, int64_t ldx, const float *w,
                          int64_t rows, int64_t cols, float eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        double ss = 0.0;
        for (int64_t c = 0; c < cols; c++) {
            ss += (double)xr[c] * (double)xr[c];
        }
        const float scale = (float)(1.0 / sqrt(ss / (double)cols + (double)eps));
        if (w != NULL) {
            for (int64_t c = 0; c < cols; c++) {
                yr[c] = (xr[c] * scale) * w[c];
            }
        } else {
            for (int64_t c = 0; c < cols; c++) {
                yr[c] = xr[c] * scale;
            }
        }
    }
}

void kern_op_softmax_f32(float *x, int64_t n)
{
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) {
        mx = x[i] > mx ? x[i] : mx;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float e = expf(x[i] - mx);
        x[i] = e;
        sum += e;
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) {
        x[i] *= inv;
    }
}

void kern_op_topk_f32(const float *x, int n, int k, int32_t *idx)
{
    /* Selection by repeated scans keeps it allocation-free; k and n are small (router
     * widths). A candidate replaces the current best only when strictly greater, so the
     * lower index wins a tie. */
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int q = 0; q < j; q++) {
                taken |= idx[q] == i;
            }
            if (taken) {
                continue;
            }
            if (best < 0 || x[i] > x[best]) {
                best = i;
            }
        }
        idx[j] = best;
    }
}

void kern_op_route_token(float *probs, int n_expert, int k, bool norm, int32_t *sel, float *w)
{
    kern_op_softmax_f32(probs, n_expert);
    kern_op_topk_f32(probs, n_expert, k, sel);
    double sum = 0.0;
    for (int j = 0; j < k; j++) {
        w[j] = probs[sel[j]];
        sum += w[j];
    }
    if (norm) {
        /* llama.cpp clamps the divisor at 2^-14 (6.103515625e-5). */
        const float inv = (float)(1.0 / (sum > 6.103515625e-5 ? sum : 6.103515625e-5));
        for (int j = 0; j < k; j++) {
            w[j] *= inv;
        }
    }
}
