/* shard_server.c - the shard process: control thread + compute thread (see shard_server.h). */
#include "transport/shard_server.h"

#include "tdm_build_config.h"
#include "common/check.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/mem.h"
#include "kernels/kern_backend.h"
#include "shard/forward.h"
#include "topology/topo_plan.h"
#include "transport/nccl_comm.h"
#include "transport/kv_xfer.h"
#include "transport/ucx_comm.h"
#include "transport/ucx_ctx.h"
#include "transport/xp_auth.h"
#include "transport/xp_model_id.h"
#include "transport/xp_msg.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

/* a STEP's sequences become the shard's views member for member */
_Static_assert(XP_STATE_GIVEN == KERN_STATE_GIVEN, "one 'state given' mark");

#define SHD_SRV_ID_MAX 256 /* ZeroMQ routing ids are at most 255 bytes */

typedef enum shard_state {
    SHARD_IDLE = 0, /* no group                       */
    SHARD_LOADING,  /* LOAD in progress               */
    SHARD_READY,    /* in a group, waiting for steps  */
    SHARD_BUSY,     /* running a step                 */
} shard_state_t;

typedef enum job_kind { JOB_LOAD, JOB_STEP, JOB_LEAVE, JOB_QUIT } job_kind_t;

typedef struct job {
    job_kind_t kind;
    xp_msg_t msg;    /* decoded LOAD or STEP (owned) */
    uint64_t aborts; /* LOAD: the server's abort count when it came (make_nccl_world) */
    uint8_t id[SHD_SRV_ID_MAX];
    size_t id_len;
    struct job *next;
} job_t;

/* What the compute thread has loaded; compared with a LOAD to decide whether to reload. */
typedef struct loaded_shape {
    int32_t tp_rank, tp_size, ep_rank, ep_size, n_ctx, n_batch_max, n_out_max, block_tokens;
    uint64_t kv_bytes;
    int32_t n_layers;
    int32_t *expert_lo, *expert_n;
    bool comm_device_memory; /* the collectives' buffer kind the scratch was laid out for */
    int32_t n_state_store;   /* stored prefix states (recurrent models)                  */
} loaded_shape_t;

struct xp_shard_server {
    xp_shard_params_t p;
    char endpoint[256];
    gguf_ctx_t *g;
    xp_msg_model_id_t model_id;
    uint64_t node_memory;
    xp_ucx_t *ucx;
    void *zctx, *router, *pull, *push;
    _Atomic bool stop;

    /* the job queue: control thread -> compute thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *head, *tail;
    /* the current data-plane world, UCX or NCCL (at most one is set); written by the
     * compute thread under mu, aborted by the control thread under mu */
    xp_ucx_world_t *world;
    xp_nccl_world_t *nccl;
    uint64_t aborts; /* abort requests from the control thread so far (under mu) */
    _Atomic int state;
    _Atomic uint64_t epoch; /* the group the shard serves (0: none) */

    /* control thread only */
    uint8_t coord_id[SHD_SRV_ID_MAX]; /* the coordinator that sent the last LOAD */
    size_t coord_id_len;
    /* with a cluster secret (xp_auth.h): the last JOIN's challenge, and the peer whose
     * JOIN_ACK proved the secret (the only one obeyed) */
    uint8_t chal_id[SHD_SRV_ID_MAX], auth_id[SHD_SRV_ID_MAX];
    size_t chal_id_len, auth_id_len;
    uint64_t chal_session, chal_nonce;
    bool warned_unauth;

    /* compute thread only (the backend is made before the threads start) */
    kern_backend_t *be;
    tdm_type_t kv_type;
    int be_threads;
    shd_model_t *model;
    shd_kv_cache_t *kv;
    loaded_shape_t shape;
    float *logits;
    size_t logits_cap;
    shd_seq_view_t *views;
    int32_t n_views;
    /* disaggregated prefill (kv_xfer.h): a decode shard's registered KV storage, a
     * prefill shard's puts into one */
    xp_kv_export_t *kv_export;
    xp_kv_sender_t *kv_sender;
};

/* ---- small helpers ---- */

static const char *state_name(int st)
{
    static const char *const names[] = {"idle", "loading", "ready", "busy"};
    return st >= 0 && st <= SHARD_BUSY ? names[st] : "?";
}

