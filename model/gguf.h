/*
 * gguf.h - reading GGUF model files (v2 and v3), single or split into
 * <prefix>-0000N-of-0000M.gguf, with tensor data memory-mapped read-only.
 *
 * Contract: every function that reads a file validates everything it touches and, on
 * failure, returns a tdm_status_t and fills the optional tdm_error_t with a message
 * naming the file, the key or tensor, and what is wrong ("model.gguf: tensor
 * 'blk.3.ffn_up.weight': data [offset 123, 4096 bytes] extends past end of file (2000
 * bytes)"). A malformed file never crashes the reader (fuzzed: tests/fuzz/fuzz_gguf.c).
 *
 * Memory: a gguf_ctx owns its mappings and every string/array it hands out; views
 * (gguf_str_t, arrays, tensor data pointers) stay valid until gguf_close().
 * Format: ../shared/reference/gguf-and-moe-architectures.md section 1.
 */
#ifndef TDM_GGUF_H
#define TDM_GGUF_H

#include "common/status.h"
#include "model/tensor_types.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GGUF_MAX_DIMS      4
#define GGUF_MAX_NAME      64 /* tensor name bytes including the terminator */
#define GGUF_DEFAULT_ALIGN 32

typedef enum gguf_value_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_value_type_t;

/* A string inside the file: not NUL-terminated, not guaranteed UTF-8. */
typedef struct gguf_str {
    const char *ptr;
    uint64_t len;
} gguf_str_t;

/* One metadata value. Scalars are widened into the union; arrays point at their
 * elements (strings as gguf_str_t[], numbers packed little-endian as on disk, in a
 * malloc-aligned copy, so casting to e.g. const int32_t * is fine; BOOL elements are one
 * byte each). An empty array may have data == NULL. */
typedef struct gguf_value {
    gguf_value_type_t type;
    union {
        uint64_t u64;   /* UINT8/16/32/64                 */
        int64_t i64;    /* INT8/16/32/64                  */
        double f64;     /* FLOAT32/64                     */
        bool b;         /* BOOL                           */
        gguf_str_t str; /* STRING                         */
        struct {
            gguf_value_type_t type; /* element type (never ARRAY) */
            uint64_t n;             /* element count              */
            const void *data;       /* gguf_str_t* for STRING     */
        } arr;
    } v;
} gguf_value_t;

typedef struct gguf_kv {
    const char *key; /* NUL-terminated copy */
    gguf_value_t value;
} gguf_kv_t;

typedef struct gguf_tensor {
    char name[GGUF_MAX_NAME];
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] contiguous; missing dims are 1  */
    tdm_type_t type;
    uint64_t offset; /* relative to its file's data section  */
    uint64_t nbytes;
    uint32_t file_idx; /* which split file holds it (0-based)  */
    const void *data;  /* mapped bytes, nbytes long            */
} gguf_tensor_t;

typedef struct gguf_ctx gguf_ctx_t;

/*
 * Opens a GGUF file. If path names split file 1 of N ("...-00001-of-0000N.gguf"),
 * the other N-1 files are opened too and their tensors merged (split.no/split.count/
 * split.tensors.count checked; metadata comes from the first file). Opening any other
 * split file than the first is an error that names the first.
 */
tdm_status_t gguf_open(const char *path, gguf_ctx_t **out, tdm_error_t *err);

/* Parses a GGUF image held in memory (not copied; must outlive the ctx). Split keys
 * are reported but no other file is opened. `name` is used in error messages. */
tdm_status_t gguf_open_memory(const void *data, size_t size, const char *name, gguf_ctx_t **out,
                              tdm_error_t *err);

void gguf_close(gguf_ctx_t *ctx); /* NULL is fine */

uint32_t gguf_version(const gguf_ctx_t *ctx);
uint32_t gguf_n_files(const gguf_ctx_t *ctx);
uint64_t gguf_file_size(const gguf_ctx_t *ctx, uint32_t file_idx);
const char *gguf_path(const gguf_ctx_t *ctx, uint32_t file_idx);
/* general.alignment of that file (32 when absent); 0 for a bad index. */
uint32_t gguf_alignment(const gguf_ctx_t *ctx, uint32_t file_idx);
/* Byte offset of that file's data section (tensor offsets are relative to it). */
uint64_t gguf_data_offset(const gguf_ctx_t *ctx, uint32_t file_idx);

/* Metadata. */
uint64_t gguf_n_kv(const gguf_ctx_t *ctx);
const gguf_kv_t *gguf_kv_at(const gguf_ctx_t *ctx, uint64_t i);
const gguf_value_t *gguf_find(const gguf_ctx_t *ctx, const char *key); /* NULL if absent */

/*
 * Typed getters: TDM_ERR_NOT_FOUND if the key is absent, TDM_ERR_FORMAT if it has an
 * incompatible type or its value does not fit (messages name the key). Integer getters
 * accept any integer type whose value fits; gguf_get_f32 accepts FLOAT32/FLOAT64.
 * gguf_get_*_or return `dflt` when the key is absent but still fail on a bad type.
 */
tdm_status_t gguf_get_u32(const gguf_ctx_t *ctx, const char *key, uint32_t *out, tdm_error_t *err);
tdm_status_t gguf_get_i64(const gguf_ctx_t *ctx, const char *key, int64_t *out, tdm_error_t *err);
tdm_status_t gguf_get_f32(const gguf_ctx_t *ctx, const char *key, float *out, tdm_error_t *err);
tdm_status_t gguf_get_bool(const gguf_ctx_t *ctx, const char *key, bool *out, tdm_error_t *err);
tdm_status_t gguf_get_str(const gguf_ctx_t *ctx, const char *key, gguf_str_t *out,
                          tdm_error_t *err);
tdm_status_t gguf_get_u32_or(const gguf_ctx_t *ctx, const char *key, uint32_t dflt, uint32_t *out,
                             tdm_error_t *err);
tdm_status_t gguf_get_f32_or(const gguf_ctx_t *ctx, const char *key, float dflt, float *out,
                             tdm_error_t *err);
tdm_status_t gguf_get_bool_or(const gguf_ctx_t *ctx, const char *key, bool dflt, bool *out,
                              tdm_error_t *err);
/* An array with element type `elem` (GGUF_TYPE_COUNT = any); *n and *data as in gguf_value. */
tdm_status_t gguf_get_arr(const gguf_ctx_t *ctx, const char *key, gguf_value_type_t elem,
                          uint64_t *n, const void **data, tdm_error_t *err);

/* Tensors (all files, in file order). */
uint64_t gguf_n_tensors(const gguf_ctx_t *ctx);
const gguf_tensor_t *gguf_tensor_at(const gguf_ctx_t *ctx, uint64_t i);
const gguf_tensor_t *gguf_find_tensor(const gguf_ctx_t *ctx, const char *name); /* NULL if absent */

/*
 * Tells the kernel that the mapped bytes [p, p + n) of a tensor will not be read again:
 * the whole pages inside the range leave this process's mapping and the page cache, so a
 * model copied to a GPU is not held twice on a unified-memory machine (DGX Spark). A
 * later read of those bytes still works (the page is read from the file again). No-op for
 * memory images and ranges outside the mappings.
 */
void gguf_release_pages(const gguf_ctx_t *ctx, const void *p, size_t n);

const char *gguf_value_type_name(gguf_value_type_t t);

/* Bytes of one scalar of type t on disk (0 for STRING, ARRAY and unknown types). */
uint32_t gguf_value_type_size(uint32_t t);

#ifdef __cplusplus
}
#endif

#endif
