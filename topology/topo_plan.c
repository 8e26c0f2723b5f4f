/*
 * topo_plan.c - the per-shard memory plan (topo_plan.h): the partition of shard/model.c
 * reproduced over tensor infos, expert placement by bytes, KV and buffer sizes, on the CPU
 * or on a GPU (the weight store, the CUDA backend's reserve and check_fit's margin).
 */
#include "common/check.h"
#include "common/mem.h"
#include "common/meminfo.h"
#include "kernels/kern.h"
#include "topology/topo_plan.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BATCH        512
#define DEFAULT_N_OUT        64
#define DEFAULT_BLOCK_TOKENS 16 /* SHD_KV_BLOCK_TOKENS_DEFAULT */
#define DEFAULT_CTX_CAP      8192
#define MAX_SHARDS           1024
#define GPU_WEIGHT_ALIGN     256 /* kernels/cuda/backend_cuda.cu CU_WEIGHT_ALIGN */

const char *topo_split_name(topo_split_t s)
{
    static const char *const names[TOPO_SPLIT_COUNT] = {
        "replicated", "tp_rows", "tp_cols", "kv_shared", "experts", "unused", "world"};
    return (unsigned)s < TOPO_SPLIT_COUNT ? names[s] : "?";
}

const char *topo_class_name(topo_class_t c)
{
    static const char *const names[TOPO_CLASS_COUNT] = {
        "embeddings_norms", "attention", "dense_ffn", "experts", "output", "mtp", "unused"};
    return (unsigned)c < TOPO_CLASS_COUNT ? names[c] : "?";
}

/* ---- LPT ---------------------------------------------------------------------------- */

typedef struct lpt_item {
    uint64_t bytes;
    int idx;
} lpt_item_t;

static int cmp_item(const void *a, const void *b)
{
    const lpt_item_t *x = a, *y = b;
    if (x->bytes != y->bytes) {
        return x->bytes > y->bytes ? -1 : 1;
    }
    return (x->idx > y->idx) - (x->idx < y->idx);
}

tdm_status_t topo_lpt_assign(const uint64_t *bytes, int n, int n_bins, int *bin_of, uint64_t *load,
                             tdm_error_t *err)
{
    if (n < 0 || n_bins < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "bin packing: %d items into %d bins", n,
                             n_bins);
    }
    memset(load, 0, (size_t)n_bins * sizeof(uint64_t));
    if (n == 0) {
        return TDM_OK;
    }
    lpt_item_t *items = malloc((size_t)n * sizeof(*items));
    if (items == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "bin packing: out of memory for %d items", n);
    }
    for (int i = 0; i < n; i++) {
        items[i] = (lpt_item_t){bytes[i], i};
    }
    qsort(items, (size_t)n, sizeof(*items), cmp_item);
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int b = 1; b < n_bins; b++) {
            if (load[b] < load[best]) {
                best = b;
            }
        }
        bin_of[items[i].idx] = best;
        load[best] += items[i].bytes;
    }
    free(items);
    return TDM_OK;
}

/* ---- memory sizes ------------------------------------------------------------------- */

tdm_status_t topo_meminfo_available(const char *path, uint64_t *out, tdm_error_t *err)
{
    return tdm_meminfo_read(path, out, NULL, err);
}

bool topo_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (errno != 0 || end == s || !(x >= 0) || isspace((unsigned char)*s)) {
        return false;
    }
    double mul = 1.0;
    switch (toupper((unsigned char)*end)) {
    case 'K':
        mul = 1024.0;
        break;
    case 'M':
        mul = 1024.0 * 1024.0;
        break;
    case 'G':
        mul = 1024.0 * 1024.0 * 1024.0;
        break;
    case 'T':
        mul = 1024.0 * 1024.0 * 1024.0 * 1024.0;
        break;
    default:
        break;
    }
    if (mul > 1.0) {
        end++;
        if (*end == 'i') {
            end++;
        }
    }
    if (*end == 'B' || *end == 'b') {
        end++;
    }
    x *= mul;
    if (*end != '\0' || x >= 1.8e19) {
        return false;
    }
    *out = (uint64_t)x;
    return true;
}

/* ---- the partition (shard/model.c plan_partition) ----------------------------------- */

typedef struct model_shape {
    bool any_dense, any_moe;
    int shexp_blk; /* the largest block of the ffn_down_shexp types (1: none) */
} model_shape_t;

static tdm_status_t check_split(const mdl_hparams_t *hp, const model_shape_t *ms, int tp, int ep,
                                tdm_error_t *err)
{
    if (tp > hp->n_head) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tp %d is more than the %d attention heads (each TP rank needs at "
                             "least one head)",
                             tp, hp->n_head);
    }
    if (ms->any_dense && hp->n_ff % tp != 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tp %d does not divide the dense FFN width %d "
                             "(feed_forward_length)",
                             tp, hp->n_ff);
    }
    if (!ms->any_moe && ep > 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "ep %d: the model has no experts, so expert parallelism has "
                             "nothing to split (use --tp)",
                             ep);
    }
    if (ms->any_moe && ep > hp->n_expert) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "ep %d is more than the %d experts (each EP group needs at least "
                             "one expert)",
                             ep, hp->n_expert);
    }
    if (hp->n_recurrent > 0 && tp > hp->gdn_v_heads) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tp %d is more than the %d Gated DeltaNet value heads (each TP rank "
                             "needs at least one)",
                             tp, hp->gdn_v_heads);
    }
    if (ms->any_moe && hp->n_ff_exp % tp != 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tp %d does not divide the expert width %d "
                             "(expert_feed_forward_length)",
                             tp, hp->n_ff_exp);
    }
    return TDM_OK;
}

/* The ranges rank (tp_rank, ep_rank) holds: plan_partition in shard/model.c, line by line. */
static void partition(const mdl_hparams_t *hp, const model_shape_t *ms, int tp, int r, int ep,
                      int ep_rank, topo_shard_plan_t *s)
{
    const int group = hp->n_head / hp->n_head_kv;
    /* uneven when tp does not divide n_head: the first n_head % tp ranks take one more */
    const int hb = hp->n_head / tp, hr = hp->n_head % tp;
    s->heads.n = hb + (r < hr);
    s->heads.lo = r * hb + (r < hr ? r : hr);
    s->kv_heads.lo = s->heads.lo / group;
    s->kv_heads.n = (s->heads.lo + s->heads.n - 1) / group + 1 - s->kv_heads.lo;
    if (ms->any_dense) {
        s->ffn_cols.n = hp->n_ff / tp;
        s->ffn_cols.lo = r * s->ffn_cols.n;
    }
    if (ms->any_moe) {
        const int base = hp->n_expert / ep, rem = hp->n_expert % ep;
        s->experts_contiguous.lo = ep_rank * base + (ep_rank < rem ? ep_rank : rem);
        s->experts_contiguous.n = base + (ep_rank < rem);
        s->expert_cols.n = hp->n_ff_exp / tp;
        s->expert_cols.lo = r * s->expert_cols.n;
    }
    if (hp->n_recurrent > 0) { /* plan_gdn_heads */
        const int nv = hp->gdn_v_heads, nk = hp->gdn_k_heads, vb = nv / tp, vr = nv % tp;
        s->gdn_v.n = vb + (r < vr);
        s->gdn_v.lo = r * vb + (r < vr ? r : vr);
        if (!hp->gdn_v_tiled) {
            s->gdn_k.lo = s->gdn_v.lo / (nv / nk);
            s->gdn_k.n = (s->gdn_v.lo + s->gdn_v.n - 1) / (nv / nk) + 1 - s->gdn_k.lo;
        } else if (s->gdn_v.lo % nk + s->gdn_v.n <= nk) {
            s->gdn_k = (topo_range_t){s->gdn_v.lo % nk, s->gdn_v.n};
        } else {
            s->gdn_k = (topo_range_t){0, nk};
        }
    }
    if (hp->n_ff_shexp > 0) { /* plan_shared_expert: over the world ranks */
        const int blk = ms->shexp_blk, world = tp * ep, wr = ep_rank * tp + r;
        const int units = hp->n_ff_shexp / blk, ub = units / world, ur = units % world;
        s->shexp_cols.n = (ub + (wr < ur)) * blk;
        s->shexp_cols.lo = (wr * ub + (wr < ur ? wr : ur)) * blk;
        if (units * blk != hp->n_ff_shexp) {
            s->shexp_cols = (topo_range_t){0, wr == 0 ? hp->n_ff_shexp : 0};
        }
    }
    if (hp->n_vocab % tp == 0) {
        s->vocab_rows.n = hp->n_vocab / tp;
        s->vocab_rows.lo = r * s->vocab_rows.n;
    } else {
        s->vocab_rows.n = hp->n_vocab;
        s->vocab_rows.lo = 0;
    }
}

/* ---- tensors ------------------------------------------------------------------------ */

