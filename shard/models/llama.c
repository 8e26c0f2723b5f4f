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
    return shd_bind_std_layer(m, il, false, err);
}

static tdm_status_t llama_forward_layer(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b,
                                        int il, tdm_error_t *err)
{
    const shd_layer_t *L = &m->layers[il];
    const int64_t n = b->n_tokens;
    shd_norm_input(m, n, L->attn_norm);
    TDM_CHECK(shd_block_attention(m, kv, b, il, err));
    shd_residual_add(m, n);
    shd_norm_input(m, n, L->ffn_norm);
    if (L->is_moe) {
        TDM_CHECK(shd_block_moe(m, n, il, err));
    } else {
        TDM_CHECK(shd_block_ffn(m, n, il, err));
    }
    shd_residual_add(m, n);
    return TDM_OK;
}

const shd_arch_ops_t shd_arch_llama = {
    .arch = MDL_ARCH_LLAMA,
    .check = llama_check,
    .bind_layer = llama_bind_layer,
    .forward_layer = llama_forward_layer,
};
