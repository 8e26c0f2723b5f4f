/*
 * resp_parse.h - OpenAI Responses request bodies (POST /v1/responses) to a checked chat
 * request.
 *
 * A Responses request is a conversation in another shape: `input` items (messages,
 * function calls and their outputs, reasoning passed back) become chat messages,
 * `instructions` the system message, flat function tools the chat completions' nested
 * ones. The result is checked by the chat completions' own parser (oai_parse.h), so both
 * APIs render, cache and parse a conversation the same way. Errors name the Responses
 * field ("input[3].call_id", "max_output_tokens").
 *
 * Tandem keeps no responses: `store` is accepted (and answered false) but
 * `previous_response_id`, `conversation` and `item_reference` items, which need a stored
 * conversation, are refused with a 400 that says to send the whole input.
 */
#ifndef SRV_RESP_PARSE_H
#define SRV_RESP_PARSE_H

#include "api/server/oai_parse.h"

#include <jansson.h>

typedef struct srv_resp_req {
    srv_gen_req_t gen; /* the conversation as a chat request (api SRV_API_CHAT)         */
    json_t *echo;      /* the fields the response object repeats: instructions,
                        * metadata, tools, tool_choice, temperature, top_p, reasoning, ...*/
} srv_resp_req_t;

/*
 * Parses body. On failure returns TDM_ERR_INVALID_PARAM (TDM_ERR_FORMAT for malformed
 * JSON) with a message and the offending field's name in param ("" when none). out is
 * always safe to srv_resp_req_free.
 */
tdm_status_t srv_parse_resp_request(const char *body, size_t len, srv_resp_req_t *out, char *param,
                                    size_t param_size, tdm_error_t *err);
void srv_resp_req_free(srv_resp_req_t *r);

#endif
