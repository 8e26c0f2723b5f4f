/*
 * kern.h - the kernels layer's public interface (what shard/ calls).
 *
 *   kern_ctx_t      an execution context: the chosen CPU ISA, a thread pool and per-thread
 *                   scratch. Created once per shard; not shared between concurrent callers.
 *   kern_parallel_for   splits [0, n) over the pool's threads.
 *   kern_matmul     y = x * W^T for a weight W of any supported GGUF type (quantized rows
 *                   dotted against f32 activations converted once to the type's vec_dot
 *                   format: Q8_0, Q8_1, Q8_K, F16, BF16 or F32).
 *   kern_dequantize / kern_quantize   whole-row conversions (bit-exact with the gguf
 *                   Python package's dequantizers; quantizers as llama.cpp's reference).
 *
 * The per-type, per-ISA function tables behind these live in kernels/cpu/types_cpu.h.
 * The scalar path is the oracle for the SIMD paths and for CUDA.
 */
#ifndef KERN_H
#define KERN_H

#include "common/status.h"
#include "kernels/kern_isa.h"
#include "model/tensor_types.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kern_ctx kern_ctx_t;

/* n_threads <= 0 means "one per online CPU". The ISA is kern_cpu_isa_best() unless
 * isa_override is not KERN_ISA_COUNT (tests use it to pin a level). */
tdm_status_t kern_ctx_create(int n_threads, kern_isa_t isa_override, kern_ctx_t **out,
                             tdm_error_t *err);
void kern_ctx_destroy(kern_ctx_t *ctx); /* NULL is fine */
int kern_ctx_n_threads(const kern_ctx_t *ctx);
kern_isa_t kern_ctx_isa(const kern_ctx_t *ctx);
/* 1 when the context's Q4_K products run on AMX (AVX-512 level, a CPU with AMX-INT8,
 * the tile state granted by the kernel, TANDEM_CPU_AMX not "0"), else 0. */
int kern_ctx_amx(const kern_ctx_t *ctx);

/* fn(arg, begin, end, thread_idx) is called on disjoint chunks covering [0, n), each at
 * least `grain` long (except the last); returns when all chunks are done. Calls from
 * inside fn run serially on the calling thread. */
typedef void (*kern_task_fn)(void *arg, int64_t begin, int64_t end, int thread_idx);
void kern_parallel_for(kern_ctx_t *ctx, int64_t n, int64_t grain, kern_task_fn fn, void *arg);

/* A 2-D weight: n_rows rows of n_cols elements of `type`, rows row_bytes apart. For a
 * 3-D expert tensor, expert e is the view starting at data + e * n_rows * row_bytes. */
typedef struct kern_weight {
    tdm_type_t type;
    int64_t n_cols; /* K: elements per row (GGUF ne[0]) */
    int64_t n_rows; /* N: output features (GGUF ne[1])  */
    size_t row_bytes;
    const void *data;
} kern_weight_t;

/*
 * y[t*ldy + r] = sum_k W[r, k] * x[t*ldx + k]   for t < n_tok, r < w->n_rows.
 * Fails with TDM_ERR_UNSUPPORTED for a type without CPU kernels and
 * TDM_ERR_INVALID_PARAM for inconsistent shapes (n_cols not a multiple of the block).
 */
tdm_status_t kern_matmul(kern_ctx_t *ctx, const kern_weight_t *w, const float *x, int64_t ldx,
                         int64_t n_tok, float *y, int64_t ldy, tdm_error_t *err);

/* One product of a kern_matmul_batch: y = x * W^T with kern_matmul's arguments. */
typedef struct kern_matmul_op {
    const kern_weight_t *w;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
} kern_matmul_op_t;

#define KERN_MATMUL_MAX_OPS 16

/*
 * n_ops (0..KERN_MATMUL_MAX_OPS) independent products over the same n_tok tokens, as one
 * call: activations that several weights read (same x and ldx, same vec_dot format and
 * width) are converted once, and all rows of all products are split over the pool in one
 * pass (one wake-up instead of one per product). Results are bit-identical to separate
 * kern_matmul calls. Outputs must not overlap each other or any input.
 */
tdm_status_t kern_matmul_batch(kern_ctx_t *ctx, int n_ops, const kern_matmul_op_t *ops,
                               int64_t n_tok, tdm_error_t *err);

/* dst[0..n) = dequantized src; n must be a multiple of the type's block size. */
tdm_status_t kern_dequantize(tdm_type_t type, const void *src, float *dst, int64_t n,
                             tdm_error_t *err);

/* Quantizes n_rows rows of n_per_row floats into dst (tdm_type_row_size bytes per row).
 * TDM_ERR_UNSUPPORTED for types without a quantizer. */
tdm_status_t kern_quantize(tdm_type_t type, const float *src, void *dst, int64_t n_rows,
                           int64_t n_per_row, tdm_error_t *err);

/* True when kern_matmul/kern_dequantize support the type on this build. */
int kern_type_supported(tdm_type_t type);

#ifdef __cplusplus
}
#endif

#endif
