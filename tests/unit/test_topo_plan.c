/* test_topo_plan.c - the memory plan (topology/topo_plan.c): greedy largest-first bin
 * packing, size parsing, and the partition checked against the shard loader itself: every
 * fixture model is bound with shd_model_load on every rank of every tp x ep split, and
 * the plan's ranges, per-class weight bytes, step scratch, backend reserve (CPU backend,
 * and the CUDA formula on the loader's own reserve), GPU weight store and KV block bytes
 * of every KV type must equal what the loader binds (the plan reproduces shard/model.c;
 * this test keeps the two from drifting apart). Also the CUDA reserve formula on
 * hand-computed cases, KV types and the GPU budget. */
#include "kernels/kern_backend_impl.h"
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

/* The file bytes of the n of `of` values of blk.il.<suffix> a bound vector covers (0 when
 * the loader bound none: p is NULL). */
static uint64_t vbytes(const shd_model_t *m, const float *p, int il, const char *suffix, int64_t n,
                       int64_t of)
{
    if (p == NULL) {
        return 0;
    }
    char name[GGUF_MAX_NAME];
    snprintf(name, sizeof(name), "blk.%d.%s", il, suffix);
    const gguf_tensor_t *t = gguf_find_tensor(m->g, name);
    assert_non_null(t);
    return t->nbytes * (uint64_t)n / (uint64_t)of;
}

/* Weight bytes per class as the loader bound them on this rank: the matrices and the
 * vectors of each class (biases, sinks) at the slices the loader's ranges give. */
static void loader_bytes(const shd_model_t *m, uint64_t out[TOPO_CLASS_COUNT])
{
    memset(out, 0, TOPO_CLASS_COUNT * sizeof(uint64_t));
    const mdl_hparams_t *hp = &m->hp;
    const int64_t hd = hp->head_dim, nq = (int64_t)m->n_head_l * hd, nk = (int64_t)m->n_kv_l * hd;
    for (int il = 0; il < hp->n_layer; il++) {
        const shd_layer_t *L = &m->layers[il];
        out[TOPO_CLASS_ATTENTION] +=
            wbytes(&L->wq) + wbytes(&L->wk) + wbytes(&L->wv) + wbytes(&L->wo) +
            vbytes(m, L->bq, il, "attn_q.bias", nq, (int64_t)hp->n_head * hd) +
            vbytes(m, L->bk, il, "attn_k.bias", nk, (int64_t)hp->n_head_kv * hd) +
            vbytes(m, L->bv, il, "attn_v.bias", nk, (int64_t)hp->n_head_kv * hd) +
            vbytes(m, L->bo, il, "attn_output.bias", 1, 1) +
            vbytes(m, L->sinks, il, "attn_sinks.weight", m->n_head_l, hp->n_head);
        /* a hybrid model's Gated DeltaNet layer (the mixer's matrices and conv taps) and
         * shared expert (dense FFN) */
        const int64_t gch = (2 * (int64_t)m->n_gk_l + m->n_gv_l) * hp->gdn_head_dim;
        const int64_t gch_all = (2 * (int64_t)hp->gdn_k_heads + hp->gdn_v_heads) * hp->gdn_head_dim;
        out[TOPO_CLASS_ATTENTION] +=
            wbytes(&L->gdn_q) + wbytes(&L->gdn_k) + wbytes(&L->gdn_v) + wbytes(&L->gdn_z) +
            wbytes(&L->gdn_ba) + wbytes(&L->gdn_beta) + wbytes(&L->gdn_alpha) +
            wbytes(&L->gdn_out) + vbytes(m, L->gdn_conv_w, il, "ssm_conv1d.weight", gch, gch_all);
        out[TOPO_CLASS_DENSE_FFN] += wbytes(&L->shexp_inp) + wbytes(&L->shexp_gate) +
                                     wbytes(&L->shexp_up) + wbytes(&L->shexp_down);
        if (!L->is_moe) {
            out[TOPO_CLASS_DENSE_FFN] +=
                wbytes(&L->ffn_gate) + wbytes(&L->ffn_up) + wbytes(&L->ffn_down) +
                vbytes(m, L->ffn_gate_b, il, "ffn_gate.bias", m->n_ff_l, hp->n_ff) +
                vbytes(m, L->ffn_up_b, il, "ffn_up.bias", m->n_ff_l, hp->n_ff) +
                vbytes(m, L->ffn_down_b, il, "ffn_down.bias", 1, 1);
        } else if (L->n_exp_l > 0) {
            out[TOPO_CLASS_EXPERTS] +=
                (uint64_t)L->n_exp_l *
                    (wbytes(&L->gate_exps.w) + wbytes(&L->up_exps.w) + wbytes(&L->down_exps.w)) +
                vbytes(m, L->gate_exps_b, il, "ffn_gate_exps.bias", L->n_exp_l, hp->n_expert) +
                vbytes(m, L->up_exps_b, il, "ffn_up_exps.bias", L->n_exp_l, hp->n_expert) +
                vbytes(m, L->down_exps_b, il, "ffn_down_exps.bias", L->n_exp_l, hp->n_expert);
        }
    }
    if (!m->hp.tied_output) {
        out[TOPO_CLASS_OUTPUT] = wbytes(&m->output);
    }
    for (int i = 0; i < m->n_mtp_tensors; i++) { /* kept whole */
        const shd_mtp_tensor_t *x = &m->mtp[i];
        const gguf_tensor_t *t = gguf_find_tensor(m->g, x->name);
        assert_non_null(t);
        out[TOPO_CLASS_MTP] += x->vec != NULL ? t->nbytes : (uint64_t)t->ne[2] * wbytes(&x->e.w);
    }
}

