/*
 * cmd_eval.c - `tandem eval`: run token ids through a model (no tokenizer), print the
 * greedy continuation as JSON, optionally dump every prompt position's logits.
 *
 *   tandem eval --model M.gguf (--tokens 1,2,3 | --prompts-file F) [--greedy N]
 *               [--logits-out FILE.npy|FILE.bin] [--threads N] [--tp N] [--ep N]
 *               [--chunk N] [--block-tokens B] [--batch-test] [--device D] [--kv-type T]
 *               [--mtp-out FILE.npy [--mtp-chain K]]
 *
 * Several sequences (--prompts-file: one per line, ids separated by commas or spaces) run
 * batched together: each step carries the next prefill chunk (--chunk tokens, 0 = whole
 * prompt) of every sequence still prefilling and the decode token of every sequence that
 * is generating, so prefill and decode mix in one step. --tp/--ep run that many
 * in-process ranks (threads, transport/local_comm); every rank runs the same schedule and
 * rank 0 reports. --batch-test also runs each sequence alone and reports the largest
 * logit difference and whether the greedy tokens agree (exit 1 if they do not).
 * This is the tool the Python tests and benchmarks drive.
 *
 * --mtp-out (one sequence, one rank, a model with an MTP block): after the run, the MTP
 * block's logits for every prompt position p < n - 1 (the row pairing x_{p+1} with the
 * trunk's hidden state at p, shard/forward.h shd_forward_mtp), then K - 1 chained drafts
 * from the last one (the block on its own output state and its own argmax), as rows in
 * that order; "mtp_drafts" in the JSON lists the K drafted tokens.
 */
#include "api/cli/cli.h"
#include "common/check.h"
#include "common/mem.h"
#include "coordinator/kv_manager.h"
#include "shard/forward.h"
#include "transport/exec_remote.h"
#include "transport/local_comm.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct eval_seq {
    int32_t *prompt;
    int32_t n_prompt;
    int32_t *gen;  /* greedy tokens, n_greedy long        */
    float *logits; /* n_prompt x n_vocab (when dumping)  */
    /* --mtp-out: the trunk's hidden rows of the prompt, then the MTP block's logits
     * (n_prompt - 2 + mtp_chain rows) and its chained drafts */
    float *hidden, *mtp_logits;
    int32_t *mtp_drafts;
} eval_seq_t;

typedef struct eval_opts {
    const char *model;
    const char *logits_out;
    int n_greedy;
    int threads;
    int tp, ep;
    int chunk;
    int block_tokens;
    int batch_test;
    const char *shards; /* "H:P,H:P": run on `tandem shard` processes */
    int collective;
    const char *device;  /* auto | cpu | cuda[:N] */
    const char *kv_type; /* NULL: the device's default */
    const char *mtp_out; /* --mtp-out: the MTP block's logits (one sequence, one rank) */
    int mtp_chain;       /* drafts chained from the last prompt row (>= 1)        */
} eval_opts_t;

/* What the KV manager counted in a schedule (the batched run's goes into the JSON). */
typedef struct eval_kv {
    int32_t swa_window;      /* the sliding window of the sliding pool (0: none)     */
    int32_t blocks_peak;     /* most full-pool blocks in use at once                 */
    int32_t swa_blocks_peak; /* most sliding-pool blocks in use at once              */
} eval_kv_t;

typedef struct eval_run {
    const eval_opts_t *o;
    const gguf_ctx_t *g;
    xp_local_world_t *world;
    int n_seqs;
    eval_seq_t *seqs;  /* results of the batched run (rank 0 writes)  */
    eval_seq_t *alone; /* results of the one-at-a-time run (--batch-test) */
    int n_vocab;
    int n_embd;
    int group_tp, group_ep; /* --shards: the split the coordinator chose */
    eval_kv_t kv;           /* the batched run's KV use (rank 0)         */
} eval_run_t;

typedef struct eval_rank {
    eval_run_t *run;
    int rank;
    tdm_status_t st;
    tdm_error_t err;
} eval_rank_t;

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

/*
 * The MTP block over e's prompt (rows p = 0 .. n - 2: token x_{p+1}, the trunk's hidden
 * state at p) in chunks of the batch size, then o->mtp_chain - 1 chained rows from the last,
 * into e->mtp_logits and e->mtp_drafts. The blocks of view cover every position.
 */
