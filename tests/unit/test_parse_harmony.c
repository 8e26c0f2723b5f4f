/*
 * test_parse_harmony.c - unit tests of the gpt-oss harmony parser (api/parse/harmony.c).
 *
 * Each case gives the text the server sees after the generation prompt "<|start|>assistant"
 * (the stop tokens <|call|> and <|return|> are usually absent: they end generation without
 * text) and, written by hand from the rules in harmony.h, the reasoning, the content and the
 * calls it must produce. Every case is run whole, split at every position, one byte at a
 * time and in random multi-way splits; each run must give the expected outputs with every
 * call at the same place in the reasoning and the content, and well-formed events.
 */
#include "api/parse/harmony.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jansson.h>

#define CH  "<|channel|>"
#define MSG "<|message|>"
#define END "<|end|>"
#define ST  "<|start|>"
#define RET "<|return|>"
#define CL  "<|call|>"
#define CON "<|constrain|>"
#define AS  ST "assistant"

typedef struct hcase {
    const char *what;
    bool calls;        /* calls parsed */
    const char *prime; /* NULL: none */
    const char *input;
    const char *reasoning;  /* expected */
    const char *content;    /* expected */
    const char *calls_json; /* expected: JSON array of [name, args]; args an object (compared */
                            /* structurally) or a string (the exact text)                   */
} hcase_t;

