/*
 * backend_cuda.cu - the CUDA backend object (kern_backend.h): one GPU, one stream.
 *
 * Memory: device memory from cudaMalloc; host-visible memory (the collectives' buffers) is
 * pinned, mapped host memory, which under unified addressing has one pointer for both
 * sides. Weights: one region holding every view's slice compact, filled through two
 * pinned staging buffers in turn (kernels/weights_plan.c), the file's page cache dropped
 * behind each chunk. Steps: the metadata (tokens, positions, block tables) is packed into
 * one pinned buffer and copied once; a decode-sized step may be captured as a CUDA graph
 * and replayed (kernels/step_graph.h). Each op hashes its arguments into the step's
 * fingerprint, and in replay mode does nothing else.
 */
#include "common/check.h"
#include "common/meminfo.h"
#include "kernels/cuda/cuda_be.cuh"
#include "kernels/cuda/kern_cuda.h"
#include "kernels/cuda/qblock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Steps of at most this many tokens may be captured (decode and small mixed steps;
 * prefill shapes rarely repeat). */
#define CU_GRAPH_MAX_TOKENS 64
#define CU_GRAPH_CAPACITY   32
/* Pinned staging for the weight copy: two buffers of this many bytes. */
#define CU_STAGING_BYTES (64u << 20)

/* Op ids in the fingerprint. */
enum {
    OP_GET_ROWS = 1,
    OP_OUT_ROWS,
    OP_RMS_NORM,
    OP_ROPE,
    OP_MATMUL,
    OP_SWIGLU,
    OP_ADD,
    OP_KV_STORE,
    OP_ATTENTION,
    OP_MOE_ROUTE,
    OP_MOE_EXPERTS,
    OP_COPY,
    OP_ADD_BIAS,
    OP_SUM_SQ,
    OP_RMS_APPLY,
};

bool cu_check_launch(cuda_backend_t *c, const char *what)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        kern_be_fail(&c->base, TDM_ERR_DEVICE, "cuda: %s: %s", what, cudaGetErrorString(e));
        return false;
    }
    return true;
}

static tdm_status_t cu_err(tdm_error_t *err, cudaError_t e, const char *what)
{
    (void)cudaGetLastError();
    return tdm_error_set(err, TDM_ERR_DEVICE, "cuda: %s: %s", what, cudaGetErrorString(e));
}

#define CU_TRY(call, what)                     \
    do {                                       \
        cudaError_t cu_e_ = (call);            \
        if (cu_e_ != cudaSuccess) {            \
            return cu_err(err, cu_e_, (what)); \
        }                                      \
    } while (0)

/* The runtime's current device is per host thread; the engine thread is not the one that
 * made the backend. */
static void cu_enter(cuda_backend_t *c)
{
    (void)cudaSetDevice(c->dev);
}

/* Forgets every captured graph (the memory they point into is going away). A replay in
 * progress cannot launch its graph any more: the step is then run again. */
static void cu_graphs_clear(cuda_backend_t *c)
{
    if (c->graphs == NULL) {
        return;
    }
    if (c->mode == KERN_GRAPH_REPLAY) {
        c->replay_lost = true;
    }
    kern_graph_clear(c->graphs);
}

static void cu_stats(const kern_backend_t *be, kern_be_stats_t *out)
{
    *out = ((const cuda_backend_t *)be)->stats;
}

/* ---- memory ------------------------------------------------------------------------------ */

static void cu_destroy(kern_backend_t *be)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    if (c->stream != NULL) {
        (void)cudaStreamSynchronize(c->stream);
    }
    kern_graph_cache_destroy(c->graphs);
    kern_fingerprint_free(&c->fp);
    cudaFree(c->scratch);
    cudaFree(c->meta_dev);
    cudaFreeHost(c->meta_host);
    for (int i = 0; i < c->n_pinned; i++) {
        cudaFreeHost(c->pinned[i]);
    }
    free(c->pinned);
    if (c->meta_copied != NULL) {
        cudaEventDestroy(c->meta_copied);
    }
    if (c->stream != NULL) {
        cudaStreamDestroy(c->stream);
    }
    (void)cudaGetLastError();
    free(c);
}

