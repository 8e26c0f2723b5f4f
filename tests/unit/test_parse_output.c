/*
 * test_parse_output.c - unit tests of the combined output parser (api/parse/output.c): the
 * "<think>" pipeline gives exactly what its two stages give when chained by hand, for every
 * split; the harmony pipeline forwards the harmony parser; the server's configurations
 * (MiniMax-M2 starting inside <think>, forced calls, tools off) come out right.
 */
#include "api/parse/output.h"
#include "api/parse/reasoning.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jansson.h>

static const char *const TOOLS =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {"
    "\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, "
    "\"days\": {\"type\": \"integer\"}}}}}]";

/* What a run produced: the texts and "name\x01args\x01reasoning offset\x01content offset\x02"
 * per call. */
typedef struct result {
    prs_buf_t reasoning, content, calls;
} result_t;

static void result_free(result_t *r)
{
    prs_buf_free(&r->reasoning);
    prs_buf_free(&r->content);
    prs_buf_free(&r->calls);
}

static void add_call(result_t *r, const char *name, const char *args)
{
    char num[64];
    assert_int_equal(prs_buf_append_str(&r->calls, name), TDM_OK);
    assert_int_equal(prs_buf_append_str(&r->calls, "\x01"), TDM_OK);
    assert_int_equal(prs_buf_append_str(&r->calls, args), TDM_OK);
    snprintf(num, sizeof(num), "\x01%zu\x01%zu\x02", r->reasoning.len, r->content.len);
    assert_int_equal(prs_buf_append_str(&r->calls, num), TDM_OK);
}

static void drain_output(prs_output_t *o, result_t *r, char **name)
{
    const prs_event_t *ev = prs_output_events(o);
    for (size_t k = 0; k < prs_output_n_events(o); k++) {
        switch (ev[k].kind) {
        case PRS_EV_CONTENT:
            assert_true(ev[k].len > 0);
            assert_int_equal(prs_buf_append(&r->content, ev[k].text, ev[k].len), TDM_OK);
            break;
        case PRS_EV_REASONING:
            assert_true(ev[k].len > 0);
            assert_int_equal(prs_buf_append(&r->reasoning, ev[k].text, ev[k].len), TDM_OK);
            break;
        case PRS_EV_CALL_BEGIN:
            *name = strdup(ev[k].text);
            break;
        case PRS_EV_CALL_ARGS:
            add_call(r, *name, ev[k].text);
            free(*name);
            *name = NULL;
            break;
        case PRS_EV_CALL_END:
            break;
        }
    }
    prs_output_clear_events(o);
}

/* The output parser over text fed in chunks of step bytes (0: whole). */
static result_t run_output(const prs_output_params_t *pp, const char *prime, const char *text,
                           size_t step)
{
    prs_output_t *o = NULL;
    assert_int_equal(prs_output_create(pp, &o, NULL), TDM_OK);
    result_t r = {0};
    char *name = NULL;
    if (prime != NULL) {
        assert_int_equal(prs_output_prime(o, prime, strlen(prime), NULL), TDM_OK);
        drain_output(o, &r, &name);
    }
    size_t n = strlen(text);
    for (size_t at = 0, len = 0; at < n; at += len) {
        len = step == 0 || n - at < step ? n - at : step;
        assert_int_equal(prs_output_feed(o, text + at, len, NULL), TDM_OK);
        drain_output(o, &r, &name);
    }
    assert_int_equal(prs_output_finish(o, NULL), TDM_OK);
    drain_output(o, &r, &name);
    assert_int_equal(prs_output_finish(o, NULL), TDM_OK);
    assert_null(name);
    assert_int_equal(prs_output_feed(o, "x", 1, NULL), TDM_ERR_INVALID_PARAM);
    prs_output_destroy(o);
    return r;
}

/* The two "<think>" stages chained by hand, as the server did before output.c. */
static result_t run_chain(const prs_output_params_t *pp, const char *prime, const char *text,
                          size_t step)
{
    prs_reasoning_t *rp = NULL;
    prs_tool_parser_t *tp = NULL;
    if (pp->reasoning) {
        assert_int_equal(prs_reasoning_create(NULL, NULL, pp->start_inside, &rp, NULL), TDM_OK);
    }
    if (pp->calls && pp->format != PRS_TOOL_NONE) {
        assert_int_equal(prs_tool_parser_create(pp->format, pp->tools, &tp, NULL), TDM_OK);
    }
    result_t r = {0};
    if (prime != NULL) {
        assert_int_equal(prs_tool_parser_prime(tp, prime, strlen(prime), NULL), TDM_OK);
    }
    size_t n = strlen(text);
    for (size_t at = 0, len = 0; at <= n; at += len) {
        bool fin = at == n;
        len = fin ? 1 : step == 0 || n - at < step ? n - at : step;
        const char *ct = text + at;
        size_t cl = fin ? 0 : len;
        if (rp != NULL) {
            if (fin) {
                assert_int_equal(prs_reasoning_finish(rp, NULL), TDM_OK);
            } else {
                assert_int_equal(prs_reasoning_feed(rp, ct, cl, NULL), TDM_OK);
            }
            prs_buf_t *rb = prs_reasoning_reasoning(rp), *cb = prs_reasoning_content(rp);
            assert_int_equal(prs_buf_append(&r.reasoning, rb->data, rb->len), TDM_OK);
            prs_buf_clear(rb);
            ct = cb->data;
            cl = cb->len;
        }
        if (tp == NULL) {
            assert_int_equal(prs_buf_append(&r.content, ct, cl), TDM_OK);
        } else {
            assert_int_equal(prs_tool_parser_feed(tp, ct, cl, NULL), TDM_OK);
            if (fin) {
                assert_int_equal(prs_tool_parser_finish(tp, NULL), TDM_OK);
            }
            const prs_tool_event_t *ev = prs_tool_parser_events(tp);
            const char *name = NULL;
            for (size_t k = 0; k < prs_tool_parser_n_events(tp); k++) {
                if (ev[k].kind == PRS_TOOL_EV_CONTENT) {
                    assert_int_equal(prs_buf_append(&r.content, ev[k].text, ev[k].len), TDM_OK);
                } else if (ev[k].kind == PRS_TOOL_EV_CALL_BEGIN) {
                    name = ev[k].text;
                } else if (ev[k].kind == PRS_TOOL_EV_CALL_ARGS) {
                    add_call(&r, name, ev[k].text);
                }
            }
            prs_tool_parser_clear_events(tp);
        }
        if (rp != NULL) {
            prs_buf_clear(prs_reasoning_content(rp));
        }
    }
    prs_reasoning_destroy(rp);
    prs_tool_parser_destroy(tp);
    return r;
}

static void assert_same(const prs_buf_t *a, const prs_buf_t *b, const char *what)
{
    if (a->len != b->len || (a->len > 0 && memcmp(a->data, b->data, a->len) != 0)) {
        fail_msg("%s differs: '%.*s' vs '%.*s'", what, (int)a->len, a->data ? a->data : "",
                 (int)b->len, b->data ? b->data : "");
    }
}

static void assert_text(const prs_buf_t *a, const char *want, const char *what)
{
    if (a->len != strlen(want) || (a->len > 0 && memcmp(a->data, want, a->len) != 0)) {
        fail_msg("%s: want '%s', got '%.*s'", what, want, (int)a->len, a->data ? a->data : "");
    }
}

#define TH "<think>\nThe user wants the weather.\n</think>\n\n"

static const struct {
    prs_tool_format_t fmt;
    bool calls, reasoning, start_inside;
    const char *prime, *text;
} chains[] = {
    {PRS_TOOL_HERMES, true, true, false, NULL,
     TH "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
        "</tool_call>"},
    {PRS_TOOL_HERMES, true, true, false, NULL, TH "Plain answer, <tool_call>oops</tool_call>."},
    {PRS_TOOL_HERMES, false, true, false, NULL, TH "<tool_call>\n{\"name\": \"f\"}\n</tool_call>"},
    {PRS_TOOL_QWEN3_CODER, true, false, false, NULL,
     "x <function=get_weather>\n<parameter=days>\n3\n</parameter>\n</function> y"},
    {PRS_TOOL_MINIMAX_M2, true, true, true, NULL,
     "The user wants the weather.\n</think>\n\nOn it.\n<minimax:tool_call>\n<invoke "
     "name=\"get_weather\">\n<parameter name=\"city\">Paris</parameter>\n<parameter "
     "name=\"days\">3</parameter>\n</invoke>\n</minimax:tool_call>"},
    {PRS_TOOL_MINIMAX_M2, true, true, true, NULL, "Still thinking <minimax:tool_call>"},
    {PRS_TOOL_MINIMAX_M2, true, true, false,
     "</think>\n\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n",
     "<parameter name=\"city\">Rome</parameter>\n</invoke>\n</minimax:tool_call>"},
    {PRS_TOOL_NONE, false, true, false, NULL, TH "answer"},
    {PRS_TOOL_NONE, false, false, false, NULL, "<think>x</think> passes"},
};

/* The "<think>" pipeline is exactly its stages chained, whole and in small chunks. */
static void test_think_pipeline_is_the_chain(void **state)
{
    (void)state;
    json_t *tools = json_loads(TOOLS, 0, NULL);
    assert_non_null(tools);
    for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++) {
        prs_output_params_t pp = {.format = chains[i].fmt,
                                  .calls = chains[i].calls,
                                  .tools = tools,
                                  .reasoning = chains[i].reasoning,
                                  .start_inside = chains[i].start_inside};
        result_t want = run_chain(&pp, chains[i].prime, chains[i].text, 0);
        for (size_t step = 0; step <= 9; step++) {
            result_t got = run_output(&pp, chains[i].prime, chains[i].text, step);
            assert_same(&got.reasoning, &want.reasoning, "reasoning");
            assert_same(&got.content, &want.content, "content");
            assert_same(&got.calls, &want.calls, "calls");
            result_t chained = run_chain(&pp, chains[i].prime, chains[i].text, step);
            assert_same(&chained.calls, &want.calls, "chained calls");
            result_free(&chained);
            result_free(&got);
        }
        result_free(&want);
    }
    json_decref(tools);
}

