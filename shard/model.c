/*
 * model.c - shd_model_load: hyper-parameters, this rank's slice of the partition, weight
 * views bound by name with shape checks, and the step scratch arena.
 */
#include "common/check.h"
#include "common/mem.h"
#include "shard/shd_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const gguf_tensor_t *find_tensor(shd_model_t *m, const char *name, tdm_error_t *err)
{
    const gguf_tensor_t *t = gguf_find_tensor(m->g, name);
    if (t == NULL) {
        tdm_error_set(err, TDM_ERR_NOT_FOUND, "tensor '%s' is missing", name);
    }
    return t;
}

/* Remembers a bound view for the backend's weight store (kern_be_weights_load). */
static void add_ref(shd_model_t *m, kern_weight_ref_t r)
{
    if (m->n_refs == m->cap_refs) {
        m->cap_refs = m->cap_refs > 0 ? 2 * m->cap_refs : 64;
        m->refs = tdm_xrealloc(m->refs, (size_t)m->cap_refs * sizeof(*m->refs));
    }
    m->refs[m->n_refs++] = r;
}

tdm_status_t shd_bind_f32(shd_model_t *m, const char *name, int64_t ne0, int64_t ne1, int64_t off,
                          int64_t n, const float **out, tdm_error_t *err)
{
    const gguf_tensor_t *t = find_tensor(m, name, err);
    if (t == NULL) {
        return TDM_ERR_NOT_FOUND;
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "tensor '%s': shape [%lld, %lld], expected "
                             "[%lld, %lld]",
                             name, (long long)t->ne[0], (long long)t->ne[1], (long long)ne0,
                             (long long)ne1);
    }
    TDM_ASSERT(off >= 0 && n >= 1 && off + n <= ne0 * ne1);
    m->weight_bytes += (uint64_t)t->nbytes * (uint64_t)n / (uint64_t)(ne0 * ne1);
    add_ref(m, (kern_weight_ref_t){.vec = out, .vec_len = n});
    if (t->type == TDM_TYPE_F32) {
        *out = (const float *)t->data + off;
        return TDM_OK;
    }
    /* another type (f16, bf16): the whole tensor to f32 (vectors are small), kept */
    float *buf = malloc((size_t)(ne0 * ne1) * sizeof(float));
    if (buf == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tensor '%s': out of memory", name);
    }
    tdm_status_t st = kern_dequantize(t->type, t->data, buf, ne0 * ne1, err);
    if (st != TDM_OK) {
        free(buf);
        return st;
    }
    m->owned = tdm_xrealloc(m->owned, (size_t)(m->n_owned + 1) * sizeof(float *));
    m->owned[m->n_owned++] = buf;
    *out = buf + off;
    return TDM_OK;
}

tdm_status_t shd_bind_f32_opt(shd_model_t *m, const char *name, int64_t ne0, int64_t ne1,
                              int64_t off, int64_t n, const float **out, tdm_error_t *err)
{
    *out = NULL;
    if (gguf_find_tensor(m->g, name) == NULL) {
        return TDM_OK;
    }
    return shd_bind_f32(m, name, ne0, ne1, off, n, out, err);
}

tdm_status_t shd_bind_vec(shd_model_t *m, const char *name, int64_t n, const float **out,
                          tdm_error_t *err)
{
    return shd_bind_f32(m, name, n, 1, 0, n, out, err);
}

/* The view of rows [r0, r0+nr) x columns [c0, c0+nc) of a matrix whose rows are
 * row_bytes apart, starting at data. */
static tdm_status_t slice_view(const char *name, tdm_type_t type, const void *data, int64_t n_cols,
                               int64_t r0, int64_t nr, int64_t c0, int64_t nc, kern_weight_t *out,
                               tdm_error_t *err)
{
    const tdm_type_traits_t *tr = tdm_type_traits(type);
    if (!kern_type_supported(type)) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "tensor '%s': type %s has no CPU kernel",
                             name, tdm_type_name(type));
    }
    if (c0 % tr->blck != 0 || nc % tr->blck != 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tensor '%s': columns [%lld, %lld) of a "
                             "%s matrix do not fall on %u-element block boundaries (choose "
                             "another partition)",
                             name, (long long)c0, (long long)(c0 + nc), tdm_type_name(type),
                             tr->blck);
    }
    size_t row_bytes = tdm_type_row_size(type, n_cols);
    out->type = type;
    out->n_cols = nc;
    out->n_rows = nr;
    out->row_bytes = row_bytes;
    out->data =
        (const unsigned char *)data + (size_t)r0 * row_bytes + (size_t)(c0 / tr->blck) * tr->size;
    return TDM_OK;
}

tdm_status_t shd_bind_mat(shd_model_t *m, const char *name, int64_t n_cols, int64_t n_rows,
                          int64_t r0, int64_t nr, int64_t c0, int64_t nc, kern_weight_t *out,
                          tdm_error_t *err)
{
    const gguf_tensor_t *t = find_tensor(m, name, err);
    if (t == NULL) {
        return TDM_ERR_NOT_FOUND;
    }
    if (t->ne[0] != n_cols || t->ne[1] != n_rows || t->ne[2] != 1 || t->ne[3] != 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "tensor '%s': shape [%lld, %lld, %lld], "
                             "expected [%lld, %lld]",
                             name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                             (long long)n_cols, (long long)n_rows);
    }
    TDM_ASSERT(r0 >= 0 && nr >= 1 && r0 + nr <= n_rows && c0 >= 0 && nc >= 1 && c0 + nc <= n_cols);
    if (strcmp(name, "token_embd.weight") != 0 || m->tok_embd.data == NULL) {
        /* a tied output reuses the embedding's bytes: count them once */
        m->weight_bytes += (uint64_t)nr * tdm_type_row_size(t->type, nc);
    }
    add_ref(m, (kern_weight_ref_t){.w = out, .n_mats = 1});
    return slice_view(name, t->type, t->data, n_cols, r0, nr, c0, nc, out, err);
}

tdm_status_t shd_bind_experts(shd_model_t *m, const char *name, int64_t n_cols, int64_t n_rows,
                              int64_t n_expert, int64_t e0, int64_t ne, int64_t r0, int64_t nr,
                              int64_t c0, int64_t nc, shd_experts_t *out, tdm_error_t *err)
{
    const gguf_tensor_t *t = find_tensor(m, name, err);
    if (t == NULL) {
        return TDM_ERR_NOT_FOUND;
    }
    if (t->ne[0] != n_cols || t->ne[1] != n_rows || t->ne[2] != n_expert || t->ne[3] != 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "tensor '%s': shape [%lld, %lld, %lld], "
                             "expected [%lld, %lld, %lld]",
                             name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                             (long long)n_cols, (long long)n_rows, (long long)n_expert);
    }
    TDM_ASSERT(e0 >= 0 && ne >= 1 && e0 + ne <= n_expert);
    size_t stride = tdm_type_row_size(t->type, n_cols) * (size_t)n_rows;
    out->stride = stride;
    add_ref(m, (kern_weight_ref_t){.w = &out->w, .n_mats = (int)ne, .stride = &out->stride});
    return slice_view(name, t->type, (const unsigned char *)t->data + (size_t)e0 * stride, n_cols,
                      r0, nr, c0, nc, &out->w, err);
}

/* The attention tensors: norm, q/k/v/o with their optional biases (this rank's head
 * rows; the output bias whole, added once after the reduction), q/k norms (per head, or
 * this rank's slice of the full-width ones) and sinks. */