static tdm_status_t cu_mem_info(kern_backend_t *be, uint64_t *free_b, uint64_t *total_b,
                                tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    size_t f = 0, t = 0;
    CU_TRY(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
    *free_b = f;
    *total_b = t;
    if (c->integrated) {
        /* unified memory: the GPU's free memory is the host's; the page cache the driver
         * counts as used is reclaimable, and other processes' allocations are not */
        uint64_t avail = 0;
        if (tdm_meminfo_read(NULL, &avail, NULL, NULL) == TDM_OK && avail < *free_b) {
            *free_b = avail;
        }
    }
    return TDM_OK;
}

static tdm_status_t cu_alloc(kern_backend_t *be, size_t bytes, unsigned flags, const char *what,
                             void **out, tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    if (bytes == 0) {
        bytes = 1;
    }
    void *p = NULL;
    cudaError_t e;
    if (flags & KERN_MEM_HOST_VISIBLE) {
        e = cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable);
        if (e == cudaSuccess) {
            void *dp = NULL;
            if (cudaHostGetDevicePointer(&dp, p, 0) != cudaSuccess || dp != p) {
                cudaFreeHost(p);
                (void)cudaGetLastError();
                return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                     "%s: pinned host memory has another address on the GPU "
                                     "(no unified addressing)",
                                     what);
            }
            memset(p, 0, bytes);
            if (c->n_pinned == c->cap_pinned) {
                c->cap_pinned = c->cap_pinned > 0 ? 2 * c->cap_pinned : 8;
                c->pinned = (void **)realloc(c->pinned, (size_t)c->cap_pinned * sizeof(void *));
            }
            c->pinned[c->n_pinned++] = p;
        }
    } else {
        e = cudaMalloc(&p, bytes);
        if (e == cudaSuccess) { /* on the stream: ordered before every op that uses it */
            e = cudaMemsetAsync(p, 0, bytes, c->stream);
        }
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (p != NULL && !(flags & KERN_MEM_HOST_VISIBLE)) {
            cudaFree(p);
        }
        return tdm_error_set(err,
                             e == cudaErrorMemoryAllocation ? TDM_ERR_NO_MEMORY : TDM_ERR_DEVICE,
                             "%s: cannot allocate %.1f MiB on %s: %s", what,
                             (double)bytes / 1048576.0, c->base.desc, cudaGetErrorString(e));
    }
    *out = p;
    return TDM_OK;
}

static void cu_free(kern_backend_t *be, void *p)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    (void)cudaStreamSynchronize(c->stream); /* no op may still use it */
    for (int i = 0; i < c->n_pinned; i++) {
        if (c->pinned[i] == p) {
            cudaFreeHost(p);
            c->pinned[i] = c->pinned[--c->n_pinned];
            return;
        }
    }
    cudaFree(p);
    cu_graphs_clear(c); /* graphs may point into the freed memory */
}

static tdm_status_t cu_to_device(kern_backend_t *be, void *dst, const void *src, size_t n,
                                 tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->stream), "copy to device");
    CU_TRY(cudaStreamSynchronize(c->stream), "copy to device");
    return TDM_OK;
}

static tdm_status_t cu_to_host(kern_backend_t *be, void *dst, const void *src, size_t n,
                               tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->stream), "copy to host");
    CU_TRY(cudaStreamSynchronize(c->stream), "copy to host");
    return TDM_OK;
}

static tdm_status_t cu_sync(kern_backend_t *be, tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    CU_TRY(cudaStreamSynchronize(c->stream), "synchronize");
    return TDM_OK;
}

static void cu_copy(kern_backend_t *be, void *dst, const void *src, size_t n)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    /* a copy outside a step (copy-on-write of a KV block) runs as it comes; inside a step
     * the copy is recorded like an op (its arguments: plain words, no padding) */
    if (c->mode != KERN_GRAPH_EAGER) {
        const uint64_t v[3] = {(uint64_t)(uintptr_t)dst, (uint64_t)(uintptr_t)src, (uint64_t)n};
        kern_fingerprint_add(&c->fp, OP_COPY, v, sizeof(v));
        if (c->mode == KERN_GRAPH_REPLAY) {
            return;
        }
    }
    cudaError_t e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, c->stream);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        kern_be_fail(be, TDM_ERR_DEVICE, "cuda: copy: %s", cudaGetErrorString(e));
    }
}

/* ---- weights ------------------------------------------------------------------------------ */

#define CU_WEIGHT_ALIGN 256

static uint64_t cu_weights_bytes(const kern_backend_t *be, const kern_weight_ref_t *refs, int n)
{
    (void)be;
    kern_weight_place_t *pl = (kern_weight_place_t *)calloc((size_t)(n > 0 ? n : 1), sizeof(*pl));
    uint64_t total = 0;
    if (pl == NULL || kern_weights_plan(refs, n, CU_WEIGHT_ALIGN, pl, &total, NULL) != TDM_OK) {
        total = UINT64_MAX;
    }
    free(pl);
    return total;
}

typedef struct cu_sink_state {
    cuda_backend_t *c;
    void *stage[2];
    cudaEvent_t ev[2];
    bool pending[2];
} cu_sink_state_t;

static tdm_status_t sink_copy(void *arg, int slot, void *dst, size_t n, tdm_error_t *err)
{
    cu_sink_state_t *s = (cu_sink_state_t *)arg;
    CU_TRY(cudaMemcpyAsync(dst, s->stage[slot], n, cudaMemcpyHostToDevice, s->c->stream),
           "weight copy");
    CU_TRY(cudaEventRecord(s->ev[slot], s->c->stream), "weight copy");
    s->pending[slot] = true;
    return TDM_OK;
}

static tdm_status_t sink_wait(void *arg, int slot, tdm_error_t *err)
{
    cu_sink_state_t *s = (cu_sink_state_t *)arg;
    if (s->pending[slot]) {
        CU_TRY(cudaEventSynchronize(s->ev[slot]), "weight copy");
        s->pending[slot] = false;
    }
    return TDM_OK;
}

