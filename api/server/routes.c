/*
 * routes.c - the small routes: /health, /v1/models, /metrics, /tokenize, /detokenize.
 */
#include "api/server/front.h"
#include "api/server/srv.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

/* A shard group: {"ready", "tp", "ep", "error", "shards": [...]}. */
static json_t *shard_group_json(xp_remote_exec_t *rx, bool *ready)
{
    xp_group_health_t h = {0};
    h.shards = calloc((size_t)xp_remote_exec_n_shards(rx), sizeof(*h.shards));
    if (h.shards == NULL) {
        *ready = false;
        return json_null();
    }
    xp_remote_exec_health(rx, &h);
    json_t *arr = json_array();
    for (int i = 0; i < h.n_shards; i++) {
        const xp_shard_health_t *sh = &h.shards[i];
        json_t *o = json_pack("{s:i, s:s, s:s, s:I, s:I}", "rank", i, "name", sh->name, "state",
                              sh->state, "weight_bytes", (json_int_t)sh->weight_bytes,
                              "resident_bytes", (json_int_t)sh->resident_bytes);
        if (sh->error[0] != '\0') {
            json_object_set_new(o, "error", json_string(sh->error));
        }
        if (sh->seen_s_ago >= 0) {
            json_object_set_new(o, "last_seen_s", json_real(sh->seen_s_ago));
        }
        json_array_append_new(arr, o);
    }
    *ready = h.ready;
    json_t *g = json_pack("{s:b, s:i, s:i, s:I, s:o}", "ready", h.ready, "tp", h.tp, "ep", h.ep,
                          "generation", (json_int_t)h.generation, "shards", arr);
    if (!h.ready) {
        json_object_set_new(g, "error", json_string(h.error));
    }
    free(h.shards);
    return g;
}

/* Every engine group: {"name", "role", "up", "routed", "prompt_tokens", "cached_tokens",
 * "load_tokens"}, a shard group's state in "group" ({"ready", "shards": [...], ...}). */
static json_t *groups_json(srv_server_t *s, int *n_up)
{
    json_t *arr = json_array();
    *n_up = 0;
    for (int i = 0; i < s->n_groups; i++) {
        crd_router_group_stats_t rs;
        crd_router_group_stats(s->router, i, &rs);
        json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I}", "name", rs.name, "role",
                              crd_group_role_name(rs.role), "kind",
                              s->groups[i].rx != NULL ? "shards" : "local", "up", rs.up, "routed",
                              (json_int_t)rs.routed, "prompt_tokens", (json_int_t)rs.prompt_tokens,
                              "cached_tokens", (json_int_t)rs.cached_tokens, "load_tokens",
                              (json_int_t)rs.load_tokens);
        if (s->groups[i].rx != NULL) {
            bool ready = false;
            json_t *g = shard_group_json(s->groups[i].rx, &ready);
            rs.up = ready;
            json_object_set_new(o, "up", json_boolean(ready));
            json_object_set_new(o, "group", g);
        }
        *n_up += rs.up;
        json_array_append_new(arr, o);
    }
    return arr;
}

