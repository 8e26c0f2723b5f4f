/*
 * matmul.c - kern_matmul, kern_dequantize, kern_quantize, kern_type_supported.
 *
 * kern_matmul converts the activations once per call to the weight type's vec_dot_type
 * (in parallel over tokens), then splits the weight rows over the pool. Each task walks
 * its rows in tiles of KERN_TOK_TILE tokens: one weight row is dotted against every token
 * of the tile while it is hot in L1, and the tile's activations (a few KiB per token)
 * stay in L1/L2 across the task's rows, so weights are streamed from memory once per
 * tile of tokens instead of once per token. Decode (n_tok == 1) is the same loop with a
 * tile of one: a pure weight stream.
 */
#include "common/check.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/types_cpu.h"
#include "kernels/kern.h"

#include <stdlib.h>

#define KERN_TOK_TILE  8
#define KERN_ROW_GRAIN 16

typedef struct matmul_job {
    const kern_weight_t *w;
    kern_vec_dot_fn dot;
    const uint8_t *act; /* converted activations, act_stride bytes per token */
    size_t act_stride;
    int64_t n_tok;
    float *y;
    int64_t ldy;
    /* activation conversion */
    kern_from_float_fn from_float;
    const float *x;
    int64_t ldx;
    uint8_t *act_out;
} matmul_job_t;

static void convert_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    const matmul_job_t *j = arg;
    for (int64_t t = begin; t < end; t++) {
        j->from_float(j->x + t * j->ldx, j->act_out + (size_t)t * j->act_stride, j->w->n_cols);
    }
}

static void rows_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    const matmul_job_t *j = arg;
    const kern_weight_t *w = j->w;
    const uint8_t *wd = w->data;
    const int64_t k = w->n_cols;
    for (int64_t t0 = 0; t0 < j->n_tok; t0 += KERN_TOK_TILE) {
        const int64_t t1 = t0 + KERN_TOK_TILE < j->n_tok ? t0 + KERN_TOK_TILE : j->n_tok;
        for (int64_t r = begin; r < end; r++) {
            const void *row = wd + (size_t)r * w->row_bytes;
            for (int64_t t = t0; t < t1; t++) {
                j->y[t * j->ldy + r] = j->dot(k, row, j->act + (size_t)t * j->act_stride);
            }
        }
    }
}

static tdm_status_t check_type(tdm_type_t type, int64_t n, const kern_type_cpu_t **out,
                               const char *what, tdm_error_t *err)
{
    const kern_type_cpu_t *tc = kern_type_cpu(type);
    if (tc == NULL) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "%s: type %s has no CPU kernels", what,
                             tdm_type_name(type));
    }
    const uint32_t blck = tdm_type_traits(type)->blck;
    if (n < 0 || blck == 0 || n % blck != 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "%s: %lld elements is not a multiple of the %s block (%u)", what,
                             (long long)n, tdm_type_name(type), blck);
    }
    *out = tc;
    return TDM_OK;
}

tdm_status_t kern_matmul(kern_ctx_t *ctx, const kern_weight_t *w, const float *x, int64_t ldx,
                         int64_t n_tok, float *y, int64_t ldy, tdm_error_t *err)
{
    if (ctx == NULL || w == NULL || (n_tok > 0 && (x == NULL || y == NULL))) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kern_matmul: NULL argument");
    }
    const kern_type_cpu_t *tc = NULL;
    TDM_CHECK(check_type(w->type, w->n_cols, &tc, "kern_matmul", err));
    if (tc->vec_dot[KERN_ISA_SCALAR] == NULL) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "kern_matmul: %s is not a weight type",
                             tdm_type_name(w->type));
    }
    if (w->n_cols <= 0 || w->n_rows < 0 || n_tok < 0 ||
        (n_tok > 1 && (ldx < w->n_cols || ldy < w->n_rows)) ||
        w->row_bytes < tdm_type_row_size(w->type, w->n_cols) ||
        (w->data == NULL && w->n_rows > 0)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "kern_matmul: inconsistent shapes (%s K=%lld N=%lld row_bytes=%zu "
                             "n_tok=%lld ldx=%lld ldy=%lld)",
                             tdm_type_name(w->type), (long long)w->n_cols, (long long)w->n_rows,
                             w->row_bytes, (long long)n_tok, (long long)ldx, (long long)ldy);
    }
    if (n_tok == 0 || w->n_rows == 0) {
        return TDM_OK;
    }

    matmul_job_t j = {
        .w = w,
        .dot = kern_vec_dot_get(w->type, kern_ctx_isa(ctx)),
        .n_tok = n_tok,
        .y = y,
        .ldy = ldy,
        .x = x,
        .ldx = ldx,
    };
    void *owned = NULL;
    if (tc->vec_dot_type == TDM_TYPE_F32) {
        j.act = (const uint8_t *)x;
        j.act_stride = (size_t)ldx * sizeof(float);
    } else {
        const kern_type_cpu_t *atc = kern_type_cpu(tc->vec_dot_type);
        j.from_float = atc->from_float;
        j.act_stride = tdm_type_row_size(tc->vec_dot_type, w->n_cols);
        const size_t bytes = j.act_stride * (size_t)n_tok;
        /* Inside a task the shared buffer may be in use by the outer call. */
        j.act_out = kern_in_task() ? (owned = malloc(bytes)) : kern_ctx_shared_scratch(ctx, bytes);
        if (j.act_out == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                                 "kern_matmul: cannot allocate %zu bytes of activations", bytes);
        }
        kern_parallel_for(ctx, n_tok, 1, convert_task, &j);
        j.act = j.act_out;
    }
    kern_parallel_for(ctx, w->n_rows, KERN_ROW_GRAIN, rows_task, &j);
    free(owned);
    return TDM_OK;
}

tdm_status_t kern_dequantize(tdm_type_t type, const void *src, float *dst, int64_t n,
                             tdm_error_t *err)
{
    const kern_type_cpu_t *tc = NULL;
    TDM_CHECK(check_type(type, n, &tc, "kern_dequantize", err));
    if (n > 0) {
        tc->to_float(src, dst, n);
    }
    return TDM_OK;
}

tdm_status_t kern_quantize(tdm_type_t type, const float *src, void *dst, int64_t n_rows,
                           int64_t n_per_row, tdm_error_t *err)
{
    const kern_type_cpu_t *tc = NULL;
    TDM_CHECK(check_type(type, n_per_row, &tc, "kern_quantize", err));
    if (tc->from_float == NULL) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "kern_quantize: no quantizer for %s",
                             tdm_type_name(type));
    }
    if (n_rows < 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kern_quantize: n_rows < 0");
    }
    const size_t row_bytes = tdm_type_row_size(type, n_per_row);
    for (int64_t r = 0; r < n_rows; r++) {
        tc->from_float(src + r * n_per_row, (uint8_t *)dst + (size_t)r * row_bytes, n_per_row);
    }
    return TDM_OK;
}

int kern_type_supported(tdm_type_t type)
{
    const kern_type_cpu_t *tc = kern_type_cpu(type);
    return tc != NULL && tc->vec_dot[KERN_ISA_SCALAR] != NULL;
}
