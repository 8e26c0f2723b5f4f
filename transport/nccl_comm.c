/*
 * nccl_comm.c - shd_comm_t over NCCL (see nccl_comm.h): plain C over the CUDA runtime and
 * NCCL's C API.
 *
 * Why the host buffers are staged through a device buffer: NCCL's kernels read and write
 * the buffers they are given, so those must be device-accessible, and the shard's
 * activations are ordinary (pageable) malloc memory today. On a DGX Spark (GB10) there is
 * no GPUDirect RDMA either: NCCL logs "GPU Direct RDMA Disabled" and bounces every
 * network transfer through host memory by itself, so the staging copies are a memcpy
 * inside the one unified LPDDR5X pool, not a PCIe hop. Later the shard can allocate its
 * activation buffers pinned and mapped (cudaHostAlloc, or cudaHostRegister on what it
 * has) and hand NCCL their device pointers directly, which removes both copies.
 *
 * A collective: copy in (cudaMemcpyAsync on our stream), enqueue the NCCL op, poll the
 * stream until it is done while watching for an abort request and for NCCL's
 * asynchronous errors, then copy out. The poll comes before the copy out on purpose: a
 * device-to-pageable copy blocks the calling thread until it has run, and it would run
 * only after the NCCL kernel, which a dead peer can stall indefinitely.
 *
 * Abort: ncclCommAbort must not run while another thread is inside a call on the same
 * communicator, so xp_nccl_world_abort() aborts the communicators itself only when no
 * collective (or connect) is in flight, and otherwise sets a flag that the poll loop of
 * that call sees; that thread aborts them before it returns. A mutex orders the two.
 *
 * Nonblocking communicators: every NCCL call that may wait for other ranks (init, split,
 * enqueueing a collective, finalize) returns at once, possibly with ncclInProgress, and
 * the communicator's state (ncclCommGetAsyncError) says when it is done. The calls here
 * poll that state, and only then go on: a collective is on the stream only once its
 * enqueueing has finished. ncclCommSplit writes the child's handle only when the split
 * is complete, so a split is polled on the parent. Abort and destroy are blocking in
 * either mode (NCCL runs them as blocking group jobs).
 */
#include "transport/nccl_comm.h"

#include "common/check.h"
#include "common/clock.h"
#include "kernels/cuda/cuda_check.cuh"

#include <nccl.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "nccl_comm.c needs NCCL 2.14 or newer (nonblocking communicators, ncclCommFinalize)"
#endif

_Static_assert(sizeof(ncclUniqueId) == XP_NCCL_ID_BYTES, "ncclUniqueId is 128 bytes");

/* ncclCommSplit exists from NCCL 2.18. TDM_NCCL_NO_SPLIT forces the older path, so that it
 * can at least be compiled against a newer NCCL. */
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0) && !defined(TDM_NCCL_NO_SPLIT)
#define XP_NCCL_HAVE_SPLIT 1
#else
#define XP_NCCL_HAVE_SPLIT 0
#endif

#define XP_NCCL_MAX_RANKS 4096

/* How long destroy waits for a healthy world's finalize when the world has no timeout. */
#define XP_NCCL_FINALIZE_MS 10000

struct xp_nccl_world {
    int rank, tp, ep, size, device;
    int64_t max_floats;
    int timeout_ms; /* <= 0: none */
    ncclUniqueId uid;
    bool connected; /* connect was called (it runs once) */
    xp_nccl_stats_t stats;
    cudaStream_t stream;
    float *dbuf; /* size * max_floats floats (at least size * XP_ID_FLOATS) */
    ncclComm_t world;
    ncclComm_t split[2]; /* TP and EP communicators made for this world; NULL when none */
    /* per shd_group_t: the communicator (NULL: the group is this rank alone; else world
     * or one of split[]), this rank's place in it and its size */
    ncclComm_t comm[SHD_GROUP_COUNT];
    int group_rank[SHD_GROUP_COUNT], group_size[SHD_GROUP_COUNT];

