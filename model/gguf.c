/*
 * gguf.c - the GGUF parser: header, metadata, tensor infos and data-section checks for one
 * image (mapped file or caller's buffer), plus the context accessors and typed getters.
 * Split discovery and merging live in gguf_split.c.
 *
 * Everything read from the image is bounds-checked before use; counts are checked against
 * the bytes left before anything sized by them is allocated, so a corrupt file costs at most
 * memory proportional to its own size.
 */
#include "model/gguf.h"
#include "model/gguf_internal.h"

#include <errno.h>
#include <float.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

#define GGUF_MAGIC      0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_HEADER_LEN 24u
#define GGUF_MAX_STRING (1ull << 30) /* sanity caps, as ggml's reader */
#define GGUF_MAX_ARRAY  (1ull << 30)
#define KV_MIN_BYTES    14u /* key len 8 + 1 byte of key + type 4 + 1 byte value   */
#define TI_MIN_BYTES    25u /* name len 8 + 1 + n_dims 4 + type 4 + offset 8       */

static const char *const value_type_names[GGUF_TYPE_COUNT] = {
    "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",   "FLOAT32",
    "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64",
};

const char *gguf_value_type_name(gguf_value_type_t t)
{
    if ((unsigned)t >= GGUF_TYPE_COUNT) {
        return "unknown";
    }
    return value_type_names[t];
}

uint32_t gguf_value_type_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL:
        return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
        return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
        return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

const char *gguf_printable(char *buf, size_t bufsz, const char *s, uint64_t len)
{
    size_t limit = bufsz > 4 ? bufsz - 4 : 0;
    if (limit > 80) {
        limit = 80;
    }
    size_t o = 0;
    uint64_t i = 0;
    for (; i < len && o < limit; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[o++] = (c >= 0x20 && c != 0x7f) ? (char)c : '?';
    }
    if (i < len && bufsz >= 4) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    if (bufsz > 0) {
        buf[o < bufsz ? o : bufsz - 1] = '\0';
    }
    return buf;
}

/* ---- hash index ------------------------------------------------------------------------ */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

tdm_status_t gguf_index_init(gguf_index_t *ix, uint64_t n)
{
    uint64_t cap = 16;
    while (cap < 2 * n) {
        cap *= 2;
    }
    ix->names = calloc(cap, sizeof(*ix->names));
    ix->pos = calloc(cap, sizeof(*ix->pos));
    ix->mask = cap - 1;
    if (ix->names == NULL || ix->pos == NULL) {
        gguf_index_free(ix);
        return TDM_ERR_NO_MEMORY;
    }
    return TDM_OK;
}

void gguf_index_free(gguf_index_t *ix)
{
    free(ix->names);
    free(ix->pos);
    ix->names = NULL;
    ix->pos = NULL;
    ix->mask = 0;
}

bool gguf_index_insert(gguf_index_t *ix, const char *name, uint64_t pos, uint64_t *prev)
{
    for (uint64_t s = name_hash(name) & ix->mask;; s = (s + 1) & ix->mask) {
        if (ix->names[s] == NULL) {
            ix->names[s] = name;
            ix->pos[s] = pos;
            return true;
        }
        if (strcmp(ix->names[s], name) == 0) {
            *prev = ix->pos[s];
            return false;
        }
    }
}

bool gguf_index_lookup(const gguf_index_t *ix, const char *name, uint64_t *pos)
{
    if (ix->names == NULL) {
        return false;
    }
    for (uint64_t s = name_hash(name) & ix->mask;; s = (s + 1) & ix->mask) {
        if (ix->names[s] == NULL) {
            return false;
        }
        if (strcmp(ix->names[s], name) == 0) {
            *pos = ix->pos[s];
            return true;
        }
    }
}

/* ---- cursor ---------------------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *p;
    uint64_t size;
    uint64_t pos;
    const char *path;
    tdm_error_t *err;
} rd_t;

/* Fails with "truncated" unless n more bytes are available; `what` describes the field. */
__attribute__((format(printf, 3, 4))) static tdm_status_t rd_need(rd_t *r, uint64_t n,
                                                                  const char *fmt, ...)
{
    if (n <= r->size - r->pos) {
        return TDM_OK;
    }
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return tdm_error_set(r->err, TDM_ERR_FORMAT,
                         "%s: truncated: %s needs %" PRIu64 " bytes at offset %" PRIu64
                         ", file has %" PRIu64,
                         r->path, what, n, r->pos, r->size);
}

static void rd_copy(rd_t *r, void *dst, uint64_t n)
{
    memcpy(dst, r->p + r->pos, (size_t)n);
    r->pos += n;
}

