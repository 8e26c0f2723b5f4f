/*
 * front.c - accept, cap, check and relay client connections (see front.h).
 *
 * One epoll thread, level-triggered, every socket non-blocking. A connection's life:
 * bytes from the client go through the framing checker (http_frame.c) and, once a head is
 * whole and valid, on to libmicrohttpd's end of the socketpair; whatever libmicrohttpd
 * writes goes back unchanged. When the checker refuses a request, or a head or body
 * stalls, the front stops passing bytes on, lets libmicrohttpd finish the requests it
 * already has (so a pipelined bad request never runs and never cuts short the answer
 * before it), closes libmicrohttpd's input, relays the rest of its output, appends its own
 * JSON error, half-closes and reads what the client still sends for a moment (so the close
 * does not become a reset that could destroy the answer), then closes.
 *
 * libmicrohttpd reports each finished request through srv_front_request_done; that is
 * how the front knows a connection is idle (for --http-idle-timeout) and whether the
 * request it refuses mid-body was already answered. The table from libmicrohttpd's fd
 * to the connection is the only state shared with other threads (mutex).
 */
#include "api/server/front.h"

#include "api/server/http.h"
#include "common/clock.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#define IO_CHUNK   16384
#define HIGH_WATER 65536 /* a direction stops reading with this much not yet written */
#define LINGER_S   2.0   /* reading what a client still sends before closing          */
#define MAX_LINGER 1024  /* turned-away connections lingering at once                 */
#define SWEEP_MS   100

typedef struct buf {
    char *p;
    size_t off, len, cap; /* bytes [off, len) are pending */
} buf_t;

typedef struct conn {
    int cfd, mfd, mhd_fd; /* client, our end of the pair, libmicrohttpd's end */
    uint32_t ip;
    bool reject; /* turned away: only lingering */
    bool dead;   /* closed; freed after the current batch of events */
    srv_frame_t fr;
    bool in_body;
    buf_t head, to_mhd, to_cli;
    int n_fwd;              /* heads passed on                                */
    int n_done, n_answered; /* requests libmicrohttpd finished (under f->mu) */
    bool failed, partial, quiet;
    unsigned e_status;
    const char *e_code, *e_msg;
    bool mhd_shut, mhd_eof, cli_eof, cli_shut, final_queued;
    double t_head, t_body, t_idle, t_out, t_linger;
    uint32_t ev_c, ev_m; /* events registered (0: not registered) */
} conn_t;

struct srv_front {
    srv_front_params_t p;
    int lfd, efd, ep;
    int port;
    pthread_t thread;
    bool started;
    _Atomic int stop;
    conn_t **conns;
    int n, cap;
    int n_live;   /* relayed (not turned away) */
    int n_linger; /* turned away, lingering    */
    _Atomic int n_live_pub;
    _Atomic unsigned long n_rejected;
    pthread_mutex_t mu;
    conn_t **by_mhd_fd;      /* libmicrohttpd's fd -> connection (under mu) */
    pthread_mutex_t hand_mu; /* held across hand_over, so stop_accepting can wait it out */
    bool handing_closed;     /* under hand_mu: hand_over is not called any more */
    int n_by_fd;
    char tag_listen, tag_wake; /* epoll data for the two special fds */
};

/* ---- buffers ---- */

static size_t pending(const buf_t *b)
{
    return b->len - b->off;
}

static bool buf_add(buf_t *b, const char *p, size_t n)
{
    if (b->off > 0 && b->off == b->len) {
        b->off = b->len = 0;
    }
    if (b->len + n > b->cap) {
        if (b->off > 0) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) {
            cap *= 2;
        }
        if (cap != b->cap) {
            char *np = realloc(b->p, cap);
            if (np == NULL) {
                return false;
            }
            b->p = np;
            b->cap = cap;
        }
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return true;
}

/* ---- the front's own answers ---- */

