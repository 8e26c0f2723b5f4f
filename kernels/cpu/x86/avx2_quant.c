/*
 * avx2_quant.c - vec_dot kernels for every weight type, AVX2 + FMA + F16C. Compiled with
 * -mavx2 -mfma -mf16c -mbmi2; called only after run-time detection (kern_isa_supported).
 *
 * Each kernel computes the same per-block (per sub-block) integer sums as the scalar
 * reference in dot_ref.c, with _mm256_maddubs_epi16 (u8 x s8 -> pairs of i16) whose
 * operand ranges here never saturate: the unsigned side is at most 63 against |q8| <= 127
 * (2 * 63 * 127 < 32767), and signed x signed products are formed as |x| * sign(y, x)
 * with |x| <= 128 (2 * 128 * 127 < 32767; activations never hold -128). Only the
 * float accumulation order differs from the reference.
 */
#include "kernels/cpu/types_cpu.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

/* F16C: exact f16 -> f32, branch-free (the portable one in types_cpu.h branches) */
static inline float fp16(uint16_t h)
{
    return _cvtsh_ss(h);
}

static inline float hsum_ps(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    lo = _mm_add_ps(lo, _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline int hsum_epi32(__m256i v)
{
    __m128i lo = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, _MM_SHUFFLE(1, 0, 3, 2)));
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(lo);
}

/* 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..15), then high. */
static inline __m256i unpack_nibbles(const uint8_t *p)
{
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 bits (LE at p) -> 32 bytes, byte j = 0xFF when bit j is set, else 0. */
static inline __m256i expand_bits(const uint8_t *p)
{
    const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                         2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)kern_load_u32(p)), idx);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* sum over pairs of u8 x s8 -> 8 x i32 */
static inline __m256i dot_us8(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* sum over pairs of s8 x s8 -> 8 x i32 (|x| <= 128, y != -128) */
static inline __m256i dot_ss8(__m256i x, __m256i y)
{
    return dot_us8(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x));
}

static inline __m256i load32(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* ---- float weights against f32 activations ------------------------------------- */

float kern_vec_dot_f32_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const float *x = w, *y = a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
    }
    float sum = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += x[i] * y[i];
    }
    return sum;
}

float kern_vec_dot_f16_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const uint16_t *x = w;
    const float *y = a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        const __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i + 8)));
        acc0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(y + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        acc0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(y + i), acc0);
    }
    float sum = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += fp16(x[i]) * y[i];
    }
    return sum;
}

static inline __m256 load_bf16x8(const uint16_t *p)
{
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

float kern_vec_dot_bf16_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const uint16_t *x = w;
    const float *y = a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(load_bf16x8(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(load_bf16x8(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) {
        acc0 = _mm256_fmadd_ps(load_bf16x8(x + i), _mm256_loadu_ps(y + i), acc0);
    }
    float sum = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += kern_bf16_to_fp32(x[i]) * y[i];
    }
    return sum;
}

/* ---- 32-element blocks against Q8_0 / Q8_1 ------------------------------------- */

float kern_vec_dot_q4_0_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q4_0 *x = w;
    const kern_block_q8_0 *y = a;
    const int64_t nb = n / KERN_QK;
    const __m256i eight = _mm256_set1_epi8(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m256i q0 = _mm256_sub_epi8(unpack_nibbles(x[i].qs), eight);
        const __m256i q1 = _mm256_sub_epi8(unpack_nibbles(x[i + 1].qs), eight);
        const __m256i s0 = dot_ss8(q0, load32(y[i].qs));
        const __m256i s1 = dot_ss8(q1, load32(y[i + 1].qs));
        const __m256 d0 = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        const __m256 d1 = _mm256_set1_ps(fp16(x[i + 1].d) * fp16(y[i + 1].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i q0 = _mm256_sub_epi8(unpack_nibbles(x[i].qs), eight);
        const __m256i s0 = dot_ss8(q0, load32(y[i].qs));
        const __m256 d0 = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s0), acc0);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

float kern_vec_dot_q4_1_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    float y;
    kern_vec_dot_rows_q4_1_avx2(n, w, 0, 1, 1, a, &y);
    return y;
}

float kern_vec_dot_q5_0_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_0 *x = w;
    const kern_block_q8_0 *y = a;
    const int64_t nb = n / KERN_QK;
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i q =
            _mm256_or_si256(unpack_nibbles(x[i].qs), _mm256_and_si256(expand_bits(x[i].qh), b4));
        q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        const __m256i s = dot_ss8(q, load32(y[i].qs));
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    return hsum_ps(acc);
}

float kern_vec_dot_q5_1_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_1 *x = w;
    const kern_block_q8_1 *y = a;
    const int64_t nb = n / KERN_QK;
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q =
            _mm256_or_si256(unpack_nibbles(x[i].qs), _mm256_and_si256(expand_bits(x[i].qh), b4));
        const __m256i s = dot_us8(q, load32(y[i].qs));
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
        summs += fp16(x[i].m) * fp16(y[i].s);
    }
    return hsum_ps(acc) + summs;
}

float kern_vec_dot_q8_0_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    float y;
    kern_vec_dot_rows_q8_0_avx2(n, w, 0, 1, 1, a, &y);
    return y;
}

static inline __m256i table16(const int8_t *t)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)t);
    return _mm256_set_m128i(v, v);
}

float kern_vec_dot_iq4_nl_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_iq4_nl *x = w;
    const kern_block_q8_0 *y = a;
    const int64_t nb = n / KERN_QK;
    const __m256i tab = table16(kern_iq4nl_values);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = _mm256_shuffle_epi8(tab, unpack_nibbles(x[i].qs));
        const __m256i s = dot_ss8(q, load32(y[i].qs));
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    return hsum_ps(acc);
}

float kern_vec_dot_mxfp4_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    float y;
    kern_vec_dot_tile_mxfp4_avx2(n, w, a, 0, 1, &y, 1);
    return y;
}

/* ---- 256-element super-blocks against Q8_K ------------------------------------- */

/* 16 x i16: lanes 0..7 = a, lanes 8..15 = b (per-16-element scales of a 32-wide row) */
static inline __m256i scale_pair(int a, int b)
{
    return _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a));
}

/* sum_g sc[g] * bsums[g] over the 16 groups, sc as 16 int8 */
static inline int scaled_bsums(const int16_t *bsums, const int8_t *sc)
{
    const __m256i b = load32(bsums);
    const __m256i s = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
    return hsum_epi32(_mm256_madd_epi16(b, s));
}