static tdm_status_t bind_attention(shd_model_t *m, int il, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    shd_layer_t *L = &m->layers[il];
    const int64_t hd = hp->head_dim, E = hp->n_embd;
    const int64_t q0 = m->head_lo * hd, nq = m->n_head_l * hd, QD = hp->n_head * hd;
    /* gated attention: each head's q rows are followed by its gate rows in attn_q */
    const int64_t qm = hp->attn_out_gate ? 2 : 1;
    const int64_t k0 = m->kv_lo * hd, nk = m->n_kv_l * hd, KD = hp->n_head_kv * hd;
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    TDM_CHECK(shd_bind_vec(m, NAME("attn_norm.weight"), E, &L->attn_norm, err));
    TDM_CHECK(
        shd_bind_mat(m, NAME("attn_q.weight"), E, qm * QD, qm * q0, qm * nq, 0, E, &L->wq, err));
    TDM_CHECK(shd_bind_mat(m, NAME("attn_k.weight"), E, KD, k0, nk, 0, E, &L->wk, err));
    TDM_CHECK(shd_bind_mat(m, NAME("attn_v.weight"), E, KD, k0, nk, 0, E, &L->wv, err));
    TDM_CHECK(shd_bind_mat(m, NAME("attn_output.weight"), QD, E, 0, E, q0, nq, &L->wo, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("attn_q.bias"), QD, 1, q0, nq, &L->bq, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("attn_k.bias"), KD, 1, k0, nk, &L->bk, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("attn_v.bias"), KD, 1, k0, nk, &L->bv, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("attn_output.bias"), E, 1, 0, E, &L->bo, err));
    if (hp->qk_norm && hp->qk_norm_full) {
        TDM_CHECK(shd_bind_f32(m, NAME("attn_q_norm.weight"), QD, 1, q0, nq, &L->q_norm, err));
        TDM_CHECK(shd_bind_f32(m, NAME("attn_k_norm.weight"), KD, 1, k0, nk, &L->k_norm, err));
    } else if (hp->qk_norm) {
        TDM_CHECK(shd_bind_vec(m, NAME("attn_q_norm.weight"), hd, &L->q_norm, err));
        TDM_CHECK(shd_bind_vec(m, NAME("attn_k_norm.weight"), hd, &L->k_norm, err));
    }
    if (hp->attn_sinks) {
        TDM_CHECK(shd_bind_f32(m, NAME("attn_sinks.weight"), hp->n_head, 1, m->head_lo, m->n_head_l,
                               &L->sinks, err));
    }
    L->is_swa = hp->layer_swa[il];
#undef NAME
    return TDM_OK;
}

/* A dense gated FFN: this rank's columns of gate/up (and their biases), rows of down;
 * the down bias whole, added once after the reduction. */
static tdm_status_t bind_dense_ffn(shd_model_t *m, int il, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    shd_layer_t *L = &m->layers[il];
    const int64_t E = hp->n_embd, F = hp->n_ff;
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    TDM_CHECK(shd_bind_mat(m, NAME("ffn_gate.weight"), E, F, m->ff_lo, m->n_ff_l, 0, E,
                           &L->ffn_gate, err));
    TDM_CHECK(
        shd_bind_mat(m, NAME("ffn_up.weight"), E, F, m->ff_lo, m->n_ff_l, 0, E, &L->ffn_up, err));
    TDM_CHECK(shd_bind_mat(m, NAME("ffn_down.weight"), F, E, 0, E, m->ff_lo, m->n_ff_l,
                           &L->ffn_down, err));
    TDM_CHECK(
        shd_bind_f32_opt(m, NAME("ffn_gate.bias"), F, 1, m->ff_lo, m->n_ff_l, &L->ffn_gate_b, err));
    TDM_CHECK(
        shd_bind_f32_opt(m, NAME("ffn_up.bias"), F, 1, m->ff_lo, m->n_ff_l, &L->ffn_up_b, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("ffn_down.bias"), E, 1, 0, E, &L->ffn_down_b, err));
#undef NAME
    return TDM_OK;
}

/* A routed MoE FFN: the replicated router (+ bias, + selection bias), this rank's experts
 * (its columns of each) and their biases (the local experts' whole rows: the op offsets
 * into them). */
static tdm_status_t bind_moe(shd_model_t *m, int il, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    shd_layer_t *L = &m->layers[il];
    const int ne = hp->n_expert, fe = hp->n_ff_exp;
    const int64_t E = hp->n_embd;
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    TDM_CHECK(shd_bind_mat(m, NAME("ffn_gate_inp.weight"), E, ne, 0, ne, 0, E, &L->router, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("ffn_gate_inp.bias"), ne, 1, 0, ne, &L->router_b, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("exp_probs_b.bias"), ne, 1, 0, ne, &L->exp_probs_b, err));
    L->exp_lo = m->exp_lo;
    L->n_exp_l = m->n_exp_l;
    if (m->params.expert_lo != NULL) {
        L->exp_lo = m->params.expert_lo[il];
        L->n_exp_l = m->params.expert_n[il];
    }
    if (L->exp_lo < 0 || L->n_exp_l < 0 || L->exp_lo + L->n_exp_l > ne) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "partition: layer %d: experts [%d, %d) outside the %d experts", il,
                             L->exp_lo, L->exp_lo + L->n_exp_l, ne);
    }
    if (L->n_exp_l == 0) {
        return TDM_OK; /* this rank holds none of the layer's experts */
    }
    const int e0 = L->exp_lo, nl = L->n_exp_l;
    TDM_CHECK(shd_bind_experts(m, NAME("ffn_gate_exps.weight"), E, fe, ne, e0, nl, m->ffe_lo,
                               m->n_ffe_l, 0, E, &L->gate_exps, err));
    TDM_CHECK(shd_bind_experts(m, NAME("ffn_up_exps.weight"), E, fe, ne, e0, nl, m->ffe_lo,
                               m->n_ffe_l, 0, E, &L->up_exps, err));
    TDM_CHECK(shd_bind_experts(m, NAME("ffn_down_exps.weight"), fe, E, ne, e0, nl, 0, E, m->ffe_lo,
                               m->n_ffe_l, &L->down_exps, err));
    const shd_experts_t *xs[] = {&L->gate_exps, &L->up_exps, &L->down_exps};
    for (size_t i = 0; i < TDM_ARRAY_SIZE(xs); i++) {
        const kern_weight_t *w = &xs[i]->w;
        m->weight_bytes +=
            (uint64_t)nl * (uint64_t)w->n_rows * tdm_type_row_size(w->type, w->n_cols);
    }
    TDM_CHECK(shd_bind_f32_opt(m, NAME("ffn_gate_exps.bias"), fe, ne, (int64_t)e0 * fe,
                               (int64_t)nl * fe, &L->gate_exps_b, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("ffn_up_exps.bias"), fe, ne, (int64_t)e0 * fe,
                               (int64_t)nl * fe, &L->up_exps_b, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("ffn_down_exps.bias"), E, ne, (int64_t)e0 * E,
                               (int64_t)nl * E, &L->down_exps_b, err));
#undef NAME
    return TDM_OK;
}

