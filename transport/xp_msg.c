/*
 * xp_msg.c - msgpack encoding and validating decoding of control-plane messages.
 *
 * Wire layout (all msgpack arrays; integers in any msgpack width):
 *   message   [ "TDM1", version, type, request_id, body ]
 *   HELLO     [ session ]
 *   JOIN      [ tandem_version str, capabilities, [ hash bin(32), file_size, n_tensors ],
 *               session, ucx_address bin, node_memory, threads, name str, nonce,
 *               auth bin(0 or 32) ]
 *   JOIN_ACK  [ accepted bool, reason str, auth bin(0 or 32) ]
 *             auth: an HMAC with the cluster secret (xp_auth.h), empty without one
 *   LOAD      [ epoch, tp_rank, tp_size, ep_rank, ep_size, n_ctx, kv_bytes, n_batch_max,
 *               n_out_max, block_tokens, proto, timeout_ms, [peer address bin...],
 *               [expert_lo...], [expert_n...], n_state_store, kv_export bool
 *               (, nccl_id bin(128)) ]
 *             nccl_id exactly when proto is 2 (NCCL) and tp_size * ep_size > 1: 17 fields,
 *             18 with it
 *   READY     [ epoch, status, error str, n_blocks, n_vocab, weight_bytes, resident_bytes,
 *               n_swa_blocks, n_state_slots, n_state_store, [[base, len, rkey bin, unit]...] ]
 *             the KV regions (two per layer: K and V, or a recurrent layer's conv and
 *             delta-rule states) with LOAD's kv_export, else []
 *   STEP      [ n_tokens, [token...], [pos...], [seq...], [want_logits bool...], n_logits,
 *               n_seqs, [ [n_blocks, [block...] (, [swa_block...])
 *                         (, state_slot, state_load, state_save)] ... ] ]
 *             every sequence has the sliding table (n_blocks ids >= -1) or none does: a
 *             step of a model with a sliding pool carries them, any other step is as in
 *             protocol 2; a sequence with a recurrent-state slot (>= 0) carries it and its
 *             stored states to load / save (-1: none) as three more integers;
 *             a 9th field with disaggregated prefill's K/V sends:
 *               [ nil | [epoch, [[address bin, [[base, len, rkey bin, unit]...]]...]],
 *                 [[seq, lo, hi, [dst block...], state_dst, [swa_dst block...]]...] ]
 *             (the decode group, when it changed; the blocks to put into its pool, the
 *             state slot there for the sequence's recurrent state, -1: none, and the
 *             sliding pool's blocks, [] without a sliding pool, else hi - lo ids >= -1)
 *   RESULT    [ status, error str, n_logits, n_vocab, logits bin (f32 little-endian),
 *               coll_calls, coll_bytes, coll_ns, step_ns, kv_bytes, kv_ns ]
 *   HEARTBEAT [ time_ns, epoch, state ]
 *   SHUTDOWN  [ ]
 *
 * Before msgpack-c unpacks untrusted bytes, scan_wire() walks the encoding once: every
 * array count must fit in the bytes left (so msgpack-c's zone, which allocates the element
 * array up front, stays proportional to the input), every string/blob lies inside the
 * input, maps/ext/floats (never sent) are refused and nothing trails the message.
 */
#include "transport/xp_msg.h"

#include "tdm_build_config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "xp_msg.c sends logits as raw little-endian f32: a big-endian host needs byte swaps"
#endif

const char *xp_msg_build_version(void)
{
    return TDM_VERSION " (" TDM_GIT_COMMIT ")";
}

const char *xp_msg_type_str(int type)
{
    static const char *const names[] = {"?",    "HELLO",  "JOIN",      "JOIN_ACK", "LOAD",
                                        "STEP", "RESULT", "HEARTBEAT", "SHUTDOWN", "READY"};
    if (type < XP_MSG_HELLO || type >= XP_MSG_TYPE_END) {
        return "?";
    }
    return names[type];
}

/* ---- validation (shared by encode and decode) ---- */

static tdm_status_t check_str(const char *s, size_t cap, const char *field, tdm_status_t fail,
                              tdm_error_t *err)
{
    if (memchr(s, '\0', cap) == NULL) {
        return tdm_error_set(err, fail, "xp_msg: %s is not NUL-terminated within %zu bytes", field,
                             cap);
    }
    return TDM_OK;
}

static tdm_status_t check_rank(int32_t rank, int32_t size, const char *what, tdm_status_t fail,
                               tdm_error_t *err)
{
    if (size < 1 || size > XP_MSG_MAX_WORLD) {
        return tdm_error_set(err, fail, "xp_msg: %s size %" PRId32 " outside [1, %d]", what, size,
                             XP_MSG_MAX_WORLD);
    }
    if (rank < 0 || rank >= size) {
        return tdm_error_set(err, fail, "xp_msg: %s rank %" PRId32 " outside [0, %" PRId32 ")",
                             what, rank, size);
    }
    return TDM_OK;
}

static tdm_status_t validate_step(const xp_step_t *s, tdm_status_t fail, tdm_error_t *err)
{
    if (s->n_tokens < 0 || s->n_tokens > XP_MSG_MAX_TOKENS) {
        return tdm_error_set(err, fail, "xp_msg STEP: n_tokens %" PRId32 " outside [0, %d]",
                             s->n_tokens, XP_MSG_MAX_TOKENS);
    }
    if (s->n_seqs < 0 || s->n_seqs > XP_MSG_MAX_SEQS) {
        return tdm_error_set(err, fail, "xp_msg STEP: n_seqs %" PRId32 " outside [0, %d]",
                             s->n_seqs, XP_MSG_MAX_SEQS);
    }
    if (s->n_tokens > 0 &&
        (s->token == NULL || s->pos == NULL || s->seq == NULL || s->want_logits == NULL)) {
        return tdm_error_set(err, fail, "xp_msg STEP: token/pos/seq/want_logits array is NULL");
    }
    if (s->n_seqs > 0 && s->seqs == NULL) {
        return tdm_error_set(err, fail, "xp_msg STEP: seqs is NULL");
    }
    int32_t n_logits = 0;
    for (int32_t i = 0; i < s->n_tokens; i++) {
        if (s->token[i] < 0) {
            return tdm_error_set(err, fail,
                                 "xp_msg STEP: token[%" PRId32 "] = %" PRId32 " is negative", i,
                                 s->token[i]);
        }
        if (s->pos[i] < 0) {
            return tdm_error_set(
                err, fail, "xp_msg STEP: pos[%" PRId32 "] = %" PRId32 " is negative", i, s->pos[i]);
        }
        if (s->seq[i] < 0 || s->seq[i] >= s->n_seqs) {
            return tdm_error_set(err, fail,
                                 "xp_msg STEP: seq[%" PRId32 "] = %" PRId32
                                 " outside [0, n_seqs %" PRId32 ")",
                                 i, s->seq[i], s->n_seqs);
        }
        if (s->want_logits[i] > 1) {
            return tdm_error_set(err, fail, "xp_msg STEP: want_logits[%" PRId32 "] = %u not 0/1", i,
                                 (unsigned)s->want_logits[i]);
        }
        n_logits += s->want_logits[i];
    }
    if (s->n_logits != n_logits) {
        return tdm_error_set(err, fail,
                             "xp_msg STEP: n_logits %" PRId32 " but %" PRId32 " want_logits set",
                             s->n_logits, n_logits);
    }
    for (int32_t q = 0; q < s->n_seqs; q++) {
        const xp_step_seq_t *sq = &s->seqs[q];
        if (sq->n_blocks < 0 || sq->n_blocks > XP_MSG_MAX_BLOCKS) {
            return tdm_error_set(
                err, fail, "xp_msg STEP: seqs[%" PRId32 "].n_blocks %" PRId32 " outside [0, %d]", q,
                sq->n_blocks, XP_MSG_MAX_BLOCKS);
        }
        if (sq->n_blocks > 0 && sq->blocks == NULL) {
            return tdm_error_set(err, fail, "xp_msg STEP: seqs[%" PRId32 "].blocks is NULL", q);
        }
        for (int32_t j = 0; j < sq->n_blocks; j++) {
            if (sq->blocks[j] < 0) {
                return tdm_error_set(err, fail,
                                     "xp_msg STEP: seqs[%" PRId32 "].blocks[%" PRId32 "] = %" PRId32
                                     " is negative",
                                     q, j, sq->blocks[j]);
            }
        }
        if ((sq->swa_blocks != NULL) != (s->seqs[0].swa_blocks != NULL)) {
            return tdm_error_set(err, fail,
                                 "xp_msg STEP: seqs[%" PRId32 "] %s a sliding-window table and "
                                 "seqs[0] %s",
                                 q, sq->swa_blocks != NULL ? "has" : "lacks",
                                 s->seqs[0].swa_blocks != NULL ? "has one" : "not");
        }
        for (int32_t j = 0; sq->swa_blocks != NULL && j < sq->n_blocks; j++) {
            if (sq->swa_blocks[j] < -1) {
                return tdm_error_set(err, fail,
                                     "xp_msg STEP: seqs[%" PRId32 "].swa_blocks[%" PRId32
                                     "] = %" PRId32 " is below -1",
                                     q, j, sq->swa_blocks[j]);
            }
        }
        /* stored states are copied to / from the sequence's slot: none without one */
        if (sq->state_slot < -1 || sq->state_load < XP_STATE_GIVEN || sq->state_save < -1 ||
            (sq->state_slot < 0 && (sq->state_load != -1 || sq->state_save >= 0))) {
            return tdm_error_set(err, fail,
                                 "xp_msg STEP: seqs[%" PRId32 "] state slot %" PRId32
                                 ", load %" PRId32 ", save %" PRId32,
                                 q, sq->state_slot, sq->state_load, sq->state_save);
        }
    }
    return TDM_OK;
}

