/*
 * matmul.cu - matrix products on the GPU: y[p][r] = sum_k W[r, k] x[p][k].
 *
 * Quantized weights (every GGUF type of qblock.h) run on the tensor cores as int8:
 * activations are quantized once per product input exactly as the CPU quantizes them
 * (Q8_0, Q8_1 or Q8_K: the weight type's vec_dot_type), each weight sub-block is decoded
 * to int8 in registers straight from its GGUF block in device memory, and mma.sync
 * (.m16n8k32, or .m16n8k16 for the 16-element sub-blocks of Q2_K/Q3_K/Q6_K) gives the
 * exact integer sums. The float epilogue then follows the CPU's scalar vec_dot operation
 * by operation (qblock.h), block after block, so a product with one K segment equals the
 * CPU reference bit for bit.
 *
 * Tiles: a warp computes 16 weight rows x 8 columns (tokens, or token-expert pairs) per
 * mma, up to NT column groups at once, reading each weight block once for all of them;
 * a CTA is 4 warps (64 rows). Every output element is accumulated by one thread in block
 * order whatever the tile, so results do not depend on how many tokens the step has.
 * K may be split into S segments (more CTAs for a small matrix at batch 1); S is a
 * function of the weight's shape and the GPU only, the segments' partial sums are added
 * in segment order, so that too is the same for every step.
 *
 * Float weights (f32, f16, bf16) use FFMA with f32 activations (no rounding of x), one
 * warp per row, lanes striding K, a fixed reduction tree.
 *
 * Grouped products (MoE): the grid walks a device-side list of (expert, first row, rows)
 * tiles made by moe.cu, so one launch covers every expert that has tokens.
 */
#include "kernels/cuda/cuda_be.cuh"
#include "kernels/cuda/qblock.h"

__constant__ int8_t mm_iq4nl_tab[16] = QB_IQ4NL_VALUES;
__constant__ int8_t mm_mxfp4_tab[16] = QB_MXFP4_VALUES;

/* ---- activation formats ----------------------------------------------------------------- */

int cu_act_format(tdm_type_t t)
{
    switch (t) {
    case TDM_TYPE_Q4_0:
    case TDM_TYPE_Q5_0:
    case TDM_TYPE_Q8_0:
    case TDM_TYPE_IQ4_NL:
    case TDM_TYPE_MXFP4:
        return QB_ACT_Q8_0;
    case TDM_TYPE_Q4_1:
    case TDM_TYPE_Q5_1:
        return QB_ACT_Q8_1;
    case TDM_TYPE_Q2_K:
    case TDM_TYPE_Q3_K:
    case TDM_TYPE_Q4_K:
    case TDM_TYPE_Q5_K:
    case TDM_TYPE_Q6_K:
    case TDM_TYPE_IQ4_XS:
        return QB_ACT_Q8_K;
    case TDM_TYPE_F32:
    case TDM_TYPE_F16:
    case TDM_TYPE_BF16:
        return -1;
    default:
        return -2;
    }
}

