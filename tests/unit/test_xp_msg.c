/*
 * test_xp_msg.c - the control-plane message codec (protocol version 2): seeded round trips
 * of every message type compared field by field, every truncation of every type, 10,000
 * seeded bit flips, hand-made malformed messages that must be refused with TDM_ERR_FORMAT
 * naming the field, and invalid messages the encoder must refuse exactly as the decoder does.
 * LOAD is covered with and without its NCCL id (17 fields when proto is nccl over more than
 * one rank, else 16).
 *
 * `test_xp_msg --write-corpus DIR` writes the fuzz seed corpus (tests/fuzz/corpus/xp_msg):
 * one valid message per type, named seed-<type>, a LOAD with an NCCL id, seed-load-nccl, and
 * STEPs with sliding-window tables (seed-step-swa), recurrent-state slots (seed-step-state) and
 * disaggregated prefill's K/V sends and peer (seed-step-kv).
 */
#include "transport/xp_msg.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---- seeded generator ---- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static uint32_t rng_below(uint64_t *s, uint32_t n)
{
    return n == 0 ? 0 : (uint32_t)(rng_next(s) % n);
}

/* A u64 of random magnitude, so every msgpack integer width appears. */
static uint64_t rand_u64(uint64_t *s)
{
    return rng_next(s) >> rng_below(s, 64);
}

/* An int32 in [0, INT32_MAX] of random magnitude. */
static int32_t rand_nonneg(uint64_t *s)
{
    return (int32_t)((uint32_t)rng_next(s) >> (1 + rng_below(s, 31)));
}

/* Any int32 (negative ones too) of random magnitude. */
static int32_t rand_i32(uint64_t *s)
{
    int32_t v = rand_nonneg(s);
    return rng_below(s, 2) ? -v - 1 : v;
}

#define GEN_TOKENS     300
#define GEN_SEQS       8
#define GEN_BLOCKS     20
#define GEN_LOGITS     8
#define GEN_VOCAB      50
#define GEN_PEERS      5   /* peer addresses of a generated LOAD: 1..5 */
#define GEN_ADDR       200 /* bytes of a generated UCX address: 1..200 */
#define GEN_LAYERS     64  /* expert-range layers of a generated LOAD: 0..64 */
#define GEN_KV_REGIONS 6   /* KV regions of a generated READY or STEP peer rank: 0..6 */
#define GEN_RKEY       40  /* bytes of a generated rkey: 1..40 */

typedef struct gen_store {
    int32_t token[GEN_TOKENS], pos[GEN_TOKENS], seq[GEN_TOKENS];
    uint8_t want[GEN_TOKENS];
    int32_t blocks[GEN_SEQS][GEN_BLOCKS];
    int32_t swa_blocks[GEN_SEQS][GEN_BLOCKS];
    xp_step_seq_t seqs[GEN_SEQS];
    float logits[GEN_LOGITS * GEN_VOCAB];
    uint8_t ucx[GEN_ADDR];
    uint8_t peer_bytes[GEN_PEERS][GEN_ADDR];
    xp_msg_blob_t peers[GEN_PEERS];
    /* sized for the hand-made "too many layers" LOAD; the generator uses GEN_LAYERS */
    int32_t expert_lo[XP_MSG_MAX_LAYERS + 1], expert_n[XP_MSG_MAX_LAYERS + 1];
    uint8_t big_addr[XP_MSG_MAX_ADDR + 1];
    /* disaggregated prefill: READY's regions, STEP's peer and sends */
    xp_msg_kv_region_t regions[GEN_PEERS][GEN_KV_REGIONS];
    uint8_t rkeys[GEN_PEERS][GEN_KV_REGIONS][GEN_RKEY];
    xp_msg_kv_rank_t ranks[GEN_PEERS];
    xp_step_kv_send_t sends[GEN_SEQS];
    int32_t dst[GEN_SEQS][GEN_BLOCKS];
    int32_t swa_dst[GEN_SEQS][GEN_BLOCKS];
} gen_store_t;

static void rand_str(uint64_t *s, char *dst, size_t cap)
{
    size_t n = rng_below(s, (uint32_t)cap);
    for (size_t i = 0; i < n; i++) {
        dst[i] = (char)(1 + rng_below(s, 255)); /* any byte but NUL, UTF-8 or not */
    }
    dst[n] = '\0';
}

static void rand_blob(uint64_t *s, uint8_t *bytes, xp_msg_blob_t *b)
{
    b->len = 1 + rng_below(s, GEN_ADDR);
    for (uint32_t i = 0; i < b->len; i++) {
        bytes[i] = (uint8_t)rng_next(s);
    }
    b->data = bytes;
}

/* A random valid LOAD: n_peers = tp_size * ep_size in 1..GEN_PEERS, 0..GEN_LAYERS layers. */
static void gen_load(uint64_t *s, gen_store_t *g, xp_msg_load_t *l)
{
    l->epoch = rand_u64(s);
    l->n_peers = 1 + (int32_t)rng_below(s, GEN_PEERS);
    int32_t divisors[GEN_PEERS], n_div = 0;
    for (int32_t d = 1; d <= l->n_peers; d++) {
        if (l->n_peers % d == 0) {
            divisors[n_div++] = d;
        }
    }
    l->tp_size = divisors[rng_below(s, (uint32_t)n_div)];
    l->ep_size = l->n_peers / l->tp_size;
    l->tp_rank = (int32_t)rng_below(s, (uint32_t)l->tp_size);
    l->ep_rank = (int32_t)rng_below(s, (uint32_t)l->ep_size);
    l->n_ctx = 1 + (int32_t)rng_below(s, 1 << 20);
    l->kv_bytes = rand_u64(s);
    l->n_batch_max = 1 + (int32_t)rng_below(s, rng_below(s, 2) ? 1u << 16 : INT32_MAX);
    l->n_out_max = 1 + (int32_t)rng_below(s, (uint32_t)l->n_batch_max);
    l->block_tokens = 1 + (int32_t)rng_below(s, 1024);
    l->proto = (int32_t)rng_below(s, 3); /* am, rma, nccl */
    l->timeout_ms = 1 + (int32_t)rng_below(s, INT32_MAX);
    /* random bytes either way: the encoder must ignore them when the LOAD carries no id */
    for (int i = 0; i < XP_MSG_NCCL_ID_BYTES; i++) {
        l->nccl_id[i] = (uint8_t)rng_next(s);
    }
    for (int32_t i = 0; i < l->n_peers; i++) {
        rand_blob(s, g->peer_bytes[i], &g->peers[i]);
    }
    l->peers = g->peers;
    l->n_layers = rng_below(s, 4) == 0 ? 0 : (int32_t)rng_below(s, GEN_LAYERS + 1);
    for (int32_t i = 0; i < l->n_layers; i++) {
        g->expert_lo[i] = rand_nonneg(s);
        g->expert_n[i] = (int32_t)rng_below(s, (uint32_t)(INT32_MAX - g->expert_lo[i]) + 1);
    }
    l->expert_lo = g->expert_lo;
    l->expert_n = g->expert_n;
    l->n_state_store = (int32_t)rng_below(s, XP_MSG_MAX_STATE_STORE + 1);
    l->kv_export = rng_below(s, 2);
}

/* n random KV regions of rank r (empty ones have no key). */
static int32_t gen_regions(uint64_t *s, gen_store_t *g, int r)
{
    const int32_t n = (int32_t)rng_below(s, GEN_KV_REGIONS + 1);
    for (int32_t i = 0; i < n; i++) {
        xp_msg_kv_region_t *x = &g->regions[r][i];
        x->len = rng_below(s, 4) == 0 ? 0 : 1 + rng_below(s, 1u << 30);
        x->unit = x->len == 0 ? 0 : 1 + rng_below(s, (uint32_t)x->len);
        x->base = rand_u64(s) >> 2;
        x->rkey.len = x->len == 0 ? 0 : 1 + rng_below(s, GEN_RKEY);
        for (uint32_t j = 0; j < x->rkey.len; j++) {
            g->rkeys[r][i][j] = (uint8_t)rng_next(s);
        }
        x->rkey.data = g->rkeys[r][i];
    }
    return n;
}

