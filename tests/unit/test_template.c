/*
 * test_template.c - unit tests of the chat-template engine (coordinator/jinja/,
 * coordinator/template.c): lexing and whitespace control, parsing and operator
 * precedence, interpreter semantics (scoping, loops, macros, filters, tests, Python
 * value formatting), syntax-error positions, run-time errors and resource limits.
 * Expected strings are what Python jinja2 3.1 (configured as transformers does) renders;
 * the differential test against jinja2 itself is tests/python/test_templates.py.
 */
#include "coordinator/template.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static const char *const CTX = "{\"xs\": [3, 1, 2], \"d\": {\"b\": 1, \"a\": [1, 2.5, \"x\"]},"
                               " \"s\": \"Hello World\", \"n\": null, \"f\": 0.1,"
                               " \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}";

/* Renders src with CTX; returns the output (caller frees) or NULL with *st / err set. */
static char *render_ex(const char *src, const char *ctx_json, const tpl_render_opts_t *opts,
                       tdm_status_t *st, tdm_error_t *err)
{
    tdm_error_clear(err);
    tpl_template_t *t = NULL;
    *st = tpl_compile(src, &t, err);
    if (*st != TDM_OK) {
        return NULL;
    }
    json_t *ctx = json_loads(ctx_json, 0, NULL);
    assert_non_null(ctx);
    char *out = NULL;
    *st = tpl_render_ex(t, ctx, opts, &out, NULL, err);
    json_decref(ctx);
    tpl_destroy(t);
    return *st == TDM_OK ? out : NULL;
}

static void expect(const char *src, const char *want)
{
    tdm_status_t st;
    tdm_error_t err;
    tpl_render_opts_t o = tpl_default_opts();
    o.has_time = true;
    o.time_sec = 0;
    char *out = render_ex(src, CTX, &o, &st, &err);
    if (out == NULL) {
        fail_msg("template %s failed: %s", src, tdm_error_msg(&err));
    }
    if (strcmp(out, want) != 0) {
        fail_msg("template %s\n  want '%s'\n  got  '%s'", src, want, out);
    }
    free(out);
}

/* expects failure with `status` and a message containing `needle` */
static void expect_error(const char *src, tdm_status_t status, const char *needle)
{
    tdm_status_t st;
    tdm_error_t err;
    tpl_render_opts_t o = tpl_default_opts();
    o.limits.max_iterations = 100000;
    o.limits.max_output = 1 << 20;
    o.limits.max_memory = 64 << 20;
    char *out = render_ex(src, CTX, &o, &st, &err);
    if (out != NULL) {
        fail_msg("template %s should fail but rendered '%s'", src, out);
    }
    if (st != status) {
        fail_msg("template %s: status %s, want %s (%s)", src, tdm_status_str(st),
                 tdm_status_str(status), tdm_error_msg(&err));
    }
    if (strstr(tdm_error_msg(&err), needle) == NULL) {
        fail_msg("template %s: error '%s' lacks '%s'", src, tdm_error_msg(&err), needle);
    }
}

static void test_whitespace_control(void **state)
{
    (void)state;
    /* trim_blocks eats the newline after a block tag; lstrip_blocks the indentation */
    expect("  {% if true %}\n    yes\n  {% endif %}\n  after", "    yes\n  after");
    expect("a  {%- if true -%}  b  {%- endif -%}  c", "abc");
    expect("{{ 'x' }}\n{{ 'y' }}", "x\ny"); /* no trim after }} */
    expect("{# c #}\nx", "x");              /* comments trim too */
    expect("  {#- c -#}  \n  x", "x");
    expect("  {%+ if true %}x{% endif %}", "  x"); /* + disables lstrip */
    expect("{% if true +%}\nx{% endif %}", "\nx"); /* +%} keeps the newline */
    expect("{% raw %}{{ a }}{% endraw %}", "{{ a }}");
    expect("a\n", "a");                                       /* one trailing newline dropped */
    expect("a\r\nb\rc", "a\nb\nc");                           /* newlines normalised */
    expect("x {{ 1 }}  {% if true %}y{% endif %}", "x 1  y"); /* not at line start */
}

