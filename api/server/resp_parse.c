/*
 * resp_parse.c - Responses request bodies -> a chat request (see resp_parse.h).
 *
 * The conversion builds the JSON body a chat completions client would have sent and hands
 * it to srv_parse_gen_json. Everything the chat parser would blame on a chat field name is
 * checked here first under its Responses name, so errors point at what the client wrote.
 */
#include "api/server/resp_parse.h"

#include "api/server/json_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct rctx {
    srv_perr_t pe;
    json_t *msgs;         /* the chat messages so far                                    */
    json_t *reasoning;    /* a reasoning item's text waiting for its assistant message   */
    json_t *call_names;   /* call_id -> function name, for the tool messages' "name"     */
    bool tool_since_last; /* a tool output came after the last assistant message        */
} rctx_t;

/* The text of a message's content: a string, or text parts (input_text, output_text,
 * refusal) joined by newlines, as the chat parser joins its text parts. */
static tdm_status_t content_text(rctx_t *c, const json_t *content, const char *pname, json_t **out)
{
    if (content == NULL) {
        *out = json_string("");
        return TDM_OK;
    }
    if (json_is_string(content)) {
        *out = json_incref((json_t *)content);
        return TDM_OK;
    }
    if (!json_is_array(content)) {
        return srv_fail(&c->pe, pname, "'%s' must be a string or an array of content parts", pname);
    }
    json_t *parts = json_array();
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *type = json_object_get(part, "type");
        const char *key = "text";
        if (!json_is_object(part) || !json_is_string(type)) {
            json_decref(parts);
            return srv_fail(&c->pe, pname, "%s[%zu] must be an object with a 'type'", pname, i);
        }
        if (srv_json_is_str(type, "refusal")) {
            key = "refusal";
        } else if (!srv_json_is_str(type, "input_text") && !srv_json_is_str(type, "output_text") &&
                   !srv_json_is_str(type, "text")) {
            json_decref(parts);
            return srv_fail(&c->pe, pname,
                            "%s[%zu]: content parts of type '%s' are not supported (input_text, "
                            "output_text and refusal only)",
                            pname, i, json_string_value(type));
        }
        json_t *text = json_object_get(part, key);
        if (!json_is_string(text)) {
            json_decref(parts);
            return srv_fail(&c->pe, pname, "%s[%zu].%s must be a string", pname, i, key);
        }
        json_array_append(parts, text);
    }
    /* joined as the chat parser joins: handed to it as text parts */
    json_t *chat_parts = json_array();
    json_array_foreach(parts, i, part)
    {
        json_array_append_new(chat_parts, json_pack("{s:s, s:O}", "type", "text", "text", part));
    }
    json_decref(parts);
    *out = chat_parts;
    return TDM_OK;
}

/* The last message when it is an assistant message that calls may still join. */
static json_t *open_assistant(rctx_t *c)
{
    size_t n = json_array_size(c->msgs);
    json_t *last = n > 0 ? json_array_get(c->msgs, n - 1) : NULL;
    if (last == NULL || !srv_json_is_str(json_object_get(last, "role"), "assistant") ||
        c->tool_since_last) {
        return NULL;
    }
    return last;
}

/* Appends an assistant message, with the reasoning that came before it. */
static json_t *add_assistant(rctx_t *c, json_t *content /* stolen */)
{
    json_t *m = json_pack("{s:s, s:o}", "role", "assistant", "content", content);
    if (c->reasoning != NULL) {
        json_object_set_new(m, "reasoning_content", c->reasoning);
        c->reasoning = NULL;
    }
    json_array_append_new(c->msgs, m);
    c->tool_since_last = false;
    return m;
}