static size_t a256(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

size_t cu_act_bytes(int fmt, int64_t n_rows, int64_t k)
{
    return (size_t)kern_cuda_act_bytes(fmt, n_rows, k);
}

cu_act_t cu_act_view(void *buf, int fmt, int64_t n_rows, int64_t k)
{
    cu_act_t a;
    memset(&a, 0, sizeof(a));
    unsigned char *p = (unsigned char *)buf;
    const size_t r = (size_t)n_rows, kk = (size_t)k;
    a.k = k;
    a.qs = (int8_t *)p;
    p += a256(r * kk);
    a.d = (float *)p;
    if (fmt == QB_ACT_Q8_K) {
        p += a256(r * (kk / 256) * 4);
        a.bsums = (int32_t *)p;
    } else {
        p += a256(r * (kk / 32) * 4);
        if (fmt == QB_ACT_Q8_1) {
            a.s = (float *)p;
        }
    }
    return a;
}

/* One warp per block of 32 (Q8_0 / Q8_1), as kern_from_float_q8_0 / _q8_1. */
/* Grids are 1-D, (row, group of blocks) flattened, so rows (tokens or token-expert pairs)
 * are not bound by the 65535 of a grid's y. */
__global__ void quantize_q8_kernel(const float *x, int64_t ldx, int64_t k, int with_sum, int8_t *qs,
                                   float *d, float *s, const int32_t *rows_dev, int groups)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = blockIdx.x / groups;
    if (rows_dev != NULL && row >= *rows_dev) {
        return;
    }
    const int64_t blk = (int64_t)(blockIdx.x % groups) * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk * 32 >= k) {
        return;
    }
    const float v = x[row * ldx + blk * 32 + lane];
    float amax = fabsf(v);
    for (int off = 16; off > 0; off >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    }
    const float dd = __fdiv_rn(amax, 127.0f);
    const float id = dd != 0.0f ? __fdiv_rn(1.0f, dd) : 0.0f;
    const int q = (int)roundf(__fmul_rn(v, id));
    qs[row * k + blk * 32 + lane] = (int8_t)q;
    int sum = q;
    for (int off = 16; off > 0; off >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, off);
    }
    if (lane == 0) {
        const int64_t nb = k / 32;
        d[row * nb + blk] = __half2float(__float2half_rn(dd));
        if (with_sum) {
            s[row * nb + blk] = __half2float(__float2half_rn(__fmul_rn((float)sum, dd)));
        }
    }
}

/* One warp per super-block of 256 (Q8_K), as kern_from_float_q8_k: the scale comes from
 * the first element of largest magnitude, values round half to even. */
__global__ void quantize_q8k_kernel(const float *x, int64_t ldx, int64_t k, int8_t *qs, float *d,
                                    int32_t *bsums, const int32_t *rows_dev, int groups)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = blockIdx.x / groups;
    if (rows_dev != NULL && row >= *rows_dev) {
        return;
    }
    const int64_t blk = (int64_t)(blockIdx.x % groups) * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk * 256 >= k) {
        return;
    }
    const float *src = x + row * ldx + blk * 256 + lane * 8;
    float v[8];
    float amax = 0.0f;
    int idx = 0x7fffffff;
    for (int i = 0; i < 8; i++) {
        v[i] = src[i];
        const float a = fabsf(v[i]);
        if (a > amax) {
            amax = a;
            idx = lane * 8 + i;
        }
    }
    for (int off = 16; off > 0; off >>= 1) {
        const float oa = __shfl_xor_sync(0xffffffffu, amax, off);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, off);
        if (oa > amax || (oa == amax && oi < idx)) {
            amax = oa;
            idx = oi;
        }
    }
    int8_t *q = qs + row * k + blk * 256 + lane * 8;
    const int64_t nb = k / 256;
    if (amax == 0.0f) {
        for (int i = 0; i < 8; i++) {
            q[i] = 0;
        }
        if ((lane & 1) == 0) {
            bsums[row * (k / 16) + blk * 16 + lane / 2] = 0;
        }
        if (lane == 0) {
            d[row * nb + blk] = 0.0f;
        }
        return;
    }
    const float mx = x[row * ldx + blk * 256 + idx];
    const float iscale = __fdiv_rn(-127.0f, mx);
    int sum = 0;
    for (int i = 0; i < 8; i++) {
        const float t = __fadd_rn(__fmul_rn(iscale, v[i]), 12582912.0f);
        int r = (int)(__float_as_uint(t) & 0x007FFFFFu) - 0x00400000;
        r = r < 127 ? r : 127;
        q[i] = (int8_t)r;
        sum += r;
    }
    /* lanes 2g and 2g+1 hold group g of 16 */
    sum += __shfl_down_sync(0xffffffffu, sum, 1);
    if ((lane & 1) == 0) {
        bsums[row * (k / 16) + blk * 16 + lane / 2] = sum;
    }
    if (lane == 0) {
        d[row * nb + blk] = __fdiv_rn(1.0f, iscale);
    }
}