tdm_status_t shd_bind_shared_expert(shd_model_t *m, int il, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    shd_layer_t *L = &m->layers[il];
    const int64_t E = hp->n_embd, F = hp->n_ff_shexp, f0 = m->shx_lo, fn = m->n_shx_l;
    char n[GGUF_MAX_NAME];
    if (fn == 0) {
        return TDM_OK; /* this rank holds none of the shared expert */
    }
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    TDM_CHECK(
        shd_bind_mat(m, NAME("ffn_gate_inp_shexp.weight"), E, 1, 0, 1, 0, E, &L->shexp_inp, err));
    TDM_CHECK(
        shd_bind_mat(m, NAME("ffn_gate_shexp.weight"), E, F, f0, fn, 0, E, &L->shexp_gate, err));
    TDM_CHECK(shd_bind_mat(m, NAME("ffn_up_shexp.weight"), E, F, f0, fn, 0, E, &L->shexp_up, err));
    TDM_CHECK(
        shd_bind_mat(m, NAME("ffn_down_shexp.weight"), F, E, 0, E, f0, fn, &L->shexp_down, err));
#undef NAME
    return TDM_OK;
}

/* The conv taps of the local channels (three runs of the [q | k | v] channels) gathered
 * into memory the model owns: a split's channels are not one slice of the tensor. */
static tdm_status_t bind_conv_gather(shd_model_t *m, const char *name, int64_t conv, int64_t ch,
                                     const int64_t run[3][2], const float **out, tdm_error_t *err)
{
    const gguf_tensor_t *t = find_tensor(m, name, err);
    if (t == NULL) {
        return TDM_ERR_NOT_FOUND;
    }
    if (t->ne[0] != conv || t->ne[1] != ch || t->ne[2] != 1 || t->ne[3] != 1) {
        return tdm_error_set(
            err, TDM_ERR_FORMAT, "tensor '%s': shape [%lld, %lld], expected [%lld, %lld]", name,
            (long long)t->ne[0], (long long)t->ne[1], (long long)conv, (long long)ch);
    }
    const int64_t n_ch = run[0][1] + run[1][1] + run[2][1];
    float *whole = NULL;
    const float *src = (const float *)t->data;
    if (t->type != TDM_TYPE_F32) {
        whole = malloc((size_t)(conv * ch) * sizeof(float));
        if (whole == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tensor '%s': out of memory", name);
        }
        tdm_status_t st = kern_dequantize(t->type, t->data, whole, conv * ch, err);
        if (st != TDM_OK) {
            free(whole);
            return st;
        }
        src = whole;
    }
    float *buf = malloc((size_t)(n_ch * conv) * sizeof(float));
    if (buf == NULL) {
        free(whole);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tensor '%s': out of memory", name);
    }
    float *p = buf;
    for (int i = 0; i < 3; i++) {
        TDM_ASSERT(run[i][0] >= 0 && run[i][1] >= 0 && run[i][0] + run[i][1] <= ch);
        memcpy(p, src + run[i][0] * conv, (size_t)(run[i][1] * conv) * sizeof(float));
        p += run[i][1] * conv;
    }
    free(whole);
    m->owned = tdm_xrealloc(m->owned, (size_t)(m->n_owned + 1) * sizeof(float *));
    m->owned[m->n_owned++] = buf;
    m->weight_bytes += (uint64_t)t->nbytes * (uint64_t)n_ch / (uint64_t)ch;
    add_ref(m, (kern_weight_ref_t){.vec = out, .vec_len = n_ch * conv});
    *out = buf;
    return TDM_OK;
}

tdm_status_t shd_bind_gdn(shd_model_t *m, int il, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    shd_layer_t *L = &m->layers[il];
    const int64_t E = hp->n_embd, d = hp->gdn_head_dim, nv = hp->gdn_v_heads;
    const int64_t nk = hp->gdn_k_heads, rr = nv / nk;
    const int64_t ch = (2 * nk + nv) * d, vd = nv * d;
    /* this rank's heads: rows of the projections, channels of the conv */
    const int64_t k0 = m->gk_lo, kn = m->n_gk_l, v0 = m->gv_lo, vn = m->n_gv_l;
    const int64_t run[3][2] = {
        {k0 * d, kn * d}, {(nk + k0) * d, kn * d}, {(2 * nk + v0) * d, vn * d}};
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    L->is_gdn = 1;
    TDM_CHECK(shd_bind_vec(m, NAME("attn_norm.weight"), E, &L->attn_norm, err));
    if (gguf_find_tensor(m->g, NAME("attn_qkv.weight")) == NULL &&
        gguf_find_tensor(m->g, NAME("ssm_in.weight")) != NULL) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tensor 'blk.%d.ssm_in.weight': the legacy fused q/k/v/z layout is "
                             "not supported; convert the model again with a current llama.cpp "
                             "(attn_qkv + attn_gate)",
                             il);
    }
    for (int i = 0; i < 3; i++) {
        kern_weight_t *w[] = {&L->gdn_q, &L->gdn_k, &L->gdn_v};
        TDM_CHECK(
            shd_bind_mat(m, NAME("attn_qkv.weight"), E, ch, run[i][0], run[i][1], 0, E, w[i], err));
    }
    TDM_CHECK(
        shd_bind_mat(m, NAME("attn_gate.weight"), E, vd, v0 * d, vn * d, 0, E, &L->gdn_z, err));
    if (gguf_find_tensor(m->g, NAME("ssm_ba.weight")) != NULL) {
        if (hp->gdn_v_tiled && m->n_gv_l < nv) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "%s: b / a gates packed per k head with v heads in tiled order "
                                 "do not split over tp %d",
                                 hp->arch_name, m->params.part.tp_size);
        }
        /* packed per k head: the rows of the k heads held */
        TDM_CHECK(shd_bind_mat(m, n, E, 2 * nv, 2 * rr * k0, 2 * rr * kn, 0, E, &L->gdn_ba, err));
    } else {
        TDM_CHECK(shd_bind_mat(m, NAME("ssm_beta.weight"), E, nv, v0, vn, 0, E, &L->gdn_beta, err));
        TDM_CHECK(
            shd_bind_mat(m, NAME("ssm_alpha.weight"), E, nv, v0, vn, 0, E, &L->gdn_alpha, err));
    }
    if (vn == nv) {
        TDM_CHECK(shd_bind_f32(m, NAME("ssm_conv1d.weight"), hp->gdn_conv, ch, 0, hp->gdn_conv * ch,
                               &L->gdn_conv_w, err));
    } else {
        TDM_CHECK(bind_conv_gather(m, NAME("ssm_conv1d.weight"), hp->gdn_conv, ch, run,
                                   &L->gdn_conv_w, err));
    }
    TDM_CHECK(shd_bind_f32(m, NAME("ssm_a"), nv, 1, v0, vn, &L->gdn_a, err));
    TDM_CHECK(shd_bind_f32(m, NAME("ssm_dt.bias"), nv, 1, v0, vn, &L->gdn_dt_bias, err));
    TDM_CHECK(shd_bind_vec(m, NAME("ssm_norm.weight"), d, &L->gdn_norm, err));
    TDM_CHECK(
        shd_bind_mat(m, NAME("ssm_out.weight"), vd, E, 0, E, v0 * d, vn * d, &L->gdn_out, err));
#undef NAME
    return TDM_OK;
}

