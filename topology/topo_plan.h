/*
 * topo_plan.h - the per-shard memory plan of a model split over shards by tensor (TP) and
 * expert (EP) parallelism, computed from GGUF metadata and tensor infos only (no tensor
 * data is read).
 *
 * The partition is shard/model.c's (plan_partition and shd_bind_std_layer; the rules are
 * listed in shard/shd_model.h), reproduced here so a plan can be made without binding a
 * model; tests/unit/test_topo_plan.c binds the fixtures with shd_model_load on every rank
 * and checks that both agree range for range and byte for byte. World rank
 * s = ep_rank * tp + tp_rank (shard/shd_comm.h).
 *
 *   q heads      n_head / tp consecutive heads per TP rank, the first n_head % tp one more;
 *   kv heads     the range those q heads use: n_head_kv / tp when that divides, otherwise
 *                neighbouring TP ranks share (replicate) a kv head;
 *   attn_output  the matching input columns; dense FFN: n_ff / tp gate/up rows, down columns;
 *   experts      per MoE layer, a count of experts per EP group (see topo_expert_rule_t),
 *                each expert's width split over TP like a dense FFN;
 *   output       vocab rows over TP when n_vocab divides, else replicated;
 *   vectors      q/k/v biases, full-width q/k norms (minimax-m2) and attention sinks: the
 *                rank's heads / kv heads; dense gate/up biases: its FFN columns; expert
 *                biases: the whole rows of its EP group's experts (not split over TP);
 *   replicated   token_embd, output_norm, per-head norms, the routers (ffn_gate_inp and
 *                its bias, exp_probs_b), attn_output / ffn_down biases, rope_freqs.
 * A column slice of a quantized matrix must fall on block boundaries (the loader refuses
 * otherwise), so the plan refuses such a split too, naming the tensor.
 *
 * Formulas (docs/topology.md):
 *   KV bytes per token on a shard = 2 * n_layer * kv_heads_on_shard * row bytes of head_dim
 *   values of the KV type (f32: 4 * head_dim, f16: 2 * head_dim, q8_0: 34 * head_dim / 32),
 *   allocated in blocks of block_tokens tokens, as shard/model.c shd_model_kv_blocks does;
 *   kept per layer kind (full-attention layers, sliding-window layers): the cache keeps one
 *   pool for both today, so the sliding layers' pool has as many blocks as the full one
 *   (kv_swa_blocks == kv_blocks; topo_plan.c swa_pool_blocks is where a smaller pool goes);
 *   with p.mtp the MTP block's attention is one more full-attention layer;
 *   bytes read per decoded token = the weights one token touches on a shard: every bound
 *   tensor's slice except token_embd (one row, and the output head's rows when tied) and
 *   the experts, of which the top k of n_expert are touched (k / n_expert of the shard's
 *   expert bytes: uniform routing); the decode ceiling at bandwidth W is W / the largest;
 *   scratch = the step scratch arena of shard/model.c alloc_scratch for `batch` tokens;
 *   backend scratch = what the device's backend reserves for its compound ops
 *   (kern_be_reserve): on the CPU attention rows per thread and MoE buffers, on a GPU
 *   kern_cuda_reserve_bytes (the CUDA backend's own formula).
 *   CPU shard: total = weights + KV + buffers, buffers = scratch + backend scratch + f32
 *   copies of non-f32 norm vectors + (world > 1) 2 * batch * n_embd * 4 bytes of collective
 *   staging (an estimate of what transport/ucx_comm.c registers).
 *   GPU shard: what shard/model.c check_fit counts in device memory: total = the weight
 *   store (each view's slice compact, vectors as f32, 256-byte aligned) + KV + buffers,
 *   buffers = scratch + backend scratch + TOPO_GPU_MARGIN. The f32 norm copies and the
 *   collective staging are host memory there and not in the total.
 */
#ifndef TDM_TOPO_PLAN_H
#define TDM_TOPO_PLAN_H

