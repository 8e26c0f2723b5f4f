/*
 * hparams.c - mdl_hparams_t from GGUF metadata ("<arch>.*" keys) and tensor presence.
 *
 * Defaults follow llama.cpp's loader for the keys it treats as optional; everything the
 * forward pass cannot guess (sizes, eps) is required and its absence is an error that
 * names the key.
 */
#include "model/hparams.h"

#include "common/check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const arch_names[MDL_ARCH_COUNT] = {
    [MDL_ARCH_LLAMA] = "llama",           [MDL_ARCH_QWEN3MOE] = "qwen3moe",
    [MDL_ARCH_MINIMAX_M2] = "minimax-m2", [MDL_ARCH_GPT_OSS] = "gpt-oss",
    [MDL_ARCH_QWEN2] = "qwen2",           [MDL_ARCH_MISTRAL3] = "mistral3",
    [MDL_ARCH_QWEN3NEXT] = "qwen3next",   [MDL_ARCH_QWEN35MOE] = "qwen35moe",
};

#define ARCH_LIST "llama, qwen3moe, minimax-m2, gpt-oss, qwen2, mistral3, qwen3next, qwen35moe"

int mdl_arch_from_name(const char *name, size_t len)
{
    for (int a = 0; a < MDL_ARCH_COUNT; a++) {
        if (strlen(arch_names[a]) == len && memcmp(arch_names[a], name, len) == 0) {
            return a;
        }
    }
    return -1;
}

const char *mdl_arch_name(mdl_arch_t arch)
{
    return (unsigned)arch < MDL_ARCH_COUNT ? arch_names[arch] : "unknown";
}

/* Builds "<arch>.<suffix>" into buf. */
static const char *key_of(char *buf, size_t size, const mdl_hparams_t *hp, const char *suffix)
{
    snprintf(buf, size, "%s.%s", hp->arch_name, suffix);
    return buf;
}

static int64_t arr_int_at(const gguf_value_t *v, uint64_t i, bool *ok)
{
    const unsigned char *p = v->v.arr.data;
    *ok = true;
    switch (v->v.arr.type) {
    case GGUF_TYPE_UINT8:
        return ((const uint8_t *)p)[i];
    case GGUF_TYPE_INT8:
        return ((const int8_t *)p)[i];
    case GGUF_TYPE_UINT16: {
        uint16_t x;
        memcpy(&x, p + 2 * i, 2);
        return x;
    }
    case GGUF_TYPE_INT16: {
        int16_t x;
        memcpy(&x, p + 2 * i, 2);
        return x;
    }
    case GGUF_TYPE_UINT32: {
        uint32_t x;
        memcpy(&x, p + 4 * i, 4);
        return x;
    }
    case GGUF_TYPE_INT32: {
        int32_t x;
        memcpy(&x, p + 4 * i, 4);
        return x;
    }
    case GGUF_TYPE_UINT64: {
        uint64_t x;
        memcpy(&x, p + 8 * i, 8);
        return (int64_t)x;
    }
    case GGUF_TYPE_INT64: {
        int64_t x;
        memcpy(&x, p + 8 * i, 8);
        return x;
    }
    default:
        *ok = false;
        return 0;
    }
}

/*
 * A per-model count that llama.cpp also accepts as a per-layer array. This build runs
 * uniform models only: an array must hold one value throughout. `dflt` < 0: required.
 */
static tdm_status_t get_count(const gguf_ctx_t *ctx, const char *key, int64_t dflt, int *out,
                              tdm_error_t *err)
{
    const gguf_value_t *v = gguf_find(ctx, key);
    if (v == NULL) {
        if (dflt < 0) {
            return tdm_error_set(err, TDM_ERR_NOT_FOUND, "metadata key '%s' is missing", key);
        }
        *out = (int)dflt;
        return TDM_OK;
    }
    int64_t val;
    if (v->type == GGUF_TYPE_ARRAY) {
        if (v->v.arr.n == 0) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s' is an empty array", key);
        }
        bool ok;
        val = arr_int_at(v, 0, &ok);
        for (uint64_t i = 1; ok && i < v->v.arr.n; i++) {
            if (arr_int_at(v, i, &ok) != val && ok) {
                return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                     "metadata key '%s': per-layer values differ (layer 0: %lld, "
                                     "layer %llu: %lld); only uniform models are supported",
                                     key, (long long)val, (unsigned long long)i,
                                     (long long)arr_int_at(v, i, &ok));
            }
        }
        if (!ok) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "metadata key '%s': array of %s, expected "
                                 "integers",
                                 key, gguf_value_type_name(v->v.arr.type));
        }
    } else {
        TDM_CHECK(gguf_get_i64(ctx, key, &val, err));
    }
    if (val < 0 || val > (1 << 30)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': value %lld out of range", key,
                             (long long)val);
    }
    *out = (int)val;
    return TDM_OK;
}

