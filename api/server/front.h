/*
 * front.h - the listening socket and every client connection's bytes, in front of
 * libmicrohttpd.
 *
 * One thread accepts and relays. Each client gets a socketpair: libmicrohttpd serves the
 * other end (handed over with MHD_add_connection) and the front copies bytes both ways,
 * passing on requests only once http_frame.c has checked their framing. So the front
 * decides, before libmicrohttpd reads anything, what libmicrohttpd cannot: connections
 * over the caps (a JSON 503 or 429, then a close), malformed framing, oversized heads and
 * stalled heads or bodies (a JSON 4xx/5xx, then a close), idle keep-alive connections (a
 * close), and clients that do not read their answers.
 */
#ifndef SRV_FRONT_H
#define SRV_FRONT_H

#include "api/server/http_frame.h"
#include "common/status.h"

#include <stdbool.h>
#include <sys/socket.h>

typedef struct srv_front srv_front_t;

typedef struct srv_front_params {
    const char *host;        /* IPv4 address to bind                                        */
    int port;                /* 0: any free port (srv_front_port says which)                */
    int max_conns;           /* connections relayed at once; more get 503 and are closed    */
    int max_per_client;      /* from one client address; more get 429 and are closed    */
    double header_timeout_s; /* from a head's first byte to its blank line (408 beyond) */
    double body_timeout_s;   /* a body that sends nothing this long (408)               */
    double idle_timeout_s;   /* a keep-alive connection with no request, or a client that
                                reads nothing of its answer, this long: closed            */
    srv_frame_limits_t limits;
    /* Gives fd (a connected stream socket) to the HTTP library; false: it was closed. */
    bool (*hand_over)(void *cls, int fd, const struct sockaddr *addr, socklen_t addrlen);
    void *cls;
} srv_front_params_t;

/* Binds and listens (errors here are the user's: address in use, bad --host). */
tdm_status_t srv_front_create(const srv_front_params_t *p, srv_front_t **out, tdm_error_t *err);
/* Starts accepting (the HTTP library must be ready for hand_over). */
tdm_status_t srv_front_start(srv_front_t *f, tdm_error_t *err);
/* After this returns hand_over is never called again (new connections get 503): call it
 * before stopping the HTTP library. NULL is fine. */
void srv_front_stop_handing_over(srv_front_t *f);
/* Stops accepting, closes every connection, joins the thread. NULL is fine. */
void srv_front_destroy(srv_front_t *f);
/* The port bound. */
int srv_front_port(const srv_front_t *f);

/*
 * The HTTP library finished a request on mhd_fd (the fd given to hand_over): answered
 * when its response was sent in full. Called from the library's threads.
 */
void srv_front_request_done(srv_front_t *f, int mhd_fd, bool answered);

/* Connections relayed now, and those turned away since the start (for /metrics). */
int srv_front_n_conns(srv_front_t *f);
unsigned long srv_front_n_rejected(srv_front_t *f);

#endif