static const hcase_t cases[] = {
    /* ---- the usual conversations ---- */
    {"analysis then final", true, NULL,
     CH "analysis" MSG "The user greets." END AS CH "final" MSG "Hello!" RET, "The user greets.",
     "Hello!", "[]"},
    {"analysis then final, no stop token text", true, NULL,
     CH "analysis" MSG "The user greets." END AS CH "final" MSG "Hello!", "The user greets.",
     "Hello!", "[]"},
    {"final only", true, NULL, CH "final" MSG "Hi there.", "", "Hi there.", "[]"},
    {"analysis then call (recipient after the channel)", true, NULL,
     CH "analysis" MSG "Need the weather." END AS CH "commentary to=functions.get_weather " CON
        "json" MSG "{\"city\": \"Paris\"}",
     "Need the weather.", "", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"call ended by <|call|>", true, NULL,
     CH "analysis" MSG "Need the weather." END AS CH "commentary to=functions.get_weather " CON
        "json" MSG "{\"city\": \"Paris\"}" CL,
     "Need the weather.", "", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"recipient in the role part", true, NULL,
     CH "analysis" MSG "x" END ST "assistant to=functions.get_weather" CH "commentary json" MSG
        "{\"city\":\"Rome\",\"days\":2}" CL,
     "x", "", "[[\"get_weather\", {\"city\": \"Rome\", \"days\": 2}]]"},
    {"the first message is the call", true, NULL,
     " to=functions.list_files" CH "commentary json" MSG "{}", "", "", "[[\"list_files\", {}]]"},
    {"constrain right after the recipient", true, NULL,
     CH "commentary to=functions.f" CON "json" MSG "{\"a\":[1,{\"b\":null}]}", "", "",
     "[[\"f\", {\"a\": [1, {\"b\": null}]}]]"},
    {"preamble on commentary, then the call", true, NULL,
     CH "analysis" MSG "plan" END AS CH "commentary" MSG "Checking the weather now." END AS CH
        "commentary to=functions.get_weather " CON "json" MSG "{\"city\":\"Oslo\"}" CL,
     "plan", "Checking the weather now.", "[[\"get_weather\", {\"city\": \"Oslo\"}]]"},
    {"arguments compact, numbers as written", true, NULL,
     CH "commentary to=functions.f json" MSG
        "{\n  \"n\": 1.50,\n  \"big\": 12345678901234567890\n}",
     "", "", "[[\"f\", \"{\\\"n\\\":1.50,\\\"big\\\":12345678901234567890}\"]]"},
    {"several calls", true, NULL,
     CH "commentary to=functions.a json" MSG "{\"x\":1}" END AS CH
        "commentary to=functions.b json" MSG "{\"y\": [1, 2]}",
     "", "", "[[\"a\", {\"x\": 1}], [\"b\", {\"y\": [1, 2]}]]"},
    {"channels in another order", true, NULL,
     CH "final" MSG "A" END AS CH "analysis" MSG "B" END AS CH "final" MSG "C", "B", "AC", "[]"},
    {"analysis, call, analysis, final", true, NULL,
     CH "analysis" MSG "r1 " END AS CH "commentary to=functions.f json" MSG "{}" END AS CH
        "analysis" MSG "r2" END AS CH "final" MSG "done",
     "r1 r2", "done", "[[\"f\", {}]]"},
    {"unicode", true, NULL,
     CH "analysis" MSG "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82" END AS CH "final" MSG
        "\xe3\x81\x93\xf0\x9f\x99\x82",
     "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82", "\xe3\x81\x93\xf0\x9f\x99\x82", "[]"},
    {"markers-like text in bodies", true, NULL,
     CH "analysis" MSG "a <| b |> <|x|> <|message|> <|constrain|>" END AS CH "final" MSG
        "<b>bold</b> <|en d|>",
     "a <| b |> <|x|> <|message|> <|constrain|>", "<b>bold</b> <|en d|>", "[]"},

    /* ---- missing or stray markers ---- */
    {"missing <|end|> before <|start|>", true, NULL,
     CH "analysis" MSG "think" AS CH "final" MSG "ans", "think", "ans", "[]"},
    {"missing <|end|> and <|start|>", true, NULL, CH "analysis" MSG "think" CH "final" MSG "ans",
     "think", "ans", "[]"},
    {"missing <|end|> after a call", true, NULL,
     CH "commentary to=functions.f json" MSG "{\"k\":\"v\"}" AS CH "final" MSG "ok", "", "ok",
     "[[\"f\", {\"k\": \"v\"}]]"},
    {"stray commentary before the channel", true, NULL,
     CH "commentary" CH "analysis" MSG "t" END AS CH "commentary" CH "final" MSG "f", "t", "f",
     "[]"},
    {"whitespace after <|end|> dropped", true, NULL,
     CH "analysis" MSG "a" END "\n\n " AS CH "final" MSG "b", "a", "b", "[]"},
    {"text between messages is content", true, NULL,
     CH "analysis" MSG "a" END "junk " AS CH "final" MSG "b", "a", "junk b", "[]"},
    {"text after <|return|> is content as written", true, NULL,
     CH "final" MSG "done" RET "more" CH "x" END, "",
     "done"
     "more" CH "x" END,
     "[]"},
    {"text after <|call|> is content as written", true, NULL,
     CH "commentary to=functions.f json" MSG "{}" CL " extra" AS, "", " extra" AS, "[[\"f\", {}]]"},
    {"the model repeats the start", true, NULL, AS CH "final" MSG "x", "", "x", "[]"},
    {"reasoning left open", true, NULL, CH "analysis" MSG "thinking...", "thinking...", "", "[]"},
    {"partial marker at the end of reasoning", true, NULL, CH "analysis" MSG "abc<|en", "abc<|en",
     "", "[]"},
    {"partial marker at the end of content", true, NULL, CH "final" MSG "abc<|", "", "abc<|", "[]"},
    {"empty output", true, NULL, "", "", "", "[]"},
    {"empty bodies", true, NULL, CH "analysis" MSG END AS CH "final" MSG, "", "", "[]"},

    /* ---- not understood: content as written ---- */
    {"invalid arguments", true, NULL,
     CH "analysis" MSG "a" END AS CH "commentary to=functions.f " CON "json" MSG "{\"city\": }" CL,
     "a", AS CH "commentary to=functions.f " CON "json" MSG "{\"city\": }" CL, "[]"},
    {"arguments not an object", true, NULL, CH "commentary to=functions.f json" MSG "[1, 2]" END,
     "", CH "commentary to=functions.f json" MSG "[1, 2]" END, "[]"},
    {"empty arguments", true, NULL, CH "commentary to=functions.f json" MSG, "",
     CH "commentary to=functions.f json" MSG, "[]"},
    {"truncated call", true, NULL,
     CH "analysis" MSG "r" END AS CH "commentary to=functions.f json" MSG "{\"a\": 1", "r",
     AS CH "commentary to=functions.f json" MSG "{\"a\": 1", "[]"},
    {"bad call, then a good one", true, NULL,
     CH "commentary to=functions.a json" MSG "nope" END AS CH "commentary to=functions.b json" MSG
        "{}",
     "", CH "commentary to=functions.a json" MSG "nope" END, "[[\"b\", {}]]"},
    {"calls off", false, NULL,
     CH "analysis" MSG "r" END AS CH "commentary to=functions.f json" MSG "{}", "r",
     AS CH "commentary to=functions.f json" MSG "{}", "[]"},
    {"a built-in tool's recipient", true, NULL, CH "analysis to=python code" MSG "print(1)" CL, "",
     CH "analysis to=python code" MSG "print(1)" CL, "[]"},
    {"recipient functions. without a name", true, NULL, CH "commentary to=functions. json" MSG "{}",
     "", CH "commentary to=functions. json" MSG "{}", "[]"},
    {"unknown channel", true, NULL, CH "weird" MSG "x" END AS CH "final" MSG "y", "",
     CH "weird" MSG "x" END "y", "[]"},
    {"plain text, no harmony at all", true, NULL, "Hello, world.\nBye.", "", "Hello, world.\nBye.",
     "[]"},
    {"plain text of header characters only", true, NULL, "Hello world", "", "Hello world", "[]"},
    {"another marker in a header", true, NULL, CH "analysis" END "x", "", CH "analysis" END "x",
     "[]"},
    {"unfinished header", true, NULL, CH "analy", "", CH "analy", "[]"},
    {"header too long", true, NULL,
     CH "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" MSG
        "x",
     "",
     CH "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" MSG
        "x",
     "[]"},
    /* 11 + 5 + 240 = 256 bytes of header, one too many; 239 spaces fit */
    {"a header that fits", true, NULL,
     CH "final"
        "                                                                                "
        "                                                                                "
        "                                                                               " MSG "x",
     "", "x", "[]"},
    {"a header one byte too long", true, NULL,
     CH "final"
        "                                                                                "
        "                                                                                "
        "                                                                                " MSG "x",
     "",
     CH "final"
        "                                                                                "
        "                                                                                "
        "                                                                                " MSG "x",
     "[]"},

    /* ---- primed by the server (tool_choice) ---- */
    {"primed named function", true, CH "commentary to=functions.get_weather " CON "json" MSG,
     "{\"city\": \"Paris\"}", "", "", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"primed required", true, CH "commentary to=functions.",
     "get_weather " CON "json" MSG "{\"days\": 3}", "", "", "[[\"get_weather\", {\"days\": 3}]]"},
    {"primed but not a call", true, CH "commentary to=functions.", "Sorry, no.", "", "Sorry, no.",
     "[]"},
    {"primed, invalid arguments", true, CH "commentary to=functions.f json" MSG, "{oops} then", "",
     "{oops} then", "[]"},
};

