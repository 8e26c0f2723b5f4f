/* scheduler.c - continuous batching, chunked prefill, preemption (see scheduler.h). */
#include "coordinator/scheduler.h"

#include "common/check.h"
#include "common/clock.h"
#include "common/log.h"
#include "coordinator/draft_model.h"
#include "coordinator/kv_manager.h"
#include "coordinator/mtp.h"
#include "coordinator/spec_cost.h"
#include "coordinator/step_time.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct crd_req crd_req_t;

struct crd_req {
    uint64_t id;
    int32_t *tokens; /* prompt then generated tokens                     */
    int32_t n_tokens, cap;
    int32_t n_prompt;
    int32_t n_computed; /* tokens[0, n_computed) have K/V in the cache     */
    int32_t n_cached;   /* prompt tokens the prefix cache served (usage)    */
    int32_t n_generated;
    int32_t max_tokens;
    int32_t *stop_ids;
    int32_t n_stop_ids;
    int32_t top_logprobs;
    bool logprobs;
    crd_sampler_t *sampler;
    crd_kv_seq_t *kv;     /* NULL while waiting without blocks                */
    crd_spec_seq_t *spec; /* its drafter (NULL: no speculation)             */
    bool admitted_once;   /* n_cached is recorded on first admission only     */
    bool canceled;
    /* disaggregated prefill (scheduler.h): the decode side's hooks, and the prefill
     * side's destination table and progress (logical blocks sent whole) */
    bool has_remote, remote_lost;
    bool remote_prefilled; /* remote_done landed: a later admission computes here   */
    bool state_given;      /* its next step starts from a state the other group put */
    crd_remote_prefill_t remote;
    int32_t *kv_dst, *kv_swa_dst; /* the latter NULL without a sliding pool */
    int32_t n_kv_dst, kv_send_from, kv_sent;
    int32_t state_dst; /* the other group's state slot, -1: none */
    void (*on_prefilled)(void *user, const float *row, int32_t n_vocab);
    void *prefilled_user;
    crd_event_fn on_event;
    void *user;
    crd_req_t *prev, *next;
    /* this step */
    int32_t step_chunk;
    int32_t step_logit_row; /* -1: no logits this step */
    int32_t step_draft;     /* drafted tokens after the first one this step */
    int32_t step_tok0;      /* its first token's index in the step          */
    /* recurrent layers: the spare state slot this step's drafts run in (-1: none); the
     * sequence's own slot keeps the state from before them (spec_rollback) */
    int32_t step_spare;
    bool replay; /* the next step computes accepted tokens again (spec_rollback) */
};

typedef struct req_list {
    crd_req_t *head, *tail;
    _Atomic int32_t n; /* atomic: crd_sched_n_waiting reads it from other threads */
} req_list_t;

struct crd_sched {
    xp_executor_t ex;
    crd_sched_params_t p;
    crd_kvm_t *kvm;
    bool kvm_swa; /* the manager has a sliding pool */
    req_list_t waiting, running;
    req_list_t remote; /* admitted; their prompts are computed by another group */
    uint64_t next_id;
    crd_sched_stats_t stats;
    /* step buffers, sized at creation */
    int32_t *tok, *pos, *seq;
    uint8_t *want;
    xp_step_seq_t *seqs;
    xp_step_kv_send_t *kv_sends; /* [max_running] */
    int32_t n_kv_sends;
    crd_req_t **step_reqs;
    float *logits;          /* n_logits_max x n_vocab */
    float *lp;              /* n_vocab scratch for log-probabilities */
    uint64_t ex_generation; /* the executor's generation at the last step */
    /* speculative decoding (spec.h) */
    crd_spec_cost_t cost;
    bool cost_measured;
    crd_spec_seq_t **plan_q;  /* [max_running] */
    const int32_t **fill_tok; /* [max_running]: crd_spec_fill's arguments */
    int32_t *fill_n;
    /* the MTP drafter (spec.mtp): every token's hidden state of a step [token_budget x n_embd] */
    float *hidden;
    /* the step-time budget (step_time.h) */
    crd_step_time_t step_time;
    double prefill_s; /* seconds left for prompt chunks this step (INFINITY: no limit) */
    bool min_chunk_given;
    bool budget_cut;
};

/* The automatic budget never goes below this: shorter steps cost more in fixed overhead
 * (launches, weight reads) than they save in latency. */
#define STEP_BUDGET_FLOOR_S 0.05

const char *crd_finish_name(crd_finish_t f)
{
    switch (f) {
    case CRD_FINISH_STOP:
        return "stop";
    case CRD_FINISH_LENGTH:
        return "length";
    case CRD_FINISH_CANCELED:
        return "canceled";
    case CRD_FINISH_ERROR:
        return "error";
    default:
        return "none";
    }
}

static void list_push_back(req_list_t *l, crd_req_t *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail != NULL) {
        l->tail->next = r;
    } else {
        l->head = r;
    }
    l->tail = r;
    l->n++;
}

static void list_push_front(req_list_t *l, crd_req_t *r)
{
    r->prev = NULL;
    r->next = l->head;
    if (l->head != NULL) {
        l->head->prev = r;
    } else {
        l->tail = r;
    }
    l->head = r;
    l->n++;
}

static void list_remove(req_list_t *l, crd_req_t *r)
{
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        l->head = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    } else {
        l->tail = r->prev;
    }
    r->prev = r->next = NULL;
    l->n--;
}

