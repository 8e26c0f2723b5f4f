/*
 * kern_ops.h - f32 element-wise and row ops of the forward pass (the parts that are not
 * matrix products): RMSNorm, RoPE, softmax, SwiGLU, add, scale.
 *
 * All are portable scalar code today and are the reference for later SIMD / CUDA
 * versions. Rows are row-major with a leading dimension (elements between row starts);
 * in-place use (y == x) is allowed wherever an output and input have the same shape.
 * Accumulations that decide accuracy (sum of squares, softmax sum, rope angles) run in
 * double so these are at least as exact as the HF float32 oracle.
 */
#ifndef KERN_OPS_H
#define KERN_OPS_H

#include "model/hparams.h"

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

/* x[i] *= s. */
void kern_op_scale_f32(float *x, float s, int64_t n);

/* y[i] += s * x[i]. */
void kern_op_axpy_f32(float *y, float s, const float *x, int64_t n);

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
