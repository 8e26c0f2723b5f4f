/*
 * tool_call.h - streaming extraction of tool calls from model output, for the OpenAI
 * "tool_calls" field. Four output formats are understood (a fifth, gpt-oss harmony,
 * carries reasoning and content too and has its own parser, harmony.h; output.h puts the
 * parsers together as the server uses them):
 *
 *   PRS_TOOL_HERMES (Qwen2.5, Qwen3, NousHermes):
 *       <tool_call>
 *       {"name": "get_weather", "arguments": {"city": "Paris"}}
 *       </tool_call>
 *     The text between the tags must be one JSON object with a non-empty string "name"
 *     and "arguments" (alias "parameters") that is an object, or a JSON string holding an
 *     object, or absent / null (taken as {}). Other members are ignored. A "</tool_call>"
 *     inside a JSON string does not end the call.
 *
 *   PRS_TOOL_QWEN3_CODER (Qwen3-Coder XML):
 *       <tool_call>
 *       <function=get_weather>
 *       <parameter=city>
 *       Paris
 *       </parameter>
 *       </function>
 *       </tool_call>
 *     One or more <function=...> blocks inside <tool_call>...</tool_call>; a <function=...>
 *     block with no <tool_call> around it is accepted too (Qwen3-Coder sometimes leaves it
 *     out) and then ends at its "</function>". A value runs to the first "</parameter>"; a
 *     missing "</parameter>" is tolerated (the value then ends at the next "<parameter=" or
 *     at "</function>"), and "</tool_call>" inside a value does not end the call. One
 *     leading and one trailing newline of a value are stripped, and the value is
 *     converted by the function's JSON schema in the request's tools
 *     (function.parameters.properties.<name>.type, a type list, or anyOf/oneOf types):
 *       string            -> JSON string (the text exactly)
 *       integer / number  -> the number as written if it is a JSON number, else a string
 *       boolean           -> true / false for "true" / "false" in any case, else a string
 *       null              -> null for "null" in any case, else a string
 *       object / array    -> the JSON value (compacted) if it is one of that kind, else a string
 *       no schema         -> the JSON value if the text is one, else a string
 *     For a type list, the non-string types are tried in order, then string. Numbers,
 *     booleans, null and JSON values are recognised with surrounding whitespace trimmed.
 *     A repeated parameter keeps its last value.
 *
 *   PRS_TOOL_MINIMAX_M2 (MiniMax-M2, M2.1, M2.5):
 *       <minimax:tool_call>
 *       <invoke name="get_weather">
 *       <parameter name="city">Paris</parameter>
 *       </invoke>
 *       </minimax:tool_call>
 *     One or more <invoke> blocks inside <minimax:tool_call>...</minimax:tool_call> (the
 *     wrapper is required). Names may be quoted with '"' or '\'' or not at all. A value runs
 *     to the first "</parameter>" (a missing one is tolerated as for Qwen3-Coder: the value
 *     then ends at the next "<parameter name=" or at "</invoke>"), and
 *     "</minimax:tool_call>" inside a value does not end the call. Surrounding whitespace
 *     of a value is stripped (MiniMax writes values inline; vLLM reads them so), and the
 *     value is converted by the schema exactly as for Qwen3-Coder (same code).
 *
 *   PRS_TOOL_MISTRAL (Mistral's [TOOL_CALLS] token; the tokenizer version decides the shape):
 *       [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}              v13+: Devstral Small 2,
 *                                                                   Devstral 2, Ministral 3
 *       [TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": ...} v11: Mistral Small 3.1/3.2
 *       [TOOL_CALLS][{"name": "get_weather", "arguments": {...}, "id": "a1b2c3d4e"}, ...]
 *                                                                   v2-v7: Nemo, Small 3, ...
 *     One call per [TOOL_CALLS] in the first two shapes (parallel calls repeat it), any
 *     number in the JSON array of the third. There is no closing tag: a call ends where its
 *     JSON value ends (the '}' or ']' that balances the first bracket, outside strings).
 *     NAME is 1..256 bytes of [A-Za-z0-9_.:-] or UTF-8 beyond ASCII; whitespace around it is
 *     allowed; "[ARGS]" may be missing (NAME{...}, as vLLM reads text with the control
 *     tokens dropped). The arguments must be one JSON object. An id (the [CALL_ID] text, or
 *     the array elements' "id") is kept when it is 9 ASCII letters and digits, Mistral's
 *     form (prs_tool_parser_call_id), and otherwise dropped (the call still counts). Array
 *     elements follow the Hermes rules ("name" a non-empty string, "arguments" or
 *     "parameters" an object, a string holding one, or absent / null); one bad element
 *     makes the whole array content. A raw control character inside a JSON string ends the
 *     call at once as malformed (valid JSON never has one), so broken output is not held.
 *     [TOOL_CALLS], [ARGS] and [CALL_ID] are control tokens: the text fed must render them.
 *
 * Events. feed() appends events to a list the caller reads and empties:
 *   CONTENT     ordinary text (adjacent CONTENT text is merged into one event)
 *   CALL_BEGIN  a call starts: its index and function name
 *   CALL_ARGS   a fragment of its arguments; the fragments of a call concatenate to one
 *               compact JSON object text ({"city":"Paris"}); today there is one fragment
 *   CALL_END    the call is complete
 * Call indexes count from 0 over the parser's life.
 *
 * Calls are atomic: the parser holds the raw text of a possible call from its opening
 * tag until the tag that closes it (Mistral: until its JSON value is complete), and only
 * then decides. A valid call yields BEGIN,
 * ARGS and END together; anything else - invalid JSON, no name, a malformed XML block,
 * output that ends inside an unclosed call (a <tool_call> with no </tool_call> included),
 * or a call longer than PRS_TOOL_MAX_CALL_BYTES - is given back as CONTENT, byte for byte,
 * and no CALL_* event is ever emitted for it. Nothing fed is lost except: whitespace right
 * after a valid call (between calls and at the end; a following text keeps no leading
 * whitespace), the tags of valid calls (and a Mistral call's id, kept apart), and primed
 * text (prs_tool_parser_prime).
 *
 * Streaming invariant: for any split of the output into chunks, the concatenated CONTENT
 * text, the calls, and the position of each call in the content are identical to feeding
 * the output at once. Only a partial opening tag (at most 18 bytes) or an open call is
 * held back. If chunks are whole UTF-8 characters, CONTENT events are too. Arguments are
 * always valid UTF-8 JSON (a byte that is not UTF-8 in an XML string value becomes U+FFFD).
 *
 * A parser belongs to one sequence and is not thread-safe. After an error other than
 * TDM_ERR_INVALID_PARAM it must be destroyed.
 */
