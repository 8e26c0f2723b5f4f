/*
 * attention.cu - the paged KV cache on the GPU: writing a step's K/V rows (f32, f16 or
 * q8_0, converted as the CPU converts them) and attention over the cached positions.
 *
 * Attention of a query (token t, local head h) over the keys [lo, hi) of its sequence it
 * sees (hi = pos[t] + 1; lo = 0, or hi - window under a sliding window) is computed in a
 * canonical order that never depends on the step: the span is cut into segments of
 * CU_ATTN_SEG counted from lo, so the boundaries are a function of the span alone; each
 * segment is an online softmax (running max, sum and weighted values) started fresh;
 * segments are merged one after the other, in order, and the head's sink (a logit with no
 * value) is merged last, once, as a segment of one key whose value is zero. A warp per
 * (query, segment) writes the segment's state and a second kernel merges them (long
 * contexts, few queries: the split spreads one query over many SMs), or a warp per query
 * walks all segments itself (many queries); both do the same arithmetic, so a token's
 * attention is the same in a prefill chunk and in a decode step. The score scale of a
 * query (with a temperature, a function of its position) is computed as the CPU's
 * kern_attn_span_of computes it, in double.
 */
#include "kernels/cuda/cuda_be.cuh"

#include <cuda_fp16.h>
#include <math.h>

/* Most head_dim floats a lane holds (head_dim <= 32 * ATT_DPL). */
#define ATT_DPL 8

/* ---- KV writes ---- */

/* Block (t, kv head, K or V): one row converted into the cache at t's position. */
__global__ void kv_store_kernel(unsigned char *k_layer, unsigned char *v_layer, const float *k,
                                const float *v, int64_t ld, int type, int hd, int B,
                                size_t row_bytes, size_t block_bytes, const int32_t *pos,
                                const int32_t *seq, const int32_t *seq_off, const int32_t *blocks)
{
    const int t = blockIdx.x, h = blockIdx.y;
    const float *src = (blockIdx.z == 0 ? k : v) + (int64_t)t * ld + (int64_t)h * hd;
    const int p = pos[t];
    const int32_t blk = blocks[seq_off[seq[t]] + p / B];
    unsigned char *dst = (blockIdx.z == 0 ? k_layer : v_layer) + (size_t)blk * block_bytes +
                         ((size_t)h * (size_t)B + (size_t)(p % B)) * row_bytes;
    if (type == TDM_TYPE_F32) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            ((float *)dst)[d] = src[d];
        }
    } else if (type == TDM_TYPE_F16) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            ((__half *)dst)[d] = __float2half_rn(src[d]);
        }
    } else { /* Q8_0, as kern_from_float_q8_0: one warp per block of 32 */
        const int lane = threadIdx.x & 31;
        for (int b = threadIdx.x >> 5; b < hd / 32; b += blockDim.x >> 5) {
            const float x = src[b * 32 + lane];
            float amax = fabsf(x);
            for (int off = 16; off > 0; off >>= 1) {
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
            }
            const float dd = __fdiv_rn(amax, 127.0f);
            const float id = dd != 0.0f ? __fdiv_rn(1.0f, dd) : 0.0f;
            unsigned char *blkp = dst + (size_t)b * 34;
            blkp[2 + lane] = (unsigned char)(int8_t)(int)roundf(__fmul_rn(x, id));
            if (lane == 0) {
                *(__half *)blkp = __float2half_rn(dd);
            }
        }
    }
}

void cu_kv_store(cuda_backend_t *c, const kern_kv_layout_t *l, void *k_layer, void *v_layer,
                 const float *k, const float *v, int64_t ld, int32_t n_tok)
{
    if (n_tok == 0) {
        return;
    }
    if (l->swa && c->d_swa_off == NULL) {
        kern_be_fail(&c->base, TDM_ERR_INTERNAL,
                     "cuda: a sliding-pool layer in a step without sliding tables");
        return;
    }
    dim3 grid(n_tok, l->n_kv_heads, 2);
    int threads = l->type == TDM_TYPE_Q8_0 ? 32 * (l->head_dim / 32) : l->head_dim;
    threads = threads < 32 ? 32 : (threads > 256 ? 256 : (threads + 31) / 32 * 32);
    kv_store_kernel<<<grid, threads, 0, c->stream>>>(
        (unsigned char *)k_layer, (unsigned char *)v_layer, k, v, ld, (int)l->type, l->head_dim,
        l->block_tokens, l->row_bytes, l->block_bytes, c->d_pos, c->d_seq,
        l->swa ? c->d_swa_off : c->d_seq_off, c->d_blocks);
    cu_check_launch(c, "kv_store");
}

