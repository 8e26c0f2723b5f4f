/*
 * test_xp_msg.c - the control-plane message codec: seeded round trips of every message
 * type, every truncation of a STEP, 10,000 seeded bit flips, and hand-made malformed
 * messages that must be refused with TDM_ERR_FORMAT naming the field.
 *
 * `test_xp_msg --write-corpus DIR` writes the fuzz seed corpus (tests/fuzz/corpus/xp_msg).
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

#define GEN_TOKENS 300
#define GEN_SEQS   8
#define GEN_BLOCKS 20
#define GEN_LOGITS 8
#define GEN_VOCAB  50

typedef struct gen_store {
    int32_t token[GEN_TOKENS], pos[GEN_TOKENS], seq[GEN_TOKENS];
    uint8_t want[GEN_TOKENS];
    int32_t blocks[GEN_SEQS][GEN_BLOCKS];
    xp_step_seq_t seqs[GEN_SEQS];
    float logits[GEN_LOGITS * GEN_VOCAB];
} gen_store_t;

static void rand_str(uint64_t *s, char *dst, size_t cap)
{
    size_t n = rng_below(s, (uint32_t)cap);
    for (size_t i = 0; i < n; i++) {
        dst[i] = (char)(1 + rng_below(s, 255)); /* any byte but NUL, UTF-8 or not */
    }
    dst[n] = '\0';
}

/* A random valid message of the given type; arrays live in g. */
static void gen_msg(uint64_t *s, xp_msg_type_t type, gen_store_t *g, xp_msg_t *m)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->request_id = rng_next(s);
    switch (type) {
    case XP_MSG_JOIN:
        rand_str(s, m->join.tandem_version, sizeof(m->join.tandem_version));
        m->join.capabilities = (uint32_t)rng_next(s);
        for (int i = 0; i < XP_MSG_MODEL_HASH_BYTES; i++) {
            m->join.model.hash[i] = (uint8_t)rng_next(s);
        }
        m->join.model.file_size = rng_next(s) >> rng_below(s, 64);
        m->join.model.n_tensors = rng_next(s) >> rng_below(s, 64);
        m->join.world_size = 1 + (int32_t)rng_below(s, XP_MSG_MAX_WORLD);
        m->join.rank = (int32_t)rng_below(s, (uint32_t)m->join.world_size);
        break;
    case XP_MSG_JOIN_ACK:
        m->join_ack.accepted = rng_below(s, 2);
        rand_str(s, m->join_ack.reason, sizeof(m->join_ack.reason));
        break;
    case XP_MSG_LOAD:
        m->load.tp_size = 1 + (int32_t)rng_below(s, 16);
        m->load.tp_rank = (int32_t)rng_below(s, (uint32_t)m->load.tp_size);
        m->load.ep_size = 1 + (int32_t)rng_below(s, 16);
        m->load.ep_rank = (int32_t)rng_below(s, (uint32_t)m->load.ep_size);
        m->load.n_ctx = 1 + (int32_t)rng_below(s, 1 << 20);
        m->load.kv_bytes = rng_next(s) >> rng_below(s, 64);
        break;
    case XP_MSG_STEP: {
        xp_step_t *st = &m->step;
        st->n_seqs = (int32_t)rng_below(s, GEN_SEQS + 1);
        st->n_tokens = st->n_seqs == 0 ? 0 : (int32_t)rng_below(s, GEN_TOKENS + 1);
        for (int32_t i = 0; i < st->n_tokens; i++) {
            g->token[i] = (int32_t)((uint32_t)rng_next(s) >> (1 + rng_below(s, 31)));
            g->pos[i] = (int32_t)rng_below(s, 1 << 17);
            g->seq[i] = (int32_t)rng_below(s, (uint32_t)st->n_seqs);
            g->want[i] = (uint8_t)rng_below(s, 2);
            st->n_logits += g->want[i];
        }
        for (int32_t q = 0; q < st->n_seqs; q++) {
            g->seqs[q].n_blocks = (int32_t)rng_below(s, GEN_BLOCKS + 1);
            g->seqs[q].blocks = g->blocks[q];
            for (int32_t j = 0; j < g->seqs[q].n_blocks; j++) {
                g->blocks[q][j] = (int32_t)((uint32_t)rng_next(s) >> (1 + rng_below(s, 31)));
            }
        }
        st->token = g->token;
        st->pos = g->pos;
        st->seq = g->seq;
        st->want_logits = g->want;
        st->seqs = g->seqs;
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
        break;
    case XP_MSG_HEARTBEAT:
        m->heartbeat.time_ns = rng_next(s);
        break;
    default:
        break;
    }
}