float kern_vec_dot_q2_k_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q2_k *x = w;
    const kern_block_q8_k *y = a;
    const int64_t nb = n / KERN_QKK;
    const __m256i m3 = _mm256_set1_epi8(3);
    float sum = 0.0f;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        int8_t mins[16];
        for (int g = 0; g < 16; g++) {
            mins[g] = (int8_t)(x[i].scales[g] >> 4);
        }
        const int summs = scaled_bsums(y[i].bsums, mins);
        __m256i isum = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qv = load32(x[i].qs + 32 * h);
            for (int j = 0; j < 4; j++) {
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * j), m3);
                const __m256i p = _mm256_maddubs_epi16(q, load32(y[i].qs + 128 * h + 32 * j));
                const uint8_t *sc = x[i].scales + 8 * h + 2 * j;
                isum = _mm256_add_epi32(isum,
                                        _mm256_madd_epi16(p, scale_pair(sc[0] & 0xF, sc[1] & 0xF)));
            }
        }
        const float dall = y[i].d * fp16(x[i].d);
        const float dmin = y[i].d * fp16(x[i].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(isum), acc);
        sum -= dmin * (float)summs;
    }
    return hsum_ps(acc) + sum;
}

float kern_vec_dot_q3_k_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q3_k *x = w;
    const kern_block_q8_k *y = a;
    const int64_t nb = n / KERN_QKK;
    const __m256i m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = x[i].scales;
        int8_t sc[16];
        for (int g = 0; g < 16; g++) {
            const int lo = g < 8 ? (b[g] & 0xF) : (b[g - 8] >> 4);
            const int hi = (b[8 + (g % 4)] >> (2 * (g / 4))) & 3;
            sc[g] = (int8_t)((lo | (hi << 4)) - 32);
        }
        /* q = low2 - 4 * !hbit  ==  (low2 | hbit << 2) - 4: dot the unsigned 0..7 form and
         * subtract 4 * sum_g sc[g] * bsums[g] */
        const __m256i hm = load32(x[i].hmask);
        __m256i isum = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qv = load32(x[i].qs + 32 * h);
            for (int j = 0; j < 4; j++) {
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * j), m3);
                const __m256i hb =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + j), m1), 2);
                const __m256i q = _mm256_or_si256(lo, hb);
                const __m256i p = _mm256_maddubs_epi16(q, load32(y[i].qs + 128 * h + 32 * j));
                const int g = 8 * h + 2 * j;
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, scale_pair(sc[g], sc[g + 1])));
            }
        }
        const int corr = 4 * scaled_bsums(y[i].bsums, sc);
        const float d = y[i].d * fp16(x[i].d);
        isum = _mm256_sub_epi32(isum, _mm256_setr_epi32(corr, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    return hsum_ps(acc);
}

float kern_vec_dot_q4_k_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    float y;
    kern_vec_dot_rows_q4_k_avx2(n, w, 0, 1, 1, a, &y);
    return y;
}

float kern_vec_dot_q5_k_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_k *x = w;
    const kern_block_q8_k *y = a;
    const int64_t nb = n / KERN_QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m1 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        uint8_t sc[8], mn[8];
        for (int k = 0; k < 8; k++) {
            kern_scale_min_k4(k, x[i].scales, &sc[k], &mn[k]);
        }
        int summs = 0;
        for (int k = 0; k < 8; k++) {
            summs += mn[k] * (y[i].bsums[2 * k] + y[i].bsums[2 * k + 1]);
        }
        const __m256i qh = load32(x[i].qh);
        __m256i isum = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i qv = load32(x[i].qs + 32 * c);
            const __m256i hlo =
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), m1), 4);
            const __m256i hhi =
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), m1), 4);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(qv, m4), hlo);
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qv, 4), m4), hhi);
            const __m256i plo = _mm256_maddubs_epi16(lo, load32(y[i].qs + 64 * c));
            const __m256i phi = _mm256_maddubs_epi16(hi, load32(y[i].qs + 64 * c + 32));
            isum = _mm256_add_epi32(
                isum, _mm256_add_epi32(_mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c])),
                                       _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1]))));
        }
        const float dall = y[i].d * fp16(x[i].d);
        const float dmin = y[i].d * fp16(x[i].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(isum), acc);
        sum -= dmin * (float)summs;
    }
    return hsum_ps(acc) + sum;
}

