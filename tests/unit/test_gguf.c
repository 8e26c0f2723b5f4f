/*
 * test_gguf.c - the GGUF reader and writer against hand-built images.
 *
 * Files are assembled byte by byte here (not with the writer under test), valid ones in v2
 * and v3 with every value type, and malformed ones that must each fail with the right
 * status and a message naming the file and the problem. Every prefix of a valid file must
 * fail cleanly, and random bit flips must never crash (this runs under ASan+UBSan in CI).
 * Splits are written to a temporary directory. The writer is checked by round trips
 * (the Python suite checks it against the gguf package's reader).
 */
#include "model/gguf.h"
#include "model/gguf_write.h"

#include <dirent.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- byte builder ---------------------------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf_t;

static void b_raw(buf_t *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n > 0) {
        memcpy(b->p + b->n, p, n);
    }
    b->n += n;
}

static void b_u8(buf_t *b, uint8_t v)
{
    b_raw(b, &v, 1);
}
static void b_u16(buf_t *b, uint16_t v)
{
    b_raw(b, &v, 2);
}
static void b_u32(buf_t *b, uint32_t v)
{
    b_raw(b, &v, 4);
}
static void b_u64(buf_t *b, uint64_t v)
{
    b_raw(b, &v, 8);
}
static void b_f32(buf_t *b, float v)
{
    b_raw(b, &v, 4);
}
static void b_f64(buf_t *b, double v)
{
    b_raw(b, &v, 8);
}
static void b_str(buf_t *b, const char *s)
{
    b_u64(b, strlen(s));
    b_raw(b, s, strlen(s));
}
static void b_pad(buf_t *b, size_t align)
{
    while (b->n % align != 0) {
        b_u8(b, 0);
    }
}
static void b_header(buf_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b_raw(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}
static void b_key(buf_t *b, const char *key, uint32_t type)
{
    b_str(b, key);
    b_u32(b, type);
}
static void b_kv_u32(buf_t *b, const char *key, uint32_t v)
{
    b_key(b, key, GGUF_TYPE_UINT32);
    b_u32(b, v);
}
static void b_kv_str(buf_t *b, const char *key, const char *v)
{
    b_key(b, key, GGUF_TYPE_STRING);
    b_str(b, v);
}
static void b_tinfo(buf_t *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type,
                    uint64_t offset)
{
    b_str(b, name);
    b_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) {
        b_u64(b, (uint64_t)ne[i]);
    }
    b_u32(b, type);
    b_u64(b, offset);
}

/* The valid reference image: every value type, arrays, three tensors. The file ends at the
 * last tensor's last byte (no trailing padding) so that every strict prefix is invalid. */
#define VALID_N_KV 20
static void build_valid(buf_t *b, uint32_t version)
{
    b_header(b, version, 3, VALID_N_KV);
    b_kv_str(b, "general.architecture", "llama");
    b_key(b, "t.u8", GGUF_TYPE_UINT8);
    b_u8(b, 200);
    b_key(b, "t.i8", GGUF_TYPE_INT8);
    b_u8(b, (uint8_t)-100);
    b_key(b, "t.u16", GGUF_TYPE_UINT16);
    b_u16(b, 60000);
    b_key(b, "t.i16", GGUF_TYPE_INT16);
    b_u16(b, (uint16_t)-30000);
    b_kv_u32(b, "t.u32", 4000000000u);
    b_key(b, "t.i32", GGUF_TYPE_INT32);
    b_u32(b, (uint32_t)-2000000000);
    b_key(b, "t.f32", GGUF_TYPE_FLOAT32);
    b_f32(b, 0.15625f);
    b_key(b, "t.bool", GGUF_TYPE_BOOL);
    b_u8(b, 1);
    b_kv_str(b, "t.str", "h\xc3\xa9llo");
    b_key(b, "t.u64", GGUF_TYPE_UINT64);
    b_u64(b, 18000000000000000000ull);
    b_key(b, "t.i64", GGUF_TYPE_INT64);
    b_u64(b, (uint64_t)-9000000000000000000ll);
    b_key(b, "t.f64", GGUF_TYPE_FLOAT64);
    b_f64(b, -2.5e-300);
    b_key(b, "t.arr_i32", GGUF_TYPE_ARRAY);
    b_u32(b, GGUF_TYPE_INT32);
    b_u64(b, 3);
    b_u32(b, 7);
    b_u32(b, (uint32_t)-8);
    b_u32(b, 9);
    b_key(b, "t.arr_str", GGUF_TYPE_ARRAY);
    b_u32(b, GGUF_TYPE_STRING);
    b_u64(b, 3);
    b_str(b, "a");
    b_str(b, "");
    b_str(b, "ccc");
    b_key(b, "t.arr_f64", GGUF_TYPE_ARRAY);
    b_u32(b, GGUF_TYPE_FLOAT64);
    b_u64(b, 2);
    b_f64(b, 1.5);
    b_f64(b, -0.25);
    b_key(b, "t.arr_empty", GGUF_TYPE_ARRAY);
    b_u32(b, GGUF_TYPE_UINT8);
    b_u64(b, 0);
    b_key(b, "t.arr_bool", GGUF_TYPE_ARRAY);
    b_u32(b, GGUF_TYPE_BOOL);
    b_u64(b, 2);
    b_u8(b, 0);
    b_u8(b, 1);
    b_kv_u32(b, "general.alignment", 64);
    b_kv_u32(b, "llama.block_count", 2);

    const int64_t ne_a[2] = {4, 2}, ne_b[1] = {32}, ne_c[3] = {3, 1, 1};
    b_tinfo(b, "a", 2, ne_a, TDM_TYPE_F32, 0);          /* 32 bytes */
    b_tinfo(b, "b.weight", 1, ne_b, TDM_TYPE_Q8_0, 64); /* 34 bytes */
    b_tinfo(b, "c", 3, ne_c, TDM_TYPE_F16, 128);        /* 6 bytes  */
    b_pad(b, 64);
    size_t base = b->n;
    for (int i = 0; i < 8; i++) {
        b_f32(b, (float)i * 0.5f);
    }
    b_pad(b, 64);
    for (int i = 0; i < 34; i++) {
        b_u8(b, (uint8_t)(i + 1));
    }
    b_pad(b, 64);
    assert_int_equal(b->n - base, 128);
    for (int i = 0; i < 6; i++) {
        b_u8(b, (uint8_t)(0xA0 + i));
    }
}