tdm_status_t shd_bind_std_layer(shd_model_t *m, int il, const char *ffn_norm, tdm_error_t *err)
{
    shd_layer_t *L = &m->layers[il];
    char n[GGUF_MAX_NAME];
    if (m->hp.layer_recurrent[il]) {
        TDM_CHECK(shd_bind_gdn(m, il, err));
    } else {
        TDM_CHECK(bind_attention(m, il, err));
    }
    if (m->hp.n_ff_shexp > 0 && m->hp.layer_moe[il]) {
        TDM_CHECK(shd_bind_shared_expert(m, il, err));
    }
    snprintf(n, sizeof(n), "blk.%d.%s.weight", il, ffn_norm);
    TDM_CHECK(shd_bind_vec(m, n, m->hp.n_embd, &L->ffn_norm, err));
    L->is_moe = m->hp.layer_moe[il];
    return L->is_moe ? bind_moe(m, il, err) : bind_dense_ffn(m, il, err);
}

/* The block index of a "blk.N.*" tensor name, -1 for others. */
static int block_of(const char *name)
{
    int il = -1, n = 0;
    if (sscanf(name, "blk.%d.%n", &il, &n) != 1 || n == 0) {
        return -1;
    }
    return il;
}

/* The multi-token-prediction blocks after the trunk: every tensor bound whole, kept (and
 * copied to a device backend with the rest) for speculative decoding. */
static tdm_status_t bind_mtp(shd_model_t *m, tdm_error_t *err)
{
    const int lo = m->hp.n_layer, hi = m->hp.n_layer + m->hp.n_mtp;
    int n = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(m->g); i++) {
        const int il = block_of(gguf_tensor_at(m->g, i)->name);
        n += il >= lo && il < hi;
    }
    if (n == 0) {
        return TDM_OK;
    }
    m->mtp = tdm_xcalloc((size_t)n, sizeof(*m->mtp)); /* never moved: refs point in */
    for (uint64_t i = 0; i < gguf_n_tensors(m->g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(m->g, i);
        const int il = block_of(t->name);
        if (il < lo || il >= hi) {
            continue;
        }
        shd_mtp_tensor_t *x = &m->mtp[m->n_mtp_tensors++];
        x->name = t->name;
        if (t->ne[3] != 1) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "tensor '%s': 4-D", t->name);
        }
        if (t->ne[1] == 1 && t->ne[2] == 1) {
            TDM_CHECK(shd_bind_f32(m, t->name, t->ne[0], 1, 0, t->ne[0], &x->vec, err));
        } else if (t->ne[2] == 1) {
            TDM_CHECK(shd_bind_mat(m, t->name, t->ne[0], t->ne[1], 0, t->ne[1], 0, t->ne[0],
                                   &x->e.w, err));
        } else {
            TDM_CHECK(shd_bind_experts(m, t->name, t->ne[0], t->ne[1], t->ne[2], 0, t->ne[2], 0,
                                       t->ne[1], 0, t->ne[0], &x->e, err));
            m->weight_bytes += (uint64_t)t->nbytes;
        }
    }
    return TDM_OK;
}

/* The first MTP block as a runnable layer (params.mtp): layers[n_layer] bound like a trunk
 * layer of the architecture (gated attention, MoE with the shared expert; hp.layer_moe
 * from its tensors), eh_proj's two halves, the three norms, and the block's own embedding
 * and head where it has them (llama.cpp's qwen35moe graph_mtp, vLLM's qwen3_next_mtp). */
static tdm_status_t bind_mtp_runnable(shd_model_t *m, tdm_error_t *err)
{
    mdl_hparams_t *hp = &m->hp;
    const int il = hp->n_layer;
    const int64_t E = hp->n_embd;
    char n[GGUF_MAX_NAME];
    if (hp->n_mtp < 1) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "the model has no multi-token-prediction block (%s.nextn_predict_"
                             "layers is 0 or absent): use another speculative mode",
                             hp->arch_name);
    }
    if (m->world_size > 1 || m->arch->forward_layer != shd_hybrid_layer_forward) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "%s: the MTP block runs on one unsplit qwen3next / qwen35moe model "
                             "only",
                             hp->arch_name);
    }
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    hp->layer_moe[il] = gguf_find_tensor(m->g, NAME("ffn_gate_inp.weight")) != NULL;
    hp->layer_recurrent[il] = 0;
    hp->layer_swa[il] = 0;
    TDM_CHECK(shd_bind_std_layer(m, il, "post_attention_norm", err));
    TDM_CHECK(
        shd_bind_mat(m, NAME("nextn.eh_proj.weight"), 2 * E, E, 0, E, 0, E, &m->mtp_eh_e, err));
    TDM_CHECK(
        shd_bind_mat(m, NAME("nextn.eh_proj.weight"), 2 * E, E, 0, E, E, E, &m->mtp_eh_h, err));
    TDM_CHECK(shd_bind_vec(m, NAME("nextn.enorm.weight"), E, &m->mtp_enorm, err));
    TDM_CHECK(shd_bind_vec(m, NAME("nextn.hnorm.weight"), E, &m->mtp_hnorm, err));
    TDM_CHECK(shd_bind_f32_opt(m, NAME("nextn.shared_head_norm.weight"), E, 1, 0, E,
                               &m->mtp_head_norm, err));
    m->mtp_embed = m->tok_embd;
    if (gguf_find_tensor(m->g, NAME("nextn.embed_tokens.weight")) != NULL) {
        TDM_CHECK(shd_bind_mat(m, n, E, hp->n_vocab, 0, hp->n_vocab, 0, E, &m->mtp_embed, err));
    }
    m->mtp_head = m->output;
    if (gguf_find_tensor(m->g, NAME("nextn.shared_head_head.weight")) != NULL) {
        TDM_CHECK(shd_bind_mat(m, n, E, hp->n_vocab, 0, hp->n_vocab, 0, E, &m->mtp_head, err));
    }
#undef NAME
    if (m->mtp_head_norm == NULL) {
        m->mtp_head_norm = m->out_norm;
    }
    m->run_mtp = true;
    return TDM_OK;
}

/* Gated DeltaNet heads over TP: the v heads in runs like the q heads (the first
 * n_v % tp ranks one more), each rank with the k heads its v heads read: a run of
 * v heads / (n_v / n_k) in grouped order, in tiled order (v head h reads k head h % n_k)
 * the run's residues, or every k head when the run wraps. The conv channels, gates, norm
 * and output columns follow the heads. */
static tdm_status_t plan_gdn_heads(shd_model_t *m, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const int tp = m->params.part.tp_size, r = m->params.part.tp_rank;
    const int nv = hp->gdn_v_heads, nk = hp->gdn_k_heads;
    if (tp > nv) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "partition: tp %d is more than the %d Gated DeltaNet value heads", tp,
                             nv);
    }
    const int vb = nv / tp, vr = nv % tp;
    m->n_gv_l = vb + (r < vr);
    m->gv_lo = r * vb + (r < vr ? r : vr);
    if (!hp->gdn_v_tiled) {
        const int rr = nv / nk;
        m->gk_lo = m->gv_lo / rr;
        m->n_gk_l = (m->gv_lo + m->n_gv_l - 1) / rr + 1 - m->gk_lo;
    } else if (m->gv_lo % nk + m->n_gv_l <= nk) {
        m->gk_lo = m->gv_lo % nk;
        m->n_gk_l = m->n_gv_l;
    } else {
        m->gk_lo = 0;
        m->n_gk_l = nk;
    }
    return TDM_OK;
}

/* The shared expert's columns over the world ranks (its output joins the routed experts'
 * world all-reduce, so a split costs no extra collective): runs of whole blocks of the
 * down projections' types, the first ranks one block more; a rank may hold none. */
