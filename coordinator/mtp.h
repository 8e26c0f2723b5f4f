/*
 * mtp.h - drafting with the model's own multi-token-prediction block (serve --spec mtp;
 * qwen3next / qwen35moe checkpoints that carry one).
 *
 * The MTP block predicts the token after next from the trunk's last hidden state h_p (after
 * the final norm, the state whose logits gave x_{p+1}) and the embedding of x_{p+1}: one
 * "MTP row" per position p, whose K/V the block keeps at position p of the sequence's own KV
 * blocks, in one more full-attention layer of the same cache (shard/forward.h
 * shd_forward_mtp). So the MTP K/V is allocated, shared by the prefix cache and freed with
 * the sequence's blocks, by the same KV manager, with no pool of its own.
 *
 * Per sequence, with tokens [0, n) of which the trunk has computed [0, n - 1):
 *   - the trunk's hidden rows arrive after each of its steps (crd_mtp_seq_hidden): the
 *     rows of positions [base, base + n_h) are kept until the MTP rows for them run;
 *   - the prompt's MTP rows run as the prompt is computed (a catch-up step once more than
 *     MTP_CATCHUP rows wait), so the block attends over the whole context, as vLLM's does
 *     (it runs the MTP layer over the prompt at prefill); the held rows stay bounded;
 *   - drafting k tokens (the spec layer's fill, after the planner chose k): one MTP step
 *     runs the rows still missing, up to p = n - 2 (h_{n-2} with x_{n-1}): its logits give
 *     draft 0; then k - 1 steps of one row per sequence chain the block on its own output
 *     state and its own draft (positions n - 1 .. n + k - 3). Those chained rows' K/V are
 *     written over by the next catch-up, which uses the trunk's real states of the accepted
 *     tokens. The row of p = n - 2 stays held and runs again with the next proposal (its
 *     K/V rewritten with the same values), so a proposal never lacks its first row.
 *   - rows that a rollback (hybrid models replay accepted tokens), a preemption or a prefix
 *     hit make stale are dropped: a step's rows replace everything from their first position.
 *
 * A prefix hit starts the rows at the hit: the cached blocks hold the MTP K/V their first
 * sequence wrote. That K/V at a block's last position pairs it with the token its writer
 * had next (and is written when that token is known, possibly after the block is cached),
 * so a sequence sharing the block may see another continuation's row there: its drafts can
 * suffer, never its output.
 *
 * The scheduler reserves the KV blocks of the chained rows' positions before fill (they lie
 * inside the verification step's positions) and hands each sequence's block table in
 * (crd_mtp_seq_set_blocks). A failed MTP step costs drafts only: no draft that step; the
 * rows already run stay run (the K/V of a failed step is rewritten by the next one).
 *
 * Not thread-safe: the scheduler's thread only.
 */
#ifndef CRD_MTP_H
#define CRD_MTP_H

#include "common/status.h"
#include "coordinator/spec.h"
#include "transport/xp_step.h"

#include <stdint.h>

typedef struct crd_mtp crd_mtp_t;
typedef struct crd_mtp_seq crd_mtp_seq_t;

/* ex (which must outlive the drafter) runs the MTP block (ex->mtp). TDM_ERR_INVALID_PARAM
 * for an executor without one, TDM_ERR_NO_MEMORY. */
tdm_status_t crd_mtp_create(const xp_executor_t *ex, crd_mtp_t **out, tdm_error_t *err);
void crd_mtp_destroy(crd_mtp_t *m); /* NULL is fine; sequences must be gone */

/* Seconds of one MTP step (an EMA of recent ones; 0 before the first): what each draft
 * position costs the verification step (spec.h crd_spec_cost_t.draft_step). */
double crd_mtp_step_seconds(const crd_mtp_t *m);

/* A drafter for one sequence (spec.h; mode CRD_SPEC_MTP, drafts by fill). */
tdm_status_t crd_mtp_spec_seq_create(crd_mtp_t *m, int32_t max_draft, crd_spec_seq_t **out,
                                     tdm_error_t *err);

/* The sequence's current block table (valid until the next reservation); before fill and
 * before crd_mtp_seq_hidden. */
void crd_mtp_seq_set_blocks(crd_mtp_seq_t *q, const int32_t *blocks, int32_t n_blocks);

/* After a trunk step: its hidden rows rows[0, n) for positions [pos0, pos0 + n) of the
 * sequence, all computed from committed tokens (n 0: the step's rows are void, e.g. rolled
 * back). tokens[0, n_tokens): the sequence so far. Runs a catch-up step when many rows wait
 * (errors are logged and cost drafts only). */
void crd_mtp_seq_hidden(crd_mtp_seq_t *q, const int32_t *tokens, int32_t n_tokens, int32_t pos0,
                        int32_t n, const float *rows);

#endif
