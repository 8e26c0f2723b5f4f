/*
 * oai_parse.c - checks and converts OpenAI chat / completions request bodies.
 *
 * Each helper takes the parameter's name, so every message points at the exact field;
 * JSON null counts as "not given" (clients send explicit nulls for defaults).
 */
#include "api/server/oai_parse.h"

#include "api/server/json_util.h"
#include "coordinator/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pctx {
    srv_perr_t pe;
} pctx_t;

static tdm_status_t get_bool(pctx_t *c, const json_t *o, const char *key, bool *out)
{
    json_t *v = srv_json_get(o, key);
    if (v == NULL) {
        return TDM_OK;
    }
    if (!json_is_boolean(v)) {
        return srv_fail(&c->pe, key, "'%s' must be a boolean", key);
    }
    *out = json_is_true(v);
    return TDM_OK;
}

static tdm_status_t get_number(pctx_t *c, const json_t *o, const char *key, double lo, double hi,
                               float *out)
{
    json_t *v = srv_json_get(o, key);
    if (v == NULL) {
        return TDM_OK;
    }
    if (!json_is_number(v)) {
        return srv_fail(&c->pe, key, "'%s' must be a number", key);
    }
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        return srv_fail(&c->pe, key, "'%s' must be between %g and %g (got %g)", key, lo, hi, x);
    }
    *out = (float)x;
    return TDM_OK;
}

static tdm_status_t get_int(pctx_t *c, const json_t *o, const char *key, int64_t lo, int64_t hi,
                            int64_t *out, bool *given)
{
    json_t *v = srv_json_get(o, key);
    if (given != NULL) {
        *given = v != NULL;
    }
    if (v == NULL) {
        return TDM_OK;
    }
    int64_t x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (int64_t)json_real_value(v);
    } else {
        return srv_fail(&c->pe, key, "'%s' must be an integer", key);
    }
    if (x < lo || x > hi) {
        return srv_fail(&c->pe, key, "'%s' must be between %lld and %lld (got %lld)", key,
                        (long long)lo, (long long)hi, (long long)x);
    }
    *out = x;
    return TDM_OK;
}

static tdm_status_t parse_stop(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    json_t *v = srv_json_get(o, "stop");
    if (v == NULL) {
        return TDM_OK;
    }
    if (json_is_string(v)) {
        if (json_string_length(v) == 0 || json_string_length(v) > CRD_MAX_STOP_LEN) {
            return srv_fail(&c->pe, "stop", "stop strings must be 1 to %d bytes long",
                            CRD_MAX_STOP_LEN);
        }
        r->stop[r->n_stop++] = strdup(json_string_value(v));
        return TDM_OK;
    }
    if (!json_is_array(v)) {
        return srv_fail(&c->pe, "stop", "'stop' must be a string or an array of strings");
    }
    if (json_array_size(v) > CRD_MAX_STOP_STRINGS) {
        return srv_fail(&c->pe, "stop", "at most %d stop strings are allowed",
                        CRD_MAX_STOP_STRINGS);
    }
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e) || json_string_length(e) == 0 ||
            json_string_length(e) > CRD_MAX_STOP_LEN) {
            return srv_fail(&c->pe, "stop", "stop[%zu] must be a string of 1 to %d bytes", i,
                            CRD_MAX_STOP_LEN);
        }
        r->stop[r->n_stop++] = strdup(json_string_value(e));
    }
    return TDM_OK;
}

/* Sampling, lengths, stop, n, streaming: the parameters both APIs share. */
/* Tandem's extension (an extra_body field for the OpenAI clients):
 * "speculative": {"mode": "off" | "ngram" | "draft" | "mtp", "max": 1..16}, both optional
 * ("draft" needs a server started with --draft-model, "mtp" one started with --spec mtp; the
 * scheduler refuses them otherwise). */
