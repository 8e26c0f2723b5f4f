/*
 * cmd_linkbench.c - `tandem linkbench`: latency and bandwidth of the UCX data plane
 * between two nodes, in the manner of ib_write_lat / ib_write_bw and nccl-tests.
 *
 *   tandem linkbench --listen HOST:PORT    (node A)
 *   tandem linkbench --connect HOST:PORT   (node B)
 *   tandem linkbench --local               (both ends on this machine, one command)
 *
 * Bootstrap: the two ends swap UCX worker addresses over a ZeroMQ REQ/REP pair on that
 * port; the listening end also sends the schedule (sizes, iterations, timeout), so both run
 * the same one. Then, over UCX: active-message ping-pong latency (half round trip), AM
 * streaming bandwidth (a window of sends in flight), RMA put latency (put, fence, flag put;
 * the peer polls its flag and answers the same way), RMA put bandwidth (a window of puts,
 * then a flush), and all-reduce latency through transport/ucx_comm.h (2 ranks, tp 2) with
 * both protocols. The listening end measures and prints; the connecting end only answers.
 * Every wait is bounded by --timeout-ms: a peer that is lost or never comes makes both
 * ends exit 1 with a message, never hang.
 */
#include "api/cli/cli.h"
#include "common/check.h"
#include "common/clock.h"
#include "common/mem.h"
#include "transport/ucx_comm.h"
#include "transport/ucx_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define LB_MAGIC "tandem-linkbench 1"

static const uint64_t lb_sizes_full[] = {8,      64,      512,      4096,    32768,
                                         262144, 2097152, 16777216, 67108864};
static const uint64_t lb_sizes_quick[] = {8, 512, 32768, 262144};
static const uint64_t lb_ar_full[] = {4096, 16384, 65536, 262144, 1048576};
static const uint64_t lb_ar_quick[] = {4096, 65536, 262144};

/* Control message types of the benchmark's own exchanges (ucx_internal.h mailbox). */
enum { LB_SYNC = 1, LB_REGION = 2, LB_DONE = 3, LB_TICK = 4 };

/* What both ends run: the listening end's options. */
typedef struct lb_sched {
    int iters;
    uint64_t min_bytes, max_bytes;
    int quick;
    int timeout_ms;
    uint64_t session; /* control-message epoch of this run */
} lb_sched_t;

typedef struct lb_opts {
    const char *listen, *connect;
    bool local, json;
    const char *tls, *devices;
    lb_sched_t s;
    bool iters_set;
} lb_opts_t;

typedef struct lb {
    xp_ucx_t *u;
    xp_ucx_peer_t peer;
    int rank;
    lb_sched_t s;
    const void *peer_addr;
    size_t peer_addr_len;
    /* receive side of the AM tests (into rx's data area) */
    uint64_t n_recv;
    int rndv_inflight;
    ucs_status_t recv_err;
    /* rx: flag at 0, data at 64; tx: flag source at 0, data at 64 */
    xp_ucx_region_t rx, tx;
    size_t cap; /* data bytes of each region */
    uint64_t peer_base;
    ucp_rkey_h peer_rkey;
    uint64_t sync_seq;
    double *samples;
    tdm_error_t err;
} lb_t;

/* ---- options ------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fputs("usage: tandem linkbench (--listen HOST:PORT | --connect HOST:PORT | --local) [options]\n"
          "\n"
          "Latency and bandwidth of the UCX data plane between two nodes: AM ping-pong\n"
          "latency, AM bandwidth, RMA put latency and bandwidth, and all-reduce latency of\n"
          "the shard collectives (AM and RMA protocols). Start --listen on one node and\n"
          "--connect on the other; the listening end prints the results.\n"
          "\n"
          "  --listen HOST:PORT   wait for the other end on this ZeroMQ address\n"
          "  --connect HOST:PORT  dial a listening end\n"
          "  --local              fork the other end here (127.0.0.1, a free port)\n"
          "  --tls LIST           UCX transports (UCX_TLS syntax: tcp, sm, rc, ...)\n"
          "  --devices LIST       UCX devices (UCX_NET_DEVICES syntax; see `tandem topo`)\n"
          "  --iters N            iterations per size (default 1000; fewer for large sizes)\n"
          "  --min-bytes N        smallest message (default 8; K/M/G suffixes)\n"
          "  --max-bytes N        largest message (default 64M)\n"
          "  --quick              few sizes and iterations (tests)\n"
          "  --json               one JSON object on stdout\n"
          "  --timeout-ms MS      bound on every wait: bootstrap, each message (default 30000)\n",
          out);
}

static int parse_bytes(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || s[0] == '-') {
        return -1;
    }
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k') {
        mul = 1024, end++;
    } else if (*end == 'M' || *end == 'm') {
        mul = 1024 * 1024, end++;
    } else if (*end == 'G' || *end == 'g') {
        mul = 1024 * 1024 * 1024, end++;
    }
    if (*end != '\0' || v > UINT64_MAX / mul) {
        return -1;
    }
    *out = v * mul;
    return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* ---- schedule ------------------------------------------------------------------------ */

static bool in_range(const lb_sched_t *s, uint64_t bytes)
{
    return bytes >= s->min_bytes && bytes <= s->max_bytes;
}

static const uint64_t *p2p_sizes(const lb_sched_t *s, size_t *n)
{
    *n = s->quick ? TDM_ARRAY_SIZE(lb_sizes_quick) : TDM_ARRAY_SIZE(lb_sizes_full);
    return s->quick ? lb_sizes_quick : lb_sizes_full;
}

static const uint64_t *ar_sizes(const lb_sched_t *s, size_t *n)
{
    *n = s->quick ? TDM_ARRAY_SIZE(lb_ar_quick) : TDM_ARRAY_SIZE(lb_ar_full);
    return s->quick ? lb_ar_quick : lb_ar_full;
}

