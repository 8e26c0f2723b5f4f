/*
 * metrics.c - counters and histograms, rendered in Prometheus text format.
 *
 * Histograms use fixed buckets chosen for interactive serving (milliseconds to minutes),
 * as vLLM's do; route and finish-reason label sets are small and fixed, so they live in
 * arrays rather than a hash map.
 */
#include "api/server/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_BUCKETS 17
static const double k_buckets[SRV_HIST_COUNT][N_BUCKETS] = {
    {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
     20.0},
    {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
     0.2, 0.3, 0.5},
    {0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0, 300.0,
     600.0},
};
static const char *const k_hist_name[SRV_HIST_COUNT] = {
    "tandem_time_to_first_token_seconds",
    "tandem_inter_token_latency_seconds",
    "tandem_e2e_request_latency_seconds",
};
static const char *const k_hist_help[SRV_HIST_COUNT] = {
    "Time from request arrival to the first generated token.",
    "Time between consecutive generated tokens of a sequence.",
    "Time from request arrival to the end of its response.",
};

#define MAX_ROUTES 16
#define MAX_CODES  12
#define N_REASONS  5
static const char *const k_reasons[N_REASONS] = {"stop", "length", "tool_calls", "abort", "error"};

typedef struct hist {
    uint64_t bucket[N_BUCKETS];
    uint64_t count;
    double sum;
} hist_t;

typedef struct route_count {
    char route[48];
    unsigned code[MAX_CODES];
    uint64_t n[MAX_CODES];
    int n_codes;
} route_count_t;

struct srv_metrics {
    pthread_mutex_t mu;
    hist_t hist[SRV_HIST_COUNT];
    route_count_t routes[MAX_ROUTES];
    int n_routes;
    uint64_t finished[N_REASONS];
};

tdm_status_t srv_metrics_create(srv_metrics_t **out, tdm_error_t *err)
{
    srv_metrics_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for metrics");
    }
    pthread_mutex_init(&m->mu, NULL);
    *out = m;
    return TDM_OK;
}

void srv_metrics_destroy(srv_metrics_t *m)
{
    if (m != NULL) {
        pthread_mutex_destroy(&m->mu);
        free(m);
    }
}

