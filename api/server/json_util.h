/*
 * json_util.h - what the request parsers (oai_parse.c, anth_parse.c, resp_parse.c) share:
 * loading a body, lookups where JSON null means "not given" (clients send explicit nulls for
 * defaults), and 400 errors that name the parameter at fault.
 */
#ifndef SRV_JSON_UTIL_H
#define SRV_JSON_UTIL_H

#include "common/status.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Where a parser reports a bad parameter. */
typedef struct srv_perr {
    tdm_error_t *err;
    char *param;       /* gets the faulty parameter's name (OpenAI's error.param) */
    size_t param_size; /* 0: no name wanted (param may be NULL)                  */
} srv_perr_t;

/* Sets pe->err to TDM_ERR_INVALID_PARAM with the message, and the name buffer to param ("" for
 * NULL: the body as a whole); returns TDM_ERR_INVALID_PARAM. */
tdm_status_t srv_fail(const srv_perr_t *pe, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The body parsed as JSON (duplicate keys refused), or NULL with TDM_ERR_FORMAT in err. */
json_t *srv_json_body(const char *body, size_t len, tdm_error_t *err);

/* The value of key, or NULL when absent or null. */
json_t *srv_json_get(const json_t *o, const char *key);

/* Whether v is the string s. */
bool srv_json_is_str(const json_t *v, const char *s);

#define SRV_MAX_FUNCTION_NAME 64 /* OpenAI's limit on function (tool) names */

/* Whether name is a string of 1..max_len characters from [A-Za-z0-9_.-]: OpenAI's rule for
 * function names (max 64) and Anthropic's for tool names (max 128). It also keeps names safe
 * to splice into the tool-call prefix the server writes for tool_choice. */
bool srv_valid_tool_name(const json_t *name, size_t max_len);

/* Returns from the calling function when expr is not TDM_OK. */
#define SRV_TRY(expr)              \
    do {                           \
        tdm_status_t st_ = (expr); \
        if (st_ != TDM_OK) {       \
            return st_;            \
        }                          \
    } while (0)

#endif