static tdm_status_t parse_speculative(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    json_t *v = srv_json_get(o, "speculative");
    if (v == NULL) {
        return TDM_OK;
    }
    if (!json_is_object(v)) {
        return srv_fail(&c->pe, "speculative", "'speculative' must be an object");
    }
    json_t *m = json_object_get(v, "mode");
    if (m != NULL && !json_is_null(m)) {
        const char *s = json_is_string(m) ? json_string_value(m) : "";
        if (strcmp(s, "off") == 0) {
            r->spec.mode = CRD_SPEC_OFF;
        } else if (strcmp(s, "ngram") == 0) {
            r->spec.mode = CRD_SPEC_NGRAM;
        } else if (strcmp(s, "draft") == 0) {
            r->spec.mode = CRD_SPEC_DRAFT;
        } else if (strcmp(s, "mtp") == 0) {
            r->spec.mode = CRD_SPEC_MTP;
        } else {
            return srv_fail(&c->pe, "speculative",
                            "'speculative.mode' must be \"off\", \"ngram\", \"draft\" or "
                            "\"mtp\"");
        }
    }
    int64_t x = 0;
    bool given = false;
    SRV_TRY(get_int(c, v, "max", 1, CRD_SPEC_MAX_DRAFT, &x, &given));
    if (given) {
        r->spec.max_draft = (int32_t)x;
    }
    return TDM_OK;
}

/*
 * OpenAI's logit_bias: {"<token id>": bias, ...}, bias in [-100, 100], at most
 * CRD_LOGIT_BIAS_MAX entries. Keys are decimal token ids as OpenAI documents them; whether
 * an id is in the vocabulary is checked by the caller, which knows the model.
 */
static tdm_status_t parse_logit_bias(pctx_t *c, const json_t *o, crd_sampling_params_t *sp)
{
    json_t *lb = srv_json_get(o, "logit_bias");
    if (lb == NULL) {
        return TDM_OK;
    }
    if (!json_is_object(lb)) {
        return srv_fail(&c->pe, "logit_bias", "'logit_bias' must be an object of token ids");
    }
    if (json_object_size(lb) > CRD_LOGIT_BIAS_MAX) {
        return srv_fail(&c->pe, "logit_bias", "'logit_bias' may hold at most %d tokens (got %zu)",
                        CRD_LOGIT_BIAS_MAX, json_object_size(lb));
    }
    const char *key;
    json_t *v;
    int32_t n = 0;
    json_object_foreach(lb, key, v)
    {
        size_t len = strlen(key);
        bool digits = len > 0 && len <= 10;
        for (size_t i = 0; digits && i < len; i++) {
            digits = key[i] >= '0' && key[i] <= '9';
        }
        long long id = digits ? strtoll(key, NULL, 10) : -1;
        if (!digits || id > INT32_MAX) {
            return srv_fail(&c->pe, "logit_bias",
                            "'logit_bias' keys must be token ids (decimal integers), got '%.32s'",
                            key);
        }
        if (!json_is_number(v) || !(json_number_value(v) >= -CRD_LOGIT_BIAS_LIMIT &&
                                    json_number_value(v) <= CRD_LOGIT_BIAS_LIMIT)) {
            return srv_fail(&c->pe, "logit_bias",
                            "'logit_bias' values must be numbers between -100 and 100 (token %s)",
                            key);
        }
        for (int32_t j = 0; j < n; j++) {
            if (sp->logit_bias_id[j] == (int32_t)id) {
                return srv_fail(&c->pe, "logit_bias", "'logit_bias' names token %lld twice", id);
            }
        }
        sp->logit_bias_id[n] = (int32_t)id;
        sp->logit_bias[n] = (float)json_number_value(v);
        n++;
    }
    sp->n_logit_bias = n;
    return TDM_OK;
}

