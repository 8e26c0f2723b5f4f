/*
 * jinja_eval.c - the Jinja interpreter: executes a syntax tree against JSON variables.
 *
 * Scoping follows jinja2: `for` bodies get a fresh scope per iteration (assignments do
 * not leak out, and an iteration does not see the previous iteration's assignments),
 * macros run in a scope whose parent is the scope they were defined in, `if` has no
 * scope of its own, and template-level `set` shadows the render variables. Operators
 * have Python's semantics (true division, floor division and modulo on negative
 * numbers, `and`/`or` returning an operand, string and list concatenation and
 * repetition, chained comparisons).
 */
#include "coordinator/jinja/jinja_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct jvar {
    const char *name;
    uint32_t hash;
    jv val;
};

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

void jx_fail(jx_t *x, tdm_status_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->msg, sizeof(x->msg), fmt, ap);
    va_end(ap);
    x->status = st;
    longjmp(x->jb, 1);
}

/* ---------------------------------------------------------------------------------- */
/* Scopes                                                                              */

static jscope_t *scope_new(jx_t *x, jscope_t *parent)
{
    jscope_t *s = jx_alloc(x, sizeof(*s));
    s->parent = parent;
    s->vars = NULL;
    s->n = s->cap = 0;
    return s;
}

static void scope_set_h(jx_t *x, jscope_t *s, const char *name, uint32_t h, jv val)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->vars[i].hash == h && strcmp(s->vars[i].name, name) == 0) {
            s->vars[i].val = val;
            return;
        }
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct jvar *v = jx_alloc(x, cap * sizeof(*v));
        if (s->n) {
            memcpy(v, s->vars, s->n * sizeof(*v));
        }
        s->vars = v;
        s->cap = cap;
    }
    s->vars[s->n].name = name;
    s->vars[s->n].hash = h;
    s->vars[s->n].val = val;
    s->n++;
}

static void scope_set(jx_t *x, jscope_t *s, const char *name, jv val)
{
    scope_set_h(x, s, name, hash_name(name), val);
}

static bool scope_get(const jscope_t *s, const char *name, uint32_t h, jv *out)
{
    for (; s != NULL; s = s->parent) {
        for (size_t i = s->n; i > 0; i--) {
            if (s->vars[i - 1].hash == h && strcmp(s->vars[i - 1].name, name) == 0) {
                *out = s->vars[i - 1].val;
                return true;
            }
        }
    }
    return false;
}

/* ---------------------------------------------------------------------------------- */
/* Forward declarations                                                                */

static jv eval(jx_t *x, jscope_t *sc, const jnode_t *n);
static void exec_body(jx_t *x, jscope_t *sc, const jnode_t *body);

static void enter(jx_t *x)
{
    if (++x->depth > x->lim.max_depth) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "template nesting exceeded its depth limit (%u)",
                x->lim.max_depth);
    }
}

static void count_iteration(jx_t *x)
{
    if (++x->iterations > x->lim.max_iterations) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE,
                "template exceeded its loop iteration limit (%llu iterations)",
                (unsigned long long)x->lim.max_iterations);
    }
}

/* Renders body into a fresh string (macro calls, set blocks, filter blocks). */
static jstr_t *capture(jx_t *x, jscope_t *sc, const jnode_t *body)
{
    jbuf_t buf;
    jb_init(&buf, x, false);
    jbuf_t *saved = x->out;
    x->out = &buf;
    exec_body(x, sc, body);
    x->out = saved;
    return jb_str(&buf);
}

/* ---------------------------------------------------------------------------------- */
/* Attribute and item access                                                           */

jv jx_getattr(jx_t *x, jv obj, const char *name)
{
    if (obj.t == JV_UNDEF) {
        jv_undef_fail(x, obj);
    }
    jv out;
    if (jb_getattr(x, obj, name, &out)) {
        return out;
    }
    if (obj.t == JV_DICT || obj.t == JV_NS) {
        if (jd_get_str(obj.v.d, name, strlen(name), &out)) {
            return out;
        }
    }
    return jv_undef_attr(x, obj, name);
}

static bool int_key(jv k, int64_t *out)
{
    if (k.t == JV_INT) {
        *out = k.v.i;
        return true;
    }
    if (k.t == JV_BOOL) {
        *out = k.v.b;
        return true;
    }
    return false;
}

jv jx_getitem(jx_t *x, jv obj, jv key)
{
    if (obj.t == JV_UNDEF) {
        jv_undef_fail(x, obj);
    }
    jv out;
    int64_t idx;
    switch (obj.t) {
    case JV_DICT:
        if (jd_get(obj.v.d, key, &out)) {
            return out;
        }
        break;
    case JV_LIST:
    case JV_TUPLE:
        if (int_key(key, &idx)) {
            int64_t n = (int64_t)obj.v.l->n;
            if (idx < 0) {
                idx += n;
            }
            if (idx >= 0 && idx < n) {
                return obj.v.l->items[idx];
            }
            return jv_undef_item(x, obj, key);
        }
        break;
    case JV_STR:
        if (int_key(key, &idx)) {
            int64_t n = js_ncp(obj.v.s);
            if (idx < 0) {
                idx += n;
            }
            if (idx >= 0 && idx < n) {
                size_t off = ju_offset(obj.v.s->s, obj.v.s->len, idx);
                size_t adv;
                ju_decode(obj.v.s->s + off, obj.v.s->len - off, &adv);
                return jv_str(x, obj.v.s->s + off, adv);
            }
            return jv_undef_item(x, obj, key);
        }
        break;
    default:
        break;
    }
    /* jinja2: a failed subscript with a string falls back to attribute lookup */
    if (key.t == JV_STR) {
        if (jb_getattr(x, obj, key.v.s->s, &out)) {
            return out;
        }
        if (obj.t == JV_NS && jd_get(obj.v.d, key, &out)) {
            return out;
        }
    }
    return jv_undef_item(x, obj, key);
}

