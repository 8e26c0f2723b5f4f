/*
 * blocks.c - the blocks every layer here is made of, shared by the files in shard/models:
 * input RMSNorm, GQA attention over the paged KV cache (biases, q/k norms per head or over
 * all heads, sliding windows, sinks, temperature), the gated FFN, and the routed MoE FFN
 * (softmax / sigmoid / top-k-softmax routers, expert biases, gpt-oss's clamped SwiGLU).
 * Each works on all tokens of the step at once, as a sequence of backend ops
 * (kernels/kern_backend.h: the same code runs on the CPU and on a GPU), and leaves its
 * output in m->s.proj, already summed over the ranks that hold the other slices.
 */
#include "common/check.h"
#include "shard/shd_internal.h"

tdm_status_t shd_all_reduce(shd_model_t *m, shd_group_t g, float *buf, int64_t n, tdm_error_t *err)
{
    /* A group of one still calls when the world is larger: every rank makes the same
     * calls in the same order (shd_comm.h). */
    if (m->world_size == 1) {
        return TDM_OK;
    }
    if (!m->params.comm.ops->device_memory) {
        /* buf is host-visible: the ops that wrote it must have finished */
        TDM_CHECK(kern_be_sync(m->be, err));
    }
    return m->params.comm.ops->all_reduce_sum_f32(m->params.comm.impl, g, buf, n, err);
}

void shd_norm_input(shd_model_t *m, int64_t n_tok, const float *w)
{
    const int64_t E = m->hp.n_embd;
    kern_be_rms_norm(m->be, m->s.xn, E, m->s.x, E, w, n_tok, E, m->hp.rms_eps);
}

void shd_residual_add(shd_model_t *m, int64_t n_tok)
{
    kern_be_add(m->be, m->s.x, m->s.x, m->s.proj, n_tok * m->hp.n_embd);
}

/* ---- attention ---- */

/* MiniMax-M2's q/k RMSNorm over all heads at once: each rank sums the squares of its
 * heads (k: only the kv heads it owns, the ones whose first q head is here, since a kv
 * head may be held by several ranks), the TP group adds them up, then each rank scales
 * its heads. */
static tdm_status_t qk_norm_full(shd_model_t *m, int64_t n, const shd_layer_t *L, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const int64_t hd = hp->head_dim, qd = (int64_t)m->n_head_l * hd, kd = (int64_t)m->n_kv_l * hd;
    const int group = hp->n_head / hp->n_head_kv;
    const int first_owned = (m->head_lo + group - 1) / group; /* kv head of a q head here */
    const int64_t k_own0 = (int64_t)(first_owned > m->kv_lo ? first_owned - m->kv_lo : 0) * hd;
    shd_scratch_t *s = &m->s;
    kern_be_sum_sq(m->be, s->ss, 2, s->q, qd, n, qd);
    kern_be_sum_sq(m->be, s->ss + 1, 2, s->k + k_own0, kd, n, kd - k_own0);
    TDM_CHECK(shd_all_reduce(m, SHD_GROUP_TP, s->ss, 2 * n, err));
    kern_be_rms_apply(m->be, s->q, qd, s->q, qd, s->ss, 2, L->q_norm, n, qd,
                      (int64_t)hp->n_head * hd, hp->rms_eps);
    kern_be_rms_apply(m->be, s->k, kd, s->k, kd, s->ss + 1, 2, L->k_norm, n, kd,
                      (int64_t)hp->n_head_kv * hd, hp->rms_eps);
    return TDM_OK;
}

