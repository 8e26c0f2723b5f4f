/*
 * jinja_builtins.c - the Jinja engine's filters, tests, global functions and the
 * methods of str / list / dict / loop values, with jinja2 3.1's (and Python's)
 * semantics, plus the globals transformers adds for chat templates (raise_exception,
 * strftime_now, its namespace() and dict()).
 *
 * Case mapping covers ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic and fullwidth
 * Latin; other scripts are left unchanged (see coordinator/README.md).
 */
#include "coordinator/jinja/jinja_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAX_RANGE 100000 /* jinja2's sandbox limit on range() */

/* ---------------------------------------------------------------------------------- */
/* Small helpers                                                                       */

static jv mkfunc(jx_t *x, const char *name, jbuiltin_fn fn, jv self)
{
    jfunc_t *f = jx_alloc(x, sizeof(*f));
    f->name = name;
    f->fn = fn;
    f->self = self;
    jv v;
    v.t = JV_FUNC;
    v.v.fn = f;
    return v;
}

static void need_defined(jx_t *x, jv v)
{
    if (v.t == JV_UNDEF) {
        jv_undef_fail(x, v);
    }
}

static jstr_t *need_str(jx_t *x, jv v, const char *what)
{
    if (v.t == JV_STR) {
        return v.v.s;
    }
    need_defined(x, v);
    jx_fail(x, TDM_ERR_INVALID_PARAM, "%s must be str, not %s", what, jv_type_name(v.t));
}

static int64_t need_int(jx_t *x, jv v, const char *what)
{
    if (v.t == JV_INT) {
        return v.v.i;
    }
    if (v.t == JV_BOOL) {
        return v.v.b;
    }
    need_defined(x, v);
    jx_fail(x, TDM_ERR_INVALID_PARAM, "%s must be an integer, not %s", what, jv_type_name(v.t));
}

static bool is_num(jv v)
{
    return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
}

static double as_f(jv v)
{
    return v.t == JV_FLOAT ? v.v.f : v.t == JV_INT ? (double)v.v.i : (double)v.v.b;
}

static int hexval_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'Z') {
        return c - 'A' + 10;
    }
    return -1;
}

static jv empty_str(jx_t *x)
{
    return jv_str(x, "", 0);
}

/* ---------------------------------------------------------------------------------- */
/* Unicode case mapping (partial, see the file comment)                                */

static bool pair_range(uint32_t c, uint32_t lo, uint32_t hi, bool even_upper)
{
    return c >= lo && c <= hi && (((c & 1) == 0) == even_upper);
}

static uint32_t cp_lower(uint32_t c)
{
    if (c < 0x80) {
        return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) {
        return c + 32;
    }
    if (pair_range(c, 0x100, 0x137, true) || pair_range(c, 0x139, 0x148, false) ||
        pair_range(c, 0x14A, 0x177, true) || pair_range(c, 0x179, 0x17E, false) ||
        pair_range(c, 0x460, 0x481, true) || pair_range(c, 0x48A, 0x4BF, true)) {
        return c + 1;
    }
    if (c == 0x178) {
        return 0xFF;
    }
    if ((c >= 0x391 && c <= 0x3A9 && c != 0x3A2)) {
        return c + 32;
    }
    if (c == 0x386) {
        return 0x3AC;
    }
    if (c >= 0x388 && c <= 0x38A) {
        return c + 37;
    }
    if (c == 0x38C) {
        return 0x3CC;
    }
    if (c == 0x38E || c == 0x38F) {
        return c + 63;
    }
    if (c >= 0x410 && c <= 0x42F) {
        return c + 32;
    }
    if (c >= 0x400 && c <= 0x40F) {
        return c + 80;
    }
    if (c >= 0xFF21 && c <= 0xFF3A) {
        return c + 32;
    }
    return c;
}

static uint32_t cp_upper(uint32_t c)
{
    if (c < 0x80) {
        return (c >= 'a' && c <= 'z') ? c - 32 : c;
    }
    if (c == 0xB5) {
        return 0x39C;
    }
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) {
        return c - 32;
    }
    if (c == 0xFF) {
        return 0x178;
    }
    if (pair_range(c, 0x101, 0x137, false) || pair_range(c, 0x13A, 0x148, true) ||
        pair_range(c, 0x14B, 0x177, false) || pair_range(c, 0x17A, 0x17E, true) ||
        pair_range(c, 0x461, 0x481, false) || pair_range(c, 0x48B, 0x4BF, false)) {
        return c - 1;
    }
    if (c == 0x131) {
        return 'I';
    }
    if (c == 0x17F) {
        return 'S';
    }
    if (c == 0x3C2) {
        return 0x3A3;
    }
    if ((c >= 0x3B1 && c <= 0x3C9)) {
        return c - 32;
    }
    if (c == 0x3AC) {
        return 0x386;
    }
    if (c >= 0x3AD && c <= 0x3AF) {
        return c - 37;
    }
    if (c == 0x3CC) {
        return 0x38C;
    }
    if (c == 0x3CD || c == 0x3CE) {
        return c - 63;
    }
    if (c >= 0x430 && c <= 0x44F) {
        return c - 32;
    }
    if (c >= 0x450 && c <= 0x45F) {
        return c - 80;
    }
    if (c >= 0xFF41 && c <= 0xFF5A) {
        return c - 32;
    }
    return c;
}

static bool cp_cased(uint32_t c)
{
    return cp_lower(c) != c || cp_upper(c) != c || c == 0xDF || c == 0x138 || c == 0x149;
}

static bool cp_is_lower(uint32_t c)
{
    return cp_upper(c) != c || c == 0xDF || c == 0x138 || c == 0x149;
}

static bool cp_is_upper(uint32_t c)
{
    return cp_lower(c) != c;
}

static void put_cp(jbuf_t *b, uint32_t c)
{
    char tmp[4];
    jb_put(b, tmp, ju_encode(c, tmp));
}

static void put_upper(jbuf_t *b, uint32_t c)
{
    if (c == 0xDF) {
        jb_puts(b, "SS");
    } else if (c == 0x149) {
        jb_puts(b, "\xca\xbcN");
    } else {
        put_cp(b, cp_upper(c));
    }
}

static void put_title(jbuf_t *b, uint32_t c)
{
    if (c == 0xDF) {
        jb_puts(b, "Ss");
    } else {
        put_cp(b, cp_upper(c));
    }
}

/* lower-cases with Python's final-sigma rule */
static void put_lower_at(jbuf_t *b, const char *s, size_t len, size_t i, uint32_t c)
{
    if (c == 0x130) {
        jb_puts(b, "i\xcc\x87");
        return;
    }
    if (c == 0x3A3) {
        bool before = false;
        for (size_t k = 0; k < i;) {
            size_t adv;
            uint32_t p = ju_decode(s + k, len - k, &adv);
            before = cp_cased(p) ? true : (p == '\'' || p == 0x2019) ? before : false;
            k += adv;
        }
        size_t adv0;
        ju_decode(s + i, len - i, &adv0);
        bool after = false;
        for (size_t k = i + adv0; k < len;) {
            size_t adv;
            uint32_t p = ju_decode(s + k, len - k, &adv);
            if (cp_cased(p)) {
                after = true;
                break;
            }
            if (p != '\'' && p != 0x2019) {
                break;
            }
            k += adv;
        }
        put_cp(b, before && !after ? 0x3C2 : 0x3C3);
        return;
    }
    put_cp(b, cp_lower(c));
}

typedef enum { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE, CASE_SWAP } case_op_t;

static jv str_case(jx_t *x, jstr_t *s, case_op_t op)
{
    jbuf_t b;
    jb_init(&b, x, false);
    bool prev_cased = false;
    size_t i = 0;
    bool first = true;
    while (i < s->len) {
        size_t adv;
        uint32_t c = ju_decode(s->s + i, s->len - i, &adv);
        switch (op) {
        case CASE_UPPER:
            put_upper(&b, c);
            break;
        case CASE_LOWER:
            put_lower_at(&b, s->s, s->len, i, c);
            break;
        case CASE_TITLE:
            if (prev_cased) {
                put_lower_at(&b, s->s, s->len, i, c);
            } else {
                put_title(&b, c);
            }
            prev_cased = cp_cased(c);
            break;
        case CASE_CAPITALIZE:
            if (first) {
                put_title(&b, c);
            } else {
                put_lower_at(&b, s->s, s->len, i, c);
            }
            break;
        case CASE_SWAP:
            if (cp_is_upper(c)) {
                put_lower_at(&b, s->s, s->len, i, c);
            } else if (cp_is_lower(c)) {
                put_upper(&b, c);
            } else {
                put_cp(&b, c);
            }
            break;
        }
        first = false;
        i += adv;
    }
    return jv_strv(jb_str(&b));
}

/* ---------------------------------------------------------------------------------- */
/* String operations                                                                   */

static bool cp_in(uint32_t c, const jstr_t *chars)
{
    size_t i = 0;
    while (i < chars->len) {
        size_t adv;
        if (ju_decode(chars->s + i, chars->len - i, &adv) == c) {
            return true;
        }
        i += adv;
    }
    return false;
}

/* strip: which = 1 left, 2 right, 3 both; chars NULL = whitespace */
static jv str_strip(jx_t *x, jstr_t *s, const jstr_t *chars, int which)
{
    size_t a = 0, e = s->len;
    if (which & 1) {
        while (a < e) {
            size_t adv;
            uint32_t c = ju_decode(s->s + a, e - a, &adv);
            if (chars ? !cp_in(c, chars) : !ju_isspace(c)) {
                break;
            }
            a += adv;
        }
    }
    if (which & 2) {
        /* walk forward to find the last kept code point */
        size_t i = a, keep = a;
        while (i < e) {
            size_t adv;
            uint32_t c = ju_decode(s->s + i, e - i, &adv);
            i += adv;
            if (chars ? !cp_in(c, chars) : !ju_isspace(c)) {
                keep = i;
            }
        }
        e = keep;
    }
    if (a == 0 && e == s->len) {
        return jv_strv(s);
    }
    return jv_str(x, s->s + a, e - a);
}

static jv str_replace(jx_t *x, jstr_t *s, jstr_t *old, jstr_t *new_, int64_t count)
{
    jbuf_t b;
    jb_init(&b, x, false);
    if (old->len == 0) {
        /* inserts `new` before each code point and at the end */
        size_t i = 0;
        int64_t done = 0;
        while (i <= s->len) {
            if (count >= 0 && done >= count) {
                jb_put(&b, s->s + i, s->len - i);
                break;
            }
            jb_put(&b, new_->s, new_->len);
            done++;
            if (i == s->len) {
                break;
            }
            size_t adv;
            ju_decode(s->s + i, s->len - i, &adv);
            jb_put(&b, s->s + i, adv);
            i += adv;
        }
        return jv_strv(jb_str(&b));
    }
    size_t i = 0;
    int64_t done = 0;
    while (i < s->len) {
        if (count >= 0 && done >= count) {
            break;
        }
        const char *hit = memmem(s->s + i, s->len - i, old->s, old->len);
        if (hit == NULL) {
            break;
        }
        size_t at = (size_t)(hit - s->s);
        jb_put(&b, s->s + i, at - i);
        jb_put(&b, new_->s, new_->len);
        i = at + old->len;
        done++;
    }
    jb_put(&b, s->s + i, s->len - i);
    return jv_strv(jb_str(&b));
}

