/* kv_cache.c - block pool (free stack + refcounts), block tables, and KV storage. */
#include "shard/kv_cache.h"

#include "common/check.h"
#include "common/mem.h"

#include <stdlib.h>
#include <string.h>

struct shd_kv_pool {
    int32_t n_blocks;
    int32_t n_free;
    int32_t *free_stack; /* free_stack[0..n_free) are free ids; top is popped first */
    int32_t *refcount;   /* per block; 0 = free                                      */
};

tdm_status_t shd_kv_pool_create(int32_t n_blocks, shd_kv_pool_t **out, tdm_error_t *err)
{
    if (n_blocks < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv pool: %d blocks (need >= 1)",
                             n_blocks);
    }
    shd_kv_pool_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv pool: out of memory");
    }
    p->free_stack = malloc((size_t)n_blocks * sizeof(int32_t));
    p->refcount = calloc((size_t)n_blocks, sizeof(int32_t));
    if (p->free_stack == NULL || p->refcount == NULL) {
        shd_kv_pool_destroy(p);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv pool: out of memory for %d blocks",
                             n_blocks);
    }
    p->n_blocks = n_blocks;
    /* Pushed in reverse so block 0 is handed out first (easy to read in tests). */
    for (int32_t i = 0; i < n_blocks; i++) {
        p->free_stack[i] = n_blocks - 1 - i;
    }
    p->n_free = n_blocks;
    *out = p;
    return TDM_OK;
}

void shd_kv_pool_destroy(shd_kv_pool_t *pool)
{
    if (pool == NULL) {
        return;
    }
    free(pool->free_stack);
    free(pool->refcount);
    free(pool);
}

tdm_status_t shd_kv_pool_alloc(shd_kv_pool_t *pool, int32_t *out, tdm_error_t *err)
{
    if (pool->n_free == 0) {
        return tdm_error_set(err, TDM_ERR_BUSY, "kv pool: all %d blocks are in use",
                             pool->n_blocks);
    }
    int32_t b = pool->free_stack[--pool->n_free];
    TDM_ASSERT(pool->refcount[b] == 0);
    pool->refcount[b] = 1;
    *out = b;
    return TDM_OK;
}

static tdm_status_t check_live(const shd_kv_pool_t *pool, int32_t block, const char *what,
                               tdm_error_t *err)
{
    if (block < 0 || block >= pool->n_blocks) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv pool: %s of block %d (pool has %d)",
                             what, block, pool->n_blocks);
    }
    if (pool->refcount[block] == 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv pool: %s of free block %d", what,
                             block);
    }
    return TDM_OK;
}

tdm_status_t shd_kv_pool_ref(shd_kv_pool_t *pool, int32_t block, tdm_error_t *err)
{
    TDM_CHECK(check_live(pool, block, "ref", err));
    pool->refcount[block]++;
    return TDM_OK;
}

tdm_status_t shd_kv_pool_unref(shd_kv_pool_t *pool, int32_t block, tdm_error_t *err)
{
    TDM_CHECK(check_live(pool, block, "release", err));
    if (--pool->refcount[block] == 0) {
        pool->free_stack[pool->n_free++] = block;
    }
    return TDM_OK;
}

int32_t shd_kv_pool_refcount(const shd_kv_pool_t *pool, int32_t block)
{
    return block >= 0 && block < pool->n_blocks ? pool->refcount[block] : 0;
}

int32_t shd_kv_pool_n_free(const shd_kv_pool_t *pool)
{
    return pool->n_free;
}

int32_t shd_kv_pool_n_blocks(const shd_kv_pool_t *pool)
{
    return pool->n_blocks;
}

void shd_block_table_init(shd_block_table_t *t)
{
    memset(t, 0, sizeof(*t));
}

static tdm_status_t table_grow(shd_block_table_t *t, int32_t need, tdm_error_t *err)
{
    if (need <= t->cap) {
        return TDM_OK;
    }
    int32_t cap = t->cap > 0 ? t->cap : 8;
    while (cap < need) {
        cap *= 2;
    }
    int32_t *nb = realloc(t->blocks, (size_t)cap * sizeof(int32_t));
    if (nb == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "block table: out of memory");
    }
    t->blocks = nb;
    t->cap = cap;
    return TDM_OK;
}

tdm_status_t shd_block_table_reserve(shd_block_table_t *t, shd_kv_pool_t *pool, int64_t n_pos,
                                     int block_tokens, tdm_error_t *err)
{
    if (block_tokens < 1 || n_pos < 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "block table: %lld positions in blocks "
                             "of %d",
                             (long long)n_pos, block_tokens);
    }
    int64_t need = (n_pos + block_tokens - 1) / block_tokens;
    if (need > pool->n_blocks) {
        return tdm_error_set(err, TDM_ERR_BUSY,
                             "block table: %lld positions need %lld blocks, "
                             "pool has %d",
                             (long long)n_pos, (long long)need, pool->n_blocks);
    }
    TDM_CHECK(table_grow(t, (int32_t)need, err));
    int32_t before = t->n_blocks;
    while (t->n_blocks < need) {
        tdm_status_t st = shd_kv_pool_alloc(pool, &t->blocks[t->n_blocks], err);
        if (st != TDM_OK) {
            while (t->n_blocks > before) {
                (void)shd_kv_pool_unref(pool, t->blocks[--t->n_blocks], NULL);
            }
            return st;
        }
        t->n_blocks++;
    }
    return TDM_OK;
}

tdm_status_t shd_block_table_fork(shd_block_table_t *dst, const shd_block_table_t *src,
                                  shd_kv_pool_t *pool, tdm_error_t *err)
{
    TDM_ASSERT(dst->n_blocks == 0);
    TDM_CHECK(table_grow(dst, src->n_blocks, err));
    for (int32_t j = 0; j < src->n_blocks; j++) {
        tdm_status_t st = shd_kv_pool_ref(pool, src->blocks[j], err);
        if (st != TDM_OK) {
            shd_block_table_release(dst, pool);
            return st;
        }
        dst->blocks[dst->n_blocks++] = src->blocks[j];
    }
    return TDM_OK;
}

void shd_block_table_release(shd_block_table_t *t, shd_kv_pool_t *pool)
{
    for (int32_t j = 0; j < t->n_blocks; j++) {
        (void)shd_kv_pool_unref(pool, t->blocks[j], NULL);
    }
    free(t->blocks);
    shd_block_table_init(t);
}

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