typedef struct counts {
    int plans, refused;
} counts_t;

/* shard/model.c reserve_of, from the loader's bound slice. */
static kern_reserve_t loader_reserve(const shd_model_t *m)
{
    const mdl_hparams_t *hp = &m->hp;
    const int64_t q = (int64_t)m->n_head_l * hp->head_dim, kv = (int64_t)m->n_kv_l * hp->head_dim;
    const int64_t gvd = (int64_t)hp->gdn_v_heads * hp->gdn_head_dim;
    const int64_t cols[] = {hp->n_embd, q, m->n_ff_l, m->n_ffe_l, hp->n_ff_shexp, gvd};
    const int64_t rows[] = {m->n_vocab_l,
                            hp->n_embd,
                            q,
                            kv,
                            m->n_ff_l,
                            m->n_ffe_l,
                            hp->n_expert,
                            q * (hp->attn_out_gate ? 2 : 1),
                            hp->n_ff_shexp,
                            gvd + 2 * (int64_t)hp->gdn_k_heads * hp->gdn_head_dim};
    int64_t max_cols = 0, max_rows = 0;
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
        max_cols = cols[i] > max_cols ? cols[i] : max_cols;
    }
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        max_rows = rows[i] > max_rows ? rows[i] : max_rows;
    }
    return (kern_reserve_t){.n_tok = m->params.n_batch_max,
                            .n_out = m->params.n_out_max,
                            .n_ctx = m->params.n_ctx_max,
                            .max_cols = max_cols,
                            .max_rows = max_rows,
                            .n_head = m->n_head_l,
                            .head_dim = hp->head_dim,
                            .n_expert = hp->n_expert,
                            .n_expert_used = hp->n_expert_used,
                            .n_embd = hp->n_embd,
                            .n_ff_exp = m->n_ffe_l,
                            .swa_tables = shd_model_swa_window(m) > 0,
                            .gdn_head_dim = hp->n_recurrent > 0 ? hp->gdn_head_dim : 0};
}

/* Field by field (the struct's padding is not part of its value). */
static void assert_reserve_equal(const kern_reserve_t *a, const kern_reserve_t *b)
{
    assert_true(a->n_tok == b->n_tok && a->n_out == b->n_out && a->n_ctx == b->n_ctx);
    assert_true(a->max_cols == b->max_cols && a->max_rows == b->max_rows);
    assert_true(a->n_head == b->n_head && a->head_dim == b->head_dim);
    assert_true(a->n_expert == b->n_expert && a->n_expert_used == b->n_expert_used);
    assert_true(a->n_embd == b->n_embd && a->n_ff_exp == b->n_ff_exp);
    assert_true(a->swa_tables == b->swa_tables);
    assert_true(a->gdn_head_dim == b->gdn_head_dim);
}

/* The step scratch the loader carved: its slots follow each other in one arena (a CPU
 * backend keeps even the collective slots there), so the arena runs from x to the end of
 * lgg, the last slot. */
static uint64_t loader_scratch(const shd_model_t *m)
{
    const size_t lgg =
        m->n_vocab_l != m->hp.n_vocab
            ? (size_t)m->params.part.tp_size * (size_t)m->params.n_out_max * (size_t)m->n_vocab_l
            : 0;
    return (uint64_t)((const char *)m->s.lgg - (const char *)m->s.x) +
           (uint64_t)((lgg + 15) & ~(size_t)15) * sizeof(float);
}