/* the code point ending at byte i (i > 0); *start gets where it begins */
static uint32_t prev_cp(const char *s, size_t i, size_t *start)
{
    size_t k = i - 1;
    while (k > 0 && i - k < 4 && ((unsigned char)s[k] & 0xC0) == 0x80) {
        k--;
    }
    size_t adv;
    uint32_t c = ju_decode(s + k, i - k, &adv);
    if (k + adv != i) { /* not a well-formed character ending at i: one byte */
        k = i - 1;
        c = (unsigned char)s[k];
    }
    *start = k;
    return c;
}

static jv str_split(jx_t *x, jstr_t *s, jv sepv, int64_t maxsplit, bool from_right)
{
    jlist_t *l = jl_new(x, 0);
    if (sepv.t == JV_NONE || sepv.t == JV_UNDEF) {
        /* runs of whitespace; no empty strings */
        if (!from_right) {
            size_t i = 0;
            int64_t splits = 0;
            for (;;) {
                while (i < s->len) {
                    size_t adv;
                    if (!ju_isspace(ju_decode(s->s + i, s->len - i, &adv))) {
                        break;
                    }
                    i += adv;
                }
                if (i >= s->len) {
                    break;
                }
                if (maxsplit >= 0 && splits >= maxsplit) {
                    /* rest, with trailing whitespace kept as Python does */
                    jl_push(x, l, jv_str(x, s->s + i, s->len - i));
                    break;
                }
                size_t st = i;
                while (i < s->len) {
                    size_t adv;
                    if (ju_isspace(ju_decode(s->s + i, s->len - i, &adv))) {
                        break;
                    }
                    i += adv;
                }
                jl_push(x, l, jv_str(x, s->s + st, i - st));
                splits++;
            }
            return jv_list(l);
        }
        /* rsplit(None) as CPython: from the right; the head keeps its leading spaces */
        jlist_t *rev = jl_new(x, 0);
        size_t i = s->len, at;
        int64_t count = 0;
        for (;;) {
            while (i > 0 && ju_isspace(prev_cp(s->s, i, &at))) {
                i = at;
            }
            if (i == 0) {
                break;
            }
            if (maxsplit >= 0 && count >= maxsplit) {
                jl_push(x, rev, jv_str(x, s->s, i));
                break;
            }
            size_t end = i;
            while (i > 0 && !ju_isspace(prev_cp(s->s, i, &at))) {
                i = at;
            }
            jl_push(x, rev, jv_str(x, s->s + i, end - i));
            count++;
        }
        for (size_t k = rev->n; k > 0; k--) {
            jl_push(x, l, rev->items[k - 1]);
        }
        return jv_list(l);
    }
    jstr_t *sep = need_str(x, sepv, "separator");
    if (sep->len == 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "empty separator");
    }
    if (!from_right) {
        size_t i = 0;
        int64_t splits = 0;
        for (;;) {
            const char *hit = (maxsplit < 0 || splits < maxsplit)
                                  ? memmem(s->s + i, s->len - i, sep->s, sep->len)
                                  : NULL;
            if (hit == NULL) {
                jl_push(x, l, jv_str(x, s->s + i, s->len - i));
                break;
            }
            size_t at = (size_t)(hit - s->s);
            jl_push(x, l, jv_str(x, s->s + i, at - i));
            i = at + sep->len;
            splits++;
        }
        return jv_list(l);
    }
    /* rsplit with a separator: collect from the right, then reverse */
    size_t end = s->len;
    int64_t splits = 0;
    jlist_t *rev = jl_new(x, 0);
    for (;;) {
        const char *hit = NULL;
        if ((maxsplit < 0 || splits < maxsplit) && end >= sep->len) {
            for (size_t k = end - sep->len + 1; k > 0; k--) {
                if (memcmp(s->s + k - 1, sep->s, sep->len) == 0) {
                    hit = s->s + k - 1;
                    break;
                }
            }
        }
        if (hit == NULL) {
            jl_push(x, rev, jv_str(x, s->s, end));
            break;
        }
        size_t at = (size_t)(hit - s->s);
        jl_push(x, rev, jv_str(x, s->s + at + sep->len, end - at - sep->len));
        end = at;
        splits++;
    }
    for (size_t k = rev->n; k > 0; k--) {
        jl_push(x, l, rev->items[k - 1]);
    }
    return jv_list(l);
}

static bool is_line_break(uint32_t c)
{
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
           c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
}

static jlist_t *str_splitlines(jx_t *x, jstr_t *s, bool keepends)
{
    jlist_t *l = jl_new(x, 0);
    size_t i = 0, st = 0;
    while (i < s->len) {
        size_t adv;
        uint32_t c = ju_decode(s->s + i, s->len - i, &adv);
        if (is_line_break(c)) {
            size_t eol = i + adv;
            if (c == '\r' && eol < s->len && s->s[eol] == '\n') {
                eol++;
            }
            jl_push(x, l, jv_str(x, s->s + st, (keepends ? eol : i) - st));
            i = st = eol;
            continue;
        }
        i += adv;
    }
    if (st < s->len) {
        jl_push(x, l, jv_str(x, s->s + st, s->len - st));
    }
    return l;
}

/* code point range [start, end) of a str for find/count/startswith arguments */
static void sub_range(jx_t *x, jstr_t *s, const jargs_t *a, size_t first, size_t *b0, size_t *b1)
{
    int64_t n = js_ncp(s);
    jv vs = jarg(a, first, NULL, jv_none()), ve = jarg(a, first + 1, NULL, jv_none());
    int64_t st = vs.t == JV_NONE ? 0 : need_int(x, vs, "start");
    int64_t en = ve.t == JV_NONE ? n : need_int(x, ve, "end");
    if (st < 0) {
        st = st + n < 0 ? 0 : st + n;
    }
    if (en < 0) {
        en = en + n < 0 ? 0 : en + n;
    }
    if (st > n) {
        st = n + 1; /* empty, and no match even for "" */
    }
    if (en > n) {
        en = n;
    }
    *b0 = st > n ? s->len + 1 : ju_offset(s->s, s->len, st);
    *b1 = ju_offset(s->s, s->len, en);
}

static int64_t cp_index_of(jstr_t *s, size_t byte_off)
{
    int64_t n = 0;
    size_t i = 0;
    while (i < byte_off && i < s->len) {
        size_t adv;
        ju_decode(s->s + i, s->len - i, &adv);
        i += adv;
        n++;
    }
    return n;
}

static int64_t str_find(jx_t *x, jstr_t *s, const jargs_t *a, bool rev)
{
    jstr_t *sub = need_str(x, jarg(a, 0, NULL, jv_undef()), "substring");
    size_t b0, b1;
    sub_range(x, s, a, 1, &b0, &b1);
    if (b0 > s->len || b1 < b0 || b1 - b0 < sub->len) {
        return -1;
    }
    if (!rev) {
        const char *hit = sub->len ? memmem(s->s + b0, b1 - b0, sub->s, sub->len) : s->s + b0;
        return hit ? cp_index_of(s, (size_t)(hit - s->s)) : -1;
    }
    for (size_t k = b1 - sub->len + 1; k > b0; k--) {
        if (memcmp(s->s + k - 1, sub->s, sub->len) == 0) {
            return cp_index_of(s, k - 1);
        }
    }
    return -1;
}

static bool starts_or_ends(jx_t *x, jstr_t *s, const jargs_t *a, bool ends)
{
    jv pv = jarg(a, 0, NULL, jv_undef());
    size_t b0, b1;
    sub_range(x, s, a, 1, &b0, &b1);
    const jv *cands = &pv;
    size_t nc = 1;
    if (pv.t == JV_TUPLE) {
        cands = pv.v.l->items;
        nc = pv.v.l->n;
    }
    for (size_t i = 0; i < nc; i++) {
        if (cands[i].t != JV_STR) {
            need_defined(x, cands[i]);
            jx_fail(x, TDM_ERR_INVALID_PARAM, "%s first arg must be str or a tuple of str, not %s",
                    ends ? "endswith" : "startswith", jv_type_name(cands[i].t));
        }
        jstr_t *p = cands[i].v.s;
        if (b0 > s->len || b1 < b0 || b1 - b0 < p->len) {
            continue;
        }
        const char *at = ends ? s->s + b1 - p->len : s->s + b0;
        if (memcmp(at, p->s, p->len) == 0) {
            return true;
        }
    }
    return false;
}

static jv str_join(jx_t *x, jstr_t *sep, jv iterable, bool stringify)
{
    jlist_t *l = jv_iter_list(x, iterable);
    jbuf_t b;
    jb_init(&b, x, false);
    for (size_t i = 0; i < l->n; i++) {
        if (i) {
            jb_put(&b, sep->s, sep->len);
        }
        if (!stringify && l->items[i].t != JV_STR) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "sequence item %zu: expected str instance, %s found",
                    i, jv_type_name(l->items[i].t));
        }
        jv_write_str(x, &b, l->items[i]);
    }
    return jv_strv(jb_str(&b));
}

/* Python str.format with auto/manual numbering, names, attribute/index access and the
 * !s / !r conversions; format specs are not supported. */
