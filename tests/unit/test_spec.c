/* test_spec.c - speculative decoding's pieces against independent computations:
 * the verification rule keeps the sampler's distribution (chi-square against the
 * softmax of the filtered logits, for drafts of every kind), greedy verification accepts
 * exactly the argmax, the n-gram index proposes what a brute-force search finds, the
 * planner follows the cost model, and rolling back a sequence gives its blocks back
 * without touching the prefix cache. */
#include "coordinator/kv_manager.h"
#include "coordinator/ngram.h"
#include "coordinator/sampler.h"
#include "coordinator/spec.h"

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

/* softmax(l / t) restricted to the top_k largest (0: all), renormalised */
static void filtered_softmax(const float *l, double *p, float t, int top_k)
{
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < V; i++) {
        mx = fmax(mx, l[i] / t);
    }
    for (int i = 0; i < V; i++) {
        int rank = 0; /* tokens strictly ahead of i (ties: lower id first) */
        for (int j = 0; j < V; j++) {
            rank += l[j] > l[i] || (l[j] == l[i] && j < i);
        }
        p[i] = top_k > 0 && rank >= top_k ? 0.0 : exp(l[i] / t - mx);
        sum += p[i];
    }
    for (int i = 0; i < V; i++) {
        p[i] /= sum;
    }
}

/* Pearson chi-square of counts against n * p over the tokens with p > 0. */
static double chi_square(const int *counts, const double *p, int n)
{
    double x = 0;
    for (int i = 0; i < V; i++) {
        if (p[i] > 0) {
            const double e = n * p[i];
            x += (counts[i] - e) * (counts[i] - e) / e;
        } else {
            assert_int_equal(counts[i], 0);
        }
    }
    return x;
}

static void check_verify_distribution(float temp, int top_k, int32_t draft, uint64_t seed)
{
    crd_sampling_params_t sp;
    crd_sampling_params_default(&sp);
    sp.temperature = temp;
    sp.top_k = top_k;
    sp.seed = seed;
    sp.has_seed = true;
    crd_sampler_t *s = NULL;
    assert_int_equal(crd_sampler_create(&sp, V, &s, NULL), TDM_OK);
    const int n = 60000;
    int counts[V] = {0}, n_acc = 0;
    for (int i = 0; i < n; i++) {
        float l[V];
        memcpy(l, base_logits, sizeof(l));
        int32_t tok = -1;
        const bool acc = crd_sampler_verify(s, l, draft, &tok);
        assert_true(tok >= 0 && tok < V);
        assert_true(acc == (tok == draft)); /* a rejection never returns the draft */
        counts[tok]++;
        n_acc += acc;
    }
    double p[V];
    filtered_softmax(base_logits, p, temp, top_k);
    /* 7 degrees of freedom at most; 40 is far beyond the 1e-5 quantile (~ 35.3 for 7) */
    assert_true(chi_square(counts, p, n) < 40.0);
    /* the acceptance rate is p(draft) (q is a point mass) */
    const double sd = sqrt(n * p[draft] * (1 - p[draft]));
    assert_true(fabs(n_acc - n * p[draft]) <= 5 * sd + 1);
    crd_sampler_destroy(s);
}

static void test_verify_keeps_the_distribution(void **state)
{
    (void)state;
    check_verify_distribution(1.0f, 0, 1, 11); /* the most likely token        */
    check_verify_distribution(1.0f, 0, 3, 12); /* the least likely             */
    check_verify_distribution(0.7f, 0, 7, 13); /* another temperature          */
    check_verify_distribution(1.0f, 3, 2, 14); /* inside the top-k             */
    check_verify_distribution(1.0f, 3, 0, 15); /* filtered out: always rejected */
    check_verify_distribution(1.5f, 4, 7, 16);
}

static void test_greedy_verify_is_argmax(void **state)
{
    (void)state;
    crd_sampling_params_t sp;
    crd_sampling_params_default(&sp);
    sp.temperature = 0.0f;
    crd_sampler_t *s = NULL;
    assert_int_equal(crd_sampler_create(&sp, V, &s, NULL), TDM_OK);
    for (int32_t d = 0; d < V; d++) {
        float l[V];
        memcpy(l, base_logits, sizeof(l));
        int32_t tok = -1;
        const bool acc = crd_sampler_verify(s, l, d, &tok);
        assert_int_equal(tok, 1); /* argmax, lowest id on the 1/5 tie */
        assert_true(acc == (d == 1));
    }
    crd_sampler_destroy(s);
}