float kern_vec_dot_q6_k_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q6_k *x = w;
    const kern_block_q8_k *y = a;
    const int64_t nb = n / KERN_QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        /* decode streams the rows (kern_vec_dot_rows_q6_k_avx2): fetch ahead, as
         * prefetch_ahead below (the prefetch changes no result) */
        for (int off = 0; off < (int)sizeof(x[i]); off += 64) {
            _mm_prefetch((const char *)&x[i] + 4096 + off, _MM_HINT_T0);
        }
        /* q - 32 with q in 0..63: dot the unsigned q, subtract 32 * sum_g sc[g] * bsums[g] */
        __m256i isum = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qa = load32(x[i].ql + 64 * h), qb = load32(x[i].ql + 64 * h + 32);
            const __m256i qh = load32(x[i].qh + 32 * h);
            const int8_t *sc = x[i].scales + 8 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(qa, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            const __m256i q2 = _mm256_or_si256(
                _mm256_and_si256(qb, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            const __m256i q3 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            const __m256i q4 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            const __m256i p1 =
                _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load32(q8)), scale_pair(sc[0], sc[1]));
            const __m256i p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(q2, load32(q8 + 32)),
                                                 scale_pair(sc[2], sc[3]));
            const __m256i p3 = _mm256_madd_epi16(_mm256_maddubs_epi16(q3, load32(q8 + 64)),
                                                 scale_pair(sc[4], sc[5]));
            const __m256i p4 = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, load32(q8 + 96)),
                                                 scale_pair(sc[6], sc[7]));
            isum = _mm256_add_epi32(
                isum, _mm256_add_epi32(_mm256_add_epi32(p1, p2), _mm256_add_epi32(p3, p4)));
        }
        const __m256i corr = _mm256_slli_epi32(
            _mm256_madd_epi16(load32(y[i].bsums),
                              _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales))),
            5);
        isum = _mm256_sub_epi32(isum, corr);
        const float d = y[i].d * fp16(x[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    return hsum_ps(acc);
}

float kern_vec_dot_iq4_xs_avx2(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_iq4_xs *x = w;
    const kern_block_q8_k *y = a;
    const int64_t nb = n / KERN_QKK;
    const __m256i tab = table16(kern_iq4nl_values);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i isum = _mm256_setzero_si256();
        for (int ib = 0; ib < 8; ib++) {
            const int ls = ((x[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) |
                           (((x[i].scales_h >> (2 * ib)) & 3) << 4);
            const __m256i q = _mm256_shuffle_epi8(tab, unpack_nibbles(x[i].qs + 16 * ib));
            const __m256i qy = load32(y[i].qs + 32 * ib);
            const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(qy, q));
            isum =
                _mm256_add_epi32(isum, _mm256_madd_epi16(p, _mm256_set1_epi16((short)(ls - 32))));
        }
        const float d = y[i].d * fp16(x[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    return hsum_ps(acc);
}

/* 16 bytes of packed nibbles broadcast to both lanes, high lane shifted by 4: the low
 * nibbles (elements 0..15) in the low lane, the high ones in the high lane. */
static inline __m256i unpack_nibbles_v(const uint8_t *p, __m256i shift, __m256i m4)
{
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi32(v, shift), m4);
}

/* Q4_K scales and mins of a super-block as 16 x u16: lanes 0..7 the 6-bit scales of the
 * eight 32-element sub-blocks, lanes 8..15 their mins (kern_scale_min_k4, vectorised). */
static inline __m256i q4k_scales_mins(const uint8_t *q)
{
    /* q[0..11] (the 4 bytes after them are read and ignored): sub-blocks j < 4 have
     * scale q[j] & 63 and min q[j+4] & 63; j >= 4 take their low 4 bits from q[j+4]
     * (scale: low nibble, min: high nibble) and their top 2 bits from q[j-4] / q[j]. */
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

/* byte shuffles broadcasting i16 lane 2j (low 32 of a 64-element chunk) / 2j+1 */
static inline __m256i scale_shuffle_k4(int i)
{
    return _mm256_set1_epi16((short)(((2 * i + 1) << 8) | (2 * i)));
}

/* One Q4_K super-block into a row's accumulator: acc += d*yd * sums, then acc -= dmin*yd
 * * (mins . bsums) in lanes 0..3 (lanes 4..7 get -0, which changes nothing), so one
 * vector carries both terms. dd = [d * yd, dmin * yd]. */
static inline __m256 q4k_accumulate(__m256 acc, __m128 dd, __m256i sums, __m128i mins_bsums)
{
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sums), acc);
    const __m128 dm = _mm_permute_ps(dd, 0x55);
    return _mm256_fnmadd_ps(_mm256_set_m128(dm, dm),
                            _mm256_cvtepi32_ps(_mm256_zextsi128_si256(mins_bsums)), acc);
}

/* ---- multi-token tiles (prefill) ------------------------------------------------
 *
 * One weight row against NT <= KERN_DOT_TILE activation rows: each weight block is
 * unpacked once and dotted with the same block of every token, with exactly the integer
 * sums of the single-token kernels above. The bodies are always inlined with a constant
 * NT so the per-token accumulators live in registers. */

#define TILE_INLINE static inline __attribute__((always_inline))

#define TILE_DISPATCH(body, n, w, a, a_stride, n_tok, y, y_stride) \
    switch (n_tok) {                                               \
    case 4:                                                        \
        body(n, w, a, a_stride, y, y_stride, 4);                   \
        break;                                                     \
    case 3:                                                        \
        body(n, w, a, a_stride, y, y_stride, 3);                   \
        break;                                                     \
    case 2:                                                        \
        body(n, w, a, a_stride, y, y_stride, 2);                   \
        break;                                                     \
    default:                                                       \
        body(n, w, a, a_stride, y, y_stride, 1);                   \
        break;                                                     \
    }

TILE_INLINE void tile_q4_1(int64_t n, const void *restrict w, const uint8_t *restrict a, size_t as,
                           float *restrict y, int64_t ys, const int NT)
{
    /* per token exactly the arithmetic of rows_q4_1 (row lane 0/1) */
    const kern_block_q4_1 *x = w;
    const int64_t nb = n / KERN_QK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    const __m256i lane0 = _mm256_setzero_si256();
    __m256 acc[KERN_DOT_TILE], accm[KERN_DOT_TILE];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        accm[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = unpack_nibbles_v(x[i].qs, shift, m4);
        const __m256 xs =
            _mm256_cvtph_ps(_mm_cvtsi32_si128((int)kern_load_u32((const uint8_t *)&x[i])));
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_1 *yb = (const kern_block_q8_1 *)(a + (size_t)t * as) + i;
            const __m256 ysc =
                _mm256_cvtph_ps(_mm_set1_epi32((int)kern_load_u32((const uint8_t *)yb)));
            const __m256 p = _mm256_mul_ps(xs, ysc);
            accm[t] = _mm256_add_ps(accm[t], p);
            const __m256i s = dot_us8(q, load32(yb->qs));
            acc[t] =
                _mm256_fmadd_ps(_mm256_permutevar8x32_ps(p, lane0), _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        float m[8];
        _mm256_storeu_ps(m, accm[t]);
        y[t * ys] = hsum_ps(acc[t]) + m[1];
    }
}

void kern_vec_dot_tile_q4_1_avx2(int64_t n, const void *restrict w, const void *restrict a,
                                 size_t a_stride, int n_tok, float *restrict y, int64_t y_stride){
    TILE_DISPATCH(tile_q4_1, n, w, a, a_stride, n_tok, y, y_stride)}

/* Two Q4_1 rows (rb apart) x NT tokens: per token exactly the arithmetic of rows_q4_1
 * (the scale products of both rows and two tokens share one vector: lanes 2r, 2r+1 of
 * token t at 4 * (t & 1)). */
TILE_INLINE
    void tile2_q4_1(int64_t n, const uint8_t *restrict w, size_t rb, const uint8_t *restrict a,
                    size_t as, float *restrict y, int64_t ys, const int NT)
{
    const kern_block_q4_1 *x0 = (const kern_block_q4_1 *)w;
    const kern_block_q4_1 *x1 = (const kern_block_q4_1 *)(w + rb);
    const int64_t nb = n / KERN_QK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    __m256 acc[2][KERN_DOT_TILE], accm[(KERN_DOT_TILE + 1) / 2];
    for (int t = 0; t < NT; t++) {
        acc[0][t] = _mm256_setzero_ps();
        acc[1][t] = _mm256_setzero_ps();
    }
    for (int t = 0; t < (NT + 1) / 2; t++) {
        accm[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q0 = unpack_nibbles_v(x0[i].qs, shift, m4);
        const __m256i q1 = unpack_nibbles_v(x1[i].qs, shift, m4);
        const int u0 = (int)kern_load_u32((const uint8_t *)&x0[i]);
        const int u1 = (int)kern_load_u32((const uint8_t *)&x1[i]);
        const __m256 xs = _mm256_cvtph_ps(_mm_setr_epi32(u0, u1, u0, u1));
        for (int tp = 0; tp < NT; tp += 2) {
            const kern_block_q8_1 *ya = (const kern_block_q8_1 *)(a + (size_t)tp * as) + i;
            const kern_block_q8_1 *yb =
                tp + 1 < NT ? (const kern_block_q8_1 *)(a + (size_t)(tp + 1) * as) + i : ya;
            const int va = (int)kern_load_u32((const uint8_t *)ya);
            const int vb = (int)kern_load_u32((const uint8_t *)yb);
            const __m256 p = _mm256_mul_ps(xs, _mm256_cvtph_ps(_mm_setr_epi32(va, va, vb, vb)));
            accm[tp / 2] = _mm256_add_ps(accm[tp / 2], p);
            for (int h = 0; h < 2 && tp + h < NT; h++) {
                const kern_block_q8_1 *yt = h == 0 ? ya : yb;
                const __m256i qy = load32(yt->qs);
                const __m256i s0 = dot_us8(q0, qy), s1 = dot_us8(q1, qy);
                const __m256 d0 = _mm256_permutevar8x32_ps(p, _mm256_set1_epi32(4 * h));
                const __m256 d1 = _mm256_permutevar8x32_ps(p, _mm256_set1_epi32(4 * h + 2));
                acc[0][tp + h] = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s0), acc[0][tp + h]);
                acc[1][tp + h] = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(s1), acc[1][tp + h]);
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        float m[8];
        _mm256_storeu_ps(m, accm[t / 2]);
        y[t * ys] = hsum_ps(acc[0][t]) + m[4 * (t & 1) + 1];
        y[t * ys + 1] = hsum_ps(acc[1][t]) + m[4 * (t & 1) + 3];
    }
}

void kern_vec_dot_tile2_q4_1_avx2(int64_t n, const void *restrict w, size_t row_bytes,
                                  const void *restrict a, size_t a_stride, int n_tok,
                                  float *restrict y, int64_t y_stride)
{
    const uint8_t *w8 = w, *a8 = a;
    switch (n_tok) {
    case 4:
        tile2_q4_1(n, w8, row_bytes, a8, a_stride, y, y_stride, 4);
        break;
    case 3:
        tile2_q4_1(n, w8, row_bytes, a8, a_stride, y, y_stride, 3);
        break;
    case 2:
        tile2_q4_1(n, w8, row_bytes, a8, a_stride, y, y_stride, 2);
        break;
    default:
        tile2_q4_1(n, w8, row_bytes, a8, a_stride, y, y_stride, 1);
        break;
    }
}

TILE_INLINE void tile_q8_0(int64_t n, const void *restrict w, const uint8_t *restrict a, size_t as,
                           float *restrict y, int64_t ys, const int NT)
{
    const kern_block_q8_0 *x = w;
    const int64_t nb = n / KERN_QK;
    __m256 acc[KERN_DOT_TILE];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        /* dot_ss8 split: |q| once, sign(y, q) per token */
        const __m256i q = load32(x[i].qs);
        const __m256i aq = _mm256_abs_epi8(q);
        const float dx = fp16(x[i].d);
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_0 *yb = (const kern_block_q8_0 *)(a + (size_t)t * as) + i;
            const __m256i s = dot_us8(aq, _mm256_sign_epi8(load32(yb->qs), q));
            const __m256 d = _mm256_set1_ps(dx * fp16(yb->d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        y[t * ys] = hsum_ps(acc[t]);
    }
}

void kern_vec_dot_tile_q8_0_avx2(int64_t n, const void *restrict w, const void *restrict a,
                                 size_t a_stride, int n_tok, float *restrict y, int64_t y_stride){
    TILE_DISPATCH(tile_q8_0, n, w, a, a_stride, n_tok, y, y_stride)}

TILE_INLINE void tile_q4_k(int64_t n, const void *restrict w, const uint8_t *restrict a, size_t as,
                           float *restrict y, int64_t ys, const int NT)
{
    /* per token exactly the arithmetic of rows_q4_k */
    const kern_block_q4_k *x = w;
    const int64_t nb = n / KERN_QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[KERN_DOT_TILE];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i sm = q4k_scales_mins(x[i].scales);
        const __m128i mins = _mm256_extracti128_si256(sm, 1);
        const __m128i sc128 = _mm256_castsi256_si128(sm);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        const __m128 ddx =
            _mm_cvtph_ps(_mm_cvtsi32_si128((int)kern_load_u32((const uint8_t *)&x[i])));
        __m256i isum[KERN_DOT_TILE];
        for (int t = 0; t < NT; t++) {
            isum[t] = _mm256_setzero_si256();
        }
        for (int j = 0; j < 4; j++) {
            const __m256i sl = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j));
            const __m256i sh = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j + 1));
            const __m256i qv = load32(x[i].qs + 32 * j);
            const __m256i lo = _mm256_and_si256(qv, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
            for (int t = 0; t < NT; t++) {
                const kern_block_q8_k *yb = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
                const __m256i pl =
                    _mm256_madd_epi16(sl, _mm256_maddubs_epi16(lo, load32(yb->qs + 64 * j)));
                const __m256i ph =
                    _mm256_madd_epi16(sh, _mm256_maddubs_epi16(hi, load32(yb->qs + 64 * j + 32)));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(pl, ph));
            }
        }
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_k *yb = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
            const __m256i bs = load32(yb->bsums);
            const __m128i q8s =
                _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128i pm = _mm_madd_epi16(mins, q8s);
            const __m128 dd = _mm_mul_ps(ddx, _mm_set1_ps(yb->d)); /* [d * yd, dmin * yd] */
            acc[t] = q4k_accumulate(acc[t], dd, isum[t], pm);
        }
    }
    for (int t = 0; t < NT; t++) {
        y[t * ys] = hsum_ps(acc[t]);
    }
}

