/*
 * oai_parse.h - OpenAI request bodies (chat and completions) to one checked struct.
 *
 * Everything a client sends is checked here, before any work: types, ranges, sizes and
 * combinations, each failure naming the parameter as OpenAI's error `param` does
 * ("messages[2].content", "top_p"). Unknown fields are ignored, as OpenAI-compatible
 * servers do (clients send extras); fields we cannot honour (json_schema output, several
 * prompts, echo) are refused rather than silently dropped.
 */
#ifndef SRV_OAI_PARSE_H
#define SRV_OAI_PARSE_H

#include "common/status.h"
#include "coordinator/sampler.h"
#include "coordinator/spec.h"
#include "coordinator/stop_strings.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_MAX_N          16   /* choices per request              */
#define SRV_MAX_MESSAGES   4096 /* messages per chat request        */
#define SRV_MAX_TOOLS      256  /* tools per request                */
#define SRV_MAX_PROMPT_IDS (1 << 20)

typedef enum srv_api { SRV_API_CHAT = 0, SRV_API_COMPLETIONS } srv_api_t;

typedef enum srv_tool_choice {
    SRV_TOOL_CHOICE_AUTO = 0,
    SRV_TOOL_CHOICE_NONE,
    SRV_TOOL_CHOICE_REQUIRED,
    SRV_TOOL_CHOICE_NAMED,
} srv_tool_choice_t;

typedef struct srv_gen_req {
    srv_api_t api;
    char *model; /* NULL when the client named none */
    /* chat */
    json_t *messages; /* normalised: content is a string, tool arguments objects */
    json_t *tools;    /* NULL or a non-empty array of function tools              */
    srv_tool_choice_t tool_choice;
    char *tool_name;              /* SRV_TOOL_CHOICE_NAMED                              */
    json_t *template_kwargs;      /* NULL or an object (chat_template_kwargs)           */
    const char *reasoning_effort; /* NULL or a static string ("none" ... "xhigh")       */
    char *assistant_prefill;      /* NULL, or text the assistant turn starts with (the
                                   * Messages API's final assistant message): written after
                                   * the generation prompt, the reply continues it      */
    /* completions */
    char *prompt_text; /* a text prompt, or NULL when given as token ids           */
    int32_t *prompt_ids;
    int32_t n_prompt_ids;
    /* both */
    bool stream, include_usage;
    int32_t max_tokens; /* 0: not set */
    crd_sampling_params_t sampling;
    char *stop[CRD_MAX_STOP_STRINGS];
    int n_stop;
    int n;
    bool logprobs;
    int top_logprobs;
    bool ignore_eos;          /* vLLM's extension: do not stop at end-of-generation tokens */
    bool skip_special_tokens; /* default true: special tokens are not part of the text     */
    crd_spec_request_t spec;  /* "speculative": {"mode", "max"} (zero: the server's)        */
} srv_gen_req_t;

/*
 * Parses body as a request for api. On failure returns TDM_ERR_INVALID_PARAM (or
 * TDM_ERR_FORMAT for malformed JSON) with a message, and writes the offending parameter's
 * name into param ("" when none). out is always safe to srv_gen_req_free.
 */
tdm_status_t srv_parse_gen_request(srv_api_t api, const char *body, size_t len, srv_gen_req_t *out,
                                   char *param, size_t param_size, tdm_error_t *err);
/* The same for a body already parsed (o is borrowed): the Responses route builds a chat
 * request from its own body and has it checked here. */
tdm_status_t srv_parse_gen_json(srv_api_t api, const json_t *o, srv_gen_req_t *out, char *param,
                                size_t param_size, tdm_error_t *err);
void srv_gen_req_free(srv_gen_req_t *r);

#endif