/* The oracle: the latest earlier occurrence of the longest suffix (n = 3..1) whose
 * continuation exists, found by scanning. */
static int32_t brute_propose(const int32_t *t, int32_t n, int32_t max, int32_t *out)
{
    for (int32_t k = n < CRD_NGRAM_MAX ? n : CRD_NGRAM_MAX; k >= 1; k--) {
        for (int32_t end = n - 1; end >= k; end--) {
            if (memcmp(t + end - k, t + n - k, (size_t)k * sizeof(int32_t)) == 0) {
                int32_t m = 0;
                while (m < max && end + m < n) {
                    out[m] = t[end + m];
                    m++;
                }
                return m;
            }
        }
    }
    return 0;
}

static void test_ngram_matches_brute_force(void **state)
{
    (void)state;
    uint64_t rng[4];
    crd_rng_seed(rng, 5);
    for (int trial = 0; trial < 40; trial++) {
        const int32_t vocab = 2 + trial % 9, len = 600;
        int32_t *t = malloc(len * sizeof(int32_t));
        crd_ngram_t *g = crd_ngram_create();
        assert_non_null(g);
        for (int32_t n = 0; n < len; n++) {
            t[n] = (int32_t)(crd_rng_next(rng) % (uint64_t)vocab);
            if (n % 3 == 0 || trial % 2 == 0) { /* grows by one or by a few tokens */
                assert_int_equal(crd_ngram_update(g, t, n + 1), TDM_OK);
                int32_t a[8], b[8];
                const int32_t na = crd_ngram_propose(g, t, n + 1, 1, 8, a);
                const int32_t nb = brute_propose(t, n + 1, 8, b);
                assert_int_equal(na, nb);
                assert_memory_equal(a, b, (size_t)na * sizeof(int32_t));
            }
        }
        crd_ngram_destroy(g);
        free(t);
    }
    /* a verbatim repeat: the rest of the earlier copy */
    const int32_t text[] = {10, 11, 12, 13, 14, 15, 16, 17, 9, 10, 11, 12};
    crd_ngram_t *g = crd_ngram_create();
    assert_int_equal(crd_ngram_update(g, text, 12), TDM_OK);
    int32_t out[4];
    assert_int_equal(crd_ngram_propose(g, text, 12, 1, 4, out), 4);
    const int32_t want[] = {13, 14, 15, 16};
    assert_memory_equal(out, want, sizeof(want));
    crd_ngram_destroy(g);
}

static crd_spec_seq_t *seq_with(float accept, int32_t n_proposed)
{
    crd_spec_seq_t *q = NULL;
    assert_int_equal(crd_spec_seq_create(CRD_SPEC_NGRAM, 8, NULL, &q, NULL), TDM_OK);
    q->accept = accept;
    q->n_obs = 10000; /* a settled estimate: no exploration bonus */
    q->n_proposed = n_proposed;
    return q;
}

