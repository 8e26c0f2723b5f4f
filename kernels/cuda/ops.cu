/*
 * ops.cu - the CUDA backend's row and element-wise ops: embedding rows of any type, the
 * rows that want logits, RMSNorm (whole, or in two halves: sum of squares, then apply),
 * RoPE, SwiGLU, add and a linear layer's bias.
 *
 * Each follows its CPU oracle's arithmetic (kernels/cpu/ops_*.c): RMSNorm's sum of
 * squares and RoPE's angles in double, products without contraction where the CPU has
 * none, so the two backends agree to float rounding (the op test states the tolerances).
 */
#include "kernels/cuda/cuda_be.cuh"
#include "kernels/cuda/qblock.h"

__constant__ int8_t cu_iq4nl_tab[16] = QB_IQ4NL_VALUES;
__constant__ int8_t cu_mxfp4_tab[16] = QB_MXFP4_VALUES;

/* ---- embedding rows ---- */

/* Element e of a row of type t at row (as kernels/cpu's dequantizer gives it). */
__device__ static float deq_elem(int t, const uint8_t *row, int64_t e)
{
    switch (t) {
    case TDM_TYPE_F32:
        return ((const float *)row)[e];
    case TDM_TYPE_F16:
        return qb_f16(((const uint16_t *)row)[e]);
    case TDM_TYPE_BF16:
        return qb_bf16(((const uint16_t *)row)[e]);
    case TDM_TYPE_Q4_0:
        return qb_deq_q4_0(row + (e / 32) * 18, (int)(e % 32));
    case TDM_TYPE_Q4_1:
        return qb_deq_q4_1(row + (e / 32) * 20, (int)(e % 32));
    case TDM_TYPE_Q5_0:
        return qb_deq_q5_0(row + (e / 32) * 22, (int)(e % 32));
    case TDM_TYPE_Q5_1:
        return qb_deq_q5_1(row + (e / 32) * 24, (int)(e % 32));
    case TDM_TYPE_Q8_0:
        return qb_deq_q8_0(row + (e / 32) * 34, (int)(e % 32));
    case TDM_TYPE_IQ4_NL:
        return qb_deq_iq4_nl(row + (e / 32) * 18, (int)(e % 32), cu_iq4nl_tab);
    case TDM_TYPE_MXFP4:
        return qb_deq_mxfp4(row + (e / 32) * 17, (int)(e % 32), cu_mxfp4_tab);
    case TDM_TYPE_Q2_K:
        return qb_deq_q2_k(row + (e / 256) * 84, (int)(e % 256));
    case TDM_TYPE_Q3_K:
        return qb_deq_q3_k(row + (e / 256) * 110, (int)(e % 256));
    case TDM_TYPE_Q4_K:
        return qb_deq_q4_k(row + (e / 256) * 144, (int)(e % 256));
    case TDM_TYPE_Q5_K:
        return qb_deq_q5_k(row + (e / 256) * 176, (int)(e % 256));
    case TDM_TYPE_Q6_K:
        return qb_deq_q6_k(row + (e / 256) * 210, (int)(e % 256));
    case TDM_TYPE_IQ4_XS:
        return qb_deq_iq4_xs(row + (e / 256) * 136, (int)(e % 256), cu_iq4nl_tab);
    default:
        return __int_as_float(0x7FC00000); /* refused at launch; never reached */
    }
}

/* 1-D grid: `per` blocks for each token (tokens are not bound by a grid's y). */
__global__ void get_rows_kernel(float *x, int64_t ldx, const uint8_t *w, size_t row_bytes,
                                int64_t n_cols, int type, const int32_t *tok, int per)
{
    const int64_t t = blockIdx.x / per;
    const uint8_t *row = w + (size_t)tok[t] * row_bytes;
    for (int64_t e = (int64_t)(blockIdx.x % per) * blockDim.x + threadIdx.x; e < n_cols;
         e += (int64_t)per * blockDim.x) {
        x[t * ldx + e] = deq_elem(type, row, e);
    }
}

