/*
 * qblock.h - GGUF block decoding shared by the CUDA kernels and the CPU unit tests.
 *
 * For every quantized weight type this header says, in functions compiled both for the
 * GPU (__host__ __device__ under nvcc) and for the CPU (plain C, tests/unit/
 * test_cuda_qblock.c):
 *
 *   - the int8 values one thread of a warp hands to the tensor cores (mma.sync) for a
 *     sub-block of a row: qb_<t>_a32 (32-element sub-blocks, mma .m16n8k32) or qb_<t>_a16
 *     (16-element sub-blocks, .m16n8k16). With lane = 4 * g + tig, thread (g, tig) holds
 *     elements tig*4 .. tig*4+3 ("lo") and, for a32, 16 + tig*4 .. +3 ("hi") of the
 *     sub-block, four int8 packed little-endian in an int32: exactly the A-fragment
 *     registers of PTX's .s8 mma layouts (a0/a2 for row g, a1/a3 for row g + 8);
 *   - the sub-block's integer scale and min, and the block's float scales;
 *   - the float epilogue of a block, in the operation order of the CPU's scalar vec_dot
 *     (kernels/cpu/dot_ref.c), with no fused multiply-add, so that a GPU product
 *     accumulated in block order equals the CPU reference bit for bit;
 *   - one element of a block as the CPU's dequantizer gives it (embedding rows).
 *
 * Activations are quantized exactly as the CPU quantizes them (Q8_0, Q8_1 or Q8_K, the
 * weight type's vec_dot_type) but stored apart on the GPU: int8 values row after row
 * (qb_act_t), with each block's scale already widened to f32.
 *
 * Every function here is tested on the CPU against kernels/cpu's dequantizers and
 * vec_dots on random blocks, so the decoding the GPU runs is checked in CI without one.
 */
#ifndef KERN_CUDA_QBLOCK_H
#define KERN_CUDA_QBLOCK_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define QB_FN static __host__ __device__ __forceinline__
#else
#define QB_FN static inline
#endif

/* ---- loads of little-endian fields at the alignment a block guarantees ---------------- */

QB_FN uint32_t qb_ld16(const uint8_t *p) /* 2-byte aligned */
{
#if defined(__CUDA_ARCH__)
    return *(const uint16_t *)p;
#else
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
#endif
}

QB_FN uint32_t qb_ld32_a4(const uint8_t *p) /* 4-byte aligned */
{
#if defined(__CUDA_ARCH__)
    return *(const uint32_t *)p;
#else
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#endif
}

QB_FN uint32_t qb_ld32_a2(const uint8_t *p) /* 2-byte aligned */
{
#if defined(__CUDA_ARCH__)
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
#else
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#endif
}

QB_FN uint32_t qb_ld32_a1(const uint8_t *p) /* any alignment */
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* ---- scalar conversions, exact on both sides --------------------------------------------- */