static void plan_shared_expert(shd_model_t *m)
{
    const mdl_hparams_t *hp = &m->hp;
    const shd_partition_t *p = &m->params.part;
    int blk = 1;
    for (int il = 0; il < hp->n_layer; il++) {
        char n[GGUF_MAX_NAME];
        snprintf(n, sizeof(n), "blk.%d.ffn_down_shexp.weight", il);
        const gguf_tensor_t *t = gguf_find_tensor(m->g, n);
        const int b = t != NULL ? (int)tdm_type_traits(t->type)->blck : 1;
        blk = b > blk ? b : blk;
    }
    const int world = p->tp_size * p->ep_size, wr = p->ep_rank * p->tp_size + p->tp_rank;
    const int units = hp->n_ff_shexp / blk, ub = units / world, ur = units % world;
    m->n_shx_l = (ub + (wr < ur)) * blk;
    m->shx_lo = (wr * ub + (wr < ur ? wr : ur)) * blk;
    if (units * blk != hp->n_ff_shexp) { /* not whole blocks: the loader refuses the file */
        m->shx_lo = 0;
        m->n_shx_l = wr == 0 ? hp->n_ff_shexp : 0;
    }
}

/* This rank's ranges of heads, FFN columns, experts and vocab rows. */
static tdm_status_t plan_partition(shd_model_t *m, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const shd_partition_t *p = &m->params.part;
    if (p->tp_size < 1 || p->ep_size < 1 || p->tp_rank < 0 || p->tp_rank >= p->tp_size ||
        p->ep_rank < 0 || p->ep_rank >= p->ep_size) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "partition: tp %d/%d, ep %d/%d is not "
                             "a valid rank/size",
                             p->tp_rank, p->tp_size, p->ep_rank, p->ep_size);
    }
    m->world_size = p->tp_size * p->ep_size;
    if (m->world_size > 1 && m->params.comm.ops == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "partition: %d ranks but no "
                             "communicator",
                             m->world_size);
    }
    const int tp = p->tp_size, r = p->tp_rank;
    if (tp > hp->n_head) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "partition: tp %d is more than the %d attention heads", tp,
                             hp->n_head);
    }
    const int group = hp->n_head / hp->n_head_kv;
    /* uneven when tp does not divide n_head (SmolLM2's 9 heads over 2): the first
     * n_head % tp ranks take one more head; kv heads follow the q heads they serve */
    const int hb = hp->n_head / tp, hr = hp->n_head % tp;
    m->n_head_l = hb + (r < hr);
    m->head_lo = r * hb + (r < hr ? r : hr);
    m->kv_lo = m->head_lo / group;
    m->n_kv_l = (m->head_lo + m->n_head_l - 1) / group + 1 - m->kv_lo;

    bool any_dense = false, any_moe = false;
    for (int il = 0; il < hp->n_layer; il++) {
        any_dense |= !hp->layer_moe[il];
        any_moe |= hp->layer_moe[il] != 0;
    }
    if (any_dense) {
        if (hp->n_ff % tp != 0) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "partition: feed_forward_length %d "
                                 "does not split over tp %d",
                                 hp->n_ff, tp);
        }
        m->n_ff_l = hp->n_ff / tp;
        m->ff_lo = r * m->n_ff_l;
    }
    if (any_moe) {
        const int ep = p->ep_size, base = hp->n_expert / ep, rem = hp->n_expert % ep;
        if (base == 0) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "partition: ep %d is more than the %d "
                                 "experts",
                                 ep, hp->n_expert);
        }
        m->exp_lo = p->ep_rank * base + (p->ep_rank < rem ? p->ep_rank : rem);
        m->n_exp_l = base + (p->ep_rank < rem);
        if (hp->n_ff_exp % tp != 0) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "partition: expert width %d does not "
                                 "split over tp %d",
                                 hp->n_ff_exp, tp);
        }
        m->n_ffe_l = hp->n_ff_exp / tp;
        m->ffe_lo = r * m->n_ffe_l;
    }
    if (hp->n_recurrent > 0) {
        TDM_CHECK(plan_gdn_heads(m, err));
    }
    if (hp->n_ff_shexp > 0) {
        plan_shared_expert(m);
    }
    if (hp->n_vocab % tp == 0) {
        m->n_vocab_l = hp->n_vocab / tp;
        m->vocab_lo = r * m->n_vocab_l;
    } else {
        m->n_vocab_l = hp->n_vocab;
        m->vocab_lo = 0;
    }
    return TDM_OK;
}

static size_t pad16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Floats of every scratch slot, in shd_scratch_t order; the last four (ss, proj, lg, lgg)
 * are the ones collectives touch. */
enum { N_SLOTS = 26, N_SHARED = 4 };

static void scratch_sizes(const shd_model_t *m, size_t sizes[N_SLOTS])
{
    const mdl_hparams_t *hp = &m->hp;
    const size_t B = (size_t)m->params.n_batch_max, E = (size_t)hp->n_embd;
    const size_t hd = (size_t)hp->head_dim,
                 k = (size_t)(hp->n_expert_used > 0 ? hp->n_expert_used : 1);
    const size_t nout = (size_t)m->params.n_out_max;
    const size_t tp = (size_t)m->params.part.tp_size;
    const bool split_vocab = m->n_vocab_l != hp->n_vocab;
    const bool gdn = hp->n_recurrent > 0;
    const size_t gdn_vd = gdn ? (size_t)hp->gdn_v_heads * (size_t)hp->gdn_head_dim : 0;
    const size_t gdn_ch = gdn ? gdn_vd + 2 * (size_t)hp->gdn_k_heads * (size_t)hp->gdn_head_dim : 0;
    const size_t v[N_SLOTS] = {
        B * E,                                              /* x    */
        B * E,                                              /* xn   */
        B * m->n_head_l * hd,                               /* q    */
        B * m->n_kv_l * hd,                                 /* k    */
        B * m->n_kv_l * hd,                                 /* v    */
        B * m->n_head_l * hd,                               /* attn */
        B * (size_t)m->n_ff_l,                              /* ff_a */
        B * (size_t)m->n_ff_l,                              /* ff_b */
        B * (size_t)(hp->n_expert > 0 ? hp->n_expert : 1),  /* rlog */
        B * k,                                              /* sel  */
        B * k,                                              /* selw */
        nout * E,                                           /* lx   */
        hp->attn_out_gate ? B * m->n_head_l * 2 * hd : 0,   /* qg   */
        B * (size_t)hp->n_ff_shexp,                         /* sha  */
        B * (size_t)hp->n_ff_shexp,                         /* shb  */
        hp->n_ff_shexp > 0 ? B * E : 0,                     /* shy  */
        hp->n_ff_shexp > 0 ? B : 0,                         /* shg  */
        B * gdn_ch,                                         /* gqkv */
        B * gdn_vd,                                         /* gz   */
        B * 2 * (size_t)hp->gdn_v_heads,                    /* gba  */
        B * gdn_vd,                                         /* go   */
        m->run_mtp ? B * E : 0,                             /* hin  */
        hp->qk_norm_full ? 2 * B : 0,                       /* ss   */
        B * E,                                              /* proj */
        nout * (size_t)m->n_vocab_l,                        /* lg   */
        split_vocab ? tp * nout * (size_t)m->n_vocab_l : 0, /* lgg  */
    };
    memcpy(sizes, v, sizeof(v));
}

