/*
 * neon_quant_impl.h - the body of the arm64 vec_dot kernels, included by neon_quant.c
 * (Advanced SIMD only) and neondot_quant.c (+dotprod). The includer defines KERN_SFX
 * (the function-name suffix) and dot16(acc, a, b): acc (4 x i32) += the products of the
 * 16 int8 pairs of a and b, spread over the lanes in any way; every caller reduces the
 * lanes of one dot16 group with a single scale, so the spread does not matter.
 *
 * Each kernel computes the same per-block integer sums as dot_ref.c; weights are first
 * turned into signed int8 values (|v| <= 128), activations are Q8 (|q| <= 127), so
 * products fit i16 (vmull_s8) and sums fit i32.
 */
#include "kernels/cpu/types_cpu.h"

#include <arm_neon.h>

#define KERN_CAT_(a, b) a##b
#define KERN_CAT(a, b)  KERN_CAT_(a, b)
#define FN(name)        KERN_CAT(kern_vec_dot_##name##_, KERN_SFX)

static inline float fp16(uint16_t h)
{
    return kern_fp16_to_fp32(h);
}

/* 16 packed nibbles -> low nibbles (elements 0..15) and high nibbles (16..31) */
static inline void nibbles(const uint8_t *p, int8x16_t *lo, int8x16_t *hi)
{
    const uint8x16_t v = vld1q_u8(p);
    *lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
    *hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
}

/* bits 0..15 of b (two bytes) -> 16 bytes, 0x10 where the bit is set */
static inline int8x16_t bits16_x10(uint32_t b)
{
    static const uint8_t m[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)(b & 0xFF)), vdup_n_u8((uint8_t)(b >> 8)));
    return vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, vld1q_u8(m)), vdupq_n_u8(0x10)));
}

/* ---- float weights against f32 activations ------------------------------------- */

float FN(f32)(int64_t n, const void *restrict w, const void *restrict a)
{
    const float *x = w, *y = a;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(x + i), vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += x[i] * y[i];
    }
    return sum;
}

float FN(f16)(int64_t n, const void *restrict w, const void *restrict a)
{
    const uint16_t *x = w;
    const float *y = a;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(x + i));
        acc0 = vfmaq_f32(acc0, vcvt_f32_f16(vget_low_f16(h)), vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, vcvt_high_f32_f16(h), vld1q_f32(y + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += fp16(x[i]) * y[i];
    }
    return sum;
}

float FN(bf16)(int64_t n, const void *restrict w, const void *restrict a)
{
    const uint16_t *x = w;
    const float *y = a;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(x + i);
        const float32x4_t x0 = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        const float32x4_t x1 = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
        acc0 = vfmaq_f32(acc0, x0, vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, x1, vld1q_f32(y + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += kern_bf16_to_fp32(x[i]) * y[i];
    }
    return sum;
}

/* ---- 32-element blocks against Q8_0 / Q8_1 ------------------------------------- */

/* acc += d * (lo . y[0..16) + hi . y[16..32)) */
static inline float32x4_t block32(float32x4_t acc, int8x16_t lo, int8x16_t hi, const int8_t *qy,
                                  float d)
{
    int32x4_t s = dot16(vdupq_n_s32(0), lo, vld1q_s8(qy));
    s = dot16(s, hi, vld1q_s8(qy + 16));
    return vfmaq_f32(acc, vcvtq_f32_s32(s), vdupq_n_f32(d));
}

float FN(q4_0)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q4_0 *x = w;
    const kern_block_q8_0 *y = a;
    float32x4_t acc = vdupq_n_f32(0.0f);
    const int8x16_t eight = vdupq_n_s8(8);
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int8x16_t lo, hi;
        nibbles(x[i].qs, &lo, &hi);
        acc = block32(acc, vsubq_s8(lo, eight), vsubq_s8(hi, eight), y[i].qs,
                      fp16(x[i].d) * fp16(y[i].d));
    }
    return vaddvq_f32(acc);
}

float FN(q4_1)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q4_1 *x = w;
    const kern_block_q8_1 *y = a;
    float32x4_t acc = vdupq_n_f32(0.0f);
    float summs = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int8x16_t lo, hi;
        nibbles(x[i].qs, &lo, &hi);
        acc = block32(acc, lo, hi, y[i].qs, fp16(x[i].d) * fp16(y[i].d));
        summs += fp16(x[i].m) * fp16(y[i].s);
    }
    return vaddvq_f32(acc) + summs;
}