/* Python slice index normalisation */
static void slice_indices(jx_t *x, int64_t len, jv vstart, jv vstop, jv vstep, int64_t *start,
                          int64_t *stop, int64_t *step)
{
    int64_t st = 1;
    if (vstep.t != JV_NONE && !int_key(vstep, &st)) {
        jx_fail(x, TDM_ERR_INVALID_PARAM,
                "slice indices must be integers or None or have an __index__ method");
    }
    if (st == 0) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "slice step cannot be zero");
    }
    int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? len : len - 1;
    int64_t a, b;
    if (vstart.t == JV_NONE) {
        a = st > 0 ? lower : upper;
    } else {
        if (!int_key(vstart, &a)) {
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "slice indices must be integers or None or have an __index__ method");
        }
        if (a < 0) {
            a += len;
            if (a < lower) {
                a = lower;
            }
        } else if (a > upper) {
            a = upper;
        }
    }
    if (vstop.t == JV_NONE) {
        b = st > 0 ? upper : lower;
    } else {
        if (!int_key(vstop, &b)) {
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "slice indices must be integers or None or have an __index__ method");
        }
        if (b < 0) {
            b += len;
            if (b < lower) {
                b = lower;
            }
        } else if (b > upper) {
            b = upper;
        }
    }
    *start = a;
    *stop = b;
    *step = st;
}

static jv do_slice(jx_t *x, jv obj, jv a, jv b, jv c)
{
    if (obj.t == JV_UNDEF) {
        jv_undef_fail(x, obj);
    }
    int64_t start, stop, step;
    if (obj.t == JV_LIST || obj.t == JV_TUPLE) {
        jlist_t *src = obj.v.l;
        slice_indices(x, (int64_t)src->n, a, b, c, &start, &stop, &step);
        jlist_t *l = jl_new(x, 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            jl_push(x, l, src->items[i]);
        }
        return obj.t == JV_LIST ? jv_list(l) : jv_tuple(l);
    }
    if (obj.t == JV_STR) {
        jstr_t *s = obj.v.s;
        int64_t n = js_ncp(s);
        slice_indices(x, n, a, b, c, &start, &stop, &step);
        if (step == 1) {
            if (stop <= start) {
                return jv_str(x, "", 0);
            }
            size_t o1 = ju_offset(s->s, s->len, start);
            size_t o2 = o1 + ju_offset(s->s + o1, s->len - o1, stop - start);
            return jv_str(x, s->s + o1, o2 - o1);
        }
        /* general step: index the code points */
        size_t *offs = jx_alloc(x, ((size_t)n + 1) * sizeof(size_t));
        size_t i = 0;
        for (int64_t k = 0; k < n; k++) {
            offs[k] = i;
            size_t adv;
            ju_decode(s->s + i, s->len - i, &adv);
            i += adv;
        }
        offs[n] = s->len;
        jbuf_t bb;
        jb_init(&bb, x, false);
        for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
            jb_put(&bb, s->s + offs[k], offs[k + 1] - offs[k]);
        }
        return jv_strv(jb_str(&bb));
    }
    return jv_undef_hint(x, "object is not subscriptable with a slice");
}

/* ---------------------------------------------------------------------------------- */
/* Calls                                                                               */

jv jarg(const jargs_t *a, size_t pos, const char *name, jv dflt)
{
    if (pos < a->npos) {
        return a->pos[pos];
    }
    if (name != NULL) {
        for (size_t i = 0; i < a->nkw; i++) {
            if (strcmp(a->kwn[i], name) == 0) {
                return a->kwv[i];
            }
        }
    }
    return dflt;
}

void jargs_check(jx_t *x, const jargs_t *a, const char *fname, size_t max_pos,
                 const char *const *names)
{
    if (a->npos > max_pos) {
        jx_fail(x, TDM_ERR_INVALID_PARAM,
                "%s() takes at most %zu positional argument(s) (%zu given)", fname, max_pos,
                a->npos);
    }
    for (size_t i = 0; i < a->nkw; i++) {
        bool ok = false;
        size_t k = 0;
        for (; names != NULL && names[k] != NULL; k++) {
            if (strcmp(names[k], a->kwn[i]) == 0) {
                ok = true;
                if (k < a->npos) {
                    jx_fail(x, TDM_ERR_INVALID_PARAM, "%s() got multiple values for argument '%s'",
                            fname, a->kwn[i]);
                }
                break;
            }
        }
        if (!ok) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "%s() got an unexpected keyword argument '%s'", fname,
                    a->kwn[i]);
        }
    }
}

