/*
 * cmd_inspect.c - `tandem inspect FILE.gguf [--json] [--no-tensors]`: what a GGUF model
 * holds (architecture, hyper-parameters, tokenizer summary, tensor table) and what it
 * costs (parameters, bytes per type, weight bytes read per generated token).
 *
 * Bytes read per token: every tensor is read once per token except token_embd, of which
 * one row is read (plus the whole matrix again when there is no output.weight, i.e. the
 * embeddings are tied and serve as the output head). For MoE models the expert tensors
 * (blk.N.ffn_*_exps.*) are scaled by <arch>.expert_used_count / <arch>.expert_count in
 * the "per token (top-k experts)" figure; "all weights" counts them fully.
 *
 * The "model" section is the file as Tandem reads it (model/hparams.h, mdl_hparams_load):
 * layers, heads, head dim, experts, gating, RoPE, sliding window and its layers, sinks, q/k
 * norms, biases, tied output; or why this build cannot run it.
 *
 * --json prints one object with every key and value exactly as stored (arrays in full;
 * UINT64 values above 2^63-1 as decimal strings; non-finite floats as "nan"/"inf"/"-inf";
 * string bytes that are not valid UTF-8 replaced by U+FFFD each).
 */
#include "api/cli/cli.h"
#include "model/gguf.h"
#include "model/hparams.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct inspect_totals {
    uint64_t n_params;
    uint64_t file_bytes;
    uint64_t tensor_bytes;
    uint64_t bytes_per_type[TDM_TYPE_COUNT];
    uint64_t n_per_type[TDM_TYPE_COUNT];
    bool moe;
    uint32_t expert_count, expert_used_count;
    bool tied_embeddings;
    uint64_t embd_row_bytes;
    double per_token_all;  /* all experts           */
    double per_token_topk; /* top-k experts          */
    const char *note;      /* why MoE scaling is off */
} inspect_totals_t;

/* ---- helpers ------------------------------------------------------------------------- */

/* True for blk.<N>.ffn_<...>_exps.<...> (MoE expert stacks). */
static bool is_expert_tensor(const char *name)
{
    if (strncmp(name, "blk.", 4) != 0) {
        return false;
    }
    const char *p = name + 4;
    if (*p < '0' || *p > '9') {
        return false;
    }
    while (*p >= '0' && *p <= '9') {
        p++;
    }
    if (strncmp(p, ".ffn_", 5) != 0) {
        return false;
    }
    return strstr(p, "_exps.") != NULL;
}

static void arch_key(char *buf, size_t n, gguf_str_t arch, const char *suffix)
{
    snprintf(buf, n, "%.*s.%s", (int)(arch.len > 64 ? 64 : arch.len), arch.ptr, suffix);
}

static void compute_totals(const gguf_ctx_t *g, inspect_totals_t *t)
{
    memset(t, 0, sizeof(*t));
    for (uint32_t f = 0; f < gguf_n_files(g); f++) {
        t->file_bytes += gguf_file_size(g, f);
    }
    uint64_t n_expert_tensors = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *ti = gguf_tensor_at(g, i);
        uint64_t n_el = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            n_el *= (uint64_t)ti->ne[d];
        }
        t->n_params += n_el;
        t->tensor_bytes += ti->nbytes;
        t->bytes_per_type[ti->type] += ti->nbytes;
        t->n_per_type[ti->type]++;
        n_expert_tensors += is_expert_tensor(ti->name);
    }

    gguf_str_t arch = {"", 0};
    bool have_arch = gguf_get_str(g, "general.architecture", &arch, NULL) == TDM_OK;
    double scale = 1.0;
    if (n_expert_tensors > 0) {
        char k1[128], k2[128];
        arch_key(k1, sizeof(k1), arch, "expert_count");
        arch_key(k2, sizeof(k2), arch, "expert_used_count");
        if (have_arch && gguf_get_u32(g, k1, &t->expert_count, NULL) == TDM_OK &&
            gguf_get_u32(g, k2, &t->expert_used_count, NULL) == TDM_OK && t->expert_count > 0 &&
            t->expert_used_count <= t->expert_count) {
            t->moe = true;
            scale = (double)t->expert_used_count / (double)t->expert_count;
        } else {
            t->note = "expert tensors found but <arch>.expert_count / expert_used_count missing "
                      "or invalid: experts counted in full";
        }
    }

    const gguf_tensor_t *embd = gguf_find_tensor(g, "token_embd.weight");
    t->tied_embeddings = embd != NULL && gguf_find_tensor(g, "output.weight") == NULL;
    double all = 0, topk = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *ti = gguf_tensor_at(g, i);
        if (ti == embd) {
            continue;
        }
        all += (double)ti->nbytes;
        topk += is_expert_tensor(ti->name) ? (double)ti->nbytes * scale : (double)ti->nbytes;
    }
    if (embd != NULL) {
        uint64_t rows = (uint64_t)embd->ne[1] * (uint64_t)embd->ne[2] * (uint64_t)embd->ne[3];
        t->embd_row_bytes = rows > 0 ? embd->nbytes / rows : 0;
        double extra = (double)t->embd_row_bytes;
        if (t->tied_embeddings) {
            extra += (double)embd->nbytes;
        }
        all += extra;
        topk += extra;
    }
    t->per_token_all = all;
    t->per_token_topk = topk;
}

/* ---- the model as Tandem reads it --------------------------------------------------- */

/* The biases a layer 0 tensor name has ("attn_q.bias" ...), as a list for text and JSON. */
static const char *const bias_names[] = {
    "attn_q.bias",      "attn_k.bias",        "attn_v.bias",      "attn_output.bias",
    "ffn_gate.bias",    "ffn_up.bias",        "ffn_down.bias",    "ffn_gate_inp.bias",
    "exp_probs_b.bias", "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias",
};

