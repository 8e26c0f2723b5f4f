/* test_shard_comm.c - in-process collectives (transport/local_comm.c): all-reduce and
 * all-gather over the TP, EP and world groups of a 2 x 2 world, bit-identical results on
 * every rank, and abort waking blocked ranks. */
#include "transport/local_comm.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

enum { TP = 2, EP = 2, W = TP * EP, N = 5 };

typedef struct rank_arg {
    xp_local_world_t *w;
    int rank;
    float tp_sum[N], ep_sum[N], world_sum[N], gathered[TP * N];
    tdm_status_t st;
} rank_arg_t;

static float val(int rank, int i)
{
    return (float)(rank * 10 + i) + 0.1f;
}

static void *rank_fn(void *p)
{
    rank_arg_t *a = p;
    shd_comm_t c = xp_local_comm(a->w, a->rank);
    float mine[N];
    for (int i = 0; i < N; i++) {
        mine[i] = a->tp_sum[i] = a->ep_sum[i] = a->world_sum[i] = val(a->rank, i);
    }
    a->st = c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_TP, a->tp_sum, N, NULL);
    if (a->st == TDM_OK) {
        a->st = c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_EP, a->ep_sum, N, NULL);
    }
    if (a->st == TDM_OK) {
        a->st = c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_WORLD, a->world_sum, N, NULL);
    }
    if (a->st == TDM_OK) {
        a->st = c.ops->all_gather_f32(c.impl, SHD_GROUP_TP, mine, N, a->gathered, NULL);
    }
    return NULL;
}

static void test_groups(void **state)
{
    (void)state;
    xp_local_world_t *w;
    assert_int_equal(xp_local_world_create(TP, EP, &w, NULL), TDM_OK);
    rank_arg_t args[W];
    pthread_t th[W];
    for (int r = 0; r < W; r++) {
        args[r].w = w;
        args[r].rank = r;
        assert_int_equal(pthread_create(&th[r], NULL, rank_fn, &args[r]), 0);
    }
    for (int r = 0; r < W; r++) {
        pthread_join(th[r], NULL);
        assert_int_equal(args[r].st, TDM_OK);
    }
    for (int r = 0; r < W; r++) {
        const int tp_rank = r % TP, ep_rank = r / TP;
        for (int i = 0; i < N; i++) {
            float tp = val(ep_rank * TP, i) + val(ep_rank * TP + 1, i);
            float ep = val(tp_rank, i) + val(TP + tp_rank, i);
            float all = ((val(0, i) + val(1, i)) + val(2, i)) + val(3, i);
            assert_true(args[r].tp_sum[i] == tp);
            assert_true(args[r].ep_sum[i] == ep);
            assert_true(args[r].world_sum[i] == all);
            for (int q = 0; q < TP; q++) {
                assert_true(args[r].gathered[q * N + i] == val(ep_rank * TP + q, i));
            }
        }
        assert_memory_equal(args[r].world_sum, args[0].world_sum, sizeof(args[0].world_sum));
    }
    xp_local_world_destroy(w);
}

static void *lonely_fn(void *p)
{
    rank_arg_t *a = p;
    shd_comm_t c = xp_local_comm(a->w, a->rank);
    a->st = c.ops->all_reduce_sum_f32(c.impl, SHD_GROUP_WORLD, a->world_sum, N, NULL);
    return NULL;
}

static void test_abort_wakes_waiters(void **state)
{
    (void)state;
    xp_local_world_t *w;
    assert_int_equal(xp_local_world_create(2, 1, &w, NULL), TDM_OK);
    rank_arg_t a = {.w = w, .rank = 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, lonely_fn, &a), 0);
    /* rank 1 never arrives; aborting must release rank 0 */
    xp_local_world_abort(w);
    pthread_join(th, NULL);
    assert_int_equal(a.st, TDM_ERR_CANCELED);
    xp_local_world_destroy(w);
    assert_int_equal(xp_local_world_create(0, 1, &w, NULL), TDM_ERR_INVALID_PARAM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_abort_wakes_waiters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
