/*
 * jinja_parse.c - the Jinja lexer and parser: template source to syntax tree.
 *
 * The lexer reproduces jinja2's with trim_blocks and lstrip_blocks on: newlines are
 * normalised to "\n" and one trailing newline dropped; `{%-`/`-%}` strip whitespace;
 * `%}` and `#}` eat one following newline; spaces before a `{%` or `{#` that starts a
 * line are removed unless the tag opens with `+`. Inside tags, end delimiters are only
 * recognised while brackets are balanced, as jinja2 does. The parser follows jinja2's
 * grammar and operator precedence (`~` binds tighter than `+`, `**` is left
 * associative, filters bind to the unary operand).
 *
 * Errors carry line and column (1-based) and a caret under the offending source line.
 */
#include "coordinator/jinja/jinja_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JP_MAX_DEPTH 200 /* expression / statement nesting the parser accepts */

typedef struct jp {
    jmp_buf jb;
    jarena_t *arena;
    const char *src; /* normalised source */
    size_t len;
    tdm_status_t status;
    char msg[TDM_ERROR_MSG_MAX];
    /* lexer */
    jtok_t *toks;
    size_t ntok, cap;
    size_t scan_off, scan_line, scan_line_start; /* incremental line tracking */
    size_t col_off, col_line_start; /* incremental column: col_off's column is col_cp */
    uint32_t col_cp;
    /* parser */
    size_t pos;
    int depth;
    int soft;       /* > 0 inside if / conditional expressions (unknown filters deferred) */
    int loop_depth; /* for bodies enclosing the current statement (break/continue) */
} jp_t;

static void line_col(jp_t *p, size_t off, uint32_t *line, uint32_t *col)
{
    if (off < p->scan_off) {
        p->scan_off = 0;
        p->scan_line = 1;
        p->scan_line_start = 0;
    }
    while (p->scan_off < off && p->scan_off < p->len) {
        if (p->src[p->scan_off] == '\n') {
            p->scan_line++;
            p->scan_line_start = p->scan_off + 1;
        }
        p->scan_off++;
    }
    *line = (uint32_t)p->scan_line;
    /* column in code points, counted on from the last token's when it is on the same line
     * (tokens come in order): counting from the line start every time was quadratic in the
     * length of a line, and minified templates are one long line */
    if (p->col_line_start != p->scan_line_start || p->col_off > off || p->col_cp == 0) {
        p->col_line_start = p->scan_line_start;
        p->col_off = p->scan_line_start;
        p->col_cp = 1;
    }
    while (p->col_off < off && p->col_off < p->len) {
        size_t adv;
        ju_decode(p->src + p->col_off, p->len - p->col_off, &adv);
        p->col_off += adv;
        p->col_cp++;
    }
    *col = p->col_cp;
}

static void jp_fail_at(jp_t *p, tdm_status_t st, uint32_t line, uint32_t col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6), noreturn));

static void jp_fail_at(jp_t *p, tdm_status_t st, uint32_t line, uint32_t col, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    /* the source line, cut to at most 100 bytes around the column */
    size_t ls = 0;
    uint32_t l = 1;
    for (size_t i = 0; i < p->len && l < line; i++) {
        if (p->src[i] == '\n') {
            l++;
            ls = i + 1;
        }
    }
    size_t le = ls;
    while (le < p->len && p->src[le] != '\n') {
        le++;
    }
    size_t colb = ju_offset(p->src + ls, le - ls, col > 0 ? col - 1 : 0);
    size_t from = 0;
    if (colb > 60) {
        from = colb - 60;
        while (from < colb && ((unsigned char)p->src[ls + from] & 0xC0) == 0x80) {
            from++;
        }
    }
    size_t to = le - ls;
    if (to > from + 100) {
        to = from + 100;
        while (to > from && ((unsigned char)p->src[ls + to] & 0xC0) == 0x80) {
            to--;
        }
    }
    int caret = 0;
    for (size_t i = from; i < colb && i < to;) {
        size_t adv;
        ju_decode(p->src + ls + i, to - i, &adv);
        i += adv;
        caret++;
    }
    p->status = st;
    snprintf(p->msg, sizeof(p->msg), "line %u, column %u: %s\n  %.*s\n  %*s^", line, col, what,
             (int)(to - from), p->src + ls + from, caret, "");
    longjmp(p->jb, 1);
}

static void *jp_alloc(jp_t *p, size_t n)
{
    void *r = ja_alloc(p->arena, n);
    if (r == NULL) {
        p->status = TDM_ERR_NO_MEMORY;
        snprintf(p->msg, sizeof(p->msg), "out of memory compiling the template");
        longjmp(p->jb, 1);
    }
    memset(r, 0, n);
    return r;
}

/* A string constant in the template arena; its code point count is filled in now so
 * that renders (possibly concurrent) never write to it. */
static jstr_t *const_str(jp_t *p, const char *s, size_t n)
{
    jstr_t *r = ja_alloc(p->arena, sizeof(jstr_t) + n + 1);
    if (r == NULL) {
        p->status = TDM_ERR_NO_MEMORY;
        snprintf(p->msg, sizeof(p->msg), "out of memory compiling the template");
        longjmp(p->jb, 1);
    }
    r->len = n;
    memcpy(r->s, s, n);
    r->s[n] = '\0';
    int64_t c = 0;
    for (size_t i = 0; i < n;) {
        size_t adv;
        ju_decode(s + i, n - i, &adv);
        i += adv;
        c++;
    }
    r->ncp = c;
    return r;
}

static char *jp_strdup(jp_t *p, const char *s, size_t n)
{
    char *r = jp_alloc(p, n + 1);
    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

/* ---------------------------------------------------------------------------------- */
/* Lexer                                                                               */

static jtok_t *push_tok(jp_t *p, jtok_type_t type, size_t off)
{
    if (p->ntok == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        jtok_t *t = jp_alloc(p, cap * sizeof(jtok_t));
        if (p->ntok) {
            memcpy(t, p->toks, p->ntok * sizeof(jtok_t));
        }
        p->toks = t;
        p->cap = cap;
    }
    jtok_t *t = &p->toks[p->ntok++];
    memset(t, 0, sizeof(*t));
    t->type = type;
    line_col(p, off, &t->line, &t->col);
    return t;
}

static void lex_fail(jp_t *p, size_t off, const char *fmt, const char *arg)
    __attribute__((noreturn, format(printf, 3, 0)));

static void lex_fail(jp_t *p, size_t off, const char *fmt, const char *arg)
{
    uint32_t line, col;
    line_col(p, off, &line, &col);
    jp_fail_at(p, TDM_ERR_FORMAT, line, col, fmt, arg);
}

/* whitespace (Python str.isspace) starting at i; returns the end */
static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len) {
        size_t adv;
        uint32_t c = ju_decode(s + i, len - i, &adv);
        if (!ju_isspace(c)) {
            break;
        }
        i += adv;
    }
    return i;
}

static bool all_ws(const char *s, size_t n)
{
    return skip_ws(s, n, 0) == n;
}

/* rstrip of Python whitespace: returns the new length */
static size_t rstrip_len(const char *s, size_t n)
{
    /* walk forward remembering the end of the last non-space */
    size_t i = 0, keep = 0;
    while (i < n) {
        size_t adv;
        uint32_t c = ju_decode(s + i, n - i, &adv);
        i += adv;
        if (!ju_isspace(c)) {
            keep = i;
        }
    }
    return keep;
}

