/*
 * exec_local.h - the single-process executor: steps run on a shard in this process.
 *
 * Single-node mode needs no network: the scheduler's xp_executor_t is backed directly by
 * shd_forward() on one shard that holds the whole model, its compute backend (CPU thread
 * pool or GPU) and its KV storage. The multi-node executors have the same ops table, so the
 * scheduler above cannot tell them apart.
 */
#ifndef XP_EXEC_LOCAL_H
#define XP_EXEC_LOCAL_H

#include "model/gguf.h"
#include "transport/xp_step.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct xp_local_params {
    int n_threads;       /* kernel threads; <= 0: one per CPU                        */
    int n_batch_max;     /* most tokens per step                                      */
    int n_logits_max;    /* most tokens with logits per step                          */
    int n_ctx;           /* most positions per sequence (<= 0: the model's training)  */
    int block_tokens;    /* tokens per KV block (<= 0: 16)                             */
    size_t kv_bytes;     /* KV storage budget in bytes (0: enough for 4 x n_ctx)       */
    const char *device;  /* "auto" (NULL), "cpu", "cuda", "cuda:N" (kern_backend.h)  */
    const char *kv_type; /* "f32", "f16", "q8_0"; NULL: f16 on a GPU, f32 on the CPU  */
    /* Gated DeltaNet models: stored recurrent states of cached prefixes (prefix caching for
     * them): 0 as many as n_logits_max (the running sequences), > 0 that many, < 0 none. */
    int n_state_store;
    /* Load the model's multi-token-prediction block to run it (speculative decoding's MTP
     * drafter): the executor then has mtp_step and returns hidden states on request. */
    bool mtp;
} xp_local_params_t;

typedef struct xp_local_exec xp_local_exec_t;

/*
 * Loads the model in g (which must outlive the executor) into a single shard with KV
 * storage sized from p->kv_bytes, and fills *ex for the scheduler. Fails with the
 * loader's message (missing tensor, unsupported type, ...) or TDM_ERR_NO_MEMORY when the
 * KV budget cannot be allocated.
 */
tdm_status_t xp_local_exec_create(const gguf_ctx_t *g, const xp_local_params_t *p,
                                  xp_local_exec_t **out, xp_executor_t *ex, tdm_error_t *err);
void xp_local_exec_destroy(xp_local_exec_t *x); /* NULL is fine */

/* The backend the executor runs on ("cpu (avx2, 8 threads)", "cuda:0 ..."). */
const char *xp_local_exec_device(const xp_local_exec_t *x);

#endif
