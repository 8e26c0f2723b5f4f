/*
 * tool_qwen3coder.c - the Qwen3-Coder XML tool-call format: <tool_call>, <function=NAME>,
 * <parameter=NAME>value</parameter>, with values converted by the tools' JSON schemas
 * (rules in tool_call.h).
 */
#include "api/parse/prs_json.h"
#include "api/parse/tool_internal.h"

#include "common/check.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    XS_OUT = 0,    /* between tags, not inside a value  */
    XS_PARAM_NAME, /* after "<parameter=", before '>'   */
    XS_VALUE,      /* inside a parameter value          */
};

/* 1 when tag is at r[i..n), -1 when r[i..n) is a proper prefix of it, 0 otherwise. */
static int tag_at(const char *r, size_t n, size_t i, const char *tag, size_t tl)
{
    size_t avail = n - i;
    if (avail >= tl) {
        return memcmp(r + i, tag, tl) == 0 ? 1 : 0;
    }
    return memcmp(r + i, tag, avail) == 0 ? -1 : 0;
}

bool prs_xml_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end)
{
    size_t i = sc->pos;
    while (i < n) {
        char c = r[i];
        if (sc->sub == XS_PARAM_NAME) {
            if (c == '>') {
                sc->sub = XS_VALUE;
            } else if (c == '\n' || c == '<') {
                sc->sub = XS_OUT; /* malformed name: the parser will reject it */
                continue;
            }
            i++;
            continue;
        }
        if (c != '<') {
            i++;
            continue;
        }
        int t_param = tag_at(r, n, i, PRS_LIT(PRS_TAG_PARAMETER));
        int t_fend = tag_at(r, n, i, PRS_LIT(PRS_TAG_FUNCTION_END));
        int t_pend = sc->sub == XS_VALUE ? tag_at(r, n, i, PRS_LIT(PRS_TAG_PARAMETER_END)) : 0;
        int t_tcend =
            sc->sub == XS_OUT && sc->wrapped ? tag_at(r, n, i, PRS_LIT(PRS_TAG_TOOL_CALL_END)) : 0;
        if (t_tcend == 1 || (t_fend == 1 && !sc->wrapped)) {
            *end = i + (t_tcend == 1 ? sizeof(PRS_TAG_TOOL_CALL_END) - 1
                                     : sizeof(PRS_TAG_FUNCTION_END) - 1);
            sc->pos = i;
            return true;
        }
        if (t_param == 1) {
            sc->sub = XS_PARAM_NAME;
            i += sizeof(PRS_TAG_PARAMETER) - 1;
        } else if (t_pend == 1) {
            sc->sub = XS_OUT;
            i += sizeof(PRS_TAG_PARAMETER_END) - 1;
        } else if (t_fend == 1) {
            sc->sub = XS_OUT; /* wrapped: the function ends, the region goes on */
            i += sizeof(PRS_TAG_FUNCTION_END) - 1;
        } else if (t_param < 0 || t_fend < 0 || t_pend < 0 || t_tcend < 0) {
            break; /* a partial tag at the end: wait here */
        } else {
            i++;
        }
    }
    sc->pos = i;
    return false;
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

/* ---- blocks ------------------------------------------------------------------------ */

typedef struct param {
    size_t nb, ne; /* name  */
    size_t vb, ve; /* value */
} param_t;

/* A name between '=' and '>': trimmed, non-empty, UTF-8, no '<', newline or NUL. */
static bool parse_name(const char *r, size_t n, size_t *i, size_t *nb, size_t *ne)
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
    if (b == e || !prs_utf8_valid(r + b, e - b)) {
        return false;
    }
    *nb = b;
    *ne = e;
    *i = gt + 1;
    return true;
}

static bool at_tag(const char *r, size_t n, size_t i, const char *tag, size_t tl)
{
    return n - i >= tl && memcmp(r + i, tag, tl) == 0;
}

/* The compact arguments object of params[0..np) (malloc'd), or NULL on no memory. */
static char *build_args(const char *r, const param_t *ps, size_t np, const json_t *props)
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

