/* sampler.c - penalties, temperature, top-k/top-p/min-p and seeded draws (see sampler.h). */
#include "coordinator/sampler.h"

#include "common/mem.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct crd_sampler {
    crd_sampling_params_t params;
    int32_t n_vocab;
    uint64_t rng[4];
    uint32_t *out_count; /* [n_vocab] times each token was generated */
    uint8_t *seen;       /* [n_vocab] token occurred in prompt or output */
    int32_t *idx;        /* [n_vocab] scratch: candidate ids */
    float *prob;         /* [n_vocab] scratch: candidate probabilities */
};

void crd_sampling_params_default(crd_sampling_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

tdm_status_t crd_sampling_params_validate(const crd_sampling_params_t *p, tdm_error_t *err)
{
    if (!(p->temperature >= 0.0f) || p->temperature > 100.0f) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "temperature must be in [0, 100]");
    }
    if (!(p->top_p > 0.0f) || p->top_p > 1.0f) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "top_p must be in (0, 1]");
    }
    if (!(p->min_p >= 0.0f) || p->min_p > 1.0f) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "min_p must be in [0, 1]");
    }
    if (p->top_k < -1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "top_k must be -1, 0 or positive");
    }
    if (!(p->repetition_penalty > 0.0f) || p->repetition_penalty > 10.0f) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "repetition_penalty must be in (0, 10]");
    }
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "presence_penalty must be in [-2, 2]");
    }
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "frequency_penalty must be in [-2, 2]");
    }
    if (p->n_logit_bias < 0 || p->n_logit_bias > CRD_LOGIT_BIAS_MAX) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "logit_bias may hold at most %d tokens",
                             CRD_LOGIT_BIAS_MAX);
    }
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias_id[i] < 0) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "logit_bias: token id %d",
                                 (int)p->logit_bias_id[i]);
        }
        if (!(p->logit_bias[i] >= -CRD_LOGIT_BIAS_LIMIT &&
              p->logit_bias[i] <= CRD_LOGIT_BIAS_LIMIT)) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "logit_bias values must be in [-100, 100]");
        }
    }
    return TDM_OK;
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t crd_rng_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void crd_rng_seed(uint64_t s[4], uint64_t seed)
{
    /* splitmix64 spreads any seed (0 included) over the whole state */
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        s[i] = z ^ (z >> 31);
    }
}

/* uniform double in [0, 1) with 53 random bits */
static double rng_uniform(uint64_t s[4])
{
    return (double)(crd_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

tdm_status_t crd_sampler_create(const crd_sampling_params_t *params, int32_t n_vocab,
                                crd_sampler_t **out, tdm_error_t *err)
{
    if (n_vocab <= 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "sampler: vocabulary size %d",
                             (int)n_vocab);
    }
    tdm_status_t st = crd_sampling_params_validate(params, err);
    if (st != TDM_OK) {
        return st;
    }
    for (int32_t i = 0; i < params->n_logit_bias; i++) {
        if (params->logit_bias_id[i] >= n_vocab) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "logit_bias: token id %d is not in the vocabulary [0, %d)",
                                 (int)params->logit_bias_id[i], (int)n_vocab);
        }
    }
    crd_sampler_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "sampler: out of memory");
    }
    s->params = *params;
    s->n_vocab = n_vocab;
    s->out_count = calloc((size_t)n_vocab, sizeof(*s->out_count));
    s->seen = calloc((size_t)n_vocab, sizeof(*s->seen));
    s->idx = malloc((size_t)n_vocab * sizeof(*s->idx));
    s->prob = malloc((size_t)n_vocab * sizeof(*s->prob));
    if (s->out_count == NULL || s->seen == NULL || s->idx == NULL || s->prob == NULL) {
        crd_sampler_destroy(s);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "sampler: out of memory for %d tokens",
                             (int)n_vocab);
    }
    uint64_t seed = params->seed;
    if (!params->has_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)s;
    }
    crd_rng_seed(s->rng, seed);
    *out = s;
    return TDM_OK;
}

void crd_sampler_destroy(crd_sampler_t *s)
{
    if (s == NULL) {
        return;
    }
    free(s->out_count);
    free(s->seen);
    free(s->idx);
    free(s->prob);
    free(s);
}

void crd_sampler_accept_prompt(crd_sampler_t *s, int32_t token)
{
    if (token >= 0 && token < s->n_vocab) {
        s->seen[token] = 1;
    }
}

void crd_sampler_accept(crd_sampler_t *s, int32_t token)
{
    if (token >= 0 && token < s->n_vocab) {
        s->seen[token] = 1;
        s->out_count[token]++;
    }
}

void crd_log_softmax(const float *logits, float *out, int32_t n)
{
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        mx = logits[i] > mx ? logits[i] : mx;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        sum += exp((double)logits[i] - mx);
    }
    float lse = mx + (float)log(sum);
    for (int32_t i = 0; i < n; i++) {
        out[i] = logits[i] - lse;
    }
}

/* Before the penalties, as vLLM orders its logits processors. */
static void apply_logit_bias(const crd_sampler_t *s, float *logits)
{
    const crd_sampling_params_t *p = &s->params;
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        logits[p->logit_bias_id[i]] += p->logit_bias[i];
    }
}

