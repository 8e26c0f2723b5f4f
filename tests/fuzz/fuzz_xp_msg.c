/*
 * fuzz_xp_msg.c - libFuzzer harness for the control-plane message codec. Any bytes go to
 * xp_msg_decode; when it accepts them, the message is encoded again, decoded again and
 * encoded a third time: both decodes must succeed and the two encodings must be identical
 * (the decoder accepts only what the encoder can write back). Built with -DTANDEM_FUZZ=ON
 * (clang); replayed over tests/fuzz/corpus/xp_msg by replay_main.c in the unit tests.
 */
#include "transport/xp_msg.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(x)       \
    do {                      \
        if (!(x)) {           \
            __builtin_trap(); \
        }                     \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    xp_msg_t m, m2;
    tdm_error_t err;
    tdm_error_clear(&err);
    if (xp_msg_decode(data, size, &m, &err) != TDM_OK) {
        FUZZ_REQUIRE(err.status == TDM_ERR_FORMAT || err.status == TDM_ERR_NO_MEMORY);
        return 0;
    }
    msgpack_sbuffer a, b;
    msgpack_sbuffer_init(&a);
    msgpack_sbuffer_init(&b);
    FUZZ_REQUIRE(xp_msg_encode(&a, &m, &err) == TDM_OK);
    FUZZ_REQUIRE(xp_msg_decode(a.data, a.size, &m2, &err) == TDM_OK);
    FUZZ_REQUIRE(m2.type == m.type && m2.request_id == m.request_id);
    FUZZ_REQUIRE(xp_msg_encode(&b, &m2, &err) == TDM_OK);
    FUZZ_REQUIRE(a.size == b.size && memcmp(a.data, b.data, a.size) == 0);
    msgpack_sbuffer_destroy(&a);
    msgpack_sbuffer_destroy(&b);
    xp_msg_free(&m);
    xp_msg_free(&m2);
    return 0;
}
