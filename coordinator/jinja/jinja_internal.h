/*
 * jinja_internal.h - the pieces of the Jinja engine shared by its source files: the
 * arena, the tagged value model, tokens, the syntax tree and the interpreter state.
 *
 * Not a public header: coordinator/jinja.h is the engine's interface and
 * coordinator/template.h the chat-template API built on it.
 *
 * Memory: a compiled template owns one arena holding its tokens-derived syntax tree; a
 * render owns another arena holding every value it creates. Nothing is freed piecemeal;
 * the arena is released when the template is freed or the render ends. Errors inside
 * the lexer, parser and interpreter unwind with longjmp to the entry point, which is
 * safe because everything they allocate lives in an arena (or is registered in the
 * state for release, like the output buffer).
 */
#ifndef TDM_JINJA_INTERNAL_H
#define TDM_JINJA_INTERNAL_H

#include "common/status.h"
#include "coordinator/jinja/jinja.h"

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------- */
/* Arena                                                                               */

typedef struct jchunk jchunk_t;

typedef struct jarena {
    jchunk_t *chunks;
    char *cur;
    size_t left;
    size_t total; /* bytes obtained from malloc so far */
    size_t limit; /* 0 = unlimited */
} jarena_t;

void ja_init(jarena_t *a, size_t limit);
void ja_release(jarena_t *a);
/* 16-byte aligned; NULL when the limit would be exceeded or malloc fails. */
void *ja_alloc(jarena_t *a, size_t n);

/* ---------------------------------------------------------------------------------- */
/* Values                                                                              */

typedef enum jv_type {
    JV_UNDEF = 0,
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,
    JV_TUPLE,
    JV_DICT,
    JV_NS,    /* namespace(): a dict whose attributes can be assigned  */
    JV_MACRO, /* a template macro (or a call block's caller)           */
    JV_FUNC,  /* a builtin function or bound method                    */
    JV_LOOP,  /* the `loop` object of a for loop                       */
} jv_type_t;

typedef struct jstr {
    size_t len;
    int64_t ncp; /* code points; -1 until computed */
    char s[];    /* NUL-terminated */
} jstr_t;

struct jlist;
struct jdict;
struct jmacro;
struct jfunc;
struct jloop;
struct jundef;

typedef struct jv {
    jv_type_t t;
    union {
        bool b;
        int64_t i;
        double f;
        jstr_t *s;
        struct jlist *l; /* JV_LIST, JV_TUPLE */
        struct jdict *d; /* JV_DICT, JV_NS    */
        struct jmacro *m;
        struct jfunc *fn;
        struct jloop *lp;
        struct jundef *u; /* may be NULL: plain undefined */
    } v;
} jv;

typedef struct jlist {
    jv *items;
    size_t n, cap;
} jlist_t;

typedef struct jdict {
    jv *keys;
    jv *vals;
    size_t n, cap;
    int32_t *index; /* open addressing over keys, built once n > 8 */
    size_t icap;
} jdict_t;

/* Why a value is undefined; formatted only if the undefined value is misused. */
typedef enum jundef_kind {
    JU_NAME,   /* 'x' is undefined                                  */
    JU_ATTR,   /* 'dict object' has no attribute 'x'                */
    JU_ITEM,   /* 'list object' has no element 3                    */
    JU_HINT,   /* a fixed message                                   */
    JU_UNSAFE, /* access to attribute 'pop' of 'list' object is unsafe */
} jundef_kind_t;

typedef struct jundef {
    jundef_kind_t kind;
    const char *name; /* NUL-terminated */
    jv key;           /* JU_ITEM */
    jv_type_t obj;    /* the object looked into */
} jundef_t;

typedef struct jx jx_t;
typedef struct jnode jnode_t;
typedef struct jscope jscope_t;

typedef struct jargs {
    const jv *pos;
    size_t npos;
    const char *const *kwn;
    const jv *kwv;
    size_t nkw;
} jargs_t;

typedef jv (*jbuiltin_fn)(jx_t *x, jv self, jargs_t *a);

typedef struct jfunc {
    const char *name;
    jbuiltin_fn fn;
    jv self;
} jfunc_t;

typedef struct jmacro {
    const jnode_t *def; /* N_MACRO, or N_CALLBLOCK for a caller */
    jscope_t *closure;
    const char *name;
    jv caller; /* the caller passed to a macro invoked by a call block */
} jmacro_t;

typedef struct jloop {
    const jv *items;
    size_t n;
    size_t i;
    int depth;
} jloop_t;

static inline jv jv_undef(void)
{
    jv v;
    v.t = JV_UNDEF;
    v.v.u = NULL;
    return v;
}
static inline jv jv_none(void)
{
    jv v;
    v.t = JV_NONE;
    v.v.i = 0;
    return v;
}
static inline jv jv_bool(bool b)
{
    jv v;
    v.t = JV_BOOL;
    v.v.i = 0;
    v.v.b = b;
    return v;
}
static inline jv jv_int(int64_t i)
{
    jv v;
    v.t = JV_INT;
    v.v.i = i;
    return v;
}
static inline jv jv_float(double f)
{
    jv v;
    v.t = JV_FLOAT;
    v.v.f = f;
    return v;
}
static inline jv jv_strv(jstr_t *s)
{
    jv v;
    v.t = JV_STR;
    v.v.s = s;
    return v;
}

