/*
 * test_scheduler.c - continuous batching against a test executor whose "model" reads
 * its whole context through the KV cache.
 *
 * The test executor keeps a real KV store: every step token is written at the
 * (block, offset) its sequence's block table names, tagged with its position; a token
 * needing logits then reads positions 0..pos back through the block table (failing the
 * test on a missing or wrong-position entry) and its logits peak at a hash of that whole
 * context. Any wrong block table, prefix-cache hit on the wrong blocks, lost chunk or
 * bad preemption replay therefore changes the generated tokens, which are compared with
 * a direct computation from the true token sequence.
 *
 * With a sliding pool (a model with sliding-window layers) the executor also keeps a
 * second store addressed by the sliding tables: every token is written there too, and
 * every token of a step reads its window (pos - W + 1 .. pos) back through its sliding
 * table, which must give the same tokens as the full store; a sequence's sliding table
 * may hold no more blocks than its window and the step's tokens need.
 */
#include "common/clock.h"
#include "coordinator/scheduler.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define NV 64
#define BT 4

typedef struct fake_exec {
    int32_t n_blocks;
    int32_t *kv_tok;              /* [n_blocks * BT] */
    int32_t *kv_pos;              /* [n_blocks * BT] position + 1, 0 = empty */
    int32_t window, n_swa_blocks; /* the sliding pool (0: none) */
    int32_t *swa_tok, *swa_pos;   /* [n_swa_blocks * BT] */
    int32_t max_swa_live;         /* most sliding blocks one sequence held in a step */
    int32_t max_tokens_seen, max_seqs_seen, steps;
    int fail_at_step; /* 1-based; 0 = never */
    int32_t budget;
    /* a step takes busy_base + busy_tok x tokens seconds (busy-waits; 0: instant), and
     * the most tokens of a step that carried a decode row beside a prompt chunk */
    double busy_base, busy_tok;
    int32_t max_mixed_tokens;
} fake_exec_t;

static uint32_t ctx_hash(const int32_t *toks, int32_t n)
{
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < n; i++) {
        h = (h ^ (uint32_t)toks[i]) * 16777619u;
    }
    return h;
}

static void fill_logits(float *row, uint32_t h)
{
    for (int32_t v = 0; v < NV; v++) {
        row[v] = (float)((h >> (v % 16)) & 7) * 0.25f; /* a spread of values ... */
    }
    row[h % NV] = 10.0f; /* ... and one clear winner */
}

