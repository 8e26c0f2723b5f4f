/*
 * tool_minimax.c - the MiniMax-M2 XML tool-call format: <minimax:tool_call>, one or more
 * <invoke name="NAME">, <parameter name="NAME">value</parameter>, with values converted by
 * the tools' JSON schemas exactly as for Qwen3-Coder (tool_xmlargs.c; rules in
 * tool_call.h).
 */
#include "api/parse/prs_json.h"
#include "api/parse/tool_internal.h"

#include "common/check.h"

#include <stdlib.h>
#include <string.h>

enum {
    MS_OUT = 0,    /* between tags, not inside a value       */
    MS_PARAM_NAME, /* after "<parameter name=", before '>'   */
    MS_VALUE,      /* inside a parameter value               */
};

/* The same walk as prs_xml_scan: a "</minimax:tool_call>" inside a parameter value does not
 * end the region, so a value that quotes the format (code, documentation) stays whole. */
bool prs_minimax_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end)
{
    size_t i = sc->pos;
    while (i < n) {
        char c = r[i];
        if (sc->sub == MS_PARAM_NAME) {
            if (c == '>') {
                sc->sub = MS_VALUE;
            } else if (c == '\n' || c == '<') {
                sc->sub = MS_OUT; /* malformed name: the parser will reject it */
                continue;
            }
            i++;
            continue;
        }
        if (c != '<') {
            i++;
            continue;
        }
        int t_param = prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_MM_PARAM));
        int t_iend = prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_MM_INVOKE_END));
        int t_pend = sc->sub == MS_VALUE ? prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_PARAMETER_END)) : 0;
        int t_cend = sc->sub == MS_OUT ? prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_MM_CALL_END)) : 0;
        if (t_cend == 1) {
            *end = i + sizeof(PRS_TAG_MM_CALL_END) - 1;
            sc->pos = i;
            return true;
        }
        if (t_param == 1) {
            sc->sub = MS_PARAM_NAME;
            i += sizeof(PRS_TAG_MM_PARAM) - 1;
        } else if (t_pend == 1) {
            sc->sub = MS_OUT;
            i += sizeof(PRS_TAG_PARAMETER_END) - 1;
        } else if (t_iend == 1) {
            sc->sub = MS_OUT; /* a value left open ends with its invoke */
            i += sizeof(PRS_TAG_MM_INVOKE_END) - 1;
        } else if (t_param < 0 || t_iend < 0 || t_pend < 0 || t_cend < 0) {
            break; /* a partial tag at the end: wait here */
        } else {
            i++;
        }
    }
    sc->pos = i;
    return false;
}

/* One "<invoke name=...>...</invoke>" block at r[*i] within r[0..n); appends its call. */
static tdm_status_t parse_invoke(const char *r, size_t n, size_t *i, const json_t *tools,
                                 prs_callv_t *out)
{
    size_t k = *i + sizeof(PRS_TAG_MM_INVOKE) - 1, fb, fe;
    if (!prs_xml_name(r, n, &k, true, &fb, &fe)) {
        return TDM_ERR_FORMAT;
    }
    prs_xparamv_t ps = {0};
    tdm_status_t st = TDM_OK;
    for (;;) {
        while (k < n && prs_json_is_ws(r[k])) {
            k++;
        }
        if (prs_at_tag(r, n, k, PRS_LIT(PRS_TAG_MM_INVOKE_END))) {
            k += sizeof(PRS_TAG_MM_INVOKE_END) - 1;
            break;
        }
        prs_xparam_t p;
        if (!prs_at_tag(r, n, k, PRS_LIT(PRS_TAG_MM_PARAM))) {
            st = TDM_ERR_FORMAT; /* text that is neither a parameter nor the end */
            break;
        }
        k += sizeof(PRS_TAG_MM_PARAM) - 1;
        if (!prs_xml_name(r, n, &k, true, &p.nb, &p.ne)) {
            st = TDM_ERR_FORMAT;
            break;
        }
        /* the value ends at the first </parameter>, <parameter name= or </invoke> */
        size_t e1 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_PARAMETER_END));
        size_t e2 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_MM_PARAM));
        size_t e3 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_MM_INVOKE_END));
        size_t e = e1 < e2 ? e1 : e2;
        e = e < e3 ? e : e3;
        if (e == n - k) {
            st = TDM_ERR_FORMAT;
            break;
        }
        p.vb = k;
        p.ve = k + e;
        k = e == e1 ? p.ve + sizeof(PRS_TAG_PARAMETER_END) - 1 : p.ve;
        /* MiniMax writes values inline; surrounding whitespace is layout (as vLLM reads it) */
        while (p.vb < p.ve && prs_json_is_ws(r[p.vb])) {
            p.vb++;
        }
        while (p.ve > p.vb && prs_json_is_ws(r[p.ve - 1])) {
            p.ve--;
        }
        if ((st = prs_xparamv_push(&ps, p)) != TDM_OK) {
            break;
        }
    }
    if (st == TDM_OK) {
        st = prs_xml_push_call(r, fb, fe, &ps, tools, out);
        *i = k;
    }
    prs_xparamv_free(&ps);
    return st;
}

tdm_status_t prs_minimax_parse(const char *r, size_t n, const json_t *tools, prs_callv_t *out)
{
    const size_t ol = sizeof(PRS_TAG_MM_CALL) - 1, cl = sizeof(PRS_TAG_MM_CALL_END) - 1;
    TDM_ASSERT(n >= ol + cl);
    size_t bn = n - cl; /* the body is r[ol..bn) */
    size_t n0 = out->n, i = ol;
    for (;;) {
        while (i < bn && prs_json_is_ws(r[i])) {
            i++;
        }
        if (i == bn) {
            return out->n > n0 ? TDM_OK : TDM_ERR_FORMAT;
        }
        if (!prs_at_tag(r, bn, i, PRS_LIT(PRS_TAG_MM_INVOKE))) {
            return TDM_ERR_FORMAT;
        }
        TDM_CHECK(parse_invoke(r, bn, &i, tools, out));
    }
}
