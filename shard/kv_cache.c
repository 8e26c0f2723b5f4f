/* kv_cache.c - KV storage of one shard in backend memory, addressed by block id, in one
 * pool or two (see kv_cache.h). */
#include "shard/kv_cache.h"

#include "common/check.h"
#include "common/mem.h"

#include <stdlib.h>
#include <string.h>

struct shd_kv_cache {
    shd_kv_config_t cfg;
    kern_kv_layout_t lay;     /* the full pool's layers   */
    kern_kv_layout_t lay_swa; /* the sliding pool's layers */
    kern_backend_t *be;
    unsigned char **k; /* per layer: its pool's blocks * block_bytes, backend memory */
    unsigned char **v;
    float **conv, **ssm; /* per recurrent layer: every slot's state, backend memory */
    int32_t *state_pos;  /* host: per slot, positions consumed (-1 unknown)        */
};

static bool layer_swa(const shd_kv_config_t *cfg, int il)
{
    return cfg->n_swa_blocks > 0 && cfg->layer_swa[il] != 0;
}

static bool layer_rec(const shd_kv_config_t *cfg, int il)
{
    return cfg->n_state_slots > 0 && cfg->layer_recurrent[il] != 0;
}

/* The recurrent layers' state slots (zeroed). */
static tdm_status_t alloc_states(shd_kv_cache_t *kv, tdm_error_t *err)
{
    const shd_kv_config_t *cfg = &kv->cfg;
    kv->conv = calloc((size_t)cfg->n_layer, sizeof(*kv->conv));
    kv->ssm = calloc((size_t)cfg->n_layer, sizeof(*kv->ssm));
    kv->state_pos =
        malloc((size_t)(cfg->n_state_slots > 0 ? cfg->n_state_slots : 1) * sizeof(int32_t));
    if (kv->conv == NULL || kv->ssm == NULL || kv->state_pos == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv cache: out of memory");
    }
    for (int32_t i = 0; i < cfg->n_state_slots; i++) {
        kv->state_pos[i] = -1;
    }
    const size_t n = (size_t)cfg->n_state_slots;
    for (int il = 0; il < cfg->n_layer; il++) {
        if (!layer_rec(cfg, il)) {
            continue;
        }
        TDM_CHECK(kern_be_alloc(kv->be, n * (size_t)cfg->state_conv_floats * sizeof(float),
                                KERN_MEM_DEVICE, "recurrent state", (void **)&kv->conv[il], err));
        TDM_CHECK(kern_be_alloc(kv->be, n * (size_t)cfg->state_ssm_floats * sizeof(float),
                                KERN_MEM_DEVICE, "recurrent state", (void **)&kv->ssm[il], err));
    }
    return TDM_OK;
}

