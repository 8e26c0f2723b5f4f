/*
 * forward.c - shd_forward: one batched step (validation, embedding lookup, the layers
 * of the architecture, final norm and the output projection for the selected tokens).
 */
#include "common/check.h"
#include "kernels/kern_ops.h"
#include "shard/shd_internal.h"

#include <string.h>

static tdm_status_t check_batch(const shd_model_t *m, const shd_kv_cache_t *kv,
                                const shd_batch_t *b, int32_t *n_out, tdm_error_t *err)
{
    const shd_kv_config_t *kc = shd_kv_cache_config(kv);
    if (kc->n_layer != m->hp.n_layer || kc->n_kv_heads != m->n_kv_l ||
        kc->head_dim != m->hp.head_dim) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "forward: kv cache shape (%d layers, "
                             "%d kv heads, dim %d) does not match the model (%d, %d, %d)",
                             kc->n_layer, kc->n_kv_heads, kc->head_dim, m->hp.n_layer, m->n_kv_l,
                             m->hp.head_dim);
    }
    if (b->n_tokens < 1 || b->n_tokens > m->params.n_batch_max) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "forward: %d tokens (1..%d)", b->n_tokens,
                             m->params.n_batch_max);
    }
    int32_t outs = 0;
    for (int32_t t = 0; t < b->n_tokens; t++) {
        if (b->token[t] < 0 || b->token[t] >= m->hp.n_vocab) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: token %d: id %d outside "
                                 "the vocabulary (%d)",
                                 t, b->token[t], m->hp.n_vocab);
        }
        if (b->seq[t] < 0 || b->seq[t] >= b->n_seqs) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: token %d: sequence %d "
                                 "of %d",
                                 t, b->seq[t], b->n_seqs);
        }
        if (b->pos[t] < 0 || b->pos[t] >= m->params.n_ctx_max) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: token %d: position %d "
                                 "outside the context (%d)",
                                 t, b->pos[t], m->params.n_ctx_max);
        }
        const shd_seq_view_t *sv = &b->seqs[b->seq[t]];
        const int32_t need = b->pos[t] / kc->block_tokens + 1;
        if (need > sv->n_blocks) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: token %d: position %d "
                                 "needs %d blocks, sequence %d has %d",
                                 t, b->pos[t], need, b->seq[t], sv->n_blocks);
        }
        for (int32_t j = 0; j < need; j++) {
            if (sv->blocks[j] < 0 || sv->blocks[j] >= kc->n_blocks) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "forward: sequence %d: block "
                                     "%d is id %d (cache has %d)",
                                     b->seq[t], j, sv->blocks[j], kc->n_blocks);
            }
        }
        outs += b->want_logits != NULL && b->want_logits[t];
    }
    if (outs > m->params.n_out_max) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "forward: %d tokens want logits "
                             "(at most %d)",
                             outs, m->params.n_out_max);
    }
    *n_out = outs;
    return TDM_OK;
}

/* Final norm of the selected rows and the output projection; TP ranks each produce
 * their vocab rows and all-gather them. */
static tdm_status_t output_logits(shd_model_t *m, const shd_batch_t *b, int32_t n_out,
                                  float *logits, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const int64_t E = hp->n_embd, V = hp->n_vocab, vl = m->n_vocab_l;
    if (logits == NULL && vl == V) {
        return TDM_OK; /* this rank's logits are not wanted (another rank reports them) */
    }
    int32_t o = 0;
    for (int32_t t = 0; t < b->n_tokens; t++) {
        if (b->want_logits[t]) {
            kern_op_rms_norm_f32(m->s.lx + (int64_t)o * E, E, m->s.x + (int64_t)t * E, E,
                                 m->out_norm, 1, E, hp->rms_eps);
            o++;
        }
    }
    if (vl == V) {
        return kern_matmul(m->kctx, &m->output, m->s.lx, E, n_out, logits, V, err);
    }
    TDM_CHECK(kern_matmul(m->kctx, &m->output, m->s.lx, E, n_out, m->s.lg, vl, err));
    TDM_CHECK(m->params.comm.ops->all_gather_f32(m->params.comm.impl, SHD_GROUP_TP, m->s.lg,
                                                 (int64_t)n_out * vl, m->s.lgg, err));
    if (logits == NULL) {
        return TDM_OK; /* took part in the gather; the rows are another rank's to report */
    }
    const int tp = m->params.part.tp_size;
    for (int r = 0; r < tp; r++) {
        for (int32_t i = 0; i < n_out; i++) {
            memcpy(logits + (int64_t)i * V + (int64_t)r * vl,
                   m->s.lgg + ((int64_t)r * n_out + i) * vl, (size_t)vl * sizeof(float));
        }
    }
    return TDM_OK;
}

tdm_status_t shd_forward(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, float *logits,
                         tdm_error_t *err)
{
    int32_t n_out = 0;
    TDM_CHECK(check_batch(m, kv, b, &n_out, err));
    const int64_t E = m->hp.n_embd;
    for (int32_t t = 0; t < b->n_tokens; t++) {
        const unsigned char *row =
            (const unsigned char *)m->tok_embd.data + (size_t)b->token[t] * m->tok_embd.row_bytes;
        TDM_CHECK(kern_dequantize(m->tok_embd.type, row, m->s.x + t * E, E, err));
    }
    for (int il = 0; il < m->hp.n_layer; il++) {
        TDM_CHECK(m->arch->forward_layer(m, kv, b, il, err));
    }
    if (n_out == 0) {
        return TDM_OK;
    }
    return output_logits(m, b, n_out, logits, err);
}