static void test_plan_follows_the_cost_model(void **state)
{
    (void)state;
    /* bandwidth-bound: 1 ms per step plus 0.01 ms per token */
    crd_spec_cost_t cheap = {.n_points = 8, .scale = 1.0};
    /* compute-bound: the time is proportional to the tokens */
    crd_spec_cost_t steep = {.n_points = 8, .scale = 1.0};
    for (int i = 0; i < 8; i++) {
        cheap.t[i] = 1e-3 + 1e-5 * (1 << i);
        steep.t[i] = 1e-3 * (1 << i);
    }
    crd_spec_seq_t *q[16];
    for (int i = 0; i < 16; i++) {
        q[i] = seq_with(0.8f, 6);
    }
    /* one stream, cheap steps: the whole proposal */
    assert_int_equal(crd_spec_plan(&cheap, q, 1, 1, 1, 100, false), 6);
    assert_int_equal(q[0]->n_draft, 6);
    /* proportional cost: no draft can pay (a^j < 1 per extra token) */
    assert_int_equal(crd_spec_plan(&steep, q, 1, 1, 1, 100, false), 0);
    /* room caps the drafts; `always` ignores the cost */
    assert_int_equal(crd_spec_plan(&steep, q, 16, 16, 16, 20, true), 20);
    /* a low acceptance drafts less than a high one under the same cost */
    crd_spec_cost_t mid = {.n_points = 8, .scale = 1.0};
    for (int i = 0; i < 8; i++) {
        mid.t[i] = 1e-3 + 2e-4 * (1 << i);
    }
    crd_spec_seq_t *lo = seq_with(0.3f, 6), *hi = seq_with(0.9f, 6);
    crd_spec_seq_t *pair[2] = {lo, hi};
    crd_spec_plan(&mid, pair, 2, 2, 2, 100, false);
    assert_true(hi->n_draft > lo->n_draft);
    /* a full batch drafts less per sequence than a single stream */
    crd_spec_plan(&mid, q, 1, 1, 1, 100, false);
    const int32_t single = q[0]->n_draft;
    const int32_t batch = crd_spec_plan(&mid, q, 16, 16, 16, 1000, false);
    assert_true(single > 0);
    assert_true(batch < 16 * single);
    /* a fresh sequence explores: its first draft is taken optimistically (0.1 + 0.4 pays
     * here, 0.1 does not) */
    crd_spec_seq_t *fresh = seq_with(0.1f, 6), *settled = seq_with(0.1f, 6);
    fresh->n_obs = 0;
    crd_spec_plan(&mid, &fresh, 1, 1, 1, 100, false);
    crd_spec_plan(&mid, &settled, 1, 1, 1, 100, false);
    assert_true(fresh->n_draft > settled->n_draft);
    crd_spec_seq_destroy(fresh);
    crd_spec_seq_destroy(settled);
    /* the estimate follows what verification finds */
    crd_spec_seq_t *e = seq_with(0.5f, 4);
    e->n_draft = 4;
    for (int i = 0; i < 20; i++) {
        crd_spec_seq_observe(e, 0);
    }
    assert_true(e->accept < 0.05f);
    for (int i = 0; i < 20; i++) {
        crd_spec_seq_observe(e, 4);
    }
    assert_true(e->accept > 0.9f);
    for (int i = 0; i < 16; i++) {
        crd_spec_seq_destroy(q[i]);
    }
    crd_spec_seq_destroy(lo);
    crd_spec_seq_destroy(hi);
    crd_spec_seq_destroy(e);
    crd_spec_mode_t m;
    tdm_error_t err = {0};
    assert_int_equal(crd_spec_mode_parse("ngram", &m, &err), TDM_OK);
    assert_int_equal(m, CRD_SPEC_NGRAM);
    assert_int_equal(crd_spec_mode_parse("eagle", &m, &err), TDM_ERR_INVALID_PARAM);
}

static tdm_status_t no_fill(crd_spec_seq_t *const *q, const int32_t *const *tokens,
                            const int32_t *n, int32_t count, tdm_error_t *err)
{
    (void)q, (void)tokens, (void)n, (void)count, (void)err;
    return TDM_OK;
}

/* A draft model's steps count in the step's time: the dearer they are, the fewer drafts;
 * a prompt-lookup sequence (no model) is not charged for them. */
static void test_plan_counts_draft_model_steps(void **state)
{
    (void)state;
    crd_spec_cost_t c = {.n_points = 8, .scale = 1.0};
    for (int i = 0; i < 8; i++) {
        c.t[i] = 1e-3 + 1e-5 * (1 << i);
    }
    crd_spec_seq_t *m = seq_with(0.8f, 6), *g = seq_with(0.8f, 6);
    const crd_drafter_ops_t *ngram = m->ops;
    crd_drafter_ops_t model = *ngram;
    model.mode = CRD_SPEC_DRAFT;
    model.fill = no_fill;
    m->ops = &model;
    c.draft_step = 0.0; /* free: the whole proposal, as without a model */
    assert_int_equal(crd_spec_plan(&c, &m, 1, 1, 1, 100, false), 6);
    c.draft_step = 4e-4; /* 0.4 of a step: k = 3 costs more than it brings at a = 0.8 */
    assert_int_equal(crd_spec_plan(&c, &m, 1, 1, 1, 100, false), 2);
    c.draft_step = 1e-3; /* as dear as the step itself: no draft pays */
    assert_int_equal(crd_spec_plan(&c, &m, 1, 1, 1, 100, false), 0);
    assert_int_equal(crd_spec_plan(&c, &g, 1, 1, 1, 100, false), 6);
    m->ops = ngram;
    crd_spec_seq_destroy(m);
    crd_spec_seq_destroy(g);
}

