/*
 * test_tokenizer.c - the byte-level BPE tokenizer on small hand-made vocabularies: byte
 * table, merge order, pre-tokenizer splits, special-token partition, EOG rules, decoding
 * (whole and streaming), and bad input. Real-vocabulary parity against HF tokenizers and
 * llama.cpp is tests/python/test_tokenizer_parity.py.
 */
#include "coordinator/tokenizer/tokenizer.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---- a small vocabulary builder -------------------------------------------------------- */

#define MAXT 512

typedef struct tv {
    char *tokens[MAXT];
    int32_t types[MAXT];
    uint8_t attrs[MAXT];
    uint32_t n;
    const char *merges[64];
    uint32_t n_merges;
} tv_t;

/* GPT-2 stand-in for a byte, written independently of the library: the printable ranges keep
 * their value, the others are numbered from U+0100 in byte order. */
static void byte_char(int b, char out[3])
{
    int cp;
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) {
        cp = b;
    } else {
        int k = 0;
        for (int x = 0; x < 256; x++) {
            bool kept = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
            if (x == b) {
                break;
            }
            if (!kept) {
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

static tok_id_t tv_add(tv_t *t, const char *text, int32_t type)
{
    assert_true(t->n < MAXT);
    t->tokens[t->n] = strdup(text);
    t->types[t->n] = type;
    t->attrs[t->n] = 0;
    return (tok_id_t)t->n++;
}

/* tokens 0..255 are the bytes (id == byte value) */
static void tv_init(tv_t *t)
{
    memset(t, 0, sizeof(*t));
    for (int b = 0; b < 256; b++) {
        char c[3];
        byte_char(b, c);
        tv_add(t, c, TOK_TYPE_NORMAL);
    }
}

static tok_id_t tv_merge(tv_t *t, const char *merge)
{
    t->merges[t->n_merges++] = merge;
    const char *sp = strchr(merge + 1, ' ');
    char buf[64];
    size_t la = (size_t)(sp - merge);
    memcpy(buf, merge, la);
    strcpy(buf + la, sp + 1);
    return tv_add(t, buf, TOK_TYPE_NORMAL);
}

static void tv_free(tv_t *t)
{
    for (uint32_t i = 0; i < t->n; i++) {
        free(t->tokens[i]);
    }
}

static tok_vocab_t *tv_build_norm(tv_t *t, const char *pre, tok_normalizer_t norm)
{
    tok_vocab_desc_t d = {
        .pre = pre,
        .n_tokens = t->n,
        .tokens = (const char *const *)t->tokens,
        .types = t->types,
        .attrs = t->attrs,
        .n_merges = t->n_merges,
        .merges = t->merges,
        .bos = TOK_NONE,
        .eos = TOK_NONE,
        .eot = TOK_NONE,
        .eom = TOK_NONE,
        .pad = TOK_NONE,
        .add_bos = -1,
        .add_eos = -1,
        .normalizer = norm,
    };
    tok_vocab_t *v = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    tdm_status_t st = tok_vocab_create(&d, &v, &err);
    if (st != TDM_OK) {
        fail_msg("tok_vocab_create: %s", tdm_error_msg(&err));
    }
    return v;
}

static tok_vocab_t *tv_build(tv_t *t, const char *pre)
{
    return tv_build_norm(t, pre, TOK_NORM_DEFAULT);
}

/* Encodes and compares with the expected ids (terminated by -2). */
static void expect_ids(const tok_vocab_t *v, tok_workspace_t *ws, const char *text, size_t len,
                       unsigned flags, const tok_id_t *want)
{
    tok_ids_t ids = {0};
    tdm_error_t err;
    tdm_error_clear(&err);
    if (tok_encode(v, ws, text, len, flags, &ids, &err) != TDM_OK) {
        fail_msg("encode: %s", tdm_error_msg(&err));
    }
    size_t nw = 0;
    while (want[nw] != -2) {
        nw++;
    }
    if (ids.n != nw || (nw > 0 && memcmp(ids.ids, want, nw * sizeof(tok_id_t)) != 0)) {
        fprintf(stderr, "text '%.*s': got", (int)len, text);
        for (size_t i = 0; i < ids.n; i++) {
            fprintf(stderr, " %d", ids.ids[i]);
        }
        fprintf(stderr, ", want");
        for (size_t i = 0; i < nw; i++) {
            fprintf(stderr, " %d", want[i]);
        }
        fprintf(stderr, "\n");
        fail();
    }
    tok_ids_free(&ids);
}

#define IDS(...) ((const tok_id_t[]){__VA_ARGS__, -2})
#define NOIDS    ((const tok_id_t[]){-2})

/* ---- tests ---------------------------------------------------------------------------- */

static void test_bytes_map_to_byte_tokens(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_vocab_t *v = tv_build(&t, "gpt-2");
    /* without merges every byte is its own token whose id is the byte value */
    const char text[] = "\x00 a\n\xff\xc3\xa9";
    expect_ids(v, NULL, text, sizeof(text) - 1, 0, IDS(0, 32, 97, 10, 255, 0xC3, 0xA9));
    expect_ids(v, NULL, "", 0, 0, NOIDS);
    size_t len;
    const char *p = tok_token_bytes(v, 32, 0, &len);
    assert_int_equal(len, 1);
    assert_int_equal(p[0], ' ');
    tok_vocab_destroy(v);
    tv_free(&t);
}

static void test_merge_rank_order(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t bc = tv_merge(&t, "b c"); /* rank 0 */
    tv_merge(&t, "a b");               /* rank 1: loses to b c in "abc" */
    tok_id_t aa = tv_merge(&t, "a a"); /* rank 2 */
    tok_id_t he = tv_merge(&t, "h e");
    tok_id_t ll = tv_merge(&t, "l l");
    tok_id_t hell = tv_merge(&t, "he ll");
    tok_id_t hello = tv_merge(&t, "hell o");
    tok_vocab_t *v = tv_build(&t, "gpt-2");
    expect_ids(v, NULL, "abc", 3, 0, IDS('a', bc));
    /* equal ranks: leftmost first */
    expect_ids(v, NULL, "aaa", 3, 0, IDS(aa, 'a'));
    expect_ids(v, NULL, "aaaa", 4, 0, IDS(aa, aa));
    expect_ids(v, NULL, "hello", 5, 0, IDS(hello));
    expect_ids(v, NULL, "hell", 4, 0, IDS(hell));
    expect_ids(v, NULL, "helo", 4, 0, IDS(he, 'l', 'o'));
    (void)ll;
    assert_int_equal(tok_vocab_n_merges(v), 7);
    tok_vocab_destroy(v);
    tv_free(&t);
}

static void test_long_word_is_fast_and_exact(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t a2 = tv_merge(&t, "a a");
    tok_id_t a4 = tv_merge(&t, "aa aa");
    tok_id_t a8 = tv_merge(&t, "aaaa aaaa");
    tok_vocab_t *v = tv_build(&t, "gpt-2");
    size_t n = 1000003; /* one pre-token of a million letters */
    char *s = malloc(n);
    memset(s, 'a', n);
    tok_ids_t ids = {0};
    assert_int_equal(tok_encode(v, NULL, s, n, 0, &ids, NULL), TDM_OK);
    /* 125000 x a8, then "aaa" -> a2 + a */
    assert_int_equal(ids.n, 125000 + 2);
    assert_int_equal(ids.ids[0], a8);
    assert_int_equal(ids.ids[124999], a8);
    assert_int_equal(ids.ids[125000], a2);
    assert_int_equal(ids.ids[125001], 'a');
    (void)a4;
    char *dec = NULL;
    size_t dl = 0;
    assert_int_equal(tok_decode(v, ids.ids, ids.n, 0, &dec, &dl, NULL), TDM_OK);
    assert_int_equal(dl, n);
    assert_memory_equal(dec, s, n);
    free(dec);
    free(s);
    tok_ids_free(&ids);
    tok_vocab_destroy(v);
    tv_free(&t);
}

/* Digits show the pre-tokenizer: merges exist for "1 2", "12 3", "Ġ 1" and "a b", so a
 * merge across a piece boundary reveals that no split happened there. */
static void test_pretokenizer_digit_rules(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t sp1 = tv_merge(&t, "\xc4\xa0 1"); /* "Ġ1", rank 0 */
    tok_id_t d12 = tv_merge(&t, "1 2");
    tok_id_t d123 = tv_merge(&t, "12 3");
    const char *txt = "4123 12";
    struct {
        const char *pre;
        const tok_id_t *want;
    } cases[] = {
        /* gpt-2: " ?\p{N}+" -> "4123", " 12" */
        {"gpt-2", IDS('4', d123, sp1, '2')},
        /* llama3: \p{N}{1,3} -> "412", "3", " ", "12" */
        {"llama3", IDS('4', d12, '3', ' ', d12)},
        /* qwen2: single digits */
        {"qwen2", IDS('4', '1', '2', '3', ' ', '1', '2')},
        /* smollm: \p{N} first, then gpt-2 on each piece */
        {"smollm", IDS('4', '1', '2', '3', ' ', '1', '2')},
        /* o200k: \p{N}{1,3} */
        {"gpt-4o", IDS('4', d12, '3', ' ', d12)},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tok_vocab_t *v = tv_build(&t, cases[i].pre);
        expect_ids(v, NULL, txt, strlen(txt), 0, cases[i].want);
        tok_vocab_destroy(v);
    }
    tv_free(&t);
}

static void test_pretokenizer_contractions_and_spaces(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t ap_t = tv_merge(&t, "' t");
    tok_id_t ap_T = tv_merge(&t, "' T");
    tok_id_t n_ap = tv_merge(&t, "n '");
    tok_id_t sp_sp = tv_merge(&t, "\xc4\xa0 \xc4\xa0");
    tok_vocab_t *v = tv_build(&t, "gpt-2");
    /* gpt-2: 't is a piece; 'T is not a contraction (case-sensitive) */
    expect_ids(v, NULL, "n't", 3, 0, IDS('n', ap_t));
    expect_ids(v, NULL, "n'T", 3, 0, IDS('n', '\'', 'T'));
    /* "a   b": the whitespace run keeps its last space for the word */
    expect_ids(v, NULL, "a   b", 5, 0, IDS('a', sp_sp, ' ', 'b'));
    tok_vocab_destroy(v);
    v = tv_build(&t, "qwen2");
    /* qwen2 contractions are case-insensitive */
    expect_ids(v, NULL, "n'T", 3, 0, IDS('n', ap_T));
    /* "[^\r\n\p{L}\p{N}]?\p{L}+": the apostrophe may lead a word: 'x stays one piece */
    expect_ids(v, NULL, "n'x", 3, 0, IDS('n', '\'', 'x'));
    tok_vocab_destroy(v);
    (void)n_ap;
    tv_free(&t);
}

static void test_ignore_merges_for_llama3(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t xyz = tv_add(&t, "xyz", TOK_TYPE_NORMAL); /* no merge builds it */
    tok_vocab_t *v = tv_build(&t, "llama3");
    expect_ids(v, NULL, "xyz", 3, 0, IDS(xyz));
    assert_true(tok_vocab_add_bos(v)); /* llama3 default; without a bos id nothing is added */
    expect_ids(v, NULL, "xyz", 3, TOK_ENC_ADD_SPECIAL, IDS(xyz));
    tok_vocab_destroy(v);
    v = tv_build(&t, "qwen2");
    expect_ids(v, NULL, "xyz", 3, 0, IDS('x', 'y', 'z'));
    tok_vocab_destroy(v);
    tv_free(&t);
}

static void test_special_tokens(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t st = tv_add(&t, "<|im_start|>", TOK_TYPE_CONTROL);
    tok_id_t en = tv_add(&t, "<|im_end|>", TOK_TYPE_CONTROL);
    tok_id_t th = tv_add(&t, "<think>", TOK_TYPE_USER_DEFINED);
    tok_id_t pre = tv_add(&t, "<|im", TOK_TYPE_USER_DEFINED); /* a prefix of both */
    tok_vocab_t *v = tv_build(&t, "qwen2");
    const char *s = "<|im_start|>a<think><|im_end|>";
    expect_ids(v, NULL, s, strlen(s), TOK_ENC_PARSE_SPECIAL, IDS(st, 'a', th, en));
    /* without parse_special only USER_DEFINED texts are tokens: "<|im" is, the rest is text */
    expect_ids(v, NULL, s, strlen(s), 0,
               IDS(pre, '_', 's', 't', 'a', 'r', 't', '|', '>', 'a', th, pre, '_', 'e', 'n', 'd',
                   '|', '>'));
    /* an unfinished special token is plain text */
    expect_ids(v, NULL, "<|im_sta", 8, TOK_ENC_PARSE_SPECIAL, IDS(pre, '_', 's', 't', 'a'));
    /* EOG: <|im_end|> by name */
    assert_true(tok_is_eog(v, en));
    assert_false(tok_is_eog(v, st));
    /* decoding: CONTROL only when rendering specials, USER_DEFINED always */
    tok_id_t seq[] = {st, 'a', th, en};
    char *out = NULL;
    assert_int_equal(tok_decode(v, seq, 4, 0, &out, NULL, NULL), TDM_OK);
    assert_string_equal(out, "a<think>");
    free(out);
    assert_int_equal(tok_decode(v, seq, 4, TOK_DEC_RENDER_SPECIAL, &out, NULL, NULL), TDM_OK);
    assert_string_equal(out, s);
    free(out);
    tok_vocab_destroy(v);
    tv_free(&t);
}

/* NFC before pre-tokenization: on for qwen2 by default or when asked, off otherwise. */
static void test_nfc_normalizer(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t th = tv_add(&t, "<think>", TOK_TYPE_USER_DEFINED);
    tok_vocab_t *nfc = tv_build(&t, "qwen2");
    tok_vocab_t *qwen_raw = tv_build_norm(&t, "qwen2", TOK_NORM_NONE);
    tok_vocab_t *gpt2 = tv_build(&t, "gpt-2");
    tok_vocab_t *gpt2_nfc = tv_build_norm(&t, "gpt-2", TOK_NORM_NFC);
    assert_true(tok_vocab_nfc(nfc));
    assert_false(tok_vocab_nfc(qwen_raw));
    assert_false(tok_vocab_nfc(gpt2));
    assert_true(tok_vocab_nfc(gpt2_nfc));
    const char *dec = "e\xCC\x81"; /* e + U+0301 COMBINING ACUTE */
    const char *pre = "\xC3\xA9";  /* U+00E9 */
    expect_ids(nfc, NULL, dec, 3, 0, IDS(0xC3, 0xA9));
    expect_ids(nfc, NULL, pre, 2, 0, IDS(0xC3, 0xA9));
    expect_ids(gpt2_nfc, NULL, dec, 3, 0, IDS(0xC3, 0xA9));
    expect_ids(qwen_raw, NULL, dec, 3, 0, IDS('e', 0xCC, 0x81));
    expect_ids(gpt2, NULL, dec, 3, 0, IDS('e', 0xCC, 0x81));
    /* Special tokens are matched on the raw text and NFC runs on the pieces between them, as
     * in HF: '>' + U+0338 would compose to U+226F, but '>' belongs to <think>. */
    const char *sp = "e\xCC\x81<think>\xCC\xB8";
    expect_ids(nfc, NULL, sp, strlen(sp), 0, IDS(0xC3, 0xA9, th, 0xCC, 0xB8));
    /* ...while in plain text the pair composes */
    expect_ids(nfc, NULL, "a>\xCC\xB8", 4, 0, IDS('a', 0xE2, 0x89, 0xAF));
    /* a fragment with ill-formed UTF-8 is left as it is (and round-trips) */
    expect_ids(nfc, NULL, "e\xCC\x81\xFF", 4, 0, IDS('e', 0xCC, 0x81, 0xFF));
    /* ...also when the ill-formed byte comes before anything NFC would touch */
    expect_ids(nfc, NULL,
               "\x80"
               "e\xCC\x81",
               4, 0, IDS(0x80, 'e', 0xCC, 0x81));
    /* Hangul: LV syllable + trailing jamo composes (the jamo is not NFC-inert) */
    expect_ids(nfc, NULL, "\xEA\xB0\x80\xE1\x86\xA8", 6, 0, IDS(0xEA, 0xB0, 0x81));
    /* a singleton: U+212B ANGSTROM SIGN -> U+00C5 */
    expect_ids(nfc, NULL, "\xE2\x84\xAB", 3, 0, IDS(0xC3, 0x85));
    /* already NFC beyond U+0300 (Greek, CJK): unchanged */
    expect_ids(nfc, NULL, "\xCE\xB1\xE4\xB8\xAD", 5, 0, IDS(0xCE, 0xB1, 0xE4, 0xB8, 0xAD));
    /* ...but only that fragment: the one after the special token is still normalized */
    expect_ids(nfc, NULL, "\xFF<think>e\xCC\x81", 11, 0, IDS(0xFF, th, 0xC3, 0xA9));
    /* long input: the workspace's NFC buffer grows (and is reused) */
    tok_workspace_t *ws = NULL;
    assert_int_equal(tok_workspace_create(nfc, &ws, NULL), TDM_OK);
    for (int round = 0; round < 2; round++) {
        size_t reps = round ? 3000 : 10;
        char *big = malloc(3 * reps);
        for (size_t i = 0; i < reps; i++) {
            memcpy(big + 3 * i, dec, 3);
        }
        tok_ids_t ids = {0};
        assert_int_equal(tok_encode(nfc, ws, big, 3 * reps, 0, &ids, NULL), TDM_OK);
        assert_int_equal(ids.n, 2 * reps);
        for (size_t i = 0; i < reps; i++) {
            assert_int_equal(ids.ids[2 * i], 0xC3);
            assert_int_equal(ids.ids[2 * i + 1], 0xA9);
        }
        tok_ids_free(&ids);
        free(big);
    }
    tok_workspace_destroy(ws);
    /* decode gives the NFC text */
    tok_ids_t ids = {0};
    assert_int_equal(tok_encode(nfc, NULL, dec, 3, 0, &ids, NULL), TDM_OK);
    char *out = NULL;
    assert_int_equal(tok_decode(nfc, ids.ids, ids.n, 0, &out, NULL, NULL), TDM_OK);
    assert_string_equal(out, pre);
    free(out);
    tok_ids_free(&ids);
    tok_vocab_destroy(nfc);
    tok_vocab_destroy(qwen_raw);
    tok_vocab_destroy(gpt2);
    tok_vocab_destroy(gpt2_nfc);
    tv_free(&t);
}

static void test_lstrip_rstrip(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t m = tv_add(&t, "<mask>", TOK_TYPE_CONTROL);
    t.attrs[m] = TOK_ATTR_LSTRIP | TOK_ATTR_RSTRIP;
    tok_vocab_t *v = tv_build(&t, "gpt-2");
    /* whitespace on both sides is swallowed (NBSP included: Unicode White_Space) */
    const char *s = "a \xc2\xa0<mask>\t b";
    expect_ids(v, NULL, s, strlen(s), TOK_ENC_PARSE_SPECIAL, IDS('a', m, 'b'));
    tok_vocab_destroy(v);
    tv_free(&t);
}

static void test_eog_harmony_rule(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t end = tv_add(&t, "<|end|>", TOK_TYPE_CONTROL);
    tok_id_t eot = tv_add(&t, "<|endoftext|>", TOK_TYPE_USER_DEFINED);
    tok_vocab_t *v = tv_build(&t, "gpt-4o");
    assert_true(tok_is_eog(v, end));
    assert_true(tok_is_eog(v, eot));
    /* EOG tokens become CONTROL (as llama.cpp), so user text cannot produce them */
    assert_int_equal(tok_token_type(v, eot), TOK_TYPE_CONTROL);
    tok_vocab_destroy(v);
    tok_id_t ret = tv_add(&t, "<|return|>", TOK_TYPE_CONTROL);
    tok_id_t call = tv_add(&t, "<|call|>", TOK_TYPE_CONTROL);
    tok_id_t chan = tv_add(&t, "<|channel|>", TOK_TYPE_CONTROL);
    v = tv_build(&t, "gpt-4o");
    assert_false(tok_is_eog(v, end)); /* harmony: <|end|> separates messages */
    assert_true(tok_is_eog(v, ret));
    assert_true(tok_is_eog(v, call));
    size_t n;
    const tok_id_t *e = tok_eog_ids(v, &n);
    assert_int_equal(n, 3);
    assert_int_equal(e[0], eot);
    /* <|channel|> renders even without TOK_DEC_RENDER_SPECIAL; <|end|> does not */
    size_t len;
    tok_token_bytes(v, chan, 0, &len);
    assert_int_equal(len, strlen("<|channel|>"));
    tok_token_bytes(v, end, 0, &len);
    assert_int_equal(len, 0);
    tok_vocab_destroy(v);
    tv_free(&t);
}

static void test_roundtrip_arbitrary_bytes(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tv_merge(&t, "\xc4\xa0 t");
    tv_merge(&t, "h e");
    tv_merge(&t, "\xc4\xa0t he");
    tv_merge(&t, "\xc3\x83 \xc2\xa9"); /* byte-level text of UTF-8 "é": "Ã" "©" */
    tv_add(&t, "<|x|>", TOK_TYPE_CONTROL);
    const char *pres[] = {"default", "gpt-2", "llama3", "qwen2", "smollm", "gpt-4o"};
    uint32_t seed = 12345;
    for (size_t p = 0; p < sizeof(pres) / sizeof(pres[0]); p++) {
        tok_vocab_t *v = tv_build(&t, pres[p]);
        tok_workspace_t *ws = NULL;
        assert_int_equal(tok_workspace_create(v, &ws, NULL), TDM_OK);
        for (int iter = 0; iter < 300; iter++) {
            char buf[256];
            size_t n = 0;
            size_t len = (size_t)(iter % 97);
            static const char *const frags[] = {
                " the", "é", "\xe2\x82", "\xff", "12", "'s", "\n\n", "<|x|>", "\xf0\x9f\x98\x80"};
            while (n < len) {
                seed = seed * 1103515245u + 12345u;
                const char *f = frags[(seed >> 16) % 9];
                size_t fl = strlen(f);
                if ((seed >> 8) % 3 == 0) {
                    buf[n++] = (char)(seed >> 24);
                } else if (n + fl < sizeof(buf)) {
                    memcpy(buf + n, f, fl);
                    n += fl;
                } else {
                    break;
                }
            }
            tok_ids_t ids = {0};
            assert_int_equal(tok_encode(v, ws, buf, n, 0, &ids, NULL), TDM_OK);
            if (iter % 7 == 0) { /* a cleared cache (cold words) gives the same ids */
                tok_workspace_clear(ws);
                tok_ids_t again = {0};
                assert_int_equal(tok_encode(v, ws, buf, n, 0, &again, NULL), TDM_OK);
                assert_int_equal(again.n, ids.n);
                if (ids.n > 0) {
                    assert_memory_equal(again.ids, ids.ids, ids.n * sizeof(tok_id_t));
                }
                tok_ids_free(&again);
            }
            char *dec = NULL;
            size_t dl = 0;
            assert_int_equal(tok_decode(v, ids.ids, ids.n, 0, &dec, &dl, NULL), TDM_OK);
            assert_int_equal(dl, n);
            assert_memory_equal(dec, buf, n);
            free(dec);
            tok_ids_free(&ids);
        }
        tok_workspace_destroy(ws);
        tok_vocab_destroy(v);
    }
    tv_free(&t);
}

static void stream_all(const tok_vocab_t *v, const tok_id_t *ids, size_t n, char *out,
                       size_t *out_len, size_t *n_partial_calls)
{
    tok_decode_stream_t s;
    tok_decode_stream_init(&s, v, 0);
    size_t o = 0;
    *n_partial_calls = 0;
    for (size_t i = 0; i < n; i++) {
        const char *txt;
        size_t l;
        assert_int_equal(tok_decode_stream_feed(&s, ids[i], &txt, &l, NULL), TDM_OK);
        if (l == 0) {
            (*n_partial_calls)++;
        }
        memcpy(out + o, txt, l);
        o += l;
    }
    const char *txt;
    size_t l;
    assert_int_equal(tok_decode_stream_flush(&s, &txt, &l, NULL), TDM_OK);
    memcpy(out + o, txt, l);
    o += l;
    *out_len = o;
    tok_decode_stream_free(&s);
}

static void test_stream_decode(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_vocab_t *v = tv_build(&t, "gpt-2");
    char out[64];
    size_t ol, partial;
    /* "é€😀" as byte tokens: every prefix that cuts a character emits nothing */
    tok_id_t a[] = {0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80};
    stream_all(v, a, 9, out, &ol, &partial);
    assert_int_equal(ol, 9);
    assert_memory_equal(out, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9);
    assert_int_equal(partial, 1 + 2 + 3);
    /* ill-formed: E2 followed by 'A' -> U+FFFD then A; lone continuation -> U+FFFD */
    tok_id_t b[] = {0xE2, 'A', 0x80, 'B'};
    stream_all(v, b, 4, out, &ol, &partial);
    assert_int_equal(ol, 8);
    assert_memory_equal(out,
                        "\xef\xbf\xbd"
                        "A"
                        "\xef\xbf\xbd"
                        "B",
                        8);
    /* E2 82 then 'x': the maximal subpart E2 82 is one U+FFFD */
    tok_id_t c[] = {0xE2, 0x82, 'x'};
    stream_all(v, c, 3, out, &ol, &partial);
    assert_int_equal(ol, 4);
    assert_memory_equal(out,
                        "\xef\xbf\xbd"
                        "x",
                        4);
    /* incomplete at the end: flush gives U+FFFD */
    tok_id_t d[] = {'z', 0xF0, 0x9F};
    stream_all(v, d, 3, out, &ol, &partial);
    assert_int_equal(ol, 4);
    assert_memory_equal(out, "z\xef\xbf\xbd", 4);
    /* a bad id is an error, not a crash */
    tok_decode_stream_t s;
    tok_decode_stream_init(&s, v, 0);
    const char *txt;
    size_t l;
    assert_int_equal(tok_decode_stream_feed(&s, 100000, &txt, &l, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(tok_decode_stream_feed(&s, -5, &txt, &l, NULL), TDM_ERR_INVALID_PARAM);
    tok_decode_stream_free(&s);
    tok_vocab_destroy(v);
    tv_free(&t);
}

/* A multi-byte token joining a held prefix: "é" split as C3 | A9+'b' token. */
static void test_stream_decode_joins_multibyte_tokens(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t a9b = tv_merge(&t, "\xc2\xa9 b"); /* byte A9 stands for itself: U+00A9 */
    tok_vocab_t *v = tv_build(&t, "gpt-2");
    char out[32];
    size_t ol, partial;
    tok_id_t ids[] = {0xC3, a9b};
    stream_all(v, ids, 2, out, &ol, &partial);
    assert_int_equal(ol, 3);
    assert_memory_equal(out,
                        "\xc3\xa9"
                        "b",
                        3);
    tok_vocab_destroy(v);
    tv_free(&t);
}

static void test_bad_input_is_an_error(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_vocab_desc_t d = {.pre = "no-such-pre",
                          .n_tokens = t.n,
                          .tokens = (const char *const *)t.tokens,
                          .bos = TOK_NONE,
                          .eos = TOK_NONE,
                          .eot = TOK_NONE,
                          .eom = TOK_NONE,
                          .pad = TOK_NONE,
                          .add_bos = -1,
                          .add_eos = -1};
    tok_vocab_t *v = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(tok_vocab_create(&d, &v, &err), TDM_ERR_UNSUPPORTED);
    assert_non_null(strstr(tdm_error_msg(&err), "no-such-pre"));
    assert_null(v);
    d.pre = "qwen2";
    d.bos = 100000;
    tdm_error_clear(&err);
    assert_int_equal(tok_vocab_create(&d, &v, &err), TDM_ERR_FORMAT);
    assert_non_null(strstr(tdm_error_msg(&err), "bos"));
    d.bos = TOK_NONE;
    const char *bad_merge[] = {"nospace"};
    d.merges = bad_merge;
    d.n_merges = 1;
    assert_int_equal(tok_vocab_create(&d, &v, NULL), TDM_ERR_FORMAT);
    d.n_merges = 0;
    int32_t types[MAXT];
    for (uint32_t i = 0; i < t.n; i++) {
        types[i] = 1;
    }
    types[7] = 42;
    d.types = types;
    assert_int_equal(tok_vocab_create(&d, &v, NULL), TDM_ERR_FORMAT);
    d.types = NULL;
    d.n_tokens = 0;
    assert_int_equal(tok_vocab_create(&d, &v, NULL), TDM_ERR_FORMAT);
    d.n_tokens = t.n;
    assert_int_equal(tok_vocab_create(&d, &v, NULL), TDM_OK);
    /* decode of a bad id */
    tok_id_t ids[] = {1, 999};
    char *out = NULL;
    assert_int_equal(tok_decode(v, ids, 2, 0, &out, NULL, NULL), TDM_ERR_INVALID_PARAM);
    assert_null(out);
    /* a workspace of another vocabulary is refused */
    tok_vocab_t *v2 = NULL;
    assert_int_equal(tok_vocab_create(&d, &v2, NULL), TDM_OK);
    tok_workspace_t *ws = NULL;
    assert_int_equal(tok_workspace_create(v2, &ws, NULL), TDM_OK);
    tok_ids_t o = {0};
    assert_int_equal(tok_encode(v, ws, "a", 1, 0, &o, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(o.n, 0);
    tok_workspace_destroy(ws);
    tok_vocab_destroy(v2);
    tok_vocab_destroy(v);
    tv_free(&t);
}

static void test_bos_eos_flags(void **state)
{
    (void)state;
    tv_t t;
    tv_init(&t);
    tok_id_t bos = tv_add(&t, "<s>", TOK_TYPE_CONTROL);
    tok_id_t eos = tv_add(&t, "</s>", TOK_TYPE_CONTROL);
    tok_vocab_desc_t d = {.pre = "llama-bpe",
                          .n_tokens = t.n,
                          .tokens = (const char *const *)t.tokens,
                          .types = t.types,
                          .bos = bos,
                          .eos = eos,
                          .eot = TOK_NONE,
                          .eom = TOK_NONE,
                          .pad = TOK_NONE,
                          .add_bos = -1,
                          .add_eos = 1};
    tok_vocab_t *v = NULL;
    assert_int_equal(tok_vocab_create(&d, &v, NULL), TDM_OK);
    assert_string_equal(tok_vocab_pre(v), "llama3");
    expect_ids(v, NULL, "a", 1, TOK_ENC_ADD_SPECIAL, IDS(bos, 'a', eos));
    expect_ids(v, NULL, "a", 1, 0, IDS('a'));
    assert_true(tok_is_eog(v, eos));
    tok_vocab_destroy(v);
    tv_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_map_to_byte_tokens),
        cmocka_unit_test(test_merge_rank_order),
        cmocka_unit_test(test_long_word_is_fast_and_exact),
        cmocka_unit_test(test_pretokenizer_digit_rules),
        cmocka_unit_test(test_pretokenizer_contractions_and_spaces),
        cmocka_unit_test(test_ignore_merges_for_llama3),
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_nfc_normalizer),
        cmocka_unit_test(test_lstrip_rstrip),
        cmocka_unit_test(test_eog_harmony_rule),
        cmocka_unit_test(test_roundtrip_arbitrary_bytes),
        cmocka_unit_test(test_stream_decode),
        cmocka_unit_test(test_stream_decode_joins_multibyte_tokens),
        cmocka_unit_test(test_bad_input_is_an_error),
        cmocka_unit_test(test_bos_eos_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
