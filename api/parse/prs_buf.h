/*
 * prs_buf.h - the growable byte buffer the output parsers (api/parse) write into, and two
 * small search helpers they share.
 *
 * A prs_buf_t is plain data: the caller may read data[0..len) at any time and empty it
 * with prs_buf_clear (which keeps the memory). When data is not NULL it is always
 * NUL-terminated at data[len], so text buffers can be used as C strings; the contents
 * may still hold NUL bytes of their own, so len is what counts.
 */
#ifndef PRS_BUF_H
#define PRS_BUF_H

#include "common/status.h"

#include <stddef.h>

typedef struct prs_buf {
    char *data; /* NULL until the first append; then NUL-terminated at data[len] */
    size_t len; /* bytes held                                                   */
    size_t cap; /* bytes allocated; cap > len once data != NULL                 */
} prs_buf_t;

/* Appends s[0..n) (n may be 0, s may then be NULL). TDM_ERR_NO_MEMORY leaves b unchanged. */
tdm_status_t prs_buf_append(prs_buf_t *b, const char *s, size_t n);

/* Appends the NUL-terminated string s. */
tdm_status_t prs_buf_append_str(prs_buf_t *b, const char *s);

/* Drops the first n bytes (n <= len), keeping the rest in order. */
void prs_buf_consume(prs_buf_t *b, size_t n);

/* Sets len to 0 and keeps the memory. */
void prs_buf_clear(prs_buf_t *b);

/* Frees the memory and zeroes b. */
void prs_buf_free(prs_buf_t *b);

/* Moves the contents out as a malloc'd NUL-terminated string (caller frees) and leaves b
 * empty; an empty buffer gives a fresh "" (NULL only when that allocation fails). */
char *prs_buf_take(prs_buf_t *b);

/* Index of the first occurrence of needle[0..m) in hay[0..n), or n when there is none. */
size_t prs_find(const char *hay, size_t n, const char *needle, size_t m);

/*
 * Where a text that does not contain needle must be cut so that everything before the cut
 * is certainly not part of a needle: the smallest i in [0, n] such that hay[i..n) is a
 * proper prefix of needle (n when no suffix is). Bytes from i on must be held back until
 * more text shows whether the needle is there.
 */
size_t prs_partial_start(const char *hay, size_t n, const char *needle, size_t m);

#endif