/* ---- running a case ---------------------------------------------------------------- */

typedef struct outcome {
    prs_buf_t reasoning, content;
    json_t *calls; /* [[name, args, reasoning offset, content offset], ...] */
} outcome_t;

static void outcome_free(outcome_t *o)
{
    prs_buf_free(&o->reasoning);
    prs_buf_free(&o->content);
    json_decref(o->calls);
}

static void drain(prs_harmony_t *p, outcome_t *o, json_t **cur)
{
    const prs_event_t *ev = prs_harmony_events(p);
    for (size_t k = 0; k < prs_harmony_n_events(p); k++) {
        assert_int_equal(ev[k].text[ev[k].len], '\0');
        switch (ev[k].kind) {
        case PRS_EV_CONTENT:
        case PRS_EV_REASONING:
            assert_null(*cur);
            assert_true(ev[k].len > 0);
            assert_int_equal(
                prs_buf_append(ev[k].kind == PRS_EV_CONTENT ? &o->content : &o->reasoning,
                               ev[k].text, ev[k].len),
                TDM_OK);
            break;
        case PRS_EV_CALL_BEGIN:
            assert_null(*cur);
            assert_int_equal(ev[k].call, json_array_size(o->calls));
            *cur = json_pack("[s, s, I, I]", ev[k].text, "", (json_int_t)o->reasoning.len,
                             (json_int_t)o->content.len);
            break;
        case PRS_EV_CALL_ARGS: {
            assert_non_null(*cur);
            assert_int_equal(ev[k].call, json_array_size(o->calls));
            char *joined = NULL;
            assert_true(asprintf(&joined, "%s%s", json_string_value(json_array_get(*cur, 1)),
                                 ev[k].text) > 0);
            json_array_set_new(*cur, 1, json_string(joined));
            free(joined);
            break;
        }
        case PRS_EV_CALL_END:
            assert_non_null(*cur);
            assert_int_equal(ev[k].call, json_array_size(o->calls));
            json_array_append_new(o->calls, *cur);
            *cur = NULL;
            break;
        }
    }
    prs_harmony_clear_events(p);
}

