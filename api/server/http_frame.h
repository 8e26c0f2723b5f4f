/*
 * http_frame.h - where an HTTP/1.1 request starts and ends (RFC 9112), checked before
 * libmicrohttpd sees a byte of it.
 *
 * The front (front.c) feeds every byte a client sends through one srv_frame_t: first the
 * head, collected until its blank line and then checked as a whole (request line, header
 * syntax, Host, Content-Length, Transfer-Encoding, limits), then the body by its framing
 * (a length, or chunks whose sizes and CRLFs are checked one byte at a time). Whatever the
 * checker does not accept is answered by the front in the JSON error shape and never
 * reaches libmicrohttpd, whose own answers to such requests are HTML pages and whose
 * reading of a repeated Content-Length would split the body into a second request.
 *
 * Pure: no I/O, no allocation; tests/fuzz/fuzz_http_frame.c drives it with any bytes.
 */
#ifndef SRV_HTTP_FRAME_H
#define SRV_HTTP_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct srv_frame_limits {
    size_t max_line;   /* request line (414 beyond) and each header line (431 beyond) */
    size_t max_head;   /* the whole head, blank line included (431 beyond)           */
    int max_headers;   /* header lines (431 beyond)                                   */
    uint64_t max_body; /* a Content-Length or sum of chunk sizes above this: 413      */
} srv_frame_limits_t;

typedef enum srv_frame_ev {
    SRV_FRAME_MORE = 0, /* everything given was taken; more bytes are needed           */
    SRV_FRAME_HEAD,     /* the head is complete and valid (srv_frame_head only)         */
    SRV_FRAME_END,      /* the message ends here                                        */
    SRV_FRAME_ERROR,    /* malformed: status/code/msg say why; nothing more is accepted */
} srv_frame_ev_t;

typedef struct srv_frame {
    srv_frame_limits_t lim;
    /* head scanning */
    size_t scanned;    /* bytes of the head buffer already looked at        */
    size_t line_start; /* offset of the line being scanned                  */
    size_t skip;       /* empty lines before the request line (not sent on) */
    int n_lines;
    /* the head's verdict */
    size_t head_len; /* bytes of the head, skip included                       */
    bool in_body;    /* a body follows the head                                */
    bool chunked;
    uint64_t remaining; /* Content-Length bytes still to come, or of the chunk */
    uint64_t body_total;
    /* chunked body */
    int cstate;
    int cdigits;
    size_t cline; /* length of the chunk-size or trailer line so far */
    bool ccolon;
    /* an error */
    unsigned status;
    const char *code, *msg;
} srv_frame_t;

void srv_frame_init(srv_frame_t *f, const srv_frame_limits_t *lim);

/*
 * buf[0..n) is everything received since the message began (the caller keeps it). Returns
 * MORE (no end of head yet, limits not exceeded), HEAD (f->head_len bytes form the head,
 * of which the first f->skip are empty lines to drop; f->in_body tells whether a body
 * follows) or ERROR.
 */
srv_frame_ev_t srv_frame_head(srv_frame_t *f, const char *buf, size_t n);

/*
 * After HEAD with in_body: takes body bytes. *used is how many of p[0..n) belong to the
 * body (all of them on MORE; up to the end of the message on END; those before the fault
 * on ERROR). After END (or a HEAD without a body) the checker is ready for the next head.
 */
srv_frame_ev_t srv_frame_body(srv_frame_t *f, const char *p, size_t n, size_t *used);

/* Ready for the next message on the same connection (after END). */
void srv_frame_next(srv_frame_t *f);

#endif
