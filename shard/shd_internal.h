/*
 * shd_internal.h - what shard/ files share privately: the bound model, the arch ops
 * table, the step context and the shared blocks (attention, dense FFN, MoE).
 */
#ifndef TDM_SHD_INTERNAL_H
#define TDM_SHD_INTERNAL_H

#include "shard/forward.h"
#include "shard/shd_model.h"

#include <stddef.h>

/* A stack of 2-D views of a 3-D expert tensor: expert e (local index) is `w` with data
 * advanced by e * stride bytes. */
typedef struct shd_experts {
    kern_weight_t w; /* the view of the first local expert */
    size_t stride;
} shd_experts_t;

/* One layer's bound tensors. Optional ones (biases, norms, sinks) are NULL when absent. */
typedef struct shd_layer {
    const float *attn_norm;       /* [n_embd]                                   */
    kern_weight_t wq, wk, wv;     /* local head rows                            */
    kern_weight_t wo;             /* local head columns, all n_embd rows        */
    const float *bq, *bk, *bv;    /* their biases: local head rows              */
    const float *bo;              /* [n_embd], added once after the reduction   */
    const float *q_norm, *k_norm; /* [head_dim], or local slices of the full-width
                                     norms (hp.qk_norm_full)                    */
    const float *sinks;           /* [n_head_l] sink logits                     */
    int is_swa;                   /* sliding-window layer (hp.n_swa)            */
    const float *ffn_norm;        /* [n_embd] (gpt-oss: post_attention_norm)    */
    int is_moe;
    int exp_lo, n_exp_l;                /* MoE: experts [exp_lo, exp_lo + n_exp_l) held here      */
    kern_weight_t ffn_gate, ffn_up;     /* dense: local rows of n_ff                  */
    kern_weight_t ffn_down;             /* dense: local columns                       */
    const float *ffn_gate_b, *ffn_up_b; /* dense: local rows of the biases        */
    const float *ffn_down_b;            /* dense: [n_embd], after the reduction   */
    kern_weight_t router;               /* MoE: n_expert rows (replicated)        */
    const float *router_b;              /* [n_expert] on the logits               */
    const float *exp_probs_b;           /* [n_expert] steering the choice only    */
    shd_experts_t gate_exps, up_exps, down_exps; /* MoE: local experts, local width */
    /* expert biases, the local experts' whole rows ([n_exp_l, n_ff_exp] for gate/up,
     * [n_exp_l, n_embd] for down) */
    const float *gate_exps_b, *up_exps_b, *down_exps_b;
    /* shared expert (hp.n_ff_shexp > 0): a SwiGLU FFN scaled by sigmoid(shexp_inp . x) */
    kern_weight_t shexp_inp; /* one row                                          */
    kern_weight_t shexp_gate, shexp_up, shexp_down;
    /* Gated DeltaNet layer (hp.layer_recurrent): projections to the conv channels [q | k
     * | v], to z (the output gate) and to the raw b / a gates (packed per k head in
     * ssm_ba, or ssm_beta and ssm_alpha); conv taps, ssm_a, dt bias, the gated norm and
     * the output projection */
    int is_gdn;
    kern_weight_t gdn_q, gdn_k, gdn_v; /* the local heads' rows of attn_qkv */
    kern_weight_t gdn_z, gdn_ba, gdn_beta, gdn_alpha, gdn_out;
    const float *gdn_conv_w, *gdn_a, *gdn_dt_bias, *gdn_norm;
} shd_layer_t;

/* Step scratch: backend memory carved at load, sized for n_batch_max tokens. The buffers
 * a collective reads or writes (ss, proj, lg, lgg) are host-visible when the model is
 * split over ranks and the communicator works on host memory. */
typedef struct shd_scratch {
    float *x;     /* [B, n_embd] residual stream                  */
    float *xn;    /* [B, n_embd] normed input of a block          */
    float *q;     /* [B, n_head_l * hd]                            */
    float *k;     /* [B, n_kv_l * hd]                              */
    float *v;     /* [B, n_kv_l * hd]                              */
    float *attn;  /* [B, n_head_l * hd] attention output           */
    float *proj;  /* [B, n_embd] block output (partial before AR)  */
    float *ff_a;  /* [B, ff_max] gate                              */
    float *ff_b;  /* [B, ff_max] up                                */
    float *rlog;  /* [B, n_expert] router logits, then probabilities */
    int32_t *sel; /* [B, n_expert_used] chosen experts             */
    float *selw;  /* [B, n_expert_used] their weights              */
    float *lx;    /* [n_out_max, n_embd] normed rows for logits    */
    float *qg;    /* [B, n_head_l * 2 hd] q and output gate (hp.attn_out_gate) */
    float *sha;   /* [B, n_ff_shexp] shared expert gate, then its activation */
    float *shb;   /* [B, n_ff_shexp] shared expert up              */
    float *shy;   /* [B, n_embd] shared expert output              */
    float *shg;   /* [B] shared expert gate logit                   */
    float *gqkv;  /* [B, gdn channels] GDN conv input / output      */
    float *gz;    /* [B, v heads * hd] GDN output gate z            */
    float *gba;   /* [B, 2 v heads] GDN raw b and a                 */
    float *go;    /* [B, v heads * hd] GDN rule output, then normed */
    float *hin;   /* [B, n_embd] MTP rows: the hidden states they read (params.mtp) */
    float *ss;    /* [B, 2] q and k sums of squares (full-width norms) */
    float *lg;    /* [n_out_max * n_vocab_l] local logits          */
    float *lgg;   /* [tp * n_out_max * n_vocab_l] gathered logits  */
} shd_scratch_t;