/* Feeds the case's input cut at cuts[0..ncut) and collects what the events say. */
static outcome_t run_split(const hcase_t *c, const size_t *cuts, size_t ncut)
{
    prs_harmony_t *p = NULL;
    assert_int_equal(prs_harmony_create(c->calls, &p, NULL), TDM_OK);
    outcome_t o = {.calls = json_array()};
    json_t *cur = NULL;
    if (c->prime != NULL) {
        assert_int_equal(prs_harmony_prime(p, c->prime, strlen(c->prime), NULL), TDM_OK);
        drain(p, &o, &cur);
    }
    size_t n = strlen(c->input), at = 0;
    for (size_t i = 0; i <= ncut + 1; i++) {
        if (i <= ncut) {
            size_t to = i < ncut ? cuts[i] : n;
            assert_int_equal(prs_harmony_feed(p, c->input + at, to - at, NULL), TDM_OK);
            at = to;
        } else {
            assert_int_equal(prs_harmony_finish(p, NULL), TDM_OK);
            assert_false(prs_harmony_in_call(p));
        }
        drain(p, &o, &cur);
    }
    assert_null(cur);
    assert_int_equal(prs_harmony_n_calls(p), json_array_size(o.calls));
    for (size_t k = 0; k < json_array_size(o.calls); k++) {
        json_t *e = json_array_get(o.calls, k);
        assert_string_equal(prs_harmony_call_name(p, k), json_string_value(json_array_get(e, 0)));
        assert_string_equal(prs_harmony_call_args(p, k), json_string_value(json_array_get(e, 1)));
    }
    assert_null(prs_harmony_call_name(p, json_array_size(o.calls)));
    prs_harmony_destroy(p);
    return o;
}

static void check_text(const hcase_t *c, const char *how, const char *which, const prs_buf_t *got,
                       const char *want)
{
    if (got->len != strlen(want) || (got->len > 0 && memcmp(got->data, want, got->len) != 0)) {
        fail_msg("%s (%s): %s\n  want '%s'\n  got  '%.*s'", c->what, how, which, want,
                 (int)got->len, got->data ? got->data : "");
    }
}

