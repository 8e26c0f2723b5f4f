/*
 * anth_gen.c - POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API).
 *
 * A request goes: body -> chat request (anth_parse.c) -> the chat prompt (chat_prompt.c,
 * the same template, tokens and output parser as /v1/chat/completions) -> srv_job_t ->
 * pieces of text -> the output parser's events -> content blocks: reasoning a `thinking`
 * block, content a `text` block, each call a `tool_use` block. A block is closed when the
 * next kind starts, so blocks come in the order the model wrote them. Without streaming
 * the blocks make one message; with it, Anthropic's event sequence:
 *
 *   message_start, ping, then per block content_block_start, content_block_delta
 *   (text_delta, thinking_delta then signature_delta, input_json_delta), content_block_stop;
 *   message_delta (stop_reason, stop_sequence, usage), message_stop
 *
 * message_start waits for the first token (so its usage already counts the prefix-cache
 * hit), but no longer than keepalive_s; after it a `ping` goes out whenever nothing else
 * was written for keepalive_s, so a long prefill never looks like a dead connection.
 *
 * Usage follows Anthropic's split: input_tokens are the prompt tokens that were computed,
 * cache_read_input_tokens those the prefix cache supplied (their sum is the prompt, which
 * count_tokens returns); cache_creation_input_tokens is 0 (Tandem caches every prompt, at
 * no extra cost, so nothing is a paid cache write).
 */
#include "api/parse/output.h"
#include "api/parse/prs_buf.h"
#include "api/server/anth_parse.h"
#include "api/server/chat_prompt.h"
#include "api/server/gen_util.h"
#include "api/server/job.h"
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

typedef enum blk_kind { BLK_NONE = 0, BLK_TEXT, BLK_THINKING, BLK_TOOL } blk_kind_t;

typedef struct anth_gen {
    srv_server_t *s;
    srv_anth_req_t req;
    srv_job_t *job;
    struct MHD_Connection *conn;
    double t_start;
    char id[48];
    uint64_t rng[4];
    prs_output_t *op;
    /* the outcome */
    bool ended;
    crd_finish_t finish;
    char *stop_seq;
    char *error;
    tdm_status_t err_status;
    int32_t n_prompt, n_cached, n_generated;
    size_t n_calls;
    /* the block being written: its kind, index and text (or a call's arguments) */
    blk_kind_t open;
    int index;
    prs_buf_t acc;
    json_t *content; /* without streaming: the blocks so far */
    /* streaming */
    bool stream, started, done;
    srv_sse_out_t out; /* events not yet taken by the HTTP library */
} anth_gen_t;

/* ---- errors in Anthropic's shape ---- */

static const char *anth_error_type(unsigned status)
{
    switch (status) {
    case 400:
    case 405:
    case 422:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
    case 529:
        return "overloaded_error";
    default:
        return status < 500 ? "invalid_request_error" : "api_error";
    }
}

json_t *srv_anth_error_json(unsigned status, const char *msg)
{
    return json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                     anth_error_type(status), "message", msg);
}

static int reply_error(srv_server_t *s, const srv_http_req_t *r, unsigned status, const char *msg)
{
    srv_metrics_count_http(s->metrics, r->path, status);
    json_t *body = srv_anth_error_json(status, msg);
    if (body == NULL) {
        /* the message was not valid UTF-8 (it quotes client input): say less */
        body = srv_anth_error_json(status, "invalid request");
    }
    return srv_reply_json(r, status, body);
}

static int reply_status(srv_server_t *s, const srv_http_req_t *r, tdm_status_t st, const char *msg)
{
    const char *type;
    return reply_error(s, r, srv_http_status_of(st, &type), msg);
}

/* ---- usage, ids, the stop reason ---- */

static json_t *usage_json(const anth_gen_t *g)
{
    return json_pack("{s:i, s:i, s:i, s:i}", "input_tokens", (int)(g->n_prompt - g->n_cached),
                     "cache_creation_input_tokens", 0, "cache_read_input_tokens", (int)g->n_cached,
                     "output_tokens", (int)g->n_generated);
}

static const char *stop_reason(const anth_gen_t *g)
{
    if (g->finish == CRD_FINISH_LENGTH) {
        return "max_tokens";
    }
    if (g->n_calls > 0) {
        return "tool_use";
    }
    return g->stop_seq != NULL ? "stop_sequence" : "end_turn";
}