static bool type_has_deq(tdm_type_t t)
{
    switch (t) {
    case TDM_TYPE_F32:
    case TDM_TYPE_F16:
    case TDM_TYPE_BF16:
    case TDM_TYPE_Q4_0:
    case TDM_TYPE_Q4_1:
    case TDM_TYPE_Q5_0:
    case TDM_TYPE_Q5_1:
    case TDM_TYPE_Q8_0:
    case TDM_TYPE_IQ4_NL:
    case TDM_TYPE_MXFP4:
    case TDM_TYPE_Q2_K:
    case TDM_TYPE_Q3_K:
    case TDM_TYPE_Q4_K:
    case TDM_TYPE_Q5_K:
    case TDM_TYPE_Q6_K:
    case TDM_TYPE_IQ4_XS:
        return true;
    default:
        return false;
    }
}

void cu_get_rows(cuda_backend_t *c, float *x, int64_t ldx, const kern_weight_t *emb, int32_t n_tok)
{
    if (!type_has_deq(emb->type)) {
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: embedding rows of type %s",
                     tdm_type_name(emb->type));
        return;
    }
    const int blocks = (int)((emb->n_cols + 255) / 256);
    const int per = blocks < 64 ? blocks : 64;
    get_rows_kernel<<<(unsigned)(n_tok * per), 256, 0, c->stream>>>(
        x, ldx, (const uint8_t *)emb->data, emb->row_bytes, emb->n_cols, (int)emb->type, c->d_tok,
        per);
    cu_check_launch(c, "get_rows");
}

/* ---- rows that want logits ---- */

__global__ void out_rows_kernel(float *dst, int64_t ldd, const float *src, int64_t lds,
                                int64_t cols, const int32_t *out_idx, int per)
{
    const int64_t i = blockIdx.x / per;
    const float *s = src + (int64_t)out_idx[i] * lds;
    for (int64_t e = (int64_t)(blockIdx.x % per) * blockDim.x + threadIdx.x; e < cols;
         e += (int64_t)per * blockDim.x) {
        dst[i * ldd + e] = s[e];
    }
}

void cu_get_out_rows(cuda_backend_t *c, float *dst, int64_t ldd, const float *src, int64_t lds,
                     int64_t cols, int32_t n_out)
{
    if (n_out == 0) {
        return;
    }
    const int blocks = (int)((cols + 255) / 256);
    const int per = blocks < 64 ? blocks : 64;
    out_rows_kernel<<<(unsigned)(n_out * per), 256, 0, c->stream>>>(dst, ldd, src, lds, cols,
                                                                    c->d_out, per);
    cu_check_launch(c, "get_out_rows");
}

/* ---- RMSNorm ---- */

#define NORM_THREADS 256

__global__ void rms_norm_kernel(float *y, int64_t ldy, const float *x, int64_t ldx, const float *w,
                                int64_t cols, float eps)
{
    const float *xr = x + blockIdx.x * ldx;
    float *yr = y + blockIdx.x * ldy;
    __shared__ double part[NORM_THREADS / 32];
    double ss = 0.0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        ss += (double)xr[c] * (double)xr[c];
    }
    for (int off = 16; off > 0; off >>= 1) {
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
    }
    if ((threadIdx.x & 31) == 0) {
        part[threadIdx.x >> 5] = ss;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        ss = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
        for (int off = 16; off > 0; off >>= 1) {
            ss += __shfl_xor_sync(0xffffffffu, ss, off);
        }
        if (threadIdx.x == 0) {
            part[0] = ss;
        }
    }
    __syncthreads();
    const float scale = (float)(1.0 / sqrt(part[0] / (double)cols + (double)eps));
    /* in place (y == x) is fine: every element is read before the barrier above */
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = __fmul_rn(xr[c], scale);
        yr[c] = w != NULL ? __fmul_rn(v, w[c]) : v;
    }
}

void cu_rms_norm(cuda_backend_t *c, float *y, int64_t ldy, const float *x, int64_t ldx,
                 const float *w, int64_t rows, int64_t cols, float eps)
{
    if (rows == 0) {
        return;
    }
    rms_norm_kernel<<<(unsigned)rows, NORM_THREADS, 0, c->stream>>>(y, ldy, x, ldx, w, cols, eps);
    cu_check_launch(c, "rms_norm");
}

/* RMSNorm in two halves (a norm whose vector is split across ranks): the sum of squares
 * of a row in double, over a fixed tree (the same order whatever the step), stored as
 * float; then the scale from the ranks' total, in double as kern_op_rms_apply_f32. */
