/*
 * router.h - a set of engine groups behind one service, and which one serves a request.
 *
 * A group is one engine (engine.h: a thread owning a scheduler over one executor, local or
 * a shard group) with a name and a role. The router owns none of them: the caller creates
 * the engines, adds them, and destroys them after the router.
 *
 * Routing (crd_router_submit), among the groups that are up:
 *   - prefix (default): each engine publishes its prefix cache's block hashes after every
 *     step (crd_engine_cached_prefix). The router hashes the prompt the way the KV manager
 *     does (chained per block from the cache seed) and, for every group, estimates the
 *     work before the request's first token: the prompt tokens that group would compute
 *     (the prompt less its cached prefix) plus the group's load, the tokens it still owes
 *     to the requests routed to it (prompt tokens not computed yet, and the tokens still
 *     to generate, max_tokens capped at CRD_ROUTER_GEN_ESTIMATE, never below
 *     CRD_ROUTER_GEN_FLOOR while the request runs). The least work wins; on
 *     a tie (cold prefixes on idle groups) the least loaded, then the next in turn. So a
 *     conversation returns to the group that holds its prefix unless that group owes more
 *     tokens than recomputing the prefix elsewhere costs.
 *   - round-robin: the next group that is up, in turn (the baseline).
 * A group that is down (its up callback says so: a shard group re-forming) gets nothing new;
 * its requests in flight end with the executor's error, except those that had streamed no
 * token yet, which are retried once on another group (crd_router_submit). When every group is down
 * the request goes to the next in turn and fails there with that group's reason, as a single group
 * does. Thread-safe: any thread may submit, cancel and read statistics.
 */
#ifndef CRD_ROUTER_H
#define CRD_ROUTER_H

#include "common/status.h"
#include "coordinator/engine.h"

#include <stdbool.h>
#include <stdint.h>

/* Generation tokens a request is expected to owe its group at most (for the load), and
 * what a running request still counts once it has generated past its estimate: a group
 * busy with long streams is not idle. */
#define CRD_ROUTER_GEN_ESTIMATE 256
#define CRD_ROUTER_GEN_FLOOR    16

typedef enum crd_group_role {
    CRD_ROLE_MIXED = 0, /* prefill and decode (a replica)                       */
    CRD_ROLE_PREFILL,   /* prompts only, KV handed to its decode group         */
    CRD_ROLE_DECODE,    /* decodes what its prefill group computed             */
} crd_group_role_t;

typedef enum crd_routing {
    CRD_ROUTE_PREFIX = 0,
    CRD_ROUTE_ROUND_ROBIN,
} crd_routing_t;

/* "mixed" | "prefill" | "decode"; anything else: TDM_ERR_INVALID_PARAM naming them. */
tdm_status_t crd_group_role_parse(const char *s, crd_group_role_t *out, tdm_error_t *err);
const char *crd_group_role_name(crd_group_role_t r);
/* "prefix" | "round-robin". */
tdm_status_t crd_routing_parse(const char *s, crd_routing_t *out, tdm_error_t *err);
const char *crd_routing_name(crd_routing_t r);

/* Whether a group can take requests now (any thread; quick). NULL: always. */
typedef bool (*crd_group_up_fn)(void *ctx);

typedef struct crd_router crd_router_t;

/* Where a request runs. The caller keeps it until the request's final event; a retry
 * (below) rewrites it, so read it only through crd_router_cancel. */
typedef struct crd_route {
    int32_t group;   /* index in the order groups were added */
    uint64_t req_id; /* the engine's id                      */
    bool canceled;   /* crd_router_cancel was called: no retry */
} crd_route_t;

typedef struct crd_router_group_stats {
    const char *name; /* as added; lives as long as the router */
    crd_group_role_t role;
    bool up;
    uint64_t routed;        /* requests accepted by this group                       */
    uint64_t prompt_tokens; /* their prompt tokens                                    */
    uint64_t cached_tokens; /* of which served from its prefix cache (as the engine said) */
    int64_t load_tokens;    /* tokens it owes now (see above)                          */
} crd_router_group_stats_t;

tdm_status_t crd_router_create(crd_routing_t routing, crd_router_t **out, tdm_error_t *err);
/* Frees the router; the engines are the caller's (destroy them after). NULL is fine. */
void crd_router_destroy(crd_router_t *r);

/* Adds a group (before any submission; not thread-safe against submit). name is copied. */
tdm_status_t crd_router_add(crd_router_t *r, const char *name, crd_group_role_t role,
                            crd_engine_t *engine, crd_group_up_fn up, void *up_ctx,
                            tdm_error_t *err);

/*
 * Disaggregated prefill/decode (docs/distributed.md), after every crd_router_add: pairs
 * the k-th "prefill" group with the k-th "decode" group. Requests are then routed (as
 * above) among the decode groups whose prefill partner is up; the decode group reserves
 * the prompt's blocks (its prefix cache first), its partner computes the prompt and puts
 * the missing blocks into them (the executors carry that), and the decode group samples
 * the first token from the partner's logits and decodes. Without such groups: nothing.
 * TDM_ERR_INVALID_PARAM unless the counts match and no "mixed" group is among them.
 */
tdm_status_t crd_router_pair_roles(crd_router_t *r, tdm_error_t *err);
/* The paired group (-1: none). */
int32_t crd_router_partner(const crd_router_t *r, int32_t group);

int32_t crd_router_n_groups(const crd_router_t *r);
crd_engine_t *crd_router_engine(const crd_router_t *r, int32_t group);
crd_routing_t crd_router_routing(const crd_router_t *r);

/*
 * Picks a group as above and submits there (crd_engine_submit's contract: checks, BUSY,
 * CANCELED; on success rp->on_event gets every event, exactly one final). out must stay
 * valid until that final event.
 *
 * Retry: a request its group fails before any token reached rp->on_event, because the
 * group's queue was full (TDM_ERR_BUSY, at submission or when its scheduler took it) or
 * its shards or link failed (TDM_ERR_TRANSPORT, TDM_ERR_TIMEOUT: the group died or
 * re-formed between routing and the first token), is submitted once more, to the best
 * other group that is up, and *out follows it; the caller sees only the second attempt's
 * events. A request that already streamed a token, a canceled one, or one with no other
 * group up ends with the first error.
 */
tdm_status_t crd_router_submit(crd_router_t *r, const crd_request_params_t *rp, crd_route_t *out,
                               tdm_error_t *err);
void crd_router_cancel(crd_router_t *r, crd_route_t *rt);

/* Every engine: refuse new work (and cancel what runs). */
void crd_router_shutdown(crd_router_t *r, bool cancel_running);
/* Requests accepted and not finished, over all groups. */
int32_t crd_router_n_active(crd_router_t *r);
/* The smallest context of the groups (what requests are checked against everywhere). */
int32_t crd_router_n_ctx(const crd_router_t *r);

void crd_router_group_stats(crd_router_t *r, int32_t group, crd_router_group_stats_t *out);
/* The engines' statistics summed over the groups (the speculation cost model: the first's). */
void crd_router_get_stats(crd_router_t *r, crd_engine_stats_t *out);

#endif
