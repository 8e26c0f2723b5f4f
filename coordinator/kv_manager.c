/* kv_manager.c - KV block allocation with reference counts, a chained-hash prefix cache
 * with LRU eviction, and the sliding-window pool (see kv_manager.h for the contract). */
#include "coordinator/kv_manager.h"

#include "common/check.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NIL (-1)

/* Bookkeeping of one block of a pool: users, and its place on the free stack or on the
 * idle LRU list (a block with no user whose contents are still worth keeping). */
typedef struct pool_node {
    int32_t ref;       /* sequences using it                                 */
    bool in_lru;       /* idle and kept: on the LRU list                     */
    int32_t lru_prev;  /* idle kept blocks, oldest first                     */
    int32_t lru_next;  /*                                                    */
    int32_t free_next; /* free stack                                         */
} pool_node_t;

typedef struct kv_pool {
    pool_node_t *node;
    int32_t n;
    int32_t free_head, n_free;
    int32_t lru_head, lru_tail, n_lru;
    int32_t used_peak;
    uint64_t evictions;
} kv_pool_t;

/* What the prefix cache knows about a full-pool block. */
typedef struct kv_meta {
    bool cached;   /* in the hash table (full, committed)                */
    uint64_t hash; /* chained prefix hash when cached                    */
    int32_t hnext; /* next block in the same hash bucket                 */
    int32_t swa;   /* cached: the sliding block of this logical block, or NIL */
    int32_t snap;  /* cached: the stored recurrent state at this block's end, or NIL */
} kv_meta_t;

struct crd_kvm {
    int32_t block_size;
    uint64_t seed;
    int32_t n_swa; /* the window; 0: no sliding pool                     */
    kv_pool_t full, swa;
    kv_meta_t *meta;    /* [full.n]                                        */
    int32_t *swa_owner; /* [swa.n] the cached full block it is tied to, or NIL */
    int32_t *tokens;    /* [full.n][block_size] tokens of cached blocks    */
    int32_t *buckets;   /* [n_buckets] head block per hash bucket          */
    uint32_t bucket_mask;
    crd_kvm_stats_t stats;
    int32_t n_state_slots; /* recurrent-state slots (0: the model has none)    */
    uint8_t *slot_used;    /* [n_state_slots]                                  */
    /* stored states of cached prefixes: a pool like the sliding one (refcounted while a
     * step reads or writes one, idle ones on an LRU), each tied to the cached full block
     * whose end it holds; the state slot id of stored state i is n_state_slots + i */
    kv_pool_t snap;
    int32_t *snap_owner; /* [snap.n] the cached full block it is tied to, or NIL */
    int32_t state_every; /* blocks between stored states inside a prompt (0: none) */
    uint64_t version;    /* moves whenever a hash enters or leaves the prefix cache */
};

struct crd_kv_seq {
    int32_t n_blocks, cap;
    int32_t *blocks;
    int32_t *swa_blocks; /* [cap] with a sliding pool, else NULL               */
    int32_t n_committed; /* leading full blocks already hashed / shared       */
    uint64_t last_hash;  /* hash of block n_committed - 1 (seed if none)      */
    int32_t n_computed;  /* positions with K/V (the last commit, or the hit)  */
    int32_t swa_lo;      /* swa_blocks[j] is NIL for every j < swa_lo         */
    int32_t state_slot;  /* recurrent-state slot, or NIL                      */
    int32_t snap_load;   /* stored state the next step starts from (pinned), or NIL */
    int32_t snap_save;   /* stored state the step in flight writes (pinned), or NIL */
    int32_t snap_block;  /* the logical block whose end snap_save holds       */
};

/* ---- pools ---- */

static int pool_init(kv_pool_t *p, int32_t n)
{
    p->n = n;
    p->node = calloc(n > 0 ? (size_t)n : 1, sizeof(pool_node_t));
    if (p->node == NULL) {
        return -1;
    }
    /* free stack ordered so block 0 is handed out first */
    p->free_head = NIL;
    for (int32_t b = n - 1; b >= 0; b--) {
        p->node[b].free_next = p->free_head;
        p->node[b].lru_prev = p->node[b].lru_next = NIL;
        p->free_head = b;
    }
    p->n_free = n;
    p->lru_head = p->lru_tail = NIL;
    return 0;
}

static int32_t pool_used(const kv_pool_t *p)
{
    return p->n - p->n_free - p->n_lru;
}

