/*
 * tokenizer_gguf.c - builds a tok_vocab_t from a GGUF file's tokenizer.* metadata
 * (keys and defaults: shared/reference/gguf-and-moe-architectures.md section 4.1).
 */
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/tokenizer_internal.h"

#include "common/check.h"
#include "common/log.h"
#include "model/gguf.h"

#include <stdlib.h>
#include <string.h>

/*
 * tokenizer.ggml.normalizer: Tandem's own key (GGUF has none for it), written by
 * tools/convert_tokenizer.py. Absent -> the pre-tokenizer's default (coordinator/README.md).
 */
static tdm_status_t get_normalizer(const gguf_ctx_t *g, const char *path, tok_normalizer_t *out,
                                   tdm_error_t *err)
{
    if (gguf_find(g, "tokenizer.ggml.normalizer") == NULL) {
        *out = TOK_NORM_DEFAULT;
        return TDM_OK;
    }
    gguf_str_t s;
    TDM_CHECK(gguf_get_str(g, "tokenizer.ggml.normalizer", &s, err));
    if (s.len == 3 && memcmp(s.ptr, "nfc", 3) == 0) {
        *out = TOK_NORM_NFC;
    } else if (s.len == 4 && memcmp(s.ptr, "none", 4) == 0) {
        *out = TOK_NORM_NONE;
    } else {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "%s: tokenizer.ggml.normalizer '%.*s' is not supported ('nfc' or "
                             "'none')",
                             path, (int)(s.len > 64 ? 64 : s.len), s.ptr);
    }
    return TDM_OK;
}

/* Optional id key: absent -> TOK_NONE; present -> must fit int32. */
static tdm_status_t get_id(const gguf_ctx_t *g, const char *key, tok_id_t *out, tdm_error_t *err)
{
    uint32_t v = UINT32_MAX;
    tdm_status_t st = gguf_get_u32_or(g, key, UINT32_MAX, &v, err);
    if (st != TDM_OK) {
        return st;
    }
    *out = (v == UINT32_MAX || v > (uint32_t)INT32_MAX) ? TOK_NONE : (tok_id_t)v;
    return TDM_OK;
}

static tdm_status_t get_flag(const gguf_ctx_t *g, const char *key, int *out, tdm_error_t *err)
{
    if (gguf_find(g, key) == NULL) {
        *out = -1;
        return TDM_OK;
    }
    bool b = false;
    tdm_status_t st = gguf_get_bool(g, key, &b, err);
    if (st == TDM_OK) {
        *out = b ? 1 : 0;
    }
    return st;
}

tdm_status_t tok_vocab_from_gguf(const gguf_ctx_t *g, tok_vocab_t **out, tdm_error_t *err)
{
    if (g == NULL || out == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: null gguf context");
    }
    const char *path = gguf_path(g, 0) ? gguf_path(g, 0) : "gguf";
    gguf_str_t model;
    tdm_status_t st = gguf_get_str(g, "tokenizer.ggml.model", &model, err);
    if (st != TDM_OK) {
        return st;
    }
    if (model.len != 4 || memcmp(model.ptr, "gpt2", 4) != 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "%s: tokenizer.ggml.model '%.*s' is not supported (only 'gpt2', "
                             "byte-level BPE)",
                             path, (int)(model.len > 64 ? 64 : model.len), model.ptr);
    }
    char pre[64] = "default";
    if (gguf_find(g, "tokenizer.ggml.pre") == NULL) {
        TDM_WARN("tokenizer", "%s: no tokenizer.ggml.pre; using 'default' (likely wrong)", path);
    } else {
        gguf_str_t p;
        TDM_CHECK(gguf_get_str(g, "tokenizer.ggml.pre", &p, err));
        if (p.len >= sizeof(pre) || memchr(p.ptr, '\0', p.len) != NULL) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "%s: tokenizer.ggml.pre is not a known pre-tokenizer name", path);
        }
        memcpy(pre, p.ptr, p.len);
        pre[p.len] = '\0';
    }

    tok_normalizer_t normalizer = TOK_NORM_DEFAULT;
    TDM_CHECK(get_normalizer(g, path, &normalizer, err));

    uint64_t n_tok = 0, n_merge = 0, n_type = 0;
    const void *tok_data = NULL, *merge_data = NULL, *type_data = NULL;
    TDM_CHECK(gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_tok, &tok_data, err));
    if (n_tok == 0 || n_tok > (uint64_t)INT32_MAX - 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries",
                             path, (unsigned long long)n_tok);
    }
    TDM_CHECK(
        gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &n_merge, &merge_data, err));
    if (n_merge > UINT32_MAX) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "%s: tokenizer.ggml.merges is too long", path);
    }
    int32_t *types = NULL;
    if (gguf_find(g, "tokenizer.ggml.token_type") != NULL) {
        TDM_CHECK(gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &n_type, &type_data,
                               err));
        if (n_type != n_tok) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "%s: tokenizer.ggml.token_type has %llu entries, tokens %llu",
                                 path, (unsigned long long)n_type, (unsigned long long)n_tok);
        }
        types = malloc(n_tok * sizeof(int32_t));
        if (types == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
        }
        const uint8_t *td = type_data;
        for (uint64_t i = 0; i < n_tok; i++) { /* little-endian on disk */
            types[i] = (int32_t)((uint32_t)td[4 * i] | (uint32_t)td[4 * i + 1] << 8 |
                                 (uint32_t)td[4 * i + 2] << 16 | (uint32_t)td[4 * i + 3] << 24);
        }
    }

    tok_build_t b = {.pre = pre,
                     .n_tokens = (uint32_t)n_tok,
                     .types = types,
                     .n_merges = (uint32_t)n_merge,
                     .normalizer = normalizer};
    tok_str_t *toks = malloc(n_tok * sizeof(tok_str_t));
    tok_str_t *merges = malloc((n_merge + 1) * sizeof(tok_str_t));
    if (toks == NULL || merges == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
        goto done;
    }
    const gguf_str_t *ts = tok_data, *ms = merge_data;
    for (uint64_t i = 0; i < n_tok; i++) {
        toks[i].ptr = ts[i].ptr;
        toks[i].len = ts[i].len;
    }
    for (uint64_t i = 0; i < n_merge; i++) {
        merges[i].ptr = ms[i].ptr;
        merges[i].len = ms[i].len;
    }
    b.tokens = toks;
    b.merges = merges;
    TDM_CHECK_GOTO(get_id(g, "tokenizer.ggml.bos_token_id", &b.bos, err), st, done);
    TDM_CHECK_GOTO(get_id(g, "tokenizer.ggml.eos_token_id", &b.eos, err), st, done);
    TDM_CHECK_GOTO(get_id(g, "tokenizer.ggml.eot_token_id", &b.eot, err), st, done);
    TDM_CHECK_GOTO(get_id(g, "tokenizer.ggml.eom_token_id", &b.eom, err), st, done);
    TDM_CHECK_GOTO(get_id(g, "tokenizer.ggml.padding_token_id", &b.pad, err), st, done);
    TDM_CHECK_GOTO(get_flag(g, "tokenizer.ggml.add_bos_token", &b.add_bos, err), st, done);
    TDM_CHECK_GOTO(get_flag(g, "tokenizer.ggml.add_eos_token", &b.add_eos, err), st, done);
    st = tok_vocab_build_(&b, out, err);
    if (st != TDM_OK) {
        /* name the file: the builder's message has the detail */
        TDM_DEBUG("tokenizer", "%s: %s", path, tdm_error_msg(err));
    }
done:
    free(toks);
    free(merges);
    free(types);
    return st;
}
