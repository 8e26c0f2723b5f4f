/*
 * test_router.c - the router's retry (coordinator/router.h): a request its group fails
 * before any token reached the caller goes once more to another group that is up, and the
 * caller sees only that attempt; a request that streamed a token, or one with no other group
 * up, ends with the first error.
 *
 * Each group is an engine over a test executor whose "model" makes the next token a fixed
 * function of the previous one (so every output is known) and which can be told to fail
 * its steps from the n-th on, as a shard group whose shard died does.
 */
#include "coordinator/router.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define NV 97
#define BT 8

static int32_t next_of(int32_t t)
{
    return (t * 7 + 3) % NV;
}

typedef struct fail_exec {
    _Atomic int steps;
    int fail_from; /* 1-based step from which every step fails; 0: never */
} fail_exec_t;

static tdm_status_t fake_step(void *impl, const xp_step_t *st, float *logits, tdm_error_t *err)
{
    fail_exec_t *x = impl;
    const int n = atomic_fetch_add(&x->steps, 1) + 1;
    if (x->fail_from > 0 && n >= x->fail_from) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "shard 127.0.0.1:9 (rank 0) is missing");
    }
    int32_t row = 0;
    for (int32_t t = 0; t < st->n_tokens; t++) {
        if (!st->want_logits[t]) {
            continue;
        }
        float *l = logits + (size_t)row * NV;
        memset(l, 0, NV * sizeof(float));
        l[next_of(st->token[t])] = 20.0f;
        row++;
    }
    return TDM_OK;
}

static const xp_executor_ops_t k_ops = {.step = fake_step};

typedef struct group_fx {
    fail_exec_t x;
    xp_executor_t ex;
    crd_engine_t *e;
    bool up;
} group_fx_t;

static bool group_up(void *ctx)
{
    return ((group_fx_t *)ctx)->up;
}

static void group_init(group_fx_t *g, int fail_from, int max_waiting)
{
    memset(g, 0, sizeof(*g));
    g->x.fail_from = fail_from;
    g->up = true;
    g->ex = (xp_executor_t){.ops = &k_ops,
                            .impl = &g->x,
                            .n_vocab = NV,
                            .n_blocks = 256,
                            .block_tokens = BT,
                            .n_batch_max = 64,
                            .n_logits_max = 8,
                            .n_ctx_max = 128};
    crd_sched_params_t p = {.token_budget = 64,
                            .max_running = 4,
                            .max_waiting = max_waiting,
                            .n_ctx = 128,
                            .cache_seed = 1};
    assert_int_equal(crd_engine_create(&g->ex, &p, &g->e, NULL), TDM_OK);
}

typedef struct req_state {
    pthread_mutex_t mu;
    int32_t first, n_tokens, n_final;
    bool wrong;
    crd_finish_t finish;
    tdm_status_t status;
    char error[128];
} req_state_t;

static int on_event(void *user, const crd_event_t *ev)
{
    req_state_t *r = user;
    pthread_mutex_lock(&r->mu);
    if (ev->token >= 0) {
        r->wrong |= r->n_final > 0; /* nothing after the final event */
        r->first = next_of(r->first);
        r->wrong |= ev->token != r->first;
        r->n_tokens++;
    }
    if (ev->finish != CRD_FINISH_NONE) {
        r->n_final++;
        r->finish = ev->finish;
        r->status = ev->status;
        if (ev->error != NULL) {
            strncpy(r->error, ev->error, sizeof(r->error) - 1);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* Two groups g[0], g[1] behind a round-robin router: the first request goes to g[0]. */
static crd_router_t *make_router(group_fx_t g[2])
{
    crd_router_t *r = NULL;
    assert_int_equal(crd_router_create(CRD_ROUTE_ROUND_ROBIN, &r, NULL), TDM_OK);
    assert_int_equal(crd_router_add(r, "g0", CRD_ROLE_MIXED, g[0].e, group_up, &g[0], NULL),
                     TDM_OK);
    assert_int_equal(crd_router_add(r, "g1", CRD_ROLE_MIXED, g[1].e, group_up, &g[1], NULL),
                     TDM_OK);
    return r;
}

static tdm_status_t submit(crd_router_t *r, req_state_t *s, int32_t max_tokens, crd_route_t *rt,
                           tdm_error_t *err)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    int32_t prompt[5] = {4, 9, 16, 25, 36};
    s->first = prompt[4];
    crd_request_params_t rp = {
        .prompt = prompt, .n_prompt = 5, .max_tokens = max_tokens, .on_event = on_event, .user = s};
    crd_sampling_params_default(&rp.sampling);
    rp.sampling.temperature = 0.0f;
    return crd_router_submit(r, &rp, rt, err);
}

static void wait_done(crd_router_t *r, req_state_t *s)
{
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&s->mu);
        const int n = s->n_final;
        pthread_mutex_unlock(&s->mu);
        if (n > 0 && crd_router_n_active(r) == 0) {
            break;
        }
        usleep(1000);
    }
    assert_int_equal(crd_router_n_active(r), 0);
    usleep(20000); /* a second final event would arrive now */
    assert_int_equal(s->n_final, 1);
    assert_false(s->wrong);
}

