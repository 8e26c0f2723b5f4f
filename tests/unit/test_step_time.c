/* test_step_time.c - the step-time model (coordinator/step_time.h): it recovers known
 * costs from steps of mixed shapes, forgets old ones, never predicts negative costs, and
 * its chunk sizes invert its chunk costs. */
#include "coordinator/step_time.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static double truth(double c0, double ct, double cc, int64_t n, int64_t ctx)
{
    return c0 + ct * (double)n + cc * (double)ctx;
}

/* Decode steps of 1-12 rows at growing contexts with a prompt chunk every fifth step: the
 * shapes a serving engine sees. */
static void feed(crd_step_time_t *m, double c0, double ct, double cc, int steps, uint32_t *seed)
{
    for (int i = 0; i < steps; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        const int64_t rows = 1 + (int64_t)(*seed >> 28) % 12;
        const int64_t len = 500 + (int64_t)((*seed >> 8) % 6000);
        int64_t n = rows, ctx = rows * len;
        if (i % 5 == 0) {
            const int64_t chunk = 16 + (int64_t)((*seed >> 4) % 400);
            n += chunk;
            ctx += chunk * len + chunk * (chunk + 1) / 2;
        }
        crd_step_time_observe(m, n, ctx, truth(c0, ct, cc, n, ctx));
    }
}

static void test_fit_recovers_costs(void **state)
{
    (void)state;
    crd_step_time_t m;
    crd_step_time_init(&m);
    assert_false(crd_step_time_ready(&m));
    assert_true(crd_step_time_predict(&m, 10, 1000) == 0.0);
    uint32_t seed = 7;
    feed(&m, 0.010, 0.002, 3e-8, 200, &seed);
    assert_true(crd_step_time_ready(&m));
    assert_true(fabs(m.c[0] - 0.010) < 0.010 * 0.02);
    assert_true(fabs(m.c[1] - 0.002) < 0.002 * 0.02);
    assert_true(fabs(m.c[2] - 3e-8) < 3e-8 * 0.02);
    /* the machine slows down (say, other work arrives): the fit follows within ~100 steps */
    feed(&m, 0.020, 0.004, 6e-8, 150, &seed);
    const double want = truth(0.020, 0.004, 6e-8, 12, 12 * 4000);
    assert_true(fabs(crd_step_time_predict(&m, 12, 12 * 4000) - want) < want * 0.05);
}

static void test_costs_never_negative(void **state)
{
    (void)state;
    crd_step_time_t m;
    crd_step_time_init(&m);
    /* decode-only steps of one shape, with noise: the data spans one direction only */
    uint32_t seed = 3;
    for (int i = 0; i < 100; i++) {
        seed = seed * 1664525u + 1013904223u;
        const double noise = ((double)(seed >> 8) / 16777216.0 - 0.5) * 0.004;
        crd_step_time_observe(&m, 4, 4 * 3000, 0.03 + noise);
    }
    for (int i = 0; i < 3; i++) {
        assert_true(m.c[i] >= 0.0 && isfinite(m.c[i]));
    }
    assert_true(fabs(crd_step_time_predict(&m, 4, 12000) - 0.03) < 0.003);
    /* nonsense observations are ignored */
    crd_step_time_observe(&m, 0, 0, 1.0);
    crd_step_time_observe(&m, 4, 12000, NAN);
    crd_step_time_observe(&m, 4, 12000, -1.0);
    assert_true(fabs(crd_step_time_predict(&m, 4, 12000) - 0.03) < 0.003);
}

static void test_chunk_inverts_cost(void **state)
{
    (void)state;
    crd_step_time_t m;
    crd_step_time_init(&m);
    uint32_t seed = 11;
    feed(&m, 0.005, 0.001, 2e-7, 100, &seed);
    const int32_t positions[] = {0, 100, 6000, 30000};
    const double budgets[] = {0.001, 0.05, 0.4, 3.0};
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            const int32_t n = crd_step_time_chunk(&m, positions[i], budgets[j]);
            assert_true(crd_step_time_chunk_cost(&m, positions[i], n) <= budgets[j] * 1.0000001);
            assert_true(crd_step_time_chunk_cost(&m, positions[i], n + 1) > budgets[j]);
        }
    }
    assert_int_equal(crd_step_time_chunk(&m, 10, 0.0), 0);
    assert_int_equal(crd_step_time_chunk(&m, 10, -1.0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_recovers_costs),
        cmocka_unit_test(test_costs_never_negative),
        cmocka_unit_test(test_chunk_inverts_cost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
