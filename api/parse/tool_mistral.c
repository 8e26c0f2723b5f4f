/*
 * tool_mistral.c - Mistral's tool-call formats (rules in tool_call.h), one region per
 * "[TOOL_CALLS]":
 *   [TOOL_CALLS]NAME[ARGS]{...}             tokenizer v13 and later (Devstral Small 2,
 *                                           Devstral 2, Ministral 3)
 *   [TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}  v11 (Mistral Small 3.1 / 3.2)
 *   [TOOL_CALLS][{"name": ..., ...}, ...]   v2 to v7 (Mistral 7B v0.3, Nemo, Small 3)
 * Nothing closes a call, so the scanner follows the JSON value's brackets and strings until
 * the bracket that balances the first one; the parser then validates the region strictly.
 */
#include "api/parse/prs_json.h"
#include "api/parse/tool_internal.h"

#include "common/check.h"

#include <stdlib.h>
#include <string.h>

#define MS_MAX_NAME 256 /* longest function name, bytes */
#define MS_MAX_ID   64  /* longest [CALL_ID] text scanned (only 9 is kept) */
#define MS_ID_LEN   9   /* Mistral's ids: 9 ASCII letters and digits */

enum {
    MS_LEAD = 0, /* after [TOOL_CALLS]: whitespace, then '[' (the array) or the name */
    MS_ARRAY,    /* after the array's '[': whitespace, then '{'                       */
    MS_NAME,     /* in the name                                                       */
    MS_NAME_WS,  /* whitespace after the name                                         */
    MS_ID,       /* after [CALL_ID]: the id                                           */
    MS_ARGS_WS,  /* after [ARGS]: whitespace, then '{'                                */
    MS_JSON,     /* in the JSON value, outside strings                                */
    MS_STRING,   /* in a JSON string                                                  */
    MS_ESCAPE,   /* in a JSON string, after a backslash                               */
};

static bool is_name_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || c == ':' || c >= 0x80;
}

static bool is_id_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* The region ends at at: the text from there on is read again as text. */
static bool stop_at(prs_scan_t *sc, size_t at, size_t *end)
{
    sc->pos = at;
    *end = at;
    return true;
}

/*
 * After the name (or the id): "[ARGS]" -> MS_ARGS_WS, "[CALL_ID]" -> MS_ID (only after a
 * name), '{' -> the arguments. Returns 1 when it moved on, 0 when r[*i] cannot follow, -1
 * when a partial tag must wait for more text.
 */
static int after_name(prs_scan_t *sc, const char *r, size_t n, size_t *i, bool id_allowed)
{
    if (r[*i] == '{') {
        sc->sub = MS_JSON;
        sc->depth = 1;
        (*i)++;
        return 1;
    }
    int t_args = prs_tag_at(r, n, *i, PRS_LIT(PRS_TAG_MS_ARGS));
    int t_id = id_allowed ? prs_tag_at(r, n, *i, PRS_LIT(PRS_TAG_MS_CALL_ID)) : 0;
    if (t_args == 1) {
        sc->sub = MS_ARGS_WS;
        *i += sizeof(PRS_TAG_MS_ARGS) - 1;
        return 1;
    }
    if (t_id == 1) {
        sc->sub = MS_ID;
        sc->count = 0;
        *i += sizeof(PRS_TAG_MS_CALL_ID) - 1;
        return 1;
    }
    return t_args < 0 || t_id < 0 ? -1 : 0;
}