void kern_vec_dot_tile_q4_k_avx2(int64_t n, const void *restrict w, const void *restrict a,
                                 size_t a_stride, int n_tok, float *restrict y, int64_t y_stride){
    TILE_DISPATCH(tile_q4_k, n, w, a, a_stride, n_tok, y, y_stride)}

TILE_INLINE void tile_q6_k(int64_t n, const void *restrict w, const uint8_t *restrict a, size_t as,
                           float *restrict y, int64_t ys, const int NT)
{
    const kern_block_q6_k *x = w;
    const int64_t nb = n / KERN_QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    __m256 acc[KERN_DOT_TILE];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        /* as the single-token kernel: dot the unsigned q, subtract 32 * sc . bsums */
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
        __m256i isum[KERN_DOT_TILE];
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_k *yb = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
            isum[t] =
                _mm256_sub_epi32(_mm256_setzero_si256(),
                                 _mm256_slli_epi32(_mm256_madd_epi16(load32(yb->bsums), sc16), 5));
        }
        for (int h = 0; h < 2; h++) {
            const __m256i qa = load32(x[i].ql + 64 * h), qb = load32(x[i].ql + 64 * h + 32);
            const __m256i qh = load32(x[i].qh + 32 * h);
            const int8_t *sc = x[i].scales + 8 * h;
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(qa, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            const __m256i q2 = _mm256_or_si256(
                _mm256_and_si256(qb, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            const __m256i q3 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            const __m256i q4 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            const __m256i s1 = scale_pair(sc[0], sc[1]), s2 = scale_pair(sc[2], sc[3]);
            const __m256i s3 = scale_pair(sc[4], sc[5]), s4 = scale_pair(sc[6], sc[7]);
            for (int t = 0; t < NT; t++) {
                const kern_block_q8_k *yb = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
                const int8_t *q8 = yb->qs + 128 * h;
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load32(q8)), s1);
                const __m256i p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(q2, load32(q8 + 32)), s2);
                const __m256i p3 = _mm256_madd_epi16(_mm256_maddubs_epi16(q3, load32(q8 + 64)), s3);
                const __m256i p4 = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, load32(q8 + 96)), s4);
                isum[t] = _mm256_add_epi32(
                    isum[t], _mm256_add_epi32(_mm256_add_epi32(p1, p2), _mm256_add_epi32(p3, p4)));
            }
        }
        const float dx = fp16(x[i].d);
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_k *yb = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
            acc[t] =
                _mm256_fmadd_ps(_mm256_set1_ps(yb->d * dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        y[t * ys] = hsum_ps(acc[t]);
    }
}