static const char *reason_of(unsigned status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

/* A whole HTTP/1.1 response with the JSON error shape and Connection: close. */
static size_t error_response(char *out, size_t cap, unsigned status, const char *code,
                             const char *msg)
{
    const char *type = status == 429   ? "rate_limit_error"
                       : status == 503 ? "service_unavailable"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    json_t *body = srv_error_json(type, NULL, code, msg);
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    int n = snprintf(out, cap,
                     "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n%s",
                     status, reason_of(status), text != NULL ? strlen(text) : 0,
                     status == 503 || status == 429 ? "Retry-After: 1\r\n" : "",
                     text != NULL ? text : "");
    free(text);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* ---- connections ---- */

static void step(srv_front_t *f, struct conn *c, double now);
static void update_events(srv_front_t *f, struct conn *c);
static void fail(struct conn *c, unsigned status, const char *code, const char *msg, bool partial);

static void set_events(srv_front_t *f, conn_t *c, int fd, uint32_t *have, uint32_t want, void *tag)
{
    if (fd < 0 || want == *have) {
        return;
    }
    struct epoll_event ev = {.events = want, .data.ptr = tag};
    int op = *have == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(f->ep, op, fd, &ev) == 0 || op == EPOLL_CTL_DEL) {
        *have = want;
    }
    (void)c;
}

static void conn_close(srv_front_t *f, conn_t *c)
{
    if (c->dead) {
        return;
    }
    c->dead = true;
    set_events(f, c, c->cfd, &c->ev_c, 0, c);
    set_events(f, c, c->mfd, &c->ev_m, 0, (char *)c + 1);
    close(c->cfd);
    if (c->mfd >= 0) {
        close(c->mfd);
        c->mfd = -1;
    }
    pthread_mutex_lock(&f->mu);
    if (c->mhd_fd >= 0 && c->mhd_fd < f->n_by_fd && f->by_mhd_fd[c->mhd_fd] == c) {
        f->by_mhd_fd[c->mhd_fd] = NULL;
    }
    pthread_mutex_unlock(&f->mu);
    if (c->reject) {
        f->n_linger--;
    } else {
        f->n_live--;
        atomic_store(&f->n_live_pub, f->n_live);
    }
}

static void conn_free(conn_t *c)
{
    free(c->head.p);
    free(c->to_mhd.p);
    free(c->to_cli.p);
    free(c);
}

static conn_t *conn_add(srv_front_t *f, int cfd, uint32_t ip)
{
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 64;
        conn_t **v = realloc(f->conns, (size_t)cap * sizeof(*v));
        if (v == NULL) {
            return NULL;
        }
        f->conns = v;
        f->cap = cap;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->cfd = cfd;
    c->mfd = c->mhd_fd = -1;
    c->ip = ip;
    c->t_idle = c->t_out = tdm_now_s();
    srv_frame_init(&c->fr, &f->p.limits);
    f->conns[f->n++] = c;
    return c;
}

/* Answers a connection the front will not relay, then lets it linger. */
static void turn_away(srv_front_t *f, int fd, uint32_t ip, unsigned status, const char *code,
                      const char *msg)
{
    char resp[1024];
    size_t n = error_response(resp, sizeof(resp), status, code, msg);
    atomic_fetch_add(&f->n_rejected, 1);
    /* fits any socket buffer: one non-blocking send */
    if (n == 0 || send(fd, resp, n, MSG_NOSIGNAL) != (ssize_t)n || f->n_linger >= MAX_LINGER) {
        close(fd);
        return;
    }
    shutdown(fd, SHUT_WR);
    conn_t *c = conn_add(f, fd, ip);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->reject = c->final_queued = c->cli_shut = c->mhd_eof = true;
    c->t_linger = tdm_now_s() + LINGER_S;
    f->n_linger++;
    update_events(f, c);
}

static int count_ip(const srv_front_t *f, uint32_t ip)
{
    int n = 0;
    for (int i = 0; i < f->n; i++) {
        n += !f->conns[i]->reject && !f->conns[i]->dead && f->conns[i]->ip == ip;
    }
    return n;
}

static void accept_all(srv_front_t *f)
{
    for (int k = 0; k < 256; k++) { /* the rest on the next turn of the loop */
        struct sockaddr_in sa;
        socklen_t len = sizeof(sa);
        int fd = accept4(f->lfd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                TDM_WARN("http", "accept: %s (raise the open-file limit)", strerror(errno));
            }
            return;
        }
        uint32_t ip = sa.sin_addr.s_addr;
        char msg[160];
        if (f->n_live >= f->p.max_conns) {
            snprintf(msg, sizeof(msg), "too many connections (limit %d); retry shortly",
                     f->p.max_conns);
            turn_away(f, fd, ip, 503, "too_many_connections", msg);
            continue;
        }
        if (count_ip(f, ip) >= f->p.max_per_client) {
            snprintf(msg, sizeof(msg), "too many connections from this address (limit %d)",
                     f->p.max_per_client);
            turn_away(f, fd, ip, 429, "too_many_connections", msg);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 || sv[1] >= f->n_by_fd) {
            if (sv[0] >= 0 && sv[1] >= f->n_by_fd) {
                close(sv[0]);
                close(sv[1]);
            }
            turn_away(f, fd, ip, 503, "too_many_connections", "out of file descriptors");
            continue;
        }
        fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
        conn_t *c = conn_add(f, fd, ip);
        if (c == NULL) {
            close(sv[0]);
            close(sv[1]);
            close(fd);
            continue;
        }
        c->mfd = sv[0];
        c->mhd_fd = sv[1];
        f->n_live++;
        atomic_store(&f->n_live_pub, f->n_live);
        pthread_mutex_lock(&f->mu);
        f->by_mhd_fd[sv[1]] = c;
        pthread_mutex_unlock(&f->mu);
        pthread_mutex_lock(&f->hand_mu);
        bool handed =
            !f->handing_closed && f->p.hand_over(f->p.cls, sv[1], (struct sockaddr *)&sa, len);
        if (!handed && f->handing_closed) {
            close(sv[1]);
        }
        pthread_mutex_unlock(&f->hand_mu);
        if (!handed) {
            /* the library closed sv[1]: answer 503 on our own */
            pthread_mutex_lock(&f->mu);
            f->by_mhd_fd[sv[1]] = NULL;
            pthread_mutex_unlock(&f->mu);
            close(c->mfd);
            c->mfd = c->mhd_fd = -1;
            c->mhd_shut = c->mhd_eof = true;
            fail(c, 503, "too_many_connections", "the server is busy; retry shortly", false);
            atomic_fetch_add(&f->n_rejected, 1);
            step(f, c, tdm_now_s());
        }
        update_events(f, c);
    }
}

