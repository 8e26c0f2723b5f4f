/* ucx_comm.c - shd_comm_t over UCX between processes (see ucx_comm.h). */
#include "transport/ucx_comm.h"

#include "common/check.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/mem.h"
#include "transport/ucx_internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WL_MAX_WORLD       1024
#define WL_DEFAULT_ONESHOT (64 * 1024)
#define WL_DEFAULT_TIMEOUT 10000

/* What a payload is: the one-shot buffer (or an all-gather part), a reduce-scatter chunk
 * sent to its owner, or an owner's reduced chunk. One message per (sender, call, phase). */
enum { PH_FULL = 0, PH_RS, PH_AG, N_PHASES };

/* Control message types of the wireup (xp_ucx_ctrl_hdr_t.type). */
enum { CTRL_INFO = 1, CTRL_BARRIER = 2 };

/* The header of an AM payload; it lands at slot(parity, src) + offset. */
typedef struct wl_hdr {
    uint64_t epoch;
    uint64_t seq;
    uint64_t offset;
    int32_t src;
    uint8_t phase;
    uint8_t parity;
    uint8_t pad[2];
} wl_hdr_t;

/* What a rank tells the others at wireup: its receive region and the parameters that
 * every rank must agree on. Followed by the packed rkey. */
typedef struct wl_info {
    uint64_t base, len;
    int64_t max_floats, oneshot_max;
    int32_t tp, ep, proto, pad;
} wl_info_t;

typedef struct wl_rndv {
    xp_ucx_world_t *w;
    int idx; /* into arrived / rndv_seq */
} wl_rndv_t;

struct xp_ucx_world {
    xp_ucx_t *u;
    int rank, tp, ep, size;
    uint64_t epoch;
    int64_t max_floats;
    size_t slot_bytes;  /* one slot: max_floats floats, rounded up to 64 bytes */
    size_t oneshot_max; /* bytes */
    int timeout_ms;
    xp_ucx_proto_t proto;
    xp_ucx_peer_t *peers; /* [size]; own entry unused */

    /* Receive region: flags [2][size][N_PHASES] (RMA), then slots [2][size]. */
    xp_ucx_region_t recv;
    size_t flags_bytes;
    /* Send region: the staged payload (slot_bytes), then flag sources [size][N_PHASES]. */
    xp_ucx_region_t send;
    uint64_t *remote_base; /* [size] base of each rank's receive region */
    ucp_rkey_h *rkeys;     /* [size] */

    wl_hdr_t *hdrs;      /* [size][N_PHASES] headers of in-flight AM sends */
    uint64_t *arrived;   /* [size][2][N_PHASES] AM: seq of the last payload landed */
    uint64_t *rndv_seq;  /* same shape: seq of a rendezvous receive in flight */
    wl_rndv_t *rndv_ctx; /* same shape */
    int rndv_inflight;

    uint32_t *shared; /* [size] calls with messages shared with each rank */
    uint8_t *par;     /* [size] slot parity of the current call, per rank */
    int *members;     /* [size] scratch: the current group, ascending */
    void **reqs;      /* send requests of the current call */
    int *req_peer;
    int n_reqs, cap_reqs;

    uint64_t seq; /* calls so far, this one included: the same on every rank */
    atomic_bool aborted;
    tdm_status_t failed;
    char failed_msg[TDM_ERROR_MSG_MAX];
    xp_ucx_stats_t stats;
};

/* One collective call in progress. */
typedef struct wl_call {
    const char *op;
    shd_group_t g;
    size_t bytes;
    double t0, deadline;
    int count, me; /* group size, my index in w->members */
} wl_call_t;

static const char *group_name(shd_group_t g)
{
    switch (g) {
    case SHD_GROUP_TP:
        return "TP";
    case SHD_GROUP_EP:
        return "EP";
    default:
        return "WORLD";
    }
}

static size_t round64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

static unsigned char *slot(xp_ucx_world_t *w, int parity, int src)
{
    return (unsigned char *)w->recv.base + w->flags_bytes +
           ((size_t)parity * (size_t)w->size + (size_t)src) * w->slot_bytes;
}

static size_t flag_index(const xp_ucx_world_t *w, int parity, int src, int phase)
{
    return ((size_t)parity * (size_t)w->size + (size_t)src) * N_PHASES + (size_t)phase;
}

static size_t arr_index(int src, int parity, int phase)
{
    return ((size_t)src * 2 + (size_t)parity) * N_PHASES + (size_t)phase;
}

/* Records the world's failure (first one wins) and returns it through err. */
static tdm_status_t __attribute__((format(printf, 4, 5)))
fail(xp_ucx_world_t *w, tdm_error_t *err, tdm_status_t st, const char *fmt, ...)
{
    if (w->failed == TDM_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->failed_msg, sizeof(w->failed_msg), fmt, ap);
        va_end(ap);
        w->failed = st;
    }
    return tdm_error_set(err, w->failed, "%s", w->failed_msg);
}

