/*
 * moe_cpu.c - the routed experts on the CPU (kern_be_moe_experts): gated FFNs (SwiGLU or
 * gpt-oss's clamped variant) with optional biases.
 *
 * This rank's experts run in expert order (HF's accumulation order): the tokens routed
 * to each are gathered, the expert runs on just those rows (gate and up as one batched
 * product, SwiGLU, down), and its outputs are added into the tokens' rows with their
 * weights. A single decoded token takes a shortcut with the same arithmetic: all of its
 * local experts as two batched products (every gate/up, then every down), so the thread
 * pool is woken twice rather than twice per expert.
 */
#include "common/check.h"
#include "kernels/cpu/backend_cpu.h"
#include "kernels/kern_ops.h"

#include <string.h>

/* Experts of one decoded token run as one batch up to this many (2 products each). */
#define MOE_BATCH_MAX (KERN_MATMUL_MAX_OPS / 2)

static kern_weight_t expert_view(const kern_weight_t *w0, size_t stride, int e_local)
{
    kern_weight_t w = *w0;
    w.data = (const unsigned char *)w.data + (size_t)e_local * stride;
    return w;
}

/* Expert el's bias vector (NULL when the experts have none). */
static const float *expert_bias(const float *b0, int64_t stride, int el)
{
    return b0 != NULL ? b0 + (int64_t)el * stride : NULL;
}

/* a = act(a + gate bias, b + up bias) over rows of F (ld F). */
static void gated_act(kern_isa_t isa, const kern_moe_t *moe, int el, float *a, float *b,
                      int64_t rows, int64_t F)
{
    const float *gb = expert_bias(moe->gate_b, moe->gate_b_stride, el);
    const float *ub = expert_bias(moe->up_b, moe->up_b_stride, el);
    if (gb != NULL) {
        kern_op_add_bias_f32(a, F, gb, rows, F);
    }
    if (ub != NULL) {
        kern_op_add_bias_f32(b, F, ub, rows, F);
    }
    if (moe->act == KERN_ACT_SWIGLU_OAI) {
        kern_op_swiglu_oai_f32(a, a, b, rows * F, moe->act_alpha, moe->act_limit);
    } else {
        kern_op_silu_mul_f32_isa(isa, a, a, b, rows * F);
    }
}

static tdm_status_t moe_one_token(cpu_backend_t *c, const kern_moe_t *moe, const float *x,
                                  const int32_t *sel, const float *wsel, float *out, int64_t E,
                                  tdm_error_t *err)
{
    const int64_t F = moe->gate.n_rows;
    const kern_isa_t isa = kern_ctx_isa(c->ctx);
    /* this rank's chosen experts in expert order */
    int el_of[MOE_BATCH_MAX];
    float w_of[MOE_BATCH_MAX];
    int n = 0;
    for (int el = 0; el < moe->n_exp; el++) {
        for (int j = 0; j < moe->n_used; j++) {
            if (sel[j] == moe->exp_lo + el) {
                el_of[n] = el;
                w_of[n] = wsel[j];
                n++;
            }
        }
    }
    kern_weight_t wv[3 * MOE_BATCH_MAX];
    kern_matmul_op_t ops[2 * MOE_BATCH_MAX];
    for (int i = 0; i < n; i++) {
        wv[3 * i] = expert_view(&moe->gate, moe->gate_stride, el_of[i]);
        wv[3 * i + 1] = expert_view(&moe->up, moe->up_stride, el_of[i]);
        wv[3 * i + 2] = expert_view(&moe->down, moe->down_stride, el_of[i]);
        ops[2 * i] = (kern_matmul_op_t){&wv[3 * i], x, E, c->ff_a + i * F, F};
        ops[2 * i + 1] = (kern_matmul_op_t){&wv[3 * i + 1], x, E, c->ff_b + i * F, F};
    }
    TDM_CHECK(kern_matmul_batch(c->ctx, 2 * n, ops, 1, err));
    for (int i = 0; i < n; i++) {
        gated_act(isa, moe, el_of[i], c->ff_a + i * F, c->ff_b + i * F, 1, F);
        ops[i] = (kern_matmul_op_t){&wv[3 * i + 2], c->ff_a + i * F, F, c->ey + i * E, E};
    }
    TDM_CHECK(kern_matmul_batch(c->ctx, n, ops, 1, err));
    memset(out, 0, (size_t)E * sizeof(float));
    for (int i = 0; i < n; i++) {
        const float *db = expert_bias(moe->down_b, moe->down_b_stride, el_of[i]);
        if (db != NULL) {
            kern_op_add_bias_f32(c->ey + i * E, E, db, 1, E);
        }
        kern_op_axpy_f32(out, w_of[i], c->ey + i * E, E);
    }
    return TDM_OK;
}

