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
#include "kernels/cpu/x86/q4k_lanes.h"

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

/* C_s = A_s . B_s for sub-block s into tile CT (constant tile numbers: macros) */
#define AMX_SUB(CT, AT, BT, s)                             \
    do {                                                   \
        _tile_zero(CT);                                    \
        _tile_loadd(AT, abase + 32 * (s), (long)a_stride); \
        _tile_loadd(BT, bbuf[s], 64);                      \
        _tile_dpbsud(CT, AT, BT);                          \
    } while (0)

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
    __m512 acc[KERN_GEMM_TOK];
    for (int t = 0; t < n_tok; t++) {
        acc[t] = _mm512_setzero_ps();
    }
    if (tiles) {
        amx_config(n_tok);
    }
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)i * sizeof(kern_block_q4_k);
        q4l_prefetch(w, row_bytes, n_rows, nb, i);
        q4l_rows_sb_t rs;
        q4l_rows_sb(blk, row_bytes, n_rows, &rs);
        if (!tiles) {
            acc[0] =
                q4l_sb_one(acc[0], blk, row_bytes, n_rows, &rs, (const kern_block_q8_k *)a + i);
            continue;
        }
        q4l_unpack(blk, row_bytes, n_rows, bbuf);
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
            acc[t] = q4l_sb_accumulate(
                acc[t], c, &rs,
                (const kern_block_q8_k *)((const uint8_t *)a + (size_t)t * a_stride) + i);
        }
    }
    if (tiles) {
        _tile_release();
    }
    q4l_store(acc, n_rows, n_tok, y, y_stride);
}