static tdm_status_t run_mtp(shd_model_t *m, shd_kv_cache_t *kv, const shd_seq_view_t *view,
                            const eval_opts_t *o, eval_seq_t *e, tdm_error_t *err)
{
    const int64_t E = shd_model_hparams(m)->n_embd, V = shd_model_hparams(m)->n_vocab;
    const int32_t nb = shd_model_params(m)->n_batch_max, n = e->n_prompt;
    int32_t *tok = tdm_xmalloc((size_t)nb * sizeof(int32_t));
    int32_t *pos = tdm_xmalloc((size_t)nb * sizeof(int32_t));
    int32_t *sq = tdm_xcalloc((size_t)nb, sizeof(int32_t));
    uint8_t *want = tdm_xmalloc((size_t)nb);
    float *hout = tdm_xmalloc((size_t)nb * (size_t)E * sizeof(float));
    float *h = tdm_xmalloc((size_t)E * sizeof(float));
    tdm_status_t st = TDM_OK;
    for (int32_t p0 = 0; p0 < n - 1 && st == TDM_OK; p0 += nb) {
        const int32_t c = n - 1 - p0 < nb ? n - 1 - p0 : nb;
        for (int32_t t = 0; t < c; t++) {
            tok[t] = e->prompt[p0 + t + 1];
            pos[t] = p0 + t;
            want[t] = 1;
        }
        const shd_batch_t b = {c, tok, pos, sq, want, 1, view};
        st = shd_forward_mtp(m, kv, &b, e->hidden + (size_t)p0 * (size_t)E,
                             e->mtp_logits + (size_t)p0 * (size_t)V, hout, err);
        if (st == TDM_OK) {
            memcpy(h, hout + (size_t)(c - 1) * (size_t)E, (size_t)E * sizeof(float));
        }
    }
    if (st == TDM_OK) {
        e->mtp_drafts[0] = argmax(e->mtp_logits + (size_t)(n - 2) * (size_t)V, (int)V);
    }
    /* the chain: row n - 2 + d holds draft d - 1 and the previous row's output state */
    for (int32_t d = 1; d < o->mtp_chain && st == TDM_OK; d++) {
        tok[0] = e->mtp_drafts[d - 1];
        pos[0] = n - 2 + d;
        want[0] = 1;
        const shd_batch_t b = {1, tok, pos, sq, want, 1, view};
        float *row = e->mtp_logits + (size_t)(n - 2 + d) * (size_t)V;
        st = shd_forward_mtp(m, kv, &b, h, row, hout, err);
        memcpy(h, hout, (size_t)E * sizeof(float));
        e->mtp_drafts[d] = argmax(row, (int)V);
    }
    free(h);
    free(tok);
    free(pos);
    free(sq);
    free(want);
    free(hout);
    return st;
}

/*
 * Runs seqs[0..count) together through m until each has o->n_greedy greedy tokens.
 * want_all: every prompt position asks for logits (stored into seqs[s].logits when that
 * is not NULL); otherwise only each prompt's last position. Every rank calls this with
 * its own copy of seqs and takes the same decisions, since its logits are identical.
 * A model with sliding-window layers keeps them in a sliding pool as in serving: after
 * each step the KV manager releases the blocks no later token can see; *kvs (may be
 * NULL) gets the pools' peak use.
 */
