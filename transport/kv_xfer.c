/* kv_xfer.c - K/V blocks from a prefill shard's cache into a decode shard's, over UCX RMA
 * (see kv_xfer.h). */
#include "transport/kv_xfer.h"

#include "common/check.h"
#include "common/clock.h"
#include "common/mem.h"
#include "transport/ucx_internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct xp_kv_export {
    xp_ucx_t *u;
    int32_t n;
    ucp_mem_h *memh;             /* [n], NULL for an empty region */
    void **rkey;                 /* [n] packed keys (UCX's buffers) */
    xp_msg_kv_region_t *regions; /* [n] */
};

void xp_kv_export_destroy(xp_kv_export_t *x)
{
    if (x == NULL) {
        return;
    }
    for (int32_t i = 0; i < x->n; i++) {
        if (x->rkey[i] != NULL) {
            ucp_rkey_buffer_release(x->rkey[i]);
        }
        if (x->memh[i] != NULL) {
            ucp_mem_unmap(x->u->ctx, x->memh[i]);
        }
    }
    free(x->memh);
    free(x->rkey);
    free(x->regions);
    free(x);
}

/* Region i of the cache (kv_xfer.h): layer i / 2's K (even i) or V, or for a recurrent layer
 * its conv (even) or delta-rule state of every slot; *unit the bytes of one block or slot.
 * NULL (and 0) for a layer without either. */
static void *region_of(shd_kv_cache_t *kv, int32_t i, uint64_t *len, uint64_t *unit)
{
    const shd_kv_config_t *cfg = shd_kv_cache_config(kv);
    const int il = i / 2;
    void *base = NULL;
    *len = *unit = 0;
    if (cfg->layer_recurrent[il]) {
        const int64_t floats = i % 2 == 0 ? cfg->state_conv_floats : cfg->state_ssm_floats;
        base = i % 2 == 0 ? (void *)shd_kv_state_conv(kv, il) : (void *)shd_kv_state_ssm(kv, il);
        *unit = (uint64_t)floats * sizeof(float);
        *len = *unit * (uint64_t)cfg->n_state_slots;
    } else {
        base = i % 2 == 0 ? shd_kv_layer_k(kv, il) : shd_kv_layer_v(kv, il);
        const int32_t nb = shd_kv_layer_is_swa(kv, il) ? cfg->n_swa_blocks : cfg->n_blocks;
        *unit = shd_kv_block_bytes(kv);
        *len = *unit * (uint64_t)nb;
    }
    if (base == NULL || *len == 0) {
        *len = *unit = 0;
        return NULL;
    }
    return base;
}

tdm_status_t xp_kv_export_create(xp_ucx_t *u, shd_kv_cache_t *kv, xp_kv_export_t **out,
                                 tdm_error_t *err)
{
    const shd_kv_config_t *cfg = shd_kv_cache_config(kv);
    xp_kv_export_t *x = tdm_xcalloc(1, sizeof(*x));
    x->u = u;
    x->n = 2 * cfg->n_layer;
    x->memh = tdm_xcalloc((size_t)x->n, sizeof(*x->memh));
    x->rkey = tdm_xcalloc((size_t)x->n, sizeof(*x->rkey));
    x->regions = tdm_xcalloc((size_t)x->n, sizeof(*x->regions));
    for (int32_t i = 0; i < x->n; i++) {
        uint64_t len = 0, unit = 0;
        void *base = region_of(kv, i, &len, &unit);
        if (base == NULL) {
            continue;
        }
        ucp_mem_map_params_t mp = {
            .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH,
            .address = base,
            .length = len,
        };
        ucs_status_t s = ucp_mem_map(u->ctx, &mp, &x->memh[i]);
        size_t rlen = 0;
        if (s == UCS_OK) {
            s = ucp_rkey_pack(u->ctx, x->memh[i], &x->rkey[i], &rlen);
        } else {
            x->memh[i] = NULL;
        }
        if (s != UCS_OK || rlen == 0 || rlen > XP_MSG_MAX_ADDR) {
            const bool state = cfg->layer_recurrent[i / 2];
            xp_kv_export_destroy(x);
            return tdm_error_set(
                err, TDM_ERR_TRANSPORT,
                "kv export: registering layer %d's %s storage (%" PRIu64 " bytes): %s", i / 2,
                state ? (i % 2 == 0 ? "conv state" : "delta-rule state") : (i % 2 == 0 ? "K" : "V"),
                len, s != UCS_OK ? ucs_status_string(s) : "key too large");
        }
        x->regions[i].base = (uint64_t)(uintptr_t)base;
        x->regions[i].len = len;
        x->regions[i].unit = unit;
        x->regions[i].rkey.data = x->rkey[i];
        x->regions[i].rkey.len = (uint32_t)rlen;
    }
    *out = x;
    return TDM_OK;
}