/* ---- receiving ----------------------------------------------------------------------- */

static void on_rndv_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    wl_rndv_t *r = user_data;
    xp_ucx_world_t *w = r->w;
    w->rndv_inflight--;
    if (status == UCS_OK) {
        w->arrived[r->idx] = w->rndv_seq[r->idx];
    } else {
        xp_ucx_peer_t *p = &w->peers[r->idx / (2 * N_PHASES)];
        if (p->status == UCS_OK) {
            p->status = status;
        }
    }
    ucp_request_free(request);
}

/* AM payloads: straight into the sender's slot. Runs inside ucp_worker_progress. */
static ucs_status_t on_data(void *arg, const void *header, size_t header_length, void *data,
                            size_t length, const ucp_am_recv_param_t *param)
{
    xp_ucx_world_t *w = arg;
    wl_hdr_t h;
    if (header_length != sizeof(h)) {
        return UCS_OK;
    }
    memcpy(&h, header, sizeof(h));
    if (h.epoch != w->epoch) {
        return UCS_OK; /* an earlier world's straggler */
    }
    if (h.src < 0 || h.src >= w->size || h.src == w->rank || h.phase >= N_PHASES || h.parity > 1 ||
        h.offset > w->slot_bytes || length > w->slot_bytes - h.offset) {
        TDM_WARN("ucx", "world %llu: dropping a malformed payload (src %d, %zu bytes at %llu)",
                 (unsigned long long)w->epoch, (int)h.src, length, (unsigned long long)h.offset);
        return UCS_OK;
    }
    unsigned char *dst = slot(w, h.parity, h.src) + h.offset;
    const size_t idx = arr_index(h.src, h.parity, h.phase);
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        w->rndv_seq[idx] = h.seq;
        ucp_request_param_t rp = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                            UCP_OP_ATTR_FIELD_MEMORY_TYPE,
            .cb.recv_am = on_rndv_done,
            .user_data = &w->rndv_ctx[idx],
            .memory_type = UCS_MEMORY_TYPE_HOST,
        };
        void *r = ucp_am_recv_data_nbx(w->u->worker, data, dst, length, &rp);
        if (r == NULL) {
            w->arrived[idx] = h.seq;
        } else if (UCS_PTR_IS_ERR(r)) {
            if (w->peers[h.src].status == UCS_OK) {
                w->peers[h.src].status = UCS_PTR_STATUS(r);
            }
        } else {
            w->rndv_inflight++;
        }
        return UCS_OK;
    }
    memcpy(dst, data, length);
    w->arrived[idx] = h.seq;
    return UCS_OK;
}

static bool landed(xp_ucx_world_t *w, int src, int phase)
{
    const int parity = w->par[src];
    if (w->proto == XP_UCX_PROTO_RMA) {
        const uint64_t *flags = w->recv.base;
        /* Acquire: the payload the peer put before its flag is visible after it. */
        return __atomic_load_n(&flags[flag_index(w, parity, src, phase)], __ATOMIC_ACQUIRE) ==
               w->seq;
    }
    return w->arrived[arr_index(src, parity, phase)] == w->seq;
}

/* Abort, a failed peer among those listed as still needed, or the deadline. */
static tdm_status_t check_call(xp_ucx_world_t *w, const wl_call_t *c, int needed, tdm_error_t *err)
{
    if (atomic_load_explicit(&w->aborted, memory_order_relaxed)) {
        return fail(w, err, TDM_ERR_CANCELED, "%s (group %s, %zu bytes): the world was aborted",
                    c->op, group_name(c->g), c->bytes);
    }
    const xp_ucx_peer_t *p = &w->peers[needed];
    if (p->status != UCS_OK) {
        return fail(w, err, TDM_ERR_TRANSPORT,
                    "%s (group %s, %zu bytes): rank %d (peer) failed: %s", c->op, group_name(c->g),
                    c->bytes, needed, ucs_status_string(p->status));
    }
    return TDM_OK;
}

/* Waits until every other group member's payload of this phase has landed. */
static tdm_status_t wait_phase(xp_ucx_world_t *w, const wl_call_t *c, int phase, tdm_error_t *err)
{
    unsigned idle = 0;
    for (;;) {
        int missing = -1;
        for (int i = 0; i < c->count; i++) {
            const int m = w->members[i];
            if (i == c->me || landed(w, m, phase)) {
                continue;
            }
            TDM_CHECK(check_call(w, c, m, err));
            if (missing < 0) {
                missing = m;
            }
        }
        if (missing < 0) {
            return TDM_OK;
        }
        if (tdm_now_s() > c->deadline) {
            return fail(w, err, TDM_ERR_TIMEOUT,
                        "%s (group %s, %zu bytes): no data from rank %d after %d ms", c->op,
                        group_name(c->g), c->bytes, missing, w->timeout_ms);
        }
        xp_ucx_poll(w->u, &idle);
    }
}

