/*
 * fuzz_parse.c - libFuzzer harness for the output parsers (api/parse): the reasoning
 * splitter feeding the tool-call parser, as the server chains them, the combined parser
 * (output.h) over the same, and the gpt-oss harmony parser.
 *
 * Input: byte 0 picks the options. Bit 7 clear: bits 0-1 the tool format (none, hermes,
 * qwen3_coder, qwen3_coder). Bit 7 set: bits 0-1 pick minimax_m2 (0), harmony (1), harmony
 * with calls off (2) or mistral (3). Then bit 2 the reasoning stage, bit 3 start_inside,
 * bit 4 the tools array (harmony and mistral: a named rather than a "required" prime), bit
 * 5 a primed prefix, bit 6 other reasoning tags ([THINK], [/THINK]; mistral: a JSON-array
 * prime). Byte 1 seeds the chunk sizes (up to (byte1 & 31) + 1 bytes, zero-length chunks
 * included). The rest is the model output. FUZZ_PARSE_FORMAT=minimax_m2, harmony or
 * mistral in the environment pins the format (byte 0's other options still vary), for a
 * campaign on one format.
 *
 * Checked (abort() on failure): feeding the output in chunks gives the same reasoning,
 * the same content, the same calls at the same reasoning and content offsets as feeding it
 * at once; every call has a non-empty UTF-8 name and arguments that are one compact JSON
 * object, and an id only when it is a Mistral call's 9 letters and digits (the same in
 * every run). Reasoning + tool calls: with no valid call and nothing primed, the tool
 * parser's content is exactly its input; the combined parser gives exactly what the two
 * chained by hand give. Harmony: nothing is invented (reasoning and content together are at most
 * the output), and an output without "<|" is content exactly. Built with -DTANDEM_FUZZ=ON (clang);
 * replayed over tests/fuzz/corpus/parse by replay_main.c in the unit tests.
 */
#include "api/parse/output.h"
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
    prs_buf_t calls; /* "name\x01args\x01offset\x02" per call (harmony: both offsets) */
    size_t n_calls;
} outputs_t;

static void outputs_free(outputs_t *o)
{
    prs_buf_free(&o->reasoning);
    prs_buf_free(&o->tool_in);
    prs_buf_free(&o->content);
    prs_buf_free(&o->calls);
}

/* A call's name: non-empty UTF-8 without NUL. */
static void check_name(const char *s, size_t n)
{
    REQUIRE(n > 0 && prs_utf8_valid(s, n));
    REQUIRE(memchr(s, '\0', n) == NULL);
}

/* A call's id: none, or (Mistral only) 9 ASCII letters and digits. Appended to the calls
 * record so that split and whole runs must agree on it too. */
static void check_id(const char *id, prs_tool_format_t fmt, prs_buf_t *calls)
{
    if (id == NULL) {
        REQUIRE(prs_buf_append(calls, "\x01-", 2) == TDM_OK);
        return;
    }
    REQUIRE(fmt == PRS_TOOL_MISTRAL && strlen(id) == 9);
    for (size_t i = 0; i < 9; i++) {
        char c = id[i];
        REQUIRE((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
    }
    REQUIRE(prs_buf_append(calls, "\x01", 1) == TDM_OK);
    REQUIRE(prs_buf_append(calls, id, 9) == TDM_OK);
}

/* A call's arguments: exactly one JSON object, compact. */
static void check_args(const char *s, size_t n)
{
    size_t vb, ve;
    REQUIRE(prs_json_whole(s, n, &vb, &ve) == PRS_JSON_OBJECT);
    REQUIRE(vb == 0 && ve == n);
    prs_buf_t mini = {0}; /* compact: minifying changes nothing */
    REQUIRE(prs_json_minify(s, n, &mini) == TDM_OK);
    REQUIRE(mini.len == n && memcmp(mini.data, s, n) == 0);
    prs_buf_free(&mini);
}

static void drain_tools(prs_tool_parser_t *t, prs_tool_format_t fmt, outputs_t *o)
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
            check_name(ev[k].text, ev[k].len);
            REQUIRE(prs_buf_append(&o->calls, ev[k].text, ev[k].len) == TDM_OK);
            REQUIRE(prs_buf_append(&o->calls, "\x01", 1) == TDM_OK);
            break;
        case PRS_TOOL_EV_CALL_ARGS:
            REQUIRE(ev[k].call == o->n_calls);
            check_args(ev[k].text, ev[k].len);
            REQUIRE(prs_buf_append(&o->calls, ev[k].text, ev[k].len) == TDM_OK);
            break;
        case PRS_TOOL_EV_CALL_END:
            REQUIRE(ev[k].call == o->n_calls);
            check_id(prs_tool_parser_call_id(t, ev[k].call), fmt, &o->calls);
            snprintf(num, sizeof(num), "\x01%zu\x02", o->content.len);
            REQUIRE(prs_buf_append_str(&o->calls, num) == TDM_OK);
            o->n_calls++;
            break;
        }
    }
    prs_tool_parser_clear_events(t);
}

