/*
 * oai_gen.c - POST /v1/chat/completions and /v1/completions.
 *
 * A request goes: body -> srv_gen_req_t (oai_parse.c) -> prompt tokens (chat template for
 * chat) -> srv_job_t on the engine (job.c) -> pieces of text -> per choice, the output
 * parser (api/parse/output.h: reasoning then tool calls, or harmony) -> one JSON response,
 * or SSE chunks as the pieces come. The same piece handling serves both modes; only the
 * output differs.
 *
 * While waiting the handler checks that the client is still there (a closed socket shows
 * up within ~100 ms) and cancels its sequences if not; a stream with nothing to say sends
 * an SSE comment every keepalive_s seconds so that agent clients do not time out during a
 * long prefill.
 */
#include "api/parse/output.h"
#include "api/parse/prs_json.h"
#include "api/server/chat_prompt.h"
#include "api/server/gen_util.h"
#include "api/server/job.h"
#include "api/server/oai_parse.h"
#include "api/server/srv.h"
#include "api/server/sse_out.h"
#include "common/log.h"
#include "coordinator/sampler.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLL_S 0.1 /* how often a waiting handler looks at its client */

typedef struct choice_out {
    prs_output_t *op; /* NULL: the text is content as it comes (completions) */
    bool role_sent, ended;
    crd_finish_t finish;
    prs_buf_t content, reasoning; /* non-streaming: the whole text */
    json_t *lp;                   /* logprobs entries (chat: content[]; completions: legacy) */
    size_t text_offset;           /* completions logprobs: bytes of text so far */
    size_t n_calls_seen;
    char (*call_ids)[32];
    size_t cap_ids;
    char *error;
    tdm_status_t err_status;
} choice_out_t;

typedef struct gen {
    srv_server_t *s;
    srv_gen_req_t req;
    srv_job_t *job;
    struct MHD_Connection *conn;
    double t_start;
    char id[48];
    int64_t created;
    int n_choices;
    choice_out_t *ch;
    int n_ended;
    int32_t n_prompt, n_cached;
    int64_t n_completion;
    uint64_t rng[4];
    /* streaming */
    bool stream;
    srv_sse_out_t out; /* events not yet taken by the HTTP library */
    bool done_sent;
} gen_t;

/* ---- small helpers ---- */

static json_t *bytes_array(const char *s, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(a, json_integer((unsigned char)s[i]));
    }
    return a;
}

static const char *token_bytes(const gen_t *g, int32_t id, size_t *len)
{
    const char *t = tok_token_bytes(g->s->vocab, id, TOK_DEC_RENDER_SPECIAL, len);
    if (t == NULL) {
        *len = 0;
        return "";
    }
    return t;
}

static const char *finish_reason(const gen_t *g, const choice_out_t *c)
{
    switch (c->finish) {
    case CRD_FINISH_STOP:
        return c->n_calls_seen > 0 && g->req.api == SRV_API_CHAT ? "tool_calls" : "stop";
    case CRD_FINISH_LENGTH:
        return "length";
    case CRD_FINISH_CANCELED:
        return "abort";
    default:
        return "error";
    }
}

static const char *call_id(gen_t *g, choice_out_t *c, size_t index)
{
    if (index >= c->cap_ids) {
        size_t cap = index + 8;
        char(*ids)[32] = realloc(c->call_ids, cap * sizeof(*ids));
        if (ids == NULL) {
            return "call_0";
        }
        for (size_t i = c->cap_ids; i < cap; i++) {
            ids[i][0] = '\0';
        }
        c->call_ids = ids;
        c->cap_ids = cap;
    }
    const char *mine = c->op != NULL ? prs_output_call_id(c->op, index) : NULL;
    if (c->call_ids[index][0] == '\0' && mine != NULL) {
        /* the model's own id (Mistral's 9 characters): its template replays it */
        snprintf(c->call_ids[index], 32, "%s", mine);
    } else if (c->call_ids[index][0] == '\0') {
        srv_random_id(g->rng, "call", '_', c->call_ids[index], 32);
    }
    return c->call_ids[index];
}

