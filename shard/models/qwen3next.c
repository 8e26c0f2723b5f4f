/*
 * qwen3next.c - the hybrid linear-attention architectures "qwen3next" (Qwen3-Next,
 * Qwen3-Coder-Next) and "qwen35moe" (Qwen3.5 / 3.6 MoE), one description for both:
 *
 *   n1 = RMSNorm(x; attn_norm)
 *   h  = x + GatedDeltaNet(n1)      on the recurrent layers (hp.layer_recurrent: 3 of 4),
 *      = x + GatedAttention(n1)     on the others: q (with its output gate, interleaved
 *            per head in attn_q), k, v; per-head RMSNorm of q, k; NEOX RoPE on the first
 *            n_rot dims; attention; out = Wo (attn * sigmoid(gate))
 *   n2 = RMSNorm(h; post_attention_norm)
 *   out = h + Σ_top-k w_e SwiGLU_e(n2) + sigmoid(ffn_gate_inp_shexp . n2) SwiGLU_sh(n2)
 *         (softmax router, top-k weights renormalised)
 *
 * What differs between the two is read from the file, not from the name: the GDN sizes
 * and layer pattern (ssm.*, recurrent_layers / full_attention_interval), b / a packed
 * per k head (ssm_ba) or separate (ssm_beta, ssm_alpha); only the V-head order the
 * converter writes (qwen35moe: tiled, hp.gdn_v_tiled) follows the architecture. Every
 * norm but the DeltaNet's ssm_norm is stored as 1 + w by the converter. Facts:
 * shared/reference/gguf-and-moe-architectures.md 3.5 and transformers' qwen3_next /
 * qwen3_5_moe.
 */
#include "common/check.h"
#include "shard/shd_internal.h"

static tdm_status_t hybrid_check(const mdl_hparams_t *hp, tdm_error_t *err)
{
    if (hp->rope.type != MDL_ROPE_NEOX || !hp->qk_norm || !hp->attn_out_gate) {
        return tdm_error_set(err, TDM_ERR_INTERNAL,
                             "%s: needs NEOX rope, q/k norms and the attention output gate",
                             hp->arch_name);
    }
    if (hp->n_recurrent == 0 || hp->gdn_head_dim < 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "%s: no Gated DeltaNet layer", hp->arch_name);
    }
    if (hp->n_recurrent == hp->n_layer) {
        /* blk.0.attn_q_norm is how hparams found the q/k norms; a full-attention layer
         * must exist for them */
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "%s: every layer is recurrent",
                             hp->arch_name);
    }
    return TDM_OK;
}

static tdm_status_t hybrid_bind_layer(shd_model_t *m, int il, tdm_error_t *err)
{
    if (!kern_be_has_gdn(m->be)) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "%s: %s has no Gated DeltaNet kernels yet; run it with --device "
                             "cpu",
                             m->hp.arch_name, kern_be_describe(m->be));
    }
    return shd_bind_std_layer(m, il, "post_attention_norm", err);
}

const shd_arch_ops_t shd_arch_qwen3next = {
    .arch = MDL_ARCH_QWEN3NEXT,
    .check = hybrid_check,
    .bind_layer = hybrid_bind_layer,
    .forward_layer = shd_hybrid_layer_forward,
};

const shd_arch_ops_t shd_arch_qwen35moe = {
    .arch = MDL_ARCH_QWEN35MOE,
    .check = hybrid_check,
    .bind_layer = hybrid_bind_layer,
    .forward_layer = shd_hybrid_layer_forward,
};
