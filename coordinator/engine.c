/*
 * engine.c - the engine thread around the scheduler (see engine.h).
 *
 * Locking: e->mu guards the inbox, the cancel list, the flags and the stats snapshot.
 * The scheduler itself is touched only by the engine thread (and by the read-only checks
 * crd_sched_check_request / crd_sched_n_ctx, which read what creation fixed). The lock is
 * never held during a step, so submitting never waits for the model.
 */
#include "coordinator/engine.h"
#include "common/clock.h"
#include "coordinator/kv_manager.h"

#include "common/check.h"
#include "common/log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A submission waiting in the inbox: the parameters with their arrays copied. */
typedef struct pending {
    struct pending *next;
    crd_request_params_t rp;
    int32_t *prompt, *stop_ids;
    crd_remote_prefill_t remote; /* rp.remote / rp.handoff point here when given */
    crd_kv_handoff_t handoff;
    int32_t *kv_dst;
} pending_t;

/* Disaggregated prefill: another group finished (or failed) a request's prompt. */
typedef struct remote_item {
    struct remote_item *next;
    uint64_t id;
    float *row; /* NULL: failed */
    tdm_status_t status;
    char error[TDM_ERROR_MSG_MAX];
} remote_item_t;

/* Lives from submission to the final event: forwards events and counts completions. */
typedef struct relay {
    crd_engine_t *e;
    crd_event_fn on_event;
    void *user;
} relay_t;

typedef struct cancel_item {
    struct cancel_item *next;
    uint64_t id;
} cancel_item_t;

struct crd_engine {
    crd_sched_t *sched;
    int32_t max_waiting;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pending_t *inbox_head, *inbox_tail;
    int32_t n_inbox;
    cancel_item_t *cancels;
    remote_item_t *remote_head, *remote_tail;
    bool quit, refuse, cancel_all;
    uint64_t next_id;
    int32_t n_active;
    crd_engine_stats_t snap;

    /* The prefix cache's block hashes, sorted, for crd_engine_cached_prefix: `hashes`
     * (under mu) is what readers search; the engine thread fills `hashes_next` when the
     * KV manager's cache version moved and swaps the two under mu. */
    uint64_t cache_seed;
    int32_t block_size, hashes_cap;
    uint64_t *hashes, *hashes_next;
    int32_t n_hashes;
    uint64_t hashes_version;
    /* The executor's generation the published hashes belong to (under mu): a shard group
     * that re-formed since has lost its KV, which the scheduler notices only at its next
     * step, so until then the hashes describe nothing. */
    const xp_executor_t *ex;
    uint64_t hashes_gen;
};

static void pending_free(pending_t *p)
{
    if (p != NULL) {
        free(p->prompt);
        free(p->stop_ids);
        free(p->kv_dst);
        free(p->rp.user); /* the relay */
        free(p);
    }
}

static int relay_event(void *user, const crd_event_t *ev)
{
    relay_t *r = user;
    int rc = r->on_event(r->user, ev);
    if (ev->finish != CRD_FINISH_NONE) {
        crd_engine_t *e = r->e;
        pthread_mutex_lock(&e->mu);
        e->n_active--;
        pthread_mutex_unlock(&e->mu);
        free(r);
    }
    return rc;
}

/* Final event for a submission the scheduler refused after the inbox accepted it (the
 * queue filled up in between). */
static void reject_pending(crd_engine_t *e, pending_t *p, tdm_status_t st, const char *msg)
{
    relay_t *r = p->rp.user;
    crd_event_t ev = {0};
    ev.req_id = p->rp.id;
    ev.token = -1;
    ev.finish = CRD_FINISH_ERROR;
    ev.error = msg;
    ev.status = st;
    ev.n_prompt = p->rp.n_prompt;
    p->rp.user = NULL;
    relay_event(r, &ev);
    pthread_mutex_lock(&e->mu);
    e->snap.n_rejected++;
    pthread_mutex_unlock(&e->mu);
}

