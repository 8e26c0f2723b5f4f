/* ucx_ctx.c - the UCX context, worker and the helpers of ucx_internal.h. */
#include "transport/ucx_internal.h"

#include "common/check.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/mem.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A control send whose wait failed: UCX may still read buf until req completes. */
typedef struct xp_ucx_orphan {
    struct xp_ucx_orphan *next;
    void *req;
    void *buf;
} xp_ucx_orphan_t;

/* Frees the orphans UCX is done with (all of them once the worker is gone). */
static void reap_orphans(xp_ucx_t *u, bool all)
{
    xp_ucx_orphan_t **link = &u->orphans;
    while (*link != NULL) {
        xp_ucx_orphan_t *o = *link;
        if (all || xp_ucx_req_test(&o->req) != UCS_INPROGRESS) {
            *link = o->next;
            free(o->buf);
            free(o);
        } else {
            link = &o->next;
        }
    }
}

/* ---- context ------------------------------------------------------------------------- */

/* Whether the transport list (UCX_TLS syntax) can select the transport name: an allow-list
 * must name it or an alias that contains it; a deny-list ("^...") or no list can. */
static bool tls_may_use(const char *tls, const char *name)
{
    if (tls == NULL || tls[0] == '^') {
        return true;
    }
    static const char *const shm_aliases[] = {"all", "sm", "shm", "mm"};
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", tls);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(t, ':'); /* "posix:aux" */
        if (colon != NULL) {
            *colon = '\0';
        }
        if (strcasecmp(t, name) == 0) {
            return true;
        }
        for (size_t i = 0; i < sizeof(shm_aliases) / sizeof(shm_aliases[0]); i++) {
            if (strcasecmp(t, shm_aliases[i]) == 0) {
                return true;
            }
        }
    }
    return false;
}

static ucs_status_t drop_am(void *arg, const void *header, size_t header_length, void *data,
                            size_t length, const ucp_am_recv_param_t *param)
{
    /* Returning UCS_OK without receiving a rendezvous message releases its sender. */
    return UCS_OK;
}

