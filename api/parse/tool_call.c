/*
 * tool_call.c - the streaming driver of the tool-call parser: content and opening tags,
 * the held region of a possible call, the event list and the completed calls. The
 * formats' scanners and parsers are in tool_hermes.c, tool_qwen3coder.c, tool_minimax.c
 * and tool_mistral.c.
 */
#include "api/parse/tool_call.h"

#include "api/parse/prs_json.h"
#include "api/parse/tool_internal.h"
#include "common/check.h"

#include <stdlib.h>
#include <string.h>

typedef enum ts_state {
    TS_TEXT,       /* content; a partial opening tag is held                 */
    TS_AFTER_CALL, /* right after a valid call: whitespace is dropped        */
    TS_REGION,     /* inside a possible call: its whole text is held         */
    TS_FINISHED,   /* prs_tool_parser_finish was called                     */
} ts_state_t;

struct prs_tool_parser {
    prs_tool_format_t format;
    json_t *tools; /* copy of the request's tools, or NULL */
    ts_state_t state;
    prs_scan_t scan;     /* TS_REGION: the format scanner's state               */
    prs_buf_t hold;      /* undecided text; TS_REGION: the region starts at [0] */
    uint64_t hold_off;   /* stream offset of hold.data[0]                       */
    uint64_t total;      /* bytes primed and fed so far                         */
    uint64_t primed_end; /* stream bytes before this were primed: never content */
    bool fed;            /* a feed happened (no more priming)                   */

    prs_tool_event_t *ev; /* events; ev[i].text is set from ev_off[i] on return */
    size_t *ev_off;       /* offset of each event's text in ev_text             */
    size_t n_ev, cap_ev;
    prs_buf_t ev_text; /* event texts, each followed by a NUL */

    prs_callv_t calls; /* every valid call so far */
};

/* ---- formats --------------------------------------------------------------------- */

prs_tool_format_t prs_tool_format_from_template(const char *src)
{
    if (src == NULL) {
        return PRS_TOOL_NONE;
    }
    /* the most specific markers first, so that a template that also shows another
     * format's tags (in an example or a tool description) is still recognised */
    if (strstr(src, "<|channel|>") != NULL) {
        return PRS_TOOL_HARMONY;
    }
    if (strstr(src, PRS_TAG_MM_CALL) != NULL) {
        return PRS_TOOL_MINIMAX_M2;
    }
    /* Mistral's templates show no XML tags, and no other format's show this token */
    if (strstr(src, PRS_TAG_MS_CALLS) != NULL) {
        return PRS_TOOL_MISTRAL;
    }
    if (strstr(src, PRS_TAG_FUNCTION) != NULL && strstr(src, PRS_TAG_PARAMETER) != NULL) {
        return PRS_TOOL_QWEN3_CODER;
    }
    if (strstr(src, PRS_TAG_TOOL_CALL) != NULL) {
        return PRS_TOOL_HERMES;
    }
    return PRS_TOOL_NONE;
}

static const char *const format_names[] = {
    [PRS_TOOL_NONE] = "none",
    [PRS_TOOL_HERMES] = "hermes",
    [PRS_TOOL_QWEN3_CODER] = "qwen3_coder",
    [PRS_TOOL_MINIMAX_M2] = "minimax_m2",
    [PRS_TOOL_HARMONY] = "harmony",
    [PRS_TOOL_MISTRAL] = "mistral",
};

const char *prs_tool_format_name(prs_tool_format_t format)
{
    if ((unsigned)format >= TDM_ARRAY_SIZE(format_names)) {
        return "unknown";
    }
    return format_names[format];
}

tdm_status_t prs_tool_format_from_name(const char *name, prs_tool_format_t *out, tdm_error_t *err)
{
    for (size_t i = 0; name != NULL && i < TDM_ARRAY_SIZE(format_names); i++) {
        if (strcmp(name, format_names[i]) == 0) {
            *out = (prs_tool_format_t)i;
            return TDM_OK;
        }
    }
    return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                         "unknown tool-call format '%s' (expected none, hermes, qwen3_coder, "
                         "minimax_m2, harmony or mistral)",
                         name != NULL ? name : "(null)");
}

/* ---- call lists ------------------------------------------------------------------ */

tdm_status_t prs_callv_push(prs_callv_t *cv, char *name, char *args)
{
    return prs_callv_push_id(cv, name, args, NULL);
}