__global__ void sum_sq_kernel(float *ss, int64_t lds, const float *x, int64_t ldx, int64_t cols)
{
    const float *xr = x + blockIdx.x * ldx;
    __shared__ double part[NORM_THREADS / 32];
    double acc = 0.0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        acc += (double)xr[c] * (double)xr[c];
    }
    for (int off = 16; off > 0; off >>= 1) {
        acc += __shfl_xor_sync(0xffffffffu, acc, off);
    }
    if ((threadIdx.x & 31) == 0) {
        part[threadIdx.x >> 5] = acc;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
        for (int off = 16; off > 0; off >>= 1) {
            acc += __shfl_xor_sync(0xffffffffu, acc, off);
        }
        if (threadIdx.x == 0) {
            ss[blockIdx.x * lds] = (float)acc;
        }
    }
}

/* 1-D grid: `per` blocks for each row. */
__global__ void rms_apply_kernel(float *y, int64_t ldy, const float *x, int64_t ldx,
                                 const float *ss, int64_t lds, const float *w, int64_t cols,
                                 int64_t n_total, float eps, int per)
{
    const int64_t r = blockIdx.x / per;
    const float *xr = x + r * ldx;
    float *yr = y + r * ldy;
    const double mean = __ddiv_rn((double)ss[r * lds], (double)n_total);
    const float scale = (float)__ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(mean, (double)eps)));
    for (int64_t c = (int64_t)(blockIdx.x % per) * blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)per * blockDim.x) {
        const float v = __fmul_rn(xr[c], scale);
        yr[c] = w != NULL ? __fmul_rn(v, w[c]) : v;
    }
}

/* Blocks of 256 threads for each row of cols elements (at most 64). */
static int row_blocks(int64_t cols)
{
    const int64_t b = (cols + 255) / 256;
    return (int)(b < 64 ? (b > 0 ? b : 1) : 64);
}

void cu_sum_sq(cuda_backend_t *c, float *ss, int64_t lds, const float *x, int64_t ldx, int64_t rows,
               int64_t cols)
{
    if (rows == 0) {
        return;
    }
    sum_sq_kernel<<<(unsigned)rows, NORM_THREADS, 0, c->stream>>>(ss, lds, x, ldx, cols);
    cu_check_launch(c, "sum_sq");
}

void cu_rms_apply(cuda_backend_t *c, float *y, int64_t ldy, const float *x, int64_t ldx,
                  const float *ss, int64_t lds, const float *w, int64_t rows, int64_t cols,
                  int64_t n_total, float eps)
{
    if (rows == 0 || cols == 0) {
        return;
    }
    const int per = row_blocks(cols);
    const unsigned grid = (unsigned)(rows * per);
    rms_apply_kernel<<<grid, 256, 0, c->stream>>>(y, ldy, x, ldx, ss, lds, w, cols, n_total, eps,
                                                  per);
    cu_check_launch(c, "rms_apply");
}

/* ---- RoPE (ggml's NORM/NEOX, freq factors, linear and YaRN scaling; angles in double) ---- */

typedef struct rope_args {
    int n_rot, neox, yarn;
    double base, freq_scale, ext_factor, mscale, low, high;
} rope_args_t;

__global__ void rope_kernel(float *x, int64_t ld, int n_heads, int head_dim, rope_args_t a,
                            const float *ff, const int32_t *pos)
{
    const int t = blockIdx.x, half = a.n_rot / 2;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        /* the CPU's double arithmetic, operation by operation (no fused multiply-add) */
        double freq = pow(a.base, __ddiv_rn(-2.0 * i, (double)a.n_rot));
        if (ff != NULL) {
            freq = __ddiv_rn(freq, (double)ff[i]);
        }
        double mix = 0.0;
        if (a.yarn) {
            const double span = a.high - a.low > 0.001 ? a.high - a.low : 0.001;
            double yv = __ddiv_rn((double)i - a.low, span);
            yv = yv < 0.0 ? 0.0 : (yv > 1.0 ? 1.0 : yv);
            mix = __dmul_rn(1.0 - yv, a.ext_factor);
        }
        const double extrap = __dmul_rn((double)pos[t], freq);
        const double interp = __dmul_rn(a.freq_scale, extrap);
        const double theta = __dadd_rn(__dmul_rn(interp, 1.0 - mix), __dmul_rn(extrap, mix));
        const float cs = (float)__dmul_rn(cos(theta), a.mscale);
        const float sn = (float)__dmul_rn(sin(theta), a.mscale);
        float *v = x + t * ld + (int64_t)h * head_dim;
        const int i0 = a.neox ? i : 2 * i, i1 = a.neox ? i + half : 2 * i + 1;
        const float p = v[i0], q = v[i1];
        v[i0] = __fsub_rn(__fmul_rn(p, cs), __fmul_rn(q, sn));
        v[i1] = __fadd_rn(__fmul_rn(p, sn), __fmul_rn(q, cs));
    }
}

