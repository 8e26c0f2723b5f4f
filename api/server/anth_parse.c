/*
 * anth_parse.c - Anthropic Messages request bodies -> a chat request (see anth_parse.h).
 *
 * The conversion builds the JSON body a chat completions client would have sent and hands
 * it to srv_parse_gen_json. Everything Anthropic defines differently from OpenAI (ranges,
 * required fields, block types) is checked here first, so errors name what the client
 * wrote ("messages[2].content[0].tool_use_id").
 */
#include "api/server/anth_parse.h"

#include "api/server/json_util.h"
#include "coordinator/stop_strings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ANTH_MAX_TOOL_NAME 128

typedef struct actx {
    srv_perr_t pe;      /* no parameter names: the messages carry the path           */
    json_t *msgs;       /* the chat messages so far                                  */
    json_t *call_names; /* tool_use id -> tool name, for the tool messages' "name"   */
    json_t *prefill;    /* a final assistant message's text (a JSON string) or NULL  */
} actx_t;

/* Appends text to the growing string *acc (a JSON string, or NULL for none yet), with a
 * newline between blocks, as the chat API joins its text parts. */
static void join_text(json_t **acc, const json_t *text)
{
    if (*acc == NULL) {
        *acc = json_incref((json_t *)text);
        return;
    }
    size_t a = json_string_length(*acc), b = json_string_length(text);
    char *buf = malloc(a + b + 2);
    if (buf == NULL) {
        return;
    }
    memcpy(buf, json_string_value(*acc), a);
    buf[a] = '\n';
    memcpy(buf + a + 1, json_string_value(text), b);
    json_t *joined = json_stringn(buf, a + b + 1);
    free(buf);
    if (joined != NULL) {
        json_decref(*acc);
        *acc = joined;
    }
}

/* A text block's text ({"type": "text", "text": "..."}; cache_control and citations are
 * accepted and have no effect). */
static tdm_status_t text_block(actx_t *c, const json_t *b, const char *pname, json_t **acc)
{
    json_t *text = json_object_get(b, "text");
    if (!json_is_string(text)) {
        return srv_fail(&c->pe, NULL, "%s.text must be a string", pname);
    }
    join_text(acc, text);
    return TDM_OK;
}

static tdm_status_t unsupported_block(actx_t *c, const json_t *type, const char *pname)
{
    if (srv_json_is_str(type, "image") || srv_json_is_str(type, "document")) {
        return srv_fail(&c->pe, NULL,
                        "%s: %s blocks are not supported (this server reads text only)", pname,
                        json_string_value(type));
    }
    return srv_fail(&c->pe, NULL, "%s.type '%s' is not a content block type this server knows",
                    pname, json_is_string(type) ? json_string_value(type) : "?");
}

/* system: a string or an array of text blocks. */
static tdm_status_t parse_system(actx_t *c, const json_t *o)
{
    json_t *sys = srv_json_get(o, "system");
    if (sys == NULL) {
        return TDM_OK;
    }
    json_t *text = NULL;
    if (json_is_string(sys)) {
        text = json_incref(sys);
    } else if (json_is_array(sys)) {
        size_t i;
        json_t *b;
        json_array_foreach(sys, i, b)
        {
            char pname[48];
            snprintf(pname, sizeof(pname), "system[%zu]", i);
            json_t *type = json_object_get(b, "type");
            if (!json_is_object(b) || !srv_json_is_str(type, "text")) {
                json_decref(text);
                return srv_fail(&c->pe, NULL, "%s must be a text block", pname);
            }
            tdm_status_t st = text_block(c, b, pname, &text);
            if (st != TDM_OK) {
                json_decref(text);
                return st;
            }
        }
    } else {
        return srv_fail(&c->pe, NULL, "system must be a string or an array of text blocks");
    }
    if (text != NULL) {
        json_array_append_new(c->msgs, json_pack("{s:s, s:o}", "role", "system", "content", text));
    }
    return TDM_OK;
}

/* A tool_result's content: a string or text blocks. An image or document a tool returned
 * (Claude Code's Read on a picture or a PDF) becomes a line saying so: refusing it would
 * refuse every later turn of the conversation, which carries it along. */
