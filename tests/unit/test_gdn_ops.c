/*
 * test_gdn_ops.c - the Gated DeltaNet ops of the CPU backend (kern_be_gdn_conv,
 * kern_be_gdn_rule) against an oracle written here from the math in double precision: the
 * causal conv over each sequence's inputs, then the per-token recurrence
 *     S <- exp(g) S;  S <- S + k (b (v - S^T k))^T;  o = S^T q
 * on L2-normalised q (scaled by 1/sqrt(d)) and k. Sequences of 1 to 150 tokens (the chunked
 * form over several 64-token chunks), several sequences per step, both v-head orders, the
 * packed and the separate b/a layouts, and a sequence continued over steps of different
 * sizes (state carried in its slot). The HF-side oracle is tests/python/test_forward_hybrid.py.
 */
#include "kernels/kern_backend.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MAXT 400

typedef struct gdn_case {
    int nk, nv, d, conv;
    bool tiled, packed;
} gdn_case_t;

static uint64_t rng_state = 88172645463325252ull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The oracle for one sequence of n tokens, from zero state: x [n][ch] projections (before
 * the conv), raw beta/alpha [n][ldb] at bidx(h), out [n][nv*d]. */
static void oracle(const gdn_case_t *c, const float *cw, const float *a, const float *dt,
                   const float *x, int n, const float *beta, const float *alpha, int ldb, int grp,
                   double *out)
{
    const int nk = c->nk, nv = c->nv, d = c->d, K = c->conv, r = nv / nk;
    const int ch = (2 * nk + nv) * d;
    double *y = calloc((size_t)n * (size_t)ch, sizeof(double));
    for (int t = 0; t < n; t++) {
        for (int q = 0; q < ch; q++) {
            double acc = 0.0;
            for (int j = 0; j < K; j++) {
                const int s = t - (K - 1) + j;
                acc += s >= 0 ? (double)cw[q * K + j] * x[(size_t)s * ch + q] : 0.0;
            }
            y[(size_t)t * ch + q] = acc / (1.0 + exp(-acc));
        }
    }
    double *S = calloc((size_t)d * (size_t)d, sizeof(double));
    double qn[128], kn[128], tmp[128]; /* d <= 128 */
    for (int h = 0; h < nv; h++) {
        memset(S, 0, (size_t)d * (size_t)d * sizeof(double));
        const int kh = c->tiled ? h % nk : h / r, bi = (h / r) * grp + h % r;
        for (int t = 0; t < n; t++) {
            const double *row = y + (size_t)t * ch;
            double sq = 0.0, sk = 0.0;
            for (int i = 0; i < d; i++) {
                sq += row[kh * d + i] * row[kh * d + i];
                sk += row[(nk + kh) * d + i] * row[(nk + kh) * d + i];
            }
            for (int i = 0; i < d; i++) {
                qn[i] = row[kh * d + i] / sqrt(sq + 1e-6) / sqrt((double)d);
                kn[i] = row[(nk + kh) * d + i] / sqrt(sk + 1e-6);
            }
            const double b = 1.0 / (1.0 + exp(-(double)beta[t * ldb + bi]));
            const double u = (double)alpha[t * ldb + bi] + dt[h];
            const double g = a[h] * (u > 20.0 ? u : log1p(exp(u)));
            for (int i = 0; i < d * d; i++) {
                S[i] *= exp(g);
            }
            for (int j = 0; j < d; j++) {
                double s = 0.0;
                for (int i = 0; i < d; i++) {
                    s += S[i * d + j] * kn[i];
                }
                tmp[j] = (row[(2 * nk + h) * d + j] - s) * b;
            }
            for (int i = 0; i < d; i++) {
                for (int j = 0; j < d; j++) {
                    S[i * d + j] += kn[i] * tmp[j];
                }
            }
            for (int j = 0; j < d; j++) {
                double s = 0.0;
                for (int i = 0; i < d; i++) {
                    s += S[i * d + j] * qn[i];
                }
                out[(size_t)t * nv * d + h * d + j] = s;
            }
        }
    }
    free(S);
    free(y);
}

/* Runs sequences of the given lengths together in steps of at most `step` tokens each (a
 * sequence's run per step: its next `step` tokens), and checks every output row. */
