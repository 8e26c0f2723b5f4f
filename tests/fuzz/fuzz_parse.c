/*
 * fuzz_parse.c - libFuzzer harness for the output parsers (api/parse): the reasoning
 * splitter feeding the tool-call parser, as the server chains them.
 *
 * Input: byte 0 picks the options - bits 0-1 the tool format (none, hermes, qwen3_coder,
 * qwen3_coder), bit 2 the reasoning stage, bit 3 start_inside, bit 4 the tools array,
 * bit 5 a primed prefix, bit 6 other reasoning tags. Byte 1 seeds the chunk sizes (up to
 * (byte1 & 31) + 1 bytes, zero-length chunks included). The rest is the model output.
 *
 * Checked (abort() on failure): feeding the output in chunks gives the same reasoning,
 * the same content, the same calls at the same content offsets as feeding it at once;
 * every call has a non-empty UTF-8 name and arguments that are one JSON object; with no
 * valid call and nothing primed, the tool parser's content is exactly its input. Built
 * with -DTANDEM_FUZZ=ON (clang); replayed over tests/fuzz/corpus/parse by replay_main.c
 * in the unit tests.
 */
#include "api/parse/prs_json.h"
#include "api/parse/reasoning.h"
#include "api/parse/tool_call.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(x)                                                              \
    do {                                                                        \
        if (!(x)) {                                                             \
            fprintf(stderr, "fuzz_parse: %s failed (line %d)\n", #x, __LINE__); \
            abort();                                                            \
        }                                                                       \
    } while (0)

static const char TOOLS[] =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": "
    "{\"type\": \"integer\"}, \"ok\": {\"type\": \"boolean\"}, \"o\": {\"type\": \"object\"}, "
    "\"a\": {\"type\": [\"array\", \"null\"]}}}}}]";

typedef struct outputs {
    prs_buf_t reasoning;
    prs_buf_t tool_in; /* what the tool parser was fed */
    prs_buf_t content;
    prs_buf_t calls; /* "name\x01args\x01offset\x02" per call */
    size_t n_calls;
} outputs_t;

static void outputs_free(outputs_t *o)
{
    prs_buf_free(&o->reasoning);
    prs_buf_free(&o->tool_in);
    prs_buf_free(&o->content);
    prs_buf_free(&o->calls);
}

static void drain_tools(prs_tool_parser_t *t, outputs_t *o)
{
    const prs_tool_event_t *ev = prs_tool_parser_events(t);
    for (size_t k = 0; k < prs_tool_parser_n_events(t); k++) {
        char num[32];
        switch (ev[k].kind) {
        case PRS_TOOL_EV_CONTENT:
            REQUIRE(prs_buf_append(&o->content, ev[k].text, ev[k].len) == TDM_OK);
            break;
        case PRS_TOOL_EV_CALL_BEGIN:
            REQUIRE(ev[k].call == o->n_calls);
            REQUIRE(ev[k].len > 0 && prs_utf8_valid(ev[k].text, ev[k].len));
            REQUIRE(memchr(ev[k].text, '\0', ev[k].len) == NULL);
            REQUIRE(prs_buf_append(&o->calls, ev[k].text, ev[k].len) == TDM_OK);
            REQUIRE(prs_buf_append(&o->calls, "\x01", 1) == TDM_OK);
            break;
        case PRS_TOOL_EV_CALL_ARGS: {
            size_t vb, ve;
            REQUIRE(ev[k].call == o->n_calls);
            REQUIRE(prs_json_whole(ev[k].text, ev[k].len, &vb, &ve) == PRS_JSON_OBJECT);
            REQUIRE(vb == 0 && ve == ev[k].len);
            prs_buf_t mini = {0}; /* compact: minifying changes nothing */
            REQUIRE(prs_json_minify(ev[k].text, ev[k].len, &mini) == TDM_OK);
            REQUIRE(mini.len == ev[k].len && memcmp(mini.data, ev[k].text, mini.len) == 0);
            prs_buf_free(&mini);
            REQUIRE(prs_buf_append(&o->calls, ev[k].text, ev[k].len) == TDM_OK);
            break;
        }
        case PRS_TOOL_EV_CALL_END:
            REQUIRE(ev[k].call == o->n_calls);
            snprintf(num, sizeof(num), "\x01%zu\x02", o->content.len);
            REQUIRE(prs_buf_append_str(&o->calls, num) == TDM_OK);
            o->n_calls++;
            break;
        }
    }
    prs_tool_parser_clear_events(t);
}

/* Passes the reasoning stage's new content on to the tool parser. */
static void pump(prs_reasoning_t *r, prs_tool_parser_t *t, outputs_t *o)
{
    prs_buf_t *c = prs_reasoning_content(r), *rs = prs_reasoning_reasoning(r);
    REQUIRE(prs_buf_append(&o->reasoning, rs->data, rs->len) == TDM_OK);
    REQUIRE(prs_buf_append(&o->tool_in, c->data, c->len) == TDM_OK);
    REQUIRE(prs_tool_parser_feed(t, c->data, c->len, NULL) == TDM_OK);
    prs_buf_clear(c);
    prs_buf_clear(rs);
    drain_tools(t, o);
}

static void run(uint8_t opt, uint8_t split, const char *text, size_t n, const json_t *tools,
                outputs_t *o)
{
    static const prs_tool_format_t formats[] = {PRS_TOOL_NONE, PRS_TOOL_HERMES,
                                                PRS_TOOL_QWEN3_CODER, PRS_TOOL_QWEN3_CODER};
    prs_tool_format_t fmt = formats[opt & 3];
    bool with_reasoning = (opt & 4) != 0;
    prs_reasoning_t *r = NULL;
    prs_tool_parser_t *t = NULL;
    if (with_reasoning) {
        bool alt = (opt & 64) != 0;
        REQUIRE(prs_reasoning_create(alt ? "[THINK]" : NULL, alt ? "[/THINK]" : NULL,
                                     (opt & 8) != 0, &r, NULL) == TDM_OK);
    }
    REQUIRE(prs_tool_parser_create(fmt, (opt & 16) ? tools : NULL, &t, NULL) == TDM_OK);
    if (opt & 32) {
        const char *prime =
            fmt == PRS_TOOL_QWEN3_CODER ? "<tool_call>\n<function=get_weather>\n" : "<tool_call>\n";
        REQUIRE(prs_tool_parser_prime(t, prime, strlen(prime), NULL) == TDM_OK);
        drain_tools(t, o);
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)split * 0xBF58476D1CE4E5B9ull);
    size_t maxc = (size_t)(split & 31) + 1, at = 0;
    while (at < n) {
        size_t len = n - at;
        if (split != 0) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            size_t c = (size_t)(rng % (maxc + 1));
            len = c < len ? c : len;
        }
        if (r != NULL) {
            REQUIRE(prs_reasoning_feed(r, text + at, len, NULL) == TDM_OK);
            pump(r, t, o);
        } else {
            REQUIRE(prs_buf_append(&o->tool_in, text + at, len) == TDM_OK);
            REQUIRE(prs_tool_parser_feed(t, text + at, len, NULL) == TDM_OK);
            drain_tools(t, o);
        }
        at += len;
    }
    if (r != NULL) {
        REQUIRE(prs_reasoning_finish(r, NULL) == TDM_OK);
        pump(r, t, o);
    }
    REQUIRE(prs_tool_parser_finish(t, NULL) == TDM_OK);
    drain_tools(t, o);
    REQUIRE(prs_tool_parser_n_calls(t) == o->n_calls);
    if (o->n_calls == 0 && (opt & 32) == 0) {
        /* nothing is lost: without a call the content is the tool parser's input */
        REQUIRE(o->content.len == o->tool_in.len);
        REQUIRE(o->content.len == 0 ||
                memcmp(o->content.data, o->tool_in.data, o->content.len) == 0);
    }
    prs_reasoning_destroy(r);
    prs_tool_parser_destroy(t);
}

static bool same(const prs_buf_t *a, const prs_buf_t *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    json_t *tools = json_loads(TOOLS, 0, NULL);
    REQUIRE(tools != NULL);
    const char *text = (const char *)data + 2;
    size_t n = size - 2;
    outputs_t whole = {0}, split = {0};
    run(data[0], 0, text, n, tools, &whole);
    run(data[0], data[1] == 0 ? 1 : data[1], text, n, tools, &split);
    REQUIRE(same(&whole.reasoning, &split.reasoning));
    REQUIRE(same(&whole.tool_in, &split.tool_in));
    REQUIRE(same(&whole.content, &split.content));
    REQUIRE(same(&whole.calls, &split.calls));
    outputs_free(&whole);
    outputs_free(&split);
    json_decref(tools);
    return 0;
}
