/* kv_cache.c - KV storage of one shard, addressed by block id (see kv_cache.h). */
#include "shard/kv_cache.h"

#include "common/check.h"
#include "common/mem.h"

#include <stdlib.h>
#include <string.h>

struct shd_kv_cache {
    shd_kv_config_t cfg;
    size_t block_floats; /* n_kv_heads * B * head_dim                          */
    float **k;           /* per layer: n_blocks * block_floats                 */
    float **v;
};

tdm_status_t shd_kv_cache_create(const shd_kv_config_t *cfg, shd_kv_cache_t **out, tdm_error_t *err)
{
    if (cfg->type != TDM_TYPE_F32) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "kv cache: type %s (only f32 so far)",
                             tdm_type_name(cfg->type));
    }
    if (cfg->n_layer < 1 || cfg->n_kv_heads < 1 || cfg->head_dim < 1 || cfg->block_tokens < 1 ||
        cfg->n_blocks < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "kv cache: bad shape (layers %d, kv "
                             "heads %d, head dim %d, block %d tokens, %d blocks)",
                             cfg->n_layer, cfg->n_kv_heads, cfg->head_dim, cfg->block_tokens,
                             cfg->n_blocks);
    }
    size_t block_floats, layer_floats, layer_bytes;
    if (tdm_mul_size((size_t)cfg->n_kv_heads * (size_t)cfg->block_tokens, (size_t)cfg->head_dim,
                     &block_floats) != 0 ||
        tdm_mul_size(block_floats, (size_t)cfg->n_blocks, &layer_floats) != 0 ||
        tdm_mul_size(layer_floats, sizeof(float), &layer_bytes) != 0) {
        return tdm_error_set(err, TDM_ERR_OUT_OF_RANGE, "kv cache: size overflows");
    }
    shd_kv_cache_t *kv = calloc(1, sizeof(*kv));
    if (kv == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv cache: out of memory");
    }
    kv->cfg = *cfg;
    kv->block_floats = block_floats;
    kv->k = calloc((size_t)cfg->n_layer, sizeof(float *));
    kv->v = calloc((size_t)cfg->n_layer, sizeof(float *));
    if (kv->k == NULL || kv->v == NULL) {
        goto oom;
    }
    for (int il = 0; il < cfg->n_layer; il++) {
        kv->k[il] = tdm_aligned_alloc(layer_bytes);
        kv->v[il] = tdm_aligned_alloc(layer_bytes);
        if (kv->k[il] == NULL || kv->v[il] == NULL) {
            goto oom;
        }
        /* Zeroed so a read of a never-written slot (a caller bug) is at least finite. */
        memset(kv->k[il], 0, layer_bytes);
        memset(kv->v[il], 0, layer_bytes);
    }
    *out = kv;
    return TDM_OK;
oom:
    shd_kv_cache_destroy(kv);
    return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                         "kv cache: out of memory for %d layers x %zu "
                         "bytes x 2",
                         cfg->n_layer, layer_bytes);
}

void shd_kv_cache_destroy(shd_kv_cache_t *kv)
{
    if (kv == NULL) {
        return;
    }
    for (int il = 0; il < kv->cfg.n_layer && kv->k != NULL && kv->v != NULL; il++) {
        free(kv->k[il]);
        free(kv->v[il]);
    }
    free(kv->k);
    free(kv->v);
    free(kv);
}

const shd_kv_config_t *shd_kv_cache_config(const shd_kv_cache_t *kv)
{
    return &kv->cfg;
}

float *shd_kv_k(shd_kv_cache_t *kv, int il, int32_t block)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer && block >= 0 && block < kv->cfg.n_blocks);
    return kv->k[il] + (size_t)block * kv->block_floats;
}

float *shd_kv_v(shd_kv_cache_t *kv, int il, int32_t block)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer && block >= 0 && block < kv->cfg.n_blocks);
    return kv->v[il] + (size_t)block * kv->block_floats;
}

void shd_kv_cache_copy_block(shd_kv_cache_t *kv, int32_t dst, int32_t src)
{
    for (int il = 0; il < kv->cfg.n_layer; il++) {
        memcpy(shd_kv_k(kv, il, dst), shd_kv_k(kv, il, src), kv->block_floats * sizeof(float));
        memcpy(shd_kv_v(kv, il, dst), shd_kv_v(kv, il, src), kv->block_floats * sizeof(float));
    }
}
