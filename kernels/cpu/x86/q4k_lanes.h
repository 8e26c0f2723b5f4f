/*
 * q4k_lanes.h - Q4_K x Q8_K with 16 weight rows in the 16 lanes of an AVX-512 vector, the
 * pieces shared by the AMX product (amx_quant.c) and the AVX-512 VNNI product
 * (avx512_gemm.c), so that both give a (row, token) the same bits:
 *
 *   C_s = sum over sub-block s (32 elements) of q * y            (int32, exact)
 *   f   = C_0 * sc_0, then f = fma(C_s, sc_s, f) for s = 1..7      (floats; products exact)
 *   mi  = sum_s m_s * bsum32_s                                     (int32, exact)
 *   acc = fma(d * yd, f, acc); acc = fnma(dmin * yd, mi, acc)      (per super-block)
 *
 * The weights are read in place from the GGUF blocks (no repacked copy) and transposed
 * 16 x 16 dwords per half super-block, so that a dword lane holds 4 consecutive weights
 * of one row: vpdpbusd against a token's broadcast dword (or TDPBSUD against its row)
 * gives the rows' sub-block sums. Include only from files built with AVX-512 F/BW/VL/DQ
 * and VNNI.
 */
#ifndef TDM_KERNELS_CPU_X86_Q4K_LANES_H
#define TDM_KERNELS_CPU_X86_Q4K_LANES_H

#include "kernels/cpu/types_cpu.h"

#include <immintrin.h>

#define Q4L_INLINE static inline __attribute__((always_inline))
#ifndef Q4L_PF_NEXT
#define Q4L_PF_NEXT 1
#endif
#ifndef Q4L_PF_ROWS
#define Q4L_PF_ROWS 1
#endif
#ifndef Q4L_PF_BLOCKS
#define Q4L_PF_BLOCKS 8
#endif

/* r[c] <- [r[0][c], ..., r[15][c]]: 16 x 16 dwords transposed (unpack 32, unpack 64, two
 * rounds of 128-bit lane shuffles) */
Q4L_INLINE void q4l_transpose16(__m512i r[16])
{
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* u[4g + o], 128-bit lane L: column 4L + o of rows 4g..4g+3 */
    for (int g = 0; g < 4; g++) {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    for (int o = 0; o < 4; o++) {
        const __m512i x01 = _mm512_shuffle_i32x4(u[o], u[4 + o], 0x44);
        const __m512i y01 = _mm512_shuffle_i32x4(u[8 + o], u[12 + o], 0x44);
        const __m512i x23 = _mm512_shuffle_i32x4(u[o], u[4 + o], 0xEE);
        const __m512i y23 = _mm512_shuffle_i32x4(u[8 + o], u[12 + o], 0xEE);
        r[o] = _mm512_shuffle_i32x4(x01, y01, 0x88);
        r[4 + o] = _mm512_shuffle_i32x4(x01, y01, 0xDD);
        r[8 + o] = _mm512_shuffle_i32x4(x23, y23, 0x88);
        r[12 + o] = _mm512_shuffle_i32x4(x23, y23, 0xDD);
    }
}

/* The first 16 bytes of block blk of each row (d | dmin and the scales) as four dword
 * columns, rows in the lanes: h[g] = [rows g, 4+g, 8+g, 12+g] in its 128-bit lanes, so
 * that one round of unpacks puts row 4L + e in lane 4L + e. Missing rows read as 0. */
Q4L_INLINE void q4l_headers(const uint8_t *blk, size_t row_bytes, int n_rows, __m512i d[4])
{
    __m512i h[4];
    for (int g = 0; g < 4; g++) {
        h[g] = _mm512_setzero_si512();
        for (int l = 0; l < 4; l++) {
            const int r = 4 * l + g;
            if (n_rows == 16 || r < n_rows) {
                h[g] = _mm512_mask_broadcast_i32x4(
                    h[g], (__mmask16)(0xF << (4 * l)),
                    _mm_loadu_si128((const __m128i *)(blk + (size_t)r * row_bytes)));
            }
        }
    }
    const __m512i t0 = _mm512_unpacklo_epi32(h[0], h[1]), t1 = _mm512_unpackhi_epi32(h[0], h[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(h[2], h[3]), t3 = _mm512_unpackhi_epi32(h[2], h[3]);
    d[0] = _mm512_unpacklo_epi64(t0, t2);
    d[1] = _mm512_unpackhi_epi64(t0, t2);
    d[2] = _mm512_unpacklo_epi64(t1, t3);
    d[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* What a super-block of the 16 rows contributes besides its 4-bit values, rows in the
 * lanes: d, dmin, the eight sub-block scales as floats, the eight mins in int16 pairs. */
typedef struct q4l_rows_sb {
    __m512 dx, dmx, scf[8];
    __m512i mp[4];
} q4l_rows_sb_t;

Q4L_INLINE void q4l_rows_sb(const uint8_t *blk, size_t row_bytes, int n_rows, q4l_rows_sb_t *o)
{
    const __m512i m6 = _mm512_set1_epi32(63), m4d = _mm512_set1_epi32(15);
    const __m512i m2 = _mm512_set1_epi32(3);
    __m512i hd[4];
    q4l_headers(blk, row_bytes, n_rows, hd);
    const __m512i dd = hd[0], d0 = hd[1], d1 = hd[2], d2 = hd[3];
    o->dx = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
    o->dmx = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dd, 16)));
    /* kern_scale_min_k4 in the lanes: sub-block j < 4 from bytes j and j + 4, j >= 4 from
     * byte j + 4 and the top bits of bytes j - 4 and j */
    __m512i mn[8];
    for (int j = 0; j < 4; j++) {
        const __m512i s0 = _mm512_srli_epi32(d0, 8 * j), s1 = _mm512_srli_epi32(d1, 8 * j);
        const __m512i s2 = _mm512_srli_epi32(d2, 8 * j);
        o->scf[j] = _mm512_cvtepi32_ps(_mm512_and_si512(s0, m6));
        mn[j] = _mm512_and_si512(s1, m6);
        o->scf[j + 4] = _mm512_cvtepi32_ps(
            _mm512_or_si512(_mm512_and_si512(s2, m4d),
                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s0, 6), m2), 4)));
        mn[j + 4] =
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, 4), m4d),
                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s1, 6), m2), 4));
    }
    for (int p = 0; p < 4; p++) { /* m_2p | m_2p+1 << 16, for dpwssd */
        o->mp[p] = _mm512_or_si512(mn[2 * p], _mm512_slli_epi32(mn[2 * p + 1], 16));
    }
}

