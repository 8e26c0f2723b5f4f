/* exec_remote.c - xp_executor_t over a group of shard processes (see exec_remote.h). */
#include "transport/exec_remote.h"

#include "tdm_build_config.h"
#include "common/check.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/mem.h"
#include "model/hparams.h"
#include "topology/topo_plan.h"
#include "transport/nccl_comm.h"
#include "transport/xp_auth.h"
#include "transport/xp_model_id.h"
#include "transport/xp_msg.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define HELLO_INTERVAL_S 0.3

typedef enum shard_st {
    SH_MISSING = 0, /* never answered, or silent too long    */
    SH_JOINED,      /* JOIN accepted, waiting for the others  */
    SH_REFUSED,     /* JOIN refused (version, model, memory)  */
    SH_LOADING,     /* LOAD sent                              */
    SH_READY,       /* READY for the current epoch            */
    SH_FAILED,      /* LOAD failed                            */
    SH_REJOIN,      /* alive when the group broke: must JOIN again */
} shard_st_t;

static const char *shard_st_name(shard_st_t s)
{
    static const char *const n[] = {"missing", "joined", "refused", "loading",
                                    "ready",   "failed", "joining"};
    return n[s];
}

typedef struct shard {
    char name[128];
    void *sock;
    shard_st_t st;
    double last_seen; /* < 0: never */
    double last_hello;
    uint8_t *ucx;
    uint32_t ucx_len;
    uint64_t node_memory;
    int32_t threads;
    int32_t n_blocks, n_swa_blocks;
    int32_t n_state_slots, n_state_store;
    uint64_t weight_bytes, resident_bytes;
    char error[256];
    bool have_result; /* for the step in flight */
    /* a decode group's shard: its registered KV storage as READY listed it (one block:
     * the regions, then their keys) */
    xp_msg_kv_region_t *kv_regions;
    int32_t n_kv_regions;
} shard_t;

typedef enum group_st { G_FORMING = 0, G_LOADING, G_READY, G_FATAL } group_st_t;

struct xp_remote_exec {
    xp_remote_params_t p;
    int tp, ep, n;
    xp_msg_model_id_t model_id;
    topo_plan_t *plan;
    int n_layer;
    int32_t n_vocab;
    uint64_t session;
    void *zctx;
    void *pipe_io, *pipe_engine; /* engine thread <-> I/O thread (inproc PAIR) */
    pthread_t io;
    _Atomic bool stop;

    pthread_mutex_t mu; /* guards everything below that another thread reads */
    pthread_cond_t cv;
    shard_t *shards;
    group_st_t gst;
    char gerror[512];
    uint64_t epoch;
    _Atomic uint64_t generation;
    int32_t n_blocks;     /* fixed at the first formation */
    int32_t n_swa_blocks; /* the sliding pool, likewise (0: the model has none) */
    int32_t n_swa;        /* the sliding window (0: none)                      */
    /* recurrent-state slots (Gated DeltaNet models), fixed at the first formation: the
     * slot ids the coordinator hands out address the same slot on every shard */
    int32_t n_state_slots, n_state_store;
    xp_remote_stats_t stats;

    /* I/O thread: the step in flight */
    bool step_active;
    uint64_t step_id;
    int n_results;
    double step_t0;
    tdm_status_t step_status;
    char step_error[512];
    zmq_msg_t step_logits; /* rank 0's RESULT payload (the encoded message) */
    bool have_logits;
    uint64_t engine_step_id; /* engine thread: the id of the last step it encoded */
    /* engine thread, a prefill group: the decode group, and which of its formations the
     * shards were last told about during which of ours */
    xp_remote_exec_t *kv_target;
    uint64_t kv_told_epoch, kv_told_generation;
    uint64_t rng; /* splitmix64 state for epochs */
};

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ---- the engine side of the pipe: [status int32][error text] then [logits] ---- */

typedef struct step_reply_hdr {
    int32_t status;
    char error[TDM_ERROR_MSG_MAX];
} step_reply_hdr_t;

static tdm_status_t remote_step(void *impl, const xp_step_t *st, float *logits, tdm_error_t *err)
{
    xp_remote_exec_t *x = impl;
    xp_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XP_MSG_STEP;
    m.request_id = ++x->engine_step_id;
    m.step = *st;
    xp_msg_kv_peer_t *peer = NULL;
    if (st->n_kv_sends > 0) {
        if (x->kv_target == NULL || (peer = xp_remote_exec_kv_peer(x->kv_target)) == NULL) {
            return tdm_error_set(err, TDM_ERR_TRANSPORT,
                                 "the decode group is not ready for the prefilled KV");
        }
        const uint64_t gen = xp_remote_exec_generation(x);
        if (peer->epoch != x->kv_told_epoch || gen != x->kv_told_generation) {
            m.kv_peer = *peer; /* the shards connect anew */
        }
        uint64_t blocks = 0;
        for (int32_t i = 0; i < st->n_kv_sends; i++) {
            blocks += (uint64_t)(st->kv_sends[i].hi - st->kv_sends[i].lo);
        }
        pthread_mutex_lock(&x->mu);
        x->stats.kv_blocks += blocks;
        pthread_mutex_unlock(&x->mu);
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    tdm_status_t rc = xp_msg_encode(&sb, &m, err);
    if (rc == TDM_OK && peer != NULL) {
        /* told once the step is sent: a failed step re-forms this group, which tells again */
        x->kv_told_epoch = peer->epoch;
        x->kv_told_generation = xp_remote_exec_generation(x);
    }
    free(peer);
    if (rc == TDM_OK &&
        (zmq_send(x->pipe_engine, &m.request_id, sizeof(m.request_id), ZMQ_SNDMORE) < 0 ||
         zmq_send(x->pipe_engine, sb.data, sb.size, 0) < 0)) {
        rc = tdm_error_set(err, TDM_ERR_INTERNAL, "remote executor: pipe: %s", zmq_strerror(errno));
    }
    msgpack_sbuffer_destroy(&sb);
    if (rc != TDM_OK) {
        return rc;
    }
    step_reply_hdr_t h;
    if (zmq_recv(x->pipe_engine, &h, sizeof(h), 0) != (int)sizeof(h)) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "remote executor: bad reply on the pipe");
    }
    zmq_msg_t lg;
    zmq_msg_init(&lg);
    if (zmq_msg_recv(&lg, x->pipe_engine, 0) < 0) {
        zmq_msg_close(&lg);
        return tdm_error_set(err, TDM_ERR_INTERNAL, "remote executor: pipe: %s",
                             zmq_strerror(errno));
    }
    if (h.status != TDM_OK) {
        zmq_msg_close(&lg);
        h.error[sizeof(h.error) - 1] = '\0';
        return tdm_error_set(err, (tdm_status_t)h.status, "%s", h.error);
    }
    const size_t want = (size_t)st->n_logits * (size_t)x->n_vocab * sizeof(float);
    if (zmq_msg_size(&lg) != want) {
        zmq_msg_close(&lg);
        return tdm_error_set(err, TDM_ERR_TRANSPORT,
                             "remote executor: %zu bytes of logits, expected %zu",
                             zmq_msg_size(&lg), want);
    }
    if (want > 0) {
        memcpy(logits, zmq_msg_data(&lg), want);
    }
    zmq_msg_close(&lg);
    return TDM_OK;
}

