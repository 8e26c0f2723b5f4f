/*
 * router.c - engine groups and the choice of one per request (see router.h).
 *
 * Locking: the group table is fixed once submissions start. Counters and loads are
 * atomics (the engines' threads update loads from their event callbacks); the turn cursor
 * is an atomic too. Nothing here waits for a step: the prefix query reads the engine's
 * published snapshot under the engine's own short lock. `mu` orders what a retry changes
 * (router.h): a submission and a retry write the caller's route under it, a cancel reads
 * it under it, and a request's final event reaches the caller under it, so a route is
 * never written after the request it names has ended nor read half written.
 */
#include "coordinator/router.h"
#include "coordinator/kv_manager.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct group {
    char *name;
    crd_group_role_t role;
    crd_engine_t *engine;
    crd_group_up_fn up;
    void *up_ctx;
    _Atomic uint64_t routed, prompt_tokens, cached_tokens;
    _Atomic int64_t load; /* tokens owed (router.h) */
    int32_t partner;      /* disaggregated: the decode group's prefill group, and back */
} group_t;

struct crd_router {
    crd_routing_t routing;
    group_t *groups;
    int32_t n, cap;
    _Atomic uint32_t turn;
    bool disaggregated; /* prefill + decode groups (crd_router_pair_roles) */
    pthread_mutex_t mu; /* routes and final events (above) */
};

/* Lives from submission to the final event: forwards events, settles the group's load,
 * and keeps the request (its arrays copied) for one retry on another group. */
typedef struct relay {
    crd_router_t *r;
    group_t *g;
    crd_route_t *route;      /* the caller's */
    crd_request_params_t rp; /* the caller's request: its own on_event and user */
    int32_t *prompt, *stop_ids;
    int64_t owed_prompt; /* prompt tokens charged, until the first token */
    int64_t owed_gen;    /* generation tokens charged, one off per token  */
    bool first_seen;
    bool streamed; /* a token reached the caller: no retry */
    bool retried;
} relay_t;

tdm_status_t crd_group_role_parse(const char *s, crd_group_role_t *out, tdm_error_t *err)
{
    static const char *const names[] = {"mixed", "prefill", "decode"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (crd_group_role_t)i;
            return TDM_OK;
        }
    }
    return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                         "unknown group role '%s' (use \"mixed\", \"prefill\" or \"decode\")", s);
}

const char *crd_group_role_name(crd_group_role_t r)
{
    return r == CRD_ROLE_PREFILL ? "prefill" : r == CRD_ROLE_DECODE ? "decode" : "mixed";
}

tdm_status_t crd_routing_parse(const char *s, crd_routing_t *out, tdm_error_t *err)
{
    if (strcmp(s, "prefix") == 0) {
        *out = CRD_ROUTE_PREFIX;
    } else if (strcmp(s, "round-robin") == 0) {
        *out = CRD_ROUTE_ROUND_ROBIN;
    } else {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "unknown routing '%s' (use \"prefix\" or \"round-robin\")", s);
    }
    return TDM_OK;
}

const char *crd_routing_name(crd_routing_t r)
{
    return r == CRD_ROUTE_ROUND_ROBIN ? "round-robin" : "prefix";
}

tdm_status_t crd_router_create(crd_routing_t routing, crd_router_t **out, tdm_error_t *err)
{
    *out = calloc(1, sizeof(**out));
    if (*out == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the router");
    }
    (*out)->routing = routing;
    pthread_mutex_init(&(*out)->mu, NULL);
    return TDM_OK;
}