void xp_kv_export_progress(xp_kv_export_t *x)
{
    while (ucp_worker_progress(x->u->worker) != 0) {
    }
}

const xp_msg_kv_region_t *xp_kv_export_regions(const xp_kv_export_t *x, int32_t *n)
{
    *n = x != NULL ? x->n : 0;
    return x != NULL ? x->regions : NULL;
}

/* ---- sender ---- */

struct xp_kv_sender {
    xp_ucx_t *u;
    bool connected;
    uint64_t epoch;
    xp_ucx_peer_t peer;
    int32_t n;
    ucp_rkey_h *rkeys;           /* [n], NULL for an empty region */
    uint64_t *base, *len, *unit; /* [n] */
    void **reqs;                 /* puts in flight */
    int32_t n_reqs, cap_reqs;
    /* the step being sent (begin .. finish) */
    const xp_step_t *step;
    shd_kv_cache_t *kv;
    double timeout_s;     /* for the flush and the puts' ends, from finish on */
    double busy_s;        /* spent posting, progressing and flushing (not the layers' compute) */
    uint64_t blocks;      /* block puts (per layer and K/V) */
    uint64_t state_bytes; /* recurrent state put            */
};

tdm_status_t xp_kv_sender_create(xp_ucx_t *u, xp_kv_sender_t **out, tdm_error_t *err)
{
    (void)err;
    xp_kv_sender_t *s = tdm_xcalloc(1, sizeof(*s));
    s->u = u;
    *out = s;
    return TDM_OK;
}

static void drop_peer(xp_kv_sender_t *s)
{
    for (int32_t i = 0; i < s->n; i++) {
        if (s->rkeys[i] != NULL) {
            ucp_rkey_destroy(s->rkeys[i]);
        }
    }
    free(s->rkeys);
    free(s->base);
    free(s->len);
    free(s->unit);
    s->rkeys = NULL;
    s->base = s->len = s->unit = NULL;
    s->n = 0;
    if (s->connected) {
        /* a dead peer's endpoint is forced closed: never wait long on it */
        xp_ucx_peers_close(s->u, &s->peer, 1, s->peer.status != UCS_OK, 1000);
    }
    s->connected = false;
}

void xp_kv_sender_destroy(xp_kv_sender_t *s)
{
    if (s == NULL) {
        return;
    }
    drop_peer(s);
    free(s->reqs);
    free(s);
}

tdm_status_t xp_kv_sender_set_peer(xp_kv_sender_t *s, const xp_msg_kv_peer_t *peer, int rank,
                                   tdm_error_t *err)
{
    if (s->connected && peer->epoch == s->epoch && s->peer.status == UCS_OK) {
        return TDM_OK;
    }
    drop_peer(s);
    if (rank < 0 || rank >= peer->n_ranks) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT,
                             "kv send: the decode group has %d ranks, this shard is rank %d "
                             "(the groups' layouts differ)",
                             (int)peer->n_ranks, rank);
    }
    const xp_msg_kv_rank_t *r = &peer->ranks[rank];
    TDM_CHECK(xp_ucx_peer_connect(s->u, &s->peer, rank, r->addr.data, r->addr.len, err));
    s->connected = true;
    s->epoch = peer->epoch;
    s->n = r->n_regions;
    s->rkeys = tdm_xcalloc((size_t)(s->n > 0 ? s->n : 1), sizeof(*s->rkeys));
    s->base = tdm_xcalloc((size_t)(s->n > 0 ? s->n : 1), sizeof(*s->base));
    s->len = tdm_xcalloc((size_t)(s->n > 0 ? s->n : 1), sizeof(*s->len));
    s->unit = tdm_xcalloc((size_t)(s->n > 0 ? s->n : 1), sizeof(*s->unit));
    for (int32_t i = 0; i < s->n; i++) {
        s->base[i] = r->regions[i].base;
        s->len[i] = r->regions[i].len;
        s->unit[i] = r->regions[i].unit;
        if (r->regions[i].len == 0) {
            continue;
        }
        tdm_status_t st = xp_ucx_rkey_unpack(&s->peer, r->regions[i].rkey.data,
                                             r->regions[i].rkey.len, &s->rkeys[i], err);
        if (st != TDM_OK) {
            drop_peer(s);
            return st;
        }
    }
    return TDM_OK;
}