/* Emits the data between two tags after applying the opening tag's whitespace rules. */
static void emit_data(jp_t *p, size_t start, size_t end, char sign, bool lstrip_ok,
                      bool line_starting)
{
    const char *text = p->src + start;
    size_t n = end - start;
    if (sign == '-') {
        n = rstrip_len(text, n);
    } else if (sign != '+' && lstrip_ok) {
        size_t l_pos = 0;
        for (size_t i = n; i > 0; i--) {
            if (text[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        }
        if ((l_pos > 0 || line_starting) && l_pos < n && all_ws(text + l_pos, n - l_pos)) {
            n = l_pos;
        }
    }
    if (n > 0) {
        jtok_t *t = push_tok(p, T_DATA, start);
        t->s = jp_strdup(p, text, n);
        t->len = n;
    }
}

static int hexval(char c)
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

/* Decodes a string literal body as Python's unicode-escape codec does after jinja2's
 * backslashreplace step. */
static void lex_string_body(jp_t *p, size_t off, const char *s, size_t n, jtok_t *t)
{
    char *out = jp_alloc(p, n * 4 + 1);
    size_t o = 0, i = 0;
    while (i < n) {
        if (s[i] != '\\') {
            out[o++] = s[i++];
            continue;
        }
        if (i + 1 >= n) {
            lex_fail(p, off, "%s", "\\ at end of string");
        }
        char c = s[i + 1];
        i += 2;
        switch (c) {
        case '\n':
            break; /* line continuation */
        case '\\':
            out[o++] = '\\';
            break;
        case '\'':
            out[o++] = '\'';
            break;
        case '"':
            out[o++] = '"';
            break;
        case 'a':
            out[o++] = '\a';
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'v':
            out[o++] = '\v';
            break;
        case 'x':
        case 'u':
        case 'U': {
            int nd = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int k = 0; k < nd; k++) {
                int h = i + (size_t)k < n ? hexval(s[i + k]) : -1;
                if (h < 0) {
                    lex_fail(p, off, "string literal: truncated \\%s escape",
                             c == 'x'   ? "xXX"
                             : c == 'u' ? "uXXXX"
                                        : "UXXXXXXXX");
                }
                cp = cp * 16 + (uint32_t)h;
            }
            i += (size_t)nd;
            if (cp > 0x10FFFF) {
                lex_fail(p, off, "%s", "string literal: illegal Unicode character");
            }
            o += ju_encode(cp, out + o);
            break;
        }
        case 'N':
            lex_fail(p, off, "%s", "string literal: \\N{...} escapes are not supported");
        default:
            if (c >= '0' && c <= '7') {
                uint32_t cp = (uint32_t)(c - '0');
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++) {
                    cp = cp * 8 + (uint32_t)(s[i++] - '0');
                }
                o += ju_encode(cp, out + o);
            } else if ((unsigned char)c >= 0x80) {
                /* backslash before a non-ASCII character: Python sees "\\xe9" etc. */
                size_t adv;
                uint32_t cp = ju_decode(s + i - 1, n - (i - 1), &adv);
                i += adv - 1;
                char tmp[16];
                int k = cp < 0x100     ? snprintf(tmp, sizeof(tmp), "\\x%02x", cp)
                        : cp < 0x10000 ? snprintf(tmp, sizeof(tmp), "\\u%04x", cp)
                                       : snprintf(tmp, sizeof(tmp), "\\U%08x", cp);
                memcpy(out + o, tmp, (size_t)k);
                o += (size_t)k;
            } else {
                out[o++] = '\\';
                out[o++] = c;
            }
        }
    }
    out[o] = '\0';
    t->s = out;
    t->len = o;
}

static bool is_name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* digits with single underscores between them; returns end or start if none */
static size_t scan_digits(const char *s, size_t len, size_t i, int base)
{
    size_t start = i;
    while (i < len) {
        int h = hexval(s[i]);
        if (h >= 0 && h < base && !(base <= 10 && !is_digit(s[i]))) {
            i++;
        } else if (s[i] == '_' && i > start && i + 1 < len && hexval(s[i + 1]) >= 0 &&
                   hexval(s[i + 1]) < base) {
            i++;
        } else {
            break;
        }
    }
    return i;
}

static size_t lex_number(jp_t *p, size_t i, bool after_dot)
{
    const char *s = p->src;
    size_t len = p->len;
    size_t start = i;
    if (s[i] == '0' && i + 1 < len && !after_dot) {
        char k = s[i + 1];
        int base = (k == 'x' || k == 'X')   ? 16
                   : (k == 'o' || k == 'O') ? 8
                   : (k == 'b' || k == 'B') ? 2
                                            : 0;
        if (base) {
            size_t e = scan_digits(s, len, i + 2, base);
            if (e > i + 2) {
                uint64_t v = 0;
                for (size_t k2 = i + 2; k2 < e; k2++) {
                    if (s[k2] == '_') {
                        continue;
                    }
                    if (v > (UINT64_MAX >> 4)) {
                        lex_fail(p, start, "%s", "integer literal too large");
                    }
                    v = v * (uint64_t)base + (uint64_t)hexval(s[k2]);
                }
                if (v > INT64_MAX) {
                    lex_fail(p, start, "%s", "integer literal too large");
                }
                jtok_t *t = push_tok(p, T_INT, start);
                t->i = (int64_t)v;
                return e;
            }
        }
    }
    size_t e = scan_digits(s, len, i, 10);
    bool is_float = false;
    if (!after_dot) {
        size_t f = e;
        if (f + 1 < len && s[f] == '.' && is_digit(s[f + 1])) {
            f = scan_digits(s, len, f + 1, 10);
            is_float = true;
        }
        if (f < len && (s[f] == 'e' || s[f] == 'E')) {
            size_t g = f + 1;
            if (g < len && (s[g] == '+' || s[g] == '-')) {
                g++;
            }
            if (g < len && is_digit(s[g])) {
                f = scan_digits(s, len, g, 10);
                is_float = true;
            }
        }
        if (is_float) {
            e = f;
        }
    }
    char buf[128];
    size_t nb = 0;
    for (size_t k = start; k < e && nb + 1 < sizeof(buf); k++) {
        if (s[k] != '_') {
            buf[nb++] = s[k];
        }
    }
    buf[nb] = '\0';
    if (is_float) {
        jtok_t *t = push_tok(p, T_FLOAT, start);
        t->f = strtod(buf, NULL);
    } else {
        if (nb > 19 || (nb == 19 && strcmp(buf, "9223372036854775807") > 0)) {
            lex_fail(p, start, "%s", "integer literal too large");
        }
        jtok_t *t = push_tok(p, T_INT, start);
        t->i = strtoll(buf, NULL, 10);
    }
    return e;
}

/* Lexes the inside of a {{ }} or {% %} tag starting at i. Returns the offset after the
 * end delimiter (and what it consumed); *ends_nl says whether that ended in "\n". */
