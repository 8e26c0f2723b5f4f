/*
 * stop_strings.h - stop strings matched on the generated text, across token boundaries.
 *
 * OpenAI's `stop` ends generation when any of up to a few strings appears in the output,
 * and the string itself is never returned. Tokens rarely line up with a stop string, so
 * the matcher holds back the longest tail of the text that could still become one; the
 * rest is released at once, which keeps streaming latency at one token unless the text
 * really is ambiguous.
 */
#ifndef CRD_STOP_STRINGS_H
#define CRD_STOP_STRINGS_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>

#define CRD_MAX_STOP_STRINGS 16
#define CRD_MAX_STOP_LEN     1024

typedef struct crd_stop_strings crd_stop_strings_t;

/* Copies the strings. TDM_ERR_INVALID_PARAM for more than CRD_MAX_STOP_STRINGS, an empty
 * one or one longer than CRD_MAX_STOP_LEN bytes. n == 0 is fine (everything passes). */
tdm_status_t crd_stop_strings_create(const char *const *stops, int n, crd_stop_strings_t **out,
                                     tdm_error_t *err);
void crd_stop_strings_destroy(crd_stop_strings_t *s); /* NULL is fine */

/*
 * Adds generated text. *out (valid until the next call) receives what can be released
 * now. Returns true once a stop string has appeared: *out then ends just before it, and
 * later calls release nothing.
 */
bool crd_stop_strings_feed(crd_stop_strings_t *s, const char *text, size_t len, const char **out,
                           size_t *out_len);

/* The end of generation: releases the held tail (nothing if a stop string matched). */
void crd_stop_strings_flush(crd_stop_strings_t *s, const char **out, size_t *out_len);

/* The stop string that matched, or NULL. */
const char *crd_stop_strings_matched(const crd_stop_strings_t *s);

#endif
