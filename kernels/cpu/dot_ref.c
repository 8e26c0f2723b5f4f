/*
 * dot_ref.c - scalar vec_dot references: a weight row of each type against an
 * activation row in that type's vec_dot_type (see types_cpu.c for the pairing).
 *
 * Each block contributes (integer sum of quant products) x (weight scale) x (activation
 * scale), minus the min term for the types with an offset. The SIMD versions compute
 * the same integer sums and may only reorder the float accumulation.
 */
#include "kernels/cpu/types_cpu.h"

float kern_vec_dot_f32_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const float *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)x[i] * (double)y[i];
    }
    return (float)sum;
}

float kern_vec_dot_f16_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const uint16_t *x = w;
    const float *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)kern_fp16_to_fp32(x[i]) * (double)y[i];
    }
    return (float)sum;
}

float kern_vec_dot_bf16_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const uint16_t *x = w;
    const float *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)kern_bf16_to_fp32(x[i]) * (double)y[i];
    }
    return (float)sum;
}

float kern_vec_dot_q4_0_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q4_0 *x = w;
    const kern_block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int s = 0;
        for (int j = 0; j < 16; j++) {
            s += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j];
            s += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
        }
        sum += (float)s * (kern_fp16_to_fp32(x[i].d) * kern_fp16_to_fp32(y[i].d));
    }
    return sum;
}

float kern_vec_dot_q4_1_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q4_1 *x = w;
    const kern_block_q8_1 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int s = 0;
        for (int j = 0; j < 16; j++) {
            s += (x[i].qs[j] & 0xF) * y[i].qs[j];
            s += (x[i].qs[j] >> 4) * y[i].qs[j + 16];
        }
        sum += (float)s * (kern_fp16_to_fp32(x[i].d) * kern_fp16_to_fp32(y[i].d)) +
               kern_fp16_to_fp32(x[i].m) * kern_fp16_to_fp32(y[i].s);
    }
    return sum;
}

float kern_vec_dot_q5_0_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_0 *x = w;
    const kern_block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        const uint32_t qh = kern_load_u32(x[i].qh);
        int s = 0;
        for (int j = 0; j < 16; j++) {
            const int q0 = (int)((x[i].qs[j] & 0xFu) | (((qh >> j) & 1u) << 4)) - 16;
            const int q1 = (int)((uint32_t)(x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16;
            s += q0 * y[i].qs[j] + q1 * y[i].qs[j + 16];
        }
        sum += (float)s * (kern_fp16_to_fp32(x[i].d) * kern_fp16_to_fp32(y[i].d));
    }
    return sum;
}

float kern_vec_dot_q5_1_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_1 *x = w;
    const kern_block_q8_1 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        const uint32_t qh = kern_load_u32(x[i].qh);
        int s = 0;
        for (int j = 0; j < 16; j++) {
            const int q0 = (int)((x[i].qs[j] & 0xFu) | (((qh >> j) & 1u) << 4));
            const int q1 = (int)((uint32_t)(x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
            s += q0 * y[i].qs[j] + q1 * y[i].qs[j + 16];
        }
        sum += (float)s * (kern_fp16_to_fp32(x[i].d) * kern_fp16_to_fp32(y[i].d)) +
               kern_fp16_to_fp32(x[i].m) * kern_fp16_to_fp32(y[i].s);
    }
    return sum;
}

float kern_vec_dot_q8_0_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q8_0 *x = w;
    const kern_block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int s = 0;
        for (int j = 0; j < KERN_QK; j++) {
            s += x[i].qs[j] * y[i].qs[j];
        }
        sum += (float)s * (kern_fp16_to_fp32(x[i].d) * kern_fp16_to_fp32(y[i].d));
    }
    return sum;
}

float kern_vec_dot_iq4_nl_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_iq4_nl *x = w;
    const kern_block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int s = 0;
        for (int j = 0; j < 16; j++) {
            s += kern_iq4nl_values[x[i].qs[j] & 0xF] * y[i].qs[j];
            s += kern_iq4nl_values[x[i].qs[j] >> 4] * y[i].qs[j + 16];
        }
        sum += (float)s * (kern_fp16_to_fp32(x[i].d) * kern_fp16_to_fp32(y[i].d));
    }
    return sum;
}

float kern_vec_dot_mxfp4_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_mxfp4 *x = w;
    const kern_block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK; i++) {
        int s = 0;
        for (int j = 0; j < 16; j++) {
            s += kern_mxfp4_values[x[i].qs[j] & 0xF] * y[i].qs[j];
            s += kern_mxfp4_values[x[i].qs[j] >> 4] * y[i].qs[j + 16];
        }
        sum += (float)s * (kern_e8m0_to_fp32_half(x[i].e) * kern_fp16_to_fp32(y[i].d));
    }
    return sum;
}

