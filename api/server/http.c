/*
 * http.c - libmicrohttpd glue: routing, bearer keys, body limits, replies.
 *
 * libmicrohttpd calls the access handler several times per request: once with the
 * headers (we decide on 404/401/413 here when we can, before reading a body), then with
 * each piece of the body (collected up to cfg.max_body), then once more with no data,
 * when the route's handler runs. Handlers may block (one thread per connection), which
 * is how generation waits for its tokens.
 */
#include "api/server/http.h"

#include "api/server/front.h"
#include "api/server/srv.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef int (*route_fn)(srv_server_t *s, const srv_http_req_t *r);

typedef struct route {
    const char *method, *path;
    route_fn fn;
    bool needs_key, needs_model;
} route_t;

static const route_t k_routes[] = {
    {"GET", "/health", srv_route_health, false, false},
    {"GET", "/metrics", srv_route_metrics, false, false},
    {"GET", "/v1/models", srv_route_models, true, false},
    {"GET", "/v1/models/", srv_route_model, true, false}, /* "/" at the end: a prefix */
    {"POST", "/v1/chat/completions", srv_route_chat, true, true},
    {"POST", "/v1/completions", srv_route_completions, true, true},
    {"POST", "/v1/responses", srv_route_responses, true, true},
    {"POST", "/v1/messages", srv_route_messages, true, true},
    {"POST", "/v1/messages/count_tokens", srv_route_count_tokens, true, true},
    {"POST", "/tokenize", srv_route_tokenize, true, true},
    {"POST", "/detokenize", srv_route_detokenize, true, true},
};
#define N_ROUTES (sizeof(k_routes) / sizeof(k_routes[0]))

/* Per-request state across the access handler's calls. */
typedef struct conn_req {
    const route_t *route;
    char *body;
    size_t len, cap;
    bool too_big;
    bool answered; /* a response was queued before the body was read */
    /* 404 / 405 / 401 decided from the head: answered once the body has been read (and
     * dropped), because closing a socket with unread bytes sends a reset that can destroy
     * the answer before the client reads it */
    unsigned early_status;
    double t_start;
} conn_req_t;

/* ---- replies ---- */

static int queue(const srv_http_req_t *r, unsigned status, struct MHD_Response *resp)
{
    if (resp == NULL) {
        return MHD_NO;
    }
    if (r->srv != NULL && atomic_load(&r->srv->state) == SRV_STOPPING) {
        /* draining: keep-alive clients should reconnect elsewhere */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    enum MHD_Result rc = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

int srv_reply_text(const srv_http_req_t *r, unsigned status, const char *content_type,
                   const char *text, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    return queue(r, status, resp);
}

int srv_reply_json(const srv_http_req_t *r, unsigned status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        return srv_reply_text(r, 500, "application/json", oom, sizeof(oom) - 1);
    }
    int rc = srv_reply_text(r, status, "application/json", text, strlen(text));
    free(text);
    return rc;
}

json_t *srv_error_json(const char *type, const char *param, const char *code, const char *msg)
{
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", msg, "type", type, "param",
                     param ? json_string(param) : json_null(), "code",
                     code ? json_string(code) : json_null());
}

int srv_reply_error(const srv_http_req_t *r, unsigned status, const char *type, const char *param,
                    const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Anthropic's routes answer in Anthropic's shape, whoever refuses the request */
    bool anth = r->path != NULL && strncmp(r->path, "/v1/messages", 12) == 0;
    json_t *body = anth ? srv_anth_error_json(status, msg) : srv_error_json(type, param, code, msg);
    if (body == NULL) {
        /* the message was not valid UTF-8 (it quotes client input): say less */
        body = anth ? srv_anth_error_json(status, "invalid request")
                    : srv_error_json(type, param, code, "invalid request");
    }
    return srv_reply_json(r, status, body);
}

unsigned srv_http_status_of(tdm_status_t st, const char **type)
{
    switch (st) {
    case TDM_ERR_INVALID_PARAM:
    case TDM_ERR_FORMAT:
    case TDM_ERR_OUT_OF_RANGE:
    case TDM_ERR_UNSUPPORTED:
        *type = "invalid_request_error";
        return 400;
    case TDM_ERR_NOT_FOUND:
        *type = "not_found_error";
        return 404;
    case TDM_ERR_BUSY:
        *type = "rate_limit_error";
        return 429;
    case TDM_ERR_CANCELED:
    case TDM_ERR_TRANSPORT:
    case TDM_ERR_TIMEOUT:
        *type = "service_unavailable";
        return 503;
    default:
        *type = "server_error";
        return 500;
    }
}

/* MHD's content reader has a position argument we do not need. */
typedef struct stream_glue {
    srv_stream_read_fn read;
    void (*free_fn)(void *);
    void *cls;
} stream_glue_t;

