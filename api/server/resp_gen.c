/*
 * resp_gen.c - POST /v1/responses: the OpenAI Responses API over the chat machinery.
 *
 * The body becomes a chat request (resp_parse.c), which renders and tokenizes as chat
 * completions does (chat_prompt.h) and runs as one sequence (job.c). The output parser's
 * events (reasoning, content, calls) become output items: a "reasoning" item with
 * reasoning_text, a "message" item with one output_text part, a "function_call" item per
 * call. One state machine builds the items for both modes: streaming writes each step as
 * a typed SSE event (response.output_item.added, response.output_text.delta, ...; every
 * event carries a sequence_number), and the final response object is the same either way.
 *
 * Content that is only whitespace between items (the newline a model writes between its
 * reasoning and a call) is held back and dropped unless real text follows, so a call is
 * not preceded by an empty-looking message item.
 */
#include "api/parse/output.h"
#include "api/server/chat_prompt.h"
#include "api/server/gen_util.h"
#include "api/server/job.h"
#include "api/server/resp_parse.h"
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

typedef enum item_kind { ITEM_NONE = 0, ITEM_REASONING, ITEM_MESSAGE, ITEM_CALL } item_kind_t;

typedef struct resp {
    srv_server_t *s;
    srv_resp_req_t req;
    srv_job_t *job;
    prs_output_t *op;
    struct MHD_Connection *conn;
    const char *route;
    double t_start;
    char id[48];
    int64_t created;
    uint64_t rng[4];
    /* the output so far */
    json_t *output;   /* finished items                                        */
    item_kind_t open; /* the item being written (not yet in output)            */
    json_t *item;
    prs_buf_t text;    /* the open item's text: message, reasoning or arguments */
    prs_buf_t ws;      /* content held back while it is only whitespace         */
    prs_buf_t thought; /* all reasoning text (counted as reasoning tokens)      */
    size_t n_calls;
    bool ended;
    crd_finish_t finish;
    char *error;
    tdm_status_t err_status;
    int32_t n_prompt, n_cached, n_generated;
    /* streaming */
    bool stream;
    int64_t seq;
    srv_sse_out_t out; /* events not yet taken by the HTTP library */
    bool done_sent;
} resp_t;

/* ---- events ---- */

/* Sends event obj (stolen) of the given type, numbered; dropped when not streaming. */
static void emit(resp_t *r, const char *type, json_t *obj)
{
    if (!r->stream || obj == NULL) {
        json_decref(obj);
        return;
    }
    json_object_set_new(obj, "type", json_string(type));
    json_object_set_new(obj, "sequence_number", json_integer(r->seq++));
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (text != NULL) {
        prs_buf_append_str(&r->out.buf, "event: ");
        prs_buf_append_str(&r->out.buf, type);
        prs_buf_append_str(&r->out.buf, "\ndata: ");
        prs_buf_append_str(&r->out.buf, text);
        prs_buf_append(&r->out.buf, "\n\n", 2);
        free(text);
    }
}

static json_t *text_of(const prs_buf_t *b)
{
    return srv_json_lossy(b->data != NULL ? b->data : "", b->len);
}

static const char *item_id(const resp_t *r)
{
    return json_string_value(json_object_get(r->item, "id"));
}

static int output_index(const resp_t *r)
{
    return (int)json_array_size(r->output);
}

/* The content part of the open reasoning or message item, with its text so far. */
static json_t *part_json(const resp_t *r)
{
    if (r->open == ITEM_REASONING) {
        return json_pack("{s:s, s:o}", "type", "reasoning_text", "text", text_of(&r->text));
    }
    return json_pack("{s:s, s:o, s:[], s:[]}", "type", "output_text", "text", text_of(&r->text),
                     "annotations", "logprobs");
}