/* ---- attention ---- */

/* Element d of a cached row of `type`. */
__device__ __forceinline__ float kv_elem(int type, const unsigned char *row, int d)
{
    if (type == TDM_TYPE_F32) {
        return ((const float *)row)[d];
    }
    if (type == TDM_TYPE_F16) {
        return __half2float(((const __half *)row)[d]);
    }
    const unsigned char *b = row + (d / 32) * 34;
    return __fmul_rn(__half2float(*(const __half *)b), (float)(int8_t)b[2 + d % 32]);
}

typedef struct att_args {
    float *out;
    const float *q;
    const unsigned char *k, *v;
    int type, hd, B, n_head, head_lo, kv_lo, group;
    size_t row_bytes, block_bytes;
    float scale;
    int window;         /* > 0: a query sees its last `window` positions only   */
    const float *sinks; /* per local head, or NULL                              */
    float temp_scale;   /* != 0: scores scaled by 1 + temp_scale ln(1 + p / fl) */
    int temp_floor;     /* fl                                                   */
    const int32_t *pos, *seq, *seq_off, *blocks;
    float *part; /* split: (m, l, acc[hd]) per (t, h, segment) */
    int n_seg;   /* split: segments per query in part; serial: 0 */
} att_args_t;

/* A segment's online softmax state, one lane's share of the dims. */
typedef struct seg_state {
    float m, l, acc[ATT_DPL];
} seg_state_t;

/* Merges segment state b into the running state a (the same order in both kernels). */
__device__ __forceinline__ void merge(seg_state_t *a, const seg_state_t *b, int n)
{
    const float mm = fmaxf(a->m, b->m);
    const float ca = expf(a->m - mm), cb = expf(b->m - mm);
    a->l = __fadd_rn(__fmul_rn(a->l, ca), __fmul_rn(b->l, cb));
    for (int i = 0; i < n; i++) {
        a->acc[i] = __fadd_rn(__fmul_rn(a->acc[i], ca), __fmul_rn(b->acc[i], cb));
    }
    a->m = mm;
}

/* The keys [lo, hi) token t's query sees, and its score scale (kern_attn_span_of's
 * arithmetic, operation by operation in double). */
typedef struct att_span {
    int lo, hi;
    float scale;
} att_span_t;

__device__ __forceinline__ att_span_t span_of(const att_args_t &a, int t)
{
    const int p = a.pos[t];
    att_span_t sp;
    sp.hi = p + 1;
    sp.lo = a.window > 0 && p >= a.window ? p - a.window + 1 : 0;
    sp.scale = a.scale;
    if (a.temp_scale != 0.0f) {
        const double fl = floor(__ddiv_rn((double)p, (double)a.temp_floor));
        const double f = __dadd_rn(__dmul_rn(log(__dadd_rn(fl, 1.0)), (double)a.temp_scale), 1.0);
        sp.scale = (float)__dmul_rn((double)a.scale, f);
    }
    return sp;
}

/* Segments of a span (at least one: a span is never empty). */
__device__ __forceinline__ int span_segs(const att_span_t &sp)
{
    return (sp.hi - sp.lo + CU_ATTN_SEG - 1) / CU_ATTN_SEG;
}