/* ---- helpers --------------------------------------------------------------------------- */

/* Asserts a call returns TDM_OK, printing the error message when it does not. */
#define ASSERT_OK(call, errp)                            \
    do {                                                 \
        tdm_status_t st_ = (call);                       \
        if (st_ != TDM_OK) {                             \
            print_error("%s: %s\n", #call, (errp)->msg); \
            fail();                                      \
        }                                                \
    } while (0)

static void expect_fail(const buf_t *b, tdm_status_t status, const char *needle1,
                        const char *needle2)
{
    gguf_ctx_t *g = (gguf_ctx_t *)0x1;
    tdm_error_t err;
    tdm_error_clear(&err);
    tdm_status_t st = gguf_open_memory(b->p, b->n, "t.gguf", &g, &err);
    if (st != status || strstr(err.msg, "t.gguf") == NULL ||
        (needle1 && strstr(err.msg, needle1) == NULL) ||
        (needle2 && strstr(err.msg, needle2) == NULL)) {
        print_error("status %d (%s), message: %s\nexpected status %d with '%s' and '%s'\n", st,
                    tdm_status_str(st), err.msg, status, needle1 ? needle1 : "",
                    needle2 ? needle2 : "");
        fail();
    }
    assert_ptr_equal(g, (gguf_ctx_t *)0x1); /* not touched on failure */
}

/* Reads everything reachable from a context (what a consumer would touch). */
static uint64_t walk(const gguf_ctx_t *g)
{
    uint64_t h = gguf_version(g) + gguf_n_files(g);
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        h += strlen(kv->key);
        assert_ptr_equal(gguf_find(g, kv->key), &kv->value);
        const gguf_value_t *v = &kv->value;
        if (v->type == GGUF_TYPE_STRING) {
            for (uint64_t k = 0; k < v->v.str.len; k++) {
                h += (unsigned char)v->v.str.ptr[k];
            }
        } else if (v->type == GGUF_TYPE_ARRAY) {
            if (v->v.arr.type == GGUF_TYPE_STRING) {
                const gguf_str_t *s = v->v.arr.data;
                for (uint64_t k = 0; k < v->v.arr.n; k++) {
                    h += s[k].len > 0 ? (unsigned char)s[k].ptr[s[k].len - 1] : 0;
                }
            } else if (v->v.arr.n > 0) {
                const uint8_t *d = v->v.arr.data;
                h += d[0];
            }
        }
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        assert_ptr_equal(gguf_find_tensor(g, t->name), t);
        const uint8_t *d = t->data;
        if (t->nbytes > 0) {
            h += d[0] + d[t->nbytes - 1];
        }
    }
    return h;
}

static char tmpdir[256];

static int setup_tmpdir(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/tdm_gguf_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int teardown_tmpdir(void **state)
{
    (void)state;
    DIR *d = opendir(tmpdir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] != '.') {
                char p[600];
                snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
                unlink(p);
            }
        }
        closedir(d);
    }
    rmdir(tmpdir);
    return 0;
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Entries of the temporary directory whose name starts with prefix. */
static int count_dir_entries(const char *prefix)
{
    int n = 0;
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    }
    closedir(d);
    return n;
}

/* ---- valid files ----------------------------------------------------------------------- */