    pthread_mutex_t mu;
    atomic_bool abort_requested;
    bool in_flight;     /* a collective is between enter() and leave() */
    bool comms_gone;    /* the communicators were aborted (or never made) */
    tdm_status_t dead;  /* TDM_OK, or what every later call returns */
    char dead_msg[160]; /* why */
};

static tdm_status_t nccl_fail(tdm_error_t *err, ncclResult_t r, const char *what)
{
    /* an unhandled CUDA error is the device's; everything else (system, internal, remote,
     * timeout, usage) is the link's or a peer's */
    tdm_status_t st = r == ncclUnhandledCudaError ? TDM_ERR_DEVICE : TDM_ERR_TRANSPORT;
    const char *last = "";
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
    last = ncclGetLastError(NULL);
    if (last == NULL) {
        last = "";
    }
#endif
    return tdm_error_set(err, st, "nccl: %s failed: %s%s%s%s", what, ncclGetErrorString(r),
                         last[0] != '\0' ? " (" : "", last, last[0] != '\0' ? ")" : "");
}

#define NCCL_CHECK_GOTO(call, err, st, label)           \
    do {                                                \
        ncclResult_t xp_nccl_r_ = (call);               \
        if (xp_nccl_r_ != ncclSuccess) {                \
            (st) = nccl_fail((err), xp_nccl_r_, #call); \
            goto label;                                 \
        }                                               \
    } while (0)

static void abort_splits(xp_nccl_world_t *w)
{
    for (int i = 0; i < 2; i++) {
        if (w->split[i] != NULL) {
            (void)ncclCommAbort(w->split[i]);
            w->split[i] = NULL;
        }
    }
}

/* Every communicator this world owns, once each (the group table only aliases them). */
static void abort_comms_locked(xp_nccl_world_t *w)
{
    if (w->comms_gone) {
        return;
    }
    abort_splits(w);
    if (w->world != NULL) {
        (void)ncclCommAbort(w->world);
        w->world = NULL;
    }
    /* a split still in progress writes its child's handle when the parent's abort has
     * ended it: abort that one too */
    abort_splits(w);
    for (int g = 0; g < SHD_GROUP_COUNT; g++) {
        w->comm[g] = NULL;
    }
    w->comms_gone = true;
}

static void mark_dead_locked(xp_nccl_world_t *w, tdm_status_t st, const char *msg)
{
    if (w->dead == TDM_OK) {
        w->dead = st;
        snprintf(w->dead_msg, sizeof(w->dead_msg), "%s", msg);
    }
}

/* Starts a collective: refuses on a dead or aborted world, else marks it in flight. */
static tdm_status_t enter(xp_nccl_world_t *w, tdm_error_t *err)
{
    pthread_mutex_lock(&w->mu);
    if (atomic_load(&w->abort_requested)) {
        mark_dead_locked(w, TDM_ERR_CANCELED, "the world was aborted");
        abort_comms_locked(w);
    }
    tdm_status_t dead = w->dead;
    if (dead == TDM_OK) {
        w->in_flight = true;
    }
    pthread_mutex_unlock(&w->mu);
    if (dead != TDM_OK) {
        return tdm_error_set(err, dead, "nccl comm: %s", w->dead_msg);
    }
    return TDM_OK;
}

/* Ends a collective with status st: a failure or a pending abort kills the world. */
static tdm_status_t leave(xp_nccl_world_t *w, tdm_status_t st, const tdm_error_t *err)
{
    pthread_mutex_lock(&w->mu);
    w->in_flight = false;
    if (st != TDM_OK) {
        mark_dead_locked(w, st,
                         st == TDM_ERR_CANCELED ? "the world was aborted"
                                                : "an earlier collective failed: ");
        if (st != TDM_ERR_CANCELED && err != NULL) {
            size_t len = strlen(w->dead_msg);
            snprintf(w->dead_msg + len, sizeof(w->dead_msg) - len, "%s", err->msg);
        }
    }
    if (st != TDM_OK || atomic_load(&w->abort_requested)) {
        abort_comms_locked(w);
    }
    pthread_mutex_unlock(&w->mu);
    return st;
}

static bool past(double deadline)
{
    return deadline > 0 && tdm_now_s() > deadline;
}

static double deadline_after(int timeout_ms)
{
    return timeout_ms > 0 ? tdm_now_s() + timeout_ms / 1000.0 : 0;
}

/* Between two polls: spin briefly (a small all-reduce takes ~30 us between two Sparks),
 * then yield, then sleep (connecting can take seconds). */
static void backoff(unsigned spin)
{
    if (spin >= 20000) {
        const struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, NULL);
    } else if (spin >= 64) {
        sched_yield();
    }
}

