/*
 * mistral3.c - the "mistral3" architecture (Devstral Small 2, Devstral 2 and Ministral 3
 * text models):
 *
 *   the llama layer (adjacent-pair RoPE on converter-permuted q/k rows) with YaRN scaling
 *   and, when <arch>.attention.temperature_scale is set, Llama 4's attention temperature:
 *   a query at position p has its scores scaled by 1 + β·ln(1 + ⌊p / n_ctx_orig⌋), which
 *   keeps attention sharp past the original context
 */
#include "common/check.h"
#include "shard/shd_internal.h"

static tdm_status_t mistral3_check(const mdl_hparams_t *hp, tdm_error_t *err)
{
    if (hp->rope.type != MDL_ROPE_NORM) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "mistral3: rope type must be NORM");
    }
    return TDM_OK;
}

static tdm_status_t mistral3_bind_layer(shd_model_t *m, int il, tdm_error_t *err)
{
    return shd_bind_std_layer(m, il, "ffn_norm", err);
}

const shd_arch_ops_t shd_arch_mistral3 = {
    .arch = MDL_ARCH_MISTRAL3,
    .check = mistral3_check,
    .bind_layer = mistral3_bind_layer,
    .forward_layer = shd_std_layer_forward,
};
