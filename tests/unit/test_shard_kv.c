/* test_shard_kv.c - the paged KV storage on the CPU backend: layout, block copy, the
 * typed caches' row sizes and the refusals; the sliding-window pool (its layers, sizes,
 * copies) and, on the gpt-oss fixture, the pools' sizing rule and a forward pass through
 * the sliding pool (released blocks, reused ids) against the same pass in one pool. */
#include "shard/forward.h"
#include "shard/kv_cache.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

static void test_sliding_pool_storage(void **state)
{
    (void)state;
    shd_kv_config_t cfg = {.n_layer = 3,
                           .n_kv_heads = 2,
                           .head_dim = 4,
                           .block_tokens = 3,
                           .n_blocks = 6,
                           .type = TDM_TYPE_F32,
                           .n_swa_blocks = 2,
                           .layer_swa = {1, 0, 1}};
    kern_backend_t *be = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &be, NULL), TDM_OK);
    shd_kv_cache_t *kv;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, NULL), TDM_OK);
    const size_t block = 2 * 3 * 4 * sizeof(float);
    assert_int_equal(shd_kv_block_bytes(kv), block);
    /* one full layer of 6 blocks, two sliding ones of 2, K and V each */
    assert_int_equal(shd_kv_total_bytes(kv), 2 * (6 + 2 * 2) * block);
    for (int il = 0; il < 3; il++) {
        const kern_kv_layout_t *l = shd_kv_layout(kv, il);
        assert_int_equal(l->swa, il != 1);
        assert_int_equal(shd_kv_layer_is_swa(kv, il), il != 1);
        assert_int_equal(l->n_blocks, il != 1 ? 2 : 6);
        assert_int_equal(l->block_bytes, block);
    }
    assert_ptr_equal(shd_kv_k(kv, 2, 1), (char *)shd_kv_layer_k(kv, 2) + block);
    /* copies stay in their pool's layers */
    for (int il = 0; il < 3; il++) {
        memset(shd_kv_k(kv, il, 0), 0x10 + il, block);
        memset(shd_kv_v(kv, il, 0), 0x20 + il, block);
    }
    shd_kv_cache_copy_swa_block(kv, 1, 0);
    shd_kv_cache_copy_block(kv, 5, 0);
    unsigned char want[block];
    for (int il = 0; il < 3; il++) {
        const int32_t dst = il == 1 ? 5 : 1;
        memset(want, 0x10 + il, block);
        assert_memory_equal(shd_kv_k(kv, il, dst), want, block);
        memset(want, 0x20 + il, block);
        assert_memory_equal(shd_kv_v(kv, il, dst), want, block);
    }
    memset(want, 0, block);
    assert_memory_equal(shd_kv_k(kv, 1, 1), want, block); /* the full layer's block 1 */
    shd_kv_cache_destroy(kv);

    /* a pool without sliding layers, or sliding layers without a pool */
    tdm_error_t err = {0};
    cfg.layer_swa[0] = cfg.layer_swa[2] = 0;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "sliding pool of 2 blocks for 0 sliding layers"));
    cfg.layer_swa[1] = 1;
    cfg.n_swa_blocks = 0;
    assert_int_equal(shd_kv_cache_create(be, &cfg, &kv, NULL), TDM_ERR_INVALID_PARAM);
    kern_backend_destroy(be);
}

/* ---- on the gpt-oss-b fixture: 3 layers, 0 and 2 slide (window 5), 3 kv heads of 16 --- */

static gguf_ctx_t *open_fixture(const char *name)
{
    const char *src = getenv("TANDEM_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/fixtures/models/%s", src != NULL ? src : ".", name);
    gguf_ctx_t *g = NULL;
    tdm_error_t err = {0};
    if (gguf_open(path, &g, &err) != TDM_OK) {
        fail_msg("%s: %s", path, err.msg);
    }
    return g;
}

static shd_model_t *load(gguf_ctx_t *g, kern_backend_t *be, int n_batch, int n_out, int n_ctx)
{
    shd_model_params_t p = {0};
    p.n_batch_max = n_batch;
    p.n_out_max = n_out;
    p.n_ctx_max = n_ctx;
    p.part = (shd_partition_t){0, 1, 0, 1};
    shd_model_t *m = NULL;
    tdm_error_t err = {0};
    if (shd_model_load(g, be, &p, &m, &err) != TDM_OK) {
        fail_msg("load: %s", err.msg);
    }
    return m;
}