typedef enum sel {
    SEL_ALL = 0,
    SEL_HEADS,   /* q heads x head_dim                                    */
    SEL_KV,      /* kv heads x head_dim                                   */
    SEL_FF,      /* dense FFN columns                                     */
    SEL_VOCAB,   /* output rows                                           */
    SEL_HEAD1,   /* q heads, one value each (attention sinks)             */
    SEL_HEADS2,  /* q heads x 2 head_dim (gated attention's q + gate)     */
    SEL_EXPERTS, /* the EP group's experts of the layer, a row of ne0 each */
    SEL_GDN_V,   /* Gated DeltaNet v heads x head_dim                     */
    SEL_GDN_V1,  /* GDN v heads, one value each (ssm_a, dt bias, b, a)    */
    SEL_GDN_BA,  /* GDN k heads x 2 (n_v / n_k) (b / a packed per k head) */
    SEL_GDN_CH,  /* GDN conv channels (q, k of the k heads, v) x taps      */
    SEL_SHEXP,   /* shared expert columns                                 */
    SEL_SHEXP1,  /* the shared expert's gate row, where any column is held */
} sel_t;

typedef struct builder {
    const gguf_ctx_t *g;
    topo_plan_t *plan;
    int cap;
} builder_t;

/* The elements (rows or columns) of a dimension of `full` that shard s binds; il and row
 * only for SEL_EXPERTS (the layer, and the elements per expert). */
static topo_range_t range_of(const topo_plan_t *pl, const topo_shard_plan_t *s, sel_t sel,
                             int64_t full, int il, int64_t row)
{
    const int hd = pl->hp.head_dim, gd = pl->hp.gdn_head_dim;
    switch (sel) {
    case SEL_HEADS:
        return (topo_range_t){s->heads.lo * hd, s->heads.n * hd};
    case SEL_KV:
        return (topo_range_t){s->kv_heads.lo * hd, s->kv_heads.n * hd};
    case SEL_FF:
        return s->ffn_cols;
    case SEL_VOCAB:
        return s->vocab_rows;
    case SEL_HEAD1:
        return s->heads;
    case SEL_HEADS2:
        return (topo_range_t){s->heads.lo * 2 * hd, s->heads.n * 2 * hd};
    case SEL_GDN_V:
        return (topo_range_t){s->gdn_v.lo * gd, s->gdn_v.n * gd};
    case SEL_GDN_V1:
        return s->gdn_v;
    case SEL_SHEXP:
        return s->shexp_cols;
    case SEL_SHEXP1:
        return (topo_range_t){0, s->shexp_cols.n > 0};
    case SEL_GDN_BA: {
        const int rr2 = 2 * (pl->hp.gdn_v_heads / pl->hp.gdn_k_heads);
        return (topo_range_t){s->gdn_k.lo * rr2, s->gdn_k.n * rr2};
    }
    case SEL_GDN_CH: /* the count only: three runs of channels, gathered */
        return (topo_range_t){0, (2 * s->gdn_k.n + s->gdn_v.n) * gd * pl->hp.gdn_conv};
    case SEL_EXPERTS: {
        const int k = il * pl->ep + s->ep_rank;
        return (topo_range_t){(int)(pl->expert_lo[k] * row), (int)(pl->expert_n[k] * row)};
    }
    default:
        return (topo_range_t){0, (int)full};
    }
}

static topo_tensor_plan_t *add_tensor(builder_t *b, const gguf_tensor_t *t, int layer,
                                      topo_split_t split, topo_class_t cls)
{
    topo_plan_t *pl = b->plan;
    if (pl->n_tensors == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        pl->tensors = tdm_xrealloc(pl->tensors, (size_t)b->cap * sizeof(topo_tensor_plan_t));
    }
    topo_tensor_plan_t *tp = &pl->tensors[pl->n_tensors++];
    memset(tp, 0, sizeof(*tp));
    snprintf(tp->name, sizeof(tp->name), "%s", t->name);
    tp->type = t->type;
    tp->nbytes = t->nbytes;
    tp->layer = layer;
    tp->split = split;
    tp->cls = cls;
    tp->per_shard = tdm_xcalloc((size_t)pl->n_shards, sizeof(uint64_t));
    return tp;
}

static const gguf_tensor_t *need(builder_t *b, const char *name, tdm_error_t *err)
{
    const gguf_tensor_t *t = gguf_find_tensor(b->g, name);
    if (t == NULL) {
        tdm_error_set(err, TDM_ERR_NOT_FOUND, "tensor '%s' is missing", name);
    }
    return t;
}

static tdm_status_t shape_error(const gguf_tensor_t *t, int64_t a, int64_t b_, int64_t c,
                                tdm_error_t *err)
{
    return tdm_error_set(err, TDM_ERR_FORMAT,
                         "tensor '%s': shape [%lld, %lld, %lld], expected [%lld, %lld, %lld]",
                         t->name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                         (long long)a, (long long)b_, (long long)c);
}

/* The loader's slice_view refuses a matrix of a type without kernels (IQ2_XXS, ...). */
static tdm_status_t check_type(const gguf_tensor_t *t, tdm_error_t *err)
{
    if (!kern_type_supported(t->type)) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tensor '%s': type %s has no kernel in this build (F32, F16, BF16, "
                             "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K, IQ4_NL, IQ4_XS and "
                             "MXFP4 do): choose another quantization of the model",
                             t->name, tdm_type_name(t->type));
    }
    return TDM_OK;
}

/* True when every shard holds all of the tensor (by rule, or because tp or ep is 1). */
static bool whole_everywhere(const topo_plan_t *pl, const topo_tensor_plan_t *tp)
{
    for (int s = 0; s < pl->n_shards; s++) {
        if (tp->per_shard[s] != tp->nbytes) {
            return false;
        }
    }
    return tp->split != TOPO_SPLIT_UNUSED;
}

/* Adds a tensor's per-shard bytes to the shards' totals; mmap_full (when not 0) is what a
 * shard that holds any of it keeps resident if the file is mapped. */
static void account(topo_plan_t *pl, const topo_tensor_plan_t *tp, uint64_t mmap_full)
{
    const bool whole = whole_everywhere(pl, tp);
    for (int s = 0; s < pl->n_shards; s++) {
        topo_shard_plan_t *sp = &pl->shards[s];
        const uint64_t v = tp->per_shard[s];
        sp->bytes[tp->cls] += v;
        if (tp->split == TOPO_SPLIT_UNUSED) {
            continue;
        }
        if (whole) {
            sp->replicated += v;
        } else {
            sp->sharded += v;
        }
        sp->weights_mmap += mmap_full > 0 && v > 0 ? mmap_full : v;
    }
}

/* A view of `bytes` bound on shard s, in the loader's order: where the GPU weight store
 * (kernels/weights_plan.c kern_weights_plan) would put it. weights_device is its running
 * end until topo_plan_build settles it. A shard that holds none of a tensor binds no view. */
static void device_view(topo_plan_t *pl, int s, uint64_t bytes)
{
    if (bytes == 0) {
        return;
    }
    uint64_t *end = &pl->shards[s].weights_device;
    *end = (*end + GPU_WEIGHT_ALIGN - 1) / GPU_WEIGHT_ALIGN * GPU_WEIGHT_ALIGN + bytes;
}

/*
 * A tensor of ne0 x ne1 values bound as f32 (shd_bind_f32): the elements `sel` of it per
 * shard (all of them: SEL_ALL), bytes pro rata. One stored in another type is converted
 * whole on the host by every shard that binds any of it. Optional (shd_bind_f32_opt): an
 * absent tensor is skipped. Under SEL_EXPERTS a shard binds only when its EP group holds
 * some of the layer's experts, as bind_moe does.
 */
static tdm_status_t bind_f32(builder_t *b, const char *name, int64_t ne0, int64_t ne1, int layer,
                             topo_class_t cls, sel_t sel, topo_split_t split, bool optional,
                             tdm_error_t *err)
{
    const gguf_tensor_t *t = gguf_find_tensor(b->g, name);
    if (t == NULL && optional) {
        return TDM_OK;
    }
    if (t == NULL) {
        return tdm_error_set(err, TDM_ERR_NOT_FOUND, "tensor '%s' is missing", name);
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        return shape_error(t, ne0, ne1, 1, err);
    }
    topo_plan_t *pl = b->plan;
    const uint64_t n_all = (uint64_t)(ne0 * ne1);
    topo_tensor_plan_t *tp = add_tensor(b, t, layer, split, cls);
    for (int s = 0; s < pl->n_shards; s++) {
        topo_shard_plan_t *sp = &pl->shards[s];
        const topo_range_t r = range_of(pl, sp, sel, (int64_t)n_all, layer, ne0);
        tp->per_shard[s] = t->nbytes * (uint64_t)r.n / n_all;
        if (sel == SEL_GDN_CH && (uint64_t)r.n < n_all) {
            sp->vec_copies += (uint64_t)r.n * sizeof(float); /* bind_conv_gather's copy */
        } else if (r.n > 0 && t->type != TDM_TYPE_F32) {
            sp->vec_copies += n_all * sizeof(float);
        }
        if (sel == SEL_EXPERTS) {
            sp->experts_as_loader += t->nbytes * (uint64_t)sp->experts_contiguous.n / (uint64_t)ne1;
        }
        device_view(pl, s, (uint64_t)r.n * sizeof(float)); /* the f32 values, copied */
    }
    account(pl, tp, t->type != TDM_TYPE_F32 ? t->nbytes : 0);
    return TDM_OK;
}

