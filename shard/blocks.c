/*
 * blocks.c - the blocks llama-family layers are made of, shared by the files in shard/models:
 * input RMSNorm, GQA attention over the paged KV cache, SwiGLU FFN, and the routed MoE
 * FFN. Each works on all tokens of the step at once (kern_matmul for every projection)
 * and leaves its output in m->s.proj, already summed over the ranks that hold the
 * other slices.
 */
#include "common/check.h"
#include "kernels/kern_ops.h"
#include "shard/shd_internal.h"

#include <math.h>
#include <string.h>

tdm_status_t shd_all_reduce(shd_model_t *m, shd_group_t g, float *buf, int64_t n, tdm_error_t *err)
{
    /* A group of one still calls when the world is larger: every rank makes the same
     * calls in the same order (shd_comm.h). */
    if (m->world_size == 1) {
        return TDM_OK;
    }
    return m->params.comm.ops->all_reduce_sum_f32(m->params.comm.impl, g, buf, n, err);
}

void shd_norm_input(shd_model_t *m, int64_t n_tok, const float *w)
{
    const int64_t E = m->hp.n_embd;
    kern_op_rms_norm_f32(m->s.xn, E, m->s.x, E, w, n_tok, E, m->hp.rms_eps);
}

void shd_residual_add(shd_model_t *m, int64_t n_tok)
{
    const int64_t n = n_tok * m->hp.n_embd;
    kern_op_add_f32(m->s.x, m->s.x, m->s.proj, n);
}

/* ---- attention ---- */

typedef struct attn_task {
    shd_model_t *m;
    shd_kv_cache_t *kv;
    const shd_batch_t *b;
    int il;
} attn_task_t;

/* One (token, local q head) per item: scores against every key of the token's sequence
 * at positions 0..pos, softmax, weighted sum of values. */
static void attn_worker(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    const attn_task_t *a = arg;
    shd_model_t *m = a->m;
    const mdl_hparams_t *hp = &m->hp;
    const int hd = hp->head_dim, B = shd_kv_cache_config(a->kv)->block_tokens;
    const int group = hp->n_head / hp->n_head_kv;
    float *sc = m->s.att_s + (size_t)thread_idx * (size_t)m->params.n_ctx_max;
    const kern_isa_t isa = kern_ctx_isa(m->kctx);
    /* this layer's K/V base; block ids index whole blocks of n_kv_l heads x B slots */
    const float *k0 = shd_kv_k(a->kv, a->il, 0), *v0 = shd_kv_v(a->kv, a->il, 0);
    const size_t bstride = (size_t)m->n_kv_l * (size_t)B * (size_t)hd;
    for (int64_t item = begin; item < end; item++) {
        const int64_t t = item / m->n_head_l;
        const int h = (int)(item % m->n_head_l);
        const int kvh = (m->head_lo + h) / group - m->kv_lo;
        const float *q = m->s.q + (t * m->n_head_l + h) * hd;
        const shd_seq_view_t *sv = &a->b->seqs[a->b->seq[t]];
        const size_t hoff = (size_t)kvh * (size_t)B * (size_t)hd;
        kern_op_attn_head_f32(isa, m->s.attn + (t * m->n_head_l + h) * hd, q, k0 + hoff, v0 + hoff,
                              sv->blocks, bstride, B, a->b->pos[t] + 1, hd, hp->attn_scale, sc);
    }
}

