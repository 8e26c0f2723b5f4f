/*
 * ops_kv.c - the paged KV cache in f16 or q8_0 on the CPU (kern_ops.h): storing a row in
 * the cache's type and one query head's attention over rows of that type.
 *
 * f32 caches keep using kern_op_attn_head_f32 (the SIMD path); these are the typed ones,
 * which convert each key and value row to f32 as they read it and then follow the same
 * steps (scores, softmax with the sum in double, weighted sum of values). The conversions
 * are the reference ones, bit-exact with the CUDA backend's (an f16 row is round-to-
 * nearest-even; a q8_0 row is kern_from_float_q8_0), so both backends hold the same bits.
 */
#include "kernels/cpu/types_cpu.h"
#include "kernels/cpu/vec.h"
#include "kernels/kern_ops.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

void kern_op_kv_row_store(tdm_type_t type, void *dst, const float *src, int head_dim)
{
    switch (type) {
    case TDM_TYPE_F16:
        kern_from_float_f16(src, dst, head_dim);
        break;
    case TDM_TYPE_Q8_0:
        kern_from_float_q8_0(src, dst, head_dim);
        break;
    default:
        memcpy(dst, src, (size_t)head_dim * sizeof(float));
        break;
    }
}

static void row_to_f32(tdm_type_t type, const void *src, float *dst, int hd)
{
    switch (type) {
    case TDM_TYPE_F16:
        kern_to_float_f16(src, dst, hd);
        break;
    case TDM_TYPE_Q8_0:
        kern_to_float_q8_0(src, dst, hd);
        break;
    default:
        memcpy(dst, src, (size_t)hd * sizeof(float));
        break;
    }
}

void kern_op_attn_head_kv(kern_isa_t isa, tdm_type_t type, float *out, const float *q,
                          const void *k, const void *v, const int32_t *blocks, size_t block_bytes,
                          int block_tokens, size_t row_bytes, int head_dim,
                          const kern_attn_span_t *sp, float *scores, float *row)
{
    const kern_vec_ops_t *vo = isa == KERN_ISA_SCALAR ? NULL : kern_vec_ops_get(isa);
    const int B = block_tokens, hd = head_dim;
    float mx = sp->sink;
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        const unsigned char *kr = (const unsigned char *)k + (size_t)blocks[j / B] * block_bytes +
                                  (size_t)(j % B) * row_bytes;
        row_to_f32(type, kr, row, hd);
        scores[j] =
            (vo != NULL ? vo->dot_f32(q, row, (size_t)hd) : kern_dot_f32_ref(q, row, (size_t)hd)) *
            sp->scale;
        mx = scores[j] > mx ? scores[j] : mx;
    }
    double sum = 0.0;
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    sum += expf(sp->sink - mx); /* 0 without a sink */
    const float inv = (float)(1.0 / sum);
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int32_t j = sp->lo; j < sp->hi; j++) {
        const unsigned char *vr = (const unsigned char *)v + (size_t)blocks[j / B] * block_bytes +
                                  (size_t)(j % B) * row_bytes;
        row_to_f32(type, vr, row, hd);
        if (vo != NULL) {
            vo->axpy_f32(out, scores[j] * inv, row, (size_t)hd);
        } else {
            kern_axpy_f32_ref(out, scores[j] * inv, row, (size_t)hd);
        }
    }
}

/* kern_op_attn_tile over a typed cache: key and value rows are converted KERN_ATTN_CONV_ROWS
 * at a time, once for the whole tile, then each row takes the steps of kern_op_attn_head_kv
 * in its order (scores, max, exp with the sum in double, axpy of the values in ascending
 * key order straight into its output). */
