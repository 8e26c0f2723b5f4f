/*
 * qwen2.c - the "qwen2" architecture (Qwen2.5, Qwen2.5-Coder-32B and their kin):
 *
 *   the llama layer with biases on q, k and v and NEOX RoPE (llama.cpp's converter keeps
 *   HF's q/k row order for qwen2, so the rotation pairs halves, not neighbours);
 *   tied output for the small ones (output.weight absent)
 */
#include "common/check.h"
#include "shard/shd_internal.h"

static tdm_status_t qwen2_check(const mdl_hparams_t *hp, tdm_error_t *err)
{
    if (hp->rope.type != MDL_ROPE_NEOX) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "qwen2: rope type must be NEOX");
    }
    return TDM_OK;
}

static tdm_status_t qwen2_bind_layer(shd_model_t *m, int il, tdm_error_t *err)
{
    return shd_bind_std_layer(m, il, "ffn_norm", err); /* the q/k/v biases: by presence */
}

const shd_arch_ops_t shd_arch_qwen2 = {
    .arch = MDL_ARCH_QWEN2,
    .check = qwen2_check,
    .bind_layer = qwen2_bind_layer,
    .forward_layer = shd_std_layer_forward,
};
