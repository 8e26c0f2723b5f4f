/*
 * tokenizer.c - byte-level BPE: vocabulary construction, special-token partition,
 * PCRE2 pre-tokenization, rank-ordered merges, and (streaming) decoding.
 *
 * Data layout, chosen for encode speed:
 *   - token texts live in one blob; a string hash table (XXH3) maps text -> id;
 *   - merges are keyed by the *ids* of their two parts, so the merge loop never touches
 *     strings: (left_id, right_id) -> (rank, result_id) in an open-addressing table;
 *   - special tokens are matched with a byte trie (leftmost-longest, one pass over the text);
 *   - each workspace keeps a bounded cache from pre-token bytes to their ids;
 *   - NFC (libunistring) runs only on fragments that fail Unicode's NFC quick check
 *     (UAX #15): all of U+0000..U+02FF passes, a per-vocabulary bitmap derived from
 *     libunistring's own data at load gives NFC_Quick_Check = Yes up to U+2FFFF (above:
 *     Yes when there is no canonical decomposition), and combining classes must not
 *     decrease.
 * The GGUF loader is in tokenizer_gguf.c; it calls tok_vocab_build_ (tokenizer_internal.h).
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/tokenizer_internal.h"

#include "common/check.h"
#include "common/log.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <unictype.h>
#include <uninorm.h>
#include <xxhash.h>

/* ------------------------------------------------------------------------------------ */
/* UTF-8 helpers                                                                         */

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0 if ill-formed / truncated. */
static size_t utf8_valid_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) {
            return 0;
        }
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F)) {
            return 0;
        }
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) {
            return 0;
        }
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F)) {
            return 0;
        }
        return 4;
    }
    return 0;
}

/*
 * Length of the maximal prefix of s[0..n) that could still begin a well-formed sequence
 * (Unicode "maximal subpart"): 1..3 if s is a proper prefix of a valid sequence, else 0.
 * Used to hold back an incomplete character in the streaming decoder and to replace
 * ill-formed input with one U+FFFD per maximal subpart.
 */
static size_t utf8_partial_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) {
            lo = 0xA0;
        } else if (c == 0xED) {
            hi = 0x9F;
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F;
        }
    } else {
        return 0;
    }
    size_t k = 1;
    while (k < n && k < need) {
        uint8_t b = s[k];
        if (k == 1 ? (b < lo || b > hi) : ((b & 0xC0) != 0x80)) {
            break;
        }
        k++;
    }
    return k < need ? k : 0;
}

static uint32_t utf8_decode(const uint8_t *s, size_t len)
{
    switch (len) {
    case 1:
        return s[0];
    case 2:
        return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3:
        return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
}

static size_t utf8_encode(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode White_Space (the set llama.cpp and HF's regex engines use for \s). */
static bool is_white_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* ------------------------------------------------------------------------------------ */
/* GPT-2 byte <-> unicode table                                                          */

/* Bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF stand for themselves; the other 68 bytes map, in
 * increasing order, to U+0100, U+0101, ... */
static uint32_t byte_to_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) {
        return b;
    }
    uint32_t k = 0; /* rank of b among the remapped bytes */
    for (uint32_t x = 0; x < b; x++) {
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) {
            k++;
        }
    }
    return 0x100 + k;
}

/* ------------------------------------------------------------------------------------ */
/* Pre-tokenizers                                                                        */

/* Unicode White_Space written out: PCRE2's \s under UCP lacks U+0085, while HF (Oniguruma)
 * and llama.cpp both use White_Space. \s and \S in the patterns below are spelled with it. */
#define WS                                                                                       \
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{" \
    "202F}\\x{205F}\\x{3000}"
#define S_  "[" WS "]"
#define NS_ "[^" WS "]"

#define RE_GPT2                                                                                   \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" S_ "+(?!" NS_ ")|" S_ \
    "+"

/* llama3 / qwen2 share everything except the digit run length. */
#define RE_LLAMA3_LIKE(CONTR, DIGITS)                                                       \
    CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" DIGITS "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|" S_ \
          "*[\\r\\n]+|" S_ "+(?!" NS_ ")|" S_ "+"

static const char *const re_gpt2[] = {RE_GPT2};
static const char *const re_smollm[] = {"\\p{N}", RE_GPT2};
/* llama.cpp spells the contractions with ASCII classes for llama3 ... */
static const char *const re_llama3[] = {
    RE_LLAMA3_LIKE("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])", "\\p{N}{1,3}")};
/* ... while Qwen's tokenizer.json uses (?i:...), which the HF oracle runs as written. */
static const char *const re_qwen2[] = {RE_LLAMA3_LIKE("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "\\p{N}")};
#define O200K_UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define O200K_LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define O200K_CONTR "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
static const char *const re_o200k[] = {
    "[^\\r\\n\\p{L}\\p{N}]?" O200K_UPPER "*" O200K_LOWER "+" O200K_CONTR
    "|[^\\r\\n\\p{L}\\p{N}]?" O200K_UPPER "+" O200K_LOWER "*" O200K_CONTR "|\\p{N}{1,3}| ?[^" WS
    "\\p{L}\\p{N}]+[\\r\\n/]*|" S_ "*[\\r\\n]+|" S_ "+(?!" NS_ ")|" S_ "+"};
static const char *const re_default[] = {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+",
                                         "[0-9][0-9][0-9]"};

typedef struct pre_spec {
    const char *name;    /* canonical name                            */
    const char *aliases; /* other tokenizer.ggml.pre values, '|'-separated */
    const char *const *re;
    uint32_t n_re;
    bool ignore_merges; /* a piece that is itself a token is emitted as is */
    bool add_bos;       /* default of add_bos_token                          */
    bool nfc;           /* default normalizer is NFC (coordinator/README.md)  */
} pre_spec_t;

static const pre_spec_t pre_specs[] = {
    {"default", "", re_default, 4, false, false, false},
    {"gpt-2", "gpt2", re_gpt2, 1, false, false, false},
    {"llama3", "llama-bpe|llama-v3", re_llama3, 1, true, true, false},
    /* Every Qwen2/2.5/3 tokenizer.json has an NFC normalizer. */
    {"qwen2", "deepseek-r1-qwen", re_qwen2, 1, false, false, true},
    {"smollm", "starcoder|refact|command-r", re_smollm, 2, false, false, false},
    /* HF's gpt-oss tokenizer.json and tiktoken both use ignore_merges for o200k. */
    {"gpt-4o", "o200k|minimax-m2", re_o200k, 1, true, false, false},
};

static bool name_in_list(const char *name, const char *list)
{
    size_t n = strlen(name);
    const char *p = list;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) {
            return true;
        }
        p += len + (bar ? 1 : 0);
    }
    return false;
}