/* The control mailbox: copy the message (eager data is only valid during the callback). */
static ucs_status_t on_ctrl(void *arg, const void *header, size_t header_length, void *data,
                            size_t length, const ucp_am_recv_param_t *param)
{
    xp_ucx_t *u = arg;
    if (header_length != sizeof(xp_ucx_ctrl_hdr_t) || length > XP_UCX_CTRL_MAX_DATA ||
        (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        TDM_WARN("ucx", "dropping a malformed control message (%zu header, %zu data bytes)",
                 header_length, length);
        return UCS_OK;
    }
    xp_ucx_msg_t *m = tdm_xmalloc(sizeof(*m) + length);
    m->next = NULL;
    memcpy(&m->hdr, header, sizeof(m->hdr));
    m->len = length;
    if (length > 0) {
        memcpy(m->data, data, length);
    }
    if (u->mbox_n >= XP_UCX_MBOX_MAX) {
        /* Nobody is taking these: a peer of a dead exchange keeps talking. Bound memory. */
        xp_ucx_msg_t *old = u->mbox_head;
        u->mbox_head = old->next;
        if (u->mbox_head == NULL) {
            u->mbox_tail = NULL;
        }
        u->mbox_n--;
        free(old);
    }
    if (u->mbox_tail != NULL) {
        u->mbox_tail->next = m;
    } else {
        u->mbox_head = m;
    }
    u->mbox_tail = m;
    u->mbox_n++;
    return UCS_OK;
}

/* Sets key=value unless the user set the same UCX option in the environment. */
static void config_default(ucp_config_t *cfg, const char *key, const char *value,
                           const char *const *env_names)
{
    for (int i = 0; env_names[i] != NULL; i++) {
        if (getenv(env_names[i]) != NULL) {
            return;
        }
    }
    ucs_status_t s = ucp_config_modify(cfg, key, value);
    if (s != UCS_OK) {
        TDM_DEBUG("ucx", "ucp_config_modify(%s=%s): %s", key, value, ucs_status_string(s));
    }
}

tdm_status_t xp_ucx_create(const xp_ucx_params_t *p, xp_ucx_t **out, tdm_error_t *err)
{
    static const xp_ucx_params_t defaults = {0};
    if (p == NULL) {
        p = &defaults;
    }
    ucp_config_t *cfg = NULL;
    ucs_status_t s = ucp_config_read(NULL, NULL, &cfg);
    if (s != UCS_OK) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: reading the UCX configuration: %s",
                             ucs_status_string(s));
    }
    if (p->tls != NULL && (s = ucp_config_modify(cfg, "TLS", p->tls)) != UCS_OK) {
        ucp_config_release(cfg);
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "ucx: transports '%s': %s", p->tls,
                             ucs_status_string(s));
    }
    if (p->net_devices != NULL &&
        (s = ucp_config_modify(cfg, "NET_DEVICES", p->net_devices)) != UCS_OK) {
        ucp_config_release(cfg);
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "ucx: net devices '%s': %s",
                             p->net_devices, ucs_status_string(s));
    }
    /* PEER error mode excludes posix/sysv unless they advertise error handling, which is
     * off by default. The option lives in the shared mm iface table, so the one key that
     * reaches both through ucp_config_modify is "MM_ERROR_HANDLING" (checked on UCX 1.13:
     * "POSIX_ERROR_HANDLING" is reported as an invalid configuration and ignored). Only
     * set when posix or sysv may be selected: UCX warns about keys no transport used. */
    const char *tls = p->tls != NULL ? p->tls : getenv("UCX_TLS");
    if (tls_may_use(tls, "posix") || tls_may_use(tls, "sysv")) {
        static const char *const env[] = {"UCX_MM_ERROR_HANDLING", "UCX_POSIX_ERROR_HANDLING",
                                          "UCX_SYSV_ERROR_HANDLING", NULL};
        config_default(cfg, "MM_ERROR_HANDLING", "y", env);
    }

    xp_ucx_t *u = tdm_xcalloc(1, sizeof(*u));
    ucp_params_t params = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME,
        .features = UCP_FEATURE_AM | UCP_FEATURE_RMA,
        .name = "tandem",
    };
    s = ucp_init(&params, cfg, &u->ctx);
    ucp_config_release(cfg);
    tdm_status_t st = TDM_OK;
    if (s != UCS_OK) {
        st = tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: ucp_init (transports %s): %s",
                           tls != NULL ? tls : "default", ucs_status_string(s));
        goto fail;
    }
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    s = ucp_worker_create(u->ctx, &wp, &u->worker);
    if (s != UCS_OK) {
        st = tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: ucp_worker_create: %s",
                           ucs_status_string(s));
        goto fail;
    }
    ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_ADDRESS};
    s = ucp_worker_query(u->worker, &wa);
    if (s != UCS_OK) {
        st = tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: ucp_worker_query: %s",
                           ucs_status_string(s));
        goto fail;
    }
    u->addr = wa.address;
    u->addr_len = wa.address_length;
    for (unsigned id = 0; id < XP_UCX_AM_COUNT && st == TDM_OK; id++) {
        st = xp_ucx_set_am_handler(u, id, id == XP_UCX_AM_CTRL ? on_ctrl : NULL, u, err);
    }
    if (st != TDM_OK) {
        goto fail;
    }
    *out = u;
    return TDM_OK;
fail:
    xp_ucx_destroy(u);
    return st;
}

void xp_ucx_destroy(xp_ucx_t *u)
{
    if (u == NULL) {
        return;
    }
    TDM_ASSERT(!u->world_attached);
    if (u->addr != NULL) {
        ucp_worker_release_address(u->worker, u->addr);
    }
    reap_orphans(u, false);
    /* Release what is still in flight to UCX (see xp_ucx_peers_close); the buffers are
     * freed once the worker is gone. */
    for (xp_ucx_orphan_t *o = u->orphans; o != NULL; o = o->next) {
        if (o->req != NULL) {
            ucp_request_free(o->req);
            o->req = NULL;
        }
    }
    if (u->worker != NULL) {
        ucp_worker_destroy(u->worker);
    }
    reap_orphans(u, true);
    if (u->ctx != NULL) {
        ucp_cleanup(u->ctx);
    }
    for (xp_ucx_msg_t *m = u->mbox_head, *next; m != NULL; m = next) {
        next = m->next;
        free(m);
    }
    free(u);
}

void xp_ucx_address(const xp_ucx_t *u, const void **addr, size_t *len)
{
    *addr = u->addr;
    *len = u->addr_len;
}