static tdm_status_t fake_step(void *impl, const xp_step_t *st, float *logits, tdm_error_t *err)
{
    fake_exec_t *fx = impl;
    fx->steps++;
    if (fx->busy_base > 0.0 || fx->busy_tok > 0.0) {
        const double t_end = tdm_now_s() + fx->busy_base + fx->busy_tok * st->n_tokens;
        while (tdm_now_s() < t_end) {
        }
    }
    if (st->n_seqs >= 2 && st->n_tokens > fx->max_mixed_tokens) {
        fx->max_mixed_tokens = st->n_tokens;
    }
    if (fx->fail_at_step == fx->steps) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "shard 1 is gone");
    }
    assert_true(st->n_tokens <= fx->budget);
    fx->max_tokens_seen = st->n_tokens > fx->max_tokens_seen ? st->n_tokens : fx->max_tokens_seen;
    fx->max_seqs_seen = st->n_seqs > fx->max_seqs_seen ? st->n_seqs : fx->max_seqs_seen;
    for (int32_t t = 0; t < st->n_tokens; t++) {
        const xp_step_seq_t *sq = &st->seqs[st->seq[t]];
        int32_t p = st->pos[t];
        assert_true(p / BT < sq->n_blocks);
        int32_t b = sq->blocks[p / BT];
        assert_true(b >= 0 && b < fx->n_blocks);
        fx->kv_tok[b * BT + p % BT] = st->token[t];
        fx->kv_pos[b * BT + p % BT] = p + 1;
        if (fx->n_swa_blocks > 0) {
            assert_non_null(sq->swa_blocks);
            const int32_t sb = sq->swa_blocks[p / BT];
            assert_true(sb >= 0 && sb < fx->n_swa_blocks);
            fx->swa_tok[sb * BT + p % BT] = st->token[t];
            fx->swa_pos[sb * BT + p % BT] = p + 1;
        } else {
            assert_null(sq->swa_blocks);
        }
    }
    for (int32_t t = 0; t < st->n_tokens && fx->n_swa_blocks > 0; t++) {
        /* a sliding layer: the window through the sliding table, as the full store has it */
        const xp_step_seq_t *sq = &st->seqs[st->seq[t]];
        const int32_t p = st->pos[t], lo = p >= fx->window ? p - fx->window + 1 : 0;
        for (int32_t q = lo; q <= p; q++) {
            const int32_t sb = sq->swa_blocks[q / BT], b = sq->blocks[q / BT];
            assert_true(sb >= 0 && sb < fx->n_swa_blocks);
            assert_int_equal(fx->swa_pos[sb * BT + q % BT], q + 1);
            assert_int_equal(fx->swa_tok[sb * BT + q % BT], fx->kv_tok[b * BT + q % BT]);
        }
    }
    for (int32_t q = 0; q < st->n_seqs && fx->n_swa_blocks > 0; q++) {
        /* a chunk of c tokens: at most ceil((W - 1 + c) / BT) + 1 sliding blocks */
        int32_t c = 0, live = 0;
        for (int32_t t = 0; t < st->n_tokens; t++) {
            c += st->seq[t] == q;
        }
        for (int32_t j = 0; j < st->seqs[q].n_blocks; j++) {
            live += st->seqs[q].swa_blocks[j] >= 0;
        }
        assert_true(live <= (fx->window - 1 + c + BT - 1) / BT + 1);
        fx->max_swa_live = live > fx->max_swa_live ? live : fx->max_swa_live;
    }
    int32_t row = 0, ctx[512];
    for (int32_t t = 0; t < st->n_tokens; t++) {
        if (!st->want_logits[t]) {
            continue;
        }
        const xp_step_seq_t *sq = &st->seqs[st->seq[t]];
        for (int32_t p = 0; p <= st->pos[t]; p++) {
            int32_t b = sq->blocks[p / BT];
            assert_int_equal(fx->kv_pos[b * BT + p % BT], p + 1);
            ctx[p] = fx->kv_tok[b * BT + p % BT];
        }
        fill_logits(logits + (size_t)row * NV, ctx_hash(ctx, st->pos[t] + 1));
        row++;
    }
    assert_int_equal(row, st->n_logits);
    return TDM_OK;
}

static const xp_executor_ops_t fake_ops = {.step = fake_step};

static void fake_init(fake_exec_t *fx, xp_executor_t *ex, int32_t n_blocks, int32_t budget)
{
    memset(fx, 0, sizeof(*fx));
    fx->n_blocks = n_blocks;
    fx->budget = budget;
    fx->kv_tok = calloc((size_t)n_blocks * BT, sizeof(int32_t));
    fx->kv_pos = calloc((size_t)n_blocks * BT, sizeof(int32_t));
    *ex = (xp_executor_t){&fake_ops, fx, NV, n_blocks, BT, budget, 8, 256, 0, 0, 0, 0, 0, 0};
}

/* The same with a sliding pool of n_swa_blocks blocks for a window of `window`. */
static void fake_init_swa(fake_exec_t *fx, xp_executor_t *ex, int32_t n_blocks, int32_t budget,
                          int32_t window, int32_t n_swa_blocks)
{
    fake_init(fx, ex, n_blocks, budget);
    fx->window = window;
    fx->n_swa_blocks = n_swa_blocks;
    fx->swa_tok = calloc((size_t)n_swa_blocks * BT, sizeof(int32_t));
    fx->swa_pos = calloc((size_t)n_swa_blocks * BT, sizeof(int32_t));
    ex->n_swa = window;
    ex->n_swa_blocks = n_swa_blocks;
}

static void fake_free(fake_exec_t *fx)
{
    free(fx->kv_tok);
    free(fx->kv_pos);
    free(fx->swa_tok);
    free(fx->swa_pos);
}

/* Greedy continuation computed directly from the true sequence. */
static void reference(const int32_t *prompt, int32_t n, int32_t n_gen, int32_t *out)
{
    int32_t seq[512];
    memcpy(seq, prompt, (size_t)n * sizeof(int32_t));
    float row[NV];
    for (int32_t i = 0; i < n_gen; i++) {
        fill_logits(row, ctx_hash(seq, n + i));
        int32_t best = 0;
        for (int32_t v = 1; v < NV; v++) {
            best = row[v] > row[best] ? v : best;
        }
        out[i] = seq[n + i] = best;
    }
}

