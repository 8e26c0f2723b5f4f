/*
 * shard_server.h - `tandem shard`: one shard process of a distributed model.
 *
 * The process listens on a ZeroMQ ROUTER socket; a coordinator (one DEALER per shard)
 * dials it and drives it through the control plane of xp_msg.h:
 *
 *   coordinator                       shard
 *   HELLO(session)            ->
 *                             <-      JOIN(version, capabilities, model id, UCX address,
 *                                          node memory)
 *   JOIN_ACK / LOAD(epoch, partition, peers' UCX addresses, limits, expert ranges)  ->
 *                             <-      READY(epoch, KV blocks, slice bytes, resident bytes)
 *   STEP(id)                  ->      forward pass; collectives with the other shards over
 *                                     UCX (transport/ucx_comm.h), or NCCL on the shards'
 *                                     GPUs when LOAD's proto is nccl (transport/nccl_comm.h)
 *                             <-      RESULT(id; logits from world rank 0)
 *                             <-      HEARTBEAT every heartbeat_ms to the coordinator
 *   SHUTDOWN                  ->      leave the group (the process keeps running)
 *
 * Two threads: the control thread owns the socket (answers HELLO, forwards LOAD/STEP,
 * sends heartbeats even while a long step runs, so liveness never depends on step
 * length); the compute thread owns the model, the KV cache and the UCX worker. A LOAD
 * while a step is stuck (a peer died mid-collective) aborts the old data-plane world
 * first, so a coordinator can always re-form the group; so does, for an NCCL world, a
 * HELLO from the coordinator of that world (it greets only once the group broke). The
 * model file is mapped once at start (for the identity in JOIN); a LOAD binds this rank's
 * slice and touches its pages, so only the slice becomes resident. A later LOAD with the
 * same partition keeps it.
 */
#ifndef XP_SHARD_SERVER_H
#define XP_SHARD_SERVER_H

#include "common/status.h"

#include <stdint.h>

typedef struct xp_shard_params {
    const char *model_path;
    const char *listen;         /* "HOST:PORT" (PORT 0: any free port)           */
    int threads;                /* kernel threads; <= 0: one per CPU             */
    const char *ucx_tls;        /* UCX_TLS for the data plane; NULL: UCX's env   */
    const char *ucx_devices;    /* UCX_NET_DEVICES; NULL: UCX's env             */
    uint64_t node_memory;       /* bytes offered to the plan; 0: MemAvailable    */
    int heartbeat_ms;           /* <= 0: 200                                     */
    const char *device;         /* "auto" (NULL), "cpu", "cuda", "cuda:N"        */
    const char *kv_type;        /* NULL: f16 on a GPU, f32 on the CPU            */
    const char *cluster_secret; /* NULL/"": none; else coordinators must prove it
                                   (transport/xp_auth.h)                        */
} xp_shard_params_t;

typedef struct xp_shard_server xp_shard_server_t;

/* Opens the model, computes its identity, creates the UCX worker and binds the socket. */
tdm_status_t xp_shard_server_create(const xp_shard_params_t *p, xp_shard_server_t **out,
                                    tdm_error_t *err);

/* The bound endpoint, "tcp://HOST:PORT" (the real port when 0 was asked). */
const char *xp_shard_server_endpoint(const xp_shard_server_t *s);

/* Serves until xp_shard_server_stop(). */
tdm_status_t xp_shard_server_run(xp_shard_server_t *s, tdm_error_t *err);

/* Any thread: makes run() return within ~50 ms. */
void xp_shard_server_stop(xp_shard_server_t *s);

void xp_shard_server_destroy(xp_shard_server_t *s); /* NULL is fine */

#endif
