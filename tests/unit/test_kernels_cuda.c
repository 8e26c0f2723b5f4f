/* test_kernels_cuda.c - CUDA kernels against their CPU oracles. Exits 77 (ctest: skipped)
 * with a message when the machine has no CUDA device; on a GPU machine every check runs. */
#include "kernels/cpu/vec.h"
#include "kernels/cuda/kern_cuda.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

static void test_rms_norm_matches_cpu(void **state)
{
    (void)state;
    const int shapes[][2] = {{1, 1}, {3, 576}, {7, 1000}, {16, 4096}, {2, 2880}};
    uint32_t s = 42;
    for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
        int rows = shapes[k][0], cols = shapes[k][1];
        size_t n = (size_t)rows * cols;
        float *x = malloc(n * sizeof(float)), *w = malloc((size_t)cols * sizeof(float));
        float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            s = s * 1664525u + 1013904223u;
            x[i] = (float)((s >> 9) & 0xFFFF) / 16384.0f - 2.0f;
        }
        for (int c = 0; c < cols; c++) {
            w[c] = 0.5f + (float)c / (float)cols;
        }
        kern_rms_norm_f32_ref(ref, x, w, rows, cols, 1e-6f);
        tdm_error_t err = {0};
        assert_int_equal(kern_cuda_rms_norm_f32_host(got, x, w, rows, cols, 1e-6f, &err), TDM_OK);
        for (size_t i = 0; i < n; i++) {
            assert_true(fabsf(got[i] - ref[i]) <= 1e-5f * (fabsf(ref[i]) + 1e-3f));
        }
        free(x);
        free(w);
        free(ref);
        free(got);
    }
}

int main(void)
{
    if (kern_cuda_device_count() == 0) {
        printf("skipped: no CUDA device visible on this machine\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rms_norm_matches_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
