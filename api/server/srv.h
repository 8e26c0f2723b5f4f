/*
 * srv.h - the HTTP server's shared state (internal to api/server).
 *
 * One srv_server_t per process. libmicrohttpd runs one thread per connection; every
 * handler reads the immutable configuration and the loaded model, and talks to the
 * engine thread only through crd_engine_* (which locks) and its own srv_job_t.
 *
 * Files: http.c (libmicrohttpd glue, routing, auth, body limits, replies), routes.c
 * (health, models, metrics, tokenize), oai_parse.c (request JSON -> srv_gen_req_t),
 * job.c (a request's life on the engine: text, stop strings, queue), oai_gen.c (chat and
 * completions: responses and SSE), resp_parse.c + resp_gen.c (the Responses API), gen_util.c,
 * metrics.c, server.c (load, run, shutdown).
 */
#ifndef SRV_H
#define SRV_H

#include "api/parse/tool_call.h"
#include "api/server/http.h"
#include "api/server/metrics.h"
#include "common/clock.h"
#include "common/status.h"
#include "coordinator/engine.h"
#include "coordinator/router.h"
#include "coordinator/template.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "model/gguf.h"
#include "transport/exec_local.h"
#include "transport/exec_remote.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;
struct MHD_Daemon;
struct srv_front;

/* One engine group of a --cluster file's "groups" (coordinator/router.h). */
typedef struct srv_group_config {
    char *name;
    int role;      /* crd_group_role_t (only mixed is served yet)   */
    char **shards; /* "HOST:PORT", index = world rank; none: a local engine */
    int n_shards;
    int tp, ep; /* 0: chosen */
} srv_group_config_t;

typedef struct srv_config {
    const char *host;
    int port;
    const char *model_path;
    const char *served_name; /* NULL: the file's base name without .gguf                  */
    int ctx_size;            /* positions per sequence; 0: srv_default_ctx                 */
    int threads;             /* kernel threads; 0: one per CPU                              */
    const char *device;      /* auto | cpu | cuda[:N] (single-node; NULL: auto)             */
    const char *kv_type;     /* f32 | f16 | q8_0; NULL: f16 on a GPU, f32 on the CPU        */
    int batch;               /* token budget per step                                       */
    int max_running;         /* sequences per step                                          */
    int max_waiting;         /* queue limit (429 beyond)                                    */
    size_t kv_bytes;         /* KV memory budget; 0: enough for max_running x ctx          */
    int state_cache;         /* stored prefix states of Gated DeltaNet models; -1: max_running */
    int state_every;         /* ... also every N prompt tokens (0: at the last full block only) */
    double max_step_s;       /* step-time budget: > 0 s, < 0 automatic, 0 off (scheduler.h) */
    size_t max_body;         /* request body limit in bytes (413 beyond)                    */
    double shutdown_timeout; /* seconds in-flight requests get after SIGTERM                */
    double keepalive_s;      /* SSE comment interval while no token has come                */
    int max_tokens_default;  /* when a request sets none: 0 = until the context is full    */
    int spec_mode;           /* crd_spec_mode_t: speculative decoding default (0: off)      */
    int spec_max;            /* most drafted tokens per sequence and step (0: 8)            */
    bool spec_always;        /* draft every proposal, ignoring the cost model (benchmarks)  */
    const char *draft_model; /* GGUF of a draft model of the same vocabulary (NULL: none)   */
    char **api_keys;         /* bearer keys; none: no authentication                        */
    int n_api_keys;
    const char *tool_parser;  /* "auto" (from the template) or a prs_tool_format_name         */
    bool cache_stable;        /* --cache-stable-prompts: cache_stable.h's rewrites           */
    int max_conns;            /* concurrent connections (503 beyond)                         */
    int max_conns_per_client; /* from one address (429 beyond); 0: max_conns                 */
    double header_timeout_s;  /* a request head must arrive within this (408)                */
    double body_timeout_s;    /* a body silent this long (408)                               */
    double idle_timeout_s;    /* a keep-alive connection without a request, or not reading   */
    size_t max_header_bytes;  /* the whole request head (431 beyond)                         */
    size_t max_header_line;   /* one header line (431) or the request line (414)             */
    int max_headers;          /* header lines (431 beyond)                                   */
    /* distributed mode (n_shards > 0): the model split over `tandem shard` processes */
    char **shards; /* "HOST:PORT", index = world rank                                    */
    int n_shards;
    int tp, ep;                /* 0: chosen                                                     */
    int collective;            /* XP_MSG_PROTO_*: 0 UCX active messages, 1 RMA put + flag, 2 NCCL */
    int coll_timeout_ms;       /* 0: 15000                                                      */
    int shard_timeout_ms;      /* 0: 1500                                                       */
    int shard_start_timeout_s; /* 0: 120                                                        */
    bool contiguous_experts;
    const char *cluster_secret; /* NULL: none (transport/xp_auth.h) */
    /* several engine groups (a --cluster file with "groups"); none: one group, the shards
     * above or a local engine */
    srv_group_config_t *groups;
    int n_groups;
    int routing; /* crd_routing_t */
} srv_config_t;

typedef enum srv_state {
    SRV_LOADING = 0,
    SRV_READY,
    SRV_STOPPING,
    SRV_FAILED,
} srv_state_t;