void srv_metrics_observe(srv_metrics_t *m, srv_hist_t h, double seconds)
{
    pthread_mutex_lock(&m->mu);
    hist_t *x = &m->hist[h];
    for (int i = 0; i < N_BUCKETS; i++) {
        if (seconds <= k_buckets[h][i]) {
            x->bucket[i]++;
        }
    }
    x->count++;
    x->sum += seconds;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_count_http(srv_metrics_t *m, const char *route, unsigned status)
{
    pthread_mutex_lock(&m->mu);
    route_count_t *rc = NULL;
    for (int i = 0; i < m->n_routes; i++) {
        if (strcmp(m->routes[i].route, route) == 0) {
            rc = &m->routes[i];
        }
    }
    if (rc == NULL && m->n_routes < MAX_ROUTES) {
        rc = &m->routes[m->n_routes++];
        snprintf(rc->route, sizeof(rc->route), "%s", route);
    }
    if (rc != NULL) {
        int j = 0;
        while (j < rc->n_codes && rc->code[j] != status) {
            j++;
        }
        if (j == rc->n_codes && rc->n_codes < MAX_CODES) {
            rc->code[rc->n_codes++] = status;
        }
        if (j < rc->n_codes) {
            rc->n[j]++;
        }
    }
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_count_finish(srv_metrics_t *m, const char *reason)
{
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < N_REASONS; i++) {
        if (strcmp(reason, k_reasons[i]) == 0) {
            m->finished[i]++;
        }
    }
    pthread_mutex_unlock(&m->mu);
}

/* A growable text buffer for the exposition. */
typedef struct textbuf {
    char *p;
    size_t len, cap;
    int failed;
} textbuf_t;

static void tb_printf(textbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(textbuf_t *b, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !b->failed; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *np = realloc(b->p, cap);
        if (np == NULL) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static void metric(textbuf_t *b, const char *name, const char *type, const char *help,
                   const char *model, double value)
{
    tb_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s{model_name=\"%s\"} %.17g\n", name, help, name,
              type, name, model, value);
}

/* A gauge or counter with one sample per group (label group=...); shards_only: only the
 * shard groups. */
static void group_family(textbuf_t *b, const char *name, const char *type, const char *help,
                         const char *model, const srv_group_metrics_t *gm, int n, const double *v,
                         bool shards_only)
{
    tb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (int g = 0; g < n; g++) {
        if (!shards_only || gm[g].health != NULL) {
            tb_printf(b, "%s{model_name=\"%s\",group=\"%s\"} %.17g\n", name, model,
                      gm[g].route->name, v[g]);
        }
    }
}

/* The engine groups: what the router sent each (requests, prompt tokens, the part its
 * prefix cache served), its load and queue; for shard groups readiness per shard (alert on
 * tandem_shard_up == 0), formations, and what the shards report of their collectives. */
static void group_metrics(textbuf_t *b, const srv_group_metrics_t *gm, int n, const char *model)
{
    double *v = calloc((size_t)n, sizeof(double));
    if (v == NULL) {
        b->failed = 1;
        return;
    }
    bool any_shards = false;
    for (int g = 0; g < n; g++) {
        v[g] = gm[g].route->up;
        any_shards |= gm[g].health != NULL;
    }
    group_family(b, "tandem_group_up", "gauge",
                 "1 while the engine group takes requests (a shard group: formed).", model, gm, n,
                 v, false);
#define FAMILY(name, type, help, expr, shards_only)                            \
    do {                                                                       \
        for (int g = 0; g < n; g++) {                                          \
            const srv_group_metrics_t *x = &gm[g];                             \
            v[g] = x->health != NULL || !(shards_only) ? (double)(expr) : 0.0; \
        }                                                                      \
        group_family(b, name, type, help, model, gm, n, v, shards_only);       \
    } while (0)
    FAMILY("tandem_group_routed_requests_total", "counter",
           "Requests the router sent to the group.", x->route->routed, false);
    FAMILY("tandem_group_prompt_tokens_total", "counter", "Prompt tokens of those requests.",
           x->route->prompt_tokens, false);
    FAMILY("tandem_group_cached_tokens_total", "counter",
           "Of those, tokens served from the group's prefix cache.", x->route->cached_tokens,
           false);
    FAMILY("tandem_group_load_tokens", "gauge",
           "Tokens the group owes: prompt tokens not computed yet and tokens still to generate "
           "(estimated) of its requests.",
           x->route->load_tokens, false);
    FAMILY("tandem_group_requests_running", "gauge", "Requests in the group's running batch.",
           x->es->sched.n_running, false);
    FAMILY("tandem_group_requests_waiting", "gauge", "Requests queued in the group.",
           x->es->sched.n_waiting + x->es->n_inbox, false);
    FAMILY("tandem_group_kv_blocks_used", "gauge", "KV cache blocks held by the group's requests.",
           x->es->sched.kv_blocks_used, false);
    if (any_shards) {
        FAMILY("tandem_shard_group_ready", "gauge",
               "1 when every shard is in the group and steps can run.", x->health->ready, true);
        tb_printf(b, "# HELP tandem_shard_up 1 when the shard is ready in the current group.\n"
                     "# TYPE tandem_shard_up gauge\n");
        for (int g = 0; g < n; g++) {
            const xp_group_health_t *h = gm[g].health;
            for (int i = 0; h != NULL && i < h->n_shards; i++) {
                tb_printf(b,
                          "tandem_shard_up{model_name=\"%s\",group=\"%s\",rank=\"%d\","
                          "shard=\"%s\"} %d\n",
                          model, gm[g].route->name, i, h->shards[i].name,
                          strcmp(h->shards[i].state, "ready") == 0);
            }
        }
        tb_printf(b, "# HELP tandem_shard_resident_bytes Resident set of the shard after its "
                     "last load.\n# TYPE tandem_shard_resident_bytes gauge\n");
        for (int g = 0; g < n; g++) {
            const xp_group_health_t *h = gm[g].health;
            for (int i = 0; h != NULL && i < h->n_shards; i++) {
                tb_printf(b,
                          "tandem_shard_resident_bytes{model_name=\"%s\",group=\"%s\","
                          "rank=\"%d\",shard=\"%s\"} %llu\n",
                          model, gm[g].route->name, i, h->shards[i].name,
                          (unsigned long long)h->shards[i].resident_bytes);
            }
        }
        FAMILY("tandem_shard_group_formations_total", "counter",
               "Times the shard group formed (1 at start, +1 per recovery).", x->stats->formations,
               true);
        FAMILY("tandem_shard_steps_failed_total", "counter",
               "Steps that failed on the shard group (a shard missing or failing).",
               x->stats->failed_steps, true);
        FAMILY("tandem_collective_calls_total", "counter",
               "Collectives that exchanged data, summed over shards.", x->stats->coll_calls, true);
        FAMILY("tandem_collective_bytes_total", "counter",
               "Bytes the shards sent in collectives, summed over shards.", x->stats->coll_bytes,
               true);
        FAMILY("tandem_collective_seconds_total", "counter",
               "Seconds the shards spent inside collectives (waiting included), summed over "
               "shards.",
               (double)x->stats->coll_ns / 1e9, true);
        FAMILY("tandem_kv_transfer_blocks_total", "counter",
               "Disaggregated prefill: KV blocks (every layer's K and V) this prefill group put "
               "into its decode group's pool.",
               x->stats->kv_blocks, true);
        FAMILY("tandem_kv_transfer_bytes_total", "counter",
               "Disaggregated prefill: bytes those puts moved, summed over shards.",
               x->stats->kv_bytes, true);
        FAMILY("tandem_kv_transfer_seconds_total", "counter",
               "Disaggregated prefill: seconds the shards spent putting and flushing KV blocks, "
               "summed over shards.",
               (double)x->stats->kv_ns / 1e9, true);
    }
#undef FAMILY
    free(v);
}

/* Speculative decoding: per drafter (label drafter=...), and tokens per decoding step. */
static void spec_metrics(textbuf_t *b, const crd_spec_stats_t *sp, const char *model)
{
    static const char *const names[2] = {"tandem_spec_draft_tokens_total",
                                         "tandem_spec_accepted_tokens_total"};
    static const char *const helps[2] = {"Drafted tokens sent to verification, per drafter.",
                                         "Drafted tokens the verification accepted, per drafter."};
    for (int k = 0; k < 2; k++) {
        tb_printf(b, "# HELP %s %s\n# TYPE %s counter\n", names[k], helps[k], names[k]);
        for (int d = CRD_SPEC_NGRAM; d < CRD_SPEC_N_MODES; d++) {
            const uint64_t v = k == 0 ? sp->drafted[d] : sp->accepted[d];
            tb_printf(b, "%s{model_name=\"%s\",drafter=\"%s\"} %llu\n", names[k], model,
                      crd_spec_mode_name((crd_spec_mode_t)d), (unsigned long long)v);
        }
    }
    tb_printf(b, "# HELP tandem_spec_acceptance_rate Accepted / drafted tokens since start, per "
                 "drafter.\n# TYPE tandem_spec_acceptance_rate gauge\n");
    for (int d = CRD_SPEC_NGRAM; d < CRD_SPEC_N_MODES; d++) {
        tb_printf(b, "tandem_spec_acceptance_rate{model_name=\"%s\",drafter=\"%s\"} %.17g\n", model,
                  crd_spec_mode_name((crd_spec_mode_t)d),
                  sp->drafted[d] ? (double)sp->accepted[d] / (double)sp->drafted[d] : 0.0);
    }
    metric(b, "tandem_spec_cost_step_seconds", "gauge",
           "The speculation planner's measured time of a one-token step (0: not measured "
           "yet; with --spec on it is measured before the server is ready).",
           model, sp->cost_1);
    metric(b, "tandem_spec_verify_steps_total", "counter",
           "Sequence-steps that carried drafted tokens.", model, (double)sp->verify_steps);
    metric(b, "tandem_decode_steps_total", "counter",
           "Sequence-steps that decoded (with or without drafts).", model,
           (double)sp->decode_steps);
    metric(b, "tandem_decode_step_tokens_total", "counter",
           "Tokens those sequence-steps generated.", model, (double)sp->decode_tokens);
    metric(b, "tandem_spec_replayed_tokens_total", "counter",
           "Accepted tokens computed again after a rejected draft rolled a recurrent state "
           "back (hybrid models).",
           model, (double)sp->replayed_tokens);
    metric(b, "tandem_decode_tokens_per_step", "gauge",
           "Generated tokens per decoding sequence-step since start (1 without speculation).",
           model, sp->decode_steps ? (double)sp->decode_tokens / (double)sp->decode_steps : 0.0);
}

char *srv_metrics_render(srv_metrics_t *m, const crd_engine_stats_t *es,
                         const srv_group_metrics_t *gm, int n_groups, const char *model,
                         size_t *len)
{
    textbuf_t b = {.cap = 8192};
    b.p = malloc(b.cap);
    if (b.p == NULL) {
        return NULL;
    }
    b.p[0] = '\0';
    if (es != NULL) {
        const crd_sched_stats_t *ss = &es->sched;
        metric(&b, "tandem_requests_running", "gauge", "Requests in the running batch.", model,
               ss->n_running);
        metric(&b, "tandem_requests_waiting", "gauge", "Requests queued for admission.", model,
               ss->n_waiting + es->n_inbox);
        metric(&b, "tandem_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
               model, (double)ss->prompt_tokens);
        metric(&b, "tandem_generation_tokens_total", "counter", "Generated tokens.", model,
               (double)ss->generated_tokens);
        metric(&b, "tandem_computed_tokens_total", "counter",
               "Tokens run through the model (prompt tokens not served by the prefix cache).",
               model, (double)ss->computed_tokens);
        metric(&b, "tandem_kv_blocks_total", "gauge", "KV cache blocks.", model,
               ss->kv_blocks_total);
        metric(&b, "tandem_kv_blocks_used", "gauge", "KV cache blocks held by requests.", model,
               ss->kv_blocks_used);
        metric(&b, "tandem_kv_blocks_free", "gauge",
               "KV cache blocks free or holding only evictable cached prefixes.", model,
               ss->kv_blocks_free);
        metric(&b, "tandem_prefix_cache_queries_total", "counter",
               "Prompt tokens looked up in the prefix cache.", model, (double)ss->prefix_queries);
        metric(&b, "tandem_prefix_cache_hits_total", "counter",
               "Prompt tokens served from the prefix cache.", model, (double)ss->prefix_hits);
        metric(&b, "tandem_prefix_cache_hit_rate", "gauge",
               "Prefix cache hits / queries, in tokens, since start.", model,
               ss->prefix_queries ? (double)ss->prefix_hits / (double)ss->prefix_queries : 0.0);
        metric(&b, "tandem_step_budget_seconds", "gauge",
               "The step-time budget of the last step (0: none applied).", model,
               ss->step_budget_s);
        metric(&b, "tandem_steps_budgeted_total", "counter",
               "Steps whose prompt chunks the step-time budget cut.", model,
               (double)ss->steps_budgeted);
        metric(&b, "tandem_preemptions_total", "counter",
               "Running requests preempted for lack of KV blocks.", model, (double)ss->preemptions);
        metric(&b, "tandem_engine_steps_total", "counter", "Engine steps run.", model,
               (double)ss->steps);
        metric(&b, "tandem_engine_busy_seconds_total", "counter",
               "Seconds the engine spent in steps.", model, es->busy_s);
        metric(&b, "tandem_requests_rejected_total", "counter",
               "Submissions refused (queue full or shutting down).", model, (double)es->n_rejected);
        metric(&b, "tandem_requests_aborted_total", "counter",
               "Requests canceled before they finished (client disconnect, shutdown).", model,
               (double)ss->finished[CRD_FINISH_CANCELED]);
        spec_metrics(&b, &ss->spec, model);
    }
    if (es != NULL && gm != NULL && n_groups > 0) {
        group_metrics(&b, gm, n_groups, model);
    }
    pthread_mutex_lock(&m->mu);
    tb_printf(&b, "# HELP tandem_request_success_total Sequences finished, by reason.\n"
                  "# TYPE tandem_request_success_total counter\n");
    for (int i = 0; i < N_REASONS; i++) {
        tb_printf(&b,
                  "tandem_request_success_total{model_name=\"%s\",finished_reason=\"%s\"} %llu\n",
                  model, k_reasons[i], (unsigned long long)m->finished[i]);
    }
    tb_printf(&b, "# HELP tandem_http_requests_total HTTP requests answered, by route and status.\n"
                  "# TYPE tandem_http_requests_total counter\n");
    for (int i = 0; i < m->n_routes; i++) {
        for (int j = 0; j < m->routes[i].n_codes; j++) {
            tb_printf(&b, "tandem_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n",
                      m->routes[i].route, m->routes[i].code[j],
                      (unsigned long long)m->routes[i].n[j]);
        }
    }
    for (int h = 0; h < SRV_HIST_COUNT; h++) {
        const hist_t *x = &m->hist[h];
        tb_printf(&b, "# HELP %s %s\n# TYPE %s histogram\n", k_hist_name[h], k_hist_help[h],
                  k_hist_name[h]);
        for (int i = 0; i < N_BUCKETS; i++) {
            tb_printf(&b, "%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", k_hist_name[h], model,
                      k_buckets[h][i], (unsigned long long)x->bucket[i]);
        }
        tb_printf(&b, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", k_hist_name[h], model,
                  (unsigned long long)x->count);
        tb_printf(&b, "%s_sum{model_name=\"%s\"} %.9g\n%s_count{model_name=\"%s\"} %llu\n",
                  k_hist_name[h], model, x->sum, k_hist_name[h], model,
                  (unsigned long long)x->count);
    }
    pthread_mutex_unlock(&m->mu);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