static jv call_macro(jx_t *x, jmacro_t *m, jargs_t *a)
{
    const jnode_t *def = m->def;
    const char *mname = m->name ? m->name : "caller";
    int flags = def->op;
    jscope_t *sc = scope_new(x, m->closure);
    size_t np = def->nnames;
    if (a->npos > np && !(flags & 1)) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "macro '%s' takes not more than %zu argument(s)", mname,
                np);
    }
    for (size_t i = 0; i < np; i++) {
        const char *pname = def->names[i];
        jv v;
        bool have = false;
        if (i < a->npos) {
            v = a->pos[i];
            have = true;
        }
        for (size_t k = 0; k < a->nkw; k++) {
            if (strcmp(a->kwn[k], pname) == 0) {
                if (have) {
                    jx_fail(x, TDM_ERR_INVALID_PARAM,
                            "macro '%s' got multiple values for argument '%s'", mname, pname);
                }
                v = a->kwv[k];
                have = true;
            }
        }
        if (!have) {
            if (i < def->nlist && def->list[i] != NULL) {
                v = eval(x, sc, def->list[i]);
            } else {
                char *msg = jx_alloc(x, strlen(pname) + 40);
                sprintf(msg, "parameter '%s' was not provided", pname);
                v = jv_undef_hint(x, msg);
            }
        }
        scope_set(x, sc, pname, v);
    }
    /* extras */
    jlist_t *varargs = jl_new(x, 0);
    for (size_t i = np; i < a->npos; i++) {
        jl_push(x, varargs, a->pos[i]);
    }
    jdict_t *kwargs = jd_new(x, 0);
    jv caller = m->caller;
    for (size_t k = 0; k < a->nkw; k++) {
        bool is_param = false;
        for (size_t i = 0; i < np; i++) {
            if (strcmp(a->kwn[k], def->names[i]) == 0) {
                is_param = true;
            }
        }
        if (is_param) {
            continue;
        }
        if (strcmp(a->kwn[k], "caller") == 0) {
            caller = a->kwv[k];
            if (!(flags & 4) && def->kind == N_MACRO) {
                jx_fail(x, TDM_ERR_INVALID_PARAM,
                        "macro '%s' was invoked with a caller but does not use it", mname);
            }
            continue;
        }
        if (!(flags & 2)) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "macro '%s' takes no keyword argument '%s'", mname,
                    a->kwn[k]);
        }
        jd_set(x, kwargs, jv_cstr(x, a->kwn[k]), a->kwv[k]);
    }
    if (flags & 1) {
        scope_set(x, sc, "varargs", jv_tuple(varargs));
    }
    if (flags & 2) {
        scope_set(x, sc, "kwargs", jv_dict(kwargs));
    }
    if ((flags & 4) && caller.t != JV_UNDEF) {
        scope_set(x, sc, "caller", caller);
    }
    enter(x);
    int saved_ctl = x->loop_ctl;
    x->loop_ctl = 0;
    jstr_t *s = capture(x, sc, def->b);
    x->loop_ctl = saved_ctl;
    x->depth--;
    return jv_strv(s);
}

jv jx_call_value(jx_t *x, jv callee, jargs_t *a)
{
    switch (callee.t) {
    case JV_UNDEF:
        jv_undef_fail(x, callee);
    case JV_MACRO:
        return call_macro(x, callee.v.m, a);
    case JV_FUNC:
        return callee.v.fn->fn(x, callee.v.fn->self, a);
    default:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "'%s' object is not callable", jv_type_name(callee.t));
    }
}

/* evaluates a node's positional list and keyword lists into args */
static void eval_args(jx_t *x, jscope_t *sc, const jnode_t *n, jargs_t *a, jv *prepend)
{
    size_t extra = prepend ? 1 : 0;
    jv *pos = jx_alloc(x, (n->nlist + extra + 1) * sizeof(jv));
    if (prepend) {
        pos[0] = *prepend;
    }
    for (size_t i = 0; i < n->nlist; i++) {
        pos[i + extra] = eval(x, sc, n->list[i]);
    }
    jv *kwv = jx_alloc(x, (n->nlist2 + 1) * sizeof(jv));
    for (size_t i = 0; i < n->nlist2; i++) {
        kwv[i] = eval(x, sc, n->list2[i]);
    }
    a->pos = pos;
    a->npos = n->nlist + extra;
    a->kwn = n->names;
    a->kwv = kwv;
    a->nkw = n->nlist2;
}

/* ---------------------------------------------------------------------------------- */
/* Operators                                                                           */

static bool is_num(jv v)
{
    return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
}

static double as_f(jv v)
{
    return v.t == JV_FLOAT ? v.v.f : v.t == JV_INT ? (double)v.v.i : (double)v.v.b;
}

static int64_t as_i(jv v)
{
    return v.t == JV_INT ? v.v.i : (int64_t)v.v.b;
}

static const char *op_sym(int op)
{
    switch (op) {
    case T_ADD:
        return "+";
    case T_SUB:
        return "-";
    case T_MUL:
        return "*";
    case T_DIV:
        return "/";
    case T_FLOORDIV:
        return "//";
    case T_MOD:
        return "%";
    case T_POW:
        return "** or pow()";
    default:
        return "?";
    }
}

static void type_error(jx_t *x, int op, jv a, jv b) __attribute__((noreturn));
static void type_error(jx_t *x, int op, jv a, jv b)
{
    if (op == T_ADD && a.t == JV_STR) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "can only concatenate str (not \"%s\") to str",
                jv_type_name(b.t));
    }
    if (op == T_ADD && a.t == JV_LIST) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "can only concatenate list (not \"%s\") to list",
                jv_type_name(b.t));
    }
    jx_fail(x, TDM_ERR_INVALID_PARAM, "unsupported operand type(s) for %s: '%s' and '%s'",
            op_sym(op), jv_type_name(a.t), jv_type_name(b.t));
}

static void overflow(jx_t *x)
{
    jx_fail(x, TDM_ERR_OUT_OF_RANGE, "integer result out of the supported 64-bit range");
}

static jv repeat_seq(jx_t *x, jv seq, int64_t times)
{
    if (times < 0) {
        times = 0;
    }
    /* an empty operand gives an empty result at once: looping `times` times over nothing
     * passed every limit and ran for hours ('' * 7 ** 12, found by fuzz_template) */
    if ((seq.t == JV_STR && seq.v.s->len == 0) || (seq.t != JV_STR && seq.v.l->n == 0)) {
        times = 0;
    }
    if (seq.t == JV_STR) {
        size_t len = seq.v.s->len;
        if (len != 0 && (uint64_t)times > (uint64_t)(x->lim.max_output / len)) {
            jx_fail(x, TDM_ERR_OUT_OF_RANGE, "string repetition exceeds the output limit");
        }
        jbuf_t b;
        jb_init(&b, x, false);
        for (int64_t i = 0; i < times; i++) {
            jb_put(&b, seq.v.s->s, len);
        }
        return jv_strv(jb_str(&b));
    }
    jlist_t *src = seq.v.l;
    if (src->n != 0 && (uint64_t)times > (uint64_t)(x->lim.max_memory / 16 / src->n)) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "list repetition exceeds the memory limit");
    }
    jlist_t *l = jl_new(x, src->n * (size_t)times);
    for (int64_t i = 0; i < times; i++) {
        for (size_t k = 0; k < src->n; k++) {
            l->items[l->n++] = src->items[k];
        }
    }
    return seq.t == JV_LIST ? jv_list(l) : jv_tuple(l);
}