static const pre_spec_t *pre_find(const char *name)
{
    for (size_t i = 0; i < TDM_ARRAY_SIZE(pre_specs); i++) {
        if (strcmp(pre_specs[i].name, name) == 0 || name_in_list(name, pre_specs[i].aliases)) {
            return &pre_specs[i];
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* Vocabulary                                                                            */

#define TOK_MAX_RE 4

/* tflags bits */
enum {
    TF_EOG = 1u << 0,
    TF_RENDER_ALWAYS = 1u << 1, /* rendered even without TOK_DEC_RENDER_SPECIAL */
};

typedef struct merge_slot {
    uint64_t key; /* (left << 32) | right; UINT64_MAX = empty */
    uint32_t rank;
    tok_id_t result;
} merge_slot_t;

typedef struct trie_node {
    int32_t child;   /* first child, -1 none */
    int32_t sibling; /* next sibling, -1 none */
    tok_id_t id;     /* token ending here, TOK_NONE if none */
    uint8_t byte;
} trie_node_t;

struct tok_vocab {
    uint32_t n_tokens;
    char *text_blob;
    uint64_t *text_off;
    uint32_t *text_len;
    uint8_t *types;
    uint8_t *attrs;
    uint8_t *tflags;
    char *dec_blob; /* decoded bytes per token */
    uint64_t *dec_off;
    uint32_t *dec_len;

    uint32_t *tmap; /* slot -> id + 1, 0 = empty */
    uint64_t tmap_mask;

    merge_slot_t *mslots;
    uint64_t mmask;
    uint32_t n_merges;

    tok_id_t byte_tok[256];
    uint8_t byte_enc[256][2]; /* UTF-8 of the byte's stand-in code point */
    uint8_t byte_enc_len[256];

    const pre_spec_t *pre;
    pcre2_code *re[TOK_MAX_RE];
    bool jit[TOK_MAX_RE];

    trie_node_t *trie;
    uint32_t n_trie;
    int32_t trie_root[256];

    tok_id_t bos, eos, eot, eom, pad;
    bool add_bos, add_eos;
    bool nfc;           /* NFC-normalize plain fragments before pre-tokenization */
    uint8_t *nfc_inert; /* bit per code point < NFC_INERT_END: NFC_Quick_Check = Yes
                           (see build_nfc_inert) */
    tok_id_t *eog;
    size_t n_eog;
};

static uint64_t hash_bytes(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

static uint64_t hash_pair(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return key;
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t c = 16;
    while (c < n) {
        c <<= 1;
    }
    return c;
}

tok_id_t tok_find_token(const tok_vocab_t *v, const char *text, size_t len)
{
    if (v == NULL || (text == NULL && len > 0)) {
        return TOK_NONE;
    }
    uint64_t i = hash_bytes(text, len) & v->tmap_mask;
    for (;;) {
        uint32_t e = v->tmap[i];
        if (e == 0) {
            return TOK_NONE;
        }
        tok_id_t id = (tok_id_t)(e - 1);
        if (v->text_len[id] == len && memcmp(v->text_blob + v->text_off[id], text, len) == 0) {
            return id;
        }
        i = (i + 1) & v->tmap_mask;
    }
}

static bool merge_lookup(const tok_vocab_t *v, tok_id_t a, tok_id_t b, uint32_t *rank,
                         tok_id_t *result)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = hash_pair(key) & v->mmask;
    for (;;) {
        const merge_slot_t *s = &v->mslots[i];
        if (s->key == key) {
            *rank = s->rank;
            *result = s->result;
            return true;
        }
        if (s->key == UINT64_MAX) {
            return false;
        }
        i = (i + 1) & v->mmask;
    }
}

static bool type_is_special(uint8_t t)
{
    return t == TOK_TYPE_CONTROL || t == TOK_TYPE_USER_DEFINED || t == TOK_TYPE_UNKNOWN;
}

/* Decoded bytes of one token into out (capacity >= 4 * len); returns the byte count. */
static size_t decode_token_text(const uint8_t *t, size_t len, uint8_t type, uint8_t *out,
                                const int16_t *cp_to_byte)
{
    if (type != TOK_TYPE_NORMAL && type != TOK_TYPE_BYTE && type != TOK_TYPE_UNDEFINED) {
        memcpy(out, t, len);
        return len;
    }
    size_t o = 0, i = 0;
    while (i < len) {
        size_t k = utf8_valid_len(t + i, len - i);
        if (k == 0) { /* not UTF-8: copy the byte */
            out[o++] = t[i++];
            continue;
        }
        uint32_t cp = utf8_decode(t + i, k);
        if (cp < 0x144 && cp_to_byte[cp] >= 0) {
            out[o++] = (uint8_t)cp_to_byte[cp];
        } else { /* not a byte stand-in: keep the character */
            memcpy(out + o, t + i, k);
            o += k;
        }
        i += k;
    }
    return o;
}

static tdm_status_t trie_add(tok_vocab_t *v, tok_id_t id, uint32_t *cap)
{
    const uint8_t *t = (const uint8_t *)v->text_blob + v->text_off[id];
    uint32_t len = v->text_len[id];
    int32_t *link = &v->trie_root[t[0]];
    int32_t node = -1;
    for (uint32_t i = 0; i < len; i++) {
        /* find child with byte t[i] in the list starting at *link */
        int32_t c = *link;
        while (c >= 0 && v->trie[c].byte != t[i]) {
            c = v->trie[c].sibling;
        }
        if (c < 0) {
            if (v->n_trie == *cap) {
                uint32_t ncap = *cap ? *cap * 2 : 256;
                trie_node_t *nt = realloc(v->trie, (size_t)ncap * sizeof(*nt));
                if (nt == NULL) {
                    return TDM_ERR_NO_MEMORY;
                }
                v->trie = nt;
                *cap = ncap;
            }
            c = (int32_t)v->n_trie++;
            v->trie[c].child = -1;
            v->trie[c].id = TOK_NONE;
            v->trie[c].byte = t[i];
            if (i == 0) {
                v->trie[c].sibling = -1;
                *link = c; /* root slot per first byte: one node */
            } else {
                v->trie[c].sibling = v->trie[node].child;
                v->trie[node].child = c;
            }
        }
        node = c;
        if (i + 1 < len) {
            link = &v->trie[node].child;
        }
    }
    if (v->trie[node].id == TOK_NONE) { /* duplicate texts: the lowest id wins */
        v->trie[node].id = id;
    }
    return TDM_OK;
}

static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>",         "<|return|>",        "<|call|>",
    "<|flush|>",  "<|calls|>",  "<end_of_turn>",   "<|endoftext|>",     "<|eom_id|>",
    "<EOT>",      "_<EOT>",     "<|end_of_text|>", "<end_of_utterance>"};

static const char *const render_always_texts[] = {"<|channel|>", "<|message|>", "<|start|>",
                                                  "<|constrain|>"};

static int cmp_id(const void *a, const void *b)
{
    tok_id_t x = *(const tok_id_t *)a, y = *(const tok_id_t *)b;
    return (x > y) - (x < y);
}

static tdm_status_t build_eog(tok_vocab_t *v)
{
    tok_id_t tmp[32];
    size_t n = 0;
    tok_id_t fixed[3] = {v->eos, v->eot, v->eom};
    for (size_t i = 0; i < 3; i++) {
        if (fixed[i] != TOK_NONE) {
            tmp[n++] = fixed[i];
        }
    }
    for (size_t i = 0; i < TDM_ARRAY_SIZE(eog_texts); i++) {
        tok_id_t id = tok_find_token(v, eog_texts[i], strlen(eog_texts[i]));
        if (id != TOK_NONE) {
            tmp[n++] = id;
            /* llama.cpp makes these CONTROL whatever the file says, so user text cannot
             * produce them without parse_special. */
            if (v->types[id] != TOK_TYPE_CONTROL) {
                TDM_DEBUG("tokenizer", "token '%s' (%d) is end-of-generation; treating as control",
                          eog_texts[i], id);
                v->types[id] = TOK_TYPE_CONTROL;
            }
        }
    }
    /* Harmony (gpt-oss): <|end|> separates messages inside one generation. */
    tok_id_t end = tok_find_token(v, "<|end|>", 7);
    bool harmony = tok_find_token(v, "<|return|>", 10) != TOK_NONE &&
                   tok_find_token(v, "<|call|>", 8) != TOK_NONE;
    bool calls_flush = tok_find_token(v, "<|calls|>", 9) != TOK_NONE &&
                       tok_find_token(v, "<|flush|>", 9) != TOK_NONE;
    qsort(tmp, n, sizeof(tmp[0]), cmp_id);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && tmp[m - 1] == tmp[i]) {
            continue;
        }
        if ((harmony || calls_flush) && tmp[i] == end) {
            continue;
        }
        tmp[m++] = tmp[i];
    }
    v->eog = malloc((m ? m : 1) * sizeof(tok_id_t));
    if (v->eog == NULL) {
        return TDM_ERR_NO_MEMORY;
    }
    memcpy(v->eog, tmp, m * sizeof(tok_id_t));
    v->n_eog = m;
    for (size_t i = 0; i < m; i++) {
        v->tflags[v->eog[i]] |= TF_EOG;
    }
    for (size_t i = 0; i < TDM_ARRAY_SIZE(render_always_texts); i++) {
        tok_id_t id = tok_find_token(v, render_always_texts[i], strlen(render_always_texts[i]));
        if (id != TOK_NONE) {
            v->tflags[id] |= TF_RENDER_ALWAYS;
        }
    }
    return TDM_OK;
}

