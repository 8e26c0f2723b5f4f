/*
 * nccl_comm.h - shd_comm_t over NCCL: one process per rank, one GPU per process.
 * Compiled only when CMake found CUDA and NCCL (TANDEM_HAVE_NCCL, cmake/TandemCuda.cmake).
 *
 * A world of tp_size * ep_size ranks (world rank = ep_rank * tp_size + tp_rank, as in
 * shard/shd_comm.h) shares one NCCL communicator; the TP group (same ep_rank) and the EP
 * group (same tp_rank) are split from it with ncclCommSplit (NCCL >= 2.18; older NCCL
 * spreads one extra unique id per group over the world communicator instead). A group
 * that is the rank alone (tp 1 or ep 1) makes no NCCL call at all.
 *
 * Setting up, in order:
 *   1. rank 0 calls xp_nccl_unique_id(); the 128 bytes hold rank 0's bootstrap socket
 *      address, so NCCL_SOCKET_IFNAME must name the interface the other ranks can reach
 *      (on a DGX Spark the ConnectX-7 netdev, not Wi-Fi or the 10 GbE port);
 *   2. the control plane ships those bytes to every rank;
 *   3. every rank calls xp_nccl_world_create() with its own rank. It blocks until every
 *      rank of the world has called it (a rank that never comes leaves the others
 *      waiting in NCCL's bootstrap: start it only after every shard has joined), then
 *      runs one 1-float all-reduce on each group, so connections are made here rather
 *      than in the first step and a world that returns TDM_OK has carried traffic.
 *
 * The collectives take host f32 buffers, as the forward pass (on the CPU today) hands
 * them over; they are staged through a device buffer (see nccl_comm.c for why). n may
 * not exceed max_floats (TDM_ERR_OUT_OF_RANGE, before any rank sends anything, so every
 * rank of a consistent world refuses together).
 *
 * Numerics: unlike transport/local_comm.c, the order in which NCCL adds the ranks'
 * contributions is NCCL's (ring or tree, chunked over channels; it depends on the rank
 * count, the message size, NCCL_ALGO / NCCL_PROTO and the NCCL version), so the sum is
 * not guaranteed bit-identical to local_comm's ascending-rank sum; expect differences
 * in the last bits (tests compare within 1e-6 relative). With ring and tree each element
 * is reduced once and the result forwarded, so the ranks of a group get the same bits,
 * but NCCL does not document that as a guarantee.
 *
 * Threads: one thread at a time calls the collectives of a world (the rank's step
 * thread; it need not be the creating thread). xp_nccl_world_abort() may be called from
 * any other thread at any time before destroy.
 *
 * Failure: a collective that fails (CUDA error: TDM_ERR_DEVICE; NCCL error, e.g. a peer
 * gone: TDM_ERR_TRANSPORT) aborts the world's communicators, and every later call
 * returns the same status. NCCL reports a dead peer only when its network transport
 * times out (NCCL_IB_TIMEOUT, seconds), so the control plane's heartbeat should call
 * xp_nccl_world_abort() sooner; a collective waiting then returns TDM_ERR_CANCELED.
 */
#ifndef TDM_XP_NCCL_COMM_H
#define TDM_XP_NCCL_COMM_H

#include "shard/shd_comm.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XP_NCCL_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

typedef struct xp_nccl_world xp_nccl_world_t;

/* Rank 0 makes the id; the caller ships the 128 bytes to every rank (the control plane
 * does). */
tdm_status_t xp_nccl_unique_id(uint8_t out[XP_NCCL_ID_BYTES], tdm_error_t *err);

/*
 * Joins the world as `rank` (0 <= rank < tp_size * ep_size) on CUDA device `device`;
 * collective over the world (see above). max_floats is the largest n any collective of
 * this world will be called with (an all-gather then writes group size * n floats); the
 * device buffer holds tp_size * ep_size * max_floats floats.
 */
tdm_status_t xp_nccl_world_create(int rank, int tp_size, int ep_size,
                                  const uint8_t id[XP_NCCL_ID_BYTES], int device,
                                  int64_t max_floats, xp_nccl_world_t **out, tdm_error_t *err);

/* This rank's handle; valid while w lives. */
shd_comm_t xp_nccl_world_comm(xp_nccl_world_t *w);

/* ncclCommAbort on every communicator (now, or as soon as the collective in flight
 * notices: it polls); that collective and every later one return TDM_ERR_CANCELED. */
void xp_nccl_world_abort(xp_nccl_world_t *w);

/* NULL is fine. A healthy world is finalized, which waits until every rank is quiescent:
 * when a peer may be gone, call xp_nccl_world_abort() first. */
void xp_nccl_world_destroy(xp_nccl_world_t *w);

#ifdef __cplusplus
}
#endif

#endif