static bool has_layer0(const gguf_ctx_t *g, const char *suffix)
{
    char name[GGUF_MAX_NAME];
    snprintf(name, sizeof(name), "blk.0.%s", suffix);
    return gguf_find_tensor(g, name) != NULL;
}

static const char *gating_name(const mdl_hparams_t *hp)
{
    switch (hp->expert_gating) {
    case MDL_GATING_SIGMOID:
        return "sigmoid";
    case MDL_GATING_SOFTMAX_SELECTED:
        return "softmax_selected";
    default:
        return "softmax";
    }
}

static const char *qk_norm_name(const mdl_hparams_t *hp)
{
    return !hp->qk_norm ? "none" : hp->qk_norm_full ? "all_heads" : "per_head";
}

static const char *rope_scaling_name(mdl_rope_scaling_t s)
{
    return s == MDL_ROPE_SCALING_YARN ? "yarn" : s == MDL_ROPE_SCALING_LINEAR ? "linear" : "none";
}

static int n_swa_layers(const mdl_hparams_t *hp)
{
    int n = 0;
    for (int il = 0; hp->n_swa > 0 && il < hp->n_layer; il++) {
        n += hp->layer_swa[il] != 0;
    }
    return n;
}

/* The tensors of the multi-token-prediction blocks (blk.n_layer ..) and their bytes. */
static void mtp_tensors(const gguf_ctx_t *g, const mdl_hparams_t *hp, int *n, uint64_t *bytes)
{
    *n = 0;
    *bytes = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        int il = -1;
        if (sscanf(t->name, "blk.%d.", &il) == 1 && il >= hp->n_layer &&
            il < hp->n_layer + hp->n_mtp) {
            (*n)++;
            *bytes += t->nbytes;
        }
    }
}

static void print_model(FILE *out, const gguf_ctx_t *g)
{
    mdl_hparams_t hp;
    tdm_error_t err = {0};
    fputs("\nmodel (as Tandem reads it):\n", out);
    if (mdl_hparams_load(g, &hp, &err) != TDM_OK) {
        fprintf(out, "  this build cannot run it: %s\n", tdm_error_msg(&err));
        return;
    }
    fprintf(out, "  architecture     %s\n", hp.arch_name);
    const int n_swa = n_swa_layers(&hp);
    fprintf(out, "  layers           %d", hp.n_layer);
    if (n_swa > 0) {
        fprintf(out, ": %d in a sliding window of %d tokens (layers", n_swa, hp.n_swa);
        for (int il = 0, k = 0; il < hp.n_layer; il++) {
            if (hp.layer_swa[il] && k++ < 4) {
                fprintf(out, "%s %d", k > 1 ? "," : "", il);
            }
        }
        fprintf(out, "%s), %d over the whole context", n_swa > 4 ? ", ..." : "",
                hp.n_layer - n_swa);
    }
    if (hp.n_recurrent > 0) {
        fprintf(out, ": %d Gated DeltaNet (layers", hp.n_recurrent);
        for (int il = 0, k = 0; il < hp.n_layer; il++) {
            if (hp.layer_recurrent[il] && k++ < 6) {
                fprintf(out, "%s %d", k > 1 ? "," : "", il);
            }
        }
        fprintf(out, "%s), %d gated attention", hp.n_recurrent > 6 ? ", ..." : "",
                hp.n_layer - hp.n_recurrent);
    }
    fprintf(out, "\n  attention        %d q heads / %d kv heads x %d (groups of %d), scale %g",
            hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_head / hp.n_head_kv, (double)hp.attn_scale);
    if (hp.attn_sinks) {
        fputs(", a sink logit per head", out);
    }
    if (hp.attn_out_gate) {
        fputs(", output gate sigmoid(g) per head (in attn_q)", out);
    }
    fputc('\n', out);
    if (hp.n_recurrent > 0) {
        fprintf(out,
                "  gated deltanet   %d q/k heads, %d v heads (%s) x %d, conv %d taps; state "
                "%.2f MiB per sequence (f32: %lld conv + %lld delta-rule floats per layer)\n",
                hp.gdn_k_heads, hp.gdn_v_heads, hp.gdn_v_tiled ? "tiled order" : "grouped order",
                hp.gdn_head_dim, hp.gdn_conv, (double)mdl_hparams_state_bytes(&hp) / 1048576.0,
                (long long)mdl_hparams_gdn_conv_floats(&hp),
                (long long)mdl_hparams_gdn_state_floats(&hp));
    }
    fprintf(out, "  q/k norm         %s\n",
            !hp.qk_norm       ? "none"
            : hp.qk_norm_full ? "RMSNorm over all heads at once (attn_q_norm n_head x head_dim)"
                              : "RMSNorm per head");
    fprintf(out, "  rope             %s on %d of %d dims, base %g",
            hp.rope.type == MDL_ROPE_NEOX ? "NEOX" : "NORM", hp.rope.n_rot, hp.head_dim,
            (double)hp.rope.freq_base);
    if (hp.rope.scaling != MDL_ROPE_SCALING_NONE) {
        fprintf(out, ", %s x%g from %u tokens", rope_scaling_name(hp.rope.scaling),
                (double)(1.0f / hp.rope.freq_scale), hp.rope.n_ctx_orig);
        if (hp.rope.scaling == MDL_ROPE_SCALING_YARN) {
            fprintf(out, " (beta fast %g, slow %g)", (double)hp.rope.beta_fast,
                    (double)hp.rope.beta_slow);
        }
    }
    if (hp.has_rope_freqs) {
        fputs(", per-dim factors (rope_freqs)", out);
    }
    fputc('\n', out);
    if (hp.attn_temp_scale != 0.0f) {
        fprintf(out, "  attn temperature q x (1 + %g ln(1 + floor(pos / %d)))\n",
                (double)hp.attn_temp_scale, hp.attn_temp_floor);
    }
    int n_moe = 0;
    for (int il = 0; il < hp.n_layer; il++) {
        n_moe += hp.layer_moe[il] != 0;
    }
    if (n_moe < hp.n_layer) {
        fprintf(out, "  dense FFN        %d layer%s, width %d\n", hp.n_layer - n_moe,
                hp.n_layer - n_moe == 1 ? "" : "s", hp.n_ff);
    }
    if (n_moe > 0) {
        fprintf(out, "  experts          %d MoE layers: %d experts x %d wide, top %d; ", n_moe,
                hp.n_expert, hp.n_ff_exp, hp.n_expert_used);
        switch (hp.expert_gating) {
        case MDL_GATING_SOFTMAX_SELECTED:
            fputs("router: top k of the logits, softmax over those k", out);
            break;
        case MDL_GATING_SIGMOID:
            fprintf(out, "router: sigmoid%s",
                    has_layer0(g, "exp_probs_b.bias") ? ", chosen by sigmoid + exp_probs_b" : "");
            break;
        default:
            fputs("router: softmax over all experts", out);
            break;
        }
        fprintf(out, "%s; %s\n", hp.expert_norm_topk ? ", weights renormalised" : "",
                hp.expert_oai_act ? "clamped SwiGLU (alpha 1.702, limit 7)" : "SwiGLU");
    }
    if (hp.n_ff_shexp > 0) {
        fprintf(out,
                "  shared expert    SwiGLU %d wide, scaled by sigmoid(ffn_gate_inp_shexp . x)\n",
                hp.n_ff_shexp);
    }
    if (hp.n_mtp > 0) {
        uint64_t bytes = 0;
        int n = 0;
        mtp_tensors(g, &hp, &n, &bytes);
        fprintf(out,
                "  mtp              %d multi-token-prediction block%s (from blk.%d): %d tensors, "
                "%.2f MiB, kept for speculative decoding, not run\n",
                hp.n_mtp, hp.n_mtp == 1 ? "" : "s", hp.n_layer, n, (double)bytes / 1048576.0);
    }
    fputs("  biases           ", out);
    int nb = 0;
    for (size_t i = 0; i < sizeof(bias_names) / sizeof(bias_names[0]); i++) {
        if (has_layer0(g, bias_names[i])) {
            fprintf(out, "%s%s", nb++ ? ", " : "", bias_names[i]);
        }
    }
    fputs(nb ? "\n" : "none\n", out);
    fprintf(out, "  output head      %s\n",
            hp.tied_output ? "tied: token_embd (no output.weight)" : "output.weight");
    fprintf(out, "  context          %d tokens (training), vocab %d\n", hp.n_ctx_train, hp.n_vocab);
}