/* One tensor of a multi-token-prediction block (hp.n_mtp), bound whole on every rank and
 * kept for speculative decoding; the forward pass does not read it yet. */
typedef struct shd_mtp_tensor {
    const char *name; /* the GGUF tensor's name (the file's memory)        */
    shd_experts_t e;  /* a matrix (e.w), or a 3-D stack of them            */
    const float *vec; /* a vector (1-D tensors and single rows)            */
} shd_mtp_tensor_t;

typedef struct shd_arch_ops shd_arch_ops_t;

struct shd_model {
    mdl_hparams_t hp;
    shd_model_params_t params;
    shd_layer_hook_fn layer_hook; /* shd_model_set_layer_hook */
    void *layer_hook_ctx;
    const gguf_ctx_t *g;
    kern_backend_t *be;
    const shd_arch_ops_t *arch;

    /* This rank's slice. */
    int head_lo, n_head_l;   /* q heads [head_lo, head_lo + n_head_l)          */
    int kv_lo, n_kv_l;       /* kv heads                                        */
    int ff_lo, n_ff_l;       /* dense FFN columns                               */
    int exp_lo, n_exp_l;     /* experts (default range; layers may differ)      */
    int ffe_lo, n_ffe_l;     /* columns of each expert                          */
    int vocab_lo, n_vocab_l; /* output rows                                     */
    /* Gated DeltaNet heads: v heads [gv_lo, gv_lo + n_gv_l) in runs like the q heads, and
     * the k heads [gk_lo, gk_lo + n_gk_l) they read (all of them when a tiled run wraps) */
    int gv_lo, n_gv_l;
    int gk_lo, n_gk_l;
    /* shared expert columns [shx_lo, shx_lo + n_shx_l) (hp.n_ff_shexp > 0): split over the
     * world ranks in runs of whole quantization blocks; 0 for a rank with none */
    int shx_lo, n_shx_l;
    int world_size;

    kern_weight_t tok_embd;  /* full, for row lookup                            */
    const float *out_norm;   /* [n_embd]                                        */
    kern_weight_t output;    /* local vocab rows (token_embd rows when tied)    */
    const float *rope_freqs; /* [n_rot/2] or NULL                               */
    shd_layer_t *layers;
    shd_mtp_tensor_t *mtp; /* the MTP blocks' tensors (hp.n_mtp > 0)        */
    int n_mtp_tensors;
    /* The MTP block made runnable (params.mtp): its layer is layers[hp.n_layer]; eh_proj
     * split in its embedding half and its hidden half (two products instead of a
     * concatenation); embed and head are the model's when the block has none of its own. */
    bool run_mtp;
    kern_weight_t mtp_eh_e, mtp_eh_h, mtp_embed, mtp_head;
    const float *mtp_enorm, *mtp_hnorm, *mtp_head_norm;

    uint64_t weight_bytes; /* bytes the bound views cover                    */

    float **owned; /* f32 copies of non-f32 norm vectors              */
    int n_owned;
    kern_weight_ref_t *refs; /* every bound view, for the backend's weight store */
    int n_refs, cap_refs;
    void *weights_region; /* the backend's copy of the weights (NULL on the CPU) */
    void *arena;          /* backend memory of the scratch                 */
    void *arena_hv;       /* its host-visible part (NULL when not split)   */
    shd_scratch_t s;
    int32_t *out_idx; /* host: the step's rows that want logits     */
};

/* One architecture: binding its tensors and running one layer. Registered in
 * shard/arch_table.c keyed by mdl_arch_t. */
struct shd_arch_ops {
    mdl_arch_t arch;
    /* Checks arch-specific hyper-parameters (before anything is bound). */
    tdm_status_t (*check)(const mdl_hparams_t *hp, tdm_error_t *err);
    /* Binds blk.il.* into m->layers[il]. */
    tdm_status_t (*bind_layer)(shd_model_t *m, int il, tdm_error_t *err);
    /* x[0..n_tok) <- layer il (x) ; uses m->s scratch. */
    tdm_status_t (*forward_layer)(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                                  tdm_error_t *err);
};

const shd_arch_ops_t *shd_arch_lookup(mdl_arch_t arch);
extern const shd_arch_ops_t shd_arch_llama;
extern const shd_arch_ops_t shd_arch_qwen3moe;
extern const shd_arch_ops_t shd_arch_minimax_m2;
extern const shd_arch_ops_t shd_arch_gpt_oss;
extern const shd_arch_ops_t shd_arch_qwen2;
extern const shd_arch_ops_t shd_arch_mistral3;
extern const shd_arch_ops_t shd_arch_qwen3next;
extern const shd_arch_ops_t shd_arch_qwen35moe;