static size_t lex_tag(jp_t *p, size_t i, bool block, bool *ends_nl)
{
    const char *s = p->src;
    size_t len = p->len;
    char stack[256];
    size_t sp = 0;
    for (;;) {
        i = skip_ws(s, len, i);
        if (i >= len) {
            lex_fail(p, i, "unexpected end of template, expected '%s'", block ? "%}" : "}}");
        }
        if (sp == 0) {
            char e1 = block ? '%' : '}';
            if (s[i] == '-' && i + 2 < len && s[i + 1] == e1 && s[i + 2] == '}') {
                size_t e = i + 3;
                size_t w = skip_ws(s, len, e);
                push_tok(p, block ? T_BLOCK_END : T_VAR_END, i);
                *ends_nl = w > e && s[w - 1] == '\n';
                return w;
            }
            if (block && s[i] == '+' && i + 2 < len && s[i + 1] == '%' && s[i + 2] == '}') {
                push_tok(p, T_BLOCK_END, i);
                *ends_nl = false;
                return i + 3;
            }
            if (s[i] == e1 && i + 1 < len && s[i + 1] == '}') {
                push_tok(p, block ? T_BLOCK_END : T_VAR_END, i);
                size_t e = i + 2;
                if (block && e < len && s[e] == '\n') {
                    *ends_nl = true;
                    return e + 1; /* trim_blocks */
                }
                *ends_nl = false;
                return e;
            }
        }
        char c = s[i];
        if (is_name_start(c)) {
            size_t e = i + 1;
            while (e < len && (is_name_start(s[e]) || is_digit(s[e]))) {
                e++;
            }
            jtok_t *t = push_tok(p, T_NAME, i);
            t->s = jp_strdup(p, s + i, e - i);
            t->len = e - i;
            i = e;
            continue;
        }
        if (is_digit(c)) {
            bool after_dot = p->ntok > 0 && p->toks[p->ntok - 1].type == T_DOT;
            i = lex_number(p, i, after_dot);
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t e = i + 1;
            while (e < len && s[e] != c) {
                if (s[e] == '\\' && e + 1 < len) {
                    e++;
                }
                e++;
            }
            if (e >= len) {
                lex_fail(p, i, "%s", "unterminated string literal");
            }
            jtok_t *t = push_tok(p, T_STRING, i);
            lex_string_body(p, i, s + i + 1, e - i - 1, t);
            i = e + 1;
            continue;
        }
        jtok_type_t op;
        size_t w = 1;
        char n1 = i + 1 < len ? s[i + 1] : '\0';
        switch (c) {
        case '+':
            op = T_ADD;
            break;
        case '-':
            op = T_SUB;
            break;
        case '*':
            op = n1 == '*' ? T_POW : T_MUL;
            w = n1 == '*' ? 2 : 1;
            break;
        case '/':
            op = n1 == '/' ? T_FLOORDIV : T_DIV;
            w = n1 == '/' ? 2 : 1;
            break;
        case '%':
            op = T_MOD;
            break;
        case '~':
            op = T_TILDE;
            break;
        case '|':
            op = T_PIPE;
            break;
        case ',':
            op = T_COMMA;
            break;
        case '.':
            op = T_DOT;
            break;
        case ':':
            op = T_COLON;
            break;
        case ';':
            op = T_SEMICOLON;
            break;
        case '=':
            op = n1 == '=' ? T_EQ : T_ASSIGN;
            w = n1 == '=' ? 2 : 1;
            break;
        case '!':
            if (n1 != '=') {
                lex_fail(p, i, "%s", "unexpected char '!'");
            }
            op = T_NE;
            w = 2;
            break;
        case '<':
            op = n1 == '=' ? T_LTEQ : T_LT;
            w = n1 == '=' ? 2 : 1;
            break;
        case '>':
            op = n1 == '=' ? T_GTEQ : T_GT;
            w = n1 == '=' ? 2 : 1;
            break;
        case '(':
        case '[':
        case '{':
            op = c == '(' ? T_LPAREN : c == '[' ? T_LBRACKET : T_LBRACE;
            if (sp >= sizeof(stack)) {
                lex_fail(p, i, "%s", "brackets nested too deeply");
            }
            stack[sp++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            break;
        case ')':
        case ']':
        case '}':
            if (sp == 0) {
                char tmp[2] = {c, 0};
                lex_fail(p, i, "unexpected '%s'", tmp);
            }
            if (stack[sp - 1] != c) {
                char tmp[4] = {'\'', stack[sp - 1], '\'', 0};
                lex_fail(p, i, "unexpected closing bracket, expected %s", tmp);
            }
            sp--;
            op = c == ')' ? T_RPAREN : c == ']' ? T_RBRACKET : T_RBRACE;
            break;
        default: {
            char tmp[8] = {0};
            size_t adv;
            ju_decode(s + i, len - i, &adv);
            memcpy(tmp, s + i, adv < 7 ? adv : 7);
            lex_fail(p, i, "unexpected char '%s'", tmp);
        }
        }
        push_tok(p, op, i);
        i += w;
    }
}

/* Matches "{%[-+]?\s*WORD\s*" at i; returns the offset after it or 0. *sign gets -, + or 0 */
static size_t match_block_word(jp_t *p, size_t i, const char *word, char *sign)
{
    const char *s = p->src;
    size_t len = p->len;
    if (i + 2 > len || s[i] != '{' || s[i + 1] != '%') {
        return 0;
    }
    size_t j = i + 2;
    *sign = 0;
    if (j < len && (s[j] == '-' || s[j] == '+')) {
        *sign = s[j];
        j++;
    }
    j = skip_ws(s, len, j);
    size_t wl = strlen(word);
    if (j + wl > len || memcmp(s + j, word, wl) != 0) {
        return 0;
    }
    j += wl;
    if (j < len && (is_name_start(s[j]) || is_digit(s[j]))) {
        return 0;
    }
    return skip_ws(s, len, j);
}

static void lex(jp_t *p)
{
    const char *s = p->src;
    size_t len = p->len;
    size_t i = 0;
    bool line_starting = true;
    while (i < len) {
        /* next tag start */
        size_t q = i;
        while (q + 1 < len &&
               !(s[q] == '{' && (s[q + 1] == '{' || s[q + 1] == '%' || s[q + 1] == '#'))) {
            q++;
        }
        if (q + 1 >= len) {
            emit_data(p, i, len, 0, false, line_starting);
            break;
        }
        char kind = s[q + 1];
        char sign = (q + 2 < len && (s[q + 2] == '-' || s[q + 2] == '+')) ? s[q + 2] : 0;
        bool ends_nl = false;
        if (kind == '%') {
            char rsign;
            size_t r = match_block_word(p, q, "raw", &rsign);
            if (r != 0) {
                size_t after;
                if (r + 2 < len && s[r] == '-' && s[r + 1] == '%' && s[r + 2] == '}') {
                    after = skip_ws(s, len, r + 3);
                } else if (r + 1 < len && s[r] == '%' && s[r + 1] == '}') {
                    after = r + 2;
                } else {
                    lex_fail(p, r, "%s", "expected '%}' after 'raw'");
                }
                emit_data(p, i, q, sign, true, line_starting);
                bool raw_line_start = after > 0 && s[after - 1] == '\n';
                /* find {% endraw %} */
                size_t k = after;
                for (;;) {
                    while (k + 1 < len && !(s[k] == '{' && s[k + 1] == '%')) {
                        k++;
                    }
                    if (k + 1 >= len) {
                        lex_fail(p, q, "%s", "missing end of raw directive");
                    }
                    char esign;
                    size_t e = match_block_word(p, k, "endraw", &esign);
                    if (e == 0) {
                        k++;
                        continue;
                    }
                    size_t end;
                    if (e + 2 < len && s[e] == '+' && s[e + 1] == '%' && s[e + 2] == '}') {
                        end = e + 3;
                    } else if (e + 2 < len && s[e] == '-' && s[e + 1] == '%' && s[e + 2] == '}') {
                        end = skip_ws(s, len, e + 3);
                    } else if (e + 1 < len && s[e] == '%' && s[e + 1] == '}') {
                        end = e + 2;
                        if (end < len && s[end] == '\n') {
                            end++;
                        }
                    } else {
                        k++;
                        continue;
                    }
                    emit_data(p, after, k, esign, true, raw_line_start);
                    line_starting = end > 0 && s[end - 1] == '\n';
                    i = end;
                    break;
                }
                continue;
            }
        }
        emit_data(p, i, q, sign, kind != '{', line_starting);
        size_t body = q + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t k = body;
            while (k + 1 < len && !(s[k] == '#' && s[k + 1] == '}')) {
                k++;
            }
            if (k + 1 >= len) {
                lex_fail(p, q, "%s", "missing end of comment tag");
            }
            size_t end = k + 2;
            char esign = k > body ? s[k - 1] : 0;
            if (esign == '-') {
                end = skip_ws(s, len, end);
            } else if (esign != '+' && end < len && s[end] == '\n') {
                end++;
            }
            line_starting = end > 0 && s[end - 1] == '\n' && end > k + 2;
            i = end;
            continue;
        }
        push_tok(p, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, q);
        i = lex_tag(p, body, kind == '%', &ends_nl);
        line_starting = ends_nl;
    }
    push_tok(p, T_EOF, len);
}