static tdm_status_t validate_kv_sends(const xp_step_t *s, tdm_status_t fail, tdm_error_t *err)
{
    if (s->n_kv_sends < 0 || s->n_kv_sends > XP_MSG_MAX_SEQS ||
        (s->n_kv_sends > 0 && s->kv_sends == NULL)) {
        return tdm_error_set(err, fail, "xp_msg STEP: %" PRId32 " kv sends", s->n_kv_sends);
    }
    for (int32_t i = 0; i < s->n_kv_sends; i++) {
        const xp_step_kv_send_t *k = &s->kv_sends[i];
        if (k->seq < 0 || k->seq >= s->n_seqs || k->lo < 0 || k->hi <= k->lo ||
            k->hi > s->seqs[k->seq].n_blocks || k->dst == NULL || k->state_dst < -1 ||
            (k->state_dst >= 0 && s->seqs[k->seq].state_slot < 0)) {
            return tdm_error_set(err, fail,
                                 "xp_msg STEP: kv_sends[%" PRId32 "] seq %" PRId32
                                 " blocks [%" PRId32 ", %" PRId32 ") state %" PRId32
                                 " out of range",
                                 i, k->seq, k->lo, k->hi, k->state_dst);
        }
        for (int32_t j = 0; j < k->hi - k->lo; j++) {
            if (k->dst[j] < 0 || (k->swa_dst != NULL && k->swa_dst[j] < -1)) {
                return tdm_error_set(
                    err, fail,
                    "xp_msg STEP: kv_sends[%" PRId32 "] destination %" PRId32 " is negative", i, j);
            }
        }
    }
    return TDM_OK;
}

static tdm_status_t validate_regions(const xp_msg_kv_region_t *r, int32_t n, const char *what,
                                     tdm_status_t fail, tdm_error_t *err)
{
    if (n < 0 || n > XP_MSG_MAX_KV_REGIONS || (n > 0 && r == NULL)) {
        return tdm_error_set(err, fail, "xp_msg %s: %" PRId32 " KV regions", what, n);
    }
    for (int32_t i = 0; i < n; i++) {
        const bool empty = r[i].len == 0;
        if ((empty && (r[i].rkey.len != 0 || r[i].unit != 0)) ||
            (!empty &&
             (r[i].rkey.len < 1 || r[i].rkey.len > XP_MSG_MAX_ADDR || r[i].rkey.data == NULL ||
              r[i].base > UINT64_MAX - r[i].len || r[i].unit < 1 || r[i].unit > r[i].len))) {
            return tdm_error_set(err, fail, "xp_msg %s: KV region %" PRId32 " malformed", what, i);
        }
    }
    return TDM_OK;
}

static tdm_status_t validate_kv_peer(const xp_msg_kv_peer_t *p, tdm_status_t fail, tdm_error_t *err)
{
    if (p->n_ranks < 0 || p->n_ranks > XP_MSG_MAX_WORLD || (p->n_ranks > 0 && p->ranks == NULL)) {
        return tdm_error_set(err, fail, "xp_msg STEP: KV peer of %" PRId32 " ranks", p->n_ranks);
    }
    for (int32_t i = 0; i < p->n_ranks; i++) {
        const xp_msg_kv_rank_t *r = &p->ranks[i];
        if (r->addr.len < 1 || r->addr.len > XP_MSG_MAX_ADDR || r->addr.data == NULL) {
            return tdm_error_set(err, fail, "xp_msg STEP: KV peer rank %" PRId32 " address", i);
        }
        tdm_status_t st = validate_regions(r->regions, r->n_regions, "STEP KV peer", fail, err);
        if (st != TDM_OK) {
            return st;
        }
    }
    return TDM_OK;
}

static tdm_status_t validate_load(const xp_msg_load_t *l, tdm_status_t fail, tdm_error_t *err)
{
    /* the decoder takes at most XP_MSG_MAX_WORLD peer addresses */
    if ((int64_t)l->tp_size * l->ep_size > XP_MSG_MAX_WORLD) {
        return tdm_error_set(err, fail,
                             "xp_msg LOAD: world of %" PRId32 " x %" PRId32 " ranks exceeds %d",
                             l->tp_size, l->ep_size, XP_MSG_MAX_WORLD);
    }
    if (l->n_batch_max < 1 || l->n_out_max < 1 || l->n_out_max > l->n_batch_max ||
        l->block_tokens < 1) {
        return tdm_error_set(err, fail,
                             "xp_msg LOAD: n_batch_max %" PRId32 ", n_out_max %" PRId32
                             ", block_tokens %" PRId32 " (each >= 1, n_out_max <= n_batch_max)",
                             l->n_batch_max, l->n_out_max, l->block_tokens);
    }
    if (l->n_state_store < 0 || l->n_state_store > XP_MSG_MAX_STATE_STORE) {
        return tdm_error_set(err, fail, "xp_msg LOAD: n_state_store %" PRId32 " outside [0, %d]",
                             l->n_state_store, XP_MSG_MAX_STATE_STORE);
    }
    if (l->proto < XP_MSG_PROTO_AM || l->proto > XP_MSG_PROTO_NCCL || l->timeout_ms < 1) {
        return tdm_error_set(err, fail, "xp_msg LOAD: proto %" PRId32 " / timeout_ms %" PRId32,
                             l->proto, l->timeout_ms);
    }
    if ((int64_t)l->n_peers != (int64_t)l->tp_size * l->ep_size ||
        (l->n_peers > 0 && l->peers == NULL)) {
        return tdm_error_set(err, fail,
                             "xp_msg LOAD: %" PRId32 " peer addresses for %" PRId32 " x %" PRId32
                             " ranks",
                             l->n_peers, l->tp_size, l->ep_size);
    }
    for (int32_t i = 0; i < l->n_peers; i++) {
        if (l->peers[i].len < 1 || l->peers[i].len > XP_MSG_MAX_ADDR || l->peers[i].data == NULL) {
            return tdm_error_set(err, fail,
                                 "xp_msg LOAD: peer %" PRId32 " address of %" PRIu32
                                 " bytes outside [1, %d]",
                                 i, l->peers[i].len, XP_MSG_MAX_ADDR);
        }
    }
    if (l->n_layers < 0 || l->n_layers > XP_MSG_MAX_LAYERS ||
        (l->n_layers > 0 && (l->expert_lo == NULL || l->expert_n == NULL))) {
        return tdm_error_set(err, fail, "xp_msg LOAD: n_layers %" PRId32 " outside [0, %d]",
                             l->n_layers, XP_MSG_MAX_LAYERS);
    }
    for (int32_t i = 0; i < l->n_layers; i++) {
        if (l->expert_lo[i] < 0 || l->expert_n[i] < 0 ||
            (int64_t)l->expert_lo[i] + l->expert_n[i] > INT32_MAX) {
            return tdm_error_set(err, fail,
                                 "xp_msg LOAD: layer %" PRId32 " expert range [%" PRId32
                                 ", +%" PRId32 ") negative or past INT32_MAX",
                                 i, l->expert_lo[i], l->expert_n[i]);
        }
    }
    return TDM_OK;
}

bool xp_msg_load_has_nccl_id(const xp_msg_load_t *l)
{
    return l->proto == XP_MSG_PROTO_NCCL && (int64_t)l->tp_size * l->ep_size > 1;
}