static uint64_t remote_generation(void *impl)
{
    return xp_remote_exec_generation(impl);
}

static const xp_executor_ops_t remote_ops = {.step = remote_step, .generation = remote_generation};

/* ---- I/O thread ---- */

static void send_msg(shard_t *sh, const xp_msg_t *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    tdm_error_t err = {0};
    if (xp_msg_encode(&sb, m, &err) != TDM_OK) {
        TDM_ERROR("remote", "cannot encode %s: %s", xp_msg_type_str(m->type), tdm_error_msg(&err));
    } else if (zmq_send(sh->sock, sb.data, sb.size, ZMQ_DONTWAIT) < 0 && errno != EAGAIN) {
        TDM_WARN("remote", "send %s to %s: %s", xp_msg_type_str(m->type), sh->name,
                 zmq_strerror(errno));
    }
    msgpack_sbuffer_destroy(&sb);
}

/* Ends the step in flight (if any) with status/error; the caller holds no lock. */
static void finish_step(xp_remote_exec_t *x, tdm_status_t status, const char *error)
{
    if (!x->step_active) {
        return;
    }
    /* count before replying: the engine may read the stats as soon as it has the reply */
    pthread_mutex_lock(&x->mu);
    x->stats.steps++;
    x->stats.failed_steps += status != TDM_OK;
    x->stats.step_ns += (uint64_t)((tdm_now_s() - x->step_t0) * 1e9);
    pthread_mutex_unlock(&x->mu);
    x->step_active = false;
    step_reply_hdr_t h;
    memset(&h, 0, sizeof(h));
    h.status = status;
    snprintf(h.error, sizeof(h.error), "%s", error != NULL ? error : "");
    zmq_send(x->pipe_io, &h, sizeof(h), ZMQ_SNDMORE);
    if (status == TDM_OK && x->have_logits) {
        zmq_msg_send(&x->step_logits, x->pipe_io, 0);
        zmq_msg_init(&x->step_logits);
    } else {
        zmq_send(x->pipe_io, "", 0, 0);
    }
    if (x->have_logits) {
        zmq_msg_close(&x->step_logits);
        zmq_msg_init(&x->step_logits);
        x->have_logits = false;
    }
}

/* The group is broken: fail the step in flight and go back to forming. Holds mu. */
static void group_break(xp_remote_exec_t *x, const char *why)
{
    if (x->gst == G_FATAL) {
        return;
    }
    if (x->gst == G_READY || x->gst == G_LOADING) {
        TDM_WARN("remote", "shard group down: %s", why);
    }
    snprintf(x->gerror, sizeof(x->gerror), "%s", why);
    x->gst = G_FORMING;
    const double now = tdm_now_s(), dead = x->p.heartbeat_timeout_ms / 1000.0;
    for (int i = 0; i < x->n; i++) {
        shard_t *sh = &x->shards[i];
        if (sh->st == SH_READY || sh->st == SH_LOADING || sh->st == SH_JOINED) {
            /* must JOIN again (its UCX address may have changed); a silent one is missing */
            const bool silent = sh->last_seen < 0 || now - sh->last_seen > dead;
            sh->st = silent ? SH_MISSING : SH_REJOIN;
            sh->last_hello = 0;
        }
    }
}

static void fail_group_and_step(xp_remote_exec_t *x, tdm_status_t status, const char *why)
{
    pthread_mutex_lock(&x->mu);
    group_break(x, why);
    pthread_mutex_unlock(&x->mu);
    finish_step(x, status, why);
}

