# Unit tests of kernels/ (CPU ISA tables against the scalar reference; every backend op
# against the CPU oracle; the CUDA backend's host-side pieces).
tandem_unit_test(kernels_vec test_kernels_vec.c tdm_kernels)
tandem_unit_test(kernels_types test_kernels_types.c tdm_kernels)
tandem_unit_test(cuda_qblock test_cuda_qblock.c tdm_kernels)
tandem_unit_test(backend_api test_backend_api.c tdm_kernels)
tandem_unit_test(step_graph test_step_graph.c tdm_kernels)
tandem_unit_test(weights_plan test_weights_plan.c tdm_kernels)
tandem_unit_test(gdn_ops test_gdn_ops.c tdm_kernels)

# The op test (ggml's test-backend-ops manner): the SIMD CPU backend against the scalar one
# everywhere (this also keeps the harness honest in CI), and the CUDA backend against it on a
# GPU (label cuda: skipped with the reason when there is none).
tandem_unit_test(backend_ops test_backend_ops.c tdm_kernels)
set_property(TEST unit.backend_ops APPEND PROPERTY ENVIRONMENT "TANDEM_OPTEST_DEVICE=cpu")
add_test(NAME cuda.backend_ops COMMAND test_backend_ops)
set_tests_properties(cuda.backend_ops PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
                     ENVIRONMENT "TANDEM_OPTEST_DEVICE=cuda")
# one K segment per product: the GPU's products equal the CPU reference bit for bit
add_test(NAME cuda.backend_ops_exact COMMAND test_backend_ops)
set_tests_properties(cuda.backend_ops_exact PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
                     ENVIRONMENT "TANDEM_OPTEST_DEVICE=cuda;TANDEM_CUDA_SPLITK=1;TANDEM_OPTEST_EXACT=1")