static json_t *model_json(const gguf_ctx_t *g)
{
    mdl_hparams_t hp;
    tdm_error_t err = {0};
    json_t *j = json_object();
    if (mdl_hparams_load(g, &hp, &err) != TDM_OK) {
        json_object_set_new(j, "supported", json_false());
        json_object_set_new(j, "error", json_string(tdm_error_msg(&err)));
        return j;
    }
    json_object_set_new(j, "supported", json_true());
    json_object_set_new(j, "arch", json_string(hp.arch_name));
    json_object_set_new(j, "n_layer", json_integer(hp.n_layer));
    json_object_set_new(j, "n_embd", json_integer(hp.n_embd));
    json_object_set_new(j, "n_head", json_integer(hp.n_head));
    json_object_set_new(j, "n_head_kv", json_integer(hp.n_head_kv));
    json_object_set_new(j, "head_dim", json_integer(hp.head_dim));
    json_object_set_new(j, "n_ff", json_integer(hp.n_ff));
    json_object_set_new(j, "n_vocab", json_integer(hp.n_vocab));
    json_object_set_new(j, "n_ctx_train", json_integer(hp.n_ctx_train));
    int n_moe = 0;
    for (int il = 0; il < hp.n_layer; il++) {
        n_moe += hp.layer_moe[il] != 0;
    }
    json_object_set_new(j, "n_moe_layers", json_integer(n_moe));
    json_object_set_new(j, "n_expert", json_integer(hp.n_expert));
    json_object_set_new(j, "n_expert_used", json_integer(hp.n_expert_used));
    json_object_set_new(j, "n_ff_exp", json_integer(hp.n_ff_exp));
    json_object_set_new(j, "gating", n_moe > 0 ? json_string(gating_name(&hp)) : json_null());
    json_object_set_new(j, "expert_norm_topk", json_boolean(n_moe > 0 && hp.expert_norm_topk));
    json_object_set_new(j, "expert_oai_act", json_boolean(hp.expert_oai_act));
    json_t *r = json_object();
    json_object_set_new(r, "type", json_string(hp.rope.type == MDL_ROPE_NEOX ? "neox" : "norm"));
    json_object_set_new(r, "n_rot", json_integer(hp.rope.n_rot));
    json_object_set_new(r, "freq_base", json_real(hp.rope.freq_base));
    json_object_set_new(r, "scaling", json_string(rope_scaling_name(hp.rope.scaling)));
    json_object_set_new(r, "factor", json_real(1.0 / (double)hp.rope.freq_scale));
    json_object_set_new(r, "n_ctx_orig", json_integer(hp.rope.n_ctx_orig));
    json_object_set_new(r, "freq_factors", json_boolean(hp.has_rope_freqs));
    json_object_set_new(j, "rope", r);
    const int n_swa = n_swa_layers(&hp);
    json_object_set_new(j, "sliding_window", json_integer(n_swa > 0 ? hp.n_swa : 0));
    json_t *sl = json_array();
    for (int il = 0; n_swa > 0 && il < hp.n_layer; il++) {
        if (hp.layer_swa[il]) {
            json_array_append_new(sl, json_integer(il));
        }
    }
    json_object_set_new(j, "swa_layers", sl);
    json_object_set_new(j, "attn_sinks", json_boolean(hp.attn_sinks));
    json_object_set_new(j, "attn_out_gate", json_boolean(hp.attn_out_gate));
    json_object_set_new(j, "n_ff_shexp", json_integer(hp.n_ff_shexp));
    json_t *rl = json_array();
    for (int il = 0; il < hp.n_layer; il++) {
        if (hp.layer_recurrent[il]) {
            json_array_append_new(rl, json_integer(il));
        }
    }
    json_object_set_new(j, "gdn_layers", rl);
    int n_mtp_t = 0;
    uint64_t mtp_b = 0;
    mtp_tensors(g, &hp, &n_mtp_t, &mtp_b);
    json_object_set_new(j, "n_mtp", json_integer(hp.n_mtp));
    json_object_set_new(j, "mtp_tensors", json_integer(n_mtp_t));
    json_object_set_new(j, "mtp_bytes", json_integer((json_int_t)mtp_b));
    if (hp.n_recurrent > 0) {
        json_t *gd = json_object();
        json_object_set_new(gd, "k_heads", json_integer(hp.gdn_k_heads));
        json_object_set_new(gd, "v_heads", json_integer(hp.gdn_v_heads));
        json_object_set_new(gd, "head_dim", json_integer(hp.gdn_head_dim));
        json_object_set_new(gd, "conv", json_integer(hp.gdn_conv));
        json_object_set_new(gd, "v_tiled", json_boolean(hp.gdn_v_tiled));
        json_object_set_new(gd, "state_bytes",
                            json_integer((json_int_t)mdl_hparams_state_bytes(&hp)));
        json_object_set_new(j, "gdn", gd);
    }
    json_object_set_new(j, "qk_norm", json_string(qk_norm_name(&hp)));
    json_object_set_new(j, "attn_temp_scale", json_real(hp.attn_temp_scale));
    json_object_set_new(j, "tied_output", json_boolean(hp.tied_output));
    json_t *bi = json_array();
    for (size_t i = 0; i < sizeof(bias_names) / sizeof(bias_names[0]); i++) {
        if (has_layer0(g, bias_names[i])) {
            json_array_append_new(bi, json_string(bias_names[i]));
        }
    }
    json_object_set_new(j, "biases", bi);
    return j;
}

