/*
 * ucx_internal.h - what transport/ucx_comm.c and `tandem linkbench` share beneath the public
 * ucx_ctx.h: the context's fields, peers (endpoints whose failure is recorded), request
 * helpers, a control mailbox and registered regions for RMA. Not an API for other layers.
 *
 * Everything here runs on the worker's one thread. Requests are polled, never given a
 * callback: ucp_request_free() on a running request would silence its callback, and a
 * polled request has no such trap. Active-message ids are fixed per purpose (XP_UCX_AM_*)
 * and always have a handler (a dropping one when nobody listens), so a late message of a
 * finished exchange never reaches UCX's "no registered callback" warning.
 */
#ifndef TDM_XP_UCX_INTERNAL_H
#define TDM_XP_UCX_INTERNAL_H

#include "transport/ucx_ctx.h"

#include <stdbool.h>
#include <stdint.h>
#include <ucp/api/ucp.h>

enum {
    XP_UCX_AM_CTRL = 0,  /* control messages, queued in the context's mailbox */
    XP_UCX_AM_WORLD = 1, /* collective payloads (ucx_comm.c)                   */
    XP_UCX_AM_BENCH = 2, /* linkbench payloads                                 */
    XP_UCX_AM_COUNT
};

/* Header of every control message. Control messages are small and always eager. */
typedef struct xp_ucx_ctrl_hdr {
    uint64_t epoch; /* whose exchange: a world's epoch, or a tool's session id */
    uint32_t type;  /* the exchange's own message type                         */
    int32_t src;    /* sender's rank                                           */
    uint64_t seq;   /* the exchange's own counter                              */
} xp_ucx_ctrl_hdr_t;

#define XP_UCX_CTRL_MAX_DATA 4096 /* bytes after the header; larger ones are dropped */
#define XP_UCX_MBOX_MAX      4096 /* messages held; the oldest go first beyond this */

typedef struct xp_ucx_msg {
    struct xp_ucx_msg *next;
    xp_ucx_ctrl_hdr_t hdr;
    size_t len;
    unsigned char data[]; /* len bytes */
} xp_ucx_msg_t;

struct xp_ucx {
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_address_t *addr;
    size_t addr_len;
    /* Control messages arrive whenever the worker progresses, also before the exchange
     * that wants them has started (a peer may be faster): they wait here. */
    xp_ucx_msg_t *mbox_head, *mbox_tail;
    int mbox_n;
    bool world_attached; /* XP_UCX_AM_WORLD is taken by a live world */
    /* Control sends that failed while UCX still held them: their buffers are freed once
     * UCX lets go (or with the worker). */
    struct xp_ucx_orphan *orphans;
};

/* One step of a busy-wait: progress the worker; after XP_UCX_SPINS_BEFORE_YIELD calls in a
 * row that found nothing, also sched_yield() on each. *idle counts those calls (start it
 * at 0 per wait). On a host with more busy ranks than cores the rank being waited for
 * needs this CPU (on a 2-vCPU VM, p99 latencies fall from milliseconds - whole scheduler
 * ticks - to microseconds); on an idle core the yield returns at once. */
#define XP_UCX_SPINS_BEFORE_YIELD 256
void xp_ucx_poll(xp_ucx_t *u, unsigned *idle);

/* An endpoint to another rank. status turns non-OK when UCX reports the peer failed. */
typedef struct xp_ucx_peer {
    ucp_ep_h ep;
    int rank;
    ucs_status_t status;
} xp_ucx_peer_t;

/* Connects to the worker address addr (PEER error mode); nothing is sent yet. */
tdm_status_t xp_ucx_peer_connect(xp_ucx_t *u, xp_ucx_peer_t *p, int rank, const void *addr,
                                 size_t len, tdm_error_t *err);

/* Closes n endpoints together: flushing those whose peer is healthy, forcing the others
 * (and all of them when force is set), waiting at most timeout_ms in all. NULL eps are
 * skipped. */