static int cmp_u64(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t ex_generation(const xp_executor_t *ex)
{
    return ex->ops->generation != NULL ? ex->ops->generation(ex->impl) : 0;
}

/* Engine thread: republishes the prefix cache's hashes if they changed since last time;
 * gen: the executor's generation before the step that produced them. */
static void publish_hashes(crd_engine_t *e, uint64_t gen)
{
    const crd_kvm_t *kvm = crd_sched_kv_manager(e->sched);
    const uint64_t v = crd_kvm_cache_version(kvm);
    if (v == e->hashes_version) {
        pthread_mutex_lock(&e->mu);
        e->hashes_gen = gen;
        pthread_mutex_unlock(&e->mu);
        return;
    }
    int32_t n = crd_kvm_cached_hashes(kvm, e->hashes_next, e->hashes_cap);
    qsort(e->hashes_next, (size_t)n, sizeof(uint64_t), cmp_u64);
    pthread_mutex_lock(&e->mu);
    uint64_t *t = e->hashes;
    e->hashes = e->hashes_next;
    e->hashes_next = t;
    e->n_hashes = n;
    e->hashes_gen = gen;
    pthread_mutex_unlock(&e->mu);
    e->hashes_version = v;
}

/* What a step changes when it does anything: steps run, requests admitted (waiting),
 * preempted (running) or ended. */
typedef struct progress {
    uint64_t steps, finished;
    int32_t n_running, n_waiting;
} progress_t;

static progress_t sched_progress(const crd_sched_stats_t *st)
{
    progress_t p = {st->steps, 0, st->n_running, st->n_waiting};
    for (int f = 0; f <= CRD_FINISH_ERROR; f++) {
        p.finished += st->finished[f];
    }
    return p;
}

static bool progress_same(progress_t a, progress_t b)
{
    return a.steps == b.steps && a.finished == b.finished && a.n_running == b.n_running &&
           a.n_waiting == b.n_waiting;
}

static void *engine_main(void *arg)
{
    crd_engine_t *e = arg;
    bool has_work = false;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->quit && e->inbox_head == NULL && e->cancels == NULL && !has_work &&
               !e->cancel_all && e->remote_head == NULL) {
            pthread_cond_wait(&e->cv, &e->mu);
        }
        pending_t *inbox = e->inbox_head;
        cancel_item_t *cancels = e->cancels;
        remote_item_t *remotes = e->remote_head;
        e->remote_head = e->remote_tail = NULL;
        bool quit = e->quit, cancel_all = e->cancel_all;
        e->inbox_head = e->inbox_tail = NULL;
        e->n_inbox = 0;
        e->cancels = NULL;
        e->cancel_all = false;
        pthread_mutex_unlock(&e->mu);

        while (inbox != NULL) {
            pending_t *p = inbox;
            inbox = p->next;
            tdm_error_t err = {0};
            uint64_t id;
            if (quit || cancel_all) {
                reject_pending(e, p, TDM_ERR_CANCELED, "the server is shutting down");
            } else if (crd_sched_submit(e->sched, &p->rp, &id, &err) != TDM_OK) {
                reject_pending(e, p, err.status, tdm_error_msg(&err));
            } else {
                p->rp.user = NULL; /* the scheduler owns the relay now */
            }
            pending_free(p);
        }
        while (cancels != NULL) {
            cancel_item_t *c = cancels;
            cancels = c->next;
            crd_sched_cancel(e->sched, c->id);
            free(c);
        }
        while (remotes != NULL) {
            remote_item_t *ri = remotes;
            remotes = ri->next;
            crd_sched_remote_done(e->sched, ri->id, ri->row, ri->status, ri->error);
            free(ri->row);
            free(ri);
        }
        if (quit) {
            break; /* crd_sched_destroy ends what is left with CANCELED events */
        }
        if (cancel_all) {
            crd_sched_cancel_all(e->sched);
        }

        double t0 = tdm_now_s();
        tdm_error_t err = {0};
        /* a step starts by checking the executor's generation (the KV was lost?): hashes
         * published after it hold for the generation read before it */
        const bool stepped = crd_sched_has_work(e->sched);
        const uint64_t gen = stepped ? ex_generation(e->ex) : 0;
        crd_sched_stats_t st;
        crd_sched_get_stats(e->sched, &st);
        const progress_t before = sched_progress(&st);
        if (stepped && crd_sched_step(e->sched, &err) != TDM_OK) {
            TDM_WARN("engine", "step failed: %s", tdm_error_msg(&err));
        }
        double dt = tdm_now_s() - t0;
        if (stepped) {
            publish_hashes(e, gen);
        }

        crd_sched_get_stats(e->sched, &st);
        /* A step that ran nothing and changed nothing while nothing runs leaves queued
         * requests that wait for KV blocks or for prompts another group is computing: only
         * a submission, a cancel or a landing changes that, and each wakes the thread.
         * Stepping again at once would spin a core that the shards of this machine need. */
        has_work = crd_sched_has_work(e->sched) &&
                   (!stepped || st.n_running > 0 || !progress_same(sched_progress(&st), before));
        pthread_mutex_lock(&e->mu);
        e->snap.sched = st;
        e->snap.busy_s += dt;
        pthread_mutex_unlock(&e->mu);
    }
    return NULL;
}