static tdm_status_t cu_weights_load(kern_backend_t *be, kern_weight_ref_t *refs, int n,
                                    kern_release_fn release, void *release_arg, void **out,
                                    tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    void *region = NULL;
    kern_weight_place_t *pl = (kern_weight_place_t *)calloc((size_t)(n > 0 ? n : 1), sizeof(*pl));
    if (pl == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "weights: out of memory");
    }
    uint64_t total = 0;
    tdm_status_t st = kern_weights_plan(refs, n, CU_WEIGHT_ALIGN, pl, &total, err);
    uint64_t free_b = 0, total_b = 0;
    if (st == TDM_OK) {
        st = cu_mem_info(be, &free_b, &total_b, err);
    }
    if (st == TDM_OK && total > free_b) {
        st = tdm_error_set(
            err, TDM_ERR_NO_MEMORY, "weights: %.2f GiB do not fit in the %.2f GiB free on %s",
            (double)total / 1073741824.0, (double)free_b / 1073741824.0, c->base.desc);
    }
    if (st == TDM_OK) {
        st = cu_alloc(be, (size_t)total, KERN_MEM_DEVICE, "weights", &region, err);
    }
    /* two pinned staging buffers, used in turn */
    const size_t stage =
        total < CU_STAGING_BYTES ? (size_t)(total > 0 ? total : 1) : CU_STAGING_BYTES;
    void *sb[2] = {NULL, NULL};
    cu_sink_state_t ss = {c, {NULL, NULL}, {NULL, NULL}, {false, false}};
    for (int i = 0; i < 2 && st == TDM_OK; i++) {
        st = cu_alloc(be, stage, KERN_MEM_HOST_VISIBLE, "weight staging", &sb[i], err);
        ss.stage[i] = sb[i];
        if (st == TDM_OK &&
            cudaEventCreateWithFlags(&ss.ev[i], cudaEventDisableTiming) != cudaSuccess) {
            st = cu_err(err, cudaGetLastError(), "event");
        }
    }
    if (st == TDM_OK) {
        kern_copy_sink_t sink = {
            &ss, {(unsigned char *)sb[0], (unsigned char *)sb[1]}, stage, sink_copy, sink_wait};
        st = kern_weights_copy(refs, n, pl, (unsigned char *)region, &sink, release, release_arg,
                               err);
    }
    for (int i = 0; i < 2; i++) {
        if (ss.ev[i] != NULL) {
            cudaEventDestroy(ss.ev[i]);
        }
    }
    for (int i = 1; i >= 0; i--) {
        if (sb[i] != NULL) {
            cu_free(be, sb[i]);
        }
    }
    if (st == TDM_OK) {
        kern_weights_rebind(refs, n, pl, (unsigned char *)region);
        c->weights_bytes += total;
        *out = region;
    } else if (region != NULL) {
        (void)cudaStreamSynchronize(c->stream); /* its zeroing may still be running */
        cudaFree(region);
    }
    free(pl);
    return st;
}

/* ---- reserved scratch -------------------------------------------------------------------------
 */