static tdm_status_t load_rope(const gguf_ctx_t *ctx, mdl_hparams_t *hp, tdm_error_t *err)
{
    char key[128];
    mdl_rope_params_t *r = &hp->rope;
    /* llama.cpp's llama_model_rope_type: the converter permutes llama's and mistral3's
     * q/k rows for adjacent pairs; the others keep HF's halves */
    const bool norm_rope = hp->arch == MDL_ARCH_LLAMA || hp->arch == MDL_ARCH_MISTRAL3;
    r->type = norm_rope ? MDL_ROPE_NORM : MDL_ROPE_NEOX;
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), hp, "rope.dimension_count"), hp->head_dim,
                        &r->n_rot, err));
    if (r->n_rot <= 0 || r->n_rot > hp->head_dim || r->n_rot % 2 != 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "metadata key '%s': %d rotated dims with head "
                             "dim %d (must be even and at most the head dim)",
                             key, r->n_rot, hp->head_dim);
    }
    if (norm_rope && r->n_rot != hp->head_dim) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "metadata key '%s': %s needs rope dims (%d) "
                             "== head dim (%d)",
                             key, hp->arch_name, r->n_rot, hp->head_dim);
    }
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.freq_base"), 10000.0f,
                              &r->freq_base, err));
    if (!(r->freq_base > 1.0f) || !isfinite(r->freq_base)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': invalid value %g", key,
                             (double)r->freq_base);
    }

    /* Scaling: "<arch>.rope.scaling.type" (default linear) with "...factor"; the older
     * "<arch>.rope.scale_linear" is a linear factor. A factor of 0 or 1 means none. */
    float factor = 1.0f;
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.scale_linear"), 1.0f, &factor,
                              err));
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.scaling.factor"), factor,
                              &factor, err));
    if (factor == 0.0f) {
        factor = 1.0f;
    }
    if (!(factor > 0.0f) || !isfinite(factor)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': invalid factor %g", key,
                             (double)factor);
    }
    r->scaling = factor == 1.0f ? MDL_ROPE_SCALING_NONE : MDL_ROPE_SCALING_LINEAR;
    const gguf_value_t *st = gguf_find(ctx, key_of(key, sizeof(key), hp, "rope.scaling.type"));
    if (st != NULL) {
        gguf_str_t s;
        TDM_CHECK(gguf_get_str(ctx, key, &s, err));
        if (s.len == 4 && memcmp(s.ptr, "none", 4) == 0) {
            r->scaling = MDL_ROPE_SCALING_NONE;
            factor = 1.0f;
        } else if (s.len == 6 && memcmp(s.ptr, "linear", 6) == 0) {
            /* as set above */
        } else if (s.len == 4 && memcmp(s.ptr, "yarn", 4) == 0) {
            r->scaling = MDL_ROPE_SCALING_YARN;
        } else {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "metadata key '%s': rope scaling "
                                 "'%.*s' is not supported (none, linear, yarn)",
                                 key, (int)s.len, s.ptr);
        }
    }
    r->freq_scale = 1.0f / factor;
    r->ext_factor = r->scaling == MDL_ROPE_SCALING_YARN ? 1.0f : 0.0f;
    /* llama.cpp: the YaRN magnitude correction 1 + 0.1 ln(factor) is applied inside rope
     * (ggml) and the context's attn_factor is 1 times rope.scaling.attn_factor; with a
     * log multiplier (HF mscale_all_dim, Mistral 3) the context divides by its mscale,
     * 1 + 0.1 * mul * ln(factor), so that cos/sin carry mscale(1) / mscale(mul). */
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.scaling.attn_factor"), 1.0f,
                              &r->attn_factor, err));
    float log_mul = 0.0f;
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.scaling.yarn_log_multiplier"),
                              0.0f, &log_mul, err));
    if (r->scaling == MDL_ROPE_SCALING_YARN && log_mul != 0.0f && factor > 1.0f) {
        r->attn_factor /= 0.1f * log_mul * logf(factor) + 1.0f;
    }
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.scaling.yarn_beta_fast"),
                              32.0f, &r->beta_fast, err));
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.scaling.yarn_beta_slow"),
                              1.0f, &r->beta_slow, err));
    if (!(r->beta_fast > 0.0f) || !(r->beta_slow > 0.0f)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "%s: YaRN beta_fast %g / beta_slow %g",
                             hp->arch_name, (double)r->beta_fast, (double)r->beta_slow);
    }
    TDM_CHECK(gguf_get_u32_or(ctx,
                              key_of(key, sizeof(key), hp, "rope.scaling.original_context_length"),
                              (uint32_t)hp->n_ctx_train, &r->n_ctx_orig, err));
    if (r->n_ctx_orig == 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "%s: original context length 0", hp->arch_name);
    }
    hp->has_rope_freqs = gguf_find_tensor(ctx, "rope_freqs.weight") != NULL;
    hp->rope_freq_base_swa = r->freq_base;
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), hp, "rope.freq_base_swa"), r->freq_base,
                              &hp->rope_freq_base_swa, err));
    if (!(hp->rope_freq_base_swa > 1.0f) || !isfinite(hp->rope_freq_base_swa)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': invalid value %g", key,
                             (double)hp->rope_freq_base_swa);
    }
    return TDM_OK;
}

