/*
 * spec_cost.h - measures the step cost model (spec.h) on the real executor.
 *
 * Steps of 1, 2, 4, ... n_max distinct tokens (a mixture-of-experts model routes them to
 * different experts, as a real step's) with logits at every position (what a verification
 * step asks for) are timed on a throw-away sequence; the fastest of three runs of each
 * size up to CRD_SPEC_COST_REPEAT_MAX tokens is kept, one run of each larger size (they
 * cost most of the time, and a burst of noise is a smaller share of them). A server with
 * --spec on pays for it while it loads (crd_sched_warm_up), otherwise the first step that
 * drafts does (a second or two on a CPU).
 */
#ifndef CRD_SPEC_COST_H
#define CRD_SPEC_COST_H

#include "coordinator/kv_manager.h"
#include "coordinator/spec.h"
#include "transport/xp_step.h"

/* Sizes up to this many tokens are timed three times, larger ones once. */
#define CRD_SPEC_COST_REPEAT_MAX 32

/* logits: room for n_max rows (the scheduler's buffer). A failed step is returned (the
 * scheduler then treats it as any failed step); no free blocks leaves c unmeasured. */
tdm_status_t crd_spec_cost_measure(const xp_executor_t *ex, crd_kvm_t *kvm, int32_t n_max,
                                   float *logits, crd_spec_cost_t *c, tdm_error_t *err);

#endif