tdm_status_t crd_engine_create(const xp_executor_t *ex, const crd_sched_params_t *p,
                               crd_engine_t **out, tdm_error_t *err)
{
    *out = NULL;
    crd_engine_t *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the engine");
    }
    tdm_status_t st = crd_sched_create(ex, p, &e->sched, err);
    if (st != TDM_OK) {
        free(e);
        return st;
    }
    crd_sched_warm_up(e->sched); /* before the engine's thread and its first request */
    e->max_waiting = p->max_waiting;
    e->next_id = 1;
    e->cache_seed = p->cache_seed;
    e->ex = ex;
    e->hashes_gen = ex_generation(ex);
    e->block_size = ex->block_tokens > 0 ? ex->block_tokens : 1;
    e->hashes_cap = ex->n_blocks > 0 ? ex->n_blocks : 1;
    e->hashes = calloc((size_t)e->hashes_cap, sizeof(uint64_t));
    e->hashes_next = calloc((size_t)e->hashes_cap, sizeof(uint64_t));
    if (e->hashes == NULL || e->hashes_next == NULL) {
        crd_sched_destroy(e->sched);
        free(e->hashes);
        free(e->hashes_next);
        free(e);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the engine");
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    crd_sched_get_stats(e->sched, &e->snap.sched);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        crd_engine_destroy(e);
        return tdm_error_set(err, TDM_ERR_INTERNAL, "cannot start the engine thread");
    }
    e->thread_started = true;
    *out = e;
    return TDM_OK;
}