static tdm_status_t run_schedule(shd_model_t *m, const xp_executor_t *ex, const eval_opts_t *o,
                                 eval_seq_t *seqs, int count, bool want_all, eval_kv_t *kvs,
                                 tdm_error_t *err)
{
    /* m: this process runs the model; ex: a shard group does (its KV lives there) */
    const int V = m != NULL ? shd_model_hparams(m)->n_vocab : ex->n_vocab;
    const shd_model_params_t *mp = m != NULL ? shd_model_params(m) : NULL;
    crd_kvm_t *kvm = NULL;
    shd_kv_cache_t *kv = NULL;
    crd_kv_seq_t **kvseq = tdm_xcalloc((size_t)count, sizeof(*kvseq));
    shd_seq_view_t *views = tdm_xcalloc((size_t)count, sizeof(*views));
    int32_t *done = tdm_xcalloc((size_t)count, sizeof(int32_t)); /* positions computed */
    int32_t *n_gen = tdm_xcalloc((size_t)count, sizeof(int32_t));
    const int nb = mp != NULL ? mp->n_batch_max : ex->n_batch_max;
    const int n_out_max = mp != NULL ? mp->n_out_max : ex->n_logits_max;
    int32_t *tok = tdm_xmalloc((size_t)nb * sizeof(int32_t));
    int32_t *pos = tdm_xmalloc((size_t)nb * sizeof(int32_t));
    int32_t *sq = tdm_xmalloc((size_t)nb * sizeof(int32_t));
    uint8_t *want = tdm_xmalloc((size_t)nb);
    float *logits = malloc((size_t)n_out_max * (size_t)V * sizeof(float));
    /* --mtp-out: the trunk's hidden rows (checked: one sequence on one rank) */
    const int64_t E = m != NULL ? shd_model_hparams(m)->n_embd : 0;
    float *hidden = m != NULL && seqs[0].hidden != NULL
                        ? tdm_xmalloc((size_t)nb * (size_t)E * sizeof(float))
                        : NULL;
    const int32_t n_swa = m != NULL ? shd_model_swa_window(m) : ex->n_swa;
    /* recurrent layers: a state slot per sequence (from the manager, as in serving) */
    const int32_t n_slots =
        m != NULL ? (shd_model_hparams(m)->n_recurrent > 0 ? count : 0) : ex->n_state_slots;
    tdm_status_t st = TDM_OK;
    if (logits == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "eval: out of memory for logits");
        goto out;
    }

    /* Blocks for every position any sequence will reach. */
    int64_t total_blocks = 0;
    for (int s = 0; s < count; s++) {
        total_blocks += (seqs[s].n_prompt + o->n_greedy + o->block_tokens - 1) / o->block_tokens;
    }
    /* block ids come from the coordinator's manager, as in serving (no prefix reuse here:
     * every sequence starts empty); the sliding pool (if any) could hold every position
     * too, so its peak use shows what releasing saves */
    crd_kvm_params_t kp = {.n_blocks = (int32_t)total_blocks,
                           .block_size = o->block_tokens,
                           .n_swa = n_swa,
                           .n_swa_blocks = n_swa > 0 ? (int32_t)total_blocks : 0,
                           .n_state_slots = n_slots};
    if (m == NULL && n_swa > 0 && kp.n_swa_blocks > ex->n_swa_blocks) {
        kp.n_swa_blocks = ex->n_swa_blocks; /* what the shards hold */
    }
    TDM_CHECK_GOTO(crd_kvm_create_pools(&kp, &kvm, err), st, out);
    for (int s = 0; s < count; s++) {
        int32_t cached;
        TDM_CHECK_GOTO(crd_kvm_seq_create(kvm, NULL, 0, &kvseq[s], &cached, err), st, out);
        views[s].blocks = crd_kvm_seq_blocks(kvseq[s], &views[s].n_blocks);
        views[s].swa_blocks = crd_kvm_seq_swa_blocks(kvseq[s]);
        views[s].state_slot = crd_kvm_seq_state_slot(kvseq[s]);
        views[s].state_load = views[s].state_save = -1; /* no prefix reuse here */
    }
    if (m != NULL) {
        const shd_kv_pools_t pools = {
            .n_blocks = kp.n_blocks, .n_swa_blocks = kp.n_swa_blocks, .n_state_slots = n_slots};
        shd_kv_config_t kc;
        shd_model_kv_config_pools(m, o->block_tokens, &pools, &kc);
        TDM_CHECK_GOTO(shd_kv_cache_create(shd_model_backend(m), &kc, &kv, err), st, out);
    } else if (total_blocks > ex->n_blocks) {
        st = tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                           "eval: %lld KV blocks needed, the shard group holds %d",
                           (long long)total_blocks, (int)ex->n_blocks);
        goto out;
    }

    for (;;) {
        int32_t n = 0;
        for (int s = 0; s < count; s++) {
            const eval_seq_t *e = &seqs[s];
            int32_t end;
            if (done[s] < e->n_prompt) {
                const int32_t c = o->chunk > 0 ? o->chunk : e->n_prompt;
                end = done[s] + c < e->n_prompt ? done[s] + c : e->n_prompt;
                for (int32_t p = done[s]; p < end; p++) {
                    tok[n] = e->prompt[p];
                    pos[n] = p;
                    sq[n] = s;
                    want[n] = want_all || p == e->n_prompt - 1;
                    n++;
                }
            } else if (n_gen[s] > 0 && n_gen[s] < o->n_greedy) {
                end = done[s] + 1;
                tok[n] = e->gen[n_gen[s] - 1];
                pos[n] = done[s];
                sq[n] = s;
                want[n] = 1;
                n++;
            } else {
                continue;
            }
            if (crd_kvm_seq_reserve(kvm, kvseq[s], end) != TDM_OK) {
                st = tdm_error_set(err, TDM_ERR_INTERNAL,
                                   "eval: KV blocks exhausted (%d full, %d sliding-window)",
                                   (int)kp.n_blocks, (int)kp.n_swa_blocks);
                goto out;
            }
            views[s].blocks = crd_kvm_seq_blocks(kvseq[s], &views[s].n_blocks);
            views[s].swa_blocks = crd_kvm_seq_swa_blocks(kvseq[s]);
            done[s] = end;
        }
        if (n == 0) {
            break;
        }
        if (m != NULL) {
            shd_batch_t b = {n, tok, pos, sq, want, count, views};
            TDM_CHECK_GOTO(shd_forward_hidden(m, kv, &b, logits, hidden, err), st, out);
            for (int32_t t = 0; hidden != NULL && t < n; t++) {
                if (pos[t] < seqs[sq[t]].n_prompt) {
                    memcpy(seqs[sq[t]].hidden + (size_t)pos[t] * (size_t)E,
                           hidden + (size_t)t * (size_t)E, (size_t)E * sizeof(float));
                }
            }
        } else {
            int32_t n_logits = 0;
            for (int32_t t = 0; t < n; t++) {
                n_logits += want[t];
            }
            /* xp_step_seq_t and shd_seq_view_t have the same members */
            xp_step_seq_t *xs = tdm_xcalloc((size_t)count, sizeof(*xs));
            for (int q = 0; q < count; q++) {
                xs[q].blocks = views[q].blocks;
                xs[q].n_blocks = views[q].n_blocks;
                xs[q].swa_blocks = views[q].swa_blocks;
                xs[q].state_slot = views[q].state_slot;
                xs[q].state_load = xs[q].state_save = -1;
            }
            xp_step_t xst = {n, tok, pos, sq, want, n_logits, count, xs, 0, NULL, NULL};
            st = ex->ops->step(ex->impl, &xst, logits, err);
            free(xs);
            if (st != TDM_OK) {
                goto out;
            }
        }
        /* the step's positions are computed: sliding blocks out of every later window go */
        for (int q = 0; q < count; q++) {
            crd_kvm_seq_commit(kvm, kvseq[q], NULL, done[q]);
        }
        int32_t row = 0;
        for (int32_t t = 0; t < n; t++) {
            if (!want[t]) {
                continue;
            }
            const float *lg = logits + (size_t)row++ * V;
            eval_seq_t *e = &seqs[sq[t]];
            const int s = sq[t];
            if (pos[t] < e->n_prompt && e->logits != NULL) {
                memcpy(e->logits + (size_t)pos[t] * V, lg, (size_t)V * sizeof(float));
            }
            if (pos[t] >= e->n_prompt - 1 && n_gen[s] < o->n_greedy) {
                e->gen[n_gen[s]++] = argmax(lg, V);
            }
        }
    }
    if (hidden != NULL) {
        TDM_CHECK_GOTO(run_mtp(m, kv, &views[0], o, &seqs[0], err), st, out);
    }
