/*
 * backend_cpu.c - the CPU backend: kern_backend.h's ops on the CPU kernels of this folder,
 * run on one kern_ctx_t thread pool. Backend memory is host memory (64-byte aligned),
 * weights stay views into the mapped GGUF file, and every op runs to completion before it
 * returns, so sync and step_end have nothing to wait for.
 */
#include "common/mem.h"
#include "common/meminfo.h"
#include "kernels/cpu/backend_cpu.h"
#include "kernels/cpu/pool.h"
#include "kernels/kern_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void cpu_destroy(kern_backend_t *be)
{
    cpu_backend_t *c = cpu_be(be);
    kern_ctx_destroy(c->ctx);
    free(c->arena);
    free(c);
}

static tdm_status_t cpu_mem_info(kern_backend_t *be, uint64_t *free_b, uint64_t *total_b,
                                 tdm_error_t *err)
{
    (void)be;
    return tdm_meminfo_read(NULL, free_b, total_b, err);
}

static tdm_status_t cpu_alloc(kern_backend_t *be, size_t bytes, unsigned flags, const char *what,
                              void **out, tdm_error_t *err)
{
    (void)be;
    (void)flags;
    void *p = tdm_aligned_alloc(bytes > 0 ? bytes : 1);
    if (p == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory for %.1f MiB", what,
                             (double)bytes / 1048576.0);
    }
    memset(p, 0, bytes);
    *out = p;
    return TDM_OK;
}

static void cpu_free(kern_backend_t *be, void *p)
{
    (void)be;
    free(p);
}

static tdm_status_t cpu_copy_sync(kern_backend_t *be, void *dst, const void *src, size_t n,
                                  tdm_error_t *err)
{
    (void)be;
    (void)err;
    memmove(dst, src, n);
    return TDM_OK;
}

static tdm_status_t cpu_sync(kern_backend_t *be, tdm_error_t *err)
{
    (void)be;
    (void)err;
    return TDM_OK;
}

static void cpu_copy(kern_backend_t *be, void *dst, const void *src, size_t n)
{
    (void)be;
    memmove(dst, src, n);
}

static uint64_t cpu_weights_bytes(const kern_backend_t *be, const kern_weight_ref_t *refs, int n)
{
    (void)be;
    (void)refs;
    (void)n;
    return 0; /* the views stay in the mapped file */
}

static tdm_status_t cpu_weights_load(kern_backend_t *be, kern_weight_ref_t *refs, int n,
                                     kern_release_fn release, void *release_arg, void **region,
                                     tdm_error_t *err)
{
    *region = NULL;
    (void)be;
    (void)refs;
    (void)n;
    (void)release;
    (void)release_arg;
    (void)err;
    return TDM_OK;
}

static size_t pad16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Sizes of the reserved scratch, in floats, in the order cpu_reserve carves it. */
#define N_RESERVE 12

static void reserve_sizes(int threads, const kern_reserve_t *r, size_t sizes[N_RESERVE])
{
    const size_t nt = (size_t)(threads > 0 ? threads : 1);
    const size_t B = (size_t)r->n_tok, E = (size_t)r->n_embd;
    const size_t k = (size_t)(r->n_expert_used > 0 ? r->n_expert_used : 1);
    const size_t rows = B > k ? B : k;
    const bool moe = r->n_expert > 0;
    const size_t ar = (size_t)kern_cpu_attn_rows(r->n_ctx);
    sizes[0] = nt * ar * (size_t)r->n_ctx; /* att_s: scores of a tile's rows */
    sizes[1] = nt * (ar + KERN_ATTN_CONV_ROWS) * (size_t)r->head_dim; /* att_row */
    sizes[2] = moe ? B : 0;                                           /* etok    */
    sizes[3] = moe ? B : 0;                                           /* ew      */
    sizes[4] = moe ? B * E : 0;                                       /* ex      */
    sizes[5] = moe ? rows * E : 0;                                    /* ey      */
    sizes[6] = moe ? rows * (size_t)r->n_ff_exp : 0;                  /* ff_a */
    sizes[7] = moe ? rows * (size_t)r->n_ff_exp : 0;                  /* ff_b */
    const bool gdn = r->gdn_head_dim > 0;
    sizes[8] = gdn ? B : 0; /* gdn_run0    */
    sizes[9] = gdn ? B : 0; /* gdn_runlen  */
    sizes[10] = gdn ? nt * pad16(kern_cpu_gdn_scratch_floats(r->gdn_head_dim)) : 0; /* scratch */
    sizes[11] = B + 1;                                                              /* att_tiles */
}

