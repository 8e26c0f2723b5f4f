/* neondot_quant.c - arm64 vec_dot kernels with the armv8.2-a dotprod extension (SDOT).
 * Compiled with -march=armv8.2-a+dotprod; only called after run-time detection
 * (KERN_ISA_NEON_DOT). Body in neon_quant_impl.h. */
#include <arm_neon.h>

#define KERN_SFX neondot

static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
    return vdotq_s32(acc, a, b);
}

#include "kernels/cpu/arm/neon_quant_impl.h"
