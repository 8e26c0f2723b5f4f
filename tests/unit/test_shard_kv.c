/* test_shard_kv.c - the paged KV cache: pool alloc/free/refcount and exhaustion, block
 * tables (reserve, fork, release, rollback on failure), storage layout and block copy. */
#include "shard/kv_cache.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_pool_alloc_free_refcount(void **state)
{
    (void)state;
    shd_kv_pool_t *p;
    assert_int_equal(shd_kv_pool_create(3, &p, NULL), TDM_OK);
    int32_t a, b, c, d;
    assert_int_equal(shd_kv_pool_alloc(p, &a, NULL), TDM_OK);
    assert_int_equal(shd_kv_pool_alloc(p, &b, NULL), TDM_OK);
    assert_int_equal(shd_kv_pool_alloc(p, &c, NULL), TDM_OK);
    assert_true(a != b && b != c && a != c);
    assert_int_equal(shd_kv_pool_n_free(p), 0);

    /* exhaustion is an error the scheduler can act on, not a crash */
    tdm_error_t err = {0};
    assert_int_equal(shd_kv_pool_alloc(p, &d, &err), TDM_ERR_BUSY);
    assert_non_null(strstr(err.msg, "in use"));

    /* a shared block survives one release */
    assert_int_equal(shd_kv_pool_ref(p, b, NULL), TDM_OK);
    assert_int_equal(shd_kv_pool_refcount(p, b), 2);
    assert_int_equal(shd_kv_pool_unref(p, b, NULL), TDM_OK);
    assert_int_equal(shd_kv_pool_n_free(p), 0);
    assert_int_equal(shd_kv_pool_unref(p, b, NULL), TDM_OK);
    assert_int_equal(shd_kv_pool_n_free(p), 1);
    assert_int_equal(shd_kv_pool_refcount(p, b), 0);

    /* double release and bad ids are reported and change nothing */
    assert_int_equal(shd_kv_pool_unref(p, b, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(shd_kv_pool_ref(p, b, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(shd_kv_pool_unref(p, 7, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(shd_kv_pool_unref(p, -1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(shd_kv_pool_n_free(p), 1);

    /* the freed block is handed out again */
    assert_int_equal(shd_kv_pool_alloc(p, &d, NULL), TDM_OK);
    assert_int_equal(d, b);
    shd_kv_pool_destroy(p);
    assert_int_equal(shd_kv_pool_create(0, &p, NULL), TDM_ERR_INVALID_PARAM);
}

static void test_block_table_reserve_fork_release(void **state)
{
    (void)state;
    shd_kv_pool_t *p;
    assert_int_equal(shd_kv_pool_create(5, &p, NULL), TDM_OK);
    shd_block_table_t t, u, w;
    shd_block_table_init(&t);
    shd_block_table_init(&u);
    shd_block_table_init(&w);

    assert_int_equal(shd_block_table_reserve(&t, p, 17, 16, NULL), TDM_OK); /* 2 blocks */
    assert_int_equal(t.n_blocks, 2);
    assert_int_equal(shd_block_table_reserve(&t, p, 32, 16, NULL), TDM_OK); /* still 2 */
    assert_int_equal(t.n_blocks, 2);
    assert_int_equal(shd_kv_pool_n_free(p), 3);

    assert_int_equal(shd_block_table_fork(&u, &t, p, NULL), TDM_OK);
    assert_int_equal(u.n_blocks, 2);
    assert_memory_equal(u.blocks, t.blocks, 2 * sizeof(int32_t));
    assert_int_equal(shd_kv_pool_refcount(p, t.blocks[0]), 2);

    /* needs 4 more blocks but only 3 are free: fails and gives back what it took */
    assert_int_equal(shd_block_table_reserve(&w, p, 64, 16, NULL), TDM_ERR_BUSY);
    assert_int_equal(w.n_blocks, 0);
    assert_int_equal(shd_kv_pool_n_free(p), 3);
    /* more than the whole pool */
    assert_int_equal(shd_block_table_reserve(&w, p, 6 * 16, 16, NULL), TDM_ERR_BUSY);

    shd_block_table_release(&t, p);
    assert_int_equal(t.n_blocks, 0);
    assert_int_equal(shd_kv_pool_n_free(p), 3); /* u still holds them */
    shd_block_table_release(&u, p);
    assert_int_equal(shd_kv_pool_n_free(p), 5);
    shd_block_table_release(&w, p);
    shd_kv_pool_destroy(p);
}

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
        cmocka_unit_test(test_pool_alloc_free_refcount),
        cmocka_unit_test(test_block_table_reserve_fork_release),
        cmocka_unit_test(test_storage_layout_and_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
