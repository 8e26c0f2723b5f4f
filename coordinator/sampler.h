/*
 * sampler.h - turning a row of logits into the next token.
 *
 * Order of operations (as vLLM applies them, so results match what OpenAI-API users
 * expect):
 *   0. logit_bias: each listed token's bias is added to its raw logit (OpenAI's range
 *      [-100, 100]; -100 all but bans a token, +100 all but forces it);
 *   1. penalties on the raw logits:
 *        repetition (HF/CTRL style: logit / p if logit > 0 else logit * p, for every token
 *        seen in prompt or output), then
 *        presence (- presence * [count > 0]) and frequency (- frequency * count) over
 *        output tokens only;
 *   2. temperature == 0 -> greedy argmax (ties: lowest id) and stop here;
 *   3. logits / temperature;
 *   4. top-k, then top-p (nucleus over the sorted softmax, always keeping the top token),
 *      then min-p (drop tokens whose probability < min_p * max probability);
 *   5. draw from the renormalised distribution with the sampler's own PRNG
 *      (xoshiro256**, seeded through splitmix64), so a seed repeats exactly.
 *
 * A sampler belongs to one sequence and is not thread-safe.
 */
#ifndef CRD_SAMPLER_H
#define CRD_SAMPLER_H

#include "common/status.h"

#include <stdbool.h>
#include <stdint.h>

/* The most logit_bias entries a request may carry, and the range of each bias. */
#define CRD_LOGIT_BIAS_MAX   300
#define CRD_LOGIT_BIAS_LIMIT 100.0f

typedef struct crd_sampling_params {
    float temperature;        /* 0 = greedy                                    */
    int32_t top_k;            /* <= 0: off                                     */
    float top_p;              /* >= 1: off                                     */
    float min_p;              /* <= 0: off                                     */
    float repetition_penalty; /* 1: off; > 0                                   */
    float presence_penalty;   /* 0: off; OpenAI range [-2, 2]                  */
    float frequency_penalty;  /* 0: off; OpenAI range [-2, 2]                  */
    uint64_t seed;            /* used when has_seed                            */
    bool has_seed;            /* false: seeded from the clock and a counter    */
    /* OpenAI's logit_bias: n_logit_bias pairs, ids distinct. Held inline (the params are
     * copied by value from the request to the job to the sampler) and capped, as OpenAI
     * caps the map, so a request cannot make every copy large. */
    int32_t n_logit_bias;
    int32_t logit_bias_id[CRD_LOGIT_BIAS_MAX];
    float logit_bias[CRD_LOGIT_BIAS_MAX];
} crd_sampling_params_t;

/* temperature 1, everything else off, no seed. */
void crd_sampling_params_default(crd_sampling_params_t *p);

/* TDM_ERR_INVALID_PARAM with a message naming the field when a value is out of range.
 * (logit_bias ids are checked against the vocabulary by crd_sampler_create.) */
tdm_status_t crd_sampling_params_validate(const crd_sampling_params_t *p, tdm_error_t *err);

typedef struct crd_sampler crd_sampler_t;

tdm_status_t crd_sampler_create(const crd_sampling_params_t *params, int32_t n_vocab,
                                crd_sampler_t **out, tdm_error_t *err);
void crd_sampler_destroy(crd_sampler_t *s);

/* Records a prompt token (repetition penalty only) or a generated token (all penalties).
 * Ids outside [0, n_vocab) are ignored. */
void crd_sampler_accept_prompt(crd_sampler_t *s, int32_t token);
void crd_sampler_accept(crd_sampler_t *s, int32_t token);

/* Picks the next token from logits[n_vocab] (modified in place: penalties, temperature
 * and filtering are applied to it). Does not call crd_sampler_accept. */
int32_t crd_sampler_sample(crd_sampler_t *s, float *logits);

/*
 * Speculative decoding: checks a drafted token against logits (processed as
 * crd_sampler_sample does them). Greedy: accepted exactly when the draft is the argmax,
 * and *token is the argmax either way. Sampled (the draft came from a deterministic
 * drafter, a point mass q): accepted with probability p(draft) under the processed
 * distribution p; when rejected *token is drawn from the residual max(0, p - q)
 * renormalised, i.e. p without the draft. Either way *token is distributed as a draw
 * from p (Leviathan et al. 2023; Chen et al. 2023). Returns whether the draft was
 * accepted (then *token == draft). Does not call crd_sampler_accept.
 */
bool crd_sampler_verify(crd_sampler_t *s, float *logits, int32_t draft, int32_t *token);

/* log-softmax of logits[n] into out[n] (numerically stable; out may equal logits). */
void crd_log_softmax(const float *logits, float *out, int32_t n);

/* Next value of a xoshiro256** generator state (exposed for tests). */
uint64_t crd_rng_next(uint64_t state[4]);
void crd_rng_seed(uint64_t state[4], uint64_t seed);

#endif
