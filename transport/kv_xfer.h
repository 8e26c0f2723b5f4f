/*
 * kv_xfer.h - disaggregated prefill's data plane: a decode shard's KV storage registered
 * for UCX RMA (the export), and a prefill shard putting K/V blocks into it (the sender).
 *
 * A decode group's shard registers every layer's K and V storage with its UCX context at
 * LOAD (xp_msg_load_t.kv_export) and lists the regions (base, length, unit, packed rkey) in
 * READY; a recurrent layer (Gated DeltaNet) registers its conv and delta-rule states of
 * every slot instead. The coordinator hands them, with the decode shards' worker
 * addresses, to the prefill group beside a STEP (xp_msg_kv_peer_t); each prefill shard
 * connects to the decode shard of its own world rank (equal TP/EP layouts and KV types:
 * the same heads, the same block and slot bytes) and, after a step's forward pass, puts
 * the blocks the step names (xp_step_kv_send_t) layer by layer, and the recurrent state of
 * a sequence whose prompt the step finished into the slot named there, then flushes: when
 * the RESULT leaves, the K/V and states are in the decode shard's memory.
 *
 * On the CPU backend the storage is ordinary host memory; registering it pins it for a
 * NIC (docs/distributed.md: on a Spark there is no GPUDirect RDMA, so a GPU shard's pool
 * would have to live in pinned host memory; such shards are not supported yet).
 * Compute thread only (the UCX worker is single-threaded).
 */
#ifndef TDM_XP_KV_XFER_H
#define TDM_XP_KV_XFER_H

#include "common/status.h"
#include "shard/kv_cache.h"
#include "transport/ucx_ctx.h"
#include "transport/xp_msg.h"

#include <stdint.h>

typedef struct xp_kv_export xp_kv_export_t;

/* Registers kv's K and V storage of every layer (2 x n_layer regions, empty ones for layers
 * without K/V). The regions stay valid until destroy; kv must outlive the export. */
tdm_status_t xp_kv_export_create(xp_ucx_t *u, shd_kv_cache_t *kv, xp_kv_export_t **out,
                                 tdm_error_t *err);
void xp_kv_export_destroy(xp_kv_export_t *x); /* NULL is fine */
/* The regions for READY (pointers into x). */
const xp_msg_kv_region_t *xp_kv_export_regions(const xp_kv_export_t *x, int32_t *n);
/* Progresses the worker. Over RDMA or shared memory a put lands without the target doing
 * anything, but UCX over TCP emulates RMA with messages the target's worker must handle:
 * an idle decode shard calls this while it waits for work (shard_server.c), or the
 * prefill shards' flushes never complete. Compute thread only. */
void xp_kv_export_progress(xp_kv_export_t *x);

typedef struct xp_kv_sender xp_kv_sender_t;

typedef struct xp_kv_sender_stats {
    uint64_t blocks, bytes; /* put, summed over layers and K/V (blocks: per layer and K/V;
                               bytes: with the recurrent states)                         */
    uint64_t ns;            /* time spent posting, progressing and flushing (the compute
                               the puts overlap is not counted)                        */
} xp_kv_sender_stats_t;

tdm_status_t xp_kv_sender_create(xp_ucx_t *u, xp_kv_sender_t **out, tdm_error_t *err);
void xp_kv_sender_destroy(xp_kv_sender_t *s); /* NULL is fine */

/* The decode shard to put into (rank: this shard's world rank in peer). A peer of the same
 * epoch as the current one is kept; another replaces it (new endpoint, new keys). */
tdm_status_t xp_kv_sender_set_peer(xp_kv_sender_t *s, const xp_msg_kv_peer_t *peer, int rank,
                                   tdm_error_t *err);

/*
 * One step's kv_sends from kv (this shard's storage) into the peer's pool, overlapped with
 * the forward pass: begin before it, put_layer as each layer's K/V is stored (the forward
 * pass's layer hook, shard/shd_model.h), finish after it: flushes and waits (at most
 * timeout_s from then) when st is OK, else only drains what was posted, and
 * returns st or the transfer's failure. Nothing to do (all OK) for a step without sends.
 * TDM_ERR_TRANSPORT without a peer, on a layout that does not match (region count or
 * sizes) or a failed peer; TDM_ERR_TIMEOUT.
 */
tdm_status_t xp_kv_sender_begin(xp_kv_sender_t *s, shd_kv_cache_t *kv, const xp_step_t *step,
                                double timeout_s, tdm_error_t *err);
tdm_status_t xp_kv_sender_put_layer(xp_kv_sender_t *s, int il, tdm_error_t *err);
tdm_status_t xp_kv_sender_finish(xp_kv_sender_t *s, tdm_status_t st, xp_kv_sender_stats_t *stats,
                                 tdm_error_t *err);
/* begin, every layer, finish: the step's blocks after its forward pass. */
tdm_status_t xp_kv_sender_send(xp_kv_sender_t *s, shd_kv_cache_t *kv, const xp_step_t *step,
                               double timeout_s, xp_kv_sender_stats_t *stats, tdm_error_t *err);

#endif
