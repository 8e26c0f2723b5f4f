/*
 * gguf_split.c - gguf_open(): one file, or a model split into
 * <prefix>-%05d-of-%05d.gguf files (1-based in the name; keys split.no (0-based),
 * split.count and split.tensors.count as written by llama.cpp's gguf-split).
 *
 * Rules: metadata comes from the first file; every file must carry split.no equal to
 * its position and the same split.count; tensor names are unique across files and their
 * total equals split.tensors.count. Opening any file other than the first fails with a
 * message naming the first.
 */
#include "model/gguf.h"
#include "model/gguf_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPLIT_SUFFIX_LEN 20 /* "-NNNNN-of-MMMMM.gguf" */

/* Parses "<prefix>-NNNNN-of-MMMMM.gguf": sets *prefix_len, *no (1-based) and *count. */
static bool parse_split_name(const char *path, size_t *prefix_len, uint32_t *no, uint32_t *count)
{
    size_t len = strlen(path);
    if (len < SPLIT_SUFFIX_LEN) {
        return false;
    }
    const char *s = path + len - SPLIT_SUFFIX_LEN;
    if (s[0] != '-' || memcmp(s + 6, "-of-", 4) != 0 || memcmp(s + 15, ".gguf", 5) != 0) {
        return false;
    }
    uint32_t a = 0, b = 0;
    for (int i = 0; i < 5; i++) {
        if (s[1 + i] < '0' || s[1 + i] > '9' || s[10 + i] < '0' || s[10 + i] > '9') {
            return false;
        }
        a = a * 10 + (uint32_t)(s[1 + i] - '0');
        b = b * 10 + (uint32_t)(s[10 + i] - '0');
    }
    *prefix_len = len - SPLIT_SUFFIX_LEN;
    *no = a;
    *count = b;
    return true;
}

static char *split_name(const char *path, size_t prefix_len, uint32_t no, uint32_t count)
{
    size_t n = prefix_len + SPLIT_SUFFIX_LEN + 1;
    char *s = malloc(n);
    if (s != NULL) {
        snprintf(s, n, "%.*s-%05" PRIu32 "-of-%05" PRIu32 ".gguf", (int)prefix_len, path, no,
                 count);
    }
    return s;
}

/* An integer key of one file: 0 = found (*out set), 1 = absent; error on a bad type/value. */
static tdm_status_t file_int(const gguf_file_t *f, const char *key, int64_t lo, int64_t hi,
                             bool *found, int64_t *out, tdm_error_t *err)
{
    const gguf_value_t *v = gguf_file_find(f, key);
    *found = v != NULL;
    if (v == NULL) {
        return TDM_OK;
    }
    int64_t x;
    switch (v->type) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_UINT64:
        x = v->v.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v->v.u64;
        break;
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        x = v->v.i64;
        break;
    default:
        return tdm_error_set(err, TDM_ERR_FORMAT, "%s: key '%s' has type %s, expected an integer",
                             f->path, key, gguf_value_type_name(v->type));
    }
    if (x < lo || x > hi) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: key '%s' = %" PRId64 " is out of range [%" PRId64 ", %" PRId64
                             "]",
                             f->path, key, x, lo, hi);
    }
    *out = x;
    return TDM_OK;
}