float kern_vec_dot_q2_k_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q2_k *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        int summs = 0, isum = 0;
        for (int g = 0; g < 16; g++) {
            summs += (x[i].scales[g] >> 4) * y[i].bsums[g];
        }
        for (int h = 0; h < 2; h++) {
            for (int j = 0; j < 4; j++) {
                for (int s = 0; s < 2; s++) {
                    const int g = 8 * h + 2 * j + s;
                    const uint8_t *q = x[i].qs + 32 * h + 16 * s;
                    const int8_t *q8 = y[i].qs + 16 * g;
                    int si = 0;
                    for (int l = 0; l < 16; l++) {
                        si += ((q[l] >> (2 * j)) & 3) * q8[l];
                    }
                    isum += (x[i].scales[g] & 0xF) * si;
                }
            }
        }
        const float dall = y[i].d * kern_fp16_to_fp32(x[i].d);
        const float dmin = y[i].d * kern_fp16_to_fp32(x[i].dmin);
        sum += dall * (float)isum - dmin * (float)summs;
    }
    return sum;
}

float kern_vec_dot_q3_k_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q3_k *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        const uint8_t *b = x[i].scales;
        int isum = 0;
        for (int h = 0; h < 2; h++) {
            for (int j = 0; j < 4; j++) {
                const uint8_t mask = (uint8_t)(1u << (4 * h + j));
                for (int s = 0; s < 2; s++) {
                    const int g = 8 * h + 2 * j + s;
                    const int lo = g < 8 ? (b[g] & 0xF) : (b[g - 8] >> 4);
                    const int hi = (b[8 + (g % 4)] >> (2 * (g / 4))) & 3;
                    const int scale = (lo | (hi << 4)) - 32;
                    const int8_t *q8 = y[i].qs + 16 * g;
                    int si = 0;
                    for (int l = 0; l < 16; l++) {
                        const int idx = 16 * s + l;
                        const int q = ((x[i].qs[32 * h + idx] >> (2 * j)) & 3) -
                                      ((x[i].hmask[idx] & mask) ? 0 : 4);
                        si += q * q8[l];
                    }
                    isum += scale * si;
                }
            }
        }
        sum += (y[i].d * kern_fp16_to_fp32(x[i].d)) * (float)isum;
    }
    return sum;
}

float kern_vec_dot_q4_k_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q4_k *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        int isum = 0, summs = 0;
        for (int k = 0; k < 8; k++) {
            uint8_t sc, mn;
            kern_scale_min_k4(k, x[i].scales, &sc, &mn);
            summs += mn * (y[i].bsums[2 * k] + y[i].bsums[2 * k + 1]);
            const uint8_t *q = x[i].qs + 32 * (k / 2);
            const int shift = 4 * (k % 2);
            const int8_t *q8 = y[i].qs + 32 * k;
            int si = 0;
            for (int l = 0; l < 32; l++) {
                si += ((q[l] >> shift) & 0xF) * q8[l];
            }
            isum += sc * si;
        }
        const float dall = y[i].d * kern_fp16_to_fp32(x[i].d);
        const float dmin = y[i].d * kern_fp16_to_fp32(x[i].dmin);
        sum += dall * (float)isum - dmin * (float)summs;
    }
    return sum;
}

float kern_vec_dot_q5_k_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q5_k *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        int isum = 0, summs = 0;
        for (int k = 0; k < 8; k++) {
            uint8_t sc, mn;
            kern_scale_min_k4(k, x[i].scales, &sc, &mn);
            summs += mn * (y[i].bsums[2 * k] + y[i].bsums[2 * k + 1]);
            const uint8_t *q = x[i].qs + 32 * (k / 2);
            const int shift = 4 * (k % 2);
            const int8_t *q8 = y[i].qs + 32 * k;
            int si = 0;
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> shift) & 0xF) | (((x[i].qh[l] >> k) & 1) << 4);
                si += v * q8[l];
            }
            isum += sc * si;
        }
        const float dall = y[i].d * kern_fp16_to_fp32(x[i].d);
        const float dmin = y[i].d * kern_fp16_to_fp32(x[i].dmin);
        sum += dall * (float)isum - dmin * (float)summs;
    }
    return sum;
}

float kern_vec_dot_q6_k_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_q6_k *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        int isum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *sc = x[i].scales + 8 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            for (int is = 0; is < 2; is++) {
                int s1 = 0, s2 = 0, s3 = 0, s4 = 0;
                for (int l = 16 * is; l < 16 * is + 16; l++) {
                    s1 += (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32) * q8[l];
                    s2 += (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * q8[l + 32];
                    s3 += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * q8[l + 64];
                    s4 += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * q8[l + 96];
                }
                isum += sc[is] * s1 + sc[is + 2] * s2 + sc[is + 4] * s3 + sc[is + 6] * s4;
            }
        }
        sum += (y[i].d * kern_fp16_to_fp32(x[i].d)) * (float)isum;
    }
    return sum;
}

float kern_vec_dot_iq4_xs_ref(int64_t n, const void *restrict w, const void *restrict a)
{
    const kern_block_iq4_xs *x = w;
    const kern_block_q8_k *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QKK; i++) {
        int isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const int ls = ((x[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) |
                           (((x[i].scales_h >> (2 * ib)) & 3) << 4);
            const uint8_t *q = x[i].qs + 16 * ib;
            const int8_t *q8 = y[i].qs + 32 * ib;
            int si = 0;
            for (int j = 0; j < 16; j++) {
                si += kern_iq4nl_values[q[j] & 0xF] * q8[j];
                si += kern_iq4nl_values[q[j] >> 4] * q8[j + 16];
            }
            isum += (ls - 32) * si;
        }
        sum += (y[i].d * kern_fp16_to_fp32(x[i].d)) * (float)isum;
    }
    return sum;
}
