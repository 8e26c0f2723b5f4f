/* harmony.c - the gpt-oss harmony parser (rules in harmony.h). */
#include "api/parse/harmony.h"

#include "api/parse/prs_json.h"
#include "api/parse/tool_call.h"
#include "api/parse/tool_internal.h"
#include "common/check.h"

#include <stdlib.h>
#include <string.h>

#define M_START     "<|start|>"
#define M_END       "<|end|>"
#define M_MESSAGE   "<|message|>"
#define M_CHANNEL   "<|channel|>"
#define M_CONSTRAIN "<|constrain|>"
#define M_RETURN    "<|return|>"
#define M_CALL      "<|call|>"

typedef enum hm_state {
    HM_HEADER,   /* a message's header: the region (from the message start) is held      */
    HM_BODY,     /* a message's body: streamed, or for a held kind the whole region held */
    HM_AFTER,    /* after <|end|>: whitespace is dropped                                 */
    HM_TEXT,     /* between messages: content; a partial message start is held           */
    HM_DONE,     /* after <|call|> or <|return|>: everything is content                  */
    HM_FINISHED, /* prs_harmony_finish was called                                       */
} hm_state_t;

typedef enum hm_kind {
    HK_REASONING, /* streamed as reasoning                           */
    HK_CONTENT,   /* streamed as content                             */
    HK_CALL,      /* held; a call when the body is one JSON object   */
    HK_RAW,       /* held; content as written                        */
} hm_kind_t;

/* What ends a body, in the order of the which index used below. */
static const char *const terminators[] = {M_END, M_RETURN, M_CALL, M_START, M_CHANNEL};
enum { T_END, T_RETURN, T_CALL, T_START, T_CHANNEL, N_TERM };

struct prs_harmony {
    bool calls_on;
    hm_state_t state;
    hm_kind_t kind; /* HM_BODY                                                        */
    size_t hs;      /* HM_HEADER: the header starts this far into the region          */
    size_t body;    /* HM_BODY, held kinds: the body starts this far into the region  */
    size_t scan;    /* HM_BODY, held kinds: terminators not before this offset        */
    char *name;     /* HK_CALL: the function name                                     */

    prs_buf_t hold;      /* undecided text; a held region starts at [0]      */
    uint64_t hold_off;   /* stream offset of hold.data[0]                    */
    uint64_t total;      /* bytes primed and fed                             */
    uint64_t primed_end; /* stream bytes before this were primed: not output */
    bool fed;

    prs_evlist_t ev;
    prs_callv_t calls;
};

tdm_status_t prs_harmony_create(bool calls, prs_harmony_t **out, tdm_error_t *err)
{
    prs_harmony_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "harmony parser: out of memory");
    }
    p->calls_on = calls;
    /* the generation prompt ends with "<|start|>assistant": output starts in a header */
    p->state = HM_HEADER;
    p->hs = 0;
    *out = p;
    return TDM_OK;
}

void prs_harmony_destroy(prs_harmony_t *p)
{
    if (p == NULL) {
        return;
    }
    free(p->name);
    prs_buf_free(&p->hold);
    prs_evlist_free(&p->ev);
    prs_callv_free(&p->calls);
    free(p);
}

/* ---- output ------------------------------------------------------------------------ */

/* Emits the stream bytes [off, off + n) = s[0..n) as text of kind, less any primed part. */
static tdm_status_t emit(prs_harmony_t *p, prs_ev_kind_t kind, uint64_t off, const char *s,
                         size_t n)
{
    if (off < p->primed_end) {
        uint64_t skip = p->primed_end - off;
        if (skip >= n) {
            return TDM_OK;
        }
        s += skip;
        n -= (size_t)skip;
    }
    return prs_evlist_push(&p->ev, kind, 0, s, n);
}

/* Records a call (taking name and args) and emits its events. */
static tdm_status_t push_call(prs_harmony_t *p, char *name, char *args)
{
    uint32_t idx = (uint32_t)p->calls.n;
    TDM_CHECK(prs_callv_push(&p->calls, name, args));
    const prs_call_t *c = &p->calls.v[idx];
    TDM_CHECK(prs_evlist_push(&p->ev, PRS_EV_CALL_BEGIN, idx, c->name, strlen(c->name)));
    TDM_CHECK(prs_evlist_push(&p->ev, PRS_EV_CALL_ARGS, idx, c->args, strlen(c->args)));
    return prs_evlist_push(&p->ev, PRS_EV_CALL_END, idx, "", 0);
}

/* ---- markers ----------------------------------------------------------------------- */

