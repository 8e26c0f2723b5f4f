/*
 * quant_k_ref.c - reference quantizers for the K-quant weight types Q4_K, Q5_K, Q6_K.
 *
 * Tandem's own algorithm (deterministic, unweighted least squares), not llama.cpp's:
 *   1. per sub-block, fit x ~ s*q + b (Q4_K/Q5_K: q in 0..qmax, b <= 0) or x ~ s*q
 *      (Q6_K: q in -32..31): try a small grid of candidate step sizes around the range-
 *      based one, round to q, refit s (and b) by least squares, keep the lowest error;
 *   2. quantize the sub-block scales (and mins) to 6 bits (Q6_K: int8) against one f16
 *      super-block scale (and min scale), rounding to nearest;
 *   3. requantize every element against the scales as stored (f16 and 6-bit rounding
 *      included), so the bytes decode to the nearest grid point we can represent.
 * Quality is checked in tests/unit/test_kernels_types.c against llama.cpp's reference.
 * Inputs must be finite and below ~65504 * 63 in magnitude (the f16 super-block scale).
 */
#include "kernels/cpu/types_cpu.h"

#include <math.h>

#define N_CAND 10 /* candidate steps on each side of the range-based one */

static inline int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static inline int nearest(float x)
{
    return (int)lrintf(x);
}

/* x[0..n) ~ s * q + b with q in 0..qmax and b <= 0 (the format stores -b >= 0). */
static void fit_affine(const float *x, int n, int qmax, float *s_out, float *b_out)
{
    float xmin = x[0], xmax = x[0];
    for (int i = 1; i < n; i++) {
        xmin = x[i] < xmin ? x[i] : xmin;
        xmax = x[i] > xmax ? x[i] : xmax;
    }
    const float lo = xmin < 0.0f ? xmin : 0.0f;
    if (xmax <= lo) { /* all equal to lo <= 0 */
        *s_out = 0.0f;
        *b_out = lo;
        return;
    }
    float best_s = (xmax - lo) / (float)qmax, best_b = lo;
    double best_err = 0.0;
    for (int i = 0; i < n; i++) {
        const int q = clampi(nearest((x[i] - lo) / best_s), 0, qmax);
        const double e = (double)best_s * q + lo - x[i];
        best_err += e * e;
    }
    for (int c = -N_CAND; c <= N_CAND; c++) {
        const float iscale = ((float)qmax + 0.1f * (float)c) / (xmax - lo);
        int q[32];
        double sq = 0, sqq = 0, sx = 0, sqx = 0;
        for (int i = 0; i < n; i++) {
            q[i] = clampi(nearest((x[i] - lo) * iscale), 0, qmax);
            sq += q[i];
            sqq += (double)q[i] * q[i];
            sx += x[i];
            sqx += (double)q[i] * x[i];
        }
        const double det = n * sqq - sq * sq;
        if (det <= 0.0) {
            continue;
        }
        double s = (n * sqx - sq * sx) / det;
        double b = (sx - s * sq) / n;
        if (b > 0.0) { /* the offset must be <= 0: refit through the origin */
            b = 0.0;
            s = sqx / sqq;
        }
        if (s <= 0.0) {
            continue;
        }
        double err = 0.0;
        for (int i = 0; i < n; i++) {
            const double e = s * q[i] + b - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = (float)s;
            best_b = (float)b;
        }
    }
    *s_out = best_s;
    *b_out = best_b;
}

/* x[0..n) ~ s * q with q in -32..31 (s may be negative). */
static float fit_symmetric(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    if (amax == 0.0f) {
        return 0.0f;
    }
    float best_s = max / -32.0f;
    double best_err = INFINITY;
    for (int c = -N_CAND; c <= N_CAND; c++) {
        const float iscale = (-32.0f + 0.1f * (float)c) / max;
        double sqq = 0, sqx = 0;
        int q[16];
        for (int i = 0; i < n; i++) {
            q[i] = clampi(nearest(x[i] * iscale), -32, 31);
            sqq += (double)q[i] * q[i];
            sqx += (double)q[i] * x[i];
        }
        if (sqq <= 0.0) {
            continue;
        }
        const double s = sqx / sqq;
        double err = 0.0;
        for (int i = 0; i < n; i++) {
            const double e = s * q[i] - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = (float)s;
        }
    }
    return best_s;
}

/* Shared by Q4_K (qmax 15) and Q5_K (qmax 31): 6-bit scales/mins packed as the
 * get_scale_min_k4 layout, q[256] out. */
