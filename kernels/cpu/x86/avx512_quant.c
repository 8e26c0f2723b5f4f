/*
 * avx512_quant.c - AVX-512 VNNI kernels for the weight types of the big models we run on
 * the CPU (gpt-oss: Q8_0 and MXFP4; Q4_K_M mixes: Q4_K and Q6_K): vec_dot, decode rows
 * with prefetch, and prefill tiles (1, 2 and 4 rows x up to KERN_DOT_TILE tokens). Compiled
 * with -mavx512f/bw/vl/dq/vnni; called only when kern_isa_supported(KERN_ISA_AVX512).
 * The other types run AVX2's kernels at this level (types_cpu.c).
 *
 * 64 weights per instruction: vpdpbusd (u8 x s8, four products summed into an i32
 * lane) for the 32-element types, where a signed weight x enters as x + off (u8: Q8_0
 * off 128, MXFP4's doubled E2M1 values off 12) and each sum starts at -off times the
 * activations' sum, computed once per token and shared by the rows; for the K-quants
 * vpmaddubsw (u8 x s8 pairs -> i16, at most 2 * 63 * 128, no saturation) and vpdpwssd,
 * which multiplies the pairs by the 16-bit sub-block scales and sums them into i32. All
 * integer sums are exact, so each block's sum is the scalar reference's; only the float
 * accumulation order differs from it (and from AVX2's).
 *
 * Every kernel of a type is one always-inlined body over NR rows x NT tokens with one
 * accumulator per (row, token) and the same instruction sequence for each, so vec_dot,
 * rows, tile and tile2 give a (row, token) the same bits whatever NR and NT.
 */
#include "kernels/cpu/types_cpu.h"

#include <immintrin.h>
#include <string.h>

#define K5_INLINE static inline __attribute__((always_inline))

/* Decode prefetch: 8 KiB ahead into L2. Measured streaming gpt-oss's 615 MB Q8_0 output
 * head from the mapped GGUF on the 2-core Xeon VM (1 thread, CPU time): into L1 4 KiB
 * ahead (AVX2's choice, avx2_quant.c) 11.3 GB/s, into L2 8-64 KiB ahead 11.6-12.0 (8
 * KiB best), 1 KiB ahead 10.8; AVX2's kernel 10.6. */
#ifndef K5_PF_AHEAD
#define K5_PF_AHEAD 8192
#endif
#ifndef K5_PF_HINT
#define K5_PF_HINT _MM_HINT_T1
#endif

K5_INLINE void prefetch_ahead(const void *block, size_t bytes)
{
    const char *p = (const char *)block + K5_PF_AHEAD;
    for (size_t off = 0; off < bytes; off += 64) {
        _mm_prefetch(p + off, K5_PF_HINT);
    }
}

K5_INLINE __m512i load64(const void *p)
{
    return _mm512_loadu_si512(p);
}

K5_INLINE __m256i load32(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* [f16(a) x 8 | f16(b) x 8] as f32 (exact) */
K5_INLINE __m512 pair_f16(uint16_t a, uint16_t b)
{
    return _mm512_cvtph_ps(_mm256_mask_set1_epi16(_mm256_set1_epi16((short)a), 0xFF00, (short)b));
}

/* -off * (sums of 4 consecutive y) per i32 lane: what a weight stored as x + off (u8)
 * adds to dpbusd's sums, subtracted by starting them at this value. */
K5_INLINE __m512i offset_corr(__m512i off, __m512i y)
{
    const __m512i zero = _mm512_setzero_si512();
    return _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, off, y));
}

/* What decode precomputes once per call for the 32-element types: per pair of activation
 * blocks their 64 int8 (contiguous), [dy0 x 8 | dy1 x 8] and the offset correction, the
 * values the bodies compute inline otherwise (so the results are the same). */