static bool join_ok(xp_remote_exec_t *x, shard_t *sh, const xp_msg_join_t *j, char *reason,
                    size_t cap)
{
    char a[17], b[17];
    const char *secret = x->p.cluster_secret;
    if (secret != NULL && secret[0] != '\0') {
        if (!j->has_auth || !xp_auth_check(secret, XP_AUTH_JOIN, j->session, j->nonce, j->auth)) {
            snprintf(reason, cap,
                     "shard %s: %s cluster secret (give it the coordinator's --cluster-secret "
                     "or TANDEM_CLUSTER_SECRET)",
                     sh->name, j->has_auth ? "wrong" : "no proof of the");
            return false;
        }
    } else if (j->has_auth) {
        snprintf(reason, cap,
                 "shard %s requires a cluster secret: give the coordinator the same "
                 "--cluster-secret or TANDEM_CLUSTER_SECRET",
                 sh->name);
        return false;
    }
    if (strcmp(j->tandem_version, xp_msg_build_version()) != 0) {
        snprintf(reason, cap, "shard %s runs tandem %s, the coordinator %s (use one build)",
                 sh->name, j->tandem_version, xp_msg_build_version());
        return false;
    }
    if (memcmp(j->model.hash, x->model_id.hash, sizeof(j->model.hash)) != 0 ||
        j->model.file_size != x->model_id.file_size ||
        j->model.n_tensors != x->model_id.n_tensors) {
        xp_model_id_short(&j->model, a);
        xp_model_id_short(&x->model_id, b);
        snprintf(reason, cap,
                 "shard %s holds another model (id %s, %" PRIu64 " bytes, %" PRIu64
                 " tensors); the coordinator's is id %s, %" PRIu64 " bytes, %" PRIu64 " tensors",
                 sh->name, a, j->model.file_size, j->model.n_tensors, b, x->model_id.file_size,
                 x->model_id.n_tensors);
        return false;
    }
    if ((j->capabilities & XP_MSG_CAP_UCX) == 0 && x->n > 1 && x->p.proto != XP_MSG_PROTO_NCCL) {
        snprintf(reason, cap, "shard %s has no UCX data plane", sh->name);
        return false;
    }
    if (x->p.proto == XP_MSG_PROTO_NCCL && (j->capabilities & XP_MSG_CAP_NCCL) == 0) {
        snprintf(reason, cap,
                 "shard %s was built without NCCL: --collective nccl needs NCCL in every "
                 "shard's build",
                 sh->name);
        return false;
    }
    /* Refused here rather than by the shard at LOAD: that LOAD would carry a new NCCL id,
     * whose bootstrap root (a thread and a socket in this process, which NCCL cannot
     * cancel) would wait for this rank for ever. A group of one has no NCCL world and no
     * id, and its shard refuses the LOAD itself. */
    if (x->p.proto == XP_MSG_PROTO_NCCL && x->n > 1 && (j->capabilities & XP_MSG_CAP_ON_GPU) == 0) {
        snprintf(reason, cap,
                 "shard %s runs on the CPU: --collective nccl needs shards on a GPU "
                 "(--device cuda)",
                 sh->name);
        return false;
    }
    const int r = (int)(sh - x->shards);
    const topo_shard_plan_t *sp = &x->plan->shards[r];
    if (j->node_memory > 0 && sp->total > j->node_memory) {
        snprintf(reason, cap,
                 "shard %s (rank %d) needs %.2f GiB (weights %.2f, KV %.2f, buffers %.2f) but "
                 "its node offers %.2f GiB",
                 sh->name, r, sp->total / 1073741824.0, sp->weights / 1073741824.0,
                 sp->kv / 1073741824.0, sp->buffers / 1073741824.0, j->node_memory / 1073741824.0);
        return false;
    }
    return true;
}

static const char *proto_name(int proto)
{
    return proto == XP_MSG_PROTO_NCCL ? "nccl" : proto == XP_MSG_PROTO_RMA ? "rma" : "am";
}

#define NO_NCCL_MSG                                                                          \
    "--collective nccl: this build of tandem has no NCCL (tandem --version says nccl: no); " \
    "rebuild with the CUDA toolkit and NCCL installed (see README), or use --collective am " \
    "or rma"

tdm_status_t xp_collective_parse(const char *s, int *proto, tdm_error_t *err)
{
    if (s != NULL && strcmp(s, "nccl") == 0) {
        if (!TDM_HAVE_NCCL) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "%s", NO_NCCL_MSG);
        }
        *proto = XP_MSG_PROTO_NCCL;
        return TDM_OK;
    }
    if (s != NULL && (strcmp(s, "am") == 0 || strcmp(s, "rma") == 0)) {
        *proto = s[0] == 'a' ? XP_MSG_PROTO_AM : XP_MSG_PROTO_RMA;
        return TDM_OK;
    }
    return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "collective '%s': expected am, rma or nccl",
                         s != NULL ? s : "");
}

/* A new NCCL unique id for this formation when the group needs one (xp_msg_load_has_nccl_id:
 * nccl over more than one shard). Its bootstrap root runs in this process until every
 * shard has connected, so the id is made only now, once every shard has joined. */
static tdm_status_t formation_nccl_id(xp_remote_exec_t *x, uint8_t id[XP_MSG_NCCL_ID_BYTES],
                                      tdm_error_t *err)
{
    if (x->p.proto != XP_MSG_PROTO_NCCL || x->n < 2) {
        return TDM_OK;
    }
#if TDM_HAVE_NCCL
    _Static_assert(XP_MSG_NCCL_ID_BYTES == XP_NCCL_ID_BYTES, "one NCCL id size");
    return xp_nccl_unique_id(id, err);
#else
    (void)id;
    return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "this build has no NCCL");
#endif
}

/* Holds mu. */
static void send_load(xp_remote_exec_t *x)
{
    uint8_t nccl_id[XP_MSG_NCCL_ID_BYTES] = {0};
    tdm_error_t ierr = {0};
    if (formation_nccl_id(x, nccl_id, &ierr) != TDM_OK) {
        char why[512];
        snprintf(why, sizeof(why),
                 "cannot make the NCCL id of a new formation (check NCCL_SOCKET_IFNAME on the "
                 "coordinator): %.380s",
                 tdm_error_msg(&ierr));
        TDM_ERROR("remote", "%s", why);
        group_break(x, why); /* the shards join again and the next formation retries */
        if (x->n_blocks == 0) {
            x->gst = G_FATAL; /* at start: give up with this message */
        }
        return;
    }
    uint64_t epoch = next_random(&x->rng);
    if (epoch == 0) {
        epoch = 1;
    }
    x->epoch = epoch;
    xp_msg_blob_t *peers = tdm_xcalloc((size_t)x->n, sizeof(*peers));
    for (int i = 0; i < x->n; i++) {
        peers[i].data = x->shards[i].ucx;
        peers[i].len = x->shards[i].ucx_len;
    }
    int32_t *lo = NULL, *cnt = NULL;
    const bool ranges = !x->p.contiguous_experts && x->plan->n_moe_layers > 0 && x->ep > 1;
    if (ranges) {
        lo = tdm_xcalloc((size_t)x->n_layer, sizeof(int32_t));
        cnt = tdm_xcalloc((size_t)x->n_layer, sizeof(int32_t));
    }
    for (int r = 0; r < x->n; r++) {
        xp_msg_t m;
        memset(&m, 0, sizeof(m));
        m.type = XP_MSG_LOAD;
        xp_msg_load_t *l = &m.load;
        l->epoch = epoch;
        l->tp_rank = r % x->tp;
        l->tp_size = x->tp;
        l->ep_rank = r / x->tp;
        l->ep_size = x->ep;
        l->n_ctx = x->p.n_ctx;
        l->kv_bytes = x->p.kv_bytes;
        l->n_batch_max = x->p.n_batch_max;
        l->n_out_max = x->p.n_logits_max;
        l->n_state_store = x->p.n_state_store == 0  ? x->p.n_logits_max
                           : x->p.n_state_store > 0 ? x->p.n_state_store
                                                    : 0;
        l->block_tokens = x->p.block_tokens;
        l->proto = x->p.proto;
        l->timeout_ms = x->p.coll_timeout_ms;
        l->n_peers = x->n;
        l->peers = peers;
        l->kv_export = x->p.kv_export;
        memcpy(l->nccl_id, nccl_id, sizeof(l->nccl_id)); /* on the wire only when needed */
        if (ranges) {
            for (int il = 0; il < x->n_layer; il++) {
                lo[il] = x->plan->expert_lo[il * x->ep + l->ep_rank];
                cnt[il] = x->plan->expert_n[il * x->ep + l->ep_rank];
            }
            l->n_layers = x->n_layer;
            l->expert_lo = lo;
            l->expert_n = cnt;
        }
        send_msg(&x->shards[r], &m);
        x->shards[r].st = SH_LOADING;
    }
    free(peers);
    free(lo);
    free(cnt);
    x->gst = G_LOADING;
    TDM_INFO("remote", "loading the group (epoch %016" PRIx64 ", tp %d x ep %d, collectives %s)",
             epoch, x->tp, x->ep, proto_name(x->p.proto));
}

