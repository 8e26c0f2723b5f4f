/*
 * forward.c - shd_forward: one batched step (validation, embedding lookup, the layers
 * of the architecture, final norm and the output projection for the selected tokens).
 */
#include "common/check.h"
#include "shard/shd_internal.h"

#include <stdlib.h>
#include <string.h>

/* A sliding pool must hold exactly the model's sliding layers. (Without one, every layer
 * keeps its K/V in the full pool, as a model without sliding layers does.) */
static bool swa_layers_match(const shd_model_t *m, const shd_kv_config_t *kc)
{
    if (shd_model_swa_window(m) == 0) {
        return false;
    }
    for (int il = 0; il < m->hp.n_layer; il++) {
        if ((kc->layer_swa[il] != 0) != (m->hp.layer_swa[il] != 0)) {
            return false;
        }
    }
    return true;
}

/* With a sliding pool: every position token t reads in a sliding layer (its window,
 * pos - n_swa + 1 .. pos, its own position being written there) maps to a block of the
 * sliding pool. Blocks below the window may be -1 (released). */
static tdm_status_t check_swa_table(const shd_model_t *m, const shd_kv_config_t *kc,
                                    const shd_batch_t *b, int32_t t, tdm_error_t *err)
{
    if (kc->n_swa_blocks == 0) {
        return TDM_OK;
    }
    const shd_seq_view_t *sv = &b->seqs[b->seq[t]];
    if (sv->swa_blocks == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "forward: sequence %d has no sliding-window block table (the "
                             "model keeps its sliding layers in a pool of %d blocks)",
                             b->seq[t], (int)kc->n_swa_blocks);
    }
    const int32_t p = b->pos[t], lo = p >= m->hp.n_swa ? p - m->hp.n_swa + 1 : 0;
    for (int32_t j = lo / kc->block_tokens; j <= p / kc->block_tokens; j++) {
        if (sv->swa_blocks[j] < 0 || sv->swa_blocks[j] >= kc->n_swa_blocks) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: token %d: position %d reads positions %d..%d of "
                                 "the sliding layers, but sequence %d's sliding block %d is "
                                 "id %d (the sliding pool has %d)",
                                 t, p, lo, p, b->seq[t], j, sv->swa_blocks[j],
                                 (int)kc->n_swa_blocks);
        }
    }
    return TDM_OK;
}

/* With recurrent (Gated DeltaNet) layers: each sequence's tokens are consecutive in the
 * step, in position order, its state slot is valid and not another sequence's of the
 * step, and the slot's state has consumed exactly the positions before the run (or the
 * run starts at 0, which starts from zero state). */
static tdm_status_t check_states(const shd_model_t *m, const shd_kv_cache_t *kv,
                                 const shd_batch_t *b, tdm_error_t *err)
{
    const shd_kv_config_t *kc = shd_kv_cache_config(kv);
    if (m->hp.n_recurrent == 0) {
        return TDM_OK;
    }
    if (kc->n_state_slots < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "forward: the model has %d recurrent layers but the cache no state "
                             "slots",
                             m->hp.n_recurrent);
    }
    for (int32_t t = 0; t < b->n_tokens; t++) {
        const bool first = t == 0 || b->seq[t - 1] != b->seq[t];
        const int32_t slot = b->seqs[b->seq[t]].state_slot;
        if (!first) {
            if (b->pos[t] != b->pos[t - 1] + 1) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "forward: token %d: sequence %d's tokens must be "
                                     "consecutive positions (recurrent layers)",
                                     t, b->seq[t]);
            }
            continue;
        }
        if (slot < 0 || slot >= kc->n_state_slots) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: sequence %d has recurrent state slot %d (the cache "
                                 "has %d)",
                                 b->seq[t], slot, (int)kc->n_state_slots);
        }
        for (int32_t u = 0; u < t; u++) {
            if (b->seq[u] == b->seq[t]) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "forward: sequence %d's tokens are not consecutive in the "
                                     "step (recurrent layers)",
                                     b->seq[t]);
            }
            if (b->seqs[b->seq[u]].state_slot == slot) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "forward: sequences %d and %d share state slot %d", b->seq[u],
                                     b->seq[t], slot);
            }
        }
        const int32_t load = b->seqs[b->seq[t]].state_load;
        const int32_t save = b->seqs[b->seq[t]].state_save;
        if (load < KERN_STATE_GIVEN || load >= kc->n_state_slots || save >= kc->n_state_slots ||
            load == slot || save == slot || (load >= 0 && load == save)) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: sequence %d: stored states %d / %d for slot %d (the "
                                 "cache has %d slots)",
                                 b->seq[t], load, save, slot, (int)kc->n_state_slots);
        }
        /* with a stored state to load, the run continues that state; a given one (put
         * into the slot by a prefill group) stands where the run starts */
        const int32_t have = shd_kv_state_pos(kv, load >= 0 ? load : slot);
        if (b->pos[t] != 0 && load != KERN_STATE_GIVEN && have != b->pos[t]) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "forward: sequence %d continues at position %d but its state "
                                 "slot %d holds %d positions (a recurrent state cannot skip or "
                                 "rewind)",
                                 b->seq[t], b->pos[t], slot, have);
        }
    }
    return TDM_OK;
}

