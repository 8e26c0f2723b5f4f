/*
 * chat_prompt.h - a checked chat request (srv_gen_req_t) made ready for the engine: the
 * rendered and tokenized conversation, what the output parser must expect, and the
 * tool-call text the server writes to force a call.
 *
 * Shared by every route that speaks in messages (chat completions, Anthropic Messages,
 * OpenAI Responses), so that a conversation renders the same, hits the same prefix cache
 * and is parsed the same way whichever API brought it.
 */
#ifndef SRV_CHAT_PROMPT_H
#define SRV_CHAT_PROMPT_H

#include "api/parse/output.h"
#include "api/server/oai_parse.h"
#include "api/server/srv.h"

#include <stdbool.h>

typedef struct srv_chat_prompt {
    tok_ids_t ids;        /* the rendered conversation                                   */
    char *prefix;         /* forced tool-call text the parsers are primed with, or NULL   */
    bool use_tools;       /* the template was given the tools                             */
    bool parse_tools;     /* the output is parsed for tool calls                          */
    bool harmony;         /* gpt-oss's harmony format                                     */
    bool parse_think;     /* "<think>" reasoning is split off                             */
    bool start_inside;    /* the prompt already opened "<think>"                          */
    unsigned detok_flags; /* tok_decode flags: the parsers must see some control tokens   */
} srv_chat_prompt_t;

/* Renders and tokenizes req. On failure returns the status with err's message and sets
 * *param to the request field to blame ("messages", "tool_choice"). out is always safe to
 * free. */
tdm_status_t srv_chat_prompt_build(srv_server_t *s, const srv_gen_req_t *req,
                                   srv_chat_prompt_t *out, const char **param, tdm_error_t *err);
void srv_chat_prompt_free(srv_chat_prompt_t *p);

/* A choice's output parser for p, primed with the forced tool-call text. */
tdm_status_t srv_chat_output_create(const srv_server_t *s, const srv_gen_req_t *req,
                                    const srv_chat_prompt_t *p, prs_output_t **out,
                                    tdm_error_t *err);

#endif
