/*
 * server.c - `tandem serve` life cycle: listen, load, serve, drain on SIGTERM.
 *
 * The listener starts before the model loads so that /health can say 503 "loading"
 * (orchestrators poll it). Signals are blocked in every thread and taken synchronously by
 * the main thread with sigwait, so no handler code runs in signal context.
 *
 * Shutdown: /health says "draining", new generations are refused (503), in-flight ones
 * get cfg.shutdown_timeout seconds to finish, then are canceled (clients get an error
 * event or a 503); then the listener closes.
 */
#include "api/server/srv.h"

#include "common/log.h"
#include "coordinator/draft_model.h"
#include "coordinator/mtp.h"
#include "model/hparams.h"
#include "topology/topo_plan.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* The id clients use: --served-model-name, else the file's base name without ".gguf"
 * (what users type; general.name is often a long descriptive title). */
static char *model_name(const srv_config_t *cfg)
{
    if (cfg->served_name != NULL) {
        return strdup(cfg->served_name);
    }
    const char *base = strrchr(cfg->model_path, '/');
    base = base != NULL ? base + 1 : cfg->model_path;
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".gguf") == 0) {
        n -= 5;
    }
    char *s = strndup(base, n);
    /* printable and quote-free: it goes into metric labels */
    for (char *p = s; p != NULL && *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\') {
            *p = '_';
        }
    }
    return s;
}

/* Logits rows per step: one per running sequence, plus room for the drafts speculative
 * decoding verifies (topology/topo_plan.h topo_logits_rows, the rule `tandem plan` sizes
 * memory by). A server started with --spec off still verifies what requests ask for,
 * within the rows its idle sequences leave. A model with recurrent layers has one state
 * slot per logits row (and as many stored prefix states by default): its drafting
 * sequences need one spare slot each (coordinator/scheduler.c, spec_rollback), up to
 * TOPO_SPEC_RECURRENT_SPARES of them, which is where the cost model stops drafting anyway. */
static int logits_rows(const srv_config_t *cfg, const gguf_ctx_t *g)
{
    mdl_hparams_t hp = {0};
    if (mdl_hparams_load(g, &hp, NULL) != TDM_OK) {
        hp.n_recurrent = 0; /* the load reports it later */
    }
    return topo_logits_rows(&hp, cfg->max_running, cfg->batch, cfg->spec_mode != CRD_SPEC_OFF,
                            cfg->spec_max);
}

/* A draft model's tokens must mean what the model's mean: its drafts are verified as token
 * ids. The vocabulary size, the tokenizer kind, every token string and every merge are
 * compared (a few MB of memcmp at start-up). */
static tdm_status_t same_vocab(const gguf_ctx_t *a, const gguf_ctx_t *b, tdm_error_t *err)
{
    static const char *const keys[2] = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"};
    gguf_str_t ma = {0}, mb = {0};
    gguf_get_str(a, "tokenizer.ggml.model", &ma, NULL);
    gguf_get_str(b, "tokenizer.ggml.model", &mb, NULL);
    if (ma.len != mb.len || (ma.len > 0 && memcmp(ma.ptr, mb.ptr, ma.len) != 0)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "the draft model's tokenizer is '%.*s', the model's '%.*s'",
                             (int)mb.len, mb.ptr ? mb.ptr : "", (int)ma.len, ma.ptr ? ma.ptr : "");
    }
    for (int k = 0; k < 2; k++) {
        uint64_t na = 0, nb = 0;
        const void *da = NULL, *db = NULL;
        const bool ha = gguf_get_arr(a, keys[k], GGUF_TYPE_STRING, &na, &da, NULL) == TDM_OK;
        const bool hb = gguf_get_arr(b, keys[k], GGUF_TYPE_STRING, &nb, &db, NULL) == TDM_OK;
        if (ha != hb || na != nb) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "the draft model has another vocabulary: %s has %llu entries "
                                 "there, %llu in the model",
                                 keys[k], (unsigned long long)nb, (unsigned long long)na);
        }
        const gguf_str_t *sa = da, *sb = db;
        for (uint64_t i = 0; i < na; i++) {
            if (sa[i].len != sb[i].len || memcmp(sa[i].ptr, sb[i].ptr, sa[i].len) != 0) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "the draft model has another vocabulary: %s[%llu] is "
                                     "'%.*s' there, '%.*s' in the model",
                                     keys[k], (unsigned long long)i, (int)sb[i].len, sb[i].ptr,
                                     (int)sa[i].len, sa[i].ptr);
            }
        }
    }
    return TDM_OK;
}

