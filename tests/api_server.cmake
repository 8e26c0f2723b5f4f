# Unit tests of api/server (request parsing, text streams, metrics).
tandem_unit_test(stop_strings test_stop_strings.c tdm_coordinator)
tandem_unit_test(engine test_engine.c tdm_coordinator)
# --cache-stable-prompts' rewrites (api/server/cache_stable.c).
tandem_unit_test(cache_stable test_cache_stable.c tdm_api_server)
# The request-parser fuzz harness replayed over its seed corpus (no libFuzzer needed).
add_executable(test_fuzz_request_replay fuzz/fuzz_request.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_request_replay PRIVATE tdm_api_server)
add_test(NAME unit.fuzz_request_replay
         COMMAND test_fuzz_request_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/request)
set_tests_properties(unit.fuzz_request_replay PROPERTIES LABELS unit)
# The Responses request-parser harness replayed over its seed corpus.
add_executable(test_fuzz_responses_replay fuzz/fuzz_responses.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_responses_replay PRIVATE tdm_api_server)
add_test(NAME unit.fuzz_responses_replay
         COMMAND test_fuzz_responses_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/responses)
set_tests_properties(unit.fuzz_responses_replay PROPERTIES LABELS unit)
# The HTTP framing checker's fuzz harness replayed over its seed corpus.
add_executable(test_fuzz_http_frame_replay fuzz/fuzz_http_frame.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_http_frame_replay PRIVATE tdm_api_server)
add_test(NAME unit.fuzz_http_frame_replay
         COMMAND test_fuzz_http_frame_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/http_frame)
set_tests_properties(unit.fuzz_http_frame_replay PROPERTIES LABELS unit)
# The Anthropic Messages request-parser harness replayed over its seed corpus.
add_executable(test_fuzz_messages_replay fuzz/fuzz_messages.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_messages_replay PRIVATE tdm_api_server)
add_test(NAME unit.fuzz_messages_replay
         COMMAND test_fuzz_messages_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/messages)
set_tests_properties(unit.fuzz_messages_replay PROPERTIES LABELS unit)