tdm_status_t xp_msg_validate(const xp_msg_t *m, tdm_status_t fail, tdm_error_t *err)
{
    tdm_status_t st = TDM_OK;
    switch (m->type) {
    case XP_MSG_HELLO:
        return TDM_OK;
    case XP_MSG_JOIN:
        st = check_str(m->join.tandem_version, sizeof(m->join.tandem_version),
                       "JOIN tandem_version", fail, err);
        if (st == TDM_OK) {
            st = check_str(m->join.name, sizeof(m->join.name), "JOIN name", fail, err);
        }
        if (st == TDM_OK && (m->join.ucx.len < 1 || m->join.ucx.len > XP_MSG_MAX_ADDR ||
                             m->join.ucx.data == NULL)) {
            st = tdm_error_set(err, fail,
                               "xp_msg JOIN: UCX address of %" PRIu32 " bytes outside [1, %d]",
                               m->join.ucx.len, XP_MSG_MAX_ADDR);
        }
        if (st == TDM_OK && m->join.threads < 0) {
            st = tdm_error_set(err, fail, "xp_msg JOIN: threads %" PRId32 " < 0", m->join.threads);
        }
        return st;
    case XP_MSG_READY:
        if (m->ready.status < 0 || m->ready.status >= TDM_STATUS_COUNT) {
            return tdm_error_set(err, fail, "xp_msg READY: status %" PRId32 " unknown",
                                 m->ready.status);
        }
        st = check_str(m->ready.error, sizeof(m->ready.error), "READY error", fail, err);
        if (st == TDM_OK && (m->ready.n_blocks < 0 || m->ready.n_vocab < 0 ||
                             m->ready.n_vocab > XP_MSG_MAX_VOCAB || m->ready.n_swa_blocks < 0 ||
                             m->ready.n_state_slots < 0 || m->ready.n_state_store < 0)) {
            st = tdm_error_set(err, fail,
                               "xp_msg READY: n_blocks %" PRId32 " / n_vocab %" PRId32
                               " / n_swa_blocks %" PRId32 " / state slots %" PRId32 " + %" PRId32
                               " out of range",
                               m->ready.n_blocks, m->ready.n_vocab, m->ready.n_swa_blocks,
                               m->ready.n_state_slots, m->ready.n_state_store);
        }
        if (st == TDM_OK) {
            st = validate_regions(m->ready.kv_regions, m->ready.n_kv_regions, "READY", fail, err);
        }
        return st;
    case XP_MSG_JOIN_ACK:
        return check_str(m->join_ack.reason, sizeof(m->join_ack.reason), "JOIN_ACK reason", fail,
                         err);
    case XP_MSG_LOAD:
        st = check_rank(m->load.tp_rank, m->load.tp_size, "LOAD tp", fail, err);
        if (st == TDM_OK) {
            st = check_rank(m->load.ep_rank, m->load.ep_size, "LOAD ep", fail, err);
        }
        if (st == TDM_OK && m->load.n_ctx < 1) {
            st = tdm_error_set(err, fail, "xp_msg LOAD: n_ctx %" PRId32 " < 1", m->load.n_ctx);
        }
        if (st == TDM_OK) {
            st = validate_load(&m->load, fail, err);
        }
        return st;
    case XP_MSG_STEP:
        st = validate_step(&m->step, fail, err);
        if (st == TDM_OK) {
            st = validate_kv_sends(&m->step, fail, err);
        }
        if (st == TDM_OK) {
            st = validate_kv_peer(&m->kv_peer, fail, err);
        }
        return st;
    case XP_MSG_RESULT: {
        const xp_msg_result_t *r = &m->result;
        if (r->status < 0 || r->status >= TDM_STATUS_COUNT) {
            return tdm_error_set(err, fail, "xp_msg RESULT: status %" PRId32 " unknown", r->status);
        }
        st = check_str(r->error, sizeof(r->error), "RESULT error", fail, err);
        if (st != TDM_OK) {
            return st;
        }
        if (r->n_logits < 0 || r->n_logits > XP_MSG_MAX_TOKENS) {
            return tdm_error_set(err, fail, "xp_msg RESULT: n_logits %" PRId32 " outside [0, %d]",
                                 r->n_logits, XP_MSG_MAX_TOKENS);
        }
        if (r->n_vocab < 0 || r->n_vocab > XP_MSG_MAX_VOCAB) {
            return tdm_error_set(err, fail, "xp_msg RESULT: n_vocab %" PRId32 " outside [0, %d]",
                                 r->n_vocab, XP_MSG_MAX_VOCAB);
        }
        if ((uint64_t)r->n_logits * (uint64_t)r->n_vocab * sizeof(float) > UINT32_MAX) {
            return tdm_error_set(err, fail,
                                 "xp_msg RESULT: %" PRId32 " x %" PRId32
                                 " logits do not fit a msgpack bin (4 GiB)",
                                 r->n_logits, r->n_vocab);
        }
        if ((int64_t)r->n_logits * r->n_vocab > 0 && r->logits == NULL) {
            return tdm_error_set(err, fail, "xp_msg RESULT: logits is NULL");
        }
        return TDM_OK;
    }
    case XP_MSG_HEARTBEAT:
    case XP_MSG_SHUTDOWN:
        return TDM_OK;
    default:
        return tdm_error_set(err, fail, "xp_msg: type %d unknown", (int)m->type);
    }
}

/* ---- encoding ---- */

/* msgpack_pack_* return 0 or -1 (the sbuffer could not grow); ok collects the results. */
#define PK(call) ok &= ((call) == 0)

static void pack_str(msgpack_packer *pk, const char *s, size_t cap, int *okp)
{
    int ok = *okp;
    size_t n = strnlen(s, cap);
    PK(msgpack_pack_str(pk, n));
    PK(msgpack_pack_str_body(pk, s, n));
    *okp = ok;
}

static void pack_regions(msgpack_packer *pk, const xp_msg_kv_region_t *r, int32_t n, int *okp)
{
    int ok = *okp;
    ok &= msgpack_pack_array(pk, (size_t)n) == 0;
    for (int32_t i = 0; i < n; i++) {
        ok &= msgpack_pack_array(pk, 4) == 0;
        ok &= msgpack_pack_uint64(pk, r[i].base) == 0;
        ok &= msgpack_pack_uint64(pk, r[i].len) == 0;
        ok &= msgpack_pack_bin_with_body(pk, r[i].rkey.data, r[i].rkey.len) == 0;
        ok &= msgpack_pack_uint64(pk, r[i].unit) == 0;
    }
    *okp = ok;
}

static void pack_i32_array(msgpack_packer *pk, const int32_t *v, int32_t n, int *okp)
{
    int ok = *okp;
    PK(msgpack_pack_array(pk, (size_t)n));
    for (int32_t i = 0; i < n; i++) {
        PK(msgpack_pack_int32(pk, v[i]));
    }
    *okp = ok;
}