static json_t *usage_json(const gen_t *g)
{
    return json_pack("{s:i, s:I, s:I, s:{s:i}}", "prompt_tokens", (int)g->n_prompt,
                     "completion_tokens", (json_int_t)g->n_completion, "total_tokens",
                     (json_int_t)(g->n_prompt + g->n_completion), "prompt_tokens_details",
                     "cached_tokens", (int)g->n_cached);
}

/* ---- streaming output ---- */

static void sse_json(gen_t *g, json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (text != NULL) {
        prs_buf_append(&g->out.buf, "data: ", 6);
        prs_buf_append_str(&g->out.buf, text);
        prs_buf_append(&g->out.buf, "\n\n", 2);
        free(text);
    }
}

/* A chunk for one choice: chat {delta, logprobs, finish_reason} or completions {text, ...}. */
static json_t *chunk(gen_t *g, int index, json_t *delta_or_text, json_t *logprobs,
                     const char *finish)
{
    json_t *choice = json_pack("{s:i}", "index", index);
    if (g->req.api == SRV_API_CHAT) {
        json_object_set_new(choice, "delta", delta_or_text);
    } else {
        json_object_set_new(choice, "text", delta_or_text);
    }
    json_object_set_new(choice, "logprobs", logprobs != NULL ? logprobs : json_null());
    json_object_set_new(choice, "finish_reason",
                        finish != NULL ? json_string(finish) : json_null());
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", g->id, "object",
                  g->req.api == SRV_API_CHAT ? "chat.completion.chunk" : "text_completion",
                  "created", (json_int_t)g->created, "model", g->s->model_name, "choices", choice);
    if (g->req.include_usage) {
        json_object_set_new(o, "usage", json_null());
    }
    return o;
}

/* ---- logprobs ---- */

static json_t *chat_lp_entry(const gen_t *g, const srv_piece_t *p)
{
    size_t n;
    const char *t = token_bytes(g, p->token, &n);
    json_t *e = json_pack("{s:o, s:f, s:o}", "token", srv_json_lossy(t, n), "logprob",
                          (double)p->logprob, "bytes", bytes_array(t, n));
    json_t *tops = json_array();
    for (int i = 0; i < p->n_top && i < g->req.top_logprobs; i++) {
        const char *tt = token_bytes(g, p->top_ids[i], &n);
        json_array_append_new(tops, json_pack("{s:o, s:f, s:o}", "token", srv_json_lossy(tt, n),
                                              "logprob", (double)p->top_lp[i], "bytes",
                                              bytes_array(tt, n)));
    }
    json_object_set_new(e, "top_logprobs", tops);
    return e;
}

