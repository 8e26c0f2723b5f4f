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
 *   1. one process calls xp_nccl_unique_id() (with `tandem serve --collective nccl` the
 *      coordinator, once per formation of the group); the 128 bytes hold the address of
 *      the bootstrap root, a thread NCCL starts in that process, so NCCL_SOCKET_IFNAME
 *      there must name an interface every rank can reach (on a DGX Spark the ConnectX-7
 *      netdev, not Wi-Fi or the 10 GbE port). The root waits until every rank has checked
 *      in and then exits; NCCL offers no way to cancel it, so an id whose world never
 *      forms leaves that thread and its socket behind: make an id only for a world whose
 *      ranks are all expected;
 *   2. the control plane ships those bytes to every rank;
 *   3. every rank calls xp_nccl_world_create() (or xp_nccl_world_new() then
 *      xp_nccl_world_connect(), so that another thread can abort the wait) with its own
 *      rank. It waits until every rank of the world has called it, then runs one 1-float
 *      all-reduce on each group, so connections are made here rather than in the first
 *      step and a world that returns TDM_OK has carried traffic.
 *
 * The communicators are NCCL's nonblocking kind (ncclConfig_t.blocking = 0): no NCCL call
 * blocks the thread, and every wait here (for the other ranks at creation, for a
 * collective to be enqueued and to finish) is a poll that an abort request or the
 * world's timeout ends. That is what makes a rank that never arrives, or a peer that
 * stops mid-collective, recoverable without restarting the process.
 *
 * The collectives take host f32 buffers, as the forward pass hands them over (pinned,
 * host-visible memory on a GPU backend: shd_comm_ops_t.device_memory is false); they are
 * staged through a device buffer (see nccl_comm.c for why). n may not exceed max_floats
 * (TDM_ERR_OUT_OF_RANGE, before any rank sends anything, so every rank of a consistent
 * world refuses together).
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
 * gone: TDM_ERR_TRANSPORT; no completion within timeout_ms: TDM_ERR_TIMEOUT) aborts the
 * world's communicators, and every later call returns the same status. NCCL reports a
 * dead peer only when its network transport notices (a closed socket at once, a silent
 * RoCE peer after NCCL_IB_TIMEOUT), so the control plane calls xp_nccl_world_abort()
 * when it knows sooner; a collective waiting then returns TDM_ERR_CANCELED.
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

typedef struct xp_nccl_world_params {
    int rank;             /* 0 <= rank < tp_size * ep_size                          */
    int tp_size, ep_size; /* world rank = ep_rank * tp_size + tp_rank               */
    const uint8_t *id;    /* XP_NCCL_ID_BYTES from xp_nccl_unique_id()               */
    int device;           /* the CUDA device this rank uses (one rank per GPU)       */
    int64_t max_floats;   /* the largest n any collective of this world is called
                             with (an all-gather then writes group size * n floats);
                             the device buffer holds tp_size * ep_size * max_floats   */
    int timeout_ms;       /* > 0: connecting, and each collective, gives up after this
                             long with TDM_ERR_TIMEOUT; <= 0: waits until aborted    */
} xp_nccl_world_params_t;

/*
 * Allocates this rank's world (its stream and device buffer) without any NCCL call, so the
 * caller can publish it for xp_nccl_world_abort() before the wait in connect. *out is set
 * only on success; destroy it when done.
 */
tdm_status_t xp_nccl_world_new(const xp_nccl_world_params_t *p, xp_nccl_world_t **out,
                               tdm_error_t *err);

/*
 * Joins the NCCL world: collective over the world (see above), once per world. On failure
 * (TDM_ERR_CANCELED when aborted, TDM_ERR_TIMEOUT, TDM_ERR_TRANSPORT, TDM_ERR_DEVICE) the
 * world is dead: every collective returns that status; destroy it.
 */
tdm_status_t xp_nccl_world_connect(xp_nccl_world_t *w, tdm_error_t *err);

/* xp_nccl_world_new() + xp_nccl_world_connect() with no timeout; *out only on success. */
tdm_status_t xp_nccl_world_create(int rank, int tp_size, int ep_size,
                                  const uint8_t id[XP_NCCL_ID_BYTES], int device,
                                  int64_t max_floats, xp_nccl_world_t **out, tdm_error_t *err);

/* This rank's handle; valid while w lives. */
shd_comm_t xp_nccl_world_comm(xp_nccl_world_t *w);

/* ncclCommAbort on every communicator (now, or as soon as the collective in flight
 * notices: it polls); that collective and every later one return TDM_ERR_CANCELED. */
void xp_nccl_world_abort(xp_nccl_world_t *w);

typedef struct xp_nccl_stats {
    uint64_t n_calls;           /* collectives called (groups of one included)            */
    uint64_t n_exchanges;       /* of those, calls whose group had other ranks            */
    uint64_t bytes_sent;        /* payload bytes this rank handed to NCCL (what NCCL puts
                                   on the wire depends on its algorithm)                  */
    uint64_t ns_in_collectives; /* wall time inside the collective calls                   */
} xp_nccl_stats_t;

/* Counters of this rank's collectives; the thread that calls the collectives reads them. */
void xp_nccl_world_stats(const xp_nccl_world_t *w, xp_nccl_stats_t *out);

/* NULL is fine. A healthy world is finalized, which waits (at most timeout_ms, else 10 s)
 * until every rank is quiescent: when a peer may be gone, call xp_nccl_world_abort()
 * first. */
void xp_nccl_world_destroy(xp_nccl_world_t *w);

#ifdef __cplusplus
}
#endif

#endif