/* ---------------------------------------------------------------------------------- */
/* Parser                                                                              */

static jtok_t *cur(jp_t *p)
{
    return &p->toks[p->pos];
}

static jtok_t *peek(jp_t *p, size_t k)
{
    size_t i = p->pos + k;
    return &p->toks[i < p->ntok ? i : p->ntok - 1];
}

static jtok_t *advance(jp_t *p)
{
    jtok_t *t = &p->toks[p->pos];
    if (p->pos + 1 < p->ntok) {
        p->pos++;
    }
    return t;
}

static const char *tok_desc(const jtok_t *t, char *buf, size_t n)
{
    static const char *const names[] = {
        [T_EOF] = "end of template",
        [T_DATA] = "template data",
        [T_VAR_BEGIN] = "begin of print statement",
        [T_VAR_END] = "end of print statement",
        [T_BLOCK_BEGIN] = "begin of statement block",
        [T_BLOCK_END] = "end of statement block",
        [T_ADD] = "+",
        [T_SUB] = "-",
        [T_MUL] = "*",
        [T_DIV] = "/",
        [T_FLOORDIV] = "//",
        [T_MOD] = "%",
        [T_POW] = "**",
        [T_TILDE] = "~",
        [T_PIPE] = "|",
        [T_COMMA] = ",",
        [T_DOT] = ".",
        [T_COLON] = ":",
        [T_SEMICOLON] = ";",
        [T_ASSIGN] = "=",
        [T_LPAREN] = "(",
        [T_RPAREN] = ")",
        [T_LBRACKET] = "[",
        [T_RBRACKET] = "]",
        [T_LBRACE] = "{",
        [T_RBRACE] = "}",
        [T_EQ] = "==",
        [T_NE] = "!=",
        [T_LT] = "<",
        [T_LTEQ] = "<=",
        [T_GT] = ">",
        [T_GTEQ] = ">=",
    };
    switch (t->type) {
    case T_NAME:
        snprintf(buf, n, "%.60s", t->s);
        return buf;
    case T_STRING:
        return "string";
    case T_INT:
        return "integer";
    case T_FLOAT:
        return "float";
    default:
        return names[t->type] ? names[t->type] : "token";
    }
}

static void fail_tok(jp_t *p, const jtok_t *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

static void fail_tok(jp_t *p, const jtok_t *t, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    jp_fail_at(p, TDM_ERR_FORMAT, t->line, t->col, "%s", what);
}

static bool is_name(const jtok_t *t, const char *name)
{
    return t->type == T_NAME && strcmp(t->s, name) == 0;
}

static void expect(jp_t *p, jtok_type_t type, const char *what)
{
    jtok_t *t = cur(p);
    if (t->type != type) {
        char b[80];
        fail_tok(p, t, "expected %s, got '%s'", what, tok_desc(t, b, sizeof(b)));
    }
    advance(p);
}

static jtok_t *expect_name(jp_t *p)
{
    jtok_t *t = cur(p);
    if (t->type != T_NAME) {
        char b[80];
        fail_tok(p, t, "expected a name, got '%s'", tok_desc(t, b, sizeof(b)));
    }
    return advance(p);
}

static jnode_t *mk(jp_t *p, jnode_kind_t kind, const jtok_t *at)
{
    jnode_t *n = jp_alloc(p, sizeof(*n));
    n->kind = kind;
    n->line = at->line;
    n->col = at->col;
    return n;
}

typedef struct nvec {
    jnode_t **v;
    size_t n, cap;
} nvec_t;

static void nv_push(jp_t *p, nvec_t *v, jnode_t *n)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        jnode_t **a = jp_alloc(p, cap * sizeof(*a));
        if (v->n) {
            memcpy(a, v->v, v->n * sizeof(*a));
        }
        v->v = a;
        v->cap = cap;
    }
    v->v[v->n++] = n;
}

typedef struct svec {
    const char **v;
    size_t n, cap;
} svec_t;

static void sv_push(jp_t *p, svec_t *v, const char *s)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        const char **a = jp_alloc(p, cap * sizeof(*a));
        if (v->n) {
            memcpy(a, v->v, v->n * sizeof(*a));
        }
        v->v = a;
        v->cap = cap;
    }
    v->v[v->n++] = s;
}

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

static void enter(jp_t *p)
{
    if (++p->depth > JP_MAX_DEPTH) {
        fail_tok(p, cur(p), "template nested too deeply (more than %d levels)", JP_MAX_DEPTH);
    }
}

static jnode_t *parse_expression(jp_t *p, bool with_condexpr);
static jnode_t *parse_tuple(jp_t *p, bool simplified, bool with_condexpr, const char *extra_end,
                            bool explicit_parens);
static jnode_t *parse_unary(jp_t *p, bool with_filter);
static jnode_t *parse_primary(jp_t *p);
static jnode_t *parse_postfix(jp_t *p, jnode_t *node);
static jnode_t *parse_filter_chain(jp_t *p, jnode_t *node, bool start_inline);
static jnode_t *parse_body(jp_t *p, const char *const *end_tags);

/* (args, kwargs) of a call; the '(' is current */
static void parse_call_args(jp_t *p, jnode_t *n)
{
    expect(p, T_LPAREN, "'('");
    nvec_t args = {0}, kwv = {0};
    svec_t kwn = {0};
    bool first = true;
    while (cur(p)->type != T_RPAREN) {
        if (!first) {
            expect(p, T_COMMA, "','");
            if (cur(p)->type == T_RPAREN) {
                break;
            }
        }
        first = false;
        jtok_t *t = cur(p);
        if (t->type == T_MUL || t->type == T_POW) {
            fail_tok(p, t, "%s", "*args and **kwargs in calls are not supported");
        }
        if (t->type == T_NAME && peek(p, 1)->type == T_ASSIGN) {
            advance(p);
            advance(p);
            sv_push(p, &kwn, t->s);
            nv_push(p, &kwv, parse_expression(p, true));
        } else {
            if (kwn.n > 0) {
                fail_tok(p, t, "%s", "invalid syntax for function call expression");
            }
            nv_push(p, &args, parse_expression(p, true));
        }
    }
    expect(p, T_RPAREN, "')'");
    n->list = args.v;
    n->nlist = args.n;
    n->names = kwn.v;
    n->nnames = kwn.n;
    n->list2 = kwv.v;
    n->nlist2 = kwv.n;
}