tdm_status_t shd_block_attention(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                                 tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const shd_layer_t *L = &m->layers[il];
    const int64_t n = b->n_tokens, E = hp->n_embd, hd = hp->head_dim;
    const int64_t qd = (int64_t)m->n_head_l * hd, kd = (int64_t)m->n_kv_l * hd;
    shd_scratch_t *s = &m->s;
    kern_backend_t *be = m->be;

    /* gated attention (qwen3next): per head, hd query rows then hd gate rows into qg; the
     * per-head q norm reads the query halves out of it into s.q */
    const bool gated = hp->attn_out_gate;
    const kern_matmul_op_t qkv[3] = {{&L->wq, s->xn, E, gated ? s->qg : s->q, gated ? 2 * qd : qd},
                                     {&L->wk, s->xn, E, s->k, kd},
                                     {&L->wv, s->xn, E, s->v, kd}};
    kern_be_matmul(be, 3, qkv, n);
    const float *bias[3] = {L->bq, L->bk, L->bv};
    for (int i = 0; i < 3; i++) {
        if (bias[i] != NULL) {
            kern_be_add_bias(be, qkv[i].y, qkv[i].ldy, bias[i], n, qkv[i].ldy);
        }
    }
    if (gated) {
        kern_be_rms_norm(be, s->q, hd, s->qg, 2 * hd, L->q_norm, n * m->n_head_l, hd, hp->rms_eps);
        kern_be_rms_norm(be, s->k, hd, s->k, hd, L->k_norm, n * m->n_kv_l, hd, hp->rms_eps);
    } else if (L->q_norm != NULL && hp->qk_norm_full) {
        TDM_CHECK(qk_norm_full(m, n, L, err));
    } else if (L->q_norm != NULL) {
        kern_be_rms_norm(be, s->q, hd, s->q, hd, L->q_norm, n * m->n_head_l, hd, hp->rms_eps);
        kern_be_rms_norm(be, s->k, hd, s->k, hd, L->k_norm, n * m->n_kv_l, hd, hp->rms_eps);
    }
    mdl_rope_params_t rope = hp->rope;
    if (L->is_swa) {
        rope.freq_base = hp->rope_freq_base_swa;
    }
    kern_be_rope(be, s->q, qd, m->n_head_l, (int)hd, &rope, m->rope_freqs);
    kern_be_rope(be, s->k, kd, m->n_kv_l, (int)hd, &rope, m->rope_freqs);

    /* This step's K/V go into the cache through the block tables before any token reads
     * them; then every (token, head) attends to its sequence's positions 0..pos (the
     * window's last ones on a sliding layer). */
    const kern_kv_layout_t *lay = shd_kv_layout(kv, il); /* a sliding layer: its pool */
    kern_be_kv_store(be, lay, shd_kv_layer_k(kv, il), shd_kv_layer_v(kv, il), s->k, s->v, kd);
    const kern_attn_params_t ap = {
        .n_head = m->n_head_l,
        .head_lo = m->head_lo,
        .kv_lo = m->kv_lo,
        .group = hp->n_head / hp->n_head_kv,
        .scale = hp->attn_scale,
        .window = L->is_swa ? hp->n_swa : 0,
        .sinks = L->sinks,
        .temp_scale = hp->attn_temp_scale,
        .temp_floor = hp->attn_temp_floor,
    };
    kern_be_attention(be, s->attn, s->q, lay, shd_kv_layer_k(kv, il), shd_kv_layer_v(kv, il), &ap);
    if (gated) {
        kern_be_mul_sigmoid(be, s->attn, hd, s->qg + hd, 2 * hd, n * m->n_head_l, hd, false);
    }

    const kern_matmul_op_t o = {&L->wo, s->attn, qd, s->proj, E};
    kern_be_matmul(be, 1, &o, n);
    TDM_CHECK(shd_all_reduce(m, SHD_GROUP_TP, s->proj, n * E, err));
    if (L->bo != NULL) {
        kern_be_add_bias(be, s->proj, E, L->bo, n, E); /* once, on the sum */
    }
    return TDM_OK;
}

/* ---- dense gated FFN ---- */