typedef struct k5_pre {
    __m512i q, c;
    __m512 dy;
} k5_pre_t;
#define K5_PRE_MAX 256 /* pairs (K <= 16384): 48 KiB of stack */

/* the K-quants precompute nothing */
static inline const k5_pre_t *no_pre(int64_t n, const void *a, int n_rows, k5_pre_t *buf)
{
    (void)n;
    (void)a;
    (void)n_rows;
    (void)buf;
    return NULL;
}

/* The rows of a decode call in groups of `group` (4, 2 or 1): each group one call of the
 * body with a constant NR. */
#define ROWS_DISPATCH(body, n, w, rb, n_rows, group, a, y, pre)                          \
    do {                                                                                 \
        const uint8_t *w_ = (const uint8_t *)(w);                                        \
        int r_ = 0;                                                                      \
        if ((group) >= 4) {                                                              \
            for (; r_ + 4 <= (n_rows); r_ += 4) {                                        \
                body(n, w_ + (size_t)r_ * (rb), rb, a, 0, (y) + r_, 0, 1, 4, 1, 1, pre); \
            }                                                                            \
        }                                                                                \
        if ((group) >= 2) {                                                              \
            for (; r_ + 2 <= (n_rows); r_ += 2) {                                        \
                body(n, w_ + (size_t)r_ * (rb), rb, a, 0, (y) + r_, 0, 1, 2, 1, 1, pre); \
            }                                                                            \
        }                                                                                \
        for (; r_ < (n_rows); r_++) {                                                    \
            body(n, w_ + (size_t)r_ * (rb), rb, a, 0, (y) + r_, 0, 1, 1, 1, 1, pre);     \
        }                                                                                \
    } while (0)

/* NR rows x n_tok tokens, with a constant NT per call */
#define TILE_DISPATCH(body, n, w, rb, a, as, n_tok, y, ys, NR) \
    switch (n_tok) {                                           \
    case 4:                                                    \
        body(n, w, rb, a, as, y, ys, 1, NR, 4, 0, NULL);       \
        break;                                                 \
    case 3:                                                    \
        body(n, w, rb, a, as, y, ys, 1, NR, 3, 0, NULL);       \
        break;                                                 \
    case 2:                                                    \
        body(n, w, rb, a, as, y, ys, 1, NR, 2, 0, NULL);       \
        break;                                                 \
    default:                                                   \
        body(n, w, rb, a, as, y, ys, 1, NR, 1, 0, NULL);       \
        break;                                                 \
    }

/* The entry points of a type whose body is `body`. */
#define K5_ENTRIES(name, body, precompute)                                                        \
    float kern_vec_dot_##name##_avx512(int64_t n, const void *restrict w, const void *restrict a) \
    {                                                                                             \
        float y;                                                                                  \
        body(n, w, 0, a, 0, &y, 0, 1, 1, 1, 0, NULL);                                             \
        return y;                                                                                 \
    }                                                                                             \
    void kern_vec_dot_rows_##name##_avx512(int64_t n, const void *restrict w, size_t row_bytes,   \
                                           int n_rows, int group, const void *restrict a,         \
                                           float *restrict y)                                     \
    {                                                                                             \
        k5_pre_t pre_[K5_PRE_MAX];                                                                \
        const k5_pre_t *pre = precompute(n, a, n_rows, pre_);                                     \
        ROWS_DISPATCH(body, n, w, row_bytes, n_rows, group, a, y, pre);                           \
    }                                                                                             \
    void kern_vec_dot_tile_##name##_avx512(int64_t n, const void *restrict w,                     \
                                           const void *restrict a, size_t a_stride, int n_tok,    \
                                           float *restrict y, int64_t y_stride)                   \
    {                                                                                             \
        TILE_DISPATCH(body, n, w, 0, a, a_stride, n_tok, y, y_stride, 1)                          \
    }                                                                                             \
    void kern_vec_dot_tile2_##name##_avx512(int64_t n, const void *restrict w, size_t row_bytes,  \
                                            const void *restrict a, size_t a_stride, int n_tok,   \
                                            float *restrict y, int64_t y_stride)                  \
    {                                                                                             \
        TILE_DISPATCH(body, n, w, row_bytes, a, a_stride, n_tok, y, y_stride, 2)                  \
    }                                                                                             \
    void kern_vec_dot_tile4_##name##_avx512(int64_t n, const void *restrict w, size_t row_bytes,  \
                                            const void *restrict a, size_t a_stride, int n_tok,   \
                                            float *restrict y, int64_t y_stride)                  \
    {                                                                                             \
        TILE_DISPATCH(body, n, w, row_bytes, a, a_stride, n_tok, y, y_stride, 4)                  \
    }

