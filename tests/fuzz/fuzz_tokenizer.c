/*
 * fuzz_tokenizer.c - libFuzzer harness for the byte-level BPE tokenizer. The first input
 * byte picks the pre-tokenizer and the encode flags, the rest is the text (any bytes). A
 * small vocabulary (256 byte tokens, a few merges and special tokens) is built once from
 * plain arrays. Checked for every input: encode succeeds, tok_decode gives back the exact
 * input bytes, and the streaming decoder emits valid UTF-8 only - equal to the input when the
 * input is valid UTF-8. Built with -DTANDEM_FUZZ=ON (clang); replayed over
 * tests/fuzz/corpus/tokenizer by replay_main.c in the unit tests.
 */
#include "coordinator/tokenizer/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(x)       \
    do {                      \
        if (!(x)) {           \
            __builtin_trap(); \
        }                     \
    } while (0)

static const char *const pres[] = {"default", "gpt-2", "llama3", "qwen2", "smollm", "gpt-4o"};
#define N_PRE (sizeof(pres) / sizeof(pres[0]))

static const char *const merges[] = {
    "\xc4\xa0 t",
    "h e",
    "\xc4\xa0t he",
    "i n",
    "\xc4\xa0 a",
    "a a",
    "aa aa",
    "o n",
    "\xc3\x83 \xc2\xa9", /* é */
    "\xc4\xa0 \xc4\xa0", /* two spaces */
    "\xc4\x8a \xc4\x8a", /* two newlines */
    "1 2",
    "12 3",
    "' s",
    "\xc3\xa4 \xc2\xb8", /* bytes of 中 (E4 B8) */
};
static const char *const specials[] = {"<|im_start|>", "<|im_end|>", "<think>", "<|end|>"};
static const int32_t special_types[] = {3, 3, 4, 3};

static tok_vocab_t *vocabs[N_PRE];
/* One workspace per vocabulary, made once and cleared before each input: a new workspace
 * per input (2.5 MB of cache, mapped and zeroed under ASan) took two thirds of the time. */
static tok_workspace_t *workspaces[N_PRE];
static char *token_store[256 + 64];

static void byte_char(int b, char out[3])
{
    int cp = b;
    if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
        int k = 0;
        for (int x = 0; x < b; x++) {
            if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) {
                k++;
            }
        }
        cp = 0x100 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static void build_vocabs(void)
{
    uint32_t n = 0;
    int32_t types[256 + 64];
    for (int b = 0; b < 256; b++) {
        char c[3];
        byte_char(b, c);
        token_store[n] = strdup(c);
        types[n++] = TOK_TYPE_NORMAL;
    }
    for (size_t i = 0; i < sizeof(merges) / sizeof(merges[0]); i++) {
        const char *sp = strchr(merges[i] + 1, ' ');
        size_t la = (size_t)(sp - merges[i]);
        char *t = malloc(strlen(merges[i]));
        memcpy(t, merges[i], la);
        strcpy(t + la, sp + 1);
        token_store[n] = t;
        types[n++] = TOK_TYPE_NORMAL;
    }
    for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
        token_store[n] = strdup(specials[i]);
        types[n++] = special_types[i];
    }
    for (size_t p = 0; p < N_PRE; p++) {
        tok_vocab_desc_t d = {
            .pre = pres[p],
            .n_tokens = n,
            .tokens = (const char *const *)token_store,
            .types = types,
            .n_merges = sizeof(merges) / sizeof(merges[0]),
            .merges = merges,
            .bos = TOK_NONE,
            .eos = (tok_id_t)(n - 3),
            .eot = TOK_NONE,
            .eom = TOK_NONE,
            .pad = TOK_NONE,
            .add_bos = 0,
            .add_eos = 0,
        };
        FUZZ_REQUIRE(tok_vocab_create(&d, &vocabs[p], NULL) == TDM_OK);
        FUZZ_REQUIRE(tok_workspace_create(vocabs[p], &workspaces[p], NULL) == TDM_OK);
    }
}

static bool valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + k > n) {
            return false;
        }
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (k == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
            return false;
        }
        i += k;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (vocabs[0] == NULL) {
        build_vocabs();
    }
    if (size == 0) {
        return 0;
    }
    const tok_vocab_t *v = vocabs[data[0] % N_PRE];
    tok_workspace_t *ws = workspaces[data[0] % N_PRE];
    unsigned enc = (data[0] & 0x10) ? TOK_ENC_PARSE_SPECIAL : 0;
    unsigned dec = enc ? TOK_DEC_RENDER_SPECIAL : 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    tok_ids_t ids = {0};
    tok_workspace_clear(ws); /* the first encoding is cold, as with a new workspace */
    FUZZ_REQUIRE(tok_encode(v, ws, text, len, enc, &ids, NULL) == TDM_OK);
    /* the cached path must agree with the first encoding */
    size_t n1 = ids.n;
    FUZZ_REQUIRE(tok_encode(v, ws, text, len, enc, &ids, NULL) == TDM_OK);
    FUZZ_REQUIRE(ids.n == 2 * n1);
    FUZZ_REQUIRE(n1 == 0 || memcmp(ids.ids, ids.ids + n1, n1 * sizeof(tok_id_t)) == 0);
    ids.n = n1;

    char *out = NULL;
    size_t out_len = 0;
    FUZZ_REQUIRE(tok_decode(v, ids.ids, ids.n, dec, &out, &out_len, NULL) == TDM_OK);
    bool ascii = true;
    for (size_t i = 0; i < len; i++) {
        ascii = ascii && (uint8_t)text[i] < 0x80;
    }
    if (!tok_vocab_nfc(v) || ascii) {
        FUZZ_REQUIRE(out_len == len && (len == 0 || memcmp(out, text, len) == 0));
    } else {
        /* an NFC vocabulary encodes the NFC of the text (as HF's normalizer does), so the
         * decode is that, not the input: encoding it again must give the same tokens */
        tok_ids_t again = {0};
        FUZZ_REQUIRE(tok_encode(v, ws, out, out_len, enc, &again, NULL) == TDM_OK);
        FUZZ_REQUIRE(again.n == ids.n &&
                     (ids.n == 0 || memcmp(again.ids, ids.ids, ids.n * sizeof(tok_id_t)) == 0));
        tok_ids_free(&again);
    }

    /* streaming: valid UTF-8 out, equal to the whole decode when the input is valid */
    tok_decode_stream_t s;
    tok_decode_stream_init(&s, v, dec);
    uint8_t *acc = malloc(3 * len + 8 + out_len);
    FUZZ_REQUIRE(acc != NULL);
    size_t an = 0;
    for (size_t i = 0; i <= ids.n; i++) {
        const char *piece;
        size_t pl;
        tdm_status_t st = i < ids.n ? tok_decode_stream_feed(&s, ids.ids[i], &piece, &pl, NULL)
                                    : tok_decode_stream_flush(&s, &piece, &pl, NULL);
        FUZZ_REQUIRE(st == TDM_OK);
        FUZZ_REQUIRE(valid_utf8((const uint8_t *)piece, pl));
        FUZZ_REQUIRE(an + pl <= 3 * len + 8 + out_len);
        if (pl > 0) {
            memcpy(acc + an, piece, pl);
        }
        an += pl;
    }
    if (valid_utf8((const uint8_t *)text, len)) {
        FUZZ_REQUIRE(an == out_len && (an == 0 || memcmp(acc, out, an) == 0));
    }
    free(acc);
    free(out);
    tok_decode_stream_free(&s);
    tok_ids_free(&ids);
    return 0;
}