static void apply_penalties(crd_sampler_t *s, float *logits)
{
    const crd_sampling_params_t *p = &s->params;
    bool rep = p->repetition_penalty != 1.0f;
    bool pres = p->presence_penalty != 0.0f, freq = p->frequency_penalty != 0.0f;
    if (!rep && !pres && !freq) {
        return;
    }
    for (int32_t t = 0; t < s->n_vocab; t++) {
        if (rep && s->seen[t]) {
            logits[t] = logits[t] > 0.0f ? logits[t] / p->repetition_penalty
                                         : logits[t] * p->repetition_penalty;
        }
        if (s->out_count[t] > 0) {
            logits[t] -= p->presence_penalty + p->frequency_penalty * (float)s->out_count[t];
        }
    }
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

/* descending by probability, ties by lower id (deterministic) */
static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *prob = ctx;
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    if (prob[ia] != prob[ib]) {
        return prob[ia] > prob[ib] ? -1 : 1;
    }
    return ia < ib ? -1 : (ia > ib);
}

/*
 * Penalties, temperature and filters: the tokens that may be drawn are s->idx[0, m), with
 * weights s->prob[id] summing to *total. Returns m, or 0 when the choice is simply the
 * argmax (greedy, or nothing left), which is then in *best.
 */
static int32_t candidates(crd_sampler_t *s, float *logits, double *total, int32_t *best)
{
    const crd_sampling_params_t *p = &s->params;
    const int32_t n = s->n_vocab;
    apply_logit_bias(s, logits);
    apply_penalties(s, logits);
    *best = argmax(logits, n);
    if (p->temperature == 0.0f) {
        return 0;
    }
    /* probabilities at temperature T, into a scratch indexed by token id */
    float mx = logits[*best];
    float *pr = s->prob;
    double sum = 0.0;
    for (int32_t t = 0; t < n; t++) {
        logits[t] /= p->temperature;
        float e = expf(logits[t] - mx / p->temperature);
        pr[t] = e;
        sum += e;
    }
    int32_t m = 0;
    for (int32_t t = 0; t < n; t++) {
        pr[t] = (float)(pr[t] / sum);
        if (pr[t] > 0.0f) {
            s->idx[m++] = t;
        }
    }
    if (m == 0) {
        *best = argmax(logits, n);
        return 0;
    }
    bool filter = (p->top_k > 0 && p->top_k < m) || p->top_p < 1.0f || p->min_p > 0.0f;
    if (filter) {
        qsort_r(s->idx, (size_t)m, sizeof(int32_t), cmp_desc, pr);
        if (p->top_k > 0 && p->top_k < m) {
            m = p->top_k;
        }
        if (p->top_p < 1.0f) {
            double kept = 0.0, mass = 0.0;
            for (int32_t i = 0; i < m; i++) {
                kept += pr[s->idx[i]];
            }
            int32_t cut = m;
            for (int32_t i = 0; i < m; i++) {
                mass += pr[s->idx[i]] / kept;
                if (mass >= p->top_p) {
                    cut = i + 1;
                    break;
                }
            }
            m = cut;
        }
        if (p->min_p > 0.0f) {
            float thresh = p->min_p * pr[s->idx[0]];
            int32_t cut = 1;
            while (cut < m && pr[s->idx[cut]] >= thresh) {
                cut++;
            }
            m = cut;
        }
    }
    *total = 0.0;
    for (int32_t i = 0; i < m; i++) {
        *total += pr[s->idx[i]];
    }
    return m;
}

/* Draws from candidates idx[0, m) of weight total, skipping `skip` (-1: none). */
static int32_t draw(crd_sampler_t *s, int32_t m, double total, int32_t skip)
{
    const float *pr = s->prob;
    double r = rng_uniform(s->rng) * total, acc = 0.0;
    int32_t last = -1;
    for (int32_t i = 0; i < m; i++) {
        if (s->idx[i] == skip) {
            continue;
        }
        acc += pr[s->idx[i]];
        last = s->idx[i];
        if (r < acc) {
            return s->idx[i];
        }
    }
    return last;
}

int32_t crd_sampler_sample(crd_sampler_t *s, float *logits)
{
    double total = 0.0;
    int32_t best;
    const int32_t m = candidates(s, logits, &total, &best);
    return m == 0 ? best : draw(s, m, total, -1);
}

bool crd_sampler_verify(crd_sampler_t *s, float *logits, int32_t draft, int32_t *token)
{
    double total = 0.0;
    int32_t best;
    const int32_t m = candidates(s, logits, &total, &best);
    if (m == 0) {
        *token = best;
        return best == draft;
    }
    double p = 0.0;
    for (int32_t i = 0; i < m; i++) {
        if (s->idx[i] == draft) {
            p = s->prob[draft];
            break;
        }
    }
    /* q is a point mass on the draft: accept with probability min(1, p / q) = p */
    if (p > 0.0 && rng_uniform(s->rng) * total < p) {
        *token = draft;
        return true;
    }
    /* rejected: draw from the residual max(0, p - q), i.e. p without the draft */
    if (total - p <= 0.0) {
        *token = draft; /* cannot happen: p == total is always accepted */
        return true;
    }
    *token = draw(s, m, total - p, draft);
    return false;
}