/* Completions' legacy format, as parallel arrays. */
static json_t *legacy_lp_new(void)
{
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

static void legacy_lp_add(const gen_t *g, choice_out_t *c, json_t *lp, const srv_piece_t *p)
{
    size_t n;
    const char *t = token_bytes(g, p->token, &n);
    json_array_append_new(json_object_get(lp, "tokens"), srv_json_lossy(t, n));
    json_array_append_new(json_object_get(lp, "token_logprobs"), json_real(p->logprob));
    json_t *tops = json_object();
    for (int i = 0; i < p->n_top && i < g->req.top_logprobs; i++) {
        size_t m;
        const char *tt = token_bytes(g, p->top_ids[i], &m);
        json_t *k = srv_json_lossy(tt, m);
        json_object_set_new(tops, json_string_value(k), json_real(p->top_lp[i]));
        json_decref(k);
    }
    json_array_append_new(json_object_get(lp, "top_logprobs"), tops);
    json_array_append_new(json_object_get(lp, "text_offset"),
                          json_integer((json_int_t)c->text_offset));
}

/* ---- text through the parsers ---- */

/* Feeds text (or finishes, when fin) through choice c's parsers and emits or stores the
 * outcome. lp: logprobs to attach to a streamed chunk (stolen; may be NULL). */
static void route_text(gen_t *g, int index, const char *text, size_t len, bool fin, json_t *lp)
{
    choice_out_t *c = &g->ch[index];
    prs_buf_t reasoning = {0}, content = {0};
    json_t *calls = NULL; /* streamed tool-call deltas */

    if (c->op == NULL) {
        prs_buf_append(&content, text, len);
    } else {
        if (len > 0) {
            prs_output_feed(c->op, text, len, NULL);
        }
        if (fin) {
            prs_output_finish(c->op, NULL);
        }
        const prs_event_t *ev = prs_output_events(c->op);
        size_t n = prs_output_n_events(c->op);
        for (size_t i = 0; i < n; i++) {
            switch (ev[i].kind) {
            case PRS_EV_CONTENT:
                prs_buf_append(&content, ev[i].text, ev[i].len);
                break;
            case PRS_EV_REASONING:
                prs_buf_append(&reasoning, ev[i].text, ev[i].len);
                break;
            case PRS_EV_CALL_BEGIN:
                if (ev[i].call + 1 > c->n_calls_seen) {
                    c->n_calls_seen = ev[i].call + 1;
                }
                if (g->stream) {
                    calls = calls ? calls : json_array();
                    json_array_append_new(
                        calls,
                        json_pack("{s:i, s:s, s:s, s:{s:o, s:s}}", "index", (int)ev[i].call, "id",
                                  call_id(g, c, ev[i].call), "type", "function", "function", "name",
                                  srv_json_lossy(ev[i].text, ev[i].len), "arguments", ""));
                }
                break;
            case PRS_EV_CALL_ARGS:
                if (g->stream) {
                    calls = calls ? calls : json_array();
                    json_array_append_new(calls, json_pack("{s:i, s:{s:o}}", "index",
                                                           (int)ev[i].call, "function", "arguments",
                                                           srv_json_lossy(ev[i].text, ev[i].len)));
                }
                break;
            case PRS_EV_CALL_END:
                break;
            }
        }
        prs_output_clear_events(c->op);
    }

    if (!g->stream) {
        prs_buf_append(&c->reasoning, reasoning.data, reasoning.len);
        prs_buf_append(&c->content, content.data, content.len);
        json_decref(lp);
    } else if (g->req.api == SRV_API_COMPLETIONS) {
        if (content.len > 0 || lp != NULL) {
            sse_json(g,
                     chunk(g, index, srv_json_lossy(content.data ? content.data : "", content.len),
                           lp, NULL));
        }
    } else {
        json_t *delta = json_object();
        if (!c->role_sent) {
            json_object_set_new(delta, "role", json_string("assistant"));
            c->role_sent = true;
        }
        if (reasoning.len > 0) {
            json_object_set_new(delta, "reasoning_content",
                                srv_json_lossy(reasoning.data, reasoning.len));
        }
        if (content.len > 0 || json_object_get(delta, "role") != NULL) {
            json_object_set_new(delta, "content",
                                srv_json_lossy(content.data ? content.data : "", content.len));
        }
        if (calls != NULL) {
            json_object_set_new(delta, "tool_calls", calls);
            calls = NULL;
        }
        if (json_object_size(delta) > 0 || lp != NULL) {
            json_t *lpo = lp != NULL ? json_pack("{s:[o]}", "content", lp) : NULL;
            sse_json(g, chunk(g, index, delta, lpo, NULL));
        } else {
            json_decref(delta);
        }
    }
    json_decref(calls);
    prs_buf_free(&reasoning);
    prs_buf_free(&content);
}

static void handle_piece(gen_t *g, const srv_piece_t *p)
{
    choice_out_t *c = &g->ch[p->choice];
    json_t *lp = NULL;
    if (p->has_token && g->req.logprobs) {
        if (g->req.api == SRV_API_CHAT) {
            json_t *e = chat_lp_entry(g, p);
            if (g->stream) {
                lp = e;
            } else {
                json_array_append_new(c->lp, e);
            }
        } else {
            json_t *target = g->stream ? legacy_lp_new() : c->lp;
            legacy_lp_add(g, c, target, p);
            if (g->stream) {
                lp = target;
            }
        }
    }
    c->text_offset += p->len;
    if (p->len > 0 || lp != NULL) {
        route_text(g, p->choice, p->text, p->len, false, lp);
    }
    if (p->finish == CRD_FINISH_NONE) {
        return;
    }
    route_text(g, p->choice, "", 0, true, NULL);
    c->ended = true;
    c->finish = p->finish;
    g->n_ended++;
    g->n_prompt = p->n_prompt;
    g->n_cached = p->n_cached;
    g->n_completion += p->n_generated;
    if (p->finish == CRD_FINISH_ERROR || p->finish == CRD_FINISH_CANCELED) {
        c->err_status = p->finish == CRD_FINISH_CANCELED ? TDM_ERR_CANCELED : p->status;
        c->error = strdup(p->error != NULL ? p->error : "the request was canceled");
    }
    srv_metrics_count_finish(g->s->metrics, finish_reason(g, c));
    if (g->stream) {
        if (p->finish == CRD_FINISH_ERROR || p->finish == CRD_FINISH_CANCELED) {
            const char *type;
            srv_http_status_of(c->err_status, &type);
            json_t *e = srv_error_json(type, NULL, NULL, c->error ? c->error : "error");
            if (e != NULL) {
                sse_json(g, e);
            }
        } else {
            json_t *empty = g->req.api == SRV_API_CHAT ? json_object() : json_string("");
            sse_json(g, chunk(g, p->choice, empty, NULL, finish_reason(g, c)));
        }
    }
}

/* ---- the job's lifetime ---- */

static void gen_free(gen_t *g)
{
    if (g == NULL) {
        return;
    }
    if (g->job != NULL) {
        srv_job_cancel(g->job); /* no-op when it finished */
        srv_job_release(g->job);
    }
    for (int i = 0; i < g->n_choices; i++) {
        choice_out_t *c = &g->ch[i];
        prs_output_destroy(c->op);
        prs_buf_free(&c->content);
        prs_buf_free(&c->reasoning);
        json_decref(c->lp);
        free(c->call_ids);
        free(c->error);
    }
    free(g->ch);
    srv_sse_out_free(&g->out);
    srv_gen_req_free(&g->req);
    atomic_fetch_sub(&g->s->n_handlers, 1);
    free(g);
}

/* Takes pieces for up to POLL_S; false when the client is gone (the job is canceled). */
static bool pump(gen_t *g)
{
    srv_piece_t *pieces = NULL;
    int n = srv_job_take(g->job, POLL_S, &pieces);
    for (int i = 0; i < n; i++) {
        handle_piece(g, &pieces[i]);
    }
    srv_pieces_free(pieces, n);
    if (g->n_ended < g->n_choices && srv_job_finished(g->job)) {
        /* every sequence ended but a final piece was lost (out of memory) */
        for (int i = 0; i < g->n_choices; i++) {
            if (!g->ch[i].ended) {
                srv_piece_t lost = {.choice = i,
                                    .text = "",
                                    .finish = CRD_FINISH_ERROR,
                                    .status = TDM_ERR_NO_MEMORY,
                                    .error = "out of memory"};
                handle_piece(g, &lost);
            }
        }
    }
    if (g->n_ended < g->n_choices && !srv_conn_alive(g->conn)) {
        TDM_DEBUG("http", "%s: client went away, canceling", g->id);
        srv_job_cancel(g->job);
        return false;
    }
    return true;
}

static ssize_t stream_read(void *cls, char *buf, size_t max)
{
    gen_t *g = cls;
    for (;;) {
        size_t n = srv_sse_out_take(&g->out, buf, max);
        if (n > 0) {
            return (ssize_t)n;
        }
        if (g->done_sent) {
            return SRV_STREAM_END;
        }
        if (g->n_ended == g->n_choices) {
            if (g->req.include_usage) {
                json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", g->id, "object",
                                      g->req.api == SRV_API_CHAT ? "chat.completion.chunk"
                                                                 : "text_completion",
                                      "created", (json_int_t)g->created, "model", g->s->model_name,
                                      "choices", "usage", usage_json(g));
                sse_json(g, o);
            }
            prs_buf_append_str(&g->out.buf, "data: [DONE]\n\n");
            g->done_sent = true;
            srv_metrics_observe(g->s->metrics, SRV_HIST_E2E, tdm_now_s() - g->t_start);
            continue;
        }
        if (!pump(g)) {
            return SRV_STREAM_ABORT;
        }
        if (srv_sse_out_idle(&g->out, g->s->cfg.keepalive_s)) {
            prs_buf_append_str(&g->out.buf, ": keep-alive\n\n");
        }
    }
}

