/*
 * gguf_write.c - the GGUF writer: metadata values are encoded to their on-disk bytes when
 * added; tensors are recorded (shape, type, data pointer or fill callback) and laid out at
 * write time, each at an aligned offset with zero padding, in a temporary file that is
 * renamed over the destination once complete.
 */
#include "model/gguf_write.h"
#include "model/gguf_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define W_MAX_ARRAY  (1ull << 30)
#define W_MAX_STRING (1ull << 30)

typedef struct wkv {
    char *key;
    gguf_value_type_t type;
    uint8_t *bytes; /* encoded value (after the type id) */
    size_t len;
} wkv_t;

typedef struct wtensor {
    char name[GGUF_MAX_NAME];
    tdm_type_t type;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset;
    const void *data;
    gguf_tensor_fill_fn fill;
    void *user;
} wtensor_t;

struct gguf_writer {
    uint32_t version;
    wkv_t **kv;
    uint64_t n_kv, cap_kv;
    gguf_index_t kv_index;
    wtensor_t **tensors;
    uint64_t n_tensors, cap_tensors;
    gguf_index_t tensor_index;
};

static const char *const W = "gguf writer";

tdm_status_t gguf_writer_create(gguf_writer_t **out, tdm_error_t *err)
{
    gguf_writer_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", W);
    }
    w->version = 3;
    if (gguf_index_init(&w->kv_index, 8) != TDM_OK ||
        gguf_index_init(&w->tensor_index, 8) != TDM_OK) {
        gguf_writer_destroy(w);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", W);
    }
    *out = w;
    return TDM_OK;
}

void gguf_writer_destroy(gguf_writer_t *w)
{
    if (w == NULL) {
        return;
    }
    for (uint64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i]->key);
        free(w->kv[i]->bytes);
        free(w->kv[i]);
    }
    free(w->kv);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i]);
    }
    free(w->tensors);
    gguf_index_free(&w->kv_index);
    gguf_index_free(&w->tensor_index);
    free(w);
}

tdm_status_t gguf_writer_set_version(gguf_writer_t *w, uint32_t version, tdm_error_t *err)
{
    if (version != 2 && version != 3) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "%s: can write GGUF versions 2 and 3, not %" PRIu32, W, version);
    }
    w->version = version;
    return TDM_OK;
}

uint64_t gguf_writer_n_kv(const gguf_writer_t *w)
{
    return w->n_kv;
}

uint64_t gguf_writer_n_tensors(const gguf_writer_t *w)
{
    return w->n_tensors;
}

/* ---- metadata -------------------------------------------------------------------------- */

static tdm_status_t kv_reindex(gguf_writer_t *w)
{
    gguf_index_t ix;
    if (gguf_index_init(&ix, w->n_kv + 1) != TDM_OK) {
        return TDM_ERR_NO_MEMORY;
    }
    for (uint64_t i = 0; i < w->n_kv; i++) {
        uint64_t prev;
        gguf_index_insert(&ix, w->kv[i]->key, i, &prev);
    }
    gguf_index_free(&w->kv_index);
    w->kv_index = ix;
    return TDM_OK;
}

/* Stores key -> (type, bytes); takes ownership of bytes (freed on failure too). */
static tdm_status_t put_kv(gguf_writer_t *w, const char *key, gguf_value_type_t type,
                           uint8_t *bytes, size_t len, tdm_error_t *err)
{
    if (key == NULL || key[0] == '\0') {
        free(bytes);
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: empty key", W);
    }
    if (strcmp(key, "general.alignment") == 0) {
        uint32_t a = 0;
        if (type == GGUF_TYPE_UINT32) {
            memcpy(&a, bytes, 4);
        }
        if (type != GGUF_TYPE_UINT32 || a == 0 || (a & (a - 1)) != 0) {
            free(bytes);
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "%s: key 'general.alignment' must be a UINT32 non-zero power of "
                                 "two",
                                 W);
        }
    }
    uint64_t pos;
    if (gguf_index_lookup(&w->kv_index, key, &pos)) {
        free(w->kv[pos]->bytes);
        w->kv[pos]->type = type;
        w->kv[pos]->bytes = bytes;
        w->kv[pos]->len = len;
        return TDM_OK;
    }
    wkv_t *kv = calloc(1, sizeof(*kv));
    char *k = strdup(key);
    if (kv == NULL || k == NULL) {
        goto oom;
    }
    if (w->n_kv == w->cap_kv) {
        uint64_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
        wkv_t **a = realloc(w->kv, cap * sizeof(*a));
        if (a == NULL) {
            goto oom;
        }
        w->kv = a;
        w->cap_kv = cap;
    }
    kv->key = k;
    kv->type = type;
    kv->bytes = bytes;
    kv->len = len;
    w->kv[w->n_kv++] = kv;
    if (2 * w->n_kv > w->kv_index.mask + 1) {
        if (kv_reindex(w) != TDM_OK) {
            w->n_kv--;
            goto oom;
        }
    } else {
        uint64_t prev;
        gguf_index_insert(&w->kv_index, k, w->n_kv - 1, &prev);
    }
    return TDM_OK;