/* Half h of the 4-bit values (qs bytes 64h..64h+63) of the 16 rows, transposed: v[c] =
 * dword 16h + c of every row, which holds sub-blocks 2j (low nibbles) and 2j+1 (high),
 * j = 2h + c / 8, elements 4(c % 8)..+3. Missing rows read as 0. */
Q4L_INLINE void q4l_nibbles(const uint8_t *blk, size_t row_bytes, int n_rows, int h, __m512i v[16])
{
    const uint8_t *p = blk + 16 + 64 * h;
    if (n_rows == 16) {
        for (int r = 0; r < 16; r++) {
            v[r] = _mm512_loadu_si512(p + (size_t)r * row_bytes);
        }
    } else {
        for (int r = 0; r < 16; r++) {
            v[r] =
                r < n_rows ? _mm512_loadu_si512(p + (size_t)r * row_bytes) : _mm512_setzero_si512();
        }
    }
    q4l_transpose16(v);
}

/* f of one super-block for a token, from its exact sub-block sums c[s] (rows in the
 * lanes); q4l_sb_f_step is one step of it, for callers that fold sub-block by sub-block. */
Q4L_INLINE __m512 q4l_sb_f_step(__m512 f, __m512i c, const q4l_rows_sb_t *rs, int s)
{
    return s == 0 ? _mm512_mul_ps(_mm512_cvtepi32_ps(c), rs->scf[0])
                  : _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), rs->scf[s], f);
}

/* acc of a token after a super-block whose f is given (the mins term and d, dmin). */
Q4L_INLINE __m512 q4l_sb_finish(__m512 acc, __m512 f, const q4l_rows_sb_t *rs,
                                const kern_block_q8_k *yb)
{
    __m512i mi = _mm512_setzero_si512();
    for (int p = 0; p < 4; p++) {
        const int b0 = yb->bsums[4 * p] + yb->bsums[4 * p + 1];
        const int b1 = yb->bsums[4 * p + 2] + yb->bsums[4 * p + 3];
        const int pair = (int)((uint32_t)(uint16_t)b0 | (uint32_t)(uint16_t)b1 << 16);
        mi = _mm512_dpwssd_epi32(mi, rs->mp[p], _mm512_set1_epi32(pair));
    }
    const __m512 yd = _mm512_set1_ps(yb->d);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(rs->dx, yd), f, acc);
    return _mm512_fnmadd_ps(_mm512_mul_ps(rs->dmx, yd), _mm512_cvtepi32_ps(mi), acc);
}

/* The float steps of one super-block for a token (the order the file comment gives). */
Q4L_INLINE __m512 q4l_sb_accumulate(__m512 acc, const __m512i c[8], const q4l_rows_sb_t *rs,
                                    const kern_block_q8_k *yb)
{
    __m512 f = _mm512_setzero_ps();
    for (int s = 0; s < 8; s++) {
        f = q4l_sb_f_step(f, c[s], rs, s);
    }
    return q4l_sb_finish(acc, f, rs, yb);
}