int srv_route_health(srv_server_t *s, const srv_http_req_t *r)
{
    int st = atomic_load(&s->state);
    json_t *o;
    unsigned code = 503;
    switch (st) {
    case SRV_READY: {
        if (s->n_groups == 1 && s->groups[0].rx == NULL) {
            o = json_pack("{s:s}", "status", "ok"); /* one engine in this process */
            code = 200;
            break;
        }
        /* degraded while a group is down; unavailable (503) only when none is up */
        int n_up = 0;
        json_t *groups = groups_json(s, &n_up);
        o = json_pack("{s:s, s:s}", "status", n_up == s->n_groups ? "ok" : "degraded", "routing",
                      crd_routing_name(crd_router_routing(s->router)));
        code = n_up > 0 ? 200 : 503;
        /* one shard group: its state at the top as before ("group", "error") */
        json_t *g0 = json_object_get(json_array_get(groups, 0), "group");
        if (s->n_groups == 1 && g0 != NULL) {
            json_object_set(o, "group", g0);
            if (n_up == 0) {
                json_object_set_new(o, "error",
                                    json_string(json_string_value(json_object_get(g0, "error"))));
            }
        } else if (n_up < s->n_groups) {
            char why[1024] = "";
            size_t len = 0;
            for (size_t i = 0; i < json_array_size(groups); i++) {
                json_t *gi = json_array_get(groups, i);
                if (json_is_false(json_object_get(gi, "up")) && len < sizeof(why)) {
                    const char *e =
                        json_string_value(json_object_get(json_object_get(gi, "group"), "error"));
                    len += (size_t)snprintf(why + len, sizeof(why) - len, "%sgroup '%s' down: %s",
                                            len > 0 ? "; " : "",
                                            json_string_value(json_object_get(gi, "name")),
                                            e != NULL ? e : "not ready");
                }
            }
            json_object_set_new(o, "error", json_string(why));
        }
        json_object_set_new(o, "groups", groups);
        break;
    }
    case SRV_LOADING:
        o = json_pack("{s:s}", "status", "loading");
        break;
    case SRV_STOPPING:
        o = json_pack("{s:s}", "status", "draining");
        break;
    default:
        o = json_pack("{s:s, s:s}", "status", "error", "error", s->load_error);
        break;
    }
    srv_metrics_count_http(s->metrics, r->path, code);
    return srv_reply_json(r, code, o);
}

/* The model object of /v1/models and /v1/models/{id}. */
static json_t *model_json(const srv_server_t *s)
{
    /* where it is served: every engine group, and whether it takes requests now */
    json_t *groups = json_array();
    for (int i = 0; i < s->n_groups; i++) {
        crd_router_group_stats_t rs;
        crd_router_group_stats(s->router, i, &rs);
        json_array_append_new(groups, json_pack("{s:s, s:s, s:b}", "name", rs.name, "role",
                                                crd_group_role_name(rs.role), "up", rs.up));
    }
    return json_pack("{s:s, s:s, s:I, s:s, s:i, s:i, s:o}", "id", s->model_name, "object", "model",
                     "created", (json_int_t)s->created, "owned_by", "tandem", "max_model_len",
                     (int)s->n_ctx, "context_length", (int)s->n_ctx, "groups", groups);
}

int srv_route_models(srv_server_t *s, const srv_http_req_t *r)
{
    if (atomic_load(&s->state) != SRV_READY) {
        srv_metrics_count_http(s->metrics, r->path, 503);
        return srv_reply_error(r, 503, "service_unavailable", NULL, "not_ready",
                               "the model is not loaded yet");
    }
    srv_metrics_count_http(s->metrics, r->path, 200);
    return srv_reply_json(r, 200,
                          json_pack("{s:s, s:[o]}", "object", "list", "data", model_json(s)));
}

int srv_route_model(srv_server_t *s, const srv_http_req_t *r)
{
    const char *id = r->path + strlen("/v1/models/");
    if (atomic_load(&s->state) != SRV_READY) {
        srv_metrics_count_http(s->metrics, "/v1/models/{id}", 503);
        return srv_reply_error(r, 503, "service_unavailable", NULL, "not_ready",
                               "the model is not loaded yet");
    }
    if (strcmp(id, s->model_name) != 0) {
        srv_metrics_count_http(s->metrics, "/v1/models/{id}", 404);
        return srv_reply_error(r, 404, "invalid_request_error", "model", "model_not_found",
                               "The model '%s' does not exist (this server serves '%s')", id,
                               s->model_name);
    }
    srv_metrics_count_http(s->metrics, "/v1/models/{id}", 200);
    return srv_reply_json(r, 200, model_json(s));
}