void xp_ucx_poll(xp_ucx_t *u, unsigned *idle)
{
    if (ucp_worker_progress(u->worker) != 0) {
        *idle = 0;
    } else if (++*idle > XP_UCX_SPINS_BEFORE_YIELD) {
        sched_yield();
    }
}

/* ---- endpoints ----------------------------------------------------------------------- */

/* Runs inside ucp_worker_progress: only record; the waiting loops turn it into an error
 * that names the rank. */
static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    xp_ucx_peer_t *p = arg;
    if (p->status == UCS_OK) {
        p->status = status;
    }
}

tdm_status_t xp_ucx_peer_connect(xp_ucx_t *u, xp_ucx_peer_t *p, int rank, const void *addr,
                                 size_t len, tdm_error_t *err)
{
    p->ep = NULL;
    p->rank = rank;
    p->status = UCS_OK;
    if (addr == NULL || len == 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "ucx: rank %d has no worker address",
                             rank);
    }
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = addr,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_ep_error, .arg = p},
    };
    ucs_status_t s = ucp_ep_create(u->worker, &ep, &p->ep);
    if (s != UCS_OK) {
        p->ep = NULL;
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: connecting to rank %d: %s", rank,
                             ucs_status_string(s));
    }
    return TDM_OK;
}

void xp_ucx_peers_close(xp_ucx_t *u, xp_ucx_peer_t *peers, int n, bool force, int timeout_ms)
{
    void **reqs = tdm_xcalloc((size_t)n > 0 ? (size_t)n : 1, sizeof(*reqs));
    for (int i = 0; i < n; i++) {
        xp_ucx_peer_t *p = &peers[i];
        if (p->ep == NULL) {
            continue;
        }
        /* A failed endpoint can only be closed by force; a flush would wait on the dead. */
        ucp_request_param_t rp = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
            .flags = (force || p->status != UCS_OK) ? UCP_EP_CLOSE_FLAG_FORCE : 0,
        };
        void *r = ucp_ep_close_nbx(p->ep, &rp);
        if (UCS_PTR_IS_PTR(r)) {
            reqs[i] = r;
        }
        p->ep = NULL;
    }
    const double deadline = tdm_now_s() + timeout_ms * 1e-3;
    unsigned idle = 0;
    for (;;) {
        bool pending = false;
        for (int i = 0; i < n; i++) {
            if (reqs[i] != NULL && xp_ucx_req_test(&reqs[i]) == UCS_INPROGRESS) {
                pending = true;
            }
        }
        if (!pending) {
            break;
        }
        if (tdm_now_s() > deadline) {
            /* Handed back to UCX: it frees them when they complete or when the worker is
             * destroyed. Unreleased, they would trip UCX's assertion in ucp_worker_destroy
             * (seen when a peer froze during the close). */
            TDM_WARN("ucx", "closing endpoints: gave up waiting after %d ms", timeout_ms);
            for (int i = 0; i < n; i++) {
                if (reqs[i] != NULL) {
                    ucp_request_free(reqs[i]);
                }
            }
            break;
        }
        xp_ucx_poll(u, &idle);
    }
    free(reqs);
}

/* ---- operations ---------------------------------------------------------------------- */

tdm_status_t xp_ucx_set_am_handler(xp_ucx_t *u, unsigned id, ucp_am_recv_callback_t cb, void *arg,
                                   tdm_error_t *err)
{
    ucp_am_handler_param_t hp = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
        .id = id,
        .cb = cb != NULL ? cb : drop_am,
        .arg = arg,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
    };
    ucs_status_t s = ucp_worker_set_am_recv_handler(u->worker, &hp);
    if (s != UCS_OK) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: setting active-message handler %u: %s",
                             id, ucs_status_string(s));
    }
    return TDM_OK;
}

static tdm_status_t posted(void *r, void **req, const char *op, const xp_ucx_peer_t *p,
                           tdm_error_t *err)
{
    if (UCS_PTR_IS_ERR(r)) {
        *req = NULL;
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: %s to rank %d: %s", op, p->rank,
                             ucs_status_string(UCS_PTR_STATUS(r)));
    }
    *req = r;
    return TDM_OK;
}

