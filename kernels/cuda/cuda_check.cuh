/* cuda_check.cuh - TDM_CUDA_CHECK: map a cudaError_t to TDM_ERR_DEVICE, clear CUDA's
 * sticky last error, and name the failing statement in the tdm_error_t. */
#ifndef KERN_CUDA_CHECK_CUH
#define KERN_CUDA_CHECK_CUH

#include "common/status.h"

#include <cuda_runtime.h>

#define TDM_CUDA_CHECK_GOTO(call, err, st, label)                                             \
    do {                                                                                      \
        cudaError_t tdm_cuda_e_ = (call);                                                     \
        if (tdm_cuda_e_ != cudaSuccess) {                                                     \
            (void)cudaGetLastError();                                                         \
            (st) = tdm_error_set((err), TDM_ERR_DEVICE, "cuda: %s failed: %s (%s:%d)", #call, \
                                 cudaGetErrorString(tdm_cuda_e_), __FILE__, __LINE__);        \
            goto label;                                                                       \
        }                                                                                     \
    } while (0)

#endif
