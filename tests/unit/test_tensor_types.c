/* test_tensor_types.c - the traits table matches the GGUF spec's block sizes. */
#include "model/tensor_types.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void test_known_block_layouts(void **state)
{
    (void)state;
    /* (id, elements per block, bytes per block) from the GGUF reference table */
    static const uint32_t expect[][3] = {
        {0, 1, 4},      {1, 1, 2},      {2, 32, 18},    {3, 32, 20},    {6, 32, 22},
        {7, 32, 24},    {8, 32, 34},    {10, 256, 84},  {11, 256, 110}, {12, 256, 144},
        {13, 256, 176}, {14, 256, 210}, {15, 256, 292}, {20, 32, 18},   {23, 256, 136},
        {30, 1, 2},     {39, 32, 17},
    };
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        const tdm_type_traits_t *t = tdm_type_traits(expect[i][0]);
        assert_non_null(t->name);
        assert_int_equal(t->blck, expect[i][1]);
        assert_int_equal(t->size, expect[i][2]);
    }
}

static void test_retired_and_unknown_ids(void **state)
{
    (void)state;
    const uint32_t retired[] = {4, 5, 31, 32, 33, 36, 37, 38, 40, 1000, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof(retired) / sizeof(retired[0]); i++) {
        assert_false(tdm_type_known(retired[i]));
        assert_string_equal(tdm_type_name(retired[i]), "unknown");
        assert_int_equal(tdm_type_row_size(retired[i], 256), 0);
    }
}

static void test_row_size_and_names(void **state)
{
    (void)state;
    assert_int_equal(tdm_type_row_size(TDM_TYPE_Q4_K, 4096), 16 * 144);
    assert_int_equal(tdm_type_row_size(TDM_TYPE_Q4_K, 100), 0); /* not a multiple of 256 */
    assert_int_equal(tdm_type_row_size(TDM_TYPE_F16, 3), 6);
    assert_int_equal(tdm_type_row_size(TDM_TYPE_F32, -1), 0);
    assert_int_equal(tdm_type_from_name("q4_k"), TDM_TYPE_Q4_K);
    assert_int_equal(tdm_type_from_name("MXFP4"), TDM_TYPE_MXFP4);
    assert_int_equal(tdm_type_from_name("q9_9"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_block_layouts),
        cmocka_unit_test(test_retired_and_unknown_ids),
        cmocka_unit_test(test_row_size_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