static ssize_t glue_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_glue_t *g = cls;
    ssize_t n = g->read(g->cls, buf, max);
    if (n == SRV_STREAM_END) {
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (n < 0) {
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    return n;
}

static void glue_free(void *cls)
{
    stream_glue_t *g = cls;
    g->free_fn(g->cls);
    free(g);
}

int srv_reply_stream(const srv_http_req_t *r, srv_stream_read_fn read, void (*free_fn)(void *),
                     void *cls)
{
    stream_glue_t *g = malloc(sizeof(*g));
    if (g == NULL) {
        free_fn(cls);
        return MHD_NO;
    }
    g->read = read;
    g->free_fn = free_fn;
    g->cls = cls;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, glue_read, g, glue_free);
    if (resp == NULL) {
        glue_free(g);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return queue(r, 200, resp);
}

bool srv_conn_alive(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL) {
        return true;
    }
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) {
        return true;
    }
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
        return false;
    }
    if (p.revents & POLLIN) {
        char b;
        ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        return n != 0; /* 0: orderly shutdown by the peer; > 0: a pipelined request */
    }
    return true;
}

/* ---- authentication ---- */

/* Compares without an early exit so the time taken does not tell how much matched. */
static bool key_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++) {
        diff |= (unsigned char)(a[i < la ? i : 0] ^ b[i]);
    }
    return diff == 0;
}

static bool authorized(const srv_server_t *s, struct MHD_Connection *c)
{
    if (s->cfg.n_api_keys == 0) {
        return true;
    }
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *key = NULL;
    if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0) {
        key = h + 7;
    } else {
        /* Anthropic-style clients send x-api-key */
        key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-api-key");
    }
    if (key == NULL) {
        return false;
    }
    bool ok = false;
    for (int i = 0; i < s->cfg.n_api_keys; i++) {
        ok |= key_equal(key, s->cfg.api_keys[i]);
    }
    return ok;
}

/* ---- the access handler ---- */