tdm_status_t shd_block_attention(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                                 tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const shd_layer_t *L = &m->layers[il];
    const int64_t n = b->n_tokens, E = hp->n_embd, hd = hp->head_dim;
    const int64_t qd = (int64_t)m->n_head_l * hd, kd = (int64_t)m->n_kv_l * hd;
    shd_scratch_t *s = &m->s;

    const kern_matmul_op_t qkv[3] = {
        {&L->wq, s->xn, E, s->q, qd}, {&L->wk, s->xn, E, s->k, kd}, {&L->wv, s->xn, E, s->v, kd}};
    TDM_CHECK(kern_matmul_batch(m->kctx, 3, qkv, n, err));
    if (L->q_norm != NULL) {
        kern_op_rms_norm_f32(s->q, hd, s->q, hd, L->q_norm, n * m->n_head_l, hd, hp->rms_eps);
        kern_op_rms_norm_f32(s->k, hd, s->k, hd, L->k_norm, n * m->n_kv_l, hd, hp->rms_eps);
    }
    kern_op_rope_f32(s->q, qd, n, m->n_head_l, (int)hd, b->pos, &hp->rope, m->rope_freqs);
    kern_op_rope_f32(s->k, kd, n, m->n_kv_l, (int)hd, b->pos, &hp->rope, m->rope_freqs);

    /* Write this step's K/V through the block tables before any token reads them. */
    const int B = shd_kv_cache_config(kv)->block_tokens;
    for (int64_t t = 0; t < n; t++) {
        const shd_seq_view_t *sv = &b->seqs[b->seq[t]];
        const int32_t blk = sv->blocks[b->pos[t] / B], slot = b->pos[t] % B;
        float *kb = shd_kv_k(kv, il, blk), *vb = shd_kv_v(kv, il, blk);
        for (int h = 0; h < m->n_kv_l; h++) {
            const size_t off = ((size_t)h * B + (size_t)slot) * (size_t)hd;
            memcpy(kb + off, s->k + t * kd + h * hd, (size_t)hd * sizeof(float));
            memcpy(vb + off, s->v + t * kd + h * hd, (size_t)hd * sizeof(float));
        }
    }

    attn_task_t task = {m, kv, b, il};
    kern_parallel_for(m->kctx, n * m->n_head_l, 1, attn_worker, &task);

    TDM_CHECK(kern_matmul(m->kctx, &L->wo, s->attn, qd, n, s->proj, E, err));
    return shd_all_reduce(m, SHD_GROUP_TP, s->proj, n * E, err);
}

/* ---- dense SwiGLU FFN ---- */

tdm_status_t shd_block_ffn(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err)
{
    const shd_layer_t *L = &m->layers[il];
    const int64_t E = m->hp.n_embd, F = m->n_ff_l;
    shd_scratch_t *s = &m->s;
    const kern_matmul_op_t gu[2] = {{&L->ffn_gate, s->xn, E, s->ff_a, F},
                                    {&L->ffn_up, s->xn, E, s->ff_b, F}};
    TDM_CHECK(kern_matmul_batch(m->kctx, 2, gu, n_tok, err));
    kern_op_silu_mul_f32_isa(kern_ctx_isa(m->kctx), s->ff_a, s->ff_a, s->ff_b, n_tok * F);
    TDM_CHECK(kern_matmul(m->kctx, &L->ffn_down, s->ff_a, F, n_tok, s->proj, E, err));
    return shd_all_reduce(m, SHD_GROUP_TP, s->proj, n_tok * E, err);
}

/* ---- MoE FFN ---- */

/* Experts of one decoded token run as one batch up to this many (2 products each). */
#define SHD_MOE_BATCH_MAX (KERN_MATMUL_MAX_OPS / 2)

void shd_route_token(float *probs, int n_expert, int k, bool norm, int32_t *sel, float *w)
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

static kern_weight_t expert_view(const shd_experts_t *x, int e_local)
{
    kern_weight_t w = x->w;
    w.data = (const unsigned char *)w.data + (size_t)e_local * x->stride;
    return w;
}

/* One decoded token: all of its local experts as two batched products (gate/up of every
 * expert, then every down projection), so the pool is woken twice rather than twice per
 * expert. Same arithmetic and accumulation order as the general path below. */