static jv str_format(jx_t *x, jstr_t *fmt, const jargs_t *a)
{
    jbuf_t b;
    jb_init(&b, x, false);
    const char *s = fmt->s;
    size_t n = fmt->len;
    size_t auto_idx = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '}') {
            if (i + 1 < n && s[i + 1] == '}') {
                jb_putc(&b, '}');
                i++;
                continue;
            }
            jx_fail(x, TDM_ERR_INVALID_PARAM, "Single '}' encountered in format string");
        }
        if (c != '{') {
            jb_putc(&b, c);
            continue;
        }
        if (i + 1 < n && s[i + 1] == '{') {
            jb_putc(&b, '{');
            i++;
            continue;
        }
        size_t e = i + 1;
        while (e < n && s[e] != '}') {
            e++;
        }
        if (e >= n) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "expected '}' before end of string");
        }
        /* field: name[.attr|[idx]]*[!conv][:spec] */
        const char *f = s + i + 1;
        size_t fl = e - i - 1;
        char conv = 0;
        size_t k = 0;
        while (k < fl && f[k] != '.' && f[k] != '[' && f[k] != '!' && f[k] != ':') {
            k++;
        }
        jv v;
        if (k == 0) {
            v = jarg(a, auto_idx++, NULL, jv_undef());
            if (auto_idx > a->npos) {
                jx_fail(x, TDM_ERR_INVALID_PARAM,
                        "Replacement index %zu out of range for "
                        "positional args tuple",
                        auto_idx - 1);
            }
        } else if (f[0] >= '0' && f[0] <= '9') {
            size_t idx = (size_t)strtoul(f, NULL, 10);
            if (idx >= a->npos) {
                jx_fail(x, TDM_ERR_INVALID_PARAM,
                        "Replacement index %zu out of range for positional args tuple", idx);
            }
            v = a->pos[idx];
        } else {
            char name[128];
            snprintf(name, sizeof(name), "%.*s", (int)(k < 127 ? k : 127), f);
            bool found = false;
            for (size_t q = 0; q < a->nkw; q++) {
                if (strcmp(a->kwn[q], name) == 0) {
                    v = a->kwv[q];
                    found = true;
                }
            }
            if (!found) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "KeyError: '%s'", name);
            }
        }
        while (k < fl && (f[k] == '.' || f[k] == '[')) {
            if (f[k] == '.') {
                size_t st = ++k;
                while (k < fl && f[k] != '.' && f[k] != '[' && f[k] != '!' && f[k] != ':') {
                    k++;
                }
                char name[128];
                snprintf(name, sizeof(name), "%.*s", (int)(k - st < 127 ? k - st : 127), f + st);
                v = jx_getattr(x, v, name);
            } else {
                size_t st = ++k;
                while (k < fl && f[k] != ']') {
                    k++;
                }
                char key[128];
                snprintf(key, sizeof(key), "%.*s", (int)(k - st < 127 ? k - st : 127), f + st);
                k++;
                char *endp;
                long long iv = strtoll(key, &endp, 10);
                jv kv = (*key && *endp == '\0') ? jv_int(iv) : jv_cstr(x, key);
                v = jx_getitem(x, v, kv);
            }
        }
        if (k < fl && f[k] == '!') {
            conv = k + 1 < fl ? f[k + 1] : 0;
            k += 2;
        }
        if (k < fl && f[k] == ':' && k + 1 < fl) {
            jx_fail(x, TDM_ERR_UNSUPPORTED, "format specs in str.format are not supported");
        }
        if (conv == 'r' || conv == 'a') {
            jv_write_repr(x, &b, v);
        } else {
            jv_write_str(x, &b, v);
        }
        i = e;
    }
    return jv_strv(jb_str(&b));
}

/* ---------------------------------------------------------------------------------- */
/* Methods                                                                             */

static jstr_t *self_str(jv self)
{
    return self.v.s;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static jv m_strip(jx_t *x, jv self, jargs_t *a, int which, const char *name)
{
    jargs_check(x, a, name, 1, ARGS("chars"));
    jv c = jarg(a, 0, "chars", jv_none());
    return str_strip(x, self_str(self), c.t == JV_NONE ? NULL : need_str(x, c, "chars"), which);
}
static jv m_str_strip(jx_t *x, jv self, jargs_t *a)
{
    return m_strip(x, self, a, 3, "strip");
}
static jv m_str_lstrip(jx_t *x, jv self, jargs_t *a)
{
    return m_strip(x, self, a, 1, "lstrip");
}
static jv m_str_rstrip(jx_t *x, jv self, jargs_t *a)
{
    return m_strip(x, self, a, 2, "rstrip");
}
static jv m_str_upper(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "upper", 0, NULL);
    return str_case(x, self_str(self), CASE_UPPER);
}
static jv m_str_lower(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "lower", 0, NULL);
    return str_case(x, self_str(self), CASE_LOWER);
}
static jv m_str_title(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "title", 0, NULL);
    return str_case(x, self_str(self), CASE_TITLE);
}
static jv m_str_capitalize(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "capitalize", 0, NULL);
    return str_case(x, self_str(self), CASE_CAPITALIZE);
}
static jv m_str_swapcase(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "swapcase", 0, NULL);
    return str_case(x, self_str(self), CASE_SWAP);
}
static jv m_str_startswith(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "startswith", 3, NULL);
    return jv_bool(starts_or_ends(x, self_str(self), a, false));
}
static jv m_str_endswith(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "endswith", 3, NULL);
    return jv_bool(starts_or_ends(x, self_str(self), a, true));
}
static jv m_str_split(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "split", 2, ARGS("sep", "maxsplit"));
    return str_split(x, self_str(self), jarg(a, 0, "sep", jv_none()),
                     need_int(x, jarg(a, 1, "maxsplit", jv_int(-1)), "maxsplit"), false);
}
static jv m_str_rsplit(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "rsplit", 2, ARGS("sep", "maxsplit"));
    return str_split(x, self_str(self), jarg(a, 0, "sep", jv_none()),
                     need_int(x, jarg(a, 1, "maxsplit", jv_int(-1)), "maxsplit"), true);
}
static jv m_str_splitlines(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "splitlines", 1, ARGS("keepends"));
    return jv_list(
        str_splitlines(x, self_str(self), jv_truthy(jarg(a, 0, "keepends", jv_bool(false)))));
}
static jv m_str_replace(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "replace", 3, ARGS("old", "new", "count"));
    return str_replace(x, self_str(self), need_str(x, jarg(a, 0, "old", jv_undef()), "old"),
                       need_str(x, jarg(a, 1, "new", jv_undef()), "new"),
                       need_int(x, jarg(a, 2, "count", jv_int(-1)), "count"));
}
static jv m_str_find(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "find", 3, NULL);
    return jv_int(str_find(x, self_str(self), a, false));
}
static jv m_str_rfind(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "rfind", 3, NULL);
    return jv_int(str_find(x, self_str(self), a, true));
}
static jv m_str_index(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "index", 3, NULL);
    int64_t r = str_find(x, self_str(self), a, false);
    if (r < 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "substring not found");
    }
    return jv_int(r);
}
static jv m_str_count(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "count", 3, NULL);
    jstr_t *s = self_str(self);
    jstr_t *sub = need_str(x, jarg(a, 0, NULL, jv_undef()), "substring");
    size_t b0, b1;
    sub_range(x, s, a, 1, &b0, &b1);
    if (b0 > s->len || b1 < b0) {
        return jv_int(0);
    }
    if (sub->len == 0) {
        return jv_int(cp_index_of(s, b1) - cp_index_of(s, b0) + 1);
    }
    int64_t n = 0;
    size_t i = b0;
    while (i + sub->len <= b1) {
        const char *hit = memmem(s->s + i, b1 - i, sub->s, sub->len);
        if (hit == NULL) {
            break;
        }
        n++;
        i = (size_t)(hit - s->s) + sub->len;
    }
    return jv_int(n);
}
static jv m_str_join(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "join", 1, NULL);
    return str_join(x, self_str(self), jarg(a, 0, NULL, jv_undef()), false);
}
static jv m_str_format(jx_t *x, jv self, jargs_t *a)
{
    return str_format(x, self_str(self), a);
}
static jv m_str_removeprefix(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "removeprefix", 1, NULL);
    jstr_t *s = self_str(self), *p = need_str(x, jarg(a, 0, NULL, jv_undef()), "prefix");
    if (p->len <= s->len && memcmp(s->s, p->s, p->len) == 0) {
        return jv_str(x, s->s + p->len, s->len - p->len);
    }
    return self;
}
static jv m_str_removesuffix(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "removesuffix", 1, NULL);
    jstr_t *s = self_str(self), *p = need_str(x, jarg(a, 0, NULL, jv_undef()), "suffix");
    if (p->len > 0 && p->len <= s->len && memcmp(s->s + s->len - p->len, p->s, p->len) == 0) {
        return jv_str(x, s->s, s->len - p->len);
    }
    return self;
}

typedef bool (*cp_pred)(uint32_t c);
static bool p_digit(uint32_t c)
{
    return (c >= '0' && c <= '9') || (c >= 0x660 && c <= 0x669) || (c >= 0xFF10 && c <= 0xFF19);
}
static bool p_alpha(uint32_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= 0xAA && !ju_isspace(c) && !p_digit(c) && c != 0xD7 && c != 0xF7 &&
            !(c >= 0x2000 && c <= 0x2BFF) && !(c >= 0x3000 && c <= 0x303F) &&
            !(c >= 0xFF00 && c <= 0xFF0F) && !(c >= 0x1F000 && c <= 0x1FAFF) && c > 0xBF);
}
static bool p_alnum(uint32_t c)
{
    return p_alpha(c) || p_digit(c);
}
static bool p_space(uint32_t c)
{
    return ju_isspace(c);
}
static jv str_all(jstr_t *s, cp_pred pred)
{
    if (s->len == 0) {
        return jv_bool(false);
    }
    size_t i = 0;
    while (i < s->len) {
        size_t adv;
        if (!pred(ju_decode(s->s + i, s->len - i, &adv))) {
            return jv_bool(false);
        }
        i += adv;
    }
    return jv_bool(true);
}
static jv m_str_isdigit(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "isdigit", 0, NULL);
    return str_all(self_str(self), p_digit);
}
static jv m_str_isalpha(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "isalpha", 0, NULL);
    return str_all(self_str(self), p_alpha);
}
static jv m_str_isalnum(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "isalnum", 0, NULL);
    return str_all(self_str(self), p_alnum);
}
static jv m_str_isspace(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "isspace", 0, NULL);
    return str_all(self_str(self), p_space);
}

static bool str_is_case(jstr_t *s, bool want_lower)
{
    bool cased = false;
    size_t i = 0;
    while (i < s->len) {
        size_t adv;
        uint32_t c = ju_decode(s->s + i, s->len - i, &adv);
        if (want_lower ? cp_is_upper(c) : cp_is_lower(c)) {
            return false;
        }
        if (cp_cased(c)) {
            cased = true;
        }
        i += adv;
    }
    return cased;
}
static jv m_str_islower(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "islower", 0, NULL);
    return jv_bool(str_is_case(self_str(self), true));
}
static jv m_str_isupper(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "isupper", 0, NULL);
    return jv_bool(str_is_case(self_str(self), false));
}