uint64_t kern_cpu_reserve_bytes(const kern_reserve_t *r, int threads)
{
    size_t sizes[N_RESERVE], total = 0;
    reserve_sizes(threads, r, sizes);
    for (int i = 0; i < N_RESERVE; i++) {
        total += pad16(sizes[i]);
    }
    return (uint64_t)total * sizeof(float);
}

static uint64_t cpu_reserve_bytes(const kern_backend_t *be, const kern_reserve_t *r)
{
    const cpu_backend_t *c = (const cpu_backend_t *)be;
    return kern_cpu_reserve_bytes(r, kern_ctx_n_threads(c->ctx));
}

static tdm_status_t cpu_reserve(kern_backend_t *be, const kern_reserve_t *r, tdm_error_t *err)
{
    cpu_backend_t *c = cpu_be(be);
    size_t sizes[N_RESERVE], total = 0;
    reserve_sizes(kern_ctx_n_threads(c->ctx), r, sizes);
    for (int i = 0; i < N_RESERVE; i++) {
        total += pad16(sizes[i]);
    }
    float *arena = tdm_aligned_alloc(total * sizeof(float) + 64);
    if (arena == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                             "cpu backend: out of memory for %zu MiB of "
                             "op scratch",
                             total * sizeof(float) >> 20);
    }
    free(c->arena);
    c->arena = arena;
    c->r = *r;
    float *p = arena;
    void **slots[N_RESERVE] = {
        (void **)&c->att_s,      (void **)&c->att_row,     (void **)&c->etok,
        (void **)&c->ew,         (void **)&c->ex,          (void **)&c->ey,
        (void **)&c->ff_a,       (void **)&c->ff_b,        (void **)&c->gdn_run0,
        (void **)&c->gdn_runlen, (void **)&c->gdn_scratch, (void **)&c->att_tiles};
    c->gdn_scratch_stride = pad16(kern_cpu_gdn_scratch_floats(r->gdn_head_dim));
    for (int i = 0; i < N_RESERVE; i++) {
        *slots[i] = p; /* etok shares the float arena: same size and alignment */
        p += pad16(sizes[i]);
    }
    return TDM_OK;
}

static void cpu_step_begin(kern_backend_t *be, const kern_step_t *st, bool graphable)
{
    (void)be;
    (void)st;
    (void)graphable;
}

static tdm_status_t cpu_step_end(kern_backend_t *be, bool *rerun, tdm_error_t *err)
{
    (void)be;
    (void)err;
    *rerun = false;
    return TDM_OK;
}

/* ---- ops --------------------------------------------------------------------------- */

static void cpu_get_rows(kern_backend_t *be, float *x, int64_t ldx, const kern_weight_t *emb)
{
    const kern_step_t *st = be->step;
    for (int32_t t = 0; t < st->n_tokens; t++) {
        const unsigned char *row =
            (const unsigned char *)emb->data + (size_t)st->token[t] * emb->row_bytes;
        tdm_error_t err = {0};
        if (kern_dequantize(emb->type, row, x + t * ldx, emb->n_cols, &err) != TDM_OK) {
            kern_be_fail(be, err.status, "embedding: %s", tdm_error_msg(&err));
            return;
        }
    }
}

static void cpu_get_out_rows(kern_backend_t *be, float *dst, int64_t ldd, const float *src,
                             int64_t lds, int64_t cols)
{
    const kern_step_t *st = be->step;
    for (int32_t i = 0; i < st->n_out; i++) {
        memcpy(dst + i * ldd, src + (int64_t)st->out_idx[i] * lds, (size_t)cols * sizeof(float));
    }
}

static void cpu_rms_norm(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                         const float *w, int64_t rows, int64_t cols, float eps)
{
    (void)be;
    kern_op_rms_norm_f32(y, ldy, x, ldx, w, rows, cols, eps);
}

static void cpu_rope(kern_backend_t *be, float *x, int64_t ld, int n_heads, int head_dim,
                     const mdl_rope_params_t *p, const float *freq_factors)
{
    kern_op_rope_f32(x, ld, be->step->n_tokens, n_heads, head_dim, be->step->pos, p, freq_factors);
}