oom:
    free(kv);
    free(k);
    free(bytes);
    return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory adding key '%s'", W, key);
}

static tdm_status_t put_scalar(gguf_writer_t *w, const char *key, gguf_value_type_t type,
                               const void *v, tdm_error_t *err)
{
    size_t n = gguf_value_type_size(type);
    uint8_t *b = malloc(n);
    if (b == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", W);
    }
    memcpy(b, v, n);
    return put_kv(w, key, type, b, n, err);
}

#define DEF_SCALAR(fn, ctype, gtype)                                              \
    tdm_status_t gguf_writer_add_##fn(gguf_writer_t *w, const char *key, ctype v, \
                                      tdm_error_t *err)                           \
    {                                                                             \
        return put_scalar(w, key, gtype, &v, err);                                \
    }

DEF_SCALAR(u8, uint8_t, GGUF_TYPE_UINT8)
DEF_SCALAR(i8, int8_t, GGUF_TYPE_INT8)
DEF_SCALAR(u16, uint16_t, GGUF_TYPE_UINT16)
DEF_SCALAR(i16, int16_t, GGUF_TYPE_INT16)
DEF_SCALAR(u32, uint32_t, GGUF_TYPE_UINT32)
DEF_SCALAR(i32, int32_t, GGUF_TYPE_INT32)
DEF_SCALAR(f32, float, GGUF_TYPE_FLOAT32)
DEF_SCALAR(u64, uint64_t, GGUF_TYPE_UINT64)
DEF_SCALAR(i64, int64_t, GGUF_TYPE_INT64)
DEF_SCALAR(f64, double, GGUF_TYPE_FLOAT64)

tdm_status_t gguf_writer_add_bool(gguf_writer_t *w, const char *key, bool v, tdm_error_t *err)
{
    uint8_t b = v ? 1 : 0;
    return put_scalar(w, key, GGUF_TYPE_BOOL, &b, err);
}

tdm_status_t gguf_writer_add_strn(gguf_writer_t *w, const char *key, const char *v, uint64_t len,
                                  tdm_error_t *err)
{
    if (len > W_MAX_STRING || (v == NULL && len > 0)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "%s: key '%s': bad string (%" PRIu64 " bytes)", W,
                             key != NULL ? key : "", len);
    }
    uint8_t *b = malloc((size_t)len + 8);
    if (b == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", W);
    }
    memcpy(b, &len, 8);
    if (len > 0) {
        memcpy(b + 8, v, (size_t)len);
    }
    return put_kv(w, key, GGUF_TYPE_STRING, b, (size_t)len + 8, err);
}

tdm_status_t gguf_writer_add_str(gguf_writer_t *w, const char *key, const char *v, tdm_error_t *err)
{
    return gguf_writer_add_strn(w, key, v != NULL ? v : "", v != NULL ? strlen(v) : 0, err);
}

tdm_status_t gguf_writer_add_arr(gguf_writer_t *w, const char *key, gguf_value_type_t elem,
                                 uint64_t n, const void *data, tdm_error_t *err)
{
    const char *k = key != NULL ? key : "";
    if ((unsigned)elem >= GGUF_TYPE_COUNT || elem == GGUF_TYPE_ARRAY) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: key '%s': bad array element type %d",
                             W, k, (int)elem);
    }
    if (n > W_MAX_ARRAY || (n > 0 && data == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "%s: key '%s': bad array of %" PRIu64 " elements", W, k, n);
    }
    uint64_t len = 12;
    if (elem == GGUF_TYPE_STRING) {
        const gguf_str_t *s = data;
        for (uint64_t i = 0; i < n; i++) {
            if (s[i].len > W_MAX_STRING || (s[i].ptr == NULL && s[i].len > 0)) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "%s: key '%s': bad string [%" PRIu64 "]", W, k, i);
            }
            len += 8 + s[i].len;
        }
    } else {
        len += n * gguf_value_type_size(elem);
    }
    uint8_t *b = malloc((size_t)len);
    if (b == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory (%" PRIu64 " bytes)", W,
                             len);
    }
    int32_t et = (int32_t)elem;
    memcpy(b, &et, 4);
    memcpy(b + 4, &n, 8);
    size_t o = 12;
    if (elem == GGUF_TYPE_STRING) {
        const gguf_str_t *s = data;
        for (uint64_t i = 0; i < n; i++) {
            memcpy(b + o, &s[i].len, 8);
            if (s[i].len > 0) {
                memcpy(b + o + 8, s[i].ptr, (size_t)s[i].len);
            }
            o += 8 + (size_t)s[i].len;
        }
    } else if (n > 0) {
        memcpy(b + o, data, (size_t)(len - 12));
    }
    return put_kv(w, key, GGUF_TYPE_ARRAY, b, (size_t)len, err);
}

