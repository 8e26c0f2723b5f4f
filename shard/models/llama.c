/*
 * llama.c - the "llama" architecture (Llama 2/3, SmolLM2, ...), and Mixtral-style MoE
 * layers under the same name:
 *
 *   h   = x + Wo · Attn(RoPE_NORM(Wq·n1), RoPE_NORM(Wk·n1), Wv·n1),  n1 = RMSNorm(x)
 *   out = h + FFN(n2),  n2 = RMSNorm(h);  FFN = SwiGLU, or routed SwiGLU experts
 *
 * RoPE pairs adjacent dims because the GGUF converter permuted the q/k rows; optional
 * rope_freqs (llama3) divide the angles. Tied output when output.weight is absent.
 */
#include "common/check.h"
#include "shard/shd_internal.h"

static tdm_status_t llama_check(const mdl_hparams_t *hp, tdm_error_t *err)
{
    if (hp->rope.type != MDL_ROPE_NORM) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "llama: rope type must be NORM");
    }
    return TDM_OK;
}

static tdm_status_t llama_bind_layer(shd_model_t *m, int il, tdm_error_t *err)
{
    return shd_bind_std_layer(m, il, "ffn_norm", err);
}

const shd_arch_ops_t shd_arch_llama = {
    .arch = MDL_ARCH_LLAMA,
    .check = llama_check,
    .bind_layer = llama_bind_layer,
    .forward_layer = shd_std_layer_forward,
};