void cu_quantize_act(cuda_backend_t *c, int fmt, const float *x, int64_t ldx, int64_t n_rows,
                     cu_act_t *a)
{
    cu_quantize_act_rows(c, fmt, x, ldx, n_rows, NULL, a);
}

void cu_quantize_act_rows(cuda_backend_t *c, int fmt, const float *x, int64_t ldx, int64_t n_rows,
                          const int32_t *rows_dev, cu_act_t *a)
{
    if (n_rows == 0) {
        return;
    }
    const int warps = 8;
    const int64_t nb = fmt == QB_ACT_Q8_K ? a->k / 256 : a->k / 32;
    const int groups = (int)((nb + warps - 1) / warps);
    const unsigned grid = (unsigned)(n_rows * groups);
    if (fmt == QB_ACT_Q8_K) {
        quantize_q8k_kernel<<<grid, 32 * warps, 0, c->stream>>>(x, ldx, a->k, a->qs, a->d, a->bsums,
                                                                rows_dev, groups);
    } else {
        quantize_q8_kernel<<<grid, 32 * warps, 0, c->stream>>>(x, ldx, a->k, fmt == QB_ACT_Q8_1,
                                                               a->qs, a->d, a->s, rows_dev, groups);
    }
    cu_check_launch(c, "quantize activations");
}

/* ---- the int8 tensor-core tile ------------------------------------------------------------- */

__device__ __forceinline__ void mma_k32(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
}

__device__ __forceinline__ void mma_k16(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 "
                 "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %7, %7, %7};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0), "r"(0));
}

/* Per-type constants: elements per block, bytes per block, sub-block width (32: k32
 * mma, 16: k16 mma). */
template <int T> struct qt;
#define QT(t, blk, bytes, sub)                                    \
    template <> struct qt<t> {                                    \
        static constexpr int BLK = blk, BYTES = bytes, SUB = sub; \
    }
QT(TDM_TYPE_Q4_0, 32, 18, 32);
QT(TDM_TYPE_Q4_1, 32, 20, 32);
QT(TDM_TYPE_Q5_0, 32, 22, 32);
QT(TDM_TYPE_Q5_1, 32, 24, 32);
QT(TDM_TYPE_Q8_0, 32, 34, 32);
QT(TDM_TYPE_IQ4_NL, 32, 18, 32);
QT(TDM_TYPE_MXFP4, 32, 17, 32);
QT(TDM_TYPE_Q4_K, 256, 144, 32);
QT(TDM_TYPE_Q5_K, 256, 176, 32);
QT(TDM_TYPE_IQ4_XS, 256, 136, 32);
QT(TDM_TYPE_Q2_K, 256, 84, 16);
QT(TDM_TYPE_Q3_K, 256, 110, 16);
QT(TDM_TYPE_Q6_K, 256, 210, 16);
#undef QT