/* The metrics' finish reasons are the chat API's. */
static const char *finish_label(const anth_gen_t *g)
{
    switch (g->finish) {
    case CRD_FINISH_STOP:
        return g->n_calls > 0 ? "tool_calls" : "stop";
    case CRD_FINISH_LENGTH:
        return "length";
    case CRD_FINISH_CANCELED:
        return "abort";
    default:
        return "error";
    }
}

/* An opaque signature for a thinking block (clients must send it back unchanged, and may
 * check that one is there; Tandem never verifies it): FNV-1a of the text. */
static json_t *signature_of(const char *text, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)text[i]) * 0x100000001b3ull;
    }
    char buf[40];
    snprintf(buf, sizeof(buf), "tandem-%016llx", (unsigned long long)h);
    return json_string(buf);
}

/* ---- streaming output ---- */

static void sse_event(anth_gen_t *g, const char *name, json_t *obj /* stolen */)
{
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (text != NULL) {
        prs_buf_append_str(&g->out.buf, "event: ");
        prs_buf_append_str(&g->out.buf, name);
        prs_buf_append_str(&g->out.buf, "\ndata: ");
        prs_buf_append_str(&g->out.buf, text);
        prs_buf_append(&g->out.buf, "\n\n", 2);
        free(text);
    }
}

static void sse_ping(anth_gen_t *g)
{
    sse_event(g, "ping", json_pack("{s:s}", "type", "ping"));
}

/* message_start (once), with the usage known so far, and the first ping. */
static void start_message(anth_gen_t *g)
{
    if (!g->stream || g->started) {
        return;
    }
    g->started = true;
    json_t *msg = json_pack("{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:o}", "id", g->id, "type",
                            "message", "role", "assistant", "model", g->s->model_name, "content",
                            "stop_reason", "stop_sequence", "usage", usage_json(g));
    sse_event(g, "message_start", json_pack("{s:s, s:o}", "type", "message_start", "message", msg));
    sse_ping(g);
}

/* ---- content blocks ---- */

static void close_block(anth_gen_t *g)
{
    if (g->open == BLK_NONE) {
        return;
    }
    const char *text = g->acc.data != NULL ? g->acc.data : "";
    if (g->stream) {
        if (g->open == BLK_THINKING) {
            sse_event(g, "content_block_delta",
                      json_pack("{s:s, s:i, s:{s:s, s:o}}", "type", "content_block_delta", "index",
                                g->index, "delta", "type", "signature_delta", "signature",
                                signature_of(text, g->acc.len)));
        }
        sse_event(g, "content_block_stop",
                  json_pack("{s:s, s:i}", "type", "content_block_stop", "index", g->index));
    } else {
        json_t *b = json_array_get(g->content, json_array_size(g->content) - 1);
        if (g->open == BLK_TEXT) {
            json_object_set_new(b, "text", srv_json_lossy(text, g->acc.len));
        } else if (g->open == BLK_THINKING) {
            /* display "omitted": the signature alone, as Anthropic sends it */
            json_object_set_new(b, "thinking",
                                g->req.thinking_omitted ? json_string("")
                                                        : srv_json_lossy(text, g->acc.len));
            json_object_set_new(b, "signature", signature_of(text, g->acc.len));
        } else {
            /* the parsers give a call's arguments as one JSON object text */
            json_t *input = json_loadb(text, g->acc.len, 0, NULL);
            json_object_set_new(b, "input", json_is_object(input) ? input : json_object());
            if (!json_is_object(input)) {
                json_decref(input);
            }
        }
    }
    prs_buf_clear(&g->acc);
    g->open = BLK_NONE;
    g->index++;
}

static void open_block(anth_gen_t *g, blk_kind_t kind, json_t *block /* stolen */)
{
    close_block(g);
    g->open = kind;
    if (g->stream) {
        sse_event(g, "content_block_start",
                  json_pack("{s:s, s:i, s:o}", "type", "content_block_start", "index", g->index,
                            "content_block", block));
    } else {
        json_array_append_new(g->content, block);
    }
}