static void run_case(const gdn_case_t *c, const int *lens, int n_seqs, int step)
{
    const int nk = c->nk, nv = c->nv, d = c->d, K = c->conv, r = nv / nk;
    const int ch = (2 * nk + nv) * d, ldb = 2 * nv, grp = c->packed ? 2 * r : r;
    kern_backend_t *be = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 2, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &be, NULL), TDM_OK);
    const kern_reserve_t rs = {.n_tok = MAXT,
                               .n_out = 1,
                               .n_ctx = MAXT,
                               .max_cols = 8,
                               .max_rows = 8,
                               .n_head = 1,
                               .head_dim = 8,
                               .n_embd = 8,
                               .gdn_head_dim = d};
    assert_int_equal(kern_be_reserve(be, &rs, NULL), TDM_OK);

    float *cw = malloc((size_t)ch * K * sizeof(float)), a[64], dt[64];
    for (int i = 0; i < ch * K; i++) {
        cw[i] = 0.6f * frand();
    }
    for (int h = 0; h < nv; h++) {
        a[h] = -expf(1.5f * frand() - 1.0f);
        dt[h] = frand();
    }
    float *x[8], *bt[8], *al[8];
    double *ref[8];
    for (int s = 0; s < n_seqs; s++) {
        x[s] = malloc((size_t)lens[s] * ch * sizeof(float));
        bt[s] = malloc((size_t)lens[s] * ldb * sizeof(float));
        for (int i = 0; i < lens[s] * ch; i++) {
            x[s][i] = frand();
        }
        for (int i = 0; i < lens[s] * ldb; i++) {
            bt[s][i] = 2.0f * frand();
        }
        al[s] = bt[s] + (c->packed ? r : nv);
        ref[s] = malloc((size_t)lens[s] * nv * d * sizeof(double));
        oracle(c, cw, a, dt, x[s], lens[s], bt[s], al[s], ldb, grp, ref[s]);
    }
    void *conv_state = NULL, *ssm_state = NULL;
    assert_int_equal(
        kern_be_alloc(be, (size_t)n_seqs * (K - 1) * ch * sizeof(float), 0, "t", &conv_state, NULL),
        TDM_OK);
    assert_int_equal(
        kern_be_alloc(be, (size_t)n_seqs * nv * d * d * sizeof(float), 0, "t", &ssm_state, NULL),
        TDM_OK);
    const kern_gdn_t g = {.n_k_heads = nk,
                          .n_v_heads = nv,
                          .head_dim = d,
                          .conv = K,
                          .v_tiled = c->tiled,
                          .eps = 1e-6f,
                          .conv_w = cw,
                          .a = a,
                          .dt_bias = dt,
                          .conv_state = conv_state,
                          .ssm_state = ssm_state,
                          .n_slots = n_seqs};
    float *qkv = malloc((size_t)MAXT * ch * sizeof(float));
    float *ba = malloc((size_t)MAXT * ldb * sizeof(float));
    float *out = malloc((size_t)MAXT * nv * d * sizeof(float));
    int32_t tok[MAXT], pos[MAXT], seq[MAXT], done[8] = {0};
    int32_t blk[1] = {0};
    kern_seq_t seqs[8];
    double worst = 0.0;
    for (;;) {
        int n = 0;
        for (int s = 0; s < n_seqs; s++) {
            seqs[s] = (kern_seq_t){blk, 1, NULL, s, -1, -1};
            for (int i = 0; i < step && done[s] + i < lens[s]; i++, n++) {
                const int p = done[s] + i;
                tok[n] = 0;
                pos[n] = p;
                seq[n] = s;
                memcpy(qkv + (size_t)n * ch, x[s] + (size_t)p * ch, (size_t)ch * sizeof(float));
                memcpy(ba + (size_t)n * ldb, bt[s] + (size_t)p * ldb, (size_t)ldb * sizeof(float));
            }
        }
        if (n == 0) {
            break;
        }
        const kern_step_t st = {
            .n_tokens = n, .token = tok, .pos = pos, .seq = seq, .n_seqs = n_seqs, .seqs = seqs};
        kern_be_step_begin(be, &st, false);
        kern_be_gdn_conv(be, &g, qkv, ch);
        kern_be_gdn_rule(be, &g, qkv, ch, ba, ldb, ba + (c->packed ? r : nv), ldb, grp, out);
        bool rerun = false;
        assert_int_equal(kern_be_step_end(be, &rerun, NULL), TDM_OK);
        for (int t = 0; t < n; t++) {
            const double *want = ref[seq[t]] + (size_t)pos[t] * nv * d;
            for (int i = 0; i < nv * d; i++) {
                const double e =
                    fabs(out[(size_t)t * nv * d + i] - want[i]) / (1.0 + fabs(want[i]));
                worst = e > worst ? e : worst;
            }
        }
        for (int s = 0; s < n_seqs; s++) {
            done[s] = done[s] + step < lens[s] ? done[s] + step : lens[s];
        }
    }
    print_message("nk %d nv %d d %d %s %s step %d: max error %.2e\n", nk, nv, d,
                  c->tiled ? "tiled" : "grouped", c->packed ? "packed" : "separate", step, worst);
    assert_true(worst < 1e-5); /* measured <= 1.2e-7 */
    for (int s = 0; s < n_seqs; s++) {
        free(x[s]);
        free(bt[s]);
        free(ref[s]);
    }
    free(cw);
    free(qkv);
    free(ba);
    free(out);
    kern_be_free(be, conv_state);
    kern_be_free(be, ssm_state);
    kern_backend_destroy(be);
}

