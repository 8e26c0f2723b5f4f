/*
 * kern_backend_impl.h - what a backend implements (kernels-internal; shard/ sees only
 * kern_backend.h). The public kern_be_* functions (kernels/backend.c) check the sticky
 * error and forward to these; an op that fails calls kern_be_fail and returns.
 */
#ifndef KERN_BACKEND_IMPL_H
#define KERN_BACKEND_IMPL_H

#include "kernels/kern_backend.h"

#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kern_backend_ops {
    void (*destroy)(kern_backend_t *be);
    void (*stats)(const kern_backend_t *be, kern_be_stats_t *out); /* NULL: nothing counted */
    tdm_status_t (*mem_info)(kern_backend_t *be, uint64_t *free_b, uint64_t *total_b,
                             tdm_error_t *err);
    tdm_status_t (*alloc)(kern_backend_t *be, size_t bytes, unsigned flags, const char *what,
                          void **out, tdm_error_t *err);
    void (*free)(kern_backend_t *be, void *p);
    tdm_status_t (*to_device)(kern_backend_t *be, void *dst, const void *src, size_t n,
                              tdm_error_t *err);
    tdm_status_t (*to_host)(kern_backend_t *be, void *dst, const void *src, size_t n,
                            tdm_error_t *err);
    tdm_status_t (*sync)(kern_backend_t *be, tdm_error_t *err);
    void (*copy)(kern_backend_t *be, void *dst, const void *src, size_t n);

    uint64_t (*weights_bytes)(const kern_backend_t *be, const kern_weight_ref_t *refs, int n);
    tdm_status_t (*weights_load)(kern_backend_t *be, kern_weight_ref_t *refs, int n,
                                 kern_release_fn release, void *release_arg, void **region,
                                 tdm_error_t *err);
    uint64_t (*reserve_bytes)(const kern_backend_t *be, const kern_reserve_t *r);
    tdm_status_t (*reserve)(kern_backend_t *be, const kern_reserve_t *r, tdm_error_t *err);

    void (*step_begin)(kern_backend_t *be, const kern_step_t *st, bool graphable);
    tdm_status_t (*step_end)(kern_backend_t *be, bool *rerun, tdm_error_t *err);

    void (*get_rows)(kern_backend_t *be, float *x, int64_t ldx, const kern_weight_t *emb);
    void (*get_out_rows)(kern_backend_t *be, float *dst, int64_t ldd, const float *src, int64_t lds,
                         int64_t cols);
    void (*rms_norm)(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                     const float *w, int64_t rows, int64_t cols, float eps);
    void (*rope)(kern_backend_t *be, float *x, int64_t ld, int n_heads, int head_dim,
                 const mdl_rope_params_t *p, const float *freq_factors);
    void (*matmul)(kern_backend_t *be, int n_ops, const kern_matmul_op_t *ops, int64_t n_tok);
    void (*swiglu)(kern_backend_t *be, float *out, const float *gate, const float *up, int64_t n);
    void (*add)(kern_backend_t *be, float *y, const float *a, const float *b, int64_t n);
    void (*add_bias)(kern_backend_t *be, float *y, int64_t ldy, const float *bias, int64_t rows,
                     int64_t cols);
    void (*sum_sq)(kern_backend_t *be, float *ss, int64_t lds, const float *x, int64_t ldx,
                   int64_t rows, int64_t cols);
    void (*rms_apply)(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                      const float *ss, int64_t lds, const float *w, int64_t rows, int64_t cols,
                      int64_t n_total, float eps);
    void (*kv_store)(kern_backend_t *be, const kern_kv_layout_t *l, void *k_layer, void *v_layer,
                     const float *k, const float *v, int64_t ld);
    void (*attention)(kern_backend_t *be, float *out, const float *q, const kern_kv_layout_t *l,
                      const void *k_layer, const void *v_layer, const kern_attn_params_t *p);
    void (*moe_route)(kern_backend_t *be, float *logits, const kern_route_t *r, int32_t *sel,
                      float *w);
    void (*moe_experts)(kern_backend_t *be, const kern_moe_t *moe, const float *x, int64_t ldx,
                        const int32_t *sel, const float *w, float *out, int64_t ldo, int64_t n_tok);
    /* Gated DeltaNet and gating ops; NULL where the backend has none (the public calls
     * then fail the step with TDM_ERR_UNSUPPORTED). */
    void (*gdn_conv)(kern_backend_t *be, const kern_gdn_t *g, float *x, int64_t ldx);
    void (*gdn_rule)(kern_backend_t *be, const kern_gdn_t *g, const float *qkv, int64_t ldq,
                     const float *beta, int64_t ldb, const float *alpha, int64_t lda, int grp,
                     float *out);
    void (*rms_norm_gated)(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                           const float *w, const float *z, int64_t ldz, int64_t rows, int64_t cols,
                           float eps);
    void (*mul_sigmoid)(kern_backend_t *be, float *y, int64_t ldy, const float *g, int64_t ldg,
                        int64_t rows, int64_t cols, bool bcast);
} kern_backend_ops_t;