float FN(q5_0)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_0 *x = w;
    const kern_block_q8_0 *y = a;
    float32x4_t acc = vdupq_n_f32(0.0f);
    const int8x16_t sixteen = vdupq_n_s8(16);
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        const uint32_t qh = kern_load_u32(x[i].qh);
        int8x16_t lo, hi;
        nibbles(x[i].qs, &lo, &hi);
        lo = vsubq_s8(vorrq_s8(lo, bits16_x10(qh & 0xFFFF)), sixteen);
        hi = vsubq_s8(vorrq_s8(hi, bits16_x10(qh >> 16)), sixteen);
        acc = block32(acc, lo, hi, y[i].qs, fp16(x[i].d) * fp16(y[i].d));
    }
    return vaddvq_f32(acc);
}

float FN(q5_1)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_1 *x = w;
    const kern_block_q8_1 *y = a;
    float32x4_t acc = vdupq_n_f32(0.0f);
    float summs = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        const uint32_t qh = kern_load_u32(x[i].qh);
        int8x16_t lo, hi;
        nibbles(x[i].qs, &lo, &hi);
        lo = vorrq_s8(lo, bits16_x10(qh & 0xFFFF));
        hi = vorrq_s8(hi, bits16_x10(qh >> 16));
        acc = block32(acc, lo, hi, y[i].qs, fp16(x[i].d) * fp16(y[i].d));
        summs += fp16(x[i].m) * fp16(y[i].s);
    }
    return vaddvq_f32(acc) + summs;
}

float FN(q8_0)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q8_0 *x = w;
    const kern_block_q8_0 *y = a;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        acc = block32(acc, vld1q_s8(x[i].qs), vld1q_s8(x[i].qs + 16), y[i].qs,
                      fp16(x[i].d) * fp16(y[i].d));
    }
    return vaddvq_f32(acc);
}

float FN(iq4_nl)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_iq4_nl *x = w;
    const kern_block_q8_0 *y = a;
    const int8x16_t tab = vld1q_s8(kern_iq4nl_values);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int8x16_t lo, hi;
        nibbles(x[i].qs, &lo, &hi);
        acc =
            block32(acc, vqtbl1q_s8(tab, vreinterpretq_u8_s8(lo)),
                    vqtbl1q_s8(tab, vreinterpretq_u8_s8(hi)), y[i].qs, fp16(x[i].d) * fp16(y[i].d));
    }
    return vaddvq_f32(acc);
}

float FN(mxfp4)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_mxfp4 *x = w;
    const kern_block_q8_0 *y = a;
    const int8x16_t tab = vld1q_s8(kern_mxfp4_values);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int8x16_t lo, hi;
        nibbles(x[i].qs, &lo, &hi);
        acc = block32(acc, vqtbl1q_s8(tab, vreinterpretq_u8_s8(lo)),
                      vqtbl1q_s8(tab, vreinterpretq_u8_s8(hi)), y[i].qs,
                      kern_e8m0_to_fp32_half(x[i].e) * fp16(y[i].d));
    }
    return vaddvq_f32(acc);
}

/* ---- 256-element super-blocks against Q8_K ------------------------------------- */

/* sum of 16 products, the int32 lanes reduced */
static inline int32_t dot16_sum(int8x16_t a, const int8_t *qy)
{
    return vaddvq_s32(dot16(vdupq_n_s32(0), a, vld1q_s8(qy)));
}

float FN(q2_k)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q2_k *x = w;
    const kern_block_q8_k *y = a;
    const uint8x16_t m3 = vdupq_n_u8(3);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        const uint8x16_t sc = vld1q_u8(x[i].scales);
        const int16x8_t bs0 = vld1q_s16(y[i].bsums), bs1 = vld1q_s16(y[i].bsums + 8);
        const uint8x16_t mn = vshrq_n_u8(sc, 4);
        const int16x8_t mn0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mn)));
        const int16x8_t mn1 = vreinterpretq_s16_u16(vmovl_high_u8(mn));
        int32x4_t ms = vmull_s16(vget_low_s16(mn0), vget_low_s16(bs0));
        ms = vmlal_high_s16(ms, mn0, bs0);
        ms = vmlal_s16(ms, vget_low_s16(mn1), vget_low_s16(bs1));
        ms = vmlal_high_s16(ms, mn1, bs1);
        const int summs = vaddvq_s32(ms);
        int32x4_t isum = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h), q1 = vld1q_u8(x[i].qs + 32 * h + 16);
            for (int j = 0; j < 4; j++) {
                const int g = 8 * h + 2 * j;
                const int8_t *q8 = y[i].qs + 16 * g;
                const int8x16_t a0 =
                    vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q0, vdupq_n_s8((int8_t)(-2 * j))), m3));
                const int8x16_t a1 =
                    vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q1, vdupq_n_s8((int8_t)(-2 * j))), m3));
                isum = vmlaq_n_s32(isum, dot16(vdupq_n_s32(0), a0, vld1q_s8(q8)),
                                   x[i].scales[g] & 0xF);
                isum = vmlaq_n_s32(isum, dot16(vdupq_n_s32(0), a1, vld1q_s8(q8 + 16)),
                                   x[i].scales[g + 1] & 0xF);
            }
        }
        const float dall = y[i].d * fp16(x[i].d);
        const float dmin = y[i].d * fp16(x[i].dmin);
        sum += dall * (float)vaddvq_s32(isum) - dmin * (float)summs;
    }
    return sum;
}

