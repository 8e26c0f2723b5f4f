/*
 * json_util.c - the request parsers' shared pieces (see json_util.h).
 */
#include "api/server/json_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

tdm_status_t srv_fail(const srv_perr_t *pe, const char *param, const char *fmt, ...)
{
    if (pe->param_size > 0) {
        snprintf(pe->param, pe->param_size, "%s", param != NULL ? param : "");
    }
    char msg[TDM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return tdm_error_set(pe->err, TDM_ERR_INVALID_PARAM, "%s", msg);
}

json_t *srv_json_body(const char *body, size_t len, tdm_error_t *err)
{
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL) {
        tdm_error_set(err, TDM_ERR_FORMAT, "the body is not valid JSON: %s (at byte %d)", je.text,
                      je.position);
    }
    return o;
}

json_t *srv_json_get(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

bool srv_json_is_str(const json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

bool srv_valid_tool_name(const json_t *name, size_t max_len)
{
    if (!json_is_string(name) || json_string_length(name) == 0 ||
        json_string_length(name) > max_len) {
        return false;
    }
    for (const char *p = json_string_value(name); *p; p++) {
        char ch = *p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.')) {
            return false;
        }
    }
    return true;
}