tdm_status_t gguf_writer_add_value(gguf_writer_t *w, const char *key, const gguf_value_t *v,
                                   tdm_error_t *err)
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
    switch (v->type) {
    case GGUF_TYPE_UINT8:
        x.u8 = (uint8_t)v->v.u64;
        break;
    case GGUF_TYPE_INT8:
        x.i8 = (int8_t)v->v.i64;
        break;
    case GGUF_TYPE_UINT16:
        x.u16 = (uint16_t)v->v.u64;
        break;
    case GGUF_TYPE_INT16:
        x.i16 = (int16_t)v->v.i64;
        break;
    case GGUF_TYPE_UINT32:
        x.u32 = (uint32_t)v->v.u64;
        break;
    case GGUF_TYPE_INT32:
        x.i32 = (int32_t)v->v.i64;
        break;
    case GGUF_TYPE_FLOAT32:
        x.f32 = (float)v->v.f64;
        break;
    case GGUF_TYPE_BOOL:
        x.u8 = v->v.b ? 1 : 0;
        break;
    case GGUF_TYPE_UINT64:
        x.u64 = v->v.u64;
        break;
    case GGUF_TYPE_INT64:
        x.i64 = v->v.i64;
        break;
    case GGUF_TYPE_FLOAT64:
        x.f64 = v->v.f64;
        break;
    case GGUF_TYPE_STRING:
        return gguf_writer_add_strn(w, key, v->v.str.ptr, v->v.str.len, err);
    case GGUF_TYPE_ARRAY:
        return gguf_writer_add_arr(w, key, v->v.arr.type, v->v.arr.n, v->v.arr.data, err);
    default:
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: key '%s': bad value type %d", W,
                             key != NULL ? key : "", (int)v->type);
    }
    return put_scalar(w, key, v->type, &x, err);
}

void gguf_writer_remove(gguf_writer_t *w, const char *key)
{
    uint64_t pos;
    if (key == NULL || !gguf_index_lookup(&w->kv_index, key, &pos)) {
        return;
    }
    wkv_t *kv = w->kv[pos];
    memmove(w->kv + pos, w->kv + pos + 1, (size_t)(w->n_kv - pos - 1) * sizeof(*w->kv));
    w->n_kv--;
    free(kv->key);
    free(kv->bytes);
    free(kv);
    /* rebuild in place: the capacity still fits, so this cannot fail */
    memset(w->kv_index.names, 0, (size_t)(w->kv_index.mask + 1) * sizeof(*w->kv_index.names));
    for (uint64_t i = 0; i < w->n_kv; i++) {
        uint64_t prev;
        gguf_index_insert(&w->kv_index, w->kv[i]->key, i, &prev);
    }
}

/* ---- tensors --------------------------------------------------------------------------- */

