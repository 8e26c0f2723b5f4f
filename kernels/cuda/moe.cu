/*
 * moe.cu - mixture of experts on the GPU.
 *
 *   route    one warp per token, kern_op_route_token's steps: the gating (softmax with
 *            the sum in double, sigmoid, or none before the choice), top-k by repeated
 *            warp arg-max over the probabilities plus the selection bias (ties to the
 *            lower index), the unbiased weights (a softmax over the chosen k for
 *            SOFTMAX_SELECTED), renormalised with llama.cpp's 2^-14 clamp, scaled
 *   group    one block: the (token, slot) pairs routed to this rank's experts, grouped by
 *            expert (counts, offsets, pairs in token order), and the tiles of at most 8
 *            pairs the grouped products walk
 *   experts  gate and up as grouped products over the pairs (activations quantized once
 *            per token and gathered), their biases and the activation (SwiGLU or
 *            gpt-oss's clamped one) per tile, down as a grouped product
 *   combine  per token: the expert outputs plus their down bias, weighted and summed in
 *            ascending expert order, as the CPU does (zeros for a token with no expert
 *            here)
 *
 * Every count lives on the device, so the launches are the same whatever the routing
 * (what CUDA graphs need).
 */
#include "kernels/cuda/cuda_be.cuh"

#include <math.h>

/* Experts a lane of the route kernel covers: n_expert <= 32 * MOE_EPL (a bit each in a
 * lane's mask of chosen experts). */
#define MOE_EPL 32
static_assert(32 * MOE_EPL >= KERN_ROUTE_MAX_EXPERTS, "the route kernel covers every router");

typedef struct route_args {
    float *logits;
    int n_expert, k, gating, norm;
    const float *sel_bias; /* NULL: none */
    float scale;           /* applied when not 0 or 1 */
    int32_t *sel;
    float *w;
} route_args_t;

/* The value expert i is chosen by: its probability (the logit for SOFTMAX_SELECTED) plus
 * its selection bias. */
__device__ __forceinline__ float route_key(const route_args_t &a, const float *x, int i)
{
    return a.sel_bias != NULL ? __fadd_rn(x[i], a.sel_bias[i]) : x[i];
}

