/* mtp.c - greedy drafting with the model's multi-token-prediction block (mtp.h). */
#include "coordinator/mtp.h"

#include "common/check.h"
#include "common/clock.h"
#include "common/log.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Held rows past which a catch-up step runs without waiting for a proposal: a long prompt's
 * rows go through the block chunk by chunk instead of piling up (n_embd floats each). */
#define MTP_CATCHUP 64

struct crd_mtp {
    xp_executor_t ex;
    int32_t E, V;
    int32_t n_tok_max, n_rows_max;
    /* one step's arrays */
    int32_t *tok, *pos, *seq;
    uint8_t *want;
    xp_step_seq_t *seqs; /* [n_tok_max] */
    float *hin;          /* [n_tok_max x E]: each row's hidden state */
    float *hout;         /* [n_rows_max x E]: the output states of the rows with logits */
    float *logits;       /* [n_rows_max x V] */
    int32_t *row_job;    /* [n_rows_max]: logits row -> job */
    double step_s;       /* MTP step time, seconds (EMA; 0: none yet) */
};

struct crd_mtp_seq {
    crd_mtp_t *m;
    const int32_t *blocks;
    int32_t n_blocks;
    int32_t base; /* the first position whose MTP row has not run (or runs again) */
    float *h;     /* held trunk rows of positions [base, base + n_h) */
    int32_t n_h, cap;
    float *chain; /* [E]: the block's output state of this proposal's last row */
};

tdm_status_t crd_mtp_create(const xp_executor_t *ex, crd_mtp_t **out, tdm_error_t *err)
{
    *out = NULL;
    if (!ex->mtp || ex->ops->mtp_step == NULL || ex->n_embd <= 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "the executor does not run the model's MTP block");
    }
    crd_mtp_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the MTP drafter");
    }
    m->ex = *ex;
    m->E = ex->n_embd;
    m->V = ex->n_vocab;
    m->n_tok_max = ex->n_batch_max;
    m->n_rows_max = ex->n_logits_max < ex->n_batch_max ? ex->n_logits_max : ex->n_batch_max;
    const size_t nt = (size_t)m->n_tok_max, nr = (size_t)m->n_rows_max, E = (size_t)m->E;
    m->tok = malloc(nt * sizeof(int32_t));
    m->pos = malloc(nt * sizeof(int32_t));
    m->seq = malloc(nt * sizeof(int32_t));
    m->want = malloc(nt);
    m->seqs = malloc(nt * sizeof(xp_step_seq_t));
    m->hin = malloc(nt * E * sizeof(float));
    m->hout = malloc(nr * E * sizeof(float));
    m->logits = malloc(nr * (size_t)m->V * sizeof(float));
    m->row_job = malloc(nr * sizeof(int32_t));
    if (m->tok == NULL || m->pos == NULL || m->seq == NULL || m->want == NULL || m->seqs == NULL ||
        m->hin == NULL || m->hout == NULL || m->logits == NULL || m->row_job == NULL) {
        crd_mtp_destroy(m);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the MTP drafter");
    }
    *out = m;
    return TDM_OK;
}

void crd_mtp_destroy(crd_mtp_t *m)
{
    if (m == NULL) {
        return;
    }
    free(m->tok);
    free(m->pos);
    free(m->seq);
    free(m->want);
    free(m->seqs);
    free(m->hin);
    free(m->hout);
    free(m->logits);
    free(m->row_job);
    free(m);
}

double crd_mtp_step_seconds(const crd_mtp_t *m)
{
    return m->step_s;
}

static void seq_destroy(void *impl)
{
    crd_mtp_seq_t *q = impl;
    if (q != NULL) {
        free(q->h);
        free(q->chain);
        free(q);
    }
}

void crd_mtp_seq_set_blocks(crd_mtp_seq_t *q, const int32_t *blocks, int32_t n_blocks)
{
    q->blocks = blocks;
    q->n_blocks = n_blocks;
}

/* Forgets the first k held rows (their MTP rows have run). */
static void drop(crd_mtp_seq_t *q, int32_t k)
{
    const size_t E = (size_t)q->m->E;
    memmove(q->h, q->h + (size_t)k * E, (size_t)(q->n_h - k) * E * sizeof(float));
    q->n_h -= k;
    q->base += k;
}

static void add_seq(crd_mtp_t *m, int32_t i, const crd_mtp_seq_t *q)
{
    m->seqs[i] = (xp_step_seq_t){.blocks = q->blocks,
                                 .n_blocks = q->n_blocks,
                                 .swa_blocks = NULL,
                                 .state_slot = -1,
                                 .state_load = -1,
                                 .state_save = -1};
}