/* Text of a text or thinking block (opened when the block being written is another). */
static void block_text(anth_gen_t *g, blk_kind_t kind, const char *text, size_t len)
{
    if (g->open != kind) {
        open_block(g, kind,
                   kind == BLK_TEXT ? json_pack("{s:s, s:s}", "type", "text", "text", "")
                                    : json_pack("{s:s, s:s, s:s}", "type", "thinking", "thinking",
                                                "", "signature", ""));
    }
    prs_buf_append(&g->acc, text, len);
    if (g->stream && (kind == BLK_TEXT || !g->req.thinking_omitted)) {
        bool t = kind == BLK_TEXT;
        sse_event(g, "content_block_delta",
                  json_pack("{s:s, s:i, s:{s:s, s:o}}", "type", "content_block_delta", "index",
                            g->index, "delta", "type", t ? "text_delta" : "thinking_delta",
                            t ? "text" : "thinking", srv_json_lossy(text, len)));
    }
}

static void call_begin(anth_gen_t *g, uint32_t call, const char *name, size_t len)
{
    const char *mine = prs_output_call_id(g->op, call);
    char id[48];
    if (mine != NULL) {
        snprintf(id, sizeof(id), "%s",
                 mine); /* the model's own (Mistral): its template replays it */
    } else {
        srv_random_id(g->rng, "toolu", '_', id, sizeof(id));
    }
    g->n_calls = call + 1 > g->n_calls ? call + 1 : g->n_calls;
    open_block(g, BLK_TOOL,
               json_pack("{s:s, s:s, s:o, s:{}}", "type", "tool_use", "id", id, "name",
                         srv_json_lossy(name, len), "input"));
}

static void call_args(anth_gen_t *g, const char *text, size_t len)
{
    if (g->open != BLK_TOOL) {
        return;
    }
    prs_buf_append(&g->acc, text, len);
    if (g->stream) {
        sse_event(g, "content_block_delta",
                  json_pack("{s:s, s:i, s:{s:s, s:o}}", "type", "content_block_delta", "index",
                            g->index, "delta", "type", "input_json_delta", "partial_json",
                            srv_json_lossy(text, len)));
    }
}

/* Feeds text (or finishes, when fin) through the output parser into blocks. */
static void route_text(anth_gen_t *g, const char *text, size_t len, bool fin)
{
    if (len > 0) {
        prs_output_feed(g->op, text, len, NULL);
    }
    if (fin) {
        prs_output_finish(g->op, NULL);
    }
    const prs_event_t *ev = prs_output_events(g->op);
    size_t n = prs_output_n_events(g->op);
    for (size_t i = 0; i < n; i++) {
        switch (ev[i].kind) {
        case PRS_EV_CONTENT:
            block_text(g, BLK_TEXT, ev[i].text, ev[i].len);
            break;
        case PRS_EV_REASONING:
            block_text(g, BLK_THINKING, ev[i].text, ev[i].len);
            break;
        case PRS_EV_CALL_BEGIN:
            call_begin(g, ev[i].call, ev[i].text, ev[i].len);
            break;
        case PRS_EV_CALL_ARGS:
            call_args(g, ev[i].text, ev[i].len);
            break;
        case PRS_EV_CALL_END:
            close_block(g);
            break;
        }
    }
    prs_output_clear_events(g->op);
}

