/* test_nccl_comm.c - the NCCL collectives (transport/nccl_comm.c) against CPU sums.
 *
 * Exits 77 (ctest: skipped) with a message when no CUDA device is visible. Otherwise a
 * 1-rank world, and with enough GPUs 2-rank (tp 2, ep 2) and 4-rank (tp 2 x ep 2) worlds,
 * one forked process per rank and GPU, rank 0's unique id shipped over pipes as the
 * control plane would. The parent never touches CUDA (a process that forks after CUDA is
 * initialised cannot use CUDA in the child), so even the device count is asked by a
 * child. Children report with their exit status; the parent kills them after 180 s. */
#include "transport/nccl_comm.h"

#include <cuda_runtime_api.h>

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define MAX_FLOATS 5000
#define MAX_RANKS  8

static int g_devices;

/* ---- in a rank's child process: plain checks, the exit status reports ---- */

#define CHILD_CHECK(cond, ...)                                             \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "rank %d: %s:%d: ", rank, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            _exit(1);                                                      \
        }                                                                  \
    } while (0)

/* Rank r's j-th input of round k: positive, so a float sum has no cancellation and a
 * relative bound is meaningful. */
static float input(int r, int64_t j, int k)
{
    uint32_t s = (uint32_t)(r + 1) * 2654435761u ^ (uint32_t)j * 40503u ^ (uint32_t)k * 977u;
    s = s * 1664525u + 1013904223u;
    return 0.5f + (float)(s >> 8) / 16777216.0f;
}

/* World ranks of rank r's group, ascending. */
static int members(int r, int tp, int ep, shd_group_t g, int *m)
{
    const int tp_rank = r % tp, ep_rank = r / tp;
    int n = 0;
    if (g == SHD_GROUP_TP) {
        for (int i = 0; i < tp; i++) {
            m[n++] = ep_rank * tp + i;
        }
    } else if (g == SHD_GROUP_EP) {
        for (int i = 0; i < ep; i++) {
            m[n++] = i * tp + tp_rank;
        }
    } else {
        for (int i = 0; i < tp * ep; i++) {
            m[n++] = i;
        }
    }
    return n;
}

static void rank_checks(int rank, int tp, int ep, xp_nccl_world_t *w)
{
    shd_comm_t c = xp_nccl_world_comm(w);
    CHILD_CHECK(c.ops != NULL && strcmp(c.ops->name, "nccl") == 0, "ops");
    static const int64_t sizes[] = {1, 7, 1000, MAX_FLOATS};
    float *buf = malloc(MAX_FLOATS * sizeof(float));
    float *out = malloc((size_t)MAX_RANKS * MAX_FLOATS * sizeof(float));
    CHILD_CHECK(buf != NULL && out != NULL, "out of memory");
    int k = 0;
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        const int64_t n = sizes[si];
        for (int g = 0; g < SHD_GROUP_COUNT; g++, k++) {
            int m[MAX_RANKS];
            const int gn = members(rank, tp, ep, (shd_group_t)g, m);
            tdm_error_t err = {0};

            for (int64_t j = 0; j < n; j++) {
                buf[j] = input(rank, j, k);
            }
            tdm_status_t st = c.ops->all_reduce_sum_f32(c.impl, (shd_group_t)g, buf, n, &err);
            CHILD_CHECK(st == TDM_OK, "all-reduce group %d n %lld: %s", g, (long long)n,
                        tdm_error_msg(&err));
            for (int64_t j = 0; j < n; j++) {
                double ref = 0.0;
                for (int i = 0; i < gn; i++) {
                    ref += input(m[i], j, k);
                }
                CHILD_CHECK(fabs(buf[j] - ref) <= 1e-6 * fabs(ref),
                            "all-reduce group %d n %lld [%lld]: %.9g, CPU %.9g", g, (long long)n,
                            (long long)j, (double)buf[j], ref);
            }

            for (int64_t j = 0; j < n; j++) {
                buf[j] = input(rank, j, k);
            }
            st = c.ops->all_gather_f32(c.impl, (shd_group_t)g, buf, n, out, &err);
            CHILD_CHECK(st == TDM_OK, "all-gather group %d n %lld: %s", g, (long long)n,
                        tdm_error_msg(&err));
            for (int i = 0; i < gn; i++) {
                for (int64_t j = 0; j < n; j++) {
                    CHILD_CHECK(out[i * n + j] == input(m[i], j, k),
                                "all-gather group %d n %lld: slot %d [%lld]", g, (long long)n, i,
                                (long long)j);
                }
            }
        }
    }
    /* over the limit: refused on every rank before anything is sent */
    tdm_error_t err = {0};
    CHILD_CHECK(c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_WORLD, buf, MAX_FLOATS + 1, &err) ==
                    TDM_ERR_OUT_OF_RANGE,
                "n > max_floats not refused");
    /* n == 0 is a no-op */
    CHILD_CHECK(c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_WORLD, buf, 0, NULL) == TDM_OK,
                "n == 0");
    free(buf);
    free(out);
}

/* abort_after only in a 1-rank world: a rank that aborts while a peer may still be reading
 * what it sent could fail the peer (a real abort is for a world that is already broken). */
