/*
 * xp_msg.h - the control-plane message codec (msgpack), without sockets.
 *
 * Every message is one msgpack array [magic "TDM1", protocol version, type, request id,
 * body], the body an array whose layout depends on the type (see xp_msg.c). The ZeroMQ
 * ROUTER/DEALER layer sends one encoded message per frame.
 *
 * Encoding appends to a caller-owned msgpack_sbuffer and checks the message with the same
 * rules the decoder applies (TDM_ERR_INVALID_PARAM when they fail), so a peer never gets a
 * message it would reject. Decoding takes untrusted bytes: every count, length, index and
 * range is checked, trailing bytes are rejected, and failures return TDM_ERR_FORMAT with a
 * message naming the field. A decoded message owns its arrays; release it with
 * xp_msg_free(). Logits travel as a raw little-endian f32 blob (the hosts are
 * little-endian; xp_msg.c refuses to build otherwise).
 */
#ifndef XP_MSG_H
#define XP_MSG_H

#include "common/status.h"
#include "transport/xp_step.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Protocol 3: sliding-window block tables (STEP, READY); 4: the cluster secret's proofs
 * (JOIN, JOIN_ACK); 5: recurrent-state slots (STEP, READY); 6: how many stored prefix
 * states a shard keeps (LOAD, serve's --state-cache); 7: disaggregated prefill (LOAD's
 * kv_export, READY's KV regions, STEP's KV peer and sends, RESULT's transfer figures); 8:
 * recurrent states and sliding-window blocks in disaggregated prefill (a KV region's unit,
 * a send's state_dst and swa_dst, a sequence's state_load XP_STATE_GIVEN). */
#define XP_MSG_MAGIC            "TDM1"
#define XP_MSG_PROTOCOL_VERSION 8

/* Bounds the decoder enforces (and the encoder, so both sides agree). */
#define XP_MSG_MAX_TOKENS       (1 << 20)         /* tokens per STEP                  */
#define XP_MSG_MAX_SEQS         (1 << 20)         /* sequences per STEP               */
#define XP_MSG_MAX_BLOCKS       (1 << 20)         /* blocks per sequence in a STEP    */
#define XP_MSG_MAX_VOCAB        (1 << 24)         /* n_vocab of a RESULT              */
#define XP_MSG_MAX_STATE_STORE  (1 << 16)         /* stored prefix states of a LOAD   */
#define XP_MSG_MAX_WORLD        (1 << 16)         /* world / tp / ep sizes            */
#define XP_MSG_VERSION_STR_MAX  64                /* tandem version string, with NUL  */
#define XP_MSG_REASON_MAX       256               /* JOIN_ACK reason, with NUL        */
#define XP_MSG_ERROR_MAX        TDM_ERROR_MSG_MAX /* RESULT error message, with NUL   */
#define XP_MSG_MODEL_HASH_BYTES 32
#define XP_MSG_MAX_ADDR         8192 /* bytes of a UCX worker address                */
#define XP_MSG_NAME_MAX         128  /* shard name (its listen endpoint), with NUL    */
#define XP_MSG_MAX_LAYERS       4096 /* per-layer expert ranges of a LOAD             */
#define XP_MSG_NCCL_ID_BYTES    128  /* an NCCL unique id (NCCL_UNIQUE_ID_BYTES)      */
#define XP_MSG_AUTH_BYTES       32   /* an HMAC-SHA-256 (transport/xp_auth.h)          */
#define XP_MSG_MAX_KV_REGIONS   (2 * XP_MSG_MAX_LAYERS) /* a layer's K and V storage each */

/* LOAD's proto: how the shards' collectives move data (`--collective`). */
#define XP_MSG_PROTO_AM   0 /* UCX active messages                                   */
#define XP_MSG_PROTO_RMA  1 /* UCX RMA put + flag                                    */
#define XP_MSG_PROTO_NCCL 2 /* NCCL on the shards' GPUs (transport/nccl_comm.h)       */

typedef enum xp_msg_type {
    XP_MSG_HELLO = 1, /* coordinator -> shard: please (re)join my group             */
    XP_MSG_JOIN,      /* shard -> coordinator: who I am, what I can do, what I hold */
    XP_MSG_JOIN_ACK,  /* coordinator -> shard: accepted or why not                  */
    XP_MSG_LOAD,      /* coordinator -> shard: my part of the group                 */
    XP_MSG_STEP,      /* coordinator -> shard: one xp_step_t                        */
    XP_MSG_RESULT,    /* shard -> coordinator: status and logits of a step          */
    XP_MSG_HEARTBEAT, /* either way: liveness                                       */
    XP_MSG_SHUTDOWN,  /* coordinator -> shard: leave the group (the process stays)  */
    XP_MSG_READY,     /* shard -> coordinator: LOAD done (or why it failed)         */
    XP_MSG_TYPE_END   /* one past the last type                                     */
} xp_msg_type_t;

/* Capability bits of JOIN. */
#define XP_MSG_CAP_CUDA (1u << 0)
#define XP_MSG_CAP_UCX  (1u << 1)
#define XP_MSG_CAP_NCCL (1u << 2)
#define XP_MSG_CAP_RDMA (1u << 3)
/* The shard runs its forward pass on a GPU (its --device resolved to cuda): a run-time
 * fact, unlike the build's CUDA and NCCL bits. --collective nccl needs it. */
#define XP_MSG_CAP_ON_GPU (1u << 4)

typedef struct xp_msg_model_id {
    uint8_t hash[XP_MSG_MODEL_HASH_BYTES]; /* content hash of the model file(s) */
    uint64_t file_size;
    uint64_t n_tensors;
} xp_msg_model_id_t;

/* A byte string inside a message (a UCX worker address). */
typedef struct xp_msg_blob {
    const void *data;
    uint32_t len;
} xp_msg_blob_t;

/* Disaggregated prefill (docs/distributed.md). A decode shard's KV storage registered for
 * RMA: two regions per layer, in layer order: an attention layer's K and V storage (units
 * of one KV block), a recurrent layer's conv and delta-rule state (units of one state
 * slot), each with its packed UCX rkey; empty regions (len 0) for a layer with neither. */
typedef struct xp_msg_kv_region {
    uint64_t base, len;
    uint64_t unit;      /* bytes of one block or state slot; 0 when len is 0 */
    xp_msg_blob_t rkey; /* 1..XP_MSG_MAX_ADDR bytes; empty when len is 0     */
} xp_msg_kv_region_t;

/* One decode shard as a prefill shard of the same rank needs it. */
typedef struct xp_msg_kv_rank {
    xp_msg_blob_t addr; /* its UCX worker address */
    int32_t n_regions;
    const xp_msg_kv_region_t *regions;
} xp_msg_kv_rank_t;

/* The decode group a prefill group's STEPs put K/V into: its epoch (a new formation means
 * new keys) and every rank's address and regions, in world-rank order. */
typedef struct xp_msg_kv_peer {
    uint64_t epoch;
    int32_t n_ranks; /* 0: none in this message */
    const xp_msg_kv_rank_t *ranks;
} xp_msg_kv_peer_t;

typedef struct xp_msg_hello {
    uint64_t session; /* the coordinator's random id: a JOIN echoes it */
} xp_msg_hello_t;

typedef struct xp_msg_join {
    char tandem_version[XP_MSG_VERSION_STR_MAX]; /* NUL-terminated, no embedded NUL */
    uint32_t capabilities;                       /* XP_MSG_CAP_* bits               */
    xp_msg_model_id_t model;
    uint64_t session;     /* the HELLO's session                            */
    xp_msg_blob_t ucx;    /* worker address, 1..XP_MSG_MAX_ADDR bytes        */
    uint64_t node_memory; /* bytes this node can give the shard              */
    int32_t threads;      /* kernel threads                                  */
    char name[XP_MSG_NAME_MAX];
    uint64_t nonce; /* the shard's random challenge for JOIN_ACK's proof       */
    bool has_auth;  /* the shard has a cluster secret: auth proves it          */
    uint8_t auth[XP_MSG_AUTH_BYTES];
} xp_msg_join_t;

typedef struct xp_msg_join_ack {
    bool accepted;
    char reason[XP_MSG_REASON_MAX];
    bool has_auth; /* the coordinator has a cluster secret: auth proves it */
    uint8_t auth[XP_MSG_AUTH_BYTES];
} xp_msg_join_ack_t;

typedef struct xp_msg_load {
    uint64_t epoch;           /* the group's generation: READY, steps and the data plane carry it */
    int32_t tp_rank, tp_size; /* 0 <= rank < size <= XP_MSG_MAX_WORLD */
    int32_t ep_rank, ep_size;
    int32_t n_ctx; /* >= 1 */
    uint64_t kv_bytes;
    int32_t n_batch_max, n_out_max, block_tokens; /* >= 1; n_out_max <= n_batch_max */
    int32_t proto;                                /* collectives: XP_MSG_PROTO_*           */
    int32_t timeout_ms;                           /* >= 1: a collective waiting longer fails */
    int32_t n_peers;                              /* == tp_size * ep_size               */
    const xp_msg_blob_t *peers;                   /* [n_peers] UCX address of each rank */
    int32_t n_layers;         /* 0 (contiguous expert ranges) or the model's n_layer */
    const int32_t *expert_lo; /* [n_layers] first expert this rank holds per layer    */
    const int32_t *expert_n;  /* [n_layers] how many                                  */
    /* Recurrent models: the stored prefix states the shard keeps beside its n_out_max
     * running slots (0: none, so no prefix hits); other models ignore it. 0..
     * XP_MSG_MAX_STATE_STORE. */
    int32_t n_state_store;
    /* The NCCL unique id of this formation (the coordinator made it; its bootstrap root
     * runs there). On the wire only when xp_msg_load_has_nccl_id(): proto NCCL over more
     * than one rank (a world of one makes no NCCL calls); ignored by the encoder and zero
     * after decoding otherwise. */
    uint8_t nccl_id[XP_MSG_NCCL_ID_BYTES];
    /* A decode group's shard: register the KV storage for RMA and list it in READY. */
    bool kv_export;
} xp_msg_load_t;

/* Whether a LOAD carries an NCCL id: proto XP_MSG_PROTO_NCCL and tp_size * ep_size > 1. */
bool xp_msg_load_has_nccl_id(const xp_msg_load_t *l);

typedef struct xp_msg_ready {
    uint64_t epoch;
    int32_t status; /* a tdm_status_t */
    char error[XP_MSG_ERROR_MAX];
    int32_t n_blocks, n_vocab;
    uint64_t weight_bytes;   /* bytes of this shard's slice of the weights */
    uint64_t resident_bytes; /* the process's resident set after loading   */
    int32_t n_swa_blocks;    /* the KV cache's sliding pool (0: none)       */
    /* recurrent-state slots (Gated DeltaNet models; 0: none): running sequences', then
     * the stored states of cached prefixes (xp_step.h) */
    int32_t n_state_slots, n_state_store;
    /* with LOAD's kv_export: the registered KV storage (0 regions otherwise) */
    int32_t n_kv_regions;
    const xp_msg_kv_region_t *kv_regions;
} xp_msg_ready_t;

typedef struct xp_msg_result {
    int32_t status; /* a tdm_status_t */
    char error[XP_MSG_ERROR_MAX];
    int32_t n_logits;    /* 0 <= n_logits <= XP_MSG_MAX_TOKENS */
    int32_t n_vocab;     /* 0 <= n_vocab <= XP_MSG_MAX_VOCAB   */
    const float *logits; /* [n_logits * n_vocab]; NULL allowed when that is 0 */
    uint64_t coll_calls, coll_bytes, coll_ns; /* collectives of this step on this shard */
    uint64_t step_ns;                         /* the step's wall time on this shard      */
    uint64_t kv_bytes, kv_ns; /* K/V this shard put into a decode group's pool, and the time */
} xp_msg_result_t;

typedef struct xp_msg_heartbeat {
    uint64_t time_ns; /* sender's monotonic clock */
    uint64_t epoch;   /* the group generation the shard serves (0: none) */
    int32_t state;    /* sender-defined (a shard's xp_shard_state_t) */
} xp_msg_heartbeat_t;

/*
 * One message. hdr fields and the body member matching type are meaningful; the others
 * are ignored by the encoder and zero after decoding. For encoding, the caller fills the
 * pointers (step arrays, logits) with its own memory; after decoding they point into
 * storage owned by the message (the owned_* fields, private to xp_msg.c except that a
 * caller may take owned_f32).
 */
typedef struct xp_msg {
    xp_msg_type_t type;
    uint16_t version; /* set by the encoder to XP_MSG_PROTOCOL_VERSION; checked on decode */
    uint64_t request_id;

    xp_msg_hello_t hello;
    xp_msg_join_t join;
    xp_msg_join_ack_t join_ack;
    xp_msg_load_t load;
    xp_msg_ready_t ready;
    xp_step_t step; /* STEP: exactly the scheduler's xp_step_t */
    /* STEP: the decode group its kv_sends go to, when it changed (n_ranks 0: as before) */
    xp_msg_kv_peer_t kv_peer;
    xp_msg_result_t result;
    xp_msg_heartbeat_t heartbeat;

    void *owned_i32;  /* private: token/pos/seq/block storage of a decoded STEP */
    void *owned_u8;   /* private: want_logits of a decoded STEP                 */
    void *owned_seqs; /* private: xp_step_seq_t array of a decoded STEP         */
    void *owned_f32;  /* logits of a decoded RESULT (malloc'd); a caller may take it,
                         setting the field NULL, and free() it later             */
    void *owned_load; /* private: peers and expert ranges of a decoded LOAD, JOIN's address,
                         READY's KV regions */
    void *owned_kv;   /* private: a decoded STEP's KV peer and sends */
} xp_msg_t;

/* "0.1.0 (abc1234)": the version and commit of this build, which JOIN carries; a shard and
 * a coordinator of different builds are refused (the wire format and the partition rules
 * are only promised to agree within one build). */
const char *xp_msg_build_version(void);

/* Name of a message type ("STEP"), "?" when out of range. Never NULL. */
const char *xp_msg_type_str(int type);

/*
 * Checks msg against the protocol rules (the same ones decoding applies); on failure
 * returns `fail` (TDM_ERR_INVALID_PARAM or TDM_ERR_FORMAT) with a message naming the field.
 */
tdm_status_t xp_msg_validate(const xp_msg_t *msg, tdm_status_t fail, tdm_error_t *err);

/*
 * Appends the encoding of msg to out (msg->version is ignored: the current protocol
 * version is written). Returns TDM_ERR_INVALID_PARAM when msg breaks a rule, or
 * TDM_ERR_NO_MEMORY; on failure out is left as it was.
 */
tdm_status_t xp_msg_encode(msgpack_sbuffer *out, const xp_msg_t *msg, tdm_error_t *err);

/*
 * Decodes exactly len bytes into *out (set only on success; release with xp_msg_free).
 * Returns TDM_ERR_FORMAT for anything malformed, TDM_ERR_NO_MEMORY when allocation fails.
 */
tdm_status_t xp_msg_decode(const void *data, size_t len, xp_msg_t *out, tdm_error_t *err);

/* Frees what a decoded message owns and zeroes it. Accepts NULL. */
void xp_msg_free(xp_msg_t *msg);

#endif