static tdm_status_t compile_pre(tok_vocab_t *v, tdm_error_t *err)
{
    for (uint32_t i = 0; i < v->pre->n_re; i++) {
        int ec = 0;
        PCRE2_SIZE eo = 0;
        v->re[i] = pcre2_compile((PCRE2_SPTR)v->pre->re[i], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
        if (v->re[i] == NULL) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            return tdm_error_set(err, TDM_ERR_INTERNAL,
                                 "tokenizer: pre-tokenizer '%s' regex %u does not compile at "
                                 "offset %zu: %s",
                                 v->pre->name, i, (size_t)eo, (const char *)msg);
        }
        v->jit[i] = pcre2_jit_compile(v->re[i], PCRE2_JIT_COMPLETE) == 0;
        if (!v->jit[i]) {
            TDM_DEBUG("tokenizer", "pcre2 jit unavailable for '%s' regex %u; interpreting",
                      v->pre->name, i);
        }
    }
    return TDM_OK;
}

#define NFC_INERT_END 0x30000u

/*
 * A code point is NFC-inert (NFC_Quick_Check = Yes) when it is its own NFC (no singleton or
 * excluded decomposition: != No) and never the second part of a primary composite (!=
 * Maybe). The primary composites are found among the code points below NFC_INERT_END (all
 * of Unicode's lie there). A string of inert code points whose nonzero combining classes
 * never decrease is NFC (UAX #15 quick check).
 */
static tdm_status_t build_nfc_inert(tok_vocab_t *v, tdm_error_t *err)
{
    uint8_t *bits = malloc(NFC_INERT_END / 8);
    if (bits == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    memset(bits, 0xFF, NFC_INERT_END / 8);
    for (uint32_t cp = 0; cp < NFC_INERT_END; cp++) {
        ucs4_t d[UC_DECOMPOSITION_MAX_LENGTH];
        int nd = uc_canonical_decomposition(cp, d);
        bool primary = nd == 2 && uc_composition(d[0], d[1]) == cp;
        bool inert = nd < 0 || primary;
        if (primary && d[1] < NFC_INERT_END) {
            bits[d[1] >> 3] &= (uint8_t) ~(1u << (d[1] & 7));
        }
        if (!inert) {
            bits[cp >> 3] &= (uint8_t) ~(1u << (cp & 7));
        }
    }
    v->nfc_inert = bits;
    return TDM_OK;
}

tdm_status_t tok_vocab_build_(const tok_build_t *b, tok_vocab_t **out, tdm_error_t *err)
{
    tdm_status_t st = TDM_OK;
    if (b == NULL || out == NULL || (b->n_tokens > 0 && b->tokens == NULL) ||
        (b->n_merges > 0 && b->merges == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: null vocabulary arrays");
    }
    if (b->n_tokens == 0 || b->n_tokens > (uint32_t)INT32_MAX - 1) {
        return tdm_error_set(err, TDM_ERR_FORMAT, "tokenizer: vocabulary size %u out of range",
                             b->n_tokens);
    }
    const char *pre_name = b->pre ? b->pre : "default";
    const pre_spec_t *pre = pre_find(pre_name);
    if (pre == NULL) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "tokenizer: unknown pre-tokenizer '%s' (tokenizer.ggml.pre); "
                             "supported: default, gpt-2, llama3/llama-bpe/llama-v3, qwen2, "
                             "smollm, gpt-4o/minimax-m2",
                             pre_name);
    }
    if (b->normalizer != TOK_NORM_DEFAULT && b->normalizer != TOK_NORM_NONE &&
        b->normalizer != TOK_NORM_NFC) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: unknown normalizer %d",
                             (int)b->normalizer);
    }
    tok_id_t special_ids[5] = {b->bos, b->eos, b->eot, b->eom, b->pad};
    static const char *const special_names[5] = {"bos", "eos", "eot", "eom", "padding"};
    for (int i = 0; i < 5; i++) {
        if (special_ids[i] != TOK_NONE &&
            (special_ids[i] < 0 || (uint32_t)special_ids[i] >= b->n_tokens)) {
            return tdm_error_set(err, TDM_ERR_FORMAT,
                                 "tokenizer: %s token id %d out of range (vocabulary has %u "
                                 "tokens)",
                                 special_names[i], special_ids[i], b->n_tokens);
        }
    }

    tok_vocab_t *v = calloc(1, sizeof(*v));
    if (v == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    v->n_tokens = b->n_tokens;
    v->pre = pre;
    v->bos = b->bos;
    v->eos = b->eos;
    v->eot = b->eot;
    v->eom = b->eom;
    v->pad = b->pad;
    v->add_bos = b->add_bos < 0 ? pre->add_bos : b->add_bos != 0;
    v->add_eos = b->add_eos > 0;
    v->nfc = b->normalizer == TOK_NORM_DEFAULT ? pre->nfc : b->normalizer == TOK_NORM_NFC;
    uint32_t n = b->n_tokens;

    /* texts */
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (b->tokens[i].ptr == NULL && b->tokens[i].len > 0) {
            st = tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: token %u is null", i);
            goto fail;
        }
        if (b->tokens[i].len > UINT32_MAX / 8) {
            st = tdm_error_set(err, TDM_ERR_FORMAT, "tokenizer: token %u is too long (%llu bytes)",
                               i, (unsigned long long)b->tokens[i].len);
            goto fail;
        }
        total += b->tokens[i].len + 1;
    }
    v->text_blob = malloc(total ? total : 1);
    v->text_off = malloc((size_t)n * sizeof(uint64_t));
    v->text_len = malloc((size_t)n * sizeof(uint32_t));
    v->types = malloc(n);
    v->attrs = calloc(n, 1);
    v->tflags = calloc(n, 1);
    v->dec_off = malloc((size_t)n * sizeof(uint64_t));
    v->dec_len = malloc((size_t)n * sizeof(uint32_t));
    /* a code point of up to 4 bytes decodes to at most 4 bytes; raw copies are 1:1 */
    v->dec_blob = malloc(total ? total : 1);
    if (!v->text_blob || !v->text_off || !v->text_len || !v->types || !v->attrs || !v->tflags ||
        !v->dec_off || !v->dec_len || !v->dec_blob) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory for %u tokens", n);
        goto fail;
    }
    int16_t cp_to_byte[0x144];
    for (int i = 0; i < 0x144; i++) {
        cp_to_byte[i] = -1;
    }
    for (int bt = 0; bt < 256; bt++) {
        uint32_t cp = byte_to_cp((uint8_t)bt);
        cp_to_byte[cp] = (int16_t)bt;
        v->byte_enc_len[bt] = (uint8_t)utf8_encode(cp, v->byte_enc[bt]);
    }
    uint64_t off = 0, doff = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t len = (size_t)b->tokens[i].len;
        if (len) {
            memcpy(v->text_blob + off, b->tokens[i].ptr, len);
        }
        v->text_blob[off + len] = '\0';
        v->text_off[i] = off;
        v->text_len[i] = (uint32_t)len;
        int32_t t = b->types ? b->types[i] : TOK_TYPE_NORMAL;
        if (t < 0 || t > TOK_TYPE_BYTE) {
            st =
                tdm_error_set(err, TDM_ERR_FORMAT, "tokenizer: token %u has invalid type %d", i, t);
            goto fail;
        }
        v->types[i] = (uint8_t)t;
        if (b->attrs) {
            v->attrs[i] = b->attrs[i] & (TOK_ATTR_LSTRIP | TOK_ATTR_RSTRIP);
        }
        size_t dl = decode_token_text((const uint8_t *)v->text_blob + off, len, v->types[i],
                                      (uint8_t *)v->dec_blob + doff, cp_to_byte);
        v->dec_off[i] = doff;
        v->dec_len[i] = (uint32_t)dl;
        doff += dl;
        off += len + 1;
    }

    /* text -> id */
    uint64_t tcap = pow2_at_least((uint64_t)n * 2);
    v->tmap = calloc(tcap, sizeof(uint32_t));
    if (v->tmap == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
        goto fail;
    }
    v->tmap_mask = tcap - 1;
    for (uint32_t i = 0; i < n; i++) {
        const char *t = v->text_blob + v->text_off[i];
        if (tok_find_token(v, t, v->text_len[i]) != TOK_NONE) {
            continue; /* duplicate text: the lowest id keeps it */
        }
        uint64_t s = hash_bytes(t, v->text_len[i]) & v->tmap_mask;
        while (v->tmap[s] != 0) {
            s = (s + 1) & v->tmap_mask;
        }
        v->tmap[s] = i + 1;
    }
    uint32_t missing_bytes = 0;
    for (int bt = 0; bt < 256; bt++) {
        v->byte_tok[bt] = tok_find_token(v, (const char *)v->byte_enc[bt], v->byte_enc_len[bt]);
        if (v->byte_tok[bt] == TOK_NONE) {
            missing_bytes++;
        }
    }
    if (missing_bytes) {
        /* llama.cpp drops such bytes too (SmolLM2 lacks 21 of them) */
        TDM_INFO("tokenizer",
                 "%u of the 256 byte tokens are missing; text with those bytes "
                 "loses them",
                 missing_bytes);
    }

    /* merges by part ids */
    uint64_t mcap = pow2_at_least((uint64_t)b->n_merges * 2 + 2);
    v->mslots = malloc(mcap * sizeof(merge_slot_t));
    if (v->mslots == NULL) {
        st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory for %u merges",
                           b->n_merges);
        goto fail;
    }
    for (uint64_t i = 0; i < mcap; i++) {
        v->mslots[i].key = UINT64_MAX;
    }
    v->mmask = mcap - 1;
    uint32_t skipped = 0;
    char *cat = NULL;
    size_t cat_cap = 0;
    for (uint32_t r = 0; r < b->n_merges; r++) {
        const char *m = b->merges[r].ptr;
        size_t ml = (size_t)b->merges[r].len;
        const char *sp = (m && ml > 1) ? memchr(m + 1, ' ', ml - 1) : NULL;
        if (sp == NULL) {
            st = tdm_error_set(err, TDM_ERR_FORMAT,
                               "tokenizer: merge %u is not of the form 'A B' (%zu bytes)", r, ml);
            goto fail_cat;
        }
        size_t la = (size_t)(sp - m), lb = ml - la - 1;
        tok_id_t a = tok_find_token(v, m, la);
        tok_id_t c = tok_find_token(v, sp + 1, lb);
        if (la + lb > cat_cap) {
            cat_cap = (la + lb) * 2;
            char *nc = realloc(cat, cat_cap);
            if (nc == NULL) {
                st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
                goto fail_cat;
            }
            cat = nc;
        }
        memcpy(cat, m, la);
        memcpy(cat + la, sp + 1, lb);
        tok_id_t res = tok_find_token(v, cat, la + lb);
        if (a == TOK_NONE || c == TOK_NONE || res == TOK_NONE) {
            skipped++;
            continue;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)c;
        uint64_t s = hash_pair(key) & v->mmask;
        while (v->mslots[s].key != UINT64_MAX && v->mslots[s].key != key) {
            s = (s + 1) & v->mmask;
        }
        if (v->mslots[s].key == key) {
            continue; /* duplicate merge: the lower rank stays */
        }
        v->mslots[s].key = key;
        v->mslots[s].rank = r;
        v->mslots[s].result = res;
        v->n_merges++;
    }
    free(cat);
    cat = NULL;
    if (skipped) {
        TDM_WARN("tokenizer", "%u of %u merges name tokens absent from the vocabulary; ignored",
                 skipped, b->n_merges);
    }

    TDM_CHECK_GOTO(build_eog(v), st, fail_nomem);

    /* special-token trie */
    for (int i = 0; i < 256; i++) {
        v->trie_root[i] = -1;
    }
    uint32_t trie_cap = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (type_is_special(v->types[i]) && v->text_len[i] > 0) {
            TDM_CHECK_GOTO(trie_add(v, (tok_id_t)i, &trie_cap), st, fail_nomem);
        }
    }

    TDM_CHECK_GOTO(compile_pre(v, err), st, fail);
    if (v->nfc) {
        TDM_CHECK_GOTO(build_nfc_inert(v, err), st, fail);
    }
    *out = v;
    return TDM_OK;