tdm_status_t crd_sched_create(const xp_executor_t *ex, const crd_sched_params_t *p,
                              crd_sched_t **out, tdm_error_t *err)
{
    if (ex == NULL || ex->ops == NULL || ex->ops->step == NULL || ex->n_vocab <= 0 ||
        ex->n_blocks <= 0 || ex->block_tokens <= 0 || ex->n_batch_max <= 0 ||
        ex->n_logits_max <= 0 || ex->n_ctx_max <= 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "scheduler: incomplete executor");
    }
    if (p->token_budget <= 0 || p->max_running <= 0 || p->max_waiting < 0 || p->n_ctx <= 1 ||
        !isfinite(p->max_step_s)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "scheduler: token_budget %d, max_running %d, max_waiting %d, "
                             "n_ctx %d",
                             (int)p->token_budget, (int)p->max_running, (int)p->max_waiting,
                             (int)p->n_ctx);
    }
    if (p->spec.draft != NULL && crd_draft_model_n_vocab(p->spec.draft) != ex->n_vocab) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "the draft model has %d tokens in its vocabulary, the model %d",
                             (int)crd_draft_model_n_vocab(p->spec.draft), (int)ex->n_vocab);
    }
    crd_sched_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "scheduler: out of memory");
    }
    s->ex = *ex;
    s->p = *p;
    if (s->p.token_budget > ex->n_batch_max) {
        s->p.token_budget = ex->n_batch_max;
    }
    if (s->p.n_ctx > ex->n_ctx_max) {
        s->p.n_ctx = ex->n_ctx_max;
    }
    /* one sequence can never hold more positions than the whole KV cache */
    if ((int64_t)s->p.n_ctx > (int64_t)ex->n_blocks * ex->block_tokens) {
        s->p.n_ctx = ex->n_blocks * ex->block_tokens;
    }
    const bool swa = ex->n_swa > 0 && ex->n_swa_blocks > 0;
    if (swa && ex->n_swa_blocks < ex->n_blocks) {
        /* a step of c tokens keeps at most ceil((w - 1 + c) / B) + 1 sliding blocks of a
         * sequence: a smaller sliding pool than the full one bounds the chunk, so that one
         * sequence alone always fits */
        const int64_t c_max = (int64_t)(ex->n_swa_blocks - 1) * ex->block_tokens - (ex->n_swa - 1);
        if (c_max < 1) {
            free(s);
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "scheduler: a sliding pool of %d blocks of %d tokens cannot hold "
                                 "a window of %d",
                                 (int)ex->n_swa_blocks, (int)ex->block_tokens, (int)ex->n_swa);
        }
        if (s->p.token_budget > c_max) {
            s->p.token_budget = (int32_t)c_max;
        }
    }
    s->next_id = 1;
    if (ex->ops->generation != NULL) {
        s->ex_generation = ex->ops->generation(ex->impl);
    }
    const crd_kvm_params_t kp = {.n_blocks = ex->n_blocks,
                                 .block_size = ex->block_tokens,
                                 .seed = p->cache_seed,
                                 .n_swa = swa ? ex->n_swa : 0,
                                 .n_swa_blocks = swa ? ex->n_swa_blocks : 0,
                                 .n_state_slots = ex->n_state_slots,
                                 .n_state_store = ex->n_state_store,
                                 .state_every = p->state_every / ex->block_tokens};
    tdm_status_t st = crd_kvm_create_pools(&kp, &s->kvm, err);
    s->kvm_swa = swa;
    if (st != TDM_OK) {
        free(s);
        return st;
    }
    size_t nt = (size_t)s->p.token_budget, nr = (size_t)s->p.max_running;
    s->tok = malloc(nt * sizeof(int32_t));
    s->pos = malloc(nt * sizeof(int32_t));
    s->seq = malloc(nt * sizeof(int32_t));
    s->want = malloc(nt);
    s->seqs = malloc(nr * sizeof(xp_step_seq_t));
    s->kv_sends = malloc(nr * sizeof(xp_step_kv_send_t));
    s->step_reqs = malloc(nr * sizeof(crd_req_t *));
    s->logits = malloc((size_t)ex->n_logits_max * (size_t)ex->n_vocab * sizeof(float));
    s->lp = malloc((size_t)ex->n_vocab * sizeof(float));
    s->plan_q = malloc(nr * sizeof(crd_spec_seq_t *));
    s->fill_tok = malloc(nr * sizeof(int32_t *));
    s->fill_n = malloc(nr * sizeof(int32_t));
    if (p->spec.mtp != NULL) {
        s->hidden = malloc(nt * (size_t)(ex->n_embd > 0 ? ex->n_embd : 1) * sizeof(float));
    }
    if ((p->spec.mtp != NULL && s->hidden == NULL) || s->plan_q == NULL || s->fill_tok == NULL ||
        s->fill_n == NULL || s->tok == NULL || s->pos == NULL || s->seq == NULL ||
        s->want == NULL || s->seqs == NULL || s->step_reqs == NULL || s->logits == NULL ||
        s->lp == NULL || s->kv_sends == NULL) {
        crd_sched_destroy(s);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "scheduler: out of memory for buffers");
    }
    *out = s;
    return TDM_OK;
}

/* Gives back the spare state slot r's drafts would have run in this step. */
static void spare_put(crd_sched_t *s, crd_req_t *r)
{
    if (r->step_spare >= 0) {
        crd_kvm_state_slot_put(s->kvm, r->step_spare);
        r->step_spare = -1;
    }
}

static void req_free(crd_sched_t *s, crd_req_t *r)
{
    spare_put(s, r);
    crd_kvm_seq_free(s->kvm, r->kv);
    crd_sampler_destroy(r->sampler);
    crd_spec_seq_destroy(r->spec);
    if (r->has_remote && r->remote.release != NULL) {
        r->remote.release(r->remote.user);
    }
    free(r->kv_dst);
    free(r->kv_swa_dst);
    free(r->tokens);
    free(r->stop_ids);
    free(r);
}

static crd_event_t make_event(const crd_req_t *r, int32_t token, crd_finish_t finish)
{
    crd_event_t ev = {0};
    ev.req_id = r->id;
    ev.token = token;
    ev.logprob = NAN;
    ev.finish = finish;
    ev.n_prompt = r->n_prompt;
    ev.n_cached = r->n_cached;
    ev.n_generated = r->n_generated;
    return ev;
}

/* Removes r from `from`, reports its end (if no event carried it yet) and frees it;
 * status says what kind of error (CRD_FINISH_ERROR only). */
static void finish_req_status(crd_sched_t *s, req_list_t *from, crd_req_t *r, crd_finish_t why,
                              const char *error, tdm_status_t status, bool send_event)
{
    list_remove(from, r);
    s->stats.finished[why]++;
    if (send_event && r->on_event != NULL) {
        crd_event_t ev = make_event(r, -1, why);
        ev.error = error;
        ev.status = why == CRD_FINISH_ERROR ? status : TDM_OK;
        r->on_event(r->user, &ev);
    }
    req_free(s, r);
}

static void finish_req(crd_sched_t *s, req_list_t *from, crd_req_t *r, crd_finish_t why,
                       const char *error, bool send_event)
{
    finish_req_status(s, from, r, why, error, TDM_ERR_INTERNAL, send_event);
}

/* The executor lost KV contents: every running request ends with the error and the
 * prefix cache forgets what it held. Queued requests stay queued. */
static void lose_kv(crd_sched_t *s, const char *error, tdm_status_t status)
{
    while (s->running.head != NULL) {
        finish_req_status(s, &s->running, s->running.head, CRD_FINISH_ERROR, error, status, true);
    }
    /* prompts another group is computing into the lost storage: they end when it is done
     * (it may still be writing their blocks) */
    for (crd_req_t *r = s->remote.head; r != NULL; r = r->next) {
        r->remote_lost = true;
    }
    crd_kvm_forget_cached(s->kvm);
}

void crd_sched_destroy(crd_sched_t *s)
{
    if (s == NULL) {
        return;
    }
    while (s->running.head != NULL) {
        finish_req(s, &s->running, s->running.head, CRD_FINISH_CANCELED, NULL, true);
    }
    while (s->waiting.head != NULL) {
        finish_req(s, &s->waiting, s->waiting.head, CRD_FINISH_CANCELED, NULL, true);
    }
    while (s->remote.head != NULL) {
        finish_req(s, &s->remote, s->remote.head, CRD_FINISH_CANCELED, NULL, true);
    }
    crd_kvm_destroy(s->kvm);
    free(s->tok);
    free(s->pos);
    free(s->seq);
    free(s->want);
    free(s->seqs);
    free(s->kv_sends);
    free(s->step_reqs);
    free(s->logits);
    free(s->lp);
    free(s->plan_q);
    free(s->fill_tok);
    free(s->fill_n);
    free(s->hidden);
    free(s);
}

tdm_status_t crd_sched_check_request(const crd_sched_t *s, const crd_request_params_t *rp,
                                     tdm_error_t *err)
{
    if (rp->n_prompt <= 0 || rp->prompt == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "the prompt is empty");
    }
    if (rp->n_prompt >= s->p.n_ctx) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "the prompt has %d tokens but the context is %d tokens: it must "
                             "leave room for at least one generated token",
                             (int)rp->n_prompt, (int)s->p.n_ctx);
    }
    for (int32_t i = 0; i < rp->n_prompt; i++) {
        if (rp->prompt[i] < 0 || rp->prompt[i] >= s->ex.n_vocab) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "prompt token %d at index %d is outside the vocabulary (%d)",
                                 (int)rp->prompt[i], (int)i, (int)s->ex.n_vocab);
        }
    }
    if (rp->top_logprobs < 0 || rp->top_logprobs > CRD_MAX_TOP_LOGPROBS) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "top_logprobs must be in [0, %d]",
                             CRD_MAX_TOP_LOGPROBS);
    }
    if (rp->n_stop_ids < 0 || (rp->n_stop_ids > 0 && rp->stop_ids == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "bad stop token list");
    }
    if (rp->spec.mode < CRD_SPEC_DEFAULT || rp->spec.mode >= CRD_SPEC_N_MODES ||
        rp->spec.max_draft < 0 || rp->spec.max_draft > CRD_SPEC_MAX_DRAFT) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "speculative: max must be in [0, %d]",
                             CRD_SPEC_MAX_DRAFT);
    }
    if (rp->spec.mode == CRD_SPEC_DRAFT && s->p.spec.draft == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "speculative mode 'draft' needs a draft model (serve --draft-model)");
    }
    if (rp->spec.mode == CRD_SPEC_MTP && s->p.spec.mtp == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "speculative mode 'mtp' needs a model with an MTP block served with "
                             "--spec mtp");
    }
    return crd_sampling_params_validate(&rp->sampling, err);
}

