/*
 * kern_backend.h - one interface, two backends: what the forward pass (shard/) calls to
 * allocate memory and run its ops, on the CPU or on a CUDA GPU.
 *
 * A backend is an object with an ops table, as Redis's connection types or ggml's
 * backends: shard/blocks.c and the files of shard/models describe each architecture once, as a
 * sequence of kern_be_* calls, and the same description runs on either backend. The
 * backends are
 *
 *   cpu   (kernels/cpu/backend_cpu.c)    today's CPU kernels on a kern_ctx_t thread pool;
 *                                        "device" memory is host memory, weights stay
 *                                        views into the mapped GGUF file
 *   cuda  (kernels/cuda/backend_cuda.cu) kernels on one stream of one GPU; weights copied
 *                                        once into device memory; activations, scratch
 *                                        and the KV cache live there; the host receives
 *                                        only the logits
 *
 * Memory. Every pointer an op takes is the backend's ("device") memory, from kern_be_alloc
 * or the weight store; the host never dereferences it unless the backend says memory is
 * host-visible (the CPU backend, or an allocation made with KERN_MEM_HOST_VISIBLE, which
 * the collectives between shards use: pinned host memory the GPU reads and writes in
 * place, as a DGX Spark without GPUDirect RDMA needs).
 *
 * Steps. A forward step is bracketed by kern_be_step_begin / kern_be_step_end. step_begin
 * hands the backend the step's token ids, positions, sequence block tables and the rows
 * that want logits (one host-to-device copy); the ops that need them (embedding lookup,
 * RoPE, KV writes, attention, the logits rows) read them from there. Ops are enqueued in
 * order and may run asynchronously; kern_be_to_host and kern_be_sync wait.
 *
 * Errors. Ops return nothing: the first failure (a CUDA launch error, an unsupported
 * type) is kept by the backend, every later op is skipped, and kern_be_step_end or
 * kern_be_sync reports it. So the forward pass reads like the math, with one check per
 * step, as SQLite's sticky out-of-memory flag.
 *
 * Batch invariance. On both backends a token's results do not depend on what else is in
 * the step: each output element of a matrix product is accumulated in the same order
 * whatever the number of tokens, and attention of a token reads only its own sequence.
 * The serving tests rely on it (an answer is the same alone and in a batch of 16).
 *
 * docs/gpu.md describes the CUDA backend; docs/architecture.md the layering.
 */
#ifndef KERN_BACKEND_H
#define KERN_BACKEND_H

#include "common/status.h"
#include "kernels/kern.h"
#include "kernels/kern_ops.h"
#include "model/hparams.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kern_backend kern_backend_t;

typedef enum kern_device_kind {
    KERN_DEVICE_CPU = 0,
    KERN_DEVICE_CUDA,
} kern_device_kind_t;

/* ---- creating a backend ------------------------------------------------------------ */

typedef struct kern_backend_params {
    /* "auto" (a usable CUDA GPU if there is one, else the CPU), "cpu", "cuda" (GPU 0) or
     * "cuda:N". NULL: the environment's TANDEM_DEVICE, else "auto". */
    const char *device;
    int n_threads;           /* CPU threads (<= 0: one per CPU); the CPU backend's pool */
    kern_isa_t isa_override; /* KERN_ISA_COUNT: the best the CPU supports               */
} kern_backend_params_t;

/*
 * Creates the backend p->device names. "cuda" fails with TDM_ERR_UNSUPPORTED when the
 * build has no CUDA, and with TDM_ERR_DEVICE naming the reason when no usable GPU is
 * there; "auto" then falls back to the CPU (kern_backend_describe says which it chose,
 * and why).
 */
tdm_status_t kern_backend_create(const kern_backend_params_t *p, kern_backend_t **out,
                                 tdm_error_t *err);
void kern_backend_destroy(kern_backend_t *be); /* NULL is fine */