/* The draft model of a group: an executor in this process whose KV cache holds as many
 * tokens as the model's (it drafts for the sequences that cache holds), at most
 * max_running sequences of the full context; blocks are handed out as sequences grow. */
static tdm_status_t load_draft(srv_server_t *s, srv_group_t *g, tdm_error_t *err)
{
    const srv_config_t *cfg = &s->cfg;
    mdl_hparams_t hp;
    tdm_status_t st = mdl_hparams_load(s->draft_gguf, &hp, err);
    if (st != TDM_OK) {
        return st;
    }
    /* f32 K and V per layer (a smaller cache type only gives more blocks) */
    const size_t per_token =
        2u * (size_t)hp.n_layer * (size_t)hp.n_head_kv * (size_t)hp.head_dim * sizeof(float);
    size_t tokens = (size_t)cfg->max_running * (size_t)g->ex.n_ctx_max;
    const size_t held = (size_t)g->ex.n_blocks * (size_t)g->ex.block_tokens;
    tokens = held < tokens ? held : tokens;
    xp_local_params_t lp = {.n_threads = cfg->threads,
                            .n_batch_max = cfg->batch,
                            .n_logits_max = cfg->max_running,
                            .n_ctx = g->ex.n_ctx_max,
                            .kv_bytes = per_token * tokens,
                            .device = cfg->device,
                            .kv_type = cfg->kv_type,
                            .n_state_store = -1};
    if ((st = xp_local_exec_create(s->draft_gguf, &lp, &g->draft_lx, &g->draft_ex, err)) !=
        TDM_OK) {
        return st;
    }
    if (g->draft_ex.n_vocab != g->ex.n_vocab) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "the draft model has %d tokens in its vocabulary, the model %d",
                             (int)g->draft_ex.n_vocab, (int)g->ex.n_vocab);
    }
    if ((st = crd_draft_model_create(&g->draft_ex, &g->draft, err)) != TDM_OK) {
        return st;
    }
    TDM_INFO("serve", "draft model '%s': %d KV blocks of %d tokens", cfg->draft_model,
             (int)g->draft_ex.n_blocks, (int)g->draft_ex.block_tokens);
    return TDM_OK;
}

/* The router's "is this group up": a shard group is while it is formed. */
static bool group_up(void *rx)
{
    const int n = xp_remote_exec_n_shards(rx);
    xp_group_health_t h = {.shards = calloc((size_t)n, sizeof(xp_shard_health_t))};
    if (h.shards == NULL) {
        return true; /* cannot tell: a step there fails with the reason if it is not */
    }
    xp_remote_exec_health(rx, &h);
    free(h.shards);
    return h.ready;
}