/* The cost model of the 2-core CPU the benchmarks ran on (docs/benchmarks.md: 15.7 ms for
 * one token, 91 for 16, 197 for 32, compute-bound: ~6.3 ms per token beyond). */
static crd_spec_cost_t cpu_cost(void)
{
    static const double ms[] = {15.7, 23.0, 33.0, 52.0, 91.0, 197.0, 400.0, 800.0, 1600.0};
    crd_spec_cost_t c = {.n_points = 9, .scale = 1.0};
    for (int i = 0; i < 9; i++) {
        c.t[i] = ms[i] * 1e-3;
    }
    return c;
}

/* Never a loss under load: what a draft must beat is the decoding rows' own rate, and a
 * sequence with no history starts from its drafter's record, not from a fixed guess. */
static void test_plan_sound_under_load(void **state)
{
    (void)state;
    crd_spec_cost_t c = cpu_cost();
    crd_spec_seq_t *q[32];
    for (int i = 0; i < 32; i++) {
        q[i] = seq_with(0.5f, 6);
        q[i]->n_obs = 0; /* new sequences: optimistic estimates (0.5 + 0.4) */
    }
    /* 16 decoding streams and a 256-token prompt chunk in the same step: t(273) / t(272)
     * is ~1.004, but each draft still costs the 16 streams ~6 ms of a 91 ms decode step
     * (7%) for 0.9 / 16 (5.6%) more tokens: none pays */
    assert_int_equal(crd_spec_plan(&c, q, 16, 16 + 256, 16, 1000, false), 0);
    /* 32 streams: not even drafts accepted 95% of the time */
    for (int i = 0; i < 32; i++) {
        q[i]->accept = 0.95f;
        q[i]->n_obs = 10000;
    }
    assert_int_equal(crd_spec_plan(&c, q, 32, 32, 32, 1000, false), 0);
    assert_int_equal(crd_spec_plan(&c, q, 32, 32 + 512, 32, 1000, false), 0);
    /* the same prompt chunk next to one decoding stream leaves its drafts paying */
    assert_true(crd_spec_plan(&c, q, 1, 1 + 256, 1, 1000, false) > 0);

    /* a drafter whose drafts have been rejected (prose) */
    for (int i = 0; i < 200; i++) {
        crd_spec_prior_observe(&c, CRD_SPEC_NGRAM, 4, i % 10 == 0 ? 1 : 0);
    }
    assert_true(c.accept[CRD_SPEC_NGRAM] < 0.15f);
    assert_true(c.accept[CRD_SPEC_DRAFT] == 0.0f); /* other drafters keep their own */
    for (int i = 0; i < 4; i++) {
        q[i]->n_obs = 0;
        crd_spec_seq_start(q[i], &c);
        assert_true(q[i]->accept < 0.15f);
    }
    /* 4 new streams: ~0.05 + 0.4 for a draft that costs 14% of the step: no draft (a fixed
     * 0.5 prior, 0.9 with the bonus, drafted one per stream here) */
    assert_int_equal(crd_spec_plan(&c, q, 4, 4, 4, 1000, false), 0);
    /* one new stream, where a draft costs less, still explores once its estimate has
     * crept up to 0.1 (crd_spec_seq_propose's second chance): 0.5 > 1 - 15.7 / 23 */
    q[0]->accept = 0.1f;
    assert_int_equal(crd_spec_plan(&c, q, 1, 1, 1, 1000, false), 1);
    /* a drafter that has been right: new streams draft from their first step */
    for (int i = 0; i < 200; i++) {
        crd_spec_prior_observe(&c, CRD_SPEC_NGRAM, 4, 4);
    }
    assert_true(c.accept[CRD_SPEC_NGRAM] > 0.9f);
    for (int i = 0; i < 4; i++) {
        crd_spec_seq_start(q[i], &c);
    }
    assert_true(crd_spec_plan(&c, q, 4, 4, 4, 1000, false) >= 4);
    for (int i = 0; i < 32; i++) {
        crd_spec_seq_destroy(q[i]);
    }
}