static uint32_t rd_u32(rd_t *r)
{
    uint32_t v;
    rd_copy(r, &v, 4);
    return v;
}

static uint64_t rd_u64(rd_t *r)
{
    uint64_t v;
    rd_copy(r, &v, 8);
    return v;
}

/* ---- per-file storage ------------------------------------------------------------------ */

static tdm_status_t file_track(gguf_file_t *f, void *p)
{
    if (f->n_allocs == f->cap_allocs) {
        uint64_t cap = f->cap_allocs ? 2 * f->cap_allocs : 8;
        void **a = realloc(f->allocs, cap * sizeof(*a));
        if (a == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        f->allocs = a;
        f->cap_allocs = cap;
    }
    f->allocs[f->n_allocs++] = p;
    return TDM_OK;
}

/* malloc that records the block in f for release; NULL on failure (error set). */
static void *file_alloc(gguf_file_t *f, size_t n, tdm_error_t *err)
{
    void *p = malloc(n > 0 ? n : 1);
    if (p == NULL || file_track(f, p) != TDM_OK) {
        free(p);
        tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory (%zu bytes)", f->path, n);
        return NULL;
    }
    return p;
}

void gguf_file_release(gguf_file_t *f)
{
    if (f == NULL) {
        return;
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        free((void *)f->kv[i].key);
    }
    free(f->kv);
    gguf_index_free(&f->kv_index);
    free(f->tensors);
    for (uint64_t i = 0; i < f->n_allocs; i++) {
        free(f->allocs[i]);
    }
    free(f->allocs);
    if (f->map != NULL) {
        munmap(f->map, f->map_len);
    }
    if (f->fd_valid) {
        close(f->fd);
    }
    free(f->path);
    memset(f, 0, sizeof(*f));
}

const gguf_value_t *gguf_file_find(const gguf_file_t *f, const char *key)
{
    uint64_t pos;
    if (key == NULL || !gguf_index_lookup(&f->kv_index, key, &pos)) {
        return NULL;
    }
    return &f->kv[pos].value;
}

/* ---- metadata -------------------------------------------------------------------------- */

/* Reads a string (u64 length + bytes) as a view into the image. */
static tdm_status_t read_str(rd_t *r, gguf_str_t *out, const char *what)
{
    TDM_CHECK(rd_need(r, 8, "%s length", what));
    uint64_t len = rd_u64(r);
    if (len > GGUF_MAX_STRING) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: %s at offset %" PRIu64 " claims %" PRIu64 " bytes (limit %llu)",
                             r->path, what, r->pos - 8, len, GGUF_MAX_STRING);
    }
    TDM_CHECK(rd_need(r, len, "%s (%" PRIu64 " bytes)", what, len));
    out->ptr = (const char *)(r->p + r->pos);
    out->len = len;
    r->pos += len;
    return TDM_OK;
}

static void read_scalar(rd_t *r, uint32_t type, gguf_value_t *v)
{
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } x;
    rd_copy(r, &x, gguf_value_type_size(type));
    switch (type) {
    case GGUF_TYPE_UINT8:
        v->v.u64 = x.u8;
        break;
    case GGUF_TYPE_INT8:
        v->v.i64 = x.i8;
        break;
    case GGUF_TYPE_UINT16:
        v->v.u64 = x.u16;
        break;
    case GGUF_TYPE_INT16:
        v->v.i64 = x.i16;
        break;
    case GGUF_TYPE_UINT32:
        v->v.u64 = x.u32;
        break;
    case GGUF_TYPE_INT32:
        v->v.i64 = x.i32;
        break;
    case GGUF_TYPE_FLOAT32:
        v->v.f64 = x.f32;
        break;
    case GGUF_TYPE_BOOL:
        v->v.b = x.u8 != 0;
        break;
    case GGUF_TYPE_UINT64:
        v->v.u64 = x.u64;
        break;
    case GGUF_TYPE_INT64:
        v->v.i64 = x.i64;
        break;
    case GGUF_TYPE_FLOAT64:
        v->v.f64 = x.f64;
        break;
    default:
        break;
    }
}

