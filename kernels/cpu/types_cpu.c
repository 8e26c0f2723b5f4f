/*
 * types_cpu.c - the per-type table: activation format, dequantizer, reference quantizer
 * and vec_dot per ISA for every type with CPU kernels, indexed by the GGUF type id.
 *
 * Activation formats follow llama.cpp's CPU backend (Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL/
 * MXFP4, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants and IQ4_XS) except the float weight
 * types, which dot against f32 activations as they are (no f16/bf16 rounding of x).
 */
#include "kernels/cpu/types_cpu.h"

/* Types without AVX-512 kernels run AVX2's at that level (kern_vec_dot_get falls back). */
#if defined(__x86_64__)
#define DOT_X86(name) [KERN_ISA_AVX2] = name##_avx2,
#else
#define DOT_X86(name)
#endif
#if defined(__aarch64__)
#define DOT_ARM(name) [KERN_ISA_NEON] = name##_neon, [KERN_ISA_NEON_DOT] = name##_neondot,
#else
#define DOT_ARM(name)
#endif
#define DOTS(name)                                                  \
    {                                                               \
        [KERN_ISA_SCALAR] = name##_ref, DOT_X86(name) DOT_ARM(name) \
    }

#if defined(__x86_64__)
#define TILE_X86(name)                                    \
    {                                                     \
        [KERN_ISA_AVX2] = kern_vec_dot_tile_##name##_avx2 \
    }
#else
#define TILE_X86(name) \
    {                  \
        0              \
    }
#endif

/* Multi-token kernels on both families (x86: AVX2; arm64: NEON and NEON dotprod). */
#if defined(__x86_64__)
#define TILE_ALL(kind, name)                                  \
    {                                                         \
        [KERN_ISA_AVX2] = kern_vec_dot_##kind##_##name##_avx2 \
    }
#elif defined(__aarch64__)
#define TILE_ALL(kind, name)                                         \
    {                                                                \
        [KERN_ISA_NEON] = kern_vec_dot_##kind##_##name##_neon,       \
        [KERN_ISA_NEON_DOT] = kern_vec_dot_##kind##_##name##_neondot \
    }
#else
#define TILE_ALL(kind, name) \
    {                        \
        0                    \
    }
#endif

#if defined(__x86_64__)
#define ROWS_X86(name)                                    \
    {                                                     \
        [KERN_ISA_AVX2] = kern_vec_dot_rows_##name##_avx2 \
    }
#else
#define ROWS_X86(name) \
    {                  \
        0              \
    }
#endif

#if defined(__x86_64__)
#define TILE2_X86(name)                                    \
    {                                                      \
        [KERN_ISA_AVX2] = kern_vec_dot_tile2_##name##_avx2 \
    }
#else
#define TILE2_X86(name) \
    {                   \
        0               \
    }
#endif

/* AVX-512 VNNI kernels (x86/avx512_quant.c) for a type: its vec_dot at both x86 levels,
 * and a multi-token / multi-row slot with AVX2's kernel (or NULL) and AVX-512's. */
#if defined(__x86_64__)
#define DOTS5(name)                                                    \
    {                                                                  \
        [KERN_ISA_SCALAR] = name##_ref, [KERN_ISA_AVX2] = name##_avx2, \
        [KERN_ISA_AVX512] = name##_avx512                              \
    }
#define K5(kind, name, avx2)                                                              \
    {                                                                                     \
        [KERN_ISA_AVX2] = avx2, [KERN_ISA_AVX512] = kern_vec_dot_##kind##_##name##_avx512 \
    }
#endif

