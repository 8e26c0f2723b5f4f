/*
 * types_cpu.h - the CPU side of every supported tensor type: block layouts, scalar
 * f16/bf16/e8m0 conversions, and the per-type table (indexed by the GGUF type id) of
 * dequantizer, quantizers and vec_dot kernels per ISA.
 *
 * A weight row of type T is dotted against an activation row already converted to
 * T's vec_dot_type (Q8_0, Q8_1, Q8_K, or F32 for the float weight types). The scalar
 * vec_dot (`_ref`) is the oracle for the SIMD ones: they compute the same per-block
 * integer sums exactly and differ only in the order of the float accumulation.
 *
 * Block layouts and dequant formulas: shared/reference/gguf-and-moe-architectures.md §2.
 */
#ifndef KERN_CPU_TYPES_CPU_H
#define KERN_CPU_TYPES_CPU_H

#include "kernels/kern_isa.h"
#include "model/tensor_types.h"

#include <stdint.h>
#include <string.h>

#define KERN_QK  32  /* elements per block of the 32-element types */
#define KERN_QKK 256 /* elements per K-quant super-block            */

/* All multi-byte fields are little-endian; f16 fields are stored as raw uint16_t. */
typedef struct {
    uint16_t d;
    uint8_t qs[16];
} kern_block_q4_0;
typedef struct {
    uint16_t d, m;
    uint8_t qs[16];
} kern_block_q4_1;
typedef struct {
    uint16_t d;
    uint8_t qh[4]; /* u32 LE, bytes so the struct stays 22 bytes */
    uint8_t qs[16];
} kern_block_q5_0;
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
} kern_block_q5_1;
typedef struct {
    uint16_t d;
    int8_t qs[32];
} kern_block_q8_0;
typedef struct {
    uint16_t d, s; /* s = f16(d * sum(qs)) */
    int8_t qs[32];
} kern_block_q8_1;
typedef struct {
    uint8_t e; /* E8M0 scale */
    uint8_t qs[16];
} kern_block_mxfp4;
typedef struct {
    uint16_t d;
    uint8_t qs[16];
} kern_block_iq4_nl;
typedef struct {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[4];
    uint8_t qs[128];
} kern_block_iq4_xs;
typedef struct {
    uint8_t scales[16];
    uint8_t qs[64];
    uint16_t d, dmin;
} kern_block_q2_k;
typedef struct {
    uint8_t hmask[32];
    uint8_t qs[64];
    uint8_t scales[12];
    uint16_t d;
} kern_block_q3_k;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
} kern_block_q4_k;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} kern_block_q5_k;
typedef struct {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} kern_block_q6_k;
typedef struct {
    float d;
    int8_t qs[256];
    int16_t bsums[16]; /* sum of each 16 consecutive qs */
} kern_block_q8_k;