#include "common/status.h"
#include "kernels/kern_backend.h"
#include "model/gguf.h"
#include "model/hparams.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How one tensor is spread over the shards. */
typedef enum topo_split {
    TOPO_SPLIT_REPLICATED = 0, /* every shard holds all of it                          */
    TOPO_SPLIT_TP_ROWS,        /* rows over the TP ranks (each EP group holds a copy)   */
    TOPO_SPLIT_TP_COLS,        /* columns over the TP ranks (each EP group a copy)      */
    TOPO_SPLIT_KV_SHARED,      /* kv-head rows over TP, neighbours sharing a kv head    */
    TOPO_SPLIT_EXPERTS,        /* experts over EP groups, each expert's width over TP   */
    TOPO_SPLIT_UNUSED,         /* not bound by the shard loader: on no shard            */
    TOPO_SPLIT_WORLD,          /* columns over every shard (the shared expert)          */
    TOPO_SPLIT_COUNT
} topo_split_t;

/* What a tensor is for (the rows of the per-shard table). */
typedef enum topo_class {
    TOPO_CLASS_EMBD_NORMS = 0, /* token_embd, norms, routers (+ biases), rope_freqs      */
    TOPO_CLASS_ATTENTION,      /* attn_q/k/v/output and their biases, attn_sinks        */
    TOPO_CLASS_DENSE_FFN,      /* ffn_gate/up/down of dense layers and their biases     */
    TOPO_CLASS_EXPERTS,        /* ffn_{gate,up,down}_exps and their biases              */
    TOPO_CLASS_OUTPUT,         /* output.weight (untied)                               */
    TOPO_CLASS_MTP,            /* multi-token-prediction blocks: kept whole, not run    */
    TOPO_CLASS_UNUSED,
    TOPO_CLASS_COUNT
} topo_class_t;

/* How many experts of each MoE layer each EP group holds. */
typedef enum topo_expert_rule {
    /* Bytes balanced: greedy largest-first bin packing of the (layer, expert) items, each
     * weighing its bytes (gate + up + down of that expert and their biases: tensor bytes /
     * n_expert), onto the EP group with the fewest bytes so far (ties: the lower rank). Per
     * layer the
     * resulting counts are then laid out as consecutive ranges in EP-rank order, so a shard
     * holds one contiguous run of experts per layer. The loader must take per-layer
     * ranges to realise this (LOAD carries them; tandem serve --shards uses this rule). */
    TOPO_EXPERTS_BALANCED = 0,
    /* shard/model.c without per-layer ranges: EP rank r holds experts [r*base + min(r, rem), +base
     * + (r < rem)) of every MoE layer (base = n_expert / ep, rem = n_expert % ep). */
    TOPO_EXPERTS_CONTIGUOUS,
} topo_expert_rule_t;

/* The device the shards run on: what their memory and their backend's scratch are. */
typedef enum topo_plan_device {
    TOPO_PLAN_CPU = 0, /* host memory; the CPU backend                              */
    TOPO_PLAN_CUDA,    /* a GPU's memory; the CUDA backend (weights copied compact) */
} topo_plan_device_t;

/* What shard/model.c check_fit keeps free on a GPU for the CUDA context's own allocations
 * and fragmentation. */
#define TOPO_GPU_MARGIN (256ull << 20)

typedef struct topo_plan_params {
    int n_shards;
    int tp, ep;        /* 0: chosen (a model with experts: ep = n_shards, else tp = n_shards) */
    int ctx_size;      /* KV tokens, and the longest sequence the op scratch is sized for
                          (attention); 0: the model's context length, at most 8192          */
    uint64_t kv_bytes; /* per-shard KV budget (overrides ctx_size); 0: sized for ctx_size   */
    int batch;         /* tokens per step; 0: 512                                           */
    int n_out;         /* running sequences (tandem serve's --max-running); 0: 64. The rows
                          of logits per step follow from it (topo_logits_rows, with spec) */
    int threads;       /* kernel threads per shard (attention score rows); 0: 1             */
    int block_tokens;  /* KV block size; 0: 16                                              */
    topo_expert_rule_t experts;
    topo_plan_device_t device; /* 0: the CPU                                      */
    /* KV cache rows: F32 (the zero value), F16 or Q8_0 (topo_kv_type_parse gives the
     * default by device: f16 on a GPU) */
    tdm_type_t kv_type;
    /* speculative decoding on (`tandem serve --spec` other than off): logits rows for the
     * drafts, spec_max per sequence (0: 8; topo_logits_rows) */
    bool spec;
    int spec_max;
    /* the MTP block runs (--spec mtp, implies spec): one more full-attention layer's K/V per
     * token and its hidden-state rows (shard/model.c's run_mtp); the block runs on one
     * unsplit shard, so a plan over more shards, or of a model without one, is refused */
    bool mtp;
} topo_plan_params_t;