static void open_item(resp_t *r, item_kind_t kind, const char *name, size_t name_len)
{
    char id[48];
    r->open = kind;
    prs_buf_clear(&r->text);
    if (kind == ITEM_REASONING) {
        srv_random_id(r->rng, "rs", '_', id, sizeof(id));
        r->item = json_pack("{s:s, s:s, s:[], s:[], s:s}", "id", id, "type", "reasoning", "summary",
                            "content", "status", "in_progress");
    } else if (kind == ITEM_MESSAGE) {
        srv_random_id(r->rng, "msg", '_', id, sizeof(id));
        r->item = json_pack("{s:s, s:s, s:s, s:s, s:[]}", "id", id, "type", "message", "role",
                            "assistant", "status", "in_progress", "content");
    } else {
        char call_id[48];
        const char *mine = prs_output_call_id(r->op, r->n_calls);
        if (mine != NULL) {
            /* the model's own id (Mistral's 9 characters): its template replays it */
            snprintf(call_id, sizeof(call_id), "%s", mine);
        } else {
            srv_random_id(r->rng, "call", '_', call_id, sizeof(call_id));
        }
        srv_random_id(r->rng, "fc", '_', id, sizeof(id));
        r->item = json_pack("{s:s, s:s, s:s, s:s, s:o, s:s}", "id", id, "type", "function_call",
                            "status", "in_progress", "call_id", call_id, "name",
                            srv_json_lossy(name, name_len), "arguments", "");
        r->n_calls++;
    }
    emit(r, "response.output_item.added",
         json_pack("{s:i, s:O}", "output_index", output_index(r), "item", r->item));
    if (kind != ITEM_CALL) {
        emit(r, "response.content_part.added",
             json_pack("{s:s, s:i, s:i, s:o}", "item_id", item_id(r), "output_index",
                       output_index(r), "content_index", 0, "part", part_json(r)));
    }
}

static void close_item(resp_t *r, const char *status)
{
    if (r->open == ITEM_NONE) {
        return;
    }
    const char *id = item_id(r);
    int oi = output_index(r);
    if (r->open == ITEM_CALL) {
        json_object_set_new(r->item, "arguments", text_of(&r->text));
        emit(r, "response.function_call_arguments.done",
             json_pack("{s:s, s:i, s:o, s:O}", "item_id", id, "output_index", oi, "arguments",
                       text_of(&r->text), "name", json_object_get(r->item, "name")));
    } else {
        bool reasoning = r->open == ITEM_REASONING;
        json_t *done = json_pack("{s:s, s:i, s:i, s:o}", "item_id", id, "output_index", oi,
                                 "content_index", 0, "text", text_of(&r->text));
        if (!reasoning) {
            json_object_set_new(done, "logprobs", json_array());
        }
        emit(r, reasoning ? "response.reasoning_text.done" : "response.output_text.done", done);
        emit(r, "response.content_part.done",
             json_pack("{s:s, s:i, s:i, s:o}", "item_id", id, "output_index", oi, "content_index",
                       0, "part", part_json(r)));
        json_object_set_new(r->item, "content", json_pack("[o]", part_json(r)));
    }
    json_object_set_new(r->item, "status", json_string(status));
    emit(r, "response.output_item.done",
         json_pack("{s:i, s:O}", "output_index", oi, "item", r->item));
    json_array_append_new(r->output, r->item);
    r->item = NULL;
    r->open = ITEM_NONE;
    prs_buf_clear(&r->text);
}

