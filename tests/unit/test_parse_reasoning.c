/*
 * test_parse_reasoning.c - unit tests of the streaming reasoning splitter
 * (api/parse/reasoning.c). Expected outputs are written by hand from the rules in
 * reasoning.h. Every case is also fed split at every single position, one byte at a time
 * and in random multi-way splits, and must give the same outputs each time.
 */
#include "api/parse/reasoning.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

typedef struct rcase {
    const char *open, *close; /* NULL: defaults */
    bool start_inside;
    const char *input;
    const char *reasoning; /* expected */
    const char *content;   /* expected */
} rcase_t;

static const rcase_t cases[] = {
    /* the usual Qwen3 / DeepSeek-R1 shape: tags dropped, "\n\n" after </think> dropped */
    {NULL, NULL, false, "<think>\nI should greet.\n</think>\n\nHello!", "\nI should greet.\n",
     "Hello!"},
    /* the template already opened the block */
    {NULL, NULL, true, "I should greet.\n</think>\n\nHello!", "I should greet.\n", "Hello!"},
    {NULL, NULL, true, "\n</think>\n\nHi", "\n", "Hi"},
    /* no reasoning at all */
    {NULL, NULL, false, "Hello there.", "", "Hello there."},
    {NULL, NULL, false, "", "", ""},
    {NULL, NULL, true, "", "", ""},
    /* leading whitespace before the tag is dropped; without a tag it is content */
    {NULL, NULL, false, "\n \t<think>r</think>c", "r", "c"},
    {NULL, NULL, false, "\n Hi", "", "\n Hi"},
    {NULL, NULL, false, "\n\n", "", "\n\n"},
    /* a tag after visible text is plain content */
    {NULL, NULL, false, "Hi <think>x</think> there", "", "Hi <think>x</think> there"},
    /* after the block everything is content, tags included */
    {NULL, NULL, false, "<think>a</think>b<think>c</think>d", "a", "b<think>c</think>d"},
    {NULL, NULL, false, "<think>a</think>  \n b </think>", "a", "b </think>"},
    /* unclosed reasoning stays reasoning; partial tags at the end are text */
    {NULL, NULL, false, "<think>abc", "abc", ""},
    {NULL, NULL, false, "<think>abc</thi", "abc</thi", ""},
    {NULL, NULL, false, "<thi", "", "<thi"},
    {NULL, NULL, false, "  <thi", "", "  <thi"},
    {NULL, NULL, false, "<thinking>x", "", "<thinking>x"},
    {NULL, NULL, false, "<think>a</think>", "a", ""},
    {NULL, NULL, false, "<think>a</think>\n\n", "a", ""},
    {NULL, NULL, false, "<think></think>\n\nAnswer", "", "Answer"},
    /* near-misses of the closing tag inside reasoning */
    {NULL, NULL, false, "<think>a<</think>b", "a<", "b"},
    {NULL, NULL, false, "<think>a</</think>b", "a</", "b"},
    {NULL, NULL, false, "<think>x </thin k> y</think>z", "x </thin k> y", "z"},
    {NULL, NULL, false, "<think><think></think>z", "<think>", "z"},
    /* unicode passes through untouched */
    {NULL, NULL, false,
     "<think>\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82</think>\n\n"
     "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf",
     "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82",
     "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf"},
    /* other tag pairs */
    {"<|begin_of_thought|>", "<|end_of_thought|>", false,
     "<|begin_of_thought|>hmm<|end_of_thought|>\nok", "hmm", "ok"},
    {"[THINK]", "[/THINK]", false, "[THINK]a[/THINK]b", "a", "b"},
    {"[THINK]", "[/THINK]", true, "a[/THI", "a[/THI", ""},
    /* tool calls after reasoning are content for the next parser */
    {NULL, NULL, false,
     "<think>\nCall it.\n</think>\n\n<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "\nCall it.\n",
     "<tool_call>\n{\"name\": \"f\"}\n</tool_call>"},
};

/* Feeds input cut at cuts[0..ncut) (ascending); returns the outputs (caller frees). */
static void run_split(const rcase_t *c, const size_t *cuts, size_t ncut, char **reasoning,
                      char **content)
{
    prs_reasoning_t *p = NULL;
    assert_int_equal(prs_reasoning_create(c->open, c->close, c->start_inside, &p, NULL), TDM_OK);
    size_t n = strlen(c->input), at = 0;
    prs_buf_t r = {0}, k = {0};
    for (size_t i = 0; i <= ncut; i++) {
        size_t to = i < ncut ? cuts[i] : n;
        assert_int_equal(prs_reasoning_feed(p, c->input + at, to - at, NULL), TDM_OK);
        at = to;
        /* drain as a server would, chunk by chunk */
        prs_buf_t *pr = prs_reasoning_reasoning(p), *pc = prs_reasoning_content(p);
        assert_int_equal(prs_buf_append(&r, pr->data, pr->len), TDM_OK);
        assert_int_equal(prs_buf_append(&k, pc->data, pc->len), TDM_OK);
        prs_buf_clear(pr);
        prs_buf_clear(pc);
    }
    assert_int_equal(prs_reasoning_finish(p, NULL), TDM_OK);
    assert_int_equal(
        prs_buf_append(&r, prs_reasoning_reasoning(p)->data, prs_reasoning_reasoning(p)->len),
        TDM_OK);
    assert_int_equal(
        prs_buf_append(&k, prs_reasoning_content(p)->data, prs_reasoning_content(p)->len), TDM_OK);
    prs_reasoning_destroy(p);
    *reasoning = prs_buf_take(&r);
    *content = prs_buf_take(&k);
}

