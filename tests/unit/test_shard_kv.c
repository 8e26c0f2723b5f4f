/* test_shard_kv.c - the paged KV storage on the CPU backend: layout, block copy, the
 * typed caches' row sizes and the refusals. */
#include "shard/kv_cache.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_storage_layout_and_copy(void **state)
{
    (void)state;
    shd_kv_config_t cfg = {.n_layer = 2,
                           .n_kv_heads = 3,
                           .head_dim = 4,
                           .block_tokens = 5,
                           .n_blocks = 6,
                           .type = TDM_TYPE_F32};
    kern_backend_t *be = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &be, NULL), TDM_OK);
    shd_kv_cache_t *kv;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, NULL), TDM_OK);
    const size_t block = 3 * 5 * 4;
    assert_int_equal(shd_kv_block_bytes(kv), block * sizeof(float));
    assert_int_equal(shd_kv_total_bytes(kv), 2 * 2 * 6 * block * sizeof(float));
    /* blocks of a layer are consecutive, K and V are separate */
    assert_ptr_equal(shd_kv_k(kv, 1, 2), (float *)shd_kv_k(kv, 1, 0) + 2 * block);
    assert_ptr_equal(shd_kv_layer_k(kv, 1), shd_kv_k(kv, 1, 0));
    assert_ptr_not_equal(shd_kv_k(kv, 0, 0), shd_kv_v(kv, 0, 0));
    for (int il = 0; il < 2; il++) {
        float *k4 = shd_kv_k(kv, il, 4), *v4 = shd_kv_v(kv, il, 4);
        for (size_t i = 0; i < block; i++) {
            k4[i] = (float)(il * 1000 + i);
            v4[i] = (float)(-il * 1000 - (int)i);
        }
    }
    shd_kv_cache_copy_block(kv, 1, 4);
    for (int il = 0; il < 2; il++) {
        assert_memory_equal(shd_kv_k(kv, il, 1), shd_kv_k(kv, il, 4), block * sizeof(float));
        assert_memory_equal(shd_kv_v(kv, il, 1), shd_kv_v(kv, il, 4), block * sizeof(float));
    }
    shd_kv_cache_destroy(kv);

    /* f16 rows are 2 bytes an element; q8_0 rows 34 bytes per 32 */
    cfg.type = TDM_TYPE_F16;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, NULL), TDM_OK);
    assert_int_equal(shd_kv_block_bytes(kv), 3 * 5 * 4 * 2);
    shd_kv_cache_destroy(kv);
    cfg.type = TDM_TYPE_Q8_0;
    cfg.head_dim = 64;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, NULL), TDM_OK);
    assert_int_equal(shd_kv_block_bytes(kv), 3 * 5 * 2 * 34);
    shd_kv_cache_destroy(kv);

    /* q8_0 needs whole blocks of 32 in a head; other types are refused */
    tdm_error_t err = {0};
    cfg.head_dim = 4;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, &err), TDM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "f16"));
    cfg.type = TDM_TYPE_Q4_K;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, NULL), TDM_ERR_UNSUPPORTED);
    cfg.type = TDM_TYPE_F32;
    cfg.n_blocks = 0;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, NULL), TDM_ERR_INVALID_PARAM);
    shd_kv_cache_destroy(NULL);
    kern_backend_destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_storage_layout_and_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