out:
    free(hidden);
    if (kvm != NULL && kvs != NULL) {
        crd_kvm_stats_t ks;
        crd_kvm_get_stats(kvm, &ks);
        kvs->swa_window = n_swa;
        kvs->blocks_peak = ks.n_used_peak;
        kvs->swa_blocks_peak = ks.swa_used_peak;
    }
    for (int s = 0; s < count && kvm != NULL; s++) {
        crd_kvm_seq_free(kvm, kvseq[s]);
    }
    shd_kv_cache_destroy(kv);
    crd_kvm_destroy(kvm);
    free(kvseq);
    free(views);
    free(done);
    free(n_gen);
    free(tok);
    free(pos);
    free(sq);
    free(want);
    free(logits);
    return st;
}

static void *rank_main(void *arg)
{
    eval_rank_t *r = arg;
    eval_run_t *run = r->run;
    const eval_opts_t *o = run->o;
    const int W = o->tp * o->ep;
    kern_backend_t *be = NULL;
    shd_model_t *m = NULL;
    eval_seq_t *mine = run->seqs;
    r->st = TDM_OK;

    int per_rank = o->threads > 0 ? (o->threads / W > 0 ? o->threads / W : 1) : 0;
    const kern_backend_params_t bp = {
        .device = o->device, .n_threads = per_rank, .isa_override = KERN_ISA_COUNT};
    TDM_CHECK_GOTO(kern_backend_create(&bp, &be, &r->err), r->st, out);
    if (r->rank == 0) {
        fprintf(stderr, "tandem eval: device %s%s%s\n", kern_be_describe(be),
                kern_be_fallback_reason(be)[0] != '\0' ? " (no usable GPU: " : "",
                kern_be_fallback_reason(be)[0] != '\0' ? kern_be_fallback_reason(be) : "");
    }

    shd_model_params_t p = {0};
    p.n_ctx_max = 1;
    for (int s = 0; s < run->n_seqs; s++) {
        const eval_seq_t *e = &run->seqs[s];
        p.n_batch_max += o->chunk > 0 && o->chunk < e->n_prompt ? o->chunk : e->n_prompt;
        if (e->n_prompt + o->n_greedy > p.n_ctx_max) {
            p.n_ctx_max = e->n_prompt + o->n_greedy;
        }
    }
    p.n_out_max = p.n_batch_max;
    p.mtp = o->mtp_out != NULL;
    p.part = (shd_partition_t){r->rank % o->tp, o->tp, r->rank / o->tp, o->ep};
    if (W > 1) {
        p.comm = xp_local_comm(run->world, r->rank);
    }
    TDM_CHECK_GOTO(kern_kv_type_resolve(o->kv_type, be, &p.kv_type, &r->err), r->st, out);
    TDM_CHECK_GOTO(shd_model_load(run->g, be, &p, &m, &r->err), r->st, out);

    const bool want_all = o->logits_out != NULL || o->batch_test;
    if (r->rank != 0) {
        /* Other ranks decide the same tokens into private arrays. */
        mine = tdm_xcalloc((size_t)run->n_seqs, sizeof(*mine));
        for (int s = 0; s < run->n_seqs; s++) {
            mine[s].prompt = run->seqs[s].prompt;
            mine[s].n_prompt = run->seqs[s].n_prompt;
            mine[s].gen = tdm_xcalloc((size_t)o->n_greedy + 1, sizeof(int32_t));
        }
    }
    TDM_CHECK_GOTO(run_schedule(m, NULL, o, mine, run->n_seqs, want_all,
                                r->rank == 0 ? &run->kv : NULL, &r->err),
                   r->st, out);
    if (o->batch_test) {
        for (int s = 0; s < run->n_seqs; s++) {
            eval_seq_t one = r->rank == 0 ? run->alone[s] : mine[s];
            if (r->rank != 0) {
                one.logits = NULL;
            }
            TDM_CHECK_GOTO(run_schedule(m, NULL, o, &one, 1, want_all, NULL, &r->err), r->st, out);
        }
    }
out:
    if (be != NULL && r->rank == 0 && kern_be_kind(be) == KERN_DEVICE_CUDA) {
        kern_be_stats_t bs;
        kern_be_stats(be, &bs);
        fprintf(stderr, "tandem eval: cuda graphs: %llu captured, %llu replayed, %llu dropped\n",
                (unsigned long long)bs.graph_captures, (unsigned long long)bs.graph_replays,
                (unsigned long long)bs.graph_drops);
    }
    if (r->st != TDM_OK && run->world != NULL) {
        xp_local_world_abort(run->world);
    }
    if (mine != run->seqs) {
        for (int s = 0; s < run->n_seqs; s++) {
            free(mine[s].gen);
        }
        free(mine);
    }
    shd_model_destroy(m);
    kern_backend_destroy(be);
    return NULL;
}