/* ---- text output --------------------------------------------------------------------- */

static void print_str(FILE *out, const char *p, uint64_t len, uint64_t max)
{
    fputc('"', out);
    for (uint64_t i = 0; i < len && i < max; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n') {
            fputs("\\n", out);
        } else if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\x%02x", c);
        } else {
            fputc(c, out);
        }
    }
    fputc('"', out);
    if (len > max) {
        fprintf(out, "... (%" PRIu64 " bytes)", len);
    }
}

static void print_scalar(FILE *out, gguf_value_type_t type, const void *p)
{
    switch (type) {
    case GGUF_TYPE_UINT8:
        fprintf(out, "%u", *(const uint8_t *)p);
        break;
    case GGUF_TYPE_INT8:
        fprintf(out, "%d", *(const int8_t *)p);
        break;
    case GGUF_TYPE_UINT16:
        fprintf(out, "%u", *(const uint16_t *)p);
        break;
    case GGUF_TYPE_INT16:
        fprintf(out, "%d", *(const int16_t *)p);
        break;
    case GGUF_TYPE_UINT32:
        fprintf(out, "%" PRIu32, *(const uint32_t *)p);
        break;
    case GGUF_TYPE_INT32:
        fprintf(out, "%" PRId32, *(const int32_t *)p);
        break;
    case GGUF_TYPE_FLOAT32:
        fprintf(out, "%g", *(const float *)p);
        break;
    case GGUF_TYPE_BOOL:
        fputs(*(const uint8_t *)p ? "true" : "false", out);
        break;
    case GGUF_TYPE_UINT64:
        fprintf(out, "%" PRIu64, *(const uint64_t *)p);
        break;
    case GGUF_TYPE_INT64:
        fprintf(out, "%" PRId64, *(const int64_t *)p);
        break;
    case GGUF_TYPE_FLOAT64:
        fprintf(out, "%g", *(const double *)p);
        break;
    default:
        fputs("?", out);
    }
}

static uint32_t elem_size(gguf_value_type_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL:
        return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
        return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
        return 4;
    case GGUF_TYPE_STRING:
        return sizeof(gguf_str_t);
    default:
        return 8;
    }
}

