/* spec.c - drafters, acceptance estimates, the step cost model and the planner (spec.h). */
#include "coordinator/spec.h"

#include "coordinator/draft_model.h"
#include "coordinator/ngram.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ACCEPT_PRIOR 0.5f  /* a new sequence's acceptance estimate            */
#define ACCEPT_EMA   0.3f  /* weight of the latest verification               */
#define ACCEPT_FLOOR 0.02f /* an estimate never reaches 0: it can come back   */
#define PRIOR_EMA    0.05f /* a drafter's running acceptance: over many sequences */

const char *crd_spec_mode_name(crd_spec_mode_t m)
{
    switch (m) {
    case CRD_SPEC_OFF:
        return "off";
    case CRD_SPEC_NGRAM:
        return "ngram";
    case CRD_SPEC_DRAFT:
        return "draft";
    case CRD_SPEC_MTP:
        return "mtp";
    default:
        return "default";
    }
}

tdm_status_t crd_spec_mode_parse(const char *s, crd_spec_mode_t *out, tdm_error_t *err)
{
    if (strcmp(s, "off") == 0) {
        *out = CRD_SPEC_OFF;
    } else if (strcmp(s, "ngram") == 0) {
        *out = CRD_SPEC_NGRAM;
    } else if (strcmp(s, "draft") == 0) {
        *out = CRD_SPEC_DRAFT;
    } else if (strcmp(s, "mtp") == 0) {
        *out = CRD_SPEC_MTP;
    } else {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "unknown speculative mode '%s' (use 'ngram', 'draft', 'mtp' or 'off')",
                             s);
    }
    return TDM_OK;
}

/* ---- the prompt-lookup drafter ---- */

static tdm_status_t ngram_update(void *impl, const int32_t *tokens, int32_t n)
{
    return crd_ngram_update(impl, tokens, n);
}

/* A single repeated token says little about what follows it: at least two must match. */
#define NGRAM_MIN 2

static int32_t ngram_propose(void *impl, const int32_t *tokens, int32_t n, int32_t max,
                             int32_t *out)
{
    return crd_ngram_propose(impl, tokens, n, NGRAM_MIN, max, out);
}

static void ngram_destroy(void *impl)
{
    crd_ngram_destroy(impl);
}

static const crd_drafter_ops_t ngram_ops = {
    .mode = CRD_SPEC_NGRAM,
    .update = ngram_update,
    .propose = ngram_propose,
    .destroy = ngram_destroy,
};

/* ---- the draft-model drafter ---- */

static void draft_destroy(void *impl)
{
    crd_draft_seq_destroy(impl);
}

/* All q[i] draft with the same model (one per scheduler). */
static tdm_status_t draft_fill(crd_spec_seq_t *const *q, const int32_t *const *tokens,
                               const int32_t *n, int32_t count, tdm_error_t *err)
{
    crd_draft_job_t *jobs = calloc((size_t)(count > 0 ? count : 1), sizeof(*jobs));
    if (jobs == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for drafting");
    }
    for (int32_t i = 0; i < count; i++) {
        jobs[i] = (crd_draft_job_t){.seq = q[i]->impl,
                                    .tokens = tokens[i],
                                    .n_tokens = n[i],
                                    .max = q[i]->n_draft,
                                    .out = q[i]->draft};
    }
    tdm_status_t st = TDM_OK;
    if (count > 0) {
        st = crd_draft_model_propose(crd_draft_seq_model(q[0]->impl), jobs, count, err);
    }
    for (int32_t i = 0; i < count; i++) {
        q[i]->n_draft = jobs[i].n_out;
    }
    free(jobs);
    return st;
}

static const crd_drafter_ops_t draft_ops = {
    .mode = CRD_SPEC_DRAFT,
    .fill = draft_fill,
    .destroy = draft_destroy,
};

