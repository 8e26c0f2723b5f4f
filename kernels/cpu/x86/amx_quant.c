/*
 * amx_quant.c - Q4_K x Q8_K products on AMX (Intel Advanced Matrix Extensions, Sapphire
 * Rapids and later): every Q4_K product of a context that has AMX, prefill and decode,
 * so a (row, token) gets the same bits whatever the batch (test_matmul_batch_invariance).
 *
 * One call computes up to 16 weight rows x 16 tokens. Per super-block (256 weights) and
 * 32-element sub-block s, TDPBSUD multiplies the tokens' int8 activations (tile A: a row
 * per token, read in place from the Q8_K rows) by the rows' 4-bit values as u8 (tile B:
 * 8 rows of [4 bytes of weight row 0 | ... | of row 15], gathered from the GGUF blocks,
 * no repacked copy) into C_s[token][row], exact int32 sums. The rest is AVX-512 with the
 * rows in the 16 lanes, one vector per token, in this order for every (row, token):
 *   f  = C_0 * sc_0, then f = fma(C_s, sc_s, f) for s = 1..7   (floats; products exact)
 *   mi = sum_s m_s * bsum32_s                                     (int32, exact)
 *   acc = fma(d * yd, f, acc); acc = fnma(dmin * yd, mi, acc)     (per super-block)
 * The integer sums are the scalar reference's; only the float order differs from it and
 * from the AVX-512 vec_dot (which this level does not use for Q4_K products).
 *
 * The process must be granted the AMX tile state once (kern_amx_request, Linux
 * arch_prctl); each call loads its tile configuration and releases the tiles.
 */
#include "kernels/cpu/types_cpu.h"

#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define AMX_XFEATURE_XTILEDATA  18

int kern_amx_request(void)
{
    return syscall(SYS_arch_prctl, AMX_ARCH_REQ_XCOMP_PERM, AMX_XFEATURE_XTILEDATA) == 0;
}

/* LDTILECFG's 64-byte operand (palette 1) */
typedef struct amx_cfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg_t;
_Static_assert(sizeof(amx_cfg_t) == 64, "tile config");

/* Tiles 0..3: C (n_tok x 16 int32), 4 and 5: A (n_tok x 32 int8), 6 and 7: B (8 x 64 u8). */
static void amx_config(int n_tok)
{
    amx_cfg_t c;
    memset(&c, 0, sizeof(c));
    c.palette = 1;
    for (int i = 0; i < 4; i++) {
        c.rows[i] = (uint8_t)n_tok;
        c.colsb[i] = 64;
    }
    for (int i = 4; i < 6; i++) {
        c.rows[i] = (uint8_t)n_tok;
        c.colsb[i] = 32;
    }
    for (int i = 6; i < 8; i++) {
        c.rows[i] = 8;
        c.colsb[i] = 64;
    }
    _tile_loadconfig(&c);
}

#define AMX_INLINE static inline __attribute__((always_inline))
#ifndef AMX_PF_NEXT
#define AMX_PF_NEXT 1
#endif
#ifndef AMX_PF_ROWS
#define AMX_PF_ROWS 1
#endif
#ifndef AMX_PF_BLOCKS
#define AMX_PF_BLOCKS 8
#endif

/* r[c] <- [r[0][c], ..., r[15][c]]: 16 x 16 dwords transposed (unpack 32, unpack 64, two
 * rounds of 128-bit lane shuffles) */
AMX_INLINE void transpose16(__m512i r[16])
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
AMX_INLINE void headers_t(const uint8_t *blk, size_t row_bytes, int n_rows, __m512i d[4])
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

/* C_s = A_s . B_s for sub-block s into tile CT (constant tile numbers: macros) */
#define AMX_SUB(CT, AT, BT, s)                             \
    do {                                                   \
        _tile_zero(CT);                                    \
        _tile_loadd(AT, abase + 32 * (s), (long)a_stride); \
        _tile_loadd(BT, bbuf[s], 64);                      \
        _tile_dpbsud(CT, AT, BT);                          \
    } while (0)

/* What a super-block of the 16 rows contributes besides its 4-bit values, rows in the
 * lanes: d, dmin, the eight sub-block scales as floats, the eight mins in int16 pairs. */
typedef struct amx_rows_sb {
    __m512 dx, dmx, scf[8];
    __m512i mp[4];
} amx_rows_sb_t;

AMX_INLINE void rows_sb(const uint8_t *blk, size_t row_bytes, int n_rows, amx_rows_sb_t *o)
{
    const __m512i m6 = _mm512_set1_epi32(63), m4d = _mm512_set1_epi32(15);
    const __m512i m2 = _mm512_set1_epi32(3);
    __m512i hd[4];
    headers_t(blk, row_bytes, n_rows, hd);
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
AMX_INLINE void nibbles_t(const uint8_t *blk, size_t row_bytes, int n_rows, int h, __m512i v[16])
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
    transpose16(v);
}

/* The float steps of one super-block for a token (the order the file comment gives),
 * from its exact sub-block sums c[s] (rows in the lanes). */
AMX_INLINE __m512 sb_accumulate(__m512 acc, const __m512i c[8], const amx_rows_sb_t *rs,
                                const kern_block_q8_k *yb)
{
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(c[0]), rs->scf[0]);
    for (int s = 1; s < 8; s++) {
        f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c[s]), rs->scf[s], f);
    }
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

