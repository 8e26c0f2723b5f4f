/*
 * exec_remote.h - the executor over a shard group: the coordinator's side of the control
 * plane (see shard_server.h for the conversation).
 *
 * One DEALER socket per shard dials the shard's ROUTER; an I/O thread owns them. It
 * greets every shard (HELLO), checks each JOIN (build version, model identity: a
 * mismatch is refused with both sides' values), checks the memory plan of every shard
 * against the memory its node offers (topology/topo_plan.h; over budget: refused with the
 * numbers), then sends LOAD with a new epoch and waits for every READY. Steps from the
 * scheduler go to every shard; the result is the logits of world rank 0 once every shard
 * has answered.
 *
 * Liveness: shards heartbeat every ~200 ms. A shard silent for heartbeat_timeout_ms, one
 * whose heartbeat shows another epoch (it restarted or left), or a step that fails on any
 * shard ends the step in flight with TDM_ERR_TRANSPORT naming the shard, and puts the
 * group back to forming: the executor keeps greeting every shard and re-forms the group
 * (new epoch, new data-plane world) as soon as all of them answer again, so restarting a
 * dead shard with the same command restores service without restarting the coordinator.
 * While the group is not ready, steps fail at once with the reason. Every re-formation
 * bumps xp_executor_t's generation counter (xp_remote_exec_generation), which tells the
 * scheduler that KV contents were lost.
 */
#ifndef XP_EXEC_REMOTE_H
#define XP_EXEC_REMOTE_H

#include "model/gguf.h"
#include "transport/xp_msg.h"
#include "transport/xp_step.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct xp_remote_params {
    const gguf_ctx_t *g;        /* the coordinator's copy of the model (identity, plan) */
    int n_shards;               /* >= 1                                               */
    const char *const *shards;  /* [n_shards] "HOST:PORT"; index = world rank        */
    int tp, ep;                 /* 0, 0: chosen (a model with experts: ep = n, else tp = n) */
    int n_batch_max;            /* most tokens per step                                 */
    int n_logits_max;           /* most tokens with logits per step                     */
    int n_ctx;                  /* positions per sequence                               */
    int block_tokens;           /* <= 0: 16                                             */
    uint64_t kv_bytes;          /* per-shard KV budget; 0: 4 x n_ctx tokens              */
    int proto;                  /* collectives: XP_MSG_PROTO_AM (UCX active messages),
                                   _RMA (UCX put + flag), _NCCL (the shards' GPUs; the
                                   coordinator makes each formation's NCCL id)          */
    int coll_timeout_ms;        /* <= 0: 15000                                          */
    int heartbeat_timeout_ms;   /* <= 0: 1500                                           */
    int start_timeout_ms;       /* how long create waits for the group; <= 0: 120000    */
    bool contiguous_experts;    /* the same expert range in every layer, instead of the
                                   plan's bytes-balanced per-layer ranges               */
    const char *cluster_secret; /* NULL/"": none; else shards must prove it at JOIN and
                                   are shown it in JOIN_ACK (transport/xp_auth.h)      */
    int n_state_store;          /* recurrent models: stored prefix states per shard;
                                   0: n_logits_max (one per running sequence), < 0: none */
    bool kv_export;             /* a decode group (disaggregated prefill): the shards
                                   register their KV storage for RMA (transport/kv_xfer.h) */
} xp_remote_params_t;

typedef struct xp_remote_exec xp_remote_exec_t;

/* Parses a --collective value, "am", "rma" or "nccl", into XP_MSG_PROTO_*. "nccl" in a
 * build without NCCL fails with TDM_ERR_UNSUPPORTED, saying so. */
tdm_status_t xp_collective_parse(const char *s, int *proto, tdm_error_t *err);

/*
 * Starts the I/O thread and waits until the group is ready (or a shard is refused, a
 * plan is over budget, a LOAD fails, or start_timeout_ms passes: each fails with the
 * message). On success fills *ex for the scheduler.
 */
tdm_status_t xp_remote_exec_create(const xp_remote_params_t *p, xp_remote_exec_t **out,
                                   xp_executor_t *ex, tdm_error_t *err);
/* Releases the shards (SHUTDOWN: they leave the group and wait for a coordinator). */
void xp_remote_exec_destroy(xp_remote_exec_t *x); /* NULL is fine */

/* Counts group formations; the scheduler compares it between steps. Any thread. */
uint64_t xp_remote_exec_generation(const xp_remote_exec_t *x);

typedef struct xp_shard_health {
    char name[128];    /* "HOST:PORT" as given                                        */
    const char *state; /* "ready", "missing", "joining", "loading", "refused", "failed" */
    char error[256];   /* why it is not ready ("" when ready)                         */
    uint64_t weight_bytes, resident_bytes;
    double seen_s_ago; /* seconds since its last message (< 0: never)                 */
} xp_shard_health_t;

typedef struct xp_group_health {
    bool ready;
    int tp, ep, n_shards;
    uint64_t generation;
    char error[512];           /* why the group is not ready */
    xp_shard_health_t *shards; /* [n_shards], owned by the caller's buffer */
} xp_group_health_t;

/* Snapshot for /health and /metrics; out->shards must hold n_shards entries. Any thread. */
void xp_remote_exec_health(xp_remote_exec_t *x, xp_group_health_t *out);
int xp_remote_exec_n_shards(const xp_remote_exec_t *x);

typedef struct xp_remote_stats {
    uint64_t steps, failed_steps, formations;
    uint64_t coll_calls, coll_bytes, coll_ns; /* summed over shards */
    uint64_t step_ns_shards;                  /* summed over shards */
    uint64_t step_ns;                         /* coordinator wall time in steps */
    /* disaggregated prefill, as the prefill group: logical KV blocks put into the decode
     * group's pool (each block: every layer's K and V), bytes (summed over shards) and
     * the shards' put + flush time (summed over shards) */
    uint64_t kv_blocks, kv_bytes, kv_ns;
} xp_remote_stats_t;
void xp_remote_exec_stats(xp_remote_exec_t *x, xp_remote_stats_t *out);

/*
 * Disaggregated prefill (docs/distributed.md). A decode group (kv_export) describes its
 * registered KV storage: the current formation's epoch and every shard's UCX address and
 * KV regions, as one malloc'd block (free() it); NULL while the group is not ready.
 * Any thread.
 */
xp_msg_kv_peer_t *xp_remote_exec_kv_peer(xp_remote_exec_t *x);

/* Makes x (a prefill group) put the K/V blocks its steps name (xp_step_t.kv_sends) into
 * decode's pool: the descriptor above travels beside the first such STEP of every formation
 * of either group. decode must outlive x's steps; call before the first step. A step with
 * sends while decode is not ready fails with TDM_ERR_TRANSPORT. */
void xp_remote_exec_set_kv_target(xp_remote_exec_t *x, xp_remote_exec_t *decode);

#endif