static void quantize_k_affine(const float *x, int qmax, uint16_t *d_out, uint16_t *dmin_out,
                              uint8_t *scales, uint8_t *q)
{
    float s[8], m[8], smax = 0.0f, mmax = 0.0f;
    for (int j = 0; j < 8; j++) {
        float b;
        fit_affine(x + 32 * j, 32, qmax, &s[j], &b);
        m[j] = -b;
        smax = s[j] > smax ? s[j] : smax;
        mmax = m[j] > mmax ? m[j] : mmax;
    }
    const uint16_t dh = kern_fp32_to_fp16(smax / 63.0f);
    const uint16_t mh = kern_fp32_to_fp16(mmax / 63.0f);
    const float d = kern_fp16_to_fp32(dh), dmin = kern_fp16_to_fp32(mh);
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)(d > 0.0f ? clampi(nearest(s[j] / d), 0, 63) : 0);
        mn[j] = (uint8_t)(dmin > 0.0f ? clampi(nearest(m[j] / dmin), 0, 63) : 0);
    }
    memset(scales, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            scales[j] = sc[j];
            scales[j + 4] = mn[j];
        } else {
            scales[j + 4] = (uint8_t)((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
            scales[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            scales[j] |= (uint8_t)((mn[j] >> 4) << 6);
        }
    }
    for (int j = 0; j < 8; j++) {
        const float es = d * (float)sc[j], em = dmin * (float)mn[j];
        for (int i = 0; i < 32; i++) {
            q[32 * j + i] =
                (uint8_t)(es > 0.0f ? clampi(nearest((x[32 * j + i] + em) / es), 0, qmax) : 0);
        }
    }
    *d_out = dh;
    *dmin_out = mh;
}

void kern_from_float_q4_k(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q4_k *b = dst;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, src += KERN_QKK) {
        uint8_t q[KERN_QKK];
        quantize_k_affine(src, 15, &b->d, &b->dmin, b->scales, q);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                b->qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
            }
        }
    }
}

void kern_from_float_q5_k(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q5_k *b = dst;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, src += KERN_QKK) {
        uint8_t q[KERN_QKK];
        quantize_k_affine(src, 31, &b->d, &b->dmin, b->scales, q);
        memset(b->qh, 0, sizeof(b->qh));
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                const uint8_t lo = q[64 * c + l], hi = q[64 * c + 32 + l];
                b->qs[32 * c + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
                b->qh[l] |= (uint8_t)(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
            }
        }
    }
}

void kern_from_float_q6_k(const float *restrict src, void *restrict dst, int64_t n)
{
    kern_block_q6_k *b = dst;
    for (int64_t i = 0; i < n / KERN_QKK; i++, b++, src += KERN_QKK) {
        float s[16], smax = 0.0f;
        for (int j = 0; j < 16; j++) {
            s[j] = fit_symmetric(src + 16 * j, 16);
            smax = fabsf(s[j]) > smax ? fabsf(s[j]) : smax;
        }
        b->d = kern_fp32_to_fp16(smax / 127.0f);
        const float d = kern_fp16_to_fp32(b->d);
        int q[KERN_QKK];
        for (int j = 0; j < 16; j++) {
            const int sc = d > 0.0f ? clampi(nearest(s[j] / d), -127, 127) : 0;
            b->scales[j] = (int8_t)sc;
            const float es = d * (float)sc;
            for (int l = 0; l < 16; l++) {
                q[16 * j + l] =
                    es != 0.0f ? clampi(nearest(src[16 * j + l] / es), -32, 31) + 32 : 32;
            }
        }
        /* layout: half h, l in 0..31: ql[64h+l] = q(128h+l) | q(128h+64+l) << 4,
         * ql[64h+32+l] = q(128h+32+l) | q(128h+96+l) << 4, qh[32h+l] = the four top bit
         * pairs in the order q(+0), q(+32), q(+64), q(+96). */
        for (int h = 0; h < 2; h++) {
            for (int l = 0; l < 32; l++) {
                const int *qq = q + 128 * h + l;
                b->ql[64 * h + l] = (uint8_t)((qq[0] & 0xF) | ((qq[64] & 0xF) << 4));
                b->ql[64 * h + 32 + l] = (uint8_t)((qq[32] & 0xF) | ((qq[96] & 0xF) << 4));
                b->qh[32 * h + l] = (uint8_t)((qq[0] >> 4) | ((qq[32] >> 4) << 2) |
                                              ((qq[64] >> 4) << 4) | ((qq[96] >> 4) << 6));
            }
        }
    }
}
