/*
 * quant_ref.c - scalar dequantizers (bit-exact with the gguf Python package) and the
 * simple quantizers (Q8_0, Q8_1, Q8_K activations; Q4_0, Q4_1, Q5_0, Q5_1, MXFP4 weights,
 * bit-exact with gguf.quants.quantize; F16, BF16). The K-quant weight quantizers are in
 * quant_k_ref.c.
 *
 * Compiled with -ffp-contract=off: every formula is a sequence of separately rounded f32
 * operations, in the order the reference (§2.3) gives, so no FMA may fuse them.
 */
#include "kernels/cpu/types_cpu.h"

#include <math.h>

const int8_t kern_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                      1,    13,   25,  38,  53,  69,  89,  113};
const int8_t kern_mxfp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ---- float types ---------------------------------------------------------------- */

void kern_to_float_f32(const void *restrict src, float *restrict dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void kern_to_float_f16(const void *restrict src, float *restrict dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = kern_fp16_to_fp32(s[i]);
    }
}

void kern_to_float_bf16(const void *restrict src, float *restrict dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = kern_bf16_to_fp32(s[i]);
    }
}

void kern_from_float_f32(const float *restrict src, void *restrict dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void kern_from_float_f16(const float *restrict src, void *restrict dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) {
        d[i] = kern_fp32_to_fp16(src[i]);
    }
}

void kern_from_float_bf16(const float *restrict src, void *restrict dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) {
        d[i] = kern_fp32_to_bf16(src[i]);
    }
}

/* ---- 32-element block types: dequantizers --------------------------------------- */

void kern_to_float_q4_0(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_fp16_to_fp32(b->d);
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)((b->qs[j] & 0xF) - 8);
            dst[j + 16] = d * (float)((b->qs[j] >> 4) - 8);
        }
    }
}

void kern_to_float_q4_1(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_fp16_to_fp32(b->d), m = kern_fp16_to_fp32(b->m);
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)(b->qs[j] & 0xF) + m;
            dst[j + 16] = d * (float)(b->qs[j] >> 4) + m;
        }
    }
}

void kern_to_float_q5_0(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_fp16_to_fp32(b->d);
        const uint32_t qh = kern_load_u32(b->qh);
        for (int j = 0; j < 16; j++) {
            const int q0 = (int)((b->qs[j] & 0xF) | (((qh >> j) & 1u) << 4)) - 16;
            const int q1 = (int)((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16;
            dst[j] = d * (float)q0;
            dst[j + 16] = d * (float)q1;
        }
    }
}

void kern_to_float_q5_1(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_fp16_to_fp32(b->d), m = kern_fp16_to_fp32(b->m);
        const uint32_t qh = kern_load_u32(b->qh);
        for (int j = 0; j < 16; j++) {
            const uint32_t q0 = (b->qs[j] & 0xFu) | (((qh >> j) & 1u) << 4);
            const uint32_t q1 = (uint32_t)(b->qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
            dst[j] = d * (float)q0 + m;
            dst[j + 16] = d * (float)q1 + m;
        }
    }
}

void kern_to_float_q8_0(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_fp16_to_fp32(b->d);
        for (int j = 0; j < KERN_QK; j++) {
            dst[j] = d * (float)b->qs[j];
        }
    }
}

void kern_to_float_q8_1(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_fp16_to_fp32(b->d);
        for (int j = 0; j < KERN_QK; j++) {
            dst[j] = d * (float)b->qs[j];
        }
    }
}

void kern_to_float_iq4_nl(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_iq4_nl *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_fp16_to_fp32(b->d);
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)kern_iq4nl_values[b->qs[j] & 0xF];
            dst[j + 16] = d * (float)kern_iq4nl_values[b->qs[j] >> 4];
        }
    }
}

void kern_to_float_mxfp4(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_mxfp4 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        const float d = kern_e8m0_to_fp32_half(b->e);
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)kern_mxfp4_values[b->qs[j] & 0xF];
            dst[j + 16] = d * (float)kern_mxfp4_values[b->qs[j] >> 4];
        }
    }
}

/* ---- K-quants and IQ4_XS: dequantizers ------------------------------------------ */

void kern_to_float_q2_k(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q2_k *b = src;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, dst += KERN_QKK) {
        const float d = kern_fp16_to_fp32(b->d), dmin = kern_fp16_to_fp32(b->dmin);
        for (int h = 0; h < 2; h++) {         /* half: qs bytes 32h..32h+31 */
            for (int j = 0; j < 4; j++) {     /* 2-bit plane: shift 2j */
                for (int s = 0; s < 2; s++) { /* 16-element group */
                    const uint8_t sc = b->scales[8 * h + 2 * j + s];
                    const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
                    float *y = dst + 128 * h + 32 * j + 16 * s;
                    const uint8_t *q = b->qs + 32 * h + 16 * s;
                    for (int l = 0; l < 16; l++) {
                        y[l] = dl * (float)((q[l] >> (2 * j)) & 3) - ml;
                    }
                }
            }
        }
    }
}