static const kern_type_cpu_t type_table[TDM_TYPE_COUNT] = {
    [TDM_TYPE_F32] = {TDM_TYPE_F32, kern_to_float_f32, kern_from_float_f32, DOTS(kern_vec_dot_f32)},
    [TDM_TYPE_F16] = {TDM_TYPE_F32, kern_to_float_f16, kern_from_float_f16, DOTS(kern_vec_dot_f16)},
    [TDM_TYPE_BF16] = {TDM_TYPE_F32, kern_to_float_bf16, kern_from_float_bf16,
                       DOTS(kern_vec_dot_bf16)},
    [TDM_TYPE_Q4_0] = {TDM_TYPE_Q8_0, kern_to_float_q4_0, kern_from_float_q4_0,
                       DOTS(kern_vec_dot_q4_0)},
    [TDM_TYPE_Q4_1] = {TDM_TYPE_Q8_1, kern_to_float_q4_1, kern_from_float_q4_1,
                       DOTS(kern_vec_dot_q4_1), TILE_X86(q4_1), ROWS_X86(q4_1), TILE2_X86(q4_1)},
    [TDM_TYPE_Q5_0] = {TDM_TYPE_Q8_0, kern_to_float_q5_0, kern_from_float_q5_0,
                       DOTS(kern_vec_dot_q5_0)},
    [TDM_TYPE_Q5_1] = {TDM_TYPE_Q8_1, kern_to_float_q5_1, kern_from_float_q5_1,
                       DOTS(kern_vec_dot_q5_1)},
#if defined(__x86_64__)
    [TDM_TYPE_Q8_0] = {TDM_TYPE_Q8_0, kern_to_float_q8_0, kern_from_float_q8_0,
                       DOTS5(kern_vec_dot_q8_0), K5(tile, q8_0, kern_vec_dot_tile_q8_0_avx2),
                       K5(rows, q8_0, kern_vec_dot_rows_q8_0_avx2), K5(tile2, q8_0, NULL),
                       K5(tile4, q8_0, NULL)},
#else
    [TDM_TYPE_Q8_0] = {TDM_TYPE_Q8_0, kern_to_float_q8_0, kern_from_float_q8_0,
                       DOTS(kern_vec_dot_q8_0), TILE_X86(q8_0), ROWS_X86(q8_0)},
#endif
    [TDM_TYPE_Q2_K] = {TDM_TYPE_Q8_K, kern_to_float_q2_k, NULL, DOTS(kern_vec_dot_q2_k)},
    [TDM_TYPE_Q3_K] = {TDM_TYPE_Q8_K, kern_to_float_q3_k, NULL, DOTS(kern_vec_dot_q3_k)},
#if defined(__x86_64__)
    [TDM_TYPE_Q4_K] = {TDM_TYPE_Q8_K, kern_to_float_q4_k, kern_from_float_q4_k,
                       DOTS5(kern_vec_dot_q4_k), K5(tile, q4_k, kern_vec_dot_tile_q4_k_avx2),
                       K5(rows, q4_k, kern_vec_dot_rows_q4_k_avx2), K5(tile2, q4_k, NULL),
                       K5(tile4, q4_k, NULL)},
#else
    [TDM_TYPE_Q4_K] = {TDM_TYPE_Q8_K, kern_to_float_q4_k, kern_from_float_q4_k,
                       DOTS(kern_vec_dot_q4_k), TILE_X86(q4_k), ROWS_X86(q4_k)},
#endif
    [TDM_TYPE_Q5_K] = {TDM_TYPE_Q8_K, kern_to_float_q5_k, kern_from_float_q5_k,
                       DOTS(kern_vec_dot_q5_k)},
#if defined(__x86_64__)
    [TDM_TYPE_Q6_K] = {TDM_TYPE_Q8_K, kern_to_float_q6_k, kern_from_float_q6_k,
                       DOTS5(kern_vec_dot_q6_k), K5(tile, q6_k, kern_vec_dot_tile_q6_k_avx2),
                       K5(rows, q6_k, kern_vec_dot_rows_q6_k_avx2), K5(tile2, q6_k, NULL),
                       K5(tile4, q6_k, NULL)},
#else
    [TDM_TYPE_Q6_K] = {TDM_TYPE_Q8_K, kern_to_float_q6_k, kern_from_float_q6_k,
                       DOTS(kern_vec_dot_q6_k), TILE_X86(q6_k), ROWS_X86(q6_k)},
#endif
    [TDM_TYPE_IQ4_NL] = {TDM_TYPE_Q8_0, kern_to_float_iq4_nl, NULL, DOTS(kern_vec_dot_iq4_nl)},
    [TDM_TYPE_IQ4_XS] = {TDM_TYPE_Q8_K, kern_to_float_iq4_xs, NULL, DOTS(kern_vec_dot_iq4_xs)},
#if defined(__x86_64__)
    [TDM_TYPE_MXFP4] = {TDM_TYPE_Q8_0, kern_to_float_mxfp4, kern_from_float_mxfp4,
                        DOTS5(kern_vec_dot_mxfp4), K5(tile, mxfp4, kern_vec_dot_tile_mxfp4_avx2),
                        K5(rows, mxfp4, kern_vec_dot_rows_mxfp4_avx2),
                        K5(tile2, mxfp4, kern_vec_dot_tile2_mxfp4_avx2), K5(tile4, mxfp4, NULL)},
#else
    [TDM_TYPE_MXFP4] = {TDM_TYPE_Q8_0, kern_to_float_mxfp4, kern_from_float_mxfp4,
                        DOTS(kern_vec_dot_mxfp4), TILE_ALL(tile, mxfp4), ROWS_X86(mxfp4),
                        TILE_ALL(tile2, mxfp4)},
#endif
};

