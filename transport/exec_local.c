/* exec_local.c - xp_executor_t over shd_forward() in this process (see exec_local.h). */
#include "transport/exec_local.h"

#include "common/check.h"
#include "common/log.h"
#include "kernels/kern_backend.h"
#include "shard/forward.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xp_local_exec {
    kern_backend_t *be;
    shd_model_t *model;
    shd_kv_cache_t *kv;
    shd_seq_view_t *views; /* grown on demand: one per sequence of a step */
    int32_t n_views;
    int32_t n_blocks;
};

/* The shard's batch for st (views grown on demand). */
static tdm_status_t make_batch(xp_local_exec_t *x, const xp_step_t *st, shd_batch_t *b,
                               tdm_error_t *err)
{
    if (st->n_seqs > x->n_views) {
        shd_seq_view_t *v = realloc(x->views, (size_t)st->n_seqs * sizeof(*v));
        if (v == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "local executor: out of memory");
        }
        x->views = v;
        x->n_views = st->n_seqs;
    }
    for (int32_t i = 0; i < st->n_seqs; i++) {
        x->views[i].blocks = st->seqs[i].blocks;
        x->views[i].n_blocks = st->seqs[i].n_blocks;
        x->views[i].swa_blocks = st->seqs[i].swa_blocks;
        x->views[i].state_slot = st->seqs[i].state_slot;
        x->views[i].state_load = st->seqs[i].state_load;
        x->views[i].state_save = st->seqs[i].state_save;
    }
    *b = (shd_batch_t){
        .n_tokens = st->n_tokens,
        .token = st->token,
        .pos = st->pos,
        .seq = st->seq,
        .want_logits = st->want_logits,
        .n_seqs = st->n_seqs,
        .seqs = x->views,
    };
    return TDM_OK;
}

static tdm_status_t local_step(void *impl, const xp_step_t *st, float *logits, tdm_error_t *err)
{
    xp_local_exec_t *x = impl;
    shd_batch_t b;
    TDM_CHECK(make_batch(x, st, &b, err));
    return shd_forward_hidden(x->model, x->kv, &b, logits, st->hidden, err);
}

static tdm_status_t local_mtp_step(void *impl, const xp_mtp_step_t *st, float *logits,
                                   tdm_error_t *err)
{
    xp_local_exec_t *x = impl;
    shd_batch_t b;
    TDM_CHECK(make_batch(x, &st->step, &b, err));
    return shd_forward_mtp(x->model, x->kv, &b, st->hidden_in, logits, st->hidden_out, err);
}

static const xp_executor_ops_t local_ops = {.step = local_step, .mtp_step = local_mtp_step};

