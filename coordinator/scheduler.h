/*
 * scheduler.h - continuous batching with chunked prefill over a paged KV cache.
 *
 * Every call to crd_sched_step() forms one step (vLLM v1 style):
 *   1. requests already running get their next tokens first, in admission order: one
 *      token for a decode, the next chunk of its prompt for a partial prefill, all under
 *      a per-step token budget so a long prompt never stalls running streams for long;
 *   2. if KV blocks run out (of either pool, for a model with sliding-window layers:
 *      coordinator/kv_manager.h), the most recently admitted running request is
 *      preempted: its blocks are released (full ones stay in the prefix cache) and it
 *      goes back to the front of the queue, to be resumed by recomputing what the cache
 *      lost;
 *   3. waiting requests are admitted while budget, KV blocks and the running limit allow;
 *      a new request first reuses the longest cached prefix of its prompt.
 * While requests are decoding, a step-time budget (max_step_s, step_time.h) also bounds
 * the prompt chunks of steps 1 and 3 by their predicted time, so a long prompt cannot
 * stall the running streams' inter-token latency.
 * The step goes to the executor; each request whose prompt is now fully computed gets a
 * sampled token, reported through its event callback.
 *
 * Requests are ended by a stop token, max_tokens, the context limit, their callback
 * asking to stop (stop strings live above the token level), cancellation (takes effect at
 * the start of the next step: blocks are freed within one step) or an executor error.
 *
 * Single-threaded: one thread owns a scheduler (the engine loop, or `tandem generate`).
 */
#ifndef CRD_SCHEDULER_H
#define CRD_SCHEDULER_H

#include "common/status.h"
#include "coordinator/sampler.h"
#include "coordinator/spec.h"
#include "transport/xp_step.h"

#include <stdbool.h>
#include <stdint.h>

#define CRD_MAX_TOP_LOGPROBS 20

typedef enum crd_finish {
    CRD_FINISH_NONE = 0, /* more events follow                               */
    CRD_FINISH_STOP,     /* stop token, or the callback asked to stop         */
    CRD_FINISH_LENGTH,   /* max_tokens or the context limit                   */
    CRD_FINISH_CANCELED, /* crd_sched_cancel                                  */
    CRD_FINISH_ERROR,    /* the executor failed                               */
} crd_finish_t;

const char *crd_finish_name(crd_finish_t f);

typedef struct crd_event {
    uint64_t req_id;
    int32_t token;      /* generated token, or -1 on a final event without one   */
    bool is_stop_token; /* token is one of the request's stop ids                */
    float logprob;      /* log p(token) under the raw distribution (NAN unless asked) */
    int32_t n_top;      /* top alternatives (0 unless top_logprobs > 0)          */
    const int32_t *top_ids;
    const float *top_logprobs;
    crd_finish_t finish; /* NONE unless this is the request's last event          */
    const char *error;   /* message when finish == CRD_FINISH_ERROR               */
    tdm_status_t status; /* with CRD_FINISH_ERROR: what kind (BUSY: never started)  */
    int32_t n_prompt;    /* usage: prompt tokens                                   */
    int32_t n_cached;    /* usage: prompt tokens served from the prefix cache      */
    int32_t n_generated; /* usage: tokens generated so far, this one included      */
} crd_event_t;

/* Called on the scheduler's thread for every generated token and for the end of a
 * request. Return non-zero to end the request now with CRD_FINISH_STOP (e.g. a stop
 * string matched); the return value of a final event is ignored. */
typedef int (*crd_event_fn)(void *user, const crd_event_t *ev);

/*
 * Disaggregated prefill, the decode group's side (coordinator/router.c wires it): the
 * prompt's K/V is computed by another group and put into this scheduler's blocks. At
 * admission the scheduler takes the prefix cache's blocks and reserves the rest of the
 * prompt's (sliding blocks only for the window the first generated token reads,
 * crd_kvm_seq_reserve_given), then calls start (on its own thread) with the whole table and how
 * many leading prompt tokens it already holds; the request waits, in no step, until
 * crd_sched_remote_done. A model with recurrent layers also gets the state at the prompt's
 * end put into the request's state slot, so its prefix hit here is not cut to a stored
 * state (crd_kvm_seq_create_given) and its first step here starts from the given state
 * (XP_STATE_GIVEN). cancel asks the other group to stop (the blocks stay reserved until
 * remote_done: the other group may still be writing them); release is called once, when
 * the request is freed, after which no hook is called again. A request preempted after
 * remote_done recomputes here like any other.
 */