tdm_status_t shd_block_ffn(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err)
{
    const shd_layer_t *L = &m->layers[il];
    const int64_t E = m->hp.n_embd, F = m->n_ff_l;
    shd_scratch_t *s = &m->s;
    const kern_matmul_op_t gu[2] = {{&L->ffn_gate, s->xn, E, s->ff_a, F},
                                    {&L->ffn_up, s->xn, E, s->ff_b, F}};
    kern_be_matmul(m->be, 2, gu, n_tok);
    if (L->ffn_gate_b != NULL) {
        kern_be_add_bias(m->be, s->ff_a, F, L->ffn_gate_b, n_tok, F);
    }
    if (L->ffn_up_b != NULL) {
        kern_be_add_bias(m->be, s->ff_b, F, L->ffn_up_b, n_tok, F);
    }
    kern_be_swiglu(m->be, s->ff_a, s->ff_a, s->ff_b, n_tok * F);
    const kern_matmul_op_t down = {&L->ffn_down, s->ff_a, F, s->proj, E};
    kern_be_matmul(m->be, 1, &down, n_tok);
    TDM_CHECK(shd_all_reduce(m, SHD_GROUP_TP, s->proj, n_tok * E, err));
    if (L->ffn_down_b != NULL) {
        kern_be_add_bias(m->be, s->proj, E, L->ffn_down_b, n_tok, E);
    }
    return TDM_OK;
}

/* ---- MoE FFN ---- */

/* gpt-oss's clamped SwiGLU constants (llama.cpp's LLM_FFN_SWIGLU_OAI_MOE, HF swiglu_limit) */
#define OAI_ALPHA 1.702f
#define OAI_LIMIT 7.0f

/* s.proj = this rank's part of MoE(s.xn) (zero rows for tokens routed elsewhere), before
 * the reduction. */
static void moe_local(shd_model_t *m, int64_t n_tok, int il)
{
    const mdl_hparams_t *hp = &m->hp;
    const shd_layer_t *L = &m->layers[il];
    const int64_t E = hp->n_embd;
    const int ne = hp->n_expert, k = hp->n_expert_used;
    shd_scratch_t *s = &m->s;

    /* Router (replicated on every rank): probabilities, top-k, weights. */
    const kern_matmul_op_t router = {&L->router, s->xn, E, s->rlog, ne};
    kern_be_matmul(m->be, 1, &router, n_tok);
    if (L->router_b != NULL) {
        kern_be_add_bias(m->be, s->rlog, ne, L->router_b, n_tok, ne);
    }
    const kern_route_t route = {
        .n_expert = ne,
        .k = k,
        .gating = (kern_gating_t)hp->expert_gating,
        .sel_bias = L->exp_probs_b,
        .norm = hp->expert_norm_topk,
        .scale = hp->expert_weights_scale,
    };
    kern_be_moe_route(m->be, s->rlog, &route, s->sel, s->selw);

    /* This rank's experts on the tokens routed to them; zeros elsewhere, so the sum over
     * the ranks is the MoE output (shd_comm.h says why an all-reduce). An expert split
     * over TP ranks by columns gets its down bias from the rank holding column 0. */
    const int64_t c0 = m->ffe_lo;
    const kern_moe_t moe = {
        .gate = L->gate_exps.w,
        .up = L->up_exps.w,
        .down = L->down_exps.w,
        .gate_stride = L->gate_exps.stride,
        .up_stride = L->up_exps.stride,
        .down_stride = L->down_exps.stride,
        .gate_b = L->gate_exps_b != NULL ? L->gate_exps_b + c0 : NULL,
        .up_b = L->up_exps_b != NULL ? L->up_exps_b + c0 : NULL,
        .down_b = c0 == 0 ? L->down_exps_b : NULL,
        .gate_b_stride = hp->n_ff_exp,
        .up_b_stride = hp->n_ff_exp,
        .down_b_stride = E,
        .act = hp->expert_oai_act ? KERN_ACT_SWIGLU_OAI : KERN_ACT_SWIGLU,
        .act_alpha = OAI_ALPHA,
        .act_limit = OAI_LIMIT,
        .exp_lo = L->exp_lo,
        .n_exp = L->n_exp_l,
        .n_used = k,
        .n_embd = E,
    };
    kern_be_moe_experts(m->be, &moe, s->xn, E, s->sel, s->selw, s->proj, E, n_tok);
}