static size_t align256(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

static uint64_t cu_reserve_bytes(const kern_backend_t *be, const kern_reserve_t *r)
{
    (void)be;
    /* the same formula cu_reserve carves by (kernels/cuda_reserve.c, plain C, so memory
     * plans count it without a GPU) */
    return kern_cuda_reserve_bytes(r);
}

static tdm_status_t grow_meta(cuda_backend_t *c, size_t need, tdm_error_t *err)
{
    if (need <= c->meta_cap) {
        return TDM_OK;
    }
    size_t cap = c->meta_cap > 0 ? c->meta_cap : 1024;
    while (cap < need) {
        cap *= 2;
    }
    CU_TRY(cudaStreamSynchronize(c->stream), "metadata");
    cudaFreeHost(c->meta_host);
    cudaFree(c->meta_dev);
    c->meta_host = NULL;
    c->meta_dev = NULL;
    c->meta_cap = 0;
    CU_TRY(cudaHostAlloc((void **)&c->meta_host, cap * 4, cudaHostAllocDefault), "metadata");
    CU_TRY(cudaMalloc((void **)&c->meta_dev, cap * 4), "metadata");
    c->meta_cap = cap;
    cu_graphs_clear(c); /* captured kernels point at the old buffer */
    return TDM_OK;
}

static tdm_status_t cu_reserve(kern_backend_t *be, const kern_reserve_t *r, tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    kern_cuda_sizes_t z;
    kern_cuda_reserve_sizes(r, &z);
    void *buf = NULL;
    TDM_CHECK(cu_alloc(be, (size_t)z.scratch_bytes, KERN_MEM_DEVICE, "op scratch", &buf, err));
    (void)cudaStreamSynchronize(c->stream); /* no op may still use the old scratch */
    cudaFree(c->scratch);
    cu_graphs_clear(c);
    c->scratch = buf;
    c->r = *r;
    unsigned char *p = (unsigned char *)buf;
#define CARVE(dst, type, bytes) (dst = (type)p, p += align256(bytes))
    CARVE(c->act_buf[0], unsigned char *, z.act);
    CARVE(c->act_buf[1], unsigned char *, z.act);
    c->act_bytes = z.act;
    CARVE(c->partial, float *, z.partial * 4);
    c->partial_floats = z.partial;
    CARVE(c->attn_part, float *, z.attn * 4);
    c->attn_part_floats = z.attn;
    CARVE(c->moe_cnt, int32_t *, z.cnt * 4);
    CARVE(c->moe_off, int32_t *, z.cnt * 4);
    CARVE(c->moe_pair_tok, int32_t *, z.pair * 4);
    CARVE(c->moe_pair_w, float *, z.pair * 4);
    CARVE(c->moe_pair_of, int32_t *, z.pair * 4);
    CARVE(c->moe_tiles, int32_t *, z.tiles * 4);
    c->moe_n_tiles = c->moe_tiles + (size_t)z.max_tiles * 3;
    CARVE(c->moe_gate, float *, z.ff * 4);
    CARVE(c->moe_up, float *, z.ff * 4);
    CARVE(c->moe_out, float *, z.out * 4);
#undef CARVE
    c->max_pairs = z.max_pairs;
    TDM_ASSERT((uint64_t)(p - (unsigned char *)buf) == z.scratch_bytes); /* carved = sized */
    return grow_meta(c, (size_t)z.meta, err);
}

/* ---- steps -------------------------------------------------------------------------------------
 */

static int32_t next_pow2(int32_t v)
{
    int32_t p = 1;
    while (p < v) {
        p *= 2;
    }
    return p;
}

static void cu_step_begin(kern_backend_t *be, const kern_step_t *st, bool graphable)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    c->mode = KERN_GRAPH_EAGER;
    c->replay_lost = false;
    const int32_t T = (int32_t)c->r.n_tok, n = st->n_tokens;
    if (n > T || st->n_out > T || st->n_seqs > T) {
        kern_be_fail(be, TDM_ERR_INTERNAL,
                     "cuda: step of %d tokens, %d seqs beyond the %d "
                     "reserved",
                     n, st->n_seqs, T);
        return;
    }
    /* Layout of the metadata (int32 each), every array at an offset that is a function of
     * the reserved T alone, so a captured graph's pointers stay valid from step to step:
     *   token[T] pos[T] seq[T] out[T] seq_off[T+1] (swa_off[T+1]) tables...
     * tables: every sequence's blocks, then (with sliding tables) every sequence's
     * swa_blocks; swa_off[s] = nb + seq_off[s] (relative to the tables). */
    const bool swa = st->n_seqs > 0 && st->seqs[0].swa_blocks != NULL;
    const size_t head = (size_t)5 * (size_t)T + 1 + (swa ? (size_t)T + 1 : 0);
    size_t nb = 0;
    for (int32_t s = 0; s < st->n_seqs; s++) {
        nb += (size_t)st->seqs[s].n_blocks;
    }
    tdm_error_t err;
    tdm_error_clear(&err);
    const size_t need = head + (swa ? 2 : 1) * nb;
    if (grow_meta(c, need, &err) != TDM_OK) {
        kern_be_fail(be, err.status, "%s", err.msg);
        return;
    }
    /* the previous step's copy must have read the pinned buffer before it is rewritten */
    (void)cudaEventSynchronize(c->meta_copied);
    int32_t *h = c->meta_host;
    int32_t max_keys = 1;
    for (int32_t t = 0; t < n; t++) {
        h[t] = st->token[t];
        h[T + t] = st->pos[t];
        h[2 * T + t] = st->seq[t];
        max_keys = st->pos[t] + 1 > max_keys ? st->pos[t] + 1 : max_keys;
    }
    for (int32_t i = 0; i < st->n_out; i++) {
        h[3 * T + i] = st->out_idx[i];
    }
    int32_t *off = h + 4 * T, *swa_off = h + 5 * T + 1, *blocks = h + head;
    off[0] = 0;
    for (int32_t s = 0; s < st->n_seqs; s++) {
        const kern_seq_t *sq = &st->seqs[s];
        memcpy(blocks + off[s], sq->blocks, (size_t)sq->n_blocks * 4);
        off[s + 1] = off[s] + sq->n_blocks;
        if (!swa) {
            continue;
        }
        swa_off[s] = (int32_t)nb + off[s];
        if (sq->swa_blocks != NULL) {
            memcpy(blocks + swa_off[s], sq->swa_blocks, (size_t)sq->n_blocks * 4);
        } else {
            /* not expected (the shard checks every sequence has one): no block anywhere */
            for (int32_t j = 0; j < sq->n_blocks; j++) {
                blocks[swa_off[s] + j] = -1;
            }
        }
    }
    const size_t used = head + (swa ? 2 : 1) * nb;
    if (cudaMemcpyAsync(c->meta_dev, h, used * 4, cudaMemcpyHostToDevice, c->stream) !=
            cudaSuccess ||
        cudaEventRecord(c->meta_copied, c->stream) != cudaSuccess) {
        cu_check_launch(c, "step metadata copy");
        return;
    }
    c->d_tok = c->meta_dev;
    c->d_pos = c->meta_dev + T;
    c->d_seq = c->meta_dev + 2 * T;
    c->d_out = c->meta_dev + 3 * T;
    c->d_seq_off = c->meta_dev + 4 * T;
    c->d_swa_off = swa ? c->meta_dev + 5 * T + 1 : NULL;
    c->d_blocks = c->meta_dev + head;
    /* the attention grid covers a power of two of segments (one graph per bucket) */
    c->max_keys = next_pow2((max_keys + CU_ATTN_SEG - 1) / CU_ATTN_SEG) * CU_ATTN_SEG;

    if (!graphable || c->graphs_off || n > CU_GRAPH_MAX_TOKENS) {
        return;
    }
    c->key = (kern_graph_key_t){n, st->n_out, c->max_keys / CU_ATTN_SEG};
    c->mode = kern_graph_begin(c->graphs, &c->key, &c->replay_exec, &c->replay_fp);
    kern_fingerprint_reset(&c->fp);
    if (c->mode == KERN_GRAPH_CAPTURE &&
        cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        kern_graph_drop(c->graphs, &c->key);
        c->mode = KERN_GRAPH_EAGER;
    }
}

