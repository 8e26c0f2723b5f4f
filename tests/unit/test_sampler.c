/* test_sampler.c - sampling against direct computations of the documented math:
 * greedy = argmax, seeded draws repeat, the empirical distribution matches
 * softmax(logits / T), and top-k / top-p / min-p / penalties keep exactly the tokens the
 * formulas say. */
#include "coordinator/sampler.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define V 8

static const float base_logits[V] = {1.0f, 3.0f, 2.5f, -1.0f, 0.0f, 3.0f, 0.5f, 2.0f};

static crd_sampler_t *make(const crd_sampling_params_t *p)
{
    crd_sampler_t *s = NULL;
    tdm_error_t err = {0};
    assert_int_equal(crd_sampler_create(p, V, &s, &err), TDM_OK);
    return s;
}

static int32_t draw(crd_sampler_t *s)
{
    float l[V];
    memcpy(l, base_logits, sizeof(l));
    return crd_sampler_sample(s, l);
}

static void test_greedy_is_argmax_lowest_id_on_ties(void **state)
{
    (void)state;
    crd_sampling_params_t p;
    crd_sampling_params_default(&p);
    p.temperature = 0.0f;
    crd_sampler_t *s = make(&p);
    assert_int_equal(draw(s), 1); /* 1 and 5 tie at 3.0: lowest id wins */
    crd_sampler_destroy(s);
}

static void test_seed_repeats_and_differs(void **state)
{
    (void)state;
    crd_sampling_params_t p;
    crd_sampling_params_default(&p);
    p.seed = 1234;
    p.has_seed = true;
    crd_sampler_t *a = make(&p), *b = make(&p);
    p.seed = 1235;
    crd_sampler_t *c = make(&p);
    int same_ac = 0;
    for (int i = 0; i < 200; i++) {
        int32_t ta = draw(a), tb = draw(b), tc = draw(c);
        assert_int_equal(ta, tb);
        same_ac += ta == tc;
    }
    assert_true(same_ac < 200);
    crd_sampler_destroy(a);
    crd_sampler_destroy(b);
    crd_sampler_destroy(c);
}

static void softmax_t(const float *l, double *p, float t)
{
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < V; i++) {
        mx = fmax(mx, l[i] / t);
    }
    for (int i = 0; i < V; i++) {
        p[i] = exp(l[i] / t - mx);
        sum += p[i];
    }
    for (int i = 0; i < V; i++) {
        p[i] /= sum;
    }
}

static void test_distribution_matches_softmax(void **state)
{
    (void)state;
    const float temps[] = {1.0f, 0.7f, 1.5f};
    for (size_t k = 0; k < sizeof(temps) / sizeof(temps[0]); k++) {
        crd_sampling_params_t p;
        crd_sampling_params_default(&p);
        p.temperature = temps[k];
        p.seed = 99 + k;
        p.has_seed = true;
        crd_sampler_t *s = make(&p);
        const int n = 40000;
        int counts[V] = {0};
        for (int i = 0; i < n; i++) {
            counts[draw(s)]++;
        }
        double want[V];
        softmax_t(base_logits, want, temps[k]);
        for (int t = 0; t < V; t++) {
            /* 5 standard deviations of a binomial count */
            double sd = sqrt(n * want[t] * (1 - want[t]));
            assert_true(fabs(counts[t] - n * want[t]) <= 5 * sd + 1);
        }
        crd_sampler_destroy(s);
    }
}

static int support(crd_sampling_params_t *p, int *seen)
{
    p->seed = 7;
    p->has_seed = true;
    crd_sampler_t *s = make(p);
    memset(seen, 0, V * sizeof(int));
    for (int i = 0; i < 20000; i++) {
        seen[draw(s)] = 1;
    }
    crd_sampler_destroy(s);
    int n = 0;
    for (int t = 0; t < V; t++) {
        n += seen[t];
    }
    return n;
}

static void test_top_k_top_p_min_p_support(void **state)
{
    (void)state;
    int seen[V];
    crd_sampling_params_t p;
    /* top_k = 3: ids 1, 5 (3.0) and 2 (2.5) */
    crd_sampling_params_default(&p);
    p.top_k = 3;
    assert_int_equal(support(&p, seen), 3);
    assert_true(seen[1] && seen[5] && seen[2]);

    /* top_p: smallest prefix of the sorted probabilities whose mass reaches p */
    double pr[V];
    softmax_t(base_logits, pr, 1.0f);
    const int order[V] = {1, 5, 2, 7, 0, 6, 4, 3};
    double mass = pr[1] + pr[5];
    crd_sampling_params_default(&p);
    p.top_p = (float)(mass + 1e-4); /* needs a third token */
    assert_int_equal(support(&p, seen), 3);
    p.top_p = (float)(mass - 1e-4); /* two suffice */
    assert_int_equal(support(&p, seen), 2);
    assert_true(seen[order[0]] && seen[order[1]]);

    /* min_p: keep tokens with prob >= min_p * max prob */
    crd_sampling_params_default(&p);
    p.min_p = 0.5f; /* e^(2.5-3) = 0.61 kept, e^(2-3) = 0.37 dropped */
    assert_int_equal(support(&p, seen), 3);
    assert_true(seen[1] && seen[5] && seen[2] && !seen[7]);
}