#ifndef PRS_TOOL_CALL_H
#define PRS_TOOL_CALL_H

#include "common/status.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest call text held back; a call not closed within this many bytes (tags included)
 * is released as content. */
#define PRS_TOOL_MAX_CALL_BYTES ((size_t)1 << 20)

typedef enum prs_tool_format {
    PRS_TOOL_NONE = 0,    /* no tool calls: everything is content                       */
    PRS_TOOL_HERMES,      /* <tool_call>{json}</tool_call>                              */
    PRS_TOOL_QWEN3_CODER, /* <tool_call><function=...> XML                              */
    PRS_TOOL_MINIMAX_M2,  /* <minimax:tool_call><invoke name=...> XML                   */
    PRS_TOOL_HARMONY,     /* gpt-oss harmony messages: harmony.h, not this parser       */
    PRS_TOOL_MISTRAL,     /* [TOOL_CALLS]NAME[ARGS]{json}, or [TOOL_CALLS][{json}, ...]  */
} prs_tool_format_t;

/* The format a chat template's source implies: HARMONY if it contains "<|channel|>", else
 * MINIMAX_M2 if it contains "<minimax:tool_call>", else MISTRAL if it contains
 * "[TOOL_CALLS]", else QWEN3_CODER if it contains both "<function=" and "<parameter=", else
 * HERMES if it contains "<tool_call>", else NONE (also for NULL). */
prs_tool_format_t prs_tool_format_from_template(const char *template_source);

