/* test_common.c - status names, error recording, logging levels, CPU feature detection. */
#include "common/check.h"
#include "common/cpu_features.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/status.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_status_names_are_unique_and_set(void **state)
{
    (void)state;
    for (int i = 0; i < TDM_STATUS_COUNT; i++) {
        const char *a = tdm_status_str((tdm_status_t)i);
        assert_non_null(a);
        assert_string_not_equal(a, "unknown status");
        for (int j = 0; j < i; j++) {
            assert_string_not_equal(a, tdm_status_str((tdm_status_t)j));
        }
    }
    assert_string_equal(tdm_status_str((tdm_status_t)999), "unknown status");
}

static tdm_status_t fails_with_format(tdm_error_t *err, const char *name)
{
    return tdm_error_set(err, TDM_ERR_FORMAT, "%s: bad magic", name);
}

static void test_error_keeps_first_cause(void **state)
{
    (void)state;
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(err.status, TDM_OK);
    assert_int_equal(fails_with_format(&err, "a.gguf"), TDM_ERR_FORMAT);
    assert_string_equal(tdm_error_msg(&err), "a.gguf: bad magic");
    /* a second, outer report must not overwrite the first detection */
    tdm_error_set(&err, TDM_ERR_IO, "outer");
    assert_int_equal(err.status, TDM_ERR_FORMAT);
    assert_string_equal(tdm_error_msg(&err), "a.gguf: bad magic");
    /* NULL error pointers are allowed everywhere */
    assert_int_equal(fails_with_format(NULL, "x"), TDM_ERR_FORMAT);
    tdm_error_clear(&err);
    err.status = TDM_ERR_IO;
    assert_string_equal(tdm_error_msg(&err), "i/o error");
}

static tdm_status_t check_chain(int fail_at, int *reached)
{
    tdm_status_t st = TDM_OK;
    *reached = 0;
    TDM_CHECK_GOTO(fail_at == 1 ? TDM_ERR_IO : TDM_OK, st, out);
    *reached = 1;
    TDM_CHECK_GOTO(fail_at == 2 ? TDM_ERR_TIMEOUT : TDM_OK, st, out);
    *reached = 2;
out:
    return st;
}

static void test_check_goto(void **state)
{
    (void)state;
    int reached;
    assert_int_equal(check_chain(0, &reached), TDM_OK);
    assert_int_equal(reached, 2);
    assert_int_equal(check_chain(1, &reached), TDM_ERR_IO);
    assert_int_equal(reached, 0);
    assert_int_equal(check_chain(2, &reached), TDM_ERR_TIMEOUT);
    assert_int_equal(reached, 1);
}

static void test_log_levels(void **state)
{
    (void)state;
    tdm_log_level_t l;
    assert_int_equal(tdm_log_parse_level("debug", &l), 0);
    assert_int_equal(l, TDM_LOG_DEBUG);
    assert_int_equal(tdm_log_parse_level("verbose", &l), -1);
    tdm_log_level_t old = tdm_log_get_level();
    tdm_log_set_level(TDM_LOG_ERROR);
    assert_int_equal(tdm_log_get_level(), TDM_LOG_ERROR);
    tdm_log_set_level(old);
}

static void test_mul_size_overflow(void **state)
{
    (void)state;
    size_t out;
    assert_int_equal(tdm_mul_size(1u << 20, 1u << 10, &out), 0);
    assert_int_equal(out, (size_t)1 << 30);
    assert_int_equal(tdm_mul_size(SIZE_MAX / 2, 3, &out), -1);
    void *p = tdm_aligned_alloc(100);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    free(p);
}

static void test_cpu_features(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    assert_true(f.n_cpus >= 1);
#if defined(__aarch64__)
    assert_true(f.neon);
#endif
    if (f.avx512) {
        /* our avx512 level also needs the AVX2 kernels' instructions */
        assert_true(f.avx2);
    }
    char buf[256];
    tdm_cpu_features_str(&f, buf, sizeof(buf));
    assert_true(strlen(buf) > 0);
    /* a tiny buffer truncates cleanly */
    char tiny[4];
    tdm_cpu_features_str(&f, tiny, sizeof(tiny));
    assert_true(strlen(tiny) < sizeof(tiny));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names_are_unique_and_set),
        cmocka_unit_test(test_error_keeps_first_cause),
        cmocka_unit_test(test_check_goto),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_mul_size_overflow),
        cmocka_unit_test(test_cpu_features),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