static void check_valid_ctx(const gguf_ctx_t *g, uint32_t version)
{
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(gguf_version(g), version);
    assert_int_equal(gguf_n_kv(g), VALID_N_KV);
    assert_int_equal(gguf_n_tensors(g), 3);
    assert_int_equal(gguf_alignment(g, 0), 64);
    assert_string_equal(gguf_kv_at(g, 0)->key, "general.architecture");
    assert_null(gguf_kv_at(g, VALID_N_KV));

    const gguf_value_t *v = gguf_find(g, "t.u8");
    assert_int_equal(v->type, GGUF_TYPE_UINT8);
    assert_int_equal(v->v.u64, 200);
    assert_int_equal(gguf_find(g, "t.i8")->v.i64, -100);
    assert_int_equal(gguf_find(g, "t.u16")->v.u64, 60000);
    assert_int_equal(gguf_find(g, "t.i16")->v.i64, -30000);
    assert_int_equal(gguf_find(g, "t.u32")->v.u64, 4000000000u);
    assert_int_equal(gguf_find(g, "t.i32")->v.i64, -2000000000);
    assert_true(gguf_find(g, "t.f32")->v.f64 == 0.15625);
    assert_true(gguf_find(g, "t.bool")->v.b);
    assert_true(gguf_find(g, "t.u64")->v.u64 == 18000000000000000000ull);
    assert_true(gguf_find(g, "t.i64")->v.i64 == -9000000000000000000ll);
    assert_true(gguf_find(g, "t.f64")->v.f64 == -2.5e-300);
    gguf_str_t s;
    assert_int_equal(gguf_get_str(g, "t.str", &s, &err), TDM_OK);
    assert_int_equal(s.len, 6);
    assert_memory_equal(s.ptr, "h\xc3\xa9llo", 6);
    assert_null(gguf_find(g, "t.missing"));

    uint64_t n;
    const void *data;
    assert_int_equal(gguf_get_arr(g, "t.arr_i32", GGUF_TYPE_INT32, &n, &data, &err), TDM_OK);
    assert_int_equal(n, 3);
    assert_int_equal(((const int32_t *)data)[1], -8);
    assert_int_equal(gguf_get_arr(g, "t.arr_str", GGUF_TYPE_STRING, &n, &data, &err), TDM_OK);
    const gguf_str_t *strs = data;
    assert_int_equal(n, 3);
    assert_int_equal(strs[0].len, 1);
    assert_int_equal(strs[1].len, 0);
    assert_memory_equal(strs[2].ptr, "ccc", 3);
    assert_int_equal(gguf_get_arr(g, "t.arr_f64", GGUF_TYPE_COUNT, &n, &data, &err), TDM_OK);
    assert_true(((const double *)data)[1] == -0.25);
    assert_int_equal(gguf_get_arr(g, "t.arr_empty", GGUF_TYPE_UINT8, &n, &data, &err), TDM_OK);
    assert_int_equal(n, 0);
    assert_int_equal(gguf_get_arr(g, "t.arr_bool", GGUF_TYPE_BOOL, &n, &data, &err), TDM_OK);
    assert_int_equal(((const uint8_t *)data)[1], 1);

    const gguf_tensor_t *a = gguf_find_tensor(g, "a");
    assert_non_null(a);
    assert_int_equal(a->type, TDM_TYPE_F32);
    assert_int_equal(a->n_dims, 2);
    assert_int_equal(a->ne[0], 4);
    assert_int_equal(a->ne[1], 2);
    assert_int_equal(a->ne[2], 1);
    assert_int_equal(a->nbytes, 32);
    float f[8];
    memcpy(f, a->data, 32);
    assert_true(f[7] == 3.5f);
    const gguf_tensor_t *b = gguf_tensor_at(g, 1);
    assert_string_equal(b->name, "b.weight");
    assert_int_equal(b->type, TDM_TYPE_Q8_0);
    assert_int_equal(b->nbytes, 34);
    assert_int_equal(b->offset, 64);
    assert_int_equal(((const uint8_t *)b->data)[33], 34);
    const gguf_tensor_t *c = gguf_find_tensor(g, "c");
    assert_int_equal(c->nbytes, 6);
    assert_int_equal(c->n_dims, 3);
    assert_int_equal(((const uint8_t *)c->data)[5], 0xA5);
    assert_int_equal((const uint8_t *)c->data - (const uint8_t *)a->data, 128);
    assert_null(gguf_find_tensor(g, "nope"));
    assert_null(gguf_tensor_at(g, 3));
}

static void test_valid_v3_and_v2(void **state)
{
    (void)state;
    for (uint32_t version = 2; version <= 3; version++) {
        buf_t b = {0};
        build_valid(&b, version);
        gguf_ctx_t *g = NULL;
        tdm_error_t err;
        tdm_error_clear(&err);
        ASSERT_OK(gguf_open_memory(b.p, b.n, "t.gguf", &g, &err), &err);
        check_valid_ctx(g, version);
        assert_int_equal(gguf_n_files(g), 1);
        assert_string_equal(gguf_path(g, 0), "t.gguf");
        assert_int_equal(gguf_file_size(g, 0), b.n);
        gguf_close(g);
        free(b.p);
    }
    gguf_close(NULL);
}

static void test_valid_on_disk(void **state)
{
    (void)state;
    buf_t b = {0};
    build_valid(&b, 3);
    char path[512];
    snprintf(path, sizeof(path), "%s/model.gguf", tmpdir);
    write_file(path, b.p, b.n);
    gguf_ctx_t *g = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    ASSERT_OK(gguf_open(path, &g, &err), &err);
    check_valid_ctx(g, 3);
    assert_string_equal(gguf_path(g, 0), path);
    assert_int_equal(gguf_file_size(g, 0), b.n);
    assert_int_equal(gguf_data_offset(g, 0) % 64, 0);
    gguf_close(g);
    unlink(path);

    /* a missing file, a directory, an empty file */
    tdm_error_clear(&err);
    assert_int_equal(gguf_open(path, &g, &err), TDM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "model.gguf"));
    tdm_error_clear(&err);
    assert_int_equal(gguf_open(tmpdir, &g, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "not a regular file"));
    write_file(path, "", 0);
    tdm_error_clear(&err);
    assert_int_equal(gguf_open(path, &g, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "header needs 24 bytes, file has 0"));
    unlink(path);
    free(b.p);
}

static void test_getters(void **state)
{
    (void)state;
    buf_t b = {0};
    build_valid(&b, 3);
    gguf_ctx_t *g = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    ASSERT_OK(gguf_open_memory(b.p, b.n, "t.gguf", &g, &err), &err);

    uint32_t u = 0;
    int64_t i = 0;
    float f = 0;
    bool bo = false;
    gguf_str_t s;
    assert_int_equal(gguf_get_u32(g, "t.u8", &u, &err), TDM_OK);
    assert_int_equal(u, 200);
    assert_int_equal(gguf_get_u32(g, "t.u32", &u, &err), TDM_OK);
    assert_int_equal(u, 4000000000u);
    assert_int_equal(gguf_get_i64(g, "t.i32", &i, &err), TDM_OK);
    assert_int_equal(i, -2000000000);
    assert_int_equal(gguf_get_i64(g, "t.u16", &i, &err), TDM_OK);
    assert_int_equal(i, 60000);
    assert_int_equal(gguf_get_f32(g, "t.f32", &f, &err), TDM_OK);
    assert_true(f == 0.15625f);
    assert_int_equal(gguf_get_bool(g, "t.bool", &bo, &err), TDM_OK);
    assert_true(bo);

    /* out of range, wrong type, missing: status, message, output untouched */
    u = 12345;
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_u32(g, "t.i32", &u, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "'t.i32'"));
    assert_int_equal(u, 12345);
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_u32(g, "t.u64", &u, &err), TDM_ERR_FORMAT);
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_i64(g, "t.u64", &i, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "does not fit"));
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_u32(g, "t.str", &u, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "has type STRING"));
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_str(g, "t.u8", &s, &err), TDM_ERR_FORMAT);
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_f32(g, "t.i32", &f, &err), TDM_ERR_FORMAT);
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_bool(g, "t.u8", &bo, &err), TDM_ERR_FORMAT);
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_f32(g, "t.f64", &f, &err), TDM_OK);
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_u32(g, "t.nope", &u, &err), TDM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "'t.nope' not found"));
    uint64_t n;
    const void *data;
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_arr(g, "t.arr_i32", GGUF_TYPE_STRING, &n, &data, &err),
                     TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "array of INT32"));
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_arr(g, "t.u8", GGUF_TYPE_COUNT, &n, &data, &err), TDM_ERR_FORMAT);

    assert_int_equal(gguf_get_u32_or(g, "t.nope", 7, &u, &err), TDM_OK);
    assert_int_equal(u, 7);
    assert_int_equal(gguf_get_f32_or(g, "t.nope", 1.5f, &f, &err), TDM_OK);
    assert_true(f == 1.5f);
    assert_int_equal(gguf_get_bool_or(g, "t.nope", false, &bo, &err), TDM_OK);
    assert_false(bo);
    tdm_error_clear(&err);
    assert_int_equal(gguf_get_u32_or(g, "t.str", 7, &u, &err), TDM_ERR_FORMAT);
    assert_string_equal(gguf_value_type_name(GGUF_TYPE_INT16), "INT16");
    assert_string_equal(gguf_value_type_name(GGUF_TYPE_COUNT), "unknown");
    gguf_close(g);
    free(b.p);
}

