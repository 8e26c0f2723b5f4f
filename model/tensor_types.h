/*
 * tensor_types.h - element types of GGUF tensors (ids are GGML's, as stored on disk).
 *
 * One table of core traits, indexed by the on-disk id: name, elements per block and
 * bytes per block. Retired ids (4, 5, 31-33, 36-38) keep their slot so ids never shift;
 * their traits are zero and tdm_type_known() is false. Formats: docs/ and
 * ../shared/reference/gguf-and-moe-architectures.md section 2.
 */
#ifndef TDM_TENSOR_TYPES_H
#define TDM_TENSOR_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tdm_type {
    TDM_TYPE_F32 = 0,
    TDM_TYPE_F16 = 1,
    TDM_TYPE_Q4_0 = 2,
    TDM_TYPE_Q4_1 = 3,
    TDM_TYPE_Q5_0 = 6,
    TDM_TYPE_Q5_1 = 7,
    TDM_TYPE_Q8_0 = 8,
    TDM_TYPE_Q8_1 = 9,
    TDM_TYPE_Q2_K = 10,
    TDM_TYPE_Q3_K = 11,
    TDM_TYPE_Q4_K = 12,
    TDM_TYPE_Q5_K = 13,
    TDM_TYPE_Q6_K = 14,
    TDM_TYPE_Q8_K = 15,
    TDM_TYPE_IQ2_XXS = 16,
    TDM_TYPE_IQ2_XS = 17,
    TDM_TYPE_IQ3_XXS = 18,
    TDM_TYPE_IQ1_S = 19,
    TDM_TYPE_IQ4_NL = 20,
    TDM_TYPE_IQ3_S = 21,
    TDM_TYPE_IQ2_S = 22,
    TDM_TYPE_IQ4_XS = 23,
    TDM_TYPE_I8 = 24,
    TDM_TYPE_I16 = 25,
    TDM_TYPE_I32 = 26,
    TDM_TYPE_I64 = 27,
    TDM_TYPE_F64 = 28,
    TDM_TYPE_IQ1_M = 29,
    TDM_TYPE_BF16 = 30,
    TDM_TYPE_TQ1_0 = 34,
    TDM_TYPE_TQ2_0 = 35,
    TDM_TYPE_MXFP4 = 39,
    TDM_TYPE_COUNT = 40 /* one past the highest id this build knows */
} tdm_type_t;

typedef struct tdm_type_traits {
    const char *name; /* "Q4_K"; NULL for retired / unknown ids          */
    uint32_t blck;    /* elements per block (1 for scalar types)         */
    uint32_t size;    /* bytes per block                                 */
    bool quantized;   /* block-quantized (blck > 1 or a packed format)   */
} tdm_type_traits_t;

/* Traits of id t; all-zero for an id outside the table or retired. */
const tdm_type_traits_t *tdm_type_traits(uint32_t t);

/* True when t is a type with known layout (a file may contain it). */
bool tdm_type_known(uint32_t t);

/* Name of t, or "unknown". */
const char *tdm_type_name(uint32_t t);

/* Bytes of a row of n elements of type t; 0 if n is not a multiple of the block size or
 * the type is unknown. */
size_t tdm_type_row_size(uint32_t t, int64_t n);

/* Parses a type name ("q4_k", "Q4_K", "f16"); returns -1 when unknown. */
int tdm_type_from_name(const char *name);

#ifdef __cplusplus
}
#endif

#endif
