/*
 * chat_prompt.c - a chat request's prompt: template, forced tool call, tokens; and the
 * output parser that matches it.
 */
#include "api/server/chat_prompt.h"

#include "api/server/cache_stable.h"

#include <stdlib.h>
#include <string.h>

/* The text the server writes at the start of the assistant turn to force a tool call
 * (tool_choice "required" or a named function), or NULL. */
static char *tool_prefix(const srv_server_t *s, const srv_gen_req_t *req)
{
    char buf[256];
    /* names are [A-Za-z0-9_.-] (checked by the parser), safe to splice in */
    bool named = req->tool_choice == SRV_TOOL_CHOICE_NAMED;
    if (req->tool_choice != SRV_TOOL_CHOICE_REQUIRED && !named) {
        return NULL;
    }
    switch (s->tool_format) {
    case PRS_TOOL_QWEN3_CODER:
        if (named) {
            snprintf(buf, sizeof(buf), "<tool_call>\n<function=%s>\n", req->tool_name);
        } else {
            snprintf(buf, sizeof(buf), "<tool_call>\n<function=");
        }
        break;
    case PRS_TOOL_MINIMAX_M2:
        /* the generation prompt opened <think>: a forced call closes it first (the model
         * skips its reasoning, as with any forced call) */
        if (named) {
            snprintf(buf, sizeof(buf), "</think>\n\n<minimax:tool_call>\n<invoke name=\"%s\">\n",
                     req->tool_name);
        } else {
            snprintf(buf, sizeof(buf), "</think>\n\n<minimax:tool_call>\n<invoke name=\"");
        }
        break;
    case PRS_TOOL_MISTRAL: {
        /* Mistral templates add no generation prompt: the call follows [/INST]. The
         * template shows the shape the model was trained on: NAME[ARGS] (v11 and later,
         * NAME[CALL_ID]ID[ARGS] in v11) or one JSON array (v2-v7) */
        const char *src = tpl_source(s->tpl);
        bool args = strstr(src, "[ARGS]") != NULL;
        if (named && args) {
            snprintf(buf, sizeof(buf), "[TOOL_CALLS]%s%s", req->tool_name,
                     strstr(src, "[CALL_ID]") != NULL ? "[CALL_ID]" : "[ARGS]");
        } else if (named) {
            snprintf(buf, sizeof(buf),
                     "[TOOL_CALLS][{\"name\": \"%s\", \"arguments\": ", req->tool_name);
        } else {
            snprintf(buf, sizeof(buf), "%s", args ? "[TOOL_CALLS]" : "[TOOL_CALLS][");
        }
        break;
    }
    case PRS_TOOL_HARMONY:
        /* the generation prompt ends with "<|start|>assistant": the header goes on */
        if (named) {
            snprintf(buf, sizeof(buf),
                     "<|channel|>commentary to=functions.%s <|constrain|>json<|message|>",
                     req->tool_name);
        } else {
            snprintf(buf, sizeof(buf), "<|channel|>commentary to=functions.");
        }
        break;
    default:
        if (named) {
            snprintf(buf, sizeof(buf),
                     "<tool_call>\n{\"name\": \"%s\", \"arguments\": ", req->tool_name);
        } else {
            snprintf(buf, sizeof(buf), "<tool_call>\n");
        }
        break;
    }
    return strdup(buf);
}

/*
 * The messages as the gpt-oss template wants them: it reads an assistant message's
 * reasoning from "thinking" (and replays it before a tool call, which gpt-oss needs to go
 * on with its chain of thought), where OpenAI clients send "reasoning_content". The
 * template refuses content and thinking together on a tool-call message; content wins
 * there. Returns a new array (the messages shared, or copied where thinking is added).
 */
static json_t *harmony_messages(const json_t *messages)
{
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m)
    {
        json_t *rc = json_object_get(m, "reasoning_content");
        const char *content = json_string_value(json_object_get(m, "content"));
        bool calls = json_object_get(m, "tool_calls") != NULL;
        if (json_is_string(rc) && json_string_length(rc) > 0 &&
            json_object_get(m, "thinking") == NULL &&
            !(calls && content != NULL && content[0] != '\0')) {
            json_t *copy = json_copy(m);
            json_object_set(copy, "thinking", rc);
            json_array_append_new(out, copy);
        } else {
            json_array_append(out, m);
        }
    }
    return out;
}

static bool ends_with_tag(const char *text, const char *tag)
{
    size_t n = strlen(text), m = strlen(tag);
    while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\n' || text[n - 1] == '\r' ||
                     text[n - 1] == '\t')) {
        n--;
    }
    return n >= m && memcmp(text + n - m, tag, m) == 0;
}

/* Appends text to the malloc'd string *out; false when out of memory. */
static bool append(char **out, const char *text)
{
    size_t a = strlen(*out), b = strlen(text);
    char *joined = realloc(*out, a + b + 1);
    if (joined == NULL) {
        return false;
    }
    memcpy(joined + a, text, b + 1);
    *out = joined;
    return true;
}

/* Renders the chat, then the assistant prefill and the forced tool-call text (*prefix gets the
 * latter, or NULL). */