static void print_value(FILE *out, const gguf_value_t *v)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_UINT64:
        fprintf(out, "%" PRIu64, v->v.u64);
        break;
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        fprintf(out, "%" PRId64, v->v.i64);
        break;
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64:
        fprintf(out, "%g", v->v.f64);
        break;
    case GGUF_TYPE_BOOL:
        fputs(v->v.b ? "true" : "false", out);
        break;
    case GGUF_TYPE_STRING:
        print_str(out, v->v.str.ptr, v->v.str.len, 120);
        break;
    case GGUF_TYPE_ARRAY: {
        const uint64_t show = 6;
        fprintf(out, "[%s x %" PRIu64 "] [", gguf_value_type_name(v->v.arr.type), v->v.arr.n);
        const uint8_t *d = v->v.arr.data;
        uint32_t es = elem_size(v->v.arr.type);
        for (uint64_t i = 0; i < v->v.arr.n && i < show; i++) {
            if (i > 0) {
                fputs(", ", out);
            }
            if (v->v.arr.type == GGUF_TYPE_STRING) {
                const gguf_str_t *s = (const gguf_str_t *)d + i;
                print_str(out, s->ptr, s->len, 40);
            } else {
                print_scalar(out, v->v.arr.type, d + i * es);
            }
        }
        fputs(v->v.arr.n > show ? ", ...]" : "]", out);
        break;
    }
    default:
        fputs("?", out);
    }
}

static void human_bytes(char *buf, size_t n, double b)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024.0 && u < 4) {
        b /= 1024.0;
        u++;
    }
    snprintf(buf, n, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
}

/* A special-token id key: prints "name: id 'text'" or nothing when absent. */
static void print_special(FILE *out, const gguf_ctx_t *g, const char *label, const char *key,
                          uint64_t n_tok, const gguf_str_t *toks)
{
    uint32_t id;
    tdm_error_t err;
    tdm_error_clear(&err);
    if (gguf_find(g, key) == NULL) {
        fprintf(out, "  %-16s -\n", label);
        return;
    }
    if (gguf_get_u32(g, key, &id, &err) != TDM_OK) {
        fprintf(out, "  %-16s (bad: %s)\n", label, tdm_error_msg(&err));
        return;
    }
    fprintf(out, "  %-16s %" PRIu32, label, id);
    if (toks != NULL && id < n_tok) {
        fputc(' ', out);
        print_str(out, toks[id].ptr, toks[id].len, 60);
    } else if (toks != NULL) {
        fputs(" (out of vocabulary range)", out);
    }
    fputc('\n', out);
}

static const char *const special_keys[][2] = {
    {"bos", "tokenizer.ggml.bos_token_id"},         {"eos", "tokenizer.ggml.eos_token_id"},
    {"eot", "tokenizer.ggml.eot_token_id"},         {"eom", "tokenizer.ggml.eom_token_id"},
    {"unknown", "tokenizer.ggml.unknown_token_id"}, {"padding", "tokenizer.ggml.padding_token_id"},
};

