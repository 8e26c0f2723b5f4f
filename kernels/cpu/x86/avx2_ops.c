/*
 * avx2_ops.c - AVX2 + FMA versions of the forward pass's f32 row ops: attention of one
 * query head over the paged KV cache and SwiGLU. Compiled with -mavx2 -mfma; called only
 * after run-time detection. The references are in ops_attn.c / ops_elementwise.c.
 */
#include "kernels/cpu/vec.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

/* exp(x) for x <= 0 (softmax) or any x in [-88, 88] (SiLU), Cephes' single-precision
 * polynomial: relative error ~2 ulp; below -87.3 the result flushes towards 0. */
static inline __m256 exp256(__m256 x)
{
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447504f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline float hsum256(__m256 v)
{
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* max(init, x[lo..hi)), eight lanes at a time: a max is exact, so the lane order does not
 * change it (a serial vmaxss chain was a sixth of a long prompt's attention time). */
static inline float max_span(const float *x, int32_t lo, int32_t hi, float init)
{
    __m256 m = _mm256_set1_ps(init);
    int32_t j = lo;
    for (; j + 8 <= hi; j += 8) {
        m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float mx = _mm_cvtss_f32(h);
    for (; j < hi; j++) {
        mx = x[j] > mx ? x[j] : mx;
    }
    return mx;
}

/* q . k for 4 keys (hd a multiple of 8) -> 4 floats */
static inline __m128 dot4(const float *q, const float *k0, const float *k1, const float *k2,
                          const float *k3, int hd)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int c = 0; c < hd; c += 8) {
        const __m256 qv = _mm256_loadu_ps(q + c);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + c), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + c), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + c), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + c), a3);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* dot4 for two query rows at once (the same four keys): each row's four results are
 * dot4's bit for bit (the same fma chains, the same reduction), with half the key loads
 * per product. */
static inline void dot4x2(const float *q0, const float *q1, const float *k0, int hd, __m128 *r0,
                          __m128 *r1)
{
    const float *k1 = k0 + hd, *k2 = k0 + 2 * hd, *k3 = k0 + 3 * hd;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    for (int c = 0; c < hd; c += 8) {
        const __m256 qa = _mm256_loadu_ps(q0 + c), qb = _mm256_loadu_ps(q1 + c);
        const __m256 x0 = _mm256_loadu_ps(k0 + c), x1 = _mm256_loadu_ps(k1 + c);
        a0 = _mm256_fmadd_ps(qa, x0, a0);
        b0 = _mm256_fmadd_ps(qb, x0, b0);
        a1 = _mm256_fmadd_ps(qa, x1, a1);
        b1 = _mm256_fmadd_ps(qb, x1, b1);
        const __m256 x2 = _mm256_loadu_ps(k2 + c), x3 = _mm256_loadu_ps(k3 + c);
        a2 = _mm256_fmadd_ps(qa, x2, a2);
        b2 = _mm256_fmadd_ps(qb, x2, b2);
        a3 = _mm256_fmadd_ps(qa, x3, a3);
        b3 = _mm256_fmadd_ps(qb, x3, b3);
    }
    const __m256 ha = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 hb = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
    *r0 = _mm_add_ps(_mm256_castps256_ps128(ha), _mm256_extractf128_ps(ha, 1));
    *r1 = _mm_add_ps(_mm256_castps256_ps128(hb), _mm256_extractf128_ps(hb, 1));
}

static inline float dot1(const float *q, const float *k, int hd)
{
    __m256 a = _mm256_setzero_ps();
    for (int c = 0; c < hd; c += 8) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), a);
    }
    return hsum256(a);
}

#define ATTN_CHUNK 64 /* output dims accumulated in registers per pass over the values */

/* One row is a tile of one (kern_attn_tile_f32_avx2 below): the same arithmetic by
 * construction, so a row's result never depends on the tile it was computed in. */
void kern_attn_head_f32_avx2(float *out, const float *q, const float *k, const float *v,
                             const int32_t *blocks, size_t block_stride, int block_tokens,
                             int head_dim, const kern_attn_span_t *sp, float *scores)
{
    float acc[KERN_ATTN_AVX2_MAX_HD];
    const kern_attn_row_t row = {q, out, *sp};
    kern_attn_tile_f32_avx2(&row, 1, k, v, blocks, block_stride, block_tokens, head_dim, scores, 0,
                            acc);
}