static void free_frame(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Encodes msg and sends it with a routing id over sock (the ROUTER, or the PUSH pipe to
 * the control thread, which forwards the same two frames). */
static tdm_status_t send_to(void *sock, const uint8_t *id, size_t id_len, const xp_msg_t *msg,
                            tdm_error_t *err)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    tdm_status_t st = xp_msg_encode(&sb, msg, err);
    if (st != TDM_OK) {
        msgpack_sbuffer_destroy(&sb);
        return st;
    }
    /* the encoded bytes become the frame (a RESULT carries megabytes of logits) */
    const size_t size = sb.size;
    zmq_msg_t body;
    zmq_msg_init_data(&body, msgpack_sbuffer_release(&sb), size, free_frame, NULL);
    if (zmq_send(sock, id, id_len, ZMQ_SNDMORE) < 0 || zmq_msg_send(&body, sock, 0) < 0) {
        zmq_msg_close(&body);
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "shard: send %s: %s",
                             xp_msg_type_str(msg->type), zmq_strerror(errno));
    }
    return TDM_OK;
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f != NULL) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2) {
            res = 0;
        }
        fclose(f);
    }
    return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void push_job(xp_shard_server_t *s, job_t *j)
{
    pthread_mutex_lock(&s->mu);
    if (s->tail != NULL) {
        s->tail->next = j;
    } else {
        s->head = j;
    }
    s->tail = j;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* The compute thread's wait for work. A decode group's shard keeps its UCX worker
 * progressing meanwhile (every KV_PROGRESS_NS), for the prefill shards' puts
 * (xp_kv_export_progress says why). */
#define KV_PROGRESS_NS 200000L

static job_t *pop_job(xp_shard_server_t *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->head == NULL) {
        if (s->kv_export == NULL) {
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        /* kv_export is the compute thread's own (this thread): safe to use unlocked */
        pthread_mutex_unlock(&s->mu);
        xp_kv_export_progress(s->kv_export);
        pthread_mutex_lock(&s->mu);
        if (s->head != NULL) {
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += KV_PROGRESS_NS;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    job_t *j = s->head;
    s->head = j->next;
    if (s->head == NULL) {
        s->tail = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    return j;
}

static void free_job(job_t *j)
{
    if (j != NULL) {
        xp_msg_free(&j->msg);
        free(j);
    }
}

/* ---- compute thread ---- */

/* Control thread (or stop): a step stuck in a collective, or a world still connecting,
 * must not delay what comes next. Holds mu. */
static void abort_world_locked(xp_shard_server_t *s)
{
    s->aborts++;
    if (s->world != NULL) {
        xp_ucx_world_abort(s->world);
    }
#if TDM_HAVE_NCCL
    if (s->nccl != NULL) {
        xp_nccl_world_abort(s->nccl);
    }
#endif
}

static void drop_world(xp_shard_server_t *s)
{
    pthread_mutex_lock(&s->mu);
    xp_ucx_world_t *w = s->world;
    xp_nccl_world_t *nw = s->nccl;
    s->world = NULL;
    s->nccl = NULL;
    pthread_mutex_unlock(&s->mu);
    xp_ucx_world_destroy(w);
#if TDM_HAVE_NCCL
    /* no finalize: a dropped world's peers are leaving it too, or gone */
    xp_nccl_world_abort(nw);
    xp_nccl_world_destroy(nw);
#else
    (void)nw;
#endif
    atomic_store(&s->epoch, 0);
}

static void drop_model(xp_shard_server_t *s)
{
    xp_kv_export_destroy(s->kv_export); /* before the storage it registered */
    s->kv_export = NULL;
    shd_kv_cache_destroy(s->kv);
    s->kv = NULL;
    shd_model_destroy(s->model);
    s->model = NULL;
    free(s->shape.expert_lo);
    free(s->shape.expert_n);
    memset(&s->shape, 0, sizeof(s->shape));
}

static bool same_shape(const loaded_shape_t *a, const xp_msg_load_t *l)
{
    if (a->tp_rank != l->tp_rank || a->tp_size != l->tp_size || a->ep_rank != l->ep_rank ||
        a->ep_size != l->ep_size || a->n_ctx != l->n_ctx || a->n_batch_max != l->n_batch_max ||
        a->n_out_max != l->n_out_max || a->block_tokens != l->block_tokens ||
        a->kv_bytes != l->kv_bytes || a->n_layers != l->n_layers ||
        a->n_state_store != l->n_state_store) {
        return false;
    }
    for (int32_t i = 0; i < l->n_layers; i++) {
        if (a->expert_lo[i] != l->expert_lo[i] || a->expert_n[i] != l->expert_n[i]) {
            return false;
        }
    }
    return true;
}

/* The largest n of any collective of the forward pass under this LOAD: the activations of
 * a full batch, or the logits all-gather when TP splits the vocabulary. Both data planes
 * size their buffers by it. */
static int64_t collective_max_floats(const mdl_hparams_t *hp, const xp_msg_load_t *l)
{
    const int64_t vocab_l = hp->n_vocab % l->tp_size == 0 ? hp->n_vocab / l->tp_size : hp->n_vocab;
    int64_t maxf = (int64_t)l->n_batch_max * hp->n_embd;
    /* the logits all-gather only runs when TP splits the vocabulary */
    if (vocab_l != hp->n_vocab && (int64_t)l->n_out_max * vocab_l > maxf) {
        maxf = (int64_t)l->n_out_max * vocab_l;
    }
    return maxf;
}

/* The NCCL world of a LOAD with proto nccl: this shard's GPU, the coordinator's id. The
 * world is published before it connects, so that a LOAD or SHUTDOWN arriving meanwhile
 * (abort_world_locked) ends the wait for ranks that will not come. */
static tdm_status_t make_nccl_world(xp_shard_server_t *s, const xp_msg_load_t *l, uint64_t aborts,
                                    int64_t max_floats, shd_comm_t *comm, tdm_error_t *err)
{
#if TDM_HAVE_NCCL
    const xp_nccl_world_params_t np = {
        .rank = l->ep_rank * l->tp_size + l->tp_rank,
        .tp_size = l->tp_size,
        .ep_size = l->ep_size,
        .id = l->nccl_id,
        .device = kern_be_cuda_device(s->be),
        .max_floats = max_floats,
        .timeout_ms = l->timeout_ms,
    };
    xp_nccl_world_t *w = NULL;
    TDM_CHECK(xp_nccl_world_new(&np, &w, err));
    pthread_mutex_lock(&s->mu);
    s->nccl = w;
    if (s->aborts != aborts) { /* a later LOAD or SHUTDOWN is queued: do not wait */
        xp_nccl_world_abort(w);
    }
    pthread_mutex_unlock(&s->mu);
    TDM_CHECK(xp_nccl_world_connect(w, err)); /* on failure drop_world destroys it */
    *comm = xp_nccl_world_comm(w);
    return TDM_OK;
#else
    (void)s, (void)l, (void)aborts, (void)max_floats, (void)comm;
    return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                         "--collective nccl: this shard's build has no NCCL (tandem --version "
                         "says nccl: no)");
#endif
}

/* KV storage for the LOAD's budget, by the rule single-node mode uses. */
static tdm_status_t alloc_kv(xp_shard_server_t *s, const xp_msg_load_t *l, tdm_error_t *err)
{
    shd_kv_pools_t pools;
    TDM_CHECK(shd_model_kv_pools(s->model, l->block_tokens, l->kv_bytes, &pools, err));
    shd_kv_config_t cfg;
    shd_model_kv_config_pools(s->model, l->block_tokens, &pools, &cfg);
    return shd_kv_cache_create(s->be, &cfg, &s->kv, err);
}

static tdm_status_t do_load(xp_shard_server_t *s, const xp_msg_load_t *l, uint64_t aborts,
                            xp_msg_ready_t *rd, tdm_error_t *err)
{
    const int world = l->tp_size * l->ep_size;
    const int rank = l->ep_rank * l->tp_size + l->tp_rank;
    drop_world(s);
    if (l->proto == XP_MSG_PROTO_NCCL && kern_be_cuda_device(s->be) < 0) {
        /* before anything else: the coordinator refuses such a shard at JOIN when the
         * group has more than one, so this is the answer for a group of one */
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "--collective nccl needs shards on a GPU (--device cuda); this "
                             "shard runs on %s",
                             kern_be_describe(s->be));
    }
    if (s->model != NULL && !same_shape(&s->shape, l)) {
        drop_model(s);
    }
    /* The data plane first: every rank got the LOAD at about the same moment, while model
     * loading times differ between nodes (and the wireup must not wait for them). */
    xp_ucx_world_t *w = NULL;
    shd_comm_t comm = {0};
    if (world > 1 && l->proto == XP_MSG_PROTO_NCCL) {
        mdl_hparams_t hp;
        TDM_CHECK(mdl_hparams_load(s->g, &hp, err));
        TDM_CHECK(make_nccl_world(s, l, aborts, collective_max_floats(&hp, l), &comm, err));
    } else if (world > 1) {
        const void **addrs = tdm_xcalloc((size_t)world, sizeof(*addrs));
        size_t *lens = tdm_xcalloc((size_t)world, sizeof(*lens));
        for (int i = 0; i < world; i++) {
            addrs[i] = l->peers[i].data;
            lens[i] = l->peers[i].len;
        }
        mdl_hparams_t hp;
        tdm_status_t st = mdl_hparams_load(s->g, &hp, err);
        if (st == TDM_OK) {
            xp_ucx_world_params_t wp = {
                .rank = rank,
                .tp_size = l->tp_size,
                .ep_size = l->ep_size,
                .peer_addr = (const void *const *)addrs,
                .peer_addr_len = lens,
                .epoch = l->epoch,
                .max_floats = collective_max_floats(&hp, l),
                .timeout_ms = l->timeout_ms,
                .proto = l->proto == XP_MSG_PROTO_RMA ? XP_UCX_PROTO_RMA : XP_UCX_PROTO_AM,
            };
            st = xp_ucx_world_create(s->ucx, &wp, &w, err);
        }
        free(addrs);
        free(lens);
        if (st != TDM_OK) {
            return st;
        }
        pthread_mutex_lock(&s->mu);
        s->world = w;
        pthread_mutex_unlock(&s->mu);
        comm = xp_ucx_world_comm(w);
    }
    /* the step scratch puts the collectives' buffers in host-visible memory or not by the
     * kind the data plane takes: another kind needs another layout */
    const bool comm_dm = comm.ops != NULL && comm.ops->device_memory;
    if (s->model != NULL && s->shape.comm_device_memory != comm_dm) {
        drop_model(s);
    }
    if (s->model == NULL) {
        shd_model_params_t mp = {
            .n_batch_max = l->n_batch_max,
            .n_out_max = l->n_out_max,
            .n_ctx_max = l->n_ctx,
            .part = {l->tp_rank, l->tp_size, l->ep_rank, l->ep_size},
            .comm = comm,
            .expert_lo = l->n_layers > 0 ? l->expert_lo : NULL,
            .expert_n = l->n_layers > 0 ? l->expert_n : NULL,
            .kv_type = s->kv_type,
            .kv_block_tokens = l->block_tokens,
            .kv_bytes = l->kv_bytes,
            /* recurrent models: the stored prefix states serve asked for (--state-cache;
             * the coordinator addresses them after the running slots) */
            .n_state_store = l->n_state_store,
        };
        const double t0 = tdm_now_s();
        TDM_CHECK(shd_model_load(s->g, s->be, &mp, &s->model, err));
        tdm_status_t st = alloc_kv(s, l, err);
        if (st != TDM_OK) {
            drop_model(s);
            return st;
        }
        (void)shd_model_prefault(s->model);
        loaded_shape_t *sh = &s->shape;
        *sh = (loaded_shape_t){l->tp_rank,  l->tp_size,      l->ep_rank,   l->ep_size,
                               l->n_ctx,    l->n_batch_max,  l->n_out_max, l->block_tokens,
                               l->kv_bytes, l->n_layers,     NULL,         NULL,
                               comm_dm,     l->n_state_store};
        if (l->n_layers > 0) {
            sh->expert_lo = tdm_xmalloc((size_t)l->n_layers * sizeof(int32_t));
            sh->expert_n = tdm_xmalloc((size_t)l->n_layers * sizeof(int32_t));
            memcpy(sh->expert_lo, l->expert_lo, (size_t)l->n_layers * sizeof(int32_t));
            memcpy(sh->expert_n, l->expert_n, (size_t)l->n_layers * sizeof(int32_t));
        }
        TDM_INFO("shard",
                 "loaded rank %d of %d (tp %d/%d, ep %d/%d): slice %.1f MiB of %.1f MiB, "
                 "resident %.1f MiB, %.2f s",
                 rank, world, l->tp_rank, l->tp_size, l->ep_rank, l->ep_size,
                 (double)shd_model_weight_bytes(s->model) / 1048576.0,
                 (double)s->model_id.file_size / 1048576.0, (double)rss_bytes() / 1048576.0,
                 tdm_now_s() - t0);
    } else {
        shd_model_set_comm(s->model, comm);
    }
    /* a decode group's shard: its KV storage registered anew per formation (a reloaded
     * cache moved), none otherwise */
    xp_kv_export_destroy(s->kv_export);
    s->kv_export = NULL;
    if (l->kv_export) {
        TDM_CHECK(xp_kv_export_create(s->ucx, s->kv, &s->kv_export, err));
        rd->kv_regions = xp_kv_export_regions(s->kv_export, &rd->n_kv_regions);
    }
    rd->n_blocks = shd_kv_cache_config(s->kv)->n_blocks;
    rd->n_swa_blocks = shd_kv_cache_config(s->kv)->n_swa_blocks;
    if (shd_model_hparams(s->model)->n_recurrent > 0) {
        /* the cache's slots: the running sequences' (one per logits row), then the stored */
        rd->n_state_slots = l->n_out_max;
        rd->n_state_store = shd_kv_cache_config(s->kv)->n_state_slots - l->n_out_max;
    }
    rd->n_vocab = shd_model_hparams(s->model)->n_vocab;
    rd->weight_bytes = shd_model_weight_bytes(s->model);
    rd->resident_bytes = rss_bytes();
    return TDM_OK;
}

/* The data plane's counters: exchanges (calls with other ranks), bytes, ns; zero without
 * a world. Compute thread (which alone changes the world pointers). */
static void world_stats(const xp_shard_server_t *s, uint64_t out[3])
{
    out[0] = out[1] = out[2] = 0;
    if (s->world != NULL) {
        xp_ucx_stats_t u;
        xp_ucx_world_stats(s->world, &u);
        out[0] = u.n_exchanges;
        out[1] = u.bytes_sent;
        out[2] = u.ns_in_collectives;
    }
#if TDM_HAVE_NCCL
    if (s->nccl != NULL) {
        xp_nccl_stats_t n;
        xp_nccl_world_stats(s->nccl, &n);
        out[0] = n.n_exchanges;
        out[1] = n.bytes_sent;
        out[2] = n.ns_in_collectives;
    }
#endif
}

/* Disaggregated prefill (kv_xfer.h): the decode group to put into, and the step's
 * transfer begun; its blocks go layer by layer from the forward pass's layer hook. */
static tdm_status_t begin_kv(xp_shard_server_t *s, const xp_msg_t *msg, tdm_error_t *err)
{
    if (msg->kv_peer.n_ranks == 0 && msg->step.n_kv_sends == 0) {
        return TDM_OK;
    }
    if (s->kv_sender == NULL) {
        TDM_CHECK(xp_kv_sender_create(s->ucx, &s->kv_sender, err));
    }
    if (msg->kv_peer.n_ranks > 0) {
        const int rank = s->shape.ep_rank * s->shape.tp_size + s->shape.tp_rank;
        TDM_CHECK(xp_kv_sender_set_peer(s->kv_sender, &msg->kv_peer, rank, err));
    }
    /* a decode shard that stopped answering fails the step well inside the coordinator's
     * patience */
    return xp_kv_sender_begin(s->kv_sender, s->kv, &msg->step, 10.0, err);
}

static tdm_status_t kv_layer_hook(void *ctx, int il, tdm_error_t *err)
{
    xp_shard_server_t *s = ctx;
    return xp_kv_sender_put_layer(s->kv_sender, il, err);
}

/* A decode shard's steps progress its UCX worker after every layer: over TCP a prefill
 * shard's puts land only when this worker handles them, and a decode step of many long
 * streams (seconds on one core) held them so long that UCX failed the prefill shard's
 * endpoint ("Endpoint timeout", bench/layouts.py at 32 streams). The puts only touch
 * blocks reserved for requests not in this step. */
static tdm_status_t kv_export_hook(void *ctx, int il, tdm_error_t *err)
{
    (void)il;
    (void)err;
    xp_kv_export_progress(((xp_shard_server_t *)ctx)->kv_export);
    return TDM_OK;
}

static tdm_status_t do_step(xp_shard_server_t *s, const xp_msg_t *msg, xp_msg_result_t *res,
                            tdm_error_t *err)
{
    const xp_step_t *st_in = &msg->step;
    if (s->model == NULL || atomic_load(&s->epoch) == 0) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "shard: STEP before LOAD (not in a group)");
    }
    if (st_in->n_seqs > s->n_views) {
        s->views = tdm_xrealloc(s->views, (size_t)st_in->n_seqs * sizeof(*s->views));
        s->n_views = st_in->n_seqs;
    }
    for (int32_t i = 0; i < st_in->n_seqs; i++) {
        s->views[i].blocks = st_in->seqs[i].blocks;
        s->views[i].n_blocks = st_in->seqs[i].n_blocks;
        s->views[i].swa_blocks = st_in->seqs[i].swa_blocks;
        s->views[i].state_slot = st_in->seqs[i].state_slot;
        s->views[i].state_load = st_in->seqs[i].state_load;
        s->views[i].state_save = st_in->seqs[i].state_save;
    }
    const int32_t V = shd_model_hparams(s->model)->n_vocab;
    const size_t need = (size_t)st_in->n_logits * (size_t)V;
    if (need > s->logits_cap) {
        free(s->logits);
        s->logits = malloc(need * sizeof(float));
        s->logits_cap = s->logits != NULL ? need : 0;
        if (s->logits == NULL) {
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "shard: out of memory for logits");
        }
    }
    shd_batch_t b = {st_in->n_tokens,    st_in->token,  st_in->pos, st_in->seq,
                     st_in->want_logits, st_in->n_seqs, s->views};
    uint64_t before[3], after[3];
    world_stats(s, before);
    const double t0 = tdm_now_s();
    const bool rank0 = s->shape.tp_rank == 0 && s->shape.ep_rank == 0;
    TDM_CHECK(begin_kv(s, msg, err));
    const bool kv = st_in->n_kv_sends > 0;
    /* the layer hook reads K/V right after the layer's ops: host memory only (the CPU's
     * ops are done when they return); elsewhere the blocks go after the forward pass */
    const bool hooked = kv && kern_be_host_memory(s->be);
    if (hooked) {
        shd_model_set_layer_hook(s->model, kv_layer_hook, s);
    } else if (s->kv_export != NULL) {
        shd_model_set_layer_hook(s->model, kv_export_hook, s);
    }
    tdm_status_t st = shd_forward(s->model, s->kv, &b, rank0 ? s->logits : NULL, err);
    shd_model_set_layer_hook(s->model, NULL, NULL);
    for (int il = 0; kv && !hooked && st == TDM_OK && il < shd_model_hparams(s->model)->n_layer;
         il++) {
        st = xp_kv_sender_put_layer(s->kv_sender, il, err);
    }
    if (kv) {
        xp_kv_sender_stats_t ks = {0};
        st = xp_kv_sender_finish(s->kv_sender, st, &ks, err);
        res->kv_bytes = ks.bytes;
        res->kv_ns = ks.ns;
    }
    TDM_CHECK(st);
    res->step_ns = (uint64_t)((tdm_now_s() - t0) * 1e9);
    world_stats(s, after);
    res->coll_calls = after[0] - before[0];
    res->coll_bytes = after[1] - before[1];
    res->coll_ns = after[2] - before[2];
    /* only world rank 0 computes (the rest of) the logits and sends them */
    if (rank0) {
        res->n_logits = st_in->n_logits;
        res->n_vocab = V;
        res->logits = s->logits;
    }
    return TDM_OK;
}

