/*
 * tool_internal.h - what the tool-call driver (tool_call.c) and the per-format code
 * (tool_hermes.c, tool_qwen3coder.c, tool_minimax.c, tool_mistral.c, with tool_xmlargs.c
 * shared by the two XML formats) share. Not for use outside api/parse.
 *
 * The driver keeps the text of a possible call (a "region", from its opening tag on) until
 * the format's scanner says where the region ends; the format's parser then turns the
 * whole region into calls or rejects it. Scanners are incremental: each call looks only at
 * bytes from scan->pos on and never moves pos past a byte whose meaning depends on bytes
 * not yet seen, so the result is the same for any split of the text.
 */
#ifndef PRS_TOOL_INTERNAL_H
#define PRS_TOOL_INTERNAL_H

#include "api/parse/prs_buf.h"
#include "api/parse/prs_json.h"
#include "api/parse/tool_call.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define PRS_TAG_TOOL_CALL     "<tool_call>"
#define PRS_TAG_TOOL_CALL_END "</tool_call>"
#define PRS_TAG_FUNCTION      "<function="
#define PRS_TAG_FUNCTION_END  "</function>"
#define PRS_TAG_PARAMETER     "<parameter="
#define PRS_TAG_PARAMETER_END "</parameter>"
#define PRS_TAG_MM_CALL       "<minimax:tool_call>"
#define PRS_TAG_MM_CALL_END   "</minimax:tool_call>"
#define PRS_TAG_MM_INVOKE     "<invoke name="
#define PRS_TAG_MM_INVOKE_END "</invoke>"
#define PRS_TAG_MM_PARAM      "<parameter name="
#define PRS_TAG_MS_CALLS      "[TOOL_CALLS]"
#define PRS_TAG_MS_ARGS       "[ARGS]"
#define PRS_TAG_MS_CALL_ID    "[CALL_ID]"
#define PRS_LIT(s)            s, (sizeof(s) - 1)

/* Scanner state of one region. */
typedef struct prs_scan {
    size_t pos;   /* next byte of the region to look at                          */
    int sub;      /* format-specific sub-state                                   */
    bool wrapped; /* Qwen3-Coder: region opened by <tool_call> (else <function=) */
    int depth;    /* Mistral: open JSON brackets                                 */
    size_t count; /* Mistral: bytes of the name or id so far                     */
    size_t mark;  /* Mistral: where the JSON array's '[' is                      */
} prs_scan_t;

/* One parsed call. */
typedef struct prs_call {
    char *name; /* function name, UTF-8, NUL-terminated        */
    char *args; /* compact JSON object text, NUL-terminated   */
    char *id;   /* the model's call id, or NULL                */
} prs_call_t;

/* A growable list of calls (the result of parsing one region). */
typedef struct prs_callv {
    prs_call_t *v;
    size_t n, cap;
} prs_callv_t;

/* Appends a call, taking ownership of name and args (freed on failure too). */
tdm_status_t prs_callv_push(prs_callv_t *cv, char *name, char *args);

/* The same with the model's id (may be NULL; owned and freed likewise). */
tdm_status_t prs_callv_push_id(prs_callv_t *cv, char *name, char *args, char *id);
void prs_callv_free(prs_callv_t *cv);

/*
 * A JSON call's "arguments" member m (NULL: absent) of the object text body, as a compact
 * JSON object text (malloc'd): an object as written less whitespace, a string holding an
 * object, or null / absent as "{}". NULL with *st = TDM_ERR_FORMAT for anything else (or
 * TDM_ERR_NO_MEMORY). Shared by Hermes and Mistral's JSON array.
 */
char *prs_json_call_args(const char *body, const prs_json_member_t *m, tdm_status_t *st);

/*
 * Hermes. The region starts with "<tool_call>". Returns true when its end is known:
 * *end = the length of the region including the "</tool_call>" that closes it (the first
 * one outside a JSON string).
 */
bool prs_hermes_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end);