float FN(q3_k)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q3_k *x = w;
    const kern_block_q8_k *y = a;
    const uint8x16_t m3 = vdupq_n_u8(3), four = vdupq_n_u8(4);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        const uint8_t *b = x[i].scales;
        int sc[16];
        for (int g = 0; g < 16; g++) {
            const int lo = g < 8 ? (b[g] & 0xF) : (b[g - 8] >> 4);
            const int hi = (b[8 + (g % 4)] >> (2 * (g / 4))) & 3;
            sc[g] = (lo | (hi << 4)) - 32;
        }
        const uint8x16_t hm0 = vld1q_u8(x[i].hmask), hm1 = vld1q_u8(x[i].hmask + 16);
        int32x4_t isum = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h), q1 = vld1q_u8(x[i].qs + 32 * h + 16);
            for (int j = 0; j < 4; j++) {
                const int g = 8 * h + 2 * j;
                const int8_t *q8 = y[i].qs + 16 * g;
                const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * j));
                const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << (4 * h + j)));
                /* q = low2 - 4 where the hmask bit is clear */
                const uint8x16_t sub0 = vbicq_u8(four, vtstq_u8(hm0, bit));
                const uint8x16_t sub1 = vbicq_u8(four, vtstq_u8(hm1, bit));
                const int8x16_t a0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q0, sh), m3)),
                                              vreinterpretq_s8_u8(sub0));
                const int8x16_t a1 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q1, sh), m3)),
                                              vreinterpretq_s8_u8(sub1));
                isum = vmlaq_n_s32(isum, dot16(vdupq_n_s32(0), a0, vld1q_s8(q8)), sc[g]);
                isum = vmlaq_n_s32(isum, dot16(vdupq_n_s32(0), a1, vld1q_s8(q8 + 16)), sc[g + 1]);
            }
        }
        sum += (y[i].d * fp16(x[i].d)) * (float)vaddvq_s32(isum);
    }
    return sum;
}

/* Q4_K and Q5_K share everything but the fifth bit. */
static inline float q45_k(const uint16_t *dd, const uint16_t *dmin_h, const uint8_t *scales,
                          const uint8_t *qs, const uint8_t *qh, const kern_block_q8_k *y)
{
    uint8_t sc[8], mn[8];
    for (int k = 0; k < 8; k++) {
        kern_scale_min_k4(k, scales, &sc[k], &mn[k]);
    }
    int summs = 0;
    for (int k = 0; k < 8; k++) {
        summs += mn[k] * (y->bsums[2 * k] + y->bsums[2 * k + 1]);
    }
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    uint8x16_t h0 = vdupq_n_u8(0), h1 = vdupq_n_u8(0);
    if (qh != NULL) {
        h0 = vld1q_u8(qh);
        h1 = vld1q_u8(qh + 16);
    }
    int32x4_t isum = vdupq_n_s32(0);
    for (int c = 0; c < 4; c++) {
        const uint8x16_t v0 = vld1q_u8(qs + 32 * c), v1 = vld1q_u8(qs + 32 * c + 16);
        uint8x16_t l0 = vandq_u8(v0, m4), l1 = vandq_u8(v1, m4);
        uint8x16_t u0 = vshrq_n_u8(v0, 4), u1 = vshrq_n_u8(v1, 4);
        if (qh != NULL) {
            const uint8x16_t blo = vdupq_n_u8((uint8_t)(1u << (2 * c)));
            const uint8x16_t bhi = vdupq_n_u8((uint8_t)(2u << (2 * c)));
            const uint8x16_t x10 = vdupq_n_u8(0x10);
            l0 = vorrq_u8(l0, vandq_u8(vtstq_u8(h0, blo), x10));
            l1 = vorrq_u8(l1, vandq_u8(vtstq_u8(h1, blo), x10));
            u0 = vorrq_u8(u0, vandq_u8(vtstq_u8(h0, bhi), x10));
            u1 = vorrq_u8(u1, vandq_u8(vtstq_u8(h1, bhi), x10));
        }
        const int8_t *q8 = y->qs + 64 * c;
        int32x4_t slo = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(l0), vld1q_s8(q8));
        slo = dot16(slo, vreinterpretq_s8_u8(l1), vld1q_s8(q8 + 16));
        int32x4_t shi = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(u0), vld1q_s8(q8 + 32));
        shi = dot16(shi, vreinterpretq_s8_u8(u1), vld1q_s8(q8 + 48));
        isum = vmlaq_n_s32(isum, slo, sc[2 * c]);
        isum = vmlaq_n_s32(isum, shi, sc[2 * c + 1]);
    }
    const float dall = y->d * fp16(*dd);
    const float dmin = y->d * fp16(*dmin_h);
    return dall * (float)vaddvq_s32(isum) - dmin * (float)summs;
}