/* A random valid message of the given type; arrays live in g. */
static void gen_msg(uint64_t *s, xp_msg_type_t type, gen_store_t *g, xp_msg_t *m)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->request_id = rng_next(s);
    switch (type) {
    case XP_MSG_HELLO:
        m->hello.session = rand_u64(s);
        break;
    case XP_MSG_JOIN:
        rand_str(s, m->join.tandem_version, sizeof(m->join.tandem_version));
        m->join.capabilities = (uint32_t)rng_next(s);
        for (int i = 0; i < XP_MSG_MODEL_HASH_BYTES; i++) {
            m->join.model.hash[i] = (uint8_t)rng_next(s);
        }
        m->join.model.file_size = rand_u64(s);
        m->join.model.n_tensors = rand_u64(s);
        m->join.session = rand_u64(s);
        rand_blob(s, g->ucx, &m->join.ucx);
        m->join.node_memory = rand_u64(s);
        m->join.threads = rand_nonneg(s);
        rand_str(s, m->join.name, sizeof(m->join.name));
        m->join.nonce = rand_u64(s);
        m->join.has_auth = rng_below(s, 2);
        for (int i = 0; m->join.has_auth && i < XP_MSG_AUTH_BYTES; i++) {
            m->join.auth[i] = (uint8_t)rng_next(s);
        }
        break;
    case XP_MSG_JOIN_ACK:
        m->join_ack.accepted = rng_below(s, 2);
        rand_str(s, m->join_ack.reason, sizeof(m->join_ack.reason));
        m->join_ack.has_auth = rng_below(s, 2);
        for (int i = 0; m->join_ack.has_auth && i < XP_MSG_AUTH_BYTES; i++) {
            m->join_ack.auth[i] = (uint8_t)rng_next(s);
        }
        break;
    case XP_MSG_LOAD:
        gen_load(s, g, &m->load);
        break;
    case XP_MSG_READY:
        m->ready.epoch = rand_u64(s);
        m->ready.status = (int32_t)rng_below(s, TDM_STATUS_COUNT);
        rand_str(s, m->ready.error, sizeof(m->ready.error));
        m->ready.n_blocks = rand_nonneg(s);
        m->ready.n_vocab = (int32_t)rng_below(s, XP_MSG_MAX_VOCAB + 1);
        m->ready.weight_bytes = rand_u64(s);
        m->ready.resident_bytes = rand_u64(s);
        m->ready.n_swa_blocks = rng_below(s, 2) ? rand_nonneg(s) : 0;
        m->ready.n_state_slots = rng_below(s, 2) ? rand_nonneg(s) : 0;
        m->ready.n_state_store = rng_below(s, 2) ? rand_nonneg(s) : 0;
        m->ready.n_kv_regions = gen_regions(s, g, 0);
        m->ready.kv_regions = g->regions[0];
        break;
    case XP_MSG_STEP: {
        xp_step_t *st = &m->step;
        st->n_seqs = (int32_t)rng_below(s, GEN_SEQS + 1);
        st->n_tokens = st->n_seqs == 0 ? 0 : (int32_t)rng_below(s, GEN_TOKENS + 1);
        for (int32_t i = 0; i < st->n_tokens; i++) {
            g->token[i] = rand_nonneg(s);
            g->pos[i] = (int32_t)rng_below(s, 1 << 17);
            g->seq[i] = (int32_t)rng_below(s, (uint32_t)st->n_seqs);
            g->want[i] = (uint8_t)rng_below(s, 2);
            st->n_logits += g->want[i];
        }
        const bool swa = rng_below(s, 2); /* a model with a sliding pool: every seq */
        for (int32_t q = 0; q < st->n_seqs; q++) {
            g->seqs[q].n_blocks = (int32_t)rng_below(s, GEN_BLOCKS + 1);
            g->seqs[q].blocks = g->blocks[q];
            g->seqs[q].swa_blocks = swa ? g->swa_blocks[q] : NULL;
            /* a recurrent-state slot (and stored states to load / save) or none */
            const bool state = rng_below(s, 2);
            g->seqs[q].state_slot = state ? rand_nonneg(s) : -1;
            /* a stored state, or (disaggregated decode) the state a prefill group put */
            g->seqs[q].state_load = !state                 ? -1
                                    : rng_below(s, 4) == 0 ? XP_STATE_GIVEN
                                    : rng_below(s, 2)      ? rand_nonneg(s)
                                                           : -1;
            g->seqs[q].state_save = state && rng_below(s, 2) ? rand_nonneg(s) : -1;
            for (int32_t j = 0; j < g->seqs[q].n_blocks; j++) {
                g->blocks[q][j] = rand_nonneg(s);
                /* released (-1) below a window, ids above */
                g->swa_blocks[q][j] = rng_below(s, 3) == 0 ? -1 : rand_nonneg(s);
            }
        }
        st->token = g->token;
        st->pos = g->pos;
        st->seq = g->seq;
        st->want_logits = g->want;
        st->seqs = g->seqs;
        /* disaggregated prefill: sends of some seqs' blocks, and maybe the decode peer */
        for (int32_t q = 0; q < st->n_seqs && rng_below(s, 2); q++) {
            if (g->seqs[q].n_blocks == 0) {
                continue;
            }
            xp_step_kv_send_t *k = &g->sends[st->n_kv_sends++];
            k->seq = q;
            k->lo = (int32_t)rng_below(s, (uint32_t)g->seqs[q].n_blocks);
            k->hi = k->lo + 1 + (int32_t)rng_below(s, (uint32_t)(g->seqs[q].n_blocks - k->lo));
            for (int32_t j = 0; j < k->hi - k->lo; j++) {
                g->dst[q][j] = rand_nonneg(s);
            }
            k->dst = g->dst[q];
            /* the state at the prompt's end too, for a sequence with a slot; the sliding
             * pool's blocks (-1 below the window) for a step with sliding tables */
            k->state_dst = g->seqs[q].state_slot >= 0 && rng_below(s, 2) ? rand_nonneg(s) : -1;
            k->swa_dst = NULL;
            if (swa) {
                for (int32_t j = 0; j < k->hi - k->lo; j++) {
                    g->swa_dst[q][j] = rng_below(s, 3) == 0 ? -1 : rand_nonneg(s);
                }
                k->swa_dst = g->swa_dst[q];
            }
        }
        st->kv_sends = g->sends;
        if (rng_below(s, 2)) {
            m->kv_peer.epoch = rand_u64(s);
            m->kv_peer.n_ranks = 1 + (int32_t)rng_below(s, GEN_PEERS);
            for (int32_t r = 0; r < m->kv_peer.n_ranks; r++) {
                rand_blob(s, g->peer_bytes[r], &g->ranks[r].addr);
                g->ranks[r].n_regions = gen_regions(s, g, r);
                g->ranks[r].regions = g->regions[r];
            }
            m->kv_peer.ranks = g->ranks;
        }
        break;
    }
    case XP_MSG_RESULT:
        m->result.status = (int32_t)rng_below(s, TDM_STATUS_COUNT);
        rand_str(s, m->result.error, sizeof(m->result.error));
        m->result.n_logits = (int32_t)rng_below(s, GEN_LOGITS + 1);
        m->result.n_vocab = (int32_t)rng_below(s, GEN_VOCAB + 1);
        for (int i = 0; i < m->result.n_logits * m->result.n_vocab; i++) {
            uint32_t bits = (uint32_t)rng_next(s);
            memcpy(&g->logits[i], &bits, sizeof(bits)); /* NaNs too: the blob is raw */
        }
        m->result.logits = g->logits;
        m->result.coll_calls = rand_u64(s);
        m->result.coll_bytes = rand_u64(s);
        m->result.coll_ns = rand_u64(s);
        m->result.step_ns = rand_u64(s);
        m->result.kv_bytes = rand_u64(s);
        m->result.kv_ns = rand_u64(s);
        break;
    case XP_MSG_HEARTBEAT:
        m->heartbeat.time_ns = rand_u64(s);
        m->heartbeat.epoch = rand_u64(s);
        m->heartbeat.state = rand_i32(s);
        break;
    default:
        break;
    }
}

static void assert_blob_equal(const xp_msg_blob_t *a, const xp_msg_blob_t *b)
{
    assert_int_equal(a->len, b->len);
    assert_non_null(a->data);
    assert_non_null(b->data);
    assert_memory_equal(a->data, b->data, a->len);
}

static void assert_regions_equal(const xp_msg_kv_region_t *a, const xp_msg_kv_region_t *b,
                                 int32_t na, int32_t nb)
{
    assert_int_equal(na, nb);
    for (int32_t i = 0; i < na; i++) {
        assert_true(a[i].base == b[i].base);
        assert_true(a[i].len == b[i].len);
        assert_true(a[i].unit == b[i].unit);
        assert_int_equal(a[i].rkey.len, b[i].rkey.len);
        if (a[i].rkey.len > 0) {
            assert_memory_equal(a[i].rkey.data, b[i].rkey.data, a[i].rkey.len);
        }
    }
}

static void assert_msg_equal(const xp_msg_t *a, const xp_msg_t *b)
{
    assert_int_equal(a->type, b->type);
    assert_true(a->request_id == b->request_id);
    switch (a->type) {
    case XP_MSG_HELLO:
        assert_true(a->hello.session == b->hello.session);
        break;
    case XP_MSG_JOIN:
        assert_string_equal(a->join.tandem_version, b->join.tandem_version);
        assert_int_equal(a->join.capabilities, b->join.capabilities);
        assert_memory_equal(a->join.model.hash, b->join.model.hash, XP_MSG_MODEL_HASH_BYTES);
        assert_true(a->join.model.file_size == b->join.model.file_size);
        assert_true(a->join.model.n_tensors == b->join.model.n_tensors);
        assert_true(a->join.session == b->join.session);
        assert_blob_equal(&a->join.ucx, &b->join.ucx);
        assert_true(a->join.node_memory == b->join.node_memory);
        assert_int_equal(a->join.threads, b->join.threads);
        assert_string_equal(a->join.name, b->join.name);
        assert_true(a->join.nonce == b->join.nonce);
        assert_int_equal(a->join.has_auth, b->join.has_auth);
        assert_memory_equal(a->join.auth, b->join.auth, XP_MSG_AUTH_BYTES);
        break;
    case XP_MSG_JOIN_ACK:
        assert_int_equal(a->join_ack.accepted, b->join_ack.accepted);
        assert_string_equal(a->join_ack.reason, b->join_ack.reason);
        assert_int_equal(a->join_ack.has_auth, b->join_ack.has_auth);
        assert_memory_equal(a->join_ack.auth, b->join_ack.auth, XP_MSG_AUTH_BYTES);
        break;
    case XP_MSG_LOAD: {
        const xp_msg_load_t *x = &a->load, *y = &b->load;
        assert_true(x->epoch == y->epoch);
        assert_int_equal(x->tp_rank, y->tp_rank);
        assert_int_equal(x->tp_size, y->tp_size);
        assert_int_equal(x->ep_rank, y->ep_rank);
        assert_int_equal(x->ep_size, y->ep_size);
        assert_int_equal(x->n_ctx, y->n_ctx);
        assert_true(x->kv_bytes == y->kv_bytes);
        assert_int_equal(x->n_batch_max, y->n_batch_max);
        assert_int_equal(x->n_out_max, y->n_out_max);
        assert_int_equal(x->block_tokens, y->block_tokens);
        assert_int_equal(x->proto, y->proto);
        assert_int_equal(x->timeout_ms, y->timeout_ms);
        assert_int_equal(x->n_peers, y->n_peers);
        for (int32_t i = 0; i < x->n_peers; i++) {
            assert_blob_equal(&x->peers[i], &y->peers[i]);
        }
        assert_int_equal(x->n_layers, y->n_layers);
        if (x->n_layers > 0) {
            size_t n = (size_t)x->n_layers * sizeof(int32_t);
            assert_memory_equal(x->expert_lo, y->expert_lo, n);
            assert_memory_equal(x->expert_n, y->expert_n, n);
        }
        assert_int_equal(x->n_state_store, y->n_state_store);
        assert_int_equal(x->kv_export, y->kv_export);
        assert_int_equal(xp_msg_load_has_nccl_id(x), xp_msg_load_has_nccl_id(y));
        if (xp_msg_load_has_nccl_id(x)) {
            assert_memory_equal(x->nccl_id, y->nccl_id, XP_MSG_NCCL_ID_BYTES);
        }
        break;
    }
    case XP_MSG_READY:
        assert_true(a->ready.epoch == b->ready.epoch);
        assert_int_equal(a->ready.status, b->ready.status);
        assert_string_equal(a->ready.error, b->ready.error);
        assert_int_equal(a->ready.n_blocks, b->ready.n_blocks);
        assert_int_equal(a->ready.n_vocab, b->ready.n_vocab);
        assert_true(a->ready.weight_bytes == b->ready.weight_bytes);
        assert_true(a->ready.resident_bytes == b->ready.resident_bytes);
        assert_int_equal(a->ready.n_swa_blocks, b->ready.n_swa_blocks);
        assert_int_equal(a->ready.n_state_slots, b->ready.n_state_slots);
        assert_int_equal(a->ready.n_state_store, b->ready.n_state_store);
        assert_regions_equal(a->ready.kv_regions, b->ready.kv_regions, a->ready.n_kv_regions,
                             b->ready.n_kv_regions);
        break;
    case XP_MSG_STEP: {
        const xp_step_t *x = &a->step, *y = &b->step;
        assert_int_equal(x->n_tokens, y->n_tokens);
        assert_int_equal(x->n_logits, y->n_logits);
        assert_int_equal(x->n_seqs, y->n_seqs);
        if (x->n_tokens > 0) {
            size_t n = (size_t)x->n_tokens;
            assert_memory_equal(x->token, y->token, n * sizeof(int32_t));
            assert_memory_equal(x->pos, y->pos, n * sizeof(int32_t));
            assert_memory_equal(x->seq, y->seq, n * sizeof(int32_t));
            assert_memory_equal(x->want_logits, y->want_logits, n);
        }
        for (int32_t q = 0; q < x->n_seqs; q++) {
            assert_int_equal(x->seqs[q].n_blocks, y->seqs[q].n_blocks);
            if (x->seqs[q].n_blocks > 0) {
                assert_memory_equal(x->seqs[q].blocks, y->seqs[q].blocks,
                                    (size_t)x->seqs[q].n_blocks * sizeof(int32_t));
            }
            assert_int_equal(x->seqs[q].state_slot, y->seqs[q].state_slot);
            assert_int_equal(x->seqs[q].state_load, y->seqs[q].state_load);
            assert_int_equal(x->seqs[q].state_save, y->seqs[q].state_save);
            assert_int_equal(x->seqs[q].swa_blocks != NULL, y->seqs[q].swa_blocks != NULL);
            if (x->seqs[q].swa_blocks != NULL && x->seqs[q].n_blocks > 0) {
                assert_memory_equal(x->seqs[q].swa_blocks, y->seqs[q].swa_blocks,
                                    (size_t)x->seqs[q].n_blocks * sizeof(int32_t));
            }
        }
        assert_int_equal(x->n_kv_sends, y->n_kv_sends);
        for (int32_t i = 0; i < x->n_kv_sends; i++) {
            const xp_step_kv_send_t *u = &x->kv_sends[i], *v = &y->kv_sends[i];
            assert_int_equal(u->seq, v->seq);
            assert_int_equal(u->lo, v->lo);
            assert_int_equal(u->hi, v->hi);
            assert_int_equal(u->state_dst, v->state_dst);
            assert_int_equal(u->swa_dst != NULL, v->swa_dst != NULL);
            if (u->swa_dst != NULL) {
                assert_memory_equal(u->swa_dst, v->swa_dst,
                                    (size_t)(u->hi - u->lo) * sizeof(int32_t));
            }
            assert_memory_equal(u->dst, v->dst, (size_t)(u->hi - u->lo) * sizeof(int32_t));
        }
        assert_int_equal(a->kv_peer.n_ranks, b->kv_peer.n_ranks);
        if (a->kv_peer.n_ranks > 0) {
            assert_true(a->kv_peer.epoch == b->kv_peer.epoch);
        }
        for (int32_t r = 0; r < a->kv_peer.n_ranks; r++) {
            assert_blob_equal(&a->kv_peer.ranks[r].addr, &b->kv_peer.ranks[r].addr);
            assert_regions_equal(a->kv_peer.ranks[r].regions, b->kv_peer.ranks[r].regions,
                                 a->kv_peer.ranks[r].n_regions, b->kv_peer.ranks[r].n_regions);
        }
        break;
    }
    case XP_MSG_RESULT:
        assert_int_equal(a->result.status, b->result.status);
        assert_string_equal(a->result.error, b->result.error);
        assert_int_equal(a->result.n_logits, b->result.n_logits);
        assert_int_equal(a->result.n_vocab, b->result.n_vocab);
        if (a->result.n_logits * a->result.n_vocab > 0) {
            assert_memory_equal(a->result.logits, b->result.logits,
                                (size_t)a->result.n_logits * (size_t)a->result.n_vocab * 4);
        }
        assert_true(a->result.coll_calls == b->result.coll_calls);
        assert_true(a->result.coll_bytes == b->result.coll_bytes);
        assert_true(a->result.coll_ns == b->result.coll_ns);
        assert_true(a->result.step_ns == b->result.step_ns);
        assert_true(a->result.kv_bytes == b->result.kv_bytes);
        assert_true(a->result.kv_ns == b->result.kv_ns);
        break;
    case XP_MSG_HEARTBEAT:
        assert_true(a->heartbeat.time_ns == b->heartbeat.time_ns);
        assert_true(a->heartbeat.epoch == b->heartbeat.epoch);
        assert_int_equal(a->heartbeat.state, b->heartbeat.state);
        break;
    default:
        break;
    }
}