static void handle_piece(anth_gen_t *g, const srv_piece_t *p)
{
    g->n_prompt = p->n_prompt;
    g->n_cached = p->n_cached;
    g->n_generated = p->n_generated;
    start_message(g);
    if (p->len > 0) {
        route_text(g, p->text, p->len, false);
    }
    if (p->finish == CRD_FINISH_NONE) {
        return;
    }
    route_text(g, "", 0, true);
    close_block(g);
    g->ended = true;
    g->finish = p->finish;
    if (p->stop_seq != NULL) {
        g->stop_seq = strdup(p->stop_seq);
    }
    if (p->finish == CRD_FINISH_ERROR || p->finish == CRD_FINISH_CANCELED) {
        g->err_status = p->finish == CRD_FINISH_CANCELED ? TDM_ERR_CANCELED : p->status;
        g->error = strdup(p->error != NULL ? p->error : "the request was canceled");
    }
    srv_metrics_count_finish(g->s->metrics, finish_label(g));
    if (!g->stream) {
        return;
    }
    if (g->error != NULL) {
        const char *type;
        json_t *e = srv_anth_error_json(srv_http_status_of(g->err_status, &type), g->error);
        if (e != NULL) {
            sse_event(g, "error", e);
        }
        return;
    }
    sse_event(g, "message_delta",
              json_pack("{s:s, s:{s:s, s:o}, s:o}", "type", "message_delta", "delta", "stop_reason",
                        stop_reason(g), "stop_sequence",
                        g->stop_seq != NULL ? json_string(g->stop_seq) : json_null(), "usage",
                        usage_json(g)));
    sse_event(g, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}

/* ---- the job's lifetime ---- */

static void gen_free(anth_gen_t *g)
{
    if (g == NULL) {
        return;
    }
    if (g->job != NULL) {
        srv_job_cancel(g->job); /* no-op when it finished */
        srv_job_release(g->job);
    }
    prs_output_destroy(g->op);
    prs_buf_free(&g->acc);
    srv_sse_out_free(&g->out);
    json_decref(g->content);
    free(g->stop_seq);
    free(g->error);
    srv_anth_req_free(&g->req);
    atomic_fetch_sub(&g->s->n_handlers, 1);
    free(g);
}

/* Takes pieces for up to POLL_S; false when the client is gone (the job is canceled). */
static bool pump(anth_gen_t *g)
{
    srv_piece_t *pieces = NULL;
    int n = srv_job_take(g->job, POLL_S, &pieces);
    for (int i = 0; i < n; i++) {
        handle_piece(g, &pieces[i]);
    }
    srv_pieces_free(pieces, n);
    if (!g->ended && srv_job_finished(g->job)) {
        /* the sequence ended but its final piece was lost (out of memory) */
        srv_piece_t lost = {.text = "",
                            .finish = CRD_FINISH_ERROR,
                            .status = TDM_ERR_NO_MEMORY,
                            .error = "out of memory",
                            .n_prompt = g->n_prompt,
                            .n_cached = g->n_cached,
                            .n_generated = g->n_generated};
        handle_piece(g, &lost);
    }
    if (!g->ended && !srv_conn_alive(g->conn)) {
        TDM_DEBUG("http", "%s: client went away, canceling", g->id);
        srv_job_cancel(g->job);
        return false;
    }
    return true;
}

static ssize_t stream_read(void *cls, char *buf, size_t max)
{
    anth_gen_t *g = cls;
    for (;;) {
        size_t n = srv_sse_out_take(&g->out, buf, max);
        if (n > 0) {
            return (ssize_t)n;
        }
        if (g->done) {
            return SRV_STREAM_END;
        }
        if (g->ended) {
            g->done = true;
            srv_metrics_observe(g->s->metrics, SRV_HIST_E2E, tdm_now_s() - g->t_start);
            continue;
        }
        if (!pump(g)) {
            return SRV_STREAM_ABORT;
        }
        if (srv_sse_out_idle(&g->out, g->s->cfg.keepalive_s)) {
            if (g->started) {
                sse_ping(g);
            } else {
                start_message(g); /* a long prefill: the cache hit is not known yet */
            }
        }
    }
}

static void stream_free(void *cls)
{
    gen_free(cls);
}

static int reply_whole(anth_gen_t *g, const srv_http_req_t *r)
{
    while (!g->ended) {
        if (!pump(g)) {
            gen_free(g);
            return MHD_NO; /* nobody to answer */
        }
    }
    if (g->error != NULL) {
        const char *type;
        unsigned status = srv_http_status_of(g->err_status, &type);
        if (status < 500 && status != 429) {
            status = 500;
        }
        int rc = reply_error(g->s, r, status, g->error);
        gen_free(g);
        return rc;
    }
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:O, s:s, s:o, s:o}", "id", g->id, "type",
                          "message", "role", "assistant", "model", g->s->model_name, "content",
                          g->content, "stop_reason", stop_reason(g), "stop_sequence",
                          g->stop_seq != NULL ? json_string(g->stop_seq) : json_null(), "usage",
                          usage_json(g));
    srv_metrics_observe(g->s->metrics, SRV_HIST_E2E, tdm_now_s() - g->t_start);
    srv_metrics_count_http(g->s->metrics, r->path, 200);
    int rc = srv_reply_json(r, 200, o);
    gen_free(g);
    return rc;
}

/* ---- the routes ---- */

/*
 * Parses the body and renders its prompt. On failure the error reply was sent and the
 * return value is that reply's MHD result; on success *ok is set.
 */