struct kern_backend {
    const kern_backend_ops_t *ops;
    kern_device_kind_t kind;
    bool host_memory;        /* every allocation is host memory                        */
    char desc[256];          /* kern_be_describe                                      */
    char fallback[256];      /* kern_be_fallback_reason                               */
    bool failed;             /* an op failed: later ops are skipped until reported    */
    tdm_error_t err;         /* the first failure                                     */
    const kern_step_t *step; /* the step between step_begin and step_end (host arrays) */
    void *impl;              /* the backend's own state                               */
};

/* Records the first failure of an op (later ones are dropped) and returns status. */
tdm_status_t kern_be_fail(kern_backend_t *be, tdm_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Moves a recorded failure into err and clears it; TDM_OK when there was none. */
tdm_status_t kern_be_take_error(kern_backend_t *be, tdm_error_t *err);

/* Constructors of the backends (kernels/cpu/backend_cpu.c, kernels/cuda/backend_cuda.cu). */
tdm_status_t kern_backend_create_cpu(const kern_backend_params_t *p, kern_backend_t **out,
                                     tdm_error_t *err);
tdm_status_t kern_backend_create_cuda(int device, kern_backend_t **out, tdm_error_t *err);
/* The CUDA backend's device index (kern_be_cuda_device forwards here for a CUDA backend). */
int kern_backend_cuda_device(const kern_backend_t *be);

/* The weight store's plan (kernels/weights_plan.c): where each ref's compact copy goes in
 * one contiguous region, and which refs alias another's copy. Shared by every backend
 * that copies weights, and host-testable. */
typedef struct kern_weight_place {
    uint64_t offset;    /* into the region                                             */
    uint64_t bytes;     /* of this ref's copy (0 for an alias)                         */
    int alias_of;       /* -1, or the ref whose copy contains this one                 */
    uint64_t alias_off; /* then: this ref's first byte inside that copy                */
    size_t slice_bytes; /* compact row bytes of a matrix (its n_cols of its type)      */
} kern_weight_place_t;

/* Fills place[0..n) and the region's total bytes; each copy starts `align`-aligned. */
tdm_status_t kern_weights_plan(const kern_weight_ref_t *refs, int n, size_t align,
                               kern_weight_place_t *place, uint64_t *total, tdm_error_t *err);

/* Points every ref at its place in the region at base (compact row bytes and strides). */
void kern_weights_rebind(kern_weight_ref_t *refs, int n, const kern_weight_place_t *place,
                         unsigned char *base);

/* Where kern_weights_copy sends its chunks: two staging buffers of staging_bytes (pinned
 * host memory on a GPU) used in turn; copy starts an asynchronous copy of n bytes of
 * staging[slot] to dst, wait returns once the slot's last copy has finished. */
typedef struct kern_copy_sink {
    void *arg;
    unsigned char *staging[2];
    size_t staging_bytes;
    tdm_status_t (*copy)(void *arg, int slot, void *dst, size_t n, tdm_error_t *err);
    tdm_status_t (*wait)(void *arg, int slot, tdm_error_t *err);
} kern_copy_sink_t;

/* Copies every non-alias ref's compact bytes to base + its offset, at most
 * sink->staging_bytes at a time, calling release(release_arg, src, n) behind every piece
 * read from the source (NULL: none). Returns after the last copy finished. */
tdm_status_t kern_weights_copy(const kern_weight_ref_t *refs, int n,
                               const kern_weight_place_t *place, unsigned char *base,
                               const kern_copy_sink_t *sink, kern_release_fn release,
                               void *release_arg, tdm_error_t *err);

/* The CUDA backend's op scratch (kernels/cuda_reserve.c, plain C): element counts of each
 * piece (floats or int32), the activation buffers' bytes, and the whole reservation. */
typedef struct kern_cuda_sizes {
    uint64_t act;                       /* bytes of each of the two activation buffers */
    uint64_t partial, attn;             /* floats                                      */
    uint64_t cnt, pair, tiles, ff, out; /* elements                                    */
    uint64_t meta;                      /* int32 of the step metadata (each side)      */
    uint64_t scratch_bytes;             /* the device scratch, every piece aligned     */
    int max_pairs, max_tiles;
} kern_cuda_sizes_t;

void kern_cuda_reserve_sizes(const kern_reserve_t *r, kern_cuda_sizes_t *z);
/* Bytes of n_rows quantized activation rows of width k in format fmt (QB_ACT_*). */
uint64_t kern_cuda_act_bytes(int fmt, int64_t n_rows, int64_t k);
/* Most tiles a grouped product of max_pairs pairs over n_exp experts can have. */
int kern_cuda_moe_max_tiles(int max_pairs, int n_exp);

#ifdef __cplusplus
}
#endif

#endif
