/*
 * qwen3moe.c - the "qwen3moe" architecture (Qwen3-30B-A3B, Qwen3-235B-A22B, Coder):
 *
 *   q, k = per-head RMSNorm(Wq·n1), RMSNorm(Wk·n1) (weights attn_q_norm / attn_k_norm),
 *          then NEOX RoPE over the full head;  h = x + Wo · Attn(q, k, Wv·n1)
 *   out  = h + Σ_top-k w_e · SwiGLU_e(n2),  router softmax over all experts, top-k,
 *          weights renormalised to sum 1 (llama.cpp hard-codes it; HF norm_topk_prob)
 *
 * Layers without a router (HF mlp_only_layers) run a dense SwiGLU FFN.
 */
#include "common/check.h"
#include "shard/shd_internal.h"

static tdm_status_t qwen3moe_check(const mdl_hparams_t *hp, tdm_error_t *err)
{
    if (hp->rope.type != MDL_ROPE_NEOX || !hp->qk_norm || hp->qk_norm_full) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "qwen3moe: needs NEOX rope and q/k norms");
    }
    return TDM_OK;
}

static tdm_status_t qwen3moe_bind_layer(shd_model_t *m, int il, tdm_error_t *err)
{
    return shd_bind_std_layer(m, il, "ffn_norm", err);
}

const shd_arch_ops_t shd_arch_qwen3moe = {
    .arch = MDL_ARCH_QWEN3MOE,
    .check = qwen3moe_check,
    .bind_layer = qwen3moe_bind_layer,
    .forward_layer = shd_std_layer_forward,
};