static void free_exec(void *exec)
{
    cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

static tdm_status_t cu_step_end(kern_backend_t *be, bool *rerun, tdm_error_t *err)
{
    cuda_backend_t *c = cu_be(be);
    cu_enter(c);
    const kern_graph_action_t mode = c->mode;
    c->mode = KERN_GRAPH_EAGER;
    if (mode == KERN_GRAPH_CAPTURE) {
        cudaGraph_t g = NULL;
        cudaError_t e = cudaStreamEndCapture(c->stream, &g);
        cudaGraphExec_t exec = NULL;
        if (e == cudaSuccess && !be->failed) {
            e = cudaGraphInstantiate(&exec, g, 0);
        }
        if (g != NULL) {
            cudaGraphDestroy(g);
        }
        (void)cudaGetLastError();
        if (be->failed) {
            /* an op failed while recording: nothing ran, and the failure is reported by
             * the caller; the shape itself may be fine */
            if (exec != NULL) {
                cudaGraphExecDestroy(exec);
            }
            return TDM_OK;
        }
        if (e != cudaSuccess || exec == NULL) {
            /* the graph could not be made: nothing ran, the step runs again without one,
             * and this shape is not captured again */
            kern_graph_drop(c->graphs, &c->key);
            c->stats.graph_drops++;
            *rerun = true;
            return TDM_OK;
        }
        kern_graph_store(c->graphs, &c->key, exec, kern_fingerprint_value(&c->fp));
        c->stats.graph_captures++;
        CU_TRY(cudaGraphLaunch(exec, c->stream), "graph launch");
        return TDM_OK;
    }
    if (mode == KERN_GRAPH_REPLAY) {
        if (c->replay_lost || kern_fingerprint_value(&c->fp) != c->replay_fp) {
            if (!c->replay_lost) {
                kern_graph_drop(c->graphs, &c->key);
                c->stats.graph_drops++;
            }
            c->replay_lost = false;
            *rerun = true;
            return TDM_OK;
        }
        c->stats.graph_replays++;
        CU_TRY(cudaGraphLaunch((cudaGraphExec_t)c->replay_exec, c->stream), "graph launch");
    }
    return TDM_OK;
}

/* ---- ops ---------------------------------------------------------------------------------------
 *
 * Each op first lists its arguments as 64-bit words for the step's fingerprint (field by
 * field: hashing a struct would hash its padding, whose bytes are whatever the stack
 * held, and no replay would ever match), then launches unless the step is a replay. */

#define FA_MAX 160

typedef struct fp_args {
    uint64_t v[FA_MAX];
    int n;
} fp_args_t;

static void fa_u(fp_args_t *a, uint64_t x)
{
    if (a->n < FA_MAX) {
        a->v[a->n++] = x;
    }
}

static void fa_p(fp_args_t *a, const void *p)
{
    fa_u(a, (uint64_t)(uintptr_t)p);
}

static void fa_f(fp_args_t *a, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    fa_u(a, u);
}

static void fa_weight(fp_args_t *a, const kern_weight_t *w)
{
    fa_u(a, (uint64_t)w->type);
    fa_u(a, (uint64_t)w->n_cols);
    fa_u(a, (uint64_t)w->n_rows);
    fa_u(a, (uint64_t)w->row_bytes);
    fa_p(a, w->data);
}

static void fa_kv(fp_args_t *a, const kern_kv_layout_t *l)
{
    fa_u(a, (uint64_t)l->type);
    fa_u(a, (uint64_t)l->n_kv_heads);
    fa_u(a, (uint64_t)l->head_dim);
    fa_u(a, (uint64_t)l->block_tokens);
    fa_u(a, (uint64_t)l->n_blocks);
    fa_u(a, (uint64_t)l->row_bytes);
    fa_u(a, (uint64_t)l->block_bytes);
    fa_u(a, l->swa ? 1u : 0u);
}

/* The step's table arrays a layout's kernels read (their addresses are in the launch). */
static void fa_tables(fp_args_t *a, const cuda_backend_t *c, const kern_kv_layout_t *l)
{
    fa_p(a, c->d_blocks);
    fa_p(a, l->swa ? c->d_swa_off : c->d_seq_off);
}

/* Hashes an op into the step's fingerprint; true when the op must run (not a replay). */
static bool cu_op(cuda_backend_t *c, uint32_t op, const fp_args_t *a)
{
    if (c->mode != KERN_GRAPH_EAGER) {
        kern_fingerprint_add(&c->fp, op, a->v, (size_t)a->n * sizeof(uint64_t));
    }
    return c->mode != KERN_GRAPH_REPLAY;
}

static void cu_op_get_rows(kern_backend_t *be, float *x, int64_t ldx, const kern_weight_t *emb)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, x);
    fa_u(&a, (uint64_t)ldx);
    fa_weight(&a, emb);
    if (cu_op(c, OP_GET_ROWS, &a)) {
        cu_get_rows(c, x, ldx, emb, be->step->n_tokens);
    }
}