static uint64_t scratch_bytes(const shd_model_t *m)
{
    size_t sizes[N_SLOTS], total = 0;
    scratch_sizes(m, sizes);
    for (int i = 0; i < N_SLOTS; i++) {
        total += pad16(sizes[i]);
    }
    return (uint64_t)total * sizeof(float);
}

static tdm_status_t alloc_scratch(shd_model_t *m, tdm_error_t *err)
{
    size_t sizes[N_SLOTS], priv = 0, shared = 0;
    scratch_sizes(m, sizes);
    for (int i = 0; i < N_SLOTS; i++) {
        *(i < N_SLOTS - N_SHARED ? &priv : &shared) += pad16(sizes[i]);
    }
    /* collectives through the host read and write proj/lg/lgg in place: pinned host memory
     * on a GPU (the CPU backend's memory is the host's anyway) */
    const bool hv =
        m->world_size > 1 && !m->params.comm.ops->device_memory && !kern_be_host_memory(m->be);
    if (!hv) {
        priv += shared;
    }
    TDM_CHECK(kern_be_alloc(m->be, priv * sizeof(float), KERN_MEM_DEVICE, "step scratch", &m->arena,
                            err));
    if (hv) {
        TDM_CHECK(kern_be_alloc(m->be, shared * sizeof(float), KERN_MEM_HOST_VISIBLE,
                                "collective buffers", &m->arena_hv, err));
    }
    float *p = m->arena;
    void **slots[N_SLOTS] = {
        (void **)&m->s.x,    (void **)&m->s.xn,   (void **)&m->s.q,    (void **)&m->s.k,
        (void **)&m->s.v,    (void **)&m->s.attn, (void **)&m->s.ff_a, (void **)&m->s.ff_b,
        (void **)&m->s.rlog, (void **)&m->s.sel,  (void **)&m->s.selw, (void **)&m->s.lx,
        (void **)&m->s.qg,   (void **)&m->s.sha,  (void **)&m->s.shb,  (void **)&m->s.shy,
        (void **)&m->s.shg,  (void **)&m->s.gqkv, (void **)&m->s.gz,   (void **)&m->s.gba,
        (void **)&m->s.go,   (void **)&m->s.hin,  (void **)&m->s.ss,   (void **)&m->s.proj,
        (void **)&m->s.lg,   (void **)&m->s.lgg,
    };
    for (int i = 0; i < N_SLOTS; i++) {
        if (hv && i == N_SLOTS - N_SHARED) {
            p = m->arena_hv;
        }
        *slots[i] = p; /* int32 slots share the float arena: same size and alignment */
        p += pad16(sizes[i]);
    }
    m->out_idx = tdm_xmalloc((size_t)m->params.n_out_max * sizeof(int32_t));
    return TDM_OK;
}

/* What the compound ops need reserved in the backend (attention scores, MoE scratch,
 * quantized activations on a GPU). */
static kern_reserve_t reserve_of(const shd_model_t *m)
{
    const mdl_hparams_t *hp = &m->hp;
    int64_t max_cols = hp->n_embd, max_rows = m->n_vocab_l;
    const int64_t gdn_vd = (int64_t)hp->gdn_v_heads * hp->gdn_head_dim;
    const int64_t widths[] = {(int64_t)m->n_head_l * hp->head_dim, m->n_ff_l, m->n_ffe_l,
                              hp->n_ff_shexp, gdn_vd};
    for (size_t i = 0; i < TDM_ARRAY_SIZE(widths); i++) {
        max_cols = widths[i] > max_cols ? widths[i] : max_cols;
    }
    const int64_t rows[] = {hp->n_embd,
                            (int64_t)m->n_head_l * hp->head_dim,
                            (int64_t)m->n_kv_l * hp->head_dim,
                            m->n_ff_l,
                            m->n_ffe_l,
                            hp->n_expert,
                            (int64_t)m->n_head_l * hp->head_dim * (hp->attn_out_gate ? 2 : 1),
                            hp->n_ff_shexp,
                            gdn_vd + 2 * (int64_t)hp->gdn_k_heads * hp->gdn_head_dim};
    for (size_t i = 0; i < TDM_ARRAY_SIZE(rows); i++) {
        max_rows = rows[i] > max_rows ? rows[i] : max_rows;
    }
    return (kern_reserve_t){
        .n_tok = m->params.n_batch_max,
        .n_out = m->params.n_out_max,
        .n_ctx = m->params.n_ctx_max,
        .max_cols = max_cols,
        .max_rows = max_rows,
        .n_head = m->n_head_l,
        .head_dim = hp->head_dim,
        .n_expert = hp->n_expert,
        .n_expert_used = hp->n_expert_used,
        .n_embd = hp->n_embd,
        .n_ff_exp = m->n_ffe_l,
        .swa_tables = shd_model_swa_window(m) > 0,
        .gdn_head_dim = hp->n_recurrent > 0 ? hp->gdn_head_dim : 0,
    };
}

/* On a backend that copies the weights: refuse before copying anything when weights,
 * scratch and the KV cache the caller will ask for do not fit, with the numbers. */
static tdm_status_t check_fit(shd_model_t *m, tdm_error_t *err)
{
    if (kern_be_host_memory(m->be)) {
        return TDM_OK; /* CPU: the weights stay in the page cache; KV is checked when made */
    }
    const kern_reserve_t r = reserve_of(m);
    const uint64_t w = kern_be_weights_bytes(m->be, m->refs, m->n_refs);
    const uint64_t sc = scratch_bytes(m) + kern_be_reserve_bytes(m->be, &r);
    uint64_t kv = 0;
    if (m->params.kv_block_tokens > 0) {
        shd_kv_pools_t pl;
        TDM_CHECK(shd_model_kv_pools(m, m->params.kv_block_tokens, m->params.kv_bytes, &pl, err));
        kv = (uint64_t)pl.n_blocks * pl.block_bytes +
             (uint64_t)pl.n_swa_blocks * pl.swa_block_bytes + pl.state_bytes;
    }
    uint64_t free_b = 0, total_b = 0;
    TDM_CHECK(kern_be_mem_info(m->be, &free_b, &total_b, err));
    /* a margin for the CUDA context's own allocations and fragmentation */
    const uint64_t margin = 256ull << 20;
    if (w + sc + kv + margin > free_b) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                             "model: needs %.2f GiB on %s (weights %.2f, KV cache %.2f, scratch "
                             "%.2f, margin 0.25) but %.2f GiB of %.2f are free; lower --ctx-size "
                             "or --kv-memory, or split the model over more shards",
                             (double)(w + sc + kv + margin) / 1073741824.0, kern_be_describe(m->be),
                             (double)w / 1073741824.0, (double)kv / 1073741824.0,
                             (double)sc / 1073741824.0, (double)free_b / 1073741824.0,
                             (double)total_b / 1073741824.0);
    }
    return TDM_OK;
}

static void release_pages(void *arg, const void *src, size_t n)
{
    gguf_release_pages(arg, src, n);
}