/* Passes the reasoning stage's new content on to the tool parser. */
static void pump(prs_reasoning_t *r, prs_tool_parser_t *t, prs_tool_format_t fmt, outputs_t *o)
{
    prs_buf_t *c = prs_reasoning_content(r), *rs = prs_reasoning_reasoning(r);
    REQUIRE(prs_buf_append(&o->reasoning, rs->data, rs->len) == TDM_OK);
    REQUIRE(prs_buf_append(&o->tool_in, c->data, c->len) == TDM_OK);
    REQUIRE(prs_tool_parser_feed(t, c->data, c->len, NULL) == TDM_OK);
    prs_buf_clear(c);
    prs_buf_clear(rs);
    drain_tools(t, fmt, o);
}

static prs_tool_format_t pick_format(uint8_t opt)
{
    static const prs_tool_format_t formats[] = {PRS_TOOL_NONE, PRS_TOOL_HERMES,
                                                PRS_TOOL_QWEN3_CODER, PRS_TOOL_QWEN3_CODER};
    static const prs_tool_format_t more[] = {PRS_TOOL_MINIMAX_M2, PRS_TOOL_HARMONY,
                                             PRS_TOOL_HARMONY, PRS_TOOL_MISTRAL};
    return (opt & 128) ? more[opt & 3] : formats[opt & 3];
}

/* The prefix the server primes a forced call with (tool_choice "required"). */
static const char *prime_text(prs_tool_format_t fmt, uint8_t opt)
{
    switch (fmt) {
    case PRS_TOOL_QWEN3_CODER:
        return "<tool_call>\n<function=get_weather>\n";
    case PRS_TOOL_MINIMAX_M2:
        return "</think>\n\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n";
    case PRS_TOOL_HARMONY:
        return (opt & 16) ? "<|channel|>commentary to=functions.get_weather <|constrain|>json"
                            "<|message|>"
                          : "<|channel|>commentary to=functions.";
    case PRS_TOOL_MISTRAL:
        if (opt & 64) {
            return (opt & 16) ? "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": "
                              : "[TOOL_CALLS][";
        }
        return (opt & 16) ? "[TOOL_CALLS]get_weather[ARGS]" : "[TOOL_CALLS]";
    default:
        return "<tool_call>\n";
    }
}

/* The size of the next chunk (split 0: all of it). */
static size_t next_chunk(uint64_t *rng, uint8_t split, size_t left)
{
    if (split == 0) {
        return left;
    }
    size_t maxc = (size_t)(split & 31) + 1;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    size_t c = (size_t)(*rng % (maxc + 1));
    return c < left ? c : left;
}

/* The combined parser's events, in the same shape as outputs_t. */
static void drain_output(prs_output_t *p, prs_tool_format_t fmt, outputs_t *o, bool both_offsets)
{
    const prs_event_t *ev = prs_output_events(p);
    for (size_t k = 0; k < prs_output_n_events(p); k++) {
        char num[64];
        switch (ev[k].kind) {
        case PRS_EV_CONTENT:
            REQUIRE(ev[k].len > 0);
            REQUIRE(prs_buf_append(&o->content, ev[k].text, ev[k].len) == TDM_OK);
            break;
        case PRS_EV_REASONING:
            REQUIRE(ev[k].len > 0);
            REQUIRE(prs_buf_append(&o->reasoning, ev[k].text, ev[k].len) == TDM_OK);
            break;
        case PRS_EV_CALL_BEGIN:
            REQUIRE(ev[k].call == o->n_calls);
            check_name(ev[k].text, ev[k].len);
            REQUIRE(prs_buf_append(&o->calls, ev[k].text, ev[k].len) == TDM_OK);
            REQUIRE(prs_buf_append(&o->calls, "\x01", 1) == TDM_OK);
            break;
        case PRS_EV_CALL_ARGS:
            REQUIRE(ev[k].call == o->n_calls);
            check_args(ev[k].text, ev[k].len);
            REQUIRE(prs_buf_append(&o->calls, ev[k].text, ev[k].len) == TDM_OK);
            break;
        case PRS_EV_CALL_END:
            REQUIRE(ev[k].call == o->n_calls);
            check_id(prs_output_call_id(p, ev[k].call), fmt, &o->calls);
            if (both_offsets) {
                snprintf(num, sizeof(num), "\x01%zu\x01%zu\x02", o->reasoning.len, o->content.len);
            } else {
                snprintf(num, sizeof(num), "\x01%zu\x02", o->content.len);
            }
            REQUIRE(prs_buf_append_str(&o->calls, num) == TDM_OK);
            o->n_calls++;
            break;
        }
    }
    prs_output_clear_events(p);
}