/* Horizontal sums into y[t * ys + r * yr]. */
#define K5_STORE(acc, y, ys, yr, NR, NT)                                \
    for (int r = 0; r < (NR); r++) {                                    \
        for (int t = 0; t < (NT); t++) {                                \
            (y)[t * (ys) + r * (yr)] = _mm512_reduce_add_ps(acc[r][t]); \
        }                                                               \
    }

/* ---- Q8_0 x Q8_0 and MXFP4 x Q8_0: two 32-element blocks per vector ------------------
 *
 * Per pair of blocks and (row, token): one dpbusd (lanes 0..7 the first block, 8..15 the
 * second), converted and multiply-added with [dx0*dy0 x 8 | dx1*dy1 x 8]. An odd last
 * block runs as a pair with a zero block (zero weights and scale add +0 * 0). */

/* the two blocks' 32 int8 each, or the first and zeros */
K5_INLINE __m512i q8_pair(const kern_block_q8_0 *b, int two)
{
    const __m512i lo = _mm512_castsi256_si512(load32(b[0].qs));
    return two ? _mm512_inserti64x4(lo, load32(b[1].qs), 1)
               : _mm512_inserti64x4(lo, _mm256_setzero_si256(), 1);
}

K5_INLINE __m512 q8_pair_d(const kern_block_q8_0 *b, int two)
{
    return pair_f16(b[0].d, two ? b[1].d : 0);
}

/* The precomputed pairs of a Q8_0 activation row for weights stored with offset off
 * (NULL when one row would not pay for it or K is beyond the buffer). */
K5_INLINE const k5_pre_t *q8_pre(int64_t n, const void *a, int n_rows, k5_pre_t *buf, __m512i off)
{
    const int64_t nb = n / KERN_QK;
    if (n_rows < 2 || (nb + 1) / 2 > K5_PRE_MAX) {
        return NULL;
    }
    const kern_block_q8_0 *y = a;
    for (int64_t i = 0; i < nb; i += 2) {
        const int two = i + 1 < nb;
        k5_pre_t *p = &buf[i / 2];
        p->q = q8_pair(y + i, two);
        p->dy = q8_pair_d(y + i, two);
        p->c = offset_corr(off, p->q);
    }
    return buf;
}

static const k5_pre_t *q8_0_pre(int64_t n, const void *a, int n_rows, k5_pre_t *buf)
{
    return q8_pre(n, a, n_rows, buf, _mm512_set1_epi8((char)0x80));
}

static const k5_pre_t *mxfp4_pre(int64_t n, const void *a, int n_rows, k5_pre_t *buf)
{
    return q8_pre(n, a, n_rows, buf, _mm512_set1_epi8(12));
}