/* --shards: the same schedule through a shard group (transport/exec_remote.h). */
static tdm_status_t run_remote(eval_run_t *run, tdm_error_t *err)
{
    const eval_opts_t *o = run->o;
    char *list = strdup(o->shards);
    char *names[256];
    int n = 0;
    for (char *tok = strtok(list, ","); tok != NULL && n < 256; tok = strtok(NULL, ",")) {
        names[n++] = tok;
    }
    int batch = 0, n_ctx = 1;
    for (int s = 0; s < run->n_seqs; s++) {
        const eval_seq_t *e = &run->seqs[s];
        batch += o->chunk > 0 && o->chunk < e->n_prompt ? o->chunk : e->n_prompt;
        if (e->n_prompt + o->n_greedy > n_ctx) {
            n_ctx = e->n_prompt + o->n_greedy;
        }
    }
    /* the shards hold 4 x n_ctx tokens of KV when no budget is given: ask for a context
     * long enough that every sequence of this run fits at once */
    int64_t blocks = 0;
    for (int s = 0; s < run->n_seqs; s++) {
        blocks += (run->seqs[s].n_prompt + o->n_greedy + o->block_tokens - 1) / o->block_tokens;
    }
    if (blocks * o->block_tokens > 4 * (int64_t)n_ctx) {
        n_ctx = (int)((blocks * o->block_tokens + 3) / 4);
    }
    xp_remote_params_t rp = {
        .g = run->g,
        .n_shards = n,
        .shards = (const char *const *)names,
        .tp = o->tp > 1 ? o->tp : 0,
        .ep = o->ep > 1 ? o->ep : 0,
        .n_batch_max = batch,
        .n_logits_max = batch,
        .n_ctx = n_ctx,
        .block_tokens = o->block_tokens,
        .kv_bytes = 0, /* the shards' default, 4 x n_ctx tokens: enough for this run */
        .proto = o->collective,
        .start_timeout_ms = 60000,
        .cluster_secret = getenv("TANDEM_CLUSTER_SECRET"),
    };
    if (rp.tp > 0 && rp.ep == 0) {
        rp.ep = n / rp.tp;
    } else if (rp.ep > 0 && rp.tp == 0) {
        rp.tp = n / rp.ep;
    }
    xp_remote_exec_t *x = NULL;
    xp_executor_t ex;
    tdm_status_t st = xp_remote_exec_create(&rp, &x, &ex, err);
    const bool want_all = o->logits_out != NULL || o->batch_test;
    if (st == TDM_OK) {
        st = run_schedule(NULL, &ex, o, run->seqs, run->n_seqs, want_all, &run->kv, err);
    }
    for (int s = 0; st == TDM_OK && o->batch_test && s < run->n_seqs; s++) {
        st = run_schedule(NULL, &ex, o, &run->alone[s], 1, want_all, NULL, err);
    }
    if (x != NULL) {
        xp_shard_health_t *hs = tdm_xcalloc((size_t)n, sizeof(*hs));
        xp_group_health_t gh = {.shards = hs};
        xp_remote_exec_health(x, &gh);
        run->group_tp = gh.tp;
        run->group_ep = gh.ep;
        free(hs);
        xp_remote_stats_t rs;
        xp_remote_exec_stats(x, &rs);
        fprintf(stderr,
                "tandem eval: %llu steps on %d shards, %llu collectives, %llu bytes sent, "
                "%.3f ms in collectives (summed over shards)\n",
                (unsigned long long)rs.steps, n, (unsigned long long)rs.coll_calls,
                (unsigned long long)rs.coll_bytes, rs.coll_ns / 1e6);
        /* one machine-readable line for bench/bench_shards.py */
        fprintf(stderr,
                "tandem eval: remote_stats {\"shards\": %d, \"steps\": %llu, \"step_ns\": %llu, "
                "\"step_ns_shards\": %llu, \"coll_calls\": %llu, \"coll_bytes\": %llu, "
                "\"coll_ns\": %llu}\n",
                n, (unsigned long long)rs.steps, (unsigned long long)rs.step_ns,
                (unsigned long long)rs.step_ns_shards, (unsigned long long)rs.coll_calls,
                (unsigned long long)rs.coll_bytes, (unsigned long long)rs.coll_ns);
    }
    xp_remote_exec_destroy(x);
    free(list);
    return st;
}

/* Parses "1,2,3" or "1 2 3" into a new array; -1 on a bad id. */
static int parse_ids(const char *s, int32_t **out, int32_t *n)
{
    int32_t cap = 16, cnt = 0;
    int32_t *ids = tdm_xmalloc((size_t)cap * sizeof(int32_t));
    const char *p = s;
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (cnt == cap) {
            cap *= 2;
            ids = tdm_xrealloc(ids, (size_t)cap * sizeof(int32_t));
        }
        ids[cnt++] = (int32_t)v;
        p = end;
    }
    *out = ids;
    *n = cnt;
    return 0;
}