static tdm_status_t tool_result_text(actx_t *c, const json_t *content, const char *pname,
                                     json_t **out)
{
    *out = NULL;
    if (content == NULL || json_is_null(content)) {
        *out = json_string("");
        return TDM_OK;
    }
    if (json_is_string(content)) {
        *out = json_incref((json_t *)content);
        return TDM_OK;
    }
    if (!json_is_array(content)) {
        return srv_fail(&c->pe, NULL, "%s.content must be a string or an array of content blocks",
                        pname);
    }
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        char bname[96];
        snprintf(bname, sizeof(bname), "%s.content[%zu]", pname, i);
        json_t *type = json_object_get(b, "type");
        tdm_status_t st;
        if (json_is_object(b) &&
            (srv_json_is_str(type, "image") || srv_json_is_str(type, "document"))) {
            json_t *note =
                json_sprintf("[%s omitted: this model reads text only]", json_string_value(type));
            if (note != NULL) {
                join_text(out, note);
                json_decref(note);
            }
            st = TDM_OK;
        } else {
            st = json_is_object(b) && srv_json_is_str(type, "text")
                     ? text_block(c, b, bname, out)
                     : unsupported_block(c, type, bname);
        }
        if (st != TDM_OK) {
            json_decref(*out);
            *out = NULL;
            return st;
        }
    }
    if (*out == NULL) {
        *out = json_string("");
    }
    return TDM_OK;
}

static void flush_user(actx_t *c, json_t **text)
{
    if (*text != NULL) {
        json_array_append_new(c->msgs, json_pack("{s:s, s:o}", "role", "user", "content", *text));
        *text = NULL;
    }
}

/* A user turn: text blocks become a user message, each tool_result a tool message (in the
 * order written; Anthropic puts the results first). */
static tdm_status_t user_blocks(actx_t *c, const json_t *content, size_t mi)
{
    json_t *text = NULL;
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        char pname[64];
        snprintf(pname, sizeof(pname), "messages[%zu].content[%zu]", mi, i);
        json_t *type = json_object_get(b, "type");
        tdm_status_t st = TDM_OK;
        if (!json_is_object(b)) {
            st = srv_fail(&c->pe, NULL, "%s must be a content block", pname);
        } else if (srv_json_is_str(type, "text")) {
            st = text_block(c, b, pname, &text);
        } else if (srv_json_is_str(type, "tool_result")) {
            json_t *id = json_object_get(b, "tool_use_id");
            json_t *is_error = srv_json_get(b, "is_error");
            json_t *out = NULL;
            if (!json_is_string(id) || json_string_length(id) == 0) {
                st = srv_fail(&c->pe, NULL, "%s.tool_use_id must be a non-empty string", pname);
            } else if (is_error != NULL && !json_is_boolean(is_error)) {
                st = srv_fail(&c->pe, NULL, "%s.is_error must be a boolean", pname);
            } else {
                st = tool_result_text(c, srv_json_get(b, "content"), pname, &out);
            }
            if (st == TDM_OK) {
                flush_user(c, &text);
                json_t *m = json_pack("{s:s, s:O, s:o}", "role", "tool", "tool_call_id", id,
                                      "content", out);
                json_t *name = json_object_get(c->call_names, json_string_value(id));
                if (name != NULL) {
                    json_object_set(m, "name", name);
                }
                json_array_append_new(c->msgs, m);
            }
        } else {
            st = unsupported_block(c, type, pname);
        }
        if (st != TDM_OK) {
            json_decref(text);
            return st;
        }
    }
    flush_user(c, &text);
    return TDM_OK;
}

/* An assistant turn: text blocks its content, tool_use blocks its tool_calls, thinking
 * blocks its reasoning_content; redacted_thinking is opaque (it was never ours). */
