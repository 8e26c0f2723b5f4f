# Unit tests of coordinator/ (tokenizer, chat templates, sampling).
tandem_unit_test(sampler test_sampler.c tdm_coordinator)
tandem_unit_test(kv_manager test_kv_manager.c tdm_coordinator)
tandem_unit_test(tokenizer test_tokenizer.c tdm_tokenizer)
tandem_unit_test(scheduler test_scheduler.c tdm_coordinator)
tandem_unit_test(router test_router.c tdm_coordinator)
tandem_unit_test(step_time test_step_time.c tdm_coordinator)
tandem_unit_test(spec test_spec.c tdm_coordinator)
# The tokenizer fuzz harness replayed over its seed corpus (no libFuzzer needed).
add_executable(test_fuzz_tokenizer_replay fuzz/fuzz_tokenizer.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_tokenizer_replay PRIVATE tdm_tokenizer)
add_test(NAME unit.fuzz_tokenizer_replay
         COMMAND test_fuzz_tokenizer_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/tokenizer)
set_tests_properties(unit.fuzz_tokenizer_replay PROPERTIES LABELS unit)
# Chat templates: the Jinja engine, and its fuzz harness replayed over the seed corpus.
tandem_unit_test(template test_template.c tdm_coordinator tdm::jansson)
add_executable(test_fuzz_template_replay fuzz/fuzz_template.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_template_replay PRIVATE tdm_coordinator tdm::jansson)
add_test(NAME unit.fuzz_template_replay
         COMMAND test_fuzz_template_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/template)
set_tests_properties(unit.fuzz_template_replay PROPERTIES LABELS unit)