/* Runs the MTP step held in m's arrays (n_rows rows want logits). */
static tdm_status_t run(crd_mtp_t *m, int32_t n_tok, int32_t n_seqs, int32_t n_rows,
                        tdm_error_t *err)
{
    const xp_mtp_step_t st = {.step = {.n_tokens = n_tok,
                                       .token = m->tok,
                                       .pos = m->pos,
                                       .seq = m->seq,
                                       .want_logits = m->want,
                                       .n_logits = n_rows,
                                       .n_seqs = n_seqs,
                                       .seqs = m->seqs},
                              .hidden_in = m->hin,
                              .hidden_out = m->hout};
    const double t0 = tdm_now_s();
    const tdm_status_t s = m->ex.ops->mtp_step(m->ex.impl, &st, m->logits, err);
    const double dt = tdm_now_s() - t0;
    if (s == TDM_OK && n_rows > 0) {
        /* proposals' steps only: a prompt's catch-up rows are not a draft's cost */
        m->step_s = m->step_s > 0.0 ? m->step_s + 0.2 * (dt - m->step_s) : dt;
    }
    return s;
}

/* Adds q's MTP row of position p (token x_{p+1}, hidden row h) as token t of the step. */
static void add_row(crd_mtp_t *m, int32_t t, int32_t si, int32_t p, int32_t token, const float *h,
                    bool want)
{
    m->tok[t] = token;
    m->pos[t] = p;
    m->seq[t] = si;
    m->want[t] = want;
    memcpy(m->hin + (size_t)t * (size_t)m->E, h, (size_t)m->E * sizeof(float));
}

/* Runs q's held rows of positions [base, upto) (their next tokens known), no logits. */
static tdm_status_t catch_up(crd_mtp_seq_t *q, const int32_t *tokens, int32_t upto,
                             tdm_error_t *err)
{
    crd_mtp_t *m = q->m;
    while (q->base < upto) {
        const int32_t c = upto - q->base < m->n_tok_max ? upto - q->base : m->n_tok_max;
        add_seq(m, 0, q);
        for (int32_t t = 0; t < c; t++) {
            const int32_t p = q->base + t;
            add_row(m, t, 0, p, tokens[p + 1], q->h + (size_t)t * (size_t)m->E, false);
        }
        TDM_CHECK(run(m, c, 1, 0, err));
        drop(q, c);
    }
    return TDM_OK;
}

void crd_mtp_seq_hidden(crd_mtp_seq_t *q, const int32_t *tokens, int32_t n_tokens, int32_t pos0,
                        int32_t n, const float *rows)
{
    const size_t E = (size_t)q->m->E;
    if (pos0 < q->base || pos0 > q->base + q->n_h) {
        /* recomputed from further back (preemption), or a gap (a prefix hit: the cached
         * blocks hold the MTP K/V their writer ran) */
        q->base = pos0;
        q->n_h = 0;
    } else {
        q->n_h = pos0 - q->base; /* what the step computed again replaces what was held */
    }
    if (n <= 0) {
        return;
    }
    if (q->n_h + n > q->cap) {
        const int32_t cap = q->n_h + n > 2 * q->cap ? q->n_h + n : 2 * q->cap;
        float *h = realloc(q->h, (size_t)cap * E * sizeof(float));
        if (h == NULL) {
            q->base = pos0 + n; /* these rows are lost: drafts only suffer */
            q->n_h = 0;
            return;
        }
        q->h = h;
        q->cap = cap;
    }
    memcpy(q->h + (size_t)q->n_h * E, rows, (size_t)n * E * sizeof(float));
    q->n_h += n;
    /* rows whose next token is known, all but the last (a proposal runs that one) */
    int32_t upto = q->base + q->n_h < n_tokens - 1 ? q->base + q->n_h : n_tokens - 1;
    upto--;
    if (upto - q->base >= MTP_CATCHUP && q->blocks != NULL) {
        tdm_error_t e = {0};
        if (catch_up(q, tokens, upto, &e) != TDM_OK) {
            TDM_WARN("mtp", "MTP catch-up step failed (drafts only suffer): %s", tdm_error_msg(&e));
        }
    }
}

static int32_t argmax(const float *row, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (row[i] > row[best]) {
            best = i;
        }
    }
    return best;
}

/* One sequence's part of a proposal. */
typedef struct job {
    crd_mtp_seq_t *q;
    const int32_t *tokens;
    int32_t n;    /* the sequence's tokens; the trunk has computed n - 1 */
    int32_t k;    /* drafts to make (0: none possible)                      */
    int32_t next; /* the next position whose row the first step runs      */
    int32_t *out;
} job_t;

/* Drafts jobs[i].k tokens for every job: the rows up to p = n - 2 (draft 0), then one row per
 * job and step. On an executor error every job drafts nothing. */
