# Unit tests of kernels/ (CPU ISA tables against the scalar reference; CUDA against CPU).
tandem_unit_test(kernels_vec test_kernels_vec.c tdm_kernels)
tandem_unit_test(kernels_types test_kernels_types.c tdm_kernels)
if(TANDEM_HAVE_CUDA)
    tandem_unit_test(kernels_cuda test_kernels_cuda.c tdm_kernels)
endif()