static void fail(conn_t *c, unsigned status, const char *code, const char *msg, bool partial)
{
    c->failed = true;
    c->partial = partial;
    c->e_status = status;
    c->e_code = code;
    c->e_msg = msg;
}

/* Bytes from the client: through the checker, valid ones on to libmicrohttpd. */
static void feed(srv_front_t *f, conn_t *c, const char *p, size_t n, double now)
{
    while (n > 0 && !c->failed) {
        if (!c->in_body) {
            if (c->head.len == 0) {
                c->t_head = now;
            }
            size_t room = f->p.limits.max_head + 2 - c->head.len;
            size_t take = n < room ? n : room;
            if (!buf_add(&c->head, p, take)) {
                fail(c, 503, "server_error", "out of memory", false);
                return;
            }
            srv_frame_ev_t ev = srv_frame_head(&c->fr, c->head.p, c->head.len);
            if (ev == SRV_FRAME_ERROR) {
                fail(c, c->fr.status, c->fr.code, c->fr.msg, false);
                return;
            }
            if (ev == SRV_FRAME_MORE) {
                p += take;
                n -= take;
                continue;
            }
            size_t used = take - (c->head.len - c->fr.head_len);
            if (!buf_add(&c->to_mhd, c->head.p + c->fr.skip, c->fr.head_len - c->fr.skip)) {
                fail(c, 503, "server_error", "out of memory", false);
                return;
            }
            c->n_fwd++;
            c->head.off = c->head.len = 0;
            p += used;
            n -= used;
            if (c->fr.in_body) {
                c->in_body = true;
                c->t_body = now;
            } else {
                srv_frame_next(&c->fr);
            }
            continue;
        }
        size_t used = 0;
        srv_frame_ev_t ev = srv_frame_body(&c->fr, p, n, &used);
        if (used > 0 && !buf_add(&c->to_mhd, p, used)) {
            fail(c, 503, "server_error", "out of memory", true);
            return;
        }
        c->t_body = now;
        p += used;
        n -= used;
        if (ev == SRV_FRAME_ERROR) {
            fail(c, c->fr.status, c->fr.code, c->fr.msg, true);
            return;
        }
        if (ev == SRV_FRAME_END) {
            c->in_body = false;
            srv_frame_next(&c->fr);
        }
    }
}

