/*
 * hparams.h - the hyper-parameters of a model, read from GGUF metadata.
 *
 * mdl_hparams_load() reads general.architecture and the "<arch>.*" keys for the
 * architectures this build runs (llama, qwen3moe, minimax-m2, gpt-oss, qwen2, mistral3,
 * qwen3next, qwen35moe),
 * applies llama.cpp's defaults and per-architecture constants for absent optional keys,
 * and derives what the forward pass needs: RoPE style and scaling, which layers are MoE
 * (by tensor presence: blk.N.ffn_gate_inp.weight) and which attend in a sliding window,
 * tied embeddings (output.weight absent), the router's gating. Facts: ../shared/
 * reference/gguf-and-moe-architectures.md section 3. Errors name the key or tensor at
 * fault.
 */
#ifndef TDM_MDL_HPARAMS_H
#define TDM_MDL_HPARAMS_H

#include "common/status.h"
#include "model/gguf.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MDL_MAX_LAYERS 512
#define MDL_ARCH_NAME  32

typedef enum mdl_arch {
    MDL_ARCH_LLAMA = 0,
    MDL_ARCH_QWEN3MOE,
    MDL_ARCH_MINIMAX_M2, /* "minimax-m2" */
    MDL_ARCH_GPT_OSS,    /* "gpt-oss"    */
    MDL_ARCH_QWEN2,
    MDL_ARCH_MISTRAL3,
    MDL_ARCH_QWEN3NEXT, /* Qwen3-Next, Qwen3-Coder-Next: Gated DeltaNet + gated attention */
    MDL_ARCH_QWEN35MOE, /* Qwen3.5 / 3.6 MoE: the same hybrid, V heads in tiled order     */
    MDL_ARCH_COUNT
} mdl_arch_t;

/* How router logits become expert weights (GGUF <arch>.expert_gating_func's values). */
typedef enum mdl_gating {
    MDL_GATING_SOFTMAX = 1,
    MDL_GATING_SIGMOID = 2,
    MDL_GATING_SOFTMAX_SELECTED = 3, /* top-k of the logits, softmax over those (gpt-oss) */
} mdl_gating_t;

/* Which elements of a head RoPE rotates together (ggml's names). */
typedef enum mdl_rope_type {
    MDL_ROPE_NORM = 0, /* adjacent pairs (2i, 2i+1): GGUF llama (q/k rows permuted) */
    MDL_ROPE_NEOX,     /* halves (i, i + n_rot/2): qwen3moe, HF layout             */
} mdl_rope_type_t;

typedef enum mdl_rope_scaling {
    MDL_ROPE_SCALING_NONE = 0,
    MDL_ROPE_SCALING_LINEAR, /* theta *= freq_scale                           */
    MDL_ROPE_SCALING_YARN,   /* ggml's YaRN ramp between interp. and extrap.   */
} mdl_rope_scaling_t;

/* Everything rope needs besides the position; filled from metadata by hparams and
 * passed unchanged to kern_op_rope_f32. */
typedef struct mdl_rope_params {
    mdl_rope_type_t type;
    int n_rot;        /* rotated dims per head (even, <= head_dim)              */
    float freq_base;  /* b in theta_i = p * b^(-2i/n_rot)                       */
    float freq_scale; /* 1 / rope.scaling.factor (1 when no scaling)            */
    mdl_rope_scaling_t scaling;
    float ext_factor;  /* YaRN mix strength (1 for yarn, 0 otherwise)            */
    float attn_factor; /* multiplier on cos/sin                                  */
    float beta_fast;   /* YaRN correction range                                  */
    float beta_slow;
    uint32_t n_ctx_orig; /* YaRN original context length                           */
} mdl_rope_params_t;

/* The widest expert router this build takes (kernels' KERN_ROUTE_MAX_EXPERTS). */
#define MDL_MAX_EXPERTS 1024