void crd_router_destroy(crd_router_t *r)
{
    if (r == NULL) {
        return;
    }
    for (int32_t i = 0; i < r->n; i++) {
        free(r->groups[i].name);
    }
    free(r->groups);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

tdm_status_t crd_router_add(crd_router_t *r, const char *name, crd_group_role_t role,
                            crd_engine_t *engine, crd_group_up_fn up, void *up_ctx,
                            tdm_error_t *err)
{
    if (r->n == r->cap) {
        int32_t cap = r->cap ? r->cap * 2 : 4;
        group_t *g = realloc(r->groups, (size_t)cap * sizeof(*g));
        if (g == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the router");
        }
        r->groups = g;
        r->cap = cap;
    }
    group_t *g = &r->groups[r->n];
    memset(g, 0, sizeof(*g));
    g->name = strdup(name);
    if (g->name == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the router");
    }
    g->role = role;
    g->engine = engine;
    g->up = up;
    g->up_ctx = up_ctx;
    g->partner = -1;
    r->n++;
    return TDM_OK;
}

tdm_status_t crd_router_pair_roles(crd_router_t *r, tdm_error_t *err)
{
    int32_t n_pre = 0, n_dec = 0, n_mixed = 0;
    for (int32_t i = 0; i < r->n; i++) {
        n_pre += r->groups[i].role == CRD_ROLE_PREFILL;
        n_dec += r->groups[i].role == CRD_ROLE_DECODE;
        n_mixed += r->groups[i].role == CRD_ROLE_MIXED;
    }
    if (n_pre == 0 && n_dec == 0) {
        return TDM_OK;
    }
    if (n_pre != n_dec || n_mixed > 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "disaggregated prefill/decode needs as many \"prefill\" groups as "
                             "\"decode\" groups and no \"mixed\" one (%d prefill, %d decode, %d "
                             "mixed)",
                             (int)n_pre, (int)n_dec, (int)n_mixed);
    }
    for (int32_t k = 0, pi = 0, di = 0; k < n_pre; k++, pi++, di++) {
        while (r->groups[pi].role != CRD_ROLE_PREFILL) {
            pi++;
        }
        while (r->groups[di].role != CRD_ROLE_DECODE) {
            di++;
        }
        r->groups[pi].partner = di;
        r->groups[di].partner = pi;
    }
    r->disaggregated = true;
    return TDM_OK;
}

int32_t crd_router_partner(const crd_router_t *r, int32_t group)
{
    return group >= 0 && group < r->n ? r->groups[group].partner : -1;
}

int32_t crd_router_n_groups(const crd_router_t *r)
{
    return r->n;
}

crd_engine_t *crd_router_engine(const crd_router_t *r, int32_t group)
{
    return group >= 0 && group < r->n ? r->groups[group].engine : NULL;
}

crd_routing_t crd_router_routing(const crd_router_t *r)
{
    return r->routing;
}

static bool group_up(const group_t *g)
{
    return g->up == NULL || g->up(g->up_ctx);
}

/* The prompt tokens group g holds in its prefix cache (whole blocks; at most n - 1: the
 * last prompt token is always computed, as the KV manager does). */
static int32_t cached_tokens(group_t *g, const crd_request_params_t *rp)
{
    const int32_t bs = crd_engine_block_size(g->engine);
    const int32_t nb = (rp->n_prompt - 1) / bs;
    if (nb <= 0) {
        return 0;
    }
    uint64_t stack[256];
    uint64_t *h = nb <= 256 ? stack : malloc((size_t)nb * sizeof(uint64_t));
    if (h == NULL) {
        return 0;
    }
    const int32_t n =
        crd_kvm_prefix_hashes(crd_engine_cache_seed(g->engine), bs, rp->prompt, nb * bs, h, nb);
    const int32_t hit = crd_engine_cached_prefix(g->engine, h, n) * bs;
    if (h != stack) {
        free(h);
    }
    return hit;
}

/* The group for rp, and the prompt tokens it holds (*hit). exclude >= 0: a retry, which
 * goes to another group that is up or nowhere (-1). */
static int32_t choose(crd_router_t *r, const crd_request_params_t *rp, int32_t exclude,
                      int32_t *hit)
{
    const uint32_t t = atomic_fetch_add(&r->turn, 1);
    const int32_t start = (int32_t)(t % (uint32_t)r->n);
    int32_t best = -1, best_hit = 0;
    int64_t best_work = 0, best_load = 0;
    for (int32_t k = 0; k < r->n; k++) {
        const int32_t i = (start + k) % r->n;
        group_t *g = &r->groups[i];
        if (i == exclude || !group_up(g)) {
            continue;
        }
        if (r->disaggregated && (g->role != CRD_ROLE_DECODE || !group_up(&r->groups[g->partner]))) {
            continue; /* a request goes to a decode group whose prefill group is up */
        }
        if (r->routing == CRD_ROUTE_ROUND_ROBIN) {
            best = i;
            break;
        }
        const int32_t h = cached_tokens(g, rp);
        const int64_t load = atomic_load(&g->load);
        const int64_t work = (int64_t)(rp->n_prompt - h) + (load > 0 ? load : 0);
        if (best < 0 || work < best_work || (work == best_work && load < best_load)) {
            best = i;
            best_hit = h;
            best_work = work;
            best_load = load;
        }
    }
    *hit = best_hit;
    if (exclude >= 0) {
        return best;
    }
    if (best < 0 && r->disaggregated) {
        for (int32_t k = 0; k < r->n; k++) { /* fails there, with that pair's reason */
            const int32_t i = (start + k) % r->n;
            if (r->groups[i].role == CRD_ROLE_DECODE) {
                return i;
            }
        }
    }
    return best >= 0 ? best : start; /* all down: fails there with that group's reason */
}

