/*
 * moe.cu - mixture of experts on the GPU.
 *
 *   route    one warp per token: softmax over the router logits (sum in double, as the
 *            CPU), top-k by repeated warp arg-max (ties to the lower index), weights
 *            renormalised with llama.cpp's 2^-14 clamp
 *   group    one block: the (token, slot) pairs routed to this rank's experts, grouped by
 *            expert (counts, offsets, pairs in token order), and the tiles of at most 8
 *            pairs the grouped products walk
 *   experts  gate and up as grouped products over the pairs (activations quantized once
 *            per token and gathered), SwiGLU, down as a grouped product
 *   combine  per token: the weighted expert outputs summed in ascending expert order,
 *            as the CPU does (zeros for a token with no expert here)
 *
 * Every count lives on the device, so the launches are the same whatever the routing
 * (what CUDA graphs need).
 */
#include "kernels/cuda/cuda_be.cuh"

#include <math.h>

/* Experts a lane of the route kernel covers: n_expert <= 32 * MOE_EPL. */
#define MOE_EPL 32

__global__ void route_kernel(float *logits, int n_expert, int k, int norm, int32_t *sel, float *w)
{
    const int t = blockIdx.x, lane = threadIdx.x;
    float *x = logits + (int64_t)t * n_expert;
    float mx = -INFINITY;
    for (int i = lane; i < n_expert; i += 32) {
        mx = fmaxf(mx, x[i]);
    }
    for (int o = 16; o > 0; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    double sum = 0.0;
    for (int i = lane; i < n_expert; i += 32) {
        const float e = expf(x[i] - mx);
        x[i] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    }
    const float inv = (float)(1.0 / sum);
    for (int i = lane; i < n_expert; i += 32) {
        x[i] = __fmul_rn(x[i], inv);
    }
    __syncwarp();
    /* top-k: each lane's best untaken element, then the warp's (ties: lower index) */
    uint32_t taken = 0; /* bit i: element lane + 32 i was chosen */
    double wsum = 0.0;
    float wv[16];
    int32_t idx[16];
    for (int j = 0; j < k; j++) {
        float best = -INFINITY;
        int bi = 0x7fffffff;
        for (int i = 0; i < MOE_EPL && lane + 32 * i < n_expert; i++) {
            const float v = x[lane + 32 * i];
            if (!(taken & (1u << i)) && (bi == 0x7fffffff || v > best)) {
                best = v;
                bi = lane + 32 * i;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi != 0x7fffffff && (bi == 0x7fffffff || ob > best || (ob == best && oi < bi))) {
                best = ob;
                bi = oi;
            }
        }
        if (bi % 32 == lane) {
            taken |= 1u << (bi / 32);
        }
        idx[j] = bi;
        wv[j] = best;
        wsum += best;
    }
    if (lane == 0) {
        const float winv =
            norm ? (float)(1.0 / (wsum > 6.103515625e-5 ? wsum : 6.103515625e-5)) : 1.0f;
        for (int j = 0; j < k; j++) {
            sel[t * k + j] = idx[j];
            w[t * k + j] = norm ? __fmul_rn(wv[j], winv) : wv[j];
        }
    }
}

void cu_moe_route(cuda_backend_t *c, float *logits, int n_expert, int k, bool norm, int32_t *sel,
                  float *w, int32_t n_tok)
{
    if (n_expert > 32 * MOE_EPL || k > 16 || k > n_expert) {
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: router of %d experts, top-%d", n_expert,
                     k);
        return;
    }
    if (n_tok == 0) {
        return;
    }
    route_kernel<<<n_tok, 32, 0, c->stream>>>(logits, n_expert, k, norm ? 1 : 0, sel, w);
    cu_check_launch(c, "moe route");
}

/* One block: pairs of this rank's experts [lo, lo + n_exp) grouped by expert. */
__global__ void group_kernel(const int32_t *sel, const float *w, int n_pairs, int k, int lo,
                             int n_exp, int32_t *cnt, int32_t *off, int32_t *pair_tok,
                             float *pair_w, int32_t *pair_of, int32_t *tiles, int32_t *n_tiles)
{
    for (int i = threadIdx.x; i < n_pairs; i += blockDim.x) {
        pair_of[i] = -1;
    }
    for (int e = threadIdx.x; e < n_exp; e += blockDim.x) {
        int n = 0;
        for (int i = 0; i < n_pairs; i++) {
            n += sel[i] - lo == e;
        }
        cnt[e] = n;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0, nt = 0;
        for (int e = 0; e < n_exp; e++) {
            off[e] = acc;
            for (int r = 0; r < cnt[e]; r += CU_MOE_TILE) {
                tiles[3 * nt] = e;
                tiles[3 * nt + 1] = acc + r;
                tiles[3 * nt + 2] = cnt[e] - r < CU_MOE_TILE ? cnt[e] - r : CU_MOE_TILE;
                nt++;
            }
            acc += cnt[e];
        }
        off[n_exp] = acc;
        n_tiles[0] = nt;
        n_tiles[1] = acc;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_exp; e += blockDim.x) {
        int p = off[e];
        for (int i = 0; i < n_pairs; i++) {
            if (sel[i] - lo == e) {
                pair_tok[p] = i / k;
                pair_w[p] = w[i];
                pair_of[i] = p;
                p++;
            }
        }
    }
}

/* out = silu(gate) * up over the pairs that exist (their count is on the device). */
__global__ void moe_swiglu_kernel(float *gate, const float *up, int64_t f, const int32_t *n_pairs)
{
    const int64_t n = (int64_t)*n_pairs * f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        gate[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
    }
}