/* Python's printf-style `str % args` for the common conversions */
jv jx_str_mod(jx_t *x, jstr_t *fmt, jv args)
{
    const jv *items;
    size_t n;
    jv single = args;
    if (args.t == JV_TUPLE) {
        items = args.v.l->items;
        n = args.v.l->n;
    } else {
        items = &single;
        n = 1;
    }
    size_t ai = 0;
    jbuf_t b;
    jb_init(&b, x, false);
    const char *s = fmt->s;
    size_t len = fmt->len;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            jb_putc(&b, s[i]);
            continue;
        }
        if (++i >= len) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "incomplete format");
        }
        char spec[32];
        size_t sl = 0;
        spec[sl++] = '%';
        while (i < len && strchr("-+ #0123456789.", s[i]) != NULL && sl < 20) {
            spec[sl++] = s[i++];
        }
        if (i >= len) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "incomplete format");
        }
        char conv = s[i];
        if (conv == '%') {
            jb_putc(&b, '%');
            continue;
        }
        if (ai >= n) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "not enough arguments for format string");
        }
        jv v = items[ai++];
        if (conv == 's' || conv == 'r') {
            jbuf_t t;
            jb_init(&t, x, false);
            if (conv == 's') {
                jv_write_str(x, &t, v);
            } else {
                jv_write_repr(x, &t, v);
            }
            spec[sl++] = 's';
            spec[sl] = '\0';
            jb_printf(&b, spec, t.p ? t.p : "");
        } else if (conv == 'd' || conv == 'i') {
            if (!is_num(v)) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "%%d format: a real number is required, not %s",
                        jv_type_name(v.t));
            }
            spec[sl++] = 'l';
            spec[sl++] = 'l';
            spec[sl++] = 'd';
            spec[sl] = '\0';
            long long iv = v.t == JV_FLOAT ? (long long)v.v.f : (long long)as_i(v);
            jb_printf(&b, spec, iv);
        } else if (strchr("feEgGxXo", conv) != NULL) {
            if (!is_num(v)) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "%%%c format: a real number is required, not %s",
                        conv, jv_type_name(v.t));
            }
            spec[sl++] = conv;
            spec[sl] = '\0';
            if (conv == 'x' || conv == 'X' || conv == 'o') {
                char spec2[40];
                snprintf(spec2, sizeof(spec2), "%.*sll%c", (int)(sl - 1), spec, conv);
                jb_printf(&b, spec2, (long long)as_i(v));
            } else {
                jb_printf(&b, spec, as_f(v));
            }
        } else {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "unsupported format character '%c'", conv);
        }
    }
    if (ai < n && args.t == JV_TUPLE) {
        jx_fail(x, TDM_ERR_INVALID_PARAM, "not all arguments converted during string formatting");
    }
    return jv_strv(jb_str(&b));
}