/* Reads a value of type `type` (already validated < GGUF_TYPE_COUNT) for key `key`. */
static tdm_status_t read_value(rd_t *r, gguf_file_t *f, uint32_t type, const char *key,
                               gguf_value_t *v)
{
    v->type = (gguf_value_type_t)type;
    if (type == GGUF_TYPE_STRING) {
        char what[160];
        snprintf(what, sizeof(what), "key '%s' string value", key);
        return read_str(r, &v->v.str, what);
    }
    if (type != GGUF_TYPE_ARRAY) {
        TDM_CHECK(rd_need(r, gguf_value_type_size(type), "key '%s' %s value", key,
                          gguf_value_type_name(type)));
        read_scalar(r, type, v);
        return TDM_OK;
    }

    TDM_CHECK(rd_need(r, 12, "key '%s' array header", key));
    int32_t et = (int32_t)rd_u32(r);
    uint64_t n = rd_u64(r);
    if (et == GGUF_TYPE_ARRAY) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: key '%s': nested arrays (array of ARRAY) are not supported",
                             r->path, key);
    }
    if (et < 0 || et >= GGUF_TYPE_COUNT) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: key '%s': unknown array element type id %" PRId32, r->path, key,
                             et);
    }
    if (n > GGUF_MAX_ARRAY) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: key '%s': array of %" PRIu64
                             " elements exceeds the limit of %llu",
                             r->path, key, n, GGUF_MAX_ARRAY);
    }
    v->v.arr.type = (gguf_value_type_t)et;
    v->v.arr.n = n;
    v->v.arr.data = NULL;
    if (et == GGUF_TYPE_STRING) {
        /* every string takes at least its 8-byte length: bound n before allocating */
        TDM_CHECK(rd_need(r, n * 8, "key '%s' array of %" PRIu64 " strings", key, n));
        gguf_str_t *strs = file_alloc(f, (size_t)n * sizeof(gguf_str_t), r->err);
        if (strs == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        for (uint64_t i = 0; i < n; i++) {
            char what[160];
            snprintf(what, sizeof(what), "key '%.100s' string [%" PRIu64 "]", key, i);
            TDM_CHECK(read_str(r, &strs[i], what));
        }
        v->v.arr.data = strs;
        return TDM_OK;
    }
    uint64_t esz = gguf_value_type_size((uint32_t)et);
    TDM_CHECK(rd_need(r, n * esz, "key '%s' array of %" PRIu64 " %s", key, n,
                      gguf_value_type_name((gguf_value_type_t)et)));
    /* copied so that callers may cast the data to the element type (the image has no
     * alignment guarantee for metadata) */
    void *data = file_alloc(f, (size_t)(n * esz), r->err);
    if (data == NULL) {
        return TDM_ERR_NO_MEMORY;
    }
    rd_copy(r, data, n * esz);
    v->v.arr.data = data;
    return TDM_OK;
}

static tdm_status_t read_kvs(rd_t *r, gguf_file_t *f, uint64_t n_kv)
{
    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        char what[64];
        snprintf(what, sizeof(what), "key #%" PRIu64 " name", i);
        gguf_str_t name;
        TDM_CHECK(read_str(r, &name, what));
        if (name.len == 0) {
            return tdm_error_set(r->err, TDM_ERR_FORMAT, "%s: key #%" PRIu64 " has an empty name",
                                 r->path, i);
        }
        if (memchr(name.ptr, '\0', (size_t)name.len) != NULL) {
            char pb[96];
            return tdm_error_set(r->err, TDM_ERR_FORMAT,
                                 "%s: key #%" PRIu64 " name '%s' contains a NUL byte", r->path, i,
                                 gguf_printable(pb, sizeof(pb), name.ptr, name.len));
        }
        if (f->n_kv == cap) {
            cap = cap ? 2 * cap : 16;
            gguf_kv_t *kv = realloc(f->kv, cap * sizeof(*kv));
            if (kv == NULL) {
                return tdm_error_set(r->err, TDM_ERR_NO_MEMORY, "%s: out of memory", r->path);
            }
            f->kv = kv;
        }
        char *key = malloc((size_t)name.len + 1);
        if (key == NULL) {
            return tdm_error_set(r->err, TDM_ERR_NO_MEMORY, "%s: out of memory", r->path);
        }
        memcpy(key, name.ptr, (size_t)name.len);
        key[name.len] = '\0';
        gguf_kv_t *kv = &f->kv[f->n_kv++];
        memset(kv, 0, sizeof(*kv));
        kv->key = key;

        char pkey[96];
        gguf_printable(pkey, sizeof(pkey), key, name.len);
        TDM_CHECK(rd_need(r, 4, "key '%s' value type", pkey));
        int32_t type = (int32_t)rd_u32(r);
        if (type < 0 || type >= GGUF_TYPE_COUNT) {
            return tdm_error_set(r->err, TDM_ERR_FORMAT,
                                 "%s: key '%s': unknown value type id %" PRId32, r->path, pkey,
                                 type);
        }
        TDM_CHECK(read_value(r, f, (uint32_t)type, pkey, &kv->value));
    }

    TDM_CHECK(gguf_index_init(&f->kv_index, f->n_kv) == TDM_OK
                  ? TDM_OK
                  : tdm_error_set(r->err, TDM_ERR_NO_MEMORY, "%s: out of memory", r->path));
    for (uint64_t i = 0; i < f->n_kv; i++) {
        uint64_t prev;
        if (!gguf_index_insert(&f->kv_index, f->kv[i].key, i, &prev)) {
            char pkey[96];
            return tdm_error_set(
                r->err, TDM_ERR_FORMAT,
                "%s: duplicate key '%s' (entries #%" PRIu64 " and #%" PRIu64 ")", r->path,
                gguf_printable(pkey, sizeof(pkey), f->kv[i].key, strlen(f->kv[i].key)), prev, i);
        }
    }
    return TDM_OK;
}

