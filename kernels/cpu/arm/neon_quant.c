/* neon_quant.c - arm64 vec_dot kernels with Advanced SIMD only (baseline on arm64): the
 * 8-bit dot is vmull_s8 + pairwise accumulate. Body in neon_quant_impl.h. */
#include <arm_neon.h>

#define KERN_SFX neon

static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}

#include "kernels/cpu/arm/neon_quant_impl.h"