typedef struct collected {
    int32_t toks[256];
    int32_t n;
    crd_finish_t finish;
    int n_final;
    int32_t n_cached;
    int stop_after; /* ask to stop after this many tokens (0 = never) */
    float logprob_sum;
    int top_ok;
    char error[128];
} collected_t;

static int collect(void *user, const crd_event_t *ev)
{
    collected_t *c = user;
    if (ev->token >= 0) {
        c->toks[c->n++] = ev->token;
        c->logprob_sum += ev->logprob;
        if (ev->n_top > 0) {
            int ok = ev->top_ids[0] == ev->token; /* greedy: the sampled token is the top */
            for (int32_t i = 1; i < ev->n_top; i++) {
                ok &= ev->top_logprobs[i] <= ev->top_logprobs[i - 1];
            }
            c->top_ok += ok;
        }
    }
    if (ev->finish != CRD_FINISH_NONE) {
        c->finish = ev->finish;
        c->n_final++;
        c->n_cached = ev->n_cached;
        if (ev->error != NULL) {
            strncpy(c->error, ev->error, sizeof(c->error) - 1);
        }
    }
    return c->stop_after > 0 && c->n >= c->stop_after;
}

static crd_request_params_t greedy_req(const int32_t *prompt, int32_t n, int32_t max_tokens,
                                       collected_t *c)
{
    crd_request_params_t rp = {0};
    rp.prompt = prompt;
    rp.n_prompt = n;
    rp.max_tokens = max_tokens;
    crd_sampling_params_default(&rp.sampling);
    rp.sampling.temperature = 0.0f;
    rp.on_event = collect;
    rp.user = c;
    return rp;
}

static void run_all(crd_sched_t *s)
{
    for (int i = 0; i < 10000 && crd_sched_has_work(s); i++) {
        assert_int_equal(crd_sched_step(s, NULL), TDM_OK);
    }
    assert_false(crd_sched_has_work(s));
}

static void make_prompt(int32_t *p, int32_t n, int32_t stem, int32_t salt)
{
    for (int32_t i = 0; i < n; i++) {
        p[i] = (stem * 7 + i * 3) % NV;
    }
    if (salt >= 0) {
        p[n - 1] = salt % NV;
    }
}

/* n_req requests on a cache of n_blocks (and, with window > 0, a sliding pool of
 * n_swa_blocks): every output equals the reference. */
static void check_many_swa(int32_t n_blocks, int32_t budget, int32_t max_running, int n_req,
                           int32_t window, int32_t n_swa_blocks, uint64_t *preemptions)
{
    fake_exec_t fx;
    xp_executor_t ex;
    if (window > 0) {
        fake_init_swa(&fx, &ex, n_blocks, budget, window, n_swa_blocks);
    } else {
        fake_init(&fx, &ex, n_blocks, budget);
    }
    crd_sched_params_t sp = {budget, max_running, 64, 256, 99, {0}, 0, 0.0};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    static int32_t prompts[16][64];
    collected_t got[16];
    int32_t plen[16], ngen[16];
    memset(got, 0, sizeof(got));
    for (int i = 0; i < n_req; i++) {
        plen[i] = 5 + (i * 11) % 40;
        ngen[i] = 3 + (i * 5) % 20;
        make_prompt(prompts[i], plen[i], i % 3, i); /* three shared stems */
        uint64_t id;
        crd_request_params_t rp = greedy_req(prompts[i], plen[i], ngen[i], &got[i]);
        assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    }
    run_all(s);
    for (int i = 0; i < n_req; i++) {
        int32_t want[64];
        reference(prompts[i], plen[i], ngen[i], want);
        assert_int_equal(got[i].n, ngen[i]);
        assert_memory_equal(got[i].toks, want, (size_t)ngen[i] * sizeof(int32_t));
        assert_int_equal(got[i].finish, CRD_FINISH_LENGTH);
        assert_int_equal(got[i].n_final, 1);
    }
    assert_true(fx.max_tokens_seen <= budget);
    assert_true(fx.max_seqs_seen <= max_running);
    crd_sched_stats_t st;
    crd_sched_get_stats(s, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.kv_swa_blocks_used, 0);
    assert_int_equal(st.kv_swa_blocks_total, window > 0 ? n_swa_blocks : 0);
    assert_int_equal(st.finished[CRD_FINISH_LENGTH], (uint64_t)n_req);
    if (window > 0) {
        assert_true(fx.max_swa_live > 0 && st.kv_swa_blocks_peak <= n_swa_blocks);
    }
    *preemptions = st.preemptions;
    crd_sched_destroy(s);
    fake_free(&fx);
}