static void print_text(FILE *out, const gguf_ctx_t *g, bool tensors)
{
    inspect_totals_t t;
    compute_totals(g, &t);
    char hb[64];

    fprintf(out, "file:          %s\n", gguf_path(g, 0));
    if (gguf_n_files(g) > 1) {
        fprintf(out, "split files:   %" PRIu32 "\n", gguf_n_files(g));
        for (uint32_t f = 0; f < gguf_n_files(g); f++) {
            fprintf(out, "  %s (%" PRIu64 " bytes)\n", gguf_path(g, f), gguf_file_size(g, f));
        }
    }
    fprintf(out,
            "gguf version:  %" PRIu32 "  (alignment %" PRIu32 ", %" PRIu64 " keys, %" PRIu64
            " tensors)\n",
            gguf_version(g), gguf_alignment(g, 0), gguf_n_kv(g), gguf_n_tensors(g));
    gguf_str_t arch = {"", 0};
    bool have_arch = gguf_get_str(g, "general.architecture", &arch, NULL) == TDM_OK;
    fputs("architecture:  ", out);
    if (have_arch) {
        print_str(out, arch.ptr, arch.len, 64);
    } else {
        fputs("(no general.architecture)", out);
    }
    fputc('\n', out);

    fputs("\ngeneral:\n", out);
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        if (strncmp(kv->key, "general.", 8) == 0) {
            fprintf(out, "  %-40s ", kv->key);
            print_value(out, &kv->value);
            fputc('\n', out);
        }
    }
    if (have_arch) {
        fprintf(out, "\nhyper-parameters (%.*s.*):\n", (int)(arch.len > 64 ? 64 : arch.len),
                arch.ptr);
        for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
            const gguf_kv_t *kv = gguf_kv_at(g, i);
            if (strlen(kv->key) > arch.len && memcmp(kv->key, arch.ptr, (size_t)arch.len) == 0 &&
                kv->key[arch.len] == '.') {
                fprintf(out, "  %-40s ", kv->key);
                print_value(out, &kv->value);
                fputc('\n', out);
            }
        }
    }
    bool header = false;
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        bool is_arch = have_arch && strlen(kv->key) > arch.len &&
                       memcmp(kv->key, arch.ptr, (size_t)arch.len) == 0 && kv->key[arch.len] == '.';
        if (is_arch || strncmp(kv->key, "general.", 8) == 0 ||
            strncmp(kv->key, "tokenizer.", 10) == 0) {
            continue;
        }
        if (!header) {
            fputs("\nother keys:\n", out);
            header = true;
        }
        fprintf(out, "  %-40s ", kv->key);
        print_value(out, &kv->value);
        fputc('\n', out);
    }

    print_model(out, g);

    fputs("\ntokenizer:\n", out);
    gguf_str_t s;
    fputs("  model            ", out);
    if (gguf_get_str(g, "tokenizer.ggml.model", &s, NULL) == TDM_OK) {
        print_str(out, s.ptr, s.len, 64);
    } else {
        fputs("-", out);
    }
    fputs("\n  pre              ", out);
    if (gguf_get_str(g, "tokenizer.ggml.pre", &s, NULL) == TDM_OK) {
        print_str(out, s.ptr, s.len, 64);
    } else {
        fputs("-", out);
    }
    uint64_t n_tok = 0, n_merges = 0;
    const void *toks = NULL, *merges = NULL;
    bool have_toks =
        gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_tok, &toks, NULL) == TDM_OK;
    bool have_merges = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &n_merges,
                                    &merges, NULL) == TDM_OK;
    fprintf(out, "\n  vocab size       ");
    if (have_toks) {
        fprintf(out, "%" PRIu64 "\n", n_tok);
    } else {
        fputs("- (no tokenizer.ggml.tokens)\n", out);
    }
    fprintf(out, "  merges           ");
    if (have_merges) {
        fprintf(out, "%" PRIu64 "\n", n_merges);
    } else {
        fputs("-\n", out);
    }
    for (size_t i = 0; i < sizeof(special_keys) / sizeof(special_keys[0]); i++) {
        print_special(out, g, special_keys[i][0], special_keys[i][1], n_tok,
                      have_toks ? (const gguf_str_t *)toks : NULL);
    }
    bool b;
    fputs("  add_bos          ", out);
    if (gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, NULL) == TDM_OK) {
        fputs(b ? "true\n" : "false\n", out);
    } else {
        fputs("- (not set)\n", out);
    }
    if (gguf_get_str(g, "tokenizer.chat_template", &s, NULL) == TDM_OK) {
        fprintf(out, "  chat template    yes (%" PRIu64 " bytes)\n", s.len);
    } else {
        fputs("  chat template    no\n", out);
    }

    if (tensors) {
        fprintf(out, "\ntensors:\n  %-40s %-8s %-28s %14s%s\n", "name", "type", "ne", "bytes",
                gguf_n_files(g) > 1 ? "  file" : "");
        for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
            const gguf_tensor_t *ti = gguf_tensor_at(g, i);
            char shape[96];
            size_t o = 0;
            shape[o++] = '[';
            for (uint32_t d = 0; d < ti->n_dims && o < sizeof(shape) - 24; d++) {
                o += (size_t)snprintf(shape + o, sizeof(shape) - o, d ? ", %" PRId64 : "%" PRId64,
                                      ti->ne[d]);
            }
            snprintf(shape + o, sizeof(shape) - o, "]");
            fprintf(out, "  %-40s %-8s %-28s %14" PRIu64, ti->name, tdm_type_name(ti->type), shape,
                    ti->nbytes);
            if (gguf_n_files(g) > 1) {
                fprintf(out, "  %" PRIu32, ti->file_idx + 1);
            }
            fputc('\n', out);
        }
    }

    fputs("\ntotals:\n", out);
    fprintf(out, "  parameters       %" PRIu64 " (%.3f M)\n", t.n_params, (double)t.n_params / 1e6);
    human_bytes(hb, sizeof(hb), (double)t.file_bytes);
    fprintf(out, "  file bytes       %" PRIu64 " (%s)\n", t.file_bytes, hb);
    human_bytes(hb, sizeof(hb), (double)t.tensor_bytes);
    fprintf(out, "  tensor bytes     %" PRIu64 " (%s)\n", t.tensor_bytes, hb);
    fputs("  bytes per type:\n", out);
    for (int ty = 0; ty < TDM_TYPE_COUNT; ty++) {
        if (t.n_per_type[ty] > 0) {
            human_bytes(hb, sizeof(hb), (double)t.bytes_per_type[ty]);
            fprintf(out, "    %-8s %6" PRIu64 " tensors %16" PRIu64 " bytes (%s)\n",
                    tdm_type_name((uint32_t)ty), t.n_per_type[ty], t.bytes_per_type[ty], hb);
        }
    }
    fprintf(out, "  bytes read per token%s:\n",
            t.tied_embeddings ? " (tied embeddings: token_embd also read as the output head)" : "");
    human_bytes(hb, sizeof(hb), t.per_token_all);
    fprintf(out, "    all weights                %.0f (%s)\n", t.per_token_all, hb);
    human_bytes(hb, sizeof(hb), t.per_token_topk);
    if (t.moe) {
        fprintf(out, "    per token (top-%" PRIu32 " of %" PRIu32 " experts) %.0f (%s)\n",
                t.expert_used_count, t.expert_count, t.per_token_topk, hb);
    } else {
        fprintf(out, "    per token (top-k experts)  %.0f (%s)%s\n", t.per_token_topk, hb,
                t.note == NULL ? " (dense model)" : "");
    }
    if (t.note != NULL) {
        fprintf(out, "  note: %s\n", t.note);
    }
}

/* ---- JSON output --------------------------------------------------------------------- */

/* A JSON string from arbitrary bytes: invalid UTF-8 bytes become U+FFFD. */
static json_t *jstr(const char *p, uint64_t len)
{
    json_t *j = json_stringn(p, (size_t)len);
    if (j != NULL) {
        return j;
    }
    char *buf = malloc((size_t)len * 3 + 1);
    if (buf == NULL) {
        return json_null();
    }
    size_t o = 0;
    const unsigned char *s = (const unsigned char *)p;
    for (uint64_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t n = c < 0x80             ? 1
                   : (c & 0xE0) == 0xC0 ? 2
                   : (c & 0xF0) == 0xE0 ? 3
                   : (c & 0xF8) == 0xF0 ? 4
                                        : 0;
        bool ok = n > 0 && i + n <= len;
        for (size_t k = 1; ok && k < n; k++) {
            ok = (s[i + k] & 0xC0) == 0x80;
        }
        if (ok && n > 1) {
            /* reject overlong forms, surrogates and > U+10FFFF as jansson does */
            uint32_t cp = c & (0x7F >> n);
            for (size_t k = 1; k < n; k++) {
                cp = (cp << 6) | (s[i + k] & 0x3F);
            }
            ok = !((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
                   cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF));
        }
        if (ok) {
            memcpy(buf + o, s + i, n);
            o += n;
            i += n;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
        }
    }
    j = json_stringn(buf, o);
    free(buf);
    return j != NULL ? j : json_null();
}