/* ---- tensor infos ---------------------------------------------------------------------- */

static tdm_status_t read_tensor_info(rd_t *r, uint64_t i, gguf_tensor_t *t)
{
    char what[64];
    snprintf(what, sizeof(what), "tensor #%" PRIu64 " name", i);
    gguf_str_t name;
    TDM_CHECK(read_str(r, &name, what));
    char pb[96];
    if (name.len >= GGUF_MAX_NAME) {
        return tdm_error_set(
            r->err, TDM_ERR_FORMAT,
            "%s: tensor #%" PRIu64 " name '%s' is %" PRIu64 " bytes long (limit %d)", r->path, i,
            gguf_printable(pb, sizeof(pb), name.ptr, name.len), name.len, GGUF_MAX_NAME - 1);
    }
    if (name.len == 0) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT, "%s: tensor #%" PRIu64 " has an empty name",
                             r->path, i);
    }
    if (memchr(name.ptr, '\0', (size_t)name.len) != NULL) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: tensor #%" PRIu64 " name '%s' contains a NUL byte", r->path, i,
                             gguf_printable(pb, sizeof(pb), name.ptr, name.len));
    }
    memcpy(t->name, name.ptr, (size_t)name.len);
    t->name[name.len] = '\0';
    const char *tn = gguf_printable(pb, sizeof(pb), name.ptr, name.len);

    TDM_CHECK(rd_need(r, 4, "tensor '%s' n_dims", tn));
    uint32_t n_dims = rd_u32(r);
    if (n_dims > GGUF_MAX_DIMS) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: tensor '%s': n_dims = %" PRIu32 " exceeds the maximum of %d",
                             r->path, tn, n_dims, GGUF_MAX_DIMS);
    }
    t->n_dims = n_dims;
    TDM_CHECK(rd_need(r, 8ull * n_dims, "tensor '%s' shape", tn));
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
    }
    for (uint32_t d = 0; d < n_dims; d++) {
        t->ne[d] = (int64_t)rd_u64(r);
        if (t->ne[d] < 0) {
            return tdm_error_set(r->err, TDM_ERR_FORMAT,
                                 "%s: tensor '%s': ne[%" PRIu32 "] = %" PRId64 " is negative",
                                 r->path, tn, d, t->ne[d]);
        }
    }
    TDM_CHECK(rd_need(r, 12, "tensor '%s' type and offset", tn));
    int32_t type = (int32_t)rd_u32(r);
    t->offset = rd_u64(r);
    if (!tdm_type_known((uint32_t)type)) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT, "%s: tensor '%s': %s type id %" PRId32,
                             r->path, tn,
                             (type >= 0 && type < TDM_TYPE_COUNT) ? "retired" : "unknown", type);
    }
    t->type = (tdm_type_t)type;
    const tdm_type_traits_t *tr = tdm_type_traits((uint32_t)type);
    if (t->ne[0] % tr->blck != 0) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: tensor '%s': ne[0] = %" PRId64
                             " is not a multiple of the %s block size %" PRIu32,
                             r->path, tn, t->ne[0], tr->name, tr->blck);
    }
    int64_t n_el = 1;
    uint64_t nbytes = tr->size;
    bool overflow = false;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        overflow |= __builtin_mul_overflow(n_el, t->ne[d], &n_el);
        uint64_t f = d == 0 ? (uint64_t)(t->ne[0] / tr->blck) : (uint64_t)t->ne[d];
        overflow |= __builtin_mul_overflow(nbytes, f, &nbytes);
    }
    if (overflow || nbytes > (uint64_t)INT64_MAX) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: tensor '%s': element count or byte size overflows (ne = [%" PRId64
                             ", %" PRId64 ", %" PRId64 ", %" PRId64 "])",
                             r->path, tn, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    }
    t->nbytes = nbytes;
    return TDM_OK;
}

/* ---- whole image ----------------------------------------------------------------------- */