static tdm_status_t assistant_blocks(actx_t *c, const json_t *content, size_t mi)
{
    json_t *text = NULL, *reasoning = NULL, *calls = NULL;
    tdm_status_t st = TDM_OK;
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        char pname[64];
        snprintf(pname, sizeof(pname), "messages[%zu].content[%zu]", mi, i);
        json_t *type = json_object_get(b, "type");
        if (!json_is_object(b)) {
            st = srv_fail(&c->pe, NULL, "%s must be a content block", pname);
        } else if (srv_json_is_str(type, "text")) {
            st = text_block(c, b, pname, &text);
        } else if (srv_json_is_str(type, "thinking")) {
            json_t *t = json_object_get(b, "thinking");
            if (!json_is_string(t)) {
                st = srv_fail(&c->pe, NULL, "%s.thinking must be a string", pname);
            } else {
                join_text(&reasoning, t);
            }
        } else if (srv_json_is_str(type, "redacted_thinking")) {
            /* nothing the model can read */
        } else if (srv_json_is_str(type, "tool_use")) {
            json_t *id = json_object_get(b, "id"), *name = json_object_get(b, "name");
            json_t *input = srv_json_get(b, "input");
            if (!json_is_string(id) || json_string_length(id) == 0) {
                st = srv_fail(&c->pe, NULL, "%s.id must be a non-empty string", pname);
            } else if (!json_is_string(name) || json_string_length(name) == 0) {
                st = srv_fail(&c->pe, NULL, "%s.name must be a non-empty string", pname);
            } else if (input != NULL && !json_is_object(input)) {
                st = srv_fail(&c->pe, NULL, "%s.input must be an object", pname);
            } else {
                calls = calls != NULL ? calls : json_array();
                json_array_append_new(
                    calls, json_pack("{s:O, s:s, s:{s:O, s:o}}", "id", id, "type", "function",
                                     "function", "name", name, "arguments",
                                     input != NULL ? json_incref(input) : json_object()));
                json_object_set(c->call_names, json_string_value(id), name);
            }
        } else {
            st = unsupported_block(c, type, pname);
        }
        if (st != TDM_OK) {
            break;
        }
    }
    if (st != TDM_OK) {
        json_decref(text);
        json_decref(reasoning);
        json_decref(calls);
        return st;
    }
    json_t *m = json_pack("{s:s, s:o}", "role", "assistant", "content",
                          text != NULL ? text : json_string(""));
    if (reasoning != NULL) {
        json_object_set_new(m, "reasoning_content", reasoning);
    }
    if (calls != NULL) {
        json_object_set_new(m, "tool_calls", calls);
    }
    json_array_append_new(c->msgs, m);
    return TDM_OK;
}

static tdm_status_t parse_messages(actx_t *c, const json_t *o)
{
    json_t *msgs = srv_json_get(o, "messages");
    if (msgs == NULL) {
        return srv_fail(&c->pe, NULL, "messages: field required");
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        return srv_fail(&c->pe, NULL, "messages must be a non-empty array");
    }
    if (json_array_size(msgs) > SRV_MAX_MESSAGES) {
        return srv_fail(&c->pe, NULL, "at most %d messages are allowed", SRV_MAX_MESSAGES);
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *role = json_object_get(m, "role");
        json_t *content = json_object_get(m, "content");
        bool user = srv_json_is_str(role, "user");
        if (!json_is_object(m)) {
            return srv_fail(&c->pe, NULL, "messages[%zu] must be an object", i);
        }
        if (!user && !srv_json_is_str(role, "assistant")) {
            return srv_fail(&c->pe, NULL, "messages[%zu].role must be \"user\" or \"assistant\"",
                            i);
        }
        if (json_is_string(content)) {
            json_array_append_new(c->msgs,
                                  json_pack("{s:O, s:O}", "role", role, "content", content));
        } else if (json_is_array(content)) {
            SRV_TRY(user ? user_blocks(c, content, i) : assistant_blocks(c, content, i));
        } else {
            return srv_fail(&c->pe, NULL,
                            "messages[%zu].content must be a string or an array of content blocks",
                            i);
        }
    }
    /* A final assistant message is a prefill: the reply continues its text (unless it holds
     * tool calls, which only a tool result can follow). */
    json_t *last = json_array_get(c->msgs, json_array_size(c->msgs) - 1);
    if (srv_json_is_str(json_object_get(json_array_get(msgs, json_array_size(msgs) - 1), "role"),
                        "assistant") &&
        json_object_get(last, "tool_calls") == NULL) {
        c->prefill = json_incref(json_object_get(last, "content"));
        json_array_remove(c->msgs, json_array_size(c->msgs) - 1);
    }
    return TDM_OK;
}