/* Parses "auto" | "cpu" | "cuda" | "cuda:N" (N a GPU index). *kind is KERN_DEVICE_CUDA for
 * "auto" with *auto_pick set; *index is the GPU (0 when none given). */
tdm_status_t kern_device_parse(const char *s, kern_device_kind_t *kind, int *index, bool *auto_pick,
                               tdm_error_t *err);

kern_device_kind_t kern_be_kind(const kern_backend_t *be);
/* "cpu (avx2, 8 threads)", "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)". */
const char *kern_be_describe(const kern_backend_t *be);
/* Why "auto" chose the CPU ("no CUDA device: ..."), or "" when it did not fall back. */
const char *kern_be_fallback_reason(const kern_backend_t *be);
/* The CPU backend's context (NULL for the others): kern_matmul and friends in tests. */
kern_ctx_t *kern_be_cpu_ctx(kern_backend_t *be);
/* The CUDA device index a CUDA backend runs on (what NCCL must use for this process's
 * rank), -1 for any other backend. */
int kern_be_cuda_device(const kern_backend_t *be);

/* What a backend counted (CUDA graphs; zeros where there is nothing to count). */
typedef struct kern_be_stats {
    uint64_t graph_captures; /* steps captured as a graph                        */
    uint64_t graph_replays;  /* steps run as one launch of a stored graph        */
    uint64_t graph_drops;    /* shapes given up (a failed capture, a mismatch)   */
} kern_be_stats_t;

void kern_be_stats(const kern_backend_t *be, kern_be_stats_t *out);

/* Memory the backend can still give (device memory; on a unified-memory GPU also bounded
 * by the host's MemAvailable) and its total, in bytes. */
tdm_status_t kern_be_mem_info(kern_backend_t *be, uint64_t *free_bytes, uint64_t *total_bytes,
                              tdm_error_t *err);

/* ---- GPUs present (tandem --version, tandem plan) ----------------------------------- */

typedef struct kern_gpu_info {
    int index;
    char name[128];
    int cc_major, cc_minor;
    uint64_t total_bytes;
    uint64_t free_bytes;
    bool integrated; /* shares memory with the host (DGX Spark's GB10, Jetson) */
    int n_sm;
} kern_gpu_info_t;

/* Number of usable GPUs (0 without CUDA, a driver or a device; never fails). */
int kern_gpu_count(void);
tdm_status_t kern_gpu_info(int index, kern_gpu_info_t *out, tdm_error_t *err);

/* ---- memory ----------------------------------------------------------------------- */

enum {
    KERN_MEM_DEVICE = 0,            /* the backend's memory                            */
    KERN_MEM_HOST_VISIBLE = 1u << 0 /* also readable and writable by the host at the
                                       same address (pinned, mapped host memory)      */
};

/* Zero-filled memory of `bytes`; NULL never returned on success. `what` names it in the
 * error ("KV cache", "step scratch"). */
tdm_status_t kern_be_alloc(kern_backend_t *be, size_t bytes, unsigned flags, const char *what,
                           void **out, tdm_error_t *err);
void kern_be_free(kern_backend_t *be, void *p); /* NULL is fine */

/* True when every allocation of this backend is host memory (the CPU backend). */
bool kern_be_host_memory(const kern_backend_t *be);

/* Copies between host and backend memory; both wait for the ops enqueued before. */
tdm_status_t kern_be_to_device(kern_backend_t *be, void *dst, const void *src, size_t n,
                               tdm_error_t *err);
tdm_status_t kern_be_to_host(kern_backend_t *be, void *dst, const void *src, size_t n,
                             tdm_error_t *err);
/* Waits for every enqueued op; reports the first error since the last report. */
tdm_status_t kern_be_sync(kern_backend_t *be, tdm_error_t *err);
/* dst = src inside backend memory, in op order (copy-on-write of a KV block). */
void kern_be_copy(kern_backend_t *be, void *dst, const void *src, size_t n);