/*
 * Disaggregated prefill (router.h). One handoff per request routed to a decode group:
 * the decode scheduler calls start when it has reserved the prompt's blocks, and the
 * request goes to the partner prefill group with those blocks as its destination. Owned
 * by two sides: the decode request (until its release hook) and, once started, the prefill
 * request (until its final event).
 */
typedef struct handoff {
    crd_router_t *r;
    group_t *pre;
    crd_engine_t *dec;
    crd_request_params_t rp; /* the prefill request: prompt and sampling as the client's */
    int32_t *prompt;
    uint64_t dec_id, pre_id;
    bool started;
    float *row; /* the prompt's last logits, from the prefill group */
    int32_t n_vocab;
    _Atomic int refs;
} handoff_t;

static void handoff_unref(handoff_t *h)
{
    if (atomic_fetch_sub(&h->refs, 1) == 1) {
        free(h->prompt);
        free(h->row);
        free(h);
    }
}

/* prefill group's thread */
static void handoff_prefilled(void *user, const float *row, int32_t n_vocab)
{
    handoff_t *h = user;
    free(h->row);
    h->row = malloc((size_t)n_vocab * sizeof(float));
    if (h->row != NULL) {
        memcpy(h->row, row, (size_t)n_vocab * sizeof(float));
        h->n_vocab = n_vocab;
    }
}

/* prefill group's thread: its request ended; the decode group takes over or fails */
static int handoff_event(void *user, const crd_event_t *ev)
{
    handoff_t *h = user;
    if (ev->finish == CRD_FINISH_NONE) {
        return 0;
    }
    const bool ok = ev->finish == CRD_FINISH_STOP && h->row != NULL;
    char msg[TDM_ERROR_MSG_MAX];
    snprintf(msg, sizeof(msg), "prefill group '%s': %s", h->pre->name,
             ev->error != NULL                   ? ev->error
             : ev->finish == CRD_FINISH_CANCELED ? "canceled"
                                                 : "no logits");
    crd_engine_remote_done(h->dec, h->dec_id, ok ? h->row : NULL, h->n_vocab,
                           ok                                  ? TDM_OK
                           : ev->finish == CRD_FINISH_CANCELED ? TDM_ERR_CANCELED
                           : ev->status != TDM_OK              ? ev->status
                                                               : TDM_ERR_TRANSPORT,
                           ok ? NULL : msg);
    handoff_unref(h);
    return 0;
}

/* decode group's thread (crd_remote_prefill_t.start) */
static tdm_status_t handoff_start(void *user, uint64_t req_id, const int32_t *blocks,
                                  const int32_t *swa_blocks, int32_t n_blocks, int32_t n_cached,
                                  int32_t state_slot, tdm_error_t *err)
{
    handoff_t *h = user;
    h->dec_id = req_id;
    const crd_kv_handoff_t ho = {
        .dst = blocks,
        .swa_dst = swa_blocks,
        .n_dst = n_blocks,
        .send_from = n_cached / crd_engine_block_size(h->dec),
        .state_dst = state_slot,
        .on_prefilled = handoff_prefilled,
        .user = h,
    };
    crd_request_params_t p = h->rp;
    p.handoff = &ho;
    p.on_event = handoff_event;
    p.user = h;
    atomic_fetch_add(&h->refs, 1);
    tdm_status_t st = crd_engine_submit(h->pre->engine, &p, &h->pre_id, err);
    if (st != TDM_OK) {
        atomic_fetch_sub(&h->refs, 1);
        return tdm_error_set(err, st, "prefill group '%s': %s", h->pre->name, tdm_error_msg(err));
    }
    h->started = true;
    atomic_fetch_add(&h->pre->routed, 1);
    atomic_fetch_add(&h->pre->prompt_tokens, (uint64_t)h->rp.n_prompt);
    return TDM_OK;
}

