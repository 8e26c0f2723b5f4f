/*
 * backend_cpu.h - the CPU backend's state, shared by its files (backend_cpu.c: memory,
 * steps and the plain ops; moe_cpu.c: the routed experts).
 */
#ifndef KERN_CPU_BACKEND_CPU_H
#define KERN_CPU_BACKEND_CPU_H

#include "kernels/kern_backend_impl.h"

typedef struct cpu_backend {
    kern_backend_t base; /* first: a kern_backend_t * is a cpu_backend_t * */
    kern_ctx_t *ctx;
    kern_reserve_t r;
    void *arena; /* everything below, one allocation */
    /* attention: per thread, kern_cpu_attn_rows(n_ctx) rows of n_ctx scores, as many
     * accumulator rows and KERN_ATTN_CONV_ROWS converted rows of a typed cache; the step's
     * tiles (first token of each, then n_tokens) */
    float *att_s;
    float *att_row;
    int32_t *att_tiles;
    /* experts: tokens routed to one expert (indices, weights, gathered rows) and the
     * expert's outputs; ff_a / ff_b hold max(n_tok, n_used) rows of n_ff_exp */
    int32_t *etok;
    float *ew, *ex, *ey, *ff_a, *ff_b;
    /* Gated DeltaNet: the step's runs (first token, length) and per-thread scratch of
     * gdn_scratch_stride floats (ops_gdn.c) */
    int32_t *gdn_run0, *gdn_runlen;
    float *gdn_scratch;
    size_t gdn_scratch_stride;
} cpu_backend_t;

static inline cpu_backend_t *cpu_be(kern_backend_t *be)
{
    return (cpu_backend_t *)be;
}

/* kern_be_moe_experts on the CPU (moe_cpu.c). */
/* Rows of attention scores per thread for contexts of n_ctx positions (backend_cpu.c). */
int kern_cpu_attn_rows(int64_t n_ctx);

/* The keys a query at position pos attends to under p (window), its score scale
 * (temperature) and local head h's sink. */
kern_attn_span_t kern_attn_span_of(const kern_attn_params_t *p, int32_t pos, int h);

/* The Gated DeltaNet ops (ops_gdn.c) and the per-thread floats gdn_rule needs. */
void kern_cpu_gdn_conv(kern_backend_t *be, const kern_gdn_t *g, float *x, int64_t ldx);
void kern_cpu_gdn_rule(kern_backend_t *be, const kern_gdn_t *g, const float *qkv, int64_t ldq,
                       const float *beta, int64_t ldb, const float *alpha, int64_t lda, int grp,
                       float *out);
void kern_cpu_rms_norm_gated(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                             const float *w, const float *z, int64_t ldz, int64_t rows,
                             int64_t cols, float eps);
void kern_cpu_mul_sigmoid(kern_backend_t *be, float *y, int64_t ldy, const float *g, int64_t ldg,
                          int64_t rows, int64_t cols, bool bcast);

void kern_cpu_moe_experts(kern_backend_t *be, const kern_moe_t *moe, const float *x, int64_t ldx,
                          const int32_t *sel, const float *w, float *out, int64_t ldo,
                          int64_t n_tok);

#endif
