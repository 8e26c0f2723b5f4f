/*
 * fuzz_http_frame.c - libFuzzer harness for the HTTP/1.1 request framing checker
 * (api/server/http_frame.c), driven the way front.c drives it: heads collected in a
 * buffer, bodies fed by framing, message after message on one connection. The first input
 * byte picks small or default limits and how the rest is cut into pieces. Checked for
 * every input: the checker returns, counts stay within what it was given, heads respect
 * the limits, every error carries an HTTP status and a message, and feeding the bytes in
 * pieces gives exactly the same events at the same offsets as feeding them at once.
 * Built with -DTANDEM_FUZZ=ON (clang); replayed over tests/fuzz/corpus/http_frame by
 * replay_main.c in the unit tests.
 */
#include "api/server/http_frame.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(x)       \
    do {                      \
        if (!(x)) {           \
            __builtin_trap(); \
        }                     \
    } while (0)

#define MAX_EVENTS 256

typedef struct trace {
    int n;
    int ev[MAX_EVENTS];
    size_t at[MAX_EVENTS];
} trace_t;

static void record(trace_t *t, int ev, size_t at)
{
    if (t->n < MAX_EVENTS) {
        t->ev[t->n] = ev;
        t->at[t->n] = at;
        t->n++;
    }
}

/* Feeds p[0..n) in pieces of `piece` bytes (0: at once); returns the events seen. */
static void run(const srv_frame_limits_t *lim, const char *p, size_t n, size_t piece, trace_t *t)
{
    srv_frame_t f;
    srv_frame_init(&f, lim);
    char *head = malloc(lim->max_head + 2);
    FUZZ_REQUIRE(head != NULL);
    size_t head_len = 0, pos = 0;
    bool in_body = false;
    t->n = 0;
    while (pos < n) {
        size_t len = piece == 0 || n - pos < piece ? n - pos : piece;
        const char *q = p + pos;
        size_t qn = len;
        while (qn > 0) {
            if (!in_body) {
                size_t room = lim->max_head + 2 - head_len;
                size_t take = qn < room ? qn : room;
                memcpy(head + head_len, q, take);
                head_len += take;
                srv_frame_ev_t ev = srv_frame_head(&f, head, head_len);
                if (ev == SRV_FRAME_ERROR) {
                    FUZZ_REQUIRE(f.status >= 400 && f.status <= 599 && f.msg && f.code);
                    record(t, ev, pos + (len - qn) + take);
                    free(head);
                    return;
                }
                if (ev == SRV_FRAME_MORE) {
                    FUZZ_REQUIRE(head_len <= lim->max_head);
                    q += take;
                    qn -= take;
                    continue;
                }
                FUZZ_REQUIRE(ev == SRV_FRAME_HEAD);
                FUZZ_REQUIRE(f.head_len <= head_len && f.head_len <= lim->max_head);
                FUZZ_REQUIRE(f.skip < f.head_len);
                FUZZ_REQUIRE(head_len - f.head_len < take + 1);
                size_t used = take - (head_len - f.head_len);
                q += used;
                qn -= used;
                record(t, ev, (size_t)(q - p));
                head_len = 0;
                if (f.in_body) {
                    FUZZ_REQUIRE(f.remaining <= lim->max_body);
                    in_body = true;
                } else {
                    srv_frame_next(&f);
                }
                continue;
            }
            size_t used = 0;
            srv_frame_ev_t ev = srv_frame_body(&f, q, qn, &used);
            FUZZ_REQUIRE(used <= qn);
            FUZZ_REQUIRE(ev == SRV_FRAME_ERROR || f.body_total <= lim->max_body);
            q += used;
            qn -= used;
            if (ev == SRV_FRAME_ERROR) {
                FUZZ_REQUIRE(f.status >= 400 && f.status <= 599 && f.msg && f.code);
                record(t, ev, (size_t)(q - p));
                free(head);
                return;
            }
            if (ev == SRV_FRAME_END) {
                record(t, ev, (size_t)(q - p));
                in_body = false;
                srv_frame_next(&f);
            } else {
                FUZZ_REQUIRE(ev == SRV_FRAME_MORE && qn == 0);
            }
        }
        pos += len;
    }
    free(head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    srv_frame_limits_t small = {
        .max_line = 64, .max_head = 256, .max_headers = 8, .max_body = 1000};
    srv_frame_limits_t dflt = {
        .max_line = 8192, .max_head = 32768, .max_headers = 100, .max_body = 8u << 20};
    const srv_frame_limits_t *lim = (data[0] & 1) ? &small : &dflt;
    size_t piece = 1 + ((data[0] >> 1) & 15);
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    static trace_t whole, cut;
    run(lim, p, n, 0, &whole);
    run(lim, p, n, piece, &cut);
    FUZZ_REQUIRE(whole.n == cut.n);
    for (int i = 0; i < whole.n; i++) {
        FUZZ_REQUIRE(whole.ev[i] == cut.ev[i]);
        /* an error in a head is noticed where its bytes were taken, which depends on the
         * pieces; everything else happens at the same byte */
        FUZZ_REQUIRE(whole.ev[i] == SRV_FRAME_ERROR || whole.at[i] == cut.at[i]);
    }
    return 0;
}