static tdm_status_t parse_tools(actx_t *c, const json_t *o, json_t *chat)
{
    json_t *tools = srv_json_get(o, "tools");
    if (tools != NULL) {
        if (!json_is_array(tools)) {
            return srv_fail(&c->pe, NULL, "tools must be an array");
        }
        if (json_array_size(tools) > SRV_MAX_TOOLS) {
            return srv_fail(&c->pe, NULL, "at most %d tools are allowed", SRV_MAX_TOOLS);
        }
        json_t *out = json_array();
        json_object_set_new(chat, "tools", out);
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t)
        {
            json_t *type = srv_json_get(t, "type"), *name = json_object_get(t, "name");
            json_t *desc = srv_json_get(t, "description"),
                   *schema = json_object_get(t, "input_schema");
            if (!json_is_object(t)) {
                return srv_fail(&c->pe, NULL, "tools[%zu] must be an object", i);
            }
            if (type != NULL && !srv_json_is_str(type, "custom")) {
                return srv_fail(&c->pe, NULL,
                                "tools[%zu]: tool type '%s' is not supported (only client tools "
                                "with an input_schema)",
                                i, json_is_string(type) ? json_string_value(type) : "?");
            }
            if (!srv_valid_tool_name(name, ANTH_MAX_TOOL_NAME)) {
                return srv_fail(&c->pe, NULL,
                                "tools[%zu].name must be 1 to %d characters of a-z, A-Z, 0-9, "
                                "underscores, dots and dashes",
                                i, ANTH_MAX_TOOL_NAME);
            }
            if (desc != NULL && !json_is_string(desc)) {
                return srv_fail(&c->pe, NULL, "tools[%zu].description must be a string", i);
            }
            if (!json_is_object(schema)) {
                return srv_fail(&c->pe, NULL, "tools[%zu].input_schema: an object is required", i);
            }
            json_t *fn = json_pack("{s:O}", "name", name);
            if (desc != NULL) {
                json_object_set(fn, "description", desc);
            }
            json_object_set(fn, "parameters", schema);
            json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
        }
    }
    json_t *tc = srv_json_get(o, "tool_choice");
    if (tc == NULL) {
        return TDM_OK;
    }
    json_t *type = json_object_get(tc, "type");
    json_t *dp = srv_json_get(tc, "disable_parallel_tool_use");
    if (!json_is_object(tc) || !json_is_string(type)) {
        return srv_fail(&c->pe, NULL,
                        "tool_choice must be an object with a type (auto, any, tool or none)");
    }
    if (dp != NULL && !json_is_boolean(dp)) {
        return srv_fail(&c->pe, NULL, "tool_choice.disable_parallel_tool_use must be a boolean");
    }
    if (srv_json_is_str(type, "auto")) {
        json_object_set_new(chat, "tool_choice", json_string("auto"));
    } else if (srv_json_is_str(type, "any")) {
        json_object_set_new(chat, "tool_choice", json_string("required"));
    } else if (srv_json_is_str(type, "none")) {
        json_object_set_new(chat, "tool_choice", json_string("none"));
    } else if (srv_json_is_str(type, "tool")) {
        json_t *name = json_object_get(tc, "name");
        if (!json_is_string(name)) {
            return srv_fail(&c->pe, NULL,
                            "tool_choice.name: a string is required for type \"tool\"");
        }
        json_object_set_new(
            chat, "tool_choice",
            json_pack("{s:s, s:{s:O}}", "type", "function", "function", "name", name));
    } else {
        return srv_fail(&c->pe, NULL, "tool_choice.type must be auto, any, tool or none");
    }
    return TDM_OK;
}

static tdm_status_t get_integer(actx_t *c, const json_t *v, const char *name, int64_t lo,
                                int64_t hi, int64_t *out)
{
    if (!json_is_integer(v)) {
        return srv_fail(&c->pe, NULL, "%s must be an integer", name);
    }
    *out = json_integer_value(v);
    if (*out < lo || *out > hi) {
        return srv_fail(&c->pe, NULL, "%s must be between %lld and %lld (got %lld)", name,
                        (long long)lo, (long long)hi, (long long)*out);
    }
    return TDM_OK;
}

static tdm_status_t copy_number(actx_t *c, const json_t *o, json_t *chat, const char *key,
                                double lo, double hi, bool lo_open)
{
    json_t *v = srv_json_get(o, key);
    if (v == NULL) {
        return TDM_OK;
    }
    double x = json_number_value(v);
    if (!json_is_number(v) || !(x >= lo && x <= hi) || (lo_open && x <= lo)) {
        return srv_fail(&c->pe, NULL, "%s must be a number in %s%g, %g]", key, lo_open ? "(" : "[",
                        lo, hi);
    }
    json_object_set(chat, key, v);
    return TDM_OK;
}