/* The thread's A registers of sub-block `sub` of block b (row g: lo/hi; k16: lo only). */
template <int T>
__device__ __forceinline__ void decode_sub(const uint8_t *b, int sub, int tig, uint32_t *lo,
                                           uint32_t *hi)
{
    if constexpr (T == TDM_TYPE_Q4_0) {
        qb_q4_0_a32(b, tig, lo, hi);
    } else if constexpr (T == TDM_TYPE_Q4_1) {
        qb_q4_1_a32(b, tig, lo, hi);
    } else if constexpr (T == TDM_TYPE_Q5_0) {
        qb_q5_0_a32(b, tig, lo, hi);
    } else if constexpr (T == TDM_TYPE_Q5_1) {
        qb_q5_1_a32(b, tig, lo, hi);
    } else if constexpr (T == TDM_TYPE_Q8_0) {
        qb_q8_0_a32(b, tig, lo, hi);
    } else if constexpr (T == TDM_TYPE_IQ4_NL) {
        qb_iq4_nl_a32(b, tig, mm_iq4nl_tab, lo, hi);
    } else if constexpr (T == TDM_TYPE_MXFP4) {
        qb_mxfp4_a32(b, tig, mm_mxfp4_tab, lo, hi);
    } else if constexpr (T == TDM_TYPE_Q4_K) {
        qb_q4_k_a32(b, sub, tig, lo, hi);
    } else if constexpr (T == TDM_TYPE_Q5_K) {
        qb_q5_k_a32(b, sub, tig, lo, hi);
    } else if constexpr (T == TDM_TYPE_IQ4_XS) {
        qb_iq4_xs_a32(b, sub, tig, mm_iq4nl_tab, lo, hi);
    } else if constexpr (T == TDM_TYPE_Q2_K) {
        *lo = qb_q2_k_a16(b, sub, tig);
    } else if constexpr (T == TDM_TYPE_Q3_K) {
        *lo = qb_q3_k_a16(b, sub, tig);
    } else if constexpr (T == TDM_TYPE_Q6_K) {
        *lo = qb_q6_k_a16(b, sub, tig);
    }
}

/* The integer scale of sub-block `sub` (super-block types; 1 for the 32-element ones). */
template <int T> __device__ __forceinline__ int sub_scale(const uint8_t *b, int sub)
{
    if constexpr (T == TDM_TYPE_Q4_K || T == TDM_TYPE_Q5_K) {
        return qb_q4_k_scale(b, sub);
    } else if constexpr (T == TDM_TYPE_IQ4_XS) {
        return qb_iq4_xs_scale(b, sub);
    } else if constexpr (T == TDM_TYPE_Q2_K) {
        return qb_q2_k_scale(b, sub);
    } else if constexpr (T == TDM_TYPE_Q3_K) {
        return qb_q3_k_scale(b, sub);
    } else if constexpr (T == TDM_TYPE_Q6_K) {
        return qb_q6_k_scale(b, sub);
    } else {
        return 1;
    }
}

/* The block's float epilogue for one (row, token), as the CPU's vec_dot does it. */
template <int T>
__device__ __forceinline__ float epilogue(float acc, const uint8_t *b, int isum, float da, float sa,
                                          const int32_t *bs)
{
    if constexpr (T == TDM_TYPE_Q4_1 || T == TDM_TYPE_Q5_1) {
        return qb_epi_dm(acc, isum, qb_f16(qb_ld16(b)), da, qb_f16(qb_ld16(b + 2)), sa);
    } else if constexpr (T == TDM_TYPE_MXFP4) {
        return qb_epi_d(acc, isum, qb_e8m0_half(b[0]), da);
    } else if constexpr (qt<T>::BLK == 32) {
        return qb_epi_d(acc, isum, qb_f16(qb_ld16(b)), da);
    } else if constexpr (T == TDM_TYPE_Q4_K || T == TDM_TYPE_Q5_K) {
        return qb_epi_kmin(acc, isum, qb_q4_k_mins(b, bs), qb_f16(qb_ld16(b)),
                           qb_f16(qb_ld16(b + 2)), da);
    } else if constexpr (T == TDM_TYPE_Q2_K) {
        return qb_epi_kmin(acc, isum, qb_q2_k_mins(b, bs), qb_f16(qb_ld16(b + 80)),
                           qb_f16(qb_ld16(b + 82)), da);
    } else {
        const int off = T == TDM_TYPE_Q3_K ? 108 : (T == TDM_TYPE_Q6_K ? 208 : 0);
        return qb_epi_k(acc, isum, qb_f16(qb_ld16(b + off)), da);
    }
}

