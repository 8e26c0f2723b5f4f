/*
 * ngram.h - prompt lookup: drafts a sequence's next tokens by finding its last few tokens
 * earlier in its own prompt and output and copying what followed them there.
 *
 * Coding agents repeat text verbatim (the file they were given, a diff, tool arguments),
 * so the continuation of the latest earlier occurrence of the last n tokens is often the
 * right one. The index maps every n-gram (n = 1..CRD_NGRAM_MAX) of the sequence to where
 * its most recent occurrence ended; it grows by CRD_NGRAM_MAX entries per appended token,
 * so a lookup never rescans the sequence. The longest n that matches wins.
 *
 * An n-gram enters the index only once the token after it exists, so the suffix itself is
 * never its own match. Not thread-safe (one per sequence, owned by the scheduler).
 */
#ifndef CRD_NGRAM_H
#define CRD_NGRAM_H

#include "common/status.h"

#include <stdint.h>

#define CRD_NGRAM_MAX 3 /* longest n-gram looked up */

typedef struct crd_ngram crd_ngram_t;

crd_ngram_t *crd_ngram_create(void);    /* NULL when out of memory */
void crd_ngram_destroy(crd_ngram_t *g); /* NULL is fine */

/* Brings the index up to tokens[0, n): tokens must extend what earlier calls saw (the
 * sequence only grows). TDM_ERR_NO_MEMORY leaves the index usable but incomplete. */
tdm_status_t crd_ngram_update(crd_ngram_t *g, const int32_t *tokens, int32_t n);

/* Up to max tokens that followed the latest earlier occurrence of the longest suffix of
 * tokens[0, n) (n-gram of 1..CRD_NGRAM_MAX tokens, at least min_n) into out; returns how
 * many (0: no match). tokens/n as given to the last crd_ngram_update. */
int32_t crd_ngram_propose(const crd_ngram_t *g, const int32_t *tokens, int32_t n, int32_t min_n,
                          int32_t max, int32_t *out);

#endif
