/*
 * tokenizer.h - byte-level BPE tokenizer (GGUF tokenizer.ggml.model = "gpt2") and a
 * streaming detokenizer.
 *
 * A tok_vocab_t is built once (from a GGUF file's tokenizer.* keys or from plain arrays) and
 * is immutable afterwards, so any number of threads may share it. Encoding needs scratch
 * memory (PCRE2 match data, symbol lists, a per-word cache): that lives in a
 * tok_workspace_t, one per thread. Passing NULL for the workspace makes a temporary one per
 * call (correct, slower).
 *
 * Encoding, in order (coordinator/README.md explains each choice):
 *   1. special-token partition: leftmost-longest literal matches of CONTROL, USER_DEFINED and
 *      UNKNOWN token texts (only USER_DEFINED without TOK_ENC_PARSE_SPECIAL), on the raw text;
 *   1b. for an NFC vocabulary (tok_vocab_nfc), Unicode NFC of each plain fragment between
 *      special tokens; a fragment that is not valid UTF-8 is left as it is;
 *   2. pre-tokenization of each plain fragment with the regex list of tokenizer.ggml.pre
 *      (PCRE2, UTF + UCP, JIT-compiled once at load);
 *   3. GPT-2 byte-to-unicode mapping and BPE merges by rank (leftmost first among equals);
 *   4. BOS/EOS added per the vocabulary's add_bos/add_eos when TOK_ENC_ADD_SPECIAL is set.
 * Any byte string can be encoded; invalid UTF-8 bytes become single-byte pieces, so
 * decode(encode(x)) == x for every x (== NFC(x) for a valid UTF-8 x and an NFC vocabulary).
 */
#ifndef TDM_TOKENIZER_H
#define TDM_TOKENIZER_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t tok_id_t;
#define TOK_NONE ((tok_id_t)-1)

/* tokenizer.ggml.token_type values. */
typedef enum tok_type {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
} tok_type_t;

/* Per-token matching attributes (HF added-token lstrip/rstrip). GGUF does not store them,
 * so only the plain-array constructor can set them. */
enum {
    TOK_ATTR_LSTRIP = 1u << 0, /* swallow whitespace before the special token */
    TOK_ATTR_RSTRIP = 1u << 1, /* swallow whitespace after it                  */
};

/* Text normalizer applied before pre-tokenization (HF tokenizer.json "normalizer"). */
typedef enum tok_normalizer {
    TOK_NORM_DEFAULT = 0, /* the pre-tokenizer's default: NFC for qwen2, else none */
    TOK_NORM_NONE = 1,
    TOK_NORM_NFC = 2,
} tok_normalizer_t;

/* A vocabulary given as plain arrays (tests, tools). Strings are NUL-terminated. */
typedef struct tok_vocab_desc {
    const char *pre;                  /* tokenizer.ggml.pre name, e.g. "qwen2"         */
    uint32_t n_tokens;                /* ids are 0 .. n_tokens-1                        */
    const char *const *tokens;        /* token texts (byte-level unicode for NORMAL)    */
    const int32_t *types;             /* tok_type_t per token; NULL = all NORMAL        */
    const uint8_t *attrs;             /* TOK_ATTR_* per token; NULL = none              */
    uint32_t n_merges;                /* rank = index                                   */
    const char *const *merges;        /* "A B"                                          */
    tok_id_t bos, eos, eot, eom, pad; /* TOK_NONE when absent                     */
    int add_bos, add_eos;             /* 1 yes, 0 no, -1 = default of the pre-tokenizer       */
    tok_normalizer_t normalizer;      /* TOK_NORM_DEFAULT (0) = the pre-tokenizer's default   */
} tok_vocab_desc_t;

typedef struct tok_vocab tok_vocab_t;
struct gguf_ctx;

tdm_status_t tok_vocab_create(const tok_vocab_desc_t *desc, tok_vocab_t **out, tdm_error_t *err);

/*
 * Reads tokenizer.ggml.{model,pre,tokens,token_type,merges,*_token_id,add_bos_token,
 * add_eos_token,normalizer}. normalizer (Tandem's own key, written by
 * tools/convert_tokenizer.py) is "nfc" or "none"; absent = the pre-tokenizer's default (NFC
 * for qwen2), any other value is TDM_ERR_UNSUPPORTED. model must be "gpt2" (TDM_ERR_UNSUPPORTED
 * otherwise); an unknown pre name is TDM_ERR_UNSUPPORTED naming it; a missing pre means "default"
 * (as llama.cpp, warned). The vocabulary copies what it needs: the gguf_ctx may be closed
 * afterwards.
 */
tdm_status_t tok_vocab_from_gguf(const struct gguf_ctx *gguf, tok_vocab_t **out, tdm_error_t *err);

void tok_vocab_destroy(tok_vocab_t *vocab); /* NULL is fine */

uint32_t tok_vocab_n_tokens(const tok_vocab_t *vocab);
const char *tok_vocab_pre(const tok_vocab_t *vocab); /* canonical pre-tokenizer name */
tok_id_t tok_vocab_bos(const tok_vocab_t *vocab);
tok_id_t tok_vocab_eos(const tok_vocab_t *vocab);
tok_id_t tok_vocab_eot(const tok_vocab_t *vocab);
tok_id_t tok_vocab_pad(const tok_vocab_t *vocab);
bool tok_vocab_add_bos(const tok_vocab_t *vocab);
bool tok_vocab_add_eos(const tok_vocab_t *vocab);
bool tok_vocab_nfc(const tok_vocab_t *vocab); /* text is NFC-normalized before splitting */
/* Number of merges in use (merges naming tokens absent from the vocabulary are dropped). */
uint32_t tok_vocab_n_merges(const tok_vocab_t *vocab);