static void free_logits(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static void on_shard_msg(xp_remote_exec_t *x, int r, xp_msg_t *m)
{
    shard_t *sh = &x->shards[r];
    const double now = tdm_now_s();
    pthread_mutex_lock(&x->mu);
    sh->last_seen = now;
    switch (m->type) {
    case XP_MSG_JOIN: {
        if (m->join.session != x->session) {
            break; /* an answer to an earlier coordinator's HELLO */
        }
        char reason[1024];
        xp_msg_t ack;
        memset(&ack, 0, sizeof(ack));
        ack.type = XP_MSG_JOIN_ACK;
        ack.join_ack.accepted = join_ok(x, sh, &m->join, reason, sizeof(reason));
        if (!ack.join_ack.accepted) {
            snprintf(ack.join_ack.reason, sizeof(ack.join_ack.reason), "%.250s", reason);
            if (sh->st != SH_REFUSED) {
                TDM_ERROR("remote", "refused: %s", reason);
            }
            snprintf(sh->error, sizeof(sh->error), "%.255s", reason);
            sh->st = SH_REFUSED;
            snprintf(x->gerror, sizeof(x->gerror), "%.511s", reason);
            send_msg(sh, &ack);
            break;
        }
        if (x->p.cluster_secret != NULL && x->p.cluster_secret[0] != '\0') {
            ack.join_ack.has_auth = true;
            xp_auth_mac(x->p.cluster_secret, XP_AUTH_ACK, m->join.session, m->join.nonce,
                        ack.join_ack.auth);
        }
        send_msg(sh, &ack);
        if (sh->st == SH_MISSING || sh->st == SH_REFUSED || sh->st == SH_FAILED ||
            sh->st == SH_REJOIN) {
            free(sh->ucx);
            sh->ucx = tdm_xmalloc(m->join.ucx.len);
            memcpy(sh->ucx, m->join.ucx.data, m->join.ucx.len);
            sh->ucx_len = m->join.ucx.len;
            sh->node_memory = m->join.node_memory;
            sh->threads = m->join.threads;
            sh->error[0] = '\0';
            sh->st = SH_JOINED;
            TDM_INFO("remote", "shard %s (rank %d) joined: %s", sh->name, r, m->join.name);
        }
        break;
    }
    case XP_MSG_READY:
        if (x->gst != G_LOADING || m->ready.epoch != x->epoch) {
            break;
        }
        if (m->ready.status != TDM_OK) {
            snprintf(sh->error, sizeof(sh->error), "%.255s", m->ready.error);
            sh->st = SH_FAILED;
            char why[512];
            snprintf(why, sizeof(why), "shard %.100s (rank %d) failed to load: %.360s", sh->name, r,
                     m->ready.error);
            TDM_ERROR("remote", "%s", why);
            group_break(x, why);
            if (x->n_blocks == 0) {
                x->gst = G_FATAL; /* at start: give up with this message */
            }
            break;
        }
        sh->st = SH_READY;
        free(sh->kv_regions);
        sh->kv_regions = NULL;
        sh->n_kv_regions = m->ready.n_kv_regions;
        if (m->ready.n_kv_regions > 0) {
            size_t bytes = (size_t)m->ready.n_kv_regions * sizeof(xp_msg_kv_region_t);
            for (int32_t i = 0; i < m->ready.n_kv_regions; i++) {
                bytes += m->ready.kv_regions[i].rkey.len;
            }
            sh->kv_regions = tdm_xmalloc(bytes);
            unsigned char *keys = (unsigned char *)(sh->kv_regions + m->ready.n_kv_regions);
            for (int32_t i = 0; i < m->ready.n_kv_regions; i++) {
                sh->kv_regions[i] = m->ready.kv_regions[i];
                sh->kv_regions[i].rkey.data = keys;
                if (m->ready.kv_regions[i].rkey.len > 0) {
                    memcpy(keys, m->ready.kv_regions[i].rkey.data, m->ready.kv_regions[i].rkey.len);
                }
                keys += m->ready.kv_regions[i].rkey.len;
            }
        }
        if (x->p.kv_export && m->ready.n_kv_regions == 0) {
            snprintf(x->gerror, sizeof(x->gerror),
                     "shard %.100s (rank %d) did not register its KV storage", sh->name, r);
            x->gst = G_FATAL;
            break;
        }
        sh->n_blocks = m->ready.n_blocks;
        sh->n_swa_blocks = m->ready.n_swa_blocks;
        sh->n_state_slots = m->ready.n_state_slots;
        sh->n_state_store = m->ready.n_state_store;
        sh->weight_bytes = m->ready.weight_bytes;
        sh->resident_bytes = m->ready.resident_bytes;
        TDM_INFO("remote",
                 "shard %s (rank %d) ready: slice %.1f MiB, resident %.1f MiB, %d KV "
                 "blocks (%d sliding-window)",
                 sh->name, r, m->ready.weight_bytes / 1048576.0,
                 m->ready.resident_bytes / 1048576.0, (int)m->ready.n_blocks,
                 (int)m->ready.n_swa_blocks);
        bool all = true;
        int32_t nb = INT32_MAX, nsb = INT32_MAX, nss = INT32_MAX;
        bool same_slots = true;
        for (int i = 0; i < x->n; i++) {
            all &= x->shards[i].st == SH_READY;
            same_slots &= x->shards[i].n_state_slots == x->shards[0].n_state_slots;
            if (x->shards[i].n_state_store < nss) {
                nss = x->shards[i].n_state_store;
            }
            if (x->shards[i].n_blocks < nb) {
                nb = x->shards[i].n_blocks;
            }
            if (x->shards[i].n_swa_blocks < nsb) {
                nsb = x->shards[i].n_swa_blocks;
            }
        }
        if (!all) {
            break;
        }
        /* every shard keeps the same layers in its sliding pool (same model, same rule):
         * one without a pool while the model has sliding layers would misread the tables */
        if ((nsb > 0) != (x->n_swa > 0)) {
            snprintf(x->gerror, sizeof(x->gerror),
                     "a shard holds %d sliding-window KV blocks for a model whose window is %d",
                     (int)nsb, (int)x->n_swa);
            x->gst = G_FATAL;
            break;
        }
        /* the running slots are indexed 0.., the stored states after them: every shard
         * must count the running ones alike (they all got the same n_out_max) */
        if (!same_slots) {
            snprintf(x->gerror, sizeof(x->gerror),
                     "the shards hold different numbers of recurrent-state slots");
            x->gst = G_FATAL;
            break;
        }
        if (x->n_blocks == 0) {
            x->n_blocks = nb;
            x->n_swa_blocks = nsb;
            x->n_state_slots = x->shards[0].n_state_slots;
            x->n_state_store = nss;
        } else if (nb < x->n_blocks || nsb < x->n_swa_blocks ||
                   x->shards[0].n_state_slots != x->n_state_slots || nss < x->n_state_store) {
            snprintf(x->gerror, sizeof(x->gerror),
                     "the re-formed group holds %d KV blocks (%d sliding-window), fewer than the "
                     "%d (%d) it started with",
                     (int)nb, (int)nsb, (int)x->n_blocks, (int)x->n_swa_blocks);
            x->gst = G_FATAL;
            break;
        }
        x->gst = G_READY;
        x->gerror[0] = '\0';
        x->stats.formations++;
        atomic_fetch_add(&x->generation, 1);
        TDM_INFO("remote", "shard group ready (%d shards, epoch %016" PRIx64 ")", x->n, x->epoch);
        pthread_cond_broadcast(&x->cv);
        break;
    case XP_MSG_HEARTBEAT:
        if (x->gst == G_READY && sh->st == SH_READY && m->heartbeat.epoch != x->epoch) {
            char why[512];
            snprintf(why, sizeof(why), "shard %s (rank %d) left the group (restarted?)", sh->name,
                     r);
            pthread_mutex_unlock(&x->mu);
            fail_group_and_step(x, TDM_ERR_TRANSPORT, why);
            return;
        }
        break;
    case XP_MSG_RESULT:
        if (!x->step_active || m->request_id != x->step_id) {
            break; /* a late answer to a step that already ended */
        }
        if (m->result.status != TDM_OK) {
            char why[512];
            snprintf(why, sizeof(why), "shard %.100s (rank %d): %.360s", sh->name, r,
                     m->result.error);
            pthread_mutex_unlock(&x->mu);
            fail_group_and_step(x, TDM_ERR_TRANSPORT, why);
            return;
        }
        x->stats.coll_calls += m->result.coll_calls;
        x->stats.coll_bytes += m->result.coll_bytes;
        x->stats.coll_ns += m->result.coll_ns;
        x->stats.step_ns_shards += m->result.step_ns;
        x->stats.kv_bytes += m->result.kv_bytes;
        x->stats.kv_ns += m->result.kv_ns;
        if (!sh->have_result) {
            sh->have_result = true;
            x->n_results++;
        }
        if (r == 0) {
            /* keep rank 0's logits: the decoder's copy becomes the reply frame as it is */
            const size_t bytes =
                (size_t)m->result.n_logits * (size_t)m->result.n_vocab * sizeof(float);
            if (x->have_logits) {
                zmq_msg_close(&x->step_logits);
            }
            if (bytes > 0) {
                zmq_msg_init_data(&x->step_logits, m->owned_f32, bytes, free_logits, NULL);
                m->owned_f32 = NULL; /* now the frame's */
            } else {
                zmq_msg_init(&x->step_logits);
            }
            x->have_logits = true;
        }
        if (x->n_results == x->n) {
            pthread_mutex_unlock(&x->mu);
            finish_step(x, TDM_OK, NULL);
            return;
        }
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&x->mu);
}

static void on_shard_readable(xp_remote_exec_t *x, int r)
{
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, x->shards[r].sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            return;
        }
        xp_msg_t m;
        tdm_error_t err = {0};
        if (xp_msg_decode(zmq_msg_data(&part), zmq_msg_size(&part), &m, &err) != TDM_OK) {
            TDM_WARN("remote", "malformed message from %s: %s", x->shards[r].name,
                     tdm_error_msg(&err));
        } else {
            on_shard_msg(x, r, &m);
            xp_msg_free(&m);
        }
        zmq_msg_close(&part);
    }
}