void xp_ucx_peers_close(xp_ucx_t *u, xp_ucx_peer_t *peers, int n, bool force, int timeout_ms);

/* Installs cb for active-message id (whole messages only); cb NULL installs a handler
 * that drops everything. */
tdm_status_t xp_ucx_set_am_handler(xp_ucx_t *u, unsigned id, ucp_am_recv_callback_t cb, void *arg,
                                   tdm_error_t *err);

/* Posts an active message (header and data must stay valid until the request completes:
 * UCX 1.13 has no UCP_AM_SEND_FLAG_COPY_HEADER). *req is NULL when it completed at once.
 * flags: UCP_AM_SEND_FLAG_* or 0. */
tdm_status_t xp_ucx_am_post(xp_ucx_t *u, xp_ucx_peer_t *p, unsigned id, const void *hdr,
                            size_t hdr_len, const void *data, size_t len, uint32_t flags,
                            void **req, tdm_error_t *err);

/* Posts a put of len bytes to the peer's raddr; memh (may be NULL) is src's registration. */
tdm_status_t xp_ucx_put_post(xp_ucx_t *u, xp_ucx_peer_t *p, const void *src, size_t len,
                             uint64_t raddr, ucp_rkey_h rkey, void **req, tdm_error_t *err);

/* Posts a flush of the endpoint (every put before it is visible at the peer when done). */
tdm_status_t xp_ucx_flush_post(xp_ucx_t *u, xp_ucx_peer_t *p, void **req, tdm_error_t *err);

/* Returns UCS_INPROGRESS, or the request's final status after freeing it and clearing
 * *req (UCS_OK for a NULL *req). */
ucs_status_t xp_ucx_req_test(void **req);

/* Progresses until *req completes, the deadline (tdm_now_s() clock) passes or the peer
 * fails. Errors name the peer and what (e.g. "linkbench: put to rank 1"). */
tdm_status_t xp_ucx_req_wait(xp_ucx_t *u, void **req, const xp_ucx_peer_t *p, double deadline,
                             const char *what, tdm_error_t *err);

/* Sends one control message and waits for its local completion (bounded by deadline). */
tdm_status_t xp_ucx_ctrl_send(xp_ucx_t *u, xp_ucx_peer_t *p, const xp_ucx_ctrl_hdr_t *hdr,
                              const void *data, size_t len, double deadline, const char *what,
                              tdm_error_t *err);

/* Takes the oldest queued control message matching (epoch, type, src), or NULL; the
 * caller frees it with free(). Does not progress the worker. */
xp_ucx_msg_t *xp_ucx_ctrl_take(xp_ucx_t *u, uint64_t epoch, uint32_t type, int src);

/* Waits (progressing) for a control message matching (epoch, type, src) from peer p. */
tdm_status_t xp_ucx_ctrl_wait(xp_ucx_t *u, const xp_ucx_peer_t *p, uint64_t epoch, uint32_t type,
                              double deadline, const char *what, xp_ucx_msg_t **out,
                              tdm_error_t *err);

/* Drops every queued control message of epoch. */
void xp_ucx_ctrl_drop(xp_ucx_t *u, uint64_t epoch);

/* A region allocated and registered by UCX (shared memory where a shm transport is on, so
 * a peer on the same host writes it directly), with its packed rkey. */
typedef struct xp_ucx_region {
    ucp_mem_h memh;
    void *base;
    size_t len;
    void *rkey;
    size_t rkey_len;
} xp_ucx_region_t;

tdm_status_t xp_ucx_region_alloc(xp_ucx_t *u, size_t len, xp_ucx_region_t *r, tdm_error_t *err);
void xp_ucx_region_free(xp_ucx_t *u, xp_ucx_region_t *r); /* zeroed region ok */

tdm_status_t xp_ucx_rkey_unpack(xp_ucx_peer_t *p, const void *buf, size_t len, ucp_rkey_h *out,
                                tdm_error_t *err);

#endif