typedef struct crd_remote_prefill {
    /* swa_blocks: the sliding pool's table beside blocks (-1 where none is kept; NULL
     * without a sliding pool): only the window the first generated token reads has them.
     * state_slot: the request's recurrent-state slot here, which the other group fills
     * with the state at the prompt's end (models with recurrent layers; else -1). */
    tdm_status_t (*start)(void *user, uint64_t req_id, const int32_t *blocks,
                          const int32_t *swa_blocks, int32_t n_blocks, int32_t n_cached,
                          int32_t state_slot, tdm_error_t *err);
    void (*cancel)(void *user);
    void (*release)(void *user);
    void *user;
} crd_remote_prefill_t;

/* Disaggregated prefill, the prefill group's side: the prompt's full and partial blocks
 * are put into another group's pool (xp_step_kv_send_t), and the request ends when its
 * prompt is computed: on_prefilled gets the last prompt position's logits (the decode
 * group samples the first token from them), then a final CRD_FINISH_STOP event without a
 * token follows. */
typedef struct crd_kv_handoff {
    const int32_t *dst;     /* [n_dst] copied: logical block j -> block id in the other pool */
    const int32_t *swa_dst; /* [n_dst] copied, the same for its sliding pool (-1: none kept);
                               NULL without one                                            */
    int32_t n_dst;          /* covers the prompt                                             */
    int32_t send_from;      /* first logical block to send (the other group holds the rest)  */
    int32_t state_dst;      /* the other group's state slot for the state at the prompt's
                               end (recurrent layers), -1: none                              */
    void (*on_prefilled)(void *user, const float *row, int32_t n_vocab);
    void *user; /* on_prefilled's (the request's own user may be wrapped by the engine) */
} crd_kv_handoff_t;

typedef struct crd_request_params {
    uint64_t id;           /* 0: the scheduler numbers it; else unique, chosen by the caller */
    const int32_t *prompt; /* copied                                          */
    int32_t n_prompt;
    int32_t max_tokens; /* <= 0: until a stop token or the context limit   */
    crd_sampling_params_t sampling;
    const int32_t *stop_ids; /* copied; tokens that end the request             */
    int32_t n_stop_ids;
    bool logprobs;           /* events carry log p(token); else NAN (saves a
                                pass over the vocabulary per token)            */
    int32_t top_logprobs;    /* 0..CRD_MAX_TOP_LOGPROBS alternatives per token  */
    crd_spec_request_t spec; /* speculative decoding override (zero: the server's) */
    crd_event_fn on_event;
    void *user;
    const crd_remote_prefill_t *remote; /* NULL, or: the prompt is computed elsewhere     */
    const crd_kv_handoff_t *handoff;    /* NULL, or: compute the prompt for another group */
} crd_request_params_t;

typedef struct crd_sched_params {
    int32_t token_budget;   /* most tokens per step (<= executor n_batch_max)      */
    int32_t max_running;    /* most sequences per step                             */
    int32_t max_waiting;    /* queue limit: more submissions get TDM_ERR_BUSY      */
    int32_t n_ctx;          /* positions per sequence (<= executor n_ctx_max)      */
    uint64_t cache_seed;    /* namespaces prefix-cache hashes (model identity)     */
    crd_spec_params_t spec; /* speculative decoding (zero: off; spec.h)          */
    /* Recurrent (Gated DeltaNet) models: also store the state every state_every prompt
     * tokens (rounded down to blocks; 0: only at a prompt's last full block). */
    int32_t state_every;
    /* Step-time budget (step_time.h), seconds: > 0 fixed, < 0 automatic (twice the decode
     * rows' predicted time), 0 none (chunks limited by token_budget only). */
    double max_step_s;
} crd_sched_params_t;

