/* test_backend_api.c - choosing a backend: the --device grammar, TANDEM_DEVICE, auto's
 * fallback and its reason, the KV type rule, the KV layout's sizes and refusals, and the
 * sticky error of ops (kernels/kern_backend.h). */
#include "kernels/kern_backend.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_device_grammar(void **state)
{
    (void)state;
    kern_device_kind_t kind;
    int idx;
    bool autop;
    assert_int_equal(kern_device_parse("cpu", &kind, &idx, &autop, NULL), TDM_OK);
    assert_int_equal(kind, KERN_DEVICE_CPU);
    assert_false(autop);
    assert_int_equal(kern_device_parse(NULL, &kind, &idx, &autop, NULL), TDM_OK);
    assert_true(autop);
    assert_int_equal(kern_device_parse("auto", &kind, &idx, &autop, NULL), TDM_OK);
    assert_true(autop && kind == KERN_DEVICE_CUDA);
    assert_int_equal(kern_device_parse("cuda", &kind, &idx, &autop, NULL), TDM_OK);
    assert_true(kind == KERN_DEVICE_CUDA && idx == 0 && !autop);
    assert_int_equal(kern_device_parse("cuda:3", &kind, &idx, &autop, NULL), TDM_OK);
    assert_int_equal(idx, 3);
    const char *bad[] = {"",        "gpu",        "cuda:", "cuda:x", "cuda:-1",
                         "cuda:1x", "cuda:99999", "cudax", "CPU",    "cuda:1:2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tdm_error_t err = {0};
        assert_int_equal(kern_device_parse(bad[i], &kind, &idx, &autop, &err),
                         TDM_ERR_INVALID_PARAM);
        assert_non_null(strstr(err.msg, "device"));
    }
}

static void test_cpu_backend_and_auto(void **state)
{
    (void)state;
    kern_backend_t *be = NULL;
    kern_backend_params_t p = {.device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&p, &be, NULL), TDM_OK);
    assert_int_equal(kern_be_kind(be), KERN_DEVICE_CPU);
    assert_true(kern_be_host_memory(be));
    assert_non_null(kern_be_cpu_ctx(be));
    assert_string_equal(kern_be_fallback_reason(be), "");
    assert_non_null(strstr(kern_be_describe(be), "cpu ("));
    uint64_t free_b = 0, total_b = 0;
    assert_int_equal(kern_be_mem_info(be, &free_b, &total_b, NULL), TDM_OK);
    assert_true(free_b > 0 && total_b >= free_b);
    kern_be_stats_t st;
    kern_be_stats(be, &st);
    assert_int_equal(st.graph_captures + st.graph_replays + st.graph_drops, 0);
    kern_backend_destroy(be);

    if (kern_gpu_count() > 0) {
        return; /* auto would pick the GPU: the fallback is for machines without one */
    }
    /* auto without a usable GPU: the CPU, and the reason why */
    p.device = "auto";
    assert_int_equal(kern_backend_create(&p, &be, NULL), TDM_OK);
    assert_int_equal(kern_be_kind(be), KERN_DEVICE_CPU);
    assert_true(strlen(kern_be_fallback_reason(be)) > 0);
    kern_backend_destroy(be);
    /* an explicit cuda that cannot be had is an error naming why */
    p.device = "cuda";
    tdm_error_t err = {0};
    tdm_status_t s = kern_backend_create(&p, &be, &err);
    assert_true(s == TDM_ERR_DEVICE || s == TDM_ERR_UNSUPPORTED);
    assert_true(strstr(err.msg, "CUDA") != NULL);
    /* TANDEM_DEVICE is the default when no device is given */
    setenv("TANDEM_DEVICE", "cuda:5", 1);
    p.device = NULL;
    tdm_error_clear(&err);
    assert_int_not_equal(kern_backend_create(&p, &be, &err), TDM_OK);
    setenv("TANDEM_DEVICE", "cpu", 1);
    assert_int_equal(kern_backend_create(&p, &be, NULL), TDM_OK);
    assert_string_equal(kern_be_fallback_reason(be), "");
    kern_backend_destroy(be);
    unsetenv("TANDEM_DEVICE");
}