/* Activation-only formats: a dequantizer and quantizer, no vec_dot of their own. */
static const kern_type_cpu_t act_q8_1 = {
    TDM_TYPE_Q8_1, kern_to_float_q8_1, kern_from_float_q8_1, {0}, {0}, {0}, {0}, {0}};
static const kern_type_cpu_t act_q8_k = {
    TDM_TYPE_Q8_K, kern_to_float_q8_k, kern_from_float_q8_k, {0}, {0}, {0}, {0}, {0}};

const kern_type_cpu_t *kern_type_cpu(tdm_type_t t)
{
    if (t == TDM_TYPE_Q8_1) {
        return &act_q8_1;
    }
    if (t == TDM_TYPE_Q8_K) {
        return &act_q8_k;
    }
    if ((unsigned)t >= TDM_TYPE_COUNT || type_table[t].to_float == NULL) {
        return NULL;
    }
    return &type_table[t];
}

kern_vec_dot_fn kern_vec_dot_get(tdm_type_t t, kern_isa_t isa)
{
    const kern_type_cpu_t *tc = kern_type_cpu(t);
    if (tc == NULL || tc->vec_dot[KERN_ISA_SCALAR] == NULL || (unsigned)isa >= KERN_ISA_COUNT) {
        return tc != NULL ? tc->vec_dot[KERN_ISA_SCALAR] : NULL;
    }
    /* fall back within the family: AVX512 -> AVX2, NEON_DOT -> NEON, then scalar */
    static const kern_isa_t lower[KERN_ISA_COUNT] = {
        [KERN_ISA_SCALAR] = KERN_ISA_SCALAR, [KERN_ISA_AVX2] = KERN_ISA_SCALAR,
        [KERN_ISA_AVX512] = KERN_ISA_AVX2,   [KERN_ISA_NEON] = KERN_ISA_SCALAR,
        [KERN_ISA_NEON_DOT] = KERN_ISA_NEON,
    };
    while (tc->vec_dot[isa] == NULL) {
        isa = lower[isa];
    }
    return tc->vec_dot[isa];
}

/* The table slot of a multi-token or multi-row kernel used at level isa, -1 for none:
 * AVX-512 its own when the type has an AVX-512 vec_dot (they give the same bits; AVX2's
 * would not), else AVX2's; NEON dotprod its own when the type has one, else NEON's (as
 * kern_vec_dot_get falls back). */