/*
 * The first of the markers set[0..k) in r[0..n): returns its index in r (n if none) and
 * sets *which; *cut is where a partial marker at the end starts (n if none), the point up
 * to which text is certainly not part of a marker.
 */
static size_t find_marker(const char *r, size_t n, const char *const *set, int k, int *which,
                          size_t *cut)
{
    size_t best = n, c = n;
    *which = -1;
    for (int i = 0; i < k; i++) {
        size_t ml = strlen(set[i]);
        size_t a = prs_find(r, n, set[i], ml);
        if (a < best) {
            best = a;
            *which = i;
        }
    }
    if (best == n) {
        for (int i = 0; i < k; i++) {
            size_t ps = prs_partial_start(r, n, set[i], strlen(set[i]));
            c = ps < c ? ps : c;
        }
    }
    *cut = c;
    return best;
}

/* ---- headers ----------------------------------------------------------------------- */

typedef enum hdr_result { HDR_MORE, HDR_FAIL, HDR_DONE } hdr_result_t;

static bool header_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' ||
           c == '\t' || c == '_' || c == '-' || c == '.' || c == ':' || c == '=' || c == '/' ||
           c == '@' || c == '+';
}

/*
 * Looks at the header r[from..n). HDR_DONE: *at = where its "<|message|>" starts.
 * HDR_FAIL: *at = the first byte that cannot belong to a header. HDR_MORE: undecided. The
 * result depends only on the bytes, never on how far they have come (a decision is taken
 * only once the bytes that decide it are there).
 */
static hdr_result_t header_scan(const char *r, size_t n, size_t from, size_t *at)
{
    static const char *const ok[] = {M_MESSAGE, M_CHANNEL, M_CONSTRAIN};
    size_t i = from;
    while (i < n) {
        if (i - from >= PRS_HARMONY_MAX_HEADER) {
            *at = i;
            return HDR_FAIL;
        }
        char c = r[i];
        if (c != '<') {
            if (!header_char(c)) {
                *at = i;
                return HDR_FAIL;
            }
            i++;
            continue;
        }
        bool partial = false, matched = false;
        for (size_t k = 0; k < TDM_ARRAY_SIZE(ok) && !matched; k++) {
            size_t ml = strlen(ok[k]);
            int t = prs_tag_at(r, n, i, ok[k], ml);
            if (t == 1 && k == 0) {
                *at = i;
                return HDR_DONE;
            }
            if (t == 1) {
                i += ml;
                matched = true;
            }
            partial |= t < 0;
        }
        if (matched) {
            continue;
        }
        if (partial) {
            return HDR_MORE;
        }
        *at = i;
        return HDR_FAIL;
    }
    if (i - from >= PRS_HARMONY_MAX_HEADER) {
        *at = i;
        return HDR_FAIL;
    }
    return HDR_MORE;
}