static jnode_t *parse_subscribed(jp_t *p)
{
    jtok_t *at = cur(p);
    jnode_t *parts[3] = {NULL, NULL, NULL};
    if (at->type == T_COLON) {
        advance(p);
    } else {
        jnode_t *e = parse_expression(p, true);
        if (cur(p)->type != T_COLON) {
            return e;
        }
        advance(p);
        parts[0] = e;
    }
    if (cur(p)->type != T_COLON && cur(p)->type != T_RBRACKET && cur(p)->type != T_COMMA) {
        parts[1] = parse_expression(p, true);
    }
    if (cur(p)->type == T_COLON) {
        advance(p);
        if (cur(p)->type != T_RBRACKET && cur(p)->type != T_COMMA) {
            parts[2] = parse_expression(p, true);
        }
    }
    jnode_t *s = mk(p, N_SLICE, at);
    s->b = parts[0];
    s->c = parts[1];
    s->d = parts[2];
    return s;
}

static jnode_t *parse_postfix(jp_t *p, jnode_t *node)
{
    for (;;) {
        jtok_t *t = cur(p);
        if (t->type == T_DOT) {
            advance(p);
            jtok_t *a = cur(p);
            if (a->type == T_NAME) {
                advance(p);
                jnode_t *g = mk(p, N_GETATTR, a);
                g->a = node;
                g->s = a->s;
                node = g;
            } else if (a->type == T_INT) {
                advance(p);
                jnode_t *k = mk(p, N_CONST, a);
                k->value = jv_int(a->i);
                jnode_t *g = mk(p, N_GETITEM, a);
                g->a = node;
                g->b = k;
                node = g;
            } else {
                fail_tok(p, a, "%s", "expected name or number");
            }
        } else if (t->type == T_LBRACKET) {
            advance(p);
            nvec_t args = {0};
            while (cur(p)->type != T_RBRACKET) {
                if (args.n) {
                    expect(p, T_COMMA, "','");
                }
                nv_push(p, &args, parse_subscribed(p));
            }
            expect(p, T_RBRACKET, "']'");
            if (args.n == 0) {
                fail_tok(p, t, "%s", "expected an expression in []");
            }
            jnode_t *key;
            if (args.n == 1) {
                key = args.v[0];
            } else {
                key = mk(p, N_TUPLE, t);
                key->list = args.v;
                key->nlist = args.n;
            }
            if (key->kind == N_SLICE) {
                key->a = node;
                node = key;
            } else {
                jnode_t *g = mk(p, N_GETITEM, t);
                g->a = node;
                g->b = key;
                node = g;
            }
        } else if (t->type == T_LPAREN) {
            jnode_t *c = mk(p, N_CALL, t);
            c->a = node;
            parse_call_args(p, c);
            node = c;
        } else {
            return node;
        }
    }
}

static jnode_t *parse_test(jp_t *p, jnode_t *node)
{
    jtok_t *is = advance(p); /* 'is' */
    bool neg = false;
    if (is_name(cur(p), "not")) {
        advance(p);
        neg = true;
    }
    jtok_t *nt = expect_name(p);
    const char *name = nt->s;
    while (cur(p)->type == T_DOT) {
        advance(p);
        jtok_t *more = expect_name(p);
        size_t l1 = strlen(name), l2 = strlen(more->s);
        char *nn = jp_alloc(p, l1 + l2 + 2);
        memcpy(nn, name, l1);
        nn[l1] = '.';
        memcpy(nn + l1 + 1, more->s, l2 + 1);
        name = nn;
    }
    jnode_t *n = mk(p, N_TEST, is);
    n->a = node;
    n->s = name;
    n->op = neg;
    jtok_t *t = cur(p);
    if (t->type == T_LPAREN) {
        parse_call_args(p, n);
    } else if ((t->type == T_NAME || t->type == T_STRING || t->type == T_INT ||
                t->type == T_FLOAT || t->type == T_LBRACKET || t->type == T_LBRACE) &&
               !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
        if (is_name(t, "is")) {
            fail_tok(p, t, "%s", "You cannot chain multiple tests with is");
        }
        jnode_t *arg = parse_postfix(p, parse_primary(p));
        n->list = jp_alloc(p, sizeof(jnode_t *));
        n->list[0] = arg;
        n->nlist = 1;
    }
    n->test = jb_find_test(name);
    if (n->test == NULL && p->soft == 0) {
        jp_fail_at(p, TDM_ERR_UNSUPPORTED, nt->line, nt->col,
                   "no test named '%.60s' (unknown or not supported)", name);
    }
    return n;
}

static jnode_t *parse_filter_chain(jp_t *p, jnode_t *node, bool start_inline)
{
    while (cur(p)->type == T_PIPE || start_inline) {
        if (!start_inline) {
            advance(p);
        }
        start_inline = false;
        jtok_t *nt = expect_name(p);
        const char *name = nt->s;
        while (cur(p)->type == T_DOT) {
            advance(p);
            jtok_t *more = expect_name(p);
            size_t l1 = strlen(name), l2 = strlen(more->s);
            char *nn = jp_alloc(p, l1 + l2 + 2);
            memcpy(nn, name, l1);
            nn[l1] = '.';
            memcpy(nn + l1 + 1, more->s, l2 + 1);
            name = nn;
        }
        jnode_t *f = mk(p, N_FILTER, nt);
        f->a = node;
        f->s = name;
        if (cur(p)->type == T_LPAREN) {
            parse_call_args(p, f);
        }
        f->filter = jb_find_filter(name);
        if (f->filter == NULL && p->soft == 0) {
            jp_fail_at(p, TDM_ERR_UNSUPPORTED, nt->line, nt->col,
                       "no filter named '%.60s' (unknown or not supported)", name);
        }
        node = f;
    }
    return node;
}

static jnode_t *parse_filter_expr(jp_t *p, jnode_t *node)
{
    for (;;) {
        jtok_t *t = cur(p);
        if (t->type == T_PIPE) {
            node = parse_filter_chain(p, node, false);
        } else if (is_name(t, "is")) {
            node = parse_test(p, node);
        } else if (t->type == T_LPAREN) {
            jnode_t *c = mk(p, N_CALL, t);
            c->a = node;
            parse_call_args(p, c);
            node = c;
        } else {
            return node;
        }
    }
}