/* A 1-D vector of n elements every shard holds (shd_bind_vec). */
static tdm_status_t bind_vec(builder_t *b, const char *name, int64_t n, int layer, tdm_error_t *err)
{
    return bind_f32(b, name, n, 1, layer, TOPO_CLASS_EMBD_NORMS, SEL_ALL, TOPO_SPLIT_REPLICATED,
                    false, err);
}

/*
 * A matrix [n_cols, n_rows] (shd_bind_mat): rows or columns `sel` of it per shard, or all
 * of it (SEL_ALL). Column slices must fall on block boundaries.
 */
static tdm_status_t bind_mat(builder_t *b, const char *name, int64_t n_cols, int64_t n_rows,
                             int layer, topo_class_t cls, bool by_cols, sel_t sel,
                             topo_split_t split, tdm_error_t *err)
{
    const gguf_tensor_t *t = need(b, name, err);
    if (t == NULL) {
        return TDM_ERR_NOT_FOUND;
    }
    if (t->ne[0] != n_cols || t->ne[1] != n_rows || t->ne[2] != 1 || t->ne[3] != 1) {
        return shape_error(t, n_cols, n_rows, 1, err);
    }
    TDM_CHECK(check_type(t, err));
    topo_plan_t *pl = b->plan;
    const tdm_type_traits_t *tr = tdm_type_traits(t->type);
    for (int s = 0; by_cols && s < pl->n_shards; s++) {
        topo_range_t r = range_of(pl, &pl->shards[s], sel, n_cols, layer, 0);
        if (tr->blck == 0 || r.lo % (int)tr->blck != 0 || r.n % (int)tr->blck != 0) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "tensor '%s': tp %d gives shard %d columns [%d, %d) of a %s "
                                 "matrix, which do not fall on %u-element block boundaries (the "
                                 "shard loader refuses this; choose a smaller tp)",
                                 t->name, pl->tp, s, r.lo, r.lo + r.n, tdm_type_name(t->type),
                                 tr->blck);
        }
    }
    topo_tensor_plan_t *tp = add_tensor(b, t, layer, split, cls);
    for (int s = 0; s < pl->n_shards; s++) {
        topo_range_t r = range_of(pl, &pl->shards[s], sel, by_cols ? n_cols : n_rows, layer, 0);
        tp->per_shard[s] = by_cols ? (uint64_t)n_rows * tdm_type_row_size(t->type, r.n)
                                   : (uint64_t)r.n * tdm_type_row_size(t->type, n_cols);
        device_view(pl, s, tp->per_shard[s]);
    }
    account(pl, tp, by_cols && (pl->tp > 1 || sel == SEL_SHEXP) ? t->nbytes : 0);
    return TDM_OK;
}

/* One 3-D expert stack [n_cols, n_rows, n_expert] of layer il: the EP group's experts, each
 * split over TP by rows (gate, up) or by columns (down). */
static tdm_status_t bind_experts(builder_t *b, const gguf_tensor_t *t, int il, bool by_cols,
                                 tdm_error_t *err)
{
    topo_plan_t *pl = b->plan;
    const mdl_hparams_t *hp = &pl->hp;
    const int64_t n_cols = by_cols ? hp->n_ff_exp : hp->n_embd;
    const int64_t n_rows = by_cols ? hp->n_embd : hp->n_ff_exp;
    TDM_CHECK(check_type(t, err));
    const tdm_type_traits_t *tr = tdm_type_traits(t->type);
    for (int s = 0; by_cols && s < pl->n_shards; s++) {
        topo_range_t r = pl->shards[s].expert_cols;
        if (tr->blck == 0 || r.lo % (int)tr->blck != 0 || r.n % (int)tr->blck != 0) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "tensor '%s': tp %d gives shard %d columns [%d, %d) of each %s "
                                 "expert, which do not fall on %u-element block boundaries (the "
                                 "shard loader refuses this; choose a smaller tp)",
                                 t->name, pl->tp, s, r.lo, r.lo + r.n, tdm_type_name(t->type),
                                 tr->blck);
        }
    }
    topo_tensor_plan_t *tp = add_tensor(b, t, il, TOPO_SPLIT_EXPERTS, TOPO_CLASS_EXPERTS);
    const uint64_t per_expert = t->nbytes / (uint64_t)hp->n_expert;
    for (int s = 0; s < pl->n_shards; s++) {
        const topo_shard_plan_t *sp = &pl->shards[s];
        const uint64_t count = (uint64_t)pl->expert_n[il * pl->ep + sp->ep_rank];
        const uint64_t one = by_cols
                                 ? (uint64_t)n_rows * tdm_type_row_size(t->type, sp->expert_cols.n)
                                 : (uint64_t)sp->expert_cols.n * tdm_type_row_size(t->type, n_cols);
        tp->per_shard[s] = count * one;
        pl->shards[s].experts_as_loader += (uint64_t)sp->experts_contiguous.n * one;
        device_view(pl, s, tp->per_shard[s]);
    }
    /* Mapped, a column slice of an expert pulls in the whole expert. */
    const bool whole = whole_everywhere(pl, tp);
    for (int s = 0; s < pl->n_shards; s++) {
        topo_shard_plan_t *sp = &pl->shards[s];
        const uint64_t v = tp->per_shard[s];
        sp->bytes[TOPO_CLASS_EXPERTS] += v;
        if (whole) {
            sp->replicated += v;
        } else {
            sp->sharded += v;
        }
        sp->weights_mmap += by_cols && pl->tp > 1
                                ? (uint64_t)pl->expert_n[il * pl->ep + sp->ep_rank] * per_expert
                                : v;
    }
    return TDM_OK;
}

/* The bytes of one expert's biases in layer il (ffn_{gate,up,down}_exps.bias, where
 * present; their shapes are checked when they are bound). */
static uint64_t expert_bias_bytes(const builder_t *b, int il)
{
    static const char *const parts[3] = {"gate", "up", "down"};
    char name[GGUF_MAX_NAME];
    uint64_t sum = 0;
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof(name), "blk.%d.ffn_%s_exps.bias", il, parts[k]);
        const gguf_tensor_t *t = gguf_find_tensor(b->g, name);
        sum += t != NULL ? t->nbytes / (uint64_t)b->plan->hp.n_expert : 0;
    }
    return sum;
}

/* The three expert stacks of layer il, shape-checked; NULL entries on failure. */
static tdm_status_t find_experts(builder_t *b, int il, const gguf_tensor_t *t[3], tdm_error_t *err)
{
    static const char *const parts[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    const mdl_hparams_t *hp = &b->plan->hp;
    char name[GGUF_MAX_NAME];
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof(name), "blk.%d.%s.weight", il, parts[k]);
        t[k] = need(b, name, err);
        if (t[k] == NULL) {
            return TDM_ERR_NOT_FOUND;
        }
        const int64_t c = k == 2 ? hp->n_ff_exp : hp->n_embd,
                      r = k == 2 ? hp->n_embd : hp->n_ff_exp;
        if (t[k]->ne[0] != c || t[k]->ne[1] != r || t[k]->ne[2] != hp->n_expert ||
            t[k]->ne[3] != 1) {
            return shape_error(t[k], c, r, hp->n_expert, err);
        }
        if (t[k]->nbytes % (uint64_t)hp->n_expert != 0) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "tensor '%s': %llu bytes do not split into %d experts", name,
                                 (unsigned long long)t[k]->nbytes, hp->n_expert);
        }
    }
    return TDM_OK;
}

