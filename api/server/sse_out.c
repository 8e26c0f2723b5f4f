/*
 * sse_out.c - the pending bytes of a streamed response (see sse_out.h).
 */
#include "api/server/sse_out.h"

#include "common/clock.h"

#include <string.h>

void srv_sse_out_init(srv_sse_out_t *o)
{
    memset(o, 0, sizeof(*o));
    o->t_last_write = tdm_now_s();
}

void srv_sse_out_free(srv_sse_out_t *o)
{
    prs_buf_free(&o->buf);
    o->off = 0;
}

size_t srv_sse_out_take(srv_sse_out_t *o, char *dst, size_t max)
{
    if (o->off >= o->buf.len) {
        return 0;
    }
    size_t n = o->buf.len - o->off;
    n = n < max ? n : max;
    memcpy(dst, o->buf.data + o->off, n);
    o->off += n;
    if (o->off == o->buf.len) {
        prs_buf_clear(&o->buf);
        o->off = 0;
    }
    o->t_last_write = tdm_now_s();
    return n;
}

bool srv_sse_out_idle(const srv_sse_out_t *o, double keepalive_s)
{
    return o->buf.len == o->off && tdm_now_s() - o->t_last_write >= keepalive_s;
}
