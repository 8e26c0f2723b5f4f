/*
 * metrics.h - Prometheus metrics of the server (GET /metrics, text format 0.0.4).
 *
 * Latency histograms and request counters are recorded by the HTTP handlers; queue,
 * token and KV figures come from the engine's statistics snapshot when rendered.
 * Thread-safe: one mutex, held only for a few additions.
 */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include "common/status.h"
#include "coordinator/engine.h"
#include "transport/exec_remote.h"

#include <stddef.h>

typedef struct srv_metrics srv_metrics_t;

typedef enum srv_hist {
    SRV_HIST_TTFT = 0, /* request arrival -> first generated token      */
    SRV_HIST_ITL,      /* between consecutive tokens of one sequence     */
    SRV_HIST_E2E,      /* request arrival -> last byte of the response   */
    SRV_HIST_COUNT
} srv_hist_t;

tdm_status_t srv_metrics_create(srv_metrics_t **out, tdm_error_t *err);
void srv_metrics_destroy(srv_metrics_t *m); /* NULL is fine */

void srv_metrics_observe(srv_metrics_t *m, srv_hist_t h, double seconds);
/* One HTTP request answered with status on a route ("/v1/chat/completions", ...). */
void srv_metrics_count_http(srv_metrics_t *m, const char *route, unsigned status);
/* One generated sequence ended for reason ("stop", "length", "tool_calls", "abort", "error"). */
void srv_metrics_count_finish(srv_metrics_t *m, const char *reason);

/* Distributed mode: the shard group's state and the shards' communication counters. */
typedef struct srv_group_metrics {
    const xp_group_health_t *health;
    const xp_remote_stats_t *stats;
} srv_group_metrics_t;

/* The exposition text (malloc'd) with the engine's figures es and the shard group's gm
 * (each may be NULL: not loaded yet / single-node). */
char *srv_metrics_render(srv_metrics_t *m, const crd_engine_stats_t *es,
                         const srv_group_metrics_t *gm, const char *model, size_t *len);

#endif
