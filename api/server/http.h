/*
 * http.h - the HTTP listener (libmicrohttpd) and the replies handlers send.
 */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include "common/status.h"

#include <jansson.h>
#include <sys/types.h>

struct srv_server;

/* Binds cfg.host:cfg.port (front.c) and starts serving (libmicrohttpd, one thread per
 * connection, behind the front). */
tdm_status_t srv_http_start(struct srv_server *s, tdm_error_t *err);
/* Closes everything (waits for connection threads). Until then the listener accepts, so
 * that /health can say "draining" during a graceful shutdown. */
void srv_http_stop(struct srv_server *s);
/* The port actually bound (for --port 0). */
int srv_http_bound_port(const struct srv_server *s);

/* {"error": {...}} in OpenAI's shape; NULL if msg is not valid UTF-8. */
json_t *srv_error_json(const char *type, const char *param, const char *code, const char *msg);

/*
 * A streamed (chunked) text/event-stream 200 response. read() fills buf with up to max
 * bytes and returns how many, blocking until it has some; SRV_STREAM_END ends the stream,
 * SRV_STREAM_ABORT drops the connection. free_fn(cls) runs once when the response is
 * done or the client went away.
 */
#define SRV_STREAM_END   ((ssize_t)-1)
#define SRV_STREAM_ABORT ((ssize_t)-2)
typedef ssize_t (*srv_stream_read_fn)(void *cls, char *buf, size_t max);

#endif