tdm_status_t xp_msg_encode(msgpack_sbuffer *out, const xp_msg_t *m, tdm_error_t *err)
{
    if (out == NULL || m == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "xp_msg_encode: NULL argument");
    }
    tdm_status_t st = xp_msg_validate(m, TDM_ERR_INVALID_PARAM, err);
    if (st != TDM_OK) {
        return st;
    }
    size_t start = out->size;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    int ok = 1;
    PK(msgpack_pack_array(&pk, 5));
    PK(msgpack_pack_str(&pk, 4));
    PK(msgpack_pack_str_body(&pk, XP_MSG_MAGIC, 4));
    PK(msgpack_pack_uint16(&pk, XP_MSG_PROTOCOL_VERSION));
    PK(msgpack_pack_uint8(&pk, (uint8_t)m->type));
    PK(msgpack_pack_uint64(&pk, m->request_id));
    switch (m->type) {
    case XP_MSG_HELLO:
        PK(msgpack_pack_array(&pk, 1));
        PK(msgpack_pack_uint64(&pk, m->hello.session));
        break;
    case XP_MSG_JOIN: {
        const xp_msg_join_t *j = &m->join;
        PK(msgpack_pack_array(&pk, 10));
        pack_str(&pk, j->tandem_version, sizeof(j->tandem_version), &ok);
        PK(msgpack_pack_uint32(&pk, j->capabilities));
        PK(msgpack_pack_array(&pk, 3));
        PK(msgpack_pack_bin_with_body(&pk, j->model.hash, sizeof(j->model.hash)));
        PK(msgpack_pack_uint64(&pk, j->model.file_size));
        PK(msgpack_pack_uint64(&pk, j->model.n_tensors));
        PK(msgpack_pack_uint64(&pk, j->session));
        PK(msgpack_pack_bin_with_body(&pk, j->ucx.data, j->ucx.len));
        PK(msgpack_pack_uint64(&pk, j->node_memory));
        PK(msgpack_pack_int32(&pk, j->threads));
        pack_str(&pk, j->name, sizeof(j->name), &ok);
        PK(msgpack_pack_uint64(&pk, j->nonce));
        PK(msgpack_pack_bin_with_body(&pk, j->auth, j->has_auth ? sizeof(j->auth) : 0));
        break;
    }
    case XP_MSG_READY: {
        const xp_msg_ready_t *r = &m->ready;
        PK(msgpack_pack_array(&pk, 11));
        PK(msgpack_pack_uint64(&pk, r->epoch));
        PK(msgpack_pack_int32(&pk, r->status));
        pack_str(&pk, r->error, sizeof(r->error), &ok);
        PK(msgpack_pack_int32(&pk, r->n_blocks));
        PK(msgpack_pack_int32(&pk, r->n_vocab));
        PK(msgpack_pack_uint64(&pk, r->weight_bytes));
        PK(msgpack_pack_uint64(&pk, r->resident_bytes));
        PK(msgpack_pack_int32(&pk, r->n_swa_blocks));
        PK(msgpack_pack_int32(&pk, r->n_state_slots));
        PK(msgpack_pack_int32(&pk, r->n_state_store));
        pack_regions(&pk, r->kv_regions, r->n_kv_regions, &ok);
        break;
    }
    case XP_MSG_JOIN_ACK:
        PK(msgpack_pack_array(&pk, 3));
        PK(m->join_ack.accepted ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
        pack_str(&pk, m->join_ack.reason, sizeof(m->join_ack.reason), &ok);
        PK(msgpack_pack_bin_with_body(&pk, m->join_ack.auth,
                                      m->join_ack.has_auth ? sizeof(m->join_ack.auth) : 0));
        break;
    case XP_MSG_LOAD: {
        const xp_msg_load_t *l = &m->load;
        const bool nccl_id = xp_msg_load_has_nccl_id(l);
        PK(msgpack_pack_array(&pk, nccl_id ? 18 : 17));
        PK(msgpack_pack_uint64(&pk, l->epoch));
        PK(msgpack_pack_int32(&pk, l->tp_rank));
        PK(msgpack_pack_int32(&pk, l->tp_size));
        PK(msgpack_pack_int32(&pk, l->ep_rank));
        PK(msgpack_pack_int32(&pk, l->ep_size));
        PK(msgpack_pack_int32(&pk, l->n_ctx));
        PK(msgpack_pack_uint64(&pk, l->kv_bytes));
        PK(msgpack_pack_int32(&pk, l->n_batch_max));
        PK(msgpack_pack_int32(&pk, l->n_out_max));
        PK(msgpack_pack_int32(&pk, l->block_tokens));
        PK(msgpack_pack_int32(&pk, l->proto));
        PK(msgpack_pack_int32(&pk, l->timeout_ms));
        PK(msgpack_pack_array(&pk, (size_t)l->n_peers));
        for (int32_t i = 0; i < l->n_peers; i++) {
            PK(msgpack_pack_bin_with_body(&pk, l->peers[i].data, l->peers[i].len));
        }
        pack_i32_array(&pk, l->expert_lo, l->n_layers, &ok);
        pack_i32_array(&pk, l->expert_n, l->n_layers, &ok);
        PK(msgpack_pack_int32(&pk, l->n_state_store));
        PK(l->kv_export ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
        if (nccl_id) {
            PK(msgpack_pack_bin_with_body(&pk, l->nccl_id, sizeof(l->nccl_id)));
        }
        break;
    }
    case XP_MSG_STEP: {
        const xp_step_t *s = &m->step;
        const bool kv = s->n_kv_sends > 0 || m->kv_peer.n_ranks > 0;
        PK(msgpack_pack_array(&pk, kv ? 9 : 8));
        PK(msgpack_pack_int32(&pk, s->n_tokens));
        pack_i32_array(&pk, s->token, s->n_tokens, &ok);
        pack_i32_array(&pk, s->pos, s->n_tokens, &ok);
        pack_i32_array(&pk, s->seq, s->n_tokens, &ok);
        PK(msgpack_pack_array(&pk, (size_t)s->n_tokens));
        for (int32_t i = 0; i < s->n_tokens; i++) {
            PK(s->want_logits[i] ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
        }
        PK(msgpack_pack_int32(&pk, s->n_logits));
        PK(msgpack_pack_int32(&pk, s->n_seqs));
        PK(msgpack_pack_array(&pk, (size_t)s->n_seqs));
        for (int32_t q = 0; q < s->n_seqs; q++) {
            const bool swa = s->seqs[q].swa_blocks != NULL;
            const bool state = s->seqs[q].state_slot >= 0;
            PK(msgpack_pack_array(&pk, (swa ? 3 : 2) + (state ? 3 : 0)));
            PK(msgpack_pack_int32(&pk, s->seqs[q].n_blocks));
            pack_i32_array(&pk, s->seqs[q].blocks, s->seqs[q].n_blocks, &ok);
            if (swa) {
                pack_i32_array(&pk, s->seqs[q].swa_blocks, s->seqs[q].n_blocks, &ok);
            }
            if (state) {
                PK(msgpack_pack_int32(&pk, s->seqs[q].state_slot));
                PK(msgpack_pack_int32(&pk, s->seqs[q].state_load));
                PK(msgpack_pack_int32(&pk, s->seqs[q].state_save));
            }
        }
        if (kv) {
            /* [peer or nil (unchanged), [[seq, lo, hi, [dst...], state_dst, [swa_dst...]]...]] */
            PK(msgpack_pack_array(&pk, 2));
            const xp_msg_kv_peer_t *p = &m->kv_peer;
            if (p->n_ranks == 0) {
                PK(msgpack_pack_nil(&pk));
            } else {
                PK(msgpack_pack_array(&pk, 2));
                PK(msgpack_pack_uint64(&pk, p->epoch));
                PK(msgpack_pack_array(&pk, (size_t)p->n_ranks));
                for (int32_t i = 0; i < p->n_ranks; i++) {
                    PK(msgpack_pack_array(&pk, 2));
                    PK(msgpack_pack_bin_with_body(&pk, p->ranks[i].addr.data,
                                                  p->ranks[i].addr.len));
                    pack_regions(&pk, p->ranks[i].regions, p->ranks[i].n_regions, &ok);
                }
            }
            PK(msgpack_pack_array(&pk, (size_t)s->n_kv_sends));
            for (int32_t i = 0; i < s->n_kv_sends; i++) {
                const xp_step_kv_send_t *k = &s->kv_sends[i];
                PK(msgpack_pack_array(&pk, 6));
                PK(msgpack_pack_int32(&pk, k->seq));
                PK(msgpack_pack_int32(&pk, k->lo));
                PK(msgpack_pack_int32(&pk, k->hi));
                pack_i32_array(&pk, k->dst, k->hi - k->lo, &ok);
                PK(msgpack_pack_int32(&pk, k->state_dst));
                pack_i32_array(&pk, k->swa_dst, k->swa_dst != NULL ? k->hi - k->lo : 0, &ok);
            }
        }
        break;
    }
    case XP_MSG_RESULT: {
        const xp_msg_result_t *r = &m->result;
        size_t bytes = (size_t)r->n_logits * (size_t)r->n_vocab * sizeof(float);
        PK(msgpack_pack_array(&pk, 11));
        PK(msgpack_pack_int32(&pk, r->status));
        pack_str(&pk, r->error, sizeof(r->error), &ok);
        PK(msgpack_pack_int32(&pk, r->n_logits));
        PK(msgpack_pack_int32(&pk, r->n_vocab));
        PK(msgpack_pack_bin(&pk, bytes));
        if (bytes > 0) {
            PK(msgpack_pack_bin_body(&pk, r->logits, bytes));
        }
        PK(msgpack_pack_uint64(&pk, r->coll_calls));
        PK(msgpack_pack_uint64(&pk, r->coll_bytes));
        PK(msgpack_pack_uint64(&pk, r->coll_ns));
        PK(msgpack_pack_uint64(&pk, r->step_ns));
        PK(msgpack_pack_uint64(&pk, r->kv_bytes));
        PK(msgpack_pack_uint64(&pk, r->kv_ns));
        break;
    }
    case XP_MSG_HEARTBEAT:
        PK(msgpack_pack_array(&pk, 3));
        PK(msgpack_pack_uint64(&pk, m->heartbeat.time_ns));
        PK(msgpack_pack_uint64(&pk, m->heartbeat.epoch));
        PK(msgpack_pack_int32(&pk, m->heartbeat.state));
        break;
    case XP_MSG_SHUTDOWN:
    default:
        PK(msgpack_pack_array(&pk, 0));
        break;
    }
    if (!ok) {
        out->size = start;
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "xp_msg_encode: out of memory encoding %s",
                             xp_msg_type_str(m->type));
    }
    return TDM_OK;
}

/* ---- decoding ---- */

static uint64_t be_read(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* One pass over the raw bytes; see the file comment. */
static tdm_status_t scan_wire(const uint8_t *p, size_t len, tdm_error_t *err)
{
    size_t off = 0;
    uint64_t pending = 1;
    while (pending > 0) {
        if (off >= len) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: truncated at byte %zu (%" PRIu64 " values missing)", off,
                                 pending);
        }
        pending--;
        uint8_t b = p[off++];
        size_t left = len - off;
        uint64_t count = 0; /* array elements that follow */
        uint64_t skip = 0;  /* payload bytes that follow  */
        int lenbytes = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, negative fixint, nil, bool */
        } else if (b >= 0x90 && b <= 0x9f) {
            count = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else if (b >= 0xcc && b <= 0xd3) {
            skip = 1u << ((b - 0xcc) & 3); /* uint8..64, int8..64 */
        } else if (b == 0xc4 || b == 0xd9) {
            lenbytes = 1;
        } else if (b == 0xc5 || b == 0xda) {
            lenbytes = 2;
        } else if (b == 0xc6 || b == 0xdb) {
            lenbytes = 4;
        } else if (b == 0xdc || b == 0xdd) {
            int n = b == 0xdc ? 2 : 4;
            if (left < (size_t)n) {
                return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: truncated array header");
            }
            count = be_read(p + off, n);
            off += (size_t)n;
            left -= (size_t)n;
        } else {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: msgpack type 0x%02x at byte %zu not allowed", b, off - 1);
        }
        if (lenbytes > 0) {
            if (left < (size_t)lenbytes) {
                return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: truncated length at byte %zu",
                                     off);
            }
            skip = be_read(p + off, lenbytes);
            off += (size_t)lenbytes;
            left -= (size_t)lenbytes;
        }
        if (skip > left) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: value at byte %zu needs %" PRIu64 " bytes, %zu left", off,
                                 skip, left);
        }
        if (count > left) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: array of %" PRIu64 " at byte %zu, only %zu bytes left",
                                 count, off, left);
        }
        off += (size_t)skip;
        pending += count;
    }
    if (off != len) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %zu trailing bytes after the message",
                             len - off);
    }
    return TDM_OK;
}

