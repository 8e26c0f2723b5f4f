/* isa.c - which SIMD levels this binary carries and which one the CPU can run. */
#include "kernels/kern_isa.h"

#include <stdlib.h>
#include <string.h>

static const char *const isa_names[KERN_ISA_COUNT] = {
    [KERN_ISA_SCALAR] = "scalar",         [KERN_ISA_AVX2] = "avx2",
    [KERN_ISA_AVX512] = "avx512",         [KERN_ISA_NEON] = "neon",
    [KERN_ISA_NEON_DOT] = "neon+dotprod",
};

const char *kern_isa_name(kern_isa_t isa)
{
    return (unsigned)isa < KERN_ISA_COUNT ? isa_names[isa] : "unknown";
}

int kern_isa_compiled(kern_isa_t isa)
{
    switch (isa) {
    case KERN_ISA_SCALAR:
        return 1;
#if defined(__x86_64__)
    case KERN_ISA_AVX2:
    case KERN_ISA_AVX512:
        return 1;
#endif
#if defined(__aarch64__)
    case KERN_ISA_NEON:
    case KERN_ISA_NEON_DOT:
        return 1;
#endif
    default:
        return 0;
    }
}

int kern_isa_supported(kern_isa_t isa, const tdm_cpu_features_t *f)
{
    if (!kern_isa_compiled(isa)) {
        return 0;
    }
    switch (isa) {
    case KERN_ISA_SCALAR:
        return 1;
    case KERN_ISA_AVX2:
        return f->avx2;
    case KERN_ISA_AVX512:
        return f->avx2 && f->avx512 && f->avx512_vnni; /* the quant kernels use VNNI */
    case KERN_ISA_NEON:
        return f->neon;
    case KERN_ISA_NEON_DOT:
        return f->neon && f->dotprod;
    default:
        return 0;
    }
}

kern_isa_t kern_cpu_isa_best(const tdm_cpu_features_t *f)
{
    kern_isa_t cap = KERN_ISA_COUNT;
    const char *env = getenv("TANDEM_CPU_ISA");
    if (env != NULL && env[0] != '\0') {
        for (int i = 0; i < KERN_ISA_COUNT; i++) {
            if (strcmp(env, isa_names[i]) == 0) {
                cap = (kern_isa_t)i;
            }
        }
    }
    static const kern_isa_t order[] = {KERN_ISA_AVX512, KERN_ISA_AVX2, KERN_ISA_NEON_DOT,
                                       KERN_ISA_NEON};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        if (cap != KERN_ISA_COUNT && order[i] != cap) {
            continue;
        }
        if (kern_isa_supported(order[i], f)) {
            return order[i];
        }
    }
    return KERN_ISA_SCALAR;
}