static void test_expressions(void **state)
{
    (void)state;
    expect("{{ 1 + 2 * 3 }}|{{ 2 ** 3 ** 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}",
           "7|64|3|-4|2");
    expect("{{ 7 / 2 }}|{{ 4 / 2 }}|{{ 1.5 * 2 }}|{{ 10 // 4.0 }}|{{ -7.5 % 2 }}",
           "3.5|2.0|3.0|2.0|0.5");
    expect("{{ 'a' + 'b' ~ 1 }}|{{ 'ab' * 2 }}|{{ [1] + [2] }}", "ab1|abab|[1, 2]");
    expect("{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 1 == 1.0 }}{{ true == 1 }}", "TrueFalseTrueTrue");
    expect("{{ 'World' in s }}{{ 'a' in d }}{{ 5 not in xs }}{{ not n }}", "TrueTrueTrueTrue");
    expect("{{ n or 'dflt' }}|{{ s and 0 }}|{{ 'y' if xs else 'n' }}|{{ 'z' if false }}",
           "dflt|0|y|");
    expect("{{ xs[0] }}{{ xs[-1] }}{{ xs[1:] }}{{ xs[::-1] }}{{ s[::2] }}{{ d.a.1 }}",
           "32[1, 2][2, 1, 3]HloWrd2.5");
    expect("{{ -(xs|length) }}|{{ (1, 2) }}|{{ (1,) }}|{{ () }}|{{ {'k': none} }}",
           "-3|(1, 2)|(1,)|()|{'k': None}");
    expect("{{ 'it\\'s' }}|{{ \"a\\tb\\u00e9\\x41\" }}|{{ 'a' 'b' }}", "it's|a\tbéA|ab");
    expect("{{ \"%s-%d-%.2f\" % ('a', 3, 1.5) }}|{{ '{}={x}'.format(1, x=2) }}", "a-3-1.50|1=2");
}

static void test_python_formatting(void **state)
{
    (void)state;
    expect("{{ [1.0, 1e16, 1e15, 0.0001, 1e-05, f, 2.5e-300, -0.0] }}",
           "[1.0, 1e+16, 1000000000000000.0, 0.0001, 1e-05, 0.1, 2.5e-300, -0.0]");
    expect("{{ ['it\\'s', 'a\"b', 'x\\ny', '\\u00e9\\u3000\\x7f'] }}",
           "[\"it's\", 'a\"b', 'x\\ny', 'é\\u3000\\x7f']");
    expect("{{ d }}|{{ none }}|{{ true }}|{{ n }}", "{'b': 1, 'a': [1, 2.5, 'x']}|None|True|None");
    expect("{{ d|tojson }}", "{\"b\": 1, \"a\": [1, 2.5, \"x\"]}");
    expect("{{ d|tojson(indent=2) }}",
           "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2.5,\n    \"x\"\n  ]\n}");
    expect("{{ {'b': [], 'a': {}}|tojson(sort_keys=true, separators=(',', ':')) }}",
           "{\"a\":{},\"b\":[]}");
    expect("{{ 'é\"\\\\\\n\\u001f'|tojson }}|{{ 'é😀'|tojson(ensure_ascii=true) }}",
           "\"é\\\"\\\\\\n\\u001f\"|\"\\u00e9\\ud83d\\ude00\"");
}