/* The plan's KV row bytes against shd_model_kv_blocks for KV type t, on the loaded shard. */
static void check_kv_type(const char *file, shd_model_t *m, const topo_plan_t *pl, int s,
                          tdm_type_t t)
{
    m->params.kv_type = t;
    int32_t nb = 0;
    size_t bb = 0;
    tdm_error_t lerr = {0};
    const tdm_status_t lst = shd_model_kv_blocks(m, 16, 0, &nb, &bb, &lerr);
    if ((pl != NULL) != (lst == TDM_OK)) {
        fail_msg("%s rank %d kv %s: plan %s but loader '%s'", file, s, tdm_type_name(t),
                 pl != NULL ? "ok" : "refused", lerr.msg);
    }
    /* the loader's full pool holds the full-attention layers, its sliding pool the others */
    const topo_shard_plan_t *sp = pl != NULL ? &pl->shards[s] : NULL;
    if (sp != NULL && (uint64_t)bb != 16u * sp->kv_per_token_full) {
        fail_msg("%s rank %d kv %s: block bytes plan %llu, loader %zu", file, s, tdm_type_name(t),
                 (unsigned long long)(16u * sp->kv_per_token_full), bb);
    }
    /* with a budget of 300 blocks of every layer: the same pools in the plan and the loader
     * (the plan sizes for its least roomy shard: compare where every shard is alike) */
    if (pl != NULL) {
        bool alike = true;
        for (int i = 0; i < pl->n_shards; i++) {
            alike = alike && pl->shards[i].kv_per_token == sp->kv_per_token &&
                    pl->shards[i].state == sp->state;
        }
        topo_plan_params_t q = pl->p;
        q.kv_bytes = 300u * 16u * sp->kv_per_token;
        topo_plan_t *b = NULL;
        shd_kv_pools_t pools;
        const tdm_status_t pst = topo_plan_build(m->g, &q, &b, NULL);
        const tdm_status_t lst2 = shd_model_kv_pools(m, 16, q.kv_bytes, &pools, NULL);
        assert_int_equal(pst == TDM_OK, lst2 == TDM_OK);
        if (alike && pst == TDM_OK) {
            if (b->kv_blocks != pools.n_blocks || b->kv_swa_blocks != pools.n_swa_blocks) {
                fail_msg("%s rank %d kv %s: pools plan %d + %d sliding, loader %d + %d", file, s,
                         tdm_type_name(t), b->kv_blocks, b->kv_swa_blocks, pools.n_blocks,
                         pools.n_swa_blocks);
            }
        }
        topo_plan_destroy(b);
    }
    m->params.kv_type = TDM_TYPE_F32;
}

