/*
 * tokenizer_internal.h - what tokenizer.c and tokenizer_gguf.c share: the length-delimited
 * build input both constructors reduce to. Not for use outside coordinator/.
 */
#ifndef TDM_TOKENIZER_INTERNAL_H
#define TDM_TOKENIZER_INTERNAL_H

#include "coordinator/tokenizer/tokenizer.h"

typedef struct tok_str {
    const char *ptr;
    uint64_t len;
} tok_str_t;

typedef struct tok_build {
    const char *pre; /* NULL = "default" */
    uint32_t n_tokens;
    const tok_str_t *tokens;
    const int32_t *types; /* NULL = all NORMAL */
    const uint8_t *attrs; /* NULL = none */
    uint32_t n_merges;
    const tok_str_t *merges;
    tok_id_t bos, eos, eot, eom, pad;
    int add_bos, add_eos; /* 1, 0, or -1 = default of the pre-tokenizer */
    tok_normalizer_t normalizer;
} tok_build_t;

tdm_status_t tok_vocab_build_(const tok_build_t *b, tok_vocab_t **out, tdm_error_t *err);

#endif
