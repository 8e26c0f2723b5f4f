/*
 * xp_step.h - one step of work for a shard group, and who executes it.
 *
 * The scheduler builds a xp_step_t each iteration: the tokens to run (prefill chunks and
 * decode tokens of many sequences mixed), their positions, which sequence each belongs
 * to, the block tables of every sequence in the step (a second one for the sliding-window
 * layers of a model that has them), and which tokens need logits.
 * An executor runs it and returns one row of n_vocab logits per token with want_logits,
 * in token order.
 *
 * Executors: in one process, a shard's forward pass (transport/exec_local.c adapts it);
 * across machines, the transport sends the step to every shard of the group. The
 * coordinator calls down into this ops table: the transport layer owns the message and
 * its executors (which may include shard headers), so data flows one way.
 */
#ifndef XP_STEP_H
#define XP_STEP_H

#include "common/status.h"

#include <stdint.h>

/* A sequence's block tables (kernels/kern_backend.h kern_seq_t, member for member). */
typedef struct xp_step_seq {
    const int32_t *blocks; /* logical block j -> physical KV block id (full pool)  */
    int32_t n_blocks;      /* entries of blocks and of swa_blocks                   */
    /* Executors with a sliding pool (n_swa_blocks > 0): logical block j -> its block
     * there for the sliding-window layers, -1 where the sequence no longer keeps it;
     * NULL otherwise. */
    const int32_t *swa_blocks;
    /* The sequence's recurrent-state slot (Gated DeltaNet models, xp_executor_t
     * n_state_slots > 0); -1 otherwise. The STEP message carries it to every shard, each
     * holding its heads' share of the slot. */
    int32_t state_slot;
    /* Stored states (state slot ids, coordinator/kv_manager.h): copied into state_slot
     * before the step (a prefix hit resuming there), and from it after the step (the
     * state at a cached prefix's end); -1: none. state_load XP_STATE_GIVEN: a prefill
     * group put the state into state_slot (disaggregated prefill), and it stands at this
     * step's first position of the sequence. */
    int32_t state_load, state_save;
} xp_step_seq_t;

/* = KERN_STATE_GIVEN (kernels/kern_backend.h), which the shard reads. */
#define XP_STATE_GIVEN (-2)

/* Disaggregated prefill (docs/distributed.md): K/V blocks a prefill group's shards put into a
 * decode group's pool once the step's forward pass wrote them, each shard its own heads to
 * the decode shard of the same rank (the peer's pool and keys travel beside the step,
 * transport/xp_msg.h). A model with sliding-window layers hands over their blocks in the
 * last window only (swa_dst). A model with recurrent layers also hands over the sequence's state
 * once the step that computes its prompt's last token has run: every recurrent layer's
 * conv and delta-rule state, from the sequence's slot into slot state_dst there. */
typedef struct xp_step_kv_send {
    int32_t seq;        /* index into seqs                                      */
    int32_t lo, hi;     /* logical blocks [lo, hi) of that sequence's table     */
    const int32_t *dst; /* [hi - lo]: the block ids in the decode group's pool  */
    /* [hi - lo]: the ids in the decode group's sliding pool, -1 where it keeps none (a
     * block below the window its first generated token reads); NULL without a sliding
     * pool. A sliding layer's block goes where this is >= 0. */
    const int32_t *swa_dst;
    int32_t state_dst; /* the decode group's state slot; -1: no state to send   */
} xp_step_kv_send_t;

typedef struct xp_step {
    int32_t n_tokens;
    const int32_t *token;       /* [n_tokens]                          */
    const int32_t *pos;         /* [n_tokens] position in its sequence */
    const int32_t *seq;         /* [n_tokens] index into seqs          */
    const uint8_t *want_logits; /* [n_tokens]                          */
    int32_t n_logits;           /* number of want_logits set           */
    int32_t n_seqs;
    const xp_step_seq_t *seqs; /* [n_seqs]                            */
    int32_t n_kv_sends;        /* 0 unless this group prefills for another */
    const xp_step_kv_send_t *kv_sends;
    /* Output, NULL for none: every token's last hidden state after the final norm,
     * n_tokens rows of n_embd floats, for the MTP drafter (executors with mtp_step only). */
    float *hidden;
} xp_step_t;

/* A step of the model's multi-token-prediction block (xp_executor_ops_t.mtp_step): the
 * tokens, positions, sequences and block tables of an xp_step_t (row t pairs token x_{p+1}
 * with the hidden state of position p = pos[t], its K/V at p in the block's own layer), the
 * hidden state of each row, and which rows want logits. */
typedef struct xp_mtp_step {
    xp_step_t step;         /* hidden and kv_sends unused                         */
    const float *hidden_in; /* [n_tokens x n_embd]                                */
    float *hidden_out;      /* [n_logits x n_embd]: the rows' output states, or NULL */
} xp_mtp_step_t;

typedef struct xp_executor_ops {
    /* Runs the step; logits gets n_logits rows of n_vocab floats. A failure ends every
     * running request with the error (the executor names the cause in err) and the
     * scheduler forgets its prefix cache: a failed step may have left K/V half written. */
    tdm_status_t (*step)(void *impl, const xp_step_t *step, float *logits, tdm_error_t *err);
    /* Optional (NULL: never changes). A counter that moves whenever the executor lost its
     * KV contents (a shard group re-formed after a failure): the scheduler then forgets
     * its prefix cache. */
    uint64_t (*generation)(void *impl);
    /* Optional (NULL: the executor cannot run the model's MTP block; xp_executor_t.mtp 0):
     * runs one MTP step (shard/forward.h shd_forward_mtp), logits rows as step's. */
    tdm_status_t (*mtp_step)(void *impl, const xp_mtp_step_t *st, float *logits, tdm_error_t *err);
} xp_executor_ops_t;

typedef struct xp_executor {
    const xp_executor_ops_t *ops;
    void *impl;
    int32_t n_vocab;      /* logits row length                                  */
    int32_t n_blocks;     /* KV blocks the executor holds                       */
    int32_t block_tokens; /* tokens per KV block                                */
    int32_t n_batch_max;  /* most tokens per step it accepts                    */
    int32_t n_logits_max; /* most logits rows per step                          */
    int32_t n_ctx_max;    /* most positions per sequence                        */
    /* The sliding pool (shard/kv_cache.h): blocks of the sliding-window layers, whose
     * queries see the last n_swa positions; both 0 when the model has none. */
    int32_t n_swa;
    int32_t n_swa_blocks;
    /* Recurrent-state slots the executor holds (models with Gated DeltaNet layers; 0:
     * none): each running sequence needs one (coordinator/kv_manager.h). */
    int32_t n_state_slots;
    /* Of which stored states of cached prefixes (the slots after the running ones). */
    int32_t n_state_store;
    /* The model's MTP block runs here (ops->mtp_step, xp_step_t.hidden): 1, else 0. */
    int32_t mtp;
    int32_t n_embd; /* hidden-state row length (set with mtp)                   */
} xp_executor_t;

#endif
