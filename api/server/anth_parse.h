/*
 * anth_parse.h - Anthropic Messages request bodies (POST /v1/messages and
 * /v1/messages/count_tokens) to a checked chat request.
 *
 * A Messages request is a chat conversation in another shape: `system` (a string or text
 * blocks) becomes the system message, content blocks become the chat messages' text,
 * `tool_use` blocks an assistant message's tool_calls, `tool_result` blocks tool messages,
 * `thinking` blocks reasoning_content (redacted_thinking is opaque and dropped), tools with
 * `input_schema` function tools, `tool_choice` {auto, any, tool, none} the chat values,
 * `thinking` {type: enabled|adaptive|between_tools|disabled} the template's thinking
 * switch (enable_thinking, and reasoning_effort from budget_tokens or
 * output_config.effort for templates that read it).
 * A final assistant message is a prefill, as in Anthropic's API: its text is written after
 * the generation prompt and the reply continues it.
 * The result goes through the chat completions' own parser (oai_parse.h), so both APIs
 * render, cache and parse a conversation the same way.
 *
 * Anthropic's rules are checked first, under Anthropic's names: `model` and `max_tokens`
 * are required (max_tokens not for count_tokens), temperature in [0, 1], roles user and
 * assistant only, known block types. Unknown top-level fields are ignored (clients send
 * betas); block types we cannot honour (image, document, server tools) are refused.
 */
#ifndef SRV_ANTH_PARSE_H
#define SRV_ANTH_PARSE_H

#include "api/server/oai_parse.h"

#include <stdbool.h>

typedef struct srv_anth_req {
    srv_gen_req_t gen;     /* the conversation as a chat request (api SRV_API_CHAT) */
    bool thinking;         /* thinking {type: enabled, adaptive or between_tools}  */
    bool thinking_omitted; /* thinking.display "omitted": blocks without their text */
} srv_anth_req_t;

/*
 * Parses body; count_tokens: the count_tokens body (no max_tokens, no sampling). On
 * failure returns TDM_ERR_INVALID_PARAM (TDM_ERR_FORMAT for malformed JSON) with a message
 * naming the field ("messages[1].content[0].tool_use_id"). out is always safe to
 * srv_anth_req_free.
 */
tdm_status_t srv_parse_anth_request(const char *body, size_t len, bool count_tokens,
                                    srv_anth_req_t *out, tdm_error_t *err);
void srv_anth_req_free(srv_anth_req_t *r);

#endif