fail_cat:
    free(cat);
    goto fail;
fail_nomem:
    st = tdm_error_set(err, st, "tokenizer: out of memory");
fail:
    tok_vocab_destroy(v);
    return st;
}

tdm_status_t tok_vocab_create(const tok_vocab_desc_t *d, tok_vocab_t **out, tdm_error_t *err)
{
    if (d == NULL || out == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: null descriptor");
    }
    if ((d->n_tokens > 0 && d->tokens == NULL) || (d->n_merges > 0 && d->merges == NULL)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: null vocabulary arrays");
    }
    tok_str_t *toks = malloc(((size_t)d->n_tokens + 1) * sizeof(tok_str_t));
    tok_str_t *merges = malloc(((size_t)d->n_merges + 1) * sizeof(tok_str_t));
    if (toks == NULL || merges == NULL) {
        free(toks);
        free(merges);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    for (uint32_t i = 0; i < d->n_tokens; i++) {
        toks[i].ptr = d->tokens[i];
        toks[i].len = d->tokens[i] ? strlen(d->tokens[i]) : 0;
    }
    for (uint32_t i = 0; i < d->n_merges; i++) {
        merges[i].ptr = d->merges[i];
        merges[i].len = d->merges[i] ? strlen(d->merges[i]) : 0;
    }
    tok_build_t b = {
        .pre = d->pre,
        .n_tokens = d->n_tokens,
        .tokens = toks,
        .types = d->types,
        .attrs = d->attrs,
        .n_merges = d->n_merges,
        .merges = merges,
        .bos = d->bos,
        .eos = d->eos,
        .eot = d->eot,
        .eom = d->eom,
        .pad = d->pad,
        .add_bos = d->add_bos,
        .add_eos = d->add_eos,
        .normalizer = d->normalizer,
    };
    tdm_status_t st = tok_vocab_build_(&b, out, err);
    free(toks);
    free(merges);
    return st;
}

void tok_vocab_destroy(tok_vocab_t *v)
{
    if (v == NULL) {
        return;
    }
    for (int i = 0; i < TOK_MAX_RE; i++) {
        pcre2_code_free(v->re[i]);
    }
    free(v->text_blob);
    free(v->text_off);
    free(v->text_len);
    free(v->types);
    free(v->attrs);
    free(v->tflags);
    free(v->dec_blob);
    free(v->dec_off);
    free(v->dec_len);
    free(v->tmap);
    free(v->mslots);
    free(v->trie);
    free(v->eog);
    free(v->nfc_inert);
    free(v);
}

uint32_t tok_vocab_n_tokens(const tok_vocab_t *v)
{
    return v->n_tokens;
}
const char *tok_vocab_pre(const tok_vocab_t *v)
{
    return v->pre->name;
}
tok_id_t tok_vocab_bos(const tok_vocab_t *v)
{
    return v->bos;
}
tok_id_t tok_vocab_eos(const tok_vocab_t *v)
{
    return v->eos;
}
tok_id_t tok_vocab_eot(const tok_vocab_t *v)
{
    return v->eot;
}
tok_id_t tok_vocab_pad(const tok_vocab_t *v)
{
    return v->pad;
}
bool tok_vocab_add_bos(const tok_vocab_t *v)
{
    return v->add_bos;
}
bool tok_vocab_add_eos(const tok_vocab_t *v)
{
    return v->add_eos;
}
bool tok_vocab_nfc(const tok_vocab_t *v)
{
    return v->nfc;
}
uint32_t tok_vocab_n_merges(const tok_vocab_t *v)
{
    return v->n_merges;
}

static bool id_ok(const tok_vocab_t *v, tok_id_t id)
{
    return v != NULL && id >= 0 && (uint32_t)id < v->n_tokens;
}

const char *tok_token_text(const tok_vocab_t *v, tok_id_t id, size_t *len)
{
    if (!id_ok(v, id)) {
        return NULL;
    }
    if (len) {
        *len = v->text_len[id];
    }
    return v->text_blob + v->text_off[id];
}

tok_type_t tok_token_type(const tok_vocab_t *v, tok_id_t id)
{
    return id_ok(v, id) ? (tok_type_t)v->types[id] : TOK_TYPE_UNDEFINED;
}

bool tok_is_eog(const tok_vocab_t *v, tok_id_t id)
{
    return id_ok(v, id) && (v->tflags[id] & TF_EOG);
}

const tok_id_t *tok_eog_ids(const tok_vocab_t *v, size_t *n)
{
    *n = v->n_eog;
    return v->eog;
}

/* ------------------------------------------------------------------------------------ */
/* Workspace                                                                             */

typedef struct span {
    size_t a, b; /* [a, b) in the input text */
} span_t;

typedef struct heap_ent {
    uint32_t rank;
    uint32_t left;
    uint32_t right;
    tok_id_t lid, rid;
} heap_ent_t;

/* Cache of pre-token -> ids. Bounded: cleared when full. */
#define CACHE_SLOTS     (1u << 16)
#define CACHE_MAX_ENTS  (1u << 15)
#define CACHE_MAX_KEY   64
#define CACHE_KEY_BYTES (CACHE_MAX_ENTS * 16u)
#define CACHE_ID_CAP    (CACHE_MAX_ENTS * 4u)

typedef struct cache_slot {
    uint64_t hash;
    uint32_t key_off;
    uint32_t ids_off;
    uint16_t key_len; /* 0 = empty */
    uint16_t n_ids;
} cache_slot_t;

struct tok_workspace {
    const tok_vocab_t *vocab;
    pcre2_match_data *md;
    span_t *sp[2];
    size_t sp_cap[2];
    tok_id_t *sym_id;
    int32_t *sym_prev, *sym_next;
    size_t sym_cap;
    heap_ent_t *heap;
    size_t heap_n, heap_cap;
    uint8_t *benc;
    size_t benc_cap;
    uint8_t *nfc_buf; /* NFC of the current fragment */
    size_t nfc_cap;
    /* cache */
    cache_slot_t *cslots;
    uint8_t *ckeys;
    tok_id_t *cids;
    uint32_t c_ents, c_key_used, c_ids_used;
};

tdm_status_t tok_workspace_create(const tok_vocab_t *v, tok_workspace_t **out, tdm_error_t *err)
{
    if (v == NULL || out == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: null vocabulary");
    }
    tok_workspace_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    ws->vocab = v;
    ws->md = pcre2_match_data_create(4, NULL);
    ws->cslots = calloc(CACHE_SLOTS, sizeof(cache_slot_t));
    ws->ckeys = malloc(CACHE_KEY_BYTES);
    ws->cids = malloc(CACHE_ID_CAP * sizeof(tok_id_t));
    if (ws->md == NULL || ws->cslots == NULL || ws->ckeys == NULL || ws->cids == NULL) {
        tok_workspace_destroy(ws);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    *out = ws;
    return TDM_OK;
}

void tok_workspace_destroy(tok_workspace_t *ws)
{
    if (ws == NULL) {
        return;
    }
    pcre2_match_data_free(ws->md);
    free(ws->sp[0]);
    free(ws->sp[1]);
    free(ws->sym_id);
    free(ws->sym_prev);
    free(ws->sym_next);
    free(ws->heap);
    free(ws->benc);
    free(ws->nfc_buf);
    free(ws->cslots);
    free(ws->ckeys);
    free(ws->cids);
    free(ws);
}

static void cache_clear(tok_workspace_t *ws)
{
    memset(ws->cslots, 0, CACHE_SLOTS * sizeof(cache_slot_t));
    ws->c_ents = ws->c_key_used = ws->c_ids_used = 0;
}

void tok_workspace_clear(tok_workspace_t *ws)
{
    if (ws != NULL) {
        cache_clear(ws);
    }
}

static cache_slot_t *cache_find(tok_workspace_t *ws, const uint8_t *key, size_t len, uint64_t h)
{
    uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);
    for (;;) {
        cache_slot_t *s = &ws->cslots[i];
        if (s->key_len == 0) {
            return s;
        }
        if (s->hash == h && s->key_len == len && memcmp(ws->ckeys + s->key_off, key, len) == 0) {
            return s;
        }
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
}

static void cache_put(tok_workspace_t *ws, const uint8_t *key, size_t len, uint64_t h,
                      const tok_id_t *ids, size_t n)
{
    if (n > UINT16_MAX || n > CACHE_ID_CAP) {
        return;
    }
    if (ws->c_ents >= CACHE_MAX_ENTS || ws->c_key_used + len > CACHE_KEY_BYTES ||
        ws->c_ids_used + n > CACHE_ID_CAP) {
        cache_clear(ws);
    }
    cache_slot_t *s = cache_find(ws, key, len, h);
    if (s->key_len != 0) {
        return;
    }
    memcpy(ws->ckeys + ws->c_key_used, key, len);
    if (n > 0) {
        memcpy(ws->cids + ws->c_ids_used, ids, n * sizeof(tok_id_t));
    }
    s->hash = h;
    s->key_off = ws->c_key_used;
    s->key_len = (uint16_t)len;
    s->ids_off = ws->c_ids_used;
    s->n_ids = (uint16_t)n;
    ws->c_key_used += (uint32_t)len;
    ws->c_ids_used += (uint32_t)n;
    ws->c_ents++;
}

static tdm_status_t ids_reserve(tok_ids_t *o, size_t extra)
{
    if (o->n + extra <= o->cap) {
        return TDM_OK;
    }
    size_t cap = o->cap ? o->cap : 64;
    while (cap < o->n + extra) {
        cap *= 2;
    }
    tok_id_t *p = realloc(o->ids, cap * sizeof(tok_id_t));
    if (p == NULL) {
        return TDM_ERR_NO_MEMORY;
    }
    o->ids = p;
    o->cap = cap;
    return TDM_OK;
}

static tdm_status_t ids_push(tok_ids_t *o, tok_id_t id)
{
    TDM_CHECK(ids_reserve(o, 1));
    o->ids[o->n++] = id;
    return TDM_OK;
}

void tok_ids_free(tok_ids_t *ids)
{
    if (ids) {
        free(ids->ids);
        ids->ids = NULL;
        ids->n = ids->cap = 0;
    }
}

static tdm_status_t grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) {
        return TDM_OK;
    }
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        c *= 2;
    }
    void *np = realloc(*p, c * elem);
    if (np == NULL) {
        return TDM_ERR_NO_MEMORY;
    }
    *p = np;
    *cap = c;
    return TDM_OK;
}