/* Decodes an exact-size heap copy, so ASan sees any read past the input, and frees the copy
 * before returning, so any pointer of the result left pointing into the input is caught. */
static tdm_status_t decode_copy(const void *data, size_t len, xp_msg_t *out, tdm_error_t *err)
{
    void *copy = malloc(len > 0 ? len : 1);
    assert_non_null(copy);
    if (len > 0) {
        memcpy(copy, data, len);
    }
    tdm_error_clear(err);
    tdm_status_t st = xp_msg_decode(copy, len, out, err);
    free(copy);
    return st;
}

static void encode_ok(const xp_msg_t *m, msgpack_sbuffer *sb)
{
    tdm_error_t err;
    tdm_error_clear(&err);
    msgpack_sbuffer_init(sb);
    tdm_status_t st = xp_msg_encode(sb, m, &err);
    if (st != TDM_OK) {
        fail_msg("encode %s: %s", xp_msg_type_str(m->type), tdm_error_msg(&err));
    }
}

/* ---- an independent packer of the documented wire layout (no validation) ---- */

static void pack_header(msgpack_packer *pk, const char *magic, unsigned version, unsigned type)
{
    msgpack_pack_array(pk, 5);
    msgpack_pack_str_with_body(pk, magic, strlen(magic));
    msgpack_pack_uint16(pk, (uint16_t)version);
    msgpack_pack_uint8(pk, (uint8_t)type);
    msgpack_pack_uint64(pk, 99);
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* KV regions as the documented layout: [[base, len, rkey bin, unit]...]. */
static void pack_regions_ref(msgpack_packer *pk, const xp_msg_kv_region_t *r, int32_t n)
{
    msgpack_pack_array(pk, (size_t)n);
    for (int32_t i = 0; i < n; i++) {
        msgpack_pack_array(pk, 4);
        msgpack_pack_uint64(pk, r[i].base);
        msgpack_pack_uint64(pk, r[i].len);
        msgpack_pack_bin_with_body(pk, r[i].rkey.data, r[i].rkey.len);
        msgpack_pack_uint64(pk, r[i].unit);
    }
}

/* Whether the documented layout has the NCCL id: proto 2 (nccl) over more than one rank
 * (written out here, not taken from xp_msg.c). */
static bool wire_has_id(const xp_msg_load_t *l)
{
    return l->proto == 2 && l->tp_size * l->ep_size > 1;
}

/* LOAD body; `bad` breaks the wire form: 1 peers nil, 2 peers[1] a string, 3 expert_n one
 * short, 4 no expert_n (15 fields), 5 no NCCL id where one is due, 6 an NCCL id where none
 * is, 7 an NCCL id of 127 bytes, 8 an NCCL id that is a string, 9 n_state_store a string,
 * 10 kv_export an integer. */
static void pack_load_body(msgpack_packer *pk, const xp_msg_load_t *l, int bad)
{
    const bool id = bad == 6 || (bad != 5 && wire_has_id(l));
    msgpack_pack_array(pk, (bad == 4 ? 16 : 17) + (id ? 1 : 0));
    msgpack_pack_uint64(pk, l->epoch);
    msgpack_pack_int32(pk, l->tp_rank);
    msgpack_pack_int32(pk, l->tp_size);
    msgpack_pack_int32(pk, l->ep_rank);
    msgpack_pack_int32(pk, l->ep_size);
    msgpack_pack_int32(pk, l->n_ctx);
    msgpack_pack_uint64(pk, l->kv_bytes);
    msgpack_pack_int32(pk, l->n_batch_max);
    msgpack_pack_int32(pk, l->n_out_max);
    msgpack_pack_int32(pk, l->block_tokens);
    msgpack_pack_int32(pk, l->proto);
    msgpack_pack_int32(pk, l->timeout_ms);
    if (bad == 1) {
        msgpack_pack_nil(pk);
    } else {
        msgpack_pack_array(pk, (size_t)l->n_peers);
        for (int32_t i = 0; i < l->n_peers; i++) {
            if (bad == 2 && i == 1) {
                msgpack_pack_str_with_body(pk, l->peers[i].data, l->peers[i].len);
            } else {
                msgpack_pack_bin_with_body(pk, l->peers[i].data, l->peers[i].len);
            }
        }
    }
    msgpack_pack_array(pk, (size_t)l->n_layers);
    for (int32_t i = 0; i < l->n_layers; i++) {
        msgpack_pack_int32(pk, l->expert_lo[i]);
    }
    if (bad != 4) {
        int32_t n = bad == 3 ? l->n_layers - 1 : l->n_layers;
        msgpack_pack_array(pk, (size_t)n);
        for (int32_t i = 0; i < n; i++) {
            msgpack_pack_int32(pk, l->expert_n[i]);
        }
    }
    if (bad == 9) {
        msgpack_pack_str_with_body(pk, "8", 1);
    } else {
        msgpack_pack_int32(pk, l->n_state_store);
    }
    if (bad == 10) {
        msgpack_pack_int32(pk, 1);
    } else if (l->kv_export) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
    if (id && bad == 8) {
        msgpack_pack_str_with_body(pk, l->nccl_id, XP_MSG_NCCL_ID_BYTES);
    } else if (id) {
        msgpack_pack_bin_with_body(pk, l->nccl_id, bad == 7 ? 127 : XP_MSG_NCCL_ID_BYTES);
    }
}

/* The whole message as xp_msg.c's file comment lays it out (every type but STEP). */
static void pack_raw(msgpack_packer *pk, const xp_msg_t *m)
{
    msgpack_pack_array(pk, 5);
    pack_cstr(pk, XP_MSG_MAGIC);
    msgpack_pack_uint16(pk, XP_MSG_PROTOCOL_VERSION);
    msgpack_pack_uint8(pk, (uint8_t)m->type);
    msgpack_pack_uint64(pk, m->request_id);
    switch (m->type) {
    case XP_MSG_HELLO:
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint64(pk, m->hello.session);
        break;
    case XP_MSG_JOIN:
        msgpack_pack_array(pk, 10);
        pack_cstr(pk, m->join.tandem_version);
        msgpack_pack_uint32(pk, m->join.capabilities);
        msgpack_pack_array(pk, 3);
        msgpack_pack_bin_with_body(pk, m->join.model.hash, XP_MSG_MODEL_HASH_BYTES);
        msgpack_pack_uint64(pk, m->join.model.file_size);
        msgpack_pack_uint64(pk, m->join.model.n_tensors);
        msgpack_pack_uint64(pk, m->join.session);
        msgpack_pack_bin_with_body(pk, m->join.ucx.data, m->join.ucx.len);
        msgpack_pack_uint64(pk, m->join.node_memory);
        msgpack_pack_int32(pk, m->join.threads);
        pack_cstr(pk, m->join.name);
        msgpack_pack_uint64(pk, m->join.nonce);
        msgpack_pack_bin_with_body(pk, m->join.auth, m->join.has_auth ? XP_MSG_AUTH_BYTES : 0);
        break;
    case XP_MSG_JOIN_ACK:
        msgpack_pack_array(pk, 3);
        if (m->join_ack.accepted) {
            msgpack_pack_true(pk);
        } else {
            msgpack_pack_false(pk);
        }
        pack_cstr(pk, m->join_ack.reason);
        msgpack_pack_bin_with_body(pk, m->join_ack.auth,
                                   m->join_ack.has_auth ? XP_MSG_AUTH_BYTES : 0);
        break;
    case XP_MSG_LOAD:
        pack_load_body(pk, &m->load, 0);
        break;
    case XP_MSG_READY:
        msgpack_pack_array(pk, 11);
        msgpack_pack_uint64(pk, m->ready.epoch);
        msgpack_pack_int32(pk, m->ready.status);
        pack_cstr(pk, m->ready.error);
        msgpack_pack_int32(pk, m->ready.n_blocks);
        msgpack_pack_int32(pk, m->ready.n_vocab);
        msgpack_pack_uint64(pk, m->ready.weight_bytes);
        msgpack_pack_uint64(pk, m->ready.resident_bytes);
        msgpack_pack_int32(pk, m->ready.n_swa_blocks);
        msgpack_pack_int32(pk, m->ready.n_state_slots);
        msgpack_pack_int32(pk, m->ready.n_state_store);
        pack_regions_ref(pk, m->ready.kv_regions, m->ready.n_kv_regions);
        break;
    case XP_MSG_RESULT: {
        size_t bytes = (size_t)m->result.n_logits * (size_t)m->result.n_vocab * sizeof(float);
        msgpack_pack_array(pk, 11);
        msgpack_pack_int32(pk, m->result.status);
        pack_cstr(pk, m->result.error);
        msgpack_pack_int32(pk, m->result.n_logits);
        msgpack_pack_int32(pk, m->result.n_vocab);
        msgpack_pack_bin(pk, bytes);
        if (bytes > 0) {
            msgpack_pack_bin_body(pk, m->result.logits, bytes);
        }
        msgpack_pack_uint64(pk, m->result.coll_calls);
        msgpack_pack_uint64(pk, m->result.coll_bytes);
        msgpack_pack_uint64(pk, m->result.coll_ns);
        msgpack_pack_uint64(pk, m->result.step_ns);
        msgpack_pack_uint64(pk, m->result.kv_bytes);
        msgpack_pack_uint64(pk, m->result.kv_ns);
        break;
    }
    case XP_MSG_HEARTBEAT:
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint64(pk, m->heartbeat.time_ns);
        msgpack_pack_uint64(pk, m->heartbeat.epoch);
        msgpack_pack_int32(pk, m->heartbeat.state);
        break;
    default:
        msgpack_pack_array(pk, 0);
        break;
    }
}

/* ---- tests ---- */

static void test_type_names(void **state)
{
    (void)state;
    static const char *const want[] = {"?",    "HELLO",  "JOIN",      "JOIN_ACK", "LOAD",
                                       "STEP", "RESULT", "HEARTBEAT", "SHUTDOWN", "READY"};
    assert_int_equal(XP_MSG_HELLO, 1);
    assert_int_equal(XP_MSG_TYPE_END, 10);
    for (int t = 0; t < XP_MSG_TYPE_END; t++) {
        assert_string_equal(xp_msg_type_str(t), want[t]);
    }
    assert_string_equal(xp_msg_type_str(XP_MSG_TYPE_END), "?");
    assert_string_equal(xp_msg_type_str(-1), "?");
}

static void test_round_trip_every_type(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    int load_peers[GEN_PEERS + 1] = {0}, load_no_layers = 0, load_layers = 0, load_ids = 0;
    int load_nccl_alone = 0;
    for (int iter = 0; iter < 300; iter++) {
        for (int t = XP_MSG_HELLO; t < XP_MSG_TYPE_END; t++) {
            xp_msg_t m, d, d2;
            gen_msg(&s, (xp_msg_type_t)t, g, &m);
            if (t == XP_MSG_LOAD) {
                load_ids += xp_msg_load_has_nccl_id(&m.load);
                load_nccl_alone += m.load.proto == XP_MSG_PROTO_NCCL && m.load.n_peers == 1;
                load_peers[m.load.n_peers]++;
                if (m.load.n_layers == 0) {
                    load_no_layers++;
                } else {
                    load_layers++;
                }
            }
            msgpack_sbuffer a, b;
            encode_ok(&m, &a);
            if (t != XP_MSG_STEP) { /* the encoder writes the documented layout */
                msgpack_sbuffer raw;
                msgpack_packer pk;
                msgpack_sbuffer_init(&raw);
                msgpack_packer_init(&pk, &raw, msgpack_sbuffer_write);
                pack_raw(&pk, &m);
                assert_int_equal(raw.size, a.size);
                assert_memory_equal(raw.data, a.data, a.size);
                msgpack_sbuffer_destroy(&raw);
            }
            tdm_error_t err;
            tdm_status_t st = decode_copy(a.data, a.size, &d, &err);
            if (st != TDM_OK) {
                fail_msg("decode %s: %s", xp_msg_type_str(t), tdm_error_msg(&err));
            }
            assert_int_equal(d.version, XP_MSG_PROTOCOL_VERSION);
            assert_msg_equal(&m, &d);
            encode_ok(&d, &b);
            assert_int_equal(a.size, b.size);
            assert_memory_equal(a.data, b.data, a.size);
            assert_int_equal(decode_copy(b.data, b.size, &d2, &err), TDM_OK);
            assert_msg_equal(&m, &d2);
            xp_msg_free(&d);
            xp_msg_free(&d2);
            msgpack_sbuffer_destroy(&a);
            msgpack_sbuffer_destroy(&b);
        }
    }
    for (int n = 1; n <= GEN_PEERS; n++) {
        assert_true(load_peers[n] > 0);
    }
    assert_true(load_no_layers > 0 && load_layers > 0);
    assert_true(load_ids > 0 && load_nccl_alone > 0);
    free(g);
}

/* Every proper prefix is refused, and so is one byte too many. */
static void check_truncations(const msgpack_sbuffer *sb)
{
    for (size_t len = 0; len < sb->size; len++) {
        xp_msg_t d;
        tdm_error_t err;
        tdm_status_t st = decode_copy(sb->data, len, &d, &err);
        if (st != TDM_ERR_FORMAT) {
            fail_msg("prefix of %zu of %zu bytes: status %d", len, sb->size, (int)st);
        }
    }
    uint8_t *longer = malloc(sb->size + 1);
    assert_non_null(longer);
    memcpy(longer, sb->data, sb->size);
    longer[sb->size] = 0;
    xp_msg_t d;
    tdm_error_t err;
    assert_int_equal(decode_copy(longer, sb->size + 1, &d, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(tdm_error_msg(&err), "trailing"));
    free(longer);
}

static void test_every_truncation_rejected(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    uint64_t s = 42;
    for (int t = XP_MSG_HELLO; t < XP_MSG_TYPE_END; t++) {
        for (int k = 0; k < 6; k++) {
            xp_msg_t m;
            /* the first message of each type is a large one */
            do {
                gen_msg(&s, (xp_msg_type_t)t, g, &m);
            } while (
                (k == 0 && ((t == XP_MSG_STEP && (m.step.n_tokens < 50 || m.step.n_seqs < 2)) ||
                            (t == XP_MSG_LOAD && (m.load.n_peers < 4 || m.load.n_layers < 8)) ||
                            (t == XP_MSG_RESULT && m.result.n_logits * m.result.n_vocab == 0))) ||
                (k == 1 && t == XP_MSG_LOAD && !xp_msg_load_has_nccl_id(&m.load)));
            msgpack_sbuffer sb;
            encode_ok(&m, &sb);
            check_truncations(&sb);
            msgpack_sbuffer_destroy(&sb);
        }
    }
    free(g);
}

#define FLIP_VARIANTS 4

static void test_bit_flips_never_crash(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    uint64_t s = 7;
    msgpack_sbuffer enc[XP_MSG_TYPE_END][FLIP_VARIANTS];
    for (int t = XP_MSG_HELLO; t < XP_MSG_TYPE_END; t++) {
        for (int v = 0; v < FLIP_VARIANTS; v++) {
            xp_msg_t m;
            do {
                gen_msg(&s, (xp_msg_type_t)t, g, &m);
            } while ((t == XP_MSG_STEP && m.step.n_tokens < 5) ||
                     (t == XP_MSG_LOAD && (m.load.n_peers < 2 || m.load.n_layers == 0)) ||
                     (t == XP_MSG_LOAD && v < 2 && !xp_msg_load_has_nccl_id(&m.load)));
            encode_ok(&m, &enc[t][v]);
        }
    }
    int accepted[XP_MSG_TYPE_END] = {0}, rejected = 0;
    uint8_t *buf = malloc(1 << 16);
    assert_non_null(buf);
    for (int iter = 0; iter < 10000; iter++) {
        int t = XP_MSG_HELLO + (int)rng_below(&s, XP_MSG_TYPE_END - XP_MSG_HELLO);
        const msgpack_sbuffer *e = &enc[t][rng_below(&s, FLIP_VARIANTS)];
        size_t n = e->size;
        assert_true(n <= (1 << 16));
        memcpy(buf, e->data, n);
        int flips = 1 + (int)rng_below(&s, 3);
        for (int f = 0; f < flips; f++) {
            size_t bit = rng_below(&s, (uint32_t)(n * 8));
            buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        xp_msg_t d, d2;
        tdm_error_t err;
        tdm_status_t st = decode_copy(buf, n, &d, &err);
        if (st != TDM_OK) {
            assert_int_equal(st, TDM_ERR_FORMAT);
            assert_true(strlen(tdm_error_msg(&err)) > 0);
            rejected++;
            continue;
        }
        /* accepted: a valid message that survives another round trip unchanged */
        assert_true(d.type >= XP_MSG_HELLO && d.type < XP_MSG_TYPE_END);
        accepted[d.type]++;
        assert_int_equal(xp_msg_validate(&d, TDM_ERR_FORMAT, NULL), TDM_OK);
        msgpack_sbuffer a, b;
        encode_ok(&d, &a);
        assert_int_equal(decode_copy(a.data, a.size, &d2, &err), TDM_OK);
        assert_msg_equal(&d, &d2);
        encode_ok(&d2, &b);
        assert_int_equal(a.size, b.size);
        assert_memory_equal(a.data, b.data, a.size);
        msgpack_sbuffer_destroy(&a);
        msgpack_sbuffer_destroy(&b);
        xp_msg_free(&d);
        xp_msg_free(&d2);
    }
    int n_accepted = 0;
    for (int t = XP_MSG_HELLO; t < XP_MSG_TYPE_END; t++) {
        n_accepted += accepted[t];
    }
    print_message("bit flips: %d accepted (LOAD %d, JOIN %d, READY %d), %d rejected\n", n_accepted,
                  accepted[XP_MSG_LOAD], accepted[XP_MSG_JOIN], accepted[XP_MSG_READY], rejected);
    assert_true(rejected > 0);
    free(buf);
    for (int t = XP_MSG_HELLO; t < XP_MSG_TYPE_END; t++) {
        for (int v = 0; v < FLIP_VARIANTS; v++) {
            msgpack_sbuffer_destroy(&enc[t][v]);
        }
    }
    free(g);
}

/* ---- hand-made malformed messages ---- */

static void expect_format(const msgpack_sbuffer *sb, const char *needle)
{
    xp_msg_t d;
    tdm_error_t err;
    tdm_status_t st = decode_copy(sb->data, sb->size, &d, &err);
    if (st != TDM_ERR_FORMAT || strstr(tdm_error_msg(&err), needle) == NULL) {
        fail_msg("want TDM_ERR_FORMAT naming \"%s\", got status %d: %s", needle, (int)st,
                 tdm_error_msg(&err));
    }
}

/* A STEP body of 2 tokens / 2 seqs with one piece replaced according to `bad`; swa:
 * every seq carries a sliding-window table (bad 9..12 break those). */
static void pack_step_swa(msgpack_packer *pk, int bad, bool swa)
{
    pack_header(pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_STEP);
    msgpack_pack_array(pk, 8);
    msgpack_pack_int32(pk, bad == 1 ? (1 << 20) + 1 : 2); /* n_tokens */
    msgpack_pack_array(pk, bad == 2 ? 3 : 2);             /* token */
    msgpack_pack_int32(pk, 5);
    msgpack_pack_int32(pk, 6);
    if (bad == 2) {
        msgpack_pack_int32(pk, 7);
    }
    msgpack_pack_array(pk, 2); /* pos */
    msgpack_pack_int32(pk, 0);
    msgpack_pack_int32(pk, bad == 3 ? -1 : 1);
    msgpack_pack_array(pk, 2); /* seq */
    msgpack_pack_int32(pk, 0);
    msgpack_pack_int32(pk, bad == 4 ? 2 : 1);
    msgpack_pack_array(pk, 2); /* want_logits */
    msgpack_pack_true(pk);
    if (bad == 5) {
        msgpack_pack_uint8(pk, 1);
    } else {
        msgpack_pack_false(pk);
    }
    msgpack_pack_int32(pk, bad == 6 ? 2 : 1); /* n_logits */
    msgpack_pack_int32(pk, 2);                /* n_seqs */
    msgpack_pack_array(pk, 2);
    msgpack_pack_array(pk, bad == 11 ? 4 : swa ? 3 : 2); /* seq 0: one block */
    msgpack_pack_int32(pk, bad == 7 ? (1 << 20) + 1 : 1);
    msgpack_pack_array(pk, 1);
    msgpack_pack_int32(pk, 3);
    if (swa || bad == 11) {
        msgpack_pack_array(pk, bad == 12 ? 2 : 1);
        msgpack_pack_int32(pk, bad == 10 ? -2 : -1);
        if (bad == 12) {
            msgpack_pack_int32(pk, 4);
        }
    }
    if (bad == 11) {
        msgpack_pack_array(pk, 0);
    }
    msgpack_pack_array(pk, swa && bad != 9 ? 3 : 2); /* seq 1: no blocks */
    msgpack_pack_int32(pk, bad == 8 ? 3 : 0);
    msgpack_pack_array(pk, 0);
    if (swa && bad != 9) {
        msgpack_pack_array(pk, 0);
    }
}

static void pack_step(msgpack_packer *pk, int bad)
{
    pack_step_swa(pk, bad, false);
}

/* Fixed valid messages the invalid cases start from; arrays live in g. */
static void base_msg(xp_msg_type_t type, gen_store_t *g, xp_msg_t *m)
{
    static const uint32_t peer_len[GEN_PEERS] = {1, 7, GEN_ADDR, 3, 33};
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->request_id = 99;
    for (int i = 0; i < GEN_PEERS; i++) {
        memset(g->peer_bytes[i], 0xa0 + i, GEN_ADDR);
        g->peers[i].data = g->peer_bytes[i];
        g->peers[i].len = peer_len[i];
    }
    memset(g->ucx, 0x5a, GEN_ADDR);
    switch (type) {
    case XP_MSG_HELLO:
        m->hello.session = 0x1234;
        break;
    case XP_MSG_JOIN:
        snprintf(m->join.tandem_version, sizeof(m->join.tandem_version), "0.2.0");
        m->join.capabilities = XP_MSG_CAP_CUDA | XP_MSG_CAP_UCX;
        memset(m->join.model.hash, 0x11, XP_MSG_MODEL_HASH_BYTES);
        m->join.model.file_size = 1u << 30;
        m->join.model.n_tensors = 291;
        m->join.session = 0x1234;
        m->join.ucx.data = g->ucx;
        m->join.ucx.len = 16;
        m->join.node_memory = 64ull << 30;
        m->join.threads = 8;
        snprintf(m->join.name, sizeof(m->join.name), "tcp://10.0.0.2:7001");
        break;
    case XP_MSG_LOAD: {
        xp_msg_load_t *l = &m->load;
        l->epoch = 3;
        l->tp_rank = 1;
        l->tp_size = 2;
        l->ep_rank = 0;
        l->ep_size = 2;
        l->n_ctx = 4096;
        l->kv_bytes = 1u << 28;
        l->n_batch_max = 512;
        l->n_out_max = 64;
        l->block_tokens = 16;
        l->proto = 1;
        l->timeout_ms = 30000;
        l->n_peers = 4;
        l->peers = g->peers;
        l->n_layers = 3;
        for (int32_t i = 0; i < 3; i++) {
            g->expert_lo[i] = 64 * i;
            g->expert_n[i] = 64;
        }
        l->expert_lo = g->expert_lo;
        l->expert_n = g->expert_n;
        l->n_state_store = 64;
        break;
    }
    case XP_MSG_READY:
        m->ready.epoch = 3;
        m->ready.status = TDM_OK;
        m->ready.n_blocks = 1000;
        m->ready.n_vocab = 32000;
        m->ready.weight_bytes = 1u << 30;
        m->ready.resident_bytes = 3u << 29;
        m->ready.n_swa_blocks = 300;
        m->ready.n_state_slots = 8;
        m->ready.n_state_store = 8;
        break;
    case XP_MSG_RESULT:
        m->result.status = TDM_OK;
        m->result.step_ns = 12345;
        break;
    case XP_MSG_HEARTBEAT:
        m->heartbeat.time_ns = 777;
        m->heartbeat.epoch = 3;
        m->heartbeat.state = 2;
        break;
    default:
        break;
    }
}

static void test_malformed_cases(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    /* the hand-packed STEP is valid as is */
    pack_step(&pk, 0);
    xp_msg_t d;
    tdm_error_t err;
    assert_int_equal(decode_copy(sb.data, sb.size, &d, &err), TDM_OK);
    assert_int_equal(d.step.seqs[0].blocks[0], 3);
    xp_msg_free(&d);

    static const struct {
        int bad;
        const char *needle;
    } step_cases[] = {
        {1, "n_tokens"},       {2, "STEP token"}, {3, "pos[1]"},           {4, "seq[1] = 2"},
        {5, "want_logits[1]"}, {6, "n_logits"},   {7, "seqs[0].n_blocks"}, {8, "seqs[1].blocks"},
    };
    for (size_t i = 0; i < sizeof(step_cases) / sizeof(step_cases[0]); i++) {
        msgpack_sbuffer_clear(&sb);
        pack_step(&pk, step_cases[i].bad);
        expect_format(&sb, step_cases[i].needle);
    }

    /* with sliding-window tables: valid as is (-1: a released block), and broken */
    msgpack_sbuffer_clear(&sb);
    pack_step_swa(&pk, 0, true);
    assert_int_equal(decode_copy(sb.data, sb.size, &d, &err), TDM_OK);
    assert_non_null(d.step.seqs[0].swa_blocks);
    assert_non_null(d.step.seqs[1].swa_blocks);
    assert_int_equal(d.step.seqs[0].swa_blocks[0], -1);
    assert_int_equal(d.step.seqs[0].blocks[0], 3);
    xp_msg_free(&d);
    static const struct {
        int bad;
        const char *needle;
    } swa_cases[] = {
        {9, "seqs[1] lacks a sliding-window table and seqs[0] has one"},
        {10, "seqs[0].swa_blocks[0] = -2 is below -1"},
        {11, "STEP seqs[0] is not an array of 2, 3, 5 or 6"},
        {12, "STEP seqs[0].swa_blocks has 2 elements, want 1"},
    };
    for (size_t i = 0; i < sizeof(swa_cases) / sizeof(swa_cases[0]); i++) {
        msgpack_sbuffer_clear(&sb);
        pack_step_swa(&pk, swa_cases[i].bad, swa_cases[i].bad != 11);
        expect_format(&sb, swa_cases[i].needle);
    }

    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, "TDM2", XP_MSG_PROTOCOL_VERSION, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "magic");

    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION + 1, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    char needle[96];
    snprintf(needle, sizeof(needle), "protocol version %d", XP_MSG_PROTOCOL_VERSION + 1);
    expect_format(&sb, needle);

    /* a protocol-2 peer (no sliding-window tables, READY of 7 fields) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, 2, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    snprintf(needle, sizeof(needle), "protocol version 2, this build speaks %d",
             XP_MSG_PROTOCOL_VERSION);
    expect_format(&sb, needle);

    /* a protocol-7 peer (KV regions without a unit, sends without a state slot) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, 7, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "protocol version 7, this build speaks 8");

    /* a protocol-1 peer: its HEARTBEAT was [time_ns] (type 6 then) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, 1, 6);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, 123);
    snprintf(needle, sizeof(needle), "protocol version 1, this build speaks %d",
             XP_MSG_PROTOCOL_VERSION);
    expect_format(&sb, needle);

    /* protocol 1 with a body that happens to be valid in protocol 2 */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, 1, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "protocol version 1");

    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, 0);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "type 0");

    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_TYPE_END);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "unknown");

    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_nil(&pk);
    expect_format(&sb, "trailing");

    /* RESULT blob not n_logits * n_vocab * 4 */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_RESULT);
    msgpack_pack_array(&pk, 11);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_str_with_body(&pk, "", 0);
    msgpack_pack_int32(&pk, 2);
    msgpack_pack_int32(&pk, 3);
    msgpack_pack_bin_with_body(&pk, "0123456789abcdef", 16);
    for (int i = 0; i < 6; i++) {
        msgpack_pack_uint64(&pk, 1);
    }
    expect_format(&sb, "logits blob");

    /* RESULT in the protocol-1 layout (no collective stats) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_RESULT);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_str_with_body(&pk, "", 0);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_bin_with_body(&pk, "", 0);
    expect_format(&sb, "RESULT body has 5 elements, want 11");

    /* RESULT stats must be unsigned */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_RESULT);
    msgpack_pack_array(&pk, 11);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_str_with_body(&pk, "", 0);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_bin_with_body(&pk, "", 0);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_int64(&pk, -1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    expect_format(&sb, "RESULT coll_bytes");
    /* protocol 6's RESULT (no KV transfer figures) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_RESULT);
    msgpack_pack_array(&pk, 9);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_str_with_body(&pk, "", 0);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_bin_with_body(&pk, "", 0);
    for (int i = 0; i < 4; i++) {
        msgpack_pack_uint64(&pk, 1);
    }
    expect_format(&sb, "RESULT body has 9 elements, want 11");

    /* HEARTBEAT of the wrong arity: protocol 1's [time_ns], and one field too many */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_HEARTBEAT);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, 123);
    expect_format(&sb, "HEARTBEAT body has 1 elements, want 3");
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_HEARTBEAT);
    msgpack_pack_array(&pk, 4);
    for (int i = 0; i < 4; i++) {
        msgpack_pack_uint64(&pk, 1);
    }
    expect_format(&sb, "HEARTBEAT body has 4 elements, want 3");

    /* HEARTBEAT state beyond int32 */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_HEARTBEAT);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1ull << 31);
    expect_format(&sb, "HEARTBEAT state");

    /* HELLO: [session], nothing else */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_HELLO);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "HELLO body has 0 elements, want 1");
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_HELLO);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_int32(&pk, -5);
    expect_format(&sb, "HELLO session");

    /* a JOIN in the protocol-1 layout (rank, world_size instead of session ... name) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_JOIN);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_str_with_body(&pk, "0.1", 3);
    msgpack_pack_uint32(&pk, 0);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_bin_with_body(&pk, "0123456789abcdef0123456789abcdef", 32);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_int32(&pk, 4);
    expect_format(&sb, "JOIN body has 5 elements, want 10");

    /* a JOIN whose UCX address is a string, not a bin */
    xp_msg_t m;
    base_msg(XP_MSG_JOIN, g, &m);
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_JOIN);
    msgpack_pack_array(&pk, 10);
    pack_cstr(&pk, m.join.tandem_version);
    msgpack_pack_uint32(&pk, m.join.capabilities);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_bin_with_body(&pk, m.join.model.hash, XP_MSG_MODEL_HASH_BYTES);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, m.join.session);
    msgpack_pack_str_with_body(&pk, "abcd", 4);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_int32(&pk, 1);
    pack_cstr(&pk, m.join.name);
    msgpack_pack_uint64(&pk, 7);
    msgpack_pack_bin_with_body(&pk, "", 0);
    expect_format(&sb, "JOIN ucx_address is not a bin");

    /* a JOIN whose proof of the cluster secret is neither empty nor 32 bytes */
    for (int k = 0; k < 2; k++) {
        msgpack_sbuffer_clear(&sb);
        pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_JOIN);
        msgpack_pack_array(&pk, 10);
        pack_cstr(&pk, m.join.tandem_version);
        msgpack_pack_uint32(&pk, m.join.capabilities);
        msgpack_pack_array(&pk, 3);
        msgpack_pack_bin_with_body(&pk, m.join.model.hash, XP_MSG_MODEL_HASH_BYTES);
        msgpack_pack_uint64(&pk, 1);
        msgpack_pack_uint64(&pk, 1);
        msgpack_pack_uint64(&pk, m.join.session);
        msgpack_pack_bin_with_body(&pk, "abcd", 4);
        msgpack_pack_uint64(&pk, 1);
        msgpack_pack_int32(&pk, 1);
        pack_cstr(&pk, m.join.name);
        msgpack_pack_uint64(&pk, 7);
        if (k == 0) {
            msgpack_pack_bin_with_body(&pk, "0123456789abcdef0123456789abcde", 31);
        } else {
            msgpack_pack_str_with_body(&pk, "0123456789abcdef0123456789abcdef", 32);
        }
        expect_format(&sb, "JOIN auth is not a bin of 0 or 32 bytes");
    }

    /* a LOAD in the protocol-1 layout */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_LOAD);
    msgpack_pack_array(&pk, 6);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_int32(&pk, 1);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_int32(&pk, 1);
    msgpack_pack_int32(&pk, 4096);
    msgpack_pack_uint64(&pk, 1);
    expect_format(&sb, "LOAD body has 6 elements, want 17");

    /* LOAD wire-shape errors (pack_load_body's `bad`) */
    static const struct {
        int bad, proto, world; /* proto and world (tp 1 x ep world) of the LOAD; 0: base */
        const char *needle;
    } load_cases[] = {
        {1, 0, 0, "LOAD peers is not an array"},
        {2, 0, 0, "LOAD peers[1] is not a bin"},
        {3, 0, 0, "LOAD expert_n has 2 elements, want 3"},
        {4, 0, 0, "LOAD body has 16 elements, want 17"},
        {5, 2, 0, "LOAD with proto 2 (nccl) over 4 ranks has no NCCL id"},
        {6, 1, 0, "LOAD body has 18 elements, want 17"},
        {6, 2, 1, "LOAD body has 18 elements, want 17"}, /* nccl, but a world of one */
        {7, 2, 0, "LOAD nccl_id is not a 128-byte bin"},
        {8, 2, 0, "LOAD nccl_id is not a 128-byte bin"},
        {9, 0, 0, "LOAD n_state_store is not a 32-bit integer"},
        {9, 2, 0, "LOAD n_state_store is not a 32-bit integer"},
        {10, 0, 0, "LOAD kv_export is not a boolean"},
    };
    for (size_t i = 0; i < sizeof(load_cases) / sizeof(load_cases[0]); i++) {
        base_msg(XP_MSG_LOAD, g, &m);
        if (load_cases[i].proto != 0) {
            m.load.proto = load_cases[i].proto;
        }
        if (load_cases[i].world == 1) {
            m.load.tp_size = m.load.ep_size = 1;
            m.load.tp_rank = m.load.ep_rank = 0;
            m.load.n_peers = 1;
        }
        msgpack_sbuffer_clear(&sb);
        pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_LOAD);
        pack_load_body(&pk, &m.load, load_cases[i].bad);
        expect_format(&sb, load_cases[i].needle);
    }

    /* a LOAD with more peer addresses than XP_MSG_MAX_WORLD (each a 1-byte nil) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_LOAD);
    msgpack_pack_array(&pk, 17);
    for (int i = 0; i < 12; i++) {
        msgpack_pack_int32(&pk, 1);
    }
    msgpack_pack_array(&pk, XP_MSG_MAX_WORLD + 1);
    for (int i = 0; i < XP_MSG_MAX_WORLD + 1; i++) {
        msgpack_pack_nil(&pk);
    }
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_false(&pk);
    expect_format(&sb, "LOAD peers is not an array of at most 65536");

    /* READY: a negative epoch, a too-short body */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_READY);
    msgpack_pack_array(&pk, 11);
    msgpack_pack_int32(&pk, -1);
    for (int i = 0; i < 10; i++) {
        msgpack_pack_int32(&pk, 0);
    }
    expect_format(&sb, "READY epoch");
    /* READY: a KV region that is not [base, len, rkey bin, unit] (protocol 7's) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_READY);
    msgpack_pack_array(&pk, 11);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_str_with_body(&pk, "", 0);
    for (int i = 0; i < 7; i++) {
        msgpack_pack_int32(&pk, 0);
    }
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 4096);
    msgpack_pack_uint64(&pk, 64);
    msgpack_pack_str_with_body(&pk, "key", 3);
    expect_format(&sb, "READY kv_regions[0] is not [base, len, rkey bin, unit]");
    /* protocol 2's READY (no n_swa_blocks) */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_READY);
    msgpack_pack_array(&pk, 7);
    for (int i = 0; i < 7; i++) {
        if (i == 2) {
            msgpack_pack_str_with_body(&pk, "", 0);
        } else {
            msgpack_pack_int32(&pk, 0);
        }
    }
    expect_format(&sb, "READY body has 7 elements, want 11");
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_READY);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_int32(&pk, 0);
    expect_format(&sb, "READY body has 2 elements, want 11");

    /* a string with a NUL inside */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_JOIN_ACK);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_true(&pk);
    msgpack_pack_str_with_body(&pk, "a\0b", 3);
    msgpack_pack_bin_with_body(&pk, "", 0);
    expect_format(&sb, "JOIN_ACK reason");

    /* raw bytes: an array32 claiming 4 billion elements, deep nesting, a map, empty */
    static const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0};
    assert_int_equal(decode_copy(huge, sizeof(huge), &d, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(tdm_error_msg(&err), "array of 4294967295"));
    uint8_t deep[200];
    memset(deep, 0x91, sizeof(deep));
    deep[sizeof(deep) - 1] = 0xc0;
    assert_int_equal(decode_copy(deep, sizeof(deep), &d, &err), TDM_ERR_FORMAT);
    static const uint8_t map[] = {0x81, 0x01, 0x02};
    assert_int_equal(decode_copy(map, sizeof(map), &d, &err), TDM_ERR_FORMAT);
    assert_int_equal(decode_copy(NULL, 0, &d, &err), TDM_ERR_FORMAT);
    assert_int_equal(xp_msg_decode(NULL, 5, &d, NULL), TDM_ERR_INVALID_PARAM);

    msgpack_sbuffer_destroy(&sb);
    xp_msg_free(NULL);
    free(g);
}