/* Before (save false) or after (true) the step's layers: copies the stored states the
 * sequences load into their slots, or their slots into the stored states they save (in the
 * backend's op order). */
static void copy_states(const shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, bool save)
{
    if (m->hp.n_recurrent == 0) {
        return;
    }
    for (int32_t q = 0; q < b->n_seqs; q++) {
        const shd_seq_view_t *sv = &b->seqs[q];
        const int32_t other = save ? sv->state_save : sv->state_load;
        if (other >= 0 && sv->state_slot >= 0) {
            shd_kv_state_copy(kv, save ? other : sv->state_slot, save ? sv->state_slot : other);
        }
    }
}

/* After the step: each slot's state has consumed its run (or is unknown after a failure),
 * and a stored state saved from it is at the same place. */
static void commit_states(const shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, bool ok)
{
    if (m->hp.n_recurrent == 0) {
        return;
    }
    for (int32_t t = 0; t < b->n_tokens; t++) {
        if (t + 1 == b->n_tokens || b->seq[t + 1] != b->seq[t]) {
            const shd_seq_view_t *sv = &b->seqs[b->seq[t]];
            const int32_t pos = ok ? b->pos[t] + 1 : -1;
            shd_kv_state_set_pos(kv, sv->state_slot, pos);
            if (sv->state_save >= 0) {
                shd_kv_state_set_pos(kv, sv->state_save, pos);
            }
        }
    }
}

/* states: the trunk's step (recurrent states continue); an MTP step reads none. */
static tdm_status_t check_batch(const shd_model_t *m, const shd_kv_cache_t *kv,
                                const shd_batch_t *b, bool states, int32_t *n_out, tdm_error_t *err)
{
    const shd_kv_config_t *kc = shd_kv_cache_config(kv);
    if (kc->n_layer != m->hp.n_layer + (m->run_mtp ? 1 : 0) || kc->n_kv_heads != m->n_kv_l ||
        kc->head_dim != m->hp.head_dim || (kc->n_swa_blocks > 0 && !swa_layers_match(m, kc))) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "forward: kv cache shape (%d layers, "
                             "%d kv heads, dim %d, sliding pool %d) does not match the model "
                             "(%d, %d, %d, window %d)",
                             kc->n_layer, kc->n_kv_heads, kc->head_dim, (int)kc->n_swa_blocks,
                             m->hp.n_layer, m->n_kv_l, m->hp.head_dim, shd_model_swa_window(m));
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
        TDM_CHECK(check_swa_table(m, kc, b, t, err));
        outs += b->want_logits != NULL && b->want_logits[t];
    }
    if (states) {
        TDM_CHECK(check_states(m, kv, b, err));
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

/* Final norm of the selected rows and the output projection. TP ranks that split the
 * vocabulary each produce their rows and all-gather them. Runs inside the step: the
 * device work ends (and a captured graph is launched) in step_end, before the copy. */
static void output_rows(shd_model_t *m, int32_t n_out)
{
    const int64_t E = m->hp.n_embd;
    kern_be_get_out_rows(m->be, m->s.lx, E, m->s.x, E, E);
    kern_be_rms_norm(m->be, m->s.lx, E, m->s.lx, E, m->out_norm, n_out, E, m->hp.rms_eps);
}

static tdm_status_t output_logits(shd_model_t *m, int32_t n_out, float *logits, tdm_error_t *err)
{
    const int64_t V = m->hp.n_vocab, vl = m->n_vocab_l;
    if (vl == V) {
        if (logits == NULL) {
            return TDM_OK; /* this rank's logits are not wanted (another rank reports them) */
        }
        return kern_be_to_host(m->be, logits, m->s.lg, (size_t)n_out * (size_t)V * sizeof(float),
                               err);
    }
    if (!m->params.comm.ops->device_memory) {
        TDM_CHECK(kern_be_sync(m->be, err)); /* lg is host-visible: it must be written */
    }
    TDM_CHECK(m->params.comm.ops->all_gather_f32(m->params.comm.impl, SHD_GROUP_TP, m->s.lg,
                                                 (int64_t)n_out * vl, m->s.lgg, err));
    if (logits == NULL) {
        return TDM_OK; /* took part in the gather; the rows are another rank's to report */
    }
    const float *gathered = m->s.lgg;
    if (m->params.comm.ops->device_memory) {
        /* gathered on the device: bring the ranks' rows over once, then reorder */
        const size_t bytes = (size_t)m->params.part.tp_size * (size_t)n_out * (size_t)vl * 4;
        TDM_CHECK(kern_be_to_host(m->be, logits, m->s.lgg, bytes, err));
        gathered = NULL;
    }
    const int tp = m->params.part.tp_size;
    if (gathered == NULL) {
        /* logits holds [rank][row][vl]; the rows want [row][rank][vl]: via scratch */
        float *tmp = malloc((size_t)tp * (size_t)n_out * (size_t)vl * sizeof(float));
        if (tmp == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "forward: out of memory for logits");
        }
        memcpy(tmp, logits, (size_t)tp * (size_t)n_out * (size_t)vl * sizeof(float));
        for (int r = 0; r < tp; r++) {
            for (int32_t i = 0; i < n_out; i++) {
                memcpy(logits + (int64_t)i * V + (int64_t)r * vl,
                       tmp + ((int64_t)r * n_out + i) * vl, (size_t)vl * sizeof(float));
            }
        }
        free(tmp);
        return TDM_OK;
    }
    for (int r = 0; r < tp; r++) {
        for (int32_t i = 0; i < n_out; i++) {
            memcpy(logits + (int64_t)i * V + (int64_t)r * vl,
                   gathered + ((int64_t)r * n_out + i) * vl, (size_t)vl * sizeof(float));
        }
    }
    return TDM_OK;
}