/* ---- sending ------------------------------------------------------------------------- */

static void track(xp_ucx_world_t *w, void *req, int peer)
{
    if (req == NULL) {
        return;
    }
    if (w->n_reqs == w->cap_reqs) {
        w->cap_reqs = w->cap_reqs * 2 + 8;
        w->reqs = tdm_xrealloc(w->reqs, (size_t)w->cap_reqs * sizeof(*w->reqs));
        w->req_peer = tdm_xrealloc(w->req_peer, (size_t)w->cap_reqs * sizeof(*w->req_peer));
    }
    w->reqs[w->n_reqs] = req;
    w->req_peer[w->n_reqs] = peer;
    w->n_reqs++;
}

static tdm_status_t post_failed(xp_ucx_world_t *w, const wl_call_t *c, int peer, tdm_error_t *e)
{
    return fail(w, NULL, TDM_ERR_TRANSPORT, "%s (group %s, %zu bytes): %s", c->op, group_name(c->g),
                c->bytes, tdm_error_msg(e));
}

/* Sends send-buffer bytes [off, off + len) to peer's slot at the same parity, at doff. */
static tdm_status_t send_payload(xp_ucx_world_t *w, const wl_call_t *c, int peer, int phase,
                                 size_t off, size_t len, size_t doff, tdm_error_t *err)
{
    tdm_error_t e = {0};
    void *req = NULL;
    const unsigned char *src = (const unsigned char *)w->send.base + off;
    tdm_status_t st = TDM_OK;
    if (w->proto == XP_UCX_PROTO_AM) {
        wl_hdr_t *h = &w->hdrs[(size_t)peer * N_PHASES + (size_t)phase];
        *h = (wl_hdr_t){.epoch = w->epoch,
                        .seq = w->seq,
                        .offset = doff,
                        .src = w->rank,
                        .phase = (uint8_t)phase,
                        .parity = w->par[peer]};
        st = xp_ucx_am_post(w->u, &w->peers[peer], XP_UCX_AM_WORLD, h, sizeof(*h), src, len, 0,
                            &req, &e);
    } else if (len > 0) {
        const uint64_t raddr =
            w->remote_base[peer] + w->flags_bytes +
            ((uint64_t)w->par[peer] * (uint64_t)w->size + (uint64_t)w->rank) * w->slot_bytes + doff;
        st = xp_ucx_put_post(w->u, &w->peers[peer], src, len, raddr, w->rkeys[peer], &req, &e);
    }
    if (st != TDM_OK) {
        st = post_failed(w, c, peer, &e);
        return tdm_error_set(err, st, "%s", w->failed_msg);
    }
    track(w, req, peer);
    w->stats.bytes_sent += len;
    return TDM_OK;
}

static tdm_status_t wait_sends(xp_ucx_world_t *w, const wl_call_t *c, tdm_error_t *err);

/* RMA: after the payload puts of a phase, a fence, then each peer's flag; a peer that sees
 * the sequence number in its flag may read the slot. */
static tdm_status_t send_flags(xp_ucx_world_t *w, const wl_call_t *c, int phase, tdm_error_t *err)
{
    if (w->proto != XP_UCX_PROTO_RMA) {
        return TDM_OK;
    }
    /* The fence alone is not enough in UCX 1.13: ucp_worker_fence only fences the UCT
     * interfaces and ucp_put_nbx tries the UCT endpoint without looking at UCP's pending
     * queue, so a flag put could overtake the unsent tail of a payload put still queued
     * there. Waiting for the payload puts that returned a request (large ones: small puts
     * complete inside ucp_put_nbx) takes them out of that queue first. */
    TDM_CHECK(wait_sends(w, c, err));
    ucs_status_t s = ucp_worker_fence(w->u->worker);
    if (s != UCS_OK) {
        return fail(w, err, TDM_ERR_TRANSPORT, "%s (group %s, %zu bytes): ucp_worker_fence: %s",
                    c->op, group_name(c->g), c->bytes, ucs_status_string(s));
    }
    uint64_t *fsrc = (uint64_t *)((unsigned char *)w->send.base + w->slot_bytes);
    for (int i = 0; i < c->count; i++) {
        const int peer = w->members[i];
        if (i == c->me) {
            continue;
        }
        uint64_t *f = &fsrc[(size_t)peer * N_PHASES + (size_t)phase];
        *f = w->seq;
        const uint64_t raddr =
            w->remote_base[peer] + flag_index(w, w->par[peer], w->rank, phase) * sizeof(uint64_t);
        tdm_error_t e = {0};
        void *req = NULL;
        if (xp_ucx_put_post(w->u, &w->peers[peer], f, sizeof(*f), raddr, w->rkeys[peer], &req,
                            &e) != TDM_OK) {
            tdm_status_t st = post_failed(w, c, peer, &e);
            return tdm_error_set(err, st, "%s", w->failed_msg);
        }
        track(w, req, peer);
    }
    return TDM_OK;
}