static tdm_status_t read_alignment(rd_t *r, gguf_file_t *f)
{
    f->alignment = GGUF_DEFAULT_ALIGN;
    const gguf_value_t *v = gguf_file_find(f, "general.alignment");
    if (v == NULL) {
        return TDM_OK;
    }
    if (v->type != GGUF_TYPE_UINT32) {
        return tdm_error_set(r->err, TDM_ERR_FORMAT,
                             "%s: key 'general.alignment' has type %s, expected UINT32", r->path,
                             gguf_value_type_name(v->type));
    }
    uint64_t a = v->v.u64;
    if (a == 0 || (a & (a - 1)) != 0) {
        return tdm_error_set(
            r->err, TDM_ERR_FORMAT,
            "%s: key 'general.alignment' = %" PRIu64 " is not a non-zero power of two", r->path, a);
    }
    f->alignment = (uint32_t)a;
    return TDM_OK;
}

tdm_status_t gguf_file_parse(gguf_file_t *f, uint32_t file_idx, tdm_error_t *err)
{
    rd_t r = {.p = f->base, .size = f->size, .pos = 0, .path = f->path, .err = err};

    if (f->size >= 4) {
        uint32_t magic;
        memcpy(&magic, f->base, 4);
        if (magic != GGUF_MAGIC) {
            char pb[16];
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: not a GGUF file: bad magic '%s' (expected 'GGUF')", f->path,
                                 gguf_printable(pb, sizeof(pb), (const char *)f->base, 4));
        }
    }
    if (f->size >= 8) {
        uint32_t version;
        memcpy(&version, f->base + 4, 4);
        if (version != 0 && (version & 0xFFFFu) == 0) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "%s: version field 0x%08" PRIx32
                                 " looks byte-swapped: big-endian GGUF files are not supported",
                                 f->path, version);
        }
        if (version == 1) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "%s: GGUF version 1 is not supported (only versions 2 and 3); "
                                 "re-convert the model with a current converter",
                                 f->path);
        }
        if (version != 2 && version != 3) {
            return tdm_error_set(err, version == 0 ? TDM_ERR_FORMAT : TDM_ERR_UNSUPPORTED,
                                 "%s: unsupported GGUF version %" PRIu32 " (only versions 2 and 3)",
                                 f->path, version);
        }
        f->version = version;
    }
    if (f->size < GGUF_HEADER_LEN) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: truncated: header needs %u bytes, file has %" PRIu64, f->path,
                             GGUF_HEADER_LEN, f->size);
    }
    r.pos = 8;
    int64_t n_tensors = (int64_t)rd_u64(&r);
    int64_t n_kv = (int64_t)rd_u64(&r);
    uint64_t rest = f->size - GGUF_HEADER_LEN;
    if (n_kv < 0 || (uint64_t)n_kv > rest / KV_MIN_BYTES) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: header n_kv = %" PRId64 " is impossible for a file of %" PRIu64
                             " bytes (truncated or corrupt)",
                             f->path, n_kv, f->size);
    }
    if (n_tensors < 0 || (uint64_t)n_tensors > rest / TI_MIN_BYTES) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: header n_tensors = %" PRId64
                             " is impossible for a file of %" PRIu64
                             " bytes (truncated or corrupt)",
                             f->path, n_tensors, f->size);
    }

    TDM_CHECK(read_kvs(&r, f, (uint64_t)n_kv));
    TDM_CHECK(read_alignment(&r, f));

    /* n_tensors is bounded by the file size (TI_MIN_BYTES each), so this allocation is too */
    if (n_tensors > 0) {
        f->tensors = calloc((size_t)n_tensors, sizeof(gguf_tensor_t));
        if (f->tensors == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                                 "%s: out of memory for %" PRId64 " tensors", f->path, n_tensors);
        }
    }
    for (uint64_t i = 0; i < (uint64_t)n_tensors; i++) {
        TDM_CHECK(read_tensor_info(&r, i, &f->tensors[i]));
        f->tensors[i].file_idx = file_idx;
        f->n_tensors = i + 1;
    }

    uint64_t data_offset = (r.pos + f->alignment - 1) / f->alignment * f->alignment;
    if (n_tensors > 0 && data_offset > f->size) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: truncated: data section starts at offset %" PRIu64
                             " (alignment %" PRIu32 "), file has %" PRIu64,
                             f->path, data_offset, f->alignment, f->size);
    }
    f->data_offset = data_offset < f->size ? data_offset : f->size;
    uint64_t data_size = f->size - f->data_offset;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor_t *t = &f->tensors[i];
        if (t->offset % f->alignment != 0) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: tensor '%s': data offset %" PRIu64
                                 " is not a multiple of the alignment %" PRIu32,
                                 f->path, t->name, t->offset, f->alignment);
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: tensor '%s': data [offset %" PRIu64 ", %" PRIu64
                                 " bytes] extends past end of file (data section is %" PRIu64
                                 " bytes from offset %" PRIu64 ", file is %" PRIu64 " bytes)",
                                 f->path, t->name, t->offset, t->nbytes, data_size, f->data_offset,
                                 f->size);
        }
        t->data = f->base + f->data_offset + t->offset;
    }
    return TDM_OK;
}