int32_t crd_sched_n_waiting(const crd_sched_t *s)
{
    return atomic_load(&s->waiting.n);
}

int32_t crd_sched_n_ctx(const crd_sched_t *s)
{
    return s->p.n_ctx;
}

const crd_kvm_t *crd_sched_kv_manager(const crd_sched_t *s)
{
    return s->kvm;
}

/* The request's drafter, from its override and the server's defaults; NULL: none. */
static tdm_status_t spec_create(crd_sched_t *s, const crd_request_params_t *rp,
                                crd_spec_seq_t **out, tdm_error_t *err)
{
    *out = NULL;
    const crd_spec_mode_t mode = rp->spec.mode != CRD_SPEC_DEFAULT ? rp->spec.mode : s->p.spec.mode;
    int32_t max = s->p.spec.max_draft > 0 ? s->p.spec.max_draft : 8;
    if (rp->spec.max_draft > 0) {
        max = rp->spec.max_draft;
    }
    if (mode != CRD_SPEC_NGRAM && mode != CRD_SPEC_DRAFT && mode != CRD_SPEC_MTP) {
        return TDM_OK;
    }
    if (rp->spec.mode == CRD_SPEC_DEFAULT && rp->sampling.has_seed &&
        rp->sampling.temperature > 0.0f) {
        /* a seed promises a repeatable stream, but the draws of a speculative run depend
         * on the draft lengths the cost model picks from step timings: seeded sampling
         * runs without speculation unless the request asks for it */
        return TDM_OK;
    }
    tdm_status_t st = mode == CRD_SPEC_MTP
                          ? crd_mtp_spec_seq_create(s->p.spec.mtp, max, out, err)
                          : crd_spec_seq_create(mode, max, s->p.spec.draft, out, err);
    if (st == TDM_OK && *out != NULL) {
        crd_spec_seq_start(*out, &s->cost); /* its drafter's record so far */
    }
    return st;
}

tdm_status_t crd_sched_submit(crd_sched_t *s, const crd_request_params_t *rp, uint64_t *req_id,
                              tdm_error_t *err)
{
    tdm_status_t cst = crd_sched_check_request(s, rp, err);
    if (cst != TDM_OK) {
        return cst;
    }
    if (s->waiting.n >= s->p.max_waiting) {
        return tdm_error_set(err, TDM_ERR_BUSY, "the queue is full (%d requests waiting)",
                             (int)s->waiting.n);
    }
    crd_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
    }
    tdm_status_t st = crd_sampler_create(&rp->sampling, s->ex.n_vocab, &r->sampler, err);
    if (st != TDM_OK) {
        free(r);
        return st;
    }
    r->cap = rp->n_prompt + 16;
    r->tokens = malloc((size_t)r->cap * sizeof(int32_t));
    r->stop_ids = malloc((size_t)(rp->n_stop_ids > 0 ? rp->n_stop_ids : 1) * sizeof(int32_t));
    if (r->tokens == NULL || r->stop_ids == NULL) {
        req_free(s, r);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
    }
    memcpy(r->tokens, rp->prompt, (size_t)rp->n_prompt * sizeof(int32_t));
    if (rp->n_stop_ids > 0) {
        memcpy(r->stop_ids, rp->stop_ids, (size_t)rp->n_stop_ids * sizeof(int32_t));
    }
    for (int32_t i = 0; i < rp->n_prompt; i++) {
        crd_sampler_accept_prompt(r->sampler, rp->prompt[i]);
    }
    if ((st = spec_create(s, rp, &r->spec, err)) != TDM_OK) {
        req_free(s, r);
        return st;
    }
    r->n_tokens = r->n_prompt = rp->n_prompt;
    r->step_spare = -1;
    r->state_dst = -1;
    r->n_stop_ids = rp->n_stop_ids;
    r->max_tokens = rp->max_tokens;
    r->top_logprobs = rp->top_logprobs;
    r->logprobs = rp->logprobs;
    r->on_event = rp->on_event;
    r->user = rp->user;
    if (rp->remote != NULL) {
        r->has_remote = true;
        r->remote = *rp->remote;
    }
    if (rp->handoff != NULL) {
        const int32_t n = rp->handoff->n_dst;
        r->kv_dst = malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
        if (r->kv_dst == NULL) {
            req_free(s, r);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
        }
        memcpy(r->kv_dst, rp->handoff->dst, (size_t)n * sizeof(int32_t));
        if (rp->handoff->swa_dst != NULL) {
            r->kv_swa_dst = malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
            if (r->kv_swa_dst == NULL) {
                req_free(s, r);
                return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
            }
            memcpy(r->kv_swa_dst, rp->handoff->swa_dst, (size_t)n * sizeof(int32_t));
        }
        r->n_kv_dst = n;
        r->kv_send_from = r->kv_sent = rp->handoff->send_from;
        r->state_dst = rp->handoff->state_dst;
        r->on_prefilled = rp->handoff->on_prefilled;
        r->prefilled_user = rp->handoff->user;
    }
    r->id = rp->id != 0 ? rp->id : s->next_id++;
    list_push_back(&s->waiting, r);
    s->stats.prompt_tokens += (uint64_t)rp->n_prompt;
    *req_id = r->id;
    return TDM_OK;
}

/* A request whose prompt another group computes: ask it to stop; the request ends at
 * crd_sched_remote_done. */
static void cancel_remote(crd_req_t *r)
{
    if (!r->canceled && r->remote.cancel != NULL) {
        r->remote.cancel(r->remote.user);
    }
    r->canceled = true;
}

void crd_sched_cancel_all(crd_sched_t *s)
{
    for (crd_req_t *r = s->remote.head; r != NULL; r = r->next) {
        cancel_remote(r);
    }
    for (crd_req_t *r = s->running.head; r != NULL; r = r->next) {
        r->canceled = true;
    }
    for (crd_req_t *r = s->waiting.head; r != NULL; r = r->next) {
        r->canceled = true;
    }
}

void crd_sched_cancel(crd_sched_t *s, uint64_t req_id)
{
    req_list_t *lists[2] = {&s->running, &s->waiting};
    for (int l = 0; l < 2; l++) {
        for (crd_req_t *r = lists[l]->head; r != NULL; r = r->next) {
            if (r->id == req_id) {
                r->canceled = true;
                return;
            }
        }
    }
    for (crd_req_t *r = s->remote.head; r != NULL; r = r->next) {
        if (r->id == req_id) {
            cancel_remote(r);
            return;
        }
    }
}

bool crd_sched_has_work(const crd_sched_t *s)
{
    return s->running.n > 0 || s->waiting.n > 0;
}

/* Releases r's blocks and puts it at the front of the queue; it resumes by recomputing
 * whatever the prefix cache no longer holds. */
static void preempt(crd_sched_t *s, crd_req_t *r)
{
    list_remove(&s->running, r);
    spare_put(s, r);
    crd_kvm_seq_free(s->kvm, r->kv);
    r->kv = NULL;
    r->n_computed = 0;
    r->state_given = false; /* its slot is gone: it recomputes the state here */
    list_push_front(&s->waiting, r);
    s->stats.preemptions++;
}

static void drop_canceled(crd_sched_t *s, req_list_t *l)
{
    crd_req_t *r = l->head;
    while (r != NULL) {
        crd_req_t *next = r->next;
        if (r->canceled) {
            finish_req(s, l, r, CRD_FINISH_CANCELED, NULL, true);
        }
        r = next;
    }
}