tdm_status_t crd_spec_seq_create(crd_spec_mode_t mode, int32_t max_draft,
                                 struct crd_draft_model *draft, crd_spec_seq_t **out,
                                 tdm_error_t *err)
{
    *out = NULL;
    if ((mode != CRD_SPEC_NGRAM && mode != CRD_SPEC_DRAFT) || max_draft <= 0) {
        return TDM_OK;
    }
    if (mode == CRD_SPEC_DRAFT && draft == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "speculative mode 'draft' needs a draft model (serve --draft-model)");
    }
    crd_spec_seq_t *q = calloc(1, sizeof(*q));
    void *impl =
        mode == CRD_SPEC_DRAFT ? (void *)crd_draft_seq_create(draft) : (void *)crd_ngram_create();
    if (q == NULL || impl == NULL) {
        free(q);
        if (mode == CRD_SPEC_DRAFT) {
            crd_draft_seq_destroy(impl);
        } else {
            crd_ngram_destroy(impl);
        }
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a drafter");
    }
    q->ops = mode == CRD_SPEC_DRAFT ? &draft_ops : &ngram_ops;
    q->impl = impl;
    q->max_draft = max_draft < CRD_SPEC_MAX_DRAFT ? max_draft : CRD_SPEC_MAX_DRAFT;
    q->accept = ACCEPT_PRIOR;
    *out = q;
    return TDM_OK;
}

void crd_spec_seq_destroy(crd_spec_seq_t *q)
{
    if (q != NULL) {
        q->ops->destroy(q->impl);
        free(q);
    }
}

void crd_spec_seq_propose(crd_spec_seq_t *q, const int32_t *tokens, int32_t n, int32_t max)
{
    q->n_proposed = 0;
    q->n_draft = 0;
    max = max < q->max_draft ? max : q->max_draft;
    if (max > 0 && q->ops->fill != NULL) {
        /* computed by crd_spec_fill once the planner has said how many pay */
        q->n_proposed = max;
        return;
    }
    if (max <= 0 || q->ops->update(q->impl, tokens, n) != TDM_OK) {
        return;
    }
    q->n_proposed = q->ops->propose(q->impl, tokens, n, max, q->draft);
    if (q->n_proposed > 0 && q->accept < ACCEPT_PRIOR) {
        /* a sequence that stopped drafting gets a slow second chance: its text may have
         * turned repetitive since */
        q->accept += 0.01f;
    }
}

tdm_status_t crd_spec_fill(crd_spec_seq_t *const *q, const int32_t *const *tokens, const int32_t *n,
                           int32_t count, tdm_error_t *err)
{
    if (count <= 0) {
        return TDM_OK;
    }
    tdm_status_t st = q[0]->ops->fill(q, tokens, n, count, err);
    if (st != TDM_OK) {
        for (int32_t i = 0; i < count; i++) {
            q[i]->n_draft = 0;
        }
    }
    for (int32_t i = 0; i < count; i++) {
        q[i]->n_proposed = q[i]->n_draft;
    }
    return st;
}

/* Each draft up to the first rejection was a trial; a run accepted whole had no failure. */
static float trial_rate(int32_t drafted, int32_t accepted)
{
    const int32_t trials = accepted + (accepted < drafted ? 1 : 0);
    return (float)accepted / (float)trials;
}

void crd_spec_seq_observe(crd_spec_seq_t *q, int32_t accepted)
{
    if (q->n_draft <= 0) {
        return;
    }
    const float rate = trial_rate(q->n_draft, accepted);
    q->n_obs++;
    q->accept += ACCEPT_EMA * (rate - q->accept);
    if (q->accept < ACCEPT_FLOOR) {
        q->accept = ACCEPT_FLOOR;
    }
    if (q->accept > 0.98f) {
        q->accept = 0.98f;
    }
}

/* ---- the cost model ---- */

double crd_spec_cost_time(const crd_spec_cost_t *c, int32_t n)
{
    if (c->n_points <= 0) {
        return 1.0; /* unmeasured: flat, i.e. drafts look free; the planner is not used */
    }
    if (n < 1) {
        n = 1;
    }
    const double scale = c->scale > 0.0 ? c->scale : 1.0;
    if (c->n_points == 1) {
        return c->t[0] * (double)n * scale;
    }
    int32_t i = 0; /* t[i] at 2^i, t[i + 1] at 2^(i + 1) */
    while (i + 2 < c->n_points && (1 << (i + 1)) < n) {
        i++;
    }
    const double x0 = (double)(1 << i), x1 = (double)(1 << (i + 1));
    const double slope = (c->t[i + 1] - c->t[i]) / (x1 - x0);
    return (c->t[i] + slope * ((double)n - x0)) * scale;
}

