/*
 * harmony.h - streaming parser of OpenAI's harmony format as gpt-oss writes it: reasoning,
 * answer and tool calls in one pass, for "reasoning_content", "content" and "tool_calls".
 *
 * The output is a sequence of messages, each "<|start|>HEADER<|message|>BODY" and a
 * terminator. The generation prompt already ends with "<|start|>assistant", so the output
 * starts inside the first header:
 *
 *   <|channel|>analysis<|message|>The user wants the weather.<|end|>
 *   <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json
 *   <|message|>{"city": "Paris"}<|call|>
 *
 * (shown on three lines; there are no newlines between the markers). The markers are
 * special tokens: the server must detokenize them as text for this parser (job.c's
 * TOK_DEC_RENDER_SPECIAL) and never shows them to the client.
 *
 * Headers. The text between the message start and "<|message|>" may hold "<|channel|>" and
 * "<|constrain|>" and otherwise only letters, digits, spaces, tabs and "_-.:=/@+"; a header
 * with anything else (any other marker, a newline, punctuation) or longer than
 * PRS_HARMONY_MAX_HEADER bytes is not a header. Read from a header: the channel (the word
 * after its last "<|channel|>": gpt-oss-20b sometimes writes a stray
 * "<|channel|>commentary" before the real one) and the recipient ("to=NAME", in the role
 * part "assistant to=functions.f<|channel|>commentary json" or after the channel
 * "<|channel|>commentary to=functions.f <|constrain|>json"). The role and content type are
 * ignored.
 *
 * Messages, by header:
 *   recipient "functions.NAME"   a tool call: NAME, arguments = the body, which must be one
 *                                JSON object (passed on compact, numbers as written)
 *   other recipients (python, browser.*: built-in tools the server does not offer) and
 *   channels other than analysis, commentary and final: not understood
 *   channel "analysis"           reasoning
 *   channel "final", "commentary" (a preamble the user sees) or none: content
 * A call is held until its message ends and is then decided atomically, as in tool_call.h:
 * a call with a body that is not a JSON object, a call when calls are off (tool_choice
 * "none", no tools), a message not understood, or a held message longer than
 * PRS_TOOL_MAX_CALL_BYTES is given back as content byte for byte, its header and markers
 * included. Reasoning and content bodies are streamed as they come.
 *
 * Terminators. A body ends at "<|end|>" (the next message follows; whitespace after it is
 * dropped), at "<|call|>" or "<|return|>" (nothing should follow: later text is content as
 * written, markers included), or at "<|start|>" or "<|channel|>" (a missing "<|end|>":
 * that marker opens the next message). The server never sees "<|call|>" and "<|return|>":
 * they are end-of-generation tokens, whose text is not output. So the end of the output
 * also ends the last message: a held call then becomes a call when its body is one JSON
 * object (an object is self-delimiting, so a truncated body never passes), else content.
 * Text between messages that is not a message start (after "<|end|>", before
 * "<|start|>") is content; so is a header left unfinished at the end.
 *
 * Streaming invariant (as tool_call.h): for any split of the output into chunks the events
 * (content and reasoning text concatenated, calls and where they sit) are identical to
 * feeding it at once. Only a partial marker, an unfinished header or a held message is
 * held back. Text is cut only at markers, so whole UTF-8 characters in give whole ones
 * out. Nothing fed is lost except the markers and headers of understood messages,
 * whitespace after "<|end|>", and primed text.
 *
 * A parser belongs to one sequence and is not thread-safe. After an error other than
 * TDM_ERR_INVALID_PARAM it must be destroyed.
 */
#ifndef PRS_HARMONY_H
#define PRS_HARMONY_H

#include "api/parse/prs_event.h"
#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>

#define PRS_HARMONY_MAX_HEADER 256 /* bytes of a header, after its "<|start|>" */

typedef struct prs_harmony prs_harmony_t;

/* calls false: function calls are given back as content (the request offered no tools). */
tdm_status_t prs_harmony_create(bool calls, prs_harmony_t **out, tdm_error_t *err);
void prs_harmony_destroy(prs_harmony_t *p);

/* Parses text the server put at the start of the assistant turn (e.g.
 * "<|channel|>commentary to=functions.f <|constrain|>json<|message|>" for a named
 * tool_choice) as if the model had written it, never emitting it as content or reasoning.
 * Only before the first feed (TDM_ERR_INVALID_PARAM otherwise). */
tdm_status_t prs_harmony_prime(prs_harmony_t *p, const char *text, size_t len, tdm_error_t *err);

/* Parses text[0..len) of model output and appends the events it decides. After finish it
 * is TDM_ERR_INVALID_PARAM. */
tdm_status_t prs_harmony_feed(prs_harmony_t *p, const char *text, size_t len, tdm_error_t *err);

/* End of output: decides what is held and appends the last events. Again: no-op. */
tdm_status_t prs_harmony_finish(prs_harmony_t *p, tdm_error_t *err);

/* The events appended since the last clear; valid until the next prime, feed, finish or
 * clear. */
size_t prs_harmony_n_events(const prs_harmony_t *p);
const prs_event_t *prs_harmony_events(const prs_harmony_t *p);
void prs_harmony_clear_events(prs_harmony_t *p);

/* True while the parser holds a function-call message that has not ended. */
bool prs_harmony_in_call(const prs_harmony_t *p);

/* The completed calls so far; the strings live as long as the parser. */
size_t prs_harmony_n_calls(const prs_harmony_t *p);
const char *prs_harmony_call_name(const prs_harmony_t *p, size_t index);
const char *prs_harmony_call_args(const prs_harmony_t *p, size_t index);

#endif