static void cu_op_get_out_rows(kern_backend_t *be, float *dst, int64_t ldd, const float *src,
                               int64_t lds, int64_t cols)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, dst);
    fa_u(&a, (uint64_t)ldd);
    fa_p(&a, src);
    fa_u(&a, (uint64_t)lds);
    fa_u(&a, (uint64_t)cols);
    if (cu_op(c, OP_OUT_ROWS, &a)) {
        cu_get_out_rows(c, dst, ldd, src, lds, cols, be->step->n_out);
    }
}

static void cu_op_rms_norm(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                           const float *w, int64_t rows, int64_t cols, float eps)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, y);
    fa_u(&a, (uint64_t)ldy);
    fa_p(&a, x);
    fa_u(&a, (uint64_t)ldx);
    fa_p(&a, w);
    fa_u(&a, (uint64_t)rows);
    fa_u(&a, (uint64_t)cols);
    fa_f(&a, eps);
    if (cu_op(c, OP_RMS_NORM, &a)) {
        cu_rms_norm(c, y, ldy, x, ldx, w, rows, cols, eps);
    }
}

static void cu_op_rope(kern_backend_t *be, float *x, int64_t ld, int n_heads, int head_dim,
                       const mdl_rope_params_t *p, const float *freq_factors)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, x);
    fa_u(&a, (uint64_t)ld);
    fa_u(&a, (uint64_t)n_heads);
    fa_u(&a, (uint64_t)head_dim);
    fa_u(&a, (uint64_t)p->type);
    fa_u(&a, (uint64_t)p->n_rot);
    fa_f(&a, p->freq_base);
    fa_f(&a, p->freq_scale);
    fa_u(&a, (uint64_t)p->scaling);
    fa_f(&a, p->ext_factor);
    fa_f(&a, p->attn_factor);
    fa_f(&a, p->beta_fast);
    fa_f(&a, p->beta_slow);
    fa_u(&a, p->n_ctx_orig);
    fa_p(&a, freq_factors);
    if (cu_op(c, OP_ROPE, &a)) {
        cu_rope(c, x, ld, be->step->n_tokens, n_heads, head_dim, p, freq_factors);
    }
}

static void cu_op_matmul(kern_backend_t *be, int n_ops, const kern_matmul_op_t *ops, int64_t n_tok)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_u(&a, (uint64_t)n_tok);
    for (int i = 0; i < n_ops; i++) {
        fa_weight(&a, ops[i].w);
        fa_p(&a, ops[i].x);
        fa_u(&a, (uint64_t)ops[i].ldx);
        fa_p(&a, ops[i].y);
        fa_u(&a, (uint64_t)ops[i].ldy);
    }
    if (!cu_op(c, OP_MATMUL, &a)) {
        return;
    }
    if (n_tok > c->r.n_tok) {
        kern_be_fail(be, TDM_ERR_INTERNAL, "cuda: matmul of %lld rows (reserved %lld)",
                     (long long)n_tok, (long long)c->r.n_tok);
        return;
    }
    /* Inputs shared by several products are quantized once: up to two at a time. */
    const float *have_x[2] = {NULL, NULL};
    int have_fmt[2] = {-2, -2};
    int64_t have_k[2] = {0, 0}, have_ld[2] = {0, 0};
    cu_act_t acts[2];
    int next = 0;
    for (int i = 0; i < n_ops && !be->failed; i++) {
        const kern_weight_t *w = ops[i].w;
        const int fmt = cu_act_format(w->type);
        cu_mm_t mm;
        memset(&mm, 0, sizeof(mm));
        mm.w = w;
        mm.x = ops[i].x;
        mm.ldx = ops[i].ldx;
        mm.y = ops[i].y;
        mm.ldy = ops[i].ldy;
        mm.n_rows_x = n_tok;
        if (fmt >= 0) {
            int slot = -1;
            for (int s = 0; s < 2; s++) {
                if (have_x[s] == ops[i].x && have_fmt[s] == fmt && have_k[s] == w->n_cols &&
                    have_ld[s] == ops[i].ldx) {
                    slot = s;
                }
            }
            if (slot < 0) {
                slot = next;
                next ^= 1;
                acts[slot] = cu_act_view(c->act_buf[slot], fmt, n_tok, w->n_cols);
                cu_quantize_act(c, fmt, ops[i].x, ops[i].ldx, n_tok, &acts[slot]);
                have_x[slot] = ops[i].x;
                have_fmt[slot] = fmt;
                have_k[slot] = w->n_cols;
                have_ld[slot] = ops[i].ldx;
            }
            mm.act = &acts[slot];
        }
        cu_matmul_launch(c, &mm);
    }
}