/* Which layers attend in a sliding window: "<arch>.attention.sliding_window_pattern" as a
 * per-layer bool array, or a period n (layer il slides when il % n < n - 1; llama.cpp's
 * set_swa_pattern), default `period`. */
static tdm_status_t load_swa(const gguf_ctx_t *ctx, mdl_hparams_t *hp, uint32_t period,
                             tdm_error_t *err)
{
    char key[128];
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), hp, "attention.sliding_window"), -1,
                        &hp->n_swa, err));
    if (hp->n_swa < 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': window %d", key, hp->n_swa);
    }
    const gguf_value_t *v =
        gguf_find(ctx, key_of(key, sizeof(key), hp, "attention.sliding_window_pattern"));
    if (v != NULL && v->type == GGUF_TYPE_ARRAY) {
        if (v->v.arr.type != GGUF_TYPE_BOOL || v->v.arr.n < (uint64_t)hp->n_layer) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "metadata key '%s': expected %d bools, one per layer", key,
                                 hp->n_layer);
        }
        const uint8_t *b = v->v.arr.data;
        for (int il = 0; il < hp->n_layer; il++) {
            hp->layer_swa[il] = b[il] != 0;
        }
        return TDM_OK;
    }
    if (v != NULL) {
        TDM_CHECK(gguf_get_u32_or(ctx, key, period, &period, err));
    }
    for (int il = 0; il < hp->n_layer; il++) {
        hp->layer_swa[il] = period == 0 || (uint32_t)il % period < period - 1;
    }
    return TDM_OK;
}

/* The router's gating and weight normalisation, as llama.cpp's graph for each
 * architecture builds it. */
static tdm_status_t load_gating(const gguf_ctx_t *ctx, mdl_hparams_t *hp, tdm_error_t *err)
{
    char key[128];
    hp->expert_weights_scale = 0.0f; /* none of these architectures' graphs reads it */
    switch (hp->arch) {
    case MDL_ARCH_GPT_OSS:
        /* top-k of the raw logits, softmax over them, no renormalisation; clamped SwiGLU */
        hp->expert_gating = MDL_GATING_SOFTMAX_SELECTED;
        hp->expert_norm_topk = false;
        hp->expert_oai_act = true;
        return TDM_OK;
    case MDL_ARCH_MINIMAX_M2:
        hp->expert_norm_topk = true; /* hard-coded in llama.cpp's graph */
        break;
    default:
        /* qwen3moe and Mixtral renormalise in llama.cpp (HF Qwen3-MoE releases set
         * norm_topk_prob = true); a file that says otherwise is honoured */
        TDM_CHECK(gguf_get_bool_or(ctx, key_of(key, sizeof(key), hp, "expert_weights_norm"), true,
                                   &hp->expert_norm_topk, err));
        break;
    }
    /* minimax-m2's converter writes 2 (sigmoid); read it, defaulting by architecture */
    const uint32_t dflt = hp->arch == MDL_ARCH_MINIMAX_M2 ? MDL_GATING_SIGMOID : MDL_GATING_SOFTMAX;
    uint32_t gating = dflt;
    TDM_CHECK(gguf_get_u32_or(ctx, key_of(key, sizeof(key), hp, "expert_gating_func"), dflt,
                              &gating, err));
    if (gating != MDL_GATING_SOFTMAX && gating != MDL_GATING_SIGMOID) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "metadata key '%s': gating function %u is not supported (1 "
                             "softmax, 2 sigmoid)",
                             key, gating);
    }
    hp->expert_gating = (mdl_gating_t)gating;
    return TDM_OK;
}