/* ------------------------------------------------------------------------------------ */
/* BPE on one pre-token                                                                  */

static bool heap_less(const heap_ent_t *x, const heap_ent_t *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static void heap_push(tok_workspace_t *ws, heap_ent_t e)
{
    size_t i = ws->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &ws->heap[p])) {
            break;
        }
        ws->heap[i] = ws->heap[p];
        i = p;
    }
    ws->heap[i] = e;
}

static heap_ent_t heap_pop(tok_workspace_t *ws)
{
    heap_ent_t top = ws->heap[0];
    heap_ent_t last = ws->heap[--ws->heap_n];
    size_t i = 0, n = ws->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && heap_less(&ws->heap[c + 1], &ws->heap[c])) {
            c++;
        }
        if (!heap_less(&ws->heap[c], &last)) {
            break;
        }
        ws->heap[i] = ws->heap[c];
        i = c;
    }
    if (n > 0) {
        ws->heap[i] = last;
    }
    return top;
}

static void try_pair(tok_workspace_t *ws, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) {
        return;
    }
    tok_id_t a = ws->sym_id[l], b = ws->sym_id[r];
    uint32_t rank;
    tok_id_t res;
    if (a == TOK_NONE || b == TOK_NONE || !merge_lookup(ws->vocab, a, b, &rank, &res)) {
        return;
    }
    heap_ent_t e = {rank, (uint32_t)l, (uint32_t)r, a, b};
    heap_push(ws, e);
}