K5_INLINE void q8_0_body(int64_t n, const void *restrict w, size_t rb, const void *restrict a,
                         size_t as, float *restrict y, int64_t ys, int64_t yr, const int NR,
                         const int NT, const int PF, const k5_pre_t *pre)
{
    const int64_t nb = n / KERN_QK;
    const __m512i off = _mm512_set1_epi8((char)0x80);
    __m512 acc[KERN_DOT_ROWS][KERN_DOT_TILE];
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            acc[r][t] = _mm512_setzero_ps();
        }
    }
    for (int64_t i = 0; i < nb; i += 2) {
        const int two = i + 1 < nb;
        __m512i ux[KERN_DOT_ROWS];
        __m512 dx[KERN_DOT_ROWS];
        for (int r = 0; r < NR; r++) {
            const kern_block_q8_0 *xb = (const kern_block_q8_0 *)((const uint8_t *)w + r * rb) + i;
            if (PF) {
                prefetch_ahead(xb, 2 * sizeof(*xb));
            }
            ux[r] = _mm512_xor_si512(q8_pair(xb, two), off); /* x + 128 as u8 */
            dx[r] = q8_pair_d(xb, two);
        }
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_0 *yb = (const kern_block_q8_0 *)((const uint8_t *)a + t * as) + i;
            __m512i yv, c;
            __m512 dy;
            if (PF && pre != NULL) {
                yv = pre[i / 2].q;
                dy = pre[i / 2].dy;
                c = pre[i / 2].c;
            } else {
                yv = q8_pair(yb, two);
                dy = q8_pair_d(yb, two);
                c = offset_corr(off, yv);
            }
            for (int r = 0; r < NR; r++) {
                const __m512i s = _mm512_dpbusd_epi32(c, ux[r], yv);
                acc[r][t] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dx[r], dy), acc[r][t]);
            }
        }
    }
    K5_STORE(acc, y, ys, yr, NR, NT)
}

K5_ENTRIES(q8_0, q8_0_body, q8_0_pre)

/* kern_e8m0_to_fp32_half as bit patterns, for all 256 scale bytes */
#define MX_E(e)                       \
    ((e) < 2 ? 0x00200000u << ((e)&1) \
             : (uint32_t)((e)-1) << 23) /* &1: clang checks the shift of the branch not taken */
#define MX_E4(e)  MX_E(e), MX_E((e) + 1), MX_E((e) + 2), MX_E((e) + 3)
#define MX_E16(e) MX_E4(e), MX_E4((e) + 4), MX_E4((e) + 8), MX_E4((e) + 12)
#define MX_E64(e) MX_E16(e), MX_E16((e) + 16), MX_E16((e) + 32), MX_E16((e) + 48)
static const uint32_t mx_e8m0_half[256] = {MX_E64(0), MX_E64(64), MX_E64(128), MX_E64(192)};
#undef MX_E64
#undef MX_E16
#undef MX_E4
#undef MX_E

/* MXFP4 nibbles of two blocks -> indices [b0 low | b0 high | b1 low | b1 high] (16 each,
 * the element order of the Q8_0 activation blocks). */
K5_INLINE __m512i mx_pair_idx(const kern_block_mxfp4 *b, int two)
{
    /* two broadcast loads, the second into the upper half (no lane shuffles) */
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)b[0].qs));
    v = two ? _mm512_mask_broadcast_i32x4(v, 0xFF00, _mm_loadu_si128((const __m128i *)b[1].qs))
            : _mm512_maskz_mov_epi32(0x00FF, v);
    const __m512i shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    return _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(0x0F));
}