tdm_status_t xp_kv_sender_begin(xp_kv_sender_t *s, shd_kv_cache_t *kv, const xp_step_t *step,
                                double timeout_s, tdm_error_t *err)
{
    s->step = NULL;
    if (step->n_kv_sends == 0) {
        return TDM_OK;
    }
    const shd_kv_config_t *cfg = shd_kv_cache_config(kv);
    if (!s->connected) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "kv send: no decode group to send to");
    }
    if (s->n != 2 * cfg->n_layer) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT,
                             "kv send: the decode shard has %d KV regions, this one %d layers",
                             (int)s->n, cfg->n_layer);
    }
    /* a block or state slot is the same bytes on both sides (the coordinator checked this
     * at formation, disagg.c; a shard reloaded since must not scribble) */
    for (int32_t i = 0; i < s->n; i++) {
        uint64_t len = 0, unit = 0;
        (void)region_of(kv, i, &len, &unit);
        if (unit != s->unit[i]) {
            return tdm_error_set(err, TDM_ERR_TRANSPORT,
                                 "kv send: layer %d's %s unit is %" PRIu64 " bytes here, %" PRIu64
                                 " on the decode shard",
                                 (int)(i / 2), i % 2 == 0 ? "first" : "second", unit, s->unit[i]);
        }
    }
    s->step = step;
    s->kv = kv;
    s->timeout_s = timeout_s;
    s->busy_s = 0.0;
    s->blocks = 0;
    s->state_bytes = 0;
    return TDM_OK;
}

/* Posts one put of bytes from src to region i at offset off, keeping its request. */
static tdm_status_t put_one(xp_kv_sender_t *s, int32_t i, const void *src, uint64_t off,
                            tdm_error_t *err)
{
    void *req = NULL;
    TDM_CHECK(
        xp_ucx_put_post(s->u, &s->peer, src, s->unit[i], s->base[i] + off, s->rkeys[i], &req, err));
    if (req != NULL) {
        if (s->n_reqs == s->cap_reqs) {
            s->cap_reqs = s->cap_reqs > 0 ? 2 * s->cap_reqs : 256;
            s->reqs = tdm_xrealloc(s->reqs, (size_t)s->cap_reqs * sizeof(*s->reqs));
        }
        s->reqs[s->n_reqs++] = req;
    }
    return TDM_OK;
}

/* Where unit `dst` of region i lies, checked against the region's length. */
static tdm_status_t unit_offset(const xp_kv_sender_t *s, int32_t i, int32_t dst, uint64_t *off,
                                tdm_error_t *err)
{
    *off = (uint64_t)dst * s->unit[i];
    if (dst < 0 || *off + s->unit[i] > s->len[i]) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT,
                             "kv send: %s %d beyond the decode shard's pool (%" PRIu64 " bytes)",
                             shd_kv_cache_config(s->kv)->layer_recurrent[i / 2] ? "state slot"
                                                                                : "block",
                             (int)dst, s->len[i]);
    }
    return TDM_OK;
}