/* ---- malformed files ------------------------------------------------------------------- */

static void test_every_prefix_fails(void **state)
{
    (void)state;
    buf_t b = {0};
    build_valid(&b, 3);
    for (size_t len = 0; len < b.n; len++) {
        /* a fresh heap copy of exactly len bytes, so ASan sees any over-read */
        uint8_t *copy = malloc(len > 0 ? len : 1);
        memcpy(copy, b.p, len);
        gguf_ctx_t *g = NULL;
        tdm_error_t err;
        tdm_error_clear(&err);
        tdm_status_t st = gguf_open_memory(copy, len, "t.gguf", &g, &err);
        if (st != TDM_ERR_FORMAT || strstr(err.msg, "t.gguf") == NULL ||
            (strstr(err.msg, "truncated") == NULL && strstr(err.msg, "past end") == NULL)) {
            print_error("prefix %zu: status %d: %s\n", len, st, err.msg);
            fail();
        }
        free(copy);
    }
    buf_t h = {.p = b.p, .n = 10};
    expect_fail(&h, TDM_ERR_FORMAT, "truncated: header needs 24 bytes, file has 10", NULL);
    free(b.p);
}

static void test_bad_header(void **state)
{
    (void)state;
    buf_t b = {0};
    build_valid(&b, 3);
    memcpy(b.p, "GGUG", 4);
    expect_fail(&b, TDM_ERR_FORMAT, "bad magic", "GGUG");
    b.p[3] = 'F';
    b.p[4] = 1; /* version 1 */
    expect_fail(&b, TDM_ERR_UNSUPPORTED, "version 1", NULL);
    b.p[4] = 4;
    expect_fail(&b, TDM_ERR_UNSUPPORTED, "version 4", NULL);
    b.p[4] = 0;
    expect_fail(&b, TDM_ERR_FORMAT, "version 0", NULL);
    b.p[7] = 3; /* 0x03000000: a big-endian v3 file */
    expect_fail(&b, TDM_ERR_UNSUPPORTED, "byte-swapped", NULL);
    b.p[7] = 0;
    b.p[4] = 3;

    uint64_t v = 1ull << 40;
    memcpy(b.p + 8, &v, 8);
    expect_fail(&b, TDM_ERR_FORMAT, "n_tensors = 1099511627776", "impossible");
    v = (uint64_t)-1;
    memcpy(b.p + 8, &v, 8);
    expect_fail(&b, TDM_ERR_FORMAT, "n_tensors = -1", NULL);
    v = 3;
    memcpy(b.p + 8, &v, 8);
    v = 1000000000000ull;
    memcpy(b.p + 16, &v, 8);
    expect_fail(&b, TDM_ERR_FORMAT, "n_kv = 1000000000000", "impossible");
    v = (uint64_t)INT64_MIN;
    memcpy(b.p + 16, &v, 8);
    expect_fail(&b, TDM_ERR_FORMAT, "n_kv = -9223372036854775808", NULL);
    free(b.p);
}

