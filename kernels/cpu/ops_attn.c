/*
 * ops_attn.c - one query head's attention over a paged KV cache (kern_ops.h): the scalar
 * reference (the code the forward pass used before SIMD), a portable version built on the
 * per-ISA f32 dot/axpy table, and the dispatch to the AVX2 kernel (x86/avx2_ops.c).
 * Also the dispatch of the SIMD SwiGLU.
 */
#include "kernels/cpu/vec.h"
#include "kernels/kern_ops.h"

#include <math.h>
#include <string.h>

static inline const float *key_row(const float *base, const int32_t *blocks, size_t stride, int B,
                                   int hd, int32_t j)
{
    return base + (size_t)blocks[j / B] * stride + (size_t)(j % B) * (size_t)hd;
}

/* Softmax numerators of scores[lo, hi) in place, max and sum including the sink: the
 * sink joins the max and, last, the double sum. Returns 1 / sum. */
static float softmax_span(float *scores, const kern_attn_span_t *sp)
{
    float mx = sp->sink;
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        mx = scores[j] > mx ? scores[j] : mx;
    }
    double sum = 0.0;
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    sum += expf(sp->sink - mx); /* 0 without a sink: exp(-inf) */
    return (float)(1.0 / sum);
}

void kern_op_attn_head_f32_ref(float *out, const float *q, const float *k, const float *v,
                               const int32_t *blocks, size_t block_stride, int block_tokens,
                               int head_dim, const kern_attn_span_t *sp, float *scores)
{
    const int B = block_tokens, hd = head_dim;
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        const float *kr = key_row(k, blocks, block_stride, B, hd, j);
        float d = 0.0f;
        for (int c = 0; c < hd; c++) {
            d += q[c] * kr[c];
        }
        scores[j] = d * sp->scale;
    }
    const float inv = softmax_span(scores, sp);
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        const float *vr = key_row(v, blocks, block_stride, B, hd, j);
        const float w = scores[j] * inv;
        for (int c = 0; c < hd; c++) {
            out[c] += w * vr[c];
        }
    }
}

/* Any ISA with an f32 dot/axpy table (NEON): the same steps through the table. */
static void attn_head_vec(const kern_vec_ops_t *vo, float *out, const float *q, const float *k,
                          const float *v, const int32_t *blocks, size_t block_stride,
                          int block_tokens, int head_dim, const kern_attn_span_t *sp, float *scores)
{
    const int B = block_tokens, hd = head_dim;
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        scores[j] =
            vo->dot_f32(q, key_row(k, blocks, block_stride, B, hd, j), (size_t)hd) * sp->scale;
    }
    const float inv = softmax_span(scores, sp);
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        vo->axpy_f32(out, scores[j] * inv, key_row(v, blocks, block_stride, B, hd, j), (size_t)hd);
    }
}

void kern_op_attn_head_f32(kern_isa_t isa, float *out, const float *q, const float *k,
                           const float *v, const int32_t *blocks, size_t block_stride,
                           int block_tokens, int head_dim, const kern_attn_span_t *sp,
                           float *scores)
{
#if defined(__x86_64__)
    if ((isa == KERN_ISA_AVX2 || isa == KERN_ISA_AVX512) && head_dim % 8 == 0 &&
        head_dim <= KERN_ATTN_AVX2_MAX_HD) {
        kern_attn_head_f32_avx2(out, q, k, v, blocks, block_stride, block_tokens, head_dim, sp,
                                scores);
        return;
    }
#endif
    const kern_vec_ops_t *vo = isa == KERN_ISA_SCALAR ? NULL : kern_vec_ops_get(isa);
    if (vo == NULL) {
        kern_op_attn_head_f32_ref(out, q, k, v, blocks, block_stride, block_tokens, head_dim, sp,
                                  scores);
        return;
    }
    attn_head_vec(vo, out, q, k, v, blocks, block_stride, block_tokens, head_dim, sp, scores);
}

void kern_op_attn_tile(kern_isa_t isa, tdm_type_t type, const kern_attn_row_t *rows, int n_rows,
                       const void *k, const void *v, const int32_t *blocks, size_t block_bytes,
                       int block_tokens, size_t row_bytes, int head_dim, float *scores,
                       size_t ld_scores, float *acc, float *conv)
{
    for (int r0 = 0; r0 < n_rows; r0 += 32) {
        const int n = n_rows - r0 < 32 ? n_rows - r0 : 32;
        float *sc = scores + (size_t)r0 * ld_scores;
        if (type != TDM_TYPE_F32) {
            kern_attn_tile_kv(isa, type, rows + r0, n, k, v, blocks, block_bytes, block_tokens,
                              row_bytes, head_dim, sc, ld_scores, acc, conv);
            continue;
        }
#if defined(__x86_64__)
        if ((isa == KERN_ISA_AVX2 || isa == KERN_ISA_AVX512) && head_dim % 8 == 0 &&
            head_dim <= KERN_ATTN_AVX2_MAX_HD) {
            kern_attn_tile_f32_avx2(rows + r0, n, k, v, blocks, block_bytes / sizeof(float),
                                    block_tokens, head_dim, sc, ld_scores, acc);
            continue;
        }
#endif
        /* the per-row kernels elsewhere (NEON's table, the scalar oracle, odd head dims) */
        for (int r = r0; r < r0 + n; r++) {
            kern_op_attn_head_f32(isa, rows[r].out, rows[r].q, k, v, blocks,
                                  block_bytes / sizeof(float), block_tokens, head_dim, &rows[r].sp,
                                  sc);
        }
    }
}

void kern_op_silu_mul_f32_isa(kern_isa_t isa, float *out, const float *gate, const float *up,
                              int64_t n)
{
#if defined(__x86_64__)
    if (isa == KERN_ISA_AVX2 || isa == KERN_ISA_AVX512) {
        kern_silu_mul_f32_avx2(out, gate, up, n);
        return;
    }
#endif
    (void)isa;
    kern_op_silu_mul_f32(out, gate, up, n);
}