tdm_status_t gguf_file_open(gguf_file_t *f, const char *path, uint32_t file_idx, tdm_error_t *err)
{
    f->path = strdup(path);
    if (f->path == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return tdm_error_set(err, e == ENOENT ? TDM_ERR_NOT_FOUND : TDM_ERR_IO,
                             "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return tdm_error_set(err, TDM_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: not a regular file", path);
    }
    f->size = (uint64_t)st.st_size;
    static const uint8_t empty[1] = {0};
    f->base = empty;
    if (f->size > 0) {
        void *m = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return tdm_error_set(err, e == ENOMEM ? TDM_ERR_NO_MEMORY : TDM_ERR_IO,
                                 "%s: cannot mmap %" PRIu64 " bytes: %s", path, f->size,
                                 strerror(e));
        }
        f->map = m;
        f->map_len = (size_t)f->size;
        f->base = m;
    }
    f->fd = fd;
    f->fd_valid = true;
    return gguf_file_parse(f, file_idx, err);
}

/* ---- context --------------------------------------------------------------------------- */

tdm_status_t gguf_ctx_merge_tensors(gguf_ctx_t *ctx, tdm_error_t *err)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < ctx->n_files; i++) {
        n += ctx->files[i].n_tensors;
    }
    if (n > 0) {
        ctx->tensors = malloc((size_t)n * sizeof(gguf_tensor_t));
        if (ctx->tensors == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", ctx->files[0].path);
        }
    }
    if (gguf_index_init(&ctx->tensor_index, n) != TDM_OK) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", ctx->files[0].path);
    }
    uint64_t k = 0;
    for (uint32_t i = 0; i < ctx->n_files; i++) {
        if (ctx->files[i].n_tensors > 0) {
            memcpy(ctx->tensors + k, ctx->files[i].tensors,
                   (size_t)ctx->files[i].n_tensors * sizeof(gguf_tensor_t));
        }
        k += ctx->files[i].n_tensors;
    }
    ctx->n_tensors = n;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t prev;
        if (!gguf_index_insert(&ctx->tensor_index, ctx->tensors[i].name, i, &prev)) {
            const gguf_tensor_t *a = &ctx->tensors[prev], *b = &ctx->tensors[i];
            if (a->file_idx == b->file_idx) {
                return tdm_error_set(err, TDM_ERR_FORMAT,
                                     "%s: duplicate tensor name '%s' (tensors #%" PRIu64
                                     " and #%" PRIu64 ")",
                                     ctx->files[a->file_idx].path, b->name, prev, i);
            }
            return tdm_error_set(err, TDM_ERR_FORMAT, "%s: tensor '%s' is also in %s",
                                 ctx->files[b->file_idx].path, b->name,
                                 ctx->files[a->file_idx].path);
        }
    }
    return TDM_OK;
}

void gguf_close(gguf_ctx_t *ctx)
{
    if (ctx == NULL) {
        return;
    }
    for (uint32_t i = 0; i < ctx->n_files; i++) {
        gguf_file_release(&ctx->files[i]);
    }
    free(ctx->files);
    free(ctx->tensors);
    gguf_index_free(&ctx->tensor_index);
    free(ctx);
}

tdm_status_t gguf_open_memory(const void *data, size_t size, const char *name, gguf_ctx_t **out,
                              tdm_error_t *err)
{
    if (name == NULL) {
        name = "<memory>";
    }
    if (data == NULL && size > 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: NULL buffer of %zu bytes", name,
                             size);
    }
    static const uint8_t empty[1] = {0};
    gguf_ctx_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", name);
    }
    ctx->files = calloc(1, sizeof(gguf_file_t));
    tdm_status_t st = TDM_OK;
    if (ctx->files == NULL || (ctx->files[0].path = strdup(name)) == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", name);
        goto fail;
    }
    ctx->n_files = 1;
    ctx->files[0].base = data != NULL ? data : empty;
    ctx->files[0].size = size;
    TDM_CHECK_GOTO(gguf_file_parse(&ctx->files[0], 0, err), st, fail);
    TDM_CHECK_GOTO(gguf_ctx_merge_tensors(ctx, err), st, fail);
    *out = ctx;
    return TDM_OK;
fail:
    gguf_close(ctx);
    return st;
}