static void test_bad_metadata(void **state)
{
    (void)state;
    buf_t b = {0};
    /* string length past EOF */
    b_header(&b, 3, 0, 1);
    b_key(&b, "general.name", GGUF_TYPE_STRING);
    b_u64(&b, 1000);
    b_raw(&b, "abc", 3);
    expect_fail(&b, TDM_ERR_FORMAT, "truncated", "'general.name'");
    b.n = 0;
    /* absurd string length */
    b_header(&b, 3, 0, 1);
    b_key(&b, "general.name", GGUF_TYPE_STRING);
    b_u64(&b, UINT64_MAX);
    b_raw(&b, "abcdefghijklmnop", 16);
    expect_fail(&b, TDM_ERR_FORMAT, "general.name", "limit");
    b.n = 0;
    /* nested array */
    b_header(&b, 3, 0, 1);
    b_key(&b, "x.nested", GGUF_TYPE_ARRAY);
    b_u32(&b, GGUF_TYPE_ARRAY);
    b_u64(&b, 1);
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u64(&b, 1);
    b_u8(&b, 0);
    expect_fail(&b, TDM_ERR_FORMAT, "'x.nested'", "nested");
    b.n = 0;
    /* array count past EOF / absurd */
    b_header(&b, 3, 0, 1);
    b_key(&b, "x.arr", GGUF_TYPE_ARRAY);
    b_u32(&b, GGUF_TYPE_UINT32);
    b_u64(&b, 100);
    b_u32(&b, 1);
    expect_fail(&b, TDM_ERR_FORMAT, "'x.arr'", "truncated");
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_key(&b, "x.arr", GGUF_TYPE_ARRAY);
    b_u32(&b, GGUF_TYPE_STRING);
    b_u64(&b, 1ull << 62);
    b_u32(&b, 1);
    expect_fail(&b, TDM_ERR_FORMAT, "'x.arr'", "limit");
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_key(&b, "x.arr", GGUF_TYPE_ARRAY);
    b_u32(&b, GGUF_TYPE_STRING);
    b_u64(&b, 1000);
    b_str(&b, "only one");
    expect_fail(&b, TDM_ERR_FORMAT, "'x.arr'", "truncated");
    b.n = 0;
    /* bad value type, bad array element type */
    b_header(&b, 3, 0, 1);
    b_key(&b, "x.bad", 13);
    b_u32(&b, 0);
    expect_fail(&b, TDM_ERR_FORMAT, "'x.bad'", "unknown value type id 13");
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_key(&b, "x.bad", GGUF_TYPE_ARRAY);
    b_u32(&b, 99);
    b_u64(&b, 0);
    expect_fail(&b, TDM_ERR_FORMAT, "'x.bad'", "element type id 99");
    b.n = 0;
    /* duplicate key, empty key, NUL in key */
    b_header(&b, 3, 0, 3);
    b_kv_u32(&b, "a.b", 1);
    b_kv_u32(&b, "a.c", 1);
    b_kv_str(&b, "a.b", "again");
    expect_fail(&b, TDM_ERR_FORMAT, "duplicate key 'a.b'", "#0 and #2");
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_kv_u32(&b, "", 1);
    expect_fail(&b, TDM_ERR_FORMAT, "key #0", "empty");
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_u64(&b, 3);
    b_raw(&b, "a\0b", 3);
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u8(&b, 1);
    expect_fail(&b, TDM_ERR_FORMAT, "key #0", "NUL");
    b.n = 0;
    /* general.alignment: zero, not a power of two, wrong type */
    const uint32_t bad_align[] = {0, 3, 48};
    for (size_t i = 0; i < 3; i++) {
        b.n = 0;
        b_header(&b, 3, 0, 1);
        b_kv_u32(&b, "general.alignment", bad_align[i]);
        expect_fail(&b, TDM_ERR_FORMAT, "general.alignment", "power of two");
    }
    b.n = 0;
    b_header(&b, 3, 0, 1);
    b_key(&b, "general.alignment", GGUF_TYPE_UINT64);
    b_u64(&b, 32);
    expect_fail(&b, TDM_ERR_FORMAT, "general.alignment", "expected UINT32");
    free(b.p);
}

/* One tensor info (after a header with 1 tensor and no keys), then `data` bytes of data. */
static void one_tensor(buf_t *b, const char *name, uint32_t n_dims, const int64_t *ne,
                       uint32_t type, uint64_t offset, size_t data)
{
    b->n = 0;
    b_header(b, 3, 1, 0);
    b_tinfo(b, name, n_dims, ne, type, offset);
    b_pad(b, 32);
    for (size_t i = 0; i < data; i++) {
        b_u8(b, 0);
    }
}