/* Waits until what the nonblocking communicator is doing (init, a split of it, enqueueing
 * a collective, finalize) has finished: its state leaves ncclInProgress. An abort request,
 * the deadline (0: none) or an NCCL error ends the wait. */
static tdm_status_t wait_comm(xp_nccl_world_t *w, ncclComm_t comm, double deadline,
                              const char *what, tdm_error_t *err)
{
    for (unsigned spin = 0;; spin++) {
        ncclResult_t state = ncclInProgress;
        ncclResult_t r = ncclCommGetAsyncError(comm, &state);
        if (r != ncclSuccess) {
            return nccl_fail(err, r, "ncclCommGetAsyncError");
        }
        if (state == ncclSuccess) {
            return TDM_OK;
        }
        if (state != ncclInProgress) {
            return nccl_fail(err, state, what);
        }
        if (atomic_load(&w->abort_requested)) {
            return tdm_error_set(err, TDM_ERR_CANCELED, "nccl comm: the world was aborted");
        }
        if (past(deadline)) {
            return tdm_error_set(err, TDM_ERR_TIMEOUT,
                                 "nccl comm: %s not done after %d ms (a rank missing or stuck)",
                                 what, w->timeout_ms);
        }
        backoff(spin);
    }
}

/* The result of a call on a nonblocking communicator: ncclInProgress means NCCL is still
 * at it (enqueueing a collective: it is on the stream only once that is done). */
static tdm_status_t nccl_done(xp_nccl_world_t *w, ncclComm_t comm, ncclResult_t r, double deadline,
                              const char *what, tdm_error_t *err)
{
    if (r == ncclSuccess) {
        return TDM_OK;
    }
    if (r != ncclInProgress) {
        return nccl_fail(err, r, what);
    }
    return wait_comm(w, comm, deadline, what, err);
}

/* Polls until the stream is idle; an abort request, the deadline (0: none) or an NCCL
 * asynchronous error (a peer that went away, once NCCL notices) ends the wait. */
static tdm_status_t wait_stream(xp_nccl_world_t *w, ncclComm_t comm, double deadline,
                                const char *what, tdm_error_t *err)
{
    for (unsigned spin = 0;; spin++) {
        cudaError_t ce = cudaStreamQuery(w->stream);
        if (ce == cudaSuccess) {
            return TDM_OK;
        }
        if (ce != cudaErrorNotReady) {
            (void)cudaGetLastError();
            return tdm_error_set(err, TDM_ERR_DEVICE, "cuda: collective stream: %s",
                                 cudaGetErrorString(ce));
        }
        if (atomic_load(&w->abort_requested)) {
            return tdm_error_set(err, TDM_ERR_CANCELED, "nccl comm: the world was aborted");
        }
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(comm, &async);
        if (r != ncclSuccess) {
            return nccl_fail(err, r, "ncclCommGetAsyncError");
        }
        if (async != ncclSuccess && async != ncclInProgress) {
            return nccl_fail(err, async, "collective (asynchronous error)");
        }
        if (past(deadline)) {
            return tdm_error_set(err, TDM_ERR_TIMEOUT,
                                 "nccl comm: %s not finished after %d ms (a peer gone or stuck)",
                                 what, w->timeout_ms);
        }
        if (spin >= 64) {
            sched_yield();
        }
    }
}