/* Waits for this call's sends: the send buffer and headers are reused by the next call. */
static tdm_status_t wait_sends(xp_ucx_world_t *w, const wl_call_t *c, tdm_error_t *err)
{
    unsigned idle = 0;
    for (;;) {
        int pending = -1;
        for (int i = 0; i < w->n_reqs; i++) {
            if (w->reqs[i] == NULL) {
                continue;
            }
            ucs_status_t s = xp_ucx_req_test(&w->reqs[i]);
            if (s == UCS_INPROGRESS) {
                TDM_CHECK(check_call(w, c, w->req_peer[i], err));
                if (pending < 0) {
                    pending = w->req_peer[i];
                }
            } else if (s != UCS_OK) {
                return fail(w, err, TDM_ERR_TRANSPORT,
                            "%s (group %s, %zu bytes): send to rank %d failed: %s", c->op,
                            group_name(c->g), c->bytes, w->req_peer[i], ucs_status_string(s));
            }
        }
        if (pending < 0) {
            w->n_reqs = 0;
            return TDM_OK;
        }
        if (tdm_now_s() > c->deadline) {
            return fail(w, err, TDM_ERR_TIMEOUT,
                        "%s (group %s, %zu bytes): send to rank %d not complete after %d ms", c->op,
                        group_name(c->g), c->bytes, pending, w->timeout_ms);
        }
        xp_ucx_poll(w->u, &idle);
    }
}

/* ---- the collectives ----------------------------------------------------------------- */

/* Starts a call: counts it, checks the world, finds the group and the slot parities. */
static tdm_status_t call_begin(xp_ucx_world_t *w, wl_call_t *c, const char *op, shd_group_t g,
                               int64_t n, tdm_error_t *err)
{
    *c = (wl_call_t){.op = op, .g = g, .t0 = tdm_now_s()};
    c->deadline = c->t0 + w->timeout_ms * 1e-3;
    c->bytes = n > 0 ? (size_t)n * sizeof(float) : 0;
    w->stats.n_calls++;
    w->seq++;
    if (w->failed != TDM_OK) {
        return tdm_error_set(err, w->failed, "%s", w->failed_msg);
    }
    if (atomic_load_explicit(&w->aborted, memory_order_relaxed)) {
        return fail(w, err, TDM_ERR_CANCELED, "%s (group %s): the world was aborted", op,
                    group_name(g));
    }
    if (n < 0 || n > w->max_floats || (unsigned)g >= SHD_GROUP_COUNT) {
        /* The ranks no longer make the same calls: nothing later can be trusted. */
        return fail(w, err, TDM_ERR_INVALID_PARAM,
                    "%s (group %d): %lld floats (the world was sized for at most %lld)", op, (int)g,
                    (long long)n, (long long)w->max_floats);
    }
    const int tp_rank = w->rank % w->tp, ep_rank = w->rank / w->tp;
    int first, stride;
    switch (g) {
    case SHD_GROUP_TP:
        first = ep_rank * w->tp, c->count = w->tp, stride = 1;
        break;
    case SHD_GROUP_EP:
        first = tp_rank, c->count = w->ep, stride = w->tp;
        break;
    default:
        first = 0, c->count = w->size, stride = 1;
        break;
    }
    /* a group of one (TP calls when tp is 1) exchanges nothing */
    w->stats.n_exchanges += c->count > 1;
    for (int i = 0; i < c->count; i++) {
        const int m = first + i * stride;
        w->members[i] = m;
        if (m == w->rank) {
            c->me = i;
        } else if (n > 0) {
            /* Both ends count the calls they share, so both pick the same slot. */
            w->par[m] = (uint8_t)(w->shared[m]++ & 1);
        }
    }
    return TDM_OK;
}

static tdm_status_t call_end(xp_ucx_world_t *w, const wl_call_t *c, tdm_status_t st)
{
    w->stats.ns_in_collectives += (uint64_t)((tdm_now_s() - c->t0) * 1e9);
    return st;
}

/* buf[lo, hi) = sum over the group, in ascending rank order, of each member's [lo, hi):
 * mine from the send buffer, the others' from their slots (at the same offsets). */
static void reduce_range(xp_ucx_world_t *w, const wl_call_t *c, float *buf, int64_t lo, int64_t hi)
{
    const float *mine = w->send.base;
    for (int i = 0; i < c->count; i++) {
        const int m = w->members[i];
        const float *src = i == c->me ? mine : (const float *)slot(w, w->par[m], m);
        if (i == 0) {
            memcpy(buf + lo, src + lo, (size_t)(hi - lo) * sizeof(float));
            continue;
        }
        for (int64_t j = lo; j < hi; j++) {
            buf[j] += src[j];
        }
    }
}