static jv items_list(jx_t *x, jdict_t *d)
{
    jlist_t *l = jl_new(x, d->n);
    for (size_t i = 0; i < d->n; i++) {
        jlist_t *t = jl_new(x, 2);
        t->items[0] = d->keys[i];
        t->items[1] = d->vals[i];
        t->n = 2;
        l->items[i] = jv_tuple(t);
    }
    l->n = d->n;
    return jv_list(l);
}
static jv m_dict_items(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "items", 0, NULL);
    return items_list(x, self.v.d);
}
static jv m_dict_keys(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "keys", 0, NULL);
    jlist_t *l = jl_new(x, self.v.d->n);
    memcpy(l->items, self.v.d->keys, self.v.d->n * sizeof(jv));
    l->n = self.v.d->n;
    return jv_list(l);
}
static jv m_dict_values(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "values", 0, NULL);
    jlist_t *l = jl_new(x, self.v.d->n);
    memcpy(l->items, self.v.d->vals, self.v.d->n * sizeof(jv));
    l->n = self.v.d->n;
    return jv_list(l);
}
static jv m_dict_get(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "get", 2, NULL);
    jv key = jarg(a, 0, NULL, jv_undef());
    if (key.t == JV_UNDEF && a->npos == 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "get expected at least 1 argument, got 0");
    }
    jv out;
    if (jd_get(self.v.d, key, &out)) {
        return out;
    }
    return jarg(a, 1, NULL, jv_none());
}
static jv m_dict_copy(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "copy", 0, NULL);
    jdict_t *d = jd_new(x, self.v.d->n);
    for (size_t i = 0; i < self.v.d->n; i++) {
        jd_set(x, d, self.v.d->keys[i], self.v.d->vals[i]);
    }
    return jv_dict(d);
}
static jv m_list_append(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "append", 1, NULL);
    if (a->npos != 1) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "append() takes exactly one argument (%zu given)",
                a->npos);
    }
    jl_push(x, self.v.l, a->pos[0]);
    return jv_none();
}
static jv m_list_index(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "index", 1, NULL);
    jv item = jarg(a, 0, NULL, jv_undef());
    for (size_t i = 0; i < self.v.l->n; i++) {
        if (jv_equal(self.v.l->items[i], item)) {
            return jv_int((int64_t)i);
        }
    }
    jx_fail(x, TDM_ERR_INVALID_PARAM, "value is not in list");
}
static jv m_list_count(jx_t *x, jv self, jargs_t *a)
{
    jargs_check(x, a, "count", 1, NULL);
    jv item = jarg(a, 0, NULL, jv_undef());
    int64_t n = 0;
    for (size_t i = 0; i < self.v.l->n; i++) {
        n += jv_equal(self.v.l->items[i], item);
    }
    return jv_int(n);
}
static jv m_loop_cycle(jx_t *x, jv self, jargs_t *a)
{
    if (a->npos == 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "no items for cycling given");
    }
    return a->pos[self.v.lp->i % a->npos];
}

typedef struct method {
    const char *name;
    jbuiltin_fn fn;
} method_t;

static const method_t str_methods[] = {
    {"strip", m_str_strip},
    {"lstrip", m_str_lstrip},
    {"rstrip", m_str_rstrip},
    {"upper", m_str_upper},
    {"lower", m_str_lower},
    {"title", m_str_title},
    {"capitalize", m_str_capitalize},
    {"swapcase", m_str_swapcase},
    {"startswith", m_str_startswith},
    {"endswith", m_str_endswith},
    {"split", m_str_split},
    {"rsplit", m_str_rsplit},
    {"splitlines", m_str_splitlines},
    {"replace", m_str_replace},
    {"find", m_str_find},
    {"rfind", m_str_rfind},
    {"index", m_str_index},
    {"count", m_str_count},
    {"join", m_str_join},
    {"format", m_str_format},
    {"removeprefix", m_str_removeprefix},
    {"removesuffix", m_str_removesuffix},
    {"isdigit", m_str_isdigit},
    {"isalpha", m_str_isalpha},
    {"isalnum", m_str_isalnum},
    {"isspace", m_str_isspace},
    {"islower", m_str_islower},
    {"isupper", m_str_isupper},
    {NULL, NULL},
};

static const method_t dict_methods[] = {
    {"items", m_dict_items}, {"keys", m_dict_keys}, {"values", m_dict_values},
    {"get", m_dict_get},     {"copy", m_dict_copy}, {NULL, NULL},
};

static const method_t list_methods[] = {
    {"append", m_list_append},
    {"index", m_list_index},
    {"count", m_list_count},
    {NULL, NULL},
};

static const method_t tuple_methods[] = {
    {"index", m_list_index},
    {"count", m_list_count},
    {NULL, NULL},
};

/* methods the immutable sandbox refuses (they would modify the value) */
static const char *const dict_unsafe[] = {"pop", "popitem", "setdefault", "update", "clear", NULL};
static const char *const list_unsafe[] = {"pop",  "insert",  "extend", "remove",
                                          "sort", "reverse", "clear",  NULL};

static bool find_method(jx_t *x, jv obj, const method_t *tab, const char *name, jv *out)
{
    for (size_t i = 0; tab[i].name; i++) {
        if (strcmp(tab[i].name, name) == 0) {
            *out = mkfunc(x, tab[i].name, tab[i].fn, obj);
            return true;
        }
    }
    return false;
}

static bool in_list(const char *const *names, const char *name)
{
    for (size_t i = 0; names[i]; i++) {
        if (strcmp(names[i], name) == 0) {
            return true;
        }
    }
    return false;
}

bool jb_getattr(jx_t *x, jv obj, const char *name, jv *out)
{
    if (name[0] == '_' && name[1] == '_') {
        /* dunder attributes are never exposed (the sandbox refuses them) */
        if (obj.t == JV_DICT || obj.t == JV_NS) {
            return false;
        }
        *out = jv_undef_unsafe(x, obj, name);
        return true;
    }
    switch (obj.t) {
    case JV_STR:
        return find_method(x, obj, str_methods, name, out);
    case JV_DICT:
        if (find_method(x, obj, dict_methods, name, out)) {
            return true;
        }
        if (in_list(dict_unsafe, name)) {
            *out = jv_undef_unsafe(x, obj, name);
            return true;
        }
        return false;
    case JV_LIST:
        if (find_method(x, obj, list_methods, name, out)) {
            return true;
        }
        if (in_list(list_unsafe, name)) {
            *out = jv_undef_unsafe(x, obj, name);
            return true;
        }
        return false;
    case JV_TUPLE:
        return find_method(x, obj, tuple_methods, name, out);
    case JV_INT:
    case JV_BOOL:
    case JV_FLOAT:
        if (strcmp(name, "real") == 0) {
            *out = obj.t == JV_FLOAT ? obj : jv_int(obj.t == JV_INT ? obj.v.i : obj.v.b);
            return true;
        }
        if (strcmp(name, "imag") == 0) {
            *out = obj.t == JV_FLOAT ? jv_float(0.0) : jv_int(0);
            return true;
        }
        return false;
    case JV_LOOP: {
        jloop_t *lp = obj.v.lp;
        int64_t i = (int64_t)lp->i, n = (int64_t)lp->n;
        if (strcmp(name, "index") == 0) {
            *out = jv_int(i + 1);
        } else if (strcmp(name, "index0") == 0) {
            *out = jv_int(i);
        } else if (strcmp(name, "revindex") == 0) {
            *out = jv_int(n - i);
        } else if (strcmp(name, "revindex0") == 0) {
            *out = jv_int(n - i - 1);
        } else if (strcmp(name, "first") == 0) {
            *out = jv_bool(i == 0);
        } else if (strcmp(name, "last") == 0) {
            *out = jv_bool(i == n - 1);
        } else if (strcmp(name, "length") == 0) {
            *out = jv_int(n);
        } else if (strcmp(name, "depth") == 0) {
            *out = jv_int(1);
        } else if (strcmp(name, "depth0") == 0) {
            *out = jv_int(0);
        } else if (strcmp(name, "previtem") == 0) {
            *out = i > 0 ? lp->items[i - 1] : jv_undef_hint(x, "there is no previous item");
        } else if (strcmp(name, "nextitem") == 0) {
            *out = i + 1 < n ? lp->items[i + 1] : jv_undef_hint(x, "there is no next item");
        } else if (strcmp(name, "cycle") == 0) {
            *out = mkfunc(x, "cycle", m_loop_cycle, obj);
        } else {
            return false;
        }
        return true;
    }
    default:
        return false;
    }
}

/* ---------------------------------------------------------------------------------- */
/* Globals                                                                             */

static jv g_range(jx_t *x, jv self, jargs_t *a)
{
    (void)self;
    jargs_check(x, a, "range", 3, NULL);
    if (a->npos == 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "range expected at least 1 argument, got 0");
    }
    int64_t start = 0, stop, step = 1;
    if (a->npos == 1) {
        stop = need_int(x, a->pos[0], "range() argument");
    } else {
        start = need_int(x, a->pos[0], "range() argument");
        stop = need_int(x, a->pos[1], "range() argument");
        if (a->npos == 3) {
            step = need_int(x, a->pos[2], "range() argument");
        }
    }
    if (step == 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "range() arg 3 must not be zero");
    }
    /* length without overflow */
    double len = step > 0 ? ceil(((double)stop - (double)start) / (double)step)
                          : ceil(((double)start - (double)stop) / (double)-step);
    if (len < 0) {
        len = 0;
    }
    if (len > MAX_RANGE) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE,
                "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", MAX_RANGE);
    }
    size_t n = (size_t)len;
    jlist_t *l = jl_new(x, n);
    for (size_t i = 0; i < n; i++) {
        l->items[i] = jv_int(start + (int64_t)i * step);
    }
    l->n = n;
    return jv_list(l);
}

static void dict_update_from(jx_t *x, jdict_t *d, jv src, const char *fname)
{
    if (src.t == JV_DICT || src.t == JV_NS) {
        for (size_t i = 0; i < src.v.d->n; i++) {
            jd_set(x, d, src.v.d->keys[i], src.v.d->vals[i]);
        }
        return;
    }
    jlist_t *l = jv_iter_list(x, src);
    for (size_t i = 0; i < l->n; i++) {
        jv pair = l->items[i];
        jlist_t *kv = jv_iter_list(x, pair);
        if (kv->n != 2) {
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "%s update sequence element #%zu has length %zu; 2 is required", fname, i,
                    kv->n);
        }
        jd_set(x, d, kv->items[0], kv->items[1]);
    }
}

static jv g_namespace(jx_t *x, jv self, jargs_t *a)
{
    (void)self;
    if (a->npos > 1) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "namespace expected at most 1 positional argument");
    }
    jdict_t *d = jd_new(x, a->nkw);
    if (a->npos == 1) {
        dict_update_from(x, d, a->pos[0], "namespace");
    }
    for (size_t i = 0; i < a->nkw; i++) {
        jd_set(x, d, jv_cstr(x, a->kwn[i]), a->kwv[i]);
    }
    for (size_t i = 0; i < d->n; i++) {
        if (d->keys[i].t == JV_STR && d->keys[i].v.s->s[0] == '_') {
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                    "but got '%s'.",
                    d->keys[i].v.s->s);
        }
    }
    jv v;
    v.t = JV_NS;
    v.v.d = d;
    return v;
}

static jv g_dict(jx_t *x, jv self, jargs_t *a)
{
    (void)self;
    if (a->npos > 1) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "dict expected at most 1 argument, got %zu", a->npos);
    }
    jdict_t *d = jd_new(x, a->nkw);
    if (a->npos == 1) {
        dict_update_from(x, d, a->pos[0], "dictionary");
    }
    for (size_t i = 0; i < a->nkw; i++) {
        jd_set(x, d, jv_cstr(x, a->kwn[i]), a->kwv[i]);
    }
    return jv_dict(d);
}