/* "none", "hermes", "qwen3_coder", "minimax_m2", "harmony", "mistral" (for a CLI
 * override); never NULL. */
const char *prs_tool_format_name(prs_tool_format_t format);

/* The format named by name (as prs_tool_format_name writes it); TDM_ERR_INVALID_PARAM
 * with the accepted names otherwise. */
tdm_status_t prs_tool_format_from_name(const char *name, prs_tool_format_t *out, tdm_error_t *err);

typedef enum prs_tool_event_kind {
    PRS_TOOL_EV_CONTENT = 0,
    PRS_TOOL_EV_CALL_BEGIN,
    PRS_TOOL_EV_CALL_ARGS,
    PRS_TOOL_EV_CALL_END,
} prs_tool_event_kind_t;

typedef struct prs_tool_event {
    prs_tool_event_kind_t kind;
    uint32_t call;    /* CALL_*: index of the call                                     */
    const char *text; /* CONTENT: the text; CALL_BEGIN: the name; CALL_ARGS: the       */
                      /* fragment; CALL_END: "". NUL-terminated (CONTENT may hold NULs) */
    size_t len;       /* bytes of text                                                 */
} prs_tool_event_t;

typedef struct prs_tool_parser prs_tool_parser_t;

/*
 * tools is the request's OpenAI "tools" array (may be NULL); the parser keeps a copy and
 * uses it only for the schemas of XML parameters (entries that are not
 * {"type": "function", "function": {"name": ..., "parameters": ...}} are ignored). An
 * unknown format, PRS_TOOL_HARMONY, or tools that is not an array, is
 * TDM_ERR_INVALID_PARAM.
 */
tdm_status_t prs_tool_parser_create(prs_tool_format_t format, const json_t *tools,
                                    prs_tool_parser_t **out, tdm_error_t *err);
void prs_tool_parser_destroy(prs_tool_parser_t *p);

/*
 * Parses text[0..len) that the server put at the start of the assistant turn (e.g.
 * "<tool_call>\n" for tool_choice "required", or "<tool_call>\n{\"name\": \"f\",
 * \"arguments\": " for a named function) as if the model had generated it, without ever
 * emitting it as content (also not when the call turns out malformed). Calls it
 * completes are reported normally. Only before the first feed (TDM_ERR_INVALID_PARAM
 * otherwise); may be called more than once.
 */
tdm_status_t prs_tool_parser_prime(prs_tool_parser_t *p, const char *text, size_t len,
                                   tdm_error_t *err);

/* Parses text[0..len) of model output and appends the events it decides. After
 * prs_tool_parser_finish it is TDM_ERR_INVALID_PARAM. */
tdm_status_t prs_tool_parser_feed(prs_tool_parser_t *p, const char *text, size_t len,
                                  tdm_error_t *err);

/* End of output: decides what is held (an unclosed call becomes content) and appends
 * the last events. Calling it again does nothing. */
tdm_status_t prs_tool_parser_finish(prs_tool_parser_t *p, tdm_error_t *err);

/* The events appended since the last clear. The array and the texts stay valid until the
 * next prime, feed, finish or clear. */
size_t prs_tool_parser_n_events(const prs_tool_parser_t *p);
const prs_tool_event_t *prs_tool_parser_events(const prs_tool_parser_t *p);
void prs_tool_parser_clear_events(prs_tool_parser_t *p);

/* True while the parser holds the text of a call that is not yet closed. */
bool prs_tool_parser_in_call(const prs_tool_parser_t *p);

/* The completed calls so far (for non-streaming responses): index < n_calls. The
 * strings belong to the parser and live as long as it does. */
size_t prs_tool_parser_n_calls(const prs_tool_parser_t *p);
const char *prs_tool_parser_call_name(const prs_tool_parser_t *p, size_t index);
const char *prs_tool_parser_call_args(const prs_tool_parser_t *p, size_t index);

/* The id the model wrote for call index (Mistral's 9-character ids), or NULL when it wrote
 * none (or one that is not valid): the caller then makes one up. */
const char *prs_tool_parser_call_id(const prs_tool_parser_t *p, size_t index);

#endif