static jnode_t *parse_primary(jp_t *p)
{
    jtok_t *t = cur(p);
    jnode_t *n;
    switch (t->type) {
    case T_NAME:
        advance(p);
        if (strcmp(t->s, "true") == 0 || strcmp(t->s, "True") == 0 || strcmp(t->s, "false") == 0 ||
            strcmp(t->s, "False") == 0) {
            n = mk(p, N_CONST, t);
            n->value = jv_bool(t->s[0] == 't' || t->s[0] == 'T');
        } else if (strcmp(t->s, "none") == 0 || strcmp(t->s, "None") == 0) {
            n = mk(p, N_CONST, t);
            n->value = jv_none();
        } else {
            n = mk(p, N_NAME, t);
            n->s = t->s;
            n->hash = name_hash(t->s);
        }
        return n;
    case T_STRING: {
        advance(p);
        size_t total = t->len;
        size_t k = 0;
        while (peek(p, k)->type == T_STRING) {
            total += peek(p, k)->len;
            k++;
        }
        char *buf = jp_alloc(p, total + 1);
        memcpy(buf, t->s, t->len);
        size_t o = t->len;
        while (cur(p)->type == T_STRING) {
            jtok_t *u = advance(p);
            memcpy(buf + o, u->s, u->len);
            o += u->len;
        }
        buf[o] = '\0';
        n = mk(p, N_CONST, t);
        n->s = buf;
        n->slen = o;
        n->value = jv_strv(const_str(p, buf, o));
        return n;
    }
    case T_INT:
        advance(p);
        n = mk(p, N_CONST, t);
        n->value = jv_int(t->i);
        return n;
    case T_FLOAT:
        advance(p);
        n = mk(p, N_CONST, t);
        n->value = jv_float(t->f);
        return n;
    case T_LPAREN:
        advance(p);
        n = parse_tuple(p, false, true, NULL, true);
        expect(p, T_RPAREN, "')'");
        return n;
    case T_LBRACKET: {
        advance(p);
        nvec_t items = {0};
        while (cur(p)->type != T_RBRACKET) {
            if (items.n) {
                expect(p, T_COMMA, "','");
            }
            if (cur(p)->type == T_RBRACKET) {
                break;
            }
            nv_push(p, &items, parse_expression(p, true));
        }
        expect(p, T_RBRACKET, "']'");
        n = mk(p, N_LIST, t);
        n->list = items.v;
        n->nlist = items.n;
        return n;
    }
    case T_LBRACE: {
        advance(p);
        nvec_t keys = {0}, vals = {0};
        while (cur(p)->type != T_RBRACE) {
            if (keys.n) {
                expect(p, T_COMMA, "','");
            }
            if (cur(p)->type == T_RBRACE) {
                break;
            }
            nv_push(p, &keys, parse_expression(p, true));
            expect(p, T_COLON, "':'");
            nv_push(p, &vals, parse_expression(p, true));
        }
        expect(p, T_RBRACE, "'}'");
        n = mk(p, N_DICT, t);
        n->list = keys.v;
        n->nlist = keys.n;
        n->list2 = vals.v;
        n->nlist2 = vals.n;
        return n;
    }
    default: {
        char b[80];
        fail_tok(p, t, "unexpected '%s'", tok_desc(t, b, sizeof(b)));
    }
    }
}

static jnode_t *parse_unary(jp_t *p, bool with_filter)
{
    enter(p);
    jtok_t *t = cur(p);
    jnode_t *node;
    if (t->type == T_SUB || t->type == T_ADD) {
        advance(p);
        node = mk(p, t->type == T_SUB ? N_NEG : N_POS, t);
        node->a = parse_unary(p, false);
    } else {
        node = parse_primary(p);
    }
    node = parse_postfix(p, node);
    if (with_filter) {
        node = parse_filter_expr(p, node);
    }
    p->depth--;
    return node;
}

static jnode_t *binop(jp_t *p, const jtok_t *t, jnode_t *a, jnode_t *b)
{
    jnode_t *n = mk(p, N_BINOP, t);
    n->op = t->type;
    n->a = a;
    n->b = b;
    return n;
}

static jnode_t *parse_pow(jp_t *p)
{
    jnode_t *left = parse_unary(p, true);
    while (cur(p)->type == T_POW) {
        jtok_t *t = advance(p);
        left = binop(p, t, left, parse_unary(p, true));
    }
    return left;
}

static jnode_t *parse_math2(jp_t *p)
{
    jnode_t *left = parse_pow(p);
    while (cur(p)->type == T_MUL || cur(p)->type == T_DIV || cur(p)->type == T_FLOORDIV ||
           cur(p)->type == T_MOD) {
        jtok_t *t = advance(p);
        left = binop(p, t, left, parse_pow(p));
    }
    return left;
}

static jnode_t *parse_concat(jp_t *p)
{
    jtok_t *at = cur(p);
    jnode_t *first = parse_math2(p);
    if (cur(p)->type != T_TILDE) {
        return first;
    }
    nvec_t args = {0};
    nv_push(p, &args, first);
    while (cur(p)->type == T_TILDE) {
        advance(p);
        nv_push(p, &args, parse_math2(p));
    }
    jnode_t *n = mk(p, N_CONCAT, at);
    n->list = args.v;
    n->nlist = args.n;
    return n;
}

static jnode_t *parse_math1(jp_t *p)
{
    jnode_t *left = parse_concat(p);
    while (cur(p)->type == T_ADD || cur(p)->type == T_SUB) {
        jtok_t *t = advance(p);
        left = binop(p, t, left, parse_concat(p));
    }
    return left;
}

static jnode_t *parse_compare(jp_t *p)
{
    jtok_t *at = cur(p);
    jnode_t *expr = parse_math1(p);
    nvec_t operands = {0};
    int ops_buf[64];
    size_t nops = 0;
    int *ops = ops_buf;
    size_t ops_cap = 64;
    for (;;) {
        jtok_t *t = cur(p);
        int op;
        if (t->type == T_EQ || t->type == T_NE || t->type == T_LT || t->type == T_LTEQ ||
            t->type == T_GT || t->type == T_GTEQ) {
            advance(p);
            op = t->type;
        } else if (is_name(t, "in")) {
            advance(p);
            op = JOP_IN;
        } else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            advance(p);
            advance(p);
            op = JOP_NOTIN;
        } else {
            break;
        }
        if (nops == ops_cap) {
            int *n2 = jp_alloc(p, ops_cap * 2 * sizeof(int));
            memcpy(n2, ops, nops * sizeof(int));
            ops = n2;
            ops_cap *= 2;
        }
        ops[nops++] = op;
        nv_push(p, &operands, parse_math1(p));
    }
    if (nops == 0) {
        return expr;
    }
    jnode_t *n = mk(p, N_COMPARE, at);
    n->a = expr;
    n->list = operands.v;
    n->nlist = operands.n;
    n->ops = jp_alloc(p, nops * sizeof(int));
    memcpy(n->ops, ops, nops * sizeof(int));
    return n;
}

static jnode_t *parse_not(jp_t *p)
{
    jtok_t *t = cur(p);
    if (is_name(t, "not")) {
        advance(p);
        enter(p);
        jnode_t *n = mk(p, N_NOT, t);
        n->a = parse_not(p);
        p->depth--;
        return n;
    }
    return parse_compare(p);
}

static jnode_t *parse_and(jp_t *p)
{
    jnode_t *left = parse_not(p);
    while (is_name(cur(p), "and")) {
        jtok_t *t = advance(p);
        jnode_t *n = mk(p, N_AND, t);
        n->a = left;
        n->b = parse_not(p);
        left = n;
    }
    return left;
}

static jnode_t *parse_or(jp_t *p)
{
    jnode_t *left = parse_and(p);
    while (is_name(cur(p), "or")) {
        jtok_t *t = advance(p);
        jnode_t *n = mk(p, N_OR, t);
        n->a = left;
        n->b = parse_and(p);
        left = n;
    }
    return left;
}

