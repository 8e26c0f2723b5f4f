/*
 * jinja_value.c - the Jinja engine's value model: the arena, byte buffers, strings
 * (UTF-8, indexed by code point as Python does), lists, insertion-ordered dicts, and
 * Python's semantics for truth, equality, ordering, str(), repr(), float formatting and
 * json.dumps.
 */
#include "coordinator/jinja/jinja_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------- */
/* Arena                                                                               */

struct jchunk {
    jchunk_t *next;
    size_t size;
    _Alignas(16) char data[];
};

#define JA_CHUNK (64 * 1024)

void ja_init(jarena_t *a, size_t limit)
{
    memset(a, 0, sizeof(*a));
    a->limit = limit;
}

void ja_release(jarena_t *a)
{
    jchunk_t *c = a->chunks;
    while (c != NULL) {
        jchunk_t *n = c->next;
        free(c);
        c = n;
    }
    a->chunks = NULL;
    a->cur = NULL;
    a->left = 0;
    a->total = 0;
}

void *ja_alloc(jarena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0) {
        n = 16;
    }
    if (n > a->left) {
        size_t sz = n > JA_CHUNK / 4 ? n : JA_CHUNK;
        if (sz > SIZE_MAX - sizeof(jchunk_t) - 16) {
            return NULL;
        }
        if (a->limit != 0 && (a->total + sz > a->limit || sz > a->limit)) {
            return NULL;
        }
        jchunk_t *c = malloc(sizeof(jchunk_t) + sz);
        if (c == NULL) {
            return NULL;
        }
        c->size = sz;
        c->next = a->chunks;
        a->chunks = c;
        a->total += sz;
        if (sz != JA_CHUNK) {
            /* a big block: keep using the previous chunk's remainder for small ones */
            return c->data;
        }
        a->cur = c->data;
        a->left = sz;
    }
    void *p = a->cur;
    a->cur += n;
    a->left -= n;
    return p;
}

void *jx_alloc(jx_t *x, size_t n)
{
    void *p = ja_alloc(&x->arena, n);
    if (p == NULL) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "template render exceeded its memory limit (%zu bytes)",
                x->lim.max_memory);
    }
    return p;
}

/* ---------------------------------------------------------------------------------- */
/* Buffers                                                                             */

void jb_init(jbuf_t *b, jx_t *x, bool heap)
{
    memset(b, 0, sizeof(*b));
    b->x = x;
    b->heap = heap;
    b->max = x->lim.max_output;
}

static void jb_grow(jbuf_t *b, size_t need)
{
    if (b->max != 0 && need > b->max) {
        jx_fail(b->x, TDM_ERR_OUT_OF_RANGE, "template output exceeded its limit (%zu bytes)",
                b->max);
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        cap *= 2;
    }
    if (b->heap) {
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            jx_fail(b->x, TDM_ERR_NO_MEMORY, "out of memory growing the template output");
        }
        b->p = p;
    } else {
        char *p = jx_alloc(b->x, cap);
        if (b->len) {
            memcpy(p, b->p, b->len);
        }
        b->p = p;
    }
    b->cap = cap;
}

void jb_put(jbuf_t *b, const char *s, size_t n)
{
    if (n == 0) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        if (n > SIZE_MAX / 2 - b->len) {
            jx_fail(b->x, TDM_ERR_OUT_OF_RANGE, "template output too large");
        }
        jb_grow(b, b->len + n + 1);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void jb_puts(jbuf_t *b, const char *s)
{
    jb_put(b, s, strlen(s));
}

void jb_putc(jbuf_t *b, char c)
{
    jb_put(b, &c, 1);
}

void jb_printf(jbuf_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n < sizeof(tmp)) {
        jb_put(b, tmp, (size_t)n);
        return;
    }
    char *big = jx_alloc(b->x, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    jb_put(b, big, (size_t)n);
}

jstr_t *jb_str(jbuf_t *b)
{
    return js_new(b->x, b->p ? b->p : "", b->len);
}

/* ---------------------------------------------------------------------------------- */
/* Strings and UTF-8                                                                   */

jstr_t *js_new(jx_t *x, const char *s, size_t n)
{
    if (x->lim.max_output != 0 && n > x->lim.max_output) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "template string exceeded the output limit (%zu bytes)",
                x->lim.max_output);
    }
    jstr_t *r = jx_alloc(x, sizeof(jstr_t) + n + 1);
    r->len = n;
    r->ncp = -1;
    if (n) {
        memcpy(r->s, s, n);
    }
    r->s[n] = '\0';
    return r;
}