/* The backend's view of batch b: its tokens and the rows whose logits are wanted (their
 * indices written to m->out_idx). Shared by the trunk's and the MTP block's passes. */
static kern_step_t step_of(shd_model_t *m, const shd_batch_t *b, int32_t n_out)
{
    for (int32_t t = 0, o = 0; t < b->n_tokens; t++) {
        if (b->want_logits != NULL && b->want_logits[t]) {
            m->out_idx[o++] = t;
        }
    }
    return (kern_step_t){
        .n_tokens = b->n_tokens,
        .token = b->token,
        .pos = b->pos,
        .seq = b->seq,
        .n_seqs = b->n_seqs,
        .seqs = b->seqs,
        .n_out = n_out,
        .out_idx = m->out_idx,
    };
}

tdm_status_t shd_forward(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, float *logits,
                         tdm_error_t *err)
{
    return shd_forward_hidden(m, kv, b, logits, NULL, err);
}

tdm_status_t shd_forward_hidden(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b,
                                float *logits, float *hidden, tdm_error_t *err)
{
    int32_t n_out = 0;
    TDM_CHECK(check_batch(m, kv, b, true, &n_out, err));
    const kern_step_t step = step_of(m, b, n_out);
    /* The output head runs when this rank's logits are read, or when it takes part in
     * the vocabulary all-gather. On the CPU the logits are written in place. */
    const bool split_vocab = m->n_vocab_l != m->hp.n_vocab;
    const bool head = n_out > 0 && (logits != NULL || split_vocab);
    const bool direct = head && !split_vocab && kern_be_host_memory(m->be);
    /* Only a model alone may be captured as a graph: a collective is a call of the shard
     * (not a backend op), which a replayed step would not order within the graph. */
    bool graphable = m->world_size == 1, rerun = false;
    tdm_status_t st;
    do {
        kern_be_step_begin(m->be, &step, graphable);
        kern_be_get_rows(m->be, m->s.x, m->hp.n_embd, &m->tok_embd);
        copy_states(m, kv, b, false);
        st = TDM_OK;
        for (int il = 0; il < m->hp.n_layer && st == TDM_OK; il++) {
            st = m->arch->forward_layer(m, kv, b, il, err);
            if (st == TDM_OK && m->layer_hook != NULL) {
                st = m->layer_hook(m->layer_hook_ctx, il, err);
            }
        }
        if (st == TDM_OK) {
            copy_states(m, kv, b, true);
        }
        if (st == TDM_OK && hidden != NULL) {
            /* every token's normed last state, for the MTP block (xn is free now) */
            kern_be_rms_norm(m->be, m->s.xn, m->hp.n_embd, m->s.x, m->hp.n_embd, m->out_norm,
                             b->n_tokens, m->hp.n_embd, m->hp.rms_eps);
        }
        if (st == TDM_OK && head) {
            output_rows(m, n_out);
            const kern_matmul_op_t out = {&m->output, m->s.lx, m->hp.n_embd,
                                          direct ? logits : m->s.lg,
                                          direct ? m->hp.n_vocab : m->n_vocab_l};
            kern_be_matmul(m->be, 1, &out, n_out);
        }
        /* always ends the step, so the backend's state is clean after a failure too */
        tdm_status_t end = kern_be_step_end(m->be, &rerun, err);
        if (st == TDM_OK) {
            st = end;
        }
        graphable = false; /* a rerun runs the ops as they come */
    } while (st == TDM_OK && rerun);
    commit_states(m, kv, b, st == TDM_OK);
    TDM_CHECK(st);
    if (hidden != NULL) {
        TDM_CHECK(kern_be_to_host(m->be, hidden, m->s.xn,
                                  (size_t)b->n_tokens * (size_t)m->hp.n_embd * sizeof(float), err));
    }
    if (!head || direct) {
        return TDM_OK;
    }
    return output_logits(m, n_out, logits, err);
}

