/*
 * xp_auth.c - HMAC-SHA-256 proofs of the cluster secret (libsodium; see xp_auth.h).
 */
#include "transport/xp_auth.h"

#include <sodium.h>
#include <string.h>

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

void xp_auth_mac(const char *secret, const char *label, uint64_t session, uint64_t nonce,
                 uint8_t out[XP_MSG_AUTH_BYTES])
{
    uint8_t ints[16];
    put_le64(ints, session);
    put_le64(ints + 8, nonce);
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, (const unsigned char *)secret, strlen(secret));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)label, strlen(label));
    crypto_auth_hmacsha256_update(&st, ints, sizeof(ints));
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}

bool xp_auth_check(const char *secret, const char *label, uint64_t session, uint64_t nonce,
                   const uint8_t *mac)
{
    if (mac == NULL) {
        return false;
    }
    uint8_t want[XP_MSG_AUTH_BYTES];
    xp_auth_mac(secret, label, session, nonce, want);
    return sodium_memcmp(want, mac, XP_MSG_AUTH_BYTES) == 0;
}

uint64_t xp_auth_nonce(void)
{
    uint64_t v = 0;
    /* sodium_init is idempotent and thread-safe; randombytes works without it on Linux,
     * but the library asks for it to be called first */
    if (sodium_init() < 0) {
        return 0;
    }
    randombytes_buf(&v, sizeof(v));
    return v;
}