static json_t *jreal(double d)
{
    if (d != d) {
        return json_string("nan");
    }
    if (d - d != 0.0) {
        return json_string(d > 0 ? "inf" : "-inf");
    }
    return json_real(d);
}

static json_t *ju64(uint64_t u)
{
    if (u > (uint64_t)INT64_MAX) {
        char b[32];
        snprintf(b, sizeof(b), "%" PRIu64, u);
        return json_string(b);
    }
    return json_integer((json_int_t)u);
}

static json_t *jscalar(gguf_value_type_t type, const void *p)
{
    switch (type) {
    case GGUF_TYPE_UINT8:
        return json_integer(*(const uint8_t *)p);
    case GGUF_TYPE_INT8:
        return json_integer(*(const int8_t *)p);
    case GGUF_TYPE_UINT16:
        return json_integer(*(const uint16_t *)p);
    case GGUF_TYPE_INT16:
        return json_integer(*(const int16_t *)p);
    case GGUF_TYPE_UINT32:
        return json_integer(*(const uint32_t *)p);
    case GGUF_TYPE_INT32:
        return json_integer(*(const int32_t *)p);
    case GGUF_TYPE_FLOAT32:
        return jreal(*(const float *)p);
    case GGUF_TYPE_BOOL:
        return json_boolean(*(const uint8_t *)p != 0);
    case GGUF_TYPE_UINT64:
        return ju64(*(const uint64_t *)p);
    case GGUF_TYPE_INT64:
        return json_integer(*(const int64_t *)p);
    case GGUF_TYPE_FLOAT64:
        return jreal(*(const double *)p);
    case GGUF_TYPE_STRING: {
        const gguf_str_t *s = p;
        return jstr(s->ptr, s->len);
    }
    default:
        return json_null();
    }
}

static json_t *jvalue(const gguf_value_t *v)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_UINT64:
        return ju64(v->v.u64);
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        return json_integer(v->v.i64);
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64:
        return jreal(v->v.f64);
    case GGUF_TYPE_BOOL:
        return json_boolean(v->v.b);
    case GGUF_TYPE_STRING:
        return jstr(v->v.str.ptr, v->v.str.len);
    case GGUF_TYPE_ARRAY: {
        json_t *a = json_array();
        const uint8_t *d = v->v.arr.data;
        uint32_t es = elem_size(v->v.arr.type);
        for (uint64_t i = 0; i < v->v.arr.n; i++) {
            json_array_append_new(a, jscalar(v->v.arr.type, d + i * es));
        }
        return a;
    }
    default:
        return json_null();
    }
}

static json_t *jspecial(const gguf_ctx_t *g, const char *key, uint64_t n_tok,
                        const gguf_str_t *toks, json_t **text)
{
    uint32_t id;
    *text = json_null();
    if (gguf_get_u32(g, key, &id, NULL) != TDM_OK) {
        return json_null();
    }
    if (toks != NULL && id < n_tok) {
        json_decref(*text);
        *text = jstr(toks[id].ptr, toks[id].len);
    }
    return json_integer(id);
}