/* One engine group: its executor (a shard group or this process) and the engine over it. */
static tdm_status_t load_group(srv_server_t *s, const srv_group_config_t *gc, srv_group_t *g,
                               int n_ctx, size_t kv_bytes, tdm_error_t *err)
{
    const srv_config_t *cfg = &s->cfg;
    tdm_status_t st;
    g->name = strdup(gc->name);
    g->role = (crd_group_role_t)gc->role;
    if (g->name == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for a group");
    }
    if (gc->n_shards > 0 && cfg->spec_mode == CRD_SPEC_MTP) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "--spec mtp runs on one node only: the MTP block is not run over "
                             "shards yet (use --spec ngram, or serve without --shards)");
    }
    if (gc->n_shards > 0) {
        xp_remote_params_t rp = {.g = s->gguf,
                                 .n_shards = gc->n_shards,
                                 .shards = (const char *const *)gc->shards,
                                 .tp = gc->tp,
                                 .ep = gc->ep,
                                 .n_batch_max = cfg->batch,
                                 .n_logits_max = logits_rows(cfg, s->gguf),
                                 .n_ctx = n_ctx,
                                 .kv_bytes = kv_bytes,
                                 .proto = cfg->collective,
                                 .coll_timeout_ms = cfg->coll_timeout_ms,
                                 .heartbeat_timeout_ms = cfg->shard_timeout_ms,
                                 .start_timeout_ms = cfg->shard_start_timeout_s * 1000,
                                 .contiguous_experts = cfg->contiguous_experts,
                                 .cluster_secret = cfg->cluster_secret,
                                 /* prefill and decode groups: the KV storage registered
                                  * (the decode side's is written, both are compared) */
                                 .kv_export = gc->role != CRD_ROLE_MIXED,
                                 /* as xp_local: 0 its default (max_running), < 0 none */
                                 .n_state_store = cfg->state_cache < 0    ? 0
                                                  : cfg->state_cache == 0 ? -1
                                                                          : cfg->state_cache};
        if ((st = xp_remote_exec_create(&rp, &g->rx, &g->ex, err)) != TDM_OK) {
            return st;
        }
    } else {
        xp_local_params_t lp = {.n_threads = cfg->threads,
                                .n_batch_max = cfg->batch,
                                .n_logits_max = logits_rows(cfg, s->gguf),
                                .n_ctx = n_ctx,
                                .kv_bytes = kv_bytes,
                                .device = cfg->device,
                                .kv_type = cfg->kv_type,
                                /* xp_local: 0 its default (max_running), < 0 none */
                                .n_state_store = cfg->state_cache < 0    ? 0
                                                 : cfg->state_cache == 0 ? -1
                                                                         : cfg->state_cache,
                                .mtp = cfg->spec_mode == CRD_SPEC_MTP};
        if ((st = xp_local_exec_create(s->gguf, &lp, &g->lx, &g->ex, err)) != TDM_OK) {
            if (lp.mtp) {
                tdm_error_t lerr = *err;
                tdm_error_clear(err);
                return tdm_error_set(err, st, "--spec mtp: %s", tdm_error_msg(&lerr));
            }
            return st;
        }
        if (lp.mtp && (st = crd_mtp_create(&g->ex, &g->mtp, err)) != TDM_OK) {
            return st;
        }
    }
    if (s->draft_gguf != NULL && (st = load_draft(s, g, err)) != TDM_OK) {
        return st;
    }
    crd_sched_params_t sp = {.token_budget = cfg->batch,
                             .max_running = cfg->max_running,
                             .max_waiting = cfg->max_waiting,
                             .n_ctx = g->ex.n_ctx_max,
                             .cache_seed = 0x74616e64656dULL ^ (uint64_t)g->ex.n_vocab,
                             .state_every = cfg->state_every,
                             .max_step_s = cfg->max_step_s,
                             .spec = {.mode = (crd_spec_mode_t)cfg->spec_mode,
                                      .max_draft = cfg->spec_max,
                                      .always = cfg->spec_always,
                                      .draft = g->draft,
                                      .mtp = g->mtp}};
    return crd_engine_create(&g->ex, &sp, &g->engine, err);
}

