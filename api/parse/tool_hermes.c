/*
 * tool_hermes.c - the Hermes tool-call format (Qwen2.5, Qwen3, NousHermes):
 * "<tool_call>" JSON object "</tool_call>" (rules in tool_call.h).
 */
#include "api/parse/prs_json.h"
#include "api/parse/tool_internal.h"

#include "common/check.h"

#include <stdlib.h>
#include <string.h>

enum {
    HS_CODE = 0, /* outside a JSON string                   */
    HS_STRING,   /* inside a JSON string                    */
    HS_ESCAPE,   /* inside a JSON string, after a backslash */
};

/*
 * The region ends at the first "</tool_call>" outside a JSON string. A raw newline inside
 * a string cannot be valid JSON, so it ends the string for this purpose: a call with an
 * unbalanced quote is then still closed by a "</tool_call>" on a later line (and rejected
 * by the parser) instead of holding the rest of the output.
 */
bool prs_hermes_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end)
{
    static const char tag[] = PRS_TAG_TOOL_CALL_END;
    const size_t tl = sizeof(tag) - 1;
    size_t i = sc->pos;
    for (; i < n; i++) {
        char c = r[i];
        if (sc->sub == HS_ESCAPE) {
            sc->sub = c == '\n' ? HS_CODE : HS_STRING;
        } else if (sc->sub == HS_STRING) {
            if (c == '"' || c == '\n') {
                sc->sub = HS_CODE;
            } else if (c == '\\') {
                sc->sub = HS_ESCAPE;
            }
        } else if (c == '"') {
            sc->sub = HS_STRING;
        } else if (c == '<') {
            size_t avail = n - i;
            if (avail >= tl && memcmp(r + i, tag, tl) == 0) {
                *end = i + tl;
                sc->pos = i;
                return true;
            }
            if (avail < tl && memcmp(r + i, tag, avail) == 0) {
                break; /* maybe the closing tag: wait here */
            }
        }
    }
    sc->pos = i;
    return false;
}

char *prs_json_call_args(const char *body, const prs_json_member_t *m, tdm_status_t *st)
{
    prs_buf_t out = {0}, inner = {0};
    *st = TDM_OK;
    if (m == NULL || m->kind == PRS_JSON_NULL) {
        *st = prs_buf_append_str(&out, "{}");
    } else if (m->kind == PRS_JSON_OBJECT) {
        *st = prs_json_minify(body + m->val_b, m->val_e - m->val_b, &out);
    } else if (m->kind == PRS_JSON_STRING) {
        /* arguments given as a JSON string that holds the object */
        size_t vb, ve;
        *st = prs_json_unescape(body + m->val_b, m->val_e - m->val_b, &inner);
        if (*st == TDM_OK) {
            if (inner.len > 0 &&
                prs_json_whole(inner.data, inner.len, &vb, &ve) == PRS_JSON_OBJECT) {
                *st = prs_json_minify(inner.data + vb, ve - vb, &out);
            } else {
                *st = TDM_ERR_FORMAT;
            }
        }
    } else {
        *st = TDM_ERR_FORMAT;
    }
    prs_buf_free(&inner);
    if (*st != TDM_OK) {
        prs_buf_free(&out);
        return NULL;
    }
    return prs_buf_take(&out);
}

tdm_status_t prs_hermes_parse(const char *r, size_t n, prs_callv_t *out)
{
    const size_t ol = sizeof(PRS_TAG_TOOL_CALL) - 1, cl = sizeof(PRS_TAG_TOOL_CALL_END) - 1;
    TDM_ASSERT(n >= ol + cl);
    const char *body = r + ol;
    size_t bn = n - ol - cl, vb, ve;
    if (prs_json_whole(body, bn, &vb, &ve) != PRS_JSON_OBJECT) {
        return TDM_ERR_FORMAT;
    }
    body += vb;
    bn = ve - vb;
    prs_json_member_t m, name_m = {0}, args_m = {0}, params_m = {0};
    bool has_name = false, has_args = false, has_params = false;
    size_t pos = 0;
    while (prs_json_object_next(body, bn, &pos, &m)) {
        const char *k = body + m.key_b;
        size_t kl = m.key_e - m.key_b;
        if (!has_name && prs_json_string_is(k, kl, "name")) {
            name_m = m;
            has_name = true;
        } else if (!has_args && prs_json_string_is(k, kl, "arguments")) {
            args_m = m;
            has_args = true;
        } else if (!has_params && prs_json_string_is(k, kl, "parameters")) {
            params_m = m;
            has_params = true;
        }
    }
    if (!has_name || name_m.kind != PRS_JSON_STRING) {
        return TDM_ERR_FORMAT;
    }
    prs_buf_t name = {0};
    tdm_status_t st = prs_json_unescape(body + name_m.val_b, name_m.val_e - name_m.val_b, &name);
    if (st == TDM_OK && (name.len == 0 || memchr(name.data, '\0', name.len) != NULL)) {
        st = TDM_ERR_FORMAT;
    }
    if (st != TDM_OK) {
        prs_buf_free(&name);
        return st;
    }
    const prs_json_member_t *am = has_args ? &args_m : has_params ? &params_m : NULL;
    char *args = prs_json_call_args(body, am, &st);
    if (args == NULL) {
        prs_buf_free(&name);
        return st;
    }
    return prs_callv_push(out, prs_buf_take(&name), args);
}
