/*
 * gpt_oss.c - the "gpt-oss" architecture (gpt-oss-20b, gpt-oss-120b; llama.cpp's
 * OPENAI_MOE):
 *
 *   q, k, v = W·n1 + b;  YaRN NEOX RoPE;  attention with a learned sink logit per head in
 *             the softmax denominator, in a sliding window of n_swa (128) positions on
 *             the even layers and over everything on the odd ones;  h = x + Wo·Attn + bo
 *   n2  = RMSNorm(h; post_attention_norm)
 *   out = h + Σ_top-k w_e · (Wd_e·act(Wg_e·n2 + bg_e, Wu_e·n2 + bu_e) + bd_e):  the top k
 *         of the router's logits (+ bias), w = softmax over those k; act the clamped
 *         SwiGLU g'·σ(1.702 g')·(u' + 1), g' = min(g, 7), u' = clamp(u, -7, 7)
 *
 * Expert weights are MXFP4 in the released files. YaRN's correction range is floored and
 * ceiled as in llama.cpp (HF's config says truncate: false, a difference of a fraction of
 * a dim in the ramp; users' files are made for llama.cpp). Facts: shared/reference/
 * gguf-and-moe-architectures.md section 3.4.
 */
#include "common/check.h"
#include "shard/shd_internal.h"

static tdm_status_t gpt_oss_check(const mdl_hparams_t *hp, tdm_error_t *err)
{
    if (hp->rope.type != MDL_ROPE_NEOX || !hp->attn_sinks || hp->n_swa <= 0) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "gpt-oss: needs NEOX rope, sinks, a window");
    }
    for (int il = 0; il < hp->n_layer; il++) {
        if (!hp->layer_moe[il]) {
            return tdm_error_set(err, TDM_ERR_NOT_FOUND,
                                 "tensor 'blk.%d.ffn_gate_inp.weight' is missing (every gpt-oss "
                                 "layer is MoE)",
                                 il);
        }
    }
    return TDM_OK;
}

static tdm_status_t gpt_oss_bind_layer(shd_model_t *m, int il, tdm_error_t *err)
{
    TDM_CHECK(shd_bind_std_layer(m, il, "post_attention_norm", err));
    const shd_layer_t *L = &m->layers[il];
    /* llama.cpp requires every bias; a file without them is not a gpt-oss model */
    const bool experts = L->n_exp_l > 0;
    const struct {
        bool ok;
        const char *name;
    } need[] = {
        {L->bq != NULL, "attn_q.bias"},
        {L->bk != NULL, "attn_k.bias"},
        {L->bv != NULL, "attn_v.bias"},
        {L->bo != NULL, "attn_output.bias"},
        {L->router_b != NULL, "ffn_gate_inp.bias"},
        {!experts || L->gate_exps_b != NULL, "ffn_gate_exps.bias"},
        {!experts || L->up_exps_b != NULL, "ffn_up_exps.bias"},
        {!experts || L->down_exps_b != NULL, "ffn_down_exps.bias"},
    };
    for (size_t i = 0; i < TDM_ARRAY_SIZE(need); i++) {
        if (!need[i].ok) {
            return tdm_error_set(err, TDM_ERR_NOT_FOUND, "tensor 'blk.%d.%s' is missing", il,
                                 need[i].name);
        }
    }
    return TDM_OK;
}

const shd_arch_ops_t shd_arch_gpt_oss = {
    .arch = MDL_ARCH_GPT_OSS,
    .check = gpt_oss_check,
    .bind_layer = gpt_oss_bind_layer,
    .forward_layer = shd_std_layer_forward,
};