static tdm_status_t parse_common(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    json_t *model = srv_json_get(o, "model");
    if (model != NULL) {
        if (!json_is_string(model)) {
            return srv_fail(&c->pe, "model", "'model' must be a string");
        }
        r->model = strdup(json_string_value(model));
    }
    SRV_TRY(get_bool(c, o, "stream", &r->stream));
    json_t *so = srv_json_get(o, "stream_options");
    if (so != NULL) {
        if (!json_is_object(so)) {
            return srv_fail(&c->pe, "stream_options", "'stream_options' must be an object");
        }
        SRV_TRY(get_bool(c, so, "include_usage", &r->include_usage));
    }
    int64_t x = 0;
    bool given = false;
    SRV_TRY(get_int(c, o, "max_tokens", 1, INT32_MAX, &x, &given));
    if (given) {
        r->max_tokens = (int32_t)x;
    }
    SRV_TRY(get_int(c, o, "max_completion_tokens", 1, INT32_MAX, &x, &given));
    if (given) {
        r->max_tokens = (int32_t)x;
    }
    SRV_TRY(parse_speculative(c, o, r));
    crd_sampling_params_t *sp = &r->sampling;
    SRV_TRY(get_number(c, o, "temperature", 0.0, 2.0, &sp->temperature));
    SRV_TRY(get_number(c, o, "top_p", 0.0, 1.0, &sp->top_p));
    if (srv_json_get(o, "top_p") != NULL && sp->top_p <= 0.0f) {
        return srv_fail(&c->pe, "top_p", "'top_p' must be greater than 0");
    }
    SRV_TRY(get_int(c, o, "top_k", -1, INT32_MAX, &x, &given));
    if (given) {
        sp->top_k = (int32_t)x;
    }
    SRV_TRY(get_number(c, o, "min_p", 0.0, 1.0, &sp->min_p));
    SRV_TRY(get_number(c, o, "presence_penalty", -2.0, 2.0, &sp->presence_penalty));
    SRV_TRY(get_number(c, o, "frequency_penalty", -2.0, 2.0, &sp->frequency_penalty));
    SRV_TRY(get_number(c, o, "repetition_penalty", 1e-3, 100.0, &sp->repetition_penalty));
    SRV_TRY(get_int(c, o, "seed", INT64_MIN, INT64_MAX, &x, &given));
    if (given) {
        sp->seed = (uint64_t)x;
        sp->has_seed = true;
    }
    SRV_TRY(get_int(c, o, "n", 1, SRV_MAX_N, &x, &given));
    if (given) {
        r->n = (int)x;
    }
    SRV_TRY(get_bool(c, o, "ignore_eos", &r->ignore_eos));
    SRV_TRY(get_bool(c, o, "skip_special_tokens", &r->skip_special_tokens));
    SRV_TRY(parse_stop(c, o, r));
    SRV_TRY(parse_logit_bias(c, o, sp));
    json_t *bo = srv_json_get(o, "best_of");
    if (bo != NULL && !(json_is_integer(bo) && json_integer_value(bo) == 1)) {
        return srv_fail(&c->pe, "best_of", "'best_of' is not supported");
    }
    return TDM_OK;
}

/* The text of a message's content: a string, or text parts joined by newlines. */
static tdm_status_t content_text(pctx_t *c, json_t *content, size_t mi, json_t **out)
{
    char pname[64];
    snprintf(pname, sizeof(pname), "messages[%zu].content", mi);
    if (content == NULL || json_is_null(content)) {
        *out = json_string("");
        return TDM_OK;
    }
    if (json_is_string(content)) {
        *out = json_incref(content);
        return TDM_OK;
    }
    if (!json_is_array(content)) {
        return srv_fail(&c->pe, pname, "'%s' must be a string or an array of content parts", pname);
    }
    size_t total = 0, i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type)) {
            return srv_fail(&c->pe, pname, "%s[%zu] must be an object with a 'type'", pname, i);
        }
        if (strcmp(json_string_value(type), "text") != 0) {
            return srv_fail(&c->pe, pname,
                            "%s[%zu]: content parts of type '%s' are not supported (text only)",
                            pname, i, json_string_value(type));
        }
        if (!json_is_string(text)) {
            return srv_fail(&c->pe, pname, "%s[%zu].text must be a string", pname, i);
        }
        total += json_string_length(text) + 1;
    }
    char *buf = malloc(total + 1), *p = buf;
    if (buf == NULL) {
        return tdm_error_set(c->pe.err, TDM_ERR_NO_MEMORY, "out of memory");
    }
    json_array_foreach(content, i, part)
    {
        json_t *text = json_object_get(part, "text");
        if (i > 0) {
            *p++ = '\n';
        }
        memcpy(p, json_string_value(text), json_string_length(text));
        p += json_string_length(text);
    }
    *out = json_stringn(buf, (size_t)(p - buf));
    free(buf);
    return *out != NULL ? TDM_OK : srv_fail(&c->pe, pname, "'%s' has text with a NUL byte", pname);
}

