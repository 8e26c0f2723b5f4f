/*
 * topo_ctx.c - the context `tandem serve` defaults to (topo_pick_ctx in topo_plan.h).
 *
 * Agents need long contexts: an OpenCode or Claude Code system prompt with its tool
 * definitions runs to tens of thousands of tokens, and a server that cuts the context to a
 * fixed 8192 makes them fail or lose their tools. So the default is the model's trained
 * context, checked against the memory plan (the same counts `tandem plan` prints), and only
 * when that cannot hold one such sequence is the context cut, to the largest that fits.
 */
#include "topology/topo_plan.h"

#include "common/check.h"

#define LEGACY_CTX 8192 /* the old default: short requests keep its KV concurrency */

static uint64_t round_up(uint64_t x, uint64_t m)
{
    return (x + m - 1) / m * m;
}

tdm_status_t topo_pick_ctx(const gguf_ctx_t *g, const topo_plan_params_t *p, uint64_t budget,
                           topo_ctx_pick_t *out, tdm_error_t *err)
{
    *out = (topo_ctx_pick_t){0};
    mdl_hparams_t hp;
    TDM_CHECK(mdl_hparams_load(g, &hp, err));
    const int train = hp.n_ctx_train > 0 ? hp.n_ctx_train : 4096;
    out->ctx_train = train;
    topo_plan_params_t q = *p;
    q.n_shards = 1;
    q.tp = q.ep = 1;
    q.ctx_size = train;
    topo_plan_t *pl = NULL;
    TDM_CHECK(topo_plan_build(g, &q, &pl, err));
    const uint64_t bt = (uint64_t)pl->p.block_tokens, batch = (uint64_t)pl->p.batch;
    if (p->kv_bytes > 0) {
        /* an explicit budget: the context is what it holds beside one batch */
        uint64_t room = (uint64_t)pl->kv_tokens > batch ? (uint64_t)pl->kv_tokens - batch : 0;
        room = room / bt * bt;
        out->ctx = room >= (uint64_t)train ? train : (int)(room > bt ? room : bt);
        out->kv_bytes = p->kv_bytes;
        out->kv_tokens = (uint64_t)pl->kv_tokens;
        out->trained = out->ctx == train;
        topo_plan_destroy(pl);
        return TDM_OK;
    }
    out->fit = topo_plan_kv_tokens_fit(pl, budget);
    const uint64_t need = round_up((uint64_t)train + batch, bt);
    uint64_t want = 4 * (uint64_t)(train < LEGACY_CTX ? train : LEGACY_CTX);
    want = round_up(want > need ? want : need, bt);
    if (out->fit >= want) {
        out->ctx = train;
        out->kv_tokens = want;
        /* the executor's own default when it is the same: 4 x ctx */
        out->kv_bytes =
            want == round_up(4 * (uint64_t)train, bt) ? 0 : topo_plan_kv_bytes(pl, want);
    } else if (out->fit >= need) {
        out->ctx = train;
        out->kv_tokens = out->fit;
        out->kv_bytes = topo_plan_kv_bytes(pl, out->fit);
    } else {
        /* the largest context that fits with a batch beside it; when not even a short one
         * does, the old default, and loading says what is missing */
        const uint64_t ctx = out->fit > batch ? (out->fit - batch) / bt * bt : 0;
        if (ctx >= bt) {
            out->ctx = (int)ctx;
            out->kv_tokens = out->fit;
            out->kv_bytes = topo_plan_kv_bytes(pl, out->fit);
        } else {
            out->ctx = train < LEGACY_CTX ? train : LEGACY_CTX;
        }
    }
    out->trained = out->ctx == train;
    topo_plan_destroy(pl);
    return TDM_OK;
}