static int tile_slot(const kern_type_cpu_t *tc, kern_isa_t isa, int has_neon_dot)
{
    switch (isa) {
    case KERN_ISA_AVX2:
        return KERN_ISA_AVX2;
    case KERN_ISA_AVX512:
        return tc->vec_dot[KERN_ISA_AVX512] != NULL ? KERN_ISA_AVX512 : KERN_ISA_AVX2;
    case KERN_ISA_NEON_DOT:
        return has_neon_dot ? KERN_ISA_NEON_DOT : KERN_ISA_NEON;
    case KERN_ISA_NEON:
        return KERN_ISA_NEON;
    default:
        return -1;
    }
}

kern_vec_dot_tile_fn kern_vec_dot_tile_get(tdm_type_t t, kern_isa_t isa)
{
    const kern_type_cpu_t *tc = kern_type_cpu(t);
    const int s = tc != NULL ? tile_slot(tc, isa, tc->vec_dot_tile[KERN_ISA_NEON_DOT] != NULL) : -1;
    return s < 0 ? NULL : tc->vec_dot_tile[s];
}

kern_vec_dot_rows_fn kern_vec_dot_rows_get(tdm_type_t t, kern_isa_t isa)
{
    const kern_type_cpu_t *tc = kern_type_cpu(t);
    if (tc == NULL || (isa != KERN_ISA_AVX2 && isa != KERN_ISA_AVX512)) {
        return NULL;
    }
    return tc->vec_dot_rows[tile_slot(tc, isa, 0)];
}

kern_from_float_fn kern_from_float_get(tdm_type_t t, kern_isa_t isa)
{
    const kern_type_cpu_t *tc = kern_type_cpu(t);
    if (tc == NULL) {
        return NULL;
    }
#if defined(__x86_64__)
    if (isa == KERN_ISA_AVX2 || isa == KERN_ISA_AVX512) {
        switch (t) {
        case TDM_TYPE_Q8_0:
            return kern_from_float_q8_0_avx2;
        case TDM_TYPE_Q8_1:
            return kern_from_float_q8_1_avx2;
        case TDM_TYPE_Q8_K:
            return kern_from_float_q8_k_avx2;
        default:
            break;
        }
    }
#else
    (void)isa;
#endif
    return tc->from_float;
}

kern_vec_dot_tile2_fn kern_vec_dot_tile2_get(tdm_type_t t, kern_isa_t isa)
{
    const kern_type_cpu_t *tc = kern_type_cpu(t);
    const int s =
        tc != NULL ? tile_slot(tc, isa, tc->vec_dot_tile2[KERN_ISA_NEON_DOT] != NULL) : -1;
    return s < 0 ? NULL : tc->vec_dot_tile2[s];
}

kern_vec_dot_tile4_fn kern_vec_dot_tile4_get(tdm_type_t t, kern_isa_t isa)
{
    const kern_type_cpu_t *tc = kern_type_cpu(t);
    const int s =
        tc != NULL ? tile_slot(tc, isa, tc->vec_dot_tile4[KERN_ISA_NEON_DOT] != NULL) : -1;
    return s < 0 ? NULL : tc->vec_dot_tile4[s];
}

kern_gemm_fn kern_gemm_amx_get(tdm_type_t t)
{
#if defined(KERN_HAVE_AMX)
    if (t == TDM_TYPE_Q4_K) {
        return kern_gemm_q4_k_amx;
    }
#else
    (void)t;
#endif
    return NULL;
}

kern_gemm_fn kern_gemm_get(tdm_type_t t, kern_isa_t isa, int amx)
{
    if (amx) {
        return kern_gemm_amx_get(t);
    }
#if defined(__x86_64__)
    if (isa == KERN_ISA_AVX512 && t == TDM_TYPE_Q4_K) {
        return kern_gemm_q4_k_avx512;
    }
#else
    (void)t;
    (void)isa;
#endif
    return NULL;
}