/* Tokens r should run this step given the budget left; 0 if it cannot run now. */
static int32_t plan_chunk(const crd_sched_t *s, const crd_req_t *r, int32_t budget,
                          int32_t n_logits)
{
    int32_t need = r->n_tokens - r->n_computed;
    int32_t chunk = need < budget ? need : budget;
    /* a model with recurrent layers stores its state at the end of the last full prompt
     * block (the state there cannot be had after a step that runs past it) */
    const int32_t save = crd_kvm_seq_save_point(s->kvm, r->kv, r->n_tokens);
    if (save > 0 && r->n_computed + chunk > save) {
        chunk = save - r->n_computed;
    }
    if (chunk > 0 && r->n_computed + chunk == r->n_tokens && n_logits >= s->ex.n_logits_max) {
        /* its last token would need a logits row and none is left this step */
        chunk = chunk > 1 ? chunk - 1 : 0;
    }
    return chunk;
}

/* The budget's rule for one prompt chunk of `chunk` tokens at position pos: as many as fit
 * in *left seconds, at least a minimum chunk when allow_min (so prompts keep moving); *left
 * is consumed. */
static int32_t budget_chunk(const crd_sched_t *s, int32_t chunk, int32_t pos, double *left,
                            bool allow_min)
{
    int32_t cap = crd_step_time_chunk(&s->step_time, pos, *left);
    const int32_t min_chunk = s->ex.block_tokens > 16 ? s->ex.block_tokens : 16;
    if (cap < min_chunk && allow_min) {
        cap = min_chunk;
    }
    chunk = chunk < cap ? chunk : cap;
    if (chunk > 0) {
        *left -= crd_step_time_chunk_cost(&s->step_time, pos, chunk);
    }
    return chunk;
}

/* Bounds a prompt chunk of r by the time left for prompt chunks this step; the first
 * prompt chunk of a step always gets at least the minimum. */
static int32_t time_cap(crd_sched_t *s, const crd_req_t *r, int32_t chunk)
{
    if (chunk <= 1 || isinf(s->prefill_s)) {
        return chunk;
    }
    const int32_t n = budget_chunk(s, chunk, r->n_computed, &s->prefill_s, !s->min_chunk_given);
    s->budget_cut |= n < chunk;
    s->min_chunk_given |= n > 0;
    return n;
}

/* Sets the time left for prompt chunks this step: the budget less the predicted time of
 * the decode rows (running requests past their prompt, with their drafts). No limit
 * while nothing decodes or before the model has seen enough steps. */
static void plan_step_time(crd_sched_t *s)
{
    s->prefill_s = INFINITY;
    s->min_chunk_given = false;
    s->budget_cut = false;
    s->stats.step_budget_s = 0.0;
    if (s->p.max_step_s == 0.0 || !crd_step_time_ready(&s->step_time)) {
        return;
    }
    int64_t n_dec = 0, ctx_dec = 0;
    for (crd_req_t *r = s->running.head; r != NULL; r = r->next) {
        if (r->n_tokens - r->n_computed == 1 && r->n_generated > 0) {
            n_dec += 1 + r->step_draft;
            ctx_dec += (int64_t)(1 + r->step_draft) * r->n_tokens;
        }
    }
    if (n_dec == 0) {
        return;
    }
    const double t_dec = crd_step_time_predict(&s->step_time, n_dec, ctx_dec);
    double budget = s->p.max_step_s;
    if (budget < 0.0) {
        budget = 2.0 * t_dec > STEP_BUDGET_FLOOR_S ? 2.0 * t_dec : STEP_BUDGET_FLOOR_S;
    }
    s->prefill_s = budget - t_dec;
    s->stats.step_budget_s = budget;
}

/* Adds r's next chunk to the step arrays. */
static void add_to_step(crd_sched_t *s, crd_req_t *r, int32_t chunk, int32_t *n_tok,
                        int32_t *n_seqs, int32_t *n_logits)
{
    int32_t si = (*n_seqs)++;
    s->step_reqs[si] = r;
    int32_t nb;
    s->seqs[si].blocks = crd_kvm_seq_blocks(r->kv, &nb);
    s->seqs[si].n_blocks = nb;
    s->seqs[si].swa_blocks = crd_kvm_seq_swa_blocks(r->kv); /* NULL without a sliding pool */
    s->seqs[si].state_slot = crd_kvm_seq_state_slot(r->kv); /* -1 without recurrent layers */
    /* a prefix hit's stored state to start from; the state to store at a save point */
    s->seqs[si].state_load = crd_kvm_seq_state_load(s->kvm, r->kv);
    const int32_t save = crd_kvm_seq_save_point(s->kvm, r->kv, r->n_tokens);
    s->seqs[si].state_save = save > 0 && r->n_computed + chunk == save
                                 ? crd_kvm_seq_state_save(s->kvm, r->kv, save)
                                 : -1;
    if (r->state_given) {
        /* the first step after a remote prefill: the state it continues was put into the
         * slot by the other group (never with drafts: see the running loop) */
        s->seqs[si].state_load = XP_STATE_GIVEN;
        r->state_given = false;
    }
    if (r->step_spare >= 0) {
        /* drafts on recurrent layers: the step continues the state in the spare slot and
         * leaves the sequence's own as it was (a decode step never loads or saves one) */
        s->seqs[si].state_load = s->seqs[si].state_slot;
        s->seqs[si].state_slot = r->step_spare;
    }
    r->step_chunk = chunk;
    r->step_logit_row = -1;
    r->step_tok0 = *n_tok;
    if (r->kv_dst != NULL) {
        /* disaggregated prefill: the blocks this chunk touches (and any the other group
         * lacks that were cached here), each shard putting its heads after the step */
        const int32_t B = s->ex.block_tokens;
        int32_t hi = (r->n_computed + chunk + B - 1) / B;
        hi = hi < r->n_kv_dst ? hi : r->n_kv_dst;
        /* the chunk that ends the prompt also hands over the recurrent state */
        const bool state = r->state_dst >= 0 && r->n_computed + chunk == r->n_tokens;
        if (hi > r->kv_sent || state) {
            xp_step_kv_send_t *ks = &s->kv_sends[s->n_kv_sends++];
            ks->seq = si;
            ks->lo = hi > r->kv_sent ? r->kv_sent : hi - 1; /* hi > 0: the chunk is in it */
            ks->hi = hi;
            ks->dst = r->kv_dst + ks->lo;
            ks->swa_dst = r->kv_swa_dst != NULL ? r->kv_swa_dst + ks->lo : NULL;
            ks->state_dst = state ? r->state_dst : -1;
        }
    }
    for (int32_t i = 0; i < chunk; i++) {
        int32_t p = r->n_computed + i, t = (*n_tok)++;
        /* past its tokens: this step's drafts, scored in the same pass */
        s->tok[t] = p < r->n_tokens ? r->tokens[p] : r->spec->draft[p - r->n_tokens];
        s->pos[t] = p;
        s->seq[t] = si;
        s->want[t] = 0;
    }
    if (r->n_computed + chunk == r->n_tokens + r->step_draft) {
        /* the last token, and each draft: row j scores the token after draft j */
        for (int32_t j = 0; j <= r->step_draft; j++) {
            s->want[*n_tok - 1 - j] = 1;
        }
        r->step_logit_row = *n_logits;
        *n_logits += 1 + r->step_draft;
    }
}

static int req_append(crd_req_t *r, int32_t token)
{
    if (r->n_tokens == r->cap) {
        int32_t cap = r->cap * 2;
        int32_t *nt = realloc(r->tokens, (size_t)cap * sizeof(int32_t));
        if (nt == NULL) {
            return -1;
        }
        r->tokens = nt;
        r->cap = cap;
    }
    r->tokens[r->n_tokens++] = token;
    return 0;
}