jstr_t *js_cstr(jx_t *x, const char *s)
{
    return js_new(x, s, strlen(s));
}

jv jv_str(jx_t *x, const char *s, size_t n)
{
    return jv_strv(js_new(x, s, n));
}

jv jv_cstr(jx_t *x, const char *s)
{
    return jv_strv(js_cstr(x, s));
}

uint32_t ju_decode(const char *str, size_t n, size_t *adv)
{
    const unsigned char *s = (const unsigned char *)str;
    if (n == 0) {
        *adv = 0;
        return 0;
    }
    unsigned c = s[0];
    if (c < 0x80) {
        *adv = 1;
        return c;
    }
    size_t need;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
        need = 2;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        need = 3;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        need = 4;
        cp = c & 0x07;
    } else {
        *adv = 1;
        return c;
    }
    if (n < need) {
        *adv = 1;
        return c;
    }
    for (size_t k = 1; k < need; k++) {
        if ((s[k] & 0xC0) != 0x80) {
            *adv = 1;
            return c;
        }
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    *adv = need;
    return cp;
}

size_t ju_encode(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | ((cp >> 18) & 0x07));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int64_t js_ncp(jstr_t *s)
{
    if (s->ncp >= 0) {
        return s->ncp;
    }
    int64_t n = 0;
    size_t i = 0;
    while (i < s->len) {
        size_t adv;
        ju_decode(s->s + i, s->len - i, &adv);
        i += adv;
        n++;
    }
    s->ncp = n;
    return n;
}

size_t ju_offset(const char *s, size_t len, int64_t cp_index)
{
    size_t i = 0;
    while (cp_index > 0 && i < len) {
        size_t adv;
        ju_decode(s + i, len - i, &adv);
        i += adv;
        cp_index--;
    }
    return i;
}

bool ju_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---------------------------------------------------------------------------------- */
/* Containers                                                                          */

jlist_t *jl_new(jx_t *x, size_t cap)
{
    jlist_t *l = jx_alloc(x, sizeof(*l));
    l->n = 0;
    l->cap = cap ? cap : 1; /* never NULL: callers memcpy from and into it */
    l->items = jx_alloc(x, l->cap * sizeof(jv));
    return l;
}

void jl_push(jx_t *x, jlist_t *l, jv v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jv *items = jx_alloc(x, cap * sizeof(jv));
        if (l->n) {
            memcpy(items, l->items, l->n * sizeof(jv));
        }
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = v;
}

jv jv_list(jlist_t *l)
{
    jv v;
    v.t = JV_LIST;
    v.v.l = l;
    return v;
}

jv jv_tuple(jlist_t *l)
{
    jv v;
    v.t = JV_TUPLE;
    v.v.l = l;
    return v;
}

jv jv_dict(jdict_t *d)
{
    jv v;
    v.t = JV_DICT;
    v.v.d = d;
    return v;
}

jdict_t *jd_new(jx_t *x, size_t cap)
{
    jdict_t *d = jx_alloc(x, sizeof(*d));
    memset(d, 0, sizeof(*d));
    cap = cap ? cap : 1; /* never NULL: callers memcpy from it */
    d->keys = jx_alloc(x, cap * sizeof(jv));
    d->vals = jx_alloc(x, cap * sizeof(jv));
    d->cap = cap;
    return d;
}

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* Keys equal in Python hash equally: 1, 1.0 and True share a hash. */
static uint32_t key_hash(jv k)
{
    switch (k.t) {
    case JV_STR:
        return hash_bytes(k.v.s->s, k.v.s->len);
    case JV_BOOL:
        return k.v.b ? 1u : 0u;
    case JV_INT:
        return (uint32_t)((uint64_t)k.v.i * 0x9E3779B97F4A7C15ull >> 32);
    case JV_FLOAT:
        if (k.v.f == floor(k.v.f) && fabs(k.v.f) < 9e18) {
            return key_hash(jv_int((int64_t)k.v.f));
        }
        return (uint32_t)(k.v.f * 1000003.0);
    default:
        return (uint32_t)k.t * 7919u;
    }
}