static const route_t *find_route(const char *method, const char *url, bool *path_known)
{
    *path_known = false;
    for (size_t i = 0; i < N_ROUTES; i++) {
        size_t n = strlen(k_routes[i].path);
        bool prefix = k_routes[i].path[n - 1] == '/';
        if (prefix ? strncmp(url, k_routes[i].path, n) == 0 && url[n] != '\0'
                   : strcmp(url, k_routes[i].path) == 0) {
            *path_known = true;
            /* HEAD is GET without a body (libmicrohttpd drops the body) */
            const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
            if (strcmp(m, k_routes[i].method) == 0) {
                return &k_routes[i];
            }
        }
    }
    return NULL;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)version;
    srv_server_t *s = cls;
    conn_req_t *cr = *con_cls;
    srv_http_req_t r = {.conn = conn, .method = method, .path = url, .srv = s};

    if (cr == NULL) {
        cr = calloc(1, sizeof(*cr));
        if (cr == NULL) {
            return MHD_NO;
        }
        *con_cls = cr;
        cr->t_start = tdm_now_s();
        bool known;
        cr->route = find_route(method, url, &known);
        int rc = -1;
        unsigned status = 0;
        if (cr->route == NULL) {
            cr->early_status = known ? 405 : 404;
        } else if (cr->route->needs_key && !authorized(s, conn)) {
            cr->early_status = 401;
        } else {
            const char *cl =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl != NULL && strtoull(cl, NULL, 10) > s->cfg.max_body) {
                status = 413;
                rc = srv_reply_error(&r, 413, "invalid_request_error", NULL, "request_too_large",
                                     "the request body is larger than the limit of %zu bytes",
                                     s->cfg.max_body);
            }
        }
        if (rc >= 0) {
            cr->answered = true;
            srv_metrics_count_http(s->metrics, cr->route ? cr->route->path : "other", status);
            return (enum MHD_Result)rc;
        }
        return MHD_YES;
    }

    if (*upload_size > 0) {
        if (cr->early_status != 0) {
            *upload_size = 0; /* read and dropped: the answer is already decided */
            return MHD_YES;
        }
        if (!cr->answered && !cr->too_big) {
            if (cr->len + *upload_size > s->cfg.max_body) {
                cr->too_big = true;
                free(cr->body);
                cr->body = NULL;
                cr->len = cr->cap = 0;
            } else {
                if (cr->len + *upload_size + 1 > cr->cap) {
                    size_t cap = cr->cap ? cr->cap : 4096;
                    while (cap < cr->len + *upload_size + 1) {
                        cap *= 2;
                    }
                    char *nb = realloc(cr->body, cap);
                    if (nb == NULL) {
                        return MHD_NO;
                    }
                    cr->body = nb;
                    cr->cap = cap;
                }
                memcpy(cr->body + cr->len, upload, *upload_size);
                cr->len += *upload_size;
                cr->body[cr->len] = '\0';
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cr->answered) {
        return MHD_YES;
    }
    cr->answered = true;
    if (cr->early_status != 0) {
        const unsigned st = cr->early_status;
        srv_metrics_count_http(s->metrics, cr->route ? cr->route->path : "other", st);
        if (st == 401) {
            return (enum MHD_Result)srv_reply_error(
                &r, 401, "authentication_error", NULL, "invalid_api_key",
                "a valid API key is required (Authorization: Bearer KEY)");
        }
        return (enum MHD_Result)(
            st == 405
                ? srv_reply_error(&r, 405, "invalid_request_error", NULL, "method_not_allowed",
                                  "%s is not allowed on %s", method, url)
                : srv_reply_error(&r, 404, "not_found_error", NULL, "unknown_url", "no route %s %s",
                                  method, url));
    }
    r.body = cr->body != NULL ? cr->body : "";
    r.body_len = cr->len;
    r.t_start = cr->t_start;
    if (cr->too_big) {
        srv_metrics_count_http(s->metrics, cr->route->path, 413);
        return (enum MHD_Result)srv_reply_error(
            &r, 413, "invalid_request_error", NULL, "request_too_large",
            "the request body is larger than the limit of %zu bytes", s->cfg.max_body);
    }
    if (cr->route->needs_model && atomic_load(&s->state) != SRV_READY) {
        int st = atomic_load(&s->state);
        srv_metrics_count_http(s->metrics, cr->route->path, 503);
        return (enum MHD_Result)srv_reply_error(&r, 503, "service_unavailable", NULL, "not_ready",
                                                "%s",
                                                st == SRV_LOADING    ? "the model is still loading"
                                                : st == SRV_STOPPING ? "the server is shutting down"
                                                                     : "the model failed to load");
    }
    return (enum MHD_Result)cr->route->fn(s, &r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    srv_server_t *s = cls;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci != NULL) {
        srv_front_request_done(s->front, ci->connect_fd,
                               toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    }
    conn_req_t *cr = *con_cls;
    if (cr != NULL) {
        free(cr->body);
        free(cr);
        *con_cls = NULL;
    }
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    TDM_DEBUG("http", "%s", msg);
}

static bool hand_over(void *cls, int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    srv_server_t *s = cls;
    return MHD_add_connection(s->mhd, fd, addr, addrlen) == MHD_YES;
}

tdm_status_t srv_http_start(srv_server_t *s, tdm_error_t *err)
{
    const srv_config_t *c = &s->cfg;
    srv_front_params_t fp = {.host = c->host,
                             .port = c->port,
                             .max_conns = c->max_conns,
                             .max_per_client = c->max_conns_per_client > 0 ? c->max_conns_per_client
                                                                           : c->max_conns,
                             .header_timeout_s = c->header_timeout_s,
                             .body_timeout_s = c->body_timeout_s,
                             .idle_timeout_s = c->idle_timeout_s,
                             .limits = {.max_line = c->max_header_line,
                                        .max_head = c->max_header_bytes,
                                        .max_headers = c->max_headers,
                                        .max_body = c->max_body},
                             .hand_over = hand_over,
                             .cls = s};
    tdm_status_t st = srv_front_create(&fp, &s->front, err);
    if (st != TDM_OK) {
        return st;
    }
    /* The front listens, caps, checks framing and times connections out (front.c);
     * libmicrohttpd gets each connection from it, so it has no listening socket, no
     * timeout and a connection limit above the front's. Its memory pool holds a whole
     * head (the front has checked it fits) plus room to build a response. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    size_t pool = c->max_header_bytes + 64 * 1024;
    s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_access, s, MHD_OPTION_NOTIFY_COMPLETED,
                              on_completed, s, MHD_OPTION_CONNECTION_LIMIT,
                              (unsigned)(2 * c->max_conns + 16), MHD_OPTION_CONNECTION_TIMEOUT,
                              (unsigned)0, MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool,
                              MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_END);
    if (s->mhd == NULL) {
        srv_front_destroy(s->front);
        s->front = NULL;
        return tdm_error_set(err, TDM_ERR_IO, "cannot start the HTTP server");
    }
    if ((st = srv_front_start(s->front, err)) != TDM_OK) {
        srv_http_stop(s);
    }
    return st;
}

void srv_http_stop(srv_server_t *s)
{
    /* libmicrohttpd first (its threads report finished requests to the front, which must
     * outlive them), once the front no longer hands it connections; the front then
     * closes what is left */
    srv_front_stop_handing_over(s->front);
    if (s->mhd != NULL) {
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
    }
    srv_front_destroy(s->front);
    s->front = NULL;
}

int srv_http_bound_port(const srv_server_t *s)
{
    return s->front != NULL ? srv_front_port(s->front) : s->cfg.port;
}