__global__ void route_kernel(route_args_t a)
{
    const int t = blockIdx.x, lane = threadIdx.x, n_expert = a.n_expert, k = a.k;
    float *x = a.logits + (int64_t)t * n_expert;
    if (a.gating == KERN_GATING_SOFTMAX) {
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
    } else if (a.gating == KERN_GATING_SIGMOID) {
        for (int i = lane; i < n_expert; i += 32) {
            x[i] = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x[i])));
        }
    } /* SOFTMAX_SELECTED: chosen on the logits, the softmax runs over the chosen below */
    __syncwarp();
    /* top-k: each lane's best untaken element, then the warp's (ties: lower index) */
    uint32_t taken = 0; /* bit i: element lane + 32 i was chosen */
    float wv[16];
    int32_t idx[16];
    for (int j = 0; j < k; j++) {
        float best = -INFINITY;
        int bi = 0x7fffffff;
        for (int i = 0; i < MOE_EPL && lane + 32 * i < n_expert; i++) {
            const float v = route_key(a, x, lane + 32 * i);
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
        wv[j] = x[bi]; /* the weight is unbiased */
    }
    if (lane != 0) {
        return;
    }
    if (a.gating == KERN_GATING_SOFTMAX_SELECTED) { /* kern_op_softmax_f32 over the k */
        float mx = wv[0];
        for (int j = 1; j < k; j++) {
            mx = wv[j] > mx ? wv[j] : mx;
        }
        double sum = 0.0;
        for (int j = 0; j < k; j++) {
            wv[j] = expf(wv[j] - mx);
            sum += wv[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < k; j++) {
            wv[j] = __fmul_rn(wv[j], inv);
        }
    }
    if (a.norm) {
        double sum = 0.0;
        for (int j = 0; j < k; j++) {
            sum += wv[j];
        }
        const float inv = (float)(1.0 / (sum > 6.103515625e-5 ? sum : 6.103515625e-5));
        for (int j = 0; j < k; j++) {
            wv[j] = __fmul_rn(wv[j], inv);
        }
    }
    const bool scaled = a.scale != 0.0f && a.scale != 1.0f;
    for (int j = 0; j < k; j++) {
        a.sel[t * k + j] = idx[j];
        a.w[t * k + j] = scaled ? __fmul_rn(wv[j], a.scale) : wv[j];
    }
}

void cu_moe_route(cuda_backend_t *c, float *logits, const kern_route_t *r, int32_t *sel, float *w,
                  int32_t n_tok)
{
    if (r->n_expert > 32 * MOE_EPL || r->k > 16 || r->k < 1 || r->k > r->n_expert) {
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: router of %d experts, top-%d",
                     r->n_expert, r->k);
        return;
    }
    if (r->gating != KERN_GATING_SOFTMAX && r->gating != KERN_GATING_SIGMOID &&
        r->gating != KERN_GATING_SOFTMAX_SELECTED) {
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: router gating %d", (int)r->gating);
        return;
    }
    if (n_tok == 0) {
        return;
    }
    route_args_t a;
    a.logits = logits;
    a.n_expert = r->n_expert;
    a.k = r->k;
    a.gating = (int)r->gating;
    a.norm = r->norm ? 1 : 0;
    a.sel_bias = r->sel_bias;
    a.scale = r->scale;
    a.sel = sel;
    a.w = w;
    route_kernel<<<n_tok, 32, 0, c->stream>>>(a);
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

/* The gated activation of the pairs of one tile (grid x: tiles, a bound; y: chunks of the
 * tile's elements): the expert's gate and up biases added, then SwiGLU or gpt-oss's
 * clamped SwiGLU, operation by operation as the CPU (moe_cpu.c, ops_elementwise.c). */
typedef struct moe_act_args {
    float *gate;     /* [pairs][f], the activation is written here */
    const float *up; /* [pairs][f]                                 */
    int64_t f;
    const int32_t *tiles, *n_tiles;
    const float *gate_b, *up_b; /* the first local expert's, or NULL */
    int64_t gate_bs, up_bs;
    int act;
    float alpha, limit;
} moe_act_args_t;

__global__ void moe_act_kernel(moe_act_args_t a)
{
    const int tile = blockIdx.x;
    if (tile >= a.n_tiles[0]) {
        return;
    }
    const int e = a.tiles[3 * tile];
    const int64_t first = a.tiles[3 * tile + 1], n = (int64_t)a.tiles[3 * tile + 2] * a.f;
    const float *gb = a.gate_b != NULL ? a.gate_b + (int64_t)e * a.gate_bs : NULL;
    const float *ub = a.up_b != NULL ? a.up_b + (int64_t)e * a.up_bs : NULL;
    float *gr = a.gate + first * a.f;
    const float *ur = a.up + first * a.f;
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.y * blockDim.x) {
        const int64_t col = i % a.f;
        float g = gr[i], u = ur[i];
        if (gb != NULL) {
            g = __fadd_rn(g, gb[col]);
        }
        if (ub != NULL) {
            u = __fadd_rn(u, ub[col]);
        }
        if (a.act == KERN_ACT_SWIGLU_OAI) {
            g = g < a.limit ? g : a.limit;
            u = u < -a.limit ? -a.limit : (u > a.limit ? a.limit : u);
            const float sg = __fdiv_rn(g, __fadd_rn(1.0f, expf(__fmul_rn(-a.alpha, g))));
            gr[i] = __fmul_rn(sg, __fadd_rn(u, 1.0f));
        } else {
            gr[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
        }
    }
}

/* out[t] = sum over t's experts held here, ascending expert, of w * (y[pair] + the
 * expert's down bias). */
__global__ void combine_kernel(const int32_t *sel, const int32_t *pair_of, const float *pair_w,
                               const float *y, int64_t e_dim, float *out, int64_t ldo, int k,
                               const float *down_b, int64_t down_bs, int exp_lo)
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
            float v = y[(int64_t)p * e_dim + d];
            if (down_b != NULL) {
                v = __fadd_rn(v, down_b[(int64_t)(sel[t * k + order[i]] - exp_lo) * down_bs + d]);
            }
            acc = __fadd_rn(acc, __fmul_rn(pair_w[p], v));
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
    if (moe->act != KERN_ACT_SWIGLU && moe->act != KERN_ACT_SWIGLU_OAI) {
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: moe activation %d", (int)moe->act);
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
        moe_act_args_t aa;
        aa.gate = c->moe_gate;
        aa.up = c->moe_up;
        aa.f = F;
        aa.tiles = c->moe_tiles;
        aa.n_tiles = c->moe_n_tiles;
        aa.gate_b = moe->gate_b;
        aa.up_b = moe->up_b;
        aa.gate_bs = moe->gate_b_stride;
        aa.up_bs = moe->up_b_stride;
        aa.act = (int)moe->act;
        aa.alpha = moe->act_alpha;
        aa.limit = moe->act_limit;
        const int64_t chunks = ((int64_t)CU_MOE_TILE * F + 255) / 256;
        const dim3 agrid((unsigned)max_tiles, (unsigned)(chunks < 64 ? chunks : 64));
        moe_act_kernel<<<agrid, 256, 0, c->stream>>>(aa);
        if (!cu_check_launch(c, "moe activation")) {
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
    const dim3 cgrid((unsigned)n_tok, (unsigned)(gy < 16 ? gy : 16));
    combine_kernel<<<cgrid, threads, 0, c->stream>>>(sel, c->moe_pair_of, c->moe_pair_w, c->moe_out,
                                                     E, out, ldo, k, moe->down_b,
                                                     moe->down_b_stride, moe->exp_lo);
    cu_check_launch(c, "moe combine");
}