/* Moves every byte that can move without blocking, and the connection's state on. */
static void step(srv_front_t *f, conn_t *c, double now)
{
    char tmp[IO_CHUNK];
    bool progress = true;
    /* bounded, so that one fast client cannot starve the others: epoll is level-triggered
     * and brings the connection back while it has bytes to move */
    for (int round = 0; progress && !c->dead && round < 32; round++) {
        progress = false;
        if (!c->cli_eof && pending(&c->to_mhd) < HIGH_WATER) {
            ssize_t r = recv(c->cfd, tmp, sizeof(tmp), 0);
            if (r > 0) {
                progress = true;
                if (!c->failed && !c->reject) {
                    feed(f, c, tmp, (size_t)r, now);
                }
            } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                c->cli_eof = true;
                progress = true;
            }
        }
        if (pending(&c->to_mhd) > 0 && c->mfd >= 0 && !c->mhd_shut) {
            ssize_t w =
                send(c->mfd, c->to_mhd.p + c->to_mhd.off, pending(&c->to_mhd), MSG_NOSIGNAL);
            if (w > 0) {
                c->to_mhd.off += (size_t)w;
                progress = true;
            } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                c->to_mhd.off = c->to_mhd.len; /* libmicrohttpd closed: drop */
                c->mhd_eof = true;
                progress = true;
            }
        }
        if (c->mfd >= 0 && !c->mhd_eof && pending(&c->to_cli) < HIGH_WATER) {
            ssize_t r = recv(c->mfd, tmp, sizeof(tmp), 0);
            if (r > 0) {
                if (pending(&c->to_cli) == 0) {
                    c->t_out = now;
                }
                if (!buf_add(&c->to_cli, tmp, (size_t)r)) {
                    conn_close(f, c);
                    return;
                }
                progress = true;
            } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                c->mhd_eof = true;
                progress = true;
            }
        }
        if (pending(&c->to_cli) > 0) {
            ssize_t w =
                send(c->cfd, c->to_cli.p + c->to_cli.off, pending(&c->to_cli), MSG_NOSIGNAL);
            if (w > 0) {
                c->to_cli.off += (size_t)w;
                c->t_out = now;
                progress = true;
            } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_close(f, c); /* the client is gone */
                return;
            }
        }

        /* the state moves on */
        if (c->reject) {
            if (c->cli_eof) {
                conn_close(f, c);
            }
            return;
        }
        if (!c->mhd_shut && pending(&c->to_mhd) == 0 && c->mfd >= 0) {
            bool shut = c->cli_eof && !c->failed; /* the client went away or half-closed */
            if (c->failed) {
                pthread_mutex_lock(&f->mu);
                bool all_done = c->n_done >= c->n_fwd;
                pthread_mutex_unlock(&f->mu);
                /* a refused request never reached libmicrohttpd: let it finish the ones
                 * before; one refused mid-body did reach it: end it now */
                shut = c->partial || all_done;
            }
            if (shut) {
                shutdown(c->mfd, SHUT_WR);
                c->mhd_shut = true;
                progress = true;
            }
        }
        if (c->mhd_eof && pending(&c->to_cli) == 0 && !c->final_queued) {
            pthread_mutex_lock(&f->mu);
            bool answered = c->n_answered >= c->n_fwd;
            pthread_mutex_unlock(&f->mu);
            if (c->failed && !c->quiet && (!c->partial || !answered)) {
                char resp[1024];
                size_t n = error_response(resp, sizeof(resp), c->e_status, c->e_code, c->e_msg);
                if (n > 0 && buf_add(&c->to_cli, resp, n)) {
                    c->t_out = now;
                }
            }
            c->final_queued = true;
            c->t_linger = now + LINGER_S;
            progress = true;
        }
        if (c->final_queued && pending(&c->to_cli) == 0 && !c->cli_shut) {
            shutdown(c->cfd, SHUT_WR);
            c->cli_shut = true;
            c->t_linger = now + LINGER_S;
            progress = true;
        }
        if (c->cli_shut && c->cli_eof) {
            conn_close(f, c);
            return;
        }
        if (c->failed || c->final_queued) {
            /* read and drop what the client still sends */
            if (!c->cli_eof) {
                ssize_t r = recv(c->cfd, tmp, sizeof(tmp), 0);
                if (r > 0) {
                    progress = true;
                } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                    c->cli_eof = true;
                    progress = true;
                }
            }
        }
    }
}

