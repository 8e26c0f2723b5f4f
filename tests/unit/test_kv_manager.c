/* test_kv_manager.c - KV block accounting, prefix sharing, LRU eviction and exhaustion. */
#include "coordinator/kv_manager.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define BS 16

static crd_kvm_t *make(int32_t n_blocks)
{
    crd_kvm_t *kvm = NULL;
    assert_int_equal(crd_kvm_create(n_blocks, BS, 42, &kvm, NULL), TDM_OK);
    return kvm;
}

static void fill(int32_t *t, int32_t n, int32_t base)
{
    for (int32_t i = 0; i < n; i++) {
        t[i] = base + i * 7 % 1000;
    }
}

/* Runs a prompt through: create, reserve, commit. */
static crd_kv_seq_t *run_prompt(crd_kvm_t *kvm, const int32_t *t, int32_t n, int32_t *cached)
{
    crd_kv_seq_t *s = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, n, &s, cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, s, n), TDM_OK);
    crd_kvm_seq_commit(kvm, s, t, n);
    return s;
}

static void check_accounting(crd_kvm_t *kvm)
{
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_free + st.n_cached_idle + st.n_used, st.n_blocks);
    assert_int_equal(crd_kvm_available(kvm), st.n_free + st.n_cached_idle);
}

static void test_shared_prefix_reuses_blocks(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(16);
    int32_t t[40], cached;
    fill(t, 40, 1);
    crd_kv_seq_t *a = run_prompt(kvm, t, 40, &cached);
    assert_int_equal(cached, 0);
    int32_t na, nb;
    const int32_t *ba = crd_kvm_seq_blocks(a, &na);
    assert_int_equal(na, 3);

    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32); /* two full blocks; the third is partial */
    const int32_t *bb = crd_kvm_seq_blocks(b, &nb);
    assert_int_equal(nb, 2);
    assert_int_equal(bb[0], ba[0]);
    assert_int_equal(bb[1], ba[1]);
    assert_int_equal(crd_kvm_seq_blocks_needed(kvm, b, 41), 1);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 41), TDM_OK);
    bb = crd_kvm_seq_blocks(b, &nb);
    assert_int_not_equal(bb[2], ba[2]); /* never writes into a shared block */

    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_used, 4);
    assert_int_equal(st.prefix_queries, 80);
    assert_int_equal(st.prefix_hits, 32);
    check_accounting(kvm);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_used, 0);
    assert_int_equal(st.n_cached_idle, 2);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

static void test_last_prompt_token_is_always_computed(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(8);
    int32_t t[32], cached;
    fill(t, 32, 5);
    crd_kv_seq_t *a = run_prompt(kvm, t, 32, &cached);
    crd_kv_seq_t *b = NULL;
    /* exactly two full blocks cached, but the 32nd token must be computed: one block reused */
    assert_int_equal(crd_kvm_seq_create(kvm, t, 32, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 16);
    crd_kvm_seq_free(kvm, b);
    /* a 33-token prompt with the same start reuses both */
    int32_t u[33];
    memcpy(u, t, sizeof(t));
    u[32] = 9;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 33, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_destroy(kvm);
}

static void test_prefix_must_match_from_the_start(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(16);
    int32_t t[50], u[50], cached;
    fill(t, 50, 1);
    crd_kv_seq_t *a = run_prompt(kvm, t, 50, &cached);
    memcpy(u, t, sizeof(u));
    u[20] = -1; /* differs in block 1 */
    crd_kv_seq_t *b = run_prompt(kvm, u, 50, &cached);
    assert_int_equal(cached, 16);
    memcpy(u, t, sizeof(u));
    u[0] = -1; /* differs in block 0: blocks 1, 2 have equal tokens but a different prefix */
    crd_kv_seq_t *c = run_prompt(kvm, u, 50, &cached);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_seq_free(kvm, c);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

static void test_exhaustion_and_lru_eviction(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(4);
    int32_t t[64], u[64], cached;
    fill(t, 64, 1);
    fill(u, 64, 5000);
    crd_kv_seq_t *a = run_prompt(kvm, t, 64, &cached); /* all 4 blocks, all cached */
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 64, &b, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 1), TDM_ERR_BUSY); /* nothing free */
    int32_t nb;
    crd_kvm_seq_blocks(b, &nb);
    assert_int_equal(nb, 0); /* unchanged on failure */

    crd_kvm_seq_free(kvm, a); /* 4 idle cached blocks */
    assert_int_equal(crd_kvm_available(kvm), 4);
    /* one new block evicts the deepest block of a's prefix first */
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 1), TDM_OK);
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.evictions, 1);
    crd_kv_seq_t *c = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 64, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 48); /* blocks 0..2 survive (max reuse is 3 anyway: 63/16) */
    crd_kvm_seq_free(kvm, c);
    /* take everything: all cached blocks are evicted */
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 64), TDM_OK);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 64, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, c);
    crd_kvm_seq_free(kvm, b);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