static bool word_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* What a complete header h[0..n) makes of its message; for a call *name (malloc'd). */
static tdm_status_t header_kind(const prs_harmony_t *p, const char *h, size_t n, hm_kind_t *kind,
                                char **name)
{
    static const char ch[] = M_CHANNEL;
    const size_t cl = sizeof(ch) - 1;
    /* the channel: the word after the last <|channel|> */
    const char *chan = NULL;
    size_t chan_len = 0;
    for (size_t i = 0; i + cl <= n; i++) {
        if (memcmp(h + i, ch, cl) == 0) {
            size_t b = i + cl, e;
            while (b < n && (h[b] == ' ' || h[b] == '\t')) {
                b++;
            }
            for (e = b; e < n && word_char(h[e]); e++) {
            }
            chan = h + b;
            chan_len = e - b;
        }
    }
    /* the recipient: "to=" at the start of a word */
    const char *to = NULL;
    size_t to_len = 0;
    for (size_t i = 0; i + 3 <= n && to == NULL; i++) {
        if (memcmp(h + i, "to=", 3) == 0 &&
            (i == 0 || h[i - 1] == ' ' || h[i - 1] == '\t' || h[i - 1] == '>')) {
            size_t e = i + 3;
            while (e < n && h[e] != ' ' && h[e] != '\t' && h[e] != '<') {
                e++;
            }
            to = h + i + 3;
            to_len = e - (i + 3);
        }
    }
    *name = NULL;
    static const char fn[] = "functions.";
    const size_t fl = sizeof(fn) - 1;
    if (to != NULL) {
        if (p->calls_on && to_len > fl && memcmp(to, fn, fl) == 0) {
            *name = malloc(to_len - fl + 1);
            if (*name == NULL) {
                return TDM_ERR_NO_MEMORY;
            }
            memcpy(*name, to + fl, to_len - fl);
            (*name)[to_len - fl] = '\0';
            *kind = HK_CALL;
        } else {
            *kind = HK_RAW;
        }
    } else if (chan == NULL || (chan_len == 5 && memcmp(chan, "final", 5) == 0) ||
               (chan_len == 10 && memcmp(chan, "commentary", 10) == 0)) {
        *kind = HK_CONTENT;
    } else if (chan_len == 8 && memcmp(chan, "analysis", 8) == 0) {
        *kind = HK_REASONING;
    } else {
        *kind = HK_RAW;
    }
    return TDM_OK;
}

/* ---- the state machine ------------------------------------------------------------- */

/* The state after a body's terminator; *pos moves past it when it belongs to the message
 * (a <|start|> or <|channel|> opens the next one and stays). */
static void after_terminator(prs_harmony_t *p, int which, size_t *pos)
{
    if (which == T_START || which == T_CHANNEL) {
        p->state = HM_TEXT;
        return;
    }
    *pos += strlen(terminators[which]);
    p->state = which == T_END ? HM_AFTER : HM_DONE;
}

/* Decides a held message region r[0..e) whose body ended at e (end of output: which < 0):
 * a call, or content as written (the terminator included when it belongs to it). */
static tdm_status_t close_held(prs_harmony_t *p, const char *r, size_t e, int which, uint64_t off)
{
    tdm_status_t st = TDM_OK;
    bool done = false;
    if (p->kind == HK_CALL) {
        size_t vb, ve;
        const char *b = r + p->body;
        size_t bn = e - p->body;
        if (prs_json_whole(b, bn, &vb, &ve) == PRS_JSON_OBJECT) {
            prs_buf_t args = {0};
            st = prs_json_minify(b + vb, ve - vb, &args);
            if (st == TDM_OK) {
                char *name = p->name;
                p->name = NULL;
                st = push_call(p, name, prs_buf_take(&args));
                done = true;
            }
            prs_buf_free(&args);
        }
    }
    if (st == TDM_OK && !done) {
        size_t n = e;
        if (which >= 0 && which != T_START && which != T_CHANNEL) {
            n += strlen(terminators[which]);
        }
        st = emit(p, PRS_EV_CONTENT, off, r, n);
    }
    free(p->name);
    p->name = NULL;
    return st;
}

/* Runs the state machine over hold as far as the text decides it; keeps the rest. */
static tdm_status_t process(prs_harmony_t *p)
{
    size_t pos = 0, n = p->hold.len;
    tdm_status_t st = TDM_OK;
    while (st == TDM_OK && pos < n) {
        const char *r = p->hold.data + pos;
        size_t m = n - pos, at, cut;
        uint64_t off = p->hold_off + pos;
        int which;
        if (p->state == HM_HEADER) {
            hdr_result_t h = header_scan(r, m, p->hs, &at);
            if (h == HDR_MORE) {
                break;
            }
            if (h == HDR_FAIL) {
                st = emit(p, PRS_EV_CONTENT, off, r, at); /* not a message: as written */
                pos += at;
                p->state = HM_TEXT;
                continue;
            }
            st = header_kind(p, r + p->hs, at - p->hs, &p->kind, &p->name);
            if (st != TDM_OK) {
                break;
            }
            p->state = HM_BODY;
            size_t body = at + sizeof(M_MESSAGE) - 1;
            if (p->kind == HK_CALL || p->kind == HK_RAW) {
                p->body = p->scan = body; /* the region stays held from r[0] */
            } else {
                pos += body; /* an understood header is dropped */
            }
        } else if (p->state == HM_BODY && (p->kind == HK_REASONING || p->kind == HK_CONTENT)) {
            prs_ev_kind_t k = p->kind == HK_REASONING ? PRS_EV_REASONING : PRS_EV_CONTENT;
            at = find_marker(r, m, terminators, N_TERM, &which, &cut);
            if (which < 0) {
                st = emit(p, k, off, r, cut);
                pos += cut;
                break;
            }
            st = emit(p, k, off, r, at);
            pos += at;
            after_terminator(p, which, &pos);
        } else if (p->state == HM_BODY) {
            at = find_marker(r + p->scan, m - p->scan, terminators, N_TERM, &which, &cut);
            if (which < 0) {
                p->scan += cut;
                if (m >= PRS_TOOL_MAX_CALL_BYTES) {
                    /* too long for a call: give it back, and what follows is text */
                    st = emit(p, PRS_EV_CONTENT, off, r, m);
                    free(p->name);
                    p->name = NULL;
                    pos = n;
                    p->state = HM_TEXT;
                }
                break;
            }
            size_t e = p->scan + at;
            st = close_held(p, r, e, which, off);
            pos += e;
            after_terminator(p, which, &pos);
        } else if (p->state == HM_AFTER) {
            while (pos < n && prs_json_is_ws(p->hold.data[pos])) {
                pos++;
            }
            if (pos < n) {
                p->state = HM_TEXT;
            }
        } else if (p->state == HM_TEXT) {
            static const char *const starts[] = {M_START, M_CHANNEL};
            at = find_marker(r, m, starts, 2, &which, &cut);
            if (which < 0) {
                st = emit(p, PRS_EV_CONTENT, off, r, cut);
                pos += cut;
                break;
            }
            st = emit(p, PRS_EV_CONTENT, off, r, at);
            pos += at;
            p->state = HM_HEADER;
            /* the region starts at the marker, so that a failed header is given back whole */
            p->hs = which == 0 ? sizeof(M_START) - 1 : 0;
        } else {
            st = emit(p, PRS_EV_CONTENT, off, r, m); /* HM_DONE */
            pos = n;
        }
    }
    if (st == TDM_OK) {
        prs_buf_consume(&p->hold, pos);
        p->hold_off += pos;
    }
    return st;
}

/* Feeds text in slices that keep the hold within PRS_TOOL_MAX_CALL_BYTES, so a held message
 * reaches that size exactly before it is given up, whatever the chunking. */
static tdm_status_t feed(prs_harmony_t *p, const char *text, size_t len)
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

tdm_status_t prs_harmony_prime(prs_harmony_t *p, const char *text, size_t len, tdm_error_t *err)
{
    if (p->fed || p->state == HM_FINISHED) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "harmony parser: prime after output was fed");
    }
    p->primed_end = p->total + len;
    tdm_status_t st = feed(p, text, len);
    prs_evlist_fix(&p->ev);
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "harmony parser: out of memory");
    }
    return TDM_OK;
}

