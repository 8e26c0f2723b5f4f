/*
 * gguf_write.h - writing GGUF files (version 3 by default, or 2: the same layout).
 *
 * Usage: create a writer, add metadata and tensors in the order they should appear, then
 * gguf_writer_write(path). The file is written to a temporary file in the same directory
 * and renamed over `path` only when complete, so a failed write never leaves a partial
 * file behind. Tensor data are laid out in order, each at an offset that is a multiple of
 * the alignment (general.alignment if set, else 32), padded with zero bytes, as llama.cpp
 * and the gguf Python package do.
 *
 * Values are copied when added (strings and arrays included), except tensor data given by
 * pointer, which must stay valid until the write; a callback may produce data instead.
 * Adding a key that already exists replaces its value in place (keeps its position).
 */
#ifndef TDM_GGUF_WRITE_H
#define TDM_GGUF_WRITE_H

#include "common/status.h"
#include "model/gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gguf_writer gguf_writer_t;

/* Fills dst (nbytes, the tensor's size) with the data of tensor `name`. */
typedef tdm_status_t (*gguf_tensor_fill_fn)(void *user, const char *name, void *dst, size_t nbytes,
                                            tdm_error_t *err);

tdm_status_t gguf_writer_create(gguf_writer_t **out, tdm_error_t *err);
void gguf_writer_destroy(gguf_writer_t *w); /* NULL is fine */

/* 2 or 3 (default 3). */
tdm_status_t gguf_writer_set_version(gguf_writer_t *w, uint32_t version, tdm_error_t *err);

/* Scalars. Keys must be non-empty and contain no NUL (they are C strings). */
tdm_status_t gguf_writer_add_u8(gguf_writer_t *w, const char *key, uint8_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_i8(gguf_writer_t *w, const char *key, int8_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_u16(gguf_writer_t *w, const char *key, uint16_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_i16(gguf_writer_t *w, const char *key, int16_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_u32(gguf_writer_t *w, const char *key, uint32_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_i32(gguf_writer_t *w, const char *key, int32_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_f32(gguf_writer_t *w, const char *key, float v, tdm_error_t *err);
tdm_status_t gguf_writer_add_u64(gguf_writer_t *w, const char *key, uint64_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_i64(gguf_writer_t *w, const char *key, int64_t v, tdm_error_t *err);
tdm_status_t gguf_writer_add_f64(gguf_writer_t *w, const char *key, double v, tdm_error_t *err);
tdm_status_t gguf_writer_add_bool(gguf_writer_t *w, const char *key, bool v, tdm_error_t *err);
/* A NUL-terminated string, or `len` bytes (gguf_writer_add_strn; may contain any byte). */
tdm_status_t gguf_writer_add_str(gguf_writer_t *w, const char *key, const char *v,
                                 tdm_error_t *err);
tdm_status_t gguf_writer_add_strn(gguf_writer_t *w, const char *key, const char *v, uint64_t len,
                                  tdm_error_t *err);

/* An array of n elements of type elem (not ARRAY): for STRING, data is a gguf_str_t[n];
 * otherwise n packed little-endian values (BOOL: one byte each). */
tdm_status_t gguf_writer_add_arr(gguf_writer_t *w, const char *key, gguf_value_type_t elem,
                                 uint64_t n, const void *data, tdm_error_t *err);

/* Any value as gguf_value_t (e.g. from a reader's gguf_kv_at()), copied with its type. */
tdm_status_t gguf_writer_add_value(gguf_writer_t *w, const char *key, const gguf_value_t *v,
                                   tdm_error_t *err);

/* Removes a key if present (no error if absent). */
void gguf_writer_remove(gguf_writer_t *w, const char *key);

/* Tensors: name (< GGUF_MAX_NAME bytes, unique), type, 1..4 dims with ne[0] a multiple of the
 * type's block size. `data` must hold the tensor's bytes and stay valid until the write. */
tdm_status_t gguf_writer_add_tensor(gguf_writer_t *w, const char *name, tdm_type_t type,
                                    uint32_t n_dims, const int64_t *ne, const void *data,
                                    tdm_error_t *err);
/* Same, with the data produced by fill(user, ...) during the write, one tensor at a time. */
tdm_status_t gguf_writer_add_tensor_fn(gguf_writer_t *w, const char *name, tdm_type_t type,
                                       uint32_t n_dims, const int64_t *ne, gguf_tensor_fill_fn fill,
                                       void *user, tdm_error_t *err);

uint64_t gguf_writer_n_kv(const gguf_writer_t *w);
uint64_t gguf_writer_n_tensors(const gguf_writer_t *w);

/* Writes everything to `path` (through a temporary file renamed into place). */
tdm_status_t gguf_writer_write(gguf_writer_t *w, const char *path, tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