static void check_split(const char *file, gguf_ctx_t *g, kern_backend_t *k, kern_backend_t *k3,
                        int tp, int ep, counts_t *c)
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
    /* The same split for a GPU, and with the other KV types (NULL when refused). */
    topo_plan_t *gpu = NULL, *kv16 = NULL, *kv8 = NULL;
    if (pst == TDM_OK) {
        topo_plan_params_t q = pp;
        q.device = TOPO_PLAN_CUDA;
        q.kv_type = TDM_TYPE_F16;
        assert_int_equal(topo_plan_build(g, &q, &gpu, NULL), TDM_OK);
        q.device = TOPO_PLAN_CPU;
        assert_int_equal(topo_plan_build(g, &q, &kv16, NULL), TDM_OK);
        q.kv_type = TDM_TYPE_Q8_0;
        tdm_error_t qerr = {0};
        if (topo_plan_build(g, &q, &kv8, &qerr) != TDM_OK) {
            assert_int_not_equal(pl->hp.head_dim % 32, 0);
            assert_non_null(strstr(qerr.msg, "multiple of 32"));
        }
    }
    for (int s = 0; s < tp * ep; s++) {
        /* stored prefix states as serve keeps them: one per running sequence */
        shd_model_params_t mp = {
            .n_batch_max = 8, .n_out_max = 1, .n_ctx_max = 16, .n_state_store = 1};
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
            topo_plan_destroy(gpu);
            topo_plan_destroy(kv16);
            topo_plan_destroy(kv8);
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
        for (int cl = TOPO_CLASS_ATTENTION; cl <= TOPO_CLASS_MTP; cl++) {
            if (lb[cl] != sp->bytes[cl]) {
                fail_msg("%s tp %d ep %d rank %d: %s bytes: plan %llu, loader %llu", file, tp, ep,
                         s, topo_class_name((topo_class_t)cl), (unsigned long long)sp->bytes[cl],
                         (unsigned long long)lb[cl]);
            }
        }
        assert_true(sp->experts_as_loader == sp->bytes[TOPO_CLASS_EXPERTS]);
        /* everything bound, vectors (biases, norms, sinks) included */
        if (sp->weights != shd_model_weight_bytes(m)) {
            fail_msg("%s tp %d ep %d rank %d: weight bytes plan %llu, loader %llu", file, tp, ep, s,
                     (unsigned long long)sp->weights,
                     (unsigned long long)shd_model_weight_bytes(m));
        }
        for (int i = 0; i < pl->n_tensors; i++) {
            if (pl->tensors[i].split == TOPO_SPLIT_UNUSED) {
                fail_msg("%s: tensor '%s' is bound by no shard", file, pl->tensors[i].name);
            }
        }
        /* KV: the loader's per-shard config, and its layers by kind. */
        shd_kv_config_t kv;
        shd_model_kv_config(m, 16, 1, &kv);
        int n_rec = 0; /* Gated DeltaNet layers keep a state, no K/V */
        for (int il = 0; il < kv.n_layer; il++) {
            n_rec += kv.layer_recurrent[il] != 0;
        }
        assert_true(sp->kv_per_token == 2ull * (uint64_t)(kv.n_layer - n_rec) *
                                            (uint64_t)kv.n_kv_heads * (uint64_t)kv.head_dim * 4u);
        int n_swa = 0;
        for (int il = 0; m->hp.n_swa > 0 && il < m->hp.n_layer; il++) {
            n_swa += m->hp.layer_swa[il] != 0;
        }
        assert_int_equal(pl->n_swa_layers, n_swa);
        assert_true(sp->kv_per_token_swa ==
                    2ull * (uint64_t)n_swa * (uint64_t)kv.n_kv_heads * (uint64_t)kv.head_dim * 4u);
        assert_true(sp->kv_per_token_full + sp->kv_per_token_swa == sp->kv_per_token);
        assert_true(sp->kv == (uint64_t)pl->kv_tokens * sp->kv_per_token_full +
                                  (uint64_t)pl->kv_swa_tokens * sp->kv_per_token_swa + sp->state);
        /* the recurrent state: the loader's slots for n_out sequences */
        shd_kv_pools_t sl;
        assert_int_equal(shd_model_kv_pools(m, 16, 0, &sl, NULL), TDM_OK);
        assert_true(sl.state_bytes == sp->state && sl.n_state_slots == pl->n_state_slots &&
                    sl.n_state_store == pl->n_state_store);
        check_kv_type(file, m, pl, s, TDM_TYPE_F32);
        check_kv_type(file, m, kv16, s, TDM_TYPE_F16);
        check_kv_type(file, m, kv8, s, TDM_TYPE_Q8_0);

        /* Buffers: the step scratch the loader carved, the reserve it asks its backend for
         * (shard/model.c reserve_of) and what the CPU backend takes for it. */
        if (sp->scratch != loader_scratch(m)) {
            fail_msg("%s tp %d ep %d rank %d: step scratch plan %llu, loader %llu", file, tp, ep, s,
                     (unsigned long long)sp->scratch, (unsigned long long)loader_scratch(m));
        }
        const kern_reserve_t lr = loader_reserve(m);
        kern_reserve_t r;
        topo_shard_reserve(pl, sp, &r);
        assert_reserve_equal(&r, &lr);
        assert_true(sp->backend_scratch == kern_be_reserve_bytes(k, &lr));
        assert_true(topo_cpu_reserve_bytes(&lr, 3) == kern_be_reserve_bytes(k3, &lr));
        assert_true(sp->buffers == sp->scratch + sp->backend_scratch + sp->vec_copies + sp->comm);
        assert_true(sp->weights_device == sp->weights);
        assert_true(sp->total == sp->weights + sp->kv + sp->buffers);

        /* On a GPU: the weight store kern_be_weights_load would make of the loader's views
         * (compact slices, vectors as f32, aliases shared, 256-byte aligned), the CUDA
         * backend's reserve for the loader's own request, and check_fit's margin. */
        const topo_shard_plan_t *gp = &gpu->shards[s];
        kern_weight_place_t *place = calloc((size_t)m->n_refs + 1, sizeof(*place));
        uint64_t store = 0;
        assert_int_equal(kern_weights_plan(m->refs, m->n_refs, 256, place, &store, NULL), TDM_OK);
        free(place);
        if (gp->weights_device != store) {
            fail_msg("%s tp %d ep %d rank %d: GPU weight store plan %llu, loader's views %llu",
                     file, tp, ep, s, (unsigned long long)gp->weights_device,
                     (unsigned long long)store);
        }
        assert_true(gp->weights == sp->weights);
        assert_true(gp->scratch == sp->scratch);
        assert_true(gp->backend_scratch == kern_cuda_reserve_bytes(&lr));
        assert_true(gp->margin == TOPO_GPU_MARGIN);
        assert_true(gp->buffers == gp->scratch + gp->backend_scratch + gp->margin);
        assert_true((gp->kv - gp->state) * 2 == sp->kv - sp->state); /* f16 rows, f32 state */
        assert_true(gp->total == gp->weights_device + gp->kv + gp->buffers);
        shd_model_destroy(m);
    }
    c->plans++;
    topo_plan_destroy(pl);
    topo_plan_destroy(gpu);
    topo_plan_destroy(kv16);
    topo_plan_destroy(kv8);
}

