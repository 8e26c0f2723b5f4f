/*
 * coll_check.h - what tests/unit/test_ucx_comm.c and bench/coll_stress.c share to check
 * collectives between forked ranks bit for bit: seeded inputs, the members of a group, the
 * rank-ordered reference sum (the contract in shard/shd_comm.h), and the pipes over which
 * the parent relays the ranks' worker addresses.
 *
 * Header-only (static inline): one test and one bench program include it, and neither
 * build needs another library for it.
 */
#ifndef TDM_TESTS_COLL_CHECK_H
#define TDM_TESTS_COLL_CHECK_H

#include "shard/shd_comm.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define COLL_MAX_RANKS 8 /* the most ranks coll_relay_addrs relays for */

/* ---- inputs and the reference -------------------------------------------------------- */

static inline uint64_t coll_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Rank r's input element i of call seed: magnitudes spread over 2^-8..2^7 so that adding in
 * another order would change the bits. */
static inline float coll_val(uint64_t seed, int r, int64_t i)
{
    const uint64_t x =
        coll_mix(seed * 0x100000001b3ull ^ coll_mix((uint64_t)r * 1000003u + (uint64_t)i));
    const float mant = (float)((x >> 40) & 0xffffff) / 16777216.0f - 0.5f;
    return ldexpf(mant, (int)((x >> 8) & 15) - 8);
}

/* The members of rank's group g in a tp x ep world: first, first + stride, ...; me is the
 * rank's place among them. */
typedef struct coll_group {
    int count, first, stride, me;
} coll_group_t;

static inline coll_group_t coll_group_of(int tp, int ep, int rank, shd_group_t g)
{
    const int tp_rank = rank % tp, ep_rank = rank / tp;
    switch (g) {
    case SHD_GROUP_TP:
        return (coll_group_t){tp, ep_rank * tp, 1, tp_rank};
    case SHD_GROUP_EP:
        return (coll_group_t){ep, tp_rank, tp, ep_rank};
    default:
        return (coll_group_t){tp * ep, 0, 1, rank};
    }
}

/* What local_comm.c computes: the lowest rank's values, then += each next rank's. */
static inline void coll_reference_sum(uint64_t seed, coll_group_t gr, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        out[i] = coll_val(seed, gr.first, i);
    }
    for (int k = 1; k < gr.count; k++) {
        const int r = gr.first + k * gr.stride;
        for (int64_t i = 0; i < n; i++) {
            out[i] += coll_val(seed, r, i);
        }
    }
}

/* ---- pipes between the parent and the ranks ------------------------------------------ */

static inline int coll_write_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n > 0) {
        ssize_t k = write(fd, b, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return -1;
        }
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

static inline int coll_read_all(int fd, void *p, size_t n)
{
    char *b = p;
    while (n > 0) {
        ssize_t k = read(fd, b, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return -1;
        }
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* A rank's side of the address exchange: writes its worker address (length, bytes) to up,
 * then reads all size ranks' from down into addrs[q] (malloc'ed) and lens[q]. -1 when the
 * parent gave up (EOF) or out of memory; the caller exits. */
static inline int coll_exchange_addrs(int up, int down, const void *addr, size_t len, int size,
                                      void *addrs[], size_t lens[])
{
    coll_write_all(up, &len, sizeof(len));
    coll_write_all(up, addr, len);
    for (int q = 0; q < size; q++) {
        if (coll_read_all(down, &lens[q], sizeof(lens[q])) != 0) {
            return -1;
        }
        addrs[q] = malloc(lens[q] + 1);
        if (addrs[q] == NULL || coll_read_all(down, addrs[q], lens[q]) != 0) {
            return -1;
        }
    }
    return 0;
}

/* The parent's side: reads each rank's address from up[r][0] (waiting at most poll_ms for
 * each, -1: no limit) and writes all of them to every down[r][1], which it then closes
 * (after a failed relay, the waiting ranks read EOF and leave). False when a rank sent
 * nothing in time (or size > COLL_MAX_RANKS). */
static inline bool coll_relay_addrs(int size, int up[][2], int down[][2], int poll_ms)
{
    void *addrs[COLL_MAX_RANKS] = {0};
    size_t lens[COLL_MAX_RANKS] = {0};
    bool ok = size <= COLL_MAX_RANKS;
    for (int r = 0; r < size && ok; r++) {
        struct pollfd pfd = {.fd = up[r][0], .events = POLLIN};
        ok = poll(&pfd, 1, poll_ms) == 1 &&
             coll_read_all(up[r][0], &lens[r], sizeof(lens[r])) == 0 && lens[r] > 0 &&
             (addrs[r] = malloc(lens[r])) != NULL &&
             coll_read_all(up[r][0], addrs[r], lens[r]) == 0;
    }
    for (int r = 0; r < size && ok; r++) {
        for (int q = 0; q < size; q++) {
            coll_write_all(down[r][1], &lens[q], sizeof(lens[q]));
            coll_write_all(down[r][1], addrs[q], lens[q]);
        }
    }
    for (int r = 0; r < size; r++) {
        free(addrs[r]);
        close(down[r][1]);
    }
    return ok;
}

#endif
