/*
 * kv_manager.h - which KV-cache blocks each sequence owns, and the prefix cache.
 *
 * The coordinator decides block ids; shards only store K/V at those ids (shard/kv_cache).
 * A block holds `block_size` consecutive positions of one sequence. Blocks are reference
 * counted so that sequences with a common prompt prefix share them.
 *
 * Prefix cache: when a block is full, its key is the chained hash
 *     h(block i) = xxh3_64(token ids of block i, seed = h(block i-1)),  h(-1) = namespace seed
 * so a block is reused only when the whole prefix up to and including it is identical. The
 * block's tokens are kept too and compared on a hit, so a 64-bit collision cannot alias two
 * prefixes. A cached block whose last user leaves goes to an LRU list instead of the free
 * list; allocation takes free blocks first, then evicts the least recently used cached one.
 *
 * A new sequence reuses at most the cached blocks that end strictly before its last prompt
 * token: that token must be computed anyway (its logits start generation), and it then
 * lands in a block of the sequence's own, so shared blocks are never written.
 *
 * Not thread-safe: the scheduler calls it from its single loop.
 */
#ifndef CRD_KV_MANAGER_H
#define CRD_KV_MANAGER_H

#include "common/status.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct crd_kvm crd_kvm_t;
typedef struct crd_kv_seq crd_kv_seq_t;

typedef struct crd_kvm_stats {
    int32_t n_blocks;        /* total blocks                                   */
    int32_t n_free;          /* on the free list (never cached or evicted)     */
    int32_t n_cached_idle;   /* cached, no user: reusable or evictable         */
    int32_t n_used;          /* referenced by at least one sequence            */
    uint64_t prefix_queries; /* prompt tokens looked up                        */
    uint64_t prefix_hits;    /* prompt tokens served from the cache            */
    uint64_t evictions;
} crd_kvm_stats_t;

/* n_blocks blocks of block_size tokens; `seed` namespaces the hashes (model identity). */
tdm_status_t crd_kvm_create(int32_t n_blocks, int32_t block_size, uint64_t seed, crd_kvm_t **out,
                            tdm_error_t *err);
void crd_kvm_destroy(crd_kvm_t *kvm);

int32_t crd_kvm_block_size(const crd_kvm_t *kvm);

/*
 * Starts a sequence for a prompt: reuses cached blocks for its longest cached prefix (see
 * above) and returns in *n_cached how many prompt tokens need no computing. No new blocks
 * are allocated yet (crd_kvm_seq_reserve does that).
 */
tdm_status_t crd_kvm_seq_create(crd_kvm_t *kvm, const int32_t *prompt, int32_t n_prompt,
                                crd_kv_seq_t **out, int32_t *n_cached, tdm_error_t *err);

/* Ensures the sequence has blocks for positions [0, n_tokens). TDM_ERR_BUSY (nothing
 * changed) when not enough blocks can be found even after evicting idle cached ones. */
tdm_status_t crd_kvm_seq_reserve(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens);

/* Blocks needed to grow seq to n_tokens (0 if it already has them). */
int32_t crd_kvm_seq_blocks_needed(const crd_kvm_t *kvm, const crd_kv_seq_t *seq, int32_t n_tokens);

/* Number of blocks that could be handed out now (free + idle cached). */
int32_t crd_kvm_available(const crd_kvm_t *kvm);

/* Records that tokens[0, n) of the sequence now have their K/V computed; full blocks
 * among them enter the prefix cache. tokens is the sequence's whole token list so far. */
void crd_kvm_seq_commit(crd_kvm_t *kvm, crd_kv_seq_t *seq, const int32_t *tokens, int32_t n);

/* The block table: block ids for positions [0, n_blocks * block_size). */
const int32_t *crd_kvm_seq_blocks(const crd_kv_seq_t *seq, int32_t *n_blocks);

/* Ends a sequence, releasing its blocks (cached ones stay reusable). NULL is fine. */
void crd_kvm_seq_free(crd_kvm_t *kvm, crd_kv_seq_t *seq);

void crd_kvm_get_stats(const crd_kvm_t *kvm, crd_kvm_stats_t *out);

/* Empties the prefix cache (the KV contents behind it were lost, e.g. a shard restarted):
 * idle cached blocks become free, blocks in use are no longer offered for reuse. */
void crd_kvm_forget_cached(crd_kvm_t *kvm);

#endif