tdm_status_t prs_callv_push_id(prs_callv_t *cv, char *name, char *args, char *id)
{
    if (name == NULL || args == NULL) {
        free(name);
        free(args);
        free(id);
        return TDM_ERR_NO_MEMORY;
    }
    if (cv->n == cv->cap) {
        size_t cap = cv->cap == 0 ? 4 : cv->cap * 2;
        prs_call_t *v = realloc(cv->v, cap * sizeof(*v));
        if (v == NULL) {
            free(name);
            free(args);
            free(id);
            return TDM_ERR_NO_MEMORY;
        }
        cv->v = v;
        cv->cap = cap;
    }
    cv->v[cv->n] = (prs_call_t){.name = name, .args = args, .id = id};
    cv->n++;
    return TDM_OK;
}

void prs_callv_free(prs_callv_t *cv)
{
    for (size_t i = 0; i < cv->n; i++) {
        free(cv->v[i].name);
        free(cv->v[i].args);
        free(cv->v[i].id);
    }
    free(cv->v);
    memset(cv, 0, sizeof(*cv));
}

/* ---- life cycle ------------------------------------------------------------------ */

tdm_status_t prs_tool_parser_create(prs_tool_format_t format, const json_t *tools,
                                    prs_tool_parser_t **out, tdm_error_t *err)
{
    if ((unsigned)format >= TDM_ARRAY_SIZE(format_names)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tool-call parser: unknown format %d",
                             (int)format);
    }
    if (format == PRS_TOOL_HARMONY) {
        /* harmony carries reasoning and content as well: api/parse/harmony.h parses it */
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tool-call parser: harmony output is parsed by the harmony parser");
    }
    if (tools != NULL && !json_is_array(tools)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tool-call parser: 'tools' must be an array");
    }
    prs_tool_parser_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tool-call parser: out of memory");
    }
    p->format = format;
    p->state = TS_TEXT;
    if (tools != NULL) {
        p->tools = json_deep_copy(tools);
        if (p->tools == NULL) {
            free(p);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                                 "tool-call parser: out of memory copying 'tools'");
        }
    }
    *out = p;
    return TDM_OK;
}

void prs_tool_parser_destroy(prs_tool_parser_t *p)
{
    if (p == NULL) {
        return;
    }
    json_decref(p->tools);
    prs_buf_free(&p->hold);
    free(p->ev);
    free(p->ev_off);
    prs_buf_free(&p->ev_text);
    prs_callv_free(&p->calls);
    free(p);
}

/* ---- events ---------------------------------------------------------------------- */