static int read_prompts(const char *path, eval_seq_t **seqs, int *n_seqs)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "tandem eval: cannot open '%s': %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int n = 0, lineno = 0;
    eval_seq_t *v = NULL;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        int32_t *ids, cnt;
        if (parse_ids(line, &ids, &cnt) != 0) {
            fprintf(stderr, "tandem eval: %s:%d: not a list of token ids\n", path, lineno);
            free(line);
            fclose(f);
            return -1;
        }
        if (cnt == 0) {
            free(ids);
            continue;
        }
        v = tdm_xrealloc(v, (size_t)(n + 1) * sizeof(*v));
        memset(&v[n], 0, sizeof(v[n]));
        v[n].prompt = ids;
        v[n].n_prompt = cnt;
        n++;
    }
    free(line);
    fclose(f);
    *seqs = v;
    *n_seqs = n;
    return 0;
}

static int write_logits(const char *path, const eval_seq_t *seqs, int n_seqs, int V)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "tandem eval: cannot create '%s': %s\n", path, strerror(errno));
        return -1;
    }
    int64_t rows = 0;
    for (int s = 0; s < n_seqs; s++) {
        rows += seqs[s].n_prompt;
    }
    size_t len = strlen(path);
    if (len >= 4 && strcmp(path + len - 4, ".npy") == 0) {
        char hdr[128];
        int h = snprintf(hdr, sizeof(hdr),
                         "{'descr': '<f4', 'fortran_order': False, "
                         "'shape': (%lld, %d), }",
                         (long long)rows, V);
        int total = 10 + h + 1;
        int pad = (64 - total % 64) % 64;
        unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
        const int hlen = h + pad + 1;
        pre[8] = (unsigned char)(hlen & 0xff);
        pre[9] = (unsigned char)(hlen >> 8);
        fwrite(pre, 1, 10, f);
        fwrite(hdr, 1, (size_t)h, f);
        for (int i = 0; i < pad; i++) {
            fputc(' ', f);
        }
        fputc('\n', f);
    }
    for (int s = 0; s < n_seqs; s++) {
        fwrite(seqs[s].logits, sizeof(float), (size_t)seqs[s].n_prompt * (size_t)V, f);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "tandem eval: writing '%s': %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void print_ids(const int32_t *v, int n)
{
    printf("[");
    for (int i = 0; i < n; i++) {
        printf(i ? ",%d" : "%d", v[i]);
    }
    printf("]");
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tandem eval --model M.gguf (--tokens 1,2,3 | --prompts-file F) [options]\n"
            "  --greedy N          generate N greedy tokens per sequence (default 0)\n"
            "  --logits-out FILE   every prompt position's logits, float32, rows in sequence\n"
            "                      order (.npy: NumPy array [rows, n_vocab]; else raw)\n"
            "  --threads N         kernel threads in all (default: one per CPU)\n"
            "  --tp N, --ep N      in-process tensor / expert parallel ranks (default 1)\n"
            "  --chunk N           prefill chunk per step (default 0: whole prompt)\n"
            "  --block-tokens B    KV block size in tokens (default 16)\n"
            "  --batch-test        also run each sequence alone and compare\n"
            "  --shards H:P,...    run on `tandem shard` processes (tp/ep from --tp/--ep,\n"
            "                      else chosen); --collective am|rma|nccl\n"
            "  --device D          auto (default: a GPU if usable, else the CPU), cpu, cuda[:N]\n"
            "  --kv-type T         KV cache rows: f32, f16, q8_0 (default f16 on a GPU, f32\n"
            "                      on the CPU)\n"
            "  --mtp-out FILE.npy  the MTP block's logits at every prompt position, then the\n"
            "                      chained drafts' (one sequence; --mtp-chain K, default 1)\n"
            "prints JSON: {\"n_vocab\", \"sequences\": [{\"prompt_len\", \"greedy\"}], \"kv\":\n"
            "  {\"block_tokens\", \"swa_window\", \"blocks_peak\", \"swa_blocks_peak\"}, ...}\n"
            "  (kv: most KV blocks the batched run held at once, full and sliding-window pool)\n");
}