typedef enum { OP_ALL_REDUCE, OP_ALL_GATHER } op_kind_t;

static const char *const group_name[SHD_GROUP_COUNT] = {"TP", "EP", "world"};

/* in: n floats from this rank; out: n (all-reduce, out == in) or group size * n floats. */
static tdm_status_t collective(xp_nccl_world_t *w, op_kind_t kind, shd_group_t g, const float *in,
                               int64_t n, float *out, tdm_error_t *err)
{
    const char *name = kind == OP_ALL_REDUCE ? "all-reduce" : "all-gather";
    if ((int)g < 0 || (int)g >= SHD_GROUP_COUNT || n < 0 ||
        (n > 0 && (in == NULL || out == NULL))) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "nccl comm: %s: group %d, n %lld", name,
                             (int)g, (long long)n);
    }
    if (n > w->max_floats) {
        return tdm_error_set(err, TDM_ERR_OUT_OF_RANGE,
                             "nccl comm: %s of %lld floats, but the world was created for at "
                             "most %lld (max_floats)",
                             name, (long long)n, (long long)w->max_floats);
    }
    tdm_status_t st = enter(w, err);
    if (st != TDM_OK) {
        return st;
    }
    w->stats.n_calls++;
    ncclComm_t comm = w->comm[g];
    const size_t bytes = (size_t)n * sizeof(float);
    if (n == 0) {
        return leave(w, TDM_OK, err);
    }
    if (comm == NULL) { /* the group is this rank alone */
        if (kind == OP_ALL_GATHER) {
            memmove(out, in, bytes);
        }
        return leave(w, TDM_OK, err);
    }
    const double t0 = tdm_now_s(), deadline = deadline_after(w->timeout_ms);
    char what[48];
    snprintf(what, sizeof(what), "%s on the %s group", name, group_name[g]);
    const int grank = w->group_rank[g], gsize = w->group_size[g];
    /* all-gather in place: this rank's part sits at its slot of the result */
    float *dsend = kind == OP_ALL_GATHER ? w->dbuf + (int64_t)grank * n : w->dbuf;
    TDM_CUDA_CHECK_GOTO(cudaSetDevice(w->device), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaMemcpyAsync(dsend, in, bytes, cudaMemcpyHostToDevice, w->stream), err,
                        st, out);
    ncclResult_t r =
        kind == OP_ALL_REDUCE
            ? ncclAllReduce(dsend, w->dbuf, (size_t)n, ncclFloat32, ncclSum, comm, w->stream)
            : ncclAllGather(dsend, w->dbuf, (size_t)n, ncclFloat32, comm, w->stream);
    TDM_CHECK_GOTO(nccl_done(w, comm, r, deadline, what, err), st, out);
    TDM_CHECK_GOTO(wait_stream(w, comm, deadline, what, err), st, out);
    const size_t out_bytes = kind == OP_ALL_GATHER ? (size_t)gsize * bytes : bytes;
    TDM_CUDA_CHECK_GOTO(cudaMemcpyAsync(out, w->dbuf, out_bytes, cudaMemcpyDeviceToHost, w->stream),
                        err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaStreamSynchronize(w->stream), err, st, out);
    w->stats.n_exchanges++;
    w->stats.bytes_sent += bytes;
    w->stats.ns_in_collectives += (uint64_t)((tdm_now_s() - t0) * 1e9);
out:
    return leave(w, st, err);
}

static tdm_status_t nccl_all_reduce(void *impl, shd_group_t group, float *buf, int64_t n,
                                    tdm_error_t *err)
{
    return collective(impl, OP_ALL_REDUCE, group, buf, n, buf, err);
}

static tdm_status_t nccl_all_gather(void *impl, shd_group_t group, const float *in, int64_t n,
                                    float *out, tdm_error_t *err)
{
    return collective(impl, OP_ALL_GATHER, group, in, n, out, err);
}