static void test_bad_tensors(void **state)
{
    (void)state;
    buf_t b = {0};
    const int64_t ne1[4] = {32, 2, 1, 1};

    one_tensor(&b, "ok", 2, ne1, TDM_TYPE_F32, 0, 256);
    gguf_ctx_t *g = NULL;
    assert_int_equal(gguf_open_memory(b.p, b.n, "t.gguf", &g, NULL), TDM_OK);
    gguf_close(g);

    char longname[80];
    memset(longname, 'x', 64);
    longname[64] = '\0';
    one_tensor(&b, longname, 2, ne1, TDM_TYPE_F32, 0, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "is 64 bytes long", "limit 63");
    longname[63] = '\0'; /* 63 bytes is fine */
    one_tensor(&b, longname, 2, ne1, TDM_TYPE_F32, 0, 256);
    assert_int_equal(gguf_open_memory(b.p, b.n, "t.gguf", &g, NULL), TDM_OK);
    gguf_close(g);

    one_tensor(&b, "", 2, ne1, TDM_TYPE_F32, 0, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "tensor #0", "empty name");

    const int64_t ne5[5] = {1, 1, 1, 1, 1};
    one_tensor(&b, "blk.0.attn_q.weight", 5, ne5, TDM_TYPE_F32, 0, 32);
    expect_fail(&b, TDM_ERR_FORMAT, "'blk.0.attn_q.weight'", "n_dims = 5");

    one_tensor(&b, "blk.0.attn_q.weight", 2, ne1, 77, 0, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "tensor 'blk.0.attn_q.weight': unknown type id 77", NULL);
    one_tensor(&b, "blk.0.attn_q.weight", 2, ne1, 4, 0, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "'blk.0.attn_q.weight'", "retired type id 4");
    one_tensor(&b, "w", 2, ne1, (uint32_t)-1, 0, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "'w'", "unknown type id -1");

    const int64_t ne33[2] = {33, 2};
    one_tensor(&b, "q", 2, ne33, TDM_TYPE_Q8_0, 0, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "'q': ne[0] = 33", "block size 32");

    const int64_t neg[2] = {32, -2};
    one_tensor(&b, "n", 2, neg, TDM_TYPE_F32, 0, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "'n': ne[1] = -2", "negative");

    one_tensor(&b, "m", 2, ne1, TDM_TYPE_F32, 8, 512);
    expect_fail(&b, TDM_ERR_FORMAT, "'m': data offset 8", "alignment 32");

    one_tensor(&b, "p", 2, ne1, TDM_TYPE_F32, 0, 255);
    expect_fail(&b, TDM_ERR_FORMAT, "'p': data [offset 0, 256 bytes]", "past end of file");
    one_tensor(&b, "p", 2, ne1, TDM_TYPE_F32, UINT64_MAX - 31, 256);
    expect_fail(&b, TDM_ERR_FORMAT, "'p'", "past end of file");

    const int64_t huge[2] = {1ll << 40, 1ll << 40};
    one_tensor(&b, "h", 2, huge, TDM_TYPE_F32, 0, 0);
    expect_fail(&b, TDM_ERR_FORMAT, "'h'", "overflows");
    const int64_t big[1] = {1ll << 62};
    one_tensor(&b, "h", 1, big, TDM_TYPE_F32, 0, 0);
    expect_fail(&b, TDM_ERR_FORMAT, "'h'", "overflows");

    /* duplicate tensor names */
    b.n = 0;
    b_header(&b, 3, 2, 0);
    b_tinfo(&b, "dup", 1, ne1, TDM_TYPE_F32, 0);
    b_tinfo(&b, "dup", 1, ne1, TDM_TYPE_F32, 128);
    b_pad(&b, 32);
    for (int i = 0; i < 256; i++) {
        b_u8(&b, 0);
    }
    expect_fail(&b, TDM_ERR_FORMAT, "duplicate tensor name 'dup'", NULL);

    /* a zero-element tensor is valid; an empty data section with no tensors too */
    const int64_t zero[2] = {0, 5};
    one_tensor(&b, "z", 2, zero, TDM_TYPE_Q4_K, 0, 0);
    assert_int_equal(gguf_open_memory(b.p, b.n, "t.gguf", &g, NULL), TDM_OK);
    assert_int_equal(gguf_tensor_at(g, 0)->nbytes, 0);
    gguf_close(g);
    b.n = 0;
    b_header(&b, 3, 0, 0);
    assert_int_equal(gguf_open_memory(b.p, b.n, "t.gguf", &g, NULL), TDM_OK);
    assert_int_equal(gguf_n_tensors(g), 0);
    gguf_close(g);
    free(b.p);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_bit_flips_never_crash(void **state)
{
    (void)state;
    buf_t b = {0};
    build_valid(&b, 3);
    uint8_t *copy = malloc(b.n);
    int ok = 0, failed = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(copy, b.p, b.n);
        int flips = 1 + (int)(rng() % 8);
        for (int k = 0; k < flips; k++) {
            /* bias towards the header and metadata, where the structure lives */
            size_t pos = (size_t)(rng() % (it % 2 ? b.n : 64 + (b.n - 64) / 4));
            copy[pos] ^= (uint8_t)(1u << (rng() % 8));
        }
        size_t len = it % 5 == 0 ? (size_t)(rng() % (b.n + 1)) : b.n;
        gguf_ctx_t *g = NULL;
        tdm_error_t err;
        tdm_error_clear(&err);
        if (gguf_open_memory(copy, len, "t.gguf", &g, &err) == TDM_OK) {
            walk(g);
            gguf_close(g);
            ok++;
        } else {
            assert_true(err.msg[0] != '\0');
            failed++;
        }
    }
    print_message("bit flips: %d parsed, %d rejected\n", ok, failed);
    assert_true(ok > 0 && failed > 0);
    free(copy);
    free(b.p);
}

/* ---- splits ---------------------------------------------------------------------------- */

static void split_path(char *out, size_t n, int no, int count)
{
    snprintf(out, n, "%s/m-%05d-of-%05d.gguf", tmpdir, no, count);
}

/* Writes split file no (1-based) of count with one F32 tensor "t<no>" holding value no. */
static void write_split(int no, int count, int split_no_key, int total, bool with_count_key)
{
    buf_t b = {0};
    int n_kv = 2 + (with_count_key ? 1 : 0) + (no == 1 ? 1 : 0);
    b_header(&b, 3, 1, (uint64_t)n_kv);
    if (no == 1) {
        b_kv_str(&b, "general.architecture", "llama");
    }
    b_key(&b, "split.no", GGUF_TYPE_UINT16);
    b_u16(&b, (uint16_t)split_no_key);
    if (with_count_key) {
        b_key(&b, "split.count", GGUF_TYPE_UINT16);
        b_u16(&b, (uint16_t)count);
    }
    b_key(&b, "split.tensors.count", GGUF_TYPE_INT32);
    b_u32(&b, (uint32_t)total);
    char name[16];
    snprintf(name, sizeof(name), "t%d", no);
    const int64_t ne[1] = {8};
    b_tinfo(&b, name, 1, ne, TDM_TYPE_F32, 0);
    b_pad(&b, 32);
    for (int i = 0; i < 8; i++) {
        b_f32(&b, (float)no);
    }
    char path[512];
    split_path(path, sizeof(path), no, count);
    write_file(path, b.p, b.n);
    free(b.p);
}

static tdm_status_t open_split1(int count, tdm_error_t *err, gguf_ctx_t **g)
{
    char path[512];
    split_path(path, sizeof(path), 1, count);
    tdm_error_clear(err);
    return gguf_open(path, g, err);
}