static tdm_status_t item_message(rctx_t *c, const json_t *it, size_t i)
{
    char pname[64];
    json_t *role = json_object_get(it, "role");
    if (!srv_json_is_str(role, "user") && !srv_json_is_str(role, "assistant") &&
        !srv_json_is_str(role, "system") && !srv_json_is_str(role, "developer")) {
        snprintf(pname, sizeof(pname), "input[%zu].role", i);
        return srv_fail(&c->pe, pname, "'%s' must be one of user, assistant, system, developer",
                        pname);
    }
    snprintf(pname, sizeof(pname), "input[%zu].content", i);
    json_t *text = NULL;
    SRV_TRY(content_text(c, srv_json_get(it, "content"), pname, &text));
    if (srv_json_is_str(role, "assistant")) {
        add_assistant(c, text);
        return TDM_OK;
    }
    json_array_append_new(c->msgs, json_pack("{s:O, s:o}", "role", role, "content", text));
    return TDM_OK;
}

static tdm_status_t item_function_call(rctx_t *c, const json_t *it, size_t i)
{
    char pname[64];
    json_t *call_id = json_object_get(it, "call_id"), *name = json_object_get(it, "name");
    json_t *args = srv_json_get(it, "arguments");
    if (!json_is_string(call_id) || json_string_length(call_id) == 0) {
        snprintf(pname, sizeof(pname), "input[%zu].call_id", i);
        return srv_fail(&c->pe, pname, "'%s' must be a non-empty string", pname);
    }
    if (!json_is_string(name) || json_string_length(name) == 0) {
        snprintf(pname, sizeof(pname), "input[%zu].name", i);
        return srv_fail(&c->pe, pname, "'%s' must be a non-empty string", pname);
    }
    if (args != NULL && !json_is_string(args)) {
        snprintf(pname, sizeof(pname), "input[%zu].arguments", i);
        return srv_fail(&c->pe, pname, "'%s' must be a string of JSON", pname);
    }
    if (args != NULL) {
        json_error_t je;
        json_t *parsed = json_loads(json_string_value(args), JSON_DECODE_ANY, &je);
        if (parsed == NULL) {
            snprintf(pname, sizeof(pname), "input[%zu].arguments", i);
            return srv_fail(&c->pe, pname, "'%s' is not valid JSON: %s", pname, je.text);
        }
        json_decref(parsed);
    }
    json_t *m = open_assistant(c);
    if (m == NULL) {
        m = add_assistant(c, json_string(""));
    } else if (c->reasoning != NULL && json_object_get(m, "reasoning_content") == NULL) {
        json_object_set_new(m, "reasoning_content", c->reasoning);
        c->reasoning = NULL;
    }
    json_t *calls = json_object_get(m, "tool_calls");
    if (calls == NULL) {
        calls = json_array();
        json_object_set_new(m, "tool_calls", calls);
    }
    json_array_append_new(calls, json_pack("{s:O, s:s, s:{s:O, s:s}}", "id", call_id, "type",
                                           "function", "function", "name", name, "arguments",
                                           args != NULL ? json_string_value(args) : "{}"));
    json_object_set(c->call_names, json_string_value(call_id), name);
    return TDM_OK;
}

static tdm_status_t item_function_output(rctx_t *c, const json_t *it, size_t i)
{
    char pname[64];
    json_t *call_id = json_object_get(it, "call_id");
    if (!json_is_string(call_id) || json_string_length(call_id) == 0) {
        snprintf(pname, sizeof(pname), "input[%zu].call_id", i);
        return srv_fail(&c->pe, pname, "'%s' must be a non-empty string", pname);
    }
    snprintf(pname, sizeof(pname), "input[%zu].output", i);
    json_t *output = srv_json_get(it, "output");
    if (output == NULL) {
        return srv_fail(&c->pe, pname, "'%s' is required", pname);
    }
    json_t *text = NULL;
    SRV_TRY(content_text(c, output, pname, &text));
    json_t *m =
        json_pack("{s:s, s:O, s:o}", "role", "tool", "tool_call_id", call_id, "content", text);
    json_t *name = json_object_get(c->call_names, json_string_value(call_id));
    if (name != NULL) {
        json_object_set(m, "name", name); /* templates that label outputs by function */
    }
    json_array_append_new(c->msgs, m);
    c->tool_since_last = true;
    return TDM_OK;
}

