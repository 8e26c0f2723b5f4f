/*
 * fuzz_template.c - libFuzzer harness for the chat-template engine: compiles the input
 * bytes as a Jinja template and, when that succeeds, renders it with a small fixed
 * context (messages with tool calls and reasoning, tools, flags) under tight limits, so
 * that hostile templates must end in a clean error instead of a crash, a hang or
 * unbounded memory. Built with -DTANDEM_FUZZ=ON (clang); replayed over
 * tests/fuzz/corpus/template by replay_main.c in the unit tests.
 */
#include "coordinator/template.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const CONTEXT =
    "{\"messages\": ["
    "{\"role\": \"system\", \"content\": \"You are a test.\"},"
    "{\"role\": \"user\", \"content\": \"Hi \\u00e9\\u4f60\\ud83d\\ude80 \\\"q\\\" \\\\ \\n\"},"
    "{\"role\": \"assistant\", \"content\": \"\", \"reasoning_content\": \"think\","
    " \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\", \"function\": {\"name\": \"f\","
    " \"arguments\": {\"a\": 1, \"b\": [1.5, null, true], \"c\": {\"d\": \"e\"}}}}]},"
    "{\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"{\\\"ok\\\": 1}\"},"
    "{\"role\": \"assistant\", \"content\": \"<think>x</think>done\"}],"
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"},"
    " \"items\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}}, \"required\": "
    "[\"a\"]}}}],"
    "\"add_generation_prompt\": true, \"enable_thinking\": false, \"reasoning_effort\": \"low\","
    "\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"n\": 3, \"x\": -2.5}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *ctx = NULL;
    if (ctx == NULL) {
        ctx = json_loads(CONTEXT, 0, NULL);
        if (ctx == NULL) {
            __builtin_trap(); /* the harness's own context must parse */
        }
    }
    tpl_template_t *tpl = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    if (tpl_compile_n((const char *)data, size, &tpl, &err) != TDM_OK) {
        if (err.msg[0] == '\0') {
            __builtin_trap(); /* a failure must say why */
        }
        return 0;
    }
    tpl_render_opts_t o = tpl_default_opts();
    o.limits.max_output = 1 << 16;
    o.limits.max_memory = 32u << 20;
    o.limits.max_iterations = 20000;
    o.limits.max_depth = 200;
    o.has_time = true;
    o.time_sec = 1700000000;
    char *out = NULL;
    size_t len = 0;
    tdm_error_clear(&err);
    tdm_status_t st = tpl_render_ex(tpl, ctx, &o, &out, &len, &err);
    if (st == TDM_OK) {
        if (out == NULL || strlen(out) > len) {
            __builtin_trap();
        }
        free(out);
    } else if (err.msg[0] == '\0') {
        __builtin_trap();
    }
    tpl_destroy(tpl);
    return 0;
}