static tdm_status_t propose(crd_mtp_t *m, job_t *jobs, int32_t n_jobs, tdm_error_t *err)
{
    int32_t k_max = 0;
    for (int32_t i = 0; i < n_jobs; i++) {
        job_t *j = &jobs[i];
        crd_mtp_seq_t *q = j->q;
        /* rows held for [base, n - 1) are needed; any past the trunk's are stale */
        if (j->n < 2 || q->blocks == NULL || q->base > j->n - 2 || q->base + q->n_h < j->n - 1) {
            j->k = 0;
        } else {
            q->n_h = j->n - 1 - q->base;
        }
        j->next = q->base;
        k_max = j->k > k_max ? j->k : k_max;
    }
    const size_t E = (size_t)m->E;
    /* the held rows of every job, chunked by the step's size; draft 0 from the last */
    for (int32_t first = 0; first < n_jobs;) {
        int32_t nt = 0, ns = 0, nr = 0;
        for (int32_t i = first; i < n_jobs && nt < m->n_tok_max && nr < m->n_rows_max; i++) {
            job_t *j = &jobs[i];
            if (j->k == 0 || j->next > j->n - 2) {
                if (i == first) {
                    first++;
                }
                continue;
            }
            crd_mtp_seq_t *q = j->q;
            add_seq(m, ns, q);
            while (j->next <= j->n - 2 && nt < m->n_tok_max) {
                const int32_t p = j->next++;
                const bool last = p == j->n - 2;
                add_row(m, nt++, ns, p, j->tokens[p + 1], q->h + (size_t)(p - q->base) * E, last);
                if (last) {
                    m->row_job[nr++] = i;
                }
            }
            ns++;
        }
        if (nt == 0) {
            break;
        }
        TDM_CHECK(run(m, nt, ns, nr, err));
        for (int32_t r = 0; r < nr; r++) {
            job_t *j = &jobs[m->row_job[r]];
            j->out[0] = argmax(m->logits + (size_t)r * (size_t)m->V, m->V);
            memcpy(j->q->chain, m->hout + (size_t)r * E, E * sizeof(float));
        }
    }
    /* their rows have run; the last one stays held for the next proposal */
    for (int32_t i = 0; i < n_jobs; i++) {
        if (jobs[i].k > 0) {
            drop(jobs[i].q, jobs[i].n - 2 - jobs[i].q->base);
        }
    }
    /* then one row per job and step: the block on its own output state and draft */
    for (int32_t d = 1; d < k_max; d++) {
        for (int32_t first = 0; first < n_jobs;) {
            int32_t nr = 0, i = first;
            for (; i < n_jobs && nr < m->n_rows_max && nr < m->n_tok_max; i++) {
                job_t *j = &jobs[i];
                if (j->k <= d) {
                    continue;
                }
                add_seq(m, nr, j->q);
                add_row(m, nr, nr, j->n - 2 + d, j->out[d - 1], j->q->chain, true);
                m->row_job[nr++] = i;
            }
            first = i;
            if (nr == 0) {
                break;
            }
            TDM_CHECK(run(m, nr, nr, nr, err));
            for (int32_t r = 0; r < nr; r++) {
                job_t *j = &jobs[m->row_job[r]];
                j->out[d] = argmax(m->logits + (size_t)r * (size_t)m->V, m->V);
                memcpy(j->q->chain, m->hout + (size_t)r * E, E * sizeof(float));
            }
        }
    }
    return TDM_OK;
}

/* The spec layer's fill: q[i] (all MTP drafters of one scheduler) want q[i]->n_draft. */
static tdm_status_t mtp_fill(crd_spec_seq_t *const *q, const int32_t *const *tokens,
                             const int32_t *n, int32_t count, tdm_error_t *err)
{
    if (count <= 0) {
        return TDM_OK;
    }
    job_t *jobs = calloc((size_t)count, sizeof(*jobs));
    if (jobs == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for drafting");
    }
    for (int32_t i = 0; i < count; i++) {
        jobs[i] = (job_t){.q = q[i]->impl,
                          .tokens = tokens[i],
                          .n = n[i],
                          .k = q[i]->n_draft,
                          .out = q[i]->draft};
    }
    crd_mtp_seq_t *q0 = q[0]->impl;
    const tdm_status_t st = propose(q0->m, jobs, count, err);
    for (int32_t i = 0; i < count; i++) {
        q[i]->n_draft = st == TDM_OK ? jobs[i].k : 0;
    }
    free(jobs);
    return st;
}

static const crd_drafter_ops_t mtp_ops = {
    .mode = CRD_SPEC_MTP,
    .fill = mtp_fill,
    .destroy = seq_destroy,
};

tdm_status_t crd_mtp_spec_seq_create(crd_mtp_t *m, int32_t max_draft, crd_spec_seq_t **out,
                                     tdm_error_t *err)
{
    *out = NULL;
    if (max_draft <= 0) {
        return TDM_OK;
    }
    crd_spec_seq_t *s = calloc(1, sizeof(*s));
    crd_mtp_seq_t *q = calloc(1, sizeof(*q));
    float *chain = malloc((size_t)m->E * sizeof(float));
    if (s == NULL || q == NULL || chain == NULL) {
        free(s);
        free(q);
        free(chain);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a drafter");
    }
    q->m = m;
    q->chain = chain;
    s->ops = &mtp_ops;
    s->impl = q;
    s->max_draft = max_draft < CRD_SPEC_MAX_DRAFT ? max_draft : CRD_SPEC_MAX_DRAFT;
    s->accept = 0.5f; /* spec.c's prior for a new sequence */
    *out = s;
    return TDM_OK;
}