static void rank_main(int rank, int tp, int ep, const uint8_t id[XP_NCCL_ID_BYTES],
                      bool abort_after)
{
    xp_nccl_world_t *w = NULL;
    tdm_error_t err = {0};
    tdm_status_t st = xp_nccl_world_create(rank, tp, ep, id, rank, MAX_FLOATS, &w, &err);
    CHILD_CHECK(st == TDM_OK, "create: %s", tdm_error_msg(&err));
    rank_checks(rank, tp, ep, w);
    if (abort_after) {
        xp_nccl_world_abort(w);
        float x = 1.0f;
        tdm_error_clear(&err);
        shd_comm_t c = xp_nccl_world_comm(w);
        st = c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_WORLD, &x, 1, &err);
        CHILD_CHECK(st == TDM_ERR_CANCELED, "after abort: %s", tdm_status_str(st));
    }
    xp_nccl_world_destroy(w);
}

/* ---- in the parent ---- */

/* Waits for the children; returns how many did not exit 0. */
static int wait_children(const pid_t *pids, int n, int timeout_s)
{
    int bad = 0, left = n;
    bool done[MAX_RANKS] = {false};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (left > 0) {
        for (int i = 0; i < n; i++) {
            int status;
            if (done[i] || waitpid(pids[i], &status, WNOHANG) != pids[i]) {
                continue;
            }
            done[i] = true;
            left--;
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "child %d: %s %d\n", i,
                        WIFEXITED(status) ? "exit status" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                bad++;
            }
        }
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (left > 0 && t.tv_sec - t0.tv_sec > timeout_s) {
            for (int i = 0; i < n; i++) {
                if (!done[i]) {
                    fprintf(stderr, "child %d (pid %d): no answer in %d s, killed\n", i,
                            (int)pids[i], timeout_s);
                    kill(pids[i], SIGKILL);
                    waitpid(pids[i], NULL, 0);
                    bad++;
                }
            }
            break;
        }
        usleep(10000);
    }
    return bad;
}

static int run_world(int tp, int ep, bool abort_after)
{
    const int size = tp * ep;
    int fds[MAX_RANKS][2];
    pid_t pids[MAX_RANKS];
    for (int r = 1; r < size; r++) {
        if (pipe(fds[r]) != 0) {
            return -1;
        }
    }
    fflush(stdout);
    fflush(stderr);
    for (int rank = 0; rank < size; rank++) {
        pids[rank] = fork();
        if (pids[rank] < 0) {
            for (int r = 0; r < rank; r++) { /* they would wait for the id or a peer */
                kill(pids[r], SIGKILL);
                waitpid(pids[r], NULL, 0);
            }
            return -1;
        }
        if (pids[rank] > 0) {
            continue;
        }
        /* the child: the bootstrap stays on this machine */
        setenv("NCCL_SOCKET_IFNAME", "lo", 0);
        uint8_t id[XP_NCCL_ID_BYTES];
        if (rank == 0) {
            tdm_error_t err = {0};
            CHILD_CHECK(xp_nccl_unique_id(id, &err) == TDM_OK, "unique id: %s",
                        tdm_error_msg(&err));
            for (int r = 1; r < size; r++) {
                CHILD_CHECK(write(fds[r][1], id, sizeof(id)) == (ssize_t)sizeof(id), "write id: %s",
                            strerror(errno));
            }
        } else {
            CHILD_CHECK(read(fds[rank][0], id, sizeof(id)) == (ssize_t)sizeof(id), "read id: %s",
                        strerror(errno));
        }
        rank_main(rank, tp, ep, id, abort_after);
        fflush(stdout);
        fflush(stderr);
        _exit(0);
    }
    for (int r = 1; r < size; r++) {
        close(fds[r][0]);
        close(fds[r][1]);
    }
    return wait_children(pids, size, 180);
}

static void need_gpus(int n)
{
    if (g_devices < n) {
        printf("skipped: needs %d CUDA devices, %d visible\n", n, g_devices);
        skip();
    }
}

static void test_one_rank(void **state)
{
    (void)state;
    assert_int_equal(run_world(1, 1, false), 0);
}

static void test_one_rank_abort(void **state)
{
    (void)state;
    assert_int_equal(run_world(1, 1, true), 0);
}

static void test_two_ranks_tp(void **state)
{
    (void)state;
    need_gpus(2);
    assert_int_equal(run_world(2, 1, false), 0);
}

static void test_two_ranks_ep(void **state)
{
    (void)state;
    need_gpus(2);
    assert_int_equal(run_world(1, 2, false), 0);
}

static void test_four_ranks_split(void **state)
{
    (void)state;
    need_gpus(4);
    assert_int_equal(run_world(2, 2, false), 0);
}

/* cudaGetDeviceCount in a child, so this process stays CUDA-free for the forks. */
static int device_count(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
            n = 0;
        }
        _exit(n > 100 ? 100 : n);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
        return 0;
    }
    return WEXITSTATUS(status);
}

int main(void)
{
    g_devices = device_count();
    if (g_devices == 0) {
        printf("skipped: no CUDA device visible on this machine (cudaGetDeviceCount)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_rank),         cmocka_unit_test(test_one_rank_abort),
        cmocka_unit_test(test_two_ranks_tp),     cmocka_unit_test(test_two_ranks_ep),
        cmocka_unit_test(test_four_ranks_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