static void *compute_main(void *arg)
{
    xp_shard_server_t *s = arg;
    for (;;) {
        job_t *j = pop_job(s);
        if (j->kind == JOB_QUIT) {
            free_job(j);
            break;
        }
        tdm_error_t err = {0};
        xp_msg_t reply;
        memset(&reply, 0, sizeof(reply));
        if (j->kind == JOB_LEAVE) {
            drop_world(s);
            atomic_store(&s->state, SHARD_IDLE);
            free_job(j);
            continue;
        }
        if (j->kind == JOB_LOAD) {
            const xp_msg_load_t *l = &j->msg.load;
            atomic_store(&s->state, SHARD_LOADING);
            reply.type = XP_MSG_READY;
            reply.request_id = j->msg.request_id;
            reply.ready.epoch = l->epoch;
            tdm_status_t st = do_load(s, l, j->aborts, &reply.ready, &err);
            reply.ready.status = st;
            if (st != TDM_OK) {
                snprintf(reply.ready.error, sizeof(reply.ready.error), "%s", tdm_error_msg(&err));
                TDM_ERROR("shard", "LOAD (epoch %016" PRIx64 ") failed: %s", l->epoch,
                          tdm_error_msg(&err));
                drop_world(s);
                atomic_store(&s->state, SHARD_IDLE);
            } else {
                atomic_store(&s->epoch, l->epoch);
                atomic_store(&s->state, SHARD_READY);
            }
        } else {
            atomic_store(&s->state, SHARD_BUSY);
            reply.type = XP_MSG_RESULT;
            reply.request_id = j->msg.request_id;
            tdm_status_t st = do_step(s, &j->msg, &reply.result, &err);
            reply.result.status = st;
            if (st != TDM_OK) {
                snprintf(reply.result.error, sizeof(reply.result.error), "%s", tdm_error_msg(&err));
                reply.result.n_logits = reply.result.n_vocab = 0;
                reply.result.logits = NULL;
                TDM_WARN("shard", "step %" PRIu64 " failed: %s", j->msg.request_id,
                         tdm_error_msg(&err));
                /* a failed collective leaves the world unusable: the coordinator re-forms
                 * the group with a new LOAD */
                drop_world(s);
                atomic_store(&s->state, SHARD_IDLE);
            } else {
                atomic_store(&s->state, SHARD_READY);
            }
        }
        tdm_error_t serr = {0};
        if (send_to(s->push, j->id, j->id_len, &reply, &serr) != TDM_OK) {
            TDM_ERROR("shard", "%s", tdm_error_msg(&serr));
        }
        free_job(j);
    }
    return NULL;
}