typedef struct mmq_args {
    const uint8_t *w;
    size_t row_bytes, w_stride;
    int64_t n, k;           /* weight rows, columns */
    const int8_t *aq;       /* activations: qs [rows][k] */
    const float *ad, *as;   /* d, s                      */
    const int32_t *abs;     /* bsums                     */
    const int32_t *act_idx; /* row p -> activation row   */
    float *y;
    int64_t ldy;
    float *partial; /* S > 1: [S][rows][n] */
    int nblk_seg;   /* blocks per K segment */
    int64_t rows;   /* rows of the product (grid bound for ungrouped) */
    const int32_t *tiles, *n_tiles;
} mmq_args_t;

#define MMQ_WARPS 4

template <int T, int NT> __global__ void __launch_bounds__(32 * MMQ_WARPS) mmq_kernel(mmq_args_t a)
{
    constexpr int BLK = qt<T>::BLK, BYTES = qt<T>::BYTES, SUB = qt<T>::SUB, NSUB = BLK / SUB;
    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    int e = 0, p0, cnt;
    if (a.tiles != NULL) {
        if ((int)blockIdx.x >= *a.n_tiles) {
            return;
        }
        e = a.tiles[3 * blockIdx.x];
        p0 = a.tiles[3 * blockIdx.x + 1];
        cnt = a.tiles[3 * blockIdx.x + 2];
    } else {
        p0 = blockIdx.x * 8 * NT;
        cnt = (int)(a.rows - p0 < 8 * NT ? a.rows - p0 : 8 * NT);
    }
    const int64_t r0 = (int64_t)blockIdx.y * 16 * MMQ_WARPS + (threadIdx.x >> 5) * 16;
    if (r0 >= a.n) {
        return;
    }
    const int64_t ra = r0 + g, rb = r0 + g + 8;
    const uint8_t *wbase = a.w + (size_t)e * a.w_stride;
    const uint8_t *wa = wbase + (size_t)(ra < a.n ? ra : a.n - 1) * a.row_bytes;
    const uint8_t *wb = wbase + (size_t)(rb < a.n ? rb : a.n - 1) * a.row_bytes;
    /* the activation rows this thread loads (column g of each group) and those its outputs
     * belong to (columns 2 tig, 2 tig + 1) */
    int64_t lrow[NT], orow[NT][2];
    bool lok[NT], ook[NT][2];
    for (int j = 0; j < NT; j++) {
        const int lb = 8 * j + g;
        lok[j] = lb < cnt;
        lrow[j] = lok[j] ? (a.act_idx != NULL ? a.act_idx[p0 + lb] : p0 + lb) : 0;
        for (int h = 0; h < 2; h++) {
            const int lc = 8 * j + 2 * tig + h;
            ook[j][h] = lc < cnt;
            orow[j][h] = ook[j][h] ? (a.act_idx != NULL ? a.act_idx[p0 + lc] : p0 + lc) : 0;
        }
    }
    const int64_t nblk = a.k / BLK;
    const int64_t b_lo = (int64_t)blockIdx.z * a.nblk_seg;
    const int64_t b_hi = b_lo + a.nblk_seg < nblk ? b_lo + a.nblk_seg : nblk;
    float acc[NT][4];
    for (int j = 0; j < NT; j++) {
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    }
    for (int64_t bi = b_lo; bi < b_hi; bi++) {
        const uint8_t *ba = wa + bi * BYTES, *bb = wb + bi * BYTES;
        int isum[NT][4];
        for (int j = 0; j < NT; j++) {
            isum[j][0] = isum[j][1] = isum[j][2] = isum[j][3] = 0;
        }
        for (int sub = 0; sub < NSUB; sub++) {
            uint32_t alo = 0, ahi = 0, blo = 0, bhi = 0;
            decode_sub<T>(ba, sub, tig, &alo, &ahi);
            decode_sub<T>(bb, sub, tig, &blo, &bhi);
            const int sca = sub_scale<T>(ba, sub), scb = sub_scale<T>(bb, sub);
            for (int j = 0; j < NT; j++) {
                const int8_t *q = a.aq + lrow[j] * a.k + bi * BLK + sub * SUB + 4 * tig;
                int c[4];
                if constexpr (SUB == 32) {
                    const uint32_t b0 = lok[j] ? *(const uint32_t *)q : 0u;
                    const uint32_t b1 = lok[j] ? *(const uint32_t *)(q + 16) : 0u;
                    mma_k32(c, alo, blo, ahi, bhi, b0, b1);
                } else {
                    const uint32_t b0 = lok[j] ? *(const uint32_t *)q : 0u;
                    mma_k16(c, alo, blo, b0);
                }
                isum[j][0] += sca * c[0];
                isum[j][1] += sca * c[1];
                isum[j][2] += scb * c[2];
                isum[j][3] += scb * c[3];
            }
        }
        for (int j = 0; j < NT; j++) {
            for (int i = 0; i < 4; i++) {
                const int h = i & 1;
                if (!ook[j][h]) {
                    continue;
                }
                const int64_t ar = orow[j][h];
                const uint8_t *wblk = i < 2 ? ba : bb;
                float da, sa = 0.0f;
                const int32_t *bs = NULL;
                if constexpr (BLK == 32) {
                    da = a.ad[ar * (a.k / 32) + bi];
                    if constexpr (T == TDM_TYPE_Q4_1 || T == TDM_TYPE_Q5_1) {
                        sa = a.as[ar * (a.k / 32) + bi];
                    }
                } else {
                    da = a.ad[ar * (a.k / 256) + bi];
                    bs = a.abs + ar * (a.k / 16) + bi * 16;
                }
                acc[j][i] = epilogue<T>(acc[j][i], wblk, isum[j][i], da, sa, bs);
            }
        }
    }
    for (int j = 0; j < NT; j++) {
        for (int i = 0; i < 4; i++) {
            const int h = i & 1;
            const int64_t r = i < 2 ? ra : rb;
            if (!ook[j][h] || r >= a.n) {
                continue;
            }
            const int64_t p = p0 + 8 * j + 2 * tig + h; /* output row: the product's row */
            if (a.partial != NULL) {
                a.partial[((int64_t)blockIdx.z * a.rows + p) * a.n + r] = acc[j][i];
            } else {
                a.y[p * a.ldy + r] = acc[j][i];
            }
        }
    }
}