static tdm_status_t get_array(const msgpack_object *o, const char *field, uint32_t n,
                              const msgpack_object **items, tdm_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not an array", field);
    }
    if (o->via.array.size != n) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: %s has %" PRIu32 " elements, want %" PRIu32, field,
                             (uint32_t)o->via.array.size, n);
    }
    *items = o->via.array.ptr;
    return TDM_OK;
}

static tdm_status_t get_u64(const msgpack_object *o, const char *field, uint64_t max, uint64_t *out,
                            tdm_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not an unsigned integer", field);
    }
    if (o->via.u64 > max) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s = %" PRIu64 " exceeds %" PRIu64,
                             field, o->via.u64, max);
    }
    *out = o->via.u64;
    return TDM_OK;
}

/* An int32 (range rules are xp_msg_validate's, except where a count sizes an array). */
static tdm_status_t get_i32(const msgpack_object *o, const char *field, int32_t *out,
                            tdm_error_t *err)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT32_MAX) {
        *out = (int32_t)o->via.u64;
        return TDM_OK;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 >= INT32_MIN) {
        *out = (int32_t)o->via.i64;
        return TDM_OK;
    }
    return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not a 32-bit integer", field);
}

static tdm_status_t get_str(const msgpack_object *o, const char *field, char *dst, size_t cap,
                            tdm_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_STR) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not a string", field);
    }
    size_t n = o->via.str.size;
    if (n >= cap) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is %zu bytes, at most %zu", field, n,
                             cap - 1);
    }
    if (n > 0 && memchr(o->via.str.ptr, '\0', n) != NULL) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s contains a NUL byte", field);
    }
    if (n > 0) {
        memcpy(dst, o->via.str.ptr, n);
    }
    dst[n] = '\0';
    return TDM_OK;
}

static tdm_status_t get_bool(const msgpack_object *o, const char *field, bool *out,
                             tdm_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not a boolean", field);
    }
    *out = o->via.boolean;
    return TDM_OK;
}

#define TRY(call)           \
    do {                    \
        st = (call);        \
        if (st != TDM_OK) { \
            return st;      \
        }                   \
    } while (0)

static tdm_status_t decode_i32_array(const msgpack_object *o, const char *field, int32_t n,
                                     int32_t *dst, tdm_error_t *err);

static tdm_status_t get_blob(const msgpack_object *o, const char *field, xp_msg_blob_t *out,
                             tdm_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size > XP_MSG_MAX_ADDR) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not a bin of at most %d bytes",
                             field, XP_MSG_MAX_ADDR);
    }
    out->data = o->via.bin.ptr;
    out->len = (uint32_t)o->via.bin.size;
    return TDM_OK;
}

/* An HMAC of XP_MSG_AUTH_BYTES, or an empty bin (no cluster secret). */
static tdm_status_t get_auth(const msgpack_object *o, const char *field, bool *has, uint8_t *out,
                             tdm_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_BIN ||
        (o->via.bin.size != 0 && o->via.bin.size != XP_MSG_AUTH_BYTES)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not a bin of 0 or %d bytes", field,
                             XP_MSG_AUTH_BYTES);
    }
    *has = o->via.bin.size != 0;
    if (*has) {
        memcpy(out, o->via.bin.ptr, XP_MSG_AUTH_BYTES);
    }
    return TDM_OK;
}

static tdm_status_t decode_load(const msgpack_object *body, xp_msg_t *m, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *f = NULL, *pa = NULL;
    xp_msg_load_t *l = &m->load;
    /* 17 fields, or 18 with an NCCL id; which one is checked once proto and sizes are read */
    if (body->type != MSGPACK_OBJECT_ARRAY) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: LOAD body is not an array");
    }
    if (body->via.array.size != 17 && body->via.array.size != 18) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: LOAD body has %" PRIu32 " elements, want 17 (18 with an "
                             "NCCL id)",
                             (uint32_t)body->via.array.size);
    }
    f = body->via.array.ptr;
    TRY(get_u64(&f[0], "LOAD epoch", UINT64_MAX, &l->epoch, err));
    TRY(get_i32(&f[1], "LOAD tp_rank", &l->tp_rank, err));
    TRY(get_i32(&f[2], "LOAD tp_size", &l->tp_size, err));
    TRY(get_i32(&f[3], "LOAD ep_rank", &l->ep_rank, err));
    TRY(get_i32(&f[4], "LOAD ep_size", &l->ep_size, err));
    TRY(get_i32(&f[5], "LOAD n_ctx", &l->n_ctx, err));
    TRY(get_u64(&f[6], "LOAD kv_bytes", UINT64_MAX, &l->kv_bytes, err));
    TRY(get_i32(&f[7], "LOAD n_batch_max", &l->n_batch_max, err));
    TRY(get_i32(&f[8], "LOAD n_out_max", &l->n_out_max, err));
    TRY(get_i32(&f[9], "LOAD block_tokens", &l->block_tokens, err));
    TRY(get_i32(&f[10], "LOAD proto", &l->proto, err));
    TRY(get_i32(&f[11], "LOAD timeout_ms", &l->timeout_ms, err));
    const bool want_id = xp_msg_load_has_nccl_id(l);
    const int64_t ranks = (int64_t)l->tp_size * l->ep_size;
    if (want_id && body->via.array.size != 18) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: LOAD with proto 2 (nccl) over %" PRId64
                             " ranks has no NCCL id (17 elements, want 18)",
                             ranks);
    }
    if (!want_id && body->via.array.size != 17) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: LOAD body has 18 elements, want 17: an NCCL id only with "
                             "proto 2 over more than one rank (proto %" PRId32 ", %" PRId64
                             " ranks)",
                             l->proto, ranks);
    }
    TRY(get_i32(&f[15], "LOAD n_state_store", &l->n_state_store, err));
    TRY(get_bool(&f[16], "LOAD kv_export", &l->kv_export, err));
    if (want_id) {
        if (f[17].type != MSGPACK_OBJECT_BIN || f[17].via.bin.size != XP_MSG_NCCL_ID_BYTES) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: LOAD nccl_id is not a %d-byte bin",
                                 XP_MSG_NCCL_ID_BYTES);
        }
        memcpy(l->nccl_id, f[17].via.bin.ptr, XP_MSG_NCCL_ID_BYTES);
    }
    if (f[12].type != MSGPACK_OBJECT_ARRAY || f[12].via.array.size > XP_MSG_MAX_WORLD) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: LOAD peers is not an array of at most "
                             "%d",
                             XP_MSG_MAX_WORLD);
    }
    if (f[13].type != MSGPACK_OBJECT_ARRAY || f[13].via.array.size > XP_MSG_MAX_LAYERS) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: LOAD expert_lo is not an array of at "
                             "most %d",
                             XP_MSG_MAX_LAYERS);
    }
    l->n_peers = (int32_t)f[12].via.array.size;
    l->n_layers = (int32_t)f[13].via.array.size;
    pa = f[12].via.array.ptr;
    /* one allocation: the two range arrays, then the peer blobs, then their bytes */
    size_t bytes = (size_t)l->n_peers * sizeof(xp_msg_blob_t) + 2 * (size_t)l->n_layers * 4;
    for (int32_t i = 0; i < l->n_peers; i++) {
        if (pa[i].type != MSGPACK_OBJECT_BIN || pa[i].via.bin.size > XP_MSG_MAX_ADDR) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: LOAD peers[%" PRId32 "] is not a "
                                 "bin of at most %d bytes",
                                 i, XP_MSG_MAX_ADDR);
        }
        bytes += pa[i].via.bin.size;
    }
    unsigned char *mem = malloc(bytes > 0 ? bytes : 1);
    if (mem == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "xp_msg LOAD: out of memory");
    }
    m->owned_load = mem;
    int32_t *lo = (int32_t *)mem, *n = lo + l->n_layers;
    xp_msg_blob_t *peers = (xp_msg_blob_t *)(n + l->n_layers);
    unsigned char *data = (unsigned char *)(peers + l->n_peers);
    for (int32_t i = 0; i < l->n_peers; i++) {
        peers[i].len = (uint32_t)pa[i].via.bin.size;
        peers[i].data = data;
        memcpy(data, pa[i].via.bin.ptr, peers[i].len);
        data += peers[i].len;
    }
    TRY(decode_i32_array(&f[13], "LOAD expert_lo", l->n_layers, lo, err));
    TRY(decode_i32_array(&f[14], "LOAD expert_n", l->n_layers, n, err));
    l->peers = peers;
    l->expert_lo = lo;
    l->expert_n = n;
    return TDM_OK;
}

