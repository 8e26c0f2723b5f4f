/*
 * kv_cache.h - a shard's paged KV storage: n_blocks fixed-size blocks for every layer
 * (this shard's KV heads only), addressed by block id, in the backend's memory.
 *
 * A shard owns storage only. Which blocks are free, which sequence holds which block,
 * reference counts and prefix sharing are the coordinator's (coordinator/kv_manager.h);
 * a step carries each sequence's block table (logical block j, positions j*B .. j*B+B-1,
 * -> block id). Block ids mean the same thing on every shard of a model, so one manager
 * drives them all.
 *
 * Storage layout, per layer and for K and V separately (kernels/kern_backend.h,
 * kern_kv_layout_t), rows of `type` (f32, f16 or q8_0):
 *
 *     layer il:  [ block 0 ][ block 1 ] ... [ block n_blocks-1 ]
 *     block:     [ kv head 0 ][ kv head 1 ] ... [ kv head n_kv_heads-1 ]
 *     kv head:   [ slot 0: one head_dim row ] ... [ slot B-1 ]
 *
 * so one head's keys of one block are B rows back to back, and position p of a sequence
 * lives in block table[p / B], slot p % B.
 */
#ifndef TDM_SHD_KV_CACHE_H
#define TDM_SHD_KV_CACHE_H

#include "common/status.h"
#include "kernels/kern_backend.h"
#include "model/tensor_types.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHD_KV_BLOCK_TOKENS_DEFAULT 16

/* ---- storage ---- */

typedef struct shd_kv_config {
    int n_layer;
    int n_kv_heads; /* this shard's KV heads                   */
    int head_dim;
    int block_tokens; /* B                                      */
    int32_t n_blocks;
    tdm_type_t type; /* TDM_TYPE_F32, TDM_TYPE_F16 or TDM_TYPE_Q8_0 */
} shd_kv_config_t;

typedef struct shd_kv_cache shd_kv_cache_t;

/* Allocates the cache in be's memory (zeroed). Fails with TDM_ERR_NO_MEMORY naming the
 * size, TDM_ERR_UNSUPPORTED for a type the cache cannot hold. */
tdm_status_t shd_kv_cache_create(kern_backend_t *be, const shd_kv_config_t *cfg,
                                 shd_kv_cache_t **out, tdm_error_t *err);
void shd_kv_cache_destroy(shd_kv_cache_t *kv); /* NULL is fine */
const shd_kv_config_t *shd_kv_cache_config(const shd_kv_cache_t *kv);
const kern_kv_layout_t *shd_kv_layout(const shd_kv_cache_t *kv);

/* Bytes of one block of one layer's K (or V), and of the whole cache. */
size_t shd_kv_block_bytes(const shd_kv_cache_t *kv);
uint64_t shd_kv_total_bytes(const shd_kv_cache_t *kv);

/* Layer il's K (or V) storage, in backend memory. */
void *shd_kv_layer_k(shd_kv_cache_t *kv, int il);
void *shd_kv_layer_v(shd_kv_cache_t *kv, int il);

/* Start of block `block` of layer il (host-readable on the CPU backend only). */
void *shd_kv_k(shd_kv_cache_t *kv, int il, int32_t block);
void *shd_kv_v(shd_kv_cache_t *kv, int il, int32_t block);

/* Copies every layer's K and V of block src into block dst (copy-on-write of a shared
 * prefix block before a sequence writes into it), in the backend's op order. */
void shd_kv_cache_copy_block(shd_kv_cache_t *kv, int32_t dst, int32_t src);

#ifdef __cplusplus
}
#endif

#endif