static jv binop(jx_t *x, int op, jv a, jv b)
{
    if (a.t == JV_UNDEF) {
        jv_undef_fail(x, a);
    }
    if (b.t == JV_UNDEF) {
        jv_undef_fail(x, b);
    }
    bool nums = is_num(a) && is_num(b);
    bool fl = nums && (a.t == JV_FLOAT || b.t == JV_FLOAT);
    int64_t r;
    switch (op) {
    case T_ADD:
        if (nums) {
            if (fl) {
                return jv_float(as_f(a) + as_f(b));
            }
            if (__builtin_add_overflow(as_i(a), as_i(b), &r)) {
                overflow(x);
            }
            return jv_int(r);
        }
        if (a.t == JV_STR && b.t == JV_STR) {
            jbuf_t bb;
            jb_init(&bb, x, false);
            jb_put(&bb, a.v.s->s, a.v.s->len);
            jb_put(&bb, b.v.s->s, b.v.s->len);
            return jv_strv(jb_str(&bb));
        }
        if ((a.t == JV_LIST && b.t == JV_LIST) || (a.t == JV_TUPLE && b.t == JV_TUPLE)) {
            jlist_t *l = jl_new(x, a.v.l->n + b.v.l->n);
            memcpy(l->items, a.v.l->items, a.v.l->n * sizeof(jv));
            memcpy(l->items + a.v.l->n, b.v.l->items, b.v.l->n * sizeof(jv));
            l->n = a.v.l->n + b.v.l->n;
            return a.t == JV_LIST ? jv_list(l) : jv_tuple(l);
        }
        type_error(x, op, a, b);
    case T_SUB:
        if (nums) {
            if (fl) {
                return jv_float(as_f(a) - as_f(b));
            }
            if (__builtin_sub_overflow(as_i(a), as_i(b), &r)) {
                overflow(x);
            }
            return jv_int(r);
        }
        type_error(x, op, a, b);
    case T_MUL:
        if (nums) {
            if (fl) {
                return jv_float(as_f(a) * as_f(b));
            }
            if (__builtin_mul_overflow(as_i(a), as_i(b), &r)) {
                overflow(x);
            }
            return jv_int(r);
        }
        if ((a.t == JV_STR || a.t == JV_LIST || a.t == JV_TUPLE) &&
            (b.t == JV_INT || b.t == JV_BOOL)) {
            return repeat_seq(x, a, as_i(b));
        }
        if ((b.t == JV_STR || b.t == JV_LIST || b.t == JV_TUPLE) &&
            (a.t == JV_INT || a.t == JV_BOOL)) {
            return repeat_seq(x, b, as_i(a));
        }
        type_error(x, op, a, b);
    case T_DIV:
        if (nums) {
            if (as_f(b) == 0.0) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "division by zero");
            }
            return jv_float(as_f(a) / as_f(b));
        }
        type_error(x, op, a, b);
    case T_FLOORDIV:
        if (nums) {
            if (fl) {
                if (as_f(b) == 0.0) {
                    jx_fail(x, TDM_ERR_INVALID_PARAM, "float floor division by zero");
                }
                double m = fmod(as_f(a), as_f(b));
                double d = (as_f(a) - m) / as_f(b);
                if (m != 0.0 && ((as_f(b) < 0) != (m < 0))) {
                    d -= 1.0;
                }
                double fd = floor(d);
                if (d - fd > 0.5) {
                    fd += 1.0;
                }
                return jv_float(d == 0.0 ? copysign(0.0, as_f(a) / as_f(b)) : fd);
            }
            int64_t ia = as_i(a), ib = as_i(b);
            if (ib == 0) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "integer division or modulo by zero");
            }
            if (ia == INT64_MIN && ib == -1) {
                overflow(x);
            }
            int64_t q = ia / ib;
            if ((ia % ib != 0) && ((ia < 0) != (ib < 0))) {
                q--;
            }
            return jv_int(q);
        }
        type_error(x, op, a, b);
    case T_MOD:
        if (nums) {
            if (fl) {
                if (as_f(b) == 0.0) {
                    jx_fail(x, TDM_ERR_INVALID_PARAM, "float modulo");
                }
                double m = fmod(as_f(a), as_f(b));
                if (m != 0.0) {
                    if ((as_f(b) < 0) != (m < 0)) {
                        m += as_f(b);
                    }
                } else {
                    m = copysign(0.0, as_f(b));
                }
                return jv_float(m);
            }
            int64_t ia = as_i(a), ib = as_i(b);
            if (ib == 0) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "integer division or modulo by zero");
            }
            if (ib == -1) {
                return jv_int(0);
            }
            int64_t m = ia % ib;
            if (m != 0 && ((m < 0) != (ib < 0))) {
                m += ib;
            }
            return jv_int(m);
        }
        if (a.t == JV_STR) {
            return jx_str_mod(x, a.v.s, b);
        }
        type_error(x, op, a, b);
    case T_POW:
        if (nums) {
            if (!fl && as_i(b) >= 0) {
                int64_t base = as_i(a), e = as_i(b), acc = 1;
                while (e > 0) {
                    if (e & 1) {
                        if (__builtin_mul_overflow(acc, base, &acc)) {
                            overflow(x);
                        }
                    }
                    e >>= 1;
                    if (e > 0 && __builtin_mul_overflow(base, base, &base)) {
                        overflow(x);
                    }
                }
                return jv_int(acc);
            }
            if (as_f(a) == 0.0 && as_f(b) < 0) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "0.0 cannot be raised to a negative power");
            }
            double rr = pow(as_f(a), as_f(b));
            if (isnan(rr) && !isnan(as_f(a)) && !isnan(as_f(b))) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "complex results are not supported");
            }
            return jv_float(rr);
        }
        type_error(x, op, a, b);
    default:
        jx_fail(x, TDM_ERR_INTERNAL, "unknown operator");
    }
}

static bool contains(jx_t *x, jv container, jv item)
{
    switch (container.t) {
    case JV_UNDEF:
        if (container.v.u != NULL && container.v.u->kind == JU_UNSAFE) {
            jv_undef_fail(x, container);
        }
        return false;
    case JV_STR:
        if (item.t != JV_STR) {
            if (item.t == JV_UNDEF) {
                jv_undef_fail(x, item);
            }
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "'in <string>' requires string as left operand, not %s", jv_type_name(item.t));
        }
        if (item.v.s->len == 0) {
            return true;
        }
        return memmem(container.v.s->s, container.v.s->len, item.v.s->s, item.v.s->len) != NULL;
    case JV_LIST:
    case JV_TUPLE:
        for (size_t i = 0; i < container.v.l->n; i++) {
            if (jv_equal(container.v.l->items[i], item)) {
                return true;
            }
        }
        return false;
    case JV_DICT: {
        jv tmp;
        return jd_get(container.v.d, item, &tmp);
    }
    default:
        jx_fail(x, TDM_ERR_INVALID_PARAM, "argument of type '%s' is not iterable",
                jv_type_name(container.t));
    }
}

static bool compare_op(jx_t *x, int op, jv a, jv b)
{
    switch (op) {
    case T_EQ:
        return jv_equal(a, b);
    case T_NE:
        return !jv_equal(a, b);
    case T_LT:
        return jv_compare(x, a, b) < 0;
    case T_LTEQ:
        return jv_compare(x, a, b) <= 0;
    case T_GT:
        return jv_compare(x, a, b) > 0;
    case T_GTEQ:
        return jv_compare(x, a, b) >= 0;
    case JOP_IN:
        return contains(x, b, a);
    case JOP_NOTIN:
        return !contains(x, b, a);
    default:
        return false;
    }
}

/* ---------------------------------------------------------------------------------- */
/* Expressions                                                                         */

