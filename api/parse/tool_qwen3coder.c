/*
 * tool_qwen3coder.c - the Qwen3-Coder XML tool-call format: <tool_call>, <function=NAME>,
 * <parameter=NAME>value</parameter>, with values converted by the tools' JSON schemas
 * (rules in tool_call.h; the conversion is shared with MiniMax-M2 in tool_xmlargs.c).
 */
#include "api/parse/prs_json.h"
#include "api/parse/tool_internal.h"

#include "common/check.h"

#include <stdlib.h>
#include <string.h>

enum {
    XS_OUT = 0,    /* between tags, not inside a value  */
    XS_PARAM_NAME, /* after "<parameter=", before '>'   */
    XS_VALUE,      /* inside a parameter value          */
};

bool prs_xml_scan(prs_scan_t *sc, const char *r, size_t n, size_t *end)
{
    size_t i = sc->pos;
    while (i < n) {
        char c = r[i];
        if (sc->sub == XS_PARAM_NAME) {
            if (c == '>') {
                sc->sub = XS_VALUE;
            } else if (c == '\n' || c == '<') {
                sc->sub = XS_OUT; /* malformed name: the parser will reject it */
                continue;
            }
            i++;
            continue;
        }
        if (c != '<') {
            i++;
            continue;
        }
        int t_param = prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_PARAMETER));
        int t_fend = prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_FUNCTION_END));
        int t_pend = sc->sub == XS_VALUE ? prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_PARAMETER_END)) : 0;
        int t_tcend = sc->sub == XS_OUT && sc->wrapped
                          ? prs_tag_at(r, n, i, PRS_LIT(PRS_TAG_TOOL_CALL_END))
                          : 0;
        if (t_tcend == 1 || (t_fend == 1 && !sc->wrapped)) {
            *end = i + (t_tcend == 1 ? sizeof(PRS_TAG_TOOL_CALL_END) - 1
                                     : sizeof(PRS_TAG_FUNCTION_END) - 1);
            sc->pos = i;
            return true;
        }
        if (t_param == 1) {
            sc->sub = XS_PARAM_NAME;
            i += sizeof(PRS_TAG_PARAMETER) - 1;
        } else if (t_pend == 1) {
            sc->sub = XS_OUT;
            i += sizeof(PRS_TAG_PARAMETER_END) - 1;
        } else if (t_fend == 1) {
            sc->sub = XS_OUT; /* wrapped: the function ends, the region goes on */
            i += sizeof(PRS_TAG_FUNCTION_END) - 1;
        } else if (t_param < 0 || t_fend < 0 || t_pend < 0 || t_tcend < 0) {
            break; /* a partial tag at the end: wait here */
        } else {
            i++;
        }
    }
    sc->pos = i;
    return false;
}

/* ---- blocks ------------------------------------------------------------------------ */

/* One "<function=NAME>...</function>" block at r[*i] within r[0..n); appends its call. */
static tdm_status_t parse_function(const char *r, size_t n, size_t *i, const json_t *tools,
                                   prs_callv_t *out)
{
    size_t k = *i + sizeof(PRS_TAG_FUNCTION) - 1, fb, fe;
    if (!prs_xml_name(r, n, &k, false, &fb, &fe)) {
        return TDM_ERR_FORMAT;
    }
    prs_xparamv_t ps = {0};
    tdm_status_t st = TDM_OK;
    for (;;) {
        while (k < n && prs_json_is_ws(r[k])) {
            k++;
        }
        if (prs_at_tag(r, n, k, PRS_LIT(PRS_TAG_FUNCTION_END))) {
            k += sizeof(PRS_TAG_FUNCTION_END) - 1;
            break;
        }
        prs_xparam_t p;
        if (!prs_at_tag(r, n, k, PRS_LIT(PRS_TAG_PARAMETER))) {
            st = TDM_ERR_FORMAT; /* text that is neither a parameter nor the end */
            break;
        }
        k += sizeof(PRS_TAG_PARAMETER) - 1;
        if (!prs_xml_name(r, n, &k, false, &p.nb, &p.ne)) {
            st = TDM_ERR_FORMAT;
            break;
        }
        /* the value ends at the first </parameter>, <parameter= or </function> */
        size_t e1 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_PARAMETER_END));
        size_t e2 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_PARAMETER));
        size_t e3 = prs_find(r + k, n - k, PRS_LIT(PRS_TAG_FUNCTION_END));
        size_t e = e1 < e2 ? e1 : e2;
        e = e < e3 ? e : e3;
        if (e == n - k) {
            st = TDM_ERR_FORMAT;
            break;
        }
        p.vb = k;
        p.ve = k + e;
        k = e == e1 ? p.ve + sizeof(PRS_TAG_PARAMETER_END) - 1 : p.ve;
        if (p.ve > p.vb && r[p.vb] == '\n') {
            p.vb++; /* one leading and one trailing newline belong to the layout */
        }
        if (p.ve > p.vb && r[p.ve - 1] == '\n') {
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

tdm_status_t prs_xml_parse(const char *r, size_t n, bool wrapped, const json_t *tools,
                           prs_callv_t *out)
{
    size_t i = 0;
    if (!wrapped) {
        TDM_CHECK(parse_function(r, n, &i, tools, out));
        return i == n ? TDM_OK : TDM_ERR_FORMAT;
    }
    const size_t ol = sizeof(PRS_TAG_TOOL_CALL) - 1, cl = sizeof(PRS_TAG_TOOL_CALL_END) - 1;
    TDM_ASSERT(n >= ol + cl);
    size_t bn = n - cl; /* the body is r[ol..bn) */
    size_t n0 = out->n;
    i = ol;
    for (;;) {
        while (i < bn && prs_json_is_ws(r[i])) {
            i++;
        }
        if (i == bn) {
            return out->n > n0 ? TDM_OK : TDM_ERR_FORMAT;
        }
        if (!prs_at_tag(r, bn, i, PRS_LIT(PRS_TAG_FUNCTION))) {
            return TDM_ERR_FORMAT;
        }
        TDM_CHECK(parse_function(r, bn, &i, tools, out));
    }
}
