/*
 * avx512_gemm.c - Q4_K x Q8_K products on AVX-512 VNNI without AMX: every Q4_K product of
 * a context at the AVX-512 level that has no AMX (or TANDEM_CPU_AMX=0), prefill and decode.
 *
 * One call computes up to 16 weight rows x 16 tokens with the rows in the 16 lanes
 * (q4k_lanes.h): per super-block the rows' 4-bit values are unpacked once into 4 KiB of u8
 * laid out for vpdpbusd (a dword lane holds 4 consecutive weights of one row), then every
 * token of the call multiplies them against its broadcast activation dwords. Unpacking
 * (and the 16 x 16 transposes, on the shuffle port) is paid once per super-block for all
 * the call's tokens, against once per 4 tokens in the row-major tiles of avx512_quant.c,
 * and each vpdpbusd does 64 multiply-adds where those tiles need vpmaddubsw + vpdpwssd:
 * a MoE expert that sees ~8 tokens of a prompt is where this pays.
 *
 * The integer sums and float steps are those of the AMX product (amx_quant.c), so a
 * (row, token) gets the same bits with AMX or without, whatever the batch: decode (one
 * token) takes q4l_sb_one, the AMX product's own one-token path.
 */
#include "kernels/cpu/x86/q4k_lanes.h"

/* Tokens per group: their sub-block sums and running f stay in registers (2 x NT
 * vectors), and one load of a weight vector serves them all. */
#define GEMM_TOK_GROUP 8

/* NT tokens of super-block i (activation rows a + t * as) against the unpacked values b:
 * per sub-block s the tokens' sums C_s, folded into f at once in q4l_sb_accumulate's
 * order, then the super-block's float steps into acc[t]. */
Q4L_INLINE void tokens_sb(const uint8_t b[8][8][64], const q4l_rows_sb_t *rs, const uint8_t *a,
                          size_t as, int64_t i, __m512 *acc, const int NT)
{
    const kern_block_q8_k *yb[GEMM_TOK_GROUP];
    __m512 f[GEMM_TOK_GROUP];
    for (int t = 0; t < NT; t++) {
        yb[t] = (const kern_block_q8_k *)(a + (size_t)t * as) + i;
        f[t] = _mm512_setzero_ps();
    }
    for (int s = 0; s < 8; s++) {
        __m512i c[GEMM_TOK_GROUP];
        for (int t = 0; t < NT; t++) {
            c[t] = _mm512_setzero_si512();
        }
        for (int kk = 0; kk < 8; kk++) {
            const __m512i wv = _mm512_load_si512(b[s][kk]);
            for (int t = 0; t < NT; t++) {
                const uint32_t q = kern_load_u32((const uint8_t *)yb[t]->qs + 32 * s + 4 * kk);
                c[t] = _mm512_dpbusd_epi32(c[t], wv, _mm512_set1_epi32((int)q));
            }
        }
        for (int t = 0; t < NT; t++) {
            f[t] = q4l_sb_f_step(f[t], c[t], rs, s);
        }
    }
    for (int t = 0; t < NT; t++) {
        acc[t] = q4l_sb_finish(acc[t], f[t], rs, yb[t]);
    }
}

void kern_gemm_q4_k_avx512(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                           const void *restrict a, size_t a_stride, int n_tok, float *restrict y,
                           int64_t y_stride)
{
    const int64_t nb = n / KERN_QKK;
    _Alignas(64) uint8_t b[8][8][64]; /* sub-block, dword, rows' 4 bytes x 16 */
    __m512 acc[KERN_GEMM_TOK];
    for (int t = 0; t < n_tok; t++) {
        acc[t] = _mm512_setzero_ps();
    }
    const uint8_t *act = a;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)i * sizeof(kern_block_q4_k);
        q4l_prefetch(w, row_bytes, n_rows, nb, i);
        q4l_rows_sb_t rs;
        q4l_rows_sb(blk, row_bytes, n_rows, &rs);
        if (n_tok == 1) { /* decode: the values stay in registers */
            acc[0] =
                q4l_sb_one(acc[0], blk, row_bytes, n_rows, &rs, (const kern_block_q8_k *)a + i);
            continue;
        }
        q4l_unpack(blk, row_bytes, n_rows, b);
        int t = 0;
        for (; t + GEMM_TOK_GROUP <= n_tok; t += GEMM_TOK_GROUP) {
            tokens_sb(b, &rs, act + (size_t)t * a_stride, a_stride, i, acc + t, GEMM_TOK_GROUP);
        }
        if (n_tok - t >= 4) {
            tokens_sb(b, &rs, act + (size_t)t * a_stride, a_stride, i, acc + t, 4);
            t += 4;
        }
        if (n_tok - t >= 2) {
            tokens_sb(b, &rs, act + (size_t)t * a_stride, a_stride, i, acc + t, 2);
            t += 2;
        }
        if (t < n_tok) {
            tokens_sb(b, &rs, act + (size_t)t * a_stride, a_stride, i, acc + t, 1);
        }
    }
    q4l_store(acc, n_rows, n_tok, y, y_stride);
}
