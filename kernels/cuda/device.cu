/* device.cu - the GPUs present (kern_gpu_count, kern_gpu_info) and a probe that this
 * binary has code for one of them. */
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kern_cuda.h"
#include "kernels/kern_backend.h"
#include "tdm_build_config.h"

#include <stdio.h>
#include <string.h>

extern "C" int kern_gpu_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" tdm_status_t kern_gpu_info(int index, kern_gpu_info_t *out, tdm_error_t *err)
{
    tdm_status_t st = TDM_OK;
    cudaDeviceProp prop;
    int prev = 0;
    memset(out, 0, sizeof(*out));
    TDM_CUDA_CHECK_GOTO(cudaGetDeviceProperties(&prop, index), err, st, done);
    out->index = index;
    snprintf(out->name, sizeof(out->name), "%.127s", prop.name);
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->total_bytes = prop.totalGlobalMem;
    out->integrated = prop.integrated != 0;
    out->n_sm = prop.multiProcessorCount;
    /* free memory needs a context on that device */
    (void)cudaGetDevice(&prev);
    if (cudaSetDevice(index) == cudaSuccess) {
        size_t f = 0, t = 0;
        if (cudaMemGetInfo(&f, &t) == cudaSuccess) {
            out->free_bytes = f;
        }
        (void)cudaSetDevice(prev);
    }
    (void)cudaGetLastError();
done:
    return st;
}

__global__ void probe_kernel(int *out)
{
    *out = 1 + (int)threadIdx.x;
}

extern "C" tdm_status_t kern_cuda_probe(int dev, tdm_error_t *err)
{
    tdm_status_t st = TDM_OK;
    int *d = NULL, h = 0;
    cudaDeviceProp prop;
    TDM_CUDA_CHECK_GOTO(cudaSetDevice(dev), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaGetDeviceProperties(&prop, dev), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaMalloc((void **)&d, sizeof(int)), err, st, out);
    probe_kernel<<<1, 1>>>(d);
    if (cudaGetLastError() != cudaSuccess ||
        cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) != cudaSuccess || h != 1) {
        (void)cudaGetLastError();
        st = tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                           "cuda:%d %s (compute capability %d.%d) cannot run this build's kernels "
                           "(built for %s): rebuild with -DTANDEM_CUDA_ARCHS including %d%d",
                           dev, prop.name, prop.major, prop.minor, TDM_CUDA_ARCHS, prop.major,
                           prop.minor);
    }
out:
    cudaFree(d);
    return st;
}
