/*
 * local_comm.h - shd_comm_t for ranks that are threads of one process (tests, `tandem
 * eval --tp/--ep`, and a single machine with several shards).
 *
 * A world of tp_size * ep_size ranks shares one table of published buffer pointers and
 * a barrier. A collective is: publish, barrier, every rank reads its group's buffers in
 * ascending rank order into its own scratch, barrier, copy back. So results are
 * bit-identical on every rank of a group. xp_local_world_abort() wakes every waiter
 * with TDM_ERR_CANCELED, so a rank that fails mid-step cannot leave the others blocked.
 */
#ifndef TDM_XP_LOCAL_COMM_H
#define TDM_XP_LOCAL_COMM_H

#include "shard/shd_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xp_local_world xp_local_world_t;

tdm_status_t xp_local_world_create(int tp_size, int ep_size, xp_local_world_t **out,
                                   tdm_error_t *err);
void xp_local_world_destroy(xp_local_world_t *w); /* NULL is fine */

/* The handle of world rank r (= ep_rank * tp_size + tp_rank); valid while w lives. */
shd_comm_t xp_local_comm(xp_local_world_t *w, int rank);

/* Makes every pending and future collective return TDM_ERR_CANCELED. */
void xp_local_world_abort(xp_local_world_t *w);

#ifdef __cplusplus
}
#endif

#endif