static jv eval_filter(jx_t *x, jscope_t *sc, const jnode_t *n, const jv *subst)
{
    jv operand = n->a != NULL ? (n->a->kind == N_FILTER ? eval_filter(x, sc, n->a, subst)
                                                        : eval(x, sc, n->a))
                              : *subst;
    if (n->filter == NULL) {
        jx_fail(x, TDM_ERR_UNSUPPORTED, "no filter named '%s' (unknown or not supported)", n->s);
    }
    jargs_t a;
    eval_args(x, sc, n, &a, NULL);
    return n->filter(x, operand, &a);
}

static jv eval(jx_t *x, jscope_t *sc, const jnode_t *n)
{
    enter(x);
    jv r;
    switch (n->kind) {
    case N_CONST:
        r = n->value;
        break;
    case N_NAME:
        if (!scope_get(sc, n->s, n->hash, &r)) {
            r = jb_find_global(n->s);
            if (r.t == JV_UNDEF) {
                r = jv_undef_name(x, n->s);
            }
        }
        break;
    case N_GETATTR:
        r = jx_getattr(x, eval(x, sc, n->a), n->s);
        break;
    case N_GETITEM: {
        jv obj = eval(x, sc, n->a);
        r = jx_getitem(x, obj, eval(x, sc, n->b));
        break;
    }
    case N_SLICE: {
        if (n->a == NULL) {
            /* a slice inside a tuple subscript (x[::1, 2]): Python raises TypeError and
             * jinja2 yields undefined; the tuple key below never matches anything */
            r = jv_none();
            break;
        }
        jv obj = eval(x, sc, n->a);
        jv a = n->b ? eval(x, sc, n->b) : jv_none();
        jv b = n->c ? eval(x, sc, n->c) : jv_none();
        jv c = n->d ? eval(x, sc, n->d) : jv_none();
        r = do_slice(x, obj, a, b, c);
        break;
    }
    case N_CALL: {
        jv callee = eval(x, sc, n->a);
        jargs_t a;
        eval_args(x, sc, n, &a, NULL);
        r = jx_call_value(x, callee, &a);
        break;
    }
    case N_FILTER:
        r = eval_filter(x, sc, n, NULL);
        break;
    case N_TEST: {
        jv v = eval(x, sc, n->a);
        if (n->test == NULL) {
            jx_fail(x, TDM_ERR_UNSUPPORTED, "no test named '%s' (unknown or not supported)", n->s);
        }
        jargs_t a;
        eval_args(x, sc, n, &a, NULL);
        bool t = n->test(x, v, &a);
        r = jv_bool(n->op ? !t : t);
        break;
    }
    case N_BINOP: {
        jv a = eval(x, sc, n->a);
        jv b = eval(x, sc, n->b);
        r = binop(x, n->op, a, b);
        break;
    }
    case N_NEG:
    case N_POS: {
        jv v = eval(x, sc, n->a);
        if (v.t == JV_UNDEF) {
            jv_undef_fail(x, v);
        }
        if (v.t == JV_FLOAT) {
            r = jv_float(n->kind == N_NEG ? -v.v.f : v.v.f);
        } else if (v.t == JV_INT || v.t == JV_BOOL) {
            int64_t i = as_i(v);
            if (n->kind == N_NEG && i == INT64_MIN) {
                overflow(x);
            }
            r = jv_int(n->kind == N_NEG ? -i : i);
        } else {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "bad operand type for unary %s: '%s'",
                    n->kind == N_NEG ? "-" : "+", jv_type_name(v.t));
        }
        break;
    }
    case N_NOT:
        r = jv_bool(!jv_truthy(eval(x, sc, n->a)));
        break;
    case N_AND: {
        jv a = eval(x, sc, n->a);
        r = jv_truthy(a) ? eval(x, sc, n->b) : a;
        break;
    }
    case N_OR: {
        jv a = eval(x, sc, n->a);
        r = jv_truthy(a) ? a : eval(x, sc, n->b);
        break;
    }
    case N_CONCAT: {
        jbuf_t b;
        jb_init(&b, x, false);
        for (size_t i = 0; i < n->nlist; i++) {
            jv_write_str(x, &b, eval(x, sc, n->list[i]));
        }
        r = jv_strv(jb_str(&b));
        break;
    }
    case N_COMPARE: {
        jv left = eval(x, sc, n->a);
        bool ok = true;
        for (size_t i = 0; i < n->nlist && ok; i++) {
            jv right = eval(x, sc, n->list[i]);
            ok = compare_op(x, n->ops[i], left, right);
            left = right;
        }
        r = jv_bool(ok);
        break;
    }
    case N_COND:
        if (jv_truthy(eval(x, sc, n->a))) {
            r = eval(x, sc, n->b);
        } else if (n->c != NULL) {
            r = eval(x, sc, n->c);
        } else {
            r = jv_undef_hint(x, "the inline if-expression evaluated to false and no else "
                                 "section was defined.");
        }
        break;
    case N_LIST:
    case N_TUPLE: {
        jlist_t *l = jl_new(x, n->nlist);
        for (size_t i = 0; i < n->nlist; i++) {
            l->items[i] = eval(x, sc, n->list[i]);
        }
        l->n = n->nlist;
        r = n->kind == N_LIST ? jv_list(l) : jv_tuple(l);
        break;
    }
    case N_DICT: {
        jdict_t *d = jd_new(x, n->nlist);
        for (size_t i = 0; i < n->nlist; i++) {
            jv k = eval(x, sc, n->list[i]);
            jv v = eval(x, sc, n->list2[i]);
            if (k.t == JV_LIST || k.t == JV_DICT || k.t == JV_NS || k.t == JV_UNDEF) {
                jx_fail(x, TDM_ERR_INVALID_PARAM, "unhashable type: '%s'", jv_type_name(k.t));
            }
            jd_set(x, d, k, v);
        }
        r = jv_dict(d);
        break;
    }
    default:
        jx_fail(x, TDM_ERR_INTERNAL, "unexpected node in expression");
    }
    x->depth--;
    return r;
}

