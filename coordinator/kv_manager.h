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
 * Two pools (vLLM v1's hybrid KV cache manager is the model). A model with sliding-window
 * layers (window w: a query at position p sees keys p - w + 1 .. p) keeps those layers'
 * K/V in a second pool, the sliding pool, with an id space of its own. A sequence then has
 * two tables of the same length: blocks[j] (the full pool, as above) and swa_blocks[j]
 * (the sliding pool; -1 where the sequence no longer needs that block). The rules:
 *   - reserve: a step computing positions [c, n) needs full blocks for [0, n) and sliding
 *     blocks covering [max(0, c - w + 1), n);
 *   - release: once the sequence has computed n positions, its sliding blocks wholly below
 *     n - w + 1 (the next token's first key) are no longer needed by it; one whose logical
 *     block is in the prefix cache becomes an idle cached sliding block (kept with its
 *     contents, evictable, tied to that cached full block), any other is freed at once (a
 *     sequence that computed an already cached block again ties its sliding block to the
 *     cached one when that has lost its own);
 *   - prefix hits: a hit of P tokens (block-aligned, as above) stands only if the sliding
 *     blocks covering [max(0, P - w + 1), P) are still there for those logical blocks (the
 *     token at P reads keys from P - w + 1); otherwise it is cut to the longest block
 *     boundary for which that holds (possibly 0). A hit references those sliding blocks;
 *   - eviction: the sliding pool allocates free blocks first, then evicts its least
 *     recently used idle cached block (whose full block stays cached: its prefix then
 *     hits only up to an earlier boundary). Evicting or forgetting a cached full block
 *     frees its idle sliding block.
 * Without sliding layers (w = 0) there is one pool and the sliding parts cost nothing.
 *
 * Recurrent state (Gated DeltaNet models): besides its blocks each sequence holds a state
 * slot (crd_kvm_params_t.n_state_slots). A prefix hit also needs the recurrent state at its
 * end: with stored states (n_state_store) a hit is cut to the deepest cached block that has
 * one; without, such a manager serves no hits.
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

typedef struct crd_kvm_params {
    int32_t n_blocks;     /* the full pool                                           */
    int32_t block_size;   /* tokens per block (both pools)                           */
    uint64_t seed;        /* namespaces the hashes (model identity)                  */
    int32_t n_swa;        /* the sliding window; 0: no sliding layers                */
    int32_t n_swa_blocks; /* the sliding pool (> 0 exactly when n_swa > 0)           */
    /* Recurrent-state slots (models with Gated DeltaNet layers; 0: none). Each sequence
     * takes one at crd_kvm_seq_create (TDM_ERR_BUSY when none is free) and gives it back
     * at crd_kvm_seq_free. Until states of cached prefixes are stored, such a manager
     * never serves a prefix hit: the state of the hit's positions would be missing. */
    int32_t n_state_slots;
    /* Stored recurrent states of cached prefixes (0: none; then no prefix hits for such a
     * model). A state is stored at the end of a sequence's last full prompt block (the
     * step that reaches it stops there, crd_kvm_seq_save_point, and writes it,
     * crd_kvm_seq_state_save), tied to that cached full block; a hit then ends at the
     * deepest block that has one, and the sequence's first step loads it
     * (crd_kvm_seq_state_load). Idle ones are evicted least recently used first, and go
     * with their full block. Their state slot ids follow the running slots':
     * n_state_slots + i. */
    int32_t n_state_store;
    /* Also store states every state_every blocks of a prompt (0: only at its last full
     * block), so prompts that share only a leading part (agents with one system prompt and
     * different tasks) resume from the deepest such boundary of the shared part. */
    int32_t state_every;
} crd_kvm_params_t;

typedef struct crd_kvm_stats {
    int32_t n_blocks;        /* total blocks (full pool)                       */
    int32_t n_free;          /* on the free list (never cached or evicted)     */
    int32_t n_cached_idle;   /* cached, no user: reusable or evictable         */
    int32_t n_used;          /* referenced by at least one sequence            */
    int32_t n_used_peak;     /* most n_used so far                             */
    uint64_t prefix_queries; /* prompt tokens looked up                        */
    uint64_t prefix_hits;    /* prompt tokens served from the cache            */
    uint64_t evictions;
    /* the sliding pool (all 0 without one) */
    int32_t swa_blocks, swa_free, swa_cached_idle, swa_used;
    int32_t swa_used_peak;  /* most sliding blocks in use at once so far            */
    uint64_t swa_evictions; /* idle cached sliding blocks taken for new ones        */
    uint64_t swa_hits_cut;  /* prompt tokens hits lost: their sliding window was evicted */
} crd_kvm_stats_t;

/* A manager for p's pools. TDM_ERR_INVALID_PARAM for bad sizes. */
tdm_status_t crd_kvm_create_pools(const crd_kvm_params_t *p, crd_kvm_t **out, tdm_error_t *err);
/* One pool of n_blocks blocks of block_size tokens; `seed` namespaces the hashes. */
tdm_status_t crd_kvm_create(int32_t n_blocks, int32_t block_size, uint64_t seed, crd_kvm_t **out,
                            tdm_error_t *err);
void crd_kvm_destroy(crd_kvm_t *kvm);

int32_t crd_kvm_block_size(const crd_kvm_t *kvm);
/* The sliding window the manager serves (0: one pool). */
int32_t crd_kvm_swa_window(const crd_kvm_t *kvm);

/*
 * Starts a sequence for a prompt: reuses cached blocks for its longest cached prefix (see
 * above) and returns in *n_cached how many prompt tokens need no computing (the sequence
 * counts them as computed). No new blocks are allocated yet (crd_kvm_seq_reserve does).
 */
tdm_status_t crd_kvm_seq_create(crd_kvm_t *kvm, const int32_t *prompt, int32_t n_prompt,
                                crd_kv_seq_t **out, int32_t *n_cached, tdm_error_t *err);
/* The same for a sequence whose recurrent state at the prompt's end is put into its slot
 * from elsewhere (disaggregated prefill: the prefill group computes it): its hit is not
 * cut to a block with a stored state, and it loads none. Without recurrent layers this is
 * crd_kvm_seq_create. */
tdm_status_t crd_kvm_seq_create_given(crd_kvm_t *kvm, const int32_t *prompt, int32_t n_prompt,
                                      crd_kv_seq_t **out, int32_t *n_cached, tdm_error_t *err);

/* Ensures the sequence has blocks for a step computing positions [computed, n_tokens),
 * where computed is what crd_kvm_seq_create / crd_kvm_seq_commit last recorded: full
 * blocks for [0, n_tokens), sliding blocks for the window of those positions.
 * TDM_ERR_BUSY (nothing changed) when either pool cannot provide them even after
 * evicting idle cached blocks. */
tdm_status_t crd_kvm_seq_reserve(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens);
/* The same for positions whose K/V is written from elsewhere (disaggregated prefill): full
 * blocks for [0, n_tokens), sliding blocks only for the window position n_tokens reads (the
 * next token's), so a long prompt never needs its whole length in the sliding pool. */
tdm_status_t crd_kvm_seq_reserve_given(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens);

/* Blocks of each pool needed to grow seq to n_tokens (0 if it already has them). */
int32_t crd_kvm_seq_blocks_needed(const crd_kvm_t *kvm, const crd_kv_seq_t *seq, int32_t n_tokens);
int32_t crd_kvm_seq_swa_blocks_needed(const crd_kvm_t *kvm, const crd_kv_seq_t *seq,
                                      int32_t n_tokens);

/* Blocks that could be handed out now (free + idle cached): full pool, sliding pool. */
int32_t crd_kvm_available(const crd_kvm_t *kvm);
int32_t crd_kvm_swa_available(const crd_kvm_t *kvm);

/* Records that tokens[0, n) of the sequence now have their K/V computed: full blocks
 * among them enter the prefix cache, then sliding blocks no later token can see are
 * released (see above). tokens is the sequence's whole token list so far; NULL: nothing
 * enters the prefix cache (the sliding blocks are freed; `tandem eval`). */
void crd_kvm_seq_commit(crd_kvm_t *kvm, crd_kv_seq_t *seq, const int32_t *tokens, int32_t n);

/* The block tables: ids for positions [0, n_blocks * block_size), full pool, and the
 * sliding pool's of the same length (-1 where released; NULL without a sliding pool). */
const int32_t *crd_kvm_seq_blocks(const crd_kv_seq_t *seq, int32_t *n_blocks);
const int32_t *crd_kvm_seq_swa_blocks(const crd_kv_seq_t *seq);

/* The sequence's recurrent-state slot (-1 without slots), and how many are free. */
int32_t crd_kvm_seq_state_slot(const crd_kv_seq_t *seq);
int32_t crd_kvm_state_slots_free(const crd_kvm_t *kvm);
/* Speculative decoding on recurrent layers: a step that carries drafts runs in a spare
 * slot loaded from the sequence's own, which keeps the state from before the drafts (the
 * checkpoint a rejection rolls back to). crd_kvm_state_slot_take marks a free slot used
 * and returns it (-1: none free); crd_kvm_state_slot_put frees it again;
 * crd_kvm_seq_state_move makes a taken slot the sequence's own (every draft accepted)
 * and frees the one it had. */
int32_t crd_kvm_state_slot_take(crd_kvm_t *kvm);
void crd_kvm_state_slot_put(crd_kvm_t *kvm, int32_t slot);
void crd_kvm_seq_state_move(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t slot);
/* The stored state (its slot id) the sequence's next step must load first: its prefix
 * hit's; -1 when none (always, after the step's commit). */
int32_t crd_kvm_seq_state_load(const crd_kvm_t *kvm, const crd_kv_seq_t *seq);
/* Where the sequence, with n_tokens to compute, wants its state stored next: the next
 * multiple of state_every blocks, or the end of its last full block before token
 * n_tokens - 1, whichever comes first, while that is still ahead of it; else 0 (also
 * without stored states). A step should end there. */
int32_t crd_kvm_seq_save_point(const crd_kvm_t *kvm, const crd_kv_seq_t *seq, int32_t n_tokens);
/* For a step that ends at position n (a block boundary): a stored state (its slot id) the
 * step writes after it, tied to the block ending at n by the next commit; -1 when none can
 * be had (all in use) or n is not a boundary of the sequence's blocks. */
int32_t crd_kvm_seq_state_save(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n);

/* Speculative decoding's rollback: releases the blocks past those positions [0, n_tokens)
 * need (never a committed one). Positions past the last commit hold K/V of rejected
 * drafts; they were never hashed, and the next step writes them again before any commit
 * covers them. */
void crd_kvm_seq_trim(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens);

/* Ends a sequence, releasing its blocks and state slot (cached blocks stay reusable).
 * NULL is fine. */
void crd_kvm_seq_free(crd_kvm_t *kvm, crd_kv_seq_t *seq);

void crd_kvm_get_stats(const crd_kvm_t *kvm, crd_kvm_stats_t *out);

/* For the router (coordinator/router.h), which asks every engine how much of a prompt it
 * holds without touching its manager:
 *   - crd_kvm_cache_version moves whenever a hash enters or leaves the prefix cache, so a
 *     snapshot is rebuilt only when it changed;
 *   - crd_kvm_cached_hashes writes the chained hashes of the cached full blocks (at most
 *     cap, in block order) and returns how many;
 *   - crd_kvm_prefix_hashes computes a prompt's chained block hashes exactly as the
 *     manager does (h(-1) = seed), one per full block of tokens, at most cap. */
uint64_t crd_kvm_cache_version(const crd_kvm_t *kvm);
int32_t crd_kvm_cached_hashes(const crd_kvm_t *kvm, uint64_t *out, int32_t cap);
int32_t crd_kvm_prefix_hashes(uint64_t seed, int32_t block_size, const int32_t *tokens,
                              int32_t n_tokens, uint64_t *out, int32_t cap);

/* Empties the prefix cache (the KV contents behind it were lost, e.g. a shard restarted):
 * idle cached blocks of both pools become free, blocks in use are no longer offered for
 * reuse. */
void crd_kvm_forget_cached(crd_kvm_t *kvm);

#endif