/* A step from the engine: forward it to every shard, or refuse it at once. */
/* A step from the engine, [id][encoded STEP]: forward the bytes to every shard as they
 * are (zmq_msg_copy shares the buffer), or refuse the step at once. */
static void on_engine(xp_remote_exec_t *x)
{
    uint64_t id = 0;
    zmq_msg_t req;
    zmq_msg_init(&req);
    if (zmq_recv(x->pipe_io, &id, sizeof(id), ZMQ_DONTWAIT) != (int)sizeof(id) ||
        zmq_msg_recv(&req, x->pipe_io, 0) < 0) {
        zmq_msg_close(&req);
        return;
    }
    x->step_active = true;
    x->step_t0 = tdm_now_s();
    x->step_id = id;
    x->n_results = 0;
    pthread_mutex_lock(&x->mu);
    const bool ready = x->gst == G_READY;
    char why[512] = "";
    if (!ready) {
        snprintf(why, sizeof(why), "shard group not ready: %.480s",
                 x->gerror[0] ? x->gerror : "forming");
    }
    for (int i = 0; i < x->n; i++) {
        x->shards[i].have_result = false;
    }
    pthread_mutex_unlock(&x->mu);
    if (!ready) {
        zmq_msg_close(&req);
        finish_step(x, TDM_ERR_TRANSPORT, why);
        return;
    }
    for (int i = 0; i < x->n; i++) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        zmq_msg_copy(&part, &req);
        if (zmq_msg_send(&part, x->shards[i].sock, ZMQ_DONTWAIT) < 0) {
            char w[512];
            snprintf(w, sizeof(w), "shard %s (rank %d) unreachable: %s", x->shards[i].name, i,
                     zmq_strerror(errno));
            zmq_msg_close(&part);
            zmq_msg_close(&req);
            fail_group_and_step(x, TDM_ERR_TRANSPORT, w);
            return;
        }
    }
    zmq_msg_close(&req);
}