static jv g_raise_exception(jx_t *x, jv self, jargs_t *a)
{
    (void)self;
    jv m = jarg(a, 0, "message", jv_undef());
    jstr_t *s = jv_to_str(x, m);
    jx_fail(x, TDM_ERR_INVALID_PARAM, "%s", s->s);
}

static jv g_strftime_now(jx_t *x, jv self, jargs_t *a)
{
    (void)self;
    jargs_check(x, a, "strftime_now", 1, ARGS("format"));
    jstr_t *fmt = need_str(x, jarg(a, 0, "format", jv_undef()), "format");
    /* Python's datetime.now() is naive: %z and %Z are empty; %f is microseconds */
    jbuf_t f;
    jb_init(&f, x, false);
    for (size_t i = 0; i < fmt->len; i++) {
        if (fmt->s[i] == '%' && i + 1 < fmt->len) {
            char c = fmt->s[i + 1];
            if (c == 'z' || c == 'Z') {
                i++;
                continue;
            }
            if (c == 'f') {
                jb_printf(&f, "%06d", (int)x->now_usec);
                i++;
                continue;
            }
            jb_putc(&f, '%');
            jb_putc(&f, c);
            i++;
            continue;
        }
        jb_putc(&f, fmt->s[i]);
    }
    time_t t = (time_t)x->now_sec;
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "strftime_now: time out of range");
    }
    size_t cap = f.len * 16 + 256;
    if (cap > 1 << 20) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "strftime_now: format too long");
    }
    char *buf = jx_alloc(x, cap);
    size_t n = f.len ? strftime(buf, cap, f.p, &tm) : 0;
    return jv_str(x, buf, n);
}

static const jfunc_t global_funcs[] = {
    {"range", g_range, {JV_UNDEF, {0}}},
    {"namespace", g_namespace, {JV_UNDEF, {0}}},
    {"dict", g_dict, {JV_UNDEF, {0}}},
    {"raise_exception", g_raise_exception, {JV_UNDEF, {0}}},
    {"strftime_now", g_strftime_now, {JV_UNDEF, {0}}},
};

jv jb_find_global(const char *name)
{
    for (size_t i = 0; i < sizeof(global_funcs) / sizeof(global_funcs[0]); i++) {
        if (strcmp(global_funcs[i].name, name) == 0) {
            jv v;
            v.t = JV_FUNC;
            v.v.fn = (jfunc_t *)&global_funcs[i]; /* never written */
            return v;
        }
    }
    return jv_undef();
}

/* ---------------------------------------------------------------------------------- */
/* Filters                                                                             */

static jv f_tojson(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "tojson", 4, ARGS("ensure_ascii", "indent", "separators", "sort_keys"));
    jjson_opts_t o;
    memset(&o, 0, sizeof(o));
    o.ensure_ascii = jv_truthy(jarg(a, 0, "ensure_ascii", jv_bool(false)));
    jv ind = jarg(a, 1, "indent", jv_none());
    jv seps = jarg(a, 2, "separators", jv_none());
    o.sort_keys = jv_truthy(jarg(a, 3, "sort_keys", jv_bool(false)));
    char spaces[64];
    if (ind.t != JV_NONE) {
        o.indent_on = true;
        if (ind.t == JV_STR) {
            o.indent = ind.v.s->s;
            o.indent_len = ind.v.s->len;
        } else {
            int64_t k = need_int(x, ind, "indent");
            if (k > (int64_t)sizeof(spaces)) {
                char *sp = jx_alloc(x, (size_t)k);
                memset(sp, ' ', (size_t)k);
                o.indent = sp;
                o.indent_len = (size_t)k;
            } else {
                memset(spaces, ' ', sizeof(spaces));
                o.indent = spaces;
                o.indent_len = k > 0 ? (size_t)k : 0;
            }
        }
        o.item_sep = ",";
        o.item_sep_len = 1;
    } else {
        o.item_sep = ", ";
        o.item_sep_len = 2;
    }
    o.key_sep = ": ";
    o.key_sep_len = 2;
    if (seps.t != JV_NONE) {
        jlist_t *l = jv_iter_list(x, seps);
        if (l->n != 2) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "tojson: separators must be a pair of strings");
        }
        jstr_t *is = need_str(x, l->items[0], "item separator");
        jstr_t *ks = need_str(x, l->items[1], "key separator");
        o.item_sep = is->s;
        o.item_sep_len = is->len;
        o.key_sep = ks->s;
        o.key_sep_len = ks->len;
    }
    jbuf_t b;
    jb_init(&b, x, false);
    jv_write_json(x, &b, v, &o, 0);
    return jv_strv(jb_str(&b));
}

static int64_t length_of(jx_t *x, jv v)
{
    switch (v.t) {
    case JV_UNDEF:
        return 0;
    case JV_STR:
        return js_ncp(v.v.s);
    case JV_LIST:
    case JV_TUPLE:
        return (int64_t)v.v.l->n;
    case JV_DICT:
        return (int64_t)v.v.d->n;
    case JV_LOOP:
        return (int64_t)v.v.lp->n;
    default:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "object of type '%s' has no len()", jv_type_name(v.t));
    }
}

static jv f_length(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "length", 0, NULL);
    return jv_int(length_of(x, v));
}

static jv f_items(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "items", 0, NULL);
    if (v.t == JV_UNDEF) {
        return jv_list(jl_new(x, 0));
    }
    if (v.t != JV_DICT) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "Can only get item pairs from a mapping.");
    }
    return items_list(x, v.v.d);
}

static jv f_string(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "string", 0, NULL);
    return jv_strv(jv_to_str(x, v));
}

static jv f_safe(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "safe", 0, NULL);
    return jv_strv(jv_to_str(x, v));
}

static jv f_trim(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "trim", 1, ARGS("chars"));
    jv c = jarg(a, 0, "chars", jv_none());
    return str_strip(x, jv_to_str(x, v), c.t == JV_NONE ? NULL : need_str(x, c, "chars"), 3);
}

/* attribute getter of map / sort / selectattr ...: dotted path, integer parts index */
static jv get_attribute(jx_t *x, jv item, jstr_t *path)
{
    const char *s = path->s;
    size_t n = path->len, i = 0;
    jv cur = item;
    while (i <= n) {
        size_t e = i;
        while (e < n && s[e] != '.') {
            e++;
        }
        char part[256];
        snprintf(part, sizeof(part), "%.*s", (int)(e - i < 255 ? e - i : 255), s + i);
        char *endp;
        long long iv = strtoll(part, &endp, 10);
        jv key = (part[0] != '\0' && *endp == '\0') ? jv_int(iv) : jv_cstr(x, part);
        if (cur.t == JV_UNDEF) {
            return cur;
        }
        cur = jx_getitem(x, cur, key);
        i = e + 1;
    }
    return cur;
}

static jv f_join(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "join", 2, ARGS("d", "attribute"));
    jv sep = jarg(a, 0, "d", empty_str(x));
    jv attr = jarg(a, 1, "attribute", jv_none());
    jstr_t *sep_s = jv_to_str(x, sep);
    if (attr.t != JV_NONE) {
        jlist_t *src = jv_iter_list(x, v);
        jlist_t *l = jl_new(x, src->n);
        for (size_t i = 0; i < src->n; i++) {
            l->items[i] = get_attribute(x, src->items[i], jv_to_str(x, attr));
        }
        l->n = src->n;
        v = jv_list(l);
    }
    return str_join(x, sep_s, v, true);
}

static jv f_default(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "default", 2, ARGS("default_value", "boolean"));
    jv d = jarg(a, 0, "default_value", empty_str(x));
    bool boolean = jv_truthy(jarg(a, 1, "boolean", jv_bool(false)));
    if (v.t == JV_UNDEF || (boolean && !jv_truthy(v))) {
        return d;
    }
    return v;
}

static jv f_upper(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "upper", 0, NULL);
    return str_case(x, jv_to_str(x, v), CASE_UPPER);
}

static jv f_lower(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "lower", 0, NULL);
    return str_case(x, jv_to_str(x, v), CASE_LOWER);
}

static jv f_capitalize(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "capitalize", 0, NULL);
    return str_case(x, jv_to_str(x, v), CASE_CAPITALIZE);
}

/* jinja2's title: words start after runs of '-', whitespace, '(', '{', '[' or '<' */
static jv f_title(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "title", 0, NULL);
    jstr_t *s = jv_to_str(x, v);
    jbuf_t b;
    jb_init(&b, x, false);
    bool word_start = true;
    size_t i = 0;
    while (i < s->len) {
        size_t adv;
        uint32_t c = ju_decode(s->s + i, s->len - i, &adv);
        bool delim = c == '-' || ju_isspace(c) || c == '(' || c == '{' || c == '[' || c == '<';
        if (delim) {
            put_cp(&b, c);
            word_start = true;
        } else if (word_start) {
            put_upper(&b, c);
            word_start = false;
        } else {
            put_lower_at(&b, s->s, s->len, i, c);
        }
        i += adv;
    }
    return jv_strv(jb_str(&b));
}

static jv f_replace(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "replace", 3, ARGS("old", "new", "count"));
    jv cnt = jarg(a, 2, "count", jv_none());
    return str_replace(x, jv_to_str(x, v), jv_to_str(x, jarg(a, 0, "old", jv_undef())),
                       jv_to_str(x, jarg(a, 1, "new", jv_undef())),
                       cnt.t == JV_NONE ? -1 : need_int(x, cnt, "count"));
}

static jv f_list(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "list", 0, NULL);
    jlist_t *src = jv_iter_list(x, v);
    jlist_t *l = jl_new(x, src->n);
    memcpy(l->items, src->items, src->n * sizeof(jv));
    l->n = src->n;
    return jv_list(l);
}

static jv f_first(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "first", 0, NULL);
    jlist_t *l = jv_iter_list(x, v);
    return l->n ? l->items[0] : jv_undef_hint(x, "No first item, sequence was empty.");
}

static jv f_last(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "last", 0, NULL);
    jlist_t *l = jv_iter_list(x, v);
    return l->n ? l->items[l->n - 1] : jv_undef_hint(x, "No last item, sequence was empty.");
}

static jv f_reverse(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "reverse", 0, NULL);
    jlist_t *src = jv_iter_list(x, v);
    if (v.t == JV_STR) {
        jbuf_t b;
        jb_init(&b, x, false);
        for (size_t i = src->n; i > 0; i--) {
            jv_write_str(x, &b, src->items[i - 1]);
        }
        return jv_strv(jb_str(&b));
    }
    jlist_t *l = jl_new(x, src->n);
    for (size_t i = 0; i < src->n; i++) {
        l->items[i] = src->items[src->n - 1 - i];
    }
    l->n = src->n;
    return jv_list(l);
}

/* applies a test by name (select/reject and friends) */
static bool run_test(jx_t *x, jv testname, jv value, const jv *extra, size_t nextra)
{
    jstr_t *name = need_str(x, testname, "test name");
    jtest_fn t = jb_find_test(name->s);
    if (t == NULL) {
        jx_fail(x, TDM_ERR_UNSUPPORTED, "no test named '%s' (unknown or not supported)", name->s);
    }
    jargs_t ta = {extra, nextra, NULL, NULL, 0};
    return t(x, value, &ta);
}