static void test_kv_type_and_layout(void **state)
{
    (void)state;
    kern_backend_t *be = NULL;
    const kern_backend_params_t p = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&p, &be, NULL), TDM_OK);
    tdm_type_t t;
    assert_int_equal(kern_kv_type_resolve(NULL, be, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_F32); /* the CPU's default */
    assert_int_equal(kern_kv_type_resolve("auto", be, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_F32);
    assert_int_equal(kern_kv_type_resolve("f16", be, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_F16);
    assert_int_equal(kern_kv_type_resolve("Q8_0", be, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_Q8_0);
    tdm_error_t err = {0};
    assert_int_equal(kern_kv_type_resolve("q4_0", be, &t, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "f32, f16, q8_0"));
    kern_backend_destroy(be);

    kern_kv_layout_t l = {TDM_TYPE_Q8_0, 2, 128, 16, 10, 0, 0, false};
    assert_int_equal(kern_kv_layout_init(&l, NULL), TDM_OK);
    assert_int_equal(l.row_bytes, 4 * 34);
    assert_int_equal(l.block_bytes, 2 * 16 * 4 * 34);
    l.type = TDM_TYPE_F16;
    assert_int_equal(kern_kv_layout_init(&l, NULL), TDM_OK);
    assert_int_equal(l.row_bytes, 256);
    l.type = TDM_TYPE_Q8_0;
    l.head_dim = 80;
    tdm_error_clear(&err);
    assert_int_equal(kern_kv_layout_init(&l, &err), TDM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "--kv-type f16"));
    l.type = TDM_TYPE_BF16;
    assert_int_equal(kern_kv_layout_init(&l, NULL), TDM_ERR_UNSUPPORTED);
}

/* An op that fails keeps its error until the step ends; later ops are skipped. */
static void test_sticky_error(void **state)
{
    (void)state;
    kern_backend_t *be = NULL;
    const kern_backend_params_t p = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&p, &be, NULL), TDM_OK);
    const kern_reserve_t r = {.n_tok = 2,
                              .n_out = 2,
                              .n_ctx = 4,
                              .max_cols = 32,
                              .max_rows = 4,
                              .n_head = 1,
                              .head_dim = 8,
                              .n_embd = 32};
    assert_int_equal(kern_be_reserve(be, &r, NULL), TDM_OK);
    /* a weight type without kernels (I8) makes the product fail */
    int8_t wbuf[4 * 32] = {0};
    kern_weight_t w = {TDM_TYPE_I8, 32, 4, 32, wbuf};
    float x[64] = {0}, y[8] = {0}, z[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    const int32_t tok[2] = {0, 0}, pos[2] = {0, 1}, seq[2] = {0, 0}, out[2] = {0, 1};
    const int32_t blocks[1] = {0};
    const kern_seq_t sq = {blocks, 1, NULL, -1, -1, -1};
    const kern_step_t st = {2, tok, pos, seq, 1, &sq, 2, out};
    kern_be_step_begin(be, &st, false);
    const kern_matmul_op_t op = {&w, x, 32, y, 4};
    kern_be_matmul(be, 1, &op, 2);
    kern_be_add(be, z, z, z, 8); /* skipped: z stays 1 */
    bool rerun = true;
    tdm_error_t err = {0};
    assert_int_not_equal(kern_be_step_end(be, &rerun, &err), TDM_OK);
    assert_false(rerun);
    assert_true(strlen(err.msg) > 0);
    assert_true(z[0] == 1.0f);
    /* reported once: the next step starts clean */
    kern_be_step_begin(be, &st, false);
    kern_be_add(be, z, z, z, 8);
    assert_int_equal(kern_be_step_end(be, &rerun, NULL), TDM_OK);
    assert_true(z[0] == 2.0f);
    kern_backend_destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_grammar),
        cmocka_unit_test(test_cpu_backend_and_auto),
        cmocka_unit_test(test_kv_type_and_layout),
        cmocka_unit_test(test_sticky_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