/* The 16 signed 6-bit scales of a Q3_K block (-32..31). */
static void q3_k_scales(const uint8_t *b, int8_t *out)
{
    for (int s = 0; s < 16; s++) {
        const int lo = s < 8 ? (b[s] & 0xF) : (b[s - 8] >> 4);
        const int hi = (b[8 + (s % 4)] >> (2 * (s / 4))) & 3;
        out[s] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

void kern_to_float_q3_k(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q3_k *b = src;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, dst += KERN_QKK) {
        const float d = kern_fp16_to_fp32(b->d);
        int8_t sc[16];
        q3_k_scales(b->scales, sc);
        for (int h = 0; h < 2; h++) {
            for (int j = 0; j < 4; j++) {
                const uint8_t mask = (uint8_t)(1u << (4 * h + j));
                for (int s = 0; s < 2; s++) {
                    const float dl = d * (float)sc[8 * h + 2 * j + s];
                    for (int l = 0; l < 16; l++) {
                        const int idx = 16 * s + l;
                        const int q = ((b->qs[32 * h + idx] >> (2 * j)) & 3) -
                                      ((b->hmask[idx] & mask) ? 0 : 4);
                        dst[128 * h + 32 * j + idx] = dl * (float)q;
                    }
                }
            }
        }
    }
}

void kern_to_float_q4_k(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q4_k *b = src;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, dst += KERN_QKK) {
        const float d = kern_fp16_to_fp32(b->d), dmin = kern_fp16_to_fp32(b->dmin);
        for (int c = 0; c < 4; c++) {
            uint8_t sc, mn;
            kern_scale_min_k4(2 * c, b->scales, &sc, &mn);
            const float d1 = d * (float)sc, m1 = dmin * (float)mn;
            kern_scale_min_k4(2 * c + 1, b->scales, &sc, &mn);
            const float d2 = d * (float)sc, m2 = dmin * (float)mn;
            const uint8_t *q = b->qs + 32 * c;
            for (int l = 0; l < 32; l++) {
                dst[64 * c + l] = d1 * (float)(q[l] & 0xF) - m1;
                dst[64 * c + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
            }
        }
    }
}

void kern_to_float_q5_k(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q5_k *b = src;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, dst += KERN_QKK) {
        const float d = kern_fp16_to_fp32(b->d), dmin = kern_fp16_to_fp32(b->dmin);
        for (int c = 0; c < 4; c++) {
            uint8_t sc, mn;
            kern_scale_min_k4(2 * c, b->scales, &sc, &mn);
            const float d1 = d * (float)sc, m1 = dmin * (float)mn;
            kern_scale_min_k4(2 * c + 1, b->scales, &sc, &mn);
            const float d2 = d * (float)sc, m2 = dmin * (float)mn;
            const uint8_t *q = b->qs + 32 * c;
            for (int l = 0; l < 32; l++) {
                const int q0 = (q[l] & 0xF) | (((b->qh[l] >> (2 * c)) & 1) << 4);
                const int q1 = (q[l] >> 4) | (((b->qh[l] >> (2 * c + 1)) & 1) << 4);
                dst[64 * c + l] = d1 * (float)q0 - m1;
                dst[64 * c + 32 + l] = d2 * (float)q1 - m2;
            }
        }
    }
}

void kern_to_float_q6_k(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q6_k *b = src;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, dst += KERN_QKK) {
        const float d = kern_fp16_to_fp32(b->d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
            const int8_t *sc = b->scales + 8 * h;
            float *y = dst + 128 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = (d * (float)sc[is]) * (float)q1;
                y[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
                y[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
                y[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
            }
        }
    }
}

void kern_to_float_q8_k(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_q8_k *b = src;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, dst += KERN_QKK) {
        for (int j = 0; j < KERN_QKK; j++) {
            dst[j] = b->d * (float)b->qs[j];
        }
    }
}

void kern_to_float_iq4_xs(const void *restrict src, float *restrict dst, int64_t n)
{
    const kern_block_iq4_xs *b = src;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, dst += KERN_QKK) {
        const float d = kern_fp16_to_fp32(b->d);
        for (int ib = 0; ib < 8; ib++) {
            const int ls = ((b->scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) |
                           (((b->scales_h >> (2 * ib)) & 3) << 4);
            const float dl = d * (float)(ls - 32);
            const uint8_t *q = b->qs + 16 * ib;
            float *y = dst + 32 * ib;
            for (int j = 0; j < 16; j++) {
                y[j] = dl * (float)kern_iq4nl_values[q[j] & 0xF];
                y[j + 16] = dl * (float)kern_iq4nl_values[q[j] >> 4];
            }
        }
    }
}

/* ---- quantizers ------------------------------------------------------------------ */

/* Round half away from zero, as roundf (and gguf's np_roundf). */
static inline int round_away(float x)
{
    return (int)roundf(x);
}

/* Round half to even for |x| < 2^22 (the magic-number trick Q8_K uses). */
static inline int round_even(float x)
{
    const float v = x + 12582912.0f; /* 1.5 * 2^23 */
    return (int)(kern_f32_bits(v) & 0x007FFFFFu) - 0x00400000;
}