/* The combined parser over the output, chunked as run() chunks it. */
static void run_output(uint8_t opt, uint8_t split, const char *text, size_t n, const json_t *tools,
                       outputs_t *o)
{
    prs_tool_format_t fmt = pick_format(opt);
    bool harmony = fmt == PRS_TOOL_HARMONY;
    prs_output_params_t pp = {.format = fmt,
                              .calls = !(harmony && (opt & 3) == 2),
                              .tools = (opt & 16) ? tools : NULL,
                              .reasoning = (opt & 4) != 0,
                              .start_inside = (opt & 8) != 0};
    prs_output_t *p = NULL;
    REQUIRE(prs_output_create(&pp, &p, NULL) == TDM_OK);
    bool primed = (opt & 32) && (harmony || fmt != PRS_TOOL_NONE);
    if (primed) {
        const char *prime = prime_text(fmt, opt);
        REQUIRE(prs_output_prime(p, prime, strlen(prime), NULL) == TDM_OK);
        drain_output(p, fmt, o, harmony);
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)split * 0xBF58476D1CE4E5B9ull);
    for (size_t at = 0, len; at < n; at += len) {
        len = next_chunk(&rng, split, n - at);
        REQUIRE(prs_output_feed(p, text + at, len, NULL) == TDM_OK);
        drain_output(p, fmt, o, harmony);
    }
    REQUIRE(prs_output_finish(p, NULL) == TDM_OK);
    drain_output(p, fmt, o, harmony);
    REQUIRE(prs_output_n_calls(p) == o->n_calls);
    if (harmony) {
        /* markers and headers are dropped, primed text is never output; nothing is added */
        REQUIRE(o->reasoning.len + o->content.len <= n);
        if (!primed && prs_find(text, n, "<|", 2) == n) {
            REQUIRE(o->reasoning.len == 0 && o->n_calls == 0);
            REQUIRE(o->content.len == n && (n == 0 || memcmp(o->content.data, text, n) == 0));
        }
    }
    prs_output_destroy(p);
}

static void run(uint8_t opt, uint8_t split, const char *text, size_t n, const json_t *tools,
                outputs_t *o)
{
    prs_tool_format_t fmt = pick_format(opt);
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
        const char *prime = prime_text(fmt, opt);
        REQUIRE(prs_tool_parser_prime(t, prime, strlen(prime), NULL) == TDM_OK);
        drain_tools(t, fmt, o);
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)split * 0xBF58476D1CE4E5B9ull);
    size_t at = 0;
    while (at < n) {
        size_t len = next_chunk(&rng, split, n - at);
        if (r != NULL) {
            REQUIRE(prs_reasoning_feed(r, text + at, len, NULL) == TDM_OK);
            pump(r, t, fmt, o);
        } else {
            REQUIRE(prs_buf_append(&o->tool_in, text + at, len) == TDM_OK);
            REQUIRE(prs_tool_parser_feed(t, text + at, len, NULL) == TDM_OK);
            drain_tools(t, fmt, o);
        }
        at += len;
    }
    if (r != NULL) {
        REQUIRE(prs_reasoning_finish(r, NULL) == TDM_OK);
        pump(r, t, fmt, o);
    }
    REQUIRE(prs_tool_parser_finish(t, NULL) == TDM_OK);
    drain_tools(t, fmt, o);
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
    static json_t *tools; /* parsed once: the parsers only read it (they keep copies) */
    if (tools == NULL) {
        tools = json_loads(TOOLS, 0, NULL);
        REQUIRE(tools != NULL);
    }
    const char *text = (const char *)data + 2;
    size_t n = size - 2;
    uint8_t opt = data[0], chunks = data[1] == 0 ? 1 : data[1];
    static int pin = -1; /* 0 none, 1 minimax_m2, 2 harmony, 3 mistral */
    if (pin < 0) {
        const char *f = getenv("FUZZ_PARSE_FORMAT");
        pin = f == NULL                      ? 0
              : strcmp(f, "minimax_m2") == 0 ? 1
              : strcmp(f, "harmony") == 0    ? 2
              : strcmp(f, "mistral") == 0    ? 3
                                             : 0;
    }
    if (pin == 1) {
        opt = (uint8_t)((opt & 0x7C) | 0x80);
    } else if (pin == 2) {
        opt = (uint8_t)((opt & 0x7C) | 0x80 | ((opt & 2) ? 2 : 1));
    } else if (pin == 3) {
        opt = (uint8_t)((opt & 0x7C) | 0x83);
    }
    outputs_t whole = {0}, split = {0};
    if (pick_format(opt) == PRS_TOOL_HARMONY) {
        run_output(opt, 0, text, n, tools, &whole);
        run_output(opt, chunks, text, n, tools, &split);
    } else {
        run(opt, 0, text, n, tools, &whole);
        run(opt, chunks, text, n, tools, &split);
        if ((opt & 64) == 0) { /* the combined parser knows only the default tags */
            outputs_t comb = {0};
            run_output(opt, chunks, text, n, tools, &comb);
            REQUIRE(same(&whole.reasoning, &comb.reasoning));
            REQUIRE(same(&whole.content, &comb.content));
            REQUIRE(same(&whole.calls, &comb.calls));
            outputs_free(&comb);
        }
    }
    REQUIRE(same(&whole.reasoning, &split.reasoning));
    REQUIRE(same(&whole.tool_in, &split.tool_in));
    REQUIRE(same(&whole.content, &split.content));
    REQUIRE(same(&whole.calls, &split.calls));
    outputs_free(&whole);
    outputs_free(&split);
    return 0;
}