/*
 * Invalid messages both ways: each case breaks one rule of a valid base message. Packed by
 * pack_raw (no checks), the decoder must refuse it with TDM_ERR_FORMAT naming dec_needle;
 * the encoder must refuse the same message with TDM_ERR_INVALID_PARAM naming enc_needle
 * and leave its buffer as it was.
 */
enum {
    JOIN_EMPTY_UCX,
    JOIN_LONG_UCX,
    JOIN_THREADS,
    LOAD_NO_PEERS,
    LOAD_PEER_TOO_MANY,
    LOAD_PEER_TOO_FEW,
    LOAD_OUT_GT_BATCH,
    LOAD_BATCH_ZERO,
    LOAD_BLOCK_ZERO,
    LOAD_PROTO_3,
    LOAD_PROTO_NEG,
    LOAD_TIMEOUT_ZERO,
    LOAD_LO_NEG,
    LOAD_N_NEG,
    LOAD_RANGE_OVERFLOW,
    LOAD_PEER_EMPTY,
    LOAD_PEER_LONG,
    LOAD_TP_RANK,
    LOAD_EP_SIZE,
    LOAD_N_CTX,
    LOAD_TOO_MANY_LAYERS,
    LOAD_STATE_STORE_NEG,
    LOAD_STATE_STORE_BIG,
    READY_STATUS_END,
    READY_STATUS_NEG,
    READY_BLOCKS_NEG,
    READY_VOCAB_BIG,
    READY_SWA_NEG,
    RESULT_STATUS_NEG,
    RESULT_VOCAB_BIG,
};