static void check_many(int32_t n_blocks, int32_t budget, int32_t max_running, int n_req,
                       uint64_t *preemptions)
{
    check_many_swa(n_blocks, budget, max_running, n_req, 0, 0, preemptions);
}

static void test_batched_outputs_equal_reference(void **state)
{
    (void)state;
    uint64_t pre;
    check_many(256, 64, 16, 12, &pre); /* plenty of KV: pure continuous batching */
    assert_int_equal(pre, 0);
    check_many(256, 7, 16, 12, &pre); /* tiny budget: many chunked prefills */
}

static void test_preemption_under_kv_pressure(void **state)
{
    (void)state;
    uint64_t pre;
    check_many(20, 32, 8, 12, &pre); /* 80 positions for 12 requests of up to 64 */
    assert_true(pre > 0);
}

static void test_prefix_cache_hit_is_reported_and_correct(void **state)
{
    (void)state;
    fake_exec_t fx;
    xp_executor_t ex;
    fake_init(&fx, &ex, 64, 64);
    crd_sched_params_t sp = {64, 8, 8, 256, 1, {0}, 0, 0.0};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    int32_t p[30];
    make_prompt(p, 30, 1, -1);
    collected_t a = {0}, b = {0};
    uint64_t id;
    crd_request_params_t rp = greedy_req(p, 30, 5, &a);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    rp = greedy_req(p, 30, 5, &b);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_int_equal(a.n_cached, 0);
    assert_int_equal(b.n_cached, 28); /* 7 full blocks of 4 before the last token */
    assert_memory_equal(a.toks, b.toks, 5 * sizeof(int32_t));
    crd_sched_stats_t st;
    crd_sched_get_stats(s, &st);
    assert_int_equal(st.prefix_hits, 28);
    crd_sched_destroy(s);
    fake_free(&fx);
}

/* A model with sliding-window layers (window 6, blocks of 4): the same outputs with a
 * sliding pool as large as the full one, one that forces preemption (sliding blocks
 * run out first) and a window of one position. */
static void test_sliding_pool_outputs_equal_reference(void **state)
{
    (void)state;
    uint64_t pre;
    check_many_swa(256, 64, 16, 12, 6, 256, &pre);
    assert_int_equal(pre, 0);
    check_many_swa(256, 7, 16, 12, 6, 256, &pre); /* chunked prefills cross blocks */
    check_many_swa(256, 32, 16, 12, 6, 14, &pre); /* 14 sliding blocks for 16 running */
    assert_true(pre > 0);
    check_many_swa(40, 32, 8, 12, 6, 12, &pre); /* both pools short */
    assert_true(pre > 0);
    check_many_swa(256, 16, 16, 12, 1, 40, &pre);
}

/* Prefix hits with a sliding pool: a repeated prompt hits in full while its window is
 * cached; after other requests churned the sliding pool the hit is cut (or gone) and the
 * output is still right. */
static void test_sliding_pool_prefix_hits(void **state)
{
    (void)state;
    fake_exec_t fx;
    xp_executor_t ex;
    fake_init_swa(&fx, &ex, 128, 64, 6, 8);
    crd_sched_params_t sp = {64, 4, 8, 256, 1, {0}, 0, 0.0};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    int32_t p[30], want[5];
    make_prompt(p, 30, 1, -1);
    reference(p, 30, 5, want);
    collected_t a = {0}, b = {0}, c = {0};
    uint64_t id;
    crd_request_params_t rp = greedy_req(p, 30, 5, &a);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    rp = greedy_req(p, 30, 5, &b);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_int_equal(a.n_cached, 0);
    assert_int_equal(b.n_cached, 28); /* the window of 28 (blocks 5, 6) was kept */
    assert_memory_equal(a.toks, want, sizeof(want));
    assert_memory_equal(b.toks, want, sizeof(want));
    /* two long unrelated requests take every sliding block (8) more than once */
    int32_t q1[40], q2[40];
    make_prompt(q1, 40, 2, 5);
    make_prompt(q2, 40, 4, 9);
    collected_t x = {0}, y = {0};
    rp = greedy_req(q1, 40, 3, &x);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    rp = greedy_req(q2, 40, 3, &y);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    rp = greedy_req(p, 30, 5, &c);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_true(c.n_cached < 28);
    assert_memory_equal(c.toks, want, sizeof(want));
    crd_sched_stats_t st;
    crd_sched_get_stats(s, &st);
    assert_int_equal(st.kv_swa_blocks_used, 0);
    assert_int_equal(st.kv_swa_blocks_total, 8);
    crd_sched_destroy(s);
    fake_free(&fx);
}