/* select / reject / selectattr / rejectattr */
static jv select_common(jx_t *x, jv v, jargs_t *a, bool attr, bool want)
{
    jlist_t *src = jv_iter_list(x, v);
    size_t k = 0;
    jstr_t *path = NULL;
    if (attr) {
        if (a->npos < 1) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "Missing parameter for attribute name");
        }
        path = jv_to_str(x, a->pos[0]);
        k = 1;
    }
    bool has_test = a->npos > k;
    jlist_t *out = jl_new(x, 0);
    for (size_t i = 0; i < src->n; i++) {
        jv item = src->items[i];
        jv probe = attr ? get_attribute(x, item, path) : item;
        bool r = has_test ? run_test(x, a->pos[k], probe, a->pos + k + 1, a->npos - k - 1)
                          : jv_truthy(probe);
        if (r == want) {
            jl_push(x, out, item);
        }
    }
    return jv_list(out);
}

static jv f_select(jx_t *x, jv v, jargs_t *a)
{
    return select_common(x, v, a, false, true);
}
static jv f_reject(jx_t *x, jv v, jargs_t *a)
{
    return select_common(x, v, a, false, false);
}
static jv f_selectattr(jx_t *x, jv v, jargs_t *a)
{
    return select_common(x, v, a, true, true);
}
static jv f_rejectattr(jx_t *x, jv v, jargs_t *a)
{
    return select_common(x, v, a, true, false);
}

static jv f_map(jx_t *x, jv v, jargs_t *a)
{
    jlist_t *src = jv_iter_list(x, v);
    jlist_t *out = jl_new(x, src->n);
    jv attr = jarg(a, (size_t)-1, "attribute", jv_undef());
    if (attr.t != JV_UNDEF) {
        jv dflt = jarg(a, (size_t)-1, "default", jv_undef());
        jstr_t *path = jv_to_str(x, attr);
        for (size_t i = 0; i < src->n; i++) {
            jv r = get_attribute(x, src->items[i], path);
            if (r.t == JV_UNDEF && dflt.t != JV_UNDEF) {
                r = dflt;
            }
            out->items[out->n++] = r;
        }
        return jv_list(out);
    }
    if (a->npos < 1) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "map requires a filter argument");
    }
    jstr_t *fname = need_str(x, a->pos[0], "filter name");
    jfilter_fn f = jb_find_filter(fname->s);
    if (f == NULL) {
        jx_fail(x, TDM_ERR_UNSUPPORTED, "no filter named '%s' (unknown or not supported)",
                fname->s);
    }
    jargs_t fa = {a->pos + 1, a->npos - 1, a->kwn, a->kwv, a->nkw};
    for (size_t i = 0; i < src->n; i++) {
        out->items[out->n++] = f(x, src->items[i], &fa);
    }
    return jv_list(out);
}

/* key for sort / unique / min / max: attribute, then lower-cased strings */
static jv sort_key(jx_t *x, jv item, jstr_t *attr, bool case_sensitive)
{
    jv k = attr ? get_attribute(x, item, attr) : item;
    if (!case_sensitive && k.t == JV_STR) {
        k = str_case(x, k.v.s, CASE_LOWER);
    }
    return k;
}

static void merge_sort(jx_t *x, size_t *idx, size_t *tmp, size_t n, const jv *keys, bool reverse)
{
    if (n < 2) {
        return;
    }
    size_t h = n / 2;
    merge_sort(x, idx, tmp, h, keys, reverse);
    merge_sort(x, idx + h, tmp, n - h, keys, reverse);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int c = jv_compare(x, keys[idx[j]], keys[idx[i]]);
        /* stable: take from the left unless the right is strictly first */
        bool right_first = reverse ? c > 0 : c < 0;
        tmp[k++] = right_first ? idx[j++] : idx[i++];
    }
    while (i < h) {
        tmp[k++] = idx[i++];
    }
    while (j < n) {
        tmp[k++] = idx[j++];
    }
    memcpy(idx, tmp, n * sizeof(size_t));
}

static size_t *sorted_order(jx_t *x, jlist_t *src, const jv *keys, bool reverse)
{
    size_t *idx = jx_alloc(x, (src->n + 1) * sizeof(size_t));
    size_t *tmp = jx_alloc(x, (src->n + 1) * sizeof(size_t));
    for (size_t i = 0; i < src->n; i++) {
        idx[i] = i;
    }
    merge_sort(x, idx, tmp, src->n, keys, reverse);
    return idx;
}

static jv f_sort(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "sort", 3, ARGS("reverse", "case_sensitive", "attribute"));
    bool reverse = jv_truthy(jarg(a, 0, "reverse", jv_bool(false)));
    bool cs = jv_truthy(jarg(a, 1, "case_sensitive", jv_bool(false)));
    jv attr = jarg(a, 2, "attribute", jv_none());
    jstr_t *path = attr.t == JV_NONE ? NULL : jv_to_str(x, attr);
    jlist_t *src = jv_iter_list(x, v);
    jv *keys = jx_alloc(x, (src->n + 1) * sizeof(jv));
    for (size_t i = 0; i < src->n; i++) {
        keys[i] = sort_key(x, src->items[i], path, cs);
    }
    size_t *idx = sorted_order(x, src, keys, reverse);
    jlist_t *out = jl_new(x, src->n);
    for (size_t i = 0; i < src->n; i++) {
        out->items[i] = src->items[idx[i]];
    }
    out->n = src->n;
    return jv_list(out);
}

static jv f_dictsort(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "dictsort", 3, ARGS("case_sensitive", "by", "reverse"));
    bool cs = jv_truthy(jarg(a, 0, "case_sensitive", jv_bool(false)));
    jv by = jarg(a, 1, "by", jv_undef());
    bool reverse = jv_truthy(jarg(a, 2, "reverse", jv_bool(false)));
    int pos = 0;
    if (by.t != JV_UNDEF) {
        jstr_t *b = need_str(x, by, "by");
        if (strcmp(b->s, "value") == 0) {
            pos = 1;
        } else if (strcmp(b->s, "key") != 0) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "You can only sort by either \"key\" or \"value\"");
        }
    }
    if (v.t != JV_DICT) {
        need_defined(x, v);
        jx_fail(x, TDM_ERR_INVALID_PARAM, "dictsort needs a mapping");
    }
    jlist_t *pairs = items_list(x, v.v.d).v.l;
    jv *keys = jx_alloc(x, (pairs->n + 1) * sizeof(jv));
    for (size_t i = 0; i < pairs->n; i++) {
        keys[i] = sort_key(x, pairs->items[i].v.l->items[pos], NULL, cs);
    }
    size_t *idx = sorted_order(x, pairs, keys, reverse);
    jlist_t *out = jl_new(x, pairs->n);
    for (size_t i = 0; i < pairs->n; i++) {
        out->items[i] = pairs->items[idx[i]];
    }
    out->n = pairs->n;
    return jv_list(out);
}

static jv f_unique(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "unique", 2, ARGS("case_sensitive", "attribute"));
    bool cs = jv_truthy(jarg(a, 0, "case_sensitive", jv_bool(false)));
    jv attr = jarg(a, 1, "attribute", jv_none());
    jstr_t *path = attr.t == JV_NONE ? NULL : jv_to_str(x, attr);
    jlist_t *src = jv_iter_list(x, v);
    jlist_t *out = jl_new(x, 0);
    jdict_t *seen = jd_new(x, 0);
    for (size_t i = 0; i < src->n; i++) {
        jv k = sort_key(x, src->items[i], path, cs);
        jv tmp;
        if (k.t == JV_LIST || k.t == JV_DICT || k.t == JV_UNDEF) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "unhashable type: '%s'", jv_type_name(k.t));
        }
        if (!jd_get(seen, k, &tmp)) {
            jd_set(x, seen, k, jv_none());
            jl_push(x, out, src->items[i]);
        }
    }
    return jv_list(out);
}

static jv minmax(jx_t *x, jv v, jargs_t *a, bool want_max, const char *name)
{
    jargs_check(x, a, name, 2, ARGS("case_sensitive", "attribute"));
    bool cs = jv_truthy(jarg(a, 0, "case_sensitive", jv_bool(false)));
    jv attr = jarg(a, 1, "attribute", jv_none());
    jstr_t *path = attr.t == JV_NONE ? NULL : jv_to_str(x, attr);
    jlist_t *src = jv_iter_list(x, v);
    if (src->n == 0) {
        return jv_undef_hint(x, "No aggregated item, sequence was empty.");
    }
    size_t best = 0;
    jv bk = sort_key(x, src->items[0], path, cs);
    for (size_t i = 1; i < src->n; i++) {
        jv k = sort_key(x, src->items[i], path, cs);
        int c = jv_compare(x, k, bk);
        if (want_max ? c > 0 : c < 0) {
            best = i;
            bk = k;
        }
    }
    return src->items[best];
}

static jv f_min(jx_t *x, jv v, jargs_t *a)
{
    return minmax(x, v, a, false, "min");
}
static jv f_max(jx_t *x, jv v, jargs_t *a)
{
    return minmax(x, v, a, true, "max");
}

static jv num_add(jx_t *x, jv a, jv b)
{
    if (!is_num(a) || !is_num(b)) {
        need_defined(x, a);
        need_defined(x, b);
        jx_fail(x, TDM_ERR_INVALID_PARAM, "unsupported operand type(s) for +: '%s' and '%s'",
                jv_type_name(a.t), jv_type_name(b.t));
    }
    if (a.t == JV_FLOAT || b.t == JV_FLOAT) {
        return jv_float(as_f(a) + as_f(b));
    }
    int64_t r;
    int64_t ia = a.t == JV_INT ? a.v.i : a.v.b, ib = b.t == JV_INT ? b.v.i : b.v.b;
    if (__builtin_add_overflow(ia, ib, &r)) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "integer result out of the supported 64-bit range");
    }
    return jv_int(r);
}

static jv f_sum(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "sum", 2, ARGS("attribute", "start"));
    jv attr = jarg(a, 0, "attribute", jv_none());
    jv acc = jarg(a, 1, "start", jv_int(0));
    jstr_t *path = attr.t == JV_NONE ? NULL : jv_to_str(x, attr);
    jlist_t *src = jv_iter_list(x, v);
    for (size_t i = 0; i < src->n; i++) {
        acc = num_add(x, acc, path ? get_attribute(x, src->items[i], path) : src->items[i]);
    }
    return acc;
}