uint32_t gguf_version(const gguf_ctx_t *ctx)
{
    return ctx->files[0].version;
}

uint32_t gguf_n_files(const gguf_ctx_t *ctx)
{
    return ctx->n_files;
}

uint64_t gguf_file_size(const gguf_ctx_t *ctx, uint32_t file_idx)
{
    return file_idx < ctx->n_files ? ctx->files[file_idx].size : 0;
}

const char *gguf_path(const gguf_ctx_t *ctx, uint32_t file_idx)
{
    return file_idx < ctx->n_files ? ctx->files[file_idx].path : NULL;
}

uint32_t gguf_alignment(const gguf_ctx_t *ctx, uint32_t file_idx)
{
    return file_idx < ctx->n_files ? ctx->files[file_idx].alignment : 0;
}

uint64_t gguf_data_offset(const gguf_ctx_t *ctx, uint32_t file_idx)
{
    return file_idx < ctx->n_files ? ctx->files[file_idx].data_offset : 0;
}

uint64_t gguf_n_kv(const gguf_ctx_t *ctx)
{
    return ctx->files[0].n_kv;
}

const gguf_kv_t *gguf_kv_at(const gguf_ctx_t *ctx, uint64_t i)
{
    return i < ctx->files[0].n_kv ? &ctx->files[0].kv[i] : NULL;
}

const gguf_value_t *gguf_find(const gguf_ctx_t *ctx, const char *key)
{
    return gguf_file_find(&ctx->files[0], key);
}

uint64_t gguf_n_tensors(const gguf_ctx_t *ctx)
{
    return ctx->n_tensors;
}

const gguf_tensor_t *gguf_tensor_at(const gguf_ctx_t *ctx, uint64_t i)
{
    return i < ctx->n_tensors ? &ctx->tensors[i] : NULL;
}

const gguf_tensor_t *gguf_find_tensor(const gguf_ctx_t *ctx, const char *name)
{
    uint64_t pos;
    if (name == NULL || !gguf_index_lookup(&ctx->tensor_index, name, &pos)) {
        return NULL;
    }
    return &ctx->tensors[pos];
}

/* ---- typed getters --------------------------------------------------------------------- */

static bool is_unsigned(gguf_value_type_t t)
{
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 ||
           t == GGUF_TYPE_UINT64;
}

static bool is_signed(gguf_value_type_t t)
{
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
           t == GGUF_TYPE_INT64;
}

static tdm_status_t lookup(const gguf_ctx_t *ctx, const char *key, const gguf_value_t **v,
                           tdm_error_t *err)
{
    *v = gguf_find(ctx, key);
    if (*v == NULL) {
        return tdm_error_set(err, TDM_ERR_NOT_FOUND, "%s: key '%s' not found", ctx->files[0].path,
                             key);
    }
    return TDM_OK;
}

static tdm_status_t bad_type(const gguf_ctx_t *ctx, const char *key, const gguf_value_t *v,
                             const char *expected, tdm_error_t *err)
{
    return tdm_error_set(err, TDM_ERR_FORMAT, "%s: key '%s' has type %s, expected %s",
                         ctx->files[0].path, key, gguf_value_type_name(v->type), expected);
}

tdm_status_t gguf_get_i64(const gguf_ctx_t *ctx, const char *key, int64_t *out, tdm_error_t *err)
{
    const gguf_value_t *v;
    TDM_CHECK(lookup(ctx, key, &v, err));
    if (is_signed(v->type)) {
        *out = v->v.i64;
        return TDM_OK;
    }
    if (is_unsigned(v->type)) {
        if (v->v.u64 > (uint64_t)INT64_MAX) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: key '%s' = %" PRIu64
                                 " does not fit in a signed 64-bit integer",
                                 ctx->files[0].path, key, v->v.u64);
        }
        *out = (int64_t)v->v.u64;
        return TDM_OK;
    }
    return bad_type(ctx, key, v, "an integer", err);
}

tdm_status_t gguf_get_u32(const gguf_ctx_t *ctx, const char *key, uint32_t *out, tdm_error_t *err)
{
    const gguf_value_t *v;
    TDM_CHECK(lookup(ctx, key, &v, err));
    if (is_unsigned(v->type)) {
        if (v->v.u64 > UINT32_MAX) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: key '%s' = %" PRIu64
                                 " does not fit in an unsigned 32-bit integer",
                                 ctx->files[0].path, key, v->v.u64);
        }
        *out = (uint32_t)v->v.u64;
        return TDM_OK;
    }
    if (is_signed(v->type)) {
        if (v->v.i64 < 0 || v->v.i64 > (int64_t)UINT32_MAX) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: key '%s' = %" PRId64
                                 " does not fit in an unsigned 32-bit integer",
                                 ctx->files[0].path, key, v->v.i64);
        }
        *out = (uint32_t)v->v.i64;
        return TDM_OK;
    }
    return bad_type(ctx, key, v, "an integer", err);
}

