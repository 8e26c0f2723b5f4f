/* kv_manager.c - KV block allocation with reference counts and a chained-hash prefix cache
 * with LRU eviction (see kv_manager.h for the contract). */
#include "coordinator/kv_manager.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NIL (-1)

typedef struct kv_block {
    int32_t ref;      /* sequences using it                                 */
    bool cached;      /* in the hash table (full, committed)                */
    uint64_t hash;    /* chained prefix hash when cached                    */
    int32_t hnext;    /* next block in the same hash bucket                 */
    int32_t lru_prev; /* idle cached blocks, oldest first                   */
    int32_t lru_next;
    int32_t free_next; /* free stack                                         */
} kv_block_t;

struct crd_kvm {
    int32_t n_blocks, block_size;
    uint64_t seed;
    kv_block_t *blocks;
    int32_t *tokens;  /* [n_blocks][block_size] tokens of cached blocks  */
    int32_t *buckets; /* [n_buckets] head block per hash bucket          */
    uint32_t bucket_mask;
    int32_t free_head, n_free;
    int32_t lru_head, lru_tail, n_lru;
    crd_kvm_stats_t stats;
};

struct crd_kv_seq {
    int32_t n_blocks, cap;
    int32_t *blocks;
    int32_t n_committed; /* leading full blocks already hashed / shared       */
    uint64_t last_hash;  /* hash of block n_committed - 1 (seed if none)      */
};

tdm_status_t crd_kvm_create(int32_t n_blocks, int32_t block_size, uint64_t seed, crd_kvm_t **out,
                            tdm_error_t *err)
{
    if (n_blocks <= 0 || block_size <= 0 || block_size > 4096) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv manager: %d blocks of %d tokens",
                             (int)n_blocks, (int)block_size);
    }
    crd_kvm_t *kvm = calloc(1, sizeof(*kvm));
    if (kvm == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory");
    }
    uint32_t nb = 1;
    while (nb < (uint32_t)n_blocks * 2u && nb < (1u << 30)) {
        nb <<= 1;
    }
    kvm->n_blocks = n_blocks;
    kvm->block_size = block_size;
    kvm->seed = seed;
    kvm->bucket_mask = nb - 1;
    kvm->blocks = calloc((size_t)n_blocks, sizeof(kv_block_t));
    kvm->tokens = malloc((size_t)n_blocks * (size_t)block_size * sizeof(int32_t));
    kvm->buckets = malloc((size_t)nb * sizeof(int32_t));
    if (kvm->blocks == NULL || kvm->tokens == NULL || kvm->buckets == NULL) {
        crd_kvm_destroy(kvm);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory for %d blocks",
                             (int)n_blocks);
    }
    for (uint32_t i = 0; i < nb; i++) {
        kvm->buckets[i] = NIL;
    }
    /* free stack ordered so block 0 is handed out first */
    kvm->free_head = NIL;
    for (int32_t b = n_blocks - 1; b >= 0; b--) {
        kvm->blocks[b].free_next = kvm->free_head;
        kvm->blocks[b].lru_prev = kvm->blocks[b].lru_next = NIL;
        kvm->free_head = b;
    }
    kvm->n_free = n_blocks;
    kvm->lru_head = kvm->lru_tail = NIL;
    kvm->stats.n_blocks = n_blocks;
    *out = kvm;
    return TDM_OK;
}

void crd_kvm_destroy(crd_kvm_t *kvm)
{
    if (kvm == NULL) {
        return;
    }
    free(kvm->blocks);
    free(kvm->tokens);
    free(kvm->buckets);
    free(kvm);
}

int32_t crd_kvm_block_size(const crd_kvm_t *kvm)
{
    return kvm->block_size;
}

static uint64_t chain_hash(uint64_t parent, const int32_t *tokens, int32_t n)
{
    /* the parent hash seeds the block's hash: equal only for equal whole prefixes */
    return XXH3_64bits_withSeed(tokens, (size_t)n * sizeof(int32_t), parent);
}

static int32_t *block_tokens(crd_kvm_t *kvm, int32_t b)
{
    return kvm->tokens + (size_t)b * (size_t)kvm->block_size;
}

static int32_t lookup(crd_kvm_t *kvm, uint64_t h, const int32_t *tokens)
{
    for (int32_t b = kvm->buckets[h & kvm->bucket_mask]; b != NIL; b = kvm->blocks[b].hnext) {
        if (kvm->blocks[b].hash == h &&
            memcmp(block_tokens(kvm, b), tokens, (size_t)kvm->block_size * sizeof(int32_t)) == 0) {
            return b;
        }
    }
    return NIL;
}