QB_FN float qb_bits_f32(uint32_t u)
{
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

QB_FN uint32_t qb_f32_bits(float f)
{
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

/* IEEE binary16 -> f32 (exact: subnormals, inf, NaN) */
QB_FN float qb_f16(uint32_t h)
{
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half((unsigned short)h));
#else
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0x1F) {
        return qb_bits_f32(sign | 0x7F800000u | (mant << 13));
    }
    if (exp == 0) {
        return qb_bits_f32(sign | qb_f32_bits((float)mant * 0x1p-24f));
    }
    return qb_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

QB_FN float qb_bf16(uint32_t h)
{
    return qb_bits_f32(h << 16);
}

/* E8M0 scale as ggml's half value 2^(e-128) (its FP4 table is doubled) */
QB_FN float qb_e8m0_half(uint32_t e)
{
    return qb_bits_f32(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}

/* Float operations without contraction: the CPU references are compiled with
 * -ffp-contract=off, and nvcc would fuse a * b + c into one FMA. */
#if defined(__CUDA_ARCH__)
#define QB_MUL(a, b) __fmul_rn((a), (b))
#define QB_ADD(a, b) __fadd_rn((a), (b))
#define QB_SUB(a, b) __fsub_rn((a), (b))
#else
#define QB_MUL(a, b) ((float)(a) * (float)(b))
#define QB_ADD(a, b) ((float)(a) + (float)(b))
#define QB_SUB(a, b) ((float)(a) - (float)(b))
#endif

/* ---- int8x4 helpers ------------------------------------------------------------------------ */

/* Per-byte x - y for bytes 0..127 (no borrow crosses a byte: each byte of x | 0x80 is at
 * least 128 > y's). */
QB_FN uint32_t qb_vsub(uint32_t x, uint32_t y)
{
    return ((x | 0x80808080u) - y) ^ 0x80808080u;
}

/* Bits 0..3 of x to bit 4 of bytes 0..3. */
QB_FN uint32_t qb_spread4(uint32_t x)
{
    return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25);
}

/* Each byte of idx (0..15) through a 16-entry int8 table. */
QB_FN uint32_t qb_lut4(uint32_t idx, const int8_t *tab)
{
    return (uint32_t)(uint8_t)tab[idx & 0xF] | ((uint32_t)(uint8_t)tab[(idx >> 8) & 0xF] << 8) |
           ((uint32_t)(uint8_t)tab[(idx >> 16) & 0xF] << 16) |
           ((uint32_t)(uint8_t)tab[(idx >> 24) & 0xF] << 24);
}

/* The IQ4_NL / IQ4_XS codebook and ggml's doubled E2M1 table for MXFP4 (kernels/cpu's
 * kern_iq4nl_values / kern_mxfp4_values). Device code passes copies in constant memory. */
#define QB_IQ4NL_VALUES                                                          \
    {                                                                            \
        -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113 \
    }
#define QB_MXFP4_VALUES                                         \
    {                                                           \
        0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 \
    }

/* ---- 32-element block types (one sub-block; activations Q8_0, or Q8_1 for _1) ------------- */

/* Q4_0: 18 bytes, d @0, qs[16] @2; x = d * (q - 8), low nibbles first */
QB_FN void qb_q4_0_a32(const uint8_t *b, int tig, uint32_t *lo, uint32_t *hi)
{
    const uint32_t v = qb_ld32_a2(b + 2 + 4 * tig);
    *lo = qb_vsub(v & 0x0F0F0F0Fu, 0x08080808u);
    *hi = qb_vsub((v >> 4) & 0x0F0F0F0Fu, 0x08080808u);
}

/* Q4_1: 20 bytes, d @0, m @2, qs @4; x = d * q + m */
QB_FN void qb_q4_1_a32(const uint8_t *b, int tig, uint32_t *lo, uint32_t *hi)
{
    const uint32_t v = qb_ld32_a4(b + 4 + 4 * tig);
    *lo = v & 0x0F0F0F0Fu;
    *hi = (v >> 4) & 0x0F0F0F0Fu;
}

/* Q5_0: 22 bytes, d @0, qh (u32) @2, qs @6; x = d * (q - 16), bit j of qh is element j's
 * fifth bit */
QB_FN void qb_q5_0_a32(const uint8_t *b, int tig, uint32_t *lo, uint32_t *hi)
{
    const uint32_t qh = qb_ld32_a2(b + 2), v = qb_ld32_a2(b + 6 + 4 * tig);
    *lo = qb_vsub((v & 0x0F0F0F0Fu) | qb_spread4((qh >> (4 * tig)) & 0xFu), 0x10101010u);
    *hi =
        qb_vsub(((v >> 4) & 0x0F0F0F0Fu) | qb_spread4((qh >> (16 + 4 * tig)) & 0xFu), 0x10101010u);
}

/* Q5_1: 24 bytes, d @0, m @2, qh @4, qs @8; x = d * q + m */
QB_FN void qb_q5_1_a32(const uint8_t *b, int tig, uint32_t *lo, uint32_t *hi)
{
    const uint32_t qh = qb_ld32_a4(b + 4), v = qb_ld32_a4(b + 8 + 4 * tig);
    *lo = (v & 0x0F0F0F0Fu) | qb_spread4((qh >> (4 * tig)) & 0xFu);
    *hi = ((v >> 4) & 0x0F0F0F0Fu) | qb_spread4((qh >> (16 + 4 * tig)) & 0xFu);
}

/* Q8_0: 34 bytes, d @0, qs[32] @2 */
QB_FN void qb_q8_0_a32(const uint8_t *b, int tig, uint32_t *lo, uint32_t *hi)
{
    *lo = qb_ld32_a2(b + 2 + 4 * tig);
    *hi = qb_ld32_a2(b + 18 + 4 * tig);
}

/* IQ4_NL: 18 bytes, d @0, qs @2; x = d * codebook[nibble] */
QB_FN void qb_iq4_nl_a32(const uint8_t *b, int tig, const int8_t *tab, uint32_t *lo, uint32_t *hi)
{
    const uint32_t v = qb_ld32_a2(b + 2 + 4 * tig);
    *lo = qb_lut4(v & 0x0F0F0F0Fu, tab);
    *hi = qb_lut4((v >> 4) & 0x0F0F0F0Fu, tab);
}

/* MXFP4: 17 bytes, e (E8M0) @0, qs @1; x = 2^(e-128) * fp4table[nibble] */
QB_FN void qb_mxfp4_a32(const uint8_t *b, int tig, const int8_t *tab, uint32_t *lo, uint32_t *hi)
{
    const uint32_t v = qb_ld32_a1(b + 1 + 4 * tig);
    *lo = qb_lut4(v & 0x0F0F0F0Fu, tab);
    *hi = qb_lut4((v >> 4) & 0x0F0F0F0Fu, tab);
}

/* ---- K-quants and IQ4_XS: 256-element super-blocks (activations Q8_K) --------------------- */

/* Q4_K / Q5_K 6-bit scale and min of sub-block j (ggml's get_scale_min_k4); s = scales[12] */
QB_FN void qb_scale_min_k4(int j, const uint8_t *s, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K: 144 bytes, d @0, dmin @2, scales[12] @4, qs[128] @16; sub-block j (32 elements) is
 * nibble j % 2 of qs[32 * (j / 2) ..]; x = d * sc_j * q - dmin * m_j */
QB_FN void qb_q4_k_a32(const uint8_t *b, int j, int tig, uint32_t *lo, uint32_t *hi)
{
    const uint8_t *q = b + 16 + 32 * (j / 2) + 4 * tig;
    const int sh = 4 * (j & 1);
    *lo = (qb_ld32_a4(q) >> sh) & 0x0F0F0F0Fu;
    *hi = (qb_ld32_a4(q + 16) >> sh) & 0x0F0F0F0Fu;
}

/* Q5_K: 176 bytes, d @0, dmin @2, scales @4, qh[32] @16, qs[128] @48; bit j of qh[l] is
 * the fifth bit of element l of sub-block j */
QB_FN void qb_q5_k_a32(const uint8_t *b, int j, int tig, uint32_t *lo, uint32_t *hi)
{
    const uint8_t *q = b + 48 + 32 * (j / 2) + 4 * tig, *h = b + 16 + 4 * tig;
    const int sh = 4 * (j & 1);
    *lo = ((qb_ld32_a4(q) >> sh) & 0x0F0F0F0Fu) | (((qb_ld32_a4(h) >> j) & 0x01010101u) << 4);
    *hi = ((qb_ld32_a4(q + 16) >> sh) & 0x0F0F0F0Fu) |
          (((qb_ld32_a4(h + 16) >> j) & 0x01010101u) << 4);
}

/* IQ4_XS: 136 bytes, d @0, scales_h (u16) @2, scales_l[4] @4, qs[128] @8; sub-block ib is
 * qs[16 ib ..] low nibbles then high nibbles; x = d * (ls_ib - 32) * codebook[nibble] */
QB_FN void qb_iq4_xs_a32(const uint8_t *b, int ib, int tig, const int8_t *tab, uint32_t *lo,
                         uint32_t *hi)
{
    const uint32_t v = qb_ld32_a4(b + 8 + 16 * ib + 4 * tig);
    *lo = qb_lut4(v & 0x0F0F0F0Fu, tab);
    *hi = qb_lut4((v >> 4) & 0x0F0F0F0Fu, tab);
}

QB_FN int qb_iq4_xs_scale(const uint8_t *b, int ib)
{
    const int ls =
        ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((int)(qb_ld16(b + 2) >> (2 * ib)) & 3) << 4);
    return ls - 32;
}

/* Q2_K: 84 bytes, scales[16] @0 (scale low nibble, min high), qs[64] @16, d @80, dmin @82;
 * element e of 16-sub-block g (h = g/8, j = g%8/2, s = g%2) is bits 2j of qs[32h + 16s + l] */
QB_FN uint32_t qb_q2_k_a16(const uint8_t *b, int g, int tig)
{
    const int h = g / 8, j = (g % 8) / 2, s = g % 2;
    return (qb_ld32_a4(b + 16 + 32 * h + 16 * s + 4 * tig) >> (2 * j)) & 0x03030303u;
}

/* Q3_K: 110 bytes, hmask[32] @0, qs[64] @32, scales[12] @96, d @108; value = 2 bits of qs,
 * minus 4 where the hmask bit (4h + j) is clear */
QB_FN uint32_t qb_q3_k_a16(const uint8_t *b, int g, int tig)
{
    const int h = g / 8, j = (g % 8) / 2, s = g % 2;
    const uint32_t q2 = (qb_ld32_a2(b + 32 + 32 * h + 16 * s + 4 * tig) >> (2 * j)) & 0x03030303u;
    const uint32_t hb = (qb_ld32_a2(b + 16 * s + 4 * tig) >> (4 * h + j)) & 0x01010101u;
    return qb_vsub(q2, (hb ^ 0x01010101u) << 2);
}

QB_FN int qb_q3_k_scale(const uint8_t *b, int g)
{
    const uint8_t *s = b + 96;
    const int lo = g < 8 ? (s[g] & 0xF) : (s[g - 8] >> 4);
    const int hi = (s[8 + (g % 4)] >> (2 * (g / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

/* Q6_K: 210 bytes, ql[128] @0, qh[64] @128, scales[16] (int8) @192, d @208; element e
 * (h = e/128, quadrant q = e%128/32, l = e%32) is nibble q/2 of ql[64h + 32(q&1) + l] with
 * bits 2q of qh[32h + l] on top, minus 32; scale of 16-sub-block g is scales[g] */
QB_FN uint32_t qb_q6_k_a16(const uint8_t *b, int g, int tig)
{
    const int h = g / 8, q = (g % 8) / 2, l0 = 16 * (g % 2) + 4 * tig;
    const uint32_t lw = qb_ld32_a2(b + 64 * h + 32 * (q & 1) + l0);
    const uint32_t hw = qb_ld32_a2(b + 128 + 32 * h + l0);
    const uint32_t v =
        ((lw >> (4 * (q >> 1))) & 0x0F0F0F0Fu) | (((hw >> (2 * q)) & 0x03030303u) << 4);
    return qb_vsub(v, 0x20202020u);
}

/* ---- sub-block scales and the mins term of a super-block ------------------------------------ */

QB_FN int qb_q4_k_scale(const uint8_t *b, int j) /* Q4_K and Q5_K */
{
    int sc, mn;
    qb_scale_min_k4(j, b + 4, &sc, &mn);
    return sc;
}

/* sum over sub-blocks of min_j * (sum of the activation's 32 values of sub-block j) */
QB_FN int qb_q4_k_mins(const uint8_t *b, const int32_t *bsums)
{
    int s = 0;
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        qb_scale_min_k4(j, b + 4, &sc, &mn);
        s += mn * (bsums[2 * j] + bsums[2 * j + 1]);
    }
    return s;
}

QB_FN int qb_q2_k_scale(const uint8_t *b, int g)
{
    return b[g] & 0xF;
}

QB_FN int qb_q2_k_mins(const uint8_t *b, const int32_t *bsums)
{
    int s = 0;
    for (int g = 0; g < 16; g++) {
        s += (b[g] >> 4) * bsums[g];
    }
    return s;
}

QB_FN int qb_q6_k_scale(const uint8_t *b, int g)
{
    return (int)(int8_t)b[192 + g];
}

/* ---- the float epilogues of a block (acc += this block), in dot_ref.c's order -------------- */

/* Q4_0, Q5_0, Q8_0, IQ4_NL (dw: the f16 d), MXFP4 (dw: the E8M0 half scale) */
QB_FN float qb_epi_d(float acc, int isum, float dw, float da)
{
    return QB_ADD(acc, QB_MUL((float)isum, QB_MUL(dw, da)));
}

/* Q4_1, Q5_1: + the weight's min times the activation block's d * sum */
QB_FN float qb_epi_dm(float acc, int isum, float dw, float da, float mw, float sa)
{
    return QB_ADD(acc, QB_ADD(QB_MUL((float)isum, QB_MUL(dw, da)), QB_MUL(mw, sa)));
}

/* Q2_K, Q4_K, Q5_K: d and dmin of the super-block, the mins term summs */
QB_FN float qb_epi_kmin(float acc, int isum, int summs, float dw, float dmw, float da)
{
    const float dall = QB_MUL(da, dw), dmin = QB_MUL(da, dmw);
    return QB_ADD(acc, QB_SUB(QB_MUL(dall, (float)isum), QB_MUL(dmin, (float)summs)));
}

/* Q3_K, Q6_K, IQ4_XS */
QB_FN float qb_epi_k(float acc, int isum, float dw, float da)
{
    return QB_ADD(acc, QB_MUL(QB_MUL(da, dw), (float)isum));
}

/* ---- sizes and activation formats ----------------------------------------------------------- */

/* The activation formats (the CPU's vec_dot_type of the weight). */
enum { QB_ACT_Q8_0 = 0, QB_ACT_Q8_1 = 1, QB_ACT_Q8_K = 2 };

/*
 * A row of quantized activations as the GPU stores it: K int8 values, then per block of
 * 32 (Q8_0/Q8_1) or 256 (Q8_K) its scale d as f32 (Q8_0/Q8_1: the f16 the CPU stores,
 * widened), Q8_1's s (f16 widened), Q8_K's 16 sums of 16 values.
 */
typedef struct qb_act {
    const int8_t *qs;     /* K values                               */
    const float *d;       /* K/32 or K/256 scales                    */
    const float *s;       /* Q8_1: K/32 sums * d                     */
    const int32_t *bsums; /* Q8_K: K/16 sums of 16 values            */
} qb_act_t;

/* ---- one dot product emulated lane by lane (the CPU tests' model of the GPU kernel) --------- */

/* The 4 int8 of a packed word as ints. */
QB_FN int qb_dot4(uint32_t a, uint32_t b)
{
    int s = 0;
    for (int i = 0; i < 4; i++) {
        s += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    }
    return s;
}

/* ---- one element of a block, as the CPU dequantizer gives it --------------------------------- */

QB_FN float qb_deq_q4_0(const uint8_t *b, int e)
{
    const int q = e < 16 ? (b[2 + e] & 0xF) : (b[2 + e - 16] >> 4);
    return QB_MUL(qb_f16(qb_ld16(b)), (float)(q - 8));
}

QB_FN float qb_deq_q4_1(const uint8_t *b, int e)
{
    const int q = e < 16 ? (b[4 + e] & 0xF) : (b[4 + e - 16] >> 4);
    return QB_ADD(QB_MUL(qb_f16(qb_ld16(b)), (float)q), qb_f16(qb_ld16(b + 2)));
}

QB_FN float qb_deq_q5_0(const uint8_t *b, int e)
{
    const uint32_t qh = qb_ld32_a2(b + 2);
    const int q = (e < 16 ? (b[6 + e] & 0xF) : (b[6 + e - 16] >> 4)) | (int)(((qh >> e) & 1u) << 4);
    return QB_MUL(qb_f16(qb_ld16(b)), (float)(q - 16));
}

QB_FN float qb_deq_q5_1(const uint8_t *b, int e)
{
    const uint32_t qh = qb_ld32_a4(b + 4);
    const int q = (e < 16 ? (b[8 + e] & 0xF) : (b[8 + e - 16] >> 4)) | (int)(((qh >> e) & 1u) << 4);
    return QB_ADD(QB_MUL(qb_f16(qb_ld16(b)), (float)q), qb_f16(qb_ld16(b + 2)));
}

QB_FN float qb_deq_q8_0(const uint8_t *b, int e)
{
    return QB_MUL(qb_f16(qb_ld16(b)), (float)(int8_t)b[2 + e]);
}

QB_FN float qb_deq_iq4_nl(const uint8_t *b, int e, const int8_t *tab)
{
    const int n = e < 16 ? (b[2 + e] & 0xF) : (b[2 + e - 16] >> 4);
    return QB_MUL(qb_f16(qb_ld16(b)), (float)tab[n]);
}

QB_FN float qb_deq_mxfp4(const uint8_t *b, int e, const int8_t *tab)
{
    const int n = e < 16 ? (b[1 + e] & 0xF) : (b[1 + e - 16] >> 4);
    return QB_MUL(qb_e8m0_half(b[0]), (float)tab[n]);
}

QB_FN float qb_deq_q2_k(const uint8_t *b, int e)
{
    const int g = e / 16, h = e / 128, j = (e % 128) / 32, s = (e % 32) / 16, l = e % 16;
    const float dl = QB_MUL(qb_f16(qb_ld16(b + 80)), (float)(b[g] & 0xF));
    const float ml = QB_MUL(qb_f16(qb_ld16(b + 82)), (float)(b[g] >> 4));
    const int q = (b[16 + 32 * h + 16 * s + l] >> (2 * j)) & 3;
    return QB_SUB(QB_MUL(dl, (float)q), ml);
}

QB_FN float qb_deq_q3_k(const uint8_t *b, int e)
{
    const int g = e / 16, h = e / 128, j = (e % 128) / 32, idx = e % 32;
    const float dl = QB_MUL(qb_f16(qb_ld16(b + 108)), (float)qb_q3_k_scale(b, g));
    const int q =
        ((b[32 + 32 * h + idx] >> (2 * j)) & 3) - ((b[idx] & (1u << (4 * h + j))) ? 0 : 4);
    return QB_MUL(dl, (float)q);
}

QB_FN float qb_deq_q4_k(const uint8_t *b, int e)
{
    const int j = e / 32, l = e % 32;
    int sc, mn;
    qb_scale_min_k4(j, b + 4, &sc, &mn);
    const float d1 = QB_MUL(qb_f16(qb_ld16(b)), (float)sc);
    const float m1 = QB_MUL(qb_f16(qb_ld16(b + 2)), (float)mn);
    const int q = (b[16 + 32 * (j / 2) + l] >> (4 * (j & 1))) & 0xF;
    return QB_SUB(QB_MUL(d1, (float)q), m1);
}

QB_FN float qb_deq_q5_k(const uint8_t *b, int e)
{
    const int j = e / 32, l = e % 32;
    int sc, mn;
    qb_scale_min_k4(j, b + 4, &sc, &mn);
    const float d1 = QB_MUL(qb_f16(qb_ld16(b)), (float)sc);
    const float m1 = QB_MUL(qb_f16(qb_ld16(b + 2)), (float)mn);
    const int q =
        ((b[48 + 32 * (j / 2) + l] >> (4 * (j & 1))) & 0xF) | (((b[16 + l] >> j) & 1) << 4);
    return QB_SUB(QB_MUL(d1, (float)q), m1);
}

QB_FN float qb_deq_q6_k(const uint8_t *b, int e)
{
    const int h = e / 128, q = (e % 128) / 32, l = e % 32;
    const int lo = (b[64 * h + 32 * (q & 1) + l] >> (4 * (q >> 1))) & 0xF;
    const int hi = (b[128 + 32 * h + l] >> (2 * q)) & 3;
    const float ds = QB_MUL(qb_f16(qb_ld16(b + 208)), (float)(int8_t)b[192 + e / 16]);
    return QB_MUL(ds, (float)((lo | (hi << 4)) - 32));
}

QB_FN float qb_deq_iq4_xs(const uint8_t *b, int e, const int8_t *tab)
{
    const int ib = e / 32, j = e % 32;
    const float dl = QB_MUL(qb_f16(qb_ld16(b)), (float)qb_iq4_xs_scale(b, ib));
    const int n = j < 16 ? (b[8 + 16 * ib + j] & 0xF) : (b[8 + 16 * ib + j - 16] >> 4);
    return QB_MUL(dl, (float)tab[n]);
}

#endif