/* KV regions [[base, len, rkey bin, unit]...]: checks the shape and counts (*n, and the bytes the
 * decoded form takes: the region structs and their keys). */
static tdm_status_t size_regions(const msgpack_object *o, const char *field, int32_t *n,
                                 size_t *bytes, tdm_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > XP_MSG_MAX_KV_REGIONS) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not an array of at most %d", field,
                             XP_MSG_MAX_KV_REGIONS);
    }
    *n = (int32_t)o->via.array.size;
    *bytes += (size_t)*n * sizeof(xp_msg_kv_region_t);
    for (int32_t i = 0; i < *n; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 4 ||
            e->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            e->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            e->via.array.ptr[2].type != MSGPACK_OBJECT_BIN ||
            e->via.array.ptr[2].via.bin.size > XP_MSG_MAX_ADDR ||
            e->via.array.ptr[3].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: %s[%" PRId32 "] is not [base, len, rkey bin, unit]",
                                 field, i);
        }
        *bytes += e->via.array.ptr[2].via.bin.size;
    }
    return TDM_OK;
}

/* Fills n regions from o (checked by size_regions), their keys copied at *data. */
static void fill_regions(const msgpack_object *o, xp_msg_kv_region_t *r, unsigned char **data)
{
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = o->via.array.ptr[i].via.array.ptr;
        r[i].base = e[0].via.u64;
        r[i].len = e[1].via.u64;
        r[i].unit = e[3].via.u64;
        r[i].rkey.len = (uint32_t)e[2].via.bin.size;
        r[i].rkey.data = *data;
        if (r[i].rkey.len > 0) {
            memcpy(*data, e[2].via.bin.ptr, r[i].rkey.len);
        }
        *data += r[i].rkey.len;
    }
}

/* STEP's 9th field: [peer or nil, [[seq, lo, hi, [dst...], state_dst, [swa_dst...]]...]] (ranges
 * checked by xp_msg_validate). */
static tdm_status_t decode_step_kv(const msgpack_object *o, xp_msg_t *m, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *f = NULL, *pr = NULL, *ranks = NULL;
    TRY(get_array(o, "STEP kv", 2, &f, err));
    int32_t n_ranks = 0;
    size_t bytes = 0;
    if (f[0].type != MSGPACK_OBJECT_NIL) {
        TRY(get_array(&f[0], "STEP kv peer", 2, &pr, err));
        if (pr[1].type != MSGPACK_OBJECT_ARRAY || pr[1].via.array.size < 1 ||
            pr[1].via.array.size > XP_MSG_MAX_WORLD) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: STEP kv peer ranks is not an array of 1 to %d",
                                 XP_MSG_MAX_WORLD);
        }
        n_ranks = (int32_t)pr[1].via.array.size;
        ranks = pr[1].via.array.ptr;
        bytes += (size_t)n_ranks * sizeof(xp_msg_kv_rank_t);
        for (int32_t i = 0; i < n_ranks; i++) {
            const msgpack_object *e = NULL;
            int32_t n = 0;
            TRY(get_array(&ranks[i], "STEP kv peer rank", 2, &e, err));
            if (e[0].type != MSGPACK_OBJECT_BIN || e[0].via.bin.size > XP_MSG_MAX_ADDR) {
                return tdm_error_set(err, TDM_ERR_FORMAT,
                                     "xp_msg: STEP kv peer rank %" PRId32 " address is not a bin",
                                     i);
            }
            bytes += e[0].via.bin.size;
            TRY(size_regions(&e[1], "STEP kv peer regions", &n, &bytes, err));
        }
    }
    const msgpack_object *sd = &f[1];
    if (sd->type != MSGPACK_OBJECT_ARRAY || sd->via.array.size > XP_MSG_MAX_SEQS) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: STEP kv sends is not an array");
    }
    const int32_t n_sends = (int32_t)sd->via.array.size;
    bytes += (size_t)n_sends * sizeof(xp_step_kv_send_t);
    for (int32_t i = 0; i < n_sends; i++) {
        const msgpack_object *e = NULL;
        TRY(get_array(&sd->via.array.ptr[i], "STEP kv send", 6, &e, err));
        if (e[3].type != MSGPACK_OBJECT_ARRAY || e[3].via.array.size > XP_MSG_MAX_BLOCKS) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: STEP kv send dst is not an array");
        }
        if (e[5].type != MSGPACK_OBJECT_ARRAY ||
            (e[5].via.array.size != 0 && e[5].via.array.size != e[3].via.array.size)) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: STEP kv send swa_dst is neither [] nor one id per dst");
        }
        bytes += (size_t)(e[3].via.array.size + e[5].via.array.size) * sizeof(int32_t);
    }
    /* one allocation, most aligned first: ranks, regions and sends, then ids, then bytes */
    unsigned char *mem = malloc(bytes > 0 ? bytes : 1);
    if (mem == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "xp_msg STEP: out of memory (kv)");
    }
    m->owned_kv = mem;
    xp_msg_kv_rank_t *rk = (xp_msg_kv_rank_t *)mem;
    size_t n_regions = 0, n_ids = 0;
    for (int32_t i = 0; i < n_ranks; i++) {
        n_regions += ranks[i].via.array.ptr[1].via.array.size;
    }
    xp_msg_kv_region_t *rg = (xp_msg_kv_region_t *)(rk + n_ranks);
    xp_step_kv_send_t *ks = (xp_step_kv_send_t *)(rg + n_regions);
    for (int32_t i = 0; i < n_sends; i++) {
        n_ids += sd->via.array.ptr[i].via.array.ptr[3].via.array.size +
                 sd->via.array.ptr[i].via.array.ptr[5].via.array.size;
    }
    int32_t *ids = (int32_t *)(ks + n_sends);
    unsigned char *data = (unsigned char *)(ids + n_ids);
    for (int32_t i = 0; i < n_ranks; i++) {
        const msgpack_object *e = ranks[i].via.array.ptr;
        rk[i].addr.len = (uint32_t)e[0].via.bin.size;
        rk[i].addr.data = data;
        if (rk[i].addr.len > 0) {
            memcpy(data, e[0].via.bin.ptr, rk[i].addr.len);
        }
        data += rk[i].addr.len;
        rk[i].n_regions = (int32_t)e[1].via.array.size;
        rk[i].regions = rg;
        fill_regions(&e[1], rg, &data);
        rg += rk[i].n_regions;
    }
    if (n_ranks > 0) {
        TRY(get_u64(&pr[0], "STEP kv peer epoch", UINT64_MAX, &m->kv_peer.epoch, err));
        m->kv_peer.n_ranks = n_ranks;
        m->kv_peer.ranks = rk;
    }
    for (int32_t i = 0; i < n_sends; i++) {
        const msgpack_object *e = sd->via.array.ptr[i].via.array.ptr;
        TRY(get_i32(&e[0], "STEP kv send seq", &ks[i].seq, err));
        TRY(get_i32(&e[1], "STEP kv send lo", &ks[i].lo, err));
        TRY(get_i32(&e[2], "STEP kv send hi", &ks[i].hi, err));
        const int32_t n = (int32_t)e[3].via.array.size;
        if ((int64_t)ks[i].hi - ks[i].lo != n) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: STEP kv send [%" PRId32 ", %" PRId32 ") with %" PRId32
                                 " destinations",
                                 ks[i].lo, ks[i].hi, n);
        }
        TRY(decode_i32_array(&e[3], "STEP kv send dst", n, ids, err));
        TRY(get_i32(&e[4], "STEP kv send state_dst", &ks[i].state_dst, err));
        ks[i].dst = ids;
        ids += n;
        ks[i].swa_dst = NULL;
        if (e[5].via.array.size > 0) {
            TRY(decode_i32_array(&e[5], "STEP kv send swa_dst", n, ids, err));
            ks[i].swa_dst = ids;
            ids += n;
        }
    }
    m->step.n_kv_sends = n_sends;
    m->step.kv_sends = ks;
    return TDM_OK;
}