tdm_status_t shd_forward_mtp(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b,
                             const float *hidden_in, float *logits, float *hidden_out,
                             tdm_error_t *err)
{
    if (!m->run_mtp) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "forward: the model was loaded without its MTP block");
    }
    int32_t n_out = 0;
    TDM_CHECK(check_batch(m, kv, b, false, &n_out, err));
    const int64_t E = m->hp.n_embd, n = b->n_tokens;
    const kern_step_t step = step_of(m, b, n_out);
    shd_scratch_t *s = &m->s;
    TDM_CHECK(kern_be_to_device(m->be, s->hin, hidden_in, (size_t)(n * E) * sizeof(float), err));
    const bool direct = kern_be_host_memory(m->be);
    kern_be_step_begin(m->be, &step, false);
    /* x = W_e RMSNorm(embed(token); enorm) + W_h RMSNorm(h; hnorm): eh_proj on the
     * concatenation [e ; h], as its two column halves */
    kern_be_get_rows(m->be, s->x, E, &m->mtp_embed);
    kern_be_rms_norm(m->be, s->xn, E, s->x, E, m->mtp_enorm, n, E, m->hp.rms_eps);
    kern_be_rms_norm(m->be, s->x, E, s->hin, E, m->mtp_hnorm, n, E, m->hp.rms_eps);
    const kern_matmul_op_t eh[2] = {{&m->mtp_eh_e, s->xn, E, s->proj, E},
                                    {&m->mtp_eh_h, s->x, E, s->hin, E}};
    kern_be_matmul(m->be, 2, eh, n);
    kern_be_add(m->be, s->x, s->proj, s->hin, n * E);
    tdm_status_t st = m->arch->forward_layer(m, kv, b, m->hp.n_layer, err);
    if (st == TDM_OK && n_out > 0) {
        kern_be_get_out_rows(m->be, s->lx, E, s->x, E, E);
        kern_be_rms_norm(m->be, s->lx, E, s->lx, E, m->mtp_head_norm, n_out, E, m->hp.rms_eps);
        if (logits != NULL) {
            const kern_matmul_op_t out = {&m->mtp_head, s->lx, E, direct ? logits : s->lg,
                                          m->hp.n_vocab};
            kern_be_matmul(m->be, 1, &out, n_out);
        }
    }
    bool rerun = false;
    const tdm_status_t end = kern_be_step_end(m->be, &rerun, err);
    TDM_CHECK(st);
    TDM_CHECK(end);
    if (n_out > 0 && hidden_out != NULL) {
        TDM_CHECK(kern_be_to_host(m->be, hidden_out, s->lx,
                                  (size_t)n_out * (size_t)E * sizeof(float), err));
    }
    if (n_out > 0 && logits != NULL && !direct) {
        TDM_CHECK(kern_be_to_host(m->be, logits, s->lg,
                                  (size_t)n_out * (size_t)m->hp.n_vocab * sizeof(float), err));
    }
    return TDM_OK;
}