static void check_outcome(size_t ci, const outcome_t *o, const char *how)
{
    const hcase_t *c = &cases[ci];
    check_text(c, how, "reasoning", &o->reasoning, c->reasoning);
    check_text(c, how, "content", &o->content, c->content);
    json_error_t jerr;
    json_t *want = json_loads(c->calls_json, 0, &jerr);
    if (want == NULL) {
        fail_msg("%s: bad expected calls: %s", c->what, jerr.text);
    }
    if (json_array_size(want) != json_array_size(o->calls)) {
        char *got = json_dumps(o->calls, 0);
        fail_msg("%s (%s): want %zu calls, got %s", c->what, how, json_array_size(want), got);
    }
    for (size_t k = 0; k < json_array_size(want); k++) {
        json_t *w = json_array_get(want, k), *g = json_array_get(o->calls, k);
        assert_string_equal(json_string_value(json_array_get(g, 0)),
                            json_string_value(json_array_get(w, 0)));
        const char *gargs = json_string_value(json_array_get(g, 1));
        json_t *wargs = json_array_get(w, 1);
        if (json_is_string(wargs)) {
            if (strcmp(gargs, json_string_value(wargs)) != 0) {
                fail_msg("%s (%s): call %zu args\n  want %s\n  got  %s", c->what, how, k,
                         json_string_value(wargs), gargs);
            }
        } else {
            json_t *ga = json_loads(gargs, 0, &jerr);
            if (ga == NULL || !json_is_object(ga) || !json_equal(ga, wargs)) {
                fail_msg("%s (%s): call %zu args %s", c->what, how, k, gargs);
            }
            json_decref(ga);
        }
    }
    json_decref(want);
}

static void test_cases_whole(void **state)
{
    (void)state;
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        outcome_t o = run_split(&cases[ci], NULL, 0);
        check_outcome(ci, &o, "whole");
        outcome_free(&o);
    }
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static void check_split(size_t ci, const outcome_t *whole, const size_t *cuts, size_t ncut,
                        const char *how)
{
    outcome_t o = run_split(&cases[ci], cuts, ncut);
    check_outcome(ci, &o, how);
    if (!json_equal(o.calls, whole->calls)) {
        char *a = json_dumps(whole->calls, 0), *b = json_dumps(o.calls, 0);
        fail_msg("%s (%s): calls differ from the whole run\n  whole %s\n  split %s", cases[ci].what,
                 how, a, b);
    }
    outcome_free(&o);
}

/* Property: any split gives the expected outputs, with calls at the same places. */
static void test_cases_every_split(void **state)
{
    (void)state;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        outcome_t whole = run_split(&cases[ci], NULL, 0);
        size_t n = strlen(cases[ci].input);
        for (size_t cut = 0; cut <= n; cut++) {
            check_split(ci, &whole, &cut, 1, "one cut");
        }
        size_t *cuts = malloc((n + 1) * sizeof(*cuts));
        for (size_t i = 0; i < n; i++) {
            cuts[i] = i + 1;
        }
        check_split(ci, &whole, cuts, n, "bytewise");
        for (int t = 0; t < 100; t++) {
            size_t k = (size_t)(next_rand(&rng) % (n + 1));
            for (size_t i = 0; i < k; i++) {
                cuts[i] = (size_t)(next_rand(&rng) % (n + 1));
            }
            qsort(cuts, k, sizeof(*cuts), cmp_size);
            check_split(ci, &whole, cuts, k, "random cuts");
        }
        free(cuts);
        outcome_free(&whole);
    }
}

/* ---- state, errors, limits ----------------------------------------------------------- */