/* ---------------------------------------------------------------------------------- */
/* Statements                                                                          */

static void unpack_assign(jx_t *x, jscope_t *sc, const jnode_t *target, jv v)
{
    if (target->kind == N_NAME) {
        scope_set_h(x, sc, target->s, target->hash, v);
        return;
    }
    /* tuple of names */
    jlist_t *items = jv_iter_list(x, v);
    if (items->n != target->nlist) {
        if (items->n > target->nlist) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "too many values to unpack (expected %zu)",
                    target->nlist);
        }
        jx_fail(x, TDM_ERR_INVALID_PARAM, "not enough values to unpack (expected %zu, got %zu)",
                target->nlist, items->n);
    }
    for (size_t i = 0; i < target->nlist; i++) {
        scope_set_h(x, sc, target->list[i]->s, target->list[i]->hash, items->items[i]);
    }
}

static void assign(jx_t *x, jscope_t *sc, const jnode_t *target, jv v)
{
    if (target->kind == N_NSREF) {
        jv ns;
        if (!scope_get(sc, target->s, hash_name(target->s), &ns)) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "'%s' is undefined", target->s);
        }
        if (ns.t != JV_NS) {
            jx_fail(x, TDM_ERR_INVALID_PARAM, "cannot assign attribute on non-namespace object");
        }
        if (target->s2[0] == '_') {
            jx_fail(x, TDM_ERR_INVALID_PARAM,
                    "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                    "but got '%s'.",
                    target->s2);
        }
        jd_set(x, ns.v.d, jv_cstr(x, target->s2), v);
        return;
    }
    unpack_assign(x, sc, target, v);
}

static void exec_for(jx_t *x, jscope_t *sc, const jnode_t *n)
{
    jv seq = eval(x, sc, n->b);
    jlist_t *src = jv_iter_list(x, seq);
    size_t count = src->n;
    const jv *items = src->items;
    jscope_t *it = scope_new(x, sc);
    if (n->c != NULL) {
        /* filtered loop: the filter sees the loop target, not `loop` */
        jlist_t *kept = jl_new(x, 0);
        for (size_t i = 0; i < count; i++) {
            count_iteration(x);
            it->n = 0;
            jv item = src->items[i];
            unpack_assign(x, it, n->a, item);
            if (jv_truthy(eval(x, it, n->c))) {
                jl_push(x, kept, item);
            }
        }
        items = kept->items;
        count = kept->n;
    }
    if (count == 0) {
        if (n->e != NULL) {
            exec_body(x, sc, n->e);
        }
        return;
    }
    jloop_t *lp = jx_alloc(x, sizeof(*lp));
    lp->items = items;
    lp->n = count;
    lp->depth = x->loop_nesting + 1;
    jv loopv;
    loopv.t = JV_LOOP;
    loopv.v.lp = lp;
    x->loop_nesting++;
    for (size_t i = 0; i < count; i++) {
        count_iteration(x);
        lp->i = i;
        it->n = 0; /* a fresh scope each iteration, reusing the storage */
        scope_set(x, it, "loop", loopv);
        unpack_assign(x, it, n->a, items[i]);
        exec_body(x, it, n->d);
        if (x->loop_ctl == 1) {
            x->loop_ctl = 0;
            break;
        }
        x->loop_ctl = 0;
    }
    x->loop_nesting--;
}

static void exec_stmt(jx_t *x, jscope_t *sc, const jnode_t *n)
{
    x->line = n->line;
    switch (n->kind) {
    case N_TEXT:
        jb_put(x->out, n->s, n->slen);
        break;
    case N_OUTPUT:
        jv_write_str(x, x->out, eval(x, sc, n->a));
        break;
    case N_BODY:
        exec_body(x, sc, n);
        break;
    case N_IF: {
        const jnode_t *c = n;
        while (c != NULL && c->kind == N_IF) {
            x->line = c->line;
            if (jv_truthy(eval(x, sc, c->a))) {
                exec_body(x, sc, c->b);
                return;
            }
            c = c->c;
        }
        if (c != NULL) {
            exec_body(x, sc, c);
        }
        break;
    }
    case N_FOR:
        exec_for(x, sc, n);
        break;
    case N_SET:
        assign(x, sc, n->a, eval(x, sc, n->b));
        break;
    case N_SETBLOCK: {
        jv v = jv_strv(capture(x, sc, n->b));
        if (n->c != NULL) {
            v = eval_filter(x, sc, n->c, &v);
        }
        assign(x, sc, n->a, v);
        break;
    }
    case N_MACRO: {
        jmacro_t *m = jx_alloc(x, sizeof(*m));
        m->def = n;
        m->closure = sc;
        m->name = n->s;
        m->caller = jv_undef();
        jv v;
        v.t = JV_MACRO;
        v.v.m = m;
        scope_set(x, sc, n->s, v);
        break;
    }
    case N_CALLBLOCK: {
        jmacro_t *m = jx_alloc(x, sizeof(*m));
        m->def = n;
        m->closure = sc;
        m->name = NULL;
        m->caller = jv_undef();
        jv caller;
        caller.t = JV_MACRO;
        caller.v.m = m;
        const jnode_t *call = n->a;
        jv callee = eval(x, sc, call->a);
        jargs_t a;
        eval_args(x, sc, call, &a, NULL);
        /* append caller=... to the keyword arguments */
        const char **kwn = jx_alloc(x, (a.nkw + 1) * sizeof(char *));
        jv *kwv = jx_alloc(x, (a.nkw + 1) * sizeof(jv));
        for (size_t i = 0; i < a.nkw; i++) {
            kwn[i] = a.kwn[i];
            kwv[i] = a.kwv[i];
        }
        kwn[a.nkw] = "caller";
        kwv[a.nkw] = caller;
        a.kwn = kwn;
        a.kwv = kwv;
        a.nkw++;
        jv_write_str(x, x->out, jx_call_value(x, callee, &a));
        break;
    }
    case N_FILTERBLOCK: {
        jv v = jv_strv(capture(x, sc, n->b));
        jv_write_str(x, x->out, eval_filter(x, sc, n->a, &v));
        break;
    }
    case N_WITH: {
        jscope_t *inner = scope_new(x, sc);
        for (size_t i = 0; i < n->nlist; i++) {
            unpack_assign(x, inner, n->list[i], eval(x, sc, n->list2[i]));
        }
        exec_body(x, inner, n->b);
        break;
    }
    case N_BREAK:
        x->loop_ctl = 1;
        break;
    case N_CONTINUE:
        x->loop_ctl = 2;
        break;
    default:
        jx_fail(x, TDM_ERR_INTERNAL, "unexpected node in statement list");
    }
}