static void stream_free(void *cls)
{
    gen_free(cls);
}

/* ---- the response without streaming ---- */

static int reply_whole(gen_t *g, const srv_http_req_t *r)
{
    while (g->n_ended < g->n_choices) {
        if (!pump(g)) {
            gen_free(g);
            return MHD_NO; /* nobody to answer */
        }
    }
    /* a sequence that failed fails the request */
    for (int i = 0; i < g->n_choices; i++) {
        choice_out_t *c = &g->ch[i];
        if (c->finish == CRD_FINISH_ERROR || c->finish == CRD_FINISH_CANCELED) {
            const char *type;
            unsigned status = srv_http_status_of(c->err_status, &type);
            if (status < 500 && status != 429) {
                status = 500;
                type = "server_error";
            }
            srv_metrics_count_http(g->s->metrics, r->path, status);
            int rc = srv_reply_error(r, status, type, NULL, NULL, "%s",
                                     c->error ? c->error : "generation failed");
            gen_free(g);
            return rc;
        }
    }
    json_t *choices = json_array();
    for (int i = 0; i < g->n_choices; i++) {
        choice_out_t *c = &g->ch[i];
        json_t *choice = json_pack("{s:i}", "index", i);
        if (g->req.api == SRV_API_CHAT) {
            json_t *msg = json_pack("{s:s}", "role", "assistant");
            size_t n_calls = c->op != NULL ? prs_output_n_calls(c->op) : 0;
            json_object_set_new(
                msg, "content",
                c->content.len > 0 || n_calls == 0
                    ? srv_json_lossy(c->content.data ? c->content.data : "", c->content.len)
                    : json_null());
            if (c->reasoning.len > 0) {
                json_object_set_new(msg, "reasoning_content",
                                    srv_json_lossy(c->reasoning.data, c->reasoning.len));
            }
            if (n_calls > 0) {
                json_t *calls = json_array();
                for (size_t k = 0; k < n_calls; k++) {
                    const char *name = prs_output_call_name(c->op, k);
                    const char *args = prs_output_call_args(c->op, k);
                    json_array_append_new(
                        calls, json_pack("{s:s, s:s, s:{s:o, s:o}}", "id", call_id(g, c, k), "type",
                                         "function", "function", "name",
                                         srv_json_lossy(name, strlen(name)), "arguments",
                                         srv_json_lossy(args, strlen(args))));
                }
                json_object_set_new(msg, "tool_calls", calls);
            }
            json_object_set_new(choice, "message", msg);
            json_object_set_new(choice, "logprobs",
                                c->lp != NULL ? json_pack("{s:O}", "content", c->lp) : json_null());
        } else {
            json_object_set_new(
                choice, "text",
                srv_json_lossy(c->content.data ? c->content.data : "", c->content.len));
            json_object_set_new(choice, "logprobs",
                                c->lp != NULL ? json_incref(c->lp) : json_null());
        }
        json_object_set_new(choice, "finish_reason", json_string(finish_reason(g, c)));
        json_array_append_new(choices, choice);
    }
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", g->id, "object",
                          g->req.api == SRV_API_CHAT ? "chat.completion" : "text_completion",
                          "created", (json_int_t)g->created, "model", g->s->model_name, "choices",
                          choices, "usage", usage_json(g));
    srv_metrics_observe(g->s->metrics, SRV_HIST_E2E, tdm_now_s() - g->t_start);
    srv_metrics_count_http(g->s->metrics, r->path, 200);
    int rc = srv_reply_json(r, 200, o);
    gen_free(g);
    return rc;
}