tdm_status_t shd_model_load(const gguf_ctx_t *g, kern_backend_t *be, const shd_model_params_t *p,
                            shd_model_t **out, tdm_error_t *err)
{
    if (p->n_batch_max < 1 || p->n_out_max < 1 || p->n_out_max > p->n_batch_max ||
        p->n_ctx_max < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "model: batch %d, outputs %d, context "
                             "%d (need 1 <= outputs <= batch, context >= 1)",
                             p->n_batch_max, p->n_out_max, p->n_ctx_max);
    }
    tdm_status_t st;
    shd_model_t *m = tdm_xcalloc(1, sizeof(*m));
    m->g = g;
    m->be = be;
    m->params = *p;
    TDM_CHECK_GOTO(mdl_hparams_load(g, &m->hp, err), st, fail);
    m->arch = shd_arch_lookup(m->hp.arch);
    if (m->arch == NULL) {
        st = tdm_error_set(err, TDM_ERR_UNSUPPORTED, "model: no forward pass for '%s'",
                           m->hp.arch_name);
        goto fail;
    }
    TDM_CHECK_GOTO(m->arch->check(&m->hp, err), st, fail);
    TDM_CHECK_GOTO(plan_partition(m, err), st, fail);

    const mdl_hparams_t *hp = &m->hp;
    TDM_CHECK_GOTO(shd_bind_mat(m, "token_embd.weight", hp->n_embd, hp->n_vocab, 0, hp->n_vocab, 0,
                                hp->n_embd, &m->tok_embd, err),
                   st, fail);
    TDM_CHECK_GOTO(shd_bind_vec(m, "output_norm.weight", hp->n_embd, &m->out_norm, err), st, fail);
    TDM_CHECK_GOTO(shd_bind_mat(m, hp->tied_output ? "token_embd.weight" : "output.weight",
                                hp->n_embd, hp->n_vocab, m->vocab_lo, m->n_vocab_l, 0, hp->n_embd,
                                &m->output, err),
                   st, fail);
    if (hp->has_rope_freqs) {
        TDM_CHECK_GOTO(
            shd_bind_vec(m, "rope_freqs.weight", hp->rope.n_rot / 2, &m->rope_freqs, err), st,
            fail);
    }
    m->layers = tdm_xcalloc((size_t)hp->n_layer + 1, sizeof(shd_layer_t)); /* + an MTP block */
    for (int il = 0; il < hp->n_layer; il++) {
        TDM_CHECK_GOTO(m->arch->bind_layer(m, il, err), st, fail);
    }
    if (p->mtp) {
        TDM_CHECK_GOTO(bind_mtp_runnable(m, err), st, fail);
    } else {
        TDM_CHECK_GOTO(bind_mtp(m, err), st, fail);
    }
    TDM_CHECK_GOTO(check_fit(m, err), st, fail);
    const kern_reserve_t r = reserve_of(m);
    TDM_CHECK_GOTO(kern_be_reserve(be, &r, err), st, fail);
    TDM_CHECK_GOTO(alloc_scratch(m, err), st, fail);
    TDM_CHECK_GOTO(kern_be_weights_load(be, m->refs, m->n_refs, release_pages, (void *)g,
                                        &m->weights_region, err),
                   st, fail);
    *out = m;
    return TDM_OK;
fail:
    shd_model_destroy(m);
    return st;
}

void shd_model_destroy(shd_model_t *m)
{
    if (m == NULL) {
        return;
    }
    for (int i = 0; i < m->n_owned; i++) {
        free(m->owned[i]);
    }
    free(m->owned);
    free(m->layers);
    free(m->mtp);
    free(m->refs);
    free(m->out_idx);
    kern_be_free(m->be, m->arena);
    kern_be_free(m->be, m->arena_hv);
    kern_be_free(m->be, m->weights_region);
    free(m);
}

void shd_model_set_comm(shd_model_t *m, shd_comm_t comm)
{
    m->params.comm = comm;
}

void shd_model_set_layer_hook(shd_model_t *m, shd_layer_hook_fn fn, void *ctx)
{
    m->layer_hook = fn;
    m->layer_hook_ctx = ctx;
}

uint64_t shd_model_weight_bytes(const shd_model_t *m)
{
    return m->weight_bytes;
}

/* Touches every page of rows [0, w->n_rows) of a view (each row's slice bytes). */
static uint64_t touch_view(const kern_weight_t *w, size_t n_mats, size_t stride)
{
    if (w->data == NULL) {
        return 0;
    }
    const size_t page = 4096;
    const size_t slice = tdm_type_row_size(w->type, w->n_cols);
    uint64_t sum = 0;
    for (size_t e = 0; e < n_mats; e++) {
        const volatile unsigned char *base = (const unsigned char *)w->data + e * stride;
        for (int64_t r = 0; r < w->n_rows; r++) {
            const volatile unsigned char *row = base + (size_t)r * w->row_bytes;
            for (size_t off = 0; off < slice; off += page) {
                sum += row[off];
            }
            sum += row[slice - 1];
        }
    }
    return sum;
}

uint64_t shd_model_prefault(const shd_model_t *m)
{
    if (!kern_be_host_memory(m->be)) {
        return 0; /* the weights were copied to the device; the file's pages were dropped */
    }
    uint64_t sum = touch_view(&m->tok_embd, 1, 0) + touch_view(&m->output, 1, 0);
    for (int il = 0; il < m->hp.n_layer + (m->run_mtp ? 1 : 0); il++) {
        const shd_layer_t *L = &m->layers[il];
        const kern_weight_t *mats[] = {&L->wq,        &L->wk,         &L->wv,        &L->wo,
                                       &L->ffn_gate,  &L->ffn_up,     &L->ffn_down,  &L->router,
                                       &L->shexp_inp, &L->shexp_gate, &L->shexp_up,  &L->shexp_down,
                                       &L->gdn_q,     &L->gdn_k,      &L->gdn_v,     &L->gdn_z,
                                       &L->gdn_ba,    &L->gdn_beta,   &L->gdn_alpha, &L->gdn_out};
        for (size_t i = 0; i < TDM_ARRAY_SIZE(mats); i++) {
            sum += touch_view(mats[i], 1, 0);
        }
        if (L->is_moe && L->n_exp_l > 0) {
            sum += touch_view(&L->gate_exps.w, (size_t)L->n_exp_l, L->gate_exps.stride);
            sum += touch_view(&L->up_exps.w, (size_t)L->n_exp_l, L->up_exps.stride);
            sum += touch_view(&L->down_exps.w, (size_t)L->n_exp_l, L->down_exps.stride);
        }
    }
    return sum;
}

const mdl_hparams_t *shd_model_hparams(const shd_model_t *m)
{
    return &m->hp;
}

const shd_model_params_t *shd_model_params(const shd_model_t *m)
{
    return &m->params;
}

kern_backend_t *shd_model_backend(const shd_model_t *m)
{
    return m->be;
}

bool shd_model_mtp(const shd_model_t *m)
{
    return m->run_mtp;
}

int shd_model_swa_window(const shd_model_t *m)
{
    return mdl_hparams_swa_window(&m->hp);
}