static void cpu_matmul(kern_backend_t *be, int n_ops, const kern_matmul_op_t *ops, int64_t n_tok)
{
    tdm_error_t err = {0};
    if (kern_matmul_batch(cpu_be(be)->ctx, n_ops, ops, n_tok, &err) != TDM_OK) {
        kern_be_fail(be, err.status, "%s", tdm_error_msg(&err));
    }
}

static void cpu_swiglu(kern_backend_t *be, float *out, const float *gate, const float *up,
                       int64_t n)
{
    kern_op_silu_mul_f32_isa(kern_ctx_isa(cpu_be(be)->ctx), out, gate, up, n);
}

static void cpu_add(kern_backend_t *be, float *y, const float *a, const float *b, int64_t n)
{
    (void)be;
    kern_op_add_f32(y, a, b, n);
}

static void cpu_add_bias(kern_backend_t *be, float *y, int64_t ldy, const float *bias, int64_t rows,
                         int64_t cols)
{
    (void)be;
    kern_op_add_bias_f32(y, ldy, bias, rows, cols);
}

static void cpu_sum_sq(kern_backend_t *be, float *ss, int64_t lds, const float *x, int64_t ldx,
                       int64_t rows, int64_t cols)
{
    (void)be;
    kern_op_sum_sq_f32(ss, lds, x, ldx, rows, cols);
}

static void cpu_rms_apply(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                          const float *ss, int64_t lds, const float *w, int64_t rows, int64_t cols,
                          int64_t n_total, float eps)
{
    (void)be;
    kern_op_rms_apply_f32(y, ldy, x, ldx, ss, lds, w, rows, cols, n_total, eps);
}

/* The block table a layout reads: the sliding pool's or the full one's. */
static const int32_t *seq_table(const kern_seq_t *sq, const kern_kv_layout_t *l)
{
    return l->swa ? sq->swa_blocks : sq->blocks;
}

/* False (and the backend failed) when a sliding layout meets a step without sliding
 * tables: the shard's check_batch refuses such a step, so this is a caller bug. */
static bool tables_ok(kern_backend_t *be, const kern_kv_layout_t *l)
{
    const kern_step_t *st = be->step;
    for (int32_t s = 0; l->swa && s < st->n_seqs; s++) {
        if (st->seqs[s].swa_blocks == NULL) {
            kern_be_fail(be, TDM_ERR_INTERNAL, "kv cache: sequence %d has no sliding table", s);
            return false;
        }
    }
    return true;
}

static void cpu_kv_store(kern_backend_t *be, const kern_kv_layout_t *l, void *k_layer,
                         void *v_layer, const float *k, const float *v, int64_t ld)
{
    const kern_step_t *st = be->step;
    const int B = l->block_tokens, hd = l->head_dim;
    if (!tables_ok(be, l)) {
        return;
    }
    for (int32_t t = 0; t < st->n_tokens; t++) {
        const kern_seq_t *sq = &st->seqs[st->seq[t]];
        const int32_t blk = seq_table(sq, l)[st->pos[t] / B], slot = st->pos[t] % B;
        for (int h = 0; h < l->n_kv_heads; h++) {
            const size_t off = (size_t)blk * l->block_bytes +
                               ((size_t)h * (size_t)B + (size_t)slot) * l->row_bytes;
            kern_op_kv_row_store(l->type, (unsigned char *)k_layer + off, k + t * ld + h * hd, hd);
            kern_op_kv_row_store(l->type, (unsigned char *)v_layer + off, v + t * ld + h * hd, hd);
        }
    }
}

/* The keys position pos attends to, its score scale and its head's sink. */
kern_attn_span_t kern_attn_span_of(const kern_attn_params_t *p, int32_t pos, int h)
{
    kern_attn_span_t sp = {
        .lo = p->window > 0 && pos >= p->window ? pos - p->window + 1 : 0,
        .hi = pos + 1,
        .scale = p->scale,
        .sink = p->sinks != NULL ? p->sinks[h] : -INFINITY,
    };
    if (p->temp_scale != 0.0f) {
        /* llama.cpp's per-position factor on q (llm_graph_input_attn_temp), in double */
        const double f =
            log(floor((double)pos / (double)p->temp_floor) + 1.0) * p->temp_scale + 1.0;
        sp.scale = (float)((double)p->scale * f);
    }
    return sp;
}