static void test_rule_against_oracle(void **state)
{
    (void)state;
    static const gdn_case_t cases[] = {
        {2, 4, 32, 4, false, true}, /* qwen3next-like: grouped v heads, b/a packed */
        {2, 4, 16, 4, true, false}, /* qwen35moe-like: tiled v heads, b/a separate */
        {3, 3, 16, 3, false, false}, {1, 3, 8, 2, true, true},
        {1, 2, 128, 4, false, true}, /* the released head dim: full matrix-product tiles */
    };
    static const int lens[] = {150, 1, 65, 7};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i], lens, 4, MAXT); /* whole prompts: chunked runs (150: 3 chunks) */
        run_case(&cases[i], lens, 4, 1);    /* every token alone: the recurrent form */
        run_case(&cases[i], lens, 4, 37);   /* steps of 37: state carried across steps */
    }
}

/* A sequence whose slot is out of range is refused (the step fails, naming it). */
static void test_bad_slot_fails_the_step(void **state)
{
    (void)state;
    kern_backend_t *be = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &be, NULL), TDM_OK);
    const kern_reserve_t rs = {.n_tok = 4,
                               .n_out = 1,
                               .n_ctx = 4,
                               .max_cols = 8,
                               .max_rows = 8,
                               .n_head = 1,
                               .head_dim = 8,
                               .n_embd = 8,
                               .gdn_head_dim = 8};
    assert_int_equal(kern_be_reserve(be, &rs, NULL), TDM_OK);
    float cw[3 * 8 * 2] = {0}, a[1] = {-1.0f}, dt[1] = {0}, cs[8 * 3] = {0}, ss[64] = {0};
    float qkv[24] = {0};
    const kern_gdn_t g = {.n_k_heads = 1,
                          .n_v_heads = 1,
                          .head_dim = 8,
                          .conv = 2,
                          .eps = 1e-6f,
                          .conv_w = cw,
                          .a = a,
                          .dt_bias = dt,
                          .conv_state = cs,
                          .ssm_state = ss,
                          .n_slots = 1};
    int32_t tok[1] = {0}, pos[1] = {0}, seq[1] = {0}, blk[1] = {0};
    const kern_seq_t sq = {blk, 1, NULL, 3, -1, -1};
    const kern_step_t st = {
        .n_tokens = 1, .token = tok, .pos = pos, .seq = seq, .n_seqs = 1, .seqs = &sq};
    kern_be_step_begin(be, &st, false);
    kern_be_gdn_conv(be, &g, qkv, 24);
    bool rerun = false;
    tdm_error_t err = {0};
    assert_int_equal(kern_be_step_end(be, &rerun, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "state slot 3"));
    kern_backend_destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule_against_oracle),
        cmocka_unit_test(test_bad_slot_fails_the_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