/* MiniMax-M2 as the server runs it: the prompt opened <think>, the call is typed. */
static void test_minimax_from_inside_think(void **state)
{
    (void)state;
    json_t *tools = json_loads(TOOLS, 0, NULL);
    prs_output_params_t pp = {.format = PRS_TOOL_MINIMAX_M2,
                              .calls = true,
                              .tools = tools,
                              .reasoning = true,
                              .start_inside = true};
    result_t r = run_output(&pp, NULL, chains[4].text, 3);
    assert_text(&r.reasoning, "The user wants the weather.\n", "reasoning");
    assert_text(&r.content, "On it.\n", "content");
    assert_text(&r.calls,
                "get_weather\x01{\"city\":\"Paris\",\"days\":3}\x01"
                "28\x01"
                "7\x02",
                "calls");
    result_free(&r);
    json_decref(tools);
}

/* Harmony through the output parser, with and without calls, and primed. */
static void test_harmony_pipeline(void **state)
{
    (void)state;
    const char *text = "<|channel|>analysis<|message|>Weather needed.<|end|><|start|>assistant"
                       "<|channel|>commentary to=functions.get_weather <|constrain|>json"
                       "<|message|>{\"city\": \"Paris\"}";
    prs_output_params_t pp = {.format = PRS_TOOL_HARMONY, .calls = true, .reasoning = true};
    for (size_t step = 0; step <= 5; step++) {
        result_t r = run_output(&pp, NULL, text, step);
        assert_text(&r.reasoning, "Weather needed.", "reasoning");
        assert_text(&r.content, "", "content");
        assert_text(&r.calls,
                    "get_weather\x01{\"city\":\"Paris\"}\x01"
                    "15\x01"
                    "0\x02",
                    "calls");
        result_free(&r);
    }
    pp.calls = false;
    result_t r = run_output(&pp, NULL, text, 0);
    assert_text(&r.reasoning, "Weather needed.", "reasoning");
    assert_text(&r.content,
                "<|start|>assistant<|channel|>commentary to=functions.get_weather "
                "<|constrain|>json<|message|>{\"city\": \"Paris\"}",
                "content");
    assert_text(&r.calls, "", "calls");
    result_free(&r);
    pp.calls = true;
    r = run_output(&pp, "<|channel|>commentary to=functions.f <|constrain|>json<|message|>",
                   "{\"a\": 1}", 1);
    assert_text(&r.calls,
                "f\x01{\"a\":1}\x01"
                "0\x01"
                "0\x02",
                "primed calls");
    result_free(&r);
}

