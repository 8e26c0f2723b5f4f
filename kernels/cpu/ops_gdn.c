/*
 * ops_gdn.c - the Gated DeltaNet ops of the CPU backend (kern_backend.h, kern_gdn_t): the
 * causal conv with its per-sequence state, the gated delta rule in its recurrent form
 * (one token) and its chunked form (a run of tokens: prefill), the gated RMSNorm and the
 * sigmoid gates. The rule's inner loops are dot products and axpys of head_dim floats on
 * the ISA's vector table (kernels/cpu/vec.h: AVX2, AVX-512, NEON or scalar), the rows of
 * the state S being contiguous; the work is spread over the pool by (sequence, v head).
 *
 * The chunked form (the one HF's torch_chunk_gated_delta_rule and llama.cpp compute for
 * prompts) for a chunk of c tokens with cumulative log-decays G_i = g_0 + ... + g_i:
 *     T_ij = b_i (k_i . k_j) exp(G_i - G_j)                      (j < i)
 *     U_i  = b_i v_i            - sum_{j<i} T_ij U_j              (forward substitution:
 *     W_i  = b_i exp(G_i) k_i   - sum_{j<i} T_ij W_j               (I + T)^-1 applied)
 *     V'_i = U_i - W_i S                                          (S the state before)
 *     o_i  = exp(G_i) q_i S + sum_{j<=i} (q_i . k_j) exp(G_i - G_j) V'_j
 *     S   <- exp(G_c-1) S + sum_j exp(G_c-1 - G_j) k_j V'_j^T
 * which equals c steps of the recurrence S <- exp(g) S; S <- S + k (b (v - S^T k))^T;
 * o = S^T q (rows of S: key dims, columns: value dims).
 */
#include "kernels/cpu/backend_cpu.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/vec.h"

#include <math.h>
#include <string.h>