static void jd_reindex(jx_t *x, jdict_t *d)
{
    size_t icap = 16;
    while (icap < d->n * 2 + 2) {
        icap *= 2;
    }
    d->index = jx_alloc(x, icap * sizeof(int32_t));
    d->icap = icap;
    for (size_t i = 0; i < icap; i++) {
        d->index[i] = -1;
    }
    for (size_t i = 0; i < d->n; i++) {
        size_t h = key_hash(d->keys[i]) & (icap - 1);
        while (d->index[h] >= 0) {
            h = (h + 1) & (icap - 1);
        }
        d->index[h] = (int32_t)i;
    }
}

static long jd_find(const jdict_t *d, jv key)
{
    if (d->index != NULL) {
        size_t h = key_hash(key) & (d->icap - 1);
        while (d->index[h] >= 0) {
            if (jv_equal(d->keys[d->index[h]], key)) {
                return d->index[h];
            }
            h = (h + 1) & (d->icap - 1);
        }
        return -1;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (jv_equal(d->keys[i], key)) {
            return (long)i;
        }
    }
    return -1;
}

void jd_set(jx_t *x, jdict_t *d, jv key, jv val)
{
    long i = jd_find(d, key);
    if (i >= 0) {
        d->vals[i] = val;
        return;
    }
    if (d->n >= INT32_MAX - 1) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "dict too large");
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *k = jx_alloc(x, cap * sizeof(jv));
        jv *v = jx_alloc(x, cap * sizeof(jv));
        if (d->n) {
            memcpy(k, d->keys, d->n * sizeof(jv));
            memcpy(v, d->vals, d->n * sizeof(jv));
        }
        d->keys = k;
        d->vals = v;
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n] = val;
    d->n++;
    if (d->index != NULL && d->n * 2 + 2 <= d->icap) {
        size_t h = key_hash(key) & (d->icap - 1);
        while (d->index[h] >= 0) {
            h = (h + 1) & (d->icap - 1);
        }
        d->index[h] = (int32_t)(d->n - 1);
    } else if (d->n > 8) {
        jd_reindex(x, d);
    }
}

bool jd_get(const jdict_t *d, jv key, jv *out)
{
    long i = jd_find(d, key);
    if (i < 0) {
        return false;
    }
    *out = d->vals[i];
    return true;
}

bool jd_get_str(const jdict_t *d, const char *key, size_t klen, jv *out)
{
    if (d->index != NULL) {
        size_t h = hash_bytes(key, klen) & (d->icap - 1);
        while (d->index[h] >= 0) {
            jv k = d->keys[d->index[h]];
            if (k.t == JV_STR && k.v.s->len == klen && memcmp(k.v.s->s, key, klen) == 0) {
                *out = d->vals[d->index[h]];
                return true;
            }
            h = (h + 1) & (d->icap - 1);
        }
        return false;
    }
    for (size_t i = 0; i < d->n; i++) {
        jv k = d->keys[i];
        if (k.t == JV_STR && k.v.s->len == klen && memcmp(k.v.s->s, key, klen) == 0) {
            *out = d->vals[i];
            return true;
        }
    }
    return false;
}

/* ---------------------------------------------------------------------------------- */
/* Truth, equality, ordering                                                           */

bool jv_truthy(jv v)
{
    switch (v.t) {
    case JV_UNDEF:
    case JV_NONE:
        return false;
    case JV_BOOL:
        return v.v.b;
    case JV_INT:
        return v.v.i != 0;
    case JV_FLOAT:
        return v.v.f != 0.0;
    case JV_STR:
        return v.v.s->len != 0;
    case JV_LIST:
    case JV_TUPLE:
        return v.v.l->n != 0;
    case JV_DICT:
        return v.v.d->n != 0;
    default:
        return true;
    }
}

static bool is_num(jv v)
{
    return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
}

static double num_f(jv v)
{
    return v.t == JV_FLOAT ? v.v.f : v.t == JV_INT ? (double)v.v.i : (double)v.v.b;
}

