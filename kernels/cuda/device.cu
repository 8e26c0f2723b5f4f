/* device.cu - CUDA device discovery. */
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kern_cuda.h"

#include <string.h>

extern "C" int kern_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" tdm_status_t kern_cuda_device_info(int dev, char *name, size_t name_size, int *cc_major,
                                              int *cc_minor, size_t *total_mem, tdm_error_t *err)
{
    tdm_status_t st = TDM_OK;
    cudaDeviceProp prop;
    TDM_CUDA_CHECK_GOTO(cudaGetDeviceProperties(&prop, dev), err, st, out);
    if (name != NULL && name_size > 0) {
        strncpy(name, prop.name, name_size - 1);
        name[name_size - 1] = '\0';
    }
    *cc_major = prop.major;
    *cc_minor = prop.minor;
    *total_mem = prop.totalGlobalMem;
out:
    return st;
}