/* An assistant message's tool_calls, arguments turned into objects for the template (as
 * transformers expects them; OpenAI clients send them as JSON text). */
static tdm_status_t normalise_tool_calls(pctx_t *c, json_t *calls, size_t mi, json_t **out)
{
    char pname[64];
    snprintf(pname, sizeof(pname), "messages[%zu].tool_calls", mi);
    if (!json_is_array(calls)) {
        return srv_fail(&c->pe, pname, "'%s' must be an array", pname);
    }
    json_t *res = json_array();
    size_t i;
    json_t *tc;
    json_array_foreach(calls, i, tc)
    {
        json_t *fn = json_object_get(tc, "function");
        json_t *name = json_object_get(fn, "name");
        json_t *args = json_object_get(fn, "arguments");
        if (!json_is_object(tc) || !json_is_object(fn) || !json_is_string(name)) {
            json_decref(res);
            return srv_fail(&c->pe, pname, "%s[%zu] must have function.name", pname, i);
        }
        json_t *a;
        if (args == NULL || json_is_null(args)) {
            a = json_object();
        } else if (json_is_string(args)) {
            json_error_t je;
            a = json_loads(json_string_value(args), JSON_DECODE_ANY, &je);
            if (a == NULL) {
                json_decref(res);
                return srv_fail(&c->pe, pname, "%s[%zu].function.arguments is not valid JSON: %s",
                                pname, i, je.text);
            }
        } else {
            a = json_incref(args);
        }
        json_t *copy = json_deep_copy(tc);
        json_t *fcopy = json_object_get(copy, "function");
        json_object_set_new(fcopy, "arguments", a);
        if (json_object_get(copy, "type") == NULL) {
            json_object_set_new(copy, "type", json_string("function"));
        }
        json_array_append_new(res, copy);
    }
    *out = res;
    return TDM_OK;
}