static void test_statements(void **state)
{
    (void)state;
    expect("{% for k, v in d|items %}{{ loop.index }}{{ k }}={{ v }};{% endfor %}",
           "1b=1;2a=[1, 2.5, 'x'];");
    expect("{% for x in xs if x > 1 %}{{ x }}/{{ loop.length }}{% else %}none{% endfor %}",
           "3/22/2");
    expect("{% for x in [] %}a{% else %}empty{% endfor %}", "empty");
    expect("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.revindex0 }}{{ "
           "loop.cycle('a', 'b') }} {% endfor %}",
           "-1-2a 3-2-1b 1--0a ");
    expect("{% for i in range(10) %}{% if i == 4 %}{% break %}{% endif %}{% if i is odd %}{% "
           "continue %}{% endif %}{{ i }}{% endfor %}",
           "02");
    expect("{% set ns = namespace(t=0) %}{% for x in xs %}{% set ns.t = ns.t + x %}{% endfor %}{{ "
           "ns.t }}",
           "6");
    /* loop bodies do not leak assignments, and each iteration starts fresh */
    expect("{% set x = 9 %}{% for i in range(3) %}[{{ x }}]{% set x = i %}{% endfor %}{{ x }}",
           "[9][9][9]9");
    expect("{% if true %}{% set y = 1 %}{% endif %}{{ y }}", "1");
    expect("{% set a, b = 1, 2 %}{{ b }}{{ a }}", "21");
    expect("{% set c %}cap {{ 1 }}{% endset %}{{ c|upper }}", "CAP 1");
    expect("{% set c | upper %}x{% endset %}{{ c }}", "X");
    expect("{% with a = 5 %}{{ a }}{% endwith %}[{{ a }}]", "5[]");
    expect("{% filter upper %}ab{{ s }}{% endfilter %}", "ABHELLO WORLD");
    expect("{% if false %}a{% elif n is none %}b{% else %}c{% endif %}", "b");
    expect("{% generation %}g{% endgeneration %}", "g");
}

static void test_macros(void **state)
{
    (void)state;
    expect("{% macro f(a, b=2) %}[{{ a }}-{{ b }}]{% endmacro %}{{ f(1) }}{{ f(1, b=5) }}{{ f(a=3) "
           "}}{{ f() }}",
           "[1-2][1-5][3-2][-2]");
    expect("{% macro r(n) %}{% if n > 0 %}{{ n }}{{ r(n - 1) }}{% endif %}{% endmacro %}{{ r(4) }}",
           "4321");
    expect("{% macro g() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ g(1, 2, k=3) }}",
           "(1, 2){'k': 3}");
    expect(
        "{% macro m(x) %}<{{ caller(x) }}>{% endmacro %}{% call(v) m(7) %}in{{ v }}{% endcall %}",
        "<in7>");
    /* a macro sees template variables as they are when it is called */
    expect("{% macro f() %}{{ late }}{% endmacro %}{% set late = 'L' %}{{ f() }}", "L");
    expect_error("{% macro f(a) %}{% endmacro %}{{ f(1, 2) }}", TDM_ERR_INVALID_PARAM,
                 "takes not more than 1 argument");
}