static void test_pool_sizes_gpt_oss(void **state)
{
    (void)state;
    gguf_ctx_t *g = open_fixture("gpt-oss-b-f32.gguf");
    kern_backend_t *be = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &be, NULL), TDM_OK);
    shd_model_t *m = load(g, be, 16, 2, 512); /* batch 16, 2 sequences, 512 positions */
    assert_int_equal(shd_model_swa_window(m), 5);
    /* a block of 4 tokens: K and V of 3 heads x 16 floats per layer and token */
    const size_t per_layer = 2 * 3 * 16 * 4 * 4;
    shd_kv_pools_t pl;
    assert_int_equal(shd_model_kv_pools(m, 4, 0, &pl, NULL), TDM_OK);
    assert_int_equal(pl.block_bytes, 1 * per_layer);     /* layer 1 */
    assert_int_equal(pl.swa_block_bytes, 2 * per_layer); /* layers 0 and 2 */
    assert_int_equal(pl.n_blocks, 4 * 512 / 4);
    /* per sequence ceil((5 - 1) / 4) + 2 = 3 sliding blocks, twice for 2 sequences, and the
     * batch's 16 tokens once: 2 * 2 * 3 + 4 = 16 */
    assert_int_equal(pl.n_swa_blocks, 16);
    /* a budget: the sliding pool's bytes first, the rest to the full pool */
    const uint64_t budget = 16 * 2 * per_layer + 100 * per_layer + 7;
    assert_int_equal(shd_model_kv_pools(m, 4, budget, &pl, NULL), TDM_OK);
    assert_int_equal(pl.n_swa_blocks, 16);
    assert_int_equal(pl.n_blocks, 100);
    assert_int_equal(shd_model_kv_pools(m, 4, 30 * 3 * per_layer, &pl, NULL), TDM_OK);
    assert_int_equal(pl.n_swa_blocks, 16);
    assert_int_equal(pl.n_blocks, 30 * 3 - 16 * 2);
    /* below the sliding pool's want (16 blocks in both): the pools as large as each other */
    assert_int_equal(shd_model_kv_pools(m, 4, 14 * 3 * per_layer, &pl, NULL), TDM_OK);
    assert_int_equal(pl.n_blocks, 14);
    assert_int_equal(pl.n_swa_blocks, 14);
    /* below one batch (16 tokens + a block = 5 blocks) */
    tdm_error_t err = {0};
    assert_int_equal(shd_model_kv_pools(m, 4, 4 * 3 * per_layer, &pl, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "sliding-window layers' share included"));
    /* the full pool alone, as shd_model_kv_blocks reports it */
    int32_t nb;
    size_t bb;
    assert_int_equal(shd_model_kv_blocks(m, 4, 0, &nb, &bb, NULL), TDM_OK);
    assert_int_equal(nb, 512);
    assert_int_equal(bb, per_layer);
    shd_kv_config_t kc;
    assert_int_equal(shd_model_kv_pools(m, 4, 0, &pl, NULL), TDM_OK);
    shd_model_kv_config_pools(m, 4, &pl, &kc);
    assert_int_equal(kc.n_swa_blocks, 16);
    assert_int_equal(kc.layer_swa[0] + kc.layer_swa[1] * 2 + kc.layer_swa[2] * 4, 5);
    shd_model_destroy(m);
    kern_backend_destroy(be);
    gguf_close(g);
}

/* The same sequence through one pool and through the sliding pool (tables with released
 * blocks set to -1 and ids reused once released): the same logits, bit for bit. */
