/*
 * minimax_m2.c - the "minimax-m2" architecture (MiniMax-M2, M2.1, M2.5, M2.7):
 *
 *   q = RMSNorm_all(Wq·n1), k = RMSNorm_all(Wk·n1)  over every head at once (weights
 *       attn_q_norm [n_head·hd], attn_k_norm [n_kv·hd]); under TP the sum of squares is
 *       reduced across the ranks before scaling (blocks.c, qk_norm_full)
 *   q, k NEOX RoPE on the first n_rot dims of each head only (64 of 128);  h = x + Wo·Attn
 *   out = h + Σ_top-k w_e · SwiGLU_e(n2):  p = sigmoid(router logits); the top k of
 *         p + exp_probs_b (the correction bias steers the choice only); w = p of the
 *         chosen, divided by their sum
 *
 * GGUF as llama.cpp's converter writes it (expert_gating_func 2, exp_probs_b.bias);
 * facts: shared/reference/gguf-and-moe-architectures.md section 3.3.
 */
#include "common/check.h"
#include "shard/shd_internal.h"

static tdm_status_t minimax_m2_check(const mdl_hparams_t *hp, tdm_error_t *err)
{
    if (hp->rope.type != MDL_ROPE_NEOX || !hp->qk_norm_full) {
        return tdm_error_set(err, TDM_ERR_INTERNAL,
                             "minimax-m2: needs NEOX rope and full q/k norms");
    }
    if (hp->n_expert == 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "minimax-m2: no MoE layer (ffn_gate_inp)");
    }
    return TDM_OK;
}

static tdm_status_t minimax_m2_bind_layer(shd_model_t *m, int il, tdm_error_t *err)
{
    TDM_CHECK(shd_bind_std_layer(m, il, "ffn_norm", err));
    const shd_layer_t *L = &m->layers[il];
    if (L->is_moe && L->exp_probs_b == NULL) {
        return tdm_error_set(err, TDM_ERR_NOT_FOUND,
                             "tensor 'blk.%d.exp_probs_b.bias' is missing (minimax-m2's router "
                             "correction bias)",
                             il);
    }
    return TDM_OK;
}

const shd_arch_ops_t shd_arch_minimax_m2 = {
    .arch = MDL_ARCH_MINIMAX_M2,
    .check = minimax_m2_check,
    .bind_layer = minimax_m2_bind_layer,
    .forward_layer = shd_std_layer_forward,
};
