/*
 * job.h - one HTTP request's generation on the engine: n sequences, text, stop strings.
 *
 * The engine thread turns each sequence's tokens into text as they come (streaming
 * detokenizer, then the stop-string matcher, which can end the sequence at once) and
 * appends "pieces" to the job's queue; the request's HTTP thread takes them in order and
 * formats them (JSON or SSE). The job is reference-counted: the HTTP side holds one
 * reference and each live sequence one, so whichever side finishes last frees it and a
 * client that disconnects never leaves the engine writing into freed memory.
 */
#ifndef SRV_JOB_H
#define SRV_JOB_H

#include "api/server/metrics.h"
#include "coordinator/engine.h"
#include "coordinator/router.h"
#include "coordinator/tokenizer/tokenizer.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct srv_piece {
    int choice;
    char *text; /* released text, NUL-terminated (may be "")          */
    size_t len;
    bool has_token; /* a generated token (not a stop token)         */
    int32_t token;
    float logprob;
    int n_top;
    int32_t top_ids[CRD_MAX_TOP_LOGPROBS];
    float top_lp[CRD_MAX_TOP_LOGPROBS];
    crd_finish_t finish; /* NONE unless the choice ended here              */
    bool stop_string;    /* finish STOP came from a stop string            */
    char *stop_seq;      /* the stop string that matched (or NULL)         */
    tdm_status_t status; /* with CRD_FINISH_ERROR                          */
    char *error;
    int32_t n_prompt, n_cached, n_generated;
} srv_piece_t;

typedef struct srv_job_params {
    const int32_t *prompt;
    int32_t n_prompt;
    int n; /* sequences (choices) */
    int32_t max_tokens;
    crd_sampling_params_t sampling;
    const int32_t *stop_ids;
    int32_t n_stop_ids;
    char *const *stop; /* stop strings */
    int n_stop;
    int top_logprobs;
    bool want_tokens;        /* pieces carry token ids and logprobs (logprobs requested) */
    unsigned detok_flags;    /* tok_decode flags for the text                             */
    double t_start;          /* request arrival, for the latency histograms               */
    crd_spec_request_t spec; /* speculative decoding override (zero: the server's)      */
} srv_job_params_t;

typedef struct srv_job srv_job_t;

/* Submits p->n sequences. On failure nothing keeps running and *out is NULL. */
tdm_status_t srv_job_start(crd_router_t *router, const tok_vocab_t *vocab, srv_metrics_t *metrics,
                           const srv_job_params_t *p, srv_job_t **out, tdm_error_t *err);

/* Waits up to timeout_s for pieces; *pieces (free with srv_pieces_free) gets all queued. */
int srv_job_take(srv_job_t *j, double timeout_s, srv_piece_t **pieces);
void srv_pieces_free(srv_piece_t *pieces, int n);

/* True once every sequence has ended and all pieces were taken. */
bool srv_job_finished(srv_job_t *j);

/* Cancels the sequences still running (client gone, shutdown). */
void srv_job_cancel(srv_job_t *j);

/* Drops the HTTP side's reference. */
void srv_job_release(srv_job_t *j);

#endif
