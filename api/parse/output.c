/* output.c - the output parsers put together (rules in output.h). */
#include "api/parse/output.h"

#include "api/parse/harmony.h"
#include "api/parse/reasoning.h"
#include "common/check.h"

#include <stdlib.h>
#include <string.h>

struct prs_output {
    prs_harmony_t *hm;     /* the harmony pipeline; else the two below (each optional) */
    prs_reasoning_t *rp;   /* "<think>" reasoning                                      */
    prs_tool_parser_t *tp; /* tool calls in the content                                */
    bool finished;
    prs_evlist_t ev; /* the "<think>" pipeline's events */
};

tdm_status_t prs_output_create(const prs_output_params_t *params, prs_output_t **out,
                               tdm_error_t *err)
{
    *out = NULL;
    if ((unsigned)params->format > PRS_TOOL_MISTRAL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "output parser: unknown format %d",
                             (int)params->format);
    }
    if (params->tools != NULL && !json_is_array(params->tools)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "output parser: 'tools' must be an array");
    }
    prs_output_t *o = calloc(1, sizeof(*o));
    if (o == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "output parser: out of memory");
    }
    tdm_status_t st = TDM_OK;
    if (params->format == PRS_TOOL_HARMONY) {
        st = prs_harmony_create(params->calls, &o->hm, err);
    } else {
        if (params->reasoning) {
            st = prs_reasoning_create(NULL, NULL, params->start_inside, &o->rp, err);
        }
        if (st == TDM_OK && params->calls && params->format != PRS_TOOL_NONE) {
            st = prs_tool_parser_create(params->format, params->tools, &o->tp, err);
        }
    }
    if (st != TDM_OK) {
        prs_output_destroy(o);
        return st;
    }
    *out = o;
    return TDM_OK;
}

void prs_output_destroy(prs_output_t *o)
{
    if (o == NULL) {
        return;
    }
    prs_harmony_destroy(o->hm);
    prs_reasoning_destroy(o->rp);
    prs_tool_parser_destroy(o->tp);
    prs_evlist_free(&o->ev);
    free(o);
}

/* Moves the tool-call stage's events to ours. */
static tdm_status_t drain_tools(prs_output_t *o)
{
    static const prs_ev_kind_t kinds[] = {
        [PRS_TOOL_EV_CONTENT] = PRS_EV_CONTENT,
        [PRS_TOOL_EV_CALL_BEGIN] = PRS_EV_CALL_BEGIN,
        [PRS_TOOL_EV_CALL_ARGS] = PRS_EV_CALL_ARGS,
        [PRS_TOOL_EV_CALL_END] = PRS_EV_CALL_END,
    };
    const prs_tool_event_t *ev = prs_tool_parser_events(o->tp);
    size_t n = prs_tool_parser_n_events(o->tp);
    tdm_status_t st = TDM_OK;
    for (size_t i = 0; i < n && st == TDM_OK; i++) {
        st = prs_evlist_push(&o->ev, kinds[ev[i].kind], ev[i].call, ev[i].text, ev[i].len);
    }
    prs_tool_parser_clear_events(o->tp);
    return st;
}

/* Passes content on to the tool-call stage, or out when there is none. */
static tdm_status_t put_content(prs_output_t *o, const char *text, size_t len)
{
    if (o->tp == NULL) {
        return prs_evlist_push(&o->ev, PRS_EV_CONTENT, 0, text, len);
    }
    if (len > 0) {
        TDM_CHECK(prs_tool_parser_feed(o->tp, text, len, NULL));
    }
    return drain_tools(o);
}

/* Moves what the reasoning stage decided on: its reasoning out, its content onwards. */
static tdm_status_t pump_reasoning(prs_output_t *o)
{
    prs_buf_t *rb = prs_reasoning_reasoning(o->rp), *cb = prs_reasoning_content(o->rp);
    tdm_status_t st = prs_evlist_push(&o->ev, PRS_EV_REASONING, 0, rb->data, rb->len);
    if (st == TDM_OK) {
        st = put_content(o, cb->data, cb->len);
    }
    prs_buf_clear(rb);
    prs_buf_clear(cb);
    return st;
}