/* ---- control thread ---- */

static bool has_secret(const xp_shard_server_t *s)
{
    return s->p.cluster_secret != NULL && s->p.cluster_secret[0] != '\0';
}

/* With a cluster secret, whether the peer id proved it (its JOIN_ACK). */
static bool peer_trusted(xp_shard_server_t *s, const uint8_t *id, size_t id_len)
{
    if (!has_secret(s)) {
        return true;
    }
    if (s->auth_id_len == id_len && memcmp(s->auth_id, id, id_len) == 0) {
        return true;
    }
    if (!s->warned_unauth) {
        TDM_ERROR("shard", "ignoring control messages from a peer that has not proved the "
                           "cluster secret (a coordinator without the same --cluster-secret?)");
        s->warned_unauth = true;
    }
    return false;
}

static void send_join(xp_shard_server_t *s, const uint8_t *id, size_t id_len, uint64_t session,
                      uint64_t request_id)
{
    xp_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XP_MSG_JOIN;
    m.request_id = request_id;
    snprintf(m.join.tandem_version, sizeof(m.join.tandem_version), "%s", xp_msg_build_version());
    m.join.capabilities = XP_MSG_CAP_UCX | (TDM_HAVE_CUDA ? XP_MSG_CAP_CUDA : 0) |
                          (TDM_HAVE_NCCL ? XP_MSG_CAP_NCCL : 0) |
                          (kern_be_cuda_device(s->be) >= 0 ? XP_MSG_CAP_ON_GPU : 0);
    m.join.model = s->model_id;
    m.join.session = session;
    const void *addr;
    size_t len;
    xp_ucx_address(s->ucx, &addr, &len);
    m.join.ucx.data = addr;
    m.join.ucx.len = (uint32_t)len;
    m.join.node_memory = s->node_memory;
    m.join.threads = s->be_threads;
    snprintf(m.join.name, sizeof(m.join.name), "%.127s", s->endpoint);
    if (has_secret(s)) {
        m.join.nonce = xp_auth_nonce();
        m.join.has_auth = true;
        xp_auth_mac(s->p.cluster_secret, XP_AUTH_JOIN, session, m.join.nonce, m.join.auth);
        memcpy(s->chal_id, id, id_len);
        s->chal_id_len = id_len;
        s->chal_session = session;
        s->chal_nonce = m.join.nonce;
    }
    tdm_error_t err = {0};
    if (send_to(s->router, id, id_len, &m, &err) != TDM_OK) {
        TDM_WARN("shard", "%s", tdm_error_msg(&err));
    }
}

