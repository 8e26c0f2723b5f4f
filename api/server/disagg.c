/*
 * disagg.c - disaggregated prefill/decode: which prefill group hands its KV to which
 * decode group, and the checks that make the handover exact (docs/distributed.md).
 *
 * A block id means the same bytes in both groups only when both split the model alike
 * (the same TP x EP layout: shard r of one holds the heads shard r of the other holds) and
 * store K/V alike (type, block size): then a prefill shard's block of a layer is
 * byte-for-byte what the decode shard of the same rank would have computed, and a put
 * of the bytes is the whole handover. Both groups register their storage at LOAD, so the
 * bytes per block (or recurrent-state slot) of every region can be compared here before a
 * request runs. Sliding-window layers hand over the blocks of the decode side's last window
 * only, and recurrent layers the state at the prompt's end (transport/kv_xfer.h).
 */
#include "api/server/srv.h"

#include "common/check.h"
#include "common/log.h"
#include "transport/exec_remote.h"

#include <stdlib.h>

/* The group's registered storage and its TP x EP split. */
static tdm_status_t group_kv(srv_group_t *g, xp_msg_kv_peer_t **peer, int *tp, int *ep,
                             tdm_error_t *err)
{
    if (g->rx == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "group '%s' (%s) runs in this process: prefill and decode groups "
                             "must be shard groups (\"shards\"), whose KV storage UCX can reach",
                             g->name, crd_group_role_name(g->role));
    }
    xp_group_health_t h = {
        .shards = calloc((size_t)xp_remote_exec_n_shards(g->rx), sizeof(xp_shard_health_t))};
    if (h.shards == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
    }
    xp_remote_exec_health(g->rx, &h);
    free(h.shards);
    *tp = h.tp;
    *ep = h.ep;
    *peer = xp_remote_exec_kv_peer(g->rx);
    if (*peer == NULL) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT,
                             "group '%s': its shards did not register their KV storage", g->name);
    }
    return TDM_OK;
}

static tdm_status_t check_pair(srv_group_t *pre, srv_group_t *dec, tdm_error_t *err)
{
    xp_msg_kv_peer_t *pp = NULL, *dp = NULL;
    int ptp = 0, pep = 0, dtp = 0, dep = 0;
    tdm_status_t st = group_kv(pre, &pp, &ptp, &pep, err);
    if (st == TDM_OK) {
        st = group_kv(dec, &dp, &dtp, &dep, err);
    }
    if (st == TDM_OK && (ptp != dtp || pep != dep)) {
        st = tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                           "prefill group '%s' is split tp %d x ep %d, decode group '%s' tp %d x "
                           "ep %d: disaggregated groups need equal layouts (shard r of one "
                           "hands its KV to shard r of the other)",
                           pre->name, ptp, pep, dec->name, dtp, dep);
    }
    for (int32_t r = 0; st == TDM_OK && r < pp->n_ranks; r++) {
        const xp_msg_kv_rank_t *a = &pp->ranks[r], *b = &dp->ranks[r];
        bool same = a->n_regions == b->n_regions && pre->ex.block_tokens == dec->ex.block_tokens;
        for (int32_t i = 0; same && i < a->n_regions; i++) {
            /* bytes per block of every layer's K and V, per slot of every recurrent layer's
             * states: the KV type, heads and state shapes agree */
            same = a->regions[i].unit == b->regions[i].unit;
        }
        if (!same) {
            st = tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                               "prefill group '%s' and decode group '%s' store KV differently "
                               "(rank %d: KV type, heads, recurrent states or block size "
                               "differ; start every shard of both with the same --kv-type)",
                               pre->name, dec->name, (int)r);
        }
    }
    free(pp);
    free(dp);
    return st;
}

tdm_status_t srv_disagg_setup(srv_server_t *s, tdm_error_t *err)
{
    TDM_CHECK(crd_router_pair_roles(s->router, err));
    for (int i = 0; i < s->n_groups; i++) {
        srv_group_t *pre = &s->groups[i];
        if (pre->role != CRD_ROLE_PREFILL) {
            continue;
        }
        srv_group_t *dec = &s->groups[crd_router_partner(s->router, i)];
        TDM_CHECK(check_pair(pre, dec, err));
        xp_remote_exec_set_kv_target(pre->rx, dec->rx);
        TDM_INFO("serve", "group '%s' prefills for group '%s' (KV over UCX RMA)", pre->name,
                 dec->name);
    }
    return TDM_OK;
}