/* Prefetch for super-block i of a call over w (nb super-blocks per row): 16 streams (one
 * per row) are more than the hardware prefetcher follows well, so each row's block
 * Q4L_PF_BLOCKS ahead into L2, and the next 16 rows (the next call of a decode run)
 * spread over this call. */
Q4L_INLINE void q4l_prefetch(const void *w, size_t row_bytes, int n_rows, int64_t nb, int64_t i)
{
    const uint8_t *blk = (const uint8_t *)w + (size_t)i * sizeof(kern_block_q4_k);
    if (Q4L_PF_NEXT) {
        const size_t span = (16 * row_bytes + (size_t)nb - 1) / (size_t)nb;
        const char *p = (const char *)w + 16 * row_bytes + (size_t)i * span;
        for (size_t o = 0; o < span; o += 64) {
            _mm_prefetch(p + o, _MM_HINT_T1);
        }
    }
    if (Q4L_PF_ROWS && i + Q4L_PF_BLOCKS < nb) {
        for (int r = 0; r < n_rows; r++) {
            const char *p =
                (const char *)blk + (size_t)r * row_bytes + Q4L_PF_BLOCKS * sizeof(kern_block_q4_k);
            _mm_prefetch(p, _MM_HINT_T1);
            _mm_prefetch(p + 64, _MM_HINT_T1);
            _mm_prefetch(p + 128, _MM_HINT_T1);
        }
    }
}

/* One token (decode), super-block blk of the rows: the sub-block sums by vpdpbusd on the
 * transposed values against the token's broadcast dwords, kept in registers. */
Q4L_INLINE __m512 q4l_sb_one(__m512 acc, const uint8_t *blk, size_t row_bytes, int n_rows,
                             const q4l_rows_sb_t *rs, const kern_block_q8_k *yb)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int32_t *yq = (const int32_t *)(const void *)yb->qs;
    __m512i c[8];
    for (int h = 0; h < 2; h++) {
        __m512i v[16];
        q4l_nibbles(blk, row_bytes, n_rows, h, v);
        /* sub-blocks 4h..4h+3: v[kk] low and high nibbles, v[8 + kk] the same */
        const int32_t *q = yq + 32 * h;
        __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
        for (int kk = 0; kk < 8; kk++) {
            c0 = _mm512_dpbusd_epi32(c0, _mm512_and_si512(v[kk], m4), _mm512_set1_epi32(q[kk]));
            c1 = _mm512_dpbusd_epi32(c1, _mm512_and_si512(_mm512_srli_epi32(v[kk], 4), m4),
                                     _mm512_set1_epi32(q[8 + kk]));
            c2 = _mm512_dpbusd_epi32(c2, _mm512_and_si512(v[8 + kk], m4),
                                     _mm512_set1_epi32(q[16 + kk]));
            c3 = _mm512_dpbusd_epi32(c3, _mm512_and_si512(_mm512_srli_epi32(v[8 + kk], 4), m4),
                                     _mm512_set1_epi32(q[24 + kk]));
        }
        c[4 * h] = c0;
        c[4 * h + 1] = c1;
        c[4 * h + 2] = c2;
        c[4 * h + 3] = c3;
    }
    return q4l_sb_accumulate(acc, c, rs, yb);
}

/* The rows' 4-bit values of super-block blk as u8, transposed for the products: b[s][kk]
 * = elements 4kk..4kk+3 of sub-block s of each row in its dword lane (what a token's
 * dword kk of sub-block s multiplies). */
Q4L_INLINE void q4l_unpack(const uint8_t *blk, size_t row_bytes, int n_rows, uint8_t b[8][8][64])
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int h = 0; h < 2; h++) {
        __m512i v[16];
        q4l_nibbles(blk, row_bytes, n_rows, h, v);
        for (int cc = 0; cc < 16; cc++) {
            const int j = 2 * h + cc / 8, kk = cc % 8;
            _mm512_store_si512(b[2 * j][kk], _mm512_and_si512(v[cc], m4));
            _mm512_store_si512(b[2 * j + 1][kk], _mm512_and_si512(_mm512_srli_epi32(v[cc], 4), m4));
        }
    }
}

/* y[t * y_stride + r] for the call's rows and tokens */
Q4L_INLINE void q4l_store(const __m512 *acc, int n_rows, int n_tok, float *y, int64_t y_stride)
{
    for (int t = 0; t < n_tok; t++) {
        _Alignas(64) float out[16];
        _mm512_store_ps(out, acc[t]);
        for (int r = 0; r < n_rows; r++) {
            y[t * y_stride + r] = out[r];
        }
    }
}

#endif