static jv f_abs(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "abs", 0, NULL);
    if (v.t == JV_FLOAT) {
        return jv_float(fabs(v.v.f));
    }
    if (v.t == JV_INT || v.t == JV_BOOL) {
        int64_t i = v.t == JV_INT ? v.v.i : v.v.b;
        if (i == INT64_MIN) {
            jx_fail(x, TDM_ERR_OUT_OF_RANGE, "integer result out of the supported 64-bit range");
        }
        return jv_int(i < 0 ? -i : i);
    }
    need_defined(x, v);
    jx_fail(x, TDM_ERR_INVALID_PARAM, "bad operand type for abs(): '%s'", jv_type_name(v.t));
}

/* Python's int(str, base) for bases 2..36 (and 0); false if invalid */
static bool parse_py_int(const char *s, size_t n, int base, int64_t *out)
{
    size_t i = 0;
    while (i < n && ju_isspace((unsigned char)s[i])) {
        i++;
    }
    while (n > i && ju_isspace((unsigned char)s[n - 1])) {
        n--;
    }
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) {
        neg = s[i] == '-';
        i++;
    }
    if (base == 0 || base == 16 || base == 8 || base == 2) {
        if (i + 1 < n && s[i] == '0' && strchr("xXoObB", s[i + 1]) != NULL) {
            int b = (s[i + 1] | 32) == 'x' ? 16 : (s[i + 1] | 32) == 'o' ? 8 : 2;
            if (base != 0 && base != b) {
                return false;
            }
            base = b;
            i += 2;
            if (i < n && s[i] == '_') {
                i++;
            }
        } else if (base == 0) {
            base = 10;
        }
    }
    if (i >= n) {
        return false;
    }
    uint64_t v = 0;
    bool prev_us = true;
    for (; i < n; i++) {
        if (s[i] == '_') {
            if (prev_us) {
                return false;
            }
            prev_us = true;
            continue;
        }
        int d = hexval_digit(s[i]);
        if (d < 0 || d >= base) {
            return false;
        }
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) {
            return false;
        }
        v = v * (uint64_t)base + (uint64_t)d;
        prev_us = false;
    }
    if (prev_us || v > (uint64_t)INT64_MAX + (neg ? 1u : 0u)) {
        return false;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* Python float(str): decimal, inf, nan, with surrounding whitespace and underscores */
static bool parse_py_float(const char *s, size_t n, double *out)
{
    char buf[128];
    size_t i = 0, o = 0;
    while (i < n && ju_isspace((unsigned char)s[i])) {
        i++;
    }
    while (n > i && ju_isspace((unsigned char)s[n - 1])) {
        n--;
    }
    if (i >= n || n - i >= sizeof(buf)) {
        return false;
    }
    for (; i < n; i++) {
        char c = s[i];
        if (c == '_') {
            if (o == 0 || i + 1 >= n || !(buf[o - 1] >= '0' && buf[o - 1] <= '9') ||
                !(s[i + 1] >= '0' && s[i + 1] <= '9')) {
                return false;
            }
            continue;
        }
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-' ||
              (c | 32) == 'i' || (c | 32) == 'n' || (c | 32) == 'f' || (c | 32) == 't' ||
              (c | 32) == 'y' || (c | 32) == 'a')) {
            return false;
        }
        buf[o++] = c;
    }
    buf[o] = '\0';
    const char *p = buf;
    if (*p == '+' || *p == '-') {
        p++;
    }
    if ((p[0] | 32) == 'i' || (p[0] | 32) == 'n') {
        if (strcasecmp(p, "inf") != 0 && strcasecmp(p, "infinity") != 0 &&
            strcasecmp(p, "nan") != 0) {
            return false;
        }
    } else if ((p[0] | 32) == 'x' || ((p[0] == '0') && (p[1] | 32) == 'x')) {
        return false;
    }
    char *end;
    double d = strtod(buf, &end);
    if (*end != '\0' || end == buf) {
        return false;
    }
    *out = d;
    return true;
}

static jv f_int(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "int", 2, ARGS("default", "base"));
    jv dflt = jarg(a, 0, "default", jv_int(0));
    int64_t base = need_int(x, jarg(a, 1, "base", jv_int(10)), "base");
    int64_t r;
    double d;
    switch (v.t) {
    case JV_INT:
        return v;
    case JV_BOOL:
        return jv_int(v.v.b);
    case JV_FLOAT:
        if (isnan(v.v.f) || isinf(v.v.f) || fabs(v.v.f) >= 9.2e18) {
            return dflt;
        }
        return jv_int((int64_t)v.v.f);
    case JV_STR:
        if (base >= 0 && base <= 36 && base != 1 &&
            parse_py_int(v.v.s->s, v.v.s->len, (int)base, &r)) {
            return jv_int(r);
        }
        if (parse_py_float(v.v.s->s, v.v.s->len, &d) && !isnan(d) && !isinf(d) &&
            fabs(d) < 9.2e18) {
            return jv_int((int64_t)d);
        }
        return dflt;
    default:
        return dflt;
    }
}

static jv f_float(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "float", 1, ARGS("default"));
    jv dflt = jarg(a, 0, "default", jv_float(0.0));
    double d;
    switch (v.t) {
    case JV_FLOAT:
        return v;
    case JV_INT:
        return jv_float((double)v.v.i);
    case JV_BOOL:
        return jv_float(v.v.b);
    case JV_STR:
        if (parse_py_float(v.v.s->s, v.v.s->len, &d)) {
            return jv_float(d);
        }
        return dflt;
    default:
        return dflt;
    }
}

static jv f_round(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "round", 2, ARGS("precision", "method"));
    int64_t prec = need_int(x, jarg(a, 0, "precision", jv_int(0)), "precision");
    jv mv = jarg(a, 1, "method", jv_undef());
    const char *method = mv.t == JV_UNDEF ? "common" : need_str(x, mv, "method")->s;
    if (strcmp(method, "common") != 0 && strcmp(method, "ceil") != 0 &&
        strcmp(method, "floor") != 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "method must be common, ceil or floor");
    }
    if (!is_num(v)) {
        need_defined(x, v);
        jx_fail(x, TDM_ERR_INVALID_PARAM, "type %s doesn't define __round__ method",
                jv_type_name(v.t));
    }
    if (prec < -308 || prec > 308) {
        prec = prec < 0 ? -308 : 308;
    }
    if (strcmp(method, "common") == 0) {
        if (v.t != JV_FLOAT) {
            int64_t i = v.t == JV_INT ? v.v.i : v.v.b;
            if (prec >= 0) {
                return jv_int(i);
            }
            /* round half to even at 10^-prec */
            int64_t p10 = 1;
            for (int64_t k = 0; k < -prec && p10 <= INT64_MAX / 10; k++) {
                p10 *= 10;
            }
            int64_t q = i / p10, r = i % p10;
            if (r < 0) {
                r += p10;
                q--;
            }
            if (r * 2 > p10 || (r * 2 == p10 && (q & 1))) {
                q++;
            }
            return jv_int(q * p10);
        }
        double f = v.v.f;
        if (isnan(f) || isinf(f)) {
            return v;
        }
        if (prec >= 0) {
            char buf[512];
            snprintf(buf, sizeof(buf), "%.*f", (int)(prec > 340 ? 340 : prec), f);
            return jv_float(strtod(buf, NULL));
        }
        double p10 = pow(10.0, (double)-prec);
        double y = f / p10;
        double r = nearbyint(y); /* ties to even (default rounding mode) */
        return jv_float(r * p10);
    }
    double p10 = pow(10.0, (double)prec);
    double y = as_f(v) * p10;
    double r = strcmp(method, "ceil") == 0 ? ceil(y) : floor(y);
    return jv_float(r / p10);
}

static jv f_indent(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "indent", 3, ARGS("width", "first", "blank"));
    jv w = jarg(a, 0, "width", jv_int(4));
    bool first = jv_truthy(jarg(a, 1, "first", jv_bool(false)));
    bool blank = jv_truthy(jarg(a, 2, "blank", jv_bool(false)));
    jstr_t *ind;
    if (w.t == JV_STR) {
        ind = w.v.s;
    } else {
        int64_t n = need_int(x, w, "width");
        if (n > 4096) {
            jx_fail(x, TDM_ERR_OUT_OF_RANGE, "indent width too large");
        }
        jbuf_t sb;
        jb_init(&sb, x, false);
        for (int64_t i = 0; i < n; i++) {
            jb_putc(&sb, ' ');
        }
        ind = jb_str(&sb);
    }
    jstr_t *s0 = jv_to_str(x, v);
    jbuf_t sb;
    jb_init(&sb, x, false);
    jb_put(&sb, s0->s, s0->len);
    jb_putc(&sb, '\n');
    jstr_t *s = jb_str(&sb);
    jlist_t *lines = str_splitlines(x, s, false);
    jbuf_t b;
    jb_init(&b, x, false);
    if (first) {
        jb_put(&b, ind->s, ind->len);
    }
    for (size_t i = 0; i < lines->n; i++) {
        jstr_t *ln = lines->items[i].v.s;
        if (i > 0) {
            jb_putc(&b, '\n');
            if (blank || ln->len > 0) {
                jb_put(&b, ind->s, ind->len);
            }
        }
        jb_put(&b, ln->s, ln->len);
    }
    return jv_strv(jb_str(&b));
}

static jv f_wordcount(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "wordcount", 0, NULL);
    jstr_t *s = jv_to_str(x, v);
    int64_t n = 0;
    bool in_word = false;
    size_t i = 0;
    while (i < s->len) {
        size_t adv;
        uint32_t c = ju_decode(s->s + i, s->len - i, &adv);
        bool w = c == '_' || p_alnum(c);
        if (w && !in_word) {
            n++;
        }
        in_word = w;
        i += adv;
    }
    return jv_int(n);
}

static jv f_batch(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "batch", 2, ARGS("linecount", "fill_with"));
    int64_t n = need_int(x, jarg(a, 0, "linecount", jv_undef()), "linecount");
    jv fill = jarg(a, 1, "fill_with", jv_none());
    if (n <= 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "batch: linecount must be positive");
    }
    jlist_t *src = jv_iter_list(x, v);
    jlist_t *out = jl_new(x, 0);
    jlist_t *cur = NULL;
    for (size_t i = 0; i < src->n; i++) {
        if (cur == NULL || (int64_t)cur->n == n) {
            cur = jl_new(x, 0);
            jl_push(x, out, jv_list(cur));
        }
        jl_push(x, cur, src->items[i]);
    }
    if (cur != NULL && fill.t != JV_NONE) {
        while ((int64_t)cur->n < n) {
            jl_push(x, cur, fill);
        }
    }
    return jv_list(out);
}

static jv f_escape(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "escape", 0, NULL);
    jstr_t *s = jv_to_str(x, v);
    jbuf_t b;
    jb_init(&b, x, false);
    for (size_t i = 0; i < s->len; i++) {
        switch (s->s[i]) {
        case '&':
            jb_puts(&b, "&amp;");
            break;
        case '<':
            jb_puts(&b, "&lt;");
            break;
        case '>':
            jb_puts(&b, "&gt;");
            break;
        case '"':
            jb_puts(&b, "&#34;");
            break;
        case '\'':
            jb_puts(&b, "&#39;");
            break;
        default:
            jb_putc(&b, s->s[i]);
        }
    }
    return jv_strv(jb_str(&b));
}