typedef struct mdl_hparams {
    mdl_arch_t arch;
    char arch_name[MDL_ARCH_NAME]; /* general.architecture                       */
    int n_layer;
    int n_embd;
    int n_head;
    int n_head_kv;
    int head_dim;   /* key_length, default n_embd / n_head                        */
    int head_dim_v; /* value_length, default head_dim (must equal it here)        */
    int n_ff;       /* dense FFN width (0 when every layer is MoE)                */
    int n_vocab;    /* token_embd.weight ne[1]                                    */
    int n_ctx_train;
    float rms_eps;
    float attn_scale; /* 1/sqrt(head_dim) unless <arch>.attention.scale is set    */
    mdl_rope_params_t rope;
    bool has_rope_freqs; /* rope_freqs.weight present (llama3 per-dim factors)    */

    /* MoE (n_expert == 0: no MoE layer). */
    int n_expert;
    int n_expert_used;
    int n_ff_exp;
    bool expert_norm_topk;      /* renormalise the top-k weights to sum 1          */
    mdl_gating_t expert_gating; /* softmax (default), sigmoid, softmax over top-k */
    float expert_weights_scale; /* weights *= it when not 0 or 1                  */
    bool expert_oai_act;        /* gpt-oss's clamped SwiGLU (alpha 1.702, limit 7)*/

    bool tied_output;  /* output.weight absent: logits use token_embd.weight        */
    bool qk_norm;      /* RMSNorm on q and k (attn_q_norm / attn_k_norm present)    */
    bool qk_norm_full; /* ... over all heads together (minimax-m2), not per head    */
    bool attn_sinks;   /* a learned sink logit per head (gpt-oss)                   */

    /* Sliding-window attention: layers with layer_swa[il] see the last n_swa
     * positions only, with RoPE base rope_freq_base_swa (gpt-oss: even layers, 128). */
    int n_swa;
    float rope_freq_base_swa;
    uint8_t layer_swa[MDL_MAX_LAYERS];

    /* Attention temperature (mistral3): q scaled by 1 + attn_temp_scale * ln(1 +
     * floor(pos / attn_temp_floor)); attn_temp_scale 0: none. */
    float attn_temp_scale;
    int attn_temp_floor;

    uint8_t layer_moe[MDL_MAX_LAYERS]; /* 1: blk.N has an MoE FFN, 0: dense       */

    /* Shared expert beside the routed ones (qwen3next, qwen35moe): a SwiGLU FFN of width
     * n_ff_shexp whose output is scaled by sigmoid(ffn_gate_inp_shexp . x); 0: none. */
    int n_ff_shexp;
    /* Gated attention (qwen3next, qwen35moe): attn_q holds, per head, head_dim query
     * rows and then head_dim gate rows; the attention output is multiplied by
     * sigmoid(gate) before attn_output. */
    bool attn_out_gate;

    /* Gated DeltaNet ("linear attention") layers: layer_recurrent[il] marks them (GGUF
     * <arch>.attention.recurrent_layers, else every layer but each full_attention_interval-th).
     * Sizes from the ssm.* keys: gdn_k_heads (ssm.group_count) q/k heads and gdn_v_heads
     * (ssm.time_step_rank) v heads of gdn_head_dim (ssm.state_size) each, a causal conv of
     * gdn_conv taps (ssm.conv_kernel) over the q, k, v channels. V head h reads q/k head
     * h / (v/k) (qwen3next: grouped, HF's order) or h % k (gdn_v_tiled, qwen35moe: the
     * converter reorders the V heads for ggml's broadcast). */
    int n_recurrent; /* layers marked (0: no GDN layer)                       */
    /* Multi-token-prediction layers (<arch>.nextn_predict_layers: Qwen3.5, GLM-4.5) after
     * the trunk: blocks n_layer .. n_layer + n_mtp - 1. block_count counts them; n_layer
     * does not. The forward pass does not run them; the shard keeps their tensors. */
    int n_mtp;
    int gdn_k_heads, gdn_v_heads, gdn_head_dim, gdn_conv;
    bool gdn_v_tiled;
    uint8_t layer_recurrent[MDL_MAX_LAYERS];
} mdl_hparams_t;

/* "llama" -> MDL_ARCH_LLAMA; -1 when this build does not run the architecture. */
int mdl_arch_from_name(const char *name, size_t len);
const char *mdl_arch_name(mdl_arch_t arch);

/* Reads and validates the hyper-parameters of the model in ctx. */
tdm_status_t mdl_hparams_load(const gguf_ctx_t *ctx, mdl_hparams_t *out, tdm_error_t *err);

/* The sliding window of the model's sliding layers (n_swa) when it has any, else 0: the
 * window the KV cache's sliding pool serves (shard/kv_cache.h). */
int mdl_hparams_swa_window(const mdl_hparams_t *hp);
/* How many layers attend in a sliding window (0 when n_swa is 0). */
int mdl_hparams_n_swa_layers(const mdl_hparams_t *hp);

/* Floats of one sequence's recurrent state in one Gated DeltaNet layer: the conv state
 * ((gdn_conv - 1) inputs of the 2 k + v channels) and the delta-rule state (gdn_v_heads
 * matrices of gdn_head_dim^2). 0 without GDN layers. */
int64_t mdl_hparams_gdn_conv_floats(const mdl_hparams_t *hp);
int64_t mdl_hparams_gdn_state_floats(const mdl_hparams_t *hp);
/* Bytes of one sequence's recurrent state over every GDN layer (f32). */
uint64_t mdl_hparams_state_bytes(const mdl_hparams_t *hp);

#ifdef __cplusplus
}
#endif

#endif