tdm_status_t xp_local_exec_create(const gguf_ctx_t *g, const xp_local_params_t *p,
                                  xp_local_exec_t **out, xp_executor_t *ex, tdm_error_t *err)
{
    tdm_status_t st;
    xp_local_exec_t *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "local executor: out of memory");
    }
    int block_tokens = p->block_tokens > 0 ? p->block_tokens : SHD_KV_BLOCK_TOKENS_DEFAULT;
    const kern_backend_params_t bp = {
        .device = p->device, .n_threads = p->n_threads, .isa_override = KERN_ISA_COUNT};
    TDM_CHECK_GOTO(kern_backend_create(&bp, &x->be, err), st, fail);
    if (kern_be_fallback_reason(x->be)[0] != '\0') {
        TDM_INFO("exec", "device auto: no usable GPU (%s), running on %s",
                 kern_be_fallback_reason(x->be), kern_be_describe(x->be));
    } else {
        TDM_INFO("exec", "device: %s", kern_be_describe(x->be));
    }

    shd_model_params_t mp = {0};
    mp.n_batch_max = p->n_batch_max > 0 ? p->n_batch_max : 512;
    mp.n_out_max = p->n_logits_max > 0 ? p->n_logits_max : 64;
    if (mp.n_out_max > mp.n_batch_max) {
        mp.n_out_max = mp.n_batch_max;
    }
    mp.n_ctx_max = p->n_ctx;
    mp.mtp = p->mtp;
    mp.part = (shd_partition_t){0, 1, 0, 1};
    TDM_CHECK_GOTO(kern_kv_type_resolve(p->kv_type, x->be, &mp.kv_type, err), st, fail);
    mp.kv_block_tokens = block_tokens;
    mp.kv_bytes = p->kv_bytes;
    mp.n_state_store = p->n_state_store == 0  ? mp.n_out_max
                       : p->n_state_store > 0 ? p->n_state_store
                                              : 0;
    if (mp.n_ctx_max <= 0) {
        uint32_t n_ctx_train = 0;
        gguf_str_t arch;
        char key[128];
        if (gguf_get_str(g, "general.architecture", &arch, NULL) == TDM_OK && arch.len < 64) {
            snprintf(key, sizeof(key), "%.*s.context_length", (int)arch.len, arch.ptr);
            gguf_get_u32_or(g, key, 4096, &n_ctx_train, NULL);
        }
        mp.n_ctx_max = n_ctx_train > 0 ? (int)n_ctx_train : 4096;
    }
    TDM_CHECK_GOTO(shd_model_load(g, x->be, &mp, &x->model, err), st, fail);

    shd_kv_pools_t pools;
    TDM_CHECK_GOTO(shd_model_kv_pools(x->model, block_tokens, p->kv_bytes, &pools, err), st, fail);
    x->n_blocks = pools.n_blocks;
    shd_kv_config_t cfg;
    shd_model_kv_config_pools(x->model, block_tokens, &pools, &cfg);
    TDM_CHECK_GOTO(shd_kv_cache_create(x->be, &cfg, &x->kv, err), st, fail);
    /* Map the weights' pages now (as a shard does, and llama.cpp with MAP_POPULATE), not in
     * the first request's prefill: for a MoE, whose first prompt touches every expert, that
     * was about 10% of a 7 GB model's first-prompt CPU time spent in page faults, charged
     * to one user's time to first token. */
    (void)shd_model_prefault(x->model);
    if (pools.n_state_slots > 0) {
        TDM_INFO("exec",
                 "recurrent state: %d slots and %d stored prefix states of %.2f MiB (%d Gated "
                 "DeltaNet layers), %.1f MiB",
                 (int)pools.n_state_slots, (int)pools.n_state_store,
                 (double)mdl_hparams_state_bytes(shd_model_hparams(x->model)) / 1048576.0,
                 shd_model_hparams(x->model)->n_recurrent, (double)pools.state_bytes / 1048576.0);
    }
    if (pools.n_swa_blocks > 0) {
        TDM_INFO("exec",
                 "KV cache: %d blocks of %d tokens for the full-attention layers (%.1f MiB), %d "
                 "for the sliding-window layers (%.1f MiB)",
                 (int)pools.n_blocks, block_tokens,
                 (double)pools.n_blocks * (double)pools.block_bytes / 1048576.0,
                 (int)pools.n_swa_blocks,
                 (double)pools.n_swa_blocks * (double)pools.swa_block_bytes / 1048576.0);
    }

    const mdl_hparams_t *hp = shd_model_hparams(x->model);
    *ex = (xp_executor_t){
        .ops = &local_ops,
        .impl = x,
        .n_vocab = (int32_t)hp->n_vocab,
        .n_blocks = x->n_blocks,
        .block_tokens = block_tokens,
        .n_batch_max = mp.n_batch_max,
        .n_logits_max = mp.n_out_max,
        .n_ctx_max = mp.n_ctx_max,
        .n_swa = pools.n_swa_blocks > 0 ? shd_model_swa_window(x->model) : 0,
        .n_swa_blocks = pools.n_swa_blocks,
        .n_state_slots = pools.n_state_slots,
        .n_state_store = pools.n_state_store,
        .mtp = shd_model_mtp(x->model) ? 1 : 0,
        .n_embd = (int32_t)hp->n_embd,
    };
    *out = x;
    return TDM_OK;
fail:
    xp_local_exec_destroy(x);
    return st;
}

void xp_local_exec_destroy(xp_local_exec_t *x)
{
    if (x == NULL) {
        return;
    }
    shd_kv_cache_destroy(x->kv);
    shd_model_destroy(x->model);
    kern_backend_destroy(x->be);
    free(x->views);
    free(x);
}

const char *xp_local_exec_device(const xp_local_exec_t *x)
{
    return kern_be_describe(x->be);
}