tdm_status_t gguf_get_f32(const gguf_ctx_t *ctx, const char *key, float *out, tdm_error_t *err)
{
    const gguf_value_t *v;
    TDM_CHECK(lookup(ctx, key, &v, err));
    if (v->type == GGUF_TYPE_FLOAT32) {
        *out = (float)v->v.f64;
        return TDM_OK;
    }
    if (v->type == GGUF_TYPE_FLOAT64) {
        double d = v->v.f64;
        bool finite = d == d && d - d == 0.0;
        if (finite && (d > FLT_MAX || d < -FLT_MAX)) {
            return tdm_error_set(err, TDM_ERR_FORMAT, "%s: key '%s' = %g does not fit in a float",
                                 ctx->files[0].path, key, d);
        }
        *out = (float)d;
        return TDM_OK;
    }
    return bad_type(ctx, key, v, "FLOAT32 or FLOAT64", err);
}

tdm_status_t gguf_get_bool(const gguf_ctx_t *ctx, const char *key, bool *out, tdm_error_t *err)
{
    const gguf_value_t *v;
    TDM_CHECK(lookup(ctx, key, &v, err));
    if (v->type != GGUF_TYPE_BOOL) {
        return bad_type(ctx, key, v, "BOOL", err);
    }
    *out = v->v.b;
    return TDM_OK;
}

tdm_status_t gguf_get_str(const gguf_ctx_t *ctx, const char *key, gguf_str_t *out, tdm_error_t *err)
{
    const gguf_value_t *v;
    TDM_CHECK(lookup(ctx, key, &v, err));
    if (v->type != GGUF_TYPE_STRING) {
        return bad_type(ctx, key, v, "STRING", err);
    }
    *out = v->v.str;
    return TDM_OK;
}

tdm_status_t gguf_get_u32_or(const gguf_ctx_t *ctx, const char *key, uint32_t dflt, uint32_t *out,
                             tdm_error_t *err)
{
    if (gguf_find(ctx, key) == NULL) {
        *out = dflt;
        return TDM_OK;
    }
    return gguf_get_u32(ctx, key, out, err);
}

tdm_status_t gguf_get_f32_or(const gguf_ctx_t *ctx, const char *key, float dflt, float *out,
                             tdm_error_t *err)
{
    if (gguf_find(ctx, key) == NULL) {
        *out = dflt;
        return TDM_OK;
    }
    return gguf_get_f32(ctx, key, out, err);
}

tdm_status_t gguf_get_bool_or(const gguf_ctx_t *ctx, const char *key, bool dflt, bool *out,
                              tdm_error_t *err)
{
    if (gguf_find(ctx, key) == NULL) {
        *out = dflt;
        return TDM_OK;
    }
    return gguf_get_bool(ctx, key, out, err);
}

tdm_status_t gguf_get_arr(const gguf_ctx_t *ctx, const char *key, gguf_value_type_t elem,
                          uint64_t *n, const void **data, tdm_error_t *err)
{
    const gguf_value_t *v;
    TDM_CHECK(lookup(ctx, key, &v, err));
    if (v->type != GGUF_TYPE_ARRAY) {
        return bad_type(ctx, key, v, "ARRAY", err);
    }
    if (elem != GGUF_TYPE_COUNT && v->v.arr.type != elem) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: key '%s' is an array of %s, expected an array of %s",
                             ctx->files[0].path, key, gguf_value_type_name(v->v.arr.type),
                             gguf_value_type_name(elem));
    }
    *n = v->v.arr.n;
    *data = v->v.arr.data;
    return TDM_OK;
}

void gguf_release_pages(const gguf_ctx_t *ctx, const void *p, size_t n)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (uint32_t i = 0; i < ctx->n_files; i++) {
        const gguf_file_t *f = &ctx->files[i];
        const uintptr_t base = (uintptr_t)f->map, a = (uintptr_t)p;
        if (f->map == NULL || a < base || a + n > base + f->map_len) {
            continue;
        }
        /* only whole pages inside [p, p + n): a page shared with bytes still to be read
         * stays */
        const uintptr_t lo = (a + page - 1) & ~(page - 1), hi = (a + n) & ~(page - 1);
        if (hi > lo) {
            (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
            if (f->fd_valid) {
                (void)posix_fadvise(f->fd, (off_t)(lo - base), (off_t)(hi - lo),
                                    POSIX_FADV_DONTNEED);
            }
        }
        return;
    }
}