int srv_route_metrics(srv_server_t *s, const srv_http_req_t *r)
{
    crd_engine_stats_t es;
    const bool ready = atomic_load(&s->state) == SRV_READY && s->router != NULL;
    const int n_g = ready ? s->n_groups : 0;
    srv_group_metrics_t *gm = calloc((size_t)(n_g > 0 ? n_g : 1), sizeof(*gm));
    crd_router_group_stats_t *rs = calloc((size_t)(n_g > 0 ? n_g : 1), sizeof(*rs));
    crd_engine_stats_t *ges = calloc((size_t)(n_g > 0 ? n_g : 1), sizeof(*ges));
    xp_group_health_t *gh = calloc((size_t)(n_g > 0 ? n_g : 1), sizeof(*gh));
    xp_remote_stats_t *xs = calloc((size_t)(n_g > 0 ? n_g : 1), sizeof(*xs));
    bool oom = gm == NULL || rs == NULL || ges == NULL || gh == NULL || xs == NULL;
    if (ready) {
        crd_router_get_stats(s->router, &es);
    }
    for (int i = 0; i < n_g && !oom; i++) {
        crd_router_group_stats(s->router, i, &rs[i]);
        crd_engine_get_stats(s->groups[i].engine, &ges[i]);
        gm[i].route = &rs[i];
        gm[i].es = &ges[i];
        xp_remote_exec_t *rx = s->groups[i].rx;
        if (rx != NULL) {
            gh[i].shards = calloc((size_t)xp_remote_exec_n_shards(rx), sizeof(*gh[i].shards));
            oom |= gh[i].shards == NULL;
            if (gh[i].shards != NULL) {
                xp_remote_exec_health(rx, &gh[i]);
                xp_remote_exec_stats(rx, &xs[i]);
                gm[i].health = &gh[i];
                gm[i].stats = &xs[i];
            }
        }
    }
    size_t len = 0;
    char *text = oom ? NULL
                     : srv_metrics_render(s->metrics, ready ? &es : NULL, gm, n_g,
                                          s->model_name != NULL ? s->model_name : "", &len);
    for (int i = 0; i < n_g && gh != NULL; i++) {
        free(gh[i].shards);
    }
    free(gm);
    free(rs);
    free(ges);
    free(gh);
    free(xs);
    if (text == NULL) {
        return srv_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
    }
    /* the front's connection counts (front.c) */
    char conns[512];
    int n = snprintf(conns, sizeof(conns),
                     "# HELP tandem_http_connections Client connections relayed now.\n"
                     "# TYPE tandem_http_connections gauge\n"
                     "tandem_http_connections %d\n"
                     "# HELP tandem_http_connections_rejected_total Connections turned away "
                     "(over --max-connections or --max-connections-per-client).\n"
                     "# TYPE tandem_http_connections_rejected_total counter\n"
                     "tandem_http_connections_rejected_total %lu\n",
                     s->front != NULL ? srv_front_n_conns(s->front) : 0,
                     s->front != NULL ? srv_front_n_rejected(s->front) : 0UL);
    char *all = text != NULL ? realloc(text, len + (size_t)n + 1) : NULL;
    if (all == NULL) {
        free(text);
        return srv_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
    }
    memcpy(all + len, conns, (size_t)n + 1);
    len += (size_t)n;
    int rc = srv_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", all, len);
    free(all);
    return rc;
}

static json_t *parse_object(const srv_http_req_t *r, char *msg, size_t msg_size)
{
    json_error_t je;
    json_t *o = json_loadb(r->body, r->body_len, 0, &je);
    if (o == NULL) {
        snprintf(msg, msg_size, "the body is not valid JSON: %s (at byte %d)", je.text,
                 je.position);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        snprintf(msg, msg_size, "the body must be a JSON object");
        return NULL;
    }
    return o;
}