static void send_heartbeat(xp_shard_server_t *s)
{
    if (s->coord_id_len == 0) {
        return;
    }
    xp_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XP_MSG_HEARTBEAT;
    m.heartbeat.time_ns = (uint64_t)(tdm_now_s() * 1e9);
    m.heartbeat.epoch = atomic_load(&s->epoch);
    m.heartbeat.state = atomic_load(&s->state);
    /* a coordinator that went away: the ROUTER drops the message (not mandatory) */
    (void)send_to(s->router, s->coord_id, s->coord_id_len, &m, NULL);
}

/* One message from the ROUTER: [id][payload]. */
static void on_router(xp_shard_server_t *s)
{
    uint8_t id[SHD_SRV_ID_MAX];
    int id_len = zmq_recv(s->router, id, sizeof(id), ZMQ_DONTWAIT);
    if (id_len < 0) {
        return;
    }
    zmq_msg_t part;
    zmq_msg_init(&part);
    int more = 0;
    size_t ml = sizeof(more);
    zmq_getsockopt(s->router, ZMQ_RCVMORE, &more, &ml);
    if (!more || zmq_msg_recv(&part, s->router, 0) < 0) {
        zmq_msg_close(&part);
        return;
    }
    /* drop any further frames of a malformed multi-part message */
    zmq_getsockopt(s->router, ZMQ_RCVMORE, &more, &ml);
    while (more) {
        zmq_msg_t junk;
        zmq_msg_init(&junk);
        zmq_msg_recv(&junk, s->router, 0);
        zmq_msg_close(&junk);
        zmq_getsockopt(s->router, ZMQ_RCVMORE, &more, &ml);
    }
    xp_msg_t m;
    tdm_error_t err = {0};
    if (xp_msg_decode(zmq_msg_data(&part), zmq_msg_size(&part), &m, &err) != TDM_OK) {
        TDM_WARN("shard", "dropped a malformed control message: %s", tdm_error_msg(&err));
        zmq_msg_close(&part);
        return;
    }
    zmq_msg_close(&part);
    uint64_t aborts = 0;
    switch (m.type) {
    case XP_MSG_HELLO:
        /* The coordinator greets a shard of its group only once that group broke (it is
         * forming again), so a HELLO from the coordinator of our NCCL world ends that
         * world now: NCCL itself notices a silent peer late or never, and the collective
         * timeout would keep the GPU spinning meanwhile. UCX worlds fail on their own
         * (endpoint errors, timeouts) and are left to do so. */
        pthread_mutex_lock(&s->mu);
        if (s->coord_id_len == (size_t)id_len && memcmp(s->coord_id, id, (size_t)id_len) == 0) {
            s->aborts++; /* also an NCCL world of that LOAD not yet published */
#if TDM_HAVE_NCCL
            if (s->nccl != NULL) {
                xp_nccl_world_abort(s->nccl);
            }
#endif
        }
        pthread_mutex_unlock(&s->mu);
        send_join(s, id, (size_t)id_len, m.hello.session, m.request_id);
        xp_msg_free(&m);
        return;
    case XP_MSG_JOIN_ACK:
        if (!m.join_ack.accepted) {
            TDM_ERROR("shard", "the coordinator refused this shard: %s", m.join_ack.reason);
        } else if (has_secret(s)) {
            bool ok = s->chal_id_len == (size_t)id_len &&
                      memcmp(s->chal_id, id, (size_t)id_len) == 0 && m.join_ack.has_auth &&
                      xp_auth_check(s->p.cluster_secret, XP_AUTH_ACK, s->chal_session,
                                    s->chal_nonce, m.join_ack.auth);
            if (ok) {
                memcpy(s->auth_id, id, (size_t)id_len);
                s->auth_id_len = (size_t)id_len;
                s->warned_unauth = false;
            } else {
                TDM_ERROR("shard",
                          "refused a coordinator: %s cluster secret; its LOAD and STEP "
                          "messages are ignored",
                          m.join_ack.has_auth ? "wrong" : "no proof of the");
            }
        }
        xp_msg_free(&m);
        return;
    case XP_MSG_LOAD:
    case XP_MSG_STEP:
    case XP_MSG_SHUTDOWN:
        if (!peer_trusted(s, id, (size_t)id_len)) {
            xp_msg_free(&m);
            return;
        }
        break;
    default:
        break;
    }
    switch (m.type) {
    case XP_MSG_LOAD: {
        memcpy(s->coord_id, id, (size_t)id_len);
        s->coord_id_len = (size_t)id_len;
        /* a step stuck in a collective of the old world must not delay the new one */
        pthread_mutex_lock(&s->mu);
        abort_world_locked(s);
        aborts = s->aborts;
        pthread_mutex_unlock(&s->mu);
        TDM_INFO("shard", "LOAD epoch %016" PRIx64 ": rank tp %d/%d ep %d/%d", m.load.epoch,
                 m.load.tp_rank, m.load.tp_size, m.load.ep_rank, m.load.ep_size);
        break;
    }
    case XP_MSG_STEP:
        break;
    case XP_MSG_SHUTDOWN: {
        job_t *j = tdm_xcalloc(1, sizeof(*j));
        j->kind = JOB_LEAVE;
        pthread_mutex_lock(&s->mu);
        abort_world_locked(s);
        pthread_mutex_unlock(&s->mu);
        push_job(s, j);
        TDM_INFO("shard", "the coordinator released the group");
        xp_msg_free(&m);
        return;
    }
    default:
        TDM_WARN("shard", "ignored a %s message", xp_msg_type_str(m.type));
        xp_msg_free(&m);
        return;
    }
    job_t *j = tdm_xcalloc(1, sizeof(*j));
    j->kind = m.type == XP_MSG_LOAD ? JOB_LOAD : JOB_STEP;
    j->aborts = aborts;
    j->msg = m;
    memcpy(j->id, id, (size_t)id_len);
    j->id_len = (size_t)id_len;
    push_job(s, j);
}

