/*
 * hparams.h - the hyper-parameters of a model, read from GGUF metadata.
 *
 * mdl_hparams_load() reads general.architecture and the "<arch>.*" keys for the
 * architectures this build runs ("llama", "qwen3moe"), applies llama.cpp's defaults for
 * absent optional keys, and derives what the forward pass needs: RoPE style and
 * scaling, which layers are MoE (by tensor presence: blk.N.ffn_gate_inp.weight), tied
 * embeddings (output.weight absent). Facts: ../shared/reference/
 * gguf-and-moe-architectures.md section 3. Errors name the key or tensor at fault.
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

typedef enum mdl_arch { MDL_ARCH_LLAMA = 0, MDL_ARCH_QWEN3MOE, MDL_ARCH_COUNT } mdl_arch_t;

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
    bool expert_norm_topk; /* renormalise the top-k softmax weights to sum 1      */

    bool tied_output; /* output.weight absent: logits use token_embd.weight        */
    bool qk_norm;     /* per-head RMSNorm on q and k (qwen3moe)                    */
    uint8_t layer_moe[MDL_MAX_LAYERS]; /* 1: blk.N has an MoE FFN, 0: dense       */
} mdl_hparams_t;

/* "llama" -> MDL_ARCH_LLAMA; -1 when this build does not run the architecture. */
int mdl_arch_from_name(const char *name, size_t len);
const char *mdl_arch_name(mdl_arch_t arch);

/* Reads and validates the hyper-parameters of the model in ctx. */
tdm_status_t mdl_hparams_load(const gguf_ctx_t *ctx, mdl_hparams_t *out, tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