bool prs_mistral_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end)
{
    size_t i = sc->pos;
    bool wait = false; /* a partial tag at the end of the text */
    while (i < n && !wait) {
        unsigned char c = (unsigned char)r[i];
        bool ws = prs_json_is_ws((char)c);
        int moved;
        switch (sc->sub) {
        case MS_LEAD:
            if (c == '[') {
                sc->sub = MS_ARRAY;
                sc->mark = i;
            } else if (is_name_byte(c)) {
                sc->sub = MS_NAME;
                sc->count = 0;
                continue; /* the byte is the name's first */
            } else if (!ws) {
                return stop_at(sc, i, end);
            }
            i++;
            break;
        case MS_ARRAY:
            if (c == '{') {
                sc->sub = MS_JSON;
                sc->depth = 2; /* the array and its first object */
            } else if (!ws) {
                return stop_at(sc, sc->mark, end); /* not an array of calls: from '[' on */
            }
            i++;
            break;
        case MS_NAME:
        case MS_NAME_WS:
            if (sc->sub == MS_NAME && is_name_byte(c)) {
                if (++sc->count > MS_MAX_NAME) {
                    /* not inside a UTF-8 character: the text from here on is content */
                    for (int k = 0; k < 3 && (r[i] & 0xC0) == 0x80; k++) {
                        i--;
                    }
                    return stop_at(sc, i, end);
                }
                i++;
            } else if (ws) {
                sc->sub = MS_NAME_WS;
                i++;
            } else if ((moved = after_name(sc, r, n, &i, true)) < 0) {
                wait = true;
            } else if (moved == 0) {
                return stop_at(sc, i, end);
            }
            break;
        case MS_ID:
            if (is_id_byte(c)) {
                if (++sc->count > MS_MAX_ID) {
                    return stop_at(sc, i, end);
                }
                i++;
            } else if (sc->count == 0 || c != '[' ||
                       (moved = after_name(sc, r, n, &i, false)) == 0) {
                return stop_at(sc, i, end);
            } else if (moved < 0) {
                wait = true;
            }
            break;
        case MS_ARGS_WS:
            if (c == '{') {
                sc->sub = MS_JSON;
                sc->depth = 1;
            } else if (!ws) {
                return stop_at(sc, i, end);
            }
            i++;
            break;
        case MS_JSON:
            if (c == '"') {
                sc->sub = MS_STRING;
            } else if ((c == '{' || c == '[') && ++sc->depth > PRS_JSON_MAX_DEPTH + 1) {
                return stop_at(sc, i, end); /* deeper than the validator accepts */
            } else if ((c == '}' || c == ']') && --sc->depth == 0) {
                sc->pos = i;
                *end = i + 1;
                return true;
            }
            i++;
            break;
        case MS_STRING:
            if (c < 0x20) {
                return stop_at(sc, i, end); /* never valid JSON: the call is malformed here */
            }
            sc->sub = c == '"' ? MS_JSON : c == '\\' ? MS_ESCAPE : MS_STRING;
            i++;
            break;
        default: /* MS_ESCAPE */
            if (c < 0x20) {
                return stop_at(sc, i, end);
            }
            sc->sub = MS_STRING;
            i++;
            break;
        }
    }
    sc->pos = i;
    return false;
}

/* ---- parsing a complete region ------------------------------------------------------ */

static size_t skip_ws(const char *r, size_t n, size_t i)
{
    while (i < n && prs_json_is_ws(r[i])) {
        i++;
    }
    return i;
}

/* A copy of s[0..n) when it is Mistral's id form (9 ASCII letters and digits), else NULL
 * with *st untouched; *st = TDM_ERR_NO_MEMORY when the copy fails. */
static char *keep_id(const char *s, size_t n, tdm_status_t *st)
{
    if (n != MS_ID_LEN) {
        return NULL;
    }
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) {
            return NULL;
        }
    }
    char *id = malloc(n + 1);
    if (id == NULL) {
        *st = TDM_ERR_NO_MEMORY;
        return NULL;
    }
    memcpy(id, s, n);
    id[n] = '\0';
    return id;
}

/* One element of the JSON array: {"name": ..., "arguments": ..., "id": ...}. */
static tdm_status_t parse_element(const char *body, size_t bn, prs_callv_t *out)
{
    prs_json_member_t m, name_m = {0}, args_m = {0}, params_m = {0}, id_m = {0};
    bool has_name = false, has_args = false, has_params = false, has_id = false;
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
        } else if (!has_id && prs_json_string_is(k, kl, "id")) {
            id_m = m;
            has_id = true;
        }
    }
    if (!has_name || name_m.kind != PRS_JSON_STRING) {
        return TDM_ERR_FORMAT;
    }
    prs_buf_t name = {0}, id = {0};
    tdm_status_t st = prs_json_unescape(body + name_m.val_b, name_m.val_e - name_m.val_b, &name);
    if (st == TDM_OK && (name.len == 0 || memchr(name.data, '\0', name.len) != NULL)) {
        st = TDM_ERR_FORMAT;
    }
    if (st == TDM_OK && has_id && id_m.kind == PRS_JSON_STRING) {
        st = prs_json_unescape(body + id_m.val_b, id_m.val_e - id_m.val_b, &id);
    }
    char *args = NULL, *kept = NULL;
    if (st == TDM_OK) {
        const prs_json_member_t *am = has_args ? &args_m : has_params ? &params_m : NULL;
        args = prs_json_call_args(body, am, &st);
    }
    if (st == TDM_OK && id.len > 0) {
        kept = keep_id(id.data, id.len, &st);
    }
    prs_buf_free(&id);
    if (st != TDM_OK) {
        prs_buf_free(&name);
        free(args);
        free(kept);
        return st;
    }
    return prs_callv_push_id(out, prs_buf_take(&name), args, kept);
}