static void test_penalties_follow_formulas(void **state)
{
    (void)state;
    crd_sampling_params_t p;
    crd_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    crd_sampler_t *s = make(&p);
    crd_sampler_accept_prompt(s, 3); /* seen in prompt: repetition only */
    crd_sampler_accept(s, 1);        /* generated twice */
    crd_sampler_accept(s, 1);
    crd_sampler_accept(s, 99); /* out of range: ignored */
    float l[V];
    memcpy(l, base_logits, sizeof(l));
    int32_t t = crd_sampler_sample(s, l);
    /* id 1: 3.0 / 2 - 0.5 - 0.25 * 2 = 0.5 ; id 3: -1.0 * 2 = -2.0 ; others unchanged */
    assert_true(fabsf(l[1] - 0.5f) < 1e-6f);
    assert_true(fabsf(l[3] + 2.0f) < 1e-6f);
    assert_true(fabsf(l[5] - 3.0f) < 1e-6f);
    assert_int_equal(t, 5);
    crd_sampler_destroy(s);
}

static void test_validation_and_log_softmax(void **state)
{
    (void)state;
    crd_sampling_params_t p;
    tdm_error_t err = {0};
    crd_sampling_params_default(&p);
    p.top_p = 0.0f;
    assert_int_equal(crd_sampling_params_validate(&p, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "top_p"));
    crd_sampling_params_default(&p);
    p.temperature = NAN;
    assert_int_equal(crd_sampling_params_validate(&p, NULL), TDM_ERR_INVALID_PARAM);
    crd_sampler_t *s = NULL;
    crd_sampling_params_default(&p);
    assert_int_equal(crd_sampler_create(&p, 0, &s, NULL), TDM_ERR_INVALID_PARAM);

    float out[V];
    crd_log_softmax(base_logits, out, V);
    double pr[V], sum = 0;
    softmax_t(base_logits, pr, 1.0f);
    for (int i = 0; i < V; i++) {
        assert_true(fabs(out[i] - log(pr[i])) < 1e-5);
        sum += exp(out[i]);
    }
    assert_true(fabs(sum - 1.0) < 1e-5);
}

/* logit_bias adds to the raw logit before everything else: greedy follows the biased
 * argmax, a -100 bias removes a token from the sampled support, and the sampled
 * distribution is softmax of the biased logits. */
static void test_logit_bias(void **state)
{
    (void)state;
    crd_sampling_params_t p;
    crd_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.n_logit_bias = 2;
    p.logit_bias_id[0] = 1;
    p.logit_bias[0] = -100.0f;
    p.logit_bias_id[1] = 5;
    p.logit_bias[1] = -0.75f; /* 5: 3.0 -> 2.25, below 2 (2.5) */
    crd_sampler_t *s = make(&p);
    assert_int_equal(draw(s), 2);
    crd_sampler_destroy(s);
    p.logit_bias[1] = 100.0f; /* forces 5 */
    s = make(&p);
    assert_int_equal(draw(s), 5);
    crd_sampler_destroy(s);

    /* sampled: token 1 banned, token 3 raised by 3 (-1 -> 2) */
    crd_sampling_params_default(&p);
    p.seed = 7;
    p.has_seed = true;
    p.n_logit_bias = 2;
    p.logit_bias_id[0] = 1;
    p.logit_bias[0] = -100.0f;
    p.logit_bias_id[1] = 3;
    p.logit_bias[1] = 3.0f;
    s = make(&p);
    float biased[V];
    memcpy(biased, base_logits, sizeof(biased));
    biased[1] -= 100.0f;
    biased[3] += 3.0f;
    double want[V];
    softmax_t(biased, want, 1.0f);
    const int n = 40000;
    int counts[V] = {0};
    for (int i = 0; i < n; i++) {
        counts[draw(s)]++;
    }
    assert_int_equal(counts[1], 0);
    for (int t = 0; t < V; t++) {
        double sd = sqrt(n * want[t] * (1 - want[t]));
        assert_true(fabs(counts[t] - n * want[t]) <= 5 * sd + 1);
    }
    crd_sampler_destroy(s);

    /* limits: value range, entry count, ids inside the vocabulary */
    tdm_error_t err = {0};
    crd_sampling_params_default(&p);
    p.n_logit_bias = 1;
    p.logit_bias_id[0] = 0;
    p.logit_bias[0] = 100.5f;
    assert_int_equal(crd_sampling_params_validate(&p, &err), TDM_ERR_INVALID_PARAM);
    p.logit_bias[0] = -100.0f;
    assert_int_equal(crd_sampling_params_validate(&p, &err), TDM_OK);
    p.n_logit_bias = CRD_LOGIT_BIAS_MAX + 1;
    assert_int_equal(crd_sampling_params_validate(&p, &err), TDM_ERR_INVALID_PARAM);
    p.n_logit_bias = 1;
    p.logit_bias_id[0] = V;
    crd_sampler_t *bad = NULL;
    assert_int_equal(crd_sampler_create(&p, V, &bad, &err), TDM_ERR_INVALID_PARAM);
    assert_null(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_is_argmax_lowest_id_on_ties),
        cmocka_unit_test(test_seed_repeats_and_differs),
        cmocka_unit_test(test_distribution_matches_softmax),
        cmocka_unit_test(test_top_k_top_p_min_p_support),
        cmocka_unit_test(test_penalties_follow_formulas),
        cmocka_unit_test(test_validation_and_log_softmax),
        cmocka_unit_test(test_logit_bias),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