static void pool_note_use(kv_pool_t *p)
{
    const int32_t used = pool_used(p);
    p->used_peak = used > p->used_peak ? used : p->used_peak;
}

static void lru_unlink(kv_pool_t *p, int32_t b)
{
    pool_node_t *k = &p->node[b];
    if (k->lru_prev != NIL) {
        p->node[k->lru_prev].lru_next = k->lru_next;
    } else {
        p->lru_head = k->lru_next;
    }
    if (k->lru_next != NIL) {
        p->node[k->lru_next].lru_prev = k->lru_prev;
    } else {
        p->lru_tail = k->lru_prev;
    }
    k->lru_prev = k->lru_next = NIL;
    k->in_lru = false;
    p->n_lru--;
}

static void lru_push_tail(kv_pool_t *p, int32_t b)
{
    pool_node_t *k = &p->node[b];
    k->lru_prev = p->lru_tail;
    k->lru_next = NIL;
    if (p->lru_tail != NIL) {
        p->node[p->lru_tail].lru_next = b;
    } else {
        p->lru_head = b;
    }
    p->lru_tail = b;
    k->in_lru = true;
    p->n_lru++;
}

static void free_push(kv_pool_t *p, int32_t b)
{
    p->node[b].free_next = p->free_head;
    p->free_head = b;
    p->n_free++;
}

/* Takes a reference on b, reviving it from the idle list if it had no user. */
static void pool_ref(kv_pool_t *p, int32_t b)
{
    if (p->node[b].ref++ == 0 && p->node[b].in_lru) {
        lru_unlink(p, b);
        pool_note_use(p);
    }
}

/* Drops a reference; a block left without users is kept idle (keep) or freed. True when
 * it has no user now. */
static bool pool_unref(kv_pool_t *p, int32_t b, bool keep)
{
    if (--p->node[b].ref > 0) {
        return false;
    }
    if (keep) {
        lru_push_tail(p, b);
    } else {
        free_push(p, b);
    }
    return true;
}

/* A block with no user: a free one, else the least recently used idle one (*evicted set;
 * the caller drops what it meant). NIL when there is neither. */
static int32_t pool_take(kv_pool_t *p, bool *evicted)
{
    int32_t b = p->free_head;
    *evicted = false;
    if (b != NIL) {
        p->free_head = p->node[b].free_next;
        p->n_free--;
    } else if (p->lru_head != NIL) {
        b = p->lru_head;
        lru_unlink(p, b);
        p->evictions++;
        *evicted = true;
    } else {
        return NIL;
    }
    p->node[b].ref = 1;
    pool_note_use(p);
    return b;
}

/* ---- the manager ---- */

tdm_status_t crd_kvm_create_pools(const crd_kvm_params_t *p, crd_kvm_t **out, tdm_error_t *err)
{
    if (p->n_blocks <= 0 || p->block_size <= 0 || p->block_size > 4096 || p->n_swa < 0 ||
        p->n_swa_blocks < 0 || (p->n_swa > 0) != (p->n_swa_blocks > 0) || p->n_state_slots < 0 ||
        p->n_state_store < 0 || p->state_every < 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "kv manager: %d blocks of %d tokens, window %d in %d blocks",
                             (int)p->n_blocks, (int)p->block_size, (int)p->n_swa,
                             (int)p->n_swa_blocks);
    }
    crd_kvm_t *kvm = calloc(1, sizeof(*kvm));
    if (kvm == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory");
    }
    uint32_t nb = 1;
    while (nb < (uint32_t)p->n_blocks * 2u && nb < (1u << 30)) {
        nb <<= 1;
    }
    kvm->block_size = p->block_size;
    kvm->seed = p->seed;
    kvm->n_swa = p->n_swa;
    kvm->bucket_mask = nb - 1;
    kvm->meta = calloc((size_t)p->n_blocks, sizeof(kv_meta_t));
    kvm->tokens = malloc((size_t)p->n_blocks * (size_t)p->block_size * sizeof(int32_t));
    kvm->buckets = malloc((size_t)nb * sizeof(int32_t));
    kvm->swa_owner = malloc((p->n_swa_blocks > 0 ? (size_t)p->n_swa_blocks : 1) * sizeof(int32_t));
    kvm->n_state_slots = p->n_state_slots;
    kvm->state_every = p->state_every;
    kvm->slot_used = calloc(p->n_state_slots > 0 ? (size_t)p->n_state_slots : 1, 1);
    const int32_t n_snap = p->n_state_slots > 0 ? p->n_state_store : 0;
    kvm->snap_owner = malloc((n_snap > 0 ? (size_t)n_snap : 1) * sizeof(int32_t));
    const int pools = pool_init(&kvm->full, p->n_blocks) | pool_init(&kvm->swa, p->n_swa_blocks) |
                      pool_init(&kvm->snap, n_snap);
    if (kvm->meta == NULL || kvm->tokens == NULL || kvm->buckets == NULL ||
        kvm->swa_owner == NULL || kvm->slot_used == NULL || kvm->snap_owner == NULL || pools != 0) {
        crd_kvm_destroy(kvm);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory for %d blocks",
                             (int)p->n_blocks);
    }
    for (uint32_t i = 0; i < nb; i++) {
        kvm->buckets[i] = NIL;
    }
    for (int32_t b = 0; b < p->n_blocks; b++) {
        kvm->meta[b].swa = NIL;
        kvm->meta[b].snap = NIL;
    }
    for (int32_t i = 0; i < n_snap; i++) {
        kvm->snap_owner[i] = NIL;
    }
    for (int32_t s = 0; s < p->n_swa_blocks; s++) {
        kvm->swa_owner[s] = NIL;
    }
    *out = kvm;
    return TDM_OK;
}