static void test_concurrent_duplicate_prefix(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(8);
    int32_t t[33], ca, cb;
    fill(t, 33, 3);
    crd_kv_seq_t *a = NULL, *b = NULL;
    /* both start before either has computed anything */
    assert_int_equal(crd_kvm_seq_create(kvm, t, 33, &a, &ca, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 33, &b, &cb, NULL), TDM_OK);
    assert_int_equal(ca + cb, 0);
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 33), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 33), TDM_OK);
    crd_kvm_seq_commit(kvm, a, t, 33);
    crd_kvm_seq_commit(kvm, b, t, 33);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_cached_idle, 2); /* one canonical copy of the 2 full blocks */
    assert_int_equal(st.n_free, 6);
    crd_kvm_destroy(kvm);
}

static void test_random_operations_keep_accounting(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(24);
    crd_kv_seq_t *seqs[6] = {0};
    int32_t toks[6][200], len[6] = {0};
    uint32_t r = 7;
    for (int step = 0; step < 3000; step++) {
        r = r * 1103515245u + 12345u;
        int i = (int)((r >> 16) % 6);
        int32_t cached;
        if (seqs[i] == NULL) {
            /* prompts share one of three stems so that prefixes really repeat */
            len[i] = 10 + (int32_t)((r >> 8) % 60);
            fill(toks[i], len[i], 100 * (int32_t)((r >> 4) % 3));
            assert_int_equal(crd_kvm_seq_create(kvm, toks[i], len[i], &seqs[i], &cached, NULL),
                             TDM_OK);
            assert_true(cached < len[i] && cached % BS == 0);
        } else if ((r >> 20) % 4 == 0 || len[i] >= 190) {
            crd_kvm_seq_free(kvm, seqs[i]);
            seqs[i] = NULL;
        } else {
            tdm_status_t st = crd_kvm_seq_reserve(kvm, seqs[i], len[i] + 1);
            if (st == TDM_OK) {
                toks[i][len[i]] = (int32_t)(r % 50);
                len[i]++;
                crd_kvm_seq_commit(kvm, seqs[i], toks[i], len[i]);
            } else {
                assert_int_equal(st, TDM_ERR_BUSY);
            }
        }
        check_accounting(kvm);
    }
    for (int i = 0; i < 6; i++) {
        crd_kvm_seq_free(kvm, seqs[i]);
    }
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_used, 0);
    crd_kvm_destroy(kvm);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    crd_kvm_t *kvm = NULL;
    tdm_error_t err = {0};
    assert_int_equal(crd_kvm_create(0, 16, 0, &kvm, &err), TDM_ERR_INVALID_PARAM);
    assert_int_equal(crd_kvm_create(4, 0, 0, &kvm, NULL), TDM_ERR_INVALID_PARAM);
    kvm = make(2);
    crd_kv_seq_t *s = NULL;
    int32_t cached;
    assert_int_equal(crd_kvm_seq_create(kvm, NULL, 5, &s, &cached, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(crd_kvm_seq_create(kvm, NULL, 0, &s, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, s);
    crd_kvm_seq_free(kvm, NULL);
    crd_kvm_destroy(kvm);
    crd_kvm_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_prefix_reuses_blocks),
        cmocka_unit_test(test_last_prompt_token_is_always_computed),
        cmocka_unit_test(test_prefix_must_match_from_the_start),
        cmocka_unit_test(test_exhaustion_and_lru_eviction),
        cmocka_unit_test(test_concurrent_duplicate_prefix),
        cmocka_unit_test(test_random_operations_keep_accounting),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