/* Periodic work: greetings, liveness, starting a formation. */
static void tick(xp_remote_exec_t *x)
{
    const double now = tdm_now_s();
    const double dead = x->p.heartbeat_timeout_ms / 1000.0;
    char why[512] = "";
    pthread_mutex_lock(&x->mu);
    if (x->gst == G_FATAL) {
        pthread_mutex_unlock(&x->mu);
        return;
    }
    for (int i = 0; i < x->n; i++) {
        shard_t *sh = &x->shards[i];
        const bool silent = sh->last_seen < 0 || now - sh->last_seen > dead;
        if ((sh->st == SH_READY || sh->st == SH_LOADING) && silent && why[0] == '\0') {
            snprintf(why, sizeof(why), "shard %s (rank %d) is missing: no heartbeat for %.1f s",
                     sh->name, i, sh->last_seen < 0 ? dead : now - sh->last_seen);
            snprintf(sh->error, sizeof(sh->error), "no heartbeat for %.1f s", now - sh->last_seen);
        }
    }
    pthread_mutex_unlock(&x->mu);
    if (why[0] != '\0') {
        fail_group_and_step(x, TDM_ERR_TRANSPORT, why);
    }
    pthread_mutex_lock(&x->mu);
    if (x->gst == G_FORMING) {
        bool all = true;
        for (int i = 0; i < x->n; i++) {
            shard_t *sh = &x->shards[i];
            if ((sh->st == SH_REJOIN || sh->st == SH_JOINED) && sh->last_seen >= 0 &&
                now - sh->last_seen > dead) {
                sh->st = SH_MISSING;
                snprintf(sh->error, sizeof(sh->error), "no answer for %.1f s", now - sh->last_seen);
                snprintf(x->gerror, sizeof(x->gerror),
                         "shard %.100s (rank %d) is missing: no answer for %.1f s", sh->name, i,
                         now - sh->last_seen);
            }
            if (sh->st != SH_JOINED) {
                all = false;
            }
            if (sh->st != SH_JOINED && now - sh->last_hello >= HELLO_INTERVAL_S) {
                xp_msg_t h;
                memset(&h, 0, sizeof(h));
                h.type = XP_MSG_HELLO;
                h.hello.session = x->session;
                send_msg(sh, &h);
                sh->last_hello = now;
            }
            if (sh->st == SH_MISSING && sh->error[0] == '\0') {
                snprintf(sh->error, sizeof(sh->error), "not answering");
            }
        }
        if (all) {
            send_load(x);
        } else if (x->gerror[0] == '\0') {
            snprintf(x->gerror, sizeof(x->gerror), "waiting for every shard to join");
        }
    }
    pthread_mutex_unlock(&x->mu);
}

static void *io_main(void *arg)
{
    xp_remote_exec_t *x = arg;
    zmq_pollitem_t *items = tdm_xcalloc((size_t)x->n + 1, sizeof(*items));
    double next_tick = 0;
    while (!atomic_load(&x->stop)) {
        items[0] = (zmq_pollitem_t){x->pipe_io, 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < x->n; i++) {
            items[i + 1] = (zmq_pollitem_t){x->shards[i].sock, 0, ZMQ_POLLIN, 0};
        }
        if (zmq_poll(items, x->n + 1, 20) < 0 && errno != EINTR) {
            break;
        }
        for (int i = 0; i < x->n; i++) {
            if (items[i + 1].revents & ZMQ_POLLIN) {
                on_shard_readable(x, i);
            }
        }
        if ((items[0].revents & ZMQ_POLLIN) && !x->step_active) {
            on_engine(x);
        }
        if (tdm_now_s() >= next_tick) {
            tick(x);
            next_tick = tdm_now_s() + 0.05;
        }
    }
    /* the engine may be waiting: never leave it hanging */
    finish_step(x, TDM_ERR_CANCELED, "the coordinator is shutting down");
    free(items);
    return NULL;
}

/* ---- create / destroy ---- */

