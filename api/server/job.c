/*
 * job.c - a request's sequences on the engine thread, and the queue to its HTTP thread.
 */
#include "api/server/job.h"
#include "common/clock.h"

#include "coordinator/stop_strings.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct seq {
    srv_job_t *job;
    int index;
    crd_route_t route; /* the group and the engine's id */
    bool submitted, ended;
    tok_decode_stream_t dec;
    crd_stop_strings_t *stops;
    bool stop_matched;
    double t_last; /* time of the previous token (inter-token latency) */
} seq_t;

struct srv_job {
    crd_router_t *router;
    srv_metrics_t *metrics;
    double t_start;
    bool want_tokens;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    srv_piece_t *q;
    int nq, capq;
    int n_seqs, n_ended;
    int n_alloc; /* seqs initialised (n_seqs may shrink when a submit fails) */
    seq_t *seqs;
};

static void job_free(srv_job_t *j)
{
    for (int i = 0; i < j->n_alloc; i++) {
        tok_decode_stream_free(&j->seqs[i].dec);
        crd_stop_strings_destroy(j->seqs[i].stops);
    }
    srv_pieces_free(j->q, j->nq);
    free(j->seqs);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

static void job_unref(srv_job_t *j)
{
    pthread_mutex_lock(&j->mu);
    bool last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (last) {
        job_free(j);
    }
}

/* Appends a piece (takes its text and error). Called on the engine thread. Out of memory,
 * the piece is dropped; the sequence's end is still counted, and the HTTP side reports an
 * ended sequence it never got a final piece for as an error (oai_gen.c). */
static void push(srv_job_t *j, srv_piece_t *p)
{
    pthread_mutex_lock(&j->mu);
    if (p->finish != CRD_FINISH_NONE) {
        j->n_ended++;
    }
    if (p->text == NULL) {
        p->text = strdup("");
        p->len = 0;
    }
    if (j->nq == j->capq && p->text != NULL) {
        int cap = j->capq ? j->capq * 2 : 16;
        srv_piece_t *nq = realloc(j->q, (size_t)cap * sizeof(*nq));
        if (nq != NULL) {
            j->q = nq;
            j->capq = cap;
        }
    }
    if (j->nq < j->capq && p->text != NULL) {
        j->q[j->nq++] = *p;
    } else {
        free(p->text);
        free(p->error);
        free(p->stop_seq);
    }
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static char *dup_text(const char *t, size_t n)
{
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, t, n);
        s[n] = '\0';
    }
    return s;
}

/* Appends text to *acc (malloc'd). */
static void append(char **acc, size_t *len, const char *t, size_t n)
{
    if (n == 0) {
        return;
    }
    char *s = realloc(*acc, *len + n + 1);
    if (s == NULL) {
        return;
    }
    memcpy(s + *len, t, n);
    *len += n;
    s[*len] = '\0';
    *acc = s;
}

static int on_event(void *user, const crd_event_t *ev)
{
    seq_t *sq = user;
    srv_job_t *j = sq->job;
    int stop = 0;
    srv_piece_t p = {0};
    p.choice = sq->index;
    p.n_prompt = ev->n_prompt;
    p.n_cached = ev->n_cached;
    p.n_generated = ev->n_generated;
    p.finish = CRD_FINISH_NONE;

    if (ev->token >= 0) {
        double t = tdm_now_s();
        if (ev->n_generated == 1) {
            srv_metrics_observe(j->metrics, SRV_HIST_TTFT, t - j->t_start);
        } else if (sq->t_last > 0) {
            srv_metrics_observe(j->metrics, SRV_HIST_ITL, t - sq->t_last);
        }
        sq->t_last = t;
    }
    if (ev->token >= 0 && !ev->is_stop_token && !sq->stop_matched) {
        const char *text = "";
        size_t n = 0;
        if (tok_decode_stream_feed(&sq->dec, ev->token, &text, &n, NULL) != TDM_OK) {
            n = 0;
        }
        const char *rel;
        size_t nrel;
        if (crd_stop_strings_feed(sq->stops, text, n, &rel, &nrel)) {
            sq->stop_matched = true;
            stop = 1;
        }
        p.text = dup_text(rel, nrel);
        p.len = nrel;
        if (j->want_tokens) {
            p.has_token = true;
            p.token = ev->token;
            p.logprob = ev->logprob;
            p.n_top = ev->n_top;
            for (int i = 0; i < ev->n_top && i < CRD_MAX_TOP_LOGPROBS; i++) {
                p.top_ids[i] = ev->top_ids[i];
                p.top_lp[i] = ev->top_logprobs[i];
            }
        }
    }
    if (ev->finish != CRD_FINISH_NONE) {
        if (!sq->stop_matched) {
            const char *text;
            size_t n;
            if (tok_decode_stream_flush(&sq->dec, &text, &n, NULL) == TDM_OK && n > 0) {
                const char *rel;
                size_t nrel;
                sq->stop_matched = crd_stop_strings_feed(sq->stops, text, n, &rel, &nrel);
                append(&p.text, &p.len, rel, nrel);
            }
            if (!sq->stop_matched) {
                const char *rel;
                size_t nrel;
                crd_stop_strings_flush(sq->stops, &rel, &nrel);
                append(&p.text, &p.len, rel, nrel);
            }
        }
        p.finish =
            sq->stop_matched && ev->finish != CRD_FINISH_ERROR && ev->finish != CRD_FINISH_CANCELED
                ? CRD_FINISH_STOP
                : ev->finish;
        p.stop_string = sq->stop_matched;
        if (sq->stop_matched && crd_stop_strings_matched(sq->stops) != NULL) {
            p.stop_seq = strdup(crd_stop_strings_matched(sq->stops));
        }
        p.status = ev->status;
        if (ev->error != NULL) {
            p.error = strdup(ev->error);
        }
        sq->ended = true;
    }
    bool final = p.finish != CRD_FINISH_NONE;
    if (p.text != NULL || p.has_token || final) {
        push(j, &p);
    }
    if (final) {
        job_unref(j);
    }
    return stop;
}