/* Appends the ids of the byte string p[0..n) (one pre-token) to out. */
static tdm_status_t bpe_word(const tok_vocab_t *v, tok_workspace_t *ws, const uint8_t *p, size_t n,
                             tok_ids_t *out)
{
    if (n == 0) {
        return TDM_OK;
    }
    if (v->pre->ignore_merges && n > 1) {
        TDM_CHECK(grow((void **)&ws->benc, &ws->benc_cap, n * 2, 1));
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(ws->benc + k, v->byte_enc[p[i]], v->byte_enc_len[p[i]]);
            k += v->byte_enc_len[p[i]];
        }
        tok_id_t id = tok_find_token(v, (const char *)ws->benc, k);
        if (id != TOK_NONE && v->types[id] == TOK_TYPE_NORMAL) {
            return ids_push(out, id);
        }
    }
    if (n == 1) {
        return v->byte_tok[p[0]] == TOK_NONE ? TDM_OK : ids_push(out, v->byte_tok[p[0]]);
    }
    if (n > (size_t)INT32_MAX) {
        return TDM_ERR_OUT_OF_RANGE;
    }
    size_t cap = ws->sym_cap;
    TDM_CHECK(grow((void **)&ws->sym_id, &cap, n, sizeof(tok_id_t)));
    cap = ws->sym_cap;
    TDM_CHECK(grow((void **)&ws->sym_prev, &cap, n, sizeof(int32_t)));
    cap = ws->sym_cap;
    TDM_CHECK(grow((void **)&ws->sym_next, &cap, n, sizeof(int32_t)));
    ws->sym_cap = cap;
    TDM_CHECK(grow((void **)&ws->heap, &ws->heap_cap, n, sizeof(heap_ent_t)));
    for (size_t i = 0; i < n; i++) {
        ws->sym_id[i] = v->byte_tok[p[i]];
        ws->sym_prev[i] = (int32_t)i - 1;
        ws->sym_next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    ws->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        try_pair(ws, (int32_t)i, (int32_t)i + 1);
    }
    /* Each merge removes a symbol and pushes at most two pairs, so the heap never holds
     * more than 3n entries; grow once up front to keep the loop allocation-free. */
    TDM_CHECK(grow((void **)&ws->heap, &ws->heap_cap, 3 * n + 2, sizeof(heap_ent_t)));
    while (ws->heap_n > 0) {
        heap_ent_t e = heap_pop(ws);
        /* stale: a side was merged away or changed since the pair was queued */
        if (ws->sym_id[e.left] != e.lid || ws->sym_id[e.right] != e.rid ||
            ws->sym_next[e.left] != (int32_t)e.right) {
            continue;
        }
        uint32_t rank;
        tok_id_t res;
        if (!merge_lookup(v, e.lid, e.rid, &rank, &res)) {
            continue;
        }
        ws->sym_id[e.left] = res;
        ws->sym_id[e.right] = TOK_NONE;
        int32_t nx = ws->sym_next[e.right];
        ws->sym_next[e.left] = nx;
        ws->sym_next[e.right] = -2; /* dead */
        if (nx >= 0) {
            ws->sym_prev[nx] = (int32_t)e.left;
        }
        try_pair(ws, ws->sym_prev[e.left], (int32_t)e.left);
        try_pair(ws, (int32_t)e.left, nx);
    }
    TDM_CHECK(ids_reserve(out, n));
    for (int32_t i = 0; i >= 0; i = ws->sym_next[i]) {
        if (ws->sym_id[i] != TOK_NONE) {
            out->ids[out->n++] = ws->sym_id[i];
        }
    }
    return TDM_OK;
}

static tdm_status_t encode_piece(const tok_vocab_t *v, tok_workspace_t *ws, const uint8_t *p,
                                 size_t n, tok_ids_t *out)
{
    if (n == 0) {
        return TDM_OK;
    }
    if (n > CACHE_MAX_KEY) {
        return bpe_word(v, ws, p, n, out);
    }
    uint64_t h = hash_bytes(p, n);
    cache_slot_t *s = cache_find(ws, p, n, h);
    if (s->key_len != 0) {
        if (s->n_ids > 0) { /* 0 when every byte lacks a byte token */
            TDM_CHECK(ids_reserve(out, s->n_ids));
            memcpy(out->ids + out->n, ws->cids + s->ids_off, s->n_ids * sizeof(tok_id_t));
            out->n += s->n_ids;
        }
        return TDM_OK;
    }
    size_t before = out->n;
    TDM_CHECK(bpe_word(v, ws, p, n, out));
    cache_put(ws, p, n, h, out->ids + before, out->n - before);
    return TDM_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Pre-tokenization                                                                      */

/* Splits each span of in[0..nin) with regex r into matches and the gaps between them. */
static tdm_status_t regex_split(const tok_vocab_t *v, tok_workspace_t *ws, uint32_t r,
                                const uint8_t *text, const span_t *in, size_t nin, int dst,
                                size_t *nout, tdm_error_t *err)
{
    size_t no = 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ws->md);
    for (size_t k = 0; k < nin; k++) {
        const uint8_t *subj = text + in[k].a;
        size_t len = in[k].b - in[k].a;
        size_t pos = 0, gap = 0;
        while (pos < len) {
            int rc = v->jit[r] ? pcre2_jit_match(v->re[r], subj, len, pos, 0, ws->md, NULL)
                               : pcre2_match(v->re[r], subj, len, pos, 0, ws->md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) {
                break;
            }
            if (rc < 0) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(rc, msg, sizeof(msg));
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "tokenizer: pre-tokenizer regex failed at byte %zu: %s",
                                     (size_t)(in[k].a + pos), (const char *)msg);
            }
            size_t ms = ov[0], me = ov[1];
            if (me <= ms) { /* an empty match: step over one character */
                size_t step = ms < len ? utf8_valid_len(subj + ms, len - ms) : 1;
                pos = ms + (step ? step : 1);
                continue;
            }
            if (grow((void **)&ws->sp[dst], &ws->sp_cap[dst], no + 2, sizeof(span_t)) != TDM_OK) {
                return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
            }
            if (ms > gap) {
                ws->sp[dst][no++] = (span_t){in[k].a + gap, in[k].a + ms};
            }
            ws->sp[dst][no++] = (span_t){in[k].a + ms, in[k].a + me};
            pos = gap = me;
        }
        if (gap < len) {
            if (grow((void **)&ws->sp[dst], &ws->sp_cap[dst], no + 1, sizeof(span_t)) != TDM_OK) {
                return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
            }
            ws->sp[dst][no++] = (span_t){in[k].a + gap, in[k].b};
        }
    }
    *nout = no;
    return TDM_OK;
}

static tdm_status_t encode_fragment(const tok_vocab_t *v, tok_workspace_t *ws, const uint8_t *text,
                                    size_t a, size_t b, tok_ids_t *out, tdm_error_t *err)
{
    if (a >= b) {
        return TDM_OK;
    }
    span_t whole = {a, b};
    const span_t *cur = &whole;
    size_t ncur = 1;
    int dst = 0;
    for (uint32_t r = 0; r < v->pre->n_re; r++) {
        size_t nn = 0;
        TDM_CHECK(regex_split(v, ws, r, text, cur, ncur, dst, &nn, err));
        cur = ws->sp[dst];
        ncur = nn;
        dst ^= 1;
    }
    for (size_t i = 0; i < ncur; i++) {
        tdm_status_t st = encode_piece(v, ws, text + cur[i].a, cur[i].b - cur[i].a, out);
        if (st != TDM_OK) {
            return tdm_error_set(err, st, "tokenizer: %s while encoding", tdm_status_str(st));
        }
    }
    return TDM_OK;
}