void kern_vec_dot_tile_q6_k_avx2(int64_t n, const void *restrict w, const void *restrict a,
                                 size_t a_stride, int n_tok, float *restrict y, int64_t y_stride)
{
    TILE_DISPATCH(tile_q6_k, n, w, a, a_stride, n_tok, y, y_stride)
}

/* Decode reads each weight once, front to back. The hardware prefetchers alone leave
 * the kernels ~25% below their in-cache speed on the 2-core AMD EPYC VM we measure on;
 * prefetching KERN_PF_AHEAD bytes ahead of the block being read closes most of that
 * (measured: 2-8 KiB ahead all equal). Prefetches never fault, so running past the end
 * of the weights is harmless. */
#define KERN_PF_AHEAD 4096
/* always_inline: as an ordinary static function GCC finds it free of side effects and
 * deletes the calls before inlining them */
TILE_INLINE void prefetch_ahead(const void *block, size_t bytes)
{
    const char *p = (const char *)block + KERN_PF_AHEAD;
    for (size_t off = 0; off < bytes; off += 64) {
        _mm_prefetch(p + off, _MM_HINT_T0);
    }
}

/* ---- multi-row kernels (decode) ---------------------------------------------------
 *
 * NR <= KERN_DOT_ROWS weight rows (row_bytes apart) against one activation row: the
 * activation block and its scales are loaded once for all rows, and the per-block
 * scale products of the rows are formed in one vector. Each row's arithmetic does not
 * depend on NR (lane-wise products, one accumulator per row), so a row gives the same
 * bits whichever group it is computed in; the single-row vec_dot is the NR = 1 case. */

/* n_rows rows in groups of `group` (the last group may be smaller); each group is one
 * call of the always-inlined body with a constant NR, so the loop over groups keeps the
 * kernel's constants in registers. */
#define ROWS_DISPATCH(body, T, n, w, rb, n_rows, group, a, y)         \
    do {                                                              \
        const uint8_t *w_ = (const uint8_t *)(w);                     \
        const T *a_ = (const T *)(a);                                 \
        int r_ = 0;                                                   \
        if ((group) >= 4) {                                           \
            for (; r_ + 4 <= (n_rows); r_ += 4) {                     \
                body(n, w_ + (size_t)r_ * (rb), rb, a_, (y) + r_, 4); \
            }                                                         \
        }                                                             \
        if ((group) >= 2) {                                           \
            for (; r_ + 2 <= (n_rows); r_ += 2) {                     \
                body(n, w_ + (size_t)r_ * (rb), rb, a_, (y) + r_, 2); \
            }                                                         \
        }                                                             \
        for (; r_ < (n_rows); r_++) {                                 \
            body(n, w_ + (size_t)r_ * (rb), rb, a_, (y) + r_, 1);     \
        }                                                             \
    } while (0)

/* Four f16 pairs (the u32 at each row's block) -> 8 floats [a0 b0 a1 b1 a2 b2 a3 b3]. */
#define GATHER_U32(dst, NR, expr)                                        \
    do {                                                                 \
        dst = _mm_cvtsi32_si128((int)kern_load_u32(expr(0)));            \
        if (NR > 1) {                                                    \
            dst = _mm_insert_epi32(dst, (int)kern_load_u32(expr(1)), 1); \
        }                                                                \
        if (NR > 2) {                                                    \
            dst = _mm_insert_epi32(dst, (int)kern_load_u32(expr(2)), 2); \
        }                                                                \
        if (NR > 3) {                                                    \
            dst = _mm_insert_epi32(dst, (int)kern_load_u32(expr(3)), 3); \
        }                                                                \
    } while (0)