/* A sliding pool smaller than the full one bounds the chunk so that one sequence fits,
 * and one that cannot hold a window is refused. */
static void test_sliding_pool_bounds(void **state)
{
    (void)state;
    fake_exec_t fx;
    xp_executor_t ex;
    fake_init_swa(&fx, &ex, 64, 64, 6, 4);
    crd_sched_params_t sp = {64, 4, 8, 256, 1, {0}, 0, 0.0};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    int32_t p[40], want[4];
    make_prompt(p, 40, 3, -1);
    reference(p, 40, 4, want);
    collected_t a = {0};
    uint64_t id;
    crd_request_params_t rp = greedy_req(p, 40, 4, &a);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_memory_equal(a.toks, want, sizeof(want));
    /* (4 - 1) * 4 - (6 - 1) = 7 tokens per step at most */
    assert_true(fx.max_tokens_seen <= 7);
    crd_sched_destroy(s);
    fake_free(&fx);

    fake_init_swa(&fx, &ex, 64, 64, 9, 3); /* (3 - 1) * 4 < 9: no chunk fits */
    tdm_error_t err = {0};
    assert_int_equal(crd_sched_create(&ex, &sp, &s, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "cannot hold a window of 9"));
    fake_free(&fx);
}

static void test_decode_not_starved_by_long_prefill(void **state)
{
    (void)state;
    fake_exec_t fx;
    xp_executor_t ex;
    fake_init(&fx, &ex, 128, 16);
    crd_sched_params_t sp = {16, 8, 8, 256, 1, {0}, 0, 0.0};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    int32_t shortp[3] = {1, 2, 3}, longp[200];
    make_prompt(longp, 200, 2, -1);
    collected_t a = {0}, b = {0};
    uint64_t id;
    crd_request_params_t rp = greedy_req(shortp, 3, 100, &a);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    assert_int_equal(crd_sched_step(s, NULL), TDM_OK); /* short one is now decoding */
    rp = greedy_req(longp, 200, 2, &b);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    /* the 200-token prompt needs >= 14 steps at 15 tokens each; the decode moves every step */
    for (int i = 0; i < 10; i++) {
        int32_t before = a.n;
        assert_int_equal(crd_sched_step(s, NULL), TDM_OK);
        assert_int_equal(a.n, before + 1);
    }
    assert_int_equal(b.n, 0);
    run_all(s);
    int32_t want[100];
    reference(longp, 200, 2, want);
    assert_memory_equal(b.toks, want, 2 * sizeof(int32_t));
    crd_sched_destroy(s);
    fake_free(&fx);
}