static tdm_status_t fail(tdm_status_t st, tdm_error_t *err)
{
    return st == TDM_OK ? TDM_OK : tdm_error_set(err, st, "output parser: out of memory");
}

tdm_status_t prs_output_prime(prs_output_t *o, const char *text, size_t len, tdm_error_t *err)
{
    if (o->hm != NULL) {
        return prs_harmony_prime(o->hm, text, len, err);
    }
    if (o->tp == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "output parser: prime without a tool-call stage");
    }
    TDM_CHECK(prs_tool_parser_prime(o->tp, text, len, err));
    tdm_status_t st = drain_tools(o);
    prs_evlist_fix(&o->ev);
    return fail(st, err);
}

tdm_status_t prs_output_feed(prs_output_t *o, const char *text, size_t len, tdm_error_t *err)
{
    if (o->hm != NULL) {
        return prs_harmony_feed(o->hm, text, len, err);
    }
    if (o->finished) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "output parser: feed after finish");
    }
    tdm_status_t st;
    if (o->rp != NULL) {
        TDM_CHECK(prs_reasoning_feed(o->rp, text, len, err));
        st = pump_reasoning(o);
    } else {
        st = put_content(o, text, len);
    }
    prs_evlist_fix(&o->ev);
    return fail(st, err);
}

tdm_status_t prs_output_finish(prs_output_t *o, tdm_error_t *err)
{
    if (o->hm != NULL) {
        return prs_harmony_finish(o->hm, err);
    }
    if (o->finished) {
        return TDM_OK;
    }
    tdm_status_t st = TDM_OK;
    if (o->rp != NULL) {
        TDM_CHECK(prs_reasoning_finish(o->rp, err));
        st = pump_reasoning(o);
    }
    if (st == TDM_OK && o->tp != NULL) {
        st = prs_tool_parser_finish(o->tp, NULL);
        if (st == TDM_OK) {
            st = drain_tools(o);
        }
    }
    prs_evlist_fix(&o->ev);
    if (st == TDM_OK) {
        o->finished = true;
    }
    return fail(st, err);
}

size_t prs_output_n_events(const prs_output_t *o)
{
    return o->hm != NULL ? prs_harmony_n_events(o->hm) : o->ev.n;
}

const prs_event_t *prs_output_events(const prs_output_t *o)
{
    return o->hm != NULL ? prs_harmony_events(o->hm) : o->ev.ev;
}

void prs_output_clear_events(prs_output_t *o)
{
    if (o->hm != NULL) {
        prs_harmony_clear_events(o->hm);
    } else {
        prs_evlist_clear(&o->ev);
    }
}

size_t prs_output_n_calls(const prs_output_t *o)
{
    if (o->hm != NULL) {
        return prs_harmony_n_calls(o->hm);
    }
    return o->tp != NULL ? prs_tool_parser_n_calls(o->tp) : 0;
}

const char *prs_output_call_name(const prs_output_t *o, size_t index)
{
    if (o->hm != NULL) {
        return prs_harmony_call_name(o->hm, index);
    }
    return o->tp != NULL ? prs_tool_parser_call_name(o->tp, index) : NULL;
}

const char *prs_output_call_args(const prs_output_t *o, size_t index)
{
    if (o->hm != NULL) {
        return prs_harmony_call_args(o->hm, index);
    }
    return o->tp != NULL ? prs_tool_parser_call_args(o->tp, index) : NULL;
}

const char *prs_output_call_id(const prs_output_t *o, size_t index)
{
    return o->hm == NULL && o->tp != NULL ? prs_tool_parser_call_id(o->tp, index) : NULL;
}
