/* test_shard_kv.c - the paged KV cache: pool alloc/free/refcount and exhaustion, block
 * tables (reserve, fork, release, rollback on failure), storage layout and block copy. */
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
    shd_kv_cache_t *kv;
    assert_int_equal(shd_kv_cache_create(&cfg, &kv, NULL), TDM_OK);
    const size_t block = 3 * 5 * 4;
    /* blocks of a layer are consecutive, K and V are separate */
    assert_ptr_equal(shd_kv_k(kv, 1, 2), shd_kv_k(kv, 1, 0) + 2 * block);
    assert_ptr_not_equal(shd_kv_k(kv, 0, 0), shd_kv_v(kv, 0, 0));
    for (int il = 0; il < 2; il++) {
        for (size_t i = 0; i < block; i++) {
            shd_kv_k(kv, il, 4)[i] = (float)(il * 1000 + i);
            shd_kv_v(kv, il, 4)[i] = (float)(-il * 1000 - (int)i);
        }
    }
    shd_kv_cache_copy_block(kv, 1, 4);
    for (int il = 0; il < 2; il++) {
        assert_memory_equal(shd_kv_k(kv, il, 1), shd_kv_k(kv, il, 4), block * sizeof(float));
        assert_memory_equal(shd_kv_v(kv, il, 1), shd_kv_v(kv, il, 4), block * sizeof(float));
    }
    shd_kv_cache_destroy(kv);

    cfg.type = TDM_TYPE_Q8_0;
    assert_int_equal(shd_kv_cache_create(&cfg, &kv, NULL), TDM_ERR_UNSUPPORTED);
    cfg.type = TDM_TYPE_F32;
    cfg.n_blocks = 0;
    assert_int_equal(shd_kv_cache_create(&cfg, &kv, NULL), TDM_ERR_INVALID_PARAM);
    shd_kv_cache_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_storage_layout_and_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