static tdm_status_t decode_ready(const msgpack_object *body, xp_msg_t *m, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *f = NULL;
    xp_msg_ready_t *r = &m->ready;
    TRY(get_array(body, "READY body", 11, &f, err));
    TRY(get_u64(&f[0], "READY epoch", UINT64_MAX, &r->epoch, err));
    TRY(get_i32(&f[1], "READY status", &r->status, err));
    TRY(get_str(&f[2], "READY error", r->error, sizeof(r->error), err));
    TRY(get_i32(&f[3], "READY n_blocks", &r->n_blocks, err));
    TRY(get_i32(&f[4], "READY n_vocab", &r->n_vocab, err));
    TRY(get_u64(&f[5], "READY weight_bytes", UINT64_MAX, &r->weight_bytes, err));
    TRY(get_u64(&f[6], "READY resident_bytes", UINT64_MAX, &r->resident_bytes, err));
    TRY(get_i32(&f[7], "READY n_swa_blocks", &r->n_swa_blocks, err));
    TRY(get_i32(&f[8], "READY n_state_slots", &r->n_state_slots, err));
    TRY(get_i32(&f[9], "READY n_state_store", &r->n_state_store, err));
    size_t bytes = 0;
    int32_t n = 0;
    TRY(size_regions(&f[10], "READY kv_regions", &n, &bytes, err));
    unsigned char *mem = malloc(bytes > 0 ? bytes : 1);
    if (mem == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "xp_msg READY: out of memory");
    }
    m->owned_load = mem;
    xp_msg_kv_region_t *rg = (xp_msg_kv_region_t *)mem;
    unsigned char *data = (unsigned char *)(rg + n);
    fill_regions(&f[10], rg, &data);
    r->n_kv_regions = n;
    r->kv_regions = rg;
    return TDM_OK;
}

static tdm_status_t decode_join(const msgpack_object *body, xp_msg_t *m, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *f = NULL, *id = NULL;
    uint64_t v = 0;
    TRY(get_array(body, "JOIN body", 10, &f, err));
    TRY(get_str(&f[0], "JOIN tandem_version", m->join.tandem_version,
                sizeof(m->join.tandem_version), err));
    TRY(get_u64(&f[1], "JOIN capabilities", UINT32_MAX, &v, err));
    m->join.capabilities = (uint32_t)v;
    TRY(get_array(&f[2], "JOIN model", 3, &id, err));
    if (id[0].type != MSGPACK_OBJECT_BIN || id[0].via.bin.size != XP_MSG_MODEL_HASH_BYTES) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: JOIN model hash is not a %d-byte bin",
                             XP_MSG_MODEL_HASH_BYTES);
    }
    memcpy(m->join.model.hash, id[0].via.bin.ptr, XP_MSG_MODEL_HASH_BYTES);
    TRY(get_u64(&id[1], "JOIN model file_size", UINT64_MAX, &m->join.model.file_size, err));
    TRY(get_u64(&id[2], "JOIN model n_tensors", UINT64_MAX, &m->join.model.n_tensors, err));
    TRY(get_u64(&f[3], "JOIN session", UINT64_MAX, &m->join.session, err));
    TRY(get_blob(&f[4], "JOIN ucx_address", &m->join.ucx, err));
    /* the address points into the unpacked zone: copy it into owned storage */
    void *addr = malloc(m->join.ucx.len > 0 ? m->join.ucx.len : 1);
    if (addr == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "xp_msg JOIN: out of memory");
    }
    memcpy(addr, m->join.ucx.data, m->join.ucx.len);
    m->owned_load = addr;
    m->join.ucx.data = addr;
    TRY(get_u64(&f[5], "JOIN node_memory", UINT64_MAX, &m->join.node_memory, err));
    TRY(get_i32(&f[6], "JOIN threads", &m->join.threads, err));
    TRY(get_str(&f[7], "JOIN name", m->join.name, sizeof(m->join.name), err));
    TRY(get_u64(&f[8], "JOIN nonce", UINT64_MAX, &m->join.nonce, err));
    TRY(get_auth(&f[9], "JOIN auth", &m->join.has_auth, m->join.auth, err));
    return TDM_OK;
}

static tdm_status_t decode_i32_array(const msgpack_object *o, const char *field, int32_t n,
                                     int32_t *dst, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *a = NULL;
    TRY(get_array(o, field, (uint32_t)n, &a, err));
    for (int32_t i = 0; i < n; i++) {
        if (get_i32(&a[i], field, &dst[i], NULL) != TDM_OK) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: %s[%" PRId32 "] is not a 32-bit integer", field, i);
        }
    }
    return TDM_OK;
}

static tdm_status_t decode_step(const msgpack_object *body, xp_msg_t *m, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *f = NULL, *wl = NULL, *sq = NULL;
    xp_step_t *s = &m->step;
    /* 8 fields, 9 with disaggregated prefill's K/V sends (decode_step_kv) */
    if (body->type != MSGPACK_OBJECT_ARRAY ||
        (body->via.array.size != 8 && body->via.array.size != 9)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: STEP body is not an array of 8 or 9");
    }
    f = body->via.array.ptr;
    TRY(get_i32(&f[0], "STEP n_tokens", &s->n_tokens, err));
    if (s->n_tokens < 0 || s->n_tokens > XP_MSG_MAX_TOKENS) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg STEP: n_tokens %" PRId32 " outside [0, %d]", s->n_tokens,
                             XP_MSG_MAX_TOKENS);
    }
    TRY(get_i32(&f[6], "STEP n_seqs", &s->n_seqs, err));
    if (s->n_seqs < 0 || s->n_seqs > XP_MSG_MAX_SEQS) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg STEP: n_seqs %" PRId32 " outside [0, %d]",
                             s->n_seqs, XP_MSG_MAX_SEQS);
    }
    TRY(get_i32(&f[5], "STEP n_logits", &s->n_logits, err));
    TRY(get_array(&f[4], "STEP want_logits", (uint32_t)s->n_tokens, &wl, err));
    TRY(get_array(&f[7], "STEP seqs", (uint32_t)s->n_seqs, &sq, err));

    /* Sizes are known once every seq's block count is read: one int32 allocation. A seq
     * is [n_blocks, blocks] or, with a sliding-window table, [n_blocks, blocks, swa], each
     * optionally followed by state_slot, state_load, state_save. */
    size_t total = 3 * (size_t)s->n_tokens;
    for (int32_t q = 0; q < s->n_seqs; q++) {
        int32_t nb = 0;
        char field[64];
        snprintf(field, sizeof(field), "STEP seqs[%" PRId32 "]", q);
        if (sq[q].type != MSGPACK_OBJECT_ARRAY || sq[q].via.array.size < 2 ||
            sq[q].via.array.size > 6 || sq[q].via.array.size == 4) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s is not an array of 2, 3, 5 or 6",
                                 field);
        }
        const msgpack_object *e = sq[q].via.array.ptr;
        snprintf(field, sizeof(field), "STEP seqs[%" PRId32 "].n_blocks", q);
        TRY(get_i32(&e[0], field, &nb, err));
        if (nb < 0 || nb > XP_MSG_MAX_BLOCKS) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s = %" PRId32 " outside [0, %d]",
                                 field, nb, XP_MSG_MAX_BLOCKS);
        }
        /* bounded by the input length (scan_wire): each id is at least one byte */
        const uint32_t size = sq[q].via.array.size;
        total += size == 3 || size == 6 ? 2 * (size_t)nb : (size_t)nb;
    }
    int32_t *i32 = malloc(total > 0 ? total * sizeof(int32_t) : 1);
    uint8_t *u8 = malloc(s->n_tokens > 0 ? (size_t)s->n_tokens : 1);
    xp_step_seq_t *seqs = malloc(s->n_seqs > 0 ? (size_t)s->n_seqs * sizeof(*seqs) : 1);
    m->owned_i32 = i32;
    m->owned_u8 = u8;
    m->owned_seqs = seqs;
    if (i32 == NULL || u8 == NULL || seqs == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "xp_msg STEP: out of memory (%zu ids)", total);
    }
    int32_t *token = i32, *pos = i32 + s->n_tokens, *seq = i32 + 2 * (size_t)s->n_tokens;
    TRY(decode_i32_array(&f[1], "STEP token", s->n_tokens, token, err));
    TRY(decode_i32_array(&f[2], "STEP pos", s->n_tokens, pos, err));
    TRY(decode_i32_array(&f[3], "STEP seq", s->n_tokens, seq, err));
    for (int32_t i = 0; i < s->n_tokens; i++) {
        bool b = false;
        if (get_bool(&wl[i], "STEP want_logits", &b, NULL) != TDM_OK) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: STEP want_logits[%" PRId32 "] is not a boolean", i);
        }
        u8[i] = b ? 1 : 0;
    }
    int32_t *blocks = i32 + 3 * (size_t)s->n_tokens;
    for (int32_t q = 0; q < s->n_seqs; q++) {
        const msgpack_object *e = sq[q].via.array.ptr;
        char field[64];
        seqs[q].n_blocks = (int32_t)e[0].via.u64; /* checked above */
        seqs[q].blocks = blocks;
        seqs[q].swa_blocks = NULL;
        seqs[q].state_slot = seqs[q].state_load = seqs[q].state_save = -1;
        snprintf(field, sizeof(field), "STEP seqs[%" PRId32 "].blocks", q);
        TRY(decode_i32_array(&e[1], field, seqs[q].n_blocks, blocks, err));
        blocks += seqs[q].n_blocks;
        const uint32_t size = sq[q].via.array.size;
        if (size == 3 || size == 6) {
            seqs[q].swa_blocks = blocks;
            snprintf(field, sizeof(field), "STEP seqs[%" PRId32 "].swa_blocks", q);
            TRY(decode_i32_array(&e[2], field, seqs[q].n_blocks, blocks, err));
            blocks += seqs[q].n_blocks;
        }
        if (size >= 5) {
            /* the recurrent state: a slot, and stored states to load / save or -1 (the
             * shard checks them against its cache) */
            const msgpack_object *st3 = &e[size - 3];
            int32_t *dst[3] = {&seqs[q].state_slot, &seqs[q].state_load, &seqs[q].state_save};
            for (int i = 0; i < 3; i++) {
                snprintf(field, sizeof(field), "STEP seqs[%" PRId32 "].state[%d]", q, i);
                TRY(get_i32(&st3[i], field, dst[i], err));
                const int32_t lo = i == 0 ? 0 : i == 1 ? XP_STATE_GIVEN : -1;
                if (*dst[i] < lo) {
                    return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: %s = %" PRId32 " below %d",
                                         field, *dst[i], (int)lo);
                }
            }
        }
    }
    s->token = token;
    s->pos = pos;
    s->seq = seq;
    s->want_logits = u8;
    s->seqs = seqs;
    if (body->via.array.size == 9) {
        TRY(decode_step_kv(&f[8], m, err));
    }
    return TDM_OK;
}

