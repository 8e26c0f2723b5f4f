/*
 * meminfo.h - the host's memory as the kernel reports it in /proc/meminfo.
 *
 * MemAvailable is the right single number for "what a new allocation can get": it counts
 * free memory plus the page cache and slabs the kernel can reclaim. Both the memory plan
 * (topology/) and the GPU backend on a unified-memory machine (DGX Spark: the GPU's
 * memory is the host's) bound their budgets by it.
 */
#ifndef TDM_MEMINFO_H
#define TDM_MEMINFO_H

#include "common/status.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* MemAvailable and MemTotal of a /proc/meminfo-format file (NULL: /proc/meminfo), in
 * bytes; total may be NULL. Fails naming the file when a line is missing or odd. */
tdm_status_t tdm_meminfo_read(const char *path, uint64_t *available, uint64_t *total,
                              tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
