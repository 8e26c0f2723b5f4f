/* test_topo_layout.c - the engine-group layout rule (topology/topo_layout.c): one machine,
 * a replica too big for one machine (replicas impossible, said so), replicas at any stream
 * count (the measured rule), prompt-heavy loads on both sides of the prefill/decode ratio,
 * and a prompt-heavy load where prefill/decode cannot run (model or odd machines). */
#include "topology/topo_layout.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#define GIB (1ull << 30)

static topo_layout_in_t two_sparks(int streams, int prompt_tokens)
{
    return (topo_layout_in_t){.n_nodes = 2,
                              .node_bytes = 110 * GIB,
                              .replica_bytes = 70 * GIB,
                              .streams = streams,
                              .prompt_tokens = prompt_tokens,
                              .answer_tokens = 128,
                              .disagg_supported = true};
}

static bool notes_have(const topo_layout_t *l, const char *what)
{
    for (int i = 0; i < l->n_notes; i++) {
        if (strstr(l->notes[i], what) != NULL) {
            return true;
        }
    }
    return false;
}

static void test_one_machine(void **state)
{
    (void)state;
    topo_layout_in_t in = two_sparks(32, 0);
    in.n_nodes = 1;
    topo_layout_t l;
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_SINGLE);
    assert_int_equal(l.groups, 1);
    assert_int_equal(l.shards_per_group, 1);
    assert_string_equal(topo_layout_name(l.kind), "single");
}

static void test_too_big_for_one_machine(void **state)
{
    (void)state;
    topo_layout_in_t in = two_sparks(64, 0);
    in.replica_bytes = 180 * GIB; /* 2 machines of 110 GiB hold it split, not whole */
    topo_layout_t l;
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_SPLIT);
    assert_false(l.replicas_possible);
    assert_int_equal(l.groups, 1);
    assert_int_equal(l.shards_per_group, 2);
    assert_true(notes_have(&l, "replicas are impossible"));
    assert_true(notes_have(&l, "180.00 GiB"));
    /* also for a prompt-heavy load: prefill/decode groups are replicas of a kind */
    in.prompt_tokens = 4000;
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_SPLIT);
}

static void test_replicas_at_any_stream_count(void **state)
{
    (void)state;
    topo_layout_t l;
    const int streams[] = {1, 4, 5, 64, 0 /* not given */};
    for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
        topo_layout_in_t in = two_sparks(streams[i], 0);
        topo_layout_recommend(&in, &l);
        assert_int_equal(l.kind, TOPO_LAYOUT_REPLICAS);
        assert_true(l.replicas_possible);
        assert_int_equal(l.groups, 2);
        assert_int_equal(l.shards_per_group, 1);
        assert_true(notes_have(&l, "--routing prefix"));
        assert_true(notes_have(&l, "will idle") == (streams[i] == 1));
    }
    assert_string_equal(topo_layout_name(TOPO_LAYOUT_REPLICAS), "replicas");
    assert_string_equal(topo_layout_name(TOPO_LAYOUT_SPLIT), "split");
}

static void test_prompt_heavy(void **state)
{
    (void)state;
    topo_layout_t l;
    topo_layout_in_t in = two_sparks(32, 5 * 128);
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_PREFILL_DECODE);
    assert_int_equal(l.groups, 2);
    assert_string_equal(topo_layout_name(l.kind), "prefill-decode");
    in = two_sparks(32, 5 * 128 - 1); /* just under the ratio */
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_REPLICAS);
    assert_true(notes_have(&l, "would idle"));
    /* the generated tokens per turn scale the threshold */
    in = two_sparks(32, 5 * 512);
    in.answer_tokens = 512;
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_PREFILL_DECODE);
    in.prompt_tokens--;
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_REPLICAS);
}

static void test_prompt_heavy_without_disagg(void **state)
{
    (void)state;
    topo_layout_t l;
    topo_layout_in_t in = two_sparks(32, 4000);
    in.disagg_supported = false;
    in.disagg_why_not = "the model has sliding-window layers";
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_REPLICAS);
    assert_true(notes_have(&l, "sliding-window"));
    in = two_sparks(32, 4000);
    in.n_nodes = 3;
    topo_layout_recommend(&in, &l);
    assert_int_equal(l.kind, TOPO_LAYOUT_REPLICAS);
    assert_int_equal(l.groups, 3);
    assert_true(notes_have(&l, "odd"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_machine),
        cmocka_unit_test(test_too_big_for_one_machine),
        cmocka_unit_test(test_replicas_at_any_stream_count),
        cmocka_unit_test(test_prompt_heavy),
        cmocka_unit_test(test_prompt_heavy_without_disagg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
