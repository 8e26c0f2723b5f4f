/* ngram.c - the prompt-lookup index (see ngram.h). */
#include "coordinator/ngram.h"

#include <stdlib.h>
#include <string.h>

/* Open addressing over (n-gram hash -> end position of its latest occurrence). Keys are
 * 64-bit hashes with the n-gram's length mixed in; a lookup checks the tokens again, so a
 * collision can only cost a missed draft, never a wrong one (the verifier would reject a
 * wrong one anyway). */
typedef struct slot {
    uint64_t key; /* 0: empty */
    int32_t end;  /* tokens[end - n, end) is the n-gram; tokens[end] followed it */
} slot_t;

struct crd_ngram {
    slot_t *slots;
    uint32_t mask; /* capacity - 1 (a power of two)         */
    uint32_t used;
    int32_t n_seen; /* tokens[0, n_seen) are indexed as context */
};

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t gram_key(const int32_t *t, int32_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull * (uint64_t)(n + 1);
    for (int32_t i = 0; i < n; i++) {
        h = mix(h ^ (uint32_t)t[i]);
    }
    return h == 0 ? 1 : h;
}

crd_ngram_t *crd_ngram_create(void)
{
    crd_ngram_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return NULL;
    }
    g->mask = 255;
    g->slots = calloc(g->mask + 1, sizeof(slot_t));
    if (g->slots == NULL) {
        free(g);
        return NULL;
    }
    return g;
}

void crd_ngram_destroy(crd_ngram_t *g)
{
    if (g != NULL) {
        free(g->slots);
        free(g);
    }
}

static void put(slot_t *slots, uint32_t mask, uint64_t key, int32_t end, uint32_t *used)
{
    uint32_t i = (uint32_t)key & mask;
    while (slots[i].key != 0 && slots[i].key != key) {
        i = (i + 1) & mask;
    }
    if (slots[i].key == 0) {
        (*used)++;
    }
    slots[i].key = key;
    slots[i].end = end; /* the latest occurrence replaces older ones */
}

static int grow(crd_ngram_t *g)
{
    const uint32_t cap = (g->mask + 1) * 2;
    slot_t *ns = calloc(cap, sizeof(slot_t));
    if (ns == NULL) {
        return -1;
    }
    uint32_t used = 0;
    for (uint32_t i = 0; i <= g->mask; i++) {
        if (g->slots[i].key != 0) {
            put(ns, cap - 1, g->slots[i].key, g->slots[i].end, &used);
        }
    }
    free(g->slots);
    g->slots = ns;
    g->mask = cap - 1;
    g->used = used;
    return 0;
}

tdm_status_t crd_ngram_update(crd_ngram_t *g, const int32_t *tokens, int32_t n)
{
    /* the n-grams ending at `end` enter once tokens[end] (their continuation) exists */
    for (int32_t end = g->n_seen + 1; end < n; end++) {
        if ((g->used + CRD_NGRAM_MAX) * 4 > (g->mask + 1) * 3 && grow(g) != 0) {
            return TDM_ERR_NO_MEMORY;
        }
        for (int32_t k = 1; k <= CRD_NGRAM_MAX && k <= end; k++) {
            put(g->slots, g->mask, gram_key(tokens + end - k, k), end, &g->used);
        }
        g->n_seen = end;
    }
    return TDM_OK;
}

static int32_t find(const crd_ngram_t *g, const int32_t *tokens, int32_t n, int32_t k)
{
    const uint64_t key = gram_key(tokens + n - k, k);
    for (uint32_t i = (uint32_t)key & g->mask; g->slots[i].key != 0; i = (i + 1) & g->mask) {
        if (g->slots[i].key == key) {
            const int32_t end = g->slots[i].end;
            if (end >= k && end < n &&
                memcmp(tokens + end - k, tokens + n - k, (size_t)k * sizeof(int32_t)) == 0) {
                return end;
            }
            return -1;
        }
    }
    return -1;
}

int32_t crd_ngram_propose(const crd_ngram_t *g, const int32_t *tokens, int32_t n, int32_t min_n,
                          int32_t max, int32_t *out)
{
    if (min_n < 1) {
        min_n = 1;
    }
    for (int32_t k = n < CRD_NGRAM_MAX ? n : CRD_NGRAM_MAX; k >= min_n; k--) {
        const int32_t end = find(g, tokens, n, k);
        if (end < 0) {
            continue;
        }
        int32_t m = 0;
        while (m < max && end + m < n) {
            out[m] = tokens[end + m];
            m++;
        }
        return m;
    }
    return 0;
}
