/* prs_json.c - strict JSON validation, minifying and string escaping (see prs_json.h). */
#include "api/parse/prs_json.h"

#include "common/check.h"

#include <stdint.h>
#include <string.h>

size_t prs_utf8_seq(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) {
        return 0;
    }
    unsigned char c = u[0];
    if (c < 0x80) {
        return 1;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms       */
        hi = c == 0xED ? 0x9F : 0xBF; /* no UTF-16 surrogates    */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        lo = c == 0xF0 ? 0x90 : 0x80; /* no overlong forms       */
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF  */
    } else {
        return 0;
    }
    if (n < len || u[1] < lo || u[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < len; i++) {
        if ((u[i] & 0xC0) != 0x80) {
            return 0;
        }
    }
    return len;
}

bool prs_utf8_valid(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = prs_utf8_seq(s + i, n - i);
        if (k == 0) {
            return false;
        }
        i += k;
    }
    return true;
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* The 4 hex digits at s[0..4) (n bytes available), or -1. */
static long hex4(const char *s, size_t n)
{
    if (n < 4) {
        return -1;
    }
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_val(s[i]);
        if (h < 0) {
            return -1;
        }
        v = v * 16 + h;
    }
    return v;
}

/* A string literal starting at s[0] == '"'; returns the index past the closing quote or 0. */
static size_t scan_string(const char *s, size_t n)
{
    size_t i = 1;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            return i + 1;
        }
        if (c < 0x20) {
            return 0;
        }
        if (c == '\\') {
            if (i + 1 >= n) {
                return 0;
            }
            char e = s[i + 1];
            if (strchr("\"\\/bfnrt", e) != NULL && e != '\0') {
                i += 2;
                continue;
            }
            if (e != 'u') {
                return 0;
            }
            long cp = hex4(s + i + 2, n - (i + 2));
            if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) {
                return 0; /* bad digits or a lone low surrogate */
            }
            i += 6;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (i + 1 >= n || s[i] != '\\' || s[i + 1] != 'u') {
                    return 0;
                }
                long lo = hex4(s + i + 2, n - (i + 2));
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    return 0;
                }
                i += 6;
            }
            continue;
        }
        size_t k = prs_utf8_seq(s + i, n - i);
        if (k == 0) {
            return 0;
        }
        i += k;
    }
    return 0;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* A number starting at s[0]; returns the index past it or 0. */
static size_t scan_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-') {
        i++;
    }
    if (i >= n || !is_digit(s[i])) {
        return 0;
    }
    if (s[i] == '0') {
        i++;
    } else {
        while (i < n && is_digit(s[i])) {
            i++;
        }
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !is_digit(s[i])) {
            return 0;
        }
        while (i < n && is_digit(s[i])) {
            i++;
        }
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            i++;
        }
        if (i >= n || !is_digit(s[i])) {
            return 0;
        }
        while (i < n && is_digit(s[i])) {
            i++;
        }
    }
    return i;
}

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && prs_json_is_ws(s[i])) {
        i++;
    }
    return i;
}

static prs_json_kind_t scan_value(const char *s, size_t n, size_t *end, int depth)
{
    if (n == 0) {
        return PRS_JSON_INVALID;
    }
    size_t k;
    switch (s[0]) {
    case '"':
        k = scan_string(s, n);
        if (k == 0) {
            return PRS_JSON_INVALID;
        }
        *end = k;
        return PRS_JSON_STRING;
    case 't':
    case 'f':
    case 'n': {
        static const char *const words[] = {"true", "false", "null"};
        static const prs_json_kind_t kinds[] = {PRS_JSON_TRUE, PRS_JSON_FALSE, PRS_JSON_NULL};
        int w = s[0] == 't' ? 0 : s[0] == 'f' ? 1 : 2;
        size_t wl = strlen(words[w]);
        if (n < wl || memcmp(s, words[w], wl) != 0) {
            return PRS_JSON_INVALID;
        }
        *end = wl;
        return kinds[w];
    }
    case '{':
    case '[': {
        if (depth >= PRS_JSON_MAX_DEPTH) {
            return PRS_JSON_INVALID;
        }
        bool obj = s[0] == '{';
        char close = obj ? '}' : ']';
        size_t i = skip_ws(s, n, 1);
        if (i < n && s[i] == close) {
            *end = i + 1;
            return obj ? PRS_JSON_OBJECT : PRS_JSON_ARRAY;
        }
        for (;;) {
            size_t e;
            if (obj) {
                if (i >= n || s[i] != '"') {
                    return PRS_JSON_INVALID;
                }
                k = scan_string(s + i, n - i);
                if (k == 0) {
                    return PRS_JSON_INVALID;
                }
                i = skip_ws(s, n, i + k);
                if (i >= n || s[i] != ':') {
                    return PRS_JSON_INVALID;
                }
                i = skip_ws(s, n, i + 1);
            }
            if (scan_value(s + i, n - i, &e, depth + 1) == PRS_JSON_INVALID) {
                return PRS_JSON_INVALID;
            }
            i = skip_ws(s, n, i + e);
            if (i < n && s[i] == ',') {
                i = skip_ws(s, n, i + 1);
                continue;
            }
            if (i < n && s[i] == close) {
                *end = i + 1;
                return obj ? PRS_JSON_OBJECT : PRS_JSON_ARRAY;
            }
            return PRS_JSON_INVALID;
        }
    }
    default:
        k = scan_number(s, n);
        if (k == 0) {
            return PRS_JSON_INVALID;
        }
        *end = k;
        return PRS_JSON_NUMBER;
    }
}