static const shd_comm_ops_t nccl_ops = {
    .name = "nccl",
    .device_memory = false, /* host buffers, staged through dbuf (see the file comment) */
    .all_reduce_sum_f32 = nccl_all_reduce,
    .all_gather_f32 = nccl_all_gather,
};

tdm_status_t xp_nccl_unique_id(uint8_t out[XP_NCCL_ID_BYTES], tdm_error_t *err)
{
    ncclUniqueId id;
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) {
        return nccl_fail(err, r, "ncclGetUniqueId");
    }
    memcpy(out, id.internal, XP_NCCL_ID_BYTES);
    return TDM_OK;
}

/* Checks that NCCL placed this rank where the group table says (the all-gather's in-place
 * layout depends on it). */
static tdm_status_t check_comm(ncclComm_t c, int want_rank, int want_size, const char *what,
                               tdm_error_t *err)
{
    int r = -1, n = -1;
    tdm_status_t st = TDM_OK;
    NCCL_CHECK_GOTO(ncclCommUserRank(c, &r), err, st, out);
    NCCL_CHECK_GOTO(ncclCommCount(c, &n), err, st, out);
    if (r != want_rank || n != want_size) {
        st =
            tdm_error_set(err, TDM_ERR_INTERNAL,
                          "nccl comm: %s communicator has this rank at %d of %d, expected %d of %d",
                          what, r, n, want_rank, want_size);
    }
out:
    return st;
}

/* A nonblocking communicator's configuration (children of a split inherit the parent's). */
static ncclConfig_t nonblocking_config(void)
{
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    return cfg;
}

/* Creates *comm as `rank` of `n` with id and waits for it; the handle is stored before the
 * wait, so a failure leaves it for abort_comms_locked. */
static tdm_status_t init_comm(xp_nccl_world_t *w, ncclComm_t *comm, int n, ncclUniqueId id,
                              int rank, double deadline, const char *what, tdm_error_t *err)
{
    ncclConfig_t cfg = nonblocking_config();
    ncclResult_t r = ncclCommInitRankConfig(comm, n, id, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        return nccl_fail(err, r, what); /* NCCL left *comm NULL, or it is aborted below */
    }
    return *comm != NULL ? wait_comm(w, *comm, deadline, what, err) : TDM_OK;
}

#if !XP_NCCL_HAVE_SPLIT
#define XP_ID_FLOATS (2 * XP_NCCL_ID_BYTES / (int)sizeof(float)) /* two ids per rank */

/* Without ncclCommSplit: every rank makes a candidate id for its TP and its EP group, an
 * all-gather over the world spreads them, and each group initialises with the id of its
 * lowest rank. All ranks init TP first, then EP, so no rank waits on a group whose other
 * members are busy with the other one. */
static tdm_status_t init_groups_without_split(xp_nccl_world_t *w, int tp_rank, int ep_rank,
                                              double deadline, tdm_error_t *err)
{
    tdm_status_t st = TDM_OK;
    uint8_t *all = NULL;
    ncclUniqueId mine[2];
    NCCL_CHECK_GOTO(ncclGetUniqueId(&mine[0]), err, st, out);
    NCCL_CHECK_GOTO(ncclGetUniqueId(&mine[1]), err, st, out);
    const size_t per_rank = sizeof(mine);
    uint8_t *dall = (uint8_t *)w->dbuf;
    all = malloc(per_rank * (size_t)w->size);
    if (all == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "nccl comm: out of memory");
        goto out;
    }
    TDM_CUDA_CHECK_GOTO(cudaMemcpyAsync(dall + per_rank * (size_t)w->rank, mine, per_rank,
                                        cudaMemcpyHostToDevice, w->stream),
                        err, st, out);
    ncclResult_t r = ncclAllGather(dall + per_rank * (size_t)w->rank, dall, per_rank, ncclUint8,
                                   w->world, w->stream);
    TDM_CHECK_GOTO(nccl_done(w, w->world, r, deadline, "group id all-gather", err), st, out);
    TDM_CHECK_GOTO(wait_stream(w, w->world, deadline, "group id all-gather", err), st, out);
    TDM_CUDA_CHECK_GOTO(
        cudaMemcpyAsync(all, dall, per_rank * (size_t)w->size, cudaMemcpyDeviceToHost, w->stream),
        err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaStreamSynchronize(w->stream), err, st, out);
    ncclUniqueId id;
    /* lowest rank of the TP group: tp_rank 0 of this ep_rank, its first id */
    memcpy(&id, all + per_rank * (size_t)(ep_rank * w->tp), sizeof(id));
    TDM_CHECK_GOTO(init_comm(w, &w->split[0], w->tp, id, tp_rank, deadline, "TP communicator", err),
                   st, out);
    /* lowest rank of the EP group: ep_rank 0 (world rank tp_rank), its second id */
    memcpy(&id, all + per_rank * (size_t)tp_rank + sizeof(id), sizeof(id));
    TDM_CHECK_GOTO(init_comm(w, &w->split[1], w->ep, id, ep_rank, deadline, "EP communicator", err),
                   st, out);