static tdm_status_t parse_messages(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    json_t *msgs = srv_json_get(o, "messages");
    if (msgs == NULL) {
        return srv_fail(&c->pe, "messages", "'messages' is required");
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        return srv_fail(&c->pe, "messages", "'messages' must be a non-empty array");
    }
    if (json_array_size(msgs) > SRV_MAX_MESSAGES) {
        return srv_fail(&c->pe, "messages", "at most %d messages are allowed", SRV_MAX_MESSAGES);
    }
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool"};
    r->messages = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        char pname[64];
        snprintf(pname, sizeof(pname), "messages[%zu]", i);
        if (!json_is_object(m)) {
            return srv_fail(&c->pe, pname, "'%s' must be an object", pname);
        }
        json_t *role = json_object_get(m, "role");
        bool known = false;
        for (size_t k = 0; json_is_string(role) && k < sizeof(roles) / sizeof(roles[0]); k++) {
            known |= strcmp(json_string_value(role), roles[k]) == 0;
        }
        if (!known) {
            snprintf(pname, sizeof(pname), "messages[%zu].role", i);
            return srv_fail(&c->pe, pname,
                            "'%s' must be one of system, developer, user, assistant, tool", pname);
        }
        json_t *nm = json_deep_copy(m);
        json_t *text = NULL;
        tdm_status_t st = content_text(c, json_object_get(m, "content"), i, &text);
        if (st != TDM_OK) {
            json_decref(nm);
            return st;
        }
        json_object_set_new(nm, "content", text);
        json_t *calls = srv_json_get(m, "tool_calls");
        if (calls != NULL) {
            json_t *norm = NULL;
            st = normalise_tool_calls(c, calls, i, &norm);
            if (st != TDM_OK) {
                json_decref(nm);
                return st;
            }
            json_object_set_new(nm, "tool_calls", norm);
        } else {
            json_object_del(nm, "tool_calls");
        }
        json_t *rc = srv_json_get(m, "reasoning_content");
        if (rc != NULL && !json_is_string(rc)) {
            json_decref(nm);
            snprintf(pname, sizeof(pname), "messages[%zu].reasoning_content", i);
            return srv_fail(&c->pe, pname, "'%s' must be a string", pname);
        }
        json_array_append_new(r->messages, nm);
    }
    return TDM_OK;
}

static tdm_status_t parse_tools(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    json_t *tools = srv_json_get(o, "tools");
    if (tools != NULL) {
        if (!json_is_array(tools)) {
            return srv_fail(&c->pe, "tools", "'tools' must be an array");
        }
        if (json_array_size(tools) > SRV_MAX_TOOLS) {
            return srv_fail(&c->pe, "tools", "at most %d tools are allowed", SRV_MAX_TOOLS);
        }
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t)
        {
            json_t *type = json_object_get(t, "type"), *fn = json_object_get(t, "function");
            char pname[48];
            snprintf(pname, sizeof(pname), "tools[%zu]", i);
            if (!json_is_object(t) || !json_is_string(type) ||
                strcmp(json_string_value(type), "function") != 0 || !json_is_object(fn)) {
                return srv_fail(&c->pe, pname,
                                "'%s' must be {\"type\": \"function\", \"function\": {...}}",
                                pname);
            }
            json_t *name = json_object_get(fn, "name"), *params = json_object_get(fn, "parameters");
            if (!srv_valid_tool_name(name, SRV_MAX_FUNCTION_NAME)) {
                return srv_fail(&c->pe, pname,
                                "%s.function.name must be 1 to 64 characters of a-z, A-Z, 0-9, "
                                "underscores, dots and dashes",
                                pname);
            }
            if (params != NULL && !json_is_null(params) && !json_is_object(params)) {
                return srv_fail(&c->pe, pname, "%s.function.parameters must be an object", pname);
            }
        }
        if (json_array_size(tools) > 0) {
            r->tools = json_incref(tools);
        }
    }
    json_t *tc = srv_json_get(o, "tool_choice");
    r->tool_choice = SRV_TOOL_CHOICE_AUTO;
    if (tc == NULL) {
        return TDM_OK;
    }
    if (json_is_string(tc)) {
        const char *v = json_string_value(tc);
        if (strcmp(v, "auto") == 0) {
            r->tool_choice = SRV_TOOL_CHOICE_AUTO;
        } else if (strcmp(v, "none") == 0) {
            r->tool_choice = SRV_TOOL_CHOICE_NONE;
        } else if (strcmp(v, "required") == 0) {
            r->tool_choice = SRV_TOOL_CHOICE_REQUIRED;
        } else {
            return srv_fail(&c->pe, "tool_choice",
                            "'tool_choice' must be \"auto\", \"none\", \"required\" or a function");
        }
    } else {
        json_t *fn = json_object_get(tc, "function");
        json_t *name = json_object_get(fn, "name");
        if (!json_is_object(tc) || !json_is_string(name)) {
            return srv_fail(&c->pe, "tool_choice",
                            "'tool_choice' must be a string or {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}");
        }
        r->tool_choice = SRV_TOOL_CHOICE_NAMED;
        r->tool_name = strdup(json_string_value(name));
    }
    if (r->tool_choice != SRV_TOOL_CHOICE_AUTO && r->tool_choice != SRV_TOOL_CHOICE_NONE &&
        r->tools == NULL) {
        return srv_fail(&c->pe, "tool_choice", "'tool_choice' requires 'tools'");
    }
    if (r->tool_choice == SRV_TOOL_CHOICE_NAMED) {
        bool found = false;
        size_t i;
        json_t *t;
        json_array_foreach(r->tools, i, t)
        {
            const char *n =
                json_string_value(json_object_get(json_object_get(t, "function"), "name"));
            found |= n != NULL && strcmp(n, r->tool_name) == 0;
        }
        if (!found) {
            return srv_fail(&c->pe, "tool_choice",
                            "tool_choice names '%s', which is not in 'tools'", r->tool_name);
        }
    }
    return TDM_OK;
}