/*
 * thinking -> the template's switch. Qwen3-style templates read enable_thinking; gpt-oss
 * reads reasoning_effort, set from the budget (Anthropic asks for at least 1024 tokens;
 * below 4096 is "low", below 16384 "medium", above "high") or from output_config.effort,
 * which wins. Without `thinking` the template's default holds, and whatever reasoning the
 * model writes comes back as thinking blocks (empty ones with display "omitted").
 */
static tdm_status_t parse_thinking(actx_t *c, const json_t *o, json_t *chat, int64_t max_tokens,
                                   srv_anth_req_t *out)
{
    json_t *th = srv_json_get(o, "thinking");
    if (th != NULL) {
        json_t *type = json_object_get(th, "type");
        json_t *display = srv_json_get(th, "display");
        if (!json_is_object(th) || !json_is_string(type)) {
            return srv_fail(&c->pe, NULL,
                            "thinking must be an object with a type (enabled, adaptive, "
                            "between_tools or disabled)");
        }
        if (display != NULL && !srv_json_is_str(display, "summarized") &&
            !srv_json_is_str(display, "omitted")) {
            return srv_fail(&c->pe, NULL, "thinking.display must be summarized or omitted");
        }
        out->thinking_omitted = srv_json_is_str(display, "omitted");
        bool on = true;
        if (srv_json_is_str(type, "enabled")) {
            int64_t budget = 0;
            json_t *b = srv_json_get(th, "budget_tokens");
            if (b == NULL) {
                return srv_fail(&c->pe, NULL, "thinking.budget_tokens: field required");
            }
            SRV_TRY(get_integer(c, b, "thinking.budget_tokens", 1024, INT32_MAX, &budget));
            if (max_tokens > 0 && budget >= max_tokens) {
                return srv_fail(&c->pe, NULL,
                                "max_tokens must be greater than thinking.budget_tokens");
            }
            json_object_set_new(chat, "reasoning_effort",
                                json_string(budget < 4096    ? "low"
                                            : budget < 16384 ? "medium"
                                                             : "high"));
        } else if (srv_json_is_str(type, "disabled")) {
            on = false;
        } else if (!srv_json_is_str(type, "adaptive") && !srv_json_is_str(type, "between_tools")) {
            return srv_fail(&c->pe, NULL,
                            "thinking.type must be enabled, adaptive, between_tools or disabled");
        }
        out->thinking = on;
        json_object_set_new(chat, "chat_template_kwargs",
                            json_pack("{s:b}", "enable_thinking", on));
    }
    json_t *oc = srv_json_get(o, "output_config");
    if (oc == NULL) {
        return TDM_OK;
    }
    if (!json_is_object(oc)) {
        return srv_fail(&c->pe, NULL, "output_config must be an object");
    }
    if (srv_json_get(oc, "format") != NULL) {
        return srv_fail(&c->pe, NULL, "output_config.format (structured outputs) is not supported");
    }
    static const char *const efforts[][2] = {{"low", "low"},
                                             {"medium", "medium"},
                                             {"high", "high"},
                                             {"xhigh", "xhigh"},
                                             {"max", "xhigh"}};
    json_t *effort = srv_json_get(oc, "effort");
    if (effort == NULL) {
        return TDM_OK;
    }
    for (size_t i = 0; i < sizeof(efforts) / sizeof(efforts[0]); i++) {
        if (srv_json_is_str(effort, efforts[i][0])) {
            json_object_set_new(chat, "reasoning_effort", json_string(efforts[i][1]));
            return TDM_OK;
        }
    }
    return srv_fail(&c->pe, NULL, "output_config.effort must be low, medium, high, xhigh or max");
}