K5_INLINE void mxfp4_body(int64_t n, const void *restrict w, size_t rb, const void *restrict a,
                          size_t as, float *restrict y, int64_t ys, int64_t yr, const int NR,
                          const int NT, const int PF, const k5_pre_t *pre)
{
    const int64_t nb = n / KERN_QK;
    /* value + 12 per code (kern_mxfp4_values: 0..12, then the negatives of 0..12) */
    const __m512i tab = _mm512_broadcast_i32x4(
        _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    const __m512i off = _mm512_set1_epi8(12);
    __m512 acc[KERN_DOT_ROWS][KERN_DOT_TILE];
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            acc[r][t] = _mm512_setzero_ps();
        }
    }
    for (int64_t i = 0; i < nb; i += 2) {
        const int two = i + 1 < nb;
        __m512i ux[KERN_DOT_ROWS];
        __m512 ex[KERN_DOT_ROWS];
        for (int r = 0; r < NR; r++) {
            const kern_block_mxfp4 *xb =
                (const kern_block_mxfp4 *)((const uint8_t *)w + r * rb) + i;
            if (PF && (i & 3) == 0) { /* 68 bytes per four blocks: two lines at most */
                prefetch_ahead(xb, 4 * sizeof(*xb) + 63);
            }
            ux[r] = _mm512_shuffle_epi8(tab, mx_pair_idx(xb, two));
            ex[r] = _mm512_mask_mov_ps(
                _mm512_set1_ps(kern_bits_f32(mx_e8m0_half[xb[0].e])), 0xFF00,
                _mm512_set1_ps(two ? kern_bits_f32(mx_e8m0_half[xb[1].e]) : 0.0f));
        }
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_0 *yb = (const kern_block_q8_0 *)((const uint8_t *)a + t * as) + i;
            __m512i yv, c;
            __m512 dy;
            if (PF && pre != NULL) {
                yv = pre[i / 2].q;
                dy = pre[i / 2].dy;
                c = pre[i / 2].c;
            } else {
                yv = q8_pair(yb, two);
                dy = q8_pair_d(yb, two);
                c = offset_corr(off, yv);
            }
            for (int r = 0; r < NR; r++) {
                const __m512i s = _mm512_dpbusd_epi32(c, ux[r], yv);
                acc[r][t] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(ex[r], dy), acc[r][t]);
            }
        }
    }
    K5_STORE(acc, y, ys, yr, NR, NT)
}

K5_ENTRIES(mxfp4, mxfp4_body, mxfp4_pre)

/* ---- Q4_K and Q6_K x Q8_K: 64 elements per vector --------------------------------- */

/* Q4_K scales and mins of a super-block as 16 x u16: lanes 0..7 the 6-bit scales of the
 * eight 32-element sub-blocks, lanes 8..15 their mins (kern_scale_min_k4, vectorised;
 * the 4 bytes after q[0..11] are read and ignored). */
K5_INLINE __m256i q4k_scales_mins(const uint8_t *q)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)q);
    const __m128i a =
        _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i lo = _mm_or_si128(
        _mm_and_si128(a, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0)),
        _mm_and_si128(_mm_srli_epi16(a, 4),
                      _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15)));
    const __m128i b =
        _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 2), _mm_set1_epi8(0x30));
    return _mm256_cvtepu8_epi16(_mm_or_si128(lo, hi));
}

/* byte shuffle of the eight 16-bit scales (in every 128-bit lane) to [sc_2j x 16 | sc_2j+1
 * x 16] (Q4_K: two 32-element sub-blocks per vector) */
K5_INLINE __m512i sel_q4k(int j)
{
    const short a = (short)((4 * j + 1) << 8 | 4 * j), b = (short)((4 * j + 3) << 8 | (4 * j + 2));
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(a)), _mm256_set1_epi16(b),
                              1);
}

/* [4m x 8 | 4m+1 x 8 | 4m+2 x 8 | 4m+3 x 8] (Q6_K: four 16-element sub-blocks) */
K5_INLINE __m512i sel_q6k(int m)
{
    const __m128i a = _mm_set1_epi16((short)(4 * m)), b = _mm_set1_epi16((short)(4 * m + 1));
    const __m128i c = _mm_set1_epi16((short)(4 * m + 2)), d = _mm_set1_epi16((short)(4 * m + 3));
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(b, a)),
                              _mm256_set_m128i(d, c), 1);
}

K5_INLINE const kern_block_q8_k *q8k_at(const void *a, size_t as, int t, int64_t i)
{
    return (const kern_block_q8_k *)((const uint8_t *)a + t * as) + i;
}

