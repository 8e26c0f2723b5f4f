/*
 * coll_stress.c - many collectives between UCX ranks on one host, every result checked.
 *
 *   tandem-coll-stress [--tp N] [--ep N] [--tls tcp|sm|...] [--proto am|rma] [--calls N]
 *                      [--spin K] [--timeout-ms MS] [--limit-s S] [--seed X]
 *
 * Issue 16 asked where a collective that once timed out ("all-reduce (group TP, 8192 bytes):
 * no data from rank 1 after 5000 ms", twice in months of tests) lost its message: in
 * ucx_comm.c, or in a starved process. This program forks tp * ep ranks (each its own
 * xp_ucx_t, as shard processes are) plus K spinning processes that keep every core busy
 * (more runnable threads than cores, as on the 2-vCPU CI machine running the whole suite),
 * and has every rank make the same long sequence of collectives: mostly 2048-float
 * (8192-byte) all-reduces over alternating groups, the size of the failing call, with 1-
 * and 7-float calls, 100003-float calls (reduce-scatter + all-gather) and all-gathers mixed
 * in by a seeded hash of the call number. Every result is compared bit for bit with the
 * rank-ordered sum computed from every rank's seeded inputs (the contract in
 * shard/shd_comm.h), so a lost, duplicated, stale or misplaced message shows up as a
 * timeout or a mismatch, never silently.
 *
 * It prints one JSON line: calls made, failures (the first one's message), and latency
 * percentiles with the slowest call. Exit 0 when every rank finished every call correctly.
 * --limit-s bounds the whole run (ranks still running then are killed and reported as a
 * hang). The rank-side timeout defaults to 15000 ms, the production default.
 */
#include "common/clock.h"
#include "transport/ucx_comm.h"
#include "tests/support/coll_check.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_RANKS 8
#define BIG_N     100003 /* floats: above the 64 KiB one-shot limit, odd */
#define N_BUCKETS 40     /* latency histogram: bucket b holds [2^b, 2^(b+1)) microseconds */

typedef struct opts {
    int tp, ep, spin;
    const char *tls;
    xp_ucx_proto_t proto;
    long long calls;
    int timeout_ms;
    double limit_s;
    uint64_t seed;
} opts_t;

/* What a rank reports to the parent through its pipe. */
typedef struct report {
    int ok;
    long long calls_done;
    uint64_t hist[N_BUCKETS];
    double max_ms;
    long long max_call;
    uint64_t bytes_sent;
    char msg[320];
} report_t;

/* Call c's shape, the same on every rank. */
typedef struct call {
    shd_group_t group;
    int64_t n;
    bool gather; /* all_gather over TP instead of an all-reduce */
} call_t;

static call_t call_of(const opts_t *o, uint64_t c)
{
    const uint64_t h = coll_mix(o->seed ^ (c * 0x9e3779b97f4a7c15ull));
    call_t k = {SHD_GROUP_TP, 2048, false};
    static const shd_group_t groups[3] = {SHD_GROUP_TP, SHD_GROUP_EP, SHD_GROUP_WORLD};
    k.group = groups[(h >> 8) % 3];
    const unsigned pick = (unsigned)(h % 256);
    if (pick < 8) {
        k.n = 1;
    } else if (pick < 16) {
        k.n = 7;
    } else if (pick < 18) {
        k.n = BIG_N;
    } else if (pick < 26) {
        k.gather = true;
        k.group = SHD_GROUP_TP;
        k.n = 512;
    }
    return k;
}