out:
    free(all);
    return st;
}
#else
#define XP_ID_FLOATS 0

/* Splits the world into the group of `color` (this rank at `key`); polled on the parent,
 * since NCCL writes the child's handle only once the split is complete. */
static tdm_status_t split_comm(xp_nccl_world_t *w, int color, int key, ncclComm_t *child,
                               double deadline, const char *what, tdm_error_t *err)
{
    ncclResult_t r = ncclCommSplit(w->world, color, key, child, NULL); /* inherits nonblocking */
    TDM_CHECK(nccl_done(w, w->world, r, deadline, what, err));
    if (*child == NULL) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "nccl comm: %s: no communicator", what);
    }
    return wait_comm(w, *child, deadline, what, err);
}
#endif

tdm_status_t xp_nccl_world_new(const xp_nccl_world_params_t *p, xp_nccl_world_t **out,
                               tdm_error_t *err)
{
    if (p == NULL || out == NULL || p->tp_size < 1 || p->ep_size < 1 ||
        p->tp_size > XP_NCCL_MAX_RANKS || p->ep_size > XP_NCCL_MAX_RANKS / p->tp_size ||
        p->rank < 0 || p->rank >= p->tp_size * p->ep_size || p->id == NULL || p->device < 0 ||
        p->max_floats < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "nccl comm: rank %d of tp %d x ep %d on device %d, max_floats %lld",
                             p ? p->rank : -1, p ? p->tp_size : 0, p ? p->ep_size : 0,
                             p ? p->device : -1, p ? (long long)p->max_floats : 0LL);
    }
    const int size = p->tp_size * p->ep_size;
    int64_t buf_floats = p->max_floats > XP_ID_FLOATS ? p->max_floats : XP_ID_FLOATS;
    if (buf_floats > INT64_MAX / (int64_t)sizeof(float) / size) {
        return tdm_error_set(err, TDM_ERR_OUT_OF_RANGE,
                             "nccl comm: max_floats %lld x %d ranks overflows",
                             (long long)p->max_floats, size);
    }
    buf_floats *= size;

    xp_nccl_world_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "nccl comm: out of memory");
    }
    w->rank = p->rank;
    w->tp = p->tp_size;
    w->ep = p->ep_size;
    w->size = size;
    w->device = p->device;
    w->max_floats = p->max_floats;
    w->timeout_ms = p->timeout_ms > 0 ? p->timeout_ms : 0;
    memcpy(w->uid.internal, p->id, XP_NCCL_ID_BYTES);
    w->comms_gone = true; /* until the world communicator exists */
    pthread_mutex_init(&w->mu, NULL);
    atomic_init(&w->abort_requested, false);

    tdm_status_t st = TDM_OK;
    TDM_CUDA_CHECK_GOTO(cudaSetDevice(p->device), err, st, fail);
    TDM_CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&w->stream, cudaStreamNonBlocking), err, st,
                        fail);
    TDM_CUDA_CHECK_GOTO(cudaMalloc((void **)&w->dbuf, (size_t)buf_floats * sizeof(float)), err, st,
                        fail);
    *out = w;
    return TDM_OK;
