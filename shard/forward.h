/*
 * forward.h - one batched step of the forward pass.
 *
 * A step takes tokens from many sequences at once: prefill chunks and decode tokens mix
 * freely. Token t belongs to sequence seq[t], sits at position pos[t] and attends to
 * that sequence's positions 0..pos[t] (causal by position). Before the step, the caller
 * (the scheduler) has reserved blocks so that every pos[t] is covered by its sequence's
 * block table, and every position 0..pos[t] of the sequence is either in the cache from
 * an earlier step or a token of this step. K/V of this step's tokens are written into the
 * cache through the block tables before attention reads them, layer by layer.
 * Two tokens of a step must not share (sequence, position).
 */
#ifndef TDM_SHD_FORWARD_H
#define TDM_SHD_FORWARD_H

#include "shard/kv_cache.h"
#include "shard/shd_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A sequence's block table: logical block j -> physical block id (the backend's type). */
typedef kern_seq_t shd_seq_view_t;

typedef struct shd_batch {
    int32_t n_tokens;
    const int32_t *token;       /* [n_tokens] token ids                       */
    const int32_t *pos;         /* [n_tokens] positions                       */
    const int32_t *seq;         /* [n_tokens] index into seqs                 */
    const uint8_t *want_logits; /* [n_tokens] 1: emit logits for this token   */
    int32_t n_seqs;
    const shd_seq_view_t *seqs; /* [n_seqs]                                  */
} shd_batch_t;

/*
 * Runs the batch through the model, reading and writing KV in kv (made from
 * shd_model_kv_config). logits receives one row of n_vocab floats per token with
 * want_logits set, in token order. logits may be NULL: the
 * output projection is then skipped, or, when TP ranks split the vocabulary, computed only
 * for this rank's part of the all-gather (ranks whose logits nobody reads). Input errors
 * (token id, position, block coverage, sizes over the load-time maxima) return
 * TDM_ERR_INVALID_PARAM before anything is written. Every rank of a partitioned model
 * runs the same batch; each gets the full logits.
 */
tdm_status_t shd_forward(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, float *logits,
                         tdm_error_t *err);

/* shd_forward, and when hidden is not NULL also every token's last hidden state after the
 * final norm (n_tokens rows of n_embd floats, in token order): what the MTP block reads
 * (the state that gives the next token's logits; vLLM's and llama.cpp's MTP seed). */
tdm_status_t shd_forward_hidden(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b,
                                float *logits, float *hidden, tdm_error_t *err);

/*
 * The multi-token-prediction block (a model loaded with shd_model_params_t.mtp) on a batch
 * of MTP rows. Row t pairs token[t] = x_{p+1} with hidden_in[t] = h_p, the hidden state
 * (shd_forward_hidden's, or this function's hidden_out for a chained draft) at p = pos[t],
 * and predicts x_{p+2}:
 *
 *   x = eh_proj [RMSNorm(embed(x_{p+1}); enorm) ; RMSNorm(h_p; hnorm)]
 *   x = the block's gated-attention + MoE layer (its K/V at position p of the sequence's
 *       blocks, in the cache's extra layer; RoPE at p: vLLM's convention)
 *   out = RMSNorm(x; shared_head_norm, else output_norm); logits = head(out)
 *
 * logits gets the rows of the tokens with want_logits (shared_head_head, else the model's
 * output), hidden_out (may be NULL) their `out` rows: the next draft's h. No recurrent
 * state is read or written. Single rank only.
 */
tdm_status_t shd_forward_mtp(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b,
                             const float *hidden_in, float *logits, float *hidden_out,
                             tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
