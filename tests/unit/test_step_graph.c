/* test_step_graph.c - the captured-step bookkeeping (kernels/step_graph.h): when a shape is
 * captured, replayed, dropped and evicted, and the fingerprint of a step's ops. */
#include "kernels/step_graph.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

static int g_freed;

static void free_exec(void *exec)
{
    (void)exec;
    g_freed++;
}

static void test_capture_then_replay(void **state)
{
    (void)state;
    g_freed = 0;
    kern_graph_cache_t *c = kern_graph_cache_create(2, 1, free_exec);
    const kern_graph_key_t k1 = {1, 1, 1}, k2 = {4, 4, 1}, k3 = {4, 4, 2};
    void *exec = NULL;
    uint64_t fp = 0;
    /* first sight: eager; second: capture; once stored: replay with its fingerprint */
    assert_int_equal(kern_graph_begin(c, &k1, &exec, &fp), KERN_GRAPH_EAGER);
    assert_int_equal(kern_graph_begin(c, &k1, &exec, &fp), KERN_GRAPH_CAPTURE);
    kern_graph_store(c, &k1, (void *)0x10, 77);
    assert_int_equal(kern_graph_begin(c, &k1, &exec, &fp), KERN_GRAPH_REPLAY);
    assert_ptr_equal(exec, (void *)0x10);
    assert_int_equal(fp, 77);
    /* a key that differs in the context bucket is another graph */
    assert_int_equal(kern_graph_begin(c, &k2, &exec, &fp), KERN_GRAPH_EAGER);
    assert_int_equal(kern_graph_begin(c, &k2, &exec, &fp), KERN_GRAPH_CAPTURE);
    kern_graph_store(c, &k2, (void *)0x20, 78);
    assert_int_equal(kern_graph_count(c), 2);
    /* a third graph evicts the least recently used (k1: k2 was used after it) */
    assert_int_equal(kern_graph_begin(c, &k3, &exec, &fp), KERN_GRAPH_EAGER);
    assert_int_equal(kern_graph_begin(c, &k3, &exec, &fp), KERN_GRAPH_CAPTURE);
    kern_graph_store(c, &k3, (void *)0x30, 79);
    assert_int_equal(g_freed, 1);
    assert_int_equal(kern_graph_count(c), 2);
    assert_int_equal(kern_graph_begin(c, &k2, &exec, &fp), KERN_GRAPH_REPLAY);
    /* k1 lost its graph but is known: captured again at once */
    assert_int_equal(kern_graph_begin(c, &k1, &exec, &fp), KERN_GRAPH_CAPTURE);
    /* a dropped key (mismatch, failed capture) stays eager and frees its graph */
    kern_graph_drop(c, &k2);
    assert_int_equal(g_freed, 2);
    assert_int_equal(kern_graph_begin(c, &k2, &exec, &fp), KERN_GRAPH_EAGER);
    assert_int_equal(kern_graph_begin(c, &k2, &exec, &fp), KERN_GRAPH_EAGER);
    kern_graph_clear(c);
    assert_int_equal(g_freed, 3);
    assert_int_equal(kern_graph_count(c), 0);
    kern_graph_cache_destroy(c);
    assert_int_equal(g_freed, 3);
}

static void test_many_shapes_stay_bounded(void **state)
{
    (void)state;
    g_freed = 0;
    kern_graph_cache_t *c = kern_graph_cache_create(4, 1, free_exec);
    void *exec = NULL;
    uint64_t fp = 0;
    for (int i = 0; i < 5000; i++) { /* one-off prefill shapes: never captured */
        const kern_graph_key_t k = {100 + i, 1, 1};
        assert_int_equal(kern_graph_begin(c, &k, &exec, &fp), KERN_GRAPH_EAGER);
    }
    const kern_graph_key_t d = {1, 1, 1};
    assert_int_equal(kern_graph_begin(c, &d, &exec, &fp), KERN_GRAPH_EAGER);
    assert_int_equal(kern_graph_begin(c, &d, &exec, &fp), KERN_GRAPH_CAPTURE);
    kern_graph_store(c, &d, (void *)0x1, 5);
    assert_int_equal(kern_graph_count(c), 1);
    kern_graph_cache_destroy(c);
    assert_int_equal(g_freed, 1);
}

static void test_fingerprint(void **state)
{
    (void)state;
    kern_fingerprint_t a, b;
    assert_true(kern_fingerprint_init(&a));
    assert_true(kern_fingerprint_init(&b));
    const int64_t args1[3] = {1, 2, 3}, args2[3] = {1, 2, 4};
    kern_fingerprint_add(&a, 5, args1, sizeof(args1));
    kern_fingerprint_add(&b, 5, args1, sizeof(args1));
    assert_int_equal(kern_fingerprint_value(&a), kern_fingerprint_value(&b));
    kern_fingerprint_add(&a, 6, args1, sizeof(args1));
    kern_fingerprint_add(&b, 6, args2, sizeof(args2));
    assert_int_not_equal(kern_fingerprint_value(&a), kern_fingerprint_value(&b));
    /* the op id counts, not just the bytes */
    kern_fingerprint_reset(&a);
    kern_fingerprint_reset(&b);
    kern_fingerprint_add(&a, 1, args1, sizeof(args1));
    kern_fingerprint_add(&b, 2, args1, sizeof(args1));
    assert_int_not_equal(kern_fingerprint_value(&a), kern_fingerprint_value(&b));
    kern_fingerprint_free(&a);
    kern_fingerprint_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capture_then_replay),
        cmocka_unit_test(test_many_shapes_stay_bounded),
        cmocka_unit_test(test_fingerprint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