static tdm_status_t load_model(srv_server_t *s, tdm_error_t *err)
{
    const srv_config_t *cfg = &s->cfg;
    tdm_status_t st = gguf_open(cfg->model_path, &s->gguf, err);
    if (st != TDM_OK) {
        return st;
    }
    if ((st = tok_vocab_from_gguf(s->gguf, &s->vocab, err)) != TDM_OK) {
        return st;
    }
    tdm_error_t terr = {0};
    if (tpl_from_gguf(s->gguf, NULL, &s->tpl, &terr) != TDM_OK) {
        TDM_WARN("serve", "no usable chat template (%s): /v1/chat/completions will refuse requests",
                 tdm_error_msg(&terr));
        s->tpl = NULL;
    }
    const char *src = s->tpl != NULL ? tpl_source(s->tpl) : "";
    if (cfg->tool_parser == NULL || strcmp(cfg->tool_parser, "auto") == 0) {
        s->tool_format = prs_tool_format_from_template(src);
    } else if ((st = prs_tool_format_from_name(cfg->tool_parser, &s->tool_format, err)) != TDM_OK) {
        return st;
    }
    s->template_has_think = strstr(src, "<think>") != NULL;
    if (cfg->draft_model != NULL) {
        tdm_error_t derr = {0};
        if ((st = gguf_open(cfg->draft_model, &s->draft_gguf, &derr)) != TDM_OK ||
            (st = same_vocab(s->gguf, s->draft_gguf, &derr)) != TDM_OK) {
            return tdm_error_set(err, st, "--draft-model %s: %s", cfg->draft_model,
                                 tdm_error_msg(&derr));
        }
    }
    s->model_name = model_name(cfg);

    int n_ctx = cfg->ctx_size;
    size_t kv_bytes = cfg->kv_bytes;
    snprintf(s->ctx_note, sizeof(s->ctx_note), "%d tokens, set by --ctx-size", n_ctx);
    if (n_ctx <= 0 && (st = srv_default_ctx(cfg, s->gguf, &n_ctx, &kv_bytes, s->ctx_note,
                                            sizeof(s->ctx_note), err)) != TDM_OK) {
        return st;
    }
    /* one group unless the cluster file named several: the shards given, or this process */
    srv_group_config_t one = {.name = cfg->n_shards > 0 ? "shards" : "local",
                              .shards = cfg->shards,
                              .n_shards = cfg->n_shards,
                              .tp = cfg->tp,
                              .ep = cfg->ep};
    const srv_group_config_t *gc = cfg->n_groups > 0 ? cfg->groups : &one;
    const int n_groups = cfg->n_groups > 0 ? cfg->n_groups : 1;
    s->groups = calloc((size_t)n_groups, sizeof(*s->groups));
    if (s->groups == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for the engine groups");
    }
    if ((st = crd_router_create((crd_routing_t)cfg->routing, &s->router, err)) != TDM_OK) {
        return st;
    }
    for (int i = 0; i < n_groups; i++) {
        s->n_groups = i + 1;
        if ((st = load_group(s, &gc[i], &s->groups[i], n_ctx, kv_bytes, err)) != TDM_OK) {
            if (n_groups > 1) {
                /* the first error set wins, so clear it before naming the group */
                tdm_error_t gerr = *err;
                tdm_error_clear(err);
                return tdm_error_set(err, st, "group '%s': %s", gc[i].name, tdm_error_msg(&gerr));
            }
            return st;
        }
        srv_group_t *g = &s->groups[i];
        if ((st = crd_router_add(s->router, g->name, g->role, g->engine,
                                 g->rx != NULL ? group_up : NULL, g->rx, err)) != TDM_OK) {
            return st;
        }
        TDM_INFO("serve", "group '%s' (%s): %d KV blocks of %d tokens (%s)", g->name,
                 crd_group_role_name(g->role), (int)g->ex.n_blocks, (int)g->ex.block_tokens,
                 g->rx != NULL ? "held by the shards" : "in this process");
    }
    if ((st = srv_disagg_setup(s, err)) != TDM_OK) {
        return st;
    }
    s->n_ctx = crd_router_n_ctx(s->router);
    s->created = (int64_t)time(NULL);
    TDM_INFO("serve",
             "model '%s': context %d tokens, %d engine group%s (routing: %s), tool calls: %s, "
             "reasoning parser: %s",
             s->model_name, (int)s->n_ctx, n_groups, n_groups == 1 ? "" : "s",
             crd_routing_name((crd_routing_t)cfg->routing), prs_tool_format_name(s->tool_format),
             s->tool_format == PRS_TOOL_HARMONY ? "harmony"
             : s->template_has_think            ? "on"
                                                : "off");
    return TDM_OK;
}

