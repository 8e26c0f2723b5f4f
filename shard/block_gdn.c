/*
 * block_gdn.c - the Gated DeltaNet mixer (qwen3next, qwen35moe "linear attention"
 * layers), on all tokens of the step:
 *
 *   c = W_qkv x  (the conv channels: q of every k head, k of every k head, v of every v
 *       head),  z = W_gate x,  b / a = W_ba x (packed per k head) or W_beta x, W_alpha x
 *   c = silu(causal conv(c))        with the sequence's conv state (its last conv - 1
 *                                   inputs) carried across steps
 *   o = gated delta rule(c, b, a)   with the sequence's state S per v head carried across
 *                                   steps: chunked for a prefill run, recurrent for one
 *                                   token (kern_be_gdn_rule)
 *   y = RMSNorm(o per v head; ssm_norm) * silu(z);  out = W_ssm_out y
 *
 * The state lives in the KV cache's slots (shard/kv_cache.h); each sequence of the step
 * names its slot. Under TP each rank runs its v heads and the k heads they read
 * (shd_model.h): its conv channels, gates, norm rows and ssm_out columns; the outputs are
 * summed over the TP group like attention's. Facts:
 * shared/reference/gguf-and-moe-architectures.md 3.5.
 */
#include "common/check.h"
#include "shard/shd_internal.h"

/* HF's l2norm eps (FLA's default; llama.cpp uses the model's rms eps, 1e-6 as well) */
#define GDN_L2_EPS 1e-6f

tdm_status_t shd_block_gdn(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                           tdm_error_t *err)
{
    const mdl_hparams_t *hp = &m->hp;
    const shd_layer_t *L = &m->layers[il];
    const int64_t n = b->n_tokens, E = hp->n_embd, d = hp->gdn_head_dim;
    /* this rank's heads (all of them unsplit; shd_model.h) */
    const int nk = m->n_gk_l, nv = m->n_gv_l, rr = hp->gdn_v_heads / hp->gdn_k_heads;
    const int64_t ch = (2 * (int64_t)nk + nv) * d, vd = (int64_t)nv * d;
    shd_scratch_t *s = &m->s;
    kern_backend_t *be = m->be;

    /* b and a land in one buffer: packed (qwen3next: per k head rr b's then rr a's) as
     * stored, 2 rr per k head held; or beta in columns [0, nv) and alpha in [nv, 2 nv) */
    const bool packed = L->gdn_ba.data != NULL;
    const int64_t ldba = packed ? 2 * rr * (int64_t)nk : 2 * (int64_t)nv;
    kern_matmul_op_t ops[6] = {{&L->gdn_q, s->xn, E, s->gqkv, ch},
                               {&L->gdn_k, s->xn, E, s->gqkv + nk * d, ch},
                               {&L->gdn_v, s->xn, E, s->gqkv + 2 * nk * d, ch},
                               {&L->gdn_z, s->xn, E, s->gz, vd}};
    int n_ops = 4;
    if (packed) {
        ops[n_ops++] = (kern_matmul_op_t){&L->gdn_ba, s->xn, E, s->gba, ldba};
    } else {
        ops[n_ops++] = (kern_matmul_op_t){&L->gdn_beta, s->xn, E, s->gba, ldba};
        ops[n_ops++] = (kern_matmul_op_t){&L->gdn_alpha, s->xn, E, s->gba + nv, ldba};
    }
    kern_be_matmul(be, n_ops, ops, n);

    const kern_gdn_t g = {
        .n_k_heads = nk,
        .n_v_heads = nv,
        .head_dim = (int)d,
        .conv = hp->gdn_conv,
        .v_tiled = hp->gdn_v_tiled,
        .n_k_all = hp->gdn_k_heads,
        .n_v_all = hp->gdn_v_heads,
        .v_head0 = m->gv_lo,
        .k_head0 = m->gk_lo,
        .eps = GDN_L2_EPS,
        .conv_w = L->gdn_conv_w,
        .a = L->gdn_a,
        .dt_bias = L->gdn_dt_bias,
        .conv_state = shd_kv_state_conv(kv, il),
        .ssm_state = shd_kv_state_ssm(kv, il),
        .n_slots = shd_kv_cache_config(kv)->n_state_slots,
    };
    kern_be_gdn_conv(be, &g, s->gqkv, ch);
    kern_be_gdn_rule(be, &g, s->gqkv, ch, s->gba, ldba, s->gba + (packed ? rr : nv), ldba,
                     packed ? 2 * rr : rr, s->go);
    kern_be_rms_norm_gated(be, s->go, d, s->go, d, L->gdn_norm, s->gz, d, n * nv, d, hp->rms_eps);
    const kern_matmul_op_t out = {&L->gdn_out, s->go, vd, s->proj, E};
    kern_be_matmul(be, 1, &out, n);
    return shd_all_reduce(m, SHD_GROUP_TP, s->proj, n * E, err);
}
