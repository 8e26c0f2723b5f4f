/*
 * cuda_be.cuh - the CUDA backend's state and the launchers its files share.
 *
 *   backend_cuda.cu  the object: device, stream, memory, weights, step metadata, graphs,
 *                    and the ops table (each op: fingerprint, then its launcher)
 *   ops.cu           embedding rows, logits rows, RMSNorm (whole or in two halves), RoPE,
 *                    SwiGLU, add, bias
 *   matmul.cu        activation quantizers and the matrix products (int8 mma.sync tiles
 *                    for the quantized types, FFMA for f32/f16/bf16)
 *   attention.cu     KV-cache writes and paged attention (segments + merge; windows,
 *                    sinks, temperature)
 *   moe.cu           routing, grouping tokens by expert, the experts (biases, SwiGLU or
 *                    gpt-oss's clamped one), the weighted sum
 *
 * One stream per backend: ops run in issue order, so no op waits on an event of another.
 */
#ifndef KERN_CUDA_BE_CUH
#define KERN_CUDA_BE_CUH

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/cuda_limits.h"
#include "kernels/kern_backend_impl.h"
#include "kernels/step_graph.h"

#include <cuda_runtime.h>
#include <stdint.h>

/* The quantized activations of one product's input: see qblock.h's qb_act_t. */
typedef struct cu_act {
    int8_t *qs;     /* [n_rows][K]                 */
    float *d;       /* [n_rows][K / blk]           */
    float *s;       /* [n_rows][K / 32] (Q8_1)     */
    int32_t *bsums; /* [n_rows][K / 16] (Q8_K)     */
    int64_t k;      /* K                           */
} cu_act_t;

typedef struct cuda_backend {
    kern_backend_t base; /* first: a kern_backend_t * is a cuda_backend_t * */
    int dev;
    int n_sm;
    bool integrated;
    cudaStream_t stream;

    /* host-visible (pinned, mapped) allocations, to free them with cudaFreeHost */
    void **pinned;
    int n_pinned, cap_pinned;

    uint64_t weights_bytes; /* in the regions kern_be_weights_load made (their owners free them) */

    /* reserved scratch (kern_be_reserve) */
    kern_reserve_t r;
    void *scratch;
    unsigned char *act_buf[2]; /* quantized activations of up to two inputs at a time */
    size_t act_bytes;          /* each                                             */
    float *partial;            /* split-K partial sums                              */
    size_t partial_floats;
    float *attn_part; /* attention segments: (m, l, acc[hd]) per segment   */
    size_t attn_part_floats;
    /* MoE grouping: pairs (token, slot) of this rank's experts, by expert */
    int32_t *moe_cnt, *moe_off; /* [n_exp + 1]                                     */
    int32_t *moe_pair_tok;      /* [n_tok * k] token of pair p                      */
    float *moe_pair_w;          /* [n_tok * k] its weight                           */
    int32_t *moe_pair_of;       /* [n_tok * k] pair of (t, j), -1: not held here    */
    int32_t *moe_tiles;         /* [n_tiles_max * 2] (expert, first pair) per tile   */
    int32_t *moe_n_tiles;       /* [2]: tiles, then pairs                          */
    float *moe_gate, *moe_up;   /* [n_tok * k][F]                                   */
    float *moe_out;             /* [n_tok * k][E]                                   */
    int max_pairs;

    /* step metadata: one pinned buffer packed per step, copied once to the device */
    int32_t *meta_host, *meta_dev;
    size_t meta_cap; /* int32 each */
    cudaEvent_t meta_copied;
    const int32_t *d_tok, *d_pos, *d_seq, *d_out, *d_seq_off, *d_blocks;
    /* with sliding tables: sequence s's table starts at d_blocks + d_swa_off[s] (NULL
     * when the step has none) */
    const int32_t *d_swa_off;
    int32_t max_keys; /* most keys a token of the step attends to */

    /* CUDA graphs */
    kern_graph_cache_t *graphs;
    kern_graph_action_t mode;
    kern_graph_key_t key;
    void *replay_exec;
    uint64_t replay_fp;
    kern_fingerprint_t fp;
    bool replay_lost; /* the graph being replayed was freed mid-step        */
    kern_be_stats_t stats;
    bool graphs_off;  /* TANDEM_CUDA_GRAPHS=0                               */
    int splitk_force; /* TANDEM_CUDA_SPLITK=N: at most N K segments (tests)  */
} cuda_backend_t;

static inline cuda_backend_t *cu_be(kern_backend_t *be)
{
    return (cuda_backend_t *)be;
}

/* After a launch: a launch error fails the backend (sticky). Returns true when OK. */
bool cu_check_launch(cuda_backend_t *c, const char *what);