static void test_errors_and_state(void **state)
{
    (void)state;
    prs_harmony_destroy(NULL);
    prs_harmony_t *p = NULL;
    assert_int_equal(prs_harmony_create(true, &p, NULL), TDM_OK);
    const char *pre = CH "commentary to=functions.f json" MSG;
    assert_int_equal(prs_harmony_prime(p, pre, strlen(pre), NULL), TDM_OK);
    assert_true(prs_harmony_in_call(p));
    assert_int_equal(prs_harmony_n_events(p), 0);
    assert_int_equal(prs_harmony_feed(p, "{\"a\":", 5, NULL), TDM_OK);
    assert_int_equal(prs_harmony_prime(p, "x", 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_harmony_feed(p, "1}" END, 2 + strlen(END), NULL), TDM_OK);
    assert_false(prs_harmony_in_call(p));
    assert_int_equal(prs_harmony_n_events(p), 3);
    const prs_event_t *ev = prs_harmony_events(p);
    assert_int_equal(ev[0].kind, PRS_EV_CALL_BEGIN);
    assert_string_equal(ev[0].text, "f");
    assert_int_equal(ev[1].kind, PRS_EV_CALL_ARGS);
    assert_string_equal(ev[1].text, "{\"a\":1}");
    assert_int_equal(ev[2].kind, PRS_EV_CALL_END);
    prs_harmony_clear_events(p);
    /* reasoning and content of one feed come in order, each merged */
    const char *more = AS CH "analysis" MSG "a"
                             "b" END AS CH "final" MSG "c";
    assert_int_equal(prs_harmony_feed(p, more, strlen(more), NULL), TDM_OK);
    assert_int_equal(prs_harmony_n_events(p), 2);
    assert_int_equal(prs_harmony_events(p)[0].kind, PRS_EV_REASONING);
    assert_string_equal(prs_harmony_events(p)[0].text, "ab");
    assert_int_equal(prs_harmony_events(p)[1].kind, PRS_EV_CONTENT);
    assert_string_equal(prs_harmony_events(p)[1].text, "c");
    assert_int_equal(prs_harmony_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_harmony_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_harmony_feed(p, "x", 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_harmony_prime(p, "x", 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_harmony_n_calls(p), 1);
    prs_harmony_destroy(p);

    /* NUL bytes are carried by length */
    assert_int_equal(prs_harmony_create(true, &p, NULL), TDM_OK);
    const char nul[] = CH "final" MSG "a\0b";
    assert_int_equal(prs_harmony_feed(p, nul, sizeof(nul) - 1, NULL), TDM_OK);
    assert_int_equal(prs_harmony_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_harmony_n_events(p), 1);
    assert_int_equal(prs_harmony_events(p)[0].len, 3);
    assert_memory_equal(prs_harmony_events(p)[0].text, "a\0b", 4);
    prs_harmony_destroy(p);
}

/* A call message not ended within PRS_TOOL_MAX_CALL_BYTES is given back as content (and the
 * rest of its body is content too); one that fits is a call. */
static void test_call_size_limit(void **state)
{
    (void)state;
    const size_t cap = 1u << 20;
    const char *head = CH "commentary to=functions.f json" MSG "{\"s\": \"";
    const char *tail = "\"}" END;
    for (int over = 0; over <= 1; over++) {
        /* the message with its terminator is exactly cap bytes, or one more when over (the
         * terminator must be seen within the limit for the message to end) */
        size_t pad = cap - strlen(head) - strlen(tail) + (size_t)over;
        size_t n = strlen(head) + pad + strlen(tail) + 2;
        char *in = malloc(n + 1);
        strcpy(in, head);
        memset(in + strlen(head), 'x', pad);
        strcpy(in + strlen(head) + pad, tail);
        strcat(in, "ok");
        const size_t chunks[] = {n, 4096, 7};
        for (size_t ch = 0; ch < 3; ch++) {
            prs_harmony_t *p = NULL;
            assert_int_equal(prs_harmony_create(true, &p, NULL), TDM_OK);
            size_t content = 0, calls = 0;
            for (size_t at = 0, len = 0; at < n; at += len) {
                len = n - at < chunks[ch] ? n - at : chunks[ch];
                assert_int_equal(prs_harmony_feed(p, in + at, len, NULL), TDM_OK);
                if (at + len == n) {
                    assert_int_equal(prs_harmony_finish(p, NULL), TDM_OK);
                }
                for (size_t k = 0; k < prs_harmony_n_events(p); k++) {
                    const prs_event_t *e = &prs_harmony_events(p)[k];
                    content += e->kind == PRS_EV_CONTENT ? e->len : 0;
                    calls += e->kind == PRS_EV_CALL_END;
                }
                prs_harmony_clear_events(p);
            }
            assert_int_equal(calls, over ? 0 : 1);
            /* over: everything is content, markers included ("<|end|>" ends the message
             * given back as text, then "ok" follows) */
            assert_int_equal(content, over ? n : 2);
            prs_harmony_destroy(p);
        }
        free(in);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_whole),
        cmocka_unit_test(test_cases_every_split),
        cmocka_unit_test(test_errors_and_state),
        cmocka_unit_test(test_call_size_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