fail:
    xp_nccl_world_destroy(w);
    return st;
}

tdm_status_t xp_nccl_world_connect(xp_nccl_world_t *w, tdm_error_t *err)
{
    if (w == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "nccl comm: connect: NULL world");
    }
    pthread_mutex_lock(&w->mu);
    const bool again = w->connected;
    w->connected = true;
    pthread_mutex_unlock(&w->mu);
    if (again) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "nccl comm: the world is connected once");
    }
    /* in flight from here: an abort only raises the flag, and the polls below see it */
    tdm_status_t st = enter(w, err);
    if (st != TDM_OK) {
        return st;
    }
    const double deadline = deadline_after(w->timeout_ms);
    const cudaError_t ce = cudaSetDevice(w->device);
    if (ce != cudaSuccess) {
        (void)cudaGetLastError();
        st = tdm_error_set(err, TDM_ERR_DEVICE, "cuda: cudaSetDevice(%d): %s", w->device,
                           cudaGetErrorString(ce));
    }
    if (st == TDM_OK) {
        /* world is NULL until NCCL made it; from then on leave() can abort it */
        st = init_comm(w, &w->world, w->size, w->uid, w->rank, deadline, "world communicator", err);
        if (w->world != NULL) {
            pthread_mutex_lock(&w->mu);
            w->comms_gone = false;
            pthread_mutex_unlock(&w->mu);
        }
    }

    /* Groups. A group of one makes no calls; a group that is the whole world (tp or ep is
     * 1) reuses the world communicator; otherwise it is split off, ordered by its rank
     * inside the group so the in-place all-gather slots match shd_comm's layout. */
    const int tp_rank = w->rank % w->tp, ep_rank = w->rank / w->tp;
    if (st == TDM_OK && w->tp > 1 && w->ep > 1) {
#if XP_NCCL_HAVE_SPLIT
        /* collective over the world: every rank splits TP first, then EP */
        st = split_comm(w, ep_rank, tp_rank, &w->split[0], deadline, "TP split", err);
        if (st == TDM_OK) {
            st = split_comm(w, tp_rank, ep_rank, &w->split[1], deadline, "EP split", err);
        }
#else
        st = init_groups_without_split(w, tp_rank, ep_rank, deadline, err);
#endif
    }
    if (st == TDM_OK) {
        w->comm[SHD_GROUP_WORLD] = w->world;
        w->group_rank[SHD_GROUP_WORLD] = w->rank;
        w->group_size[SHD_GROUP_WORLD] = w->size;
        w->comm[SHD_GROUP_TP] = w->tp == 1 ? NULL : w->ep == 1 ? w->world : w->split[0];
        w->group_rank[SHD_GROUP_TP] = tp_rank;
        w->group_size[SHD_GROUP_TP] = w->tp;
        w->comm[SHD_GROUP_EP] = w->ep == 1 ? NULL : w->tp == 1 ? w->world : w->split[1];
        w->group_rank[SHD_GROUP_EP] = ep_rank;
        w->group_size[SHD_GROUP_EP] = w->ep;
        for (int g = 0; g < SHD_GROUP_COUNT && st == TDM_OK; g++) {
            if (w->comm[g] != NULL) {
                st = check_comm(w->comm[g], w->group_rank[g], w->group_size[g], group_name[g], err);
            }
        }
    }
    st = leave(w, st, err);
    if (st != TDM_OK) {
        return st;
    }

    /* One 1-float all-reduce per group, in the same order on every rank: NCCL connects
     * lazily, so this moves connection setup (and any failure of it) out of the first
     * step, and checks that every rank of every group is there. */
    for (int g = 0; g < SHD_GROUP_COUNT; g++) {
        float one = 1.0f;
        TDM_CHECK(nccl_all_reduce(w, (shd_group_t)g, &one, 1, err));
        if (one != (float)w->group_size[g]) {
            st = tdm_error_set(err, TDM_ERR_TRANSPORT,
                               "nccl comm: %s group check summed to %g, expected %d", group_name[g],
                               (double)one, w->group_size[g]);
            pthread_mutex_lock(&w->mu);
            mark_dead_locked(w, st, "the group check after connecting failed");
            abort_comms_locked(w);
            pthread_mutex_unlock(&w->mu);
            return st;
        }
    }
    memset(&w->stats, 0, sizeof(w->stats)); /* the checks are not the caller's collectives */
    return TDM_OK;
}