static void break_msg(int c, gen_store_t *g, xp_msg_t *m)
{
    xp_msg_load_t *l = &m->load;
    switch (c) {
    case JOIN_EMPTY_UCX:
        m->join.ucx.len = 0;
        break;
    case JOIN_LONG_UCX:
        m->join.ucx.data = g->big_addr;
        m->join.ucx.len = XP_MSG_MAX_ADDR + 1;
        break;
    case JOIN_THREADS:
        m->join.threads = -1;
        break;
    case LOAD_NO_PEERS:
        l->tp_size = l->ep_size = 1;
        l->tp_rank = l->ep_rank = 0;
        l->n_peers = 0;
        break;
    case LOAD_PEER_TOO_MANY:
        l->n_peers = 5;
        break;
    case LOAD_PEER_TOO_FEW:
        l->n_peers = 3;
        break;
    case LOAD_OUT_GT_BATCH:
        l->n_out_max = l->n_batch_max + 1;
        break;
    case LOAD_BATCH_ZERO:
        l->n_batch_max = 0;
        break;
    case LOAD_BLOCK_ZERO:
        l->block_tokens = 0;
        break;
    case LOAD_PROTO_3:
        l->proto = 3;
        break;
    case LOAD_PROTO_NEG:
        l->proto = -1;
        break;
    case LOAD_TIMEOUT_ZERO:
        l->timeout_ms = 0;
        break;
    case LOAD_LO_NEG:
        g->expert_lo[1] = -1;
        break;
    case LOAD_N_NEG:
        g->expert_n[2] = -5;
        break;
    case LOAD_RANGE_OVERFLOW:
        g->expert_lo[0] = INT32_MAX;
        g->expert_n[0] = 1;
        break;
    case LOAD_PEER_EMPTY:
        g->peers[2].len = 0;
        break;
    case LOAD_PEER_LONG:
        g->peers[0].data = g->big_addr;
        g->peers[0].len = XP_MSG_MAX_ADDR + 1;
        break;
    case LOAD_TP_RANK:
        l->tp_rank = l->tp_size;
        break;
    case LOAD_EP_SIZE:
        l->ep_size = 0;
        break;
    case LOAD_N_CTX:
        l->n_ctx = 0;
        break;
    case LOAD_TOO_MANY_LAYERS:
        l->n_layers = XP_MSG_MAX_LAYERS + 1;
        break;
    case LOAD_STATE_STORE_NEG:
        l->n_state_store = -1;
        break;
    case LOAD_STATE_STORE_BIG:
        l->n_state_store = XP_MSG_MAX_STATE_STORE + 1;
        break;
    case READY_STATUS_END:
        m->ready.status = TDM_STATUS_COUNT;
        break;
    case READY_STATUS_NEG:
        m->ready.status = -1;
        break;
    case READY_BLOCKS_NEG:
        m->ready.n_blocks = -1;
        break;
    case READY_VOCAB_BIG:
        m->ready.n_vocab = XP_MSG_MAX_VOCAB + 1;
        break;
    case READY_SWA_NEG:
        m->ready.n_swa_blocks = -1;
        break;
    case RESULT_STATUS_NEG:
        m->result.status = -2;
        break;
    case RESULT_VOCAB_BIG:
        m->result.n_vocab = XP_MSG_MAX_VOCAB + 1;
        break;
    default:
        fail_msg("case %d unknown", c);
    }
}