/* out[t] = sum over t's experts held here, ascending expert, of w * y[pair]. */
__global__ void combine_kernel(const int32_t *sel, const int32_t *pair_of, const float *pair_w,
                               const float *y, int64_t e_dim, float *out, int64_t ldo, int k)
{
    const int t = blockIdx.x;
    int order[16];
    int n = 0;
    for (int j = 0; j < k; j++) {
        if (pair_of[t * k + j] < 0) {
            continue;
        }
        int i = n++;
        while (i > 0 && sel[t * k + order[i - 1]] > sel[t * k + j]) {
            order[i] = order[i - 1];
            i--;
        }
        order[i] = j;
    }
    for (int64_t d = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; d < e_dim;
         d += (int64_t)gridDim.y * blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++) {
            const int p = pair_of[t * k + order[i]];
            acc = __fadd_rn(acc, __fmul_rn(pair_w[p], y[(int64_t)p * e_dim + d]));
        }
        out[(int64_t)t * ldo + d] = acc;
    }
}

void cu_moe_experts(cuda_backend_t *c, const kern_moe_t *moe, const float *x, int64_t ldx,
                    const int32_t *sel, const float *w, float *out, int64_t ldo, int64_t n_tok)
{
    const int k = moe->n_used;
    const int64_t E = moe->n_embd, F = moe->gate.n_rows;
    const int n_pairs = (int)(n_tok * k);
    if (n_tok == 0) {
        return;
    }
    if (n_pairs > c->max_pairs || k > 16 || moe->n_exp > c->r.n_expert ||
        (moe->n_exp > 0 && (F > c->r.n_ff_exp || E > c->r.n_embd))) {
        kern_be_fail(&c->base, TDM_ERR_INTERNAL,
                     "cuda: moe of %d pairs, %d experts, width %lld beyond the reserved scratch",
                     n_pairs, moe->n_exp, (long long)F);
        return;
    }
    const int max_tiles = kern_cuda_moe_max_tiles(n_pairs, moe->n_exp);
    if (moe->n_exp > 0) {
        group_kernel<<<1, 256, 0, c->stream>>>(
            sel, w, n_pairs, k, moe->exp_lo, moe->n_exp, c->moe_cnt, c->moe_off, c->moe_pair_tok,
            c->moe_pair_w, c->moe_pair_of, c->moe_tiles, c->moe_n_tiles);
        if (!cu_check_launch(c, "moe group")) {
            return;
        }
        /* gate and up: activations of the tokens, quantized once, gathered by pair */
        const int fmt = cu_act_format(moe->gate.type);
        cu_act_t ax;
        if (fmt >= 0) {
            ax = cu_act_view(c->act_buf[0], fmt, n_tok, E);
            cu_quantize_act(c, fmt, x, ldx, n_tok, &ax);
        }
        cu_mm_t mm;
        memset(&mm, 0, sizeof(mm));
        mm.x = x;
        mm.ldx = ldx;
        mm.act = fmt >= 0 ? &ax : NULL;
        mm.act_idx = c->moe_pair_tok;
        mm.ldy = F;
        mm.n_rows_x = n_pairs;
        mm.tiles = c->moe_tiles;
        mm.n_tiles = c->moe_n_tiles;
        mm.max_tiles = max_tiles;
        mm.w = &moe->gate;
        mm.w_stride = moe->gate_stride;
        mm.y = c->moe_gate;
        cu_matmul_launch(c, &mm);
        mm.w = &moe->up;
        mm.w_stride = moe->up_stride;
        mm.y = c->moe_up;
        if (cu_act_format(moe->up.type) != fmt) {
            kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED,
                         "cuda: moe gate (%s) and up (%s) of different formats",
                         tdm_type_name(moe->gate.type), tdm_type_name(moe->up.type));
            return;
        }
        cu_matmul_launch(c, &mm);
        moe_swiglu_kernel<<<1024, 256, 0, c->stream>>>(c->moe_gate, c->moe_up, F,
                                                       c->moe_n_tiles + 1);
        if (!cu_check_launch(c, "moe swiglu")) {
            return;
        }
        /* down: its own input per pair */
        const int fd = cu_act_format(moe->down.type);
        cu_act_t ah;
        if (fd >= 0) {
            ah = cu_act_view(c->act_buf[1], fd, n_pairs, F);
            cu_quantize_act_rows(c, fd, c->moe_gate, F, n_pairs, c->moe_n_tiles + 1, &ah);
        }
        memset(&mm, 0, sizeof(mm));
        mm.w = &moe->down;
        mm.w_stride = moe->down_stride;
        mm.x = c->moe_gate;
        mm.ldx = F;
        mm.act = fd >= 0 ? &ah : NULL;
        mm.y = c->moe_out;
        mm.ldy = E;
        mm.n_rows_x = n_pairs;
        mm.tiles = c->moe_tiles;
        mm.n_tiles = c->moe_n_tiles;
        mm.max_tiles = max_tiles;
        cu_matmul_launch(c, &mm);
    } else {
        /* no expert here: every pair is "not held", so the sum below is zero */
        if (cudaMemsetAsync(c->moe_pair_of, 0xff, (size_t)n_pairs * 4, c->stream) != cudaSuccess) {
            cu_check_launch(c, "moe: no expert here");
            return;
        }
    }
    const int threads = 256;
    const int gy = (int)((E + threads - 1) / threads);
    combine_kernel<<<dim3((unsigned)n_tok, (unsigned)(gy < 16 ? gy : 16)), threads, 0, c->stream>>>(
        sel, c->moe_pair_of, c->moe_pair_w, c->moe_out, E, out, ldo, k);
    cu_check_launch(c, "moe combine");
}
