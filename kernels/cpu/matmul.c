/*
 * matmul.c - kern_matmul, kern_dequantize, kern_quantize, kern_type_supported.
 *
 * kern_matmul converts the activations once per call to the weight type's vec_dot_type
 * (in parallel over tokens), then splits the output into work items of KERN_ROW_BLK rows x
 * KERN_TOK_TILE tokens over the pool (see rows_task). Within an item each weight row is
 * dotted against the item's tokens while it is hot in L1; for prefill on ISAs with a
 * multi-token kernel (vec_dot_tile) each weight block is also unpacked once per
 * KERN_DOT_TILE tokens instead of once per token. Decode (n_tok == 1) is the same loop
 * with one token: a pure weight stream.
 */
#include "common/check.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/types_cpu.h"
#include "kernels/kern.h"

#include <stdlib.h>

#define KERN_TOK_TILE 16 /* tokens per work item (activations stay in L1/L2)       */
#define KERN_ROW_BLK  16 /* rows per work item: 64 bytes of y per token             */

typedef struct matmul_job {
    const kern_weight_t *w;
    kern_vec_dot_fn dot;
    kern_vec_dot_tile_fn tile; /* NULL: one vec_dot per (row, token) */
    int64_t n_tok_blk;         /* token blocks of KERN_TOK_TILE per row block */
    const uint8_t *act;        /* converted activations, act_stride bytes per token */
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

/* Work item i is (row block i / n_tok_blk, token block i % n_tok_blk): a chunk of items
 * is a run of whole row blocks (each thread streams its own weights; y is written in
 * 64-byte pieces per token, so threads never share a cache line of y when ldy keeps rows
 * aligned) unless there are fewer row blocks than threads, when token blocks split too. */
static void rows_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    const matmul_job_t *j = arg;
    const kern_weight_t *w = j->w;
    const uint8_t *wd = w->data;
    const int64_t k = w->n_cols;
    for (int64_t it = begin; it < end; it++) {
        const int64_t r0 = (it / j->n_tok_blk) * KERN_ROW_BLK;
        const int64_t r1 = r0 + KERN_ROW_BLK < w->n_rows ? r0 + KERN_ROW_BLK : w->n_rows;
        const int64_t t0 = (it % j->n_tok_blk) * KERN_TOK_TILE;
        const int64_t t1 = t0 + KERN_TOK_TILE < j->n_tok ? t0 + KERN_TOK_TILE : j->n_tok;
        for (int64_t r = r0; r < r1; r++) {
            const void *row = wd + (size_t)r * w->row_bytes;
            int64_t t = t0;
            if (j->tile != NULL) {
                for (; t + 1 < t1; t += KERN_DOT_TILE) {
                    const int nt = t1 - t < KERN_DOT_TILE ? (int)(t1 - t) : KERN_DOT_TILE;
                    j->tile(k, row, j->act + (size_t)t * j->act_stride, j->act_stride, nt,
                            j->y + t * j->ldy + r, j->ldy);
                }
            }
            for (; t < t1; t++) {
                j->y[t * j->ldy + r] = j->dot(k, row, j->act + (size_t)t * j->act_stride);
            }
        }
    }
}

/* Decode (one token): a pure weight stream over rows [begin, end). */
static void rows1_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    const matmul_job_t *j = arg;
    const kern_weight_t *w = j->w;
    const uint8_t *wd = w->data;
    for (int64_t r = begin; r < end; r++) {
        j->y[r] = j->dot(w->n_cols, wd + (size_t)r * w->row_bytes, j->act);
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
    if (n_tok == 1) {
        kern_parallel_for(ctx, w->n_rows, KERN_ROW_BLK, rows1_task, &j);
        free(owned);
        return TDM_OK;
    }
    /* prefill: the multi-token kernel when this ISA has one for the type */
    j.tile = kern_vec_dot_tile_get(w->type, kern_ctx_isa(ctx));
    j.n_tok_blk = (n_tok + KERN_TOK_TILE - 1) / KERN_TOK_TILE;
    const int64_t n_row_blk = (w->n_rows + KERN_ROW_BLK - 1) / KERN_ROW_BLK;
    kern_parallel_for(ctx, n_row_blk * j.n_tok_blk, 1, rows_task, &j);
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
