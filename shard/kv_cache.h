/*
 * kv_cache.h - a shard's paged KV storage: n_blocks fixed-size blocks for every layer
 * (this shard's KV heads only), addressed by block id.
 *
 * A shard owns storage only. Which blocks are free, which sequence holds which block,
 * reference counts and prefix sharing are the coordinator's (coordinator/kv_manager.h);
 * a step carries each sequence's block table (logical block j, positions j*B .. j*B+B-1,
 * -> block id). Block ids mean the same thing on every shard of a model, so one manager
 * drives them all.
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
