/* test_topo_plan.c - the memory plan (topology/topo_plan.c): greedy largest-first bin
 * packing, size parsing, and the partition checked against the shard loader itself: every
 * fixture model is bound with shd_model_load on every rank of every tp x ep split, and
 * the plan's ranges and per-class weight bytes must equal what the loader binds (the
 * plan reproduces shard/model.c; this test keeps the two from drifting apart). */
#include "shard/shd_internal.h"
#include "topology/topo_plan.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---- bin packing and sizes ----------------------------------------------------------- */

static void test_lpt(void **state)
{
    (void)state;
    const uint64_t bytes[] = {3, 5, 4, 5, 3, 4, 3};
    int bin[7];
    uint64_t load[3];
    assert_int_equal(topo_lpt_assign(bytes, 7, 3, bin, load, NULL), TDM_OK);
    /* 5,5,4,4,3,3,3 -> bins {5,3,3} {5,3} {4,4}: 11, 8, 8. */
    assert_int_equal(bin[1], 0);
    assert_int_equal(bin[3], 1);
    assert_int_equal(bin[2], 2);
    assert_int_equal(bin[5], 2);
    uint64_t sum = 0;
    for (int b = 0; b < 3; b++) {
        sum += load[b];
    }
    assert_true(sum == 27);
    assert_true(load[0] == 11 && load[1] == 8 && load[2] == 8);

    /* Equal items spread evenly, and the spread never exceeds the largest item. */
    uint64_t eq[10];
    int bin2[10];
    uint64_t l2[4];
    for (int i = 0; i < 10; i++) {
        eq[i] = 7;
    }
    assert_int_equal(topo_lpt_assign(eq, 10, 4, bin2, l2, NULL), TDM_OK);
    assert_true(l2[0] == 21 && l2[1] == 21 && l2[2] == 14 && l2[3] == 14);

    uint64_t rnd[200];
    int bin3[200];
    uint64_t l3[5];
    uint64_t x = 12345, mx = 0;
    for (int i = 0; i < 200; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        rnd[i] = (x >> 33) % 100000 + 1;
        mx = rnd[i] > mx ? rnd[i] : mx;
    }
    assert_int_equal(topo_lpt_assign(rnd, 200, 5, bin3, l3, NULL), TDM_OK);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int b = 0; b < 5; b++) {
        lo = l3[b] < lo ? l3[b] : lo;
        hi = l3[b] > hi ? l3[b] : hi;
    }
    assert_true(hi - lo <= mx);
    assert_int_equal(topo_lpt_assign(rnd, 3, 0, bin3, l3, NULL), TDM_ERR_INVALID_PARAM);
}

static void test_sizes(void **state)
{
    (void)state;
    uint64_t v;
    assert_true(topo_parse_size("1048576", &v) && v == 1048576);
    assert_true(topo_parse_size("512M", &v) && v == 512ull << 20);
    assert_true(topo_parse_size("2G", &v) && v == 2ull << 30);
    assert_true(topo_parse_size("1.5GiB", &v) && v == 3ull << 29);
    assert_true(topo_parse_size("4k", &v) && v == 4096);
    assert_true(topo_parse_size("1T", &v) && v == 1ull << 40);
    assert_true(topo_parse_size("100B", &v) && v == 100);
    assert_false(topo_parse_size("", &v));
    assert_false(topo_parse_size("G", &v));
    assert_false(topo_parse_size("12X", &v));
    assert_false(topo_parse_size("-1G", &v));
    assert_false(topo_parse_size(" 1G", &v));
    assert_false(topo_parse_size("1G extra", &v));
}

/* ---- the plan against the loader ----------------------------------------------------- */

static const shd_comm_ops_t no_ops = {"none", false, NULL, NULL}; /* loading makes no calls */

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

static uint64_t wbytes(const kern_weight_t *w)
{
    return (uint64_t)w->n_rows * tdm_type_row_size(w->type, w->n_cols);
}

/* Weight bytes per class as the loader bound them on this rank. */
static void loader_bytes(const shd_model_t *m, uint64_t out[TOPO_CLASS_COUNT])
{
    memset(out, 0, TOPO_CLASS_COUNT * sizeof(uint64_t));
    for (int il = 0; il < m->hp.n_layer; il++) {
        const shd_layer_t *L = &m->layers[il];
        out[TOPO_CLASS_ATTENTION] +=
            wbytes(&L->wq) + wbytes(&L->wk) + wbytes(&L->wv) + wbytes(&L->wo);
        if (!L->is_moe) {
            out[TOPO_CLASS_DENSE_FFN] +=
                wbytes(&L->ffn_gate) + wbytes(&L->ffn_up) + wbytes(&L->ffn_down);
        } else {
            out[TOPO_CLASS_EXPERTS] +=
                (uint64_t)m->n_exp_l *
                (wbytes(&L->gate_exps.w) + wbytes(&L->up_exps.w) + wbytes(&L->down_exps.w));
        }
    }
    if (!m->hp.tied_output) {
        out[TOPO_CLASS_OUTPUT] = wbytes(&m->output);
    }
}