static void test_invalid_refused_both_ways(void **state)
{
    (void)state;
    static const struct {
        xp_msg_type_t type;
        int c;
        const char *enc_needle, *dec_needle; /* dec_needle NULL: the same as enc_needle */
    } cases[] = {
        {XP_MSG_JOIN, JOIN_EMPTY_UCX, "JOIN: UCX address of 0 bytes", NULL},
        {XP_MSG_JOIN, JOIN_LONG_UCX, "JOIN: UCX address of 8193 bytes",
         "JOIN ucx_address is not a bin of at most 8192"},
        {XP_MSG_JOIN, JOIN_THREADS, "JOIN: threads -1", NULL},
        {XP_MSG_LOAD, LOAD_NO_PEERS, "LOAD: 0 peer addresses for 1 x 1", NULL},
        {XP_MSG_LOAD, LOAD_PEER_TOO_MANY, "LOAD: 5 peer addresses for 2 x 2", NULL},
        {XP_MSG_LOAD, LOAD_PEER_TOO_FEW, "LOAD: 3 peer addresses for 2 x 2", NULL},
        {XP_MSG_LOAD, LOAD_OUT_GT_BATCH, "n_batch_max 512, n_out_max 513", NULL},
        {XP_MSG_LOAD, LOAD_BATCH_ZERO, "n_batch_max 0", NULL},
        {XP_MSG_LOAD, LOAD_BLOCK_ZERO, "block_tokens 0", NULL},
        {XP_MSG_LOAD, LOAD_PROTO_3, "LOAD: proto 3", NULL},
        {XP_MSG_LOAD, LOAD_PROTO_NEG, "LOAD: proto -1", NULL},
        {XP_MSG_LOAD, LOAD_TIMEOUT_ZERO, "timeout_ms 0", NULL},
        {XP_MSG_LOAD, LOAD_LO_NEG, "layer 1 expert range [-1, +64)", NULL},
        {XP_MSG_LOAD, LOAD_N_NEG, "layer 2 expert range [128, +-5)", NULL},
        {XP_MSG_LOAD, LOAD_RANGE_OVERFLOW, "layer 0 expert range [2147483647, +1)", NULL},
        {XP_MSG_LOAD, LOAD_PEER_EMPTY, "LOAD: peer 2 address of 0 bytes", NULL},
        {XP_MSG_LOAD, LOAD_PEER_LONG, "LOAD: peer 0 address of 8193 bytes",
         "LOAD peers[0] is not a bin of at most 8192"},
        {XP_MSG_LOAD, LOAD_TP_RANK, "LOAD tp rank 2 outside [0, 2)", NULL},
        {XP_MSG_LOAD, LOAD_EP_SIZE, "LOAD ep size 0", NULL},
        {XP_MSG_LOAD, LOAD_N_CTX, "LOAD: n_ctx 0", NULL},
        {XP_MSG_LOAD, LOAD_TOO_MANY_LAYERS, "LOAD: n_layers 4097",
         "LOAD expert_lo is not an array of at most 4096"},
        {XP_MSG_LOAD, LOAD_STATE_STORE_NEG, "LOAD: n_state_store -1 outside [0, 65536]", NULL},
        {XP_MSG_LOAD, LOAD_STATE_STORE_BIG, "LOAD: n_state_store 65537 outside [0, 65536]", NULL},
        {XP_MSG_READY, READY_STATUS_END, "READY: status 14 unknown", NULL},
        {XP_MSG_READY, READY_STATUS_NEG, "READY: status -1 unknown", NULL},
        {XP_MSG_READY, READY_BLOCKS_NEG, "READY: n_blocks -1", NULL},
        {XP_MSG_READY, READY_VOCAB_BIG, "n_vocab 16777217", NULL},
        {XP_MSG_READY, READY_SWA_NEG, "n_swa_blocks -1 / state slots", NULL},
        {XP_MSG_RESULT, RESULT_STATUS_NEG, "RESULT: status -2 unknown", NULL},
        {XP_MSG_RESULT, RESULT_VOCAB_BIG, "RESULT: n_vocab 16777217", NULL},
    };
    assert_int_equal(TDM_STATUS_COUNT, 14); /* the READY_STATUS_END needle */
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    /* the base messages are valid, and pack_raw writes what the encoder writes */
    for (int t = XP_MSG_HELLO; t < XP_MSG_TYPE_END; t++) {
        if (t == XP_MSG_STEP) {
            continue;
        }
        xp_msg_t m, d;
        base_msg((xp_msg_type_t)t, g, &m);
        msgpack_sbuffer enc;
        encode_ok(&m, &enc);
        msgpack_sbuffer_clear(&sb);
        pack_raw(&pk, &m);
        assert_int_equal(sb.size, enc.size);
        assert_memory_equal(sb.data, enc.data, sb.size);
        tdm_error_t err;
        assert_int_equal(decode_copy(sb.data, sb.size, &d, &err), TDM_OK);
        assert_msg_equal(&m, &d);
        xp_msg_free(&d);
        msgpack_sbuffer_destroy(&enc);
    }

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xp_msg_t m, d;
        base_msg(cases[i].type, g, &m);
        break_msg(cases[i].c, g, &m);
        const char *dec_needle = cases[i].dec_needle ? cases[i].dec_needle : cases[i].enc_needle;

        msgpack_sbuffer_clear(&sb);
        pack_raw(&pk, &m);
        tdm_error_t err;
        tdm_status_t st = decode_copy(sb.data, sb.size, &d, &err);
        if (st != TDM_ERR_FORMAT || strstr(tdm_error_msg(&err), dec_needle) == NULL) {
            fail_msg("case %zu decode: want TDM_ERR_FORMAT naming \"%s\", got %d: %s", i,
                     dec_needle, (int)st, tdm_error_msg(&err));
        }

        msgpack_sbuffer out;
        msgpack_sbuffer_init(&out);
        msgpack_sbuffer_write(&out, "x", 1);
        tdm_error_clear(&err);
        st = xp_msg_encode(&out, &m, &err);
        if (st != TDM_ERR_INVALID_PARAM ||
            strstr(tdm_error_msg(&err), cases[i].enc_needle) == NULL) {
            fail_msg("case %zu encode: want TDM_ERR_INVALID_PARAM naming \"%s\", got %d: %s", i,
                     cases[i].enc_needle, (int)st, tdm_error_msg(&err));
        }
        assert_int_equal(out.size, 1); /* left as it was */
        msgpack_sbuffer_destroy(&out);
        /* xp_msg_validate applies the same rule with the status asked for */
        assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    }
    msgpack_sbuffer_destroy(&sb);
    free(g);
}

