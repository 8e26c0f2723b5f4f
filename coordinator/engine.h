/*
 * engine.h - the engine loop: one thread that owns a scheduler and its executor.
 *
 * The HTTP server has one thread per connection; the scheduler is single-threaded. The
 * engine sits between them (vLLM's EngineCore): request threads hand submissions and
 * cancellations to an inbox under a mutex and return at once; the engine thread drains
 * the inbox between steps, so a request joins the running batch at the next step and a
 * cancellation frees its KV blocks within one step. Event callbacks run on the engine
 * thread and must be quick (append to the request's own queue and signal it).
 *
 * Statistics are a snapshot taken after every step, readable from any thread without
 * waiting for a step to end.
 */
#ifndef CRD_ENGINE_H
#define CRD_ENGINE_H

#include "coordinator/scheduler.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct crd_engine crd_engine_t;

typedef struct crd_engine_stats {
    crd_sched_stats_t sched; /* as of the end of the last step                   */
    int32_t n_inbox;         /* submitted, not yet seen by the scheduler         */
    uint64_t n_submitted;    /* accepted by crd_engine_submit                     */
    uint64_t n_rejected;     /* refused (queue full, shutting down)               */
    double busy_s;           /* seconds spent in steps                            */
} crd_engine_stats_t;

/* Creates the scheduler over ex (which must outlive the engine) and starts the thread. */
tdm_status_t crd_engine_create(const xp_executor_t *ex, const crd_sched_params_t *p,
                               crd_engine_t **out, tdm_error_t *err);

/* Ends every request (CRD_FINISH_CANCELED events), stops and joins the thread, frees. */
void crd_engine_destroy(crd_engine_t *e); /* NULL is fine */

/*
 * Queues a request (any thread). The request is checked at once: TDM_ERR_INVALID_PARAM
 * with the scheduler's message (prompt longer than the context, bad sampling values),
 * TDM_ERR_BUSY when the queue limit is reached, TDM_ERR_CANCELED after shutdown began.
 * On success *req_id names it for crd_engine_cancel and rp->on_event will be called on
 * the engine thread until a final event (finish != NONE), exactly once final.
 * rp->id is ignored: the engine numbers requests.
 */
tdm_status_t crd_engine_submit(crd_engine_t *e, const crd_request_params_t *rp, uint64_t *req_id,
                               tdm_error_t *err);

/* Cancels a request (any thread); its final event follows within one step. */
void crd_engine_cancel(crd_engine_t *e, uint64_t req_id);

/* Disaggregated prefill: another group finished the prompt of request req_id (submitted
 * with rp->remote): row, n_vocab floats, is copied; NULL with status and error when it
 * failed. Any thread; crd_sched_remote_done runs on the engine thread. */
void crd_engine_remote_done(crd_engine_t *e, uint64_t req_id, const float *row, int32_t n_vocab,
                            tdm_status_t status, const char *error);

/* Refuses new submissions from now on; cancel_running also cancels everything queued
 * and running. */
void crd_engine_shutdown(crd_engine_t *e, bool cancel_running);

/* Requests accepted and not yet finished (inbox + queued + running). Any thread. */
int32_t crd_engine_n_active(crd_engine_t *e);

int32_t crd_engine_n_ctx(const crd_engine_t *e);

void crd_engine_get_stats(crd_engine_t *e, crd_engine_stats_t *out);

/*
 * The prefix cache seen from other threads (the router, coordinator/router.h): after
 * every step that changed it, the engine thread publishes the cached blocks' chained
 * hashes. crd_engine_cached_prefix returns how many of the leading hashes (a prompt's,
 * from crd_kvm_prefix_hashes with this engine's block size and cache seed) are cached,
 * as of the end of the last step; none while the executor's generation moved since that
 * step (a shard group re-formed: its KV is gone). A snapshot: the scheduler may evict them
 * before the request is admitted, which only costs recomputing.
 */
int32_t crd_engine_block_size(const crd_engine_t *e);
uint64_t crd_engine_cache_seed(const crd_engine_t *e);
int32_t crd_engine_cached_prefix(crd_engine_t *e, const uint64_t *hashes, int32_t n);

#endif