/* ---- weights ------------------------------------------------------------------------ */

/*
 * One weight the shard bound as a view into the mapped GGUF file: a matrix (or a stack
 * of n_mats expert matrices `stride` bytes apart) or a vector of f32. kern_be_weights_load
 * copies them into backend memory and rewrites the views to point there; each matrix is
 * stored compact (its slice's row bytes, not the file's), and a view that lies inside
 * another (a tied output inside token_embd) shares its copy. The CPU backend keeps the
 * views as they are.
 */
typedef struct kern_weight_ref {
    kern_weight_t *w;  /* a matrix view, or NULL for a vector              */
    int n_mats;        /* matrices in the stack (1 for a plain matrix)     */
    size_t *stride;    /* bytes between them (rewritten); NULL if n_mats 1 */
    const float **vec; /* a vector (w == NULL)                             */
    int64_t vec_len;   /* its floats                                       */
} kern_weight_ref_t;

/* Called behind each chunk copied from the file, so the page cache can be dropped there
 * (model/gguf: gguf_release_pages). */
typedef void (*kern_release_fn)(void *arg, const void *src, size_t n);

/* Bytes kern_be_weights_load would place in backend memory for refs (0 on the CPU). */
uint64_t kern_be_weights_bytes(const kern_backend_t *be, const kern_weight_ref_t *refs, int n);

/* Copies the weights in bounded chunks through a pinned staging buffer (never a whole
 * host copy), calling release behind each chunk. Refuses before copying anything when
 * they do not fit (TDM_ERR_NO_MEMORY with the numbers). *region is the memory made for
 * them (NULL on the CPU), for kern_be_free once the views are no longer used. */
tdm_status_t kern_be_weights_load(kern_backend_t *be, kern_weight_ref_t *refs, int n,
                                  kern_release_fn release, void *release_arg, void **region,
                                  tdm_error_t *err);

/* ---- scratch the compound ops need, reserved once at load ---------------------------- */

typedef struct kern_reserve {
    int64_t n_tok;    /* most tokens in a step                                 */
    int64_t n_out;    /* most rows with logits                                 */
    int64_t n_ctx;    /* most positions of a sequence                          */
    int64_t max_cols; /* widest matrix input (K) of any product                */
    int64_t max_rows; /* most output rows of any product                       */
    int n_head;       /* local q heads                                         */
    int head_dim;
    int n_expert;      /* router width (0: no MoE)                              */
    int n_expert_used; /* top-k                                                 */
    int64_t n_embd;
    int64_t n_ff_exp; /* local expert width                                    */
    bool swa_tables;  /* steps carry the sliding pool's tables too (kern_seq_t) */
    int gdn_head_dim; /* Gated DeltaNet head dim (0: no GDN layer)                 */
} kern_reserve_t;

tdm_status_t kern_be_reserve(kern_backend_t *be, const kern_reserve_t *r, tdm_error_t *err);
/* Bytes kern_be_reserve allocates for r (for memory plans before loading). */
uint64_t kern_be_reserve_bytes(const kern_backend_t *be, const kern_reserve_t *r);
/* What the CUDA backend's kern_be_reserve_bytes answers, without a backend or a GPU (plain
 * C, in every build: kernels/cuda_reserve.c), so memory plans count a GPU shard's op
 * scratch with the backend's own formula. */
uint64_t kern_cuda_reserve_bytes(const kern_reserve_t *r);
/* The same for the CPU backend with `threads` kernel threads (its own formula, so a plan
 * and the loader never disagree). */
uint64_t kern_cpu_reserve_bytes(const kern_reserve_t *r, int threads);

/* ---- a step --------------------------------------------------------------------------- */