static tdm_status_t moe_one_token(shd_model_t *m, const shd_layer_t *L, tdm_error_t *err)
{
    const int64_t E = m->hp.n_embd, F = m->n_ffe_l;
    const int k = m->hp.n_expert_used;
    shd_scratch_t *s = &m->s;
    const kern_isa_t isa = kern_ctx_isa(m->kctx);
    /* this rank's chosen experts in expert order */
    int el_of[SHD_MOE_BATCH_MAX];
    float w_of[SHD_MOE_BATCH_MAX];
    int c = 0;
    for (int el = 0; el < L->n_exp_l; el++) {
        for (int j = 0; j < k; j++) {
            if (s->sel[j] == L->exp_lo + el) {
                el_of[c] = el;
                w_of[c] = s->selw[j];
                c++;
            }
        }
    }
    kern_weight_t wv[3 * SHD_MOE_BATCH_MAX];
    kern_matmul_op_t ops[2 * SHD_MOE_BATCH_MAX];
    for (int i = 0; i < c; i++) {
        wv[3 * i] = expert_view(&L->gate_exps, el_of[i]);
        wv[3 * i + 1] = expert_view(&L->up_exps, el_of[i]);
        wv[3 * i + 2] = expert_view(&L->down_exps, el_of[i]);
        ops[2 * i] = (kern_matmul_op_t){&wv[3 * i], s->xn, E, s->ff_a + i * F, F};
        ops[2 * i + 1] = (kern_matmul_op_t){&wv[3 * i + 1], s->xn, E, s->ff_b + i * F, F};
    }
    TDM_CHECK(kern_matmul_batch(m->kctx, 2 * c, ops, 1, err));
    for (int i = 0; i < c; i++) {
        kern_op_silu_mul_f32_isa(isa, s->ff_a + i * F, s->ff_a + i * F, s->ff_b + i * F, F);
        ops[i] = (kern_matmul_op_t){&wv[3 * i + 2], s->ff_a + i * F, F, s->ey + i * E, E};
    }
    TDM_CHECK(kern_matmul_batch(m->kctx, c, ops, 1, err));
    memset(s->proj, 0, (size_t)E * sizeof(float));
    for (int i = 0; i < c; i++) {
        kern_op_axpy_f32(s->proj, w_of[i], s->ey + i * E, E);
    }
    return shd_all_reduce(m, SHD_GROUP_WORLD, s->proj, E, err);
}

tdm_status_t shd_block_moe(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const shd_layer_t *L = &m->layers[il];
    const int64_t E = hp->n_embd, F = m->n_ffe_l;
    const int ne = hp->n_expert, k = hp->n_expert_used;
    shd_scratch_t *s = &m->s;

    /* Router (replicated on every rank): probabilities, top-k, weights. */
    TDM_CHECK(kern_matmul(m->kctx, &L->router, s->xn, E, n_tok, s->rlog, ne, err));
    for (int64_t t = 0; t < n_tok; t++) {
        shd_route_token(s->rlog + t * ne, ne, k, hp->expert_norm_topk, s->sel + t * k,
                        s->selw + t * k);
    }

    /* scratch holds k experts' rows when the batch holds k tokens */
    if (n_tok == 1 && k <= SHD_MOE_BATCH_MAX && k <= m->params.n_batch_max) {
        return moe_one_token(m, L, err);
    }

    /* This rank's experts, in expert order (HF's accumulation order): gather the tokens
     * routed to each, run the expert on just those rows, scatter-add weighted. */
    memset(s->proj, 0, (size_t)(n_tok * E) * sizeof(float));
    for (int el = 0; el < L->n_exp_l; el++) {
        const int e = L->exp_lo + el;
        int64_t cnt = 0;
        for (int64_t t = 0; t < n_tok; t++) {
            for (int j = 0; j < k; j++) {
                if (s->sel[t * k + j] == e) {
                    s->etok[cnt] = (int32_t)t;
                    s->ew[cnt] = s->selw[t * k + j];
                    memcpy(s->ex + cnt * E, s->xn + t * E, (size_t)E * sizeof(float));
                    cnt++;
                }
            }
        }
        if (cnt == 0) {
            continue;
        }
        kern_weight_t wg = expert_view(&L->gate_exps, el), wu = expert_view(&L->up_exps, el);
        kern_weight_t wd = expert_view(&L->down_exps, el);
        const kern_matmul_op_t gu[2] = {{&wg, s->ex, E, s->ff_a, F}, {&wu, s->ex, E, s->ff_b, F}};
        TDM_CHECK(kern_matmul_batch(m->kctx, 2, gu, cnt, err));
        kern_op_silu_mul_f32_isa(kern_ctx_isa(m->kctx), s->ff_a, s->ff_a, s->ff_b, cnt * F);
        TDM_CHECK(kern_matmul(m->kctx, &wd, s->ff_a, F, cnt, s->ey, E, err));
        for (int64_t i = 0; i < cnt; i++) {
            kern_op_axpy_f32(s->proj + (int64_t)s->etok[i] * E, s->ew[i], s->ey + i * E, E);
        }
    }
    return shd_all_reduce(m, SHD_GROUP_WORLD, s->proj, n_tok * E, err);
}