tdm_status_t prs_harmony_feed(prs_harmony_t *p, const char *text, size_t len, tdm_error_t *err)
{
    if (p->state == HM_FINISHED) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "harmony parser: feed after finish");
    }
    p->fed = true;
    tdm_status_t st = feed(p, text, len);
    prs_evlist_fix(&p->ev);
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "harmony parser: out of memory");
    }
    return TDM_OK;
}

tdm_status_t prs_harmony_finish(prs_harmony_t *p, tdm_error_t *err)
{
    if (p->state == HM_FINISHED) {
        return TDM_OK;
    }
    const char *r = p->hold.data;
    size_t n = p->hold.len;
    tdm_status_t st = TDM_OK;
    if (p->state == HM_BODY && (p->kind == HK_CALL || p->kind == HK_RAW)) {
        /* the output ended the message: <|call|> is a stop token the server does not see */
        st = close_held(p, r, n, -1, p->hold_off);
    } else if (p->state == HM_BODY && p->kind == HK_REASONING) {
        st = emit(p, PRS_EV_REASONING, p->hold_off, r, n); /* a partial marker is text */
    } else {
        st = emit(p, PRS_EV_CONTENT, p->hold_off, r, n); /* an unfinished header too */
    }
    prs_evlist_fix(&p->ev);
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "harmony parser: out of memory");
    }
    p->hold_off += n;
    prs_buf_clear(&p->hold);
    p->state = HM_FINISHED;
    return TDM_OK;
}

size_t prs_harmony_n_events(const prs_harmony_t *p)
{
    return p->ev.n;
}

const prs_event_t *prs_harmony_events(const prs_harmony_t *p)
{
    return p->ev.ev;
}

void prs_harmony_clear_events(prs_harmony_t *p)
{
    prs_evlist_clear(&p->ev);
}

bool prs_harmony_in_call(const prs_harmony_t *p)
{
    return p->state == HM_BODY && p->kind == HK_CALL;
}

size_t prs_harmony_n_calls(const prs_harmony_t *p)
{
    return p->calls.n;
}

const char *prs_harmony_call_name(const prs_harmony_t *p, size_t index)
{
    return index < p->calls.n ? p->calls.v[index].name : NULL;
}

const char *prs_harmony_call_args(const prs_harmony_t *p, size_t index)
{
    return index < p->calls.n ? p->calls.v[index].args : NULL;
}