/* A reply from the compute thread: forward [id][payload] to the ROUTER. */
static void on_pull(xp_shard_server_t *s)
{
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&id, s->pull, ZMQ_DONTWAIT) >= 0 && zmq_msg_recv(&body, s->pull, 0) >= 0) {
        if (zmq_msg_send(&id, s->router, ZMQ_SNDMORE) < 0 ||
            zmq_msg_send(&body, s->router, 0) < 0) {
            TDM_WARN("shard", "reply not delivered: %s", zmq_strerror(errno));
        }
    }
    zmq_msg_close(&id);
    zmq_msg_close(&body);
}

tdm_status_t xp_shard_server_run(xp_shard_server_t *s, tdm_error_t *err)
{
    pthread_t th;
    if (pthread_create(&th, NULL, compute_main, s) != 0) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "shard: cannot start the compute thread");
    }
    const double hb = (s->p.heartbeat_ms > 0 ? s->p.heartbeat_ms : 200) / 1000.0;
    double next_hb = tdm_now_s();
    int last_state = -1;
    while (!atomic_load(&s->stop)) {
        zmq_pollitem_t items[2] = {{s->router, 0, ZMQ_POLLIN, 0}, {s->pull, 0, ZMQ_POLLIN, 0}};
        double wait = next_hb - tdm_now_s();
        long ms = wait <= 0 ? 0 : (long)(wait * 1000.0) + 1;
        if (ms > 50) {
            ms = 50;
        }
        if (zmq_poll(items, 2, ms) < 0 && errno != EINTR) {
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            on_pull(s);
        }
        if (items[0].revents & ZMQ_POLLIN) {
            on_router(s);
        }
        if (tdm_now_s() >= next_hb) {
            send_heartbeat(s);
            next_hb = tdm_now_s() + hb;
        }
        int st = atomic_load(&s->state);
        if (st != last_state) {
            TDM_DEBUG("shard", "state %s", state_name(st));
            last_state = st;
        }
    }
    /* stop the compute thread: abort a running step, then queue the quit */
    pthread_mutex_lock(&s->mu);
    abort_world_locked(s);
    pthread_mutex_unlock(&s->mu);
    job_t *q = tdm_xcalloc(1, sizeof(*q));
    q->kind = JOB_QUIT;
    push_job(s, q);
    pthread_join(th, NULL);
    return TDM_OK;
}