static void cu_op_swiglu(kern_backend_t *be, float *out, const float *gate, const float *up,
                         int64_t n)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, out);
    fa_p(&a, gate);
    fa_p(&a, up);
    fa_u(&a, (uint64_t)n);
    if (cu_op(c, OP_SWIGLU, &a)) {
        cu_swiglu(c, out, gate, up, n);
    }
}

static void cu_op_add(kern_backend_t *be, float *y, const float *x1, const float *x2, int64_t n)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, y);
    fa_p(&a, x1);
    fa_p(&a, x2);
    fa_u(&a, (uint64_t)n);
    if (cu_op(c, OP_ADD, &a)) {
        cu_add(c, y, x1, x2, n);
    }
}

static void cu_op_kv_store(kern_backend_t *be, const kern_kv_layout_t *l, void *k_layer,
                           void *v_layer, const float *k, const float *v, int64_t ld)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_kv(&a, l);
    fa_tables(&a, c, l);
    fa_p(&a, k_layer);
    fa_p(&a, v_layer);
    fa_p(&a, k);
    fa_p(&a, v);
    fa_u(&a, (uint64_t)ld);
    if (cu_op(c, OP_KV_STORE, &a)) {
        cu_kv_store(c, l, k_layer, v_layer, k, v, ld, be->step->n_tokens);
    }
}

static void cu_op_attention(kern_backend_t *be, float *out, const float *q,
                            const kern_kv_layout_t *l, const void *k_layer, const void *v_layer,
                            const kern_attn_params_t *p)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, out);
    fa_p(&a, q);
    fa_kv(&a, l);
    fa_tables(&a, c, l);
    fa_p(&a, k_layer);
    fa_p(&a, v_layer);
    fa_u(&a, (uint64_t)p->n_head);
    fa_u(&a, (uint64_t)p->head_lo);
    fa_u(&a, (uint64_t)p->kv_lo);
    fa_u(&a, (uint64_t)p->group);
    fa_f(&a, p->scale);
    fa_u(&a, (uint64_t)(int64_t)p->window);
    fa_p(&a, p->sinks);
    fa_f(&a, p->temp_scale);
    fa_u(&a, (uint64_t)(int64_t)p->temp_floor);
    if (cu_op(c, OP_ATTENTION, &a)) {
        cu_attention(c, out, q, l, k_layer, v_layer, p, be->step->n_tokens);
    }
}

static void cu_op_moe_route(kern_backend_t *be, float *logits, const kern_route_t *r, int32_t *sel,
                            float *w)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, logits);
    fa_u(&a, (uint64_t)r->n_expert);
    fa_u(&a, (uint64_t)r->k);
    fa_u(&a, (uint64_t)r->gating);
    fa_p(&a, r->sel_bias);
    fa_u(&a, r->norm ? 1u : 0u);
    fa_f(&a, r->scale);
    fa_p(&a, sel);
    fa_p(&a, w);
    if (cu_op(c, OP_MOE_ROUTE, &a)) {
        cu_moe_route(c, logits, r, sel, w, be->step->n_tokens);
    }
}

static void cu_op_add_bias(kern_backend_t *be, float *y, int64_t ldy, const float *bias,
                           int64_t rows, int64_t cols)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, y);
    fa_u(&a, (uint64_t)ldy);
    fa_p(&a, bias);
    fa_u(&a, (uint64_t)rows);
    fa_u(&a, (uint64_t)cols);
    if (cu_op(c, OP_ADD_BIAS, &a)) {
        cu_add_bias(c, y, ldy, bias, rows, cols);
    }
}

static void cu_op_sum_sq(kern_backend_t *be, float *ss, int64_t lds, const float *x, int64_t ldx,
                         int64_t rows, int64_t cols)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, ss);
    fa_u(&a, (uint64_t)lds);
    fa_p(&a, x);
    fa_u(&a, (uint64_t)ldx);
    fa_u(&a, (uint64_t)rows);
    fa_u(&a, (uint64_t)cols);
    if (cu_op(c, OP_SUM_SQ, &a)) {
        cu_sum_sq(c, ss, lds, x, ldx, rows, cols);
    }
}

static void cu_op_rms_apply(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                            const float *ss, int64_t lds, const float *w, int64_t rows,
                            int64_t cols, int64_t n_total, float eps)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_p(&a, y);
    fa_u(&a, (uint64_t)ldy);
    fa_p(&a, x);
    fa_u(&a, (uint64_t)ldx);
    fa_p(&a, ss);
    fa_u(&a, (uint64_t)lds);
    fa_p(&a, w);
    fa_u(&a, (uint64_t)rows);
    fa_u(&a, (uint64_t)cols);
    fa_u(&a, (uint64_t)n_total);
    fa_f(&a, eps);
    if (cu_op(c, OP_RMS_APPLY, &a)) {
        cu_rms_apply(c, y, ldy, x, ldx, ss, lds, w, rows, cols, n_total, eps);
    }
}

