/*
 * spec.h - speculative decoding: who drafts, how much, and what it earned.
 *
 * A decoding sequence may carry, in one step, its last accepted token plus k drafted
 * tokens; the forward pass scores all k + 1 positions at once (one weight read), and the
 * scheduler (scheduler.c) accepts the drafts one by one with crd_sampler_verify: greedy
 * requests accept a draft exactly when it is the argmax, so their tokens are those of a
 * run without speculation; sampled requests use rejection sampling, so their distribution
 * is unchanged. The K/V of rejected positions is simply never committed: the sequence's
 * length goes back, the blocks past it are released, and the prefix cache never hashes
 * them.
 *
 * This file holds the parts around that: the drafters behind one interface (prompt lookup
 * now; a model's MTP head or a small draft model later), the per-sequence acceptance
 * estimate, the step cost model and the planner that turns them into draft lengths, so
 * that speculation shrinks and stops as the batch fills.
 *
 * Planning rule. A step of n tokens takes t(n) (measured at start-up by the scheduler,
 * corrected online by the time of real steps). Without drafts a step yields T tokens
 * (one per decoding sequence). A sequence whose drafts are accepted with probability a
 * each gains a^j expected tokens from its j-th draft. Drafts are added in order of gain
 * while (T + G + g) / t(n + 1) > (T + G) / t(n), i.e. while one more draft raises the
 * expected tokens per second of the step. The rate a draft must beat is that of the
 * step's decoding rows alone (T / t(T), then growing with the drafts kept), not T over the
 * whole step: prompt chunks in the same step make t(n) large and the next token's share of
 * it small, which made drafts look nearly free in exactly the steps where every decoding
 * stream waits for them. While a sequence has had few verifications its estimate is taken
 * optimistically for its first draft of a step (a + 0.4 / sqrt(1 + verifications) / T, an
 * upper confidence bound whose bonus the T decoding streams share, since a look costs them
 * all and informs one) and at `a` for each further one, so a new sequence tries a draft
 * and then follows what it finds (optimism on every draft, unshared, made a prose stream
 * whose drafts all fail pay for ~8 rejected tokens: 0.91x at 1 stream, 0.95x at 4); its
 * `a` starts at its drafter's running acceptance over every sequence so far
 * (crd_spec_prior_observe), not at a fixed guess, so once prose has shown that prompt
 * lookup fails, a new prose stream does not pay for rediscovering it. A single stream on a
 * bandwidth-bound machine drafts freely (t grows slowly); a full batch, whose steps are already
 * compute-bound, drafts little or nothing (on a 2-core CPU, t(17) / t(16) ~ 1.07: even a draft
 * accepted 95% of the time brings 0.95 / 16 ~ 6% more tokens, so none is planned).
 */
#ifndef CRD_SPEC_H
#define CRD_SPEC_H

#include "common/status.h"

#include <stdbool.h>
#include <stdint.h>

#define CRD_SPEC_MAX_DRAFT 16 /* most drafted tokens per sequence and step */

typedef enum crd_spec_mode {
    CRD_SPEC_DEFAULT = 0, /* per request: the server's choice             */
    CRD_SPEC_OFF,
    CRD_SPEC_NGRAM, /* prompt lookup over the sequence itself (ngram.h) */
    CRD_SPEC_DRAFT, /* a small model of the same vocabulary (draft_model.h) */
    CRD_SPEC_MTP,   /* the model's own multi-token-prediction block (mtp.h) */
    CRD_SPEC_N_MODES
} crd_spec_mode_t;

const char *crd_spec_mode_name(crd_spec_mode_t m);
/* "off", "ngram", "draft", "mtp" -> the mode; TDM_ERR_INVALID_PARAM naming the accepted
 * values otherwise. */
tdm_status_t crd_spec_mode_parse(const char *s, crd_spec_mode_t *out, tdm_error_t *err);

/* Server-wide defaults (crd_sched_params_t.spec). All zero: off. */
typedef struct crd_spec_params {
    crd_spec_mode_t mode; /* DEFAULT/OFF: no speculation unless a request asks  */
    int32_t max_draft;    /* most drafts per sequence and step (0: 8)           */
    /* Planning: 0 uses the cost model; 1 drafts every proposal up to max_draft
     * regardless of cost (tests, and measuring what the cost model saves). */
    int32_t always;
    /* The draft model (serve --draft-model; NULL: none, and mode draft is refused). Not
     * owned; it outlives the scheduler. */
    struct crd_draft_model *draft;
    /* The model's MTP block as a drafter (serve --spec mtp on a model that has one; NULL:
     * none, and mode mtp is refused). Not owned; it outlives the scheduler. */
    struct crd_mtp *mtp;
} crd_spec_params_t;

/* A request's override (crd_request_params_t.spec): mode DEFAULT and max 0 keep the
 * server's; max is capped by the server's max_draft. */
typedef struct crd_spec_request {
    crd_spec_mode_t mode;
    int32_t max_draft;
} crd_spec_request_t;

/* Counters, per drafter (index: crd_spec_mode_t). */
typedef struct crd_spec_stats {
    uint64_t drafted[CRD_SPEC_N_MODES];  /* tokens proposed and sent to verification  */
    uint64_t accepted[CRD_SPEC_N_MODES]; /* of which accepted                          */
    uint64_t verify_steps;               /* sequence-steps that carried drafts          */
    uint64_t decode_steps;               /* sequence-steps that decoded (drafts or not) */
    uint64_t decode_tokens;              /* tokens those emitted (drafts + 1 each at most) */
    /* recurrent layers: accepted tokens computed again after a rejection rolled the state
     * back (scheduler.c, spec_rollback) */
    uint64_t replayed_tokens;
    double cost_1, cost_slope; /* the cost model: t(1) s, and dt/dn per token */
} crd_spec_stats_t;