/* Optimism buys one look per step, not a run: a new sequence's first draft is taken at its
 * upper bound, every further one at the plain estimate. */
static void test_plan_optimism_first_draft_only(void **state)
{
    (void)state;
    crd_spec_cost_t c = cpu_cost();
    crd_spec_seq_t *q = seq_with(0.5f, 8);
    q->n_obs = 0;
    /* one stream, estimate 0.5 with no verification yet: gains 0.9, 0.45, 0.225 ... against
     * t(2) / t(1) = 1.46, t(3) / t(2) ~ 1.22: two drafts (optimism on every draft, 0.9^j,
     * planned six, all of which a prose stream then saw rejected) */
    assert_int_equal(crd_spec_plan(&c, &q, 1, 1, 1, 1000, false), 2);
    /* once it has a record, the estimate alone decides: 0.9 accepted runs long */
    q->accept = 0.9f;
    q->n_obs = 10000;
    assert_true(crd_spec_plan(&c, &q, 1, 1, 1, 1000, false) >= 5);
    /* and a record of rejections stops it */
    q->accept = 0.05f;
    assert_int_equal(crd_spec_plan(&c, &q, 1, 1, 1, 1000, false), 0);
    crd_spec_seq_destroy(q);
    /* the bonus is shared by the streams that pay for the look: 4 new streams at 0.4 look at
     * 0.4 + 0.4 / 4 = 0.5, short of the 4 x 4.75 / 33 = 0.58 a draft must bring here (each
     * alone at 0.8 drafted: prose at 4 streams, 42% accepted, ran at 0.95x) */
    crd_spec_seq_t *four[4];
    for (int i = 0; i < 4; i++) {
        four[i] = seq_with(0.4f, 8);
        four[i]->n_obs = 0;
    }
    assert_int_equal(crd_spec_plan(&c, four, 4, 4, 4, 1000, false), 0);
    for (int i = 0; i < 4; i++) {
        crd_spec_seq_destroy(four[i]);
    }
}

static void test_trim_returns_rejected_blocks(void **state)
{
    (void)state;
    crd_kvm_t *kvm = NULL;
    assert_int_equal(crd_kvm_create(8, 4, 1, &kvm, NULL), TDM_OK);
    int32_t toks[32];
    for (int i = 0; i < 32; i++) {
        toks[i] = 100 + i;
    }
    crd_kv_seq_t *a = NULL;
    int32_t cached = -1;
    assert_int_equal(crd_kvm_seq_create(kvm, toks, 6, &a, &cached, NULL), TDM_OK);
    /* a verification step: 6 accepted tokens + 7 drafts = positions [0, 13) -> 4 blocks */
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 13), TDM_OK);
    assert_int_equal(crd_kvm_available(kvm), 4);
    /* 2 drafts accepted: 8 positions computed, the next token is the 9th */
    int32_t wrong[32];
    memcpy(wrong, toks, sizeof(wrong));
    crd_kvm_seq_commit(kvm, a, toks, 8);
    crd_kvm_seq_trim(kvm, a, 9);
    int32_t nb;
    crd_kvm_seq_blocks(a, &nb);
    assert_int_equal(nb, 3);
    assert_int_equal(crd_kvm_available(kvm), 5);
    /* trimming never drops a committed block */
    crd_kvm_seq_trim(kvm, a, 1);
    crd_kvm_seq_blocks(a, &nb);
    assert_int_equal(nb, 2);
    crd_kvm_seq_free(kvm, a);
    /* only the committed blocks are in the prefix cache: a prompt of 13 tokens reuses 8 */
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, toks, 13, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 8);
    crd_kvm_seq_free(kvm, b);
    /* and a different continuation after them shares them too, nothing past */
    wrong[8] = 7;
    assert_int_equal(crd_kvm_seq_create(kvm, wrong, 13, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 8);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_destroy(kvm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verify_keeps_the_distribution),
        cmocka_unit_test(test_greedy_verify_is_argmax),
        cmocka_unit_test(test_ngram_matches_brute_force),
        cmocka_unit_test(test_plan_follows_the_cost_model),
        cmocka_unit_test(test_plan_counts_draft_model_steps),
        cmocka_unit_test(test_plan_sound_under_load),
        cmocka_unit_test(test_plan_optimism_first_draft_only),
        cmocka_unit_test(test_trim_returns_rejected_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