static jnode_t *parse_condexpr(jp_t *p)
{
    enter(p);
    jnode_t *expr1 = parse_or(p);
    while (is_name(cur(p), "if")) {
        jtok_t *t = advance(p);
        p->soft++;
        jnode_t *n = mk(p, N_COND, t);
        n->a = parse_or(p);
        n->b = expr1;
        if (is_name(cur(p), "else")) {
            advance(p);
            n->c = parse_condexpr(p);
        }
        p->soft--;
        expr1 = n;
    }
    p->depth--;
    return expr1;
}

static jnode_t *parse_expression(jp_t *p, bool with_condexpr)
{
    return with_condexpr ? parse_condexpr(p) : parse_or(p);
}

static bool is_tuple_end(jp_t *p, const char *extra_end)
{
    jtok_t *t = cur(p);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || t->type == T_RPAREN) {
        return true;
    }
    return extra_end != NULL && is_name(t, extra_end);
}

static jnode_t *parse_tuple(jp_t *p, bool simplified, bool with_condexpr, const char *extra_end,
                            bool explicit_parens)
{
    jtok_t *at = cur(p);
    nvec_t args = {0};
    bool is_tuple = false;
    for (;;) {
        if (args.n) {
            expect(p, T_COMMA, "','");
        }
        if (is_tuple_end(p, extra_end)) {
            break;
        }
        jnode_t *e = simplified ? parse_primary(p) : parse_expression(p, with_condexpr);
        nv_push(p, &args, e);
        if (cur(p)->type == T_COMMA) {
            is_tuple = true;
        } else {
            break;
        }
    }
    if (!is_tuple) {
        if (args.n) {
            return args.v[0];
        }
        if (!explicit_parens) {
            char b[80];
            fail_tok(p, cur(p), "expected an expression, got '%s'", tok_desc(cur(p), b, sizeof(b)));
        }
    }
    jnode_t *n = mk(p, N_TUPLE, at);
    n->list = args.v;
    n->nlist = args.n;
    return n;
}

/* assignment target: name, ns.attr (if with_ns) or a tuple of names */
static jnode_t *parse_assign_target(jp_t *p, bool with_ns, const char *extra_end)
{
    jtok_t *t = cur(p);
    jnode_t *target;
    if (with_ns && t->type == T_NAME && peek(p, 1)->type == T_DOT) {
        advance(p);
        advance(p);
        jtok_t *attr = expect_name(p);
        target = mk(p, N_NSREF, t);
        target->s = t->s;
        target->s2 = attr->s;
        return target;
    }
    target = parse_tuple(p, true, true, extra_end, false);
    if (target->kind == N_NAME) {
        return target;
    }
    if (target->kind == N_TUPLE) {
        for (size_t i = 0; i < target->nlist; i++) {
            if (target->list[i]->kind != N_NAME) {
                fail_tok(p, t, "%s", "can't assign to this expression");
            }
        }
        return target;
    }
    fail_tok(p, t, "%s", "can't assign to this expression");
}

static void expect_block_end(jp_t *p)
{
    jtok_t *t = cur(p);
    if (t->type == T_COLON) {
        advance(p);
        t = cur(p);
    }
    if (t->type != T_BLOCK_END) {
        char b[80];
        fail_tok(p, t, "expected token 'end of statement block', got '%s'",
                 tok_desc(t, b, sizeof(b)));
    }
    advance(p);
}

/* parses statements until one of end_tags; leaves the cursor on the tag's name */
static jnode_t *parse_statements(jp_t *p, const char *const *end_tags, const char *block)
{
    expect_block_end(p);
    jnode_t *body = parse_body(p, end_tags);
    if (cur(p)->type == T_EOF) {
        char want[160] = "";
        for (size_t i = 0; end_tags[i]; i++) {
            size_t l = strlen(want);
            snprintf(want + l, sizeof(want) - l, "%s'%s'", i ? " or " : "", end_tags[i]);
        }
        fail_tok(p, cur(p),
                 "unexpected end of template; looking for %s (the innermost open block is "
                 "'%s')",
                 want, block);
    }
    return body;
}

static jnode_t *parse_if(jp_t *p, jtok_t *kw)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const ends2[] = {"endif", NULL};
    jnode_t *n = mk(p, N_IF, kw);
    jnode_t *node = n;
    p->soft++;
    for (;;) {
        node->a = parse_tuple(p, false, false, NULL, false);
        node->b = parse_statements(p, ends, "if");
        jtok_t *t = advance(p);
        if (strcmp(t->s, "elif") == 0) {
            jnode_t *e = mk(p, N_IF, t);
            node->c = e;
            node = e;
            continue;
        }
        if (strcmp(t->s, "else") == 0) {
            node->c = parse_statements(p, ends2, "if");
            advance(p);
        }
        break;
    }
    p->soft--;
    expect_block_end(p);
    return n;
}

static jnode_t *parse_for(jp_t *p, jtok_t *kw)
{
    static const char *const ends[] = {"endfor", "else", NULL};
    static const char *const ends2[] = {"endfor", NULL};
    jnode_t *n = mk(p, N_FOR, kw);
    int saved_soft = p->soft;
    p->soft = 0;
    n->a = parse_assign_target(p, false, "in");
    if (!is_name(cur(p), "in")) {
        char b[80];
        fail_tok(p, cur(p), "expected 'in', got '%s'", tok_desc(cur(p), b, sizeof(b)));
    }
    advance(p);
    n->b = parse_tuple(p, false, false, "recursive", false);
    if (is_name(cur(p), "if")) {
        advance(p);
        n->c = parse_expression(p, true);
    }
    if (is_name(cur(p), "recursive")) {
        fail_tok(p, cur(p), "%s", "recursive for loops are not supported");
    }
    p->loop_depth++;
    n->d = parse_statements(p, ends, "for");
    p->loop_depth--;
    jtok_t *t = advance(p);
    if (strcmp(t->s, "else") == 0) {
        n->e = parse_statements(p, ends2, "for");
        advance(p);
    }
    expect_block_end(p);
    p->soft = saved_soft;
    return n;
}

/* Which of varargs / kwargs / caller a macro body refers to (bits 1, 2, 4), as jinja2
 * decides whether a macro accepts extra arguments. Nested macros are not searched. */
static int scan_special_names(const jnode_t *n, int depth)
{
    if (n == NULL || depth > 10000 || n->kind == N_MACRO) {
        return 0;
    }
    int f = 0;
    if (n->kind == N_NAME) {
        f |= strcmp(n->s, "varargs") == 0  ? 1
             : strcmp(n->s, "kwargs") == 0 ? 2
             : strcmp(n->s, "caller") == 0 ? 4
                                           : 0;
    }
    const jnode_t *kids[5] = {n->a, n->b, n->c, n->d, n->e};
    for (size_t i = 0; i < 5; i++) {
        f |= scan_special_names(kids[i], depth + 1);
    }
    for (size_t i = 0; i < n->nlist; i++) {
        f |= scan_special_names(n->list[i], depth + 1);
    }
    for (size_t i = 0; i < n->nlist2; i++) {
        f |= scan_special_names(n->list2[i], depth + 1);
    }
    return f;
}

static void parse_signature(jp_t *p, jnode_t *n)
{
    expect(p, T_LPAREN, "'('");
    svec_t names = {0};
    nvec_t defs = {0};
    bool seen_default = false;
    while (cur(p)->type != T_RPAREN) {
        if (names.n) {
            expect(p, T_COMMA, "','");
        }
        jtok_t *t = expect_name(p);
        sv_push(p, &names, t->s);
        if (cur(p)->type == T_ASSIGN) {
            advance(p);
            nv_push(p, &defs, parse_expression(p, true));
            seen_default = true;
        } else {
            if (seen_default) {
                fail_tok(p, t, "%s", "non-default argument follows default argument");
            }
            nv_push(p, &defs, NULL);
        }
    }
    expect(p, T_RPAREN, "')'");
    n->names = names.v;
    n->nnames = names.n;
    n->list = defs.v;
    n->nlist = defs.n;
}