/* Chunk j of n floats split over g owners (uneven when g does not divide n). */
static int64_t chunk_lo(int64_t n, int g, int j)
{
    return n * j / g;
}

static tdm_status_t ucx_all_reduce(void *impl, shd_group_t g, float *buf, int64_t n,
                                   tdm_error_t *err)
{
    xp_ucx_world_t *w = impl;
    wl_call_t c;
    tdm_status_t st = call_begin(w, &c, "all-reduce", g, n, err);
    if (st != TDM_OK || c.count == 1 || n == 0) {
        return call_end(w, &c, st);
    }
    memcpy(w->send.base, buf, c.bytes);
    if (c.bytes <= w->oneshot_max) {
        for (int i = 0; i < c.count && st == TDM_OK; i++) {
            if (i != c.me) {
                st = send_payload(w, &c, w->members[i], PH_FULL, 0, c.bytes, 0, err);
            }
        }
        if (st == TDM_OK) {
            st = send_flags(w, &c, PH_FULL, err);
        }
        if (st == TDM_OK) {
            st = wait_phase(w, &c, PH_FULL, err);
        }
        if (st == TDM_OK) {
            reduce_range(w, &c, buf, 0, n);
            st = wait_sends(w, &c, err);
        }
        return call_end(w, &c, st);
    }

    /* Reduce-scatter: chunk j goes to member j, which sums it. */
    const int64_t my_lo = chunk_lo(n, c.count, c.me), my_hi = chunk_lo(n, c.count, c.me + 1);
    for (int i = 0; i < c.count && st == TDM_OK; i++) {
        if (i != c.me) {
            const int64_t lo = chunk_lo(n, c.count, i), hi = chunk_lo(n, c.count, i + 1);
            const size_t off = (size_t)lo * sizeof(float);
            st = send_payload(w, &c, w->members[i], PH_RS, off, (size_t)(hi - lo) * sizeof(float),
                              off, err);
        }
    }
    if (st == TDM_OK) {
        st = send_flags(w, &c, PH_RS, err);
    }
    if (st == TDM_OK) {
        st = wait_phase(w, &c, PH_RS, err);
    }
    if (st != TDM_OK) {
        return call_end(w, &c, st);
    }
    reduce_range(w, &c, buf, my_lo, my_hi);
    /* All-gather of the sums. My chunk of the send buffer was never sent in the
     * reduce-scatter, so it is free to hold my sum while the other chunks are in flight. */
    const size_t my_off = (size_t)my_lo * sizeof(float);
    const size_t my_len = (size_t)(my_hi - my_lo) * sizeof(float);
    memcpy((unsigned char *)w->send.base + my_off, buf + my_lo, my_len);
    for (int i = 0; i < c.count && st == TDM_OK; i++) {
        if (i != c.me) {
            st = send_payload(w, &c, w->members[i], PH_AG, my_off, my_len, my_off, err);
        }
    }
    if (st == TDM_OK) {
        st = send_flags(w, &c, PH_AG, err);
    }
    if (st == TDM_OK) {
        st = wait_phase(w, &c, PH_AG, err);
    }
    if (st != TDM_OK) {
        return call_end(w, &c, st);
    }
    for (int i = 0; i < c.count; i++) {
        if (i != c.me) {
            const int m = w->members[i];
            const int64_t lo = chunk_lo(n, c.count, i), hi = chunk_lo(n, c.count, i + 1);
            memcpy(buf + lo, (const float *)slot(w, w->par[m], m) + lo,
                   (size_t)(hi - lo) * sizeof(float));
        }
    }
    return call_end(w, &c, wait_sends(w, &c, err));
}

static tdm_status_t ucx_all_gather(void *impl, shd_group_t g, const float *in, int64_t n,
                                   float *out, tdm_error_t *err)
{
    xp_ucx_world_t *w = impl;
    wl_call_t c;
    tdm_status_t st = call_begin(w, &c, "all-gather", g, n, err);
    if (st != TDM_OK || n == 0) {
        return call_end(w, &c, st);
    }
    if (c.count == 1) {
        memmove(out, in, c.bytes);
        return call_end(w, &c, TDM_OK);
    }
    memcpy(w->send.base, in, c.bytes);
    for (int i = 0; i < c.count && st == TDM_OK; i++) {
        if (i != c.me) {
            st = send_payload(w, &c, w->members[i], PH_FULL, 0, c.bytes, 0, err);
        }
    }
    if (st == TDM_OK) {
        st = send_flags(w, &c, PH_FULL, err);
    }
    if (st == TDM_OK) {
        st = wait_phase(w, &c, PH_FULL, err);
    }
    if (st != TDM_OK) {
        return call_end(w, &c, st);
    }
    for (int i = 0; i < c.count; i++) {
        const int m = w->members[i];
        /* Mine from the staged copy: in may overlap out. */
        const void *src = i == c.me ? w->send.base : (const void *)slot(w, w->par[m], m);
        memcpy(out + (int64_t)i * n, src, c.bytes);
    }
    return call_end(w, &c, wait_sends(w, &c, err));
}