static tdm_status_t add_tensor(gguf_writer_t *w, const char *name, tdm_type_t type, uint32_t n_dims,
                               const int64_t *ne, const void *data, gguf_tensor_fill_fn fill,
                               void *user, tdm_error_t *err)
{
    if (name == NULL || name[0] == '\0' || strlen(name) >= GGUF_MAX_NAME) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "%s: tensor name '%s' must be 1 to %d bytes long", W,
                             name != NULL ? name : "", GGUF_MAX_NAME - 1);
    }
    if (!tdm_type_known((uint32_t)type)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: tensor '%s': unknown type id %d", W,
                             name, (int)type);
    }
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS || ne == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "%s: tensor '%s': n_dims = %" PRIu32 " (must be 1 to %d)", W, name,
                             n_dims, GGUF_MAX_DIMS);
    }
    if (data == NULL && fill == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: tensor '%s': no data", W, name);
    }
    uint64_t pos;
    if (w->tensor_index.names != NULL && gguf_index_lookup(&w->tensor_index, name, &pos)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: duplicate tensor name '%s'", W, name);
    }
    wtensor_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", W);
    }
    strcpy(t->name, name);
    t->type = type;
    t->n_dims = n_dims;
    const tdm_type_traits_t *tr = tdm_type_traits((uint32_t)type);
    uint64_t nbytes = tr->size;
    bool overflow = false;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (t->ne[d] < 0) {
            int64_t bad = t->ne[d];
            free(t);
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "%s: tensor '%s': ne[%" PRIu32 "] = %" PRId64 " is negative", W,
                                 name, d, bad);
        }
        uint64_t f = d == 0 ? (uint64_t)(t->ne[0] / tr->blck) : (uint64_t)t->ne[d];
        overflow |= __builtin_mul_overflow(nbytes, f, &nbytes);
    }
    if (t->ne[0] % tr->blck != 0) {
        free(t);
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "%s: tensor '%s': ne[0] = %" PRId64
                             " is not a multiple of the %s block size %" PRIu32,
                             W, name, ne[0], tr->name, tr->blck);
    }
    if (overflow || nbytes > (uint64_t)INT64_MAX) {
        free(t);
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: tensor '%s': size overflows", W,
                             name);
    }
    t->nbytes = nbytes;
    t->data = data;
    t->fill = fill;
    t->user = user;
    if (w->n_tensors == w->cap_tensors) {
        uint64_t cap = w->cap_tensors ? 2 * w->cap_tensors : 16;
        wtensor_t **a = realloc(w->tensors, cap * sizeof(*a));
        if (a == NULL) {
            free(t);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", W);
        }
        w->tensors = a;
        w->cap_tensors = cap;
    }
    w->tensors[w->n_tensors++] = t;
    uint64_t prev;
    if (2 * w->n_tensors > w->tensor_index.mask + 1) {
        gguf_index_t ix;
        if (gguf_index_init(&ix, w->n_tensors) != TDM_OK) {
            free(w->tensors[--w->n_tensors]);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", W);
        }
        for (uint64_t i = 0; i < w->n_tensors; i++) {
            gguf_index_insert(&ix, w->tensors[i]->name, i, &prev);
        }
        gguf_index_free(&w->tensor_index);
        w->tensor_index = ix;
    } else {
        gguf_index_insert(&w->tensor_index, t->name, w->n_tensors - 1, &prev);
    }
    return TDM_OK;
}

tdm_status_t gguf_writer_add_tensor(gguf_writer_t *w, const char *name, tdm_type_t type,
                                    uint32_t n_dims, const int64_t *ne, const void *data,
                                    tdm_error_t *err)
{
    if (data == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: tensor '%s': NULL data", W,
                             name != NULL ? name : "");
    }
    return add_tensor(w, name, type, n_dims, ne, data, NULL, NULL, err);
}

tdm_status_t gguf_writer_add_tensor_fn(gguf_writer_t *w, const char *name, tdm_type_t type,
                                       uint32_t n_dims, const int64_t *ne, gguf_tensor_fill_fn fill,
                                       void *user, tdm_error_t *err)
{
    if (fill == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: tensor '%s': NULL fill callback", W,
                             name != NULL ? name : "");
    }
    return add_tensor(w, name, type, n_dims, ne, NULL, fill, user, err);
}

/* ---- output ---------------------------------------------------------------------------- */

typedef struct out {
    FILE *fp;
    const char *path;
    tdm_error_t *err;
} out_t;

static tdm_status_t put(out_t *o, const void *p, size_t n)
{
    if (n > 0 && fwrite(p, 1, n, o->fp) != n) {
        int e = errno;
        return tdm_error_set(o->err, TDM_ERR_IO, "%s: write failed: %s", o->path,
                             strerror(e != 0 ? e : EIO));
    }
    return TDM_OK;
}

static tdm_status_t put_zeros(out_t *o, uint64_t n)
{
    static const uint8_t zeros[256];
    while (n > 0) {
        size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
        TDM_CHECK(put(o, zeros, k));
        n -= k;
    }
    return TDM_OK;
}

static uint32_t writer_alignment(const gguf_writer_t *w)
{
    uint64_t pos;
    if (gguf_index_lookup(&w->kv_index, "general.alignment", &pos) &&
        w->kv[pos]->type == GGUF_TYPE_UINT32) {
        uint32_t a;
        memcpy(&a, w->kv[pos]->bytes, 4);
        return a;
    }
    return GGUF_DEFAULT_ALIGN;
}