static json_t *build_json(const gguf_ctx_t *g, bool tensors)
{
    inspect_totals_t t;
    compute_totals(g, &t);
    json_t *root = json_object();
    json_object_set_new(root, "path", json_string(gguf_path(g, 0)));
    json_object_set_new(root, "version", json_integer(gguf_version(g)));
    json_object_set_new(root, "n_files", json_integer(gguf_n_files(g)));
    json_t *files = json_array();
    for (uint32_t f = 0; f < gguf_n_files(g); f++) {
        json_t *jf = json_object();
        json_object_set_new(jf, "path", json_string(gguf_path(g, f)));
        json_object_set_new(jf, "size", ju64(gguf_file_size(g, f)));
        json_object_set_new(jf, "alignment", json_integer(gguf_alignment(g, f)));
        json_object_set_new(jf, "data_offset", ju64(gguf_data_offset(g, f)));
        json_array_append_new(files, jf);
    }
    json_object_set_new(root, "files", files);
    gguf_str_t arch;
    json_object_set_new(root, "architecture",
                        gguf_get_str(g, "general.architecture", &arch, NULL) == TDM_OK
                            ? jstr(arch.ptr, arch.len)
                            : json_null());

    json_t *meta = json_array();
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        json_t *jk = json_object();
        json_object_set_new(jk, "key", jstr(kv->key, strlen(kv->key)));
        json_object_set_new(jk, "type", json_string(gguf_value_type_name(kv->value.type)));
        if (kv->value.type == GGUF_TYPE_ARRAY) {
            json_object_set_new(jk, "elem_type",
                                json_string(gguf_value_type_name(kv->value.v.arr.type)));
            json_object_set_new(jk, "n", ju64(kv->value.v.arr.n));
        }
        json_object_set_new(jk, "value", jvalue(&kv->value));
        json_array_append_new(meta, jk);
    }
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "model", model_json(g));

    json_t *tok = json_object();
    gguf_str_t s;
    json_object_set_new(tok, "model",
                        gguf_get_str(g, "tokenizer.ggml.model", &s, NULL) == TDM_OK
                            ? jstr(s.ptr, s.len)
                            : json_null());
    json_object_set_new(tok, "pre",
                        gguf_get_str(g, "tokenizer.ggml.pre", &s, NULL) == TDM_OK
                            ? jstr(s.ptr, s.len)
                            : json_null());
    uint64_t n_tok = 0, n_merges = 0;
    const void *toks = NULL, *merges = NULL;
    bool have_toks =
        gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_tok, &toks, NULL) == TDM_OK;
    bool have_merges = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &n_merges,
                                    &merges, NULL) == TDM_OK;
    json_object_set_new(tok, "vocab_size", have_toks ? ju64(n_tok) : json_null());
    json_object_set_new(tok, "merges", have_merges ? ju64(n_merges) : json_null());
    for (size_t i = 0; i < sizeof(special_keys) / sizeof(special_keys[0]); i++) {
        char k[64];
        json_t *text;
        json_t *id = jspecial(g, special_keys[i][1], n_tok,
                              have_toks ? (const gguf_str_t *)toks : NULL, &text);
        snprintf(k, sizeof(k), "%s_id", special_keys[i][0]);
        json_object_set_new(tok, k, id);
        snprintf(k, sizeof(k), "%s_token", special_keys[i][0]);
        json_object_set_new(tok, k, text);
    }
    bool b;
    json_object_set_new(tok, "add_bos",
                        gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, NULL) == TDM_OK
                            ? json_boolean(b)
                            : json_null());
    bool has_tpl = gguf_get_str(g, "tokenizer.chat_template", &s, NULL) == TDM_OK;
    json_object_set_new(tok, "chat_template", json_boolean(has_tpl));
    json_object_set_new(tok, "chat_template_bytes", has_tpl ? ju64(s.len) : json_integer(0));
    json_object_set_new(root, "tokenizer", tok);

    if (tensors) {
        json_t *jt = json_array();
        for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
            const gguf_tensor_t *ti = gguf_tensor_at(g, i);
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(ti->name));
            json_object_set_new(o, "type", json_string(tdm_type_name(ti->type)));
            json_object_set_new(o, "type_id", json_integer(ti->type));
            json_t *ne = json_array();
            for (uint32_t d = 0; d < ti->n_dims; d++) {
                json_array_append_new(ne, json_integer(ti->ne[d]));
            }
            json_object_set_new(o, "ne", ne);
            json_object_set_new(o, "offset", ju64(ti->offset));
            json_object_set_new(o, "nbytes", ju64(ti->nbytes));
            json_object_set_new(o, "file", json_integer(ti->file_idx));
            json_array_append_new(jt, o);
        }
        json_object_set_new(root, "tensors", jt);
    }

    json_t *tot = json_object();
    json_object_set_new(tot, "n_tensors", ju64(gguf_n_tensors(g)));
    json_object_set_new(tot, "n_params", ju64(t.n_params));
    json_object_set_new(tot, "file_bytes", ju64(t.file_bytes));
    json_object_set_new(tot, "tensor_bytes", ju64(t.tensor_bytes));
    json_t *bpt = json_object();
    for (int ty = 0; ty < TDM_TYPE_COUNT; ty++) {
        if (t.n_per_type[ty] > 0) {
            json_object_set_new(bpt, tdm_type_name((uint32_t)ty), ju64(t.bytes_per_type[ty]));
        }
    }
    json_object_set_new(tot, "bytes_per_type", bpt);
    json_t *per = json_object();
    json_object_set_new(per, "all_weights", json_real(t.per_token_all));
    json_object_set_new(per, "top_k_experts", json_real(t.per_token_topk));
    json_object_set_new(per, "moe", json_boolean(t.moe));
    json_object_set_new(per, "expert_count", t.moe ? json_integer(t.expert_count) : json_null());
    json_object_set_new(per, "expert_used_count",
                        t.moe ? json_integer(t.expert_used_count) : json_null());
    json_object_set_new(per, "tied_embeddings", json_boolean(t.tied_embeddings));
    json_object_set_new(per, "embd_row_bytes", ju64(t.embd_row_bytes));
    json_object_set_new(tot, "bytes_per_token", per);
    json_object_set_new(root, "totals", tot);
    return root;
}

/* ---- entry --------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fputs("usage: tandem inspect FILE.gguf [--json] [--no-tensors]\n"
          "  Prints a GGUF model's architecture, hyper-parameters, tokenizer summary, tensors\n"
          "  and sizes. For a split model give the first file (...-00001-of-0000N.gguf).\n"
          "  --json        machine-readable output (every key with its full value)\n"
          "  --no-tensors  leave out the tensor table\n",
          out);
}

int cmd_inspect(int argc, char **argv)
{
    bool json = false, tensors = true;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--no-tensors") == 0) {
            tensors = false;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "tandem inspect: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (path == NULL) {
            path = argv[i];
        } else {
            fprintf(stderr, "tandem inspect: more than one file given ('%s', '%s')\n", path,
                    argv[i]);
            return 2;
        }
    }
    if (path == NULL) {
        usage(stderr);
        return 2;
    }
    gguf_ctx_t *g = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    if (gguf_open(path, &g, &err) != TDM_OK) {
        fprintf(stderr, "tandem inspect: %s\n", tdm_error_msg(&err));
        return 1;
    }
    int rc = 0;
    if (json) {
        json_t *root = build_json(g, tensors);
        if (json_dumpf(root, stdout, JSON_INDENT(1) | JSON_ENSURE_ASCII) != 0) {
            fprintf(stderr, "tandem inspect: cannot write JSON output\n");
            rc = 1;
        }
        fputc('\n', stdout);
        json_decref(root);
    } else {
        print_text(stdout, g, tensors);
    }
    if (fflush(stdout) != 0) {
        rc = 1;
    }
    gguf_close(g);
    return rc;
}
