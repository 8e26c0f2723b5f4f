/*
 * sse_out.h - the bytes of a streamed response that the HTTP library has not taken yet.
 *
 * Chat completions, completions, Messages and Responses streams all work the same way: their
 * piece handlers append server-sent events to this buffer, libmicrohttpd's content reader
 * takes them out in pieces of its choosing, and a stream that has had nothing to send for a
 * while gets a keep-alive so that agent clients do not time out during a long prefill. What
 * the events say differs per API; this is the part that does not.
 */
#ifndef SRV_SSE_OUT_H
#define SRV_SSE_OUT_H

#include "api/parse/prs_buf.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct srv_sse_out {
    prs_buf_t buf;       /* events appended, not all taken yet */
    size_t off;          /* buf[0..off) has been taken */
    double t_last_write; /* when bytes were last taken: the keep-alive clock */
} srv_sse_out_t;

/* An empty buffer whose keep-alive clock starts now. */
void srv_sse_out_init(srv_sse_out_t *o);
void srv_sse_out_free(srv_sse_out_t *o);

/* Copies up to max pending bytes into dst and returns how many; 0 when nothing is pending.
 * The buffer is emptied once everything in it was taken, so it does not grow with the
 * length of the stream. */
size_t srv_sse_out_take(srv_sse_out_t *o, char *dst, size_t max);

/* True when nothing is pending and nothing was taken for keepalive_s seconds. */
bool srv_sse_out_idle(const srv_sse_out_t *o, double keepalive_s);

#endif