static void handoff_cancel(void *user)
{
    handoff_t *h = user;
    if (h->started) {
        crd_engine_cancel(h->pre->engine, h->pre_id);
    }
}

static void handoff_release(void *user)
{
    handoff_unref(user);
}

static void relay_free(relay_t *rl)
{
    free(rl->prompt);
    free(rl->stop_ids);
    free(rl);
}

static int relay_event(void *user, const crd_event_t *ev);

/*
 * Submits rl's request to group gi (hit: the prompt tokens gi holds), charging gi's load;
 * for a decode group the partner prefill group computes the prompt (handoff above).
 * Under r->mu. Once the engine has it, rl may be in use on that engine's thread.
 */
static tdm_status_t relay_submit(relay_t *rl, int32_t gi, int32_t hit, uint64_t *req_id,
                                 tdm_error_t *err)
{
    crd_router_t *r = rl->r;
    group_t *g = &r->groups[gi];
    const crd_request_params_t *rp = &rl->rp;
    rl->g = g;
    rl->first_seen = false;
    rl->owed_prompt = rp->n_prompt - hit;
    rl->owed_gen = rp->max_tokens > 0 && rp->max_tokens < CRD_ROUTER_GEN_ESTIMATE
                       ? rp->max_tokens
                       : CRD_ROUTER_GEN_ESTIMATE;
    const int64_t charged = rl->owed_prompt + rl->owed_gen;
    atomic_fetch_add(&g->load, charged);
    crd_request_params_t p = *rp;
    p.on_event = relay_event;
    p.user = rl;
    handoff_t *h = NULL;
    crd_remote_prefill_t remote;
    if (r->disaggregated && g->role == CRD_ROLE_DECODE) {
        h = calloc(1, sizeof(*h));
        int32_t *prompt = malloc((size_t)rp->n_prompt * sizeof(int32_t));
        if (h == NULL || prompt == NULL) {
            free(h);
            free(prompt);
            atomic_fetch_sub(&g->load, charged);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
        }
        memcpy(prompt, rp->prompt, (size_t)rp->n_prompt * sizeof(int32_t));
        h->r = r;
        h->pre = &r->groups[g->partner];
        h->dec = g->engine;
        h->prompt = prompt;
        h->rp = *rp;
        h->rp.prompt = prompt;
        h->rp.max_tokens = 1;
        h->rp.logprobs = false;
        h->rp.top_logprobs = 0;
        h->rp.stop_ids = NULL;
        h->rp.n_stop_ids = 0;
        h->rp.spec = (crd_spec_request_t){0};
        h->rp.remote = NULL;
        atomic_init(&h->refs, 1); /* the decode request's, until release */
        remote = (crd_remote_prefill_t){.start = handoff_start,
                                        .cancel = handoff_cancel,
                                        .release = handoff_release,
                                        .user = h};
        p.remote = &remote;
    }
    const int64_t n_prompt = rp->n_prompt;
    tdm_status_t st = crd_engine_submit(g->engine, &p, req_id, err);
    if (st != TDM_OK) {
        atomic_fetch_sub(&g->load, charged);
        if (h != NULL) {
            handoff_unref(h);
        }
        return st;
    }
    atomic_fetch_add(&g->routed, 1);
    atomic_fetch_add(&g->prompt_tokens, (uint64_t)n_prompt);
    return TDM_OK;
}

/* A failure worth one more try elsewhere: the group was full or its link or shard failed. */
static bool retryable(tdm_status_t st)
{
    return st == TDM_ERR_BUSY || st == TDM_ERR_TRANSPORT || st == TDM_ERR_TIMEOUT;
}

/*
 * rl's request failed on its group before any token reached the caller: submits it once
 * to the best other group that is up (router.h). On the failed group's engine thread,
 * inside its final event, which the caller then never sees. False: no retry (canceled,
 * no other group up, or that one refused too); the caller gets the first failure.
 */