typedef struct counts {
    int plans, refused;
} counts_t;

static void check_split(const char *file, gguf_ctx_t *g, kern_backend_t *k, int tp, int ep,
                        counts_t *c)
{
    topo_plan_params_t pp = {.n_shards = tp * ep,
                             .tp = tp,
                             .ep = ep,
                             .batch = 8,
                             .n_out = 1,
                             .threads = 1,
                             .ctx_size = 16,
                             .experts = TOPO_EXPERTS_CONTIGUOUS};
    topo_plan_t *pl = NULL;
    tdm_error_t perr = {0};
    tdm_status_t pst = topo_plan_build(g, &pp, &pl, &perr);
    bool any_moe = false;
    if (pst == TDM_OK) {
        any_moe = pl->n_moe_layers > 0;
    } else if (strstr(perr.msg, "no experts") != NULL) {
        c->refused++;
        return; /* the plan refuses EP on dense models; the loader just replicates */
    }
    for (int s = 0; s < tp * ep; s++) {
        shd_model_params_t mp = {.n_batch_max = 8, .n_out_max = 1, .n_ctx_max = 16};
        mp.part = (shd_partition_t){s % tp, tp, s / tp, ep};
        if (tp * ep > 1) {
            mp.comm = (shd_comm_t){&no_ops, NULL};
        }
        shd_model_t *m = NULL;
        tdm_error_t lerr = {0};
        tdm_status_t lst = shd_model_load(g, k, &mp, &m, &lerr);
        if (pst != TDM_OK || lst != TDM_OK) {
            if ((pst == TDM_OK) != (lst == TDM_OK)) {
                fail_msg("%s tp %d ep %d rank %d: plan '%s' (%d) but loader '%s' (%d)", file, tp,
                         ep, s, perr.msg, pst, lerr.msg, lst);
            }
            shd_model_destroy(m);
            c->refused++;
            return;
        }
        const topo_shard_plan_t *sp = &pl->shards[s];
        assert_int_equal(sp->tp_rank, s % tp);
        assert_int_equal(sp->ep_rank, s / tp);
        assert_int_equal(sp->heads.lo, m->head_lo);
        assert_int_equal(sp->heads.n, m->n_head_l);
        assert_int_equal(sp->kv_heads.lo, m->kv_lo);
        assert_int_equal(sp->kv_heads.n, m->n_kv_l);
        assert_int_equal(sp->ffn_cols.lo, m->ff_lo);
        assert_int_equal(sp->ffn_cols.n, m->n_ff_l);
        assert_int_equal(sp->vocab_rows.lo, m->vocab_lo);
        assert_int_equal(sp->vocab_rows.n, m->n_vocab_l);
        if (any_moe) {
            assert_int_equal(sp->experts_contiguous.lo, m->exp_lo);
            assert_int_equal(sp->experts_contiguous.n, m->n_exp_l);
            assert_int_equal(sp->expert_cols.lo, m->ffe_lo);
            assert_int_equal(sp->expert_cols.n, m->n_ffe_l);
            for (int il = 0; il < m->hp.n_layer; il++) {
                if (m->hp.layer_moe[il]) {
                    assert_int_equal(pl->expert_lo[il * ep + sp->ep_rank], m->exp_lo);
                    assert_int_equal(pl->expert_n[il * ep + sp->ep_rank], m->n_exp_l);
                }
            }
        }
        uint64_t lb[TOPO_CLASS_COUNT];
        loader_bytes(m, lb);
        for (int cl = TOPO_CLASS_ATTENTION; cl <= TOPO_CLASS_OUTPUT; cl++) {
            if (lb[cl] != sp->bytes[cl]) {
                fail_msg("%s tp %d ep %d rank %d: %s bytes: plan %llu, loader %llu", file, tp, ep,
                         s, topo_class_name((topo_class_t)cl), (unsigned long long)sp->bytes[cl],
                         (unsigned long long)lb[cl]);
            }
        }
        assert_true(sp->experts_as_loader == sp->bytes[TOPO_CLASS_EXPERTS]);
        /* KV: the loader's per-shard config. */
        shd_kv_config_t kv;
        shd_model_kv_config(m, 16, 1, &kv);
        assert_true(sp->kv_per_token == 2ull * (uint64_t)kv.n_layer * (uint64_t)kv.n_kv_heads *
                                            (uint64_t)kv.head_dim * 4u);
        shd_model_destroy(m);
    }
    c->plans++;
    topo_plan_destroy(pl);
}

