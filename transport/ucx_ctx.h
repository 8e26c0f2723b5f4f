/*
 * ucx_ctx.h - one UCX context and worker: the data-plane endpoint of a shard process.
 *
 * An xp_ucx_t is a UCP context with the active-message and RMA features and one worker in
 * UCS_THREAD_MODE_SINGLE: every call on it (and on the worlds built over it,
 * transport/ucx_comm.h) must come from one thread. Its worker address is an opaque blob
 * that the control plane ships to the peers, which connect to it (ucp_ep_create with
 * UCP_ERR_HANDLING_MODE_PEER, so a dead peer fails the endpoint instead of hanging it).
 *
 * Transport choice is UCX's: tls / net_devices restrict it like UCX_TLS / UCX_NET_DEVICES
 * for this context only (NULL keeps the UCX_* environment or UCX's default). Because the
 * peer error mode rules out the shared-memory transports unless they advertise error
 * handling, the context turns that on for posix/sysv (MM_ERROR_HANDLING=y) whenever the
 * transport list can contain them and the environment does not say otherwise.
 *
 * Create UCX after fork(): a worker does not survive into a child.
 */
#ifndef TDM_XP_UCX_CTX_H
#define TDM_XP_UCX_CTX_H

#include "common/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xp_ucx_params {
    const char *tls;         /* UCX_TLS for this context ("tcp", "sm", "posix,sysv,cma", ...);
                                NULL: the environment's UCX_TLS or UCX's default */
    const char *net_devices; /* UCX_NET_DEVICES ("lo", "mlx5_0:1,mlx5_1:1"); NULL: env/default */
} xp_ucx_params_t;

typedef struct xp_ucx xp_ucx_t;

/* p may be NULL (all defaults). Errors of UCX become TDM_ERR_TRANSPORT (a bad tls /
 * net_devices value TDM_ERR_INVALID_PARAM) with UCX's status string. */
tdm_status_t xp_ucx_create(const xp_ucx_params_t *p, xp_ucx_t **out, tdm_error_t *err);

/* Destroys the worker and context. Every world on u must have been destroyed. NULL ok. */
void xp_ucx_destroy(xp_ucx_t *u);

/* This worker's address blob (valid while u lives), to ship to peers over the control
 * plane. */
void xp_ucx_address(const xp_ucx_t *u, const void **addr, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