typedef struct topo_range {
    int lo, n;
} topo_range_t;

typedef struct topo_shard_plan {
    int rank, tp_rank, ep_rank;
    topo_range_t heads, kv_heads, ffn_cols, expert_cols, vocab_rows;
    topo_range_t experts_contiguous;  /* the contiguous rule's range (every MoE layer)      */
    topo_range_t gdn_v, gdn_k;        /* Gated DeltaNet v heads and the k heads they read   */
    topo_range_t shexp_cols;          /* shared expert columns (split over the world)       */
    int expert_slots;                 /* (layer, expert) pairs held under the plan's rule  */
    uint64_t bytes[TOPO_CLASS_COUNT]; /* weight bytes per class                            */
    uint64_t replicated;              /* bytes of tensors every shard holds whole (by rule,
                                         or because tp or ep is 1)                         */
    uint64_t sharded;                 /* bytes of this shard's parts of the other tensors  */
    uint64_t weights;                 /* replicated + sharded                              */
    uint64_t weights_mmap;            /* resident bound when mmapped: column slices whole  */
    uint64_t experts_as_loader;       /* expert bytes under TOPO_EXPERTS_CONTIGUOUS        */
    uint64_t weights_device;          /* GPU: the weight store (slices compact, vectors as
                                         f32, 256-byte aligned views); CPU: weights        */
    uint64_t kv_per_token;            /* 2 * n_layer * kv_heads.n * KV row bytes           */
    uint64_t kv_per_token_full;       /* ... of the full-attention layers                  */
    uint64_t kv_per_token_swa;        /* ... of the sliding-window layers (0: none)        */
    uint64_t state;                   /* recurrent state: (n_state_slots + n_state_store)
                                         x the model's per-sequence state (GDN layers)     */
    uint64_t kv;                      /* kv_tokens * kv_per_token_full
                                         + kv_swa_tokens * kv_per_token_swa + state        */
    uint64_t read_per_token;          /* weight bytes one decoded token reads here (above) */
    uint64_t read_experts;            /* ... of which experts (k / n_expert of them)       */
    uint64_t scratch;                 /* shard/model.c alloc_scratch                       */
    uint64_t backend_scratch;         /* kern_be_reserve of the device's backend           */
    uint64_t vec_copies;              /* f32 copies of non-f32 norm vectors (host)         */
    uint64_t comm;                    /* collective staging estimate (host)                */
    uint64_t margin;                  /* GPU: TOPO_GPU_MARGIN; CPU: 0                      */
    uint64_t buffers;                 /* CPU: scratch + backend_scratch + vec_copies + comm;
                                         GPU: scratch + backend_scratch + margin           */
    uint64_t total;                   /* weights_device + kv + buffers                     */
} topo_shard_plan_t;

typedef struct topo_tensor_plan {
    char name[GGUF_MAX_NAME];
    tdm_type_t type;
    uint64_t nbytes;
    int layer; /* -1 for the tensors outside blk.N */
    topo_split_t split;
    topo_class_t cls;
    uint64_t *per_shard; /* [n_shards] bytes each shard holds */
} topo_tensor_plan_t;

