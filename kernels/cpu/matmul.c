/*
 * matmul.c - kern_matmul, kern_matmul_batch, kern_dequantize, kern_quantize,
 * kern_type_supported.
 *
 * A call converts its activations to the weight type's vec_dot_type (once per distinct
 * input, in parallel over tokens; one decoded token converts inline), then splits the
 * outputs into work items over the pool in one pass: for prefill KERN_ROW_BLK rows x
 * KERN_TOK_TILE tokens (see rows_part), for decode (n_tok == 1) runs of rows, a pure
 * weight stream. kern_matmul_batch puts up to KERN_MATMUL_MAX_OPS products (Q/K/V,
 * gate/up, the experts of a decoded token) in one call, so the pool is woken once.
 * Within a prefill item each weight row is dotted against the item's tokens while it is
 * hot in L1; with a multi-token kernel (vec_dot_tile, tile2, tile4) each weight block is
 * unpacked once per KERN_DOT_TILE tokens (and two or four rows share the activation loads).
 * Decode kernels read rows_group rows at a time (see KERN_ROWS_SHORT) and prefetch ahead.
 * The row kernels and tiles give a row and token the same bits as the type's vec_dot
 * (test_dot_rows), so results do not depend on batching, grouping or the thread count.
 */
#include "common/check.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/types_cpu.h"
#include "kernels/kern.h"

#include <stdlib.h>

#define KERN_TOK_TILE 16 /* tokens per work item (activations stay in L1/L2)       */
#define KERN_ROW_BLK  16 /* rows per work item: 64 bytes of y per token             */
_Static_assert(KERN_TOK_TILE <= KERN_GEMM_TOK && KERN_ROW_BLK <= KERN_GEMM_ROWS,
               "an AMX call takes a whole work item");
/* Decode streams each weight row once. Reading several rows block by block (sharing the
 * activation loads) pays only for short rows: measured on a 2-core AMD EPYC VM, two rows
 * at a time gain ~20% at 360-byte rows but lose up to 2x at 600+ bytes (the interleaved
 * streams are prefetched badly), so longer rows go one at a time. */
#define KERN_ROWS_SHORT 512
/* Decode batches with at most this many weights (rows x cols) run on the calling thread. */
#define KERN_SERIAL_WORK 32768

/* One weight of a call: its kernels, its output and its range of work items. */
typedef struct matmul_part {
    const kern_weight_t *w;
    kern_vec_dot_fn dot;
    kern_vec_dot_tile_fn tile;   /* NULL: one vec_dot per (row, token) */
    kern_vec_dot_tile2_fn tile2; /* prefill, two rows at a time; NULL: tile per row */
    kern_vec_dot_tile4_fn tile4; /* prefill, four rows at a time; NULL: tile2 */
    kern_vec_dot_rows_fn rows;   /* decode: rows_group rows per call; NULL: vec_dot */
    kern_gemm_fn gemm; /* AMX: every product of the type, decode and prefill; NULL: above */
    int rows_group;
    float *y;
    int64_t ldy;
    const uint8_t *act; /* its activations, converted: act_stride bytes per token */
    size_t act_stride;
    int64_t item0, item1; /* work items [item0, item1) of the call */
} matmul_part_t;

/* One activation conversion (several parts may share it). */
typedef struct matmul_conv {
    kern_from_float_fn from_float;
    const float *x;
    int64_t ldx, n_cols;
    uint8_t *out;
    size_t stride;
} matmul_conv_t;

typedef struct matmul_job {
    matmul_part_t part[KERN_MATMUL_MAX_OPS];
    int n_part;
    matmul_conv_t conv[KERN_MATMUL_MAX_OPS];
    int n_conv;
    int64_t n_tok_blk; /* token blocks of KERN_TOK_TILE per row block */
    int64_t n_tok;
} matmul_job_t;

static void convert_one(const matmul_conv_t *c, int64_t t)
{
    c->from_float(c->x + t * c->ldx, c->out + (size_t)t * c->stride, c->n_cols);
}