/* ---- drafters ---- */

struct crd_spec_seq;

/* A drafter proposes tokens for one sequence. `update` sees the sequence's tokens so far
 * (prompt + accepted output; the list only grows), `propose` writes up to max drafts.
 *
 * A drafter whose proposals cost a model step each (the draft model) has `fill` instead of
 * update/propose: it proposes as many drafts as allowed without computing them, the
 * planner picks how many pay, and fill then computes exactly those, for all the sequences
 * of the step at once (q[i]->n_draft of them into q[i]->draft, lowering n_draft where it
 * has fewer). A fill failure costs the step's drafts, never output. */
typedef struct crd_drafter_ops {
    crd_spec_mode_t mode;
    tdm_status_t (*update)(void *impl, const int32_t *tokens, int32_t n);
    int32_t (*propose)(void *impl, const int32_t *tokens, int32_t n, int32_t max, int32_t *out);
    tdm_status_t (*fill)(struct crd_spec_seq *const *q, const int32_t *const *tokens,
                         const int32_t *n, int32_t count, tdm_error_t *err);
    void (*destroy)(void *impl);
} crd_drafter_ops_t;

/* Per-sequence state: its drafter, its acceptance estimate and this step's drafts. */
typedef struct crd_spec_seq {
    const crd_drafter_ops_t *ops;
    void *impl;
    int32_t max_draft;  /* this request's cap                               */
    float accept;       /* EMA of the per-draft acceptance rate              */
    int32_t n_obs;      /* verifications seen (exploration while few)        */
    int32_t n_proposed; /* proposal for this step (before planning)          */
    int32_t n_draft;    /* drafts in this step (after planning)              */
    int32_t draft[CRD_SPEC_MAX_DRAFT];
} crd_spec_seq_t;

/* A sequence's state for mode (CRD_SPEC_OFF: NULL without error); mode draft needs
 * draft (TDM_ERR_INVALID_PARAM without). TDM_ERR_NO_MEMORY. */
tdm_status_t crd_spec_seq_create(crd_spec_mode_t mode, int32_t max_draft,
                                 struct crd_draft_model *draft, crd_spec_seq_t **out,
                                 tdm_error_t *err);
void crd_spec_seq_destroy(crd_spec_seq_t *q); /* NULL is fine */

/* Sets q->n_proposed (and q->draft) from tokens[0, n); at most max. */
void crd_spec_seq_propose(crd_spec_seq_t *q, const int32_t *tokens, int32_t n, int32_t max);

/* Computes the planned drafts of the sequences whose drafter has `fill` (see
 * crd_drafter_ops_t), all of one drafter; tokens[i], n[i]: q[i]'s sequence. On failure
 * every q[i]->n_draft is 0. */
tdm_status_t crd_spec_fill(crd_spec_seq_t *const *q, const int32_t *const *tokens, const int32_t *n,
                           int32_t count, tdm_error_t *err);

/* After verification: `accepted` of q->n_draft drafts were taken. Updates the estimate. */
void crd_spec_seq_observe(crd_spec_seq_t *q, int32_t accepted);

/* ---- the step cost model ---- */

#define CRD_SPEC_COST_POINTS 12 /* t(n) measured at n = 1, 2, 4, ... 2048 */

typedef struct crd_spec_cost {
    double t[CRD_SPEC_COST_POINTS]; /* seconds; 0: not measured          */
    int32_t n_points;
    double scale; /* online correction: real decode steps / the model (EMA) */
    /* Seconds of one draft-model step (0: none measured, or no drafter that runs a model):
     * a step whose longest run of model-made drafts is k also costs k of them. */
    double draft_step;
    /* Per drafter (index: crd_spec_mode_t): the running acceptance of its verifications
     * over every sequence (an EMA; 0: none yet), a new sequence's starting estimate. */
    float accept[CRD_SPEC_N_MODES];
} crd_spec_cost_t;

/* Predicted time of a step of n tokens (linear between measured points, extrapolated
 * from the last two beyond them). */
double crd_spec_cost_time(const crd_spec_cost_t *c, int32_t n);
/* Folds a measured step of n tokens into the online correction. */
void crd_spec_cost_observe(crd_spec_cost_t *c, int32_t n, double seconds);
/* After verification of `drafted` tokens by `mode`'s drafter, `accepted` of them taken:
 * updates that drafter's running acceptance (c->accept). */
void crd_spec_prior_observe(crd_spec_cost_t *c, crd_spec_mode_t mode, int32_t drafted,
                            int32_t accepted);
/* A new sequence's estimate: its drafter's running acceptance (while it has one). */
void crd_spec_seq_start(crd_spec_seq_t *q, const crd_spec_cost_t *c);

/*
 * Chooses the draft length of each sequence (q[i]->n_draft <= q[i]->n_proposed) for a step
 * that would otherwise hold n_base tokens, of which n_decode decoding sequences yield one
 * token each; at most `room` drafts in all (token budget and logits rows). always: every
 * proposal whole (while room lasts). Returns the number of drafts.
 */
int32_t crd_spec_plan(const crd_spec_cost_t *c, crd_spec_seq_t *const *q, int32_t n_seqs,
                      int32_t n_base, int32_t n_decode, int32_t room, bool always);

#endif
