/*
 * fuzz_request.c - libFuzzer harness for the OpenAI request parser (api/server/oai_parse.c).
 * The first input byte picks the API (chat or completions); the rest is the HTTP body, any
 * bytes. Checked for every input: the parser returns, and what it accepts satisfies the
 * invariants the handlers rely on (choices 1..16, at most 16 stop strings, chat requests
 * have messages whose contents are strings, completions a prompt, a named tool_choice
 * names one of the tools). Built with -DTANDEM_FUZZ=ON (clang); replayed over
 * tests/fuzz/corpus/request by replay_main.c in the unit tests.
 */
#include "api/server/oai_parse.h"

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
    if (size == 0) {
        return 0;
    }
    srv_api_t api = (data[0] & 1) ? SRV_API_COMPLETIONS : SRV_API_CHAT;
    srv_gen_req_t req;
    char param[96];
    tdm_error_t err = {0};
    tdm_status_t st = srv_parse_gen_request(api, (const char *)data + 1, size - 1, &req, param,
                                            sizeof(param), &err);
    if (st != TDM_OK) {
        FUZZ_REQUIRE(st == TDM_ERR_INVALID_PARAM || st == TDM_ERR_FORMAT ||
                     st == TDM_ERR_NO_MEMORY);
        FUZZ_REQUIRE(strlen(tdm_error_msg(&err)) > 0);
    } else {
        FUZZ_REQUIRE(req.n >= 1 && req.n <= SRV_MAX_N);
        FUZZ_REQUIRE(req.n_stop >= 0 && req.n_stop <= CRD_MAX_STOP_STRINGS);
        for (int i = 0; i < req.n_stop; i++) {
            FUZZ_REQUIRE(req.stop[i] != NULL && req.stop[i][0] != '\0');
        }
        FUZZ_REQUIRE(req.top_logprobs >= 0 && req.top_logprobs <= 20);
        FUZZ_REQUIRE(req.max_tokens >= 0);
        if (api == SRV_API_CHAT) {
            FUZZ_REQUIRE(json_is_array(req.messages) && json_array_size(req.messages) > 0);
            size_t i;
            json_t *m;
            json_array_foreach(req.messages, i, m)
            {
                FUZZ_REQUIRE(json_is_string(json_object_get(m, "content")));
            }
            if (req.tool_choice == SRV_TOOL_CHOICE_NAMED) {
                FUZZ_REQUIRE(req.tools != NULL && req.tool_name != NULL);
            }
        } else {
            FUZZ_REQUIRE((req.prompt_text != NULL) != (req.prompt_ids != NULL));
            FUZZ_REQUIRE(req.prompt_ids == NULL || req.n_prompt_ids > 0);
        }
    }
    srv_gen_req_free(&req);
    return 0;
}
