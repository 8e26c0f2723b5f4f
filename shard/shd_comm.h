/*
 * shd_comm.h - the collectives a partitioned shard needs, as an ops table.
 *
 * A model split over W = tp_size * ep_size ranks (world rank = ep_rank * tp_size +
 * tp_rank) groups them two ways: the TP group (same ep_rank: the ranks that together
 * hold all attention heads and dense FFN columns) and the EP group (same tp_rank).
 * SHD_GROUP_WORLD is everyone.
 *
 * Contract, for every implementation (in-process threads: transport/local_comm.c;
 * between processes: transport/ucx_comm.c; NCCL: transport/nccl_comm.c, which does not
 * promise the fixed summation order):
 *   - every rank of the world calls the same collectives in the same order with the same
 *     sizes (a rank whose group is just itself still calls), so an implementation may
 *     synchronise the whole world on each call;
 *   - all_reduce_sum_f32 leaves in buf, on every rank of the caller's group, the sum over
 *     the group's ranks of their buf, added in ascending rank order so every rank holds
 *     bit-identical results (the replicated residual stream stays identical);
 *   - all_gather_f32 writes group_size * n floats to out: rank i's n floats at out + i*n
 *     (i = rank within the group, ascending);
 *   - on failure a call returns a non-OK status on every rank that can observe it (a
 *     transport may time out with TDM_ERR_TIMEOUT); the step is then abandoned.
 *
 * Why all-reduce and not dispatch/combine for expert parallelism: every rank already
 * holds the full (replicated) hidden state of every token after attention, so each rank
 * runs its own experts on the tokens routed to them and contributes zeros elsewhere;
 * the sum over ranks is exactly the MoE output. One all-reduce of n_tok x n_embd per MoE
 * layer replaces an all-to-all pair, which is simpler and, at the batch sizes of a
 * two-to-four node deployment, not more traffic than the two all-to-alls of top-k copies.
 */
#ifndef TDM_SHD_COMM_H
#define TDM_SHD_COMM_H

#include "common/status.h"

#include <stdbool.h>

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum shd_group {
    SHD_GROUP_TP = 0,
    SHD_GROUP_EP,
    SHD_GROUP_WORLD,
    SHD_GROUP_COUNT
} shd_group_t;

typedef struct shd_comm_ops {
    const char *name;
    /* false: buffers are host memory (on a GPU backend, host-visible pinned memory the
     * kernels wrote; the shard finishes the step's ops before each call). true: buffers
     * are the backend's device memory and a call is ordered on its stream (NCCL). */
    bool device_memory;
    tdm_status_t (*all_reduce_sum_f32)(void *impl, shd_group_t group, float *buf, int64_t n,
                                       tdm_error_t *err);
    tdm_status_t (*all_gather_f32)(void *impl, shd_group_t group, const float *in, int64_t n,
                                   float *out, tdm_error_t *err);
} shd_comm_ops_t;

/* One rank's handle: ops == NULL means a single unpartitioned rank (no calls made). */
typedef struct shd_comm {
    const shd_comm_ops_t *ops;
    void *impl;
} shd_comm_t;

#ifdef __cplusplus
}
#endif

#endif