tdm_status_t xp_nccl_world_create(int rank, int tp_size, int ep_size,
                                  const uint8_t id[XP_NCCL_ID_BYTES], int device,
                                  int64_t max_floats, xp_nccl_world_t **out, tdm_error_t *err)
{
    const xp_nccl_world_params_t p = {rank, tp_size, ep_size, id, device, max_floats, 0};
    xp_nccl_world_t *w = NULL;
    TDM_CHECK(xp_nccl_world_new(&p, &w, err));
    tdm_status_t st = xp_nccl_world_connect(w, err);
    if (st != TDM_OK) {
        xp_nccl_world_destroy(w); /* connect aborted the communicators it made */
        return st;
    }
    *out = w;
    return TDM_OK;
}

shd_comm_t xp_nccl_world_comm(xp_nccl_world_t *w)
{
    shd_comm_t c = {&nccl_ops, w};
    return c;
}

void xp_nccl_world_stats(const xp_nccl_world_t *w, xp_nccl_stats_t *out)
{
    *out = w->stats;
}

void xp_nccl_world_abort(xp_nccl_world_t *w)
{
    if (w == NULL) {
        return;
    }
    atomic_store(&w->abort_requested, true);
    pthread_mutex_lock(&w->mu);
    mark_dead_locked(w, TDM_ERR_CANCELED, "the world was aborted");
    if (!w->in_flight) {       /* else the poll loop of that call sees the flag and aborts */
        abort_comms_locked(w); /* NCCL switches to the communicator's device itself */
    }
    pthread_mutex_unlock(&w->mu);
}

/* Finalizes a healthy communicator (waits for the peers, bounded by deadline), aborting it
 * when that fails; returns the handle still to destroy, or NULL when it was aborted. */
static ncclComm_t finalize_comm(xp_nccl_world_t *w, ncclComm_t c, double deadline)
{
    if (c == NULL) {
        return NULL;
    }
    ncclResult_t r = ncclCommFinalize(c);
    if (nccl_done(w, c, r, deadline, "finalize", NULL) != TDM_OK) {
        (void)ncclCommAbort(c);
        return NULL;
    }
    return c;
}

void xp_nccl_world_destroy(xp_nccl_world_t *w)
{
    if (w == NULL) {
        return;
    }
    int prev_device = -1;
    (void)cudaGetDevice(&prev_device);
    (void)cudaSetDevice(w->device);
    if (!w->comms_gone) { /* healthy: finalize (waits for the peers), then free */
        const double deadline =
            deadline_after(w->timeout_ms > 0 ? w->timeout_ms : XP_NCCL_FINALIZE_MS);
        ncclComm_t all[3] = {w->split[0], w->split[1], w->world};
        for (int i = 0; i < 3; i++) {
            all[i] = finalize_comm(w, all[i], deadline);
        }
        for (int i = 0; i < 3; i++) {
            if (all[i] != NULL) {
                (void)ncclCommDestroy(all[i]);
            }
        }
    }
    if (w->stream != NULL) {
        (void)cudaStreamSynchronize(w->stream);
        (void)cudaStreamDestroy(w->stream);
    }
    if (w->dbuf != NULL) {
        (void)cudaFree(w->dbuf);
    }
    if (prev_device >= 0) {
        (void)cudaSetDevice(prev_device);
    }
    (void)cudaGetLastError();
    pthread_mutex_destroy(&w->mu);
    free(w);
}