static void test_plan_matches_loader(void **state)
{
    (void)state;
    static const char *const files[] = {
        "llama-a-f32.gguf",    "llama-b-f32.gguf",    "llama-a-q4_k.gguf",   "llama-a-q8_0.gguf",
        "qwen3moe-a-f32.gguf", "qwen3moe-b-f32.gguf", "qwen3moe-c-f32.gguf", "qwen3moe-a-q4_k.gguf",
    };
    kern_backend_t *k = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &k, NULL), TDM_OK);
    counts_t c = {0, 0};
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        gguf_ctx_t *g = open_fixture(files[f]);
        for (int tp = 1; tp <= 4; tp++) {
            for (int ep = 1; ep * tp <= 8; ep++) {
                check_split(files[f], g, k, tp, ep, &c);
            }
        }
        gguf_close(g);
    }
    kern_backend_destroy(k);
    print_message("plan == loader on %d splits; %d refused by both\n", c.plans, c.refused);
    assert_true(c.plans >= 20);
    assert_true(c.refused >= 5);
}

/* Balanced placement: whole experts per layer, consecutive ranges, loads within one item. */
static void test_balanced_experts(void **state)
{
    (void)state;
    gguf_ctx_t *g = open_fixture("qwen3moe-b-f32.gguf"); /* 2 MoE layers x 8 experts */
    for (int ep = 1; ep <= 8; ep++) {
        topo_plan_params_t pp = {.n_shards = ep, .ep = ep};
        topo_plan_t *pl = NULL;
        assert_int_equal(topo_plan_build(g, &pp, &pl, NULL), TDM_OK);
        const int ne = pl->hp.n_expert;
        uint64_t lo = UINT64_MAX, hi = 0, sum = 0, shard_sum = 0;
        for (int s = 0; s < ep; s++) {
            lo = pl->ep_load[s] < lo ? pl->ep_load[s] : lo;
            hi = pl->ep_load[s] > hi ? pl->ep_load[s] : hi;
            sum += pl->ep_load[s];
            shard_sum += pl->shards[s].bytes[TOPO_CLASS_EXPERTS];
        }
        assert_true(hi - lo <= pl->expert_item_max);
        assert_true(sum == pl->expert_bytes_total);
        assert_true(shard_sum == pl->expert_bytes_total); /* tp 1: each expert once */
        for (int il = 0; il < pl->hp.n_layer; il++) {
            int next = 0;
            for (int gi = 0; gi < ep; gi++) {
                assert_int_equal(pl->expert_lo[il * ep + gi], next);
                for (int e = next; e < next + pl->expert_n[il * ep + gi]; e++) {
                    assert_int_equal(pl->expert_owner[il * ne + e], gi);
                }
                next += pl->expert_n[il * ep + gi];
            }
            assert_int_equal(next, ne);
        }
        topo_plan_destroy(pl);
    }
    gguf_close(g);
}

static void test_errors(void **state)
{
    (void)state;
    gguf_ctx_t *g = open_fixture("llama-a-f32.gguf"); /* 4 heads, 2 kv heads, no experts */
    topo_plan_t *pl = NULL;
    tdm_error_t err = {0};
    topo_plan_params_t pp = {.n_shards = 3};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "dense FFN width 256"));
    tdm_error_clear(&err);
    pp = (topo_plan_params_t){.n_shards = 5};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "tp 5 is more than the 4 attention heads"));
    tdm_error_clear(&err);
    pp = (topo_plan_params_t){.n_shards = 4, .tp = 3};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "does not divide --shards 4"));
    tdm_error_clear(&err);
    pp = (topo_plan_params_t){.n_shards = 4, .tp = 2, .ep = 1};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "is not --tp 2 x --ep 1"));
    tdm_error_clear(&err);
    pp = (topo_plan_params_t){.n_shards = 2, .ep = 2};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "no experts"));
    tdm_error_clear(&err);
    pp = (topo_plan_params_t){.n_shards = 1, .kv_bytes = 1000};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "--kv-memory"));
    gguf_close(g);

    g = open_fixture("qwen3moe-a-q4_k.gguf"); /* 3 experts of width 256, Q4_K */
    tdm_error_clear(&err);
    pp = (topo_plan_params_t){.n_shards = 4, .ep = 4};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "more than the 3 experts"));
    tdm_error_clear(&err);
    pp = (topo_plan_params_t){.n_shards = 2, .tp = 2};
    assert_int_equal(topo_plan_build(g, &pp, &pl, &err), TDM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "block boundaries"));
    assert_non_null(strstr(err.msg, "attn_output"));
    gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lpt),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_plan_matches_loader),
        cmocka_unit_test(test_balanced_experts),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