void crd_engine_destroy(crd_engine_t *e)
{
    if (e == NULL) {
        return;
    }
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->quit = true;
        e->refuse = true;
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    /* anything submitted after the thread's last look at the inbox */
    while (e->inbox_head != NULL) {
        pending_t *p = e->inbox_head;
        e->inbox_head = p->next;
        reject_pending(e, p, TDM_ERR_CANCELED, "the server is shutting down");
        pending_free(p);
    }
    while (e->cancels != NULL) {
        cancel_item_t *c = e->cancels;
        e->cancels = c->next;
        free(c);
    }
    while (e->remote_head != NULL) {
        remote_item_t *ri = e->remote_head;
        e->remote_head = ri->next;
        free(ri->row);
        free(ri);
    }
    crd_sched_destroy(e->sched);
    free(e->hashes);
    free(e->hashes_next);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

tdm_status_t crd_engine_submit(crd_engine_t *e, const crd_request_params_t *rp, uint64_t *req_id,
                               tdm_error_t *err)
{
    tdm_status_t st = crd_sched_check_request(e->sched, rp, err);
    if (st != TDM_OK) {
        return st;
    }
    pending_t *p = calloc(1, sizeof(*p));
    relay_t *r = calloc(1, sizeof(*r));
    if (p == NULL || r == NULL) {
        free(p);
        free(r);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
    }
    p->rp = *rp;
    r->e = e;
    r->on_event = rp->on_event;
    r->user = rp->user;
    p->rp.on_event = relay_event;
    p->rp.user = r; /* freed with p until the scheduler takes it */
    p->prompt = malloc((size_t)rp->n_prompt * sizeof(int32_t));
    p->stop_ids = malloc((size_t)(rp->n_stop_ids > 0 ? rp->n_stop_ids : 1) * sizeof(int32_t));
    if (p->prompt == NULL || p->stop_ids == NULL) {
        pending_free(p);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
    }
    memcpy(p->prompt, rp->prompt, (size_t)rp->n_prompt * sizeof(int32_t));
    if (rp->n_stop_ids > 0) {
        memcpy(p->stop_ids, rp->stop_ids, (size_t)rp->n_stop_ids * sizeof(int32_t));
    }
    p->rp.prompt = p->prompt;
    p->rp.stop_ids = p->stop_ids;
    if (rp->remote != NULL) {
        p->remote = *rp->remote;
        p->rp.remote = &p->remote;
    }
    if (rp->handoff != NULL) {
        /* the destination tables, the sliding pool's after the full pool's */
        const size_t n = (size_t)rp->handoff->n_dst;
        p->handoff = *rp->handoff;
        p->kv_dst = malloc((n > 0 ? 2 * n : 1) * sizeof(int32_t));
        if (p->kv_dst == NULL) {
            pending_free(p);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
        }
        memcpy(p->kv_dst, rp->handoff->dst, n * sizeof(int32_t));
        p->handoff.dst = p->kv_dst;
        if (rp->handoff->swa_dst != NULL) {
            memcpy(p->kv_dst + n, rp->handoff->swa_dst, n * sizeof(int32_t));
            p->handoff.swa_dst = p->kv_dst + n;
        }
        p->rp.handoff = &p->handoff;
    }

    pthread_mutex_lock(&e->mu);
    if (e->refuse) {
        e->snap.n_rejected++;
        pthread_mutex_unlock(&e->mu);
        pending_free(p);
        return tdm_error_set(err, TDM_ERR_CANCELED, "the server is shutting down");
    }
    int32_t n_queued = crd_sched_n_waiting(e->sched) + e->n_inbox;
    if (n_queued >= e->max_waiting) {
        int32_t n = n_queued;
        e->snap.n_rejected++;
        pthread_mutex_unlock(&e->mu);
        pending_free(p);
        return tdm_error_set(err, TDM_ERR_BUSY,
                             "the server is busy: %d requests are already waiting (limit %d)",
                             (int)n, (int)e->max_waiting);
    }
    p->rp.id = e->next_id++;
    *req_id = p->rp.id;
    if (e->inbox_tail != NULL) {
        e->inbox_tail->next = p;
    } else {
        e->inbox_head = p;
    }
    e->inbox_tail = p;
    e->n_inbox++;
    e->n_active++;
    e->snap.n_submitted++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return TDM_OK;
}

void crd_engine_cancel(crd_engine_t *e, uint64_t req_id)
{
    cancel_item_t *c = malloc(sizeof(*c));
    if (c == NULL) {
        return; /* the request runs to its end: wasteful, not wrong */
    }
    c->id = req_id;
    pthread_mutex_lock(&e->mu);
    c->next = e->cancels;
    e->cancels = c;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void crd_engine_remote_done(crd_engine_t *e, uint64_t req_id, const float *row, int32_t n_vocab,
                            tdm_status_t status, const char *error)
{
    remote_item_t *ri = calloc(1, sizeof(*ri));
    float *copy = row != NULL ? malloc((size_t)n_vocab * sizeof(float)) : NULL;
    if (ri == NULL || (row != NULL && copy == NULL)) {
        /* the request cannot learn its end: better an error than a hang */
        free(copy);
        copy = NULL;
        if (ri == NULL) {
            TDM_ERROR("engine", "out of memory: request %llu is lost", (unsigned long long)req_id);
            return;
        }
        status = TDM_ERR_NO_MEMORY;
        error = "out of memory for the prefilled logits";
    } else if (row != NULL) {
        memcpy(copy, row, (size_t)n_vocab * sizeof(float));
    }
    ri->id = req_id;
    ri->row = copy;
    ri->status = status;
    snprintf(ri->error, sizeof(ri->error), "%s", error != NULL ? error : "");
    pthread_mutex_lock(&e->mu);
    if (e->remote_tail != NULL) {
        e->remote_tail->next = ri;
    } else {
        e->remote_head = ri;
    }
    e->remote_tail = ri;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void crd_engine_shutdown(crd_engine_t *e, bool cancel_running)
{
    pthread_mutex_lock(&e->mu);
    e->refuse = true;
    if (cancel_running) {
        e->cancel_all = true;
    }
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

int32_t crd_engine_n_active(crd_engine_t *e)
{
    pthread_mutex_lock(&e->mu);
    int32_t n = e->n_active;
    pthread_mutex_unlock(&e->mu);
    return n;
}

int32_t crd_engine_n_ctx(const crd_engine_t *e)
{
    return crd_sched_n_ctx(e->sched);
}

void crd_engine_get_stats(crd_engine_t *e, crd_engine_stats_t *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->snap;
    out->n_inbox = e->n_inbox;
    pthread_mutex_unlock(&e->mu);
}

int32_t crd_engine_block_size(const crd_engine_t *e)
{
    return e->block_size;
}

uint64_t crd_engine_cache_seed(const crd_engine_t *e)
{
    return e->cache_seed;
}

int32_t crd_engine_cached_prefix(crd_engine_t *e, const uint64_t *hashes, int32_t n)
{
    int32_t i = 0;
    const uint64_t gen = ex_generation(e->ex); /* any thread: an atomic in exec_remote */
    pthread_mutex_lock(&e->mu);
    if (gen != e->hashes_gen) {
        n = 0; /* re-formed since: its cache is empty, whatever was published */
    }
    for (; i < n; i++) {
        if (bsearch(&hashes[i], e->hashes, (size_t)e->n_hashes, sizeof(uint64_t), cmp_u64) ==
            NULL) {
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return i;
}