static double yarn_corr_dim(int n_rot, uint32_t n_ctx_orig, double beta, double base)
{
    return n_rot * log((double)n_ctx_orig / (beta * 2.0 * M_PI)) / (2.0 * log(base));
}

void cu_rope(cuda_backend_t *c, float *x, int64_t ld, int32_t n_tok, int n_heads, int head_dim,
             const mdl_rope_params_t *p, const float *freq_factors)
{
    rope_args_t a;
    a.n_rot = p->n_rot;
    a.neox = p->type == MDL_ROPE_NEOX;
    a.yarn = p->ext_factor != 0.0f;
    a.base = p->freq_base;
    a.freq_scale = p->freq_scale;
    a.ext_factor = p->ext_factor;
    a.mscale = p->attn_factor;
    a.low = a.high = 0.0;
    if (a.yarn) {
        a.low = floor(yarn_corr_dim(p->n_rot, p->n_ctx_orig, p->beta_fast, p->freq_base));
        a.high = ceil(yarn_corr_dim(p->n_rot, p->n_ctx_orig, p->beta_slow, p->freq_base));
        a.low = a.low < 0.0 ? 0.0 : a.low;
        a.high = a.high > p->n_rot - 1 ? p->n_rot - 1 : a.high;
        a.mscale *= 1.0 + 0.1 * log(1.0 / p->freq_scale);
    }
    if (n_tok == 0 || p->n_rot == 0) {
        return;
    }
    rope_kernel<<<n_tok, 128, 0, c->stream>>>(x, ld, n_heads, head_dim, a, freq_factors, c->d_pos);
    cu_check_launch(c, "rope");
}

/* ---- SwiGLU, add, bias ---- */

__global__ void swiglu_kernel(float *out, const float *gate, const float *up, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
    }
}

__global__ void add_kernel(float *y, const float *a, const float *b, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        y[i] = __fadd_rn(a[i], b[i]);
    }
}

/* 1-D grid: `per` blocks for each row. */
__global__ void add_bias_kernel(float *y, int64_t ldy, const float *bias, int64_t cols, int per)
{
    float *yr = y + (int64_t)(blockIdx.x / per) * ldy;
    for (int64_t c = (int64_t)(blockIdx.x % per) * blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)per * blockDim.x) {
        yr[c] = __fadd_rn(yr[c], bias[c]);
    }
}

static unsigned elem_blocks(int64_t n)
{
    const int64_t b = (n + 255) / 256;
    return (unsigned)(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

void cu_swiglu(cuda_backend_t *c, float *out, const float *gate, const float *up, int64_t n)
{
    if (n == 0) {
        return;
    }
    swiglu_kernel<<<elem_blocks(n), 256, 0, c->stream>>>(out, gate, up, n);
    cu_check_launch(c, "swiglu");
}

void cu_add(cuda_backend_t *c, float *y, const float *a, const float *b, int64_t n)
{
    if (n == 0) {
        return;
    }
    add_kernel<<<elem_blocks(n), 256, 0, c->stream>>>(y, a, b, n);
    cu_check_launch(c, "add");
}

void cu_add_bias(cuda_backend_t *c, float *y, int64_t ldy, const float *bias, int64_t rows,
                 int64_t cols)
{
    if (rows == 0 || cols == 0) {
        return;
    }
    const int per = row_blocks(cols);
    const unsigned grid = (unsigned)(rows * per);
    add_bias_kernel<<<grid, 256, 0, c->stream>>>(y, ldy, bias, cols, per);
    cu_check_launch(c, "add_bias");
}