static const shd_comm_ops_t ucx_ops = {
    .name = "ucx",
    .all_reduce_sum_f32 = ucx_all_reduce,
    .all_gather_f32 = ucx_all_gather,
};

/* ---- wireup -------------------------------------------------------------------------- */

static tdm_status_t check_params(const xp_ucx_t *u, const xp_ucx_world_params_t *p,
                                 tdm_error_t *err)
{
    if (p->tp_size < 1 || p->ep_size < 1 || p->tp_size > WL_MAX_WORLD ||
        p->ep_size > WL_MAX_WORLD / p->tp_size) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "ucx world: tp %d x ep %d ranks",
                             p->tp_size, p->ep_size);
    }
    const int size = p->tp_size * p->ep_size;
    if (p->rank < 0 || p->rank >= size) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "ucx world: rank %d of %d", p->rank, size);
    }
    if (p->max_floats < 1 || p->max_floats > ((int64_t)1 << 34) || p->oneshot_max_bytes < 0 ||
        p->timeout_ms < 0 || (p->proto != XP_UCX_PROTO_AM && p->proto != XP_UCX_PROTO_RMA)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "ucx world: max_floats %lld, oneshot_max_bytes %lld, timeout %d ms, "
                             "proto %d",
                             (long long)p->max_floats, (long long)p->oneshot_max_bytes,
                             p->timeout_ms, (int)p->proto);
    }
    if (size > 1 && (p->peer_addr == NULL || p->peer_addr_len == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "ucx world: no peer addresses");
    }
    if (u->world_attached) {
        return tdm_error_set(err, TDM_ERR_BUSY,
                             "ucx world: this worker already serves a world (destroy it first)");
    }
    return TDM_OK;
}

/* INFO to every peer, INFO from every peer (their regions' keys), then a barrier so that
 * nobody sends payloads to a rank that is not ready for them. */
static tdm_status_t wireup(xp_ucx_world_t *w, tdm_error_t *err)
{
    if (w->size == 1) {
        return TDM_OK; /* nobody to tell; no receive region either */
    }
    const double deadline = tdm_now_s() + w->timeout_ms * 1e-3;
    const size_t info_len = sizeof(wl_info_t) + w->recv.rkey_len;
    unsigned char *info = tdm_xmalloc(info_len);
    wl_info_t mine = {
        .base = (uint64_t)(uintptr_t)w->recv.base,
        .len = w->recv.len,
        .max_floats = w->max_floats,
        .oneshot_max = (int64_t)w->oneshot_max,
        .tp = w->tp,
        .ep = w->ep,
        .proto = (int32_t)w->proto,
    };
    memcpy(info, &mine, sizeof(mine));
    memcpy(info + sizeof(mine), w->recv.rkey, w->recv.rkey_len);
    tdm_status_t st = TDM_OK;
    for (int r = 0; r < w->size && st == TDM_OK; r++) {
        if (r != w->rank) {
            xp_ucx_ctrl_hdr_t h = {.epoch = w->epoch, .type = CTRL_INFO, .src = w->rank};
            st = xp_ucx_ctrl_send(w->u, &w->peers[r], &h, info, info_len, deadline,
                                  "ucx world: wireup", err);
        }
    }
    free(info);
    for (int r = 0; r < w->size && st == TDM_OK; r++) {
        if (r == w->rank) {
            continue;
        }
        xp_ucx_msg_t *m = NULL;
        st = xp_ucx_ctrl_wait(w->u, &w->peers[r], w->epoch, CTRL_INFO, deadline,
                              "ucx world: wireup", &m, err);
        if (st != TDM_OK) {
            break;
        }
        wl_info_t theirs;
        if (m->len <= sizeof(theirs)) {
            st = tdm_error_set(err, TDM_ERR_FORMAT, "ucx world: rank %d sent a %zu-byte wireup", r,
                               m->len);
        } else {
            memcpy(&theirs, m->data, sizeof(theirs));
            if (theirs.tp != w->tp || theirs.ep != w->ep || theirs.max_floats != w->max_floats ||
                theirs.oneshot_max != (int64_t)w->oneshot_max || theirs.proto != (int)w->proto) {
                st = tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                   "ucx world: rank %d disagrees: tp %d x ep %d, max_floats %lld, "
                                   "oneshot %lld, proto %d (here %d x %d, %lld, %lld, %d)",
                                   r, theirs.tp, theirs.ep, (long long)theirs.max_floats,
                                   (long long)theirs.oneshot_max, theirs.proto, w->tp, w->ep,
                                   (long long)w->max_floats, (long long)w->oneshot_max,
                                   (int)w->proto);
            } else if (theirs.len < w->recv.len) {
                st = tdm_error_set(err, TDM_ERR_FORMAT,
                                   "ucx world: rank %d's receive region is %llu bytes", r,
                                   (unsigned long long)theirs.len);
            } else {
                w->remote_base[r] = theirs.base;
                st = xp_ucx_rkey_unpack(&w->peers[r], m->data + sizeof(theirs),
                                        m->len - sizeof(theirs), &w->rkeys[r], err);
            }
        }
        free(m);
    }
    for (int r = 0; r < w->size && st == TDM_OK; r++) {
        if (r != w->rank) {
            xp_ucx_ctrl_hdr_t h = {.epoch = w->epoch, .type = CTRL_BARRIER, .src = w->rank};
            st = xp_ucx_ctrl_send(w->u, &w->peers[r], &h, NULL, 0, deadline, "ucx world: barrier",
                                  err);
        }
    }
    for (int r = 0; r < w->size && st == TDM_OK; r++) {
        if (r != w->rank) {
            xp_ucx_msg_t *m = NULL;
            st = xp_ucx_ctrl_wait(w->u, &w->peers[r], w->epoch, CTRL_BARRIER, deadline,
                                  "ucx world: barrier", &m, err);
            free(m);
        }
    }
    return st;
}