static void test_splits(void **state)
{
    (void)state;
    gguf_ctx_t *g = NULL;
    tdm_error_t err;
    for (int i = 1; i <= 3; i++) {
        write_split(i, 3, i - 1, 3, true);
    }
    assert_int_equal(open_split1(3, &err, &g), TDM_OK);
    assert_int_equal(gguf_n_files(g), 3);
    assert_int_equal(gguf_n_tensors(g), 3);
    assert_non_null(gguf_find(g, "general.architecture")); /* metadata from file 1 */
    for (int i = 0; i < 3; i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, (uint64_t)i);
        char name[16];
        snprintf(name, sizeof(name), "t%d", i + 1);
        assert_string_equal(t->name, name);
        assert_int_equal(t->file_idx, i);
        float v;
        memcpy(&v, t->data, 4);
        assert_true(v == (float)(i + 1));
        assert_non_null(strstr(gguf_path(g, (uint32_t)i), name + 1));
    }
    assert_ptr_equal(gguf_find_tensor(g, "t3"), gguf_tensor_at(g, 2));
    gguf_close(g);

    /* opening file 2 of 3 names the first */
    char path[512];
    split_path(path, sizeof(path), 2, 3);
    tdm_error_clear(&err);
    assert_int_equal(gguf_open(path, &g, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "split file 2 of 3"));
    assert_non_null(strstr(err.msg, "m-00001-of-00003.gguf"));

    /* wrong split.no in file 2 */
    write_split(2, 3, 5, 3, true);
    assert_int_equal(open_split1(3, &err, &g), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "m-00002-of-00003.gguf: key 'split.no' = 5, expected 1"));
    write_split(2, 3, 1, 3, true);

    /* split.count missing in file 3 */
    write_split(3, 3, 2, 3, false);
    assert_int_equal(open_split1(3, &err, &g), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "m-00003-of-00003.gguf: key 'split.count'"));

    /* tensor count mismatch */
    write_split(1, 3, 0, 4, true);
    write_split(3, 3, 2, 4, true);
    assert_int_equal(open_split1(3, &err, &g), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "split.tensors.count' = 4"));
    assert_non_null(strstr(err.msg, "hold 3 tensors"));
    write_split(1, 3, 0, 3, true);
    write_split(3, 3, 2, 3, true);
    assert_int_equal(open_split1(3, &err, &g), TDM_OK);
    gguf_close(g);

    /* a missing split file */
    split_path(path, sizeof(path), 3, 3);
    unlink(path);
    assert_int_equal(open_split1(3, &err, &g), TDM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "m-00003-of-00003.gguf"));
    assert_non_null(strstr(err.msg, "missing"));

    /* the same tensor name in two files */
    buf_t b = {0};
    b_header(&b, 3, 1, 3);
    b_key(&b, "split.no", GGUF_TYPE_UINT16);
    b_u16(&b, 2);
    b_key(&b, "split.count", GGUF_TYPE_UINT16);
    b_u16(&b, 3);
    b_key(&b, "split.tensors.count", GGUF_TYPE_INT32);
    b_u32(&b, 3);
    const int64_t ne[1] = {8};
    b_tinfo(&b, "t1", 1, ne, TDM_TYPE_F32, 0);
    b_pad(&b, 32);
    for (int i = 0; i < 32; i++) {
        b_u8(&b, 0);
    }
    write_file(path, b.p, b.n);
    free(b.p);
    assert_int_equal(open_split1(3, &err, &g), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tensor 't1' is also in"));

    /* split.count disagrees with the name */
    split_path(path, sizeof(path), 1, 2);
    buf_t c = {0};
    b_header(&c, 3, 0, 2);
    b_key(&c, "split.count", GGUF_TYPE_UINT16);
    b_u16(&c, 3);
    b_key(&c, "split.tensors.count", GGUF_TYPE_INT32);
    b_u32(&c, 0);
    write_file(path, c.p, c.n);
    free(c.p);
    assert_int_equal(open_split1(2, &err, &g), TDM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "split.count' = 3 but the name says 2"));
    unlink(path);

    /* gguf_open_memory reports split keys but opens nothing else */
    split_path(path, sizeof(path), 1, 3);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t img[4096];
    size_t n = fread(img, 1, sizeof(img), f);
    fclose(f);
    ASSERT_OK(gguf_open_memory(img, n, path, &g, &err), &err);
    assert_int_equal(gguf_n_files(g), 1);
    assert_non_null(gguf_find(g, "split.count"));
    gguf_close(g);
}

/* ---- writer ---------------------------------------------------------------------------- */

static tdm_status_t fill_pattern(void *user, const char *name, void *dst, size_t nbytes,
                                 tdm_error_t *err)
{
    (void)err;
    int *calls = user;
    (*calls)++;
    for (size_t i = 0; i < nbytes; i++) {
        ((uint8_t *)dst)[i] = (uint8_t)(i * 7 + (unsigned char)name[0]);
    }
    return TDM_OK;
}

static tdm_status_t fill_fail(void *user, const char *name, void *dst, size_t nbytes,
                              tdm_error_t *err)
{
    (void)user;
    (void)dst;
    (void)nbytes;
    return tdm_error_set(err, TDM_ERR_IO, "cannot produce %s", name);
}