TILE_INLINE void rows_q4_1(int64_t n, const uint8_t *restrict w, size_t rb,
                           const kern_block_q8_1 *restrict y, float *restrict out, const int NR)
{
    const int64_t nb = n / KERN_QK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    const kern_block_q4_1 *x[KERN_DOT_ROWS];
    __m256 acc[KERN_DOT_ROWS];
    for (int r = 0; r < NR; r++) {
        x[r] = (const kern_block_q4_1 *)(w + (size_t)r * rb);
        acc[r] = _mm256_setzero_ps();
    }
    __m256 accm = _mm256_setzero_ps(); /* lane 2r + 1: sum of m_r * s */
    for (int64_t i = 0; i < nb; i++) {
        const __m256i qy = load32(y[i].qs);
        const __m256 ys =
            _mm256_cvtph_ps(_mm_set1_epi32((int)kern_load_u32((const uint8_t *)&y[i])));
        __m128i xs;
#define Q41_AT(r) ((const uint8_t *)&x[r][i])
        GATHER_U32(xs, NR, Q41_AT);
#undef Q41_AT
        const __m256 p = _mm256_mul_ps(_mm256_cvtph_ps(xs), ys); /* [d_r*dy, m_r*s] */
        accm = _mm256_add_ps(accm, p);
        for (int r = 0; r < NR; r++) {
            if ((i & 1) == 0) { /* 40 bytes per two blocks: one line request covers them */
                prefetch_ahead(&x[r][i], 1);
            }
            const __m256i s = dot_us8(unpack_nibbles_v(x[r][i].qs, shift, m4), qy);
            const __m256 d = _mm256_permutevar8x32_ps(p, _mm256_set1_epi32(2 * r));
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
    float m[8];
    _mm256_storeu_ps(m, accm);
    for (int r = 0; r < NR; r++) {
        out[r] = hsum_ps(acc[r]) + m[2 * r + 1];
    }
}

void kern_vec_dot_rows_q4_1_avx2(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                                 int group, const void *restrict a, float *restrict y)
{
    ROWS_DISPATCH(rows_q4_1, kern_block_q8_1, n, w, row_bytes, n_rows, group, a, y);
}

TILE_INLINE void rows_q8_0(int64_t n, const uint8_t *restrict w, size_t rb,
                           const kern_block_q8_0 *restrict y, float *restrict out, const int NR)
{
    const int64_t nb = n / KERN_QK;
    const kern_block_q8_0 *x[KERN_DOT_ROWS];
    __m256 acc[KERN_DOT_ROWS];
    for (int r = 0; r < NR; r++) {
        x[r] = (const kern_block_q8_0 *)(w + (size_t)r * rb);
        acc[r] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i qy = load32(y[i].qs);
        const __m128 yd = _mm_set1_ps(fp16(y[i].d));
        __m128i xs = _mm_cvtsi32_si128(x[0][i].d);
        if (NR > 1) {
            xs = _mm_insert_epi16(xs, x[1][i].d, 1);
        }
        if (NR > 2) {
            xs = _mm_insert_epi16(xs, x[2][i].d, 2);
        }
        if (NR > 3) {
            xs = _mm_insert_epi16(xs, x[3][i].d, 3);
        }
        const __m256 p = _mm256_castps128_ps256(_mm_mul_ps(_mm_cvtph_ps(xs), yd));
        for (int r = 0; r < NR; r++) {
            prefetch_ahead(&x[r][i], 1);
            const __m256i q = load32(x[r][i].qs);
            const __m256i s = dot_us8(_mm256_abs_epi8(q), _mm256_sign_epi8(qy, q));
            const __m256 d = _mm256_permutevar8x32_ps(p, _mm256_set1_epi32(r));
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
    for (int r = 0; r < NR; r++) {
        out[r] = hsum_ps(acc[r]);
    }
}

void kern_vec_dot_rows_q8_0_avx2(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                                 int group, const void *restrict a, float *restrict y)
{
    ROWS_DISPATCH(rows_q8_0, kern_block_q8_0, n, w, row_bytes, n_rows, group, a, y);
}

TILE_INLINE void rows_q4_k(int64_t n, const uint8_t *restrict w, size_t rb,
                           const kern_block_q8_k *restrict y, float *restrict out, const int NR)
{
    const int64_t nb = n / KERN_QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const kern_block_q4_k *x[KERN_DOT_ROWS];
    __m256 acc[KERN_DOT_ROWS];
    for (int r = 0; r < NR; r++) {
        x[r] = (const kern_block_q4_k *)(w + (size_t)r * rb);
        acc[r] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m128 ydv = _mm_set1_ps(y[i].d);
        /* per-32 sums of the activations (pairs of bsums) */
        const __m256i bs = load32(y[i].bsums);
        const __m128i q8s =
            _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        for (int r = 0; r < NR; r++) {
            const kern_block_q4_k *xb = &x[r][i];
            prefetch_ahead(xb, sizeof(*xb));
            const __m256i sm = q4k_scales_mins(xb->scales);
            const __m128i pm = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), q8s);
            /* [d * yd, dmin * yd] */
            const __m128 dd = _mm_mul_ps(
                _mm_cvtph_ps(_mm_cvtsi32_si128((int)kern_load_u32((const uint8_t *)xb))), ydv);
            const __m128i sc128 = _mm256_castsi256_si128(sm);
            const __m256i scales = _mm256_set_m128i(sc128, sc128);
            __m256i sumi = _mm256_setzero_si256();
            for (int j = 0; j < 4; j++) {
                const __m256i sl = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j));
                const __m256i sh = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j + 1));
                const __m256i qv = load32(xb->qs + 32 * j);
                const __m256i lo = _mm256_and_si256(qv, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
                const __m256i pl =
                    _mm256_madd_epi16(sl, _mm256_maddubs_epi16(lo, load32(y[i].qs + 64 * j)));
                const __m256i ph =
                    _mm256_madd_epi16(sh, _mm256_maddubs_epi16(hi, load32(y[i].qs + 64 * j + 32)));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            acc[r] = q4k_accumulate(acc[r], dd, sumi, pm);
        }
    }
    for (int r = 0; r < NR; r++) {
        out[r] = hsum_ps(acc[r]);
    }
}

void kern_vec_dot_rows_q4_k_avx2(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                                 int group, const void *restrict a, float *restrict y)
{
    ROWS_DISPATCH(rows_q4_k, kern_block_q8_k, n, w, row_bytes, n_rows, group, a, y);
}

/* Q6_K decode: the single-row kernel (it prefetches ahead) per row; 210-byte blocks
 * leave no gain in sharing the activation loads between rows. */
void kern_vec_dot_rows_q6_k_avx2(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                                 int group, const void *restrict a, float *restrict y)
{
    (void)group;
    const uint8_t *w8 = w;
    for (int r = 0; r < n_rows; r++) {
        y[r] = kern_vec_dot_q6_k_avx2(n, w8 + (size_t)r * row_bytes, a);
    }
}

/* ---- MXFP4: one body for rows (decode), tile and tile2 (prefill) -----------------
 *
 * A block's 16 packed E2M1 codes become 32 bytes through ggml's doubled value table (low
 * nibbles in the low lane, as Q8_0's first 16 values), once per weight block. Four
 * consecutive blocks of one (row, token) are reduced together: maddubs gives 16 x i16 per
 * block, then madd with ones, packs, madd, packs, madd leave the exact integer sum of
 * each half block in lanes [b0 b1 b2 b3 | b0 b1 b2 b3] (packs only sees sums of at most 8
 * products of |.| <= 24 * 127, below 2^15, so it never saturates), and
 * acc += float(sums) * (ew * dy): one conversion, one scale product and one FMA per four
 * blocks instead of per block. ew is the E8M0 half scale (kern_e8m0_to_fp32_half, from a
 * table), dy the activation's f16 d; ew * dy is the reference's scale product.
 *
 * The integer sums come two ways, with identical results:
 *   - prefill (tokens change every call): signed q (|q| <= 12) against the activations,
 *     maddubs(|q|, sign(y, q));
 *   - decode (one activation row for all the rows of a call): the table shifted by 12
 *     makes the weights unsigned, maddubs(q + 12, y), and 12 * (the half-block sums of y),
 *     computed once per call together with the dy, is subtracted from the group's sums;
 *     no abs or sign per block.
 * A (row, token) result depends only on that row and token: the same per-group integer
 * sums, scale products and FMA sequence whatever NR (rows) and NT (tokens) the body is
 * instantiated with, so vec_dot, rows, tile and tile2 agree bit for bit. Blocks past the
 * last whole group run as one zero-padded group (zero weights and a zero d add 0). */

#define MX_G 4 /* blocks per reduction group */

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

/* What decode precomputes per group of its activation row: [dy0..dy3] and 12 * the
 * half-block sums of y in the lanes of the group's sums. */
typedef struct mx_pre {
    _Alignas(16) float dy[MX_G]; /* read as one __m128 */
    int32_t c12[8];
} mx_pre_t;

/* The half scales of four blocks, [ew0 ew1 ew2 ew3 | ew0 ew1 ew2 ew3]. */
TILE_INLINE __m256 mx_ew4(const kern_block_mxfp4 *x)
{
    const __m128 v =
        _mm_castsi128_ps(_mm_setr_epi32((int)mx_e8m0_half[x[0].e], (int)mx_e8m0_half[x[1].e],
                                        (int)mx_e8m0_half[x[2].e], (int)mx_e8m0_half[x[3].e]));
    return _mm256_set_m128(v, v);
}

