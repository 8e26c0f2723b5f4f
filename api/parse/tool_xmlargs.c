/*
 * tool_xmlargs.c - what the two XML tool-call formats (Qwen3-Coder, MiniMax-M2) share:
 * tag matching, names between '=' and '>', and the arguments object built from the raw
 * parameter texts with each value converted by the type the request's JSON schema gives
 * it (rules in tool_call.h). Both formats carry untyped text, so the conversion lives in
 * one place and they cannot drift apart.
 */
#include "api/parse/prs_json.h"
#include "api/parse/tool_internal.h"

#include "common/check.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int prs_tag_at(const char *r, size_t n, size_t i, const char *tag, size_t tl)
{
    size_t avail = n - i;
    if (avail >= tl) {
        return memcmp(r + i, tag, tl) == 0 ? 1 : 0;
    }
    return memcmp(r + i, tag, avail) == 0 ? -1 : 0;
}

bool prs_at_tag(const char *r, size_t n, size_t i, const char *tag, size_t tl)
{
    return n - i >= tl && memcmp(r + i, tag, tl) == 0;
}

bool prs_xml_name(const char *r, size_t n, size_t *i, bool unquote, size_t *nb, size_t *ne)
{
    size_t b = *i, gt = b;
    while (gt < n && r[gt] != '>') {
        if (r[gt] == '<' || r[gt] == '\n' || r[gt] == '\0') {
            return false;
        }
        gt++;
    }
    if (gt >= n) {
        return false;
    }
    size_t e = gt;
    while (b < e && prs_json_is_ws(r[b])) {
        b++;
    }
    while (e > b && prs_json_is_ws(r[e - 1])) {
        e--;
    }
    if (unquote && e - b >= 2 && (r[b] == '"' || r[b] == '\'') && r[e - 1] == r[b]) {
        b++;
        e--;
    }
    if (b == e || !prs_utf8_valid(r + b, e - b)) {
        return false;
    }
    *nb = b;
    *ne = e;
    *i = gt + 1;
    return true;
}