void kern_gemm_q4_k_amx(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                        const void *restrict a, size_t a_stride, int n_tok, float *restrict y,
                        int64_t y_stride)
{
    const int64_t nb = n / KERN_QKK;
    /* one token (decode): the sub-block sums by vpdpbusd on the transposed values against
     * the token's broadcast dwords, the same exact integers as the tiles give, without the
     * tile round trip through memory */
    const int tiles = n_tok > 1;
    _Alignas(64) uint8_t bbuf[8][8][64];  /* B tiles: sub-block, row of 4 bytes x 16 rows */
    _Alignas(64) int32_t cbuf[8][16][16]; /* C tiles: sub-block, token, row */
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[KERN_GEMM_TOK];
    for (int t = 0; t < n_tok; t++) {
        acc[t] = _mm512_setzero_ps();
    }
    if (tiles) {
        amx_config(n_tok);
    }
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)i * sizeof(kern_block_q4_k);
        /* 16 streams (one per row) are more than the hardware prefetcher follows well:
         * each row's block AMX_PF_BLOCKS ahead, into L2 */
        if (AMX_PF_NEXT) {
            /* the next 16 rows (the next call of a decode run), spread over this call */
            const size_t span = (16 * row_bytes + (size_t)nb - 1) / (size_t)nb;
            const char *p = (const char *)w + 16 * row_bytes + (size_t)i * span;
            for (size_t o = 0; o < span; o += 64) {
                _mm_prefetch(p + o, _MM_HINT_T1);
            }
        }
        if (AMX_PF_ROWS && i + AMX_PF_BLOCKS < nb) {
            for (int r = 0; r < n_rows; r++) {
                const char *p = (const char *)blk + (size_t)r * row_bytes +
                                AMX_PF_BLOCKS * sizeof(kern_block_q4_k);
                _mm_prefetch(p, _MM_HINT_T1);
                _mm_prefetch(p + 64, _MM_HINT_T1);
                _mm_prefetch(p + 128, _MM_HINT_T1);
            }
        }
        amx_rows_sb_t rs;
        rows_sb(blk, row_bytes, n_rows, &rs);
        if (!tiles) {
            const kern_block_q8_k *yb = (const kern_block_q8_k *)a + i;
            const int32_t *yq = (const int32_t *)(const void *)yb->qs;
            __m512i c[8];
            for (int h = 0; h < 2; h++) {
                __m512i v[16];
                nibbles_t(blk, row_bytes, n_rows, h, v);
                /* sub-blocks 4h..4h+3: v[kk] low and high nibbles, v[8 + kk] the same */
                const int32_t *q = yq + 32 * h;
                __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
                for (int kk = 0; kk < 8; kk++) {
                    c0 = _mm512_dpbusd_epi32(c0, _mm512_and_si512(v[kk], m4),
                                             _mm512_set1_epi32(q[kk]));
                    c1 = _mm512_dpbusd_epi32(c1, _mm512_and_si512(_mm512_srli_epi32(v[kk], 4), m4),
                                             _mm512_set1_epi32(q[8 + kk]));
                    c2 = _mm512_dpbusd_epi32(c2, _mm512_and_si512(v[8 + kk], m4),
                                             _mm512_set1_epi32(q[16 + kk]));
                    c3 = _mm512_dpbusd_epi32(c3,
                                             _mm512_and_si512(_mm512_srli_epi32(v[8 + kk], 4), m4),
                                             _mm512_set1_epi32(q[24 + kk]));
                }
                c[4 * h] = c0;
                c[4 * h + 1] = c1;
                c[4 * h + 2] = c2;
                c[4 * h + 3] = c3;
            }
            acc[0] = sb_accumulate(acc[0], c, &rs, yb);
            continue;
        }
        for (int h = 0; h < 2; h++) {
            __m512i v[16];
            nibbles_t(blk, row_bytes, n_rows, h, v);
            for (int cc = 0; cc < 16; cc++) {
                const int j = 2 * h + cc / 8, kk = cc % 8;
                _mm512_store_si512(bbuf[2 * j][kk], _mm512_and_si512(v[cc], m4));
                _mm512_store_si512(bbuf[2 * j + 1][kk],
                                   _mm512_and_si512(_mm512_srli_epi32(v[cc], 4), m4));
            }
        }
        /* the tokens' int8 of this super-block: offset 4 (after d) in their Q8_K blocks */
        const int8_t *abase = (const int8_t *)a + (size_t)i * sizeof(kern_block_q8_k) + 4;
        AMX_SUB(0, 4, 6, 0);
        AMX_SUB(1, 5, 7, 1);
        AMX_SUB(2, 4, 6, 2);
        AMX_SUB(3, 5, 7, 3);
        _tile_stored(0, cbuf[0], 64);
        _tile_stored(1, cbuf[1], 64);
        _tile_stored(2, cbuf[2], 64);
        _tile_stored(3, cbuf[3], 64);
        AMX_SUB(0, 4, 6, 4);
        AMX_SUB(1, 5, 7, 5);
        AMX_SUB(2, 4, 6, 6);
        AMX_SUB(3, 5, 7, 7);
        _tile_stored(0, cbuf[4], 64);
        _tile_stored(1, cbuf[5], 64);
        _tile_stored(2, cbuf[6], 64);
        _tile_stored(3, cbuf[7], 64);
        for (int t = 0; t < n_tok; t++) {
            __m512i c[8];
            for (int s = 0; s < 8; s++) {
                c[s] = _mm512_load_si512(cbuf[s][t]);
            }
            acc[t] = sb_accumulate(
                acc[t], c, &rs,
                (const kern_block_q8_k *)((const uint8_t *)a + (size_t)t * a_stride) + i);
        }
    }
    if (tiles) {
        _tile_release();
    }
    for (int t = 0; t < n_tok; t++) {
        _Alignas(64) float out[16];
        _mm512_store_ps(out, acc[t]);
        for (int r = 0; r < n_rows; r++) {
            y[t * y_stride + r] = out[r];
        }
    }
}