static tdm_status_t load_layers(const gguf_ctx_t *ctx, mdl_hparams_t *hp, tdm_error_t *err)
{
    char key[128];
    int n_moe = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        char name[GGUF_MAX_NAME];
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_inp.weight", il);
        hp->layer_moe[il] = gguf_find_tensor(ctx, name) != NULL;
        n_moe += hp->layer_moe[il];
    }
    if (n_moe > 0) {
        TDM_CHECK(
            get_count(ctx, key_of(key, sizeof(key), hp, "expert_count"), -1, &hp->n_expert, err));
        TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), hp, "expert_used_count"), -1,
                            &hp->n_expert_used, err));
        if (hp->n_expert < 1 || hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': %d experts used of %d",
                                 key, hp->n_expert_used, hp->n_expert);
        }
        /* llama (Mixtral-style) MoE uses feed_forward_length as the expert width. */
        TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), hp, "expert_feed_forward_length"),
                            hp->arch == MDL_ARCH_LLAMA ? hp->n_ff : -1, &hp->n_ff_exp, err));
        if (hp->n_ff_exp <= 0) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': expert width %d", key,
                                 hp->n_ff_exp);
        }
        if (hp->n_expert > MDL_MAX_EXPERTS) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "%s: %d experts (at most %d)",
                                 hp->arch_name, hp->n_expert, MDL_MAX_EXPERTS);
        }
        TDM_CHECK(load_gating(ctx, hp, err));
    }
    if (n_moe < hp->n_layer && hp->n_ff <= 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "metadata key '%s.feed_forward_length': "
                             "missing or 0 but the model has dense FFN layers",
                             hp->arch_name);
    }
    return TDM_OK;
}

/* The hybrid Qwen models (qwen3next, qwen35moe; llama.cpp's load_arch_hparams): which
 * layers are Gated DeltaNet, their sizes, the gated attention and the shared expert.
 * Their rope is NEOX on the first rope.dimension_count dims (qwen35moe's interleaved
 * M-RoPE rotates the same pairs by the same angles when the three position components
 * are equal, as they are for text). */
static tdm_status_t load_hybrid(const gguf_ctx_t *ctx, mdl_hparams_t *hp, tdm_error_t *err)
{
    char key[128];
    hp->attn_out_gate = true;
    hp->qk_norm = true; /* on the attention layers (blk.0 is a DeltaNet layer) */
    hp->gdn_v_tiled = hp->arch == MDL_ARCH_QWEN35MOE;
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), hp, "expert_shared_feed_forward_length"), 0,
                        &hp->n_ff_shexp, err));
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), hp, "ssm.conv_kernel"), -1, &hp->gdn_conv, err));
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), hp, "ssm.state_size"), -1, &hp->gdn_head_dim, err));
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), hp, "ssm.group_count"), -1, &hp->gdn_k_heads, err));
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), hp, "ssm.time_step_rank"), -1,
                        &hp->gdn_v_heads, err));
    int inner = 0;
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), hp, "ssm.inner_size"), -1, &inner, err));
    /* bounded so that every size derived from them fits (state, scratch, channels) */
    if (hp->gdn_conv < 1 || hp->gdn_conv > 16 || hp->gdn_head_dim < 1 || hp->gdn_head_dim > 4096 ||
        hp->gdn_k_heads < 1 || hp->gdn_v_heads < 1 || hp->gdn_v_heads > 65536 ||
        hp->gdn_v_heads % hp->gdn_k_heads != 0 ||
        (int64_t)inner != (int64_t)hp->gdn_v_heads * hp->gdn_head_dim) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: Gated DeltaNet sizes: conv %d taps, %d k heads, %d v heads of "
                             "%d, inner size %d (v heads must be a multiple of k heads, inner = "
                             "v heads x state size, conv 1..16, state size <= 4096, v heads <= "
                             "65536)",
                             hp->arch_name, hp->gdn_conv, hp->gdn_k_heads, hp->gdn_v_heads,
                             hp->gdn_head_dim, inner);
    }
    const gguf_value_t *v =
        gguf_find(ctx, key_of(key, sizeof(key), hp, "attention.recurrent_layers"));
    if (v != NULL) {
        if (v->type != GGUF_TYPE_ARRAY || v->v.arr.type != GGUF_TYPE_BOOL ||
            v->v.arr.n < (uint64_t)hp->n_layer) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "metadata key '%s': expected %d bools, one per layer", key,
                                 hp->n_layer);
        }
        const uint8_t *b = v->v.arr.data;
        for (int il = 0; il < hp->n_layer; il++) {
            hp->layer_recurrent[il] = b[il] != 0;
        }
    } else {
        uint32_t interval = 4;
        TDM_CHECK(gguf_get_u32_or(ctx, key_of(key, sizeof(key), hp, "full_attention_interval"), 4,
                                  &interval, err));
        if (interval == 0) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': 0", key);
        }
        for (int il = 0; il < hp->n_layer; il++) {
            hp->layer_recurrent[il] = ((uint32_t)il + 1) % interval != 0;
        }
    }
    for (int il = 0; il < hp->n_layer; il++) {
        hp->n_recurrent += hp->layer_recurrent[il];
    }
    return TDM_OK;
}