static void test_writer_round_trip(void **state)
{
    (void)state;
    /* copy every key of the hand-built file, add tensors, read back */
    buf_t src = {0};
    build_valid(&src, 3);
    gguf_ctx_t *g = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    ASSERT_OK(gguf_open_memory(src.p, src.n, "src.gguf", &g, &err), &err);

    gguf_writer_t *w = NULL;
    ASSERT_OK(gguf_writer_create(&w, &err), &err);
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        ASSERT_OK(gguf_writer_add_value(w, kv->key, &kv->value, &err), &err);
    }
    ASSERT_OK(gguf_writer_add_u32(w, "llama.block_count", 99, &err), &err); /* replace */
    ASSERT_OK(gguf_writer_add_str(w, "extra.s", "tail", &err), &err);
    ASSERT_OK(gguf_writer_add_i8(w, "extra.rm", -1, &err), &err);
    gguf_writer_remove(w, "extra.rm");
    assert_int_equal(gguf_writer_n_kv(w), VALID_N_KV + 1);
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        assert_int_equal(
            gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err), TDM_OK);
    }
    int calls = 0;
    const int64_t ne[2] = {256, 3};
    assert_int_equal(
        gguf_writer_add_tensor_fn(w, "k.weight", TDM_TYPE_Q4_K, 2, ne, fill_pattern, &calls, &err),
        TDM_OK);

    /* bad tensors are refused */
    tdm_error_clear(&err);
    assert_int_equal(gguf_writer_add_tensor(w, "a", TDM_TYPE_F32, 1, ne, src.p, &err),
                     TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "duplicate tensor name 'a'"));
    const int64_t ne100[1] = {100};
    tdm_error_clear(&err);
    assert_int_equal(gguf_writer_add_tensor(w, "x", TDM_TYPE_Q8_0, 1, ne100, src.p, &err),
                     TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "block size 32"));
    tdm_error_clear(&err);
    assert_int_equal(gguf_writer_add_tensor(w, "y", (tdm_type_t)5, 1, ne100, src.p, &err),
                     TDM_ERR_INVALID_PARAM);
    tdm_error_clear(&err);
    assert_int_equal(gguf_writer_add_u16(w, "general.alignment", 64, &err), TDM_ERR_INVALID_PARAM);

    char path[512];
    snprintf(path, sizeof(path), "%s/w.gguf", tmpdir);
    tdm_error_clear(&err);
    ASSERT_OK(gguf_writer_write(w, path, &err), &err);
    assert_int_equal(calls, 1);
    assert_int_equal(count_dir_entries("w.gguf"), 1); /* no temporary file left */

    gguf_ctx_t *r = NULL;
    ASSERT_OK(gguf_open(path, &r, &err), &err);
    assert_int_equal(gguf_n_kv(r), VALID_N_KV + 1);
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *a = gguf_kv_at(g, i), *b = gguf_kv_at(r, i);
        assert_string_equal(a->key, b->key);
        assert_int_equal(a->value.type, b->value.type);
        if (strcmp(a->key, "llama.block_count") == 0) {
            assert_int_equal(b->value.v.u64, 99);
        } else if (a->value.type == GGUF_TYPE_STRING) {
            assert_int_equal(a->value.v.str.len, b->value.v.str.len);
            assert_memory_equal(a->value.v.str.ptr, b->value.v.str.ptr, a->value.v.str.len);
        } else if (a->value.type == GGUF_TYPE_ARRAY) {
            assert_int_equal(a->value.v.arr.type, b->value.v.arr.type);
            assert_int_equal(a->value.v.arr.n, b->value.v.arr.n);
        } else {
            assert_memory_equal(&a->value.v, &b->value.v, 8);
        }
    }
    assert_int_equal(gguf_alignment(r, 0), 64);
    assert_int_equal(gguf_n_tensors(r), 4);
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *a = gguf_tensor_at(g, i), *b = gguf_tensor_at(r, i);
        assert_string_equal(a->name, b->name);
        assert_int_equal(a->type, b->type);
        assert_int_equal(a->n_dims, b->n_dims);
        assert_memory_equal(a->ne, b->ne, sizeof(a->ne));
        assert_int_equal(a->nbytes, b->nbytes);
        assert_int_equal(b->offset % 64, 0);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    const gguf_tensor_t *k = gguf_find_tensor(r, "k.weight");
    assert_int_equal(k->nbytes, 3 * 144);
    assert_int_equal(((const uint8_t *)k->data)[10], (uint8_t)(70 + 'k'));
    gguf_close(r);

    /* a failing fill callback leaves neither the file nor a temporary behind */
    unlink(path);
    assert_int_equal(
        gguf_writer_add_tensor_fn(w, "bad", TDM_TYPE_F32, 1, ne, fill_fail, NULL, &err), TDM_OK);
    tdm_error_clear(&err);
    assert_int_equal(gguf_writer_write(w, path, &err), TDM_ERR_IO);
    assert_non_null(strstr(err.msg, "cannot produce bad"));
    assert_int_equal(count_dir_entries("w.gguf"), 0);

    /* I/O failure: directory does not exist */
    tdm_error_clear(&err);
    assert_int_equal(gguf_writer_write(w, "/nonexistent-dir-tdm/x.gguf", &err), TDM_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent-dir-tdm/x.gguf"));
    gguf_writer_destroy(w);
    gguf_writer_destroy(NULL);
    gguf_close(g);
    free(src.p);
}

static void test_writer_v2_and_empty(void **state)
{
    (void)state;
    gguf_writer_t *w = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    ASSERT_OK(gguf_writer_create(&w, &err), &err);
    assert_int_equal(gguf_writer_set_version(w, 1, &err), TDM_ERR_INVALID_PARAM);
    ASSERT_OK(gguf_writer_set_version(w, 2, &err), &err);
    gguf_str_t strs[2] = {{"x", 1}, {"yz", 2}};
    ASSERT_OK(gguf_writer_add_arr(w, "a.s", GGUF_TYPE_STRING, 2, strs, &err), &err);
    assert_int_equal(gguf_writer_add_arr(w, "a.n", GGUF_TYPE_ARRAY, 0, NULL, &err),
                     TDM_ERR_INVALID_PARAM);
    char path[512];
    snprintf(path, sizeof(path), "%s/v2.gguf", tmpdir);
    tdm_error_clear(&err);
    ASSERT_OK(gguf_writer_write(w, path, &err), &err);
    gguf_ctx_t *g = NULL;
    ASSERT_OK(gguf_open(path, &g, &err), &err);
    assert_int_equal(gguf_version(g), 2);
    assert_int_equal(gguf_n_tensors(g), 0);
    uint64_t n;
    const void *d;
    assert_int_equal(gguf_get_arr(g, "a.s", GGUF_TYPE_STRING, &n, &d, &err), TDM_OK);
    assert_int_equal(((const gguf_str_t *)d)[1].len, 2);
    gguf_close(g);
    unlink(path);
    gguf_writer_destroy(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_v3_and_v2),
        cmocka_unit_test(test_valid_on_disk),
        cmocka_unit_test(test_getters),
        cmocka_unit_test(test_every_prefix_fails),
        cmocka_unit_test(test_bad_header),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_bad_tensors),
        cmocka_unit_test(test_bit_flips_never_crash),
        cmocka_unit_test(test_splits),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_writer_v2_and_empty),
    };
    return cmocka_run_group_tests(tests, setup_tmpdir, teardown_tmpdir);
}