prs_json_kind_t prs_json_scan(const char *s, size_t n, size_t *end)
{
    return scan_value(s, n, end, 0);
}

prs_json_kind_t prs_json_whole(const char *s, size_t n, size_t *vb, size_t *ve)
{
    size_t b = skip_ws(s, n, 0), e;
    prs_json_kind_t k = scan_value(s + b, n - b, &e, 0);
    if (k == PRS_JSON_INVALID || skip_ws(s, n, b + e) != n) {
        return PRS_JSON_INVALID;
    }
    *vb = b;
    *ve = b + e;
    return k;
}

bool prs_json_object_next(const char *s, size_t n, size_t *pos, prs_json_member_t *m)
{
    size_t i = *pos == 0 ? 1 : *pos;
    i = skip_ws(s, n, i);
    if (i < n && s[i] == ',') {
        i = skip_ws(s, n, i + 1);
    }
    if (i >= n || s[i] != '"') {
        return false;
    }
    size_t e;
    m->key_b = i;
    scan_value(s + i, n - i, &e, 0);
    m->key_e = i + e;
    i = skip_ws(s, n, m->key_e);
    i = skip_ws(s, n, i + 1); /* the ':' */
    m->val_b = i;
    m->kind = scan_value(s + i, n - i, &e, 0);
    m->val_e = i + e;
    *pos = m->val_e;
    return true;
}

/* Appends code point cp as UTF-8. */
static tdm_status_t put_utf8(prs_buf_t *out, uint32_t cp)
{
    char b[4];
    size_t k;
    if (cp < 0x80) {
        b[0] = (char)cp;
        k = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        k = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        k = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        k = 4;
    }
    return prs_buf_append(out, b, k);
}

tdm_status_t prs_json_unescape(const char *s, size_t n, prs_buf_t *out)
{
    size_t i = 1, end = n - 1; /* inside the quotes */
    while (i < end) {
        size_t run = i;
        while (run < end && s[run] != '\\') {
            run++;
        }
        TDM_CHECK(prs_buf_append(out, s + i, run - i));
        i = run;
        if (i >= end) {
            break;
        }
        char e = s[i + 1];
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *f = strchr(from, e);
        if (e != 'u' && f != NULL) {
            TDM_CHECK(prs_buf_append(out, &to[f - from], 1));
            i += 2;
            continue;
        }
        uint32_t cp = (uint32_t)hex4(s + i + 2, end - (i + 2));
        i += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo = (uint32_t)hex4(s + i + 2, end - (i + 2));
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
        }
        TDM_CHECK(put_utf8(out, cp));
    }
    return TDM_OK;
}

bool prs_json_string_is(const char *s, size_t n, const char *lit)
{
    size_t ll = strlen(lit);
    if (memchr(s, '\\', n) == NULL) {
        return n == ll + 2 && memcmp(s + 1, lit, ll) == 0;
    }
    prs_buf_t b = {0};
    bool eq = prs_json_unescape(s, n, &b) == TDM_OK && b.len == ll && memcmp(b.data, lit, ll) == 0;
    prs_buf_free(&b);
    return eq;
}

tdm_status_t prs_json_minify(const char *s, size_t n, prs_buf_t *out)
{
    size_t i = 0;
    while (i < n) {
        if (prs_json_is_ws(s[i])) {
            i++;
            continue;
        }
        size_t j = i;
        if (s[i] == '"') {
            j = i + scan_string(s + i, n - i);
            if (j == i) {
                j = n; /* not reached for validated input */
            }
        } else {
            while (j < n && !prs_json_is_ws(s[j]) && s[j] != '"') {
                j++;
            }
        }
        TDM_CHECK(prs_buf_append(out, s + i, j - i));
        i = j;
    }
    return TDM_OK;
}

tdm_status_t prs_json_escape(const char *s, size_t n, prs_buf_t *out)
{
    TDM_CHECK(prs_buf_append(out, "\"", 1));
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        for (;;) {
            if (run >= n) {
                break;
            }
            unsigned char c = (unsigned char)s[run];
            if (c == '"' || c == '\\' || c < 0x20) {
                break;
            }
            if (c < 0x80) {
                run++;
                continue;
            }
            size_t k = prs_utf8_seq(s + run, n - run);
            if (k == 0) {
                break;
            }
            run += k;
        }
        TDM_CHECK(prs_buf_append(out, s + i, run - i));
        i = run;
        if (i >= n) {
            break;
        }
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        const char *rep = esc;
        size_t rl = 2;
        esc[0] = '\\';
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            if (c < 0x20) {
                static const char hex[] = "0123456789abcdef";
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                rl = 6;
            } else {
                rep = "\xEF\xBF\xBD"; /* U+FFFD for a byte that is not UTF-8 */
                rl = 3;
            }
            break;
        }
        TDM_CHECK(prs_buf_append(out, rep, rl));
        i++;
    }
    return prs_buf_append(out, "\"", 1);
}