static int64_t num_i(jv v)
{
    return v.t == JV_INT ? v.v.i : (int64_t)v.v.b;
}

bool jv_equal(jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t == JV_FLOAT || b.t == JV_FLOAT) {
            return num_f(a) == num_f(b);
        }
        return num_i(a) == num_i(b);
    }
    if ((a.t == JV_LIST && b.t == JV_LIST) || (a.t == JV_TUPLE && b.t == JV_TUPLE)) {
        if (a.v.l->n != b.v.l->n) {
            return false;
        }
        for (size_t i = 0; i < a.v.l->n; i++) {
            if (!jv_equal(a.v.l->items[i], b.v.l->items[i])) {
                return false;
            }
        }
        return true;
    }
    if (a.t != b.t) {
        return false;
    }
    switch (a.t) {
    case JV_UNDEF:
    case JV_NONE:
        return true;
    case JV_STR:
        return a.v.s->len == b.v.s->len && memcmp(a.v.s->s, b.v.s->s, a.v.s->len) == 0;
    case JV_DICT:
        if (a.v.d->n != b.v.d->n) {
            return false;
        }
        for (size_t i = 0; i < a.v.d->n; i++) {
            jv o;
            if (!jd_get(b.v.d, a.v.d->keys[i], &o) || !jv_equal(a.v.d->vals[i], o)) {
                return false;
            }
        }
        return true;
    case JV_NS:
        return a.v.d == b.v.d;
    case JV_MACRO:
        return a.v.m == b.v.m;
    case JV_FUNC:
        return a.v.fn == b.v.fn;
    case JV_LOOP:
        return a.v.lp == b.v.lp;
    default:
        return false;
    }
}

const char *jv_type_name(jv_type_t t)
{
    switch (t) {
    case JV_UNDEF:
        return "Undefined";
    case JV_NONE:
        return "NoneType";
    case JV_BOOL:
        return "bool";
    case JV_INT:
        return "int";
    case JV_FLOAT:
        return "float";
    case JV_STR:
        return "str";
    case JV_LIST:
        return "list";
    case JV_TUPLE:
        return "tuple";
    case JV_DICT:
        return "dict";
    case JV_NS:
        return "Namespace";
    case JV_MACRO:
        return "Macro";
    case JV_FUNC:
        return "builtin_function_or_method";
    case JV_LOOP:
        return "LoopContext";
    }
    return "object";
}

int jv_compare(jx_t *x, jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t == JV_FLOAT || b.t == JV_FLOAT) {
            double fa = num_f(a), fb = num_f(b);
            return fa < fb ? -1 : fa > fb ? 1 : 0;
        }
        int64_t ia = num_i(a), ib = num_i(b);
        return ia < ib ? -1 : ia > ib ? 1 : 0;
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        /* UTF-8 byte order equals code point order */
        size_t n = a.v.s->len < b.v.s->len ? a.v.s->len : b.v.s->len;
        int c = memcmp(a.v.s->s, b.v.s->s, n);
        if (c != 0) {
            return c < 0 ? -1 : 1;
        }
        return a.v.s->len < b.v.s->len ? -1 : a.v.s->len > b.v.s->len ? 1 : 0;
    }
    if ((a.t == JV_LIST && b.t == JV_LIST) || (a.t == JV_TUPLE && b.t == JV_TUPLE)) {
        size_t n = a.v.l->n < b.v.l->n ? a.v.l->n : b.v.l->n;
        for (size_t i = 0; i < n; i++) {
            if (!jv_equal(a.v.l->items[i], b.v.l->items[i])) {
                return jv_compare(x, a.v.l->items[i], b.v.l->items[i]);
            }
        }
        return a.v.l->n < b.v.l->n ? -1 : a.v.l->n > b.v.l->n ? 1 : 0;
    }
    if (a.t == JV_UNDEF) {
        jv_undef_fail(x, a);
    }
    if (b.t == JV_UNDEF) {
        jv_undef_fail(x, b);
    }
    jx_fail(x, TDM_ERR_INVALID_PARAM, "'<' not supported between instances of '%s' and '%s'",
            jv_type_name(a.t), jv_type_name(b.t));
}