static void exec_body(jx_t *x, jscope_t *sc, const jnode_t *body)
{
    enter(x);
    if (body->kind != N_BODY) {
        exec_stmt(x, sc, body);
    } else {
        for (size_t i = 0; i < body->nlist; i++) {
            exec_stmt(x, sc, body->list[i]);
            if (x->loop_ctl != 0) {
                break;
            }
        }
    }
    x->depth--;
}

/* ---------------------------------------------------------------------------------- */
/* JSON -> values, entry point                                                         */

static jv from_json(jx_t *x, const json_t *j, int depth)
{
    if (depth > 10000) {
        jx_fail(x, TDM_ERR_OUT_OF_RANGE, "render variables nested too deeply");
    }
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jdict_t *d = jd_new(x, json_object_size(j));
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)j, key, val)
        {
            jd_set(x, d, jv_cstr(x, key), from_json(x, val, depth + 1));
        }
        return jv_dict(d);
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jlist_t *l = jl_new(x, n);
        for (size_t i = 0; i < n; i++) {
            l->items[i] = from_json(x, json_array_get(j, i), depth + 1);
        }
        l->n = n;
        return jv_list(l);
    }
    case JSON_STRING:
        return jv_str(x, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        return jv_int((int64_t)json_integer_value(j));
    case JSON_REAL:
        return jv_float(json_real_value(j));
    case JSON_TRUE:
        return jv_bool(true);
    case JSON_FALSE:
        return jv_bool(false);
    case JSON_NULL:
    default:
        return jv_none();
    }
}

jinja_limits_t jinja_default_limits(void)
{
    jinja_limits_t l;
    l.max_output = (size_t)64 << 20;
    l.max_memory = (size_t)1 << 30;
    l.max_iterations = 10000000;
    l.max_depth = 400;
    return l;
}

/* Everything that may longjmp lives here; the caller owns x and cleans up. */
static int render_inner(jx_t *x, const jinja_tpl_t *tpl, const json_t *vars)
{
    if (setjmp(x->jb) != 0) {
        return -1;
    }
    jb_init(&x->main, x, true);
    x->out = &x->main;
    jscope_t *root = scope_new(x, NULL);
    if (vars != NULL) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)vars, key, val)
        {
            scope_set(x, root, js_cstr(x, key)->s, from_json(x, val, 0));
        }
    }
    exec_body(x, root, tpl->root);
    jb_putc(&x->main, '\0'); /* make sure a buffer exists */
    x->main.len--;
    return 0;
}

tdm_status_t jinja_render(const jinja_tpl_t *tpl, const json_t *vars,
                          const jinja_render_opts_t *opts, char **out, size_t *out_len,
                          tdm_error_t *err)
{
    if (tpl == NULL || out == NULL || (vars != NULL && !json_is_object(vars))) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "jinja_render: template and output are required and the variables "
                             "must be a JSON object");
    }
    jx_t *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory starting a template render");
    }
    x->lim = opts != NULL ? opts->limits : jinja_default_limits();
    if (x->lim.max_depth == 0) {
        x->lim.max_depth = jinja_default_limits().max_depth;
    }
    if (x->lim.max_output == 0) {
        x->lim.max_output = jinja_default_limits().max_output;
    }
    if (x->lim.max_iterations == 0) {
        x->lim.max_iterations = jinja_default_limits().max_iterations;
    }
    ja_init(&x->arena, x->lim.max_memory);
    if (opts != NULL && opts->has_time) {
        x->now_sec = opts->time_sec;
        x->now_usec = opts->time_usec;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        x->now_sec = (int64_t)ts.tv_sec;
        x->now_usec = (int32_t)(ts.tv_nsec / 1000);
    }
    tdm_status_t st = TDM_OK;
    if (render_inner(x, tpl, vars) != 0) {
        st = x->status != TDM_OK ? x->status : TDM_ERR_INTERNAL;
        tdm_error_set(err, st, "template error at line %u: %s", x->line, x->msg);
        free(x->main.p);
    } else {
        *out = x->main.p;
        if (out_len != NULL) {
            *out_len = x->main.len;
        }
    }
    ja_release(&x->arena);
    free(x);
    return st;
}

tdm_status_t jinja_compile(const char *src, size_t len, jinja_tpl_t **out, tdm_error_t *err)
{
    if (src == NULL || out == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "jinja_compile: source and output are required");
    }
    jinja_tpl_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory compiling the template");
    }
    ja_init(&t->arena, 0);
    tdm_status_t st = jp_parse(t, src, len, err);
    if (st != TDM_OK) {
        jinja_free(t);
        return st;
    }
    *out = t;
    return TDM_OK;
}

void jinja_free(jinja_tpl_t *tpl)
{
    if (tpl == NULL) {
        return;
    }
    ja_release(&tpl->arena);
    free(tpl);
}