static void test_stop_cancel_limits_and_errors(void **state)
{
    (void)state;
    fake_exec_t fx;
    xp_executor_t ex;
    fake_init(&fx, &ex, 64, 32);
    crd_sched_params_t sp = {32, 8, 2, 40, 1, {0}, 0, 0.0};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    int32_t p[10];
    make_prompt(p, 10, 0, -1);
    int32_t want[64];
    reference(p, 10, 30, want);
    uint64_t id;
    tdm_error_t err = {0};

    /* a stop id ends the request on that token, reported as a stop token */
    collected_t a = {0};
    crd_request_params_t rp = greedy_req(p, 10, 0, &a);
    rp.stop_ids = &want[3];
    rp.n_stop_ids = 1;
    rp.top_logprobs = 5;
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_int_equal(a.finish, CRD_FINISH_STOP);
    assert_true(a.n <= 4 && a.toks[a.n - 1] == want[3]);
    assert_int_equal(a.top_ok, a.n);
    assert_true(a.logprob_sum < 0.0f);

    /* the callback can stop a request (stop strings) */
    collected_t b = {0};
    b.stop_after = 2;
    rp = greedy_req(p, 10, 0, &b);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_int_equal(b.n, 2);
    assert_int_equal(b.finish, CRD_FINISH_STOP);
    assert_int_equal(b.n_final, 1);

    /* no max_tokens: the context limit (40) ends it */
    collected_t c = {0};
    rp = greedy_req(p, 10, 0, &c);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_int_equal(c.finish, CRD_FINISH_LENGTH);
    assert_int_equal(10 + c.n, 40);

    /* too-long prompt and bad tokens are refused with the numbers */
    int32_t big[40] = {0};
    rp = greedy_req(big, 40, 1, &c);
    assert_int_equal(crd_sched_submit(s, &rp, &id, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "40 tokens"));
    int32_t bad[2] = {1, NV};
    rp = greedy_req(bad, 2, 1, &c);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_ERR_INVALID_PARAM);

    /* queue limit: 2 waiting requests, the third is refused with BUSY */
    collected_t q[3];
    memset(q, 0, sizeof(q));
    for (int i = 0; i < 2; i++) {
        rp = greedy_req(p, 10, 50, &q[i]);
        assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    }
    rp = greedy_req(p, 10, 50, &q[2]);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_ERR_BUSY);

    /* cancel: blocks come back within one step */
    assert_int_equal(crd_sched_step(s, NULL), TDM_OK);
    crd_sched_cancel(s, id);
    crd_sched_cancel(s, id - 1);
    crd_sched_cancel(s, 987654); /* unknown: ignored */
    assert_int_equal(crd_sched_step(s, NULL), TDM_OK);
    crd_sched_stats_t st;
    crd_sched_get_stats(s, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(q[0].finish, CRD_FINISH_CANCELED);
    assert_int_equal(q[1].finish, CRD_FINISH_CANCELED);
    assert_false(crd_sched_has_work(s));

    /* an executor failure ends the step's requests with the error, and the scheduler lives on */
    collected_t e1 = {0}, e2 = {0};
    rp = greedy_req(p, 10, 5, &e1);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    rp = greedy_req(p, 10, 5, &e2);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    fx.fail_at_step = fx.steps + 1;
    tdm_error_clear(&err);
    assert_int_equal(crd_sched_step(s, &err), TDM_ERR_TRANSPORT);
    assert_non_null(strstr(err.msg, "shard 1"));
    assert_int_equal(e1.finish, CRD_FINISH_ERROR);
    assert_int_equal(e2.finish, CRD_FINISH_ERROR);
    assert_non_null(strstr(e1.error, "shard 1"));
    collected_t f = {0};
    rp = greedy_req(p, 10, 3, &f);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    run_all(s);
    assert_memory_equal(f.toks, want, 3 * sizeof(int32_t));

    /* destroy ends whatever is left as canceled */
    collected_t g = {0};
    rp = greedy_req(p, 10, 5, &g);
    assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    crd_sched_destroy(s);
    assert_int_equal(g.finish, CRD_FINISH_CANCELED);
    fake_free(&fx);
}

static void test_seeded_sampling_repeats(void **state)
{
    (void)state;
    int32_t p[6] = {1, 2, 3, 4, 5, 6};
    collected_t r[2];
    memset(r, 0, sizeof(r));
    for (int k = 0; k < 2; k++) {
        fake_exec_t fx;
        xp_executor_t ex;
        fake_init(&fx, &ex, 64, 32);
        crd_sched_params_t sp = {32, 8, 8, 256, 1, {0}, 0, 0.0};
        crd_sched_t *s = NULL;
        assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
        crd_request_params_t rp = greedy_req(p, 6, 40, &r[k]);
        rp.sampling.temperature = 3.0f; /* flat enough that draws vary */
        rp.sampling.seed = 77;
        rp.sampling.has_seed = true;
        uint64_t id;
        assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
        run_all(s);
        crd_sched_destroy(s);
        fake_free(&fx);
    }
    assert_int_equal(r[0].n, 40);
    assert_memory_equal(r[0].toks, r[1].toks, 40 * sizeof(int32_t));
    int32_t greedy[40];
    reference(p, 6, 40, greedy);
    assert_memory_not_equal(r[0].toks, greedy, 40 * sizeof(int32_t));
}

/*
 * The step-time budget: request A decodes while B's 200-token prompt arrives. A step costs
 * 2 ms + 0.05 ms per token (busy-waited), so a 5 ms budget leaves about 60 prompt tokens
 * per step beside A's decode row: B's prompt runs in several chunks, none near the token
 * budget (256), and both outputs equal the reference. Without the budget the prompt runs
 * in one step. A budget below the decode row's own time still moves the prompt a minimum
 * chunk per step. (Timing noise only makes the learned costs larger and the chunks
 * smaller, so the bounds hold on a loaded machine.)
 */
