/* step_graph.c - captured-step bookkeeping: keys, sightings, LRU, fingerprints (see
 * step_graph.h). */
#include "kernels/step_graph.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* A key seen, with its graph once captured. Dropped keys stay as "never capture". */
typedef struct entry {
    kern_graph_key_t key;
    int seen;
    bool banned;
    void *exec; /* NULL until captured */
    uint64_t fingerprint;
    uint64_t last_use;
} entry_t;

struct kern_graph_cache {
    int capacity, capture_after;
    void (*free_exec)(void *exec);
    entry_t *e;
    int n, cap;
    uint64_t clock;
};

/* Keys remembered (captured or not) at most: an unbounded stream of prefill shapes must
 * not grow the table. */
#define MAX_KEYS 256

static bool same(const kern_graph_key_t *a, const kern_graph_key_t *b)
{
    return a->n_tokens == b->n_tokens && a->n_out == b->n_out && a->ctx_bucket == b->ctx_bucket;
}

kern_graph_cache_t *kern_graph_cache_create(int capacity, int capture_after,
                                            void (*free_exec)(void *exec))
{
    kern_graph_cache_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->capacity = capacity > 0 ? capacity : 1;
    c->capture_after = capture_after >= 0 ? capture_after : 0;
    c->free_exec = free_exec;
    return c;
}

static void release(kern_graph_cache_t *c, entry_t *e)
{
    if (e->exec != NULL && c->free_exec != NULL) {
        c->free_exec(e->exec);
    }
    e->exec = NULL;
}

void kern_graph_cache_destroy(kern_graph_cache_t *c)
{
    if (c == NULL) {
        return;
    }
    for (int i = 0; i < c->n; i++) {
        release(c, &c->e[i]);
    }
    free(c->e);
    free(c);
}

static entry_t *find(kern_graph_cache_t *c, const kern_graph_key_t *key)
{
    for (int i = 0; i < c->n; i++) {
        if (same(&c->e[i].key, key)) {
            return &c->e[i];
        }
    }
    return NULL;
}

/* A new entry, forgetting the least recently used uncaptured key when the table is full. */
static entry_t *add(kern_graph_cache_t *c, const kern_graph_key_t *key)
{
    if (c->n == MAX_KEYS) {
        int victim = -1;
        for (int i = 0; i < c->n; i++) {
            if (c->e[i].exec == NULL && (victim < 0 || c->e[i].last_use < c->e[victim].last_use)) {
                victim = i;
            }
        }
        if (victim < 0) {
            return NULL; /* every remembered key holds a graph: capacity >= MAX_KEYS */
        }
        c->e[victim] = c->e[--c->n];
    }
    if (c->n == c->cap) {
        int nc = c->cap > 0 ? 2 * c->cap : 16;
        entry_t *ne = realloc(c->e, (size_t)nc * sizeof(*ne));
        if (ne == NULL) {
            return NULL;
        }
        c->e = ne;
        c->cap = nc;
    }
    entry_t *e = &c->e[c->n++];
    memset(e, 0, sizeof(*e));
    e->key = *key;
    return e;
}

kern_graph_action_t kern_graph_begin(kern_graph_cache_t *c, const kern_graph_key_t *key,
                                     void **exec, uint64_t *fingerprint)
{
    entry_t *e = find(c, key);
    if (e == NULL) {
        e = add(c, key);
        if (e == NULL) {
            return KERN_GRAPH_EAGER;
        }
    }
    e->last_use = ++c->clock;
    if (e->banned) {
        return KERN_GRAPH_EAGER;
    }
    if (e->exec != NULL) {
        *exec = e->exec;
        *fingerprint = e->fingerprint;
        return KERN_GRAPH_REPLAY;
    }
    return e->seen++ >= c->capture_after ? KERN_GRAPH_CAPTURE : KERN_GRAPH_EAGER;
}

int kern_graph_count(const kern_graph_cache_t *c)
{
    int n = 0;
    for (int i = 0; i < c->n; i++) {
        n += c->e[i].exec != NULL;
    }
    return n;
}

void kern_graph_store(kern_graph_cache_t *c, const kern_graph_key_t *key, void *exec,
                      uint64_t fingerprint)
{
    entry_t *e = find(c, key);
    if (e == NULL) {
        e = add(c, key);
    }
    if (e == NULL) {
        if (c->free_exec != NULL) {
            c->free_exec(exec);
        }
        return;
    }
    release(c, e);
    if (kern_graph_count(c) >= c->capacity) {
        entry_t *lru = NULL;
        for (int i = 0; i < c->n; i++) {
            if (c->e[i].exec != NULL && (lru == NULL || c->e[i].last_use < lru->last_use)) {
                lru = &c->e[i];
            }
        }
        if (lru != NULL) {
            release(c, lru);
        }
    }
    e->exec = exec;
    e->fingerprint = fingerprint;
    e->last_use = ++c->clock;
}

void kern_graph_drop(kern_graph_cache_t *c, const kern_graph_key_t *key)
{
    entry_t *e = find(c, key);
    if (e == NULL) {
        e = add(c, key);
    }
    if (e != NULL) {
        release(c, e);
        e->banned = true;
    }
}

void kern_graph_clear(kern_graph_cache_t *c)
{
    for (int i = 0; i < c->n; i++) {
        release(c, &c->e[i]);
    }
    c->n = 0;
}

bool kern_fingerprint_init(kern_fingerprint_t *f)
{
    f->state = XXH3_createState();
    if (f->state == NULL) {
        return false;
    }
    kern_fingerprint_reset(f);
    return true;
}

void kern_fingerprint_reset(kern_fingerprint_t *f)
{
    XXH3_64bits_reset((XXH3_state_t *)f->state);
}

void kern_fingerprint_add(kern_fingerprint_t *f, uint32_t op, const void *args, size_t n)
{
    XXH3_64bits_update((XXH3_state_t *)f->state, &op, sizeof(op));
    if (n > 0) {
        XXH3_64bits_update((XXH3_state_t *)f->state, args, n);
    }
}

uint64_t kern_fingerprint_value(const kern_fingerprint_t *f)
{
    return XXH3_64bits_digest((const XXH3_state_t *)f->state);
}

void kern_fingerprint_free(kern_fingerprint_t *f)
{
    if (f->state != NULL) {
        XXH3_freeState((XXH3_state_t *)f->state);
        f->state = NULL;
    }
}