/* ---------------------------------------------------------------------------------- */
/* Byte buffers                                                                        */

typedef struct jbuf {
    char *p;
    size_t len, cap;
    jx_t *x;    /* allocation and limits come from here */
    bool heap;  /* malloc/realloc (the render output) instead of the arena */
    size_t max; /* 0 = none */
} jbuf_t;

void jb_init(jbuf_t *b, jx_t *x, bool heap);
void jb_put(jbuf_t *b, const char *s, size_t n);
void jb_puts(jbuf_t *b, const char *s);
void jb_putc(jbuf_t *b, char c);
void jb_printf(jbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
jstr_t *jb_str(jbuf_t *b); /* copies the content into an arena string */

/* ---------------------------------------------------------------------------------- */
/* Tokens and syntax tree                                                              */

typedef enum jtok_type {
    T_EOF = 0,
    T_DATA,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    /* operators */
    T_ADD,
    T_SUB,
    T_MUL,
    T_DIV,
    T_FLOORDIV,
    T_MOD,
    T_POW,
    T_TILDE,
    T_PIPE,
    T_COMMA,
    T_DOT,
    T_COLON,
    T_SEMICOLON,
    T_ASSIGN,
    T_LPAREN,
    T_RPAREN,
    T_LBRACKET,
    T_RBRACKET,
    T_LBRACE,
    T_RBRACE,
    T_EQ,
    T_NE,
    T_LT,
    T_LTEQ,
    T_GT,
    T_GTEQ,
} jtok_type_t;

typedef struct jtok {
    jtok_type_t type;
    uint32_t line, col;
    const char *s; /* NAME / STRING / DATA: arena copy, NUL-terminated */
    size_t len;
    int64_t i;
    double f;
} jtok_t;

typedef enum jnode_kind {
    /* statements */
    N_BODY,        /* list = statements                                          */
    N_TEXT,        /* s = literal output                                         */
    N_OUTPUT,      /* a = expression                                             */
    N_IF,          /* a = test, b = body, c = else (N_BODY or nested N_IF)       */
    N_FOR,         /* a = target, b = iter, c = filter, d = body, e = else       */
    N_SET,         /* a = target, b = value                                      */
    N_SETBLOCK,    /* a = target, b = body, c = filter chain (N_FILTER on NULL) */
    N_MACRO,       /* s = name, names = params, list = defaults (NULL entries), b = body */
    N_CALLBLOCK,   /* a = call expr, names/list = caller params, b = body      */
    N_FILTERBLOCK, /* a = filter chain applied to NULL, b = body             */
    N_WITH,        /* list = targets, list2 = values, b = body               */
    N_BREAK,
    N_CONTINUE,
    /* expressions */
    N_CONST,   /* value                                                       */
    N_NAME,    /* s                                                           */
    N_NSREF,   /* s = namespace var, s2 = attribute (assignment target only) */
    N_GETATTR, /* a = object, s = attribute                                  */
    N_GETITEM, /* a = object, b = key                                        */
    N_SLICE,   /* a = object, b/c/d = start/stop/step (each may be NULL)     */
    N_CALL,    /* a = callee, list = args, names/list2 = kwargs              */
    N_FILTER,  /* a = operand (NULL in blocks), s = name, list, names/list2  */
    N_TEST,    /* a = operand, s = name, list, names/list2, op = negated     */
    N_BINOP,   /* op = token type, a, b                                      */
    N_NEG,
    N_POS,
    N_NOT,
    N_AND,
    N_OR,
    N_CONCAT,  /* list                                                       */
    N_COMPARE, /* a = first, list = operands, ops = operators                */
    N_COND,    /* a = test, b = then, c = else (may be NULL)                 */
    N_LIST,
    N_TUPLE,
    N_DICT, /* list = keys, list2 = values                                   */
} jnode_kind_t;

/* compare operators beyond the token types */
#define JOP_IN    1000
#define JOP_NOTIN 1001

typedef jv (*jfilter_fn)(jx_t *x, jv value, jargs_t *a);
typedef bool (*jtest_fn)(jx_t *x, jv value, jargs_t *a);

struct jnode {
    jnode_kind_t kind;
    int op;
    uint32_t line, col;
    jnode_t *a, *b, *c, *d, *e;
    jnode_t **list;
    size_t nlist;
    jnode_t **list2;
    size_t nlist2;
    const char **names;
    size_t nnames;
    int *ops;
    const char *s, *s2;
    size_t slen;
    uint32_t hash; /* N_NAME: hash of s */
    jv value;
    jfilter_fn filter; /* N_FILTER: resolved at compile time, NULL if unknown */
    jtest_fn test;     /* N_TEST                                           */
};

struct jinja_tpl {
    jarena_t arena;
    jnode_t *root;
};

/* ---------------------------------------------------------------------------------- */
/* Interpreter state                                                                   */

struct jscope {
    jscope_t *parent;
    struct jvar *vars;
    size_t n, cap;
};

struct jx {
    jmp_buf jb;
    jarena_t arena;
    tdm_status_t status;
    char msg[TDM_ERROR_MSG_MAX];
    uint32_t line; /* line of the statement being executed (for errors) */
    jbuf_t *out;   /* where output goes now */
    jbuf_t main;   /* the render's output (heap) */
    jscope_t *globals;
    jinja_limits_t lim;
    uint64_t iterations;
    uint32_t depth;
    int64_t now_sec;
    int32_t now_usec;
    int loop_ctl; /* 0, 1 = break, 2 = continue */
    int loop_nesting;
};

/* Fails the render: records the message and longjmps to the entry. */
void jx_fail(jx_t *x, tdm_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
void *jx_alloc(jx_t *x, size_t n);

/* strings */
jstr_t *js_new(jx_t *x, const char *s, size_t n);
jstr_t *js_cstr(jx_t *x, const char *s);
jv jv_str(jx_t *x, const char *s, size_t n);
jv jv_cstr(jx_t *x, const char *s);
int64_t js_ncp(jstr_t *s); /* code point count (cached) */

/* UTF-8 helpers (invalid bytes are read as U+FFFD-free single "code points" = the byte) */
uint32_t ju_decode(const char *s, size_t n, size_t *adv);
size_t ju_encode(uint32_t cp, char *out);
size_t ju_offset(const char *s, size_t len, int64_t cp_index); /* byte offset of code point */
bool ju_isspace(uint32_t cp);                                  /* Python str.isspace */

/* containers */
jlist_t *jl_new(jx_t *x, size_t cap);
void jl_push(jx_t *x, jlist_t *l, jv v);
jv jv_list(jlist_t *l);
jv jv_tuple(jlist_t *l);
jdict_t *jd_new(jx_t *x, size_t cap);
void jd_set(jx_t *x, jdict_t *d, jv key, jv val);
bool jd_get(const jdict_t *d, jv key, jv *out);
bool jd_get_str(const jdict_t *d, const char *key, size_t klen, jv *out);
jv jv_dict(jdict_t *d);

/* Python semantics */
bool jv_truthy(jv v);
bool jv_equal(jv a, jv b);
/* -1/0/1; fails the render for types Python cannot order */
int jv_compare(jx_t *x, jv a, jv b);
const char *jv_type_name(jv_type_t t);        /* "dict", "list", "str", ... */
void jv_write_str(jx_t *x, jbuf_t *b, jv v);  /* Python str()  */
void jv_write_repr(jx_t *x, jbuf_t *b, jv v); /* Python repr() */
jstr_t *jv_to_str(jx_t *x, jv v);
void jv_write_float(jbuf_t *b, double f); /* Python float repr */

typedef struct jjson_opts {
    bool ensure_ascii;
    bool indent_on;
    const char *indent; /* indentation unit */
    size_t indent_len;
    const char *item_sep, *key_sep;
    size_t item_sep_len, key_sep_len;
    bool sort_keys;
} jjson_opts_t;
void jv_write_json(jx_t *x, jbuf_t *b, jv v, const jjson_opts_t *o, int level);

/* undefined with a reason */
jv jv_undef_name(jx_t *x, const char *name);
jv jv_undef_attr(jx_t *x, jv obj, const char *name);
jv jv_undef_item(jx_t *x, jv obj, jv key);
jv jv_undef_hint(jx_t *x, const char *msg);
jv jv_undef_unsafe(jx_t *x, jv obj, const char *name);
/* Fails the render with the undefined value's message. */
void jv_undef_fail(jx_t *x, jv u) __attribute__((noreturn));

/* iteration: materializes any iterable into an item array (strings -> characters,
 * dicts -> keys, undefined -> empty); fails for non-iterables. */
jlist_t *jv_iter_list(jx_t *x, jv v);

/* builtins (jinja_builtins.c) */
jfilter_fn jb_find_filter(const char *name);
jtest_fn jb_find_test(const char *name);
jv jb_find_global(const char *name);
/* attribute lookup for builtin types: methods of str / list / dict / loop / namespace */
bool jb_getattr(jx_t *x, jv obj, const char *name, jv *out);

/* helpers for builtins */
jv jarg(const jargs_t *a, size_t pos, const char *name, jv dflt);
void jargs_check(jx_t *x, const jargs_t *a, const char *fname, size_t max_pos,
                 const char *const *names);
jv jx_call_value(jx_t *x, jv callee, jargs_t *a); /* macros and builtins (jinja_eval.c) */
jv jx_getattr(jx_t *x, jv obj, const char *name);
jv jx_getitem(jx_t *x, jv obj, jv key);
jv jx_str_mod(jx_t *x, jstr_t *fmt, jv args); /* Python's `str % args` */

/* lexer/parser (jinja_parse.c): fills tpl->root or the error */
tdm_status_t jp_parse(jinja_tpl_t *tpl, const char *src, size_t len, tdm_error_t *err);

#endif
