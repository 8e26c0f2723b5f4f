/*
 * template.c - chat templates on top of the Jinja engine: compile once, render per
 * request with the context prepared as transformers' apply_chat_template prepares it,
 * and load a model's template and special-token texts from its GGUF metadata.
 */
#include "coordinator/template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tpl_template {
    jinja_tpl_t *jt;
    char *source;
    char *bos;
    char *eos;
};

tdm_status_t tpl_compile_n(const char *source, size_t len, tpl_template_t **out, tdm_error_t *err)
{
    if (source == NULL || out == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tpl_compile: source and out are required");
    }
    tpl_template_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory compiling a chat template");
    }
    t->source = malloc(len + 1);
    if (t->source == NULL) {
        free(t);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory compiling a chat template");
    }
    memcpy(t->source, source, len);
    t->source[len] = '\0';
    tdm_status_t st = jinja_compile(source, len, &t->jt, err);
    if (st != TDM_OK) {
        free(t->source);
        free(t);
        return st;
    }
    *out = t;
    return TDM_OK;
}

tdm_status_t tpl_compile(const char *source, tpl_template_t **out, tdm_error_t *err)
{
    if (source == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tpl_compile: source is required");
    }
    return tpl_compile_n(source, strlen(source), out, err);
}

void tpl_destroy(tpl_template_t *tpl)
{
    if (tpl == NULL) {
        return;
    }
    jinja_free(tpl->jt);
    free(tpl->source);
    free(tpl->bos);
    free(tpl->eos);
    free(tpl);
}

static tdm_status_t dup_opt(const char *s, char **out, tdm_error_t *err)
{
    *out = NULL;
    if (s == NULL) {
        return TDM_OK;
    }
    *out = strdup(s);
    if (*out == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
    }
    return TDM_OK;
}

tdm_status_t tpl_set_special_tokens(tpl_template_t *tpl, const char *bos, const char *eos,
                                    tdm_error_t *err)
{
    if (tpl == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tpl_set_special_tokens: no template");
    }
    char *b, *e;
    if (dup_opt(bos, &b, err) != TDM_OK) {
        return TDM_ERR_NO_MEMORY;
    }
    if (dup_opt(eos, &e, err) != TDM_OK) {
        free(b);
        return TDM_ERR_NO_MEMORY;
    }
    free(tpl->bos);
    free(tpl->eos);
    tpl->bos = b;
    tpl->eos = e;
    return TDM_OK;
}

const char *tpl_bos_token(const tpl_template_t *tpl)
{
    return tpl ? tpl->bos : NULL;
}

const char *tpl_eos_token(const tpl_template_t *tpl)
{
    return tpl ? tpl->eos : NULL;
}

const char *tpl_source(const tpl_template_t *tpl)
{
    return tpl ? tpl->source : NULL;
}

tpl_render_opts_t tpl_default_opts(void)
{
    tpl_render_opts_t o;
    memset(&o, 0, sizeof(o));
    o.limits = jinja_default_limits();
    return o;
}

/* transformers' _alias_reasoning_fields: {"thinking": r, **message, "reasoning_content": r}
 * where r is the first non-null of reasoning_content, thinking, reasoning. */
static json_t *alias_message(json_t *m)
{
    static const char *const fields[] = {"reasoning_content", "thinking", "reasoning"};
    json_t *r = NULL;
    for (size_t i = 0; i < 3 && r == NULL; i++) {
        json_t *v = json_object_get(m, fields[i]);
        if (v != NULL && !json_is_null(v)) {
            r = v;
        }
    }
    if (r == NULL) {
        return json_incref(m);
    }
    json_t *n = json_object();
    if (n == NULL) {
        return NULL;
    }
    int rc = json_object_set(n, "thinking", r);
    const char *key;
    json_t *val;
    json_object_foreach(m, key, val)
    {
        rc |= json_object_set(n, key, val);
    }
    rc |= json_object_set(n, "reasoning_content", r);
    if (rc != 0) {
        json_decref(n);
        return NULL;
    }
    return n;
}

