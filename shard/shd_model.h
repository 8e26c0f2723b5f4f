/*
 * shd_model.h - a model as one shard holds it: hyper-parameters, this shard's slice of
 * every weight (views into the mapped GGUF, never copies), and a scratch arena sized at
 * load time for the largest step.
 *
 * Partition (shd_partition_t): TP over attention heads and dense FFN columns, EP over
 * experts; see shd_comm.h for the groups and docs/forward-pass.md for the scheme.
 *   - q heads: consecutive runs per TP rank, n_head / tp_size each and one more for the
 *     first n_head % tp_size ranks;
 *   - kv heads: the consecutive range the rank's q heads use (an exact split when
 *     n_head_kv divides by tp_size, otherwise the shared kv heads are replicated);
 *   - attn_output: the matching input columns, the partial sums all-reduced over TP;
 *   - dense FFN: n_ff / tp_size gate/up rows and down columns, all-reduced over TP;
 *   - experts: consecutive ranges of n_expert / ep_size experts per EP rank (the first
 *     n_expert % ep_size ranks take one more), each expert's width split over TP like a
 *     dense FFN (n_ff_exp must divide by tp_size), the partial
 *     MoE outputs all-reduced over the world;
 *   - output (vocab) rows split over TP and all-gathered when n_vocab divides, else
 *     replicated. Embeddings, norms and the router are replicated.
 * A column slice of a quantized weight must start on a block boundary, otherwise the
 * load fails with TDM_ERR_UNSUPPORTED naming the tensor.
 */
#ifndef TDM_SHD_MODEL_H
#define TDM_SHD_MODEL_H

#include "kernels/kern.h"
#include "kernels/kern_backend.h"
#include "model/gguf.h"
#include "model/hparams.h"
#include "shard/kv_cache.h"
#include "shard/shd_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct shd_partition {
    int tp_rank, tp_size;
    int ep_rank, ep_size;
} shd_partition_t;

typedef struct shd_model_params {
    int n_batch_max;      /* most tokens in one step                          */
    int n_out_max;        /* most tokens with logits in one step (<= batch)   */
    int n_ctx_max;        /* most positions of one sequence                   */
    shd_partition_t part; /* {0,1,0,1} for the whole model                */
    shd_comm_t comm;      /* ops NULL when tp_size * ep_size == 1          */
    /* Per-layer expert ranges of this rank ([n_layer] each, read during load only): layer
     * il holds experts [expert_lo[il], expert_lo[il] + expert_n[il]). NULL: the same
     * contiguous range in every layer (EP rank r: n_expert / ep_size, the first
     * n_expert % ep_size ranks one more). The ranges of all EP ranks must tile each
     * layer's experts; topo_plan's bytes-balanced rule produces such ranges. */
    const int32_t *expert_lo, *expert_n;
    tdm_type_t kv_type; /* KV cache rows: F32 (0, the default), F16 or Q8_0 */
    /* The KV cache the caller will make (shd_model_kv_blocks' arguments), so a device
     * backend can refuse a load that would not fit before copying anything; 0 blocks:
     * not counted. */
    int kv_block_tokens;
    uint64_t kv_bytes;
    /* Models with recurrent (Gated DeltaNet) layers: stored states of cached prefixes the
     * KV cache keeps beside the n_out_max running sequences' slots (0: none; then the
     * coordinator serves no prefix hits for the model). */
    int n_state_store;
    /* Run the model's multi-token-prediction block (hp.n_mtp > 0; speculative decoding's
     * MTP drafter): block n_layer is bound as a runnable layer, the KV cache gets one more
     * full-attention layer for it (shd_model_kv_pools counts it) and shd_forward_mtp runs
     * it. Single rank only (TDM_ERR_UNSUPPORTED when split). false: its tensors are only
     * kept (listed, counted), never run. */
    bool mtp;
} shd_model_params_t;

typedef struct shd_model shd_model_t;

/*
 * Binds the model in g (which must outlive the model) for partition p->part, with ops run
 * on the backend be (not owned; one per concurrently running shard). A device backend
 * gets its own copy of the slice's weights (in bounded chunks, the file's pages dropped
 * behind them); the load is refused first, with the numbers, when weights, scratch and
 * the KV cache would not fit. Fails naming the key or tensor that is missing, has the
 * wrong shape or an unsupported type.
 */
tdm_status_t shd_model_load(const gguf_ctx_t *g, kern_backend_t *be, const shd_model_params_t *p,
                            shd_model_t **out, tdm_error_t *err);
void shd_model_destroy(shd_model_t *m); /* NULL is fine */

const mdl_hparams_t *shd_model_hparams(const shd_model_t *m);
const shd_model_params_t *shd_model_params(const shd_model_t *m);
kern_backend_t *shd_model_backend(const shd_model_t *m);
/* Whether the MTP block runs (shd_model_params_t.mtp on a model that has one). */
bool shd_model_mtp(const shd_model_t *m);

/* Replaces the communicator (same world shape; e.g. after the transport reconnected). */
void shd_model_set_comm(shd_model_t *m, shd_comm_t comm);