static uint64_t clamp_u64(uint64_t v, uint64_t lo, uint64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Latency iterations: all of --iters while that moves at most 256 MiB, at least 5. */
static int lat_iters(const lb_sched_t *s, uint64_t bytes)
{
    const uint64_t cap = ((uint64_t)256 << 20) / bytes;
    return (int)clamp_u64((uint64_t)s->iters, 1, cap < 5 ? 5 : cap);
}

/* Bandwidth: messages in all (about 512 MiB, 4 MiB with --quick) and in flight. */
static uint64_t bw_msgs(const lb_sched_t *s, uint64_t bytes)
{
    return s->quick ? clamp_u64(((uint64_t)4 << 20) / bytes, 4, 200)
                    : clamp_u64(((uint64_t)512 << 20) / bytes, 16, 20000);
}

/* Messages in flight: 8 MiB worth, 1 to 64, and never more than msgs. */
static uint64_t bw_window(uint64_t bytes, uint64_t msgs)
{
    return clamp_u64(((uint64_t)8 << 20) / bytes, 1, msgs < 64 ? msgs : 64);
}

/* All-reduce iterations: --iters up to 64 KiB, proportionally fewer above (at least 20). */
static int ar_iters(const lb_sched_t *s, uint64_t bytes)
{
    if (s->quick || bytes <= 65536) {
        return s->iters;
    }
    const uint64_t scaled = (uint64_t)s->iters * 65536 / bytes;
    return (int)clamp_u64(scaled, 20, (uint64_t)s->iters);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median and 99th percentile (nearest rank) of n samples, in place. */
static void percentiles(double *v, int n, double *median, double *p99)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    *median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    int k = (int)ceil(0.99 * n) - 1;
    *p99 = v[k < 0 ? 0 : k];
}

/* ---- bootstrap over ZeroMQ ----------------------------------------------------------- */

/* Receives [text, blob] within timeout_ms. */
static int zrecv2(void *sock, int timeout_ms, char *text, size_t text_cap, void **blob,
                  size_t *blob_len)
{
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, timeout_ms) != 1) {
        return -1;
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    const size_t tl = zmq_msg_size(&m) < text_cap - 1 ? zmq_msg_size(&m) : text_cap - 1;
    memcpy(text, zmq_msg_data(&m), tl);
    text[tl] = '\0';
    const int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    if (!more) {
        return -1;
    }
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    *blob_len = zmq_msg_size(&m);
    *blob = tdm_xmalloc(*blob_len > 0 ? *blob_len : 1);
    memcpy(*blob, zmq_msg_data(&m), *blob_len);
    zmq_msg_close(&m);
    return 0;
}

static int zsend2(void *sock, const char *text, const void *blob, size_t len)
{
    if (zmq_send(sock, text, strlen(text), ZMQ_SNDMORE) < 0) {
        return -1;
    }
    return zmq_send(sock, blob, len, 0) < 0 ? -1 : 0;
}

/* Listening end: receive the hello, answer with the schedule and our address. With
 * bound_port, binds to an ephemeral port and reports it (for --local) before waiting. */
static tdm_status_t bootstrap(lb_t *b, const lb_opts_t *o, const char *endpoint, int port_fd,
                              tdm_error_t *err)
{
    const bool listener = o->connect == NULL;
    void *ctx = zmq_ctx_new();
    void *sock = ctx != NULL ? zmq_socket(ctx, listener ? ZMQ_REP : ZMQ_REQ) : NULL;
    tdm_status_t st = TDM_OK;
    if (sock == NULL) {
        st = tdm_error_set(err, TDM_ERR_TRANSPORT, "ZeroMQ: %s", zmq_strerror(errno));
        goto out;
    }
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero));
    const void *addr;
    size_t addr_len;
    xp_ucx_address(b->u, &addr, &addr_len);
    char text[256];
    void *blob = NULL;
    size_t blob_len = 0;
    if (listener) {
        if (zmq_bind(sock, endpoint) != 0) {
            st = tdm_error_set(err, TDM_ERR_IO, "cannot listen on %s: %s", endpoint,
                               zmq_strerror(errno));
            goto out;
        }
        if (port_fd >= 0) {
            char last[256];
            size_t ll = sizeof(last);
            zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, last, &ll);
            const char *colon = strrchr(last, ':');
            int port = colon != NULL ? atoi(colon + 1) : 0;
            if (write(port_fd, &port, sizeof(port)) != (ssize_t)sizeof(port)) {
                st = tdm_error_set(err, TDM_ERR_IO, "--local: cannot reach the forked end");
                goto out;
            }
        }
        if (zrecv2(sock, b->s.timeout_ms, text, sizeof(text), &blob, &blob_len) != 0) {
            st = tdm_error_set(err, TDM_ERR_TIMEOUT,
                               "no `tandem linkbench --connect` reached %s within %d ms", endpoint,
                               b->s.timeout_ms);
            goto out;
        }
        if (strcmp(text, LB_MAGIC) != 0) {
            free(blob);
            st = tdm_error_set(err, TDM_ERR_FORMAT, "the connecting end is not linkbench 1 ('%s')",
                               text);
            goto out;
        }
        snprintf(text, sizeof(text), LB_MAGIC " %d %" PRIu64 " %" PRIu64 " %d %d %" PRIu64,
                 b->s.iters, b->s.min_bytes, b->s.max_bytes, b->s.quick, b->s.timeout_ms,
                 b->s.session);
        if (zsend2(sock, text, addr, addr_len) != 0) {
            free(blob);
            st = tdm_error_set(err, TDM_ERR_IO, "answering the connecting end: %s",
                               zmq_strerror(errno));
            goto out;
        }
    } else {
        if (zmq_connect(sock, endpoint) != 0) {
            st = tdm_error_set(err, TDM_ERR_INVALID_PARAM, "cannot connect to %s: %s", endpoint,
                               zmq_strerror(errno));
            goto out;
        }
        if (zsend2(sock, LB_MAGIC, addr, addr_len) != 0 ||
            zrecv2(sock, b->s.timeout_ms, text, sizeof(text), &blob, &blob_len) != 0) {
            st = tdm_error_set(err, TDM_ERR_TIMEOUT,
                               "no answer from %s within %d ms (is `tandem linkbench --listen` "
                               "running there?)",
                               endpoint, b->s.timeout_ms);
            goto out;
        }
        lb_sched_t s = {0};
        if (sscanf(text, LB_MAGIC " %d %" SCNu64 " %" SCNu64 " %d %d %" SCNu64, &s.iters,
                   &s.min_bytes, &s.max_bytes, &s.quick, &s.timeout_ms, &s.session) != 6 ||
            s.iters < 1 || s.min_bytes < 1 || s.max_bytes < s.min_bytes || s.timeout_ms < 1) {
            free(blob);
            st = tdm_error_set(err, TDM_ERR_FORMAT, "the listening end sent '%s'", text);
            goto out;
        }
        b->s = s; /* the listening end's schedule is the one both run */
    }
    b->peer_addr = blob;
    b->peer_addr_len = blob_len;