static void assert_msg_equal(const xp_msg_t *a, const xp_msg_t *b)
{
    assert_int_equal(a->type, b->type);
    assert_true(a->request_id == b->request_id);
    switch (a->type) {
    case XP_MSG_JOIN:
        assert_string_equal(a->join.tandem_version, b->join.tandem_version);
        assert_int_equal(a->join.capabilities, b->join.capabilities);
        assert_memory_equal(a->join.model.hash, b->join.model.hash, XP_MSG_MODEL_HASH_BYTES);
        assert_true(a->join.model.file_size == b->join.model.file_size);
        assert_true(a->join.model.n_tensors == b->join.model.n_tensors);
        assert_int_equal(a->join.rank, b->join.rank);
        assert_int_equal(a->join.world_size, b->join.world_size);
        break;
    case XP_MSG_JOIN_ACK:
        assert_int_equal(a->join_ack.accepted, b->join_ack.accepted);
        assert_string_equal(a->join_ack.reason, b->join_ack.reason);
        break;
    case XP_MSG_LOAD:
        assert_memory_equal(&a->load, &b->load, sizeof(a->load));
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
        break;
    case XP_MSG_HEARTBEAT:
        assert_true(a->heartbeat.time_ns == b->heartbeat.time_ns);
        break;
    default:
        break;
    }
}

/* Decodes an exact-size heap copy, so ASan sees any read past the input. */
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

/* ---- tests ---- */

static void test_round_trip_every_type(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int iter = 0; iter < 300; iter++) {
        for (int t = XP_MSG_JOIN; t < XP_MSG_TYPE_END; t++) {
            xp_msg_t m, d, d2;
            gen_msg(&s, (xp_msg_type_t)t, g, &m);
            msgpack_sbuffer a, b;
            encode_ok(&m, &a);
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
    free(g);
}

static void test_step_every_truncation_rejected(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    uint64_t s = 42;
    xp_msg_t m;
    do {
        gen_msg(&s, XP_MSG_STEP, g, &m);
    } while (m.step.n_tokens < 50 || m.step.n_seqs < 2);
    msgpack_sbuffer sb;
    encode_ok(&m, &sb);
    for (size_t len = 0; len < sb.size; len++) {
        xp_msg_t d;
        tdm_error_t err;
        tdm_status_t st = decode_copy(sb.data, len, &d, &err);
        if (st != TDM_ERR_FORMAT) {
            fail_msg("prefix of %zu of %zu bytes: status %d", len, sb.size, (int)st);
        }
    }
    /* and one byte too many */
    msgpack_sbuffer_write(&sb, "\0", 1);
    xp_msg_t d;
    tdm_error_t err;
    assert_int_equal(decode_copy(sb.data, sb.size, &d, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(tdm_error_msg(&err), "trailing"));
    msgpack_sbuffer_destroy(&sb);
    free(g);
}

static void test_bit_flips_never_crash(void **state)
{
    (void)state;
    gen_store_t *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    uint64_t s = 7;
    msgpack_sbuffer enc[XP_MSG_TYPE_END];
    for (int t = XP_MSG_JOIN; t < XP_MSG_TYPE_END; t++) {
        xp_msg_t m;
        do {
            gen_msg(&s, (xp_msg_type_t)t, g, &m);
        } while (t == XP_MSG_STEP && m.step.n_tokens < 5);
        encode_ok(&m, &enc[t]);
    }
    int accepted = 0, rejected = 0;
    uint8_t *buf = malloc(1 << 16);
    assert_non_null(buf);
    for (int iter = 0; iter < 10000; iter++) {
        int t = XP_MSG_JOIN + (int)rng_below(&s, XP_MSG_TYPE_END - XP_MSG_JOIN);
        size_t n = enc[t].size;
        assert_true(n <= (1 << 16));
        memcpy(buf, enc[t].data, n);
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
        accepted++;
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
    print_message("bit flips: %d accepted, %d rejected\n", accepted, rejected);
    assert_true(rejected > 0);
    free(buf);
    for (int t = XP_MSG_JOIN; t < XP_MSG_TYPE_END; t++) {
        msgpack_sbuffer_destroy(&enc[t]);
    }
    free(g);
}

/* ---- hand-made malformed messages ---- */

static void pack_header(msgpack_packer *pk, const char *magic, unsigned version, unsigned type)
{
    msgpack_pack_array(pk, 5);
    msgpack_pack_str_with_body(pk, magic, strlen(magic));
    msgpack_pack_uint16(pk, (uint16_t)version);
    msgpack_pack_uint8(pk, (uint8_t)type);
    msgpack_pack_uint64(pk, 99);
}

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

/* A STEP body of 2 tokens / 2 seqs with one piece replaced according to `bad`. */
static void pack_step(msgpack_packer *pk, int bad)
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
    msgpack_pack_array(pk, 2);
    msgpack_pack_int32(pk, bad == 7 ? (1 << 20) + 1 : 1);
    msgpack_pack_array(pk, 1);
    msgpack_pack_int32(pk, 3);
    msgpack_pack_array(pk, 2);
    msgpack_pack_int32(pk, bad == 8 ? 3 : 0);
    msgpack_pack_array(pk, 0);
}

static void test_malformed_cases(void **state)
{
    (void)state;
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

    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, "TDM2", XP_MSG_PROTOCOL_VERSION, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "magic");

    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION + 1, XP_MSG_SHUTDOWN);
    msgpack_pack_array(&pk, 0);
    expect_format(&sb, "version");

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
    msgpack_pack_array(&pk, 5);
    msgpack_pack_int32(&pk, 0);
    msgpack_pack_str_with_body(&pk, "", 0);
    msgpack_pack_int32(&pk, 2);
    msgpack_pack_int32(&pk, 3);
    msgpack_pack_bin_with_body(&pk, "0123456789abcdef", 16);
    expect_format(&sb, "logits blob");

    /* a JOIN whose rank is outside the world */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_JOIN);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_str_with_body(&pk, "0.1", 3);
    msgpack_pack_uint32(&pk, 0);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_bin_with_body(&pk, "0123456789abcdef0123456789abcdef", 32);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_int32(&pk, 4);
    msgpack_pack_int32(&pk, 4);
    expect_format(&sb, "JOIN world rank");

    /* a string with a NUL inside */
    msgpack_sbuffer_clear(&sb);
    pack_header(&pk, XP_MSG_MAGIC, XP_MSG_PROTOCOL_VERSION, XP_MSG_JOIN_ACK);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_true(&pk);
    msgpack_pack_str_with_body(&pk, "a\0b", 3);
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
}

