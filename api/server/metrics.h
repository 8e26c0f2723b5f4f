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
#include "coordinator/router.h"
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

/* One engine group (coordinator/router.h): what the router counted, its engine's figures,
 * and for a shard group its state and the shards' communication counters. */
typedef struct srv_group_metrics {
    const crd_router_group_stats_t *route;
    const crd_engine_stats_t *es;
    const xp_group_health_t *health; /* NULL: a local engine */
    const xp_remote_stats_t *stats;  /* NULL: a local engine */
} srv_group_metrics_t;

/* The exposition text (malloc'd) with the engines' figures summed in es and per group in
 * gm[n_groups] (label group="NAME"); es NULL: not loaded yet. */
char *srv_metrics_render(srv_metrics_t *m, const crd_engine_stats_t *es,
                         const srv_group_metrics_t *gm, int n_groups, const char *model,
                         size_t *len);

#endif