out:
    if (sock != NULL) {
        zmq_close(sock);
    }
    if (ctx != NULL) {
        zmq_ctx_term(ctx);
    }
    return st;
}

/* ---- UCX helpers --------------------------------------------------------------------- */

static void on_bench_rndv(void *request, ucs_status_t status, size_t length, void *user_data)
{
    lb_t *b = user_data;
    b->rndv_inflight--;
    if (status == UCS_OK) {
        b->n_recv++;
    } else if (b->recv_err == UCS_OK) {
        b->recv_err = status;
    }
    ucp_request_free(request);
}

/* AM payloads land in rx's data area (copied, or pulled there by rendezvous). */
static ucs_status_t on_bench(void *arg, const void *header, size_t header_length, void *data,
                             size_t length, const ucp_am_recv_param_t *param)
{
    lb_t *b = arg;
    unsigned char *dst = (unsigned char *)b->rx.base + 64;
    if (length > b->cap) {
        b->recv_err = UCS_ERR_MESSAGE_TRUNCATED;
        return UCS_OK;
    }
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        ucp_request_param_t rp = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                            UCP_OP_ATTR_FIELD_MEMORY_TYPE,
            .cb.recv_am = on_bench_rndv,
            .user_data = b,
            .memory_type = UCS_MEMORY_TYPE_HOST,
        };
        void *r = ucp_am_recv_data_nbx(b->u->worker, data, dst, length, &rp);
        if (r == NULL) {
            b->n_recv++;
        } else if (UCS_PTR_IS_ERR(r)) {
            b->recv_err = UCS_PTR_STATUS(r);
        } else {
            b->rndv_inflight++;
        }
        return UCS_OK;
    }
    if (length > 0) {
        memcpy(dst, data, length);
    }
    b->n_recv++;
    return UCS_OK;
}

static double deadline_of(const lb_t *b)
{
    return tdm_now_s() + b->s.timeout_ms * 1e-3;
}

/* Progress until n_recv reaches target; the timeout runs from the last message, so a
 * long bandwidth test is bounded per message, not as a whole. */
static tdm_status_t wait_recv(lb_t *b, uint64_t target, const char *what)
{
    double deadline = deadline_of(b);
    uint64_t seen = b->n_recv;
    unsigned idle = 0;
    while (b->n_recv < target) {
        if (b->n_recv != seen) {
            seen = b->n_recv;
            deadline = deadline_of(b);
        }
        if (b->recv_err != UCS_OK) {
            return tdm_error_set(&b->err, TDM_ERR_TRANSPORT, "%s: receiving from rank %d: %s", what,
                                 b->peer.rank, ucs_status_string(b->recv_err));
        }
        if (b->peer.status != UCS_OK) {
            return tdm_error_set(&b->err, TDM_ERR_TRANSPORT, "%s: rank %d (peer) failed: %s", what,
                                 b->peer.rank, ucs_status_string(b->peer.status));
        }
        if (tdm_now_s() > deadline) {
            return tdm_error_set(&b->err, TDM_ERR_TIMEOUT,
                                 "%s: nothing from rank %d in %d ms (%" PRIu64 " of %" PRIu64
                                 " messages, %d rendezvous pending)",
                                 what, b->peer.rank, b->s.timeout_ms, b->n_recv, target,
                                 b->rndv_inflight);
        }
        xp_ucx_poll(b->u, &idle);
    }
    return TDM_OK;
}

/* Progress until the peer's put set our flag to value. */
static tdm_status_t wait_flag(lb_t *b, uint64_t value, const char *what)
{
    const uint64_t *flag = b->rx.base;
    const double deadline = deadline_of(b);
    unsigned idle = 0;
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != value) {
        if (b->peer.status != UCS_OK) {
            return tdm_error_set(&b->err, TDM_ERR_TRANSPORT, "%s: rank %d (peer) failed: %s", what,
                                 b->peer.rank, ucs_status_string(b->peer.status));
        }
        if (tdm_now_s() > deadline) {
            return tdm_error_set(&b->err, TDM_ERR_TIMEOUT, "%s: no flag from rank %d in %d ms",
                                 what, b->peer.rank, b->s.timeout_ms);
        }
        xp_ucx_poll(b->u, &idle);
    }
    return TDM_OK;
}

static tdm_status_t wait_req(lb_t *b, void **req, const char *what)
{
    return xp_ucx_req_wait(b->u, req, &b->peer, deadline_of(b), what, &b->err);
}