tdm_status_t xp_ucx_world_create(xp_ucx_t *u, const xp_ucx_world_params_t *p, xp_ucx_world_t **out,
                                 tdm_error_t *err)
{
    TDM_CHECK(check_params(u, p, err));
    xp_ucx_world_t *w = tdm_xcalloc(1, sizeof(*w));
    w->u = u;
    w->rank = p->rank;
    w->tp = p->tp_size;
    w->ep = p->ep_size;
    w->size = w->tp * w->ep;
    w->epoch = p->epoch;
    w->max_floats = p->max_floats;
    w->slot_bytes = round64((size_t)p->max_floats * sizeof(float));
    w->oneshot_max =
        p->oneshot_max_bytes > 0 ? (size_t)p->oneshot_max_bytes : (size_t)WL_DEFAULT_ONESHOT;
    w->timeout_ms = p->timeout_ms > 0 ? p->timeout_ms : WL_DEFAULT_TIMEOUT;
    w->proto = p->proto;
    atomic_init(&w->aborted, false);
    const size_t n = (size_t)w->size;
    w->peers = tdm_xcalloc(n, sizeof(*w->peers));
    w->remote_base = tdm_xcalloc(n, sizeof(*w->remote_base));
    w->rkeys = tdm_xcalloc(n, sizeof(*w->rkeys));
    w->hdrs = tdm_xcalloc(n * N_PHASES, sizeof(*w->hdrs));
    w->arrived = tdm_xcalloc(n * 2 * N_PHASES, sizeof(*w->arrived));
    w->rndv_seq = tdm_xcalloc(n * 2 * N_PHASES, sizeof(*w->rndv_seq));
    w->rndv_ctx = tdm_xcalloc(n * 2 * N_PHASES, sizeof(*w->rndv_ctx));
    for (size_t i = 0; i < n * 2 * N_PHASES; i++) {
        w->rndv_ctx[i] = (wl_rndv_t){.w = w, .idx = (int)i};
    }
    w->shared = tdm_xcalloc(n, sizeof(*w->shared));
    w->par = tdm_xcalloc(n, sizeof(*w->par));
    w->members = tdm_xcalloc(n, sizeof(*w->members));
    for (int r = 0; r < w->size; r++) {
        w->peers[r].rank = r;
    }

    tdm_status_t st = TDM_OK;
    if (w->size > 1) {
        w->flags_bytes = round64(2 * n * N_PHASES * sizeof(uint64_t));
        size_t slots_bytes;
        if (tdm_mul_size(2 * n, w->slot_bytes, &slots_bytes) != 0) {
            st = tdm_error_set(err, TDM_ERR_OUT_OF_RANGE, "ucx world: slots overflow");
            goto fail;
        }
        TDM_CHECK_GOTO(xp_ucx_region_alloc(u, w->flags_bytes + slots_bytes, &w->recv, err), st,
                       fail);
        memset(w->recv.base, 0, w->flags_bytes); /* sequence numbers start at 1 */
        TDM_CHECK_GOTO(
            xp_ucx_region_alloc(u, w->slot_bytes + n * N_PHASES * sizeof(uint64_t), &w->send, err),
            st, fail);
    } else {
        /* A world of one sends nothing, but the staging copy of all_gather still needs a
         * buffer: keep the code path uniform. */
        TDM_CHECK_GOTO(xp_ucx_region_alloc(u, w->slot_bytes, &w->send, err), st, fail);
    }
    TDM_CHECK_GOTO(xp_ucx_set_am_handler(u, XP_UCX_AM_WORLD, on_data, w, err), st, fail);
    u->world_attached = true;
    for (int r = 0; r < w->size; r++) {
        if (r != w->rank) {
            TDM_CHECK_GOTO(
                xp_ucx_peer_connect(u, &w->peers[r], r, p->peer_addr[r], p->peer_addr_len[r], err),
                st, fail);
        }
    }
    TDM_CHECK_GOTO(wireup(w, err), st, fail);
    *out = w;
    return TDM_OK;
fail:
    w->failed = st;
    snprintf(w->failed_msg, sizeof(w->failed_msg), "%s", "wireup failed");
    xp_ucx_world_destroy(w);
    return st;
}