/*
 * A sequence's block tables. blocks[j] holds positions j*B .. j*B+B-1 of the layers whose
 * cache is the full pool; swa_blocks[j] the same positions of the sliding-window layers
 * (kern_kv_layout_t.swa), whose cache is a second, smaller pool: -1 where the sequence no
 * longer keeps that block (every key there is out of every later query's window). NULL
 * when the model has no sliding pool.
 */
typedef struct kern_seq {
    const int32_t *blocks;     /* logical block j -> KV block id (full pool)   */
    int32_t n_blocks;          /* entries of blocks (and of swa_blocks)        */
    const int32_t *swa_blocks; /* logical block j -> sliding pool id, or -1    */
    /* The sequence's recurrent-state slot (models with Gated DeltaNet layers: the conv
     * and delta-rule state it carries from step to step, kern_gdn_t); -1: none. */
    int32_t state_slot;
    /* Stored states of cached prefixes (other slots): copied into state_slot before the
     * step (shard/forward.c; a prefix hit resumes there) and from it after the step; -1:
     * none. The GDN ops read state_slot only. state_load KERN_STATE_GIVEN: the slot's
     * state was written from outside (disaggregated prefill, transport/kv_xfer.h) and
     * stands at the step's first position of the sequence; nothing is copied. */
    int32_t state_load, state_save;
} kern_seq_t;

#define KERN_STATE_GIVEN (-2)

typedef struct kern_step {
    int32_t n_tokens;
    const int32_t *token; /* [n_tokens] */
    const int32_t *pos;   /* [n_tokens] */
    const int32_t *seq;   /* [n_tokens] index into seqs */
    int32_t n_seqs;
    const kern_seq_t *seqs;
    int32_t n_out;          /* tokens that want logits                 */
    const int32_t *out_idx; /* [n_out] their indices, ascending         */
} kern_step_t;

/*
 * Starts a step. `graphable`: every op until kern_be_step_end is pure device work with
 * arguments that are a function of the step's shape (no host synchronisation, no
 * collective through the host), so a GPU backend may capture it once per shape as a CUDA
 * graph and replay it (docs/gpu.md, "CUDA graphs").
 */
void kern_be_step_begin(kern_backend_t *be, const kern_step_t *st, bool graphable);
/* Ends the step's device work (launching a captured or replayed graph) and reports the
 * first error. *rerun is set when the step's ops were not run (a replay whose ops did not
 * match the captured graph's): the caller runs the same step again, not graphable. */
tdm_status_t kern_be_step_end(kern_backend_t *be, bool *rerun, tdm_error_t *err);

/* ---- ops -------------------------------------------------------------------------------- */

/* x[t] = row token[t] of emb, dequantized, for every token of the step. */
void kern_be_get_rows(kern_backend_t *be, float *x, int64_t ldx, const kern_weight_t *emb);
/* dst[i] = src[out_idx[i]] (cols floats), for the step's rows that want logits. */
void kern_be_get_out_rows(kern_backend_t *be, float *dst, int64_t ldd, const float *src,
                          int64_t lds, int64_t cols);
/* kern_op_rms_norm_f32 (w may be NULL). */
void kern_be_rms_norm(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                      const float *w, int64_t rows, int64_t cols, float eps);
/* kern_op_rope_f32 over the step's tokens at their positions. */
void kern_be_rope(kern_backend_t *be, float *x, int64_t ld, int n_heads, int head_dim,
                  const mdl_rope_params_t *p, const float *freq_factors);
/* kern_matmul_batch: n_ops products over the step's first n_tok rows. */
void kern_be_matmul(kern_backend_t *be, int n_ops, const kern_matmul_op_t *ops, int64_t n_tok);
/* out = silu(gate) * up, n elements. */
void kern_be_swiglu(kern_backend_t *be, float *out, const float *gate, const float *up, int64_t n);
/* y = a + b, n elements. */
void kern_be_add(kern_backend_t *be, float *y, const float *a, const float *b, int64_t n);
/* y[r, c] += bias[c] for rows r < rows, columns c < cols (a linear layer's bias). */
void kern_be_add_bias(kern_backend_t *be, float *y, int64_t ldy, const float *bias, int64_t rows,
                      int64_t cols);
