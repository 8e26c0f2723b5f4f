/*
 * prs_event.h - the events of the combined output parsers (harmony.h, output.h): text
 * that is content or reasoning, and tool calls, in the order the model wrote them; and
 * the growable list they are kept in.
 *
 * Why a list of events and not two buffers: a streamed response must say where a call sits
 * among the text (an SSE chunk carries what came before it), and harmony interleaves
 * reasoning, content and calls freely.
 */
#ifndef PRS_EVENT_H
#define PRS_EVENT_H

#include "api/parse/prs_buf.h"
#include "common/status.h"

#include <stddef.h>
#include <stdint.h>

typedef enum prs_ev_kind {
    PRS_EV_CONTENT = 0, /* answer text                                                  */
    PRS_EV_REASONING,   /* reasoning text (OpenAI "reasoning_content")                  */
    PRS_EV_CALL_BEGIN,  /* a call starts: its index and function name                   */
    PRS_EV_CALL_ARGS,   /* its arguments, one compact JSON object text                  */
    PRS_EV_CALL_END,    /* the call is complete ("")                                    */
} prs_ev_kind_t;

typedef struct prs_event {
    prs_ev_kind_t kind;
    uint32_t call;    /* CALL_*: index of the call, counting from 0 over the parser's life */
    const char *text; /* NUL-terminated (CONTENT and REASONING may hold NULs of their own) */
    size_t len;       /* bytes of text                                                      */
} prs_event_t;

/* The list. ev[i].text points into text and is set by prs_evlist_fix. */
typedef struct prs_evlist {
    prs_event_t *ev;
    size_t *off; /* offset of each event's text in text */
    size_t n, cap;
    prs_buf_t text; /* event texts, each followed by a NUL */
} prs_evlist_t;

/* Appends an event. CONTENT and REASONING text with len 0 adds nothing, and is merged into
 * the last event when that is of the same kind. TDM_ERR_NO_MEMORY leaves l as it was. */
tdm_status_t prs_evlist_push(prs_evlist_t *l, prs_ev_kind_t kind, uint32_t call, const char *text,
                             size_t len);

/* Points every event at its text (call after the last push, before handing out ev). */
void prs_evlist_fix(prs_evlist_t *l);

/* Empties the list (keeps the memory). */
void prs_evlist_clear(prs_evlist_t *l);

void prs_evlist_free(prs_evlist_t *l);

#endif