static jv f_format(jx_t *x, jv v, jargs_t *a)
{
    jstr_t *fmt = jv_to_str(x, v);
    jv args;
    if (a->nkw > 0) {
        if (a->npos > 0) {
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "can't handle positional and keyword arguments at the same time");
        }
        jx_fail(x, TDM_ERR_UNSUPPORTED, "format filter with keyword arguments is not supported");
    }
    jlist_t *l = jl_new(x, a->npos);
    memcpy(l->items, a->pos, a->npos * sizeof(jv));
    l->n = a->npos;
    args = jv_tuple(l);
    return jx_str_mod(x, fmt, args);
}

static jv f_attr(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "attr", 1, ARGS("name"));
    jstr_t *name = need_str(x, jarg(a, 0, "name", jv_undef()), "name");
    jv out;
    if (jb_getattr(x, v, name->s, &out)) {
        return out;
    }
    if (v.t == JV_NS && jd_get_str(v.v.d, name->s, name->len, &out)) {
        return out;
    }
    return jv_undef_attr(x, v, name->s);
}

static jv f_center(jx_t *x, jv v, jargs_t *a)
{
    jargs_check(x, a, "center", 1, ARGS("width"));
    int64_t w = need_int(x, jarg(a, 0, "width", jv_int(80)), "width");
    jstr_t *s = jv_to_str(x, v);
    int64_t n = js_ncp(s);
    if (w <= n) {
        return jv_strv(s);
    }
    if (w > 1 << 20) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "center width too large");
    }
    int64_t pad = w - n;
    int64_t left = pad / 2 + (pad & w & 1);
    jbuf_t b;
    jb_init(&b, x, false);
    for (int64_t i = 0; i < left; i++) {
        jb_putc(&b, ' ');
    }
    jb_put(&b, s->s, s->len);
    for (int64_t i = 0; i < pad - left; i++) {
        jb_putc(&b, ' ');
    }
    return jv_strv(jb_str(&b));
}

typedef struct named_filter {
    const char *name;
    jfilter_fn fn;
} named_filter_t;

static const named_filter_t filters[] = {
    {"abs", f_abs},
    {"attr", f_attr},
    {"batch", f_batch},
    {"capitalize", f_capitalize},
    {"center", f_center},
    {"count", f_length},
    {"d", f_default},
    {"default", f_default},
    {"dictsort", f_dictsort},
    {"e", f_escape},
    {"escape", f_escape},
    {"first", f_first},
    {"float", f_float},
    {"format", f_format},
    {"indent", f_indent},
    {"int", f_int},
    {"items", f_items},
    {"join", f_join},
    {"last", f_last},
    {"length", f_length},
    {"list", f_list},
    {"lower", f_lower},
    {"map", f_map},
    {"max", f_max},
    {"min", f_min},
    {"reject", f_reject},
    {"rejectattr", f_rejectattr},
    {"replace", f_replace},
    {"reverse", f_reverse},
    {"round", f_round},
    {"safe", f_safe},
    {"select", f_select},
    {"selectattr", f_selectattr},
    {"sort", f_sort},
    {"string", f_string},
    {"sum", f_sum},
    {"title", f_title},
    {"tojson", f_tojson},
    {"trim", f_trim},
    {"unique", f_unique},
    {"upper", f_upper},
    {"wordcount", f_wordcount},
};

jfilter_fn jb_find_filter(const char *name)
{
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++) {
        if (strcmp(filters[i].name, name) == 0) {
            return filters[i].fn;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------- */
/* Tests                                                                               */

static jv targ(jx_t *x, const jargs_t *a, const char *test)
{
    if (a->npos < 1 && a->nkw < 1) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "test '%s' needs an argument", test);
    }
    return a->npos ? a->pos[0] : a->kwv[0];
}

static bool t_defined(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t != JV_UNDEF;
}
static bool t_undefined(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_UNDEF;
}
static bool t_none(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_NONE;
}
static bool t_string(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_STR;
}
static bool t_number(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return is_num(v);
}
static bool t_integer(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_INT;
}
static bool t_float(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_FLOAT;
}
static bool t_mapping(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_DICT;
}
static bool t_sequence(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_STR || v.t == JV_LIST || v.t == JV_TUPLE || v.t == JV_DICT;
}
static bool t_iterable(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_STR || v.t == JV_LIST || v.t == JV_TUPLE || v.t == JV_DICT ||
           v.t == JV_UNDEF || v.t == JV_LOOP;
}
static bool t_boolean(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_BOOL;
}
static bool t_true(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_BOOL && v.v.b;
}
static bool t_false(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_BOOL && !v.v.b;
}
static bool t_callable(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_MACRO || v.t == JV_FUNC || v.t == JV_UNDEF;
}
static bool t_escaped(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    (void)v;
    return false;
}
static jv mod_of(jx_t *x, jv v, jv m)
{
    if (!is_num(v) || !is_num(m)) {
        need_defined(x, v);
        need_defined(x, m);
        jx_fail(x, TDM_ERR_INVALID_PARAM, "unsupported operand type(s) for %%: '%s' and '%s'",
                jv_type_name(v.t), jv_type_name(m.t));
    }
    if (v.t == JV_FLOAT || m.t == JV_FLOAT) {
        double d = as_f(m);
        if (d == 0.0) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "float modulo");
        }
        double r = fmod(as_f(v), d);
        if (r != 0.0 && ((d < 0) != (r < 0))) {
            r += d;
        }
        return jv_float(r);
    }
    int64_t iv = v.t == JV_INT ? v.v.i : v.v.b, im = m.t == JV_INT ? m.v.i : m.v.b;
    if (im == 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "integer division or modulo by zero");
    }
    if (im == -1) {
        return jv_int(0);
    }
    int64_t r = iv % im;
    if (r != 0 && ((r < 0) != (im < 0))) {
        r += im;
    }
    return jv_int(r);
}
static bool t_odd(jx_t *x, jv v, jargs_t *a)
{
    (void)a;
    return jv_equal(mod_of(x, v, jv_int(2)), jv_int(1));
}
static bool t_even(jx_t *x, jv v, jargs_t *a)
{
    (void)a;
    return jv_equal(mod_of(x, v, jv_int(2)), jv_int(0));
}
static bool t_divisibleby(jx_t *x, jv v, jargs_t *a)
{
    return jv_equal(mod_of(x, v, targ(x, a, "divisibleby")), jv_int(0));
}
static bool t_eq(jx_t *x, jv v, jargs_t *a)
{
    return jv_equal(v, targ(x, a, "eq"));
}
static bool t_ne(jx_t *x, jv v, jargs_t *a)
{
    return !jv_equal(v, targ(x, a, "ne"));
}
static bool t_lt(jx_t *x, jv v, jargs_t *a)
{
    return jv_compare(x, v, targ(x, a, "lt")) < 0;
}
static bool t_le(jx_t *x, jv v, jargs_t *a)
{
    return jv_compare(x, v, targ(x, a, "le")) <= 0;
}
static bool t_gt(jx_t *x, jv v, jargs_t *a)
{
    return jv_compare(x, v, targ(x, a, "gt")) > 0;
}
static bool t_ge(jx_t *x, jv v, jargs_t *a)
{
    return jv_compare(x, v, targ(x, a, "ge")) >= 0;
}
static bool t_lower(jx_t *x, jv v, jargs_t *a)
{
    (void)a;
    return str_is_case(jv_to_str(x, v), true);
}
static bool t_upper(jx_t *x, jv v, jargs_t *a)
{
    (void)a;
    return str_is_case(jv_to_str(x, v), false);
}
static bool t_in(jx_t *x, jv v, jargs_t *a)
{
    jv seq = targ(x, a, "in");
    switch (seq.t) {
    case JV_STR:
        if (v.t != JV_STR) {
            need_defined(x, v);
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "'in <string>' requires string as left operand, not %s", jv_type_name(v.t));
        }
        return v.v.s->len == 0 || memmem(seq.v.s->s, seq.v.s->len, v.v.s->s, v.v.s->len) != NULL;
    case JV_DICT: {
        jv tmp;
        return jd_get(seq.v.d, v, &tmp);
    }
    default: {
        jlist_t *l = jv_iter_list(x, seq);
        for (size_t i = 0; i < l->n; i++) {
            if (jv_equal(l->items[i], v)) {
                return true;
            }
        }
        return false;
    }
    }
}
static bool t_sameas(jx_t *x, jv v, jargs_t *a)
{
    jv o = targ(x, a, "sameas");
    if (v.t != o.t) {
        return false;
    }
    switch (v.t) {
    case JV_NONE:
    case JV_UNDEF:
        return true;
    case JV_BOOL:
        return v.v.b == o.v.b;
    case JV_INT:
        return v.v.i == o.v.i && v.v.i >= -5 && v.v.i <= 256;
    case JV_STR:
        return v.v.s == o.v.s;
    case JV_LIST:
    case JV_TUPLE:
        return v.v.l == o.v.l;
    case JV_DICT:
    case JV_NS:
        return v.v.d == o.v.d;
    default:
        return jv_equal(v, o);
    }
}
static bool t_filter(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_STR && jb_find_filter(v.v.s->s) != NULL;
}
static bool t_test(jx_t *x, jv v, jargs_t *a)
{
    (void)x;
    (void)a;
    return v.t == JV_STR && jb_find_test(v.v.s->s) != NULL;
}

typedef struct named_test {
    const char *name;
    jtest_fn fn;
} named_test_t;

static const named_test_t tests[] = {
    {"defined", t_defined},
    {"undefined", t_undefined},
    {"none", t_none},
    {"string", t_string},
    {"number", t_number},
    {"integer", t_integer},
    {"float", t_float},
    {"mapping", t_mapping},
    {"sequence", t_sequence},
    {"iterable", t_iterable},
    {"boolean", t_boolean},
    {"true", t_true},
    {"false", t_false},
    {"callable", t_callable},
    {"escaped", t_escaped},
    {"odd", t_odd},
    {"even", t_even},
    {"divisibleby", t_divisibleby},
    {"eq", t_eq},
    {"equalto", t_eq},
    {"==", t_eq},
    {"ne", t_ne},
    {"!=", t_ne},
    {"lt", t_lt},
    {"lessthan", t_lt},
    {"<", t_lt},
    {"le", t_le},
    {"<=", t_le},
    {"gt", t_gt},
    {"greaterthan", t_gt},
    {">", t_gt},
    {"ge", t_ge},
    {">=", t_ge},
    {"lower", t_lower},
    {"upper", t_upper},
    {"in", t_in},
    {"sameas", t_sameas},
    {"filter", t_filter},
    {"test", t_test},
};

jtest_fn jb_find_test(const char *name)
{
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (strcmp(tests[i].name, name) == 0) {
            return tests[i].fn;
        }
    }
    return NULL;
}