static int reply_status(srv_server_t *s, const srv_http_req_t *r, tdm_status_t st,
                        const char *param, const char *code, const char *msg)
{
    const char *type;
    unsigned status = srv_http_status_of(st, &type);
    srv_metrics_count_http(s->metrics, r->path, status);
    return srv_reply_error(r, status, type, param != NULL && param[0] ? param : NULL, code, "%s",
                           msg);
}

static int route_gen(srv_server_t *s, const srv_http_req_t *r, srv_api_t api)
{
    tdm_error_t err = {0};
    char param[96];
    gen_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return MHD_NO;
    }
    atomic_fetch_add(&s->n_handlers, 1);
    g->s = s;
    g->conn = r->conn;
    g->t_start = r->t_start;
    srv_sse_out_init(&g->out);
    g->created = (int64_t)time(NULL);
    crd_rng_seed(g->rng, (uint64_t)time(NULL) ^ (atomic_fetch_add(&s->next_id, 1) << 20) ^
                             (uint64_t)(uintptr_t)g);
    srv_random_id(g->rng, api == SRV_API_CHAT ? "chatcmpl" : "cmpl", '-', g->id, sizeof(g->id));

    tdm_status_t st =
        srv_parse_gen_request(api, r->body, r->body_len, &g->req, param, sizeof(param), &err);
    if (st != TDM_OK) {
        int rc = reply_status(s, r, st == TDM_ERR_FORMAT ? TDM_ERR_INVALID_PARAM : st, param,
                              st == TDM_ERR_FORMAT ? "invalid_json" : "invalid_value",
                              tdm_error_msg(&err));
        gen_free(g);
        return rc;
    }
    srv_gen_req_t *req = &g->req;
    if (req->model != NULL && strcmp(req->model, s->model_name) != 0) {
        srv_metrics_count_http(s->metrics, r->path, 404);
        int rc = srv_reply_error(r, 404, "not_found_error", "model", "model_not_found",
                                 "the model '%s' does not exist; this server serves '%s'",
                                 req->model, s->model_name);
        gen_free(g);
        return rc;
    }

    uint32_t n_tokens = tok_vocab_n_tokens(s->vocab);
    for (int32_t i = 0; i < req->sampling.n_logit_bias; i++) {
        if ((uint32_t)req->sampling.logit_bias_id[i] >= n_tokens) {
            char msg[160];
            snprintf(msg, sizeof(msg), "logit_bias: token %d is not in the vocabulary [0, %u)",
                     (int)req->sampling.logit_bias_id[i], n_tokens);
            int rc = reply_status(s, r, TDM_ERR_INVALID_PARAM, "logit_bias", "invalid_value", msg);
            gen_free(g);
            return rc;
        }
    }

    /* the prompt */
    srv_chat_prompt_t cp = {0};
    tok_ids_t ids = {0};
    const char *bad_param = api == SRV_API_CHAT ? "messages" : "prompt";
    if (api == SRV_API_CHAT) {
        st = srv_chat_prompt_build(s, req, &cp, &bad_param, &err);
    } else if (req->prompt_text != NULL) {
        tok_workspace_t *ws = NULL;
        st = tok_workspace_create(s->vocab, &ws, &err);
        if (st == TDM_OK) {
            st = tok_encode(s->vocab, ws, req->prompt_text, strlen(req->prompt_text),
                            TOK_ENC_ADD_SPECIAL | TOK_ENC_PARSE_SPECIAL, &ids, &err);
        }
        tok_workspace_destroy(ws);
    }
    const int32_t *prompt = req->prompt_ids != NULL ? req->prompt_ids
                            : api == SRV_API_CHAT   ? cp.ids.ids
                                                    : ids.ids;
    int32_t n_prompt = req->prompt_ids != NULL ? req->n_prompt_ids
                       : api == SRV_API_CHAT   ? (int32_t)cp.ids.n
                                               : (int32_t)ids.n;
    if (st == TDM_OK && n_prompt == 0) {
        st = tdm_error_set(&err, TDM_ERR_INVALID_PARAM, "the prompt is empty");
    }
    if (st == TDM_OK && n_prompt >= s->n_ctx) {
        tok_ids_free(&ids);
        srv_chat_prompt_free(&cp);
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "this model's maximum context length is %d tokens, but the %s has %d tokens "
                 "(and at least one token must be generated)",
                 (int)s->n_ctx, api == SRV_API_CHAT ? "rendered conversation" : "prompt",
                 (int)n_prompt);
        int rc =
            reply_status(s, r, TDM_ERR_INVALID_PARAM, api == SRV_API_CHAT ? "messages" : "prompt",
                         "context_length_exceeded", msg);
        gen_free(g);
        return rc;
    }
    if (st != TDM_OK) {
        tok_ids_free(&ids);
        srv_chat_prompt_free(&cp);
        int rc = reply_status(s, r, st, bad_param, "invalid_value", tdm_error_msg(&err));
        gen_free(g);
        return rc;
    }

    /* per-choice parsers */
    g->n_choices = req->n;
    g->ch = calloc((size_t)req->n, sizeof(*g->ch));
    for (int i = 0; g->ch != NULL && i < req->n; i++) {
        choice_out_t *c = &g->ch[i];
        if (api == SRV_API_CHAT) {
            srv_chat_output_create(s, req, &cp, &c->op, NULL);
        }
        if (req->logprobs) {
            c->lp = api == SRV_API_CHAT ? json_array() : legacy_lp_new();
        }
    }

    int32_t room = s->n_ctx - n_prompt;
    int32_t max_tokens = req->max_tokens > 0 ? req->max_tokens : s->cfg.max_tokens_default;
    if (max_tokens <= 0 || max_tokens > room) {
        max_tokens = room;
    }
    size_t n_eog = 0;
    const tok_id_t *eog = tok_eog_ids(s->vocab, &n_eog);
    srv_job_params_t jp = {.prompt = prompt,
                           .n_prompt = n_prompt,
                           .n = req->n,
                           .max_tokens = max_tokens,
                           .sampling = req->sampling,
                           .stop_ids = req->ignore_eos ? NULL : eog,
                           .n_stop_ids = req->ignore_eos ? 0 : (int32_t)n_eog,
                           .stop = req->stop,
                           .n_stop = req->n_stop,
                           .top_logprobs = req->logprobs ? req->top_logprobs : 0,
                           .want_tokens = req->logprobs,
                           .detok_flags = api == SRV_API_CHAT        ? cp.detok_flags
                                          : req->skip_special_tokens ? 0
                                                                     : TOK_DEC_RENDER_SPECIAL,
                           .t_start = r->t_start,
                           .spec = req->spec};
    st = g->ch != NULL ? srv_job_start(s->router, s->vocab, s->metrics, &jp, &g->job, &err)
                       : tdm_error_set(&err, TDM_ERR_NO_MEMORY, "out of memory");
    tok_ids_free(&ids);
    srv_chat_prompt_free(&cp);
    if (st != TDM_OK) {
        const char *bad =
            st == TDM_ERR_INVALID_PARAM ? (api == SRV_API_CHAT ? "messages" : "prompt") : NULL;
        int rc = reply_status(s, r, st, bad, st == TDM_ERR_BUSY ? "queue_full" : NULL,
                              tdm_error_msg(&err));
        gen_free(g);
        return rc;
    }
    if (!req->stream) {
        return reply_whole(g, r);
    }
    g->stream = true;
    srv_metrics_count_http(s->metrics, r->path, 200);
    return srv_reply_stream(r, stream_read, stream_free, g);
}

int srv_route_chat(srv_server_t *s, const srv_http_req_t *r)
{
    return route_gen(s, r, SRV_API_CHAT);
}

int srv_route_completions(srv_server_t *s, const srv_http_req_t *r)
{
    return route_gen(s, r, SRV_API_COMPLETIONS);
}