static tdm_status_t sync_peer(lb_t *b)
{
    xp_ucx_ctrl_hdr_t h = {
        .epoch = b->s.session, .type = LB_SYNC, .src = b->rank, .seq = ++b->sync_seq};
    TDM_CHECK(
        xp_ucx_ctrl_send(b->u, &b->peer, &h, NULL, 0, deadline_of(b), "linkbench sync", &b->err));
    xp_ucx_msg_t *m = NULL;
    TDM_CHECK(xp_ucx_ctrl_wait(b->u, &b->peer, b->s.session, LB_SYNC, deadline_of(b),
                               "linkbench sync", &m, &b->err));
    free(m);
    return TDM_OK;
}

/* Payload put, fence, flag put (the payload request, if any, completed first: see the
 * same sequence in transport/ucx_comm.c). */
static tdm_status_t put_with_flag(lb_t *b, uint64_t bytes, uint64_t flag)
{
    void *req = NULL;
    if (bytes > 0) {
        TDM_CHECK(xp_ucx_put_post(b->u, &b->peer, (unsigned char *)b->tx.base + 64, bytes,
                                  b->peer_base + 64, b->peer_rkey, &req, &b->err));
        TDM_CHECK(wait_req(b, &req, "put"));
    }
    ucs_status_t s = ucp_worker_fence(b->u->worker);
    if (s != UCS_OK) {
        return tdm_error_set(&b->err, TDM_ERR_TRANSPORT, "ucp_worker_fence: %s",
                             ucs_status_string(s));
    }
    uint64_t *src = b->tx.base;
    *src = flag;
    TDM_CHECK(xp_ucx_put_post(b->u, &b->peer, src, sizeof(*src), b->peer_base, b->peer_rkey, &req,
                              &b->err));
    return wait_req(b, &req, "flag put");
}

/* ---- the tests ----------------------------------------------------------------------- */

typedef struct lb_row {
    uint64_t bytes;
    int iters;
    double median_us, p99_us, gbps;
    uint64_t window, msgs;
} lb_row_t;

static tdm_status_t am_lat(lb_t *b, uint64_t bytes, lb_row_t *row)
{
    const int iters = lat_iters(&b->s, bytes);
    const int warm = iters / 10 < 1 ? 1 : iters / 10 > 100 ? 100 : iters / 10;
    /* Counted before the sync: the peer's first message may come in the same progress
     * call as its sync message. */
    const uint64_t base = b->n_recv;
    TDM_CHECK(sync_peer(b));
    const void *src = (unsigned char *)b->tx.base + 64;
    for (int it = 0; it < warm + iters; it++) {
        void *req = NULL;
        const double t0 = tdm_now_s();
        if (b->rank == 0) {
            TDM_CHECK(xp_ucx_am_post(b->u, &b->peer, XP_UCX_AM_BENCH, NULL, 0, src, bytes, 0, &req,
                                     &b->err));
            TDM_CHECK(wait_recv(b, base + (uint64_t)it + 1, "AM latency"));
            TDM_CHECK(wait_req(b, &req, "AM latency"));
        } else {
            TDM_CHECK(wait_recv(b, base + (uint64_t)it + 1, "AM latency"));
            TDM_CHECK(xp_ucx_am_post(b->u, &b->peer, XP_UCX_AM_BENCH, NULL, 0, src, bytes, 0, &req,
                                     &b->err));
            TDM_CHECK(wait_req(b, &req, "AM latency"));
        }
        if (it >= warm) {
            b->samples[it - warm] = (tdm_now_s() - t0) * 0.5e6;
        }
    }
    *row = (lb_row_t){.bytes = bytes, .iters = iters};
    percentiles(b->samples, iters, &row->median_us, &row->p99_us);
    return TDM_OK;
}

static tdm_status_t am_bw(lb_t *b, uint64_t bytes, lb_row_t *row)
{
    const uint64_t msgs = bw_msgs(&b->s, bytes), window = bw_window(bytes, msgs);
    const uint64_t base = b->n_recv; /* before the sync, as in am_lat */
    TDM_CHECK(sync_peer(b));
    void *reqs[64] = {0};
    const double t0 = tdm_now_s();
    if (b->rank == 0) {
        const void *src = (unsigned char *)b->tx.base + 64;
        for (uint64_t sent = 0; sent < msgs;) {
            uint64_t k = 0;
            for (; k < window && sent < msgs; k++, sent++) {
                TDM_CHECK(xp_ucx_am_post(b->u, &b->peer, XP_UCX_AM_BENCH, NULL, 0, src, bytes, 0,
                                         &reqs[k], &b->err));
            }
            for (uint64_t j = 0; j < k; j++) {
                TDM_CHECK(wait_req(b, &reqs[j], "AM bandwidth"));
            }
        }
        /* the receiver's one-message answer: everything arrived */
        TDM_CHECK(wait_recv(b, base + 1, "AM bandwidth"));
    } else {
        TDM_CHECK(wait_recv(b, base + msgs, "AM bandwidth"));
        void *req = NULL;
        TDM_CHECK(xp_ucx_am_post(b->u, &b->peer, XP_UCX_AM_BENCH, NULL, 0, b->tx.base, 8, 0, &req,
                                 &b->err));
        TDM_CHECK(wait_req(b, &req, "AM bandwidth"));
    }
    const double s = tdm_now_s() - t0;
    *row = (lb_row_t){
        .bytes = bytes, .gbps = (double)(bytes * msgs) / s * 1e-9, .window = window, .msgs = msgs};
    return TDM_OK;
}