static size_t ceil_div(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

size_t shd_kv_swa_pool_want(int window, int block_tokens, int n_batch_max, int n_seqs_max)
{
    const size_t bt = (size_t)block_tokens;
    /* a running sequence's window behind its step, plus two blocks of misalignment (one at
     * each end), for each sequence twice over; the step's tokens once for all of them */
    const size_t per_seq = ceil_div((size_t)window - 1, bt) + 2;
    return 2 * (size_t)n_seqs_max * per_seq + ceil_div((size_t)n_batch_max, bt);
}

tdm_status_t shd_model_kv_pools(const shd_model_t *m, int block_tokens, uint64_t kv_bytes,
                                shd_kv_pools_t *out, tdm_error_t *err)
{
    const size_t bt = (size_t)block_tokens;
    const size_t row = tdm_type_row_size(m->params.kv_type, m->hp.head_dim);
    if (row == 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "KV cache type %s needs a head dim that is a multiple of %u (the "
                             "model's is %d): use --kv-type f16",
                             tdm_type_name(m->params.kv_type),
                             tdm_type_traits(m->params.kv_type)->blck, m->hp.head_dim);
    }
    const int w = shd_model_swa_window(m);
    const size_t n_swa_layers = w > 0 ? (size_t)mdl_hparams_n_swa_layers(&m->hp) : 0;
    /* the MTP block's attention, when it runs, keeps its K/V in the full pool too */
    const size_t n_full_layers =
        (size_t)m->hp.n_layer - n_swa_layers - (size_t)m->hp.n_recurrent + (m->run_mtp ? 1 : 0);
    /* recurrent state: one slot per sequence that can run at once (n_out_max), taken
     * from the budget before the blocks */
    const int32_t n_slots = m->hp.n_recurrent > 0 ? m->params.n_out_max : 0;
    const int32_t n_store =
        n_slots > 0 && m->params.n_state_store > 0 ? m->params.n_state_store : 0;
    const uint64_t state_bytes = (uint64_t)(n_slots + n_store) * shd_model_state_bytes(m);
    if (kv_bytes > 0 && state_bytes > 0) {
        if (state_bytes >= kv_bytes) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "KV budget of %llu bytes does not hold the recurrent state of "
                                 "%d sequences and %d stored prefixes (%llu bytes); lower the "
                                 "running sequences or raise --kv-memory",
                                 (unsigned long long)kv_bytes, (int)n_slots, (int)n_store,
                                 (unsigned long long)state_bytes);
        }
        kv_bytes -= state_bytes;
    }
    const size_t per_layer = 2u * (size_t)m->n_kv_l * row * bt; /* K and V of one block */
    const size_t bb = n_full_layers * per_layer, bb_swa = n_swa_layers * per_layer;
    const size_t min_blocks = ceil_div((size_t)m->params.n_batch_max, bt) + 1;
    /* the sliding pool the running sequences need (see shd_model.h) */
    size_t swa_want = 0;
    if (w > 0) {
        swa_want =
            shd_kv_swa_pool_want(w, block_tokens, m->params.n_batch_max, m->params.n_out_max);
    }
    size_t n, n_swa;
    if (kv_bytes == 0 || bb == 0) {
        /* no budget (or nothing in the full pool costs memory: its ids are free) */
        n = ceil_div((size_t)m->params.n_ctx_max * 4, bt);
        n = n < min_blocks ? min_blocks : n;
        n_swa = swa_want < n ? swa_want : n;
        if (kv_bytes > 0 && bb_swa > 0 && n_swa > kv_bytes / bb_swa) {
            n_swa = (size_t)(kv_bytes / bb_swa);
            if (n_swa < min_blocks) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "KV budget of %llu bytes holds %zu sliding-window blocks of "
                                     "%d tokens (%zu bytes each); at least %zu are needed",
                                     (unsigned long long)kv_bytes, n_swa, block_tokens, bb_swa,
                                     min_blocks);
            }
        }
    } else if ((uint64_t)swa_want * (bb + bb_swa) <= kv_bytes) {
        /* the sliding pool's bytes first, the rest to the full pool (which then has at
         * least as many blocks) */
        n_swa = swa_want;
        n = (size_t)((kv_bytes - (uint64_t)swa_want * bb_swa) / bb);
    } else {
        /* a budget below that: the sliding pool need not exceed the full one */
        n = n_swa = (size_t)(kv_bytes / (bb + bb_swa));
        n_swa = w > 0 ? n_swa : 0;
    }
    if (n < min_blocks) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "KV budget of %llu bytes holds %zu blocks of %d tokens (%zu bytes "
                             "each%s); at least %zu are needed",
                             (unsigned long long)kv_bytes, n, block_tokens, bb + bb_swa,
                             w > 0 ? ", the sliding-window layers' share included" : "",
                             min_blocks);
    }
    if (n > (size_t)INT32_MAX / 2) {
        n = (size_t)INT32_MAX / 2;
    }
    if (n_swa > (size_t)INT32_MAX / 2) {
        n_swa = (size_t)INT32_MAX / 2;
    }
    *out = (shd_kv_pools_t){
        .n_blocks = (int32_t)n,
        .n_swa_blocks = (int32_t)n_swa,
        .block_bytes = bb,
        .swa_block_bytes = bb_swa,
        .n_state_slots = n_slots,
        .n_state_store = n_store,
        .state_bytes = state_bytes,
    };
    return TDM_OK;
}

/* One GDN layer's state of one sequence on this rank: the conv inputs of its channels,
 * the delta-rule matrix of each of its v heads. */
static int64_t gdn_conv_floats(const shd_model_t *m)
{
    const int64_t d = m->hp.gdn_head_dim;
    return m->hp.n_recurrent > 0
               ? (int64_t)(m->hp.gdn_conv - 1) * (2 * (int64_t)m->n_gk_l + m->n_gv_l) * d
               : 0;
}

static int64_t gdn_ssm_floats(const shd_model_t *m)
{
    const int64_t d = m->hp.gdn_head_dim;
    return m->hp.n_recurrent > 0 ? (int64_t)m->n_gv_l * d * d : 0;
}

uint64_t shd_model_state_bytes(const shd_model_t *m)
{
    return (uint64_t)m->hp.n_recurrent * (uint64_t)(gdn_conv_floats(m) + gdn_ssm_floats(m)) *
           sizeof(float);
}

tdm_status_t shd_model_kv_blocks(const shd_model_t *m, int block_tokens, uint64_t kv_bytes,
                                 int32_t *n_blocks, size_t *block_bytes, tdm_error_t *err)
{
    shd_kv_pools_t p;
    TDM_CHECK(shd_model_kv_pools(m, block_tokens, kv_bytes, &p, err));
    *n_blocks = p.n_blocks;
    *block_bytes = p.block_bytes;
    return TDM_OK;
}

void shd_model_kv_config_pools(const shd_model_t *m, int block_tokens, const shd_kv_pools_t *pools,
                               shd_kv_config_t *out)
{
    memset(out, 0, sizeof(*out));
    out->n_layer = m->hp.n_layer + (m->run_mtp ? 1 : 0); /* the MTP block's layer last */
    out->n_kv_heads = m->n_kv_l;
    out->head_dim = m->hp.head_dim;
    out->block_tokens = block_tokens;
    out->n_blocks = pools->n_blocks;
    out->type = m->params.kv_type;
    out->n_swa_blocks = shd_model_swa_window(m) > 0 ? pools->n_swa_blocks : 0;
    for (int il = 0; out->n_swa_blocks > 0 && il < m->hp.n_layer; il++) {
        out->layer_swa[il] = m->hp.layer_swa[il];
    }
    if (m->hp.n_recurrent > 0) {
        out->n_state_slots =
            pools->n_state_slots > 0 ? pools->n_state_slots + pools->n_state_store : 1;
        out->state_conv_floats = gdn_conv_floats(m);
        out->state_ssm_floats = gdn_ssm_floats(m);
        memcpy(out->layer_recurrent, m->hp.layer_recurrent, sizeof(out->layer_recurrent));
    }
}

void shd_model_kv_config(const shd_model_t *m, int block_tokens, int32_t n_blocks,
                         shd_kv_config_t *out)
{
    const shd_kv_pools_t one = {.n_blocks = n_blocks};
    shd_model_kv_config_pools(m, block_tokens, &one, out);
}