/*
 * RMSNorm in two halves, for a norm over a vector that is split across ranks (MiniMax-M2's
 * q/k norm spans every head; each TP rank holds some): ss[r] = sum_c x[r, c]^2 over this
 * rank's cols (accumulated in double, stored as float), summed over the ranks by the
 * caller, then y[r, c] = x[r, c] / sqrt(ss[r] / n_total + eps) * w[c] with w this rank's
 * slice of the weight.
 */
void kern_be_sum_sq(kern_backend_t *be, float *ss, int64_t lds, const float *x, int64_t ldx,
                    int64_t rows, int64_t cols);
void kern_be_rms_apply(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                       const float *ss, int64_t lds, const float *w, int64_t rows, int64_t cols,
                       int64_t n_total, float eps);

/* ---- the paged KV cache (shard/kv_cache.h owns it; the layout is shared) ---------------- */

/*
 * Per layer, K and V each: n_blocks blocks of n_kv_heads heads of block_tokens slots of
 * one head_dim row of `type` (F32, F16 or Q8_0: row_bytes = tdm_type_row_size(type,
 * head_dim)). Position p of a sequence is in block table[p / block_tokens], slot p %
 * block_tokens, where table is the sequence's `blocks`, or its `swa_blocks` when the
 * layout is the sliding pool's (swa): a sliding-window layer's cache holds only the
 * blocks its window still needs.
 */
typedef struct kern_kv_layout {
    tdm_type_t type;
    int n_kv_heads;
    int head_dim;
    int block_tokens;
    int32_t n_blocks;
    size_t row_bytes;
    size_t block_bytes; /* n_kv_heads * block_tokens * row_bytes */
    bool swa;           /* the sliding pool: tables are kern_seq_t.swa_blocks */
} kern_kv_layout_t;

/* The KV cache type `name` asks for ("f32", "f16", "q8_0"; NULL or "auto": f16 on a GPU,
 * f32 on the CPU, whose kernels are fastest on f32). */
tdm_status_t kern_kv_type_resolve(const char *name, const kern_backend_t *be, tdm_type_t *out,
                                  tdm_error_t *err);

/* Fills the byte sizes of l from its other fields; TDM_ERR_UNSUPPORTED for a type or a
 * head_dim the cache cannot hold (Q8_0 needs head_dim % 32 == 0). */
tdm_status_t kern_kv_layout_init(kern_kv_layout_t *l, tdm_error_t *err);

/* Writes the step's K and V rows (n_kv_heads heads of head_dim, ld apart per token) into
 * the layer's cache at each token's position, converted to the cache's type. */
void kern_be_kv_store(kern_backend_t *be, const kern_kv_layout_t *l, void *k_layer, void *v_layer,
                      const float *k, const float *v, int64_t ld);

typedef struct kern_attn_params {
    int n_head;  /* local q heads, ld of q and out is n_head * head_dim per token */
    int head_lo; /* global index of local q head 0                                */
    int kv_lo;   /* global index of the cache's kv head 0                         */
    int group;   /* q heads per kv head: kv head of q head h is (head_lo+h)/group */
    float scale;
    /* Sliding window (gpt-oss's even layers): > 0, a query at position p sees the keys at
     * p - window + 1 .. p only; 0, every position up to p. */
    int32_t window;
    /* Attention sinks (gpt-oss): one learned logit per local head that joins the softmax
     * denominator and carries no value, not scaled; NULL for none. */
    const float *sinks;
    /* Attention temperature (Mistral 3 / Llama 4): when temp_scale != 0, a query at
     * position p has its scores multiplied by 1 + temp_scale * ln(1 + floor(p /
     * temp_floor)) (llama.cpp scales q by it; the same product). */
    float temp_scale;
    int32_t temp_floor;
} kern_attn_params_t;