/* ---- binding helpers (model.c) ---- */

/* A 1-D f32 vector of n elements (converted to f32 when stored otherwise). */
tdm_status_t shd_bind_vec(shd_model_t *m, const char *name, int64_t n, const float **out,
                          tdm_error_t *err);
/* Elements [off, off + n) of the f32 tensor `name` of shape [ne0, ne1] (ne1 = 1 for a
 * vector), flattened; _opt leaves *out NULL when the tensor is absent. */
tdm_status_t shd_bind_f32(shd_model_t *m, const char *name, int64_t ne0, int64_t ne1, int64_t off,
                          int64_t n, const float **out, tdm_error_t *err);
tdm_status_t shd_bind_f32_opt(shd_model_t *m, const char *name, int64_t ne0, int64_t ne1,
                              int64_t off, int64_t n, const float **out, tdm_error_t *err);
/* Rows [r0, r0+nr) and columns [c0, c0+nc) of the 2-D tensor `name` of shape
 * [n_cols, n_rows]; c0 must be on a block boundary. */
tdm_status_t shd_bind_mat(shd_model_t *m, const char *name, int64_t n_cols, int64_t n_rows,
                          int64_t r0, int64_t nr, int64_t c0, int64_t nc, kern_weight_t *out,
                          tdm_error_t *err);
/* Same for experts [e0, e0 + ne) of the 3-D tensor [n_cols, n_rows, n_expert]. */
tdm_status_t shd_bind_experts(shd_model_t *m, const char *name, int64_t n_cols, int64_t n_rows,
                              int64_t n_expert, int64_t e0, int64_t ne, int64_t r0, int64_t nr,
                              int64_t c0, int64_t nc, shd_experts_t *out, tdm_error_t *err);

/* The common layer tensors: attention (norm, q/k/v/o, and what hparams says the model
 * has: biases, q/k norms, sinks), the FFN's input norm blk.il.<ffn_norm>.weight, and the
 * FFN of the layer (dense or MoE, by hp.layer_moe, with any biases). */
tdm_status_t shd_bind_std_layer(shd_model_t *m, int il, const char *ffn_norm, tdm_error_t *err);

/* ---- shared blocks (blocks.c); all on m->s, rows = b->n_tokens ---- */

/* s.xn = RMSNorm(s.x; w). */
void shd_norm_input(shd_model_t *m, int64_t n_tok, const float *w);
/* s.proj = attention(s.xn) of layer il, all-reduced over TP; writes this step's K/V. */
tdm_status_t shd_block_attention(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                                 tdm_error_t *err);
/* s.proj = SwiGLU FFN(s.xn) of layer il, all-reduced over TP. */
tdm_status_t shd_block_ffn(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err);
/* s.proj = MoE(s.xn) of layer il, all-reduced over the world. */
tdm_status_t shd_block_moe(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err);
/* s.x += s.proj. */
void shd_residual_add(shd_model_t *m, int64_t n_tok);
/* s.proj = MoE(s.xn) + sigmoid(shexp_inp . s.xn) * SwiGLU_shexp(s.xn) of layer il, all-reduced
 * over the world (the shared expert counted once: world rank 0 adds it). */
tdm_status_t shd_block_moe_shared(shd_model_t *m, int64_t n_tok, int il, tdm_error_t *err);
/* s.proj = the Gated DeltaNet mixer of layer il on s.xn (block_gdn.c): projections, the
 * causal conv and the delta rule on the sequences' state slots, the gated RMSNorm, the
 * output projection. */
tdm_status_t shd_block_gdn(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                           tdm_error_t *err);
/* Binds blk.il's Gated DeltaNet tensors (model.c) and the shared expert's. */
tdm_status_t shd_bind_gdn(shd_model_t *m, int il, tdm_error_t *err);
tdm_status_t shd_bind_shared_expert(shd_model_t *m, int il, tdm_error_t *err);
/* The hybrid layer (qwen3next, qwen35moe): h = x + (GDN or gated attention)(RMSNorm(x)),
 * x' = h + MoE(n) + shared expert(n), n = RMSNorm(h; post_attention_norm). */
tdm_status_t shd_hybrid_layer_forward(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b,
                                      int il, tdm_error_t *err);

/* The pre-norm layer every architecture here shares:
 *   h = x + Attn(RMSNorm(x; attn_norm)),  x' = h + FFN(RMSNorm(h; ffn_norm))
 * with FFN dense or routed by the layer. */
tdm_status_t shd_std_layer_forward(shd_model_t *m, shd_kv_cache_t *kv, const shd_batch_t *b, int il,
                                   tdm_error_t *err);

/* Sums buf over the group's ranks (shd_comm.h). On a device backend with a communicator
 * of host memory the step's ops are finished first (buf is host-visible memory). */
tdm_status_t shd_all_reduce(shd_model_t *m, shd_group_t g, float *buf, int64_t n, tdm_error_t *err);

#endif