/* Called by shd_forward after each layer's ops, once the layer's K/V are stored (on a
 * backend whose memory is the host's: the CPU's ops are done when they return), so they
 * can travel while the next layer computes (disaggregated prefill, transport/kv_xfer.h);
 * a non-OK return fails the step. NULL: none. */
typedef tdm_status_t (*shd_layer_hook_fn)(void *ctx, int il, tdm_error_t *err);
void shd_model_set_layer_hook(shd_model_t *m, shd_layer_hook_fn fn, void *ctx);

/* Bytes of weights this rank's views cover (its slice; replicated tensors whole). */
uint64_t shd_model_weight_bytes(const shd_model_t *m);

/* Reads one byte of every page of this rank's slice, so the slice is resident before the
 * first step (and only the slice: other ranks' parts of the mapped file stay untouched).
 * Returns a checksum of the bytes read, so the reads cannot be optimised away. On a device
 * backend (weights copied at load) it does nothing and returns 0. */
uint64_t shd_model_prefault(const shd_model_t *m);

/* The sliding window the KV cache's sliding pool serves: hp.n_swa when the model has
 * sliding-window layers, else 0. */
int shd_model_swa_window(const shd_model_t *m);

/* The KV cache's pools on this shard (shard/kv_cache.h) and what one block of each costs
 * (K and V of every layer of that pool, this shard's kv heads). */
typedef struct shd_kv_pools {
    int32_t n_blocks;       /* the full pool: the layers that see every position     */
    int32_t n_swa_blocks;   /* the sliding pool; 0 without sliding layers            */
    size_t block_bytes;     /* one full-pool block (0 when every layer slides)       */
    size_t swa_block_bytes; /* one sliding-pool block (0 without sliding layers)      */
    /* Recurrent state (Gated DeltaNet layers): one slot per sequence that can run at
     * once (n_out_max) and n_state_store stored states of cached prefixes (slots
     * n_state_slots ..), their bytes taken from the budget first; 0 without such layers. */
    int32_t n_state_slots;
    int32_t n_state_store;
    uint64_t state_bytes; /* of all of them                                         */
} shd_kv_pools_t;

/*
 * How many KV blocks of block_tokens tokens each pool gets on this shard for a budget of
 * kv_bytes. The one rule for single-node and shards:
 *   - the full pool: kv_bytes 0 means "4 x n_ctx_max tokens, and at least one full
 *     batch"; a budget whose full pool is below one batch (n_batch_max tokens, plus a
 *     block) fails with TDM_ERR_INVALID_PARAM and the numbers;
 *   - the sliding pool (models with sliding-window layers, window w) is sized from the
 *     concurrency it serves, not from the context (shd_kv_swa_pool_want): a sequence
 *     whose step computes positions [c, n) keeps the blocks of [c - w + 1, n), at most
 *     ceil((w - 1) / bt) + 2 blocks beyond those of its step's tokens; the step's tokens
 *     of all sequences together are at most n_batch_max; and at most n_out_max sequences
 *     run at once (each running sequence takes a logits row when it samples; serve passes
 *     --max-running as that limit). The pool holds min(n_blocks, 2 x n_out_max x
 *     (ceil((w - 1) / bt) + 2) + ceil(n_batch_max / bt)) blocks: the factor 2 leaves room
 *     for the idle cached windows of shared prefixes (a prefix hit needs the window
 *     before its end). With an explicit budget the sliding pool's bytes are taken first
 *     and the rest goes to the full pool.
 */
tdm_status_t shd_model_kv_pools(const shd_model_t *m, int block_tokens, uint64_t kv_bytes,
                                shd_kv_pools_t *out, tdm_error_t *err);

/* One sequence's recurrent state on this shard: conv inputs and delta-rule matrices of
 * every Gated DeltaNet layer for this rank's heads (mdl_hparams_state_bytes / about tp under
 * a TP split; 0 without such layers). */
uint64_t shd_model_state_bytes(const shd_model_t *m);

/* The sliding pool the rule above wants before the min with the full pool (also what
 * topology/topo_plan.c counts). */
size_t shd_kv_swa_pool_want(int window, int block_tokens, int n_batch_max, int n_seqs_max);

/* The full pool of shd_model_kv_pools and the bytes of one of its blocks (for a model
 * without sliding layers: the whole cache). */
tdm_status_t shd_model_kv_blocks(const shd_model_t *m, int block_tokens, uint64_t kv_bytes,
                                 int32_t *n_blocks, size_t *block_bytes, tdm_error_t *err);

/* The KV storage shape this shard needs (its local kv heads), for pools of blocks of
 * block_tokens tokens (the sliding layers flagged when pools->n_swa_blocks > 0). */
void shd_model_kv_config_pools(const shd_model_t *m, int block_tokens, const shd_kv_pools_t *pools,
                               shd_kv_config_t *out);
/* The same with one pool of n_blocks for every layer (no sliding pool). */
void shd_model_kv_config(const shd_model_t *m, int block_tokens, int32_t n_blocks,
                         shd_kv_config_t *out);

#ifdef __cplusplus
}
#endif

#endif
