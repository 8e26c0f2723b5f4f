/*
 * mem.h - allocation helpers.
 *
 * tdm_xmalloc/xcalloc/xrealloc/xstrdup are for small control-plane allocations: they
 * abort with a message on out-of-memory, as Redis's zmalloc does, because a server that
 * cannot allocate 100 bytes cannot do anything useful. Allocations that may legitimately
 * fail under load (KV blocks, large buffers sized from user input, model weights) use
 * plain malloc or tdm_aligned_alloc and handle NULL with TDM_ERR_NO_MEMORY.
 */
#ifndef TDM_MEM_H
#define TDM_MEM_H

#include <stddef.h>

void *tdm_xmalloc(size_t size);
void *tdm_xcalloc(size_t count, size_t size);
void *tdm_xrealloc(void *ptr, size_t size);
char *tdm_xstrdup(const char *s);

/* 64-byte aligned allocation (cache line / AVX-512); NULL on failure. Free with free(). */
void *tdm_aligned_alloc(size_t size);

/* a * b with overflow detection: returns 0 and stores the product, or -1 on overflow. */
static inline int tdm_mul_size(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

#endif