/* NFC_Quick_Check = Yes (see build_nfc_inert). */
static bool nfc_qc_yes(const tok_vocab_t *v, uint32_t cp)
{
    if (cp < 0x300) {
        return true;
    }
    if (cp < NFC_INERT_END) {
        return (v->nfc_inert[cp >> 3] >> (cp & 7)) & 1;
    }
    ucs4_t dec[UC_DECOMPOSITION_MAX_LENGTH];
    return uc_canonical_decomposition(cp, dec) < 0;
}

static uint8_t nfc_ccc(uint32_t cp)
{
    return cp < 0x300 ? 0 : (uint8_t)uc_combining_class(cp);
}

/* The code point at s[0..k), k from utf8_valid_len (> 0). */
static uint32_t cp_at(const uint8_t *s, size_t k)
{
    return k > 1 ? utf8_decode(s, k) : s[0];
}

/* Appends s[0..n) to the workspace's NFC buffer at *on. */
static tdm_status_t nfc_append(tok_workspace_t *ws, size_t *on, const uint8_t *s, size_t n)
{
    if (n == 0) {
        return TDM_OK;
    }
    if (grow((void **)&ws->nfc_buf, &ws->nfc_cap, *on + n, 1) != TDM_OK) {
        return TDM_ERR_NO_MEMORY;
    }
    memcpy(ws->nfc_buf + *on, s, n);
    *on += n;
    return TDM_OK;
}

/*
 * NFC of the valid UTF-8 s[0..n) into ws->nfc_buf (*on receives the length). Only the
 * windows that fail the quick check are given to libunistring: a window runs from the last
 * boundary before the failing code point to the next boundary after it, a boundary being
 * the start of a code point with NFC_Quick_Check = Yes and combining class 0 (nothing
 * before it can reorder or compose with it, UAX #15), so NFC of the whole is the
 * concatenation of the windows' NFC and the untouched text between them.
 */
static tdm_status_t nfc_windows(const tok_vocab_t *v, tok_workspace_t *ws, const uint8_t *s,
                                size_t n, size_t *on)
{
    size_t copied = 0, bound = 0, i = 0;
    uint8_t last_ccc = 0;
    *on = 0;
    while (i < n) {
        size_t k = utf8_valid_len(s + i, n - i);
        uint32_t cp = cp_at(s + i, k);
        uint8_t ccc = nfc_ccc(cp);
        bool yes = nfc_qc_yes(v, cp);
        if (yes && ccc == 0) {
            bound = i;
        }
        if (yes && (ccc == 0 || last_ccc <= ccc)) {
            last_ccc = ccc;
            i += k;
            continue;
        }
        size_t e = i + k;
        while (e < n) {
            size_t k2 = utf8_valid_len(s + e, n - e);
            uint32_t cp2 = cp_at(s + e, k2);
            if (nfc_ccc(cp2) == 0 && nfc_qc_yes(v, cp2)) {
                break;
            }
            e += k2;
        }
        TDM_CHECK(nfc_append(ws, on, s + copied, bound - copied));
        uint8_t tmp[256];
        size_t len = sizeof(tmp);
        uint8_t *r = u8_normalize(UNINORM_NFC, s + bound, e - bound, tmp, &len);
        if (r == NULL) { /* input is valid UTF-8: only ENOMEM is expected */
            return TDM_ERR_NO_MEMORY;
        }
        tdm_status_t st = nfc_append(ws, on, r, len);
        if (r != tmp) {
            free(r);
        }
        TDM_CHECK(st);
        copied = bound = i = e;
        last_ccc = 0;
    }
    return nfc_append(ws, on, s + copied, n - copied);
}

/*
 * A plain fragment (text between special tokens): NFC-normalized first for an NFC vocabulary,
 * as HF runs its normalizer on the pieces between added tokens. Only a fragment that is valid
 * UTF-8 is normalized; one holding any ill-formed byte is encoded as it is (HF cannot take
 * such input at all, and this keeps decode(encode(x)) == x for it).
 */
static tdm_status_t encode_segment(const tok_vocab_t *v, tok_workspace_t *ws, const uint8_t *text,
                                   size_t a, size_t b, tok_ids_t *out, tdm_error_t *err)
{
    if (!v->nfc || a >= b) {
        return encode_fragment(v, ws, text, a, b, out, err);
    }
    const uint8_t *s = text + a;
    size_t n = b - a;
    size_t i = 0;
    while (i < n && s[i] < 0xCC) { /* below U+0300: NFC already */
        i++;
    }
    if (i == n) {
        return encode_fragment(v, ws, text, a, b, out, err);
    }
    /* validate from the start (a byte below 0xCC may be ill-formed) and run the quick check */
    bool yes = true;
    uint8_t last_ccc = 0;
    for (i = 0; i < n;) {
        size_t k = utf8_valid_len(s + i, n - i);
        if (k == 0) {
            return encode_fragment(v, ws, text, a, b, out, err);
        }
        if (yes) {
            uint32_t cp = cp_at(s + i, k);
            uint8_t ccc = nfc_ccc(cp);
            if (!nfc_qc_yes(v, cp) || (ccc != 0 && last_ccc > ccc)) {
                yes = false;
            }
            last_ccc = ccc;
        }
        i += k;
    }
    if (yes) {
        return encode_fragment(v, ws, text, a, b, out, err);
    }
    size_t on = 0;
    if (nfc_windows(v, ws, s, n, &on) != TDM_OK) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory in NFC");
    }
    return encode_fragment(v, ws, ws->nfc_buf, 0, on, out, err);
}

/* Whitespace (Unicode White_Space) ending at text[end) going back to no earlier than lo. */
static size_t ws_back(const uint8_t *text, size_t lo, size_t end)
{
    while (end > lo) {
        size_t s = end - 1;
        while (s > lo && (text[s] & 0xC0) == 0x80 && end - s < 4) {
            s--;
        }
        size_t k = utf8_valid_len(text + s, end - s);
        if (k != end - s || !is_white_space(utf8_decode(text + s, k))) {
            break;
        }
        end = s;
    }
    return end;
}

static size_t ws_fwd(const uint8_t *text, size_t pos, size_t hi)
{
    while (pos < hi) {
        size_t k = utf8_valid_len(text + pos, hi - pos);
        if (k == 0 || !is_white_space(utf8_decode(text + pos, k))) {
            break;
        }
        pos += k;
    }
    return pos;
}

/* Longest special token starting at text[pos] usable in this mode; TOK_NONE if none. */
static tok_id_t match_special(const tok_vocab_t *v, const uint8_t *text, size_t pos, size_t len,
                              bool parse_special, size_t *mlen)
{
    int32_t node = v->trie_root[text[pos]];
    tok_id_t best = TOK_NONE;
    size_t i = pos;
    while (node >= 0) {
        /* node matched text[i] */
        tok_id_t id = v->trie[node].id;
        if (id != TOK_NONE && (parse_special || v->types[id] == TOK_TYPE_USER_DEFINED)) {
            best = id;
            *mlen = i + 1 - pos;
        }
        i++;
        if (i >= len) {
            break;
        }
        int32_t c = v->trie[node].child;
        while (c >= 0 && v->trie[c].byte != text[i]) {
            c = v->trie[c].sibling;
        }
        node = c;
    }
    return best;
}