static tdm_status_t render_chat(srv_server_t *s, const srv_gen_req_t *req, bool use_tools,
                                char **out, char **prefix, tdm_error_t *err)
{
    *prefix = NULL;
    if (s->tpl == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "the model has no chat template: use /v1/completions");
    }
    json_t *messages = req->messages, *tools = req->tools;
    if (s->cfg.cache_stable) {
        messages = srv_cache_stable_messages(req->messages);
        tools = use_tools ? srv_cache_stable_tools(req->tools) : NULL;
        if (messages == NULL || (use_tools && tools == NULL)) {
            json_decref(messages);
            json_decref(tools);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
        }
    } else {
        json_incref(messages);
        json_incref(tools);
    }
    json_t *ctx = json_object();
    json_object_set_new(ctx, "messages",
                        s->tool_format == PRS_TOOL_HARMONY ? harmony_messages(messages)
                                                           : json_incref(messages));
    json_decref(messages);
    json_object_set_new(ctx, "add_generation_prompt", json_true());
    if (use_tools) {
        json_object_set(ctx, "tools", tools);
    }
    json_decref(tools);
    if (req->reasoning_effort != NULL) {
        /* the variable the gpt-oss template reads ("Reasoning: low|medium|high"); other
         * templates ignore it. chat_template_kwargs below may still override it. */
        json_object_set_new(ctx, "reasoning_effort", json_string(req->reasoning_effort));
    }
    if (req->template_kwargs != NULL) {
        json_object_update(ctx, req->template_kwargs);
    }
    pthread_mutex_lock(&s->tpl_mu);
    tdm_status_t st = tpl_render(s->tpl, ctx, out, err);
    pthread_mutex_unlock(&s->tpl_mu);
    json_decref(ctx);
    if (st != TDM_OK) {
        return st == TDM_ERR_NO_MEMORY ? st : TDM_ERR_INVALID_PARAM;
    }
    if (req->assistant_prefill != NULL && !append(out, req->assistant_prefill)) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
    }
    if (use_tools) {
        *prefix = tool_prefix(s, req);
        if (*prefix != NULL && !append(out, *prefix)) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
        }
    }
    return TDM_OK;
}

tdm_status_t srv_chat_prompt_build(srv_server_t *s, const srv_gen_req_t *req,
                                   srv_chat_prompt_t *out, const char **param, tdm_error_t *err)
{
    memset(out, 0, sizeof(*out));
    *param = "messages";
    out->use_tools = req->tools != NULL && req->tool_choice != SRV_TOOL_CHOICE_NONE;
    out->parse_tools = out->use_tools && s->tool_format != PRS_TOOL_NONE;
    out->harmony = s->tool_format == PRS_TOOL_HARMONY;
    bool mistral_calls = out->parse_tools && s->tool_format == PRS_TOOL_MISTRAL;
    if (out->use_tools && !out->parse_tools &&
        (req->tool_choice == SRV_TOOL_CHOICE_REQUIRED ||
         req->tool_choice == SRV_TOOL_CHOICE_NAMED)) {
        *param = "tool_choice";
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "this model's chat template has no tool-call format, so "
                             "tool_choice cannot force a call");
    }
    char *text = NULL;
    tdm_status_t st = render_chat(s, req, out->use_tools, &text, &out->prefix, err);
    if (st == TDM_OK) {
        /* harmony carries its reasoning in analysis messages, not in <think> */
        out->parse_think = s->template_has_think && !out->harmony;
        out->start_inside = out->parse_think && ends_with_tag(text, "<think>");
        if (out->parse_think && ends_with_tag(text, "</think>")) {
            out->parse_think = false; /* thinking switched off by the template */
        }
        tok_workspace_t *ws = NULL;
        st = tok_workspace_create(s->vocab, &ws, err);
        if (st == TDM_OK) {
            st =
                tok_encode(s->vocab, ws, text, strlen(text), TOK_ENC_PARSE_SPECIAL, &out->ids, err);
        }
        tok_workspace_destroy(ws);
    }
    free(text);
    if (st == TDM_OK && out->ids.n == 0) {
        st = tdm_error_set(err, TDM_ERR_INVALID_PARAM, "the prompt is empty");
    }
    /* harmony's <|end|> and Mistral's [TOOL_CALLS] and [ARGS] are control tokens: the
     * parser must see them (it shows no marker to the client, except in a call it cannot
     * read) */
    out->detok_flags =
        req->skip_special_tokens && !out->harmony && !mistral_calls ? 0 : TOK_DEC_RENDER_SPECIAL;
    return st;
}

void srv_chat_prompt_free(srv_chat_prompt_t *p)
{
    tok_ids_free(&p->ids);
    free(p->prefix);
    memset(p, 0, sizeof(*p));
}

tdm_status_t srv_chat_output_create(const srv_server_t *s, const srv_gen_req_t *req,
                                    const srv_chat_prompt_t *p, prs_output_t **out,
                                    tdm_error_t *err)
{
    prs_output_params_t op = {.format = s->tool_format,
                              .calls = p->parse_tools,
                              .tools = req->tools,
                              .reasoning = p->parse_think,
                              .start_inside = p->start_inside};
    tdm_status_t st = prs_output_create(&op, out, err);
    if (st == TDM_OK && p->prefix != NULL) {
        st = prs_output_prime(*out, p->prefix, strlen(p->prefix), err);
    }
    return st;
}