/* OpenAI's reasoning_effort, passed to the chat template as the variable of the same name
 * (gpt-oss writes "Reasoning: low|medium|high" into its system message from it). */
static tdm_status_t parse_reasoning_effort(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    static const char *const efforts[] = {"none", "minimal", "low", "medium", "high", "xhigh"};
    json_t *v = srv_json_get(o, "reasoning_effort");
    if (v == NULL) {
        return TDM_OK;
    }
    for (size_t i = 0; json_is_string(v) && i < sizeof(efforts) / sizeof(efforts[0]); i++) {
        if (strcmp(json_string_value(v), efforts[i]) == 0) {
            r->reasoning_effort = efforts[i];
            return TDM_OK;
        }
    }
    return srv_fail(&c->pe, "reasoning_effort",
                    "'reasoning_effort' must be one of none, minimal, low, medium, high, xhigh");
}

static tdm_status_t parse_chat(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    SRV_TRY(parse_messages(c, o, r));
    SRV_TRY(parse_tools(c, o, r));
    SRV_TRY(parse_reasoning_effort(c, o, r));
    SRV_TRY(get_bool(c, o, "logprobs", &r->logprobs));
    int64_t x = 0;
    bool given = false;
    SRV_TRY(get_int(c, o, "top_logprobs", 0, CRD_MAX_TOP_LOGPROBS, &x, &given));
    if (given) {
        if (!r->logprobs && x > 0) {
            return srv_fail(&c->pe, "top_logprobs", "'top_logprobs' requires 'logprobs': true");
        }
        r->top_logprobs = (int)x;
    }
    json_t *kw = srv_json_get(o, "chat_template_kwargs");
    if (kw != NULL) {
        if (!json_is_object(kw)) {
            return srv_fail(&c->pe, "chat_template_kwargs",
                            "'chat_template_kwargs' must be an object");
        }
        r->template_kwargs = json_incref(kw);
    }
    json_t *rf = srv_json_get(o, "response_format");
    if (rf != NULL) {
        json_t *t = json_object_get(rf, "type");
        if (!json_is_string(t) || strcmp(json_string_value(t), "text") != 0) {
            return srv_fail(&c->pe, "response_format",
                            "only response_format {\"type\": \"text\"} is supported");
        }
    }
    return TDM_OK;
}

static tdm_status_t parse_prompt_ids(pctx_t *c, json_t *arr, srv_gen_req_t *r)
{
    size_t n = json_array_size(arr);
    if (n == 0 || n > SRV_MAX_PROMPT_IDS) {
        return srv_fail(&c->pe, "prompt", "a token-id prompt must have 1 to %d ids",
                        SRV_MAX_PROMPT_IDS);
    }
    r->prompt_ids = malloc(n * sizeof(int32_t));
    if (r->prompt_ids == NULL) {
        return tdm_error_set(c->pe.err, TDM_ERR_NO_MEMORY, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            return srv_fail(&c->pe, "prompt",
                            "prompt[%zu] must be a token id (a non-negative integer)", i);
        }
        r->prompt_ids[i] = (int32_t)json_integer_value(v);
    }
    r->n_prompt_ids = (int32_t)n;
    return TDM_OK;
}

