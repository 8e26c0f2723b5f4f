/*
 * topo_layout.h - which engine-group layout `tandem serve` should run for a model on some
 * machines under an expected load: replicas behind the prefix-aware router, one TP/EP
 * group over every machine, or a prefill group and a decode group (docs/distributed.md,
 * "Which layout"). A pure function of numbers the caller measured or planned (the memory
 * plan of one replica, the machines, the load), so the rule is unit-tested on its own
 * (tests/unit/test_topo_layout.c) and `tandem plan --streams` only prints it.
 *
 * The rule comes from bench/layouts.py (docs/benchmarks.md, "Engine-group layouts");
 * topo_layout.c says which figure set each part.
 */
#ifndef TDM_TOPO_LAYOUT_H
#define TDM_TOPO_LAYOUT_H

#include "topology/topo.h" /* TOPO_NOTE_MAX, TOPO_MAX_NOTES */

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum topo_layout_kind {
    TOPO_LAYOUT_SINGLE = 0,     /* one machine: one engine, nothing to choose            */
    TOPO_LAYOUT_REPLICAS,       /* one replica per machine, --routing prefix            */
    TOPO_LAYOUT_SPLIT,          /* one group of every machine, TP/EP                    */
    TOPO_LAYOUT_PREFILL_DECODE, /* prefill groups paired with decode groups             */
} topo_layout_kind_t;

typedef struct topo_layout_in {
    int n_nodes;                /* machines, one shard each                                */
    uint64_t node_bytes;        /* memory one machine has for a shard                      */
    uint64_t replica_bytes;     /* what one whole replica needs there (weights + KV for its
                                   share of the streams + buffers), from the memory plan    */
    int streams;                /* expected concurrent conversations (0: not given)         */
    int prompt_tokens;          /* new prompt tokens per turn no cache holds (0: not given) */
    int answer_tokens;          /* tokens generated per turn (0: 128)                        */
    bool disagg_supported;      /* the model and device can run prefill/decode groups       */
    const char *disagg_why_not; /* when not: why (sliding-window layers, ...)            */
} topo_layout_in_t;

typedef struct topo_layout {
    topo_layout_kind_t kind;
    int groups;             /* engine groups                                           */
    int shards_per_group;   /* shards in each (its TP x EP)                            */
    bool replicas_possible; /* one replica fits one machine                            */
    int n_notes;
    char notes[TOPO_MAX_NOTES][TOPO_NOTE_MAX]; /* why, one reason a line               */
} topo_layout_t;

/* The layout for in, with the reasons; never fails (a load that is not given is taken as
 * short new prompts, the agent-swarm case). */
void topo_layout_recommend(const topo_layout_in_t *in, topo_layout_t *out);

const char *topo_layout_name(topo_layout_kind_t k); /* "replicas", "split", ... */

#ifdef __cplusplus
}
#endif

#endif