/* The NCCL id travels exactly when proto is nccl over more than one rank, as the last
 * field, a 128-byte bin; otherwise the encoder ignores it and the decoder leaves it zero. */
static void test_load_nccl_id(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    xp_msg_t m, d;
    tdm_error_t err;
    msgpack_sbuffer a, b;

    base_msg(XP_MSG_LOAD, g, &m); /* tp 2 x ep 2 */
    m.load.proto = XP_MSG_PROTO_NCCL;
    for (int i = 0; i < XP_MSG_NCCL_ID_BYTES; i++) {
        m.load.nccl_id[i] = (uint8_t)(0x80 ^ i);
    }
    assert_true(xp_msg_load_has_nccl_id(&m.load));
    encode_ok(&m, &a);
    assert_true(a.size > XP_MSG_NCCL_ID_BYTES + 2);
    const uint8_t *tail = (const uint8_t *)a.data + a.size - XP_MSG_NCCL_ID_BYTES - 2;
    assert_int_equal(tail[0], 0xc4); /* bin 8 */
    assert_int_equal(tail[1], XP_MSG_NCCL_ID_BYTES);
    assert_memory_equal(tail + 2, m.load.nccl_id, XP_MSG_NCCL_ID_BYTES);
    assert_int_equal(decode_copy(a.data, a.size, &d, &err), TDM_OK);
    assert_true(xp_msg_load_has_nccl_id(&d.load));
    assert_memory_equal(d.load.nccl_id, m.load.nccl_id, XP_MSG_NCCL_ID_BYTES);
    assert_msg_equal(&m, &d);
    xp_msg_free(&d);
    msgpack_sbuffer_destroy(&a);

    static const uint8_t zero[XP_MSG_NCCL_ID_BYTES] = {0};
    for (int c = 0; c < 3; c++) {
        base_msg(XP_MSG_LOAD, g, &m);
        if (c == 0) { /* nccl, but a world of one: no NCCL calls, no id */
            m.load.proto = XP_MSG_PROTO_NCCL;
            m.load.tp_size = m.load.ep_size = 1;
            m.load.tp_rank = m.load.ep_rank = 0;
            m.load.n_peers = 1;
        } else {
            m.load.proto = c == 1 ? XP_MSG_PROTO_AM : XP_MSG_PROTO_RMA;
        }
        encode_ok(&m, &b); /* the id all zero */
        memset(m.load.nccl_id, 0x5a, XP_MSG_NCCL_ID_BYTES);
        assert_false(xp_msg_load_has_nccl_id(&m.load));
        encode_ok(&m, &a); /* ignored */
        assert_int_equal(a.size, b.size);
        assert_memory_equal(a.data, b.data, a.size);
        assert_int_equal(decode_copy(a.data, a.size, &d, &err), TDM_OK);
        assert_false(xp_msg_load_has_nccl_id(&d.load));
        assert_memory_equal(d.load.nccl_id, zero, XP_MSG_NCCL_ID_BYTES);
        assert_int_equal(d.load.proto, m.load.proto);
        xp_msg_free(&d);
        msgpack_sbuffer_destroy(&a);
        msgpack_sbuffer_destroy(&b);
    }
    free(g);
}

