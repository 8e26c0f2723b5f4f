/* mem.c - aborting allocators for the control plane (see mem.h). */
#include "common/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t size)
{
    fprintf(stderr, "tandem: out of memory allocating %zu bytes\n", size);
    fflush(stderr);
    abort();
}

void *tdm_xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL) {
        oom(size);
    }
    return p;
}

void *tdm_xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p == NULL) {
        oom(count * size);
    }
    return p;
}

void *tdm_xrealloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (p == NULL) {
        oom(size);
    }
    return p;
}

char *tdm_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = tdm_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void *tdm_aligned_alloc(size_t size)
{
    void *p = NULL;
    size_t rounded = (size + 63) & ~(size_t)63;
    if (rounded < size || posix_memalign(&p, 64, rounded ? rounded : 64) != 0) {
        return NULL;
    }
    return p;
}