static tdm_status_t moe_general(cpu_backend_t *c, const kern_moe_t *moe, const float *x,
                                int64_t ldx, const int32_t *sel, const float *wsel, float *out,
                                int64_t ldo, int64_t n_tok, tdm_error_t *err)
{
    const int64_t E = moe->n_embd, F = moe->gate.n_rows;
    const int k = moe->n_used;
    for (int64_t t = 0; t < n_tok; t++) {
        memset(out + t * ldo, 0, (size_t)E * sizeof(float));
    }
    for (int el = 0; el < moe->n_exp; el++) {
        const int e = moe->exp_lo + el;
        int64_t cnt = 0;
        for (int64_t t = 0; t < n_tok; t++) {
            for (int j = 0; j < k; j++) {
                if (sel[t * k + j] == e) {
                    c->etok[cnt] = (int32_t)t;
                    c->ew[cnt] = wsel[t * k + j];
                    memcpy(c->ex + cnt * E, x + t * ldx, (size_t)E * sizeof(float));
                    cnt++;
                }
            }
        }
        if (cnt == 0) {
            continue;
        }
        kern_weight_t wg = expert_view(&moe->gate, moe->gate_stride, el);
        kern_weight_t wu = expert_view(&moe->up, moe->up_stride, el);
        kern_weight_t wd = expert_view(&moe->down, moe->down_stride, el);
        const kern_matmul_op_t gu[2] = {{&wg, c->ex, E, c->ff_a, F}, {&wu, c->ex, E, c->ff_b, F}};
        TDM_CHECK(kern_matmul_batch(c->ctx, 2, gu, cnt, err));
        gated_act(kern_ctx_isa(c->ctx), moe, el, c->ff_a, c->ff_b, cnt, F);
        TDM_CHECK(kern_matmul(c->ctx, &wd, c->ff_a, F, cnt, c->ey, E, err));
        const float *db = expert_bias(moe->down_b, moe->down_b_stride, el);
        if (db != NULL) {
            kern_op_add_bias_f32(c->ey, E, db, cnt, E);
        }
        for (int64_t i = 0; i < cnt; i++) {
            kern_op_axpy_f32(out + (int64_t)c->etok[i] * ldo, c->ew[i], c->ey + i * E, E);
        }
    }
    return TDM_OK;
}

void kern_cpu_moe_experts(kern_backend_t *be, const kern_moe_t *moe, const float *x, int64_t ldx,
                          const int32_t *sel, const float *w, float *out, int64_t ldo,
                          int64_t n_tok)
{
    cpu_backend_t *c = cpu_be(be);
    const int64_t E = moe->n_embd;
    tdm_error_t err = {0};
    tdm_status_t st;
    if (n_tok > c->r.n_tok || moe->n_used > c->r.n_expert_used ||
        moe->gate.n_rows > c->r.n_ff_exp || E > c->r.n_embd) {
        kern_be_fail(be, TDM_ERR_INTERNAL,
                     "moe: %lld tokens, top-%d, width %lld x %lld beyond the reserved scratch",
                     (long long)n_tok, moe->n_used, (long long)E, (long long)moe->gate.n_rows);
        return;
    }
    if (moe->n_exp == 0) {
        for (int64_t t = 0; t < n_tok; t++) {
            memset(out + t * ldo, 0, (size_t)E * sizeof(float));
        }
        return;
    }
    if (n_tok == 1 && moe->n_used <= MOE_BATCH_MAX) {
        st = moe_one_token(c, moe, x, sel, w, out, E, &err);
    } else {
        st = moe_general(c, moe, x, ldx, sel, w, out, ldo, n_tok, &err);
    }
    if (st != TDM_OK) {
        kern_be_fail(be, st, "%s", tdm_error_msg(&err));
    }
}