static float sigmoidf_(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

static float siluf_(float x)
{
    return x / (1.0f + expf(-x));
}

/* torch.nn.functional.softplus (beta 1, threshold 20) */
static float softplusf_(float x)
{
    return x > 20.0f ? x : log1pf(expf(x));
}

/* The step's runs: consecutive tokens of one sequence. Fills run0/runlen (the backend's
 * reserved arrays), returns how many; a run starting at position 0 starts from zero state. */
static int32_t step_runs(const kern_step_t *st, int32_t *run0, int32_t *runlen)
{
    int32_t n = 0;
    for (int32_t t = 0; t < st->n_tokens; t++) {
        if (n > 0 && st->seq[t] == st->seq[run0[n - 1]]) {
            runlen[n - 1]++;
        } else {
            run0[n] = t;
            runlen[n] = 1;
            n++;
        }
    }
    return n;
}

/* The k head (local index) v head h (local) reads, and the column of its b / a gates
 * (kern_be_gdn_rule). */
static int gdn_k_head(const kern_gdn_t *g, int h)
{
    const int nk = g->n_k_all > 0 ? g->n_k_all : g->n_k_heads;
    const int rr = (g->n_v_all > 0 ? g->n_v_all : g->n_v_heads) / nk;
    const int gh = g->v_head0 + h;
    return (g->v_tiled ? gh % nk : gh / rr) - g->k_head0;
}

static int gdn_gate_index(const kern_gdn_t *g, int h, int grp)
{
    const int nk = g->n_k_all > 0 ? g->n_k_all : g->n_k_heads;
    const int rr = (g->n_v_all > 0 ? g->n_v_all : g->n_v_heads) / nk;
    if (grp != 2 * rr) {
        return h; /* b and a per v head held */
    }
    const int gh = g->v_head0 + h;
    return (gh / rr - g->k_head0) * grp + gh % rr;
}

/* The head counts and maps of a layer or its slice: every v head reads a k head held. */
static bool heads_ok(const kern_gdn_t *g)
{
    const int nk = g->n_k_all > 0 ? g->n_k_all : g->n_k_heads;
    const int nv = g->n_v_all > 0 ? g->n_v_all : g->n_v_heads;
    if (g->n_k_heads < 1 || g->n_v_heads < 1 || nk < g->n_k_heads || nv < g->n_v_heads ||
        nv % nk != 0 || g->v_head0 < 0 || g->v_head0 + g->n_v_heads > nv || g->k_head0 < 0 ||
        g->k_head0 + g->n_k_heads > nk) {
        return false;
    }
    for (int h = 0; h < g->n_v_heads; h++) {
        const int kh = gdn_k_head(g, h);
        if (kh < 0 || kh >= g->n_k_heads) {
            return false;
        }
    }
    return true;
}

static bool slots_ok(kern_backend_t *be, const kern_gdn_t *g, int32_t n_runs)
{
    const cpu_backend_t *c = cpu_be(be);
    const kern_step_t *st = be->step;
    for (int32_t r = 0; r < n_runs; r++) {
        const int32_t slot = st->seqs[st->seq[c->gdn_run0[r]]].state_slot;
        if (slot < 0 || slot >= g->n_slots) {
            kern_be_fail(be, TDM_ERR_INVALID_PARAM,
                         "gated delta net: sequence %d has state slot %d (the layer has %d)",
                         st->seq[c->gdn_run0[r]], slot, g->n_slots);
            return false;
        }
    }
    return true;
}

/* ---- the causal conv ---- */

typedef struct conv_task {
    kern_backend_t *be;
    const kern_gdn_t *g;
    float *x;
    int64_t ldx, n_ch;
} conv_task_t;

#define CONV_BLOCK 32 /* channels per item: a row segment of every token, contiguous */

/* Items: (run, block of CONV_BLOCK channels). The block keeps its last conv - 1 inputs in a
 * small window, so the outputs can overwrite the inputs; tokens in order, the block's
 * channels side by side (contiguous in x, so the loops run along rows and vectorise). */
static void conv_worker(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    const conv_task_t *a = arg;
    const cpu_backend_t *c = cpu_be(a->be);
    const kern_step_t *st = a->be->step;
    const kern_gdn_t *g = a->g;
    const int K = g->conv, H = K - 1;
    const int64_t n_blk = (a->n_ch + CONV_BLOCK - 1) / CONV_BLOCK;
    float win[16][CONV_BLOCK], wt[16][CONV_BLOCK], acc[CONV_BLOCK];
    for (int64_t item = begin; item < end; item++) {
        const int32_t r = (int32_t)(item / n_blk);
        const int64_t ch0 = item % n_blk * CONV_BLOCK;
        const int nb = (int)(a->n_ch - ch0 < CONV_BLOCK ? a->n_ch - ch0 : CONV_BLOCK);
        const int32_t t0 = c->gdn_run0[r], n = c->gdn_runlen[r];
        const int32_t slot = st->seqs[st->seq[t0]].state_slot;
        float *state = g->conv_state + (size_t)slot * (size_t)H * (size_t)a->n_ch;
        const bool fresh = st->pos[t0] == 0;
        for (int j = 0; j < K; j++) {
            for (int q = 0; q < nb; q++) {
                wt[j][q] = g->conv_w[(ch0 + q) * K + j];
            }
        }
        for (int j = 0; j < H; j++) {
            for (int q = 0; q < nb; q++) {
                win[j][q] = fresh ? 0.0f : state[(int64_t)j * a->n_ch + ch0 + q];
            }
        }
        for (int32_t i = 0; i < n; i++) {
            float *px = a->x + (int64_t)(t0 + i) * a->ldx + ch0;
            for (int q = 0; q < nb; q++) {
                acc[q] = 0.0f;
            }
            for (int j = 0; j < H; j++) {
                for (int q = 0; q < nb; q++) {
                    acc[q] += wt[j][q] * win[j][q];
                }
            }
            for (int q = 0; q < nb; q++) {
                acc[q] += wt[H][q] * px[q];
            }
            for (int j = 0; j + 1 < H; j++) {
                memcpy(win[j], win[j + 1], (size_t)nb * sizeof(float));
            }
            if (H > 0) {
                memcpy(win[H - 1], px, (size_t)nb * sizeof(float));
            }
            for (int q = 0; q < nb; q++) {
                px[q] = siluf_(acc[q]);
            }
        }
        for (int j = 0; j < H; j++) {
            memcpy(state + (int64_t)j * a->n_ch + ch0, win[j], (size_t)nb * sizeof(float));
        }
    }
}

void kern_cpu_gdn_conv(kern_backend_t *be, const kern_gdn_t *g, float *x, int64_t ldx)
{
    cpu_backend_t *c = cpu_be(be);
    if (g->conv < 1 || g->conv > 16) {
        kern_be_fail(be, TDM_ERR_UNSUPPORTED, "gated delta net: conv of %d taps", g->conv);
        return;
    }
    const int32_t n_runs = step_runs(be->step, c->gdn_run0, c->gdn_runlen);
    if (!slots_ok(be, g, n_runs)) {
        return;
    }
    conv_task_t task = {be, g, x, ldx, kern_gdn_channels(g)};
    const int64_t n_blk = (task.n_ch + CONV_BLOCK - 1) / CONV_BLOCK;
    kern_parallel_for(c->ctx, (int64_t)n_runs * n_blk, 2, conv_worker, &task);
}

/* ---- the gated delta rule ---- */

typedef struct rule_task {
    kern_backend_t *be;
    const kern_vec_ops_t *vo;
    const kern_gdn_t *g;
    const float *qkv;
    int64_t ldq;
    const float *beta, *alpha;
    int64_t ldb, lda;
    int grp;
    float *out;
} rule_task_t;

/* dst = src / sqrt(sum src^2 + eps) * scale */
static void l2norm(const kern_vec_ops_t *vo, float *dst, const float *src, int n, float eps,
                   float scale)
{
    const float inv = 1.0f / sqrtf(vo->dot_f32(src, src, (size_t)n) + eps) * scale;
    for (int i = 0; i < n; i++) {
        dst[i] = src[i] * inv;
    }
}

static void scalef(float *x, float a, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        x[i] *= a;
    }
}