/* How many experts of each MoE layer each EP group holds, and where (expert_lo/n). */
static tdm_status_t place_experts(builder_t *b, tdm_error_t *err)
{
    topo_plan_t *pl = b->plan;
    const mdl_hparams_t *hp = &pl->hp;
    const int ep = pl->ep, ne = hp->n_expert;
    pl->expert_lo = tdm_xcalloc((size_t)hp->n_layer * (size_t)ep, sizeof(int));
    pl->expert_n = tdm_xcalloc((size_t)hp->n_layer * (size_t)ep, sizeof(int));
    pl->ep_load = tdm_xcalloc((size_t)ep, sizeof(uint64_t));
    if (pl->n_moe_layers == 0) {
        return TDM_OK;
    }
    const size_t n_items = (size_t)pl->n_moe_layers * (size_t)ne;
    uint64_t *bytes = malloc(n_items * sizeof(uint64_t));
    int *bin = malloc(n_items * sizeof(int));
    int *layer_of = malloc((size_t)pl->n_moe_layers * sizeof(int));
    pl->expert_owner = malloc((size_t)hp->n_layer * (size_t)ne * sizeof(int));
    if (bytes == NULL || bin == NULL || layer_of == NULL || pl->expert_owner == NULL) {
        free(bytes);
        free(bin);
        free(layer_of);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "plan: out of memory for %zu experts",
                             n_items);
    }
    tdm_status_t st = TDM_OK;
    int m = 0;
    for (int il = 0; il < hp->n_layer && st == TDM_OK; il++) {
        if (!hp->layer_moe[il]) {
            continue;
        }
        const gguf_tensor_t *t[3];
        st = find_experts(b, il, t, err);
        if (st != TDM_OK) {
            break;
        }
        const uint64_t one =
            (t[0]->nbytes + t[1]->nbytes + t[2]->nbytes) / (uint64_t)ne + expert_bias_bytes(b, il);
        for (int e = 0; e < ne; e++) {
            bytes[(size_t)m * ne + e] = one;
        }
        if (one > pl->expert_item_max) {
            pl->expert_item_max = one;
        }
        pl->expert_bytes_total += one * (uint64_t)ne;
        layer_of[m++] = il;
    }
    if (st == TDM_OK && pl->p.experts == TOPO_EXPERTS_BALANCED) {
        st = topo_lpt_assign(bytes, (int)n_items, ep, bin, pl->ep_load, err);
    }
    for (int k = 0; st == TDM_OK && k < m; k++) {
        const int il = layer_of[k];
        int *lo = &pl->expert_lo[il * ep], *n = &pl->expert_n[il * ep];
        for (int g = 0; g < ep; g++) {
            if (pl->p.experts == TOPO_EXPERTS_CONTIGUOUS) {
                const int base = ne / ep, rem = ne % ep;
                n[g] = base + (g < rem);
            } else {
                n[g] = 0;
                for (int e = 0; e < ne; e++) {
                    n[g] += bin[(size_t)k * ne + e] == g;
                }
            }
            lo[g] = g == 0 ? 0 : lo[g - 1] + n[g - 1];
            for (int e = lo[g]; e < lo[g] + n[g]; e++) {
                pl->expert_owner[(size_t)il * ne + e] = g;
            }
        }
        if (pl->p.experts == TOPO_EXPERTS_CONTIGUOUS) {
            for (int g = 0; g < ep; g++) {
                pl->ep_load[g] += (uint64_t)n[g] * bytes[(size_t)k * ne];
            }
        }
    }
    for (int il = 0; st == TDM_OK && il < hp->n_layer; il++) {
        if (!hp->layer_moe[il]) {
            for (int e = 0; e < ne; e++) {
                pl->expert_owner[(size_t)il * ne + e] = -1;
            }
        }
    }
    free(bytes);
    free(bin);
    free(layer_of);
    return st;
}

/* bind_attention of shard/model.c, tensor by tensor: norm, q/k/v/o, their optional
 * biases (q/k/v this shard's heads, o whole), q/k norms (per head, or this shard's slice of
 * the full-width ones) and the sinks of its heads. */
static tdm_status_t plan_attention(builder_t *b, int il, tdm_error_t *err)
{
    topo_plan_t *pl = b->plan;
    const mdl_hparams_t *hp = &pl->hp;
    const int64_t hd = hp->head_dim, E = hp->n_embd;
    const int64_t QD = (int64_t)hp->n_head * hd, KD = (int64_t)hp->n_head_kv * hd;
    const topo_split_t kv_split =
        hp->n_head_kv % pl->tp == 0 ? TOPO_SPLIT_TP_ROWS : TOPO_SPLIT_KV_SHARED;
    const topo_class_t A = TOPO_CLASS_ATTENTION, N = TOPO_CLASS_EMBD_NORMS;
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    TDM_CHECK(bind_vec(b, NAME("attn_norm.weight"), E, il, err));
    if (hp->attn_out_gate) { /* each head's q rows followed by its gate rows */
        TDM_CHECK(bind_mat(b, NAME("attn_q.weight"), E, 2 * QD, il, A, false, SEL_HEADS2,
                           TOPO_SPLIT_TP_ROWS, err));
    } else {
        TDM_CHECK(bind_mat(b, NAME("attn_q.weight"), E, QD, il, A, false, SEL_HEADS,
                           TOPO_SPLIT_TP_ROWS, err));
    }
    TDM_CHECK(bind_mat(b, NAME("attn_k.weight"), E, KD, il, A, false, SEL_KV, kv_split, err));
    TDM_CHECK(bind_mat(b, NAME("attn_v.weight"), E, KD, il, A, false, SEL_KV, kv_split, err));
    TDM_CHECK(bind_mat(b, NAME("attn_output.weight"), QD, E, il, A, true, SEL_HEADS,
                       TOPO_SPLIT_TP_COLS, err));
    TDM_CHECK(
        bind_f32(b, NAME("attn_q.bias"), QD, 1, il, A, SEL_HEADS, TOPO_SPLIT_TP_ROWS, true, err));
    TDM_CHECK(bind_f32(b, NAME("attn_k.bias"), KD, 1, il, A, SEL_KV, kv_split, true, err));
    TDM_CHECK(bind_f32(b, NAME("attn_v.bias"), KD, 1, il, A, SEL_KV, kv_split, true, err));
    TDM_CHECK(bind_f32(b, NAME("attn_output.bias"), E, 1, il, A, SEL_ALL, TOPO_SPLIT_REPLICATED,
                       true, err));
    if (hp->qk_norm && hp->qk_norm_full) {
        TDM_CHECK(bind_f32(b, NAME("attn_q_norm.weight"), QD, 1, il, N, SEL_HEADS,
                           TOPO_SPLIT_TP_ROWS, false, err));
        TDM_CHECK(
            bind_f32(b, NAME("attn_k_norm.weight"), KD, 1, il, N, SEL_KV, kv_split, false, err));
    } else if (hp->qk_norm) {
        TDM_CHECK(bind_vec(b, NAME("attn_q_norm.weight"), hd, il, err));
        TDM_CHECK(bind_vec(b, NAME("attn_k_norm.weight"), hd, il, err));
    }
    if (hp->attn_sinks) {
        TDM_CHECK(bind_f32(b, NAME("attn_sinks.weight"), hp->n_head, 1, il, A, SEL_HEAD1,
                           TOPO_SPLIT_TP_ROWS, false, err));
    }
#undef NAME
    return TDM_OK;
}

/* attn_qkv under shd_bind_gdn: three row views (q and k of the k heads held, v of the v
 * heads held), one tensor's bytes. */
static tdm_status_t plan_gdn_qkv(builder_t *b, const char *name, int il, tdm_error_t *err)
{
    topo_plan_t *pl = b->plan;
    const mdl_hparams_t *hp = &pl->hp;
    const int64_t E = hp->n_embd, d = hp->gdn_head_dim;
    const int64_t ch = (2 * (int64_t)hp->gdn_k_heads + hp->gdn_v_heads) * d;
    const gguf_tensor_t *t = need(b, name, err);
    if (t == NULL) {
        return TDM_ERR_NOT_FOUND;
    }
    if (t->ne[0] != E || t->ne[1] != ch || t->ne[2] != 1 || t->ne[3] != 1) {
        return shape_error(t, E, ch, 1, err);
    }
    TDM_CHECK(check_type(t, err));
    const bool whole = pl->tp == 1;
    topo_tensor_plan_t *tp = add_tensor(
        b, t, il, whole ? TOPO_SPLIT_REPLICATED : TOPO_SPLIT_TP_ROWS, TOPO_CLASS_ATTENTION);
    const uint64_t row = tdm_type_row_size(t->type, E);
    for (int s = 0; s < pl->n_shards; s++) {
        const topo_shard_plan_t *sp = &pl->shards[s];
        const uint64_t nk = (uint64_t)sp->gdn_k.n * (uint64_t)d,
                       nv = (uint64_t)sp->gdn_v.n * (uint64_t)d;
        tp->per_shard[s] = (2 * nk + nv) * row;
        device_view(pl, s, nk * row);
        device_view(pl, s, nk * row);
        device_view(pl, s, nv * row);
    }
    account(pl, tp, 0);
    return TDM_OK;
}

/* shd_bind_gdn of shard/model.c: this shard's v heads and the k heads they read (rows of
 * the projections, channels of the conv, columns of ssm_out); the norm whole. */