shd_comm_t xp_ucx_world_comm(xp_ucx_world_t *w)
{
    shd_comm_t c = {&ucx_ops, w};
    return c;
}

void xp_ucx_world_abort(xp_ucx_world_t *w)
{
    atomic_store(&w->aborted, true);
}

void xp_ucx_world_stats(const xp_ucx_world_t *w, xp_ucx_stats_t *out)
{
    *out = w->stats;
}

void xp_ucx_world_stats_reset(xp_ucx_world_t *w)
{
    memset(&w->stats, 0, sizeof(w->stats));
}

void xp_ucx_world_destroy(xp_ucx_world_t *w)
{
    if (w == NULL) {
        return;
    }
    xp_ucx_t *u = w->u;
    const double deadline = tdm_now_s() + w->timeout_ms * 1e-3;
    bool healthy = w->failed == TDM_OK && w->n_reqs == 0;
    for (int r = 0; r < w->size; r++) {
        healthy = healthy && w->peers[r].status == UCS_OK;
    }
    if (healthy) {
        /* The rkeys go before their endpoints, after every put that used them is done. */
        void *req = NULL;
        ucp_request_param_t rp = {.op_attr_mask = 0};
        req = ucp_worker_flush_nbx(u->worker, &rp);
        if (UCS_PTR_IS_PTR(req)) {
            while (xp_ucx_req_test(&req) == UCS_INPROGRESS && tdm_now_s() < deadline) {
                ucp_worker_progress(u->worker);
            }
            healthy = req == NULL;
        }
    }
    if (healthy) {
        for (int r = 0; r < w->size; r++) {
            if (w->rkeys[r] != NULL) {
                ucp_rkey_destroy(w->rkeys[r]);
                w->rkeys[r] = NULL;
            }
        }
    }
    /* After a failure, forcing the endpoints closed completes (with an error) whatever is
     * still in flight, so the memory those operations use can be released below. */
    xp_ucx_peers_close(u, w->peers, w->size, !healthy, w->timeout_ms);
    for (int r = 0; r < w->size; r++) {
        if (w->rkeys[r] != NULL) {
            ucp_rkey_destroy(w->rkeys[r]);
        }
    }
    bool quiet = false;
    for (;;) {
        bool busy = w->rndv_inflight > 0;
        for (int i = 0; i < w->n_reqs; i++) {
            if (w->reqs[i] != NULL && xp_ucx_req_test(&w->reqs[i]) == UCS_INPROGRESS) {
                busy = true;
            }
        }
        if (!busy) {
            quiet = true;
            break;
        }
        if (tdm_now_s() > deadline + 1.0) {
            break;
        }
        ucp_worker_progress(u->worker);
    }
    if (u->world_attached && u->worker != NULL) {
        xp_ucx_set_am_handler(u, XP_UCX_AM_WORLD, NULL, NULL, NULL);
        u->world_attached = false;
    }
    xp_ucx_ctrl_drop(u, w->epoch);
    if (!quiet) {
        /* UCX may still write into these buffers or call back into w: keep them, but hand
         * the requests back (an unreleased request trips ucp_worker_destroy's assertion). */
        for (int i = 0; i < w->n_reqs; i++) {
            if (w->reqs[i] != NULL) {
                ucp_request_free(w->reqs[i]);
                w->reqs[i] = NULL;
            }
        }
        TDM_WARN("ucx", "world %llu: operations still in flight at destroy; leaking its buffers",
                 (unsigned long long)w->epoch);
        return;
    }
    xp_ucx_region_free(u, &w->recv);
    xp_ucx_region_free(u, &w->send);
    free(w->peers);
    free(w->remote_base);
    free(w->rkeys);
    free(w->hdrs);
    free(w->arrived);
    free(w->rndv_seq);
    free(w->rndv_ctx);
    free(w->shared);
    free(w->par);
    free(w->members);
    free(w->reqs);
    free(w->req_peer);
    free(w);
}
