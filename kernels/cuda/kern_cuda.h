/*
 * kern_cuda.h - CUDA entry points beside the backend's ops table (compiled only when
 * TDM_HAVE_CUDA). The GPUs are listed through kern_gpu_count / kern_gpu_info
 * (kern_backend.h), which every build has.
 */
#ifndef KERN_CUDA_H
#define KERN_CUDA_H

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Runs a one-thread kernel on device dev: fails naming the GPU's compute capability and
 * the architectures this binary carries when it has no code the GPU can run. */
tdm_status_t kern_cuda_probe(int dev, tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