static void run_budget_case(double max_step_s, int32_t *max_mixed, uint64_t *budgeted)
{
    fake_exec_t fx;
    xp_executor_t ex;
    fake_init(&fx, &ex, 256, 256);
    fx.busy_base = 0.002;
    fx.busy_tok = 0.00005;
    crd_sched_params_t sp = {256, 4, 8, 256, 1, {0}, 0, max_step_s};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    int32_t pa[40], pb[200], want_a[120], want_b[8];
    make_prompt(pa, 40, 3, -1);
    make_prompt(pb, 200, 11, -1);
    reference(pa, 40, 120, want_a);
    reference(pb, 200, 8, want_b);
    collected_t ca = {0}, cb = {0};
    uint64_t id;
    crd_request_params_t ra = greedy_req(pa, 40, 120, &ca), rb = greedy_req(pb, 200, 8, &cb);
    assert_int_equal(crd_sched_submit(s, &ra, &id, NULL), TDM_OK);
    for (int i = 0; i < 20; i++) { /* A's prompt, then decodes: the model warms up */
        assert_int_equal(crd_sched_step(s, NULL), TDM_OK);
    }
    fx.max_mixed_tokens = 0;
    assert_int_equal(crd_sched_submit(s, &rb, &id, NULL), TDM_OK);
    run_all(s);
    assert_int_equal(ca.n, 120);
    assert_int_equal(cb.n, 8);
    assert_memory_equal(ca.toks, want_a, sizeof(want_a));
    assert_memory_equal(cb.toks, want_b, sizeof(want_b));
    crd_sched_stats_t st;
    crd_sched_get_stats(s, &st);
    *max_mixed = fx.max_mixed_tokens;
    *budgeted = st.steps_budgeted;
    crd_sched_destroy(s);
    fake_free(&fx);
}

static void test_step_time_budget(void **state)
{
    (void)state;
    int32_t mixed;
    uint64_t budgeted;
    run_budget_case(0.0, &mixed, &budgeted); /* off: the whole prompt beside the decode */
    assert_int_equal(mixed, 201);
    assert_true(budgeted == 0);
    run_budget_case(0.005, &mixed, &budgeted);
    if (!(mixed >= 2 && mixed <= 130 && budgeted >= 2)) {
        fail_msg("5 ms budget: largest mixed step %d tokens, %llu steps cut", (int)mixed,
                 (unsigned long long)budgeted);
    }
    run_budget_case(0.0005, &mixed, &budgeted); /* below a decode step: minimum chunks */
    if (!(mixed == 17 && budgeted >= 10)) {
        fail_msg("0.5 ms budget: largest mixed step %d tokens (want 16 + 1), %llu cut", (int)mixed,
                 (unsigned long long)budgeted);
    }
}

/*
 * Disaggregated prefill, the decode group's side, with the test playing the prefill
 * group: start records the block table it is given; land writes the prompt's positions
 * past the decode group's cached ones into those blocks of the fake store (what the
 * prefill shards' puts do) and hands back the last position's logits.
 */
typedef struct fake_remote {
    crd_sched_t *s;
    const int32_t *prompt;
    int32_t n_prompt;
    uint64_t id;
    int32_t blocks[64];
    int32_t n_cached;
    int starts, lands;
    int order;      /* when it was started, counting every start of the test */
    int *n_started; /* the test's count */
} fake_remote_t;

static tdm_status_t fake_remote_start(void *user, uint64_t req_id, const int32_t *blocks,
                                      const int32_t *swa_blocks, int32_t n_blocks, int32_t n_cached,
                                      int32_t state_slot, tdm_error_t *err)
{
    (void)err;
    (void)swa_blocks;
    (void)state_slot;
    fake_remote_t *f = user;
    assert_true(n_blocks <= 64);
    f->id = req_id;
    memcpy(f->blocks, blocks, (size_t)n_blocks * sizeof(int32_t));
    f->n_cached = n_cached;
    f->starts++;
    f->order = (*f->n_started)++;
    return TDM_OK;
}

static void fake_remote_land(fake_remote_t *f, fake_exec_t *fx)
{
    for (int32_t p = f->n_cached; p < f->n_prompt; p++) {
        const int32_t b = f->blocks[p / BT];
        fx->kv_tok[b * BT + p % BT] = f->prompt[p];
        fx->kv_pos[b * BT + p % BT] = p + 1;
    }
    float row[NV];
    fill_logits(row, ctx_hash(f->prompt, f->n_prompt));
    f->lands++;
    crd_sched_remote_done(f->s, f->id, row, TDM_OK, NULL);
}