/* A reasoning item passed back: its reasoning_text content, or else its summary, goes
 * with the assistant message or call that follows it (the template decides whether
 * earlier turns' reasoning is shown to the model). encrypted_content cannot be read and
 * is ignored. */
static tdm_status_t item_reasoning(rctx_t *c, const json_t *it, size_t i)
{
    char pname[64];
    const char *keys[] = {"content", "summary"};
    for (size_t k = 0; k < 2; k++) {
        json_t *parts = srv_json_get(it, keys[k]);
        snprintf(pname, sizeof(pname), "input[%zu].%s", i, keys[k]);
        if (parts != NULL && !json_is_array(parts)) {
            return srv_fail(&c->pe, pname, "'%s' must be an array", pname);
        }
        size_t j;
        json_t *part;
        json_array_foreach(parts, j, part)
        {
            if (!json_is_string(json_object_get(part, "text"))) {
                return srv_fail(&c->pe, pname, "%s[%zu].text must be a string", pname, j);
            }
        }
    }
    json_t *parts = json_array_size(srv_json_get(it, "content")) > 0 ? srv_json_get(it, "content")
                                                                     : srv_json_get(it, "summary");
    size_t total = 0, j;
    json_t *part;
    json_array_foreach(parts, j, part)
    {
        total += json_string_length(json_object_get(part, "text")) + 2;
    }
    if (total == 0) {
        return TDM_OK;
    }
    char *buf = malloc(total + 1), *p = buf;
    if (buf == NULL) {
        return tdm_error_set(c->pe.err, TDM_ERR_NO_MEMORY, "out of memory");
    }
    json_array_foreach(parts, j, part)
    {
        json_t *t = json_object_get(part, "text");
        if (j > 0) {
            memcpy(p, "\n\n", 2);
            p += 2;
        }
        memcpy(p, json_string_value(t), json_string_length(t));
        p += json_string_length(t);
    }
    json_t *text = json_stringn(buf, (size_t)(p - buf));
    free(buf);
    if (text == NULL) {
        return srv_fail(&c->pe, pname, "'%s' has text with a NUL byte", pname);
    }
    if (c->reasoning != NULL) {
        /* two reasoning items in a row: one thought */
        json_t *joined =
            json_sprintf("%s\n\n%s", json_string_value(c->reasoning), json_string_value(text));
        json_decref(text);
        json_decref(c->reasoning);
        text = joined;
    }
    c->reasoning = text;
    return TDM_OK;
}

static tdm_status_t parse_input(rctx_t *c, const json_t *o)
{
    json_t *instructions = srv_json_get(o, "instructions");
    if (instructions != NULL) {
        if (!json_is_string(instructions)) {
            return srv_fail(&c->pe, "instructions", "'instructions' must be a string");
        }
        json_array_append_new(c->msgs,
                              json_pack("{s:s, s:O}", "role", "system", "content", instructions));
    }
    json_t *input = srv_json_get(o, "input");
    if (input == NULL) {
        return srv_fail(&c->pe, "input", "'input' is required");
    }
    if (json_is_string(input)) {
        json_array_append_new(c->msgs, json_pack("{s:s, s:O}", "role", "user", "content", input));
        return TDM_OK;
    }
    if (!json_is_array(input) || json_array_size(input) == 0) {
        return srv_fail(&c->pe, "input", "'input' must be a string or a non-empty array of items");
    }
    if (json_array_size(input) > SRV_MAX_MESSAGES) {
        return srv_fail(&c->pe, "input", "at most %d input items are allowed", SRV_MAX_MESSAGES);
    }
    size_t i;
    json_t *it;
    json_array_foreach(input, i, it)
    {
        char pname[64];
        snprintf(pname, sizeof(pname), "input[%zu]", i);
        if (!json_is_object(it)) {
            return srv_fail(&c->pe, pname, "'%s' must be an object", pname);
        }
        json_t *type = srv_json_get(it, "type");
        if (type != NULL && !json_is_string(type)) {
            snprintf(pname, sizeof(pname), "input[%zu].type", i);
            return srv_fail(&c->pe, pname, "'%s' must be a string", pname);
        }
        if (type == NULL || srv_json_is_str(type, "message")) {
            SRV_TRY(item_message(c, it, i));
        } else if (srv_json_is_str(type, "function_call")) {
            SRV_TRY(item_function_call(c, it, i));
        } else if (srv_json_is_str(type, "function_call_output")) {
            SRV_TRY(item_function_output(c, it, i));
        } else if (srv_json_is_str(type, "reasoning")) {
            SRV_TRY(item_reasoning(c, it, i));
        } else if (srv_json_is_str(type, "item_reference")) {
            return srv_fail(&c->pe, pname,
                            "'%s' is an item_reference: this server stores no responses or items; "
                            "send the items themselves",
                            pname);
        } else {
            snprintf(pname, sizeof(pname), "input[%zu].type", i);
            return srv_fail(&c->pe, pname,
                            "input items of type '%s' are not supported (message, function_call, "
                            "function_call_output and reasoning are)",
                            json_string_value(type));
        }
    }
    return TDM_OK;
}

