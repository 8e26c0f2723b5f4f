/*
 * kern_ops.h - f32 element-wise and row ops of the forward pass (the parts that are not
 * matrix products): RMSNorm, RoPE, softmax, SwiGLU, add, scale.
 *
 * The plain functions are portable scalar code and the reference for the SIMD / CUDA
 * versions; the ones taking a kern_isa_t dispatch to SIMD kernels. Rows are row-major with a
 * leading dimension (elements between row starts); in-place use (y == x) is allowed wherever an
 * output and input have the same shape. Accumulations that decide accuracy (sum of squares, softmax
 * sum, rope angles) run in double so these are at least as exact as the HF float32 oracle.
 */
#ifndef KERN_OPS_H
#define KERN_OPS_H

#include "kernels/kern_isa.h"
#include "model/hparams.h"
#include "model/tensor_types.h"

#include <stdbool.h>

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* RoPE supports heads of up to this many rotated dims. */
#define KERN_ROPE_MAX_DIMS 1024

/* y[r, c] = x[r, c] / sqrt(mean_c(x[r, :]^2) + eps) * w[c]  (w == NULL: no weight).
 * Row r of x starts at x + r * ldx, of y at y + r * ldy. */
void kern_op_rms_norm_f32(float *y, int64_t ldy, const float *x, int64_t ldx, const float *w,
                          int64_t rows, int64_t cols, float eps);

/*
 * Rotates, in place, the first p->n_rot dims of each of n_heads heads (head_dim apart)
 * of n_tok tokens (ld apart), token t at position pos[t], in p->type's pairing (NORM:
 * (2i, 2i+1); NEOX: (i, i + n_rot/2)). theta_i = pos * base^(-2i/n_rot) / ff[i] (ff =
 * freq_factors, may be NULL), then linear scaling or ggml's YaRN ramp; cos/sin are
 * multiplied by p->attn_factor (and by 1 + 0.1 ln(1/freq_scale) under YaRN).
 */
void kern_op_rope_f32(float *x, int64_t ld, int64_t n_tok, int n_heads, int head_dim,
                      const int32_t *pos, const mdl_rope_params_t *p, const float *freq_factors);

/* x[0..n) = softmax(x) (max-subtracted; sum in double). n >= 1. */
void kern_op_softmax_f32(float *x, int64_t n);

/* out[i] = silu(gate[i]) * up[i], silu(t) = t / (1 + exp(-t)). */
void kern_op_silu_mul_f32(float *out, const float *gate, const float *up, int64_t n);

/* y[i] = a[i] + b[i]. */
void kern_op_add_f32(float *y, const float *a, const float *b, int64_t n);

/* y[r, c] += bias[c]. */
void kern_op_add_bias_f32(float *y, int64_t ldy, const float *bias, int64_t rows, int64_t cols);

/* ss[r * lds] = sum_c x[r, c]^2 (in double, stored as float). */
void kern_op_sum_sq_f32(float *ss, int64_t lds, const float *x, int64_t ldx, int64_t rows,
                        int64_t cols);

/* y[r, c] = x[r, c] / sqrt(ss[r * lds] / n_total + eps) * w[c] (w == NULL: no weight). */
void kern_op_rms_apply_f32(float *y, int64_t ldy, const float *x, int64_t ldx, const float *ss,
                           int64_t lds, const float *w, int64_t rows, int64_t cols, int64_t n_total,
                           float eps);

/* gpt-oss's clamped SwiGLU: out[i] = g' * sigmoid(alpha * g') * (u' + 1) with
 * g' = min(gate[i], limit), u' = clamp(up[i], -limit, limit). */
void kern_op_swiglu_oai_f32(float *out, const float *gate, const float *up, int64_t n, float alpha,
                            float limit);

/* x[i] *= s. */
void kern_op_scale_f32(float *x, float s, int64_t n);

/* y[i] += s * x[i]. */
void kern_op_axpy_f32(float *y, float s, const float *x, int64_t n);

/* The keys one query head attends to and the extras of its softmax. */
typedef struct kern_attn_span {
    int32_t lo, hi; /* keys at positions [lo, hi) (hi = pos + 1; lo > 0 under a window) */
    float scale;    /* on q . k                                                        */
    float sink;     /* a logit in the denominator with no value; -INFINITY: none        */
} kern_attn_span_t;

/*
 * Attention of one query head over a paged KV cache:
 *   out[0..head_dim) = sum_j w_j V_j,  j in [sp->lo, sp->hi),
 *   w_j = exp(z_j - M) / (sum_i exp(z_i - M) + exp(sink - M)),  z_j = scale * q . K_j,
 *   M = max(max_j z_j, sink),
 * key/value j at k / v + blocks[j / block_tokens] * block_stride
 * + (j % block_tokens) * head_dim (k and v already offset to this KV head within a
 * block). scores: sp->hi floats of scratch (indexed by position). kern_op_attn_head_f32
 * runs the best kernel for isa (AVX2 when head_dim % 8 == 0; the f32 dot/axpy table
 * elsewhere); the _ref version is the scalar oracle (softmax sum in double). Results for
 * one head never depend on what else is in the batch.
 */