static void hash_remove(crd_kvm_t *kvm, int32_t b)
{
    int32_t *pp = &kvm->buckets[kvm->blocks[b].hash & kvm->bucket_mask];
    while (*pp != NIL && *pp != b) {
        pp = &kvm->blocks[*pp].hnext;
    }
    if (*pp == b) {
        *pp = kvm->blocks[b].hnext;
    }
    kvm->blocks[b].cached = false;
    kvm->blocks[b].hnext = NIL;
}

static void lru_unlink(crd_kvm_t *kvm, int32_t b)
{
    kv_block_t *k = &kvm->blocks[b];
    if (k->lru_prev != NIL) {
        kvm->blocks[k->lru_prev].lru_next = k->lru_next;
    } else {
        kvm->lru_head = k->lru_next;
    }
    if (k->lru_next != NIL) {
        kvm->blocks[k->lru_next].lru_prev = k->lru_prev;
    } else {
        kvm->lru_tail = k->lru_prev;
    }
    k->lru_prev = k->lru_next = NIL;
    kvm->n_lru--;
}

static void lru_push_tail(crd_kvm_t *kvm, int32_t b)
{
    kv_block_t *k = &kvm->blocks[b];
    k->lru_prev = kvm->lru_tail;
    k->lru_next = NIL;
    if (kvm->lru_tail != NIL) {
        kvm->blocks[kvm->lru_tail].lru_next = b;
    } else {
        kvm->lru_head = b;
    }
    kvm->lru_tail = b;
    kvm->n_lru++;
}

/* Takes a reference on b, reviving it from the idle list if it had no user. */
static void block_ref(crd_kvm_t *kvm, int32_t b)
{
    if (kvm->blocks[b].ref++ == 0 && kvm->blocks[b].cached) {
        lru_unlink(kvm, b);
    }
}

static void block_unref(crd_kvm_t *kvm, int32_t b)
{
    kv_block_t *k = &kvm->blocks[b];
    if (--k->ref > 0) {
        return;
    }
    if (k->cached) {
        lru_push_tail(kvm, b);
    } else {
        k->free_next = kvm->free_head;
        kvm->free_head = b;
        kvm->n_free++;
    }
}

/* A block with no user: a free one, else the least recently used idle cached one. */
static int32_t block_alloc(crd_kvm_t *kvm)
{
    int32_t b = kvm->free_head;
    if (b != NIL) {
        kvm->free_head = kvm->blocks[b].free_next;
        kvm->n_free--;
    } else if (kvm->lru_head != NIL) {
        b = kvm->lru_head;
        lru_unlink(kvm, b);
        hash_remove(kvm, b);
        kvm->stats.evictions++;
    } else {
        return NIL;
    }
    kvm->blocks[b].ref = 1;
    return b;
}

int32_t crd_kvm_available(const crd_kvm_t *kvm)
{
    return kvm->n_free + kvm->n_lru;
}

static int seq_grow(crd_kv_seq_t *seq, int32_t need)
{
    if (need <= seq->cap) {
        return 0;
    }
    int32_t cap = seq->cap ? seq->cap : 8;
    while (cap < need) {
        cap *= 2;
    }
    int32_t *nb = realloc(seq->blocks, (size_t)cap * sizeof(int32_t));
    if (nb == NULL) {
        return -1;
    }
    seq->blocks = nb;
    seq->cap = cap;
    return 0;
}