tdm_status_t xp_kv_sender_put_layer(xp_kv_sender_t *s, int il, tdm_error_t *err)
{
    const xp_step_t *step = s->step;
    if (step == NULL) {
        return TDM_OK;
    }
    const shd_kv_config_t *cfg = shd_kv_cache_config(s->kv);
    const bool recurrent = cfg->layer_recurrent[il];
    const bool swa = shd_kv_layer_is_swa(s->kv, il);
    const double t0 = tdm_now_s();
    /* K then V, every send's blocks: the order the forward pass wrote them; a recurrent
     * layer's conv then delta-rule state of each sequence whose prompt this step ended */
    for (int32_t i = 2 * il; i < 2 * il + 2; i++) {
        if (s->len[i] == 0) {
            continue;
        }
        for (int32_t k = 0; k < step->n_kv_sends; k++) {
            const xp_step_kv_send_t *ks = &step->kv_sends[k];
            const xp_step_seq_t *sq = &step->seqs[ks->seq];
            uint64_t off = 0;
            if (recurrent) {
                if (ks->state_dst < 0) {
                    continue;
                }
                TDM_CHECK(unit_offset(s, i, ks->state_dst, &off, err));
                const float *src =
                    i % 2 == 0 ? shd_kv_state_conv(s->kv, il) : shd_kv_state_ssm(s->kv, il);
                TDM_CHECK(put_one(s, i, (const char *)src + (uint64_t)sq->state_slot * s->unit[i],
                                  off, err));
                s->state_bytes += s->unit[i];
                continue;
            }
            for (int32_t j = ks->lo; j < ks->hi; j++) {
                /* a sliding layer's blocks live in the sliding pools, and only the decode
                 * side's last window wants them */
                int32_t from = sq->blocks[j], to = ks->dst[j - ks->lo];
                if (swa) {
                    to = ks->swa_dst != NULL ? ks->swa_dst[j - ks->lo] : -1;
                    from = sq->swa_blocks != NULL ? sq->swa_blocks[j] : -1;
                    if (to < 0) {
                        continue;
                    }
                    if (from < 0) {
                        return tdm_error_set(err, TDM_ERR_TRANSPORT,
                                             "kv send: logical block %d of a sliding layer is "
                                             "not held here but wanted by the decode group",
                                             (int)j);
                    }
                }
                TDM_CHECK(unit_offset(s, i, to, &off, err));
                const void *src =
                    i % 2 == 0 ? shd_kv_k(s->kv, il, from) : shd_kv_v(s->kv, il, from);
                TDM_CHECK(put_one(s, i, src, off, err));
                s->blocks++;
            }
        }
    }
    /* let what is posted move while the next layer computes */
    while (ucp_worker_progress(s->u->worker) != 0) {
    }
    s->busy_s += tdm_now_s() - t0;
    return TDM_OK;
}

tdm_status_t xp_kv_sender_finish(xp_kv_sender_t *s, tdm_status_t st, xp_kv_sender_stats_t *stats,
                                 tdm_error_t *err)
{
    if (s->step == NULL) {
        return st;
    }
    const double t0 = tdm_now_s(), deadline = t0 + s->timeout_s;
    if (st == TDM_OK) {
        void *req = NULL;
        st = xp_ucx_flush_post(s->u, &s->peer, &req, err);
        if (st == TDM_OK) {
            st = xp_ucx_req_wait(s->u, &req, &s->peer, deadline, "kv flush", err);
        }
    }
    /* every put is polled to its end (done once the flush is; failed with the peer) */
    for (int32_t i = 0; i < s->n_reqs; i++) {
        tdm_error_t e2 = {0};
        tdm_status_t st2 = xp_ucx_req_wait(s->u, &s->reqs[i], &s->peer, deadline, "kv put", &e2);
        if (st2 != TDM_OK && s->reqs[i] != NULL) {
            ucp_request_cancel(s->u->worker, s->reqs[i]);
            ucp_request_free(s->reqs[i]);
            s->reqs[i] = NULL;
        }
        if (st == TDM_OK && st2 != TDM_OK) {
            st = tdm_error_set(err, st2, "%s", tdm_error_msg(&e2));
        }
    }
    s->n_reqs = 0;
    if (st == TDM_OK) {
        const size_t bb = shd_kv_block_bytes(s->kv);
        stats->blocks += s->blocks;
        stats->bytes += s->blocks * bb + s->state_bytes;
        stats->ns += (uint64_t)((s->busy_s + tdm_now_s() - t0) * 1e9);
    }
    s->step = NULL;
    return st;
}

tdm_status_t xp_kv_sender_send(xp_kv_sender_t *s, shd_kv_cache_t *kv, const xp_step_t *step,
                               double timeout_s, xp_kv_sender_stats_t *stats, tdm_error_t *err)
{
    tdm_status_t st = xp_kv_sender_begin(s, kv, step, timeout_s, err);
    const int n_layer = shd_kv_cache_config(kv)->n_layer;
    for (int il = 0; st == TDM_OK && s->step != NULL && il < n_layer; il++) {
        st = xp_kv_sender_put_layer(s, il, err);
    }
    return xp_kv_sender_finish(s, st, stats, err);
}