/* ---------------------------------------------------------------------------------- */
/* str() and repr()                                                                    */

void jv_write_float(jbuf_t *b, double f)
{
    if (isnan(f)) {
        jb_puts(b, "nan");
        return;
    }
    if (isinf(f)) {
        jb_puts(b, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0.0) {
        jb_puts(b, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    /* shortest digits that round-trip, as Python's repr */
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) {
            break;
        }
    }
    /* tmp = [-]d.ddde[+-]XX */
    char digits[24];
    size_t nd = 0;
    const char *p = tmp;
    bool neg = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    while (*p && *p != 'e') {
        if (*p >= '0' && *p <= '9') {
            digits[nd++] = *p;
        }
        p++;
    }
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
    }
    int decpt = exp10 + 1; /* value = 0.DIGITS * 10^decpt */
    if (neg) {
        jb_putc(b, '-');
    }
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            jb_puts(b, "0.");
            for (int i = 0; i < -decpt; i++) {
                jb_putc(b, '0');
            }
            jb_put(b, digits, nd);
        } else if ((size_t)decpt >= nd) {
            jb_put(b, digits, nd);
            for (size_t i = nd; i < (size_t)decpt; i++) {
                jb_putc(b, '0');
            }
            jb_puts(b, ".0");
        } else {
            jb_put(b, digits, (size_t)decpt);
            jb_putc(b, '.');
            jb_put(b, digits + decpt, nd - (size_t)decpt);
        }
    } else {
        jb_putc(b, digits[0]);
        if (nd > 1) {
            jb_putc(b, '.');
            jb_put(b, digits + 1, nd - 1);
        }
        int e = decpt - 1;
        jb_printf(b, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
}

/* Python's str.isprintable, approximated with the non-printable ranges that matter in
 * practice (controls, format characters, separators other than ' ', private use). */
static bool cp_printable(uint32_t c)
{
    if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) {
        return false;
    }
    if (c < 0x300) {
        return true;
    }
    if ((c >= 0x600 && c <= 0x605) || c == 0x61C || c == 0x6DD || c == 0x70F || c == 0x8E2 ||
        c == 0x1680 || c == 0x180E || (c >= 0x2000 && c <= 0x200F) ||
        (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x2064) ||
        (c >= 0x2066 && c <= 0x206F) || c == 0x3000 || (c >= 0xD800 && c <= 0xF8FF) ||
        c == 0xFEFF || (c >= 0xFFF0 && c <= 0xFFFB) || c == 0xFFFE || c == 0xFFFF || c == 0x110BD ||
        c == 0x110CD || (c >= 0x1BCA0 && c <= 0x1BCA3) || (c >= 0x1D173 && c <= 0x1D17A) ||
        c == 0xE0001 || (c >= 0xE0020 && c <= 0xE007F) || c >= 0xF0000) {
        return false;
    }
    return true;
}

static void write_str_repr(jbuf_t *b, const char *s, size_t n)
{
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    jb_putc(b, q);
    size_t i = 0;
    while (i < n) {
        size_t adv;
        uint32_t c = ju_decode(s + i, n - i, &adv);
        if (c == (uint32_t)q || c == '\\') {
            jb_putc(b, '\\');
            jb_putc(b, (char)c);
        } else if (c == '\n') {
            jb_puts(b, "\\n");
        } else if (c == '\r') {
            jb_puts(b, "\\r");
        } else if (c == '\t') {
            jb_puts(b, "\\t");
        } else if (adv == 1 && c >= 0x80) {
            /* an invalid UTF-8 byte: Python would hold a surrogate escape */
            jb_printf(b, "\\udc%02x", c);
        } else if (!cp_printable(c)) {
            if (c < 0x100) {
                jb_printf(b, "\\x%02x", c);
            } else if (c < 0x10000) {
                jb_printf(b, "\\u%04x", c);
            } else {
                jb_printf(b, "\\U%08x", c);
            }
        } else {
            jb_put(b, s + i, adv);
        }
        i += adv;
    }
    jb_putc(b, q);
}

static void check_depth(jx_t *x)
{
    if (x->depth > x->lim.max_depth) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "template nesting exceeded its depth limit (%u)",
                x->lim.max_depth);
    }
}

