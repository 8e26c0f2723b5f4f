/* prs_event.c - the event list of the combined output parsers (prs_event.h). */
#include "api/parse/prs_event.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

tdm_status_t prs_evlist_push(prs_evlist_t *l, prs_ev_kind_t kind, uint32_t call, const char *text,
                             size_t len)
{
    bool is_text = kind == PRS_EV_CONTENT || kind == PRS_EV_REASONING;
    if (is_text && len == 0) {
        return TDM_OK;
    }
    if (is_text && l->n > 0 && l->ev[l->n - 1].kind == kind) {
        /* merge: the new text replaces the last event's NUL */
        l->text.len--;
        if (prs_buf_append(&l->text, text, len) != TDM_OK ||
            prs_buf_append(&l->text, "", 1) != TDM_OK) {
            l->text.len = l->off[l->n - 1] + l->ev[l->n - 1].len;
            l->text.data[l->text.len++] = '\0';
            return TDM_ERR_NO_MEMORY;
        }
        l->ev[l->n - 1].len += len;
        return TDM_OK;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap == 0 ? 16 : l->cap * 2;
        prs_event_t *ev = realloc(l->ev, cap * sizeof(*ev));
        if (ev == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        l->ev = ev;
        size_t *off = realloc(l->off, cap * sizeof(*off));
        if (off == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        l->off = off;
        l->cap = cap;
    }
    size_t at = l->text.len;
    if (prs_buf_append(&l->text, text, len) != TDM_OK ||
        prs_buf_append(&l->text, "", 1) != TDM_OK) {
        l->text.len = at;
        return TDM_ERR_NO_MEMORY;
    }
    l->ev[l->n] = (prs_event_t){.kind = kind, .call = call, .text = NULL, .len = len};
    l->off[l->n] = at;
    l->n++;
    return TDM_OK;
}

void prs_evlist_fix(prs_evlist_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        l->ev[i].text = l->text.data + l->off[i];
    }
}

void prs_evlist_clear(prs_evlist_t *l)
{
    l->n = 0;
    prs_buf_clear(&l->text);
}

void prs_evlist_free(prs_evlist_t *l)
{
    free(l->ev);
    free(l->off);
    prs_buf_free(&l->text);
    memset(l, 0, sizeof(*l));
}
