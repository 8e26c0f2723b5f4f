/*
 * topo_layout.c - the engine-group layout for a model, some machines and a load (a pure
 * function; the rule and the figures behind it: docs/distributed.md, "Which layout").
 *
 * The order of the rule:
 *   1. one machine: one engine, nothing to choose;
 *   2. a replica that does not fit one machine: one group over all of them (TP/EP), the
 *      only layout left; replicas are impossible and the plan says so;
 *   3. prompts whose uncached part outweighs the answers (new prompt tokens per turn >=
 *      TOPO_LAYOUT_DISAGG_RATIO x generated tokens) on a model and device that can hand KV
 *      over, and an even number of machines: prefill groups paired with decode groups;
 *   4. otherwise one replica per machine with prefix routing, at any stream count.
 */
#include "topology/topo_layout.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Replicas at every stream count: bench/layouts.py (SmolLM2, 2 shards of one thread on
 * loopback, docs/benchmarks.md "Engine-group layouts") gave two prefix-routed replicas the
 * most output at 4, 16 and 32 streams; one TP 2 group gave 0.61x of it at 4 streams and
 * less further on (a collective per layer, and the shared prompt computed by both halves
 * of every step). So a TP/EP group is the layout only for a model a machine cannot hold.
 *
 * A prefill group pays off only when it is as busy as its decode group: a machine
 * prefills about 218 tokens/s (1 thread, docs/benchmarks.md "Engine") while a decode group
 * of 16-32 streams produced 41-52 tokens/s in bench/layouts.py (d), so a turn's new prompt
 * tokens must be about 5 times its generated tokens. Below that (the measured agent load:
 * the shared prompt cached, ~60-190 new tokens against 128 generated) prefill + decode
 * gave 0.62-0.72x of the replicas' output. */
#define TOPO_LAYOUT_DISAGG_RATIO 5

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
             "%d stream%s: one replica per machine with --routing prefix; each conversation "
             "returns to the replica holding its prefix, no collective per layer (measured: "
             "replicas ahead of one TP group at 4 to 32 streams)",
             in->streams, in->streams == 1 ? "" : "s");
        if (in->streams < n) {
            note(out, "fewer streams than machines: %d machine%s will idle", n - in->streams,
                 n - in->streams == 1 ? "" : "s");
        }
    } else {
        note(out, "no --streams given: one replica per machine with --routing prefix");
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