/* [TOOL_CALLS][{...}, ...] from r[i], the array's '['. */
static tdm_status_t parse_array(const char *r, size_t n, size_t i, prs_callv_t *out)
{
    size_t vb, ve, n0 = out->n;
    if (prs_json_whole(r + i, n - i, &vb, &ve) != PRS_JSON_ARRAY) {
        return TDM_ERR_FORMAT;
    }
    for (i = skip_ws(r, n, i + 1); i < n && r[i] != ']';) {
        size_t e;
        if (prs_json_scan(r + i, n - i, &e) != PRS_JSON_OBJECT) {
            return TDM_ERR_FORMAT;
        }
        TDM_CHECK(parse_element(r + i, e, out));
        i = skip_ws(r, n, i + e);
        if (i < n && r[i] == ',') {
            i = skip_ws(r, n, i + 1);
        }
    }
    return out->n > n0 ? TDM_OK : TDM_ERR_FORMAT; /* an empty array is no call */
}

/* [TOOL_CALLS]NAME([CALL_ID]ID)?([ARGS])?{...} from r[i], the name's first byte. */
static tdm_status_t parse_named(const char *r, size_t n, size_t i, prs_callv_t *out)
{
    size_t nb = i;
    while (i < n && is_name_byte((unsigned char)r[i])) {
        i++;
    }
    size_t ne = i;
    if (ne == nb || ne - nb > MS_MAX_NAME || !prs_utf8_valid(r + nb, ne - nb)) {
        return TDM_ERR_FORMAT;
    }
    i = skip_ws(r, n, i);
    size_t ib = 0, ie = 0;
    if (prs_at_tag(r, n, i, PRS_LIT(PRS_TAG_MS_CALL_ID))) {
        ib = ie = i + sizeof(PRS_TAG_MS_CALL_ID) - 1;
        while (ie < n && is_id_byte((unsigned char)r[ie])) {
            ie++;
        }
        if (ie == ib || !prs_at_tag(r, n, ie, PRS_LIT(PRS_TAG_MS_ARGS))) {
            return TDM_ERR_FORMAT;
        }
        i = ie;
    }
    if (prs_at_tag(r, n, i, PRS_LIT(PRS_TAG_MS_ARGS))) {
        i += sizeof(PRS_TAG_MS_ARGS) - 1;
    }
    size_t vb, ve;
    if (prs_json_whole(r + i, n - i, &vb, &ve) != PRS_JSON_OBJECT) {
        return TDM_ERR_FORMAT;
    }
    prs_buf_t args = {0};
    tdm_status_t st = prs_json_minify(r + i + vb, ve - vb, &args);
    char *name = st == TDM_OK ? strndup(r + nb, ne - nb) : NULL;
    char *id = st == TDM_OK ? keep_id(r + ib, ie - ib, &st) : NULL;
    if (st != TDM_OK || name == NULL) {
        prs_buf_free(&args);
        free(name);
        free(id);
        return st != TDM_OK ? st : TDM_ERR_NO_MEMORY;
    }
    return prs_callv_push_id(out, name, prs_buf_take(&args), id);
}

tdm_status_t prs_mistral_parse(const char *r, size_t n, prs_callv_t *out)
{
    const size_t ol = sizeof(PRS_TAG_MS_CALLS) - 1;
    TDM_ASSERT(n >= ol);
    size_t i = skip_ws(r, n, ol);
    if (i == n) {
        return TDM_ERR_FORMAT;
    }
    return r[i] == '[' ? parse_array(r, n, i, out) : parse_named(r, n, i, out);
}