/* The activation scales of four blocks, [dy0 dy1 dy2 dy3 | dy0 dy1 dy2 dy3] (exact). */
TILE_INLINE __m256 mx_dy4(const kern_block_q8_0 *y)
{
    __m128i v = _mm_cvtsi32_si128((int)kern_load_u32((const uint8_t *)&y[0]));
    v = _mm_insert_epi16(v, y[1].d, 1);
    v = _mm_insert_epi16(v, y[2].d, 2);
    v = _mm_insert_epi16(v, y[3].d, 3);
    return _mm256_cvtph_ps(_mm_unpacklo_epi64(v, v));
}

/* The maddubs outputs of four blocks -> the half-block sums, [b0 b1 b2 b3 | b0 b1 b2 b3]. */
TILE_INLINE __m256i mx_reduce4(const __m256i *p, __m256i ones)
{
    __m256i m[MX_G];
    for (int j = 0; j < MX_G; j++) {
        m[j] = _mm256_madd_epi16(p[j], ones);
    }
    const __m256i t01 = _mm256_madd_epi16(_mm256_packs_epi32(m[0], m[1]), ones);
    const __m256i t23 = _mm256_madd_epi16(_mm256_packs_epi32(m[2], m[3]), ones);
    return _mm256_madd_epi16(_mm256_packs_epi32(t01, t23), ones);
}

/* One group of four blocks: NR rows (x[r]) x NT tokens (yb[t]) into acc[r][t]. PRE: use
 * the group's precomputed activation terms *pre (decode, NT == 1). */
TILE_INLINE void mx_group(const kern_block_mxfp4 *const *x, const kern_block_q8_0 *const *yb,
                          const mx_pre_t *pre, __m256 acc[][KERN_DOT_TILE], const int NR,
                          const int NT, const int PRE)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i tab = table16(kern_mxfp4_values);
    __m256 dy[KERN_DOT_TILE];
    __m256i c12 = _mm256_setzero_si256();
    if (PRE) {
        tab = _mm256_add_epi8(tab, _mm256_set1_epi8(12)); /* 0..24 */
        dy[0] = _mm256_broadcast_ps((const __m128 *)pre->dy);
        c12 = load32(pre->c12);
    } else {
        for (int t = 0; t < NT; t++) {
            dy[t] = mx_dy4(yb[t]);
        }
    }
    for (int r = 0; r < NR; r++) {
        __m256i q[MX_G], aq[MX_G];
        for (int j = 0; j < MX_G; j++) {
            q[j] = _mm256_shuffle_epi8(tab, unpack_nibbles_v(x[r][j].qs, shift, m4));
            aq[j] = PRE ? q[j] : _mm256_abs_epi8(q[j]);
        }
        const __m256 ew = mx_ew4(x[r]);
        for (int t = 0; t < NT; t++) {
            __m256i p[MX_G];
            for (int j = 0; j < MX_G; j++) {
                const __m256i qy = load32(yb[t][j].qs);
                p[j] = _mm256_maddubs_epi16(aq[j], PRE ? qy : _mm256_sign_epi8(qy, q[j]));
            }
            const __m256i s = _mm256_sub_epi32(mx_reduce4(p, ones), c12);
            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(ew, dy[t]), acc[r][t]);
        }
    }
}

/* NR rows (rb apart) x NT tokens (as apart): y[t * ys + r * yr]. PRE: use pre, the
 * precomputed activation terms of every group (decode, NT == 1; the last group
 * zero-padded). PF: prefetch the weights ahead (decode). */
TILE_INLINE void mx_body(int64_t n, const uint8_t *restrict w, size_t rb, const uint8_t *restrict a,
                         size_t as, const mx_pre_t *pre, float *restrict y, int64_t ys, int64_t yr,
                         const int NR, const int NT, const int PRE, const int PF)
{
    const int64_t nb = n / KERN_QK, ng = nb / MX_G;
    __m256 acc[KERN_DOT_ROWS][KERN_DOT_TILE];
    const kern_block_mxfp4 *x[KERN_DOT_ROWS];
    const kern_block_q8_0 *yb[KERN_DOT_TILE];
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            acc[r][t] = _mm256_setzero_ps();
        }
    }
    for (int64_t g = 0; g < ng; g++) {
        for (int r = 0; r < NR; r++) {
            x[r] = (const kern_block_mxfp4 *)(w + (size_t)r * rb) + MX_G * g;
            if (PF) {
                prefetch_ahead(x[r], MX_G * sizeof(kern_block_mxfp4));
            }
        }
        for (int t = 0; t < NT; t++) {
            yb[t] = (const kern_block_q8_0 *)(a + (size_t)t * as) + MX_G * g;
        }
        mx_group(x, yb, PRE ? pre + g : NULL, acc, NR, NT, PRE);
    }
    const int rem = (int)(nb - MX_G * ng);
    if (rem > 0) {
        kern_block_mxfp4 xp[KERN_DOT_ROWS][MX_G];
        kern_block_q8_0 yp[KERN_DOT_TILE][MX_G];
        memset(xp, 0, sizeof(xp));
        memset(yp, 0, sizeof(yp));
        for (int r = 0; r < NR; r++) {
            memcpy(xp[r], (const kern_block_mxfp4 *)(w + (size_t)r * rb) + MX_G * ng,
                   (size_t)rem * sizeof(kern_block_mxfp4));
            x[r] = xp[r];
        }
        for (int t = 0; t < NT; t++) {
            memcpy(yp[t], (const kern_block_q8_0 *)(a + (size_t)t * as) + MX_G * ng,
                   (size_t)rem * sizeof(kern_block_q8_0));
            yb[t] = yp[t];
        }
        mx_group(x, yb, PRE ? pre + ng : NULL, acc, NR, NT, PRE);
    }
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            y[t * ys + r * yr] = hsum_ps(acc[r][t]);
        }
    }
}

/* Decode precomputes its activation terms for rows of up to MX_PRE_MAX blocks (12 KiB of
 * stack) when it has several rows to share them; otherwise (and for vec_dot) it takes the
 * prefill path, with the same results. */
#define MX_PRE_MAX 1024

static void mx_precompute(const kern_block_q8_0 *y, int64_t nb, mx_pre_t *pre)
{
    const __m256i ones = _mm256_set1_epi16(1), twelve = _mm256_set1_epi8(12);
    for (int64_t g = 0; g * MX_G < nb; g++) {
        kern_block_q8_0 pad[MX_G];
        const kern_block_q8_0 *yb = y + MX_G * g;
        if (MX_G * (g + 1) > nb) {
            memset(pad, 0, sizeof(pad));
            memcpy(pad, yb, (size_t)(nb - MX_G * g) * sizeof(kern_block_q8_0));
            yb = pad;
        }
        __m256i p[MX_G];
        for (int j = 0; j < MX_G; j++) {
            p[j] = _mm256_maddubs_epi16(twelve, load32(yb[j].qs));
        }
        _mm256_storeu_si256((__m256i *)pre[g].c12, mx_reduce4(p, ones));
        _mm_storeu_ps(pre[g].dy, _mm256_castps256_ps128(mx_dy4(yb)));
    }
}