/* Appends text to the open item and sends its delta. */
static void add_text(resp_t *r, const char *text, size_t len)
{
    if (len == 0) {
        return;
    }
    prs_buf_append(&r->text, text, len);
    if (!r->stream) {
        return; /* the whole response takes the text from the item */
    }
    const char *id = item_id(r);
    int oi = output_index(r);
    json_t *delta = srv_json_lossy(text, len);
    if (r->open == ITEM_CALL) {
        emit(r, "response.function_call_arguments.delta",
             json_pack("{s:s, s:i, s:o}", "item_id", id, "output_index", oi, "delta", delta));
    } else if (r->open == ITEM_REASONING) {
        emit(r, "response.reasoning_text.delta",
             json_pack("{s:s, s:i, s:i, s:o}", "item_id", id, "output_index", oi, "content_index",
                       0, "delta", delta));
    } else {
        emit(r, "response.output_text.delta",
             json_pack("{s:s, s:i, s:i, s:o, s:[]}", "item_id", id, "output_index", oi,
                       "content_index", 0, "delta", delta, "logprobs"));
    }
}

static bool all_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\n' && s[i] != '\r' && s[i] != '\t') {
            return false;
        }
    }
    return true;
}

static void on_content(resp_t *r, const char *text, size_t len)
{
    if (r->open == ITEM_MESSAGE) {
        add_text(r, text, len);
        return;
    }
    if (all_space(text, len)) {
        prs_buf_append(&r->ws, text, len);
        return;
    }
    close_item(r, "completed");
    open_item(r, ITEM_MESSAGE, NULL, 0);
    add_text(r, r->ws.data, r->ws.len);
    prs_buf_clear(&r->ws);
    add_text(r, text, len);
}

/* Feeds text (or finishes, when fin) through the output parser and turns its events into
 * items. */
static void route_text(resp_t *r, const char *text, size_t len, bool fin)
{
    if (len > 0) {
        prs_output_feed(r->op, text, len, NULL);
    }
    if (fin) {
        prs_output_finish(r->op, NULL);
    }
    const prs_event_t *ev = prs_output_events(r->op);
    size_t n = prs_output_n_events(r->op);
    for (size_t i = 0; i < n; i++) {
        switch (ev[i].kind) {
        case PRS_EV_CONTENT:
            on_content(r, ev[i].text, ev[i].len);
            break;
        case PRS_EV_REASONING:
            prs_buf_clear(&r->ws);
            if (r->open != ITEM_REASONING) {
                close_item(r, "completed");
                open_item(r, ITEM_REASONING, NULL, 0);
            }
            prs_buf_append(&r->thought, ev[i].text, ev[i].len);
            add_text(r, ev[i].text, ev[i].len);
            break;
        case PRS_EV_CALL_BEGIN:
            prs_buf_clear(&r->ws);
            close_item(r, "completed");
            open_item(r, ITEM_CALL, ev[i].text, ev[i].len);
            break;
        case PRS_EV_CALL_ARGS:
            if (r->open == ITEM_CALL) {
                add_text(r, ev[i].text, ev[i].len);
            }
            break;
        case PRS_EV_CALL_END:
            close_item(r, "completed");
            break;
        }
    }
    prs_output_clear_events(r->op);
}

/* ---- the response object ---- */

static int32_t reasoning_tokens(const resp_t *r)
{
    if (r->thought.len == 0) {
        return 0;
    }
    /* the parser does not say which tokens were reasoning: the reasoning text's own count */
    tok_workspace_t *ws = NULL;
    tok_ids_t ids = {0};
    int32_t n = 0;
    if (tok_workspace_create(r->s->vocab, &ws, NULL) == TDM_OK &&
        tok_encode(r->s->vocab, ws, r->thought.data, r->thought.len, 0, &ids, NULL) == TDM_OK) {
        n = (int32_t)ids.n < r->n_generated ? (int32_t)ids.n : r->n_generated;
    }
    tok_ids_free(&ids);
    tok_workspace_destroy(ws);
    return n;
}

static json_t *usage_json(const resp_t *r)
{
    return json_pack("{s:i, s:{s:i}, s:i, s:{s:i}, s:i}", "input_tokens", (int)r->n_prompt,
                     "input_tokens_details", "cached_tokens", (int)r->n_cached, "output_tokens",
                     (int)r->n_generated, "output_tokens_details", "reasoning_tokens",
                     (int)reasoning_tokens(r), "total_tokens", (int)(r->n_prompt + r->n_generated));
}

