# Unit tests of transport/ (the control-plane message codec).
tandem_unit_test(xp_msg test_xp_msg.c tdm_transport)
# The message-codec fuzz harness replayed over its seed corpus (no libFuzzer needed).
add_executable(test_fuzz_xp_msg_replay fuzz/fuzz_xp_msg.c fuzz/replay_main.c)
target_link_libraries(test_fuzz_xp_msg_replay PRIVATE tdm_transport)
add_test(NAME unit.fuzz_xp_msg_replay
         COMMAND test_fuzz_xp_msg_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/xp_msg)
set_tests_properties(unit.fuzz_xp_msg_replay PROPERTIES LABELS unit)
# NCCL collectives: skips (77) without a CUDA device; 2 and 4 ranks need 2 and 4 GPUs.
if(TANDEM_HAVE_NCCL)
    tandem_unit_test(nccl_comm test_nccl_comm.c tdm_transport)
endif()
# UCX collectives between forked processes (tcp and shared memory, AM and RMA, failures).
tandem_unit_test(ucx_comm test_ucx_comm.c tdm_transport)
set_tests_properties(unit.ucx_comm PROPERTIES TIMEOUT 180)
# A short collective stress (bench/coll_stress.c; the long runs and their figures are in
# docs/testing.md): 5000 checked collectives, 2 ranks over TCP with active messages and 3 over
# shared memory with RMA, beside two spinning processes (more runnable threads than cores).
add_test(NAME stress.coll_tcp_am
         COMMAND tandem-coll-stress --tp 2 --tls tcp --proto am --calls 5000 --spin 2 --limit-s 240)
add_test(NAME stress.coll_sm_rma
         COMMAND tandem-coll-stress --tp 3 --tls sm --proto rma --calls 5000 --spin 2 --limit-s 240)
set_tests_properties(stress.coll_tcp_am stress.coll_sm_rma PROPERTIES LABELS stress TIMEOUT 300
                     RUN_SERIAL TRUE)