/* out[t, h] = softmax(scale * q[t, h] . K) V over positions 0..pos[t] of token t's
 * sequence (or the window's last positions), with the sink in the denominator, for every
 * token of the step and local head h. Keys are visited in position order in both
 * backends, and the sink joins last, so a token's result does not depend on the step. */
void kern_be_attention(kern_backend_t *be, float *out, const float *q, const kern_kv_layout_t *l,
                       const void *k_layer, const void *v_layer, const kern_attn_params_t *p);

/* ---- mixture of experts ------------------------------------------------------------------ */

/* Router: per token, the probabilities of r->gating (written over the logits), the top k
 * experts by probability + sel_bias (ties to the lower index) and their weights. */
void kern_be_moe_route(kern_backend_t *be, float *logits, const kern_route_t *r, int32_t *sel,
                       float *w);

/* The experts this rank holds: experts [exp_lo, exp_lo + n_exp), each a gated FFN whose
 * gate/up/down views are the first expert's, the next `stride` bytes further, with
 * optional biases (the first local expert's, the next *_b_stride floats further). */
typedef struct kern_moe {
    kern_weight_t gate, up, down;
    size_t gate_stride, up_stride, down_stride;
    const float *gate_b, *up_b, *down_b; /* NULL: none                           */
    int64_t gate_b_stride, up_b_stride, down_b_stride;
    kern_act_t act;
    float act_alpha, act_limit; /* KERN_ACT_SWIGLU_OAI                      */
    int exp_lo, n_exp;
    int n_used;     /* top-k: sel and w hold n_used entries per token */
    int64_t n_embd; /* width of x and out (the views are empty when n_exp is 0) */
} kern_moe_t;

/* out[t] = sum over token t's selected experts held here, in ascending expert order, of
 * w * (down_e act(gate_e x[t] + gate_b_e, up_e x[t] + up_b_e) + down_b_e); zero for a
 * token with none here. */
void kern_be_moe_experts(kern_backend_t *be, const kern_moe_t *moe, const float *x, int64_t ldx,
                         const int32_t *sel, const float *w, float *out, int64_t ldo,
                         int64_t n_tok);

/* ---- Gated DeltaNet (qwen3next, qwen35moe: the "linear attention" layers) ---------------- */

/*
 * One Gated DeltaNet layer's recurrent state and constants. Each sequence of a step names
 * its state slot (kern_seq_t.state_slot); a slot holds the layer's conv state, the last
 * conv - 1 inputs of every channel ([conv - 1][n_ch], oldest first), and the delta-rule
 * state, one [head_dim (k)][head_dim (v)] matrix per v head. A sequence whose first token
 * in the step is at position 0 starts from zero state; otherwise the step continues the
 * state the slot holds (the shard checks that it is the sequence's, up to that position).
 * A sequence's tokens must be consecutive in the step and in position order.
 */
typedef struct kern_gdn {
    int n_k_heads, n_v_heads, head_dim;
    int conv;     /* taps of the causal conv                                       */
    bool v_tiled; /* v head h reads q/k head h % n_k_heads (else h / (n_v / n_k))  */
    /* A tensor-parallel slice (0 when unsplit): the layer has n_k_all k and n_v_all v heads,
     * this one holds v heads [v_head0, v_head0 + n_v_heads) and k heads [k_head0, k_head0 +
     * n_k_heads), every k head its v heads read. The head maps above apply to the global
     * indices (v_tiled: (v_head0 + h) % n_k_all, else (v_head0 + h) / (n_v_all / n_k_all)),
     * minus k_head0. */
    int n_k_all, n_v_all, v_head0, k_head0;
    float eps;            /* of the L2 norms of q and k: x / sqrt(sum x^2 + eps)            */
    const float *conv_w;  /* [n_ch][conv], tap conv - 1 on the current token    */
    const float *a;       /* [n_v] ssm_a = -exp(A_log)                          */
    const float *dt_bias; /* [n_v]                                              */
    float *conv_state;    /* the layer's slots: [n_slots][conv - 1][n_ch]        */
    float *ssm_state;     /* [n_slots][n_v][head_dim][head_dim]                  */
    int32_t n_slots;
} kern_gdn_t;