static void update_events(srv_front_t *f, conn_t *c)
{
    if (c->dead) {
        return;
    }
    uint32_t wc = 0, wm = 0;
    if (!c->cli_eof && (pending(&c->to_mhd) < HIGH_WATER || c->failed || c->final_queued)) {
        wc |= EPOLLIN;
    }
    if (pending(&c->to_cli) > 0) {
        wc |= EPOLLOUT;
    }
    if (c->mfd >= 0 && !c->mhd_eof && pending(&c->to_cli) < HIGH_WATER) {
        wm |= EPOLLIN;
    }
    if (c->mfd >= 0 && !c->mhd_shut && !c->mhd_eof && pending(&c->to_mhd) > 0) {
        wm |= EPOLLOUT;
    }
    set_events(f, c, c->cfd, &c->ev_c, wc, c);
    set_events(f, c, c->mfd, &c->ev_m, wm, (char *)c + 1);
}

/* Deadlines: stalled heads and bodies, idle connections, clients not reading. */
static void sweep(srv_front_t *f, double now)
{
    for (int i = 0; i < f->n; i++) {
        conn_t *c = f->conns[i];
        if (c->dead) {
            continue;
        }
        if (c->final_queued || c->reject) {
            if (now > c->t_linger) {
                conn_close(f, c);
            } else if (!c->reject) {
                step(f, c, now); /* a step cut short may have a shutdown left to do */
                update_events(f, c);
            }
            continue;
        }
        if (pending(&c->to_cli) > 0 && now - c->t_out > f->p.idle_timeout_s) {
            TDM_DEBUG("http", "closing a connection whose client reads nothing");
            conn_close(f, c);
            continue;
        }
        if (c->failed) {
            step(f, c, now); /* waiting for libmicrohttpd to finish */
            update_events(f, c);
            continue;
        }
        pthread_mutex_lock(&f->mu);
        bool busy = c->n_done < c->n_fwd;
        pthread_mutex_unlock(&f->mu);
        if (!c->in_body && c->head.len > 0 && now - c->t_head > f->p.header_timeout_s) {
            fail(c, 408, "request_timeout", "the request head was not received in time", false);
        } else if (c->in_body && now - c->t_body > f->p.body_timeout_s) {
            fail(c, 408, "request_timeout", "the request body stalled", true);
        } else if (busy || c->in_body || c->head.len > 0 || pending(&c->to_cli) > 0 ||
                   pending(&c->to_mhd) > 0) {
            c->t_idle = now;
        } else if (now - c->t_idle > f->p.idle_timeout_s) {
            fail(c, 0, NULL, NULL, false);
            c->quiet = true;
        }
        if (c->failed) {
            step(f, c, now);
            update_events(f, c);
        }
    }
    /* free the closed ones (no event of this batch refers to them any more) */
    int j = 0;
    for (int i = 0; i < f->n; i++) {
        if (f->conns[i]->dead) {
            conn_free(f->conns[i]);
        } else {
            f->conns[j++] = f->conns[i];
        }
    }
    f->n = j;
}

static void *front_main(void *arg)
{
    srv_front_t *f = arg;
    struct epoll_event evs[64];
    double last_sweep = tdm_now_s();
    while (!atomic_load(&f->stop)) {
        int n = epoll_wait(f->ep, evs, 64, SWEEP_MS);
        double now = tdm_now_s();
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &f->tag_listen) {
                accept_all(f);
                continue;
            }
            if (tag == &f->tag_wake) {
                uint64_t v;
                (void)!read(f->efd, &v, sizeof(v));
                continue;
            }
            conn_t *c = (conn_t *)((uintptr_t)tag & ~(uintptr_t)1);
            if (!c->dead) {
                step(f, c, now);
                update_events(f, c);
            }
        }
        if (n <= 0 || now - last_sweep >= SWEEP_MS * 1e-3) {
            sweep(f, now);
            last_sweep = now;
        }
    }
    return NULL;
}

/* ---- life cycle ---- */

