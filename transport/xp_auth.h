/*
 * xp_auth.h - the optional cluster secret: proofs that a shard and a coordinator share it.
 *
 * The control plane (ZeroMQ, plain TCP) has no authentication of its own: anyone who can
 * reach a shard's port could drive it, and anyone answering at a shard's address could
 * join a group. With a secret (`--cluster-secret` / TANDEM_CLUSTER_SECRET on `tandem
 * serve` and `tandem shard`) both sides prove they know it without sending it:
 *
 *   HELLO(session)                 coordinator -> shard    session: the coordinator's random id
 *   JOIN(..., nonce, mac_join)     shard -> coordinator    nonce: the shard's random challenge
 *   JOIN_ACK(..., mac_ack)         coordinator -> shard
 *
 * mac_join = HMAC-SHA-256(secret, "tandem-join" || session || nonce) and mac_ack the same
 * with "tandem-ack". The coordinator refuses a JOIN whose proof is wrong or missing; the
 * shard obeys LOAD, STEP and SHUTDOWN only from the peer whose JOIN_ACK proved the secret
 * for its latest nonce. Checks compare in constant time. This is authentication only: the
 * messages are not encrypted (keep the control plane on a private network; see
 * docs/security.md).
 */
#ifndef XP_AUTH_H
#define XP_AUTH_H

#include "transport/xp_msg.h"

#include <stdbool.h>
#include <stdint.h>

#define XP_AUTH_JOIN "tandem-join"
#define XP_AUTH_ACK  "tandem-ack"

/* out = HMAC-SHA-256(secret, label || session || nonce), integers little-endian. */
void xp_auth_mac(const char *secret, const char *label, uint64_t session, uint64_t nonce,
                 uint8_t out[XP_MSG_AUTH_BYTES]);

/* Whether mac is that proof (constant time); false when mac is NULL. */
bool xp_auth_check(const char *secret, const char *label, uint64_t session, uint64_t nonce,
                   const uint8_t *mac);

/* A random 64-bit challenge from the system's CSPRNG. */
uint64_t xp_auth_nonce(void);

#endif