tdm_status_t shd_kv_cache_create(kern_backend_t *be, const shd_kv_config_t *cfg,
                                 shd_kv_cache_t **out, tdm_error_t *err)
{
    if (cfg->n_layer < 1 || cfg->n_layer > MDL_MAX_LAYERS) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv cache: %d layers", cfg->n_layer);
    }
    int n_swa_layers = 0, n_rec = 0;
    for (int il = 0; il < cfg->n_layer; il++) {
        n_swa_layers += cfg->layer_swa[il] != 0;
        n_rec += cfg->layer_recurrent[il] != 0;
    }
    if (cfg->n_state_slots < 0 || (n_rec > 0 && cfg->n_state_slots == 0) ||
        (cfg->n_state_slots > 0 && (cfg->state_conv_floats < 0 || cfg->state_ssm_floats < 1))) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "kv cache: %d recurrent layers with %d state slots", n_rec,
                             (int)cfg->n_state_slots);
    }
    if (cfg->n_swa_blocks < 0 || (cfg->n_swa_blocks > 0) != (n_swa_layers > 0)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "kv cache: a sliding pool of %d blocks for %d sliding layers",
                             (int)cfg->n_swa_blocks, n_swa_layers);
    }
    kern_kv_layout_t lay = {
        .type = cfg->type,
        .n_kv_heads = cfg->n_kv_heads,
        .head_dim = cfg->head_dim,
        .block_tokens = cfg->block_tokens,
        .n_blocks = cfg->n_blocks,
    };
    TDM_CHECK(kern_kv_layout_init(&lay, err));
    kern_kv_layout_t lay_swa = lay;
    lay_swa.n_blocks = cfg->n_swa_blocks;
    lay_swa.swa = true;
    size_t layer_bytes, swa_layer_bytes;
    if (tdm_mul_size(lay.block_bytes, (size_t)cfg->n_blocks, &layer_bytes) != 0 ||
        tdm_mul_size(lay.block_bytes, (size_t)cfg->n_swa_blocks, &swa_layer_bytes) != 0) {
        return tdm_error_set(err, TDM_ERR_OUT_OF_RANGE, "kv cache: size overflows");
    }
    shd_kv_cache_t *kv = calloc(1, sizeof(*kv));
    if (kv == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv cache: out of memory");
    }
    kv->cfg = *cfg;
    kv->lay = lay;
    kv->lay_swa = lay_swa;
    kv->be = be;
    kv->k = calloc((size_t)cfg->n_layer, sizeof(*kv->k));
    kv->v = calloc((size_t)cfg->n_layer, sizeof(*kv->v));
    if (kv->k == NULL || kv->v == NULL) {
        shd_kv_cache_destroy(kv);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv cache: out of memory");
    }
    /* Zeroed (kern_be_alloc) so a read of a never-written slot (a caller bug) is at least
     * finite. */
    tdm_status_t sst = alloc_states(kv, err);
    if (sst != TDM_OK) {
        shd_kv_cache_destroy(kv);
        return sst;
    }
    for (int il = 0; il < cfg->n_layer; il++) {
        if (layer_rec(cfg, il)) {
            continue; /* a Gated DeltaNet layer keeps its state in the slots, no K/V */
        }
        const size_t bytes = layer_swa(cfg, il) ? swa_layer_bytes : layer_bytes;
        tdm_status_t st =
            kern_be_alloc(be, bytes, KERN_MEM_DEVICE, "KV cache", (void **)&kv->k[il], err);
        if (st == TDM_OK) {
            st = kern_be_alloc(be, bytes, KERN_MEM_DEVICE, "KV cache", (void **)&kv->v[il], err);
        }
        if (st != TDM_OK) {
            shd_kv_cache_destroy(kv);
            return tdm_error_set(err, st,
                                 "kv cache: out of memory for %d layers x %zu bytes x 2 (%d of "
                                 "them sliding, %zu bytes x 2) (%s)",
                                 cfg->n_layer - n_swa_layers, layer_bytes, n_swa_layers,
                                 swa_layer_bytes, kern_be_describe(be));
        }
    }
    *out = kv;
    return TDM_OK;
}

void shd_kv_cache_destroy(shd_kv_cache_t *kv)
{
    if (kv == NULL) {
        return;
    }
    for (int il = 0; il < kv->cfg.n_layer; il++) {
        if (kv->k != NULL) {
            kern_be_free(kv->be, kv->k[il]);
        }
        if (kv->v != NULL) {
            kern_be_free(kv->be, kv->v[il]);
        }
    }
    for (int il = 0; il < kv->cfg.n_layer; il++) {
        if (kv->conv != NULL) {
            kern_be_free(kv->be, kv->conv[il]);
        }
        if (kv->ssm != NULL) {
            kern_be_free(kv->be, kv->ssm[il]);
        }
    }
    free(kv->conv);
    free(kv->ssm);
    free(kv->state_pos);
    free(kv->k);
    free(kv->v);
    free(kv);
}

const shd_kv_config_t *shd_kv_cache_config(const shd_kv_cache_t *kv)
{
    return &kv->cfg;
}

const kern_kv_layout_t *shd_kv_layout(const shd_kv_cache_t *kv, int il)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer);
    return layer_swa(&kv->cfg, il) ? &kv->lay_swa : &kv->lay;
}

bool shd_kv_layer_is_swa(const shd_kv_cache_t *kv, int il)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer);
    return layer_swa(&kv->cfg, il);
}

size_t shd_kv_block_bytes(const shd_kv_cache_t *kv)
{
    return kv->lay.block_bytes;
}

