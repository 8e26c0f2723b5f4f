/*
 * fuzz_messages.c - libFuzzer harness for the Anthropic Messages request parser
 * (api/server/anth_parse.c and the chat parser it feeds). The first input byte picks the
 * route (odd: /v1/messages/count_tokens, which needs no max_tokens); the rest is the HTTP
 * body, any bytes. Checked for every input: the parser returns, failures carry a message,
 * and what it accepts satisfies what the handlers rely on (a chat request with messages
 * whose roles are chat roles and whose contents are strings, tool calls with object
 * arguments, max_tokens set unless counting, at most 16 non-empty stop strings, a named
 * tool_choice naming one of the tools). Built with -DTANDEM_FUZZ=ON (clang); replayed over
 * tests/fuzz/corpus/messages by replay_main.c in the unit tests.
 */
#include "api/server/anth_parse.h"

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

static bool is_role(const json_t *role)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    for (size_t i = 0; json_is_string(role) && i < sizeof(roles) / sizeof(roles[0]); i++) {
        if (strcmp(json_string_value(role), roles[i]) == 0) {
            return true;
        }
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    bool count = data[0] & 1;
    srv_anth_req_t req;
    tdm_error_t err = {0};
    tdm_status_t st = srv_parse_anth_request((const char *)data + 1, size - 1, count, &req, &err);
    if (st != TDM_OK) {
        FUZZ_REQUIRE(st == TDM_ERR_INVALID_PARAM || st == TDM_ERR_FORMAT ||
                     st == TDM_ERR_NO_MEMORY);
        FUZZ_REQUIRE(strlen(tdm_error_msg(&err)) > 0);
    } else {
        const srv_gen_req_t *g = &req.gen;
        FUZZ_REQUIRE(g->api == SRV_API_CHAT && g->n == 1 && g->model != NULL);
        FUZZ_REQUIRE(count || g->max_tokens >= 1);
        FUZZ_REQUIRE(g->n_stop >= 0 && g->n_stop <= CRD_MAX_STOP_STRINGS);
        for (int i = 0; i < g->n_stop; i++) {
            FUZZ_REQUIRE(g->stop[i] != NULL && g->stop[i][0] != '\0');
        }
        FUZZ_REQUIRE(json_is_array(g->messages) && json_array_size(g->messages) > 0);
        size_t i;
        json_t *m;
        json_array_foreach(g->messages, i, m)
        {
            FUZZ_REQUIRE(is_role(json_object_get(m, "role")));
            FUZZ_REQUIRE(json_is_string(json_object_get(m, "content")));
            size_t k;
            json_t *tc;
            json_array_foreach(json_object_get(m, "tool_calls"), k, tc)
            {
                json_t *fn = json_object_get(tc, "function");
                FUZZ_REQUIRE(json_is_string(json_object_get(fn, "name")));
                FUZZ_REQUIRE(json_is_object(json_object_get(fn, "arguments")));
            }
        }
        FUZZ_REQUIRE(g->tools == NULL ||
                     (json_is_array(g->tools) && json_array_size(g->tools) > 0));
        if (g->tool_choice == SRV_TOOL_CHOICE_NAMED) {
            FUZZ_REQUIRE(g->tools != NULL && g->tool_name != NULL);
        }
        /* a thinking switch reaches the template as enable_thinking */
        if (req.thinking) {
            FUZZ_REQUIRE(json_is_true(json_object_get(g->template_kwargs, "enable_thinking")));
        }
    }
    srv_anth_req_free(&req);
    return 0;
}
