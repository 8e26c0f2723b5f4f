/*
 * test_stop_strings.c - the stop-string matcher: results must not depend on how the text
 * is split into pieces, the stop string never appears in the output, and only a possible
 * beginning of a stop string is ever held back.
 */
#include "coordinator/stop_strings.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Feeds text in pieces cut at cuts[] and returns what was released; *stopped set. */
static char *run(const char *const *stops, int n_stops, const char *text, const size_t *cuts,
                 int n_cuts, bool *stopped)
{
    crd_stop_strings_t *s = NULL;
    assert_int_equal(crd_stop_strings_create(stops, n_stops, &s, NULL), TDM_OK);
    size_t len = strlen(text), prev = 0;
    char *out = calloc(len + 1, 1);
    size_t n_out = 0;
    *stopped = false;
    for (int i = 0; i <= n_cuts && !*stopped; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        const char *rel;
        size_t nrel;
        *stopped = crd_stop_strings_feed(s, text + prev, end - prev, &rel, &nrel);
        memcpy(out + n_out, rel, nrel);
        n_out += nrel;
        prev = end;
    }
    if (!*stopped) {
        const char *rel;
        size_t nrel;
        crd_stop_strings_flush(s, &rel, &nrel);
        memcpy(out + n_out, rel, nrel);
        n_out += nrel;
    }
    out[n_out] = '\0';
    crd_stop_strings_destroy(s);
    return out;
}

/* The expected result: text cut before the earliest occurrence of any stop string. */
static size_t expected_cut(const char *const *stops, int n, const char *text)
{
    size_t best = strlen(text);
    for (int i = 0; i < n; i++) {
        const char *p = strstr(text, stops[i]);
        if (p != NULL && (size_t)(p - text) < best) {
            best = (size_t)(p - text);
        }
    }
    return best;
}

static void check_all_splits(const char *const *stops, int n, const char *text)
{
    size_t len = strlen(text), cut = expected_cut(stops, n, text);
    for (size_t a = 0; a <= len; a++) {
        for (size_t b = a; b <= len; b += 3) {
            size_t cuts[2] = {a, b};
            bool stopped;
            char *out = run(stops, n, text, cuts, 2, &stopped);
            assert_int_equal(strlen(out), cut);
            assert_memory_equal(out, text, cut);
            assert_int_equal(stopped, cut < len);
            free(out);
        }
    }
}

static void test_split_invariance(void **state)
{
    (void)state;
    const char *stops1[] = {"STOP"};
    check_all_splits(stops1, 1, "Hello from the model. STOP after");
    check_all_splits(stops1, 1, "no stop here, only ST and STO at the end STO");
    const char *stops2[] = {"\n\n", "</answer>", "ab"};
    check_all_splits(stops2, 3, "x</answ</answer>");
    check_all_splits(stops2, 3, "aaaaaab");
    check_all_splits(stops2, 3, "one\ntwo\n\nthree");
    const char *stops3[] = {"caf\xc3\xa9", "\xe2\x86\x92"};
    check_all_splits(stops3, 2, "un caf \xe2\x86\x92 caf\xc3\xa9 ici");
    check_all_splits(stops3, 0, "anything goes");
}

static void test_holds_back_only_prefixes(void **state)
{
    (void)state;
    const char *stops[] = {"END"};
    crd_stop_strings_t *s = NULL;
    assert_int_equal(crd_stop_strings_create(stops, 1, &s, NULL), TDM_OK);
    const char *rel;
    size_t n;
    assert_false(crd_stop_strings_feed(s, "abcE", 4, &rel, &n));
    assert_int_equal(n, 3); /* "E" may start "END" */
    assert_memory_equal(rel, "abc", 3);
    assert_false(crd_stop_strings_feed(s, "x", 1, &rel, &n));
    assert_int_equal(n, 2); /* "Ex" cannot */
    assert_memory_equal(rel, "Ex", 2);
    assert_false(crd_stop_strings_feed(s, "EN", 2, &rel, &n));
    assert_int_equal(n, 0);
    assert_true(crd_stop_strings_feed(s, "D and more", 10, &rel, &n));
    assert_int_equal(n, 0);
    assert_string_equal(crd_stop_strings_matched(s), "END");
    assert_true(crd_stop_strings_feed(s, "later", 5, &rel, &n)); /* nothing after a stop */
    assert_int_equal(n, 0);
    crd_stop_strings_destroy(s);
}

static void test_limits(void **state)
{
    (void)state;
    crd_stop_strings_t *s = NULL;
    const char *empty[] = {""};
    assert_int_equal(crd_stop_strings_create(empty, 1, &s, NULL), TDM_ERR_INVALID_PARAM);
    const char *many[CRD_MAX_STOP_STRINGS + 1];
    for (int i = 0; i <= CRD_MAX_STOP_STRINGS; i++) {
        many[i] = "x";
    }
    assert_int_equal(crd_stop_strings_create(many, CRD_MAX_STOP_STRINGS + 1, &s, NULL),
                     TDM_ERR_INVALID_PARAM);
    char *big = malloc(CRD_MAX_STOP_LEN + 2);
    memset(big, 'a', CRD_MAX_STOP_LEN + 1);
    big[CRD_MAX_STOP_LEN + 1] = '\0';
    const char *one[] = {big};
    assert_int_equal(crd_stop_strings_create(one, 1, &s, NULL), TDM_ERR_INVALID_PARAM);
    free(big);
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_invariance),
        cmocka_unit_test(test_holds_back_only_prefixes),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