static int parse_int(const char *s, int lo, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > 1 << 20) {
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cmd_eval(int argc, char **argv)
{
    eval_opts_t o = {.tp = 1, .ep = 1, .block_tokens = SHD_KV_BLOCK_TOKENS_DEFAULT};
    const char *tokens = NULL, *prompts = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--batch-test") == 0) {
            o.batch_test = 1;
            continue;
        } else if (v == NULL) {
            bad = 1;
        } else if (strcmp(a, "--model") == 0) {
            o.model = v;
        } else if (strcmp(a, "--tokens") == 0) {
            tokens = v;
        } else if (strcmp(a, "--prompts-file") == 0) {
            prompts = v;
        } else if (strcmp(a, "--logits-out") == 0) {
            o.logits_out = v;
        } else if (strcmp(a, "--mtp-out") == 0) {
            o.mtp_out = v;
        } else if (strcmp(a, "--mtp-chain") == 0) {
            bad = parse_int(v, 1, &o.mtp_chain);
        } else if (strcmp(a, "--greedy") == 0) {
            bad = parse_int(v, 0, &o.n_greedy);
        } else if (strcmp(a, "--threads") == 0) {
            bad = parse_int(v, 0, &o.threads);
        } else if (strcmp(a, "--tp") == 0) {
            bad = parse_int(v, 1, &o.tp);
        } else if (strcmp(a, "--ep") == 0) {
            bad = parse_int(v, 1, &o.ep);
        } else if (strcmp(a, "--chunk") == 0) {
            bad = parse_int(v, 0, &o.chunk);
        } else if (strcmp(a, "--block-tokens") == 0) {
            bad = parse_int(v, 1, &o.block_tokens);
        } else if (strcmp(a, "--shards") == 0) {
            o.shards = v;
        } else if (strcmp(a, "--device") == 0) {
            o.device = v;
        } else if (strcmp(a, "--kv-type") == 0) {
            o.kv_type = v;
        } else if (strcmp(a, "--collective") == 0) {
            tdm_error_t cerr = {0};
            if (xp_collective_parse(v, &o.collective, &cerr) != TDM_OK) {
                fprintf(stderr, "tandem eval: %s\n", tdm_error_msg(&cerr));
                return 2;
            }
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "tandem eval: bad option '%s'%s%s\n", a, v ? " " : "", v ? v : "");
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (o.model == NULL || (tokens == NULL) == (prompts == NULL)) {
        fprintf(stderr, "tandem eval: need --model and exactly one of --tokens, --prompts-file\n");
        usage(stderr);
        return 2;
    }

    eval_run_t run = {.o = &o};
    int rc = 1;
    gguf_ctx_t *g = NULL;
    eval_rank_t *ranks = NULL;
    pthread_t *th = NULL;
    tdm_error_t err = {0};
    if (tokens != NULL) {
        run.seqs = tdm_xcalloc(1, sizeof(eval_seq_t));
        run.n_seqs = 1;
        if (parse_ids(tokens, &run.seqs[0].prompt, &run.seqs[0].n_prompt) != 0) {
            fprintf(stderr, "tandem eval: --tokens: not a list of token ids\n");
            rc = 2;
            goto out;
        }
    } else if (read_prompts(prompts, &run.seqs, &run.n_seqs) != 0) {
        goto out;
    }
    for (int s = 0; s < run.n_seqs; s++) {
        if (run.seqs[s].n_prompt == 0) {
            fprintf(stderr, "tandem eval: sequence %d is empty\n", s);
            rc = 2;
            goto out;
        }
    }
    if (run.n_seqs == 0) {
        fprintf(stderr, "tandem eval: no sequences\n");
        rc = 2;
        goto out;
    }
    if (gguf_open(o.model, &g, &err) != TDM_OK) {
        fprintf(stderr, "tandem eval: %s\n", tdm_error_msg(&err));
        goto out;
    }
    run.g = g;
    {
        mdl_hparams_t hp;
        if (mdl_hparams_load(g, &hp, &err) != TDM_OK) {
            fprintf(stderr, "tandem eval: %s: %s\n", o.model, tdm_error_msg(&err));
            goto out;
        }
        run.n_vocab = hp.n_vocab;
        run.n_embd = hp.n_embd;
    }
    if (o.mtp_out != NULL) {
        if (run.n_seqs != 1 || o.tp * o.ep != 1 || o.shards != NULL || o.batch_test ||
            run.seqs[0].n_prompt < 2) {
            fprintf(stderr, "tandem eval: --mtp-out takes one sequence of 2 or more tokens on "
                            "one rank in this process\n");
            rc = 2;
            goto out;
        }
        o.mtp_chain = o.mtp_chain > 0 ? o.mtp_chain : 1;
        /* the chained rows' K/V sit at positions the greedy run reserved */
        o.n_greedy = o.n_greedy > o.mtp_chain ? o.n_greedy : o.mtp_chain;
        eval_seq_t *e = &run.seqs[0];
        e->hidden = tdm_xmalloc((size_t)e->n_prompt * (size_t)run.n_embd * sizeof(float));
        e->mtp_logits = tdm_xmalloc((size_t)(e->n_prompt - 2 + o.mtp_chain) * (size_t)run.n_vocab *
                                    sizeof(float));
        e->mtp_drafts = tdm_xcalloc((size_t)o.mtp_chain, sizeof(int32_t));
    }
    const bool want_all = o.logits_out != NULL || o.batch_test;
    run.alone = tdm_xcalloc((size_t)run.n_seqs, sizeof(eval_seq_t));
    for (int s = 0; s < run.n_seqs; s++) {
        eval_seq_t *e = &run.seqs[s];
        e->gen = tdm_xcalloc((size_t)o.n_greedy + 1, sizeof(int32_t));
        run.alone[s] = *e;
        run.alone[s].gen = tdm_xcalloc((size_t)o.n_greedy + 1, sizeof(int32_t));
        if (want_all) {
            size_t bytes = (size_t)e->n_prompt * (size_t)run.n_vocab * sizeof(float);
            e->logits = malloc(bytes);
            run.alone[s].logits = malloc(bytes);
            if (e->logits == NULL || run.alone[s].logits == NULL) {
                fprintf(stderr, "tandem eval: out of memory for logits\n");
                goto out;
            }
        }
    }

    if (o.shards != NULL) {
        if (run_remote(&run, &err) != TDM_OK) {
            fprintf(stderr, "tandem eval: %s\n", tdm_error_msg(&err));
            goto out;
        }
        goto report;
    }
    const int W = o.tp * o.ep;
    if (W > 1 && xp_local_world_create(o.tp, o.ep, &run.world, &err) != TDM_OK) {
        fprintf(stderr, "tandem eval: %s\n", tdm_error_msg(&err));
        goto out;
    }
    ranks = tdm_xcalloc((size_t)W, sizeof(*ranks));
    th = tdm_xcalloc((size_t)W, sizeof(*th));
    for (int r = 0; r < W; r++) {
        ranks[r].run = &run;
        ranks[r].rank = r;
        if (r > 0 && pthread_create(&th[r], NULL, rank_main, &ranks[r]) != 0) {
            fprintf(stderr, "tandem eval: cannot start rank %d thread\n", r);
            xp_local_world_abort(run.world);
            for (int q = 1; q < r; q++) {
                pthread_join(th[q], NULL);
            }
            goto out;
        }
    }
    rank_main(&ranks[0]);
    for (int r = 1; r < W; r++) {
        pthread_join(th[r], NULL);
    }
    for (int r = 0; r < W; r++) {
        /* The first rank that failed for a reason other than another rank's abort. */
        if (ranks[r].st != TDM_OK && ranks[r].st != TDM_ERR_CANCELED) {
            fprintf(stderr, "tandem eval: rank %d: %s\n", r, tdm_error_msg(&ranks[r].err));
            goto out;
        }
    }
    if (ranks[0].st != TDM_OK) {
        fprintf(stderr, "tandem eval: %s\n", tdm_error_msg(&ranks[0].err));
        goto out;
    }
report:
    if (o.logits_out != NULL && write_logits(o.logits_out, run.seqs, run.n_seqs, run.n_vocab)) {
        goto out;
    }
    if (o.mtp_out != NULL) {
        const eval_seq_t rows = {.logits = run.seqs[0].mtp_logits,
                                 .n_prompt = run.seqs[0].n_prompt - 2 + o.mtp_chain};
        if (write_logits(o.mtp_out, &rows, 1, run.n_vocab) != 0) {
            goto out;
        }
    }

    rc = 0;
    printf("{\"n_vocab\": %d, \"tp\": %d, \"ep\": %d, \"sequences\": [", run.n_vocab,
           run.group_tp > 0 ? run.group_tp : o.tp, run.group_ep > 0 ? run.group_ep : o.ep);
    for (int s = 0; s < run.n_seqs; s++) {
        printf("%s{\"prompt_len\": %d, \"greedy\": ", s ? ", " : "", run.seqs[s].n_prompt);
        print_ids(run.seqs[s].gen, o.n_greedy);
        printf("}");
    }
    printf("]");
    if (run.n_seqs == 1) {
        printf(", \"greedy\": ");
        print_ids(run.seqs[0].gen, o.n_greedy);
    }
    if (o.mtp_out != NULL) {
        printf(", \"mtp_drafts\": ");
        print_ids(run.seqs[0].mtp_drafts, o.mtp_chain);
    }
    printf(", \"kv\": {\"block_tokens\": %d, \"swa_window\": %d, \"blocks_peak\": %d, "
           "\"swa_blocks_peak\": %d}",
           o.block_tokens, (int)run.kv.swa_window, (int)run.kv.blocks_peak,
           (int)run.kv.swa_blocks_peak);
    if (o.batch_test) {
        double max_abs = 0.0, max_ref = 0.0;
        bool same = true;
        for (int s = 0; s < run.n_seqs; s++) {
            const size_t nl = (size_t)run.seqs[s].n_prompt * (size_t)run.n_vocab;
            for (size_t i = 0; i < nl; i++) {
                double d = fabs((double)run.seqs[s].logits[i] - run.alone[s].logits[i]);
                max_abs = d > max_abs ? d : max_abs;
                double a = fabs((double)run.alone[s].logits[i]);
                max_ref = a > max_ref ? a : max_ref;
            }
            same &= memcmp(run.seqs[s].gen, run.alone[s].gen,
                           (size_t)o.n_greedy * sizeof(int32_t)) == 0;
        }
        printf(", \"batch_test\": {\"max_abs_diff\": %.9g, \"max_abs_logit\": %.9g, "
               "\"greedy_equal\": %s}",
               max_abs, max_ref, same ? "true" : "false");
        if (!same) {
            rc = 1;
        }
    }
    printf("}\n");
out:
    for (int s = 0; s < run.n_seqs; s++) {
        free(run.seqs[s].prompt);
        free(run.seqs[s].gen);
        free(run.seqs[s].logits);
        free(run.seqs[s].hidden);
        free(run.seqs[s].mtp_logits);
        free(run.seqs[s].mtp_drafts);
        if (run.alone != NULL) {
            free(run.alone[s].gen);
            free(run.alone[s].logits);
        }
    }
    free(run.seqs);
    free(run.alone);
    free(ranks);
    free(th);
    xp_local_world_destroy(run.world);
    gguf_close(g);
    return rc;
}