tdm_status_t shd_block_moe(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err)
{
    moe_local(m, n_tok, il);
    return shd_all_reduce(m, SHD_GROUP_WORLD, m->s.proj, n_tok * m->hp.n_embd, err);
}

/* ---- the shared expert (qwen3next, qwen35moe) ---- */

/* s.proj += sigmoid(shexp_inp . s.xn) * SwiGLU_shexp(s.xn) */
static void shared_expert(shd_model_t *m, int64_t n_tok, int il)
{
    const shd_layer_t *L = &m->layers[il];
    const int64_t E = m->hp.n_embd, F = m->n_shx_l; /* this rank's columns */
    shd_scratch_t *s = &m->s;
    const kern_matmul_op_t in[3] = {{&L->shexp_gate, s->xn, E, s->sha, F},
                                    {&L->shexp_up, s->xn, E, s->shb, F},
                                    {&L->shexp_inp, s->xn, E, s->shg, 1}};
    kern_be_matmul(m->be, 3, in, n_tok);
    kern_be_swiglu(m->be, s->sha, s->sha, s->shb, n_tok * F);
    const kern_matmul_op_t down = {&L->shexp_down, s->sha, F, s->shy, E};
    kern_be_matmul(m->be, 1, &down, n_tok);
    kern_be_mul_sigmoid(m->be, s->shy, E, s->shg, 1, n_tok, E, true);
    kern_be_add(m->be, s->proj, s->proj, s->shy, n_tok * E);
}

tdm_status_t shd_block_moe_shared(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err)
{
    moe_local(m, n_tok, il);
    /* each rank adds its columns of the shared expert (gate x down is linear in them, the
     * scalar gate multiplies every partial), so the world's sum holds it once; alone, it is
     * added to the routed experts' output as HF does */
    if (m->n_shx_l > 0) {
        shared_expert(m, n_tok, il);
    }
    return shd_all_reduce(m, SHD_GROUP_WORLD, m->s.proj, n_tok * m->hp.n_embd, err);
}

/* ---- a whole layer ---- */

tdm_status_t shd_std_layer_forward(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                                   tdm_error_t *err)
{
    const shd_layer_t *L = &m->layers[il];
    const int64_t n = b->n_tokens;
    shd_norm_input(m, n, L->attn_norm);
    TDM_CHECK(shd_block_attention(m, kv, b, il, err));
    shd_residual_add(m, n);
    shd_norm_input(m, n, L->ffn_norm);
    if (L->is_moe) {
        TDM_CHECK(shd_block_moe(m, n, il, err));
    } else {
        TDM_CHECK(shd_block_ffn(m, n, il, err));
    }
    shd_residual_add(m, n);
    return TDM_OK;
}

tdm_status_t shd_hybrid_layer_forward(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b,
                                      int il, tdm_error_t *err)
{
    const shd_layer_t *L = &m->layers[il];
    const int64_t n = b->n_tokens;
    shd_norm_input(m, n, L->attn_norm);
    if (L->is_gdn) {
        TDM_CHECK(shd_block_gdn(m, kv, b, il, err));
    } else {
        TDM_CHECK(shd_block_attention(m, kv, b, il, err));
    }
    shd_residual_add(m, n);
    shd_norm_input(m, n, L->ffn_norm);
    if (L->is_moe && m->hp.n_ff_shexp > 0) {
        TDM_CHECK(shd_block_moe_shared(m, n, il, err));
    } else if (L->is_moe) {
        TDM_CHECK(shd_block_moe(m, n, il, err));
    } else {
        TDM_CHECK(shd_block_ffn(m, n, il, err));
    }
    shd_residual_add(m, n);
    return TDM_OK;
}