/* One token of the recurrence; S [d][d] (rows: key dims). Two passes over S (64 KiB per
 * head at d = 128, more than L1 holds): (exp(g) S)^T k is taken as exp(g) (S^T k) on the
 * state before its decay, and each row is decayed while it is in L1 for its update. */
static void rule_step(const kern_vec_ops_t *vo, float *S, int d, const float *q, const float *k,
                      const float *v, float b, float decay, float *tmp, float *o)
{
    const size_t n = (size_t)d;
    memset(tmp, 0, n * sizeof(float));
    for (int r = 0; r < d; r++) { /* S^T k */
        vo->axpy_f32(tmp, k[r], S + (size_t)r * n, n);
    }
    for (int j = 0; j < d; j++) {
        tmp[j] = (v[j] - decay * tmp[j]) * b;
    }
    memset(o, 0, n * sizeof(float));
    for (int r = 0; r < d; r++) {
        float *row = S + (size_t)r * n;
        scalef(row, decay, d);
        vo->axpy_f32(row, k[r], tmp, n);
        vo->axpy_f32(o, q[r], row, n);
    }
}

/* Per-thread scratch of the chunked form (cpu_backend_t.gdn_scratch), in floats. */
static size_t chunk_scratch_floats(int d)
{
    const size_t C = KERN_GDN_CHUNK;
    /* U, W, V' [C][d], scores [C][C], G [C], K'^T [d][C], decays [C][C] */
    return 6 * C * (size_t)d + 2 * C * C + 3 * C + (size_t)d;
}

/* One chunk of c tokens (rows of qn, kn, v, 1/scale applied to qn already; qn is scaled in
 * place). The products with the state and across the chunk are small matrix products
 * (kern_vec_ops_t.gemm_f32): V' = U - W S and exp(G) q S read S once per chunk rather than
 * once per token, and the state update S += K'^T V' writes it once. */
