/* arch_table.c - the forward pass of each architecture, keyed by general.architecture.
 * Adding one: shard/models/<arch>.c exporting a shd_arch_ops_t, one line here, and its
 * name in model/hparams.c. */
#include "shard/shd_internal.h"

static const shd_arch_ops_t *const arch_table[MDL_ARCH_COUNT] = {
    [MDL_ARCH_LLAMA] = &shd_arch_llama,           [MDL_ARCH_QWEN3MOE] = &shd_arch_qwen3moe,
    [MDL_ARCH_MINIMAX_M2] = &shd_arch_minimax_m2, [MDL_ARCH_GPT_OSS] = &shd_arch_gpt_oss,
    [MDL_ARCH_QWEN2] = &shd_arch_qwen2,           [MDL_ARCH_MISTRAL3] = &shd_arch_mistral3,
    [MDL_ARCH_QWEN3NEXT] = &shd_arch_qwen3next,   [MDL_ARCH_QWEN35MOE] = &shd_arch_qwen35moe,
};

const shd_arch_ops_t *shd_arch_lookup(mdl_arch_t arch)
{
    return (unsigned)arch < MDL_ARCH_COUNT ? arch_table[arch] : NULL;
}
