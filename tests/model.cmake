# Unit tests of model/ (tensor types, GGUF reader and writer).
tandem_unit_test(tensor_types test_tensor_types.c tdm_model)
tandem_unit_test(gguf test_gguf.c tdm_model)
# The GGUF fuzz harness replayed over its committed seed corpus (no libFuzzer needed).
add_executable(test_fuzz_gguf_replay fuzz/fuzz_gguf.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_gguf_replay PRIVATE tdm_model)
add_test(NAME unit.fuzz_gguf_replay
         COMMAND test_fuzz_gguf_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/gguf)
set_tests_properties(unit.fuzz_gguf_replay PROPERTIES LABELS unit)