static void test_plan_matches_loader(void **state)
{
    (void)state;
    static const char *const files[] = {
        "llama-a-f32.gguf",
        "llama-b-f32.gguf",
        "llama-c-f32.gguf",
        "llama-a-q4_k.gguf",
        "llama-a-q8_0.gguf",
        "llama-a-f16.gguf",
        "qwen3moe-a-f32.gguf",
        "qwen3moe-b-f32.gguf",
        "qwen3moe-c-f32.gguf",
        "qwen3moe-a-q4_k.gguf",
        "minimax-m2-a-f32.gguf",
        "minimax-m2-b-f32.gguf",
        "minimax-m2-a-q4_k.gguf",
        "minimax-m2-a-q8_0.gguf",
        "gpt-oss-a-f32.gguf",
        "gpt-oss-b-f32.gguf",
        "gpt-oss-a-mxfp4.gguf",
        "gpt-oss-a-q4_k.gguf",
        "qwen2-a-f32.gguf",
        "qwen2-b-f32.gguf",
        "qwen2-a-q4_k.gguf",
        "mistral3-a-f32.gguf",
        "mistral3-b-f32.gguf",
        "mistral3-a-q4_k.gguf",
        /* the hybrid models (tests/fixtures/hybrid): TP over the DeltaNet heads (grouped and
         * tiled v heads, k heads shared by neighbouring ranks or all held), EP */
        "../hybrid/qwen3next-a-f32.gguf",
        "../hybrid/qwen3next-b-f32.gguf",
        "../hybrid/qwen35moe-a-f32.gguf",
        "../hybrid/qwen35moe-b-f32.gguf",
        /* the shared expert split in 32-column blocks */
        "../hybrid/qwen3next-a-q8_0.gguf",
    };
    kern_backend_t *k = NULL, *k3 = NULL;
    const kern_backend_params_t bp = {
        .device = "cpu", .n_threads = 1, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp, &k, NULL), TDM_OK);
    const kern_backend_params_t bp3 = {
        .device = "cpu", .n_threads = 3, .isa_override = KERN_ISA_COUNT};
    assert_int_equal(kern_backend_create(&bp3, &k3, NULL), TDM_OK);
    counts_t c = {0, 0};
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        gguf_ctx_t *g = open_fixture(files[f]);
        for (int tp = 1; tp <= 4; tp++) {
            for (int ep = 1; ep * tp <= 8; ep++) {
                check_split(files[f], g, k, k3, tp, ep, &c);
            }
        }
        gguf_close(g);
    }
    kern_backend_destroy(k);
    kern_backend_destroy(k3);
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

/* KV bytes by type: f16 half of f32, q8_0 34/128 of it (head_dim a multiple of 32), and
 * q8_0 refused by name when the head dim does not split into blocks of 32. */