tdm_status_t srv_job_start(crd_router_t *router, const tok_vocab_t *vocab, srv_metrics_t *metrics,
                           const srv_job_params_t *p, srv_job_t **out, tdm_error_t *err)
{
    *out = NULL;
    srv_job_t *j = calloc(1, sizeof(*j));
    seq_t *seqs = calloc((size_t)p->n, sizeof(*seqs));
    if (j == NULL || seqs == NULL) {
        free(j);
        free(seqs);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a request");
    }
    j->router = router;
    j->metrics = metrics;
    j->t_start = p->t_start;
    j->want_tokens = p->want_tokens;
    j->seqs = seqs;
    j->n_seqs = p->n;
    j->refs = 1;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    for (int i = 0; i < p->n; i++) {
        seqs[i].job = j;
        seqs[i].index = i;
        tok_decode_stream_init(&seqs[i].dec, vocab, p->detok_flags);
        j->n_alloc = i + 1;
        tdm_status_t st =
            crd_stop_strings_create((const char *const *)p->stop, p->n_stop, &seqs[i].stops, err);
        if (st != TDM_OK) {
            job_free(j);
            return st;
        }
    }
    for (int i = 0; i < p->n; i++) {
        crd_request_params_t rp = {.prompt = p->prompt,
                                   .n_prompt = p->n_prompt,
                                   .max_tokens = p->max_tokens,
                                   .sampling = p->sampling,
                                   .stop_ids = p->stop_ids,
                                   .n_stop_ids = p->n_stop_ids,
                                   .logprobs = p->want_tokens,
                                   .top_logprobs = p->top_logprobs,
                                   .spec = p->spec,
                                   .on_event = on_event,
                                   .user = &seqs[i]};
        if (p->sampling.has_seed) {
            rp.sampling.seed = p->sampling.seed + (uint64_t)i; /* n choices must differ */
        }
        pthread_mutex_lock(&j->mu);
        j->refs++;
        pthread_mutex_unlock(&j->mu);
        tdm_status_t st = crd_router_submit(router, &rp, &seqs[i].route, err);
        if (st != TDM_OK) {
            pthread_mutex_lock(&j->mu);
            j->refs--;
            j->n_seqs = i; /* the rest never started */
            pthread_mutex_unlock(&j->mu);
            srv_job_cancel(j);
            srv_job_release(j);
            return st;
        }
        seqs[i].submitted = true;
    }
    *out = j;
    return TDM_OK;
}

int srv_job_take(srv_job_t *j, double timeout_s, srv_piece_t **pieces)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    double whole = floor(timeout_s);
    dl.tv_sec += (time_t)whole;
    dl.tv_nsec += (long)((timeout_s - whole) * 1e9);
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->mu);
    while (j->nq == 0 && j->n_ended < j->n_seqs) {
        if (pthread_cond_timedwait(&j->cv, &j->mu, &dl) == ETIMEDOUT) {
            break;
        }
    }
    int n = j->nq;
    *pieces = j->q;
    j->q = NULL;
    j->nq = j->capq = 0;
    pthread_mutex_unlock(&j->mu);
    return n;
}

void srv_pieces_free(srv_piece_t *pieces, int n)
{
    for (int i = 0; i < n; i++) {
        free(pieces[i].text);
        free(pieces[i].error);
        free(pieces[i].stop_seq);
    }
    free(pieces);
}

bool srv_job_finished(srv_job_t *j)
{
    pthread_mutex_lock(&j->mu);
    bool done = j->n_ended >= j->n_seqs && j->nq == 0;
    pthread_mutex_unlock(&j->mu);
    return done;
}

void srv_job_cancel(srv_job_t *j)
{
    pthread_mutex_lock(&j->mu);
    int n = j->n_seqs;
    pthread_mutex_unlock(&j->mu);
    for (int i = 0; i < n; i++) {
        /* reading `ended` races with the engine thread; a stale false only costs a
         * cancel of a finished id, which the engine ignores */
        if (j->seqs[i].submitted) {
            crd_router_cancel(j->router, &j->seqs[i].route);
        }
    }
}

void srv_job_release(srv_job_t *j)
{
    if (j != NULL) {
        job_unref(j);
    }
}
