/* test_weights_plan.c - the weight store of a copying backend (kernels/weights_plan.c): the
 * compact placement of every view (column slices, expert stacks, vectors), a view inside
 * another sharing its copy, and the chunked copy through two staging buffers with the
 * source released behind each piece, with host memory standing in for the GPU. */
#include "common/check.h"
#include "kernels/kern_backend_impl.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

typedef struct sink_state {
    int copies, waits_pending;
    int pending[2];
    size_t max_chunk;
} sink_state_t;

static tdm_status_t fake_copy(void *arg, int slot, void *dst, size_t n, tdm_error_t *err);
static tdm_status_t fake_wait(void *arg, int slot, tdm_error_t *err);

static unsigned char g_stage[2][100];

static tdm_status_t fake_copy(void *arg, int slot, void *dst, size_t n, tdm_error_t *err)
{
    (void)err;
    sink_state_t *s = arg;
    assert_int_equal(s->pending[slot], 0); /* the slot was waited for before refilling */
    memcpy(dst, g_stage[slot], n);
    s->pending[slot] = 1;
    s->copies++;
    s->max_chunk = n > s->max_chunk ? n : s->max_chunk;
    return TDM_OK;
}

static tdm_status_t fake_wait(void *arg, int slot, tdm_error_t *err)
{
    (void)err;
    sink_state_t *s = arg;
    s->pending[slot] = 0;
    return TDM_OK;
}

/* what was released: one byte per source byte */
static unsigned char *g_src_base;
static unsigned char g_released[8192];

static void on_release(void *arg, const void *src, size_t n)
{
    (void)arg;
    const size_t off = (size_t)((const unsigned char *)src - g_src_base);
    assert_true(off + n <= sizeof(g_released));
    memset(g_released + off, 1, n);
}

static void test_plan_and_copy(void **state)
{
    (void)state;
    /* one "file": a Q8_0 matrix 6 x 64 (68-byte rows), 3 experts of 2 x 64, a vector */
    unsigned char *file = malloc(4096);
    g_src_base = file;
    memset(g_released, 0, sizeof(g_released));
    for (int i = 0; i < 4096; i++) {
        file[i] = (unsigned char)(i * 7 + 3);
    }
    const size_t rb = tdm_type_row_size(TDM_TYPE_Q8_0, 64); /* 68 */
    kern_weight_t full = {TDM_TYPE_Q8_0, 64, 6, rb, file};
    /* columns [32, 64) of rows 1..4: a TP slice (34 of 68 bytes a row) */
    kern_weight_t slice = {TDM_TYPE_Q8_0, 32, 4, rb, file + rb + 34};
    /* rows 2..3 of the full matrix: inside it (a tied output head) */
    kern_weight_t inner = {TDM_TYPE_Q8_0, 64, 2, rb, file + 2 * rb};
    /* experts 1..2 of 3 x (2 x 64), each 2 rows */
    unsigned char *ex = file + 1024;
    kern_weight_t exps = {TDM_TYPE_Q8_0, 64, 2, rb, ex + 2 * rb};
    size_t stride = 2 * rb;
    const float *vec = (const float *)(file + 2048);
    kern_weight_ref_t refs[5] = {
        {.w = &full, .n_mats = 1},    {.w = &slice, .n_mats = 1},
        {.w = &inner, .n_mats = 1},   {.w = &exps, .n_mats = 2, .stride = &stride},
        {.vec = &vec, .vec_len = 10},
    };
    kern_weight_place_t pl[5];
    uint64_t total = 0;
    assert_int_equal(kern_weights_plan(refs, 5, 64, pl, &total, NULL), TDM_OK);
    assert_int_equal(pl[0].bytes, 6 * rb);
    assert_int_equal(pl[1].bytes, 4 * 34); /* compact: the slice's bytes only */
    assert_int_equal(pl[1].slice_bytes, 34);
    assert_int_equal(pl[2].alias_of, 0); /* shares the full matrix's copy */
    assert_int_equal(pl[2].alias_off, 2 * rb);
    assert_int_equal(pl[2].bytes, 0);
    assert_int_equal(pl[3].bytes, 2 * 2 * rb);
    assert_int_equal(pl[4].bytes, 40);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(pl[i].offset % 64, 0);
        if (i != 2) {
            assert_int_equal(pl[i].alias_of, -1);
        }
    }
    assert_int_equal(total, pl[4].offset + 40);

    unsigned char *dev = calloc(1, (size_t)total);
    sink_state_t ss = {0, 0, {0, 0}, 0};
    kern_copy_sink_t sink = {
        &ss, {g_stage[0], g_stage[1]}, sizeof(g_stage[0]), fake_copy, fake_wait};
    assert_int_equal(kern_weights_copy(refs, 5, pl, dev, &sink, on_release, NULL, NULL), TDM_OK);
    assert_true(ss.copies > 10); /* 100-byte chunks */
    assert_int_equal(ss.max_chunk, 100);
    kern_weights_rebind(refs, 5, pl, dev);
    /* every view now reads the same bytes from the copy, rows compact */
    for (int r = 0; r < 6; r++) {
        assert_memory_equal((const unsigned char *)full.data + r * full.row_bytes, file + r * rb,
                            rb);
    }
    assert_int_equal(slice.row_bytes, 34);
    for (int r = 0; r < 4; r++) {
        assert_memory_equal((const unsigned char *)slice.data + r * 34, file + (r + 1) * rb + 34,
                            34);
    }
    assert_ptr_equal(inner.data, dev + pl[0].offset + 2 * rb);
    assert_int_equal(stride, 2 * rb);
    for (int e = 0; e < 2; e++) {
        assert_memory_equal((const unsigned char *)exps.data + e * stride, ex + (e + 1) * 2 * rb,
                            2 * rb);
    }
    assert_memory_equal(vec, file + 2048, 40);
    /* released: every source byte read, and nothing else */
    for (size_t i = 0; i < 4096; i++) {
        bool read =
            i < 6 * rb || (i >= 1024 + 2 * rb && i < 1024 + 6 * rb) || (i >= 2048 && i < 2088);
        assert_int_equal(g_released[i], read ? 1 : 0);
    }
    free(dev);
    free(file);
}

static void test_bad_view(void **state)
{
    (void)state;
    unsigned char buf[256] = {0};
    kern_weight_t w = {TDM_TYPE_Q8_0, 32, 2, 34, buf};
    kern_weight_ref_t r = {.w = &w, .n_mats = 0};
    kern_weight_place_t pl;
    uint64_t total;
    tdm_error_t err = {0};
    assert_int_equal(kern_weights_plan(&r, 1, 64, &pl, &total, &err), TDM_ERR_INTERNAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_and_copy),
        cmocka_unit_test(test_bad_view),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