static tdm_status_t plan_gdn(builder_t *b, int il, tdm_error_t *err)
{
    const topo_plan_t *pl = b->plan;
    const mdl_hparams_t *hp = &pl->hp;
    const int64_t E = hp->n_embd, d = hp->gdn_head_dim, nv = hp->gdn_v_heads;
    const int64_t ch = (2 * (int64_t)hp->gdn_k_heads + nv) * d, vd = nv * d;
    const topo_class_t A = TOPO_CLASS_ATTENTION, N = TOPO_CLASS_EMBD_NORMS;
    const bool whole = pl->tp == 1;
    const topo_split_t R = whole ? TOPO_SPLIT_REPLICATED : TOPO_SPLIT_TP_ROWS;
    const topo_split_t C = whole ? TOPO_SPLIT_REPLICATED : TOPO_SPLIT_TP_COLS;
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    TDM_CHECK(bind_vec(b, NAME("attn_norm.weight"), E, il, err));
    TDM_CHECK(plan_gdn_qkv(b, NAME("attn_qkv.weight"), il, err));
    TDM_CHECK(bind_mat(b, NAME("attn_gate.weight"), E, vd, il, A, false, SEL_GDN_V, R, err));
    if (gguf_find_tensor(b->g, NAME("ssm_ba.weight")) != NULL) {
        if (hp->gdn_v_tiled && !whole) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "%s: b / a gates packed per k head with v heads in tiled order "
                                 "do not split over tp %d",
                                 hp->arch_name, pl->tp);
        }
        TDM_CHECK(bind_mat(b, n, E, 2 * nv, il, A, false, SEL_GDN_BA, R, err));
    } else {
        TDM_CHECK(bind_mat(b, NAME("ssm_beta.weight"), E, nv, il, A, false, SEL_GDN_V1, R, err));
        TDM_CHECK(bind_mat(b, NAME("ssm_alpha.weight"), E, nv, il, A, false, SEL_GDN_V1, R, err));
    }
    TDM_CHECK(bind_f32(b, NAME("ssm_conv1d.weight"), hp->gdn_conv, ch, il, A,
                       whole ? SEL_ALL : SEL_GDN_CH, R, false, err));
    TDM_CHECK(bind_f32(b, NAME("ssm_a"), nv, 1, il, N, SEL_GDN_V1, R, false, err));
    TDM_CHECK(bind_f32(b, NAME("ssm_dt.bias"), nv, 1, il, N, SEL_GDN_V1, R, false, err));
    TDM_CHECK(bind_vec(b, NAME("ssm_norm.weight"), d, il, err));
    TDM_CHECK(bind_mat(b, NAME("ssm_out.weight"), vd, E, il, A, true, SEL_GDN_V, C, err));
#undef NAME
    return TDM_OK;
}

static tdm_status_t plan_shared_expert(builder_t *b, int il, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &b->plan->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff_shexp;
    const topo_class_t D = TOPO_CLASS_DENSE_FFN;
    const bool whole = b->plan->n_shards == 1;
    const topo_split_t W = whole ? TOPO_SPLIT_REPLICATED : TOPO_SPLIT_WORLD;
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    TDM_CHECK(
        bind_mat(b, NAME("ffn_gate_inp_shexp.weight"), E, 1, il, D, false, SEL_SHEXP1, W, err));
    TDM_CHECK(bind_mat(b, NAME("ffn_gate_shexp.weight"), E, F, il, D, false, SEL_SHEXP, W, err));
    TDM_CHECK(bind_mat(b, NAME("ffn_up_shexp.weight"), E, F, il, D, false, SEL_SHEXP, W, err));
    TDM_CHECK(bind_mat(b, NAME("ffn_down_shexp.weight"), F, E, il, D, true, SEL_SHEXP, W, err));
#undef NAME
    return TDM_OK;
}

/* shd_bind_std_layer, tensor by tensor: the attention (or a hybrid model's Gated DeltaNet),
 * the FFN input norm (gpt-oss and the hybrid models name it post_attention_norm), then
 * bind_dense_ffn or bind_moe (and a shared expert). */
static tdm_status_t plan_layer(builder_t *b, int il, tdm_error_t *err)
{
    topo_plan_t *pl = b->plan;
    const mdl_hparams_t *hp = &pl->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff, FE = hp->n_ff_exp, NE = hp->n_expert;
    char n[GGUF_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof(n), "blk.%d." suffix, il), n)
    if (hp->layer_recurrent[il]) {
        TDM_CHECK(plan_gdn(b, il, err));
    } else {
        TDM_CHECK(plan_attention(b, il, err));
    }
    const bool post = hp->arch == MDL_ARCH_GPT_OSS || hp->n_recurrent > 0;
    TDM_CHECK(bind_vec(b, post ? NAME("post_attention_norm.weight") : NAME("ffn_norm.weight"), E,
                       il, err));
    if (hp->n_ff_shexp > 0 && hp->layer_moe[il]) {
        TDM_CHECK(plan_shared_expert(b, il, err));
    }
    if (!hp->layer_moe[il]) {
        const topo_class_t D = TOPO_CLASS_DENSE_FFN;
        TDM_CHECK(bind_mat(b, NAME("ffn_gate.weight"), E, F, il, D, false, SEL_FF,
                           TOPO_SPLIT_TP_ROWS, err));
        TDM_CHECK(bind_mat(b, NAME("ffn_up.weight"), E, F, il, D, false, SEL_FF, TOPO_SPLIT_TP_ROWS,
                           err));
        TDM_CHECK(bind_mat(b, NAME("ffn_down.weight"), F, E, il, D, true, SEL_FF,
                           TOPO_SPLIT_TP_COLS, err));
        TDM_CHECK(
            bind_f32(b, NAME("ffn_gate.bias"), F, 1, il, D, SEL_FF, TOPO_SPLIT_TP_ROWS, true, err));
        TDM_CHECK(
            bind_f32(b, NAME("ffn_up.bias"), F, 1, il, D, SEL_FF, TOPO_SPLIT_TP_ROWS, true, err));
        TDM_CHECK(bind_f32(b, NAME("ffn_down.bias"), E, 1, il, D, SEL_ALL, TOPO_SPLIT_REPLICATED,
                           true, err));
        return TDM_OK;
    }
    /* The router is replicated: every shard routes every token. */
    const topo_class_t R = TOPO_CLASS_EMBD_NORMS, X = TOPO_CLASS_EXPERTS;
    TDM_CHECK(bind_mat(b, NAME("ffn_gate_inp.weight"), E, NE, il, R, false, SEL_ALL,
                       TOPO_SPLIT_REPLICATED, err));
    TDM_CHECK(bind_f32(b, NAME("ffn_gate_inp.bias"), NE, 1, il, R, SEL_ALL, TOPO_SPLIT_REPLICATED,
                       true, err));
    TDM_CHECK(bind_f32(b, NAME("exp_probs_b.bias"), NE, 1, il, R, SEL_ALL, TOPO_SPLIT_REPLICATED,
                       true, err));
    const gguf_tensor_t *ex[3];
    TDM_CHECK(find_experts(b, il, ex, err));
    TDM_CHECK(bind_experts(b, ex[0], il, false, err));
    TDM_CHECK(bind_experts(b, ex[1], il, false, err));
    TDM_CHECK(bind_experts(b, ex[2], il, true, err));
    /* each expert's bias rows whole on every TP rank of its group */
    TDM_CHECK(bind_f32(b, NAME("ffn_gate_exps.bias"), FE, NE, il, X, SEL_EXPERTS,
                       TOPO_SPLIT_EXPERTS, true, err));
    TDM_CHECK(bind_f32(b, NAME("ffn_up_exps.bias"), FE, NE, il, X, SEL_EXPERTS, TOPO_SPLIT_EXPERTS,
                       true, err));
    TDM_CHECK(bind_f32(b, NAME("ffn_down_exps.bias"), E, NE, il, X, SEL_EXPERTS, TOPO_SPLIT_EXPERTS,
                       true, err));
#undef NAME
    return TDM_OK;
}