/* ---- launchers (each enqueues on c->stream) ---- */

/* ops.cu */
void cu_get_rows(cuda_backend_t *c, float *x, int64_t ldx, const kern_weight_t *emb, int32_t n_tok);
void cu_get_out_rows(cuda_backend_t *c, float *dst, int64_t ldd, const float *src, int64_t lds,
                     int64_t cols, int32_t n_out);
void cu_rms_norm(cuda_backend_t *c, float *y, int64_t ldy, const float *x, int64_t ldx,
                 const float *w, int64_t rows, int64_t cols, float eps);
void cu_rope(cuda_backend_t *c, float *x, int64_t ld, int32_t n_tok, int n_heads, int head_dim,
             const mdl_rope_params_t *p, const float *freq_factors);
void cu_swiglu(cuda_backend_t *c, float *out, const float *gate, const float *up, int64_t n);
void cu_add(cuda_backend_t *c, float *y, const float *a, const float *b, int64_t n);
void cu_add_bias(cuda_backend_t *c, float *y, int64_t ldy, const float *bias, int64_t rows,
                 int64_t cols);
void cu_sum_sq(cuda_backend_t *c, float *ss, int64_t lds, const float *x, int64_t ldx, int64_t rows,
               int64_t cols);
void cu_rms_apply(cuda_backend_t *c, float *y, int64_t ldy, const float *x, int64_t ldx,
                  const float *ss, int64_t lds, const float *w, int64_t rows, int64_t cols,
                  int64_t n_total, float eps);

/* matmul.cu */
/* The activation format of a weight type (QB_ACT_*), -1 for the float types. */
int cu_act_format(tdm_type_t t);
/* Bytes of n_rows quantized activation rows of width k in format fmt. */
size_t cu_act_bytes(int fmt, int64_t n_rows, int64_t k);
/* Carves the format's arrays from buf. */
cu_act_t cu_act_view(void *buf, int fmt, int64_t n_rows, int64_t k);
/* Quantizes n_rows rows of x (ldx apart) into a. */
void cu_quantize_act(cuda_backend_t *c, int fmt, const float *x, int64_t ldx, int64_t n_rows,
                     cu_act_t *a);
/* The same for the first *rows_dev of at most n_rows rows (a count on the device). */
void cu_quantize_act_rows(cuda_backend_t *c, int fmt, const float *x, int64_t ldx, int64_t n_rows,
                          const int32_t *rows_dev, cu_act_t *a);

/*
 * y[out row of p][r] = sum_k W_e[r, k] * x[act row of p][k] for the products of one launch:
 * "rows" p in [0, n) of one matrix (e == 0), or grouped by expert: the tiles list
 * (expert, first row, count) from moe.cu. act_idx maps a row to its activation row
 * (NULL: itself).
 */
typedef struct cu_mm {
    const kern_weight_t *w; /* expert 0's view for a grouped product       */
    size_t w_stride;        /* bytes between experts                       */
    const float *x;         /* f32 input (float weight types)               */
    int64_t ldx;
    const cu_act_t *act;    /* quantized input (quantized weight types)     */
    const int32_t *act_idx; /* row p reads activation row act_idx[p]        */
    float *y;
    int64_t ldy;
    int64_t n_rows_x; /* rows of the product (tokens or pairs)        */
    /* grouped (MoE) products: tiles on the device */
    const int32_t *tiles;   /* (expert, first row, rows) per tile, or NULL  */
    const int32_t *n_tiles; /* device count of tiles                        */
    int max_tiles;          /* grid bound                                   */
} cu_mm_t;

void cu_matmul_launch(cuda_backend_t *c, const cu_mm_t *mm);

/* The split of a weight's K dimension (segments of whole blocks summed in order): a
 * function of the weight's shape, the GPU and the reserved batch, never of the step. */
int cu_splitk(const cuda_backend_t *c, const kern_weight_t *w, int64_t rows_max);

/* attention.cu */
void cu_kv_store(cuda_backend_t *c, const kern_kv_layout_t *l, void *k_layer, void *v_layer,
                 const float *k, const float *v, int64_t ld, int32_t n_tok);
void cu_attention(cuda_backend_t *c, float *out, const float *q, const kern_kv_layout_t *l,
                  const void *k_layer, const void *v_layer, const kern_attn_params_t *p,
                  int32_t n_tok);

/* moe.cu */
void cu_moe_route(cuda_backend_t *c, float *logits, const kern_route_t *r, int32_t *sel, float *w,
                  int32_t n_tok);
void cu_moe_experts(cuda_backend_t *c, const kern_moe_t *moe, const float *x, int64_t ldx,
                    const int32_t *sel, const float *w, float *out, int64_t ldo, int64_t n_tok);

#endif