/* y[p][r] = partial[0][p][r] + partial[1][p][r] + ... in segment order. */
__global__ void splitk_reduce_kernel(const float *partial, int s, int64_t rows, int64_t n, float *y,
                                     int64_t ldy, const int32_t *rows_dev)
{
    const int64_t lim = rows_dev != NULL ? (int64_t)*rows_dev : rows;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < lim * n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t p = i / n, r = i % n;
        float v = partial[i];
        for (int z = 1; z < s; z++) {
            v = __fadd_rn(v, partial[((int64_t)z * rows + p) * n + r]);
        }
        y[p * ldy + r] = v;
    }
}

/* ---- float weights ------------------------------------------------------------------------ */

#define FMM_TOK 8

template <int T> __device__ __forceinline__ float wload(const uint8_t *row, int64_t k)
{
    if constexpr (T == TDM_TYPE_F32) {
        return ((const float *)row)[k];
    } else if constexpr (T == TDM_TYPE_F16) {
        return qb_f16(((const uint16_t *)row)[k]);
    } else {
        return qb_bf16(((const uint16_t *)row)[k]);
    }
}

template <int T>
__global__ void fmm_kernel(const uint8_t *w, size_t row_bytes, size_t w_stride, int64_t n,
                           int64_t k, const float *x, int64_t ldx, const int32_t *act_idx, float *y,
                           int64_t ldy, int64_t rows, const int32_t *tiles, const int32_t *n_tiles)
{
    /* rows on the grid's x (a vocabulary of 262144 rows is 65536 blocks of 4), column
     * tiles on y */
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    int e = 0, p0, cnt;
    if (tiles != NULL) {
        if ((int)blockIdx.y >= *n_tiles) {
            return;
        }
        e = tiles[3 * blockIdx.y];
        p0 = tiles[3 * blockIdx.y + 1];
        cnt = tiles[3 * blockIdx.y + 2];
    } else {
        p0 = blockIdx.y * FMM_TOK;
        cnt = (int)(rows - p0 < FMM_TOK ? rows - p0 : FMM_TOK);
    }
    if (r >= n) {
        return;
    }
    const uint8_t *row = w + (size_t)e * w_stride + (size_t)r * row_bytes;
    float acc[FMM_TOK];
    const float *xr[FMM_TOK];
    for (int j = 0; j < FMM_TOK; j++) {
        acc[j] = 0.0f;
        const int64_t pr = j < cnt ? (act_idx != NULL ? act_idx[p0 + j] : p0 + j) : 0;
        xr[j] = x + pr * ldx;
    }
    for (int64_t kk = lane; kk < k; kk += 32) {
        const float wv = wload<T>(row, kk);
        for (int j = 0; j < FMM_TOK; j++) {
            if (j < cnt) {
                acc[j] = fmaf(wv, xr[j][kk], acc[j]);
            }
        }
    }
    for (int j = 0; j < FMM_TOK; j++) {
        for (int off = 16; off > 0; off >>= 1) {
            acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], off);
        }
    }
    if (lane == 0) {
        for (int j = 0; j < cnt; j++) {
            y[(int64_t)(p0 + j) * ldy + r] = acc[j];
        }
    }
}

