/*
 * step_graph.h - the bookkeeping of captured steps (CUDA graphs), apart from CUDA so the
 * CPU tests exercise it.
 *
 * A decode step of a given shape launches the same kernels with the same arguments every
 * time; only the contents of device memory (token ids, positions, block tables, the KV
 * cache) change. Such a step is captured once as a CUDA graph and then replayed with one
 * launch. The shape is the key: tokens, rows with logits, and the bucket of the longest
 * context (the attention grid). A key is captured the second time it is seen (a one-off
 * prefill shape is never captured), at most `capacity` graphs are kept (least recently
 * used goes), and every op's arguments are hashed into a fingerprint during capture and
 * again on each replay: a replay whose ops differ from the captured ones is not launched
 * (the step runs again without the graph, and the key is dropped), so a key that misses
 * some argument costs speed, never correctness.
 */
#ifndef KERN_STEP_GRAPH_H
#define KERN_STEP_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kern_graph_key {
    int32_t n_tokens;
    int32_t n_out;
    int32_t ctx_bucket; /* the attention grid's span: a power of two of segments */
} kern_graph_key_t;

typedef enum kern_graph_action {
    KERN_GRAPH_EAGER = 0, /* run the ops as they come                           */
    KERN_GRAPH_CAPTURE,   /* record them into a graph, launch it at the end     */
    KERN_GRAPH_REPLAY,    /* skip them (hash only), launch the stored graph     */
} kern_graph_action_t;

typedef struct kern_graph_cache kern_graph_cache_t;

/* capacity graphs at most; capture_after: sightings of a key before it is captured
 * (1: the second step of a shape is captured). free_exec releases a stored graph. */
kern_graph_cache_t *kern_graph_cache_create(int capacity, int capture_after,
                                            void (*free_exec)(void *exec));
void kern_graph_cache_destroy(kern_graph_cache_t *c); /* frees every stored graph */

/* What to do with a step of this key; for REPLAY, *exec is the graph and *fingerprint the
 * hash its ops had when captured. */
kern_graph_action_t kern_graph_begin(kern_graph_cache_t *c, const kern_graph_key_t *key,
                                     void **exec, uint64_t *fingerprint);

/* Stores the graph captured for key (evicting the least recently used when full). */
void kern_graph_store(kern_graph_cache_t *c, const kern_graph_key_t *key, void *exec,
                      uint64_t fingerprint);

/* Forgets key's graph (after a mismatch or a failed capture); it is not captured again. */
void kern_graph_drop(kern_graph_cache_t *c, const kern_graph_key_t *key);

/* Forgets every graph (the memory they point into changed: a new KV cache, new scratch). */
void kern_graph_clear(kern_graph_cache_t *c);

int kern_graph_count(const kern_graph_cache_t *c);

/* A step's fingerprint: every op's id and argument bytes, in order (XXH3). */
typedef struct kern_fingerprint {
    void *state; /* XXH3_state_t */
} kern_fingerprint_t;

bool kern_fingerprint_init(kern_fingerprint_t *f);
void kern_fingerprint_reset(kern_fingerprint_t *f);
void kern_fingerprint_add(kern_fingerprint_t *f, uint32_t op, const void *args, size_t n);
uint64_t kern_fingerprint_value(const kern_fingerprint_t *f);
void kern_fingerprint_free(kern_fingerprint_t *f);

#ifdef __cplusplus
}
#endif

#endif