/* items: (conversion, token) pairs */
static void convert_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    const matmul_job_t *j = arg;
    for (int64_t it = begin; it < end; it++) {
        convert_one(&j->conv[it / j->n_tok], it % j->n_tok);
    }
}

/* Work item i of a part is (row block i / n_tok_blk, token block i % n_tok_blk): a chunk
 * of items is a run of whole row blocks (each thread streams its own weights; y is
 * written in 64-byte pieces per token, so threads never share a cache line of y when ldy
 * keeps rows aligned) unless there are fewer row blocks than threads, when token blocks
 * split too. */
static void rows_part(const matmul_job_t *j, const matmul_part_t *p, int64_t begin, int64_t end)
{
    const kern_weight_t *w = p->w;
    const uint8_t *wd = w->data;
    const int64_t k = w->n_cols;
    for (int64_t it = begin; it < end; it++) {
        const int64_t r0 = (it / j->n_tok_blk) * KERN_ROW_BLK;
        const int64_t r1 = r0 + KERN_ROW_BLK < w->n_rows ? r0 + KERN_ROW_BLK : w->n_rows;
        const int64_t t0 = (it % j->n_tok_blk) * KERN_TOK_TILE;
        const int64_t t1 = t0 + KERN_TOK_TILE < j->n_tok ? t0 + KERN_TOK_TILE : j->n_tok;
        if (p->gemm != NULL) { /* the whole item in one call */
            p->gemm(k, wd + (size_t)r0 * w->row_bytes, w->row_bytes, (int)(r1 - r0),
                    p->act + (size_t)t0 * p->act_stride, p->act_stride, (int)(t1 - t0),
                    p->y + t0 * p->ldy + r0, p->ldy);
            continue;
        }
        int64_t r = r0;
        if (p->tile4 != NULL) {
            for (; r + 3 < r1; r += 4) {
                const void *row = wd + (size_t)r * w->row_bytes;
                for (int64_t t = t0; t < t1; t += KERN_DOT_TILE) {
                    const int nt = t1 - t < KERN_DOT_TILE ? (int)(t1 - t) : KERN_DOT_TILE;
                    p->tile4(k, row, w->row_bytes, p->act + (size_t)t * p->act_stride,
                             p->act_stride, nt, p->y + t * p->ldy + r, p->ldy);
                }
            }
        }
        if (p->tile2 != NULL) {
            for (; r + 1 < r1; r += 2) {
                const void *row = wd + (size_t)r * w->row_bytes;
                for (int64_t t = t0; t < t1; t += KERN_DOT_TILE) {
                    const int nt = t1 - t < KERN_DOT_TILE ? (int)(t1 - t) : KERN_DOT_TILE;
                    p->tile2(k, row, w->row_bytes, p->act + (size_t)t * p->act_stride,
                             p->act_stride, nt, p->y + t * p->ldy + r, p->ldy);
                }
            }
        }
        for (; r < r1; r++) {
            const void *row = wd + (size_t)r * w->row_bytes;
            int64_t t = t0;
            if (p->tile != NULL) {
                for (; t + 1 < t1; t += KERN_DOT_TILE) {
                    const int nt = t1 - t < KERN_DOT_TILE ? (int)(t1 - t) : KERN_DOT_TILE;
                    p->tile(k, row, p->act + (size_t)t * p->act_stride, p->act_stride, nt,
                            p->y + t * p->ldy + r, p->ldy);
                }
            }
            for (; t < t1; t++) {
                p->y[t * p->ldy + r] = p->dot(k, row, p->act + (size_t)t * p->act_stride);
            }
        }
    }
}