/*
 * Attention in tiles: the step's tokens are cut into tiles of consecutive tokens of one
 * sequence (c->att_tiles), the local q heads into chunks of heads that share a KV head;
 * an item is one (tile, head chunk), whose rows read each key and value block once
 * (kern_op_attn_tile). Heads are chunked finer when there are too few items for the
 * threads, and tokens per tile are bounded by the scratch (kern_cpu_attn_rows).
 */
typedef struct attn_task {
    kern_backend_t *be;
    float *out;
    const float *q;
    const kern_kv_layout_t *l;
    const unsigned char *k, *v;
    const kern_attn_params_t *p;
    int32_t n_tiles;
    int n_chunks;    /* head chunks per tile */
    int heads_chunk; /* most heads in a chunk */
} attn_task_t;

/* Rows of scores a thread's scratch holds for contexts of n_ctx: about 4 MiB of them, at
 * least one row and at most 32 (kern_op_attn_tile's inner tile). */
int kern_cpu_attn_rows(int64_t n_ctx)
{
    const int64_t r = n_ctx > 0 ? ((int64_t)1 << 20) / n_ctx : 32;
    return r < 1 ? 1 : r > 32 ? 32 : (int)r;
}

static int kv_head_of(const kern_attn_params_t *p, int h)
{
    return (p->head_lo + h) / p->group - p->kv_lo;
}

/* Head chunk `idx` of the local heads: [*h0, *h0 + return value). Chunks never cross a KV
 * head and hold at most per heads. */
static int head_chunk(const kern_attn_params_t *p, int per, int idx, int *h0)
{
    int h = 0;
    while (h < p->n_head) {
        int e = h + 1;
        while (e < p->n_head && e - h < per && kv_head_of(p, e) == kv_head_of(p, h)) {
            e++;
        }
        if (idx-- == 0) {
            *h0 = h;
            return e - h;
        }
        h = e;
    }
    *h0 = 0;
    return 0;
}

static void attn_worker(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    const attn_task_t *a = arg;
    cpu_backend_t *c = cpu_be(a->be);
    const kern_step_t *st = a->be->step;
    const kern_kv_layout_t *l = a->l;
    const int hd = l->head_dim, H = a->p->n_head;
    const int rows_max = kern_cpu_attn_rows(c->r.n_ctx);
    float *sc = c->att_s + (size_t)thread_idx * (size_t)rows_max * (size_t)c->r.n_ctx;
    float *acc = c->att_row + (size_t)thread_idx * (size_t)(rows_max + KERN_ATTN_CONV_ROWS) * hd;
    float *conv = acc + (size_t)rows_max * hd;
    const kern_isa_t isa = kern_ctx_isa(c->ctx);
    kern_attn_row_t rows[32];
    for (int64_t item = begin; item < end; item++) {
        const int32_t tile = (int32_t)(item / a->n_chunks);
        int h0;
        const int nh = head_chunk(a->p, a->heads_chunk, (int)(item % a->n_chunks), &h0);
        const int32_t t0 = c->att_tiles[tile], t1 = c->att_tiles[tile + 1];
        const int kvh = kv_head_of(a->p, h0);
        const int32_t *table = seq_table(&st->seqs[st->seq[t0]], l);
        const size_t hoff = (size_t)kvh * (size_t)l->block_tokens * l->row_bytes;
        int n = 0;
        for (int32_t t = t0; t < t1; t++) {
            for (int h = h0; h < h0 + nh; h++) {
                rows[n].q = a->q + ((size_t)t * H + h) * hd;
                rows[n].out = a->out + ((size_t)t * H + h) * hd;
                rows[n].sp = kern_attn_span_of(a->p, st->pos[t], h);
                n++;
            }
        }
        kern_op_attn_tile(isa, l->type, rows, n, a->k + hoff, a->v + hoff, table, l->block_bytes,
                          l->block_tokens, l->row_bytes, hd, sc, (size_t)c->r.n_ctx, acc, conv);
    }
}