static jnode_t *parse_statement(jp_t *p)
{
    jtok_t *kw = cur(p);
    if (kw->type != T_NAME) {
        fail_tok(p, kw, "%s", "tag name expected");
    }
    advance(p);
    enter(p);
    jnode_t *n;
    const char *k = kw->s;
    if (strcmp(k, "if") == 0) {
        n = parse_if(p, kw);
    } else if (strcmp(k, "for") == 0) {
        n = parse_for(p, kw);
    } else if (strcmp(k, "set") == 0) {
        jnode_t *target = parse_assign_target(p, true, NULL);
        if (cur(p)->type == T_ASSIGN) {
            advance(p);
            n = mk(p, N_SET, kw);
            n->a = target;
            n->b = parse_tuple(p, false, true, NULL, false);
            expect_block_end(p);
        } else {
            static const char *const ends[] = {"endset", NULL};
            n = mk(p, N_SETBLOCK, kw);
            n->a = target;
            if (cur(p)->type == T_PIPE) {
                advance(p);
                n->c = parse_filter_chain(p, NULL, true);
            }
            n->b = parse_statements(p, ends, "set");
            advance(p);
            expect_block_end(p);
        }
    } else if (strcmp(k, "macro") == 0) {
        static const char *const ends[] = {"endmacro", NULL};
        n = mk(p, N_MACRO, kw);
        n->s = expect_name(p)->s;
        parse_signature(p, n);
        int saved_loop = p->loop_depth, saved_soft = p->soft;
        p->loop_depth = 0;
        p->soft = 0;
        n->b = parse_statements(p, ends, "macro");
        n->op = scan_special_names(n->b, 0);
        p->loop_depth = saved_loop;
        p->soft = saved_soft;
        advance(p);
        if (cur(p)->type == T_NAME) {
            advance(p); /* {% endmacro name %} */
        }
        expect_block_end(p);
    } else if (strcmp(k, "call") == 0) {
        static const char *const ends[] = {"endcall", NULL};
        n = mk(p, N_CALLBLOCK, kw);
        if (cur(p)->type == T_LPAREN) {
            parse_signature(p, n);
        }
        jnode_t *call = parse_expression(p, true);
        if (call->kind != N_CALL) {
            fail_tok(p, kw, "%s", "expected a call expression after 'call'");
        }
        n->a = call;
        int saved_loop = p->loop_depth;
        p->loop_depth = 0;
        n->b = parse_statements(p, ends, "call");
        n->op = scan_special_names(n->b, 0);
        p->loop_depth = saved_loop;
        advance(p);
        expect_block_end(p);
    } else if (strcmp(k, "filter") == 0) {
        static const char *const ends[] = {"endfilter", NULL};
        n = mk(p, N_FILTERBLOCK, kw);
        n->a = parse_filter_chain(p, NULL, true);
        n->b = parse_statements(p, ends, "filter");
        advance(p);
        expect_block_end(p);
    } else if (strcmp(k, "with") == 0) {
        static const char *const ends[] = {"endwith", NULL};
        n = mk(p, N_WITH, kw);
        nvec_t targets = {0}, values = {0};
        while (cur(p)->type != T_BLOCK_END) {
            if (targets.n) {
                expect(p, T_COMMA, "','");
            }
            nv_push(p, &targets, parse_assign_target(p, false, NULL));
            expect(p, T_ASSIGN, "'='");
            nv_push(p, &values, parse_expression(p, true));
        }
        n->list = targets.v;
        n->nlist = targets.n;
        n->list2 = values.v;
        n->nlist2 = values.n;
        n->b = parse_statements(p, ends, "with");
        advance(p);
        expect_block_end(p);
    } else if (strcmp(k, "generation") == 0) {
        /* transformers' AssistantTracker tag: renders its body */
        static const char *const ends[] = {"endgeneration", NULL};
        n = parse_statements(p, ends, "generation");
        advance(p);
        expect_block_end(p);
    } else if (strcmp(k, "break") == 0 || strcmp(k, "continue") == 0) {
        if (p->loop_depth == 0) {
            fail_tok(p, kw, "'%s' outside of a loop", k);
        }
        n = mk(p, k[0] == 'b' ? N_BREAK : N_CONTINUE, kw);
        expect_block_end(p);
    } else {
        fail_tok(p, kw, "encountered unknown tag '%.60s'", k);
    }
    p->depth--;
    return n;
}

static jnode_t *parse_body(jp_t *p, const char *const *end_tags)
{
    jnode_t *body = mk(p, N_BODY, cur(p));
    nvec_t stmts = {0};
    for (;;) {
        jtok_t *t = cur(p);
        if (t->type == T_EOF) {
            break;
        }
        if (t->type == T_DATA) {
            advance(p);
            jnode_t *n = mk(p, N_TEXT, t);
            n->s = t->s;
            n->slen = t->len;
            nv_push(p, &stmts, n);
        } else if (t->type == T_VAR_BEGIN) {
            advance(p);
            jnode_t *n = mk(p, N_OUTPUT, t);
            n->a = parse_tuple(p, false, true, NULL, false);
            expect(p, T_VAR_END, "'}}'");
            nv_push(p, &stmts, n);
        } else if (t->type == T_BLOCK_BEGIN) {
            jtok_t *name = peek(p, 1);
            if (end_tags != NULL && name->type == T_NAME) {
                bool is_end = false;
                for (size_t i = 0; end_tags[i]; i++) {
                    if (strcmp(name->s, end_tags[i]) == 0) {
                        is_end = true;
                    }
                }
                if (is_end) {
                    advance(p); /* leave the cursor on the name */
                    break;
                }
            }
            advance(p);
            nv_push(p, &stmts, parse_statement(p));
        } else {
            char b[80];
            fail_tok(p, t, "unexpected '%s'", tok_desc(t, b, sizeof(b)));
        }
    }
    body->list = stmts.v;
    body->nlist = stmts.n;
    return body;
}

tdm_status_t jp_parse(jinja_tpl_t *tpl, const char *src, size_t len, tdm_error_t *err)
{
    jp_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory compiling the template");
    }
    p->arena = &tpl->arena;
    p->scan_line = 1;
    if (setjmp(p->jb) != 0) {
        tdm_status_t st = p->status;
        tdm_error_set(err, st, "template %s", p->msg);
        free(p);
        return st;
    }
    /* normalise newlines and drop one trailing newline (keep_trailing_newline=False) */
    char *norm = jp_alloc(p, len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            norm[o++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') {
                i++;
            }
        } else {
            norm[o++] = src[i];
        }
    }
    if (o > 0 && norm[o - 1] == '\n') {
        o--;
    }
    norm[o] = '\0';
    p->src = norm;
    p->len = o;
    lex(p);
    p->pos = 0;
    jnode_t *root = parse_body(p, NULL);
    if (cur(p)->type != T_EOF) {
        char b[80];
        fail_tok(p, cur(p), "unexpected '%s'", tok_desc(cur(p), b, sizeof(b)));
    }
    tpl->root = root;
    free(p);
    return TDM_OK;
}
