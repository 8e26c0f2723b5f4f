/*
 * fuzz_responses.c - libFuzzer harness for the Responses request parser
 * (api/server/resp_parse.c, and the chat parser it hands the conversation to). The input is
 * the HTTP body, any bytes. Checked for every input: the parser returns, and what it
 * accepts satisfies what resp_gen.c relies on: one choice, a non-empty conversation whose
 * messages all have string contents and known roles, tool calls with object arguments, a
 * named tool_choice naming one of the tools, and an echo object with the fields the
 * response repeats. Built with -DTANDEM_FUZZ=ON (clang); replayed over
 * tests/fuzz/corpus/responses by replay_main.c in the unit tests.
 */
#include "api/server/resp_parse.h"

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

static bool known_role(const json_t *role)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool"};
    for (size_t i = 0; json_is_string(role) && i < sizeof(roles) / sizeof(roles[0]); i++) {
        if (strcmp(json_string_value(role), roles[i]) == 0) {
            return true;
        }
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    srv_resp_req_t req;
    char param[96];
    tdm_error_t err = {0};
    tdm_status_t st =
        srv_parse_resp_request((const char *)data, size, &req, param, sizeof(param), &err);
    if (st != TDM_OK) {
        FUZZ_REQUIRE(st == TDM_ERR_INVALID_PARAM || st == TDM_ERR_FORMAT ||
                     st == TDM_ERR_NO_MEMORY);
        FUZZ_REQUIRE(strlen(tdm_error_msg(&err)) > 0);
    } else {
        const srv_gen_req_t *g = &req.gen;
        FUZZ_REQUIRE(g->api == SRV_API_CHAT && g->n == 1 && g->n_stop == 0 && !g->logprobs);
        FUZZ_REQUIRE(g->max_tokens >= 0);
        FUZZ_REQUIRE(json_is_array(g->messages) && json_array_size(g->messages) > 0);
        size_t i;
        json_t *m;
        json_array_foreach(g->messages, i, m)
        {
            FUZZ_REQUIRE(known_role(json_object_get(m, "role")));
            FUZZ_REQUIRE(json_is_string(json_object_get(m, "content")));
            size_t k;
            json_t *tc;
            json_array_foreach(json_object_get(m, "tool_calls"), k, tc)
            {
                json_t *fn = json_object_get(tc, "function");
                FUZZ_REQUIRE(json_is_string(json_object_get(fn, "name")));
                FUZZ_REQUIRE(json_object_get(fn, "arguments") != NULL);
            }
        }
        if (g->tool_choice == SRV_TOOL_CHOICE_NAMED) {
            FUZZ_REQUIRE(g->tools != NULL && g->tool_name != NULL);
        }
        FUZZ_REQUIRE(json_is_object(req.echo));
        FUZZ_REQUIRE(json_is_object(json_object_get(req.echo, "metadata")));
        FUZZ_REQUIRE(json_is_array(json_object_get(req.echo, "tools")));
        FUZZ_REQUIRE(json_is_false(json_object_get(req.echo, "store")));
    }
    srv_resp_req_free(&req);
    return 0;
}