/* Per super-block and (row, token): sum_j sc_j * (q_j . y_j) as i32 lanes (dpwssd of the
 * maddubs pairs with the scales), acc[r][t] += d*yd * sums. The mins term, dmin*yd *
 * (mins . per-32 activation sums), goes for all tokens at once into macc[r]: token t in
 * lanes 4t..4t+3 (the same lanes whatever NT), added to the token's sum at the end. */
K5_INLINE void q4_k_body(int64_t n, const void *restrict w, size_t rb, const void *restrict a,
                         size_t as, float *restrict y, int64_t ys, int64_t yr, const int NR,
                         const int NT, const int PF, const k5_pre_t *pre)
{
    (void)pre;
    const int64_t nb = n / KERN_QKK;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[KERN_DOT_ROWS][KERN_DOT_TILE], macc[KERN_DOT_ROWS];
    for (int r = 0; r < NR; r++) {
        macc[r] = _mm512_setzero_ps();
        for (int t = 0; t < NT; t++) {
            acc[r][t] = _mm512_setzero_ps();
        }
    }
    for (int64_t i = 0; i < nb; i++) {
        /* token t's per-32 activation sums (8 x i16) and d in 128-bit lane t */
        __m512i q8s = _mm512_setzero_si512();
        __m512 yd = _mm512_setzero_ps();
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_k *yb = q8k_at(a, as, t, i);
            const __m256i bs = load32(yb->bsums);
            const __m128i s8 =
                _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            q8s = _mm512_mask_broadcast_i32x4(q8s, (__mmask16)(0xF << (4 * t)), s8);
            yd = _mm512_mask_broadcast_f32x4(yd, (__mmask16)(0xF << (4 * t)), _mm_set1_ps(yb->d));
        }
        for (int r = 0; r < NR; r++) {
            const kern_block_q4_k *xb = (const kern_block_q4_k *)((const uint8_t *)w + r * rb) + i;
            if (PF) {
                prefetch_ahead(xb, sizeof(*xb));
            }
            const __m256i sm = q4k_scales_mins(xb->scales);
            /* the eight 16-bit scales in every 128-bit lane */
            const __m512i sc4 = _mm512_broadcast_i32x4(_mm256_castsi256_si128(sm));
            const __m128 ddx =
                _mm_cvtph_ps(_mm_cvtsi32_si128((int)kern_load_u32((const uint8_t *)xb)));
            const __m512 dyd = _mm512_mul_ps(_mm512_broadcastss_ps(ddx), yd);
            const __m512 dmyd = _mm512_mul_ps(_mm512_broadcastss_ps(_mm_movehdup_ps(ddx)), yd);
            const __m512i pm =
                _mm512_madd_epi16(_mm512_broadcast_i32x4(_mm256_extracti128_si256(sm, 1)), q8s);
            macc[r] = _mm512_fnmadd_ps(dmyd, _mm512_cvtepi32_ps(pm), macc[r]);
            __m512i isum[KERN_DOT_TILE];
            for (int t = 0; t < NT; t++) {
                isum[t] = _mm512_setzero_si512();
            }
            for (int j2 = 0; j2 < 2; j2++) {
                /* 64 bytes = sub-blocks 4j2..4j2+3: low nibbles of the first 32 bytes, high
                 * nibbles of them, then the same of the next 32 */
                const __m512i qv = load64(xb->qs + 64 * j2);
                const __m512i lo = _mm512_and_si512(qv, m4);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(qv, 4), m4);
                for (int jj = 0; jj < 2; jj++) {
                    const int j = 2 * j2 + jj;
                    /* two literal immediates: an unoptimised build does not fold jj */
                    const __m512i q = jj ? _mm512_shuffle_i64x2(lo, hi, 0xEE)
                                         : _mm512_shuffle_i64x2(lo, hi, 0x44);
                    const __m512i sc = _mm512_shuffle_epi8(sc4, sel_q4k(j));
                    for (int t = 0; t < NT; t++) {
                        const __m512i p =
                            _mm512_maddubs_epi16(q, load64(q8k_at(a, as, t, i)->qs + 64 * j));
                        isum[t] = _mm512_dpwssd_epi32(isum[t], p, sc);
                    }
                }
            }
            for (int t = 0; t < NT; t++) {
                const __m512 d = _mm512_permutexvar_ps(_mm512_set1_epi32(4 * t), dyd);
                acc[r][t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum[t]), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < NR; r++) {
        float m[16];
        _mm512_storeu_ps(m, macc[r]);
        for (int t = 0; t < NT; t++) {
            y[t * ys + r * yr] = _mm512_reduce_add_ps(acc[r][t]) +
                                 ((m[4 * t] + m[4 * t + 1]) + (m[4 * t + 2] + m[4 * t + 3]));
        }
    }
}