/* Token text as stored (byte-level unicode for NORMAL tokens); NULL for a bad id. */
const char *tok_token_text(const tok_vocab_t *vocab, tok_id_t id, size_t *len);
tok_type_t tok_token_type(const tok_vocab_t *vocab, tok_id_t id); /* UNDEFINED for bad id */
/* The id of a token with exactly this text, or TOK_NONE. */
tok_id_t tok_find_token(const tok_vocab_t *vocab, const char *text, size_t len);

/* End of generation: eos, eot, eom and tokens named like <|im_end|>, <|endoftext|>,
 * <|return|>, <|call|>, <|eot_id|> ... (rule in coordinator/README.md). */
bool tok_is_eog(const tok_vocab_t *vocab, tok_id_t id);
/* The EOG ids, ascending; *n receives the count. */
const tok_id_t *tok_eog_ids(const tok_vocab_t *vocab, size_t *n);

/* ---- encoding ------------------------------------------------------------------------- */

enum tok_encode_flags {
    TOK_ENC_ADD_SPECIAL = 1u << 0,   /* prepend BOS / append EOS as the vocabulary says   */
    TOK_ENC_PARSE_SPECIAL = 1u << 1, /* match CONTROL token texts (chat-template output);
                                        without it only USER_DEFINED texts are matched    */
};

/* A growable id array owned by the caller. Zero-initialise; free with tok_ids_free. */
typedef struct tok_ids {
    tok_id_t *ids;
    size_t n;
    size_t cap;
} tok_ids_t;

void tok_ids_free(tok_ids_t *ids);

typedef struct tok_workspace tok_workspace_t;

tdm_status_t tok_workspace_create(const tok_vocab_t *vocab, tok_workspace_t **out,
                                  tdm_error_t *err);
void tok_workspace_destroy(tok_workspace_t *ws); /* NULL is fine */
/* Forgets the word cache, so that the next encoding computes every word again as with a new
 * workspace, without allocating one (the fuzz harness compares cold and cached encodings). */
void tok_workspace_clear(tok_workspace_t *ws); /* NULL is fine */

/*
 * Appends the ids of text[0..len) to out (text need not be NUL-terminated, may hold any
 * bytes). ws must have been created for this vocab, or be NULL. On failure out->n is
 * restored.
 */
tdm_status_t tok_encode(const tok_vocab_t *vocab, tok_workspace_t *ws, const char *text, size_t len,
                        unsigned flags, tok_ids_t *out, tdm_error_t *err);

/* ---- decoding ------------------------------------------------------------------------- */

enum tok_decode_flags {
    TOK_DEC_RENDER_SPECIAL = 1u << 0, /* emit CONTROL/UNKNOWN token texts (else nothing) */
};

/*
 * The bytes token `id` stands for: NORMAL/BYTE tokens are mapped back through the GPT-2
 * byte table, USER_DEFINED tokens are their text, CONTROL and UNKNOWN tokens their text
 * only with TOK_DEC_RENDER_SPECIAL (llama.cpp renders <|channel|>, <|message|>, <|start|>
 * and <|constrain|> always; so do we). *len may be 0. NULL for a bad id.
 */
const char *tok_token_bytes(const tok_vocab_t *vocab, tok_id_t id, unsigned flags, size_t *len);

/* Whole-sequence decode: the exact bytes (possibly invalid UTF-8 if ids cut a character),
 * malloc'ed and NUL-terminated. A bad id is TDM_ERR_INVALID_PARAM. */
tdm_status_t tok_decode(const tok_vocab_t *vocab, const tok_id_t *ids, size_t n, unsigned flags,
                        char **out, size_t *out_len, tdm_error_t *err);

/*
 * Streaming decode for one sequence: feed ids one at a time and get back only complete
 * UTF-8 (never half a character). An ill-formed sequence is replaced by U+FFFD per maximal
 * subpart (as Python's errors="replace"); an incomplete one is held until the next token,
 * and turned into U+FFFD by tok_decode_stream_flush at the end.
 */
typedef struct tok_decode_stream {
    const tok_vocab_t *vocab;
    unsigned flags;
    uint8_t pending[4]; /* bytes of an incomplete character */
    uint8_t n_pending;
    char *buf; /* output of the last call */
    size_t len, cap;
} tok_decode_stream_t;

void tok_decode_stream_init(tok_decode_stream_t *s, const tok_vocab_t *vocab, unsigned flags);
void tok_decode_stream_free(tok_decode_stream_t *s);
/* *text (valid until the next call on s) receives the newly complete UTF-8, *len its size. */
tdm_status_t tok_decode_stream_feed(tok_decode_stream_t *s, tok_id_t id, const char **text,
                                    size_t *len, tdm_error_t *err);
tdm_status_t tok_decode_stream_flush(tok_decode_stream_t *s, const char **text, size_t *len,
                                     tdm_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