void jv_write_repr(jx_t *x, jbuf_t *b, jv v)
{
    switch (v.t) {
    case JV_UNDEF:
        jb_puts(b, "Undefined");
        return;
    case JV_STR:
        write_str_repr(b, v.v.s->s, v.v.s->len);
        return;
    case JV_LIST:
    case JV_TUPLE: {
        x->depth++;
        check_depth(x);
        jb_putc(b, v.t == JV_LIST ? '[' : '(');
        for (size_t i = 0; i < v.v.l->n; i++) {
            if (i) {
                jb_puts(b, ", ");
            }
            jv_write_repr(x, b, v.v.l->items[i]);
        }
        if (v.t == JV_TUPLE && v.v.l->n == 1) {
            jb_putc(b, ',');
        }
        jb_putc(b, v.t == JV_LIST ? ']' : ')');
        x->depth--;
        return;
    }
    case JV_DICT:
    case JV_NS: {
        x->depth++;
        check_depth(x);
        if (v.t == JV_NS) {
            jb_puts(b, "<Namespace ");
        }
        jb_putc(b, '{');
        for (size_t i = 0; i < v.v.d->n; i++) {
            if (i) {
                jb_puts(b, ", ");
            }
            jv_write_repr(x, b, v.v.d->keys[i]);
            jb_puts(b, ": ");
            jv_write_repr(x, b, v.v.d->vals[i]);
        }
        jb_putc(b, '}');
        if (v.t == JV_NS) {
            jb_putc(b, '>');
        }
        x->depth--;
        return;
    }
    default:
        jv_write_str(x, b, v);
        return;
    }
}

void jv_write_str(jx_t *x, jbuf_t *b, jv v)
{
    switch (v.t) {
    case JV_UNDEF:
        return;
    case JV_NONE:
        jb_puts(b, "None");
        return;
    case JV_BOOL:
        jb_puts(b, v.v.b ? "True" : "False");
        return;
    case JV_INT:
        jb_printf(b, "%lld", (long long)v.v.i);
        return;
    case JV_FLOAT:
        jv_write_float(b, v.v.f);
        return;
    case JV_STR:
        jb_put(b, v.v.s->s, v.v.s->len);
        return;
    case JV_MACRO:
        jb_printf(b, "<Macro '%s'>", v.v.m->name ? v.v.m->name : "caller");
        return;
    case JV_FUNC:
        jb_printf(b, "<built-in method %s>", v.v.fn->name);
        return;
    case JV_LOOP:
        jb_printf(b, "<LoopContext %zu/%zu>", v.v.lp->i + 1, v.v.lp->n);
        return;
    default:
        jv_write_repr(x, b, v);
        return;
    }
}

jstr_t *jv_to_str(jx_t *x, jv v)
{
    if (v.t == JV_STR) {
        return v.v.s;
    }
    jbuf_t b;
    jb_init(&b, x, false);
    jv_write_str(x, &b, v);
    return jb_str(&b);
}

/* ---------------------------------------------------------------------------------- */
/* json.dumps                                                                          */

static void write_json_str(jbuf_t *b, const char *s, size_t n, bool ensure_ascii)
{
    jb_putc(b, '"');
    size_t i = 0, run = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[16];
        size_t adv = 1;
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            if (c < 0x20 || (ensure_ascii && c == 0x7F)) {
                snprintf(tmp, sizeof(tmp), "\\u%04x", c);
                esc = tmp;
            } else if (c >= 0x80 && ensure_ascii) {
                uint32_t cp = ju_decode(s + i, n - i, &adv);
                if (adv == 1) {
                    cp = 0xDC00 | c; /* surrogate escape of an invalid byte */
                }
                if (cp >= 0x10000) {
                    uint32_t v = cp - 0x10000;
                    snprintf(tmp, sizeof(tmp), "\\u%04x\\u%04x", 0xD800 | (v >> 10),
                             0xDC00 | (v & 0x3FF));
                } else {
                    snprintf(tmp, sizeof(tmp), "\\u%04x", cp);
                }
                esc = tmp;
            }
            break;
        }
        if (esc != NULL) {
            jb_put(b, s + i - run, run);
            run = 0;
            jb_puts(b, esc);
            i += adv;
        } else {
            run++;
            i++;
        }
    }
    jb_put(b, s + n - run, run);
    jb_putc(b, '"');
}