static int rfail(report_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int rfail(report_t *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
    va_end(ap);
    r->ok = 0;
    return 1;
}

/* One call: fill, run, compare with the reference. */
static int one_call(const opts_t *o, shd_comm_t comm, int rank, uint64_t c, float *buf, float *ref,
                    report_t *r)
{
    const call_t k = call_of(o, c);
    const coll_group_t gr = coll_group_of(o->tp, o->ep, rank, k.group);
    tdm_error_t err = {0};
    tdm_status_t st;
    if (k.gather) {
        for (int64_t i = 0; i < k.n; i++) {
            ref[i] = coll_val(c, rank, i);
        }
        st = comm.ops->all_gather_f32(comm.impl, SHD_GROUP_TP, ref, k.n, buf, &err);
        if (st == TDM_OK) {
            for (int m = 0; m < gr.count; m++) {
                for (int64_t i = 0; i < k.n; i++) {
                    float want = coll_val(c, gr.first + m * gr.stride, i);
                    if (memcmp(&buf[m * k.n + i], &want, sizeof(float)) != 0) {
                        return rfail(r,
                                     "rank %d call %llu: all-gather member %d element %lld wrong",
                                     rank, (unsigned long long)c, m, (long long)i);
                    }
                }
            }
        }
    } else {
        for (int64_t i = 0; i < k.n; i++) {
            buf[i] = coll_val(c, rank, i);
        }
        st = comm.ops->all_reduce_sum_f32(comm.impl, k.group, buf, k.n, &err);
        if (st == TDM_OK) {
            coll_reference_sum(c, gr, ref, k.n);
            if (memcmp(buf, ref, (size_t)k.n * sizeof(float)) != 0) {
                return rfail(r,
                             "rank %d call %llu: all-reduce of %lld floats differs from the "
                             "rank-ordered sum",
                             rank, (unsigned long long)c, (long long)k.n);
            }
        }
    }
    if (st != TDM_OK) {
        return rfail(r, "rank %d call %llu (%s, %lld floats): %s", rank, (unsigned long long)c,
                     k.gather ? "all-gather" : "all-reduce", (long long)k.n, tdm_error_msg(&err));
    }
    return 0;
}

static void rank_main(const opts_t *o, int rank, int up, int down)
{
    const int size = o->tp * o->ep;
    report_t r = {.ok = 1};
    xp_ucx_params_t up_params = {.tls = o->tls};
    xp_ucx_t *u = NULL;
    tdm_error_t err = {0};
    if (xp_ucx_create(&up_params, &u, &err) != TDM_OK) {
        rfail(&r, "rank %d: xp_ucx_create: %s", rank, tdm_error_msg(&err));
        coll_write_all(up, &(size_t){0}, sizeof(size_t));
        coll_write_all(up, &r, sizeof(r));
        _exit(1);
    }
    const void *addr;
    size_t len;
    xp_ucx_address(u, &addr, &len);
    void *addrs[MAX_RANKS] = {0};
    size_t lens[MAX_RANKS] = {0};
    if (coll_exchange_addrs(up, down, addr, len, size, addrs, lens) != 0) {
        _exit(3);
    }
    xp_ucx_world_params_t wp = {
        .rank = rank,
        .tp_size = o->tp,
        .ep_size = o->ep,
        .peer_addr = (const void *const *)addrs,
        .peer_addr_len = lens,
        .epoch = 7,
        .max_floats = BIG_N,
        .timeout_ms = o->timeout_ms,
        .proto = o->proto,
    };
    xp_ucx_world_t *w = NULL;
    float *buf = malloc((size_t)BIG_N * MAX_RANKS * sizeof(float));
    float *ref = malloc((size_t)BIG_N * sizeof(float));
    if (buf == NULL || ref == NULL) {
        rfail(&r, "rank %d: out of memory", rank);
    } else if (xp_ucx_world_create(u, &wp, &w, &err) != TDM_OK) {
        rfail(&r, "rank %d: world_create: %s", rank, tdm_error_msg(&err));
    } else {
        shd_comm_t comm = xp_ucx_world_comm(w);
        for (long long c = 0; c < o->calls; c++) {
            const double t0 = tdm_now_s();
            if (one_call(o, comm, rank, (uint64_t)c, buf, ref, &r) != 0) {
                break;
            }
            const double ms = (tdm_now_s() - t0) * 1e3;
            int b = 0;
            for (double us = ms * 1e3; us >= 2.0 && b < N_BUCKETS - 1; us /= 2.0) {
                b++;
            }
            r.hist[b]++;
            if (ms > r.max_ms) {
                r.max_ms = ms;
                r.max_call = c;
            }
            r.calls_done++;
        }
        xp_ucx_stats_t s;
        xp_ucx_world_stats(w, &s);
        r.bytes_sent = s.bytes_sent;
    }
    xp_ucx_world_destroy(w);
    xp_ucx_destroy(u);
    free(buf);
    free(ref);
    for (int q = 0; q < size; q++) {
        free(addrs[q]);
    }
    coll_write_all(up, &r, sizeof(r));
    _exit(r.ok ? 0 : 1);
}

static void spin_main(void)
{
    volatile uint64_t x = 1;
    for (;;) {
        x = coll_mix(x);
    }
}

static double pct_ms(const uint64_t *hist, uint64_t total, double q)
{
    uint64_t want = (uint64_t)ceil(q * (double)total), seen = 0;
    for (int b = 0; b < N_BUCKETS; b++) {
        seen += hist[b];
        if (seen >= want && want > 0) {
            return ldexp(1.0, b + 1) / 1e3; /* the bucket's upper edge */
        }
    }
    return 0.0;
}

static int usage(void)
{
    fprintf(stderr, "usage: tandem-coll-stress [--tp N] [--ep N] [--tls T] [--proto am|rma] "
                    "[--calls N] [--spin K] [--timeout-ms MS] [--limit-s S] [--seed X]\n");
    return 2;
}

int main(int argc, char **argv)
{
    opts_t o = {.tp = 2,
                .ep = 1,
                .spin = 0,
                .tls = "tcp",
                .proto = XP_UCX_PROTO_AM,
                .calls = 100000,
                .timeout_ms = 15000,
                .limit_s = 3600,
                .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            return usage();
        }
        if (strcmp(a, "--tp") == 0) {
            o.tp = atoi(v);
        } else if (strcmp(a, "--ep") == 0) {
            o.ep = atoi(v);
        } else if (strcmp(a, "--tls") == 0) {
            o.tls = v;
        } else if (strcmp(a, "--proto") == 0) {
            if (strcmp(v, "am") != 0 && strcmp(v, "rma") != 0) {
                return usage();
            }
            o.proto = strcmp(v, "rma") == 0 ? XP_UCX_PROTO_RMA : XP_UCX_PROTO_AM;
        } else if (strcmp(a, "--calls") == 0) {
            o.calls = atoll(v);
        } else if (strcmp(a, "--spin") == 0) {
            o.spin = atoi(v);
        } else if (strcmp(a, "--timeout-ms") == 0) {
            o.timeout_ms = atoi(v);
        } else if (strcmp(a, "--limit-s") == 0) {
            o.limit_s = atof(v);
        } else if (strcmp(a, "--seed") == 0) {
            o.seed = strtoull(v, NULL, 0);
        } else {
            return usage();
        }
        i++;
    }
    const int size = o.tp * o.ep;
    if (o.tp < 1 || o.ep < 1 || size < 2 || size > MAX_RANKS || o.calls < 1 || o.spin < 0 ||
        o.spin > 64 || o.timeout_ms < 1) {
        return usage();
    }
    fflush(stdout);
    pid_t spinners[64];
    for (int k = 0; k < o.spin; k++) {
        spinners[k] = fork();
        if (spinners[k] == 0) {
            spin_main();
        }
    }
    int up[MAX_RANKS][2], down[MAX_RANKS][2];
    pid_t pid[MAX_RANKS];
    for (int r = 0; r < size; r++) {
        if (pipe(up[r]) != 0 || pipe(down[r]) != 0) {
            perror("pipe");
            return 1;
        }
        pid[r] = fork();
        if (pid[r] == 0) {
            for (int q = 0; q <= r; q++) {
                close(up[q][0]);
                close(down[q][1]);
            }
            rank_main(&o, r, up[r][1], down[r][0]);
        }
        close(up[r][1]);
        close(down[r][0]);
    }
    const double t_start = tdm_now_s();
    /* relay the worker addresses (no time limit: a rank that dies closes its pipe); after a
     * failed relay the ranks read EOF and exit without a report, which counts as a failure */
    (void)coll_relay_addrs(size, up, down, -1);
    /* collect the reports; a rank still running at the limit is a hang */
    report_t rep[MAX_RANKS];
    bool done[MAX_RANKS] = {false}, have[MAX_RANKS] = {false}, hang = false;
    int left = size;
    while (left > 0) {
        for (int r = 0; r < size; r++) {
            int status;
            if (!done[r] && waitpid(pid[r], &status, WNOHANG) == pid[r]) {
                done[r] = true;
                left--;
                have[r] = coll_read_all(up[r][0], &rep[r], sizeof(rep[r])) == 0;
            }
        }
        if (left > 0 && tdm_now_s() - t_start > o.limit_s) {
            hang = true;
            for (int r = 0; r < size; r++) {
                if (!done[r]) {
                    kill(pid[r], SIGKILL);
                    waitpid(pid[r], NULL, 0);
                    done[r] = true;
                }
            }
            left = 0;
        }
        if (left > 0) {
            usleep(20000);
        }
    }
    const double wall = tdm_now_s() - t_start;
    double load[1] = {0.0};
    if (getloadavg(load, 1) != 1) {
        load[0] = -1.0;
    }
    for (int k = 0; k < o.spin; k++) {
        kill(spinners[k], SIGKILL);
        waitpid(spinners[k], NULL, 0);
    }
    /* summary over ranks: calls are per rank (every rank makes every call) */
    uint64_t hist[N_BUCKETS] = {0}, total = 0;
    long long min_done = o.calls, slow_call = -1;
    double max_ms = 0.0;
    int failed = 0;
    const char *first_msg = "";
    for (int r = 0; r < size; r++) {
        if (!have[r]) {
            failed++;
            min_done = 0;
            if (first_msg[0] == '\0') {
                first_msg = hang ? "a rank was still running at --limit-s (a hang)"
                                 : "a rank died without a report";
            }
            continue;
        }
        for (int b = 0; b < N_BUCKETS; b++) {
            hist[b] += rep[r].hist[b];
            total += rep[r].hist[b];
        }
        if (rep[r].calls_done < min_done) {
            min_done = rep[r].calls_done;
        }
        if (rep[r].max_ms > max_ms) {
            max_ms = rep[r].max_ms;
            slow_call = rep[r].max_call;
        }
        if (!rep[r].ok) {
            failed++;
            if (first_msg[0] == '\0') {
                first_msg = rep[r].msg;
            }
        }
    }
    const bool ok = failed == 0 && !hang && min_done == o.calls;
    printf("{\"ok\": %s, \"tp\": %d, \"ep\": %d, \"tls\": \"%s\", \"proto\": \"%s\", "
           "\"spin\": %d, \"calls\": %lld, \"calls_done\": %lld, \"failed_ranks\": %d, "
           "\"wall_s\": %.1f, \"calls_per_s\": %.0f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
           "\"p9999_ms\": %.3f, \"max_ms\": %.1f, \"max_call\": %lld, \"timeout_ms\": %d, "
           "\"load1_end\": %.2f, \"first_error\": \"",
           ok ? "true" : "false", o.tp, o.ep, o.tls, o.proto == XP_UCX_PROTO_RMA ? "rma" : "am",
           o.spin, o.calls, min_done, failed, wall, wall > 0 ? (double)min_done / wall : 0.0,
           pct_ms(hist, total, 0.5), pct_ms(hist, total, 0.99), pct_ms(hist, total, 0.9999), max_ms,
           slow_call, o.timeout_ms, load[0]);
    for (const char *p = first_msg; *p; p++) {
        if (*p == '"' || *p == '\\') {
            putchar('\\');
        }
        putchar((unsigned char)*p >= 0x20 ? *p : ' ');
    }
    printf("\"}\n");
    return ok ? 0 : 1;
}