void kern_from_float_q8_0(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float amax = 0.0f;
        for (int j = 0; j < KERN_QK; j++) {
            amax = fmaxf(amax, fabsf(src[j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = kern_fp32_to_fp16(d);
        for (int j = 0; j < KERN_QK; j++) {
            b->qs[j] = (int8_t)round_away(src[j] * id);
        }
    }
}

void kern_from_float_q8_1(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float amax = 0.0f;
        for (int j = 0; j < KERN_QK; j++) {
            amax = fmaxf(amax, fabsf(src[j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < KERN_QK; j++) {
            b->qs[j] = (int8_t)round_away(src[j] * id);
            sum += b->qs[j];
        }
        b->d = kern_fp32_to_fp16(d);
        b->s = kern_fp32_to_fp16((float)sum * d);
    }
}

void kern_from_float_q8_k(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q8_k *b = dst;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, src += KERN_QKK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < KERN_QKK; j++) {
            const float ax = fabsf(src[j]);
            if (ax > amax) {
                amax = ax;
                max = src[j];
            }
        }
        if (amax == 0.0f) {
            memset(b, 0, sizeof(*b));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < KERN_QKK; j++) {
            const int v = round_even(iscale * src[j]);
            b->qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) {
                s += b->qs[16 * g + l];
            }
            b->bsums[g] = (int16_t)s;
        }
        b->d = 1.0f / iscale;
    }
}

/* Index of the first element with the largest |x| (gguf: abs(x).argmax()). */
static int argmax_abs(const float *x, int n)
{
    int best = 0;
    float amax = fabsf(x[0]);
    for (int j = 1; j < n; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            best = j;
        }
    }
    return best;
}

static inline int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

void kern_from_float_q4_0(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        const float max = src[argmax_abs(src, KERN_QK)];
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = kern_fp32_to_fp16(d);
        for (int j = 0; j < 16; j++) {
            const int q0 = clampi((int)truncf(src[j] * id + 8.5f), 0, 15);
            const int q1 = clampi((int)truncf(src[j + 16] * id + 8.5f), 0, 15);
            b->qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void kern_from_float_q4_1(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float min = src[0], max = src[0];
        for (int j = 1; j < KERN_QK; j++) {
            min = src[j] < min ? src[j] : min;
            max = src[j] > max ? src[j] : max;
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = kern_fp32_to_fp16(d);
        b->m = kern_fp32_to_fp16(min);
        for (int j = 0; j < 16; j++) {
            const int q0 = clampi((int)truncf((src[j] - min) * id + 0.5f), 0, 15);
            const int q1 = clampi((int)truncf((src[j + 16] - min) * id + 0.5f), 0, 15);
            b->qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void kern_from_float_q5_0(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q5_0 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        const float max = src[argmax_abs(src, KERN_QK)];
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = kern_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const int q0 = clampi((int)truncf(src[j] * id + 16.5f), 0, 31);
            const int q1 = clampi((int)truncf(src[j + 16] * id + 16.5f), 0, 31);
            b->qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        memcpy(b->qh, &qh, sizeof(qh));
    }
}

void kern_from_float_q5_1(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q5_1 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float min = src[0], max = src[0];
        for (int j = 1; j < KERN_QK; j++) {
            min = src[j] < min ? src[j] : min;
            max = src[j] > max ? src[j] : max;
        }
        const float d = (max - min) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = kern_fp32_to_fp16(d);
        b->m = kern_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const int q0 = clampi((int)truncf((src[j] - min) * id + 0.5f), 0, 31);
            const int q1 = clampi((int)truncf((src[j + 16] - min) * id + 0.5f), 0, 31);
            b->qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        memcpy(b->qh, &qh, sizeof(qh));
    }
}

/* As gguf's MXFP4 quantizer: shared exponent floor(log2(amax)) - 2, then the nearest
 * table entry (first on ties). Exponents outside 0..254 (|x| < 2^-125 or > 2^127) are
 * clamped; gguf wraps them. */
void kern_from_float_mxfp4(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_mxfp4 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float amax = 0.0f;
        for (int j = 0; j < KERN_QK; j++) {
            amax = fmaxf(amax, fabsf(src[j]));
        }
        int e = 0;
        if (amax > 0.0f) {
            e = clampi((int)(floorf(log2f(amax)) - 2.0f + 127.0f), 0, 254);
        }
        b->e = (uint8_t)e;
        const float d = kern_e8m0_to_fp32_half((uint8_t)e);
        uint8_t q[KERN_QK];
        for (int j = 0; j < KERN_QK; j++) {
            int best = 0;
            float best_err = fabsf(d * (float)kern_mxfp4_values[0] - src[j]);
            for (int k = 1; k < 16; k++) {
                const float err = fabsf(d * (float)kern_mxfp4_values[k] - src[j]);
                if (err < best_err) {
                    best_err = err;
                    best = k;
                }
            }
            q[j] = (uint8_t)best;
        }
        for (int j = 0; j < 16; j++) {
            b->qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
        }
    }
}