/* ---- dispatch ------------------------------------------------------------------------------- */

int cu_splitk(const cuda_backend_t *c, const kern_weight_t *w, int64_t rows_max)
{
    const int64_t blk = tdm_type_traits(w->type)->blck;
    const int64_t nblk = w->n_cols / (blk > 0 ? blk : 1);
    const int64_t row_blocks = (w->n_rows + 16 * MMQ_WARPS - 1) / (16 * MMQ_WARPS);
    int64_t s = (2 * (int64_t)c->n_sm + row_blocks - 1) / row_blocks;
    s = s < 1 ? 1 : (s > 8 ? 8 : s);
    s = s < nblk / 4 ? s : (nblk / 4 > 0 ? nblk / 4 : 1);
    while (s > 1 && (uint64_t)s * (uint64_t)rows_max * (uint64_t)w->n_rows > c->partial_floats) {
        s--;
    }
    if (c->splitk_force >= 1 && c->splitk_force < s) {
        s = c->splitk_force; /* tests: 1 compares with the CPU bit for bit */
    }
    return (int)s;
}

template <int T>
static void launch_q(cuda_backend_t *c, const cu_mm_t *mm, const mmq_args_t &a0, int s, int nt,
                     unsigned grid_x, unsigned grid_y)
{
    mmq_args_t a = a0;
    dim3 grid(grid_x, grid_y, (unsigned)s);
    if (nt == 1) {
        mmq_kernel<T, 1><<<grid, 32 * MMQ_WARPS, 0, c->stream>>>(a);
    } else {
        mmq_kernel<T, 4><<<grid, 32 * MMQ_WARPS, 0, c->stream>>>(a);
    }
    (void)mm;
}

