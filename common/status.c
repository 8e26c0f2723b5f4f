/* status.c - names of tdm_status_t values and the tdm_error_t helpers. */
#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[TDM_STATUS_COUNT] = {
    [TDM_OK] = "ok",
    [TDM_ERR_NO_MEMORY] = "out of memory",
    [TDM_ERR_INVALID_PARAM] = "invalid parameter",
    [TDM_ERR_IO] = "i/o error",
    [TDM_ERR_FORMAT] = "malformed data",
    [TDM_ERR_UNSUPPORTED] = "unsupported",
    [TDM_ERR_NOT_FOUND] = "not found",
    [TDM_ERR_OUT_OF_RANGE] = "out of range",
    [TDM_ERR_BUSY] = "busy",
    [TDM_ERR_TIMEOUT] = "timed out",
    [TDM_ERR_CANCELED] = "canceled",
    [TDM_ERR_TRANSPORT] = "transport error",
    [TDM_ERR_DEVICE] = "device error",
    [TDM_ERR_INTERNAL] = "internal error",
};

const char *tdm_status_str(tdm_status_t status)
{
    if ((unsigned)status >= TDM_STATUS_COUNT || status_names[status] == NULL) {
        return "unknown status";
    }
    return status_names[status];
}

tdm_status_t tdm_error_set(tdm_error_t *err, tdm_status_t status, const char *fmt, ...)
{
    if (err == NULL || err->status != TDM_OK) {
        return status;
    }
    err->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return status;
}

void tdm_error_clear(tdm_error_t *err)
{
    if (err != NULL) {
        err->status = TDM_OK;
        err->msg[0] = '\0';
    }
}

const char *tdm_error_msg(const tdm_error_t *err)
{
    if (err == NULL) {
        return "";
    }
    return err->msg[0] != '\0' ? err->msg : tdm_status_str(err->status);
}