static void test_kv_types(void **state)
{
    (void)state;
    gguf_ctx_t *g = open_fixture("llama-a-f32.gguf"); /* head_dim 64 */
    topo_plan_t *pl[3] = {NULL, NULL, NULL};
    const tdm_type_t types[3] = {TDM_TYPE_F32, TDM_TYPE_F16, TDM_TYPE_Q8_0};
    for (int i = 0; i < 3; i++) {
        topo_plan_params_t pp = {.n_shards = 2, .ctx_size = 1000, .kv_type = types[i]};
        assert_int_equal(topo_plan_build(g, &pp, &pl[i], NULL), TDM_OK);
        assert_int_equal(pl[i]->kv_tokens, 1008);
    }
    for (int s = 0; s < 2; s++) {
        const uint64_t f32 = pl[0]->shards[s].kv_per_token;
        assert_true(f32 == 2ull * pl[0]->hp.n_layer * pl[0]->shards[s].kv_heads.n * 64 * 4);
        assert_true(pl[1]->shards[s].kv_per_token * 2 == f32);
        assert_true(pl[2]->shards[s].kv_per_token * 128 == f32 * 34);
        for (int i = 0; i < 3; i++) {
            const topo_shard_plan_t *sp = &pl[i]->shards[s];
            assert_true(sp->kv == 1008u * sp->kv_per_token);
            /* only the KV changes */
            assert_true(sp->total - sp->kv == pl[0]->shards[s].total - pl[0]->shards[s].kv);
        }
    }
    for (int i = 0; i < 3; i++) {
        topo_plan_destroy(pl[i]);
    }
    /* --kv-memory: the same budget holds twice the f16 blocks. */
    topo_plan_params_t pp = {.n_shards = 1, .kv_bytes = 8u << 20};
    topo_plan_t *a = NULL, *b = NULL;
    assert_int_equal(topo_plan_build(g, &pp, &a, NULL), TDM_OK);
    pp.kv_type = TDM_TYPE_F16;
    assert_int_equal(topo_plan_build(g, &pp, &b, NULL), TDM_OK);
    assert_int_equal(b->kv_blocks, 2 * a->kv_blocks);
    topo_plan_destroy(a);
    topo_plan_destroy(b);
    /* Not a KV type. */
    tdm_error_t err = {0};
    pp = (topo_plan_params_t){.n_shards = 1, .kv_type = TDM_TYPE_Q4_0};
    assert_int_equal(topo_plan_build(g, &pp, &a, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "KV cache type Q4_0: expected f32, f16 or q8_0"));
    gguf_close(g);

    static const char *const odd[] = {"qwen3moe-b-f32.gguf", "llama-b-f32.gguf"};
    static const char *const msg[] = {"the model's is 48", "the model's is 16"};
    for (int i = 0; i < 2; i++) {
        g = open_fixture(odd[i]);
        tdm_error_clear(&err);
        pp = (topo_plan_params_t){.n_shards = 1, .kv_type = TDM_TYPE_Q8_0};
        assert_int_equal(topo_plan_build(g, &pp, &a, &err), TDM_ERR_UNSUPPORTED);
        assert_non_null(strstr(err.msg, "KV cache type q8_0 needs a head dim that is a "
                                        "multiple of 32"));
        assert_non_null(strstr(err.msg, msg[i]));
        assert_non_null(strstr(err.msg, "--kv-type f16"));
        pp.kv_type = TDM_TYPE_F16; /* f16 rows have no blocks */
        assert_int_equal(topo_plan_build(g, &pp, &a, NULL), TDM_OK);
        topo_plan_destroy(a);
        gguf_close(g);
    }

    /* Names, and the default by device. */
    tdm_type_t t;
    assert_int_equal(topo_kv_type_parse(NULL, TOPO_PLAN_CPU, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_F32);
    assert_int_equal(topo_kv_type_parse("auto", TOPO_PLAN_CUDA, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_F16);
    assert_int_equal(topo_kv_type_parse("q8_0", TOPO_PLAN_CPU, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_Q8_0);
    assert_int_equal(topo_kv_type_parse("f32", TOPO_PLAN_CUDA, &t, NULL), TDM_OK);
    assert_int_equal(t, TDM_TYPE_F32);
    tdm_error_clear(&err);
    assert_int_equal(topo_kv_type_parse("bf16", TOPO_PLAN_CPU, &t, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(err.msg, "expected f32, f16, q8_0"));
}

/* kern_cuda_reserve_bytes (backend_cuda.cu's cu_reserve_bytes) on cases worked by hand. */
static void test_cuda_reserve(void **state)
{
    (void)state;
    /* Dense, one attention segment: rows 4, K 64. Activations: Q8_1 (the largest) 256 B of
     * int8 + 2 x 256 B (32 B of scales, 32 B of sums, each padded) = 768, twice; split-K
     * partials 8 x 4 x 100 floats = 12800 B; no attention partials (16 keys, one segment),
     * no MoE; metadata (6 x 4 + 2 + 4 x (16 / 16 + 1)) x 4 B = 136, device and host. */
    kern_reserve_t r = {.n_tok = 4,
                        .n_out = 1,
                        .n_ctx = 16,
                        .max_cols = 64,
                        .max_rows = 100,
                        .n_head = 2,
                        .head_dim = 32,
                        .n_embd = 64};
    assert_true(kern_cuda_reserve_bytes(&r) == 2 * 768 + 12800 + 2 * 136);
    /* MoE, top 2 of 8 experts: 8 token-expert pairs. Activations for 8 rows: Q8_1 512 +
     * 2 x 256 = 1024, twice; partials 8 x 8 x 100 floats = 25600 B; counts and offsets 9
     * ints (256 B each, padded); 3 pair lists 256 B; tiles (1 + 8) x 3 + 2 ints 256 B;
     * gate/up 8 x 32 floats 1024 B each; out 8 x 64 floats 2048 B. */
    r.n_expert = 8;
    r.n_expert_used = 2;
    r.n_ff_exp = 32;
    assert_true(kern_cuda_reserve_bytes(&r) ==
                2 * 1024 + 25600 + 2 * 256 + 3 * 256 + 256 + 2 * 1024 + 2048 + 2 * 136);
    /* Caps: split-K partials at 16M floats, attention partials at 8M; past them only the
     * activations and the metadata grow. */
    kern_reserve_t big = {.n_tok = 4096,
                          .n_out = 64,
                          .n_ctx = 32768,
                          .max_cols = 4096,
                          .max_rows = 151936,
                          .n_head = 32,
                          .head_dim = 128,
                          .n_embd = 4096};
    kern_reserve_t wider = big;
    wider.max_rows *= 2;
    assert_true(kern_cuda_reserve_bytes(&wider) == kern_cuda_reserve_bytes(&big));
    kern_reserve_t more_heads = big;
    more_heads.n_head *= 2;
    assert_true(kern_cuda_reserve_bytes(&more_heads) == kern_cuda_reserve_bytes(&big));
    /* Q8_K, the largest here: int8 + 16 scales + 256 sums of 16 per row, 256-aligned */
    const uint64_t act = 4096ull * 4096 + 4096ull * 16 * 4 + 4096ull * 256 * 4;
    const uint64_t meta = (6ull * 4096 + 2 + 4096ull * (32768 / 16 + 1)) * 4;
    assert_true(kern_cuda_reserve_bytes(&big) ==
                2 * act + (16ull << 20) * 4 + (8ull << 20) * 4 + 2 * meta);
    /* More than one segment of 512 keys brings in the attention partials. */
    kern_reserve_t one = r, two = r;
    one.n_ctx = 512;
    two.n_ctx = 513;
    const uint64_t parts = 4ull * 2 * 2 * (32 + 2) * 4; /* tokens x heads x segments x (d+2) */
    const uint64_t meta1 = (6ull * 4 + 2 + 4 * (512 / 16 + 1)) * 4;
    const uint64_t meta2 = (6ull * 4 + 2 + 4 * (513 / 16 + 1)) * 4;
    assert_true(kern_cuda_reserve_bytes(&two) - kern_cuda_reserve_bytes(&one) ==
                ((parts + 255) & ~255ull) + 2 * (meta2 - meta1));
}

/* A shard's memory on a GPU: its free memory, on a unified-memory one at most the host's. */
/* The context tandem serve picks without --ctx-size (topo_pick_ctx): the trained context
 * when one such sequence and a batch fit beside the weights and buffers, else the most that
 * fits; the KV budget 4 x the context for a model trained for <= 8192 tokens, when it fits. */
static void test_pick_ctx(void **state)
{
    (void)state;
    gguf_ctx_t *g = open_fixture("llama-a-f32.gguf");
    mdl_hparams_t hp;
    assert_int_equal(mdl_hparams_load(g, &hp, NULL), TDM_OK);
    const int train = hp.n_ctx_train;
    assert_true(train > 0 && train <= 8192);
    topo_plan_params_t pp = {.n_shards = 1, .ctx_size = train, .batch = 512};
    topo_plan_t *pl = NULL;
    assert_int_equal(topo_plan_build(g, &pp, &pl, NULL), TDM_OK);
    const uint64_t other = pl->shards[0].total - pl->shards[0].kv;
    const uint64_t per_token = pl->shards[0].kv_per_token;
    topo_ctx_pick_t k;
    /* plenty: the trained context, the executor's own 4 x ctx budget */
    assert_int_equal(topo_pick_ctx(g, &pp, 1ull << 40, &k, NULL), TDM_OK);
    assert_int_equal(k.ctx, train);
    assert_true(k.trained && k.ctx_train == train && k.kv_bytes == 0);
    assert_true(k.kv_tokens == 4u * (uint64_t)train);
    /* room for one sequence and a batch but not 4 x: the trained context, all of the room */
    uint64_t budget = other + ((uint64_t)train + 512) * per_token + 8 * per_token;
    assert_int_equal(topo_pick_ctx(g, &pp, budget, &k, NULL), TDM_OK);
    assert_int_equal(k.ctx, train);
    assert_true(k.kv_tokens >= (uint64_t)train + 512 && k.kv_tokens < 4u * (uint64_t)train);
    assert_true(k.kv_bytes == k.kv_tokens * per_token && k.kv_bytes <= budget - other);
    /* room for half: the largest context that fits beside a batch, in whole blocks */
    budget = other + ((uint64_t)train / 2 + 512) * per_token;
    assert_int_equal(topo_pick_ctx(g, &pp, budget, &k, NULL), TDM_OK);
    assert_false(k.trained);
    assert_int_equal(k.ctx, (int)((k.fit - 512) / 16 * 16));
    assert_true(k.ctx >= train / 2 - 16 && k.ctx <= train / 2);
    /* not even the weights: the old default, and loading says what is missing */
    assert_int_equal(topo_pick_ctx(g, &pp, other / 2, &k, NULL), TDM_OK);
    assert_true(k.ctx == train && k.kv_tokens == 0 && k.fit == 0);
    /* --kv-memory: what the budget holds beside one batch */
    pp.kv_bytes = (uint64_t)(train / 4 + 512) * per_token;
    assert_int_equal(topo_pick_ctx(g, &pp, 1ull << 40, &k, NULL), TDM_OK);
    assert_int_equal(k.ctx, train / 4);
    assert_true(k.kv_bytes == pp.kv_bytes && !k.trained);
    topo_plan_destroy(pl);
    gguf_close(g);
}

static void test_gpu_budget(void **state)
{
    (void)state;
    kern_gpu_info_t h100 = {.free_bytes = 80ull << 30, .integrated = false};
    assert_true(topo_gpu_budget(&h100, 10ull << 30) == 80ull << 30);
    kern_gpu_info_t gb10 = {.free_bytes = 119ull << 30, .integrated = true};
    assert_true(topo_gpu_budget(&gb10, 100ull << 30) == 100ull << 30);
    assert_true(topo_gpu_budget(&gb10, 200ull << 30) == 119ull << 30);

    /* The same plan on a GPU: weights and KV for f16, plus the CUDA scratch and margin. */
    gguf_ctx_t *g = open_fixture("qwen3moe-a-f32.gguf");
    topo_plan_params_t pp = {.n_shards = 2, .kv_type = TDM_TYPE_F16};
    topo_plan_t *cpu = NULL, *gpu = NULL;
    assert_int_equal(topo_plan_build(g, &pp, &cpu, NULL), TDM_OK);
    pp.device = TOPO_PLAN_CUDA;
    assert_int_equal(topo_plan_build(g, &pp, &gpu, NULL), TDM_OK);
    for (int s = 0; s < 2; s++) {
        const topo_shard_plan_t *c = &cpu->shards[s], *d = &gpu->shards[s];
        assert_true(d->weights == c->weights && d->kv == c->kv && d->scratch == c->scratch);
        kern_reserve_t r;
        topo_shard_reserve(gpu, d, &r);
        assert_true(d->backend_scratch == kern_cuda_reserve_bytes(&r));
        assert_true(d->backend_scratch > 0 && d->margin == 256ull << 20);
        assert_true(d->total ==
                    d->weights_device + d->kv + d->scratch + d->backend_scratch + d->margin);
        assert_true(c->margin == 0 && c->backend_scratch == topo_cpu_reserve_bytes(&r, 1));
    }
    topo_plan_destroy(cpu);
    topo_plan_destroy(gpu);
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
        cmocka_unit_test(test_kv_types),
        cmocka_unit_test(test_cuda_reserve),
        cmocka_unit_test(test_gpu_budget),
        cmocka_unit_test(test_pick_ctx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