static const char *status_of(const resp_t *r)
{
    if (!r->ended) {
        return "in_progress";
    }
    switch (r->finish) {
    case CRD_FINISH_STOP:
        return "completed";
    case CRD_FINISH_LENGTH:
        return "incomplete";
    case CRD_FINISH_CANCELED:
        return "cancelled";
    default:
        return "failed";
    }
}

static json_t *response_json(const resp_t *r)
{
    const char *status = status_of(r);
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:b, s:n, s:n, s:s, s:O, s:n}", "id", r->id,
                          "object", "response", "created_at", (json_int_t)r->created, "status",
                          status, "background", 0, "error", "incomplete_details", "model",
                          r->s->model_name, "output", r->output, "previous_response_id");
    json_object_update(o, r->req.echo);
    if (strcmp(status, "incomplete") == 0) {
        json_object_set_new(o, "incomplete_details",
                            json_pack("{s:s}", "reason", "max_output_tokens"));
    }
    if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0) {
        json_object_set_new(o, "error",
                            json_pack("{s:s, s:s}", "code", "server_error", "message",
                                      r->error != NULL ? r->error : "error"));
    }
    json_object_set_new(o, "usage", r->ended ? usage_json(r) : json_null());
    return o;
}

/* ---- pieces ---- */

static void handle_piece(resp_t *r, const srv_piece_t *p)
{
    if (p->len > 0) {
        route_text(r, p->text, p->len, false);
    }
    if (p->finish == CRD_FINISH_NONE) {
        return;
    }
    route_text(r, "", 0, true);
    r->ended = true;
    r->finish = p->finish;
    r->n_prompt = p->n_prompt;
    r->n_cached = p->n_cached;
    r->n_generated = p->n_generated;
    if (p->finish == CRD_FINISH_ERROR || p->finish == CRD_FINISH_CANCELED) {
        r->err_status = p->finish == CRD_FINISH_CANCELED ? TDM_ERR_CANCELED : p->status;
        r->error = strdup(p->error != NULL ? p->error : "the request was canceled");
    }
    bool length = p->finish == CRD_FINISH_LENGTH;
    if (r->open == ITEM_NONE && json_array_size(r->output) == 0) {
        /* nothing but whitespace, or nothing: a message still says so */
        open_item(r, ITEM_MESSAGE, NULL, 0);
        add_text(r, r->ws.data, r->ws.len);
    }
    close_item(r, length ? "incomplete" : "completed");
    srv_metrics_count_finish(r->s->metrics, p->finish == CRD_FINISH_STOP
                                                ? (r->n_calls > 0 ? "tool_calls" : "stop")
                                            : length                           ? "length"
                                            : p->finish == CRD_FINISH_CANCELED ? "abort"
                                                                               : "error");
    const char *status = status_of(r);
    const char *event = strcmp(status, "completed") == 0    ? "response.completed"
                        : strcmp(status, "incomplete") == 0 ? "response.incomplete"
                                                            : "response.failed";
    emit(r, event, json_pack("{s:o}", "response", response_json(r)));
}

static void resp_free(resp_t *r)
{
    if (r == NULL) {
        return;
    }
    if (r->job != NULL) {
        srv_job_cancel(r->job); /* no-op when it finished */
        srv_job_release(r->job);
    }
    prs_output_destroy(r->op);
    json_decref(r->output);
    json_decref(r->item);
    prs_buf_free(&r->text);
    prs_buf_free(&r->ws);
    prs_buf_free(&r->thought);
    srv_sse_out_free(&r->out);
    free(r->error);
    srv_resp_req_free(&r->req);
    atomic_fetch_sub(&r->s->n_handlers, 1);
    free(r);
}