void cu_matmul_launch(cuda_backend_t *c, const cu_mm_t *mm)
{
    const kern_weight_t *w = mm->w;
    const int fmt = cu_act_format(w->type);
    if (fmt == -2) {
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: matmul of type %s",
                     tdm_type_name(w->type));
        return;
    }
    if (mm->n_rows_x == 0 || w->n_rows == 0) {
        return;
    }
    const bool grouped = mm->tiles != NULL;
    if (fmt == -1) {
        const int warps = 4;
        const unsigned gx =
            grouped ? (unsigned)mm->max_tiles : (unsigned)((mm->n_rows_x + FMM_TOK - 1) / FMM_TOK);
        dim3 grid(gx, (unsigned)((w->n_rows + warps - 1) / warps));
#define FMM(t)                                                                             \
    fmm_kernel<t><<<grid, 32 * warps, 0, c->stream>>>(                                     \
        (const uint8_t *)w->data, w->row_bytes, mm->w_stride, w->n_rows, w->n_cols, mm->x, \
        mm->ldx, mm->act_idx, mm->y, mm->ldy, mm->n_rows_x, mm->tiles, mm->n_tiles)
        if (w->type == TDM_TYPE_F32) {
            FMM(TDM_TYPE_F32);
        } else if (w->type == TDM_TYPE_F16) {
            FMM(TDM_TYPE_F16);
        } else {
            FMM(TDM_TYPE_BF16);
        }
#undef FMM
        cu_check_launch(c, "matmul (float)");
        return;
    }
    /* grouped products have at most 8 rows per tile (moe.cu); plain ones 32 */
    const int nt = grouped || mm->n_rows_x <= 8 ? 1 : 4;
    const int64_t rows_max = grouped ? c->max_pairs : c->r.n_tok;
    const int s = cu_splitk(c, w, rows_max);
    const int64_t blk = tdm_type_traits(w->type)->blck, nblk = w->n_cols / blk;
    mmq_args_t a;
    memset(&a, 0, sizeof(a));
    a.w = (const uint8_t *)w->data;
    a.row_bytes = w->row_bytes;
    a.w_stride = mm->w_stride;
    a.n = w->n_rows;
    a.k = w->n_cols;
    a.aq = mm->act->qs;
    a.ad = mm->act->d;
    a.as = mm->act->s;
    a.abs = mm->act->bsums;
    a.act_idx = mm->act_idx;
    a.y = mm->y;
    a.ldy = mm->ldy;
    a.nblk_seg = (int)((nblk + s - 1) / s);
    const int s_eff = (int)((nblk + a.nblk_seg - 1) / a.nblk_seg);
    a.rows = grouped ? c->max_pairs : mm->n_rows_x;
    a.partial = s_eff > 1 ? c->partial : NULL;
    a.tiles = mm->tiles;
    a.n_tiles = mm->n_tiles;
    const unsigned gx =
        grouped ? (unsigned)mm->max_tiles : (unsigned)((mm->n_rows_x + 8 * nt - 1) / (8 * nt));
    const unsigned gy = (unsigned)((w->n_rows + 16 * MMQ_WARPS - 1) / (16 * MMQ_WARPS));
    switch (w->type) {
#define CASE(t)                                   \
    case t:                                       \
        launch_q<t>(c, mm, a, s_eff, nt, gx, gy); \
        break;
        CASE(TDM_TYPE_Q4_0)
        CASE(TDM_TYPE_Q4_1)
        CASE(TDM_TYPE_Q5_0)
        CASE(TDM_TYPE_Q5_1)
        CASE(TDM_TYPE_Q8_0)
        CASE(TDM_TYPE_IQ4_NL)
        CASE(TDM_TYPE_MXFP4)
        CASE(TDM_TYPE_Q2_K)
        CASE(TDM_TYPE_Q3_K)
        CASE(TDM_TYPE_Q4_K)
        CASE(TDM_TYPE_Q5_K)
        CASE(TDM_TYPE_Q6_K)
        CASE(TDM_TYPE_IQ4_XS)
#undef CASE
    default:
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: matmul of type %s",
                     tdm_type_name(w->type));
        return;
    }
    if (!cu_check_launch(c, "matmul") || s_eff == 1) {
        return;
    }
    const int64_t total = a.rows * w->n_rows;
    const int64_t want = (total + 255) / 256;
    const unsigned blocks = (unsigned)(want < 1 ? 1 : (want > 8192 ? 8192 : want));
    splitk_reduce_kernel<<<blocks, 256, 0, c->stream>>>(c->partial, s_eff, a.rows, w->n_rows, mm->y,
                                                        mm->ldy, grouped ? mm->n_tiles + 1 : NULL);
    cu_check_launch(c, "matmul split-K reduce");
}