static bool relay_retry(relay_t *rl)
{
    crd_router_t *r = rl->r;
    group_t *failed = rl->g;
    crd_route_t *route = rl->route;
    pthread_mutex_lock(&r->mu);
    if (route->canceled) {
        pthread_mutex_unlock(&r->mu);
        return false;
    }
    int32_t hit = 0;
    const int32_t gi = choose(r, &rl->rp, (int32_t)(failed - r->groups), &hit);
    if (gi < 0) {
        pthread_mutex_unlock(&r->mu);
        return false;
    }
    /* the failed group's charge goes (its final event never settles it) */
    atomic_fetch_sub(&failed->load, (rl->first_seen ? 0 : rl->owed_prompt) + rl->owed_gen);
    rl->retried = true;
    uint64_t id = 0;
    tdm_error_t err = {0};
    if (relay_submit(rl, gi, hit, &id, &err) != TDM_OK) {
        /* back as it was, for the first failure's final event */
        rl->g = failed;
        rl->first_seen = true;
        rl->owed_prompt = rl->owed_gen = 0;
        pthread_mutex_unlock(&r->mu);
        return false;
    }
    route->group = gi;
    route->req_id = id;
    pthread_mutex_unlock(&r->mu);
    return true;
}

static int relay_event(void *user, const crd_event_t *ev)
{
    relay_t *rl = user;
    if (ev->finish == CRD_FINISH_ERROR && ev->token < 0 && !rl->streamed && !rl->retried &&
        retryable(ev->status) && relay_retry(rl)) {
        return 0; /* the request goes on in another group */
    }
    group_t *g = rl->g;
    if (!rl->first_seen && (ev->token >= 0 || ev->finish != CRD_FINISH_NONE)) {
        rl->first_seen = true;
        atomic_fetch_sub(&g->load, rl->owed_prompt);
        rl->owed_prompt = 0;
        if (ev->status != TDM_ERR_BUSY) {
            atomic_fetch_add(&g->cached_tokens, (uint64_t)(ev->n_cached > 0 ? ev->n_cached : 0));
        }
    }
    if (ev->token >= 0 && rl->owed_gen > CRD_ROUTER_GEN_FLOOR) {
        atomic_fetch_sub(&g->load, 1);
        rl->owed_gen--;
    }
    if (ev->token >= 0) {
        rl->streamed = true;
    }
    if (ev->finish == CRD_FINISH_NONE) {
        return rl->rp.on_event(rl->rp.user, ev);
    }
    atomic_fetch_sub(&g->load, rl->owed_gen);
    pthread_mutex_lock(&rl->r->mu); /* after this the caller may free the route */
    rl->rp.on_event(rl->rp.user, ev);
    pthread_mutex_unlock(&rl->r->mu);
    relay_free(rl);
    return 0;
}

tdm_status_t crd_router_submit(crd_router_t *r, const crd_request_params_t *rp, crd_route_t *out,
                               tdm_error_t *err)
{
    if (r->n == 0) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "the router has no engine group");
    }
    if (rp->n_prompt <= 0 || rp->prompt == NULL) {
        /* the engine's checks give the message */
        return crd_engine_submit(r->groups[0].engine, rp, &out->req_id, err);
    }
    relay_t *rl = calloc(1, sizeof(*rl));
    int32_t *prompt = malloc((size_t)rp->n_prompt * sizeof(int32_t));
    int32_t *stop_ids = malloc((size_t)(rp->n_stop_ids > 0 ? rp->n_stop_ids : 1) * sizeof(int32_t));
    if (rl == NULL || prompt == NULL || stop_ids == NULL) {
        free(rl);
        free(prompt);
        free(stop_ids);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
    }
    memcpy(prompt, rp->prompt, (size_t)rp->n_prompt * sizeof(int32_t));
    if (rp->n_stop_ids > 0 && rp->stop_ids != NULL) {
        memcpy(stop_ids, rp->stop_ids, (size_t)rp->n_stop_ids * sizeof(int32_t));
    }
    rl->r = r;
    rl->route = out;
    rl->rp = *rp;
    rl->rp.prompt = rl->prompt = prompt;
    rl->rp.stop_ids = rl->stop_ids = stop_ids;
    rl->rp.remote = NULL;
    rl->rp.handoff = NULL;
    out->canceled = false;
    pthread_mutex_lock(&r->mu);
    int32_t hit = 0;
    int32_t gi = choose(r, rp, -1, &hit);
    tdm_status_t st = relay_submit(rl, gi, hit, &out->req_id, err);
    if (st == TDM_ERR_BUSY) {
        /* its queue is full: once to the best other group that is up */
        const int32_t gj = choose(r, rp, gi, &hit);
        tdm_error_t e2 = {0};
        if (gj >= 0 && relay_submit(rl, gj, hit, &out->req_id, &e2) == TDM_OK) {
            rl->retried = true;
            gi = gj;
            st = TDM_OK;
        } /* else the first refusal is the answer */
    }
    if (st == TDM_OK) {
        out->group = gi;
    }
    pthread_mutex_unlock(&r->mu);
    if (st != TDM_OK) {
        relay_free(rl);
    }
    return st;
}