/*
 * A swarm's first turns on a decode group: five prompts share a 40-token stem (10 blocks
 * of 4) and arrive together, a sixth shares nothing. The first is started at once; the
 * other four wait for it to land and then send only their own tail (40 tokens cached),
 * instead of each reserving and receiving its own copy of the stem: 5 x 11 blocks do not
 * fit the 48-block pool beside the streams' growth, which preempted streams as they
 * decoded. The unrelated prompt does not wait behind them. Outputs equal the reference.
 */
static void test_remote_prompts_share_one_in_flight(void **state)
{
    (void)state;
    fake_exec_t fx;
    xp_executor_t ex;
    fake_init(&fx, &ex, 48, 64);
    crd_sched_params_t sp = {64, 8, 16, 128, 1, {0}, 0, 0.0};
    crd_sched_t *s = NULL;
    assert_int_equal(crd_sched_create(&ex, &sp, &s, NULL), TDM_OK);
    enum { N = 6, GEN = 6 };
    int32_t prompts[N][42], n_prompt[N], want[N][GEN];
    fake_remote_t fr[N];
    collected_t c[N];
    int n_started = 0;
    memset(fr, 0, sizeof(fr));
    memset(c, 0, sizeof(c));
    for (int i = 0; i < N; i++) {
        n_prompt[i] = i < 5 ? 42 : 10;
        make_prompt(prompts[i], n_prompt[i], i < 5 ? 2 : 5, -1);
        prompts[i][n_prompt[i] - 2] = (i * 5 + 1) % NV; /* each its own tail */
        prompts[i][n_prompt[i] - 1] = (i * 11 + 7) % NV;
        reference(prompts[i], n_prompt[i], GEN, want[i]);
        fr[i] = (fake_remote_t){
            .s = s, .prompt = prompts[i], .n_prompt = n_prompt[i], .n_started = &n_started};
        const crd_remote_prefill_t hooks = {.start = fake_remote_start, .user = &fr[i]};
        crd_request_params_t rp = greedy_req(prompts[i], n_prompt[i], GEN, &c[i]);
        rp.remote = &hooks;
        uint64_t id;
        assert_int_equal(crd_sched_submit(s, &rp, &id, NULL), TDM_OK);
    }
    assert_int_equal(crd_sched_step(s, NULL), TDM_OK);
    assert_int_equal(n_started, 2); /* the first of the five, and the unrelated one */
    assert_int_equal(fr[0].starts, 1);
    assert_int_equal(fr[5].starts, 1);
    for (int it = 0; it < 1000; it++) {
        bool pending = false;
        for (int i = 0; i < N; i++) {
            if (fr[i].starts > fr[i].lands) {
                fake_remote_land(&fr[i], &fx);
            }
            pending |= c[i].n_final == 0;
        }
        if (!pending) {
            break;
        }
        assert_int_equal(crd_sched_step(s, NULL), TDM_OK);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(fr[i].starts, 1);
        assert_int_equal(fr[i].n_cached, i >= 1 && i < 5 ? 40 : 0);
        assert_int_equal(c[i].finish, CRD_FINISH_LENGTH);
        assert_int_equal(c[i].n, GEN);
        assert_memory_equal(c[i].toks, want[i], sizeof(want[i]));
    }
    crd_sched_stats_t st;
    crd_sched_get_stats(s, &st);
    assert_int_equal(st.preemptions, 0);
    crd_sched_destroy(s);
    fake_free(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_outputs_equal_reference),
        cmocka_unit_test(test_preemption_under_kv_pressure),
        cmocka_unit_test(test_prefix_cache_hit_is_reported_and_correct),
        cmocka_unit_test(test_sliding_pool_outputs_equal_reference),
        cmocka_unit_test(test_sliding_pool_prefix_hits),
        cmocka_unit_test(test_sliding_pool_bounds),
        cmocka_unit_test(test_decode_not_starved_by_long_prefill),
        cmocka_unit_test(test_step_time_budget),
        cmocka_unit_test(test_stop_cancel_limits_and_errors),
        cmocka_unit_test(test_seeded_sampling_repeats),
        cmocka_unit_test(test_remote_prompts_share_one_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
