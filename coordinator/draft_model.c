/* draft_model.c - greedy drafting with a small model of the same vocabulary (draft_model.h). */
#include "coordinator/draft_model.h"

#include "common/clock.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct crd_draft_model {
    xp_executor_t ex;
    int32_t *free_blocks; /* draft KV blocks no sequence holds */
    int32_t n_free;
    /* one step's arrays: tokens, positions, sequence of each token, which want logits */
    int32_t *tok, *pos, *seq;
    uint8_t *want;
    xp_step_seq_t *seqs; /* [n_batch_max] */
    int32_t *row_job;    /* logits row -> job index [n_logits_max] */
    float *logits;       /* [n_logits_max x n_vocab] */
    /* Bumped when a step fails (or the executor says its KV was lost): a sequence whose
     * epoch differs has no K/V it can trust. */
    uint64_t epoch;
    uint64_t ex_generation;
    double step_s; /* drafting step time, seconds (EMA; 0: none yet) */
};

struct crd_draft_seq {
    crd_draft_model_t *m;
    int32_t *blocks; /* logical block -> draft KV block */
    int32_t n_blocks;
    int32_t *hist; /* hist[0, n_kv): the tokens whose K/V stand at positions 0.. */
    int32_t n_kv, cap;
    uint64_t epoch;
};

tdm_status_t crd_draft_model_create(const xp_executor_t *ex, crd_draft_model_t **out,
                                    tdm_error_t *err)
{
    *out = NULL;
    if (ex->n_swa_blocks > 0 || ex->n_state_slots > 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "a draft model with sliding-window or recurrent layers is not "
                             "supported (use a plain full-attention model)");
    }
    crd_draft_model_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the draft model");
    }
    m->ex = *ex;
    const size_t nb = (size_t)ex->n_batch_max, nl = (size_t)ex->n_logits_max;
    m->free_blocks = malloc((size_t)(ex->n_blocks > 0 ? ex->n_blocks : 1) * sizeof(int32_t));
    m->tok = malloc(nb * sizeof(int32_t));
    m->pos = malloc(nb * sizeof(int32_t));
    m->seq = malloc(nb * sizeof(int32_t));
    m->want = malloc(nb);
    m->seqs = malloc(nb * sizeof(xp_step_seq_t));
    m->row_job = malloc(nl * sizeof(int32_t));
    m->logits = malloc(nl * (size_t)ex->n_vocab * sizeof(float));
    if (m->free_blocks == NULL || m->tok == NULL || m->pos == NULL || m->seq == NULL ||
        m->want == NULL || m->seqs == NULL || m->row_job == NULL || m->logits == NULL) {
        crd_draft_model_destroy(m);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the draft model");
    }
    /* handed out from the end: the lowest ids first */
    for (int32_t i = 0; i < ex->n_blocks; i++) {
        m->free_blocks[i] = ex->n_blocks - 1 - i;
    }
    m->n_free = ex->n_blocks;
    m->ex_generation = ex->ops->generation != NULL ? ex->ops->generation(ex->impl) : 0;
    *out = m;
    return TDM_OK;
}

void crd_draft_model_destroy(crd_draft_model_t *m)
{
    if (m == NULL) {
        return;
    }
    free(m->free_blocks);
    free(m->tok);
    free(m->pos);
    free(m->seq);
    free(m->want);
    free(m->seqs);
    free(m->row_job);
    free(m->logits);
    free(m);
}

int32_t crd_draft_model_n_vocab(const crd_draft_model_t *m)
{
    return m->ex.n_vocab;
}

double crd_draft_model_step_seconds(const crd_draft_model_t *m)
{
    return m->step_s;
}

crd_draft_seq_t *crd_draft_seq_create(crd_draft_model_t *m)
{
    crd_draft_seq_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return NULL;
    }
    q->m = m;
    q->epoch = m->epoch;
    return q;
}

void crd_draft_seq_destroy(crd_draft_seq_t *q)
{
    if (q == NULL) {
        return;
    }
    for (int32_t i = 0; i < q->n_blocks; i++) {
        q->m->free_blocks[q->m->n_free++] = q->blocks[i];
    }
    free(q->blocks);
    free(q->hist);
    free(q);
}