static tdm_status_t make_sockets(xp_remote_exec_t *x, tdm_error_t *err)
{
    x->zctx = zmq_ctx_new();
    if (x->zctx == NULL) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ZeroMQ: %s", zmq_strerror(errno));
    }
    int zero = 0, one = 1, ivl = 100, ivl_max = 1000, hb = 500, hbt = 1500;
    for (int i = 0; i < x->n; i++) {
        shard_t *sh = &x->shards[i];
        sh->sock = zmq_socket(x->zctx, ZMQ_DEALER);
        if (sh->sock == NULL) {
            return tdm_error_set(err, TDM_ERR_TRANSPORT, "ZeroMQ: %s", zmq_strerror(errno));
        }
        zmq_setsockopt(sh->sock, ZMQ_LINGER, &zero, sizeof(zero));
        /* queue only to a connected shard: a send to a missing one fails at once */
        zmq_setsockopt(sh->sock, ZMQ_IMMEDIATE, &one, sizeof(one));
        zmq_setsockopt(sh->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof(ivl));
        zmq_setsockopt(sh->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof(ivl_max));
        /* transport heartbeats drop a connection whose link was cut, so it reconnects
         * when the link returns */
        zmq_setsockopt(sh->sock, ZMQ_HEARTBEAT_IVL, &hb, sizeof(hb));
        zmq_setsockopt(sh->sock, ZMQ_HEARTBEAT_TIMEOUT, &hbt, sizeof(hbt));
        char ep[160];
        snprintf(ep, sizeof(ep), "tcp://%s", sh->name);
        if (zmq_connect(sh->sock, ep) != 0) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "shard '%s': %s", sh->name,
                                 zmq_strerror(errno));
        }
    }
    x->pipe_io = zmq_socket(x->zctx, ZMQ_PAIR);
    x->pipe_engine = zmq_socket(x->zctx, ZMQ_PAIR);
    char inproc[64];
    snprintf(inproc, sizeof(inproc), "inproc://remote-exec-%p", (void *)x);
    if (x->pipe_io == NULL || x->pipe_engine == NULL || zmq_bind(x->pipe_io, inproc) != 0 ||
        zmq_connect(x->pipe_engine, inproc) != 0) {
        return tdm_error_set(err, TDM_ERR_TRANSPORT, "ZeroMQ pipe: %s", zmq_strerror(errno));
    }
    zmq_setsockopt(x->pipe_io, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(x->pipe_engine, ZMQ_LINGER, &zero, sizeof(zero));
    return TDM_OK;
}

tdm_status_t xp_remote_exec_create(const xp_remote_params_t *p, xp_remote_exec_t **out,
                                   xp_executor_t *ex, tdm_error_t *err)
{
    if (p->n_shards < 1 || p->n_shards > XP_MSG_MAX_WORLD || p->shards == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "remote executor: %d shards", p->n_shards);
    }
    if (p->proto < XP_MSG_PROTO_AM || p->proto > XP_MSG_PROTO_NCCL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "remote executor: collective protocol %d",
                             p->proto);
    }
    if (p->proto == XP_MSG_PROTO_NCCL && !TDM_HAVE_NCCL) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "%s", NO_NCCL_MSG);
    }
    tdm_status_t st;
    xp_remote_exec_t *x = tdm_xcalloc(1, sizeof(*x));
    x->p = *p;
    x->p.shards = NULL;
    if (x->p.block_tokens <= 0) {
        x->p.block_tokens = 16;
    }
    if (x->p.coll_timeout_ms <= 0) {
        x->p.coll_timeout_ms = 15000;
    }
    if (x->p.heartbeat_timeout_ms <= 0) {
        x->p.heartbeat_timeout_ms = 1500;
    }
    if (x->p.start_timeout_ms <= 0) {
        x->p.start_timeout_ms = 120000;
    }
    x->n = p->n_shards;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    zmq_msg_init(&x->step_logits);
    x->shards = tdm_xcalloc((size_t)x->n, sizeof(shard_t));
    for (int i = 0; i < x->n; i++) {
        snprintf(x->shards[i].name, sizeof(x->shards[i].name), "%s", p->shards[i]);
        x->shards[i].last_seen = -1;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    x->rng = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 48) ^
             (uint64_t)(uintptr_t)x;
    x->session = next_random(&x->rng);

    TDM_CHECK_GOTO(xp_model_id(p->g, &x->model_id, err), st, fail);
    mdl_hparams_t hp;
    TDM_CHECK_GOTO(mdl_hparams_load(p->g, &hp, err), st, fail);
    x->n_layer = hp.n_layer;
    x->n_vocab = hp.n_vocab;
    x->n_swa = mdl_hparams_swa_window(&hp);
    topo_plan_params_t pp = {
        .n_shards = x->n,
        .tp = p->tp,
        .ep = p->ep,
        .ctx_size = p->kv_bytes > 0 ? p->n_ctx : 4 * p->n_ctx,
        .kv_bytes = p->kv_bytes,
        .batch = p->n_batch_max,
        .n_out = p->n_logits_max,
        .threads = 1,
        .block_tokens = x->p.block_tokens,
        .experts = p->contiguous_experts ? TOPO_EXPERTS_CONTIGUOUS : TOPO_EXPERTS_BALANCED,
    };
    TDM_CHECK_GOTO(topo_plan_build(p->g, &pp, &x->plan, err), st, fail);
    x->tp = x->plan->tp;
    x->ep = x->plan->ep;
    TDM_CHECK_GOTO(make_sockets(x, err), st, fail);
    if (pthread_create(&x->io, NULL, io_main, x) != 0) {
        st = tdm_error_set(err, TDM_ERR_INTERNAL, "remote executor: cannot start its thread");
        goto fail;
    }
    TDM_INFO("remote", "waiting for %d shards (tp %d x ep %d)", x->n, x->tp, x->ep);

    const double deadline = tdm_now_s() + x->p.start_timeout_ms / 1000.0;
    pthread_mutex_lock(&x->mu);
    while (x->gst != G_READY && x->gst != G_FATAL && tdm_now_s() < deadline) {
        bool refused = false;
        for (int i = 0; i < x->n; i++) {
            refused |= x->shards[i].st == SH_REFUSED;
        }
        if (refused) {
            break; /* a refusal at start is a configuration error: say it now */
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100 * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&x->cv, &x->mu, &until);
    }
    const bool ready = x->gst == G_READY;
    bool refused = false;
    char why[1200];
    int off = snprintf(why, sizeof(why), "%.500s", x->gerror[0] ? x->gerror : "no answer");
    for (int i = 0; i < x->n && !ready; i++) {
        const shard_t *sh = &x->shards[i];
        refused |= sh->st == SH_REFUSED;
        if (sh->st != SH_READY && off < (int)sizeof(why) - 64) {
            off += snprintf(why + off, sizeof(why) - (size_t)off, "%s %s (rank %d) %s%s%.80s",
                            i == 0 ? "; shards:" : ",", sh->name, i, shard_st_name(sh->st),
                            sh->error[0] ? ": " : "", sh->error);
        }
    }
    pthread_mutex_unlock(&x->mu);
    if (!ready) {
        if (refused || x->gst == G_FATAL) {
            st = tdm_error_set(err, TDM_ERR_TRANSPORT, "shard group refused: %s", why);
        } else {
            st = tdm_error_set(err, TDM_ERR_TRANSPORT, "shard group did not form within %.0f s: %s",
                               x->p.start_timeout_ms / 1000.0, why);
        }
        goto fail;
    }
    *ex = (xp_executor_t){
        .ops = &remote_ops,
        .impl = x,
        .n_vocab = x->n_vocab,
        .n_blocks = x->n_blocks,
        .block_tokens = x->p.block_tokens,
        .n_batch_max = x->p.n_batch_max,
        .n_logits_max = x->p.n_logits_max,
        .n_ctx_max = x->p.n_ctx,
        .n_swa = x->n_swa,
        .n_swa_blocks = x->n_swa_blocks,
        .n_state_slots = x->n_state_slots,
        .n_state_store = x->n_state_store,
    };
    *out = x;
    return TDM_OK;