static size_t pad16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* The step scratch arena of shard/model.c alloc_scratch (scratch_sizes), in bytes. */
static uint64_t scratch_bytes(const topo_plan_t *pl, const topo_shard_plan_t *s)
{
    const mdl_hparams_t *hp = &pl->hp;
    const size_t B = (size_t)pl->p.batch, E = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
    const size_t k = (size_t)(hp->n_expert_used > 0 ? hp->n_expert_used : 1);
    const size_t nout = (size_t)pl->p.n_out;
    const size_t nh = (size_t)s->heads.n, nkv = (size_t)s->kv_heads.n;
    const size_t ff = (size_t)s->ffn_cols.n, nv = (size_t)s->vocab_rows.n;
    const bool split_vocab = s->vocab_rows.n != hp->n_vocab;
    /* the hybrid models' buffers (gated attention, shared expert, Gated DeltaNet) */
    const bool gdn = hp->n_recurrent > 0, shexp = hp->n_ff_shexp > 0;
    const size_t gdn_vd = gdn ? (size_t)hp->gdn_v_heads * (size_t)hp->gdn_head_dim : 0;
    const size_t gdn_ch = gdn ? gdn_vd + 2 * (size_t)hp->gdn_k_heads * (size_t)hp->gdn_head_dim : 0;
    const size_t sizes[] = {
        hp->attn_out_gate ? B * nh * 2 * hd : 0,           /* qg   */
        B * (size_t)hp->n_ff_shexp,                        /* sha  */
        B * (size_t)hp->n_ff_shexp,                        /* shb  */
        shexp ? B * E : 0,                                 /* shy  */
        shexp ? B : 0,                                     /* shg  */
        B * gdn_ch,                                        /* gqkv */
        B * gdn_vd,                                        /* gz   */
        B * 2 * (size_t)hp->gdn_v_heads,                   /* gba  */
        B * gdn_vd,                                        /* go   */
        pl->p.mtp ? B * E : 0,                             /* hin  */
        B * E,                                             /* x    */
        B * E,                                             /* xn   */
        B * nh * hd,                                       /* q    */
        B * nkv * hd,                                      /* k    */
        B * nkv * hd,                                      /* v    */
        B * nh * hd,                                       /* attn */
        B * ff,                                            /* ff_a */
        B * ff,                                            /* ff_b */
        B * (size_t)(hp->n_expert > 0 ? hp->n_expert : 1), /* rlog */
        B * k,                                             /* sel  */
        B * k,                                             /* selw */
        nout * E,                                          /* lx   */
        hp->qk_norm_full ? 2 * B : 0,                      /* ss   */
        B * E,                                             /* proj */
        nout * nv,                                         /* lg   */
        split_vocab ? (size_t)pl->tp * nout * nv : 0,      /* lgg  */
    };
    size_t total = 0;
    for (size_t i = 0; i < TDM_ARRAY_SIZE(sizes); i++) {
        total += pad16(sizes[i]);
    }
    return (uint64_t)total * sizeof(float);
}

void topo_shard_reserve(const topo_plan_t *pl, const topo_shard_plan_t *s, kern_reserve_t *out)
{
    const mdl_hparams_t *hp = &pl->hp;
    const int64_t q = (int64_t)s->heads.n * hp->head_dim,
                  kv = (int64_t)s->kv_heads.n * hp->head_dim;
    const int64_t ff = s->ffn_cols.n, ffe = s->expert_cols.n;
    int64_t max_cols = hp->n_embd, max_rows = s->vocab_rows.n;
    const int64_t gdn_vd = (int64_t)hp->gdn_v_heads * hp->gdn_head_dim;
    const int64_t widths[] = {q, ff, ffe, hp->n_ff_shexp, gdn_vd};
    for (size_t i = 0; i < TDM_ARRAY_SIZE(widths); i++) {
        max_cols = widths[i] > max_cols ? widths[i] : max_cols;
    }
    const int64_t rows[] = {hp->n_embd,
                            q,
                            kv,
                            ff,
                            ffe,
                            hp->n_expert,
                            q * (hp->attn_out_gate ? 2 : 1),
                            hp->n_ff_shexp,
                            gdn_vd + 2 * (int64_t)hp->gdn_k_heads * hp->gdn_head_dim};
    for (size_t i = 0; i < TDM_ARRAY_SIZE(rows); i++) {
        max_rows = rows[i] > max_rows ? rows[i] : max_rows;
    }
    *out = (kern_reserve_t){
        .n_tok = pl->p.batch,
        .n_out = pl->p.n_out,
        .n_ctx = pl->p.ctx_size,
        .max_cols = max_cols,
        .max_rows = max_rows,
        .n_head = s->heads.n,
        .head_dim = hp->head_dim,
        .n_expert = hp->n_expert,
        .n_expert_used = hp->n_expert_used,
        .n_embd = hp->n_embd,
        .n_ff_exp = ffe,
        .swa_tables = pl->n_swa_layers > 0,
        .gdn_head_dim = hp->n_recurrent > 0 ? hp->gdn_head_dim : 0,
    };
}

uint64_t topo_cpu_reserve_bytes(const kern_reserve_t *r, int threads)
{
    return kern_cpu_reserve_bytes(r, threads);
}

tdm_status_t topo_kv_type_parse(const char *name, topo_plan_device_t device, tdm_type_t *out,
                                tdm_error_t *err)
{
    if (name == NULL || strcmp(name, "auto") == 0) {
        *out = device == TOPO_PLAN_CUDA ? TDM_TYPE_F16 : TDM_TYPE_F32;
        return TDM_OK;
    }
    const int t = tdm_type_from_name(name);
    if (t != TDM_TYPE_F32 && t != TDM_TYPE_F16 && t != TDM_TYPE_Q8_0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "--kv-type '%s': expected f32, f16, q8_0 or auto", name);
    }
    *out = (tdm_type_t)t;
    return TDM_OK;
}

const char *topo_kv_type_name(tdm_type_t t)
{
    switch (t) {
    case TDM_TYPE_F32:
        return "f32";
    case TDM_TYPE_F16:
        return "f16";
    case TDM_TYPE_Q8_0:
        return "q8_0";
    default:
        return tdm_type_name(t);
    }
}

uint64_t topo_gpu_budget(const kern_gpu_info_t *gpu, uint64_t host_available)
{
    if (gpu->integrated && host_available < gpu->free_bytes) {
        return host_available; /* the GPU's memory is the host's (DGX Spark) */
    }
    return gpu->free_bytes;
}

static tdm_status_t resolve_split(topo_plan_t *pl, const topo_plan_params_t *p,
                                  const model_shape_t *ms, tdm_error_t *err)
{
    const int n = p->n_shards;
    if (n < 1 || n > MAX_SHARDS) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "--shards %d: want 1 to %d", n,
                             MAX_SHARDS);
    }
    if (p->tp < 0 || p->ep < 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "--tp %d / --ep %d: want positive", p->tp,
                             p->ep);
    }
    int tp = p->tp, ep = p->ep;
    pl->split_chosen = tp == 0 && ep == 0;
    if (tp == 0 && ep == 0) {
        if (ms->any_moe && n <= pl->hp.n_expert) {
            ep = n;
            tp = 1;
        } else {
            tp = n;
            ep = 1;
        }
    } else if (tp == 0) {
        if (n % ep != 0) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "--ep %d does not divide --shards %d (shards = tp x ep)", ep, n);
        }
        tp = n / ep;
    } else if (ep == 0) {
        if (n % tp != 0) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "--tp %d does not divide --shards %d (shards = tp x ep)", tp, n);
        }
        ep = n / tp;
    }
    if (tp * ep != n) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "--shards %d is not --tp %d x --ep %d (shards = tp x ep)", n, tp, ep);
    }
    TDM_CHECK(check_split(&pl->hp, ms, tp, ep, err));
    pl->n_shards = n;
    pl->tp = tp;
    pl->ep = ep;
    return TDM_OK;
}

/*
 * The sliding-window layers' pool for a full pool of n_blocks blocks: shard/model.c
 * shd_model_kv_pools's rule (shd_kv_swa_pool_want), sized from the concurrency it serves,
 * not the context: min(n_blocks, 2 x n_out x (ceil((w - 1) / bt) + 2) + ceil(batch / bt)).
 * tests/unit/test_topo_plan.c checks the two agree.
 */
static uint64_t swa_pool_blocks(const topo_plan_t *pl, uint64_t n_blocks)
{
    if (pl->n_swa_layers == 0) {
        return 0;
    }
    const uint64_t bt = (uint64_t)pl->p.block_tokens, w = (uint64_t)pl->swa_window;
    const uint64_t n_seqs = (uint64_t)(pl->p.n_out > 0 ? pl->p.n_out : 64);
    const uint64_t want =
        2 * n_seqs * ((w - 1 + bt - 1) / bt + 2) + ((uint64_t)pl->p.batch + bt - 1) / bt;
    return want < n_blocks ? want : n_blocks;
}

/* KV bytes of shard s for a full pool of n_blocks blocks (and the sliding pool it implies). */
static uint64_t kv_bytes_of(const topo_plan_t *pl, const topo_shard_plan_t *sp, uint64_t n_blocks)
{
    const uint64_t bt = (uint64_t)pl->p.block_tokens;
    return n_blocks * bt * sp->kv_per_token_full +
           swa_pool_blocks(pl, n_blocks) * bt * sp->kv_per_token_swa + sp->state;
}