void crd_router_cancel(crd_router_t *r, crd_route_t *rt)
{
    pthread_mutex_lock(&r->mu);
    rt->canceled = true; /* no retry after this */
    crd_engine_t *e = crd_router_engine(r, rt->group);
    const uint64_t id = rt->req_id;
    pthread_mutex_unlock(&r->mu);
    if (e != NULL) {
        crd_engine_cancel(e, id);
    }
}

void crd_router_shutdown(crd_router_t *r, bool cancel_running)
{
    for (int32_t i = 0; i < r->n; i++) {
        crd_engine_shutdown(r->groups[i].engine, cancel_running);
    }
}

int32_t crd_router_n_active(crd_router_t *r)
{
    int32_t n = 0;
    for (int32_t i = 0; i < r->n; i++) {
        n += crd_engine_n_active(r->groups[i].engine);
    }
    return n;
}

int32_t crd_router_n_ctx(const crd_router_t *r)
{
    int32_t n = 0;
    for (int32_t i = 0; i < r->n; i++) {
        const int32_t c = crd_engine_n_ctx(r->groups[i].engine);
        n = i == 0 || c < n ? c : n;
    }
    return n;
}

void crd_router_group_stats(crd_router_t *r, int32_t group, crd_router_group_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (group < 0 || group >= r->n) {
        return;
    }
    group_t *g = &r->groups[group];
    out->name = g->name;
    out->role = g->role;
    out->up = group_up(g);
    out->routed = atomic_load(&g->routed);
    out->prompt_tokens = atomic_load(&g->prompt_tokens);
    out->cached_tokens = atomic_load(&g->cached_tokens);
    out->load_tokens = atomic_load(&g->load);
}

void crd_router_get_stats(crd_router_t *r, crd_engine_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    for (int32_t i = 0; i < r->n; i++) {
        crd_engine_stats_t e;
        crd_engine_get_stats(r->groups[i].engine, &e);
        crd_sched_stats_t *a = &out->sched;
        const crd_sched_stats_t *x = &e.sched;
        a->n_running += x->n_running;
        a->n_waiting += x->n_waiting;
        a->steps += x->steps;
        a->preemptions += x->preemptions;
        a->prompt_tokens += x->prompt_tokens;
        a->generated_tokens += x->generated_tokens;
        a->computed_tokens += x->computed_tokens;
        a->prefix_queries += x->prefix_queries;
        a->prefix_hits += x->prefix_hits;
        for (int f = 0; f <= CRD_FINISH_ERROR; f++) {
            a->finished[f] += x->finished[f];
        }
        a->kv_blocks_total += x->kv_blocks_total;
        a->kv_blocks_used += x->kv_blocks_used;
        a->kv_blocks_free += x->kv_blocks_free;
        a->kv_swa_blocks_total += x->kv_swa_blocks_total;
        a->kv_swa_blocks_used += x->kv_swa_blocks_used;
        a->kv_swa_blocks_free += x->kv_swa_blocks_free;
        a->kv_swa_blocks_peak += x->kv_swa_blocks_peak;
        for (int m = 0; m < CRD_SPEC_N_MODES; m++) {
            a->spec.drafted[m] += x->spec.drafted[m];
            a->spec.accepted[m] += x->spec.accepted[m];
        }
        a->spec.verify_steps += x->spec.verify_steps;
        a->spec.decode_steps += x->spec.decode_steps;
        a->spec.decode_tokens += x->spec.decode_tokens;
        a->spec.replayed_tokens += x->spec.replayed_tokens;
        if (i == 0) { /* a model, not a count: the first group's */
            a->spec.cost_1 = x->spec.cost_1;
            a->spec.cost_slope = x->spec.cost_slope;
        }
        out->n_inbox += e.n_inbox;
        out->n_submitted += e.n_submitted;
        out->n_rejected += e.n_rejected;
        out->busy_s += e.busy_s;
    }
}