static tdm_status_t parse_completions(pctx_t *c, const json_t *o, srv_gen_req_t *r)
{
    json_t *p = srv_json_get(o, "prompt");
    if (p == NULL) {
        return srv_fail(&c->pe, "prompt", "'prompt' is required");
    }
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0)))) {
        p = json_array_get(p, 0); /* one prompt in a batch of one */
    }
    if (json_is_string(p)) {
        r->prompt_text = strdup(json_string_value(p));
    } else if (json_is_array(p) && json_array_size(p) > 0 &&
               json_is_integer(json_array_get(p, 0))) {
        SRV_TRY(parse_prompt_ids(c, p, r));
    } else if (json_is_array(p) && json_array_size(p) > 1) {
        return srv_fail(&c->pe, "prompt", "only one prompt per request is supported");
    } else {
        return srv_fail(&c->pe, "prompt",
                        "'prompt' must be a string or an array of token ids (and not empty)");
    }
    bool echo = false;
    SRV_TRY(get_bool(c, o, "echo", &echo));
    if (echo) {
        return srv_fail(&c->pe, "echo", "'echo' is not supported");
    }
    if (srv_json_get(o, "suffix") != NULL) {
        return srv_fail(&c->pe, "suffix", "'suffix' is not supported");
    }
    int64_t x = 0;
    bool given = false;
    SRV_TRY(get_int(c, o, "logprobs", 0, 5, &x, &given));
    if (given) {
        r->logprobs = true;
        r->top_logprobs = (int)x;
    }
    return TDM_OK;
}

tdm_status_t srv_parse_gen_json(srv_api_t api, const json_t *o, srv_gen_req_t *out, char *param,
                                size_t param_size, tdm_error_t *err)
{
    memset(out, 0, sizeof(*out));
    out->api = api;
    out->n = 1;
    out->skip_special_tokens = true;
    crd_sampling_params_default(&out->sampling);
    if (param_size > 0) {
        param[0] = '\0';
    }
    pctx_t c = {.pe = {.err = err, .param = param, .param_size = param_size}};
    tdm_status_t st;
    if (!json_is_object(o)) {
        st = srv_fail(&c.pe, NULL, "the body must be a JSON object");
    } else {
        st = parse_common(&c, o, out);
        if (st == TDM_OK) {
            st = api == SRV_API_CHAT ? parse_chat(&c, o, out) : parse_completions(&c, o, out);
        }
        if (st == TDM_OK) {
            st = crd_sampling_params_validate(&out->sampling, err);
        }
    }
    for (int i = 0; i < out->n_stop && st == TDM_OK; i++) {
        if (out->stop[i] == NULL) {
            st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
        }
    }
    return st;
}

tdm_status_t srv_parse_gen_request(srv_api_t api, const char *body, size_t len, srv_gen_req_t *out,
                                   char *param, size_t param_size, tdm_error_t *err)
{
    json_t *o = srv_json_body(body, len, err);
    if (o == NULL) {
        memset(out, 0, sizeof(*out));
        if (param_size > 0) {
            param[0] = '\0';
        }
        return TDM_ERR_FORMAT;
    }
    tdm_status_t st = srv_parse_gen_json(api, o, out, param, param_size, err);
    json_decref(o);
    return st;
}

void srv_gen_req_free(srv_gen_req_t *r)
{
    free(r->model);
    json_decref(r->messages);
    json_decref(r->tools);
    free(r->tool_name);
    json_decref(r->template_kwargs);
    free(r->assistant_prefill);
    free(r->prompt_text);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_stop; i++) {
        free(r->stop[i]);
    }
    memset(r, 0, sizeof(*r));
}