static tdm_status_t parse_options(actx_t *c, const json_t *o, json_t *chat, bool count_tokens,
                                  srv_anth_req_t *out)
{
    json_t *model = srv_json_get(o, "model");
    if (!json_is_string(model)) {
        return srv_fail(&c->pe, NULL, "model: a string is required");
    }
    json_object_set(chat, "model", model);
    int64_t max_tokens = 0;
    json_t *mt = srv_json_get(o, "max_tokens");
    if (mt != NULL && !count_tokens) {
        SRV_TRY(get_integer(c, mt, "max_tokens", 1, INT32_MAX, &max_tokens));
        json_object_set_new(chat, "max_tokens", json_integer(max_tokens));
    } else if (!count_tokens) {
        return srv_fail(&c->pe, NULL, "max_tokens: field required");
    }
    SRV_TRY(parse_thinking(c, o, chat, max_tokens, out));
    if (count_tokens) {
        return TDM_OK; /* the prompt only: sampling and streaming do not change it */
    }
    json_t *stream = srv_json_get(o, "stream");
    if (stream != NULL && !json_is_boolean(stream)) {
        return srv_fail(&c->pe, NULL, "stream must be a boolean");
    }
    json_object_set_new(chat, "stream", json_boolean(json_is_true(stream)));
    SRV_TRY(copy_number(c, o, chat, "temperature", 0.0, 1.0, false));
    SRV_TRY(copy_number(c, o, chat, "top_p", 0.0, 1.0, true));
    json_t *tk = srv_json_get(o, "top_k");
    if (tk != NULL) {
        int64_t k;
        SRV_TRY(get_integer(c, tk, "top_k", 0, INT32_MAX, &k));
        json_object_set(chat, "top_k", tk);
    }
    json_t *stops = srv_json_get(o, "stop_sequences");
    if (stops != NULL) {
        if (!json_is_array(stops) || json_array_size(stops) > CRD_MAX_STOP_STRINGS) {
            return srv_fail(&c->pe, NULL, "stop_sequences must be an array of at most %d strings",
                            CRD_MAX_STOP_STRINGS);
        }
        size_t i;
        json_t *s;
        json_array_foreach(stops, i, s)
        {
            if (!json_is_string(s) || json_string_length(s) == 0 ||
                json_string_length(s) > CRD_MAX_STOP_LEN) {
                return srv_fail(&c->pe, NULL,
                                "stop_sequences[%zu] must be a string of 1 to %d bytes", i,
                                CRD_MAX_STOP_LEN);
            }
        }
        if (json_array_size(stops) > 0) {
            json_object_set(chat, "stop", stops);
        }
    }
    json_t *md = srv_json_get(o, "metadata");
    if (md != NULL) {
        json_t *uid = srv_json_get(md, "user_id");
        if (!json_is_object(md) || (uid != NULL && !json_is_string(uid))) {
            return srv_fail(&c->pe, NULL, "metadata must be an object whose user_id is a string");
        }
    }
    return TDM_OK;
}

tdm_status_t srv_parse_anth_request(const char *body, size_t len, bool count_tokens,
                                    srv_anth_req_t *out, tdm_error_t *err)
{
    memset(out, 0, sizeof(*out));
    json_t *o = srv_json_body(body, len, err);
    if (o == NULL) {
        return TDM_ERR_FORMAT;
    }
    actx_t c = {.pe = {.err = err}, .msgs = json_array(), .call_names = json_object()};
    json_t *chat = json_object();
    tdm_status_t st;
    if (!json_is_object(o)) {
        st = srv_fail(&c.pe, NULL, "the body must be a JSON object");
    } else {
        st = parse_options(&c, o, chat, count_tokens, out);
        if (st == TDM_OK) {
            st = parse_system(&c, o);
        }
        if (st == TDM_OK) {
            st = parse_messages(&c, o);
        }
        if (st == TDM_OK) {
            st = parse_tools(&c, o, chat);
        }
    }
    if (st == TDM_OK) {
        json_object_set(chat, "messages", c.msgs);
        char param[96];
        st = srv_parse_gen_json(SRV_API_CHAT, chat, &out->gen, param, sizeof(param), err);
        if (st == TDM_OK && json_string_length(c.prefill) > 0) {
            out->gen.assistant_prefill = strdup(json_string_value(c.prefill));
            if (out->gen.assistant_prefill == NULL) {
                st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
            }
        }
    }
    json_decref(chat);
    json_decref(c.msgs);
    json_decref(c.call_names);
    json_decref(c.prefill);
    json_decref(o);
    return st;
}

void srv_anth_req_free(srv_anth_req_t *r)
{
    srv_gen_req_free(&r->gen);
    memset(r, 0, sizeof(*r));
}