/* Flat Responses tools {type, name, description, parameters} -> chat's nested ones. */
static tdm_status_t parse_tools(rctx_t *c, const json_t *o, json_t *chat)
{
    json_t *tools = srv_json_get(o, "tools");
    if (tools == NULL) {
        return TDM_OK;
    }
    if (!json_is_array(tools)) {
        return srv_fail(&c->pe, "tools", "'tools' must be an array");
    }
    if (json_array_size(tools) > SRV_MAX_TOOLS) {
        return srv_fail(&c->pe, "tools", "at most %d tools are allowed", SRV_MAX_TOOLS);
    }
    json_t *out = json_array();
    json_object_set_new(chat, "tools", out);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        char pname[48];
        snprintf(pname, sizeof(pname), "tools[%zu]", i);
        json_t *type = json_object_get(t, "type");
        if (!json_is_object(t) || !json_is_string(type)) {
            return srv_fail(&c->pe, pname, "'%s' must be an object with a 'type'", pname);
        }
        if (!srv_json_is_str(type, "function")) {
            return srv_fail(&c->pe, pname,
                            "tools of type '%s' are not supported: this server runs function tools "
                            "only",
                            json_string_value(type));
        }
        json_t *name = json_object_get(t, "name"), *params = srv_json_get(t, "parameters");
        json_t *desc = srv_json_get(t, "description");
        if (!srv_valid_tool_name(name, SRV_MAX_FUNCTION_NAME)) {
            return srv_fail(
                &c->pe, pname,
                "%s.name must be 1 to 64 characters of a-z, A-Z, 0-9, underscores, dots "
                "and dashes",
                pname);
        }
        if (params != NULL && !json_is_object(params)) {
            return srv_fail(&c->pe, pname, "%s.parameters must be an object", pname);
        }
        if (desc != NULL && !json_is_string(desc)) {
            return srv_fail(&c->pe, pname, "%s.description must be a string", pname);
        }
        json_t *fn = json_pack("{s:O}", "name", name);
        if (desc != NULL) {
            json_object_set(fn, "description", desc);
        }
        /* a tool without parameters takes none (templates expect the key) */
        json_object_set_new(fn, "parameters",
                            params != NULL
                                ? json_incref(params)
                                : json_pack("{s:s, s:{}}", "type", "object", "properties"));
        json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    json_t *tc = srv_json_get(o, "tool_choice");
    if (tc == NULL) {
        return TDM_OK;
    }
    if (json_is_string(tc)) {
        if (!srv_json_is_str(tc, "auto") && !srv_json_is_str(tc, "none") &&
            !srv_json_is_str(tc, "required")) {
            return srv_fail(&c->pe, "tool_choice",
                            "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                            "{\"type\": \"function\", \"name\": ...}");
        }
        json_object_set(chat, "tool_choice", tc);
        return TDM_OK;
    }
    json_t *name = json_object_get(tc, "name");
    if (!json_is_object(tc) || !srv_json_is_str(json_object_get(tc, "type"), "function") ||
        !json_is_string(name)) {
        return srv_fail(&c->pe, "tool_choice",
                        "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                        "{\"type\": \"function\", \"name\": ...}");
    }
    json_object_set_new(chat, "tool_choice",
                        json_pack("{s:s, s:{s:O}}", "type", "function", "function", "name", name));
    return TDM_OK;
}

/* The fields that only shape the answer or have no counterpart here. */
static tdm_status_t parse_options(rctx_t *c, const json_t *o, json_t *chat, json_t *echo)
{
    json_t *v = srv_json_get(o, "previous_response_id");
    if (v != NULL) {
        return srv_fail(&c->pe, "previous_response_id",
                        "previous_response_id is not supported: this server is stateless and keeps "
                        "no responses; send the whole conversation in 'input' (with store: false)");
    }
    if (srv_json_get(o, "conversation") != NULL) {
        return srv_fail(&c->pe, "conversation",
                        "'conversation' is not supported: this server stores no conversations; "
                        "send the whole conversation in 'input'");
    }
    if (srv_json_get(o, "prompt") != NULL) {
        return srv_fail(&c->pe, "prompt", "stored prompt templates ('prompt') are not supported");
    }
    v = srv_json_get(o, "background");
    if (v != NULL && !json_is_boolean(v)) {
        return srv_fail(&c->pe, "background", "'background' must be a boolean");
    }
    if (json_is_true(v)) {
        return srv_fail(&c->pe, "background", "background responses are not supported");
    }
    static const char *const bools[] = {"store", "parallel_tool_calls", "stream"};
    for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
        v = srv_json_get(o, bools[i]);
        if (v != NULL && !json_is_boolean(v)) {
            return srv_fail(&c->pe, bools[i], "'%s' must be a boolean", bools[i]);
        }
    }
    json_object_set_new(echo, "parallel_tool_calls",
                        json_boolean(!json_is_false(srv_json_get(o, "parallel_tool_calls"))));
    json_object_set_new(echo, "store", json_false()); /* nothing is kept, whatever was asked */
    if (srv_json_get(o, "stream") != NULL) {
        json_object_set(chat, "stream", srv_json_get(o, "stream"));
    }
    v = srv_json_get(o, "model");
    if (v != NULL) {
        json_object_set(chat, "model", v); /* the chat parser checks it is a string */
    }
    v = srv_json_get(o, "metadata");
    if (v != NULL && !json_is_object(v)) {
        return srv_fail(&c->pe, "metadata", "'metadata' must be an object");
    }
    json_object_set_new(echo, "metadata", v != NULL ? json_incref(v) : json_object());
    v = srv_json_get(o, "max_output_tokens");
    if (v != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > INT32_MAX) {
            return srv_fail(&c->pe, "max_output_tokens",
                            "'max_output_tokens' must be a positive integer");
        }
        json_object_set(chat, "max_tokens", v);
    }
    json_object_set_new(echo, "max_output_tokens", v != NULL ? json_incref(v) : json_null());
    static const char *const nums[] = {"temperature", "top_p"};
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        v = srv_json_get(o, nums[i]);
        if (v != NULL) {
            json_object_set(chat, nums[i], v); /* ranges checked by the chat parser */
        }
        json_object_set_new(echo, nums[i], v != NULL ? json_incref(v) : json_real(1.0));
    }
    json_t *reasoning = srv_json_get(o, "reasoning");
    json_t *effort = NULL;
    if (reasoning != NULL) {
        if (!json_is_object(reasoning)) {
            return srv_fail(&c->pe, "reasoning", "'reasoning' must be an object");
        }
        effort = srv_json_get(reasoning, "effort");
        static const char *const efforts[] = {"none", "minimal", "low", "medium", "high", "xhigh"};
        bool known = false;
        for (size_t i = 0; json_is_string(effort) && i < sizeof(efforts) / sizeof(efforts[0]);
             i++) {
            known |= srv_json_is_str(effort, efforts[i]);
        }
        if (effort != NULL && !known) {
            return srv_fail(&c->pe, "reasoning.effort",
                            "'reasoning.effort' must be one of none, minimal, low, medium, high, "
                            "xhigh");
        }
        if (effort != NULL) {
            json_object_set(chat, "reasoning_effort", effort);
        }
    }
    json_object_set_new(
        echo, "reasoning",
        json_pack("{s:O, s:n}", "effort", effort != NULL ? effort : json_null(), "summary"));
    json_t *text = srv_json_get(o, "text");
    if (text != NULL) {
        json_t *fmt = srv_json_get(text, "format");
        if (!json_is_object(text) ||
            (fmt != NULL && !srv_json_is_str(json_object_get(fmt, "type"), "text"))) {
            return srv_fail(&c->pe, "text.format",
                            "only text.format {\"type\": \"text\"} is supported");
        }
    }
    json_object_set_new(echo, "text", json_pack("{s:{s:s}}", "format", "type", "text"));
    v = srv_json_get(o, "truncation");
    if (v != NULL && !srv_json_is_str(v, "disabled")) {
        return srv_fail(&c->pe, "truncation",
                        "only truncation \"disabled\" is supported: a conversation longer than the "
                        "context is refused, never cut");
    }
    json_object_set_new(echo, "truncation", json_string("disabled"));
    v = srv_json_get(o, "top_logprobs");
    if (v != NULL && !(json_is_integer(v) && json_integer_value(v) == 0)) {
        return srv_fail(&c->pe, "top_logprobs", "'top_logprobs' is not supported on /v1/responses");
    }
    v = srv_json_get(o, "instructions");
    json_object_set_new(echo, "instructions", v != NULL ? json_incref(v) : json_null());
    v = srv_json_get(o, "user");
    json_object_set_new(echo, "user", json_is_string(v) ? json_incref(v) : json_null());
    v = srv_json_get(o, "tools");
    json_object_set_new(echo, "tools", v != NULL ? json_incref(v) : json_array());
    v = srv_json_get(o, "tool_choice");
    json_object_set_new(echo, "tool_choice", v != NULL ? json_incref(v) : json_string("auto"));
    return TDM_OK;
}