tdm_status_t tok_encode(const tok_vocab_t *v, tok_workspace_t *ws, const char *text_in, size_t len,
                        unsigned flags, tok_ids_t *out, tdm_error_t *err)
{
    if (v == NULL || out == NULL || (text_in == NULL && len > 0)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: null argument to encode");
    }
    if (ws != NULL && ws->vocab != v) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tokenizer: workspace belongs to another vocabulary");
    }
    tok_workspace_t *tmp = NULL;
    if (ws == NULL) {
        TDM_CHECK(tok_workspace_create(v, &tmp, err));
        ws = tmp;
    }
    const uint8_t *text = (const uint8_t *)text_in;
    size_t n0 = out->n;
    tdm_status_t st = TDM_OK;
    bool parse_special = (flags & TOK_ENC_PARSE_SPECIAL) != 0;

    if ((flags & TOK_ENC_ADD_SPECIAL) && v->add_bos && v->bos != TOK_NONE) {
        TDM_CHECK_GOTO(ids_push(out, v->bos), st, nomem);
    }
    size_t frag = 0, pos = 0;
    if (v->n_trie > 0) {
        while (pos < len) {
            if (v->trie_root[text[pos]] < 0) {
                pos++;
                continue;
            }
            size_t mlen = 0;
            tok_id_t id = match_special(v, text, pos, len, parse_special, &mlen);
            if (id == TOK_NONE) {
                pos++;
                continue;
            }
            size_t end = pos;
            if (v->attrs[id] & TOK_ATTR_LSTRIP) {
                end = ws_back(text, frag, end);
            }
            TDM_CHECK_GOTO(encode_segment(v, ws, text, frag, end, out, err), st, fail);
            TDM_CHECK_GOTO(ids_push(out, id), st, nomem);
            pos += mlen;
            if (v->attrs[id] & TOK_ATTR_RSTRIP) {
                pos = ws_fwd(text, pos, len);
            }
            frag = pos;
        }
    }
    TDM_CHECK_GOTO(encode_segment(v, ws, text, frag, len, out, err), st, fail);
    if ((flags & TOK_ENC_ADD_SPECIAL) && v->add_eos && v->eos != TOK_NONE) {
        TDM_CHECK_GOTO(ids_push(out, v->eos), st, nomem);
    }
    tok_workspace_destroy(tmp);
    return TDM_OK;

nomem:
    st = tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
fail:
    out->n = n0;
    tok_workspace_destroy(tmp);
    return st;
}

/* ------------------------------------------------------------------------------------ */
/* Decoding                                                                              */

const char *tok_token_bytes(const tok_vocab_t *v, tok_id_t id, unsigned flags, size_t *len)
{
    if (!id_ok(v, id)) {
        return NULL;
    }
    uint8_t t = v->types[id];
    bool show;
    switch (t) {
    case TOK_TYPE_NORMAL:
    case TOK_TYPE_BYTE:
    case TOK_TYPE_UNDEFINED:
    case TOK_TYPE_USER_DEFINED:
        show = true;
        break;
    case TOK_TYPE_CONTROL:
    case TOK_TYPE_UNKNOWN:
        show = (flags & TOK_DEC_RENDER_SPECIAL) || (v->tflags[id] & TF_RENDER_ALWAYS);
        break;
    default: /* UNUSED */
        show = false;
        break;
    }
    *len = show ? v->dec_len[id] : 0;
    return v->dec_blob + v->dec_off[id];
}

tdm_status_t tok_decode(const tok_vocab_t *v, const tok_id_t *ids, size_t n, unsigned flags,
                        char **out, size_t *out_len, tdm_error_t *err)
{
    if (v == NULL || out == NULL || (ids == NULL && n > 0)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "tokenizer: null argument to decode");
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if (tok_token_bytes(v, ids[i], flags, &l) == NULL) {
            return tdm_error_set(
                err, TDM_ERR_INVALID_PARAM,
                "tokenizer: token id %d at position %zu is out of range (vocabulary "
                "has %u tokens)",
                ids[i], i, v->n_tokens);
        }
        total += l;
    }
    char *buf = malloc(total + 1);
    if (buf == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory for %zu bytes",
                             total);
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *p = tok_token_bytes(v, ids[i], flags, &l);
        memcpy(buf + o, p, l);
        o += l;
    }
    buf[o] = '\0';
    *out = buf;
    if (out_len) {
        *out_len = o;
    }
    return TDM_OK;
}

void tok_decode_stream_init(tok_decode_stream_t *s, const tok_vocab_t *vocab, unsigned flags)
{
    memset(s, 0, sizeof(*s));
    s->vocab = vocab;
    s->flags = flags;
}

void tok_decode_stream_free(tok_decode_stream_t *s)
{
    if (s) {
        free(s->buf);
        s->buf = NULL;
        s->len = s->cap = 0;
        s->n_pending = 0;
    }
}

static const uint8_t replacement[3] = {0xEF, 0xBF, 0xBD};

/* Validates in[0..n) onto s->buf: complete characters copied, ill-formed subparts replaced,
 * an incomplete tail kept in s->pending unless final. */
static tdm_status_t stream_emit(tok_decode_stream_t *s, const uint8_t *in, size_t n, bool final)
{
    /* worst case every byte becomes U+FFFD */
    if (grow((void **)&s->buf, &s->cap, s->len + 3 * n + 4, 1) != TDM_OK) {
        return TDM_ERR_NO_MEMORY;
    }
    size_t i = 0;
    while (i < n) {
        if (in[i] < 0x80) {
            s->buf[s->len++] = (char)in[i++];
            continue;
        }
        size_t k = utf8_valid_len(in + i, n - i);
        if (k) {
            memcpy(s->buf + s->len, in + i, k);
            s->len += k;
            i += k;
            continue;
        }
        size_t part = utf8_partial_len(in + i, n - i);
        if (part && i + part == n && !final) { /* could still complete */
            memcpy(s->pending, in + i, part);
            s->n_pending = (uint8_t)part;
            break;
        }
        memcpy(s->buf + s->len, replacement, 3);
        s->len += 3;
        i += part ? part : 1;
    }
    return TDM_OK;
}

tdm_status_t tok_decode_stream_feed(tok_decode_stream_t *s, tok_id_t id, const char **text,
                                    size_t *len, tdm_error_t *err)
{
    size_t l;
    const char *p = tok_token_bytes(s->vocab, id, s->flags, &l);
    if (p == NULL) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "tokenizer: token id %d is out of range (vocabulary has %u tokens)",
                             id, s->vocab ? s->vocab->n_tokens : 0);
    }
    s->len = 0;
    tdm_status_t st = TDM_OK;
    size_t consumed = 0; /* bytes of the new token already handled */
    if (s->n_pending) {
        /* The held bytes are a proper prefix of one character; the first new bytes either
         * complete it, prove it ill-formed, or (a very short token) still leave it open. */
        uint8_t head[8];
        size_t np = s->n_pending;
        size_t hn = l < 4 ? l : 4;
        memcpy(head, s->pending, np);
        memcpy(head + np, p, hn);
        size_t tot = np + hn;
        s->n_pending = 0;
        size_t k = utf8_valid_len(head, tot);
        size_t part = k ? 0 : utf8_partial_len(head, tot);
        if (k) { /* completed */
            TDM_ASSERT(k > np);
            if (grow((void **)&s->buf, &s->cap, k, 1) != TDM_OK) {
                goto nomem;
            }
            memcpy(s->buf, head, k);
            s->len = k;
            consumed = k - np;
        } else if (part == tot) { /* still incomplete: hold it all */
            memcpy(s->pending, head, tot);
            s->n_pending = (uint8_t)tot;
            consumed = l;
        } else { /* ill-formed: one U+FFFD for the maximal subpart */
            if (grow((void **)&s->buf, &s->cap, 3, 1) != TDM_OK) {
                goto nomem;
            }
            memcpy(s->buf, replacement, 3);
            s->len = 3;
            consumed = part > np ? part - np : 0;
        }
    }
    if (consumed < l) {
        st = stream_emit(s, (const uint8_t *)p + consumed, l - consumed, false);
    }
    if (st != TDM_OK) {
        goto nomem;
    }
    if (grow((void **)&s->buf, &s->cap, s->len + 1, 1) != TDM_OK) {
        goto nomem;
    }
    s->buf[s->len] = '\0';
    *text = s->buf;
    *len = s->len;
    return TDM_OK;
nomem:
    return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
}

tdm_status_t tok_decode_stream_flush(tok_decode_stream_t *s, const char **text, size_t *len,
                                     tdm_error_t *err)
{
    s->len = 0;
    uint8_t held[4];
    size_t n = s->n_pending;
    memcpy(held, s->pending, n);
    s->n_pending = 0;
    if (stream_emit(s, held, n, true) != TDM_OK ||
        grow((void **)&s->buf, &s->cap, s->len + 1, 1) != TDM_OK) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    s->buf[s->len] = '\0';
    *text = s->buf;
    *len = s->len;
    return TDM_OK;
}