static void unload(srv_server_t *s)
{
    /* engines first: an engine thread still in a step relays its events through the router
     * (per-group load counts), so the router must outlive every engine (ASan: a write to a
     * freed router group after a drain that timed out under a 64-stream soak) */
    for (int i = 0; i < s->n_groups; i++) {
        srv_group_t *g = &s->groups[i];
        crd_engine_destroy(g->engine);
        crd_draft_model_destroy(g->draft);
        crd_mtp_destroy(g->mtp);
        xp_local_exec_destroy(g->draft_lx);
        xp_local_exec_destroy(g->lx);
        xp_remote_exec_destroy(g->rx);
        free(g->name);
    }
    crd_router_destroy(s->router);
    s->router = NULL;
    free(s->groups);
    s->groups = NULL;
    s->n_groups = 0;
    tpl_destroy(s->tpl);
    tok_vocab_destroy(s->vocab);
    gguf_close(s->gguf);
    gguf_close(s->draft_gguf);
    s->draft_gguf = NULL;
    free(s->model_name);
}

/* Waits until no generation handler is active, or the deadline passes. */
static bool drain(srv_server_t *s, double deadline)
{
    while (tdm_now_s() < deadline) {
        if (atomic_load(&s->n_handlers) == 0 &&
            (s->router == NULL || crd_router_n_active(s->router) == 0)) {
            return true;
        }
        sleep_s(0.05);
    }
    return false;
}

int srv_run(const srv_config_t *cfg)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        fprintf(stderr, "tandem serve: out of memory\n");
        return 1;
    }
    s->cfg = *cfg;
    atomic_store(&s->state, SRV_LOADING);
    pthread_mutex_init(&s->tpl_mu, NULL);
    tdm_error_t err = {0};
    int rc = 1;
    if (srv_metrics_create(&s->metrics, &err) != TDM_OK || srv_http_start(s, &err) != TDM_OK) {
        fprintf(stderr, "tandem serve: %s\n", tdm_error_msg(&err));
        goto out;
    }
    fprintf(stderr, "tandem serve: listening on http://%s:%d (loading %s)\n", cfg->host,
            srv_http_bound_port(s), cfg->model_path);
    if (load_model(s, &err) != TDM_OK) {
        snprintf(s->load_error, sizeof(s->load_error), "%s", tdm_error_msg(&err));
        atomic_store(&s->state, SRV_FAILED);
        fprintf(stderr, "tandem serve: cannot load %s: %s\n", cfg->model_path, s->load_error);
        goto out;
    }
    atomic_store(&s->state, SRV_READY);
    fprintf(stderr, "tandem serve: ready: model '%s', context %d tokens%s\n", s->model_name,
            (int)s->n_ctx, cfg->n_api_keys > 0 ? ", API key required" : "");
    fprintf(stderr, "tandem serve: context: %s\n", s->ctx_note);

    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "tandem serve: %s: draining (up to %.0f s)\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg->shutdown_timeout);
    /* the listener stays open: /health answers 503 "draining", new generations 503, and
     * every response closes its connection, so balancers and clients move elsewhere */
    atomic_store(&s->state, SRV_STOPPING);
    crd_router_shutdown(s->router, false);
    if (!drain(s, tdm_now_s() + cfg->shutdown_timeout)) {
        fprintf(stderr, "tandem serve: canceling %d unfinished requests\n",
                (int)crd_router_n_active(s->router));
        crd_router_shutdown(s->router, true);
        drain(s, tdm_now_s() + 5.0);
    }
    rc = 0;
out:
    srv_http_stop(s);
    unload(s);
    srv_metrics_destroy(s->metrics);
    pthread_mutex_destroy(&s->tpl_mu);
    free(s);
    if (rc == 0) {
        fprintf(stderr, "tandem serve: stopped\n");
    }
    return rc;
}