static void json_newline(jbuf_t *b, const jjson_opts_t *o, int level)
{
    jb_putc(b, '\n');
    for (int i = 0; i < level; i++) {
        jb_put(b, o->indent, o->indent_len);
    }
}

static void json_key(jx_t *x, jbuf_t *b, jv k, const jjson_opts_t *o)
{
    switch (k.t) {
    case JV_STR:
        write_json_str(b, k.v.s->s, k.v.s->len, o->ensure_ascii);
        return;
    case JV_BOOL:
        jb_puts(b, k.v.b ? "\"true\"" : "\"false\"");
        return;
    case JV_NONE:
        jb_puts(b, "\"null\"");
        return;
    case JV_INT:
        jb_printf(b, "\"%lld\"", (long long)k.v.i);
        return;
    case JV_FLOAT:
        jb_putc(b, '"');
        if (isnan(k.v.f)) {
            jb_puts(b, "NaN");
        } else if (isinf(k.v.f)) {
            jb_puts(b, k.v.f < 0 ? "-Infinity" : "Infinity");
        } else {
            jv_write_float(b, k.v.f);
        }
        jb_putc(b, '"');
        return;
    default:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "keys must be str, int, float, bool or None, not %s",
                jv_type_name(k.t));
    }
}

static int cmp_keys_for_sort(jx_t *x, jv a, jv b)
{
    return jv_compare(x, a, b);
}

void jv_write_json(jx_t *x, jbuf_t *b, jv v, const jjson_opts_t *o, int level)
{
    switch (v.t) {
    case JV_NONE:
        jb_puts(b, "null");
        return;
    case JV_BOOL:
        jb_puts(b, v.v.b ? "true" : "false");
        return;
    case JV_INT:
        jb_printf(b, "%lld", (long long)v.v.i);
        return;
    case JV_FLOAT:
        if (isnan(v.v.f)) {
            jb_puts(b, "NaN");
        } else if (isinf(v.v.f)) {
            jb_puts(b, v.v.f < 0 ? "-Infinity" : "Infinity");
        } else {
            jv_write_float(b, v.v.f);
        }
        return;
    case JV_STR:
        write_json_str(b, v.v.s->s, v.v.s->len, o->ensure_ascii);
        return;
    case JV_LIST:
    case JV_TUPLE: {
        if (v.v.l->n == 0) {
            jb_puts(b, "[]");
            return;
        }
        x->depth++;
        check_depth(x);
        jb_putc(b, '[');
        for (size_t i = 0; i < v.v.l->n; i++) {
            if (i) {
                jb_put(b, o->item_sep, o->item_sep_len);
            }
            if (o->indent_on) {
                json_newline(b, o, level + 1);
            }
            jv_write_json(x, b, v.v.l->items[i], o, level + 1);
        }
        if (o->indent_on) {
            json_newline(b, o, level);
        }
        jb_putc(b, ']');
        x->depth--;
        return;
    }
    case JV_DICT: {
        jdict_t *d = v.v.d;
        if (d->n == 0) {
            jb_puts(b, "{}");
            return;
        }
        x->depth++;
        check_depth(x);
        size_t *order = jx_alloc(x, d->n * sizeof(size_t));
        for (size_t i = 0; i < d->n; i++) {
            order[i] = i;
        }
        if (o->sort_keys) {
            /* insertion sort: stable and small */
            for (size_t i = 1; i < d->n; i++) {
                size_t t = order[i];
                size_t j = i;
                while (j > 0 && cmp_keys_for_sort(x, d->keys[order[j - 1]], d->keys[t]) > 0) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = t;
            }
        }
        jb_putc(b, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i) {
                jb_put(b, o->item_sep, o->item_sep_len);
            }
            if (o->indent_on) {
                json_newline(b, o, level + 1);
            }
            json_key(x, b, d->keys[order[i]], o);
            jb_put(b, o->key_sep, o->key_sep_len);
            jv_write_json(x, b, d->vals[order[i]], o, level + 1);
        }
        if (o->indent_on) {
            json_newline(b, o, level);
        }
        jb_putc(b, '}');
        x->depth--;
        return;
    }
    default:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "Object of type %s is not JSON serializable",
                jv_type_name(v.t));
    }
}