/* The most full-pool blocks whose KV fits `bytes` on every shard (0 when none). */
static uint64_t kv_blocks_within(const topo_plan_t *pl, uint64_t bytes)
{
    uint64_t lo = 0, hi = (uint64_t)INT32_MAX / 2;
    while (lo < hi) {
        const uint64_t mid = lo + (hi - lo + 1) / 2;
        bool fits = true;
        for (int s = 0; s < pl->n_shards && fits; s++) {
            fits = kv_bytes_of(pl, &pl->shards[s], mid) <= bytes;
        }
        if (fits) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

static tdm_status_t plan_kv(topo_plan_t *pl, tdm_error_t *err)
{
    const mdl_hparams_t *hp = &pl->hp;
    const uint64_t bt = (uint64_t)pl->p.block_tokens;
    const tdm_type_t kt = pl->p.kv_type;
    if (kt != TDM_TYPE_F32 && kt != TDM_TYPE_F16 && kt != TDM_TYPE_Q8_0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "KV cache type %s: expected f32, f16 or q8_0", topo_kv_type_name(kt));
    }
    /* shard/model.c shd_model_kv_blocks: one row of head_dim values per head and token */
    const uint64_t row = tdm_type_row_size(kt, hp->head_dim);
    if (row == 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "KV cache type %s needs a head dim that is a multiple of %u (the "
                             "model's is %d): use --kv-type f16",
                             topo_kv_type_name(kt), tdm_type_traits(kt)->blck, hp->head_dim);
    }
    /* layers by kind: the sliding-window ones (hp.layer_swa, when there is a window) and the
     * full-attention rest */
    pl->n_swa_layers = 0;
    for (int il = 0; hp->n_swa > 0 && il < hp->n_layer; il++) {
        pl->n_swa_layers += hp->layer_swa[il] != 0;
    }
    pl->swa_window = pl->n_swa_layers > 0 ? hp->n_swa : 0;
    /* Gated DeltaNet layers keep no K/V but a recurrent state per running sequence
     * (shd_model_kv_pools: n_out slots, taken from the budget first) */
    /* shard/model.c shd_model_kv_pools: the MTP block, when it runs, keeps its K/V in the
     * full pool as one more layer */
    const uint64_t n_full =
        (uint64_t)(hp->n_layer - pl->n_swa_layers - hp->n_recurrent + (pl->p.mtp ? 1 : 0));
    pl->n_state_slots = hp->n_recurrent > 0 ? pl->p.n_out : 0;
    pl->n_state_store = pl->n_state_slots; /* serve's default: a stored prefix state each */
    uint64_t max_block = 0;
    int worst = 0;
    for (int s = 0; s < pl->n_shards; s++) {
        topo_shard_plan_t *sp = &pl->shards[s];
        const uint64_t layer = 2u * (uint64_t)sp->kv_heads.n * row; /* K and V of one layer */
        sp->kv_per_token_full = n_full * layer;
        sp->kv_per_token_swa = (uint64_t)pl->n_swa_layers * layer;
        sp->kv_per_token = sp->kv_per_token_full + sp->kv_per_token_swa;
        /* shd_model_state_bytes: this shard's GDN heads */
        const uint64_t gd = (uint64_t)hp->gdn_head_dim;
        const uint64_t one =
            hp->n_recurrent > 0
                ? (uint64_t)hp->n_recurrent *
                      ((uint64_t)(hp->gdn_conv - 1) *
                           (2 * (uint64_t)sp->gdn_k.n + (uint64_t)sp->gdn_v.n) * gd +
                       (uint64_t)sp->gdn_v.n * gd * gd) *
                      sizeof(float)
                : 0;
        sp->state = (uint64_t)(pl->n_state_slots + pl->n_state_store) * one;
        if (kv_bytes_of(pl, sp, 1) > max_block) {
            max_block = kv_bytes_of(pl, sp, 1);
            worst = s;
        }
    }
    /* transport/exec_local.c: at least one full batch plus a block. */
    const uint64_t min_blocks = ((uint64_t)pl->p.batch + bt - 1) / bt + 1;
    uint64_t n_blocks;
    if (pl->p.kv_bytes > 0) {
        n_blocks = kv_blocks_within(pl, pl->p.kv_bytes);
        if (n_blocks < min_blocks) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "--kv-memory %llu bytes holds %llu blocks of %llu tokens on "
                                 "shard %d (%llu bytes each); a batch of %d tokens needs at "
                                 "least %llu",
                                 (unsigned long long)pl->p.kv_bytes, (unsigned long long)n_blocks,
                                 (unsigned long long)bt, worst, (unsigned long long)max_block,
                                 pl->p.batch, (unsigned long long)min_blocks);
        }
    } else {
        n_blocks = ((uint64_t)pl->p.ctx_size + bt - 1) / bt;
        if (n_blocks < min_blocks) {
            n_blocks = min_blocks;
        }
    }
    if (n_blocks > (uint64_t)INT32_MAX / 2) {
        n_blocks = (uint64_t)INT32_MAX / 2;
    }
    pl->kv_blocks = (int32_t)n_blocks;
    pl->kv_tokens = (int)(n_blocks * bt);
    pl->kv_swa_blocks = (int32_t)swa_pool_blocks(pl, n_blocks);
    pl->kv_swa_tokens = (int)((uint64_t)pl->kv_swa_blocks * bt);
    for (int s = 0; s < pl->n_shards; s++) {
        pl->shards[s].kv = kv_bytes_of(pl, &pl->shards[s], n_blocks);
    }
    return TDM_OK;
}

/* The weight bytes one decoded token reads on each shard (topo_plan.h). */
static void plan_reads(topo_plan_t *pl)
{
    const mdl_hparams_t *hp = &pl->hp;
    for (int i = 0; i < pl->n_tensors; i++) {
        const topo_tensor_plan_t *t = &pl->tensors[i];
        for (int s = 0; s < pl->n_shards; s++) {
            topo_shard_plan_t *sp = &pl->shards[s];
            const uint64_t v = t->per_shard[s];
            if (t->split == TOPO_SPLIT_UNUSED || t->cls == TOPO_CLASS_MTP || v == 0) {
                continue; /* the MTP blocks are not run */
            }
            if (t->cls == TOPO_CLASS_EXPERTS) {
                const uint64_t x = v * (uint64_t)hp->n_expert_used / (uint64_t)hp->n_expert;
                sp->read_experts += x;
                sp->read_per_token += x;
            } else if (strcmp(t->name, "token_embd.weight") == 0) {
                /* one row looked up; tied, the output head's rows besides */
                const uint64_t rows = (uint64_t)hp->n_vocab;
                sp->read_per_token += t->nbytes / rows;
                if (hp->tied_output) {
                    sp->read_per_token += t->nbytes / rows * (uint64_t)sp->vocab_rows.n;
                }
            } else {
                sp->read_per_token += v;
            }
        }
    }
    pl->read_per_token_max = 0;
    for (int s = 0; s < pl->n_shards; s++) {
        if (pl->shards[s].read_per_token > pl->read_per_token_max) {
            pl->read_per_token_max = pl->shards[s].read_per_token;
        }
    }
}

uint64_t topo_plan_kv_tokens_fit(const topo_plan_t *pl, uint64_t budget)
{
    uint64_t room = UINT64_MAX;
    for (int s = 0; s < pl->n_shards; s++) {
        const topo_shard_plan_t *sp = &pl->shards[s];
        const uint64_t other = sp->total - sp->kv;
        if (other >= budget) {
            return 0;
        }
        room = budget - other < room ? budget - other : room;
    }
    return kv_blocks_within(pl, room) * (uint64_t)pl->p.block_tokens;
}

uint64_t topo_plan_kv_bytes(const topo_plan_t *pl, uint64_t tokens)
{
    const uint64_t bt = (uint64_t)pl->p.block_tokens;
    uint64_t most = 0;
    for (int s = 0; s < pl->n_shards; s++) {
        const uint64_t b = kv_bytes_of(pl, &pl->shards[s], (tokens + bt - 1) / bt);
        most = b > most ? b : most;
    }
    return most;
}

static uint64_t kv_read_of(const topo_plan_t *pl, const topo_shard_plan_t *sp, int ctx)
{
    const int w = pl->swa_window > 0 && pl->swa_window < ctx ? pl->swa_window : ctx;
    return (uint64_t)ctx * sp->kv_per_token_full + (uint64_t)w * sp->kv_per_token_swa;
}

uint64_t topo_plan_kv_read(const topo_plan_t *pl, int ctx)
{
    uint64_t most = 0;
    for (int s = 0; s < pl->n_shards; s++) {
        const uint64_t r = kv_read_of(pl, &pl->shards[s], ctx);
        most = r > most ? r : most;
    }
    return most;
}

double topo_plan_decode_ceiling(const topo_plan_t *pl, double bytes_per_s, int ctx)
{
    uint64_t most = 0;
    for (int s = 0; s < pl->n_shards; s++) {
        const uint64_t r = pl->shards[s].read_per_token + kv_read_of(pl, &pl->shards[s], ctx);
        most = r > most ? r : most;
    }
    return most > 0 ? bytes_per_s / (double)most : 0.0;
}

