/*
 * fuzz_gguf.c - libFuzzer harness for the GGUF reader: parses the input with
 * gguf_open_memory() and, when it is accepted, touches everything a consumer could reach
 * (every key through every typed getter, every array element, every tensor's first and last
 * data byte and its lookup by name), then reads the hyper-parameters from it as the loader
 * does (mdl_hparams_load: per-layer arrays, recurrent layers, ssm.* sizes, MTP blocks),
 * checking what it derives. Built with -DTANDEM_FUZZ=ON (clang); the same entry
 * point is replayed over tests/fuzz/corpus/gguf by replay_main.c in the unit tests.
 */
#include "model/gguf.h"
#include "model/hparams.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Harness invariants (not input validation): a failure here is a reader bug. */
#define FUZZ_REQUIRE(x)       \
    do {                      \
        if (!(x)) {           \
            __builtin_trap(); \
        }                     \
    } while (0)

static volatile uint64_t sink;

static void touch_value(const gguf_ctx_t *g, const char *key, const gguf_value_t *v)
{
    uint32_t u;
    int64_t i;
    float f;
    bool b;
    gguf_str_t s;
    uint64_t n;
    const void *d;
    /* every getter must either succeed or fail cleanly on every key */
    (void)gguf_get_u32(g, key, &u, NULL);
    (void)gguf_get_i64(g, key, &i, NULL);
    (void)gguf_get_f32(g, key, &f, NULL);
    (void)gguf_get_bool(g, key, &b, NULL);
    (void)gguf_get_arr(g, key, GGUF_TYPE_COUNT, &n, &d, NULL);
    tdm_error_t err;
    tdm_error_clear(&err);
    if (gguf_get_str(g, key, &s, &err) == TDM_OK) {
        for (uint64_t k = 0; k < s.len; k++) {
            sink += (unsigned char)s.ptr[k];
        }
    } else {
        FUZZ_REQUIRE(err.msg[0] != '\0');
    }
    if (v->type != GGUF_TYPE_ARRAY) {
        return;
    }
    FUZZ_REQUIRE(v->v.arr.type != GGUF_TYPE_ARRAY && v->v.arr.type < GGUF_TYPE_COUNT);
    if (v->v.arr.type == GGUF_TYPE_STRING) {
        const gguf_str_t *strs = v->v.arr.data;
        for (uint64_t k = 0; k < v->v.arr.n; k++) {
            if (strs[k].len > 0) {
                sink += (unsigned char)strs[k].ptr[0] + (unsigned char)strs[k].ptr[strs[k].len - 1];
            }
        }
    } else if (v->v.arr.n > 0) {
        const uint8_t *p = v->v.arr.data;
        sink += p[0];
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf_ctx_t *g = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    if (gguf_open_memory(data, size, "fuzz.gguf", &g, &err) != TDM_OK) {
        FUZZ_REQUIRE(err.msg[0] != '\0' && g == NULL);
        return 0;
    }
    FUZZ_REQUIRE(gguf_version(g) == 2 || gguf_version(g) == 3);
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        FUZZ_REQUIRE(kv != NULL && gguf_find(g, kv->key) == &kv->value);
        touch_value(g, kv->key, &kv->value);
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        FUZZ_REQUIRE(gguf_find_tensor(g, t->name) == t);
        FUZZ_REQUIRE(tdm_type_known(t->type) && t->n_dims <= GGUF_MAX_DIMS);
        FUZZ_REQUIRE((const uint8_t *)t->data >= data &&
                     (const uint8_t *)t->data + t->nbytes <= data + size);
        if (t->nbytes > 0) {
            const uint8_t *p = t->data;
            sink += p[0] + p[t->nbytes - 1];
        }
    }
    FUZZ_REQUIRE(gguf_kv_at(g, gguf_n_kv(g)) == NULL &&
                 gguf_tensor_at(g, gguf_n_tensors(g)) == NULL);
    static mdl_hparams_t hp; /* large (per-layer arrays): not on the stack */
    tdm_error_clear(&err);
    if (mdl_hparams_load(g, &hp, &err) == TDM_OK) {
        FUZZ_REQUIRE(hp.n_layer >= 1 && hp.n_layer + hp.n_mtp <= MDL_MAX_LAYERS);
        FUZZ_REQUIRE(hp.n_recurrent >= 0 && hp.n_recurrent <= hp.n_layer);
        if (hp.n_recurrent > 0) {
            FUZZ_REQUIRE(hp.gdn_k_heads > 0 && hp.gdn_v_heads % hp.gdn_k_heads == 0);
            sink += mdl_hparams_state_bytes(&hp);
        }
    } else {
        FUZZ_REQUIRE(err.msg[0] != '\0');
    }
    gguf_close(g);
    return 0;
}
