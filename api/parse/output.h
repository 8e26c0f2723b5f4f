/*
 * output.h - a model's output parsers put together as the server uses them: text in, one
 * ordered stream of content, reasoning and tool-call events out (prs_event.h), whatever the
 * model's format.
 *
 * Two pipelines, chosen by the format:
 *   - "<think>" models (Hermes, Qwen3-Coder, MiniMax-M2, Mistral tool calls, or none):
 *     reasoning.h splits off the reasoning, and what it leaves as content goes through
 *     tool_call.h;
 *   - PRS_TOOL_HARMONY (gpt-oss): harmony.h, which reads reasoning, content and calls from
 *     the same message stream.
 * Each stage is optional: no reasoning stage unless params.reasoning, no tool-call stage
 * unless params.calls (harmony then gives calls back as content). With neither, text is
 * passed through as content.
 *
 * The stages' guarantees hold for the whole: for any split of the output into chunks the
 * events are the same (content and reasoning text concatenated, calls and their places);
 * a malformed or unfinished call is content, byte for byte; failing parses never leave a
 * stage in a failed state. Events of one feed come in output order; in the "<think>"
 * pipeline reasoning always precedes content.
 *
 * Not thread-safe; one per sequence. After an error other than TDM_ERR_INVALID_PARAM it
 * must be destroyed.
 */
#ifndef PRS_OUTPUT_H
#define PRS_OUTPUT_H

#include "api/parse/prs_event.h"
#include "api/parse/tool_call.h"
#include "common/status.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct prs_output_params {
    prs_tool_format_t format; /* the model's format (PRS_TOOL_HARMONY: the harmony pipeline) */
    bool calls;               /* parse tool calls: the request offers tools, tool_choice is  */
                              /* not "none"                                                  */
    const json_t *tools;      /* the request's "tools" (schemas of XML parameters); or NULL */
    bool reasoning;           /* split "<think>" reasoning off (ignored by harmony)          */
    bool start_inside;        /* the prompt already opened "<think>"                         */
} prs_output_params_t;

typedef struct prs_output prs_output_t;

/* An unknown format, or tools that is not an array: TDM_ERR_INVALID_PARAM. */
tdm_status_t prs_output_create(const prs_output_params_t *params, prs_output_t **out,
                               tdm_error_t *err);
void prs_output_destroy(prs_output_t *o);

/*
 * Text the server wrote at the start of the assistant turn to force a tool call, parsed as
 * if the model had written it and never output as text. In the "<think>" pipeline it goes
 * to the tool-call stage only (the prefix closes any reasoning itself). Only before the
 * first feed, and only when calls are parsed (TDM_ERR_INVALID_PARAM otherwise).
 */
tdm_status_t prs_output_prime(prs_output_t *o, const char *text, size_t len, tdm_error_t *err);

/* Parses text[0..len) of model output and appends the events it decides. */
tdm_status_t prs_output_feed(prs_output_t *o, const char *text, size_t len, tdm_error_t *err);

/* End of output: decides everything held and appends the last events. Again: no-op. */
tdm_status_t prs_output_finish(prs_output_t *o, tdm_error_t *err);

/* The events appended since the last clear; valid until the next prime, feed, finish or
 * clear. CONTENT and REASONING events are never empty. */
size_t prs_output_n_events(const prs_output_t *o);
const prs_event_t *prs_output_events(const prs_output_t *o);
void prs_output_clear_events(prs_output_t *o);

/* The completed calls so far (for non-streamed responses); the strings live as long as the
 * parser. */
size_t prs_output_n_calls(const prs_output_t *o);
const char *prs_output_call_name(const prs_output_t *o, size_t index);
const char *prs_output_call_args(const prs_output_t *o, size_t index);

/* The id the model wrote for a call (Mistral), or NULL: the server then makes one up. */
const char *prs_output_call_id(const prs_output_t *o, size_t index);

#endif