static tdm_status_t write_all(gguf_writer_t *w, out_t *o)
{
    uint32_t align = writer_alignment(w);
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        w->tensors[i]->offset = off;
        off += (w->tensors[i]->nbytes + align - 1) / align * align;
    }

    uint32_t magic = 0x46554747u;
    uint64_t n_tensors = w->n_tensors, n_kv = w->n_kv;
    TDM_CHECK(put(o, &magic, 4));
    TDM_CHECK(put(o, &w->version, 4));
    TDM_CHECK(put(o, &n_tensors, 8));
    TDM_CHECK(put(o, &n_kv, 8));
    uint64_t pos = 24;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        const wkv_t *kv = w->kv[i];
        uint64_t klen = strlen(kv->key);
        int32_t type = (int32_t)kv->type;
        TDM_CHECK(put(o, &klen, 8));
        TDM_CHECK(put(o, kv->key, (size_t)klen));
        TDM_CHECK(put(o, &type, 4));
        TDM_CHECK(put(o, kv->bytes, kv->len));
        pos += 8 + klen + 4 + kv->len;
    }
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const wtensor_t *t = w->tensors[i];
        uint64_t nlen = strlen(t->name);
        int32_t type = (int32_t)t->type;
        TDM_CHECK(put(o, &nlen, 8));
        TDM_CHECK(put(o, t->name, (size_t)nlen));
        TDM_CHECK(put(o, &t->n_dims, 4));
        TDM_CHECK(put(o, t->ne, 8 * (size_t)t->n_dims));
        TDM_CHECK(put(o, &type, 4));
        TDM_CHECK(put(o, &t->offset, 8));
        pos += 8 + nlen + 4 + 8ull * t->n_dims + 4 + 8;
    }
    TDM_CHECK(put_zeros(o, (align - pos % align) % align));

    void *buf = NULL;
    size_t buf_len = 0;
    tdm_status_t st = TDM_OK;
    for (uint64_t i = 0; i < w->n_tensors && st == TDM_OK; i++) {
        const wtensor_t *t = w->tensors[i];
        const void *src = t->data;
        if (src == NULL) {
            if (buf_len < t->nbytes) {
                free(buf);
                buf = malloc((size_t)t->nbytes);
                buf_len = buf != NULL ? (size_t)t->nbytes : 0;
                if (buf == NULL) {
                    st = tdm_error_set(o->err, TDM_ERR_NO_MEMORY,
                                       "%s: out of memory for tensor '%s' (%" PRIu64 " bytes)",
                                       o->path, t->name, t->nbytes);
                    break;
                }
            }
            st = t->fill(t->user, t->name, buf, (size_t)t->nbytes, o->err);
            if (st != TDM_OK) {
                tdm_error_set(o->err, st, "%s: producing tensor '%s' failed", o->path, t->name);
                break;
            }
            src = buf;
        }
        st = put(o, src, (size_t)t->nbytes);
        if (st == TDM_OK) {
            st = put_zeros(o, (align - t->nbytes % align) % align);
        }
    }
    free(buf);
    return st;
}

tdm_status_t gguf_writer_write(gguf_writer_t *w, const char *path, tdm_error_t *err)
{
    if (path == NULL || path[0] == '\0') {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: empty output path", W);
    }
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (tmp == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    snprintf(tmp, n, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return tdm_error_set(err, TDM_ERR_IO, "%s: cannot create a temporary file next to it: %s",
                             path, strerror(e));
    }
    (void)fchmod(fd, 0644);
    out_t o = {.fp = fdopen(fd, "wb"), .path = path, .err = err};
    tdm_status_t st = TDM_OK;
    if (o.fp == NULL) {
        int e = errno;
        close(fd);
        st = tdm_error_set(err, TDM_ERR_IO, "%s: fdopen failed: %s", path, strerror(e));
        goto fail;
    }
    setvbuf(o.fp, NULL, _IOFBF, 1 << 20);
    st = write_all(w, &o);
    if (st == TDM_OK && (fflush(o.fp) != 0 || fsync(fileno(o.fp)) != 0)) {
        int e = errno;
        st = tdm_error_set(err, TDM_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    if (fclose(o.fp) != 0 && st == TDM_OK) {
        int e = errno;
        st = tdm_error_set(err, TDM_ERR_IO, "%s: close failed: %s", path, strerror(e));
    }
    if (st != TDM_OK) {
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        st = tdm_error_set(err, TDM_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp,
                           strerror(e));
        goto fail;
    }
    free(tmp);
    return TDM_OK;
fail:
    unlink(tmp);
    free(tmp);
    return st;
}