K5_ENTRIES(q4_k, q4_k_body, no_pre)

/* q - 32 with q in 0..63: the unsigned q dotted, 32 * sum_k sc_k * bsums_k subtracted (the
 * sums start at that term). */
K5_INLINE void q6_k_body(int64_t n, const void *restrict w, size_t rb, const void *restrict a,
                         size_t as, float *restrict y, int64_t ys, int64_t yr, const int NR,
                         const int NT, const int PF, const k5_pre_t *pre)
{
    (void)pre;
    const int64_t nb = n / KERN_QKK;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(3);
    __m512 acc[KERN_DOT_ROWS][KERN_DOT_TILE];
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            acc[r][t] = _mm512_setzero_ps();
        }
    }
    for (int64_t i = 0; i < nb; i++) {
        for (int r = 0; r < NR; r++) {
            const kern_block_q6_k *xb = (const kern_block_q6_k *)((const uint8_t *)w + r * rb) + i;
            if (PF) {
                prefetch_ahead(xb, sizeof(*xb) + 63);
            }
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)xb->scales));
            const __m512i sc512 = _mm512_castsi256_si512(sc16);
            __m512i isum[KERN_DOT_TILE];
            for (int t = 0; t < NT; t++) {
                const __m256i c = _mm256_slli_epi32(
                    _mm256_madd_epi16(load32(q8k_at(a, as, t, i)->bsums), sc16), 5);
                isum[t] = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), c));
            }
            for (int h = 0; h < 2; h++) {
                const __m512i qa = load64(xb->ql + 64 * h);
                const __m256i qh = load32(xb->qh + 32 * h);
                const __m512i qhx =
                    _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                const __m512i v1 = _mm512_or_si512(_mm512_and_si512(qa, m4),
                                                   _mm512_slli_epi16(_mm512_and_si512(qhx, m3), 4));
                const __m512i v2 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(qa, 4), m4),
                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qhx, 4), m3), 4));
                const __m512i s1 = _mm512_permutexvar_epi16(sel_q6k(2 * h), sc512);
                const __m512i s2 = _mm512_permutexvar_epi16(sel_q6k(2 * h + 1), sc512);
                for (int t = 0; t < NT; t++) {
                    const int8_t *q8 = q8k_at(a, as, t, i)->qs + 128 * h;
                    isum[t] =
                        _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(v1, load64(q8)), s1);
                    isum[t] =
                        _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(v2, load64(q8 + 64)), s2);
                }
            }
            const float dx = _cvtsh_ss(xb->d);
            for (int t = 0; t < NT; t++) {
                acc[r][t] = _mm512_fmadd_ps(_mm512_set1_ps(q8k_at(a, as, t, i)->d * dx),
                                            _mm512_cvtepi32_ps(isum[t]), acc[r][t]);
            }
        }
    }
    K5_STORE(acc, y, ys, yr, NR, NT)
}

K5_ENTRIES(q6_k, q6_k_body, no_pre)