/*
 * The tile version: the loops of kern_attn_head_f32_avx2 turned inside out so a block of
 * keys (then of values) is loaded once and used by every row while it sits in L1. Per row
 * and per key the arithmetic is unchanged: a key's score comes from dot4 when it falls in
 * a whole group of four counted from the start of the row's segment of that block, else
 * from dot1 (the two reduce in different orders); the softmax is the same code; each
 * output element is the same fma chain over the keys in ascending order, kept in acc
 * between blocks.
 */
void kern_attn_tile_f32_avx2(const kern_attn_row_t *rows, int n_rows, const float *k,
                             const float *v, const int32_t *blocks, size_t block_stride,
                             int block_tokens, int head_dim, float *scores, size_t ld_scores,
                             float *acc)
{
    const int B = block_tokens, hd = head_dim;
    int32_t lo = rows[0].sp.lo, hi = rows[0].sp.hi;
    for (int r = 1; r < n_rows; r++) {
        lo = rows[r].sp.lo < lo ? rows[r].sp.lo : lo;
        hi = rows[r].sp.hi > hi ? rows[r].sp.hi : hi;
    }
    const int32_t b_first = lo - lo % B;
    /* scores */
    for (int32_t b0 = b_first; b0 < hi; b0 += B) {
        for (int r = 0; r < n_rows; r++) {
            const kern_attn_span_t *sp = &rows[r].sp;
            const int32_t s = sp->lo > b0 ? sp->lo : b0;
            const int32_t e = sp->hi < b0 + B ? sp->hi : b0 + B;
            if (s >= e) {
                continue;
            }
            /* the block's pointer only once a row sees it: a block no row sees may be
             * gone (-1 in a sliding table) */
            float *sc = scores + (size_t)r * ld_scores + s;
            const float *kr0 = k + (size_t)blocks[b0 / B] * block_stride + (size_t)(s - b0) * hd;
            const float *q = rows[r].q;
            const int nj = (int)(e - s);
            int j = 0;
            const kern_attn_span_t *nx = r + 1 < n_rows ? &rows[r + 1].sp : NULL;
            if (nx != NULL && (nx->lo > b0 ? nx->lo : b0) == s &&
                (nx->hi < b0 + B ? nx->hi : b0 + B) == e) {
                /* the next row has the same segment of this block: both rows at once */
                const kern_attn_span_t *sp1 = &rows[r + 1].sp;
                float *sc1 = scores + (size_t)(r + 1) * ld_scores + s;
                const float *q1 = rows[r + 1].q;
                for (; j + 4 <= nj; j += 4) {
                    __m128 d0, d1;
                    dot4x2(q, q1, kr0 + (size_t)j * hd, hd, &d0, &d1);
                    _mm_storeu_ps(sc + j, _mm_mul_ps(d0, _mm_set1_ps(sp->scale)));
                    _mm_storeu_ps(sc1 + j, _mm_mul_ps(d1, _mm_set1_ps(sp1->scale)));
                }
                for (int jj = j; jj < nj; jj++) {
                    sc1[jj] = dot1(q1, kr0 + (size_t)jj * hd, hd) * sp1->scale;
                }
                r++; /* the loop's r++ then moves past the pair */
            }
            for (; j + 4 <= nj; j += 4) {
                const float *kr = kr0 + (size_t)j * hd;
                const __m128 d = dot4(q, kr, kr + hd, kr + 2 * hd, kr + 3 * hd, hd);
                _mm_storeu_ps(sc + j, _mm_mul_ps(d, _mm_set1_ps(sp->scale)));
            }
            for (; j < nj; j++) {
                sc[j] = dot1(q, kr0 + (size_t)j * hd, hd) * sp->scale;
            }
        }
    }
    /* softmax numerators per row and the reciprocals of their sums (n_rows <= 32:
     * kern_op_attn_tile splits larger tiles) */
    float inv[32];
    for (int r = 0; r < n_rows; r++) {
        const kern_attn_span_t *sp = &rows[r].sp;
        float *sc = scores + (size_t)r * ld_scores;
        const float mx = max_span(sc, sp->lo, sp->hi, sp->sink);
        const __m256 vmx = _mm256_set1_ps(mx);
        __m256 vsum = _mm256_setzero_ps();
        int32_t j = sp->lo;
        for (; j + 8 <= sp->hi; j += 8) {
            const __m256 ex = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vmx));
            _mm256_storeu_ps(sc + j, ex);
            vsum = _mm256_add_ps(vsum, ex);
        }
        double sum = hsum256(vsum);
        for (; j < sp->hi; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        sum += expf(sp->sink - mx);
        inv[r] = (float)(1.0 / sum);
        memset(acc + (size_t)r * hd, 0, (size_t)hd * sizeof(float));
    }
    /* weighted sums of the values, block by block, ATTN_CHUNK dims in registers */
    for (int32_t b0 = b_first; b0 < hi; b0 += B) {
        for (int r = 0; r < n_rows; r++) {
            const kern_attn_span_t *sp = &rows[r].sp;
            const int32_t s = sp->lo > b0 ? sp->lo : b0;
            const int32_t e = sp->hi < b0 + B ? sp->hi : b0 + B;
            if (s >= e) {
                continue;
            }
            const float *sc = scores + (size_t)r * ld_scores;
            const float *vb = v + (size_t)blocks[b0 / B] * block_stride;
            float *ar = acc + (size_t)r * hd;
            for (int c0 = 0; c0 < hd; c0 += ATTN_CHUNK) {
                const int nc = hd - c0 < ATTN_CHUNK ? (hd - c0) / 8 : ATTN_CHUNK / 8;
                __m256 o[ATTN_CHUNK / 8];
                for (int c = 0; c < ATTN_CHUNK / 8; c++) {
                    o[c] = c < nc ? _mm256_loadu_ps(ar + c0 + 8 * c) : _mm256_setzero_ps();
                }
                for (int32_t j = s; j < e; j++) {
                    const __m256 w = _mm256_set1_ps(sc[j]);
                    const float *vr = vb + (size_t)(j - b0) * hd + c0;
                    if (nc == ATTN_CHUNK / 8) {
                        /* a constant trip count keeps o[] in registers */
                        for (int c = 0; c < ATTN_CHUNK / 8; c++) {
                            o[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * c), o[c]);
                        }
                    } else {
                        for (int c = 0; c < nc; c++) {
                            o[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * c), o[c]);
                        }
                    }
                }
                for (int c = 0; c < nc; c++) {
                    _mm256_storeu_ps(ar + c0 + 8 * c, o[c]);
                }
            }
        }
    }
    for (int r = 0; r < n_rows; r++) {
        const __m256 vi = _mm256_set1_ps(inv[r]);
        const float *ar = acc + (size_t)r * hd;
        for (int c = 0; c < hd; c += 8) {
            _mm256_storeu_ps(rows[r].out + c, _mm256_mul_ps(_mm256_loadu_ps(ar + c), vi));
        }
    }
}

/* n f16 values (n % 8 == 0) to f32 with F16C: exact, as every f16 is an f32, so the same
 * bits as the reference conversion. */
void kern_f16_to_f32_avx2(const void *src, float *dst, int n)
{
    const uint16_t *s = src;
    for (int i = 0; i < n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    }
}

void kern_silu_mul_f32_avx2(float *out, const float *gate, const float *up, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp256(_mm256_xor_ps(g, sign)); /* exp(-g) */
        const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    if (i < n) {
        /* the tail through the same vector code (zero-padded), so an element's result does
         * not depend on where it sits in the array */
        float g8[8] = {0}, u8[8] = {0}, o8[8];
        for (int64_t k = i; k < n; k++) {
            g8[k - i] = gate[k];
            u8[k - i] = up[k];
        }
        const __m256 g = _mm256_loadu_ps(g8);
        const __m256 e = exp256(_mm256_xor_ps(g, sign));
        _mm256_storeu_ps(
            o8, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(u8)));
        for (int64_t k = i; k < n; k++) {
            out[k] = o8[k - i];
        }
    }
}
