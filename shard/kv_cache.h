/*
 * kv_cache.h - paged KV cache: a pool of fixed-size blocks and per-sequence block tables.
 *
 * Three pieces, kept apart so the serving layer can own the bookkeeping while every
 * shard owns only storage:
 *
 *   shd_kv_pool_t     which block ids are free, and a refcount per block (prefix blocks
 *                     may be shared by several sequences). No storage.
 *   shd_block_table_t one sequence's map from logical block j (positions j*B .. j*B+B-1)
 *                     to a physical block id.
 *   shd_kv_cache_t    the storage of n_blocks blocks for every layer of one shard (its
 *                     local KV heads only). Block ids mean the same thing on every shard
 *                     of a model, so one pool and one set of block tables drive them all.
 *
 * Storage layout, per layer and for K and V separately (f32 now; the type field keeps
 * room for f16):
 *
 *     layer il:  [ block 0 ][ block 1 ] ... [ block n_blocks-1 ]
 *     block:     [ kv head 0 ][ kv head 1 ] ... [ kv head n_kv_heads-1 ]
 *     kv head:   [ slot 0: head_dim floats ] ... [ slot B-1 ]
 *
 * so one head's keys of one block are B * head_dim contiguous floats, and position p of
 * a sequence lives in block table[p / B], slot p % B.
 */
#ifndef TDM_SHD_KV_CACHE_H
#define TDM_SHD_KV_CACHE_H

#include "common/status.h"
#include "model/tensor_types.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHD_KV_BLOCK_TOKENS_DEFAULT 16

/* ---- block pool ---- */

typedef struct shd_kv_pool shd_kv_pool_t;

tdm_status_t shd_kv_pool_create(int32_t n_blocks, shd_kv_pool_t **out, tdm_error_t *err);
void shd_kv_pool_destroy(shd_kv_pool_t *pool); /* NULL is fine */

/* Takes a free block (refcount 1). TDM_ERR_BUSY when none is free. */
tdm_status_t shd_kv_pool_alloc(shd_kv_pool_t *pool, int32_t *out, tdm_error_t *err);
/* One more owner of an allocated block. TDM_ERR_INVALID_PARAM for a free / bad id. */
tdm_status_t shd_kv_pool_ref(shd_kv_pool_t *pool, int32_t block, tdm_error_t *err);
/* One owner fewer; the block is free again at 0. TDM_ERR_INVALID_PARAM for a free /
 * bad id (a double release is reported, never counted below zero). */
tdm_status_t shd_kv_pool_unref(shd_kv_pool_t *pool, int32_t block, tdm_error_t *err);
int32_t shd_kv_pool_refcount(const shd_kv_pool_t *pool, int32_t block); /* 0: free / bad id */
int32_t shd_kv_pool_n_free(const shd_kv_pool_t *pool);
int32_t shd_kv_pool_n_blocks(const shd_kv_pool_t *pool);

/* ---- per-sequence block table ---- */

typedef struct shd_block_table {
    int32_t *blocks; /* physical block of logical block j            */
    int32_t n_blocks;
    int32_t cap;
} shd_block_table_t;

void shd_block_table_init(shd_block_table_t *t);
/* Allocates blocks until positions [0, n_pos) are covered (B = block_tokens). On failure
 * (TDM_ERR_BUSY: pool exhausted) the blocks taken by this call are given back and the
 * table is as before. */
tdm_status_t shd_block_table_reserve(shd_block_table_t *t, shd_kv_pool_t *pool, int64_t n_pos,
                                     int block_tokens, tdm_error_t *err);
/* dst (initialised, empty) shares all of src's blocks (refcounts + 1). */
tdm_status_t shd_block_table_fork(shd_block_table_t *dst, const shd_block_table_t *src,
                                  shd_kv_pool_t *pool, tdm_error_t *err);
/* Releases every block (refcount - 1) and empties the table. */
void shd_block_table_release(shd_block_table_t *t, shd_kv_pool_t *pool);

/* ---- storage ---- */

typedef struct shd_kv_config {
    int n_layer;
    int n_kv_heads; /* this shard's KV heads                   */
    int head_dim;
    int block_tokens; /* B                                      */
    int32_t n_blocks;
    tdm_type_t type; /* TDM_TYPE_F32 (only type so far)         */
} shd_kv_config_t;

typedef struct shd_kv_cache shd_kv_cache_t;

tdm_status_t shd_kv_cache_create(const shd_kv_config_t *cfg, shd_kv_cache_t **out,
                                 tdm_error_t *err);
void shd_kv_cache_destroy(shd_kv_cache_t *kv); /* NULL is fine */
const shd_kv_config_t *shd_kv_cache_config(const shd_kv_cache_t *kv);

/* Start of block `block` of layer il: n_kv_heads x B x head_dim floats. */
float *shd_kv_k(shd_kv_cache_t *kv, int il, int32_t block);
float *shd_kv_v(shd_kv_cache_t *kv, int il, int32_t block);

/* Copies every layer's K and V of block src into block dst (copy-on-write of a shared
 * prefix block before a sequence writes into it). */
void shd_kv_cache_copy_block(shd_kv_cache_t *kv, int32_t dst, int32_t src);

#ifdef __cplusplus
}
#endif

#endif