TILE_INLINE void rows_mxfp4(int64_t n, const uint8_t *restrict w, size_t rb,
                            const kern_block_q8_0 *restrict y, const mx_pre_t *pre,
                            float *restrict out, const int NR)
{
    if (pre != NULL) {
        mx_body(n, w, rb, (const uint8_t *)y, 0, pre, out, 0, 1, NR, 1, 1, 1);
    } else {
        mx_body(n, w, rb, (const uint8_t *)y, 0, NULL, out, 0, 1, NR, 1, 0, 1);
    }
}

void kern_vec_dot_rows_mxfp4_avx2(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                                  int group, const void *restrict a, float *restrict y)
{
    const int64_t nb = n / KERN_QK;
    mx_pre_t pre_buf[MX_PRE_MAX / MX_G];
    const mx_pre_t *pre = NULL;
    if (nb <= MX_PRE_MAX && n_rows > 1) {
        mx_precompute(a, nb, pre_buf);
        pre = pre_buf;
    }
    const uint8_t *w8 = w;
    int r = 0;
    if (group >= 4) {
        for (; r + 4 <= n_rows; r += 4) {
            rows_mxfp4(n, w8 + (size_t)r * row_bytes, row_bytes, a, pre, y + r, 4);
        }
    }
    if (group >= 2) {
        for (; r + 2 <= n_rows; r += 2) {
            rows_mxfp4(n, w8 + (size_t)r * row_bytes, row_bytes, a, pre, y + r, 2);
        }
    }
    for (; r < n_rows; r++) {
        rows_mxfp4(n, w8 + (size_t)r * row_bytes, row_bytes, a, pre, y + r, 1);
    }
}

TILE_INLINE void tile_mxfp4(int64_t n, const void *restrict w, const uint8_t *restrict a, size_t as,
                            float *restrict y, int64_t ys, const int NT)
{
    mx_body(n, w, 0, a, as, NULL, y, ys, 0, 1, NT, 0, 0);
}

void kern_vec_dot_tile_mxfp4_avx2(int64_t n, const void *restrict w, const void *restrict a,
                                  size_t a_stride, int n_tok, float *restrict y, int64_t y_stride)
{
    TILE_DISPATCH(tile_mxfp4, n, w, a, a_stride, n_tok, y, y_stride);
}

TILE_INLINE void tile2_mxfp4(int64_t n, const uint8_t *restrict w, size_t rb,
                             const uint8_t *restrict a, size_t as, float *restrict y, int64_t ys,
                             const int NT)
{
    mx_body(n, w, rb, a, as, NULL, y, ys, 1, 2, NT, 0, 0);
}

void kern_vec_dot_tile2_mxfp4_avx2(int64_t n, const void *restrict w, size_t row_bytes,
                                   const void *restrict a, size_t a_stride, int n_tok,
                                   float *restrict y, int64_t y_stride)
{
    const uint8_t *w8 = w, *a8 = a;
    switch (n_tok) {
    case 4:
        tile2_mxfp4(n, w8, row_bytes, a8, a_stride, y, y_stride, 4);
        break;
    case 3:
        tile2_mxfp4(n, w8, row_bytes, a8, a_stride, y, y_stride, 3);
        break;
    case 2:
        tile2_mxfp4(n, w8, row_bytes, a8, a_stride, y, y_stride, 2);
        break;
    default:
        tile2_mxfp4(n, w8, row_bytes, a8, a_stride, y, y_stride, 1);
        break;
    }
}

/* ---- activation quantizers -------------------------------------------------------
 *
 * Bit-exact with the scalar references in quant_ref.c: the same scalar d / id, the same
 * products x * id (one IEEE multiply each), and the same rounding (half away from zero
 * for Q8_0 / Q8_1 as roundf; half to even for Q8_K). */

static inline float hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* roundf for |v| < 2^23: truncate, then step away from zero when |frac| >= 0.5 */
static inline __m256i round_away_epi32(__m256 v)
{
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 frac = _mm256_and_ps(_mm256_sub_ps(v, t), absmask);
    const __m256 step =
        _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                      _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(absmask, v)));
    return _mm256_cvtps_epi32(_mm256_add_ps(t, step));
}

/* 4 x 8 int32 (each in -127..127) -> 32 int8 in order */
static inline __m256i pack_epi32_epi8(__m256i a, __m256i b, __m256i c, __m256i d)
{
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i abcd = _mm256_packs_epi16(ab, cd);
    /* packs interleave 128-bit lanes: restore element order */
    return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* one 32-element block: qs and the (exact) integer sum; returns d */
static inline float q8_block(const float *x, int8_t *qs, int *sum)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_and_ps(v[k], absmask));
    }
    const float d = hmax_ps(amax) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        q[k] = round_away_epi32(_mm256_mul_ps(v[k], vid));
    }
    if (sum != NULL) {
        *sum = hsum_epi32(
            _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    }
    _mm256_storeu_si256((__m256i *)qs, pack_epi32_epi8(q[0], q[1], q[2], q[3]));
    return d;
}

void kern_from_float_q8_0_avx2(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        b[i].d = kern_fp32_to_fp16(q8_block(src + i * KERN_QK, b[i].qs, NULL));
    }
}

void kern_from_float_q8_1_avx2(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int sum;
        const float d = q8_block(src + i * KERN_QK, b[i].qs, &sum);
        b[i].d = kern_fp32_to_fp16(d);
        b[i].s = kern_fp32_to_fp16((float)sum * d);
    }
}

void kern_from_float_q8_k_avx2(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q8_k *b = dst;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t i = 0; i < n / KERN_QKK; i++, src += KERN_QKK) {
        __m256 amax = _mm256_setzero_ps();
        for (int k = 0; k < KERN_QKK; k += 8) {
            amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(src + k), absmask));
        }
        const float am = hmax_ps(amax);
        if (am == 0.0f) {
            memset(&b[i], 0, sizeof(b[i]));
            continue;
        }
        /* the first element with the largest |x| (the reference's strict > scan) */
        float max = 0.0f;
        for (int k = 0; k < KERN_QKK; k++) {
            if (fabsf(src[k]) == am) {
                max = src[k];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i hi = _mm256_set1_epi32(127);
        for (int g = 0; g < KERN_QKK / 32; g++) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) {
                const __m256 p = _mm256_mul_ps(vs, _mm256_loadu_ps(src + 32 * g + 8 * k));
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_round_ps(
                                            p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
                                        hi);
            }
            _mm256_storeu_si256((__m256i *)(b[i].qs + 32 * g),
                                pack_epi32_epi8(q[0], q[1], q[2], q[3]));
            /* bsums of the two 16-element groups */
            const __m256i s01 = _mm256_add_epi32(q[0], q[1]), s23 = _mm256_add_epi32(q[2], q[3]);
            b[i].bsums[2 * g] = (int16_t)hsum_epi32(s01);
            b[i].bsums[2 * g + 1] = (int16_t)hsum_epi32(s23);
        }
        b[i].d = 1.0f / iscale;
    }
}