/* Channels of the conv: q and k (n_k_heads each) and v (n_v_heads), head_dim each. */
static inline int64_t kern_gdn_channels(const kern_gdn_t *g)
{
    return (2 * (int64_t)g->n_k_heads + g->n_v_heads) * g->head_dim;
}

/* x[t, 0..n_ch) <- silu(sum_j conv_w[c][j] * u[t - conv + 1 + j][c]) for every token of
 * the step, in place, u being the inputs before the step (the slot's conv state) and x's
 * own rows; the slot's conv state becomes the last conv - 1 inputs. */
void kern_be_gdn_conv(kern_backend_t *be, const kern_gdn_t *g, float *x, int64_t ldx);

/*
 * The gated delta rule over the step's tokens. qkv: the conv outputs ([q | k | v] per
 * token, ldq apart); beta[t * ldb + bidx(h)], alpha[t * lda + bidx(h)] the raw gates of v
 * head h, where bidx(h) = (h / r) * grp + h % r with r = n_v / n_k (qwen3next packs b
 * and a per k head: grp = 2r, alpha = beta + r; separate tensors: grp = r, bidx(h) = h).
 * In a slice (n_k_all > 0) r = n_v_all / n_k_all and packed gates hold the rows of the k
 * heads held: bidx(h) = (H / r - k_head0) * grp + H % r, H = v_head0 + h. Per v head
 * h, with q, k L2-normalised and q scaled by 1/sqrt(head_dim), b = sigmoid(beta),
 * g = a[h] * softplus(alpha + dt_bias[h]):
 *     S <- exp(g) S;  S <- S + k (b (v - S^T k))^T;  out = S^T q
 * A sequence's run of more than one token is computed in the chunked (parallel-in-chunk)
 * form, chunks of KERN_GDN_CHUNK tokens from the run's start (the same values up to
 * rounding); a single token in the recurrent form. out: [n_tok][n_v * head_dim].
 */
#define KERN_GDN_CHUNK 64
void kern_be_gdn_rule(kern_backend_t *be, const kern_gdn_t *g, const float *qkv, int64_t ldq,
                      const float *beta, int64_t ldb, const float *alpha, int64_t lda, int grp,
                      float *out);

/* y[r, c] = x[r, c] / sqrt(mean_c x[r, :]^2 + eps) * w[c] * silu(z[r, c]) (the gated
 * RMSNorm of a DeltaNet head; rows = tokens x heads, each cols wide, ld apart). */
void kern_be_rms_norm_gated(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                            const float *w, const float *z, int64_t ldz, int64_t rows, int64_t cols,
                            float eps);

/* y[r, c] *= sigmoid(g[r * ldg + c]) (the gated attention's output gate), or with bcast
 * sigmoid(g[r * ldg]) for the whole row (the shared expert's scalar gate). */
void kern_be_mul_sigmoid(kern_backend_t *be, float *y, int64_t ldy, const float *g, int64_t ldg,
                         int64_t rows, int64_t cols, bool bcast);

/* Floats of per-thread scratch the CPU backend reserves for kern_be_gdn_rule at a GDN
 * head dim (0: none), so memory plans count it with the backend's own formula. */
size_t kern_cpu_gdn_scratch_floats(int head_dim);

/* Whether the backend has the Gated DeltaNet ops (the CUDA backend does not yet). */
bool kern_be_has_gdn(const kern_backend_t *be);

#ifdef __cplusplus
}
#endif

#endif