static void test_filters_and_methods(void **state)
{
    (void)state;
    expect("{{ xs|sort }}{{ xs|sort(reverse=true) }}{{ ['b', 'A', 'a']|sort }}{{ xs|min }}{{ "
           "xs|max }}{{ xs|sum }}",
           "[1, 2, 3][3, 2, 1]['A', 'a', 'b']136");
    expect("{{ xs|join(', ') }}|{{ xs|map('string')|join }}|{{ [{'a': 1}, {'a': "
           "2}]|map(attribute='a')|list }}",
           "3, 1, 2|312|[1, 2]");
    expect("{{ xs|select('odd')|list }}{{ xs|reject('odd')|list }}{{ [{'a': 1}, {'a': "
           "0}]|selectattr('a')|list }}",
           "[3, 1][2][{'a': 1}]");
    expect(
        "{{ [3, 3, 1, 'A', 'a']|unique|list }}|{{ xs|first }}{{ xs|last }}|{{ xs|reverse|list }}",
        "[3, 1, 'A']|32|[2, 1, 3]");
    expect("{{ '  x  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ s|upper }}|{{ s|lower }}|{{ 'ab "
           "cd-ef'|title }}|{{ 'aB'|capitalize }}",
           "x|hi|HELLO WORLD|hello world|Ab Cd-Ef|Ab");
    expect("{{ '3.7'|int }}{{ 3.7|int }}{{ 'x'|int }}{{ 'x'|int(5) }}{{ '0x1f'|int(0, 16) }}|{{ "
           "'2.5'|float }}",
           "330531|2.5");
    expect(
        "{{ 2.5|round }}{{ 3.5|round }}{{ 2.675|round(2) }}{{ 1.21|round(1, 'ceil') }}{{ -3|abs }}",
        "2.04.02.671.33");
    expect("{{ undefined_var|default('d') }}{{ ''|default('e', true) }}{{ n|default('x') }}",
           "deNone");
    expect("{{ 'a\\nb'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ [1, 2, 3]|batch(2)|list }}",
           "a\n  b|  a\n  b|[[1, 2], [3]]");
    expect(
        "{{ d|dictsort }}|{{ d|items|list }}|{{ d|length }}{{ s|length }}{{ 'a b  c'|wordcount }}",
        "[('a', [1, 2.5, 'x']), ('b', 1)]|[('b', 1), ('a', [1, 2.5, 'x'])]|2113");
    expect("{{ s.split(' ') }}{{ '  a  b '.split() }}{{ 'a,b,c'.rsplit(',', 1) }}{{ "
           "'a,,b'.split(',') }}",
           "['Hello', 'World']['a', 'b']['a,b', 'c']['a', '', 'b']");
    expect("{{ s.startswith('He') }}{{ s.endswith(('x', 'ld')) }}{{ s.find('o') }}{{ s.rfind('o') "
           "}}{{ s.count('l') }}",
           "TrueTrue473");
    expect("{{ '\\n\\nx\\n'.strip('\\n') }}|{{ 'xy'.lstrip('x') }}|{{ 'a-b'.replace('-', '+') "
           "}}|{{ '-'.join(['a', 'b']) }}",
           "x|y|a+b|a-b");
    expect("{{ d.get('b') }}{{ d.get('zz', 7) }}{{ d.keys()|list }}{{ d.values()|list|length }}{{ "
           "d.items()|list|length }}",
           "17['b', 'a']22");
    expect("{% set l = [1] %}{% set _ = l.append(2) %}{{ l }}{{ l.index(2) }}", "[1, 2]1");
    expect("{{ 'ÉCOLE ΣΟΦΟΣ'|lower }}|{{ 'straße'|upper }}|{{ 'ébc'.capitalize() }}",
           "école σοφος|STRASSE|Ébc");
}

static void test_tests(void **state)
{
    (void)state;
    expect("{{ xs is sequence }}{{ d is mapping }}{{ s is string }}{{ 1 is number }}{{ true is "
           "number }}{{ true is integer }}",
           "TrueTrueTrueTrueTrueFalse");
    expect("{{ undefined_var is defined }}{{ d.zz is undefined }}{{ n is none }}{{ {} is sequence "
           "}}{{ undefined_var is iterable }}",
           "FalseTrueTrueTrueTrue");
    expect("{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 2 is eq 2 }}{{ 'ab' is lower "
           "}}{{ 1 is in xs }}",
           "TrueTrueTrueTrueTrueTrue");
    expect("{{ false is false }}{{ 0 is false }}{{ true is boolean }}{{ 1.0 is float }}{{ n is not "
           "none }}",
           "TrueFalseTrueTrueFalse");
}