static void rule_chunk(const kern_vec_ops_t *vo, float *S, int d, int c, float *qn, const float *kn,
                       const float *v, const float *b, const float *gl, float *ws, float *o,
                       int64_t ldo)
{
    const size_t n = (size_t)d;
    const int C = KERN_GDN_CHUNK;
    float *U = ws, *W = U + (size_t)C * d, *Vn = W + (size_t)C * d, *T = Vn + (size_t)C * d;
    float *G = T + (size_t)C * C, *KT = G + C; /* KT: [d][C] */
    float *D = KT + (size_t)d * C;             /* D_ij = exp(G_i - G_j), j <= i: [c][C] */
    float acc = 0.0f;
    for (int i = 0; i < c; i++) {
        acc += gl[i];
        G[i] = acc;
    }
    for (int i = 0; i < c; i++) {
        for (int j = 0; j <= i; j++) {
            D[(size_t)i * C + j] = expf(G[i] - G[j]);
        }
    }
    for (int i = 0; i < c; i++) {
        const float *ki = kn + (size_t)i * d;
        float *Ui = U + (size_t)i * d, *Wi = W + (size_t)i * d;
        const float eG = expf(G[i]);
        for (int x = 0; x < d; x++) {
            Ui[x] = b[i] * v[(size_t)i * d + x];
            Wi[x] = b[i] * eG * ki[x];
        }
        for (int j = 0; j < i; j++) {
            const float tij = b[i] * vo->dot_f32(ki, kn + (size_t)j * n, n) * D[(size_t)i * C + j];
            vo->axpy_f32(Ui, -tij, U + (size_t)j * n, n);
            vo->axpy_f32(Wi, -tij, W + (size_t)j * n, n);
        }
    }
    /* V' = U - W S */
    memcpy(Vn, U, (size_t)c * n * sizeof(float));
    scalef(W, -1.0f, (int64_t)c * d);
    vo->gemm_f32(Vn, n, W, n, S, n, (size_t)c, n, n);
    /* the chunk's own scores A_ij = (q_i . k_j) exp(G_i - G_j), j <= i (T, [c][C]) */
    for (int i = 0; i < c; i++) {
        const float *qi = qn + (size_t)i * d;
        float *Ti = T + (size_t)i * C;
        for (int j = 0; j <= i; j++) {
            Ti[j] = vo->dot_f32(qi, kn + (size_t)j * n, n) * D[(size_t)i * C + j];
        }
        for (int j = i + 1; j < c; j++) {
            Ti[j] = 0.0f;
        }
    }
    /* o = exp(G) q S + A V' */
    for (int i = 0; i < c; i++) {
        scalef(qn + (size_t)i * d, expf(G[i]), d);
        memset(o + (int64_t)i * ldo, 0, n * sizeof(float));
    }
    vo->gemm_f32(o, (size_t)ldo, qn, n, S, n, (size_t)c, n, n);
    vo->gemm_f32(o, (size_t)ldo, T, (size_t)C, Vn, n, (size_t)c, n, (size_t)c);
    /* S = exp(G_last) S + K'^T V', K'_j = exp(G_last - G_j) k_j */
    const float gL = G[c - 1];
    scalef(S, expf(gL), (int64_t)d * d);
    for (int j = 0; j < c; j++) {
        const float f = expf(gL - G[j]);
        const float *kj = kn + (size_t)j * n;
        for (int r = 0; r < d; r++) {
            KT[(size_t)r * C + j] = kj[r] * f;
        }
    }
    vo->gemm_f32(S, n, KT, (size_t)C, Vn, n, n, n, (size_t)c);
}

/* Items: (run, v head). */
static void rule_worker(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    const rule_task_t *a = arg;
    const cpu_backend_t *c = cpu_be(a->be);
    const kern_step_t *st = a->be->step;
    const kern_gdn_t *g = a->g;
    const int d = g->head_dim, nv = g->n_v_heads, nk = g->n_k_heads;
    const int C = KERN_GDN_CHUNK;
    const float scale = 1.0f / sqrtf((float)d);
    float *ws = c->gdn_scratch + (size_t)thread_idx * c->gdn_scratch_stride;
    float *qn = ws, *kn = qn + (size_t)C * d, *vv = kn + (size_t)C * d;
    float *bb = vv + (size_t)C * d, *gl = bb + C, *tmp = gl + C, *cw = tmp + d;
    for (int64_t item = begin; item < end; item++) {
        const int32_t r = (int32_t)(item / nv);
        const int h = (int)(item % nv);
        const int kh = gdn_k_head(g, h);
        const int bi = gdn_gate_index(g, h, a->grp);
        const int32_t t0 = c->gdn_run0[r], n = c->gdn_runlen[r];
        const int32_t slot = st->seqs[st->seq[t0]].state_slot;
        float *S = g->ssm_state + ((size_t)slot * (size_t)nv + (size_t)h) * (size_t)d * (size_t)d;
        if (st->pos[t0] == 0) {
            memset(S, 0, (size_t)d * (size_t)d * sizeof(float));
        }
        for (int32_t i0 = 0; i0 < n; i0 += C) {
            const int cn = n - i0 < C ? n - i0 : C;
            for (int i = 0; i < cn; i++) {
                const int64_t t = t0 + i0 + i;
                const float *row = a->qkv + t * a->ldq;
                l2norm(a->vo, qn + (size_t)i * d, row + (int64_t)kh * d, d, g->eps, scale);
                l2norm(a->vo, kn + (size_t)i * d, row + (int64_t)(nk + kh) * d, d, g->eps, 1.0f);
                memcpy(vv + (size_t)i * d, row + (int64_t)(2 * nk + h) * d,
                       (size_t)d * sizeof(float));
                bb[i] = sigmoidf_(a->beta[t * a->ldb + bi]);
                gl[i] = g->a[h] * softplusf_(a->alpha[t * a->lda + bi] + g->dt_bias[h]);
            }
            float *o = a->out + (int64_t)(t0 + i0) * nv * d + (int64_t)h * d;
            if (n == 1) {
                rule_step(a->vo, S, d, qn, kn, vv, bb[0], expf(gl[0]), tmp, o);
            } else {
                rule_chunk(a->vo, S, d, cn, qn, kn, vv, bb, gl, cw, o, (int64_t)nv * d);
            }
        }
    }
}

