/*
 * draft_model.h - a small model with the target's vocabulary that drafts greedily
 * (serve --spec draft --draft-model M.gguf).
 *
 * The draft model runs through an executor of its own (transport/exec_local.c in this
 * process) with a KV cache of its own. Each sequence that drafts with it holds a
 * crd_draft_seq_t: the KV blocks it was given from the draft cache and the tokens whose
 * K/V stand there (a prefix of the sequence, plus the drafts of its last proposal). On a
 * proposal the longest common prefix of those and the sequence's tokens is kept (a
 * rejected draft is thereby trimmed: its positions are written over), the tokens the draft
 * model has not seen are prefilled, and k tokens are drafted greedily, one draft-model
 * step per position for all the sequences of the call together (the draft model is
 * memory-bound too: one weight read serves every sequence).
 *
 * The target's scheduler calls it from its own thread only (not thread-safe). A failed
 * draft step costs drafts, never output: the caller drafts nothing that step and every
 * sequence's draft K/V is taken as lost (prefilled again next time).
 */
#ifndef CRD_DRAFT_MODEL_H
#define CRD_DRAFT_MODEL_H

#include "common/status.h"
#include "transport/xp_step.h"

#include <stdint.h>

typedef struct crd_draft_model crd_draft_model_t;
typedef struct crd_draft_seq crd_draft_seq_t;

/* ex (which must outlive the model) holds the draft model; its KV blocks are handed out
 * to sequences as they grow. TDM_ERR_INVALID_PARAM for an executor with a sliding or a
 * recurrent pool (not supported as a drafter), TDM_ERR_NO_MEMORY. */
tdm_status_t crd_draft_model_create(const xp_executor_t *ex, crd_draft_model_t **out,
                                    tdm_error_t *err);
void crd_draft_model_destroy(crd_draft_model_t *m); /* NULL is fine; seqs must be gone */

int32_t crd_draft_model_n_vocab(const crd_draft_model_t *m);
/* Seconds of one drafting step (one token per sequence; an average of recent ones, 0 before
 * the first): what each draft position costs the step (spec.h crd_spec_cost_t). */
double crd_draft_model_step_seconds(const crd_draft_model_t *m);

crd_draft_seq_t *crd_draft_seq_create(crd_draft_model_t *m); /* NULL: out of memory */
void crd_draft_seq_destroy(crd_draft_seq_t *q); /* gives its blocks back; NULL is fine */
crd_draft_model_t *crd_draft_seq_model(const crd_draft_seq_t *q);

/* One sequence's part of a crd_draft_model_propose call. */
typedef struct crd_draft_job {
    crd_draft_seq_t *seq;
    const int32_t *tokens; /* the sequence so far (prompt + accepted output) */
    int32_t n_tokens;
    int32_t max;  /* drafts wanted                                      */
    int32_t *out; /* [max]: the drafts                                  */
    int32_t n_out;
} crd_draft_job_t;

/*
 * Drafts up to job[i].max tokens after job[i].tokens for every job (all of the same model)
 * and sets n_out (fewer when the draft cache has no blocks left for the sequence). On an
 * executor failure every n_out is 0 and the error is returned.
 */
tdm_status_t crd_draft_model_propose(crd_draft_model_t *m, crd_draft_job_t *jobs, int32_t n_jobs,
                                     tdm_error_t *err);

#endif