static void test_undefined(void **state)
{
    (void)state;
    expect("[{{ nothing }}]{{ d.zz }}{{ nothing|length }}{{ 'x' in nothing }}", "[]0False");
    expect("{% for x in nothing %}x{% endfor %}{{ nothing ~ 'y' }}{{ n.attr }}", "y");
    expect_error("{{ nothing.attr }}", TDM_ERR_INVALID_PARAM, "'nothing' is undefined");
    expect_error("{{ d.zz + 1 }}", TDM_ERR_INVALID_PARAM, "'dict object' has no attribute 'zz'");
    expect_error("{{ 'a' + 1 }}", TDM_ERR_INVALID_PARAM, "can only concatenate str");
    expect_error("{{ 1 // 0 }}", TDM_ERR_INVALID_PARAM, "division or modulo by zero");
    expect_error("{{ raise_exception('bad role: ' ~ messages[0].role) }}", TDM_ERR_INVALID_PARAM,
                 "bad role: user");
    expect_error("{{ d.pop('a') }}", TDM_ERR_INVALID_PARAM, "unsafe");
    expect_error("{{ 1|items }}", TDM_ERR_INVALID_PARAM, "Can only get item pairs from a mapping");
    expect_error("{{ nothing() }}", TDM_ERR_INVALID_PARAM, "'nothing' is undefined");
    expect_error("{% set x = 1 %}{% set x.y = 2 %}", TDM_ERR_INVALID_PARAM, "non-namespace");
    expect_error("{{ namespace(_p=1) }}", TDM_ERR_INVALID_PARAM, "underscore");
}

static void syntax_error(const char *src, const char *pos, const char *needle)
{
    tpl_template_t *t = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    tdm_status_t st = tpl_compile(src, &t, &err);
    if (st == TDM_OK) {
        tpl_destroy(t);
        fail_msg("template '%s' should not compile", src);
    }
    assert_int_equal(st, TDM_ERR_FORMAT);
    if (strstr(err.msg, pos) == NULL || strstr(err.msg, needle) == NULL) {
        fail_msg("template '%s': error '%s' lacks '%s' / '%s'", src, err.msg, pos, needle);
    }
}

static void test_syntax_errors(void **state)
{
    (void)state;
    syntax_error("line1\n{% if x %}\n  {{ 1 + }}\n{% endif %}", "line 3, column 10",
                 "unexpected 'end of print statement'");
    syntax_error("{% for x in y %}\nabc", "line 2", "endfor");
    syntax_error("ab {% endif %}", "line 1, column 7", "unknown tag 'endif'");
    syntax_error("{{ 'unterminated }}", "line 1, column 4", "unterminated string");
    syntax_error("{# never closed", "line 1, column 1", "missing end of comment");
    syntax_error("x\n\n   {{ a ! b }}", "line 3, column 9", "unexpected char '!'");
    syntax_error("{{ (1, 2 }}", "line 1", "unexpected");
    syntax_error("{% break %}", "line 1", "outside of a loop");
    syntax_error("{% macro f(a=1, b) %}{% endmacro %}", "line 1", "non-default argument");
    syntax_error("{{ x is }}", "line 1, column 9", "expected a name");
    /* columns count code points, from the line's start, over several tokens on the line */
    syntax_error("\xc3\xa9 {{ a }} \xc3\xbc {{ b ! }}", "line 1, column 18", "unexpected char");
    syntax_error("\xc3\xa9 {{ a }}\n\xc3\xbc {{ b ! }}", "line 2, column 8", "unexpected char");
    /* the message carries the offending line and a caret under the column */
    tpl_template_t *t = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(tpl_compile("ok\n  {{ a + }}", &t, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "\n    {{ a + }}\n           ^"));
    /* an unknown filter outside a conditional is rejected at compile time as unsupported */
    tdm_error_clear(&err);
    assert_int_equal(tpl_compile("{{ x|no_such_filter }}", &t, &err), TDM_ERR_UNSUPPORTED);
    /* inside an if, only when executed */
    expect("{% if false %}{{ x|no_such_filter }}{% endif %}ok", "ok");
    expect_error("{% if true %}{{ x|no_such_filter }}{% endif %}", TDM_ERR_UNSUPPORTED,
                 "no_such_filter");
}

