/*
 * gguf_internal.h - what gguf.c and gguf_split.c share: the per-file parse result, the
 * context layout and a small string-keyed hash index. Not for use outside model/.
 */
#ifndef TDM_GGUF_INTERNAL_H
#define TDM_GGUF_INTERNAL_H

#include "common/check.h"
#include "model/gguf.h"

/* Open-addressing index from NUL-terminated names to positions (duplicate detection and
 * lookup in O(1), so a file with millions of entries cannot make the reader quadratic). */
typedef struct gguf_index {
    const char **names; /* slot -> name (NULL = empty) */
    uint64_t *pos;      /* slot -> position            */
    uint64_t mask;      /* capacity - 1 (capacity is a power of two) */
} gguf_index_t;

/* One parsed GGUF image. */
typedef struct gguf_file {
    char *path; /* name used in messages (a copy)              */
    const uint8_t *base;
    uint64_t size;
    void *map; /* mmap'ed region, or NULL for memory images     */
    size_t map_len;
    int fd;        /* kept open for posix_fadvise, when fd_valid      */
    bool fd_valid; /* false for memory images                         */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset; /* start of the data section               */
    uint64_t n_kv;
    gguf_kv_t *kv;
    gguf_index_t kv_index;
    uint64_t n_tensors;
    gguf_tensor_t *tensors;
    void **allocs; /* arrays copied out of the file (freed on close) */
    uint64_t n_allocs, cap_allocs;
} gguf_file_t;

struct gguf_ctx {
    uint32_t n_files;
    gguf_file_t *files; /* files[0] holds the metadata                */
    uint64_t n_tensors;
    gguf_tensor_t *tensors; /* merged, file order                         */
    gguf_index_t tensor_index;
};

/* Parses an image (base/size) into f, which the caller zeroed and whose path is set.
 * file_idx is stored in every tensor. On failure f holds partial state: free it with
 * gguf_file_release(). */
tdm_status_t gguf_file_parse(gguf_file_t *f, uint32_t file_idx, tdm_error_t *err);

/* Maps `path` read-only into f (zeroed by the caller) and parses it. */
tdm_status_t gguf_file_open(gguf_file_t *f, const char *path, uint32_t file_idx, tdm_error_t *err);

void gguf_file_release(gguf_file_t *f);

/* Value of a key in one file (NULL if absent). */
const gguf_value_t *gguf_file_find(const gguf_file_t *f, const char *key);

tdm_status_t gguf_index_init(gguf_index_t *ix, uint64_t n);
void gguf_index_free(gguf_index_t *ix);
/* Inserts name -> pos. Returns true when inserted, false when the name is already present
 * (then *prev holds the earlier position). The index must have room (sized by init). */
bool gguf_index_insert(gguf_index_t *ix, const char *name, uint64_t pos, uint64_t *prev);
bool gguf_index_lookup(const gguf_index_t *ix, const char *name, uint64_t *pos);

/* Formats at most ~80 bytes of s (len bytes) into buf with non-printable bytes shown as
 * '?', for error messages. Returns buf. */
const char *gguf_printable(char *buf, size_t bufsz, const char *s, uint64_t len);

/* Builds ctx->tensors / tensor_index from ctx->files; checks names are unique across files. */
tdm_status_t gguf_ctx_merge_tensors(gguf_ctx_t *ctx, tdm_error_t *err);

#endif
