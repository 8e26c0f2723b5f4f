/*
 * kv_cache.h - a shard's paged KV storage: fixed-size blocks for every layer (this
 * shard's KV heads only), addressed by block id, in the backend's memory.
 *
 * A shard owns storage only. Which blocks are free, which sequence holds which block,
 * reference counts and prefix sharing are the coordinator's (coordinator/kv_manager.h);
 * a step carries each sequence's block table (logical block j, positions j*B .. j*B+B-1,
 * -> block id). Block ids mean the same thing on every shard of a model, so one manager
 * drives them all.
 *
 * Two pools. The layers that attend over everything keep n_blocks blocks (the full pool,
 * table kern_seq_t.blocks). A model with sliding-window layers (gpt-oss: the even ones,
 * 128 positions) keeps those layers in a second pool of n_swa_blocks blocks (table
 * kern_seq_t.swa_blocks), sized for the windows of the running sequences rather than for
 * their contexts: the coordinator releases a sliding block as soon as no later query of
 * its sequence can see it. Without sliding layers n_swa_blocks is 0 and there is one pool.
 *
 * Storage layout, per layer and for K and V separately (kernels/kern_backend.h,
 * kern_kv_layout_t), rows of `type` (f32, f16 or q8_0):
 *
 *     layer il:  [ block 0 ][ block 1 ] ... [ block n_blocks-1 ]
 *     block:     [ kv head 0 ][ kv head 1 ] ... [ kv head n_kv_heads-1 ]
 *     kv head:   [ slot 0: one head_dim row ] ... [ slot B-1 ]
 *
 * so one head's keys of one block are B rows back to back, and position p of a sequence
 * lives in block table[p / B], slot p % B (table: the sequence's table of the layer's
 * pool). A sliding layer has n_swa_blocks blocks, a full one n_blocks.
 *
 * Recurrent state (models with Gated DeltaNet layers, layer_recurrent[il]): such a layer
 * keeps no K/V. Instead each of n_state_slots slots holds one sequence's state in every
 * recurrent layer: state_conv_floats of conv state and state_ssm_floats of delta-rule
 * state (kern_gdn_t), f32, in backend memory. The coordinator hands each running
 * sequence a slot next to its blocks (coordinator/kv_manager.h); the step names it
 * (kern_seq_t.state_slot). The cache also remembers, per slot, how many positions its
 * state has consumed (shd_kv_state_pos), so a step that would continue a state from the
 * wrong place is refused instead of computing garbage.
 */
#ifndef TDM_SHD_KV_CACHE_H
#define TDM_SHD_KV_CACHE_H

#include "common/status.h"
#include "kernels/kern_backend.h"
#include "model/hparams.h"
#include "model/tensor_types.h"

#include <stdbool.h>
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
    int32_t n_blocks; /* the full pool                          */
    tdm_type_t type;  /* TDM_TYPE_F32, TDM_TYPE_F16 or TDM_TYPE_Q8_0 */
    /* The sliding pool: blocks of the layers with layer_swa[il] set (0: none; then no
     * layer may be flagged). */
    int32_t n_swa_blocks;
    uint8_t layer_swa[MDL_MAX_LAYERS];
    /* Recurrent layers (no K/V) and their state slots; all 0 without such layers. */
    int32_t n_state_slots;
    int64_t state_conv_floats, state_ssm_floats; /* per slot and recurrent layer */
    uint8_t layer_recurrent[MDL_MAX_LAYERS];
} shd_kv_config_t;

typedef struct shd_kv_cache shd_kv_cache_t;

/* Allocates the cache in be's memory (zeroed). Fails with TDM_ERR_NO_MEMORY naming the
 * size, TDM_ERR_UNSUPPORTED for a type the cache cannot hold, TDM_ERR_INVALID_PARAM for a
 * sliding pool without sliding layers or the reverse. */
tdm_status_t shd_kv_cache_create(kern_backend_t *be, const shd_kv_config_t *cfg,
                                 shd_kv_cache_t **out, tdm_error_t *err);
void shd_kv_cache_destroy(shd_kv_cache_t *kv); /* NULL is fine */
const shd_kv_config_t *shd_kv_cache_config(const shd_kv_cache_t *kv);
/* Layer il's layout: the sliding pool's (n_swa_blocks blocks, swa set) for a sliding
 * layer, the full pool's otherwise. */
const kern_kv_layout_t *shd_kv_layout(const shd_kv_cache_t *kv, int il);
/* Whether layer il keeps its K/V in the sliding pool. */
bool shd_kv_layer_is_swa(const shd_kv_cache_t *kv, int il);

/* Bytes of one block of one layer's K (or V) (the same in both pools), and of the whole
 * cache. */
size_t shd_kv_block_bytes(const shd_kv_cache_t *kv);
uint64_t shd_kv_total_bytes(const shd_kv_cache_t *kv);

/* Layer il's K (or V) storage, in backend memory. */
void *shd_kv_layer_k(shd_kv_cache_t *kv, int il);
void *shd_kv_layer_v(shd_kv_cache_t *kv, int il);

/* Start of block `block` of layer il, an id of that layer's pool (host-readable on the
 * CPU backend only). */
void *shd_kv_k(shd_kv_cache_t *kv, int il, int32_t block);
void *shd_kv_v(shd_kv_cache_t *kv, int il, int32_t block);

/* Layer il's recurrent state of every slot ([n_state_slots] x the per-slot floats), in
 * backend memory; NULL for a layer that is not recurrent. */
float *shd_kv_state_conv(shd_kv_cache_t *kv, int il);
float *shd_kv_state_ssm(shd_kv_cache_t *kv, int il);
/* Bytes of the recurrent state of all slots (0 without recurrent layers). */
uint64_t shd_kv_state_bytes(const shd_kv_cache_t *kv);
/* Positions the state of slot has consumed (-1: unknown, e.g. after a failed step); the
 * forward pass sets it after each step. */
int32_t shd_kv_state_pos(const shd_kv_cache_t *kv, int32_t slot);
void shd_kv_state_set_pos(shd_kv_cache_t *kv, int32_t slot, int32_t pos);
/* Slot dst's state in every recurrent layer = slot src's, in the backend's op order (a
 * stored prefix state loaded into a sequence's slot, or saved from it). */
void shd_kv_state_copy(shd_kv_cache_t *kv, int32_t dst, int32_t src);

/* Copies the K and V of block src into block dst in every layer of the full pool
 * (copy-on-write of a shared prefix block before a sequence writes into it), in the
 * backend's op order. */
void shd_kv_cache_copy_block(shd_kv_cache_t *kv, int32_t dst, int32_t src);
/* The same for the sliding pool's layers (ids of the sliding pool; nothing to do without
 * one). */
void shd_kv_cache_copy_swa_block(shd_kv_cache_t *kv, int32_t dst, int32_t src);

#ifdef __cplusplus
}
#endif

#endif