static void check_split(size_t ci, const size_t *cuts, size_t ncut)
{
    const rcase_t *c = &cases[ci];
    char *r, *k;
    run_split(c, cuts, ncut, &r, &k);
    if (strcmp(r, c->reasoning) != 0 || strcmp(k, c->content) != 0) {
        char where[256] = "";
        for (size_t i = 0; i < ncut && strlen(where) < 200; i++) {
            snprintf(where + strlen(where), sizeof(where) - strlen(where), " %zu", cuts[i]);
        }
        fail_msg("case %zu (cuts:%s)\n  reasoning want '%s' got '%s'\n  content   want '%s' got "
                 "'%s'",
                 ci, where, c->reasoning, r, c->content, k);
    }
    free(r);
    free(k);
}

static void test_cases_whole(void **state)
{
    (void)state;
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        check_split(ci, NULL, 0);
    }
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Property: every split gives the outputs of the whole input. */
static void test_cases_every_split(void **state)
{
    (void)state;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        size_t n = strlen(cases[ci].input);
        for (size_t cut = 0; cut <= n; cut++) {
            check_split(ci, &cut, 1);
        }
        size_t *cuts = malloc((n + 1) * sizeof(*cuts));
        for (size_t i = 0; i < n; i++) {
            cuts[i] = i; /* one byte at a time (and a leading empty chunk) */
        }
        check_split(ci, cuts, n);
        for (int t = 0; t < 200; t++) {
            size_t k = n == 0 ? 0 : (size_t)(next_rand(&rng) % (n + 1));
            for (size_t i = 0; i < k; i++) {
                cuts[i] = (size_t)(next_rand(&rng) % (n + 1));
            }
            qsort(cuts, k, sizeof(*cuts), cmp_size);
            check_split(ci, cuts, k);
        }
        free(cuts);
    }
}

/* Leading whitespace is limited: PRS_REASONING_MAX_LEADING_WS bytes still open a block. */
static void test_leading_whitespace_limit(void **state)
{
    (void)state;
    for (int extra = 0; extra <= 1; extra++) {
        size_t w = PRS_REASONING_MAX_LEADING_WS + (size_t)extra;
        char *in = malloc(w + 32);
        memset(in, ' ', w);
        strcpy(in + w, "<think>r</think>c");
        rcase_t c = {NULL, NULL, false, in, extra ? "" : "r", extra ? in : "c"};
        char *r, *k;
        for (size_t cut = 0; cut <= strlen(in); cut += 7) {
            run_split(&c, &cut, 1, &r, &k);
            assert_string_equal(r, c.reasoning);
            assert_string_equal(k, c.content);
            free(r);
            free(k);
        }
        free(in);
    }
}

static void test_errors_and_state(void **state)
{
    (void)state;
    prs_reasoning_t *p = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    assert_int_equal(prs_reasoning_create("", NULL, false, &p, &err), TDM_ERR_INVALID_PARAM);
    assert_non_null(strstr(tdm_error_msg(&err), "opening"));
    assert_int_equal(prs_reasoning_create(NULL, " </x>", false, &p, NULL), TDM_ERR_INVALID_PARAM);
    char big[PRS_REASONING_MAX_TAG + 2];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(prs_reasoning_create(big, NULL, false, &p, NULL), TDM_ERR_INVALID_PARAM);
    assert_null(p);
    prs_reasoning_destroy(NULL);

    assert_int_equal(prs_reasoning_create(NULL, NULL, false, &p, NULL), TDM_OK);
    assert_false(prs_reasoning_inside(p));
    assert_int_equal(prs_reasoning_feed(p, "<think>x", 8, NULL), TDM_OK);
    assert_true(prs_reasoning_inside(p));
    assert_int_equal(prs_reasoning_feed(p, "</think>", 8, NULL), TDM_OK);
    assert_false(prs_reasoning_inside(p));
    assert_int_equal(prs_reasoning_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_reasoning_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_reasoning_feed(p, "y", 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_string_equal(prs_reasoning_reasoning(p)->data, "x");
    prs_reasoning_destroy(p);

    /* text with NUL bytes is carried by length */
    assert_int_equal(prs_reasoning_create(NULL, NULL, true, &p, NULL), TDM_OK);
    assert_int_equal(prs_reasoning_feed(p, "a\0b</think>c\0d", 14, NULL), TDM_OK);
    assert_int_equal(prs_reasoning_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_reasoning_reasoning(p)->len, 3);
    assert_memory_equal(prs_reasoning_reasoning(p)->data, "a\0b", 3);
    assert_int_equal(prs_reasoning_content(p)->len, 3);
    assert_memory_equal(prs_reasoning_content(p)->data, "c\0d", 3);
    prs_reasoning_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_whole),
        cmocka_unit_test(test_cases_every_split),
        cmocka_unit_test(test_leading_whitespace_limit),
        cmocka_unit_test(test_errors_and_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
