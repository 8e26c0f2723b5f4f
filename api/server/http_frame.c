/*
 * http_frame.c - HTTP/1.1 request framing checks (see http_frame.h).
 *
 * Stricter than RFC 9112 allows a server to be, never looser: a request that two parsers
 * could frame differently (a repeated Content-Length, Content-Length with
 * Transfer-Encoding, a bare CR or LF, a folded header line, a chunk size with anything but
 * hex digits) is refused, because the front and libmicrohttpd behind it must agree on
 * where every request ends.
 */
#include "api/server/http_frame.h"

#include <string.h>
#include <strings.h>

enum { C_SIZE, C_EXT, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF, C_TRAILER, C_TRAILER_LF };

#define MAX_CHUNK_DIGITS 15 /* 2^60: far above any body limit, no overflow */
#define MAX_LEADING_CRLF 4

void srv_frame_init(srv_frame_t *f, const srv_frame_limits_t *lim)
{
    memset(f, 0, sizeof(*f));
    f->lim = *lim;
}

void srv_frame_next(srv_frame_t *f)
{
    srv_frame_limits_t lim = f->lim;
    srv_frame_init(f, &lim);
}

static srv_frame_ev_t fail(srv_frame_t *f, unsigned status, const char *code, const char *msg)
{
    f->status = status;
    f->code = code;
    f->msg = msg;
    return SRV_FRAME_ERROR;
}

/* RFC 9110 tchar: the characters of methods and header names. */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return true;
    }
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* The request line p[0..n) (no CRLF): METHOD SP TARGET SP HTTP/1.x. */
static srv_frame_ev_t check_request_line(srv_frame_t *f, const char *p, size_t n, bool *http10)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i])) {
        i++;
    }
    if (i == 0 || i >= n || p[i] != ' ') {
        return fail(f, 400, "bad_request_line",
                    "malformed request line (expected METHOD TARGET "
                    "HTTP/1.1)");
    }
    size_t t0 = ++i;
    while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f) {
        i++;
    }
    if (i == t0 || i >= n || p[i] != ' ') {
        return fail(f, 400, "bad_request_line",
                    "malformed request line (expected METHOD TARGET "
                    "HTTP/1.1)");
    }
    const char *v = p + i + 1;
    size_t vn = n - i - 1;
    if (vn == 8 && memcmp(v, "HTTP/1.1", 8) == 0) {
        *http10 = false;
        return SRV_FRAME_MORE;
    }
    if (vn == 8 && memcmp(v, "HTTP/1.0", 8) == 0) {
        *http10 = true;
        return SRV_FRAME_MORE;
    }
    if (vn == 8 && memcmp(v, "HTTP/", 5) == 0 && v[5] >= '0' && v[5] <= '9' && v[6] == '.' &&
        v[7] >= '0' && v[7] <= '9') {
        return fail(f, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
    }
    return fail(f, 400, "bad_request_line",
                "malformed request line (expected METHOD TARGET "
                "HTTP/1.1)");
}

/* Trims optional whitespace (SP, HTAB) from both ends of p[0..*n). */
static const char *trim_ows(const char *p, size_t *n)
{
    while (*n > 0 && (p[0] == ' ' || p[0] == '\t')) {
        p++;
        (*n)--;
    }
    while (*n > 0 && (p[*n - 1] == ' ' || p[*n - 1] == '\t')) {
        (*n)--;
    }
    return p;
}

static bool name_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(p, name, n) == 0;
}

