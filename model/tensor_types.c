/* tensor_types.c - the core traits table of GGUF tensor types. */
#include "model/tensor_types.h"

#include <strings.h>

static const tdm_type_traits_t type_traits[TDM_TYPE_COUNT] = {
    [TDM_TYPE_F32] = {"F32", 1, 4, false},
    [TDM_TYPE_F16] = {"F16", 1, 2, false},
    [TDM_TYPE_Q4_0] = {"Q4_0", 32, 18, true},
    [TDM_TYPE_Q4_1] = {"Q4_1", 32, 20, true},
    [TDM_TYPE_Q5_0] = {"Q5_0", 32, 22, true},
    [TDM_TYPE_Q5_1] = {"Q5_1", 32, 24, true},
    [TDM_TYPE_Q8_0] = {"Q8_0", 32, 34, true},
    [TDM_TYPE_Q8_1] = {"Q8_1", 32, 36, true},
    [TDM_TYPE_Q2_K] = {"Q2_K", 256, 84, true},
    [TDM_TYPE_Q3_K] = {"Q3_K", 256, 110, true},
    [TDM_TYPE_Q4_K] = {"Q4_K", 256, 144, true},
    [TDM_TYPE_Q5_K] = {"Q5_K", 256, 176, true},
    [TDM_TYPE_Q6_K] = {"Q6_K", 256, 210, true},
    [TDM_TYPE_Q8_K] = {"Q8_K", 256, 292, true},
    [TDM_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66, true},
    [TDM_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74, true},
    [TDM_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98, true},
    [TDM_TYPE_IQ1_S] = {"IQ1_S", 256, 50, true},
    [TDM_TYPE_IQ4_NL] = {"IQ4_NL", 32, 18, true},
    [TDM_TYPE_IQ3_S] = {"IQ3_S", 256, 110, true},
    [TDM_TYPE_IQ2_S] = {"IQ2_S", 256, 82, true},
    [TDM_TYPE_IQ4_XS] = {"IQ4_XS", 256, 136, true},
    [TDM_TYPE_I8] = {"I8", 1, 1, false},
    [TDM_TYPE_I16] = {"I16", 1, 2, false},
    [TDM_TYPE_I32] = {"I32", 1, 4, false},
    [TDM_TYPE_I64] = {"I64", 1, 8, false},
    [TDM_TYPE_F64] = {"F64", 1, 8, false},
    [TDM_TYPE_IQ1_M] = {"IQ1_M", 256, 56, true},
    [TDM_TYPE_BF16] = {"BF16", 1, 2, false},
    [TDM_TYPE_TQ1_0] = {"TQ1_0", 256, 54, true},
    [TDM_TYPE_TQ2_0] = {"TQ2_0", 256, 66, true},
    [TDM_TYPE_MXFP4] = {"MXFP4", 32, 17, true},
};

static const tdm_type_traits_t no_traits = {0};

const tdm_type_traits_t *tdm_type_traits(uint32_t t)
{
    return t < TDM_TYPE_COUNT ? &type_traits[t] : &no_traits;
}

bool tdm_type_known(uint32_t t)
{
    return tdm_type_traits(t)->name != NULL;
}

const char *tdm_type_name(uint32_t t)
{
    const char *n = tdm_type_traits(t)->name;
    return n != NULL ? n : "unknown";
}

size_t tdm_type_row_size(uint32_t t, int64_t n)
{
    const tdm_type_traits_t *tr = tdm_type_traits(t);
    if (tr->name == NULL || n < 0 || n % tr->blck != 0) {
        return 0;
    }
    return (size_t)(n / tr->blck) * tr->size;
}

int tdm_type_from_name(const char *name)
{
    for (int t = 0; t < TDM_TYPE_COUNT; t++) {
        if (type_traits[t].name != NULL && strcasecmp(type_traits[t].name, name) == 0) {
            return t;
        }
    }
    return -1;
}