static tdm_status_t put_lat(lb_t *b, uint64_t bytes, lb_row_t *row)
{
    const int iters = lat_iters(&b->s, bytes);
    const int warm = iters / 10 < 1 ? 1 : iters / 10 > 100 ? 100 : iters / 10;
    TDM_CHECK(sync_peer(b));
    for (int it = 0; it < warm + iters; it++) {
        /* distinct from every earlier test's flag value */
        const uint64_t flag = ((uint64_t)b->sync_seq << 32) | (uint64_t)(it + 1);
        const double t0 = tdm_now_s();
        if (b->rank == 0) {
            TDM_CHECK(put_with_flag(b, bytes, flag));
            TDM_CHECK(wait_flag(b, flag, "put latency"));
        } else {
            TDM_CHECK(wait_flag(b, flag, "put latency"));
            TDM_CHECK(put_with_flag(b, bytes, flag));
        }
        if (it >= warm) {
            b->samples[it - warm] = (tdm_now_s() - t0) * 0.5e6;
        }
    }
    *row = (lb_row_t){.bytes = bytes, .iters = iters};
    percentiles(b->samples, iters, &row->median_us, &row->p99_us);
    return TDM_OK;
}

static tdm_status_t put_bw(lb_t *b, uint64_t bytes, lb_row_t *row)
{
    const uint64_t msgs = bw_msgs(&b->s, bytes), window = bw_window(bytes, msgs);
    TDM_CHECK(sync_peer(b));
    const double t0 = tdm_now_s();
    double last_tick = t0;
    if (b->rank == 0) {
        void *reqs[64] = {0};
        const void *src = (unsigned char *)b->tx.base + 64;
        for (uint64_t sent = 0; sent < msgs;) {
            uint64_t k = 0;
            for (; k < window && sent < msgs; k++, sent++) {
                TDM_CHECK(xp_ucx_put_post(b->u, &b->peer, src, bytes, b->peer_base + 64,
                                          b->peer_rkey, &reqs[k], &b->err));
            }
            void *flush = NULL;
            TDM_CHECK(xp_ucx_flush_post(b->u, &b->peer, &flush, &b->err));
            TDM_CHECK(wait_req(b, &flush, "put bandwidth flush"));
            for (uint64_t j = 0; j < k; j++) {
                TDM_CHECK(wait_req(b, &reqs[j], "put bandwidth"));
            }
            /* On a slow link, tell the target we are alive before its timeout runs out
             * (rare enough not to disturb the measurement). */
            if (tdm_now_s() - last_tick > b->s.timeout_ms * 0.25e-3) {
                last_tick = tdm_now_s();
                xp_ucx_ctrl_hdr_t h = {.epoch = b->s.session, .type = LB_TICK, .src = 0};
                TDM_CHECK(xp_ucx_ctrl_send(b->u, &b->peer, &h, NULL, 0, deadline_of(b),
                                           "put bandwidth", &b->err));
            }
        }
    }
    const double s = tdm_now_s() - t0;
    /* The target only progresses (over TCP its worker applies the emulated puts) until the
     * initiator says it is done; each tick restarts its timeout. */
    if (b->rank == 0) {
        xp_ucx_ctrl_hdr_t h = {.epoch = b->s.session, .type = LB_DONE, .src = 0};
        TDM_CHECK(xp_ucx_ctrl_send(b->u, &b->peer, &h, NULL, 0, deadline_of(b), "put bandwidth",
                                   &b->err));
    } else {
        xp_ucx_msg_t *m = NULL;
        tdm_status_t st;
        while ((st = xp_ucx_ctrl_wait(b->u, &b->peer, b->s.session, LB_DONE, deadline_of(b),
                                      "put bandwidth", &m, &b->err)) == TDM_ERR_TIMEOUT) {
            xp_ucx_msg_t *tick = xp_ucx_ctrl_take(b->u, b->s.session, LB_TICK, 0);
            if (tick == NULL) {
                return st;
            }
            tdm_error_clear(&b->err);
            while (tick != NULL) {
                free(tick);
                tick = xp_ucx_ctrl_take(b->u, b->s.session, LB_TICK, 0);
            }
        }
        free(m);
        TDM_CHECK(st);
        for (xp_ucx_msg_t *t; (t = xp_ucx_ctrl_take(b->u, b->s.session, LB_TICK, 0)) != NULL;) {
            free(t);
        }
    }
    *row = (lb_row_t){
        .bytes = bytes, .gbps = (double)(bytes * msgs) / s * 1e-9, .window = window, .msgs = msgs};
    return TDM_OK;
}

static tdm_status_t allreduce_lat(lb_t *b, xp_ucx_proto_t proto, const uint64_t *sizes,
                                  size_t n_sizes, lb_row_t *rows, size_t *n_rows)
{
    uint64_t max_bytes = 0;
    for (size_t i = 0; i < n_sizes; i++) {
        if (in_range(&b->s, sizes[i]) && sizes[i] > max_bytes) {
            max_bytes = sizes[i];
        }
    }
    *n_rows = 0;
    if (max_bytes == 0) {
        return TDM_OK;
    }
    const void *mine;
    size_t mine_len;
    xp_ucx_address(b->u, &mine, &mine_len);
    const void *addrs[2];
    size_t lens[2];
    addrs[b->rank] = mine;
    lens[b->rank] = mine_len;
    addrs[1 - b->rank] = b->peer_addr;
    lens[1 - b->rank] = b->peer_addr_len;
    xp_ucx_world_params_t wp = {
        .rank = b->rank,
        .tp_size = 2,
        .ep_size = 1,
        .peer_addr = addrs,
        .peer_addr_len = lens,
        .epoch = b->s.session + 1 + (uint64_t)proto,
        .max_floats = (int64_t)(max_bytes / sizeof(float)),
        .timeout_ms = b->s.timeout_ms,
        .proto = proto,
    };
    xp_ucx_world_t *w = NULL;
    TDM_CHECK(xp_ucx_world_create(b->u, &wp, &w, &b->err));
    shd_comm_t c = xp_ucx_world_comm(w);
    float *buf = malloc(max_bytes);
    tdm_status_t st =
        buf != NULL ? TDM_OK : tdm_error_set(&b->err, TDM_ERR_NO_MEMORY, "out of memory");
    for (size_t i = 0; i < n_sizes && st == TDM_OK; i++) {
        if (!in_range(&b->s, sizes[i])) {
            continue;
        }
        const int64_t n = (int64_t)(sizes[i] / sizeof(float));
        for (int64_t j = 0; j < n; j++) {
            buf[j] = 1.0f / (float)(j + 1);
        }
        const int iters = ar_iters(&b->s, sizes[i]);
        const int warm = iters / 10 < 2 ? 2 : iters / 10;
        for (int it = 0; it < warm + iters && st == TDM_OK; it++) {
            const double t0 = tdm_now_s();
            st = c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_TP, buf, n, &b->err);
            if (it >= warm) {
                b->samples[it - warm] = (tdm_now_s() - t0) * 1e6;
            }
            /* keep the values from growing without bound (and denormals out) */
            buf[0] = 1.0f;
        }
        if (st == TDM_OK) {
            lb_row_t *r = &rows[(*n_rows)++];
            *r = (lb_row_t){.bytes = sizes[i], .iters = iters};
            percentiles(b->samples, iters, &r->median_us, &r->p99_us);
        }
    }
    free(buf);
    xp_ucx_world_destroy(w);
    return st;
}

