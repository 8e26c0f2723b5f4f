/*
 * tool_internal.h - what the tool-call driver (tool_call.c) and the per-format code
 * (tool_hermes.c, tool_qwen3coder.c) share. Not for use outside api/parse.
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
#define PRS_LIT(s)            s, (sizeof(s) - 1)

/* Scanner state of one region. */
typedef struct prs_scan {
    size_t pos;   /* next byte of the region to look at                          */
    int sub;      /* format-specific sub-state                                   */
    bool wrapped; /* Qwen3-Coder: region opened by <tool_call> (else <function=) */
} prs_scan_t;

/* One parsed call. */
typedef struct prs_call {
    char *name; /* function name, UTF-8, NUL-terminated        */
    char *args; /* compact JSON object text, NUL-terminated   */
} prs_call_t;

/* A growable list of calls (the result of parsing one region). */
typedef struct prs_callv {
    prs_call_t *v;
    size_t n, cap;
} prs_callv_t;

/* Appends a call, taking ownership of name and args (freed on failure too). */
tdm_status_t prs_callv_push(prs_callv_t *cv, char *name, char *args);
void prs_callv_free(prs_callv_t *cv);

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

#endif