/* Parses a complete Hermes region r[0..n). TDM_OK with one call appended, TDM_ERR_FORMAT
 * when it is not a valid call, TDM_ERR_NO_MEMORY. */
tdm_status_t prs_hermes_parse(const char *r, size_t n, prs_callv_t *out);

/*
 * Qwen3-Coder XML. The region starts with "<tool_call>" (sc->wrapped) or "<function=".
 * Returns true when its end is known (*end as for Hermes): the "</tool_call>" outside a
 * parameter value, or for an unwrapped region the "</function>".
 */
bool prs_xml_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end);

/* Parses a complete Qwen3-Coder region r[0..n) into one or more calls, converting
 * parameter values with the schemas in tools (may be NULL). Errors as prs_hermes_parse. */
tdm_status_t prs_xml_parse(const char *r, size_t n, bool wrapped, const json_t *tools,
                           prs_callv_t *out);

/*
 * MiniMax-M2 XML. The region starts with "<minimax:tool_call>". Returns true when its end
 * is known (*end as for Hermes): the first "</minimax:tool_call>" outside a parameter value.
 */
bool prs_minimax_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end);

/* Parses a complete MiniMax-M2 region r[0..n) into one or more calls (one per <invoke>),
 * converting parameter values with the schemas in tools. Errors as prs_hermes_parse. */
tdm_status_t prs_minimax_parse(const char *r, size_t n, const json_t *tools, prs_callv_t *out);

/*
 * Mistral. The region starts with "[TOOL_CALLS]". Returns true when its end is known: just
 * past the '}' or ']' that completes its JSON value, or, as soon as the text cannot be a
 * call, the place where it stops being one (the parser then rejects the region and the rest
 * is read as text again).
 */
bool prs_mistral_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end);

/* Parses a complete Mistral region r[0..n) into its call (name form) or calls (JSON array).
 * Errors as prs_hermes_parse. */
tdm_status_t prs_mistral_parse(const char *r, size_t n, prs_callv_t *out);

/* ---- tool_xmlargs.c: what the two XML formats share ------------------------------------ */

/* 1 when tag is at r[i..n), -1 when r[i..n) is a proper prefix of it, 0 otherwise. */
int prs_tag_at(const char *r, size_t n, size_t i, const char *tag, size_t tl);

/* True when tag is at r[i..n). */
bool prs_at_tag(const char *r, size_t n, size_t i, const char *tag, size_t tl);

/*
 * A name written between '=' at r[*i - 1] and the next '>': the text up to '>' must hold no
 * '<', newline or NUL; it is trimmed of whitespace and, when unquote is set, of one pair of
 * matching '"' or '\'' around it, and must then be non-empty UTF-8. On success [*nb, *ne) is
 * the name and *i is just past the '>'.
 */
bool prs_xml_name(const char *r, size_t n, size_t *i, bool unquote, size_t *nb, size_t *ne);

/* One parameter of an XML call, as spans into the region's text. */
typedef struct prs_xparam {
    size_t nb, ne; /* the name                                        */
    size_t vb, ve; /* the value, already trimmed as the format says   */
} prs_xparam_t;

/* A growable list of parameters. */
typedef struct prs_xparamv {
    prs_xparam_t *v;
    size_t n, cap;
} prs_xparamv_t;

tdm_status_t prs_xparamv_push(prs_xparamv_t *pv, prs_xparam_t p);
void prs_xparamv_free(prs_xparamv_t *pv);

/*
 * Appends the call of function r[fb..fe) with parameters ps to out: the arguments object
 * built from the parameters (a repeated name keeps its last value), each value converted
 * by the type its property has in the function's schema in tools (rules in tool_call.h).
 * TDM_ERR_NO_MEMORY only.
 */
tdm_status_t prs_xml_push_call(const char *r, size_t fb, size_t fe, const prs_xparamv_t *ps,
                               const json_t *tools, prs_callv_t *out);

#endif