static void test_encoder_refuses_invalid(void **state)
{
    (void)state;
    int32_t tok[2] = {1, 2}, pos[2] = {0, 1}, seq[2] = {0, 1};
    uint8_t want[2] = {1, 0};
    xp_step_seq_t seqs[1] = {{NULL, 0}};
    xp_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XP_MSG_STEP;
    m.step = (xp_step_t){2, tok, pos, seq, want, 1, 1, seqs};
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
    msgpack_sbuffer_destroy(&sb);
}

/* ---- corpus writer ---- */

static int write_corpus(const char *dir)
{
    gen_store_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return 1;
    }
    uint64_t s = 2026;
    for (int t = XP_MSG_JOIN; t < XP_MSG_TYPE_END; t++) {
        xp_msg_t m;
        do {
            gen_msg(&s, (xp_msg_type_t)t, g, &m);
        } while ((t == XP_MSG_STEP && (m.step.n_tokens == 0 || m.step.n_tokens > 40)) ||
                 (t == XP_MSG_RESULT && m.result.n_logits * m.result.n_vocab == 0));
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        if (xp_msg_encode(&sb, &m, NULL) != TDM_OK) {
            free(g);
            return 1;
        }
        char path[4096], name[32];
        snprintf(name, sizeof(name), "%s", xp_msg_type_str(t));
        for (char *c = name; *c; c++) {
            *c = (char)(*c == '_' ? '-' : *c | 0x20);
        }
        snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
        FILE *f = fopen(path, "wb");
        if (f == NULL || fwrite(sb.data, 1, sb.size, f) != sb.size) {
            fprintf(stderr, "cannot write %s\n", path);
            free(g);
            return 1;
        }
        fclose(f);
        msgpack_sbuffer_destroy(&sb);
    }
    free(g);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0) {
        return write_corpus(argv[2]);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_step_every_truncation_rejected),
        cmocka_unit_test(test_bit_flips_never_crash),
        cmocka_unit_test(test_malformed_cases),
        cmocka_unit_test(test_encoder_refuses_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
