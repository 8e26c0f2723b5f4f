/* spec_cost.c - measuring the step cost model at start-up (spec.h). */
#include "coordinator/spec_cost.h"

#include "common/clock.h"

#include <stdlib.h>

tdm_status_t crd_spec_cost_measure(const xp_executor_t *ex, crd_kvm_t *kvm, int32_t n_max,
                                   float *logits, crd_spec_cost_t *c, tdm_error_t *err)
{
    c->n_points = 0;
    c->scale = 1.0;
    if (n_max > ex->n_logits_max) {
        n_max = ex->n_logits_max;
    }
    if (n_max > ex->n_batch_max) {
        n_max = ex->n_batch_max;
    }
    if (n_max < 1) {
        return TDM_OK;
    }
    /* One throw-away sequence of one prompt token: no prefix hit is possible, so the
     * steps write only blocks of its own, and freeing it uncommitted returns them free. */
    const int32_t zero = 0;
    crd_kv_seq_t *seq = NULL;
    int32_t cached = 0;
    tdm_status_t st = crd_kvm_seq_create(kvm, &zero, 1, &seq, &cached, err);
    if (st != TDM_OK) {
        return st;
    }
    int32_t *tok = calloc((size_t)n_max, sizeof(int32_t));
    int32_t *pos = calloc((size_t)n_max, sizeof(int32_t));
    int32_t *sq = calloc((size_t)n_max, sizeof(int32_t));
    uint8_t *want = calloc((size_t)n_max, 1);
    if (tok == NULL || pos == NULL || sq == NULL || want == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the cost model");
        goto out;
    }
    if (crd_kvm_seq_reserve(kvm, seq, n_max) != TDM_OK) {
        goto out; /* no room now: stay unmeasured (no speculation planned) */
    }
    for (int32_t i = 0; i < n_max; i++) {
        pos[i] = i;
        want[i] = 1; /* a verification step wants every position's logits */
        /* distinct tokens: a mixture-of-experts layer routes n copies of one token to the
         * same few experts, so a step of n equal tokens would read a fraction of the
         * weights a real step of n reads, and the curve would price drafts wrongly */
        tok[i] = ex->n_vocab > 1
                     ? (int32_t)((1u + (uint32_t)i * 2654435761u) % (uint32_t)ex->n_vocab)
                     : 0;
    }
    int32_t n_points = 0;
    while (n_points < CRD_SPEC_COST_POINTS && (1 << n_points) <= n_max) {
        n_points++;
    }
    /* three rounds over the small sizes, the fastest of each kept: a burst of load from
     * elsewhere on a shared machine then spoils one sample of several sizes, not a size;
     * the large ones (most of the time) once, the smoothing below catching an outlier */
    for (int rep = 0; rep < 3; rep++) {
        for (int32_t p = 0; p < n_points; p++) {
            const int32_t n = 1 << p;
            if (rep > 0 && n > CRD_SPEC_COST_REPEAT_MAX) {
                continue;
            }
            int32_t nb;
            /* recurrent layers: the sequence's state slot, each run from position 0 (a
             * state cannot skip positions; a run at 0 starts from zero state) */
            const int32_t slot = crd_kvm_seq_state_slot(seq);
            xp_step_seq_t ss = {.blocks = crd_kvm_seq_blocks(seq, &nb),
                                .swa_blocks = crd_kvm_seq_swa_blocks(seq),
                                .state_slot = slot,
                                .state_load = -1,
                                .state_save = -1};
            ss.n_blocks = nb;
            /* positions at the end of the run, as decode tokens sit after their context */
            for (int32_t i = 0; i < n; i++) {
                pos[i] = slot >= 0 ? i : n_max - n + i;
            }
            const xp_step_t step = {.n_tokens = n,
                                    .token = tok,
                                    .pos = pos,
                                    .seq = sq,
                                    .want_logits = want,
                                    .n_logits = n,
                                    .n_seqs = 1,
                                    .seqs = &ss};
            const double t0 = tdm_now_s();
            st = ex->ops->step(ex->impl, &step, logits, err);
            if (st != TDM_OK) {
                goto out;
            }
            const double dt = tdm_now_s() - t0;
            c->t[p] = rep == 0 || dt < c->t[p] ? dt : c->t[p];
        }
    }
    for (int32_t p = 1; p < n_points; p++) {
        /* a bigger step is never cheaper, and a point above the chord of its neighbours
         * is noise (the cost per token does not jump up and back down) */
        if (c->t[p] < c->t[p - 1]) {
            c->t[p] = c->t[p - 1];
        }
        if (p + 1 < n_points) {
            const double x0 = (double)(1 << (p - 1)), x = (double)(1 << p),
                         x1 = (double)(1 << (p + 1));
            const double chord = c->t[p - 1] + (c->t[p + 1] - c->t[p - 1]) * (x - x0) / (x1 - x0);
            if (c->t[p] > chord && chord >= c->t[p - 1]) {
                c->t[p] = chord;
            }
        }
    }
    c->n_points = n_points;
out:
    crd_kvm_seq_free(kvm, seq);
    free(tok);
    free(pos);
    free(sq);
    free(want);
    return st;
}