float FN(q4_k)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q4_k *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        sum += q45_k(&x[i].d, &x[i].dmin, x[i].scales, x[i].qs, NULL, &y[i]);
    }
    return sum;
}

float FN(q5_k)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_k *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        sum += q45_k(&x[i].d, &x[i].dmin, x[i].scales, x[i].qs, x[i].qh, &y[i]);
    }
    return sum;
}

float FN(q6_k)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q6_k *x = w;
    const kern_block_q8_k *y = a;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    const int8x16_t k32 = vdupq_n_s8(32);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        int32x4_t isum = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *sc = x[i].scales + 8 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            for (int is = 0; is < 2; is++) { /* l in 16*is .. 16*is+15 */
                const uint8x16_t la = vld1q_u8(ql + 16 * is), lb = vld1q_u8(ql + 32 + 16 * is);
                const uint8x16_t hb = vld1q_u8(qh + 16 * is);
                const uint8x16_t v1 = vorrq_u8(vandq_u8(la, m4), vshlq_n_u8(vandq_u8(hb, m3), 4));
                const uint8x16_t v2 =
                    vorrq_u8(vandq_u8(lb, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4));
                const uint8x16_t v3 =
                    vorrq_u8(vshrq_n_u8(la, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4));
                const uint8x16_t v4 = vorrq_u8(vshrq_n_u8(lb, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4));
                const int o = 16 * is;
                isum = vmlaq_n_s32(
                    isum,
                    dot16(vdupq_n_s32(0), vsubq_s8(vreinterpretq_s8_u8(v1), k32), vld1q_s8(q8 + o)),
                    sc[is]);
                isum = vmlaq_n_s32(isum,
                                   dot16(vdupq_n_s32(0), vsubq_s8(vreinterpretq_s8_u8(v2), k32),
                                         vld1q_s8(q8 + 32 + o)),
                                   sc[is + 2]);
                isum = vmlaq_n_s32(isum,
                                   dot16(vdupq_n_s32(0), vsubq_s8(vreinterpretq_s8_u8(v3), k32),
                                         vld1q_s8(q8 + 64 + o)),
                                   sc[is + 4]);
                isum = vmlaq_n_s32(isum,
                                   dot16(vdupq_n_s32(0), vsubq_s8(vreinterpretq_s8_u8(v4), k32),
                                         vld1q_s8(q8 + 96 + o)),
                                   sc[is + 6]);
            }
        }
        sum += (y[i].d * fp16(x[i].d)) * (float)vaddvq_s32(isum);
    }
    return sum;
}