typedef struct topo_plan {
    mdl_hparams_t hp;
    topo_plan_params_t p; /* resolved: no zeros left                                   */
    int n_shards, tp, ep;
    bool split_chosen;           /* tp/ep were chosen, not given                                */
    int n_moe_layers;            /* layers with experts                                         */
    int kv_tokens;               /* KV capacity in tokens (a multiple of block_tokens)          */
    int32_t kv_blocks;           /* blocks, the same count on every shard                       */
    int n_swa_layers;            /* layers attending in a sliding window (gpt-oss: the even)    */
    int swa_window;              /* their window in tokens (0: none)                            */
    int32_t kv_swa_blocks;       /* the sliding layers' pool (== kv_blocks: one pool today)     */
    int kv_swa_tokens;           /* kv_swa_blocks * block_tokens                                */
    int32_t n_state_slots;       /* recurrent-state slots (n_out; 0 without GDN layers)         */
    int32_t n_state_store;       /* stored prefix states beside them (serve: as many)           */
    uint64_t read_per_token_max; /* the largest shard's read_per_token: decode's critical path  */
    uint64_t model_bytes;        /* every tensor in the file                           */
    uint64_t expert_item_max;    /* bytes of the largest (layer, expert) item           */
    uint64_t expert_bytes_total; /* all experts of all layers                           */
    uint64_t *ep_load;           /* [ep] expert bytes per EP group                      */
    int *expert_owner;           /* [n_layer * n_expert] EP group; -1 in dense layers   */
    int *expert_lo, *expert_n;   /* [n_layer * ep]: EP group g of layer il holds experts
                                    [expert_lo, expert_lo + expert_n) (0, 0 when dense)  */
    int n_tensors;
    topo_tensor_plan_t *tensors;
    topo_shard_plan_t *shards; /* [n_shards] */
} topo_plan_t;

/*
 * Plans model g for p. Fails with TDM_ERR_INVALID_PARAM or TDM_ERR_UNSUPPORTED and a message
 * naming the constraint when the split is impossible (shards != tp * ep, heads or FFN width
 * not divisible by tp, more EP groups than experts, EP on a model without experts, column
 * slices off block boundaries, a KV budget below one batch, a KV type the cache cannot hold:
 * q8_0 with a head_dim that is not a multiple of 32), TDM_ERR_FORMAT / NOT_FOUND for
 * missing or misshapen tensors, as shd_model_load would.
 */
tdm_status_t topo_plan_build(const gguf_ctx_t *g, const topo_plan_params_t *p, topo_plan_t **out,
                             tdm_error_t *err);
void topo_plan_destroy(topo_plan_t *plan); /* NULL is fine */

const char *topo_split_name(topo_split_t s); /* "tp_rows" */
const char *topo_class_name(topo_class_t c); /* "attention" */

/* Spare recurrent-state slots `tandem serve` keeps for speculation on a hybrid model. */
#define TOPO_SPEC_RECURRENT_SPARES 8

/* The rows of logits per step `tandem serve` asks of its executor (n_logits_max; on a model
 * with recurrent layers also its state slots): one per running sequence, and with
 * speculation room for the drafts it verifies, spec_max (0: 8) per sequence up to 256 more
 * (a row is n_vocab floats; with many streams the cost model drafts little anyway), or on a
 * model with recurrent layers, where each row is a whole state slot, one spare per drafting
 * sequence up to TOPO_SPEC_RECURRENT_SPARES; at most batch. */
int topo_logits_rows(const mdl_hparams_t *hp, int max_running, int batch, bool spec, int spec_max);

/* Tokens of KV cache that fit beside the weights and buffers on every shard when each has
 * `budget` bytes (the buffers as planned, for p.ctx_size), in whole blocks; 0 when not even
 * the weights and buffers fit. */
uint64_t topo_plan_kv_tokens_fit(const topo_plan_t *plan, uint64_t budget);

/* The KV bytes a full pool of `tokens` tokens (whole blocks) and the sliding pool beside it
 * take on the shard that needs most: the --kv-memory that holds them. */
uint64_t topo_plan_kv_bytes(const topo_plan_t *plan, uint64_t tokens);

