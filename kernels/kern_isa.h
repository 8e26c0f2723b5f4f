/*
 * kern_isa.h - CPU instruction-set levels the kernels are compiled for, and the
 * run-time choice among them.
 *
 * Every CPU op has a portable scalar reference ("_ref"), which is the oracle. SIMD
 * versions live in files compiled with their own ISA flags (x86/avx2_*.c with
 * -mavx2 -mfma -mf16c, x86/avx512_*.c with -mavx512f..., arm/neon_*.c) and are
 * only called after kern_cpu_isa_best() has confirmed the CPU supports them.
 */
#ifndef KERN_ISA_H
#define KERN_ISA_H

#include "common/cpu_features.h"

typedef enum kern_isa {
    KERN_ISA_SCALAR = 0, /* portable C, the reference        */
    KERN_ISA_AVX2,       /* x86-64: AVX2 + FMA + F16C         */
    KERN_ISA_AVX512,     /* x86-64: AVX-512 F/BW/VL/DQ + VNNI */
    KERN_ISA_NEON,       /* arm64: Advanced SIMD              */
    KERN_ISA_NEON_DOT,   /* arm64: Advanced SIMD + dotprod    */
    KERN_ISA_COUNT
} kern_isa_t;

const char *kern_isa_name(kern_isa_t isa);

/* True when this binary contains code for isa (arch-dependent at build time). */
int kern_isa_compiled(kern_isa_t isa);

/* True when this binary contains code for isa and the CPU described by f can run it. */
int kern_isa_supported(kern_isa_t isa, const tdm_cpu_features_t *f);

/* The fastest level that is compiled in and supported by f. TANDEM_CPU_ISA (e.g.
 * "scalar", "avx2") caps the choice, for testing and benchmarking. */
kern_isa_t kern_cpu_isa_best(const tdm_cpu_features_t *f);

#endif
