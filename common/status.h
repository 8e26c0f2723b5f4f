/*
 * status.h - the one status enum every Tandem layer returns, and an error record.
 *
 * Functions that can fail return tdm_status_t (TDM_OK == 0). Where a caller needs to
 * know *what* failed (which file, tensor, key or field), the function also takes an
 * optional tdm_error_t* and fills its message at the point the error is first
 * detected; callers above only pass it through. A NULL tdm_error_t* is allowed
 * everywhere and means "status only".
 */
#ifndef TDM_STATUS_H
#define TDM_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tdm_status {
    TDM_OK = 0,
    TDM_ERR_NO_MEMORY,     /* an allocation failed                                  */
    TDM_ERR_INVALID_PARAM, /* caller or user input is wrong (API maps to HTTP 400)   */
    TDM_ERR_IO,            /* a system call on a file or socket failed               */
    TDM_ERR_FORMAT,        /* a file or message is malformed, truncated or corrupt   */
    TDM_ERR_UNSUPPORTED,   /* valid, but not something this build can handle         */
    TDM_ERR_NOT_FOUND,     /* a named thing (file, key, tensor, model) does not exist */
    TDM_ERR_OUT_OF_RANGE,  /* a value or size is outside its allowed range           */
    TDM_ERR_BUSY,          /* resources exhausted for now; retry later (HTTP 429)    */
    TDM_ERR_TIMEOUT,       /* a peer did not answer in time                          */
    TDM_ERR_CANCELED,      /* the operation was aborted on request                   */
    TDM_ERR_TRANSPORT,     /* a link or peer failed                                  */
    TDM_ERR_DEVICE,        /* a GPU / accelerator call failed                        */
    TDM_ERR_INTERNAL,      /* a bug: an invariant did not hold                       */
    TDM_STATUS_COUNT
} tdm_status_t;

/* Short lowercase name of a status ("invalid parameter"). Never NULL. */
const char *tdm_status_str(tdm_status_t status);

#define TDM_ERROR_MSG_MAX 512

/* Where an error was first detected and what it was. */
typedef struct tdm_error {
    tdm_status_t status;
    char msg[TDM_ERROR_MSG_MAX];
} tdm_error_t;

/*
 * Records status and a printf-style message in err (which may be NULL) and returns
 * status, so call sites can write `return tdm_error_set(err, TDM_ERR_FORMAT, ...)`.
 * An error already recorded is kept: the first detection names the cause.
 */
tdm_status_t tdm_error_set(tdm_error_t *err, tdm_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err (may be NULL). */
void tdm_error_clear(tdm_error_t *err);

/* The message, or the status name when no message was recorded. Never NULL. */
const char *tdm_error_msg(const tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
