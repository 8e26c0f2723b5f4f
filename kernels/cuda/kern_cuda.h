/*
 * kern_cuda.h - the CUDA backend's C interface. Compiled only when TDM_HAVE_CUDA.
 *
 * Every CUDA op has a CPU twin in kernels/cpu that is its oracle; tests run both on the
 * same inputs and compare (tests/unit/test_kernels_cuda.c), skipping with a clear line
 * when the machine has no GPU.
 */
#ifndef KERN_CUDA_H
#define KERN_CUDA_H

#include "common/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no driver or no device (never fails). */
int kern_cuda_device_count(void);

/* Name and compute capability of device dev. */
tdm_status_t kern_cuda_device_info(int dev, char *name, size_t name_size, int *cc_major,
                                   int *cc_minor, size_t *total_mem, tdm_error_t *err);

/* Host-to-host convenience wrapper around the rms_norm kernel (tests, smoke checks):
 * copies x and w to the device, runs, copies y back. Same contract as
 * kern_rms_norm_f32_ref. */
tdm_status_t kern_cuda_rms_norm_f32_host(float *y, const float *x, const float *w, int rows,
                                         int cols, float eps, tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
