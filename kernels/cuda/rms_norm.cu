/*
 * rms_norm.cu - y = x / sqrt(mean(x^2) + eps) * w, one block per row.
 *
 * Layers: the __global__ kernel, its launcher, and the C entry points.
 * CPU oracle: kern_rms_norm_f32_ref (kernels/cpu/vec_ref.c).
 */
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kern_cuda.h"

#define RMS_NORM_THREADS 256

__global__ void rms_norm_f32_kernel(float *y, const float *x, const float *w, int cols, float eps)
{
    const float *xr = x + (size_t)blockIdx.x * cols;
    float *yr = y + (size_t)blockIdx.x * cols;
    __shared__ float partial[RMS_NORM_THREADS / 32];

    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        ss += xr[c] * xr[c];
    }
    for (int off = 16; off > 0; off >>= 1) {
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
    }
    if ((threadIdx.x & 31) == 0) {
        partial[threadIdx.x >> 5] = ss;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        ss = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) {
            ss += __shfl_xor_sync(0xffffffffu, ss, off);
        }
        if (threadIdx.x == 0) {
            partial[0] = ss;
        }
    }
    __syncthreads();
    const float scale = rsqrtf(partial[0] / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        yr[c] = xr[c] * scale * w[c];
    }
}

static void rms_norm_f32_cuda(float *y, const float *x, const float *w, int rows, int cols,
                              float eps, cudaStream_t stream)
{
    rms_norm_f32_kernel<<<rows, RMS_NORM_THREADS, 0, stream>>>(y, x, w, cols, eps);
}

extern "C" tdm_status_t kern_cuda_rms_norm_f32_host(float *y, const float *x, const float *w,
                                                    int rows, int cols, float eps, tdm_error_t *err)
{
    tdm_status_t st = TDM_OK;
    float *dx = NULL, *dy = NULL, *dw = NULL;
    size_t n = (size_t)rows * cols * sizeof(float);
    if (rows <= 0 || cols <= 0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "rms_norm: bad shape %d x %d", rows, cols);
    }
    TDM_CUDA_CHECK_GOTO(cudaMalloc((void **)&dx, n), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaMalloc((void **)&dy, n), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaMalloc((void **)&dw, (size_t)cols * sizeof(float)), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaMemcpy(dx, x, n, cudaMemcpyHostToDevice), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaMemcpy(dw, w, (size_t)cols * sizeof(float), cudaMemcpyHostToDevice),
                        err, st, out);
    rms_norm_f32_cuda(dy, dx, dw, rows, cols, eps, 0);
    TDM_CUDA_CHECK_GOTO(cudaGetLastError(), err, st, out);
    TDM_CUDA_CHECK_GOTO(cudaMemcpy(y, dy, n, cudaMemcpyDeviceToHost), err, st, out);
out:
    cudaFree(dw);
    cudaFree(dy);
    cudaFree(dx);
    return st;
}