static void test_forward_through_sliding_pool(void **state)
{
    (void)state;
    enum { N = 23, BT = 2, CHUNK = 3, W = 5, NSWA = 6 };
    gguf_ctx_t *g = open_fixture("gpt-oss-b-f32.gguf");
    kern_backend_t *be = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 2, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &be, NULL), TDM_OK);
    shd_model_t *m = load(g, be, CHUNK, CHUNK, 64);
    const int32_t V = shd_model_hparams(m)->n_vocab;
    shd_kv_config_t one, two;
    shd_model_kv_config(m, BT, 16, &one);
    const shd_kv_pools_t pl = {.n_blocks = 16, .n_swa_blocks = NSWA};
    shd_model_kv_config_pools(m, BT, &pl, &two);
    shd_kv_cache_t *kv1 = NULL, *kv2 = NULL;
    assert_int_equal(shd_kv_cache_create(be, &one, &kv1, NULL), TDM_OK);
    assert_int_equal(shd_kv_cache_create(be, &two, &kv2, NULL), TDM_OK);
    int32_t tok[N], blocks[16], swa[16];
    for (int i = 0; i < N; i++) {
        tok[i] = (i * 37 + 5) % V;
    }
    for (int j = 0; j < 16; j++) {
        blocks[j] = 15 - j;
    }
    float *l1 = calloc((size_t)CHUNK * V, sizeof(float)), *l2 = calloc((size_t)CHUNK * V, 4);
    int32_t pos[CHUNK], sq[CHUNK] = {0};
    uint8_t want[CHUNK] = {1, 1, 1};
    int reused = 0;
    for (int c = 0; c < N; c += CHUNK) {
        const int n = c + CHUNK < N ? c + CHUNK : N;
        /* the sliding table: blocks of [max(0, c - W + 1), n), ids cycling through the
         * pool (a released block's id comes back), -1 below */
        const int lo = (c >= W ? c - W + 1 : 0) / BT;
        for (int j = 0; j < 16; j++) {
            swa[j] = j >= lo && j * BT < n ? (j * 5) % NSWA : -1;
            reused += j >= NSWA && swa[j] >= 0;
        }
        for (int i = c; i < n; i++) {
            pos[i - c] = i;
        }
        const shd_seq_view_t v1 = {blocks, 16, NULL, -1, -1, -1},
                             v2 = {blocks, 16, swa, -1, -1, -1};
        const shd_batch_t b1 = {n - c, tok + c, pos, sq, want, 1, &v1};
        const shd_batch_t b2 = {n - c, tok + c, pos, sq, want, 1, &v2};
        assert_int_equal(shd_forward(m, kv1, &b1, l1, NULL), TDM_OK);
        tdm_error_t err = {0};
        if (shd_forward(m, kv2, &b2, l2, &err) != TDM_OK) {
            fail_msg("chunk at %d: %s", c, err.msg);
        }
        assert_memory_equal(l1, l2, (size_t)(n - c) * V * sizeof(float));
    }
    assert_true(reused > 0);

    /* refusals: no sliding table, and a released block inside a window */
    int32_t p1[1] = {N}, t1[1] = {1};
    const shd_seq_view_t none = {blocks, 16, NULL, -1, -1, -1};
    const shd_batch_t bn = {1, t1, p1, sq, want, 1, &none};
    tdm_error_t err = {0};
    assert_int_equal(shd_forward(m, kv2, &bn, l2, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "no sliding-window block table"));
    for (int j = 0; j < 16; j++) {
        swa[j] = j == (N - W + 1) / BT ? -1 : j % NSWA; /* the window's first block */
    }
    const shd_seq_view_t hole = {blocks, 16, swa, -1, -1, -1};
    const shd_batch_t bh = {1, t1, p1, sq, want, 1, &hole};
    tdm_error_clear(&err);
    assert_int_equal(shd_forward(m, kv2, &bh, l2, &err), TDM_ERR_INVALID_PARAM);
    if (strstr(err.msg, "reads positions 19..23 of the sliding layers") == NULL) {
        fail_msg("%s", err.msg);
    }
    swa[(N - W + 1) / BT] = 1;
    swa[(N - W + 1) / BT - 1] = -1; /* below the window: fine */
    assert_int_equal(shd_forward(m, kv2, &bh, l2, NULL), TDM_OK);
    swa[N / BT] = NSWA; /* past the pool */
    assert_int_equal(shd_forward(m, kv2, &bh, l2, NULL), TDM_ERR_INVALID_PARAM);

    free(l1);
    free(l2);
    shd_kv_cache_destroy(kv1);
    shd_kv_cache_destroy(kv2);
    shd_model_destroy(m);
    kern_backend_destroy(be);
    gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_storage_layout_and_copy),
        cmocka_unit_test(test_sliding_pool_storage),
        cmocka_unit_test(test_pool_sizes_gpt_oss),
        cmocka_unit_test(test_forward_through_sliding_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