/*
 * The context `tandem serve` uses when --ctx-size is not given, for one shard holding the
 * whole model in `budget` bytes (a GPU's free memory, or the host's MemAvailable): the
 * model's trained context when its KV cache for one such sequence plus a batch fits beside
 * the weights and buffers (p->ctx_size is ignored), else the largest context that fits
 * (whole blocks). The KV budget is then 4 x min(ctx, 8192) tokens, or one full sequence and
 * a batch if that is more, as far as memory allows (so short requests keep the concurrency
 * the old 8192 default gave them). With p->kv_bytes set, that budget is kept and bounds the
 * context instead.
 */
typedef struct topo_ctx_pick {
    int ctx;            /* positions per sequence                                     */
    int ctx_train;      /* the model's trained context (4096 when the file has none)  */
    bool trained;       /* ctx == ctx_train                                           */
    uint64_t kv_bytes;  /* the KV budget for the executor; 0: its default (4 x ctx)    */
    uint64_t kv_tokens; /* KV tokens that budget holds                                */
    uint64_t fit;       /* KV tokens that fit in budget beside weights and buffers    */
} topo_ctx_pick_t;

tdm_status_t topo_pick_ctx(const gguf_ctx_t *g, const topo_plan_params_t *p, uint64_t budget,
                           topo_ctx_pick_t *out, tdm_error_t *err);

/* The KV bytes one decoded token reads on the shard that reads most, at a context of ctx
 * tokens: ctx * kv_per_token_full + min(ctx, swa_window) * kv_per_token_swa. */
uint64_t topo_plan_kv_read(const topo_plan_t *plan, int ctx);

/* The decode ceiling of one sequence in tokens per second at a context of ctx tokens when
 * every shard reads memory at `bytes_per_s` (a DGX Spark: about 273e9): bytes_per_s / the
 * largest read_per_token + KV read of a shard (ctx 0: the weights only). Collectives and
 * compute come on top. */
double topo_plan_decode_ceiling(const topo_plan_t *plan, double bytes_per_s, int ctx);

/* What shard s asks its backend to reserve (shard/model.c reserve_of, with the plan's batch,
 * logit rows and ctx_size as the longest sequence). */
void topo_shard_reserve(const topo_plan_t *plan, const topo_shard_plan_t *s, kern_reserve_t *out);

/* The bytes the CPU backend reserves for r with `threads` kernel threads (kernels/cpu/
 * backend_cpu.c cpu_reserve: attention scores and a row per thread, MoE token buffers). */
uint64_t topo_cpu_reserve_bytes(const kern_reserve_t *r, int threads);

/* "f32", "f16", "q8_0", or NULL / "auto": f16 on a GPU, f32 on the CPU (as
 * kern_kv_type_resolve chooses for a backend). TDM_ERR_INVALID_PARAM for other names. */
tdm_status_t topo_kv_type_parse(const char *name, topo_plan_device_t device, tdm_type_t *out,
                                tdm_error_t *err);

/* The --kv-type spelling of a KV cache type ("f32", "f16", "q8_0"); tdm_type_name else. */
const char *topo_kv_type_name(tdm_type_t t);

/* A shard's memory on GPU `gpu`: its free memory, on an integrated (unified-memory) GPU at
 * most the host's MemAvailable `host_available` (as the CUDA backend's kern_be_mem_info). */
uint64_t topo_gpu_budget(const kern_gpu_info_t *gpu, uint64_t host_available);

/* Greedy largest-first (LPT) bin packing: items by bytes descending (ties: lower index
 * first), each onto the bin with the smallest load (ties: lower bin). Writes bin_of[n] and
 * load[n_bins]. The result's max - min load is at most the largest item. */
tdm_status_t topo_lpt_assign(const uint64_t *bytes, int n, int n_bins, int *bin_of, uint64_t *load,
                             tdm_error_t *err);

/* MemAvailable of a /proc/meminfo-format file (NULL: /proc/meminfo), in bytes. */
tdm_status_t topo_meminfo_available(const char *path, uint64_t *out, tdm_error_t *err);

/* "512M", "2G", "1.5GiB", "1048576" -> bytes (K/M/G/T powers of 1024); false when malformed. */
bool topo_parse_size(const char *s, uint64_t *out);

#ifdef __cplusplus
}
#endif

#endif