/* ---------------------------------------------------------------------------------- */
/* Undefined                                                                           */

static jv make_undef(jx_t *x, jundef_kind_t kind, const char *name, jv_type_t obj)
{
    jundef_t *u = jx_alloc(x, sizeof(*u));
    u->kind = kind;
    u->name = name;
    u->obj = obj;
    u->key = jv_none();
    jv v;
    v.t = JV_UNDEF;
    v.v.u = u;
    return v;
}

jv jv_undef_name(jx_t *x, const char *name)
{
    return make_undef(x, JU_NAME, name, JV_UNDEF);
}

jv jv_undef_attr(jx_t *x, jv obj, const char *name)
{
    return make_undef(x, JU_ATTR, name, obj.t);
}

jv jv_undef_item(jx_t *x, jv obj, jv key)
{
    if (key.t == JV_STR) {
        return make_undef(x, JU_ATTR, key.v.s->s, obj.t);
    }
    jv u = make_undef(x, JU_ITEM, NULL, obj.t);
    u.v.u->key = key;
    return u;
}

jv jv_undef_hint(jx_t *x, const char *msg)
{
    return make_undef(x, JU_HINT, msg, JV_UNDEF);
}

jv jv_undef_unsafe(jx_t *x, jv obj, const char *name)
{
    return make_undef(x, JU_UNSAFE, name, obj.t);
}

static const char *obj_desc(jv_type_t t)
{
    switch (t) {
    case JV_NONE:
        return "None";
    case JV_DICT:
        return "dict object";
    case JV_LIST:
        return "list object";
    case JV_TUPLE:
        return "tuple object";
    case JV_STR:
        return "str object";
    case JV_INT:
        return "int object";
    case JV_FLOAT:
        return "float object";
    case JV_BOOL:
        return "bool object";
    case JV_NS:
        return "Namespace object";
    case JV_LOOP:
        return "LoopContext object";
    default:
        return "object";
    }
}

void jv_undef_fail(jx_t *x, jv u)
{
    jundef_t *d = u.t == JV_UNDEF ? u.v.u : NULL;
    if (d == NULL) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "value is undefined");
    }
    switch (d->kind) {
    case JU_NAME:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "'%s' is undefined", d->name);
    case JU_ATTR:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "'%s' has no attribute '%s'", obj_desc(d->obj), d->name);
    case JU_ITEM: {
        jbuf_t b;
        jb_init(&b, x, false);
        jv_write_repr(x, &b, d->key);
        jx_fail(x, TDM_ERR_INVALID_PARAM, "%s has no element %s", obj_desc(d->obj), b.p);
    }
    case JU_UNSAFE:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "access to attribute '%s' of '%s' object is unsafe.",
                d->name, jv_type_name(d->obj));
    case JU_HINT:
    default:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "%s", d->name);
    }
}

/* ---------------------------------------------------------------------------------- */
/* Iteration                                                                           */

jlist_t *jv_iter_list(jx_t *x, jv v)
{
    switch (v.t) {
    case JV_UNDEF:
        if (v.v.u != NULL && v.v.u->kind == JU_UNSAFE) {
            jv_undef_fail(x, v);
        }
        return jl_new(x, 0);
    case JV_LIST:
    case JV_TUPLE:
        return v.v.l;
    case JV_DICT: {
        jlist_t *l = jl_new(x, v.v.d->n);
        for (size_t i = 0; i < v.v.d->n; i++) {
            l->items[i] = v.v.d->keys[i];
        }
        l->n = v.v.d->n;
        return l;
    }
    case JV_STR: {
        jstr_t *s = v.v.s;
        jlist_t *l = jl_new(x, (size_t)js_ncp(s));
        size_t i = 0;
        while (i < s->len) {
            size_t adv;
            ju_decode(s->s + i, s->len - i, &adv);
            jstr_t *c = js_new(x, s->s + i, adv);
            c->ncp = 1;
            l->items[l->n++] = jv_strv(c);
            i += adv;
        }
        return l;
    }
    default:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "'%s' object is not iterable", jv_type_name(v.t));
    }
}
