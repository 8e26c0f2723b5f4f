/*
 * ucx_comm.h - shd_comm_t over UCX between processes: the shard data plane.
 *
 * A world is tp_size * ep_size ranks, one process (one xp_ucx_t) each, world rank =
 * ep_rank * tp_size + tp_rank as in shard/shd_comm.h, whose contract this implements to the
 * bit: all_reduce_sum_f32 leaves on every member of the caller's group the sum added in
 * ascending rank order starting from the lowest rank's values, exactly as
 * transport/local_comm.c computes it; all_gather_f32 places member i's n floats at out+i*n.
 *
 * Algorithms. Up to oneshot_max_bytes, one shot: every member sends its whole buffer to
 * every other member and each sums all of them. Above, reduce-scatter + all-gather: chunk j
 * of the buffer is owned by member j, which alone sums it (still in ascending rank order,
 * so the result does not depend on the algorithm) and sends the sum to the others.
 *
 * Protocols. AM: payloads are active messages, received straight into per-sender slots
 * (rendezvous for large ones). RMA: ucp_put_nbx of the payload into the peer's slot,
 * ucp_worker_fence, then a put of the 8-byte call sequence number into the peer's flag
 * for (sender, slot, phase); the receiver polls its flags. (A payload put that UCX did not
 * finish inside ucp_put_nbx is waited for before the fence: UCX 1.13's fence does not order
 * puts still queued in UCP.) Slots are double-buffered by the parity of the number of
 * calls the two ranks have shared, which is enough: a rank can be at most one shared call
 * ahead of a peer, because finishing a call needs the peer's data. (The parity of the
 * global call number is not: with TP and EP calls interleaved, a peer's next call shared
 * with this rank can be two global calls later.) Memory: 2 x world slots of max_floats
 * floats are registered per rank, plus one send buffer.
 *
 * Failure detection: over TCP a dead peer's endpoint fails within milliseconds; over
 * shared memory UCX notices only by its keepalive (UCX_KEEPALIVE_INTERVAL, 20 s by
 * default), so a dead peer there surfaces as TDM_ERR_TIMEOUT.
 *
 * Waiting busy-polls the worker (on a loaded host it yields the CPU after a while) and
 * gives up on abort (TDM_ERR_CANCELED), a failed peer endpoint (TDM_ERR_TRANSPORT, "rank R
 * (peer) failed: ...") or the deadline (TDM_ERR_TIMEOUT, "... no data from rank R after X
 * ms"). After a failed call the world is unusable: later calls fail at once with the same
 * status and message. Payloads are staged through a registered send buffer, so nothing UCX
 * still holds after a failed call points into caller memory.
 *
 * Threads: every call but xp_ucx_world_abort() on the thread that owns the xp_ucx_t.
 * One world per xp_ucx_t at a time (TDM_ERR_BUSY otherwise).
 */
#ifndef TDM_XP_UCX_COMM_H
#define TDM_XP_UCX_COMM_H

#include "shard/shd_comm.h"
#include "transport/ucx_ctx.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum xp_ucx_proto {
    XP_UCX_PROTO_AM = 0, /* payloads in active messages                         */
    XP_UCX_PROTO_RMA,    /* put payload, fence, put 8-byte sequence flag        */
} xp_ucx_proto_t;

typedef struct xp_ucx_world_params {
    int rank, tp_size, ep_size;   /* world rank = ep_rank * tp_size + tp_rank            */
    const void *const *peer_addr; /* [world] every rank's worker address (own ignored)  */
    const size_t *peer_addr_len;  /* [world]                                            */
    uint64_t epoch;               /* tells this world from earlier ones on the worker:
                                     messages of other epochs are dropped              */
    int64_t max_floats;           /* largest n of any call (all_gather: n per rank)     */
    int64_t oneshot_max_bytes;    /* <= this: one shot; above: reduce-scatter +
                                     all-gather (0: 64 KiB)                            */
    int timeout_ms;               /* wireup, or one call, waiting longer fails with
                                     TDM_ERR_TIMEOUT (0: 10000)                         */
    xp_ucx_proto_t proto;
} xp_ucx_world_params_t;

typedef struct xp_ucx_world xp_ucx_world_t;

typedef struct xp_ucx_stats {
    uint64_t n_calls;           /* collectives called (groups of one included)   */
    uint64_t n_exchanges;       /* of those, calls whose group had other ranks   */
    uint64_t bytes_sent;        /* payload bytes this rank sent                  */
    uint64_t ns_in_collectives; /* wall time inside the collective calls          */
} xp_ucx_stats_t;

/* Connects to every other rank, exchanges the RMA keys and waits until every rank is
 * wired (a barrier), all within timeout_ms. Every rank calls it with the same tp/ep sizes,
 * epoch, max_floats, oneshot_max_bytes and proto. */
tdm_status_t xp_ucx_world_create(xp_ucx_t *u, const xp_ucx_world_params_t *p, xp_ucx_world_t **out,
                                 tdm_error_t *err);

/* This rank's handle (valid while w lives). */
shd_comm_t xp_ucx_world_comm(xp_ucx_world_t *w);

/* From ANY thread: the pending call (if any) and every later one return TDM_ERR_CANCELED. */
void xp_ucx_world_abort(xp_ucx_world_t *w);

void xp_ucx_world_stats(const xp_ucx_world_t *w, xp_ucx_stats_t *out);
void xp_ucx_world_stats_reset(xp_ucx_world_t *w);

/* Closes the endpoints (by force when the world failed) and frees w. NULL ok. */
void xp_ucx_world_destroy(xp_ucx_world_t *w);

#ifdef __cplusplus
}
#endif

#endif