static tdm_status_t push_event(prs_tool_parser_t *p, prs_tool_event_kind_t kind, uint32_t call,
                               const char *text, size_t len)
{
    if (p->n_ev == p->cap_ev) {
        size_t cap = p->cap_ev == 0 ? 16 : p->cap_ev * 2;
        prs_tool_event_t *ev = realloc(p->ev, cap * sizeof(*ev));
        if (ev == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        p->ev = ev;
        size_t *off = realloc(p->ev_off, cap * sizeof(*off));
        if (off == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        p->ev_off = off;
        p->cap_ev = cap;
    }
    size_t at = p->ev_text.len;
    TDM_CHECK(prs_buf_append(&p->ev_text, text, len));
    if (prs_buf_append(&p->ev_text, "", 1) != TDM_OK) {
        p->ev_text.len = at;
        return TDM_ERR_NO_MEMORY;
    }
    p->ev[p->n_ev] = (prs_tool_event_t){.kind = kind, .call = call, .text = NULL, .len = len};
    p->ev_off[p->n_ev] = at;
    p->n_ev++;
    return TDM_OK;
}

/* Emits the stream bytes [off, off + n) = s[0..n) as content, less any primed part. */
static tdm_status_t emit_content(prs_tool_parser_t *p, uint64_t off, const char *s, size_t n)
{
    if (off < p->primed_end) {
        uint64_t skip = p->primed_end - off;
        if (skip >= n) {
            return TDM_OK;
        }
        s += skip;
        n -= (size_t)skip;
    }
    if (n == 0) {
        return TDM_OK;
    }
    if (p->n_ev > 0 && p->ev[p->n_ev - 1].kind == PRS_TOOL_EV_CONTENT) {
        /* merge: replace the last event's NUL by the new text */
        p->ev_text.len--;
        if (prs_buf_append(&p->ev_text, s, n) != TDM_OK) {
            p->ev_text.len++;
            return TDM_ERR_NO_MEMORY;
        }
        TDM_CHECK(prs_buf_append(&p->ev_text, "", 1));
        p->ev[p->n_ev - 1].len += n;
        return TDM_OK;
    }
    return push_event(p, PRS_TOOL_EV_CONTENT, 0, s, n);
}

/* Records the calls of a parsed region (taking them out of cv) and emits their events. */
static tdm_status_t emit_calls(prs_tool_parser_t *p, prs_callv_t *cv)
{
    for (size_t i = 0; i < cv->n; i++) {
        prs_call_t c = cv->v[i];
        cv->v[i] = (prs_call_t){0};
        uint32_t idx = (uint32_t)p->calls.n;
        TDM_CHECK(prs_callv_push_id(&p->calls, c.name, c.args, c.id));
        TDM_CHECK(push_event(p, PRS_TOOL_EV_CALL_BEGIN, idx, c.name, strlen(c.name)));
        TDM_CHECK(push_event(p, PRS_TOOL_EV_CALL_ARGS, idx, c.args, strlen(c.args)));
        TDM_CHECK(push_event(p, PRS_TOOL_EV_CALL_END, idx, "", 0));
    }
    return TDM_OK;
}

/* Points the public events at their texts (ev_text may have moved). */
static void fix_events(prs_tool_parser_t *p)
{
    for (size_t i = 0; i < p->n_ev; i++) {
        p->ev[i].text = p->ev_text.data + p->ev_off[i];
    }
}

/* ---- the state machine ----------------------------------------------------------- */

/* Where the first opening tag of the format is in r[0..n): *at (n if none), *open the
 * length of that tag and *wrapped its kind; *cut is where a partial tag at the end starts
 * (n if none). */
static void find_open(const prs_tool_parser_t *p, const char *r, size_t n, size_t *at, size_t *open,
                      bool *wrapped, size_t *cut)
{
    if (p->format == PRS_TOOL_MINIMAX_M2 || p->format == PRS_TOOL_MISTRAL) {
        const char *tag = p->format == PRS_TOOL_MISTRAL ? PRS_TAG_MS_CALLS : PRS_TAG_MM_CALL;
        size_t tl = strlen(tag);
        *at = prs_find(r, n, tag, tl);
        *cut = prs_partial_start(r, n, tag, tl);
        *open = tl;
        *wrapped = true;
        return;
    }
    size_t a = prs_find(r, n, PRS_LIT(PRS_TAG_TOOL_CALL));
    size_t c = prs_partial_start(r, n, PRS_LIT(PRS_TAG_TOOL_CALL));
    *wrapped = true;
    *open = sizeof(PRS_TAG_TOOL_CALL) - 1;
    if (p->format == PRS_TOOL_QWEN3_CODER) {
        size_t b = prs_find(r, n, PRS_LIT(PRS_TAG_FUNCTION));
        size_t d = prs_partial_start(r, n, PRS_LIT(PRS_TAG_FUNCTION));
        if (b < a) {
            a = b;
            *wrapped = false;
            *open = sizeof(PRS_TAG_FUNCTION) - 1;
        }
        c = d < c ? d : c;
    }
    *at = a;
    *cut = c;
}

/* The format's scanner over the held region. */
static bool scan_region(prs_tool_parser_t *p, const char *r, size_t n, size_t *end)
{
    switch (p->format) {
    case PRS_TOOL_HERMES:
        return prs_hermes_scan(&p->scan, r, n, end);
    case PRS_TOOL_MINIMAX_M2:
        return prs_minimax_scan(&p->scan, r, n, end);
    case PRS_TOOL_MISTRAL:
        return prs_mistral_scan(&p->scan, r, n, end);
    default:
        return prs_xml_scan(&p->scan, r, n, end);
    }
}

/* Decides a region whose end the scanner found: calls, or content when malformed. */
static tdm_status_t close_region(prs_tool_parser_t *p, const char *r, size_t end, uint64_t off)
{
    prs_callv_t cv = {0};
    tdm_status_t st;
    switch (p->format) {
    case PRS_TOOL_HERMES:
        st = prs_hermes_parse(r, end, &cv);
        break;
    case PRS_TOOL_MINIMAX_M2:
        st = prs_minimax_parse(r, end, p->tools, &cv);
        break;
    case PRS_TOOL_MISTRAL:
        st = prs_mistral_parse(r, end, &cv);
        break;
    default:
        st = prs_xml_parse(r, end, p->scan.wrapped, p->tools, &cv);
        break;
    }
    if (st == TDM_OK) {
        st = emit_calls(p, &cv);
        p->state = TS_AFTER_CALL;
    } else if (st == TDM_ERR_FORMAT) {
        st = emit_content(p, off, r, end);
        p->state = TS_TEXT;
    }
    prs_callv_free(&cv);
    return st;
}

/* Runs the state machine over hold as far as the text decides it; keeps the rest. */
static tdm_status_t process(prs_tool_parser_t *p)
{
    size_t pos = 0, n = p->hold.len;
    tdm_status_t st = TDM_OK;
    while (st == TDM_OK && pos < n) {
        const char *r = p->hold.data + pos;
        size_t m = n - pos;
        uint64_t off = p->hold_off + pos;
        if (p->state == TS_TEXT) {
            if (p->format == PRS_TOOL_NONE) {
                st = emit_content(p, off, r, m);
                pos = n;
                break;
            }
            size_t at, open, cut;
            bool wrapped;
            find_open(p, r, m, &at, &open, &wrapped, &cut);
            if (at == m) {
                st = emit_content(p, off, r, cut);
                pos += cut;
                break;
            }
            st = emit_content(p, off, r, at);
            pos += at;
            p->state = TS_REGION;
            p->scan = (prs_scan_t){.pos = open, .sub = 0, .wrapped = wrapped};
        } else if (p->state == TS_AFTER_CALL) {
            while (pos < n && prs_json_is_ws(p->hold.data[pos])) {
                pos++;
            }
            if (pos < n) {
                p->state = TS_TEXT;
            }
        } else {
            size_t end;
            bool done = scan_region(p, r, m, &end);
            if (done) {
                st = close_region(p, r, end, off);
                pos += end;
            } else if (m >= PRS_TOOL_MAX_CALL_BYTES) {
                st = emit_content(p, off, r, m); /* too long for a call: give it back */
                pos = n;
                p->state = TS_TEXT;
            } else {
                break;
            }
        }
    }
    if (st == TDM_OK) {
        prs_buf_consume(&p->hold, pos);
        p->hold_off += pos;
    }
    return st;
}

/* Feeds text through the state machine. The hold never grows beyond
 * PRS_TOOL_MAX_CALL_BYTES, so a region reaches that size exactly before it is given up,
 * whatever the chunking. */
static tdm_status_t feed(prs_tool_parser_t *p, const char *text, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t room = PRS_TOOL_MAX_CALL_BYTES - p->hold.len;
        size_t take = len - i < room ? len - i : room;
        TDM_CHECK(prs_buf_append(&p->hold, text + i, take));
        i += take;
        p->total += take;
        TDM_CHECK(process(p));
    }
    return TDM_OK;
}

tdm_status_t prs_tool_parser_prime(prs_tool_parser_t *p, const char *text, size_t len,
                                   tdm_error_t *err)
{
    if (p->fed || p->state == TS_FINISHED) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tool-call parser: prime after output was fed");
    }
    p->primed_end = p->total + len;
    tdm_status_t st = feed(p, text, len);
    fix_events(p);
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "tool-call parser: out of memory");
    }
    return TDM_OK;
}