/* Keys [j0, j1) of query (t, h) from a fresh state. */
__device__ static void run_segment(const att_args_t &a, int t, int h, int j0, int j1, float scale,
                                   const float *qv, seg_state_t *st)
{
    const int lane = threadIdx.x & 31, nd = (a.hd + 31) / 32;
    const int kvh = (a.head_lo + h) / a.group - a.kv_lo;
    const int32_t *tab = a.blocks + a.seq_off[a.seq[t]];
    st->m = -INFINITY;
    st->l = 0.0f;
    for (int i = 0; i < ATT_DPL; i++) {
        st->acc[i] = 0.0f;
    }
    for (int j = j0; j < j1; j++) {
        const size_t off = (size_t)tab[j / a.B] * a.block_bytes +
                           ((size_t)kvh * (size_t)a.B + (size_t)(j % a.B)) * a.row_bytes;
        const unsigned char *kr = a.k + off, *vr = a.v + off;
        float dot = 0.0f;
        for (int i = 0; i < nd; i++) {
            const int d = lane + 32 * i;
            if (d < a.hd) {
                dot = fmaf(qv[i], kv_elem(a.type, kr, d), dot);
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            dot += __shfl_xor_sync(0xffffffffu, dot, o);
        }
        const float s = __fmul_rn(dot, scale);
        const float mn = fmaxf(st->m, s);
        const float corr = expf(st->m - mn), p = expf(s - mn);
        st->l = __fadd_rn(__fmul_rn(st->l, corr), p);
        for (int i = 0; i < nd; i++) {
            const int d = lane + 32 * i;
            const float vv = d < a.hd ? kv_elem(a.type, vr, d) : 0.0f;
            st->acc[i] = __fadd_rn(__fmul_rn(st->acc[i], corr), __fmul_rn(p, vv));
        }
        st->m = mn;
    }
}

/* Segment s of a span: keys [j0, j1). */
__device__ __forceinline__ void seg_keys(const att_span_t &sp, int s, int *j0, int *j1)
{
    *j0 = sp.lo + s * CU_ATTN_SEG;
    *j1 = sp.hi - *j0 > CU_ATTN_SEG ? *j0 + CU_ATTN_SEG : sp.hi;
}

/* The final state: the head's sink merged last (merge() with a state of one key of logit
 * sinks[h] and value 0: m = sink, l = 1, acc = 0), then the weighted values divided by the
 * sum. */
__device__ static void finish(const att_args_t &a, int t, int h, seg_state_t *run, int nd)
{
    const int lane = threadIdx.x & 31;
    if (a.sinks != NULL) {
        const float sink = a.sinks[h];
        const float mm = fmaxf(run->m, sink);
        const float ca = expf(run->m - mm), cb = expf(sink - mm);
        run->l = __fadd_rn(__fmul_rn(run->l, ca), cb);
        for (int i = 0; i < nd; i++) {
            run->acc[i] = __fmul_rn(run->acc[i], ca);
        }
        run->m = mm;
    }
    float *o = a.out + ((int64_t)t * a.n_head + h) * a.hd;
    for (int i = 0; i < nd; i++) {
        const int d = lane + 32 * i;
        if (d < a.hd) {
            o[d] = __fdiv_rn(run->acc[i], run->l);
        }
    }
}

/* Grid (token, head, segment or 1): one warp each. */
__global__ void attention_kernel(att_args_t a)
{
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, nd = (a.hd + 31) / 32;
    const att_span_t sp = span_of(a, t);
    const int nseg = span_segs(sp);
    const float *q = a.q + ((int64_t)t * a.n_head + h) * a.hd;
    float qv[ATT_DPL];
    for (int i = 0; i < ATT_DPL; i++) {
        const int d = lane + 32 * i;
        qv[i] = i < nd && d < a.hd ? q[d] : 0.0f;
    }
    if (a.n_seg > 0) {
        /* split: this block's segment only */
        const int s = blockIdx.z;
        if (s >= nseg) {
            return; /* the merge reads only the query's own segments */
        }
        seg_state_t st;
        int j0, j1;
        seg_keys(sp, s, &j0, &j1);
        run_segment(a, t, h, j0, j1, sp.scale, qv, &st);
        float *p = a.part + (((int64_t)t * a.n_head + h) * a.n_seg + s) * (a.hd + 2);
        if (lane == 0) {
            p[0] = st.m;
            p[1] = st.l;
        }
        for (int i = 0; i < nd; i++) {
            const int d = lane + 32 * i;
            if (d < a.hd) {
                p[2 + d] = st.acc[i];
            }
        }
        return;
    }
    seg_state_t run, st;
    for (int s = 0; s < nseg; s++) {
        int j0, j1;
        seg_keys(sp, s, &j0, &j1);
        run_segment(a, t, h, j0, j1, sp.scale, qv, s == 0 ? &run : &st);
        if (s > 0) {
            merge(&run, &st, nd);
        }
    }
    finish(a, t, h, &run, nd);
}

/* Grid (token, head): merges the query's segments in order. */
__global__ void attention_merge_kernel(att_args_t a)
{
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, nd = (a.hd + 31) / 32;
    const int nseg = span_segs(span_of(a, t));
    const float *base = a.part + ((int64_t)t * a.n_head + h) * a.n_seg * (a.hd + 2);
    seg_state_t run, st;
    for (int s = 0; s < nseg; s++) {
        const float *p = base + (int64_t)s * (a.hd + 2);
        seg_state_t *x = s == 0 ? &run : &st;
        x->m = p[0];
        x->l = p[1];
        for (int i = 0; i < ATT_DPL; i++) {
            const int d = lane + 32 * i;
            x->acc[i] = i < nd && d < a.hd ? p[2 + d] : 0.0f;
        }
        if (s > 0) {
            merge(&run, &st, nd);
        }
    }
    finish(a, t, h, &run, nd);
}

void cu_attention(cuda_backend_t *c, float *out, const float *q, const kern_kv_layout_t *l,
                  const void *k_layer, const void *v_layer, const kern_attn_params_t *p,
                  int32_t n_tok)
{
    if (l->head_dim > 32 * ATT_DPL) {
        kern_be_fail(&c->base, TDM_ERR_UNSUPPORTED, "cuda: attention with head dim %d (at most %d)",
                     l->head_dim, 32 * ATT_DPL);
        return;
    }
    if (n_tok == 0 || p->n_head == 0) {
        return;
    }
    if (l->swa && c->d_swa_off == NULL) {
        kern_be_fail(&c->base, TDM_ERR_INTERNAL,
                     "cuda: a sliding-pool layer in a step without sliding tables");
        return;
    }
    att_args_t a;
    a.out = out;
    a.q = q;
    a.k = (const unsigned char *)k_layer;
    a.v = (const unsigned char *)v_layer;
    a.type = (int)l->type;
    a.hd = l->head_dim;
    a.B = l->block_tokens;
    a.n_head = p->n_head;
    a.head_lo = p->head_lo;
    a.kv_lo = p->kv_lo;
    a.group = p->group;
    a.row_bytes = l->row_bytes;
    a.block_bytes = l->block_bytes;
    a.scale = p->scale;
    a.window = p->window;
    a.sinks = p->sinks;
    a.temp_scale = p->temp_scale;
    a.temp_floor = p->temp_floor;
    a.pos = c->d_pos;
    a.seq = c->d_seq;
    a.seq_off = l->swa ? c->d_swa_off : c->d_seq_off; /* the sliding pool's tables */
    a.blocks = c->d_blocks;
    a.part = c->attn_part;
    /* the grid's segment span: c->max_keys covers every query of the step, and a window
     * bounds every span (segments count from a span's first key) */
    const int32_t span_max = p->window > 0 && p->window < c->max_keys ? p->window : c->max_keys;
    const int segs = (span_max + CU_ATTN_SEG - 1) / CU_ATTN_SEG;
    const size_t need =
        (size_t)n_tok * (size_t)p->n_head * (size_t)segs * (size_t)(l->head_dim + 2);
    const bool split = segs > 1 && need <= c->attn_part_floats &&
                       (int64_t)n_tok * p->n_head < 8 * (int64_t)c->n_sm;
    a.n_seg = split ? segs : 0;
    dim3 grid(n_tok, p->n_head, split ? segs : 1);
    attention_kernel<<<grid, 32, 0, c->stream>>>(a);
    if (!cu_check_launch(c, "attention") || !split) {
        return;
    }
    attention_merge_kernel<<<dim3(n_tok, p->n_head), 32, 0, c->stream>>>(a);
    cu_check_launch(c, "attention merge");
}