static void test_encoder_refuses_invalid(void **state)
{
    (void)state;
    int32_t tok[2] = {1, 2}, pos[2] = {0, 1}, seq[2] = {0, 1};
    uint8_t want[2] = {1, 0};
    xp_step_seq_t seqs[1] = {{NULL, 0, NULL, -1, -1, -1}};
    xp_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XP_MSG_STEP;
    m.step = (xp_step_t){2, tok, pos, seq, want, 1, 1, seqs, 0, NULL, NULL};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_sbuffer_write(&sb, "x", 1);
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(xp_msg_encode(&sb, &m, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(tdm_error_msg(&err), "seq[1]"));
    assert_int_equal(sb.size, 1); /* left as it was */
    seq[1] = 0;
    assert_int_equal(xp_msg_encode(&sb, &m, NULL), TDM_OK);
    assert_true(sb.size > 1);
    m.type = (xp_msg_type_t)0;
    assert_int_equal(xp_msg_encode(&sb, &m, NULL), TDM_ERR_INVALID_PARAM);
    m.type = XP_MSG_TYPE_END;
    assert_int_equal(xp_msg_encode(&sb, &m, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(xp_msg_encode(NULL, &m, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(xp_msg_encode(&sb, NULL, NULL), TDM_ERR_INVALID_PARAM);

    /* sliding-window tables: every seq has one or none does; ids >= -1 */
    const int32_t blk[2] = {4, 5}, swa_ok[2] = {-1, 7}, swa_bad[2] = {-1, -3};
    xp_step_seq_t two[2] = {{blk, 2, swa_ok, -1, -1, -1}, {blk, 1, NULL, -1, -1, -1}};
    m.type = XP_MSG_STEP;
    m.step = (xp_step_t){2, tok, pos, seq, want, 1, 2, two, 0, NULL, NULL};
    msgpack_sbuffer_clear(&sb);
    tdm_error_clear(&err);
    assert_int_equal(xp_msg_encode(&sb, &m, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(tdm_error_msg(&err), "seqs[1] lacks a sliding-window table"));
    two[1].swa_blocks = swa_bad;
    two[1].n_blocks = 2;
    tdm_error_clear(&err);
    assert_int_equal(xp_msg_encode(&sb, &m, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(tdm_error_msg(&err), "seqs[1].swa_blocks[1] = -3 is below -1"));
    assert_int_equal(sb.size, 0);
    two[1].swa_blocks = swa_ok;
    assert_int_equal(xp_msg_encode(&sb, &m, NULL), TDM_OK);
    xp_msg_t d2;
    assert_int_equal(decode_copy(sb.data, sb.size, &d2, &err), TDM_OK);
    assert_msg_equal(&m, &d2);
    xp_msg_free(&d2);

    /* what has no wire form: NULL arrays, strings without their NUL */
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    static const struct {
        xp_msg_type_t type;
        int c;
        const char *needle;
    } cases[] = {
        {XP_MSG_JOIN, 0, "UCX address"},
        {XP_MSG_JOIN, 1, "JOIN tandem_version"},
        {XP_MSG_JOIN, 2, "JOIN name"},
        {XP_MSG_LOAD, 3, "peer addresses"},
        {XP_MSG_LOAD, 4, "peer 1 address"},
        {XP_MSG_LOAD, 5, "n_layers 3"},
        {XP_MSG_LOAD, 6, "n_layers 3"},
        {XP_MSG_READY, 7, "READY error"},
        {XP_MSG_RESULT, 8, "logits is NULL"},
        {XP_MSG_RESULT, 9, "RESULT error"},
        {XP_MSG_JOIN_ACK, 10, "JOIN_ACK reason"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        base_msg(cases[i].type, g, &m);
        switch (cases[i].c) {
        case 0:
            m.join.ucx.data = NULL;
            break;
        case 1:
            memset(m.join.tandem_version, 'v', sizeof(m.join.tandem_version));
            break;
        case 2:
            memset(m.join.name, 'n', sizeof(m.join.name));
            break;
        case 3:
            m.load.peers = NULL;
            break;
        case 4:
            g->peers[1].data = NULL;
            break;
        case 5:
            m.load.expert_lo = NULL;
            break;
        case 6:
            m.load.expert_n = NULL;
            break;
        case 7:
            memset(m.ready.error, 'e', sizeof(m.ready.error));
            break;
        case 8:
            m.result.n_logits = 2;
            m.result.n_vocab = 3;
            break;
        case 9:
            memset(m.result.error, 'e', sizeof(m.result.error));
            break;
        default:
            memset(m.join_ack.reason, 'r', sizeof(m.join_ack.reason));
            break;
        }
        msgpack_sbuffer_clear(&sb);
        tdm_error_clear(&err);
        tdm_status_t st = xp_msg_encode(&sb, &m, &err);
        if (st != TDM_ERR_INVALID_PARAM || strstr(tdm_error_msg(&err), cases[i].needle) == NULL) {
            fail_msg("case %zu: want TDM_ERR_INVALID_PARAM naming \"%s\", got %d: %s", i,
                     cases[i].needle, (int)st, tdm_error_msg(&err));
        }
        assert_int_equal(sb.size, 0);
    }

    /* a world the decoder could not take (more than XP_MSG_MAX_WORLD peer addresses) */
    base_msg(XP_MSG_LOAD, g, &m);
    m.load.tp_size = 256;
    m.load.ep_size = 512;
    m.load.n_peers = 256 * 512;
    xp_msg_blob_t *many = calloc((size_t)m.load.n_peers, sizeof(*many));
    assert_non_null(many);
    for (int32_t i = 0; i < m.load.n_peers; i++) {
        many[i].data = g->ucx;
        many[i].len = 1;
    }
    m.load.peers = many;
    msgpack_sbuffer_clear(&sb);
    tdm_error_clear(&err);
    assert_int_equal(xp_msg_encode(&sb, &m, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(tdm_error_msg(&err), "world of 256 x 512 ranks exceeds 65536"));
    assert_int_equal(sb.size, 0);
    free(many);

    /* logits that do not fit a msgpack bin (never read: the check comes first) */
    static const float one = 1.0f;
    base_msg(XP_MSG_RESULT, g, &m);
    m.result.n_logits = 1 << 20;
    m.result.n_vocab = 1 << 10; /* 4 GiB of f32 */
    m.result.logits = &one;
    tdm_error_clear(&err);
    assert_int_equal(xp_msg_encode(&sb, &m, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(tdm_error_msg(&err), "do not fit a msgpack bin"));
    assert_int_equal(sb.size, 0);
    m.result.n_vocab = (1 << 10) - 1; /* just under: allowed by the rules */
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_INVALID_PARAM, NULL), TDM_OK);

    /* the largest UCX address and expert range allowed */
    base_msg(XP_MSG_JOIN, g, &m);
    m.join.ucx.data = g->big_addr;
    m.join.ucx.len = XP_MSG_MAX_ADDR;
    msgpack_sbuffer_destroy(&sb);
    encode_ok(&m, &sb);
    xp_msg_t d;
    assert_int_equal(decode_copy(sb.data, sb.size, &d, &err), TDM_OK);
    assert_msg_equal(&m, &d);
    xp_msg_free(&d);
    base_msg(XP_MSG_LOAD, g, &m);
    g->expert_lo[0] = INT32_MAX - 5;
    g->expert_n[0] = 5;
    msgpack_sbuffer_destroy(&sb);
    encode_ok(&m, &sb);
    assert_int_equal(decode_copy(sb.data, sb.size, &d, &err), TDM_OK);
    assert_msg_equal(&m, &d);
    xp_msg_free(&d);

    msgpack_sbuffer_destroy(&sb);
    free(g);
}

/* ---- corpus writer ---- */

static int write_corpus(const char *dir)
{
    gen_store_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return 1;
    }
    uint64_t s = 2026;
    /* every type, then (t == XP_MSG_TYPE_END) a LOAD with an NCCL id, (TYPE_END + 1) a
     * STEP with sliding-window tables, (TYPE_END + 2) one with recurrent-state slots and
     * (TYPE_END + 3) one with disaggregated prefill's K/V sends and decode peer */
    for (int t = XP_MSG_HELLO; t <= XP_MSG_TYPE_END + 3; t++) {
        xp_msg_t m;
        if (t == XP_MSG_TYPE_END) {
            do {
                gen_msg(&s, XP_MSG_LOAD, g, &m);
            } while (!xp_msg_load_has_nccl_id(&m.load) || m.load.n_layers > 8);
        } else if (t == XP_MSG_TYPE_END + 1) {
            do {
                gen_msg(&s, XP_MSG_STEP, g, &m);
            } while (m.step.n_tokens == 0 || m.step.n_tokens > 40 ||
                     m.step.seqs[0].swa_blocks == NULL);
        } else if (t == XP_MSG_TYPE_END + 3) {
            do {
                gen_msg(&s, XP_MSG_STEP, g, &m);
            } while (m.step.n_tokens == 0 || m.step.n_tokens > 40 || m.step.n_kv_sends == 0 ||
                     m.kv_peer.n_ranks == 0 || m.kv_peer.n_ranks > 2);
        } else if (t == XP_MSG_TYPE_END + 2) {
            do {
                gen_msg(&s, XP_MSG_STEP, g, &m);
            } while (m.step.n_tokens == 0 || m.step.n_tokens > 40 || m.step.n_seqs < 2 ||
                     m.step.seqs[0].swa_blocks != NULL || m.step.seqs[0].state_slot < 0 ||
                     m.step.seqs[0].state_load < 0);
        } else {
            do {
                gen_msg(&s, (xp_msg_type_t)t, g, &m);
            } while (
                (t == XP_MSG_STEP &&
                 (m.step.n_tokens == 0 || m.step.n_tokens > 40 || m.step.n_kv_sends > 0 ||
                  m.kv_peer.n_ranks > 0 || m.step.seqs[0].swa_blocks != NULL ||
                  m.step.seqs[0].state_slot >= 0)) ||
                (t == XP_MSG_RESULT && m.result.n_logits * m.result.n_vocab == 0) ||
                (t == XP_MSG_LOAD && (m.load.n_peers < 2 || m.load.n_layers == 0 ||
                                      m.load.n_layers > 8 || m.load.proto == XP_MSG_PROTO_NCCL)));
        }
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        xp_msg_t d;
        if (xp_msg_encode(&sb, &m, NULL) != TDM_OK ||
            xp_msg_decode(sb.data, sb.size, &d, NULL) != TDM_OK) {
            fprintf(stderr, "cannot encode a valid %s\n", xp_msg_type_str(m.type));
            free(g);
            return 1;
        }
        xp_msg_free(&d);
        char path[4096], name[32];
        snprintf(name, sizeof(name), "%s",
                 t == XP_MSG_TYPE_END       ? "LOAD_NCCL"
                 : t == XP_MSG_TYPE_END + 1 ? "STEP_SWA"
                 : t == XP_MSG_TYPE_END + 2 ? "STEP_STATE"
                 : t == XP_MSG_TYPE_END + 3 ? "STEP_KV"
                                            : xp_msg_type_str(t));
        for (char *c = name; *c; c++) {
            *c = (char)(*c == '_' ? '-' : *c | 0x20);
        }
        snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
        FILE *f = fopen(path, "wb");
        if (f == NULL || fwrite(sb.data, 1, sb.size, f) != sb.size) {
            fprintf(stderr, "cannot write %s\n", path);
            if (f != NULL) {
                fclose(f);
            }
            msgpack_sbuffer_destroy(&sb);
            free(g);
            return 1;
        }
        fclose(f);
        msgpack_sbuffer_destroy(&sb);
    }
    free(g);
    return 0;
}

/* Disaggregated prefill of a recurrent model (protocol 8): a send's state slot, a region's
 * unit and the given-state mark round-trip; each breaks the message where it must. */
static void test_disagg_state_fields(void **state)
{
    (void)state;
    static const int32_t tok[2] = {5, 6}, pos[2] = {31, 0}, seq[2] = {0, 1};
    static const uint8_t want[2] = {1, 1};
    static const int32_t blocks[2] = {3, 4}, dst[2] = {7, 9};
    static const uint8_t key[3] = {1, 2, 3};
    xp_step_seq_t seqs[2] = {
        {.blocks = blocks,
         .n_blocks = 2,
         .state_slot = 1,
         .state_load = XP_STATE_GIVEN,
         .state_save = -1},
        {.blocks = blocks, .n_blocks = 1, .state_slot = -1, .state_load = -1, .state_save = -1},
    };
    int32_t swa_dst[2] = {-1, 6};
    xp_step_kv_send_t sends[2] = {
        {.seq = 0, .lo = 0, .hi = 2, .dst = dst, .state_dst = 4, .swa_dst = swa_dst},
        {.seq = 1, .lo = 0, .hi = 1, .dst = dst, .state_dst = -1},
    };
    xp_msg_kv_region_t regions[2] = {
        {.base = 4096, .len = 8192, .unit = 2048, .rkey = {key, 3}},
        {.base = 0, .len = 0, .unit = 0, .rkey = {NULL, 0}},
    };
    xp_msg_kv_rank_t rank = {.addr = {key, 3}, .n_regions = 2, .regions = regions};
    xp_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XP_MSG_STEP;
    m.step = (xp_step_t){.n_tokens = 2,
                         .token = tok,
                         .pos = pos,
                         .seq = seq,
                         .want_logits = want,
                         .n_logits = 2,
                         .n_seqs = 2,
                         .seqs = seqs,
                         .n_kv_sends = 2,
                         .kv_sends = sends};
    m.kv_peer = (xp_msg_kv_peer_t){.epoch = 3, .n_ranks = 1, .ranks = &rank};
    msgpack_sbuffer sb;
    encode_ok(&m, &sb);
    xp_msg_t d;
    tdm_error_t err;
    assert_int_equal(decode_copy(sb.data, sb.size, &d, &err), TDM_OK);
    assert_int_equal(d.step.kv_sends[0].state_dst, 4);
    assert_int_equal(d.step.kv_sends[1].state_dst, -1);
    assert_int_equal(d.step.seqs[0].state_load, XP_STATE_GIVEN);
    assert_non_null(d.step.kv_sends[0].swa_dst);
    assert_int_equal(d.step.kv_sends[0].swa_dst[1], 6);
    assert_null(d.step.kv_sends[1].swa_dst);
    assert_true(d.kv_peer.ranks[0].regions[0].unit == 2048);
    assert_msg_equal(&m, &d);
    xp_msg_free(&d);
    msgpack_sbuffer_destroy(&sb);

    /* each of these is refused by the encoder (and by xp_msg_validate on decode) */
    msgpack_sbuffer_init(&sb);
    sends[1].state_dst = 2; /* a state for a sequence without a slot */
    tdm_error_clear(&err);
    assert_int_equal(xp_msg_encode(&sb, &m, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(tdm_error_msg(&err), "kv_sends[1] seq 1 blocks [0, 1) state 2"));
    sends[1].state_dst = -2;
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    sends[1].state_dst = -1;
    seqs[0].state_load = XP_STATE_GIVEN - 1;
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    seqs[0].state_load = XP_STATE_GIVEN;
    seqs[1].state_load = XP_STATE_GIVEN; /* given, but no slot to be given into */
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    seqs[1].state_load = -1;
    swa_dst[0] = -2; /* sliding ids are >= -1 */
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    swa_dst[0] = -1;
    regions[0].unit = 8193; /* a unit larger than its region */
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    regions[0].unit = 0; /* no unit for a region with bytes */
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    regions[0].unit = 2048;
    regions[1].unit = 16; /* a unit for an empty region */
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_ERR_FORMAT);
    regions[1].unit = 0;
    assert_int_equal(xp_msg_validate(&m, TDM_ERR_FORMAT, NULL), TDM_OK);
    assert_int_equal(sb.size, 0);
    msgpack_sbuffer_destroy(&sb);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0) {
        return write_corpus(argv[2]);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_every_truncation_rejected),
        cmocka_unit_test(test_bit_flips_never_crash),
        cmocka_unit_test(test_malformed_cases),
        cmocka_unit_test(test_invalid_refused_both_ways),
        cmocka_unit_test(test_load_nccl_id),
        cmocka_unit_test(test_encoder_refuses_invalid),
        cmocka_unit_test(test_disagg_state_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