tdm_status_t xp_ucx_am_post(xp_ucx_t *u, xp_ucx_peer_t *p, unsigned id, const void *hdr,
                            size_t hdr_len, const void *data, size_t len, uint32_t flags,
                            void **req, tdm_error_t *err)
{
    ucp_request_param_t rp = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_MEMORY_TYPE,
        .flags = flags,
        .memory_type = UCS_MEMORY_TYPE_HOST, /* skip the memory-type lookup */
    };
    return posted(ucp_am_send_nbx(p->ep, id, hdr, hdr_len, data, len, &rp), req, "active message",
                  p, err);
}

tdm_status_t xp_ucx_put_post(xp_ucx_t *u, xp_ucx_peer_t *p, const void *src, size_t len,
                             uint64_t raddr, ucp_rkey_h rkey, void **req, tdm_error_t *err)
{
    ucp_request_param_t rp = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE,
        .memory_type = UCS_MEMORY_TYPE_HOST,
    };
    return posted(ucp_put_nbx(p->ep, src, len, raddr, rkey, &rp), req, "put", p, err);
}

tdm_status_t xp_ucx_flush_post(xp_ucx_t *u, xp_ucx_peer_t *p, void **req, tdm_error_t *err)
{
    ucp_request_param_t rp = {.op_attr_mask = 0};
    return posted(ucp_ep_flush_nbx(p->ep, &rp), req, "flush", p, err);
}

ucs_status_t xp_ucx_req_test(void **req)
{
    if (*req == NULL) {
        return UCS_OK;
    }
    ucs_status_t s = ucp_request_check_status(*req);
    if (s == UCS_INPROGRESS) {
        return s;
    }
    ucp_request_free(*req);
    *req = NULL;
    return s;
}

tdm_status_t xp_ucx_req_wait(xp_ucx_t *u, void **req, const xp_ucx_peer_t *p, double deadline,
                             const char *what, tdm_error_t *err)
{
    unsigned idle = 0;
    for (;;) {
        ucs_status_t s = xp_ucx_req_test(req);
        if (s == UCS_OK) {
            return TDM_OK;
        }
        if (s != UCS_INPROGRESS) {
            return tdm_error_set(err, TDM_ERR_TRANSPORT, "%s to rank %d failed: %s", what, p->rank,
                                 ucs_status_string(s));
        }
        if (p->status != UCS_OK) {
            /* The request completes with an error once the endpoint is closed; it is freed
             * with the worker at the latest. */
            return tdm_error_set(err, TDM_ERR_TRANSPORT, "%s: rank %d (peer) failed: %s", what,
                                 p->rank, ucs_status_string(p->status));
        }
        if (tdm_now_s() > deadline) {
            return tdm_error_set(err, TDM_ERR_TIMEOUT, "%s to rank %d: not complete in time", what,
                                 p->rank);
        }
        xp_ucx_poll(u, &idle);
    }
}

/* ---- control mailbox ----------------------------------------------------------------- */

tdm_status_t xp_ucx_ctrl_send(xp_ucx_t *u, xp_ucx_peer_t *p, const xp_ucx_ctrl_hdr_t *hdr,
                              const void *data, size_t len, double deadline, const char *what,
                              tdm_error_t *err)
{
    if (len > XP_UCX_CTRL_MAX_DATA) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "%s: control message of %zu bytes", what, len);
    }
    reap_orphans(u, false);
    /* A private copy: if the wait fails, UCX may still read the message after we return. */
    unsigned char *buf = tdm_xmalloc(sizeof(*hdr) + len);
    memcpy(buf, hdr, sizeof(*hdr));
    if (len > 0) {
        memcpy(buf + sizeof(*hdr), data, len);
    }
    void *req = NULL;
    /* Eager: the mailbox copies the message inside the callback, no rendezvous. */
    tdm_status_t st = xp_ucx_am_post(u, p, XP_UCX_AM_CTRL, buf, sizeof(*hdr), buf + sizeof(*hdr),
                                     len, UCP_AM_SEND_FLAG_EAGER, &req, err);
    if (st == TDM_OK) {
        st = xp_ucx_req_wait(u, &req, p, deadline, what, err);
    }
    if (req != NULL) {
        xp_ucx_orphan_t *o = tdm_xmalloc(sizeof(*o));
        *o = (xp_ucx_orphan_t){.next = u->orphans, .req = req, .buf = buf};
        u->orphans = o;
    } else {
        free(buf);
    }
    return st;
}