static void test_errors(void **state)
{
    (void)state;
    prs_output_t *o = NULL;
    prs_output_params_t pp = {.format = (prs_tool_format_t)9};
    assert_int_equal(prs_output_create(&pp, &o, NULL), TDM_ERR_INVALID_PARAM);
    assert_null(o);
    json_t *obj = json_object();
    pp = (prs_output_params_t){.format = PRS_TOOL_HERMES, .calls = true, .tools = obj};
    assert_int_equal(prs_output_create(&pp, &o, NULL), TDM_ERR_INVALID_PARAM);
    json_decref(obj);
    /* no tool-call stage: nothing to prime */
    pp = (prs_output_params_t){.format = PRS_TOOL_HERMES, .calls = false, .reasoning = true};
    assert_int_equal(prs_output_create(&pp, &o, NULL), TDM_OK);
    assert_int_equal(prs_output_prime(o, "<tool_call>", 11, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_output_n_calls(o), 0);
    assert_null(prs_output_call_name(o, 0));
    assert_null(prs_output_call_args(o, 0));
    prs_output_destroy(o);
    prs_output_destroy(NULL);
    /* calls are reported by index */
    pp = (prs_output_params_t){.format = PRS_TOOL_HERMES, .calls = true};
    assert_int_equal(prs_output_create(&pp, &o, NULL), TDM_OK);
    const char *t = "<tool_call>{\"name\": \"f\"}</tool_call>";
    assert_int_equal(prs_output_feed(o, t, strlen(t), NULL), TDM_OK);
    assert_int_equal(prs_output_prime(o, "x", 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_output_n_calls(o), 1);
    assert_string_equal(prs_output_call_name(o, 0), "f");
    assert_string_equal(prs_output_call_args(o, 0), "{}");
    prs_output_destroy(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_think_pipeline_is_the_chain),
        cmocka_unit_test(test_minimax_from_inside_think),
        cmocka_unit_test(test_harmony_pipeline),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