tdm_status_t topo_plan_build(const gguf_ctx_t *g, const topo_plan_params_t *p, topo_plan_t **out,
                             tdm_error_t *err)
{
    tdm_status_t st;
    topo_plan_t *pl = tdm_xcalloc(1, sizeof(*pl));
    builder_t b = {.g = g, .plan = pl};
    TDM_CHECK_GOTO(mdl_hparams_load(g, &pl->hp, err), st, fail);
    const mdl_hparams_t *hp = &pl->hp;

    model_shape_t ms = {false, false, 1};
    for (int il = 0; il < hp->n_layer; il++) {
        ms.any_dense |= !hp->layer_moe[il];
        ms.any_moe |= hp->layer_moe[il] != 0;
        pl->n_moe_layers += hp->layer_moe[il] != 0;
    }
    for (int il = 0; il < hp->n_layer; il++) { /* shard/model.c plan_shared_expert */
        char n[GGUF_MAX_NAME];
        snprintf(n, sizeof(n), "blk.%d.ffn_down_shexp.weight", il);
        const gguf_tensor_t *t = gguf_find_tensor(g, n);
        const int blk = t != NULL ? (int)tdm_type_traits(t->type)->blck : 1;
        ms.shexp_blk = blk > ms.shexp_blk ? blk : ms.shexp_blk;
    }
    TDM_CHECK_GOTO(resolve_split(pl, p, &ms, err), st, fail);

    if (p->device != TOPO_PLAN_CPU && p->device != TOPO_PLAN_CUDA) {
        st = tdm_error_set(err, TDM_ERR_INVALID_PARAM, "plan: device %d is not the CPU or CUDA",
                           (int)p->device);
        goto fail;
    }
    /* as shard/model.c bind_mtp_runnable and serve refuse it */
    if (p->mtp && hp->n_mtp < 1) {
        st = tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                           "--spec mtp: the model has no multi-token-prediction block (%s."
                           "nextn_predict_layers is 0 or absent)",
                           hp->arch_name);
        goto fail;
    }
    if (p->mtp && pl->n_shards > 1) {
        st = tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                           "--spec mtp runs on one node only: the MTP block is not run over "
                           "shards yet (plan --shards 1)");
        goto fail;
    }
    pl->p = *p;
    pl->p.tp = pl->tp;
    pl->p.ep = pl->ep;
    if (pl->p.batch <= 0) {
        pl->p.batch = DEFAULT_BATCH;
    }
    pl->p.spec = p->spec || p->mtp;
    pl->p.n_out = topo_logits_rows(hp, pl->p.n_out > 0 ? pl->p.n_out : DEFAULT_N_OUT, pl->p.batch,
                                   pl->p.spec, pl->p.spec_max);
    if (pl->p.threads <= 0) {
        pl->p.threads = 1;
    }
    if (pl->p.block_tokens <= 0) {
        pl->p.block_tokens = DEFAULT_BLOCK_TOKENS;
    }
    if (pl->p.ctx_size <= 0) {
        pl->p.ctx_size = hp->n_ctx_train > 0 && hp->n_ctx_train < DEFAULT_CTX_CAP ? hp->n_ctx_train
                                                                                  : DEFAULT_CTX_CAP;
    }

    pl->shards = tdm_xcalloc((size_t)pl->n_shards, sizeof(topo_shard_plan_t));
    for (int s = 0; s < pl->n_shards; s++) {
        topo_shard_plan_t *sp = &pl->shards[s];
        sp->rank = s;
        sp->tp_rank = s % pl->tp;
        sp->ep_rank = s / pl->tp;
        partition(hp, &ms, pl->tp, sp->tp_rank, pl->ep, sp->ep_rank, sp);
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        pl->model_bytes += gguf_tensor_at(g, i)->nbytes;
    }
    TDM_CHECK_GOTO(place_experts(&b, err), st, fail);

    /* shd_model_load's order: embeddings, output norm, output head, rope factors, layers. */
    TDM_CHECK_GOTO(bind_mat(&b, "token_embd.weight", hp->n_embd, hp->n_vocab, -1,
                            TOPO_CLASS_EMBD_NORMS, false, SEL_ALL, TOPO_SPLIT_REPLICATED, err),
                   st, fail);
    TDM_CHECK_GOTO(bind_vec(&b, "output_norm.weight", hp->n_embd, -1, err), st, fail);
    if (!hp->tied_output) {
        /* Tied: the output head is a view of token_embd, which every shard holds already. */
        const bool split = hp->n_vocab % pl->tp == 0;
        TDM_CHECK_GOTO(bind_mat(&b, "output.weight", hp->n_embd, hp->n_vocab, -1, TOPO_CLASS_OUTPUT,
                                false, split ? SEL_VOCAB : SEL_ALL,
                                split ? TOPO_SPLIT_TP_ROWS : TOPO_SPLIT_REPLICATED, err),
                       st, fail);
    }
    if (hp->has_rope_freqs) {
        TDM_CHECK_GOTO(bind_vec(&b, "rope_freqs.weight", hp->rope.n_rot / 2, -1, err), st, fail);
    }
    for (int il = 0; il < hp->n_layer; il++) {
        TDM_CHECK_GOTO(plan_layer(&b, il, err), st, fail);
    }
    /* shard/model.c bind_mtp: the multi-token-prediction blocks whole on every shard */
    for (uint64_t i = 0; i < gguf_n_tensors(g) && hp->n_mtp > 0; i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        int il = -1;
        if (sscanf(t->name, "blk.%d.", &il) != 1 || il < hp->n_layer ||
            il >= hp->n_layer + hp->n_mtp) {
            continue;
        }
        TDM_CHECK_GOTO(check_type(t, err), st, fail);
        topo_tensor_plan_t *tp = add_tensor(&b, t, il, TOPO_SPLIT_REPLICATED, TOPO_CLASS_MTP);
        for (int s = 0; s < pl->n_shards; s++) {
            tp->per_shard[s] = t->nbytes;
            device_view(pl, s, t->nbytes);
        }
        account(pl, tp, 0);
    }
    /* Whatever the loader does not bind is on no shard. */
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        bool seen = false;
        for (int k = 0; k < pl->n_tensors && !seen; k++) {
            seen = strcmp(pl->tensors[k].name, t->name) == 0;
        }
        if (!seen) {
            topo_tensor_plan_t *tp = add_tensor(&b, t, -1, TOPO_SPLIT_UNUSED, TOPO_CLASS_UNUSED);
            account(pl, tp, 0);
        }
    }

    TDM_CHECK_GOTO(plan_kv(pl, err), st, fail);
    for (int s = 0; s < pl->n_shards; s++) {
        topo_shard_plan_t *sp = &pl->shards[s];
        for (int il = 0; il < hp->n_layer; il++) {
            sp->expert_slots += pl->expert_n[il * pl->ep + sp->ep_rank];
        }
        sp->weights = sp->replicated + sp->sharded;
        sp->scratch = scratch_bytes(pl, sp);
        sp->comm = pl->n_shards > 1
                       ? 2u * (uint64_t)pl->p.batch * (uint64_t)hp->n_embd * sizeof(float)
                       : 0;
        kern_reserve_t r;
        topo_shard_reserve(pl, sp, &r);
        if (pl->p.device == TOPO_PLAN_CUDA) {
            /* what check_fit counts in device memory; the norm copies and the collective
             * staging stay in host memory */
            sp->backend_scratch = kern_cuda_reserve_bytes(&r);
            sp->margin = TOPO_GPU_MARGIN;
            sp->buffers = sp->scratch + sp->backend_scratch + sp->margin;
        } else {
            /* the CPU backend keeps the weights as views into the mapped file */
            sp->weights_device = sp->weights;
            sp->backend_scratch = topo_cpu_reserve_bytes(&r, pl->p.threads);
            sp->buffers = sp->scratch + sp->backend_scratch + sp->vec_copies + sp->comm;
        }
        sp->total = sp->weights_device + sp->kv + sp->buffers;
    }
    plan_reads(pl);
    *out = pl;
    return TDM_OK;
fail:
    topo_plan_destroy(pl);
    return st;
}

int topo_logits_rows(const mdl_hparams_t *hp, int max_running, int batch, bool spec, int spec_max)
{
    int extra = 0;
    if (spec) {
        const int per = spec_max > 0 ? spec_max : 8;
        extra = max_running * per < 256 ? max_running * per : 256;
        if (hp->n_recurrent > 0) {
            extra =
                max_running < TOPO_SPEC_RECURRENT_SPARES ? max_running : TOPO_SPEC_RECURRENT_SPARES;
        }
    }
    const int rows = max_running + extra;
    return rows < batch ? rows : batch;
}

void topo_plan_destroy(topo_plan_t *pl)
{
    if (pl == NULL) {
        return;
    }
    for (int i = 0; i < pl->n_tensors; i++) {
        free(pl->tensors[i].per_shard);
    }
    free(pl->tensors);
    free(pl->shards);
    free(pl->ep_load);
    free(pl->expert_owner);
    free(pl->expert_lo);
    free(pl->expert_n);
    free(pl);
}