/* The top-n entries of lp[n_vocab] (descending, ties to the lower id). */
static int32_t top_n(const float *lp, int32_t n_vocab, int32_t n, int32_t *ids, float *vals)
{
    int32_t k = 0;
    for (int32_t t = 0; t < n_vocab; t++) {
        if (k == n && lp[t] <= vals[k - 1]) {
            continue;
        }
        int32_t j = k < n ? k++ : n - 1;
        while (j > 0 && vals[j - 1] < lp[t]) {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        vals[j] = lp[t];
        ids[j] = t;
    }
    return k;
}

/* Samples r's next token from its logits row and reports it; true if r is finished. */
static bool emit_token(crd_sched_t *s, crd_req_t *r, float *row, int32_t draft, bool *accepted,
                       crd_finish_t *why)
{
    const int32_t nv = s->ex.n_vocab;
    bool want_lp = r->logprobs || r->top_logprobs > 0;
    if (want_lp) {
        crd_log_softmax(row, s->lp, nv); /* raw model distribution, before any processing */
    }
    int32_t token;
    if (draft >= 0) {
        *accepted = crd_sampler_verify(r->sampler, row, draft, &token);
    } else {
        token = crd_sampler_sample(r->sampler, row);
    }
    crd_sampler_accept(r->sampler, token);
    r->n_generated++;
    s->stats.generated_tokens++;

    int32_t top_ids[CRD_MAX_TOP_LOGPROBS];
    float top_lp[CRD_MAX_TOP_LOGPROBS];
    crd_event_t ev = make_event(r, token, CRD_FINISH_NONE);
    ev.logprob = want_lp ? s->lp[token] : NAN;
    if (r->top_logprobs > 0) {
        ev.n_top = top_n(s->lp, nv, r->top_logprobs, top_ids, top_lp);
        ev.top_ids = top_ids;
        ev.top_logprobs = top_lp;
    }
    for (int32_t i = 0; i < r->n_stop_ids; i++) {
        if (token == r->stop_ids[i]) {
            ev.is_stop_token = true;
        }
    }
    if (ev.is_stop_token) {
        ev.finish = CRD_FINISH_STOP;
    } else if (r->max_tokens > 0 && r->n_generated >= r->max_tokens) {
        ev.finish = CRD_FINISH_LENGTH;
    } else if (r->n_tokens + 1 >= s->p.n_ctx) {
        ev.finish = CRD_FINISH_LENGTH; /* the new token would sit at the last position */
    }
    if (ev.finish == CRD_FINISH_NONE && req_append(r, token) != 0) {
        ev.finish = CRD_FINISH_ERROR;
        ev.error = "out of memory for generated tokens";
    }
    int stop = r->on_event != NULL ? r->on_event(r->user, &ev) : 0;
    if (ev.finish == CRD_FINISH_NONE && stop) {
        /* the callback consumed the token and wants no more: report the end */
        *why = CRD_FINISH_STOP;
        if (r->on_event != NULL) {
            crd_event_t end = make_event(r, -1, CRD_FINISH_STOP);
            r->on_event(r->user, &end);
        }
        return true;
    }
    *why = ev.finish;
    return ev.finish != CRD_FINISH_NONE;
}

/*
 * The drafts the planner kept, computed now by the drafters that run a model (one batch
 * for all the step's sequences). A failed draft step only costs this step's drafts.
 */
static void fill_drafts(crd_sched_t *s)
{
    /* one call per drafter that runs a model: each computes all its sequences together */
    for (int mode = CRD_SPEC_DRAFT; mode <= CRD_SPEC_MTP; mode++) {
        int32_t n = 0;
        for (crd_req_t *r = s->running.head; r != NULL; r = r->next) {
            if (r->spec == NULL || r->spec->ops->fill == NULL || (int)r->spec->ops->mode != mode ||
                r->spec->n_draft <= 0 || r->n_tokens - r->n_computed != 1 || r->n_generated == 0) {
                continue;
            }
            if (mode == CRD_SPEC_MTP) {
                /* the MTP block writes its drafts' K/V at positions the verification step
                 * covers: their blocks now, or no drafts (never a preemption for them) */
                if (crd_kvm_seq_reserve(s->kvm, r->kv, r->n_computed + 1 + r->spec->n_draft) !=
                    TDM_OK) {
                    r->spec->n_draft = 0;
                    continue;
                }
                int32_t nb = 0;
                const int32_t *blocks = crd_kvm_seq_blocks(r->kv, &nb);
                crd_mtp_seq_set_blocks(r->spec->impl, blocks, nb);
            }
            s->plan_q[n] = r->spec;
            s->fill_tok[n] = r->tokens;
            s->fill_n[n] = r->n_tokens;
            n++;
        }
        tdm_error_t ferr = {0};
        if (crd_spec_fill(s->plan_q, s->fill_tok, s->fill_n, n, &ferr) != TDM_OK) {
            TDM_WARN("sched", "drafting (%s) failed, this step runs without those drafts: %s",
                     crd_spec_mode_name((crd_spec_mode_t)mode), tdm_error_msg(&ferr));
        }
    }
}

/* The MTP drafter of r (NULL: none). */
static crd_mtp_seq_t *mtp_of(const crd_req_t *r)
{
    return r->spec != NULL && r->spec->ops->mode == CRD_SPEC_MTP ? r->spec->impl : NULL;
}

/* After a step: hands r's hidden rows of positions [pos0, pos0 + n) (valid ones only) to its
 * MTP drafter. */
static void mtp_hidden(crd_sched_t *s, crd_req_t *r, int32_t pos0, int32_t n)
{
    crd_mtp_seq_t *q = mtp_of(r);
    if (q == NULL || s->hidden == NULL) {
        return;
    }
    int32_t nb = 0;
    const int32_t *blocks = crd_kvm_seq_blocks(r->kv, &nb);
    crd_mtp_seq_set_blocks(q, blocks, nb);
    crd_mtp_seq_hidden(q, r->tokens, r->n_tokens, pos0, n,
                       s->hidden + (size_t)r->step_tok0 * (size_t)s->ex.n_embd);
}

/* The prompt tokens a request needing `need` more at position pos will run this step under
 * the step-time budget (time_cap's rule, estimated ahead of it); *left is consumed. */
static int32_t expected_prompt_tokens(const crd_sched_t *s, int32_t need, int32_t pos, double *left)
{
    return need <= 1 || isinf(*left) ? need : budget_chunk(s, need, pos, left, true);
}

/* Measures the step-time curve speculation is planned by (spec_cost.h) once. Its figures
 * go to the stats (/metrics) and the log. */
static tdm_status_t measure_cost(crd_sched_t *s, tdm_error_t *err)
{
    s->cost_measured = true;
    /* the measuring steps sit at positions below n_max: never past the context */
    int32_t n_max = s->p.token_budget < 256 ? s->p.token_budget : 256;
    n_max = n_max < s->p.n_ctx ? n_max : s->p.n_ctx;
    TDM_CHECK(crd_spec_cost_measure(&s->ex, s->kvm, n_max, s->logits, &s->cost, err));
    s->stats.spec.cost_1 = crd_spec_cost_time(&s->cost, 1);
    s->stats.spec.cost_slope = crd_spec_cost_time(&s->cost, 33) - crd_spec_cost_time(&s->cost, 32);
    char line[256];
    int len = 0;
    for (int32_t i = 0; i < s->cost.n_points && len < (int)sizeof(line) - 24; i++) {
        len += snprintf(line + len, sizeof(line) - (size_t)len, " %d: %.2f", 1 << i,
                        1e3 * s->cost.t[i]);
    }
    TDM_INFO("sched", "speculative decoding cost model, ms per step of n tokens:%s", line);
    return TDM_OK;
}

void crd_sched_warm_up(crd_sched_t *s)
{
    const crd_spec_mode_t mode = s->p.spec.mode;
    if (mode == CRD_SPEC_DEFAULT || mode == CRD_SPEC_OFF || s->p.spec.always != 0 ||
        s->cost_measured || crd_sched_has_work(s)) {
        return;
    }
    tdm_error_t err = {0};
    if (measure_cost(s, &err) != TDM_OK) {
        /* nothing to lose yet (no request ran); the first step that drafts tries again */
        s->cost_measured = false;
        TDM_WARN("sched", "speculative decoding cost model not measured at start: %s",
                 tdm_error_msg(&err));
    }
}

/*
 * Speculative decoding: proposes drafts for the running requests that decode this step
 * and keeps as many as the cost model says pay (spec.h); sets r->step_draft. The first
 * time it has something to plan it measures the cost model on the executor.
 */
static tdm_status_t plan_drafts(crd_sched_t *s, tdm_error_t *err)
{
    int32_t n_q = 0, n_base = 0, n_decode = 0, n_rows = 0;
    bool always = s->p.spec.always != 0;
    double left = s->prefill_s; /* prompt chunks are cut by the step-time budget */
    /* recurrent layers: each drafting sequence needs a spare state slot for the step
     * (spec_rollback), and the requests this step may admit come first */
    int32_t spares = INT32_MAX;
    if (s->ex.n_state_slots > 0) {
        const int32_t admit = s->p.max_running - s->running.n;
        spares = crd_kvm_state_slots_free(s->kvm) - (s->waiting.n < admit ? s->waiting.n : admit);
    }
    for (crd_req_t *r = s->running.head; r != NULL; r = r->next) {
        r->step_draft = 0;
        const int32_t need = r->n_tokens - r->n_computed;
        n_base += expected_prompt_tokens(s, need, r->n_computed, &left);
        n_rows++;
        if (need != 1 || r->n_generated == 0) {
            continue;
        }
        n_decode++;
        if (r->spec == NULL || spares <= 0) {
            continue;
        }
        /* no draft past the context, nor past max_tokens (the last token is the
         * verifier's own) */
        int32_t max = s->p.n_ctx - 1 - r->n_tokens;
        if (r->max_tokens > 0 && r->max_tokens - r->n_generated - 1 < max) {
            max = r->max_tokens - r->n_generated - 1;
        }
        crd_spec_seq_propose(r->spec, r->tokens, r->n_tokens, max);
        if (r->spec->n_proposed > 0) {
            s->plan_q[n_q++] = r->spec;
            spares--;
        }
    }
    if (n_q == 0) {
        return TDM_OK;
    }
    /* prompts waiting for admission come first: their tokens are in the step anyway */
    int32_t wait_tokens = 0, wait_rows = 0;
    for (crd_req_t *r = s->waiting.head; r != NULL && s->running.n + wait_rows < s->p.max_running;
         r = r->next) {
        wait_tokens += expected_prompt_tokens(s, r->n_tokens - r->n_computed, r->n_computed, &left);
        wait_rows++;
    }
    n_base += wait_tokens;
    n_base = n_base < s->p.token_budget ? n_base : s->p.token_budget;
    int32_t room = s->p.token_budget - n_base;
    const int32_t rows = s->ex.n_logits_max - n_rows - wait_rows;
    room = room < rows ? room : rows;
    if (room <= 0) {
        return TDM_OK;
    }
    if (!always && !s->cost_measured) {
        /* a request asked for speculation on a server started without it (with it the
         * model was measured before the first request, crd_sched_warm_up) */
        tdm_status_t st = measure_cost(s, err);
        if (st != TDM_OK) {
            lose_kv(s, tdm_error_msg(err), st);
            return st;
        }
    }
    s->cost.draft_step =
        s->p.spec.draft != NULL ? crd_draft_model_step_seconds(s->p.spec.draft) : 0.0;
    if (s->p.spec.mtp != NULL && crd_mtp_step_seconds(s->p.spec.mtp) > s->cost.draft_step) {
        s->cost.draft_step = crd_mtp_step_seconds(s->p.spec.mtp); /* one MTP step per draft */
    }
    int32_t planned = crd_spec_plan(&s->cost, s->plan_q, n_q, n_base, n_decode, room, always);
    TDM_DEBUG("sched", "spec plan: %d proposals, base %d, decode %d, room %d -> %d drafts",
              (int)n_q, (int)n_base, (int)n_decode, (int)room, (int)planned);
    if (planned > 0) {
        fill_drafts(s);
    }
    for (crd_req_t *r = s->running.head; r != NULL; r = r->next) {
        if (r->spec != NULL && r->n_tokens - r->n_computed == 1 && r->n_generated > 0) {
            r->step_draft = r->spec->n_draft;
        }
    }
    return TDM_OK;
}

/*
 * Rolling back a recurrent state after verification (models with Gated DeltaNet layers).
 * The step ran r's last token and its k drafts in a spare slot loaded from r's own, so the
 * own slot still holds the state before them. Every draft accepted: the spare is now
 * r's state. A draft rejected: the spare, which has consumed the rejected drafts too, is
 * dropped, and r goes back to the position before the step (p0); the next step runs the
 * accepted tokens again (n_acc + 2 of them, the emitted token last) from the kept state.
 *
 * Why this and not a state per drafted position (vLLM's and SGLang's way for Mamba
 * layers): it needs no change to the kernels of any backend nor to the shards' step
 * message, one state copy per verify step instead of k + 1 state writes, and one spare
 * slot per drafting sequence instead of k + 1. The price, the accepted tokens recomputed
 * after a rejection, is paid in the next step, whose weights are read anyway (a decode
 * step is bound by weight reads); those tokens' K/V are written again with the same
 * values. Returns the position r's computed tokens now end at.
 */
static int32_t spec_rollback(crd_sched_t *s, crd_req_t *r, int32_t p0, int32_t n_computed,
                             bool all_accepted)
{
    if (r->step_spare < 0) {
        return n_computed;
    }
    if (all_accepted) {
        crd_kvm_seq_state_move(s->kvm, r->kv, r->step_spare);
        r->step_spare = -1;
        return n_computed;
    }
    spare_put(s, r);
    s->stats.spec.replayed_tokens += (uint64_t)(n_computed - p0);
    r->replay = true;
    return p0;
}

/*
 * After a step that carried drafts for r: logits row j (from r->step_logit_row) scores
 * the token after draft j (row 0: after its last accepted token). Drafts are accepted in
 * order while they verify; the first rejection's residual draw, or the bonus token after
 * the last draft, ends the run. Only accepted positions are committed (the prefix cache
 * never hashes a rejected draft) and the blocks past them are given back.
 */
static void verify_drafts(crd_sched_t *s, crd_req_t *r)
{
    const int32_t k = r->step_draft;
    const crd_spec_mode_t mode = r->spec->ops->mode;
    const int32_t *draft = r->spec->draft;
    const int32_t p0 = r->n_computed;
    crd_finish_t why = CRD_FINISH_NONE;
    bool done = false;
    int32_t n_acc = 0, n_emitted = 0;
    r->n_computed++; /* the last accepted token */
    for (int32_t j = 0; j <= k; j++) {
        float *row = s->logits + (size_t)(r->step_logit_row + j) * (size_t)s->ex.n_vocab;
        bool accepted = false;
        done = emit_token(s, r, row, j < k ? draft[j] : -1, &accepted, &why);
        n_emitted++;
        if (!accepted) {
            break;
        }
        n_acc++;
        if (done) {
            break;
        }
        r->n_computed++; /* draft j was the right token: its K/V stands */
    }
    s->stats.spec.drafted[mode] += (uint64_t)k;
    s->stats.spec.accepted[mode] += (uint64_t)n_acc;
    s->stats.spec.verify_steps++;
    s->stats.spec.decode_steps++;
    s->stats.spec.decode_tokens += (uint64_t)n_emitted;
    r->spec->n_draft = k;
    crd_spec_seq_observe(r->spec, n_acc);
    crd_spec_prior_observe(&s->cost, mode, k, n_acc);
    r->step_draft = 0;
    r->n_computed = spec_rollback(s, r, p0, r->n_computed, n_acc == k || done);
    if (!done) {
        mtp_hidden(s, r, p0, r->n_computed - p0); /* the accepted positions' states */
    }
    crd_kvm_seq_commit(s->kvm, r->kv, r->tokens, r->n_computed);
    if (done) {
        finish_req(s, &s->running, r, why, NULL, false);
    } else {
        crd_kvm_seq_trim(s->kvm, r->kv, r->n_tokens);
    }
}

/*
 * Disaggregated prefill: whether r should stay queued until a request whose prompt the
 * other group is computing now lands, because the two prompts share at least half of the
 * blocks r would need (the agents of a swarm arriving together with one system prompt).
 * Admitted now, r would reserve its own copy of those blocks in this pool and the other
 * group would compute them again; once the first lands they are in this prefix cache and
 * only the rest of r's prompt travels. Without the wait a swarm's first turns filled the
 * decode pool with copies of one prompt, and the streams decoding there were preempted as
 * they grew (bench/layouts.py layout (d): gaps of 10-35 s between two tokens). The wait
 * ends when that request lands or fails (it leaves the remote list either way).
 */
static bool remote_waits_for_shared(const crd_sched_t *s, const crd_req_t *r)
{
    if (r->admitted_once) {
        return false; /* preempted: it resumes first, as any other */
    }
    const int32_t B = s->ex.block_tokens;
    const int32_t r_blocks = (r->n_prompt + B - 1) / B;
    for (const crd_req_t *q = s->remote.head; q != NULL; q = q->next) {
        if (q->canceled || q->remote_lost) {
            continue;
        }
        /* a hit covers whole blocks before r's last prompt token, and q commits only its
         * prompt's full blocks; q's own hit (from here on: n_computed) is r's too */
        const int32_t n = r->n_prompt - 1 < q->n_prompt ? r->n_prompt - 1 : q->n_prompt;
        int32_t same = 0;
        while (same < n && r->tokens[same] == q->tokens[same]) {
            same++;
        }
        const int32_t from = q->n_computed / B, shared = same / B - from;
        if (shared > 0 && 2 * shared >= r_blocks - from) {
            return true;
        }
    }
    return false;
}

/*
 * Admits a request whose prompt another group computes: the prefix cache's blocks and the
 * rest of the prompt's reserved, then the other group started. Returns non-zero when the
 * blocks are short (the request keeps waiting, as any other would).
 */
static int admit_remote(crd_sched_t *s, crd_req_t *r)
{
    int32_t cached = 0;
    if (r->kv == NULL &&
        crd_kvm_seq_create_given(s->kvm, r->tokens, r->n_tokens, &r->kv, &cached, NULL) != TDM_OK) {
        return -1;
    }
    if (crd_kvm_seq_reserve_given(s->kvm, r->kv, r->n_prompt) != TDM_OK) {
        crd_kvm_seq_free(s->kvm, r->kv);
        r->kv = NULL;
        return -1;
    }
    r->n_computed = cached;
    r->n_cached = cached < r->n_prompt ? cached : r->n_prompt;
    r->admitted_once = true;
    list_remove(&s->waiting, r);
    list_push_back(&s->remote, r);
    int32_t nb = 0;
    const int32_t *blocks = crd_kvm_seq_blocks(r->kv, &nb);
    tdm_error_t e = {0};
    if (r->remote.start(r->remote.user, r->id, blocks, crd_kvm_seq_swa_blocks(r->kv), nb, cached,
                        crd_kvm_seq_state_slot(r->kv), &e) != TDM_OK) {
        finish_req_status(s, &s->remote, r, CRD_FINISH_ERROR, tdm_error_msg(&e), e.status, true);
    }
    return 0;
}

void crd_sched_remote_done(crd_sched_t *s, uint64_t req_id, const float *row, tdm_status_t status,
                           const char *error)
{
    crd_req_t *r = s->remote.head;
    while (r != NULL && r->id != req_id) {
        r = r->next;
    }
    if (r == NULL) {
        return;
    }
    if (row == NULL || r->canceled || r->remote_lost) {
        const crd_finish_t why =
            r->canceled && !r->remote_lost ? CRD_FINISH_CANCELED : CRD_FINISH_ERROR;
        const char *msg = r->remote_lost  ? "the shard group was re-formed: its KV cache was lost"
                          : error != NULL ? error
                                          : "the prefill group failed";
        finish_req_status(s, &s->remote, r, why, why == CRD_FINISH_ERROR ? msg : NULL,
                          r->remote_lost ? TDM_ERR_TRANSPORT : status, true);
        return;
    }
    /* the prompt's K/V is in our blocks: cache its full blocks, sample the first token
     * from the other group's logits, then decode here */
    r->n_computed = r->n_prompt;
    r->remote_prefilled = true;
    r->state_given = crd_kvm_seq_state_slot(r->kv) >= 0;
    crd_kvm_seq_commit(s->kvm, r->kv, r->tokens, r->n_computed);
    list_remove(&s->remote, r);
    list_push_back(&s->running, r);
    memcpy(s->logits, row, (size_t)s->ex.n_vocab * sizeof(float));
    crd_finish_t why = CRD_FINISH_NONE;
    if (emit_token(s, r, s->logits, -1, NULL, &why)) {
        finish_req(s, &s->running, r, why, NULL, false);
    }
}

tdm_status_t crd_sched_step(crd_sched_t *s, tdm_error_t *err)
{
    drop_canceled(s, &s->running);
    drop_canceled(s, &s->waiting);
    if (s->ex.ops->generation != NULL) {
        const uint64_t g = s->ex.ops->generation(s->ex.impl);
        if (g != s->ex_generation) {
            /* the shard group re-formed since the last step: its KV cache is empty */
            lose_kv(s, "the shard group was re-formed: its KV cache was lost", TDM_ERR_TRANSPORT);
            s->ex_generation = g;
        }
    }
    if (!crd_sched_has_work(s)) {
        return TDM_OK;
    }

    int32_t budget = s->p.token_budget, n_tok = 0, n_seqs = 0, n_logits = 0;
    bool preempted = false;
    s->n_kv_sends = 0;
    tdm_status_t st0;

    /* the budget first for the decode rows alone (drafts plan around the prompt tokens it
     * lets through), then again with the drafts the plan kept */
    for (crd_req_t *r = s->running.head; r != NULL; r = r->next) {
        r->step_draft = 0;
    }
    plan_step_time(s);
    if ((st0 = plan_drafts(s, err)) != TDM_OK) {
        return st0;
    }
    plan_step_time(s);

    /* 1. running requests, oldest first */
    for (crd_req_t *r = s->running.head; r != NULL && budget > 0;) {
        int32_t chunk = time_cap(s, r, plan_chunk(s, r, budget, n_logits));
        if (chunk == 0) {
            r->step_draft = 0;
            r = r->next;
            continue;
        }
        if (r->step_draft > 0) {
            /* drafts only where the budget, the logits rows and the KV blocks allow, and
             * not on a given state's first step (its slot's state must stay the one the
             * other group put, which a spare slot would load as a stored state) */
            int32_t k = chunk == 1 && !r->state_given ? r->step_draft : 0;
            k = k < budget - 1 ? k : budget - 1;
            k = k < s->ex.n_logits_max - n_logits - 1 ? k : s->ex.n_logits_max - n_logits - 1;
            if (k > 0 && s->ex.n_state_slots > 0 &&
                (r->step_spare = crd_kvm_state_slot_take(s->kvm)) < 0) {
                k = 0; /* no spare slot for the drafts' state */
            }
            if (k > 0 && crd_kvm_seq_reserve(s->kvm, r->kv, r->n_computed + 1 + k) != TDM_OK) {
                k = 0;
            }
            if (k == 0) {
                spare_put(s, r);
            }
            r->step_draft = k > 0 ? k : 0;
            chunk += r->step_draft;
        }
        bool self_preempted = false;
        while (crd_kvm_seq_reserve(s->kvm, r->kv, r->n_computed + chunk) == TDM_ERR_BUSY) {
            crd_req_t *victim = s->running.tail;
            preempted = true;
            if (victim == r && s->running.n == 1) {
                /* cannot happen while n_ctx <= the cache size; never loop on it */
                TDM_ERROR("sched", "request %llu alone does not fit the KV cache",
                          (unsigned long long)r->id);
                finish_req(s, &s->running, r, CRD_FINISH_ERROR, "the KV cache is too small", true);
                self_preempted = true;
                break;
            }
            if (victim == r) {
                preempt(s, r);
                self_preempted = true;
                break;
            }
            preempt(s, victim);
        }
        if (!self_preempted) {
            add_to_step(s, r, chunk, &n_tok, &n_seqs, &n_logits);
            budget -= chunk;
        }
        if (self_preempted) {
            break; /* everything after r was preempted before r itself */
        }
        r = r->next; /* r is still running; its successors may have been preempted */
    }

    /* 2. admit waiting requests (not in a step that had to preempt) */
    while (!preempted && budget > 0 && s->running.n + s->remote.n < s->p.max_running) {
        crd_req_t *r = s->waiting.head;
        while (r != NULL && r->has_remote && remote_waits_for_shared(s, r)) {
            r = r->next; /* the requests behind it go first */
        }
        if (r == NULL) {
            break;
        }
        r->step_draft = 0;
        if (r->has_remote && !r->remote_prefilled) {
            if (admit_remote(s, r) != 0) {
                break;
            }
            continue;
        }
        if (r->kv == NULL) {
            int32_t cached = 0;
            tdm_status_t st =
                crd_kvm_seq_create(s->kvm, r->tokens, r->n_tokens, &r->kv, &cached, NULL);
            if (st != TDM_OK) {
                break;
            }
            r->n_computed = cached;
            if (!r->admitted_once) {
                r->n_cached = cached < r->n_prompt ? cached : r->n_prompt;
            }
        }
        int32_t chunk = time_cap(s, r, plan_chunk(s, r, budget, n_logits));
        if (chunk == 0 || crd_kvm_seq_reserve(s->kvm, r->kv, r->n_computed + chunk) != TDM_OK) {
            /* keep no idle references while waiting, so the cache can evict freely */
            crd_kvm_seq_free(s->kvm, r->kv);
            r->kv = NULL;
            r->n_computed = 0;
            break;
        }
        r->admitted_once = true;
        list_remove(&s->waiting, r);
        list_push_back(&s->running, r);
        add_to_step(s, r, chunk, &n_tok, &n_seqs, &n_logits);
        budget -= chunk;
    }

    if (n_tok == 0) {
        if (s->running.n == 0 && s->waiting.n > 0 && crd_kvm_available(s->kvm) == s->ex.n_blocks &&
            crd_kvm_swa_available(s->kvm) == (s->kvm_swa ? s->ex.n_swa_blocks : 0)) {
            /* nothing runs and the whole cache is free: the head request cannot fit at all */
            crd_req_t *r = s->waiting.head;
            finish_req(s, &s->waiting, r, CRD_FINISH_ERROR,
                       "the request needs more KV-cache blocks than the server has", true);
        }
        return TDM_OK;
    }

    xp_step_t step = {
        .n_tokens = n_tok,
        .token = s->tok,
        .pos = s->pos,
        .seq = s->seq,
        .want_logits = s->want,
        .n_logits = n_logits,
        .n_seqs = n_seqs,
        .seqs = s->seqs,
        .n_kv_sends = s->n_kv_sends,
        .kv_sends = s->kv_sends,
        .hidden = s->hidden,
    };
    s->stats.steps++;
    tdm_error_t xerr = {0};
    const double t_step = tdm_now_s();
    tdm_status_t st = s->ex.ops->step(s->ex.impl, &step, s->logits, &xerr);
    const double dt_step = tdm_now_s() - t_step;
    if (st == TDM_OK && n_logits == n_tok) {
        /* decodes and verifications only: what the cost model predicts */
        crd_spec_cost_observe(&s->cost, n_tok, dt_step);
    }
    if (st == TDM_OK) {
        int64_t ctx = 0;
        for (int32_t i = 0; i < n_tok; i++) {
            ctx += (int64_t)s->pos[i] + 1;
        }
        crd_step_time_observe(&s->step_time, n_tok, ctx, dt_step);
        s->stats.steps_budgeted += s->budget_cut;
        for (int i = 0; i < 3; i++) {
            s->stats.step_cost[i] = s->step_time.c[i];
        }
    }
    if (st != TDM_OK) {
        TDM_ERROR("sched", "step of %d tokens failed: %s", (int)n_tok, tdm_error_msg(&xerr));
        /* A failed step may have written part of its K/V (or, across shards, lost all of
         * it): end every running request, not only the step's, and trust no cached
         * prefix. */
        lose_kv(s, tdm_error_msg(&xerr), st);
        return tdm_error_set(err, st, "%s", tdm_error_msg(&xerr));
    }
    s->stats.computed_tokens += (uint64_t)n_tok;

    for (int32_t i = 0; i < n_seqs; i++) {
        crd_req_t *r = s->step_reqs[i];
        if (r->step_draft > 0) {
            verify_drafts(s, r);
            continue;
        }
        r->n_computed += r->step_chunk;
        crd_kvm_seq_commit(s->kvm, r->kv, r->tokens, r->n_computed);
        mtp_hidden(s, r, r->n_computed - r->step_chunk, r->step_chunk);
        if (r->kv_dst != NULL) {
            const int32_t whole = r->n_computed / s->ex.block_tokens;
            r->kv_sent = whole > r->kv_sent ? whole : r->kv_sent; /* the partial one again */
        }
        if (r->step_logit_row < 0) {
            continue;
        }
        crd_finish_t why = CRD_FINISH_NONE;
        float *row = s->logits + (size_t)r->step_logit_row * (size_t)s->ex.n_vocab;
        if (r->on_prefilled != NULL) {
            /* a prefill group's request: its K/V is in the other pool (the shards flushed
             * before answering); the other group samples from this row */
            r->on_prefilled(r->prefilled_user, row, s->ex.n_vocab);
            finish_req(s, &s->running, r, CRD_FINISH_STOP, NULL, true);
            continue;
        }
        if ((r->step_chunk == 1 || r->replay) && r->n_generated > 0) {
            s->stats.spec.decode_steps++;
            s->stats.spec.decode_tokens++;
        }
        r->replay = false;
        if (emit_token(s, r, row, -1, NULL, &why)) {
            finish_req(s, &s->running, r, why, NULL, false);
        }
    }
    return TDM_OK;
}

void crd_sched_get_stats(const crd_sched_t *s, crd_sched_stats_t *out)
{
    *out = s->stats;
    out->n_running = s->running.n;
    out->n_waiting = s->waiting.n;
    crd_kvm_stats_t ks;
    crd_kvm_get_stats(s->kvm, &ks);
    out->prefix_queries = ks.prefix_queries;
    out->prefix_hits = ks.prefix_hits;
    out->kv_blocks_total = ks.n_blocks;
    out->kv_blocks_used = ks.n_used;
    out->kv_blocks_free = ks.n_free + ks.n_cached_idle;
    out->kv_swa_blocks_total = ks.swa_blocks;
    out->kv_swa_blocks_used = ks.swa_used;
    out->kv_swa_blocks_free = ks.swa_free + ks.swa_cached_idle;
    out->kv_swa_blocks_peak = ks.swa_used_peak;
}