float FN(iq4_xs)(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_iq4_xs *x = w;
    const kern_block_q8_k *y = a;
    const int8x16_t tab = vld1q_s8(kern_iq4nl_values);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        int32x4_t isum = vdupq_n_s32(0);
        for (int ib = 0; ib < 8; ib++) {
            const int ls = ((x[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) |
                           (((x[i].scales_h >> (2 * ib)) & 3) << 4);
            int8x16_t lo, hi;
            nibbles(x[i].qs + 16 * ib, &lo, &hi);
            const int8_t *q8 = y[i].qs + 32 * ib;
            int32x4_t s =
                dot16(vdupq_n_s32(0), vqtbl1q_s8(tab, vreinterpretq_u8_s8(lo)), vld1q_s8(q8));
            s = dot16(s, vqtbl1q_s8(tab, vreinterpretq_u8_s8(hi)), vld1q_s8(q8 + 16));
            isum = vmlaq_n_s32(isum, s, ls - 32);
        }
        sum += (y[i].d * fp16(x[i].d)) * (float)vaddvq_s32(isum);
    }
    return sum;
}

/* ---- MXFP4 prefill tiles ------------------------------------------------------------
 *
 * One weight row (tile) or two (tile2, rows rb apart) against NT <= KERN_DOT_TILE tokens
 * (as apart): each weight block is unpacked (nibbles, table lookup, E8M0 scale) once for
 * all tokens, and every (row, token) gets exactly the arithmetic of FN(mxfp4) (the same
 * dot16 sums, scale product ew * dy and FMA sequence), so tiles and vec_dot agree bit for
 * bit. y[t * ys + r * yr]. */

#define TILE_INLINE static inline __attribute__((always_inline))

TILE_INLINE void mx_tile(int64_t n, const uint8_t *restrict w, size_t rb, const uint8_t *restrict a,
                         size_t as, float *restrict y, int64_t ys, int64_t yr, const int NR,
                         const int NT)
{
    const int8x16_t tab = vld1q_s8(kern_mxfp4_values);
    float32x4_t acc[2][KERN_DOT_TILE];
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            acc[r][t] = vdupq_n_f32(0.0f);
        }
    }
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int8x16_t lo[2], hi[2];
        float ew[2];
        for (int r = 0; r < NR; r++) {
            const kern_block_mxfp4 *xb = (const kern_block_mxfp4 *)(w + (size_t)r * rb) + i;
            int8x16_t l, h;
            nibbles(xb->qs, &l, &h);
            lo[r] = vqtbl1q_s8(tab, vreinterpretq_u8_s8(l));
            hi[r] = vqtbl1q_s8(tab, vreinterpretq_u8_s8(h));
            ew[r] = kern_e8m0_to_fp32_half(xb->e);
        }
        for (int t = 0; t < NT; t++) {
            const kern_block_q8_0 *yb = (const kern_block_q8_0 *)(a + (size_t)t * as) + i;
            const float dy = fp16(yb->d);
            for (int r = 0; r < NR; r++) {
                acc[r][t] = block32(acc[r][t], lo[r], hi[r], yb->qs, ew[r] * dy);
            }
        }
    }
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            y[t * ys + r * yr] = vaddvq_f32(acc[r][t]);
        }
    }
}

void KERN_CAT(kern_vec_dot_tile_mxfp4_, KERN_SFX)(int64_t n, const void *restrict w,
                                                  const void *restrict a, size_t a_stride,
                                                  int n_tok, float *restrict y, int64_t y_stride)
{
    const uint8_t *w8 = w, *a8 = a;
    switch (n_tok) {
    case 4:
        mx_tile(n, w8, 0, a8, a_stride, y, y_stride, 0, 1, 4);
        break;
    case 3:
        mx_tile(n, w8, 0, a8, a_stride, y, y_stride, 0, 1, 3);
        break;
    case 2:
        mx_tile(n, w8, 0, a8, a_stride, y, y_stride, 0, 1, 2);
        break;
    default:
        mx_tile(n, w8, 0, a8, a_stride, y, y_stride, 0, 1, 1);
        break;
    }
}

void KERN_CAT(kern_vec_dot_tile2_mxfp4_,
              KERN_SFX)(int64_t n, const void *restrict w, size_t row_bytes, const void *restrict a,
                        size_t a_stride, int n_tok, float *restrict y, int64_t y_stride)
{
    const uint8_t *w8 = w, *a8 = a;
    switch (n_tok) {
    case 4:
        mx_tile(n, w8, row_bytes, a8, a_stride, y, y_stride, 1, 2, 4);
        break;
    case 3:
        mx_tile(n, w8, row_bytes, a8, a_stride, y, y_stride, 1, 2, 3);
        break;
    case 2:
        mx_tile(n, w8, row_bytes, a8, a_stride, y, y_stride, 1, 2, 2);
        break;
    default:
        mx_tile(n, w8, row_bytes, a8, a_stride, y, y_stride, 1, 2, 1);
        break;
    }
}