typedef struct srv_server {
    srv_config_t cfg;
    struct MHD_Daemon *mhd;
    struct srv_front *front; /* the listener in front of libmicrohttpd (front.c) */
    _Atomic int state;
    char load_error[512];
    srv_metrics_t *metrics;
    _Atomic uint64_t next_id; /* response ids */
    _Atomic int n_handlers;   /* generation handlers in flight */

    /* the model: set once before state becomes READY, then read-only */
    gguf_ctx_t *gguf;
    gguf_ctx_t *draft_gguf; /* --draft-model (NULL: none) */
    tok_vocab_t *vocab;
    tpl_template_t *tpl;      /* NULL when the GGUF has no chat template */
    pthread_mutex_t tpl_mu;   /* rendering is serialised: cheap, and keeps Jinja single-threaded */
    struct srv_group *groups; /* [n_groups] the engines (server.c) */
    int n_groups;
    crd_router_t *router; /* picks a group per request */
    char *model_name;
    int32_t n_ctx;
    char ctx_note[256]; /* how the context was chosen (the ready line says it) */
    int64_t created;    /* unix time the model was loaded (for /v1/models) */
    prs_tool_format_t tool_format;
    bool template_has_think;
} srv_server_t;

/* One engine group: a local executor or a shard group, and the engine over it. */
typedef struct srv_group {
    char *name;
    crd_group_role_t role;
    xp_local_exec_t *lx;  /* a local engine */
    xp_remote_exec_t *rx; /* a shard group   */
    xp_executor_t ex;
    crd_engine_t *engine;
    /* the draft model (--draft-model): its executor in this process, and the drafter */
    xp_local_exec_t *draft_lx;
    xp_executor_t draft_ex;
    struct crd_draft_model *draft;
    /* the model's MTP block as drafter (--spec mtp; NULL: none) */
    struct crd_mtp *mtp;
} srv_group_t;

/* ---- disagg.c: prefill and decode groups paired (docs/distributed.md) ---- */

/* After every group is loaded and added to the router: pairs prefill with decode groups
 * (crd_router_pair_roles), refuses pairs that cannot hand KV over (not shard groups,
 * different TP/EP splits or KV layouts, sliding-window or recurrent models) and points each
 * prefill group's executor at its decode group's pool. Nothing without such groups. */
tdm_status_t srv_disagg_setup(struct srv_server *s, tdm_error_t *err);

/* ---- http.c: replies (each queues a response on c and returns the MHD result) ---- */

/* A parsed HTTP request as handlers see it. */
typedef struct srv_http_req {
    struct MHD_Connection *conn;
    const char *method, *path;
    const char *body;
    size_t body_len;
    double t_start; /* monotonic seconds when the request arrived */
    struct srv_server *srv;
} srv_http_req_t;

int srv_reply_json(const srv_http_req_t *r, unsigned status, json_t *body /* stolen */);
int srv_reply_text(const srv_http_req_t *r, unsigned status, const char *content_type,
                   const char *text, size_t len);
/* OpenAI's error shape: {"error": {"message", "type", "param", "code"}}. */
int srv_reply_error(const srv_http_req_t *r, unsigned status, const char *type, const char *param,
                    const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
int srv_reply_stream(const srv_http_req_t *r, srv_stream_read_fn read, void (*free_fn)(void *),
                     void *cls);
/* The status and type an internal status maps to (400 invalid_request_error, ...). */
unsigned srv_http_status_of(tdm_status_t st, const char **type);

/* True while the peer of c is still connected (checked without blocking). */
bool srv_conn_alive(struct MHD_Connection *c);

/* ---- routes.c ---- */
int srv_route_health(srv_server_t *s, const srv_http_req_t *r);
int srv_route_models(srv_server_t *s, const srv_http_req_t *r);
/* GET /v1/models/{id} */
int srv_route_model(srv_server_t *s, const srv_http_req_t *r);
int srv_route_metrics(srv_server_t *s, const srv_http_req_t *r);
int srv_route_tokenize(srv_server_t *s, const srv_http_req_t *r);
int srv_route_detokenize(srv_server_t *s, const srv_http_req_t *r);

/* ---- oai_gen.c ---- */
int srv_route_chat(srv_server_t *s, const srv_http_req_t *r);
int srv_route_completions(srv_server_t *s, const srv_http_req_t *r);

/* ---- resp_gen.c ---- */
int srv_route_responses(srv_server_t *s, const srv_http_req_t *r);

/* ---- anth_gen.c ---- */
int srv_route_messages(srv_server_t *s, const srv_http_req_t *r);
int srv_route_count_tokens(srv_server_t *s, const srv_http_req_t *r);
/* Anthropic's error body {"type": "error", "error": {"type", "message"}}, the type chosen
 * by the HTTP status (invalid_request_error, authentication_error, not_found_error,
 * rate_limit_error, overloaded_error, api_error, ...); NULL if msg is not valid UTF-8. */
json_t *srv_anth_error_json(unsigned status, const char *msg);

/* ---- ctx_default.c ---- */
/* The context (and KV budget) when cfg->ctx_size is 0: the model's trained context when the
 * memory plan holds it, else the largest that fits; note says which, for the log. */
tdm_status_t srv_default_ctx(const srv_config_t *cfg, const gguf_ctx_t *g, int *n_ctx,
                             size_t *kv_bytes, char *note, size_t note_size, tdm_error_t *err);

/* ---- server.c ---- */
/* Starts listening (health answers 503 while loading), loads the model, serves until
 * SIGTERM/SIGINT, then shuts down gracefully. Returns a process exit code. */
int srv_run(const srv_config_t *cfg);

#endif