/* The complete head buf[f->skip .. f->head_len): every line, then the framing headers. */
static srv_frame_ev_t check_head(srv_frame_t *f, const char *buf)
{
    const char *p = buf + f->skip;
    const char *end = buf + f->head_len - 2; /* before the blank line's CRLF */
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    bool http10 = false;
    if (check_request_line(f, p, (size_t)(eol - p), &http10) == SRV_FRAME_ERROR) {
        return SRV_FRAME_ERROR;
    }
    int n_cl = 0, n_te = 0, n_host = 0;
    uint64_t cl = 0;
    bool cl_huge = false, te_chunked = false;
    for (p = eol + 2; p < end; p = eol + 2) {
        eol = memchr(p, '\r', (size_t)(end - p));
        size_t n = (size_t)(eol - p);
        if (p[0] == ' ' || p[0] == '\t') {
            return fail(f, 400, "bad_header", "folded header lines (obs-fold) are not accepted");
        }
        size_t k = 0;
        while (k < n && is_tchar((unsigned char)p[k])) {
            k++;
        }
        if (k == 0 || k >= n || p[k] != ':') {
            return fail(f, 400, "bad_header",
                        "malformed header line (expected NAME: VALUE, no space before the colon)");
        }
        size_t vn = n - k - 1;
        const char *v = trim_ows(p + k + 1, &vn);
        for (size_t j = 0; j < vn; j++) {
            unsigned char c = (unsigned char)v[j];
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                return fail(f, 400, "bad_header", "a header value holds a control character");
            }
        }
        if (name_is(p, k, "Content-Length")) {
            if (++n_cl > 1) {
                return fail(f, 400, "bad_content_length", "Content-Length is given more than once");
            }
            if (vn == 0) {
                return fail(f, 400, "bad_content_length", "Content-Length is not a number");
            }
            for (size_t j = 0; j < vn; j++) {
                if (v[j] < '0' || v[j] > '9') {
                    return fail(f, 400, "bad_content_length", "Content-Length is not a number");
                }
                if (cl > (UINT64_MAX - 9) / 10) {
                    cl_huge = true;
                } else {
                    cl = cl * 10 + (uint64_t)(v[j] - '0');
                }
            }
        } else if (name_is(p, k, "Transfer-Encoding")) {
            n_te++;
            te_chunked = vn == 7 && strncasecmp(v, "chunked", 7) == 0;
        } else if (name_is(p, k, "Host")) {
            n_host++;
        }
    }
    if (n_te > 0 && n_cl > 0) {
        return fail(f, 400, "bad_framing",
                    "Content-Length and Transfer-Encoding together are not accepted");
    }
    if (n_te > 0 && http10) {
        return fail(f, 400, "bad_framing", "Transfer-Encoding in an HTTP/1.0 request");
    }
    if (n_te > 1 || (n_te == 1 && !te_chunked)) {
        return fail(f, 501, "unsupported_transfer_encoding",
                    "the only transfer coding accepted is a single 'chunked'");
    }
    if (!http10 && n_host != 1) {
        return fail(f, 400, "bad_host", "an HTTP/1.1 request needs exactly one Host header");
    }
    if (cl_huge || cl > f->lim.max_body) {
        return fail(f, 413, "request_too_large", "the request body is larger than the limit");
    }
    f->chunked = n_te == 1;
    f->remaining = cl;
    f->in_body = f->chunked || cl > 0;
    f->cstate = C_SIZE;
    return SRV_FRAME_HEAD;
}

srv_frame_ev_t srv_frame_head(srv_frame_t *f, const char *buf, size_t n)
{
    for (size_t i = f->scanned; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        f->scanned = i + 1;
        if (c == '\0') {
            return fail(f, 400, "bad_header", "a NUL byte in the request head");
        }
        if (i > 0 && buf[i - 1] == '\r' && c != '\n') {
            return fail(f, 400, "bad_header", "a bare CR in the request head");
        }
        if (c != '\n') {
            size_t len = i + 1 - f->line_start;
            if (len > f->lim.max_line + 1) { /* + 1: the CR */
                return f->n_lines == 0
                           ? fail(f, 414, "uri_too_long", "the request line is too long")
                           : fail(f, 431, "request_header_fields_too_large",
                                  "a header line is too long");
            }
            if (i + 1 > f->lim.max_head) {
                return fail(f, 431, "request_header_fields_too_large",
                            "the request head is too large");
            }
            continue;
        }
        if (i + 1 > f->lim.max_head) {
            return fail(f, 431, "request_header_fields_too_large", "the request head is too large");
        }
        if (i == 0 || buf[i - 1] != '\r' || i == f->line_start) {
            return fail(f, 400, "bad_header", "a bare LF in the request head (lines end in CRLF)");
        }
        size_t len = i - 1 - f->line_start; /* without CRLF */
        f->line_start = i + 1;
        if (len == 0 && f->n_lines == 0) {
            /* RFC 9112 2.2: empty lines before the request line are ignored */
            if (i + 1 > 2 * MAX_LEADING_CRLF) {
                return fail(f, 400, "bad_request_line", "too many empty lines before the request");
            }
            f->skip = i + 1;
            continue;
        }
        if (len == 0) {
            f->head_len = i + 1;
            return check_head(f, buf);
        }
        if (++f->n_lines > f->lim.max_headers + 1) {
            return fail(f, 431, "request_header_fields_too_large", "too many header lines");
        }
    }
    return SRV_FRAME_MORE;
}

