/* reasoning.c - the <think>...</think> splitter (rules in reasoning.h). */
#include "api/parse/reasoning.h"

#include "api/parse/prs_json.h"
#include "common/check.h"

#include <stdlib.h>
#include <string.h>

typedef enum rs_state {
    RS_START,     /* nothing visible yet: whitespace and a partial opening tag are held */
    RS_REASONING, /* inside reasoning; a partial closing tag is held                    */
    RS_AFTER,     /* just after the closing tag: whitespace is dropped                  */
    RS_CONTENT,   /* everything is content; nothing is held                             */
    RS_FINISHED,  /* prs_reasoning_finish was called                                    */
} rs_state_t;

struct prs_reasoning {
    char open[PRS_REASONING_MAX_TAG + 1];
    char close[PRS_REASONING_MAX_TAG + 1];
    size_t open_len, close_len;
    rs_state_t state;
    prs_buf_t hold;      /* text not yet decided                   */
    prs_buf_t content;   /* output: the answer                     */
    prs_buf_t reasoning; /* output: the reasoning                  */
};

static tdm_status_t check_tag(const char *tag, const char *which, tdm_error_t *err)
{
    size_t n = strlen(tag);
    if (n == 0 || n > PRS_REASONING_MAX_TAG || prs_json_is_ws(tag[0]) || tag[0] == '\f' ||
        tag[0] == '\v') {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "reasoning parser: %s tag must be 1..%d bytes and not start with "
                             "whitespace",
                             which, PRS_REASONING_MAX_TAG);
    }
    return TDM_OK;
}

tdm_status_t prs_reasoning_create(const char *open_tag, const char *close_tag, bool start_inside,
                                  prs_reasoning_t **out, tdm_error_t *err)
{
    open_tag = open_tag != NULL ? open_tag : PRS_REASONING_DEFAULT_OPEN_TAG;
    close_tag = close_tag != NULL ? close_tag : PRS_REASONING_DEFAULT_CLOSE_TAG;
    TDM_CHECK(check_tag(open_tag, "opening", err));
    TDM_CHECK(check_tag(close_tag, "closing", err));
    prs_reasoning_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "reasoning parser: out of memory");
    }
    p->open_len = strlen(open_tag);
    p->close_len = strlen(close_tag);
    memcpy(p->open, open_tag, p->open_len + 1);
    memcpy(p->close, close_tag, p->close_len + 1);
    p->state = start_inside ? RS_REASONING : RS_START;
    *out = p;
    return TDM_OK;
}

void prs_reasoning_destroy(prs_reasoning_t *p)
{
    if (p == NULL) {
        return;
    }
    prs_buf_free(&p->hold);
    prs_buf_free(&p->content);
    prs_buf_free(&p->reasoning);
    free(p);
}

/*
 * Runs the state machine over hold[0..len) as far as the text decides it, emitting to the
 * outputs, and leaves in hold only the undecided tail.
 */
static tdm_status_t process(prs_reasoning_t *p)
{
    const char *h = p->hold.data;
    size_t n = p->hold.len, pos = 0;
    tdm_status_t st = TDM_OK;
    while (pos < n && st == TDM_OK) {
        const char *r = h + pos;
        size_t m = n - pos;
        if (p->state == RS_START) {
            size_t w = 0;
            while (w < m && w <= PRS_REASONING_MAX_LEADING_WS && prs_json_is_ws(r[w])) {
                w++;
            }
            if (w > PRS_REASONING_MAX_LEADING_WS) {
                p->state = RS_CONTENT; /* too much whitespace for a reasoning block */
                continue;
            }
            size_t t = m - w; /* bytes after the whitespace */
            if (t >= p->open_len && memcmp(r + w, p->open, p->open_len) == 0) {
                pos += w + p->open_len; /* whitespace and tag dropped */
                p->state = RS_REASONING;
            } else if (t < p->open_len && memcmp(r + w, p->open, t) == 0) {
                break; /* whitespace only, or a partial tag: wait */
            } else {
                p->state = RS_CONTENT;
            }
        } else if (p->state == RS_REASONING) {
            size_t k = prs_find(r, m, p->close, p->close_len);
            if (k < m) {
                st = prs_buf_append(&p->reasoning, r, k);
                pos += k + p->close_len;
                p->state = RS_AFTER;
            } else {
                k = prs_partial_start(r, m, p->close, p->close_len);
                st = prs_buf_append(&p->reasoning, r, k);
                pos += k;
                break;
            }
        } else if (p->state == RS_AFTER) {
            while (pos < n && prs_json_is_ws(h[pos])) {
                pos++;
            }
            if (pos < n) {
                p->state = RS_CONTENT;
            }
        } else {
            st = prs_buf_append(&p->content, r, m);
            pos = n;
        }
    }
    if (st == TDM_OK) {
        prs_buf_consume(&p->hold, pos);
    }
    return st;
}

tdm_status_t prs_reasoning_feed(prs_reasoning_t *p, const char *text, size_t len, tdm_error_t *err)
{
    if (p->state == RS_FINISHED) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "reasoning parser: feed after finish");
    }
    tdm_status_t st;
    if (p->state == RS_CONTENT) {
        st = prs_buf_append(&p->content, text, len); /* nothing held: pass through */
    } else {
        st = prs_buf_append(&p->hold, text, len);
        if (st == TDM_OK) {
            st = process(p);
        }
    }
    if (st != TDM_OK) {
        return tdm_error_set(err, st, "reasoning parser: out of memory");
    }
    return TDM_OK;
}

tdm_status_t prs_reasoning_finish(prs_reasoning_t *p, tdm_error_t *err)
{
    if (p->state == RS_FINISHED) {
        return TDM_OK;
    }
    prs_buf_t *to = p->state == RS_REASONING ? &p->reasoning : &p->content;
    if (p->hold.len > 0 && prs_buf_append(to, p->hold.data, p->hold.len) != TDM_OK) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "reasoning parser: out of memory");
    }
    prs_buf_clear(&p->hold);
    p->state = RS_FINISHED;
    return TDM_OK;
}

prs_buf_t *prs_reasoning_content(prs_reasoning_t *p)
{
    return &p->content;
}

prs_buf_t *prs_reasoning_reasoning(prs_reasoning_t *p)
{
    return &p->reasoning;
}

bool prs_reasoning_inside(const prs_reasoning_t *p)
{
    return p->state == RS_REASONING;
}