tdm_status_t srv_front_create(const srv_front_params_t *p, srv_front_t **out, tdm_error_t *err)
{
    *out = NULL;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port)};
    if (inet_pton(AF_INET, p->host, &addr.sin_addr) != 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "--host %s is not an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)",
                             p->host);
    }
    srv_front_t *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory");
    }
    f->p = *p;
    f->lfd = f->efd = f->ep = -1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->hand_mu, NULL);
    struct rlimit rl;
    f->n_by_fd = 1 << 16;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        f->n_by_fd = rl.rlim_cur < (1u << 20) ? (int)rl.rlim_cur : 1 << 20;
    }
    f->by_mhd_fd = calloc((size_t)f->n_by_fd, sizeof(*f->by_mhd_fd));
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    f->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    f->ep = epoll_create1(EPOLL_CLOEXEC);
    if (f->by_mhd_fd == NULL || f->lfd < 0 || f->efd < 0 || f->ep < 0) {
        srv_front_destroy(f);
        return tdm_error_set(err, TDM_ERR_IO, "cannot set up the listener: %s", strerror(errno));
    }
    int one = 1;
    setsockopt(f->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(f->lfd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(f->lfd, 1024) != 0) {
        int e = errno;
        srv_front_destroy(f);
        return tdm_error_set(err, TDM_ERR_IO, "cannot listen on %s:%d: %s", p->host, p->port,
                             strerror(e));
    }
    socklen_t len = sizeof(addr);
    getsockname(f->lfd, (struct sockaddr *)&addr, &len);
    f->port = ntohs(addr.sin_port);
    *out = f;
    return TDM_OK;
}

tdm_status_t srv_front_start(srv_front_t *f, tdm_error_t *err)
{
    struct epoll_event el = {.events = EPOLLIN, .data.ptr = &f->tag_listen};
    struct epoll_event ew = {.events = EPOLLIN, .data.ptr = &f->tag_wake};
    if (epoll_ctl(f->ep, EPOLL_CTL_ADD, f->lfd, &el) != 0 ||
        epoll_ctl(f->ep, EPOLL_CTL_ADD, f->efd, &ew) != 0 ||
        pthread_create(&f->thread, NULL, front_main, f) != 0) {
        return tdm_error_set(err, TDM_ERR_IO, "cannot start the listener: %s", strerror(errno));
    }
    f->started = true;
    return TDM_OK;
}

void srv_front_destroy(srv_front_t *f)
{
    if (f == NULL) {
        return;
    }
    if (f->started) {
        atomic_store(&f->stop, 1);
        uint64_t one = 1;
        (void)!write(f->efd, &one, sizeof(one));
        pthread_join(f->thread, NULL);
    }
    for (int i = 0; i < f->n; i++) {
        conn_close(f, f->conns[i]);
        conn_free(f->conns[i]);
    }
    free(f->conns);
    free(f->by_mhd_fd);
    if (f->lfd >= 0) {
        close(f->lfd);
    }
    if (f->efd >= 0) {
        close(f->efd);
    }
    if (f->ep >= 0) {
        close(f->ep);
    }
    pthread_mutex_destroy(&f->mu);
    pthread_mutex_destroy(&f->hand_mu);
    free(f);
}

void srv_front_stop_handing_over(srv_front_t *f)
{
    if (f != NULL) {
        pthread_mutex_lock(&f->hand_mu);
        f->handing_closed = true;
        pthread_mutex_unlock(&f->hand_mu);
    }
}

int srv_front_port(const srv_front_t *f)
{
    return f->port;
}

void srv_front_request_done(srv_front_t *f, int mhd_fd, bool answered)
{
    if (f == NULL || mhd_fd < 0) {
        return;
    }
    pthread_mutex_lock(&f->mu);
    if (mhd_fd < f->n_by_fd && f->by_mhd_fd[mhd_fd] != NULL) {
        conn_t *c = f->by_mhd_fd[mhd_fd];
        c->n_done++;
        c->n_answered += answered;
    }
    pthread_mutex_unlock(&f->mu);
    uint64_t one = 1;
    (void)!write(f->efd, &one, sizeof(one)); /* a refusal may be waiting for this */
}

int srv_front_n_conns(srv_front_t *f)
{
    return atomic_load(&f->n_live_pub);
}

unsigned long srv_front_n_rejected(srv_front_t *f)
{
    return atomic_load(&f->n_rejected);
}