void crd_spec_cost_observe(crd_spec_cost_t *c, int32_t n, double seconds)
{
    if (c->n_points <= 0 || seconds <= 0.0) {
        return;
    }
    const double scale = c->scale > 0.0 ? c->scale : 1.0;
    const double model = crd_spec_cost_time(c, n) / scale;
    double r = seconds / model;
    r = r < 0.25 ? 0.25 : r > 4.0 ? 4.0 : r;
    c->scale = scale + 0.1 * (r - scale);
}

void crd_spec_prior_observe(crd_spec_cost_t *c, crd_spec_mode_t mode, int32_t drafted,
                            int32_t accepted)
{
    if (drafted <= 0 || (unsigned)mode >= (unsigned)CRD_SPEC_N_MODES) {
        return;
    }
    float *a = &c->accept[mode];
    const float prev = *a > 0.0f ? *a : ACCEPT_PRIOR;
    *a = prev + PRIOR_EMA * (trial_rate(drafted, accepted) - prev);
    *a = *a < ACCEPT_FLOOR ? ACCEPT_FLOOR : *a;
}

void crd_spec_seq_start(crd_spec_seq_t *q, const crd_spec_cost_t *c)
{
    const crd_spec_mode_t m = q->ops->mode;
    if ((unsigned)m < (unsigned)CRD_SPEC_N_MODES && c->accept[m] > 0.0f) {
        q->accept = c->accept[m];
    }
}

/* ---- planning ---- */

int32_t crd_spec_plan(const crd_spec_cost_t *c, crd_spec_seq_t *const *q, int32_t n_seqs,
                      int32_t n_base, int32_t n_decode, int32_t room, bool always)
{
    int32_t total = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        q[i]->n_draft = 0;
    }
    if (always) {
        for (int32_t i = 0; i < n_seqs && total < room; i++) {
            int32_t k = q[i]->n_proposed;
            k = k < room - total ? k : room - total;
            q[i]->n_draft = k;
            total += k;
        }
        return total;
    }
    if (n_decode <= 0 || c->n_points <= 0) {
        return 0;
    }
    double tokens = (double)n_decode; /* expected tokens of the step so far */
    int32_t n = n_base;
    int32_t k_model = 0; /* the longest run of drafts a draft model must make */
    double t_n = crd_spec_cost_time(c, n);
    /* the decoding rows' time (their share of the step, then the drafts' extra time): the
     * rate a draft must beat is what those rows yield per second without it; prompt
     * tokens in the step would dilute it (spec.h) */
    double t_dec = crd_spec_cost_time(c, n_decode);
    while (total < room) {
        /* the best next draft: the largest a_i^(k_i + 1) */
        int32_t best = -1;
        double best_gain = 0.0;
        for (int32_t i = 0; i < n_seqs; i++) {
            if (q[i]->n_draft >= q[i]->n_proposed) {
                continue;
            }
            /* optimism buys a look, not a run: the bonus lifts the first draft only, and
             * each further one is worth the plain estimate more (a sequence whose drafts
             * will fail then pays for one rejected token per step while it learns, not
             * for spec_max of them). A look is paid by every decoding stream in the step
             * and informs one, so the bonus is shared among them. */
            const double a = (double)q[i]->accept;
            double a0 = a + 0.4 / sqrt(1.0 + (double)q[i]->n_obs) / (double)n_decode;
            a0 = a0 < 0.95 ? a0 : 0.95;
            const double g = a0 * pow(a < 0.95 ? a : 0.95, (double)q[i]->n_draft);
            if (g > best_gain) {
                best_gain = g;
                best = i;
            }
        }
        if (best < 0) {
            break;
        }
        int32_t k_next = k_model;
        if (q[best]->ops != NULL && q[best]->ops->fill != NULL && q[best]->n_draft + 1 > k_model) {
            k_next = q[best]->n_draft + 1;
        }
        /* a draft model's steps are part of the step's time */
        const double t_next = crd_spec_cost_time(c, n + 1) + c->draft_step * (double)k_next;
        const double dt = t_next - t_n;
        if ((tokens + best_gain) * t_dec <= tokens * (t_dec + dt)) {
            break; /* one more token would lower the decoding rows' tokens per second */
        }
        q[best]->n_draft++;
        k_model = k_next;
        tokens += best_gain;
        n++;
        t_n = t_next;
        t_dec += dt;
        total++;
    }
    return total;
}