/* Builds the variables transformers passes to the template (see template.h). */
static tdm_status_t prepare_context(const tpl_template_t *tpl, const json_t *ctx, bool alias,
                                    json_t **out, tdm_error_t *err)
{
    json_t *vars = json_object();
    if (vars == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory preparing a chat template");
    }
    int rc = 0;
    rc |= json_object_set_new(vars, "tools", json_null());
    rc |= json_object_set_new(vars, "documents", json_null());
    rc |= json_object_set_new(vars, "add_generation_prompt", json_false());
    if (tpl->bos != NULL) {
        rc |= json_object_set_new(vars, "bos_token", json_string(tpl->bos));
    }
    if (tpl->eos != NULL) {
        rc |= json_object_set_new(vars, "eos_token", json_string(tpl->eos));
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)ctx, key, val)
    {
        if (alias && strcmp(key, "messages") == 0 && json_is_array(val)) {
            json_t *msgs = json_array();
            size_t i;
            json_t *m;
            json_array_foreach(val, i, m)
            {
                if (!json_is_object(m)) {
                    json_decref(msgs);
                    json_decref(vars);
                    return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                         "chat messages must be objects (message %zu is not)", i);
                }
                json_t *am = alias_message(m);
                if (am == NULL || json_array_append_new(msgs, am) != 0) {
                    json_decref(msgs);
                    json_decref(vars);
                    return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                                         "out of memory preparing a chat template");
                }
            }
            rc |= json_object_set_new(vars, key, msgs);
        } else {
            rc |= json_object_set(vars, key, val);
        }
    }
    if (rc != 0) {
        json_decref(vars);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory preparing a chat template");
    }
    *out = vars;
    return TDM_OK;
}

tdm_status_t tpl_render_ex(const tpl_template_t *tpl, const json_t *ctx,
                           const tpl_render_opts_t *opts, char **out, size_t *out_len,
                           tdm_error_t *err)
{
    if (tpl == NULL || out == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tpl_render: template and out are required");
    }
    if (ctx != NULL && !json_is_object(ctx)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "chat template context must be a JSON object");
    }
    tpl_render_opts_t dflt = tpl_default_opts();
    if (opts == NULL) {
        opts = &dflt;
    }
    json_t *empty = NULL;
    if (ctx == NULL) {
        empty = json_object();
        ctx = empty;
    }
    json_t *vars = NULL;
    tdm_status_t st = prepare_context(tpl, ctx, !opts->no_reasoning_alias, &vars, err);
    json_decref(empty);
    if (st != TDM_OK) {
        return st;
    }
    jinja_render_opts_t jo;
    jo.limits = opts->limits;
    jo.has_time = opts->has_time;
    jo.time_sec = opts->time_sec;
    jo.time_usec = opts->time_usec;
    st = jinja_render(tpl->jt, vars, &jo, out, out_len, err);
    json_decref(vars);
    return st;
}

tdm_status_t tpl_render(const tpl_template_t *tpl, const json_t *ctx, char **out, tdm_error_t *err)
{
    return tpl_render_ex(tpl, ctx, NULL, out, NULL, err);
}

/* the text of token `key`'s id in tokenizer.ggml.tokens, or NULL */
static char *token_text(const gguf_ctx_t *g, const char *key)
{
    uint32_t id;
    if (gguf_get_u32(g, key, &id, NULL) != TDM_OK) {
        return NULL;
    }
    uint64_t n;
    const void *data;
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n, &data, NULL) != TDM_OK ||
        id >= n) {
        return NULL;
    }
    const gguf_str_t *s = (const gguf_str_t *)data + id;
    if (memchr(s->ptr, '\0', s->len) != NULL) {
        return NULL;
    }
    char *r = malloc(s->len + 1);
    if (r != NULL) {
        memcpy(r, s->ptr, s->len);
        r[s->len] = '\0';
    }
    return r;
}

tdm_status_t tpl_from_gguf(const gguf_ctx_t *gguf, const char *name, tpl_template_t **out,
                           tdm_error_t *err)
{
    if (gguf == NULL || out == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tpl_from_gguf: gguf and out are required");
    }
    char key[256];
    if (name != NULL) {
        snprintf(key, sizeof(key), "tokenizer.chat_template.%s", name);
    } else {
        snprintf(key, sizeof(key), "tokenizer.chat_template");
    }
    gguf_str_t src;
    tdm_status_t st = gguf_get_str(gguf, key, &src, NULL);
    if (st == TDM_ERR_NOT_FOUND) {
        return tdm_error_set(err, TDM_ERR_NOT_FOUND, "%s: the model has no '%s'",
                             gguf_path(gguf, 0) ? gguf_path(gguf, 0) : "model", key);
    }
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "%s: '%s' is not a string",
                             gguf_path(gguf, 0) ? gguf_path(gguf, 0) : "model", key);
    }
    tpl_template_t *t;
    st = tpl_compile_n(src.ptr, (size_t)src.len, &t, err);
    if (st != TDM_OK) {
        return st;
    }
    t->bos = token_text(gguf, "tokenizer.ggml.bos_token_id");
    t->eos = token_text(gguf, "tokenizer.ggml.eos_token_id");
    *out = t;
    return TDM_OK;
}