tdm_status_t prs_xparamv_push(prs_xparamv_t *pv, prs_xparam_t p)
{
    if (pv->n == pv->cap) {
        size_t cap = pv->cap == 0 ? 8 : pv->cap * 2;
        prs_xparam_t *v = realloc(pv->v, cap * sizeof(*v));
        if (v == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        pv->v = v;
        pv->cap = cap;
    }
    pv->v[pv->n++] = p;
    return TDM_OK;
}

void prs_xparamv_free(prs_xparamv_t *pv)
{
    free(pv->v);
    memset(pv, 0, sizeof(*pv));
}

/* ---- schemas ----------------------------------------------------------------------- */

typedef enum xtype {
    XT_STRING,
    XT_INTEGER,
    XT_NUMBER,
    XT_BOOLEAN,
    XT_NULL,
    XT_OBJECT,
    XT_ARRAY
} xtype_t;

#define MAX_TYPES 8

typedef struct types {
    xtype_t t[MAX_TYPES];
    int n;
} types_t;

static void add_type(types_t *ts, const json_t *name)
{
    static const char *const names[] = {"string", "integer", "number", "boolean",
                                        "null",   "object",  "array"};
    const char *s = json_string_value(name);
    for (size_t i = 0; s != NULL && i < TDM_ARRAY_SIZE(names); i++) {
        if (strcmp(s, names[i]) == 0 && ts->n < MAX_TYPES) {
            ts->t[ts->n++] = (xtype_t)i;
            return;
        }
    }
}

/* The types a property schema allows: "type" (a name or a list), else the types of its
 * anyOf / oneOf alternatives. */
static void schema_types(const json_t *schema, types_t *ts, int depth)
{
    const json_t *t = json_object_get(schema, "type");
    if (json_is_string(t)) {
        add_type(ts, t);
        return;
    }
    if (json_is_array(t)) {
        size_t i;
        const json_t *v;
        json_array_foreach(t, i, v)
        {
            add_type(ts, v);
        }
        return;
    }
    if (depth > 0) {
        return;
    }
    static const char *const alts[] = {"anyOf", "oneOf"};
    for (size_t a = 0; a < TDM_ARRAY_SIZE(alts); a++) {
        const json_t *list = json_object_get(schema, alts[a]);
        size_t i;
        const json_t *v;
        json_array_foreach(list, i, v)
        {
            schema_types(v, ts, depth + 1);
        }
    }
}

/* function.parameters.properties of the tool named fname, or NULL. */
static const json_t *find_properties(const json_t *tools, const char *fname)
{
    size_t i;
    const json_t *tool;
    json_array_foreach(tools, i, tool)
    {
        const json_t *fn = json_object_get(tool, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (name != NULL && strcmp(name, fname) == 0) {
            const json_t *props = json_object_get(json_object_get(fn, "parameters"), "properties");
            return json_is_object(props) ? props : NULL;
        }
    }
    return NULL;
}

/* ---- values ------------------------------------------------------------------------ */

static bool word_is(const char *s, size_t n, const char *w)
{
    return n == strlen(w) && strncasecmp(s, w, n) == 0;
}

/* Appends the value text v[0..n) converted for the types ts (none: no schema). */
static tdm_status_t put_value(const char *v, size_t n, const types_t *ts, prs_buf_t *out)
{
    size_t tb = 0, te = n, vb, ve;
    while (tb < te && prs_json_is_ws(v[tb])) {
        tb++;
    }
    while (te > tb && prs_json_is_ws(v[te - 1])) {
        te--;
    }
    const char *t = v + tb;
    size_t tn = te - tb;
    prs_json_kind_t kind = prs_json_whole(t, tn, &vb, &ve);
    if (ts->n == 0) {
        return kind != PRS_JSON_INVALID ? prs_json_minify(t, tn, out) : prs_json_escape(v, n, out);
    }
    for (int i = 0; i < ts->n; i++) {
        switch (ts->t[i]) {
        case XT_INTEGER:
        case XT_NUMBER:
            if (kind == PRS_JSON_NUMBER) {
                return prs_buf_append(out, t, tn);
            }
            break;
        case XT_BOOLEAN:
            if (word_is(t, tn, "true") || word_is(t, tn, "false")) {
                return prs_buf_append_str(out, (t[0] == 't' || t[0] == 'T') ? "true" : "false");
            }
            break;
        case XT_NULL:
            if (word_is(t, tn, "null")) {
                return prs_buf_append_str(out, "null");
            }
            break;
        case XT_OBJECT:
        case XT_ARRAY:
            if (kind == (ts->t[i] == XT_OBJECT ? PRS_JSON_OBJECT : PRS_JSON_ARRAY)) {
                return prs_json_minify(t, tn, out);
            }
            break;
        case XT_STRING:
            break; /* tried last: it always succeeds */
        }
    }
    return prs_json_escape(v, n, out);
}

/* The compact arguments object of params[0..np) (malloc'd), or NULL on no memory. */
static char *build_args(const char *r, const prs_xparam_t *ps, size_t np, const json_t *props)
{
    prs_buf_t out = {0}, key = {0};
    tdm_status_t st = prs_buf_append(&out, "{", 1);
    bool first = true;
    for (size_t i = 0; i < np && st == TDM_OK; i++) {
        size_t kl = ps[i].ne - ps[i].nb;
        bool later = false; /* a repeated parameter keeps its last value */
        for (size_t j = i + 1; j < np && !later; j++) {
            later = ps[j].ne - ps[j].nb == kl && memcmp(r + ps[j].nb, r + ps[i].nb, kl) == 0;
        }
        if (later) {
            continue;
        }
        prs_buf_clear(&key);
        st = prs_buf_append(&key, r + ps[i].nb, kl);
        types_t ts = {.n = 0};
        if (st == TDM_OK && memchr(key.data, '\0', kl) == NULL) {
            schema_types(json_object_get(props, key.data), &ts, 0);
        }
        if (st == TDM_OK && !first) {
            st = prs_buf_append(&out, ",", 1);
        }
        first = false;
        if (st == TDM_OK) {
            st = prs_json_escape(r + ps[i].nb, kl, &out);
        }
        if (st == TDM_OK) {
            st = prs_buf_append(&out, ":", 1);
        }
        if (st == TDM_OK) {
            st = put_value(r + ps[i].vb, ps[i].ve - ps[i].vb, &ts, &out);
        }
    }
    if (st == TDM_OK) {
        st = prs_buf_append(&out, "}", 1);
    }
    prs_buf_free(&key);
    if (st != TDM_OK) {
        prs_buf_free(&out);
        return NULL;
    }
    return prs_buf_take(&out);
}

tdm_status_t prs_xml_push_call(const char *r, size_t fb, size_t fe, const prs_xparamv_t *ps,
                               const json_t *tools, prs_callv_t *out)
{
    char *name = malloc(fe - fb + 1);
    if (name == NULL) {
        return TDM_ERR_NO_MEMORY;
    }
    memcpy(name, r + fb, fe - fb);
    name[fe - fb] = '\0';
    const json_t *props = find_properties(tools, name);
    return prs_callv_push(out, name, build_args(r, ps->v, ps->n, props));
}