void kern_cpu_gdn_rule(kern_backend_t *be, const kern_gdn_t *g, const float *qkv, int64_t ldq,
                       const float *beta, int64_t ldb, const float *alpha, int64_t lda, int grp,
                       float *out)
{
    cpu_backend_t *c = cpu_be(be);
    if (g->head_dim > c->r.gdn_head_dim || !heads_ok(g)) {
        kern_be_fail(be, TDM_ERR_INVALID_PARAM,
                     "gated delta net: head dim %d (reserved %d), %d k / %d v heads (from k "
                     "%d / v %d of %d / %d)",
                     g->head_dim, c->r.gdn_head_dim, g->n_k_heads, g->n_v_heads, g->k_head0,
                     g->v_head0, g->n_k_all, g->n_v_all);
        return;
    }
    const int32_t n_runs = step_runs(be->step, c->gdn_run0, c->gdn_runlen);
    if (!slots_ok(be, g, n_runs)) {
        return;
    }
    const kern_vec_ops_t *vo = kern_vec_ops_get(kern_ctx_isa(c->ctx));
    if (vo == NULL) {
        vo = kern_vec_ops_get(KERN_ISA_SCALAR);
    }
    rule_task_t task = {be, vo, g, qkv, ldq, beta, alpha, ldb, lda, grp, out};
    kern_parallel_for(c->ctx, (int64_t)n_runs * g->n_v_heads, 1, rule_worker, &task);
}

size_t kern_cpu_gdn_scratch_floats(int head_dim)
{
    if (head_dim <= 0) {
        return 0;
    }
    const size_t C = KERN_GDN_CHUNK, d = (size_t)head_dim;
    /* qn, kn, v, b, g, tmp, then the chunk's own workspace */
    return 3 * C * d + 2 * C + d + chunk_scratch_floats(head_dim);
}

/* ---- norms and gates ---- */

void kern_cpu_rms_norm_gated(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                             const float *w, const float *z, int64_t ldz, int64_t rows,
                             int64_t cols, float eps)
{
    (void)be;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx, *zr = z + r * ldz;
        float *yr = y + r * ldy;
        double ss = 0.0;
        for (int64_t i = 0; i < cols; i++) {
            ss += (double)xr[i] * xr[i];
        }
        const float inv = (float)(1.0 / sqrt(ss / (double)cols + (double)eps));
        for (int64_t i = 0; i < cols; i++) {
            yr[i] = xr[i] * inv * w[i] * siluf_(zr[i]);
        }
    }
}

void kern_cpu_mul_sigmoid(kern_backend_t *be, float *y, int64_t ldy, const float *g, int64_t ldg,
                          int64_t rows, int64_t cols, bool bcast)
{
    (void)be;
    for (int64_t r = 0; r < rows; r++) {
        float *yr = y + r * ldy;
        const float *gr = g + r * ldg;
        for (int64_t i = 0; i < cols; i++) {
            yr[i] *= sigmoidf_(gr[bcast ? 0 : i]);
        }
    }
}