/* One "<function=NAME>...</function>" block at r[*i] within r[0..n); appends its call. */
static tdm_status_t parse_function(const char *r, size_t n, size_t *i, const json_t *tools,
                                   prs_callv_t *out)
{
    size_t k = *i + sizeof(PRS_TAG_FUNCTION) - 1, fb, fe;
    if (!parse_name(r, n, &k, &fb, &fe)) {
        return TDM_ERR_FORMAT;
    }
    param_t *ps = NULL;
    size_t np = 0, cap = 0;
    tdm_status_t st = TDM_OK;
    for (;;) {
        while (k < n && prs_json_is_ws(r[k])) {
            k++;
        }
        if (at_tag(r, n, k, PRS_LIT(PRS_TAG_FUNCTION_END))) {
            k += sizeof(PRS_TAG_FUNCTION_END) - 1;
            break;
        }
        param_t p;
        if (!at_tag(r, n, k, PRS_LIT(PRS_TAG_PARAMETER))) {
            st = TDM_ERR_FORMAT; /* text that is neither a parameter nor the end */
            break;
        }
        k += sizeof(PRS_TAG_PARAMETER) - 1;
        if (!parse_name(r, n, &k, &p.nb, &p.ne)) {
            st = TDM_ERR_FORMAT;
            break;
        }
        /* the value ends at the first </parameter>, <parameter= or </function> */
        size_t e1 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_PARAMETER_END));
        size_t e2 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_PARAMETER));
        size_t e3 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_FUNCTION_END));
        size_t e = e1 < e2 ? e1 : e2;
        e = e < e3 ? e : e3;
        if (e == n - k) {
            st = TDM_ERR_FORMAT;
            break;
        }
        p.vb = k;
        p.ve = k + e;
        k = e == e1 ? p.ve + sizeof(PRS_TAG_PARAMETER_END) - 1 : p.ve;
        if (p.ve > p.vb && r[p.vb] == '\n') {
            p.vb++; /* one leading and one trailing newline belong to the layout */
        }
        if (p.ve > p.vb && r[p.ve - 1] == '\n') {
            p.ve--;
        }
        if (np == cap) {
            cap = cap == 0 ? 8 : cap * 2;
            param_t *nps = realloc(ps, cap * sizeof(*nps));
            if (nps == NULL) {
                st = TDM_ERR_NO_MEMORY;
                break;
            }
            ps = nps;
        }
        ps[np++] = p;
    }
    if (st == TDM_OK) {
        char *name = malloc(fe - fb + 1);
        if (name != NULL) {
            memcpy(name, r + fb, fe - fb);
            name[fe - fb] = '\0';
        }
        const json_t *props = name != NULL ? find_properties(tools, name) : NULL;
        st = prs_callv_push(out, name, build_args(r, ps, np, props));
        *i = k;
    }
    free(ps);
    return st;
}

tdm_status_t prs_xml_parse(const char *r, size_t n, bool wrapped, const json_t *tools,
                           prs_callv_t *out)
{
    size_t i = 0;
    if (!wrapped) {
        TDM_CHECK(parse_function(r, n, &i, tools, out));
        return i == n ? TDM_OK : TDM_ERR_FORMAT;
    }
    const size_t ol = sizeof(PRS_TAG_TOOL_CALL) - 1, cl = sizeof(PRS_TAG_TOOL_CALL_END) - 1;
    TDM_ASSERT(n >= ol + cl);
    size_t bn = n - cl; /* the body is r[ol..bn) */
    size_t n0 = out->n;
    i = ol;
    for (;;) {
        while (i < bn && prs_json_is_ws(r[i])) {
            i++;
        }
        if (i == bn) {
            return out->n > n0 ? TDM_OK : TDM_ERR_FORMAT;
        }
        if (!at_tag(r, bn, i, PRS_LIT(PRS_TAG_FUNCTION))) {
            return TDM_ERR_FORMAT;
        }
        TDM_CHECK(parse_function(r, bn, &i, tools, out));
    }
}