uint64_t shd_kv_total_bytes(const shd_kv_cache_t *kv)
{
    uint64_t blocks = 0;
    for (int il = 0; il < kv->cfg.n_layer; il++) {
        blocks += layer_rec(&kv->cfg, il) ? 0 : (uint64_t)shd_kv_layout(kv, il)->n_blocks;
    }
    return 2u * blocks * kv->lay.block_bytes + shd_kv_state_bytes(kv);
}

float *shd_kv_state_conv(shd_kv_cache_t *kv, int il)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer);
    return kv->conv[il];
}

float *shd_kv_state_ssm(shd_kv_cache_t *kv, int il)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer);
    return kv->ssm[il];
}

uint64_t shd_kv_state_bytes(const shd_kv_cache_t *kv)
{
    uint64_t n = 0;
    for (int il = 0; il < kv->cfg.n_layer; il++) {
        n += layer_rec(&kv->cfg, il) ? 1 : 0;
    }
    return n * (uint64_t)kv->cfg.n_state_slots *
           (uint64_t)(kv->cfg.state_conv_floats + kv->cfg.state_ssm_floats) * sizeof(float);
}

void shd_kv_state_copy(shd_kv_cache_t *kv, int32_t dst, int32_t src)
{
    const shd_kv_config_t *c = &kv->cfg;
    TDM_ASSERT(dst >= 0 && dst < c->n_state_slots && src >= 0 && src < c->n_state_slots);
    const size_t cb = (size_t)c->state_conv_floats * sizeof(float);
    const size_t sb = (size_t)c->state_ssm_floats * sizeof(float);
    for (int il = 0; il < c->n_layer; il++) {
        if (layer_rec(c, il)) {
            kern_be_copy(kv->be, (unsigned char *)kv->conv[il] + (size_t)dst * cb,
                         (const unsigned char *)kv->conv[il] + (size_t)src * cb, cb);
            kern_be_copy(kv->be, (unsigned char *)kv->ssm[il] + (size_t)dst * sb,
                         (const unsigned char *)kv->ssm[il] + (size_t)src * sb, sb);
        }
    }
    kv->state_pos[dst] = kv->state_pos[src];
}

int32_t shd_kv_state_pos(const shd_kv_cache_t *kv, int32_t slot)
{
    return slot >= 0 && slot < kv->cfg.n_state_slots ? kv->state_pos[slot] : -1;
}

void shd_kv_state_set_pos(shd_kv_cache_t *kv, int32_t slot, int32_t pos)
{
    if (slot >= 0 && slot < kv->cfg.n_state_slots) {
        kv->state_pos[slot] = pos;
    }
}

void *shd_kv_layer_k(shd_kv_cache_t *kv, int il)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer);
    return kv->k[il];
}

void *shd_kv_layer_v(shd_kv_cache_t *kv, int il)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer);
    return kv->v[il];
}

void *shd_kv_k(shd_kv_cache_t *kv, int il, int32_t block)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer && block >= 0 &&
               block < shd_kv_layout(kv, il)->n_blocks);
    return kv->k[il] + (size_t)block * kv->lay.block_bytes;
}

void *shd_kv_v(shd_kv_cache_t *kv, int il, int32_t block)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer && block >= 0 &&
               block < shd_kv_layout(kv, il)->n_blocks);
    return kv->v[il] + (size_t)block * kv->lay.block_bytes;
}

/* Copies block src to dst in every layer of one pool. */
static void copy_block(shd_kv_cache_t *kv, bool swa, int32_t dst, int32_t src)
{
    for (int il = 0; il < kv->cfg.n_layer; il++) {
        if (layer_swa(&kv->cfg, il) != swa || layer_rec(&kv->cfg, il)) {
            continue;
        }
        kern_be_copy(kv->be, shd_kv_k(kv, il, dst), shd_kv_k(kv, il, src), kv->lay.block_bytes);
        kern_be_copy(kv->be, shd_kv_v(kv, il, dst), shd_kv_v(kv, il, src), kv->lay.block_bytes);
    }
}

void shd_kv_cache_copy_block(shd_kv_cache_t *kv, int32_t dst, int32_t src)
{
    copy_block(kv, false, dst, src);
}

void shd_kv_cache_copy_swa_block(shd_kv_cache_t *kv, int32_t dst, int32_t src)
{
    copy_block(kv, true, dst, src);
}