static tdm_status_t decode_result(const msgpack_object *body, xp_msg_t *m, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *f = NULL;
    xp_msg_result_t *r = &m->result;
    TRY(get_array(body, "RESULT body", 11, &f, err));
    TRY(get_u64(&f[9], "RESULT kv_bytes", UINT64_MAX, &r->kv_bytes, err));
    TRY(get_u64(&f[10], "RESULT kv_ns", UINT64_MAX, &r->kv_ns, err));
    TRY(get_u64(&f[5], "RESULT coll_calls", UINT64_MAX, &r->coll_calls, err));
    TRY(get_u64(&f[6], "RESULT coll_bytes", UINT64_MAX, &r->coll_bytes, err));
    TRY(get_u64(&f[7], "RESULT coll_ns", UINT64_MAX, &r->coll_ns, err));
    TRY(get_u64(&f[8], "RESULT step_ns", UINT64_MAX, &r->step_ns, err));
    TRY(get_i32(&f[0], "RESULT status", &r->status, err));
    TRY(get_str(&f[1], "RESULT error", r->error, sizeof(r->error), err));
    TRY(get_i32(&f[2], "RESULT n_logits", &r->n_logits, err));
    TRY(get_i32(&f[3], "RESULT n_vocab", &r->n_vocab, err));
    if (f[4].type != MSGPACK_OBJECT_BIN) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: RESULT logits is not a bin");
    }
    if (r->n_logits < 0 || r->n_vocab < 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg RESULT: n_logits %" PRId32 " / n_vocab %" PRId32 " negative",
                             r->n_logits, r->n_vocab);
    }
    uint64_t want = (uint64_t)r->n_logits * (uint64_t)r->n_vocab * sizeof(float);
    if ((uint64_t)f[4].via.bin.size != want) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: RESULT logits blob is %" PRIu32 " bytes, n_logits %" PRId32
                             " * n_vocab %" PRId32 " * 4 = %" PRIu64,
                             (uint32_t)f[4].via.bin.size, r->n_logits, r->n_vocab, want);
    }
    if (want > 0) {
        float *lg = malloc((size_t)want);
        if (lg == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                                 "xp_msg RESULT: out of memory (%" PRIu64 " bytes of logits)",
                                 want);
        }
        memcpy(lg, f[4].via.bin.ptr, (size_t)want);
        m->owned_f32 = lg;
        r->logits = lg;
    }
    return TDM_OK;
}

static tdm_status_t decode_object(const msgpack_object *root, xp_msg_t *m, tdm_error_t *err)
{
    tdm_status_t st;
    const msgpack_object *h = NULL, *f = NULL;
    uint64_t v = 0;
    TRY(get_array(root, "message", 5, &h, err));
    if (h[0].type != MSGPACK_OBJECT_STR || h[0].via.str.size != 4 ||
        memcmp(h[0].via.str.ptr, XP_MSG_MAGIC, 4) != 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: magic is not \"" XP_MSG_MAGIC "\"");
    }
    TRY(get_u64(&h[1], "version", UINT16_MAX, &v, err));
    if (v != XP_MSG_PROTOCOL_VERSION) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "xp_msg: protocol version %" PRIu64 ", this build speaks %d", v,
                             XP_MSG_PROTOCOL_VERSION);
    }
    m->version = (uint16_t)v;
    TRY(get_u64(&h[2], "type", UINT8_MAX, &v, err));
    if (v < XP_MSG_HELLO || v >= XP_MSG_TYPE_END) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: type %" PRIu64 " unknown", v);
    }
    m->type = (xp_msg_type_t)v;
    TRY(get_u64(&h[3], "request_id", UINT64_MAX, &m->request_id, err));
    const msgpack_object *body = &h[4];
    switch (m->type) {
    case XP_MSG_HELLO:
        TRY(get_array(body, "HELLO body", 1, &f, err));
        TRY(get_u64(&f[0], "HELLO session", UINT64_MAX, &m->hello.session, err));
        break;
    case XP_MSG_JOIN:
        TRY(decode_join(body, m, err));
        break;
    case XP_MSG_READY:
        TRY(decode_ready(body, m, err));
        break;
    case XP_MSG_JOIN_ACK:
        TRY(get_array(body, "JOIN_ACK body", 3, &f, err));
        TRY(get_bool(&f[0], "JOIN_ACK accepted", &m->join_ack.accepted, err));
        TRY(get_str(&f[1], "JOIN_ACK reason", m->join_ack.reason, sizeof(m->join_ack.reason), err));
        TRY(get_auth(&f[2], "JOIN_ACK auth", &m->join_ack.has_auth, m->join_ack.auth, err));
        break;
    case XP_MSG_LOAD:
        TRY(decode_load(body, m, err));
        break;
    case XP_MSG_STEP:
        TRY(decode_step(body, m, err));
        break;
    case XP_MSG_RESULT:
        TRY(decode_result(body, m, err));
        break;
    case XP_MSG_HEARTBEAT:
        TRY(get_array(body, "HEARTBEAT body", 3, &f, err));
        TRY(get_u64(&f[0], "HEARTBEAT time_ns", UINT64_MAX, &m->heartbeat.time_ns, err));
        TRY(get_u64(&f[1], "HEARTBEAT epoch", UINT64_MAX, &m->heartbeat.epoch, err));
        TRY(get_i32(&f[2], "HEARTBEAT state", &m->heartbeat.state, err));
        break;
    case XP_MSG_SHUTDOWN:
    default:
        TRY(get_array(body, "SHUTDOWN body", 0, &f, err));
        break;
    }
    return xp_msg_validate(m, TDM_ERR_FORMAT, err);
}

tdm_status_t xp_msg_decode(const void *data, size_t len, xp_msg_t *out, tdm_error_t *err)
{
    if (out == NULL || (data == NULL && len > 0)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "xp_msg_decode: NULL argument");
    }
    if (len == 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: empty message");
    }
    tdm_status_t st = scan_wire(data, len, err);
    if (st != TDM_OK) {
        return st;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&u, data, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        msgpack_unpacked_destroy(&u);
        if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "xp_msg: msgpack nesting too deep or out "
                                 "of memory");
        }
        return tdm_error_set(err, TDM_ERR_FORMAT, "xp_msg: msgpack unpack failed (%d)", (int)ur);
    }
    xp_msg_t m;
    memset(&m, 0, sizeof(m));
    st = decode_object(&u.data, &m, err);
    msgpack_unpacked_destroy(&u);
    if (st != TDM_OK) {
        xp_msg_free(&m);
        return st;
    }
    *out = m;
    return TDM_OK;
}

void xp_msg_free(xp_msg_t *msg)
{
    if (msg == NULL) {
        return;
    }
    free(msg->owned_i32);
    free(msg->owned_u8);
    free(msg->owned_seqs);
    free(msg->owned_f32);
    free(msg->owned_load);
    free(msg->owned_kv);
    memset(msg, 0, sizeof(*msg));
}
