# Unit tests of api/parse (reasoning and tool-call parsers).
tandem_unit_test(parse_reasoning test_parse_reasoning.c tdm_api_parse)
tandem_unit_test(parse_tool_call test_parse_tool_call.c tdm_api_parse)
# The parser fuzz harness replayed over its seed corpus (no libFuzzer needed). replay_main.c
# also tries each file as GGUF, hence tdm_model; the seeds avoid its ok-/bad- name prefixes.
add_executable(test_fuzz_parse_replay fuzz/fuzz_parse.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_parse_replay PRIVATE tdm_api_parse tdm_model)
add_test(NAME unit.fuzz_parse_replay
         COMMAND test_fuzz_parse_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/parse)
set_tests_properties(unit.fuzz_parse_replay PROPERTIES LABELS unit)
tandem_unit_test(parse_harmony test_parse_harmony.c tdm_api_parse)
tandem_unit_test(parse_output test_parse_output.c tdm_api_parse)