tdm_status_t prs_tool_parser_feed(prs_tool_parser_t *p, const char *text, size_t len,
                                  tdm_error_t *err)
{
    if (p->state == TS_FINISHED) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tool-call parser: feed after finish");
    }
    p->fed = true;
    tdm_status_t st = feed(p, text, len);
    fix_events(p);
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "tool-call parser: out of memory");
    }
    return TDM_OK;
}

tdm_status_t prs_tool_parser_finish(prs_tool_parser_t *p, tdm_error_t *err)
{
    if (p->state == TS_FINISHED) {
        return TDM_OK;
    }
    /* a partial tag is text, and an unclosed call is given back as it was written */
    tdm_status_t st = emit_content(p, p->hold_off, p->hold.data, p->hold.len);
    fix_events(p);
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "tool-call parser: out of memory");
    }
    p->hold_off += p->hold.len;
    prs_buf_clear(&p->hold);
    p->state = TS_FINISHED;
    return TDM_OK;
}

size_t prs_tool_parser_n_events(const prs_tool_parser_t *p)
{
    return p->n_ev;
}

const prs_tool_event_t *prs_tool_parser_events(const prs_tool_parser_t *p)
{
    return p->ev;
}

void prs_tool_parser_clear_events(prs_tool_parser_t *p)
{
    p->n_ev = 0;
    prs_buf_clear(&p->ev_text);
}

bool prs_tool_parser_in_call(const prs_tool_parser_t *p)
{
    return p->state == TS_REGION;
}

size_t prs_tool_parser_n_calls(const prs_tool_parser_t *p)
{
    return p->calls.n;
}

const char *prs_tool_parser_call_name(const prs_tool_parser_t *p, size_t index)
{
    return index < p->calls.n ? p->calls.v[index].name : NULL;
}

const char *prs_tool_parser_call_args(const prs_tool_parser_t *p, size_t index)
{
    return index < p->calls.n ? p->calls.v[index].args : NULL;
}

const char *prs_tool_parser_call_id(const prs_tool_parser_t *p, size_t index)
{
    return index < p->calls.n ? p->calls.v[index].id : NULL;
}
