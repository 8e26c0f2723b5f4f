/*
 * topo_layout.c - the engine-group layout for a model, some machines and a load (a pure
 * function; the rule and the figures behind it: docs/distributed.md, "Which layout").
 *
 * The order of the rule:
 *   1. one machine: one engine, nothing to choose;
 *   2. a replica that does not fit one machine: one group over all of them (TP/EP), the
 *      only layout left; replicas are impossible and the plan says so;
 *   3. few streams (<= TOPO_LAYOUT_SPLIT_MAX_STREAMS): one TP group, whose steps use every
 *      machine for every token (replicas would leave machines idle);
 *   4. prompts whose uncached part outweighs the answers (prompt tokens >=
 *      TOPO_LAYOUT_DISAGG_RATIO x answer tokens) on a model and device that can hand KV
 *      over: prefill groups paired with decode groups, so the prompts' work never stalls
 *      the streams;
 *   5. otherwise (the agent swarm: a long shared prompt the cache holds, short new turns)
 *      one replica per machine with prefix routing.
 */
#include "topology/topo_layout.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* bench/layouts.py, SmolLM2 on 2 shards of one thread: at 4 streams one TP group gave
 * the most output (and the lowest inter-token latency); from 16 streams on two replicas
 * did (docs/benchmarks.md, "Engine-group layouts"). */
#define TOPO_LAYOUT_SPLIT_MAX_STREAMS 4

/* A prefill group pays off when it is as busy as its decode group: new prompt tokens per
 * turn >= this many times the answer's tokens. bench/layouts.py (d): with the shared prompt
 * cached and ~60-token new turns the prefill group idled and prefill + decode gave about
 * half of two replicas' output; prefill runs about this many times faster per token than
 * decode on one machine (docs/benchmarks.md). */
#define TOPO_LAYOUT_DISAGG_RATIO 8

#define DEFAULT_ANSWER_TOKENS 128

static void note(topo_layout_t *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(topo_layout_t *out, const char *fmt, ...)
{
    if (out->n_notes >= TOPO_MAX_NOTES) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->notes[out->n_notes], TOPO_NOTE_MAX, fmt, ap);
    va_end(ap);
    out->n_notes++;
}

static double gib(uint64_t b)
{
    return (double)b / (double)(1ull << 30);
}

const char *topo_layout_name(topo_layout_kind_t k)
{
    switch (k) {
    case TOPO_LAYOUT_SINGLE:
        return "single";
    case TOPO_LAYOUT_REPLICAS:
        return "replicas";
    case TOPO_LAYOUT_SPLIT:
        return "split";
    case TOPO_LAYOUT_PREFILL_DECODE:
        return "prefill-decode";
    }
    return "?";
}

void topo_layout_recommend(const topo_layout_in_t *in, topo_layout_t *out)
{
    memset(out, 0, sizeof(*out));
    const int n = in->n_nodes > 0 ? in->n_nodes : 1;
    const int answer = in->answer_tokens > 0 ? in->answer_tokens : DEFAULT_ANSWER_TOKENS;
    out->replicas_possible = in->replica_bytes <= in->node_bytes;

    if (n == 1) {
        out->kind = TOPO_LAYOUT_SINGLE;
        out->groups = out->shards_per_group = 1;
        note(out, "one machine: one engine (no groups to choose between)");
        if (!out->replicas_possible) {
            note(out, "the model does not fit it: %.2f GiB needed, %.2f GiB there",
                 gib(in->replica_bytes), gib(in->node_bytes));
        }
        return;
    }
    if (!out->replicas_possible) {
        out->kind = TOPO_LAYOUT_SPLIT;
        out->groups = 1;
        out->shards_per_group = n;
        note(out,
             "replicas are impossible: one replica needs %.2f GiB, a machine has %.2f GiB; "
             "the model is split over all %d machines (one TP/EP group)",
             gib(in->replica_bytes), gib(in->node_bytes), n);
        return;
    }
    if (in->streams > 0 && in->streams <= TOPO_LAYOUT_SPLIT_MAX_STREAMS) {
        out->kind = TOPO_LAYOUT_SPLIT;
        out->groups = 1;
        out->shards_per_group = n;
        note(out,
             "%d stream%s (<= %d): one group over all %d machines, so every token's step uses "
             "all of them; replicas would leave machines idle between few streams",
             in->streams, in->streams == 1 ? "" : "s", TOPO_LAYOUT_SPLIT_MAX_STREAMS, n);
        return;
    }
    const bool prompt_heavy = in->prompt_tokens >= TOPO_LAYOUT_DISAGG_RATIO * answer;
    if (prompt_heavy && n % 2 == 0 && in->disagg_supported) {
        out->kind = TOPO_LAYOUT_PREFILL_DECODE;
        out->groups = n;
        out->shards_per_group = 1;
        note(out,
             "%d new prompt tokens per turn against %d generated (>= %dx): %d prefill group%s "
             "paired with %d decode group%s keep the prompts' work out of the streams' steps",
             in->prompt_tokens, answer, TOPO_LAYOUT_DISAGG_RATIO, n / 2, n / 2 == 1 ? "" : "s",
             n / 2, n / 2 == 1 ? "" : "s");
        return;
    }
    out->kind = TOPO_LAYOUT_REPLICAS;
    out->groups = n;
    out->shards_per_group = 1;
    if (in->streams > 0) {
        note(out,
             "%d streams (> %d): one replica per machine with --routing prefix; each "
             "conversation returns to the replica holding its prefix, no collective per layer",
             in->streams, TOPO_LAYOUT_SPLIT_MAX_STREAMS);
    } else {
        note(out, "no --streams given: taken as many streams (an agent swarm): one replica "
                  "per machine with --routing prefix");
    }
    if (prompt_heavy && !in->disagg_supported) {
        note(out, "prefill + decode groups would suit these prompts but cannot run: %s",
             in->disagg_why_not != NULL ? in->disagg_why_not : "not supported");
    } else if (prompt_heavy && n % 2 != 0) {
        note(out, "prefill + decode groups would suit these prompts but pair machines: %d is odd",
             n);
    } else if (in->prompt_tokens > 0) {
        note(out,
             "%d new prompt tokens per turn against %d generated (< %dx): a prefill group "
             "would idle while its decode group works",
             in->prompt_tokens, answer, TOPO_LAYOUT_DISAGG_RATIO);
    }
}