crd_draft_model_t *crd_draft_seq_model(const crd_draft_seq_t *q)
{
    return q->m;
}

/* Grows q's blocks and token record towards n_pos positions; returns how many positions
 * it can hold (fewer when the draft cache or memory runs out). */
static int32_t reserve(crd_draft_seq_t *q, int32_t n_pos)
{
    crd_draft_model_t *m = q->m;
    const int32_t bt = m->ex.block_tokens;
    if (n_pos > m->ex.n_ctx_max) {
        n_pos = m->ex.n_ctx_max;
    }
    const int32_t need = (n_pos + bt - 1) / bt;
    if (need > q->n_blocks) {
        int32_t *nb = realloc(q->blocks, (size_t)need * sizeof(int32_t));
        if (nb == NULL) {
            return q->n_blocks * bt < q->cap ? q->n_blocks * bt : q->cap;
        }
        q->blocks = nb;
        while (q->n_blocks < need && m->n_free > 0) {
            q->blocks[q->n_blocks++] = m->free_blocks[--m->n_free];
        }
    }
    const int32_t held = q->n_blocks * bt;
    if (held > q->cap) {
        int32_t *nh = realloc(q->hist, (size_t)held * sizeof(int32_t));
        if (nh != NULL) {
            q->hist = nh;
            q->cap = held;
        }
    }
    return held < q->cap ? held : q->cap;
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

/* Runs the step held in m's arrays; a failure makes every sequence's K/V untrusted. */
static tdm_status_t run(crd_draft_model_t *m, int32_t n_tok, int32_t n_seqs, int32_t n_rows,
                        tdm_error_t *err)
{
    const xp_step_t st = {.n_tokens = n_tok,
                          .token = m->tok,
                          .pos = m->pos,
                          .seq = m->seq,
                          .want_logits = m->want,
                          .n_logits = n_rows,
                          .n_seqs = n_seqs,
                          .seqs = m->seqs};
    tdm_status_t s = m->ex.ops->step(m->ex.impl, &st, m->logits, err);
    if (s != TDM_OK) {
        m->epoch++;
    }
    return s;
}

static void add_seq(crd_draft_model_t *m, int32_t i, const crd_draft_seq_t *q)
{
    m->seqs[i] = (xp_step_seq_t){.blocks = q->blocks,
                                 .n_blocks = q->n_blocks,
                                 .swa_blocks = NULL,
                                 .state_slot = -1,
                                 .state_load = -1,
                                 .state_save = -1};
}

tdm_status_t crd_draft_model_propose(crd_draft_model_t *m, crd_draft_job_t *jobs, int32_t n_jobs,
                                     tdm_error_t *err)
{
    if (m->ex.ops->generation != NULL) {
        const uint64_t g = m->ex.ops->generation(m->ex.impl);
        if (g != m->ex_generation) {
            m->ex_generation = g;
            m->epoch++;
        }
    }
    /* per job: drafts to make (k) and how far its catch-up prefill got (c) */
    int32_t *k = malloc((size_t)(n_jobs > 0 ? n_jobs : 1) * 2 * sizeof(int32_t));
    if (k == NULL) {
        for (int32_t i = 0; i < n_jobs; i++) {
            jobs[i].n_out = 0;
        }
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for drafting");
    }
    int32_t *c = k + n_jobs;
    int32_t k_max = 0;
    for (int32_t i = 0; i < n_jobs; i++) {
        crd_draft_job_t *j = &jobs[i];
        crd_draft_seq_t *q = j->seq;
        const int32_t n = j->n_tokens;
        j->n_out = 0;
        k[i] = 0;
        c[i] = n;
        if (q->epoch != m->epoch) {
            q->epoch = m->epoch;
            q->n_kv = 0;
        }
        if (j->max <= 0 || n <= 0) {
            continue;
        }
        /* the K/V that still matches; the last token is always run again for its logits */
        int32_t keep = q->n_kv < n - 1 ? q->n_kv : n - 1, p = 0;
        while (p < keep && q->hist[p] == j->tokens[p]) {
            p++;
        }
        q->n_kv = p;
        /* drafts 0..k-2 get written at positions n..n+k-2 */
        const int32_t room = reserve(q, n + j->max - 1) - n + 1;
        if (room <= 0) {
            continue;
        }
        k[i] = j->max < room ? j->max : room;
        memcpy(q->hist + p, j->tokens + p, (size_t)(n - p) * sizeof(int32_t));
        c[i] = p;
        k_max = k[i] > k_max ? k[i] : k_max;
    }
    const int32_t rows_max =
        m->ex.n_logits_max < m->ex.n_batch_max ? m->ex.n_logits_max : m->ex.n_batch_max;
    tdm_status_t st = TDM_OK;
    /* catch-up: every token not yet in the draft cache, the last one with logits (draft 0) */
    for (int32_t first = 0; st == TDM_OK;) {
        int32_t nt = 0, ns = 0, nr = 0;
        for (int32_t i = first; i < n_jobs && nt < m->ex.n_batch_max && nr < rows_max; i++) {
            const int32_t n = jobs[i].n_tokens;
            if (k[i] == 0 || c[i] >= n) {
                if (i == first) {
                    first++;
                }
                continue;
            }
            crd_draft_seq_t *q = jobs[i].seq;
            const int32_t take =
                n - c[i] < m->ex.n_batch_max - nt ? n - c[i] : m->ex.n_batch_max - nt;
            add_seq(m, ns, q);
            for (int32_t t = 0; t < take; t++, nt++) {
                m->tok[nt] = q->hist[c[i] + t];
                m->pos[nt] = c[i] + t;
                m->seq[nt] = ns;
                m->want[nt] = c[i] + t == n - 1;
            }
            ns++;
            c[i] += take;
            if (c[i] == n) {
                m->row_job[nr++] = i;
            }
        }
        if (nt == 0) {
            break;
        }
        st = run(m, nt, ns, nr, err);
        for (int32_t r = 0; st == TDM_OK && r < nr; r++) {
            const int32_t i = m->row_job[r];
            jobs[i].out[0] = argmax(m->logits + (size_t)r * (size_t)m->ex.n_vocab, m->ex.n_vocab);
        }
    }
    /* then one token per sequence and step: draft d - 1 in, draft d out */
    for (int32_t d = 1; st == TDM_OK && d < k_max; d++) {
        for (int32_t first = 0; st == TDM_OK && first < n_jobs;) {
            int32_t nr = 0;
            int32_t i = first;
            for (; i < n_jobs && nr < rows_max; i++) {
                if (k[i] <= d) {
                    continue;
                }
                crd_draft_seq_t *q = jobs[i].seq;
                const int32_t p = jobs[i].n_tokens + d - 1;
                q->hist[p] = jobs[i].out[d - 1];
                add_seq(m, nr, q);
                m->tok[nr] = q->hist[p];
                m->pos[nr] = p;
                m->seq[nr] = nr;
                m->want[nr] = 1;
                m->row_job[nr++] = i;
            }
            first = i;
            if (nr == 0) {
                break;
            }
            const double t0 = tdm_now_s();
            st = run(m, nr, nr, nr, err);
            const double dt = tdm_now_s() - t0;
            m->step_s = m->step_s > 0.0 ? m->step_s + 0.2 * (dt - m->step_s) : dt;
            for (int32_t r = 0; st == TDM_OK && r < nr; r++) {
                const int32_t j = m->row_job[r];
                jobs[j].out[d] =
                    argmax(m->logits + (size_t)r * (size_t)m->ex.n_vocab, m->ex.n_vocab);
            }
        }
    }
    for (int32_t i = 0; i < n_jobs; i++) {
        if (st == TDM_OK && k[i] > 0) {
            jobs[i].n_out = k[i];
            jobs[i].seq->n_kv = jobs[i].n_tokens + k[i] - 1;
        }
    }
    free(k);
    return st;
}