void xp_shard_server_stop(xp_shard_server_t *s)
{
    atomic_store(&s->stop, true);
}

/* "HOST:PORT" -> "tcp://HOST:PORT" ("*" port for 0). */
static tdm_status_t zmq_endpoint(const char *hostport, char *out, size_t cap, tdm_error_t *err)
{
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || colon == hostport || colon[1] == '\0') {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "--listen '%s': expected HOST:PORT",
                             hostport);
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "--listen '%s': bad port", hostport);
    }
    int n = port == 0 ? snprintf(out, cap, "tcp://%.*s:*", (int)(colon - hostport), hostport)
                      : snprintf(out, cap, "tcp://%s", hostport);
    if (n < 0 || (size_t)n >= cap) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "--listen '%s' is too long", hostport);
    }
    return TDM_OK;
}

tdm_status_t xp_shard_server_create(const xp_shard_params_t *p, xp_shard_server_t **out,
                                    tdm_error_t *err)
{
    tdm_status_t st;
    xp_shard_server_t *s = tdm_xcalloc(1, sizeof(*s));
    s->p = *p;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    char ep[256];
    TDM_CHECK_GOTO(zmq_endpoint(p->listen, ep, sizeof(ep), err), st, fail);
    TDM_CHECK_GOTO(gguf_open(p->model_path, &s->g, err), st, fail);
    TDM_CHECK_GOTO(xp_model_id(s->g, &s->model_id, err), st, fail);
    s->node_memory = p->node_memory;
    if (s->node_memory == 0) {
        /* what the node can give: available memory plus the part of the model file that
         * is already in the page cache counts too, but MemAvailable includes reclaimable
         * cache, so it is the right single number */
        if (topo_meminfo_available(NULL, &s->node_memory, NULL) != TDM_OK) {
            s->node_memory = 0;
        }
    }
    const kern_backend_params_t bp = {
        .device = p->device, .n_threads = p->threads, .isa_override = KERN_ISA_COUNT};
    TDM_CHECK_GOTO(kern_backend_create(&bp, &s->be, err), st, fail);
    TDM_CHECK_GOTO(kern_kv_type_resolve(p->kv_type, s->be, &s->kv_type, err), st, fail);
    s->be_threads = kern_be_cpu_ctx(s->be) != NULL ? kern_ctx_n_threads(kern_be_cpu_ctx(s->be)) : 0;
    if (kern_be_kind(s->be) != KERN_DEVICE_CPU && p->node_memory == 0) {
        /* the plan's budget is the GPU's free memory (on a Spark also bounded by the
         * host's MemAvailable, which kern_be_mem_info takes into account) */
        uint64_t tot = 0;
        TDM_CHECK_GOTO(kern_be_mem_info(s->be, &s->node_memory, &tot, err), st, fail);
    }
    if (kern_be_fallback_reason(s->be)[0] != '\0') {
        TDM_INFO("shard", "device auto: no usable GPU (%s), running on %s",
                 kern_be_fallback_reason(s->be), kern_be_describe(s->be));
    } else {
        TDM_INFO("shard", "device: %s", kern_be_describe(s->be));
    }
    xp_ucx_params_t up = {.tls = p->ucx_tls, .net_devices = p->ucx_devices};
    TDM_CHECK_GOTO(xp_ucx_create(&up, &s->ucx, err), st, fail);

    s->zctx = zmq_ctx_new();
    s->router = zmq_socket(s->zctx, ZMQ_ROUTER);
    s->pull = zmq_socket(s->zctx, ZMQ_PULL);
    s->push = zmq_socket(s->zctx, ZMQ_PUSH);
    if (s->zctx == NULL || s->router == NULL || s->pull == NULL || s->push == NULL) {
        st = tdm_error_set(err, TDM_ERR_TRANSPORT, "shard: ZeroMQ: %s", zmq_strerror(errno));
        goto fail;
    }
    int zero = 0, one = 1;
    zmq_setsockopt(s->router, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(s->pull, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(s->push, ZMQ_LINGER, &zero, sizeof(zero));
    /* a restarted coordinator reconnects with a new identity; take over stale pipes */
    zmq_setsockopt(s->router, ZMQ_ROUTER_HANDOVER, &one, sizeof(one));
    char inproc[64];
    snprintf(inproc, sizeof(inproc), "inproc://shard-replies-%p", (void *)s);
    if (zmq_bind(s->router, ep) != 0) {
        st = tdm_error_set(err, TDM_ERR_IO, "shard: cannot listen on %s: %s", p->listen,
                           zmq_strerror(errno));
        goto fail;
    }
    if (zmq_bind(s->pull, inproc) != 0 || zmq_connect(s->push, inproc) != 0) {
        st = tdm_error_set(err, TDM_ERR_TRANSPORT, "shard: inproc pipe: %s", zmq_strerror(errno));
        goto fail;
    }
    size_t len = sizeof(s->endpoint);
    zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, s->endpoint, &len);
    char idhex[17];
    xp_model_id_short(&s->model_id, idhex);
    TDM_INFO("shard", "model %s (id %s, %" PRIu64 " tensors, %.1f MiB); node memory %.1f GiB",
             p->model_path, idhex, s->model_id.n_tensors, (double)s->model_id.file_size / 1048576.0,
             (double)s->node_memory / (1024.0 * 1048576.0));
    *out = s;
    return TDM_OK;
fail:
    xp_shard_server_destroy(s);
    return st;
}

const char *xp_shard_server_endpoint(const xp_shard_server_t *s)
{
    return s->endpoint;
}

void xp_shard_server_destroy(xp_shard_server_t *s)
{
    if (s == NULL) {
        return;
    }
    xp_ucx_world_destroy(s->world);
#if TDM_HAVE_NCCL
    xp_nccl_world_abort(s->nccl); /* its peers may be gone: no finalize */
    xp_nccl_world_destroy(s->nccl);
#endif
    drop_model(s);
    xp_kv_sender_destroy(s->kv_sender);
    job_t *j = s->head;
    while (j != NULL) {
        job_t *n = j->next;
        free_job(j);
        j = n;
    }
    if (s->router != NULL) {
        zmq_close(s->router);
    }
    if (s->pull != NULL) {
        zmq_close(s->pull);
    }
    if (s->push != NULL) {
        zmq_close(s->push);
    }
    if (s->zctx != NULL) {
        zmq_ctx_term(s->zctx);
    }
    xp_ucx_destroy(s->ucx);
    kern_backend_destroy(s->be);
    gguf_close(s->g);
    free(s->logits);
    free(s->views);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