void kern_op_attn_head_f32(kern_isa_t isa, float *out, const float *q, const float *k,
                           const float *v, const int32_t *blocks, size_t block_stride,
                           int block_tokens, int head_dim, const kern_attn_span_t *sp,
                           float *scores);
void kern_op_attn_head_f32_ref(float *out, const float *q, const float *k, const float *v,
                               const int32_t *blocks, size_t block_stride, int block_tokens,
                               int head_dim, const kern_attn_span_t *sp, float *scores);

/*
 * The same over a cache whose rows are of `type` (F32, F16 or Q8_0; kernels/cpu/ops_kv.c):
 * k and v point at the layer's block 0 offset to this KV head, a block is block_bytes, a
 * slot row_bytes. row: head_dim floats of scratch for one converted row.
 */
void kern_op_attn_head_kv(kern_isa_t isa, tdm_type_t type, float *out, const float *q,
                          const void *k, const void *v, const int32_t *blocks, size_t block_bytes,
                          int block_tokens, size_t row_bytes, int head_dim,
                          const kern_attn_span_t *sp, float *scores, float *row);

/*
 * Attention of a tile of query rows that share one sequence and one KV head: the q heads
 * of a GQA group, over one or several tokens of a step. Each row's output is bit-identical
 * to what kern_op_attn_head_f32 (F32) or kern_op_attn_head_kv (F16, Q8_0) computes for it
 * alone: the same operations in the same order, so results never depend on the tile. What
 * changes is memory traffic: a key or value block is read from memory once per tile and
 * reused from cache by every row, not read once per row (decode of a GQA model, and every
 * prompt chunk, used to re-read the whole context per query head).
 * k, v, blocks, block_bytes, block_tokens, row_bytes, head_dim: as kern_op_attn_head_kv.
 * scores: n_rows rows of ld_scores floats (>= the largest sp.hi); acc: n_rows * head_dim
 * floats; conv: KERN_ATTN_CONV_ROWS * head_dim floats (typed caches' converted rows).
 */
#define KERN_ATTN_CONV_ROWS 16
typedef struct kern_attn_row {
    const float *q;
    float *out;
    kern_attn_span_t sp;
} kern_attn_row_t;

void kern_op_attn_tile(kern_isa_t isa, tdm_type_t type, const kern_attn_row_t *rows, int n_rows,
                       const void *k, const void *v, const int32_t *blocks, size_t block_bytes,
                       int block_tokens, size_t row_bytes, int head_dim, float *scores,
                       size_t ld_scores, float *acc, float *conv);

/* dst (one cache row of `type`) = src (head_dim floats), converted as the CUDA backend does. */
void kern_op_kv_row_store(tdm_type_t type, void *dst, const float *src, int head_dim);

/* How router logits become expert choices and weights (llama.cpp's build_moe_ffn; the
 * values are GGUF's <arch>.expert_gating_func). */
typedef enum kern_gating {
    KERN_GATING_SOFTMAX = 1,          /* probs = softmax(logits) over every expert   */
    KERN_GATING_SIGMOID = 2,          /* probs = sigmoid(logits), each on its own     */
    KERN_GATING_SOFTMAX_SELECTED = 3, /* top-k of the logits, softmax over those k    */
} kern_gating_t;

/* The widest router the kernels take (mdl_hparams_load refuses wider ones; released MoEs
 * have at most 512 experts). */
#define KERN_ROUTE_MAX_EXPERTS 1024

typedef struct kern_route {
    int n_expert; /* router width (the ld of logits)                                   */
    int k;        /* experts chosen per token                                           */
    kern_gating_t gating;
    /* Added to the probabilities for choosing only (DeepSeek-V3 / MiniMax-M2's
     * e_score_correction_bias, GGUF exp_probs_b); the weights stay unbiased. NULL: none. */
    const float *sel_bias;
    bool norm;   /* weights /= max(their sum, 2^-14)                                   */
    float scale; /* weights *= scale when not 0 or 1 (expert_weights_scale)            */
} kern_route_t;

/* MoE routing of one token (kern_be_moe_route): probs (router logits, turned into the
 * gating's probabilities in place), the k chosen experts (ties to the lower index) and
 * their weights. */
void kern_op_route_token(float *probs, const kern_route_t *r, int32_t *sel, float *w);

/* The gated activation of an FFN's gate g and up u. */
typedef enum kern_act {
    KERN_ACT_SWIGLU = 0, /* silu(g) * u                                               */
    /* gpt-oss: g' = min(g, limit), u' = clamp(u, -limit, limit),
     * g' * sigmoid(alpha * g') * (u' + 1) */
    KERN_ACT_SWIGLU_OAI,
} kern_act_t;

/* kern_op_silu_mul_f32 with the isa's kernel (AVX2: a polynomial exp, ~2 ulp). */
void kern_op_silu_mul_f32_isa(kern_isa_t isa, float *out, const float *gate, const float *up,
                              int64_t n);

/*
 * Top-k of n scores: idx[0..k) in descending score order, ties broken toward the lower
 * index (a stable descending sort: what torch.topk and llama.cpp's argsort give for
 * equal values). k <= n.
 */
void kern_op_topk_f32(const float *x, int n, int k, int32_t *idx);

#ifdef __cplusplus
}
#endif

#endif
