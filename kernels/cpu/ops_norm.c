/* ops_norm.c - scalar RMSNorm (whole or in two halves), softmax, top-k and MoE routing of a
 * token (kern_ops.h). */
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

void kern_op_sum_sq_f32(float *ss, int64_t lds, const float *x, int64_t ldx, int64_t rows,
                        int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        double acc = 0.0;
        for (int64_t c = 0; c < cols; c++) {
            acc += (double)xr[c] * (double)xr[c];
        }
        ss[r * lds] = (float)acc;
    }
}

void kern_op_rms_apply_f32(float *y, int64_t ldy, const float *x, int64_t ldx, const float *ss,
                           int64_t lds, const float *w, int64_t rows, int64_t cols, int64_t n_total,
                           float eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        const float scale =
            (float)(1.0 / sqrt((double)ss[r * lds] / (double)n_total + (double)eps));
        for (int64_t c = 0; c < cols; c++) {
            yr[c] = w != NULL ? (xr[c] * scale) * w[c] : xr[c] * scale;
        }
    }
}

void kern_op_route_token(float *probs, const kern_route_t *r, int32_t *sel, float *w)
{
    const int n = r->n_expert, k = r->k;
    switch (r->gating) {
    case KERN_GATING_SOFTMAX:
        kern_op_softmax_f32(probs, n);
        break;
    case KERN_GATING_SIGMOID:
        for (int i = 0; i < n; i++) {
            probs[i] = 1.0f / (1.0f + expf(-probs[i]));
        }
        break;
    case KERN_GATING_SOFTMAX_SELECTED:
        break; /* chosen on the logits; the softmax runs over the chosen below */
    }
    if (r->sel_bias != NULL) {
        /* the bias steers the choice only: choose on biased copies, weigh with probs */
        float biased[KERN_ROUTE_MAX_EXPERTS];
        for (int i = 0; i < n; i++) {
            biased[i] = probs[i] + r->sel_bias[i];
        }
        kern_op_topk_f32(biased, n, k, sel);
    } else {
        kern_op_topk_f32(probs, n, k, sel);
    }
    for (int j = 0; j < k; j++) {
        w[j] = probs[sel[j]];
    }
    if (r->gating == KERN_GATING_SOFTMAX_SELECTED) {
        kern_op_softmax_f32(w, k);
    }
    if (r->norm) {
        double sum = 0.0;
        for (int j = 0; j < k; j++) {
            sum += w[j];
        }
        /* llama.cpp clamps the divisor at 2^-14 (6.103515625e-5). */
        const float inv = (float)(1.0 / (sum > 6.103515625e-5 ? sum : 6.103515625e-5));
        for (int j = 0; j < k; j++) {
            w[j] *= inv;
        }
    }
    if (r->scale != 0.0f && r->scale != 1.0f) {
        for (int j = 0; j < k; j++) {
            w[j] *= r->scale;
        }
    }
}