/* ---- output -------------------------------------------------------------------------- */

static void print_lat(const char *title, const lb_row_t *rows, size_t n)
{
    printf("\n%s\n%12s %8s %12s %12s\n", title, "bytes", "iters", "median us", "p99 us");
    if (n == 0) {
        printf("  (no size between --min-bytes and --max-bytes)\n");
    }
    for (size_t i = 0; i < n; i++) {
        printf("%12" PRIu64 " %8d %12.2f %12.2f\n", rows[i].bytes, rows[i].iters, rows[i].median_us,
               rows[i].p99_us);
    }
}

static void print_bw(const char *title, const lb_row_t *rows, size_t n)
{
    printf("\n%s\n%12s %8s %8s %10s\n", title, "bytes", "window", "msgs", "GB/s");
    if (n == 0) {
        printf("  (no size between --min-bytes and --max-bytes)\n");
    }
    for (size_t i = 0; i < n; i++) {
        printf("%12" PRIu64 " %8" PRIu64 " %8" PRIu64 " %10.3f\n", rows[i].bytes, rows[i].window,
               rows[i].msgs, rows[i].gbps);
    }
}

static json_t *lat_json(const lb_row_t *rows, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "bytes", json_integer((json_int_t)rows[i].bytes));
        json_object_set_new(o, "iters", json_integer(rows[i].iters));
        json_object_set_new(o, "lat_us_median", json_real(rows[i].median_us));
        json_object_set_new(o, "lat_us_p99", json_real(rows[i].p99_us));
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *bw_json(const lb_row_t *rows, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "bytes", json_integer((json_int_t)rows[i].bytes));
        json_object_set_new(o, "gbps", json_real(rows[i].gbps));
        json_object_set_new(o, "window", json_integer((json_int_t)rows[i].window));
        json_object_set_new(o, "msgs", json_integer((json_int_t)rows[i].msgs));
        json_array_append_new(a, o);
    }
    return a;
}

/* ---- one end ------------------------------------------------------------------------- */

enum { T_AM_LAT, T_AM_BW, T_PUT_LAT, T_PUT_BW, T_AR_AM, T_AR_RMA, T_COUNT };

static tdm_status_t exchange_regions(lb_t *b)
{
    unsigned char msg[8 + XP_UCX_CTRL_MAX_DATA];
    const uint64_t base = (uint64_t)(uintptr_t)b->rx.base;
    if (b->rx.rkey_len > XP_UCX_CTRL_MAX_DATA - 8) {
        return tdm_error_set(&b->err, TDM_ERR_UNSUPPORTED, "a %zu-byte remote key", b->rx.rkey_len);
    }
    memcpy(msg, &base, 8);
    memcpy(msg + 8, b->rx.rkey, b->rx.rkey_len);
    xp_ucx_ctrl_hdr_t h = {.epoch = b->s.session, .type = LB_REGION, .src = b->rank};
    TDM_CHECK(xp_ucx_ctrl_send(b->u, &b->peer, &h, msg, 8 + b->rx.rkey_len, deadline_of(b),
                               "linkbench wireup", &b->err));
    xp_ucx_msg_t *m = NULL;
    TDM_CHECK(xp_ucx_ctrl_wait(b->u, &b->peer, b->s.session, LB_REGION, deadline_of(b),
                               "linkbench wireup", &m, &b->err));
    tdm_status_t st = TDM_OK;
    if (m->len <= 8) {
        st = tdm_error_set(&b->err, TDM_ERR_FORMAT, "rank %d sent a %zu-byte region", 1 - b->rank,
                           m->len);
    } else {
        memcpy(&b->peer_base, m->data, 8);
        st = xp_ucx_rkey_unpack(&b->peer, m->data + 8, m->len - 8, &b->peer_rkey, &b->err);
    }
    free(m);
    return st;
}

