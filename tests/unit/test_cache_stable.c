/* test_cache_stable.c - the rewrites of --cache-stable-prompts (api/server/cache_stable.c):
 * exact outputs for Claude Code's billing line, OpenCode's moving reminder and sorted tool
 * keys, and the cases that must be left alone (a reminder kept in history, a first turn,
 * an unclosed tag, text that only mentions the billing prefix). */
#include "api/server/cache_stable.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static json_t *msgs_of(const char *text)
{
    json_error_t e;
    json_t *m = json_loads(text, 0, &e);
    assert_non_null(m);
    return m;
}

static const char *content(const json_t *msgs, size_t i)
{
    return json_string_value(json_object_get(json_array_get(msgs, i), "content"));
}

static void test_billing_line_dropped(void **state)
{
    (void)state;
    json_t *in = msgs_of("[{\"role\":\"system\",\"content\":\"x-anthropic-billing-header: "
                         "cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;\\nYou are Claude "
                         "Code.\\nRules.\"},{\"role\":\"user\",\"content\":\"x-anthropic-billing-"
                         "header: kept in a user message\"}]");
    json_t *out = srv_cache_stable_messages(in);
    assert_non_null(out);
    assert_string_equal(content(out, 0), "You are Claude Code.\nRules.");
    assert_string_equal(content(out, 1), "x-anthropic-billing-header: kept in a user message");
    /* the input is not touched */
    assert_non_null(strstr(content(in, 0), "cch=fa690"));
    json_decref(in);
    json_decref(out);

    /* a mention inside a line is not the header line */
    in = msgs_of("[{\"role\":\"system\",\"content\":\"Never print x-anthropic-billing-header: "
                 "values.\"},{\"role\":\"user\",\"content\":\"hi\"}]");
    out = srv_cache_stable_messages(in);
    assert_true(json_equal(in, out));
    json_decref(in);
    json_decref(out);
}

static void test_moving_reminder_goes_to_the_tail(void **state)
{
    (void)state;
    /* OpenCode's shape: the reminder rides on the last user message only */
    json_t *in = msgs_of(
        "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"one\"},"
        "{\"role\":\"assistant\",\"content\":\"ok\"},{\"role\":\"user\",\"content\":\"two\\n"
        "<system-reminder>mode is build</system-reminder>\"},{\"role\":\"assistant\","
        "\"content\":\"\",\"tool_calls\":[]},{\"role\":\"tool\",\"content\":\"result\"}]");
    json_t *out = srv_cache_stable_messages(in);
    assert_non_null(out);
    assert_string_equal(content(out, 3), "two");
    assert_string_equal(content(out, 5),
                        "result\n\n<system-reminder>mode is build</system-reminder>");
    json_decref(out);

    /* the step before the tool call: the user message is the tail, the text is the same */
    json_array_remove(in, 5);
    json_array_remove(in, 4);
    out = srv_cache_stable_messages(in);
    assert_string_equal(content(out, 3), "two\n\n<system-reminder>mode is build</system-reminder>");
    json_decref(out);
    json_decref(in);
}

static void test_reminders_left_alone(void **state)
{
    (void)state;
    /* Claude Code's shape: a context reminder kept in the first user message */
    const char *kept =
        "[{\"role\":\"user\",\"content\":\"<system-reminder>claudeMd</system-reminder>\\nfix "
        "it\"},{\"role\":\"assistant\",\"content\":\"done\"},{\"role\":\"user\",\"content\":"
        "\"more<system-reminder>todo</system-reminder>\"}]";
    /* a first turn, and an unclosed tag */
    const char *first =
        "[{\"role\":\"user\",\"content\":\"a<system-reminder>r</system-reminder>\"}]";
    const char *open = "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":"
                       "\"b<system-reminder>r\"}]";
    const char *cases[] = {kept, first, open};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *in = msgs_of(cases[i]);
        json_t *out = srv_cache_stable_messages(in);
        assert_non_null(out);
        assert_true(json_equal(in, out));
        json_decref(in);
        json_decref(out);
    }
}

static void test_tool_keys_sorted(void **state)
{
    (void)state;
    json_t *a = msgs_of("[{\"type\":\"function\",\"function\":{\"parameters\":{\"type\":\"object\","
                        "\"properties\":{\"z\":{\"type\":\"string\"},\"a\":{\"description\":\"d\","
                        "\"type\":\"integer\"}}},\"name\":\"f\",\"description\":\"x\"}}]");
    json_t *b = msgs_of("[{\"function\":{\"description\":\"x\",\"name\":\"f\",\"parameters\":{"
                        "\"properties\":{\"a\":{\"type\":\"integer\",\"description\":\"d\"},\"z\":{"
                        "\"type\":\"string\"}},\"type\":\"object\"}},\"type\":\"function\"}]");
    json_t *sa = srv_cache_stable_tools(a), *sb = srv_cache_stable_tools(b);
    char *da = json_dumps(sa, 0), *db = json_dumps(sb, 0);
    assert_string_equal(da, db);
    assert_string_equal(da, "[{\"function\": {\"description\": \"x\", \"name\": \"f\", "
                            "\"parameters\": {\"properties\": {\"a\": {\"description\": \"d\", "
                            "\"type\": \"integer\"}, \"z\": {\"type\": \"string\"}}, \"type\": "
                            "\"object\"}}, \"type\": \"function\"}]");
    assert_true(json_equal(a, sa)); /* the same JSON value */
    assert_null(srv_cache_stable_tools(NULL));
    free(da);
    free(db);
    json_decref(a);
    json_decref(b);
    json_decref(sa);
    json_decref(sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_billing_line_dropped),
        cmocka_unit_test(test_moving_reminder_goes_to_the_tail),
        cmocka_unit_test(test_reminders_left_alone),
        cmocka_unit_test(test_tool_keys_sorted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