static int prepare(srv_server_t *s, const srv_http_req_t *r, bool count_tokens, srv_anth_req_t *req,
                   srv_chat_prompt_t *cp, bool *ok)
{
    tdm_error_t err = {0};
    *ok = false;
    tdm_status_t st = srv_parse_anth_request(r->body, r->body_len, count_tokens, req, &err);
    if (st != TDM_OK) {
        return reply_status(s, r, st == TDM_ERR_FORMAT ? TDM_ERR_INVALID_PARAM : st,
                            tdm_error_msg(&err));
    }
    if (req->gen.model != NULL && strcmp(req->gen.model, s->model_name) != 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "model: '%.200s' does not exist; this server serves '%.200s'",
                 req->gen.model, s->model_name);
        return reply_error(s, r, 404, msg);
    }
    const char *param = NULL;
    st = srv_chat_prompt_build(s, &req->gen, cp, &param, &err);
    if (st != TDM_OK) {
        return reply_status(s, r, st, tdm_error_msg(&err));
    }
    *ok = true;
    return MHD_YES;
}

int srv_route_messages(srv_server_t *s, const srv_http_req_t *r)
{
    anth_gen_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return MHD_NO;
    }
    atomic_fetch_add(&s->n_handlers, 1);
    g->s = s;
    g->conn = r->conn;
    g->t_start = r->t_start;
    srv_sse_out_init(&g->out);
    g->content = json_array();
    crd_rng_seed(g->rng, (uint64_t)time(NULL) ^ (atomic_fetch_add(&s->next_id, 1) << 20) ^
                             (uint64_t)(uintptr_t)g);
    srv_random_id(g->rng, "msg", '_', g->id, sizeof(g->id));

    srv_chat_prompt_t cp = {0};
    bool ok;
    int rc = prepare(s, r, false, &g->req, &cp, &ok);
    if (!ok) {
        srv_chat_prompt_free(&cp);
        gen_free(g);
        return rc;
    }
    int32_t n_prompt = (int32_t)cp.ids.n;
    if (n_prompt >= s->n_ctx) {
        /* Anthropic's wording: Claude Code compacts the conversation when it sees it */
        char msg[160];
        snprintf(msg, sizeof(msg), "prompt is too long: %d tokens > %d maximum", (int)n_prompt,
                 (int)s->n_ctx - 1);
        srv_chat_prompt_free(&cp);
        gen_free(g);
        return reply_error(s, r, 400, msg);
    }
    tdm_error_t err = {0};
    tdm_status_t st = srv_chat_output_create(s, &g->req.gen, &cp, &g->op, &err);
    int32_t room = s->n_ctx - n_prompt;
    int32_t max_tokens = g->req.gen.max_tokens;
    if (max_tokens <= 0 || max_tokens > room) {
        max_tokens = room;
    }
    size_t n_eog = 0;
    const tok_id_t *eog = tok_eog_ids(s->vocab, &n_eog);
    srv_job_params_t jp = {.prompt = cp.ids.ids,
                           .n_prompt = n_prompt,
                           .n = 1,
                           .max_tokens = max_tokens,
                           .sampling = g->req.gen.sampling,
                           .stop_ids = eog,
                           .n_stop_ids = (int32_t)n_eog,
                           .stop = g->req.gen.stop,
                           .n_stop = g->req.gen.n_stop,
                           .detok_flags = cp.detok_flags,
                           .t_start = r->t_start};
    if (st == TDM_OK) {
        st = srv_job_start(s->router, s->vocab, s->metrics, &jp, &g->job, &err);
    }
    srv_chat_prompt_free(&cp);
    if (st != TDM_OK) {
        rc = reply_status(s, r, st, tdm_error_msg(&err));
        gen_free(g);
        return rc;
    }
    g->n_prompt = n_prompt;
    if (!g->req.gen.stream) {
        return reply_whole(g, r);
    }
    g->stream = true;
    srv_metrics_count_http(s->metrics, r->path, 200);
    return srv_reply_stream(r, stream_read, stream_free, g);
}

int srv_route_count_tokens(srv_server_t *s, const srv_http_req_t *r)
{
    srv_anth_req_t req;
    srv_chat_prompt_t cp = {0};
    bool ok;
    int rc = prepare(s, r, true, &req, &cp, &ok);
    if (ok) {
        srv_metrics_count_http(s->metrics, r->path, 200);
        rc = srv_reply_json(r, 200, json_pack("{s:i}", "input_tokens", (int)cp.ids.n));
    }
    srv_chat_prompt_free(&cp);
    srv_anth_req_free(&req);
    return rc;
}