tdm_status_t crd_kvm_create(int32_t n_blocks, int32_t block_size, uint64_t seed, crd_kvm_t **out,
                            tdm_error_t *err)
{
    const crd_kvm_params_t p = {.n_blocks = n_blocks, .block_size = block_size, .seed = seed};
    return crd_kvm_create_pools(&p, out, err);
}

void crd_kvm_destroy(crd_kvm_t *kvm)
{
    if (kvm == NULL) {
        return;
    }
    free(kvm->full.node);
    free(kvm->swa.node);
    free(kvm->snap.node);
    free(kvm->snap_owner);
    free(kvm->meta);
    free(kvm->swa_owner);
    free(kvm->tokens);
    free(kvm->buckets);
    free(kvm->slot_used);
    free(kvm);
}

int32_t crd_kvm_block_size(const crd_kvm_t *kvm)
{
    return kvm->block_size;
}

int32_t crd_kvm_swa_window(const crd_kvm_t *kvm)
{
    return kvm->n_swa;
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
    for (int32_t b = kvm->buckets[h & kvm->bucket_mask]; b != NIL; b = kvm->meta[b].hnext) {
        if (kvm->meta[b].hash == h &&
            memcmp(block_tokens(kvm, b), tokens, (size_t)kvm->block_size * sizeof(int32_t)) == 0) {
            return b;
        }
    }
    return NIL;
}

/* Unties full block b's sliding block; an idle one is freed (nothing else could hit it). */
static void swa_detach(crd_kvm_t *kvm, int32_t b)
{
    const int32_t s = kvm->meta[b].swa;
    if (s == NIL) {
        return;
    }
    kvm->meta[b].swa = NIL;
    kvm->swa_owner[s] = NIL;
    if (kvm->swa.node[s].in_lru) {
        lru_unlink(&kvm->swa, s);
        free_push(&kvm->swa, s);
    }
}

/* Unties full block b's stored state; an idle one is freed. */
static void snap_detach(crd_kvm_t *kvm, int32_t b)
{
    const int32_t s = kvm->meta[b].snap;
    if (s == NIL) {
        return;
    }
    kvm->meta[b].snap = NIL;
    kvm->snap_owner[s] = NIL;
    if (kvm->snap.node[s].in_lru) {
        lru_unlink(&kvm->snap, s);
        free_push(&kvm->snap, s);
    }
}

/* A stored state is kept idle only while it is tied to a cached full block. */
static void snap_unref(crd_kvm_t *kvm, int32_t s)
{
    pool_unref(&kvm->snap, s, kvm->snap_owner[s] != NIL);
}

static void hash_remove(crd_kvm_t *kvm, int32_t b)
{
    int32_t *pp = &kvm->buckets[kvm->meta[b].hash & kvm->bucket_mask];
    while (*pp != NIL && *pp != b) {
        pp = &kvm->meta[*pp].hnext;
    }
    if (*pp == b) {
        *pp = kvm->meta[b].hnext;
    }
    kvm->meta[b].cached = false;
    kvm->meta[b].hnext = NIL;
    kvm->version++;
    swa_detach(kvm, b);
    snap_detach(kvm, b);
}

