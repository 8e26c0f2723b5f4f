/*
 * cpu_features.h - what the CPU we are running on can do, detected at run time.
 *
 * Shipped builds never use -march=native; kernels/cpu compiles each SIMD kernel file
 * with its own ISA flags and picks the best table this CPU supports, using these bits.
 */
#ifndef TDM_CPU_FEATURES_H
#define TDM_CPU_FEATURES_H

#include <stdbool.h>

typedef struct tdm_cpu_features {
    /* x86-64 */
    bool avx2;   /* AVX2 + FMA + F16C together (Haswell and later)          */
    bool avx512; /* AVX-512 F + BW + VL + DQ                                  */
    bool avx512_vnni;
    bool avx_vnni;
    bool amx_int8; /* AMX-TILE + AMX-INT8 (the OS must still grant the tile state) */
    /* arm64 */
    bool neon;    /* Advanced SIMD (always present on arm64)                   */
    bool dotprod; /* SDOT/UDOT (armv8.2-a dotprod)                             */
    bool i8mm;    /* SMMLA (armv8.6-a i8mm)                                    */
    bool fp16;    /* half-precision arithmetic                                 */
    bool sve;
    int n_cpus; /* online logical CPUs                                       */
} tdm_cpu_features_t;

/* Fills *out for the running CPU. Cheap; callers may cache the result. */
void tdm_cpu_features_detect(tdm_cpu_features_t *out);

/* A space-separated list of the detected features, e.g. "avx2 avx512 avx512_vnni". */
void tdm_cpu_features_str(const tdm_cpu_features_t *f, char *buf, unsigned long size);

#endif