typedef struct crd_sched_stats {
    int32_t n_running, n_waiting;
    uint64_t steps, preemptions;
    uint64_t prompt_tokens, generated_tokens, computed_tokens;
    uint64_t prefix_queries, prefix_hits;
    uint64_t finished[CRD_FINISH_ERROR + 1];
    int32_t kv_blocks_total, kv_blocks_used, kv_blocks_free;
    /* the sliding-window layers' pool (all 0 when the model has none) */
    int32_t kv_swa_blocks_total, kv_swa_blocks_used, kv_swa_blocks_free, kv_swa_blocks_peak;
    crd_spec_stats_t spec; /* speculative decoding */
    /* the step-time budget: the last one applied (0: none), steps whose prompt chunks it
     * cut, and the step-time model's coefficients (c0 s, s per token, s per key) */
    double step_budget_s;
    uint64_t steps_budgeted;
    double step_cost[3];
} crd_sched_stats_t;

typedef struct crd_sched crd_sched_t;

/* ex must outlive the scheduler. */
tdm_status_t crd_sched_create(const xp_executor_t *ex, const crd_sched_params_t *p,
                              crd_sched_t **out, tdm_error_t *err);
/* Ends any remaining request with CRD_FINISH_CANCELED (callbacks run) and frees. */
void crd_sched_destroy(crd_sched_t *s);

/* Work best done before the first request, on the owner's thread while nothing runs: with
 * speculation on by the server's choice (not forced by spec.always), measures the step-time
 * curve its planner prices drafts by (spec_cost.h), so no request waits for it. A failure
 * is logged, and the first step that drafts measures instead, as a server without
 * speculation does for a request whose own override asks for it. */
void crd_sched_warm_up(crd_sched_t *s);

/*
 * Queues a request. TDM_ERR_INVALID_PARAM (message with the numbers) for an empty prompt,
 * a prompt that leaves no room to generate within n_ctx, bad sampling parameters or
 * token ids; TDM_ERR_BUSY when the queue is full.
 */
tdm_status_t crd_sched_submit(crd_sched_t *s, const crd_request_params_t *rp, uint64_t *req_id,
                              tdm_error_t *err);

/*
 * The checks crd_sched_submit makes on the request itself (not the queue limit). Reads
 * only what crd_sched_create fixed, so any thread may call it while the owner steps.
 */
tdm_status_t crd_sched_check_request(const crd_sched_t *s, const crd_request_params_t *rp,
                                     tdm_error_t *err);

/* Requests queued, not yet admitted. Any thread (an atomic read; exact at that moment). */
int32_t crd_sched_n_waiting(const crd_sched_t *s);

/* The context length requests are checked against. Any thread. */
int32_t crd_sched_n_ctx(const crd_sched_t *s);

/* The KV manager (its prefix cache): the owner's thread only, between steps. */
const struct crd_kvm *crd_sched_kv_manager(const crd_sched_t *s);

/* Marks a request canceled; it ends at the start of the next step. Unknown ids are ignored. */
void crd_sched_cancel(crd_sched_t *s, uint64_t req_id);

/* Cancels every queued and running request (same timing as crd_sched_cancel). */
void crd_sched_cancel_all(crd_sched_t *s);

/* True while any request is queued or running. */
bool crd_sched_has_work(const crd_sched_t *s);

/* The other group finished the prompt of a request started through rp->remote: row is
 * the last prompt position's logits (n_vocab floats), or NULL when it failed (status and
 * error say why; TDM_ERR_CANCELED after a cancel). The request samples its first token
 * from row and decodes from then on, or ends. Owner's thread, between steps. */
void crd_sched_remote_done(crd_sched_t *s, uint64_t req_id, const float *row, tdm_status_t status,
                           const char *error);

/* Runs one step (no-op without work). An executor failure ends the step's requests with
 * CRD_FINISH_ERROR and is returned; the scheduler stays usable. */
tdm_status_t crd_sched_step(crd_sched_t *s, tdm_error_t *err);

void crd_sched_get_stats(const crd_sched_t *s, crd_sched_stats_t *out);

#endif