tdm_status_t srv_parse_resp_request(const char *body, size_t len, srv_resp_req_t *out, char *param,
                                    size_t param_size, tdm_error_t *err)
{
    memset(out, 0, sizeof(*out));
    out->gen.n = 1;
    if (param_size > 0) {
        param[0] = '\0';
    }
    json_t *o = srv_json_body(body, len, err);
    if (o == NULL) {
        return TDM_ERR_FORMAT;
    }
    rctx_t c = {.pe = {.err = err, .param = param, .param_size = param_size},
                .msgs = json_array(),
                .call_names = json_object()};
    json_t *chat = json_object();
    out->echo = json_object();
    tdm_status_t st;
    if (!json_is_object(o)) {
        st = srv_fail(&c.pe, NULL, "the body must be a JSON object");
    } else {
        st = parse_options(&c, o, chat, out->echo);
        if (st == TDM_OK) {
            st = parse_input(&c, o);
        }
        if (st == TDM_OK) {
            st = parse_tools(&c, o, chat);
        }
    }
    if (st == TDM_OK) {
        json_object_set(chat, "messages", c.msgs);
        st = srv_parse_gen_json(SRV_API_CHAT, chat, &out->gen, param, param_size, err);
    }
    json_decref(c.reasoning);
    json_decref(c.call_names);
    json_decref(c.msgs);
    json_decref(chat);
    json_decref(o);
    return st;
}

void srv_resp_req_free(srv_resp_req_t *r)
{
    srv_gen_req_free(&r->gen);
    json_decref(r->echo);
    memset(r, 0, sizeof(*r));
}