/* A template on one long line (minified templates are) compiles in linear time: the
 * column of every token used to be counted from the line's start, quadratic in the
 * line's length (30,000 tokens on this 100 KB line). */
static void test_long_line_compiles_fast(void **state)
{
    (void)state;
    size_t reps = 10000, n = 0;
    char *src = malloc(reps * 10 + 32);
    assert_non_null(src);
    for (size_t i = 0; i < reps; i++) {
        memcpy(src + n, "{{ x }}\xc3\xa9 ", 10);
        n += 10;
    }
    memcpy(src + n, "{{ y ! }}", 10); /* the error must still point at the right column */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tpl_template_t *t = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(tpl_compile(src, &t, &err), TDM_ERR_FORMAT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    char want[64];
    snprintf(want, sizeof(want), "line 1, column %zu", reps * 9 + 6);
    if (strstr(err.msg, want) == NULL) {
        fail_msg("error '%.80s' lacks '%s'", err.msg, want);
    }
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (s > 2.0) {
        fail_msg("compiling a 100 KB line took %.2f s", s);
    }
    free(src);
}

static void test_limits(void **state)
{
    (void)state;
    /* repeating an empty string or list any number of times is empty, and instant */
    expect("{{ '' * 7 ** 12 }}|{{ ([] * 10 ** 12) | length }}|{{ (() * 10 ** 12) | length }}",
           "|0|0");
    expect_error("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
                 TDM_ERR_OUT_OF_RANGE, "iteration limit");
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", TDM_ERR_OUT_OF_RANGE,
                 "depth limit");
    expect_error("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s "
                 "~ ns.s %}{% endfor %}",
                 TDM_ERR_OUT_OF_RANGE, "limit");
    expect_error("{{ 'x' * 100000000 }}", TDM_ERR_OUT_OF_RANGE, "output limit");
    expect_error("{{ range(200000)|length }}", TDM_ERR_OUT_OF_RANGE, "Range too big");
    expect_error("{{ 9223372036854775807 + 1 }}", TDM_ERR_OUT_OF_RANGE, "64-bit");
    /* deeply nested expressions are refused by the parser, not by the stack */
    size_t n = 5000;
    char *deep = malloc(n * 2 + 16);
    assert_non_null(deep);
    strcpy(deep, "{{ ");
    size_t o = 3;
    for (size_t i = 0; i < n; i++) {
        deep[o++] = '(';
    }
    deep[o++] = '1';
    for (size_t i = 0; i < n; i++) {
        deep[o++] = ')';
    }
    strcpy(deep + o, " }}");
    tpl_template_t *t = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(tpl_compile(deep, &t, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "nested too deeply"));
    /* a long attribute chain parses but its evaluation depth is bounded */
    strcpy(deep, "{{ d");
    o = 4;
    for (size_t i = 0; i < 2000; i++) {
        memcpy(deep + o, ".a", 2);
        o += 2;
    }
    strcpy(deep + o, " }}");
    tdm_status_t st;
    char *out = render_ex(deep, CTX, NULL, &st, &err);
    assert_null(out);
    assert_true(st == TDM_ERR_OUT_OF_RANGE || st == TDM_ERR_INVALID_PARAM);
    free(deep);
}

