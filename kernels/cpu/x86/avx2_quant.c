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
    const kern_block_q4_1 *x = w;
    const kern_block_q8_1 *y = a;
    const int64_t nb = n / KERN_QK;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i s = dot_us8(unpack_nibbles(x[i].qs), load32(y[i].qs));
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
        summs += fp16(x[i].m) * fp16(y[i].s);
    }
    return hsum_ps(acc) + summs;
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
    const kern_block_q8_0 *x = w;
    const kern_block_q8_0 *y = a;
    const int64_t nb = n / KERN_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m256i s0 = dot_ss8(load32(x[i].qs), load32(y[i].qs));
        const __m256i s1 = dot_ss8(load32(x[i + 1].qs), load32(y[i + 1].qs));
        const __m256 d0 = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        const __m256 d1 = _mm256_set1_ps(fp16(x[i + 1].d) * fp16(y[i + 1].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i s0 = dot_ss8(load32(x[i].qs), load32(y[i].qs));
        const __m256 d0 = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s0), acc0);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1));
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
    const kern_block_mxfp4 *x = w;
    const kern_block_q8_0 *y = a;
    const int64_t nb = n / KERN_QK;
    const __m256i tab = table16(kern_mxfp4_values);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = _mm256_shuffle_epi8(tab, unpack_nibbles(x[i].qs));
        const __m256i s = dot_ss8(q, load32(y[i].qs));
        const __m256 d = _mm256_set1_ps(kern_e8m0_to_fp32_half(x[i].e) * fp16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    return hsum_ps(acc);
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
    const kern_block_q4_k *x = w;
    const kern_block_q8_k *y = a;
    const int64_t nb = n / KERN_QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
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
        __m256i isum = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i qv = load32(x[i].qs + 32 * c);
            const __m256i lo = _mm256_and_si256(qv, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
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
    const kern_block_q4_1 *x = w;
    const int64_t nb = n / KERN_QK;
    __m256 acc[KERN_DOT_TILE];
    float summs[KERN_DOT_TILE];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        summs[t] = 0.0f;
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = unpack_nibbles(x[i].qs);
        const float dx = fp16(x[i].d), mx = fp16(x[i].m);
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_1 *yb = (const kern_block_q8_1 *)(a + (size_t)t * as) + i;
            const __m256i s = dot_us8(q, load32(yb->qs));
            const __m256 d = _mm256_set1_ps(dx * fp16(yb->d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
            summs[t] += mx * fp16(yb->s);
        }
    }
    for (int t = 0; t < NT; t++) {
        y[t * ys] = hsum_ps(acc[t]) + summs[t];
    }
}

void kern_vec_dot_tile_q4_1_avx2(int64_t n, const void *restrict w, const void *restrict a,
                                 size_t a_stride, int n_tok, float *restrict y, int64_t y_stride){
    TILE_DISPATCH(tile_q4_1, n, w, a, a_stride, n_tok, y, y_stride)}

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
    const kern_block_q4_k *x = w;
    const int64_t nb = n / KERN_QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[KERN_DOT_TILE];
    float sum[KERN_DOT_TILE];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        sum[t] = 0.0f;
    }
    for (int64_t i = 0; i < nb; i++) {
        uint8_t sc[8], mn[8];
        for (int k = 0; k < 8; k++) {
            kern_scale_min_k4(k, x[i].scales, &sc[k], &mn[k]);
        }
        /* mins per 16-element group (each sub-block's min twice): sum_k mn[k] *
         * (bsums[2k] + bsums[2k+1]) as one madd */
        int16_t mg[16];
        for (int g = 0; g < 16; g++) {
            mg[g] = mn[g / 2];
        }
        const __m256i mins = load32(mg);
        __m256i isum[KERN_DOT_TILE];
        for (int t = 0; t < NT; t++) {
            isum[t] = _mm256_setzero_si256();
        }
        for (int c = 0; c < 4; c++) {
            const __m256i qv = load32(x[i].qs + 32 * c);
            const __m256i lo = _mm256_and_si256(qv, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
            const __m256i slo = _mm256_set1_epi16(sc[2 * c]);
            const __m256i shi = _mm256_set1_epi16(sc[2 * c + 1]);
            for (int t = 0; t < NT; t++) {
                const kern_block_q8_k *yb = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
                const __m256i plo = _mm256_maddubs_epi16(lo, load32(yb->qs + 64 * c));
                const __m256i phi = _mm256_maddubs_epi16(hi, load32(yb->qs + 64 * c + 32));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(_mm256_madd_epi16(plo, slo),
                                                                     _mm256_madd_epi16(phi, shi)));
            }
        }
        const float dx = fp16(x[i].d), dmx = fp16(x[i].dmin);
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_k *yb = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
            const int summs = hsum_epi32(_mm256_madd_epi16(load32(yb->bsums), mins));
            acc[t] =
                _mm256_fmadd_ps(_mm256_set1_ps(yb->d * dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            sum[t] -= yb->d * dmx * (float)summs;
        }
    }
    for (int t = 0; t < NT; t++) {
        y[t * ys] = hsum_ps(acc[t]) + sum[t];
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