fail:
    xp_remote_exec_destroy(x);
    return st;
}

void xp_remote_exec_destroy(xp_remote_exec_t *x)
{
    if (x == NULL) {
        return;
    }
    if (x->io) {
        atomic_store(&x->stop, true);
        pthread_join(x->io, NULL);
    }
    for (int i = 0; i < x->n; i++) {
        shard_t *sh = &x->shards[i];
        if (sh->sock != NULL) {
            xp_msg_t m;
            memset(&m, 0, sizeof(m));
            m.type = XP_MSG_SHUTDOWN;
            if (sh->st == SH_READY || sh->st == SH_LOADING) {
                send_msg(sh, &m);
            }
            zmq_close(sh->sock);
        }
        free(sh->ucx);
        free(sh->kv_regions);
    }
    if (x->pipe_io != NULL) {
        zmq_close(x->pipe_io);
    }
    if (x->pipe_engine != NULL) {
        zmq_close(x->pipe_engine);
    }
    if (x->zctx != NULL) {
        zmq_ctx_term(x->zctx);
    }
    zmq_msg_close(&x->step_logits);
    topo_plan_destroy(x->plan);
    free(x->shards);
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->mu);
    free(x);
}

uint64_t xp_remote_exec_generation(const xp_remote_exec_t *x)
{
    return atomic_load(&((xp_remote_exec_t *)x)->generation);
}

int xp_remote_exec_n_shards(const xp_remote_exec_t *x)
{
    return x->n;
}

void xp_remote_exec_health(xp_remote_exec_t *x, xp_group_health_t *out)
{
    const double now = tdm_now_s();
    pthread_mutex_lock(&x->mu);
    out->ready = x->gst == G_READY;
    out->tp = x->tp;
    out->ep = x->ep;
    out->n_shards = x->n;
    out->generation = atomic_load(&x->generation);
    snprintf(out->error, sizeof(out->error), "%s", out->ready ? "" : x->gerror);
    for (int i = 0; i < x->n; i++) {
        const shard_t *sh = &x->shards[i];
        xp_shard_health_t *h = &out->shards[i];
        snprintf(h->name, sizeof(h->name), "%s", sh->name);
        h->state = shard_st_name(sh->st);
        snprintf(h->error, sizeof(h->error), "%s", sh->st == SH_READY ? "" : sh->error);
        h->weight_bytes = sh->weight_bytes;
        h->resident_bytes = sh->resident_bytes;
        h->seen_s_ago = sh->last_seen < 0 ? -1.0 : now - sh->last_seen;
    }
    pthread_mutex_unlock(&x->mu);
}

void xp_remote_exec_stats(xp_remote_exec_t *x, xp_remote_stats_t *out)
{
    pthread_mutex_lock(&x->mu);
    *out = x->stats;
    pthread_mutex_unlock(&x->mu);
}

xp_msg_kv_peer_t *xp_remote_exec_kv_peer(xp_remote_exec_t *x)
{
    pthread_mutex_lock(&x->mu);
    if (x->gst != G_READY || !x->p.kv_export) {
        pthread_mutex_unlock(&x->mu);
        return NULL;
    }
    /* one block: the peer, its ranks, every rank's regions, then addresses and keys */
    size_t n_regions = 0, n_bytes = 0;
    for (int i = 0; i < x->n; i++) {
        n_regions += (size_t)x->shards[i].n_kv_regions;
        n_bytes += x->shards[i].ucx_len;
        for (int32_t j = 0; j < x->shards[i].n_kv_regions; j++) {
            n_bytes += x->shards[i].kv_regions[j].rkey.len;
        }
    }
    xp_msg_kv_peer_t *p = tdm_xmalloc(sizeof(*p) + (size_t)x->n * sizeof(xp_msg_kv_rank_t) +
                                      n_regions * sizeof(xp_msg_kv_region_t) + n_bytes);
    xp_msg_kv_rank_t *rk = (xp_msg_kv_rank_t *)(p + 1);
    xp_msg_kv_region_t *rg = (xp_msg_kv_region_t *)(rk + x->n);
    unsigned char *data = (unsigned char *)(rg + n_regions);
    p->epoch = x->epoch;
    p->n_ranks = x->n;
    p->ranks = rk;
    for (int i = 0; i < x->n; i++) {
        const shard_t *sh = &x->shards[i];
        memcpy(data, sh->ucx, sh->ucx_len);
        rk[i].addr.data = data;
        rk[i].addr.len = sh->ucx_len;
        data += sh->ucx_len;
        rk[i].n_regions = sh->n_kv_regions;
        rk[i].regions = rg;
        for (int32_t j = 0; j < sh->n_kv_regions; j++) {
            rg[j] = sh->kv_regions[j];
            if (rg[j].rkey.len > 0) {
                memcpy(data, sh->kv_regions[j].rkey.data, rg[j].rkey.len);
            }
            rg[j].rkey.data = data;
            data += rg[j].rkey.len;
        }
        rg += sh->n_kv_regions;
    }
    pthread_mutex_unlock(&x->mu);
    return p;
}

void xp_remote_exec_set_kv_target(xp_remote_exec_t *x, xp_remote_exec_t *decode)
{
    x->kv_target = decode;
}