static uint64_t routed(crd_router_t *r, int32_t group)
{
    crd_router_group_stats_t st;
    crd_router_group_stats(r, group, &st);
    return st.routed;
}

static void teardown(crd_router_t *r, group_fx_t g[2], req_state_t *s)
{
    crd_router_destroy(r);
    crd_engine_destroy(g[0].e);
    crd_engine_destroy(g[1].e);
    pthread_mutex_destroy(&s->mu);
}

/* g0's shard is gone: its first step fails before any token; the request completes on g1. */
static void test_retry_after_a_failed_step(void **state)
{
    (void)state;
    group_fx_t g[2];
    group_init(&g[0], 1, 8);
    group_init(&g[1], 0, 8);
    crd_router_t *r = make_router(g);
    req_state_t s;
    crd_route_t rt;
    assert_int_equal(submit(r, &s, 6, &rt, NULL), TDM_OK);
    wait_done(r, &s);
    assert_int_equal(s.finish, CRD_FINISH_LENGTH);
    assert_int_equal(s.n_tokens, 6);
    assert_int_equal(rt.group, 1); /* the route followed it */
    assert_true(atomic_load(&g[0].x.steps) >= 1);
    assert_int_equal(routed(r, 0), 1);
    assert_int_equal(routed(r, 1), 1);
    crd_router_cancel(r, &rt); /* of an ended request: ignored */
    teardown(r, g, &s);
}

/* g0's queue takes nothing (limit 0): refused at submission, the request goes to g1. */
static void test_busy_at_submission_goes_elsewhere(void **state)
{
    (void)state;
    group_fx_t g[2];
    group_init(&g[0], 0, 0);
    group_init(&g[1], 0, 8);
    crd_router_t *r = make_router(g);
    req_state_t s;
    crd_route_t rt;
    assert_int_equal(submit(r, &s, 4, &rt, NULL), TDM_OK);
    assert_int_equal(rt.group, 1);
    wait_done(r, &s);
    assert_int_equal(s.finish, CRD_FINISH_LENGTH);
    assert_int_equal(s.n_tokens, 4);
    assert_int_equal(routed(r, 0), 0);
    assert_int_equal(routed(r, 1), 1);
    teardown(r, g, &s);
}

/* g0 fails from its third step on, after two tokens reached the caller: the error stands. */
static void test_no_retry_after_a_token(void **state)
{
    (void)state;
    group_fx_t g[2];
    group_init(&g[0], 3, 8);
    group_init(&g[1], 0, 8);
    crd_router_t *r = make_router(g);
    req_state_t s;
    crd_route_t rt;
    assert_int_equal(submit(r, &s, 10, &rt, NULL), TDM_OK);
    wait_done(r, &s);
    assert_int_equal(s.finish, CRD_FINISH_ERROR);
    assert_int_equal(s.status, TDM_ERR_TRANSPORT);
    assert_int_equal(s.n_tokens, 2);
    assert_non_null(strstr(s.error, "is missing"));
    assert_int_equal(rt.group, 0);
    assert_int_equal(routed(r, 1), 0);
    teardown(r, g, &s);
}

/* g0 fails at once and g1 is down: nowhere to go, the first error stands; both queues
 * full: the first refusal is the answer. */
static void test_no_other_group(void **state)
{
    (void)state;
    group_fx_t g[2];
    group_init(&g[0], 1, 8);
    group_init(&g[1], 0, 0);
    g[1].up = false;
    crd_router_t *r = make_router(g);
    req_state_t s;
    crd_route_t rt;
    assert_int_equal(submit(r, &s, 4, &rt, NULL), TDM_OK);
    wait_done(r, &s);
    assert_int_equal(s.finish, CRD_FINISH_ERROR);
    assert_int_equal(s.status, TDM_ERR_TRANSPORT);
    assert_int_equal(s.n_tokens, 0);
    assert_int_equal(routed(r, 1), 0);
    pthread_mutex_destroy(&s.mu);
    /* g0 refuses too (queue limit 0 on a fresh pair), g1 is up but refuses as well */
    crd_router_destroy(r);
    crd_engine_destroy(g[0].e);
    crd_engine_destroy(g[1].e);
    group_init(&g[0], 0, 0);
    group_init(&g[1], 0, 0);
    r = make_router(g);
    tdm_error_t err = {0};
    assert_int_equal(submit(r, &s, 4, &rt, &err), TDM_ERR_BUSY);
    assert_non_null(strstr(tdm_error_msg(&err), "busy"));
    assert_int_equal(s.n_final, 0);
    teardown(r, g, &s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_after_a_failed_step),
        cmocka_unit_test(test_busy_at_submission_goes_elsewhere),
        cmocka_unit_test(test_no_retry_after_a_token),
        cmocka_unit_test(test_no_other_group),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