xp_ucx_msg_t *xp_ucx_ctrl_take(xp_ucx_t *u, uint64_t epoch, uint32_t type, int src)
{
    xp_ucx_msg_t *prev = NULL;
    for (xp_ucx_msg_t *m = u->mbox_head; m != NULL; prev = m, m = m->next) {
        if (m->hdr.epoch == epoch && m->hdr.type == type && m->hdr.src == src) {
            if (prev != NULL) {
                prev->next = m->next;
            } else {
                u->mbox_head = m->next;
            }
            if (u->mbox_tail == m) {
                u->mbox_tail = prev;
            }
            u->mbox_n--;
            m->next = NULL;
            return m;
        }
    }
    return NULL;
}

tdm_status_t xp_ucx_ctrl_wait(xp_ucx_t *u, const xp_ucx_peer_t *p, uint64_t epoch, uint32_t type,
                              double deadline, const char *what, xp_ucx_msg_t **out,
                              tdm_error_t *err)
{
    unsigned idle = 0;
    for (;;) {
        xp_ucx_msg_t *m = xp_ucx_ctrl_take(u, epoch, type, p->rank);
        if (m != NULL) {
            *out = m;
            return TDM_OK;
        }
        if (p->status != UCS_OK) {
            return tdm_error_set(err, TDM_ERR_TRANSPORT, "%s: rank %d (peer) failed: %s", what,
                                 p->rank, ucs_status_string(p->status));
        }
        if (tdm_now_s() > deadline) {
            return tdm_error_set(err, TDM_ERR_TIMEOUT, "%s: nothing from rank %d in time", what,
                                 p->rank);
        }
        xp_ucx_poll(u, &idle);
    }
}

void xp_ucx_ctrl_drop(xp_ucx_t *u, uint64_t epoch)
{
    xp_ucx_msg_t **link = &u->mbox_head, *last = NULL;
    while (*link != NULL) {
        xp_ucx_msg_t *m = *link;
        if (m->hdr.epoch == epoch) {
            *link = m->next;
            u->mbox_n--;
            free(m);
        } else {
            last = m;
            link = &m->next;
        }
    }
    u->mbox_tail = last;
}

/* ---- registered memory --------------------------------------------------------------- */

tdm_status_t xp_ucx_region_alloc(xp_ucx_t *u, size_t len, xp_ucx_region_t *r, tdm_error_t *err)
{
    memset(r, 0, sizeof(*r));
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS,
        .length = len,
        .flags = UCP_MEM_MAP_ALLOCATE,
    };
    ucs_status_t s = ucp_mem_map(u->ctx, &mp, &r->memh);
    if (s != UCS_OK) {
        r->memh = NULL;
        return tdm_error_set(err, s == UCS_ERR_NO_MEMORY ? TDM_ERR_NO_MEMORY : TDM_ERR_TRANSPORT,
                             "ucx: allocating %zu registered bytes: %s", len, ucs_status_string(s));
    }
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    s = ucp_mem_query(r->memh, &ma);
    if (s == UCS_OK) {
        r->base = ma.address;
        r->len = ma.length;
        s = ucp_rkey_pack(u->ctx, r->memh, &r->rkey, &r->rkey_len);
    }
    if (s != UCS_OK) {
        xp_ucx_region_free(u, r);
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: registering %zu bytes: %s", len,
                             ucs_status_string(s));
    }
    return TDM_OK;
}

void xp_ucx_region_free(xp_ucx_t *u, xp_ucx_region_t *r)
{
    if (r->rkey != NULL) {
        ucp_rkey_buffer_release(r->rkey);
    }
    if (r->memh != NULL) {
        ucp_mem_unmap(u->ctx, r->memh);
    }
    memset(r, 0, sizeof(*r));
}

tdm_status_t xp_ucx_rkey_unpack(xp_ucx_peer_t *p, const void *buf, size_t len, ucp_rkey_h *out,
                                tdm_error_t *err)
{
    ucs_status_t s = ucp_ep_rkey_unpack(p->ep, buf, out);
    if (s != UCS_OK) {
        *out = NULL;
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ucx: remote key of rank %d (%zu bytes): %s",
                             p->rank, len, ucs_status_string(s));
    }
    return TDM_OK;
}
