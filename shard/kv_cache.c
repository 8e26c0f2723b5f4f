/* kv_cache.c - KV storage of one shard in backend memory, addressed by block id (see
 * kv_cache.h). */
#include "shard/kv_cache.h"

#include "common/check.h"
#include "common/mem.h"

#include <stdlib.h>
#include <string.h>

struct shd_kv_cache {
    shd_kv_config_t cfg;
    kern_kv_layout_t lay;
    kern_backend_t *be;
    unsigned char **k; /* per layer: n_blocks * block_bytes, backend memory */
    unsigned char **v;
};

tdm_status_t shd_kv_cache_create(kern_backend_t *be, const shd_kv_config_t *cfg,
                                 shd_kv_cache_t **out, tdm_error_t *err)
{
    if (cfg->n_layer < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv cache: %d layers", cfg->n_layer);
    }
    kern_kv_layout_t lay = {
        .type = cfg->type,
        .n_kv_heads = cfg->n_kv_heads,
        .head_dim = cfg->head_dim,
        .block_tokens = cfg->block_tokens,
        .n_blocks = cfg->n_blocks,
    };
    TDM_CHECK(kern_kv_layout_init(&lay, err));
    size_t layer_bytes;
    if (tdm_mul_size(lay.block_bytes, (size_t)cfg->n_blocks, &layer_bytes) != 0) {
        return tdm_error_set(err, TDM_ERR_OUT_OF_RANGE, "kv cache: size overflows");
    }
    shd_kv_cache_t *kv = calloc(1, sizeof(*kv));
    if (kv == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv cache: out of memory");
    }
    kv->cfg = *cfg;
    kv->lay = lay;
    kv->be = be;
    kv->k = calloc((size_t)cfg->n_layer, sizeof(*kv->k));
    kv->v = calloc((size_t)cfg->n_layer, sizeof(*kv->v));
    if (kv->k == NULL || kv->v == NULL) {
        shd_kv_cache_destroy(kv);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv cache: out of memory");
    }
    /* Zeroed (kern_be_alloc) so a read of a never-written slot (a caller bug) is at least
     * finite. */
    for (int il = 0; il < cfg->n_layer; il++) {
        tdm_status_t st =
            kern_be_alloc(be, layer_bytes, KERN_MEM_DEVICE, "KV cache", (void **)&kv->k[il], err);
        if (st == TDM_OK) {
            st = kern_be_alloc(be, layer_bytes, KERN_MEM_DEVICE, "KV cache", (void **)&kv->v[il],
                               err);
        }
        if (st != TDM_OK) {
            shd_kv_cache_destroy(kv);
            return tdm_error_set(err, st,
                                 "kv cache: out of memory for %d layers x %zu bytes x 2 (%s)",
                                 cfg->n_layer, layer_bytes, kern_be_describe(be));
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
    free(kv->k);
    free(kv->v);
    free(kv);
}

const shd_kv_config_t *shd_kv_cache_config(const shd_kv_cache_t *kv)
{
    return &kv->cfg;
}

const kern_kv_layout_t *shd_kv_layout(const shd_kv_cache_t *kv)
{
    return &kv->lay;
}

size_t shd_kv_block_bytes(const shd_kv_cache_t *kv)
{
    return kv->lay.block_bytes;
}

uint64_t shd_kv_total_bytes(const shd_kv_cache_t *kv)
{
    return 2u * (uint64_t)kv->cfg.n_layer * (uint64_t)kv->cfg.n_blocks * kv->lay.block_bytes;
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
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer && block >= 0 && block < kv->cfg.n_blocks);
    return kv->k[il] + (size_t)block * kv->lay.block_bytes;
}

void *shd_kv_v(shd_kv_cache_t *kv, int il, int32_t block)
{
    TDM_ASSERT(il >= 0 && il < kv->cfg.n_layer && block >= 0 && block < kv->cfg.n_blocks);
    return kv->v[il] + (size_t)block * kv->lay.block_bytes;
}

void shd_kv_cache_copy_block(shd_kv_cache_t *kv, int32_t dst, int32_t src)
{
    for (int il = 0; il < kv->cfg.n_layer; il++) {
        kern_be_copy(kv->be, shd_kv_k(kv, il, dst), shd_kv_k(kv, il, src), kv->lay.block_bytes);
        kern_be_copy(kv->be, shd_kv_v(kv, il, dst), shd_kv_v(kv, il, src), kv->lay.block_bytes);
    }
}