static void cu_op_moe_experts(kern_backend_t *be, const kern_moe_t *moe, const float *x,
                              int64_t ldx, const int32_t *sel, const float *w, float *out,
                              int64_t ldo, int64_t n_tok)
{
    cuda_backend_t *c = cu_be(be);
    fp_args_t a = {{0}, 0};
    fa_weight(&a, &moe->gate);
    fa_weight(&a, &moe->up);
    fa_weight(&a, &moe->down);
    fa_u(&a, (uint64_t)moe->gate_stride);
    fa_u(&a, (uint64_t)moe->up_stride);
    fa_u(&a, (uint64_t)moe->down_stride);
    fa_p(&a, moe->gate_b);
    fa_p(&a, moe->up_b);
    fa_p(&a, moe->down_b);
    fa_u(&a, (uint64_t)moe->gate_b_stride);
    fa_u(&a, (uint64_t)moe->up_b_stride);
    fa_u(&a, (uint64_t)moe->down_b_stride);
    fa_u(&a, (uint64_t)moe->act);
    fa_f(&a, moe->act_alpha);
    fa_f(&a, moe->act_limit);
    fa_u(&a, (uint64_t)moe->exp_lo);
    fa_u(&a, (uint64_t)moe->n_exp);
    fa_u(&a, (uint64_t)moe->n_used);
    fa_u(&a, (uint64_t)moe->n_embd);
    fa_p(&a, x);
    fa_u(&a, (uint64_t)ldx);
    fa_p(&a, sel);
    fa_p(&a, w);
    fa_p(&a, out);
    fa_u(&a, (uint64_t)ldo);
    fa_u(&a, (uint64_t)n_tok);
    if (cu_op(c, OP_MOE_EXPERTS, &a)) {
        cu_moe_experts(c, moe, x, ldx, sel, w, out, ldo, n_tok);
    }
}

/* The Gated DeltaNet ops (the members after moe_experts) stay null: no CUDA kernels yet,
 * so qwen3next / qwen35moe refuse to load on a GPU (kern_be_has_gdn), and the ops would
 * fail a step naming themselves. */
static const kern_backend_ops_t cuda_ops = {
    cu_destroy,      cu_stats,           cu_mem_info,     cu_alloc,          cu_free,
    cu_to_device,    cu_to_host,         cu_sync,         cu_copy,           cu_weights_bytes,
    cu_weights_load, cu_reserve_bytes,   cu_reserve,      cu_step_begin,     cu_step_end,
    cu_op_get_rows,  cu_op_get_out_rows, cu_op_rms_norm,  cu_op_rope,        cu_op_matmul,
    cu_op_swiglu,    cu_op_add,          cu_op_add_bias,  cu_op_sum_sq,      cu_op_rms_apply,
    cu_op_kv_store,  cu_op_attention,    cu_op_moe_route, cu_op_moe_experts,
};

/* ---- creation
 * ------------------------------------------------------------------------------------ */

extern "C" int kern_backend_cuda_device(const kern_backend_t *be)
{
    return ((const cuda_backend_t *)be)->dev;
}

extern "C" tdm_status_t kern_backend_create_cuda(int device, kern_backend_t **out, tdm_error_t *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        return tdm_error_set(err, TDM_ERR_DEVICE, "no CUDA device: %s",
                             e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
    }
    if (device < 0 || device >= n) {
        return tdm_error_set(err, TDM_ERR_DEVICE, "cuda:%d: only %d CUDA device%s (0..%d)", device,
                             n, n == 1 ? "" : "s", n - 1);
    }
    kern_gpu_info_t gi;
    TDM_CHECK(kern_gpu_info(device, &gi, err));
    TDM_CHECK(kern_cuda_probe(device, err)); /* a kernel image for this GPU is in the binary */
    cuda_backend_t *c = (cuda_backend_t *)calloc(1, sizeof(*c));
    if (c == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "cuda backend: out of memory");
    }
    c->base.ops = &cuda_ops;
    c->base.kind = KERN_DEVICE_CUDA;
    c->base.host_memory = false;
    c->base.impl = c;
    c->dev = device;
    c->n_sm = gi.n_sm;
    c->integrated = gi.integrated;
    snprintf(c->base.desc, sizeof(c->base.desc), "cuda:%d %s (sm_%d%d, %.1f GiB%s)", device,
             gi.name, gi.cc_major, gi.cc_minor, (double)gi.total_bytes / 1073741824.0,
             gi.integrated ? ", unified memory" : "");
    const char *g = getenv("TANDEM_CUDA_GRAPHS");
    c->graphs_off = g != NULL && strcmp(g, "0") == 0;
    const char *sk = getenv("TANDEM_CUDA_SPLITK");
    c->splitk_force = sk != NULL ? atoi(sk) : 0;
    tdm_status_t st = TDM_OK;
    cu_enter(c);
    if (cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&c->meta_copied, cudaEventDisableTiming) != cudaSuccess) {
        st = cu_err(err, cudaGetLastError(), "stream");
    }
    if (st == TDM_OK) {
        c->graphs = kern_graph_cache_create(CU_GRAPH_CAPACITY, 1, free_exec);
        if (c->graphs == NULL || !kern_fingerprint_init(&c->fp)) {
            st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "cuda backend: out of memory");
        }
    }
    if (st != TDM_OK) {
        cu_destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return TDM_OK;
}