/* Decode (one token): a pure weight stream over rows [begin, end) of a part. */
static void rows1_part(const matmul_part_t *p, int64_t begin, int64_t end)
{
    const kern_weight_t *w = p->w;
    const uint8_t *wd = w->data;
    if (p->gemm != NULL) {
        for (int64_t r = begin; r < end; r += KERN_GEMM_ROWS) {
            const int nr = end - r < KERN_GEMM_ROWS ? (int)(end - r) : KERN_GEMM_ROWS;
            p->gemm(w->n_cols, wd + (size_t)r * w->row_bytes, w->row_bytes, nr, p->act, 0, 1,
                    p->y + r, 0);
        }
        return;
    }
    if (p->rows != NULL) {
        p->rows(w->n_cols, wd + (size_t)begin * w->row_bytes, w->row_bytes, (int)(end - begin),
                p->rows_group, p->act, p->y + begin);
        return;
    }
    for (int64_t r = begin; r < end; r++) {
        p->y[r] = p->dot(w->n_cols, wd + (size_t)r * w->row_bytes, p->act);
    }
}

/* Items [begin, end) of the call, split over the parts they fall in. */
static void parts_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    const matmul_job_t *j = arg;
    for (int i = 0; i < j->n_part && begin < end; i++) {
        const matmul_part_t *p = &j->part[i];
        const int64_t b = begin > p->item0 ? begin : p->item0;
        const int64_t e = end < p->item1 ? end : p->item1;
        if (b >= e) {
            continue;
        }
        if (j->n_tok == 1) {
            rows1_part(p, b - p->item0, e - p->item0);
        } else {
            rows_part(j, p, b - p->item0, e - p->item0);
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

static tdm_status_t check_weight(const kern_weight_t *w, const float *x, int64_t ldx, int64_t n_tok,
                                 const float *y, int64_t ldy, const kern_type_cpu_t **tc,
                                 tdm_error_t *err)
{
    if (w == NULL || (n_tok > 0 && (x == NULL || y == NULL))) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kern_matmul: NULL argument");
    }
    TDM_CHECK(check_type(w->type, w->n_cols, tc, "kern_matmul", err));
    if ((*tc)->vec_dot[KERN_ISA_SCALAR] == NULL) {
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
    return TDM_OK;
}

tdm_status_t kern_matmul_batch(kern_ctx_t *ctx, int n_ops, const kern_matmul_op_t *ops,
                               int64_t n_tok, tdm_error_t *err)
{
    if (ctx == NULL || n_ops < 0 || n_ops > KERN_MATMUL_MAX_OPS || (n_ops > 0 && ops == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kern_matmul: bad arguments");
    }
    const kern_type_cpu_t *tc[KERN_MATMUL_MAX_OPS];
    int64_t work = 0;
    for (int i = 0; i < n_ops; i++) {
        TDM_CHECK(
            check_weight(ops[i].w, ops[i].x, ops[i].ldx, n_tok, ops[i].y, ops[i].ldy, &tc[i], err));
        work += ops[i].w->n_rows * ops[i].w->n_cols;
    }
    if (n_tok == 0 || n_ops == 0) {
        return TDM_OK;
    }
    const kern_isa_t isa = kern_ctx_isa(ctx);
    matmul_job_t j = {.n_part = n_ops, .n_tok = n_tok};
    j.n_tok_blk = (n_tok + KERN_TOK_TILE - 1) / KERN_TOK_TILE;

    /* activations: one conversion per distinct (x, ldx, format, width) */
    int conv_of[KERN_MATMUL_MAX_OPS];
    size_t act_bytes = 0;
    for (int i = 0; i < n_ops; i++) {
        const tdm_type_t vdt = tc[i]->vec_dot_type;
        conv_of[i] = -1;
        if (vdt == TDM_TYPE_F32) {
            continue;
        }
        const kern_from_float_fn ff = kern_from_float_get(vdt, isa);
        for (int c = 0; c < j.n_conv; c++) {
            const matmul_conv_t *cv = &j.conv[c];
            if (cv->x == ops[i].x && cv->ldx == ops[i].ldx && cv->from_float == ff &&
                cv->n_cols == ops[i].w->n_cols) {
                conv_of[i] = c;
                break;
            }
        }
        if (conv_of[i] < 0) {
            matmul_conv_t *cv = &j.conv[j.n_conv];
            *cv = (matmul_conv_t){.from_float = ff,
                                  .x = ops[i].x,
                                  .ldx = ops[i].ldx,
                                  .n_cols = ops[i].w->n_cols,
                                  .stride = tdm_type_row_size(vdt, ops[i].w->n_cols)};
            /* keep each conversion 64-byte aligned in the buffer */
            act_bytes += (cv->stride * (size_t)n_tok + 63) & ~(size_t)63;
            conv_of[i] = j.n_conv++;
        }
    }
    void *owned = NULL;
    if (j.n_conv > 0) {
        /* Inside a task the shared buffer may be in use by the outer call. */
        uint8_t *buf =
            kern_in_task() ? (owned = malloc(act_bytes)) : kern_ctx_shared_scratch(ctx, act_bytes);
        if (buf == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                                 "kern_matmul: cannot allocate %zu bytes of activations",
                                 act_bytes);
        }
        for (int c = 0; c < j.n_conv; c++) {
            j.conv[c].out = buf;
            buf += (j.conv[c].stride * (size_t)n_tok + 63) & ~(size_t)63;
        }
        if (n_tok == 1) {
            for (int c = 0; c < j.n_conv; c++) { /* not worth a pool round trip */
                convert_one(&j.conv[c], 0);
            }
        } else {
            kern_parallel_for(ctx, j.n_conv * n_tok, 1, convert_task, &j);
        }
    }

    int64_t items = 0;
    for (int i = 0; i < n_ops; i++) {
        const kern_weight_t *w = ops[i].w;
        matmul_part_t *p = &j.part[i];
        p->w = w;
        p->dot = kern_vec_dot_get(w->type, isa);
        p->y = ops[i].y;
        p->ldy = ops[i].ldy;
        if (conv_of[i] < 0) {
            p->act = (const uint8_t *)ops[i].x;
            p->act_stride = (size_t)ops[i].ldx * sizeof(float);
        } else {
            p->act = j.conv[conv_of[i]].out;
            p->act_stride = j.conv[conv_of[i]].stride;
        }
        if (n_tok == 1) {
            p->rows = kern_vec_dot_rows_get(w->type, isa);
            /* AVX-512's own row kernels (precomputed activations, prefetch into L2) gain
             * from two rows at any length: gpt-oss's Q8_0 head 11.6 -> 12.3 GB/s, its
             * MXFP4 experts 8.4 -> 9.4 (1 thread, CPU time, from the mapped GGUF) */
            const int own512 = isa == KERN_ISA_AVX512 && tc[i]->vec_dot[KERN_ISA_AVX512] != NULL;
            p->rows_group = w->row_bytes <= KERN_ROWS_SHORT || own512 ? 2 : 1;
        } else {
            /* prefill: the multi-token kernels when this ISA has them for the type */
            p->tile = kern_vec_dot_tile_get(w->type, isa);
            p->tile2 = kern_vec_dot_tile2_get(w->type, isa);
            p->tile4 = kern_vec_dot_tile4_get(w->type, isa);
        }
        /* row-lane products (AMX, or AVX-512 VNNI: the same bits): decode too, so a
         * token's result does not depend on the batch */
        p->gemm = kern_gemm_get(w->type, isa, kern_ctx_amx(ctx));
        p->item0 = items;
        items +=
            n_tok == 1 ? w->n_rows : (w->n_rows + KERN_ROW_BLK - 1) / KERN_ROW_BLK * j.n_tok_blk;
        p->item1 = items;
    }
    if (n_tok == 1 && work <= KERN_SERIAL_WORK) {
        /* too small to pay for waking the pool (e.g. a MoE router) */
        parts_task(&j, 0, items, 0);
    } else {
        kern_parallel_for(ctx, items, n_tok == 1 ? KERN_ROW_BLK : 1, parts_task, &j);
    }
    free(owned);
    return TDM_OK;
}

tdm_status_t kern_matmul(kern_ctx_t *ctx, const kern_weight_t *w, const float *x, int64_t ldx,
                         int64_t n_tok, float *y, int64_t ldy, tdm_error_t *err)
{
    if (w == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kern_matmul: NULL argument");
    }
    const kern_matmul_op_t op = {w, x, ldx, y, ldy};
    return kern_matmul_batch(ctx, 1, &op, n_tok, err);
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