tdm_status_t crd_kvm_seq_create(crd_kvm_t *kvm, const int32_t *prompt, int32_t n_prompt,
                                crd_kv_seq_t **out, int32_t *n_cached, tdm_error_t *err)
{
    if (n_prompt < 0 || (n_prompt > 0 && prompt == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv manager: bad prompt");
    }
    crd_kv_seq_t *seq = calloc(1, sizeof(*seq));
    if (seq == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory");
    }
    seq->last_hash = kvm->seed;
    const int32_t bs = kvm->block_size;
    int32_t max_hit = n_prompt > 0 ? (n_prompt - 1) / bs : 0;
    if (seq_grow(seq, max_hit > 0 ? max_hit : 1) != 0) {
        free(seq);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory");
    }
    for (int32_t i = 0; i < max_hit; i++) {
        uint64_t h = chain_hash(seq->last_hash, prompt + (size_t)i * bs, bs);
        int32_t b = lookup(kvm, h, prompt + (size_t)i * bs);
        if (b == NIL) {
            break;
        }
        block_ref(kvm, b);
        seq->blocks[seq->n_blocks++] = b;
        seq->n_committed++;
        seq->last_hash = h;
    }
    int32_t hit = seq->n_blocks * bs;
    kvm->stats.prefix_queries += (uint64_t)n_prompt;
    kvm->stats.prefix_hits += (uint64_t)hit;
    *n_cached = hit;
    *out = seq;
    return TDM_OK;
}

int32_t crd_kvm_seq_blocks_needed(const crd_kvm_t *kvm, const crd_kv_seq_t *seq, int32_t n_tokens)
{
    int32_t want = (n_tokens + kvm->block_size - 1) / kvm->block_size;
    return want > seq->n_blocks ? want - seq->n_blocks : 0;
}

tdm_status_t crd_kvm_seq_reserve(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens)
{
    int32_t need = crd_kvm_seq_blocks_needed(kvm, seq, n_tokens);
    if (need == 0) {
        return TDM_OK;
    }
    if (need > crd_kvm_available(kvm)) {
        return TDM_ERR_BUSY;
    }
    if (seq_grow(seq, seq->n_blocks + need) != 0) {
        return TDM_ERR_NO_MEMORY;
    }
    for (int32_t i = 0; i < need; i++) {
        int32_t b = block_alloc(kvm);
        if (b == NIL) { /* cannot happen: availability was checked above */
            return TDM_ERR_INTERNAL;
        }
        seq->blocks[seq->n_blocks++] = b;
    }
    return TDM_OK;
}

void crd_kvm_seq_commit(crd_kvm_t *kvm, crd_kv_seq_t *seq, const int32_t *tokens, int32_t n)
{
    const int32_t bs = kvm->block_size;
    int32_t full = n / bs;
    if (full > seq->n_blocks) {
        full = seq->n_blocks;
    }
    for (int32_t i = seq->n_committed; i < full; i++) {
        const int32_t *bt = tokens + (size_t)i * bs;
        uint64_t h = chain_hash(seq->last_hash, bt, bs);
        int32_t b = seq->blocks[i];
        /* Another sequence may have computed the same prefix concurrently; the first one
         * cached stays the canonical copy and ours is simply not shared. */
        if (!kvm->blocks[b].cached && lookup(kvm, h, bt) == NIL) {
            kv_block_t *k = &kvm->blocks[b];
            k->cached = true;
            k->hash = h;
            memcpy(block_tokens(kvm, b), bt, (size_t)bs * sizeof(int32_t));
            int32_t *head = &kvm->buckets[h & kvm->bucket_mask];
            k->hnext = *head;
            *head = b;
        }
        seq->last_hash = h;
        seq->n_committed = i + 1;
    }
}

const int32_t *crd_kvm_seq_blocks(const crd_kv_seq_t *seq, int32_t *n_blocks)
{
    *n_blocks = seq->n_blocks;
    return seq->blocks;
}

void crd_kvm_seq_free(crd_kvm_t *kvm, crd_kv_seq_t *seq)
{
    if (seq == NULL) {
        return;
    }
    /* release in reverse so a prefix's deepest blocks become the oldest idle entries */
    for (int32_t i = seq->n_blocks - 1; i >= 0; i--) {
        block_unref(kvm, seq->blocks[i]);
    }
    free(seq->blocks);
    free(seq);
}

void crd_kvm_get_stats(const crd_kvm_t *kvm, crd_kvm_stats_t *out)
{
    *out = kvm->stats;
    out->n_free = kvm->n_free;
    out->n_cached_idle = kvm->n_lru;
    out->n_used = kvm->n_blocks - kvm->n_free - kvm->n_lru;
}

void crd_kvm_forget_cached(crd_kvm_t *kvm)
{
    /* idle cached blocks go back to the free stack */
    while (kvm->lru_head != NIL) {
        int32_t b = kvm->lru_head;
        lru_unlink(kvm, b);
        hash_remove(kvm, b);
        kvm->blocks[b].free_next = kvm->free_head;
        kvm->free_head = b;
        kvm->n_free++;
    }
    /* blocks still in use stay with their sequences but are no longer shared */
    for (int32_t b = 0; b < kvm->n_blocks; b++) {
        if (kvm->blocks[b].cached) {
            hash_remove(kvm, b);
        }
    }
}