static void test_chat_context(void **state)
{
    (void)state;
    tpl_template_t *t = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    const char *src = "{{ bos_token }}|{{ tools }}|{{ add_generation_prompt }}|"
                      "{% for m in messages %}{{ m.thinking }}/{{ m.reasoning_content }}/"
                      "{{ m|tojson }};{% endfor %}{{ strftime_now('%Y-%m-%d %H:%M:%S.%f%z') }}";
    assert_int_equal(tpl_compile(src, &t, &err), TDM_OK);
    assert_int_equal(tpl_set_special_tokens(t, "<s>", "</s>", &err), TDM_OK);
    json_t *ctx = json_loads("{\"messages\": [{\"role\": \"assistant\", \"content\": \"c\","
                             " \"reasoning\": \"r\"}, {\"role\": \"user\", \"content\": \"u\"}]}",
                             0, NULL);
    setenv("TZ", "UTC", 1);
    tpl_render_opts_t o = tpl_default_opts();
    o.has_time = true;
    o.time_sec = 1718000000;
    o.time_usec = 123456;
    char *out = NULL;
    assert_int_equal(tpl_render_ex(t, ctx, &o, &out, NULL, &err), TDM_OK);
    assert_string_equal(out, "<s>|None|False|r/r/{\"thinking\": \"r\", \"role\": \"assistant\", "
                             "\"content\": \"c\", \"reasoning\": \"r\", \"reasoning_content\": "
                             "\"r\"};//{\"role\": \"user\", \"content\": \"u\"};"
                             "2024-06-10 06:13:20.123456");
    free(out);
    /* context values win over the defaults */
    json_object_set_new(ctx, "bos_token", json_string("B"));
    json_object_set_new(ctx, "tools", json_array());
    o.no_reasoning_alias = true;
    assert_int_equal(tpl_render_ex(t, ctx, &o, &out, NULL, &err), TDM_OK);
    assert_non_null(strstr(out, "B|[]|False|/"));
    free(out);
    /* messages must be objects */
    json_object_set_new(ctx, "messages", json_loads("[1]", 0, NULL));
    o.no_reasoning_alias = false;
    assert_int_equal(tpl_render_ex(t, ctx, &o, &out, NULL, &err), TDM_ERR_INVALID_PARAM);
    json_decref(ctx);
    tpl_destroy(t);
}

static void test_bad_input_never_crashes(void **state)
{
    (void)state;
    /* truncated prefixes of a real-looking template all fail cleanly or render */
    const char *src = "{%- for m in messages if m.role != 'x' -%}{{ '<|' ~ m.role ~ '|>' }}"
                      "{% set ns = namespace(a=[1, {'k': (2, 3)}]) %}{{ ns.a[1].k[::-1]|tojson }}"
                      "{% macro f(a, b=none) %}{{ a|default('z') }}{% endmacro %}{{ f(1) }}"
                      "{% endfor %}{# end #}{% raw %}{{{% endraw %}";
    size_t n = strlen(src);
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    for (size_t k = 0; k <= n; k++) {
        memcpy(buf, src, k);
        buf[k] = '\0';
        tdm_status_t st;
        tdm_error_t err;
        char *out = render_ex(buf, CTX, NULL, &st, &err);
        if (out == NULL) {
            assert_true(err.msg[0] != '\0');
        }
        free(out);
    }
    free(buf);
    /* invalid UTF-8 and NUL bytes in the source */
    tpl_template_t *t = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    const char bad[] = "\xff\xfe{{ '\xc3' }}\0{{ 1 }}";
    assert_int_equal(tpl_compile_n(bad, sizeof(bad) - 1, &t, &err), TDM_OK);
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(tpl_render_ex(t, NULL, NULL, &out, &len, &err), TDM_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(out,
                        "\xff\xfe\xc3\0"
                        "1",
                        5);
    free(out);
    tpl_destroy(t);
    assert_int_equal(tpl_render(NULL, NULL, &out, &err), TDM_ERR_INVALID_PARAM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whitespace_control),
        cmocka_unit_test(test_expressions),
        cmocka_unit_test(test_python_formatting),
        cmocka_unit_test(test_statements),
        cmocka_unit_test(test_macros),
        cmocka_unit_test(test_filters_and_methods),
        cmocka_unit_test(test_tests),
        cmocka_unit_test(test_undefined),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_long_line_compiles_fast),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_chat_context),
        cmocka_unit_test(test_bad_input_never_crashes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