/* Takes pieces for up to POLL_S; false when the client is gone (the job is canceled). */
static bool pump(resp_t *r)
{
    srv_piece_t *pieces = NULL;
    int n = srv_job_take(r->job, POLL_S, &pieces);
    for (int i = 0; i < n; i++) {
        handle_piece(r, &pieces[i]);
    }
    srv_pieces_free(pieces, n);
    if (!r->ended && srv_job_finished(r->job)) {
        /* the sequence ended but its final piece was lost (out of memory) */
        srv_piece_t lost = {.text = "",
                            .finish = CRD_FINISH_ERROR,
                            .status = TDM_ERR_NO_MEMORY,
                            .error = "out of memory"};
        handle_piece(r, &lost);
    }
    if (!r->ended && !srv_conn_alive(r->conn)) {
        TDM_DEBUG("http", "%s: client went away, canceling", r->id);
        srv_job_cancel(r->job);
        return false;
    }
    return true;
}

static ssize_t stream_read(void *cls, char *buf, size_t max)
{
    resp_t *r = cls;
    for (;;) {
        size_t n = srv_sse_out_take(&r->out, buf, max);
        if (n > 0) {
            return (ssize_t)n;
        }
        if (r->done_sent) {
            return SRV_STREAM_END;
        }
        if (r->ended) {
            /* the last event was written by handle_piece; Responses streams end there,
             * without chat's [DONE] */
            r->done_sent = true;
            srv_metrics_observe(r->s->metrics, SRV_HIST_E2E, tdm_now_s() - r->t_start);
            continue;
        }
        if (!pump(r)) {
            return SRV_STREAM_ABORT;
        }
        if (srv_sse_out_idle(&r->out, r->s->cfg.keepalive_s)) {
            prs_buf_append_str(&r->out.buf, ": keep-alive\n\n");
        }
    }
}

static void stream_free(void *cls)
{
    resp_free(cls);
}

static int reply_whole(resp_t *r, const srv_http_req_t *h)
{
    while (!r->ended) {
        if (!pump(r)) {
            resp_free(r);
            return MHD_NO; /* nobody to answer */
        }
    }
    if (r->finish == CRD_FINISH_ERROR || r->finish == CRD_FINISH_CANCELED) {
        const char *type;
        unsigned status = srv_http_status_of(r->err_status, &type);
        if (status < 500 && status != 429) {
            status = 500;
            type = "server_error";
        }
        srv_metrics_count_http(r->s->metrics, r->route, status);
        int rc = srv_reply_error(h, status, type, NULL, NULL, "%s",
                                 r->error != NULL ? r->error : "generation failed");
        resp_free(r);
        return rc;
    }
    json_t *o = response_json(r);
    srv_metrics_observe(r->s->metrics, SRV_HIST_E2E, tdm_now_s() - r->t_start);
    srv_metrics_count_http(r->s->metrics, r->route, 200);
    int rc = srv_reply_json(h, 200, o);
    resp_free(r);
    return rc;
}

/* ---- the route ---- */

static int reply_status(srv_server_t *s, const srv_http_req_t *h, tdm_status_t st,
                        const char *param, const char *code, const char *msg)
{
    const char *type;
    unsigned status = srv_http_status_of(st, &type);
    srv_metrics_count_http(s->metrics, h->path, status);
    return srv_reply_error(h, status, type, param != NULL && param[0] ? param : NULL, code, "%s",
                           msg);
}