static tdm_status_t run_tests(lb_t *b, lb_row_t *rows[T_COUNT], size_t n_rows[T_COUNT])
{
    size_t n_p2p, n_ar;
    const uint64_t *p2p = p2p_sizes(&b->s, &n_p2p);
    const uint64_t *ar = ar_sizes(&b->s, &n_ar);
    TDM_CHECK(exchange_regions(b));
    static const int order[] = {T_AM_LAT, T_AM_BW, T_PUT_LAT, T_PUT_BW};
    for (size_t t = 0; t < TDM_ARRAY_SIZE(order); t++) {
        const int kind = order[t];
        for (size_t i = 0; i < n_p2p; i++) {
            if (!in_range(&b->s, p2p[i])) {
                continue;
            }
            lb_row_t *r = &rows[kind][n_rows[kind]++];
            switch (kind) {
            case T_AM_LAT:
                TDM_CHECK(am_lat(b, p2p[i], r));
                break;
            case T_AM_BW:
                TDM_CHECK(am_bw(b, p2p[i], r));
                break;
            case T_PUT_LAT:
                TDM_CHECK(put_lat(b, p2p[i], r));
                break;
            default:
                TDM_CHECK(put_bw(b, p2p[i], r));
                break;
            }
        }
    }
    TDM_CHECK(sync_peer(b));
    TDM_CHECK(allreduce_lat(b, XP_UCX_PROTO_AM, ar, n_ar, rows[T_AR_AM], &n_rows[T_AR_AM]));
    TDM_CHECK(allreduce_lat(b, XP_UCX_PROTO_RMA, ar, n_ar, rows[T_AR_RMA], &n_rows[T_AR_RMA]));
    return sync_peer(b);
}

static void report(const lb_t *b, const lb_opts_t *o, lb_row_t *rows[T_COUNT],
                   const size_t n_rows[T_COUNT])
{
    const char *tls = o->tls != NULL ? o->tls : getenv("UCX_TLS");
    const char *dev = o->devices != NULL ? o->devices : getenv("UCX_NET_DEVICES");
    if (o->json) {
        json_t *root = json_object();
        json_object_set_new(root, "tls", tls != NULL ? json_string(tls) : json_null());
        json_object_set_new(root, "devices", dev != NULL ? json_string(dev) : json_null());
        json_object_set_new(root, "quick", json_boolean(b->s.quick));
        json_object_set_new(root, "iters", json_integer(b->s.iters));
        json_object_set_new(root, "am_lat", lat_json(rows[T_AM_LAT], n_rows[T_AM_LAT]));
        json_object_set_new(root, "am_bw", bw_json(rows[T_AM_BW], n_rows[T_AM_BW]));
        json_object_set_new(root, "put_lat", lat_json(rows[T_PUT_LAT], n_rows[T_PUT_LAT]));
        json_object_set_new(root, "put_bw", bw_json(rows[T_PUT_BW], n_rows[T_PUT_BW]));
        json_object_set_new(root, "allreduce_am", lat_json(rows[T_AR_AM], n_rows[T_AR_AM]));
        json_object_set_new(root, "allreduce_rma", lat_json(rows[T_AR_RMA], n_rows[T_AR_RMA]));
        char *s = json_dumps(root, JSON_INDENT(2));
        if (s != NULL) {
            printf("%s\n", s);
            free(s);
        }
        json_decref(root);
        return;
    }
    printf("tandem linkbench: transports %s, devices %s, %d iterations%s\n",
           tls != NULL ? tls : "(UCX default)", dev != NULL ? dev : "(UCX default)", b->s.iters,
           b->s.quick ? " (quick)" : "");
    print_lat("AM ping-pong latency (half round trip)", rows[T_AM_LAT], n_rows[T_AM_LAT]);
    print_bw("AM bandwidth (window of sends in flight)", rows[T_AM_BW], n_rows[T_AM_BW]);
    print_lat("RMA put latency (put + fence + flag put; the peer polls and answers)",
              rows[T_PUT_LAT], n_rows[T_PUT_LAT]);
    print_bw("RMA put bandwidth (window of puts + flush)", rows[T_PUT_BW], n_rows[T_PUT_BW]);
    print_lat("All-reduce latency, 2 ranks (tp 2), proto am", rows[T_AR_AM], n_rows[T_AR_AM]);
    print_lat("All-reduce latency, 2 ranks (tp 2), proto rma", rows[T_AR_RMA], n_rows[T_AR_RMA]);
}

/* One end: UCX, bootstrap, endpoints, the tests, the report (rank 0). Returns the exit
 * status. */
static int run_end(const lb_opts_t *o, const char *endpoint, int port_fd)
{
    lb_t b = {.rank = o->connect != NULL ? 1 : 0, .s = o->s};
    if (b.rank == 0) {
        b.s.session = ((uint64_t)getpid() << 32) ^ (uint64_t)(tdm_now_s() * 1e9);
    }
    lb_row_t *rows[T_COUNT] = {0};
    size_t n_rows[T_COUNT] = {0};
    xp_ucx_params_t up = {.tls = o->tls, .net_devices = o->devices};
    tdm_status_t st = xp_ucx_create(&up, &b.u, &b.err);
    bool handler = false;
    if (st == TDM_OK) {
        st = bootstrap(&b, o, endpoint, port_fd, &b.err);
    }
    if (st == TDM_OK) {
        b.cap = (size_t)b.s.max_bytes;
        if (b.cap < 4096) {
            b.cap = 4096;
        }
        st = xp_ucx_region_alloc(b.u, 64 + b.cap, &b.rx, &b.err);
    }
    if (st == TDM_OK) {
        st = xp_ucx_region_alloc(b.u, 64 + b.cap, &b.tx, &b.err);
    }
    if (st == TDM_OK) {
        memset(b.rx.base, 0, 64);
        memset(b.tx.base, 0x5a, 64 + b.cap);
        st = xp_ucx_set_am_handler(b.u, XP_UCX_AM_BENCH, on_bench, &b, &b.err);
        handler = st == TDM_OK;
    }
    if (st == TDM_OK) {
        st = xp_ucx_peer_connect(b.u, &b.peer, 1 - b.rank, b.peer_addr, b.peer_addr_len, &b.err);
    }
    if (st == TDM_OK) {
        b.samples = tdm_xmalloc((size_t)(b.s.iters > 1000 ? b.s.iters : 1000) * sizeof(double));
        for (int t = 0; t < T_COUNT; t++) {
            rows[t] = tdm_xcalloc(TDM_ARRAY_SIZE(lb_sizes_full), sizeof(lb_row_t));
        }
        st = run_tests(&b, rows, n_rows);
    }
    if (st == TDM_OK && b.rank == 0) {
        report(&b, o, rows, n_rows);
    }
    if (st != TDM_OK) {
        fprintf(stderr, "tandem linkbench (%s end): %s\n", b.rank == 0 ? "listening" : "connecting",
                tdm_error_msg(&b.err));
    }
    if (b.peer_rkey != NULL) {
        ucp_rkey_destroy(b.peer_rkey);
    }
    if (b.u != NULL) {
        xp_ucx_peers_close(b.u, &b.peer, 1, st != TDM_OK, 2000);
        if (handler) {
            xp_ucx_set_am_handler(b.u, XP_UCX_AM_BENCH, NULL, NULL, NULL);
        }
        /* rendezvous receives into rx must be over before it goes */
        const double until = tdm_now_s() + 2.0;
        while (b.rndv_inflight > 0 && tdm_now_s() < until) {
            ucp_worker_progress(b.u->worker);
        }
        if (b.rndv_inflight == 0) {
            xp_ucx_region_free(b.u, &b.rx);
        }
        xp_ucx_region_free(b.u, &b.tx);
    }
    xp_ucx_destroy(b.u);
    free((void *)b.peer_addr);
    free(b.samples);
    for (int t = 0; t < T_COUNT; t++) {
        free(rows[t]);
    }
    return st == TDM_OK ? 0 : 1;
}