_Static_assert(sizeof(kern_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(kern_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(kern_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(kern_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(kern_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(kern_block_q8_1) == 36, "Q8_1 block");
_Static_assert(sizeof(kern_block_mxfp4) == 17, "MXFP4 block");
_Static_assert(sizeof(kern_block_iq4_nl) == 18, "IQ4_NL block");
_Static_assert(sizeof(kern_block_iq4_xs) == 136, "IQ4_XS block");
_Static_assert(sizeof(kern_block_q2_k) == 84, "Q2_K block");
_Static_assert(sizeof(kern_block_q3_k) == 110, "Q3_K block");
_Static_assert(sizeof(kern_block_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(kern_block_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(kern_block_q6_k) == 210, "Q6_K block");
_Static_assert(sizeof(kern_block_q8_k) == 292, "Q8_K block");

/* The IQ4_NL / IQ4_XS codebook and ggml's doubled E2M1 table for MXFP4. */
extern const int8_t kern_iq4nl_values[16];
extern const int8_t kern_mxfp4_values[16];

static inline uint32_t kern_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float kern_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* IEEE binary16 -> f32, exact (subnormals, inf, NaN payload kept). */
static inline float kern_fp16_to_fp32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    const uint32_t mant = h & 0x3FFu;
    if (exp == 0x1F) {
        return kern_bits_f32(sign | 0x7F800000u | (mant << 13));
    }
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 */
        const float v = (float)mant * 0x1p-24f;
        return kern_bits_f32(sign | kern_f32_bits(v));
    }
    return kern_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* f32 -> IEEE binary16, round to nearest even; NaN stays a (quiet) NaN. */
static inline uint16_t kern_fp32_to_fp16(float f)
{
    const uint32_t x = kern_f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) {
        return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
    }
    if (ax >= 0x477FF000u) { /* >= 65520 rounds to inf */
        return (uint16_t)(sign | 0x7C00u);
    }
    if (ax < 0x38800000u) { /* below 2^-14: subnormal half. ulp(0.5f) == 2^-24 */
        const float t = kern_bits_f32(ax) + 0.5f;
        return (uint16_t)(sign | (kern_f32_bits(t) - 0x3F000000u));
    }
    ax += 0xFFFu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | ((ax - (112u << 23)) >> 13));
}

static inline float kern_bf16_to_fp32(uint16_t h)
{
    return kern_bits_f32((uint32_t)h << 16);
}

/* f32 -> bf16, round to nearest even; NaN forced quiet. */
static inline uint16_t kern_fp32_to_bf16(float f)
{
    const uint32_t u = kern_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        return (uint16_t)((u >> 16) | 0x40u);
    }
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* E8M0 scale e as ggml's half value 2^(e-128) (its FP4 table is doubled). */
static inline float kern_e8m0_to_fp32_half(uint8_t e)
{
    return kern_bits_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

static inline uint32_t kern_load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* get_scale_min_k4: the 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block. */
static inline void kern_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Converters work on whole rows: n is a multiple of the type's block size. */
typedef void (*kern_to_float_fn)(const void *restrict src, float *restrict dst, int64_t n);
typedef void (*kern_from_float_fn)(const float *restrict src, void *restrict dst, int64_t n);
/* Dot product of n elements: a weight row w against an activation row a already in the
 * weight type's vec_dot_type. */
typedef float (*kern_vec_dot_fn)(int64_t n, const void *restrict w, const void *restrict a);

/* One weight row w against n_tok (1..KERN_DOT_TILE) activation rows a + t * a_stride:
 * y[t * y_stride] = vec_dot(n, w, a + t * a_stride). Each weight block is unpacked once
 * for all tokens of the tile; the per-block integer sums are those of vec_dot, only the
 * float accumulation order may differ. */
#define KERN_DOT_TILE 4
typedef void (*kern_vec_dot_tile_fn)(int64_t n, const void *restrict w, const void *restrict a,
                                     size_t a_stride, int n_tok, float *restrict y,
                                     int64_t y_stride);

/* n_rows weight rows w + r * row_bytes against one activation row a:
 * y[r] = vec_dot(n, w + r * row_bytes, a), read `group` (1..KERN_DOT_ROWS) rows at a
 * time block by block (the activation blocks loaded once per group). Row r's result
 * does not depend on the grouping (bit-identical to the ISA's vec_dot on that row). */
#define KERN_DOT_ROWS 4
typedef void (*kern_vec_dot_rows_fn)(int64_t n, const void *restrict w, size_t row_bytes,
                                     int n_rows, int group, const void *restrict a,
                                     float *restrict y);

/* Two weight rows (w, w + row_bytes) against n_tok (1..KERN_DOT_TILE) activation rows:
 * y[t * y_stride + r] = vec_dot(n, w + r * row_bytes, a + t * a_stride), r = 0, 1; each
 * result bit-identical to vec_dot_tile / vec_dot on the same row and token. */
typedef void (*kern_vec_dot_tile2_fn)(int64_t n, const void *restrict w, size_t row_bytes,
                                      const void *restrict a, size_t a_stride, int n_tok,
                                      float *restrict y, int64_t y_stride);

/* Four weight rows (w + r * row_bytes, r = 0..3) against n_tok tokens, as tile2 with four
 * rows (the same signature): y[t * y_stride + r]. The activations of a token tile are
 * loaded once for four rows. */
typedef kern_vec_dot_tile2_fn kern_vec_dot_tile4_fn;

typedef struct kern_type_cpu {
    tdm_type_t vec_dot_type;                 /* activation format of the vec_dot      */
    kern_to_float_fn to_float;               /* reference dequantizer                 */
    kern_from_float_fn from_float;           /* reference quantizer, NULL when none   */
    kern_vec_dot_fn vec_dot[KERN_ISA_COUNT]; /* NULL: not specialised for that ISA    */
    /* optional multi-token kernels for prefill; NULL: kern_matmul uses vec_dot */
    kern_vec_dot_tile_fn vec_dot_tile[KERN_ISA_COUNT];
    /* optional multi-row kernels for decode; NULL: kern_matmul uses vec_dot per row */
    kern_vec_dot_rows_fn vec_dot_rows[KERN_ISA_COUNT];
    /* optional two-row prefill kernels; NULL: vec_dot_tile per row */
    kern_vec_dot_tile2_fn vec_dot_tile2[KERN_ISA_COUNT];
    /* optional four-row prefill kernels; NULL: tile2 (or tile) */
    kern_vec_dot_tile4_fn vec_dot_tile4[KERN_ISA_COUNT];
} kern_type_cpu_t;

/* The table entry for t, or NULL when t has no CPU kernels (dequantizer + vec_dot). */
const kern_type_cpu_t *kern_type_cpu(tdm_type_t t);

/* The best vec_dot for t usable at level isa (falls back to a lower level of the same
 * family, then to the scalar reference). NULL when t is unsupported. */
kern_vec_dot_fn kern_vec_dot_get(tdm_type_t t, kern_isa_t isa);

/* The multi-token kernel for t usable at level isa (AVX-512 falls back to AVX2, NEON
 * dotprod to NEON), or NULL when there is none (then use kern_vec_dot_get per token). */
kern_vec_dot_tile_fn kern_vec_dot_tile_get(tdm_type_t t, kern_isa_t isa);

/* The two-row prefill kernel for t at level isa (the same fallbacks), or NULL. */
kern_vec_dot_tile2_fn kern_vec_dot_tile2_get(tdm_type_t t, kern_isa_t isa);

/* The four-row prefill kernel for t at level isa (the same fallbacks), or NULL. */
kern_vec_dot_tile4_fn kern_vec_dot_tile4_get(tdm_type_t t, kern_isa_t isa);

/* The multi-row kernel for t usable at level isa (AVX-512 falls back to AVX2), or NULL. */
kern_vec_dot_rows_fn kern_vec_dot_rows_get(tdm_type_t t, kern_isa_t isa);

/* The activation quantizer for t at level isa: a SIMD one bit-exact with from_float
 * where there is one (Q8_0 / Q8_1 / Q8_K on AVX2), else from_float. */
kern_from_float_fn kern_from_float_get(tdm_type_t t, kern_isa_t isa);
void kern_from_float_q8_0_avx2(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q8_1_avx2(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q8_k_avx2(const float *restrict src, void *restrict dst, int64_t n);

/* Scalar references (kernels/cpu/quant_ref.c, kernels/cpu/dot_ref.c). */
void kern_to_float_f32(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_f16(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_bf16(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q4_0(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q4_1(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q5_0(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q5_1(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q8_0(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q8_1(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q2_k(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q3_k(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q4_k(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q5_k(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q6_k(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_q8_k(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_iq4_nl(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_iq4_xs(const void *restrict src, float *restrict dst, int64_t n);
void kern_to_float_mxfp4(const void *restrict src, float *restrict dst, int64_t n);

void kern_from_float_f32(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_f16(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_bf16(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q4_0(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q4_1(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q5_0(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q5_1(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q8_0(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q8_1(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q4_k(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q5_k(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q6_k(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_q8_k(const float *restrict src, void *restrict dst, int64_t n);
void kern_from_float_mxfp4(const float *restrict src, void *restrict dst, int64_t n);

#define KERN_DECLARE_DOTS(sfx)                                                                  \
    float kern_vec_dot_f32_##sfx(int64_t n, const void *restrict w, const void *restrict a);    \
    float kern_vec_dot_f16_##sfx(int64_t n, const void *restrict w, const void *restrict a);    \
    float kern_vec_dot_bf16_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q4_0_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q4_1_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q5_0_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q5_1_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q8_0_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q2_k_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q3_k_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q4_k_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q5_k_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_q6_k_##sfx(int64_t n, const void *restrict w, const void *restrict a);   \
    float kern_vec_dot_iq4_nl_##sfx(int64_t n, const void *restrict w, const void *restrict a); \
    float kern_vec_dot_iq4_xs_##sfx(int64_t n, const void *restrict w, const void *restrict a); \
    float kern_vec_dot_mxfp4_##sfx(int64_t n, const void *restrict w, const void *restrict a);

#define KERN_DECLARE_TILE(name)                                                           \
    void name(int64_t n, const void *restrict w, const void *restrict a, size_t a_stride, \
              int n_tok, float *restrict y, int64_t y_stride);
KERN_DECLARE_TILE(kern_vec_dot_tile_q4_1_avx2)
KERN_DECLARE_TILE(kern_vec_dot_tile_q8_0_avx2)
KERN_DECLARE_TILE(kern_vec_dot_tile_q4_k_avx2)
KERN_DECLARE_TILE(kern_vec_dot_tile_q6_k_avx2)
KERN_DECLARE_TILE(kern_vec_dot_tile_mxfp4_avx2)
KERN_DECLARE_TILE(kern_vec_dot_tile_mxfp4_neon)
KERN_DECLARE_TILE(kern_vec_dot_tile_mxfp4_neondot)
KERN_DECLARE_TILE(kern_vec_dot_tile_q8_0_avx512)
KERN_DECLARE_TILE(kern_vec_dot_tile_q4_k_avx512)
KERN_DECLARE_TILE(kern_vec_dot_tile_q6_k_avx512)
KERN_DECLARE_TILE(kern_vec_dot_tile_mxfp4_avx512)

#define KERN_DECLARE_TILE2(name)                                                           \
    void name(int64_t n, const void *restrict w, size_t row_bytes, const void *restrict a, \
              size_t a_stride, int n_tok, float *restrict y, int64_t y_stride);
KERN_DECLARE_TILE2(kern_vec_dot_tile2_q4_1_avx2)
KERN_DECLARE_TILE2(kern_vec_dot_tile2_mxfp4_avx2)
KERN_DECLARE_TILE2(kern_vec_dot_tile2_mxfp4_neon)
KERN_DECLARE_TILE2(kern_vec_dot_tile2_mxfp4_neondot)
KERN_DECLARE_TILE2(kern_vec_dot_tile2_q8_0_avx512)
KERN_DECLARE_TILE2(kern_vec_dot_tile2_q4_k_avx512)
KERN_DECLARE_TILE2(kern_vec_dot_tile2_q6_k_avx512)
KERN_DECLARE_TILE2(kern_vec_dot_tile2_mxfp4_avx512)
KERN_DECLARE_TILE2(kern_vec_dot_tile4_q8_0_avx512)
KERN_DECLARE_TILE2(kern_vec_dot_tile4_q4_k_avx512)
KERN_DECLARE_TILE2(kern_vec_dot_tile4_q6_k_avx512)
KERN_DECLARE_TILE2(kern_vec_dot_tile4_mxfp4_avx512)

#define KERN_DECLARE_ROWS(name)                                                           \
    void name(int64_t n, const void *restrict w, size_t row_bytes, int n_rows, int group, \
              const void *restrict a, float *restrict y);
KERN_DECLARE_ROWS(kern_vec_dot_rows_q4_1_avx2)
KERN_DECLARE_ROWS(kern_vec_dot_rows_q8_0_avx2)
KERN_DECLARE_ROWS(kern_vec_dot_rows_q4_k_avx2)
KERN_DECLARE_ROWS(kern_vec_dot_rows_q6_k_avx2)
KERN_DECLARE_ROWS(kern_vec_dot_rows_mxfp4_avx2)
KERN_DECLARE_ROWS(kern_vec_dot_rows_q8_0_avx512)
KERN_DECLARE_ROWS(kern_vec_dot_rows_q4_k_avx512)
KERN_DECLARE_ROWS(kern_vec_dot_rows_q6_k_avx512)
KERN_DECLARE_ROWS(kern_vec_dot_rows_mxfp4_avx512)

/* AVX-512 VNNI kernels (x86/avx512_quant.c) for the types of today's big models; the
 * other types run AVX2's at that level. */
float kern_vec_dot_q8_0_avx512(int64_t n, const void *restrict w, const void *restrict a);
float kern_vec_dot_q4_k_avx512(int64_t n, const void *restrict w, const void *restrict a);
float kern_vec_dot_q6_k_avx512(int64_t n, const void *restrict w, const void *restrict a);
float kern_vec_dot_mxfp4_avx512(int64_t n, const void *restrict w, const void *restrict a);

/* AMX products (x86/amx_quant.c, built when KERN_HAVE_AMX): n_rows (1..16) weight rows
 * w + r * row_bytes against n_tok (1..16) activation rows a + t * a_stride into
 * y[t * y_stride + r]; a (row, token) gets the same bits whatever n_rows and n_tok. Only
 * after kern_amx_request() returned 1 (kern_ctx_amx). */
typedef void (*kern_gemm_fn)(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                             const void *restrict a, size_t a_stride, int n_tok, float *restrict y,
                             int64_t y_stride);
#define KERN_GEMM_ROWS 16
#define KERN_GEMM_TOK  16
int kern_amx_request(void);
void kern_gemm_q4_k_amx(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                        const void *restrict a, size_t a_stride, int n_tok, float *restrict y,
                        int64_t y_stride);

/* The AMX product for weight type t, or NULL (no AMX kernel for t, or none built). */
kern_gemm_fn kern_gemm_amx_get(tdm_type_t t);

/* The same product on AVX-512 VNNI (x86/avx512_gemm.c): the AMX product's bits, for a
 * context at the AVX-512 level without AMX. */
void kern_gemm_q4_k_avx512(int64_t n, const void *restrict w, size_t row_bytes, int n_rows,
                           const void *restrict a, size_t a_stride, int n_tok, float *restrict y,
                           int64_t y_stride);

/* The row-lane product for weight type t at ISA level isa (AMX when amx), or NULL: then
 * the type's vec_dot, row kernels and tiles do its products. */
kern_gemm_fn kern_gemm_get(tdm_type_t t, kern_isa_t isa, int amx);

KERN_DECLARE_DOTS(ref)
KERN_DECLARE_DOTS(avx2)
KERN_DECLARE_DOTS(neon)
KERN_DECLARE_DOTS(neondot)

#endif