int64_t mdl_hparams_gdn_conv_floats(const mdl_hparams_t *hp)
{
    const int64_t ch = (2 * (int64_t)hp->gdn_k_heads + hp->gdn_v_heads) * hp->gdn_head_dim;
    return hp->n_recurrent > 0 ? (int64_t)(hp->gdn_conv - 1) * ch : 0;
}

int64_t mdl_hparams_gdn_state_floats(const mdl_hparams_t *hp)
{
    return hp->n_recurrent > 0 ? (int64_t)hp->gdn_v_heads * hp->gdn_head_dim * hp->gdn_head_dim : 0;
}

uint64_t mdl_hparams_state_bytes(const mdl_hparams_t *hp)
{
    return (uint64_t)hp->n_recurrent *
           (uint64_t)(mdl_hparams_gdn_conv_floats(hp) + mdl_hparams_gdn_state_floats(hp)) *
           sizeof(float);
}

tdm_status_t mdl_hparams_load(const gguf_ctx_t *ctx, mdl_hparams_t *out, tdm_error_t *err)
{
    mdl_hparams_t hp;
    memset(&hp, 0, sizeof(hp));
    char key[128];

    gguf_str_t arch;
    TDM_CHECK(gguf_get_str(ctx, "general.architecture", &arch, err));
    int a = mdl_arch_from_name(arch.ptr, arch.len);
    if (a < 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "general.architecture '%.*s' is not supported (" ARCH_LIST ")",
                             (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    }
    hp.arch = (mdl_arch_t)a;
    snprintf(hp.arch_name, sizeof(hp.arch_name), "%s", arch_names[a]);

    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), &hp, "block_count"), -1, &hp.n_layer, err));
    if (hp.n_layer < 1 || hp.n_layer > MDL_MAX_LAYERS) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': %d layers (1..%d)", key,
                             hp.n_layer, MDL_MAX_LAYERS);
    }
    /* multi-token-prediction blocks follow the trunk (llama.cpp: n_layer() = block_count -
     * nextn_predict_layers) */
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), &hp, "nextn_predict_layers"), 0, &hp.n_mtp, err));
    if (hp.n_mtp >= hp.n_layer) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': %d of %d blocks", key,
                             hp.n_mtp, hp.n_layer);
    }
    hp.n_layer -= hp.n_mtp;
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), &hp, "embedding_length"), -1, &hp.n_embd, err));
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), &hp, "attention.head_count"), -1, &hp.n_head, err));
    if (hp.n_embd < 1 || hp.n_head < 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: embedding_length %d / head_count %d "
                             "must be positive",
                             hp.arch_name, hp.n_embd, hp.n_head);
    }
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), &hp, "attention.head_count_kv"), hp.n_head,
                        &hp.n_head_kv, err));
    if (hp.n_head_kv < 1 || hp.n_head % hp.n_head_kv != 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "metadata key '%s': %d kv heads do not divide "
                             "%d heads",
                             key, hp.n_head_kv, hp.n_head);
    }
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), &hp, "attention.key_length"),
                        hp.n_embd % hp.n_head == 0 ? hp.n_embd / hp.n_head : -1, &hp.head_dim,
                        err));
    TDM_CHECK(get_count(ctx, key_of(key, sizeof(key), &hp, "attention.value_length"), hp.head_dim,
                        &hp.head_dim_v, err));
    if (hp.head_dim < 2 || hp.head_dim_v != hp.head_dim) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "%s: key length %d / value length %d "
                             "(must be equal and >= 2)",
                             hp.arch_name, hp.head_dim, hp.head_dim_v);
    }
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), &hp, "feed_forward_length"), 0, &hp.n_ff, err));
    TDM_CHECK(
        get_count(ctx, key_of(key, sizeof(key), &hp, "context_length"), -1, &hp.n_ctx_train, err));
    TDM_CHECK(gguf_get_f32(ctx, key_of(key, sizeof(key), &hp, "attention.layer_norm_rms_epsilon"),
                           &hp.rms_eps, err));
    if (!(hp.rms_eps > 0.0f) || !(hp.rms_eps < 1.0f)) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': invalid eps %g", key,
                             (double)hp.rms_eps);
    }
    hp.attn_scale = 1.0f / sqrtf((float)hp.head_dim);
    TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), &hp, "attention.scale"), hp.attn_scale,
                              &hp.attn_scale, err));

    const gguf_tensor_t *embd = gguf_find_tensor(ctx, "token_embd.weight");
    if (embd == NULL) {
        return tdm_error_set(err, TDM_ERR_NOT_FOUND, "tensor 'token_embd.weight' is missing");
    }
    if (embd->ne[0] != hp.n_embd || embd->ne[1] < 1 || embd->ne[1] > INT32_MAX) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "tensor 'token_embd.weight': shape [%lld, %lld]"
                             ", expected [%d, n_vocab]",
                             (long long)embd->ne[0], (long long)embd->ne[1], hp.n_embd);
    }
    hp.n_vocab = (int)embd->ne[1];
    hp.tied_output = gguf_find_tensor(ctx, "output.weight") == NULL;
    hp.qk_norm = gguf_find_tensor(ctx, "blk.0.attn_q_norm.weight") != NULL;
    hp.qk_norm_full = hp.arch == MDL_ARCH_MINIMAX_M2;
    if ((hp.arch == MDL_ARCH_QWEN3MOE || hp.arch == MDL_ARCH_MINIMAX_M2) && !hp.qk_norm) {
        return tdm_error_set(err, TDM_ERR_NOT_FOUND,
                             "tensor 'blk.0.attn_q_norm.weight' is missing (%s normalises q "
                             "and k)",
                             hp.arch_name);
    }
    hp.attn_sinks = hp.arch == MDL_ARCH_GPT_OSS;
    if (hp.arch == MDL_ARCH_QWEN3NEXT || hp.arch == MDL_ARCH_QWEN35MOE) {
        TDM_CHECK(load_hybrid(ctx, &hp, err));
    }

    TDM_CHECK(load_rope(ctx, &hp, err));
    TDM_CHECK(load_layers(ctx, &hp, err));
    if (hp.arch == MDL_ARCH_GPT_OSS) {
        TDM_CHECK(load_swa(ctx, &hp, 2, err)); /* llama.cpp: period 2, even layers slide */
    }
    if (hp.arch == MDL_ARCH_MISTRAL3) {
        /* Llama 4-style attention temperature, floor period = YaRN's original context */
        TDM_CHECK(gguf_get_f32_or(ctx, key_of(key, sizeof(key), &hp, "attention.temperature_scale"),
                                  0.0f, &hp.attn_temp_scale, err));
        if (!isfinite(hp.attn_temp_scale)) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "metadata key '%s': invalid value", key);
        }
        hp.attn_temp_floor = (int)hp.rope.n_ctx_orig;
        if (hp.attn_temp_scale != 0.0f && hp.attn_temp_floor <= 0) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: attention temperature needs an original context length",
                                 hp.arch_name);
        }
    }
    *out = hp;
    return TDM_OK;
}

int mdl_hparams_n_swa_layers(const mdl_hparams_t *hp)
{
    int n = 0;
    for (int il = 0; hp->n_swa > 0 && il < hp->n_layer; il++) {
        n += hp->layer_swa[il] != 0;
    }
    return n;
}

int mdl_hparams_swa_window(const mdl_hparams_t *hp)
{
    return mdl_hparams_n_swa_layers(hp) > 0 ? hp->n_swa : 0;
}