static void full_unref(crd_kvm_t *kvm, int32_t b)
{
    pool_unref(&kvm->full, b, kvm->meta[b].cached);
}

/* A sliding block is kept idle only while it is tied to a cached full block. */
static void swa_unref(crd_kvm_t *kvm, int32_t s)
{
    pool_unref(&kvm->swa, s, kvm->swa_owner[s] != NIL);
}

/* A full block with no user: a free one, else the least recently used cached one. */
static int32_t full_alloc(crd_kvm_t *kvm)
{
    bool evicted;
    const int32_t b = pool_take(&kvm->full, &evicted);
    if (evicted) {
        hash_remove(kvm, b); /* and its idle sliding block */
    }
    return b;
}

/* A sliding block with no user: a free one, else the least recently used idle one (its
 * full block stays cached, without a window behind it). */
static int32_t swa_alloc(crd_kvm_t *kvm)
{
    bool evicted;
    const int32_t s = pool_take(&kvm->swa, &evicted);
    if (evicted) {
        kvm->meta[kvm->swa_owner[s]].swa = NIL;
        kvm->swa_owner[s] = NIL;
    }
    return s;
}

int32_t crd_kvm_available(const crd_kvm_t *kvm)
{
    return kvm->full.n_free + kvm->full.n_lru;
}

int32_t crd_kvm_swa_available(const crd_kvm_t *kvm)
{
    return kvm->swa.n_free + kvm->swa.n_lru;
}

static int seq_grow(crd_kv_seq_t *seq, int32_t need, bool swa)
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
    if (swa) {
        int32_t *ns = realloc(seq->swa_blocks, (size_t)cap * sizeof(int32_t));
        if (ns == NULL) {
            return -1; /* blocks grew, cap did not: a later call retries both */
        }
        seq->swa_blocks = ns;
    }
    seq->cap = cap;
    return 0;
}

/* The first position a token at pos reads in a sliding layer. */
static int32_t window_lo(const crd_kvm_t *kvm, int32_t pos)
{
    return pos >= kvm->n_swa ? pos - kvm->n_swa + 1 : 0;
}