static tdm_status_t open_splits(gguf_ctx_t *ctx, const char *path, tdm_error_t *err)
{
    gguf_file_t *first = &ctx->files[0];
    size_t prefix_len = 0;
    uint32_t name_no = 0, name_count = 0;
    bool named = parse_split_name(path, &prefix_len, &name_no, &name_count);

    bool has_count, has_no, has_total;
    int64_t count = 1, no = 0, total = 0;
    TDM_CHECK(file_int(first, "split.count", 1, 99999, &has_count, &count, err));
    TDM_CHECK(file_int(first, "split.no", 0, 99998, &has_no, &no, err));
    if (has_no && no != 0) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: key 'split.no' = %" PRId64
                             " but this should be the first split file (split.no 0)",
                             path, no);
    }
    if (named && name_count > 1 && !has_count) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: the name says split file 1 of %" PRIu32
                             " but key 'split.count' is missing",
                             path, name_count);
    }
    if (!has_count || count == 1) {
        return TDM_OK; /* a single file (whatever its name) */
    }
    if (!named) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: key 'split.count' = %" PRId64
                             " but the name does not end in -00001-of-%05" PRId64
                             ".gguf, so the other split files cannot be found",
                             path, count, count);
    }
    if ((int64_t)name_count != count) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: key 'split.count' = %" PRId64 " but the name says %" PRIu32
                             " files",
                             path, count, name_count);
    }
    TDM_CHECK(file_int(first, "split.tensors.count", 0, INT32_MAX, &has_total, &total, err));
    if (!has_total) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: split file without key 'split.tensors.count'", path);
    }

    gguf_file_t *files = realloc(ctx->files, (size_t)count * sizeof(gguf_file_t));
    if (files == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    ctx->files = files;
    for (uint32_t i = 1; i < (uint32_t)count; i++) {
        gguf_file_t *f = &ctx->files[i];
        memset(f, 0, sizeof(*f));
        ctx->n_files = i + 1; /* so that gguf_close releases it, even half-parsed */
        char *name = split_name(path, prefix_len, i + 1, (uint32_t)count);
        if (name == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
        }
        tdm_error_t sub;
        tdm_error_clear(&sub);
        tdm_status_t st = gguf_file_open(f, name, i, &sub);
        if (st == TDM_ERR_NOT_FOUND) {
            tdm_error_set(err, st, "%s: split file %" PRIu32 " of %" PRId64 " of %s is missing",
                          name, i + 1, count, path);
        } else if (st != TDM_OK) {
            tdm_error_set(err, st, "%s", tdm_error_msg(&sub));
        }
        free(name);
        if (st != TDM_OK) {
            return st;
        }
        bool has_fno, has_fcount;
        int64_t fno = 0, fcount = 0;
        TDM_CHECK(file_int(f, "split.no", 0, 99998, &has_fno, &fno, err));
        TDM_CHECK(file_int(f, "split.count", 1, 99999, &has_fcount, &fcount, err));
        if (!has_fno || fno != (int64_t)i) {
            return has_fno ? tdm_error_set(err, TDM_ERR_FORMAT,
                                           "%s: key 'split.no' = %" PRId64 ", expected %" PRIu32
                                           " (0-based) for this file",
                                           f->path, fno, i)
                           : tdm_error_set(err, TDM_ERR_FORMAT, "%s: key 'split.no' is missing",
                                           f->path);
        }
        if (!has_fcount || fcount != count) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: key 'split.count' is %s%" PRId64 ", expected %" PRId64
                                 " as in %s",
                                 f->path, has_fcount ? "" : "missing, not ", fcount, count, path);
        }
    }
    uint64_t n = 0;
    for (uint32_t i = 0; i < ctx->n_files; i++) {
        n += ctx->files[i].n_tensors;
    }
    if (n != (uint64_t)total) {
        return tdm_error_set(err, TDM_ERR_FORMAT,
                             "%s: key 'split.tensors.count' = %" PRId64 " but the %" PRId64
                             " split files hold %" PRIu64 " tensors",
                             path, total, count, n);
    }
    return TDM_OK;
}

tdm_status_t gguf_open(const char *path, gguf_ctx_t **out, tdm_error_t *err)
{
    if (path == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "gguf_open: NULL path");
    }
    size_t prefix_len;
    uint32_t no, count;
    if (parse_split_name(path, &prefix_len, &no, &count) && no != 1 && count > 1) {
        char *first = split_name(path, prefix_len, 1, count);
        tdm_status_t st = tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                        "%s: this is split file %" PRIu32 " of %" PRIu32
                                        "; open the first one, %s",
                                        path, no, count, first != NULL ? first : "(?)");
        free(first);
        return st;
    }

    gguf_ctx_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    tdm_status_t st = TDM_OK;
    ctx->files = calloc(1, sizeof(gguf_file_t));
    if (ctx->files == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
        goto fail;
    }
    ctx->n_files = 1;
    TDM_CHECK_GOTO(gguf_file_open(&ctx->files[0], path, 0, err), st, fail);
    TDM_CHECK_GOTO(open_splits(ctx, path, err), st, fail);
    TDM_CHECK_GOTO(gguf_ctx_merge_tensors(ctx, err), st, fail);
    *out = ctx;
    return TDM_OK;
fail:
    gguf_close(ctx);
    return st;
}