int srv_route_responses(srv_server_t *s, const srv_http_req_t *h)
{
    tdm_error_t err = {0};
    char param[96];
    resp_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return MHD_NO;
    }
    atomic_fetch_add(&s->n_handlers, 1);
    r->s = s;
    r->conn = h->conn;
    r->route = h->path;
    r->t_start = h->t_start;
    srv_sse_out_init(&r->out);
    r->created = (int64_t)time(NULL);
    r->output = json_array();
    crd_rng_seed(r->rng, (uint64_t)time(NULL) ^ (atomic_fetch_add(&s->next_id, 1) << 20) ^
                             (uint64_t)(uintptr_t)r);
    srv_random_id(r->rng, "resp", '_', r->id, sizeof(r->id));

    tdm_status_t st =
        srv_parse_resp_request(h->body, h->body_len, &r->req, param, sizeof(param), &err);
    if (st != TDM_OK) {
        int rc = reply_status(s, h, st == TDM_ERR_FORMAT ? TDM_ERR_INVALID_PARAM : st, param,
                              st == TDM_ERR_FORMAT ? "invalid_json" : "invalid_value",
                              tdm_error_msg(&err));
        resp_free(r);
        return rc;
    }
    srv_gen_req_t *req = &r->req.gen;
    if (req->model != NULL && strcmp(req->model, s->model_name) != 0) {
        srv_metrics_count_http(s->metrics, h->path, 404);
        int rc = srv_reply_error(h, 404, "not_found_error", "model", "model_not_found",
                                 "the model '%s' does not exist; this server serves '%s'",
                                 req->model, s->model_name);
        resp_free(r);
        return rc;
    }

    srv_chat_prompt_t cp = {0};
    const char *bad = "input";
    st = srv_chat_prompt_build(s, req, &cp, &bad, &err);
    if (st == TDM_OK && (int32_t)cp.ids.n >= s->n_ctx) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "this model's maximum context length is %d tokens, but the rendered input has "
                 "%d tokens (and at least one token must be generated)",
                 (int)s->n_ctx, (int)cp.ids.n);
        srv_chat_prompt_free(&cp);
        int rc = reply_status(s, h, TDM_ERR_INVALID_PARAM, "input", "context_length_exceeded", msg);
        resp_free(r);
        return rc;
    }
    if (st == TDM_OK) {
        st = srv_chat_output_create(s, req, &cp, &r->op, &err);
    }
    if (st != TDM_OK) {
        srv_chat_prompt_free(&cp);
        /* the chat builder blames chat fields: messages are the input here */
        int rc = reply_status(s, h, st, bad != NULL && strcmp(bad, "messages") == 0 ? "input" : bad,
                              "invalid_value", tdm_error_msg(&err));
        resp_free(r);
        return rc;
    }

    int32_t n_prompt = (int32_t)cp.ids.n, room = s->n_ctx - n_prompt;
    int32_t max_tokens = req->max_tokens > 0 ? req->max_tokens : s->cfg.max_tokens_default;
    if (max_tokens <= 0 || max_tokens > room) {
        max_tokens = room;
    }
    size_t n_eog = 0;
    const tok_id_t *eog = tok_eog_ids(s->vocab, &n_eog);
    srv_job_params_t jp = {.prompt = cp.ids.ids,
                           .n_prompt = n_prompt,
                           .n = 1,
                           .max_tokens = max_tokens,
                           .sampling = req->sampling,
                           .stop_ids = eog,
                           .n_stop_ids = (int32_t)n_eog,
                           .detok_flags = cp.detok_flags,
                           .t_start = h->t_start};
    st = srv_job_start(s->router, s->vocab, s->metrics, &jp, &r->job, &err);
    srv_chat_prompt_free(&cp);
    if (st != TDM_OK) {
        int rc = reply_status(s, h, st, st == TDM_ERR_INVALID_PARAM ? "input" : NULL,
                              st == TDM_ERR_BUSY ? "queue_full" : NULL, tdm_error_msg(&err));
        resp_free(r);
        return rc;
    }
    if (!req->stream) {
        return reply_whole(r, h);
    }
    r->stream = true;
    emit(r, "response.created", json_pack("{s:o}", "response", response_json(r)));
    emit(r, "response.in_progress", json_pack("{s:o}", "response", response_json(r)));
    srv_metrics_count_http(s->metrics, h->path, 200);
    return srv_reply_stream(h, stream_read, stream_free, r);
}