static tdm_status_t seq_create(crd_kvm_t *kvm, const int32_t *prompt, int32_t n_prompt,
                               bool state_given, crd_kv_seq_t **out, int32_t *n_cached,
                               tdm_error_t *err)
{
    if (n_prompt < 0 || (n_prompt > 0 && prompt == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kv manager: bad prompt");
    }
    /* a recurrent-state slot first: without one the sequence cannot run */
    int32_t slot = NIL;
    for (int32_t i = 0; i < kvm->n_state_slots && slot == NIL; i++) {
        slot = kvm->slot_used[i] ? NIL : i;
    }
    if (kvm->n_state_slots > 0 && slot == NIL) {
        return tdm_error_set(err, TDM_ERR_BUSY, "kv manager: all %d state slots in use",
                             (int)kvm->n_state_slots);
    }
    crd_kv_seq_t *seq = calloc(1, sizeof(*seq));
    if (seq == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory");
    }
    seq->last_hash = kvm->seed;
    seq->state_slot = slot;
    seq->snap_load = seq->snap_save = NIL;
    const int32_t bs = kvm->block_size;
    const bool swa = kvm->n_swa > 0;
    int32_t max_hit = n_prompt > 0 ? (n_prompt - 1) / bs : 0;
    if (kvm->n_state_slots > 0 && kvm->snap.n == 0 && !state_given) {
        /* no stored recurrent states: a hit would skip positions the state never saw, so
         * every prompt is computed from its start (its full blocks still enter the cache) */
        max_hit = 0;
    }
    if (seq_grow(seq, max_hit > 0 ? max_hit : 1, swa) != 0) {
        free(seq->blocks);
        free(seq->swa_blocks);
        free(seq);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kv manager: out of memory");
    }
    /* the longest chain of cached blocks (not referenced yet) */
    int32_t chain = 0;
    uint64_t h = kvm->seed;
    for (; chain < max_hit; chain++) {
        h = chain_hash(h, prompt + (size_t)chain * bs, bs);
        const int32_t b = lookup(kvm, h, prompt + (size_t)chain * bs);
        if (b == NIL) {
            break;
        }
        seq->blocks[chain] = b;
    }
    /* with a sliding pool: the longest boundary k <= chain whose window [k*bs - w + 1,
     * k*bs) still has its sliding blocks (k = 0 always qualifies: no window) */
    int32_t k = chain;
    if (swa) {
        int32_t miss = NIL; /* the last logical block below k without a sliding block */
        for (int32_t j = 0; j < chain; j++) {
            if (kvm->meta[seq->blocks[j]].swa == NIL) {
                miss = j;
            }
        }
        while (k > 0 && miss >= window_lo(kvm, k * bs) / bs) {
            k--;
            if (miss == k) { /* no longer below k: find the one before it */
                do {
                    miss--;
                } while (miss >= 0 && kvm->meta[seq->blocks[miss]].swa != NIL);
            }
        }
        kvm->stats.swa_hits_cut += (uint64_t)(chain - k) * (uint64_t)bs;
    }
    if (kvm->n_state_slots > 0 && !state_given) {
        /* recurrent layers: the hit ends at the deepest block whose end has a stored state,
         * which the sequence's first step loads into its slot */
        while (k > 0 && kvm->meta[seq->blocks[k - 1]].snap == NIL) {
            k--;
        }
        if (k > 0) {
            seq->snap_load = kvm->meta[seq->blocks[k - 1]].snap;
            pool_ref(&kvm->snap, seq->snap_load);
        }
    }
    for (int32_t i = 0; i < k; i++) {
        pool_ref(&kvm->full, seq->blocks[i]);
        seq->last_hash = chain_hash(seq->last_hash, prompt + (size_t)i * bs, bs);
    }
    seq->n_blocks = seq->n_committed = k;
    const int32_t hit = k * bs;
    seq->n_computed = hit;
    if (swa) {
        seq->swa_lo = window_lo(kvm, hit) / bs;
        for (int32_t j = 0; j < k; j++) {
            const int32_t s = j < seq->swa_lo ? NIL : kvm->meta[seq->blocks[j]].swa;
            if (s != NIL) {
                pool_ref(&kvm->swa, s);
            }
            seq->swa_blocks[j] = s;
        }
    }
    kvm->stats.prefix_queries += (uint64_t)n_prompt;
    kvm->stats.prefix_hits += (uint64_t)hit;
    if (slot != NIL) {
        kvm->slot_used[slot] = 1;
    }
    *n_cached = hit;
    *out = seq;
    return TDM_OK;
}

tdm_status_t crd_kvm_seq_create(crd_kvm_t *kvm, const int32_t *prompt, int32_t n_prompt,
                                crd_kv_seq_t **out, int32_t *n_cached, tdm_error_t *err)
{
    return seq_create(kvm, prompt, n_prompt, false, out, n_cached, err);
}

tdm_status_t crd_kvm_seq_create_given(crd_kvm_t *kvm, const int32_t *prompt, int32_t n_prompt,
                                      crd_kv_seq_t **out, int32_t *n_cached, tdm_error_t *err)
{
    return seq_create(kvm, prompt, n_prompt, true, out, n_cached, err);
}

int32_t crd_kvm_seq_blocks_needed(const crd_kvm_t *kvm, const crd_kv_seq_t *seq, int32_t n_tokens)
{
    int32_t want = (n_tokens + kvm->block_size - 1) / kvm->block_size;
    return want > seq->n_blocks ? want - seq->n_blocks : 0;
}

/* Sliding blocks missing for logical blocks [window_lo(from) / bs, those of n_tokens). */
static int32_t swa_needed_from(const crd_kvm_t *kvm, const crd_kv_seq_t *seq, int32_t from,
                               int32_t n_tokens)
{
    if (kvm->n_swa == 0) {
        return 0;
    }
    const int32_t bs = kvm->block_size;
    const int32_t want = (n_tokens + bs - 1) / bs;
    int32_t need = 0;
    for (int32_t j = window_lo(kvm, from) / bs; j < want; j++) {
        need += j >= seq->n_blocks || seq->swa_blocks[j] == NIL;
    }
    return need;
}

int32_t crd_kvm_seq_swa_blocks_needed(const crd_kvm_t *kvm, const crd_kv_seq_t *seq,
                                      int32_t n_tokens)
{
    return swa_needed_from(kvm, seq, seq->n_computed, n_tokens);
}

/* crd_kvm_seq_reserve, with sliding blocks from the window of position `from` on. */
static tdm_status_t reserve_from(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t from, int32_t n_tokens)
{
    const int32_t need = crd_kvm_seq_blocks_needed(kvm, seq, n_tokens);
    const int32_t need_swa = swa_needed_from(kvm, seq, from, n_tokens);
    if (need == 0 && need_swa == 0) {
        return TDM_OK;
    }
    if (need > crd_kvm_available(kvm) || need_swa > crd_kvm_swa_available(kvm)) {
        return TDM_ERR_BUSY;
    }
    const bool swa = kvm->n_swa > 0;
    if (seq_grow(seq, seq->n_blocks + need, swa) != 0) {
        return TDM_ERR_NO_MEMORY;
    }
    /* Full blocks first: evicting a cached one may free its idle sliding block, which
     * only adds to what the sliding pool has. */
    for (int32_t i = 0; i < need; i++) {
        const int32_t b = full_alloc(kvm);
        if (b == NIL) { /* cannot happen: availability was checked above */
            return TDM_ERR_INTERNAL;
        }
        if (swa) {
            seq->swa_blocks[seq->n_blocks] = NIL;
        }
        seq->blocks[seq->n_blocks++] = b;
    }
    const int32_t bs = kvm->block_size;
    const int32_t lo = swa ? window_lo(kvm, from) / bs : seq->n_blocks;
    for (int32_t j = lo; j < seq->n_blocks; j++) {
        if (seq->swa_blocks[j] == NIL) {
            const int32_t s = swa_alloc(kvm);
            if (s == NIL) {
                return TDM_ERR_INTERNAL;
            }
            seq->swa_blocks[j] = s;
        }
    }
    return TDM_OK;
}

/* Releases the sequence's sliding blocks below logical block `below`. */
static void swa_release_below(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t below)
{
    below = below < seq->n_blocks ? below : seq->n_blocks;
    for (int32_t j = seq->swa_lo; j < below; j++) {
        if (seq->swa_blocks[j] != NIL) {
            swa_unref(kvm, seq->swa_blocks[j]);
            seq->swa_blocks[j] = NIL;
        }
    }
    seq->swa_lo = below > seq->swa_lo ? below : seq->swa_lo;
}

tdm_status_t crd_kvm_seq_reserve(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens)
{
    return reserve_from(kvm, seq, seq->n_computed, n_tokens);
}

tdm_status_t crd_kvm_seq_reserve_given(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens)
{
    const int32_t from = n_tokens > seq->n_computed ? n_tokens : seq->n_computed;
    tdm_status_t st = reserve_from(kvm, seq, from, n_tokens);
    if (st == TDM_OK && kvm->n_swa > 0) {
        /* a prefix hit's window blocks below the one position n_tokens reads are not read
         * again: give them back now rather than at the commit */
        swa_release_below(kvm, seq, window_lo(kvm, from) / kvm->block_size);
    }
    return st;
}

void crd_kvm_seq_commit(crd_kvm_t *kvm, crd_kv_seq_t *seq, const int32_t *tokens, int32_t n)
{
    const int32_t bs = kvm->block_size;
    int32_t full = n / bs;
    if (full > seq->n_blocks) {
        full = seq->n_blocks;
    }
    for (int32_t i = seq->n_committed; i < full && tokens != NULL; i++) {
        const int32_t *bt = tokens + (size_t)i * bs;
        uint64_t h = chain_hash(seq->last_hash, bt, bs);
        int32_t b = seq->blocks[i];
        /* Another sequence may have computed the same prefix concurrently; the first one
         * cached stays the canonical copy and ours is simply not shared (its sliding
         * block may still stand in for a canonical block that lost its own). */
        const int32_t canon = kvm->meta[b].cached ? b : lookup(kvm, h, bt);
        if (canon == NIL) {
            kv_meta_t *k = &kvm->meta[b];
            k->cached = true;
            k->hash = h;
            memcpy(block_tokens(kvm, b), bt, (size_t)bs * sizeof(int32_t));
            int32_t *head = &kvm->buckets[h & kvm->bucket_mask];
            k->hnext = *head;
            *head = b;
            kvm->version++;
        }
        const int32_t owner = canon == NIL ? b : canon;
        const int32_t s = kvm->n_swa > 0 ? seq->swa_blocks[i] : NIL;
        if (s != NIL && kvm->meta[owner].swa == NIL && kvm->swa_owner[s] == NIL) {
            kvm->meta[owner].swa = s;
            kvm->swa_owner[s] = owner;
        }
        seq->last_hash = h;
        seq->n_committed = i + 1;
    }
    if (seq->snap_load != NIL) { /* the step that loaded it has run */
        snap_unref(kvm, seq->snap_load);
        seq->snap_load = NIL;
    }
    if (seq->snap_save != NIL) {
        /* the step wrote the state at the end of logical block snap_block: tie it to that
         * block's canonical cached copy (unless that has one already, or none is cached) */
        const int32_t s = seq->snap_save, j = seq->snap_block;
        seq->snap_save = NIL;
        int32_t owner = NIL;
        if (tokens != NULL && j < seq->n_committed) {
            owner = kvm->meta[seq->blocks[j]].cached ? seq->blocks[j] : NIL;
            if (owner == NIL && j == seq->n_committed - 1) { /* a concurrent twin's copy */
                owner = lookup(kvm, seq->last_hash, tokens + (size_t)j * bs);
            }
        }
        if (owner != NIL && kvm->meta[owner].snap == NIL) {
            kvm->meta[owner].snap = s;
            kvm->snap_owner[s] = owner;
        }
        snap_unref(kvm, s);
    }
    if (n > seq->n_computed) {
        seq->n_computed = n;
    }
    if (kvm->n_swa > 0) {
        /* blocks wholly below the next token's first key */
        swa_release_below(kvm, seq, window_lo(kvm, seq->n_computed) / bs);
    }
}

const int32_t *crd_kvm_seq_blocks(const crd_kv_seq_t *seq, int32_t *n_blocks)
{
    *n_blocks = seq->n_blocks;
    return seq->blocks;
}

const int32_t *crd_kvm_seq_swa_blocks(const crd_kv_seq_t *seq)
{
    return seq->swa_blocks;
}

void crd_kvm_seq_free(crd_kvm_t *kvm, crd_kv_seq_t *seq)
{
    if (seq == NULL) {
        return;
    }
    if (seq->state_slot != NIL) {
        kvm->slot_used[seq->state_slot] = 0;
    }
    if (seq->snap_load != NIL) {
        snap_unref(kvm, seq->snap_load);
    }
    if (seq->snap_save != NIL) {
        snap_unref(kvm, seq->snap_save); /* its step never committed: nothing tied */
    }
    /* release in reverse so a prefix's deepest blocks become the oldest idle entries */
    for (int32_t i = seq->n_blocks - 1; i >= 0; i--) {
        if (seq->swa_blocks != NULL && seq->swa_blocks[i] != NIL) {
            swa_unref(kvm, seq->swa_blocks[i]);
        }
        full_unref(kvm, seq->blocks[i]);
    }
    free(seq->blocks);
    free(seq->swa_blocks);
    free(seq);
}

void crd_kvm_seq_trim(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n_tokens)
{
    const int32_t bs = kvm->block_size;
    int32_t keep = (n_tokens + bs - 1) / bs;
    keep = keep > seq->n_committed ? keep : seq->n_committed;
    while (seq->n_blocks > keep) {
        const int32_t j = --seq->n_blocks;
        if (seq->swa_blocks != NULL && seq->swa_blocks[j] != NIL) {
            swa_unref(kvm, seq->swa_blocks[j]);
            seq->swa_blocks[j] = NIL;
        }
        full_unref(kvm, seq->blocks[j]);
    }
}

void crd_kvm_get_stats(const crd_kvm_t *kvm, crd_kvm_stats_t *out)
{
    *out = kvm->stats;
    out->n_blocks = kvm->full.n;
    out->n_free = kvm->full.n_free;
    out->n_cached_idle = kvm->full.n_lru;
    out->n_used = pool_used(&kvm->full);
    out->n_used_peak = kvm->full.used_peak;
    out->evictions = kvm->full.evictions;
    out->swa_blocks = kvm->swa.n;
    out->swa_free = kvm->swa.n_free;
    out->swa_cached_idle = kvm->swa.n_lru;
    out->swa_used = pool_used(&kvm->swa);
    out->swa_used_peak = kvm->swa.used_peak;
    out->swa_evictions = kvm->swa.evictions;
}

uint64_t crd_kvm_cache_version(const crd_kvm_t *kvm)
{
    return kvm->version;
}

int32_t crd_kvm_cached_hashes(const crd_kvm_t *kvm, uint64_t *out, int32_t cap)
{
    int32_t n = 0;
    for (int32_t b = 0; b < kvm->full.n && n < cap; b++) {
        if (kvm->meta[b].cached) {
            out[n++] = kvm->meta[b].hash;
        }
    }
    return n;
}

int32_t crd_kvm_prefix_hashes(uint64_t seed, int32_t block_size, const int32_t *tokens,
                              int32_t n_tokens, uint64_t *out, int32_t cap)
{
    int32_t n = 0;
    uint64_t h = seed;
    for (int32_t i = 0; (i + 1) * block_size <= n_tokens && n < cap; i++) {
        h = chain_hash(h, tokens + (size_t)i * block_size, block_size);
        out[n++] = h;
    }
    return n;
}

void crd_kvm_forget_cached(crd_kvm_t *kvm)
{
    /* idle cached blocks go back to the free stack (hash_remove frees their idle
     * sliding blocks) */
    while (kvm->full.lru_head != NIL) {
        int32_t b = kvm->full.lru_head;
        lru_unlink(&kvm->full, b);
        hash_remove(kvm, b);
        free_push(&kvm->full, b);
    }
    /* blocks still in use stay with their sequences but are no longer shared; sliding
     * blocks still in use are freed when their sequence lets them go */
    for (int32_t b = 0; b < kvm->full.n; b++) {
        if (kvm->meta[b].cached) {
            hash_remove(kvm, b);
        }
    }
}

int32_t crd_kvm_seq_state_slot(const crd_kv_seq_t *seq)
{
    return seq->state_slot;
}

int32_t crd_kvm_state_slots_free(const crd_kvm_t *kvm)
{
    int32_t n = 0;
    for (int32_t i = 0; i < kvm->n_state_slots; i++) {
        n += !kvm->slot_used[i];
    }
    return n;
}

int32_t crd_kvm_state_slot_take(crd_kvm_t *kvm)
{
    for (int32_t i = 0; i < kvm->n_state_slots; i++) {
        if (!kvm->slot_used[i]) {
            kvm->slot_used[i] = 1;
            return i;
        }
    }
    return NIL;
}

void crd_kvm_state_slot_put(crd_kvm_t *kvm, int32_t slot)
{
    TDM_ASSERT(slot >= 0 && slot < kvm->n_state_slots && kvm->slot_used[slot]);
    kvm->slot_used[slot] = 0;
}

void crd_kvm_seq_state_move(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t slot)
{
    TDM_ASSERT(slot >= 0 && slot < kvm->n_state_slots && kvm->slot_used[slot] &&
               slot != seq->state_slot);
    if (seq->state_slot != NIL) {
        kvm->slot_used[seq->state_slot] = 0;
    }
    seq->state_slot = slot;
}

int32_t crd_kvm_seq_state_load(const crd_kvm_t *kvm, const crd_kv_seq_t *seq)
{
    return seq->snap_load != NIL ? kvm->n_state_slots + seq->snap_load : NIL;
}

int32_t crd_kvm_seq_save_point(const crd_kvm_t *kvm, const crd_kv_seq_t *seq, int32_t n_tokens)
{
    if (kvm->snap.n == 0 || n_tokens < 1) {
        return 0;
    }
    const int32_t p = (n_tokens - 1) / kvm->block_size * kvm->block_size;
    if (kvm->state_every > 0) {
        const int32_t every = kvm->state_every * kvm->block_size;
        const int32_t next = (seq->n_computed / every + 1) * every;
        if (next < p) {
            return next;
        }
    }
    return p > seq->n_computed ? p : 0;
}

int32_t crd_kvm_seq_state_save(crd_kvm_t *kvm, crd_kv_seq_t *seq, int32_t n)
{
    const int32_t bs = kvm->block_size;
    if (kvm->snap.n == 0 || seq->snap_save != NIL || n <= 0 || n % bs != 0 ||
        n / bs > seq->n_blocks) {
        return NIL;
    }
    bool evicted;
    const int32_t s = pool_take(&kvm->snap, &evicted);
    if (s == NIL) {
        return NIL; /* every stored state is in use: this prefix goes without */
    }
    if (evicted) {
        kvm->meta[kvm->snap_owner[s]].snap = NIL;
        kvm->snap_owner[s] = NIL;
    }
    seq->snap_save = s;
    seq->snap_block = n / bs - 1;
    return kvm->n_state_slots + s;
}
