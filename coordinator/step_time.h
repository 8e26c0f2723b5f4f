/*
 * step_time.h - what a step will cost, learned from the steps run so far, and the step-time
 * budget built on it (serve --max-step-ms).
 *
 * A step's wall time is modelled as
 *     t = c0 + c_tok * n_tok + c_ctx * ctx
 * where n_tok is the tokens the step computes and ctx the key positions they attend to
 * (the sum over its tokens of pos + 1): weights are read once per step (c0), every token
 * costs its matrix products (c_tok), and attention grows with the context (c_ctx), which
 * is what makes a long agent prompt's prefill chunk take seconds on a CPU. The three
 * coefficients are a least-squares fit over past steps with exponential forgetting (the
 * machine's load and the batch change), regularised towards the previous fit so a run of
 * identical steps cannot make it singular.
 *
 * The budget: while some requests are decoding, a step's prefill tokens are limited so
 * that the step's predicted time stays within the budget; the decode rows always run,
 * and one minimum chunk of prefill always runs, so prompts keep moving. With no decode
 * running nothing is limited (no inter-token latency to protect). The automatic budget is
 * twice the predicted time of the decode rows alone (never below a floor): a prompt
 * arriving at most doubles the other streams' inter-token latency and gets half of
 * every step until it has run.
 */
#ifndef CRD_STEP_TIME_H
#define CRD_STEP_TIME_H

#include <stdbool.h>
#include <stdint.h>

#define CRD_STEP_TIME_WARMUP 8 /* steps observed before predictions are trusted */

typedef struct crd_step_time {
    double s[3][3], b[3]; /* decayed normal equations of the fit */
    double c[3];          /* c0 (s), c_tok (s per token), c_ctx (s per key position) */
    uint64_t n_obs;
} crd_step_time_t;

void crd_step_time_init(crd_step_time_t *m);

/* Records a step of n_tok tokens attending to ctx key positions that took seconds. */
void crd_step_time_observe(crd_step_time_t *m, int64_t n_tok, int64_t ctx, double seconds);

/* Predicted seconds of such a step (0 until CRD_STEP_TIME_WARMUP steps were seen). */
double crd_step_time_predict(const crd_step_time_t *m, int64_t n_tok, int64_t ctx);

/* True once predictions are trusted. */
bool crd_step_time_ready(const crd_step_time_t *m);

/* The most tokens of a prompt chunk starting at position pos that fit in seconds (its
 * tokens attend to pos+1, pos+2, ... keys); 0 when none does. */
int32_t crd_step_time_chunk(const crd_step_time_t *m, int32_t pos, double seconds);

/* The predicted seconds of a chunk of n tokens starting at position pos, without c0. */
double crd_step_time_chunk_cost(const crd_step_time_t *m, int32_t pos, int32_t n);

#endif