static int bad(srv_server_t *s, const srv_http_req_t *r, const char *param, const char *msg)
{
    srv_metrics_count_http(s->metrics, r->path, 400);
    return srv_reply_error(r, 400, "invalid_request_error", param, "invalid_value", "%s", msg);
}

int srv_route_tokenize(srv_server_t *s, const srv_http_req_t *r)
{
    char msg[256];
    json_t *o = parse_object(r, msg, sizeof(msg));
    if (o == NULL) {
        return bad(s, r, NULL, msg);
    }
    json_t *prompt = json_object_get(o, "prompt");
    json_t *add = json_object_get(o, "add_special_tokens");
    if (!json_is_string(prompt)) {
        json_decref(o);
        return bad(s, r, "prompt", "'prompt' must be a string");
    }
    if (add != NULL && !json_is_boolean(add)) {
        json_decref(o);
        return bad(s, r, "add_special_tokens", "'add_special_tokens' must be a boolean");
    }
    unsigned flags =
        TOK_ENC_PARSE_SPECIAL | (add == NULL || json_is_true(add) ? TOK_ENC_ADD_SPECIAL : 0);
    tok_workspace_t *ws = NULL;
    tok_ids_t ids = {0};
    tdm_error_t err = {0};
    tdm_status_t st = tok_workspace_create(s->vocab, &ws, &err);
    if (st == TDM_OK) {
        st = tok_encode(s->vocab, ws, json_string_value(prompt), json_string_length(prompt), flags,
                        &ids, &err);
    }
    tok_workspace_destroy(ws);
    json_decref(o);
    if (st != TDM_OK) {
        return bad(s, r, "prompt", tdm_error_msg(&err));
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < ids.n; i++) {
        json_array_append_new(arr, json_integer(ids.ids[i]));
    }
    json_t *res = json_pack("{s:o, s:i, s:i}", "tokens", arr, "count", (int)ids.n, "max_model_len",
                            (int)s->n_ctx);
    tok_ids_free(&ids);
    srv_metrics_count_http(s->metrics, r->path, 200);
    return srv_reply_json(r, 200, res);
}

int srv_route_detokenize(srv_server_t *s, const srv_http_req_t *r)
{
    char msg[256];
    json_t *o = parse_object(r, msg, sizeof(msg));
    if (o == NULL) {
        return bad(s, r, NULL, msg);
    }
    json_t *tokens = json_object_get(o, "tokens");
    if (!json_is_array(tokens) || json_array_size(tokens) > (1u << 20)) {
        json_decref(o);
        return bad(s, r, "tokens", "'tokens' must be an array of token ids");
    }
    size_t n = json_array_size(tokens);
    tok_id_t *ids = malloc((n ? n : 1) * sizeof(tok_id_t));
    if (ids == NULL) {
        json_decref(o);
        return srv_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
    }
    uint32_t nv = tok_vocab_n_tokens(s->vocab);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(tokens, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= nv) {
            free(ids);
            json_decref(o);
            snprintf(msg, sizeof(msg), "tokens[%zu] is not a token id in [0, %u)", i, nv);
            return bad(s, r, "tokens", msg);
        }
        ids[i] = (tok_id_t)json_integer_value(v);
    }
    json_decref(o);
    char *text = NULL;
    size_t len = 0;
    tdm_error_t err = {0};
    tdm_status_t st = tok_decode(s->vocab, ids, n, TOK_DEC_RENDER_SPECIAL, &text, &len, &err);
    free(ids);
    if (st != TDM_OK) {
        return bad(s, r, "tokens", tdm_error_msg(&err));
    }
    json_t *str = json_stringn(text, len);
    free(text);
    if (str == NULL) {
        str = json_string("\xEF\xBF\xBD"); /* cannot happen: tok_decode repairs UTF-8 */
    }
    srv_metrics_count_http(s->metrics, r->path, 200);
    return srv_reply_json(r, 200, json_pack("{s:o}", "prompt", str));
}