/* One byte of a chunked body outside chunk data; returns ERROR, END or MORE. */
static srv_frame_ev_t chunk_byte(srv_frame_t *f, unsigned char c)
{
    switch (f->cstate) {
    case C_SIZE: {
        int h = hex_value(c);
        if (h >= 0) {
            if (++f->cdigits > MAX_CHUNK_DIGITS) {
                return fail(f, 413, "request_too_large", "a chunk size is too large");
            }
            f->remaining = f->remaining * 16 + (uint64_t)h;
            return SRV_FRAME_MORE;
        }
        if (f->cdigits == 0 || (c != ';' && c != '\r')) {
            return fail(f, 400, "bad_chunk", "malformed chunk size (hex digits, then CRLF)");
        }
        f->cstate = c == ';' ? C_EXT : C_SIZE_LF;
        f->cline = (size_t)f->cdigits + 1;
        return SRV_FRAME_MORE;
    }
    case C_EXT:
        if (++f->cline > f->lim.max_line) {
            return fail(f, 400, "bad_chunk", "a chunk extension is too long");
        }
        if (c == '\r') {
            f->cstate = C_SIZE_LF;
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return fail(f, 400, "bad_chunk", "a control character in a chunk extension");
        }
        return SRV_FRAME_MORE;
    case C_SIZE_LF:
        if (c != '\n') {
            return fail(f, 400, "bad_chunk", "a chunk size line must end in CRLF");
        }
        f->cdigits = 0;
        if (f->remaining == 0) {
            f->cstate = C_TRAILER;
            f->cline = 0;
            f->ccolon = false;
            return SRV_FRAME_MORE;
        }
        f->body_total += f->remaining;
        if (f->body_total > f->lim.max_body) {
            return fail(f, 413, "request_too_large", "the request body is larger than the limit");
        }
        f->cstate = C_DATA;
        return SRV_FRAME_MORE;
    case C_DATA_CR:
        if (c != '\r') {
            return fail(f, 400, "bad_chunk", "chunk data longer than its size");
        }
        f->cstate = C_DATA_LF;
        return SRV_FRAME_MORE;
    case C_DATA_LF:
        if (c != '\n') {
            return fail(f, 400, "bad_chunk", "chunk data must end in CRLF");
        }
        f->cstate = C_SIZE;
        return SRV_FRAME_MORE;
    case C_TRAILER:
        if (c == '\r') {
            if (f->cline > 0 && !f->ccolon) {
                return fail(f, 400, "bad_chunk", "malformed trailer line");
            }
            f->cstate = C_TRAILER_LF;
            return SRV_FRAME_MORE;
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f || ++f->cline > f->lim.max_line) {
            return fail(f, 400, "bad_chunk", "malformed trailer line");
        }
        f->ccolon |= c == ':';
        return SRV_FRAME_MORE;
    case C_TRAILER_LF:
        if (c != '\n') {
            return fail(f, 400, "bad_chunk", "a trailer line must end in CRLF");
        }
        if (f->cline == 0) {
            return SRV_FRAME_END;
        }
        if (++f->n_lines > f->lim.max_headers + 1) {
            return fail(f, 431, "request_header_fields_too_large", "too many trailer lines");
        }
        f->cstate = C_TRAILER;
        f->cline = 0;
        f->ccolon = false;
        return SRV_FRAME_MORE;
    default:
        return fail(f, 500, "server_error", "framing state lost");
    }
}

srv_frame_ev_t srv_frame_body(srv_frame_t *f, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    *used = 0;
    if (!f->chunked) {
        size_t take = f->remaining < n ? (size_t)f->remaining : n;
        f->remaining -= take;
        *used = take;
        return f->remaining == 0 ? SRV_FRAME_END : SRV_FRAME_MORE;
    }
    while (i < n) {
        if (f->cstate == C_DATA) {
            size_t take = f->remaining < n - i ? (size_t)f->remaining : n - i;
            f->remaining -= take;
            i += take;
            if (f->remaining == 0) {
                f->cstate = C_DATA_CR;
            }
            continue;
        }
        srv_frame_ev_t ev = chunk_byte(f, (unsigned char)p[i]);
        if (ev == SRV_FRAME_ERROR) {
            *used = i;
            return ev;
        }
        i++;
        if (ev == SRV_FRAME_END) {
            *used = i;
            return ev;
        }
    }
    *used = i;
    return SRV_FRAME_MORE;
}