/* --local: the connecting end is a child; the port travels through a pipe. UCX and ZeroMQ
 * are created after the fork, in each process. */
static int run_local(lb_opts_t *o)
{
    int fds[2];
    if (pipe(fds) != 0) {
        fprintf(stderr, "tandem linkbench: pipe: %s\n", strerror(errno));
        return 1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tandem linkbench: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        close(fds[1]);
        int port = 0;
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        if (poll(&p, 1, o->s.timeout_ms) != 1 ||
            read(fds[0], &port, sizeof(port)) != (ssize_t)sizeof(port) || port <= 0) {
            fprintf(stderr, "tandem linkbench: --local: the listening end never started\n");
            _exit(1);
        }
        close(fds[0]);
        char ep[64];
        snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", port);
        lb_opts_t co = *o;
        co.connect = ep;
        co.listen = NULL;
        fflush(stdout);
        _exit(run_end(&co, ep, -1));
    }
    close(fds[0]);
    int rc = run_end(o, "tcp://127.0.0.1:*", fds[1]);
    close(fds[1]);
    /* the child ends on its own: its waits are bounded like ours */
    int status = 0;
    const double until = tdm_now_s() + o->s.timeout_ms * 1e-3 + 5.0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (tdm_now_s() > until) {
            fprintf(stderr, "tandem linkbench: --local: the connecting end did not exit; "
                            "killing it\n");
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 1;
        }
        usleep(10000);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return 1;
    }
    return rc;
}

int cmd_linkbench(int argc, char **argv)
{
    lb_opts_t o = {
        .s = {.iters = 1000, .min_bytes = 8, .max_bytes = 64u << 20, .timeout_ms = 30000}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const bool has = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--listen") == 0 && has) {
            o.listen = argv[++i];
        } else if (strcmp(a, "--connect") == 0 && has) {
            o.connect = argv[++i];
        } else if (strcmp(a, "--local") == 0) {
            o.local = true;
        } else if (strcmp(a, "--tls") == 0 && has) {
            o.tls = argv[++i];
        } else if (strcmp(a, "--devices") == 0 && has) {
            o.devices = argv[++i];
        } else if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "--quick") == 0) {
            o.s.quick = 1;
        } else if (strcmp(a, "--iters") == 0 && has) {
            if (parse_int(argv[++i], 1, 1000000, &o.s.iters) != 0) {
                fprintf(stderr, "tandem linkbench: --iters wants 1..1000000, not '%s'\n", argv[i]);
                return 2;
            }
            o.iters_set = true;
        } else if ((strcmp(a, "--min-bytes") == 0 || strcmp(a, "--max-bytes") == 0) && has) {
            uint64_t v;
            if (parse_bytes(argv[++i], &v) != 0 || v < 1 || v > ((uint64_t)1 << 30)) {
                fprintf(stderr, "tandem linkbench: %s wants 1..1G bytes, not '%s'\n", a, argv[i]);
                return 2;
            }
            *(strcmp(a, "--min-bytes") == 0 ? &o.s.min_bytes : &o.s.max_bytes) = v;
        } else if (strcmp(a, "--timeout-ms") == 0 && has) {
            if (parse_int(argv[++i], 1, 3600000, &o.s.timeout_ms) != 0) {
                fprintf(stderr, "tandem linkbench: --timeout-ms wants 1..3600000, not '%s'\n",
                        argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "tandem linkbench: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    if ((o.listen != NULL) + (o.connect != NULL) + o.local != 1) {
        fprintf(stderr, "tandem linkbench: give exactly one of --listen, --connect, --local\n\n");
        usage(stderr);
        return 2;
    }
    if (o.s.min_bytes > o.s.max_bytes) {
        fprintf(stderr, "tandem linkbench: --min-bytes is above --max-bytes\n");
        return 2;
    }
    if (o.s.quick && !o.iters_set) {
        o.s.iters = 20;
    }
    /* a peer that vanishes mid-send must not kill us before we can say so */
    signal(SIGPIPE, SIG_IGN);
    if (o.local) {
        return run_local(&o);
    }
    char ep[300];
    snprintf(ep, sizeof(ep), "tcp://%s", o.listen != NULL ? o.listen : o.connect);
    return run_end(&o, ep, -1);
}
