/*
 * pool.h - kernels-internal access to a kern_ctx_t's scratch buffers and thread state
 * (the context itself and kern_parallel_for are public, in kernels/kern.h).
 */
#ifndef KERN_CPU_POOL_H
#define KERN_CPU_POOL_H

#include "kernels/kern.h"

#include <stddef.h>

/* The context's shared buffer (e.g. activations converted once per kern_matmul), grown
 * to at least `bytes` and 64-byte aligned; NULL when the allocation fails. Only the
 * thread that called into the kernel (not a task) may call this. */
void *kern_ctx_shared_scratch(kern_ctx_t *ctx, size_t bytes);

/* Scratch private to thread thread_idx of ctx (as passed to a task), grown to at least
 * `bytes`; NULL when the allocation fails. */
void *kern_ctx_thread_scratch(kern_ctx_t *ctx, int thread_idx, size_t bytes);

/* True when the calling thread is running a kern_parallel_for task of any context. */
int kern_in_task(void);

#endif