static void cpu_attention(kern_backend_t *be, float *out, const float *q, const kern_kv_layout_t *l,
                          const void *k_layer, const void *v_layer, const kern_attn_params_t *p)
{
    if (!tables_ok(be, l)) {
        return;
    }
    cpu_backend_t *c = cpu_be(be);
    const kern_step_t *st = be->step;
    const int rows_max = kern_cpu_attn_rows(c->r.n_ctx);
    const int n_threads = kern_ctx_n_threads(c->ctx);
    /* heads per chunk: a whole GQA group, halved while the items would leave threads idle */
    int per = p->group < p->n_head ? p->group : p->n_head;
    per = per < rows_max ? per : rows_max;
    per = per > 0 ? per : 1;
    int n_chunks = 0;
    int32_t n_tiles = 0;
    for (;;) {
        n_chunks = 0;
        for (int h0 = 0; head_chunk(p, per, n_chunks, &h0) > 0;) {
            n_chunks++;
        }
        /* tiles: runs of one sequence's tokens, at most rows_max / per tokens each */
        const int32_t tok_per_tile = rows_max / per > 0 ? rows_max / per : 1;
        n_tiles = 0;
        for (int32_t t = 0; t < st->n_tokens;) {
            int32_t e = t + 1;
            while (e < st->n_tokens && e - t < tok_per_tile && st->seq[e] == st->seq[t]) {
                e++;
            }
            c->att_tiles[n_tiles++] = t;
            t = e;
        }
        c->att_tiles[n_tiles] = st->n_tokens;
        if (per == 1 || (int64_t)n_tiles * n_chunks >= 2 * (int64_t)n_threads) {
            break;
        }
        per = (per + 1) / 2;
    }
    attn_task_t task = {be, out, q, l, k_layer, v_layer, p, n_tiles, n_chunks, per};
    kern_parallel_for(c->ctx, (int64_t)n_tiles * n_chunks, 1, attn_worker, &task);
}

static void cpu_moe_route(kern_backend_t *be, float *logits, const kern_route_t *r, int32_t *sel,
                          float *w)
{
    for (int32_t t = 0; t < be->step->n_tokens; t++) {
        kern_op_route_token(logits + (int64_t)t * r->n_expert, r, sel + t * r->k, w + t * r->k);
    }
}

static const kern_backend_ops_t cpu_ops = {
    .destroy = cpu_destroy,
    .mem_info = cpu_mem_info,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_copy_sync,
    .to_host = cpu_copy_sync,
    .sync = cpu_sync,
    .copy = cpu_copy,
    .weights_bytes = cpu_weights_bytes,
    .weights_load = cpu_weights_load,
    .reserve_bytes = cpu_reserve_bytes,
    .reserve = cpu_reserve,
    .step_begin = cpu_step_begin,
    .step_end = cpu_step_end,
    .get_rows = cpu_get_rows,
    .get_out_rows = cpu_get_out_rows,
    .rms_norm = cpu_rms_norm,
    .rope = cpu_rope,
    .matmul = cpu_matmul,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .add_bias = cpu_add_bias,
    .sum_sq = cpu_sum_sq,
    .rms_apply = cpu_rms_apply,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .moe_route = cpu_moe_route,
    .moe_experts = kern_cpu_moe_experts,
    .gdn_conv = kern_cpu_gdn_conv,
    .gdn_rule = kern_cpu_gdn_rule,
    .rms_norm_gated = kern_cpu_rms_norm_gated,
    .mul_sigmoid = kern_cpu_mul_sigmoid,
};

tdm_status_t kern_backend_create_cpu(const kern_backend_params_t *p, kern_backend_t **out,
                                     tdm_error_t *err)
{
    cpu_backend_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "cpu backend: out of memory");
    }
    tdm_status_t st = kern_ctx_create(p->n_threads, p->isa_override, &c->ctx, err);
    if (st != TDM_OK) {
        free(c);
        return st;
    }
    c->base.ops = &cpu_ops;
    c->base.kind = KERN_DEVICE_CPU;
    c->base.host_memory = true;
    c->base.impl = c;
    snprintf(c->base.desc, sizeof(c->base.desc), "cpu (%s, %d threads)",
             kern_isa_name(kern_ctx_isa(c->ctx)), kern_ctx_n_threads(c->ctx));
    *out = &c->base;
    return TDM_OK;
}

kern_ctx_t *kern_be_cpu_ctx(kern_backend_t *be)
{
    return be != NULL && be->kind == KERN_DEVICE_CPU ? cpu_be(be)->ctx : NULL;
}