void kern_attn_tile_kv(kern_isa_t isa, tdm_type_t type, const kern_attn_row_t *rows, int n_rows,
                       const void *k, const void *v, const int32_t *blocks, size_t block_bytes,
                       int block_tokens, size_t row_bytes, int head_dim, float *scores,
                       size_t ld_scores, float *acc, float *conv)
{
    (void)acc;
    const kern_vec_ops_t *vo = isa == KERN_ISA_SCALAR ? NULL : kern_vec_ops_get(isa);
    const int B = block_tokens, hd = head_dim, CR = KERN_ATTN_CONV_ROWS;
#if defined(__x86_64__)
    const bool f16c =
        type == TDM_TYPE_F16 && hd % 8 == 0 && (isa == KERN_ISA_AVX2 || isa == KERN_ISA_AVX512);
#endif
    int32_t lo = rows[0].sp.lo, hi = rows[0].sp.hi;
    for (int r = 1; r < n_rows; r++) {
        lo = rows[r].sp.lo < lo ? rows[r].sp.lo : lo;
        hi = rows[r].sp.hi > hi ? rows[r].sp.hi : hi;
    }
    for (int pass = 0; pass < 2; pass++) {
        const unsigned char *base = pass == 0 ? k : v;
        if (pass == 1) {
            /* softmax of every row between the two passes */
            for (int r = 0; r < n_rows; r++) {
                const kern_attn_span_t *sp = &rows[r].sp;
                float *sc = scores + (size_t)r * ld_scores;
                float mx = sp->sink;
                for (int32_t j = sp->lo; j < sp->hi; j++) {
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                double sum = 0.0;
                for (int32_t j = sp->lo; j < sp->hi; j++) {
                    sc[j] = expf(sc[j] - mx);
                    sum += sc[j];
                }
                sum += expf(sp->sink - mx); /* 0 without a sink */
                const float inv = (float)(1.0 / sum);
                for (int32_t j = sp->lo; j < sp->hi; j++) {
                    sc[j] *= inv; /* the weight kern_op_attn_head_kv passes to axpy */
                }
                memset(rows[r].out, 0, (size_t)hd * sizeof(float));
            }
        }
        for (int32_t c0 = lo; c0 < hi;) {
            /* keys [c0, c1): within one block, at most CR of them */
            const int32_t b_end = (c0 / B + 1) * B;
            int32_t c1 = c0 + CR;
            c1 = c1 < b_end ? c1 : b_end;
            c1 = c1 < hi ? c1 : hi;
            /* convert only the keys some row sees (a block no row sees may be gone: -1 in
             * a sliding table) */
            int32_t us = c1, ue = c0;
            for (int r = 0; r < n_rows; r++) {
                const int32_t s = rows[r].sp.lo > c0 ? rows[r].sp.lo : c0;
                const int32_t e = rows[r].sp.hi < c1 ? rows[r].sp.hi : c1;
                if (s < e) {
                    us = s < us ? s : us;
                    ue = e > ue ? e : ue;
                }
            }
            if (us >= ue) {
                c0 = c1;
                continue;
            }
            const unsigned char *src =
                base + (size_t)blocks[c0 / B] * block_bytes + (size_t)(c0 % B) * row_bytes;
            for (int32_t j = us; j < ue; j++) {
                const unsigned char *rs = src + (size_t)(j - c0) * row_bytes;
                float *rd = conv + (size_t)(j - c0) * hd;
#if defined(__x86_64__)
                if (f16c) {
                    kern_f16_to_f32_avx2(rs, rd, hd); /* the same bits, eight at a time */
                    continue;
                }
#endif
                row_to_f32(type, rs, rd, hd);
            }
            for (int r = 0; r < n_rows; r++) {
                const kern_attn_span_t *sp = &rows[r].sp;
                const int32_t s = sp->lo > c0 ? sp->lo : c0, e = sp->hi < c1 ? sp->hi : c1;
                float *sc = scores + (size_t)r * ld_scores;
                for (int32_t j = s; j < e; j++) {
                    const float *row = conv + (size_t)(j - c0) * hd;
                    if (pass == 0) {
                        sc[j] = (vo != NULL ? vo->dot_f32(rows[r].q, row, (size_t)hd)
                                            : kern_dot_f32_ref(rows[r].q, row, (size_t)hd)) *
                                sp->scale;
                    } else if (vo != NULL) {
                        vo->axpy_f32(rows[r].out, sc[j], row, (size_t)hd);
                    } else {
                        kern_axpy_f32_ref(rows[r].out, sc[j], row, (size_t)hd);
                    }
                }
            }
            c0 = c1;
        }
    }
}
